//! Bulwark's heap: a fixed region inside Bulwark's own memory (`__heap_start..__heap_end` from
//! the linker script), so it is never guest RAM.

use linked_list_allocator::LockedHeap;

// Host unit tests (`cargo test -p bulwark-x86_64`) use the host's allocator.
#[cfg_attr(not(test), global_allocator)]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hand the heap region to the allocator. Called once, before anything allocates.
pub fn init() {
    let (start, end) = crate::layout::heap();
    // SAFETY: the linker script reserves `[start, end)` for the heap alone (inside .bss, zeroed by
    // the loader, identity mapped); `init` runs once on the boot CPU before any allocation.
    unsafe {
        HEAP.lock().init(start as *mut u8, (end - start) as usize);
    }
}

/// (used, free) bytes.
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
