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
