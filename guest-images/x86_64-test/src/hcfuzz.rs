//! `scenario=hcfuzz [seed=N] [count=N]`: guest-level hypercall fuzzing from 64-bit code.
//!
//! The guest makes `count` VMCALLs (RAX = number, RBX/RCX/RDX = a0..a2, RSI = a3; every register
//! random 64 bits where the class below leaves it free), biased toward valid numbers and
//! sub-ops and toward interesting addresses: the locked page and chunk, its own page-table pages,
//! Bulwark's region, a sacrificial region, unaligned, unmapped, non-canonical and wrapping
//! ranges. For every call it predicts the exact result from the spec (docs/protection-spec.md
//! §1) and counts mismatches. Before fuzzing it locks a page (through a window mapping of its
//! own), 64 bytes of another page (CHUNK) and the two PTEs that map them (CHUNK); every 1024
//! calls and at the end it checksums all three and compares with the values before fuzzing.
//!
//! Exclusions (ROE locks are irreversible): MPROTECT/CHUNK calls that would succeed only ever
//! name the sacrificial region, the already locked bytes, or the window's own page-table pages
//! (their accessed/dirty bits are preset, so the CPU never writes them), so the guest keeps
//! running. Random numbers that happen to equal KVM_HC_ROE (11) are redrawn as random.
//! The PRNG is splitmix64 seeded from `seed=` (default 1); the seed is printed first so that a
//! failure reproduces.

use core::arch::asm;

use bulwark_abi::roe::{
    KVM_HC_ROE, ROE_IMPL_VERSION, ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION,
};

use super::{exit, Com1, BULWARK_REGION};
#[allow(unused_imports)]
use core::fmt::Write as _;

const PAGE: u64 = 4096;
const EINVAL: u64 = (-22i64) as u64;
const ENOSYS: u64 = (-1000i64) as u64;
const SAC_PAGES: u64 = 64;
/// The window: PML4 slot 2 (nothing else maps there).
const WIN: u64 = 2 << 39;
const P: u64 = 1;
const RW: u64 = 2;
const ACC: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;

#[repr(C, align(4096))]
struct Pages<const N: usize>([[u8; 4096]; N]);

static mut SAC: Pages<{ SAC_PAGES as usize }> = Pages([[0; 4096]; SAC_PAGES as usize]);
/// [0]: the locked page, [1]: the chunk page.
static mut LOCKED: Pages<2> = Pages([[0; 4096]; 2]);
/// The window's PDPT, PD and PT.
static mut TABLES: Pages<3> = Pages([[0; 4096]; 3]);
const CHUNK_OFF: u64 = 100;
const CHUNK_LEN: u64 = 64;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn vmcall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    // SAFETY: VMCALL traps to Bulwark, which returns in RAX; RBX is swapped because the
    // compiler reserves it. The arguments are data only: the calls that can succeed name memory
    // this module owns (see the module docs).
    unsafe {
        asm!(
            "xchg rbx, {a0}",
            "vmcall",
            "xchg rbx, {a0}",
            a0 = inout(reg) a0 => _,
            inout("rax") nr => ret,
            in("rcx") a1,
            in("rdx") a2,
            in("rsi") a3,
            options(nostack)
        );
    }
    ret
}

fn roe(op: u64, a1: u64, a2: u64) -> u64 {
    vmcall(KVM_HC_ROE, op, a1, a2, 0)
}

fn base(p: *const u8) -> u64 {
    p as u64
}

fn locked_pa() -> u64 {
    base(core::ptr::addr_of!(LOCKED).cast())
}
fn sac() -> u64 {
    base(core::ptr::addr_of!(SAC).cast())
}
fn tables() -> u64 {
    base(core::ptr::addr_of!(TABLES).cast())
}

fn fnv(a: u64, len: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..len {
        // SAFETY: `a..a+len` lies in this module's statics (identity mapped).
        let b = unsafe { core::ptr::read_volatile((a + i) as *const u8) };
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Checksums of what the guest locked: the page, the chunk bytes, the two PTEs.
fn sums() -> [u64; 3] {
    let pt = tables() + 2 * PAGE;
    [
        fnv(locked_pa(), PAGE),
        fnv(locked_pa() + PAGE + CHUNK_OFF, CHUNK_LEN),
        fnv(pt, 16),
    ]
}

/// Build the window (PML4 slot 2 -> PDPT -> PD -> PT): WIN maps the locked page, WIN + 4 KiB
/// the chunk page. Accessed/dirty bits are preset so the CPU never writes these entries.
fn setup_window() {
    let t = tables();
    let e = P | RW | ACC;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = (cr3 & 0x000f_ffff_ffff_f000) as *mut u64;
    // SAFETY: our own tables (identity mapped statics); PML4 slot 2 is unused by entry.s;
    // single-threaded; CR3 is reloaded to flush the TLB.
    unsafe {
        let w = |a: u64, v: u64| core::ptr::write_volatile(a as *mut u64, v);
        w(t, (t + PAGE) | e);
        w(t + PAGE, (t + 2 * PAGE) | e);
        w(t + 2 * PAGE, locked_pa() | e | DIRTY);
        w(t + 2 * PAGE + 8, (locked_pa() + PAGE) | e | DIRTY);
        core::ptr::write_volatile(pml4.add(2), t | e);
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack));
    }
}

/// Classes of calls (indices into the per-class counters).
const CLASSES: [&str; 12] = [
    "random-nr",
    "roe-nr-high-bits",
    "version",
    "bad-subop",
    "mprotect-sacrificial",
    "mprotect-locked",
    "mprotect-invalid",
    "chunk-sacrificial",
    "chunk-locked",
    "chunk-invalid",
    "mprotect-page-tables",
    "noncanonical-alias",
];

/// An address that no mapping of this guest translates (PML4 slots 4..255 or 256..511, never 0
/// or 2), page aligned when `aligned`.
fn unmapped(r: &mut Rng, aligned: bool) -> u64 {
    let mut a = (r.next() & 0x0000_7fff_ffff_ffff) | (1 << 41);
    if r.below(2) == 0 {
        a |= 0xffff_8000_0000_0000;
    }
    if aligned {
        a &= !(PAGE - 1);
    }
    a
}

/// One call: (nr, a0, a1, a2, a3, class, expected result).
fn draw(r: &mut Rng) -> (u64, u64, u64, u64, u64, usize, u64) {
    let (a3, x1, x2) = (r.next(), r.next(), r.next());
    let class = r.below(CLASSES.len() as u64) as usize;
    let (nr, op, a1, a2, want) = match class {
        0 => {
            let mut nr = r.next();
            if nr == KVM_HC_ROE {
                nr = 0;
            }
            (nr, x1, x2, r.next(), ENOSYS)
        }
        1 => (
            KVM_HC_ROE | ((r.next() | 1) << 32),
            ROE_VERSION,
            x1,
            x2,
            ENOSYS,
        ),
        2 => (KVM_HC_ROE, ROE_VERSION, x1, x2, ROE_IMPL_VERSION),
        3 => {
            let op = match r.below(3) {
                0 => 3 + r.below(100),
                1 => r.next() | (1 << 32),
                _ => ROE_MPROTECT | (1 << (32 + r.below(32))),
            };
            (KVM_HC_ROE, op, x1, x2, EINVAL)
        }
        4 => {
            let first = r.below(SAC_PAGES);
            let n = 1 + r.below(SAC_PAGES - first);
            (KVM_HC_ROE, ROE_MPROTECT, sac() + first * PAGE, n, n)
        }
        5 => {
            // Already locked: idempotent success, through the window or the identity map.
            let a = if r.below(2) == 0 { WIN } else { locked_pa() };
            (KVM_HC_ROE, ROE_MPROTECT, a, 1, 1)
        }
        6 => {
            let s = sac() + r.below(SAC_PAGES) * PAGE;
            let (a, n) = match r.below(7) {
                0 => (s + 1 + r.below(PAGE - 1), 1),               // unaligned
                1 => (s, 0),                                       // zero pages
                2 => (s, x2 | (1 << 40)),                          // more pages than RAM
                3 => (BULWARK_REGION.0 + r.below(8192) * PAGE, 1), // not guest RAM
                4 => (unmapped(r, true), 1 + r.below(16)),         // does not translate
                5 => (0u64.wrapping_sub((1 + r.below(4)) * PAGE), 8), // wraps
                _ => (WIN + 2 * PAGE, 1),                          // window hole
            };
            (KVM_HC_ROE, ROE_MPROTECT, a, n, EINVAL)
        }
        7 => {
            let o = r.below(SAC_PAGES * PAGE);
            let n = 1 + r.below((SAC_PAGES * PAGE - o).min(3 * PAGE));
            (KVM_HC_ROE, ROE_MPROTECT_CHUNK, sac() + o, n, n)
        }
        8 => {
            let (a, n) = match r.below(3) {
                0 => (WIN + PAGE + CHUNK_OFF, CHUNK_LEN),
                1 => (locked_pa() + PAGE + CHUNK_OFF + 8, 8),
                _ => (tables() + 2 * PAGE, 16),
            };
            (KVM_HC_ROE, ROE_MPROTECT_CHUNK, a, n, n)
        }
        9 => {
            let (a, n) = match r.below(5) {
                0 => (sac() + r.below(SAC_PAGES * PAGE), 0),
                1 => (sac() + r.below(SAC_PAGES * PAGE), x2 | (1 << 45)),
                2 => (BULWARK_REGION.0 + r.below(1 << 25), 1 + r.below(64)),
                3 => (unmapped(r, false), 1 + r.below(PAGE)),
                _ => (u64::MAX - r.below(64), 65 + r.below(1000)),
            };
            (KVM_HC_ROE, ROE_MPROTECT_CHUNK, a, n, EINVAL)
        }
        10 => {
            // The window's own page-table pages: locking them is allowed (A/D preset).
            let a = tables() + r.below(3) * PAGE;
            (KVM_HC_ROE, ROE_MPROTECT, a, 1, 1)
        }
        _ => {
            // A sacrificial address made non-canonical (bit 50 set, bit 63 clear): it does
            // not translate, whatever bits 47:0 say.
            let a = (sac() + r.below(SAC_PAGES) * PAGE) | (1 << (48 + r.below(15)));
            if r.below(2) == 0 {
                (KVM_HC_ROE, ROE_MPROTECT, a, 1, EINVAL)
            } else {
                (
                    KVM_HC_ROE,
                    ROE_MPROTECT_CHUNK,
                    a + r.below(PAGE),
                    1 + r.below(64),
                    EINVAL,
                )
            }
        }
    };
    (nr, op, a1, a2, a3, class, want)
}

pub fn run(cmdline: &str) -> ! {
    let arg = |k: &str, d: u64| {
        cmdline
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(d)
    };
    let seed = arg("seed=", 1);
    let count = arg("count=", 20_000);
    say!("hcfuzz: seed={seed} count={count}");
    setup_window();
    let mut failed = 0u32;
    let mut check = |name: &str, ok: bool, what: core::fmt::Arguments| {
        if ok {
            say!("PASS {name}: {what}");
        } else {
            failed += 1;
            say!("FAIL {name}: {what}");
        }
    };
    // Fill, then lock: the page (through the window), the chunk, the two PTEs.
    for i in 0..2 * PAGE {
        // SAFETY: our own static, identity mapped.
        unsafe { core::ptr::write_volatile((locked_pa() + i) as *mut u8, (i * 13 + 7) as u8) };
    }
    let pt = tables() + 2 * PAGE;
    let r1 = roe(ROE_MPROTECT, WIN, 1);
    let r2 = roe(ROE_MPROTECT_CHUNK, WIN + PAGE + CHUNK_OFF, CHUNK_LEN);
    let r3 = roe(ROE_MPROTECT_CHUNK, pt, 16);
    check(
        "hcfuzz-locks",
        r1 == 1 && r2 == CHUNK_LEN && r3 == 16,
        format_args!("MPROTECT -> {r1:#x}, CHUNK -> {r2:#x}, CHUNK(PTEs) -> {r3:#x}"),
    );
    let before = sums();
    let mut rng = Rng(seed);
    let mut per = [0u64; CLASSES.len()];
    let mut bad = 0u64;
    let mut sums_bad = 0u64;
    for i in 0..count {
        let (nr, a0, a1, a2, a3, class, want) = draw(&mut rng);
        let got = vmcall(nr, a0, a1, a2, a3);
        per[class] += 1;
        if got != want {
            bad += 1;
            if bad <= 10 {
                say!(
                    "FAIL hcfuzz call {i} ({}): rax={nr:#x} rbx={a0:#x} rcx={a1:#x} rdx={a2:#x} rsi={a3:#x} -> {got:#x}, expected {want:#x}",
                    CLASSES[class]
                );
            }
        }
        if i % 1024 == 1023 && sums() != before {
            sums_bad += 1;
            if sums_bad <= 3 {
                say!("FAIL hcfuzz locked bytes changed by call {i} or before");
            }
        }
    }
    let after = sums();
    check(
        "hcfuzz-results",
        bad == 0,
        format_args!("{count} calls, {bad} result(s) outside the spec"),
    );
    check(
        "hcfuzz-checksums",
        sums_bad == 0 && after == before,
        format_args!(
            "locked page {:#x}, chunk {:#x}, PTEs {:#x}",
            after[0], after[1], after[2]
        ),
    );
    // The page is still locked: a store to it has no effect (violation=skip).
    // SAFETY: a store to our own locked page; Bulwark skips it.
    unsafe { core::ptr::write_volatile(WIN as *mut u8, 0xee) };
    check(
        "hcfuzz-still-locked",
        sums() == before,
        format_args!("a store to the locked page changed nothing"),
    );
    for (n, c) in CLASSES.iter().zip(per) {
        say!("hcfuzz: class {n}: {c} calls");
    }
    say!("hcfuzz: seed={seed} count={count}: {failed} check(s) failed");
    exit(failed)
}
