//! Guest memory: the plan (which physical ranges are guest RAM, which are passed-through
//! device memory, what the guest's memory map says), page-table frames from Bulwark's heap for
//! the core's EPT engine, the EPT flush hook, and guest-physical reads/writes.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::vec::Vec;

use bulwark_boot::multiboot1::{MapEntry, MMAP_ACPI, MMAP_BAD, MMAP_NVS, MMAP_RAM, MMAP_RESERVED};
use bulwark_boot::multiboot2_info::{BootDescription, MemKind};
use bulwark_core::addr::{GpaRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use bulwark_core::guest::{MemRegion, RegionKind};
use bulwark_core::gwalk::{GuestMemRead, NotGuestRam};
use bulwark_core::physmem::{OutOfFrames, PhysMem};
use bulwark_core::pt::TlbFlush;

use crate::cpu::VmxCaps;
use crate::layout;

/// Page-table frames from Bulwark's heap (inside Bulwark's region, so never guest-reachable).
pub struct HeapFrames {
    pub allocated: usize,
}

fn frame_layout() -> Layout {
    // 4096 is a power of two and non-zero: this cannot fail.
    Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<[u64; 512]>())
}

impl PhysMem for HeapFrames {
    fn alloc_frame(&mut self) -> Result<HostPhysAddr, OutOfFrames> {
        // SAFETY: non-zero size layout.
        let p = unsafe { alloc_zeroed(frame_layout()) };
        if p.is_null() {
            return Err(OutOfFrames);
        }
        self.allocated += 1;
        Ok(layout::hpa_of(p))
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        if layout::overlaps_bulwark(frame.as_u64(), frame.as_u64() + PAGE_SIZE) {
            // SAFETY: frames come from `alloc_frame` with the same layout (identity mapped).
            unsafe { dealloc(frame.as_u64() as *mut u8, frame_layout()) };
            self.allocated = self.allocated.saturating_sub(1);
        }
    }

    fn read_u64(&self, addr: HostPhysAddr) -> u64 {
        if !layout::overlaps_bulwark(addr.as_u64(), addr.as_u64() + 8)
            || !addr.as_u64().is_multiple_of(8)
        {
            return 0;
        }
        // SAFETY: an aligned word inside Bulwark's identity-mapped region (a table frame).
        unsafe { core::ptr::read_volatile(addr.as_u64() as *const u64) }
    }

    fn write_u64(&mut self, addr: HostPhysAddr, value: u64) {
        if !layout::overlaps_bulwark(addr.as_u64(), addr.as_u64() + 8)
            || !addr.as_u64().is_multiple_of(8)
        {
            return;
        }
        // SAFETY: as above; one aligned 64-bit store is single-copy atomic.
        unsafe { core::ptr::write_volatile(addr.as_u64() as *mut u64, value) }
    }
}

/// The engine's TLB hook: every EPT edit that changes or removes a valid entry ends in
/// [`crate::vmx::invalidate_ept`].
pub struct EptFlush<'a> {
    pub caps: &'a VmxCaps,
    pub eptp: u64,
    pub flushes: u64,
}

impl TlbFlush for EptFlush<'_> {
    fn flush(&mut self, _range: GpaRange) {
        self.flushes += 1;
        crate::vmx::invalidate_ept(self.caps, self.eptp);
    }
}

/// Legacy VGA + option ROM + BIOS window, passed through as device memory (uncached).
pub const LEGACY_HOLE: (u64, u64) = (0xa_0000, 0x10_0000);

/// Which physical memory the guest gets, decided once from the firmware map.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Regions for the core: guest RAM (identity, write-back) and device windows.
    pub regions: Vec<MemRegion>,
    /// The memory map the guest is told about (Bulwark's region marked reserved).
    pub guest_map: Vec<MapEntry>,
}

impl Plan {
    /// Whether `[start, end)` is entirely guest RAM.
    pub fn is_ram(&self, start: u64, end: u64) -> bool {
        if end <= start {
            return false;
        }
        let mut pos = start;
        while pos < end {
            match self.regions.iter().find(|r| {
                r.kind == RegionKind::Ram && r.gpa.as_u64() <= pos && pos < r.gpa.as_u64() + r.len
            }) {
                Some(r) => pos = r.gpa.as_u64() + r.len,
                None => return false,
            }
        }
        true
    }

    pub fn ram_bytes(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.len)
            .sum()
    }
}

fn push_region(out: &mut Vec<MemRegion>, start: u64, end: u64, kind: RegionKind) {
    // Guest RAM is page-granular: round inwards.
    let s = start.div_ceil(PAGE_SIZE) * PAGE_SIZE;
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

/// Split `[start, end)` around Bulwark's region; calls `f` for each remaining piece.
fn outside_bulwark(start: u64, end: u64, mut f: impl FnMut(u64, u64)) {
    let (bs, be) = (layout::REGION_START, layout::REGION_END);
    if end <= bs || start >= be {
        f(start, end);
        return;
    }
    if start < bs {
        f(start, bs);
    }
    if end > be {
        f(be, end);
    }
}

/// Build the plan: firmware RAM, ACPI tables and NVS become guest RAM (identity mapped) except
/// Bulwark's region; the legacy hole below 1 MiB is passed through as device memory; everything
/// else (MMIO, APIC, firmware ROM above 1 MiB) is not mapped at all.
pub fn plan(boot: &BootDescription) -> Plan {
    let mut ranges: Vec<_> = boot.memory.clone();
    ranges.sort_by_key(|r| r.start);
    let mut p = Plan::default();
    for r in &ranges {
        let typ = match r.kind {
            MemKind::Ram => MMAP_RAM,
            MemKind::AcpiReclaimable => MMAP_ACPI,
            MemKind::AcpiNvs => MMAP_NVS,
            MemKind::Defective => MMAP_BAD,
            MemKind::Reserved => MMAP_RESERVED,
        };
        outside_bulwark(r.start, r.end, |s, e| {
            p.guest_map.push(MapEntry {
                start: s,
                end: e,
                typ,
            });
            if matches!(
                r.kind,
                MemKind::Ram | MemKind::AcpiReclaimable | MemKind::AcpiNvs
            ) {
                // Exclude the legacy hole (mapped below as device memory).
                if e <= LEGACY_HOLE.0 || s >= LEGACY_HOLE.1 {
                    push_region(&mut p.regions, s, e, RegionKind::Ram);
                } else {
                    if s < LEGACY_HOLE.0 {
                        push_region(&mut p.regions, s, LEGACY_HOLE.0, RegionKind::Ram);
                    }
                    if e > LEGACY_HOLE.1 {
                        push_region(&mut p.regions, LEGACY_HOLE.1, e, RegionKind::Ram);
                    }
                }
            }
        });
    }
    push_region(
        &mut p.regions,
        LEGACY_HOLE.0,
        LEGACY_HOLE.1,
        RegionKind::Device,
    );
    p.guest_map.push(MapEntry {
        start: layout::REGION_START,
        end: layout::REGION_END,
        typ: MMAP_RESERVED,
    });
    p.guest_map.sort_by_key(|e| e.start);
    p.regions.sort_by_key(|r| r.gpa);
    // Firmware maps may overlap; drop any region that overlaps its predecessor rather than
    // guess (the core refuses overlaps).
    let mut clean: Vec<MemRegion> = Vec::new();
    for r in p.regions.drain(..) {
        match clean.last() {
            Some(last) if last.gpa.as_u64() + last.len > r.gpa.as_u64() => {
                log::warn!(
                    "memory plan: firmware range at {:#x} overlaps the previous one; ignored",
                    r.gpa.as_u64()
                );
            }
            _ => clean.push(r),
        }
    }
    p.regions = clean;
    p
}

/// Guest RAM as Bulwark reads it (identity: guest-physical = host-physical outside Bulwark).
pub struct GuestRam<'a> {
    pub plan: &'a Plan,
}

impl GuestRam<'_> {
    /// Copy bytes into guest RAM. Fails (nothing written) unless the whole range is guest RAM.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotGuestRam> {
        let end = gpa.checked_add(bytes.len() as u64).ok_or(NotGuestRam)?;
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.plan.is_ram(gpa, end) || end > 1 << 32 {
            return Err(NotGuestRam);
        }
        // SAFETY: the range is guest RAM (never Bulwark's region), identity mapped below 4 GiB,
        // and no vCPU runs while Bulwark loads the guest.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), gpa as *mut u8, bytes.len());
        }
        Ok(())
    }

    /// Zero-fill guest RAM.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<(), NotGuestRam> {
        let end = gpa.checked_add(len).ok_or(NotGuestRam)?;
        if len == 0 {
            return Ok(());
        }
        if !self.plan.is_ram(gpa, end) || end > 1 << 32 {
            return Err(NotGuestRam);
        }
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
        Ok(())
    }

    fn read<const N: usize>(&self, gpa: GuestPhysAddr) -> Result<[u8; N], NotGuestRam> {
        let a = gpa.as_u64();
        let end = a.checked_add(N as u64).ok_or(NotGuestRam)?;
        if !self.plan.is_ram(a, end) || end > 1 << 32 || !a.is_multiple_of(N as u64) {
            return Err(NotGuestRam);
        }
        let mut out = [0u8; N];
        // SAFETY: aligned read of guest RAM below 4 GiB (identity mapped), never Bulwark's.
        unsafe {
            core::ptr::copy_nonoverlapping(a as *const u8, out.as_mut_ptr(), N);
        }
        Ok(out)
    }
}

impl GuestMemRead for GuestRam<'_> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        self.read::<8>(gpa).map(u64::from_le_bytes)
    }
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        self.read::<4>(gpa).map(u32::from_le_bytes)
    }
    fn contains_ram(&self, range: GpaRange) -> bool {
        self.plan
            .is_ram(range.start().as_u64(), range.end().as_u64())
    }
}
