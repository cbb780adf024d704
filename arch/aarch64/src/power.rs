//! Ending the run: semihosting exit (keeps the status; needs QEMU `-semihosting`), PSCI
//! SYSTEM_OFF through the firmware's conduit, then a `wfe` park.
//!
//! Order: status 0 tries PSCI SYSTEM_OFF first (a clean power-off, works without semihosting);
//! a non-zero status tries semihosting first so the emulator's exit code carries it. A semihosting
//! trap on a QEMU without `-semihosting` is an undefined instruction: the EL2 exception handler
//! recognises it through [`semihosting_in_progress`] and skips it.

use core::sync::atomic::{AtomicBool, Ordering};

use bulwark_abi::smccc::PSCI_SYSTEM_OFF;

static SEMIHOSTING: AtomicBool = AtomicBool::new(false);

/// True while a semihosting call is being attempted (for the EL2 exception handler).
pub fn semihosting_in_progress() -> bool {
    SEMIHOSTING.load(Ordering::Acquire)
}

/// Semihosting SYS_EXIT with an ADP_Stopped_ApplicationExit reason and `status` as the exit code.
fn semihosting_exit(status: u32) {
    let block: [u64; 2] = [0x20026, u64::from(status)];
    SEMIHOSTING.store(true, Ordering::Release);
    // SAFETY: `hlt #0xf000` is the AArch64 semihosting trap; with semihosting on, QEMU reads the
    // two-word parameter block and exits; with it off the instruction is undefined and our EL2
    // handler skips it (see module docs). `block` outlives the call.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            inout("x0") 0x18u64 => _,
            in("x1") block.as_ptr(),
            options(nostack)
        );
    }
    SEMIHOSTING.store(false, Ordering::Release);
}

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

/// End the run with `status`. Never returns.
pub fn stop(status: u32) -> ! {
    crate::pl011::flush();
    let el = crate::sysreg::current_el();
    if status == 0 {
        psci_off(el);
        semihosting_exit(status);
    } else {
        semihosting_exit(status);
        psci_off(el);
    }
    park()
}

/// Park this CPU for good.
pub fn park() -> ! {
    loop {
        // SAFETY: `wfe` only waits for an event.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) }
    }
}
