//! Guest page-table walkers: turn a guest-virtual address into a guest-physical one by reading the
//! guest's own (first-stage) page tables, the way the CPU would at that moment.
//!
//! Used by the ROE hypercall, whose address argument is guest-virtual (see
//! `docs/guest-walk.md` and `/work/shared/docs/protection-spec.md` §1).
//!
//! * [`GuestMemRead`]: how a walker reads guest-physical memory (the back end implements it over
//!   its EPT / stage-2 view; it fails cleanly for anything that is not guest RAM).
//! * [`x86::X86Walker`]: paging off, 32-bit (4 KiB / 4 MiB, PSE-36), PAE (4 KiB / 2 MiB), 4-level
//!   and 5-level (4 KiB / 2 MiB / 1 GiB).
//! * [`arm64::Arm64Walker`]: EL1&0 stage 1, MMU off or 4 KiB granule (48-bit VA); 16/64 KiB
//!   granules and LPA2 are refused.
//! * [`translate_range`] / [`translate_pages`]: a whole virtual range, all or nothing.
//!
//! Walkers only read: they never set accessed/dirty (x86) or AF/DBM (arm64) bits.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, PAGE_SIZE};

pub mod arm64;
mod checked;
mod glue;
mod range;
pub mod x86;

#[cfg(test)]
mod tests;

pub use checked::AttrChecked;
pub use glue::WalkTranslate;
pub use range::{translate_pages, translate_range, RangePiece, MAX_RANGE_PIECES};

/// The guest-physical address is not guest RAM (or not readable by the hypervisor as such).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotGuestRam;

/// Read access to guest-physical memory, for page-table walks.
///
/// Reads are naturally aligned (8 bytes for `read_u64`, 4 for `read_u32`); an implementation may
/// refuse unaligned ones. Values are little-endian as the guest stored them.
pub trait GuestMemRead {
    /// The 64-bit word at `gpa`; [`NotGuestRam`] when `gpa` is not guest RAM.
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam>;
    /// The 32-bit word at `gpa`; [`NotGuestRam`] when `gpa` is not guest RAM.
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam>;
    /// Whether every byte of `range` is guest RAM. The default probes each 4 KiB page with
    /// `read_u64`; back ends should override it with their memory map.
    fn contains_ram(&self, range: GpaRange) -> bool {
        let mut page = range.start().page_base();
        while page < range.end() {
            if self.read_u64(page).is_err() {
                return false;
            }
            match page.checked_add(PAGE_SIZE) {
                Some(next) => page = next,
                None => return true,
            }
        }
        true
    }
}

impl<T: GuestMemRead + ?Sized> GuestMemRead for &T {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        (**self).read_u64(gpa)
    }
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        (**self).read_u32(gpa)
    }
    fn contains_ram(&self, range: GpaRange) -> bool {
        (**self).contains_ram(range)
    }
}

/// Why a translation failed. Every variant maps to `-EINVAL` for ROE; they are distinct so that
/// tests and logs can tell them apart.
///
/// `level` numbering: x86 counts tables from the leaf up (1 = PT, 2 = PD, 3 = PDPT, 4 = PML4,
/// 5 = PML5; 32-bit paging uses 2 = PD, 1 = PT); arm64 uses the architecture's lookup levels
/// (0..=3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// x86 4/5-level paging: the address is not canonical.
    NonCanonical { gva: GuestVirtAddr },
    /// The address lies outside the translatable space: above 4 GiB in an x86 32-bit mode, or in
    /// neither the TTBR0 nor the TTBR1 range on arm64.
    OutsideVaRange { gva: GuestVirtAddr },
    /// arm64: walks for this half of the address space are disabled (TCR_EL1.EPD0/EPD1).
    WalkDisabled { gva: GuestVirtAddr },
    /// An entry on the walk is not present / invalid.
    NotPresent { level: u8, gva: GuestVirtAddr },
    /// An entry has reserved bits set, or an encoding not allowed at its level (x86 PS in a
    /// PML4E/PML5E, XD without EFER.NXE, address bits above MAXPHYADDR; arm64 a block at level 0).
    Reserved { level: u8, entry: u64 },
    /// arm64: a table or output address lies beyond the size set by TCR_EL1.IPS (or 48 bits).
    AddressSize { level: u8, entry: u64 },
    /// A paging structure (table) lies at a guest-physical address that is not guest RAM.
    TableNotInGuestMemory { level: u8, gpa: GuestPhysAddr },
    /// Range walk: the virtual address translates, but to something that is not guest RAM.
    NotGuestRam {
        gva: GuestVirtAddr,
        gpa: GuestPhysAddr,
    },
    /// arm64: the selected half uses a 16 KiB or 64 KiB granule (or a reserved TGx encoding,
    /// reported as `kib: 0`). Only 4 KiB is implemented; see `docs/guest-walk.md`.
    UnsupportedGranule { kib: u32 },
    /// A paging configuration this walker does not implement (named), e.g. arm64 LPA2.
    Unsupported(&'static str),
    /// Range walk: zero length.
    EmptyRange,
    /// Range walk: start + length wraps around the address space (or a count overflows).
    RangeWraps,
    /// Range walk: a page-granular start address is not 4 KiB aligned.
    Unaligned { gva: GuestVirtAddr },
    /// Range walk: the result list could not be allocated.
    OutOfMemory,
    /// Range walk: the range maps to more than [`MAX_RANGE_PIECES`] physically discontiguous
    /// pieces (bounds the hypervisor's time and memory for one call; the guest can split it).
    TooManyPieces,
}

/// A successful translation of one guest-virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation<P> {
    /// Guest-physical address of the translated byte (page offset included).
    pub gpa: GuestPhysAddr,
    /// Size of the leaf mapping in bytes (a power of two, at least 4096). Identity translations
    /// (paging / MMU off) report 4096.
    pub page_size: u64,
    /// The leaf's effective permissions, combined along the walk.
    pub perms: P,
}

/// A first-stage translation regime, snapshotted from a vCPU.
pub trait GuestWalker {
    /// Arch-specific permission report.
    type Perms: Copy + core::fmt::Debug;
    /// Translate `gva`, reading the guest's tables through `mem`. Never writes.
    fn translate<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
    ) -> Result<Translation<Self::Perms>, WalkError>;

    /// Translate `gva` and say how far on (up to `last`, inclusive) the addresses translate to
    /// physically contiguous guest memory exactly as separate walks would (no error on the way):
    /// returns the translation of `gva` and the span's length minus one (in bytes, from `gva`).
    /// The span covers at least the rest of `gva`'s leaf (or up to `last`). For
    /// [`translate_range`]; the default walks once and covers the rest of the leaf.
    fn translate_span<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
        last: u64,
    ) -> Result<(Translation<Self::Perms>, u64), WalkError> {
        let t = self.translate(mem, gva)?;
        // page_size is a power of two >= 4096; fall back to 4 KiB if a walker ever reports
        // otherwise.
        let size = if t.page_size.is_power_of_two() && t.page_size >= PAGE_SIZE {
            t.page_size
        } else {
            PAGE_SIZE
        };
        let cur = gva.as_u64();
        let in_leaf_m1 = size.wrapping_sub(1) & !cur;
        Ok((t, in_leaf_m1.min(last.saturating_sub(cur))))
    }
}

/// Either walker, for code that handles both architectures through one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyWalker {
    X86(x86::X86Walker),
    Arm64(arm64::Arm64Walker),
}

/// Permissions reported by [`AnyWalker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyPerms {
    X86(x86::X86Perms),
    Arm64(arm64::Arm64Perms),
}

impl GuestWalker for AnyWalker {
    type Perms = AnyPerms;

    fn translate<M: GuestMemRead + ?Sized>(
        &self,
        mem: &M,
        gva: GuestVirtAddr,
    ) -> Result<Translation<AnyPerms>, WalkError> {
        match self {
            AnyWalker::X86(w) => w.translate(mem, gva).map(|t| Translation {
                gpa: t.gpa,
                page_size: t.page_size,
                perms: AnyPerms::X86(t.perms),
            }),
            AnyWalker::Arm64(w) => w.translate(mem, gva).map(|t| Translation {
                gpa: t.gpa,
                page_size: t.page_size,
                perms: AnyPerms::Arm64(t.perms),
            }),
        }
    }
}

/// Bits `[0, n)` set; all bits for `n >= 64`.
pub(crate) const fn low_mask(n: u32) -> u64 {
    match 1u64.checked_shl(n) {
        Some(v) => v.wrapping_sub(1),
        None => u64::MAX,
    }
}

/// Bits `[lo, hi)` set (empty when `hi <= lo`).
pub(crate) const fn bit_range(lo: u32, hi: u32) -> u64 {
    low_mask(hi) & !low_mask(lo)
}

/// Read the `index`-th 8-byte entry of the table at `table`.
pub(crate) fn read_entry64<M: GuestMemRead + ?Sized>(
    mem: &M,
    table: u64,
    index: u64,
    level: u8,
) -> Result<u64, WalkError> {
    let gpa = index
        .checked_mul(8)
        .and_then(|off| table.checked_add(off))
        .map(GuestPhysAddr::new)
        .ok_or(WalkError::TableNotInGuestMemory {
            level,
            gpa: GuestPhysAddr::new(table),
        })?;
    mem.read_u64(gpa)
        .map_err(|NotGuestRam| WalkError::TableNotInGuestMemory { level, gpa })
}

/// Read the `index`-th 4-byte entry of the table at `table`.
pub(crate) fn read_entry32<M: GuestMemRead + ?Sized>(
    mem: &M,
    table: u64,
    index: u64,
    level: u8,
) -> Result<u32, WalkError> {
    let gpa = index
        .checked_mul(4)
        .and_then(|off| table.checked_add(off))
        .map(GuestPhysAddr::new)
        .ok_or(WalkError::TableNotInGuestMemory {
            level,
            gpa: GuestPhysAddr::new(table),
        })?;
    mem.read_u32(gpa)
        .map_err(|NotGuestRam| WalkError::TableNotInGuestMemory { level, gpa })
}

/// Host-side fake guest memory for tests: a sparse map of 8-byte words plus the list of
/// guest-RAM ranges. Unwritten words inside RAM read as 0; anything outside RAM fails.
/// Also usable by other modules' tests (e.g. hypercall handling).
#[derive(Clone, Debug, Default)]
pub struct FakeGuestMem {
    words: BTreeMap<u64, u64>,
    ram: Vec<GpaRange>,
    /// Number of read calls served (the walker must only read).
    reads: core::cell::Cell<u64>,
}

impl FakeGuestMem {
    /// No RAM at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare `range` as guest RAM.
    pub fn add_ram(&mut self, range: GpaRange) {
        self.ram.push(range);
    }

    /// Whether `gpa` is inside a declared RAM range.
    pub fn is_ram(&self, gpa: GuestPhysAddr) -> bool {
        self.ram.iter().any(|r| r.contains(gpa))
    }

    /// Store a 64-bit word (8-byte aligned; `false` if unaligned or not RAM).
    pub fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> bool {
        if !gpa.is_aligned(8) || !self.is_ram(gpa) {
            return false;
        }
        self.words.insert(gpa.as_u64(), value);
        true
    }

    /// Store a 32-bit word (4-byte aligned; `false` if unaligned or not RAM).
    pub fn write_u32(&mut self, gpa: GuestPhysAddr, value: u32) -> bool {
        if !gpa.is_aligned(4) || !self.is_ram(gpa) {
            return false;
        }
        let word = gpa.as_u64() & !7;
        let shift = if gpa.as_u64() & 4 != 0 { 32 } else { 0 };
        let old = self.words.get(&word).copied().unwrap_or(0);
        let new = (old & !(0xffff_ffffu64 << shift)) | (u64::from(value) << shift);
        self.words.insert(word, new);
        true
    }

    /// The raw word map (to check that a walk changed nothing).
    pub fn words(&self) -> &BTreeMap<u64, u64> {
        &self.words
    }

    /// How many reads were served so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }
}

impl GuestMemRead for FakeGuestMem {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        self.reads.set(self.reads.get().wrapping_add(1));
        if !gpa.is_aligned(8) || !self.is_ram(gpa) {
            return Err(NotGuestRam);
        }
        Ok(self.words.get(&gpa.as_u64()).copied().unwrap_or(0))
    }

    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        self.reads.set(self.reads.get().wrapping_add(1));
        if !gpa.is_aligned(4) || !self.is_ram(gpa) {
            return Err(NotGuestRam);
        }
        let word = self.words.get(&(gpa.as_u64() & !7)).copied().unwrap_or(0);
        let v = if gpa.as_u64() & 4 != 0 {
            word >> 32
        } else {
            word
        };
        Ok((v & 0xffff_ffff) as u32)
    }

    fn contains_ram(&self, range: GpaRange) -> bool {
        // Declared ranges may touch; walk the range page by page against them.
        let mut page = range.start().page_base();
        while page < range.end() {
            if !self.is_ram(page) {
                return false;
            }
            match page.checked_add(PAGE_SIZE) {
                Some(next) => page = next,
                None => return true,
            }
        }
        true
    }
}
