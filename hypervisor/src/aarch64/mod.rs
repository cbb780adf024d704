//! arm64 glue: the Rust entry reached from `boot/src/aarch64`, the banner, the memory plan, guest
//! loading and the run loop. Design and decisions: docs/aarch64.md.

mod guest;

use bulwark_aarch64::esr::{ec_name, Esr};
use bulwark_aarch64::vcpu::{el2_kind, El2Frame};
use bulwark_aarch64::{pl011, power, read_sysreg, vcpu};
use bulwark_abi::console::{reason, STATUS_BULWARK_FAILURE};
use bulwark_boot::fdt::{self, BootDescription, UartKind};
use core::sync::atomic::{AtomicBool, Ordering};

/// Raw bytes to the serial console (any context).
pub fn console_write(bytes: &[u8]) {
    pl011::write_bytes(bytes);
}

/// Bytes as they are, waiting for the FIFO.
pub fn console_write_raw(bytes: &[u8]) {
    pl011::write_raw(bytes);
}

/// What the PL011's FIFO takes now; never waits.
pub fn console_try_write(bytes: &[u8]) -> usize {
    pl011::try_write(bytes)
}

/// The guest writes the PL011 directly (pass-through).
pub const CONSOLE_SHARED: bool = true;

/// The per-boot key of the console lines' MAC (docs/console.md): 128 bits from RNDR where the
/// CPU has FEAT_RNG, mixed with the physical counter; the counter alone otherwise (weak: say so).
pub fn log_key() -> ([u8; 16], &'static str) {
    let mut words = [0u64; 6];
    let rng = bulwark_aarch64::rng::has_rndr();
    let mut got = 0;
    for w in words.iter_mut() {
        *w = read_sysreg!("cntpct_el0");
        if rng {
            if let Some(r) = bulwark_aarch64::rng::rndr() {
                *w ^= r;
                got += 1;
            }
        }
    }
    let source = if got == words.len() {
        "rndr"
    } else {
        "counter-weak"
    };
    (bulwark_abi::logauth::mix_key(&words), source)
}

/// Before one Bulwark line: take the UART back from whatever the guest set (see `pl011::claim`).
pub fn console_claim() -> Option<u32> {
    pl011::claim()
}

/// After one Bulwark line: give the guest its UART settings back.
pub fn console_release(saved: Option<u32>) {
    pl011::release(saved)
}

/// End the run with `status` (see `bulwark_aarch64::power`).
pub fn stop_machine(status: u32) -> ! {
    power::stop(status)
}

/// Largest device tree Bulwark accepts (the Linux boot protocol's limit).
const DT_MAX: usize = 2 << 20;

/// Entry from `boot/src/aarch64` at EL2, MMU on (identity), BSS zeroed, on the boot stack.
#[no_mangle]
pub extern "C" fn bulwark_aarch64_main(dtb: u64, el: u64) -> ! {
    vcpu::install_vectors();
    bulwark_aarch64::mem::init_heap();
    let key = log_key();
    crate::logger::init(log::LevelFilter::Info, key.0, key.1);
    log::info!("Bulwark {} (arm64) starting", env!("CARGO_PKG_VERSION"));

    let dt = match copy_device_tree(dtb) {
        Ok(dt) => dt,
        Err(e) => {
            log::error!("device tree at {dtb:#x}: {e}");
            crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED)
        }
    };
    let desc = match fdt::parse(dt) {
        Ok(d) => d,
        Err(e) => {
            log::error!("device tree at {dtb:#x}: {e}");
            crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED)
        }
    };
    match desc.uart {
        Some(u) if u.kind == UartKind::Pl011 => pl011::set_base(u.base.as_u64() as usize),
        Some(u) => log::warn!(
            "console {:?} at {:#x} is not a PL011; staying on {:#x}",
            u.kind,
            u.base,
            pl011::base()
        ),
        None => log::warn!(
            "device tree names no console UART; using {:#x}",
            pl011::base()
        ),
    }
    banner(el, dtb, &desc);
    guest::boot_and_run(dt, &desc)
}

/// Copy the device tree the loader gave us into Bulwark's own buffer (the original lies in what
/// becomes guest RAM and is overwritten when the guest is loaded).
fn copy_device_tree(dtb: u64) -> Result<&'static [u8], fdt::DtError> {
    use bulwark_aarch64::mem::{region, Region};
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return Err(fdt::DtError::BadHeader);
    }
    // SAFETY: x0 points at the device tree per the boot protocol; reading its 40-byte header is
    // within RAM the loader gave us (identity-mapped). The size read is bounded below.
    let head = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) };
    let size = fdt::claimed_size(head)?;
    let (s, e) = region(Region::DtIn);
    if size > DT_MAX || size > e - s || size < 40 {
        return Err(fdt::DtError::BadHeader);
    }
    // SAFETY: source: `size` bytes of the device tree (size checked against the 2 MiB limit);
    // destination: the linker-reserved DtIn buffer, used by nothing else, at least `size` long.
    // The two do not overlap (DtIn lies inside Bulwark's image, the loader placed the tree outside).
    unsafe {
        core::ptr::copy(dtb as *const u8, s as *mut u8, size);
        Ok(core::slice::from_raw_parts(s as *const u8, size))
    }
}

fn banner(el: u64, dtb: u64, d: &BootDescription<'_>) {
    let midr = read_sysreg!("midr_el1");
    let mmfr0 = read_sysreg!("id_aa64mmfr0_el1");
    let mmfr1 = read_sysreg!("id_aa64mmfr1_el1");
    let pa_bits = match mmfr0 & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 0,
    };
    let vmid_bits = if (mmfr1 >> 4) & 0xf == 2 { 16 } else { 8 };
    log::info!(
        "EL{el}, MIDR {midr:#010x} (implementer {:#04x} part {:#05x}), PARange {} ({pa_bits}-bit PA), VMID {vmid_bits}-bit",
        (midr >> 24) & 0xff,
        (midr >> 4) & 0xfff,
        mmfr0 & 0xf
    );
    log::info!("device tree at {dtb:#x}");
    for r in d.ram.iter() {
        log::info!(
            "memory: {:#x}..{:#x} ({} MiB)",
            r.base,
            r.end(),
            r.size >> 20
        );
    }
    for r in d.reserved.iter() {
        log::info!("reserved: {:#x}..{:#x}", r.base, r.end());
    }
    log::info!("cpus: {} {:x?}", d.cpus().len(), d.cpus());
    if let Some(u) = d.uart {
        log::info!("console: {:?} at {:#x}", u.kind, u.base);
    }
    if let Some(i) = d.initrd {
        log::info!("initrd (guest payload): {:#x}..{:#x}", i.base, i.end());
    }
    log::info!("bootargs: {:?}", d.bootargs.unwrap_or(""));
}

/// Entered at EL1 or EL3 (MMU off): say so and stop.
#[no_mangle]
pub extern "C" fn bulwark_aarch64_wrong_el(_dtb: u64, el: u64) -> ! {
    let key = log_key();
    crate::logger::init(log::LevelFilter::Info, key.0, key.1);
    log::error!(
        "entered at EL{el}: Bulwark must be entered at EL2 (QEMU: -M virt,virtualization=on; \
         firmware: boot the Image at EL2)"
    );
    crate::finish(STATUS_BULWARK_FAILURE, reason::REFUSED)
}

static IN_EL2_EXCEPTION: AtomicBool = AtomicBool::new(false);

/// Exceptions taken at EL2 itself (from `bulwark_aarch64::vcpu`'s vectors).
#[no_mangle]
pub extern "C" fn bulwark_el2_exception(frame: &mut El2Frame, kind: u64) {
    let esr = Esr(read_sysreg!("esr_el2"));
    if IN_EL2_EXCEPTION.swap(true, Ordering::AcqRel) {
        // An exception while reporting one: do not risk another; stop right away.
        crate::logger::write_line_unlocked(format_args!(
            "ERROR nested EL2 exception (esr {:#x} elr {:#x})",
            esr.0, frame.elr
        ));
        power::stop(STATUS_BULWARK_FAILURE)
    }
    let far = read_sysreg!("far_el2");
    crate::logger::write_line_unlocked(format_args!(
        "ERROR unexpected exception at EL2: {} (EC {:#x} {}), ESR {:#x}, FAR {:#x}, ELR {:#x}, SPSR {:#x}",
        el2_kind::name(kind),
        esr.ec(),
        ec_name(esr.ec()),
        esr.0,
        far,
        frame.elr,
        frame.spsr
    ));
    dump_regs(&frame.x);
    crate::logger::write_line_unlocked(format_args!(
        "result status={STATUS_BULWARK_FAILURE} reason=el2-exception"
    ));
    power::stop(STATUS_BULWARK_FAILURE)
}

/// Print x0..x30, four per line.
pub fn dump_regs(x: &[u64; 31]) {
    for (i, chunk) in x.chunks(4).enumerate() {
        let mut line = [0u64; 4];
        for (d, s) in line.iter_mut().zip(chunk) {
            *d = *s;
        }
        let n = i * 4;
        match chunk.len() {
            4 => crate::logger::write_line_unlocked(format_args!(
                "ERROR   x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}",
                n,
                line[0],
                n + 1,
                line[1],
                n + 2,
                line[2],
                n + 3,
                line[3]
            )),
            _ => crate::logger::write_line_unlocked(format_args!(
                "ERROR   x{:<2} {:#018x}  x{:<2} {:#018x}  x{:<2} {:#018x}",
                n,
                line[0],
                n + 1,
                line[1],
                n + 2,
                line[2]
            )),
        }
    }
}
