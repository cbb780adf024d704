//! The Linux/x86 boot protocol (Documentation/arch/x86/boot.rst), version 2.10 and later: a
//! bzImage as the first Multiboot module is recognised by its setup header ("HdrS" at 0x202),
//! its protected-mode kernel is placed where the header allows, and the zero page
//! (`boot_params`) is built for the 32-bit entry. The image is hostile input: every offset and
//! size is checked without overflow; nothing here panics. Host-tested.

use alloc::vec;
use alloc::vec::Vec;

use crate::multiboot1::MapEntry;

/// "HdrS" at offset 0x202.
pub const HDRS: u32 = 0x5372_6448;
/// The oldest protocol Bulwark loads: 2.10 (pref_address, init_size, relocatable kernels).
pub const MIN_VERSION: u16 = 0x020a;
/// The zero page's size.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Protocol limits (boot.rst): the kernel is loaded at or above 1 MiB, below 4 GiB here.
const LOW_LIMIT: u64 = 0x10_0000;
const FOUR_GIB: u64 = 1 << 32;
/// e820 table in the zero page: 128 entries of 20 bytes at 0x2d0, count at 0x1e8.
const E820_MAX: usize = 128;
const OFF_E820_COUNT: usize = 0x1e8;
const OFF_E820_TABLE: usize = 0x2d0;
const OFF_ACPI_RSDP: usize = 0x070;
const OFF_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const OFF_EXT_RAMDISK_SIZE: usize = 0x0c4;
const OFF_EXT_CMD_LINE_PTR: usize = 0x0c8;
const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_BOOT_FLAG: usize = 0x1fe;
const OFF_JUMP: usize = 0x200;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_CODE32_START: usize = 0x214;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21c;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: usize = 0x22c;
const OFF_KERNEL_ALIGNMENT: usize = 0x230;
const OFF_RELOCATABLE: usize = 0x234;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_PREF_ADDRESS: usize = 0x258;
const OFF_INIT_SIZE: usize = 0x260;
/// loadflags bit 0: the protected-mode kernel is loaded high (a bzImage).
const LOADED_HIGH: u8 = 1;

/// Why a bzImage was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BzError {
    /// Shorter than its setup header or its setup sectors.
    Truncated,
    /// No 0xAA55 boot flag at 0x1fe.
    NoBootFlag,
    /// Protocol older than 2.10.
    OldProtocol(u16),
    /// loadflags bit 0 clear: a zImage (loaded low), not supported.
    NotLoadedHigh,
    /// Nothing after the setup sectors.
    NoKernel,
    /// kernel_alignment not a power of two of at least 4 KiB.
    BadAlignment(u32),
}

impl core::fmt::Display for BzError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BzError::Truncated => write!(
                f,
                "truncated bzImage: the setup header or setup sectors are cut off"
            ),
            BzError::NoBootFlag => write!(f, "bzImage without the 0xAA55 boot flag at 0x1fe"),
            BzError::OldProtocol(v) => write!(
                f,
                "Linux boot protocol {}.{:02} is too old (Bulwark needs 2.10 or later)",
                v >> 8,
                v & 0xff
            ),
            BzError::NotLoadedHigh => write!(
                f,
                "a zImage (loadflags LOADED_HIGH clear): only bzImages are supported"
            ),
            BzError::NoKernel => write!(
                f,
                "bzImage without a protected-mode kernel after its setup sectors"
            ),
            BzError::BadAlignment(a) => write!(
                f,
                "bzImage kernel_alignment {a:#x} is not a power of two >= 4 KiB"
            ),
        }
    }
}

/// The setup-header fields Bulwark uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub code32_start: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub pref_address: u64,
    pub init_size: u32,
}

/// A parsed bzImage: its header, the real-mode part (setup) and the protected-mode kernel.
#[derive(Debug)]
pub struct BzImage<'a> {
    pub hdr: SetupHeader,
    /// The boot sector and setup sectors (the header lives here).
    pub setup: &'a [u8],
    /// The protected-mode kernel, loaded at the load address.
    pub kernel: &'a [u8],
}

fn u8_at(b: &[u8], o: usize) -> Option<u8> {
    b.get(o).copied()
}
fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Whether `image` carries a Linux setup header ("HdrS" at 0x202): then it is loaded as a
/// bzImage (and refused with a clear error if it is not a loadable one), never as Multiboot.
pub fn is_bzimage(image: &[u8]) -> bool {
    u32_at(image, OFF_HEADER) == Some(HDRS)
}

/// Parse and check a bzImage.
pub fn parse(image: &[u8]) -> Result<BzImage<'_>, BzError> {
    let t = BzError::Truncated;
    if u32_at(image, OFF_HEADER) != Some(HDRS) {
        return Err(t);
    }
    if u16_at(image, OFF_BOOT_FLAG) != Some(0xaa55) {
        return Err(BzError::NoBootFlag);
    }
    let version = u16_at(image, OFF_VERSION).ok_or(BzError::Truncated)?;
    if version < MIN_VERSION {
        return Err(BzError::OldProtocol(version));
    }
    let hdr = SetupHeader {
        setup_sects: match u8_at(image, OFF_SETUP_SECTS).ok_or(BzError::Truncated)? {
            0 => 4,
            n => n,
        },
        version,
        loadflags: u8_at(image, OFF_LOADFLAGS).ok_or(BzError::Truncated)?,
        code32_start: u32_at(image, OFF_CODE32_START).ok_or(BzError::Truncated)?,
        initrd_addr_max: u32_at(image, OFF_INITRD_ADDR_MAX).ok_or(BzError::Truncated)?,
        kernel_alignment: u32_at(image, OFF_KERNEL_ALIGNMENT).ok_or(BzError::Truncated)?,
        relocatable: u8_at(image, OFF_RELOCATABLE).ok_or(BzError::Truncated)? != 0,
        xloadflags: u16_at(image, OFF_XLOADFLAGS).ok_or(BzError::Truncated)?,
        cmdline_size: u32_at(image, OFF_CMDLINE_SIZE).ok_or(BzError::Truncated)?,
        pref_address: u64_at(image, OFF_PREF_ADDRESS).ok_or(BzError::Truncated)?,
        init_size: u32_at(image, OFF_INIT_SIZE).ok_or(BzError::Truncated)?,
    };
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(BzError::NotLoadedHigh);
    }
    let a = hdr.kernel_alignment;
    if hdr.relocatable && (!a.is_power_of_two() || a < 4096) {
        return Err(BzError::BadAlignment(a));
    }
    let setup_len = (usize::from(hdr.setup_sects) + 1) * 512;
    let setup = image.get(..setup_len).ok_or(BzError::Truncated)?;
    let kernel = image.get(setup_len..).ok_or(BzError::Truncated)?;
    if kernel.is_empty() {
        return Err(BzError::NoKernel);
    }
    Ok(BzImage { hdr, setup, kernel })
}

impl BzImage<'_> {
    /// Bytes the kernel needs at its load address (it decompresses in place): the larger of
    /// init_size and the kernel itself.
    pub fn span(&self) -> u64 {
        u64::from(self.hdr.init_size).max(self.kernel.len() as u64)
    }

    /// Where to load the protected-mode kernel: `pref_address` when `free` says that range is
    /// free guest RAM; else, for a relocatable kernel, the lowest kernel_alignment-aligned
    /// address at or above 1 MiB (below 4 GiB) that is; a non-relocatable kernel loads only at
    /// pref_address. `free(start, end)` decides what is free.
    pub fn load_address(&self, free: impl Fn(u64, u64) -> bool) -> Option<u64> {
        let span = self.span();
        let fits = |a: u64| {
            a >= LOW_LIMIT
                && a.checked_add(span)
                    .is_some_and(|e| e <= FOUR_GIB && free(a, e))
        };
        let pref = if self.hdr.pref_address != 0 {
            self.hdr.pref_address
        } else {
            u64::from(self.hdr.code32_start)
        };
        if fits(pref) {
            return Some(pref);
        }
        if !self.hdr.relocatable {
            return None;
        }
        let align = u64::from(self.hdr.kernel_alignment);
        let mut a = LOW_LIMIT.div_ceil(align).checked_mul(align)?;
        while a.checked_add(span)? <= FOUR_GIB {
            if fits(a) {
                return Some(a);
            }
            a = a.checked_add(align)?;
        }
        None
    }

    /// Highest address (exclusive) the initrd may end at.
    pub fn initrd_limit(&self) -> u64 {
        // initrd_addr_max is the highest address of the last byte.
        u64::from(self.hdr.initrd_addr_max)
            .saturating_add(1)
            .min(FOUR_GIB)
    }
}

/// What the zero page says besides the image's own header.
pub struct BootParamsInput<'a> {
    /// The protected-mode kernel's load address (written to code32_start).
    pub load: u64,
    /// The guest's memory map (Bulwark's region already reserved).
    pub e820: &'a [MapEntry],
    /// Command line address (NUL-terminated string in guest RAM) or 0.
    pub cmd_line_ptr: u32,
    /// The initrd: (address, size) in guest RAM.
    pub ramdisk: Option<(u32, u32)>,
    /// ACPI RSDP address, 0 for none (the kernel then searches the BIOS areas).
    pub acpi_rsdp: u64,
}

/// Build the zero page: the image's setup header copied to its place, then the loader's fields
/// (type_of_loader 0xff, code32_start, command line, initrd, e820 table, ACPI RSDP). `None`
/// when the map has more than 128 entries (the zero page's e820 table) or the load address is
/// not below 4 GiB.
pub fn build_boot_params(img: &BzImage, input: &BootParamsInput) -> Option<Vec<u8>> {
    let mut bp = vec![0u8; BOOT_PARAMS_SIZE];
    // The setup header runs from 0x1f1 to 0x202 + the byte at 0x201 (its length past 0x202).
    let end = (OFF_HEADER + usize::from(*img.setup.get(OFF_JUMP + 1)?)).min(BOOT_PARAMS_SIZE);
    let end = end.max(OFF_INIT_SIZE + 4).min(img.setup.len());
    bp.get_mut(OFF_SETUP_SECTS..end)?
        .copy_from_slice(img.setup.get(OFF_SETUP_SECTS..end)?);
    let put32 = |bp: &mut Vec<u8>, o: usize, v: u32| {
        if let Some(d) = bp.get_mut(o..o + 4) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    };
    bp[OFF_TYPE_OF_LOADER] = 0xff;
    put32(&mut bp, OFF_CODE32_START, u32::try_from(input.load).ok()?);
    put32(&mut bp, OFF_CMD_LINE_PTR, input.cmd_line_ptr);
    put32(&mut bp, OFF_EXT_CMD_LINE_PTR, 0);
    let (ri, rs) = input.ramdisk.unwrap_or((0, 0));
    put32(&mut bp, OFF_RAMDISK_IMAGE, ri);
    put32(&mut bp, OFF_RAMDISK_SIZE, rs);
    put32(&mut bp, OFF_EXT_RAMDISK_IMAGE, 0);
    put32(&mut bp, OFF_EXT_RAMDISK_SIZE, 0);
    bp.get_mut(OFF_ACPI_RSDP..OFF_ACPI_RSDP + 8)?
        .copy_from_slice(&input.acpi_rsdp.to_le_bytes());
    if input.e820.len() > E820_MAX {
        return None;
    }
    bp[OFF_E820_COUNT] = input.e820.len() as u8;
    for (i, e) in input.e820.iter().enumerate() {
        let o = OFF_E820_TABLE + 20 * i;
        let d = bp.get_mut(o..o + 20)?;
        d[..8].copy_from_slice(&e.start.to_le_bytes());
        d[8..16].copy_from_slice(&e.end.saturating_sub(e.start).to_le_bytes());
        d[16..].copy_from_slice(&e.typ.to_le_bytes());
    }
    Some(bp)
}

/// An ACPI 2.0 RSDP (36 bytes, both checksums valid) for the given root tables, for a guest
/// that is told the RSDP's address (`acpi_rsdp_addr`) instead of searching for it.
pub fn rsdp(revision: u8, rsdt: u32, xsdt: Option<u64>) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(b"BULWRK");
    r[15] = if xsdt.is_some() { revision.max(2) } else { 0 };
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.unwrap_or(0).to_le_bytes());
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    r[8] = 0u8.wrapping_sub(sum(&r[..20]));
    r[32] = 0u8.wrapping_sub(sum(&r));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multiboot1::{MMAP_RAM, MMAP_RESERVED};

    /// A synthetic bzImage: boot sector + `setup_sects` sectors, then `kernel` bytes.
    fn image(version: u16, relocatable: bool, kernel: usize) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut b = vec![0u8; (usize::from(setup_sects) + 1) * 512 + kernel];
        b[OFF_SETUP_SECTS] = setup_sects;
        b[OFF_BOOT_FLAG..OFF_BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        b[OFF_JUMP] = 0xeb;
        b[OFF_JUMP + 1] = 0x66; // header length past 0x202
        b[OFF_HEADER..OFF_HEADER + 4].copy_from_slice(&HDRS.to_le_bytes());
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        b[OFF_LOADFLAGS] = LOADED_HIGH;
        b[OFF_CODE32_START..OFF_CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        b[OFF_INITRD_ADDR_MAX..OFF_INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        b[OFF_KERNEL_ALIGNMENT..OFF_KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[OFF_RELOCATABLE] = u8::from(relocatable);
        b[OFF_XLOADFLAGS..OFF_XLOADFLAGS + 2].copy_from_slice(&3u16.to_le_bytes());
        b[OFF_CMDLINE_SIZE..OFF_CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        b[OFF_PREF_ADDRESS..OFF_PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[OFF_INIT_SIZE..OFF_INIT_SIZE + 4].copy_from_slice(&0x200_0000u32.to_le_bytes());
        b
    }

    #[test]
    fn header_fields() {
        let b = image(0x020f, true, 4096);
        assert!(is_bzimage(&b));
        let i = parse(&b).unwrap();
        assert_eq!(i.hdr.version, 0x020f);
        assert_eq!(i.hdr.setup_sects, 4);
        assert_eq!(i.setup.len(), 5 * 512);
        assert_eq!(i.kernel.len(), 4096);
        assert_eq!(i.hdr.pref_address, 0x100_0000);
        assert_eq!(i.span(), 0x200_0000);
        assert_eq!(i.initrd_limit(), 0x8000_0000);
        // setup_sects 0 means 4.
        let mut z = b.clone();
        z[OFF_SETUP_SECTS] = 0;
        assert_eq!(parse(&z).unwrap().hdr.setup_sects, 4);
    }

    #[test]
    fn bad_images_are_refused() {
        assert!(!is_bzimage(&[0u8; 100]));
        assert_eq!(
            parse(&image(0x0209, true, 16)).unwrap_err(),
            BzError::OldProtocol(0x0209)
        );
        let mut b = image(0x020f, true, 16);
        b[OFF_LOADFLAGS] = 0;
        assert_eq!(parse(&b).unwrap_err(), BzError::NotLoadedHigh);
        let mut b = image(0x020f, true, 16);
        b[OFF_BOOT_FLAG] = 0;
        assert_eq!(parse(&b).unwrap_err(), BzError::NoBootFlag);
        assert_eq!(
            parse(&image(0x020f, true, 0)).unwrap_err(),
            BzError::NoKernel
        );
        let b = image(0x020f, true, 16);
        assert_eq!(parse(&b[..0x210]).unwrap_err(), BzError::Truncated);
        assert_eq!(parse(&b[..1024]).unwrap_err(), BzError::Truncated);
        let mut b = image(0x020f, true, 16);
        b[OFF_KERNEL_ALIGNMENT..OFF_KERNEL_ALIGNMENT + 4].copy_from_slice(&0x3000u32.to_le_bytes());
        assert_eq!(parse(&b).unwrap_err(), BzError::BadAlignment(0x3000));
        // Every truncation of a good image is refused or parsed, never a panic.
        let b = image(0x020f, true, 64);
        for n in 0..b.len() {
            let _ = parse(&b[..n]);
        }
    }

    #[test]
    fn load_address_honours_pref_and_alignment() {
        let b = image(0x020f, true, 4096);
        let i = parse(&b).unwrap();
        // pref_address free: there.
        assert_eq!(i.load_address(|_, _| true), Some(0x100_0000));
        // pref_address taken: the lowest 2 MiB-aligned (kernel_alignment) free place.
        let busy = (0x80_0000u64, 0x300_0000u64);
        let free = |s: u64, e: u64| !(s < busy.1 && busy.0 < e);
        assert_eq!(i.load_address(free), Some(0x300_0000));
        // A non-relocatable kernel loads at pref_address or nowhere.
        let b = image(0x020f, false, 4096);
        let i = parse(&b).unwrap();
        assert_eq!(i.load_address(free), None);
        assert_eq!(i.load_address(|_, _| true), Some(0x100_0000));
        // Nothing free: none.
        let b = image(0x020f, true, 4096);
        assert_eq!(parse(&b).unwrap().load_address(|_, _| false), None);
    }

    #[test]
    fn zero_page() {
        let b = image(0x020f, true, 4096);
        let i = parse(&b).unwrap();
        let map = [
            MapEntry {
                start: 0,
                end: 0x9f000,
                typ: MMAP_RAM,
            },
            MapEntry {
                start: 0x400_0000,
                end: 0x600_0000,
                typ: MMAP_RESERVED,
            },
        ];
        let bp = build_boot_params(
            &i,
            &BootParamsInput {
                load: 0x100_0000,
                e820: &map,
                cmd_line_ptr: 0x2_0000,
                ramdisk: Some((0x800_0000, 0x1234)),
                acpi_rsdp: 0xf_5a10,
            },
        )
        .unwrap();
        assert_eq!(bp.len(), 4096);
        assert_eq!(u32_at(&bp, OFF_HEADER), Some(HDRS));
        assert_eq!(u16_at(&bp, OFF_VERSION), Some(0x020f));
        assert_eq!(bp[OFF_TYPE_OF_LOADER], 0xff);
        assert_eq!(u32_at(&bp, OFF_CODE32_START), Some(0x100_0000));
        assert_eq!(u32_at(&bp, OFF_CMD_LINE_PTR), Some(0x2_0000));
        assert_eq!(u32_at(&bp, OFF_RAMDISK_IMAGE), Some(0x800_0000));
        assert_eq!(u32_at(&bp, OFF_RAMDISK_SIZE), Some(0x1234));
        assert_eq!(u64_at(&bp, OFF_ACPI_RSDP), Some(0xf_5a10));
        assert_eq!(bp[OFF_E820_COUNT], 2);
        assert_eq!(u64_at(&bp, OFF_E820_TABLE + 20), Some(0x400_0000));
        assert_eq!(u64_at(&bp, OFF_E820_TABLE + 28), Some(0x200_0000));
        assert_eq!(u32_at(&bp, OFF_E820_TABLE + 36), Some(MMAP_RESERVED));
        // The sentinel byte stays 0 (else the kernel distrusts the loader's fields).
        assert_eq!(bp[0x1ef], 0);
        // More than 128 map entries: refused.
        let big = vec![map[0]; 129];
        assert!(build_boot_params(
            &i,
            &BootParamsInput {
                load: 0x100_0000,
                e820: &big,
                cmd_line_ptr: 0,
                ramdisk: None,
                acpi_rsdp: 0,
            }
        )
        .is_none());
    }

    #[test]
    fn rsdp_checksums() {
        let r = rsdp(2, 0x0fff_0000, Some(0x0fff_0100));
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(r[..20].iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(r.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(r[15], 2);
        let r1 = rsdp(0, 0x0fff_0000, None);
        assert_eq!(r1[15], 0);
        assert_eq!(r1[..20].iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
    }
}
