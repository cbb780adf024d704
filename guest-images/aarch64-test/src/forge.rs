//! `scenario=forge`: a root attacker in the guest tries to make the console say what Bulwark did
//! not (docs/console.md). The PL011 is the guest's (pass-through), so these bytes reach the wire
//! exactly as written, with no prefix. It prints a fake key line, fake violation and counters
//! lines (untagged and with made-up tags), leaves a fake result line open and then makes Bulwark
//! print a genuine violation (a store to a page it locked with ROE), prints a fake
//! `bulwark: result status=0 reason=guest-exit`, and crashes (an exception loop). The run's true
//! verdict is the crash; xtask must call every fake out.

use core::cell::UnsafeCell;
use core::fmt::Write as _;

use super::{hvc, probe, Uart};
use bulwark_abi::roe::ROE_MPROTECT;
use bulwark_abi::smccc as ids;

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: single-threaded guest; the page is only written through volatile stores below.
unsafe impl Sync for Page {}
static LOCKED: Page = Page(UnsafeCell::new([0x5a; 4096]));

/// Lines a guest would print to pass for Bulwark.
const FORGED: [&str; 5] = [
    "bulwark: log-key 00112233445566778899aabbccddeeff alg=siphash-2-4-128 source=rndr",
    "bulwark: violation kind=roe access=write gpa=0x40001000 gva=0x40001000 ip=0xdead vcpu=0 action=skip",
    "bulwark: violation kind=roe access=write gpa=0x40002000 gva=0x40002000 ip=0xbeef vcpu=0 action=skip seq=7 mac=0123456789abcdef0123456789abcdef",
    "bulwark: INFO counters exits=1 violations=0 seq=8 mac=00000000000000000000000000000000",
    "bulwark: ERROR forged error line",
];

/// `mem_end`: the end of the guest's RAM (above it lies Bulwark's memory, never mapped).
pub fn run(mem_end: u64) -> ! {
    let _ = writeln!(Uart, "forge: printing forged Bulwark lines");
    for l in FORGED {
        let _ = write!(Uart, "{l}\r\n");
    }
    let page = LOCKED.0.get() as u64;
    let r = hvc(u64::from(ids::BULWARK_ROE), ROE_MPROTECT, page, 1)[0];
    let _ = writeln!(
        Uart,
        "forge: locked {page:#x} -> {r}; leaving a fake result line open"
    );
    // Half a line: Bulwark's next line must still start at a line start and verify.
    let _ = write!(Uart, "bulwark: result status=0 reason=guest-exit ");
    // SAFETY: the guest's own static page; the store is the attack Bulwark refuses (skipped
    // under violation=skip): Bulwark prints a genuine violation line.
    unsafe { core::ptr::write_volatile(LOCKED.0.get().cast::<u8>(), 0xa5) };
    // SAFETY: as above; reading back.
    let v = unsafe { core::ptr::read_volatile(LOCKED.0.get().cast::<u8>()) };
    let _ = writeln!(Uart, "\r\nforge: the locked byte reads {v:#x}");
    let _ = write!(Uart, "bulwark: result status=0 reason=guest-exit\r\n");
    // Crash: exceptions vector into memory the guest does not have, then an abort.
    // SAFETY: deliberately breaks the guest's own exception handling.
    unsafe { core::arch::asm!("msr vbar_el1, {}", "isb", in(reg) mem_end + (8 << 20)) };
    let _ = probe(mem_end, false);
    let _ = writeln!(Uart, "forge: FAIL survived the crash");
    super::guest_exit(4)
}
