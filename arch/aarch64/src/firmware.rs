//! Calls from Bulwark (EL2) to the firmware below it (EL3) through SMC: the boot-time probe of
//! what the firmware serves (SMCCC 1.1 and the Spectre workarounds) and forwarding a guest's
//! workaround call (docs/smccc.md, "Spectre workarounds").

use bulwark_abi::smccc::{self as ids, Workaround};

use crate::smccc::Firmware;

/// One SMC fast call to the firmware with x0 = `fid`, x1 = `x1`; returns x0.
///
/// Only for EL2 with an SMC conduit (the host device tree's `/psci` `method = "smc"`): without
/// EL3 firmware an SMC is undefined.
pub fn smc(fid: u32, x1: u64) -> u64 {
    let mut x0 = u64::from(fid);
    // SAFETY: an SMCCC fast call to the firmware (EL3, or the emulator's PSCI): it returns to
    // the next instruction with results in x0-x3 and may clobber x4-x17 (SMCCC 1.1); no memory
    // of ours is passed or written.
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") x0, inout("x1") x1 => _, out("x2") _, out("x3") _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    x0
}

/// What the probe learnt, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub psci_version: Option<u64>,
    pub smccc_version: Option<u64>,
    pub firmware: Firmware,
}

/// Probe the firmware as Linux's `arm_smccc_version_init()` and proton-pack.c do: PSCI_VERSION
/// (>= 1.0 needed for PSCI_FEATURES), PSCI_FEATURES(SMCCC_VERSION) == 0, SMCCC_VERSION >= 1.1,
/// then SMCCC_ARCH_FEATURES of each workaround. `smc_conduit` is false when the host device tree
/// names no SMC conduit or Bulwark is not at EL2: nothing is called and nothing is served.
pub fn probe(smc_conduit: bool) -> Probe {
    let mut p = Probe {
        psci_version: None,
        smccc_version: None,
        firmware: Firmware::NONE,
    };
    if !smc_conduit || crate::sysreg::current_el() != 2 {
        return p;
    }
    let v = smc(ids::PSCI_VERSION, 0) & 0xffff_ffff;
    p.psci_version = Some(v);
    if v >> 16 < 1 {
        return p;
    }
    if smc(ids::PSCI_FEATURES, u64::from(ids::SMCCC_VERSION)) as u32 != 0 {
        return p;
    }
    let s = smc(ids::SMCCC_VERSION, 0) & 0xffff_ffff;
    p.smccc_version = Some(s);
    if s >> 31 != 0 || s < ids::SMCCC_VERSION_1_1 {
        return p;
    }
    for w in Workaround::ALL {
        let a = i64::from(smc(ids::SMCCC_ARCH_FEATURES, u64::from(w.fid())) as u32 as i32);
        if let Some(slot) = p.firmware.workarounds.get_mut(w.index()) {
            *slot = a;
        }
    }
    // Keep only answers SMCCC defines (Firmware::answer); anything else reads NOT_SUPPORTED.
    for w in Workaround::ALL {
        let a = p.firmware.answer(w);
        if let Some(slot) = p.firmware.workarounds.get_mut(w.index()) {
            *slot = a;
        }
    }
    p
}
