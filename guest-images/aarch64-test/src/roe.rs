//! ROE on arm64 from the guest's side (Bulwark's vendor-hyp call 0xC6000040, x1 = sub-op,
//! x2 = a1, x3 = a2): every -EINVAL case, calls from EL0 (HVC/SMC are UNDEFINED there: the guest
//! takes its own undefined-instruction exception and Bulwark sees nothing), and stores of every
//! form to ROE pages and chunk pages: STR, STP (with writeback), STR Q, ST1 of four Q registers,
//! SWP, LDADD, CAS, LDXR/STXR, LDXP/STXP, DC ZVA, and stores crossing pages.
//!
//! `policy` is Bulwark's `violation=` (the guest's `policy=` option tells the guest which one
//! runs): under `skip` a store that hits protected bytes completes without them and keeps its
//! register effects (writeback, loaded values); under `inject` it is not performed at all, the
//! registers are as before, and the guest takes a synchronous external abort (EC 0x25, FSC 0x10).

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{hvc, Checks, Uart, EXPECT_ABORT};
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION};
use bulwark_abi::smccc as ids;

const EINVAL: u64 = (-22i64) as u64;
const PAGE: u64 = 4096;

/// Four pages: D (plain), A, B, C (chunk pages). Protected bytes (set by `chunk_checks`):
/// A [0x100, 0x108) and [0x200, 0x240); B [0x800, 0x808); C [0x0, 0x4).
#[repr(C, align(4096))]
struct Pages(UnsafeCell<[u8; 4 * 4096]>);
// SAFETY: one CPU; the pages are touched only through single instructions and volatile reads.
unsafe impl Sync for Pages {}
static SW: Pages = Pages(UnsafeCell::new([0x5a; 4 * 4096]));
#[repr(C, align(4096))]
struct One(UnsafeCell<[u8; 4096]>);
// SAFETY: as for `Pages`.
unsafe impl Sync for One {}
static LOCKED: One = One(UnsafeCell::new([0x33; 4096]));

core::arch::global_asm!(
    r#"
    .section .text.el0_code, "ax"
    .balign 4096
    .global roe_el0_code
roe_el0_code:
    hvc     #0
    smc     #0
    svc     #0
1:  b       1b
    .global roe_el0_load
roe_el0_load:
    ldr     x0, [x1]
    svc     #0
2:  b       2b
    .balign 4096
"#
);

extern "C" {
    fn roe_el0_code();
    fn roe_el0_load();
}

/// Where an SVC from EL0 returns to (EL1).
static EL0_RETURN: AtomicU64 = AtomicU64::new(0);
static EL0_UNDEF: AtomicU64 = AtomicU64::new(0);
static EL0_OTHER: AtomicU64 = AtomicU64::new(0);
/// Data aborts taken from EL0 (MMIO guard from user space), with the last ESR.
static EL0_DABT: AtomicU64 = AtomicU64::new(0);
static EL0_ESR: AtomicU64 = AtomicU64::new(0);
static EL0_FAR: AtomicU64 = AtomicU64::new(0);

/// Called by the guest's exception handler for a synchronous exception from EL0 (vector slot 8).
pub fn el0_trap(esr: u64) {
    let ec = esr >> 26;
    if ec == 0 {
        // HVC or SMC at EL0: UNDEFINED, taken here as an unknown instruction. Skip it.
        EL0_UNDEF.fetch_add(1, Ordering::Relaxed);
        // SAFETY: ELR_EL1 holds the EL0 instruction's address; skipping it is the test's intent.
        unsafe {
            core::arch::asm!(
                "mrs {t}, elr_el1", "add {t}, {t}, #4", "msr elr_el1, {t}",
                t = out(reg) _, options(nomem, nostack)
            )
        };
        return;
    }
    if ec == 0x24 {
        let far: u64;
        // SAFETY: reading FAR_EL1 has no side effects.
        unsafe { core::arch::asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack)) };
        EL0_ESR.store(esr, Ordering::Relaxed);
        EL0_FAR.store(far, Ordering::Relaxed);
        EL0_DABT.fetch_add(1, Ordering::Relaxed);
    } else if ec != 0x15 {
        EL0_OTHER.fetch_add(1, Ordering::Relaxed);
    }
    // SVC (or anything else): back to EL1h, interrupts masked, after the `eret` in `run_el0`.
    let back = EL0_RETURN.load(Ordering::Relaxed);
    // SAFETY: returns into `run_el0` at EL1 on the stack it left (SP_EL1 is unchanged by EL0).
    unsafe {
        core::arch::asm!(
            "msr elr_el1, {b}", "msr spsr_el1, {s}",
            b = in(reg) back, s = in(reg) 0x3c5u64, options(nomem, nostack)
        )
    };
}

/// Run the EL0 page with x0/x1 set; returns x0 as EL0 left it.
fn run_el0(x0: u64, x1: u64) -> u64 {
    run_el0_at(roe_el0_code as *const () as u64, x0, x1)
}

/// Read 8 bytes at `addr` from EL0 (the first GiB, QEMU virt's devices, made EL0-accessible in
/// the guest's stage-1 map for the duration). `Err((esr, far))` when the read aborted.
pub fn el0_read(addr: u64) -> Result<u64, (u64, u64)> {
    let ttbr: u64;
    // SAFETY: reading TTBR0_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) ttbr, options(nomem, nostack)) };
    let l1 = (ttbr & 0x0000_ffff_ffff_f000) as *mut u64;
    // SAFETY: entry 0 of the guest's own level-1 table (identity-mapped RAM): AP[1] (bit 6)
    // makes the first GiB accessible at EL0; the TLB is invalidated after each change.
    let old = unsafe { core::ptr::read_volatile(l1) };
    let set = |v: u64| {
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(l1, v);
            core::arch::asm!(
                "dsb ish",
                "tlbi vmalle1",
                "dsb ish",
                "isb",
                options(nostack)
            );
        }
    };
    set(old | (1 << 6));
    let before = EL0_DABT.load(Ordering::Relaxed);
    let v = run_el0_at(roe_el0_load as *const () as u64, 0, addr);
    set(old);
    if EL0_DABT.load(Ordering::Relaxed) != before {
        Err((
            EL0_ESR.load(Ordering::Relaxed),
            EL0_FAR.load(Ordering::Relaxed),
        ))
    } else {
        Ok(v)
    }
}

fn run_el0_at(entry: u64, x0: u64, x1: u64) -> u64 {
    let out: u64;
    // SAFETY: drops to EL0t at `roe_el0_code` (executable at EL0 in the guest's stage-1 map,
    // which has UXN = 0 for RAM), which executes HVC, SMC (both UNDEFINED at EL0, skipped by
    // `el0_trap`) and SVC, whose handler returns to label 2 at EL1 with the stack as it was.
    // Registers x0-x18 and x30 come back as EL0 left them; all caller-saved ones are clobbered.
    unsafe {
        core::arch::asm!(
            "adr x4, 2f",
            "str x4, [x2]",
            "msr elr_el1, x3",
            "mov x4, #0x3c0",
            "msr spsr_el1, x4",
            "isb",
            "eret",
            "2:",
            inout("x2") EL0_RETURN.as_ptr() => _,
            inout("x3") entry => _,
            out("x4") _,
            inout("x0") x0 => out,
            inout("x1") x1 => _,
            clobber_abi("C"),
        )
    }
    out
}

fn roe(op: u64, a1: u64, a2: u64) -> u64 {
    hvc(u64::from(ids::BULWARK_ROE), op, a1, a2)[0]
}

fn rd8(p: u64) -> u64 {
    // SAFETY: inside the test pages (identity-mapped normal memory); reads are never refused.
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

fn rd1(p: u64) -> u8 {
    // SAFETY: as in `rd8`.
    unsafe { core::ptr::read_volatile(p as *const u8) }
}

fn bytes(p: u64, n: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    for (i, x) in b.iter_mut().enumerate().take(n.min(64) as usize) {
        *x = rd1(p + i as u64);
    }
    b
}

/// Arm the abort expectation, run `f`, and say whether an abort was taken.
fn aborted(f: impl FnOnce()) -> bool {
    EXPECT_ABORT.store(true, Ordering::Release);
    f();
    !EXPECT_ABORT.swap(false, Ordering::AcqRel)
}

fn fill(p: u64, n: u64, v: u8) {
    for i in 0..n {
        // SAFETY: unprotected bytes of the test pages only (callers' contract); plain stores.
        unsafe { core::ptr::write_volatile((p + i) as *mut u8, v) };
    }
}

// ---- one store instruction each -----------------------------------------------------------

fn str_x(p: u64, v: u64) {
    // SAFETY: one store into the test pages.
    unsafe { core::arch::asm!("str {v}, [{p}]", p = in(reg) p, v = in(reg) v, options(nostack)) }
}
fn stp(p: u64, a: u64, b: u64) {
    // SAFETY: one store pair into the test pages.
    unsafe {
        core::arch::asm!("stp {a}, {b}, [{p}]", p = in(reg) p, a = in(reg) a, b = in(reg) b, options(nostack))
    }
}
/// `stp a, b, [p], #16`: returns the written-back base.
fn stp_post(p: u64, a: u64, b: u64) -> u64 {
    let mut q = p;
    // SAFETY: one store pair with post-index writeback into the test pages.
    unsafe {
        core::arch::asm!("stp {a}, {b}, [{q}], #16", q = inout(reg) q, a = in(reg) a, b = in(reg) b, options(nostack))
    }
    q
}
fn str_q(p: u64, src: &[u8; 16]) {
    // SAFETY: loads 16 bytes from `src`, one `str q0` into the test pages.
    unsafe {
        core::arch::asm!("ldr q0, [{s}]", "str q0, [{p}]", s = in(reg) src.as_ptr(), p = in(reg) p,
            out("v0") _, options(nostack))
    }
}
fn st1x4(p: u64, src: &[u8; 64]) {
    // SAFETY: loads 64 bytes from `src`, one `st1` of four Q registers into the test pages.
    unsafe {
        core::arch::asm!(
            "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{s}]",
            "st1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{p}]",
            s = in(reg) src.as_ptr(), p = in(reg) p,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, options(nostack))
    }
}
/// SWP: returns the old value (the register written by the instruction); `pre` is the
/// register's value before, returned unchanged when the instruction is refused.
fn swp(p: u64, new: u64, pre: u64) -> u64 {
    let mut old = pre;
    // SAFETY: one LSE swap on the test pages.
    unsafe {
        core::arch::asm!(".arch_extension lse", "swp {n}, {o}, [{p}]", p = in(reg) p, n = in(reg) new,
            o = inout(reg) old, options(nostack))
    }
    old
}
fn ldadd(p: u64, v: u64, pre: u64) -> u64 {
    let mut old = pre;
    // SAFETY: one LSE atomic add on the test pages.
    unsafe {
        core::arch::asm!(".arch_extension lse", "ldadd {v}, {o}, [{p}]", p = in(reg) p, v = in(reg) v,
            o = inout(reg) old, options(nostack))
    }
    old
}
/// CAS: returns the value the instruction leaves in the compare register.
fn cas(p: u64, expect: u64, new: u64) -> u64 {
    let mut e = expect;
    // SAFETY: one LSE compare-and-swap on the test pages.
    unsafe {
        core::arch::asm!(".arch_extension lse", "cas {e}, {n}, [{p}]", p = in(reg) p, n = in(reg) new,
            e = inout(reg) e, options(nostack))
    }
    e
}
/// DC ZVA of the block at `p`; the block size in bytes (None when DC ZVA is prohibited).
fn dc_zva(p: u64) {
    // SAFETY: zeroes one naturally aligned block inside the test pages.
    unsafe { core::arch::asm!("dc zva, {p}", p = in(reg) p, options(nostack)) }
}
fn zva_block() -> Option<u64> {
    let d: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, dczid_el0", out(reg) d, options(nomem, nostack)) };
    (d & 0x10 == 0).then(|| 4u64 << (d & 0xf))
}
/// LDXR/STXR loop (at most 8 tries); returns (tries, last status).
fn xchg_excl(p: u64, new: u64) -> (u64, u64) {
    let mut tries = 0u64;
    let mut st: u64;
    loop {
        tries += 1;
        // SAFETY: exclusive load/store pair on the test pages.
        unsafe {
            core::arch::asm!("ldxr {o}, [{p}]", "stxr {s:w}, {n}, [{p}]", p = in(reg) p, n = in(reg) new,
                o = out(reg) _, s = out(reg) st, options(nostack))
        }
        if st == 0 || tries >= 8 {
            return (tries, st);
        }
    }
}
/// LDXP/STXP loop on 16 bytes (at most 8 tries).
fn xchg_excl_pair(p: u64, a: u64, b: u64) -> (u64, u64) {
    let mut tries = 0u64;
    let mut st: u64;
    loop {
        tries += 1;
        // SAFETY: exclusive pair load/store on the test pages (16-byte aligned).
        unsafe {
            core::arch::asm!("ldxp {o1}, {o2}, [{p}]", "stxp {s:w}, {a}, {b}, [{p}]", p = in(reg) p,
                a = in(reg) a, b = in(reg) b, o1 = out(reg) _, o2 = out(reg) _, s = out(reg) st,
                options(nostack))
        }
        if st == 0 || tries >= 8 {
            return (tries, st);
        }
    }
}
/// STXR of 4 bytes (one try): returns the status.
fn stxr_w(p: u64, v: u32) -> u64 {
    let st: u64;
    // SAFETY: exclusive load/store pair (32-bit) on the test pages.
    unsafe {
        core::arch::asm!("ldxr {o:w}, [{p}]", "stxr {s:w}, {v:w}, [{p}]", p = in(reg) p, v = in(reg) v,
            o = out(reg) _, s = out(reg) st, options(nostack))
    }
    st
}

// ---- checks ---------------------------------------------------------------------------------

/// Every ROE check. `inject`: Bulwark runs with `violation=inject`.
pub fn checks(c: &mut Checks, inject: bool, mem_end: u64) {
    c.check(
        roe(ROE_VERSION, 0, 0) == 2,
        format_args!("ROE_VERSION -> 2"),
    );
    einval_checks(c, mem_end);
    el0_checks(c);
    page_checks(c, inject);
    chunk_checks(c, inject);
    hw_access_flag(c);
}

/// The guest's own level-1 table on a chunk page (one unused entry protected) with hardware
/// access-flag updates on (TCR_EL1.HA): the walk's descriptor update faults at stage 2 (S1PTW)
/// and must land (it touches no protected byte) with the instruction completing.
fn hw_access_flag(c: &mut Checks) {
    let mmfr1: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, id_aa64mmfr1_el1", out(reg) mmfr1, options(nomem, nostack))
    };
    if mmfr1 & 0xf == 0 {
        let _ = writeln!(
            Uart,
            "testguest: note no hardware access-flag updates here; not tested"
        );
        return;
    }
    let (ttbr, tcr): (u64, u64);
    // SAFETY: reading translation registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, ttbr0_el1", out(reg) ttbr, options(nomem, nostack));
        core::arch::asm!("mrs {}, tcr_el1", out(reg) tcr, options(nomem, nostack));
    }
    let l1 = ttbr & 0x0000_ffff_ffff_f000;
    let r = roe(ROE_MPROTECT_CHUNK, l1 + 511 * 8, 8);
    let e0 = rd8(l1);
    // SAFETY: TCR_EL1.HA on (hardware access-flag updates); then entry 0 (the device GiB, the
    // UART's) loses its access flag and the TLB forgets it. The next UART write makes the walker
    // set the flag again, in a table page that is now chunk-protected.
    unsafe {
        core::arch::asm!("msr tcr_el1, {}", "isb", in(reg) tcr | (1 << 39), options(nostack));
        str_x(l1, e0 & !(1 << 10));
        core::arch::asm!(
            "dsb ish",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack)
        );
    }
    let _ = writeln!(Uart, "testguest: (UART access with its access flag clear)");
    let now = rd8(l1);
    // SAFETY: hardware updates off again.
    unsafe { core::arch::asm!("msr tcr_el1, {}", "isb", in(reg) tcr, options(nostack)) };
    c.check(
        r == 8 && now & (1 << 10) != 0 && now == e0,
        format_args!(
            "hardware access-flag update in a chunk-protected table page lands ({now:#x})"
        ),
    );
}

/// `scenario=roe-stp`: protect 8 bytes, then STP onto them (a store without syndrome, which
/// takes Bulwark's software step). Run with `violation=halt`: the run must end there.
pub fn stp_first() -> ! {
    let a = SW.0.get() as u64 + PAGE;
    let r = roe(ROE_MPROTECT_CHUNK, a + 0x100, 8);
    let _ = writeln!(
        Uart,
        "testguest: CHUNK -> {r}; STP onto the protected bytes"
    );
    stp(a + 0xf8, 1, 2);
    let _ = writeln!(
        Uart,
        "testguest: still running after the STP (skip/inject policy)"
    );
    super::guest_exit(9)
}

fn einval_checks(c: &mut Checks, mem_end: u64) {
    let a = SW.0.get() as u64;
    let last_page = mem_end - PAGE;
    let cases: [(&str, u64, u64, u64); 12] = [
        ("MPROTECT unaligned start", ROE_MPROTECT, a + 8, 1),
        ("MPROTECT 0 pages", ROE_MPROTECT, a, 0),
        ("MPROTECT more pages than RAM", ROE_MPROTECT, a, 1 << 40),
        (
            "MPROTECT wrapping the address space",
            ROE_MPROTECT,
            0xffff_ffff_ffff_f000,
            2,
        ),
        (
            "MPROTECT of an untranslated VA (2^39)",
            ROE_MPROTECT,
            1 << 39,
            1,
        ),
        (
            "MPROTECT of a device page (UART)",
            ROE_MPROTECT,
            0x0900_0000,
            1,
        ),
        (
            "MPROTECT of the last RAM page + the page past RAM",
            ROE_MPROTECT,
            last_page,
            2,
        ),
        ("CHUNK 0 bytes", ROE_MPROTECT_CHUNK, a, 0),
        (
            "CHUNK wrapping the address space",
            ROE_MPROTECT_CHUNK,
            u64::MAX - 3,
            8,
        ),
        ("CHUNK of a device page", ROE_MPROTECT_CHUNK, 0x0900_0010, 4),
        (
            "CHUNK of an untranslated VA",
            ROE_MPROTECT_CHUNK,
            (1 << 39) + 5,
            4,
        ),
        ("unknown sub-op 3", 3, a, 1),
    ];
    for (what, op, a1, a2) in cases {
        let r = roe(op, a1, a2);
        c.check(
            r == EINVAL,
            format_args!("ROE {what} ({op}, {a1:#x}, {a2:#x}) -> {:#x} (-EINVAL)", r),
        );
    }
    // The refused two-page request protected nothing: the last RAM page is still writable.
    let last = last_page + 0xff0;
    str_x(last, 0x1234_5678);
    c.check(
        rd8(last) == 0x1234_5678,
        format_args!("after the refused request the last RAM page is still writable"),
    );
}

fn el0_checks(c: &mut Checks) {
    let before = EL0_UNDEF.load(Ordering::Relaxed);
    let x0 = run_el0(u64::from(ids::BULWARK_ROE), ROE_VERSION);
    let undef = EL0_UNDEF.load(Ordering::Relaxed) - before;
    c.check(
        undef == 2 && x0 == u64::from(ids::BULWARK_ROE) && EL0_OTHER.load(Ordering::Relaxed) == 0,
        format_args!(
            "ROE from EL0: HVC and SMC are undefined instructions for the guest ({undef} taken), x0 untouched ({x0:#x}): Bulwark never saw them"
        ),
    );
}

fn page_checks(c: &mut Checks, inject: bool) {
    let p = LOCKED.0.get() as u64;
    let r = roe(ROE_MPROTECT, p, 1);
    c.check(r == 1, format_args!("ROE_MPROTECT {p:#x}, 1 page -> {r}"));
    let r = roe(ROE_MPROTECT, p, 1);
    c.check(
        r == 1,
        format_args!("ROE_MPROTECT again (idempotent) -> {r}"),
    );
    let want = 0x3333_3333_3333_3333u64;
    let ab = aborted(|| str_x(p + 8, 1));
    c.check(
        ab == inject && rd8(p + 8) == want,
        format_args!("STR to the ROE page: not performed, abort {ab}"),
    );
    let mut q = p + 0x40;
    let ab = aborted(|| q = stp_post(p + 0x40, 1, 2));
    let base_ok = q == if inject { p + 0x40 } else { p + 0x50 };
    c.check(
        ab == inject && rd8(p + 0x40) == want && rd8(p + 0x48) == want && base_ok,
        format_args!("STP with writeback to the ROE page: not performed, abort {ab}, base {q:#x}"),
    );
    let mut old = 7;
    let ab = aborted(|| old = swp(p + 0x80, 9, 7));
    c.check(
        ab == inject && rd8(p + 0x80) == want && old == if inject { 7 } else { want },
        format_args!("SWP on the ROE page: memory unchanged, abort {ab}, register {old:#x}"),
    );
    let ab = aborted(|| st1x4(p + 0x100, &[0xee; 64]));
    c.check(
        ab == inject && bytes(p + 0x100, 64) == [0x33; 64],
        format_args!("ST1 (4 x Q) to the ROE page: not performed, abort {ab}"),
    );
}

fn chunk_checks(c: &mut Checks, inject: bool) {
    let base = SW.0.get() as u64;
    let (d, a, b, cc) = (base, base + PAGE, base + 2 * PAGE, base + 3 * PAGE);
    for (s, n) in [(a + 0x100, 8), (a + 0x200, 0x40), (b + 0x800, 8), (cc, 4)] {
        let r = roe(ROE_MPROTECT_CHUNK, s, n);
        c.check(
            r == n,
            format_args!("ROE_MPROTECT_CHUNK {s:#x}, {n} bytes -> {r}"),
        );
    }
    let prot = 0x5a5a_5a5a_5a5a_5a5au64;
    let expect = |ab: bool| ab == inject;

    // STP: unprotected; straddling a protected chunk; with writeback onto protected bytes.
    let ab = aborted(|| stp(a + 0x300, 1, 2));
    c.check(
        !ab && rd8(a + 0x300) == 1 && rd8(a + 0x308) == 2,
        format_args!("STP to unprotected bytes of a chunk page written"),
    );
    let ab = aborted(|| stp(a + 0xf8, 3, 4));
    let first = rd8(a + 0xf8);
    c.check(
        expect(ab) && rd8(a + 0x100) == prot && first == if inject { prot } else { 3 },
        format_args!(
            "STP straddling the chunk: protected half kept, other half {first:#x}, abort {ab}"
        ),
    );
    let q = stp_post(a + 0x400, 5, 6);
    c.check(
        q == a + 0x410 && rd8(a + 0x400) == 5 && rd8(a + 0x408) == 6,
        format_args!("STP post-index to unprotected bytes: written, base written back"),
    );
    let mut q = a + 0x200;
    let ab = aborted(|| q = stp_post(a + 0x200, 7, 8));
    c.check(
        expect(ab) && rd8(a + 0x200) == prot && q == if inject { a + 0x200 } else { a + 0x210 },
        format_args!("STP post-index onto protected bytes: dropped, abort {ab}, base {q:#x}"),
    );

    // SIMD.
    let src: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    str_q(a + 0x500, &src);
    c.check(
        bytes(a + 0x500, 16)[..16] == src,
        format_args!("STR Q to unprotected bytes written"),
    );
    let ab = aborted(|| str_q(a + 0x1f8, &src));
    let got = bytes(a + 0x1f8, 16);
    let low_ok = if inject {
        got[..8] == [0x5a; 8]
    } else {
        got[..8] == src[..8]
    };
    c.check(
        expect(ab) && low_ok && got[8..16] == [0x5a; 8],
        format_args!("STR Q straddling protected bytes: only the unprotected half, abort {ab}"),
    );
    let src64: [u8; 64] = core::array::from_fn(|i| 0x80 | i as u8);
    st1x4(a + 0x600, &src64);
    c.check(
        bytes(a + 0x600, 64) == src64,
        format_args!("ST1 (4 x Q, 64 bytes) to unprotected bytes written"),
    );
    let ab = aborted(|| st1x4(a + 0x200, &src64));
    c.check(
        expect(ab) && bytes(a + 0x200, 64) == [0x5a; 64],
        format_args!("ST1 (4 x Q) onto 64 protected bytes dropped, abort {ab}"),
    );

    // Atomics.
    fill(a + 0x700, 0x40, 0);
    str_x(a + 0x700, 11);
    let old = swp(a + 0x700, 12, 0);
    c.check(
        old == 11 && rd8(a + 0x700) == 12,
        format_args!(
            "SWP on unprotected bytes: old {old}, new {}",
            rd8(a + 0x700)
        ),
    );
    let mut old = 99;
    let ab = aborted(|| old = swp(a + 0x100, 13, 99));
    c.check(
        expect(ab) && rd8(a + 0x100) == prot && old == if inject { 99 } else { prot },
        format_args!("SWP onto protected bytes: memory kept, abort {ab}, register {old:#x}"),
    );
    str_x(a + 0x708, 40);
    let old = ldadd(a + 0x708, 2, 0);
    c.check(
        old == 40 && rd8(a + 0x708) == 42,
        format_args!(
            "LDADD on unprotected bytes: old {old}, new {}",
            rd8(a + 0x708)
        ),
    );
    let mut old = 99;
    let ab = aborted(|| old = ldadd(a + 0x200, 1, 99));
    c.check(
        expect(ab) && rd8(a + 0x200) == prot && old == if inject { 99 } else { prot },
        format_args!("LDADD onto protected bytes: memory kept, abort {ab}, register {old:#x}"),
    );
    str_x(a + 0x710, 5);
    let e = cas(a + 0x710, 5, 6);
    c.check(
        e == 5 && rd8(a + 0x710) == 6,
        format_args!("CAS on unprotected bytes: swapped ({})", rd8(a + 0x710)),
    );
    let ab = aborted(|| {
        cas(a + 0x100, prot, 7);
    });
    c.check(
        expect(ab) && rd8(a + 0x100) == prot,
        format_args!("CAS onto protected bytes: memory kept, abort {ab}"),
    );

    // DC ZVA (a 64-byte block store without syndrome).
    if zva_block() == Some(64) {
        fill(a + 0x1c0, 0x40, 0x11);
        dc_zva(a + 0x1c0);
        c.check(
            bytes(a + 0x1c0, 64) == [0; 64],
            format_args!("DC ZVA of an unprotected block zeroes it"),
        );
        let ab = aborted(|| dc_zva(a + 0x200));
        c.check(
            expect(ab) && bytes(a + 0x200, 64) == [0x5a; 64],
            format_args!("DC ZVA of a protected block: kept, abort {ab}"),
        );
    } else {
        let _ = writeln!(
            Uart,
            "testguest: note DC ZVA block is not 64 bytes here; not tested"
        );
    }

    // Exclusives: completed as successful store-exclusives, protected bytes dropped.
    let (tries, st) = xchg_excl(a + 0x720, 0x77);
    c.check(
        st == 0 && tries == 1 && rd8(a + 0x720) == 0x77,
        format_args!("LDXR/STXR on unprotected bytes: status {st} after {tries} try(s), written"),
    );
    let (tries, st) = xchg_excl_pair(a + 0x730, 0x88, 0x99);
    c.check(
        st == 0 && tries == 1 && rd8(a + 0x730) == 0x88 && rd8(a + 0x738) == 0x99,
        format_args!("LDXP/STXP on unprotected bytes: status {st} after {tries} try(s), written"),
    );
    let mut st = 9;
    let ab = aborted(|| st = stxr_w(a + 0x104, 0x1234_5678));
    c.check(
        expect(ab) && rd8(a + 0x100) == prot && (inject || st == 0),
        format_args!("LDXR/STXR onto protected bytes: dropped, abort {ab}, status {st}"),
    );

    // Stores crossing pages.
    str_x(a + 0xffc, 0x1111_2222_3333_4444);
    c.check(
        rd8(a + 0xff8) & !0xffff_ffff == 0x3333_4444_0000_0000
            && rd1(b) == 0x22
            && rd1(b + 3) == 0x11,
        format_args!("STR crossing two chunk pages (unprotected bytes) written on both"),
    );
    let ab = aborted(|| str_x(b + 0xffc, 0xaaaa_bbbb_cccc_dddd));
    let low = rd8(b + 0xff8) >> 32;
    c.check(
        expect(ab)
            && bytes(cc, 4)[..4] == [0x5a; 4]
            && low == if inject { 0x5a5a_5a5a } else { 0xcccc_dddd },
        format_args!("STR crossing into protected bytes of the next page: those kept, first page {low:#x}, abort {ab}"),
    );
    stp(d + 0xff8, 0x1, 0x2);
    c.check(
        rd8(d + 0xff8) == 1 && rd8(a) == 2,
        format_args!("STP crossing from a plain page into a chunk page written"),
    );
    let _ = writeln!(Uart, "testguest: roe: store forms done");
}
