//! Intel EPT descriptor format (SDM Vol. 3C, "EPT Translation Mechanism") and the EPTP value.
//!
//! Non-leaf: bits 2:0 = RWX (all set: permissions are decided at the leaf), bits 51:12 next table.
//! Leaf: bits 2:0 R/W/X, bits 5:3 memory type (0 UC, 6 WB), bit 6 ignore PAT (set), bit 7 = 1 for
//! a 2 MiB / 1 GiB leaf, bit 61 sub-page write permission (SPP), bits 51:12 output address.

use super::{Entry, Format, LeafAttrs, Mapping, MemType, PageTable, Perms, PtError};
use crate::addr::HostPhysAddr;
use crate::physmem::PhysMem;

pub const EPT_READ: u64 = 1 << 0;
pub const EPT_WRITE: u64 = 1 << 1;
pub const EPT_EXEC: u64 = 1 << 2;
pub const EPT_MEMTYPE_SHIFT: u32 = 3;
pub const EPT_MEMTYPE_UC: u64 = 0;
pub const EPT_MEMTYPE_WB: u64 = 6;
pub const EPT_IGNORE_PAT: u64 = 1 << 6;
pub const EPT_LARGE: u64 = 1 << 7;
pub const EPT_SPP: u64 = 1 << 61;
/// Output-address bits 51:12.
pub const EPT_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// EPT format. `EXEC_ONLY` says whether the CPU supports execute-only translations
/// (IA32_VMX_EPT_VPID_CAP bit 0); without it X without R is refused.
#[derive(Debug)]
pub struct EptFormat<const EXEC_ONLY: bool>;

impl<const EXEC_ONLY: bool> Format for EptFormat<EXEC_ONLY> {
    const BREAK_BEFORE_MAKE: bool = false;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & (EPT_READ | EPT_WRITE | EPT_EXEC) == 0 {
            return Entry::Invalid;
        }
        let addr = HostPhysAddr::new(raw & EPT_ADDR_MASK);
        let leaf = level == 0 || (raw & EPT_LARGE != 0 && level <= 2);
        if !leaf {
            return Entry::Table(addr);
        }
        let mem = if (raw >> EPT_MEMTYPE_SHIFT) & 7 == EPT_MEMTYPE_WB {
            MemType::WriteBack
        } else {
            MemType::Uncached
        };
        Entry::Leaf(Mapping {
            hpa: addr,
            attrs: LeafAttrs {
                perms: Perms::from_bits_truncate((raw & 7) as u8),
                mem,
                spp: raw & EPT_SPP != 0,
            },
        })
    }

    fn encode_table(next: HostPhysAddr) -> u64 {
        (next.as_u64() & EPT_ADDR_MASK) | EPT_READ | EPT_WRITE | EPT_EXEC
    }

    fn encode_leaf(level: u8, m: &Mapping) -> Result<u64, PtError> {
        let p = m.attrs.perms;
        if p == Perms::NONE {
            // All-zero permissions would read as "not present": an unmapped page is `None`.
            return Err(PtError::Unrepresentable(m.attrs));
        }
        if p.write() && !p.read() {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        if p.exec() && !p.read() && !EXEC_ONLY {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        if m.attrs.spp && (level != 0 || !p.read() || p.write()) {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        if level > 2 {
            return Err(PtError::Unrepresentable(m.attrs));
        }
        let a = m.hpa.as_u64();
        if a & !EPT_ADDR_MASK != 0 {
            return Err(PtError::BadOutput(m.hpa));
        }
        let memtype = match m.attrs.mem {
            MemType::WriteBack => EPT_MEMTYPE_WB,
            MemType::Uncached => EPT_MEMTYPE_UC,
        };
        let mut raw = a | u64::from(p.bits()) | (memtype << EPT_MEMTYPE_SHIFT) | EPT_IGNORE_PAT;
        if level > 0 {
            raw |= EPT_LARGE;
        }
        if m.attrs.spp {
            raw |= EPT_SPP;
        }
        Ok(raw)
    }
}

/// An EPT (4-level, 48-bit guest-physical space).
pub type Ept<const EXEC_ONLY: bool> = PageTable<EptFormat<EXEC_ONLY>>;

impl<const EXEC_ONLY: bool> PageTable<EptFormat<EXEC_ONLY>> {
    /// An empty 4-level EPT. `allow_1g`: IA32_VMX_EPT_VPID_CAP bit 17.
    pub fn new_ept(mem: &mut dyn PhysMem, allow_1g: bool) -> Result<Self, PtError> {
        Self::new(mem, 3, 48, allow_1g)
    }

    /// The EPTP VMCS value: memory type WB (bits 2:0 = 6), page-walk length 4 (bits 5:3 = 3),
    /// accessed/dirty flags off (bit 6 = 0), root table address.
    pub fn eptp(&self) -> u64 {
        (self.root().as_u64() & EPT_ADDR_MASK) | EPT_MEMTYPE_WB | (3 << 3)
    }
}
