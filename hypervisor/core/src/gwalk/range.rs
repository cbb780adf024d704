//! Whole-range translation for ROE_MPROTECT (pages) and ROE_MPROTECT_CHUNK (bytes): every byte
//! of the virtual range is translated, or the call fails and returns nothing (the caller then
//! changes nothing, which is what ROE's atomicity needs).

use alloc::vec::Vec;

use super::{GuestMemRead, GuestWalker, WalkError};
use crate::addr::{GpaRange, GuestVirtAddr, PAGE_SIZE};

/// At most this many pieces per range walk ([`WalkError::TooManyPieces`] beyond). A guest can
/// map one page at every virtual page of a huge range with a handful of tables; without a bound
/// one hypercall could keep the hypervisor busy for hours and exhaust its heap. Physically
/// contiguous mappings merge into one piece, so a kernel image is a few pieces at most.
pub const MAX_RANGE_PIECES: usize = 8192;

/// A run of the virtual range that maps to physically contiguous guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangePiece {
    /// First virtual address of the run.
    pub gva: GuestVirtAddr,
    /// The guest-physical bytes it maps to (same length).
    pub gpa: GpaRange,
}

impl RangePiece {
    /// Length in bytes (never 0).
    pub const fn len(&self) -> u64 {
        self.gpa.len()
    }
    /// Never true; present for API completeness.
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// Translate the `len` bytes starting at `gva`.
///
/// Returns the runs in virtual-address order; consecutive leaf mappings that are also
/// physically contiguous are merged into one run. A run never straddles a hole: every byte of
/// every run is guest RAM (checked with [`GuestMemRead::contains_ram`]).
///
/// Errors (and then nothing is returned): `EmptyRange` for `len == 0`; `RangeWraps` when the last
/// byte `gva + len - 1` does not fit in 64 bits (the range may end exactly at the top of the
/// address space); the first translation error of any page; `NotGuestRam` when a page maps
/// outside guest RAM; `TooManyPieces` beyond [`MAX_RANGE_PIECES`]; `OutOfMemory` when the result
/// list cannot grow.
pub fn translate_range<W, M>(
    walker: &W,
    mem: &M,
    gva: GuestVirtAddr,
    len: u64,
) -> Result<Vec<RangePiece>, WalkError>
where
    W: GuestWalker + ?Sized,
    M: GuestMemRead + ?Sized,
{
    let len_m1 = len.checked_sub(1).ok_or(WalkError::EmptyRange)?;
    let last = gva
        .as_u64()
        .checked_add(len_m1)
        .ok_or(WalkError::RangeWraps)?;
    let mut out: Vec<RangePiece> = Vec::new();
    let mut cur = gva.as_u64();
    loop {
        let here = GuestVirtAddr::new(cur);
        // One walk per leaf; a walker may cover several leaves of one last-level table at once
        // (GuestWalker::translate_span). Bytes from `cur` on, minus one.
        let (t, take_m1) = walker.translate_span(mem, here, last)?;
        let take_m1 = take_m1.min(last.saturating_sub(cur));
        let take = take_m1.checked_add(1).ok_or(WalkError::RangeWraps)?;
        let gpa = GpaRange::new(t.gpa, take).ok_or(WalkError::RangeWraps)?;
        if !mem.contains_ram(gpa) {
            return Err(WalkError::NotGuestRam {
                gva: here,
                gpa: t.gpa,
            });
        }
        let merged = match out.last_mut() {
            Some(prev) if prev.gpa.end() == gpa.start() => {
                match GpaRange::from_bounds(prev.gpa.start(), gpa.end()) {
                    Some(r) => {
                        prev.gpa = r;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !merged {
            if out.len() >= MAX_RANGE_PIECES {
                return Err(WalkError::TooManyPieces);
            }
            out.try_reserve(1).map_err(|_| WalkError::OutOfMemory)?;
            out.push(RangePiece { gva: here, gpa });
        }
        let end_m1 = cur.checked_add(take_m1).ok_or(WalkError::RangeWraps)?;
        if end_m1 >= last {
            return Ok(out);
        }
        cur = end_m1.checked_add(1).ok_or(WalkError::RangeWraps)?;
    }
}

/// Translate `npages` whole 4 KiB pages starting at the page-aligned `gva` (ROE_MPROTECT).
///
/// Errors: `Unaligned` when `gva` is not 4 KiB aligned, `EmptyRange` for 0 pages, `RangeWraps`
/// when `npages * 4096` overflows, then as [`translate_range`].
pub fn translate_pages<W, M>(
    walker: &W,
    mem: &M,
    gva: GuestVirtAddr,
    npages: u64,
) -> Result<Vec<RangePiece>, WalkError>
where
    W: GuestWalker + ?Sized,
    M: GuestMemRead + ?Sized,
{
    if !gva.is_aligned(PAGE_SIZE) {
        return Err(WalkError::Unaligned { gva });
    }
    if npages == 0 {
        return Err(WalkError::EmptyRange);
    }
    let len = npages.checked_mul(PAGE_SIZE).ok_or(WalkError::RangeWraps)?;
    translate_range(walker, mem, gva, len)
}
