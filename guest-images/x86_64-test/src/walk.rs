//! Issue 12 scenarios (`scenario=walk`, a child of the `roe` module: it uses its window, arena,
//! exception handler and hypercall helpers). docs/x86_64.md ("Bulwark's page walks and the
//! guest's permissions") describes them; each check would fail on the code before the fix.
//!
//! 1. Breach 3: [`WALK_SECRET`] is given `---` on Bulwark's command line (xtask finds it with
//!    llvm-nm). The guest points a page-directory entry at it, so the secret page is the page
//!    table of a 2 MiB window; its even entries are present, odd ones not. OUTSB / INSB
//!    through that window and ROE calls on it must all fail the same way (#GP(0), -EINVAL),
//!    whatever the secret entry holds: the walk's read of the secret page is refused.
//! 2. INS of a dword straddling from RAM into the legacy hole (not RAM): #GP(0) and not one
//!    byte written.
//! 3. Breach 4: a ROE-locked page holding the guest's own PTEs, one with A/D clear (entry 2) and
//!    one with A/D set (entry 1). Touching the A/D-set page works without a violation; touching the A/D-clear page
//!    makes the CPU set A (and D) in the locked PTE: a `roe` violation, and the PTE must be
//!    unchanged afterwards (skip: the access completes; inject: #GP(0), nothing written).
//! 4. PUSHF onto unprotected bytes of a chunk page (the software path steps it): the stored
//!    image has the guest's own TF, and POPF of it raises no #DB.

use core::arch::asm;
use core::sync::atomic::Ordering;

use bulwark_abi::policy::ViolationPolicy;

use super::Com1;

use super::{
    chunk_protect, features, init, map, mprotect, pages, rd, rd64, slot, ACC, DIRTY, E_INVAL,
    GP_COUNT, GP_ERR, P, PAGE, PF_COUNT, RESUME, RW, T, WIN, W_PD,
};
#[allow(unused_imports)]
use core::fmt::Write as _;

/// Bulwark's no-device port (trapped and emulated: reads all ones, writes dropped), so that
/// INS/OUTS go through Bulwark's string-I/O emulation (other ports pass through).
const NO_PORT: u16 = 0xf5;
/// Where the secret page, used as a page table, maps (page-directory slot 2 of the window).
const VA_SECRET: u64 = WIN + (4 << 20);
/// Where the locked page table maps (page-directory slot 3).
const VA_AD: u64 = WIN + (6 << 20);
/// A page of guest RAM every entry of the secret table points at (the guest image's start).
const SECRET_TARGET: u64 = 0x0010_0000;

#[repr(C, align(4096))]
pub struct Table64([u64; 512]);

const fn secret_entries() -> [u64; 512] {
    let mut t = [0u64; 512];
    let mut i = 0;
    while i < 512 {
        if i % 2 == 0 {
            t[i] = SECRET_TARGET | P | RW | ACC | DIRTY;
        }
        i += 1;
    }
    t
}

/// The page the guest may not read (`attr=---`): never touched by the guest itself.
#[no_mangle]
pub static WALK_SECRET: Table64 = Table64(secret_entries());

/// The page table the A/D check ROE-locks.
#[no_mangle]
static mut WALK_AD_PT: Table64 = Table64([0; 512]);

fn reload_cr3() {
    // SAFETY: rewriting CR3 with its own value flushes non-global translations only.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack)) };
}

fn set_pd(index: usize, table: u64) {
    // SAFETY: our own window page directory; single-threaded guest.
    unsafe { (*core::ptr::addr_of_mut!(W_PD)).0[index] = table | P | RW | ACC };
    reload_cr3();
}

/// Faults taken by the last guarded instruction: (#GP count, #GP error, #PF count).
fn faults() -> (u64, u64, u64) {
    (
        GP_COUNT.swap(0, Ordering::SeqCst),
        GP_ERR.swap(0, Ordering::SeqCst),
        PF_COUNT.swap(0, Ordering::SeqCst),
    )
}

fn clear_faults() {
    let _ = faults();
}

/// One OUTSB from `va` to the absent port; the faults it took.
fn outsb(va: u64) -> (u64, u64, u64) {
    clear_faults();
    // SAFETY: reads one byte at `va` for a port write; a #GP or #PF resumes at label 2.
    unsafe {
        asm!(
            "lea r11, [rip + 2f]",
            "mov [r10], r11",
            "outsb",
            "2:",
            in("r10") RESUME.as_ptr(),
            in("dx") NO_PORT,
            inout("rsi") va => _,
            out("r11") _,
            options(nostack)
        );
    }
    RESUME.store(0, Ordering::SeqCst);
    faults()
}

/// One INSB (`dword`: INSD) into `va` from the absent port; the faults it took.
fn ins(va: u64, dword: bool) -> (u64, u64, u64) {
    clear_faults();
    // SAFETY: writes one element at `va` from a port read; a #GP or #PF resumes at label 2.
    unsafe {
        if dword {
            asm!(
                "lea r11, [rip + 2f]",
                "mov [r10], r11",
                "insd",
                "2:",
                in("r10") RESUME.as_ptr(),
                in("dx") NO_PORT,
                inout("rdi") va => _,
                out("r11") _,
                options(nostack)
            );
        } else {
            asm!(
                "lea r11, [rip + 2f]",
                "mov [r10], r11",
                "insb",
                "2:",
                in("r10") RESUME.as_ptr(),
                in("dx") NO_PORT,
                inout("rdi") va => _,
                out("r11") _,
                options(nostack)
            );
        }
    }
    RESUME.store(0, Ordering::SeqCst);
    faults()
}

/// A guarded 8-byte load (`Err(())` on #GP).
fn load(va: u64) -> Result<u64, ()> {
    clear_faults();
    let v: u64;
    // SAFETY: a load from a window address; a #GP resumes at label 2.
    unsafe {
        asm!(
            "xor {v}, {v}",
            "lea r11, [rip + 2f]",
            "mov [r10], r11",
            "mov {v}, [{a}]",
            "2:",
            v = out(reg) v,
            a = in(reg) va,
            in("r10") RESUME.as_ptr(),
            out("r11") _,
            options(nostack)
        );
    }
    RESUME.store(0, Ordering::SeqCst);
    if faults().0 == 0 {
        Ok(v)
    } else {
        Err(())
    }
}

/// A guarded 8-byte store (`Err(())` on #GP).
fn store(va: u64, v: u64) -> Result<(), ()> {
    clear_faults();
    // SAFETY: a store to a window address backed by an arena page; a #GP resumes at label 2.
    unsafe {
        asm!(
            "lea r11, [rip + 2f]",
            "mov [r10], r11",
            "mov [{a}], {v}",
            "2:",
            v = in(reg) v,
            a = in(reg) va,
            in("r10") RESUME.as_ptr(),
            out("r11") _,
            options(nostack)
        );
    }
    RESUME.store(0, Ordering::SeqCst);
    if faults().0 == 0 {
        Ok(())
    } else {
        Err(())
    }
}

fn rflags() -> u64 {
    let f: u64;
    // SAFETY: PUSHFQ/POP on our own stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) f) };
    f
}

/// The `walk` scenario (see the module docs).
pub fn walk(t: &mut T) {
    let policy = features()
        .map(|f| f.policy)
        .unwrap_or(ViolationPolicy::Skip);
    let secret = core::ptr::addr_of!(WALK_SECRET) as u64;
    let ad_pt = core::ptr::addr_of!(WALK_AD_PT) as u64;
    say!(
        "walk: secret page {secret:#x} (---), A/D page table {ad_pt:#x}, policy {}",
        policy.as_str()
    );

    // 1. The secret page as a page table.
    set_pd(2, secret);
    for (i, name) in [(0u64, "walk-outsb-present"), (1, "walk-outsb-absent")] {
        let r = outsb(VA_SECRET + i * PAGE);
        t.check(
            name,
            r == (1, 0, 0),
            format_args!("OUTSB through the secret table entry {i}: (#GP, error, #PF) = {r:?}, expected one #GP(0)"),
        );
    }
    let r = ins(VA_SECRET + 2 * PAGE, false);
    t.check(
        "walk-insb-secret",
        r == (1, 0, 0),
        format_args!("INSB through the secret table: {r:?}"),
    );
    for (i, name) in [(0u64, "walk-chunk-present"), (1, "walk-chunk-absent")] {
        let r = chunk_protect(VA_SECRET + i * PAGE, 1);
        t.ret(name, r, E_INVAL);
    }
    t.ret("walk-mprotect-secret", mprotect(VA_SECRET, 1), E_INVAL);
    set_pd(2, 0);
    // The secret page as OUTSB's source (identity mapped): the data read is refused like the
    // CPU's own read (an attr line, #GP(0)).
    let r = outsb(secret + 0x800);
    t.check(
        "walk-outsb-secret-data",
        r == (1, 0, 0),
        format_args!("OUTSB from the secret page: {r:?}"),
    );

    // 2. INSD straddling RAM -> the legacy hole (0xA0000, not RAM): nothing written, #GP(0).
    let ram = pages(1);
    let dev = slot();
    if dev != ram.va + PAGE {
        say!("FAIL walk: window slots not consecutive");
    }
    map(dev, 0xa0000, P | RW | ACC | DIRTY);
    let at = ram.va + PAGE - 2;
    let r = ins(at, true);
    let kept = rd(at) == init(at) && rd(at + 1) == init(at + 1);
    t.check(
        "walk-insd-straddle",
        r == (1, 0, 0) && kept,
        format_args!(
            "INSD at the page end into the legacy hole: faults {r:?}, RAM bytes {:#x} {:#x} (expected {:#x} {:#x})",
            rd(at),
            rd(at + 1),
            init(at),
            init(at + 1)
        ),
    );
    map(dev, 0, 0);

    // 3. A locked page table with A/D clear (entry 2) and A/D set (entry 1).
    let data = pages(2);
    let pte0 = data.pa | P | RW;
    let pte1 = (data.pa + PAGE) | P | RW | ACC | DIRTY;
    // SAFETY: our own page table; single-threaded, not yet in use.
    unsafe {
        let pt = &mut *core::ptr::addr_of_mut!(WALK_AD_PT);
        pt.0[2] = pte0;
        pt.0[1] = pte1;
    }
    set_pd(3, ad_pt);
    let r = mprotect(ad_pt, 1);
    t.ret("walk-ad-lock", r, 1);
    let pte = |i: usize| -> u64 {
        // SAFETY: reading our own (locked) page table.
        unsafe { core::ptr::read_volatile(&(*core::ptr::addr_of!(WALK_AD_PT)).0[i]) }
    };
    say!("walk: touching the page whose PTE has A/D set (no violation expected)");
    let v = load(VA_AD + PAGE);
    let w = store(VA_AD + PAGE + 8, 0x1234_5678);
    t.check(
        "walk-ad-preset-access",
        v == Ok(rd64(data.pa + PAGE)) && w.is_ok() && rd64(data.pa + PAGE + 8) == 0x1234_5678,
        format_args!("load {v:x?}, store {w:?}"),
    );
    say!("walk: touching the page whose locked PTE has A/D clear");
    let v = load(VA_AD + 2 * PAGE);
    let w = store(VA_AD + 2 * PAGE + 8, 0x0bad_f00d);
    let (v_ok, w_ok) = match policy {
        ViolationPolicy::Inject => (v.is_err(), w.is_err() && rd64(data.pa + 8) != 0x0bad_f00d),
        _ => (
            v == Ok(rd64(data.pa)),
            w.is_ok() && rd64(data.pa + 8) == 0x0bad_f00d,
        ),
    };
    t.check(
        "walk-ad-clear-access",
        v_ok && w_ok,
        format_args!("load {v:x?}, store {w:?} under {}", policy.as_str()),
    );
    t.check(
        "walk-ad-locked-unchanged",
        pte(2) == pte0 && pte(1) == pte1,
        format_args!(
            "PTEs {:#x} {:#x}, locked as {pte0:#x} {pte1:#x}",
            pte(2),
            pte(1)
        ),
    );
    // The locked page table still cannot be written by the guest itself.
    let w = store(ad_pt + 24, 0x77);
    t.check(
        "walk-ad-table-write-refused",
        rd64(ad_pt + 24) == 0 && (w.is_err() == (policy == ViolationPolicy::Inject)),
        format_args!("{:#x} ({w:?})", rd64(ad_pt + 24)),
    );
    // 4. PUSHF onto unprotected bytes of a chunk page, then POPF (last: on the old code the
    // POPF raised #DB, which ended the run).
    let stk = pages(1);
    let r = chunk_protect(stk.va + 0x800, 8);
    t.ret("walk-pushf-chunk", r, 8);
    let before = rflags();
    let top = stk.va + 0x100;
    let image: u64;
    // SAFETY: RSP is moved to an unprotected part of our own arena page for one PUSHFQ/POPFQ
    // and restored; no call or interrupt can use that stack (IF is clear).
    unsafe {
        asm!(
            "mov {saved}, rsp",
            "mov rsp, {top}",
            "pushfq",
            "mov {img}, [rsp]",
            "popfq",
            "mov rsp, {saved}",
            saved = out(reg) _,
            top = in(reg) top,
            img = out(reg) image,
        );
    }
    let after = rflags();
    let stored = rd64(top - 8);
    let tf_if = |f: u64| (f >> 8) & 3;
    t.check(
        "walk-pushf-image",
        tf_if(image) == tf_if(before) && stored == image,
        format_args!("pushed {image:#x}, in memory {stored:#x}, flags before {before:#x}"),
    );
    t.check(
        "walk-popf-no-trap",
        tf_if(after) == tf_if(before),
        format_args!("flags after POPF {after:#x}, before {before:#x}"),
    );
    let prot = rd64(stk.va + 0x800);
    t.check(
        "walk-pushf-protected-unchanged",
        (0..8).all(|o| rd(stk.va + 0x800 + o) == init(stk.va + 0x800 + o)),
        format_args!("protected qword {prot:#x}"),
    );
}
