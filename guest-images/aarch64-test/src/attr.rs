//! `scenario=attr-skip|attr-inject|attr-halt` in the bootargs: boot-time per-page attributes
//! (Bulwark's `attr=`, issue 7) seen from the guest. docs/attributes.md describes the scenario.
//!
//! The pages are the guest's own, found by xtask in the guest ELF's symbol table (the guest runs
//! identity-mapped, so a symbol's address is its IPA):
//! * `attr_code_page` — a page of code (`movz x0, #0xc0de; ret`), given `r-x`;
//! * `ATTR_DATA` — a data page, given `rw-`;
//! * `ATTR_NONE` — a data page, given `---` (no access).
//!
//! The guest executes and reads the code page (works), writes it (the write must not land:
//! `skip` drops it and the guest continues; `inject` gives a synchronous external abort), writes
//! and reads the data page (works), writes an instruction sequence into the data page and
//! branches to it (injected instruction abort under every policy but `halt`), and reads, writes
//! and executes the no-access page. Under `halt` the first violation (the write to the code
//! page) must end the run. Aborts are taken by this module's own vector table, which resumes at
//! the label after the probing instruction.
//!
//! Lines: `testguest: ok   ...` / `testguest: FAIL ...`, then `attr: N check(s) failed`; the run
//! ends with GUEST_EXIT(number of failures).

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{guest_exit, Checks, Uart};

core::arch::global_asm!(
    r#"
    .section .text.attr_code, "ax"
    .balign 4096
    .global attr_code_page
attr_code_page:
    movz    x0, #0xc0de
    ret
    .balign 4096

    .section .text.attr_vectors, "ax"
    .balign 2048
attr_vectors:
    .rept 16
    .balign 128
    b       attr_vec_common
    .endr
attr_vec_common:
    stp     x0, x1, [sp, #-16]!
    adrp    x0, ATTR_EXC
    add     x0, x0, :lo12:ATTR_EXC
    ldr     x1, [x0]
    add     x1, x1, #1
    str     x1, [x0]
    mrs     x1, esr_el1
    str     x1, [x0, #8]
    mrs     x1, far_el1
    str     x1, [x0, #16]
    mrs     x1, elr_el1
    str     x1, [x0, #24]
    ldr     x1, [x0, #32]
    str     xzr, [x0, #32]
    cbnz    x1, 1f
    ldr     x1, =attr_unexpected
1:  msr     elr_el1, x1
    ldp     x0, x1, [sp], #16
    eret
    .ltorg
"#
);

extern "C" {
    static attr_code_page: u8;
    static attr_vectors: u8;
}

/// What the vector table records: count, ESR, FAR, ELR, and the resume address (consumed).
#[no_mangle]
static ATTR_EXC: [AtomicU64; 5] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u32; 1024]>);
// SAFETY: one CPU; the pages are only touched through the probes below.
unsafe impl Sync for Page {}

/// The `rw-` page.
#[no_mangle]
static ATTR_DATA: Page = Page(UnsafeCell::new([0x1111_1111; 1024]));
/// The `---` page.
#[no_mangle]
static ATTR_NONE: Page = Page(UnsafeCell::new([0x2222_2222; 1024]));

/// `movz x0, #0xc0de` (the code page's first instruction).
const MOVZ_C0DE: u32 = 0xd298_1bc0;
/// `movz x0, #0xbad; ret` (what the guest writes into its data page and tries to run).
const DATA_CODE: [u32; 2] = [0xd281_75a0, 0xd65f_03c0];

const EC_IABT_CUR: u64 = 0x21;
const EC_DABT_CUR: u64 = 0x25;
const FSC_SEA: u64 = 0x10;

#[no_mangle]
extern "C" fn attr_unexpected() -> ! {
    let esr = ATTR_EXC[1].load(Ordering::Relaxed);
    let far = ATTR_EXC[2].load(Ordering::Relaxed);
    let elr = ATTR_EXC[3].load(Ordering::Relaxed);
    say!("testguest: FAIL attr: unexpected exception esr {esr:#x} far {far:#x} elr {elr:#x}");
    guest_exit(0xfd)
}

/// The abort a probe took, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Abort {
    esr: u64,
    far: u64,
}

impl Abort {
    fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
    fn fsc(&self) -> u64 {
        self.esr & 0x3f
    }
    fn wnr(&self) -> bool {
        self.esr & (1 << 6) != 0
    }
}

fn taken(before: u64) -> Option<Abort> {
    ATTR_EXC[4].store(0, Ordering::SeqCst);
    (ATTR_EXC[0].load(Ordering::SeqCst) != before).then(|| Abort {
        esr: ATTR_EXC[1].load(Ordering::SeqCst),
        far: ATTR_EXC[2].load(Ordering::SeqCst),
    })
}

/// `blr` to `addr`; Ok(x0) when it ran, Err(abort) when the fetch aborted.
fn exec(addr: u64) -> Result<u64, Abort> {
    let before = ATTR_EXC[0].load(Ordering::SeqCst);
    let x0: u64;
    // SAFETY: calls code that only sets x0 and returns; when the fetch aborts, the vector table
    // resumes at label 1 (x30 is declared clobbered, the stack is untouched by BLR).
    unsafe {
        core::arch::asm!(
            "adr {t}, 1f",
            "str {t}, [{res}]",
            "blr {f}",
            "1:",
            t = out(reg) _,
            res = in(reg) ATTR_EXC[4].as_ptr(),
            f = in(reg) addr,
            inout("x0") 0u64 => x0,
            out("x30") _,
            options(nostack)
        );
    }
    match taken(before) {
        Some(a) => Err(a),
        None => Ok(x0),
    }
}

/// One 32-bit load; Ok(value) or Err(abort).
fn read(addr: u64) -> Result<u32, Abort> {
    let before = ATTR_EXC[0].load(Ordering::SeqCst);
    let v: u32;
    // SAFETY: a load from the guest's own identity-mapped page; an abort resumes at label 1.
    unsafe {
        core::arch::asm!(
            "mov {v:w}, #0",
            "adr {t}, 1f",
            "str {t}, [{res}]",
            "ldr {v:w}, [{a}]",
            "1:",
            t = out(reg) _,
            res = in(reg) ATTR_EXC[4].as_ptr(),
            a = in(reg) addr,
            v = out(reg) v,
            options(nostack)
        );
    }
    match taken(before) {
        Some(a) => Err(a),
        None => Ok(v),
    }
}

/// One 32-bit store (exactly one instruction, so a skipped store is that instruction); Ok when
/// no abort was taken (the store may still have been dropped: read back to know).
fn write(addr: u64, v: u32) -> Result<(), Abort> {
    let before = ATTR_EXC[0].load(Ordering::SeqCst);
    // SAFETY: a store to the guest's own identity-mapped page; an abort resumes at label 1.
    unsafe {
        core::arch::asm!(
            "adr {t}, 1f",
            "str {t}, [{res}]",
            "str {v:w}, [{a}]",
            "1:",
            t = out(reg) _,
            res = in(reg) ATTR_EXC[4].as_ptr(),
            a = in(reg) addr,
            v = in(reg) v,
            options(nostack)
        );
    }
    match taken(before) {
        Some(a) => Err(a),
        None => Ok(()),
    }
}

/// Make freshly written instructions visible to instruction fetch (caches are on).
fn sync_icache(addr: u64) {
    // SAFETY: cache maintenance by VA on the guest's own page; no memory is changed.
    unsafe {
        core::arch::asm!(
            "dc cvau, {a}",
            "dsb ish",
            "ic ivau, {a}",
            "dsb ish",
            "isb",
            a = in(reg) addr,
            options(nostack)
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Skip,
    Inject,
    Halt,
}

fn sea(r: Result<impl Sized, Abort>, ec: u64, addr: u64, write: bool) -> (bool, u64) {
    match r {
        Err(a) => (
            a.ec() == ec
                && a.fsc() == FSC_SEA
                && a.far == addr
                && (ec != EC_DABT_CUR || a.wnr() == write),
            a.esr,
        ),
        Ok(_) => (false, 0),
    }
}

/// Run `scenario=attr<suffix>` (suffix `-skip`, `-inject`, `-halt`); never returns.
pub fn run(suffix: &str) -> ! {
    let policy = match suffix {
        "-skip" | "" => Policy::Skip,
        "-inject" => Policy::Inject,
        "-halt" => Policy::Halt,
        other => {
            say!("testguest: FAIL unknown scenario attr{other}");
            guest_exit(0xfa)
        }
    };
    // SAFETY: this module's vector table records aborts and resumes where a probe said; it
    // replaces the main vectors for the rest of the run.
    unsafe {
        core::arch::asm!("msr vbar_el1, {}", "isb", in(reg) core::ptr::addr_of!(attr_vectors))
    };
    let code = core::ptr::addr_of!(attr_code_page) as u64;
    let data = ATTR_DATA.0.get() as u64;
    let none = ATTR_NONE.0.get() as u64;
    say!("testguest: attr: code page {code:#x} (r-x), data page {data:#x} (rw-), no-access page {none:#x} (---)");
    let mut c = Checks { failed: 0 };

    // The code page: executes and reads.
    let r = exec(code);
    c.check(
        r == Ok(0xc0de),
        format_args!(
            "attr: code page executes (x0 {:x?})",
            r.as_ref().map_err(|a| a.esr)
        ),
    );
    let r = read(code);
    c.check(
        r.as_ref().ok() == Some(&MOVZ_C0DE),
        format_args!(
            "attr: code page reads ({:x?})",
            r.as_ref().map_err(|a| a.esr)
        ),
    );

    // Writing the code page.
    if policy == Policy::Halt {
        say!("testguest: attr: writing the r-x code page: Bulwark must stop the run here");
    }
    let w = write(code, 0xd503_201f);
    if policy == Policy::Halt {
        say!("testguest: FAIL halted: the guest continued after the write under violation=halt");
        guest_exit(0xfc)
    }
    match policy {
        Policy::Skip => c.check(
            w.is_ok(),
            format_args!("attr: write to the code page skipped, no abort"),
        ),
        _ => {
            let (ok, esr) = sea(w, EC_DABT_CUR, code, true);
            c.check(
                ok,
                format_args!(
                    "attr: write to the code page -> synchronous external abort (esr {esr:#x})"
                ),
            );
        }
    }
    let r = read(code);
    c.check(
        r.as_ref().ok() == Some(&MOVZ_C0DE),
        format_args!(
            "attr: code page unchanged after the write ({:x?})",
            r.as_ref().map_err(|a| a.esr)
        ),
    );
    c.check(
        exec(code) == Ok(0xc0de),
        format_args!("attr: code page still executes"),
    );

    // The data page: reads and writes; running code written there is refused.
    let r = read(data);
    c.check(r == Ok(0x1111_1111), format_args!("attr: data page reads"));
    let ok = write(data, 0x5555_5555).is_ok() && read(data) == Ok(0x5555_5555);
    c.check(ok, format_args!("attr: data page writes"));
    let ok = DATA_CODE
        .iter()
        .enumerate()
        .all(|(i, &insn)| write(data + 4 * i as u64, insn).is_ok());
    sync_icache(data);
    c.check(
        ok,
        format_args!("attr: instructions written into the data page"),
    );
    let (ok, esr) = sea(exec(data), EC_IABT_CUR, data, false);
    c.check(
        ok,
        format_args!("attr: executing the data page -> instruction abort (esr {esr:#x})"),
    );
    c.check(
        read(data) == Ok(DATA_CODE[0]),
        format_args!("attr: data page still reads after the refused fetch"),
    );

    // The no-access page.
    let (ok, esr) = sea(read(none), EC_DABT_CUR, none, false);
    c.check(
        ok,
        format_args!("attr: reading the no-access page -> abort (esr {esr:#x})"),
    );
    let w = write(none, 0x3333_3333);
    match policy {
        Policy::Skip => c.check(
            w.is_ok(),
            format_args!("attr: write to the no-access page skipped"),
        ),
        _ => {
            let (ok, esr) = sea(w, EC_DABT_CUR, none, true);
            c.check(
                ok,
                format_args!("attr: write to the no-access page -> abort (esr {esr:#x})"),
            );
        }
    }
    let (ok, esr) = sea(exec(none), EC_IABT_CUR, none, false);
    c.check(
        ok,
        format_args!("attr: executing the no-access page -> instruction abort (esr {esr:#x})"),
    );

    say!("testguest: attr: {} check(s) failed", c.failed);
    guest_exit(c.failed)
}
