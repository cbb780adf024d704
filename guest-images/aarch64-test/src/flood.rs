//! `scenario=flood`: a guest that tries to turn Bulwark's violation log into a weapon. It locks a
//! page (ROE_MPROTECT), then stores to it from [`FLOOD_IPS`] distinct instruction addresses (a
//! generated sled of `strb w1, [x0]`), [`FLOOD_ROUNDS`] times over. The per-address rate limiter
//! has 32 slots, so without a global bound every one of these stores would print a console line;
//! with it, at most the global bound does (docs/cmdline.md, `globalratelimit`). The guest proves
//! the page unchanged; xtask counts the lines and checks the counters line for the exact total.

use bulwark_abi::roe::ROE_MPROTECT;

use super::{guest_exit, hvc, probe, roe, Uart};
use bulwark_abi::smccc::PSCI_VERSION;
use core::fmt::Write;

/// Distinct store instruction addresses in the sled.
pub const FLOOD_IPS: u64 = 200;
/// Times the sled runs.
pub const FLOOD_ROUNDS: u64 = 10;
const FILL: u8 = 0x3c;
/// Reads of an IPA without memory (where Bulwark's memory would be in a 1:1 map).
pub const FLOOD_ABORTS: u64 = 100;
const NO_MEMORY_IPA: u64 = 0x5e00_0000;

#[repr(C, align(4096))]
struct Page(core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: one CPU; the page is only written by the sled (whose stores Bulwark skips) and read here.
unsafe impl Sync for Page {}
static FLOOD_PAGE: Page = Page(core::cell::UnsafeCell::new([FILL; 4096]));

core::arch::global_asm!(
    ".section .text",
    ".balign 16",
    ".global flood_sled",
    "flood_sled:",
    ".rept 200",
    "strb w1, [x0]",
    ".endr",
    "ret",
);

pub fn run() -> ! {
    let page = FLOOD_PAGE.0.get() as u64;
    let r = roe(ROE_MPROTECT, page, 1);
    // Success returns the number of pages locked.
    if r != 1 {
        say!(
            "FAIL flood-lock: ROE_MPROTECT({page:#x}, 1) returned {:#x}",
            r
        );
        guest_exit(1);
    }
    say!(
        "flood: storing to locked page {page:#x} from {FLOOD_IPS} instruction addresses, {FLOOD_ROUNDS} rounds"
    );
    for round in 0..FLOOD_ROUNDS {
        let dst = page + (round * 97) % 4096;
        // SAFETY: the sled only stores w1 to [x0], inside our own (locked) page; Bulwark skips
        // each store (violation=skip). It returns through x30.
        unsafe {
            core::arch::asm!(
                "bl flood_sled",
                in("x0") dst,
                in("x1") (round ^ 0xa5),
                out("x30") _,
            );
        }
    }
    let mut failed = 0u32;
    let bad = (0..4096u64).find(|&o| {
        // SAFETY: inside our own page.
        unsafe { core::ptr::read_volatile((page + o) as *const u8) != FILL }
    });
    match bad {
        None => say!(
            "PASS flood-page-unchanged: {} stores from {FLOOD_IPS} ips",
            FLOOD_IPS * FLOOD_ROUNDS
        ),
        Some(o) => {
            failed += 1;
            say!("FAIL flood-page-unchanged: byte {o:#x} changed");
        }
    }
    // Stage-2 aborts outside the map: each one injects an external abort; only the first few
    // print Bulwark's WARN line (the rest are counted: stage2_aborts= in the counters line).
    let aborted = (0..FLOOD_ABORTS)
        .filter(|i| {
            // Another exit between the aborts: 32 injected aborts in a row with nothing in
            // between is Bulwark's exception-loop rule (docs/aarch64.md).
            hvc(u64::from(PSCI_VERSION), 0, 0, 0);
            probe(NO_MEMORY_IPA + (i % 16) * 4096, false).is_err()
        })
        .count() as u64;
    if aborted == FLOOD_ABORTS {
        say!("PASS flood-aborts: {FLOOD_ABORTS} reads without memory aborted");
    } else {
        failed += 1;
        say!("FAIL flood-aborts: {aborted} of {FLOOD_ABORTS} reads aborted");
    }
    say!("flood: {failed} check(s) failed");
    guest_exit(failed)
}
