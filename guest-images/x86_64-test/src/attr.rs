//! `scenario=attr-skip|attr-inject|attr-halt`: boot-time per-page attributes (Bulwark's `attr=`,
//! issue 7) seen from the guest. docs/attributes.md describes the scenario.
//!
//! The pages are the guest's own, found by xtask in the guest ELF's symbol table (identity
//! mapped: a symbol's address is its guest-physical address):
//! * `attr_code_page` — a page of code (`mov eax, 0xc0de; ret`), given `r-x`;
//! * `attr_xo_page` — a page of code (`mov eax, 0xe0e0; ret`), given `--x` when the command line
//!   says `attr-xo` (xtask passes it where EPT has execute-only translations);
//! * `ATTR_DATA` — a data page, given `rw-`;
//! * `ATTR_NONE` — a data page, given `---` (no access).
//!
//! The guest executes and reads the code page (works), writes it (the write must not land:
//! `skip` drops it and the guest continues; `inject` gives #GP(0)), writes and reads the data
//! page (works), writes an instruction sequence into the data page and calls it (#GP(0) under
//! every policy but `halt`: a fetch cannot be skipped), executes the execute-only page (works)
//! and reads and writes it (refused), and reads, writes and executes the no-access page. Under
//! `halt` the first violation (the write to the code page) must end the run.
//!
//! Lines `PASS name: detail` / `FAIL name: detail`; the run ends with exit(number of failures).

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;

use super::{exit, Checks, Com1, GP_CODE, GP_RESUME, GP_SEEN};

core::arch::global_asm!(
    r#"
    .section .text.attr_code, "ax"
    .balign 4096
    .global attr_code_page
attr_code_page:
    mov eax, 0xc0de
    ret
    .balign 4096
    .global attr_xo_page
attr_xo_page:
    mov eax, 0xe0e0
    ret
    .balign 4096
"#
);

extern "C" {
    static attr_code_page: u8;
    static attr_xo_page: u8;
}

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

/// The first four bytes of the code page: `b8 de c0 00` (mov eax, 0xc0de).
const CODE_HEAD: u32 = 0x00c0_deb8;
/// `mov eax, 0xbad; ret` (what the guest writes into its data page and tries to run), as two
/// little-endian words.
const DATA_CODE: [u32; 2] = [0x000b_adb8, 0x0000_c300];

/// Whether the last probe raised #GP(0); clears the resume address.
fn gp_taken() -> Result<(), u64> {
    GP_RESUME.store(0, Ordering::SeqCst);
    match GP_SEEN.load(Ordering::SeqCst) {
        0 => Ok(()),
        _ => Err(GP_CODE.load(Ordering::SeqCst)),
    }
}

/// Call `addr`; Ok(eax) when it ran, Err(error code) on #GP.
fn exec(addr: u64) -> Result<u32, u64> {
    GP_SEEN.store(0, Ordering::SeqCst);
    let eax: u32;
    // SAFETY: calls code that only sets EAX and returns. On #GP the handler resumes at label 2
    // with the return address still pushed; RSP is restored from a register the handler keeps.
    unsafe {
        core::arch::asm!(
            "lea {r}, [rip + 2f]",
            "mov [{resume}], {r}",
            "mov {saved}, rsp",
            "call {f}",
            "2:",
            "mov rsp, {saved}",
            r = out(reg) _,
            saved = out(reg) _,
            resume = in(reg) GP_RESUME.as_ptr(),
            f = in(reg) addr,
            inout("eax") 0u32 => eax,
        );
    }
    gp_taken().map(|()| eax)
}

/// One 32-bit load; Ok(value) or Err(error code) on #GP.
fn read(addr: u64) -> Result<u32, u64> {
    GP_SEEN.store(0, Ordering::SeqCst);
    let v: u32;
    // SAFETY: a load from the guest's own identity-mapped page; #GP resumes at label 2.
    unsafe {
        core::arch::asm!(
            "xor {v:e}, {v:e}",
            "lea {r}, [rip + 2f]",
            "mov [{resume}], {r}",
            "mov {v:e}, dword ptr [{a}]",
            "2:",
            r = out(reg) _,
            resume = in(reg) GP_RESUME.as_ptr(),
            a = in(reg) addr,
            v = out(reg) v,
            options(nostack)
        );
    }
    gp_taken().map(|()| v)
}

/// One 32-bit store; Ok when no #GP was raised (the store may still have been dropped).
fn write(addr: u64, v: u32) -> Result<(), u64> {
    GP_SEEN.store(0, Ordering::SeqCst);
    // SAFETY: a store to the guest's own identity-mapped page; #GP resumes at label 2.
    unsafe {
        core::arch::asm!(
            "lea {r}, [rip + 2f]",
            "mov [{resume}], {r}",
            "mov dword ptr [{a}], {v:e}",
            "2:",
            r = out(reg) _,
            resume = in(reg) GP_RESUME.as_ptr(),
            a = in(reg) addr,
            v = in(reg) v,
            options(nostack)
        );
    }
    gp_taken()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Skip,
    Inject,
    Halt,
}

/// Is `s` one of this module's scenarios?
pub fn handles(s: &str) -> bool {
    matches!(s, "attr" | "attr-skip" | "attr-inject" | "attr-halt")
}

/// Run scenario `s` (see [`handles`]); `cmdline` may say `attr-xo`. Never returns.
pub fn run(s: &str, cmdline: &str) -> ! {
    let policy = match s {
        "attr-inject" => Policy::Inject,
        "attr-halt" => Policy::Halt,
        _ => Policy::Skip,
    };
    let xo = cmdline.split_ascii_whitespace().any(|w| w == "attr-xo");
    let code = core::ptr::addr_of!(attr_code_page) as u64;
    let xop = core::ptr::addr_of!(attr_xo_page) as u64;
    let data = ATTR_DATA.0.get() as u64;
    let none = ATTR_NONE.0.get() as u64;
    say!(
        "attr: code page {code:#x} (r-x), data page {data:#x} (rw-), no-access page {none:#x} (---), execute-only page {xop:#x} (--x: {xo})"
    );
    let mut c = Checks { failed: 0 };
    // A refused write: skipped without a fault, or #GP(0).
    let refused_write = |c: &mut Checks, name: &str, r: Result<(), u64>| match policy {
        Policy::Inject => c.check(
            name,
            r == Err(0),
            format_args!("#GP(0) expected, got {r:x?}"),
        ),
        _ => c.check(
            name,
            r.is_ok(),
            format_args!("skipped without a fault, got {r:x?}"),
        ),
    };
    let gp0 = |c: &mut Checks, name: &str, r: Result<u32, u64>| {
        c.check(
            name,
            r == Err(0),
            format_args!("#GP(0) expected, got {r:x?}"),
        )
    };

    let r = exec(code);
    c.check("attr-code-exec", r == Ok(0xc0de), format_args!("{r:x?}"));
    let r = read(code);
    c.check("attr-code-read", r == Ok(CODE_HEAD), format_args!("{r:x?}"));

    if policy == Policy::Halt {
        say!("attr: writing the r-x code page: Bulwark must stop the run here");
    }
    let w = write(code, 0x9090_9090);
    if policy == Policy::Halt {
        say!("FAIL halted: the guest continued after the write under violation=halt");
        exit(0xfc)
    }
    refused_write(&mut c, "attr-code-write-refused", w);
    let r = read(code);
    c.check(
        "attr-code-unchanged",
        r == Ok(CODE_HEAD),
        format_args!("{r:x?}"),
    );
    let r = exec(code);
    c.check(
        "attr-code-still-exec",
        r == Ok(0xc0de),
        format_args!("{r:x?}"),
    );

    let r = read(data);
    c.check(
        "attr-data-read",
        r == Ok(0x1111_1111),
        format_args!("{r:x?}"),
    );
    let w = write(data, 0x5555_5555);
    let r = read(data);
    c.check(
        "attr-data-write",
        w.is_ok() && r == Ok(0x5555_5555),
        format_args!("{w:x?} {r:x?}"),
    );
    let ok = DATA_CODE
        .iter()
        .enumerate()
        .all(|(i, &word)| write(data + 4 * i as u64, word).is_ok());
    c.check("attr-data-code-written", ok, format_args!("{ok}"));
    gp0(&mut c, "attr-data-exec-refused", exec(data));
    let r = read(data);
    c.check(
        "attr-data-read-after",
        r == Ok(DATA_CODE[0]),
        format_args!("{r:x?}"),
    );

    if xo {
        let r = exec(xop);
        c.check("attr-xo-exec", r == Ok(0xe0e0), format_args!("{r:x?}"));
        gp0(&mut c, "attr-xo-read-refused", read(xop));
        refused_write(&mut c, "attr-xo-write-refused", write(xop, 0x9090_9090));
        let r = exec(xop);
        c.check(
            "attr-xo-still-exec",
            r == Ok(0xe0e0),
            format_args!("{r:x?}"),
        );
    }

    gp0(&mut c, "attr-none-read-refused", read(none));
    refused_write(&mut c, "attr-none-write-refused", write(none, 0x3333_3333));
    gp0(&mut c, "attr-none-exec-refused", exec(none));

    say!("attr: {} check(s) failed", c.failed);
    exit(c.failed)
}
