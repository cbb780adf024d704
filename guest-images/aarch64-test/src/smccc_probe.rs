//! `scenario=smccc-linux abi=seed|upstream`: the SMCCC discovery a stock Linux kernel performs,
//! replayed call for call from EL1, then the vendor-hyp ABI Bulwark was told to serve
//! (`hyp-abi=`, docs/smccc.md) used exactly as its client uses it.
//!
//! 1. `psci_probe()` / `arm_smccc_version_init()`: PSCI_VERSION; with PSCI 1.0+,
//!    PSCI_FEATURES(SMCCC_VERSION) must not be NOT_SUPPORTED, then SMCCC_VERSION through the PSCI
//!    conduit (HVC); >= 1.1 makes the kernel print `SMC Calling Convention v1.1` and use HVC as its
//!    SMCCC 1.1 conduit. `smccc_probe_trng()`: TRNG_VERSION (not served: negative).
//! 2. proton-pack.c: SMCCC_ARCH_FEATURES of ARCH_WORKAROUND_1/2/3; whatever the answer, it must
//!    be one SMCCC defines, and a SUCCESS must make the workaround call itself succeed.
//! 3. `kvm_init_hyp_services()`: VENDOR_HYP_CALL_UID must be KVM's, then the FEATURES bitmap read
//!    32 bits per register (x0 = 0..31 ... x3 = 96..127) into a service set;
//!    `kvm_arm_hyp_service_available(64)` (ROE) and 65 (GUEST_EXIT) must be true.
//! 4. Seed ABI: bits exactly 0, 2..=5; upstream MMIO_GUARD (7) is NOT_SUPPORTED and enrols
//!    nothing; the seed's INFO/ENROLL/MAP work. Upstream ABI: bits exactly 0, 2, 3, 4, 7;
//!    `pkvm_init_hyp_services()` (HYP_MEMINFO <= PAGE_SIZE), then the measured breach:
//!    MEM_SHARE and MEM_UNSHARE of a RAM page succeed and change nothing (no MMIO-guard
//!    enrolment: the unregistered RTC still reads), bad arguments fail, the seed's UNMAP number
//!    is NOT_SUPPORTED; then MMIO_GUARD(UART) enrols: the never-registered RTC aborts, and
//!    registers after MMIO_GUARD(RTC).

use core::fmt::Write as _;

use super::{guest_exit, hvc, probe, system_off, Checks, Uart, RAM_BASE, UART};
use bulwark_abi::errno::smccc_ret;
use bulwark_abi::roe::ROE_VERSION;
use bulwark_abi::smccc::{self as ids, Workaround};

/// QEMU virt's PL031 RTC (one 4 KiB granule): a device the guest never registers first.
const RTC: u64 = 0x0901_0000;
/// SMCCC TRNG_VERSION (Linux's smccc_probe_trng()).
const TRNG_VERSION: u32 = 0x8400_0050;
const NOT_SUPPORTED: u64 = smccc_ret::NOT_SUPPORTED as u64;
const INVALID_PARAMETER: u64 = smccc_ret::INVALID_PARAMETER as u64;

fn call(f: u32, a: u64) -> u64 {
    hvc(u64::from(f), a, 0, 0)[0]
}

/// A RAM page of the guest's own (identity-mapped: VA = IPA) for MEM_SHARE / MEM_UNSHARE.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static SHARED: Page = Page([0; 4096]);

pub fn run(bootargs: &str) -> ! {
    let upstream = bootargs
        .split_ascii_whitespace()
        .any(|t| t == "abi=upstream");
    let mut c = Checks { failed: 0 };

    // 1. arm_smccc_version_init() through the PSCI conduit.
    let pv = call(ids::PSCI_VERSION, 0);
    c.check(
        pv >> 16 >= 1,
        format_args!("smccc: PSCI_VERSION -> {pv:#x} (1.0+: the kernel asks PSCI_FEATURES)"),
    );
    let pf = call(ids::PSCI_FEATURES, u64::from(ids::SMCCC_VERSION)) as u32 as i32;
    c.check(
        pf == 0,
        format_args!("smccc: PSCI_FEATURES(SMCCC_VERSION) -> {pf} (0: SMCCC_VERSION exists)"),
    );
    let sv = call(ids::SMCCC_VERSION, 0) as u32;
    c.check(
        sv >= 0x1_0001 && sv >> 31 == 0,
        format_args!(
            "smccc: SMCCC_VERSION -> {sv:#x}: the kernel prints 'SMC Calling Convention v{}.{}', conduit HVC",
            sv >> 16,
            sv & 0xffff
        ),
    );
    let trng = call(TRNG_VERSION, 0) as u32 as i32;
    c.check(
        trng < 0,
        format_args!("smccc: TRNG_VERSION -> {trng} (not served)"),
    );

    // 2. proton-pack.c: the Spectre workaround IDs.
    for (n, w) in Workaround::ALL.iter().enumerate() {
        let a = call(ids::SMCCC_ARCH_FEATURES, u64::from(w.fid())) as u32 as i32;
        c.check(
            matches!(a, -2..=1),
            format_args!(
                "smccc: SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_{}) -> {a}",
                n + 1
            ),
        );
        if a == 0 {
            let r = call(w.fid(), 1) as u32 as i32;
            c.check(
                r != -1,
                format_args!("smccc: ARCH_WORKAROUND_{} -> {r} (served)", n + 1),
            );
        }
    }

    // 3. kvm_init_hyp_services().
    let uid = hvc(u64::from(ids::VENDOR_HYP_CALL_UID), 0, 0, 0);
    c.check(
        uid == ids::KVM_UID.map(u64::from),
        format_args!("smccc: VENDOR_HYP_CALL_UID is KVM's ({uid:x?})"),
    );
    let res = hvc(u64::from(ids::VENDOR_HYP_FEATURES), 0, 0, 0);
    let mut services = [0u32; 4];
    for (s, r) in services.iter_mut().zip(res) {
        *s = r as u32; // bits 0..31 of each register, as Linux reads them
    }
    say!(
        "testguest: smccc: hypervisor services detected ({:#010x} {:#010x} {:#010x} {:#010x})",
        res[3],
        res[2],
        res[1],
        res[0]
    );
    c.check(
        res.iter().all(|r| r >> 32 == 0),
        format_args!("smccc: FEATURES uses 32 bits per register"),
    );
    let available = |n: u32| ids::hyp_service_available(services, n);
    c.check(
        available(64) && available(65),
        format_args!(
            "smccc: kvm_arm_hyp_service_available(64) (ROE) and (65) (GUEST_EXIT) are true"
        ),
    );
    let v = hvc(u64::from(ids::BULWARK_ROE), ROE_VERSION, 0, 0)[0];
    c.check(
        v >= 1,
        format_args!("smccc: ROE through the SMCCC 1.1 conduit: VERSION -> {v}"),
    );
    let seed_bits: u32 = (1 << 0) | (0b1111 << 2);
    let upstream_bits: u32 = (1 << 0) | (0b111 << 2) | (1 << 7);

    // 4. The chosen vendor-hyp ABI.
    if upstream {
        c.check(
            services[0] == upstream_bits,
            format_args!(
                "smccc: upstream ABI: FEATURES x0 {:#x} = FEATURES, HYP_MEMINFO, MEM_SHARE, MEM_UNSHARE, MMIO_GUARD (no 5)",
                services[0]
            ),
        );
        let g = call(ids::PKVM_HYP_MEMINFO, 0);
        c.check(
            g == 4096,
            format_args!(
                "smccc: HYP_MEMINFO -> {g} (granule <= PAGE_SIZE: mem-crypt ops registered)"
            ),
        );
        let page = core::ptr::addr_of!(SHARED) as u64;
        let s = call(ids::PKVM_MEM_SHARE, page);
        // On the old numbering this was ENROLL: the guard would now cut off the RTC (and the
        // UART: this line would not print).
        c.check(
            s == 0 && probe(RTC, false).is_ok(),
            format_args!(
                "smccc: MEM_SHARE(RAM page {page:#x}) -> {s}; guard not enrolled (the unregistered RTC still reads)"
            ),
        );
        let u = call(ids::PKVM_MEM_UNSHARE, page);
        c.check(
            u == 0 && probe(RTC, false).is_ok(),
            format_args!(
                "smccc: MEM_UNSHARE(RAM page) -> {u} (was MAP, which refused RAM); nothing mapped"
            ),
        );
        for (what, ipa) in [
            ("a device page", RTC),
            ("an unaligned IPA", page + 8),
            ("no memory (past RAM)", 0x5e00_0000),
        ] {
            let s = call(ids::PKVM_MEM_SHARE, ipa);
            let u = call(ids::PKVM_MEM_UNSHARE, ipa);
            c.check(
                s == INVALID_PARAMETER && u == INVALID_PARAMETER,
                format_args!("smccc: MEM_SHARE/MEM_UNSHARE of {what} ({ipa:#x}) -> {:#x}/{:#x} (INVALID_PARAMETER)", s, u),
            );
        }
        let unmap = call(ids::MMIO_GUARD_UNMAP, UART as u64);
        c.check(
            unmap == NOT_SUPPORTED && probe(RTC, false).is_ok(),
            format_args!("smccc: the seed's UNMAP number (5) -> {unmap:#x} (NOT_SUPPORTED)"),
        );
        for (what, ipa) in [("RAM", RAM_BASE), ("an unaligned IPA", UART as u64 + 8)] {
            let r = call(ids::PKVM_MMIO_GUARD, ipa);
            c.check(
                r == INVALID_PARAMETER && probe(RTC, false).is_ok(),
                format_args!(
                    "smccc: MMIO_GUARD({what}) -> {r:#x} (INVALID_PARAMETER, no enrolment)"
                ),
            );
        }
        // The ioremap hook's call for the UART: registers it and enrols the guest.
        let m = call(ids::PKVM_MMIO_GUARD, UART as u64);
        c.check(
            m == 0,
            format_args!("smccc: MMIO_GUARD(UART) -> {m}: enrolled, the UART still prints"),
        );
        let r = probe(RTC, false);
        c.check(
            r.is_err(),
            format_args!("smccc: read of the never-registered RTC -> external abort ({r:x?})"),
        );
        let u = call(ids::PKVM_MEM_UNSHARE, UART as u64);
        c.check(
            u == INVALID_PARAMETER,
            format_args!("smccc: MEM_UNSHARE(UART) -> {u:#x}: no unregistering through it; the UART still prints"),
        );
        let m = call(ids::PKVM_MMIO_GUARD, RTC);
        let r = probe(RTC, false);
        c.check(
            m == 0 && r.is_ok(),
            format_args!("smccc: MMIO_GUARD(RTC) -> {m}; the RTC reads again"),
        );
    } else {
        c.check(
            services[0] == seed_bits,
            format_args!(
                "smccc: seed ABI: FEATURES x0 {:#x} = FEATURES, INFO, ENROLL, MAP, UNMAP (no 7)",
                services[0]
            ),
        );
        let r = call(ids::PKVM_MMIO_GUARD, RTC);
        c.check(
            r == NOT_SUPPORTED && probe(RTC, false).is_ok(),
            format_args!(
                "smccc: upstream MMIO_GUARD (7) -> {r:#x} (NOT_SUPPORTED), nothing enrolled"
            ),
        );
        let i = call(ids::MMIO_GUARD_INFO, 0);
        let e = call(ids::MMIO_GUARD_ENROLL, 0);
        let m = call(ids::MMIO_GUARD_MAP, UART as u64);
        c.check(
            i == 4096 && e == 0 && m == 0,
            format_args!("smccc: INFO -> {i}, ENROLL -> {e}, MAP(UART) -> {m}"),
        );
        let r = probe(RTC, false);
        c.check(
            r.is_err(),
            format_args!("smccc: read of the unmapped RTC after ENROLL -> external abort ({r:x?})"),
        );
    }
    if c.failed != 0 {
        say!("testguest: smccc: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: smccc: all checks passed");
    system_off()
}
