//! The values Bulwark writes to inject a synchronous external abort into the guest (pure,
//! host-tested; `el2::inject_sync_external_abort` writes them to the registers).

/// What the guest's EL1 sees for an injected abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortInjection {
    /// ESR_EL1: EC 0x25/0x24 (data abort from EL1/EL0) or 0x21/0x20 (instruction abort),
    /// IL = 1, ISV = 0, FSC 0x10 (synchronous external abort), WnR kept for data aborts.
    pub esr: u64,
    /// Offset from VBAR_EL1 of the synchronous vector for where the guest was.
    pub vector_offset: u64,
    /// PSTATE the guest's handler starts with.
    pub pstate: u64,
}

/// Compute the injection for a fault taken with guest PSTATE `pstate` (SPSR_EL2 value) and the
/// guest's SCTLR_EL1 `sctlr`.
pub fn abort_injection(pstate: u64, instruction: bool, wnr: bool, sctlr: u64) -> AbortInjection {
    let mode = pstate & 0x1f;
    let aarch32 = pstate & (1 << 4) != 0;
    let from_el0 = aarch32 || mode == 0b00000;
    let ec: u64 = match (instruction, from_el0) {
        (false, false) => 0x25,
        (false, true) => 0x24,
        (true, false) => 0x21,
        (true, true) => 0x20,
    };
    let mut esr = (ec << 26) | (1 << 25) | 0x10;
    if wnr && !instruction {
        esr |= 1 << 6;
    }
    let vector_offset = match mode {
        0b00100 => 0x000,      // EL1t
        0b00101 => 0x200,      // EL1h
        _ if aarch32 => 0x600, // AArch32 EL0
        _ => 0x400,            // AArch64 EL0
    };
    // EL1h, D/A/I/F masked; PAN set when SCTLR_EL1.SPAN == 0, else kept; SSBS = SCTLR_EL1.DSSBS.
    let mut new = 0x3c5;
    if sctlr & (1 << 23) == 0 {
        new |= 1 << 22;
    } else {
        new |= pstate & (1 << 22);
    }
    if sctlr & (1 << 44) != 0 {
        new |= 1 << 12;
    }
    AbortInjection {
        esr,
        vector_offset,
        pstate: new,
    }
}

/// SPSR A, I, F bits (8:6).
const SPSR_AIF: u64 = 0b111 << 6;

/// `spsr` with its A, I, F bits (8:6) taken from `pstate`, all other bits kept: after a
/// software-stepped instruction took an exception to EL1, SPSR_EL1 holds the A/I/F mask Bulwark
/// set for the step; this puts back the guest's own (its ERET must not return masked).
pub const fn spsr_with_aif_of(spsr: u64, pstate: u64) -> u64 {
    (spsr & !SPSR_AIF) | (pstate & SPSR_AIF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spsr_aif_patch_keeps_other_bits() {
        // Exception entry saved EL1h with D/A/I/F set (the step's mask) and NZCV/SS bits.
        let spsr = 0xf000_0000 | (1 << 21) | 0x3c5;
        // The guest ran with interrupts unmasked (only D set).
        assert_eq!(
            spsr_with_aif_of(spsr, 0x205),
            0xf000_0000 | (1 << 21) | 0x205
        );
        // Its own masks come back as they were, nothing else is taken from pstate.
        assert_eq!(spsr_with_aif_of(0x5, 0xffff_ffff_0000_0000 | 0x0c0), 0x0c5);
        assert_eq!(spsr_with_aif_of(0x3c5, 0x3c5), 0x3c5);
    }

    const SPAN: u64 = 1 << 23;

    #[test]
    fn data_abort_from_el1h() {
        let i = abort_injection(0x6000_03c5, false, false, SPAN);
        assert_eq!(i.esr, 0x9600_0010);
        assert_eq!(i.vector_offset, 0x200);
        assert_eq!(i.pstate, 0x3c5);
    }

    #[test]
    fn write_from_el0_and_pan() {
        let i = abort_injection(0x0, false, true, 0);
        assert_eq!(i.esr, 0x9200_0050);
        assert_eq!(i.vector_offset, 0x400);
        assert_eq!(i.pstate, 0x3c5 | (1 << 22), "PAN set when SPAN = 0");
    }

    #[test]
    fn instruction_abort_el1t_and_aarch32_el0() {
        let i = abort_injection(0b00100, true, true, SPAN);
        assert_eq!(i.esr, 0x8600_0010, "WnR never set for instruction aborts");
        assert_eq!(i.vector_offset, 0x000);
        let a32 = abort_injection(0b10000, false, false, SPAN);
        assert_eq!(a32.esr >> 26, 0x24);
        assert_eq!(a32.vector_offset, 0x600);
    }
}
