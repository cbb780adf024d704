//! Bulwark's physical memory layout (see linker/x86_64.ld and docs/x86_64.md).
//! Bulwark runs identity mapped: a host-physical address is usable as a pointer.

use bulwark_core::addr::HostPhysAddr;

/// Start of the fixed region that holds all of Bulwark (image, stacks, heap, tables, VMCS).
pub const REGION_START: u64 = 0x0400_0000;
/// End (exclusive) of that region. The guest never gets any of `[REGION_START, REGION_END)`.
pub const REGION_END: u64 = 0x0600_0000;

extern "C" {
    static __bulwark_start: u8;
    static __bulwark_end: u8;
    static __heap_start: u8;
    static __heap_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// `[start, end)` of the loaded image including .bss (and the heap inside it).
pub fn image() -> (u64, u64) {
    // SAFETY: linker-script symbols; only their addresses are taken, never their contents.
    unsafe { (sym(&__bulwark_start), sym(&__bulwark_end)) }
}

/// `[start, end)` of the heap.
pub fn heap() -> (u64, u64) {
    // SAFETY: as above, address only.
    unsafe { (sym(&__heap_start), sym(&__heap_end)) }
}

/// Whether a host-physical range overlaps Bulwark's region.
pub fn overlaps_bulwark(start: u64, end: u64) -> bool {
    start < REGION_END && end > REGION_START
}

/// Convert a pointer to Bulwark memory into its host-physical address (identity map).
pub fn hpa_of<T>(p: *const T) -> HostPhysAddr {
    HostPhysAddr::new(p as u64)
}
