//! Device tree (FDT) input: turns the blob the firmware (or QEMU) hands over in `x0` into the
//! arch-neutral [`BootDescription`].
//!
//! Tree walking goes through the `fdt` crate in its *fallible* (`NoPanic`) mode. The device tree is
//! untrusted input, so a few things are checked here before or instead of the crate:
//! * the header (offsets and sizes must lie inside the buffer, no `u32` overflow) before the crate
//!   sees it: `fdt 0.2.0-alpha3` adds header fields unchecked;
//! * `reg`/cell values are decoded here from the raw property bytes with explicit `#address-cells`
//!   / `#size-cells` (1..=2 and 0..=2), because the crate divides by the cell width (a `0/0` tree
//!   would make it panic);
//! * string properties are decoded here (the crate's `bootargs()` slices `len - 1` on empty values);
//! * the memory reservation block (which the crate does not parse) is read here with bounds checks.

use bulwark_core::addr::HostPhysAddr;
use fdt::helpers::UnalignedFallibleNode;
use fdt::parsing::{unaligned::UnalignedParser, NoPanic};

/// The `fdt` crate's tree, in its non-panicking mode.
pub type Tree<'a> = fdt::Fdt<'a, (UnalignedParser<'a>, NoPanic)>;
/// One node of [`Tree`].
pub type Node<'a> = UnalignedFallibleNode<'a>;

/// Maximum number of ranges per list (RAM, reserved); more is reported as an error.
pub const MAX_RANGES: usize = 16;
/// Maximum number of CPUs recorded.
pub const MAX_CPUS: usize = 64;
/// Deepest node nesting accepted (guards the recursive walkers against hostile trees).
pub const MAX_DEPTH: usize = 16;

/// Why a device tree was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtError {
    /// Header magic is not 0xd00dfeed.
    BadMagic,
    /// The header or a block lies outside the buffer, or fields overflow.
    BadHeader,
    /// The `fdt` crate rejected the structure block.
    Parse,
    /// A property value has the wrong size or encoding (named property).
    BadProperty(&'static str),
    /// More entries than Bulwark records (named list).
    TooMany(&'static str),
    /// A required node or property is missing (named).
    Missing(&'static str),
    /// Nodes nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An output buffer is too small (writer).
    NoSpace,
}

impl core::fmt::Display for DtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DtError::BadMagic => write!(f, "not a flattened device tree (bad magic)"),
            DtError::BadHeader => write!(f, "device tree header is inconsistent or truncated"),
            DtError::Parse => write!(f, "device tree structure block is malformed"),
            DtError::BadProperty(p) => write!(f, "device tree property `{p}` is malformed"),
            DtError::TooMany(what) => write!(f, "device tree lists too many {what}"),
            DtError::Missing(what) => write!(f, "device tree lacks {what}"),
            DtError::TooDeep => write!(f, "device tree nests deeper than {MAX_DEPTH} levels"),
            DtError::NoSpace => write!(f, "output buffer too small for the device tree"),
        }
    }
}

impl From<fdt::FdtError> for DtError {
    fn from(e: fdt::FdtError) -> Self {
        match e {
            fdt::FdtError::BadMagic => DtError::BadMagic,
            fdt::FdtError::SliceTooSmall | fdt::FdtError::BadPtr => DtError::BadHeader,
            _ => DtError::Parse,
        }
    }
}

/// A physical address range `[base, base + size)`; `size > 0` and the end does not wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub base: HostPhysAddr,
    pub size: u64,
}

impl PhysRange {
    /// A range, or `None` when it is empty or wraps.
    pub fn new(base: u64, size: u64) -> Option<Self> {
        if size == 0 || base.checked_add(size).is_none() {
            return None;
        }
        Some(Self {
            base: HostPhysAddr::new(base),
            size,
        })
    }
    /// One past the last byte (never wraps, checked at construction).
    pub fn end(&self) -> u64 {
        self.base.as_u64().wrapping_add(self.size)
    }
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base.as_u64() && addr < self.end()
    }
    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.base.as_u64() < other.end() && other.base.as_u64() < self.end()
    }
}

/// A fixed-capacity list of ranges (no allocator at boot).
#[derive(Clone, Copy, Debug)]
pub struct RangeList {
    items: [Option<PhysRange>; MAX_RANGES],
    len: usize,
}

impl Default for RangeList {
    fn default() -> Self {
        Self {
            items: [None; MAX_RANGES],
            len: 0,
        }
    }
}

impl RangeList {
    pub fn push(&mut self, r: PhysRange, what: &'static str) -> Result<(), DtError> {
        let slot = self.items.get_mut(self.len).ok_or(DtError::TooMany(what))?;
        *slot = Some(r);
        self.len += 1;
        Ok(())
    }
    pub fn iter(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.items.iter().take(self.len).flatten().copied()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Kinds of console UART Bulwark knows how to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// Arm PrimeCell PL011 (`arm,pl011`).
    Pl011,
    /// 16550-compatible (`ns16550a`, `ns16550`).
    Ns16550,
}

/// The console UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    pub kind: UartKind,
    pub base: HostPhysAddr,
    pub size: u64,
}

/// The arch-neutral description of what the firmware handed over (device tree flavour).
#[derive(Clone, Copy, Debug)]
pub struct BootDescription<'a> {
    /// RAM from the `/memory` nodes, in tree order.
    pub ram: RangeList,
    /// Ranges that must not be used: `/memreserve/` entries and `/reserved-memory` children with `reg`.
    pub reserved: RangeList,
    /// Hardware ids (arm64: MPIDR affinity from `reg`) of CPUs not marked disabled/failed.
    pub cpus: [u64; MAX_CPUS],
    pub cpu_count: usize,
    /// Console UART: from `/chosen/stdout-path` when present, else the first PL011 node.
    pub uart: Option<Uart>,
    /// `/chosen/linux,initrd-start` .. `linux,initrd-end`.
    pub initrd: Option<PhysRange>,
    /// `/chosen/bootargs`.
    pub bootargs: Option<&'a str>,
    /// Conduit named by the `/psci` node (`"smc"` or `"hvc"`), if any.
    pub psci_method: Option<&'a str>,
}

impl BootDescription<'_> {
    pub fn cpus(&self) -> &[u64] {
        self.cpus.get(..self.cpu_count).unwrap_or(&[])
    }
}

/// FDT header fields (all big-endian `u32` in the blob).
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub total_size: u32,
    pub off_struct: u32,
    pub off_strings: u32,
    pub off_rsvmap: u32,
    pub version: u32,
    pub boot_cpu: u32,
    pub size_strings: u32,
    pub size_struct: u32,
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], off: usize) -> Option<u64> {
    let hi = be32(b, off)? as u64;
    let lo = be32(b, off.checked_add(4)?)? as u64;
    Some(hi << 32 | lo)
}

/// The total size claimed by the header at `blob` (for copying a tree of unknown length).
pub fn claimed_size(blob: &[u8]) -> Result<usize, DtError> {
    if be32(blob, 0).ok_or(DtError::BadHeader)? != 0xd00d_feed {
        return Err(DtError::BadMagic);
    }
    Ok(be32(blob, 4).ok_or(DtError::BadHeader)? as usize)
}

/// Read and validate the header: every block inside `total_size`, `total_size` inside the buffer.
pub fn header(blob: &[u8]) -> Result<Header, DtError> {
    let total = claimed_size(blob)?;
    let f = |i: usize| be32(blob, i * 4).ok_or(DtError::BadHeader);
    let h = Header {
        total_size: f(1)?,
        off_struct: f(2)?,
        off_strings: f(3)?,
        off_rsvmap: f(4)?,
        version: f(5)?,
        boot_cpu: f(7)?,
        size_strings: f(8)?,
        size_struct: f(9)?,
    };
    if total > blob.len() || total < 40 || h.version < 17 {
        return Err(DtError::BadHeader);
    }
    let inside = |off: u32, size: u32| (off as u64) + (size as u64) <= total as u64;
    if !inside(h.off_struct, h.size_struct)
        || !inside(h.off_strings, h.size_strings)
        || !inside(h.off_rsvmap, 16)
        || !h.off_struct.is_multiple_of(4)
        || !h.off_rsvmap.is_multiple_of(8)
    {
        return Err(DtError::BadHeader);
    }
    Ok(h)
}

/// Parse a blob with the `fdt` crate after checking its header. The slice is cut to `total_size`.
pub fn open(blob: &[u8]) -> Result<(Tree<'_>, Header), DtError> {
    let h = header(blob)?;
    let blob = blob
        .get(..h.total_size as usize)
        .ok_or(DtError::BadHeader)?;
    let tree = Tree::new_unaligned_fallible(blob)?;
    Ok((tree, h))
}

/// The `/memreserve/` entries (address, size), terminated by a zero pair, bounded by the blob.
pub fn memreserve_entries<'a>(
    blob: &'a [u8],
    h: &Header,
) -> impl Iterator<Item = Result<(u64, u64), DtError>> + use<'a> {
    let mut off = h.off_rsvmap as usize;
    let mut done = false;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let entry = (|| Some((be64(blob, off)?, be64(blob, off.checked_add(8)?)?)))();
        match entry {
            None => {
                done = true;
                Some(Err(DtError::BadHeader))
            }
            Some((0, 0)) => {
                done = true;
                None
            }
            Some(e) => {
                off += 16;
                Some(Ok(e))
            }
        }
    })
}

/// A string property's value without its NUL terminator(s).
pub fn prop_str<'a>(node: &Node<'a>, name: &'static str) -> Result<Option<&'a str>, DtError> {
    match node.raw_property(name)? {
        None => Ok(None),
        Some(p) => {
            let v = p.value.split(|&b| b == 0).next().unwrap_or(&[]);
            core::str::from_utf8(v)
                .map(Some)
                .map_err(|_| DtError::BadProperty(name))
        }
    }
}

/// Does a `compatible`-style string list contain `what`?
pub fn has_string(node: &Node<'_>, prop: &'static str, what: &str) -> Result<bool, DtError> {
    Ok(match node.raw_property(prop)? {
        None => false,
        Some(p) => p.value.split(|&b| b == 0).any(|s| s == what.as_bytes()),
    })
}

/// A one- or two-cell numeric property (`linux,initrd-start` may be either).
pub fn prop_num(node: &Node<'_>, name: &'static str) -> Result<Option<u64>, DtError> {
    match node.raw_property(name)? {
        None => Ok(None),
        Some(p) => match p.value.len() {
            4 => Ok(be32(p.value, 0).map(u64::from)),
            8 => Ok(be64(p.value, 0)),
            _ => Err(DtError::BadProperty(name)),
        },
    }
}

/// `#address-cells` / `#size-cells` of `node` (defaults 2 / 1 per the DT spec), validated.
pub fn cell_sizes(node: &Node<'_>) -> Result<(usize, usize), DtError> {
    let a = prop_num(node, "#address-cells")?.unwrap_or(2);
    let s = prop_num(node, "#size-cells")?.unwrap_or(1);
    if !(1..=2).contains(&a) || s > 2 {
        return Err(DtError::BadProperty("#address-cells/#size-cells"));
    }
    Ok((a as usize, s as usize))
}

/// Read `cells` big-endian cells starting at byte `off`.
pub fn read_cells(v: &[u8], off: usize, cells: usize) -> Option<u64> {
    match cells {
        0 => Some(0),
        1 => be32(v, off).map(u64::from),
        2 => be64(v, off),
        _ => None,
    }
}

/// The `(address, size)` entries of `node`'s `reg`, using its parent's cell sizes.
pub fn reg_entries<'a>(node: &Node<'a>) -> Result<impl Iterator<Item = (u64, u64)> + 'a, DtError> {
    let (ac, sc) = match node.parent() {
        Some(p) => cell_sizes(&p)?,
        None => (2, 1),
    };
    let value: &'a [u8] = match node.raw_property("reg")? {
        Some(p) => p.value,
        None => &[],
    };
    let stride = (ac + sc) * 4;
    if !value.len().is_multiple_of(stride) {
        return Err(DtError::BadProperty("reg"));
    }
    Ok(value
        .chunks_exact(stride)
        .filter_map(move |c| Some((read_cells(c, 0, ac)?, read_cells(c, ac * 4, sc)?))))
}

fn status_ok(node: &Node<'_>) -> Result<bool, DtError> {
    Ok(match prop_str(node, "status")? {
        None => true,
        Some(s) => s == "okay" || s == "ok",
    })
}

/// Parse a device tree into a [`BootDescription`]. Never panics on malformed input.
pub fn parse(blob: &[u8]) -> Result<BootDescription<'_>, DtError> {
    let (tree, h) = open(blob)?;
    let root = tree.root()?;
    let mut d = BootDescription {
        ram: RangeList::default(),
        reserved: RangeList::default(),
        cpus: [0; MAX_CPUS],
        cpu_count: 0,
        uart: None,
        initrd: None,
        bootargs: None,
        psci_method: None,
    };

    for e in memreserve_entries(blob, &h) {
        let (base, size) = e?;
        let r = PhysRange::new(base, size).ok_or(DtError::BadProperty("/memreserve/"))?;
        d.reserved.push(r, "reserved ranges")?;
    }

    let root_node = root
        .find_node("/")?
        .ok_or(DtError::Missing("a root node"))?;
    for child in root_node.children()?.iter() {
        let child = child?;
        let is_memory =
            child.name()?.name == "memory" || prop_str(&child, "device_type")? == Some("memory");
        if !is_memory || !status_ok(&child)? {
            continue;
        }
        for (base, size) in reg_entries(&child)? {
            if size == 0 {
                continue;
            }
            let r = PhysRange::new(base, size).ok_or(DtError::BadProperty("memory reg"))?;
            d.ram.push(r, "memory ranges")?;
        }
    }
    if d.ram.is_empty() {
        return Err(DtError::Missing("a /memory node with a non-empty reg"));
    }

    if let Some(resv) = root.find_node("/reserved-memory")? {
        for child in resv.children()?.iter() {
            let child = child?;
            for (base, size) in reg_entries(&child)? {
                let r = PhysRange::new(base, size).ok_or(DtError::BadProperty("reserved reg"))?;
                d.reserved.push(r, "reserved ranges")?;
            }
        }
    }

    if let Some(cpus) = root.find_node("/cpus")? {
        for cpu in cpus.children()?.iter() {
            let cpu = cpu?;
            if prop_str(&cpu, "device_type")? != Some("cpu") || !status_ok(&cpu)? {
                continue;
            }
            let id = reg_entries(&cpu)?
                .next()
                .map(|(a, _)| a)
                .ok_or(DtError::BadProperty("cpu reg"))?;
            let slot = d
                .cpus
                .get_mut(d.cpu_count)
                .ok_or(DtError::TooMany("CPUs"))?;
            *slot = id;
            d.cpu_count += 1;
        }
    }

    if let Some(chosen) = root.find_node("/chosen")? {
        d.bootargs = prop_str(&chosen, "bootargs")?;
        let start = prop_num(&chosen, "linux,initrd-start")?;
        let end = prop_num(&chosen, "linux,initrd-end")?;
        if let (Some(s), Some(e)) = (start, end) {
            let size = e
                .checked_sub(s)
                .ok_or(DtError::BadProperty("linux,initrd-end"))?;
            d.initrd = PhysRange::new(s, size);
        }
        if let Some(path) = prop_str(&chosen, "stdout-path")? {
            let path = path.split(':').next().unwrap_or(path);
            let node = if path.starts_with('/') {
                root.find_node(path)?
            } else {
                match root.find_node("/aliases")? {
                    Some(aliases) => match prop_str_dyn(&aliases, path)? {
                        Some(p) => root.find_node(p)?,
                        None => None,
                    },
                    None => None,
                }
            };
            if let Some(node) = node {
                d.uart = uart_of(&node)?;
            }
        }
    }
    if d.uart.is_none() {
        for node in root.all_nodes()? {
            let (_depth, node) = node?;
            if has_string(&node, "compatible", "arm,pl011")? && status_ok(&node)? {
                d.uart = uart_of(&node)?;
                break;
            }
        }
    }

    if let Some(psci) = root.find_node("/psci")? {
        d.psci_method = prop_str(&psci, "method")?;
    }
    Ok(d)
}

/// Like [`prop_str`] for a name that is not `'static` (aliases).
fn prop_str_dyn<'a>(node: &Node<'a>, name: &str) -> Result<Option<&'a str>, DtError> {
    match node.raw_property(name)? {
        None => Ok(None),
        Some(p) => {
            let v = p.value.split(|&b| b == 0).next().unwrap_or(&[]);
            core::str::from_utf8(v)
                .map(Some)
                .map_err(|_| DtError::BadProperty("alias"))
        }
    }
}

fn uart_of(node: &Node<'_>) -> Result<Option<Uart>, DtError> {
    let kind = if has_string(node, "compatible", "arm,pl011")? {
        UartKind::Pl011
    } else if has_string(node, "compatible", "ns16550a")?
        || has_string(node, "compatible", "ns16550")?
    {
        UartKind::Ns16550
    } else {
        return Ok(None);
    };
    Ok(reg_entries(node)?.next().map(|(base, size)| Uart {
        kind,
        base: HostPhysAddr::new(base),
        size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRT: &[u8] = include_bytes!("../fixtures/aarch64-qemu-virt-smp2-initrd.dtb");

    #[test]
    fn qemu_virt_fixture() {
        let d = parse(VIRT).expect("fixture parses");
        let ram: std::vec::Vec<_> = d.ram.iter().collect();
        assert_eq!(ram, [PhysRange::new(0x4000_0000, 512 << 20).unwrap()]);
        assert!(d.reserved.is_empty());
        assert_eq!(d.cpus(), &[0, 1]);
        assert_eq!(
            d.uart,
            Some(Uart {
                kind: UartKind::Pl011,
                base: HostPhysAddr::new(0x0900_0000),
                size: 0x1000
            })
        );
        assert_eq!(d.bootargs, Some("console=x -- guest args"));
        let initrd = d.initrd.expect("initrd named in /chosen");
        assert_eq!(initrd.base.as_u64(), 0x4800_0000);
        assert!(initrd.size > 0);
        assert_eq!(d.psci_method, Some("smc"));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for len in 0..VIRT.len() {
            // Cut the buffer only: the header still claims the full size.
            assert!(parse(&VIRT[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift: flip bytes all over the tree, header included.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut blob = VIRT.to_vec();
            for _ in 0..(1 + rnd() % 8) {
                let i = (rnd() as usize) % blob.len();
                blob[i] = rnd() as u8;
            }
            let _ = parse(&blob);
        }
        // Header fields claiming huge or overflowing blocks.
        for field in [1, 2, 3, 4, 8, 9] {
            let mut blob = VIRT.to_vec();
            blob[field * 4..field * 4 + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
            assert!(parse(&blob).is_err(), "field {field}");
        }
        assert_eq!(parse(b"").unwrap_err(), DtError::BadHeader);
        assert_eq!(parse(&[0u8; 64]).unwrap_err(), DtError::BadMagic);
    }
}
