//! `scenario=bench:ROW` in the bootargs: one benchmark row of `cargo xtask bench`
//! (docs/bench.md). Same protocol as the x86 guest's bench module: one row per run, one result
//! line, raw counter ticks that xtask converts to instructions with the calibration.
//!
//! Time is CNTVCT_EL0: QEMU with `-icount shift=0` advances it with executed instructions. The
//! calibration is a `subs`/`b.ne` loop of 1,000,000 instructions.
//!
//! Output: `bench: row=NAME calib=C n=N s=T0,..,T4 ops=O setup=S bare=B` (see the x86 module).
//! Bare (QEMU without `virtualization=on`, no Bulwark): the vendor-hyp UID call is undefined
//! there (no EL2) or does not answer Bulwark's UID; rows that need Bulwark are refused.

use crate::Uart;
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION};
use bulwark_abi::smccc as ids;
use core::fmt::Write;
use core::sync::atomic::Ordering;

const CALIB_ITERS: u64 = 500_000;
const SAMPLES: usize = 5;

/// Guest RAM (IPA) the rows use; the image sits at 0x40080000, the device tree at the top.
const WRITE_PAGE: u64 = 0x4100_0000;
const CHUNK_PAGE: u64 = 0x4100_1000;
const WORK_BUF: u64 = 0x4110_0000;
const SMALL_BASE: u64 = 0x4200_0000;
const BIG_BASE: u64 = 0x4800_0000;
const BIG_PAGES: u64 = 262_144;
/// `mprotect-4k`: 128 MiB of RAM from `BIG_BASE` (the 512 MiB machine has it), mapped with
/// 4 KiB pages at virtual `SMALL_VIEW` (level-1 entry 301 of the guest's identity map, unused
/// otherwise); the level-2 table and 64 level-3 tables at `PT_BASE`.
const SMALL_PAGES: u64 = 32_768;
const SMALL_VIEW_L1: u64 = 301;
const SMALL_VIEW: u64 = SMALL_VIEW_L1 << 30;
const PT_BASE: u64 = 0x4400_0000;

/// Map `SMALL_PAGES` 4 KiB pages at `SMALL_VIEW` to `BIG_BASE..` (normal memory, AttrIndx 1,
/// inner shareable, AF). Returns the level-1 entry it replaced.
fn map_4k_view() -> u64 {
    let l1: u64;
    // SAFETY: reading TTBR0_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) l1, options(nomem, nostack)) };
    let l1 = (l1 & 0x0000_ffff_ffff_f000) as *mut u64;
    let w = |a: u64, v: u64| {
        // SAFETY: `a` is in the table area at `PT_BASE` (identity-mapped guest RAM reserved for
        // the benchmark) or the guest's own level-1 table.
        unsafe { core::ptr::write_volatile(a as *mut u64, v) }
    };
    let tables = SMALL_PAGES / 512;
    for t in 0..tables {
        let l3 = PT_BASE + (1 + t) * 0x1000;
        w(PT_BASE + t * 8, l3 | 0b11);
        for i in 0..512 {
            w(l3 + i * 8, (BIG_BASE + (t * 512 + i) * 0x1000) | 0x707);
        }
    }
    for t in tables..512 {
        w(PT_BASE + t * 8, 0);
    }
    // SAFETY: entry `SMALL_VIEW_L1` of the guest's level-1 table (see above).
    let old = unsafe { core::ptr::read_volatile(l1.wrapping_add(SMALL_VIEW_L1 as usize)) };
    w(l1 as u64 + SMALL_VIEW_L1 * 8, PT_BASE | 0b11);
    // SAFETY: TLB maintenance for the guest's own tables.
    unsafe {
        core::arch::asm!(
            "dsb ish",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack)
        )
    };
    old
}

fn cntvct() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter (after an ISB so earlier instructions are done).
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Wait for the counter's next tick (62.5 MHz on QEMU virt: one tick is 16 instructions), so
/// a measurement starts at the same phase of the tick in every run.
fn tick_edge() -> u64 {
    let t = cntvct();
    loop {
        let u = cntvct();
        if u != t {
            return u;
        }
    }
}

fn calibrate() -> u64 {
    let t0 = tick_edge();
    // SAFETY: a register-only loop.
    unsafe {
        core::arch::asm!("2:", "subs {n}, {n}, #1", "b.ne 2b", n = inout(reg) CALIB_ITERS => _, options(nomem, nostack));
    }
    cntvct() - t0
}

/// True without Bulwark: the UID call either traps as undefined (no EL2: the exception handler
/// skips it) or returns something other than Bulwark's UID.
fn bare() -> bool {
    crate::EXPECT_ABORT.store(true, Ordering::Release);
    let r = crate::hvc(u64::from(ids::VENDOR_HYP_CALL_UID), 0, 0, 0);
    let trapped = !crate::EXPECT_ABORT.swap(false, Ordering::AcqRel);
    trapped || r != ids::KVM_UID.map(u64::from)
}

fn finish(bare: bool, status: u32) -> ! {
    if status == 0 || bare {
        crate::system_off()
    }
    crate::guest_exit(status)
}

/// One `str` of a register (a single-register store, so Bulwark can emulate it).
fn st(p: u64, v: u64) {
    // SAFETY: `p` is identity-mapped guest RAM reserved for the benchmark (constants above).
    unsafe { core::arch::asm!("str {v}, [{a}]", a = in(reg) p, v = in(reg) v, options(nostack)) }
}

fn rd(p: u64) -> u64 {
    // SAFETY: `p` is identity-mapped guest RAM reserved for the benchmark.
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

fn roe(op: u64, a1: u64, a2: u64) -> u64 {
    crate::hvc(u64::from(ids::BULWARK_ROE), op, a1, a2)[0]
}

fn samples(mut f: impl FnMut(usize)) -> [u64; SAMPLES] {
    f(0);
    let mut s = [0; SAMPLES];
    for (i, v) in s.iter_mut().enumerate() {
        let t0 = tick_edge();
        f(i + 1);
        *v = cntvct() - t0;
    }
    s
}

/// The compute-and-memory workload (same as the x86 guest's): an LCG drives reads and writes
/// over a 1 MiB buffer.
fn workload() -> u64 {
    let mut x: u64 = 0x1234_5678;
    let mut acc: u64 = 0;
    for _ in 0..200_000u32 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let p = WORK_BUF + ((x >> 33) & 0xf_fff8);
        // SAFETY: inside the 1 MiB workload buffer (identity-mapped guest RAM).
        let v = unsafe { core::ptr::read_volatile(p as *const u64) };
        acc = acc.rotate_left(7) ^ v ^ x;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p as *mut u64, acc) };
    }
    acc
}

pub fn run(row: &str) -> ! {
    let bare = bare();
    let calib = calibrate();
    let mut ops = 0u64;
    let mut setup = 0u64;
    let mut n = 0u64;
    let mut s = [0u64; SAMPLES];
    if bare && !matches!(row, "none" | "workload") {
        say!("bench: row {row} needs Bulwark (running bare)");
        finish(bare, 2)
    }
    let reps = SAMPLES as u64 + 1;
    match row {
        "none" => {}
        "hypercall" | "uid" => {
            let (nr, a) = if row == "uid" {
                (u64::from(ids::VENDOR_HYP_CALL_UID), 0)
            } else {
                (u64::from(ids::BULWARK_ROE), ROE_VERSION)
            };
            n = 1000;
            s = samples(|_| {
                for _ in 0..n {
                    core::hint::black_box(crate::hvc(nr, a, 0, 0));
                }
            });
            ops = n * reps;
        }
        "write-skip" => {
            st(WRITE_PAGE + 8, 0x5a5a);
            setup = 1;
            if roe(ROE_MPROTECT, WRITE_PAGE, 1) != 1 {
                say!("bench: ROE_MPROTECT of the write page failed");
                finish(bare, 3)
            }
            n = 100;
            s = samples(|_| {
                for i in 0..n {
                    st(WRITE_PAGE + 8, i);
                }
            });
            ops = n * reps;
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
                if roe(ROE_MPROTECT, SMALL_BASE + (k as u64) * (2 << 20), n) != n {
                    bad += 1;
                }
            });
            if bad != 0 {
                say!("bench: {bad} ROE_MPROTECT call(s) failed");
                finish(bare, 3)
            }
            ops = reps;
        }
        "mprotect-262144" => {
            n = BIG_PAGES;
            let t0 = tick_edge();
            let r = roe(ROE_MPROTECT, BIG_BASE, BIG_PAGES);
            let t = cntvct() - t0;
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
        "mprotect-4k" => {
            map_4k_view();
            // The view works: a word written through it is there at its physical address.
            st(SMALL_VIEW + 0x1238, 0x4b4b);
            if rd(BIG_BASE + 0x1238) != 0x4b4b {
                say!("bench: the 4 KiB view at {SMALL_VIEW:#x} does not map {BIG_BASE:#x}");
                finish(bare, 3)
            }
            n = SMALL_PAGES;
            let t0 = tick_edge();
            let r = roe(ROE_MPROTECT, SMALL_VIEW, SMALL_PAGES);
            let t = cntvct() - t0;
            if r != SMALL_PAGES {
                say!(
                    "bench: ROE_MPROTECT of {SMALL_PAGES} 4 KiB-mapped pages returned {}",
                    r as i64
                );
                finish(bare, 3)
            }
            s = [t; SAMPLES];
            ops = 1;
        }
        "chunk-clean" | "chunk-mixed" => {
            for i in 0..512 {
                st(CHUNK_PAGE + 8 * i, 0);
            }
            // Set-up exits: the CHUNK call, the hypercall and the store onto the protected bytes.
            setup = 3;
            if roe(ROE_MPROTECT_CHUNK, CHUNK_PAGE, 8) != 8 {
                say!("bench: ROE_MPROTECT_CHUNK failed");
                finish(bare, 3)
            }
            let at = CHUNK_PAGE + if row == "chunk-clean" { 2048 } else { 64 };
            n = 100;
            s = samples(|_| {
                for i in 0..n {
                    st(at, i);
                }
            });
            // Then one VM exit (a hypercall) and one store onto the protected bytes: it must be
            // refused. The exit first: Bochs' SPP lets a protected store through right after
            // SPP-allowed stores when no exit intervenes (docs/x86_64-spp.md).
            roe(ROE_VERSION, 0, 0);
            st(CHUNK_PAGE, 0xdead);
            let (p0, v) = (rd(CHUNK_PAGE), rd(at));
            if p0 != 0 || v != n - 1 {
                say!("bench: chunk page wrong after the writes: protected word {p0:#x} (want 0), written word {v:#x} (want {:#x})", n - 1);
                finish(bare, 3)
            }
            ops = n * reps;
        }
        "footprint" => {
            // The protections of the rows above except the 1 GiB one, for the page-table count.
            let mut bad = u64::from(roe(ROE_MPROTECT, WRITE_PAGE, 1) != 1);
            for k in 0..6u64 {
                bad += u64::from(roe(ROE_MPROTECT, SMALL_BASE + k * (2 << 20), 512) != 512);
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
            ops = n * reps;
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
