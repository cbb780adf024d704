//! GICv3 redistributor RD_base page emulation rule (pure, host-tested; the hypervisor's
//! `guest/gicr.rs` traps the page and applies it). GICR_PROPBASER/PENDBASER hold physical
//! addresses, so the guest must never enable LPIs: GICR_TYPER reads with PLPIS = 0, GICR_CTLR
//! writes lose EnableLPIs, PROPBASER/PENDBASER writes are dropped; everything else passes through.

/// Offsets in the RD_base frame.
pub const GICR_CTLR: u64 = 0x0;
pub const GICR_TYPER: u64 = 0x8;
pub const GICR_PROPBASER: u64 = 0x70;
pub const GICR_PENDBASER: u64 = 0x78;
/// GICR_CTLR.EnableLPIs.
pub const CTLR_ENABLE_LPIS: u64 = 1;
/// GICR_TYPER.PLPIS (physical LPIs supported).
pub const TYPER_PLPIS: u64 = 1;
/// GICR_TYPER.VLPIS (GICv4: a VLPI frame follows SGI_base).
pub const TYPER_VLPIS: u64 = 1 << 1;
/// GICR_TYPER.Last (the last redistributor of its region).
pub const TYPER_LAST: u64 = 1 << 4;

/// What the guest's access to an RD_base page does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdAccess {
    /// Read the real register and AND the value with `mask`.
    Read { mask: u64 },
    /// Write this value to the real register.
    Write(u64),
    /// Drop the write.
    Ignore,
}

/// The rule for an access at page offset `off` (a store writes `value`).
pub const fn rule(off: u64, write: bool, value: u64) -> RdAccess {
    if !write {
        // PLPIS is bit 0 of GICR_TYPER's low word: a 4- or 8-byte read at 0x8.
        let mask = if off == GICR_TYPER {
            !TYPER_PLPIS
        } else {
            u64::MAX
        };
        return RdAccess::Read { mask };
    }
    // PROPBASER/PENDBASER, whole or either 32-bit half.
    if off >= GICR_PROPBASER && off < GICR_PENDBASER + 8 {
        return RdAccess::Ignore;
    }
    if off == GICR_CTLR {
        return RdAccess::Write(value & !CTLR_ENABLE_LPIS);
    }
    RdAccess::Write(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpis_never_reach_the_hardware() {
        assert_eq!(rule(0x8, false, 0), RdAccess::Read { mask: !1 });
        assert_eq!(rule(0xc, false, 0), RdAccess::Read { mask: u64::MAX });
        assert_eq!(rule(0x0, false, 0), RdAccess::Read { mask: u64::MAX });
        assert_eq!(rule(0x0, true, 0x8000_0001), RdAccess::Write(0x8000_0000));
        for off in [0x70, 0x74, 0x78, 0x7c] {
            assert_eq!(rule(off, true, 0x4200_0000), RdAccess::Ignore);
        }
        // WAKER and everything else pass through unchanged.
        assert_eq!(rule(0x14, true, 2), RdAccess::Write(2));
        assert_eq!(rule(0x80, true, 7), RdAccess::Write(7));
        assert_eq!(rule(0x6c, true, 7), RdAccess::Write(7));
    }
}
