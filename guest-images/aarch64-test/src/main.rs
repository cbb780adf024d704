//! Self-checking arm64 test guest for Bulwark: an arm64 Image entered at EL1 with the MMU off and
//! x0 = its device tree. It turns on its own MMU (identity map, so Rust code may do unaligned
//! accesses), then checks:
//! 1. it runs at EL1;
//! 2. the device tree's memory: one range at the RAM base, containing this image and the tree;
//!    its last bytes are usable;
//! 3. an address inside Bulwark's memory is unreachable: the IPAs right above the device-tree
//!    memory (where Bulwark's 32 MiB would be in a 1:1 map; Bulwark's memory has no IPA at all)
//!    give a synchronous external abort, for reads and writes, and the guest survives;
//! 4. HVC: an unknown function returns NOT_SUPPORTED (-1); PSCI_VERSION, SMCCC_VERSION, the
//!    vendor-hyp UID and PSCI_FEATURES answer as documented; the device tree's PSCI conduit is HVC.
//!
//! It ends with PSCI SYSTEM_OFF when every check passed, else GUEST_EXIT with status 1.
//! Options in its command line (`/chosen/bootargs`):
//! * `exit=N`: end with GUEST_EXIT(N) after the checks (tests status propagation);
//! * `crash=loop`: point VBAR_EL1 at unmapped memory and fault (exception loop);
//! * `crash=unhandled`: fault and return to the faulting instruction forever.
#![no_std]
#![no_main]

use bulwark_abi::errno::smccc_ret::NOT_SUPPORTED_REG;
use bulwark_abi::smccc as ids;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       1f
    .long   0
    .quad   0x80000                 // text_offset
    .quad   __image_size
    .quad   0x2                     // LE, 4 KiB pages
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .long   0
1:
    mov     x19, x0
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2
    mov     x1, #(3 << 20)          // CPACR_EL1.FPEN: FP/SIMD on
    msr     cpacr_el1, x1
    isb
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:  ldr     x1, =__stack_top
    mov     sp, x1
    adr     x1, guest_vectors
    msr     vbar_el1, x1

    /* Identity map, 1 GiB blocks: first GiB device, 1..256 GiB normal, rest device. */
    adrp    x0, guest_l1
    add     x0, x0, :lo12:guest_l1
    mov     x1, #0
    ldr     x3, =0x0060000000000401     // Device-nGnRnE, AF, UXN|PXN
    mov     x4, #0x705                  // Normal WB, inner shareable, AF
4:  lsl     x2, x1, #30
    cmp     x1, #1
    b.lo    5f
    cmp     x1, #256
    b.hs    5f
    orr     x2, x2, x4
    b       6f
5:  orr     x2, x2, x3
6:  str     x2, [x0, x1, lsl #3]
    add     x1, x1, #1
    cmp     x1, #512
    b.lo    4b
    dsb     ish
    mov     x1, #0xff00
    msr     mair_el1, x1
    mrs     x1, id_aa64mmfr0_el1
    and     x1, x1, #0xf
    cmp     x1, #5
    mov     x2, #5
    csel    x1, x1, x2, ls
    ldr     x2, =0x00803519             // EPD1, SH0 inner, WB walks, 4 KiB, T0SZ 25
    orr     x2, x2, x1, lsl #32         // IPS
    msr     tcr_el1, x2
    msr     ttbr0_el1, x0
    isb
    tlbi    vmalle1
    dsb     ish
    isb
    ldr     x1, =0x30d0180d             // RES1 bits, M, C, I
    msr     sctlr_el1, x1
    isb

    mov     x0, x19
    mov     x1, x20
    bl      guest_main
7:  wfe
    b       7b

    .macro VEC kind
    .balign 128
    sub     sp, sp, #272
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       guest_vec_common
    .endm

    .balign 2048
guest_vectors:
    VEC 0
    VEC 1
    VEC 2
    VEC 3
    VEC 4
    VEC 5
    VEC 6
    VEC 7
    VEC 8
    VEC 9
    VEC 10
    VEC 11
    VEC 12
    VEC 13
    VEC 14
    VEC 15

guest_vec_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    mov     x0, x1
    bl      guest_exception
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #272
    eret

    .section .bss.guest_l1, "aw", @nobits
    .balign 4096
guest_l1:
    .space  4096
"#
);

const UART: usize = 0x0900_0000;
/// QEMU virt's RAM base, where Bulwark places guest RAM (IPA).
const RAM_BASE: u64 = 0x4000_0000;

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: QEMU virt's PL011 data register, identity-mapped device memory; Bulwark
            // passes the UART through to the guest.
            unsafe { core::ptr::write_volatile(UART as *mut u32, u32::from(b)) };
        }
        Ok(())
    }
}

macro_rules! say {
    ($($a:tt)*) => {{
        let _ = writeln!(Uart, $($a)*);
    }};
}

mod attr;
mod bench;
mod breach;
mod demo;
mod dma;
mod flood;
mod forge;
mod gic;
mod hcfuzz;
mod highmem;
mod matrix;
mod mmio_guard;
mod mte;
mod roe;
mod smccc_probe;
mod stepaif;
mod sve;

fn read_esr_far() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reading EL1 syndrome registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack));
        core::arch::asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack));
    }
    (esr, far)
}

/// Set while a probe expects an abort; the handler then records it and skips the instruction.
static EXPECT_ABORT: AtomicBool = AtomicBool::new(false);
/// `crash=unhandled`: the handler returns to the faulting instruction.
static NEVER_SKIP: AtomicBool = AtomicBool::new(false);
static LAST_ESR: AtomicU64 = AtomicU64::new(0);
static LAST_FAR: AtomicU64 = AtomicU64::new(0);
static ABORTS: AtomicU64 = AtomicU64::new(0);

#[no_mangle]
extern "C" fn guest_exception(kind: u64) {
    let (esr, far) = read_esr_far();
    ABORTS.fetch_add(1, Ordering::Relaxed);
    if NEVER_SKIP.load(Ordering::Relaxed) {
        return;
    }
    if kind == 8 {
        // From EL0 (roe.rs drops there to show that HVC/SMC are undefined at EL0).
        roe::el0_trap(esr);
        return;
    }
    if kind == 4 && EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        LAST_ESR.store(esr, Ordering::Relaxed);
        LAST_FAR.store(far, Ordering::Relaxed);
        let elr: u64;
        // SAFETY: skip the faulting (single, 4-byte) probe instruction.
        unsafe {
            core::arch::asm!("mrs {}, elr_el1", out(reg) elr, options(nomem, nostack));
            core::arch::asm!("msr elr_el1, {}", in(reg) elr + 4, options(nomem, nostack));
        }
        return;
    }
    say!("testguest: FAIL unexpected exception kind {kind} esr {esr:#x} far {far:#x}");
    guest_exit(2)
}

fn hvc(x0: u64, x1: u64, x2: u64, x3: u64) -> [u64; 4] {
    let (a, b, c, d);
    // SAFETY: SMCCC call to the hypervisor; x0-x3 carry arguments and results; SMCCC 1.1 lets
    // the callee clobber x4-x17.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") x0 => a, inout("x1") x1 => b, inout("x2") x2 => c, inout("x3") x3 => d,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    [a, b, c, d]
}

fn guest_exit(status: u32) -> ! {
    say!("testguest: ending with GUEST_EXIT({status})");
    hvc(u64::from(ids::BULWARK_GUEST_EXIT), u64::from(status), 0, 0);
    say!("testguest: GUEST_EXIT returned");
    loop {
        core::hint::spin_loop();
    }
}

fn system_off() -> ! {
    say!("testguest: PSCI SYSTEM_OFF");
    hvc(u64::from(ids::PSCI_SYSTEM_OFF), 0, 0, 0);
    say!("testguest: SYSTEM_OFF returned");
    guest_exit(3)
}

/// One load or store at `addr`; `Err(esr)` when it aborted.
fn probe(addr: u64, write: bool) -> Result<(), u64> {
    EXPECT_ABORT.store(true, Ordering::Release);
    // SAFETY: deliberately touches an address that may not exist; the exception handler skips
    // the single instruction when it aborts. `addr` is in the identity-mapped Normal range.
    unsafe {
        if write {
            core::arch::asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) 0x5a5a_u64, options(nostack));
        } else {
            core::arch::asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) _, options(nostack));
        }
    }
    if EXPECT_ABORT.swap(false, Ordering::AcqRel) {
        Ok(())
    } else {
        Err(LAST_ESR.load(Ordering::Relaxed))
    }
}

/// A page of its own for the ROE tests (nothing else lives in it).
#[repr(C, align(4096))]
struct Page(core::cell::UnsafeCell<[u64; 512]>);
// SAFETY: one CPU; the pages are only touched through volatile accesses in `roe_checks`.
unsafe impl Sync for Page {}
static ROE_PAGE: Page = Page(core::cell::UnsafeCell::new([0x1111; 512]));
static CHUNK_PAGE: Page = Page(core::cell::UnsafeCell::new([0; 512]));

fn rd(p: u64) -> u64 {
    // SAFETY: `p` is an 8-byte aligned address inside one of the test pages.
    unsafe { core::ptr::read_volatile(p as *const u64) }
}

/// One `str` (so an emulated or skipped store is exactly one instruction).
fn st(p: u64, v: u64) {
    // SAFETY: `p` lies inside one of the test pages (identity-mapped normal memory).
    unsafe { core::arch::asm!("str {v}, [{a}]", a = in(reg) p, v = in(reg) v, options(nostack)) }
}

fn roe(op: u64, a1: u64, a2: u64) -> u64 {
    hvc(u64::from(ids::BULWARK_ROE), op, a1, a2)[0]
}

/// ROE on arm64 (Bulwark's vendor-hyp call; default violation policy `skip`).
fn roe_checks(c: &mut Checks) {
    use bulwark_abi::roe::{ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION};
    let einval = (-22i64) as u64;
    c.check(
        roe(ROE_VERSION, 0, 0) == 2,
        format_args!("ROE_VERSION -> 2"),
    );
    let page = ROE_PAGE.0.get() as u64;
    c.check(
        roe(ROE_MPROTECT, page + 8, 1) == einval,
        format_args!("ROE_MPROTECT unaligned -> -EINVAL"),
    );
    c.check(
        roe(ROE_MPROTECT, page, 0) == einval,
        format_args!("ROE_MPROTECT of 0 pages -> -EINVAL"),
    );
    let r = roe(ROE_MPROTECT, page, 1);
    c.check(
        r == 1,
        format_args!("ROE_MPROTECT {page:#x}, 1 page -> {r}"),
    );
    let before = ABORTS.load(Ordering::Relaxed);
    st(page + 64, 0x2222);
    c.check(
        rd(page + 64) == 0x1111 && ABORTS.load(Ordering::Relaxed) == before,
        format_args!(
            "write to the ROE page skipped, guest continues (reads {:#x})",
            rd(page + 64)
        ),
    );
    let chunk = CHUNK_PAGE.0.get() as u64;
    for i in 0..4 {
        st(chunk + 8 * i, 0xaaaa_aaaa_aaaa_aaaa);
    }
    let r = roe(ROE_MPROTECT_CHUNK, chunk + 8, 8);
    c.check(
        r == 8,
        format_args!("ROE_MPROTECT_CHUNK {:#x}, 8 bytes -> {r}", chunk + 8),
    );
    st(chunk + 16, 0x1234);
    c.check(
        rd(chunk + 16) == 0x1234,
        format_args!("store next to the chunk emulated ({:#x})", rd(chunk + 16)),
    );
    st(chunk + 8, 0x5555);
    c.check(
        rd(chunk + 8) == 0xaaaa_aaaa_aaaa_aaaa,
        format_args!("store onto the chunk skipped"),
    );
    st(chunk + 4, 0);
    c.check(
        rd(chunk) == 0x0000_0000_aaaa_aaaa && rd(chunk + 8) == 0xaaaa_aaaa_aaaa_aaaa,
        format_args!("store straddling the chunk start writes only the unprotected half"),
    );
}

struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
        if ok {
            say!("testguest: ok   {what}");
        } else {
            self.failed += 1;
            say!("testguest: FAIL {what}");
        }
    }
}

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

#[no_mangle]
extern "C" fn guest_main(dtb: u64, el: u64) -> ! {
    say!("testguest: started, x0 (device tree) = {dtb:#x}");
    let mut c = Checks { failed: 0 };
    c.check(el == 1, format_args!("running at EL{el} (want EL1)"));

    // The device tree.
    let header = if dtb != 0 && dtb.is_multiple_of(8) {
        // SAFETY: x0 names the device tree (boot protocol); its 40-byte header is read first.
        Some(unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) })
    } else {
        None
    };
    let size = header
        .and_then(|h| h.get(4..8))
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .unwrap_or(0);
    // SAFETY: `size` bytes from the header's totalsize, bounded to the 2 MiB the protocol allows.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(2 << 20)) };
    let mut mem: Option<(u64, u64)> = None;
    let mut ranges = 0;
    let mut bootargs: &str = "";
    let mut psci_hvc = false;
    match fdt::Fdt::new_unaligned_fallible(blob) {
        Err(e) => c.check(false, format_args!("device tree parses: {e}")),
        Ok(tree) => {
            if let Ok(root) = tree.root() {
                if let Ok(Some(m)) = root.find_node("/memory") {
                    if let Ok(Some(reg)) = m.reg() {
                        for e in reg.iter::<u64, u64>().flatten() {
                            ranges += 1;
                            mem = Some((e.address, e.len));
                        }
                    }
                }
                if let Ok(Some(ch)) = root.find_node("/chosen") {
                    if let Ok(Some(p)) = ch.raw_property("bootargs") {
                        bootargs = core::str::from_utf8(p.value)
                            .unwrap_or("")
                            .trim_end_matches('\0');
                    }
                }
                if let Ok(Some(p)) = root.find_node("/psci") {
                    if let Ok(Some(m)) = p.raw_property("method") {
                        psci_hvc = m.value == b"hvc\0";
                    }
                }
            }
        }
    }
    say!("testguest: bootargs \"{bootargs}\"");
    if let Some(s) = bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix("scenario=attr"))
    {
        attr::run(s)
    }
    if let Some(row) = bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix("scenario=bench:"))
    {
        bench::run(row)
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=matrix")
    {
        matrix::run(bootargs)
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=hcfuzz")
    {
        hcfuzz::run(bootargs)
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=flood")
    {
        flood::run()
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=demo")
    {
        demo::run()
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=mmio-reset")
    {
        mmio_guard::reset()
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=reset-loop")
    {
        mmio_guard::reset_loop()
    }
    if bootargs
        .split_ascii_whitespace()
        .any(|t| t == "scenario=roe-stp")
    {
        roe::stp_first()
    }
    match bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix("scenario="))
    {
        Some("fwcfg") => breach::fwcfg(dtb, bootargs),
        Some("fwcfg-pass") => breach::fwcfg_pass(dtb),
        Some("semihost") => breach::semihosting(),
        Some("walk-noread") => breach::walk_noread(),
        Some("third-page") => breach::third_page(),
        Some("highmem") => highmem::run(mem),
        Some("forge") => forge::run(mem.map_or(RAM_BASE, |(b, s)| b.saturating_add(s))),
        Some(d @ ("dma" | "dma-nopci")) => dma::dispatch(d, dtb, mem),
        Some("smccc-linux") => smccc_probe::run(bootargs),
        Some("sve") => sve::run(),
        Some("mte") => mte::run(mem.map_or(0, |(b, s)| b.saturating_add(s))),
        _ => {}
    }
    let (img_s, img_e) = (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__image_end) as u64,
    );
    let (mb, ms) = mem.unwrap_or((0, 0));
    let me = mb.saturating_add(ms);
    c.check(
        ranges == 1 && mb == RAM_BASE && ms > 0,
        format_args!("device-tree memory: {ranges} range(s), {mb:#x}..{me:#x}"),
    );
    c.check(
        img_s >= mb && img_e <= me && dtb >= mb && dtb < me,
        format_args!("image {img_s:#x}..{img_e:#x} and device tree inside that memory"),
    );
    c.check(
        psci_hvc,
        format_args!("PSCI conduit in the device tree is hvc"),
    );
    if ms > 4096 {
        let last = me - 8;
        let ok = probe(last, true).is_ok() && probe(last, false).is_ok();
        c.check(ok, format_args!("last bytes of memory usable ({last:#x})"));
    }

    let mode_exit = bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix("exit="))
        .and_then(|n| n.parse::<u32>().ok());
    let crash = bootargs
        .split_ascii_whitespace()
        .find_map(|t| t.strip_prefix("crash="));

    // Above the device-tree memory: where Bulwark's memory would be in a 1:1 map.
    if ms > 0 {
        for (off, write) in [
            (0u64, false),
            (0, true),
            (16 << 20, true),
            ((32 << 20) - 8, false),
        ] {
            let a = me + off;
            let before = ABORTS.load(Ordering::Relaxed);
            let r = probe(a, write);
            let esr = r.err().unwrap_or(0);
            let ec = (esr >> 26) & 0x3f;
            let fsc = esr & 0x3f;
            let wnr = esr & (1 << 6) != 0;
            let far = LAST_FAR.load(Ordering::Relaxed);
            c.check(
                r.is_err() && ec == 0x25 && fsc == 0x10 && wnr == write && far == a
                    && ABORTS.load(Ordering::Relaxed) == before + 1,
                format_args!(
                    "{} at {a:#x} (past memory end) -> synchronous external abort (esr {esr:#x}, far {far:#x})",
                    if write { "write" } else { "read" }
                ),
            );
        }
    }

    // SMCCC through HVC.
    let r = hvc(0xC600_0999, 0, 0, 0);
    c.check(
        r[0] == NOT_SUPPORTED_REG,
        format_args!("unknown HVC 0xc6000999 -> {:#x} (NOT_SUPPORTED)", r[0]),
    );
    let r = hvc(0x8200_0001, 0, 0, 0);
    c.check(
        r[0] == NOT_SUPPORTED_REG,
        format_args!(
            "unknown HVC 0x82000001 (SiP) -> {:#x} (NOT_SUPPORTED)",
            r[0]
        ),
    );
    let r = hvc(u64::from(ids::PSCI_VERSION), 0, 0, 0);
    c.check(
        r[0] == ids::PSCI_VERSION_1_0,
        format_args!("PSCI_VERSION -> {:#x}", r[0]),
    );
    let r = hvc(u64::from(ids::SMCCC_VERSION), 0, 0, 0);
    c.check(
        r[0] == ids::SMCCC_VERSION_1_1,
        format_args!("SMCCC_VERSION -> {:#x}", r[0]),
    );
    let r = hvc(
        u64::from(ids::PSCI_FEATURES),
        u64::from(ids::PSCI_SYSTEM_OFF),
        0,
        0,
    );
    c.check(
        r[0] == 0,
        format_args!("PSCI_FEATURES(SYSTEM_OFF) -> {:#x}", r[0]),
    );
    let r = hvc(u64::from(ids::VENDOR_HYP_CALL_UID), 0, 0, 0);
    let uid = ids::KVM_UID.map(u64::from);
    c.check(r == uid, format_args!("vendor-hyp UID -> {:x?}", r));

    let inject = bootargs
        .split_ascii_whitespace()
        .any(|t| t == "policy=inject");
    if !inject {
        roe_checks(&mut c);
    }
    roe::checks(&mut c, inject, me);
    gic::checks(&mut c);
    stepaif::checks(&mut c);
    mmio_guard::checks(&mut c);

    match crash {
        Some("loop") => {
            say!("testguest: crash=loop: VBAR_EL1 -> unmapped memory, then an abort");
            // SAFETY: deliberately breaks the guest's own exception handling.
            unsafe { core::arch::asm!("msr vbar_el1, {}", "isb", in(reg) me + (8 << 20)) };
            let _ = probe(me, false);
            say!("testguest: FAIL survived crash=loop");
            guest_exit(4)
        }
        Some("unhandled") => {
            say!("testguest: crash=unhandled: an abort the handler never gets past");
            NEVER_SKIP.store(true, Ordering::Release);
            let _ = probe(me, false);
            say!("testguest: FAIL survived crash=unhandled");
            guest_exit(4)
        }
        Some(other) => {
            say!("testguest: unknown crash={other}");
            guest_exit(5)
        }
        None => {}
    }

    if c.failed != 0 {
        say!("testguest: {} check(s) FAILED", c.failed);
        guest_exit(1)
    }
    say!("testguest: all checks passed");
    match mode_exit {
        Some(n) => guest_exit(n),
        None => system_off(),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("testguest: panic: {info}");
    guest_exit(6)
}
