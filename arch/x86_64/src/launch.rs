//! From boot description to a running guest: VMX bring-up, memory plan, Multiboot v1 loading,
//! the core's per-guest state, EPT, the vCPU, then the run loop.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bulwark_abi::console::reason;
use bulwark_abi::cpuid::Features;
use bulwark_abi::policy::ViolationPolicy as AbiPolicy;
use bulwark_boot::cmdline::{Config, ViolationPolicy};
use bulwark_boot::multiboot1::{self, InfoModule, BOOTLOADER_MAGIC};
use bulwark_boot::multiboot2_info::BootDescription;
use bulwark_core::exit::StopReason;
use bulwark_core::guest::{Arch, Guest, GuestConfig};
use bulwark_core::pt::ept::Ept;
use bulwark_core::pt::sppt::Sppt;
use bulwark_core::pt::RecordingFlush;
use bulwark_core::store::StoreLimits;

use crate::cpu::CpuInfo;
use crate::host::HostCpu;
use crate::mem::{GuestRam, HeapFrames, Plan};

/// EPTP bit 6: enable accessed and dirty flags for EPT.
const EPTP_ACCESSED_DIRTY: u64 = 1 << 6;
use crate::vcpu::{InitialState, Vcpu};
use crate::vm::Vm;
use crate::vmx;

/// Why no guest was started: a message for the log and the `reason=` word.
#[derive(Debug)]
pub struct Refused {
    pub why: String,
    pub reason: &'static str,
}

fn refuse(why: String) -> Refused {
    Refused {
        why,
        reason: reason::REFUSED,
    }
}

/// Where Bulwark puts the Multiboot information when it fits there (low memory, below the
/// usual kernel load addresses).
const INFO_PREFERRED: u64 = 0x9000;
const PAGE: u64 = 4096;

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn policy(p: ViolationPolicy) -> AbiPolicy {
    match p {
        ViolationPolicy::Skip => AbiPolicy::Skip,
        ViolationPolicy::Inject => AbiPolicy::Inject,
        ViolationPolicy::Halt => AbiPolicy::Halt,
    }
}

/// IA32_APIC_BASE: the local APIC's physical base (bits 12 and up), xAPIC global enable (11).
const IA32_APIC_BASE: u32 = 0x1b;

/// What the machine has besides memory (docs/x86_64.md, "Platform model"): the local APIC page
/// from IA32_APIC_BASE (the CPU's own answer; the guest cannot move it: WRMSR 0x1b is refused)
/// and the device ranges the ACPI tables name.
fn platform(boot: &BootDescription) -> bulwark_boot::multiboot_plan::Platform {
    // SAFETY: IA32_APIC_BASE exists on every CPU with VMX.
    let apic_base = unsafe { crate::cpu::rdmsr(IA32_APIC_BASE) };
    let lapic = (apic_base & (1 << 11) != 0).then_some(apic_base & 0x000f_ffff_ffff_f000);
    let devices = boot
        .acpi
        .as_ref()
        .map(crate::acpi_info::devices)
        .unwrap_or_default();
    log::info!(
        "platform: local APIC {} (writes trapped: INIT/SIPI filtered), {} ACPI device range(s) {:x?}; every non-RAM range below 4 GiB passed through as uncached device memory",
        match lapic {
            Some(a) => format!("at {a:#x}"),
            None => "disabled".into(),
        },
        devices.len(),
        devices
    );
    bulwark_boot::multiboot_plan::Platform { lapic, devices }
}

/// Bring up VMX, load the guest (first module) and run it to the end.
pub fn run_guest(
    boot: &BootDescription,
    config: &Config,
    cpu: &CpuInfo,
    host: &HostCpu,
    guest_line: &dyn Fn(&str),
) -> Result<StopReason, Refused> {
    let caps = vmx::requirements(cpu).map_err(|r| refuse(format!("{r}")))?;
    let platform = platform(boot);
    let plan = bulwark_boot::multiboot_plan::plan_platform(
        boot,
        (crate::layout::REGION_START, crate::layout::REGION_END),
        &platform,
    );
    if plan.dropped > 0 {
        log::warn!(
            "memory plan: {} firmware range(s) overlapped earlier ones and were not given to the guest",
            plan.dropped
        );
    }
    log::info!(
        "guest memory: {} MiB RAM in {} region(s); Bulwark's region [{:#x}, {:#x}) is not mapped",
        plan.ram_bytes() >> 20,
        plan.regions.len(),
        crate::layout::REGION_START,
        crate::layout::REGION_END
    );

    // The guest kernel: first module, copied out so loading cannot overwrite its own source.
    let module = boot
        .modules
        .first()
        .ok_or_else(|| refuse("no guest module".into()))?;
    let len = usize::try_from(module.end - module.start)
        .map_err(|_| refuse("guest module too large".into()))?;
    if module.end > 1 << 32 || !plan.is_ram(module.start, module.end.max(module.start + 1)) {
        return Err(refuse(format!(
            "guest module [{:#x}, {:#x}) is not in guest RAM",
            module.start, module.end
        )));
    }
    let mut image: Vec<u8> = Vec::new();
    image.try_reserve_exact(len).map_err(|_| {
        refuse(format!(
            "guest image of {len} bytes does not fit Bulwark's heap"
        ))
    })?;
    // SAFETY: the module lies in guest RAM below 4 GiB (checked), identity mapped, and nothing
    // runs in the guest yet.
    image.extend_from_slice(unsafe { core::slice::from_raw_parts(module.start as *const u8, len) });

    let init = if bulwark_boot::linux_x86::is_bzimage(&image) {
        load_linux(boot, &plan, &image, &module.cmdline)?
    } else {
        load_multiboot(boot, &plan, &image, &module.cmdline)?
    };
    drop(image);

    // SPP only on request (`spp=on`) and where the CPU enumerates it (docs/x86_64-spp.md).
    let spp_on = config.spp && crate::spp::available(&caps);
    // The core's per-guest state and the EPT derived from it.
    let mut guest = Guest::new(GuestConfig {
        arch: Arch::X86_64,
        regions: plan.regions.clone(),
        policy: policy(config.violation),
        ratelimit: config.ratelimit,
        exec_only: caps.ept_exec_only(),
        spp: spp_on,
        limits: StoreLimits::default(),
    })
    .map_err(|e| refuse(format!("guest memory configuration refused: {e:?}")))?;
    let (lines, window) = config.global_ratelimit;
    guest.violation_log().set_global(lines, window);
    // SPP: one instruction can write up to 512 bytes (FXSAVE) or the XSAVE area (CPUID 0xD.0
    // ECX: the largest area of every feature the CPU has), and Bochs checks only the sub-page
    // of the first byte; sub-pages that far before a protected byte stay write-protected
    // (docs/x86_64-spp.md).
    if spp_on {
        let xsave_max = if cpu.xsave {
            core::arch::x86_64::__cpuid_count(0xd, 0).ecx
        } else {
            0
        };
        let reach = xsave_max.max(512) - 1;
        guest.set_spp_store_reach(reach);
        log::info!(
            "SPP: a store reaches up to {reach} bytes past its first sub-page (FXSAVE/XSAVE)"
        );
    }
    for a in &config.attrs {
        guest
            .set_host_attributes(a.start.as_u64(), a.size, u64::from(a.perms.bits()), 0)
            .map_err(|e| refuse(format!("{}", config.attr_refused(a, &e))))?;
    }

    let root = vmx::enable(caps, cpu.xsave).map_err(|r| refuse(format!("{r}")))?;
    log::info!("VMX on: VMXON done, VMCS revision {:#x}", caps.revision());
    let features = Features {
        roe_version: bulwark_abi::roe::ROE_IMPL_VERSION as u8,
        roe_mprotect: true,
        // Chunk stores go through the software path (swpath.rs: shadow page + one single
        // step, by MTF or RFLAGS.TF); SPP only accelerates it.
        roe_chunk: true,
        chunk_spp: spp_on,
        policy: policy(config.violation),
    };
    let guest = spin::Mutex::new(guest);
    if caps.ept_exec_only() {
        start::<true>(&root, host, &guest, &plan, features, cpu, init, guest_line)
    } else {
        start::<false>(&root, host, &guest, &plan, features, cpu, init, guest_line)
    }
}

/// Load a Multiboot (v1) guest: its segments, further modules (moved out of the kernel's way),
/// the Multiboot information. Returns the entry state (EAX = magic, EBX = information).
fn load_multiboot(
    boot: &BootDescription,
    plan: &Plan,
    image: &[u8],
    cmdline: &str,
) -> Result<InitialState, Refused> {
    let img =
        multiboot1::parse_image(image).map_err(|e| refuse(format!("guest image rejected: {e}")))?;
    for s in &img.segments {
        if !plan.is_ram(s.dst, s.end()) {
            return Err(refuse(format!(
                "guest segment [{:#x}, {:#x}) is not in guest RAM (Bulwark's own region is [{:#x}, {:#x}); see the memory map above)",
                s.dst,
                s.end(),
                crate::layout::REGION_START,
                crate::layout::REGION_END
            )));
        }
    }
    let (lo, hi) = img.span();
    log::info!(
        "guest image: Multiboot v1, {} segment(s) in [{:#x}, {:#x}), entry {:#x}",
        img.segments.len(),
        lo,
        hi,
        img.entry
    );

    // Further modules stay where GRUB put them, unless the kernel will load over them: those
    // are moved now, before any segment is written, to free guest RAM above the kernel and
    // every module's original place (so no move overwrites a module not yet moved).
    let segs: Vec<(u64, u64)> = img.segments.iter().map(|s| (s.dst, s.end())).collect();
    let originals: Vec<(u64, u64)> = boot
        .modules
        .iter()
        .skip(1)
        .map(|m| (m.start, m.end))
        .collect();
    let mut mods = Vec::new();
    let mut moved: Vec<(u64, u64)> = Vec::new();
    for m in boot.modules.iter().skip(1) {
        let r = (m.start, m.end);
        if m.end > 1 << 32 || !plan.is_ram(m.start, m.end.max(m.start + 1)) {
            return Err(refuse(format!(
                "module [{:#x}, {:#x}) is not in guest RAM",
                m.start, m.end
            )));
        }
        let (mut start, mut end) = r;
        if segs.iter().any(|&s| overlaps(r, s)) {
            let len = m.end - m.start;
            let busy: Vec<(u64, u64)> = segs
                .iter()
                .chain(&originals)
                .chain(&moved)
                .copied()
                .collect();
            let min = busy.iter().map(|b| b.1).max().unwrap_or(0);
            let dst = plan.find_free(min, len, &busy).ok_or_else(|| {
                refuse(format!(
                    "module [{:#x}, {:#x}) overlaps the guest kernel and no free guest RAM of {len} bytes is left to move it to",
                    m.start, m.end
                ))
            })?;
            // SAFETY: both ranges are guest RAM below 4 GiB (identity mapped, checked above and
            // by `find_free`), disjoint (the destination avoids every module's original range),
            // and no vCPU runs yet.
            unsafe {
                core::ptr::copy_nonoverlapping(m.start as *const u8, dst as *mut u8, len as usize)
            };
            log::info!(
                "module [{:#x}, {:#x}) overlaps the guest kernel's load range: moved to [{:#x}, {:#x})",
                m.start,
                m.end,
                dst,
                dst + len
            );
            (start, end) = (dst, dst + len);
            moved.push((start, end));
        }
        mods.push(InfoModule {
            start: start as u32,
            end: end as u32,
            cmdline: m.cmdline.clone(),
        });
    }

    // Multiboot information: at INFO_PREFERRED, else after the kernel and modules.
    let busy: Vec<(u64, u64)> = img
        .segments
        .iter()
        .map(|s| (s.dst, s.end()))
        .chain(mods.iter().map(|m| (u64::from(m.start), u64::from(m.end))))
        .collect();
    let probe = multiboot1::build_info(0, "", &mods, &plan.guest_map, "")
        .map(|b| b.len() as u64)
        .unwrap_or(0);
    let need = probe + cmdline.len() as u64 + 64 + 1;
    let top = busy.iter().map(|b| b.1).max().unwrap_or(0).div_ceil(PAGE) * PAGE;
    let base = plan
        .place(&[INFO_PREFERRED, top], need, &busy)
        .ok_or_else(|| refuse("no room in guest RAM for the Multiboot information".into()))?;
    let info = multiboot1::build_info(
        base as u32,
        cmdline,
        &mods,
        &plan.guest_map,
        concat!("Bulwark ", env!("CARGO_PKG_VERSION")),
    )
    .ok_or_else(|| refuse("Multiboot information does not fit below 4 GiB".into()))?;

    let ram = GuestRam { plan };
    for s in &img.segments {
        let start = s.file_offset;
        let bytes = usize::try_from(s.filesz)
            .ok()
            .and_then(|n| image.get(start..start.checked_add(n)?))
            .ok_or_else(|| refuse("guest segment outside the image".into()))?;
        ram.write(s.dst, bytes)
            .and_then(|()| ram.zero(s.dst + s.filesz, s.memsz - s.filesz))
            .map_err(|_| refuse(format!("cannot write guest segment at {:#x}", s.dst)))?;
    }
    ram.write(base, &info)
        .map_err(|_| refuse("cannot write the Multiboot information".into()))?;
    log::info!(
        "guest command line {:?}, Multiboot information at {:#x} ({} bytes), {} extra module(s)",
        cmdline,
        base,
        info.len(),
        mods.len()
    );
    Ok(InitialState {
        rip: img.entry,
        rax: u64::from(BOOTLOADER_MAGIC),
        rbx: base,
        rsi: 0,
    })
}

/// Load a Linux bzImage (boot protocol 2.10+, `bulwark_boot::linux_x86`, docs/x86_64.md "Linux
/// guests"): the protected-mode kernel where the header allows, the second module as initrd
/// (moved when the kernel's range covers it or it lies above initrd_addr_max), the command line,
/// an RSDP copy and the zero page in low memory. Entry: the 32-bit entry point (code32_start, the
/// load address) in flat 32-bit protected mode, paging and interrupts off, ESI = zero page.
fn load_linux(
    boot: &BootDescription,
    plan: &Plan,
    image: &[u8],
    cmdline: &str,
) -> Result<InitialState, Refused> {
    use bulwark_boot::linux_x86 as lx;
    let bz = lx::parse(image).map_err(|e| refuse(format!("guest image rejected: {e}")))?;
    if boot.modules.len() > 2 {
        log::warn!(
            "{} module(s) after the initrd are ignored (a bzImage takes one initrd)",
            boot.modules.len() - 2
        );
    }
    let initrd = boot.modules.get(1);
    if let Some(m) = initrd {
        if m.end > 1 << 32 || !plan.is_ram(m.start, m.end.max(m.start + 1)) {
            return Err(refuse(format!(
                "initrd [{:#x}, {:#x}) is not in guest RAM (Bulwark's own region is [{:#x}, {:#x}))",
                m.start,
                m.end,
                crate::layout::REGION_START,
                crate::layout::REGION_END
            )));
        }
    }
    let cmd_len = cmdline.len() as u64 + 1;
    if cmd_len > u64::from(bz.hdr.cmdline_size) + 1 {
        return Err(refuse(format!(
            "kernel command line of {} bytes exceeds the kernel's cmdline_size {}",
            cmdline.len(),
            bz.hdr.cmdline_size
        )));
    }
    // Low memory for the zero page, the command line and the RSDP copy.
    let low_need = PAGE + cmd_len.div_ceil(16) * 16 + 64;
    let low = plan
        .place(
            &[0x1_0000, 0x2_0000, 0x3_0000, 0x9_0000 - low_need],
            low_need,
            &[],
        )
        .ok_or_else(|| refuse("no low guest RAM for the Linux zero page".into()))?;
    let low_r = (low, low + low_need);
    let initrd_r = initrd.map(|m| (m.start, m.end));
    // The kernel where it fits without the initrd in the way; else anywhere (the initrd moves).
    let load = bz
        .load_address(|s, e| {
            plan.is_ram(s, e)
                && !overlaps((s, e), low_r)
                && initrd_r.is_none_or(|r| !overlaps((s, e), r))
        })
        .or_else(|| bz.load_address(|s, e| plan.is_ram(s, e) && !overlaps((s, e), low_r)))
        .ok_or_else(|| {
            refuse(format!(
                "no guest RAM where the kernel fits ({:#x} bytes, alignment {:#x}, relocatable {}; Bulwark's region is [{:#x}, {:#x}))",
                bz.span(),
                bz.hdr.kernel_alignment,
                bz.hdr.relocatable,
                crate::layout::REGION_START,
                crate::layout::REGION_END
            ))
        })?;
    let kernel_r = (load, load + bz.span());
    let ramdisk = match initrd {
        None => None,
        Some(m) => {
            let len = m.end - m.start;
            let limit = bz.initrd_limit();
            let stays = !overlaps((m.start, m.end), kernel_r)
                && !overlaps((m.start, m.end), low_r)
                && m.end <= limit;
            let dst = if stays {
                m.start
            } else {
                let d = plan
                    .find_free(PAGE, len, &[kernel_r, low_r, (m.start, m.end)])
                    .filter(|d| d + len <= limit)
                    .ok_or_else(|| {
                        refuse(format!(
                            "no free guest RAM below the kernel's initrd limit {limit:#x} for the initrd ({len} bytes)"
                        ))
                    })?;
                // SAFETY: both ranges are guest RAM below 4 GiB (identity mapped), disjoint
                // (`find_free` avoided the original), and no vCPU runs yet.
                unsafe {
                    core::ptr::copy_nonoverlapping(m.start as *const u8, d as *mut u8, len as usize)
                };
                log::info!(
                    "initrd [{:#x}, {:#x}) overlaps the kernel's range or its limit: moved to [{:#x}, {:#x})",
                    m.start,
                    m.end,
                    d,
                    d + len
                );
                d
            };
            Some((dst as u32, len as u32))
        }
    };
    let ram = GuestRam { plan };
    ram.write(load, bz.kernel)
        .map_err(|_| refuse(format!("cannot write the kernel at {load:#x}")))?;
    let cmd_at = low + PAGE;
    let mut cmd = Vec::with_capacity(cmd_len as usize);
    cmd.extend_from_slice(cmdline.as_bytes());
    cmd.push(0);
    ram.write(cmd_at, &cmd)
        .map_err(|_| refuse("cannot write the kernel command line".into()))?;
    let rsdp_at = cmd_at + cmd_len.div_ceil(16) * 16;
    let rsdp_addr = match &boot.acpi {
        Some(a) => {
            let r = lx::rsdp(a.revision, a.rsdt, a.xsdt);
            ram.write(rsdp_at, &r)
                .map_err(|_| refuse("cannot write the RSDP copy".into()))?;
            rsdp_at
        }
        None => 0,
    };
    let bp = lx::build_boot_params(
        &bz,
        &lx::BootParamsInput {
            load,
            e820: &plan.guest_map,
            cmd_line_ptr: cmd_at as u32,
            ramdisk,
            acpi_rsdp: rsdp_addr,
        },
    )
    .ok_or_else(|| {
        refuse("the memory map does not fit the zero page (more than 128 entries)".into())
    })?;
    ram.write(low, &bp)
        .map_err(|_| refuse("cannot write the zero page".into()))?;
    log::info!(
        "guest image: Linux bzImage, boot protocol {}.{:02}, kernel at {:#x} ({:#x} bytes, init_size {:#x}), zero page at {:#x}, initrd {}, RSDP copy at {:#x}, command line {:?}",
        bz.hdr.version >> 8,
        bz.hdr.version & 0xff,
        load,
        bz.kernel.len(),
        bz.hdr.init_size,
        low,
        match ramdisk {
            Some((a, l)) => format!("[{:#x}, {:#x})", a, u64::from(a) + u64::from(l)),
            None => "none".into(),
        },
        rsdp_addr,
        cmdline
    );
    Ok(InitialState {
        rip: load,
        rax: 0,
        rbx: 0,
        rsi: low,
    })
}

#[allow(clippy::too_many_arguments)]
fn start<const XO: bool>(
    root: &vmx::VmxRoot,
    host: &HostCpu,
    guest: &spin::Mutex<Guest>,
    plan: &Plan,
    features: Features,
    cpu: &CpuInfo,
    init: InitialState,
    guest_line: &dyn Fn(&str),
) -> Result<StopReason, Refused> {
    let caps = root.caps;
    let mut frames = HeapFrames { allocated: 0 };
    let mut ept = Ept::<XO>::new_ept(&mut frames, caps.ept_1g())
        .map_err(|e| refuse(format!("EPT: {e:?}")))?;
    let full = guest
        .lock()
        .full_range()
        .ok_or_else(|| refuse("guest has no memory".into()))?;
    // No hardware uses the tables yet: nothing to invalidate.
    let mut none = RecordingFlush::default();
    // The SPP table: from Bulwark's own frames, only when SPP is on (`features.chunk_spp`).
    let mut sppt = if features.chunk_spp {
        Some(Sppt::new(&mut frames).map_err(|e| refuse(format!("SPPT root: {e:?}")))?)
    } else {
        None
    };
    crate::spp::sync_ept(
        &guest.lock(),
        &mut frames,
        &mut ept,
        sppt.as_mut(),
        full,
        &mut none,
    )
    .map_err(|e| refuse(format!("building the EPT failed: {e:?}")))?;
    log::info!(
        "EPT: {} table page(s) for guest memory, largest pages {}; RAM write-back, legacy hole uncached; eptp={:#x}",
        ept.stats().table_pages,
        if caps.ept_1g() { "1 GiB" } else { "2 MiB" },
        ept.eptp()
    );
    // EPT A/D (EPTP bit 6) where offered: the CPU then checks every access to a guest paging
    // structure as a write, so Accessed/Dirty updates into write-protected page tables take an
    // EPT violation instead of landing (issue 12, breach 4: Bochs writes them unchecked
    // otherwise). INVEPT keeps using the plain EPTP (same root, bit 6 does not name a context).
    let eptp = if caps.ept_ad() {
        ept.eptp() | EPTP_ACCESSED_DIRTY
    } else {
        ept.eptp()
    };
    log::info!(
        "EPT A/D: {}",
        if caps.ept_ad() {
            "on (guest paging-structure accesses are checked as writes)"
        } else {
            "not offered (IA32_VMX_EPT_VPID_CAP bit 21 clear): A/D updates are checked only as the CPU itself does"
        }
    );
    let vcpu = Vcpu::new(0, caps, host, eptp, init).map_err(|e| refuse(format!("{e}")))?;
    match &sppt {
        Some(s) => {
            crate::spp::enable_in_vmcs(&caps, s)
                .map_err(|e| refuse(format!("turning SPP on failed: {e:?}")))?;
            log::info!(
                "SPP: on (SPPTP={:#x}; chunk-protected 4 KiB pages get EPT bit 61 and sub-page vectors: stores to 128-byte sub-pages without protected bytes cause no exit)",
                s.spptp()
            );
        }
        None if crate::spp::available(&caps) => log::info!(
            "SPP: off (enumerated but not requested: spp=on turns it on; see docs/x86_64-spp.md for why it is off by default); chunk-protected pages exit on every store"
        ),
        None => log::info!(
            "SPP: off (not enumerated: IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 23 clear); chunk-protected pages exit on every store"
        ),
    }
    log::info!(
        "vCPU 0: VMCS at {:#x}, VPID {}, entering the guest at {:#x}",
        vcpu.vmcs_phys(),
        vcpu.vpid,
        init.rip
    );
    let mut vm = Vm::new(
        vcpu,
        caps,
        guest,
        plan,
        ept,
        frames,
        features,
        cpu.max_phys_bits,
        guest_line,
    );
    vm.sppt = sppt;
    Ok(vm.run())
}
