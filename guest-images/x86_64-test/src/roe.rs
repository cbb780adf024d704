//! ROE (read-only enforcement) scenarios of the x86_64 test guest, and the demo.
//!
//! Every scenario runs on its own IDT/GDT/TSS (installed by [`setup`]) and on its own page tables
//! for a 4 KiB-page "window" at [`WIN`] (PML4 slot 1), so it can make holes, aliases and remaps
//! of its own memory. Test pages come from [`ARENA`] (identity mapped as well: every test page
//! has a second virtual alias, its physical address). Protections are irreversible, so every
//! check uses pages of its own. One line per check: `PASS <name>` / `FAIL <name>: <detail>`;
//! the scenario ends with `exit(failures)`. See docs/roe-tests-x86.md.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use bulwark_abi::cpuid;
use bulwark_abi::errno::{EINVAL, KVM_ENOSYS};
use bulwark_abi::policy::ViolationPolicy;
use bulwark_abi::roe::{
    KVM_HC_ROE, ROE_IMPL_VERSION, ROE_MPROTECT, ROE_MPROTECT_CHUNK, ROE_VERSION,
};

use super::{exit, Com1};

#[path = "walk.rs"]
mod walk;
#[allow(unused_imports)]
use core::fmt::Write as _;

/// Scenario names this module runs.
const SCENARIOS: [&str; 9] = [
    "walk",
    "roe-basic",
    "roe-page-skip",
    "roe-page-inject",
    "roe-page-halt",
    "roe-chunk",
    "roe-chunk-inject",
    "roe-escape",
    "demo",
];

const E_INVAL: i64 = -EINVAL;
const E_NOSYS: i64 = -KVM_ENOSYS;

/// Is `s` one of this module's scenarios?
pub fn handles(s: &str) -> bool {
    SCENARIOS.contains(&s)
}

/// Run scenario `s` (one of [`SCENARIOS`]); never returns.
pub fn run(s: &str) -> ! {
    setup();
    let mut t = T { failed: 0 };
    match s {
        "roe-basic" => basic(&mut t),
        "roe-page-skip" => page(&mut t, ViolationPolicy::Skip),
        "roe-page-inject" => page(&mut t, ViolationPolicy::Inject),
        "roe-page-halt" => page(&mut t, ViolationPolicy::Halt),
        "roe-chunk" => chunk(&mut t, ViolationPolicy::Skip),
        "roe-chunk-inject" => chunk(&mut t, ViolationPolicy::Inject),
        "roe-escape" => escape(&mut t),
        "walk" => walk::walk(&mut t),
        _ => demo(),
    }
    say!("{s}: {} check(s) failed", t.failed);
    exit(t.failed)
}

// ---- Checks -----------------------------------------------------------------------------------

struct T {
    failed: u32,
}

impl T {
    fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments) {
        if ok {
            say!("PASS {name}");
        } else {
            self.failed += 1;
            say!("FAIL {name}: {detail}");
        }
    }

    /// A hypercall result must equal `want`.
    fn ret(&mut self, name: &str, got: i64, want: i64) {
        self.check(
            name,
            got == want,
            format_args!("returned {got}, expected {want}"),
        );
    }
}

// ---- Hypercall ----------------------------------------------------------------------------------

static VMCALL_UD_NOTED: AtomicU64 = AtomicU64::new(0);

/// `VMCALL` with RAX = KVM_HC_ROE, RBX = op, RCX = a1, RDX = a2; returns RAX as signed.
fn roe(op: u64, a1: u64, a2: u64) -> i64 {
    let ret: u64;
    // SAFETY: VMCALL traps to Bulwark, which returns in RAX (without a hypervisor it raises #UD,
    // which the exception handler turns into -1000). RBX is swapped because the compiler reserves it.
    unsafe {
        asm!(
            "xchg rbx, {op}",
            "vmcall",
            "xchg rbx, {op}",
            op = inout(reg) op => _,
            inout("rax") KVM_HC_ROE => ret,
            in("rcx") a1,
            in("rdx") a2,
        );
    }
    ret as i64
}

fn version() -> i64 {
    roe(ROE_VERSION, 0, 0)
}
fn mprotect(va: u64, pages: u64) -> i64 {
    roe(ROE_MPROTECT, va, pages)
}
fn chunk_protect(va: u64, bytes: u64) -> i64 {
    roe(ROE_MPROTECT_CHUNK, va, bytes)
}

fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Bulwark's feature leaf, when it decodes.
fn features() -> Option<cpuid::Features> {
    let sig = cpuid(cpuid::LEAF_SIGNATURE, 0);
    if !cpuid::is_bulwark(sig[1], sig[2], sig[3]) {
        return None;
    }
    cpuid::Features::decode(cpuid(cpuid::LEAF_FEATURES, 0)).ok()
}

// ---- Memory: arena, window page tables ------------------------------------------------------------

const PAGE: u64 = 4096;
const ARENA_PAGES: usize = 96;
/// Base of the window: PML4 slot 1, mapped with 4 KiB pages through [`W_PT`] (and [`W_PT2`]).
const WIN: u64 = 0x0000_0080_0000_0000;
/// The second window table maps from here.
const WIN2: u64 = WIN + (2 << 20);
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const ACC: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;

#[repr(C, align(4096))]
struct Arena([[u8; 4096]; ARENA_PAGES]);
#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut ARENA: Arena = Arena([[0; 4096]; ARENA_PAGES]);
static mut W_PDPT: Table = Table([0; 512]);
static mut W_PD: Table = Table([0; 512]);
static mut W_PT: Table = Table([0; 512]);
/// A table of its own for the "protect your own PTE" check (its bytes get chunk-protected).
static mut W_PT2: Table = Table([0; 512]);

static NEXT_PAGE: AtomicU64 = AtomicU64::new(0);
/// Window slot 0 stays unmapped.
static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

/// A test page: its window address and its physical address (= its identity alias).
#[derive(Clone, Copy)]
struct Pg {
    va: u64,
    pa: u64,
}

fn arena_base() -> u64 {
    core::ptr::addr_of!(ARENA) as u64
}

/// `n` fresh pages, consecutive both in the window and physically, mapped read/write, filled
/// with [`init`].
fn pages(n: u64) -> Pg {
    let first = NEXT_PAGE.fetch_add(n, Ordering::SeqCst);
    let slot = NEXT_SLOT.fetch_add(n, Ordering::SeqCst);
    if first + n > ARENA_PAGES as u64 || slot + n > 512 {
        say!("FAIL out of test pages");
        exit(0xf0);
    }
    let pg = Pg {
        va: WIN + slot * PAGE,
        pa: arena_base() + first * PAGE,
    };
    for i in 0..n {
        map(pg.va + i * PAGE, pg.pa + i * PAGE, P | RW | ACC | DIRTY);
        fill_init(pg.pa + i * PAGE, PAGE);
    }
    pg
}

/// One free window address (no physical page behind it yet).
fn slot() -> u64 {
    let s = NEXT_SLOT.fetch_add(1, Ordering::SeqCst);
    WIN + s * PAGE
}

fn pte_ptr(va: u64) -> *mut u64 {
    let (table, base) = if va >= WIN2 {
        (core::ptr::addr_of_mut!(W_PT2), WIN2)
    } else {
        (core::ptr::addr_of_mut!(W_PT), WIN)
    };
    let i = ((va - base) / PAGE) as usize;
    // SAFETY: `table` is one of our own page tables; `i` < 512 (the window is 2 MiB per table).
    unsafe { (table as *mut u64).add(i % 512) }
}

/// Map window address `va` to `pa` with `flags` (0 = unmap) and flush it from the TLB.
fn map(va: u64, pa: u64, flags: u64) {
    let e = if flags == 0 { 0 } else { pa | flags };
    // SAFETY: writes one entry of our own window table; the TLB entry is flushed right after.
    unsafe {
        core::ptr::write_volatile(pte_ptr(va), e);
        asm!("invlpg [{}]", in(reg) va, options(nostack));
    }
}

fn pte(va: u64) -> u64 {
    // SAFETY: reads one entry of our own window table.
    unsafe { core::ptr::read_volatile(pte_ptr(va)) }
}

/// Hook the window into the current page tables (PML4 slot 1).
fn setup_window() {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = (cr3 & 0x000f_ffff_ffff_f000) as *mut u64;
    let user = P | RW | US;
    // SAFETY: entry.s identity-maps the first 4 GiB, which hold the PML4 and our statics; slot 1
    // of the PML4 is unused by entry.s. Single-threaded guest.
    unsafe {
        (*core::ptr::addr_of_mut!(W_PDPT)).0[0] = core::ptr::addr_of!(W_PD) as u64 | user;
        (*core::ptr::addr_of_mut!(W_PD)).0[0] = core::ptr::addr_of!(W_PT) as u64 | user;
        (*core::ptr::addr_of_mut!(W_PD)).0[1] = core::ptr::addr_of!(W_PT2) as u64 | user;
        core::ptr::write_volatile(pml4.add(1), core::ptr::addr_of!(W_PDPT) as u64 | user);
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack));
    }
}

/// The byte every test page holds before a test writes it.
/// It depends on the page offset only, so that every alias of a page agrees.
fn init(a: u64) -> u8 {
    let o = a & (PAGE - 1);
    (o as u8).wrapping_mul(7) ^ ((o >> 8) as u8) ^ 0x5c
}

fn rd(a: u64) -> u8 {
    // SAFETY: `a` is a mapped test address (window or identity alias of the arena).
    unsafe { core::ptr::read_volatile(a as *const u8) }
}

fn rd64(a: u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_unaligned(a as *const u64) }
}

/// A plain byte store (under `skip` a store to protected memory simply has no effect).
fn wr(a: u64, v: u8) {
    // SAFETY: as above; only arena addresses are written.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}

fn fill_init(pa: u64, len: u64) {
    for a in pa..pa + len {
        wr(a, init(a));
    }
}

/// Does a plain byte store at `a` take effect? (Restores the old byte; use on unprotected
/// memory only, or under `skip`.)
fn writable(a: u64) -> bool {
    let old = rd(a);
    wr(a, !old);
    let ok = rd(a) == !old;
    wr(a, old);
    ok
}

/// First offset in [a, a+len) whose byte differs from [`init`] (addresses through `alias` + off).
fn first_changed(va: u64, len: u64) -> Option<u64> {
    (0..len).find(|&o| rd(va + o) != init(va + o))
}

// ---- CPU setup: GDT with user segments, TSS, IDT, SIMD ------------------------------------------

const KCODE: u16 = 0x08;
const KDATA: u16 = 0x10;
const UDATA: u16 = 0x18 | 3;
const UCODE: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
const RING3_VECTOR: usize = 0x80;

#[repr(C, align(16))]
struct Gdt([u64; 7]);
#[repr(C, align(16))]
struct Tss([u32; 26]);
#[repr(C, align(4096))]
struct Idt([u64; 512]);
#[repr(C, align(16))]
struct Stack([u8; 16384]);

static mut GDT: Gdt = Gdt([
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code, 64-bit
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00cf_f200_0000_ffff, // 0x18 user data (DPL 3)
    0x00af_fa00_0000_ffff, // 0x20 user code, 64-bit (DPL 3)
    0,                     // 0x28 TSS (filled in)
    0,
]);
static mut TSS: Tss = Tss([0; 26]);
/// The IDT has a page of its own: the demo chunk-protects part of it.
static mut IDT: Idt = Idt([0; 512]);
static mut RING0_STACK: Stack = Stack([0; 16384]);

fn idt_base() -> u64 {
    core::ptr::addr_of!(IDT) as u64
}

fn gate(handler: u64, dpl: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (u64::from(KCODE) << 16)
        | ((0x8e00 | (dpl << 13)) << 32)
        | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

fn set_gate(v: usize, handler: u64, dpl: u64) {
    let (lo, hi) = gate(handler, dpl);
    // SAFETY: our own IDT, single-threaded; `v` < 256.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt.0[2 * v] = lo;
        idt.0[2 * v + 1] = hi;
    }
}

fn setup() {
    // SAFETY: single-threaded ring-0 guest setting up its own descriptor tables: the new GDT keeps
    // the kernel selectors of entry.s (0x08 code, 0x10 data) and adds user segments and a TSS
    // whose RSP0 is a stack of its own; CS is reloaded by a far return, then the TSS is loaded once.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        let rsp0 = core::ptr::addr_of!(RING0_STACK) as u64 + 16384;
        tss.0[1] = rsp0 as u32;
        tss.0[2] = (rsp0 >> 32) as u32;
        tss.0[25] = 104 << 16; // I/O map base beyond the limit: no bitmap
        let base = tss as *const Tss as u64;
        let limit = 103u64;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt.0[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt.0[6] = base >> 32;
        let gdtr = desc_ptr(gdt as *const Gdt as u64, core::mem::size_of::<Gdt>());
        asm!(
            "lgdt [{g}]",
            "push {cs}",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            g = in(reg) &gdtr,
            cs = in(reg) u64::from(KCODE),
            t = out(reg) _,
            ds = in(reg) u64::from(KDATA),
            tss = in(reg) u64::from(TSS_SEL),
        );
        let stubs = &*core::ptr::addr_of!(roe_exc_stubs);
        for (v, &stub) in stubs.iter().enumerate().take(32) {
            set_gate(v, stub, 0);
        }
        set_gate(RING3_VECTOR, stubs[32], 3);
        let idtr = desc_ptr(idt_base(), 256 * 16);
        asm!("lidt [{}]", in(reg) &idtr, options(nostack));
    }
    setup_window();
}

fn desc_ptr(base: u64, size: usize) -> [u16; 5] {
    [
        (size - 1) as u16,
        base as u16,
        (base >> 16) as u16,
        (base >> 32) as u16,
        (base >> 48) as u16,
    ]
}

/// Enable SSE (and AVX when CPUID offers it). Returns whether 32-byte AVX stores can be used.
fn enable_simd() -> bool {
    // SAFETY: CR0/CR4 bits for SSE as the SDM prescribes (CR0.EM=0, MP=1, CR4.OSFXSR|OSXMMEXCPT).
    unsafe {
        asm!(
            "mov {r}, cr0",
            "and {r}, -5",
            "or {r}, 2",
            "mov cr0, {r}",
            "mov {r}, cr4",
            "or {r}, 0x600",
            "mov cr4, {r}",
            r = out(reg) _,
            options(nostack)
        );
    }
    let ecx = cpuid(1, 0)[2];
    let (xsave, avx) = (ecx & (1 << 26) != 0, ecx & (1 << 28) != 0);
    if !(xsave && avx) {
        say!("note: CPUID.1:ECX={ecx:#x}: no XSAVE/AVX; testing 16-byte vector stores only");
        return false;
    }
    say!("enabling AVX: CR4.OSXSAVE, then XSETBV(XCR0=7) (Bulwark handles the XSETBV exit)");
    // SAFETY: CPUID says XSAVE and AVX exist; XCR0 = x87|SSE|AVX is a valid combination.
    unsafe {
        asm!(
            "mov {r}, cr4",
            "or {r}, 0x40000",
            "mov cr4, {r}",
            "xor ecx, ecx",
            "xor edx, edx",
            "mov eax, 7",
            "xsetbv",
            r = out(reg) _,
            out("rax") _, out("rcx") _, out("rdx") _,
            options(nostack)
        );
    }
    let on = cpuid(1, 0)[2] & (1 << 27) != 0;
    if !on {
        say!("note: CPUID.1:ECX.OSXSAVE still 0 after setting CR4.OSXSAVE; no 32-byte stores");
    }
    on
}

// ---- Exceptions ---------------------------------------------------------------------------------

#[repr(C)]
struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Where the next #GP resumes (0: a #GP is fatal). Cleared when used.
static RESUME: AtomicU64 = AtomicU64::new(0);
/// Address of the instruction a guarded store expects to fault on.
static FAULT_AT: AtomicU64 = AtomicU64::new(0);
static GP_COUNT: AtomicU64 = AtomicU64::new(0);
static GP_RIP: AtomicU64 = AtomicU64::new(0);
static GP_ERR: AtomicU64 = AtomicU64::new(0);
static BP_COUNT: AtomicU64 = AtomicU64::new(0);
/// #PF taken while RESUME was set (roe-escape's string I/O checks): count, error code, CR2.
static PF_COUNT: AtomicU64 = AtomicU64::new(0);
static PF_ERR: AtomicU64 = AtomicU64::new(0);
static PF_CR2: AtomicU64 = AtomicU64::new(0);
/// Ring-3 round trip: kernel stack pointer and continuation address.
static RING3_KRSP: AtomicU64 = AtomicU64::new(0);
static RING3_BACK: AtomicU64 = AtomicU64::new(0);
/// Vector of an exception taken in ring 3 (0 = none).
static RING3_FAULT: AtomicU64 = AtomicU64::new(0);

#[no_mangle]
extern "C" fn roe_exception(f: &mut Frame) {
    let from_user = f.cs & 3 == 3;
    if f.vector as usize == RING3_VECTOR || from_user {
        if f.vector as usize != RING3_VECTOR {
            RING3_FAULT.store(f.vector, Ordering::SeqCst);
        }
        // Back to the kernel continuation of `ring3_call`, RAX as ring 3 left it.
        f.rip = RING3_BACK.load(Ordering::SeqCst);
        f.cs = u64::from(KCODE);
        f.ss = u64::from(KDATA);
        f.rsp = RING3_KRSP.load(Ordering::SeqCst);
        f.rflags = 2;
        return;
    }
    match f.vector {
        13 => {
            let r = RESUME.swap(0, Ordering::SeqCst);
            if r != 0 {
                GP_COUNT.fetch_add(1, Ordering::SeqCst);
                GP_RIP.store(f.rip, Ordering::SeqCst);
                GP_ERR.store(f.error, Ordering::SeqCst);
                f.rip = r;
                return;
            }
        }
        3 => {
            BP_COUNT.fetch_add(1, Ordering::SeqCst);
            return;
        }
        14 => {
            let r = RESUME.swap(0, Ordering::SeqCst);
            if r != 0 {
                let cr2: u64;
                // SAFETY: reads CR2 in ring 0.
                unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nostack)) };
                PF_COUNT.fetch_add(1, Ordering::SeqCst);
                PF_ERR.store(f.error, Ordering::SeqCst);
                PF_CR2.store(cr2, Ordering::SeqCst);
                f.rip = r;
                return;
            }
        }
        6 => {
            // VMCALL (0f 01 c1) raising #UD: no hypervisor underneath (e.g. plain QEMU). Treat
            // it as "not implemented" so the guest's own logic can still be exercised.
            // SAFETY: RIP points at the faulting instruction in our own mapped code.
            let op = unsafe { core::ptr::read_unaligned(f.rip as *const [u8; 3]) };
            if op == [0x0f, 0x01, 0xc1] {
                if VMCALL_UD_NOTED.swap(1, Ordering::SeqCst) == 0 {
                    say!("note: VMCALL raised #UD (no hypervisor?): treating it as -1000");
                }
                f.rax = E_NOSYS as u64;
                f.rip += 3;
                return;
            }
        }
        _ => {}
    }
    say!(
        "FAIL unexpected exception vector={} error={:#x} rip={:#x} cs={:#x}",
        f.vector,
        f.error,
        f.rip,
        f.cs
    );
    exit(0xef)
}

core::arch::global_asm!(
    r#"
    .section .text
    .balign 16
roe_exc_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    mov rbx, rsp
    and rsp, -16
    cld
    call roe_exception
    mov rsp, rbx
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
"#
);

macro_rules! roe_stubs {
    ($($v:literal $err:literal),* $(,)?) => {
        core::arch::global_asm!(
            $(
                concat!(".section .text\n.balign 16\nroe_exc_", $v, ":\n"),
                concat!(".if ", $err, " == 0\n push 0\n .endif\n"),
                concat!("push ", $v, "\njmp roe_exc_common\n"),
            )*
            ".section .rodata\n.balign 8\n.global roe_exc_stubs\nroe_exc_stubs:\n",
            $( concat!(".quad roe_exc_", $v, "\n"), )*
        );
    };
}

roe_stubs!(
    0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 9 0, 10 1, 11 1, 12 1, 13 1, 14 1, 15 0,
    16 0, 17 1, 18 0, 19 0, 20 0, 21 1, 22 0, 23 0, 24 0, 25 0, 26 0, 27 0, 28 0, 29 1, 30 1, 31 0,
    128 0,
);

extern "C" {
    static roe_exc_stubs: [u64; 33];
    static roe_user_page: u8;
}

// ---- Ring 3 ------------------------------------------------------------------------------------

// The ring-3 code: a page of its own, mapped user-accessible in the window.
core::arch::global_asm!(
    r#"
    .section .text.roe_user, "ax"
    .balign 4096
    .global roe_user_page
roe_user_page:
    vmcall
    int 0x80
    ud2
    .balign 4096
"#
);

struct Ring3 {
    code: u64,
    stack_top: u64,
}

fn ring3_setup() -> Ring3 {
    let code_pa = core::ptr::addr_of!(roe_user_page) as u64;
    let code = slot();
    map(code, code_pa, P | US | ACC);
    let stack = pages(1);
    map(stack.va, stack.pa, P | RW | US | ACC | DIRTY);
    Ring3 {
        code,
        stack_top: stack.va + PAGE - 16,
    }
}

/// Issue the ROE call from ring 3: returns RAX as ring 3 got it.
fn ring3_call(r: &Ring3, op: u64, a1: u64, a2: u64) -> i64 {
    let ret: u64;
    RING3_FAULT.store(0, Ordering::SeqCst);
    // SAFETY: IRETQ to the user code page (CPL 3, user segments of our GDT); it executes VMCALL
    // then INT 0x80, whose handler resumes at label 2 on the saved kernel stack. All registers
    // but RSP are clobbered, RBX/RBP are saved on the stack around it.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "lea r11, [rip + 2f]",
            "mov [{back}], r11",
            "mov [{krsp}], rsp",
            "push {uss}",
            "push {ursp}",
            "push 2",
            "push {ucs}",
            "push {urip}",
            "mov rbx, {op}",
            "mov rax, {nr}",
            "iretq",
            "2:",
            "pop rbp",
            "pop rbx",
            "mov r11, {kds}",
            "mov ds, r11",
            "mov es, r11",
            "mov ss, r11",
            back = in(reg) RING3_BACK.as_ptr(),
            krsp = in(reg) RING3_KRSP.as_ptr(),
            uss = in(reg) u64::from(UDATA),
            ursp = in(reg) r.stack_top,
            ucs = in(reg) u64::from(UCODE),
            urip = in(reg) r.code,
            op = in(reg) op,
            nr = const KVM_HC_ROE,
            kds = const KDATA as u64,
            in("rcx") a1,
            in("rdx") a2,
            lateout("rax") ret,
            out("r11") _,
            clobber_abi("C"),
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
        );
    }
    let f = RING3_FAULT.load(Ordering::SeqCst);
    if f != 0 {
        say!("note: ring 3 took exception vector {f}");
        return i64::MIN + f as i64;
    }
    ret as i64
}

// ---- Guarded stores -------------------------------------------------------------------------------

/// Run a store instruction with #GP recovery: label 3 is the store (its address goes to
/// FAULT_AT), label 4 is where a #GP resumes. r9, r10, r11 are used by the prologue.
macro_rules! guarded {
    ([$($pre:literal),*], $store:literal, [$($post:literal),*], $($ops:tt)*) => {{
        RESUME.store(0, Ordering::SeqCst);
        // SAFETY: stores only to arena test addresses chosen by the caller; a #GP (policy
        // `inject`) resumes at label 4 with the registers as the CPU left them at the fault.
        unsafe {
            asm!(
                $($pre,)*
                "lea r11, [rip + 4f]",
                "mov [r10], r11",
                "lea r11, [rip + 3f]",
                "mov [r9], r11",
                "3:",
                $store,
                "4:",
                $($post,)*
                $($ops)*
                in("r10") RESUME.as_ptr(),
                in("r9") FAULT_AT.as_ptr(),
                out("r11") _,
            );
        }
        RESUME.store(0, Ordering::SeqCst);
    }};
}

/// The store forms under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Mov8,
    /// `rep movsb` of this many bytes.
    Movsb(u64),
    /// `rep stosq` of this many quadwords.
    Stosq(u64),
    Xchg,
    /// `lock cmpxchg` whose comparison succeeds.
    CmpxchgEq,
    /// `lock cmpxchg` whose comparison fails (writes nothing new).
    CmpxchgNe,
    LockAdd,
    V16,
    V32,
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::Mov8 => "mov",
            Form::Movsb(_) => "rep-movsb",
            Form::Stosq(_) => "rep-stosq",
            Form::Xchg => "xchg",
            Form::CmpxchgEq => "lock-cmpxchg",
            Form::CmpxchgNe => "lock-cmpxchg-fail",
            Form::LockAdd => "lock-add",
            Form::V16 => "movdqu16",
            Form::V32 => "vmovdqu32",
        }
    }
    fn len(self) -> u64 {
        match self {
            Form::Movsb(n) => n,
            Form::Stosq(q) => 8 * q,
            Form::V16 => 16,
            Form::V32 => 32,
            _ => 8,
        }
    }
}

const STOS_VAL: u64 = 0xa1b2_c3d4_e5f6_0718;
const XCHG_VAL: u64 = 0x0f1e_2d3c_4b5a_6978;
const ADD_VAL: u64 = 0x0101_0101_0101_0101;

/// Source bytes of movsb/vector stores: never equal to [`init`] of the same offset by design.
#[repr(C, align(32))]
struct Src([u8; 64]);
static mut SRC: Src = Src([0; 64]);

fn src_ptr() -> u64 {
    core::ptr::addr_of!(SRC) as u64
}

fn fill_src(dst: u64) {
    for i in 0..64u64 {
        let b = !init(dst + i) ^ (i as u8 & 0x30);
        // SAFETY: our own static, single-threaded.
        unsafe { (*core::ptr::addr_of_mut!(SRC)).0[i as usize] = b };
    }
}

/// Registers a store form leaves behind (only the ones it defines).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Regs {
    rcx: u64,
    rdi: u64,
    rsi: u64,
    /// xchg's register, cmpxchg's RAX.
    val: u64,
    /// cmpxchg's ZF.
    zf: bool,
}

/// Execute `form` at `dst` (with #GP recovery). `old` is the quadword at `dst` beforehand.
fn exec(form: Form, dst: u64, old: u64) -> Regs {
    let mut r = Regs::default();
    match form {
        Form::Mov8 => {
            guarded!([], "mov qword ptr [{d}], {v}", [], d = in(reg) dst, v = in(reg) XCHG_VAL,)
        }
        Form::Movsb(n) => {
            let (mut c, mut di, mut si) = (n, dst, src_ptr());
            guarded!([], "rep movsb", [],
                inout("rcx") c, inout("rdi") di, inout("rsi") si,);
            (r.rcx, r.rdi, r.rsi) = (c, di, si);
        }
        Form::Stosq(q) => {
            let (mut c, mut di) = (q, dst);
            guarded!([], "rep stosq", [],
                inout("rcx") c, inout("rdi") di, in("rax") STOS_VAL,);
            (r.rcx, r.rdi) = (c, di);
        }
        Form::Xchg => {
            let mut v = XCHG_VAL;
            guarded!([], "xchg qword ptr [{d}], {v}", [], d = in(reg) dst, v = inout(reg) v,);
            r.val = v;
        }
        Form::CmpxchgEq | Form::CmpxchgNe => {
            let mut a = if form == Form::CmpxchgEq { old } else { !old };
            let z: u8;
            guarded!([], "lock cmpxchg qword ptr [{d}], {n}", ["setz {z}"],
                d = in(reg) dst, n = in(reg) XCHG_VAL, z = out(reg_byte) z, inout("rax") a,);
            r.val = a;
            r.zf = z != 0;
        }
        Form::LockAdd => {
            guarded!([], "lock add qword ptr [{d}], {v}", [], d = in(reg) dst, v = in(reg) ADD_VAL,)
        }
        Form::V16 => {
            guarded!(["movdqu xmm0, [{s}]"], "movdqu [{d}], xmm0", [],
                d = in(reg) dst, s = in(reg) src_ptr(),)
        }
        Form::V32 => {
            guarded!(["vmovdqu ymm0, [{s}]"], "vmovdqu [{d}], ymm0", ["vzeroupper"],
                d = in(reg) dst, s = in(reg) src_ptr(),)
        }
    }
    r
}

/// The bytes `form` stores at `dst` (given the old quadword there).
fn new_bytes(form: Form, old: u64, out: &mut [u8; 64]) {
    match form {
        Form::Mov8 | Form::Xchg | Form::CmpxchgEq => {
            out[..8].copy_from_slice(&XCHG_VAL.to_le_bytes())
        }
        Form::CmpxchgNe => out[..8].copy_from_slice(&old.to_le_bytes()),
        Form::LockAdd => out[..8].copy_from_slice(&old.wrapping_add(ADD_VAL).to_le_bytes()),
        Form::Stosq(_) => {
            for (i, b) in out.iter_mut().enumerate() {
                *b = STOS_VAL.to_le_bytes()[i % 8];
            }
        }
        Form::Movsb(_) | Form::V16 | Form::V32 => {
            // SAFETY: our own static, single-threaded.
            out.copy_from_slice(unsafe { &(*core::ptr::addr_of!(SRC)).0 })
        }
    }
}

/// Protected byte ranges of the current scenario (window addresses), for expectations.
struct Prot {
    ranges: [(u64, u64); 8],
    n: usize,
}

impl Prot {
    fn add(&mut self, start: u64, len: u64) {
        if self.n < self.ranges.len() {
            self.ranges[self.n] = (start, start + len);
            self.n += 1;
        }
    }
    fn has(&self, a: u64) -> bool {
        self.ranges[..self.n].iter().any(|&(s, e)| a >= s && a < e)
    }
    fn any(&self, a: u64, len: u64) -> bool {
        (a..a + len).any(|x| self.has(x))
    }
}

const MARGIN: u64 = 16;

/// Put [`init`] back into the unprotected bytes around a store target.
fn refill(prot: &Prot, lo: u64, hi: u64) {
    let mut a = lo;
    while a < hi {
        if a.is_multiple_of(8) && a + 8 <= hi && !prot.any(a, 8) {
            let mut q = [0u8; 8];
            for (i, b) in q.iter_mut().enumerate() {
                *b = init(a + i as u64);
            }
            // SAFETY: arena address, unprotected.
            unsafe { core::ptr::write_volatile(a as *mut u64, u64::from_le_bytes(q)) };
            a += 8;
        } else {
            if !prot.has(a) {
                wr(a, init(a));
            }
            a += 1;
        }
    }
}

/// One store test: `form` at `dst`; `policy` says what Bulwark does to protected bytes.
fn store_test(t: &mut T, prot: &Prot, policy: ViolationPolicy, form: Form, place: &str, dst: u64) {
    let len = form.len();
    let (lo, hi) = (dst - MARGIN, dst + len + MARGIN);
    refill(prot, lo, hi);
    let mut name_buf = NameBuf::new();
    let _ = fmt::write(&mut name_buf, format_args!("{}-{place}", form.name()));
    let name = name_buf.as_str();
    if let Some(o) = first_changed(lo, hi - lo) {
        t.check(
            name,
            false,
            format_args!(
                "before the store: byte at {:#x} is {:#x}, not {:#x}",
                lo + o,
                rd(lo + o),
                init(lo + o)
            ),
        );
        return;
    }
    fill_src(dst);
    let old = rd64(dst);
    let mut new = [0u8; 64];
    new_bytes(form, old, &mut new);
    let hits = prot.any(dst, len);
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    let regs = exec(form, dst, old);
    let gps = GP_COUNT.load(Ordering::SeqCst) - gp0;
    // A failing `lock cmpxchg` writes back the old value, which changes no byte: under
    // `inject` Bulwark may or may not raise #GP for it. Either way is exact.
    let faults = hits && policy == ViolationPolicy::Inject && (form != Form::CmpxchgNe || gps != 0);

    // Registers: as the instruction alone leaves them, or untouched when it faulted.
    let want = match (form, faults) {
        (Form::Movsb(n), false) => Regs {
            rcx: 0,
            rdi: dst + n,
            rsi: src_ptr() + n,
            ..Regs::default()
        },
        (Form::Movsb(n), true) => Regs {
            rcx: n,
            rdi: dst,
            rsi: src_ptr(),
            ..Regs::default()
        },
        (Form::Stosq(q), false) => Regs {
            rcx: 0,
            rdi: dst + 8 * q,
            ..Regs::default()
        },
        (Form::Stosq(q), true) => Regs {
            rcx: q,
            rdi: dst,
            ..Regs::default()
        },
        (Form::Xchg, false) => Regs {
            val: old,
            ..Regs::default()
        },
        (Form::Xchg, true) => Regs {
            val: XCHG_VAL,
            ..Regs::default()
        },
        (Form::CmpxchgEq, _) => Regs {
            val: old,
            zf: !faults,
            ..Regs::default()
        },
        (Form::CmpxchgNe, false) => Regs {
            val: old,
            zf: false,
            ..Regs::default()
        },
        (Form::CmpxchgNe, true) => Regs {
            val: !old,
            zf: false,
            ..Regs::default()
        },
        _ => Regs::default(),
    };
    let regs_ok = match form {
        // ZF after a fault is not defined by the instruction; compare RAX only.
        Form::CmpxchgEq | Form::CmpxchgNe if faults => regs.val == want.val,
        _ => regs == want,
    };
    let gp_ok = if faults {
        gps == 1
            && GP_RIP.load(Ordering::SeqCst) == FAULT_AT.load(Ordering::SeqCst)
            && GP_ERR.load(Ordering::SeqCst) == 0
    } else {
        gps == 0
    };
    // Memory: protected bytes never change; the others take the store unless it faulted.
    let mut bad = None;
    for a in lo..hi {
        let inside = a >= dst && a < dst + len;
        let exp = if inside && !faults && !prot.has(a) {
            new[(a - dst) as usize]
        } else {
            init(a)
        };
        if rd(a) != exp {
            bad = Some((a, exp));
            break;
        }
    }
    let ok = regs_ok && gp_ok && bad.is_none();
    let (ba, be) = bad.unwrap_or((0, 0));
    t.check(
        name,
        ok,
        format_args!(
            "dst={dst:#x} len={len} protected-bytes-hit={hits} #GP count={gps} (want {}) at {:#x} \
             (store at {:#x}) error={:#x}; regs {:x?} want {:x?}; memory {}",
            u8::from(faults),
            GP_RIP.load(Ordering::SeqCst),
            FAULT_AT.load(Ordering::SeqCst),
            GP_ERR.load(Ordering::SeqCst),
            regs,
            want,
            if bad.is_some() {
                MemErr(ba, rd(ba), be)
            } else {
                MemErr(0, 0, 0)
            }
        ),
    );
}

struct MemErr(u64, u8, u8);

impl fmt::Display for MemErr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 == 0 {
            write!(f, "as expected")
        } else {
            write!(
                f,
                "byte at {:#x} is {:#x}, expected {:#x}",
                self.0, self.1, self.2
            )
        }
    }
}

/// A small fixed buffer for composing check names.
struct NameBuf {
    b: [u8; 64],
    n: usize,
}

impl NameBuf {
    fn new() -> Self {
        NameBuf { b: [0; 64], n: 0 }
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.b[..self.n]).unwrap_or("?")
    }
}

impl fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &c in s.as_bytes() {
            if self.n < self.b.len() {
                self.b[self.n] = c;
                self.n += 1;
            }
        }
        Ok(())
    }
}

/// A single guarded quadword store; returns whether it raised #GP (0) at the store.
fn store64(va: u64, v: u64) -> bool {
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    guarded!([], "mov qword ptr [{d}], {v}", [], d = in(reg) va, v = in(reg) v,);
    GP_COUNT.load(Ordering::SeqCst) != gp0
}

// ---- Policy ----------------------------------------------------------------------------------------

/// Report Bulwark's features and check that the policy is the one this scenario was run with.
fn check_policy(t: &mut T, want: ViolationPolicy) {
    match features() {
        Some(f) => {
            say!(
                "bulwark features: roe-version={} mprotect={} chunk={} chunk-spp={} policy={}",
                f.roe_version,
                f.roe_mprotect,
                f.roe_chunk,
                f.chunk_spp,
                f.policy.as_str()
            );
            t.check(
                "cpuid-roe",
                u64::from(f.roe_version) == ROE_IMPL_VERSION && f.roe_mprotect && f.roe_chunk,
                format_args!(
                    "CPUID 0x40000001 says version {} mprotect {} chunk {}",
                    f.roe_version, f.roe_mprotect, f.roe_chunk
                ),
            );
            t.check(
                "cpuid-policy",
                f.policy == want,
                format_args!(
                    "CPUID says violation={}, this scenario needs violation={}",
                    f.policy.as_str(),
                    want.as_str()
                ),
            );
        }
        None => t.check("cpuid-roe", false, format_args!("no Bulwark feature leaf")),
    }
}

fn chunk_spp() -> bool {
    features().map(|f| f.chunk_spp).unwrap_or(false)
}

// ---- roe-basic -------------------------------------------------------------------------------------

fn basic(t: &mut T) {
    say!("roe-basic: version, -EINVAL cases, ring 3, idempotency, undo attempts (violation=skip)");
    check_policy(t, ViolationPolicy::Skip);
    t.ret("version", version(), ROE_IMPL_VERSION as i64);

    // Ring 3: every sub-op is refused with -1000 and protects nothing.
    let r3 = ring3_setup();
    let u = pages(1);
    t.ret("ring3-version", ring3_call(&r3, ROE_VERSION, 0, 0), E_NOSYS);
    t.ret(
        "ring3-mprotect",
        ring3_call(&r3, ROE_MPROTECT, u.va, 1),
        E_NOSYS,
    );
    t.ret(
        "ring3-chunk",
        ring3_call(&r3, ROE_MPROTECT_CHUNK, u.va + 0x40, 0x40),
        E_NOSYS,
    );
    t.check(
        "ring3-nothing-protected",
        writable(u.va) && writable(u.va + 0x50) && writable(u.va + 0xfff),
        format_args!("page {:#x} is no longer writable after ring-3 calls", u.va),
    );

    // -EINVAL, and nothing of the range protected.
    let a = pages(2);
    t.ret("einval-mprotect-unaligned", mprotect(a.va + 1, 1), E_INVAL);
    t.ret(
        "einval-mprotect-unaligned-0x800",
        mprotect(a.va + 0x800, 1),
        E_INVAL,
    );
    t.ret("einval-mprotect-zero", mprotect(a.va, 0), E_INVAL);
    t.ret("einval-chunk-zero", chunk_protect(a.va + 5, 0), E_INVAL);
    t.ret("einval-mprotect-wrap", mprotect(a.va, 1 << 52), E_INVAL);
    t.ret(
        "einval-mprotect-wrap-top",
        mprotect(0xffff_ffff_ffff_f000, 2),
        E_INVAL,
    );
    t.ret(
        "einval-chunk-wrap",
        chunk_protect(a.va + 0x10, u64::MAX - 7),
        E_INVAL,
    );
    t.ret(
        "einval-chunk-wrap-top",
        chunk_protect(u64::MAX - 3, 8),
        E_INVAL,
    );
    t.ret(
        "einval-mprotect-noncanonical",
        mprotect(0x0000_8000_0000_0000, 1),
        E_INVAL,
    );
    t.ret("einval-mprotect-unmapped", mprotect(slot(), 1), E_INVAL);
    t.check(
        "einval-nothing-protected",
        writable(a.va) && writable(a.va + 0x10) && writable(a.va + 0x800) && writable(a.va + PAGE),
        format_args!("a page of a refused range is no longer writable"),
    );
    // A hole in the middle of the range: pages h, h+1 (unmapped), h+2.
    let h = pages(3);
    map(h.va + PAGE, 0, 0);
    t.ret("einval-mprotect-hole", mprotect(h.va, 3), E_INVAL);
    t.ret(
        "einval-chunk-hole",
        chunk_protect(h.va + 0x800, 2 * PAGE),
        E_INVAL,
    );
    t.check(
        "einval-hole-nothing-protected",
        writable(h.va)
            && writable(h.va + 0xfff)
            && writable(h.va + 2 * PAGE)
            && writable(h.pa + PAGE),
        format_args!("a page before/after/behind the hole is no longer writable"),
    );
    // A page whose guest-physical address is not guest RAM (Bulwark's own region).
    let dev = slot();
    map(dev, 0x0400_0000, P | ACC);
    t.ret("einval-mprotect-not-ram", mprotect(dev, 1), E_INVAL);
    let nr = pages(1);
    let nr_next = slot(); // the window page right after `nr`
    map(nr_next, 0x0400_0000, P | ACC);
    t.ret(
        "einval-chunk-not-ram",
        chunk_protect(nr.va + 0xff0, 0x20),
        E_INVAL,
    );
    t.check(
        "einval-not-ram-nothing-protected",
        writable(nr.va + 0xff0) && writable(nr.va + 0xfff),
        format_args!("the RAM part of a refused range is no longer writable"),
    );

    // Success, idempotency.
    let p = pages(2);
    t.ret("mprotect", mprotect(p.va, 2), 2);
    t.check(
        "mprotect-blocks",
        !writable(p.va + 0x100) && !writable(p.va + PAGE + 0xff8),
        format_args!("a store to a protected page took effect"),
    );
    t.ret("mprotect-again", mprotect(p.va, 2), 2);
    t.ret("mprotect-again-subset", mprotect(p.va + PAGE, 1), 1);
    t.ret("chunk-over-protected-page", chunk_protect(p.va + 3, 10), 10);
    let q = pages(1);
    t.ret("chunk", chunk_protect(q.va + 0x40, 0x20), 0x20);
    t.ret("chunk-again", chunk_protect(q.va + 0x40, 0x20), 0x20);
    t.ret("chunk-overlapping", chunk_protect(q.va + 0x30, 0x40), 0x40);
    t.check(
        "mprotect-still-blocks",
        !writable(p.va) && first_changed(p.pa, 2 * PAGE).is_none(),
        format_args!("protected pages changed"),
    );

    undo(t, p, q);
}

/// Every way the guest can think of to undo a protection; `p` (2 pages) is MPROTECTed, `q` has
/// the chunk [0x30, 0x70).
fn undo(t: &mut T, p: Pg, q: Pg) {
    // Other arguments to ROE itself.
    t.ret("undo-mprotect-zero", mprotect(p.va, 0), E_INVAL);
    t.ret("undo-mprotect-unaligned", mprotect(p.va + 1, 1), E_INVAL);
    t.ret("undo-chunk-zero", chunk_protect(q.va + 0x30, 0), E_INVAL);
    for op in [3u64, 4, 0xff, 0x8000_0000, u64::MAX] {
        let mut n = NameBuf::new();
        let _ = fmt::write(&mut n, format_args!("undo-unknown-subop-{op:#x}"));
        // The seed names no error for an unknown sub-op: -1000 ("no such operation") or -22.
        let r = roe(op, p.va, 2);
        t.check(
            n.as_str(),
            r == E_NOSYS || r == E_INVAL,
            format_args!("returned {r}, expected -1000 or -22"),
        );
    }
    // An unknown sub-op protects nothing either.
    let f = pages(1);
    let _ = roe(3, f.va, 1);
    let _ = roe(0xff, f.va, 0x100);
    t.check(
        "unknown-subop-protects-nothing",
        writable(f.va) && writable(f.va + 0x80),
        format_args!("a page handed to an unknown sub-op is no longer writable"),
    );

    // A second virtual alias: the identity mapping of the same physical page.
    t.check(
        "undo-identity-alias",
        !writable(p.pa + 0x10),
        format_args!("write via identity alias took effect"),
    );
    // A new alias mapping made now, writable in the guest's page tables.
    let alias = slot();
    map(alias, p.pa, P | RW | ACC | DIRTY);
    t.check(
        "undo-new-alias",
        !writable(alias + 0x20),
        format_args!("write via a new alias took effect"),
    );
    // Marking the page writable (again) in the guest's page tables.
    map(p.va, p.pa, P | RW | ACC | DIRTY);
    t.check(
        "undo-pte-writable",
        !writable(p.va + 0x30),
        format_args!("write after setting PTE.RW took effect"),
    );
    map(p.va, p.pa, P | ACC);
    map(p.va, p.pa, P | RW | ACC | DIRTY);
    t.check(
        "undo-pte-ro-then-rw",
        !writable(p.va + 0x38),
        format_args!("write after PTE RO->RW took effect"),
    );
    // Remapping the protected virtual page to another physical page: the known gap. The VA
    // now reaches other memory, but the protected physical page stays unchanged.
    let other = pages(1);
    map(p.va, other.pa, P | RW | ACC | DIRTY);
    wr(p.va + 0x40, !init(other.pa + 0x40));
    say!("note: after a remap the protected VA reaches another page (known gap, spec §1)");
    t.check(
        "undo-remap-physical-unchanged",
        first_changed(p.pa, 2 * PAGE).is_none() && !writable(p.pa + 0x40),
        format_args!("the protected physical page changed or became writable after a remap"),
    );
    map(p.va, p.pa, P | RW | ACC | DIRTY);
    // CR0.WP off: the guest's own WP does not matter.
    // SAFETY: clears and restores CR0.WP (bit 16) in ring 0.
    unsafe {
        asm!("mov {r}, cr0", "btr {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
    };
    let wp_ro = !writable(p.va + 0x48) && !writable(p.pa + 0x48);
    // SAFETY: as above.
    unsafe {
        asm!("mov {r}, cr0", "bts {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
    };
    t.check(
        "undo-cr0-wp-off",
        wp_ro,
        format_args!("a write with CR0.WP=0 took effect"),
    );
    // Cache and TLB tricks, then write.
    // SAFETY: clflush/wbinvd/invlpg on our own mapped memory have no other effect.
    unsafe { asm!("clflush [{}]", in(reg) p.va + 0x50, options(nostack)) };
    t.check(
        "undo-clflush",
        !writable(p.va + 0x50),
        format_args!("write after clflush took effect"),
    );
    // SAFETY: as above.
    unsafe { asm!("wbinvd", options(nostack)) };
    t.check(
        "undo-wbinvd",
        !writable(p.va + 0x58),
        format_args!("write after wbinvd took effect"),
    );
    // SAFETY: as above.
    unsafe { asm!("invlpg [{}]", in(reg) p.va, options(nostack)) };
    t.check(
        "undo-invlpg",
        !writable(p.va + 0x60),
        format_args!("write after invlpg took effect"),
    );
    t.check(
        "undo-all-unchanged",
        first_changed(p.pa, 2 * PAGE).is_none(),
        format_args!("protected bytes changed"),
    );

    // The chunk page: stores to it need Bulwark's instruction emulation (without SPP every
    // store to the page exits), so these come after the page-level checks.
    t.check(
        "chunk-idempotent-bounds",
        writable(q.va + 0x2f)
            && !writable(q.va + 0x30)
            && !writable(q.va + 0x6f)
            && writable(q.va + 0x70),
        format_args!(
            "after re-protecting, [0x30, 0x70) of the page must be exactly what is protected"
        ),
    );
    t.check(
        "undo-chunk-identity-alias",
        !writable(q.pa + 0x40),
        format_args!("write via identity alias took effect"),
    );
    // SAFETY: clears and restores CR0.WP (bit 16) in ring 0.
    unsafe {
        asm!("mov {r}, cr0", "btr {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
    };
    let wp_ro = !writable(q.va + 0x48) && writable(q.va + 0x80);
    // SAFETY: as above.
    unsafe {
        asm!("mov {r}, cr0", "bts {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
    };
    t.check(
        "undo-chunk-cr0-wp-off",
        wp_ro,
        format_args!("with CR0.WP=0 a protected chunk byte changed or an unprotected one did not"),
    );
    t.check(
        "undo-chunk-unchanged",
        (0x30..0x70).all(|o| rd(q.pa + o) == init(q.pa + o)),
        format_args!("protected chunk bytes changed"),
    );

    // Closing the remap gap the seed's way: chunk-protect your own PTE.
    let pt2 = core::ptr::addr_of!(W_PT2) as u64;
    // Entries are written with A and D set (see `map`), so the CPU never writes this table.
    let v = pages(1);
    let x = pages(1);
    let pinned = WIN2;
    map(pinned, v.pa, P | RW | ACC | DIRTY);
    let entry = pte(pinned);
    t.ret("pte-chunk", chunk_protect(pt2, 8), 8);
    wr(pte_ptr(pinned) as u64, 0); // (no effect when protected)
    map(pinned, x.pa, P | RW | ACC | DIRTY);
    t.check(
        "pte-protected-remap-blocked",
        pte(pinned) == entry,
        format_args!(
            "the protected PTE changed to {:#x} (was {entry:#x})",
            pte(pinned)
        ),
    );
    wr(pinned + 8, 0xa5);
    t.check(
        "pte-protected-still-maps-original",
        rd(v.pa + 8) == 0xa5 && rd(x.pa + 8) == init(x.pa + 8),
        format_args!("a write through the pinned VA did not land in the original page"),
    );
}

// ---- roe-page-{skip,inject,halt} -------------------------------------------------------------------

fn page(t: &mut T, policy: ViolationPolicy) {
    say!(
        "roe-page-{}: ROE_MPROTECT then writes (violation={})",
        policy.as_str(),
        policy.as_str()
    );
    check_policy(t, policy);
    // Pages: before (unprotected), p (protected), after (unprotected).
    let r = pages(3);
    let p = r.va + PAGE;
    t.ret("mprotect", mprotect(p, 1), 1);
    t.check(
        "neighbour-writable",
        writable(r.va + 0x10) && writable(r.va + 2 * PAGE + 0x10),
        format_args!("an unprotected neighbour page is not writable"),
    );
    if policy == ViolationPolicy::Halt {
        say!("writing to the protected page: Bulwark must stop the run here (violation=halt)");
        let _ = store64(p + 0x100, 0x1234);
        t.check(
            "halted",
            false,
            format_args!(
                "the guest continued after a write to a protected page; the byte now reads {:#x}",
                rd(p + 0x100)
            ),
        );
        return;
    }
    let inject = policy == ViolationPolicy::Inject;
    let mut prot = Prot {
        ranges: [(0, 0); 8],
        n: 0,
    };
    prot.add(p, PAGE);
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    let faulted = store64(p + 0x100, 0x1234_5678);
    t.check(
        "store-blocked",
        faulted == inject && first_changed(r.pa + PAGE, PAGE).is_none() && (!inject || GP_ERR.load(Ordering::SeqCst) == 0 && GP_RIP.load(Ordering::SeqCst) == FAULT_AT.load(Ordering::SeqCst)),
        format_args!("#GP={faulted} (want {inject}) error={:#x} at {:#x}, store at {:#x}; page changed: {:?}", GP_ERR.load(Ordering::SeqCst), GP_RIP.load(Ordering::SeqCst), FAULT_AT.load(Ordering::SeqCst), first_changed(r.pa + PAGE, PAGE)),
    );
    say!("the guest continues after the blocked store");
    let faulted = store64(r.pa + PAGE + 0x200, 0x1234_5678);
    t.check(
        "store-via-identity-alias-blocked",
        faulted == inject && first_changed(r.pa + PAGE, PAGE).is_none(),
        format_args!(
            "#GP={faulted} (want {inject}); page changed: {:?}",
            first_changed(r.pa + PAGE, PAGE)
        ),
    );
    // Stores of several forms into the page and straddling its edges.
    store_test(t, &prot, policy, Form::Mov8, "page-straddle-into", p - 4);
    store_test(
        t,
        &prot,
        policy,
        Form::Mov8,
        "page-straddle-out",
        p + PAGE - 4,
    );
    store_test(t, &prot, policy, Form::Stosq(4), "page-inside", p + 0x300);
    store_test(t, &prot, policy, Form::Movsb(40), "page-inside", p + 0x401);
    store_test(t, &prot, policy, Form::Xchg, "page-inside", p + 0x500);
    store_test(t, &prot, policy, Form::LockAdd, "page-inside", p + 0x508);
    store_test(t, &prot, policy, Form::CmpxchgEq, "page-inside", p + 0x510);
    store_test(t, &prot, policy, Form::Mov8, "before-page", p - 0x100);
    store_test(t, &prot, policy, Form::Mov8, "after-page", p + PAGE + 0x100);
    let gps = GP_COUNT.load(Ordering::SeqCst) - gp0;
    t.check(
        "gp-count",
        gps == if inject { 9 } else { 0 },
        format_args!(
            "{gps} #GP(s) in total, expected {}",
            if inject { 9 } else { 0 }
        ),
    );
    t.check(
        "page-unchanged",
        first_changed(r.pa + PAGE, PAGE).is_none(),
        format_args!("the protected page changed"),
    );
}

// ---- roe-chunk, roe-chunk-inject ---------------------------------------------------------------------

fn chunk(t: &mut T, policy: ViolationPolicy) {
    say!(
        "roe-chunk-{}: ROE_MPROTECT_CHUNK then stores of every form (violation={})",
        policy.as_str(),
        policy.as_str()
    );
    check_policy(t, policy);
    let avx = enable_simd();
    let spp = chunk_spp();
    // Pages a | b c | d e: chunk 1 inside a, chunk 2 across the b/c boundary, chunk 3 the last
    // 8 bytes of d (e unprotected).
    let g = pages(5);
    let (a, b, d) = (g.va, g.va + PAGE, g.va + 3 * PAGE);
    let c1 = (a + 0x123, 0x85u64);
    let c2 = (b + 0xff0, 0x20u64);
    let c3 = (d + 0xff8, 8u64);
    let mut prot = Prot {
        ranges: [(0, 0); 8],
        n: 0,
    };
    for (i, (s, n)) in [c1, c2, c3].into_iter().enumerate() {
        let mut nb = NameBuf::new();
        let _ = fmt::write(&mut nb, format_args!("chunk-{}", i + 1));
        t.ret(nb.as_str(), chunk_protect(s, n), n as i64);
        prot.add(s, n);
    }
    let all = [
        Form::Mov8,
        Form::Movsb(24),
        Form::Stosq(3),
        Form::Xchg,
        Form::CmpxchgEq,
        Form::CmpxchgNe,
        Form::LockAdd,
        Form::V16,
        Form::V32,
    ];
    let forms = if avx { &all[..] } else { &all[..8] };
    let (s1, e1) = (c1.0, c1.0 + c1.1);
    for &f in forms {
        let n = f.len();
        store_test(t, &prot, policy, f, "inside", s1 + 0x1d);
        store_test(t, &prot, policy, f, "outside-subpage", a + 0x800);
        store_test(t, &prot, policy, f, "just-before", s1 - n);
        store_test(t, &prot, policy, f, "just-after", e1);
        store_test(t, &prot, policy, f, "edge-start", s1 - n / 2);
        store_test(t, &prot, policy, f, "edge-end", e1 - n / 2);
        store_test(
            t,
            &prot,
            policy,
            f,
            "page-boundary-protected",
            b + PAGE - n / 2,
        );
        store_test(t, &prot, policy, f, "page-boundary-mixed", d + PAGE - n / 2);
    }
    if policy == ViolationPolicy::Inject {
        rep_into_chunk(t, a, s1);
    }
    t.check(
        "chunks-unchanged",
        [c1, c2, c3]
            .iter()
            .all(|&(s, n)| first_changed(s, n).is_none()),
        format_args!("a protected byte changed"),
    );
    spp_exits(t, a, g.va + 4 * PAGE, spp);
}

/// `rep stosq` starting in unprotected bytes and running into chunk 1 under `inject`: the #GP
/// comes at the rep instruction either before any iteration (nothing written) or at the first
/// iteration that touches a protected byte (the earlier iterations done, RCX/RDI at that one).
fn rep_into_chunk(t: &mut T, a: u64, s1: u64) {
    let dst = a + 0x100;
    let mut prot = Prot {
        ranges: [(0, 0); 8],
        n: 0,
    };
    prot.add(s1, 0x85);
    refill(&prot, dst, s1);
    let (mut c, mut di) = (8u64, dst);
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    guarded!([], "rep stosq", [], inout("rcx") c, inout("rdi") di, in("rax") STOS_VAL,);
    let gps = GP_COUNT.load(Ordering::SeqCst) - gp0;
    let done = (s1 - dst) / 8; // whole quadwords before the first protected byte
    let none = c == 8 && di == dst && first_changed(dst, s1 - dst).is_none();
    let partial = c == 8 - done
        && di == dst + 8 * done
        && (0..8 * done).all(|o| rd(dst + o) == STOS_VAL.to_le_bytes()[(o % 8) as usize])
        && first_changed(dst + 8 * done, s1 - dst - 8 * done).is_none();
    t.check(
        "rep-stosq-into-chunk",
        gps == 1 && GP_RIP.load(Ordering::SeqCst) == FAULT_AT.load(Ordering::SeqCst) && (none || partial) && first_changed(s1, 0x85).is_none(),
        format_args!("#GP count {gps} at {:#x} (rep at {:#x}); RCX={c} RDI={di:#x}; expected RCX=8 RDI={dst:#x} nothing written, or RCX={} RDI={:#x} with the first {} bytes written", GP_RIP.load(Ordering::SeqCst), FAULT_AT.load(Ordering::SeqCst), 8 - done, dst + 8 * done, 8 * done),
    );
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads the time-stamp counter (under Bochs `clock: sync=none`: instructions).
    unsafe { asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Cost of one quadword store at `va`, in TSC ticks.
fn store_cost(va: u64) -> u64 {
    let t0 = rdtsc();
    // SAFETY: `va` is an unprotected arena address.
    unsafe { core::ptr::write_volatile(va as *mut u64, 0x77) };
    rdtsc() - t0
}

/// With SPP, stores to fully unprotected 128-byte sub-pages of a chunk page cause no exit:
/// compare their cost with the same store to a page without any protection.
fn spp_exits(t: &mut T, chunk_page: u64, plain_page: u64, spp: bool) {
    let base = (0..4)
        .map(|i| store_cost(plain_page + 0x800 + 8 * i))
        .min()
        .unwrap_or(0);
    let mut worst = 0;
    // Sub-pages Bulwark leaves writable: after the protected bytes (0x123..0x1a8); not the
    // ones before them, which an FXSAVE/XSAVE starting there could reach (docs/x86_64-spp.md).
    for sp in [0x200u64, 0x800, 0xf80] {
        worst = worst.max(store_cost(chunk_page + sp + 0x40));
    }
    say!("timing: store to an unprotected page {base} ticks; worst store to an unprotected sub-page of a chunk page {worst} ticks");
    if spp {
        t.check(
            "spp-no-exit-unprotected-subpages",
            worst <= 4 * base + 100,
            format_args!("a store to an unprotected sub-page cost {worst} ticks vs {base}: it caused an exit"),
        );
    } else {
        say!("note: chunk protection is not SPP-backed here (software path): no exit count check");
    }
}

// ---- demo ----------------------------------------------------------------------------------------------

/// The demo's fake syscall table: a page of handler addresses.
#[repr(C, align(4096))]
struct SyscallTable([u64; 512]);
static mut SYSCALLS: SyscallTable = SyscallTable([0; 512]);

fn sys_read() -> u64 {
    0x5ead
}
fn sys_write() -> u64 {
    0x3417e
}
fn evil_hook() -> u64 {
    0xbad
}
extern "C" fn evil_isr() {}

fn fnaddr(f: fn() -> u64) -> u64 {
    f as usize as u64
}

fn checksum(a: u64, len: u64) -> u64 {
    // FNV-1a over the bytes.
    (0..len).fold(0xcbf2_9ce4_8422_2325u64, |h, o| {
        (h ^ u64::from(rd(a + o))).wrapping_mul(0x0100_0000_01b3)
    })
}

fn syscall(nr: usize) -> u64 {
    // SAFETY: the table holds addresses of `fn() -> u64` (filled below, never changed).
    unsafe {
        let f = core::ptr::read_volatile(core::ptr::addr_of!(SYSCALLS.0[nr]));
        let f: fn() -> u64 = core::mem::transmute(f as usize);
        f()
    }
}

fn demo() {
    say!("=== Bulwark ROE demo: a guest kernel locks its own tables, then a root attacker strikes ===");
    let table = core::ptr::addr_of!(SYSCALLS) as u64;
    let idt = idt_base();
    let idt_len = 0x81 * 16; // vectors 0..=0x80
                             // SAFETY: filling our own table before it is locked.
    unsafe {
        let s = &mut *core::ptr::addr_of_mut!(SYSCALLS);
        for (i, e) in s.0.iter_mut().enumerate() {
            *e = if i % 2 == 0 {
                fnaddr(sys_read)
            } else {
                fnaddr(sys_write)
            };
        }
    }
    let v = version();
    say!("kernel: ROE_VERSION = {v}");
    let r1 = mprotect(table, 1);
    say!("kernel: ROE_MPROTECT(syscall table {table:#x}, 1 page) = {r1}");
    let r2 = chunk_protect(idt, idt_len);
    say!("kernel: ROE_MPROTECT_CHUNK(IDT {idt:#x}, {idt_len} bytes) = {r2}");
    let (sum_t, sum_i) = (checksum(table, PAGE), checksum(idt, idt_len));
    say!(
        "kernel: checksums: syscall table {sum_t:#018x}, IDT {sum_i:#018x}; sys_read() = {:#x}",
        syscall(0)
    );

    let mut blocked = 0u32;
    let mut tries = 0u32;
    let mut attempt = |what: &str, f: &mut dyn FnMut() -> bool| {
        tries += 1;
        let gp = f();
        let intact = checksum(table, PAGE) == sum_t && checksum(idt, idt_len) == sum_i;
        if intact {
            blocked += 1;
        }
        say!(
            "attacker: {what}: {}",
            match (intact, gp) {
                (true, true) => "blocked (#GP)",
                (true, false) => "blocked",
                (false, _) => "SUCCEEDED",
            }
        );
    };
    say!("attacker: I am root in this guest. Hooking the syscall table and the IDT...");
    attempt("syscall_table[0] = evil_hook", &mut || {
        store64(table, fnaddr(evil_hook))
    });
    let (lo, hi) = gate(evil_isr as extern "C" fn() as usize as u64, 0);
    attempt("IDT[#PF] = evil_isr", &mut || {
        store64(idt + 14 * 16, lo) | store64(idt + 14 * 16 + 8, hi)
    });
    attempt("IDT[#BP] = evil_isr (then int3)", &mut || {
        store64(idt + 3 * 16, lo)
    });
    attempt("patch syscall_table[1] directly", &mut || {
        store64(table + 8, fnaddr(evil_hook))
    });
    attempt("CR0.WP off, then patch", &mut || {
        // SAFETY: clears CR0.WP in ring 0 (restored below).
        unsafe {
            asm!("mov {r}, cr0", "btr {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
        };
        let gp = store64(table + 16, fnaddr(evil_hook));
        // SAFETY: restores CR0.WP.
        unsafe {
            asm!("mov {r}, cr0", "bts {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
        };
        gp
    });
    attempt(
        "map a fresh writable alias of the table and write",
        &mut || {
            let alias = slot();
            map(alias, table, P | RW | ACC | DIRTY);
            store64(alias + 24, fnaddr(evil_hook))
        },
    );
    attempt(
        "ask Bulwark to unprotect (unknown ROE sub-ops 3, 0xff)",
        &mut || {
            let (a, b) = (roe(3, table, 1), roe(0xff, idt, idt_len));
            say!("attacker:   sub-op 3 -> {a}, sub-op 0xff -> {b}");
            store64(table, fnaddr(evil_hook))
        },
    );
    attempt("re-protect with other arguments, then write", &mut || {
        let a = mprotect(table, 0);
        say!("attacker:   ROE_MPROTECT(table, 0) -> {a}");
        store64(table, fnaddr(evil_hook))
    });
    let bp0 = BP_COUNT.load(Ordering::SeqCst);
    let kernel_bp = if checksum(idt, idt_len) == sum_i {
        // SAFETY: int3 goes through the (locked, unchanged) IDT to the kernel's own #BP handler.
        unsafe { asm!("int3") };
        BP_COUNT.load(Ordering::SeqCst) == bp0 + 1
    } else {
        say!("kernel: the IDT was hooked; not raising int3");
        false
    };
    say!(
        "kernel: int3 {}",
        if kernel_bp {
            "reached the kernel's own #BP handler"
        } else {
            "did NOT reach the kernel's handler"
        }
    );
    let ok_t = checksum(table, PAGE) == sum_t;
    let ok_i = checksum(idt, idt_len) == sum_i;
    let sr = syscall(0);
    say!(
        "kernel: syscall table {} ({:#018x}), IDT {} ({:#018x}), sys_read() = {sr:#x}",
        if ok_t { "unchanged" } else { "CHANGED" },
        checksum(table, PAGE),
        if ok_i { "unchanged" } else { "CHANGED" },
        checksum(idt, idt_len)
    );
    let ok = v == ROE_IMPL_VERSION as i64
        && r1 == 1
        && r2 == idt_len as i64
        && ok_t
        && ok_i
        && kernel_bp
        && sr == sys_read()
        && blocked == tries;
    if ok {
        say!("demo: all {tries} attacks blocked; tables intact. Done.");
        exit(0)
    }
    say!("demo: FAILED ({blocked} of {tries} attacks blocked; ROE calls returned {v}, {r1}, {r2})");
    exit(1)
}

// ---- roe-escape: an event delivered onto a chunk page (review A1) --------------------------------

/// IST1 stack for #GP in `roe-escape` (the interrupted stack is the chunk page itself).
static mut ESC_IST: Stack = Stack([0; 16384]);
#[no_mangle]
static mut ROE_ESC_TARGET: u64 = 0;
#[no_mangle]
static mut ROE_ESC_SEEN: u64 = 0;
#[no_mangle]
static mut ROE_ESC_RAN: u64 = 0;
const ESC_VECTOR: usize = 0x81;

core::arch::global_asm!(
    ".section .text",
    ".global roe_escape_isr",
    "roe_escape_isr:",
    "push rax",
    "push rbx",
    "mov rbx, [rip + ROE_ESC_TARGET]",
    "mov rax, 0xdeadbeef",
    "mov [rbx], rax",
    "mov rax, [rbx]",
    "mov [rip + ROE_ESC_SEEN], rax",
    "mov qword ptr [rip + ROE_ESC_RAN], 1",
    "pop rbx",
    "pop rax",
    "iretq",
);

/// `scenario=roe-escape` (violation=inject): CHUNK-protect a qword of a page, point RSP at an
/// unprotected offset of the same page and execute `int 0x81`, whose handler stores 0xdeadbeef
/// into the protected qword and reads it back. The frame push is a write by event delivery to
/// a page with protected bytes: Bulwark must never single-step it (the handler would run
/// untraced against a writable shadow); it logs a `roe-chunk` violation and replaces the
/// delivery by #GP(0) at the INT (taken here on an IST stack). The handler must never run, and
/// the protected qword must never be seen changed.
fn escape(t: &mut T) {
    extern "C" {
        static roe_escape_isr: u8;
    }
    let pg = pages(1);
    let target = pg.va + 0x800;
    let before = rd64(target);
    // SAFETY: single-threaded; the handler reads it.
    unsafe { ROE_ESC_TARGET = target };
    t.ret("escape-chunk", chunk_protect(target, 8), 8);
    // SAFETY: our own TSS and IDT, single-threaded: IST1 = a stack of its own, #GP uses it.
    unsafe {
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        let ist = core::ptr::addr_of!(ESC_IST) as u64 + 16384;
        tss.0[9] = ist as u32;
        tss.0[10] = (ist >> 32) as u32;
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt.0[2 * 13] |= 1 << 32;
    }
    set_gate(ESC_VECTOR, core::ptr::addr_of!(roe_escape_isr) as u64, 0);
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    let stack = pg.va + 0xf00;
    let int_at: u64;
    say!("roe-escape: int {ESC_VECTOR:#x} with RSP on the chunk page (unprotected bytes)");
    // SAFETY: the stack is switched to an unprotected part of our own test page for one INT;
    // a #GP (expected) resumes at label 2 with RSP as at the INT; RSP is restored from r12.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov [{resume}], {t}",
            "lea {at}, [rip + 3f]",
            "mov r12, rsp",
            "mov rsp, {st}",
            "3:",
            "int 0x81",
            "2:",
            "mov rsp, r12",
            t = out(reg) _,
            at = out(reg) int_at,
            resume = in(reg) RESUME.as_ptr(),
            st = in(reg) stack,
            out("r12") _,
        );
    }
    RESUME.store(0, Ordering::SeqCst);
    // SAFETY: single-threaded reads of the handler's results.
    let (seen, ran) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(ROE_ESC_SEEN)),
            core::ptr::read_volatile(core::ptr::addr_of!(ROE_ESC_RAN)),
        )
    };
    t.check(
        "escape-handler-never-ran",
        ran == 0 && seen != 0xdead_beef,
        format_args!("the handler ran ({ran}) and read back {seen:#x}"),
    );
    let after = rd64(target);
    t.check(
        "escape-protected-unchanged",
        after == before,
        format_args!("{after:#x}, expected {before:#x}"),
    );
    let gps = GP_COUNT.load(Ordering::SeqCst) - gp0;
    let gp_rip = GP_RIP.load(Ordering::SeqCst);
    t.check(
        "escape-gp-at-int",
        gps == 1 && gp_rip == int_at,
        format_args!("{gps} #GP, last at {gp_rip:#x}, INT at {int_at:#x}"),
    );
    // The page still takes ordinary stores to its unprotected bytes (the software path).
    // SAFETY: an unprotected byte of our own test page.
    unsafe { core::ptr::write_volatile((pg.va + 0xf10) as *mut u64, 0x1234) };
    t.check(
        "escape-unprotected-store",
        rd64(pg.va + 0xf10) == 0x1234 && rd64(target) == before,
        format_args!("{:#x}", rd64(pg.va + 0xf10)),
    );
    string_io(t, pg, before);
}

/// Bulwark's no-device port 0xf5 (trapped: reads return all ones, writes are dropped), so that
/// INS/OUTS go through Bulwark's string-I/O emulation (other ports pass through).
const NO_DEVICE_PORT: u16 = 0xf5;

/// Run one string I/O instruction with #GP/#PF recovery (resume right after it).
macro_rules! guarded_io {
    ($insn:literal, $rdi:expr, $rsi:expr, $rcx:expr) => {{
        // SAFETY: INS/OUTS on our own test addresses; a #GP or #PF resumes at label 2.
        unsafe {
            asm!(
                "lea {t}, [rip + 2f]",
                "mov [{resume}], {t}",
                $insn,
                "2:",
                t = out(reg) _,
                resume = in(reg) RESUME.as_ptr(),
                inout("rdi") $rdi => _,
                inout("rsi") $rsi => _,
                inout("rcx") $rcx => _,
                in("dx") NO_DEVICE_PORT,
                options(nostack)
            );
        }
        RESUME.store(0, Ordering::SeqCst);
    }};
}

/// Review C3/C4: INS/OUTS emulation applies the store policy per byte and the guest's paging.
fn string_io(t: &mut T, pg: Pg, before: u64) {
    let target = pg.va + 0x800;
    // Unprotected bytes of the chunk page: written, no fault.
    // SAFETY: unprotected bytes of our own test page.
    unsafe { core::ptr::write_volatile((pg.va + 0xf20) as *mut u32, 0) };
    let gp0 = GP_COUNT.load(Ordering::SeqCst);
    guarded_io!("rep insb", pg.va + 0xf20, 0u64, 4u64);
    // SAFETY: as above.
    let got = unsafe { core::ptr::read_volatile((pg.va + 0xf20) as *const u32) };
    t.check(
        "ins-chunk-unprotected",
        got == u32::MAX && GP_COUNT.load(Ordering::SeqCst) == gp0,
        format_args!("{got:#x}, {} #GP", GP_COUNT.load(Ordering::SeqCst) - gp0),
    );
    // A protected byte: a roe-chunk violation (inject: #GP(0)), the byte unchanged.
    guarded_io!("insb", target + 2, 0u64, 0u64);
    t.check(
        "ins-chunk-protected-gp",
        GP_COUNT.load(Ordering::SeqCst) == gp0 + 1 && rd64(target) == before,
        format_args!(
            "{} #GP, protected qword {:#x}",
            GP_COUNT.load(Ordering::SeqCst) - gp0,
            rd64(target)
        ),
    );
    // The guest's own paging: INS into a page it maps read-only (CR0.WP set) is #PF(P|W).
    let ro = pages(1);
    map(ro.va, ro.pa, P | ACC | DIRTY);
    // SAFETY: sets CR0.WP (bit 16) in ring 0.
    unsafe {
        asm!("mov {r}, cr0", "bts {r}, 16", "mov cr0, {r}", r = out(reg) _, options(nostack))
    };
    let old = rd(ro.va + 0x10);
    let pf0 = PF_COUNT.load(Ordering::SeqCst);
    guarded_io!("insb", ro.va + 0x10, 0u64, 0u64);
    let (n, err, cr2) = (
        PF_COUNT.load(Ordering::SeqCst) - pf0,
        PF_ERR.load(Ordering::SeqCst),
        PF_CR2.load(Ordering::SeqCst),
    );
    t.check(
        "ins-readonly-pf",
        n == 1 && err == 3 && cr2 == ro.va + 0x10 && rd(ro.va + 0x10) == old,
        format_args!("{n} #PF, error {err:#x}, cr2 {cr2:#x}"),
    );
    // OUTS from a page that is not present: #PF(0), CR2 at the address.
    let hole = slot();
    guarded_io!("outsb", 0u64, hole + 0x20, 0u64);
    let (n, err, cr2) = (
        PF_COUNT.load(Ordering::SeqCst) - pf0,
        PF_ERR.load(Ordering::SeqCst),
        PF_CR2.load(Ordering::SeqCst),
    );
    t.check(
        "outs-not-present-pf",
        n == 2 && err == 0 && cr2 == hole + 0x20,
        format_args!("{} #PF, error {err:#x}, cr2 {cr2:#x}", n),
    );
}
