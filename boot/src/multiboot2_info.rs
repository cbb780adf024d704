//! The arch-neutral boot description, and its parser for the multiboot2 information (MBI) that
//! GRUB hands to Bulwark on x86_64.
//!
//! The MBI is treated as untrusted input: the parser never panics on truncated or garbage bytes,
//! it returns a [`ParseError`] instead (checked by the tests below with truncations and random
//! bytes). The `multiboot2` crate asserts on some malformed tags (memory-map entry size), so the
//! raw tag sequence is validated here before the crate sees it.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Kind of a physical memory range as the firmware reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Usable RAM.
    Ram,
    /// ACPI tables; RAM once the OS has read them.
    AcpiReclaimable,
    /// ACPI non-volatile storage: must be preserved.
    AcpiNvs,
    /// Defective RAM.
    Defective,
    /// Anything else (firmware, MMIO, unknown types).
    Reserved,
}

impl MemKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MemKind::Ram => "ram",
            MemKind::AcpiReclaimable => "acpi-reclaimable",
            MemKind::AcpiNvs => "acpi-nvs",
            MemKind::Defective => "defective",
            MemKind::Reserved => "reserved",
        }
    }
}

/// A physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRange {
    pub start: u64,
    pub end: u64,
    pub kind: MemKind,
}

/// A boot module (on x86: a multiboot2 `module2`), with its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootModule {
    pub start: u64,
    pub end: u64,
    pub cmdline: String,
}

/// Where the ACPI tables start, as the RSDP copy in the boot information says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiRoot {
    /// RSDP revision (0 = ACPI 1.0: RSDT only).
    pub revision: u8,
    pub rsdt: u32,
    /// XSDT address (revision >= 2 and non-zero only).
    pub xsdt: Option<u64>,
}

/// Everything Bulwark needs from the firmware/boot loader, independent of the boot protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootDescription {
    /// Physical memory ranges in firmware order.
    pub memory: Vec<MemRange>,
    /// Modules in boot-loader order; the first one is the guest kernel.
    pub modules: Vec<BootModule>,
    /// Bulwark's own command line.
    pub cmdline: String,
    pub boot_loader: Option<String>,
    pub acpi: Option<AcpiRoot>,
    /// The firmware that started the boot loader, as far as the boot information says.
    pub firmware: Firmware,
    /// Which table `memory` was taken from.
    pub memory_source: MemorySource,
}

/// The platform firmware, as far as the boot information tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Firmware {
    /// No EFI tag: a BIOS (legacy) boot, or a device tree on arm64.
    #[default]
    Legacy,
    /// UEFI: the loader passed the EFI system table (multiboot2 tag 12 or 11) or the EFI
    /// memory map (tag 17). The value is the system table's physical address (0 when only the
    /// memory map was passed).
    Uefi { system_table: u64 },
}

/// Where [`BootDescription::memory`] came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemorySource {
    /// The multiboot2 memory map (tag 6), or the device tree.
    #[default]
    Standard,
    /// The EFI memory map (tag 17), used only when tag 6 is absent.
    Efi,
    /// Neither: no memory map at all.
    None,
}

impl BootDescription {
    /// Total bytes of usable RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.memory
            .iter()
            .filter(|r| r.kind == MemKind::Ram)
            .fold(0u64, |acc, r| {
                acc.saturating_add(r.end.saturating_sub(r.start))
            })
    }
}

/// Why a multiboot2 information block was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the header, or than the header's total size says.
    Truncated,
    /// Total size smaller than a header plus end tag, or not a multiple of 8.
    BadTotalSize,
    /// A tag runs past the end, is smaller than a tag header, or the end tag is missing.
    BadTagSequence,
    /// The memory-map tag has an entry size or length Bulwark cannot read.
    BadMemoryMap,
    /// A memory range or module wraps around the address space or ends before it starts.
    BadRange,
    /// The `multiboot2` crate refused the block.
    Rejected,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            ParseError::Truncated => "truncated boot information",
            ParseError::BadTotalSize => "bad total size in the boot information header",
            ParseError::BadTagSequence => "malformed tag sequence",
            ParseError::BadMemoryMap => "malformed memory-map tag",
            ParseError::BadRange => "memory range or module wraps or is empty",
            ParseError::Rejected => "multiboot2 parser rejected the boot information",
        };
        f.write_str(s)
    }
}

/// The multiboot2 boot loader magic in EAX at entry.
pub const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

const TAG_END: u32 = 0;
const TAG_MMAP: u32 = 6;
const MMAP_ENTRY_SIZE: u32 = 24;
const TAG_EFI32: u32 = 11;
const TAG_EFI64: u32 = 12;
const TAG_EFI_MMAP: u32 = 17;
/// Size of an EFI memory descriptor as UEFI 2.x defines it (`EFI_MEMORY_DESCRIPTOR`, version 1).
const EFI_DESC_MIN: u32 = 40;

fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let s = b.get(off..end)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

/// Length the header claims (`total_size`), when at least the 8-byte header is present.
pub fn total_size(bytes: &[u8]) -> Option<usize> {
    read_u32(bytes, 0).map(|v| v as usize)
}

/// Smallest valid size (header included) of the tags Bulwark reads (multiboot2 spec 3.6).
fn min_tag_size(typ: u32) -> usize {
    match typ {
        1 | 2 => 9,     // command line, boot loader name: header + at least the NUL
        3 => 17,        // module: header + start + end + NUL
        TAG_MMAP => 16, // header + entry size + entry version
        14 => 28,       // RSDP v1 copy: header + 20 bytes
        15 => 44,       // RSDP v2 copy: header + 36 bytes
        TAG_EFI32 => 12,
        TAG_EFI64 => 16,
        TAG_EFI_MMAP => 16, // header + descriptor size + descriptor version
        _ => 8,
    }
}

/// Check the raw tag sequence: every tag inside the block, 8-aligned, a terminating end tag,
/// memory-map entries of the size the `multiboot2` crate expects.
fn validate_raw(b: &[u8]) -> Result<(), ParseError> {
    let mut off = 8usize;
    loop {
        let typ = read_u32(b, off).ok_or(ParseError::BadTagSequence)?;
        let size = read_u32(b, off + 4).ok_or(ParseError::BadTagSequence)? as usize;
        if size < 8 {
            return Err(ParseError::BadTagSequence);
        }
        let end = off.checked_add(size).ok_or(ParseError::BadTagSequence)?;
        if end > b.len() {
            return Err(ParseError::BadTagSequence);
        }
        if typ == TAG_END {
            return if size == 8 {
                Ok(())
            } else {
                Err(ParseError::BadTagSequence)
            };
        }
        // The crate asserts a tag is at least its structure's size: check that here.
        if size < min_tag_size(typ) {
            return Err(ParseError::BadTagSequence);
        }
        if typ == TAG_MMAP {
            let entry_size = read_u32(b, off + 8).ok_or(ParseError::BadMemoryMap)?;
            if size < 16 || entry_size != MMAP_ENTRY_SIZE || !(size - 16).is_multiple_of(24) {
                return Err(ParseError::BadMemoryMap);
            }
        }
        if typ == TAG_EFI_MMAP {
            // The crate asserts on all of these; UEFI firmware uses 48-byte descriptors today.
            let desc_size = read_u32(b, off + 8).ok_or(ParseError::BadMemoryMap)?;
            let desc_version = read_u32(b, off + 12).ok_or(ParseError::BadMemoryMap)?;
            if desc_version != 1
                || desc_size < EFI_DESC_MIN
                || !desc_size.is_multiple_of(8)
                || !(size - 16).is_multiple_of(desc_size as usize)
            {
                return Err(ParseError::BadMemoryMap);
            }
        }
        // Tags start 8-aligned.
        off = end.checked_add(7).ok_or(ParseError::BadTagSequence)? & !7;
        if off >= b.len() {
            return Err(ParseError::BadTagSequence);
        }
    }
}

/// Parse a multiboot2 information block. `bytes` may be longer than the block; it is cut to the
/// header's `total_size`.
pub fn parse(bytes: &[u8]) -> Result<BootDescription, ParseError> {
    let total = total_size(bytes).ok_or(ParseError::Truncated)?;
    if total < 16 || !total.is_multiple_of(8) {
        return Err(ParseError::BadTotalSize);
    }
    let block = bytes.get(..total).ok_or(ParseError::Truncated)?;
    validate_raw(block)?;

    // The crate reads through a pointer and needs 8-byte alignment: copy when unaligned.
    let mut copy: Vec<u64> = Vec::new();
    let ptr = if (block.as_ptr() as usize).is_multiple_of(8) {
        block.as_ptr()
    } else {
        copy.resize(total / 8, 0);
        for (dst, chunk) in copy.iter_mut().zip(block.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            *dst = u64::from_ne_bytes(a);
        }
        copy.as_ptr().cast::<u8>()
    };
    // SAFETY: `ptr` points to `total` readable, 8-aligned bytes that stay alive and unchanged
    // (borrowed `block`, or the local `copy`) for the lifetime of `info`, and the header's total
    // size equals `total`, so the crate reads nothing outside them.
    let info = unsafe { ::multiboot2::BootInformation::load(ptr.cast()) }
        .map_err(|_| ParseError::Rejected)?;

    let mut desc = BootDescription {
        memory_source: MemorySource::None,
        ..BootDescription::default()
    };
    if let Some(mmap) = info.memory_map_tag() {
        desc.memory_source = MemorySource::Standard;
        for area in mmap.memory_areas() {
            let start = area.start_address();
            let end = start.checked_add(area.size()).ok_or(ParseError::BadRange)?;
            let kind = match u32::from(area.typ()) {
                1 => MemKind::Ram,
                3 => MemKind::AcpiReclaimable,
                4 => MemKind::AcpiNvs,
                5 => MemKind::Defective,
                _ => MemKind::Reserved,
            };
            if end > start {
                desc.memory.push(MemRange { start, end, kind });
            }
        }
    }
    if let Some(efi) = info.efi_memory_map_tag() {
        if desc.firmware == Firmware::Legacy {
            desc.firmware = Firmware::Uefi { system_table: 0 };
        }
        // GRUB passes both maps on UEFI, the standard one derived from the EFI one: prefer the
        // standard map, fall back to the EFI map when a loader passes only that.
        if desc.memory_source == MemorySource::None {
            desc.memory_source = MemorySource::Efi;
            for d in efi.memory_areas() {
                let start = d.phys_start;
                let len = d.page_count.checked_mul(4096).ok_or(ParseError::BadRange)?;
                let end = start.checked_add(len).ok_or(ParseError::BadRange)?;
                if end > start {
                    desc.memory.push(MemRange {
                        start,
                        end,
                        kind: efi_kind(d.ty.0),
                    });
                }
            }
        }
    }
    if let Some(t) = info.efi_sdt64_tag() {
        desc.firmware = Firmware::Uefi {
            system_table: t.sdt_address() as u64,
        };
    } else if let Some(t) = info.efi_sdt32_tag() {
        desc.firmware = Firmware::Uefi {
            system_table: t.sdt_address() as u64,
        };
    }
    for m in info.module_tags() {
        let start = u64::from(m.start_address());
        let end = u64::from(m.end_address());
        if end < start {
            return Err(ParseError::BadRange);
        }
        let cmdline = m.cmdline().unwrap_or("").to_string();
        desc.modules.push(BootModule {
            start,
            end,
            cmdline,
        });
    }
    if let Some(c) = info.command_line_tag() {
        desc.cmdline = c.cmdline().unwrap_or("").to_string();
    }
    if let Some(b) = info.boot_loader_name_tag() {
        desc.boot_loader = b.name().ok().map(|s| s.to_string());
    }
    if let Some(r) = info.rsdp_v2_tag() {
        let xsdt = r.xsdt_address() as u64;
        desc.acpi = Some(AcpiRoot {
            revision: r.revision(),
            rsdt: 0,
            xsdt: (xsdt != 0).then_some(xsdt),
        });
        // The v2 tag also carries the RSDT address; prefer the v1 tag's value when present.
    }
    if let Some(r) = info.rsdp_v1_tag() {
        let rsdt = u32::try_from(r.rsdt_address()).unwrap_or(0);
        match desc.acpi.as_mut() {
            Some(a) => a.rsdt = rsdt,
            None => {
                desc.acpi = Some(AcpiRoot {
                    revision: r.revision(),
                    rsdt,
                    xsdt: None,
                })
            }
        }
    }
    Ok(desc)
}

/// What an EFI memory type (UEFI 2.x, `EFI_MEMORY_TYPE`) is once boot services have exited.
/// Loader and boot-services memory is free RAM then (GRUB's own copies of the modules are
/// reported separately as modules); runtime-services memory, MMIO and anything unknown is not.
fn efi_kind(ty: u32) -> MemKind {
    match ty {
        1..=4 | 7 => MemKind::Ram, // loader code/data, boot-services code/data, conventional
        8 => MemKind::Defective,   // unusable
        9 => MemKind::AcpiReclaimable,
        10 => MemKind::AcpiNvs,
        _ => MemKind::Reserved, // reserved, runtime code/data, MMIO, PAL, persistent, unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build an MBI byte by byte. Layout (multiboot2 spec, section 3.6): u32 total_size,
    /// u32 reserved, then tags {u32 type, u32 size, payload} each padded to 8 bytes, ending
    /// with the end tag {0, 8}.
    struct Mbi(Vec<u8>);
    impl Mbi {
        fn new() -> Self {
            Mbi(alloc::vec![0; 8])
        }
        fn tag(mut self, typ: u32, payload: &[u8]) -> Self {
            let size = 8 + payload.len() as u32;
            self.0.extend_from_slice(&typ.to_le_bytes());
            self.0.extend_from_slice(&size.to_le_bytes());
            self.0.extend_from_slice(payload);
            while !self.0.len().is_multiple_of(8) {
                self.0.push(0);
            }
            self
        }
        fn finish(self) -> Vec<u8> {
            let mut b = self.tag(0, &[]).0;
            let n = b.len() as u32;
            b[..4].copy_from_slice(&n.to_le_bytes());
            b
        }
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn mmap(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(base, len, typ) in entries {
            p.extend_from_slice(&base.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&typ.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
        }
        p
    }

    fn module(start: u32, end: u32, cmd: &str) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p.extend_from_slice(&cstr(cmd));
        p
    }

    fn sample() -> Vec<u8> {
        let mut rsdp = Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0); // checksum (not checked by the parser)
        rsdp.extend_from_slice(b"BOCHS ");
        rsdp.push(0); // revision
        rsdp.extend_from_slice(&0x0fff_0000u32.to_le_bytes());
        Mbi::new()
            .tag(1, &cstr("log=debug attr=0x1000:rw"))
            .tag(2, &cstr("GRUB 2.06"))
            .tag(
                3,
                &module(0x0100_0000, 0x0100_8000, "/boot/guest scenario=all"),
            )
            .tag(3, &module(0x0100_8000, 0x0100_9000, ""))
            .tag(
                6,
                &mmap(&[
                    (0, 0x9f000, 1),
                    (0x9f000, 0x1000, 2),
                    (0x100000, 0x0fef_0000, 1),
                    (0x0fff_0000, 0x10000, 3),
                    (0xfffc_0000, 0x40000, 2),
                ]),
            )
            .tag(14, &rsdp)
            .finish()
    }

    /// An EFI memory map payload: descriptor size, version 1, then (type, start, pages) entries
    /// laid out as `EFI_MEMORY_DESCRIPTOR` padded to `desc_size`.
    fn efi_mmap(desc_size: u32, entries: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&desc_size.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        for &(ty, start, pages) in entries {
            let mut d = Vec::new();
            d.extend_from_slice(&ty.to_le_bytes());
            d.extend_from_slice(&0u32.to_le_bytes()); // padding
            d.extend_from_slice(&start.to_le_bytes()); // physical start
            d.extend_from_slice(&0u64.to_le_bytes()); // virtual start
            d.extend_from_slice(&pages.to_le_bytes());
            d.extend_from_slice(&0xfu64.to_le_bytes()); // attributes
            d.resize(desc_size as usize, 0);
            p.extend_from_slice(&d);
        }
        p
    }

    fn efi_sample() -> Vec<(u32, u64, u64)> {
        vec![
            (7, 0, 0xa0),              // conventional
            (2, 0x10_0000, 0x100),     // loader data
            (4, 0x20_0000, 0x200),     // boot-services data
            (9, 0x40_0000, 0x10),      // ACPI reclaim
            (10, 0x41_0000, 0x10),     // ACPI NVS
            (5, 0x42_0000, 0x10),      // runtime-services code
            (11, 0xfec0_0000, 1),      // MMIO
            (7, 0x1_0000_0000, 0x400), // RAM above 4 GiB
        ]
    }

    #[test]
    fn uefi_boot_without_standard_map_uses_the_efi_map() {
        let b = Mbi::new()
            .tag(12, &0x0fe0_0018u64.to_le_bytes())
            .tag(17, &efi_mmap(48, &efi_sample()))
            .finish();
        let d = parse(&b).expect("valid MBI");
        assert_eq!(
            d.firmware,
            Firmware::Uefi {
                system_table: 0x0fe0_0018
            }
        );
        assert_eq!(d.memory_source, MemorySource::Efi);
        let kinds: Vec<_> = d.memory.iter().map(|r| (r.start, r.end, r.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, 0xa_0000, MemKind::Ram),
                (0x10_0000, 0x20_0000, MemKind::Ram),
                (0x20_0000, 0x40_0000, MemKind::Ram),
                (0x40_0000, 0x41_0000, MemKind::AcpiReclaimable),
                (0x41_0000, 0x42_0000, MemKind::AcpiNvs),
                (0x42_0000, 0x43_0000, MemKind::Reserved),
                (0xfec0_0000, 0xfec0_1000, MemKind::Reserved),
                (0x1_0000_0000, 0x1_0040_0000, MemKind::Ram),
            ]
        );
    }

    #[test]
    fn uefi_boot_prefers_the_standard_map() {
        let b = Mbi::new()
            .tag(6, &mmap(&[(0, 0x9f000, 1), (0x100000, 0x0fef_0000, 1)]))
            .tag(17, &efi_mmap(48, &efi_sample()))
            .finish();
        let d = parse(&b).expect("valid MBI");
        assert_eq!(d.firmware, Firmware::Uefi { system_table: 0 });
        assert_eq!(d.memory_source, MemorySource::Standard);
        assert_eq!(d.memory.len(), 2);
        let bios = parse(&sample()).expect("valid MBI");
        assert_eq!(bios.firmware, Firmware::Legacy);
        assert_eq!(bios.memory_source, MemorySource::Standard);
    }

    #[test]
    fn malformed_efi_maps_are_refused() {
        // Descriptor smaller than EFI_MEMORY_DESCRIPTOR, unaligned, not dividing the payload,
        // wrong version, a page count that overflows.
        for desc_size in [0u32, 8, 32, 44] {
            let b = Mbi::new()
                .tag(17, &efi_mmap(desc_size.max(40), &efi_sample())[..])
                .finish();
            let mut b2 = b.clone();
            // Patch the descriptor size in place (tag 17 starts at offset 8).
            b2[16..20].copy_from_slice(&desc_size.to_le_bytes());
            assert_eq!(
                parse(&b2),
                Err(ParseError::BadMemoryMap),
                "size {desc_size}"
            );
        }
        let mut v2 = efi_mmap(48, &efi_sample());
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        let b = Mbi::new().tag(17, &v2).finish();
        assert_eq!(parse(&b), Err(ParseError::BadMemoryMap));
        let b = Mbi::new()
            .tag(17, &efi_mmap(48, &[(7, 0x1000, u64::MAX / 2)]))
            .finish();
        assert_eq!(parse(&b), Err(ParseError::BadRange));
        // Truncated EFI tags never panic.
        let full = Mbi::new()
            .tag(12, &0x1000u64.to_le_bytes())
            .tag(17, &efi_mmap(48, &efi_sample()))
            .finish();
        for n in 0..full.len() {
            let _ = parse(&full[..n]);
        }
    }

    #[test]
    fn parses_built_mbi() {
        let d = parse(&sample()).expect("valid MBI");
        assert_eq!(d.cmdline, "log=debug attr=0x1000:rw");
        assert_eq!(d.boot_loader.as_deref(), Some("GRUB 2.06"));
        assert_eq!(d.modules.len(), 2);
        assert_eq!(d.modules[0].start, 0x0100_0000);
        assert_eq!(d.modules[0].end, 0x0100_8000);
        assert_eq!(d.modules[0].cmdline, "/boot/guest scenario=all");
        assert_eq!(d.modules[1].cmdline, "");
        assert_eq!(d.memory.len(), 5);
        assert_eq!(
            d.memory[2],
            MemRange {
                start: 0x100000,
                end: 0x0fff_0000,
                kind: MemKind::Ram
            }
        );
        assert_eq!(d.memory[3].kind, MemKind::AcpiReclaimable);
        assert_eq!(d.memory[4].kind, MemKind::Reserved);
        assert_eq!(d.ram_bytes(), 0x9f000 + 0x0fef_0000);
        assert_eq!(
            d.acpi,
            Some(AcpiRoot {
                revision: 0,
                rsdt: 0x0fff_0000,
                xsdt: None
            })
        );
    }

    #[test]
    fn unaligned_buffer_is_copied() {
        let s = sample();
        let mut shifted = alloc::vec![0u8; 1];
        shifted.extend_from_slice(&s);
        assert_eq!(parse(&shifted[1..]), parse(&s));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let s = sample();
        for n in 0..s.len() {
            assert!(parse(&s[..n]).is_err(), "truncated to {n} accepted");
        }
    }

    #[test]
    fn bad_memory_map_entry_size_is_an_error() {
        let mut p = mmap(&[(0, 0x1000, 1)]);
        p[0] = 20;
        let b = Mbi::new().tag(6, &p).finish();
        assert_eq!(parse(&b), Err(ParseError::BadMemoryMap));
    }

    #[test]
    fn wrapping_memory_range_is_an_error() {
        let b = Mbi::new()
            .tag(6, &mmap(&[(u64::MAX - 0xfff, 0x2000, 1)]))
            .finish();
        assert_eq!(parse(&b), Err(ParseError::BadRange));
    }

    #[test]
    fn missing_end_tag_is_an_error() {
        let mut b = Mbi::new().tag(1, &cstr("x")).0;
        let n = b.len() as u32;
        b[..4].copy_from_slice(&n.to_le_bytes());
        assert!(parse(&b).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // A small xorshift generator: deterministic pseudo-random bytes, plus variants that keep
        // a plausible header so the tag walker itself is exercised.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = sample();
        for round in 0..4000 {
            let len = (next() % 300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && b.len() >= 8 {
                let n = b.len() as u32 & !7;
                b[..4].copy_from_slice(&n.to_le_bytes());
            }
            let _ = parse(&b);
            // Flip bytes of a valid MBI.
            let mut m = base.clone();
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
            let _ = parse(&m);
        }
    }

    #[test]
    fn fixture_from_grub_in_qemu() {
        // Captured from a real GRUB boot in QEMU (see boot/fixtures/README.md).
        let bytes = include_bytes!("../fixtures/x86_64-grub-qemu.mbi");
        let d = parse(bytes).expect("real GRUB MBI parses");
        assert!(d.boot_loader.as_deref().unwrap_or("").starts_with("GRUB"));
        // QEMU -m 256M: 639 KiB + 255 MiB - 128 KiB of RAM.
        assert_eq!(d.ram_bytes() >> 20, 255);
        assert!(d
            .memory
            .iter()
            .any(|r| r.start == 0x10_0000 && r.kind == MemKind::Ram));
        assert_eq!(d.modules.len(), 1);
        assert!(d.modules[0].end > d.modules[0].start);
        assert_eq!(d.modules[0].cmdline, "scenario=checks");
        assert_eq!(d.cmdline, "log=info");
        let acpi = d.acpi.expect("RSDP tag");
        assert_ne!(acpi.rsdt, 0);
        // Every truncation of a real block is refused too.
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n]).is_err());
        }
    }
}
