//! x86 first-stage (guest) paging walker: paging off, 32-bit, PAE, 4-level and 5-level.
//!
//! Facts from the Intel SDM vol. 3A ch. 4 ("Paging"). The paging mode is chosen as the CPU does:
//! CR0.PG = 0 → none; CR4.PAE = 0 → 32-bit; EFER.LME = 0 → PAE; else 4-level, or 5-level with
//! CR4.LA57. The walker reads entries only; it never sets accessed or dirty bits.

use super::{
    bit_range, low_mask, read_entry32, read_entry64, GuestMemRead, GuestWalker, Translation,
    WalkError,
};
use crate::addr::{GuestPhysAddr, GuestVirtAddr};

/// Control-register bits the walker looks at.
pub mod bits {
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_LA57: u64 = 1 << 12;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;

    /// Paging-entry bits.
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const PS: u64 = 1 << 7;
    pub const XD: u64 = 1 << 63;
}
use bits::*;

/// The paging mode a state selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X86PagingMode {
    /// CR0.PG = 0: linear = physical (32-bit addresses).
    Off,
    /// 32-bit paging (CR4.PAE = 0).
    Bits32,
    /// PAE paging (CR4.PAE = 1, EFER.LME = 0).
    Pae,
    /// 4-level paging (IA-32e, CR4.LA57 = 0).
    Level4,
    /// 5-level paging (IA-32e, CR4.LA57 = 1).
    Level5,
}

/// A vCPU's paging state, as the back end reads it from the VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// PAE mode under EPT: the PDPTEs the CPU loaded (VMCS GUEST_PDPTE0..3). When `Some`, they
    /// are used instead of reading the PDPT from guest memory (the CPU does the same: it does
    /// not re-read the PDPT until CR3 is reloaded). Ignored in other modes.
    pub pdptes: Option<[u64; 4]>,
    /// Guest MAXPHYADDR (32..=52): address bits at and above it are reserved in entries.
    pub maxphyaddr: u8,
}

impl X86PagingState {
    /// A state with MAXPHYADDR 52 and no cached PDPTEs.
    pub const fn new(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Self {
        Self {
            cr0,
            cr3,
            cr4,
            efer,
            pdptes: None,
            maxphyaddr: 52,
        }
    }

    /// Use the PDPTEs cached in the VMCS (PAE mode).
    pub const fn with_pdptes(mut self, pdptes: [u64; 4]) -> Self {
        self.pdptes = Some(pdptes);
        self
    }

    /// Set the guest MAXPHYADDR (clamped to 32..=52).
    pub const fn with_maxphyaddr(mut self, bits: u8) -> Self {
        self.maxphyaddr = if bits < 32 {
            32
        } else if bits > 52 {
            52
        } else {
            bits
        };
        self
    }

    /// The paging mode these registers select.
    pub const fn mode(&self) -> X86PagingMode {
        if self.cr0 & CR0_PG == 0 {
            X86PagingMode::Off
        } else if self.cr4 & CR4_PAE == 0 {
            X86PagingMode::Bits32
        } else if self.efer & EFER_LME == 0 {
            X86PagingMode::Pae
        } else if self.cr4 & CR4_LA57 == 0 {
            X86PagingMode::Level4
        } else {
            X86PagingMode::Level5
        }
    }

    fn maxphy(&self) -> u32 {
        let m = u32::from(self.maxphyaddr);
        m.clamp(32, 52)
    }
}

/// Effective permissions of a translation, combined over every level of the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86Perms {
    /// R/W = 1 at every level (supervisor writes with CR0.WP = 0 ignore this).
    pub writable: bool,
    /// U/S = 1 at every level.
    pub user: bool,
    /// XD = 1 at some level (and EFER.NXE = 1).
    pub nx: bool,
}

impl X86Perms {
    const ALL: Self = Self {
        writable: true,
        user: true,
        nx: false,
    };

    fn combine(&mut self, entry: u64, nxe: bool) {
        self.writable &= entry & RW != 0;
        self.user &= entry & US != 0;
        self.nx |= nxe && entry & XD != 0;
    }
}

/// The x86 walker for one snapshotted paging state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86Walker {
    pub state: X86PagingState,
}

impl X86Walker {
    pub const fn new(state: X86PagingState) -> Self {
        Self { state }
    }
}

impl GuestWalker for X86Walker {
    type Perms = X86Perms;

    fn translate<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
    ) -> Result<Translation<X86Perms>, WalkError> {
        let s = &self.state;
        match s.mode() {
            X86PagingMode::Off => {
                if gva.as_u64() > u64::from(u32::MAX) {
                    return Err(WalkError::OutsideVaRange { gva });
                }
                Ok(Translation {
                    gpa: GuestPhysAddr::new(gva.as_u64()),
                    page_size: 4096,
                    perms: X86Perms::ALL,
                })
            }
            X86PagingMode::Bits32 => walk_32bit(s, mem, gva),
            X86PagingMode::Pae => walk_pae(s, mem, gva),
            X86PagingMode::Level4 => walk_long(s, mem, gva, 4),
            X86PagingMode::Level5 => walk_long(s, mem, gva, 5),
        }
    }
}

/// Leaf found: physical address from `frame` (already aligned to `size`) plus the offset of `va`.
fn leaf(frame: u64, va: u64, size: u64, perms: X86Perms) -> Translation<X86Perms> {
    let off = va & size.wrapping_sub(1);
    Translation {
        gpa: GuestPhysAddr::new(frame | off),
        page_size: size,
        perms,
    }
}

fn walk_32bit<M: GuestMemRead + ?Sized>(
    s: &X86PagingState,
    mem: &M,
    gva: GuestVirtAddr,
) -> Result<Translation<X86Perms>, WalkError> {
    let va = gva.as_u64();
    if va > u64::from(u32::MAX) {
        return Err(WalkError::OutsideVaRange { gva });
    }
    let mut perms = X86Perms::ALL;
    let pd = s.cr3 & 0xffff_f000;
    let pde = u64::from(read_entry32(mem, pd, (va >> 22) & 0x3ff, 2)?);
    if pde & P == 0 {
        return Err(WalkError::NotPresent { level: 2, gva });
    }
    perms.combine(pde, false);
    if pde & PS != 0 && s.cr4 & CR4_PSE != 0 {
        // 4 MiB page. Bit 21 is reserved; bits 20:13 give PA bits 39:32 (PSE-36/PSE-40), those
        // at or above MAXPHYADDR are reserved.
        let m = s.maxphy();
        let hi_bits = m.saturating_sub(32).min(8);
        let rsvd = (1u64 << 21) | bit_range(13u32.saturating_add(hi_bits), 21);
        if pde & rsvd != 0 {
            return Err(WalkError::Reserved {
                level: 2,
                entry: pde,
            });
        }
        let frame = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
        return Ok(leaf(frame, va, 1 << 22, perms));
    }
    let pt = pde & 0xffff_f000;
    let pte = u64::from(read_entry32(mem, pt, (va >> 12) & 0x3ff, 1)?);
    if pte & P == 0 {
        return Err(WalkError::NotPresent { level: 1, gva });
    }
    perms.combine(pte, false);
    Ok(leaf(pte & 0xffff_f000, va, 1 << 12, perms))
}

fn walk_pae<M: GuestMemRead + ?Sized>(
    s: &X86PagingState,
    mem: &M,
    gva: GuestVirtAddr,
) -> Result<Translation<X86Perms>, WalkError> {
    let va = gva.as_u64();
    if va > u64::from(u32::MAX) {
        return Err(WalkError::OutsideVaRange { gva });
    }
    let m = s.maxphy();
    let addr = bit_range(12, m);
    let idx = (va >> 30) & 3;
    let pdpte = match s.pdptes {
        Some(cached) => cached
            .get(usize::try_from(idx).unwrap_or(0))
            .copied()
            .unwrap_or(0),
        None => read_entry64(mem, s.cr3 & 0xffff_ffe0, idx, 3)?,
    };
    if pdpte & P == 0 {
        return Err(WalkError::NotPresent { level: 3, gva });
    }
    // PDPTE: bits 2:1, 8:5 and 63:M reserved (no R/W, U/S or XD at this level).
    let rsvd = 0b110 | bit_range(5, 9) | bit_range(m, 64);
    if pdpte & rsvd != 0 {
        return Err(WalkError::Reserved {
            level: 3,
            entry: pdpte,
        });
    }
    // PDEs and PTEs: bits 62:M reserved; XD reserved unless EFER.NXE.
    walk_levels(
        s,
        mem,
        gva,
        pdpte & addr,
        2,
        bit_range(m, 63),
        X86Perms::ALL,
    )
}

fn walk_long<M: GuestMemRead + ?Sized>(
    s: &X86PagingState,
    mem: &M,
    gva: GuestVirtAddr,
    levels: u8,
) -> Result<Translation<X86Perms>, WalkError> {
    // Canonical: bits 63:47 (4-level) or 63:56 (5-level) all equal.
    let sign_bit: u32 = if levels == 5 { 56 } else { 47 };
    let top = (gva.as_u64() as i64) >> sign_bit;
    if top != 0 && top != -1 {
        return Err(WalkError::NonCanonical { gva });
    }
    let m = s.maxphy();
    // Bits 51:M reserved; 62:52 ignored (or protection keys at the leaf).
    walk_levels(
        s,
        mem,
        gva,
        s.cr3 & bit_range(12, m),
        levels,
        bit_range(m, 52),
        X86Perms::ALL,
    )
}

/// Walk 64-bit entries from `level` (5 = PML5 ... 1 = PT) down to the leaf.
fn walk_levels<M: GuestMemRead + ?Sized>(
    s: &X86PagingState,
    mem: &M,
    gva: GuestVirtAddr,
    mut table: u64,
    mut level: u8,
    rsvd_addr: u64,
    mut perms: X86Perms,
) -> Result<Translation<X86Perms>, WalkError> {
    let va = gva.as_u64();
    let nxe = s.efer & EFER_NXE != 0;
    let addr = bit_range(12, s.maxphy());
    loop {
        // level in 1..=5: shift = 12 + 9 * (level - 1) is at most 48.
        let shift = 12u32.saturating_add(9u32.saturating_mul(u32::from(level).saturating_sub(1)));
        let idx = va.checked_shr(shift).unwrap_or(0) & 0x1ff;
        let e = read_entry64(mem, table, idx, level)?;
        if e & P == 0 {
            return Err(WalkError::NotPresent { level, gva });
        }
        let reserved = e & rsvd_addr != 0 || (!nxe && e & XD != 0) || (level >= 4 && e & PS != 0);
        if reserved {
            return Err(WalkError::Reserved { level, entry: e });
        }
        perms.combine(e, nxe);
        if level == 1 {
            return Ok(leaf(e & addr, va, 1 << 12, perms));
        }
        if e & PS != 0 {
            // 2 MiB (level 2) or 1 GiB (level 3) page: bit 12 is PAT, bits shift-1:13 reserved.
            if e & bit_range(13, shift) != 0 {
                return Err(WalkError::Reserved { level, entry: e });
            }
            let size = 1u64.checked_shl(shift).unwrap_or(0);
            return Ok(leaf(e & addr & !low_mask(shift), va, size, perms));
        }
        table = e & addr;
        level = level.saturating_sub(1);
    }
}
