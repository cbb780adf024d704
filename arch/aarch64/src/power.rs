//! Ending the run: PSCI SYSTEM_OFF through the firmware's conduit, then a `wfe` park.
//!
//! The run's verdict travels by Bulwark's console line (`bulwark: result status=N reason=WORD`,
//! printed before this is called), never by an emulator backdoor: Bulwark does not use
//! semihosting, and the test harness never enables it (a guest could use it to bypass Bulwark:
//! docs/aarch64.md, "Ending a run"). The emulator's normal power-off ends the process.

use bulwark_abi::smccc::PSCI_SYSTEM_OFF;

/// PSCI SYSTEM_OFF via SMC (from EL2/EL3) or HVC (from EL1, where QEMU's conduit is HVC).
fn psci_off(el: u64) {
    let fid = u64::from(PSCI_SYSTEM_OFF);
    if el >= 2 {
        // SAFETY: SMC to the firmware's PSCI implementation; SYSTEM_OFF does not return on
        // success; on failure it returns an error code in x0 and clobbers x0-x3 (SMCCC).
        unsafe {
            core::arch::asm!("smc #0", inout("x0") fid => _, out("x1") _, out("x2") _, out("x3") _, options(nostack));
        }
    } else {
        // SAFETY: as above, through HVC (EL1 without EL2: QEMU handles HVC as its PSCI conduit).
        unsafe {
            core::arch::asm!("hvc #0", inout("x0") fid => _, out("x1") _, out("x2") _, out("x3") _, options(nostack));
        }
    }
}

/// End the run (the status is already on the console in the result line). Never returns.
pub fn stop(_status: u32) -> ! {
    crate::pl011::flush();
    psci_off(crate::sysreg::current_el());
    park()
}

/// Park this CPU for good.
pub fn park() -> ! {
    loop {
        // SAFETY: `wfe` only waits for an event.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) }
    }
}
