//! The x86 memory plan: from the firmware's memory map (multiboot2) to the guest-physical regions
//! the core maps (guest RAM, passed-through legacy device memory) and the Multiboot (v1) memory
//! map the guest is told about. Decided once, before the guest starts; nothing else decides which
//! physical page belongs to whom.

use alloc::vec::Vec;

use bulwark_core::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use bulwark_core::guest::{MemRegion, RegionKind};

use crate::multiboot1::{MapEntry, MMAP_ACPI, MMAP_BAD, MMAP_NVS, MMAP_RAM, MMAP_RESERVED};
use crate::multiboot2_info::{BootDescription, MemKind};

/// Legacy VGA + option ROM + BIOS window, passed through as device memory (uncached).
pub const LEGACY_HOLE: (u64, u64) = (0xa_0000, 0x10_0000);
/// The part of the legacy hole that holds firmware code (option ROMs, the BIOS at F000:xxxx):
/// passed through executable, because a real-mode guest runs BIOS interrupt handlers there.
pub const LEGACY_FIRMWARE: (u64, u64) = (0xc_0000, 0x10_0000);
/// The 32-bit physical address space: below it every range the firmware does not call RAM is
/// device space on a PC (APICs, HPET, PCI windows, ECAM, flash).
pub const FOUR_GIB: u64 = 1 << 32;

/// What the platform's firmware tables (ACPI) describe besides the memory map; Bulwark passes
/// these through as device memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// The local APIC's page (IA32_APIC_BASE): mapped read-only, writes emulated (INIT/SIPI).
    pub lapic: Option<u64>,
    /// Device ranges `[start, end)` (I/O APICs, HPET, MCFG ECAM windows): needed above 4 GiB,
    /// where the plan does not pass through every gap.
    pub devices: Vec<(u64, u64)>,
}

/// Which physical memory the guest gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted, non-overlapping, page-aligned regions for the core: guest RAM (identity,
    /// write-back) and device windows.
    pub regions: Vec<MemRegion>,
    /// The memory map the guest is told about (Bulwark's region marked reserved), sorted.
    pub guest_map: Vec<MapEntry>,
    /// Firmware ranges dropped because they overlapped an earlier one.
    pub dropped: usize,
}

impl Plan {
    /// Whether `[start, end)` is entirely guest RAM (possibly across adjacent regions).
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        if end <= start {
            return false;
        }
        let mut pos = start;
        while pos < end {
            let i = self
                .regions
                .partition_point(|r| r.gpa.as_u64().saturating_add(r.len) <= pos);
            match self.regions.get(i) {
                Some(r) if r.kind == RegionKind::Ram && r.gpa.as_u64() <= pos => {
                    pos = r.gpa.as_u64().saturating_add(r.len);
                }
                _ => return false,
            }
        }
        true
    }

    pub fn ram_bytes(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .fold(0u64, |a, r| a.saturating_add(r.len))
    }

    /// The lowest page-aligned base at or above `min` where `need` bytes of guest RAM below
    /// 4 GiB (inside one RAM region) are free of every `busy` range: where a module the kernel
    /// would load over is moved.
    pub fn find_free(&self, min: u64, need: u64, busy: &[(u64, u64)]) -> Option<u64> {
        if need == 0 {
            return None;
        }
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Ram) {
            let rs = r.gpa.as_u64();
            let re = rs.saturating_add(r.len).min(1 << 32);
            let Some(mut b) = rs.max(min).div_ceil(PAGE_SIZE).checked_mul(PAGE_SIZE) else {
                continue;
            };
            while let Some(end) = b.checked_add(need).filter(|&e| e <= re) {
                // The highest end among the busy ranges in the way; past it is the next try.
                match busy
                    .iter()
                    .filter(|&&(s, e)| s < end && b < e)
                    .map(|&(_, e)| e)
                    .max()
                {
                    None => return Some(b),
                    Some(e) => match e.div_ceil(PAGE_SIZE).checked_mul(PAGE_SIZE) {
                        Some(n) if n > b => b = n,
                        _ => break,
                    },
                }
            }
        }
        None
    }

    /// First candidate base (in order) where `need` bytes of guest RAM below 4 GiB are free of
    /// every `busy` range.
    pub fn place(&self, candidates: &[u64], need: u64, busy: &[(u64, u64)]) -> Option<u64> {
        candidates.iter().copied().find(|&b| {
            let Some(end) = b.checked_add(need) else {
                return false;
            };
            end <= 1 << 32 && self.is_ram(b, end) && busy.iter().all(|&(s, e)| !(s < end && b < e))
        })
    }
}

fn push_region(out: &mut Vec<MemRegion>, start: u64, end: u64, kind: RegionKind) {
    // Page-granular: round inwards.
    let s = start.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
    let e = end / PAGE_SIZE * PAGE_SIZE;
    if e > s {
        out.push(MemRegion {
            gpa: GuestPhysAddr::new(s),
            len: e - s,
            hpa: HostPhysAddr::new(s),
            kind,
        });
    }
}

/// `[start, end)` minus `[rs, re)`: zero, one or two pieces.
fn without(start: u64, end: u64, (rs, re): (u64, u64), mut f: impl FnMut(u64, u64)) {
    if end <= rs || start >= re {
        f(start, end);
        return;
    }
    if start < rs {
        f(start, rs);
    }
    if end > re {
        f(re, end);
    }
}

/// `ranges` minus `cut`, each piece kept in order.
fn subtract(ranges: Vec<(u64, u64)>, cut: (u64, u64)) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for (s, e) in ranges {
        without(s, e, cut, |s, e| out.push((s, e)));
    }
    out
}

/// Build the plan without platform tables (see [`plan_platform`]).
pub fn plan(boot: &BootDescription, reserved: (u64, u64)) -> Plan {
    plan_platform(boot, reserved, &Platform::default())
}

/// Build the plan. `reserved` is Bulwark's own region: never guest memory, listed as reserved in
/// the guest's map. Firmware RAM, ACPI reclaimable and ACPI NVS ranges become guest RAM (identity
/// mapped) outside `reserved` and the legacy hole. The rest of the machine is passed through
/// (docs/x86_64.md, "Platform model"): the legacy hole as device memory (its firmware part
/// executable), every range below 4 GiB that the firmware does not describe as RAM, ACPI or
/// defective memory as uncached device memory, firmware-reserved ranges and `platform.devices`
/// above 4 GiB likewise, and the local APIC page read-only (writes trapped). Nothing of
/// `reserved` is ever mapped.
pub fn plan_platform(boot: &BootDescription, reserved: (u64, u64), platform: &Platform) -> Plan {
    let mut ranges = boot.memory.clone();
    ranges.sort_by_key(|r| r.start);
    let mut p = Plan::default();
    let mut regions = Vec::new();
    for r in ranges.iter().filter(|r| r.end > r.start) {
        let typ = match r.kind {
            MemKind::Ram => MMAP_RAM,
            MemKind::AcpiReclaimable => MMAP_ACPI,
            MemKind::AcpiNvs => MMAP_NVS,
            MemKind::Defective => MMAP_BAD,
            MemKind::Reserved => MMAP_RESERVED,
        };
        let ram = matches!(
            r.kind,
            MemKind::Ram | MemKind::AcpiReclaimable | MemKind::AcpiNvs
        );
        without(r.start, r.end, reserved, |s, e| {
            p.guest_map.push(MapEntry {
                start: s,
                end: e,
                typ,
            });
            if ram {
                without(s, e, LEGACY_HOLE, |s, e| {
                    push_region(&mut regions, s, e, RegionKind::Ram)
                });
            }
        });
    }
    without(LEGACY_HOLE.0, LEGACY_HOLE.1, reserved, |s, e| {
        without(s, e, LEGACY_FIRMWARE, |s, e| {
            push_region(&mut regions, s, e, RegionKind::Device)
        });
    });
    without(LEGACY_FIRMWARE.0, LEGACY_FIRMWARE.1, reserved, |s, e| {
        push_region(&mut regions, s, e, RegionKind::Firmware)
    });
    if reserved.1 > reserved.0 {
        p.guest_map.push(MapEntry {
            start: reserved.0,
            end: reserved.1,
            typ: MMAP_RESERVED,
        });
    }
    p.guest_map.sort_by_key(|e| e.start);
    regions.sort_by_key(|r| r.gpa);
    // Firmware maps may overlap: keep the first claim, drop what overlaps it rather than guess
    // (the core refuses overlapping regions).
    for r in regions {
        match p.regions.last() {
            Some(last) if last.gpa.as_u64().saturating_add(last.len) > r.gpa.as_u64() => {
                p.dropped += 1;
            }
            _ => p.regions.push(r),
        }
    }
    // Device space: below 4 GiB every gap, above it what the firmware names; minus memory
    // (including defective memory: never handed out as anything), Bulwark and what is mapped.
    let mut dev: Vec<(u64, u64)> = alloc::vec![(0, FOUR_GIB)];
    dev.extend(
        ranges
            .iter()
            .filter(|r| r.kind == MemKind::Reserved && r.end > FOUR_GIB)
            .map(|r| (r.start.max(FOUR_GIB), r.end)),
    );
    dev.extend(platform.devices.iter().copied().filter(|d| d.1 > d.0));
    let lapic = platform
        .lapic
        .map(|a| a / PAGE_SIZE * PAGE_SIZE)
        .and_then(|a| Some((a, a.checked_add(PAGE_SIZE)?)));
    let cuts = ranges
        .iter()
        .filter(|r| r.kind != MemKind::Reserved)
        .map(|r| (r.start, r.end))
        .chain(p.regions.iter().map(|r| {
            let s = r.gpa.as_u64();
            (s, s.saturating_add(r.len))
        }))
        .chain([reserved, LEGACY_HOLE])
        .chain(lapic)
        .collect::<Vec<_>>();
    for c in cuts {
        dev = subtract(dev, c);
    }
    dev.sort_unstable();
    let mut devices: Vec<MemRegion> = Vec::new();
    for (s, e) in dev {
        // Merge overlapping candidates (a reserved range and an MCFG window, say).
        let s = match devices.last() {
            Some(l) => s.max(l.gpa.as_u64().saturating_add(l.len)),
            None => s,
        };
        push_region(&mut devices, s, e, RegionKind::Device);
    }
    // The local APIC page, unless it is memory or Bulwark's (then it is not mapped at all).
    if let Some((s, e)) = lapic {
        let clash = p
            .regions
            .iter()
            .any(|r| r.gpa.as_u64() < e && s < r.gpa.as_u64().saturating_add(r.len))
            || ranges
                .iter()
                .any(|r| r.kind != MemKind::Reserved && r.start < e && s < r.end)
            || (s < reserved.1 && reserved.0 < e);
        if !clash {
            push_region(&mut devices, s, e, RegionKind::DeviceWriteTrapped);
        }
    }
    p.regions.extend(devices);
    p.regions.sort_by_key(|r| r.gpa);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiboot2_info::MemRange;

    const BULWARK: (u64, u64) = (0x400_0000, 0x600_0000);

    fn desc(ranges: &[(u64, u64, MemKind)]) -> BootDescription {
        BootDescription {
            memory: ranges
                .iter()
                .map(|&(start, end, kind)| MemRange { start, end, kind })
                .collect(),
            ..BootDescription::default()
        }
    }

    /// The map GRUB reported under Bochs with 256 MiB (see the banner).
    fn bochs() -> BootDescription {
        desc(&[
            (0, 0x9f000, MemKind::Ram),
            (0x9f000, 0xa0000, MemKind::Reserved),
            (0xe8000, 0x10_0000, MemKind::Reserved),
            (0x10_0000, 0xfff_0000, MemKind::Ram),
            (0xfff_0000, 0x1000_0000, MemKind::AcpiReclaimable),
            (0xfffc_0000, 0x1_0000_0000, MemKind::Reserved),
        ])
    }

    fn region(start: u64, end: u64, kind: RegionKind) -> MemRegion {
        MemRegion {
            gpa: GuestPhysAddr::new(start),
            len: end - start,
            hpa: HostPhysAddr::new(start),
            kind,
        }
    }

    #[test]
    fn bochs_map() {
        let p = plan(&bochs(), BULWARK);
        assert_eq!(
            p.regions,
            alloc::vec![
                region(0, 0x9f000, RegionKind::Ram),
                region(0x9f000, 0xa0000, RegionKind::Device), // firmware-reserved: passed through
                region(0xa0000, 0xc0000, RegionKind::Device),
                region(0xc0000, 0x10_0000, RegionKind::Firmware),
                region(0x10_0000, 0x400_0000, RegionKind::Ram),
                region(0x600_0000, 0xfff_0000, RegionKind::Ram),
                region(0xfff_0000, 0x1000_0000, RegionKind::Ram),
                region(0x1000_0000, FOUR_GIB, RegionKind::Device), // PCI hole, APICs, flash
            ]
        );
        assert_eq!(p.dropped, 0);
        assert_eq!(p.ram_bytes(), 0x9f000 + 0x3f0_0000 + 0x9ff_0000 + 0x1_0000);
        // Bulwark's region is reserved in the guest's map and not RAM.
        assert!(p.guest_map.contains(&MapEntry {
            start: BULWARK.0,
            end: BULWARK.1,
            typ: MMAP_RESERVED
        }));
        assert!(!p
            .guest_map
            .iter()
            .any(|e| e.typ == MMAP_RAM && e.start < BULWARK.1 && e.end > BULWARK.0));
        assert!(p.is_ram(0x10_0000, 0x400_0000));
        assert!(!p.is_ram(0x3ff_f000, 0x400_1000));
        assert!(!p.is_ram(BULWARK.0, BULWARK.0 + 1));
        assert!(!p.is_ram(0xb8000, 0xb9000)); // device, not RAM
        assert!(p.is_ram(0xffe_f000, 0x1000_0000)); // across adjacent regions
        assert!(!p.is_ram(0x10, 0x10));
    }

    #[test]
    fn platform_devices_lapic_and_bad_memory() {
        let mut d = bochs();
        d.memory.push(MemRange {
            start: 0x2000_0000,
            end: 0x2010_0000,
            kind: MemKind::Defective,
        });
        d.memory.push(MemRange {
            start: 0x1_0000_0000,
            end: 0x1_2000_0000,
            kind: MemKind::Ram,
        });
        let platform = Platform {
            lapic: Some(0xfee0_0000),
            devices: alloc::vec![
                (0xfec0_0000, 0xfec0_1000),     // I/O APIC: inside the hole anyway
                (0x8_0000_0000, 0x8_1000_0000), // ECAM above 4 GiB
                (0x8_0800_0000, 0x8_2000_0000), // overlapping window: merged
                (0x1_1000_0000, 0x1_3000_0000), // overlaps RAM: only the non-RAM part
                (BULWARK.0 - 0x1000, BULWARK.1 + 0x1000), // inside RAM and Bulwark: nothing
            ],
        };
        let p = plan_platform(&d, BULWARK, &platform);
        let kind_at = |a: u64| {
            p.regions
                .iter()
                .find(|r| r.gpa.as_u64() <= a && a < r.gpa.as_u64() + r.len)
                .map(|r| r.kind)
        };
        assert_eq!(kind_at(0xfee0_0000), Some(RegionKind::DeviceWriteTrapped));
        assert_eq!(kind_at(0xfee0_0fff), Some(RegionKind::DeviceWriteTrapped));
        assert_eq!(kind_at(0xfedf_f000), Some(RegionKind::Device));
        assert_eq!(kind_at(0xfee0_1000), Some(RegionKind::Device));
        assert_eq!(kind_at(0xfec0_0000), Some(RegionKind::Device));
        assert_eq!(
            kind_at(0x2000_0000),
            None,
            "defective memory is never mapped"
        );
        assert_eq!(kind_at(0x200f_ffff), None);
        assert_eq!(kind_at(0x2010_0000), Some(RegionKind::Device));
        assert_eq!(kind_at(0x1_0000_0000), Some(RegionKind::Ram));
        assert_eq!(kind_at(0x1_2000_0000), Some(RegionKind::Device));
        assert_eq!(kind_at(0x1_3000_0000), None);
        assert_eq!(kind_at(0x8_0000_0000), Some(RegionKind::Device));
        assert_eq!(kind_at(0x8_1fff_ffff), Some(RegionKind::Device));
        assert_eq!(kind_at(0x8_2000_0000), None);
        assert_eq!(kind_at(BULWARK.0), None);
        assert_eq!(kind_at(BULWARK.1 - 1), None);
        assert_eq!(kind_at(0xf_0000), Some(RegionKind::Firmware));
        for w in p.regions.windows(2) {
            assert!(w[0].gpa.as_u64() + w[0].len <= w[1].gpa.as_u64());
        }
        // A local APIC page inside RAM or Bulwark's region is not mapped as a device.
        for a in [0x20_0000, BULWARK.0] {
            let p = plan_platform(
                &bochs(),
                BULWARK,
                &Platform {
                    lapic: Some(a),
                    devices: Vec::new(),
                },
            );
            assert!(!p
                .regions
                .iter()
                .any(|r| r.kind == RegionKind::DeviceWriteTrapped));
        }
    }

    #[test]
    fn unaligned_and_overlapping_ranges() {
        let p = plan(
            &desc(&[
                (0x10_0800, 0x20_0800, MemKind::Ram), // rounded inwards
                (0x1f_f000, 0x30_0000, MemKind::Ram), // overlaps the first: dropped
                (0x80_0000, 0x80_0fff, MemKind::Ram), // less than a page: nothing
            ]),
            BULWARK,
        );
        assert!(p
            .regions
            .contains(&region(0x10_1000, 0x20_0000, RegionKind::Ram)));
        assert_eq!(p.dropped, 1);
        assert!(!p.is_ram(0x80_0000, 0x80_0001));
    }

    #[test]
    fn info_placement() {
        let p = plan(&bochs(), BULWARK);
        // Preferred spot free.
        assert_eq!(p.place(&[0x9000, 0x20_0000], 0x1000, &[]), Some(0x9000));
        // Preferred spot taken by the kernel: the next candidate.
        assert_eq!(
            p.place(&[0x9000, 0x20_0000], 0x1000, &[(0x8000, 0xa000)]),
            Some(0x20_0000)
        );
        // Inside Bulwark or across 4 GiB: never.
        assert_eq!(p.place(&[BULWARK.0, u64::MAX - 5], 0x1000, &[]), None);
    }

    #[test]
    fn free_space_for_moved_modules() {
        let p = plan(&bochs(), BULWARK);
        // Right above `min` when nothing is in the way.
        assert_eq!(p.find_free(0x20_0000, 0x2000, &[]), Some(0x20_0000));
        // Rounded up to a page, past every busy range in the way (overlapping ones too).
        assert_eq!(
            p.find_free(
                0x20_0001,
                0x2000,
                &[(0x20_0000, 0x30_0800), (0x30_0000, 0x31_0000)]
            ),
            Some(0x31_0000)
        );
        // Never inside Bulwark's region: the next RAM region after it.
        assert_eq!(p.find_free(0x3ff_f000, 0x2000, &[]), Some(BULWARK.1));
        // Too large for any region, or zero bytes: none.
        assert_eq!(p.find_free(0, 0x1_0000_0000, &[]), None);
        assert_eq!(p.find_free(0, 0, &[]), None);
        assert_eq!(p.find_free(u64::MAX - 5, 0x1000, &[]), None);
        // A busy range reaching the end of the address space does not loop.
        assert_eq!(p.find_free(0x20_0000, 0x1000, &[(0, u64::MAX)]), None);
        // Whatever it returns is RAM and free.
        let busy = [(0x10_0000, 0x300_0000), (0x600_0000, 0x700_0000)];
        let b = p.find_free(0x10_0000, 0x10_0000, &busy).unwrap();
        assert!(p.is_ram(b, b + 0x10_0000));
        assert!(busy.iter().all(|&(s, e)| b + 0x10_0000 <= s || b >= e));
    }

    #[test]
    fn garbage_maps_never_panic_and_never_touch_bulwark() {
        let mut x: u64 = 0xdead_beef_1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let n = (next() % 12) as usize;
            let mut ranges = Vec::new();
            for _ in 0..n {
                let start = next() % (1 << 33);
                let len = next() % (1 << 30);
                let kind = match next() % 5 {
                    0 => MemKind::Ram,
                    1 => MemKind::AcpiReclaimable,
                    2 => MemKind::AcpiNvs,
                    3 => MemKind::Defective,
                    _ => MemKind::Reserved,
                };
                ranges.push((start, start + len, kind));
            }
            let platform = Platform {
                lapic: Some(next() % (1 << 33)),
                devices: (0..next() % 4)
                    .map(|_| {
                        let s = next() % (1 << 36);
                        (s, s.saturating_add(next() % (1 << 31)))
                    })
                    .collect(),
            };
            let p = plan_platform(&desc(&ranges), BULWARK, &platform);
            for r in p.regions.iter().filter(|r| r.kind != RegionKind::Ram) {
                // Device space never covers memory the firmware describes.
                let (s, e) = (r.gpa.as_u64(), r.gpa.as_u64() + r.len);
                assert!(!ranges.iter().any(|&(a, b, k)| k != MemKind::Reserved
                    && a < e
                    && s < b
                    && !(LEGACY_HOLE.0 <= s && e <= LEGACY_HOLE.1)));
            }
            for w in p.regions.windows(2) {
                assert!(w[0].gpa.as_u64() + w[0].len <= w[1].gpa.as_u64());
            }
            for r in &p.regions {
                let (s, e) = (r.gpa.as_u64(), r.gpa.as_u64() + r.len);
                assert!(e <= BULWARK.0 || s >= BULWARK.1, "{r:?} touches Bulwark");
                assert!(r.gpa.is_aligned(PAGE_SIZE) && r.len % PAGE_SIZE == 0 && r.len > 0);
            }
            assert!(!p.is_ram(BULWARK.0, BULWARK.1));
        }
    }
}
