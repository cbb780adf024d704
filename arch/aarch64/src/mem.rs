//! Bulwark's own memory on arm64: the heap and the page-table frame pool, both regions the linker
//! script (linker/aarch64.ld) reserves inside Bulwark's image footprint, which is never guest RAM.

use bulwark_core::addr::{HostPhysAddr, PAGE_SIZE};
use bulwark_core::physmem::{OutOfFrames, PhysMem};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

extern "C" {
    static __heap_start: u8;
    static __heap_end: u8;
    static __ptpool_start: u8;
    static __ptpool_end: u8;
    static __dt_in_start: u8;
    static __dt_in_end: u8;
    static __dt_out_start: u8;
    static __dt_out_end: u8;
    static __image_start: u8;
    static __image_end: u8;
}

fn sym(s: &u8) -> usize {
    s as *const u8 as usize
}

/// `[start, end)` of a linker-reserved region.
pub fn region(which: Region) -> (usize, usize) {
    // SAFETY: only the addresses of linker-script symbols are taken, never their contents.
    unsafe {
        match which {
            Region::Image => (sym(&__image_start), sym(&__image_end)),
            Region::Heap => (sym(&__heap_start), sym(&__heap_end)),
            Region::PtPool => (sym(&__ptpool_start), sym(&__ptpool_end)),
            Region::DtIn => (sym(&__dt_in_start), sym(&__dt_in_end)),
            Region::DtOut => (sym(&__dt_out_start), sym(&__dt_out_end)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Region {
    /// Bulwark's whole image footprint (code, data, BSS, stack, heap, pools).
    Image,
    Heap,
    PtPool,
    DtIn,
    DtOut,
}

/// Hand the heap region to the allocator. Called once on the boot CPU before anything allocates.
pub fn init_heap() {
    let (s, e) = region(Region::Heap);
    // SAFETY: the linker script reserves `[s, e)` for the heap alone; identity-mapped normal
    // memory; called once before any allocation.
    unsafe { HEAP.lock().init(s as *mut u8, e - s) }
}

/// Page-table frames from the reserved pool: a bump pointer plus a free list threaded through
/// freed frames. Frames are zeroed when handed out.
pub struct FramePool {
    next: usize,
    end: usize,
    free: Option<usize>,
    pub in_use: usize,
}

impl Default for FramePool {
    fn default() -> Self {
        Self::new()
    }
}

impl FramePool {
    /// The pool over the linker-reserved region. Create it once (it owns the region).
    pub fn new() -> Self {
        let (s, e) = region(Region::PtPool);
        Self {
            next: s,
            end: e,
            free: None,
            in_use: 0,
        }
    }
}

impl FramePool {
    /// A frame of the pool, content as it was left (not zeroed).
    fn take(&mut self) -> Result<usize, OutOfFrames> {
        let f = if let Some(f) = self.free {
            // SAFETY: `f` is a frame of this pool that was freed; its first word links the list.
            self.free = match unsafe { core::ptr::read_volatile(f as *const usize) } {
                0 => None,
                n => Some(n),
            };
            f
        } else {
            if self
                .next
                .checked_add(PAGE_SIZE as usize)
                .is_none_or(|e| e > self.end)
            {
                return Err(OutOfFrames);
            }
            let f = self.next;
            self.next += PAGE_SIZE as usize;
            f
        };
        self.in_use += 1;
        Ok(f)
    }
}

impl PhysMem for FramePool {
    fn alloc_frame(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        let f = self.take()?;
        // SAFETY: `f` is a 4 KiB frame of the reserved pool that nobody else uses.
        unsafe { core::ptr::write_bytes(f as *mut u8, 0, PAGE_SIZE as usize) };
        Ok(HostPhysAddr::new(f as u64))
    }

    /// Not zeroed: the engine overwrites all 512 words before it links the frame.
    fn alloc_frame_for_overwrite(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        Ok(HostPhysAddr::new(self.take()? as u64))
    }

    fn fill_stride(&mut self, frame: HostPhysAddr, first: u64, stride: u64) {
        let f = frame.as_u64() as usize;
        let (s, _) = region(Region::PtPool);
        if f < s || f >= self.next || !f.is_multiple_of(PAGE_SIZE as usize) {
            log::error!("page-table pool: fill of foreign frame {f:#x} ignored");
            return;
        }
        // SAFETY: `f` is a 4 KiB-aligned frame of this pool (checked above) that the engine
        // owns and has not linked into any table yet: nothing else reads or writes it.
        let words = unsafe { core::slice::from_raw_parts_mut(f as *mut u64, 512) };
        // Four words per iteration (two `stp`s).
        let (s1, s2, s3, s4) = (
            stride,
            stride.wrapping_mul(2),
            stride.wrapping_mul(3),
            stride.wrapping_mul(4),
        );
        let mut v = first;
        for quad in words.chunks_exact_mut(4) {
            if let [a, b, c, d] = quad {
                *a = v;
                *b = v.wrapping_add(s1);
                *c = v.wrapping_add(s2);
                *d = v.wrapping_add(s3);
            }
            v = v.wrapping_add(s4);
        }
        // The frame is linked by a later volatile store: keep these stores before it.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        let f = frame.as_u64() as usize;
        let (s, _) = region(Region::PtPool);
        if f < s || f >= self.next || !f.is_multiple_of(PAGE_SIZE as usize) {
            log::error!("page-table pool: free of foreign frame {f:#x} ignored");
            return;
        }
        // SAFETY: `f` is a frame of this pool being returned; its first word becomes the link.
        unsafe { core::ptr::write_volatile(f as *mut usize, self.free.unwrap_or(0)) };
        self.free = Some(f);
        self.in_use = self.in_use.saturating_sub(1);
    }

    fn read_u64(&self, addr: HostPhysAddr) -> u64 {
        // SAFETY: the engine only reads inside frames it got from `alloc_frame` (identity-mapped,
        // 8-byte aligned per the trait contract).
        unsafe { core::ptr::read_volatile(addr.as_u64() as *const u64) }
    }

    fn write_u64(&mut self, addr: HostPhysAddr, value: u64) {
        // SAFETY: as in `read_u64`; a single aligned 64-bit store is single-copy atomic.
        unsafe { core::ptr::write_volatile(addr.as_u64() as *mut u64, value) }
    }
}
