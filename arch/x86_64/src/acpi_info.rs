//! CPU count from the ACPI MADT (`acpi` crate), starting at the RSDP copy the boot loader passed.

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use bulwark_boot::multiboot2_info::AcpiRoot;
use core::ptr::NonNull;

/// Bulwark identity-maps physical memory, so mapping is the identity.
#[derive(Clone, Copy)]
struct IdentityMap;

impl AcpiHandler for IdentityMap {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        // The boot page tables identity-map the first 4 GiB; ACPI tables live below that on the
        // machines Bulwark supports (the caller checks the root pointer).
        let ptr = NonNull::new(phys as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: identity mapping: the physical range is readable at the same virtual address.
        unsafe { PhysicalMapping::new(phys, ptr, size, size, *self) }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// What Bulwark reads from the ACPI tables at boot.
pub struct AcpiSummary {
    /// Enabled processors in the MADT.
    pub cpus: usize,
    /// Whether the platform has an Intel IOMMU (a DMAR table: VT-d remapping units).
    pub dmar: bool,
}

/// Enabled processors listed in the MADT (local APIC and x2APIC entries with the enabled or
/// online-capable flag). Errors are described as text for the banner.
pub fn cpu_count(root: &AcpiRoot) -> Result<usize, &'static str> {
    summary(root).map(|s| s.cpus)
}

/// The MADT CPU count and whether a DMAR table exists.
pub fn summary(root: &AcpiRoot) -> Result<AcpiSummary, &'static str> {
    let (revision, addr) = match root.xsdt {
        Some(x) if root.revision >= 2 => (root.revision, x),
        _ => (0, u64::from(root.rsdt)),
    };
    if addr == 0 || addr >= 1 << 32 {
        return Err("ACPI root table outside the identity-mapped 4 GiB");
    }
    // SAFETY: `addr` comes from the boot loader's RSDP copy and lies in identity-mapped memory.
    let tables = unsafe { AcpiTables::from_rsdt(IdentityMap, revision, addr as usize) }
        .map_err(|_| "ACPI root table invalid")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no MADT")?;
    let mut n = 0;
    for e in madt.get().entries() {
        match e {
            MadtEntry::LocalApic(l) if l.flags & 0b11 != 0 => n += 1,
            MadtEntry::LocalX2Apic(l) if l.flags & 0b11 != 0 => n += 1,
            _ => {}
        }
    }
    let dmar = tables
        .headers()
        .any(|h| h.signature == acpi::sdt::Signature::DMAR);
    Ok(AcpiSummary { cpus: n, dmar })
}

/// Device ranges the ACPI tables name (docs/x86_64.md, "Platform model"): the I/O APICs
/// (MADT), the HPET (HPET table) and the PCI configuration windows (MCFG ECAM). Below 4 GiB the
/// memory plan passes every non-RAM gap through anyway; these matter where they lie above it.
/// Tables that are absent or malformed contribute nothing (their devices stay unmapped: a guest
/// touching them is stopped, which fails closed).
pub fn devices(root: &AcpiRoot) -> alloc::vec::Vec<(u64, u64)> {
    let mut out = alloc::vec::Vec::new();
    let (revision, addr) = match root.xsdt {
        Some(x) if root.revision >= 2 => (root.revision, x),
        _ => (0, u64::from(root.rsdt)),
    };
    if addr == 0 || addr >= 1 << 32 {
        return out;
    }
    // SAFETY: as in `summary`: the root comes from the boot loader's RSDP copy, identity mapped.
    let Ok(tables) = (unsafe { AcpiTables::from_rsdt(IdentityMap, revision, addr as usize) })
    else {
        return out;
    };
    if let Ok(madt) = tables.find_table::<Madt>() {
        for e in madt.get().entries() {
            if let MadtEntry::IoApic(io) = e {
                let a = u64::from(io.io_apic_address);
                out.push((a, a.saturating_add(0x1000)));
            }
        }
    }
    if let Ok(hpet) = acpi::HpetInfo::new(&tables) {
        let a = hpet.base_address as u64;
        out.push((a, a.saturating_add(0x1000)));
    }
    if let Ok(mcfg) = tables.find_table::<acpi::mcfg::Mcfg>() {
        for e in mcfg.get().entries() {
            let buses = u64::from(e.bus_number_end.saturating_sub(e.bus_number_start)) + 1;
            // ECAM: 1 MiB per bus, starting at the window's bus 0.
            let start = e
                .base_address
                .saturating_add(u64::from(e.bus_number_start) << 20);
            out.push((start, start.saturating_add(buses << 20)));
        }
    }
    out
}
