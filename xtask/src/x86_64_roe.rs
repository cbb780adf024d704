//! ROE scenarios of `cargo xtask test` on x86_64: the test guest's `roe-*` scenarios and the demo,
//! each under both Bochs models (`tigerlake`: SPP; `corei7_skylake_x`: software path only).
//! See docs/roe-tests-x86.md for what each one checks.
//!
//! They run by default (ROE, chunk protection and the software path are implemented:
//! docs/x86_64-software-path.md). `BULWARK_ROE_X86=0` leaves them out.

use std::collections::HashMap;
use std::sync::Mutex;

use bulwark_abi::console::{reason, GUEST_PREFIX, VIOLATION_PREFIX};
use bulwark_abi::policy::{ViolationKind, ViolationPolicy};

use crate::util::{self, Outcome, RunOpts, Scenario};

/// The environment variable that can disable these scenarios (`=0`).
pub const GATE: &str = "BULWARK_ROE_X86";
const MODELS: [&str; 2] = ["tigerlake", "corei7_skylake_x"];
/// Bochs at 4 M instructions/s: the chunk scenarios take many exits on the software path.
const TIMEOUT_S: u64 = 300;

/// One guest scenario and what its run must show.
struct Case {
    /// `scenario=` word of the test guest.
    scenario: &'static str,
    policy: ViolationPolicy,
    /// Violation kinds that must appear (each with `action=<policy>`).
    kinds: &'static [ViolationKind],
    /// Guest lines that must appear (after `guest| `), regardless of model.
    lines: &'static [&'static str],
}

static CASES: [Case; 9] = [
    Case {
        scenario: "roe-basic",
        policy: ViolationPolicy::Skip,
        kinds: &[ViolationKind::Roe, ViolationKind::RoeChunk],
        lines: &[
            "PASS version",
            "PASS ring3-nothing-protected",
            "PASS einval-hole-nothing-protected",
            "PASS undo-all-unchanged",
        ],
    },
    Case {
        scenario: "roe-page-skip",
        policy: ViolationPolicy::Skip,
        kinds: &[ViolationKind::Roe],
        lines: &[
            "the guest continues after the blocked store",
            "PASS page-unchanged",
        ],
    },
    Case {
        scenario: "roe-page-inject",
        policy: ViolationPolicy::Inject,
        kinds: &[ViolationKind::Roe],
        lines: &["PASS store-blocked", "PASS gp-count"],
    },
    Case {
        scenario: "roe-page-halt",
        policy: ViolationPolicy::Halt,
        kinds: &[ViolationKind::Roe],
        lines: &["writing to the protected page: Bulwark must stop the run here"],
    },
    Case {
        scenario: "roe-chunk",
        policy: ViolationPolicy::Skip,
        kinds: &[ViolationKind::RoeChunk],
        lines: &["PASS chunks-unchanged"],
    },
    Case {
        scenario: "roe-chunk-inject",
        policy: ViolationPolicy::Inject,
        kinds: &[ViolationKind::RoeChunk],
        lines: &["PASS chunks-unchanged", "PASS rep-stosq-into-chunk"],
    },
    // Review A1: an event delivered onto a chunk page is never single-stepped; the frame push is
    // a roe-chunk violation and the delivery becomes #GP(0) (docs/x86_64-software-path.md).
    Case {
        scenario: "roe-escape",
        policy: ViolationPolicy::Inject,
        kinds: &[ViolationKind::RoeChunk],
        lines: &[
            "PASS escape-handler-never-ran",
            "PASS escape-protected-unchanged",
            "PASS escape-gp-at-int",
            "PASS escape-unprotected-store",
            "PASS ins-chunk-unprotected",
            "PASS ins-chunk-protected-gp",
            "PASS ins-readonly-pf",
            "PASS outs-not-present-pf",
            "roe-escape: 0 check(s) failed",
        ],
    },
    // The same under halt: the frame push stops the run (violation-halt).
    Case {
        scenario: "roe-escape",
        policy: ViolationPolicy::Halt,
        kinds: &[ViolationKind::RoeChunk],
        lines: &["roe-escape: int 0x81 with RSP on the chunk page"],
    },
    Case {
        scenario: "demo",
        policy: ViolationPolicy::Skip,
        kinds: &[ViolationKind::Roe, ViolationKind::RoeChunk],
        lines: &["demo: all ", "attacks blocked; tables intact"],
    },
];

/// Check lines (`PASS x` / `FAIL x`) of the first model that ran a scenario, to compare the
/// second model's against: guest-visible results must be identical on both.
static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// scenario -> (model, check lines).
type Seen = HashMap<&'static str, (&'static str, Vec<String>)>;

fn opts(model: &str, case: &Case) -> RunOpts {
    RunOpts {
        arch: Some(util::Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        cmdline: format!("violation={}", case.policy.as_str()),
        guest_cmdline: format!("scenario={}", case.scenario),
        quiet: true,
        ..RunOpts::default()
    }
}

/// Checks the guest runs only where SPP backs chunk protection: not compared across models.
const SPP_ONLY_CHECKS: &[&str] = &["spp-no-exit-unprotected-subpages"];

/// The guest's check verdicts: `PASS name` / `FAIL name` (detail dropped), without the
/// SPP-only checks.
fn checks(out: &Outcome) -> Vec<String> {
    out.lines
        .iter()
        .filter_map(|l| l.split_once(GUEST_PREFIX).map(|(_, g)| g))
        .filter(|g| g.starts_with("PASS ") || g.starts_with("FAIL "))
        .map(|g| g.split(':').next().unwrap_or(g).trim().to_string())
        .filter(|c| !SPP_ONLY_CHECKS.iter().any(|s| c.ends_with(s)))
        .collect()
}

fn judge(model: &'static str, case: &'static Case) -> Result<(), String> {
    let out = crate::x86_64::run(&opts(model, case))?;
    let fail = |why: String| Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)));
    if case.policy == ViolationPolicy::Halt {
        if out.reason != reason::VIOLATION_HALT || matches!(out.status, Some(0) | None) {
            return fail(format!(
                "expected a failure status with reason={}, got status={:?} reason={}",
                reason::VIOLATION_HALT,
                out.status,
                out.reason
            ));
        }
        if out.has("FAIL halted") {
            return fail("the guest continued after the write under violation=halt".into());
        }
    } else {
        out.expect(0, reason::GUEST_EXIT)?;
    }
    for kind in case.kinds {
        let want = format!("{VIOLATION_PREFIX}kind={} ", kind.as_str());
        let action = format!("action={}", case.policy.as_str());
        let ok = out
            .lines
            .iter()
            .any(|l| l.contains(&want) && l.contains("access=write") && l.contains(&action));
        if !ok {
            return fail(format!(
                "no '{want}... access=write ... {action}' violation line"
            ));
        }
    }
    for needle in case.lines {
        if !out.has(needle) {
            return fail(format!("no console line containing '{needle}'"));
        }
    }
    // SPP is off unless Bulwark's command line says spp=on (docs/x86_64-spp.md); when it is
    // on, the guest must measure no exit for stores to writable sub-pages.
    if case.scenario == "roe-chunk"
        && out.has("SPP: on")
        && !out.has("PASS spp-no-exit-unprotected-subpages")
    {
        return fail(
            "SPP is on: the guest must see chunk-spp in CPUID 0x40000001 and measure no exit for \
             stores to unprotected sub-pages (PASS spp-no-exit-unprotected-subpages)"
                .into(),
        );
    }
    if case.policy != ViolationPolicy::Halt {
        let mine = checks(&out);
        let mut seen = SEEN.lock().map_err(|_| "poisoned lock".to_string())?;
        let map = seen.get_or_insert_with(HashMap::new);
        match map.get(case.scenario) {
            Some((other, theirs)) if *other != model && *theirs != mine => {
                return fail(format!(
                    "guest-visible results differ between {other} and {model}:\n{other}: {theirs:?}\n{model}: {mine:?}"
                ));
            }
            Some(_) => {}
            None => {
                map.insert(case.scenario, (model, mine));
            }
        }
    }
    Ok(())
}

/// The ROE entries of `cargo xtask test` (empty with `BULWARK_ROE_X86=0`).
pub fn scenarios() -> Vec<Scenario> {
    if std::env::var(GATE).as_deref() == Ok("0") {
        return Vec::new();
    }
    let mut v = Vec::new();
    for case in CASES.iter() {
        for model in MODELS {
            v.push(Scenario::new(
                format!(
                    "x86 ROE: {} (violation={})",
                    case.scenario,
                    case.policy.as_str()
                ),
                format!("bochs {model}"),
                move || judge(model, case),
            ));
        }
    }
    v
}
