//! `scenario=matrix policy=skip|inject [stride=N] [push=0|1]`: the generated store matrix.
//!
//! Four consecutive pages: Z (plain), A and B (chunk pages) and C (locked with ROE_MPROTECT).
//! Chunks: A+0..4 (the Z/A page edge), A+0x200..0x208, the single byte A+0x400, A+0xff8..B+8
//! (a chunk across the A/B page edge) and B+0x800..0x840. Every store form below is executed at
//! every offset where it touches, or ends or starts right at, one of the edges (chunk starts and
//! ends, the page edges Z/A, A/B and B/C), i.e. for an edge `e` and a store of `n` bytes every
//! destination in `e-n ..= e` (aligned forms: the aligned ones). Before each store the guest
//! updates a model of all four pages (it knows which bytes are locked): under `skip` the store's
//! unlocked bytes take the new value and locked bytes keep theirs; under `inject` a store that
//! would change a locked byte must raise #GP(0) at the store and change nothing (a store that
//! touches locked bytes without changing any may do either, consistently), and a store that
//! touches no locked byte must not fault. After each store every byte of the four pages is
//! compared with the model. `stride=N` runs every N-th case (CI), `all=NAME` every case of the
//! form NAME whatever the stride; the case count is printed.

use core::arch::asm;
use core::sync::atomic::Ordering;

use bulwark_abi::roe::{KVM_HC_ROE, ROE_MPROTECT, ROE_MPROTECT_CHUNK};

use super::{cpuid, exit, vmcall, Com1, GP_CODE, GP_RESUME, GP_SEEN};
#[allow(unused_imports)]
use core::fmt::Write as _;

const PAGE: u64 = 4096;
const SIZE: usize = 4 * 4096;
const A: u64 = PAGE;
const B: u64 = 2 * PAGE;
const C: u64 = 3 * PAGE;
/// Chunks: (offset from Z, length).
const CHUNKS: [(u64, u64); 5] = [
    (A, 4),
    (A + 0x200, 8),
    (A + 0x400, 1),
    (A + 0xff8, 16),
    (B + 0x800, 0x40),
];
/// Edges, ascending.
const EDGES: [u64; 12] = [
    A,
    A + 4,
    A + 0x200,
    A + 0x208,
    A + 0x400,
    A + 0x401,
    A + 0xff8,
    B,
    B + 8,
    B + 0x800,
    B + 0x840,
    C,
];

#[repr(C, align(4096))]
struct Mem([u8; SIZE]);
static mut MEM: Mem = Mem([0; SIZE]);
static mut MODEL: Mem = Mem([0; SIZE]);
/// 1 where the byte is locked.
static mut LOCKED: Mem = Mem([0; SIZE]);
#[repr(C, align(64))]
struct Buf([u8; 512]);
/// Source bytes of copies and vector stores.
static mut SRC: Buf = Buf([0; 512]);
/// FXSAVE of the same state, for the expected bytes.
static mut SCRATCH: Buf = Buf([0; 512]);

fn mem() -> u64 {
    core::ptr::addr_of!(MEM) as u64
}

fn init(o: u64) -> u8 {
    (o as u8).wrapping_mul(13) ^ ((o >> 8) as u8).wrapping_mul(7) ^ 0xa5
}

/// The store forms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum F {
    Mov1,
    Mov2,
    Mov4,
    Mov8,
    MovImm8,
    Movnti4,
    Movnti8,
    Movsb,
    Movsw,
    Movsd,
    Movsq,
    RepMovsb13,
    RepStosb7,
    RepStosd3,
    RepStosq2,
    Stosw,
    Push8,
    Xchg4,
    Xchg8,
    Cmpxchg1,
    Cmpxchg4,
    Cmpxchg8,
    Cmpxchg8b,
    Cmpxchg16b,
    Xadd8,
    LockAdd4,
    LockOr8,
    LockAnd8,
    Add1,
    Inc4,
    Not8,
    LockBts8,
    Setz1,
    Movd4,
    Movq8,
    Movdqu16,
    Movups16,
    Movaps16,
    Vmovdqu32,
    Fxsave512,
}

const FORMS: [F; 40] = [
    F::Mov1,
    F::Mov2,
    F::Mov4,
    F::Mov8,
    F::MovImm8,
    F::Movnti4,
    F::Movnti8,
    F::Movsb,
    F::Movsw,
    F::Movsd,
    F::Movsq,
    F::RepMovsb13,
    F::RepStosb7,
    F::RepStosd3,
    F::RepStosq2,
    F::Stosw,
    F::Push8,
    F::Xchg4,
    F::Xchg8,
    F::Cmpxchg1,
    F::Cmpxchg4,
    F::Cmpxchg8,
    F::Cmpxchg8b,
    F::Cmpxchg16b,
    F::Xadd8,
    F::LockAdd4,
    F::LockOr8,
    F::LockAnd8,
    F::Add1,
    F::Inc4,
    F::Not8,
    F::LockBts8,
    F::Setz1,
    F::Movd4,
    F::Movq8,
    F::Movdqu16,
    F::Movups16,
    F::Movaps16,
    F::Vmovdqu32,
    F::Fxsave512,
];

impl F {
    fn name(self) -> &'static str {
        match self {
            F::Mov1 => "mov8",
            F::Mov2 => "mov16",
            F::Mov4 => "mov32",
            F::Mov8 => "mov64",
            F::MovImm8 => "mov64-imm32",
            F::Movnti4 => "movnti32",
            F::Movnti8 => "movnti64",
            F::Movsb => "movsb",
            F::Movsw => "movsw",
            F::Movsd => "movsd",
            F::Movsq => "movsq",
            F::RepMovsb13 => "rep-movsb-13",
            F::RepStosb7 => "rep-stosb-7",
            F::RepStosd3 => "rep-stosd-3",
            F::RepStosq2 => "rep-stosq-2",
            F::Stosw => "stosw",
            F::Push8 => "push",
            F::Xchg4 => "xchg32",
            F::Xchg8 => "xchg64",
            F::Cmpxchg1 => "lock-cmpxchg8",
            F::Cmpxchg4 => "lock-cmpxchg32",
            F::Cmpxchg8 => "lock-cmpxchg64",
            F::Cmpxchg8b => "lock-cmpxchg8b",
            F::Cmpxchg16b => "lock-cmpxchg16b",
            F::Xadd8 => "lock-xadd64",
            F::LockAdd4 => "lock-add32",
            F::LockOr8 => "lock-or64",
            F::LockAnd8 => "lock-and64",
            F::Add1 => "add8",
            F::Inc4 => "inc32",
            F::Not8 => "not64",
            F::LockBts8 => "lock-bts64",
            F::Setz1 => "setz",
            F::Movd4 => "movd",
            F::Movq8 => "movq",
            F::Movdqu16 => "movdqu",
            F::Movups16 => "movups",
            F::Movaps16 => "movaps",
            F::Vmovdqu32 => "vmovdqu-ymm",
            F::Fxsave512 => "fxsave",
        }
    }
    fn len(self) -> u64 {
        match self {
            F::Mov1 | F::Movsb | F::Cmpxchg1 | F::Add1 | F::Setz1 => 1,
            F::Mov2 | F::Movsw | F::Stosw => 2,
            F::Mov4 | F::Movnti4 | F::Movsd | F::Xchg4 | F::Cmpxchg4 | F::LockAdd4 | F::Inc4 => 4,
            F::Movd4 => 4,
            F::RepMovsb13 => 13,
            F::RepStosb7 => 7,
            F::RepStosd3 => 12,
            F::RepStosq2 | F::Cmpxchg16b | F::Movdqu16 | F::Movups16 | F::Movaps16 => 16,
            F::Vmovdqu32 => 32,
            F::Fxsave512 => 512,
            _ => 8,
        }
    }
    /// A fault may come after part of the store was written (string iterations; FXSAVE).
    fn partial(self) -> bool {
        matches!(
            self,
            F::RepMovsb13 | F::RepStosb7 | F::RepStosd3 | F::RepStosq2 | F::Fxsave512
        )
    }

    /// Required alignment of the destination (#GP otherwise).
    fn align(self) -> u64 {
        match self {
            F::Cmpxchg16b | F::Movaps16 | F::Fxsave512 => 16,
            _ => 1,
        }
    }
}

/// Execute `f` at `dst` with value `v` (#GP recovery through the guest's handler). Returns
/// whether a #GP(0) was taken at the store.
fn exec(f: F, dst: u64, v: u64) -> bool {
    let src = core::ptr::addr_of!(SRC) as u64;
    let seen = GP_SEEN.load(Ordering::SeqCst);
    GP_CODE.store(u64::MAX, Ordering::SeqCst);
    macro_rules! g {
        ($($insn:literal),+ ; $($ops:tt)*) => {{
            // SAFETY: stores only to this module's pages at `dst` (chosen by the caller inside
            // them); a #GP resumes at label 2 through the guest's handler (GP_RESUME).
            unsafe {
                asm!(
                    "lea r11, [rip + 2f]",
                    "mov [r10], r11",
                    $($insn,)+
                    "2:",
                    $($ops)*
                    in("r10") GP_RESUME.as_ptr(),
                    out("r11") _,
                );
            }
        }};
    }
    // SAFETY: `dst..dst+16` lies in MEM (callers keep every destination inside it).
    let old8 = unsafe { core::ptr::read_unaligned(dst as *const u64) };
    // SAFETY: as above.
    let old16 = unsafe { core::ptr::read_unaligned((dst + 8) as *const u64) };
    match f {
        F::Mov1 => g!("mov byte ptr [{d}], {v:l}"; d = in(reg) dst, v = in(reg) v,),
        F::Mov2 => g!("mov word ptr [{d}], {v:x}"; d = in(reg) dst, v = in(reg) v,),
        F::Mov4 => g!("mov dword ptr [{d}], {v:e}"; d = in(reg) dst, v = in(reg) v,),
        F::Mov8 => g!("mov qword ptr [{d}], {v}"; d = in(reg) dst, v = in(reg) v,),
        F::MovImm8 => g!("mov qword ptr [{d}], -0x789abcdf"; d = in(reg) dst,),
        F::Movnti4 => g!("movnti dword ptr [{d}], {v:e}"; d = in(reg) dst, v = in(reg) v,),
        F::Movnti8 => g!("movnti qword ptr [{d}], {v}"; d = in(reg) dst, v = in(reg) v,),
        F::Movsb => g!("movsb"; inout("rdi") dst => _, inout("rsi") src => _,),
        F::Movsw => g!("movsw"; inout("rdi") dst => _, inout("rsi") src => _,),
        F::Movsd => g!("movsd"; inout("rdi") dst => _, inout("rsi") src => _,),
        F::Movsq => g!("movsq"; inout("rdi") dst => _, inout("rsi") src => _,),
        F::RepMovsb13 => {
            g!("rep movsb"; inout("rcx") 13u64 => _, inout("rdi") dst => _, inout("rsi") src => _,)
        }
        F::RepStosb7 => {
            g!("rep stosb"; inout("rcx") 7u64 => _, inout("rdi") dst => _, in("rax") v,)
        }
        F::RepStosd3 => {
            g!("rep stosd"; inout("rcx") 3u64 => _, inout("rdi") dst => _, in("rax") v,)
        }
        F::RepStosq2 => {
            g!("rep stosq"; inout("rcx") 2u64 => _, inout("rdi") dst => _, in("rax") v,)
        }
        F::Stosw => g!("stosw"; inout("rdi") dst => _, in("rax") v,),
        F::Push8 => g!("mov r8, rsp", "mov rsp, {e}", "push {v}", "mov rsp, r8";
            e = in(reg) dst + 8, v = in(reg) v, out("r8") _,),
        F::Xchg4 => g!("xchg dword ptr [{d}], {v:e}"; d = in(reg) dst, v = inout(reg) v => _,),
        F::Xchg8 => g!("xchg qword ptr [{d}], {v}"; d = in(reg) dst, v = inout(reg) v => _,),
        F::Cmpxchg1 => g!("lock cmpxchg byte ptr [{d}], {v:l}";
            d = in(reg) dst, v = in(reg) v, inout("rax") old8 => _,),
        F::Cmpxchg4 => g!("lock cmpxchg dword ptr [{d}], {v:e}";
            d = in(reg) dst, v = in(reg) v, inout("rax") old8 => _,),
        F::Cmpxchg8 => g!("lock cmpxchg qword ptr [{d}], {v}";
            d = in(reg) dst, v = in(reg) v, inout("rax") old8 => _,),
        F::Cmpxchg8b => g!("xchg rbx, {b}", "lock cmpxchg8b qword ptr [{d}]", "xchg rbx, {b}";
            d = in(reg) dst, b = inout(reg) v & 0xffff_ffff => _,
            inout("rax") old8 & 0xffff_ffff => _, inout("rdx") old8 >> 32 => _, in("rcx") v >> 32,),
        F::Cmpxchg16b => g!("xchg rbx, {b}", "lock cmpxchg16b xmmword ptr [{d}]", "xchg rbx, {b}";
            d = in(reg) dst, b = inout(reg) v => _,
            inout("rax") old8 => _, inout("rdx") old16 => _, in("rcx") !v,),
        F::Xadd8 => g!("lock xadd qword ptr [{d}], {v}"; d = in(reg) dst, v = inout(reg) v => _,),
        F::LockAdd4 => g!("lock add dword ptr [{d}], {v:e}"; d = in(reg) dst, v = in(reg) v,),
        F::LockOr8 => g!("lock or qword ptr [{d}], {v}"; d = in(reg) dst, v = in(reg) v,),
        F::LockAnd8 => g!("lock and qword ptr [{d}], {v}"; d = in(reg) dst, v = in(reg) v,),
        F::Add1 => g!("add byte ptr [{d}], {v:l}"; d = in(reg) dst, v = in(reg) v,),
        F::Inc4 => g!("inc dword ptr [{d}]"; d = in(reg) dst,),
        F::Not8 => g!("not qword ptr [{d}]"; d = in(reg) dst,),
        F::LockBts8 => g!("lock bts qword ptr [{d}], {b}"; d = in(reg) dst, b = in(reg) v & 63,),
        F::Setz1 => g!("cmp eax, eax", "setz byte ptr [{d}]"; d = in(reg) dst, out("rax") _,),
        F::Movd4 => g!("movdqu xmm0, [{s}]", "movd dword ptr [{d}], xmm0";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Movq8 => g!("movdqu xmm0, [{s}]", "movq qword ptr [{d}], xmm0";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Movdqu16 => g!("movdqu xmm0, [{s}]", "movdqu [{d}], xmm0";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Movups16 => g!("movups xmm0, [{s}]", "movups [{d}], xmm0";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Movaps16 => g!("movaps xmm0, [{s}]", "movaps [{d}], xmm0";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Vmovdqu32 => g!("vmovdqu ymm0, [{s}]", "vmovdqu [{d}], ymm0", "vzeroupper";
            d = in(reg) dst, s = in(reg) src, out("xmm0") _,),
        F::Fxsave512 => g!("fxsave [{d}]"; d = in(reg) dst,),
    }
    GP_RESUME.store(0, Ordering::SeqCst);
    GP_SEEN.load(Ordering::SeqCst) != seen && GP_CODE.load(Ordering::SeqCst) == 0
}

/// The bytes `f` writes at a destination whose current bytes are `old` (the first `len`).
fn new_bytes(f: F, old: &[u8; 512], v: u64, out: &mut [u8; 512]) {
    let le = |x: u64, out: &mut [u8; 512]| out[..8].copy_from_slice(&x.to_le_bytes());
    let o8 = u64::from_le_bytes([
        old[0], old[1], old[2], old[3], old[4], old[5], old[6], old[7],
    ]);
    // SAFETY: our own statics, single-threaded.
    let src = unsafe { &(*core::ptr::addr_of!(SRC)).0 };
    match f {
        F::Mov1 | F::Mov2 | F::Mov4 | F::Mov8 | F::Movnti4 | F::Movnti8 | F::Push8 => le(v, out),
        F::Xchg4 | F::Xchg8 | F::Cmpxchg1 | F::Cmpxchg4 | F::Cmpxchg8 => le(v, out),
        F::MovImm8 => le(0xffff_ffff_8765_4321, out),
        F::Cmpxchg8b => le(v, out),
        F::Cmpxchg16b => {
            le(v, out);
            out[8..16].copy_from_slice(&(!v).to_le_bytes());
        }
        F::Movsb | F::Movsw | F::Movsd | F::Movsq | F::RepMovsb13 => out.copy_from_slice(src),
        F::Movd4 | F::Movq8 | F::Movdqu16 | F::Movups16 | F::Movaps16 | F::Vmovdqu32 => {
            out.copy_from_slice(src)
        }
        F::RepStosb7 => out[..7].fill(v as u8),
        F::RepStosd3 => {
            for i in 0..3 {
                out[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
        }
        F::RepStosq2 => {
            le(v, out);
            out[8..16].copy_from_slice(&v.to_le_bytes());
        }
        F::Stosw => le(v, out),
        F::Xadd8 => le(o8.wrapping_add(v), out),
        F::LockAdd4 => le(u64::from((o8 as u32).wrapping_add(v as u32)), out),
        F::LockOr8 => le(o8 | v, out),
        F::LockAnd8 => le(o8 & v, out),
        F::Add1 => out[0] = old[0].wrapping_add(v as u8),
        F::Inc4 => le(u64::from((o8 as u32).wrapping_add(1)), out),
        F::Not8 => le(!o8, out),
        F::LockBts8 => le(o8 | (1 << (v & 63)), out),
        F::Setz1 => out[0] = 1,
        F::Fxsave512 => {
            // The same state saved over a copy of the old bytes: FXSAVE leaves bytes 464..511
            // alone, and so does the expectation.
            // SAFETY: our own 16-byte aligned static.
            unsafe {
                let s = &mut (*core::ptr::addr_of_mut!(SCRATCH)).0;
                s.copy_from_slice(old);
                asm!("fxsave [{}]", in(reg) s.as_mut_ptr(), options(nostack));
                out.copy_from_slice(s);
            }
        }
    }
}

/// Enable SSE, and AVX when CPUID offers it (XSETBV: Bulwark handles the exit). Returns AVX.
fn enable_simd() -> bool {
    // SAFETY: CR0/CR4 bits for SSE as the SDM prescribes (CR0.EM=0, MP=1, CR4.OSFXSR|OSXMMEXCPT).
    unsafe {
        asm!(
            "mov {r}, cr0", "and {r}, -5", "or {r}, 2", "mov cr0, {r}",
            "mov {r}, cr4", "or {r}, 0x600", "mov cr4, {r}",
            r = out(reg) _, options(nostack)
        );
    }
    let ecx = cpuid(1, 0)[2];
    if ecx & (1 << 26) == 0 || ecx & (1 << 28) == 0 {
        return false;
    }
    // SAFETY: CPUID says XSAVE and AVX exist; XCR0 = x87|SSE|AVX is valid.
    unsafe {
        asm!(
            "mov {r}, cr4", "or {r}, 0x40000", "mov cr4, {r}",
            "xor ecx, ecx", "xor edx, edx", "mov eax, 7", "xsetbv",
            r = out(reg) _, out("rax") _, out("rcx") _, out("rdx") _, options(nostack)
        );
    }
    cpuid(1, 0)[2] & (1 << 27) != 0
}

/// First byte of `m` that differs from `expect` (which is `model` outside `r`); whole
/// quadwords are compared outside `r`.
fn first_diff(
    m: &[u8; SIZE],
    model: &[u8; SIZE],
    r: &core::ops::Range<usize>,
    expect: &dyn Fn(usize) -> u8,
) -> Option<usize> {
    let q = |a: &[u8; SIZE], i: usize| {
        u64::from_le_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    (0..SIZE).step_by(8).find_map(|i| {
        if (i + 8 <= r.start || i >= r.end) && q(m, i) == q(model, i) {
            return None;
        }
        (i..i + 8).find(|&x| m[x] != expect(x))
    })
}

pub fn run(cmdline: &str) -> ! {
    let word = |k: &str| {
        cmdline
            .split_ascii_whitespace()
            .find_map(|t| t.strip_prefix(k))
    };
    let inject = word("policy=") == Some("inject");
    // `all=NAME`: every case of that form, whatever the stride.
    let all = word("all=");
    let stride = word("stride=")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    let avx = enable_simd();
    let base = mem();
    // SAFETY: our own statics, single-threaded; MEM is written before any lock.
    let (m, model, locked) = unsafe {
        (
            &mut (*core::ptr::addr_of_mut!(MEM)).0,
            &mut (*core::ptr::addr_of_mut!(MODEL)).0,
            &mut (*core::ptr::addr_of_mut!(LOCKED)).0,
        )
    };
    for (i, b) in m.iter_mut().enumerate() {
        *b = init(i as u64);
    }
    let mut failed = 0u32;
    let mut lock_ok = vmcall(KVM_HC_ROE, ROE_MPROTECT, base + C, 1) == 1;
    for &(o, n) in CHUNKS.iter() {
        lock_ok &= vmcall(KVM_HC_ROE, ROE_MPROTECT_CHUNK, base + o, n) == n;
        for x in o..o + n {
            locked[x as usize] = 1;
        }
    }
    locked[C as usize..].fill(1);
    model.copy_from_slice(m);
    if !lock_ok {
        say!("FAIL matrix-locks: a lock hypercall failed");
        exit(1);
    }
    say!(
        "matrix: policy={} stride={stride} avx={avx}: pages at {base:#x} (Z plain, A/B chunk pages, C locked)",
        if inject { "inject" } else { "skip" }
    );
    let mut cases = 0u64;
    let mut index = 0u64;
    let mut bad = 0u64;
    let mut faults = 0u64;
    let mut partial = 0u64;
    for f in FORMS {
        if (f == F::Vmovdqu32 && !avx) || (f == F::Push8 && inject) {
            // push under inject would deliver #GP onto the test pages themselves (the frame
            // goes to RSP); roe-escape covers event delivery onto chunk pages.
            continue;
        }
        let n = f.len();
        let mut last: Option<u64> = None;
        let mut form_cases = 0u64;
        for e in EDGES {
            for dst in e.saturating_sub(n)..=e {
                if dst % f.align() != 0 || dst + n > SIZE as u64 || last.is_some_and(|l| dst <= l) {
                    continue;
                }
                last = Some(dst);
                index += 1;
                if !(index - 1).is_multiple_of(stride) && all != Some(f.name()) {
                    continue;
                }
                cases += 1;
                form_cases += 1;
                let v =
                    (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_0f0f_3c3c_9696) | 0x0101;
                // SAFETY: our own static.
                unsafe {
                    for (i, b) in (*core::ptr::addr_of_mut!(SRC)).0.iter_mut().enumerate() {
                        *b = (v >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(29);
                    }
                }
                let d = dst as usize;
                let mut old = [0u8; 512];
                let have = (SIZE - d).min(512);
                old[..have].copy_from_slice(&model[d..d + have]);
                let mut new = [0u8; 512];
                new_bytes(f, &old, v, &mut new);
                let r = d..d + n as usize;
                let touches = r.clone().any(|x| locked[x] != 0);
                let changes = r.clone().any(|x| locked[x] != 0 && new[x - d] != model[x]);
                let gp = exec(f, base + dst, v);
                if gp {
                    faults += 1;
                }
                // What may happen: a fault that changed nothing, or the store with locked
                // bytes kept.
                let fault_ok = inject && touches;
                let store_ok = !inject || !changes;
                let stored = !gp;
                let expect = |model: &[u8; SIZE], x: usize| -> u8 {
                    if stored && r.contains(&x) && locked[x] == 0 {
                        new[x - d]
                    } else {
                        model[x]
                    }
                };
                let mut diff = first_diff(m, model, &r, &|x| expect(model, x));
                if gp && diff.is_some() && f.partial() {
                    // A string iteration or FXSAVE that faults may leave earlier parts written
                    // (the architecture's rule; the CPU wrote them to an unprotected page before
                    // it reached the protected one): every byte is old, or new where unlocked.
                    let either =
                        |x: usize| m[x] == model[x] || (locked[x] == 0 && m[x] == new[x - d]);
                    diff = first_diff(m, model, &r, &|x| if either(x) { m[x] } else { model[x] });
                    if diff.is_none() {
                        partial += 1;
                        model[r.clone()].copy_from_slice(&m[r.clone()]);
                    }
                }
                let ok = diff.is_none() && if gp { fault_ok } else { store_ok };
                if ok {
                    if stored {
                        for x in r.clone() {
                            if locked[x] == 0 {
                                model[x] = new[x - d];
                            }
                        }
                    }
                } else {
                    bad += 1;
                    if bad <= 20 {
                        let at = diff.unwrap_or(0);
                        say!(
                            "FAIL matrix {} dst=Z+{dst:#x} len={n}: #GP={gp} (fault allowed {fault_ok}, store allowed {store_ok}); byte Z+{at:#x} is {:#x}, expected {:#x}",
                            f.name(),
                            m[at],
                            expect(model, at)
                        );
                    }
                    // Resynchronise the model with memory to keep reporting independent cases.
                    model.copy_from_slice(m);
                }
            }
        }
        say!("matrix: {} at {form_cases} offsets", f.name());
    }
    let total_bytes_locked = locked.iter().filter(|&&b| b != 0).count();
    if bad == 0 {
        say!("PASS matrix-all-cases: {cases} cases, {faults} #GP ({partial} after a partial string/FXSAVE write to an unprotected page), every byte of the 4 pages as the model says ({total_bytes_locked} locked bytes)");
    } else {
        failed += 1;
        say!("FAIL matrix-all-cases: {bad} of {cases} cases differ from the model");
    }
    say!("matrix: {cases} cases: {failed} check(s) failed");
    exit(failed)
}
