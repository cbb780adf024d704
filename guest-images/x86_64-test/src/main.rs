//! Bulwark's x86_64 self-checking test guest: a Multiboot (v1) kernel (32-bit entry in
//! `entry.s`, then its own switch to long mode with 4-level paging).
//!
//! It checks its environment and reports through port 0xf4 (isa-debug-exit convention): status 0
//! when every check passed, otherwise the number of failed checks. Its command line (the
//! multiboot2 module string Bulwark passes on) selects a scenario:
//!
//! * (none) or `scenario=checks`: CPUID (VMX hidden, Bulwark leaves), memory map (Bulwark's region
//!   absent), feature-control / VMX MSRs and CR4.VMXE refused, XSETBV, an unknown VMCALL
//!   (-1000), the command line itself, I/O to an absent port.
//! * `scenario=read-bulwark`: read Bulwark's memory; Bulwark must stop the guest (failure
//!   status), never return the data.
//! * `scenario=triple-fault`: load an empty IDT and raise #BP: the CPU triple-faults; Bulwark
//!   must end the run with a failure status.
//! * `scenario=unhandled-exit`: execute INVD, an instruction that always exits and that Bulwark
//!   deliberately does not emulate; Bulwark must stop the guest with a failure status.
//! * `scenario=status:N`: print a line and exit with status N (checks the status path).
#![no_std]
#![no_main]

use bulwark_abi::cpuid;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

core::arch::global_asm!(include_str!("entry.s"), options(att_syntax));

const MULTIBOOT_MAGIC: u32 = 0x2bad_b002;
/// Bulwark's fixed region on x86_64 (docs/x86_64.md): never guest RAM.
const BULWARK_REGION: (u64, u64) = (0x0400_0000, 0x0600_0000);
const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
/// Bulwark's no-device port (trapped and emulated: reads all ones, writes dropped); every port
/// outside COM1 and 0xf4-0xf7 goes to the hardware.
const NO_DEVICE_PORT: u16 = 0xf5;
/// An unassigned hypercall number.
const UNKNOWN_HYPERCALL: u64 = 0x7fff_0001;

fn outb(port: u16, v: u8) {
    // SAFETY: port output; the guest is ring 0 and Bulwark traps every port.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

fn outl(port: u16, v: u32) {
    // SAFETY: as above.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as above.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) }
    v
}

struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // Wait for the transmitter holding register to be empty (LSR bit 5).
            let mut n = 0u32;
            while inb(COM1 + 5) & 0x20 == 0 && n < 1_000_000 {
                n += 1;
            }
            outb(COM1, b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Com1, $($t)*); }};
}

mod attr;
mod bench;
mod flood;
mod forge;
mod hcfuzz;
mod matrix;
mod platform;
mod roe;
mod spp;

fn exit(status: u32) -> ! {
    outl(DEBUG_EXIT, status);
    // Bulwark ends the run on the write above; if it did not, say so and halt forever.
    say!("FAIL: still running after writing {status} to port 0xf4");
    loop {
        // SAFETY: halting is always allowed in ring 0.
        unsafe { core::arch::asm!("cli; hlt") }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("FAIL panic: {info}");
    exit(0xfe)
}

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn vmcall(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret: u64;
    // SAFETY: VMCALL traps to Bulwark, which returns in RAX; RBX is saved around the call
    // because the compiler reserves it.
    unsafe {
        core::arch::asm!(
            "xchg rbx, {a0}",
            "vmcall",
            "xchg rbx, {a0}",
            a0 = inout(reg) a0 => _,
            inout("rax") nr => ret,
            in("rcx") a1,
            in("rdx") a2,
            options(nostack)
        );
    }
    ret
}

// ---- Exceptions -------------------------------------------------------------------------------

/// Saved by the stubs: vector, error code, then the CPU's frame.
#[repr(C)]
struct Frame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// When non-zero, the next #GP resumes here instead of failing the run.
static GP_RESUME: AtomicU64 = AtomicU64::new(0);
static GP_SEEN: AtomicU64 = AtomicU64::new(0);
static GP_CODE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Run `insn` (one instruction, operands fixed by the caller's registers) expecting #GP; returns
/// whether it raised #GP. The exception handler resumes right after it.
macro_rules! expect_gp {
    ($insn:literal $(, $($op:tt)*)?) => {{
        GP_SEEN.store(0, Ordering::SeqCst);
        // SAFETY: the instruction may raise #GP; the handler resumes at label 2.
        unsafe {
            core::arch::asm!(
                "lea {r}, [rip + 2f]",
                "mov [{resume}], {r}",
                $insn,
                "2:",
                r = out(reg) _,
                resume = in(reg) GP_RESUME.as_ptr(),
                $($($op)*)?
            );
        }
        GP_RESUME.store(0, Ordering::SeqCst);
        GP_SEEN.load(Ordering::SeqCst) == 1 && GP_CODE.load(Ordering::SeqCst) == 0
    }};
}

#[no_mangle]
extern "C" fn guest_exception(f: &mut Frame) {
    if f.vector == 13 {
        let resume = GP_RESUME.swap(0, Ordering::SeqCst);
        if resume != 0 {
            GP_SEEN.fetch_add(1, Ordering::SeqCst);
            GP_CODE.store(f.error_code, Ordering::SeqCst);
            f.rip = resume;
            return;
        }
    }
    say!(
        "FAIL unexpected exception vector={} error={:#x} rip={:#x}",
        f.vector,
        f.error_code,
        f.rip
    );
    exit(0xfd)
}

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
guest_exc_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    lea rdi, [rsp + 72]
    push rbx
    mov rbx, rsp
    and rsp, -16
    call guest_exception
    mov rsp, rbx
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
"#
);

macro_rules! stubs {
    ($($v:literal $err:literal),* $(,)?) => {
        core::arch::global_asm!(
            $(
                concat!(".section .text\n.balign 16\nguest_exc_", $v, ":\n"),
                concat!(".if ", $err, " == 0\n push 0\n .endif\n"),
                concat!("push ", $v, "\njmp guest_exc_common\n"),
            )*
            ".section .rodata\n.balign 8\n.global guest_exc_stubs\nguest_exc_stubs:\n",
            $( concat!(".quad guest_exc_", $v, "\n"), )*
        );
    };
}

stubs!(
    0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 9 0, 10 1, 11 1, 12 1, 13 1, 14 1, 15 0,
    16 0, 17 1, 18 0, 19 0, 20 0, 21 1, 22 0, 23 0, 24 0, 25 0, 26 0, 27 0, 28 0, 29 1, 30 1, 31 0,
);

extern "C" {
    static guest_exc_stubs: [u64; 32];
}

#[repr(C, align(16))]
struct Idt([u64; 64]);

static mut IDT: Idt = Idt([0; 64]);

fn install_idt() {
    // SAFETY: single-threaded guest; IDT is only written here, before interrupts can occur.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (v, &a) in guest_exc_stubs.iter().enumerate() {
            let low = (a & 0xffff) | (0x08 << 16) | (0x8e00u64 << 32) | ((a >> 16) & 0xffff) << 48;
            idt.0[2 * v] = low;
            idt.0[2 * v + 1] = a >> 32;
        }
        let idtr: [u16; 5] = {
            let base = idt as *const Idt as u64;
            [
                (core::mem::size_of::<Idt>() - 1) as u16,
                base as u16,
                (base >> 16) as u16,
                (base >> 32) as u16,
                (base >> 48) as u16,
            ]
        };
        core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
}

// ---- Multiboot information --------------------------------------------------------------------

/// Read a u32 of the Multiboot information (identity mapped).
fn mb_u32(addr: u64) -> u32 {
    // SAFETY: the loader put the Multiboot information (and what it points to) in guest RAM,
    // identity mapped by entry.s.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

fn mb_u64(addr: u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

fn cstr(addr: u64) -> &'static str {
    let mut n = 0usize;
    // SAFETY: as above; the string is NUL-terminated (bounded at 4 KiB here).
    while n < 4096 && unsafe { *((addr + n as u64) as *const u8) } != 0 {
        n += 1;
    }
    // SAFETY: as above.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, n) };
    core::str::from_utf8(bytes).unwrap_or("<not utf-8>")
}

struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments) {
        if ok {
            say!("PASS {name}: {detail}");
        } else {
            self.failed += 1;
            say!("FAIL {name}: {detail}");
        }
    }
}

#[no_mangle]
extern "C" fn guest_main(magic: u32, info: u64) -> ! {
    install_idt();
    say!("Bulwark x86_64 test guest, Multiboot info at {info:#x}");
    if magic != MULTIBOOT_MAGIC {
        say!("FAIL multiboot magic {magic:#x}");
        exit(0xfc);
    }
    let flags = mb_u32(info);
    let cmdline = if flags & (1 << 2) != 0 {
        cstr(u64::from(mb_u32(info + 16)))
    } else {
        ""
    };
    say!("command line: {cmdline:?}");
    let scenario = cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("scenario="))
        .unwrap_or("checks");
    match scenario {
        "checks" => checks(info, flags, cmdline),
        s if roe::handles(s) => roe::run(s),
        s if attr::handles(s) => attr::run(s, cmdline),
        s if spp::handles(s) => spp::run(s),
        s if bench::handles(s) => bench::run(s),
        s if forge::handles(s) => forge::run(),
        "flood" => flood::run(),
        "hcfuzz" => hcfuzz::run(cmdline),
        "matrix" => matrix::run(cmdline),
        s if platform::handles(s) => platform::run(s),
        "triple-fault" => triple_fault(),
        "read-bulwark" => read_bulwark(),
        "roe" => roe(),
        "unhandled-exit" => {
            say!("executing INVD (Bulwark does not emulate it)");
            // SAFETY: INVD always exits to Bulwark in VMX non-root operation.
            unsafe { core::arch::asm!("invd") };
            say!("FAIL: INVD returned");
            exit(0xfb)
        }
        s => match s.strip_prefix("status:").map(str::parse::<u32>) {
            Some(Ok(n)) => {
                say!("exiting with status {n} as asked");
                exit(n)
            }
            _ => {
                say!("FAIL unknown scenario {s:?}");
                exit(0xfa)
            }
        },
    }
}

#[repr(C, align(4096))]
struct PageBuf([u8; 4096]);

/// A data page the `roe` scenario makes read-only (identity mapped: its address is also its
/// guest-physical address).
static mut ROE_PAGE: PageBuf = PageBuf([0x11; 4096]);

/// ROE (spec section 1) through the core: version, MPROTECT of one page, a write to it that must
/// not change it (default policy `skip`), and bad arguments.
fn roe() -> ! {
    use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT, ROE_VERSION};
    let mut c = Checks { failed: 0 };
    let v = vmcall(KVM_HC_ROE, ROE_VERSION, 0, 0);
    c.check("roe-version", v == 2, format_args!("{v}"));
    let page = core::ptr::addr_of_mut!(ROE_PAGE) as u64;
    let bad = vmcall(KVM_HC_ROE, ROE_MPROTECT, page + 1, 1) as i64;
    c.check("roe-unaligned", bad == -22, format_args!("{bad}"));
    let zero = vmcall(KVM_HC_ROE, ROE_MPROTECT, page, 0) as i64;
    c.check("roe-zero-pages", zero == -22, format_args!("{zero}"));
    let r = vmcall(KVM_HC_ROE, ROE_MPROTECT, page, 1);
    c.check(
        "roe-mprotect",
        r == 1,
        format_args!("protect {page:#x}: {r}"),
    );
    // What a violating write does depends on Bulwark's policy (CPUID leaf 0x40000001).
    let policy = cpuid::Features::decode(cpuid(cpuid::LEAF_FEATURES, 0))
        .map(|f| f.policy)
        .unwrap_or(bulwark_abi::policy::ViolationPolicy::Skip);
    let target = page + 8;
    match policy {
        bulwark_abi::policy::ViolationPolicy::Inject => {
            let gp = expect_gp!("mov byte ptr [{t}], 0x22", t = in(reg) target, options(nostack));
            c.check(
                "roe-write-inject",
                gp,
                format_args!("write to the protected page raised #GP: {gp}"),
            );
        }
        p => {
            say!("writing to the protected page (policy {})", p.as_str());
            // SAFETY: a plain store to the guest's own page; Bulwark skips it (policy skip) or
            // stops the run (policy halt).
            unsafe { core::ptr::write_volatile(target as *mut u8, 0x22) };
        }
    }
    // SAFETY: reading the guest's own page.
    let after = unsafe { core::ptr::read_volatile(target as *const u8) };
    c.check(
        "roe-write-refused",
        after == 0x11,
        format_args!("byte after the write: {after:#x}"),
    );
    let again = vmcall(KVM_HC_ROE, ROE_MPROTECT, page, 1);
    c.check("roe-idempotent", again == 1, format_args!("{again}"));
    say!("{} check(s) failed", c.failed);
    exit(c.failed)
}

/// Read Bulwark's memory. Bulwark must never hand out its contents: the access is refused by
/// EPT and Bulwark stops the guest (the run ends with a failure status and a log line naming the
/// address). Reaching the end of this function is a failure.
fn read_bulwark() -> ! {
    let target = BULWARK_REGION.0 + 0x10;
    say!("reading Bulwark's memory at {target:#x}: expect the run to be stopped");
    // SAFETY: a plain read; Bulwark stops the guest on it (EPT violation outside guest memory).
    let v = unsafe { core::ptr::read_volatile(target as *const u32) };
    say!("FAIL: read {v:#x} from Bulwark's memory");
    exit(0xf8)
}

fn rdmsr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR Bulwark emulates (the caller knows it exists for the guest).
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi, options(nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn triple_fault() -> ! {
    say!("loading an empty IDT and raising #BP: expect a triple fault");
    let idtr: [u16; 5] = [0; 5];
    // SAFETY: deliberately fatal: with a zero-limit IDT, #BP escalates to #DF and a triple fault.
    unsafe {
        core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr, options(nostack));
    }
    say!("FAIL: survived a triple fault");
    exit(0xf9)
}

fn checks(info: u64, flags: u32, cmdline: &str) -> ! {
    let mut c = Checks { failed: 0 };

    // CPUID: VMX hidden, Bulwark's leaves present.
    let l1 = cpuid(1, 0);
    c.check(
        "cpuid-vmx-hidden",
        l1[2] & (1 << 5) == 0,
        format_args!("CPUID.1:ECX={:#x}", l1[2]),
    );
    c.check(
        "cpuid-hypervisor-bit",
        l1[2] & (1 << 31) != 0,
        format_args!("CPUID.1:ECX bit 31"),
    );
    let sig = cpuid(cpuid::LEAF_SIGNATURE, 0);
    c.check(
        "cpuid-signature",
        cpuid::is_bulwark(sig[1], sig[2], sig[3]) && sig[0] >= cpuid::LEAF_FEATURES,
        format_args!("max leaf {:#x}", sig[0]),
    );
    let feat = cpuid(cpuid::LEAF_FEATURES, 0);
    let decoded = cpuid::Features::decode(feat);
    c.check(
        "cpuid-features",
        decoded.is_ok(),
        format_args!("{:x?} -> {:?}", feat, decoded),
    );

    // Memory map: present, and no RAM in Bulwark's region.
    let mut ram = 0u64;
    let mut overlaps = 0u32;
    let mut entries = 0u32;
    if flags & (1 << 6) != 0 {
        let len = u64::from(mb_u32(info + 44));
        let base = u64::from(mb_u32(info + 48));
        let mut p = base;
        while p < base + len && entries < 128 {
            let size = u64::from(mb_u32(p));
            let addr = mb_u64(p + 4);
            let length = mb_u64(p + 12);
            let typ = mb_u32(p + 20);
            say!(
                "mmap: [{:#012x}, {:#012x}) type {}",
                addr,
                addr + length,
                typ
            );
            if typ == 1 {
                ram += length;
                if addr < BULWARK_REGION.1 && addr + length > BULWARK_REGION.0 {
                    overlaps += 1;
                }
            }
            entries += 1;
            p += size + 4;
        }
    }
    c.check(
        "memory-map",
        entries > 0 && ram > 16 << 20,
        format_args!("{entries} entries, {} MiB RAM", ram >> 20),
    );
    c.check(
        "memory-map-excludes-bulwark",
        overlaps == 0,
        format_args!(
            "{overlaps} RAM entries overlap [{:#x}, {:#x})",
            BULWARK_REGION.0, BULWARK_REGION.1
        ),
    );
    if flags & 1 != 0 {
        say!(
            "mem_lower={} KiB mem_upper={} KiB",
            mb_u32(info + 4),
            mb_u32(info + 8)
        );
    }

    // VMX stays hidden: feature control reads "locked, VMX off" and cannot be written; the VMX
    // capability MSRs do not exist; CR4.VMXE cannot be set.
    let fc = rdmsr(0x3a);
    c.check(
        "feature-control-read",
        fc == 1,
        format_args!("IA32_FEATURE_CONTROL = {fc:#x}"),
    );
    let gp_w = expect_gp!("wrmsr", in("ecx") 0x3a, in("eax") 5, in("edx") 0, options(nostack));
    c.check(
        "feature-control-write",
        gp_w && rdmsr(0x3a) == 1,
        format_args!("WRMSR 0x3a raised #GP: {gp_w}"),
    );
    let gp_r = expect_gp!("rdmsr", in("ecx") 0x480, out("eax") _, out("edx") _, options(nostack));
    c.check(
        "vmx-basic-msr-absent",
        gp_r,
        format_args!("RDMSR IA32_VMX_BASIC raised #GP: {gp_r}"),
    );
    let gp_cr4 = expect_gp!(
        "mov {t}, cr4\n or {t}, {vmxe}\n mov cr4, {t}",
        t = out(reg) _,
        vmxe = const 1 << 13,
        options(nostack)
    );
    c.check(
        "cr4-vmxe-refused",
        gp_cr4,
        format_args!("setting CR4.VMXE raised #GP: {gp_cr4}"),
    );

    // XSETBV is emulated: enable OSXSAVE, set XCR0 = x87|SSE, read it back.
    if l1[2] & (1 << 26) != 0 {
        let xcr0: u64;
        // SAFETY: the CPU reports XSAVE; OSXSAVE and XCR0 = 3 are always valid then.
        unsafe {
            core::arch::asm!(
                "mov {t}, cr4",
                "or {t}, {osx}",
                "mov cr4, {t}",
                "xor ecx, ecx",
                "mov eax, 3",
                "xor edx, edx",
                "xsetbv",
                "xor ecx, ecx",
                "xgetbv",
                "shl rdx, 32",
                "or rax, rdx",
                t = out(reg) _,
                osx = const 1 << 18,
                out("rax") xcr0,
                out("rcx") _,
                out("rdx") _,
                options(nostack)
            );
        }
        let osxsave = cpuid(1, 0)[2] & (1 << 27) != 0;
        c.check(
            "xsetbv",
            xcr0 == 3 && osxsave,
            format_args!("XCR0 = {xcr0:#x}, CPUID.1:ECX.OSXSAVE = {osxsave}"),
        );
        let gp_x = expect_gp!("xsetbv", in("ecx") 0, in("eax") 0, in("edx") 0, options(nostack));
        c.check(
            "xsetbv-invalid",
            gp_x,
            format_args!("XSETBV with XCR0 = 0 raised #GP: {gp_x}"),
        );
    }

    // Unknown hypercall.
    let r = vmcall(UNKNOWN_HYPERCALL, 1, 2, 3);
    c.check(
        "vmcall-unknown",
        r as i64 == -1000,
        format_args!("returned {}", r as i64),
    );

    // Bochs's emulator control port: "Shutdown" written to 0x8900 would end the emulator (a
    // backdoor out of the run, issue 12). Bulwark traps it: the write is dropped, a read gives
    // all ones, and this guest keeps running (were it open, the run would end here without a
    // result line).
    for &b in b"Shutdown" {
        outb(0x8900, b);
    }
    let v = inb(0x8900);
    c.check(
        "emulator-shutdown-port",
        v == 0xff,
        format_args!("\"Shutdown\" to port 0x8900 dropped, inb = {v:#x}"),
    );

    // Absent I/O port reads as all ones.
    let v = inb(NO_DEVICE_PORT);
    c.check(
        "absent-port",
        v == 0xff,
        format_args!("inb({NO_DEVICE_PORT:#x}) = {v:#x}"),
    );

    // String I/O: REP OUTSB to COM1 (xtask looks for the line), REP INSB from an absent port.
    let msg = b"string I/O: rep outsb reached the console\n";
    // SAFETY: reads `msg` (RSI, RCX bytes) and writes them to COM1.
    unsafe {
        core::arch::asm!(
            "cld",
            "rep outsb",
            in("dx") COM1,
            inout("rsi") msg.as_ptr() => _,
            inout("rcx") msg.len() => _,
            options(nostack)
        );
    }
    let mut buf = [0u8; 16];
    // SAFETY: writes 16 bytes into `buf` (RDI, RCX) from an absent port.
    unsafe {
        core::arch::asm!(
            "cld",
            "rep insb",
            in("dx") NO_DEVICE_PORT,
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() => _,
            options(nostack)
        );
    }
    c.check(
        "rep-insb",
        buf.iter().all(|&b| b == 0xff),
        format_args!("{:x?}", &buf[..4]),
    );

    c.check(
        "cmdline",
        flags & (1 << 2) != 0,
        format_args!("{cmdline:?}"),
    );

    say!("{} check(s) failed", c.failed);
    exit(c.failed)
}
