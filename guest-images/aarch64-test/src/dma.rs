//! DMA under Bulwark's SMMUv3 (issue 13; docs/aarch64.md, "SMMUv3: DMA under the locks").
//!
//! * `scenario=dma`: QEMU virt with `iommu=smmuv3` and a modern virtio-blk PCI device whose disk
//!   image xtask wrote with known bytes (sector `s`: [`sector_byte`]). The guest finds the PCIe
//!   host bridge in its device tree (no SMMU node, no `iommu-map`: it sees no IOMMU), enumerates
//!   bus 0 through ECAM, assigns the device's BARs in the 32-bit window, sets it up as a virtio
//!   1.0 device over its PCI capabilities (common cfg, notify, one split virtqueue; it accepts
//!   VIRTIO_F_VERSION_1 and VIRTIO_F_ACCESS_PLATFORM), and reads a sector:
//!   - (a) into an ordinary page: the sector's bytes arrive;
//!   - (b) into a page the device has just written (so the SMMU caches a writable translation)
//!     and the guest then ROE-locked: the page is unchanged (the lock re-derived the SMMU's
//!     table and invalidated its TLB before the hypercall returned; the SMMU refuses the write;
//!     Bulwark logs `violation kind=roe access=dma-write`);
//!   - (c) into the IPAs right past its RAM, where Bulwark's 32 MiB would lie in a 1:1 map
//!     (Bulwark's memory has no IPA): nothing can arrive there (the guest cannot read there
//!     either; Bulwark logs `kind=bulwark` and its later lines must be intact);
//!   - (a') once more, proving the device still works after the refusals.
//! * `scenario=dma-nopci`: QEMU virt without an SMMU: the guest's device tree has no PCIe node
//!   and the ECAM window aborts.

use core::cell::UnsafeCell;
use core::fmt::Write as _;

use super::{guest_exit, probe, roe, system_off, Checks, Uart};
use bulwark_abi::roe::ROE_MPROTECT;

/// QEMU virt's high ECAM (bus 0..=255), if the tree does not say otherwise.
const ECAM_DEFAULT: u64 = 0x40_1000_0000;
/// Where the guest puts BARs: the start of QEMU virt's 32-bit MMIO window (mapped at stage 2
/// when Bulwark hands the bridge over).
const BAR_WINDOW: u64 = 0x1000_0000;
const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_BLK_MODERN: u16 = 0x1042;
const QSIZE: u16 = 8;

/// Byte `i` of sector `s` of the disk image xtask writes (`xtask/src/dma_tests.rs` agrees).
pub fn sector_byte(s: u64, i: usize) -> u8 {
    if i < 8 {
        b"BWDISK\0\0"[i] | if i == 7 { s as u8 } else { 0 }
    } else {
        (i as u8).wrapping_mul(7) ^ (s as u8).wrapping_mul(13)
    }
}

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: one CPU; pages are touched through volatile accesses (and by the device).
unsafe impl Sync for Page {}

/// Virtqueue (descriptors at 0, avail ring at 0x400, used ring at 0x800) and request header +
/// status at 0xc00.
static QUEUE: Page = Page(UnsafeCell::new([0; 4096]));
static ORDINARY: Page = Page(UnsafeCell::new([0; 4096]));
static LOCKED: Page = Page(UnsafeCell::new([0x11; 4096]));

fn pa(p: &Page) -> u64 {
    p.0.get() as u64
}

fn r8(a: u64) -> u8 {
    // SAFETY: `a` is in one of the guest's own pages or a device register it mapped.
    unsafe { core::ptr::read_volatile(a as *const u8) }
}
fn r16(a: u64) -> u16 {
    // SAFETY: as `r8`, aligned.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}
fn r32(a: u64) -> u32 {
    // SAFETY: as `r8`, aligned.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}
fn w8(a: u64, v: u8) {
    // SAFETY: as `r8`.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}
fn w16(a: u64, v: u16) {
    // SAFETY: as `r8`, aligned.
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}
fn w32(a: u64, v: u32) {
    // SAFETY: as `r8`, aligned.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}
fn w64(a: u64, v: u64) {
    // Two 32-bit halves (virtio allows it; device registers may not take 64-bit accesses).
    w32(a, v as u32);
    w32(a + 4, (v >> 32) as u32);
}
fn fence() {
    // SAFETY: a barrier between the guest's memory writes and the device seeing them.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) }
}

/// The ECAM base from the guest's device tree (`pci-host-ecam-generic` node), if present.
fn ecam_from_dt(dtb: u64) -> Option<u64> {
    // SAFETY: the device tree Bulwark gave, size from its header, bounded to 2 MiB.
    let size = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) }
        .get(4..8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)?;
    // SAFETY: as above.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(2 << 20)) };
    let tree = fdt::Fdt::new_unaligned_fallible(blob).ok()?;
    let root = tree.root().ok()?;
    for n in root.all_nodes().ok()? {
        let (_, n) = n.ok()?;
        let compat = n.raw_property("compatible").ok().flatten();
        if compat.is_some_and(|c| c.value.starts_with(b"pci-host-ecam-generic")) {
            if n.raw_property("iommu-map").ok().flatten().is_some() {
                say_fail("the PCIe node still has iommu-map");
            }
            let reg = n.reg().ok().flatten()?;
            return reg.iter::<u64, u64>().flatten().next().map(|e| e.address);
        }
    }
    None
}

fn say_fail(what: &str) {
    let _ = writeln!(Uart, "testguest: dma: FAIL {what}");
}

/// Does the guest's tree name any node whose name starts with `prefix`?
fn dt_has_node(dtb: u64, prefix: &str) -> bool {
    // SAFETY: as in `ecam_from_dt`.
    let size = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) }
        .get(4..8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .unwrap_or(0);
    // SAFETY: as above.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(2 << 20)) };
    let Ok(tree) = fdt::Fdt::new_unaligned_fallible(blob) else {
        return false;
    };
    let Ok(root) = tree.root() else { return false };
    let Ok(nodes) = root.all_nodes() else {
        return false;
    };
    nodes
        .flatten()
        .any(|(_, n)| n.name().is_ok_and(|x| x.name.starts_with(prefix)))
}

/// The modern virtio PCI device: where its structures are.
struct Dev {
    common: u64,
    notify: u64,
    notify_mul: u32,
    /// Our next avail index, the used index we last saw.
    avail: u16,
    used: u16,
}

/// Find the first modern virtio-blk function on bus 0, assign its memory BARs, turn on memory
/// decoding and bus mastering, and locate its virtio structures.
fn find(ecam: u64) -> Option<Dev> {
    for dev in 0..32u64 {
        let cfg = ecam + (dev << 15);
        let id = r32(cfg);
        if id as u16 != VIRTIO_VENDOR || (id >> 16) as u16 != VIRTIO_BLK_MODERN {
            continue;
        }
        say!("testguest: dma: virtio-blk (modern) at 00:{dev:02x}.0, id {id:#x}");
        // BARs: size each memory BAR and place it in the 32-bit window.
        let mut bars = [0u64; 6];
        let mut next = BAR_WINDOW;
        let mut i = 0;
        while i < 6 {
            let off = cfg + 0x10 + 4 * i as u64;
            let orig = r32(off);
            if orig & 1 != 0 {
                i += 1;
                continue; // I/O BAR: not used
            }
            let is64 = (orig >> 1) & 3 == 2;
            w32(off, 0xffff_ffff);
            let mask = r32(off) & !0xf;
            if mask == 0 {
                i += if is64 { 2 } else { 1 };
                continue;
            }
            let size = u64::from((!mask).wrapping_add(1));
            next = next.next_multiple_of(size.max(0x1000));
            w32(off, next as u32);
            if is64 {
                w32(off + 4, 0);
            }
            bars[i] = next;
            say!("testguest: dma: BAR{i} at {next:#x} ({size:#x} bytes)");
            next += size;
            i += if is64 { 2 } else { 1 };
        }
        // Command: memory space + bus master.
        w16(cfg + 4, r16(cfg + 4) | 0x6);
        let mut d = Dev {
            common: 0,
            notify: 0,
            notify_mul: 0,
            avail: 0,
            used: 0,
        };
        let mut cap = u64::from(r8(cfg + 0x34)) & !3;
        let mut guard = 0;
        while cap != 0 && guard < 48 {
            guard += 1;
            let c = cfg + cap;
            if r8(c) == 0x09 {
                let kind = r8(c + 3);
                let bar = usize::from(r8(c + 4));
                let off = u64::from(r32(c + 8));
                let base = bars.get(bar).copied().unwrap_or(0);
                if base != 0 {
                    match kind {
                        1 => d.common = base + off,
                        2 => {
                            d.notify = base + off;
                            d.notify_mul = r32(c + 16);
                        }
                        _ => {}
                    }
                }
            }
            cap = u64::from(r8(c + 1)) & !3;
        }
        if d.common != 0 && d.notify != 0 {
            return Some(d);
        }
        say_fail("virtio capabilities (common/notify) not found");
        return None;
    }
    None
}

const STATUS_ACK: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;

impl Dev {
    /// Reset and bring the device up with one queue of [`QSIZE`] entries in `QUEUE`.
    fn init(&mut self) -> bool {
        let c = self.common;
        w8(c + 0x14, 0);
        let mut n = 0;
        while r8(c + 0x14) != 0 && n < 100_000 {
            n += 1;
        }
        w8(c + 0x14, STATUS_ACK | STATUS_DRIVER);
        w32(c, 1);
        let hi = r32(c + 0x04);
        // VIRTIO_F_VERSION_1 (32) and VIRTIO_F_ACCESS_PLATFORM (33): the device's DMA goes
        // through the platform's IOMMU (which the guest does not see: Bulwark owns it).
        w32(c + 0x08, 0);
        w32(c + 0x0c, 0);
        w32(c + 0x08, 1);
        w32(c + 0x0c, hi & 0b11);
        w8(c + 0x14, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        if r8(c + 0x14) & STATUS_FEATURES_OK == 0 {
            say_fail("FEATURES_OK not accepted");
            return false;
        }
        // SAFETY: the queue page is the guest's own; the device is reset (not using it).
        unsafe { (*QUEUE.0.get()).fill(0) };
        let q = pa(&QUEUE);
        w16(c + 0x16, 0);
        let max = r16(c + 0x18);
        if max < QSIZE {
            say_fail("queue 0 too small");
            return false;
        }
        w16(c + 0x18, QSIZE);
        w64(c + 0x20, q);
        w64(c + 0x28, q + 0x400);
        w64(c + 0x30, q + 0x800);
        w16(c + 0x1c, 1);
        fence();
        w8(
            c + 0x14,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        self.avail = 0;
        self.used = 0;
        true
    }

    /// Read `sector` into `buf` (a guest IPA, 512 bytes). `Ok(status byte)` when the device
    /// completed the request, `Err(device status)` when it gave up (NEEDS_RESET) or timed out.
    fn read(&mut self, sector: u64, buf: u64) -> Result<u8, u8> {
        let q = pa(&QUEUE);
        let hdr = q + 0xc00;
        let status = q + 0xc10;
        // Request header: type IN (0), reserved, sector.
        w32(hdr, 0);
        w32(hdr + 4, 0);
        w64(hdr + 8, sector);
        w8(status, 0xff);
        // Descriptors: header (device reads), data (device writes), status (device writes).
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let d = q + 16 * i;
            w64(d, addr);
            w32(d + 8, len);
            w16(d + 12, flags);
            w16(d + 14, next);
        };
        desc(0, hdr, 16, 1, 1);
        desc(1, buf, 512, 1 | 2, 2);
        desc(2, status, 1, 2, 0);
        let avail = q + 0x400;
        w16(avail + 4 + 2 * u64::from(self.avail % QSIZE), 0);
        self.avail = self.avail.wrapping_add(1);
        fence();
        w16(avail + 2, self.avail);
        fence();
        let off = u64::from(r16(self.common + 0x1e)) * u64::from(self.notify_mul);
        w16(self.notify + off, 0);
        let used_idx = q + 0x800 + 2;
        for _ in 0..5_000_000 {
            fence();
            if r16(used_idx) != self.used {
                self.used = r16(used_idx);
                return Ok(r8(status));
            }
            let st = r8(self.common + 0x14);
            if st & STATUS_NEEDS_RESET != 0 {
                return Err(st);
            }
            core::hint::spin_loop();
        }
        Err(r8(self.common + 0x14))
    }
}

fn fill(p: &Page, v: u8) {
    // SAFETY: the guest's own page; the device is not writing it now.
    unsafe { (*p.0.get()).fill(v) }
}

fn sector_ok(buf: u64, s: u64) -> bool {
    (0..512).all(|i| r8(buf + i as u64) == sector_byte(s, i))
}

fn all_bytes(buf: u64, len: u64, v: u8) -> bool {
    (0..len).all(|i| r8(buf + i) == v)
}

/// `scenario=dma` (see the module comment). `ram_end`: end of the device tree's memory.
pub fn run(dtb: u64, ram_end: u64) -> ! {
    let mut c = Checks { failed: 0 };
    c.check(
        !dt_has_node(dtb, "smmu"),
        format_args!("dma: no SMMU node in the device tree (Bulwark owns it)"),
    );
    let ecam = ecam_from_dt(dtb);
    c.check(
        ecam.is_some(),
        format_args!("dma: the PCIe host bridge is in the device tree (ECAM {ecam:#x?})"),
    );
    let Some(mut d) = find(ecam.unwrap_or(ECAM_DEFAULT)) else {
        c.check(
            false,
            format_args!("dma: a modern virtio-blk device on bus 0"),
        );
        guest_exit(1)
    };
    c.check(
        d.init(),
        format_args!("dma: virtio 1.0 set-up (FEATURES_OK, queue 0)"),
    );

    // (a) An ordinary page: the sector arrives.
    let ord = pa(&ORDINARY);
    fill(&ORDINARY, 0);
    let r = d.read(0, ord);
    c.check(
        r == Ok(0) && sector_ok(ord, 0),
        format_args!(
            "dma: (a) sector 0 read into an ordinary page at {ord:#x}: {r:?}, bytes match"
        ),
    );

    // (b) A ROE-locked page: the device may not write it. First the device writes the page
    // while it is still writable (so the SMMU has cached a writable translation of it), then
    // the guest locks it: the lock must reach the SMMU before the hypercall returns.
    let lk = pa(&LOCKED);
    let r = d.read(4, lk);
    c.check(
        r == Ok(0) && sector_ok(lk, 4),
        format_args!("dma: sector 4 read into {lk:#x} before it is locked: {r:?}, bytes match"),
    );
    fill(&LOCKED, 0x11);
    let rr = roe(ROE_MPROTECT, lk, 1);
    c.check(
        rr == 1,
        format_args!("dma: ROE_MPROTECT of {lk:#x} -> {rr}"),
    );
    let r = d.read(1, lk);
    say!("testguest: dma: (b) read into the locked page: {r:?}");
    c.check(
        all_bytes(lk, 4096, 0x11),
        format_args!("dma: (b) the ROE-locked page at {lk:#x} is unchanged after the device wrote sector 1 into it"),
    );
    // An exit, so Bulwark reads the SMMU's fault records now (it polls at exits).
    let _ = super::hvc(u64::from(bulwark_abi::smccc::PSCI_VERSION), 0, 0, 0);
    if r.is_err() {
        c.check(
            d.init(),
            format_args!("dma: device reset after the refusal"),
        );
    }

    // (c) Bulwark's window past the end of guest RAM (no IPA there).
    let target = ram_end + 0x1_0000;
    let r = d.read(2, target);
    say!("testguest: dma: (c) read into {target:#x} (past memory end, Bulwark's window): {r:?}");
    c.check(
        probe(target, false).is_err(),
        format_args!("dma: (c) {target:#x} is still not readable by the guest"),
    );
    if r.is_err() {
        c.check(
            d.init(),
            format_args!("dma: device reset after the refusal"),
        );
    }

    // (a) again: the device still works, sector 3 arrives.
    fill(&ORDINARY, 0);
    let r = d.read(3, ord);
    c.check(
        r == Ok(0) && sector_ok(ord, 3),
        format_args!("dma: (a') sector 3 read into the ordinary page: {r:?}, bytes match"),
    );
    c.check(
        all_bytes(lk, 4096, 0x11),
        format_args!("dma: the locked page is still unchanged"),
    );
    if c.failed != 0 {
        say!("testguest: dma: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: dma: all checks passed");
    system_off()
}

/// `scenario=dma-nopci`: no SMMU, so no PCI in the guest's tree and the ECAM aborts.
pub fn nopci(dtb: u64) -> ! {
    let mut c = Checks { failed: 0 };
    c.check(
        ecam_from_dt(dtb).is_none() && !dt_has_node(dtb, "pcie"),
        format_args!("dma-nopci: no PCIe host bridge in the device tree"),
    );
    c.check(
        probe(ECAM_DEFAULT, false).is_err(),
        format_args!("dma-nopci: the ECAM window {ECAM_DEFAULT:#x} aborts"),
    );
    c.check(
        probe(BAR_WINDOW, false).is_err(),
        format_args!("dma-nopci: the PCI MMIO window {BAR_WINDOW:#x} aborts"),
    );
    if c.failed != 0 {
        say!("testguest: dma-nopci: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: dma-nopci: all checks passed");
    system_off()
}

/// `scenario=dma` / `scenario=dma-nopci` (`mem`: the device tree's memory range).
pub fn dispatch(which: &str, dtb: u64, mem: Option<(u64, u64)>) -> ! {
    match which {
        "dma" => run(dtb, mem.map_or(0, |(b, s)| b.saturating_add(s))),
        _ => nopci(dtb),
    }
}
