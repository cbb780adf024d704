//! The guest on arm64: memory plan, loading the payload, the guest device tree, stage 2, and the
//! run loop (decode -> handle -> apply). Decisions are in docs/aarch64.md.

extern crate alloc;

use bulwark_aarch64::el2::{self, SPSR_EL1H_MASKED};
use bulwark_aarch64::esr::{ec, ec_name, fsc_level, fsc_name, Esr};
use bulwark_aarch64::image::{self, Move};
use bulwark_aarch64::mem::{region, FramePool, Region};
use bulwark_aarch64::read_sysreg;
use bulwark_aarch64::smccc::{self, CallerInfo, Outcome, Services};
use bulwark_aarch64::vcpu::{self, exit_kind, VcpuRegs};
use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_abi::roe::ROE_VERSION;
use bulwark_abi::smccc::{self as ids, BULWARK_GUEST_EXIT};
use bulwark_boot::cmdline::{self, LogLevel};
use bulwark_boot::fdt::BootDescription;
use bulwark_boot::fdt_guest::{self, GuestDtPlan, Verdict};
use bulwark_core::addr::{GpaRange, GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use bulwark_core::exit::{Access, Action, Exit, Hypercall, MemFault, StopReason};
use bulwark_core::guest::{
    Arch, Counters, FaultKind, Guest, GuestConfig, HypercallOutcome, MemRegion, RegionKind,
};
use bulwark_core::gwalk::arm64::{Arm64TranslationRegs, Arm64Walker};
use bulwark_core::gwalk::{GuestMemRead, NotGuestRam, WalkTranslate};
use bulwark_core::physmem::PhysMem;
use bulwark_core::pt::stage2::{Stage2, Stage2Config};
use bulwark_core::pt::TlbFlush;
use bulwark_core::violation::ViolationPolicy;

/// Memory Bulwark keeps for itself at the bottom of the RAM range it was loaded into: the image
/// (code, data, BSS, stack, heap, page-table pool, device-tree buffers; see linker/aarch64.ld)
/// with room to spare. It has no IPA at all: guest RAM is the rest of that range, shifted down.
pub const BULWARK_RESERVED: u64 = 32 << 20;
/// Smallest guest RAM worth starting.
const MIN_GUEST_RAM: u64 = 16 << 20;
/// VMID of the one guest.
const VMID: u8 = 1;
/// Status of a run that ended at a PSCI SYSTEM_RESET Bulwark did not turn into a reboot (past
/// `maxresets=`, or no pristine copy of the payload: see [`Reboot`]).
pub const STATUS_GUEST_RESET: u32 = 0xB2;
/// Status of a run ended because the guest crashed (abort loop, unexpected exception).
pub const STATUS_GUEST_CRASH: u32 = 0xB3;
/// Consecutive aborts injected without any other exit in between before the guest is declared
/// stuck in an exception loop.
const MAX_CONSECUTIVE_INJECTIONS: u32 = 32;

fn refuse(args: core::fmt::Arguments<'_>) -> ! {
    log::error!("{args}");
    crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED)
}

mod gicr;
mod smmu;
mod swstore;

/// Exits and software-path work of a run, printed in the end-of-run counters line.
#[derive(Clone, Copy, Debug, Default)]
struct ExitStats {
    exits: u64,
    hvc: u64,
    smc: u64,
    dabt: u64,
    iabt: u64,
    wfi: u64,
    exit_step: u64,
    other: u64,
    /// HVC/SMC traps from EL0 (architecturally impossible; refused with -1000).
    el0_calls: u64,
    /// Software steps started (stores without a usable syndrome to chunk pages).
    sw_steps: u64,
    /// Stores completed through the software path (steps merged, exclusives emulated).
    sw_writes: u64,
    /// Store-exclusives completed by Bulwark.
    sw_exclusive: u64,
    /// ROE calls whose address did not translate through the guest's stage 1 (-EINVAL); only
    /// the first [`WALK_WARN_LINES`] print a line, so the guest cannot flood the console.
    roe_walk_errors: u64,
    /// Stage-2 aborts outside the map (an external abort injected each time); only the first
    /// [`WALK_WARN_LINES`] print a line.
    stage2_aborts: u64,
}

/// Lines printed per run for each kind of guest-triggered warning (ROE addresses that do not
/// translate, stage-2 aborts outside the map); later ones are only counted
/// (`roe_walk_errors=`, `stage2_aborts=` in the counters line), so a guest cannot flood the
/// console with them.
const WALK_WARN_LINES: u64 = 8;

/// Linear map of guest RAM: IPA `[ipa_base, ipa_base + size)` is host `[host_base, ...)`.
#[derive(Clone, Copy, Debug)]
struct GuestRam {
    ipa_base: u64,
    host_base: u64,
    size: u64,
}

impl GuestRam {
    fn host(&self, ipa: u64) -> u64 {
        ipa - self.ipa_base + self.host_base
    }
}

/// Guest RAM as the core's page-table walkers read it (through the linear offset), with the
/// guest's own read permission: Bulwark reads guest memory on the guest's behalf (the ROE
/// address walk, the instruction at the PC) only where the guest itself may read. A page whose
/// boot-time `attr=` has no R is refused like memory that does not exist, so a guest cannot
/// use Bulwark's walker to learn the contents of a page it may not read (issue 12, breach 3).
/// Devices hidden by the device policy are not guest RAM and are refused anyway.
struct GuestMem<'a> {
    ram: GuestRam,
    /// Guest frames `[start, end)` the guest may not read ([`unreadable_frames`]).
    no_read: &'a [(u64, u64)],
    /// The first refused read of an unreadable page (for the log line).
    refused: core::cell::Cell<Option<GuestPhysAddr>>,
}

impl<'a> GuestMem<'a> {
    fn new(ram: GuestRam, no_read: &'a [(u64, u64)]) -> Self {
        Self {
            ram,
            no_read,
            refused: core::cell::Cell::new(None),
        }
    }

    fn host(&self, gpa: GuestPhysAddr, size: u64) -> Result<u64, NotGuestRam> {
        let a = gpa.as_u64();
        let g = &self.ram;
        let end = a.checked_add(size).ok_or(NotGuestRam)?;
        if a < g.ipa_base || end > g.ipa_base + g.size || !a.is_multiple_of(size) {
            return Err(NotGuestRam);
        }
        let frame = gpa.frame();
        if self.no_read.iter().any(|&(s, e)| frame >= s && frame < e) {
            if self.refused.get().is_none() {
                self.refused.set(Some(gpa));
            }
            return Err(NotGuestRam);
        }
        Ok(g.host(a))
    }
}

/// The guest frames whose host attributes (boot-time `attr=`) withhold read permission, from
/// the core's store. Readability is fixed for a boot: only `attr=` (applied when the core guest
/// is created) removes R; ROE and chunk locks only remove W.
fn unreadable_frames(core: &Guest) -> alloc::vec::Vec<(u64, u64)> {
    core.store()
        .runs()
        .filter(|(_, _, st)| !st.allowed.read())
        .map(|(s, e, _)| (s, e))
        .collect()
}

impl GuestMemRead for GuestMem<'_> {
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, NotGuestRam> {
        let h = self.host(gpa, 8)?;
        // SAFETY: `h` is an aligned address inside guest RAM's host range (checked above),
        // identity-mapped at EL2; a racy value is fine for a page-table walk.
        Ok(unsafe { core::ptr::read_volatile(h as *const u64) })
    }
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, NotGuestRam> {
        let h = self.host(gpa, 4)?;
        // SAFETY: as in `read_u64`.
        Ok(unsafe { core::ptr::read_volatile(h as *const u32) })
    }
    /// Guest RAM membership only (a ROE range may name a page the guest may not read: locking
    /// it reads nothing from it).
    fn contains_ram(&self, range: GpaRange) -> bool {
        let g = &self.ram;
        range.start().as_u64() >= g.ipa_base
            && range.end().as_u64() <= g.ipa_base.saturating_add(g.size)
    }
}

/// The translator of the exit fast path: its calls translate nothing (never asked).
struct NoTranslation;

impl bulwark_core::guest::GuestTranslate for NoTranslation {
    fn translate(&mut self, _gva: GuestVirtAddr) -> Result<GuestPhysAddr, ()> {
        Err(())
    }
}

/// The stage-2 TLB maintenance used by every stage-2 edit.
struct Stage2Tlb;

impl TlbFlush for Stage2Tlb {
    fn flush(&mut self, range: GpaRange) {
        let len = range.end().as_u64() - range.start().as_u64();
        el2::flush_stage2(range.start(), len);
    }
    fn flush_block(&mut self, range: GpaRange) {
        el2::flush_stage2_leaf(range.start());
    }
}

/// Plan memory, load the guest, build stage 2 and run. Never returns.
pub fn boot_and_run(dt: &'static [u8], desc: &BootDescription<'_>) -> ! {
    // Bulwark's own command line and the guest's (after ` -- `).
    let (own, guest_cmdline) = cmdline::split_guest(desc.bootargs.unwrap_or(""));
    let cfg = match cmdline::parse(own) {
        Ok(c) => c,
        Err(e) => refuse(format_args!("{e}")),
    };
    log::set_max_level(match cfg.log_level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    });
    let guest_cmdline = guest_cmdline.unwrap_or("");

    // Memory plan.
    let (img_start, img_end) = region(Region::Image);
    let Some(ram) = desc.ram.iter().find(|r| r.contains(img_start as u64)) else {
        refuse(format_args!(
            "Bulwark at {img_start:#x} is not inside any /memory range of the device tree"
        ))
    };
    let ram_base = ram.base.as_u64();
    let bulwark_end = ram_base + BULWARK_RESERVED;
    if img_end as u64 > bulwark_end || ram_base % (2 << 20) != 0 {
        refuse(format_args!(
            "Bulwark's image {img_start:#x}..{img_end:#x} does not fit the {} MiB it reserves at the 2 MiB-aligned RAM base {ram_base:#x}",
            BULWARK_RESERVED >> 20
        ));
    }
    let Some(guest_size) = ram
        .size
        .checked_sub(BULWARK_RESERVED)
        .filter(|s| *s >= MIN_GUEST_RAM)
    else {
        refuse(format_args!(
            "RAM {:#x}..{:#x} leaves less than {} MiB for the guest",
            ram_base,
            ram.end(),
            MIN_GUEST_RAM >> 20
        ))
    };
    let gram = GuestRam {
        ipa_base: ram_base,
        host_base: bulwark_end,
        size: guest_size,
    };
    for r in desc.ram.iter().filter(|r| *r != ram) {
        log::warn!(
            "memory {:#x}..{:#x} is not given to the guest (one RAM range per guest)",
            r.base,
            r.end()
        );
    }
    log::info!(
        "memory plan: Bulwark {ram_base:#x}..{bulwark_end:#x} (no IPA), guest RAM IPA {:#x}..{:#x} -> PA {:#x}..{:#x}",
        gram.ipa_base,
        gram.ipa_base + gram.size,
        gram.host_base,
        gram.host_base + gram.size
    );

    let Some(payload) = desc.initrd else {
        log::info!("no guest payload (QEMU: -initrd GUEST); stopping after the banner");
        crate::finish(0, reason::NO_GUEST)
    };
    let (pb, pe) = (payload.base.as_u64(), payload.end());
    if pb < gram.host_base || pe > gram.host_base + gram.size {
        refuse(format_args!(
            "guest payload {pb:#x}..{pe:#x} is not inside guest RAM {:#x}..{:#x} (it must not touch Bulwark's memory)",
            gram.host_base,
            gram.host_base + gram.size
        ));
    }
    let head = |off: u64, len: u64| -> &'static [u8] {
        let n = len.min(64) as usize;
        // SAFETY: `[pb + off, pb + off + n)` lies inside the payload (checked above and by
        // `split_payload`), which is guest RAM Bulwark has not handed out yet; read only.
        unsafe { core::slice::from_raw_parts((pb + off) as *const u8, n) }
    };
    let parts = match image::split_payload(head(0, payload.size), payload.size) {
        Ok(p) => p,
        Err(e) => refuse(format_args!("{e}")),
    };
    let kinfo = match image::kernel_info(head(parts.kernel.off, parts.kernel.len), parts.kernel.len)
    {
        Ok(k) => k,
        Err(e) => refuse(format_args!("{e}")),
    };
    let place = match image::place(
        gram.ipa_base,
        gram.size,
        &kinfo,
        parts.initrd.map(|i| i.len),
    ) {
        Ok(p) => p,
        Err(e) => refuse(format_args!("{e}")),
    };
    log::info!(
        "guest kernel: {} bytes, {} (text_offset {:#x}, footprint {:#x}) at IPA {:#x}",
        parts.kernel.len,
        if kinfo.is_image {
            "arm64 Image"
        } else {
            "raw binary"
        },
        kinfo.text_offset,
        kinfo.footprint,
        place.kernel
    );

    // Keep a pristine copy of the payload for reboots (PSCI SYSTEM_RESET), in the part of
    // Bulwark's reserved memory its image does not use (no IPA maps it).
    let pristine = keep_pristine(
        pb,
        payload.size,
        img_end as u64,
        bulwark_end,
        cfg.max_resets,
    );

    // Move kernel and initrd into place (memmove semantics; order computed to never overwrite a
    // source still to be copied).
    let kmove = Move {
        src: pb + parts.kernel.off,
        dst: gram.host(place.kernel),
        len: parts.kernel.len,
    };
    let imove = parts.initrd.zip(place.initrd).map(|(i, ipa)| Move {
        src: pb + i.off,
        dst: gram.host(ipa),
        len: i.len,
    });
    let moves = match image::order_moves(kmove, imove) {
        Ok(m) => m,
        Err(e) => refuse(format_args!("{e}")),
    };
    for m in moves.into_iter().flatten() {
        // SAFETY: source and destination lie inside guest RAM (checked: payload inside guest RAM;
        // destinations from `place`, inside guest RAM), which nothing else uses yet; `copy` is a
        // memmove, and `order_moves` guarantees no later source is overwritten.
        unsafe { core::ptr::copy(m.src as *const u8, m.dst as *mut u8, m.len as usize) };
    }
    // The kernel's BSS may cover where the payload used to be: zero it.
    let bss = kinfo.footprint - parts.kernel.len;
    // SAFETY: `[dst + len, dst + footprint)` is inside guest RAM below the initrd and DTB (place).
    unsafe { core::ptr::write_bytes((kmove.dst + kmove.len) as *mut u8, 0, bss as usize) };
    let initrd_ipa = parts
        .initrd
        .zip(place.initrd)
        .map(|(i, ipa)| (ipa, ipa + i.len));

    // The SMMUv3 (docs/aarch64.md, "SMMUv3"): Bulwark takes it before deciding the devices;
    // only with it may DMA masters behind it (the PCI host bridge) be handed over.
    let mut smmu = match fdt_guest::smmu_v3(dt) {
        Ok(Some((base, size, ph))) => match smmu::Smmu::probe(base, size, ph) {
            Ok(s) => {
                log::info!(
                    "SMMUv3 at {base:#x}: taken by Bulwark ({}); hidden from the guest",
                    s.stage()
                );
                Some(s)
            }
            Err(why) => {
                log::warn!(
                    "SMMUv3 at {base:#x}: not usable ({why}); it stays hidden and so do the DMA masters behind it"
                );
                None
            }
        },
        Ok(None) => {
            log::info!(
                "no SMMUv3 in the device tree: DMA-capable devices (PCI) are not handed over to the guest (nothing would confine their DMA)"
            );
            None
        }
        Err(e) => refuse(format_args!("device tree: {e}")),
    };
    let iommu = smmu.as_ref().map(|s| s.phandle);

    // The device policy (docs/aarch64.md, "Device policy"): which devices the guest gets.
    let pol = fdt_guest::Pol {
        passthrough: &cfg.passthrough,
        iommu,
    };
    let devices = match fdt_guest::device_policy(dt, pol) {
        Ok(Ok(d)) => d,
        Ok(Err((name, why))) => refuse(format_args!("{}", cfg.passthrough_refused(&name, why))),
        Err(e) => refuse(format_args!("device tree: {e}")),
    };
    log_device_policy(&devices, iommu.is_some());

    // The guest's device tree.
    let mpidr = read_sysreg!("mpidr_el1") & 0xff_00ff_ffff;
    let plan = GuestDtPlan {
        ram: (gram.ipa_base, gram.size),
        ram_host_base: gram.host_base,
        bulwark: (ram_base, BULWARK_RESERVED),
        bootargs: guest_cmdline,
        initrd: initrd_ipa,
        boot_cpu: mpidr,
        psci_method: "hvc",
        passthrough: &cfg.passthrough,
        iommu,
    };
    let (os, oe) = region(Region::DtOut);
    let scratch_len = 256 << 10;
    // SAFETY: the DtOut buffer is reserved by the linker script for this use alone; split into
    // two disjoint slices (output, name scratch).
    let (out, scratch) = unsafe {
        (
            core::slice::from_raw_parts_mut(os as *mut u8, oe - os - scratch_len),
            core::slice::from_raw_parts_mut((oe - scratch_len) as *mut u8, scratch_len),
        )
    };
    let dtb_len = match fdt_guest::derive(dt, &plan, out, scratch) {
        Ok(n) if n as u64 <= image::DTB_MAX => n,
        Ok(n) => refuse(format_args!("guest device tree too large ({n} bytes)")),
        Err(e) => refuse(format_args!("building the guest device tree: {e}")),
    };
    let dtb_host = gram.host(place.dtb);
    // SAFETY: destination: 2 MiB reserved for the DTB at the top of guest RAM (place); source:
    // the DtOut buffer in Bulwark's memory; disjoint.
    unsafe { core::ptr::copy_nonoverlapping(os as *const u8, dtb_host as *mut u8, dtb_len) };
    el2::clean_to_poc(kmove.dst as usize, kinfo.footprint as usize);
    if let (Some(m), Some(_)) = (imove, place.initrd) {
        el2::clean_to_poc(m.dst as usize, m.len as usize);
    }
    el2::clean_to_poc(dtb_host as usize, dtb_len);
    log::info!(
        "guest device tree: {dtb_len} bytes at IPA {:#x}; guest command line {:?}",
        place.dtb,
        guest_cmdline
    );
    if let Some((s, e)) = initrd_ipa {
        log::info!("guest initrd: IPA {s:#x}..{e:#x}");
    }

    // The guest-physical map: RAM (linear offset) and pass-through devices, minus the devices
    // that are hidden from the guest (DMA masters). The core's per-guest state derives stage 2
    // from it and from the attribute store (boot-time `attr=`, ROE, MMIO guard).
    let parange = (read_sysreg!("id_aa64mmfr0_el1") & 0xf) as u8;
    let s2cfg = match Stage2Config::from_parange(parange) {
        Ok(c) => c,
        Err(e) => refuse(format_args!("stage 2: {e:?}")),
    };
    // GICv3 redistributors' RD_base control pages: emulated, not mapped (gicr.rs: LPIs off).
    let gicr = match fdt_guest::gicv3_redistributor_ranges(dt) {
        Ok(r) => gicr::RdPages::discover(r.iter().map(|r| (r.base.as_u64(), r.size))),
        Err(e) => refuse(format_args!("device tree: {e}")),
    };
    if let (Some(first), n) = (gicr.pages().first(), gicr.pages().len()) {
        log::info!(
            "GICv3: {n} redistributor control page(s) from {first:#x} emulated (LPIs hidden: GICR_TYPER.PLPIS reads 0, EnableLPIs/PROPBASER/PENDBASER writes ignored)"
        );
    }
    // Devices: identity-mapped pass-through pages of the devices the policy passes, minus every
    // page of a hidden device, the emulated redistributor control pages and all RAM.
    let mut exclude: alloc::vec::Vec<(u64, u64)> =
        gicr.pages().iter().map(|&p| (p, p + 4096)).collect();
    exclude.extend(desc.ram.iter().map(|r| (r.base.as_u64(), r.end())));
    let mut regions = alloc::vec![MemRegion {
        gpa: GuestPhysAddr::new(gram.ipa_base),
        len: gram.size,
        hpa: HostPhysAddr::new(gram.host_base),
        kind: RegionKind::Ram,
    }];
    let ipa_limit = 1u64 << s2cfg.ipa_bits;
    for (s, e) in fdt_guest::stage2_device_ranges(&devices, &exclude) {
        if e > ipa_limit {
            log::warn!(
                "stage 2: device pages {s:#x}..{e:#x} lie above the {}-bit IPA space: not given to the guest",
                s2cfg.ipa_bits
            );
            continue;
        }
        regions.push(MemRegion {
            gpa: GuestPhysAddr::new(s),
            len: e - s,
            hpa: HostPhysAddr::new(s),
            kind: RegionKind::Device,
        });
    }
    let hidden: alloc::vec::Vec<HiddenDevice> = devices
        .iter()
        .filter_map(|d| match d.verdict {
            Verdict::Hide(why) => Some((d, why)),
            _ => None,
        })
        .flat_map(|(d, why)| {
            d.ranges.iter().map(move |r| HiddenDevice {
                start: r.base.as_u64() & !0xfff,
                end: r.end().saturating_add(0xfff) & !0xfff,
                name: d.path.clone(),
                why,
            })
        })
        .collect();
    for r in &regions {
        log::info!(
            "stage 2: {:?} IPA {:#x}..{:#x} -> PA {:#x}",
            r.kind,
            r.gpa,
            r.gpa.as_u64() + r.len,
            r.hpa
        );
    }
    let gcfg = GuestConfig {
        arch: Arch::Aarch64,
        regions,
        policy: match cfg.violation {
            cmdline::ViolationPolicy::Skip => ViolationPolicy::Skip,
            cmdline::ViolationPolicy::Inject => ViolationPolicy::Inject,
            cmdline::ViolationPolicy::Halt => ViolationPolicy::Halt,
        },
        ratelimit: cfg.ratelimit,
        exec_only: false,
        spp: false,
        limits: Default::default(),
    };
    let core_guest = match new_core(&gcfg, &cfg, gicr.pages()) {
        Ok(g) => g,
        Err(e) => refuse(format_args!("{e}")),
    };
    for a in &cfg.attrs {
        log::info!("attr: {:#x}..{:#x} {:?}", a.start, a.end(), a.perms);
    }
    let mut pool = FramePool::new();
    let mut tlb = Stage2Tlb;
    let mut s2 = match Stage2::new_stage2(&mut pool, s2cfg) {
        Ok(t) => t,
        Err(e) => refuse(format_args!("stage 2: {e:?}")),
    };
    let Some(full) = core_guest.full_range() else {
        refuse(format_args!("stage 2: empty guest memory map"))
    };
    if let Err(e) = core_guest.sync_stage2(&mut pool, &mut s2, full, &mut tlb) {
        refuse(format_args!("stage 2: deriving the tables: {e:?} (arm64 stage 2 cannot express write-only or execute-only pages)"));
    }
    log::info!(
        "stage 2: {}-bit IPA, root level {}, {} table pages, VMID {VMID}, VTCR_EL2 {:#x}",
        s2cfg.ipa_bits,
        s2cfg.root_level,
        pool.in_use,
        s2cfg.vtcr()
    );
    el2::prepare(s2cfg.vtcr(), s2.vttbr(VMID));
    if let Some(s) = smmu.as_mut() {
        let before = pool.in_use;
        if let Err(e) = s.enable(&core_guest, &mut pool, s2cfg) {
            refuse(format_args!(
                "SMMUv3: {e}; the PCI devices were to be handed over behind it, so Bulwark stops"
            ));
        }
        log::info!(
            "SMMUv3: enabled, StreamIDs 0..{} translated ({}), device table derived from the store: {} table pages; guest RAM only, locked pages read-only for devices, Bulwark's memory absent",
            smmu::STREAMS,
            s.stage(),
            pool.in_use - before
        );
    }

    // Two scratch frames for the software path (swstore.rs): a store touches at most two pages.
    let mut scratch = [0u64; swstore::STEP_PAGES];
    for s in scratch.iter_mut() {
        match pool.alloc_frame() {
            Ok(f) => *s = f.as_u64(),
            Err(_) => refuse(format_args!(
                "no frame left for the software-store scratch pages"
            )),
        }
    }
    // What a reboot reloads: the payload's parts from the pristine copy, the kernel's BSS, the
    // guest device tree from the DtOut buffer (kept as built), at the same IPAs.
    let reload = pristine.map(|copy| Reload {
        kernel: Move {
            src: copy + parts.kernel.off,
            dst: kmove.dst,
            len: kmove.len,
        },
        initrd: imove.map(|m| Move {
            src: copy + (m.src - pb),
            dst: m.dst,
            len: m.len,
        }),
        bss: (kmove.dst + kmove.len, bss),
        dtb: Move {
            src: os as u64,
            dst: dtb_host,
            len: dtb_len as u64,
        },
        entry: place.kernel,
        dtb_ipa: place.dtb,
    });
    let no_read = unreadable_frames(&core_guest);
    let svc = smccc_services(cfg.hyp_abi, desc.psci_method);
    let mut vm = Vm {
        regs: VcpuRegs::default(),
        core: core_guest,
        s2,
        pool,
        gram,
        mpidr,
        injections_in_a_row: 0,
        last_vector: None,
        step: None,
        sw_restarts: (0, 0),
        scratch,
        gicr,
        hidden,
        no_read,
        smmu,
        stats: ExitStats::default(),
        reboot: Reboot {
            reload,
            gcfg,
            cfg,
            s2cfg,
            done: 0,
        },
        earlier: Counters::default(),
        svc,
    };
    vm.regs.x[0] = place.dtb;
    vm.regs.pc = place.kernel;
    vm.regs.pstate = SPSR_EL1H_MASKED;
    log::info!(
        "entering guest at EL1: pc {:#x}, x0 {:#x}",
        place.kernel,
        place.dtb
    );
    vm.run()
}

/// Copy the raw payload (`size` bytes at host `pb`, in guest RAM) to the free part of Bulwark's
/// reserved memory, `[image_end, reserved_end)` page-aligned, for reboots. `None` (with the
/// reason logged) when reboots are off (`maxresets=0`) or it does not fit: SYSTEM_RESET then
/// ends the run.
fn keep_pristine(pb: u64, size: u64, image_end: u64, reserved_end: u64, max: u32) -> Option<u64> {
    if max == 0 {
        log::info!("guest reset: maxresets=0, SYSTEM_RESET ends the run (status 178)");
        return None;
    }
    let start = image_end.checked_next_multiple_of(4096)?;
    let room = reserved_end.saturating_sub(start);
    if size > room {
        log::warn!(
            "guest reset: the payload ({} KiB) does not fit the {} KiB free in Bulwark's reserved memory for a pristine copy; SYSTEM_RESET will end the run (status 178) instead of rebooting the guest",
            size >> 10,
            room >> 10
        );
        return None;
    }
    // SAFETY: source: the payload, inside guest RAM (checked by the caller), not yet moved;
    // destination: `[start, start + size)`, inside Bulwark's reserved memory past its image
    // (`size <= room`), used by nothing else and mapped by no IPA; the two are disjoint (guest
    // RAM starts at `reserved_end`).
    unsafe { core::ptr::copy_nonoverlapping(pb as *const u8, start as *mut u8, size as usize) };
    log::info!(
        "guest reset: pristine payload copy ({} KiB) at {start:#x} in Bulwark's memory; SYSTEM_RESET reboots the guest (at most {max} times)",
        size >> 10
    );
    Some(start)
}

/// A run of SMMU faults reported as one violation line.
struct DmaFault {
    kind: &'static str,
    write: bool,
    stream: u32,
    event: &'static str,
    addr: u64,
    count: u32,
}

/// Pages of a device the policy hides (host-physical = IPA: devices are identity-mapped).
struct HiddenDevice {
    start: u64,
    end: u64,
    name: alloc::string::String,
    why: &'static str,
}

/// The boot log of the device policy: one line per device (consecutive hidden devices of one
/// kind, such as QEMU virt's 32 virtio-mmio transports, share a line), a warning for each
/// device passed through on request (`passthrough=`), and a summary.
fn log_device_policy(devices: &[fdt_guest::Device], smmu: bool) {
    use core::fmt::Write as _;
    let (mut passed, mut hidden, mut requested) = (0u32, 0u32, 0u32);
    let kind = |d: &fdt_guest::Device| d.name.split('@').next().unwrap_or("").len();
    let mut i = 0;
    while let Some(d) = devices.get(i) {
        let mut regs = alloc::string::String::new();
        for r in &d.ranges {
            let _ = write!(regs, " {:#x}..{:#x}", r.base, r.end());
        }
        i += 1;
        match d.verdict {
            Verdict::Pass(what) => {
                passed += 1;
                log::info!("device {}: passed through ({what}):{regs}", d.path);
            }
            Verdict::Hide(why) => {
                // The run of hidden devices of the same kind and reason that starts here.
                let n = kind(d);
                let same = |e: &&fdt_guest::Device| {
                    e.verdict == d.verdict && kind(e) == n && e.name.get(..n) == d.name.get(..n)
                };
                let run = devices
                    .get(i..)
                    .unwrap_or(&[])
                    .iter()
                    .take_while(same)
                    .count();
                let last = devices.get(i + run.saturating_sub(1)).filter(|_| run > 0);
                i += run;
                hidden += 1 + run as u32;
                match last {
                    None => log::info!(
                        "device {}: hidden from the guest ({why}): not in its device tree, no stage-2 mapping{}",
                        d.path,
                        if regs.is_empty() { alloc::string::String::new() } else { alloc::format!(" for{regs}") }
                    ),
                    Some(l) => {
                        let lo = d.ranges.first().map_or(0, |r| r.base.as_u64());
                        let hi = l.ranges.last().map_or(0, |r| r.end());
                        log::info!(
                            "devices {} .. {} ({} nodes): hidden from the guest ({why}): not in its device tree, no stage-2 mapping for {lo:#x}..{hi:#x}",
                            d.path,
                            l.path,
                            run + 1
                        );
                    }
                }
            }
            Verdict::PassRequested(why) => {
                requested += 1;
                log::warn!(
                    "device {}: passed through because passthrough= names it, although Bulwark would hide it ({why}):{regs}; the ROE locks, boot-time attributes and Bulwark's own memory no longer hold against this device (no IOMMU confines it, and it sees host-physical addresses, not the guest's IPAs)",
                    d.path
                );
            }
        }
    }
    log::info!(
        "device policy: {passed} device(s) passed through, {hidden} hidden ({}){}",
        if smmu {
            "DMA masters not behind the SMMUv3 Bulwark owns, and unknown devices"
        } else {
            "DMA masters and unknown devices: no IOMMU Bulwark controls confines them"
        },
        if requested > 0 {
            alloc::format!(", {requested} passed through on request (WARNING above)")
        } else {
            alloc::string::String::new()
        }
    );
}

/// What the guest's SMCCC discovery answers: the `hyp-abi=` choice and what the firmware below
/// Bulwark serves (probed once, through the host device tree's SMC conduit; docs/smccc.md).
fn smccc_services(abi: bulwark_abi::smccc::HypAbi, psci_method: Option<&str>) -> Services {
    let p = bulwark_aarch64::firmware::probe(psci_method == Some("smc"));
    let fw = p.firmware;
    let f = bulwark_abi::smccc::vendor_hyp_features(abi);
    log::info!(
        "SMCCC: v1.1 to the guest; hyp-abi={} (vendor-hyp FEATURES x0..x3 = {:#x} {:#x} {:#x} {:#x}); firmware: PSCI {}, SMCCC {}; Spectre workarounds to the guest: WA1={} WA2={} WA3={}",
        abi.as_str(),
        f[0],
        f[1],
        f[2],
        f[3],
        p.psci_version
            .map_or("not probed".into(), |v| alloc::format!("{}.{}", v >> 16, v & 0xffff)),
        p.smccc_version
            .map_or("1.0 or absent".into(), |v| alloc::format!("{}.{}", v >> 16, v & 0xffff)),
        fw.answer(bulwark_abi::smccc::Workaround::W1),
        fw.answer(bulwark_abi::smccc::Workaround::W2),
        fw.answer(bulwark_abi::smccc::Workaround::W3),
    );
    Services { abi, firmware: fw }
}

/// A fresh core guest: the memory map and the boot-time `attr=` ranges, nothing else (no ROE,
/// no MMIO guard enrolment).
/// `emulated`: the device pages Bulwark emulates (the redistributors' control pages).
fn new_core(
    gcfg: &GuestConfig,
    cfg: &cmdline::Config,
    emulated: &[u64],
) -> Result<Guest, alloc::string::String> {
    let mut g = Guest::new(gcfg.clone()).map_err(|e| alloc::format!("guest memory map: {e:?}"))?;
    g.set_hyp_abi(cfg.hyp_abi);
    let (lines, window) = cfg.global_ratelimit;
    g.violation_log().set_global(lines, window);
    g.set_emulated_mmio(emulated);
    for a in &cfg.attrs {
        g.set_host_attributes(a.start.as_u64(), a.size, u64::from(a.perms.bits()), 0)
            .map_err(|e| alloc::format!("{}", cfg.attr_refused(a, &e)))?;
    }
    Ok(g)
}

/// How a reboot puts the guest's payload back (host addresses; sources in Bulwark's memory).
#[derive(Clone, Copy, Debug)]
struct Reload {
    kernel: Move,
    initrd: Option<Move>,
    /// Kernel BSS to zero: host start, length.
    bss: (u64, u64),
    dtb: Move,
    /// Guest entry point and device-tree IPAs (PC and x0 at entry).
    entry: u64,
    dtb_ipa: u64,
}

/// Everything a reboot needs to start the guest again as at boot.
struct Reboot {
    /// `None`: no pristine copy (does not fit, or `maxresets=0`); SYSTEM_RESET ends the run.
    reload: Option<Reload>,
    gcfg: GuestConfig,
    cfg: cmdline::Config,
    s2cfg: Stage2Config,
    /// Reboots so far.
    done: u32,
}

/// One guest with one vCPU (per-vCPU state lives here, on the CPU's own stack).
struct Vm {
    regs: VcpuRegs,
    /// The core's protection state for this guest (one vCPU: owned here, no lock needed).
    core: Guest,
    s2: Stage2,
    pool: FramePool,
    gram: GuestRam,
    mpidr: u64,
    injections_in_a_row: u32,
    /// Vector address the last injected abort sent the guest to.
    last_vector: Option<u64>,
    /// A software step in progress (swstore.rs).
    step: Option<swstore::Step>,
    /// Software-path starts at one PC since the last completed step: `(pc, count)`, bounded by
    /// [`swstore::MAX_STEP_RESTARTS`].
    sw_restarts: (u64, u32),
    /// Scratch frames (host addresses) the software step redirects pages to.
    scratch: [u64; swstore::STEP_PAGES],
    /// GICv3 redistributor control pages Bulwark emulates (gicr.rs).
    gicr: gicr::RdPages,
    /// Devices hidden from the guest (named in the abort line when the guest touches one).
    hidden: alloc::vec::Vec<HiddenDevice>,
    /// Guest frames the guest may not read ([`unreadable_frames`] of `core`): Bulwark's reads
    /// on the guest's behalf refuse them too.
    no_read: alloc::vec::Vec<(u64, u64)>,
    /// The SMMUv3 Bulwark owns (smmu.rs), if any.
    smmu: Option<smmu::Smmu>,
    stats: ExitStats,
    reboot: Reboot,
    /// The core's counters of the boots before the last reboot (the core guest is new per boot).
    earlier: Counters,
    /// What SMCCC discovery answers (the same `hyp-abi=` as the core's).
    svc: Services,
}

/// A decoded exit and how many bytes `Advance` skips (SMC traps with ELR at the SMC itself;
/// HVC returns past the HVC already).
struct Decoded {
    exit: Exit,
    skip: u64,
    esr: Esr,
}

impl Vm {
    fn run(&mut self) -> ! {
        loop {
            // Held console lines go out while the PL011 takes them; a started line is finished
            // before the guest (which shares the PL011) runs.
            crate::logger::poll();
            // The PL011 is the guest's (pass-through): it may leave a line open.
            crate::logger::guest_may_write();
            let kind = vcpu::enter_guest(&mut self.regs);
            // With an SMMU every exit polls its event queue (DMA violations are reported, and
            // under `halt` stop the run, at the next exit): no fast path then.
            if self.step.is_none() && self.smmu.is_none() && self.fast_call(kind) {
                continue;
            }
            let mut d = self.decode(kind);
            self.count_exit(&d);
            let halt = self.poll_smmu();
            let action = if let Some(stop) = halt {
                stop
            } else if self.step.is_some() {
                self.step_exit(&mut d)
            } else {
                self.handle(&d)
            };
            self.apply(&d, action);
        }
    }

    /// The exit fast path (docs/bench.md): an HVC/SMC from EL1 that reads and changes nothing
    /// but its result registers — ROE_VERSION, the vendor-hyp UID and features, SMCCC_VERSION,
    /// SMCCC_ARCH_FEATURES, PSCI_VERSION, PSCI_FEATURES — is answered by the same dispatchers as
    /// on the full path (the core's `handle_hypercall`, `smccc::dispatch`), but without building
    /// a guest translator, without the `Exit`/`Decoded`/`Action` values, and with the results
    /// written straight into the registers. Everything else (and any call whose answer is not a
    /// plain return) goes the full way. Returns true when the exit was handled.
    #[inline]
    fn fast_call(&mut self, kind: u64) -> bool {
        if kind != exit_kind::SYNC {
            return false;
        }
        let esr = Esr(read_sysreg!("esr_el2"));
        let ec = esr.ec();
        // From EL0 (M[3:2] = 0) the full path refuses and logs it.
        if (ec != ec::HVC64 && ec != ec::SMC64) || self.regs.pstate & 0b1100 == 0 {
            return false;
        }
        let r = &self.regs;
        let fid = r.x[0] as u32;
        let fast = match fid {
            ids::BULWARK_ROE => r.x[1] == ROE_VERSION,
            ids::VENDOR_HYP_CALL_UID
            | ids::VENDOR_HYP_FEATURES
            | ids::SMCCC_VERSION
            | ids::SMCCC_ARCH_FEATURES
            | ids::PSCI_VERSION
            | ids::PSCI_FEATURES => true,
            _ => false,
        };
        if !fast {
            return false;
        }
        // The full path's order: the core first, then the arch's SMCCC dispatcher.
        let hc = Hypercall {
            nr: r.x[0],
            args: [r.x[1], r.x[2], r.x[3], r.x[4]],
            from_user: false,
            narrow: false,
        };
        let results = match self.core.handle_hypercall(&hc, &mut NoTranslation) {
            HypercallOutcome::Handled {
                action: Action::AdvanceWithResult(v),
                rederive: None,
            } => [v, r.x[1], r.x[2], r.x[3]],
            HypercallOutcome::Handled {
                action: Action::AdvanceWithResults(v),
                rederive: None,
            } => v,
            // Not expected for these calls; the core has already counted the call, so the full
            // path must not run it again: stop rather than guess.
            HypercallOutcome::Handled { .. } => {
                log::error!("fast path: unexpected answer to call {fid:#x}");
                crate::finish(STATUS_BULWARK_FAILURE, reason::UNHANDLED_EXIT)
            }
            HypercallOutcome::NotMine => {
                let x = [r.x[0], r.x[1], r.x[2], r.x[3], r.x[4]];
                match smccc::dispatch(x, CallerInfo { mpidr: self.mpidr }, &self.svc) {
                    Outcome::Return { x0, x1_3: None } => [x0, r.x[1], r.x[2], r.x[3]],
                    Outcome::Return { x0, x1_3: Some(v) } => [x0, v[0], v[1], v[2]],
                    // Power and exit calls are not in the fast set; should a dispatcher change
                    // answer one that way, the full path (which has not run) takes it.
                    _ => return false,
                }
            }
        };
        let st = &mut self.stats;
        st.exits += 1;
        let skip = if ec == ec::HVC64 {
            st.hvc += 1;
            0
        } else {
            st.smc += 1;
            if esr.il() {
                4
            } else {
                2
            }
        };
        self.regs.x[..4].copy_from_slice(&results);
        self.regs.pc = self.regs.pc.wrapping_add(skip);
        self.injections_in_a_row = 0;
        self.last_vector = None;
        true
    }

    /// ESR_EL2 (+ FAR/HPFAR) -> the arch-neutral exit.
    fn decode(&self, kind: u64) -> Decoded {
        let esr = Esr(read_sysreg!("esr_el2"));
        // Synchronous exceptions from an AArch32 EL0 (32-bit user processes) arrive through the
        // AArch32 vector slot with the same ESR encodings (stage-2 aborts): same path.
        if kind != exit_kind::SYNC && kind != exit_kind::AARCH32 {
            return Decoded {
                exit: Exit::Fatal {
                    reason: "unexpected asynchronous exception routed to EL2",
                    code: kind,
                },
                skip: 0,
                esr,
            };
        }
        let r = &self.regs;
        let exit = match esr.ec() {
            ec::HVC64 | ec::SMC64 => {
                let nr = r.x[0];
                if nr as u32 == BULWARK_GUEST_EXIT {
                    Exit::GuestStatus(r.x[1] as u32)
                } else {
                    Exit::Hypercall(Hypercall {
                        nr,
                        args: [r.x[1], r.x[2], r.x[3], r.x[4]],
                        // HVC/SMC are undefined at EL0, so a trapped call comes from EL1;
                        // should one ever arrive from EL0 (M[3:2] = 0), it is refused.
                        from_user: r.pstate & 0b1100 == 0,
                        narrow: false,
                    })
                }
            }
            ec::WFX => Exit::Halt,
            ec::DABT_LOWER | ec::IABT_LOWER => {
                let far = read_sysreg!("far_el2");
                let hpfar = read_sysreg!("hpfar_el2");
                let ipa = ((hpfar >> 4) & 0xff_ffff_ffff) << 12 | (far & 0xfff);
                let access = if esr.ec() == ec::IABT_LOWER {
                    Access::Exec
                } else if esr.wnr() {
                    Access::Write
                } else {
                    Access::Read
                };
                Exit::MemFault(MemFault {
                    gpa: GuestPhysAddr::new(ipa),
                    gva: (!esr.fnv()).then_some(GuestVirtAddr::new(far)),
                    ip: GuestVirtAddr::new(r.pc),
                    access,
                    size: (esr.ec() == ec::DABT_LOWER && esr.isv()).then(|| esr.access_size()),
                })
            }
            _ => Exit::Fatal {
                reason: ec_name(esr.ec()),
                code: esr.0,
            },
        };
        let skip = if esr.ec() == ec::HVC64 {
            0
        } else if esr.il() {
            4
        } else {
            2
        };
        Decoded { exit, skip, esr }
    }

    /// The exit policy for this back end (the core has no arm64 dispatcher yet): SMCCC calls go
    /// through the one dispatcher, stage-2 aborts are logged and answered with an injected
    /// external abort, WFI waits at EL2.
    fn handle(&mut self, d: &Decoded) -> Action {
        match d.exit {
            Exit::Hypercall(hc) if hc.from_user => {
                self.stats.el0_calls += 1;
                log::warn!(
                    "guest: HVC/SMC {:#x} from EL0 at pc {:#x} refused (-1000)",
                    hc.nr,
                    self.regs.pc
                );
                Action::AdvanceWithResult(bulwark_abi::errno::Errno::NoSys.to_reg(false))
            }
            Exit::Hypercall(hc) => {
                let mem = GuestMem::new(self.gram, &self.no_read);
                let walker = Arm64Walker::new(Arm64TranslationRegs {
                    sctlr_el1: read_sysreg!("sctlr_el1"),
                    tcr_el1: read_sysreg!("tcr_el1"),
                    ttbr0_el1: read_sysreg!("ttbr0_el1"),
                    ttbr1_el1: read_sysreg!("ttbr1_el1"),
                });
                let mut tr = WalkTranslate::new(walker, &mem);
                let outcome = self.core.handle_hypercall(&hc, &mut tr);
                if let Some(gpa) = mem.refused.get() {
                    log::warn!(
                        "guest: the ROE address walk needed a page-table entry at ipa={gpa:#x}, in a page the guest may not read (attr= without r): not read, the call fails (-EINVAL)"
                    );
                }
                if let Some(e) = tr.last_error {
                    self.stats.roe_walk_errors += 1;
                    let n = self.stats.roe_walk_errors;
                    if n <= WALK_WARN_LINES {
                        log::warn!(
                            "guest: a ROE address did not translate through the guest's stage-1 tables: {e:?}{}{}",
                            if matches!(e, bulwark_core::gwalk::WalkError::UnsupportedGranule { .. }) {
                                " (Bulwark walks 4 KiB-granule tables only; 16 and 64 KiB granules get -EINVAL)"
                            } else {
                                ""
                            },
                            if n == WALK_WARN_LINES {
                                "; further ones are counted, not printed (roe_walk_errors= in the counters line)"
                            } else {
                                ""
                            }
                        );
                    }
                }
                if let HypercallOutcome::Handled { action, rederive } = outcome {
                    return match rederive {
                        Some(r) => self.rederive(r).unwrap_or(action),
                        None => action,
                    };
                }
                let x = [hc.nr, hc.args[0], hc.args[1], hc.args[2], hc.args[3]];
                match smccc::dispatch(x, CallerInfo { mpidr: self.mpidr }, &self.svc) {
                    Outcome::Return { x0, x1_3: None } => Action::AdvanceWithResult(x0),
                    Outcome::Return { x0, x1_3: Some(r) } => {
                        Action::AdvanceWithResults([x0, r[0], r[1], r[2]])
                    }
                    Outcome::SystemOff => {
                        log::info!("guest: PSCI SYSTEM_OFF");
                        Action::Stop(StopReason {
                            status: 0,
                            reason: reason::GUEST_EXIT,
                        })
                    }
                    Outcome::SystemReset => self.system_reset(),
                    Outcome::GuestExit(s) => Action::Stop(StopReason {
                        status: s,
                        reason: reason::GUEST_EXIT,
                    }),
                    // A Spectre workaround the firmware said it serves (probed at boot).
                    Outcome::Firmware { fid, x1 } => {
                        Action::AdvanceWithResult(bulwark_aarch64::firmware::smc(fid, x1))
                    }
                }
            }
            Exit::GuestStatus(s) => {
                log::info!("guest: GUEST_EXIT status {s}");
                Action::Stop(StopReason {
                    status: s,
                    reason: reason::GUEST_EXIT,
                })
            }
            Exit::Halt => {
                // SAFETY: waits for an interrupt or event; the guest's pending interrupt (routed
                // to EL1, masked here) wakes us, then the guest takes it after re-entry.
                unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
                Action::Advance
            }
            Exit::MemFault(f) => self.stage2_abort(d, &f),
            Exit::Fatal { reason: why, code } => {
                log::error!(
                    "guest: unexpected exception to EL2: {why} (ESR {code:#x}) at pc {:#x}",
                    self.regs.pc
                );
                self.dump();
                Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                })
            }
        }
    }

    /// PSCI SYSTEM_RESET: reboot the guest (docs/aarch64.md, "SYSTEM_RESET"), or end the run
    /// with status 178 when there is no pristine payload copy or `maxresets=` is reached.
    fn system_reset(&mut self) -> Action {
        // The ending boot's DMA faults, judged against its own store.
        if let Some(stop) = self.poll_smmu() {
            return stop;
        }
        let g = self.core.mmio_guard();
        log::info!(
            "guest: PSCI SYSTEM_RESET (MMIO guard enrolment {} with {} mapped granule(s))",
            if g.enrolled() { "on" } else { "off" },
            g.mapped_count()
        );
        let end = Action::Stop(StopReason {
            status: STATUS_GUEST_RESET,
            reason: "guest-reset",
        });
        let failed = Action::Stop(StopReason {
            status: STATUS_BULWARK_FAILURE,
            reason: reason::UNHANDLED_EXIT,
        });
        let Some(reload) = self.reboot.reload else {
            log::warn!(
                "guest reset: no pristine copy of the guest payload (see the boot log), so no reboot; the run ends (protection state, MMIO guard enrolment and mappings end with it)"
            );
            return end;
        };
        let max = self.reboot.cfg.max_resets;
        if self.reboot.done >= max {
            log::error!(
                "guest reset: reboot limit reached ({} reboot(s), maxresets={max}); the run ends",
                self.reboot.done
            );
            return end;
        }

        // 1. Fresh per-guest protection state: boot-time `attr=` only.
        let core = match new_core(&self.reboot.gcfg, &self.reboot.cfg, self.gicr.pages()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("guest reset: {e}");
                return failed;
            }
        };
        // 2. Stage 2 derived from it, in a new table; switch, invalidate, free the old one.
        let Some(full) = core.full_range() else {
            log::error!("guest reset: empty guest memory map");
            return failed;
        };
        let mut s2 = match Stage2::new_stage2(&mut self.pool, self.reboot.s2cfg) {
            Ok(t) => t,
            Err(e) => {
                log::error!("guest reset: stage 2: {e:?}");
                return failed;
            }
        };
        if let Err(e) = core.sync_stage2(&mut self.pool, &mut s2, full, &mut Stage2Tlb) {
            log::error!("guest reset: stage 2: deriving the tables: {e:?}");
            s2.destroy(&mut self.pool);
            return failed;
        }
        el2::switch_stage2(s2.vttbr(VMID));
        Stage2Tlb.flush(full);
        let old = core::mem::replace(&mut self.s2, s2);
        old.destroy(&mut self.pool);
        // Pending rate-limited violation counts of the ending boot first.
        self.core.violation_log().flush();
        add_counters(&mut self.earlier, &self.core.counters());
        self.no_read = unreadable_frames(&core);
        self.core = core;
        self.step = None;
        // The device table follows the new store (locks gone) before the guest runs again.
        if let Some(s) = self.smmu.as_mut() {
            if let Err(e) = s.rederive(&self.core, &mut self.pool, full) {
                log::error!("guest reset: SMMUv3: {e}");
                return failed;
            }
        }

        // 3. The payload and device tree again, at the same IPAs.
        let r = reload;
        for m in [Some(r.kernel), r.initrd, Some(r.dtb)]
            .into_iter()
            .flatten()
        {
            // SAFETY: source: the pristine copy or the DtOut buffer, in Bulwark's reserved
            // memory, which no IPA maps; destination: the same guest-RAM range the boot loaded
            // (checked then against guest RAM); disjoint; the guest is not running.
            unsafe {
                core::ptr::copy_nonoverlapping(m.src as *const u8, m.dst as *mut u8, m.len as usize)
            };
        }
        // SAFETY: the kernel's BSS in guest RAM, zeroed at boot the same way.
        unsafe { core::ptr::write_bytes(r.bss.0 as *mut u8, 0, r.bss.1 as usize) };
        // Clean all of guest RAM to the point of coherency: the new kernel starts with its MMU
        // and caches off and must see memory (the payload, and what the last boot left) as it is.
        el2::clean_to_poc(self.gram.host_base as usize, self.gram.size as usize);

        // 4. The vCPU as at boot.
        el2::reset_el1();
        self.regs = VcpuRegs::default();
        vcpu::clear_fp_state();
        self.regs.x[0] = r.dtb_ipa;
        self.regs.pc = r.entry;
        self.regs.pstate = SPSR_EL1H_MASKED;
        self.reboot.done += 1;
        log::info!("guest reset: reboot {}", self.reboot.done);
        Action::Retry
    }

    /// Re-derive `range` of stage 2 — and of the SMMU's device table, whose TLBs are
    /// invalidated before this returns (one invalidation path: a lock holds for devices before
    /// its hypercall returns) — from the core's state; `Some(stop)` when that fails.
    fn rederive(&mut self, range: GpaRange) -> Option<Action> {
        let r = self
            .core
            .sync_stage2(&mut self.pool, &mut self.s2, range, &mut Stage2Tlb);
        if let (Ok(_), Some(s)) = (&r, self.smmu.as_mut()) {
            if let Err(e) = s.rederive(&self.core, &mut self.pool, range) {
                log::error!(
                    "SMMUv3: {e} for {:#x}..{:#x}; a lock might not hold against DMA, the run stops",
                    range.start(),
                    range.end()
                );
                return Some(Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                }));
            }
        }
        match r {
            Ok(_) => None,
            Err(e) => {
                log::error!(
                    "stage 2: re-deriving {:#x}..{:#x} failed: {e:?}",
                    range.start(),
                    range.end()
                );
                Some(Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::UNHANDLED_EXIT,
                }))
            }
        }
    }

    /// Turn the SMMU's fault records into violation lines (polled at every exit and at the end
    /// of the run). Under `violation=halt` a DMA violation ends the run (the transaction itself
    /// was already aborted by the SMMU).
    fn poll_smmu(&mut self) -> Option<Action> {
        let s = self.smmu.as_mut()?;
        let core = &self.core;
        let gram = self.gram;
        let halt = core.policy() == ViolationPolicy::Halt;
        let mut stop = None;
        let mut count = 0u64;
        let mut lines: alloc::vec::Vec<DmaFault> = alloc::vec::Vec::new();
        s.events(|e| {
            let (name, access_fault) = e.name();
            if !access_fault {
                log::warn!(
                    "SMMUv3: event {name} ({:#x}) stream={} addr={:#x}: the device's DMA was aborted",
                    e.kind,
                    e.stream,
                    e.addr
                );
                return;
            }
            count += 1;
            let write = !e.read;
            // The IPAs past guest RAM are where Bulwark's 32 MiB would lie in a 1:1 map.
            let ram_end = gram.ipa_base + gram.size;
            let kind = match core.dma_fault_kind(GuestPhysAddr::new(e.addr), write) {
                Some("unmapped")
                    if (e.addr >= ram_end && e.addr < ram_end + BULWARK_RESERVED)
                        || (e.addr >= gram.ipa_base - BULWARK_RESERVED.min(gram.ipa_base)
                            && e.addr < gram.ipa_base) =>
                {
                    "bulwark"
                }
                Some(k) => k,
                None => "stale",
            };
            // One line per run of faults of one stream on one page (a device writes a buffer
            // in many small transactions: QEMU records one fault per 4 bytes).
            match lines.last_mut() {
                Some(l)
                    if l.kind == kind
                        && l.write == write
                        && l.stream == e.stream
                        && l.event == name
                        && l.addr >> 12 == e.addr >> 12 =>
                {
                    l.count += 1
                }
                _ => {
                    if lines.try_reserve(1).is_ok() {
                        lines.push(DmaFault {
                            kind,
                            write,
                            stream: e.stream,
                            event: name,
                            addr: e.addr,
                            count: 1,
                        });
                    }
                }
            }
        });
        for l in &lines {
            log::error!(
                target: bulwark_core::violation::VIOLATION_TARGET,
                "kind={} access=dma-{} gpa={:#x} stream={} event={} count={} action={}",
                l.kind,
                if l.write { "write" } else { "read" },
                l.addr,
                l.stream,
                l.event,
                l.count,
                if halt { "halt" } else { "abort" }
            );
            if halt && stop.is_none() {
                stop = Some(Action::Stop(StopReason {
                    status: STATUS_BULWARK_FAILURE,
                    reason: reason::VIOLATION_HALT,
                }));
            }
        }
        s.faults = s.faults.saturating_add(count);
        stop
    }

    fn stage2_abort(&mut self, d: &Decoded, f: &MemFault) -> Action {
        if let Some(a) = self.gicr_access(d, f) {
            return a;
        }
        let in_map = self
            .core
            .regions()
            .iter()
            .any(|r| f.gpa >= r.gpa && f.gpa.as_u64() < r.gpa.as_u64().saturating_add(r.len));
        if in_map {
            // A store the syndrome cannot complete to a page with protected bytes: software
            // path (swstore.rs: software step, or emulated store-exclusive).
            if self.needs_software_store(d, f) {
                return self.software_store(d, f);
            }
            // Guest memory or a passed-through device: the core decides (protection violation,
            // stale tables, MMIO guard).
            let dec = self.core.handle_fault(0, f);
            if let Some(r) = dec.rederive {
                if let Some(stop) = self.rederive(r) {
                    return stop;
                }
            }
            return match (dec.kind, dec.action) {
                // A single-register store the syndrome describes (ISV): Bulwark writes the
                // unprotected bytes itself.
                (_, Action::EmulateStore(e))
                    if d.esr.ec() == ec::DABT_LOWER && d.esr.isv() && !e.crosses_page =>
                {
                    Action::EmulateStore(e)
                }
                (FaultKind::NeedsAccessSize, _) | (_, Action::EmulateStore(_)) => {
                    log::error!(
                        "store to a chunk-protected page at ipa={:#x} pc={:#x} that Bulwark cannot emulate on arm64 (no instruction syndrome: pair/vector/atomic store, or it crosses a page)",
                        f.gpa,
                        f.ip
                    );
                    Action::Stop(StopReason {
                        status: STATUS_BULWARK_FAILURE,
                        reason: reason::UNHANDLED_EXIT,
                    })
                }
                (_, Action::InjectFault) => self.inject_or_stop(f),
                (_, a) => a,
            };
        }
        let esr = d.esr;
        let inside_ram = f.gpa.as_u64() >= self.gram.ipa_base
            && f.gpa.as_u64() < self.gram.ipa_base + self.gram.size;
        self.stats.stage2_aborts += 1;
        let n = self.stats.stage2_aborts;
        if n > WALK_WARN_LINES {
            return self.inject_or_stop(f);
        }
        let hidden = self
            .hidden
            .iter()
            .find(|h| f.gpa.as_u64() >= h.start && f.gpa.as_u64() < h.end);
        let what = match hidden {
            Some(h) => alloc::format!("hidden device {} ({})", h.name, h.why),
            None if inside_ram => "inside guest RAM".into(),
            None => alloc::string::String::from("no memory or device at this IPA"),
        };
        log::warn!(
            "stage-2 abort: ipa={:#x} va={:#x}{} pc={:#x} access={} size={} esr={:#x} ({}, {} level {}{}) {}{}",
            f.gpa,
            f.gva.map_or(0, |v| v.as_u64()),
            if f.gva.is_none() { " (FAR not valid)" } else { "" },
            f.ip,
            f.access.as_str(),
            f.size.map_or(0, u32::from),
            esr.0,
            ec_name(esr.ec()),
            fsc_name(esr.fsc()),
            fsc_level(esr.fsc()),
            if esr.s1ptw() { ", stage-1 walk" } else { "" },
            what,
            if n == WALK_WARN_LINES {
                "; further ones are counted, not printed (stage2_aborts= in the counters line)"
            } else {
                ""
            }
        );
        self.inject_or_stop(f)
    }

    /// Inject an external abort for `f`, unless the guest is looping in its exception handling.
    fn inject_or_stop(&mut self, f: &MemFault) -> Action {
        if self.last_vector == Some(f.ip.as_u64()) {
            log::error!(
                "guest: abort at the exception vector {:#x} it was just sent to: exception loop",
                f.ip
            );
            self.dump();
            return Action::Stop(StopReason {
                status: STATUS_GUEST_CRASH,
                reason: reason::GUEST_CRASH,
            });
        }
        if self.injections_in_a_row >= MAX_CONSECUTIVE_INJECTIONS {
            log::error!(
                "guest: {} aborts in a row without progress: exception loop",
                self.injections_in_a_row
            );
            self.dump();
            return Action::Stop(StopReason {
                status: STATUS_GUEST_CRASH,
                reason: reason::GUEST_CRASH,
            });
        }
        Action::InjectFault
    }

    /// Apply an action. The only place the guest PC moves forward.
    fn apply(&mut self, d: &Decoded, action: Action) {
        match action {
            Action::Retry => {}
            Action::Advance => self.regs.pc = self.regs.pc.wrapping_add(d.skip),
            Action::AdvanceWithResult(v) => {
                self.regs.x[0] = v;
                self.regs.pc = self.regs.pc.wrapping_add(d.skip);
            }
            Action::AdvanceWithResults(v) => {
                self.regs.x[..4].copy_from_slice(&v);
                self.regs.pc = self.regs.pc.wrapping_add(d.skip);
            }
            Action::EmulateStore(e) => {
                // Only produced for ISV stores inside one page (see `stage2_abort`): the value is
                // register SRT; byte i is written unless bit i of `protected` is set.
                let value = self.regs.reg(d.esr.srt());
                for i in 0..u64::from(e.size.min(8)) {
                    if e.protected & (1 << i) != 0 {
                        continue;
                    }
                    let ipa = e.gpa.as_u64().wrapping_add(i);
                    if ipa < self.gram.ipa_base || ipa >= self.gram.ipa_base + self.gram.size {
                        continue;
                    }
                    let host = self.gram.host(ipa);
                    // SAFETY: `host` is inside guest RAM's host range (checked just above),
                    // identity-mapped at EL2; this is the guest's own store, minus protected bytes.
                    unsafe { core::ptr::write_volatile(host as *mut u8, (value >> (8 * i)) as u8) };
                }
                el2::clean_to_poc(self.gram.host(e.gpa.as_u64()) as usize, usize::from(e.size));
                self.regs.pc = self.regs.pc.wrapping_add(d.skip);
            }
            Action::InjectFault => {
                let (instr, wnr, far) = match d.exit {
                    Exit::MemFault(f) => (
                        f.access == Access::Exec,
                        f.access == Access::Write,
                        f.gva.map_or(0, |v| v.as_u64()),
                    ),
                    _ => (false, false, 0),
                };
                let vector = el2::inject_sync_external_abort(&mut self.regs, instr, wnr, far);
                self.injections_in_a_row += 1;
                self.last_vector = Some(vector);
                return;
            }
            Action::Stop(r) => {
                self.poll_smmu();
                self.print_counters();
                crate::finish(r.status, r.reason)
            }
        }
        self.injections_in_a_row = 0;
        self.last_vector = None;
    }

    /// Count an exit by reason.
    fn count_exit(&mut self, d: &Decoded) {
        let st = &mut self.stats;
        st.exits += 1;
        match d.esr.ec() {
            ec::HVC64 => st.hvc += 1,
            ec::SMC64 => st.smc += 1,
            ec::DABT_LOWER => st.dabt += 1,
            ec::IABT_LOWER => st.iabt += 1,
            ec::WFX => st.wfi += 1,
            swstore::EC_SOFTSTEP_LOWER => {}
            _ => st.other += 1,
        }
    }

    /// The end-of-run counters line (`bulwark: INFO counters key=value ...`): exits by reason,
    /// violations by kind, software-path writes. Pending rate-limited violation counts first.
    fn print_counters(&mut self) {
        self.core.violation_log().flush();
        let mut c = self.earlier;
        add_counters(&mut c, &self.core.counters());
        let s = self.stats;
        let [roe, chunk, guard, attr] = c.violations;
        log::info!(
            "counters exits={} exit_hvc={} exit_smc={} exit_dabt={} exit_iabt={} exit_wfi={} exit_sstep={} exit_other={} \
             hypercalls={} hypercall_errors={} el0_calls_refused={} violations={} violations_roe={roe} violations_roe_chunk={chunk} \
             violations_mmio_guard={guard} violations_attr={attr} emulated_stores={} sw_steps={} sw_writes={} sw_exclusive={} \
             spurious_faults={} mmio_maps={} mmio_unmaps={} table_pages={} violations_dma={} roe_walk_errors={} stage2_aborts={}",
            s.exits,
            s.hvc,
            s.smc,
            s.dabt,
            s.iabt,
            s.wfi,
            s.exit_step,
            s.other,
            c.hypercalls,
            c.hypercall_errors,
            s.el0_calls,
            c.violations.iter().sum::<u64>(),
            c.emulated_stores,
            s.sw_steps,
            s.sw_writes,
            s.sw_exclusive,
            c.spurious_faults,
            c.mmio_maps,
            c.mmio_unmaps,
            self.pool.in_use,
            self.smmu.as_ref().map_or(0, |s| s.faults),
            s.roe_walk_errors,
            s.stage2_aborts
        );
    }

    fn dump(&self) {
        log::error!(
            "guest state: pc {:#x} pstate {:#x} esr_el2 {:#x} far_el2 {:#x} hpfar_el2 {:#x} vbar_el1 {:#x} sctlr_el1 {:#x} esr_el1 {:#x} elr_el1 {:#x}",
            self.regs.pc,
            self.regs.pstate,
            read_sysreg!("esr_el2"),
            read_sysreg!("far_el2"),
            read_sysreg!("hpfar_el2"),
            read_sysreg!("vbar_el1"),
            read_sysreg!("sctlr_el1"),
            read_sysreg!("esr_el1"),
            read_sysreg!("elr_el1")
        );
        super::dump_regs(&self.regs.x);
    }
}

/// `acc += c`, field by field (saturating).
fn add_counters(acc: &mut Counters, c: &Counters) {
    acc.hypercalls = acc.hypercalls.saturating_add(c.hypercalls);
    acc.hypercall_errors = acc.hypercall_errors.saturating_add(c.hypercall_errors);
    acc.roe_pages_requested = acc
        .roe_pages_requested
        .saturating_add(c.roe_pages_requested);
    acc.chunk_bytes_requested = acc
        .chunk_bytes_requested
        .saturating_add(c.chunk_bytes_requested);
    for (a, b) in acc.violations.iter_mut().zip(c.violations) {
        *a = a.saturating_add(b);
    }
    acc.emulated_stores = acc.emulated_stores.saturating_add(c.emulated_stores);
    acc.spurious_faults = acc.spurious_faults.saturating_add(c.spurious_faults);
    acc.mmio_maps = acc.mmio_maps.saturating_add(c.mmio_maps);
    acc.mmio_unmaps = acc.mmio_unmaps.saturating_add(c.mmio_unmaps);
}
