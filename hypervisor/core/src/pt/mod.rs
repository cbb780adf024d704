//! Second-stage page-table engine (EPT and arm64 stage 2) and the SPP table.
//!
//! One engine, [`PageTable`], walks and edits a 4-level radix tree with 4 KiB granules through the
//! [`PhysMem`] trait; a [`Format`] says how a descriptor is encoded (EPT: [`ept::EptFormat`],
//! stage 2: [`stage2::Stage2Format`], VMSAv8-64 stage 1 for an SMMU without stage 2:
//! [`stage1::Stage1Format`]). The engine never decides permissions itself: it makes the
//! tables agree with a [`Layout`] (the desired mapping of every guest page) over a range, using
//! the largest leaf that fits, splitting a large leaf only where the range needs it and merging
//! back where a whole large region becomes uniform again.
//!
//! Every edit is done in two passes: a dry pass counts the table frames the edit needs, the frames
//! are reserved, then the edit is applied. An allocation failure therefore returns
//! [`PtError::OutOfFrames`] with the tables untouched.
//!
//! Levels are numbered from the leaf: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB, 3 = 512 GiB.

pub mod ept;
pub mod sppt;
pub mod stage1;
pub mod stage2;

use alloc::vec::Vec;
use core::marker::PhantomData;

use crate::addr::{GpaRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::physmem::{OutOfFrames, PhysMem};

/// Entries per table.
pub const ENTRIES: u64 = 512;

/// Bytes one entry covers at `level`.
pub const fn level_size(level: u8) -> u64 {
    1u64 << (12 + 9 * level as u32)
}

/// Access permissions of a leaf.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    pub const NONE: Perms = Perms(0);
    pub const R: Perms = Perms(1);
    pub const W: Perms = Perms(2);
    pub const X: Perms = Perms(4);
    pub const RW: Perms = Perms(3);
    pub const RX: Perms = Perms(5);
    pub const RWX: Perms = Perms(7);

    /// From the low three bits (R=1, W=2, X=4); other bits are ignored.
    pub const fn from_bits_truncate(b: u8) -> Perms {
        Perms(b & 7)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn read(self) -> bool {
        self.0 & 1 != 0
    }
    pub const fn write(self) -> bool {
        self.0 & 2 != 0
    }
    pub const fn exec(self) -> bool {
        self.0 & 4 != 0
    }
    pub const fn contains(self, o: Perms) -> bool {
        self.0 & o.0 == o.0
    }
    pub const fn union(self, o: Perms) -> Perms {
        Perms(self.0 | o.0)
    }
    pub const fn intersect(self, o: Perms) -> Perms {
        Perms(self.0 & o.0)
    }
    pub const fn without(self, o: Perms) -> Perms {
        Perms(self.0 & !o.0)
    }
}

impl core::fmt::Debug for Perms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let c = |b: bool, ch: char| if b { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read(), 'r'),
            c(self.write(), 'w'),
            c(self.exec(), 'x')
        )
    }
}

impl core::fmt::Display for Perms {
    /// `r-x` style, as Bulwark's command line writes permissions.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Memory type of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemType {
    /// Normal write-back memory (guest RAM).
    WriteBack,
    /// Uncached / device memory (MMIO).
    Uncached,
}

/// Attributes of a leaf.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeafAttrs {
    pub perms: Perms,
    pub mem: MemType,
    /// EPT only: sub-page write permission applies (bit 61). Only valid on a 4 KiB leaf with
    /// R=1, W=0; any other use is refused with [`PtError::Unrepresentable`].
    pub spp: bool,
}

impl LeafAttrs {
    pub const fn ram(perms: Perms) -> Self {
        Self {
            perms,
            mem: MemType::WriteBack,
            spp: false,
        }
    }
    pub const fn mmio(perms: Perms) -> Self {
        Self {
            perms,
            mem: MemType::Uncached,
            spp: false,
        }
    }
}

/// One page (or block) mapping: output address and attributes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Mapping {
    pub hpa: HostPhysAddr,
    pub attrs: LeafAttrs,
}

/// The desired state from one guest-physical address on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Run {
    /// What the address maps to; `None`: not mapped at all.
    pub target: Option<Mapping>,
    /// Bytes from the queried address over which the desired state stays uniform: unmapped
    /// throughout, or mapped with the same attributes to linearly increasing host addresses.
    /// Must be a multiple of 4 KiB; values below 4 KiB are treated as 4 KiB.
    pub len: u64,
}

/// The desired mapping of every guest page (derived by the caller from its attribute store).
pub trait Layout {
    /// Desired state at the 4 KiB-aligned `gpa`.
    fn lookup(&self, gpa: GuestPhysAddr) -> Run;
}

/// A decoded descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    Invalid,
    Table(HostPhysAddr),
    Leaf(Mapping),
}

/// Descriptor encoding of one table format.
pub trait Format {
    /// Replacing a valid descriptor by another valid one with a different output or size needs
    /// break-before-make (write invalid, invalidate, write new) — true on arm64.
    const BREAK_BEFORE_MAKE: bool;
    fn decode(raw: u64, level: u8) -> Entry;
    fn encode_table(next: HostPhysAddr) -> u64;
    /// Encode a leaf at `level` (0..=2); errors when the format cannot express the attributes
    /// there. `hpa` is aligned to the level's size.
    ///
    /// The output address must sit unshifted in the descriptor (bits 12 and up, attributes
    /// elsewhere): leaves that differ only in a 4 KiB-aligned `hpa` offset `k` differ by `k` in
    /// their encoding. A split relies on it: it encodes the first child and adds a stride
    /// (checked for both formats in the unit tests).
    fn encode_leaf(level: u8, m: &Mapping) -> Result<u64, PtError>;
}

/// Errors of the page-table engine. The tables are unchanged whenever one is returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PtError {
    /// Range not 4 KiB aligned (or empty).
    Unaligned,
    /// Range outside the table's input address space.
    OutOfRange,
    /// Not enough frames for the new tables.
    OutOfFrames,
    /// The format cannot express these attributes (e.g. EPT write-without-read, SPP on a
    /// writable page, execute-only without hardware support).
    Unrepresentable(LeafAttrs),
    /// Host address not aligned or beyond the format's output size.
    BadOutput(HostPhysAddr),
}

impl From<OutOfFrames> for PtError {
    fn from(_: OutOfFrames) -> Self {
        PtError::OutOfFrames
    }
}

/// Which translations the hardware may still cache after an edit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Invalidation {
    /// Smallest guest-physical range covering every valid entry that was changed or removed;
    /// `None`: only invalid entries were filled, no TLB maintenance is needed.
    pub range: Option<GpaRange>,
}

impl Invalidation {
    pub const fn none() -> Self {
        Self { range: None }
    }
    pub const fn is_needed(&self) -> bool {
        self.range.is_some()
    }
    fn add(&mut self, r: GpaRange) {
        self.range = Some(match self.range {
            Some(x) => x.union(r),
            None => r,
        });
    }
}

/// The back end's one TLB-invalidation function (INVEPT single-context; TLBI IPAS2E1IS +
/// VMALLE1IS). The engine calls it before a frame it unlinked is reused and mid-edit for
/// break-before-make; the caller must not re-enter the guest before the edit returns.
pub trait TlbFlush {
    fn flush(&mut self, range: GpaRange);

    /// Invalidate what the hardware may have cached from **one leaf descriptor** covering all of
    /// `range` (a 2 MiB / 1 GiB block or a page) that was just made invalid (break-before-make).
    /// Translations cached from a block are invalidated by any address inside it, so arm64
    /// needs one TLBI here instead of one per 4 KiB page. Never used for a table descriptor
    /// (its leaves may be cached page by page). The default is [`TlbFlush::flush`].
    fn flush_block(&mut self, range: GpaRange) {
        self.flush(range);
    }
}

/// A `TlbFlush` for tables that no hardware uses yet (building before the first VM entry) and
/// for tests: records what would have been flushed.
#[derive(Default, Debug)]
pub struct RecordingFlush {
    /// Every flush, [`TlbFlush::flush_block`] included, in order.
    pub calls: Vec<GpaRange>,
    /// The [`TlbFlush::flush_block`] calls alone.
    pub blocks: Vec<GpaRange>,
}

impl TlbFlush for RecordingFlush {
    fn flush(&mut self, range: GpaRange) {
        self.calls.push(range);
    }
    fn flush_block(&mut self, range: GpaRange) {
        self.calls.push(range);
        self.blocks.push(range);
    }
}

/// Statistics of a table.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PtStats {
    /// Table frames in use, root included.
    pub table_pages: usize,
}

/// A table whose content is read during the dry pass.
#[derive(Clone, Copy)]
enum TableRef {
    Real(HostPhysAddr),
    /// Not yet allocated: all entries invalid.
    Empty,
    /// Not yet allocated: the split of a large leaf (entries of the child level).
    SplitOf(Mapping),
}

struct Ctx<'a> {
    layout: &'a dyn Layout,
    apply: bool,
    /// Zeroed frames needed (new, empty tables).
    needed: usize,
    /// Frames needed for splits (fully overwritten, so not zeroed).
    needed_split: usize,
    pool: Vec<HostPhysAddr>,
    pool_split: Vec<HostPhysAddr>,
    unlinked: Vec<HostPhysAddr>,
    /// Everything changed (what `sync` returns).
    inval: Invalidation,
    /// What the final flush must still cover: `inval` minus what break-before-make flushed.
    pending: Invalidation,
    tlb: &'a mut dyn TlbFlush,
}

/// A 4-level second-stage page table of format `F`.
pub struct PageTable<F: Format> {
    root: HostPhysAddr,
    root_level: u8,
    addr_bits: u8,
    allow_1g: bool,
    pages: usize,
    /// The frame pools and the unlinked list of `sync`, kept (empty) between calls so that their
    /// capacity is reused: an edit then makes no heap allocation of its own.
    scratch: [Vec<HostPhysAddr>; 3],
    _f: PhantomData<F>,
}

impl<F: Format> core::fmt::Debug for PageTable<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable")
            .field("root", &self.root)
            .field("root_level", &self.root_level)
            .field("addr_bits", &self.addr_bits)
            .field("pages", &self.pages)
            .finish()
    }
}

fn entry_addr(table: HostPhysAddr, idx: u64) -> HostPhysAddr {
    HostPhysAddr::new(table.as_u64() + (idx % ENTRIES) * 8)
}

impl<F: Format> PageTable<F> {
    /// An empty table (nothing mapped). `root_level` 2 or 3; `addr_bits` the input address size
    /// (must fit the root level); `allow_1g`: 1 GiB leaves may be used.
    pub fn new(
        mem: &mut dyn PhysMem,
        root_level: u8,
        addr_bits: u8,
        allow_1g: bool,
    ) -> Result<Self, PtError> {
        let max_bits = 12 + 9 * (u32::from(root_level) + 1);
        if !(2..=3).contains(&root_level) || u32::from(addr_bits) > max_bits || addr_bits < 30 {
            return Err(PtError::OutOfRange);
        }
        let root = mem.alloc_frame()?;
        Ok(Self {
            root,
            root_level,
            addr_bits,
            allow_1g,
            pages: 1,
            scratch: [Vec::new(), Vec::new(), Vec::new()],
            _f: PhantomData,
        })
    }

    /// Host-physical address of the root table.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }
    pub fn root_level(&self) -> u8 {
        self.root_level
    }
    /// Input address size in bits.
    pub fn addr_bits(&self) -> u8 {
        self.addr_bits
    }
    pub fn stats(&self) -> PtStats {
        PtStats {
            table_pages: self.pages,
        }
    }

    fn check_range(&self, range: GpaRange) -> Result<(), PtError> {
        if !range.start().is_aligned(PAGE_SIZE) || !range.end().is_aligned(PAGE_SIZE) {
            return Err(PtError::Unaligned);
        }
        let limit = 1u64 << self.addr_bits;
        if range.end().as_u64() > limit {
            return Err(PtError::OutOfRange);
        }
        Ok(())
    }

    /// Make the tables agree with `layout` over `range` (4 KiB aligned). Returns what was
    /// invalidated (the engine has already called `tlb` for it). On error nothing changed.
    pub fn sync(
        &mut self,
        mem: &mut dyn PhysMem,
        range: GpaRange,
        layout: &dyn Layout,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        self.check_range(range)?;
        let [mut pool, mut pool_split, mut unlinked] = core::mem::take(&mut self.scratch);
        pool.clear();
        pool_split.clear();
        unlinked.clear();
        let mut ctx = Ctx {
            layout,
            apply: false,
            needed: 0,
            needed_split: 0,
            pool: Vec::new(),
            pool_split: Vec::new(),
            unlinked,
            inval: Invalidation::none(),
            pending: Invalidation::none(),
            tlb,
        };
        let (s, e) = (range.start().as_u64(), range.end().as_u64());
        // Dry pass: validates every descriptor and counts the frames needed.
        self.walk(
            mem,
            &mut ctx,
            TableRef::Real(self.root),
            self.root_level,
            0,
            s,
            e,
        )?;
        // Reserve.
        let mut ok = pool.try_reserve_exact(ctx.needed).is_ok()
            && pool_split.try_reserve_exact(ctx.needed_split).is_ok()
            && ctx.unlinked.try_reserve(16).is_ok();
        for _ in 0..ctx.needed {
            if !ok {
                break;
            }
            match mem.alloc_frame() {
                Ok(f) => pool.push(f),
                Err(_) => ok = false,
            }
        }
        for _ in 0..ctx.needed_split {
            if !ok {
                break;
            }
            match mem.alloc_frame_for_overwrite() {
                Ok(f) => pool_split.push(f),
                Err(_) => ok = false,
            }
        }
        if !ok {
            for f in pool.into_iter().chain(pool_split) {
                mem.free_frame(f);
            }
            return Err(PtError::OutOfFrames);
        }
        ctx.pool = pool;
        ctx.pool_split = pool_split;
        ctx.apply = true;
        // Apply pass: cannot fail (every encode succeeded in the dry pass, frames are reserved).
        let r = self.walk(
            mem,
            &mut ctx,
            TableRef::Real(self.root),
            self.root_level,
            0,
            s,
            e,
        );
        if let Some(range) = ctx.pending.range {
            ctx.tlb.flush(range);
        }
        // Frames unlinked from the tree may be reused only after the flush.
        for f in ctx.unlinked.drain(..) {
            mem.free_frame(f);
            self.pages = self.pages.saturating_sub(1);
        }
        for f in ctx.pool.drain(..).chain(ctx.pool_split.drain(..)) {
            mem.free_frame(f);
        }
        let inval = ctx.inval;
        self.scratch = [ctx.pool, ctx.pool_split, ctx.unlinked];
        r.map(|()| inval)
    }

    /// Map `[gpa, gpa+len)` linearly to `hpa` with `attrs` (largest leaves that fit).
    pub fn map(
        &mut self,
        mem: &mut dyn PhysMem,
        gpa: GuestPhysAddr,
        len: u64,
        hpa: HostPhysAddr,
        attrs: LeafAttrs,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let range = GpaRange::new(gpa, len).ok_or(PtError::Unaligned)?;
        if !hpa.is_aligned(PAGE_SIZE) || hpa.checked_add(len).is_none() {
            return Err(PtError::BadOutput(hpa));
        }
        let layout = Linear {
            range,
            hpa,
            attrs: Some(attrs),
        };
        self.sync(mem, range, &layout, tlb)
    }

    /// Remove every mapping in `[gpa, gpa+len)`.
    pub fn unmap(
        &mut self,
        mem: &mut dyn PhysMem,
        gpa: GuestPhysAddr,
        len: u64,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let range = GpaRange::new(gpa, len).ok_or(PtError::Unaligned)?;
        let layout = Linear {
            range,
            hpa: HostPhysAddr::new(0),
            attrs: None,
        };
        self.sync(mem, range, &layout, tlb)
    }

    /// What `gpa` maps to: the mapping of its 4 KiB page and the level of the leaf.
    pub fn translate(&self, mem: &dyn PhysMem, gpa: GuestPhysAddr) -> Option<(Mapping, u8)> {
        let a = gpa.as_u64();
        if a >> self.addr_bits != 0 {
            return None;
        }
        let mut table = self.root;
        let mut level = self.root_level;
        loop {
            let idx = (a >> (12 + 9 * u32::from(level))) % ENTRIES;
            match F::decode(mem.read_u64(entry_addr(table, idx)), level) {
                Entry::Invalid => return None,
                Entry::Table(next) => {
                    if level == 0 {
                        return None;
                    }
                    table = next;
                    level -= 1;
                }
                Entry::Leaf(m) => {
                    let off = (a & (level_size(level) - 1)) & !(PAGE_SIZE - 1);
                    let hpa = m.hpa.checked_add(off)?;
                    return Some((Mapping { hpa, ..m }, level));
                }
            }
        }
    }

    /// Free every table frame (the root included). The table must no longer be in use by any CPU.
    pub fn destroy(self, mem: &mut dyn PhysMem) {
        Self::free_subtree(mem, self.root, self.root_level, &mut |m, f| m.free_frame(f));
    }

    fn free_subtree(
        mem: &mut dyn PhysMem,
        table: HostPhysAddr,
        level: u8,
        free: &mut dyn FnMut(&mut dyn PhysMem, HostPhysAddr),
    ) {
        if level > 0 {
            for idx in 0..ENTRIES {
                if let Entry::Table(next) = F::decode(mem.read_u64(entry_addr(table, idx)), level) {
                    Self::free_subtree(mem, next, level - 1, free);
                }
            }
        }
        free(mem, table);
    }

    fn collect_subtree(
        mem: &dyn PhysMem,
        table: HostPhysAddr,
        level: u8,
        out: &mut Vec<HostPhysAddr>,
    ) {
        if level > 0 {
            for idx in 0..ENTRIES {
                if let Entry::Table(next) = F::decode(mem.read_u64(entry_addr(table, idx)), level) {
                    Self::collect_subtree(mem, next, level - 1, out);
                }
            }
        }
        out.push(table);
    }

    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            0 | 1 => true,
            2 => self.allow_1g,
            _ => false,
        }
    }

    fn child(mem: &dyn PhysMem, t: TableRef, idx: u64, level: u8) -> Entry {
        match t {
            TableRef::Real(a) => F::decode(mem.read_u64(entry_addr(a, idx)), level),
            TableRef::Empty => Entry::Invalid,
            TableRef::SplitOf(m) => Entry::Leaf(Mapping {
                hpa: HostPhysAddr::new(m.hpa.as_u64().wrapping_add(idx * level_size(level))),
                attrs: m.attrs,
            }),
        }
    }

    fn take_frame(ctx: &mut Ctx<'_>) -> Result<HostPhysAddr, PtError> {
        ctx.pool.pop().ok_or(PtError::OutOfFrames)
    }

    fn take_split_frame(ctx: &mut Ctx<'_>) -> Result<HostPhysAddr, PtError> {
        ctx.pool_split.pop().ok_or(PtError::OutOfFrames)
    }

    #[allow(clippy::too_many_arguments)]
    /// Replace the valid-or-invalid entry `cur` at `slot` (covering `[a, a+size)`) by `new`.
    fn replace(
        &mut self,
        mem: &mut dyn PhysMem,
        ctx: &mut Ctx<'_>,
        slot: HostPhysAddr,
        cur: Entry,
        new: u64,
        level: u8,
        a: u64,
        size: u64,
    ) {
        let range = GpaRange::new(GuestPhysAddr::new(a), size);
        match cur {
            Entry::Invalid => mem.write_u64(slot, new),
            Entry::Leaf(_) | Entry::Table(_) => {
                let new_dec = F::decode(new, level);
                let same_shape = match (cur, new_dec) {
                    (Entry::Leaf(o), Entry::Leaf(n)) => o.hpa == n.hpa,
                    _ => false,
                };
                let mut flushed = false;
                if F::BREAK_BEFORE_MAKE && !same_shape && new_dec != Entry::Invalid {
                    mem.write_u64(slot, 0);
                    if let Some(r) = range {
                        // A leaf is cached as one entry (any address in it invalidates it); a
                        // table's leaves may be cached page by page.
                        match cur {
                            Entry::Leaf(_) => ctx.tlb.flush_block(r),
                            _ => ctx.tlb.flush(r),
                        }
                        flushed = true;
                    }
                }
                mem.write_u64(slot, new);
                if let Some(r) = range {
                    ctx.inval.add(r);
                    if !flushed {
                        ctx.pending.add(r);
                    }
                }
                if let Entry::Table(old) = cur {
                    Self::collect_subtree(mem, old, level.saturating_sub(1), &mut ctx.unlinked);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        mem: &mut dyn PhysMem,
        ctx: &mut Ctx<'_>,
        t: TableRef,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
    ) -> Result<(), PtError> {
        let size = level_size(level);
        let first = (s - base) / size;
        let last = (e - 1 - base) / size;
        for idx in first..=last.min(ENTRIES - 1) {
            let a = base + idx * size;
            let lo = s.max(a);
            let hi = e.min(a + size);
            let cur = Self::child(mem, t, idx, level);
            let run = ctx.layout.lookup(GuestPhysAddr::new(lo));
            let uniform_end = lo.saturating_add(run.len.max(PAGE_SIZE));
            let uniform = uniform_end >= hi;
            // Already right over [lo, hi): nothing to do, no split.
            if uniform {
                let agrees = match (cur, run.target) {
                    (Entry::Invalid, None) => true,
                    (Entry::Leaf(m), Some(want)) => {
                        m.attrs == want.attrs
                            && m.hpa.as_u64().checked_add(lo - a) == Some(want.hpa.as_u64())
                    }
                    _ => false,
                };
                if agrees {
                    continue;
                }
            }
            let full = lo == a && hi == a + size;
            let slot = match t {
                TableRef::Real(tab) => Some(entry_addr(tab, idx)),
                _ => None,
            };
            if full && uniform {
                let leaf = match run.target {
                    None => Some(0u64),
                    Some(m) if self.leaf_allowed(level) && m.hpa.is_aligned(size) => {
                        match F::encode_leaf(level, &m) {
                            Ok(raw) => Some(raw),
                            Err(err) if level == 0 => return Err(err),
                            Err(_) => None,
                        }
                    }
                    Some(m) if level == 0 => return Err(PtError::BadOutput(m.hpa)),
                    Some(_) => None,
                };
                if let Some(raw) = leaf {
                    if ctx.apply {
                        if let Some(slot) = slot {
                            self.replace(mem, ctx, slot, cur, raw, level, a, size);
                        }
                    }
                    continue;
                }
            }
            if level == 0 {
                // Unreachable for well-formed input: a 4 KiB entry is always full and uniform.
                return Err(PtError::Unaligned);
            }
            // A table is needed under this entry.
            let next = match cur {
                Entry::Table(next) => TableRef::Real(next),
                Entry::Invalid | Entry::Leaf(_) => {
                    if !ctx.apply {
                        match cur {
                            Entry::Leaf(m) => {
                                // The split must be expressible one level down.
                                F::encode_leaf(level - 1, &m)?;
                                ctx.needed_split += 1;
                                TableRef::SplitOf(m)
                            }
                            _ => {
                                ctx.needed += 1;
                                TableRef::Empty
                            }
                        }
                    } else {
                        let frame = if let Entry::Leaf(m) = cur {
                            // Children differ only in their output address (Format::encode_leaf):
                            // encode the first once, then add the child size, straight into the
                            // not-yet-linked frame (not zeroed first: every word is written).
                            let frame = Self::take_split_frame(ctx)?;
                            let first = F::encode_leaf(level - 1, &m)?;
                            mem.fill_stride(frame, first, level_size(level - 1));
                            frame
                        } else {
                            Self::take_frame(ctx)?
                        };
                        self.pages += 1;
                        if let Some(slot) = slot {
                            self.replace(
                                mem,
                                ctx,
                                slot,
                                cur,
                                F::encode_table(frame),
                                level,
                                a,
                                size,
                            );
                        }
                        TableRef::Real(frame)
                    }
                }
            };
            self.walk(mem, ctx, next, level - 1, a, lo, hi)?;
        }
        Ok(())
    }
}

/// A layout that maps one range linearly (or unmaps it); used by [`PageTable::map`]/`unmap`.
struct Linear {
    range: GpaRange,
    hpa: HostPhysAddr,
    attrs: Option<LeafAttrs>,
}

impl Layout for Linear {
    fn lookup(&self, gpa: GuestPhysAddr) -> Run {
        let off = gpa.as_u64().wrapping_sub(self.range.start().as_u64());
        let len = self.range.end().as_u64().saturating_sub(gpa.as_u64());
        Run {
            target: self.attrs.map(|attrs| Mapping {
                hpa: HostPhysAddr::new(self.hpa.as_u64().wrapping_add(off)),
                attrs,
            }),
            len,
        }
    }
}

#[cfg(test)]
mod tests;
