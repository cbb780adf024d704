//! The SPP table (SDM Vol. 3C, "Sub-Page Write Permissions"): four levels indexed like EPT.
//! Non-leaf entry: bit 0 present, bits 11:1 reserved (0), next table in bits 51:12. Leaf entry (one
//! per 4 KiB guest page): a write-permission vector, bit 2i allows writes to 128-byte sub-page i,
//! odd bits reserved (always 0 here: [`SppVector`] cannot hold them).

use alloc::vec::Vec;

use super::{level_size, ENTRIES};
use crate::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::physmem::{OutOfFrames, PhysMem};

pub const SPPT_PRESENT: u64 = 1;
pub const SPPT_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Size of one SPP sub-page.
pub const SUBPAGE_SIZE: u64 = 128;
/// Sub-pages per 4 KiB page.
pub const SUBPAGES: usize = 32;
/// How far one store can reach past the sub-page it starts in: a 64-byte (AVX-512) store
/// starting at the last byte covers 63 bytes of the next sub-page. `rep` string stores are a
/// series of element stores of at most 8 bytes.
pub const STORE_REACH: u32 = 63;

/// A write-permission vector with the odd (reserved) bits always zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SppVector(u64);

impl SppVector {
    /// From a 32-bit mask: bit i set = sub-page i writable.
    pub const fn from_writable_mask(mask: u32) -> Self {
        let mut v = 0u64;
        let mut i = 0;
        while i < 32 {
            if mask & (1 << i) != 0 {
                v |= 1 << (2 * i);
            }
            i += 1;
        }
        Self(v)
    }

    /// From a 4096-bit map of protected bytes (bit b of word b/64 = byte b protected): a sub-page
    /// is writable only when none of its 128 bytes is protected **and** none of the first
    /// [`STORE_REACH`] bytes of the next sub-page of the same page is: a store that starts in a
    /// writable sub-page may run into the next one, and an SPP implementation that checks only
    /// the sub-page of the first byte (Bochs 2.7 does; docs/x86_64-spp.md) would let it change
    /// protected bytes there. (A store that crosses into the next page is checked there by EPT.)
    pub fn from_protected_bytes(bits: &[u64; 64]) -> Self {
        Self::from_protected_bytes_reach(bits, STORE_REACH)
    }

    /// As [`SppVector::from_protected_bytes`] for stores that reach `reach` bytes past the
    /// sub-page they start in (any number; the page end bounds it): sub-page i is writable only
    /// when bytes `128i .. 128i + 128 + reach` of the page hold no protected byte. FXSAVE writes
    /// 512 bytes and XSAVE up to its area size in one instruction, and Bochs 2.7 checks only
    /// the sub-page of the first byte (docs/x86_64-spp.md): the x86 back end passes the largest
    /// such store its guest can make.
    pub fn from_protected_bytes_reach(bits: &[u64; 64], reach: u32) -> Self {
        let protected = |b: usize| {
            bits.get(b / 64)
                .is_some_and(|w| w & (1u64 << (b % 64)) != 0)
        };
        let span = SUBPAGE_SIZE as usize + reach as usize;
        let mut mask = 0u32;
        for i in 0..SUBPAGES {
            let start = i * SUBPAGE_SIZE as usize;
            let end = start.saturating_add(span).min(PAGE_SIZE as usize);
            if !(start..end).any(protected) {
                mask |= 1 << i;
            }
        }
        Self::from_writable_mask(mask)
    }

    /// The raw 64-bit leaf value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// Is sub-page `i` (0..32) writable?
    pub const fn writable(self, i: usize) -> bool {
        i < 32 && self.0 & (1 << (2 * i)) != 0
    }
}

/// The SPP table of one guest.
#[derive(Debug)]
pub struct Sppt {
    root: HostPhysAddr,
    pages: usize,
}

fn slot(table: HostPhysAddr, idx: u64) -> HostPhysAddr {
    HostPhysAddr::new(table.as_u64() + (idx % ENTRIES) * 8)
}

fn index(gpa: u64, level: u8) -> u64 {
    (gpa >> (12 + 9 * u32::from(level))) % ENTRIES
}

impl Sppt {
    pub fn new(mem: &mut dyn PhysMem) -> Result<Self, OutOfFrames> {
        Ok(Self {
            root: mem.alloc_frame()?,
            pages: 1,
        })
    }

    /// SPPTP VMCS value (field 0x2030): the root's address.
    pub fn spptp(&self) -> u64 {
        self.root.as_u64() & SPPT_ADDR_MASK
    }

    /// Table frames in use (root included).
    pub fn table_pages(&self) -> usize {
        self.pages
    }

    /// The leaf-table entry of `gpa`'s page, if the path to it exists.
    fn leaf_slot(&self, mem: &dyn PhysMem, gpa: u64) -> Option<HostPhysAddr> {
        let mut table = self.root;
        for level in (1..=3u8).rev() {
            let e = mem.read_u64(slot(table, index(gpa, level)));
            if e & SPPT_PRESENT == 0 {
                return None;
            }
            table = HostPhysAddr::new(e & SPPT_ADDR_MASK);
        }
        Some(slot(table, index(gpa, 0)))
    }

    /// The vector of `gpa`'s page; `None` when its path is missing (hardware: SPPT miss).
    pub fn get(&self, mem: &dyn PhysMem, gpa: GuestPhysAddr) -> Option<SppVector> {
        if gpa.as_u64() >> 48 != 0 {
            return None;
        }
        let s = self.leaf_slot(mem, gpa.as_u64())?;
        Some(SppVector(mem.read_u64(s)))
    }

    /// Set the vectors of several pages; the missing paths are built first, all frames reserved
    /// before anything is written (on error nothing changed).
    pub fn set(
        &mut self,
        mem: &mut dyn PhysMem,
        entries: &[(GuestPhysAddr, SppVector)],
    ) -> Result<(), OutOfFrames> {
        for (gpa, _) in entries {
            if gpa.as_u64() >> 48 != 0 || !gpa.is_aligned(PAGE_SIZE) {
                return Err(OutOfFrames);
            }
        }
        // Count missing tables: distinct missing (level, prefix) pairs.
        let mut missing: Vec<(u8, u64)> = Vec::new();
        for (gpa, _) in entries {
            let g = gpa.as_u64();
            let mut table = Some(self.root);
            for level in (1..=3u8).rev() {
                let next = match table {
                    Some(t) => {
                        let e = mem.read_u64(slot(t, index(g, level)));
                        (e & SPPT_PRESENT != 0).then(|| HostPhysAddr::new(e & SPPT_ADDR_MASK))
                    }
                    None => None,
                };
                if next.is_none() {
                    let key = (level, g / level_size(level));
                    if !missing.contains(&key) {
                        if missing.try_reserve(1).is_err() {
                            return Err(OutOfFrames);
                        }
                        missing.push(key);
                    }
                }
                table = next;
            }
        }
        let mut pool: Vec<HostPhysAddr> = Vec::new();
        if pool.try_reserve_exact(missing.len()).is_err() {
            return Err(OutOfFrames);
        }
        for _ in 0..missing.len() {
            match mem.alloc_frame() {
                Ok(f) => pool.push(f),
                Err(e) => {
                    for f in pool {
                        mem.free_frame(f);
                    }
                    return Err(e);
                }
            }
        }
        for (gpa, vec) in entries {
            let g = gpa.as_u64();
            let mut table = self.root;
            for level in (1..=3u8).rev() {
                let s = slot(table, index(g, level));
                let e = mem.read_u64(s);
                table = if e & SPPT_PRESENT != 0 {
                    HostPhysAddr::new(e & SPPT_ADDR_MASK)
                } else {
                    let f = pool.pop().ok_or(OutOfFrames)?;
                    self.pages += 1;
                    mem.write_u64(s, (f.as_u64() & SPPT_ADDR_MASK) | SPPT_PRESENT);
                    f
                };
            }
            mem.write_u64(slot(table, index(g, 0)), vec.raw());
        }
        for f in pool {
            mem.free_frame(f);
        }
        Ok(())
    }

    /// Free every frame. The table must no longer be in use.
    pub fn destroy(self, mem: &mut dyn PhysMem) {
        fn free(mem: &mut dyn PhysMem, t: HostPhysAddr, level: u8) {
            if level > 0 {
                for i in 0..ENTRIES {
                    let e = mem.read_u64(slot(t, i));
                    if e & SPPT_PRESENT != 0 {
                        free(mem, HostPhysAddr::new(e & SPPT_ADDR_MASK), level - 1);
                    }
                }
            }
            mem.free_frame(t);
        }
        free(mem, self.root, 3);
    }
}
