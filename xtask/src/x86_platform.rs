//! Issue 16 (x86 platform) scenarios of `cargo xtask test`: the pass-through platform model
//! (docs/x86_64.md, "Platform model"). The guest side is `scenario=platform`
//! (guest-images/x86_64-test/src/platform.rs): it reads the local APIC (the access every
//! kvm-unit-tests test makes first), writes APIC registers through Bulwark's write emulation,
//! sends INIT and Start-up IPIs that Bulwark must swallow and log, reaches the I/O APIC by MMIO,
//! programs the PIC through passed-through ports and waits in HLT for timer interrupts that
//! reach it without Bulwark. On the code before the platform model the first APIC read stopped
//! the guest.

use bulwark_abi::console::reason;

use crate::util::{Arch, Outcome, RunOpts, Scenario};

const MODELS: [&str; 2] = ["tigerlake", "corei7_skylake_x"];
const TIMEOUT_S: u64 = 180;

fn fail<T>(out: &Outcome, why: String) -> Result<T, String> {
    Err(format!("{why}\n--- console tail ---\n{}", out.tail(40)))
}

fn platform(model: &str) -> Result<(), String> {
    let out = crate::x86_64::run(&RunOpts {
        arch: Some(Arch::X86_64),
        emulator: Some("bochs".into()),
        cpu: Some(model.into()),
        timeout: Some(TIMEOUT_S),
        guest_cmdline: "scenario=platform".into(),
        quiet: true,
        ..RunOpts::default()
    })?;
    out.expect(0, reason::GUEST_EXIT)?;
    for needle in [
        "guest| PASS lapic-read",
        "guest| PASS lapic-write-forwarded",
        "guest| PASS lapic-icr-forwarded",
        "guest| PASS lapic-init-sipi-refused",
        "guest| PASS ioapic-mmio",
        "guest| PASS port-passthrough",
        "guest| PASS interrupts-to-guest",
        "guest| 0 check(s) failed",
        "platform: local APIC at 0xfee00000 (writes trapped",
        "lapic: refused IPI mode=init icr_low=0xc4500 icr_high=0x1000000 ",
        "lapic: refused IPI mode=startup icr_low=0xc4608 icr_high=0x1000000 ",
        " 2 INIT/SIPI IPI(s) refused",
    ] {
        if !out.has(needle) {
            return fail(&out, format!("no line containing '{needle}'"));
        }
    }
    Ok(())
}

pub fn scenarios() -> Vec<Scenario> {
    MODELS
        .into_iter()
        .map(|model| {
            Scenario::new(
                "x86 platform: LAPIC read, APIC writes emulated, INIT/SIPI refused, I/O APIC MMIO, ports and interrupts pass through, HLT waits",
                format!("bochs {model}"),
                move || platform(model),
            )
        })
        .collect()
}
