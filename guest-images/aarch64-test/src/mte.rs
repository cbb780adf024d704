//! `scenario=mte` (QEMU `-M virt,...,mte=on`): the guest gets the CPU's memory tagging (FEAT_MTE2)
//! under Bulwark, and tags are locked with the bytes ROE locks.
//!
//! 1. ID_AA64PFR1_EL1.MTE >= 2; TFSR_EL1, TFSRE0_EL1, GCR_EL1 and RGSR_EL1 written and read back
//!    (old Bulwark: the first `msr` trapped to EL2 with HCR_EL2.ATA clear and the run died);
//! 2. its Normal memory becomes Tagged (MAIR_EL1 0xF0, TCR_EL1.TBI0, SCTLR_EL1.ATA): IRG gives a
//!    tag outside GCR_EL1's exclude set, STG/LDG set and read it back, and it survives VM exits
//!    (HVCs and a stage-2 abort);
//! 3. tag checks work: with SCTLR_EL1.TCF = sync a load with the wrong tag takes a Tag Check
//!    fault (DFSC 0x11), the right tag loads; with TCF = async TFSR_EL1.TF0 records it;
//! 4. ROE: STG to a page locked whole is a violation (skip: tag unchanged); on a chunk page a
//!    tag write to a granule holding a protected byte is a violation (STG at it; ST2G from the
//!    granule below, found by comparing tags after the step), one to a granule without
//!    protected bytes lands; with sync tag checks a wrong-tag store to the chunk page's
//!    unprotected bytes takes the Tag Check fault (Bulwark steps the store against a tagged copy)
//!    and the right tag stores.
//!
//! Ends with SYSTEM_OFF when every check passed, else GUEST_EXIT(1).

use core::fmt::Write as _;
use core::sync::atomic::Ordering;

use super::{guest_exit, hvc, probe, roe, system_off, Checks, Page, Uart, ABORTS, LAST_ESR};
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK};
use bulwark_abi::smccc as ids;

static TAG_PAGE: Page = Page(core::cell::UnsafeCell::new([0; 512]));
static LOCKED_PAGE: Page = Page(core::cell::UnsafeCell::new([0x4444; 512]));
static CHUNK_PAGE: Page = Page(core::cell::UnsafeCell::new([0x5555; 512]));

const TAG_SHIFT: u32 = 56;
const TAG_MASK: u64 = 0xf << TAG_SHIFT;
/// SCTLR_EL1 bits: ATA (43), TCF (41:40).
const SCTLR_ATA: u64 = 1 << 43;
const SCTLR_TCF_SHIFT: u32 = 40;
/// TCR_EL1.TBI0: top byte ignored for TTBR0 addresses (tagged pointers).
const TCR_TBI0: u64 = 1 << 37;
/// Data abort from the current EL, DFSC Synchronous Tag Check Fault.
const EC_DABT_CUR: u64 = 0x25;
const DFSC_TAG_CHECK: u64 = 0x11;

macro_rules! mrs {
    ($r:literal) => {{
        let v: u64;
        // SAFETY: reading an EL1-accessible system register; the caller checked MTE exists.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $r), out(reg) v, options(nomem, nostack)) };
        v
    }};
}
macro_rules! msr {
    ($r:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the guest's own EL1 configuration (MTE registers, translation control).
        unsafe {
            core::arch::asm!(concat!("msr ", $r, ", {}"), "isb", in(reg) v, options(nostack))
        };
    }};
}

fn tag_of(p: u64) -> u64 {
    (p & TAG_MASK) >> TAG_SHIFT
}
fn with_tag(p: u64, t: u64) -> u64 {
    (p & !TAG_MASK) | ((t & 0xf) << TAG_SHIFT)
}

fn irg(p: u64) -> u64 {
    let t: u64;
    // SAFETY: IRG only computes a register value.
    unsafe {
        core::arch::asm!(".arch_extension memtag", "irg {t}, {p}", t = out(reg) t, p = in(reg) p, options(nomem, nostack))
    };
    t
}

/// The Allocation Tag of the granule at `p`.
fn ldg(p: u64) -> u64 {
    let mut t = p;
    // SAFETY: LDG reads the tag of a granule in one of this module's pages.
    unsafe {
        core::arch::asm!(".arch_extension memtag", "ldg {t}, [{p}]", t = inout(reg) t, p = in(reg) p, options(nostack))
    };
    tag_of(t)
}

/// STG: set the tag of the granule at `p` to `tag` (one instruction; Bulwark may skip it).
fn stg(p: u64, tag: u64) {
    let t = with_tag(p, tag);
    // SAFETY: STG writes only the Allocation Tag of a granule in one of this module's pages.
    unsafe {
        core::arch::asm!(".arch_extension memtag", "stg {t}, [{p}]", t = in(reg) t, p = in(reg) p, options(nostack))
    };
}

/// ST2G: set the tags of the two granules at `p` to `tag`.
fn st2g(p: u64, tag: u64) {
    let t = with_tag(p, tag);
    // SAFETY: ST2G writes only the Allocation Tags of two granules in one of this module's pages.
    unsafe {
        core::arch::asm!(".arch_extension memtag", "st2g {t}, [{p}]", t = in(reg) t, p = in(reg) p, options(nostack))
    };
}

fn rd(p: u64) -> u64 {
    // SAFETY: an aligned address in one of this module's pages (possibly tagged, TBI0 on).
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

/// One `str` through a (tagged) pointer; `Err(esr)` when it faulted.
fn store_probe(p: u64, v: u64) -> Result<(), u64> {
    super::EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: `p` lies in one of this module's pages; the handler skips the instruction when it
    // aborts (a tag check fault).
    unsafe { core::arch::asm!("str {v}, [{a}]", a = in(reg) p, v = in(reg) v, options(nostack)) };
    if super::EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(())
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

fn set_tcf(mode: u64) {
    let s = mrs!("sctlr_el1") & !(0b11 << SCTLR_TCF_SHIFT);
    msr!("sctlr_el1", s | (mode << SCTLR_TCF_SHIFT));
}

fn is_tag_fault(esr: u64) -> bool {
    (esr >> 26) & 0x3f == EC_DABT_CUR && esr & 0x3f == DFSC_TAG_CHECK
}

pub fn run(mem_end: u64) -> ! {
    let mut c = Checks { failed: 0 };
    let level = (mrs!("id_aa64pfr1_el1") >> 8) & 0xf;
    c.check(
        level >= 2,
        format_args!("mte: ID_AA64PFR1_EL1.MTE = {level} (2+: tags in memory)"),
    );
    if level < 2 {
        say!("testguest: mte: run QEMU with -M virt,mte=on");
        guest_exit(1)
    }

    // 1. The MTE system registers (TFSR_EL1, TFSRE0_EL1, GCR_EL1, RGSR_EL1).
    msr!("S3_0_C5_C6_0", 0);
    msr!("S3_0_C5_C6_1", 0);
    msr!("S3_0_C1_C0_6", 1); // GCR_EL1: RRND = 0, exclude tag 0
    msr!("S3_0_C1_C0_5", 0x00ab_cd00); // RGSR_EL1: SEED = 0xabcd, TAG = 0
    let (tfsr, tfsre0, gcr, rgsr) = (
        mrs!("S3_0_C5_C6_0"),
        mrs!("S3_0_C5_C6_1"),
        mrs!("S3_0_C1_C0_6"),
        mrs!("S3_0_C1_C0_5"),
    );
    c.check(
        tfsr == 0 && tfsre0 == 0 && gcr == 1 && rgsr == 0x00ab_cd00,
        format_args!("mte: TFSR_EL1={tfsr:#x} TFSRE0_EL1={tfsre0:#x} GCR_EL1={gcr:#x} RGSR_EL1={rgsr:#x} written and read back"),
    );

    // 2. Tagged Normal memory at EL1.
    msr!("mair_el1", 0xf000); // attr1 (the guest's Normal memory): Normal WB Tagged
    msr!("tcr_el1", mrs!("tcr_el1") | TCR_TBI0);
    msr!("sctlr_el1", mrs!("sctlr_el1") | SCTLR_ATA);
    // SAFETY: the guest's own TLB after changing its memory attributes.
    unsafe { core::arch::asm!("tlbi vmalle1", "dsb ish", "isb", options(nostack)) };

    let page = TAG_PAGE.0.get() as u64;
    let t = irg(page);
    let tag = tag_of(t);
    c.check(
        t & !TAG_MASK == page && tag != 0,
        format_args!("mte: IRG {page:#x} -> {t:#x} (tag {tag}, not the excluded 0)"),
    );
    stg(page, tag);
    stg(page + 16, tag ^ 0xf);
    let (a, b) = (ldg(page), ldg(page + 16));
    c.check(
        a == tag && b == tag ^ 0xf,
        format_args!("mte: STG/LDG: granule 0 tag {a} (want {tag}), granule 1 tag {b}"),
    );
    for _ in 0..3 {
        hvc(u64::from(ids::PSCI_VERSION), 0, 0, 0);
    }
    let _ = probe(mem_end, false); // a stage-2 abort (SEA) past the end of memory
    let (a2, b2) = (ldg(page), ldg(page + 16));
    c.check(
        a2 == tag && b2 == tag ^ 0xf,
        format_args!("mte: tags still {a2}/{b2} after 3 HVCs and a stage-2 abort"),
    );

    // 3. Tag checks, synchronous then asynchronous.
    let wrong = with_tag(page, tag ^ 0xf);
    set_tcf(1);
    let right_ok = probe(t, false).is_ok();
    let before = ABORTS.load(Ordering::Relaxed);
    let r = probe(wrong, false);
    let esr = r.err().unwrap_or(0);
    c.check(
        right_ok && is_tag_fault(esr) && ABORTS.load(Ordering::Relaxed) == before + 1,
        format_args!(
            "mte: sync checks: right tag loads, wrong tag -> Tag Check fault (esr {esr:#x})"
        ),
    );
    set_tcf(2);
    let _ = rd(wrong);
    hvc(u64::from(ids::PSCI_VERSION), 0, 0, 0);
    let tfsr = mrs!("S3_0_C5_C6_0");
    set_tcf(0);
    msr!("S3_0_C5_C6_0", 0);
    c.check(
        tfsr & 1 == 1,
        format_args!(
            "mte: async checks: TFSR_EL1 = {tfsr:#x} (TF0 set) after a wrong-tag load and an HVC"
        ),
    );

    // 4a. A page locked whole: its tags are locked too.
    let lp = LOCKED_PAGE.0.get() as u64;
    let cp = CHUNK_PAGE.0.get() as u64;
    say!("testguest: mte: locked page {lp:#x}, chunk page {cp:#x}");
    stg(lp, 3);
    let r = roe(ROE_MPROTECT, lp, 1);
    c.check(r == 1, format_args!("mte: ROE_MPROTECT {lp:#x} -> {r:#x}"));
    stg(lp, 5);
    let lt = ldg(lp);
    c.check(
        lt == 3 && rd(lp) == 0x4444,
        format_args!("mte: STG to the locked page skipped (tag {lt}, want 3)"),
    );

    // 4b. A chunk page: the granule at +0x800 holds protected bytes, the one at +0x110 does not.
    // (QEMU 7.2 keeps one tag for all granules with address bit 4 clear and one for those with
    // it set, so the two granules here differ in bit 4; docs/aarch64.md.)
    stg(cp + 0x800, 7);
    stg(cp + 0x110, 2);
    let r = roe(ROE_MPROTECT_CHUNK, cp + 0x800, 8);
    c.check(
        r == 8,
        format_args!("mte: ROE_MPROTECT_CHUNK {:#x}+8 -> {r:#x}", cp + 0x800),
    );
    stg(cp + 0x800, 9);
    let pt = ldg(cp + 0x800);
    c.check(
        pt == 7,
        format_args!("mte: STG to the protected granule skipped (tag {pt}, want 7)"),
    );
    // ST2G from the unprotected granule below into the protected one: the fault is at an
    // unprotected byte, the step's tag comparison finds the protected granule's tag changed.
    st2g(cp + 0x7f0, 9);
    let (lo, hi) = (ldg(cp + 0x7f0), ldg(cp + 0x800));
    c.check(
        lo == 9 && hi == 7,
        format_args!("mte: ST2G across into the protected granule: unprotected tag {lo} (9), protected tag {hi} (7)"),
    );
    stg(cp + 0x110, 4);
    let ut = ldg(cp + 0x110);
    c.check(
        ut == 4,
        format_args!("mte: STG to an unprotected granule of the chunk page lands (tag {ut})"),
    );
    set_tcf(1);
    let r_wrong = store_probe(with_tag(cp + 0x110, 2), 0x6666);
    let after_wrong = rd(with_tag(cp + 0x110, 4));
    let r_right = store_probe(with_tag(cp + 0x110, 4), 0x7777);
    let after_right = rd(with_tag(cp + 0x110, 4));
    set_tcf(0);
    let esr = r_wrong.err().unwrap_or(0);
    c.check(
        is_tag_fault(esr) && after_wrong == 0x5555,
        format_args!("mte: wrong-tag store to the chunk page -> Tag Check fault (esr {esr:#x}), data {after_wrong:#x}"),
    );
    c.check(
        r_right.is_ok() && after_right == 0x7777,
        format_args!("mte: right-tag store to the chunk page lands ({after_right:#x})"),
    );
    let kept = rd(cp + 0x800);
    c.check(
        kept == 0x5555,
        format_args!("mte: protected bytes unchanged ({kept:#x})"),
    );

    if c.failed != 0 {
        say!("testguest: mte: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: mte: all checks passed");
    system_off()
}
