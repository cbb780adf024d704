//! ESR_EL2 decoding (Arm ARM D17.2.37): exception class and the syndrome fields Bulwark uses.
//! Pure functions, tested on the host.

/// Exception classes Bulwark distinguishes.
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const SVE_SIMD_FP: u8 = 0x07;
    pub const ILLEGAL_STATE: u8 = 0x0e;
    pub const SVC64: u8 = 0x15;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYSREG: u8 = 0x18;
    pub const SVE: u8 = 0x19;
    pub const PAC: u8 = 0x09;
    pub const IABT_LOWER: u8 = 0x20;
    pub const IABT_CUR: u8 = 0x21;
    pub const PC_ALIGN: u8 = 0x22;
    pub const DABT_LOWER: u8 = 0x24;
    pub const DABT_CUR: u8 = 0x25;
    pub const SP_ALIGN: u8 = 0x26;
    pub const SERROR: u8 = 0x2f;
    pub const BRK64: u8 = 0x3c;
}

/// A raw ESR value with accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    pub const fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }
    /// Instruction length: true for a 32-bit instruction.
    pub const fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }
    /// HVC/SMC immediate.
    pub const fn imm16(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
    /// Abort syndrome: fault status code (DFSC/IFSC).
    pub const fn fsc(self) -> u8 {
        (self.0 & 0x3f) as u8
    }
    /// Data abort: write not read.
    pub const fn wnr(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Data abort: the fault was on a stage-1 translation table walk.
    pub const fn s1ptw(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Data abort: FAR is not valid.
    pub const fn fnv(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// Data abort: instruction syndrome valid (SAS/SRT/SF below mean something).
    pub const fn isv(self) -> bool {
        self.0 & (1 << 24) != 0
    }
    /// Data abort with ISV: access size in bytes.
    pub const fn access_size(self) -> u8 {
        1 << ((self.0 >> 22) & 3)
    }
    /// Data abort with ISV: register transferred.
    pub const fn srt(self) -> u8 {
        ((self.0 >> 16) & 0x1f) as u8
    }
    pub const fn is_abort(self) -> bool {
        matches!(self.ec(), ec::IABT_LOWER | ec::DABT_LOWER)
    }
    /// WFx: true for WFE, false for WFI.
    pub const fn is_wfe(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Name of an exception class, for logs.
pub fn ec_name(ec: u8) -> &'static str {
    match ec {
        ec::UNKNOWN => "unknown/undefined",
        ec::WFX => "wfi/wfe",
        ec::SVE_SIMD_FP => "fp/simd access",
        ec::ILLEGAL_STATE => "illegal execution state",
        ec::PAC => "pointer authentication",
        ec::SVC64 => "svc",
        ec::HVC64 => "hvc",
        ec::SMC64 => "smc",
        ec::SYSREG => "msr/mrs trap",
        ec::SVE => "sve access",
        ec::IABT_LOWER => "instruction abort (lower EL)",
        ec::IABT_CUR => "instruction abort (EL2)",
        ec::PC_ALIGN => "pc alignment",
        ec::DABT_LOWER => "data abort (lower EL)",
        ec::DABT_CUR => "data abort (EL2)",
        ec::SP_ALIGN => "sp alignment",
        ec::SERROR => "serror",
        ec::BRK64 => "brk",
        _ => "other",
    }
}

/// Name of an abort fault status code, for logs.
pub fn fsc_name(fsc: u8) -> &'static str {
    match fsc {
        0x00..=0x03 => "address size fault",
        0x04..=0x07 => "translation fault",
        0x09..=0x0b => "access flag fault",
        0x0d..=0x0f => "permission fault",
        0x10 => "synchronous external abort",
        0x21 => "alignment fault",
        0x30 => "tlb conflict",
        _ => "other fault",
    }
}

/// Level of a translation/permission/access-flag fault (FSC bits 1:0).
pub const fn fsc_level(fsc: u8) -> u8 {
    fsc & 3
}

/// A stage-2 fault the hypervisor may have to serve (translation, access flag, permission)
/// as opposed to an external abort reported through ESR_EL2.
pub const fn is_stage2_fault(fsc: u8) -> bool {
    matches!(fsc, 0x00..=0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hvc() {
        // HVC #0 from AArch64: EC 0x16, IL 1, imm 0.
        let e = Esr(0x5a00_0000);
        assert_eq!(e.ec(), ec::HVC64);
        assert!(e.il());
        assert_eq!(e.imm16(), 0);
        assert_eq!(ec_name(e.ec()), "hvc");
    }

    #[test]
    fn decodes_data_abort() {
        // Data abort from EL1, ISV, 4-byte write of x3, level-2 translation fault.
        let e = Esr((0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (3 << 16) | (1 << 6) | 0x06);
        assert!(e.is_abort());
        assert!(e.isv() && e.wnr());
        assert_eq!(e.access_size(), 4);
        assert_eq!(e.srt(), 3);
        assert_eq!(fsc_name(e.fsc()), "translation fault");
        assert_eq!(fsc_level(e.fsc()), 2);
        assert!(is_stage2_fault(e.fsc()));
        assert!(!is_stage2_fault(0x10));
    }
}
