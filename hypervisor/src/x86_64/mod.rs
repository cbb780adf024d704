//! x86_64 glue: multiboot2 entry, console, banner, and the hand-over to the VMX back end.

use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_boot::multiboot2_info::{
    self, BootDescription, Firmware, MemorySource, MULTIBOOT2_MAGIC,
};
use bulwark_x86_64::x86_64;
use bulwark_x86_64::{acpi_info, cpu, heap, host, launch, layout, serial};
use log::{error, info, warn};
use x86_64::instructions::port::Port;

// The 32-bit multiboot2 entry and the switch to long mode (boot/src/x86_64/entry.s).
core::arch::global_asm!(
    include_str!("../../../boot/src/x86_64/entry.s"),
    options(att_syntax)
);

/// Raw bytes to COM1.
pub fn console_write(bytes: &[u8]) {
    serial::write(bytes);
}

/// Bytes as they are, waiting for the UART.
pub fn console_write_raw(bytes: &[u8]) {
    serial::write_raw(bytes);
}

/// What COM1 takes now (only while LSR.THRE is set); never waits.
pub fn console_try_write(bytes: &[u8]) -> usize {
    serial::try_write(bytes)
}

/// COM1 is Bulwark's alone (the guest's is emulated).
pub const CONSOLE_SHARED: bool = false;

/// The per-boot key of the console lines' MAC (docs/console.md): RDSEED where the CPU has it,
/// else RDRAND, each mixed with the TSC; the TSC alone otherwise (weak: say so).
pub fn log_key() -> ([u8; 16], &'static str) {
    let (rdseed, rdrand) = bulwark_x86_64::rng::features();
    let mut words = [0u64; 6];
    let mut got = 0;
    for w in words.iter_mut() {
        *w = bulwark_x86_64::rng::tsc();
        let r = if rdseed {
            bulwark_x86_64::rng::rdseed()
        } else if rdrand {
            bulwark_x86_64::rng::rdrand()
        } else {
            None
        };
        if let Some(r) = r {
            *w ^= r;
            got += 1;
        }
    }
    let source = match (got == words.len(), rdseed) {
        (true, true) => "rdseed",
        (true, false) => "rdrand",
        _ => "tsc-weak",
    };
    (bulwark_abi::logauth::mix_key(&words), source)
}

/// Before one Bulwark line: nothing to take back (the guest's COM1 is emulated; the real one is
/// Bulwark's alone).
pub fn console_claim() -> Option<u32> {
    None
}

/// After one Bulwark line.
pub fn console_release(_: Option<u32>) {}

/// End the run: Bochs shutdown port, then QEMU's isa-debug-exit, then park the CPU.
pub fn stop_machine(status: u32) -> ! {
    serial::drain();
    // SAFETY: port writes with no memory effects. 0x8900 is Bochs' shutdown port, 0xf4 QEMU's
    // isa-debug-exit; on real hardware nothing decodes them and the CPU parks below.
    unsafe {
        let mut bochs: Port<u8> = Port::new(0x8900);
        for b in b"Shutdown" {
            bochs.write(*b);
        }
        let mut qemu: Port<u32> = Port::new(0xf4);
        qemu.write(status);
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

fn fatal_exception(f: &host::ExceptionFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    crate::logger::write_line_unlocked(format_args!(
        "ERROR exception in Bulwark: vector={} error_code={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x}",
        f.vector, f.error_code, f.rip, f.cs, f.rflags, f.rsp, cr2
    ));
    crate::finish(STATUS_BULWARK_FAILURE, "exception")
}

/// Entered from `entry.s` in long mode on the boot stack.
#[no_mangle]
extern "C" fn bulwark_main_x86(magic: u32, mbi: u64) -> ! {
    serial::init();
    let (key, source) = log_key();
    crate::logger::init(log::LevelFilter::Info, key, source);
    serial::set_poll(crate::logger::poll);
    heap::init();
    let hostcpu = host::init_cpu(fatal_exception);
    info!("Bulwark {} (x86_64) starting", env!("CARGO_PKG_VERSION"));

    if magic != MULTIBOOT2_MAGIC {
        error!(
            "not started by a multiboot2 loader (EAX={magic:#x}); Bulwark needs GRUB's multiboot2"
        );
        crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED);
    }
    let boot = match read_mbi(mbi) {
        Ok(b) => b,
        Err(e) => {
            error!("boot information at {mbi:#x} rejected: {e}");
            crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED);
        }
    };
    let config = match bulwark_boot::cmdline::parse(strip_path(&boot.cmdline)) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED);
        }
    };
    log::set_max_level(level_filter(config.log_level));
    // Build with BULWARK_DUMP_MBI=1 in the environment to print the raw MBI (test fixtures).
    if option_env!("BULWARK_DUMP_MBI").is_some() {
        dump_mbi(mbi);
    }

    let cpu = cpu::probe();
    banner(&boot, &cpu);

    if cpu.vmx.is_none() {
        error!("VMX is not available on this CPU (CPUID.1:ECX.VMX = 0): Bulwark cannot run a guest here. Use an Intel CPU with VT-x, or Bochs (cargo xtask run --arch x86_64)");
        crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED);
    }
    if boot.modules.is_empty() {
        warn!("no guest module given (module2 in grub.cfg): nothing to run");
        crate::finish(0, reason::NO_GUEST);
    }
    let guest_line = |line: &str| crate::logger::write_guest_line(line);
    match launch::run_guest(&boot, &config, &cpu, hostcpu, &guest_line) {
        Ok(stop) => crate::finish(stop.status, stop.reason),
        Err(r) => {
            error!("{}", r.why);
            crate::finish(STATUS_BULWARK_FAILURE, r.reason)
        }
    }
}

fn strip_path(line: &str) -> &str {
    let t = line.trim_start();
    match t.split_once(' ') {
        Some((first, rest)) if first.starts_with('/') => rest,
        None if t.starts_with('/') => "",
        _ => t,
    }
}

fn level_filter(l: bulwark_boot::cmdline::LogLevel) -> log::LevelFilter {
    use bulwark_boot::cmdline::LogLevel;
    match l {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

fn read_mbi(mbi: u64) -> Result<BootDescription, &'static str> {
    if mbi == 0 || !mbi.is_multiple_of(8) || mbi >= 1 << 32 {
        return Err("address null, unaligned or above 4 GiB");
    }
    // SAFETY: GRUB placed the MBI at `mbi` (identity mapped, below 4 GiB, 8-aligned). First
    // only the 8-byte header is read to learn the size, then exactly that many bytes.
    let total = unsafe { core::ptr::read_volatile(mbi as *const u32) } as usize;
    if !(16..=1 << 20).contains(&total) {
        return Err("implausible total size");
    }
    // SAFETY: as above; the loader guarantees `total` bytes of MBI at `mbi`, and Bulwark never
    // writes to them.
    let bytes = unsafe { core::slice::from_raw_parts(mbi as *const u8, total) };
    multiboot2_info::parse(bytes).map_err(|e| match e {
        multiboot2_info::ParseError::Truncated => "truncated",
        multiboot2_info::ParseError::BadTotalSize => "bad total size",
        multiboot2_info::ParseError::BadTagSequence => "malformed tag sequence",
        multiboot2_info::ParseError::BadMemoryMap => "malformed memory map",
        multiboot2_info::ParseError::BadRange => "wrapping memory range or module",
        multiboot2_info::ParseError::Rejected => "rejected by the multiboot2 parser",
    })
}

/// Print the raw MBI as hex lines (`bulwark: mbi <offset> <hex>`) for capturing test fixtures.
fn dump_mbi(mbi: u64) {
    // SAFETY: `read_mbi` accepted this block, so its header and `total` bytes are readable.
    let total = unsafe { core::ptr::read_volatile(mbi as *const u32) } as usize;
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(mbi as *const u8, total) };
    for (i, chunk) in bytes.chunks(32).enumerate() {
        let mut line = [0u8; 64];
        for (j, b) in chunk.iter().enumerate() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line[2 * j] = HEX[usize::from(b >> 4)];
            line[2 * j + 1] = HEX[usize::from(b & 15)];
        }
        let hex = core::str::from_utf8(&line[..2 * chunk.len()]).unwrap_or("");
        info!("mbi {:06x} {}", i * 32, hex);
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn banner(boot: &BootDescription, cpu: &cpu::CpuInfo) {
    info!(
        "cpu: vendor={} family={:#x} model={:#x} stepping={} brand=\"{}\" phys-bits={}",
        cpu.vendor, cpu.family, cpu.model, cpu.stepping, cpu.brand, cpu.max_phys_bits
    );
    match &cpu.vmx {
        None => info!("vmx: absent (CPUID.1:ECX.VMX=0)"),
        Some(c) => {
            info!(
                "vmx: present revision={:#x} feature-control={:#x} ({}) ept={} unrestricted-guest={} vpid={} spp={}",
                c.revision(),
                c.feature_control,
                if c.enabled_by_firmware() {
                    "enabled"
                } else if c.locked_off() {
                    "locked off"
                } else {
                    "unlocked"
                },
                yes(c.ept()),
                yes(c.unrestricted_guest()),
                yes(c.vpid()),
                yes(c.spp())
            );
            log::debug!(
                "vmx: cr0-fixed0={:#x} cr0-fixed1={:#x} cr4-fixed0={:#x} cr4-fixed1={:#x} pinbased={:#x} procbased={:#x} exit={:#x} entry={:#x}",
                c.cr0_fixed0,
                c.cr0_fixed1,
                c.cr4_fixed0,
                c.cr4_fixed1,
                c.pinbased,
                c.procbased,
                c.exit,
                c.entry
            );
            info!(
                "vmx: ept-vpid-cap={:#x} 2M={} 1G={} wb={} exec-only={} basic={:#x} procbased2={:#x}",
                c.ept_vpid,
                yes(c.ept_2m()),
                yes(c.ept_1g()),
                yes(c.ept_wb()),
                yes(c.ept_exec_only()),
                c.basic,
                c.procbased2
            );
        }
    }
    info!(
        "boot: loader={:?} cmdline={:?}",
        boot.boot_loader.as_deref().unwrap_or("?"),
        boot.cmdline
    );
    match boot.firmware {
        Firmware::Legacy => info!("boot: firmware=bios"),
        Firmware::Uefi { system_table } => {
            info!("boot: firmware=uefi efi-system-table={system_table:#x}")
        }
    }
    match boot.memory_source {
        MemorySource::Standard => {}
        MemorySource::Efi => info!("memory: taken from the EFI memory map (no multiboot2 map)"),
        MemorySource::None => warn!("memory: the boot loader passed no memory map"),
    }
    for r in &boot.memory {
        info!(
            "memory: [{:#012x}, {:#012x}) {}",
            r.start,
            r.end,
            r.kind.as_str()
        );
    }
    info!("memory: {} MiB usable RAM", boot.ram_bytes() >> 20);
    let (s, e) = layout::image();
    info!(
        "bulwark: region [{:#x}, {:#x}) image [{:#x}, {:#x})",
        layout::REGION_START,
        layout::REGION_END,
        s,
        e
    );
    for (i, m) in boot.modules.iter().enumerate() {
        info!(
            "module {}: [{:#x}, {:#x}) cmdline={:?}",
            i, m.start, m.end, m.cmdline
        );
    }
    match &boot.acpi {
        None => {
            warn!("acpi: no RSDP in the boot information");
            dma_warning(None);
        }
        Some(root) => {
            info!(
                "acpi: rsdp revision={} rsdt={:#x} xsdt={:#x}",
                root.revision,
                root.rsdt,
                root.xsdt.unwrap_or(0)
            );
            match acpi_info::summary(root) {
                Ok(s) => {
                    info!("acpi: {} CPU(s) in the MADT", s.cpus);
                    dma_warning(Some(s.dmar));
                }
                Err(e) => {
                    warn!("acpi: cannot count CPUs: {e}");
                    dma_warning(None);
                }
            }
        }
    }
}

/// Bulwark does not program an IOMMU on x86 yet (docs/x86_64.md, "DMA and VT-d"): say plainly
/// that the locks do not hold against devices, and whether the platform has the hardware that
/// would close the gap.
fn dma_warning(dmar: Option<bool>) {
    let iommu = match dmar {
        Some(true) => "the platform has VT-d (ACPI DMAR) but Bulwark does not program it yet",
        Some(false) => "the platform reports no IOMMU (no ACPI DMAR table)",
        None => "the ACPI tables could not be read, so no IOMMU is known",
    };
    warn!(
        "dma: unconfined: {iommu}; any bus-mastering device the guest programs can write past \
         ROE locks, attributes and Bulwark's own memory"
    );
}
