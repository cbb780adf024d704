//! `scenario=matrix policy=skip|inject [stride=N]`: the generated store matrix on arm64.
//!
//! Same layout and model as the x86 guest's matrix (guest-images/x86_64-test/src/matrix.rs):
//! four consecutive pages Z (plain), A and B (chunk pages), C (ROE_MPROTECT); chunks at A+0..4,
//! A+0x200..0x208, A+0x400, A+0xff8..B+8 (across the A/B page edge) and B+0x800..0x840. Every
//! store form below runs at every destination in `e-n ..= e` for each edge `e` (aligned forms:
//! the aligned ones), and every byte of the four pages is compared with the model after each
//! store. `skip`: unlocked bytes take the store, locked bytes keep their value, no abort.
//! `inject`: a store that would change a locked byte takes a synchronous external abort
//! (FSC 0x10) at the store and changes nothing; one that touches locked bytes without changing
//! them may do either; one that touches none must not abort. A store that crosses a page edge
//! and aborts may leave the part on the page before the edge written (the architecture allows
//! a multi-access store to fault after its first access; the CPU wrote an unprotected page):
//! then every byte must be old, or new where unlocked. Writeback forms also check the base
//! register (written back under skip, unchanged after an abort). Exclusives check the status.

use core::sync::atomic::Ordering;

use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK};

use super::{guest_exit, roe, Uart, EXPECT_ABORT, LAST_ESR};
use core::fmt::Write;

const PAGE: u64 = 4096;
const SIZE: usize = 4 * 4096;
const A: u64 = PAGE;
const B: u64 = 2 * PAGE;
const C: u64 = 3 * PAGE;
const CHUNKS: [(u64, u64); 5] = [
    (A, 4),
    (A + 0x200, 8),
    (A + 0x400, 1),
    (A + 0xff8, 16),
    (B + 0x800, 0x40),
];
const EDGES: [u64; 12] = [
    A,
    A + 4,
    A + 0x200,
    A + 0x208,
    A + 0x400,
    A + 0x401,
    A + 0xff8,
    B,
    B + 8,
    B + 0x800,
    B + 0x840,
    C,
];

#[repr(C, align(4096))]
struct Mem(core::cell::UnsafeCell<[u8; SIZE]>);
// SAFETY: one CPU; the guest's only thread owns these buffers.
unsafe impl Sync for Mem {}
static MEM: Mem = Mem(core::cell::UnsafeCell::new([0; SIZE]));
static MODEL: Mem = Mem(core::cell::UnsafeCell::new([0; SIZE]));
static LOCKED: Mem = Mem(core::cell::UnsafeCell::new([0; SIZE]));
#[repr(C, align(64))]
struct Buf(core::cell::UnsafeCell<[u8; 64]>);
// SAFETY: as above.
unsafe impl Sync for Buf {}
static SRC: Buf = Buf(core::cell::UnsafeCell::new([0; 64]));

fn init(o: u64) -> u8 {
    (o as u8).wrapping_mul(13) ^ ((o >> 8) as u8).wrapping_mul(7) ^ 0xa5
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum F {
    Strb,
    Strh,
    StrW,
    StrX,
    SturX,
    StrPre,
    StrPost,
    StpW,
    StpX,
    StpPre,
    StnpX,
    StrQ,
    StpQ,
    St1x1,
    St1x2,
    St1x4,
    St2,
    St3,
    St4,
    StlrX,
    StlrB,
    StxrX,
    StlxrW,
    StxpX,
    SwpX,
    LdaddX,
    CasX,
    CaspX,
    DcZva,
}

const FORMS: [F; 29] = [
    F::Strb,
    F::Strh,
    F::StrW,
    F::StrX,
    F::SturX,
    F::StrPre,
    F::StrPost,
    F::StpW,
    F::StpX,
    F::StpPre,
    F::StnpX,
    F::StrQ,
    F::StpQ,
    F::St1x1,
    F::St1x2,
    F::St1x4,
    F::St2,
    F::St3,
    F::St4,
    F::StlrX,
    F::StlrB,
    F::StxrX,
    F::StlxrW,
    F::StxpX,
    F::SwpX,
    F::LdaddX,
    F::CasX,
    F::CaspX,
    F::DcZva,
];

fn zva_block() -> u64 {
    let d: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, dczid_el0", out(reg) d, options(nomem, nostack)) };
    if d & 0x10 != 0 {
        0
    } else {
        4u64 << (d & 0xf)
    }
}

impl F {
    fn name(self) -> &'static str {
        match self {
            F::Strb => "strb",
            F::Strh => "strh",
            F::StrW => "str-w",
            F::StrX => "str-x",
            F::SturX => "stur-x",
            F::StrPre => "str-x-pre-index",
            F::StrPost => "str-x-post-index",
            F::StpW => "stp-w",
            F::StpX => "stp-x",
            F::StpPre => "stp-x-pre-index",
            F::StnpX => "stnp-x",
            F::StrQ => "str-q",
            F::StpQ => "stp-q",
            F::St1x1 => "st1-1reg",
            F::St1x2 => "st1-2reg",
            F::St1x4 => "st1-4reg",
            F::St2 => "st2",
            F::St3 => "st3",
            F::St4 => "st4",
            F::StlrX => "stlr-x",
            F::StlrB => "stlrb",
            F::StxrX => "ldxr-stxr-x",
            F::StlxrW => "ldaxr-stlxr-w",
            F::StxpX => "ldxp-stxp-x",
            F::SwpX => "swp-x",
            F::LdaddX => "ldadd-x",
            F::CasX => "cas-x",
            F::CaspX => "casp-x",
            F::DcZva => "dc-zva",
        }
    }
    fn len(self) -> u64 {
        match self {
            F::Strb | F::StlrB => 1,
            F::Strh => 2,
            F::StrW | F::StlxrW => 4,
            F::StpX | F::StpPre | F::StnpX | F::StrQ | F::St1x1 | F::StxpX | F::CaspX => 16,
            F::StpQ | F::St1x2 | F::St2 => 32,
            F::St3 => 48,
            F::St1x4 | F::St4 => 64,
            F::DcZva => zva_block(),
            _ => 8,
        }
    }
    /// Alignment the instruction needs (exclusives, atomics, acquire/release, DC ZVA's block).
    fn align(self) -> u64 {
        match self {
            F::StlrX | F::StxrX | F::SwpX | F::LdaddX | F::CasX => 8,
            F::StlxrW => 4,
            F::StxpX | F::CaspX => 16,
            F::DcZva => zva_block().max(1),
            _ => 1,
        }
    }
}

/// Execute `f` at `dst` with value `v`; returns (aborted, base register after, exclusive status).
fn exec(f: F, dst: u64, v: u64, old: u64, old2: u64) -> (bool, u64, u64) {
    let src = SRC.0.get() as u64;
    let nv = !v;
    let mut base = dst;
    let mut st = 0u64;
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY (every block): one store form to this module's pages at `dst` (inside MEM by the
    // caller's choice); vector registers are loaded from SRC in the same block. An abort is
    // taken by the guest's handler, which skips the single faulting instruction.
    unsafe {
        use core::arch::asm;
        match f {
            F::Strb => asm!("strb {v:w}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack)),
            F::Strh => asm!("strh {v:w}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack)),
            F::StrW => asm!("str {v:w}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack)),
            F::StrX => asm!("str {v}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack)),
            F::SturX => {
                asm!("stur {v}, [{d}, #-3]", d = in(reg) dst + 3, v = in(reg) v, options(nostack))
            }
            F::StrPre => {
                base = dst - 8;
                asm!("str {v}, [{d}, #8]!", d = inout(reg) base, v = in(reg) v, options(nostack))
            }
            F::StrPost => {
                asm!("str {v}, [{d}], #16", d = inout(reg) base, v = in(reg) v, options(nostack))
            }
            F::StpW => {
                asm!("stp {a:w}, {b:w}, [{d}]", d = in(reg) dst, a = in(reg) v, b = in(reg) nv,
                options(nostack))
            }
            F::StpX => asm!("stp {a}, {b}, [{d}]", d = in(reg) dst, a = in(reg) v, b = in(reg) nv,
                options(nostack)),
            F::StpPre => {
                base = dst - 16;
                asm!("stp {a}, {b}, [{d}, #16]!", d = inout(reg) base, a = in(reg) v, b = in(reg) nv,
                    options(nostack))
            }
            F::StnpX => {
                asm!("stnp {a}, {b}, [{d}]", d = in(reg) dst, a = in(reg) v, b = in(reg) nv,
                options(nostack))
            }
            F::StrQ => asm!("ldr q0, [{s}]", "str q0, [{d}]", d = in(reg) dst, s = in(reg) src,
                out("v0") _, options(nostack)),
            F::StpQ => {
                asm!("ldp q0, q1, [{s}]", "stp q0, q1, [{d}]", d = in(reg) dst, s = in(reg) src,
                out("v0") _, out("v1") _, options(nostack))
            }
            F::St1x1 => asm!("ld1 {{v0.16b}}, [{s}]", "st1 {{v0.16b}}, [{d}]", d = in(reg) dst,
                s = in(reg) src, out("v0") _, options(nostack)),
            F::St1x2 => asm!("ld1 {{v0.16b, v1.16b}}, [{s}]", "st1 {{v0.16b, v1.16b}}, [{d}]",
                d = in(reg) dst, s = in(reg) src, out("v0") _, out("v1") _, options(nostack)),
            F::St1x4 => asm!("ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{s}]",
                "st1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{d}]", d = in(reg) dst, s = in(reg) src,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, options(nostack)),
            F::St2 => asm!("ld1 {{v0.16b, v1.16b}}, [{s}]", "st2 {{v0.16b, v1.16b}}, [{d}]",
                d = in(reg) dst, s = in(reg) src, out("v0") _, out("v1") _, options(nostack)),
            F::St3 => asm!("ld1 {{v0.16b, v1.16b, v2.16b}}, [{s}]",
                "st3 {{v0.16b, v1.16b, v2.16b}}, [{d}]", d = in(reg) dst, s = in(reg) src,
                out("v0") _, out("v1") _, out("v2") _, options(nostack)),
            F::St4 => asm!("ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{s}]",
                "st4 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{d}]", d = in(reg) dst, s = in(reg) src,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, options(nostack)),
            F::StlrX => asm!("stlr {v}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack)),
            F::StlrB => {
                asm!("stlrb {v:w}, [{d}]", d = in(reg) dst, v = in(reg) v, options(nostack))
            }
            F::StxrX => {
                st = 1;
                for _ in 0..8 {
                    asm!("ldxr {o}, [{d}]", "stxr {s:w}, {v}, [{d}]", d = in(reg) dst, v = in(reg) v,
                        o = out(reg) _, s = inout(reg) st, options(nostack));
                    if st == 0 || !EXPECT_ABORT.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            F::StlxrW => {
                st = 1;
                for _ in 0..8 {
                    asm!("ldaxr {o:w}, [{d}]", "stlxr {s:w}, {v:w}, [{d}]", d = in(reg) dst,
                        v = in(reg) v, o = out(reg) _, s = inout(reg) st, options(nostack));
                    if st == 0 || !EXPECT_ABORT.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            F::StxpX => {
                st = 1;
                for _ in 0..8 {
                    asm!("ldxp {o1}, {o2}, [{d}]", "stxp {s:w}, {a}, {b}, [{d}]", d = in(reg) dst,
                        a = in(reg) v, b = in(reg) nv, o1 = out(reg) _, o2 = out(reg) _,
                        s = inout(reg) st, options(nostack));
                    if st == 0 || !EXPECT_ABORT.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            F::SwpX => asm!(".arch_extension lse", "swp {v}, {o}, [{d}]", d = in(reg) dst,
                v = in(reg) v, o = out(reg) _, options(nostack)),
            F::LdaddX => asm!(".arch_extension lse", "ldadd {v}, {o}, [{d}]", d = in(reg) dst,
                v = in(reg) v, o = out(reg) _, options(nostack)),
            F::CasX => asm!(".arch_extension lse", "cas {e}, {v}, [{d}]", d = in(reg) dst,
                v = in(reg) v, e = inout(reg) old => _, options(nostack)),
            F::CaspX => asm!(".arch_extension lse", "casp x4, x5, x6, x7, [{d}]", d = in(reg) dst,
                inout("x4") old => _, inout("x5") old2 => _, in("x6") v, in("x7") nv,
                options(nostack)),
            F::DcZva => asm!("dc zva, {d}", d = in(reg) dst, options(nostack)),
        }
    }
    let aborted = !EXPECT_ABORT.swap(false, Ordering::AcqRel);
    (aborted, base, st)
}

fn new_bytes(f: F, old: &[u8; 64], v: u64, out: &mut [u8; 64]) {
    // SAFETY: our own static.
    let src = unsafe { &*SRC.0.get() };
    let o8 = u64::from_le_bytes([
        old[0], old[1], old[2], old[3], old[4], old[5], old[6], old[7],
    ]);
    let pair = |a: u64, b: u64, out: &mut [u8; 64]| {
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..16].copy_from_slice(&b.to_le_bytes());
    };
    match f {
        F::StpW => {
            out[..4].copy_from_slice(&(v as u32).to_le_bytes());
            out[4..8].copy_from_slice(&(!v as u32).to_le_bytes());
        }
        F::StpX | F::StpPre | F::StnpX | F::StxpX | F::CaspX => pair(v, !v, out),
        F::StrQ | F::StpQ | F::St1x1 | F::St1x2 | F::St1x4 => out.copy_from_slice(src),
        F::St2 | F::St3 | F::St4 => {
            let k = match f {
                F::St2 => 2,
                F::St3 => 3,
                _ => 4,
            };
            for i in 0..16 {
                for j in 0..k {
                    out[k * i + j] = src[16 * j + i];
                }
            }
        }
        F::LdaddX => out[..8].copy_from_slice(&o8.wrapping_add(v).to_le_bytes()),
        F::DcZva => out.fill(0),
        _ => out[..8].copy_from_slice(&v.to_le_bytes()),
    }
}

fn first_diff(
    m: &[u8; SIZE],
    r: &core::ops::Range<usize>,
    expect: &dyn Fn(usize) -> u8,
    model: &[u8; SIZE],
) -> Option<usize> {
    let q = |a: &[u8; SIZE], i: usize| {
        u64::from_le_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    (0..SIZE).step_by(8).find_map(|i| {
        if (i + 8 <= r.start || i >= r.end) && q(m, i) == q(model, i) {
            return None;
        }
        (i..i + 8).find(|&x| m[x] != expect(x))
    })
}

pub fn run(bootargs: &str) -> ! {
    let word = |k: &str| {
        bootargs
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix(k))
    };
    let inject = word("policy=") == Some("inject");
    let stride = word("stride=")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let base = MEM.0.get() as u64;
    // SAFETY: our own statics, single-threaded; MEM is also written by the store forms through
    // raw addresses, which is why every read of it after a store goes through `m` re-borrowed
    // after the asm block (asm without `nomem` may write any memory).
    let (m, model, locked) =
        unsafe { (&mut *MEM.0.get(), &mut *MODEL.0.get(), &mut *LOCKED.0.get()) };
    for (i, b) in m.iter_mut().enumerate() {
        *b = init(i as u64);
    }
    let mut ok = roe(ROE_MPROTECT, base + C, 1) == 1;
    for &(o, n) in CHUNKS.iter() {
        ok &= roe(ROE_MPROTECT_CHUNK, base + o, n) == n;
        for x in o..o + n {
            locked[x as usize] = 1;
        }
    }
    locked[C as usize..].fill(1);
    model.copy_from_slice(m);
    if !ok {
        say!("FAIL matrix-locks: a lock hypercall failed");
        guest_exit(1);
    }
    say!(
        "matrix: policy={} stride={stride} dc-zva-block={}: pages at {base:#x} (Z plain, A/B chunk pages, C locked)",
        if inject { "inject" } else { "skip" },
        zva_block()
    );
    let (mut cases, mut index, mut bad, mut faults, mut partial) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for f in FORMS {
        let n = f.len();
        if n == 0 || n > 64 {
            say!(
                "matrix: {} skipped (DC ZVA prohibited, or its block is over 64 bytes)",
                f.name()
            );
            continue;
        }
        let mut last: Option<u64> = None;
        let mut form_cases = 0u64;
        for e in EDGES {
            for dst in e.saturating_sub(n)..=e {
                if dst % f.align() != 0
                    || dst < 16
                    || dst + n > SIZE as u64
                    || last.is_some_and(|l| dst <= l)
                {
                    continue;
                }
                last = Some(dst);
                index += 1;
                if !(index - 1).is_multiple_of(stride) {
                    continue;
                }
                cases += 1;
                form_cases += 1;
                let v =
                    (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_0f0f_3c3c_9696) | 0x0101;
                // SAFETY: our own static.
                let srcb = unsafe { &mut *SRC.0.get() };
                for (i, b) in srcb.iter_mut().enumerate() {
                    *b = (v >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(29);
                }
                let d = dst as usize;
                let nn = n as usize;
                let mut old = [0u8; 64];
                old[..nn].copy_from_slice(&model[d..d + nn]);
                let o8 = u64::from_le_bytes(old[..8].try_into().unwrap_or([0; 8]));
                let o16 = u64::from_le_bytes(old[8..16].try_into().unwrap_or([0; 8]));
                let mut new = [0u8; 64];
                new_bytes(f, &old, v, &mut new);
                let r = d..d + nn;
                let touches = r.clone().any(|x| locked[x] != 0);
                let changes = r.clone().any(|x| locked[x] != 0 && new[x - d] != model[x]);
                let (ab, base_after, st) = exec(f, base + dst, v, o8, o16);
                // SAFETY: re-borrow after the store (see above).
                let m = unsafe { &*MEM.0.get() };
                let esr = LAST_ESR.load(Ordering::Relaxed);
                if ab {
                    faults += 1;
                }
                let fault_ok = inject && touches && (esr & 0x3f) == 0x10;
                let store_ok = !inject || !changes;
                let stored = !ab;
                let expect = |model: &[u8; SIZE], x: usize| -> u8 {
                    if stored && r.contains(&x) && locked[x] == 0 {
                        new[x - d]
                    } else {
                        model[x]
                    }
                };
                let mut diff = first_diff(m, &r, &|x| expect(model, x), model);
                let crosses = dst / PAGE != (dst + n - 1) / PAGE;
                if ab && diff.is_some() && crosses {
                    let either =
                        |x: usize| m[x] == model[x] || (locked[x] == 0 && m[x] == new[x - d]);
                    diff = first_diff(m, &r, &|x| if either(x) { m[x] } else { model[x] }, model);
                    if diff.is_none() {
                        partial += 1;
                        model[r.clone()].copy_from_slice(&m[r.clone()]);
                    }
                }
                // Writeback and exclusive status.
                let want_base = match (f, ab) {
                    (F::StrPre, false) => base + dst,
                    (F::StrPre, true) => base + dst - 8,
                    (F::StpPre, false) => base + dst,
                    (F::StpPre, true) => base + dst - 16,
                    (F::StrPost, false) => base + dst + 16,
                    _ => base + dst,
                };
                let regs_ok = base_after == want_base && (ab || st == 0);
                let good = diff.is_none() && regs_ok && if ab { fault_ok } else { store_ok };
                if good {
                    if stored {
                        for x in r.clone() {
                            if locked[x] == 0 {
                                model[x] = new[x - d];
                            }
                        }
                    }
                } else {
                    bad += 1;
                    if bad <= 20 {
                        let at = diff.unwrap_or(0);
                        say!(
                            "FAIL matrix {} dst=Z+{dst:#x} len={n}: abort={ab} esr={esr:#x} (fault allowed {fault_ok}, store allowed {store_ok}); base {base_after:#x} want {want_base:#x}, status {st}; byte Z+{at:#x} is {:#x}, expected {:#x}",
                            f.name(),
                            m[at],
                            expect(model, at)
                        );
                    }
                    if bad <= 3 {
                        for x in r.clone() {
                            say!(
                                "  Z+{x:#x}: is {:#x}, was {:#x}, store {:#x}, locked {}",
                                m[x],
                                model[x],
                                new[x - d],
                                locked[x]
                            );
                        }
                    }
                    model.copy_from_slice(m);
                }
            }
        }
        say!("matrix: {} at {form_cases} offsets", f.name());
    }
    let nlocked = locked.iter().filter(|&&b| b != 0).count();
    let failed = u32::from(bad != 0);
    if bad == 0 {
        say!("PASS matrix-all-cases: {cases} cases, {faults} aborts ({partial} after a partial write before a page edge), every byte of the 4 pages as the model says ({nlocked} locked bytes)");
    } else {
        say!("FAIL matrix-all-cases: {bad} of {cases} cases differ from the model");
    }
    say!("matrix: {cases} cases: {failed} check(s) failed");
    guest_exit(failed)
}
