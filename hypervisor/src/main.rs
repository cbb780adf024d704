//! The Bulwark binary: glue between boot, the arch back end and the core.
//!
//! Each arch module (`x86_64/`, `aarch64/`) provides:
//! * its entry (assembly, reaching a Rust `fn` that calls [`logger::init`] once the console is up),
//! * `console_write(&[u8])`: bytes to the serial console, `\n` as `\r\n`, waiting for the UART
//!   (panic and fatal paths only), usable from any context,
//! * `console_write_raw(&[u8])` (bytes as they are, waiting) and `console_try_write(&[u8]) -> usize`
//!   (what the transmitter takes now, never waiting): how the logger's ring drains,
//! * `CONSOLE_SHARED`: the guest writes the same UART (arm64), so a started line is finished
//!   before the guest runs again,
//! * `console_claim()` / `console_release(token)`: around each Bulwark line, take the UART back
//!   from settings a guest that owns it may have made (arm64 PL011 loopback, transmitter off),
//! * `log_key() -> ([u8; 16], &str)`: the per-boot key of the console lines' MAC and the word
//!   naming its entropy source (docs/console.md),
//! * `stop_machine(status: u32) -> !`: ends the run (emulator exit where possible, else parks the CPU).
#![no_std]
#![no_main]

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

mod logger;

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};

/// Print the final verdict line and end the run. Every path that ends a run goes through here.
pub fn finish(status: u32, why: &str) -> ! {
    // Everything held in the console ring goes out before the power-off (docs/console.md).
    logger::write_final(format_args!("result status={status} reason={why}"));
    arch::stop_machine(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Never re-enter the logger's lock here: a panic may happen while it is held.
    logger::write_line_unlocked(format_args!("ERROR panic: {}", info));
    finish(STATUS_BULWARK_FAILURE, reason::PANIC)
}
