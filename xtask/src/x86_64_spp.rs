//! SPP scenarios of `cargo xtask test` on x86_64 (docs/x86_64-spp.md): the test guest's
//! `spp-subpage` scenario, judged by Bulwark's own exit counters.
//!
//! * `tigerlake` with `spp=on` (SPP): Bulwark must say `SPP: on`, the guest must see the
//!   chunk-spp CPUID bit, every guest check must pass (status 0), and the run's
//!   `exit counts: ... ept-violation=N` must be exactly 2 — the store to the guest's ROE page
//!   (the counter's sanity check) and the final store running into protected chunk bytes (the
//!   chunk page is write-protected) — so the 232 stores to writable sub-pages of the chunk page
//!   caused **zero** EPT-violation exits.
//! * `tigerlake` without `spp=on` (SPP is off by default: Bochs 2.7's SPP is unsound, see
//!   docs/x86_64-spp.md) and `corei7_skylake_x` with `spp=on` (no SPP to turn on): the same
//!   stores must take Bulwark's software path, at least one EPT-violation exit each.

use crate::util::{self, Outcome, RunOpts, Scenario};

/// Bochs at 4 M instructions/s; the software-path run takes one exit or more per store.
const TIMEOUT_S: u64 = 180;

fn opts(model: &str, spp_on: bool) -> RunOpts {
    RunOpts {
        arch: Some(util::Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        cmdline: if spp_on {
            "violation=skip spp=on".into()
        } else {
            "violation=skip".into()
        },
        guest_cmdline: "scenario=spp-subpage".into(),
        quiet: true,
        ..RunOpts::default()
    }
}

/// The number after `key=` on the first console line containing `marker`.
fn field(out: &Outcome, marker: &str, key: &str) -> Option<u64> {
    let line = out.lines.iter().find(|l| l.contains(marker))?;
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat.as_str()))
        .and_then(|v| v.parse().ok())
}

/// Run `spp-subpage` on `model` (with `spp=on` when `request`); `spp`: whether SPP must be on.
fn judge(model: &'static str, request: bool, spp: bool) -> Result<(), String> {
    let out = crate::x86_64::run(&opts(model, request))?;
    let fail = |why: String| Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)));
    if !out.has("spp-subpage: 0 check(s) failed before the protected store") {
        return fail("the guest's checks before the protected store did not all pass".into());
    }
    out.expect(0, bulwark_abi::console::reason::GUEST_EXIT)?;
    let want_banner = if spp { "SPP: on" } else { "SPP: off" };
    if !out.has(want_banner) {
        return fail(format!("no '{want_banner}' line from Bulwark"));
    }
    let bit = format!("chunk-spp={}", u8::from(spp));
    if !out.has(&bit) {
        return fail(format!("the guest did not see {bit} in CPUID 0x40000001"));
    }
    let Some(stores) = field(&out, "spp-subpage: stores=", "stores") else {
        return fail("no 'spp-subpage: stores=N' guest line".into());
    };
    let Some(viol) = field(&out, "exit counts:", "ept-violation") else {
        return fail("no 'exit counts: ... ept-violation=N' line from Bulwark".into());
    };
    util::progress(&format!(
        "    {model}: {stores} stores to unprotected sub-pages of a chunk page + 1 to a ROE page + 1 to a protected chunk byte -> {viol} EPT-violation exit(s){}",
        if request { " (spp=on)" } else { "" }
    ));
    let warm_written = out.has("warm protected store: WRITTEN");
    if !out.has("warm protected store: ") {
        return fail("no 'warm protected store' guest line".into());
    }
    if warm_written && !spp {
        return fail("a store to a protected byte went through without SPP".into());
    }
    if warm_written {
        util::progress(&format!(
            "    {model}: known Bochs 2.7 SPP defect reproduced: a store to a protected byte right after SPP-allowed stores to the same page went through without an exit (why SPP is off unless spp=on)"
        ));
    }
    // Step 5's store exits unless it went through.
    let viol = viol.saturating_sub(u64::from(!warm_written));
    if spp && viol != 2 {
        return fail(format!(
            "with SPP expected exactly 2 EPT-violation exits (the ROE-page store and the \
             protected chunk byte), got {viol}: stores to unprotected sub-pages exited"
        ));
    }
    if !spp && viol < stores + 2 {
        return fail(format!(
            "without SPP every one of the {stores} chunk-page stores must exit (software path): \
             expected at least {} EPT-violation exits, got {viol}",
            stores + 2
        ));
    }
    Ok(())
}

/// The SPP entries of `cargo xtask test`.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new(
            "x86 SPP: spp=on, no exit for stores to unprotected sub-pages",
            "bochs tigerlake",
            || judge("tigerlake", true, true),
        ),
        Scenario::new(
            "x86 SPP: off by default, the same stores take the software path",
            "bochs tigerlake",
            || judge("tigerlake", false, false),
        ),
        Scenario::new(
            "x86 SPP: spp=on without SPP, the same stores take the software path",
            "bochs corei7_skylake_x",
            || judge("corei7_skylake_x", true, false),
        ),
    ]
}
