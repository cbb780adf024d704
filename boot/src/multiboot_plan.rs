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

/// Build the plan. `reserved` is Bulwark's own region: never guest memory, listed as reserved in
/// the guest's map. Firmware RAM, ACPI reclaimable and ACPI NVS ranges become guest RAM (identity
/// mapped) outside `reserved` and the legacy hole; the legacy hole is device memory; everything
/// else (MMIO, APICs, firmware above 1 MiB) is not mapped at all.
pub fn plan(boot: &BootDescription, reserved: (u64, u64)) -> Plan {
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
        push_region(&mut regions, s, e, RegionKind::Device)
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
                region(0xa0000, 0x10_0000, RegionKind::Device),
                region(0x10_0000, 0x400_0000, RegionKind::Ram),
                region(0x600_0000, 0xfff_0000, RegionKind::Ram),
                region(0xfff_0000, 0x1000_0000, RegionKind::Ram),
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
            let p = plan(&desc(&ranges), BULWARK);
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
