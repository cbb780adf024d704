//! Host tests for the guest walkers: tables are built in a [`FakeGuestMem`] for every mode and
//! page size, then translations, every error variant and range handling are checked; a property
//! test compares the 4-level walker against an independent model.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::arm64::{Arm64Perms, Arm64TranslationRegs, Arm64Walker};
use super::x86::bits::*;
use super::x86::{X86PagingMode, X86PagingState, X86Perms, X86Walker};
use super::*;

const RAM_END: u64 = 0x4000_0000; // 1 GiB of guest RAM at 0
const TABLES_START: u64 = 0x10_0000;

fn va(v: u64) -> GuestVirtAddr {
    GuestVirtAddr::new(v)
}
fn pa(v: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(v)
}

/// Fake guest memory plus a bump allocator for table pages.
struct Tables {
    mem: FakeGuestMem,
    next: u64,
}

impl Tables {
    fn new() -> Self {
        let mut mem = FakeGuestMem::new();
        mem.add_ram(GpaRange::new(pa(0), RAM_END).unwrap());
        Self {
            mem,
            next: TABLES_START,
        }
    }
    fn alloc(&mut self) -> u64 {
        let a = self.next;
        self.next += 0x1000;
        a
    }
    fn w64(&mut self, gpa: u64, v: u64) {
        assert!(self.mem.write_u64(pa(gpa), v), "write {gpa:#x}");
    }
    fn r64(&self, gpa: u64) -> u64 {
        self.mem.read_u64(pa(gpa)).unwrap()
    }
    fn w32(&mut self, gpa: u64, v: u32) {
        assert!(self.mem.write_u32(pa(gpa), v), "write {gpa:#x}");
    }

    /// x86 64-bit-entry tables: the address of the entry for `v` at `level` below `root` (top
    /// level `top`), creating missing tables (P|RW|US) on the way.
    fn slot64(&mut self, root: u64, top: u8, v: u64, level: u8) -> u64 {
        let mut table = root;
        let mut l = top;
        loop {
            let idx = (v >> (12 + 9 * (u32::from(l) - 1))) & 0x1ff;
            let slot = table + idx * 8;
            if l == level {
                return slot;
            }
            let e = self.r64(slot);
            table = if e & P == 0 {
                let t = self.alloc();
                self.w64(slot, t | P | RW | US);
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
            l -= 1;
        }
    }
    fn map64(&mut self, root: u64, top: u8, v: u64, level: u8, leaf: u64) {
        let slot = self.slot64(root, top, v, level);
        self.w64(slot, leaf);
    }

    /// arm64 tables with `va_bits` of VA: the address of the descriptor for `v` at `level`.
    fn slot_arm(&mut self, root: u64, va_bits: u32, v: u64, level: u8) -> u64 {
        let start: u8 = if va_bits > 39 {
            0
        } else if va_bits > 30 {
            1
        } else {
            2
        };
        let mut table = root;
        let mut l = start;
        loop {
            let shift = 12 + 9 * (3 - u32::from(l));
            let bits = if l == start { va_bits - shift } else { 9 };
            let idx = (v >> shift) & ((1 << bits) - 1);
            let slot = table + idx * 8;
            if l == level {
                return slot;
            }
            let e = self.r64(slot);
            table = if e & 1 == 0 {
                let t = self.alloc();
                self.w64(slot, t | 0b11);
                t
            } else {
                e & 0x0000_ffff_ffff_f000
            };
            l += 1;
        }
    }
    fn map_arm(&mut self, root: u64, va_bits: u32, v: u64, level: u8, desc: u64) {
        let slot = self.slot_arm(root, va_bits, v, level);
        self.w64(slot, desc);
    }
}

// ---------------------------------------------------------------------------------------------
// FakeGuestMem itself

#[test]
fn fake_mem_reads_words_and_halves_and_refuses_non_ram() {
    let mut t = Tables::new();
    t.w64(0x1000, 0x1122_3344_5566_7788);
    assert_eq!(t.mem.read_u32(pa(0x1000)), Ok(0x5566_7788));
    assert_eq!(t.mem.read_u32(pa(0x1004)), Ok(0x1122_3344));
    t.w32(0x1004, 0xdead_beef);
    assert_eq!(t.mem.read_u64(pa(0x1000)), Ok(0xdead_beef_5566_7788));
    assert_eq!(t.mem.read_u64(pa(RAM_END)), Err(NotGuestRam));
    assert_eq!(t.mem.read_u64(pa(0x1004)), Err(NotGuestRam)); // unaligned
    assert!(!t.mem.write_u64(pa(RAM_END), 1));
    assert!(t
        .mem
        .contains_ram(GpaRange::new(pa(RAM_END - 0x2000), 0x2000).unwrap()));
    assert!(!t
        .mem
        .contains_ram(GpaRange::new(pa(RAM_END - 0x1000), 0x1001).unwrap()));
}

// ---------------------------------------------------------------------------------------------
// x86: mode selection and paging off

const CR0_PE: u64 = 1;

fn st32(cr3: u64, pse: bool) -> X86PagingState {
    X86PagingState::new(CR0_PG | CR0_PE, cr3, if pse { CR4_PSE } else { 0 }, 0)
}
fn st_pae(cr3: u64, nxe: bool) -> X86PagingState {
    X86PagingState::new(
        CR0_PG | CR0_PE,
        cr3,
        CR4_PAE,
        if nxe { EFER_NXE } else { 0 },
    )
}
fn st_long(cr3: u64, five: bool) -> X86PagingState {
    X86PagingState::new(
        CR0_PG | CR0_PE | CR0_WP,
        cr3,
        CR4_PAE | if five { CR4_LA57 } else { 0 },
        EFER_LME | EFER_LMA | EFER_NXE,
    )
}
fn x86(s: X86PagingState, t: &Tables, v: u64) -> Result<Translation<X86Perms>, WalkError> {
    X86Walker::new(s).translate(&t.mem, va(v))
}
const RWU: X86Perms = X86Perms {
    writable: true,
    user: true,
    nx: false,
};

#[test]
fn x86_mode_selection() {
    assert_eq!(
        X86PagingState::new(CR0_PE, 0, 0, 0).mode(),
        X86PagingMode::Off
    );
    assert_eq!(st32(0, false).mode(), X86PagingMode::Bits32);
    assert_eq!(st_pae(0, false).mode(), X86PagingMode::Pae);
    assert_eq!(st_long(0, false).mode(), X86PagingMode::Level4);
    assert_eq!(st_long(0, true).mode(), X86PagingMode::Level5);
    // PG = 0 wins over everything else.
    assert_eq!(
        X86PagingState::new(CR0_PE, 0, CR4_PAE | CR4_LA57, EFER_LME).mode(),
        X86PagingMode::Off
    );
}

#[test]
fn x86_paging_off_is_identity_below_4g() {
    let t = Tables::new();
    let s = X86PagingState::new(CR0_PE, 0, 0, 0);
    let r = x86(s, &t, 0x1234_5678).unwrap();
    assert_eq!(r.gpa, pa(0x1234_5678));
    assert_eq!(r.page_size, 4096);
    assert_eq!(r.perms, RWU);
    assert_eq!(x86(s, &t, 0xffff_ffff).unwrap().gpa, pa(0xffff_ffff));
    assert_eq!(
        x86(s, &t, 0x1_0000_0000),
        Err(WalkError::OutsideVaRange {
            gva: va(0x1_0000_0000)
        })
    );
    assert_eq!(t.mem.reads(), 0, "identity reads no memory");
}

// ---------------------------------------------------------------------------------------------
// x86: 32-bit paging

#[test]
fn x86_32bit_4k_and_4m_pages() {
    let mut t = Tables::new();
    let pd = t.alloc();
    let pt = t.alloc();
    // 0x0040_3000 -> 0x0123_4000 via a PT, RW but supervisor only.
    t.w32(pd + 4, (pt as u32) | 0x7);
    t.w32(pt + 3 * 4, 0x0123_4000 | 0x3);
    // 0xc000_0000.. 4 MiB page -> 0x0800_0000, read-only.
    t.w32(pd + 0x300 * 4, 0x0800_0000 | 0x80 | 0x5);
    let s = st32(pd, true);
    let r = x86(s, &t, 0x0040_3abc).unwrap();
    assert_eq!(r.gpa, pa(0x0123_4abc));
    assert_eq!(r.page_size, 4096);
    assert_eq!(
        r.perms,
        X86Perms {
            writable: true,
            user: false,
            nx: false
        }
    );
    let r = x86(s, &t, 0xc012_3456).unwrap();
    assert_eq!(r.gpa, pa(0x0812_3456));
    assert_eq!(r.page_size, 4 << 20);
    assert_eq!(
        r.perms,
        X86Perms {
            writable: false,
            user: true,
            nx: false
        }
    );
}

#[test]
fn x86_32bit_ps_without_cr4_pse_is_a_table_pointer() {
    let mut t = Tables::new();
    let pd = t.alloc();
    let pt = t.alloc();
    t.w32(pd, (pt as u32) | 0x80 | 0x7);
    t.w32(pt + 5 * 4, 0x0055_5000 | 0x7);
    assert_eq!(
        x86(st32(pd, false), &t, 0x5010).unwrap().gpa,
        pa(0x0055_5010)
    );
    // With PSE the same entry is a 4 MiB page at the PT's address rounded down.
    let r = x86(st32(pd, true), &t, 0x5010).unwrap();
    assert_eq!(r.page_size, 4 << 20);
    let frame = (pt & 0xffc0_0000) | (((pt >> 13) & 0xff) << 32);
    assert_eq!(r.gpa, pa(frame | 0x5010));
}

#[test]
fn x86_32bit_pse36_high_bits_and_reserved() {
    let mut t = Tables::new();
    let pd = t.alloc();
    // PA bits 39:32 = 0x12 in PDE bits 20:13.
    t.w32(pd, 0x0040_0000 | (0x12 << 13) | 0x80 | 0x3);
    let r = x86(st32(pd, true), &t, 0x1234).unwrap();
    assert_eq!(r.gpa, pa(0x12_0040_1234));
    // MAXPHYADDR 36: PA bits 39:36 (PDE bits 20:17) are reserved; 0x12 sets bit 17+0 -> bit 36.
    let s36 = st32(pd, true).with_maxphyaddr(36);
    assert!(matches!(
        x86(s36, &t, 0x1234),
        Err(WalkError::Reserved { level: 2, .. })
    ));
    // Bit 21 is always reserved in a 4 MiB PDE.
    t.w32(pd, 0x0040_0000 | (1 << 21) | 0x80 | 0x3);
    assert_eq!(
        x86(st32(pd, true), &t, 0x1234),
        Err(WalkError::Reserved {
            level: 2,
            entry: 0x0060_0083
        })
    );
}

#[test]
fn x86_32bit_errors() {
    let mut t = Tables::new();
    let pd = t.alloc();
    let pt = t.alloc();
    t.w32(pd, (pt as u32) | 0x7);
    assert_eq!(
        x86(st32(pd, true), &t, 0x400_000),
        Err(WalkError::NotPresent {
            level: 2,
            gva: va(0x400_000)
        })
    );
    assert_eq!(
        x86(st32(pd, true), &t, 0x1000),
        Err(WalkError::NotPresent {
            level: 1,
            gva: va(0x1000)
        })
    );
    assert_eq!(
        x86(st32(pd, true), &t, 0x1_0000_0000),
        Err(WalkError::OutsideVaRange {
            gva: va(0x1_0000_0000)
        })
    );
    // PD itself outside guest RAM.
    assert_eq!(
        x86(st32(0x8000_0000, true), &t, 0x1000),
        Err(WalkError::TableNotInGuestMemory {
            level: 2,
            gpa: pa(0x8000_0000)
        })
    );
    // PT outside guest RAM.
    t.w32(pd, 0x9000_0000 | 0x7);
    assert_eq!(
        x86(st32(pd, true), &t, 0x2000),
        Err(WalkError::TableNotInGuestMemory {
            level: 1,
            gpa: pa(0x9000_0008)
        })
    );
}

// ---------------------------------------------------------------------------------------------
// x86: PAE

/// PDPT at a 32-byte-aligned non-page-aligned address (CR3 bits 11:5 count in PAE mode).
fn pae_tables() -> (Tables, u64) {
    let mut t = Tables::new();
    let page = t.alloc();
    let pdpt = page + 0x60;
    for i in 0..4 {
        let pd = t.alloc();
        t.w64(pdpt + i * 8, pd | P);
    }
    (t, pdpt)
}

#[test]
fn x86_pae_4k_and_2m_pages() {
    let (mut t, pdpt) = pae_tables();
    // 0xc020_1000 (PDPTE 3, PDE 1, PTE 1) -> 0x0777_7000 4K, NX.
    t.map64(pdpt, 3, 0xc020_1000, 1, 0x0777_7000 | XD | RW | P);
    // 0x4060_0000 (PDPTE 1, PDE 3) 2 MiB -> 0x0a00_0000, user.
    t.map64(pdpt, 3, 0x4060_0000, 2, 0x0a00_0000 | PS | US | RW | P);
    let s = st_pae(pdpt, true);
    let r = x86(s, &t, 0xc020_1234).unwrap();
    assert_eq!(r.gpa, pa(0x0777_7234));
    assert_eq!(r.page_size, 4096);
    assert_eq!(
        r.perms,
        X86Perms {
            writable: true,
            user: false,
            nx: true
        }
    );
    let r = x86(s, &t, 0x407f_fff0).unwrap();
    assert_eq!(r.gpa, pa(0x0a1f_fff0));
    assert_eq!(r.page_size, 2 << 20);
    assert_eq!(r.perms, RWU);
}

#[test]
fn x86_pae_uses_cached_pdptes_when_given() {
    let (mut t, pdpt) = pae_tables();
    t.map64(pdpt, 3, 0x1000, 1, 0x0333_3000 | RW | P);
    // A second PD the CPU cached before the guest rewrote its PDPT in memory.
    let other_pd = t.alloc();
    t.map64(pdpt, 3, 0x1000, 1, 0x0333_3000 | RW | P);
    let other_pt = t.alloc();
    t.w64(other_pd, other_pt | RW | P);
    t.w64(other_pt + 8, 0x0444_4000 | RW | P);
    let mem_pdpte0 = t.r64(pdpt);
    let s = st_pae(pdpt, true);
    assert_eq!(x86(s, &t, 0x1010).unwrap().gpa, pa(0x0333_3010));
    let cached = s.with_pdptes([other_pd | P, mem_pdpte0, 0, 0]);
    assert_eq!(x86(cached, &t, 0x1010).unwrap().gpa, pa(0x0444_4010));
    // Cached PDPTE 2 not present, although memory has one.
    assert_eq!(
        x86(cached, &t, 0x8000_0000),
        Err(WalkError::NotPresent {
            level: 3,
            gva: va(0x8000_0000)
        })
    );
    // Cached PDPTEs do not even need a CR3 inside RAM.
    let cached_far = st_pae(0xfff0_0000, true).with_pdptes([other_pd | P, 0, 0, 0]);
    assert_eq!(x86(cached_far, &t, 0x1010).unwrap().gpa, pa(0x0444_4010));
    assert!(matches!(
        x86(st_pae(0xfff0_0000, true), &t, 0x1010),
        Err(WalkError::TableNotInGuestMemory { level: 3, .. })
    ));
}

#[test]
fn x86_pae_reserved_bits() {
    let (mut t, pdpt) = pae_tables();
    t.map64(pdpt, 3, 0x1000, 1, 0x0333_3000 | XD | P);
    // XD without EFER.NXE is reserved.
    assert_eq!(
        x86(st_pae(pdpt, false), &t, 0x1000),
        Err(WalkError::Reserved {
            level: 1,
            entry: 0x0333_3000 | XD | P
        })
    );
    assert!(x86(st_pae(pdpt, true), &t, 0x1000).unwrap().perms.nx);
    // PDPTE with R/W (bit 1, reserved in PAE PDPTEs).
    let pde_table = t.r64(pdpt) & !0xfff;
    t.w64(pdpt, pde_table | RW | P);
    assert!(matches!(
        x86(st_pae(pdpt, true), &t, 0x1000),
        Err(WalkError::Reserved { level: 3, .. })
    ));
    // PDPTE with bit 63 (no XD at this level).
    t.w64(pdpt, pde_table | XD | P);
    assert!(matches!(
        x86(st_pae(pdpt, true), &t, 0x1000),
        Err(WalkError::Reserved { level: 3, .. })
    ));
    t.w64(pdpt, pde_table | P);
    // PDE 2 MiB with bit 13 (reserved between PAT and the frame).
    t.map64(pdpt, 3, 0x0020_0000, 2, 0x0040_0000 | (1 << 13) | PS | P);
    assert!(matches!(
        x86(st_pae(pdpt, true), &t, 0x0020_0000),
        Err(WalkError::Reserved { level: 2, .. })
    ));
    // Bit 12 (PAT) is fine in a 2 MiB PDE.
    t.map64(pdpt, 3, 0x0020_0000, 2, 0x0040_0000 | (1 << 12) | PS | P);
    assert_eq!(
        x86(st_pae(pdpt, true), &t, 0x0020_0000).unwrap().gpa,
        pa(0x0040_0000)
    );
    // Address bits above MAXPHYADDR (36) in a PTE; bit 52..62 are reserved in PAE too.
    t.map64(pdpt, 3, 0x3000, 1, (1 << 40) | P);
    let s36 = st_pae(pdpt, true).with_maxphyaddr(36);
    assert!(matches!(
        x86(s36, &t, 0x3000),
        Err(WalkError::Reserved { level: 1, .. })
    ));
    assert_eq!(
        x86(st_pae(pdpt, true), &t, 0x3000).unwrap().gpa,
        pa(1 << 40)
    );
    t.map64(pdpt, 3, 0x3000, 1, (1 << 55) | P);
    assert!(matches!(
        x86(st_pae(pdpt, true), &t, 0x3000),
        Err(WalkError::Reserved { level: 1, .. })
    ));
}

#[test]
fn x86_pae_va_above_4g() {
    let (t, pdpt) = pae_tables();
    assert_eq!(
        x86(st_pae(pdpt, true), &t, 0x1_0000_1000),
        Err(WalkError::OutsideVaRange {
            gva: va(0x1_0000_1000)
        })
    );
}

// ---------------------------------------------------------------------------------------------
// x86: 4-level and 5-level

#[test]
fn x86_long4_page_sizes_and_permissions() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x40_1000, 1, 0x0123_4000 | RW | US | P);
    t.map64(pml4, 4, 0x7f_ffe0_0000, 2, 0x0200_0000 | PS | RW | P);
    t.map64(pml4, 4, 0xffff_8000_4000_0000, 3, 0x4000_0000 | PS | XD | P);
    let s = st_long(pml4, false);
    let r = x86(s, &t, 0x40_1fff).unwrap();
    assert_eq!((r.gpa, r.page_size, r.perms), (pa(0x0123_4fff), 4096, RWU));
    let r = x86(s, &t, 0x7f_fff0_0001).unwrap();
    assert_eq!(r.gpa, pa(0x0210_0001));
    assert_eq!(r.page_size, 2 << 20);
    assert_eq!(
        r.perms,
        X86Perms {
            writable: true,
            user: false,
            nx: false
        }
    );
    let r = x86(s, &t, 0xffff_8000_7fff_ffff).unwrap();
    assert_eq!(r.gpa, pa(0x7fff_ffff));
    assert_eq!(r.page_size, 1 << 30);
    assert_eq!(
        r.perms,
        X86Perms {
            writable: false,
            user: false,
            nx: true
        }
    );
}

#[test]
fn x86_long4_permissions_combine_across_levels() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | RW | US | P);
    // Clear RW at the PML4E, set XD at the PDPTE: the leaf's bits do not override them.
    let e4 = t.slot64(pml4, 4, 0x1000, 4);
    let v = t.r64(e4);
    t.w64(e4, v & !RW);
    let e3 = t.slot64(pml4, 4, 0x1000, 3);
    let v = t.r64(e3);
    t.w64(e3, v | XD);
    let e2 = t.slot64(pml4, 4, 0x1000, 2);
    let v = t.r64(e2);
    t.w64(e2, v & !US);
    let r = x86(st_long(pml4, false), &t, 0x1000).unwrap();
    assert_eq!(
        r.perms,
        X86Perms {
            writable: false,
            user: false,
            nx: true
        }
    );
}

#[test]
fn x86_long4_non_canonical() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    let s = st_long(pml4, false);
    for bad in [
        0x0000_8000_0000_0000,
        0xffff_7fff_ffff_f000,
        0x0100_0000_0000_0000,
    ] {
        assert_eq!(
            x86(s, &t, bad),
            Err(WalkError::NonCanonical { gva: va(bad) })
        );
    }
    // Canonical but unmapped: walks and reports the PML4E.
    assert_eq!(
        x86(s, &t, 0xffff_8000_0000_0000),
        Err(WalkError::NotPresent {
            level: 4,
            gva: va(0xffff_8000_0000_0000)
        })
    );
    assert_eq!(t.mem.reads(), 1, "non-canonical addresses read nothing");
    let _ = &mut t;
}

#[test]
fn x86_long4_not_present_at_every_level() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | P);
    let s = st_long(pml4, false);
    // Leaf entry not present: neighbour page.
    assert_eq!(
        x86(s, &t, 0x2000),
        Err(WalkError::NotPresent {
            level: 1,
            gva: va(0x2000)
        })
    );
    assert_eq!(
        x86(s, &t, 0x20_0000),
        Err(WalkError::NotPresent {
            level: 2,
            gva: va(0x20_0000)
        })
    );
    assert_eq!(
        x86(s, &t, 0x4000_0000),
        Err(WalkError::NotPresent {
            level: 3,
            gva: va(0x4000_0000)
        })
    );
    assert_eq!(
        x86(s, &t, 0x80_0000_0000),
        Err(WalkError::NotPresent {
            level: 4,
            gva: va(0x80_0000_0000)
        })
    );
    // A present leaf whose P bit is cleared later.
    let e1 = t.slot64(pml4, 4, 0x1000, 1);
    t.w64(e1, 0x5000);
    assert!(matches!(
        x86(s, &t, 0x1000),
        Err(WalkError::NotPresent { level: 1, .. })
    ));
}

#[test]
fn x86_long4_reserved_bits() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | P);
    let s = st_long(pml4, false);
    // PML4E.PS is reserved.
    let e4 = t.slot64(pml4, 4, 0x1000, 4);
    let v = t.r64(e4);
    t.w64(e4, v | PS);
    assert_eq!(
        x86(s, &t, 0x1000),
        Err(WalkError::Reserved {
            level: 4,
            entry: v | PS
        })
    );
    t.w64(e4, v);
    // 1 GiB page with a bit in 29:13 set.
    t.map64(pml4, 4, 0x4000_0000, 3, 0x8000_0000 | (1 << 20) | PS | P);
    assert!(matches!(
        x86(s, &t, 0x4000_0000),
        Err(WalkError::Reserved { level: 3, .. })
    ));
    // 2 MiB page with bit 20 set.
    t.map64(pml4, 4, 0x20_0000, 2, 0x40_0000 | (1 << 20) | PS | P);
    assert!(matches!(
        x86(s, &t, 0x20_0000),
        Err(WalkError::Reserved { level: 2, .. })
    ));
    // Address bits 51:M with M = 39.
    t.map64(pml4, 4, 0x3000, 1, (1 << 45) | P);
    assert!(matches!(
        x86(s.with_maxphyaddr(39), &t, 0x3000),
        Err(WalkError::Reserved { level: 1, .. })
    ));
    assert_eq!(x86(s, &t, 0x3000).unwrap().gpa, pa(1 << 45));
    // Bits 62:52 are ignored (not reserved) in 4-level paging; XD without NXE is reserved.
    t.map64(pml4, 4, 0x4000, 1, 0x6000 | (0x7ff << 52) | P);
    assert_eq!(x86(s, &t, 0x4000).unwrap().gpa, pa(0x6000));
    t.map64(pml4, 4, 0x5000, 1, 0x6000 | XD | P);
    let no_nxe = X86PagingState {
        efer: EFER_LME | EFER_LMA,
        ..s
    };
    assert!(matches!(
        x86(no_nxe, &t, 0x5000),
        Err(WalkError::Reserved { level: 1, .. })
    ));
    assert!(x86(s, &t, 0x5000).unwrap().perms.nx);
}

#[test]
fn x86_long4_tables_outside_guest_ram() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | P);
    let s = st_long(pml4, false);
    // CR3 outside RAM.
    assert_eq!(
        x86(st_long(0x8000_0000, false), &t, 0x1000),
        Err(WalkError::TableNotInGuestMemory {
            level: 4,
            gpa: pa(0x8000_0000)
        })
    );
    // PD pointer outside RAM.
    let e3 = t.slot64(pml4, 4, 0x1000, 3);
    t.w64(e3, 0x1_0000_0000 | P);
    assert_eq!(
        x86(s, &t, 0x1000),
        Err(WalkError::TableNotInGuestMemory {
            level: 2,
            gpa: pa(0x1_0000_0000)
        })
    );
    // A leaf pointing outside RAM is fine for a single translation (range walks check it).
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0xfee0_0000 | P);
    assert_eq!(
        x86(st_long(pml4, false), &t, 0x1000).unwrap().gpa,
        pa(0xfee0_0000)
    );
}

#[test]
fn x86_long4_cr3_low_bits_ignored() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | P);
    // PCID in 11:0, LAM bits 62:61: not part of the table address.
    let s = st_long(pml4 | 0xabc | (3 << 61), false);
    assert_eq!(x86(s, &t, 0x1000).unwrap().gpa, pa(0x5000));
}

#[test]
fn x86_long5_translation_canonical_and_pml5_ps() {
    let mut t = Tables::new();
    let pml5 = t.alloc();
    // Canonical for 5-level but not for 4-level.
    let v = 0x00ab_cdef_1234_5000;
    t.map64(pml5, 5, v, 1, 0x0987_6000 | RW | P);
    t.map64(pml5, 5, 0xff80_0000_0000_0000, 3, 0x4000_0000 | PS | RW | P);
    let s = st_long(pml5, true);
    assert_eq!(x86(s, &t, v + 0x10).unwrap().gpa, pa(0x0987_6010));
    let r = x86(s, &t, 0xff80_0000_0000_1234).unwrap();
    assert_eq!((r.gpa, r.page_size), (pa(0x4000_1234), 1 << 30));
    assert_eq!(
        x86(st_long(pml5, false), &t, v),
        Err(WalkError::NonCanonical { gva: va(v) })
    );
    assert_eq!(
        x86(s, &t, 0x0100_0000_0000_0000),
        Err(WalkError::NonCanonical {
            gva: va(0x0100_0000_0000_0000)
        })
    );
    // PML5E.PS reserved.
    let e5 = t.slot64(pml5, 5, v, 5);
    let e = t.r64(e5);
    t.w64(e5, e | PS);
    assert_eq!(
        x86(s, &t, v),
        Err(WalkError::Reserved {
            level: 5,
            entry: e | PS
        })
    );
    assert!(matches!(
        x86(s, &t, 0x0001_0000_0000_0000),
        Err(WalkError::NotPresent { level: 5, .. })
    ));
}

#[test]
fn x86_walk_never_writes_and_ignores_accessed_dirty() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    // Entries without A (bit 5) or D (bit 6): the walker must not set them.
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | RW | P);
    let before = t.mem.words().clone();
    for v in [0x1000u64, 0x1fff, 0x2000, 0xdead_0000_0000] {
        let _ = x86(st_long(pml4, false), &t, v);
    }
    assert_eq!(&before, t.mem.words());
    let leaf = t.slot64(pml4, 4, 0x1000, 1);
    assert_eq!(t.r64(leaf) & 0x60, 0);
}

// ---------------------------------------------------------------------------------------------
// arm64

const AF: u64 = 1 << 10;
const PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;

/// TCR for 4K granules, 48-bit VA both halves (T0SZ = T1SZ = 16), IPS 48 bits.
fn tcr48() -> u64 {
    16 | (16 << 16) | (0b10 << 30) | (5 << 32)
}
fn regs(tcr: u64, ttbr0: u64, ttbr1: u64) -> Arm64TranslationRegs {
    Arm64TranslationRegs {
        sctlr_el1: 1,
        tcr_el1: tcr,
        ttbr0_el1: ttbr0,
        ttbr1_el1: ttbr1,
    }
}
fn arm(r: Arm64TranslationRegs, t: &Tables, v: u64) -> Result<Translation<Arm64Perms>, WalkError> {
    Arm64Walker::new(r).translate(&t.mem, va(v))
}
const EL1_RW: Arm64Perms = Arm64Perms {
    ap: 0,
    pxn: false,
    uxn: false,
    af: true,
};

#[test]
fn arm64_mmu_off_is_identity() {
    let t = Tables::new();
    let r = Arm64TranslationRegs {
        sctlr_el1: 0,
        tcr_el1: 0xffff_ffff,
        ttbr0_el1: 0,
        ttbr1_el1: 0,
    };
    let x = arm(r, &t, 0x4008_1234).unwrap();
    assert_eq!((x.gpa, x.page_size), (pa(0x4008_1234), 4096));
    assert!(x.perms.el1_writable() && x.perms.el0_writable());
    assert_eq!(t.mem.reads(), 0);
}

#[test]
fn arm64_4k_pages_and_blocks_both_halves() {
    let mut t = Tables::new();
    let l0_lo = t.alloc();
    let l0_hi = t.alloc();
    t.map_arm(l0_lo, 48, 0x40_1000, 3, 0x0123_4000 | AF | PAGE);
    t.map_arm(l0_lo, 48, 0x8000_0000, 1, 0x4000_0000 | AF | BLOCK);
    t.map_arm(
        l0_hi,
        48,
        0xffff_0000_0020_0000,
        2,
        0x0060_0000 | AF | (1 << 54) | BLOCK,
    );
    let r = regs(tcr48(), l0_lo | (7 << 48), l0_hi | 1); // ASID and CnP bits ignored
    let x = arm(r, &t, 0x40_1abc).unwrap();
    assert_eq!(
        (x.gpa, x.page_size, x.perms),
        (pa(0x0123_4abc), 4096, EL1_RW)
    );
    let x = arm(r, &t, 0xbfff_ffff).unwrap();
    assert_eq!((x.gpa, x.page_size), (pa(0x7fff_ffff), 1 << 30));
    let x = arm(r, &t, 0xffff_0000_003f_fff8).unwrap();
    assert_eq!((x.gpa, x.page_size), (pa(0x007f_fff8), 2 << 20));
    assert!(x.perms.uxn && !x.perms.pxn);
}

#[test]
fn arm64_ap_bits_table_attributes_and_hpd() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    // Leaf: AP = 01 (EL1+EL0 RW), AF clear.
    t.map_arm(l0, 48, 0x1000, 3, 0x5000 | (0b01 << 6) | PAGE);
    let r = regs(tcr48(), l0, 0);
    let x = arm(r, &t, 0x1000).unwrap();
    assert_eq!(
        x.perms,
        Arm64Perms {
            ap: 0b01,
            pxn: false,
            uxn: false,
            af: false
        }
    );
    assert!(x.perms.el0_writable());
    // Level-1 table descriptor with APTable = 11 (RO, no EL0) and PXNTable.
    let d1 = t.slot_arm(l0, 48, 0x1000, 1);
    let v = t.r64(d1);
    t.w64(d1, v | (0b11 << 61) | (1 << 59));
    let x = arm(r, &t, 0x1000).unwrap();
    assert_eq!(x.perms.ap, 0b10);
    assert!(x.perms.pxn && !x.perms.uxn);
    assert!(!x.perms.el1_writable() && !x.perms.el0_readable());
    // TCR_EL1.HPD0 turns hierarchical permissions off.
    let x = arm(regs(tcr48() | (1 << 41), l0, 0), &t, 0x1000).unwrap();
    assert_eq!(x.perms.ap, 0b01);
    assert!(!x.perms.pxn);
}

#[test]
fn arm64_smaller_va_ranges_start_lower() {
    // T0SZ = 25 (39-bit VA): start at level 1. T0SZ = 34 (30-bit): start at level 2.
    for (tsz, bits) in [(25u64, 39u32), (34, 30), (20, 44)] {
        let mut t = Tables::new();
        let root = t.alloc();
        let top = (1u64 << bits) - 0x1000;
        t.map_arm(root, bits, top, 3, 0x0abc_d000 | AF | PAGE);
        t.map_arm(root, bits, 0x20_0000, 2, 0x0060_0000 | AF | BLOCK);
        let tcr = tsz | (0b10 << 30) | (5 << 32) | (1 << 23);
        let r = regs(tcr, root, 0);
        assert_eq!(
            arm(r, &t, top + 8).unwrap().gpa,
            pa(0x0abc_d008),
            "tsz {tsz}"
        );
        assert_eq!(arm(r, &t, 0x20_1000).unwrap().gpa, pa(0x0060_1000));
        assert_eq!(
            arm(r, &t, 1 << bits),
            Err(WalkError::OutsideVaRange { gva: va(1 << bits) })
        );
    }
}

#[test]
fn arm64_va_range_selection_and_tbi() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    let l0_hi = t.alloc();
    t.map_arm(l0, 48, 0x1000, 3, 0x5000 | AF | PAGE);
    t.map_arm(l0_hi, 48, 0xffff_ffff_ffff_f000, 3, 0x6000 | AF | PAGE);
    let r = regs(tcr48(), l0, l0_hi);
    assert_eq!(arm(r, &t, 0xffff_ffff_ffff_f010).unwrap().gpa, pa(0x6010));
    // In neither range.
    for bad in [
        0x0001_0000_0000_0000u64,
        0xfffe_ffff_ffff_f000,
        0x8000_0000_0000_0000,
        0x7fff_0000_0000_0000,
    ] {
        assert_eq!(
            arm(r, &t, bad),
            Err(WalkError::OutsideVaRange { gva: va(bad) })
        );
    }
    // Tagged pointer: refused without TBI0, accepted with it.
    let tagged = 0x5a00_0000_0000_1000;
    assert_eq!(
        arm(r, &t, tagged),
        Err(WalkError::OutsideVaRange { gva: va(tagged) })
    );
    let tbi = regs(tcr48() | (1 << 37), l0, l0_hi);
    assert_eq!(arm(tbi, &t, tagged).unwrap().gpa, pa(0x5000));
    // TBI1 for the upper half: bit 55 still selects TTBR1.
    let tagged_hi = 0x00ff_ffff_ffff_f000;
    let tbi1 = regs(tcr48() | (1 << 38), l0, l0_hi);
    assert_eq!(arm(tbi1, &t, tagged_hi).unwrap().gpa, pa(0x6000));
    assert!(arm(r, &t, tagged_hi).is_err());
}

#[test]
fn arm64_epd_disables_walks() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    t.map_arm(l0, 48, 0x1000, 3, 0x5000 | AF | PAGE);
    let r = regs(tcr48() | (1 << 7), l0, l0);
    assert_eq!(
        arm(r, &t, 0x1000),
        Err(WalkError::WalkDisabled { gva: va(0x1000) })
    );
    let r = regs(tcr48() | (1 << 23), l0, l0);
    assert_eq!(arm(r, &t, 0x1000).unwrap().gpa, pa(0x5000));
    assert_eq!(
        arm(r, &t, 0xffff_0000_0000_1000),
        Err(WalkError::WalkDisabled {
            gva: va(0xffff_0000_0000_1000)
        })
    );
}

#[test]
fn arm64_unsupported_granules_and_lpa2() {
    let t = Tables::new();
    let base = tcr48() & !((3 << 14) | (3 << 30));
    // TG0: 01 = 64K, 10 = 16K, 11 reserved. TG1 = 4K here.
    for (tg0, kib) in [(1u64, 64u32), (2, 16), (3, 0)] {
        let r = regs(base | (tg0 << 14) | (0b10 << 30), 0x1000, 0x2000);
        assert_eq!(
            arm(r, &t, 0x1000),
            Err(WalkError::UnsupportedGranule { kib })
        );
    }
    // TG1: 01 = 16K, 11 = 64K, 00 reserved. TG0 = 4K.
    for (tg1, kib) in [(1u64, 16u32), (3, 64), (0, 0)] {
        let r = regs(base | (tg1 << 30), 0x1000, 0x2000);
        assert_eq!(
            arm(r, &t, 0xffff_0000_0000_0000),
            Err(WalkError::UnsupportedGranule { kib })
        );
        // The other half still uses 4K and is not affected by TG1.
        assert!(!matches!(
            arm(r, &t, 0x1000),
            Err(WalkError::UnsupportedGranule { .. })
        ));
    }
    let r = regs(tcr48() | (1 << 59), 0x1000, 0x2000);
    assert!(matches!(arm(r, &t, 0x1000), Err(WalkError::Unsupported(_))));
    // T0SZ 12 (52-bit VA) and 40 (beyond the architectural maximum without TTST).
    for tsz in [12u64, 15, 40, 63] {
        let r = regs((tcr48() & !0x3f) | tsz, 0x1000, 0x2000);
        assert!(
            matches!(arm(r, &t, 0x1000), Err(WalkError::Unsupported(_))),
            "tsz {tsz}"
        );
    }
}

#[test]
fn arm64_invalid_descriptors() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    t.map_arm(l0, 48, 0x1000, 3, 0x5000 | AF | PAGE);
    let r = regs(tcr48(), l0, 0);
    for (v, level) in [
        (0x2000u64, 3u8),
        (0x20_0000, 2),
        (0x4000_0000, 1),
        (0x80_0000_0000, 0),
    ] {
        assert_eq!(
            arm(r, &t, v),
            Err(WalkError::NotPresent { level, gva: va(v) })
        );
    }
    // Level 3 with type 0b01 is reserved -> invalid.
    t.map_arm(l0, 48, 0x3000, 3, 0x5000 | AF | BLOCK);
    assert_eq!(
        arm(r, &t, 0x3000),
        Err(WalkError::NotPresent {
            level: 3,
            gva: va(0x3000)
        })
    );
    // Block at level 0: not allowed with 4K granule (no LPA2).
    t.map_arm(l0, 48, 0x100_0000_0000, 0, AF | BLOCK);
    assert!(matches!(
        arm(r, &t, 0x100_0000_0000),
        Err(WalkError::Reserved { level: 0, .. })
    ));
    // Tables outside guest RAM: the root, and a level-2 table.
    assert_eq!(
        arm(regs(tcr48(), 0x8000_0000, 0), &t, 0x1000),
        Err(WalkError::TableNotInGuestMemory {
            level: 0,
            gpa: pa(0x8000_0000)
        })
    );
    let d1 = t.slot_arm(l0, 48, 0x1000, 1);
    t.w64(d1, 0x9000_0000 | 0b11);
    assert_eq!(
        arm(r, &t, 0x1000),
        Err(WalkError::TableNotInGuestMemory {
            level: 2,
            gpa: pa(0x9000_0000)
        })
    );
}

#[test]
fn arm64_address_size_faults() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    t.map_arm(l0, 48, 0x1000, 3, 0x1_0000_0000 | AF | PAGE);
    // IPS = 32 bits: a 4 GiB output address is too large.
    let tcr32 = tcr48() & !(7 << 32);
    assert!(matches!(
        arm(regs(tcr32, l0, 0), &t, 0x1000),
        Err(WalkError::AddressSize { level: 3, .. })
    ));
    assert_eq!(
        arm(regs(tcr48(), l0, 0), &t, 0x1000).unwrap().gpa,
        pa(0x1_0000_0000)
    );
    // Bits 51:48 of a leaf are not address bits with 4 KiB granules (GP, DBM, RES0).
    t.map_arm(l0, 48, 0x2000, 3, (0xf << 48) | 0x5000 | AF | PAGE);
    assert_eq!(
        arm(regs(tcr48(), l0, 0), &t, 0x2000).unwrap().gpa,
        pa(0x5000)
    );
    // A table address above IPS.
    t.map_arm(l0, 48, 0x80_0000_0000, 0, 0x1_0000_0000 | 0b11);
    assert!(matches!(
        arm(regs(tcr32, l0, 0), &t, 0x80_0000_0000),
        Err(WalkError::AddressSize { level: 0, .. })
    ));
    // A TTBR above IPS.
    assert!(matches!(
        arm(regs(tcr32, 0x1_0000_0000, 0), &t, 0x1000),
        Err(WalkError::AddressSize { .. })
    ));
}

#[test]
fn arm64_walk_never_writes() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    // AF clear and DBM (bit 51) set with AP read-only: a hardware walk with HA/HD might update
    // them; the inspection must not.
    t.map_arm(l0, 48, 0x1000, 3, 0x5000 | (1 << 51) | (0b10 << 6) | PAGE);
    let before = t.mem.words().clone();
    let r = regs(tcr48() | (3 << 39), l0, 0);
    let x = arm(r, &t, 0x1000).unwrap();
    assert!(!x.perms.af && !x.perms.el1_writable());
    assert_eq!(&before, t.mem.words());
}

// ---------------------------------------------------------------------------------------------
// Ranges

fn long4_with(maps: &[(u64, u8, u64)]) -> (Tables, X86Walker) {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    for &(v, level, leaf) in maps {
        t.map64(pml4, 4, v, level, leaf);
    }
    (t, X86Walker::new(st_long(pml4, false)))
}

fn pieces(p: &[RangePiece]) -> Vec<(u64, u64, u64)> {
    p.iter()
        .map(|x| (x.gva.as_u64(), x.gpa.start().as_u64(), x.len()))
        .collect()
}

#[test]
fn range_crossing_pages_splits_and_merges() {
    let (t, w) = long4_with(&[
        (0x1000, 1, 0x0010_0000 | P),
        (0x2000, 1, 0x0010_1000 | P), // contiguous with the previous one
        (0x3000, 1, 0x0030_0000 | P), // not contiguous
    ]);
    let p = translate_range(&w, &t.mem, va(0x1ff0), 0x1020).unwrap();
    assert_eq!(
        pieces(&p),
        vec![(0x1ff0, 0x0010_0ff0, 0x1010), (0x3000, 0x0030_0000, 0x10)]
    );
    let p = translate_range(&w, &t.mem, va(0x1ff0), 0x20).unwrap();
    assert_eq!(pieces(&p), vec![(0x1ff0, 0x0010_0ff0, 0x20)]);
    let p = translate_range(&w, &t.mem, va(0x1800), 0x2000).unwrap();
    assert_eq!(
        pieces(&p),
        vec![(0x1800, 0x0010_0800, 0x1800), (0x3000, 0x0030_0000, 0x800)]
    );
    // Exactly one byte; exactly one page.
    let p = translate_range(&w, &t.mem, va(0x3fff), 1).unwrap();
    assert_eq!(pieces(&p), vec![(0x3fff, 0x0030_0fff, 1)]);
    let p = translate_pages(&w, &t.mem, va(0x3000), 1).unwrap();
    assert_eq!(pieces(&p), vec![(0x3000, 0x0030_0000, 0x1000)]);
    let p = translate_pages(&w, &t.mem, va(0x1000), 3).unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p.iter().map(|x| x.len()).sum::<u64>(), 0x3000);
}

#[test]
fn range_over_large_pages() {
    let (t, w) = long4_with(&[
        (0x20_0000, 2, 0x0200_0000 | PS | P),
        (0x40_0000, 1, 0x0100_0000 | P),
    ]);
    let p = translate_range(&w, &t.mem, va(0x21_0000), 0x1f_1000).unwrap();
    assert_eq!(
        pieces(&p),
        vec![
            (0x21_0000, 0x0201_0000, 0x1f_0000),
            (0x40_0000, 0x0100_0000, 0x1000)
        ]
    );
    // A whole 2 MiB page needs a single walk.
    let before = t.mem.reads();
    let p = translate_range(&w, &t.mem, va(0x20_0000), 0x20_0000).unwrap();
    assert_eq!(pieces(&p), vec![(0x20_0000, 0x0200_0000, 0x20_0000)]);
    assert_eq!(t.mem.reads() - before, 3, "PML4E, PDPTE, PDE");
}

#[test]
fn range_is_all_or_nothing() {
    let (t, w) = long4_with(&[(0x1000, 1, 0x5000 | P), (0x3000, 1, 0x7000 | P)]);
    assert_eq!(
        translate_range(&w, &t.mem, va(0x1000), 0x3000),
        Err(WalkError::NotPresent {
            level: 1,
            gva: va(0x2000)
        })
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0x1000), 3),
        Err(WalkError::NotPresent {
            level: 1,
            gva: va(0x2000)
        })
    );
}

#[test]
fn range_rejects_non_ram_targets() {
    let (mut t, w) = long4_with(&[
        (0x1000, 1, 0x5000 | P),
        (0x2000, 1, 0xfee0_0000 | P),
        (0x20_0000, 2, RAM_END | PS | P),
    ]);
    // Only the first MiB of that 2 MiB page is RAM.
    t.mem
        .add_ram(GpaRange::new(pa(RAM_END), 0x10_0000).unwrap());
    assert_eq!(
        translate_range(&w, &t.mem, va(0x1800), 0x1000),
        Err(WalkError::NotGuestRam {
            gva: va(0x2000),
            gpa: pa(0xfee0_0000)
        })
    );
    assert!(translate_range(&w, &t.mem, va(0x20_0000), 0x10_0000).is_ok());
    assert_eq!(
        translate_range(&w, &t.mem, va(0x2f_f000), 0x2000),
        Err(WalkError::NotGuestRam {
            gva: va(0x2f_f000),
            gpa: pa(RAM_END + 0xf_f000)
        })
    );
}

#[test]
fn range_length_errors_and_wrap() {
    let (mut t, w) = long4_with(&[(0xffff_ffff_ffff_f000, 1, 0x5000 | P)]);
    assert_eq!(
        translate_range(&w, &t.mem, va(0x1000), 0),
        Err(WalkError::EmptyRange)
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0x1000), 0),
        Err(WalkError::EmptyRange)
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0x1001), 1),
        Err(WalkError::Unaligned { gva: va(0x1001) })
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0x1000), 1 << 52),
        Err(WalkError::RangeWraps)
    );
    // The last page of the address space can be named (it ends exactly at 2^64)...
    let p = translate_range(&w, &t.mem, va(0xffff_ffff_ffff_f000), 0x1000).unwrap();
    assert_eq!(pieces(&p), vec![(0xffff_ffff_ffff_f000, 0x5000, 0x1000)]);
    let p = translate_pages(&w, &t.mem, va(0xffff_ffff_ffff_f000), 1).unwrap();
    assert_eq!(p.len(), 1);
    // ...but one byte more wraps.
    assert_eq!(
        translate_range(&w, &t.mem, va(0xffff_ffff_ffff_f000), 0x1001),
        Err(WalkError::RangeWraps)
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0xffff_ffff_ffff_f000), 2),
        Err(WalkError::RangeWraps)
    );
    assert_eq!(
        translate_range(&w, &t.mem, va(2), u64::MAX),
        Err(WalkError::RangeWraps)
    );
    // Crossing into the non-canonical hole fails on the first bad page.
    let pml4 = w.state.cr3;
    t.map64(pml4, 4, 0x7fff_ffff_f000, 1, 0x6000 | P);
    assert_eq!(
        translate_range(&w, &t.mem, va(0x7fff_ffff_f800), 0x1000),
        Err(WalkError::NonCanonical {
            gva: va(0x8000_0000_0000)
        })
    );
}

#[test]
fn range_in_32bit_mode_stops_at_4g_and_chunk_spans_pages() {
    let mut t = Tables::new();
    let pd = t.alloc();
    let w = X86Walker::new(st32(pd, true));
    // The top 4 MiB of the address space -> RAM at 4 MiB.
    t.w32(pd + 0x3ff * 4, 0x0040_0000 | 0x80 | 0x3);
    let p = translate_range(&w, &t.mem, va(0xffff_fff0), 0x10).unwrap();
    assert_eq!(pieces(&p), vec![(0xffff_fff0, 0x007f_fff0, 0x10)]);
    assert_eq!(
        translate_range(&w, &t.mem, va(0xffff_fff0), 0x11),
        Err(WalkError::OutsideVaRange {
            gva: va(0x1_0000_0000)
        })
    );
}

#[test]
fn range_works_with_arm64_and_identity() {
    let mut t = Tables::new();
    let l0 = t.alloc();
    t.map_arm(l0, 48, 0xffff_0000_0000_1000, 3, 0x5000 | AF | PAGE);
    t.map_arm(l0, 48, 0xffff_0000_0000_2000, 3, 0x9000 | AF | PAGE);
    let w = Arm64Walker::new(regs(tcr48(), 0, l0));
    let p = translate_range(&w, &t.mem, va(0xffff_0000_0000_1ffe), 4).unwrap();
    assert_eq!(
        pieces(&p),
        vec![
            (0xffff_0000_0000_1ffe, 0x5ffe, 2),
            (0xffff_0000_0000_2000, 0x9000, 2)
        ]
    );
    let off = Arm64Walker::new(Arm64TranslationRegs {
        sctlr_el1: 0,
        ..regs(0, 0, 0)
    });
    let p = translate_range(&off, &t.mem, va(0x1234), 0x3000).unwrap();
    assert_eq!(pieces(&p), vec![(0x1234, 0x1234, 0x3000)]);
    assert!(matches!(
        translate_range(&off, &t.mem, va(RAM_END - 0x10), 0x20),
        Err(WalkError::NotGuestRam { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Property test: 4-level walker vs an independent model.

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// A mapping request: which of a few PML4 slots, a VA offset inside it, a size class and a
    /// physical frame. Flags are random too.
    #[derive(Clone, Debug)]
    struct Req {
        slot: usize,
        off: u64,
        size_class: u8,
        frame: u64,
        rw: bool,
        us: bool,
        xd: bool,
    }

    const SLOTS: [u64; 4] = [0, 1, 256, 511];

    fn canon(v: u64) -> u64 {
        (((v << 16) as i64) >> 16) as u64
    }

    fn req() -> impl Strategy<Value = Req> {
        (
            0usize..4,
            // Keep offsets in a small window so mappings share upper tables and collide.
            0u64..(1 << 33),
            0u8..10,
            0u64..(1 << 28),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(slot, off, size_class, frame, rw, us, xd)| Req {
                slot,
                off,
                size_class,
                frame,
                rw,
                us,
                xd,
            })
    }

    /// The model: (va_base, size) -> (pa_base, perms). Leaves only, non-overlapping.
    type Model = BTreeMap<u64, (u64, u64, X86Perms)>;

    fn model_lookup(m: &Model, v: u64) -> Option<(u64, u64, X86Perms)> {
        let (base, &(size, pbase, perms)) = m.range(..=v).next_back()?;
        (v - base < size).then(|| (pbase + (v - base), size, perms))
    }

    /// Range model: page `i` of a run at `RUN` is described by `(kind, frame)`: kind 0 not
    /// present, 1..=4 contiguous with the previous page, else `frame` (RAM when below 1 GiB).
    const RUN: u64 = 0x4000_0000;

    fn page_frames(entries: &[(u8, u64)]) -> Vec<Option<u64>> {
        let mut out: Vec<Option<u64>> = Vec::new();
        for &(kind, frame) in entries {
            let prev = out.last().copied().flatten();
            out.push(match (kind, prev) {
                (0, _) => None,
                (1..=4, Some(p)) => Some(p + 1),
                _ => Some(frame),
            });
        }
        out
    }

    fn range_model(
        frames: &[Option<u64>],
        gva: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, u64)>, WalkError> {
        range_model_at(frames, RUN, gva, len)
    }

    fn range_model_at(
        frames: &[Option<u64>],
        run: u64,
        gva: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, u64)>, WalkError> {
        let last = gva + len - 1;
        let mut cur = gva;
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        loop {
            let page = ((cur - run) >> 12) as usize;
            let frame = frames
                .get(page)
                .copied()
                .flatten()
                .ok_or(WalkError::NotPresent {
                    level: 1,
                    gva: va(cur),
                })?;
            let gpa = (frame << 12) | (cur & 0xfff);
            let take = (0x1000 - (cur & 0xfff)).min(last - cur + 1);
            if gpa + take > RAM_END {
                return Err(WalkError::NotGuestRam {
                    gva: va(cur),
                    gpa: pa(gpa),
                });
            }
            match out.last_mut() {
                Some(p) if p.1 + p.2 == gpa => p.2 += take,
                _ => out.push((cur, gpa, take)),
            }
            if cur + take - 1 == last {
                return Ok(out);
            }
            cur += take;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn range_matches_page_model(entries in proptest::collection::vec((0u8..12, 0u64..0x50000), 1..24),
                                    start_off in 0u64..0x1_8000,
                                    len in 1u64..0x1_8000) {
            let frames = page_frames(&entries);
            let mut t = Tables::new();
            let pml4 = t.alloc();
            // Make sure the PT exists even when every page is absent.
            t.map64(pml4, 4, RUN + 0x1f_f000, 1, 0);
            for (i, f) in frames.iter().enumerate() {
                if let Some(f) = f {
                    t.map64(pml4, 4, RUN + ((i as u64) << 12), 1, (f << 12) | P);
                }
            }
            let w = X86Walker::new(st_long(pml4, false));
            let got = translate_range(&w, &t.mem, va(RUN + start_off), len).map(|p| pieces(&p));
            prop_assert_eq!(got, range_model(&frames, RUN + start_off, len));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// arm64 4 KiB pages: the walker decodes the neighbours of a level-3 leaf in place
        /// (translate_span); the range still equals page-by-page walks, across a level-3 table
        /// boundary, reserved (type 0b01) and invalid descriptors included.
        #[test]
        fn arm64_range_matches_page_model(entries in proptest::collection::vec((0u8..12, 0u64..0x50000), 1..24),
                                          reserved in proptest::collection::vec(any::<bool>(), 24),
                                          start_off in 0u64..0x1_8000,
                                          len in 1u64..0x1_8000) {
            // The run starts 16 pages before a 2 MiB boundary: it spans two level-3 tables.
            let run = RUN + 0x1f_0000;
            let mut frames = page_frames(&entries);
            let mut t = Tables::new();
            let root = t.alloc();
            // Both level-3 tables exist even when every page of one is absent.
            t.map_arm(root, 48, run + 0x20_0000, 3, 0);
            for (i, f) in frames.iter_mut().enumerate() {
                let v = run + ((i as u64) << 12);
                match f {
                    Some(x) if reserved[i] => {
                        // Type 0b01 at level 3 is reserved: not present.
                        t.map_arm(root, 48, v, 3, (*x << 12) | 0b01 | (1 << 10));
                        *f = None;
                    }
                    Some(x) => t.map_arm(root, 48, v, 3, (*x << 12) | 0b11 | (1 << 10)),
                    None => t.map_arm(root, 48, v, 3, 0),
                }
            }
            let w = Arm64Walker::new(regs(tcr48(), root, 0));
            let got = translate_range(&w, &t.mem, va(run + start_off), len).map(|p| pieces(&p));
            let want = range_model_at(&frames, run, run + start_off, len).map_err(|e| match e {
                WalkError::NotPresent { gva, .. } => WalkError::NotPresent { level: 3, gva },
                other => other,
            });
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn long4_matches_model(reqs in proptest::collection::vec(req(), 1..40),
                               probes in proptest::collection::vec((any::<u64>(), 0usize..64, any::<u64>()), 1..64)) {
            let mut t = Tables::new();
            let pml4 = t.alloc();
            let mut model: Model = BTreeMap::new();
            for r in &reqs {
                let (size, level) = match r.size_class {
                    0 => (1u64 << 30, 3u8),
                    1..=3 => (1 << 21, 2),
                    _ => (1 << 12, 1),
                };
                let v = canon((SLOTS[r.slot] << 39) | (r.off & !(size - 1)));
                let p = (r.frame << 12) & !(size - 1);
                // Skip requests overlapping an earlier mapping (in either direction).
                let overlaps = model.range(..v + size).next_back()
                    .is_some_and(|(&b, &(s, _, _))| b + s > v);
                if overlaps {
                    continue;
                }
                let mut leaf = p | P;
                if r.rw { leaf |= RW; }
                if r.us { leaf |= US; }
                if r.xd { leaf |= XD; }
                if level > 1 { leaf |= PS; }
                t.map64(pml4, 4, v, level, leaf);
                // Intermediate tables are created P|RW|US without XD, so the leaf decides.
                model.insert(v, (size, p, X86Perms { writable: r.rw, user: r.us, nx: r.xd }));
            }
            let w = X86Walker::new(st_long(pml4, false));
            let bases: Vec<u64> = model.keys().copied().collect();
            for &(raw, pick, off) in &probes {
                // Half the probes land inside a mapping, the rest anywhere (often non-canonical).
                let v = if pick < 32 && !bases.is_empty() {
                    let b = bases[pick % bases.len()];
                    let (size, _, _) = model[&b];
                    b + off % size
                } else if pick < 48 {
                    canon((SLOTS[pick % 4] << 39) | (raw & ((1 << 39) - 1)))
                } else {
                    raw
                };
                let got = w.translate(&t.mem, va(v));
                let top = (v as i64) >> 47;
                if top != 0 && top != -1 {
                    prop_assert_eq!(got, Err(WalkError::NonCanonical { gva: va(v) }));
                    continue;
                }
                match model_lookup(&model, v) {
                    Some((p, size, perms)) => {
                        prop_assert_eq!(got, Ok(Translation { gpa: pa(p), page_size: size, perms }));
                    }
                    None => {
                        let is_not_present = matches!(got, Err(WalkError::NotPresent { gva, .. }) if gva == va(v));
                        prop_assert!(is_not_present, "{:#x}: {:?}", v, got);
                    }
                }
            }
            // Range translation over the first mapping agrees with per-byte lookups.
            if let Some(&b) = bases.first() {
                let (size, p, _) = model[&b];
                let len = size.min(0x3000);
                let got = translate_range(&w, &t.mem, va(b), len);
                if p + len <= RAM_END {
                    let got = got.unwrap();
                    prop_assert_eq!(got.iter().map(|x| x.len()).sum::<u64>(), len);
                    prop_assert_eq!(got[0].gpa.start(), pa(p));
                } else {
                    let not_ram = matches!(got, Err(WalkError::NotGuestRam { .. }));
                    prop_assert!(not_ram);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds and the arch-neutral wrapper

#[test]
fn range_piece_count_is_bounded() {
    // One PT whose 512 entries all map the same RAM page, reused by every PDE of one PD: a tiny
    // guest structure that covers 1 GiB with 262144 discontiguous pieces.
    let mut t = Tables::new();
    let pml4 = t.alloc();
    let pdpt = t.alloc();
    let pd = t.alloc();
    let pt = t.alloc();
    t.w64(pml4, pdpt | P);
    t.w64(pdpt, pd | P);
    for i in 0..512 {
        t.w64(pd + i * 8, pt | P);
        t.w64(pt + i * 8, 0x5000 | P);
    }
    let w = X86Walker::new(st_long(pml4, false));
    let n = MAX_RANGE_PIECES as u64;
    assert_eq!(
        translate_pages(&w, &t.mem, va(0), n).map(|p| p.len()),
        Ok(MAX_RANGE_PIECES)
    );
    assert_eq!(
        translate_pages(&w, &t.mem, va(0), n + 1),
        Err(WalkError::TooManyPieces)
    );
    assert_eq!(
        translate_range(&w, &t.mem, va(0), 1 << 30),
        Err(WalkError::TooManyPieces)
    );
}

#[test]
fn any_walker_dispatches() {
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | RW | P);
    let l0 = t.alloc();
    t.map_arm(l0, 48, 0x1000, 3, 0x6000 | AF | PAGE);
    let x = AnyWalker::X86(X86Walker::new(st_long(pml4, false)));
    let a = AnyWalker::Arm64(Arm64Walker::new(regs(tcr48(), l0, 0)));
    let tx = x.translate(&t.mem, va(0x1008)).unwrap();
    assert_eq!(tx.gpa, pa(0x5008));
    assert!(matches!(
        tx.perms,
        AnyPerms::X86(X86Perms {
            writable: true,
            user: false,
            nx: false
        })
    ));
    let ta = a.translate(&t.mem, va(0x1008)).unwrap();
    assert_eq!(ta.gpa, pa(0x6008));
    assert!(matches!(
        ta.perms,
        AnyPerms::Arm64(Arm64Perms { ap: 0, .. })
    ));
    // Through a trait object for the memory, too.
    let dynmem: &dyn GuestMemRead = &t.mem;
    assert_eq!(
        translate_range(&a, dynmem, va(0x1000), 0x10).unwrap().len(),
        1
    );
}

// Property test: arm64 48-bit walker vs the same kind of model.
mod prop_arm {
    use super::*;
    use proptest::prelude::*;

    /// Same idea for arm64 48-bit, 4 KiB granule, both halves.
    #[derive(Clone, Debug)]
    struct ArmReq {
        upper: bool,
        off: u64,
        size_class: u8,
        frame: u64,
        ap: u8,
        pxn: bool,
        uxn: bool,
    }

    fn arm_req() -> impl Strategy<Value = ArmReq> {
        (
            any::<bool>(),
            0u64..(1 << 33),
            0u8..10,
            0u64..(1 << 28),
            0u8..4,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(upper, off, size_class, frame, ap, pxn, uxn)| ArmReq {
                upper,
                off,
                size_class,
                frame,
                ap,
                pxn,
                uxn,
            })
    }

    type ArmModel = BTreeMap<u64, (u64, u64, Arm64Perms)>;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn arm64_matches_model(reqs in proptest::collection::vec(arm_req(), 1..40),
                               probes in proptest::collection::vec((any::<u64>(), 0usize..64, any::<u64>()), 1..64)) {
            let mut t = Tables::new();
            let lo = t.alloc();
            let hi = t.alloc();
            let mut model: ArmModel = BTreeMap::new();
            for r in &reqs {
                let (size, level) = match r.size_class {
                    0 => (1u64 << 30, 1u8),
                    1..=3 => (1 << 21, 2),
                    _ => (1 << 12, 3),
                };
                // Lower half: VA 0..2^33; upper half: 2^33 bytes from 16 GiB below the top (L0 index 511).
                let v = if r.upper {
                    0xffff_fffc_0000_0000 | (r.off & !(size - 1))
                } else {
                    r.off & !(size - 1)
                };
                let p = (r.frame << 12) & !(size - 1);
                let overlaps = model.range(..v + size).next_back()
                    .is_some_and(|(&b, &(s, _, _))| b + s > v);
                if overlaps {
                    continue;
                }
                let mut d = p | AF | (u64::from(r.ap) << 6) | if level == 3 { PAGE } else { BLOCK };
                if r.pxn { d |= 1 << 53; }
                if r.uxn { d |= 1 << 54; }
                t.map_arm(if r.upper { hi } else { lo }, 48, v, level, d);
                model.insert(v, (size, p, Arm64Perms { ap: r.ap, pxn: r.pxn, uxn: r.uxn, af: true }));
            }
            let w = Arm64Walker::new(regs(tcr48(), lo, hi));
            let bases: Vec<u64> = model.keys().copied().collect();
            for &(raw, pick, off) in &probes {
                let v = if pick < 32 && !bases.is_empty() {
                    let b = bases[pick % bases.len()];
                    b + off % model[&b].0
                } else if pick < 40 {
                    raw & ((1 << 34) - 1)
                } else if pick < 48 {
                    0xffff_fffc_0000_0000 | (raw & ((1 << 34) - 1))
                } else {
                    raw
                };
                let got = w.translate(&t.mem, va(v));
                let top = v >> 48;
                if top != 0 && top != 0xffff {
                    prop_assert_eq!(got, Err(WalkError::OutsideVaRange { gva: va(v) }));
                    continue;
                }
                let hit = model.range(..=v).next_back()
                    .filter(|(&b, &(s, _, _))| v - b < s)
                    .map(|(&b, &(s, p, perms))| (p + (v - b), s, perms));
                match hit {
                    Some((p, size, perms)) => {
                        prop_assert_eq!(got, Ok(Translation { gpa: pa(p), page_size: size, perms }));
                    }
                    None => {
                        let is_not_present = matches!(got, Err(WalkError::NotPresent { gva, .. }) if gva == va(v));
                        prop_assert!(is_not_present, "{:#x}: {:?}", v, got);
                    }
                }
            }
        }
    }
}

#[test]
fn walk_translate_adapts_to_the_engine_interface() {
    use crate::guest::GuestTranslate;
    let mut t = Tables::new();
    let pml4 = t.alloc();
    t.map64(pml4, 4, 0x1000, 1, 0x5000 | P);
    let mut tr = WalkTranslate::new(X86Walker::new(st_long(pml4, false)), &t.mem);
    assert_eq!(tr.translate(va(0x1abc)), Ok(pa(0x5abc)));
    assert_eq!(tr.last_error, None);
    assert_eq!(tr.translate(va(0x2000)), Err(()));
    assert_eq!(
        tr.last_error,
        Some(WalkError::NotPresent {
            level: 1,
            gva: va(0x2000)
        })
    );
}

/// Issue 12, breach 3: a walk through [`AttrChecked`] refuses a paging structure on a frame
/// the guest may not read, and names the entry it refused; readable tables walk as before.
#[test]
fn attr_checked_refuses_tables_the_guest_may_not_read() {
    use crate::store::{AttrStore, StoreLimits};
    let mut t = Tables::new();
    let pml4 = t.alloc();
    let v = 0x40_0000u64;
    let pt_entry = t.slot64(pml4, 4, v, 1);
    t.w64(pt_entry, 0x20_0000 | P | RW);
    let pt_page = pt_entry & !0xfff;
    let w = X86Walker::new(X86PagingState::new(CR0_PG | 1, pml4, CR4_PAE, EFER_LME));
    let mut store = AttrStore::new(StoreLimits::default(), false);
    // Readable everywhere: the same result as the raw reader.
    let ok = AttrChecked::new(&t.mem, &store);
    assert_eq!(w.translate(&ok, va(v + 5)).unwrap().gpa, pa(0x20_0005));
    assert_eq!(ok.denied(), None);
    // The page table's frame made `---` (and `--x`): the walk fails at that entry, nothing read.
    for attrs in [0u64, 4] {
        store = AttrStore::new(StoreLimits::default(), true);
        store.set_attributes(pt_page, 0x1000, attrs, 0).unwrap();
        let before = t.mem.reads();
        let c = AttrChecked::new(&t.mem, &store);
        assert_eq!(
            w.translate(&c, va(v + 5)),
            Err(WalkError::TableNotInGuestMemory {
                level: 1,
                gpa: pa(pt_entry)
            })
        );
        assert_eq!(c.denied(), Some(pa(pt_entry)));
        // Three upper levels were read, never the refused entry.
        assert_eq!(t.mem.reads() - before, 3);
    }
    // Read-only (`r--`, `r-x`) tables are readable.
    store = AttrStore::new(StoreLimits::default(), false);
    store.set_attributes(pt_page, 0x1000, 1, 0).unwrap();
    let c = AttrChecked::new(&t.mem, &store);
    assert!(w.translate(&c, va(v)).is_ok());
}

/// A range over 4 KiB pages costs one full walk per level-3 table, then one read per page.
#[test]
fn arm64_range_over_4k_pages_walks_once_per_table() {
    let mut t = Tables::new();
    let root = t.alloc();
    for i in 0..1024u64 {
        t.map_arm(
            root,
            48,
            0x4000_0000 + (i << 12),
            3,
            (0x100_0000 + (i << 12)) | 0b11 | (1 << 10),
        );
    }
    let w = Arm64Walker::new(regs(tcr48(), root, 0));
    let before = t.mem.reads();
    let p = translate_range(&w, &t.mem, va(0x4000_0000), 1024 << 12).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].gpa, GpaRange::new(pa(0x100_0000), 1024 << 12).unwrap());
    // Two level-3 tables: 2 walks of 4 reads, then 511 neighbour reads in each.
    assert_eq!(t.mem.reads() - before, 2 * 4 + 2 * 511);
}
