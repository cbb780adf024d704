//! Arm VMSAv8-64 stage-2 descriptor format (4 KiB granule) and the VTTBR_EL2 / VTCR_EL2 values.
//!
//! Written here rather than through `aarch64-paging` 0.12: its `Translation::allocate_table` is
//! infallible (an exhausted pool can only panic, while the issue demands an error with the state
//! unchanged), it edits tables through raw pointers (so it cannot run over the [`PhysMem`] fake on
//! the host), and EPT needs this engine anyway. The descriptor bits are the architectural ones
//! (Arm ARM D8.3): table = bits 1:0 `0b11` + next-level address; block (levels 1-2) bits 1:0
//! `0b01`; page (level 3) bits 1:0 `0b11`; MemAttr[5:2], S2AP[7:6], SH[9:8], AF bit 10, XN bit 54.

use super::{Entry, Format, LeafAttrs, Mapping, MemType, PageTable, Perms, PtError};
use crate::addr::HostPhysAddr;
use crate::physmem::PhysMem;

pub const S2_VALID: u64 = 1 << 0;
pub const S2_TABLE_OR_PAGE: u64 = 1 << 1;
pub const S2_MEMATTR_SHIFT: u32 = 2;
/// MemAttr: Normal, outer and inner write-back cacheable.
pub const S2_MEMATTR_NORMAL_WB: u64 = 0b1111;
/// MemAttr: Device-nGnRE.
pub const S2_MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
pub const S2AP_READ: u64 = 1 << 6;
pub const S2AP_WRITE: u64 = 1 << 7;
pub const S2_SH_INNER: u64 = 0b11 << 8;
pub const S2_AF: u64 = 1 << 10;
pub const S2_XN: u64 = 1 << 54;
/// Output-address bits 47:12.
pub const S2_ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Stage-2 format. Stage 2 can express every combination the attribute store allows except
/// execute-only, which Bulwark refuses on arm64 (documented in docs/protection-engine.md).
#[derive(Debug)]
pub struct Stage2Format;

impl Format for Stage2Format {
    const BREAK_BEFORE_MAKE: bool = true;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & S2_VALID == 0 {
            return Entry::Invalid;
        }
        let addr = HostPhysAddr::new(raw & S2_ADDR_MASK);
        let table_bit = raw & S2_TABLE_OR_PAGE != 0;
        if level > 0 && table_bit {
            return Entry::Table(addr);
        }
        if level == 0 && !table_bit {
            // Reserved encoding at level 3: the hardware treats it as invalid.
            return Entry::Invalid;
        }
        let mut perms = Perms::NONE;
        if raw & S2AP_READ != 0 {
            perms = perms.union(Perms::R);
        }
        if raw & S2AP_WRITE != 0 {
            perms = perms.union(Perms::W);
        }
        if raw & S2_XN == 0 {
            perms = perms.union(Perms::X);
        }
        let mem = if (raw >> S2_MEMATTR_SHIFT) & 0xf == S2_MEMATTR_NORMAL_WB {
            MemType::WriteBack
        } else {
            MemType::Uncached
        };
        Entry::Leaf(Mapping {
            hpa: addr,
            attrs: LeafAttrs {
                perms,
                mem,
                spp: false,
            },
        })
    }

    fn encode_table(next: HostPhysAddr) -> u64 {
        (next.as_u64() & S2_ADDR_MASK) | S2_VALID | S2_TABLE_OR_PAGE
    }

    fn encode_leaf(level: u8, m: &Mapping) -> Result<u64, PtError> {
        let p = m.attrs.perms;
        if m.attrs.spp || p == Perms::NONE || (p.write() && !p.read()) || (p.exec() && !p.read()) {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        if level > 2 {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        let a = m.hpa.as_u64();
        if a & !S2_ADDR_MASK != 0 {
            return Err(PtError::BadOutput(m.hpa));
        }
        let mut raw = a | S2_VALID | S2_AF;
        if level == 0 {
            raw |= S2_TABLE_OR_PAGE;
        }
        raw |= match m.attrs.mem {
            MemType::WriteBack => (S2_MEMATTR_NORMAL_WB << S2_MEMATTR_SHIFT) | S2_SH_INNER,
            MemType::Uncached => S2_MEMATTR_DEVICE_NGNRE << S2_MEMATTR_SHIFT,
        };
        if p.read() {
            raw |= S2AP_READ;
        }
        if p.write() {
            raw |= S2AP_WRITE;
        }
        if !p.exec() {
            raw |= S2_XN;
        }
        Ok(raw)
    }
}

/// How the stage-2 tables are shaped for a CPU, from ID_AA64MMFR0_EL1.PARange.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stage2Config {
    /// IPA size in bits (VTCR_EL2.T0SZ = 64 - ipa_bits).
    pub ipa_bits: u8,
    /// PARange encoding written to VTCR_EL2.PS.
    pub ps: u8,
    /// Root level in the engine's numbering (3 = Arm level 0, 2 = Arm level 1).
    pub root_level: u8,
}

/// ID_AA64MMFR0_EL1.PARange is a value this engine does not know.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnknownPaRange(pub u8);

impl Stage2Config {
    /// Arm level-0 starts (4 levels) need a 44-bit or larger PA size; smaller CPUs get a 39-bit
    /// IPA space with a level-1 start and one root table (no concatenated roots). PARange
    /// encodings above 48 bits (52-bit, FEAT_LPA) are capped at 48.
    pub fn from_parange(parange: u8) -> Result<Self, UnknownPaRange> {
        let pa_bits: u8 = match parange {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            6 => 52,
            _ => return Err(UnknownPaRange(parange)),
        };
        let ps = parange.min(5);
        let pa_bits = pa_bits.min(48);
        Ok(if pa_bits >= 44 {
            Self {
                ipa_bits: pa_bits,
                ps,
                root_level: 3,
            }
        } else {
            Self {
                ipa_bits: pa_bits.min(39),
                ps,
                root_level: 2,
            }
        })
    }

    /// VTCR_EL2: T0SZ, SL0 (0b10 = level 0, 0b01 = level 1), IRGN0/ORGN0 = write-back
    /// write-allocate, SH0 = inner shareable, TG0 = 4 KiB, PS, bit 31 RES1. VS (8-bit VMID),
    /// HA/HD (no hardware A/D) are 0.
    pub fn vtcr(&self) -> u64 {
        let t0sz = u64::from(64 - self.ipa_bits);
        let sl0: u64 = if self.root_level == 3 { 0b10 } else { 0b01 };
        t0sz | (sl0 << 6)
            | (0b01 << 8)
            | (0b01 << 10)
            | (0b11 << 12)
            | (u64::from(self.ps) << 16)
            | (1 << 31)
    }
}

pub type Stage2 = PageTable<Stage2Format>;

impl PageTable<Stage2Format> {
    /// An empty stage-2 table for `cfg`. 1 GiB blocks are always available with a 4 KiB granule.
    pub fn new_stage2(mem: &mut dyn PhysMem, cfg: Stage2Config) -> Result<Self, PtError> {
        Self::new(mem, cfg.root_level, cfg.ipa_bits, true)
    }

    /// VTTBR_EL2: root table address, VMID in bits 55:48 (8-bit VMIDs).
    pub fn vttbr(&self, vmid: u8) -> u64 {
        (self.root().as_u64() & S2_ADDR_MASK) | (u64::from(vmid) << 48)
    }
}
