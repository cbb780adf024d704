//! `scenario=highmem` (QEMU `-m 5G`): guest RAM above 4 GiB is the guest's, and locks there hold.
//! The guest's identity map covers 1..256 GiB with 1 GiB Normal blocks, so the addresses below are
//! plain virtual = intermediate-physical addresses.

use core::fmt::Write as _;

use super::{guest_exit, roe, system_off, Checks, Uart};
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK};

const FOUR_GIB: u64 = 1 << 32;
/// The page locked whole, and the page with a locked chunk: both above 4 GiB.
pub const LOCKED_PAGE: u64 = FOUR_GIB + 0x10_0000;
pub const CHUNK_PAGE: u64 = FOUR_GIB + 0x10_1000;

fn rd(a: u64) -> u64 {
    // SAFETY: an aligned address in guest RAM above 4 GiB (checked against the device-tree
    // memory by the caller), identity-mapped as Normal memory.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

fn wr(a: u64, v: u64) {
    // SAFETY: as `rd`; a store to a locked address is skipped by Bulwark (policy skip).
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

pub fn run(mem: Option<(u64, u64)>) -> ! {
    let mut c = Checks { failed: 0 };
    let (base, size) = mem.unwrap_or((0, 0));
    let end = base.saturating_add(size);
    c.check(
        end >= CHUNK_PAGE + 4096,
        format_args!("highmem: device-tree memory {base:#x}..{end:#x} reaches above 4 GiB"),
    );
    if c.failed != 0 {
        say!("testguest: highmem: run QEMU with -m 5G");
        guest_exit(1)
    }
    // The whole of memory above 4 GiB is usable: first page, a middle one, the last word.
    for a in [FOUR_GIB, FOUR_GIB + (end - FOUR_GIB) / 2, end - 8] {
        let a = a & !7;
        wr(a, a ^ 0x5a5a);
        c.check(
            rd(a) == a ^ 0x5a5a,
            format_args!("highmem: {a:#x} writable and reads back"),
        );
    }
    // A whole page locked above 4 GiB.
    for i in 0..512 {
        wr(LOCKED_PAGE + 8 * i, 0x1111_0000 + i);
    }
    let r = roe(ROE_MPROTECT, LOCKED_PAGE, 1);
    c.check(
        r == 1,
        format_args!("highmem: ROE_MPROTECT {LOCKED_PAGE:#x} -> {r:#x} (1)"),
    );
    wr(LOCKED_PAGE + 0x100, 0xbad);
    let v = rd(LOCKED_PAGE + 0x100);
    c.check(
        v == 0x1111_0000 + 0x20,
        format_args!("highmem: write to the locked page skipped ({v:#x})"),
    );
    // A chunk locked above 4 GiB: its bytes hold, the rest of the page stays writable.
    wr(CHUNK_PAGE + 0x80, 0x2222);
    let r = roe(ROE_MPROTECT_CHUNK, CHUNK_PAGE + 0x80, 8);
    c.check(
        r == 8,
        format_args!(
            "highmem: ROE_MPROTECT_CHUNK {:#x}+8 -> {r:#x} (8 bytes)",
            CHUNK_PAGE + 0x80
        ),
    );
    wr(CHUNK_PAGE + 0x80, 0xbad);
    wr(CHUNK_PAGE + 0x88, 0x3333);
    let (locked, free) = (rd(CHUNK_PAGE + 0x80), rd(CHUNK_PAGE + 0x88));
    c.check(
        locked == 0x2222 && free == 0x3333,
        format_args!(
            "highmem: chunk bytes unchanged ({locked:#x}), the next word written ({free:#x})"
        ),
    );
    if c.failed != 0 {
        say!("testguest: highmem: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: highmem: all checks passed");
    system_off()
}
