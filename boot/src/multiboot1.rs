//! Multiboot (v1) guest images and the boot information handed to them.
//!
//! * [`parse_image`] validates a guest kernel (the Multiboot header in its first 8 KiB, then ELF32,
//!   ELF64 or the a.out-kludge addresses) into a list of segments to copy. The image is hostile
//!   input: every offset and size is checked without overflow; nothing here panics.
//! * [`build_info`] lays out the Multiboot information structure (flags, mem_lower/upper, command
//!   line, modules, memory map, boot loader name) for a given guest-physical base address.
//!
//! Multiboot specification 0.6.96, sections 3.1 (header) and 3.3 (boot information format).

use alloc::string::String;
use alloc::vec::Vec;

/// Magic in the image's Multiboot header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Magic the loader puts in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie entirely in the first 8 KiB of the image.
pub const HEADER_SEARCH: usize = 8192;

/// Header flags Bulwark honours: bit 0 (page-align modules), bit 1 (memory information).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMINFO: u32 = 1 << 1;
const FLAG_VIDEO: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

/// Why a guest image was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    NoHeader,
    /// A required flag (bits 0-15) Bulwark does not implement (e.g. a video mode).
    UnsupportedFlags(u32),
    NotElfAndNoAddresses,
    BadElf(&'static str),
    BadAout(&'static str),
    NoSegments,
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::NoHeader => write!(
                f,
                "no Multiboot (v1) header (magic 0x1badb002 with a valid checksum) in the first 8 KiB"
            ),
            ImageError::UnsupportedFlags(b) => write!(
                f,
                "the Multiboot header requires features Bulwark does not provide (flags {b:#x}; only page-aligned modules and memory information are supported)"
            ),
            ImageError::NotElfAndNoAddresses => write!(
                f,
                "neither an ELF file nor a Multiboot header with load addresses (flag 16)"
            ),
            ImageError::BadElf(w) => write!(f, "bad ELF image: {w}"),
            ImageError::BadAout(w) => write!(f, "bad Multiboot load addresses: {w}"),
            ImageError::NoSegments => write!(f, "the image has nothing to load"),
        }
    }
}

/// Copy `filesz` bytes from `file_offset` of the image to guest-physical `dst`, then zero up to
/// `memsz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub dst: u64,
    pub file_offset: usize,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    pub fn end(&self) -> u64 {
        // `parse_image` checked that this does not overflow.
        self.dst.saturating_add(self.memsz)
    }
}

/// A validated guest kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub entry: u64,
    pub segments: Vec<Segment>,
    pub header_flags: u32,
}

impl Image {
    /// Lowest and highest (exclusive) guest-physical address the image occupies.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.dst).min().unwrap_or(0);
        let hi = self.segments.iter().map(|s| s.end()).max().unwrap_or(0);
        (lo, hi)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Find the Multiboot header: returns (offset, flags).
fn find_header(image: &[u8]) -> Option<(usize, u32)> {
    let limit = image.len().min(HEADER_SEARCH);
    let mut off = 0;
    while off + 12 <= limit {
        if u32_at(image, off) == Some(HEADER_MAGIC) {
            let flags = u32_at(image, off + 4)?;
            let sum = u32_at(image, off + 8)?;
            if HEADER_MAGIC.wrapping_add(flags).wrapping_add(sum) == 0 {
                return Some((off, flags));
            }
        }
        off += 4;
    }
    None
}

/// Validate a Multiboot (v1) kernel image.
pub fn parse_image(image: &[u8]) -> Result<Image, ImageError> {
    let (hdr, flags) = find_header(image).ok_or(ImageError::NoHeader)?;
    let required = flags & 0xffff;
    let unsupported = required & !(FLAG_PAGE_ALIGN | FLAG_MEMINFO);
    if unsupported != 0 {
        let _ = FLAG_VIDEO;
        return Err(ImageError::UnsupportedFlags(unsupported));
    }
    let is_elf = image.get(..4) == Some(b"\x7fELF".as_slice());
    let mut img = if is_elf {
        parse_elf(image)?
    } else if flags & FLAG_AOUT_KLUDGE != 0 {
        parse_aout(image, hdr)?
    } else {
        return Err(ImageError::NotElfAndNoAddresses);
    };
    img.header_flags = flags;
    if img.segments.iter().all(|s| s.memsz == 0) {
        return Err(ImageError::NoSegments);
    }
    Ok(img)
}

fn parse_aout(image: &[u8], hdr: usize) -> Result<Image, ImageError> {
    let f =
        |i: usize| u32_at(image, hdr + 12 + 4 * i).ok_or(ImageError::BadAout("header truncated"));
    let header_addr = u64::from(f(0)?);
    let load_addr = u64::from(f(1)?);
    let load_end = u64::from(f(2)?);
    let bss_end = u64::from(f(3)?);
    let entry = u64::from(f(4)?);
    if load_addr > header_addr {
        return Err(ImageError::BadAout("load_addr above header_addr"));
    }
    let file_offset =
        (hdr as u64)
            .checked_sub(header_addr - load_addr)
            .ok_or(ImageError::BadAout(
                "load_addr before the start of the file",
            ))?;
    let file_offset = usize::try_from(file_offset).map_err(|_| ImageError::BadAout("offset"))?;
    let avail = (image.len() - file_offset) as u64;
    let filesz = if load_end == 0 {
        avail
    } else {
        load_end
            .checked_sub(load_addr)
            .ok_or(ImageError::BadAout("load_end_addr below load_addr"))?
    };
    if filesz > avail {
        return Err(ImageError::BadAout(
            "load_end_addr beyond the end of the file",
        ));
    }
    let end = load_addr + filesz;
    let memsz = if bss_end == 0 {
        filesz
    } else {
        bss_end
            .checked_sub(load_addr)
            .filter(|&m| m >= filesz)
            .ok_or(ImageError::BadAout("bss_end_addr below load_end_addr"))?
    };
    if end > u64::from(u32::MAX) || load_addr + memsz > 1 << 32 {
        return Err(ImageError::BadAout("above 4 GiB"));
    }
    Ok(Image {
        entry,
        segments: alloc::vec![Segment {
            dst: load_addr,
            file_offset,
            filesz,
            memsz
        }],
        header_flags: 0,
    })
}

fn parse_elf(b: &[u8]) -> Result<Image, ImageError> {
    let class = *b.get(4).ok_or(ImageError::BadElf("truncated"))?;
    if b.get(5) != Some(&1) {
        return Err(ImageError::BadElf("not little-endian"));
    }
    let machine = u16_at(b, 18).ok_or(ImageError::BadElf("truncated"))?;
    let (entry, phoff, phentsize, phnum, is64) = match class {
        1 => {
            if machine != 3 {
                return Err(ImageError::BadElf("ELF32 but not i386"));
            }
            (
                u64::from(u32_at(b, 24).ok_or(ImageError::BadElf("truncated"))?),
                u64::from(u32_at(b, 28).ok_or(ImageError::BadElf("truncated"))?),
                u16_at(b, 42).ok_or(ImageError::BadElf("truncated"))?,
                u16_at(b, 44).ok_or(ImageError::BadElf("truncated"))?,
                false,
            )
        }
        2 => {
            if machine != 62 {
                return Err(ImageError::BadElf("ELF64 but not x86-64"));
            }
            (
                u64_at(b, 24).ok_or(ImageError::BadElf("truncated"))?,
                u64_at(b, 32).ok_or(ImageError::BadElf("truncated"))?,
                u16_at(b, 54).ok_or(ImageError::BadElf("truncated"))?,
                u16_at(b, 56).ok_or(ImageError::BadElf("truncated"))?,
                true,
            )
        }
        _ => return Err(ImageError::BadElf("unknown ELF class")),
    };
    let min_ph = if is64 { 56 } else { 32 };
    if usize::from(phentsize) < min_ph {
        return Err(ImageError::BadElf("program header entry too small"));
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let off = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(ImageError::BadElf("program header offset overflows"))?;
        let t = |_: usize| ImageError::BadElf("program header truncated");
        let p_type = u32_at(b, off).ok_or(t(0))?;
        if p_type != 1 {
            continue; // only PT_LOAD
        }
        let (p_offset, p_paddr, p_filesz, p_memsz) = if is64 {
            (
                u64_at(b, off.saturating_add(8)).ok_or(t(0))?,
                u64_at(b, off.saturating_add(24)).ok_or(t(0))?,
                u64_at(b, off.saturating_add(32)).ok_or(t(0))?,
                u64_at(b, off.saturating_add(40)).ok_or(t(0))?,
            )
        } else {
            (
                u64::from(u32_at(b, off.saturating_add(4)).ok_or(t(0))?),
                u64::from(u32_at(b, off.saturating_add(12)).ok_or(t(0))?),
                u64::from(u32_at(b, off.saturating_add(16)).ok_or(t(0))?),
                u64::from(u32_at(b, off.saturating_add(20)).ok_or(t(0))?),
            )
        };
        if p_memsz == 0 {
            continue;
        }
        if p_filesz > p_memsz {
            return Err(ImageError::BadElf("segment file size above memory size"));
        }
        let file_end = p_offset
            .checked_add(p_filesz)
            .ok_or(ImageError::BadElf("segment offset overflows"))?;
        if file_end > b.len() as u64 {
            return Err(ImageError::BadElf("segment beyond the end of the file"));
        }
        let end = p_paddr
            .checked_add(p_memsz)
            .ok_or(ImageError::BadElf("segment address overflows"))?;
        if end > 1 << 32 {
            return Err(ImageError::BadElf(
                "segment above 4 GiB (a Multiboot kernel starts in 32-bit mode)",
            ));
        }
        segments.push(Segment {
            dst: p_paddr,
            file_offset: usize::try_from(p_offset).map_err(|_| ImageError::BadElf("offset"))?,
            filesz: p_filesz,
            memsz: p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(ImageError::NoSegments);
    }
    // Segments must not overlap each other.
    for (i, a) in segments.iter().enumerate() {
        for c in segments.iter().skip(i + 1) {
            if a.dst < c.end() && c.dst < a.end() {
                return Err(ImageError::BadElf("overlapping segments"));
            }
        }
    }
    if entry >= 1 << 32 {
        return Err(ImageError::BadElf("entry point above 4 GiB"));
    }
    Ok(Image {
        entry,
        segments,
        header_flags: 0,
    })
}

/// Multiboot memory-map types.
pub const MMAP_RAM: u32 = 1;
pub const MMAP_RESERVED: u32 = 2;
pub const MMAP_ACPI: u32 = 3;
pub const MMAP_NVS: u32 = 4;
pub const MMAP_BAD: u32 = 5;

/// One entry of the memory map the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub typ: u32,
}

/// A module passed through to the guest (already in guest RAM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoModule {
    pub start: u32,
    pub end: u32,
    pub cmdline: String,
}

/// Multiboot information flags.
pub const INFO_MEM: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MMAP: u32 = 1 << 6;
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// Size of the fixed part of the information structure.
const INFO_FIXED: usize = 88;

/// Build the Multiboot information block to be placed at guest-physical `base` (< 4 GiB).
/// Layout: the 88-byte structure, the module list (16 bytes each), the memory map (24 bytes per
/// entry: size=20, base, length, type), then the NUL-terminated strings.
pub fn build_info(
    base: u32,
    cmdline: &str,
    modules: &[InfoModule],
    map: &[MapEntry],
    loader_name: &str,
) -> Option<Vec<u8>> {
    let mods_off = INFO_FIXED;
    let mmap_off = mods_off.checked_add(modules.len().checked_mul(16)?)?;
    let mmap_len = map.len().checked_mul(24)?;
    let mut strings_off = mmap_off.checked_add(mmap_len)?;
    let mut out = alloc::vec![0u8; strings_off];
    let addr = |off: usize| -> Option<u32> { base.checked_add(u32::try_from(off).ok()?) };
    let put_str = |out: &mut Vec<u8>, s: &str, strings_off: &mut usize| -> Option<u32> {
        let a = addr(*strings_off)?;
        out.extend_from_slice(s.as_bytes());
        out.push(0);
        *strings_off = out.len();
        Some(a)
    };
    let set = |out: &mut Vec<u8>, off: usize, v: u32| {
        if let Some(s) = out.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    };

    // mem_lower: KiB of RAM from 0 (at most 640); mem_upper: KiB of RAM contiguous from 1 MiB.
    let lower = map
        .iter()
        .find(|e| e.typ == MMAP_RAM && e.start == 0)
        .map(|e| e.end.min(640 * 1024) / 1024)
        .unwrap_or(0);
    let mut upper_end = 0x10_0000u64;
    while let Some(e) = map
        .iter()
        .find(|e| e.typ == MMAP_RAM && e.start <= upper_end && e.end > upper_end)
    {
        upper_end = e.end;
    }
    let upper = (upper_end - 0x10_0000) / 1024;

    let mut flags = INFO_MEM | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    set(&mut out, 4, lower as u32);
    set(&mut out, 8, u32::try_from(upper).unwrap_or(u32::MAX));
    let c = put_str(&mut out, cmdline, &mut strings_off)?;
    set(&mut out, 16, c);
    if !modules.is_empty() {
        flags |= INFO_MODS;
        set(&mut out, 20, u32::try_from(modules.len()).ok()?);
        set(&mut out, 24, addr(mods_off)?);
        for (i, m) in modules.iter().enumerate() {
            let o = mods_off + 16 * i;
            set(&mut out, o, m.start);
            set(&mut out, o + 4, m.end);
            let s = put_str(&mut out, &m.cmdline, &mut strings_off)?;
            set(&mut out, o + 8, s);
        }
    }
    set(&mut out, 44, u32::try_from(mmap_len).ok()?);
    set(&mut out, 48, addr(mmap_off)?);
    for (i, e) in map.iter().enumerate() {
        let o = mmap_off + 24 * i;
        set(&mut out, o, 20);
        let (s, l) = (e.start, e.end.saturating_sub(e.start));
        set(&mut out, o + 4, s as u32);
        set(&mut out, o + 8, (s >> 32) as u32);
        set(&mut out, o + 12, l as u32);
        set(&mut out, o + 16, (l >> 32) as u32);
        set(&mut out, o + 20, e.typ);
    }
    let n = put_str(&mut out, loader_name, &mut strings_off)?;
    set(&mut out, 64, n);
    set(&mut out, 0, flags);
    // The block must not wrap past 4 GiB.
    addr(out.len())?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF32 image: ELF header, one PT_LOAD program header, the Multiboot header in the
    /// loaded bytes. Layout: [0..52) ELF header, [52..84) program header, [84..96) Multiboot
    /// header, [96..128) code bytes.
    fn elf32(paddr: u32, memsz: u32, flags: u32) -> Vec<u8> {
        let mut b = alloc::vec![0u8; 128];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1; // ELFCLASS32
        b[5] = 1; // little-endian
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
        b[24..28].copy_from_slice(&(paddr + 96).to_le_bytes()); // entry
        b[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
        b[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
        b[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 52;
        b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b[ph + 4..ph + 8].copy_from_slice(&0u32.to_le_bytes()); // offset
        b[ph + 8..ph + 12].copy_from_slice(&paddr.to_le_bytes()); // vaddr
        b[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes()); // paddr
        b[ph + 16..ph + 20].copy_from_slice(&128u32.to_le_bytes()); // filesz
        b[ph + 20..ph + 24].copy_from_slice(&memsz.to_le_bytes()); // memsz
        let mb = 84;
        b[mb..mb + 4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        b[mb + 4..mb + 8].copy_from_slice(&flags.to_le_bytes());
        let sum = 0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags));
        b[mb + 8..mb + 12].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn elf32_image_parses() {
        let img = parse_image(&elf32(0x40_0000, 0x2000, 3)).expect("valid");
        assert_eq!(img.entry, 0x40_0060);
        assert_eq!(
            img.segments,
            alloc::vec![Segment {
                dst: 0x40_0000,
                file_offset: 0,
                filesz: 128,
                memsz: 0x2000
            }]
        );
        assert_eq!(img.span(), (0x40_0000, 0x40_2000));
    }

    #[test]
    fn header_problems_are_refused() {
        let mut b = elf32(0x10_0000, 0x1000, 0);
        b[92] ^= 1; // checksum
        assert_eq!(parse_image(&b), Err(ImageError::NoHeader));
        let b = elf32(0x10_0000, 0x1000, 1 << 2); // wants a video mode
        assert_eq!(parse_image(&b), Err(ImageError::UnsupportedFlags(4)));
        let mut b = elf32(0x10_0000, 0x1000, 0);
        b[0] = 0; // not ELF, no addresses
        assert_eq!(parse_image(&b), Err(ImageError::NotElfAndNoAddresses));
    }

    #[test]
    fn elf_segment_problems_are_refused() {
        let b = elf32(0xffff_f000, 0x2000, 0); // wraps past 4 GiB
        assert!(matches!(parse_image(&b), Err(ImageError::BadElf(_))));
        let mut b = elf32(0x10_0000, 0x10, 0); // filesz > memsz
        b[52 + 20..52 + 24].copy_from_slice(&0x10u32.to_le_bytes());
        assert!(matches!(parse_image(&b), Err(ImageError::BadElf(_))));
        let mut b = elf32(0x10_0000, 0x1000, 0); // file size beyond the file
        b[52 + 16..52 + 20].copy_from_slice(&0x1000u32.to_le_bytes());
        assert!(matches!(parse_image(&b), Err(ImageError::BadElf(_))));
        let mut b = elf32(0x10_0000, 0x1000, 0); // phoff beyond the file
        b[28..32].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(parse_image(&b), Err(ImageError::BadElf(_))));
    }

    #[test]
    fn aout_kludge_image_parses() {
        // Header at offset 0 with addresses: header_addr = load_addr = 1 MiB.
        let mut b = alloc::vec![0u8; 64];
        let flags = FLAG_AOUT_KLUDGE;
        let words = [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
            0x10_0000,
            0x10_0000,
            0x10_0040,
            0x10_1000,
            0x10_0020,
        ];
        for (i, w) in words.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let img = parse_image(&b).expect("valid");
        assert_eq!(img.entry, 0x10_0020);
        assert_eq!(
            img.segments,
            alloc::vec![Segment {
                dst: 0x10_0000,
                file_offset: 0,
                filesz: 0x40,
                memsz: 0x1000
            }]
        );
        // load_end beyond the file.
        b[20..24].copy_from_slice(&0x10_1000u32.to_le_bytes());
        assert!(matches!(parse_image(&b), Err(ImageError::BadAout(_))));
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let good = elf32(0x40_0000, 0x2000, 3);
        for n in 0..good.len() {
            let _ = parse_image(&good[..n]);
        }
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = good.clone();
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
            let j = ((x >> 16) as usize) % b.len();
            b[j] = (x >> 40) as u8;
            let _ = parse_image(&b);
        }
    }

    #[test]
    fn info_block_layout() {
        let map = [
            MapEntry {
                start: 0,
                end: 0x9f000,
                typ: MMAP_RAM,
            },
            MapEntry {
                start: 0x10_0000,
                end: 0x400_0000,
                typ: MMAP_RAM,
            },
            MapEntry {
                start: 0x400_0000,
                end: 0x600_0000,
                typ: MMAP_RESERVED,
            },
            MapEntry {
                start: 0x600_0000,
                end: 0x1000_0000,
                typ: MMAP_RAM,
            },
        ];
        let mods = [InfoModule {
            start: 0x800_0000,
            end: 0x800_1000,
            cmdline: "initrd".into(),
        }];
        let base = 0x9000u32;
        let b = build_info(base, "console=ttyS0", &mods, &map, "Bulwark").expect("fits");
        let r = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let s = |a: u32| {
            let o = (a - base) as usize;
            let n = b[o..].iter().position(|&c| c == 0).unwrap();
            core::str::from_utf8(&b[o..o + n]).unwrap().to_string()
        };
        assert_eq!(
            r(0),
            INFO_MEM | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
        );
        assert_eq!(r(4), 636); // 0x9f000 / 1024
        assert_eq!(r(8), (0x400_0000 - 0x10_0000) / 1024); // stops at Bulwark's region
        assert_eq!(s(r(16)), "console=ttyS0");
        assert_eq!(r(20), 1);
        let m = (r(24) - base) as usize;
        assert_eq!(r(m), 0x800_0000);
        assert_eq!(r(m + 4), 0x800_1000);
        assert_eq!(s(r(m + 8)), "initrd");
        assert_eq!(r(44), 4 * 24);
        let mm = (r(48) - base) as usize;
        assert_eq!(r(mm), 20);
        assert_eq!(r(mm + 24 * 2 + 4), 0x400_0000);
        assert_eq!(r(mm + 24 * 2 + 12), 0x200_0000);
        assert_eq!(r(mm + 24 * 2 + 20), MMAP_RESERVED);
        assert_eq!(s(r(64)), "Bulwark");
        // A block that would wrap past 4 GiB is refused.
        assert!(build_info(u32::MAX - 16, "", &[], &map, "x").is_none());
    }
}
