//! Per-guest protection state and the two entry points the back ends call:
//! [`Guest::handle_hypercall`] and [`Guest::handle_fault`]. Both change only the attribute store
//! and MMIO-guard state and return the guest-physical range whose tables must be re-derived;
//! [`Guest::sync_ept`] / [`Guest::sync_stage2`] then compute the EPT (+SPPT) or stage-2
//! permissions of that range from the store (no exit handler edits a page-table entry).
//!
//! Callers serialise access (one `spin::Mutex<Guest>` per VM); nothing here is global.

use alloc::vec::Vec;

use bulwark_abi::errno::{smccc_ret, Errno};
use bulwark_abi::roe::{RoeRequest, KVM_HC_ROE, ROE_IMPL_VERSION};
use bulwark_abi::smccc::{Function, HypAbi};

use crate::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use crate::console::reason;
use crate::exit::{Access, Action, Hypercall, MemFault, StopReason, StoreEmulation};
use crate::gwalk::{RangePiece, WalkError};
use crate::physmem::PhysMem;
use crate::pt::ept::EptFormat;
use crate::pt::sppt::{SppVector, Sppt};
use crate::pt::stage2::Stage2;
use crate::pt::{
    Invalidation, Layout, LeafAttrs, Mapping, PageTable, Perms, PtError, Run, TlbFlush,
};
use crate::store::{AttrStore, PageState, StoreError, StoreLimits};
use crate::violation::{ActionWord, Violation, ViolationKind, ViolationLog, ViolationPolicy};

/// Identical spurious faults (same vCPU, page, ip) in a row before the run is stopped.
pub const SPURIOUS_LIMIT: u32 = 64;

/// MMIO-guard protection granule (bytes).
pub const MMIO_GUARD_GRANULE: u64 = PAGE_SIZE;

/// Status Bulwark reports when it stops a run (violation under `halt`, bad access).
pub use crate::console::STATUS_BULWARK_FAILURE;

/// What a guest-physical region is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionKind {
    /// Guest RAM: write-back, rights from the attribute store.
    Ram,
    /// Device memory passed through: uncached, read/write, never executable; subject to the
    /// MMIO guard once the guest enrols.
    Device,
    /// Firmware passed through (x86: option ROMs and the BIOS below 1 MiB, which a real-mode
    /// guest runs): uncached, read/write/execute; never subject to the MMIO guard.
    Firmware,
    /// A device page whose reads pass through and whose writes exit to the arch code, which
    /// emulates them (x86: the local APIC page, so that INIT/SIPI IPIs can be filtered):
    /// uncached, read-only in the stage-2 tables.
    DeviceWriteTrapped,
}

/// One region of the guest-physical map: `[gpa, gpa+len)` -> `[hpa, hpa+len)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemRegion {
    pub gpa: GuestPhysAddr,
    pub len: u64,
    pub hpa: HostPhysAddr,
    pub kind: RegionKind,
}

/// Which architecture's calling convention the guest uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// Static configuration of a guest.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub arch: Arch,
    /// Page-aligned, non-overlapping regions (any order); everything else is not mapped.
    pub regions: Vec<MemRegion>,
    pub policy: ViolationPolicy,
    /// Violation lines per instruction address before suppression.
    pub ratelimit: u32,
    /// EPT supports execute-only translations.
    pub exec_only: bool,
    /// SPP is available and enabled: chunk pages get sub-page vectors.
    pub spp: bool,
    pub limits: StoreLimits,
}

/// A configuration Bulwark refuses to start a guest with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// A region is empty, unaligned or wraps.
    BadRegion(MemRegion),
    /// Two regions overlap.
    Overlap(MemRegion, MemRegion),
    /// A host attribute lies (partly) outside guest RAM.
    AttrOutsideRam { address: u64, size: u64 },
    /// The store refused a host attribute.
    Attr(StoreError),
}

/// Counters reported by the core.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counters {
    pub hypercalls: u64,
    pub hypercall_errors: u64,
    pub roe_pages_requested: u64,
    pub chunk_bytes_requested: u64,
    pub violations: [u64; 4],
    pub emulated_stores: u64,
    pub spurious_faults: u64,
    pub mmio_maps: u64,
    pub mmio_unmaps: u64,
}

fn kind_index(k: ViolationKind) -> usize {
    match k {
        ViolationKind::Roe => 0,
        ViolationKind::RoeChunk => 1,
        ViolationKind::MmioGuard => 2,
        ViolationKind::Attr => 3,
    }
}

/// Per-page guest-virtual to guest-physical translation, implemented by the back end over the
/// calling vCPU's current paging state (identity when paging is off).
pub trait GuestTranslate {
    /// Guest-physical address of the byte at `gva`; `Err(())` when it does not translate.
    #[allow(clippy::result_unit_err)]
    fn translate(&mut self, gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()>;
    /// [`GuestTranslate::translate`] with the guest's attribute store at hand, so that a back
    /// end can make its page walk obey the guest's own read permission for every paging
    /// structure it reads (`gwalk::AttrChecked`; issue 12). The core always calls this one;
    /// the default ignores the store.
    #[allow(clippy::result_unit_err)]
    fn translate_checked(
        &mut self,
        store: &AttrStore,
        gva: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, ()> {
        let _ = store;
        self.translate(gva)
    }

    /// The whole range `[gva, gva + len)` at once, with one walk per guest leaf mapping
    /// ([`crate::gwalk::translate_range`]: pieces in virtual order, physically contiguous
    /// leaves merged, every piece guest RAM in the back end's view). `None`: this translator
    /// only translates page by page, and ROE_MPROTECT then calls
    /// [`GuestTranslate::translate_checked`] for every 4 KiB page. An implementation must read
    /// paging structures under the same rule as `translate_checked` (none from a frame the
    /// guest may not read).
    fn translate_range(
        &mut self,
        gva: GuestVirtAddr,
        len: u64,
    ) -> Option<Result<Vec<RangePiece>, WalkError>> {
        let _ = (gva, len);
        None
    }
}

/// Result of a hypercall.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HypercallOutcome {
    /// Handled: apply `action`, then re-derive `rederive` (before re-entering the guest).
    Handled {
        action: Action,
        rederive: Option<GpaRange>,
    },
    /// Not a protection call (PSCI, guest exit, ...): the back end handles it.
    NotMine,
}

/// What a fault was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultKind {
    /// A protection refused the access (a violation line was logged, maybe rate-limited).
    Violation(ViolationKind),
    /// A store to unprotected bytes of a chunk page: emulated, no violation.
    ChunkPassThrough,
    /// The tables were stale (the store allows the access): re-derive and retry. After
    /// [`SPURIOUS_LIMIT`] identical ones in a row the run is stopped instead (never a silent
    /// loop).
    Spurious,
    /// The address is not guest memory at all.
    NotGuestMemory,
    /// A write to a chunk page arrived without an access size: the back end must decode it.
    NeedsAccessSize,
    /// Shadow-step back ends only ([`Guest::enable_shadow_step`]): a write without an access
    /// size hit an **unprotected** byte of a chunk page. Nothing is decided yet: the back end
    /// runs the instruction once against a private copy of the page (action `Retry`) and then
    /// reports what it changed through [`Guest::shadow_step_done`], which decides.
    ShadowStep,
}

/// The decision for a [`MemFault`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultDecision {
    pub kind: FaultKind,
    pub action: Action,
    /// Re-derive this range before re-entering.
    pub rederive: Option<GpaRange>,
}

/// MMIO-guard state of a guest.
#[derive(Debug, Default)]
pub struct MmioGuard {
    enrolled: bool,
    /// Mapped granule frames, sorted.
    mapped: Vec<u64>,
}

impl MmioGuard {
    pub fn enrolled(&self) -> bool {
        self.enrolled
    }
    pub fn is_mapped(&self, frame: u64) -> bool {
        self.mapped.binary_search(&frame).is_ok()
    }
    pub fn mapped_count(&self) -> usize {
        self.mapped.len()
    }
    /// Frames from `frame` (inclusive) with the same mapped-ness, at most `max`.
    fn run(&self, frame: u64, max: u64) -> u64 {
        match self.mapped.binary_search(&frame) {
            Ok(_) => 1,
            Err(i) => match self.mapped.get(i) {
                Some(next) => (next - frame).min(max),
                None => max,
            },
        }
    }
}

/// The per-guest protection state.
#[derive(Debug)]
pub struct Guest {
    arch: Arch,
    regions: Vec<MemRegion>,
    policy: ViolationPolicy,
    spp: bool,
    ram_pages: u64,
    store: AttrStore,
    guard: MmioGuard,
    log: ViolationLog,
    counters: Counters,
    /// How far one guest store can reach past the SPP sub-page it starts in
    /// ([`SppVector::from_protected_bytes_reach`]).
    spp_reach: u32,
    /// (vcpu, page, ip, count) of the current run of identical spurious faults.
    spurious_streak: (u32, u64, u64, u32),
    /// The back end completes unsized writes to chunk pages by single-stepping the
    /// instruction against a shadow copy (x86: EPT violations carry no access size).
    shadow_step: bool,
    /// arm64: which numbering of the KVM vendor-hyp functions 2..=7 this guest is served
    /// (Bulwark's `hyp-abi=`; docs/smccc.md). Calls of the other ABI are not this core's.
    hyp_abi: HypAbi,
    /// arm64: frames of device pages Bulwark emulates itself (the GICv3 redistributors'
    /// RD_base control pages): in the guest's device tree, not in `regions`, never mapped.
    /// Sorted. The upstream MMIO_GUARD accepts them (docs/smccc.md).
    emulated_mmio: Vec<u64>,
}

fn region_end(r: &MemRegion) -> u64 {
    r.gpa.as_u64().saturating_add(r.len)
}

impl Guest {
    pub fn new(cfg: GuestConfig) -> Result<Self, ConfigError> {
        let mut regions = cfg.regions;
        for r in &regions {
            if r.len == 0
                || !r.gpa.is_aligned(PAGE_SIZE)
                || !r.hpa.is_aligned(PAGE_SIZE)
                || !r.len.is_multiple_of(PAGE_SIZE)
                || r.gpa.checked_add(r.len).is_none()
                || r.hpa.checked_add(r.len).is_none()
            {
                return Err(ConfigError::BadRegion(*r));
            }
        }
        regions.sort_by_key(|r| r.gpa);
        for w in regions.windows(2) {
            if let [a, b] = w {
                if region_end(a) > b.gpa.as_u64() {
                    return Err(ConfigError::Overlap(*a, *b));
                }
            }
        }
        let ram_pages = regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.len / PAGE_SIZE)
            .sum();
        Ok(Self {
            arch: cfg.arch,
            regions,
            policy: cfg.policy,
            spp: cfg.spp,
            ram_pages,
            store: AttrStore::new(cfg.limits, cfg.exec_only),
            guard: MmioGuard::default(),
            log: ViolationLog::new(cfg.ratelimit),
            counters: Counters::default(),
            spp_reach: crate::pt::sppt::STORE_REACH,
            spurious_streak: (0, u64::MAX, 0, 0),
            shadow_step: false,
            hyp_abi: HypAbi::default(),
            emulated_mmio: Vec::new(),
        })
    }

    /// arm64: serve the KVM vendor-hyp functions 2..=7 as `abi` numbers them (set once, before
    /// the guest runs; the back end's discovery answers use the same choice).
    pub fn set_hyp_abi(&mut self, abi: HypAbi) {
        self.hyp_abi = abi;
    }

    pub fn hyp_abi(&self) -> HypAbi {
        self.hyp_abi
    }

    /// arm64: the device pages (IPAs) Bulwark emulates itself, set once before the guest runs.
    /// A page that is not 4 KiB aligned or lies in the memory map is ignored (a mapped page is
    /// never emulated).
    pub fn set_emulated_mmio(&mut self, pages: &[u64]) {
        let mut v: Vec<u64> = pages
            .iter()
            .map(|&p| GuestPhysAddr::new(p))
            .filter(|p| p.is_aligned(PAGE_SIZE) && self.region_of(*p).is_none())
            .map(GuestPhysAddr::frame)
            .collect();
        v.sort_unstable();
        v.dedup();
        self.emulated_mmio = v;
    }

    /// Apply a boot-time host attribute (KVM_SET_MEMORY_ATTRIBUTES rules; must lie in RAM).
    pub fn set_host_attributes(
        &mut self,
        address: u64,
        size: u64,
        attributes: u64,
        flags: u64,
    ) -> Result<Option<GpaRange>, ConfigError> {
        // KVM's checks first, then the RAM check.
        self.store
            .validate_attributes(address, size, attributes, flags)
            .map_err(ConfigError::Attr)?;
        if !self.range_is_ram(GuestPhysAddr::new(address), size) {
            return Err(ConfigError::AttrOutsideRam { address, size });
        }
        self.store
            .set_attributes(address, size, attributes, flags)
            .map_err(ConfigError::Attr)
    }

    pub fn store(&self) -> &AttrStore {
        &self.store
    }
    pub fn mmio_guard(&self) -> &MmioGuard {
        &self.guard
    }
    pub fn counters(&self) -> Counters {
        self.counters
    }
    pub fn policy(&self) -> ViolationPolicy {
        self.policy
    }
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions
    }
    /// Set how far one guest store can reach past the SPP sub-page it starts in (the largest
    /// store less one byte; at least [`crate::pt::sppt::STORE_REACH`]). Call before any chunk
    /// is protected.
    pub fn set_spp_store_reach(&mut self, reach: u32) {
        self.spp_reach = reach.max(crate::pt::sppt::STORE_REACH);
    }

    pub fn violation_log(&mut self) -> &mut ViolationLog {
        &mut self.log
    }
    /// The guest-physical range that covers every region (for the first full derivation).
    pub fn full_range(&self) -> Option<GpaRange> {
        let first = self.regions.first()?;
        let last = self.regions.last()?;
        GpaRange::from_bounds(first.gpa, GuestPhysAddr::new(region_end(last)))
    }

    fn region_of(&self, gpa: GuestPhysAddr) -> Option<&MemRegion> {
        let a = gpa.as_u64();
        let i = self.regions.partition_point(|r| region_end(r) <= a);
        self.regions.get(i).filter(|r| r.gpa.as_u64() <= a)
    }

    fn is_ram(&self, gpa: GuestPhysAddr) -> bool {
        self.region_of(gpa)
            .is_some_and(|r| r.kind == RegionKind::Ram)
    }

    fn range_is_ram(&self, start: GuestPhysAddr, len: u64) -> bool {
        let Some(end) = start.as_u64().checked_add(len) else {
            return false;
        };
        let mut pos = start.as_u64();
        while pos < end {
            match self.region_of(GuestPhysAddr::new(pos)) {
                Some(r) if r.kind == RegionKind::Ram => pos = region_end(r),
                _ => return false,
            }
        }
        true
    }

    /// Declare that this back end completes writes without an access size by running the
    /// instruction once against a shadow copy of each page it writes (x86: one MTF step), and
    /// reports the result through [`Guest::shadow_step_done`]. From then on
    /// [`Guest::handle_fault`] answers such a write to a chunk page with
    /// [`FaultKind::ShadowStep`] (unprotected faulting byte) or a `roe-chunk` violation
    /// (protected faulting byte) instead of [`FaultKind::NeedsAccessSize`]. For a write
    /// violation without a size, `Action::Advance` (skip) then means "complete the instruction
    /// with its protected bytes dropped", which is what the shadow step does.
    pub fn enable_shadow_step(&mut self) {
        self.shadow_step = true;
    }

    /// The protected bytes of page `frame` as 4096 bits (bit `i % 64` of word `i / 64` = byte
    /// `i`): every byte of a ROE page, the recorded bytes of a chunk page, none otherwise.
    pub fn protected_page(&self, frame: u64) -> [u64; 64] {
        let st = self.store.state(frame);
        if st.roe {
            return [u64::MAX; 64];
        }
        match self.store.chunk_bits(frame) {
            Some(bits) if st.chunk => *bits,
            _ => [0; 64],
        }
    }

    /// Bit i set = byte `gpa + i` (i < n <= 64) is protected against writes by ROE. Bytes of
    /// another page than `gpa`'s are not looked at (bits stay 0): ask per page.
    pub fn protected_mask(&self, gpa: GuestPhysAddr, n: u8) -> u64 {
        let mut mask = 0u64;
        let room = PAGE_SIZE - gpa.page_offset();
        for i in 0..u64::from(n.min(64)).min(room) {
            if self.store.byte_locked(GuestPhysAddr::new(gpa.as_u64() + i)) {
                mask |= 1 << i;
            }
        }
        mask
    }

    // ----- derivation -------------------------------------------------------------------

    /// The effective rights of a RAM page with `st`: host rights minus W under a lock/chunk.
    fn ram_perms(st: &PageState) -> Perms {
        if st.roe || st.chunk {
            st.allowed.without(Perms::W)
        } else {
            st.allowed
        }
    }

    fn lookup(&self, gpa: GuestPhysAddr, spp_enabled: bool) -> Run {
        let a = gpa.as_u64();
        let i = self.regions.partition_point(|r| region_end(r) <= a);
        let Some(r) = self.regions.get(i) else {
            return Run {
                target: None,
                len: u64::MAX - a,
            };
        };
        if r.gpa.as_u64() > a {
            return Run {
                target: None,
                len: r.gpa.as_u64() - a,
            };
        }
        let off = a - r.gpa.as_u64();
        let hpa = HostPhysAddr::new(r.hpa.as_u64().wrapping_add(off));
        let left = r.len - off;
        match r.kind {
            RegionKind::Ram => {
                let (st, frames) = self.store.run_at(gpa.frame());
                let perms = Self::ram_perms(&st);
                // SPP only where the host attributes allow writes at all.
                let spp = spp_enabled && st.chunk && !st.roe && st.allowed.write() && perms.read();
                let len = if spp {
                    PAGE_SIZE
                } else {
                    frames.saturating_mul(PAGE_SIZE).min(left)
                };
                Run {
                    target: (perms != Perms::NONE).then_some(Mapping {
                        hpa,
                        attrs: LeafAttrs {
                            spp,
                            ..LeafAttrs::ram(perms)
                        },
                    }),
                    len,
                }
            }
            RegionKind::Device => {
                if !self.guard.enrolled {
                    return Run {
                        target: Some(Mapping {
                            hpa,
                            attrs: LeafAttrs::mmio(Perms::RW),
                        }),
                        len: left,
                    };
                }
                let f = gpa.frame();
                let frames = self.guard.run(f, left / PAGE_SIZE);
                Run {
                    target: self.guard.is_mapped(f).then_some(Mapping {
                        hpa,
                        attrs: LeafAttrs::mmio(Perms::RW),
                    }),
                    len: frames.saturating_mul(PAGE_SIZE),
                }
            }
            RegionKind::Firmware => Run {
                target: Some(Mapping {
                    hpa,
                    attrs: LeafAttrs::mmio(Perms::RWX),
                }),
                len: left,
            },
            RegionKind::DeviceWriteTrapped => Run {
                target: Some(Mapping {
                    hpa,
                    attrs: LeafAttrs::mmio(Perms::R),
                }),
                len: left,
            },
        }
    }

    /// Re-derive `range` into the EPT and (with SPP) the SPPT. SPP vectors are written before
    /// any EPT leaf that points at them. On error nothing in the EPT changed.
    pub fn sync_ept<const XO: bool>(
        &self,
        mem: &mut dyn PhysMem,
        ept: &mut PageTable<EptFormat<XO>>,
        sppt: Option<&mut Sppt>,
        range: GpaRange,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let range = range.page_aligned_outer().ok_or(PtError::OutOfRange)?;
        let spp = self.spp && sppt.is_some();
        if let Some(sppt) = sppt.filter(|_| self.spp) {
            let vectors = self.spp_vectors(range)?;
            if !vectors.is_empty() {
                sppt.set(mem, &vectors)?;
            }
        }
        let layout = Derived { guest: self, spp };
        ept.sync(mem, range, &layout, tlb)
    }

    /// Point the 4 KiB guest page `page` at `shadow` (a frame the back end owns, never guest
    /// RAM) with the page's derived rights **plus write** and no SPP, for a shadow step: the
    /// guest's next instruction writes the copy instead of the page. Only the leaf of `page`
    /// changes (a large leaf around it is split). [`Guest::sync_ept`] over the page afterwards
    /// restores the derived mapping (and merges the split back where possible). Refused
    /// (tables unchanged) unless `page` is RAM whose host attributes allow read and write.
    pub fn sync_ept_shadow<const XO: bool>(
        &self,
        mem: &mut dyn PhysMem,
        ept: &mut PageTable<EptFormat<XO>>,
        page: GuestPhysAddr,
        shadow: HostPhysAddr,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let page = page.page_base();
        let st = self.store.state(page.frame());
        if !st.allowed.read() || !st.allowed.write() {
            return Err(PtError::Unrepresentable(LeafAttrs::ram(st.allowed)));
        }
        self.map_shadow(
            mem,
            ept,
            page,
            shadow,
            Self::ram_perms(&st).union(Perms::W),
            tlb,
        )
    }

    /// Like [`Guest::sync_ept_shadow`], for a RAM page whose host attributes refuse writes
    /// (or reads): `shadow` is mapped with the page's derived rights plus read and write. Used
    /// by the x86 software path to complete a store under `skip` whose bytes on this page are
    /// all dropped (an `attr` write violation: no instruction length to skip by); the back end
    /// fills `shadow` (a copy only where the page is readable) and merges nothing from it.
    pub fn sync_ept_shadow_discard<const XO: bool>(
        &self,
        mem: &mut dyn PhysMem,
        ept: &mut PageTable<EptFormat<XO>>,
        page: GuestPhysAddr,
        shadow: HostPhysAddr,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let page = page.page_base();
        let st = self.store.state(page.frame());
        let perms = Self::ram_perms(&st).union(Perms::R).union(Perms::W);
        self.map_shadow(mem, ept, page, shadow, perms, tlb)
    }

    /// The one place a shadow leaf is mapped: `page` (4 KiB-aligned RAM) -> `shadow` with
    /// `perms`, no SPP; every other page keeps its derived mapping.
    fn map_shadow<const XO: bool>(
        &self,
        mem: &mut dyn PhysMem,
        ept: &mut PageTable<EptFormat<XO>>,
        page: GuestPhysAddr,
        shadow: HostPhysAddr,
        perms: Perms,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        if !self.is_ram(page) {
            let st = self.store.state(page.frame());
            return Err(PtError::Unrepresentable(LeafAttrs::ram(st.allowed)));
        }
        if !shadow.is_aligned(PAGE_SIZE) {
            return Err(PtError::BadOutput(shadow));
        }
        let range = GpaRange::new(page, PAGE_SIZE).ok_or(PtError::OutOfRange)?;
        let layout = Shadowed {
            inner: Derived {
                guest: self,
                spp: false,
            },
            page,
            target: Mapping {
                hpa: shadow,
                attrs: LeafAttrs::ram(perms),
            },
        };
        ept.sync(mem, range, &layout, tlb)
    }

    /// Re-derive `range` into the stage-2 tables.
    pub fn sync_stage2(
        &self,
        mem: &mut dyn PhysMem,
        s2: &mut Stage2,
        range: GpaRange,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let range = range.page_aligned_outer().ok_or(PtError::OutOfRange)?;
        let layout = Derived {
            guest: self,
            spp: false,
        };
        s2.sync(mem, range, &layout, tlb)
    }

    /// Re-derive `range` of a device (DMA) table: the view an IOMMU Bulwark owns gives the
    /// guest's DMA masters (docs/aarch64.md, "SMMUv3"). Input = the guest's IPA, output = the
    /// same host address as the CPU's stage 2; only guest RAM is mapped (no device pages: no
    /// peer-to-peer, and Bulwark's memory has no IPA at all), read/write at most, never
    /// executable, with the same rights the CPU's stage 2 has minus what a device cannot be
    /// held to: a ROE-locked page or a page with chunk-protected bytes is **read-only** for
    /// devices (a device write cannot be checked byte by byte), an `attr=` page without W is
    /// read-only, one without R has no entry. `F` is the table's format (stage 1 for an SMMU
    /// with stage 1 only, stage 2 otherwise); the engine is the same.
    pub fn sync_dma<F: crate::pt::Format>(
        &self,
        mem: &mut dyn PhysMem,
        table: &mut PageTable<F>,
        range: GpaRange,
        tlb: &mut dyn TlbFlush,
    ) -> Result<Invalidation, PtError> {
        let range = range.page_aligned_outer().ok_or(PtError::OutOfRange)?;
        table.sync(mem, range, &DmaView { guest: self }, tlb)
    }

    /// What a device's refused access at `gpa` ran into (for the violation line of an IOMMU
    /// fault): `"roe"` (a ROE-locked page), `"roe-chunk"` (chunk-protected bytes), `"attr"`
    /// (`attr=` withholds the right), `"unmapped"` (no guest RAM there: the back end names
    /// Bulwark's own window itself), or `None` when the DMA view allows the access (a stale
    /// device TLB, or a fault the view did not cause).
    pub fn dma_fault_kind(&self, gpa: GuestPhysAddr, write: bool) -> Option<&'static str> {
        let in_ram = self
            .region_of(gpa)
            .is_some_and(|r| r.kind == RegionKind::Ram);
        if !in_ram {
            return Some("unmapped");
        }
        let (st, _) = self.store.run_at(gpa.frame());
        let want = if write { Perms::W } else { Perms::R };
        if !st.allowed.contains(want) || !st.allowed.read() {
            return Some("attr");
        }
        if write && st.roe {
            return Some("roe");
        }
        if write && st.chunk {
            return Some("roe-chunk");
        }
        None
    }

    /// SPP vectors of the chunk pages in `range`.
    pub fn spp_vectors(&self, range: GpaRange) -> Result<Vec<(GuestPhysAddr, SppVector)>, PtError> {
        let mut out = Vec::new();
        let mut f = range.start().frame();
        let end = range.end().as_u64().div_ceil(PAGE_SIZE);
        while f < end {
            let (st, n) = self.store.run_at(f);
            if st.chunk
                && !st.roe
                && st.allowed.write()
                && self.is_ram(GuestPhysAddr::from_frame(f))
            {
                for g in f..f.saturating_add(n).min(end) {
                    if let Some(bits) = self.store.chunk_bits(g) {
                        out.try_reserve(1).map_err(|_| PtError::OutOfFrames)?;
                        out.push((
                            GuestPhysAddr::from_frame(g),
                            SppVector::from_protected_bytes_reach(bits, self.spp_reach),
                        ));
                    }
                }
            }
            f = f.saturating_add(n.max(1));
        }
        Ok(out)
    }

    // ----- hypercalls ---------------------------------------------------------------------

    /// Decode and perform a hypercall (x86: VMCALL RAX=nr; arm64: HVC/SMC x0=function ID).
    pub fn handle_hypercall(
        &mut self,
        hc: &Hypercall,
        tr: &mut dyn GuestTranslate,
    ) -> HypercallOutcome {
        match self.dispatch(hc, tr) {
            // A 32-bit caller gets 32-bit results (upper halves zero), errors included.
            HypercallOutcome::Handled { action, rederive } if hc.narrow => {
                let action = match action {
                    Action::AdvanceWithResult(v) => Action::AdvanceWithResult(v & 0xffff_ffff),
                    Action::AdvanceWithResults(v) => {
                        Action::AdvanceWithResults(v.map(|x| x & 0xffff_ffff))
                    }
                    other => other,
                };
                HypercallOutcome::Handled { action, rederive }
            }
            other => other,
        }
    }

    fn dispatch(&mut self, hc: &Hypercall, tr: &mut dyn GuestTranslate) -> HypercallOutcome {
        let mask = if hc.narrow { 0xffff_ffff } else { u64::MAX };
        let nr = hc.nr & mask;
        let [a0, a1, a2, _] = hc.args.map(|a| a & mask);
        match self.arch {
            Arch::X86_64 => {
                if nr != KVM_HC_ROE {
                    // KVM answers unknown hypercalls with -KVM_ENOSYS.
                    self.counters.hypercalls += 1;
                    self.counters.hypercall_errors += 1;
                    return self.done(Errno::NoSys.to_reg(hc.narrow), None);
                }
                self.roe_call(hc, a0, a1, a2, tr)
            }
            Arch::Aarch64 => {
                // The one table of what exists (bulwark_abi::smccc::Function::decode) under this
                // guest's ABI: a function number of the other ABI is not this core's (the
                // back end answers it NOT_SUPPORTED), never a function of this one.
                let fid = (hc.nr & 0xffff_ffff) as u32;
                match Function::decode(fid, self.hyp_abi) {
                    Ok(Function::Roe) => self.roe_call(hc, a0, a1, a2, tr),
                    Ok(Function::MmioGuardInfo) => self.smccc_ok(hc, MMIO_GUARD_GRANULE, None),
                    Ok(Function::MmioGuardEnroll) => {
                        if hc.from_user {
                            return self.smccc_err();
                        }
                        let first = !self.guard.enrolled;
                        self.guard.enrolled = true;
                        let r = if first { self.device_range() } else { None };
                        self.smccc_ok(hc, 0, r)
                    }
                    Ok(Function::MmioGuardMap) => self.mmio_map(hc, a0),
                    Ok(Function::MmioGuardUnmap) => self.mmio_unmap(hc, a0),
                    Ok(Function::PkvmHypMeminfo) => {
                        if hc.from_user || (a0 | a1 | a2) != 0 {
                            return self.smccc_fail(smccc_ret::INVALID_PARAMETER);
                        }
                        self.smccc_ok(hc, MMIO_GUARD_GRANULE, None)
                    }
                    Ok(Function::PkvmMemShare | Function::PkvmMemUnshare) => {
                        self.pkvm_mem_share(hc, a0, a1, a2)
                    }
                    Ok(Function::PkvmMmioGuard) => self.pkvm_mmio_guard(hc, a0, a1, a2),
                    _ => HypercallOutcome::NotMine,
                }
            }
        }
    }

    #[inline]
    fn done(&mut self, value: u64, rederive: Option<GpaRange>) -> HypercallOutcome {
        HypercallOutcome::Handled {
            action: Action::AdvanceWithResult(value),
            rederive,
        }
    }

    fn smccc_ok(
        &mut self,
        hc: &Hypercall,
        value: u64,
        rederive: Option<GpaRange>,
    ) -> HypercallOutcome {
        self.counters.hypercalls += 1;
        let _ = hc;
        self.done(value, rederive)
    }

    fn smccc_err(&mut self) -> HypercallOutcome {
        self.counters.hypercalls += 1;
        self.counters.hypercall_errors += 1;
        self.done(smccc_ret::NOT_SUPPORTED_REG, None)
    }

    fn smccc_fail(&mut self, code: i64) -> HypercallOutcome {
        self.counters.hypercalls += 1;
        self.counters.hypercall_errors += 1;
        self.done(code as u64, None)
    }

    /// Upstream MEM_SHARE / MEM_UNSHARE (x1 = IPA, x2 = x3 = 0). Bulwark has no host to share
    /// guest memory with, and guest RAM is never hidden from the guest itself: both only check
    /// that the IPA is one granule of guest RAM and succeed with no side effect. They never
    /// enrol in the MMIO guard, map or unmap anything, or change the attribute store.
    fn pkvm_mem_share(&mut self, hc: &Hypercall, ipa: u64, a1: u64, a2: u64) -> HypercallOutcome {
        let gpa = GuestPhysAddr::new(ipa);
        let ok = !hc.from_user
            && (a1 | a2) == 0
            && gpa.is_aligned(MMIO_GUARD_GRANULE)
            && self.range_is_ram(gpa, MMIO_GUARD_GRANULE);
        if !ok {
            return self.smccc_fail(smccc_ret::INVALID_PARAMETER);
        }
        self.smccc_ok(hc, 0, None)
    }

    /// Upstream MMIO_GUARD (x1 = IPA, x2 = x3 = 0): register one device granule. The first
    /// successful call enrols the guest (from then on every device granule not registered is
    /// refused, as for the seed's ENROLL); registering is idempotent and there is no
    /// unregister (upstream has none). Anything but a granule-aligned IPA inside a device
    /// region fails with INVALID_PARAMETER and changes nothing (no enrolment either).
    ///
    /// A device page Bulwark emulates itself (`set_emulated_mmio`: the GICv3 redistributors'
    /// control pages, which the guest's device tree describes as part of the GIC) is accepted
    /// too, as pKVM accepts any MMIO IPA: a stock kernel ioremaps the whole redistributor
    /// region and WARNs on a refusal. Nothing is mapped for it (Bulwark's emulation answers every
    /// access, enrolled or not) and `mmio_maps` does not count it; it enrols like any other.
    fn pkvm_mmio_guard(&mut self, hc: &Hypercall, ipa: u64, a1: u64, a2: u64) -> HypercallOutcome {
        let gpa = GuestPhysAddr::new(ipa);
        let args_ok = !hc.from_user && (a1 | a2) == 0 && gpa.is_aligned(MMIO_GUARD_GRANULE);
        if args_ok && self.emulated_mmio.binary_search(&gpa.frame()).is_ok() {
            let first = !self.guard.enrolled;
            self.guard.enrolled = true;
            let r = if first { self.device_range() } else { None };
            return self.smccc_ok(hc, 0, r);
        }
        let ok = args_ok
            && self
                .region_of(gpa)
                .is_some_and(|r| r.kind == RegionKind::Device);
        if !ok {
            return self.smccc_fail(smccc_ret::INVALID_PARAMETER);
        }
        let f = gpa.frame();
        // `Err(i)`: not registered yet, insert at `i`.
        let i = self.guard.mapped.binary_search(&f).err();
        if let Some(i) = i {
            if self.guard.mapped.try_reserve(1).is_err() {
                return self.smccc_fail(smccc_ret::NOT_SUPPORTED);
            }
            self.guard.mapped.insert(i, f);
            self.counters.mmio_maps += 1;
        }
        let first = !self.guard.enrolled;
        self.guard.enrolled = true;
        let r = if first {
            self.device_range()
        } else if i.is_some() {
            GpaRange::new(gpa, MMIO_GUARD_GRANULE)
        } else {
            None
        };
        self.smccc_ok(hc, 0, r)
    }

    fn device_range(&self) -> Option<GpaRange> {
        let mut out: Option<GpaRange> = None;
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Device) {
            if let Some(x) = GpaRange::new(r.gpa, r.len) {
                out = Some(match out {
                    Some(o) => o.union(x),
                    None => x,
                });
            }
        }
        out
    }

    fn mmio_map(&mut self, hc: &Hypercall, ipa: u64) -> HypercallOutcome {
        let gpa = GuestPhysAddr::new(ipa);
        let ok = !hc.from_user
            && self.guard.enrolled
            && gpa.is_aligned(MMIO_GUARD_GRANULE)
            && self
                .region_of(gpa)
                .is_some_and(|r| r.kind == RegionKind::Device);
        if !ok {
            return self.smccc_err();
        }
        let f = gpa.frame();
        match self.guard.mapped.binary_search(&f) {
            Ok(_) => self.smccc_ok(hc, 0, None),
            Err(i) => {
                if self.guard.mapped.try_reserve(1).is_err() {
                    return self.smccc_err();
                }
                self.guard.mapped.insert(i, f);
                self.counters.mmio_maps += 1;
                self.smccc_ok(hc, 0, GpaRange::new(gpa, MMIO_GUARD_GRANULE))
            }
        }
    }

    fn mmio_unmap(&mut self, hc: &Hypercall, ipa: u64) -> HypercallOutcome {
        let gpa = GuestPhysAddr::new(ipa);
        if hc.from_user || !self.guard.enrolled || !gpa.is_aligned(MMIO_GUARD_GRANULE) {
            return self.smccc_err();
        }
        match self.guard.mapped.binary_search(&gpa.frame()) {
            Ok(i) => {
                self.guard.mapped.remove(i);
                self.counters.mmio_unmaps += 1;
                self.smccc_ok(hc, 0, GpaRange::new(gpa, MMIO_GUARD_GRANULE))
            }
            Err(_) => self.smccc_err(),
        }
    }

    fn roe_call(
        &mut self,
        hc: &Hypercall,
        op: u64,
        a1: u64,
        a2: u64,
        tr: &mut dyn GuestTranslate,
    ) -> HypercallOutcome {
        self.counters.hypercalls += 1;
        let r = if hc.from_user {
            Err(Errno::NoSys)
        } else {
            match RoeRequest::decode(op, a1, a2) {
                Err(_) => Err(Errno::Inval),
                // Answered on the spot: a constant outcome is built in the caller's slot (the
                // merged path below copies its rederive field with a byte-wise memcpy).
                Ok(RoeRequest::Version) => {
                    return HypercallOutcome::Handled {
                        action: Action::AdvanceWithResult(ROE_IMPL_VERSION),
                        rederive: None,
                    }
                }
                Ok(RoeRequest::Mprotect { start, pages }) => {
                    self.roe_mprotect(start, pages, hc.narrow, tr)
                }
                Ok(RoeRequest::MprotectChunk { start, len }) => {
                    self.roe_chunk(start, len, hc.narrow, tr)
                }
            }
        };
        match r {
            Ok((v, rederive)) => self.done(v, rederive),
            Err(e) => {
                self.counters.hypercall_errors += 1;
                self.done(e.to_reg(hc.narrow), None)
            }
        }
    }

    /// Largest virtual address + 1 for the caller's mode.
    fn va_limit(narrow: bool) -> u128 {
        if narrow {
            1 << 32
        } else {
            1 << 64
        }
    }

    fn roe_mprotect(
        &mut self,
        start: u64,
        pages: u64,
        narrow: bool,
        tr: &mut dyn GuestTranslate,
    ) -> Result<(u64, Option<GpaRange>), Errno> {
        if pages == 0 || !start.is_multiple_of(PAGE_SIZE) || pages > self.ram_pages {
            return Err(Errno::Inval);
        }
        let len = u128::from(pages) * u128::from(PAGE_SIZE);
        if u128::from(start) + len > Self::va_limit(narrow) {
            return Err(Errno::Inval);
        }
        // Physically contiguous pages collapse into one run as they translate, so memory grows
        // with the number of discontiguous pieces, not with the page count (1 GiB in one call
        // must fit Bulwark's heap).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or(Errno::Inval)?;
        if let Some(r) = tr.translate_range(GuestVirtAddr::new(start), bytes) {
            // One walk per guest leaf; RAM checked once per piece.
            let pieces = r.map_err(|e| match e {
                WalkError::OutOfMemory => Errno::NoMem,
                _ => Errno::Inval,
            })?;
            runs.try_reserve(pieces.len()).map_err(|_| Errno::NoMem)?;
            for p in &pieces {
                let (s, e) = (p.gpa.start(), p.gpa.end());
                if !s.is_aligned(PAGE_SIZE)
                    || !e.is_aligned(PAGE_SIZE)
                    || !self.range_is_ram(s, p.gpa.len())
                {
                    return Err(Errno::Inval);
                }
                let (f, g) = (s.frame(), e.as_u64() / PAGE_SIZE);
                match runs.last_mut() {
                    Some(last) if last.1 == f => last.1 = g,
                    _ => runs.push((f, g)),
                }
            }
            let changed = self.store.roe_lock_runs(&runs).map_err(store_errno)?;
            self.counters.roe_pages_requested =
                self.counters.roe_pages_requested.saturating_add(pages);
            return Ok((pages, changed));
        }
        for i in 0..pages {
            let gva = GuestVirtAddr::new(start.wrapping_add(i * PAGE_SIZE));
            let gpa = tr
                .translate_checked(&self.store, gva)
                .map_err(|()| Errno::Inval)?;
            if !self.is_ram(gpa) {
                return Err(Errno::Inval);
            }
            let f = gpa.frame();
            match runs.last_mut() {
                Some(last) if last.1 == f => last.1 = f + 1,
                _ => {
                    runs.try_reserve(1).map_err(|_| Errno::NoMem)?;
                    runs.push((f, f + 1));
                }
            }
        }
        let changed = self.store.roe_lock_runs(&runs).map_err(store_errno)?;
        self.counters.roe_pages_requested = self.counters.roe_pages_requested.saturating_add(pages);
        Ok((pages, changed))
    }

    fn roe_chunk(
        &mut self,
        start: u64,
        len: u64,
        narrow: bool,
        tr: &mut dyn GuestTranslate,
    ) -> Result<(u64, Option<GpaRange>), Errno> {
        if len == 0 || len > self.ram_pages.saturating_mul(PAGE_SIZE) {
            return Err(Errno::Inval);
        }
        if u128::from(start) + u128::from(len) > Self::va_limit(narrow) {
            return Err(Errno::Inval);
        }
        let mut pieces: Vec<(GuestPhysAddr, u64)> = Vec::new();
        let mut pos = start;
        let mut left = len;
        while left > 0 {
            let in_page = (PAGE_SIZE - pos % PAGE_SIZE).min(left);
            let gpa = tr
                .translate_checked(&self.store, GuestVirtAddr::new(pos))
                .map_err(|()| Errno::Inval)?;
            // The translation must keep the page offset (4 KiB granularity).
            if gpa.page_offset() != pos % PAGE_SIZE || !self.is_ram(gpa) {
                return Err(Errno::Inval);
            }
            pieces.try_reserve(1).map_err(|_| Errno::NoMem)?;
            pieces.push((gpa, in_page));
            left -= in_page;
            pos = pos.wrapping_add(in_page);
        }
        let changed = self.store.chunk_protect(&pieces).map_err(store_errno)?;
        self.counters.chunk_bytes_requested =
            self.counters.chunk_bytes_requested.saturating_add(len);
        Ok((len, changed))
    }

    // ----- faults -------------------------------------------------------------------------

    /// Decide what a refused guest-physical access was and what the guest sees.
    pub fn handle_fault(&mut self, vcpu: u32, f: &MemFault) -> FaultDecision {
        let d = self.classify_fault(vcpu, f);
        if d.kind != FaultKind::Spurious {
            self.spurious_streak.3 = 0;
        }
        d
    }

    fn classify_fault(&mut self, vcpu: u32, f: &MemFault) -> FaultDecision {
        let page = GpaRange::new(f.gpa.page_base(), PAGE_SIZE);
        let Some(region) = self.region_of(f.gpa).copied() else {
            log::error!(
                "guest access outside guest memory: access={} gpa={:#x} ip={:#x} vcpu={}",
                f.access.as_str(),
                f.gpa.as_u64(),
                f.ip.as_u64(),
                vcpu
            );
            return FaultDecision {
                kind: FaultKind::NotGuestMemory,
                action: Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::GUEST_CRASH,
                }),
                rederive: None,
            };
        };
        if region.kind == RegionKind::Device {
            if self.guard.enrolled && !self.guard.is_mapped(f.gpa.frame()) {
                return self.violation(vcpu, f, ViolationKind::MmioGuard, None);
            }
            // Device leaves are never executable: an instruction fetch from a device region
            // faults again on every retry, so it is the guest's error (`attr`: injected, or
            // halt), not a stale-TLB spurious fault.
            if f.access == Access::Exec {
                return self.violation(vcpu, f, ViolationKind::Attr, None);
            }
            return self.spurious(vcpu, f, page);
        }
        if region.kind == RegionKind::Firmware {
            return self.spurious(vcpu, f, page);
        }
        if region.kind == RegionKind::DeviceWriteTrapped {
            // The arch code emulates writes before the core sees them; one that reaches the
            // core (or an instruction fetch) is refused.
            if f.access == Access::Read {
                return self.spurious(vcpu, f, page);
            }
            return self.violation(vcpu, f, ViolationKind::Attr, None);
        }
        let st = self.store.state(f.gpa.frame());
        let perms = Self::ram_perms(&st);
        match f.access {
            Access::Read | Access::Exec => {
                let need = if f.access == Access::Read {
                    Perms::R
                } else {
                    Perms::X
                };
                if perms.contains(need) {
                    self.spurious(vcpu, f, page)
                } else {
                    self.violation(vcpu, f, ViolationKind::Attr, None)
                }
            }
            Access::Write => {
                if st.roe {
                    return self.violation(vcpu, f, ViolationKind::Roe, None);
                }
                if !st.allowed.write() {
                    return self.violation(vcpu, f, ViolationKind::Attr, None);
                }
                if !st.chunk {
                    return self.spurious(vcpu, f, page);
                }
                if f.size.is_none() && self.shadow_step {
                    if self.store.byte_locked(f.gpa) {
                        return self.violation(vcpu, f, ViolationKind::RoeChunk, None);
                    }
                    return FaultDecision {
                        kind: FaultKind::ShadowStep,
                        action: Action::Retry,
                        rederive: None,
                    };
                }
                let Some(size) = f.size.filter(|s| (1..=64).contains(s)) else {
                    log::error!(
                        "write to chunk page gpa={:#x} ip={:#x} without a usable access size",
                        f.gpa.as_u64(),
                        f.ip.as_u64()
                    );
                    return FaultDecision {
                        kind: FaultKind::NeedsAccessSize,
                        action: Action::Stop(StopReason {
                            status: STATUS_BULWARK_FAILURE,
                            reason: reason::UNHANDLED_EXIT,
                        }),
                        rederive: None,
                    };
                };
                let protected = self.protected_mask(f.gpa, size);
                let crosses_page = f.gpa.page_offset() + u64::from(size) > PAGE_SIZE;
                let emu = StoreEmulation {
                    gpa: f.gpa,
                    size,
                    protected,
                    crosses_page,
                };
                if protected == 0 {
                    self.counters.emulated_stores += 1;
                    FaultDecision {
                        kind: FaultKind::ChunkPassThrough,
                        action: Action::EmulateStore(emu),
                        rederive: None,
                    }
                } else {
                    self.violation(vcpu, f, ViolationKind::RoeChunk, Some(emu))
                }
            }
        }
    }

    /// The end of a shadow step that began with [`FaultKind::ShadowStep`] (`f`: that fault).
    /// `changed`: the first protected byte the instruction changed in its shadow copies, if
    /// any. None: the write touched unprotected bytes only (counted as an emulated store; the
    /// back end copies them and lets the instruction stand: `Advance`). Some: a `roe-chunk`
    /// (or `roe`) violation at that byte, logged, with the policy's action (`Advance` under
    /// skip: keep the unprotected bytes and the instruction's register effects).
    pub fn shadow_step_done(
        &mut self,
        vcpu: u32,
        f: &MemFault,
        changed: Option<GuestPhysAddr>,
    ) -> FaultDecision {
        self.spurious_streak.3 = 0;
        let Some(gpa) = changed else {
            self.counters.emulated_stores += 1;
            return FaultDecision {
                kind: FaultKind::ChunkPassThrough,
                action: Action::Advance,
                rederive: None,
            };
        };
        // The reported guest-virtual address follows the byte when it is on the same page. A
        // fault whose gva does not address its gpa (page offsets differ: the CPU's access to a
        // paging structure, x86 A/D updates) keeps the gva the hardware gave: the linear
        // address whose translation wrote the byte.
        let gva = f.gva.and_then(|v| {
            if v.as_u64() & (PAGE_SIZE - 1) != f.gpa.page_offset() {
                return Some(v);
            }
            let same = gpa.page_base() == f.gpa.page_base();
            same.then(|| GuestVirtAddr::new((v.as_u64() & !(PAGE_SIZE - 1)) | gpa.page_offset()))
        });
        // The changed byte's own kind: a ROE page, a page whose host attribute lacks W (a
        // paging-structure update stepped through the software path), else a chunk byte.
        let st = self.store.state(gpa.frame());
        let kind = if st.roe {
            ViolationKind::Roe
        } else if !st.allowed.write() {
            ViolationKind::Attr
        } else {
            ViolationKind::RoeChunk
        };
        let at = MemFault { gpa, gva, ..*f };
        self.violation(vcpu, &at, kind, None)
    }

    /// A write by the CPU's own event delivery (x86: IDT-vectoring information valid at the
    /// fault, i.e. an exception or interrupt frame pushed onto this page) to RAM whose store
    /// state refuses writes (a ROE page, a chunk page, a host attribute without W). The back
    /// end can neither single-step such a write (delivery clears RFLAGS.TF, so the handler
    /// would run untraced against a writable shadow) nor skip it (there is no instruction to
    /// skip for an interrupt): a violation of the page's kind is logged at the faulting byte
    /// (protected or not) with `inject` under `skip` and `inject`, `halt` under `halt`.
    /// `None`: the page accepts writes (or is not RAM); handle the fault as usual.
    pub fn delivery_write_violation(&mut self, vcpu: u32, f: &MemFault) -> Option<FaultDecision> {
        if !self.is_ram(f.gpa) {
            return None;
        }
        let st = self.store.state(f.gpa.frame());
        let kind = if st.roe {
            ViolationKind::Roe
        } else if !st.allowed.write() {
            ViolationKind::Attr
        } else if st.chunk {
            ViolationKind::RoeChunk
        } else {
            return None;
        };
        self.spurious_streak.3 = 0;
        let at = MemFault {
            access: Access::Write,
            ..*f
        };
        Some(self.violation_as(vcpu, &at, kind, None, false))
    }

    fn spurious(&mut self, vcpu: u32, f: &MemFault, page: Option<GpaRange>) -> FaultDecision {
        self.counters.spurious_faults += 1;
        let key = (vcpu, f.gpa.frame(), f.ip.as_u64());
        let (v, p, ip, n) = self.spurious_streak;
        let n = if (v, p, ip) == key {
            n.saturating_add(1)
        } else {
            1
        };
        self.spurious_streak = (key.0, key.1, key.2, n);
        if n > SPURIOUS_LIMIT {
            // The tables keep refusing an access the store allows: never loop silently.
            log::error!(
                "fault repeats although the protection state allows it: access={} gpa={:#x} ip={:#x} vcpu={} count={}",
                f.access.as_str(),
                f.gpa.as_u64(),
                f.ip.as_u64(),
                vcpu,
                n
            );
            return FaultDecision {
                kind: FaultKind::Spurious,
                action: Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                }),
                rederive: None,
            };
        }
        FaultDecision {
            kind: FaultKind::Spurious,
            action: Action::Retry,
            rederive: page,
        }
    }

    fn violation(
        &mut self,
        vcpu: u32,
        f: &MemFault,
        kind: ViolationKind,
        emu: Option<StoreEmulation>,
    ) -> FaultDecision {
        // `skip` is defined for writes to ROE-protected memory; reads, executes and MMIO-guard
        // accesses cannot be skipped meaningfully and are injected (or halt under `halt`).
        let skippable = f.access == Access::Write && kind != ViolationKind::MmioGuard;
        self.violation_as(vcpu, f, kind, emu, skippable)
    }

    /// [`Guest::violation`] with the caller deciding whether `skip` applies (`skippable`
    /// false: `inject` under `skip`).
    fn violation_as(
        &mut self,
        vcpu: u32,
        f: &MemFault,
        kind: ViolationKind,
        emu: Option<StoreEmulation>,
        skippable: bool,
    ) -> FaultDecision {
        let (word, action) = match self.policy {
            ViolationPolicy::Halt => (
                ActionWord::Halt,
                Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::VIOLATION_HALT,
                }),
            ),
            ViolationPolicy::Skip if skippable => (
                ActionWord::Skip,
                match emu {
                    Some(e) if e.protected != low_mask(e.size) || e.crosses_page => {
                        self.counters.emulated_stores += 1;
                        Action::EmulateStore(e)
                    }
                    _ => Action::Advance,
                },
            ),
            ViolationPolicy::Skip | ViolationPolicy::Inject => {
                (ActionWord::Inject, Action::InjectFault)
            }
        };
        if let Some(c) = self.counters.violations.get_mut(kind_index(kind)) {
            *c = c.saturating_add(1);
        }
        self.log.record(Violation {
            kind,
            access: f.access,
            gpa: f.gpa,
            gva: f.gva,
            ip: f.ip,
            vcpu,
            action: word,
        });
        FaultDecision {
            kind: FaultKind::Violation(kind),
            action,
            rederive: None,
        }
    }
}

fn low_mask(size: u8) -> u64 {
    if size >= 64 {
        u64::MAX
    } else {
        (1u64 << size) - 1
    }
}

fn store_errno(e: StoreError) -> Errno {
    match e {
        StoreError::NoMem => Errno::NoMem,
        _ => Errno::Inval,
    }
}

/// The derivation of a guest's tables from its store.
struct Derived<'a> {
    guest: &'a Guest,
    spp: bool,
}

impl Layout for Derived<'_> {
    fn lookup(&self, gpa: GuestPhysAddr) -> Run {
        self.guest.lookup(gpa, self.spp)
    }
}

/// The DMA view of a guest's store ([`Guest::sync_dma`]).
struct DmaView<'a> {
    guest: &'a Guest,
}

impl Layout for DmaView<'_> {
    fn lookup(&self, gpa: GuestPhysAddr) -> Run {
        let mut run = self.guest.lookup(gpa, false);
        run.target = run.target.and_then(|m| {
            let perms = m.attrs.perms.intersect(Perms::RW);
            (m.attrs.mem == crate::pt::MemType::WriteBack && perms.read()).then_some(Mapping {
                hpa: m.hpa,
                attrs: LeafAttrs::ram(perms),
            })
        });
        run
    }
}

/// The derivation with one page pointed elsewhere (a shadow step's copy).
struct Shadowed<'a> {
    inner: Derived<'a>,
    page: GuestPhysAddr,
    target: Mapping,
}

impl Layout for Shadowed<'_> {
    fn lookup(&self, gpa: GuestPhysAddr) -> Run {
        let (a, p) = (gpa.as_u64(), self.page.as_u64());
        if a == p {
            return Run {
                target: Some(self.target),
                len: PAGE_SIZE,
            };
        }
        let mut r = self.inner.lookup(gpa);
        if a < p {
            r.len = r.len.min(p - a);
        }
        r
    }
}

#[cfg(test)]
mod tests;
