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
                copy_children(&mut w, &child, 2)?;
                w.end_node()?;
            }
            ("cpus", None) => emit_cpus(&mut w, &child, plan)?,
            ("reserved-memory", None) => emit_reserved(&mut w, &child, plan)?,
            _ => copy_node(&mut w, &child, 1)?,
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

fn copy_children(w: &mut FdtWriter<'_>, node: &Node<'_>, depth: usize) -> Result<(), DtError> {
    for c in node.children()?.iter() {
        copy_node(w, &c?, depth)?;
    }
    Ok(())
}

/// Devices the guest is not given: they master DMA with the addresses the guest programs (IPAs),
/// which are not host-physical addresses under Bulwark's linear offset, and there is no IOMMU.
/// The GIC ITS keeps its tables in memory the guest allocates; passed through, it would write
/// into the wrong host pages. Their nodes are left out of the guest's tree and their registers
/// unmapped from stage 2 ([`hidden_ranges`]).
pub const HIDDEN_COMPATIBLES: &[&str] = &["arm,gic-v3-its"];

fn is_hidden(node: &Node<'_>) -> Result<bool, DtError> {
    for c in HIDDEN_COMPATIBLES {
        if fdt::has_string(node, "compatible", c)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Register ranges of the devices in [`HIDDEN_COMPATIBLES`] (host-physical), for stage 2.
pub fn hidden_ranges(src: &[u8]) -> Result<fdt::RangeList, DtError> {
    let (tree, _) = fdt::open(src)?;
    let mut list = fdt::RangeList::default();
    for n in tree.root()?.all_nodes()? {
        let (_, n) = n?;
        if is_hidden(&n)? {
            for (a, s) in fdt::reg_entries(&n)? {
                if let Some(r) = fdt::PhysRange::new(a, s) {
                    list.push(r, "hidden device ranges")?;
                }
            }
        }
    }
    Ok(list)
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

fn copy_node(w: &mut FdtWriter<'_>, node: &Node<'_>, depth: usize) -> Result<(), DtError> {
    if depth > fdt::MAX_DEPTH {
        return Err(DtError::TooDeep);
    }
    if is_hidden(node)? {
        return Ok(());
    }
    begin_named(w, node)?;
    copy_props(w, node, &[])?;
    copy_children(w, node, depth + 1)?;
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
        copy_node(w, &c, 2)?;
    }
    if !kept {
        return Err(DtError::Missing("a /cpus node for the boot CPU"));
    }
    // cpu-map names CPUs by phandle: keep it only when no CPU was dropped.
    if !dropped {
        if let Some(map) = cpus.children()?.find("cpu-map")? {
            copy_node(w, &map, 2)?;
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
        copy_children(w, &c, 3)?;
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
        let hidden: Vec<_> = hidden_ranges(VIRT).unwrap().iter().collect();
        assert_eq!(hidden, [PhysRange::new(0x0808_0000, 0x2_0000).unwrap()]);
        let rd: Vec<_> = gicv3_redistributor_ranges(VIRT).unwrap().iter().collect();
        assert_eq!(rd, [PhysRange::new(0x080a_0000, 0xf6_0000).unwrap()]);
        let psci = root.find_node("/psci").unwrap().unwrap();
        assert!(crate::fdt::has_string(&psci, "compatible", "arm,psci-0.2").unwrap());
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
        }
    }
}
