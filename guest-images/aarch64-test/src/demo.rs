//! `scenario=demo` (what `cargo xtask run --arch aarch64` shows without `--guest`): a guest that
//! enrols in MMIO guard and maps only its UART, locks its exception vector table with ROE, then
//! plays an attacker who pokes an unmapped device page and overwrites the locked table. Bulwark
//! prints a violation line for each; the guest sees an external abort for the device access and
//! an unchanged vector table, and carries on to a clean power-off.

use core::fmt::Write as _;
use core::sync::atomic::Ordering;

use super::{guest_exit, hvc, probe, system_off, Uart, UART};
use bulwark_abi::roe::ROE_MPROTECT;
use bulwark_abi::smccc as ids;

const RTC: u64 = 0x0901_0000;

macro_rules! demo {
    ($($a:tt)*) => {{
        let _ = writeln!(Uart, $($a)*);
    }};
}

pub fn run() -> ! {
    demo!("demo: === Bulwark arm64 demo: MMIO guard + ROE ===");
    let uid = hvc(u64::from(ids::VENDOR_HYP_CALL_UID), 0, 0, 0);
    let feat = hvc(u64::from(ids::VENDOR_HYP_FEATURES), 0, 0, 0)[0];
    let kvm_uid = uid == ids::KVM_UID.map(u64::from);
    demo!("demo: hypervisor UID is KVM's: {kvm_uid}; vendor-hyp features {feat:#x}");
    let e = hvc(u64::from(ids::MMIO_GUARD_ENROLL), 0, 0, 0)[0];
    let m = hvc(u64::from(ids::MMIO_GUARD_MAP), UART as u64, 0, 0)[0];
    demo!("demo: enrolled in MMIO guard ({e}), mapped only the UART ({m})");

    let vbar: u64;
    // SAFETY: reading VBAR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, vbar_el1", out(reg) vbar, options(nomem, nostack)) };
    let page = vbar & !0xfff;
    let r = hvc(u64::from(ids::BULWARK_ROE), ROE_MPROTECT, page, 1)[0];
    demo!("demo: locked the exception vector table at {vbar:#x} with ROE_MPROTECT -> {r}");

    demo!("demo: --- now the attacker (root in the guest) ---");
    demo!("attacker: reading the RTC at {RTC:#x}, a device the guest never mapped");
    let rtc = probe(RTC, false);
    match rtc {
        Err(esr) => demo!("attacker: refused: synchronous external abort (ESR_EL1 {esr:#x})"),
        Ok(()) => demo!("attacker: the read went through (guard NOT working)"),
    }
    // The first vector entry: `sub sp, sp, #272` (0xd10443ff).
    // SAFETY: reading the guest's own vector table.
    let before = unsafe { core::ptr::read_volatile(vbar as *const u32) };
    demo!("attacker: overwriting the first vector ({before:#010x}) with a branch to itself");
    // Under violation=inject the refused write comes back as an external abort: expect it.
    super::EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: the write is the attack; Bulwark's stage 2 refuses it (ROE): skipped, or an
    // abort the handler steps over.
    unsafe {
        core::arch::asm!("str {v:w}, [{p}]", p = in(reg) vbar, v = in(reg) 0x1400_0000u32, options(nostack))
    };
    if !super::EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        let esr = super::LAST_ESR.load(Ordering::Relaxed);
        demo!("attacker: the write was answered with an external abort (ESR_EL1 {esr:#x})");
    }
    // SAFETY: as above.
    let after = unsafe { core::ptr::read_volatile(vbar as *const u32) };
    demo!(
        "attacker: the vector now reads {after:#010x}: {}",
        if after == before {
            "unchanged"
        } else {
            "CHANGED"
        }
    );
    let ok = kvm_uid && e == 0 && m == 0 && r == 1 && rtc.is_err() && after == before;
    if ok {
        demo!("demo: both attacks refused; the guest survived and powers off");
        system_off()
    }
    demo!("demo: FAILED");
    guest_exit(1)
}
