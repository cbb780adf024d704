//! The small physical-memory trait every page-table engine goes through.
//!
//! On bare metal Bulwark identity-maps its own memory, so the back end's implementation turns a
//! [`HostPhysAddr`] into a pointer. On the host, tests use [`FakePhysMem`], a sparse map of 4 KiB
//! frames with an optional frame limit (to exercise allocation failures).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::{HostPhysAddr, PAGE_SIZE};

/// No page-table frame could be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfFrames;

/// Access to host-physical memory for page-table pages.
pub trait PhysMem {
    /// A zero-filled, 4 KiB-aligned frame that Bulwark owns and the guest cannot reach.
    fn alloc_frame(&mut self) -> Result<HostPhysAddr, OutOfFrames>;
    /// Give back a frame obtained from [`PhysMem::alloc_frame`].
    fn free_frame(&mut self, frame: HostPhysAddr);
    /// Read the 8-byte-aligned 64-bit word at `addr` (inside a frame from `alloc_frame`).
    fn read_u64(&self, addr: HostPhysAddr) -> u64;
    /// Write the 8-byte-aligned 64-bit word at `addr` (inside a frame from `alloc_frame`), as one
    /// single-copy-atomic store (hardware may walk the table concurrently).
    fn write_u64(&mut self, addr: HostPhysAddr, value: u64);

    /// A 4 KiB-aligned frame like [`PhysMem::alloc_frame`] whose content is unspecified: the
    /// caller writes all 512 words (with [`PhysMem::fill_stride`]) before any hardware can see
    /// the frame. Saves zeroing a frame that is fully overwritten anyway (a split table). The
    /// default zeroes it.
    fn alloc_frame_for_overwrite(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        self.alloc_frame()
    }

    /// Write word `i` of `frame` (a frame from this allocator, not yet reachable by hardware)
    /// as `first + i * stride` for every `i` in `0..512`, wrapping: how a split large leaf's
    /// children are laid out. The default writes word by word through
    /// [`PhysMem::write_u64`]; back ends with direct access write through a slice.
    fn fill_stride(&mut self, frame: HostPhysAddr, first: u64, stride: u64) {
        let mut v = first;
        for i in 0..(PAGE_SIZE / 8) {
            self.write_u64(HostPhysAddr::new(frame.as_u64() + i * 8), v);
            v = v.wrapping_add(stride);
        }
    }
}

/// What [`FakePhysMem::alloc_frame_for_overwrite`] fills a frame with: a valid 4 KiB leaf in
/// both formats (EPT RWX WB, stage 2 page RW) pointing at a recognisable address.
pub const GARBAGE: u64 = 0x0000_0dea_dbee_f000 | 0x7ff;

/// Host-side fake physical memory: frames live in a map, addresses start at `base`.
#[derive(Debug)]
pub struct FakePhysMem {
    frames: BTreeMap<u64, Vec<u64>>,
    next: u64,
    free: Vec<u64>,
    limit: Option<usize>,
    /// Accesses to addresses that are not inside an allocated frame (must stay 0).
    pub stray_accesses: u64,
    /// Frees of frames that were not allocated (must stay 0).
    pub bad_frees: u64,
}

impl Default for FakePhysMem {
    fn default() -> Self {
        Self::new()
    }
}

impl FakePhysMem {
    /// Frames are handed out from 0x1_0000_0000 upwards; no limit.
    pub fn new() -> Self {
        Self {
            frames: BTreeMap::new(),
            next: 0x1_0000_0000,
            free: Vec::new(),
            limit: None,
            stray_accesses: 0,
            bad_frees: 0,
        }
    }

    /// At most `limit` frames may be allocated at once.
    pub fn with_limit(limit: usize) -> Self {
        let mut m = Self::new();
        m.limit = Some(limit);
        m
    }

    /// Change the frame limit (None: unlimited).
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Frames currently allocated.
    pub fn allocated(&self) -> usize {
        self.frames.len()
    }

    fn word(&self, addr: HostPhysAddr) -> Option<(u64, usize)> {
        let a = addr.as_u64();
        if !a.is_multiple_of(8) {
            return None;
        }
        let frame = a & !(PAGE_SIZE - 1);
        let idx = usize::try_from((a & (PAGE_SIZE - 1)) / 8).ok()?;
        self.frames.contains_key(&frame).then_some((frame, idx))
    }
}

impl PhysMem for FakePhysMem {
    fn alloc_frame(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        if let Some(limit) = self.limit {
            if self.frames.len() >= limit {
                return Err(OutOfFrames);
            }
        }
        let frame = match self.free.pop() {
            Some(f) => f,
            None => {
                let f = self.next;
                self.next = self.next.checked_add(PAGE_SIZE).ok_or(OutOfFrames)?;
                f
            }
        };
        self.frames.insert(frame, alloc::vec![0u64; 512]);
        Ok(HostPhysAddr::new(frame))
    }

    /// Filled with a valid-looking garbage pattern (not zeroed), so a test sees any word the
    /// engine forgot to write.
    fn alloc_frame_for_overwrite(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        let f = self.alloc_frame()?;
        if let Some(w) = self.frames.get_mut(&f.as_u64()) {
            w.fill(GARBAGE);
        }
        Ok(f)
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        if self.frames.remove(&frame.as_u64()).is_some() {
            self.free.push(frame.as_u64());
        } else {
            self.bad_frees += 1;
        }
    }

    fn read_u64(&self, addr: HostPhysAddr) -> u64 {
        match self.word(addr) {
            Some((f, i)) => self
                .frames
                .get(&f)
                .and_then(|w| w.get(i))
                .copied()
                .unwrap_or(0),
            None => 0,
        }
    }

    fn write_u64(&mut self, addr: HostPhysAddr, value: u64) {
        match self.word(addr) {
            Some((f, i)) => {
                if let Some(w) = self.frames.get_mut(&f).and_then(|w| w.get_mut(i)) {
                    *w = value;
                }
            }
            None => self.stray_accesses += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_zeroed_aligned_and_limited() {
        let mut m = FakePhysMem::with_limit(2);
        let a = m.alloc_frame().unwrap();
        assert!(a.is_aligned(PAGE_SIZE));
        m.write_u64(a, 5);
        assert_eq!(m.read_u64(a), 5);
        let _b = m.alloc_frame().unwrap();
        assert_eq!(m.alloc_frame(), Err(OutOfFrames));
        m.free_frame(a);
        let c = m.alloc_frame().unwrap();
        assert_eq!(m.read_u64(c), 0, "reused frame must be zeroed");
        m.free_frame(c);
        let d = m.alloc_frame_for_overwrite().unwrap();
        assert_eq!(m.read_u64(d), GARBAGE);
        m.fill_stride(d, 3, 0x1000);
        assert_eq!(
            m.read_u64(HostPhysAddr::new(d.as_u64() + 8 * 511)),
            3 + 511 * 0x1000
        );
        m.free_frame(d);
        let c = m.alloc_frame().unwrap();
        assert_eq!(m.read_u64(c), 0, "a garbage frame is zeroed when reused");
        m.write_u64(HostPhysAddr::new(8), 1);
        assert_eq!(m.stray_accesses, 1);
        m.free_frame(HostPhysAddr::new(0x1000));
        assert_eq!(m.bad_frees, 1);
    }
}
