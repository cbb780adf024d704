//! SPP scenarios of `cargo xtask test` on x86_64 (docs/x86_64-spp.md): the test guest's
//! `spp-subpage` scenario, judged by Bulwark's own exit counters.
//!
//! * `tigerlake` (SPP): Bulwark must say `SPP: on`, the guest must see the chunk-spp CPUID bit,
//!   and the run's `exit counts: ... ept-violation=N` must be exactly 2 — the store to the
//!   guest's ROE page (the counter's sanity check) and the final store into a protected chunk
//!   byte (the chunk page is write-protected) — so the hundreds of stores to unprotected
//!   sub-pages of the chunk page caused **zero** EPT-violation exits. The protected store
//!   ends the run in one of two ways: the guest exits with status 0 (the x86 chunk software
//!   path drops the store), or — while that path does not exist — Bulwark stops the run with
//!   its "without a usable access size" line; every guest check before it must have passed.
//! * `corei7_skylake_x` (no SPP): the same stores must take Bulwark's software path: at least
//!   one EPT-violation exit each. Until the x86 software path for chunk pages exists the first
//!   such store stops the run, so this model runs only with `BULWARK_ROE_X86=1` (the gate the
//!   ROE scenarios use until chunk stores work on x86).

use crate::util::{self, Outcome, RunOpts, Scenario};

/// Bochs at 4 M instructions/s; the software-path run takes one exit or more per store.
const TIMEOUT_S: u64 = 180;

fn opts(model: &str) -> RunOpts {
    RunOpts {
        arch: Some(util::Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        cmdline: "violation=skip".into(),
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

fn judge(model: &'static str, spp: bool) -> Result<(), String> {
    let out = crate::x86_64::run(&opts(model))?;
    let fail = |why: String| Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)));
    if !out.has("spp-subpage: 0 check(s) failed before the protected store") {
        return fail("the guest's checks before the protected store did not all pass".into());
    }
    let swpath_absent = out.status == Some(bulwark_abi::console::STATUS_BULWARK_FAILURE)
        && out.reason == bulwark_abi::console::reason::UNHANDLED_EXIT
        && out.has("without a usable access size");
    if !swpath_absent {
        out.expect(0, bulwark_abi::console::reason::GUEST_EXIT)?;
    }
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
        if swpath_absent { " (run stopped at the protected store: no x86 chunk software path yet)" } else { "" }
    ));
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
    let mut v = vec![Scenario::new(
        "x86 SPP: no exit for stores to unprotected sub-pages",
        "bochs tigerlake",
        || judge("tigerlake", true),
    )];
    if std::env::var(crate::x86_64_roe::GATE).as_deref() == Ok("1") {
        v.push(Scenario::new(
            "x86 SPP: without SPP the same stores take the software path",
            "bochs corei7_skylake_x",
            || judge("corei7_skylake_x", false),
        ));
    }
    v
}
