//! GICv3 redistributor from the guest's side (docs/aarch64.md, "GICv3 redistributors: LPIs
//! off"): Bulwark emulates each RD_base control page so that LPIs, whose tables the redistributor
//! reads and writes at *physical* addresses the guest would choose, can never be turned on.
//! Checked on QEMU virt's first redistributor (0x080a0000, the only one with one CPU):
//! GICR_TYPER.PLPIS reads 0 (64- and 32-bit reads) while the rest of GICR_TYPER comes from the
//! real register (Last set); writes to GICR_PENDBASER and GICR_PROPBASER do not change them;
//! setting GICR_CTLR.EnableLPIs does not stick.

use core::ptr::{read_volatile, write_volatile};

use super::Checks;

/// QEMU virt's first GICv3 redistributor, RD_base frame.
const RD: u64 = 0x080a_0000;
const CTLR: u64 = RD;
const TYPER: u64 = RD + 0x8;
const PROPBASER: u64 = RD + 0x70;
const PENDBASER: u64 = RD + 0x78;

fn rd64(a: u64) -> u64 {
    // SAFETY: a GICR register in the guest's identity-mapped device area (first GiB), 8-aligned.
    unsafe { read_volatile(a as *const u64) }
}
fn rd32(a: u64) -> u32 {
    // SAFETY: as `rd64`, 4-aligned.
    unsafe { read_volatile(a as *const u32) }
}
fn wr64(a: u64, v: u64) {
    // SAFETY: as `rd64`; a GICR register write (Bulwark decides what reaches the hardware).
    unsafe { write_volatile(a as *mut u64, v) }
}
fn wr32(a: u64, v: u32) {
    // SAFETY: as `wr64`, 4-aligned.
    unsafe { write_volatile(a as *mut u32, v) }
}

pub fn checks(c: &mut Checks) {
    let typer = rd64(TYPER);
    c.check(
        typer & 1 == 0 && typer & (1 << 4) != 0,
        format_args!("GICR_TYPER {typer:#x}: PLPIS reads 0, Last (from the real register) set"),
    );
    let lo = rd32(TYPER);
    c.check(
        lo & 1 == 0 && u64::from(lo) == typer & 0xffff_ffff,
        format_args!("GICR_TYPER low word {lo:#x}: PLPIS reads 0"),
    );
    // A table address inside the IPA window where Bulwark's memory would be (RAM base + 32 MiB
    // as a physical address is guest RAM; any value must be ignored).
    let (prop0, pend0) = (rd64(PROPBASER), rd64(PENDBASER));
    wr64(PENDBASER, 0x4000_0000 | 0x780);
    wr64(PROPBASER, 0x4000_0000 | 0x78f);
    wr32(PENDBASER + 4, 0x1);
    let (prop1, pend1) = (rd64(PROPBASER), rd64(PENDBASER));
    c.check(
        prop1 == prop0 && pend1 == pend0,
        format_args!(
            "GICR_PROPBASER/PENDBASER writes ignored ({prop0:#x}/{pend0:#x} -> {prop1:#x}/{pend1:#x})"
        ),
    );
    let ctlr0 = rd32(CTLR);
    wr32(CTLR, ctlr0 | 1);
    let ctlr1 = rd32(CTLR);
    wr32(CTLR, ctlr0);
    c.check(
        ctlr1 & 1 == 0,
        format_args!("GICR_CTLR.EnableLPIs does not stick ({ctlr0:#x} -> {ctlr1:#x})"),
    );
}
