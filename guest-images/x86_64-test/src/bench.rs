//! `scenario=bench:ROW`: one benchmark row of `cargo xtask bench` (docs/bench.md).
//!
//! Each run measures one row, so that the difference between Bulwark's end-of-run counters for
//! this run and for a `bench:none` run is exactly the exits of the row. Every run therefore
//! prints exactly the same number of characters (fixed-width numbers, the row name padded), so
//! the guest's own console output costs the same exits in every run.
//!
//! Time is RDTSC: Bochs with `clock: sync=none` advances the TSC with executed instructions.
//! The guest calibrates it with a `dec`/`jnz` loop of known length and prints raw ticks; xtask
//! turns them into instructions.
//!
//! Output (one line): `bench: row=NAME calib=C n=N s=T0,..,T4 ops=O setup=S bare=B`
//! * `calib`: TSC ticks of 1,000,000 instructions;
//! * `n`: operations (or pages) per sample, `s`: ticks per sample (5 samples after one warm-up);
//! * `ops`: operations that exit by design (warm-up included), `setup`: exits outside them;
//! * `bare`: 1 when no Bulwark is underneath (CPUID 0x40000000 lacks its signature).

use crate::Com1;
use bulwark_abi::cpuid as bcpuid;
use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION};
use core::fmt::Write;

/// Iterations of the calibration loop: 2 instructions each (`dec`, `jnz`), 1,000,000 in all.
const CALIB_ITERS: u64 = 500_000;
const SAMPLES: usize = 5;

/// Memory the MPROTECT rows lock (identity mapped, guest RAM outside Bulwark's region
/// [64 MiB, 96 MiB)): small rows at 16 MiB, the 1 GiB row at 128 MiB.
const SMALL_BASE: u64 = 0x0100_0000;
const BIG_BASE: u64 = 0x0800_0000;
const BIG_PAGES: u64 = 262_144;
/// Page for the skipped-write rows and the chunk page.
const WRITE_PAGE: u64 = 0x0300_0000;
const CHUNK_PAGE: u64 = 0x0300_1000;
/// Workload buffer (1 MiB).
const WORK_BUF: u64 = 0x0310_0000;

pub fn handles(s: &str) -> bool {
    s.starts_with("bench:")
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn calibrate() -> u64 {
    let t0 = rdtsc();
    // SAFETY: a register-only loop.
    unsafe {
        core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) CALIB_ITERS => _, options(nomem, nostack));
    }
    rdtsc() - t0
}

fn bare() -> bool {
    let s = crate::cpuid(bcpuid::LEAF_SIGNATURE, 0);
    !bcpuid::is_bulwark(s[1], s[2], s[3])
}

/// End the run: under Bulwark via port 0xf4; bare Bochs via its shutdown port after the UART
/// has sent everything.
fn finish(bare: bool, status: u32) -> ! {
    if bare {
        let mut n = 0u32;
        while crate::inb(crate::COM1 + 5) & 0x40 == 0 && n < 10_000_000 {
            n += 1;
        }
        for b in b"Shutdown" {
            crate::outb(0x8900, *b);
        }
    }
    crate::exit(status)
}

fn wr(addr: u64, v: u64) {
    // SAFETY: `addr` is identity-mapped guest RAM reserved for the benchmark (constants above).
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

fn rd(addr: u64) -> u64 {
    // SAFETY: as in `wr`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn roe(op: u64, a1: u64, a2: u64) -> u64 {
    crate::vmcall(KVM_HC_ROE, op, a1, a2)
}

/// One warm-up and [`SAMPLES`] measured runs of `f` (which performs `n` operations each).
fn samples(mut f: impl FnMut(usize)) -> [u64; SAMPLES] {
    f(0);
    let mut s = [0; SAMPLES];
    for (i, v) in s.iter_mut().enumerate() {
        let t0 = rdtsc();
        f(i + 1);
        *v = rdtsc() - t0;
    }
    s
}

/// The compute-and-memory workload: an LCG drives reads and writes over a 1 MiB buffer.
pub fn workload() -> u64 {
    let mut x: u64 = 0x1234_5678;
    let mut acc: u64 = 0;
    for _ in 0..200_000u32 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let off = (x >> 33) & 0xf_fff8;
        let p = WORK_BUF + off;
        // SAFETY: inside the 1 MiB workload buffer (identity-mapped guest RAM).
        let v = unsafe { core::ptr::read_volatile(p as *const u64) };
        acc = acc.rotate_left(7) ^ v ^ x;
        wr(p, acc);
    }
    acc
}

pub fn run(scenario: &str) -> ! {
    let row = scenario.strip_prefix("bench:").unwrap_or("none");
    let bare = bare();
    if bare {
        // Without Bulwark's emulated COM1 the UART keeps its reset format (5 data bits in
        // Bochs): 8N1, divisor 1.
        for (reg, v) in [(3u16, 0x80u8), (0, 1), (1, 0), (3, 0x03), (2, 0)] {
            crate::outb(crate::COM1 + reg, v);
        }
    }
    let calib = calibrate();
    let mut ops = 0u64;
    let mut setup = 0u64;
    let mut n = 0u64;
    let mut s = [0u64; SAMPLES];
    let needs_bulwark = !matches!(row, "none" | "workload");
    if bare && needs_bulwark {
        say!("bench: row {row} needs Bulwark (running bare)");
        finish(bare, 2)
    }
    match row {
        "none" => {}
        "hypercall" => {
            n = 1000;
            s = samples(|_| {
                for _ in 0..n {
                    roe(ROE_VERSION, 0, 0);
                }
            });
            ops = n * (SAMPLES as u64 + 1);
        }
        "cpuid" => {
            n = 1000;
            s = samples(|_| {
                for _ in 0..n {
                    core::hint::black_box(crate::cpuid(bcpuid::LEAF_SIGNATURE, 0));
                }
            });
            ops = n * (SAMPLES as u64 + 1);
        }
        "write-skip" => {
            // Bulwark's command line decides logging (ratelimit); the policy is skip.
            wr(WRITE_PAGE + 8, 0x5a5a);
            setup = 1;
            if roe(ROE_MPROTECT, WRITE_PAGE, 1) != 1 {
                say!("bench: ROE_MPROTECT of the write page failed");
                finish(bare, 3)
            }
            n = 100;
            s = samples(|_| {
                for i in 0..n {
                    wr(WRITE_PAGE + 8, i);
                }
            });
            ops = n * (SAMPLES as u64 + 1);
            let now = rd(WRITE_PAGE + 8);
            if now != 0x5a5a {
                say!("bench: protected word changed from 0x5a5a to {now:#x}: writes not blocked");
                finish(bare, 3)
            }
        }
        "mprotect-1" | "mprotect-512" => {
            n = if row == "mprotect-1" { 1 } else { 512 };
            let mut bad = 0u64;
            s = samples(|k| {
                let start = SMALL_BASE + (k as u64) * 512 * 4096;
                if roe(ROE_MPROTECT, start, n) != n {
                    bad += 1;
                }
            });
            if bad != 0 {
                say!("bench: {bad} ROE_MPROTECT call(s) failed");
                finish(bare, 3)
            }
            ops = SAMPLES as u64 + 1;
        }
        "mprotect-262144" => {
            // One call (1 GiB cannot be locked more than once per run): every sample slot holds
            // the same measurement, the repeat is the second run.
            n = BIG_PAGES;
            let t0 = rdtsc();
            let r = roe(ROE_MPROTECT, BIG_BASE, BIG_PAGES);
            let t = rdtsc() - t0;
            if r != BIG_PAGES {
                say!(
                    "bench: ROE_MPROTECT of {BIG_PAGES} pages returned {}",
                    r as i64
                );
                finish(bare, 3)
            }
            s = [t; SAMPLES];
            ops = 1;
        }
        "chunk-clean" | "chunk-mixed" => {
            // 8 protected bytes at offset 0: sub-page 0 (bytes 0..128) is mixed; the clean
            // write goes to sub-page 16 (offset 2048), the mixed one to offset 64.
            for i in 0..512 {
                wr(CHUNK_PAGE + 8 * i, 0);
            }
            // Set-up exits: the CHUNK call, the hypercall and the store onto the protected bytes,
            // which costs 2 on x86 (the fault and the single step of the skip path: the write rows
            // measure 2 exits per skipped store).
            setup = 4;
            if roe(ROE_MPROTECT_CHUNK, CHUNK_PAGE, 8) != 8 {
                say!("bench: ROE_MPROTECT_CHUNK failed");
                finish(bare, 3)
            }
            let at = CHUNK_PAGE + if row == "chunk-clean" { 2048 } else { 64 };
            n = 100;
            s = samples(|_| {
                for i in 0..n {
                    wr(at, i);
                }
            });
            // Then one VM exit (a hypercall) and one store onto the protected bytes: it must be
            // refused. The exit first: Bochs' SPP lets a protected store through right after
            // SPP-allowed stores when no exit intervenes (docs/x86_64-spp.md).
            roe(ROE_VERSION, 0, 0);
            wr(CHUNK_PAGE, 0xdead);
            let (p0, v) = (rd(CHUNK_PAGE), rd(at));
            if p0 != 0 || v != n - 1 {
                say!("bench: chunk page wrong after the writes: protected word {p0:#x} (want 0), written word {v:#x} (want {:#x})", n - 1);
                finish(bare, 3)
            }
            ops = n * (SAMPLES as u64 + 1);
        }
        "footprint" => {
            // The protections of the rows above except the 1 GiB one, for the page-table count.
            let mut bad = u64::from(roe(ROE_MPROTECT, WRITE_PAGE, 1) != 1);
            for k in 0..6u64 {
                bad += u64::from(roe(ROE_MPROTECT, SMALL_BASE + k * 512 * 4096, 512) != 512);
            }
            bad += u64::from(roe(ROE_MPROTECT_CHUNK, CHUNK_PAGE, 8) != 8);
            setup = 8;
            if bad != 0 {
                say!("bench: {bad} protection call(s) failed");
                finish(bare, 3)
            }
        }
        "line-mac" => {
            // The tag of one violation line, with Bulwark's own code (docs/console.md): the
            // MAC over the sequence number and a typical 105-byte line.
            const LINE: &[u8] = b"bulwark: violation kind=roe access=write gpa=0x40080800 gva=0x40080800 ip=0x40092da0 vcpu=0 action=skip";
            const KEY: [u8; 16] = *b"bench line key!!";
            n = 1000;
            s = samples(|k| {
                for i in 0..n {
                    core::hint::black_box(bulwark_abi::logauth::mac(
                        core::hint::black_box(&KEY),
                        k as u64 * n + i,
                        core::hint::black_box(LINE),
                    ));
                }
            });
            ops = n * (SAMPLES as u64 + 1);
        }
        "workload" => {
            n = 1;
            s = samples(|_| {
                core::hint::black_box(workload());
            });
        }
        other => {
            say!("bench: unknown row {other:?}");
            finish(bare, 4)
        }
    }
    say!(
        "bench: row={row:<16} calib={calib:012} n={n:012} s={:012},{:012},{:012},{:012},{:012} ops={ops:012} setup={setup:012} bare={}",
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        u8::from(bare)
    );
    finish(bare, 0)
}
