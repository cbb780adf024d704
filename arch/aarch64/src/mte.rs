//! FEAT_MTE2 (Memory Tagging) for the guest and for Bulwark's software store path.
//!
//! The guest gets what the CPU has (docs/aarch64.md, "Memory tagging"): HCR_EL2.ATA = 1, so its
//! MTE system registers (TFSR_EL1, TFSRE0_EL1, GCR_EL1, RGSR_EL1) and Allocation Tag accesses do
//! not trap, and stage 2 maps RAM Normal write-back (MemAttr 0b1111), which lets the guest's
//! stage 1 choose Tagged. Bulwark's own memory has no IPA, so its tag storage is as unreachable
//! as its data.
//!
//! For the software store path Bulwark itself reads and writes tags at EL2: [`enable_el2_tags`]
//! makes Bulwark's Normal memory attribute Tagged (MAIR_EL2 attribute 1 = 0xF0) with
//! SCTLR_EL2.ATA = 1 and SCTLR_EL2.TCF = 0 (EL2 accesses are never tag-checked), and
//! [`granule_tag`] / [`set_granule_tag`] move one 16-byte granule's tag.

use crate::{read_sysreg, write_sysreg};
use core::sync::atomic::{AtomicBool, Ordering};

/// Bytes per Allocation Tag granule.
pub const GRANULE: u64 = 16;
/// HCR_EL2.ATA: EL1/EL0 Allocation Tag access and MTE registers without trapping.
pub const HCR_ATA: u64 = 1 << 56;
/// SCTLR_EL2.ATA (E2H = 0): EL2 may access Allocation Tags.
const SCTLR_ATA: u64 = 1 << 43;
/// SCTLR_EL2.TCF: tag-check-fault behaviour at EL2 (0: no checks).
const SCTLR_TCF: u64 = 0b11 << 40;
/// MAIR encoding of Normal Inner/Outer write-back RA/WA Tagged memory.
const MAIR_TAGGED: u64 = 0xf0;
/// MAIR encoding of Normal Inner/Outer write-back RA/WA (Bulwark's attribute 1 at boot).
const MAIR_NORMAL_WB: u64 = 0xff;

static EL2_TAGS: AtomicBool = AtomicBool::new(false);

/// ID_AA64PFR1_EL1.MTE of this CPU: 0 none, 1 instructions only (FEAT_MTE), 2+ tags in
/// memory (FEAT_MTE2, FEAT_MTE3).
pub fn level() -> u64 {
    (read_sysreg!("id_aa64pfr1_el1") >> 8) & 0xf
}

/// Whether [`enable_el2_tags`] ran: Bulwark can read and write Allocation Tags at EL2.
pub fn el2_tags() -> bool {
    EL2_TAGS.load(Ordering::Relaxed)
}

/// With FEAT_MTE2: make Bulwark's Normal memory Tagged at EL2 and allow EL2 tag access (no tag
/// checks at EL2). Returns whether EL2 can now access tags. Changing the attribute of live
/// mappings from Normal WB to Normal WB Tagged keeps the cacheability (the same change Linux
/// makes to MAIR_EL1 at boot); the EL2 TLB is invalidated afterwards.
pub fn enable_el2_tags() -> bool {
    if el2_tags() {
        return true;
    }
    if level() < 2 {
        return false;
    }
    let mair = read_sysreg!("mair_el2");
    if (mair >> 8) & 0xff != MAIR_NORMAL_WB {
        log::warn!("MTE: MAIR_EL2 attribute 1 is {mair:#x}, not Normal WB; no EL2 tag access");
        return false;
    }
    let sctlr = (read_sysreg!("sctlr_el2") | SCTLR_ATA) & !SCTLR_TCF;
    crate::sysreg::dsb_ish();
    write_sysreg!("sctlr_el2", sctlr);
    write_sysreg!("mair_el2", (mair & !0xff00) | (MAIR_TAGGED << 8));
    crate::sysreg::isb();
    // SAFETY: invalidates Bulwark's own EL2 translations; no memory is accessed.
    unsafe { core::arch::asm!("tlbi alle2", options(nostack)) }
    crate::sysreg::dsb_ish();
    crate::sysreg::isb();
    EL2_TAGS.store(true, Ordering::Relaxed);
    true
}

/// The Allocation Tag of the granule at `addr` (identity-mapped Bulwark or guest RAM), 0..15.
/// 0 when EL2 has no tag access.
pub fn granule_tag(addr: u64) -> u8 {
    if !el2_tags() {
        return 0;
    }
    let mut t = addr;
    // SAFETY: LDG reads the tag of the granule at `addr`, which the caller names as RAM that
    // EL2 maps (Tagged after `enable_el2_tags`); it writes only the tag bits of `t`.
    unsafe {
        core::arch::asm!(
            ".arch_extension memtag",
            "ldg {t}, [{a}]",
            t = inout(reg) t,
            a = in(reg) addr,
            options(nostack, readonly, preserves_flags)
        )
    };
    ((t >> 56) & 0xf) as u8
}

/// Set the Allocation Tag of the granule at `addr` to `tag` (low 4 bits). No-op when EL2 has no
/// tag access. Only Allocation Tag storage changes, never data.
pub fn set_granule_tag(addr: u64, tag: u8) {
    if !el2_tags() {
        return;
    }
    let t = addr | (u64::from(tag & 0xf) << 56);
    // SAFETY: STG writes the tag of the granule at `addr` (RAM EL2 maps, Tagged; the caller
    // owns the decision to change it); data is untouched.
    unsafe {
        core::arch::asm!(
            ".arch_extension memtag",
            "stg {t}, [{a}]",
            t = in(reg) t,
            a = in(reg) addr,
            options(nostack, preserves_flags)
        )
    };
}
