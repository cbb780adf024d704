//! Arm VMSAv8-64 **stage-1** descriptor format (4 KiB granule), for the tables Bulwark gives an
//! SMMUv3 that implements stage 1 only (QEMU 7.2's model: SMMU_IDR0.S1P = 1, S2P = 0). Bulwark
//! owns and builds these tables; the guest never sees them. Their input address is the guest's
//! IPA (what a guest driver programs into its device), their output the host-physical address,
//! exactly as in the CPU's stage 2; the permissions are the DMA view of the same store
//! ([`crate::guest::Guest::sync_dma`]).
//!
//! Descriptor bits (Arm ARM D8.3): table = bits 1:0 `0b11` + next-level address (APTable,
//! XNTable, PXNTable all 0: no hierarchical restriction); block (levels 1-2) bits 1:0 `0b01`;
//! page (level 3) `0b11`; AttrIndx[4:2] (MAIR index: [`MAIR`]), AP[2:1] bits 7:6 (AP[2] = 1:
//! read-only; AP[1] = 1: unprivileged access too, so a device's access is allowed whatever
//! privilege it presents), SH[9:8], AF bit 10, nG bit 11 = 0, PXN bit 53, UXN bit 54.
//!
//! A stage-1 descriptor cannot say "no read" (a valid entry is always readable): a page the
//! device may not read has no entry at all (the DMA layout never asks for one; the format
//! refuses it). Write-only is therefore unrepresentable too.

use super::{Entry, Format, LeafAttrs, Mapping, MemType, PageTable, Perms, PtError};
use crate::addr::HostPhysAddr;
use crate::physmem::PhysMem;

pub const S1_VALID: u64 = 1 << 0;
pub const S1_TABLE_OR_PAGE: u64 = 1 << 1;
pub const S1_ATTRINDX_SHIFT: u32 = 2;
/// MAIR index 0: Normal, inner/outer write-back read/write-allocate (`0xff`).
pub const S1_ATTR_NORMAL: u64 = 0;
/// MAIR index 1: Device-nGnRE (`0x04`).
pub const S1_ATTR_DEVICE: u64 = 1;
/// The MAIR value that goes with these indices (MAIR0 of an SMMU context descriptor).
pub const MAIR: u64 = 0x04ff;
/// AP[1]: accessible at any privilege.
pub const S1_AP_ANY: u64 = 1 << 6;
/// AP[2]: read-only.
pub const S1_AP_RO: u64 = 1 << 7;
pub const S1_SH_INNER: u64 = 0b11 << 8;
pub const S1_AF: u64 = 1 << 10;
pub const S1_PXN: u64 = 1 << 53;
pub const S1_UXN: u64 = 1 << 54;
/// Output-address bits 47:12.
pub const S1_ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Stage-1 format (4 KiB granule, 48-bit output).
#[derive(Debug)]
pub struct Stage1Format;

impl Format for Stage1Format {
    const BREAK_BEFORE_MAKE: bool = true;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & S1_VALID == 0 {
            return Entry::Invalid;
        }
        let addr = HostPhysAddr::new(raw & S1_ADDR_MASK);
        let table_bit = raw & S1_TABLE_OR_PAGE != 0;
        if level > 0 && table_bit {
            return Entry::Table(addr);
        }
        if level == 0 && !table_bit {
            // Reserved encoding at level 3: invalid.
            return Entry::Invalid;
        }
        let mut perms = Perms::R;
        if raw & S1_AP_RO == 0 {
            perms = perms.union(Perms::W);
        }
        if raw & (S1_PXN | S1_UXN) != (S1_PXN | S1_UXN) {
            perms = perms.union(Perms::X);
        }
        let mem = if (raw >> S1_ATTRINDX_SHIFT) & 0b111 == S1_ATTR_NORMAL {
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
        (next.as_u64() & S1_ADDR_MASK) | S1_VALID | S1_TABLE_OR_PAGE
    }

    fn encode_leaf(level: u8, m: &Mapping) -> Result<u64, PtError> {
        let p = m.attrs.perms;
        if m.attrs.spp || !p.read() || level > 2 {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        let a = m.hpa.as_u64();
        if a & !S1_ADDR_MASK != 0 {
            return Err(PtError::BadOutput(m.hpa));
        }
        let mut raw = a | S1_VALID | S1_AF | S1_AP_ANY;
        if level == 0 {
            raw |= S1_TABLE_OR_PAGE;
        }
        raw |= match m.attrs.mem {
            MemType::WriteBack => (S1_ATTR_NORMAL << S1_ATTRINDX_SHIFT) | S1_SH_INNER,
            MemType::Uncached => S1_ATTR_DEVICE << S1_ATTRINDX_SHIFT,
        };
        if !p.write() {
            raw |= S1_AP_RO;
        }
        if !p.exec() {
            raw |= S1_PXN | S1_UXN;
        }
        Ok(raw)
    }
}

pub type Stage1 = PageTable<Stage1Format>;

impl PageTable<Stage1Format> {
    /// An empty stage-1 table for an input space of `in_bits` (TnSZ = 64 - `in_bits`): 4 levels
    /// from 40 bits up, 3 levels (Arm level-1 start) below. 1 GiB blocks are available with a
    /// 4 KiB granule.
    pub fn new_stage1(mem: &mut dyn PhysMem, in_bits: u8) -> Result<Self, PtError> {
        let root_level = if in_bits > 39 { 3 } else { 2 };
        Self::new(mem, root_level, in_bits, true)
    }
}
