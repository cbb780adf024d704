//! `scenario=flood`: a guest that tries to turn Bulwark's violation log into a weapon. It locks a
//! page (ROE_MPROTECT), then stores to it from [`FLOOD_IPS`] distinct instruction addresses (a
//! generated sled of `mov byte ptr [rdi], al`), [`FLOOD_ROUNDS`] times over. The per-address
//! rate limiter has 32 slots, so without a global bound every one of these stores would print a
//! console line; with it, at most the global bound does (docs/cmdline.md, `globalratelimit`).
//! The guest proves the page unchanged; xtask counts the lines and checks the end-of-run
//! counters line for the exact total.

use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT};

use super::{exit, vmcall, Com1};
#[allow(unused_imports)]
use core::fmt::Write as _;

/// Distinct store instruction addresses in the sled.
pub const FLOOD_IPS: u64 = 200;
/// Times the sled runs.
pub const FLOOD_ROUNDS: u64 = 10;
const FILL: u8 = 0x3c;

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut FLOOD_PAGE: Page = Page([FILL; 4096]);

core::arch::global_asm!(
    ".section .text",
    ".balign 16",
    ".global flood_sled",
    "flood_sled:",
    ".rept 200",
    "mov byte ptr [rdi], al",
    ".endr",
    "ret",
);

extern "C" {
    fn flood_sled();
}

pub fn run() -> ! {
    let page = core::ptr::addr_of!(FLOOD_PAGE) as u64;
    let r = vmcall(KVM_HC_ROE, ROE_MPROTECT, page, 1) as i64;
    let mut failed = 0u32;
    // Success returns the number of pages locked.
    if r != 1 {
        say!("FAIL flood-lock: ROE_MPROTECT({page:#x}, 1) returned {r}");
        exit(1);
    }
    say!(
        "flood: storing to locked page {page:#x} from {FLOOD_IPS} instruction addresses, {FLOOD_ROUNDS} rounds"
    );
    for round in 0..FLOOD_ROUNDS {
        let dst = page + (round * 97) % 4096;
        // SAFETY: the sled only stores AL to [RDI], inside our own (locked) page; Bulwark skips
        // each store (violation=skip). It clobbers nothing else.
        unsafe {
            core::arch::asm!(
                "call {sled}",
                sled = sym flood_sled,
                in("rdi") dst,
                in("al") (round as u8) ^ 0xa5,
            );
        }
    }
    // SAFETY: our own static; read only.
    let bytes = unsafe { &(*core::ptr::addr_of!(FLOOD_PAGE)).0 };
    match bytes.iter().position(|&b| b != FILL) {
        None => say!(
            "PASS flood-page-unchanged: {} stores from {FLOOD_IPS} ips",
            FLOOD_IPS * FLOOD_ROUNDS
        ),
        Some(o) => {
            failed += 1;
            say!("FAIL flood-page-unchanged: byte {o:#x} is {:#x}", bytes[o]);
        }
    }
    say!("flood: {failed} check(s) failed");
    exit(failed)
}
