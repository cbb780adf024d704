//! The guest's A/I/F after a software-stepped store takes an exception to EL1 (docs/aarch64.md,
//! software path step 2). Bulwark masks A/I/F for the one stepped instruction; when that
//! instruction faults at stage 1 instead of completing, the exception entry saves the step's
//! mask in SPSR_EL1, and Bulwark must put the guest's own A/I/F back there.
//!
//! Set-up: a page of its own, CHUNK-protected at its first 8 bytes, and a second view of it at
//! VA 300 GiB through private level-2/level-3 tables whose next page is not mapped at stage 1.
//! With IRQs unmasked (DAIF.I = 0; nothing is enabled to interrupt), an STP at the view's last 8
//! bytes writes its first register to the chunk page (stage-2 fault: the software step) and its
//! second to the unmapped page (stage-1 translation fault: an exception to EL1 during the step).
//! The handler skips the STP and returns with ERET: afterwards DAIF.I must still be 0.
//!
//! The STP runs with the guest's OS Double Lock set (OSDLR_EL1.DLK = 1; where FEAT_DoubleLock is
//! implemented it disables the software step): Bulwark releases it for the step, the step still
//! ends as it should, and DLK reads 1 again afterwards.

use core::sync::atomic::Ordering;

use super::{roe, Checks, ABORTS, EXPECT_ABORT, LAST_ESR, LAST_FAR};
use bulwark_abi::roe::ROE_MPROTECT_CHUNK;

#[repr(C, align(4096))]
struct Table(core::cell::UnsafeCell<[u64; 512]>);
// SAFETY: one CPU; the tables and the page are touched only through volatile accesses here.
unsafe impl Sync for Table {}
static PAGE: Table = Table(core::cell::UnsafeCell::new([0; 512]));
static L2: Table = Table(core::cell::UnsafeCell::new([0; 512]));
static L3: Table = Table(core::cell::UnsafeCell::new([0; 512]));

/// The level-1 entry (1 GiB) used for the view: 300 GiB, a device block nobody uses.
const L1_INDEX: u64 = 300;
const VIEW: u64 = L1_INDEX << 30;

fn addr(t: &Table) -> u64 {
    t.0.get() as u64
}

fn set(table: u64, index: u64, v: u64) {
    // SAFETY: `table` is one of this module's tables or the guest's level-1 table (TTBR0_EL1,
    // identity-mapped), `index` < 512.
    unsafe { core::ptr::write_volatile((table + 8 * index) as *mut u64, v) }
}

fn get(table: u64, index: u64) -> u64 {
    // SAFETY: as `set`.
    unsafe { core::ptr::read_volatile((table + 8 * index) as *const u64) }
}

fn tlb_sync() {
    // SAFETY: barriers and a TLB invalidation of the guest's own stage-1 entries.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack)
        )
    }
}

pub fn checks(c: &mut Checks) {
    let page = addr(&PAGE);
    let r = roe(ROE_MPROTECT_CHUNK, page, 8);
    if r != 8 {
        c.check(
            false,
            format_args!("stepaif: CHUNK {page:#x}, 8 bytes -> {r}"),
        );
        return;
    }
    let l1: u64;
    // SAFETY: reads the guest's own translation table base.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) l1, options(nomem, nostack)) };
    let l1 = l1 & 0x0000_ffff_ffff_f000;
    let old = get(l1, L1_INDEX);
    set(addr(&L3), 0, page | 0x707); // page: Normal WB, inner shareable, AF
    set(addr(&L3), 1, 0); // the next page: not mapped
    set(addr(&L2), 0, addr(&L3) | 0b11);
    set(l1, L1_INDEX, addr(&L2) | 0b11);
    tlb_sync();

    // SAFETY: the guest's own OS Double Lock (OSDLR_EL1 is not trapped); cleared again below.
    unsafe { core::arch::asm!("msr osdlr_el1, {}", "isb", in(reg) 1u64, options(nostack)) };

    let at = VIEW + 0x1000 - 8;
    let before = ABORTS.load(Ordering::Relaxed);
    EXPECT_ABORT.store(true, Ordering::Release);
    let daif: u64;
    // SAFETY: the STP writes the page's last 8 bytes (unprotected) and faults on the unmapped
    // page; the handler skips it. IRQs are unmasked only around it (no interrupt source is on).
    unsafe {
        core::arch::asm!(
            "msr daifclr, #2",
            "stp {a}, {b}, [{p}]",
            "mrs {d}, daif",
            "msr daifset, #2",
            p = in(reg) at, a = in(reg) 0x5151_5151_5151_5151_u64, b = in(reg) 0x6262_u64,
            d = out(reg) daif,
            options(nostack)
        )
    };
    let aborted = !EXPECT_ABORT.swap(false, Ordering::AcqRel);
    let osdlr: u64;
    // SAFETY: as above: read the lock back, then release it.
    unsafe {
        core::arch::asm!("mrs {}, osdlr_el1", out(reg) osdlr, options(nomem, nostack));
        core::arch::asm!("msr osdlr_el1, xzr", "isb", options(nostack));
    }
    let dfr0: u64;
    // SAFETY: reads an ID register.
    unsafe { core::arch::asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
    // ID_AA64DFR0_EL1.DoubleLock (39:36): 0 = implemented, 0xf = not (OSDLR_EL1 RAZ/WI).
    let double_lock = (dfr0 >> 36) & 0xf == 0;
    set(l1, L1_INDEX, old);
    tlb_sync();
    let esr = LAST_ESR.load(Ordering::Relaxed);
    let far = LAST_FAR.load(Ordering::Relaxed);
    c.check(
        aborted
            && ABORTS.load(Ordering::Relaxed) == before + 1
            && (esr >> 26) & 0x3f == 0x25
            && esr & 0x3c == 0x04
            && far == VIEW + 0x1000,
        format_args!(
            "stepaif: STP from a chunk page into an unmapped page takes the stage-1 fault (esr {esr:#x}, far {far:#x})"
        ),
    );
    c.check(
        daif & (1 << 7) == 0,
        format_args!(
            "stepaif: IRQs still unmasked after that stepped instruction's exception returned (DAIF {daif:#x})"
        ),
    );
    c.check(
        osdlr & 1 == u64::from(double_lock),
        format_args!(
            "stepaif: the guest's OS Double Lock is set again after the step (OSDLR_EL1 {osdlr:#x}, FEAT_DoubleLock {})",
            if double_lock { "implemented" } else { "absent" }
        ),
    );
}
