//! `scenario=hcfuzz [seed=N] [count=N]`: guest-level hypercall fuzzing (HVC and trapped SMC).
//!
//! The guest makes `count` calls with x0..x7 random 64-bit values where the class below leaves
//! them free, biased toward valid function IDs (SMCCC, PSCI, vendor-hyp discovery, MMIO guard,
//! ROE) and ROE sub-ops, and toward interesting addresses: the locked page and chunk, its own
//! level-1 table, IPAs without memory (where Bulwark's memory would be in a 1:1 map), device
//! IPAs, a sacrificial region, unaligned, untranslatable (beyond T0SZ, TTBR1 with EPD1,
//! non-canonical) and wrapping ranges. For every call it checks x0 (x0..x3 where the spec
//! defines them) against docs/aarch64.md's table; every 1024 calls and at the end it checksums
//! the locked page, the chunk and the level-1 descriptor that maps guest RAM (itself locked with
//! CHUNK).
//!
//! Exclusions, and why: PSCI SYSTEM_OFF and SYSTEM_RESET and Bulwark's GUEST_EXIT end or restart
//! the run (random function IDs whose low 32 bits name any known function are redrawn);
//! MMIO_GUARD_UNMAP of the UART granule would cut the guest off its console (the guest enrols
//! and maps the UART before fuzzing, then ENROLL/MAP/UNMAP are fuzzed with every other IPA);
//! ROE calls that would succeed name only the sacrificial region, the already locked bytes or
//! the level-1 table page (its descriptors have AF set and hardware A/D updates are off), since
//! ROE locks are irreversible. CPU_ON is fuzzed: with one vCPU it can only answer ALREADY_ON or
//! INVALID_PARAMETERS.

use bulwark_abi::smccc::{self as ids, Function, HypAbi};

use super::{guest_exit, Uart};
use core::fmt::Write;

const PAGE: u64 = 4096;
const EINVAL: u64 = (-22i64) as u64;
const NOT_SUPPORTED: u64 = u64::MAX;
const SAC_PAGES: u64 = 64;
/// Guest RAM ends here (QEMU virt, 512 MiB, less Bulwark's 32 MiB which has no IPA): the IPAs
/// from here to 0x6000_0000 are where Bulwark's memory would be in a 1:1 map.
const RAM_END: u64 = 0x5e00_0000;
const UART_IPA: u64 = 0x0900_0000;
const CHUNK_OFF: u64 = 100;
const CHUNK_LEN: u64 = 64;

#[repr(C, align(4096))]
struct Pages<const N: usize>(core::cell::UnsafeCell<[[u8; 4096]; N]>);
// SAFETY: one CPU; these pages are only touched through volatile accesses here.
unsafe impl<const N: usize> Sync for Pages<N> {}
static SAC: Pages<{ SAC_PAGES as usize }> =
    Pages(core::cell::UnsafeCell::new([[0; 4096]; SAC_PAGES as usize]));
/// [0]: the locked page, [1]: the chunk page.
static LOCKED: Pages<2> = Pages(core::cell::UnsafeCell::new([[0; 4096]; 2]));

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

/// HVC #0 or SMC #0 with x0..x7; returns x0..x3.
fn call(smc: bool, x: [u64; 8]) -> [u64; 4] {
    let (a, b, c, d);
    // SAFETY: an SMCCC call to Bulwark (SMC is trapped to EL2); x0..x3 carry results, SMCCC 1.1
    // lets the callee clobber x4..x17. The calls that can change state are bounded as the module
    // docs say.
    unsafe {
        if smc {
            core::arch::asm!(
                "smc #0",
                inout("x0") x[0] => a, inout("x1") x[1] => b, inout("x2") x[2] => c,
                inout("x3") x[3] => d, inout("x4") x[4] => _, inout("x5") x[5] => _,
                inout("x6") x[6] => _, inout("x7") x[7] => _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _,
                options(nostack)
            );
        } else {
            core::arch::asm!(
                "hvc #0",
                inout("x0") x[0] => a, inout("x1") x[1] => b, inout("x2") x[2] => c,
                inout("x3") x[3] => d, inout("x4") x[4] => _, inout("x5") x[5] => _,
                inout("x6") x[6] => _, inout("x7") x[7] => _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _,
                options(nostack)
            );
        }
    }
    [a, b, c, d]
}

fn hvc(x0: u32, x1: u64, x2: u64, x3: u64) -> u64 {
    call(false, [u64::from(x0), x1, x2, x3, 0, 0, 0, 0])[0]
}

fn locked() -> u64 {
    LOCKED.0.get() as u64
}
fn sac() -> u64 {
    SAC.0.get() as u64
}
fn l1() -> u64 {
    let t: u64;
    // SAFETY: reading TTBR0_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) t, options(nomem, nostack)) };
    t & 0x0000_ffff_ffff_f000
}

fn fnv(a: u64, len: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..len {
        // SAFETY: `a..a+len` lies in this module's statics or the guest's own L1 table.
        let b = unsafe { core::ptr::read_volatile((a + i) as *const u8) };
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn sums() -> [u64; 3] {
    [
        fnv(locked(), PAGE),
        fnv(locked() + PAGE + CHUNK_OFF, CHUNK_LEN),
        fnv(l1() + 8, 8),
    ]
}

/// What a call must answer.
#[derive(Clone, Copy)]
enum Want {
    X0(u64),
    /// x0 is one of these.
    Either(u64, u64),
    X0123([u64; 4]),
}

impl Want {
    fn ok(self, r: [u64; 4]) -> bool {
        match self {
            Want::X0(v) => r[0] == v,
            Want::Either(a, b) => r[0] == a || r[0] == b,
            Want::X0123(v) => r == v,
        }
    }
}

const CLASSES: [&str; 20] = [
    "random-fid",
    "smccc-version",
    "smccc-arch-features",
    "psci-version",
    "psci-features",
    "psci-cpu-on",
    "psci-cpu-off",
    "psci-affinity-info",
    "psci-migrate-info-type",
    "psci-cpu-suspend",
    "vendor-uid",
    "vendor-features",
    "mmio-guard-info-enroll",
    "mmio-guard-map-unmap",
    "roe-version-badop",
    "roe-mprotect-ok",
    "roe-mprotect-invalid",
    "roe-chunk-ok",
    "roe-chunk-invalid",
    "roe-noncanonical",
];

fn e(v: i64) -> u64 {
    v as u64
}

/// An address the guest's stage 1 does not translate: beyond T0SZ (39 bits) or in TTBR1's half
/// (EPD1 set).
fn unmapped(r: &mut Rng, aligned: bool) -> u64 {
    let mut a = if r.below(2) == 0 {
        (r.next() & 0x0000_ff7f_ffff_ffff) | (1 << 39)
    } else {
        r.next() | 0xffff_0000_0000_0000
    };
    if aligned {
        a &= !(PAGE - 1);
    }
    a
}

/// One call: (use SMC, x0..x7, class, expected answer).
fn draw(r: &mut Rng) -> (bool, [u64; 8], usize, Want) {
    let mut x = [0u64; 8];
    for v in x.iter_mut() {
        *v = r.next();
    }
    let smc = r.below(2) == 0;
    let class = r.below(CLASSES.len() as u64) as usize;
    let fid = |f: u32, hi: u64| u64::from(f) | (hi << 32);
    let roe = ids::BULWARK_ROE;
    let want = match class {
        0 => {
            while Function::decode(x[0] as u32, HypAbi::Seed).is_ok() {
                x[0] = r.next();
            }
            Want::X0(NOT_SUPPORTED)
        }
        1 => {
            x[0] = fid(ids::SMCCC_VERSION, x[0] >> 32);
            Want::X0(ids::SMCCC_VERSION_1_1)
        }
        2 => {
            x[0] = u64::from(ids::SMCCC_ARCH_FEATURES);
            if r.below(2) == 0 {
                let all = Function::ALL;
                x[1] = u64::from(all[r.below(all.len() as u64) as usize].encode());
            }
            Want::Either(0, NOT_SUPPORTED)
        }
        3 => {
            x[0] = u64::from(ids::PSCI_VERSION);
            Want::X0(ids::PSCI_VERSION_1_0)
        }
        4 => {
            x[0] = u64::from(ids::PSCI_FEATURES);
            if r.below(2) == 0 {
                let all = Function::ALL;
                x[1] = u64::from(all[r.below(all.len() as u64) as usize].encode());
            }
            Want::Either(0, NOT_SUPPORTED)
        }
        5 => {
            x[0] = u64::from(if r.below(2) == 0 {
                ids::PSCI_CPU_ON_32
            } else {
                ids::PSCI_CPU_ON_64
            });
            if r.below(4) == 0 {
                x[1] = 0x8000_0000 | r.below(4);
            }
            Want::Either(e(-4), e(-2))
        }
        6 => {
            x[0] = u64::from(ids::PSCI_CPU_OFF);
            Want::X0(e(-3))
        }
        7 => {
            x[0] = u64::from(if r.below(2) == 0 {
                ids::PSCI_AFFINITY_INFO_32
            } else {
                ids::PSCI_AFFINITY_INFO_64
            });
            if r.below(2) == 0 {
                x[1] = 0x8000_0000;
                x[2] = r.below(2);
            }
            Want::Either(0, e(-2))
        }
        8 => {
            x[0] = u64::from(ids::PSCI_MIGRATE_INFO_TYPE);
            Want::X0(2)
        }
        9 => {
            x[0] = u64::from(if r.below(2) == 0 {
                ids::PSCI_CPU_SUSPEND_32
            } else {
                ids::PSCI_CPU_SUSPEND_64
            });
            Want::X0(NOT_SUPPORTED)
        }
        10 => {
            x[0] = u64::from(ids::VENDOR_HYP_CALL_UID);
            Want::X0123(ids::KVM_UID.map(u64::from))
        }
        11 => {
            x[0] = u64::from(ids::VENDOR_HYP_FEATURES);
            // Bulwark runs with the default `hyp-abi=seed` here (docs/smccc.md).
            Want::X0123(ids::vendor_hyp_features(HypAbi::Seed).map(u64::from))
        }
        12 => {
            if r.below(2) == 0 {
                x[0] = u64::from(ids::MMIO_GUARD_INFO);
                Want::X0(4096)
            } else {
                x[0] = u64::from(ids::MMIO_GUARD_ENROLL);
                Want::X0(0)
            }
        }
        13 => {
            x[0] = u64::from(if r.below(2) == 0 {
                ids::MMIO_GUARD_MAP
            } else {
                ids::MMIO_GUARD_UNMAP
            });
            x[1] = match r.below(4) {
                0 => r.below(0x0900_0000 / PAGE) * PAGE, // device IPAs below the UART
                1 => locked(),                           // RAM: never a device
                2 => x[1] & !(PAGE - 1),
                _ => x[1],
            };
            if x[1] == UART_IPA {
                x[1] = UART_IPA + PAGE;
            }
            Want::Either(0, NOT_SUPPORTED)
        }
        14 => {
            x[0] = u64::from(roe);
            if r.below(2) == 0 {
                x[1] = 0;
                Want::X0(bulwark_abi::roe::ROE_IMPL_VERSION)
            } else {
                x[1] = match r.below(2) {
                    0 => 3 + r.below(100),
                    _ => x[1] | (1 << 32),
                };
                Want::X0(EINVAL)
            }
        }
        15 => {
            x[0] = u64::from(roe);
            x[1] = 1;
            match r.below(3) {
                0 => {
                    let first = r.below(SAC_PAGES);
                    let n = 1 + r.below(SAC_PAGES - first);
                    (x[2], x[3]) = (sac() + first * PAGE, n);
                }
                1 => (x[2], x[3]) = (locked(), 1),
                _ => (x[2], x[3]) = (l1(), 1),
            }
            Want::X0(x[3])
        }
        16 => {
            x[0] = u64::from(roe);
            x[1] = 1;
            let s = sac() + r.below(SAC_PAGES) * PAGE;
            (x[2], x[3]) = match r.below(7) {
                0 => (s + 1 + r.below(PAGE - 1), 1),
                1 => (s, 0),
                2 => (s, x[3] | (1 << 40)),
                3 => (RAM_END + r.below(8192) * PAGE, 1),
                4 => (unmapped(r, true), 1 + r.below(16)),
                5 => (0u64.wrapping_sub((1 + r.below(4)) * PAGE), 8),
                _ => (r.below(0x0900_0000 / PAGE) * PAGE, 1), // device IPA, identity mapped
            };
            Want::X0(EINVAL)
        }
        17 => {
            x[0] = u64::from(roe);
            x[1] = 2;
            match r.below(4) {
                0 | 1 => {
                    let o = r.below(SAC_PAGES * PAGE);
                    let n = 1 + r.below((SAC_PAGES * PAGE - o).min(3 * PAGE));
                    (x[2], x[3]) = (sac() + o, n);
                }
                2 => (x[2], x[3]) = (locked() + PAGE + CHUNK_OFF, CHUNK_LEN),
                _ => (x[2], x[3]) = (l1() + 8, 8),
            }
            Want::X0(x[3])
        }
        18 => {
            x[0] = u64::from(roe);
            x[1] = 2;
            (x[2], x[3]) = match r.below(5) {
                0 => (sac() + r.below(SAC_PAGES * PAGE), 0),
                1 => (sac() + r.below(SAC_PAGES * PAGE), x[3] | (1 << 45)),
                2 => (RAM_END + r.below(1 << 25), 1 + r.below(64)),
                3 => (unmapped(r, false), 1 + r.below(PAGE)),
                _ => (u64::MAX - r.below(64), 65 + r.below(1000)),
            };
            Want::X0(EINVAL)
        }
        _ => {
            // A sacrificial address with bits above the 39-bit VA size set (TBI0 is off).
            x[0] = u64::from(roe);
            let a = (sac() + r.below(SAC_PAGES) * PAGE) | (1 << (39 + r.below(25)));
            if r.below(2) == 0 {
                (x[1], x[2], x[3]) = (1, a, 1);
            } else {
                (x[1], x[2], x[3]) = (2, a + r.below(PAGE), 1 + r.below(64));
            }
            Want::X0(EINVAL)
        }
    };
    (smc, x, class, want)
}

pub fn run(bootargs: &str) -> ! {
    let arg = |k: &str, d: u64| {
        bootargs
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(d)
    };
    let seed = arg("seed=", 1);
    let count = arg("count=", 200_000);
    say!("hcfuzz: seed={seed} count={count}");
    let mut failed = 0u32;
    let mut check = |name: &str, ok: bool, what: core::fmt::Arguments| {
        if ok {
            say!("PASS {name}: {what}");
        } else {
            failed += 1;
            say!("FAIL {name}: {what}");
        }
    };
    for i in 0..2 * PAGE {
        // SAFETY: our own static.
        unsafe { core::ptr::write_volatile((locked() + i) as *mut u8, (i * 13 + 7) as u8) };
    }
    // MMIO guard: enrol with the UART mapped (no console output between the two calls).
    let en = hvc(ids::MMIO_GUARD_ENROLL, 0, 0, 0);
    let map = hvc(ids::MMIO_GUARD_MAP, UART_IPA, 0, 0);
    let roe = ids::BULWARK_ROE;
    let r1 = hvc(roe, 1, locked(), 1);
    let r2 = hvc(roe, 2, locked() + PAGE + CHUNK_OFF, CHUNK_LEN);
    let r3 = hvc(roe, 2, l1() + 8, 8);
    check(
        "hcfuzz-locks",
        en == 0 && map == 0 && r1 == 1 && r2 == CHUNK_LEN && r3 == 8,
        format_args!(
            "ENROLL -> {en:#x}, MAP(UART) -> {map:#x}, MPROTECT -> {r1:#x}, CHUNK -> {r2:#x}, CHUNK(L1 descriptor) -> {r3:#x}"
        ),
    );
    let before = sums();
    let mut rng = Rng(seed);
    let mut per = [0u64; CLASSES.len()];
    let mut bad = 0u64;
    let mut sums_bad = 0u64;
    for i in 0..count {
        let (smc, x, class, want) = draw(&mut rng);
        let got = call(smc, x);
        per[class] += 1;
        if !want.ok(got) {
            bad += 1;
            if bad <= 10 {
                say!(
                    "FAIL hcfuzz call {i} ({}, {}): x0..x3 = {:#x} {:#x} {:#x} {:#x} -> {:#x} {:#x} {:#x} {:#x}",
                    CLASSES[class],
                    if smc { "smc" } else { "hvc" },
                    x[0], x[1], x[2], x[3], got[0], got[1], got[2], got[3]
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
            "locked page {:#x}, chunk {:#x}, L1 descriptor {:#x}",
            after[0], after[1], after[2]
        ),
    );
    // SAFETY: a store to our own locked page; Bulwark skips it (violation=skip).
    unsafe { core::ptr::write_volatile(locked() as *mut u8, 0xee) };
    check(
        "hcfuzz-still-locked",
        sums() == before,
        format_args!("a store to the locked page changed nothing"),
    );
    for (n, c) in CLASSES.iter().zip(per) {
        say!("hcfuzz: class {n}: {c} calls");
    }
    say!("hcfuzz: seed={seed} count={count}: {failed} check(s) failed");
    guest_exit(failed)
}
