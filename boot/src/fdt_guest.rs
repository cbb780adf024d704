//! Device tree output: a small FDT writer and the derivation of the guest's device tree from the
//! one Bulwark received.
//!
//! The writer emits the standard flattened format (devicetree spec v0.4, chapter 5): a 40-byte
//! header (version 17, last compatible 16), the memory-reservation block right after it, the
//! structure block (FDT_BEGIN_NODE / FDT_PROP / FDT_END_NODE / FDT_END tokens, 4-byte aligned),
//! then the strings block (property names, de-duplicated). It writes into caller-provided buffers
//! (no allocation) and reports [`DtError::NoSpace`] instead of overrunning them.
//!
//! The source tree is read through the `fdt` crate only (see [`crate::fdt`]).

use alloc::string::String;
use alloc::vec::Vec;

use crate::fdt::{self, DtError, Node};

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER_LEN: usize = 40;

/// Writes a flattened device tree into `out`; property names collect in `strings` until
/// [`FdtWriter::finish`] appends them.
pub struct FdtWriter<'o> {
    out: &'o mut [u8],
    strings: &'o mut [u8],
    struct_start: usize,
    pos: usize,
    strings_len: usize,
    depth: usize,
}

impl<'o> FdtWriter<'o> {
    /// Start a tree with the given memory reservations.
    pub fn new(
        out: &'o mut [u8],
        strings: &'o mut [u8],
        reservations: &[(u64, u64)],
    ) -> Result<Self, DtError> {
        let mut w = Self {
            out,
            strings,
            struct_start: 0,
            pos: HEADER_LEN,
            strings_len: 0,
            depth: 0,
        };
        for &(a, s) in reservations {
            w.put_u64(a)?;
            w.put_u64(s)?;
        }
        w.put_u64(0)?;
        w.put_u64(0)?;
        w.struct_start = w.pos;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), DtError> {
        let end = self.pos.checked_add(bytes.len()).ok_or(DtError::NoSpace)?;
        self.out
            .get_mut(self.pos..end)
            .ok_or(DtError::NoSpace)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
    fn put_u32(&mut self, v: u32) -> Result<(), DtError> {
        self.put(&v.to_be_bytes())
    }
    fn put_u64(&mut self, v: u64) -> Result<(), DtError> {
        self.put(&v.to_be_bytes())
    }
    fn pad(&mut self) -> Result<(), DtError> {
        while !self.pos.is_multiple_of(4) {
            self.put(&[0])?;
        }
        Ok(())
    }

    /// Offset of `name` in the strings block, adding it if new.
    fn string_offset(&mut self, name: &str) -> Result<u32, DtError> {
        let used = self.strings.get(..self.strings_len).unwrap_or(&[]);
        let mut off = 0usize;
        for s in used.split(|&b| b == 0) {
            if s == name.as_bytes() && off < self.strings_len {
                return u32::try_from(off).map_err(|_| DtError::NoSpace);
            }
            off += s.len() + 1;
        }
        let start = self.strings_len;
        let end = start.checked_add(name.len() + 1).ok_or(DtError::NoSpace)?;
        let dst = self.strings.get_mut(start..end).ok_or(DtError::NoSpace)?;
        let (text, nul) = dst.split_at_mut(name.len());
        text.copy_from_slice(name.as_bytes());
        nul.fill(0);
        self.strings_len = end;
        u32::try_from(start).map_err(|_| DtError::NoSpace)
    }

    pub fn begin_node(&mut self, name: &str) -> Result<(), DtError> {
        if name.as_bytes().contains(&0) {
            return Err(DtError::BadProperty("node name"));
        }
        self.put_u32(FDT_BEGIN_NODE)?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.depth += 1;
        Ok(())
    }

    pub fn end_node(&mut self) -> Result<(), DtError> {
        self.depth = self.depth.checked_sub(1).ok_or(DtError::Parse)?;
        self.put_u32(FDT_END_NODE)
    }

    pub fn property(&mut self, name: &str, value: &[u8]) -> Result<(), DtError> {
        let off = self.string_offset(name)?;
        self.put_u32(FDT_PROP)?;
        self.put_u32(u32::try_from(value.len()).map_err(|_| DtError::NoSpace)?)?;
        self.put_u32(off)?;
        self.put(value)?;
        self.pad()
    }

    pub fn property_str(&mut self, name: &str, value: &str) -> Result<(), DtError> {
        if value.as_bytes().contains(&0) {
            return Err(DtError::BadProperty("string value"));
        }
        let off = self.string_offset(name)?;
        self.put_u32(FDT_PROP)?;
        self.put_u32(u32::try_from(value.len() + 1).map_err(|_| DtError::NoSpace)?)?;
        self.put_u32(off)?;
        self.put(value.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    pub fn property_u64(&mut self, name: &str, value: u64) -> Result<(), DtError> {
        self.property(name, &value.to_be_bytes())
    }

    /// A `reg`-style property: `(address, size)` pairs in `ac`/`sc` cells.
    pub fn property_reg(
        &mut self,
        name: &str,
        ac: usize,
        sc: usize,
        entries: &[(u64, u64)],
    ) -> Result<(), DtError> {
        let mut buf = [0u8; 16 * 8];
        let mut n = 0usize;
        for &(a, s) in entries {
            for (v, cells) in [(a, ac), (s, sc)] {
                let bytes = encode_cells(v, cells).ok_or(DtError::BadProperty("reg"))?;
                let len = cells * 4;
                buf.get_mut(n..n + len)
                    .ok_or(DtError::NoSpace)?
                    .copy_from_slice(bytes.get(8 - len..).ok_or(DtError::NoSpace)?);
                n += len;
            }
        }
        self.property(name, buf.get(..n).ok_or(DtError::NoSpace)?)
    }

    /// Close the tree and write the header. Returns the total size.
    pub fn finish(mut self, boot_cpu: u32) -> Result<usize, DtError> {
        if self.depth != 0 {
            return Err(DtError::Parse);
        }
        self.put_u32(FDT_END)?;
        let struct_size = self.pos - self.struct_start;
        let strings_off = self.pos;
        let end = strings_off
            .checked_add(self.strings_len)
            .ok_or(DtError::NoSpace)?;
        let (dst, src) = (
            self.out.get_mut(strings_off..end).ok_or(DtError::NoSpace)?,
            self.strings
                .get(..self.strings_len)
                .ok_or(DtError::NoSpace)?,
        );
        dst.copy_from_slice(src);
        let total = end;
        let fields: [u32; 10] = [
            0xd00d_feed,
            total as u32,
            self.struct_start as u32,
            strings_off as u32,
            HEADER_LEN as u32,
            17,
            16,
            boot_cpu,
            self.strings_len as u32,
            struct_size as u32,
        ];
        for (i, f) in fields.iter().enumerate() {
            self.out
                .get_mut(i * 4..i * 4 + 4)
                .ok_or(DtError::NoSpace)?
                .copy_from_slice(&f.to_be_bytes());
        }
        Ok(total)
    }
}

/// `value` as `cells` big-endian cells, right-aligned in 8 bytes; `None` if it does not fit.
fn encode_cells(value: u64, cells: usize) -> Option<[u8; 8]> {
    match cells {
        0 if value == 0 => Some([0; 8]),
        1 if value <= u64::from(u32::MAX) => Some(value.to_be_bytes()),
        2 => Some(value.to_be_bytes()),
        _ => None,
    }
}

/// What the guest's tree says that differs from the received one.
#[derive(Clone, Copy, Debug)]
pub struct GuestDtPlan<'a> {
    /// Guest RAM as the guest sees it: `(ipa_base, size)`.
    pub ram: (u64, u64),
    /// Host-physical address of guest IPA `ram.0` (guest RAM is a linear offset of host RAM).
    pub ram_host_base: u64,
    /// Bulwark's own host-physical memory `(base, size)`: nothing in the guest's tree may name it.
    pub bulwark: (u64, u64),
    /// `/chosen/bootargs` for the guest.
    pub bootargs: &'a str,
    /// Guest initrd `[start, end)` in IPA, if any.
    pub initrd: Option<(u64, u64)>,
    /// MPIDR affinity of the one vCPU: other `/cpus/cpu@*` nodes (and `cpu-map`) are left out.
    pub boot_cpu: u64,
    /// PSCI conduit Bulwark implements for the guest (`"hvc"`).
    pub psci_method: &'a str,
    /// Node names the user hands over although the device policy hides them (`passthrough=`).
    pub passthrough: &'a [String],
    /// Phandle of the SMMUv3 Bulwark owns, if any ([`Pol::iommu`]).
    pub iommu: Option<u32>,
}

impl GuestDtPlan<'_> {
    /// Host range `[base, base+size)` as a guest IPA range; `Ok(None)` when it lies outside guest
    /// RAM (not the guest's business), error when it touches Bulwark's memory.
    fn host_to_guest(&self, base: u64, size: u64) -> Result<Option<u64>, DtError> {
        let end = base
            .checked_add(size)
            .ok_or(DtError::BadProperty("reserved range"))?;
        let (bb, bs) = self.bulwark;
        if base < bb.saturating_add(bs) && bb < end {
            return Err(DtError::BadProperty(
                "reserved range inside Bulwark's memory",
            ));
        }
        let gstart = self.ram_host_base;
        let gend = gstart.saturating_add(self.ram.1);
        if base >= gstart && end <= gend {
            Ok(Some(base - gstart + self.ram.0))
        } else if base < gend && gstart < end {
            Err(DtError::BadProperty("reserved range straddles guest RAM"))
        } else {
            Ok(None)
        }
    }
}

/// Build the guest's device tree from `src` into `out` (property names staged in `scratch`):
/// * every `/memory` node replaced by one `memory@<base>` with the guest's RAM;
/// * `/chosen`: `bootargs` = the guest command line, `linux,initrd-*` = the guest initrd (or
///   none), everything else kept (stdout-path, rng/kaslr seeds);
/// * `/psci` replaced by `compatible = "arm,psci-1.0", "arm,psci-0.2"`, `method` = the plan's;
/// * `/cpus`: only the boot CPU's node; `cpu-map` dropped when a CPU was dropped;
/// * `/memreserve/` and `/reserved-memory` regions translated to guest addresses when inside
///   guest RAM, dropped when outside it, refused when they touch Bulwark's memory;
/// * every other node and property copied unchanged.
///
/// Returns the size written.
pub fn derive(
    src: &[u8],
    plan: &GuestDtPlan<'_>,
    out: &mut [u8],
    scratch: &mut [u8],
) -> Result<usize, DtError> {
    let (tree, header) = fdt::open(src)?;
    let mut resv = [(0u64, 0u64); fdt::MAX_RANGES];
    let mut nresv = 0usize;
    for e in fdt::memreserve_entries(src, &header) {
        let (a, s) = e?;
        if let Some(g) = plan.host_to_guest(a, s)? {
            let slot = resv
                .get_mut(nresv)
                .ok_or(DtError::TooMany("reservations"))?;
            *slot = (g, s);
            nresv += 1;
        }
    }
    let mut w = FdtWriter::new(out, scratch, resv.get(..nresv).unwrap_or(&[]))?;
    let root = tree.root()?;
    let root_node = root
        .find_node("/")?
        .ok_or(DtError::Missing("a root node"))?;
    let (ac, sc) = fdt::cell_sizes(&root_node)?;

    w.begin_node("")?;
    copy_props(&mut w, &root_node, &[])?;
    let mut memory_done = false;
    for child in root_node.children()?.iter() {
        let child = child?;
        let name = child.name()?;
        let is_memory =
            name.name == "memory" || fdt::prop_str(&child, "device_type")? == Some("memory");
        if is_memory {
            if !memory_done {
                memory_done = true;
                let mut nbuf = NameBuf::default();
                nbuf.push_fmt(format_args!("memory@{:x}", plan.ram.0))?;
                w.begin_node(nbuf.as_str())?;
                w.property_str("device_type", "memory")?;
                w.property_reg("reg", ac, sc, &[plan.ram])?;
                w.end_node()?;
            }
            continue;
        }
        match (name.name, name.unit_address) {
            ("psci", None) => continue,
            ("chosen", None) => {
                w.begin_node("chosen")?;
                copy_props(
                    &mut w,
                    &child,
                    &["bootargs", "linux,initrd-start", "linux,initrd-end"],
                )?;
                w.property_str("bootargs", plan.bootargs)?;
                if let Some((s, e)) = plan.initrd {
                    w.property_u64("linux,initrd-start", s)?;
                    w.property_u64("linux,initrd-end", e)?;
                }
                copy_children(&mut w, &child, 2, Ctx::Verbatim, Pol::default())?;
                w.end_node()?;
            }
            ("cpus", None) => emit_cpus(&mut w, &child, plan)?,
            ("reserved-memory", None) => emit_reserved(&mut w, &child, plan)?,
            _ => copy_node(
                &mut w,
                &child,
                1,
                Ctx::Devices { identity: true },
                Pol {
                    passthrough: plan.passthrough,
                    iommu: plan.iommu,
                },
            )?,
        }
    }
    if !memory_done {
        return Err(DtError::Missing("a /memory node"));
    }
    w.begin_node("psci")?;
    w.property("compatible", b"arm,psci-1.0\0arm,psci-0.2\0")?;
    w.property_str("method", plan.psci_method)?;
    w.end_node()?;
    w.end_node()?;
    w.finish(header.boot_cpu)
}

/// A node name `name@unit` assembled without allocation.
struct NameBuf {
    buf: [u8; 64],
    len: usize,
}

impl Default for NameBuf {
    fn default() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl core::fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl NameBuf {
    fn push_fmt(&mut self, args: core::fmt::Arguments<'_>) -> Result<(), DtError> {
        core::fmt::Write::write_fmt(self, args).map_err(|_| DtError::BadProperty("node name"))
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}

fn begin_named(w: &mut FdtWriter<'_>, node: &Node<'_>) -> Result<(), DtError> {
    let name = node.name()?;
    let mut nbuf = NameBuf::default();
    match name.unit_address {
        Some(u) => nbuf.push_fmt(format_args!("{}@{}", name.name, u))?,
        None => nbuf.push_fmt(format_args!("{}", name.name))?,
    }
    w.begin_node(nbuf.as_str())
}

fn copy_props(w: &mut FdtWriter<'_>, node: &Node<'_>, skip: &[&str]) -> Result<(), DtError> {
    for p in node.properties()?.iter() {
        let p = p?;
        if !skip.contains(&p.name) {
            w.property(p.name, p.value)?;
        }
    }
    Ok(())
}

fn copy_children(
    w: &mut FdtWriter<'_>,
    node: &Node<'_>,
    depth: usize,
    ctx: Ctx,
    pol: Pol<'_>,
) -> Result<(), DtError> {
    for c in node.children()?.iter() {
        copy_node(w, &c?, depth, ctx, pol)?;
    }
    Ok(())
}

/// Which devices the guest gets (issue 13 item 1; docs/aarch64.md, "Device policy").
///
/// A device is a node with a `reg` property outside `/cpus`, `/memory`, `/reserved-memory` and
/// `/chosen`. It passes through only when its `compatible` names a device known **not** to
/// master DMA ([`NON_DMA`]) and its registers are addressed 1:1 from the root (every bus above it
/// has an empty `ranges`); everything else is hidden: left out of the guest's tree (with its
/// subtree) and given no stage-2 mapping, so an MMIO-guard MAP of its pages is refused too.
/// Without an IOMMU that Bulwark controls, a DMA master writes any host-physical address past
/// stage 2 (the ROE locks and Bulwark's own memory included), and devices see the guest's IPAs,
/// which are not host addresses under Bulwark's linear offset. Nodes without `reg` (the
/// architected timer, PMU, PSCI, clocks, gpio-keys, buses) are kept; their children are
/// classified the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Known not to master DMA: in the guest's tree, its registers mapped.
    Pass(&'static str),
    /// Hidden from the guest, and why.
    Hide(&'static str),
    /// The policy would hide it (the reason), but `passthrough=` names it: handed over with a
    /// warning that the locks no longer hold against it.
    PassRequested(&'static str),
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Verdict::Hide(_))
    }
}

/// Which `reg` entries of a passed device are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Regs {
    All,
    /// GICv3: entry 0 (distributor) and the `#redistributor-regions` entries after it; the
    /// optional GICC/GICH/GICV entries (GICH is the hypervisor's control interface) stay unmapped.
    GicV3,
    /// A PCI host bridge behind the SMMU Bulwark owns: its `reg` (configuration space) and the
    /// CPU-side windows of its `ranges` (MMIO and I/O space); in the guest's tree without
    /// `iommu-map` (the guest sees no IOMMU) and without `msi-map`/`msi-parent` (the ITS is
    /// hidden: legacy INTx interrupts through `interrupt-map`).
    PciBehindIommu,
}

/// Properties of a PCI host bridge behind Bulwark's SMMU left out of the guest's tree.
const PCI_SKIP_PROPS: &[&str] = &[
    "iommu-map",
    "iommu-map-mask",
    "msi-map",
    "msi-map-mask",
    "msi-parent",
];

/// What the policy needs besides the tree: `passthrough=` names and the phandle of the
/// SMMUv3 Bulwark owns (`None`: no IOMMU under Bulwark's control).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pol<'a> {
    pub passthrough: &'a [String],
    pub iommu: Option<u32>,
}

const PCI_HOSTS: &[&str] = &["pci-host-ecam-generic", "pci-host-cam-generic"];
const SMMU_OWNED: &str =
    "IOMMU owned by Bulwark: it translates the PCI devices' DMA with tables derived from the locks";
const PCI_BEHIND_SMMU: &str =
    "PCI host bridge: every requester ID's DMA goes through the SMMUv3 Bulwark owns";
const PCI_NOT_BEHIND: &str = "DMA master: PCI host bridge whose iommu-map does not send every requester ID to the SMMUv3 Bulwark owns";
const PCI_NO_IOMMU: &str =
    "DMA master: PCI host bridge, its devices master DMA, and no SMMUv3 under Bulwark's control confines them";

/// `iommu-map` (`<rid-base iommu sid-base length>`, `#iommu-cells` 1) of a PCI host bridge
/// sends every requester ID 0..=0xffff to the IOMMU with phandle `ph` (no `iommu-map-mask`).
fn behind_iommu(node: &Node<'_>, ph: u32) -> Result<bool, DtError> {
    if node.raw_property("iommu-map-mask")?.is_some() {
        return Ok(false);
    }
    let Some(p) = node.raw_property("iommu-map")? else {
        return Ok(false);
    };
    if p.value.is_empty() || !p.value.len().is_multiple_of(16) {
        return Ok(false);
    }
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for e in p.value.chunks_exact(16) {
        let (Some(rid), Some(phandle), Some(len)) = (
            fdt::read_cells(e, 0, 1),
            fdt::read_cells(e, 4, 1),
            fdt::read_cells(e, 12, 1),
        ) else {
            return Ok(false);
        };
        if phandle != u64::from(ph) {
            return Ok(false);
        }
        covered.push((rid, rid.saturating_add(len)));
    }
    let merged = merge(covered);
    Ok(merged
        .first()
        .is_some_and(|&(s, e)| s == 0 && e >= 0x1_0000))
}

/// The CPU-side windows of a PCI host bridge's `ranges` (`<pci-addr(3) cpu-addr(parent) size>`).
fn pci_windows(node: &Node<'_>) -> Result<Vec<(u64, u64)>, DtError> {
    let pac = match node.parent() {
        Some(p) => fdt::cell_sizes(&p)?.0,
        None => 2,
    };
    // PCI: 3 address cells (phys.hi, phys.mid, phys.lo), 2 size cells.
    let cac = usize::try_from(fdt::prop_num(node, "#address-cells")?.unwrap_or(3)).unwrap_or(0);
    let csc = usize::try_from(fdt::prop_num(node, "#size-cells")?.unwrap_or(2)).unwrap_or(0);
    if cac != 3 || !(1..=2).contains(&csc) {
        return Err(DtError::BadProperty("PCI #address-cells/#size-cells"));
    }
    let Some(p) = node.raw_property("ranges")? else {
        return Ok(Vec::new());
    };
    let stride = (cac + pac + csc) * 4;
    if stride == 0 || !p.value.len().is_multiple_of(stride) {
        return Err(DtError::BadProperty("ranges"));
    }
    let mut out = Vec::new();
    for e in p.value.chunks_exact(stride) {
        let (Some(a), Some(s)) = (
            fdt::read_cells(e, cac * 4, pac),
            fdt::read_cells(e, (cac + pac) * 4, csc),
        ) else {
            return Err(DtError::BadProperty("ranges"));
        };
        out.push((a, s));
    }
    Ok(out)
}

/// Devices known not to master DMA: `(compatible, what, which reg entries)`.
const NON_DMA: &[(&str, &str, Regs)] = &[
    ("arm,pl011", "PL011 UART", Regs::All),
    ("arm,pl031", "PL031 RTC", Regs::All),
    ("arm,pl061", "PL061 GPIO", Regs::All),
    (
        "arm,gic-v3",
        "GICv3 distributor and redistributors (LPIs off)",
        Regs::GicV3,
    ),
];

/// Devices known to master DMA: `(compatible, why hidden)`.
const DMA_MASTERS: &[(&str, &str)] = &[
    (
        "qemu,fw-cfg-mmio",
        "DMA master: fw_cfg's DMA interface writes any physical address",
    ),
    (
        "virtio,mmio",
        "DMA master: virtio-mmio queues and buffers are DMA",
    ),
    (
        "pci-host-ecam-generic",
        "DMA master: PCI host bridge, its devices master DMA",
    ),
    (
        "pci-host-cam-generic",
        "DMA master: PCI host bridge, its devices master DMA",
    ),
    (
        "arm,gic-v3-its",
        "DMA master: the GIC ITS keeps its tables in memory",
    ),
    (
        "arm,smmu-v3",
        "IOMMU: not one Bulwark drives (no SMMUv3 owned at boot)",
    ),
];

const UNKNOWN: &str = "not on Bulwark's list of devices that master no DMA";
const TRANSLATED: &str =
    "its registers are not addressed 1:1 from the root (a bus with address translation)";
/// Hidden and not passed through on request: Bulwark cannot compute where its registers are.
const NOT_MAPPABLE: &str = "not memory-mapped 1:1, so it cannot be passed through";

/// How the walk treats a subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// Nodes are classified; `identity`: `reg` here is a root (host-physical) address.
    Devices { identity: bool },
    /// Copied verbatim (`/chosen`, `/cpus`, `/reserved-memory` children).
    Verbatim,
}

fn node_name(node: &Node<'_>) -> Result<NameBuf, DtError> {
    let name = node.name()?;
    let mut nbuf = NameBuf::default();
    match name.unit_address {
        Some(u) => nbuf.push_fmt(format_args!("{}@{}", name.name, u))?,
        None => nbuf.push_fmt(format_args!("{}", name.name))?,
    }
    Ok(nbuf)
}

/// The verdict for one node, `None` when it is not a device (no `reg`).
fn classify(
    node: &Node<'_>,
    identity: bool,
    pol: Pol<'_>,
) -> Result<Option<(Verdict, Regs)>, DtError> {
    let passthrough = pol.passthrough;
    let has_reg = node.raw_property("reg")?.is_some();
    let mut dma = None;
    for (c, why) in DMA_MASTERS {
        if fdt::has_string(node, "compatible", c)? {
            dma = Some(*why);
        }
    }
    // With an SMMUv3 Bulwark owns: the IOMMU itself stays Bulwark's; a PCI host bridge whose
    // every requester ID maps to streams of that SMMU is handed over (its devices' DMA is
    // translated by tables Bulwark derives from the store). Without one, PCI stays hidden.
    let mut pci = false;
    for c in PCI_HOSTS {
        pci |= fdt::has_string(node, "compatible", c)?;
    }
    match pol.iommu {
        Some(ph) => {
            if fdt::prop_num(node, "phandle")? == Some(u64::from(ph))
                && fdt::has_string(node, "compatible", "arm,smmu-v3")?
            {
                return Ok(Some((Verdict::Hide(SMMU_OWNED), Regs::All)));
            }
            if pci && identity && has_reg && behind_iommu(node, ph)? {
                return Ok(Some((Verdict::Pass(PCI_BEHIND_SMMU), Regs::PciBehindIommu)));
            }
            if pci {
                dma = Some(PCI_NOT_BEHIND);
            }
        }
        None if pci => dma = Some(PCI_NO_IOMMU),
        None => {}
    }
    if !has_reg && dma.is_none() {
        return Ok(None);
    }
    let mut known = None;
    for (c, what, regs) in NON_DMA {
        if fdt::has_string(node, "compatible", c)? {
            known = Some((*what, *regs));
        }
    }
    let hide = match (dma, known) {
        (Some(why), _) => why,
        (None, Some((what, regs))) if identity => return Ok(Some((Verdict::Pass(what), regs))),
        (None, Some(_)) => TRANSLATED,
        (None, None) => UNKNOWN,
    };
    let name = node_name(node)?;
    if passthrough.iter().any(|p| p == name.as_str()) {
        if !identity || !has_reg {
            return Ok(Some((Verdict::Hide(NOT_MAPPABLE), Regs::All)));
        }
        return Ok(Some((Verdict::PassRequested(hide), Regs::All)));
    }
    Ok(Some((Verdict::Hide(hide), Regs::All)))
}

/// The `Ctx` for the children of `node` (which is itself classified in `ctx`).
fn child_ctx(node: &Node<'_>, ctx: Ctx) -> Result<Ctx, DtError> {
    Ok(match ctx {
        Ctx::Verbatim => Ctx::Verbatim,
        Ctx::Devices { identity } => Ctx::Devices {
            identity: identity
                && node
                    .raw_property("ranges")?
                    .is_some_and(|p| p.value.is_empty()),
        },
    })
}

/// One device of the received tree and Bulwark's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Path from the root (`/intc@8000000/its@8080000`).
    pub path: String,
    /// The node's own name (what `passthrough=` matches).
    pub name: String,
    pub verdict: Verdict,
    /// Host-physical ranges: for a passed device the ones to map; for a hidden one every
    /// `reg` entry (empty when they are not addressed 1:1).
    pub ranges: Vec<fdt::PhysRange>,
}

/// Every device of `src` with Bulwark's decision (the same one [`derive`] applies to the guest's
/// tree). Errors when a `passthrough=` name matches no hidden device, or one that cannot be
/// mapped: `Err((name, why))`.
pub fn device_policy(
    src: &[u8],
    pol: Pol<'_>,
) -> Result<Result<Vec<Device>, (String, &'static str)>, DtError> {
    let passthrough = pol.passthrough;
    let (tree, _) = fdt::open(src)?;
    let root = tree.root()?;
    let root_node = root
        .find_node("/")?
        .ok_or(DtError::Missing("a root node"))?;
    let mut out = Vec::new();
    for child in root_node.children()?.iter() {
        let child = child?;
        let name = child.name()?;
        let special = matches!(
            (name.name, name.unit_address),
            (
                "chosen" | "cpus" | "reserved-memory" | "psci" | "aliases",
                None
            )
        ) || name.name == "memory"
            || fdt::prop_str(&child, "device_type")? == Some("memory");
        if !special {
            collect(&child, "", 1, true, pol, &mut out)?;
        }
    }
    for p in passthrough {
        let ok = out
            .iter()
            .any(|d| &d.name == p && matches!(d.verdict, Verdict::PassRequested(_)));
        if !ok {
            let why = if out
                .iter()
                .any(|d| &d.name == p && d.verdict == Verdict::Hide(NOT_MAPPABLE))
            {
                NOT_MAPPABLE
            } else if out.iter().any(|d| &d.name == p) {
                "Bulwark passes this device through anyway (it masters no DMA)"
            } else {
                "no device of that name in the device tree"
            };
            return Ok(Err((p.clone(), why)));
        }
    }
    Ok(Ok(out))
}

fn collect(
    node: &Node<'_>,
    parent_path: &str,
    depth: usize,
    identity: bool,
    pol: Pol<'_>,
    out: &mut Vec<Device>,
) -> Result<(), DtError> {
    if depth > fdt::MAX_DEPTH {
        return Err(DtError::TooDeep);
    }
    let name = String::from(node_name(node)?.as_str());
    let path = alloc::format!("{parent_path}/{name}");
    let verdict = classify(node, identity, pol)?;
    if let Some((v, regs)) = verdict {
        let mut ranges = Vec::new();
        if identity {
            let gic_count = match regs {
                Regs::All | Regs::PciBehindIommu => usize::MAX,
                Regs::GicV3 => {
                    let n = fdt::prop_num(node, "#redistributor-regions")?.unwrap_or(1);
                    usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1)
                }
            };
            let take = if v.passes() { gic_count } else { usize::MAX };
            for (a, s) in fdt::reg_entries(node)?.take(take) {
                if let Some(r) = fdt::PhysRange::new(a, s) {
                    ranges.push(r);
                }
            }
            if regs == Regs::PciBehindIommu {
                for (a, s) in pci_windows(node)? {
                    if let Some(r) = fdt::PhysRange::new(a, s) {
                        ranges.push(r);
                    }
                }
            }
        }
        out.push(Device {
            path: path.clone(),
            name,
            verdict: v,
            ranges,
        });
        if !v.passes() {
            return Ok(());
        }
    }
    let ctx = child_ctx(node, Ctx::Devices { identity })?;
    let child_identity = matches!(ctx, Ctx::Devices { identity: true });
    for c in node.children()?.iter() {
        collect(&c?, &path, depth + 1, child_identity, pol, out)?;
    }
    Ok(())
}

/// `[start, end)` rounded out to 4 KiB pages; `None` when the end would wrap.
fn pages_out(start: u64, end: u64) -> Option<(u64, u64)> {
    Some((start & !0xfff, end.checked_next_multiple_of(4096)?))
}

/// Sorted, overlapping or adjacent ranges merged.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The host-physical pages the guest's stage 2 maps for its devices (identity, pass-through):
/// every passed device's ranges rounded out to pages, merged, minus every page a hidden device
/// touches (a hidden device wins a shared page) and minus `exclude` (RAM, emulated pages).
pub fn stage2_device_ranges(devices: &[Device], exclude: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let pages = |pass: bool| -> Vec<(u64, u64)> {
        devices
            .iter()
            .filter(|d| d.verdict.passes() == pass)
            .flat_map(|d| d.ranges.iter())
            .filter_map(|r| pages_out(r.base.as_u64(), r.end()))
            .collect()
    };
    let want = merge(pages(true));
    let mut holes = pages(false);
    holes.extend(exclude.iter().filter_map(|&(s, e)| pages_out(s, e)));
    let holes = merge(holes);
    let mut out = Vec::new();
    for (s, e) in want {
        let mut at = s;
        for &(hs, he) in holes.iter().filter(|&&(hs, he)| hs < e && he > s) {
            if hs > at {
                out.push((at, hs));
            }
            at = at.max(he);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

/// The first enabled `arm,smmu-v3` node of `src`: its register frame `(base, size)` (the first
/// `reg` entry, addressed 1:1 from the root) and its phandle. `Ok(None)` when the tree has none.
pub fn smmu_v3(src: &[u8]) -> Result<Option<(u64, u64, u32)>, DtError> {
    let (tree, _) = fdt::open(src)?;
    let root = tree.root()?;
    let root_node = root
        .find_node("/")?
        .ok_or(DtError::Missing("a root node"))?;
    for n in root_node.children()?.iter() {
        let n = n?;
        if !fdt::has_string(&n, "compatible", "arm,smmu-v3")? {
            continue;
        }
        if !matches!(fdt::prop_str(&n, "status")?, None | Some("okay" | "ok")) {
            continue;
        }
        let Some((base, size)) = fdt::reg_entries(&n)?.next() else {
            continue;
        };
        let Some(ph) = fdt::prop_num(&n, "phandle")?.and_then(|p| u32::try_from(p).ok()) else {
            continue;
        };
        return Ok(Some((base, size, ph)));
    }
    Ok(None)
}

/// The GICv3 redistributor regions (host-physical) of the `arm,gic-v3` node: its `reg` entries
/// 1 ..= `#redistributor-regions` (default 1; entry 0 is the distributor). Bulwark emulates the
/// RD_base control page of each redistributor in them (LPIs off: docs/aarch64.md). Empty when the
/// tree has no GICv3. At most [`fdt::MAX_RANGES`] regions.
pub fn gicv3_redistributor_ranges(src: &[u8]) -> Result<fdt::RangeList, DtError> {
    let (tree, _) = fdt::open(src)?;
    let mut list = fdt::RangeList::default();
    for n in tree.root()?.all_nodes()? {
        let (_, n) = n?;
        if !fdt::has_string(&n, "compatible", "arm,gic-v3")? {
            continue;
        }
        let count = fdt::prop_num(&n, "#redistributor-regions")?.unwrap_or(1);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        for (a, s) in fdt::reg_entries(&n)?.skip(1).take(count) {
            if let Some(r) = fdt::PhysRange::new(a, s) {
                list.push(r, "GICv3 redistributor regions")?;
            }
        }
    }
    Ok(list)
}

fn copy_node(
    w: &mut FdtWriter<'_>,
    node: &Node<'_>,
    depth: usize,
    ctx: Ctx,
    pol: Pol<'_>,
) -> Result<(), DtError> {
    if depth > fdt::MAX_DEPTH {
        return Err(DtError::TooDeep);
    }
    let mut skip: &[&str] = &[];
    if let Ctx::Devices { identity } = ctx {
        match classify(node, identity, pol)? {
            Some((Verdict::Hide(_), _)) => return Ok(()),
            Some((_, Regs::PciBehindIommu)) => skip = PCI_SKIP_PROPS,
            _ => {}
        }
    }
    begin_named(w, node)?;
    copy_props(w, node, skip)?;
    copy_children(w, node, depth + 1, child_ctx(node, ctx)?, pol)?;
    w.end_node()
}

fn emit_cpus(
    w: &mut FdtWriter<'_>,
    cpus: &Node<'_>,
    plan: &GuestDtPlan<'_>,
) -> Result<(), DtError> {
    const AFF: u64 = 0xff_00ff_ffff;
    begin_named(w, cpus)?;
    copy_props(w, cpus, &[])?;
    let mut dropped = false;
    let mut kept = false;
    for c in cpus.children()?.iter() {
        let c = c?;
        if fdt::prop_str(&c, "device_type")? == Some("cpu") {
            let id = fdt::reg_entries(&c)?.next().map(|(a, _)| a);
            if id.map(|i| i & AFF) != Some(plan.boot_cpu & AFF) {
                dropped = true;
                continue;
            }
            kept = true;
        }
        if c.name()?.name == "cpu-map" {
            continue;
        }
        copy_node(w, &c, 2, Ctx::Verbatim, Pol::default())?;
    }
    if !kept {
        return Err(DtError::Missing("a /cpus node for the boot CPU"));
    }
    // cpu-map names CPUs by phandle: keep it only when no CPU was dropped.
    if !dropped {
        if let Some(map) = cpus.children()?.find("cpu-map")? {
            copy_node(w, &map, 2, Ctx::Verbatim, Pol::default())?;
        }
    }
    w.end_node()
}

fn emit_reserved(
    w: &mut FdtWriter<'_>,
    rm: &Node<'_>,
    plan: &GuestDtPlan<'_>,
) -> Result<(), DtError> {
    let (ac, sc) = fdt::cell_sizes(rm)?;
    begin_named(w, rm)?;
    copy_props(w, rm, &[])?;
    for c in rm.children()?.iter() {
        let c = c?;
        let mut regs = [(0u64, 0u64); 16];
        let mut n = 0usize;
        let mut has_reg = false;
        let mut outside = false;
        for (a, s) in fdt::reg_entries(&c)? {
            has_reg = true;
            match plan.host_to_guest(a, s)? {
                Some(g) => {
                    let slot = regs.get_mut(n).ok_or(DtError::TooMany("reserved regs"))?;
                    *slot = (g, s);
                    n += 1;
                }
                None => outside = true,
            }
        }
        if has_reg && (outside || n == 0) {
            // A region outside guest RAM is not the guest's business.
            continue;
        }
        begin_named(w, &c)?;
        copy_props(w, &c, &["reg"])?;
        if has_reg {
            w.property_reg("reg", ac, sc, regs.get(..n).unwrap_or(&[]))?;
        }
        copy_children(w, &c, 3, Ctx::Verbatim, Pol::default())?;
        w.end_node()?;
    }
    w.end_node()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdt::{parse, PhysRange};

    const VIRT: &[u8] = include_bytes!("../fixtures/aarch64-qemu-virt-smp2-initrd.dtb");

    fn plan() -> GuestDtPlan<'static> {
        GuestDtPlan {
            ram: (0x4000_0000, 480 << 20),
            ram_host_base: 0x4200_0000,
            bulwark: (0x4000_0000, 32 << 20),
            bootargs: "console=ttyAMA0 quiet",
            initrd: Some((0x5d00_0000, 0x5d00_1000)),
            boot_cpu: 0,
            psci_method: "hvc",
            passthrough: &[],
            iommu: None,
        }
    }

    #[test]
    fn guest_tree_from_qemu_virt() {
        let mut out = vec![0u8; 1 << 20];
        let mut scratch = vec![0u8; 64 << 10];
        let n = derive(VIRT, &plan(), &mut out, &mut scratch).expect("derive");
        let g = parse(&out[..n]).expect("the derived tree parses");
        let ram: Vec<_> = g.ram.iter().collect();
        assert_eq!(ram, [PhysRange::new(0x4000_0000, 480 << 20).unwrap()]);
        assert_eq!(g.bootargs, Some("console=ttyAMA0 quiet"));
        assert_eq!(g.initrd, PhysRange::new(0x5d00_0000, 0x1000));
        assert_eq!(g.psci_method, Some("hvc"));
        assert_eq!(g.cpus(), &[0], "only the boot CPU");
        assert_eq!(
            g.uart.map(|u| u.base.as_u64()),
            Some(0x0900_0000),
            "stdout-path kept"
        );
        // Everything else survives: the GIC and the timer nodes.
        let (tree, _) = crate::fdt::open(&out[..n]).unwrap();
        let root = tree.root().unwrap();
        assert!(root.find_node("/intc@8000000").unwrap().is_some());
        assert!(root.find_node("/timer").unwrap().is_some());
        assert!(root.find_node("/cpus/cpu-map").unwrap().is_none());
        assert!(
            root.find_node("/intc@8000000/its@8080000")
                .unwrap()
                .is_none(),
            "ITS hidden"
        );
        for gone in [
            "/fw-cfg@9020000",
            "/virtio_mmio@a000000",
            "/virtio_mmio@a003e00",
            "/pcie@10000000",
            "/flash@0",
        ] {
            assert!(root.find_node(gone).unwrap().is_none(), "{gone} hidden");
        }
        for kept in [
            "/pl011@9000000",
            "/pl031@9010000",
            "/pl061@9030000",
            "/gpio-keys",
            "/pmu",
            "/apb-pclk",
            "/platform-bus@c000000",
        ] {
            assert!(root.find_node(kept).unwrap().is_some(), "{kept} kept");
        }
        let rd: Vec<_> = gicv3_redistributor_ranges(VIRT).unwrap().iter().collect();
        assert_eq!(rd, [PhysRange::new(0x080a_0000, 0xf6_0000).unwrap()]);
        let psci = root.find_node("/psci").unwrap().unwrap();
        assert!(crate::fdt::has_string(&psci, "compatible", "arm,psci-0.2").unwrap());
    }

    fn policy(pt: &[String]) -> Vec<Device> {
        device_policy(
            VIRT,
            Pol {
                passthrough: pt,
                iommu: None,
            },
        )
        .unwrap()
        .unwrap()
    }

    /// QEMU virt with `iommu=smmuv3` (same dump command plus `iommu=smmuv3`, no initrd/append):
    /// the PCIe node's `iommu-map` sends RIDs 0..0xffff to the SMMU (phandle 0x8004).
    const VIRT_SMMU: &[u8] = include_bytes!("../fixtures/aarch64-qemu-virt-smmuv3.dtb");

    #[test]
    fn pci_is_handed_over_only_behind_an_owned_smmu() {
        let pol = |iommu| {
            device_policy(
                VIRT_SMMU,
                Pol {
                    passthrough: &[],
                    iommu,
                },
            )
            .unwrap()
            .unwrap()
        };
        let smmu = smmu_v3(VIRT_SMMU).unwrap().unwrap();
        assert_eq!(smmu, (0x0905_0000, 0x2_0000, 0x8004));
        let find = |d: &[Device], p: &str| d.iter().find(|x| x.path == p).expect(p).clone();
        // Without an owned SMMU: PCI and the SMMU hidden, and the line says why.
        let none = pol(None);
        assert!(
            matches!(find(&none, "/pcie@10000000").verdict, Verdict::Hide(w) if w == PCI_NO_IOMMU)
        );
        assert!(!find(&none, "/smmuv3@9050000").verdict.passes());
        // With it: the bridge passes with its ECAM and its three windows; the SMMU stays hidden.
        let owned = pol(Some(0x8004));
        let pci = find(&owned, "/pcie@10000000");
        assert_eq!(pci.verdict, Verdict::Pass(PCI_BEHIND_SMMU));
        let r = |a, s| PhysRange::new(a, s).unwrap();
        assert_eq!(
            pci.ranges,
            [
                r(0x40_1000_0000, 0x1000_0000),
                r(0x3eff_0000, 0x1_0000),
                r(0x1000_0000, 0x2eff_0000),
                r(0x80_0000_0000, 0x80_0000_0000),
            ]
        );
        assert_eq!(
            find(&owned, "/smmuv3@9050000").verdict,
            Verdict::Hide(SMMU_OWNED)
        );
        assert!(!find(&owned, "/intc@8000000/its@8080000").verdict.passes());
        // A different phandle is not the owned SMMU: the bridge stays hidden.
        let other = pol(Some(0x8003));
        assert_eq!(
            find(&other, "/pcie@10000000").verdict,
            Verdict::Hide(PCI_NOT_BEHIND)
        );
        // The guest's tree: the PCIe node without iommu-map/msi-map, no SMMU node.
        let mut out = vec![0u8; 1 << 20];
        let mut scratch = vec![0u8; 64 << 10];
        let p = GuestDtPlan {
            iommu: Some(0x8004),
            initrd: None,
            ..plan()
        };
        let n = derive(VIRT_SMMU, &p, &mut out, &mut scratch).expect("derive");
        let (t, _) = crate::fdt::open(&out[..n]).unwrap();
        let root = t.root().unwrap();
        let pcie = root
            .find_node("/pcie@10000000")
            .unwrap()
            .expect("pcie node");
        for prop in PCI_SKIP_PROPS {
            assert!(pcie.raw_property(prop).unwrap().is_none(), "{prop}");
        }
        assert!(pcie.raw_property("interrupt-map").unwrap().is_some());
        assert!(root.find_node("/smmuv3@9050000").unwrap().is_none());
        // Without the SMMU owned, neither node is in the guest's tree.
        let p = GuestDtPlan {
            initrd: None,
            ..plan()
        };
        let n = derive(VIRT_SMMU, &p, &mut out, &mut scratch).expect("derive");
        let (t, _) = crate::fdt::open(&out[..n]).unwrap();
        let root = t.root().unwrap();
        assert!(root.find_node("/pcie@10000000").unwrap().is_none());
        assert!(root.find_node("/smmuv3@9050000").unwrap().is_none());
    }

    #[test]
    fn device_policy_of_qemu_virt() {
        let devs = policy(&[]);
        let find = |p: &str| devs.iter().find(|d| d.path == p).expect(p).clone();
        let r = |a, s| PhysRange::new(a, s).unwrap();
        // Known non-DMA devices pass, with exactly their registers.
        assert_eq!(find("/pl011@9000000").verdict, Verdict::Pass("PL011 UART"));
        assert_eq!(find("/pl011@9000000").ranges, [r(0x0900_0000, 0x1000)]);
        assert!(find("/pl031@9010000").verdict.passes());
        assert!(find("/pl061@9030000").verdict.passes());
        let gic = find("/intc@8000000");
        assert!(gic.verdict.passes());
        assert_eq!(
            gic.ranges,
            [r(0x0800_0000, 0x1_0000), r(0x080a_0000, 0xf6_0000)]
        );
        // DMA masters and unknown devices are hidden, with their reason and registers.
        let fw = find("/fw-cfg@9020000");
        assert!(matches!(fw.verdict, Verdict::Hide(w) if w.contains("fw_cfg")));
        assert_eq!(fw.ranges, [r(0x0902_0000, 0x18)]);
        assert!(
            matches!(find("/virtio_mmio@a000000").verdict, Verdict::Hide(w) if w.contains("virtio"))
        );
        assert!(matches!(find("/pcie@10000000").verdict, Verdict::Hide(w) if w.contains("PCI")));
        assert!(
            matches!(find("/intc@8000000/its@8080000").verdict, Verdict::Hide(w) if w.contains("ITS"))
        );
        assert_eq!(find("/flash@0").verdict, Verdict::Hide(UNKNOWN));
        assert_eq!(
            devs.iter()
                .filter(|d| d.path.starts_with("/virtio_mmio@"))
                .count(),
            32
        );
        // No CPU, memory, timer or PSCI node is a device; nothing else passes.
        assert!(devs.iter().all(|d| !d.path.starts_with("/cpus")));
        assert!(devs.iter().all(|d| d.path != "/timer" && d.path != "/psci"));
        let passed: Vec<_> = devs
            .iter()
            .filter(|d| d.verdict.passes())
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(
            passed,
            [
                "/pl061@9030000",
                "/pl031@9010000",
                "/pl011@9000000",
                "/intc@8000000"
            ]
        );
    }

    #[test]
    fn stage2_ranges_of_qemu_virt() {
        let devs = policy(&[]);
        // The GIC's first redistributor control page is emulated (excluded), RAM excluded.
        let got = stage2_device_ranges(
            &devs,
            &[(0x080a_0000, 0x080a_1000), (0x4000_0000, 0x6000_0000)],
        );
        assert_eq!(
            got,
            [
                (0x0800_0000, 0x0801_0000),
                (0x080a_1000, 0x0900_1000),
                (0x0901_0000, 0x0901_1000),
                (0x0903_0000, 0x0903_1000),
            ]
        );
        // fw_cfg passed on request: its page joins the map.
        let pt = [String::from("fw-cfg@9020000")];
        let got = stage2_device_ranges(&policy(&pt), &[]);
        assert!(got.contains(&(0x0902_0000, 0x0902_1000)), "{got:x?}");
    }

    #[test]
    fn hidden_device_wins_a_shared_page() {
        let dev = |v, a, s| Device {
            path: String::new(),
            name: String::new(),
            verdict: v,
            ranges: vec![PhysRange::new(a, s).unwrap()],
        };
        let devs = [
            dev(Verdict::Pass("x"), 0x1000_0000, 0x3000),
            dev(Verdict::Hide("y"), 0x1000_1800, 0x10),
            dev(Verdict::Pass("z"), 0x2000_0100, 0x10),
            dev(Verdict::Pass("w"), u64::MAX - 0x10, 0x10),
        ];
        assert_eq!(
            stage2_device_ranges(&devs, &[]),
            [
                (0x1000_0000, 0x1000_1000),
                (0x1000_2000, 0x1000_3000),
                (0x2000_0000, 0x2000_1000)
            ]
        );
    }

    #[test]
    fn passthrough_by_name() {
        let pt = [String::from("fw-cfg@9020000")];
        let devs = policy(&pt);
        let fw = devs.iter().find(|d| d.name == "fw-cfg@9020000").unwrap();
        assert!(matches!(fw.verdict, Verdict::PassRequested(w) if w.contains("fw_cfg")));
        let mut p = plan();
        p.passthrough = &pt;
        let mut out = vec![0u8; 1 << 20];
        let mut scratch = vec![0u8; 64 << 10];
        let n = derive(VIRT, &p, &mut out, &mut scratch).unwrap();
        let (tree, _) = crate::fdt::open(&out[..n]).unwrap();
        let root = tree.root().unwrap();
        assert!(root.find_node("/fw-cfg@9020000").unwrap().is_some());
        assert!(root.find_node("/virtio_mmio@a000000").unwrap().is_none());
        // Names that match nothing hidden are refused, never ignored.
        for (name, why) in [
            ("fw-cfg@9020001", "no device"),
            ("pl011@9000000", "passes this device through anyway"),
            ("cpu@0", "no device"),
        ] {
            let e = device_policy(
                VIRT,
                Pol {
                    passthrough: &[String::from(name)],
                    iommu: None,
                },
            )
            .unwrap()
            .unwrap_err();
            assert_eq!(e.0, name);
            assert!(e.1.contains(why), "{name}: {}", e.1);
        }
    }

    #[test]
    fn no_initrd_and_small_buffers() {
        let mut p = plan();
        p.initrd = None;
        let mut out = vec![0u8; 1 << 20];
        let mut scratch = vec![0u8; 64 << 10];
        let n = derive(VIRT, &p, &mut out, &mut scratch).unwrap();
        assert_eq!(parse(&out[..n]).unwrap().initrd, None);
        for len in [0usize, 40, 100, n - 1] {
            let mut small = vec![0u8; len];
            assert_eq!(
                derive(VIRT, &p, &mut small, &mut scratch),
                Err(DtError::NoSpace),
                "{len}"
            );
        }
        let mut tiny_scratch = [0u8; 16];
        assert_eq!(
            derive(VIRT, &p, &mut out, &mut tiny_scratch),
            Err(DtError::NoSpace)
        );
    }

    #[test]
    fn reservations_are_translated_or_refused() {
        let p = plan();
        assert_eq!(p.host_to_guest(0x4300_0000, 0x1000), Ok(Some(0x4100_0000)));
        assert_eq!(p.host_to_guest(0x1000, 0x1000), Ok(None));
        assert!(
            p.host_to_guest(0x4000_1000, 0x1000).is_err(),
            "inside Bulwark"
        );
        assert!(
            p.host_to_guest(0x5fff_f000, 0x2000).is_err(),
            "straddles the end of guest RAM"
        );
    }

    #[test]
    fn garbage_source_never_panics() {
        let mut out = vec![0u8; 1 << 20];
        let mut scratch = vec![0u8; 64 << 10];
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..2000 {
            let mut blob = VIRT.to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % blob.len();
                blob[i] = (x >> 32) as u8;
            }
            let _ = derive(&blob, &plan(), &mut out, &mut scratch);
            let _ = device_policy(
                &blob,
                Pol {
                    passthrough: &[String::from("fw-cfg@9020000")],
                    iommu: Some(0x8004),
                },
            );
            let _ = smmu_v3(&blob);
        }
    }
}
