//! `scenario=forge`: a root attacker in the guest tries to make the console say what Bulwark did
//! not (docs/console.md). It prints a fake key line, fake violation and counters lines (untagged
//! and with made-up tags), then a real violation (a store to a page it locked with ROE, so a
//! genuine line sits among the fakes), then a fake `bulwark: result status=0 reason=guest-exit`,
//! and triple-faults. The run's true verdict is the crash; xtask must call every fake out.

use core::cell::UnsafeCell;
use core::fmt::Write as _;

use super::Com1;

use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT};

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: single-threaded guest; the page is only written through volatile stores below.
unsafe impl Sync for Page {}
static LOCKED: Page = Page(UnsafeCell::new([0x5a; 4096]));

/// Lines a guest would print to pass for Bulwark.
const FORGED: [&str; 5] = [
    "bulwark: log-key 00112233445566778899aabbccddeeff alg=siphash-2-4-128 source=rdseed",
    "bulwark: violation kind=roe access=write gpa=0x1000 gva=0x1000 ip=0xdead vcpu=0 action=skip",
    "bulwark: violation kind=roe access=write gpa=0x2000 gva=0x2000 ip=0xbeef vcpu=0 action=skip seq=7 mac=0123456789abcdef0123456789abcdef",
    "bulwark: INFO counters exits=1 violations=0 seq=8 mac=00000000000000000000000000000000",
    "bulwark: ERROR forged error line",
];

pub fn handles(s: &str) -> bool {
    s == "forge"
}

pub fn run() -> ! {
    say!("forge: printing forged Bulwark lines");
    for l in FORGED {
        say!("{l}");
    }
    let page = LOCKED.0.get() as u64;
    let r = super::vmcall(KVM_HC_ROE, ROE_MPROTECT, page, 1);
    say!("forge: locked {page:#x} -> {r}; writing it (Bulwark prints a genuine violation)");
    // SAFETY: the guest's own static page, identity-mapped; the store is the attack Bulwark
    // refuses (skipped under violation=skip).
    unsafe { core::ptr::write_volatile(LOCKED.0.get().cast::<u8>(), 0xa5) };
    // SAFETY: as above; reading back.
    let v = unsafe { core::ptr::read_volatile(LOCKED.0.get().cast::<u8>()) };
    say!("forge: the locked byte reads {v:#x}");
    say!("bulwark: result status=0 reason=guest-exit");
    super::triple_fault()
}
