//! MMIO guard from the guest's side, the way a guest written for KVM's vendor-hypervisor services
//! probes and uses it (seed 001 numbering, docs/protection-spec §3): discovery through the
//! vendor-hyp Call UID (KVM's UID) and FEATURES (0x86000000, bits 2..5), INFO, ENROLL (twice),
//! MAP (unaligned, RAM, outside every device, twice), UNMAP (of an unmapped granule, unaligned),
//! device accesses before and after enrolment (read and write: synchronous external abort with
//! EC 0x25, FSC 0x10, ISV 0, WnR, FAR = the VA), and an LDP straddling two granules, which needs
//! both mapped.
//!
//! Enrolling cuts the guest off every device it has not mapped, the UART included: the UART is
//! mapped right after enrolling, before printing again.

use core::fmt::Write as _;
use core::sync::atomic::Ordering;

use super::{hvc, probe, Checks, Uart, LAST_FAR, UART};
use bulwark_abi::errno::smccc_ret::NOT_SUPPORTED_REG;
use bulwark_abi::smccc as ids;

/// QEMU virt's PL031 RTC (one 4 KiB granule).
const RTC: u64 = 0x0901_0000;
/// QEMU virt's GICv3 distributor: 64 KiB, reserved registers read as zero. Its first two
/// granules serve the straddling access.
const GICD: u64 = 0x0800_0000;

fn call(f: u32, a: u64) -> u64 {
    hvc(u64::from(f), a, 0, 0)[0]
}

/// `ldp` of two 8-byte registers at `addr`; `Err(esr)` when it aborted.
fn ldp(addr: u64) -> Result<(u64, u64), u64> {
    super::EXPECT_ABORT.store(true, Ordering::Release);
    let (a, b): (u64, u64);
    // SAFETY: deliberately reads device memory that may be refused; the handler skips the
    // single instruction when it aborts. `addr` is 8-byte aligned (device memory).
    unsafe {
        core::arch::asm!("ldp {a}, {b}, [{p}]", p = in(reg) addr, a = out(reg) a, b = out(reg) b, options(nostack))
    };
    if super::EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok((a, b))
    } else {
        Err(super::LAST_ESR.load(Ordering::Relaxed))
    }
}

/// The spec's abort: EC 0x25 (data abort, same EL), FSC 0x10, ISV 0, WnR as given.
fn sea(esr: u64, write: bool) -> bool {
    (esr >> 26) & 0x3f == 0x25
        && esr & 0x3f == 0x10
        && esr & (1 << 24) == 0
        && (esr & (1 << 6) != 0) == write
}

pub fn checks(c: &mut Checks) {
    // Discovery as a KVM guest does it.
    let uid = hvc(u64::from(ids::VENDOR_HYP_CALL_UID), 0, 0, 0);
    c.check(
        uid == ids::KVM_UID.map(u64::from),
        format_args!("vendor-hyp Call UID is KVM's ({uid:x?})"),
    );
    let f = hvc(u64::from(ids::VENDOR_HYP_FEATURES), 0, 0, 0);
    let want = (1 << 0) | (0b1111 << 2);
    c.check(
        f[0] & want == want,
        format_args!(
            "vendor-hyp FEATURES {:#x}: FEATURES and MMIO guard 2..5 present",
            f[0]
        ),
    );
    let info = call(ids::MMIO_GUARD_INFO, 0);
    c.check(
        info == 4096,
        format_args!("MMIO_GUARD_INFO -> {info} (granule)"),
    );

    // Before enrolment: devices work as without the guard; MAP/UNMAP refused.
    c.check(
        probe(RTC, false).is_ok() && super::roe::el0_read(RTC).is_ok(),
        format_args!("RTC reads before enrolment (EL1 and EL0)"),
    );
    let m = call(ids::MMIO_GUARD_MAP, RTC);
    let u = call(ids::MMIO_GUARD_UNMAP, UART as u64);
    c.check(
        m == NOT_SUPPORTED_REG && u == NOT_SUPPORTED_REG,
        format_args!("MAP/UNMAP before enrolment -> {m:#x} {u:#x} (NOT_SUPPORTED)"),
    );

    let e1 = call(ids::MMIO_GUARD_ENROLL, 0);
    let mu = call(ids::MMIO_GUARD_MAP, UART as u64);
    let e2 = call(ids::MMIO_GUARD_ENROLL, 0);
    c.check(
        e1 == 0 && mu == 0 && e2 == 0,
        format_args!("ENROLL -> {e1}, MAP(uart) -> {mu}, ENROLL again -> {e2}"),
    );
    for (what, ipa) in [
        ("unaligned", UART as u64 + 8),
        ("of RAM", super::RAM_BASE),
        ("outside every device (past RAM)", 0x5e00_0000),
        ("beyond the IPA space", 1 << 52),
    ] {
        let r = call(ids::MMIO_GUARD_MAP, ipa);
        c.check(
            r == NOT_SUPPORTED_REG,
            format_args!("MAP {what} ({ipa:#x}) -> {r:#x} (NOT_SUPPORTED)"),
        );
    }
    let again = call(ids::MMIO_GUARD_MAP, UART as u64);
    c.check(again == 0, format_args!("MAP(uart) twice -> {again}"));

    // Unmapped device after enrolment: not performed, synchronous external abort.
    for write in [false, true] {
        let r = probe(RTC, write);
        let esr = r.err().unwrap_or(0);
        let far = LAST_FAR.load(Ordering::Relaxed);
        c.check(
            r.is_err() && sea(esr, write) && far == RTC,
            format_args!(
                "{} of the unmapped RTC after enrolling -> external abort (esr {esr:#x}, far {far:#x})",
                if write { "write" } else { "read" }
            ),
        );
    }
    let r = super::roe::el0_read(RTC);
    let (esr, far) = r.err().unwrap_or((0, 0));
    c.check(
        (esr >> 26) & 0x3f == 0x24 && esr & 0x3f == 0x10 && esr & (1 << 24) == 0 && far == RTC,
        format_args!(
            "EL0 read of the unmapped RTC -> external abort from EL0 (esr {esr:#x}, far {far:#x})"
        ),
    );
    let m = call(ids::MMIO_GUARD_MAP, RTC);
    c.check(
        m == 0 && probe(RTC, false).is_ok() && super::roe::el0_read(RTC).is_ok(),
        format_args!("MAP(rtc) -> {m}, then the RTC reads (EL1 and EL0)"),
    );
    let u1 = call(ids::MMIO_GUARD_UNMAP, RTC);
    let after = probe(RTC, false);
    let u2 = call(ids::MMIO_GUARD_UNMAP, RTC);
    let u3 = call(ids::MMIO_GUARD_UNMAP, UART as u64 + 4);
    c.check(
        u1 == 0 && after.is_err() && u2 == NOT_SUPPORTED_REG && u3 == NOT_SUPPORTED_REG,
        format_args!(
            "UNMAP(rtc) -> {u1:#x}, then refused again; UNMAP of the unmapped granule -> {u2:#x}, unaligned -> {u3:#x}"
        ),
    );

    // An access straddling two granules needs both.
    let straddle = GICD + 0x1000 - 8;
    let m0 = call(ids::MMIO_GUARD_MAP, GICD);
    let r = ldp(straddle);
    c.check(
        m0 == 0 && r.is_err_and(|e| sea(e, false)),
        format_args!("LDP straddling a mapped and an unmapped granule -> external abort ({r:x?})"),
    );
    let m1 = call(ids::MMIO_GUARD_MAP, GICD + 0x1000);
    let r = ldp(straddle);
    c.check(
        m1 == 0 && r.is_ok(),
        format_args!("with both granules mapped the LDP completes ({r:x?})"),
    );
    let u = call(ids::MMIO_GUARD_UNMAP, GICD);
    let r = ldp(straddle);
    c.check(
        u == 0 && r.is_err_and(|e| sea(e, false)),
        format_args!("first granule unmapped again -> external abort ({r:x?})"),
    );
}

/// Survives a reboot: fixed RAM addresses below the image (RAM base + text_offset 0x80000), which
/// neither the image nor its BSS covers, so Bulwark does not reload them and the guest's own
/// start-up does not clear them.
const MARKER: u64 = super::RAM_BASE + 0x1_0000;
/// `MARKER` says "the first boot got as far as SYSTEM_RESET".
const MAGIC: u64 = 0xb01d_face_5e70_0001;
/// Boot counter of `scenario=reset-loop`.
const BOOTS: u64 = super::RAM_BASE + 0x1_8000;
/// A page of its own (outside the image) that the first boot ROE-locks.
const LOCKED: u64 = super::RAM_BASE + 0x2_0000;
/// A page the xtask scenario makes read-only with Bulwark's boot-time `attr=...:r--` (default
/// `violation=skip`): a store to it has no effect on either boot.
const ATTR_RO: u64 = super::RAM_BASE + 0x3_0000;

/// The boot-time `attr=` read-only page refuses a store (it keeps its value).
fn attr_ro_holds(c: &mut Checks, boot: &str) {
    let before = rd(ATTR_RO);
    wr(ATTR_RO, before ^ 0x4444);
    c.check(
        rd(ATTR_RO) == before,
        format_args!("{boot} boot: a store to the attr= read-only page {ATTR_RO:#x} has no effect"),
    );
}

fn rd(p: u64) -> u64 {
    // SAFETY: `p` is one of the fixed 8-byte aligned RAM addresses above (identity-mapped
    // normal memory, not part of the image).
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

fn wr(p: u64, v: u64) {
    // SAFETY: as in `rd`; one `str` instruction, so a skipped store is exactly one instruction.
    unsafe { core::arch::asm!("str {v}, [{a}]", a = in(reg) p, v = in(reg) v, options(nostack)) }
}

/// `scenario=mmio-reset`: MMIO guard and ROE state across PSCI SYSTEM_RESET (a real reboot).
/// First boot: enrol, map only the UART, read the unmapped RTC (external abort, Bulwark's
/// violation line), write `MAGIC` to `MARKER`, ROE-lock `LOCKED`, SYSTEM_RESET. Second boot
/// (it finds `MAGIC`): not enrolled (the RTC reads; UNMAP of the UART and MAP without ENROLL
/// are refused), `LOCKED` is writable again; then ENROLL + MAP work; SYSTEM_OFF (status 0).
/// Both boots check that the boot-time `attr=` page (`ATTR_RO`, needs Bulwark's
/// `attr=0x40030000+4K:r--`) refuses stores: the reboot keeps Bulwark's own attributes.
pub fn reset() -> ! {
    let mut c = Checks { failed: 0 };
    if rd(MARKER) != MAGIC {
        let e = call(ids::MMIO_GUARD_ENROLL, 0);
        let m = call(ids::MMIO_GUARD_MAP, UART as u64);
        c.check(
            e == 0 && m == 0,
            format_args!("first boot: enrolled ({e}), UART mapped ({m})"),
        );
        let r = probe(RTC, false);
        c.check(
            r.is_err_and(|esr| sea(esr, false)),
            format_args!("first boot: the unmapped RTC aborts ({r:x?})"),
        );
        wr(LOCKED, 0x1111);
        let l = hvc(
            u64::from(ids::BULWARK_ROE),
            bulwark_abi::roe::ROE_MPROTECT,
            LOCKED,
            1,
        )[0];
        wr(LOCKED, 0x2222);
        c.check(
            l == 1 && rd(LOCKED) == 0x1111,
            format_args!(
                "first boot: ROE_MPROTECT {LOCKED:#x} -> {l}, a write is refused (reads {:#x})",
                rd(LOCKED)
            ),
        );
        attr_ro_holds(&mut c, "first");
        wr(MARKER, MAGIC);
        if c.failed != 0 {
            super::guest_exit(1)
        }
        say!("testguest: first boot done, marker written; PSCI SYSTEM_RESET");
        hvc(u64::from(ids::PSCI_SYSTEM_RESET), 0, 0, 0);
        say!("testguest: FAIL SYSTEM_RESET returned");
        super::guest_exit(7)
    }
    say!("testguest: second boot: marker {MAGIC:#x} found at {MARKER:#x}");
    wr(MARKER, 0);
    c.check(
        probe(RTC, false).is_ok(),
        format_args!("second boot: the RTC reads (not enrolled)"),
    );
    let u = call(ids::MMIO_GUARD_UNMAP, UART as u64);
    c.check(
        u == NOT_SUPPORTED_REG,
        format_args!("second boot: UNMAP(uart) -> {u:#x} (NOT_SUPPORTED: no mappings)"),
    );
    let m = call(ids::MMIO_GUARD_MAP, RTC);
    c.check(
        m == NOT_SUPPORTED_REG,
        format_args!("second boot: MAP(rtc) without ENROLL -> {m:#x} (NOT_SUPPORTED)"),
    );
    wr(LOCKED, 0x3333);
    c.check(
        rd(LOCKED) == 0x3333,
        format_args!(
            "second boot: the formerly ROE-locked page is writable ({:#x})",
            rd(LOCKED)
        ),
    );
    attr_ro_holds(&mut c, "second");
    let e = call(ids::MMIO_GUARD_ENROLL, 0);
    let mu = call(ids::MMIO_GUARD_MAP, UART as u64);
    let r = probe(RTC, false);
    c.check(
        e == 0 && mu == 0 && r.is_err_and(|esr| sea(esr, false)),
        format_args!("second boot: ENROLL -> {e}, MAP(uart) -> {mu}, the RTC aborts again"),
    );
    if c.failed != 0 {
        super::guest_exit(1)
    }
    say!("testguest: reboot checks passed");
    super::system_off()
}

/// `scenario=reset-loop`: count boots in `BOOTS` and call SYSTEM_RESET on every one (for
/// Bulwark's `maxresets=` bound).
pub fn reset_loop() -> ! {
    let n = if rd(MARKER) == MAGIC {
        rd(BOOTS) + 1
    } else {
        1
    };
    wr(MARKER, MAGIC);
    wr(BOOTS, n);
    say!("testguest: reset-loop boot {n}; PSCI SYSTEM_RESET");
    hvc(u64::from(ids::PSCI_SYSTEM_RESET), 0, 0, 0);
    super::guest_exit(7)
}
