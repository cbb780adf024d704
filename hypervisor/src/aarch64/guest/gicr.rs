//! GICv3 redistributor control pages, emulated (docs/aarch64.md, "GICv3 redistributors: LPIs
//! off"). GICR_PROPBASER and GICR_PENDBASER hold *physical* addresses: a guest that programs them
//! with an IPA of its choice and sets GICR_CTLR.EnableLPIs makes the redistributor read (and write
//! back pending bits of) host memory, Bulwark's own included. So the first 4 KiB page of each
//! redistributor's RD_base frame (CTLR, IIDR, TYPER, STATUSR, WAKER, PROPBASER, PENDBASER, ...)
//! has no stage-2 mapping; the guest's loads and stores to it trap here and are done on the real
//! page, except:
//! * GICR_TYPER reads with PLPIS (bit 0) = 0: the guest sees no physical LPI support;
//! * writes to GICR_CTLR have EnableLPIs (bit 0) cleared;
//! * writes to GICR_PROPBASER (0x70) and GICR_PENDBASER (0x78) are ignored.
//!
//! Only single-register accesses the syndrome describes (ISV = 1), naturally aligned, of 4 or 8
//! bytes are emulated (the GIC architecture allows no others on these registers); anything else
//! gets an external abort. The SGI_base frame (and a GICv4 VLPI frame) stays passed through.

extern crate alloc;

use super::{Decoded, Vm};
use bulwark_aarch64::esr::ec;
use bulwark_aarch64::gicr::{rule, RdAccess, GICR_TYPER, TYPER_LAST, TYPER_VLPIS};
use bulwark_core::exit::{Access, Action, MemFault};

/// The most redistributors Bulwark emulates control pages for (QEMU virt's region holds 123).
pub const MAX_RDS: usize = 256;
/// Size of one redistributor frame (RD_base or SGI_base).
const FRAME: u64 = 0x1_0000;
const PAGE: u64 = 0x1000;

/// Host-physical (= IPA, devices are identity-mapped) bases of the emulated RD_base pages.
#[derive(Clone, Debug, Default)]
pub struct RdPages {
    pages: alloc::vec::Vec<u64>,
}

impl RdPages {
    /// Walk the redistributors of the regions `(base, size)` by reading each one's GICR_TYPER
    /// on the real frame (2 frames each, 4 with VLPIS) until one says Last or the region ends.
    /// Call at boot, before stage 2 is derived (the pages returned are left out of it).
    pub fn discover(regions: impl Iterator<Item = (u64, u64)>) -> Self {
        let mut pages = alloc::vec::Vec::new();
        for (base, size) in regions {
            let end = base.saturating_add(size);
            let mut rd = base;
            while rd.checked_add(2 * FRAME).is_some_and(|e| e <= end) && pages.len() < MAX_RDS {
                if pages.try_reserve(1).is_err() {
                    break;
                }
                pages.push(rd);
                // SAFETY: `rd` is the start of a redistributor frame named by the device tree,
                // inside the first GiB or the high device window, identity-mapped as Device
                // memory at EL2; GICR_TYPER is a read-only register without side effects.
                let typer = unsafe { core::ptr::read_volatile((rd + GICR_TYPER) as *const u64) };
                log::debug!("GICv3: redistributor at {rd:#x}, GICR_TYPER {typer:#x}");
                if typer & TYPER_LAST != 0 {
                    break;
                }
                let frames = if typer & TYPER_VLPIS != 0 { 4 } else { 2 };
                rd = rd.saturating_add(frames * FRAME);
            }
        }
        Self { pages }
    }

    /// The emulated pages (IPA = PA bases, 4 KiB each).
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }

    fn contains(&self, ipa: u64) -> bool {
        self.pages.contains(&(ipa & !(PAGE - 1)))
    }
}

impl Vm {
    /// A stage-2 abort on an emulated RD_base page: `None` if `f` is not one.
    pub(super) fn gicr_access(&mut self, d: &Decoded, f: &MemFault) -> Option<Action> {
        let ipa = f.gpa.as_u64();
        if !self.gicr.contains(ipa) {
            return None;
        }
        let esr = d.esr;
        let size = esr.access_size();
        let off = ipa & (PAGE - 1);
        let usable = esr.ec() == ec::DABT_LOWER
            && esr.isv()
            && !esr.s1ptw()
            && matches!(size, 4 | 8)
            && off.is_multiple_of(u64::from(size))
            && f.access != Access::Exec;
        if !usable {
            log::warn!(
                "GICv3 redistributor: access to {ipa:#x} at pc={:#x} Bulwark does not emulate (esr {:#x}: only 4- or 8-byte aligned single-register loads/stores); external abort",
                f.ip,
                esr.0
            );
            return Some(self.inject_or_stop(f));
        }
        let write = f.access == Access::Write;
        let srt = esr.srt();
        let value = self.regs.reg(srt);
        let value = if size == 4 {
            value & 0xffff_ffff
        } else {
            value
        };
        match rule(off, write, value) {
            RdAccess::Read { mask } => {
                // SAFETY: `ipa` is inside one of the RD_base pages found at boot (identity-mapped
                // Device memory at EL2), aligned to `size`; the guest could read this register
                // itself before Bulwark took the page away.
                let v = unsafe {
                    if size == 8 {
                        core::ptr::read_volatile(ipa as *const u64)
                    } else {
                        u64::from(core::ptr::read_volatile(ipa as *const u32))
                    }
                };
                // SSE (bit 21): sign-extend to SF (bit 15) width; Wt otherwise zero-extends.
                let mut v = v & mask;
                if esr.0 & (1 << 21) != 0 && size == 4 {
                    v = v as u32 as i32 as i64 as u64;
                    if esr.0 & (1 << 15) == 0 {
                        v &= 0xffff_ffff;
                    }
                }
                self.regs.set_reg(srt, v);
            }
            RdAccess::Write(v) => {
                // SAFETY: as for the read; the value passed the rule (no LPI enable, no table
                // address), so the write cannot point the redistributor at any memory.
                unsafe {
                    if size == 8 {
                        core::ptr::write_volatile(ipa as *mut u64, v);
                    } else {
                        core::ptr::write_volatile(ipa as *mut u32, v as u32);
                    }
                }
            }
            RdAccess::Ignore => {
                log::debug!(
                    "GICv3 redistributor: write {value:#x} to {ipa:#x} (PROPBASER/PENDBASER) ignored"
                );
            }
        }
        Some(Action::Advance)
    }
}
