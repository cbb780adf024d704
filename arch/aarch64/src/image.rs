//! Guest payloads: the arm64 Linux Image header, Bulwark's guest bundle, and where everything
//! goes in guest memory. Pure functions, tested on the host.
//!
//! The payload Bulwark receives as its initrd is either
//! * a guest kernel alone: an arm64 Image (header magic `ARM\x64` at offset 56) or a raw binary
//!   (no header: loaded at RAM base + 0x80000, like QEMU `-kernel` does), or
//! * a **bundle** (built by `cargo xtask`), to also hand the guest an initrd:
//!   a 64-byte little-endian header `b"BWBUNDL1"`, kernel offset, kernel length, initrd offset,
//!   initrd length (u64 each), zero padding to 64 bytes; offsets count from the bundle start.
//!
//! Guest memory layout (IPA): kernel at `ram_base + text_offset` (2 MiB-aligned base, the Linux
//! boot protocol), the device tree in the last 2 MiB-aligned 2 MiB of guest RAM, the initrd right
//! below the device tree (page aligned).

/// `ARM\x64` little-endian at offset 56.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// Raw binaries and Images with `image_size == 0` load here (Linux booting.rst, QEMU).
pub const DEFAULT_TEXT_OFFSET: u64 = 0x80000;
pub const BUNDLE_MAGIC: &[u8; 8] = b"BWBUNDL1";
pub const BUNDLE_HEADER_LEN: usize = 64;
/// Room reserved for the guest's device tree (Linux requires at most 2 MiB).
pub const DTB_MAX: u64 = 2 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    BadBundle(&'static str),
    Empty,
    TooBig,
    BadHeader(&'static str),
    Overlap,
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::BadBundle(w) => write!(f, "guest bundle: {w}"),
            ImageError::Empty => write!(f, "guest kernel is empty"),
            ImageError::TooBig => write!(
                f,
                "guest kernel, initrd and device tree do not fit in guest RAM"
            ),
            ImageError::BadHeader(w) => write!(f, "guest Image header: {w}"),
            ImageError::Overlap => write!(
                f,
                "guest payload cannot be moved into place without overwriting itself"
            ),
        }
    }
}

fn le64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// A byte range inside the payload: `(offset, length)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub off: u64,
    pub len: u64,
}

/// The payload split into kernel and optional initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub kernel: Part,
    pub initrd: Option<Part>,
}

/// Split the payload. `head` is at least the first 64 bytes (or all of a shorter payload),
/// `total` the payload's length.
pub fn split_payload(head: &[u8], total: u64) -> Result<Payload, ImageError> {
    if total == 0 {
        return Err(ImageError::Empty);
    }
    if head.get(..8) != Some(&BUNDLE_MAGIC[..]) {
        return Ok(Payload {
            kernel: Part { off: 0, len: total },
            initrd: None,
        });
    }
    let f = |i: usize| le64(head, 8 + 8 * i).ok_or(ImageError::BadBundle("truncated header"));
    let (ko, kl, io, il) = (f(0)?, f(1)?, f(2)?, f(3)?);
    let inside = |o: u64, l: u64| {
        o >= BUNDLE_HEADER_LEN as u64 && o.checked_add(l).is_some_and(|e| e <= total)
    };
    if kl == 0 || !inside(ko, kl) {
        return Err(ImageError::BadBundle("kernel outside the bundle"));
    }
    if il != 0 && !inside(io, il) {
        return Err(ImageError::BadBundle("initrd outside the bundle"));
    }
    if il != 0 && ko < io.saturating_add(il) && io < ko.saturating_add(kl) {
        return Err(ImageError::BadBundle("kernel and initrd overlap"));
    }
    Ok(Payload {
        kernel: Part { off: ko, len: kl },
        initrd: (il != 0).then_some(Part { off: io, len: il }),
    })
}

/// What the kernel's first bytes say about loading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// True for an arm64 Image (header present), false for a raw binary.
    pub is_image: bool,
    pub text_offset: u64,
    /// Bytes the kernel needs from its load address (BSS included): max(image_size, file length).
    pub footprint: u64,
}

/// Read the Image header from the kernel's first 64 bytes (`head`), `len` the kernel length.
pub fn kernel_info(head: &[u8], len: u64) -> Result<KernelInfo, ImageError> {
    if len == 0 {
        return Err(ImageError::Empty);
    }
    let magic = head
        .get(56..60)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    if magic != Some(IMAGE_MAGIC) {
        return Ok(KernelInfo {
            is_image: false,
            text_offset: DEFAULT_TEXT_OFFSET,
            footprint: len,
        });
    }
    let text_offset = le64(head, 8).ok_or(ImageError::BadHeader("truncated"))?;
    let image_size = le64(head, 16).ok_or(ImageError::BadHeader("truncated"))?;
    let flags = le64(head, 24).ok_or(ImageError::BadHeader("truncated"))?;
    if flags & 1 != 0 {
        return Err(ImageError::BadHeader("big-endian kernel"));
    }
    let (text_offset, footprint) = if image_size == 0 {
        (DEFAULT_TEXT_OFFSET, len)
    } else {
        (text_offset, image_size.max(len))
    };
    if !text_offset.is_multiple_of(4096) || text_offset >= (2 << 20) {
        return Err(ImageError::BadHeader(
            "text_offset not a page multiple below 2 MiB",
        ));
    }
    Ok(KernelInfo {
        is_image: true,
        text_offset,
        footprint,
    })
}

/// Where things go in guest memory (IPAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub kernel: u64,
    pub initrd: Option<u64>,
    pub dtb: u64,
}

/// Place kernel, initrd and device tree in guest RAM `[ram_base, ram_base + ram_size)`.
pub fn place(
    ram_base: u64,
    ram_size: u64,
    k: &KernelInfo,
    initrd_len: Option<u64>,
) -> Result<Placement, ImageError> {
    let ram_end = ram_base.checked_add(ram_size).ok_or(ImageError::TooBig)?;
    let base_2m = ram_base
        .checked_add((2 << 20) - 1)
        .ok_or(ImageError::TooBig)?
        & !((2 << 20) - 1);
    let kernel = base_2m
        .checked_add(k.text_offset)
        .ok_or(ImageError::TooBig)?;
    let kernel_end = kernel.checked_add(k.footprint).ok_or(ImageError::TooBig)?;
    let dtb = ram_end.checked_sub(DTB_MAX).ok_or(ImageError::TooBig)? & !((2 << 20) - 1);
    let initrd = match initrd_len {
        None => None,
        Some(l) => Some(dtb.checked_sub(l).ok_or(ImageError::TooBig)? & !0xfff),
    };
    let low_limit = initrd.unwrap_or(dtb);
    if kernel_end > low_limit || dtb < ram_base {
        return Err(ImageError::TooBig);
    }
    Ok(Placement {
        kernel,
        initrd,
        dtb,
    })
}

/// One copy of `len` bytes from `src` to `dst` (host-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

fn overlaps(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b.saturating_add(bl) && b < a.saturating_add(al)
}

/// Order the copies of kernel and initrd so that no copy overwrites a source that is still to
/// be copied (each copy itself may overlap its own source: it is done as a memmove). Returns the
/// moves in execution order, or `Overlap` when no order works.
pub fn order_moves(kernel: Move, initrd: Option<Move>) -> Result<[Option<Move>; 2], ImageError> {
    let Some(i) = initrd else {
        return Ok([Some(kernel), None]);
    };
    // Either order is fine if the first move's destination spares the second's source,
    // and the second's destination spares the first's destination.
    let ok = |a: Move, b: Move| {
        !overlaps(a.dst, a.len, b.src, b.len) && !overlaps(b.dst, b.len, a.dst, a.len)
    };
    if ok(i, kernel) {
        Ok([Some(i), Some(kernel)])
    } else if ok(kernel, i) {
        Ok([Some(kernel), Some(i)])
    } else {
        Err(ImageError::Overlap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_header(text_offset: u64, image_size: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&2u64.to_le_bytes());
        h[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn image_and_raw() {
        let k = kernel_info(&image_header(0x80000, 0x300000), 0x1000).unwrap();
        assert_eq!(
            k,
            KernelInfo {
                is_image: true,
                text_offset: 0x80000,
                footprint: 0x300000
            }
        );
        let k = kernel_info(&image_header(0, 0x1000), 0x2000).unwrap();
        assert_eq!(k.text_offset, 0);
        assert_eq!(k.footprint, 0x2000);
        let raw = kernel_info(&[0x14u8; 64], 100).unwrap();
        assert_eq!(
            raw,
            KernelInfo {
                is_image: false,
                text_offset: 0x80000,
                footprint: 100
            }
        );
        assert!(kernel_info(&image_header(0x123, 10), 10).is_err());
        assert!(kernel_info(&image_header(4 << 20, 10), 10).is_err());
        assert_eq!(kernel_info(&[], 0), Err(ImageError::Empty));
    }

    #[test]
    fn bundle() {
        let mut h = [0u8; 64];
        h[..8].copy_from_slice(BUNDLE_MAGIC);
        for (i, v) in [64u64, 100, 164, 50].iter().enumerate() {
            h[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let p = split_payload(&h, 214).unwrap();
        assert_eq!(p.kernel, Part { off: 64, len: 100 });
        assert_eq!(p.initrd, Some(Part { off: 164, len: 50 }));
        assert!(split_payload(&h, 213).is_err(), "initrd past the end");
        h[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(split_payload(&h, 214).is_err(), "wrapping offset");
        assert!(split_payload(&h[..20], 214).is_err(), "truncated header");
        let plain = split_payload(b"not a bundle", 12).unwrap();
        assert_eq!(plain.kernel, Part { off: 0, len: 12 });
    }

    #[test]
    fn placement() {
        let k = KernelInfo {
            is_image: true,
            text_offset: 0x80000,
            footprint: 0x100000,
        };
        let p = place(0x4000_0000, 480 << 20, &k, Some(0x1800)).unwrap();
        assert_eq!(p.kernel, 0x4008_0000);
        assert_eq!(p.dtb, 0x4000_0000 + (480 << 20) - (2 << 20));
        assert_eq!(p.initrd, Some((p.dtb - 0x1800) & !0xfff));
        let huge = KernelInfo {
            footprint: 480 << 20,
            ..k
        };
        assert_eq!(
            place(0x4000_0000, 480 << 20, &huge, None),
            Err(ImageError::TooBig)
        );
        assert_eq!(place(u64::MAX - 10, 100, &k, None), Err(ImageError::TooBig));
    }

    #[test]
    fn move_order() {
        // Bundle high in RAM, kernel goes low, initrd goes to the top: initrd first is wrong
        // only when its destination hits the kernel source.
        let k = Move {
            src: 0x4800_0040,
            dst: 0x4208_0000,
            len: 0x10_0000,
        };
        let i = Move {
            src: 0x4810_0040,
            dst: 0x5fd0_0000,
            len: 0x1000,
        };
        assert_eq!(order_moves(k, Some(i)).unwrap(), [Some(i), Some(k)]);
        // Initrd destination on top of the kernel source, kernel destination elsewhere: kernel first.
        let i2 = Move {
            src: 0x4900_0000,
            dst: 0x4800_0000,
            len: 0x1000,
        };
        assert_eq!(order_moves(k, Some(i2)).unwrap(), [Some(k), Some(i2)]);
        // Each destination on the other's source: impossible.
        let k3 = Move {
            src: 0x1000,
            dst: 0x5000,
            len: 0x1000,
        };
        let i3 = Move {
            src: 0x5000,
            dst: 0x1000,
            len: 0x1000,
        };
        assert_eq!(order_moves(k3, Some(i3)), Err(ImageError::Overlap));
    }
}
