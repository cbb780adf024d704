//! Attacks from outside guests that once got past Bulwark on arm64 (issue 12), each replayed as a
//! scenario that must now be refused (docs/aarch64.md, "Device policy", "Ending a run", "Reads on
//! the guest's behalf", software path):
//!
//! * `scenario=fwcfg [fwcfg-target=ADDR]`: QEMU's fw_cfg DMA interface (FW_CFG_DMA at 0x09020010,
//!   the big-endian address of a `FWCfgDmaAccess`) asked to copy the fw_cfg signature into a
//!   ROE-locked page and into Bulwark's own memory at ADDR (xtask passes the host address of a
//!   string Bulwark prints at the end of the run). The device must be absent from the guest's
//!   device tree, every register access must abort, the locked page must be unchanged, an
//!   MMIO-guard MAP of the device (and of a virtio-mmio and the PCIe ECAM page) refused.
//! * `scenario=fwcfg-pass`: Bulwark runs with `passthrough=fw-cfg@9020000`: the device is in the
//!   tree and its (non-DMA) selector/data registers answer the signature "QEMU".
//! * `scenario=semihost`: semihosting calls (`hlt #0xf000`: SYS_WRITE0, SYS_OPEN of a host file,
//!   SYS_EXIT with a forged status) must be plain undefined instructions at EL1 (EC 0), served by
//!   nobody; the run then ends with the guest's PSCI SYSTEM_OFF, judged by Bulwark's line.
//! * `scenario=walk-noread`: a stage-1 table placed in a page the guest may not read
//!   (`attr=ADDR+4K:---`, the page `NOREAD_TABLE`, found by xtask in the ELF): a ROE call whose
//!   address walks through it gets -EINVAL, while the same walk through a readable copy of the
//!   table works.
//! * `scenario=third-page`: an SVE scatter store whose two elements touch three pages with
//!   protected bytes (the first element crosses a page end): the run must end with Bulwark's
//!   line, not cycle forever.

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::Ordering;

use super::{
    guest_exit, hvc, roe, system_off, Checks, Uart, ABORTS, EXPECT_ABORT, LAST_ESR, LAST_FAR,
    RAM_BASE, UART,
};
use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK};
use bulwark_abi::smccc as ids;

const FW_CFG: u64 = 0x0902_0000;
const FW_CFG_DATA: u64 = FW_CFG;
const FW_CFG_SELECTOR: u64 = FW_CFG + 8;
const FW_CFG_DMA: u64 = FW_CFG + 0x10;
/// FWCfgDmaAccess.control bits.
const DMA_READ: u32 = 0x02;
const DMA_SELECT: u32 = 0x08;
/// fw_cfg item 0: the signature "QEMU".
const FW_CFG_SIGNATURE: u32 = 0;
const VIRTIO_MMIO: u64 = 0x0a00_0000;
/// Bulwark's reserved memory below guest RAM: guest IPA x is host-physical x + this.
const BULWARK_RESERVED: u64 = 32 << 20;
const PCIE_ECAM: u64 = 0x40_1000_0000;

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u64; 512]>);
// SAFETY: one CPU; the pages are only touched through volatile accesses here (or never).
unsafe impl Sync for Page {}

static LOCKED: Page = Page(UnsafeCell::new([0x1111_1111_1111_1111; 512]));
static DMA_DESC: Page = Page(UnsafeCell::new([0; 512]));

fn addr(p: &Page) -> u64 {
    p.0.get() as u64
}

fn rd64(a: u64) -> u64 {
    // SAFETY: `a` is an 8-byte aligned address in one of the guest's own pages.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

fn wr64(a: u64, v: u64) {
    // SAFETY: as `rd64`.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

/// One 32-bit store to a device register that may abort; `Err(esr)` when it did.
fn try_w32(a: u64, v: u32) -> Result<(), u64> {
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: a single store to a device address in the guest's identity map; an abort is
    // taken by the guest's handler, which skips this one instruction.
    unsafe { core::arch::asm!("str {v:w}, [{a}]", a = in(reg) a, v = in(reg) v, options(nostack)) };
    if EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(())
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

/// One 16-bit store that may abort.
fn try_w16(a: u64, v: u16) -> Result<(), u64> {
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: as `try_w32`.
    unsafe {
        core::arch::asm!("strh {v:w}, [{a}]", a = in(reg) a, v = in(reg) u32::from(v), options(nostack))
    };
    if EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(())
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

/// One byte load that may abort.
fn try_r8(a: u64) -> Result<u8, u64> {
    let v: u32;
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: as `try_w32`; `v` is 0 when the load was skipped.
    unsafe {
        core::arch::asm!("mov {v:w}, #0", "ldrb {v:w}, [{a}]", a = in(reg) a, v = out(reg) v, options(nostack))
    };
    if EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(v as u8)
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

/// An external abort as Bulwark injects it: EC 0x25 (data abort, current EL), FSC 0x10.
fn is_sea(esr: u64) -> bool {
    (esr >> 26) & 0x3f == 0x25 && esr & 0x3f == 0x10
}

/// Names of the root's children in the guest's device tree that match `pred`.
fn dt_has(dtb: u64, pred: impl Fn(&str) -> bool) -> Option<bool> {
    // SAFETY: the device tree Bulwark gave (x0 at entry), size from its header, bounded.
    let size = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) }
        .get(4..8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)?;
    // SAFETY: as above.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(2 << 20)) };
    let tree = fdt::Fdt::new_unaligned_fallible(blob).ok()?;
    let root = tree.root().ok()?;
    let mut found = false;
    for n in root.all_nodes().ok()? {
        let (_, n) = n.ok()?;
        if pred(n.name().ok()?.name) {
            found = true;
        }
    }
    Some(found)
}

fn arg(bootargs: &str, key: &str) -> Option<u64> {
    let v = bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix(key))?;
    u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

fn finish(c: &Checks, what: &str) -> ! {
    if c.failed != 0 {
        say!("testguest: {what}: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: {what}: all checks passed");
    system_off()
}

/// Ask fw_cfg's DMA interface to copy the 4-byte signature to `target`, a host-physical
/// address (a device does not go through stage 2). Returns the aborts of the two register writes.
fn fwcfg_dma_read_signature(target: u64) -> [Result<(), u64>; 2] {
    let d = addr(&DMA_DESC);
    // FWCfgDmaAccess { be32 control; be32 length; be64 address }.
    let control = (FW_CFG_SIGNATURE << 16) | DMA_SELECT | DMA_READ;
    wr64(
        d,
        u64::from(control.to_be()) | u64::from(4u32.to_be()) << 32,
    );
    wr64(d + 8, target.to_be());
    // SAFETY: a barrier so the descriptor is in memory before the device is told about it.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
    // The DMA register takes the descriptor's address big-endian, high word then low word (the
    // low word starts the transfer), as Linux's driver writes it. The device reads the
    // descriptor at a host-physical address too.
    let d = d + BULWARK_RESERVED;
    [
        try_w32(FW_CFG_DMA, ((d >> 32) as u32).to_be()),
        try_w32(FW_CFG_DMA + 4, (d as u32).to_be()),
    ]
}

pub fn fwcfg(dtb: u64, bootargs: &str) -> ! {
    let mut c = Checks { failed: 0 };
    say!("testguest: fwcfg: the fw_cfg DMA attack");
    c.check(
        dt_has(dtb, |n| n == "fw-cfg") == Some(false),
        format_args!("fwcfg: no fw-cfg node in the guest's device tree"),
    );
    c.check(
        dt_has(dtb, |n| n == "virtio_mmio" || n == "pcie") == Some(false),
        format_args!("fwcfg: no virtio-mmio or PCIe node in the guest's device tree"),
    );
    c.check(
        dt_has(dtb, |n| n == "pl011") == Some(true),
        format_args!("fwcfg: the PL011 is in the guest's device tree"),
    );
    let page = addr(&LOCKED);
    let r = roe(ROE_MPROTECT, page, 1);
    c.check(r == 1, format_args!("fwcfg: ROE_MPROTECT {page:#x} -> {r}"));

    // 1. DMA into the ROE-locked page. Devices see host-physical addresses: guest RAM lies
    // Bulwark's 32 MiB above its IPA (docs/aarch64.md, memory plan).
    let before = ABORTS.load(Ordering::Relaxed);
    let [hi, lo] = fwcfg_dma_read_signature(page + BULWARK_RESERVED);
    c.check(
        matches!(hi, Err(e) if is_sea(e)) && matches!(lo, Err(e) if is_sea(e)),
        format_args!("fwcfg: both writes to FW_CFG_DMA abort ({hi:x?}, {lo:x?})"),
    );
    c.check(
        LAST_FAR.load(Ordering::Relaxed) == FW_CFG_DMA + 4
            && ABORTS.load(Ordering::Relaxed) == before + 2,
        format_args!("fwcfg: the aborts name FW_CFG_DMA"),
    );
    let v = rd64(page);
    c.check(
        (0..512).all(|i| rd64(page + 8 * i) == 0x1111_1111_1111_1111),
        format_args!("fwcfg: the ROE-locked page is unchanged (first word {v:#x}; \"QEMU\" would be 0x...554d4551)"),
    );

    // 2. DMA into Bulwark's own memory (no IPA maps it; a DMA master would not care).
    if let Some(t) = arg(bootargs, "fwcfg-target=") {
        let [hi, lo] = fwcfg_dma_read_signature(t);
        c.check(
            hi.is_err() && lo.is_err(),
            format_args!("fwcfg: DMA aimed at Bulwark's memory ({t:#x}) aborts"),
        );
    }

    // 3. The non-DMA registers: the selector and data register abort too (hidden entirely).
    let sel = try_w16(FW_CFG_SELECTOR, (FW_CFG_SIGNATURE as u16).to_be());
    let data = try_r8(FW_CFG_DATA);
    c.check(
        matches!(sel, Err(e) if is_sea(e)) && matches!(data, Err(e) if is_sea(e)),
        format_args!("fwcfg: selector write and data read abort ({sel:x?}, {data:x?})"),
    );

    // 4. MMIO guard: after enrolment a MAP of a hidden device is refused.
    let nsup = bulwark_abi::errno::smccc_ret::NOT_SUPPORTED_REG;
    let en = hvc(u64::from(ids::MMIO_GUARD_ENROLL), 0, 0, 0)[0];
    let uart = hvc(u64::from(ids::MMIO_GUARD_MAP), UART as u64, 0, 0)[0];
    c.check(
        en == 0 && uart == 0,
        format_args!("fwcfg: MMIO guard enrolled ({en:#x}), UART mapped ({uart:#x})"),
    );
    for (what, ipa) in [
        ("fw_cfg", FW_CFG),
        ("virtio-mmio", VIRTIO_MMIO),
        ("PCIe ECAM", PCIE_ECAM),
    ] {
        let r = hvc(u64::from(ids::MMIO_GUARD_MAP), ipa, 0, 0)[0];
        c.check(
            r == nsup,
            format_args!("fwcfg: MMIO_GUARD_MAP of {what} ({ipa:#x}) -> {r:#x} (NOT_SUPPORTED)"),
        );
    }
    let again = try_w32(FW_CFG_DMA + 4, 0);
    c.check(
        matches!(again, Err(e) if is_sea(e)),
        format_args!("fwcfg: FW_CFG_DMA still aborts after the refused MAP"),
    );
    finish(&c, "fwcfg")
}

pub fn fwcfg_pass(dtb: u64) -> ! {
    let mut c = Checks { failed: 0 };
    c.check(
        dt_has(dtb, |n| n == "fw-cfg") == Some(true),
        format_args!("fwcfg-pass: the fw-cfg node is in the guest's device tree"),
    );
    c.check(
        dt_has(dtb, |n| n == "virtio_mmio") == Some(false),
        format_args!("fwcfg-pass: virtio-mmio stays hidden"),
    );
    let sel = try_w16(FW_CFG_SELECTOR, (FW_CFG_SIGNATURE as u16).to_be());
    let mut sig = [0u8; 4];
    let mut ok = sel.is_ok();
    for b in sig.iter_mut() {
        match try_r8(FW_CFG_DATA) {
            Ok(v) => *b = v,
            Err(_) => ok = false,
        }
    }
    c.check(
        ok && &sig == b"QEMU",
        format_args!("fwcfg-pass: the fw_cfg signature reads {sig:x?} (\"QEMU\")"),
    );
    finish(&c, "fwcfg-pass")
}

/// A semihosting call: `hlt #0xf000` with x0 = operation, x1 = parameter. `Err(esr)` when it
/// raised an exception at EL1 (the handler skips it), `Ok(x0)` when something served it.
fn semihost(op: u64, param: u64) -> Result<u64, u64> {
    let r: u64;
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: the semihosting trap instruction; without a semihosting host it is undefined and
    // the guest's handler skips it (x0 unchanged).
    unsafe {
        core::arch::asm!("hlt #0xf000", inout("x0") op => r, in("x1") param, options(nostack))
    };
    if EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(r)
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

/// The file a served SYS_OPEN would create on the host (xtask checks it never appears).
pub const SEMIHOST_FILE: &[u8] = b"bulwark-semihosting-breach.txt\0";

pub fn semihosting() -> ! {
    let mut c = Checks { failed: 0 };
    say!("testguest: semihost: semihosting calls from EL1");
    let text = b"SEMIHOSTING-BREACH: written by the guest through the emulator\n\0";
    let w = semihost(0x04, text.as_ptr() as u64); // SYS_WRITE0
    let open_block: [u64; 3] = [
        SEMIHOST_FILE.as_ptr() as u64,
        4,
        SEMIHOST_FILE.len() as u64 - 1,
    ];
    let o = semihost(0x01, open_block.as_ptr() as u64); // SYS_OPEN "w"
    let exit_block: [u64; 2] = [0x20026, 0]; // ADP_Stopped_ApplicationExit, status 0
    let x = semihost(0x18, exit_block.as_ptr() as u64); // SYS_EXIT
    for (what, r) in [("SYS_WRITE0", w), ("SYS_OPEN", o), ("SYS_EXIT", x)] {
        // EC 0 (unknown reason), IL set: an undefined instruction taken at EL1.
        c.check(
            matches!(r, Err(esr) if esr >> 26 == 0 && esr & (1 << 25) != 0),
            format_args!(
                "semihost: {what} (hlt #0xf000) is an undefined instruction at EL1 ({r:x?})"
            ),
        );
    }
    finish(&c, "semihost")
}

/// A level-2 table (one 2 MiB block at the RAM base) the guest may not read
/// (`attr=NOREAD_TABLE+4K:---`), and a readable copy of it.
#[no_mangle]
static NOREAD_TABLE: Page = Page(UnsafeCell::new(l2_block_table()));
static READABLE_TABLE: Page = Page(UnsafeCell::new(l2_block_table()));

const fn l2_block_table() -> [u64; 512] {
    let mut t = [0u64; 512];
    // Entry 0: a 2 MiB block at the RAM base, Normal WB (AttrIndx 1), inner shareable, AF.
    t[0] = RAM_BASE | 0x705;
    t
}

/// Level-1 index of the view (1 GiB at 301 GiB: a device block nobody uses).
const L1_INDEX: u64 = 301;

fn l1() -> u64 {
    let t: u64;
    // SAFETY: reads the guest's own translation table base.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) t, options(nomem, nostack)) };
    t & 0x0000_ffff_ffff_f000
}

pub fn walk_noread() -> ! {
    let mut c = Checks { failed: 0 };
    let einval = (-22i64) as u64;
    let l1 = l1();
    let slot = l1 + 8 * L1_INDEX;
    let old = rd64(slot);
    let view = L1_INDEX << 30;
    // Control: through the readable copy the walk works (a chunk byte at RAM base + 0x10).
    wr64(slot, addr(&READABLE_TABLE) | 0b11);
    // SAFETY: makes the table edit visible to Bulwark's walker (no TLB use by the guest).
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    let r = roe(ROE_MPROTECT_CHUNK, view + 0x10, 1);
    c.check(
        r == 1,
        format_args!("walk-noread: ROE through a readable level-2 table works ({r:#x})"),
    );
    // The same through the table the guest may not read: refused, nothing read from it.
    let secret = core::ptr::addr_of!(NOREAD_TABLE) as u64;
    wr64(slot, secret | 0b11);
    // SAFETY: as above.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    let r = roe(ROE_MPROTECT_CHUNK, view + 0x20, 1);
    c.check(
        r == einval,
        format_args!("walk-noread: ROE through a level-2 table in an attr=--- page ({secret:#x}) -> {r:#x} (-EINVAL)"),
    );
    let r = roe(ROE_MPROTECT, view, 1);
    c.check(
        r == einval,
        format_args!("walk-noread: ROE_MPROTECT through it -> {r:#x} (-EINVAL)"),
    );
    wr64(slot, old);
    // SAFETY: as above.
    unsafe { core::arch::asm!("dsb ish", options(nostack)) };
    finish(&c, "walk-noread")
}

/// Three pages with a protected byte each; the first two adjacent.
#[repr(C, align(4096))]
struct Pages3(UnsafeCell<[u64; 3 * 512]>);
// SAFETY: one CPU; touched only by the scatter store below.
unsafe impl Sync for Pages3 {}
static THREE: Pages3 = Pages3(UnsafeCell::new([0; 3 * 512]));

pub fn third_page() -> ! {
    let base = THREE.0.get() as u64;
    let (p1, p2, p3) = (base, base + 4096, base + 8192);
    for p in [p1, p2, p3] {
        let r = roe(ROE_MPROTECT_CHUNK, p + 0x800, 1);
        if r != 1 {
            say!(
                "testguest: FAIL third-page: CHUNK {:#x} -> {r:#x}",
                p + 0x800
            );
            guest_exit(1)
        }
    }
    // SVE on at EL1 (CPACR_EL1.ZEN), 128-bit vectors (two 64-bit elements).
    // SAFETY: the guest's own EL1 configuration.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "mrs {t}, cpacr_el1",
            "orr {t}, {t}, #(3 << 16)",
            "msr cpacr_el1, {t}",
            "isb",
            "msr zcr_el1, xzr",
            "isb",
            t = out(reg) _,
            options(nostack)
        )
    };
    // Element 0 at the last 4 bytes of p1 (crossing into p2), element 1 in p3.
    let addrs: [u64; 2] = [p2 - 4, p3 + 8];
    say!(
        "testguest: third-page: an SVE scatter store to {:#x} (crossing into {p2:#x}) and {:#x}",
        addrs[0],
        addrs[1]
    );
    // SAFETY: writes 8 bytes at each of the two addresses, all inside THREE.
    unsafe {
        core::arch::asm!(
            ".arch_extension sve",
            "ptrue p0.d",
            "ld1d {{ z1.d }}, p0/z, [{a}]",
            "dup z0.d, {v}",
            "st1d {{ z0.d }}, p0, [z1.d]",
            a = in(reg) addrs.as_ptr(),
            v = in(reg) 0x5555_5555_5555_5555u64,
            out("p0") _,
            out("v0") _,
            out("v1") _,
            options(nostack)
        )
    };
    say!("testguest: third-page: still running after the scatter store");
    guest_exit(9)
}
