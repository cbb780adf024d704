//! The world switch: entering the guest at EL1 and coming back on an exception, plus the EL2
//! exception vector table.
//!
//! Model: [`enter_guest`] saves Bulwark's callee-saved registers (x19-x30, d8-d15, sp) into the
//! vCPU's [`VcpuRegs`], loads the guest's general-purpose and FP/SIMD registers, PC and PSTATE,
//! and `eret`s. An exception from the guest lands in the lower-EL vectors, which store the guest's
//! registers back (TPIDR_EL2 points at the running vCPU's `VcpuRegs`), restore Bulwark's, and
//! return from `enter_guest` with the vector slot as the exit kind. So the run loop is plain Rust:
//! `loop { let kind = enter_guest(regs); ... }`.
//!
//! EL1 system registers are not switched: one guest owns the CPU and Bulwark never uses EL1.
//! FP/SIMD registers are switched because Bulwark's compiled code uses them (memcpy, NEON):
//! on a CPU with SVE the whole SVE state (Z0-Z31 at the vector length, P0-P15, FFR; streaming
//! mode with SME), else V0-V31; FPSR/FPCR always (see [`init_fp_state`], docs/aarch64.md).
//!
//! Exceptions taken at EL2 itself (a Bulwark bug) go to
//! `bulwark_el2_exception(frame, kind)`, which the binary provides; it may return to resume.

use core::mem::offset_of;

/// The guest's register file and the host state saved around a guest run.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default)]
pub struct VcpuRegs {
    /// x0..x30.
    pub x: [u64; 31],
    /// Guest PC (ELR_EL2).
    pub pc: u64,
    /// Guest PSTATE (SPSR_EL2).
    pub pstate: u64,
    host_sp: u64,
    host_x: [u64; 12],
    host_d: [u64; 8],
    pub fpsr: u64,
    pub fpcr: u64,
    /// V0..V31 (without SVE: with SVE the full Z registers live in the SVE save area and these
    /// are neither saved nor loaded, see [`init_fp_state`]).
    pub v: [u128; 32],
    /// The SVE save area ([`init_fp_state`]) or 0; set by [`enter_guest`] on every entry.
    sve_area: u64,
}

/// Largest SVE/SME vector length the architecture allows, in bytes (2048 bits).
const VL_MAX: usize = 256;
/// SVE save area: a flags word (bit 0 the state was saved in streaming mode, bit 1 the CPU has
/// SME, bit 2 it has FEAT_SME_FA64), padding, Z0-Z31 at the current vector length, then P0-P15 and FFR (VL/8 bytes each),
/// laid out with ADDVL/`mul vl` offsets so it fits any vector length up to [`VL_MAX`].
const SVE_AREA_BYTES: usize = 16 + 32 * VL_MAX + 17 * (VL_MAX / 8);
const SVE_FLAG_SME: u64 = 2;
/// FEAT_SME_FA64 (SMCR_EL2.FA64 set): FFR exists in streaming mode too.
const SVE_FLAG_FA64: u64 = 4;

#[repr(C, align(16))]
struct SveArea(core::cell::UnsafeCell<[u8; SVE_AREA_BYTES]>);
// SAFETY: one vCPU; the area is written only by the world-switch assembly (guest not running
// in between) and by `init_fp_state`/`clear_fp_state`, which run between guest runs.
unsafe impl Sync for SveArea {}
static SVE_AREA: SveArea = SveArea(core::cell::UnsafeCell::new([0; SVE_AREA_BYTES]));
static SVE_AREA_ADDR: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Choose how the guest's FP/SIMD state is switched on this CPU: with SVE, the full Z0-Z31 (at
/// the vector length in effect at EL2, which ZCR_EL2.LEN = max makes at least the guest's),
/// P0-P15 and FFR; with SME also streaming mode (the streaming Z/P registers, and FFR with
/// FEAT_SME_FA64, are saved, then
/// SMSTOP SM so Bulwark's NEON code runs; SMSTART SM before they are loaded back; ZA is never
/// touched by Bulwark and stays as it is). Without SVE only V0-V31. FPSR/FPCR always.
/// Call once per CPU, before the first [`enter_guest`].
pub fn init_fp_state(has_sve: bool, has_sme: bool, has_fa64: bool) {
    if !has_sve {
        SVE_AREA_ADDR.store(0, core::sync::atomic::Ordering::Relaxed);
        return;
    }
    clear_fp_state();
    let base = SVE_AREA.0.get();
    let flags = match (has_sme, has_fa64) {
        (true, true) => SVE_FLAG_SME | SVE_FLAG_FA64,
        (true, false) => SVE_FLAG_SME,
        _ => 0,
    };
    // SAFETY: the area is 16-byte aligned and at least 8 bytes; no guest runs now.
    unsafe { core::ptr::write_volatile(base.cast::<u64>(), flags) };
    SVE_AREA_ADDR.store(base as u64, core::sync::atomic::Ordering::Relaxed);
}

/// Zero the guest's saved SVE registers (a guest reboot starts with them zero), keeping the
/// CPU's SME/FA64 flags. Call only while the guest is not running.
pub fn clear_fp_state() {
    let base = SVE_AREA.0.get();
    // SAFETY: the area belongs to this module; no guest runs now, so the world-switch code does
    // not use it concurrently.
    unsafe {
        let flags = core::ptr::read_volatile(base.cast::<u64>()) & (SVE_FLAG_SME | SVE_FLAG_FA64);
        core::ptr::write_bytes(base.cast::<u8>(), 0, SVE_AREA_BYTES);
        core::ptr::write_volatile(base.cast::<u64>(), flags);
    }
}

impl VcpuRegs {
    /// General-purpose register `n` (0..=30); register 31 reads as zero (XZR) as in the ISA.
    pub fn reg(&self, n: u8) -> u64 {
        self.x.get(usize::from(n)).copied().unwrap_or(0)
    }
    /// Write register `n`; writes to 31 (XZR) are dropped.
    pub fn set_reg(&mut self, n: u8, v: u64) {
        if let Some(r) = self.x.get_mut(usize::from(n)) {
            *r = v;
        }
    }
}

/// Frame pushed by the EL2 (current-EL) exception entry.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct El2Frame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
}

/// Exit kinds: the vector slot the guest's exception used.
pub mod exit_kind {
    pub const SYNC: u64 = 0;
    pub const IRQ: u64 = 1;
    pub const FIQ: u64 = 2;
    pub const SERROR: u64 = 3;
    /// Synchronous exception from an AArch32 lower EL: EL1 is AArch64 (HCR_EL2.RW = 1) but EL0
    /// may run 32-bit processes. 5..7 are the AArch32 IRQ/FIQ/SError slots (never routed here).
    pub const AARCH32: u64 = 4;
}

/// Current-EL vector slots passed to `bulwark_el2_exception`.
pub mod el2_kind {
    pub const SP0_SYNC: u64 = 0;
    pub const SPX_SYNC: u64 = 4;
    pub fn name(kind: u64) -> &'static str {
        match kind {
            0 => "sync (SP_EL0)",
            1 => "irq (SP_EL0)",
            2 => "fiq (SP_EL0)",
            3 => "serror (SP_EL0)",
            4 => "sync",
            5 => "irq",
            6 => "fiq",
            7 => "serror",
            _ => "?",
        }
    }
}

const _: () = assert!(core::mem::size_of::<El2Frame>() == 264);

core::arch::global_asm!(
    r#"
    .arch_extension sve
    .arch_extension sme
    .section .text.bulwark_vectors, "ax"

    .macro EL2_ENTRY kind
    .balign 128
    sub     sp, sp, #272
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       __bulwark_el2_common
    .endm

    .macro LOWER_ENTRY kind
    .balign 128
    stp     x0, x1, [sp, #-16]!
    mov     x1, #\kind
    b       __bulwark_guest_exit
    .endm

    .balign 2048
    .global bulwark_el2_vectors
bulwark_el2_vectors:
    EL2_ENTRY 0
    EL2_ENTRY 1
    EL2_ENTRY 2
    EL2_ENTRY 3
    EL2_ENTRY 4
    EL2_ENTRY 5
    EL2_ENTRY 6
    EL2_ENTRY 7
    LOWER_ENTRY 0
    LOWER_ENTRY 1
    LOWER_ENTRY 2
    LOWER_ENTRY 3
    LOWER_ENTRY 4
    LOWER_ENTRY 5
    LOWER_ENTRY 6
    LOWER_ENTRY 7

__bulwark_el2_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x30, x2, [sp, #240]
    str     x3, [sp, #256]
    mov     x0, sp
    bl      bulwark_el2_exception
    ldp     x30, x2, [sp, #240]
    ldr     x3, [sp, #256]
    msr     elr_el2, x2
    msr     spsr_el2, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #272
    eret

    /* x0 = &mut VcpuRegs. Returns the exit kind in x0. */
    .global bulwark_enter_guest
bulwark_enter_guest:
    stp     x19, x20, [x0, #{host_x} + 0]
    stp     x21, x22, [x0, #{host_x} + 16]
    stp     x23, x24, [x0, #{host_x} + 32]
    stp     x25, x26, [x0, #{host_x} + 48]
    stp     x27, x28, [x0, #{host_x} + 64]
    stp     x29, x30, [x0, #{host_x} + 80]
    stp     d8, d9, [x0, #{host_d} + 0]
    stp     d10, d11, [x0, #{host_d} + 16]
    stp     d12, d13, [x0, #{host_d} + 32]
    stp     d14, d15, [x0, #{host_d} + 48]
    mov     x1, sp
    str     x1, [x0, #{host_sp}]
    msr     tpidr_el2, x0

    ldr     x1, [x0, #{sve_area}]
    cbz     x1, 10f
    /* SVE: the full Z/P/FFR state from the save area (streaming mode entered first). */
    ldr     x3, [x1]
    tbz     x3, #0, 11f
    smstart sm
11:
    add     x2, x1, #16
    ldr     z0, [x2, #0, mul vl]
    ldr     z1, [x2, #1, mul vl]
    ldr     z2, [x2, #2, mul vl]
    ldr     z3, [x2, #3, mul vl]
    ldr     z4, [x2, #4, mul vl]
    ldr     z5, [x2, #5, mul vl]
    ldr     z6, [x2, #6, mul vl]
    ldr     z7, [x2, #7, mul vl]
    ldr     z8, [x2, #8, mul vl]
    ldr     z9, [x2, #9, mul vl]
    ldr     z10, [x2, #10, mul vl]
    ldr     z11, [x2, #11, mul vl]
    ldr     z12, [x2, #12, mul vl]
    ldr     z13, [x2, #13, mul vl]
    ldr     z14, [x2, #14, mul vl]
    ldr     z15, [x2, #15, mul vl]
    ldr     z16, [x2, #16, mul vl]
    ldr     z17, [x2, #17, mul vl]
    ldr     z18, [x2, #18, mul vl]
    ldr     z19, [x2, #19, mul vl]
    ldr     z20, [x2, #20, mul vl]
    ldr     z21, [x2, #21, mul vl]
    ldr     z22, [x2, #22, mul vl]
    ldr     z23, [x2, #23, mul vl]
    ldr     z24, [x2, #24, mul vl]
    ldr     z25, [x2, #25, mul vl]
    ldr     z26, [x2, #26, mul vl]
    ldr     z27, [x2, #27, mul vl]
    ldr     z28, [x2, #28, mul vl]
    ldr     z29, [x2, #29, mul vl]
    ldr     z30, [x2, #30, mul vl]
    ldr     z31, [x2, #31, mul vl]
    addvl   x2, x2, #16
    addvl   x2, x2, #16
    tbz     x3, #0, 14f             /* not streaming: FFR */
    tbz     x3, #2, 12f             /* streaming without FA64: no FFR */
14:
    ldr     p0, [x2, #16, mul vl]
    wrffr   p0.b
12:
    ldr     p0, [x2, #0, mul vl]
    ldr     p1, [x2, #1, mul vl]
    ldr     p2, [x2, #2, mul vl]
    ldr     p3, [x2, #3, mul vl]
    ldr     p4, [x2, #4, mul vl]
    ldr     p5, [x2, #5, mul vl]
    ldr     p6, [x2, #6, mul vl]
    ldr     p7, [x2, #7, mul vl]
    ldr     p8, [x2, #8, mul vl]
    ldr     p9, [x2, #9, mul vl]
    ldr     p10, [x2, #10, mul vl]
    ldr     p11, [x2, #11, mul vl]
    ldr     p12, [x2, #12, mul vl]
    ldr     p13, [x2, #13, mul vl]
    ldr     p14, [x2, #14, mul vl]
    ldr     p15, [x2, #15, mul vl]
    b       13f
10:
    add     x1, x0, #{v}
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
13:
    ldp     x1, x2, [x0, #{fpsr}]
    msr     fpsr, x1
    msr     fpcr, x2
    ldp     x1, x2, [x0, #{pc}]
    msr     elr_el2, x1
    msr     spsr_el2, x2

    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

__bulwark_guest_exit:
    /* sp = Bulwark's stack with the guest's x0/x1 pushed; x1 = kind. */
    mrs     x0, tpidr_el2
    stp     x2, x3, [x0, #16]
    stp     x4, x5, [x0, #32]
    stp     x6, x7, [x0, #48]
    stp     x8, x9, [x0, #64]
    stp     x10, x11, [x0, #80]
    stp     x12, x13, [x0, #96]
    stp     x14, x15, [x0, #112]
    stp     x16, x17, [x0, #128]
    stp     x18, x19, [x0, #144]
    stp     x20, x21, [x0, #160]
    stp     x22, x23, [x0, #176]
    stp     x24, x25, [x0, #192]
    stp     x26, x27, [x0, #208]
    stp     x28, x29, [x0, #224]
    str     x30, [x0, #240]
    mov     x9, x1
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x0, #0]
    mrs     x1, elr_el2
    mrs     x2, spsr_el2
    stp     x1, x2, [x0, #{pc}]

    mrs     x1, fpsr
    mrs     x2, fpcr
    stp     x1, x2, [x0, #{fpsr}]
    ldr     x1, [x0, #{sve_area}]
    cbz     x1, 20f
    /* SVE: Z0-Z31, P0-P15, FFR at the current vector length (streaming if PSTATE.SM). */
    ldr     x3, [x1]
    bic     x3, x3, #1
    tbz     x3, #1, 21f
    mrs     x4, S3_3_C4_C2_2        /* SVCR */
    and     x4, x4, #1              /* SM */
    orr     x3, x3, x4
21:
    str     x3, [x1]
    add     x2, x1, #16
    str     z0, [x2, #0, mul vl]
    str     z1, [x2, #1, mul vl]
    str     z2, [x2, #2, mul vl]
    str     z3, [x2, #3, mul vl]
    str     z4, [x2, #4, mul vl]
    str     z5, [x2, #5, mul vl]
    str     z6, [x2, #6, mul vl]
    str     z7, [x2, #7, mul vl]
    str     z8, [x2, #8, mul vl]
    str     z9, [x2, #9, mul vl]
    str     z10, [x2, #10, mul vl]
    str     z11, [x2, #11, mul vl]
    str     z12, [x2, #12, mul vl]
    str     z13, [x2, #13, mul vl]
    str     z14, [x2, #14, mul vl]
    str     z15, [x2, #15, mul vl]
    str     z16, [x2, #16, mul vl]
    str     z17, [x2, #17, mul vl]
    str     z18, [x2, #18, mul vl]
    str     z19, [x2, #19, mul vl]
    str     z20, [x2, #20, mul vl]
    str     z21, [x2, #21, mul vl]
    str     z22, [x2, #22, mul vl]
    str     z23, [x2, #23, mul vl]
    str     z24, [x2, #24, mul vl]
    str     z25, [x2, #25, mul vl]
    str     z26, [x2, #26, mul vl]
    str     z27, [x2, #27, mul vl]
    str     z28, [x2, #28, mul vl]
    str     z29, [x2, #29, mul vl]
    str     z30, [x2, #30, mul vl]
    str     z31, [x2, #31, mul vl]
    addvl   x2, x2, #16
    addvl   x2, x2, #16
    str     p0, [x2, #0, mul vl]
    str     p1, [x2, #1, mul vl]
    str     p2, [x2, #2, mul vl]
    str     p3, [x2, #3, mul vl]
    str     p4, [x2, #4, mul vl]
    str     p5, [x2, #5, mul vl]
    str     p6, [x2, #6, mul vl]
    str     p7, [x2, #7, mul vl]
    str     p8, [x2, #8, mul vl]
    str     p9, [x2, #9, mul vl]
    str     p10, [x2, #10, mul vl]
    str     p11, [x2, #11, mul vl]
    str     p12, [x2, #12, mul vl]
    str     p13, [x2, #13, mul vl]
    str     p14, [x2, #14, mul vl]
    str     p15, [x2, #15, mul vl]
    tbz     x3, #0, 24f             /* not streaming: FFR */
    tbz     x3, #2, 22f             /* streaming without FA64: no FFR */
24:
    rdffr   p0.b
    str     p0, [x2, #16, mul vl]
    tbz     x3, #0, 23f
22:
    /* Leave streaming mode for Bulwark's own (NEON) code; FPSR was saved above. */
    smstop  sm
    b       23f
20:
    add     x1, x0, #{v}
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
23:

    ldr     x1, [x0, #{host_sp}]
    mov     sp, x1
    ldp     x19, x20, [x0, #{host_x} + 0]
    ldp     x21, x22, [x0, #{host_x} + 16]
    ldp     x23, x24, [x0, #{host_x} + 32]
    ldp     x25, x26, [x0, #{host_x} + 48]
    ldp     x27, x28, [x0, #{host_x} + 64]
    ldp     x29, x30, [x0, #{host_x} + 80]
    ldp     d8, d9, [x0, #{host_d} + 0]
    ldp     d10, d11, [x0, #{host_d} + 16]
    ldp     d12, d13, [x0, #{host_d} + 32]
    ldp     d14, d15, [x0, #{host_d} + 48]
    mov     x0, x9
    ret
"#,
    host_x = const offset_of!(VcpuRegs, host_x),
    host_d = const offset_of!(VcpuRegs, host_d),
    host_sp = const offset_of!(VcpuRegs, host_sp),
    v = const offset_of!(VcpuRegs, v),
    fpsr = const offset_of!(VcpuRegs, fpsr),
    pc = const offset_of!(VcpuRegs, pc),
    sve_area = const offset_of!(VcpuRegs, sve_area),
);

const _: () = assert!(offset_of!(VcpuRegs, pc) == 248);
const _: () = assert!(offset_of!(VcpuRegs, pstate) == 256);
const _: () = assert!(offset_of!(VcpuRegs, fpcr) == offset_of!(VcpuRegs, fpsr) + 8);

extern "C" {
    fn bulwark_enter_guest(regs: *mut VcpuRegs) -> u64;
    static bulwark_el2_vectors: u8;
}

/// Install Bulwark's EL2 vector table on this CPU.
pub fn install_vectors() {
    let addr = core::ptr::addr_of!(bulwark_el2_vectors) as u64;
    crate::write_sysreg!("vbar_el2", addr);
    crate::sysreg::isb();
}

/// Run the guest until its next exception; returns the exit kind ([`exit_kind`]).
pub fn enter_guest(regs: &mut VcpuRegs) -> u64 {
    regs.sve_area = SVE_AREA_ADDR.load(core::sync::atomic::Ordering::Relaxed);
    // SAFETY: `regs` is exclusively borrowed for the whole run and pinned on the caller's stack
    // (TPIDR_EL2 points at it only while the guest runs); the assembly saves and restores every
    // callee-saved register, so the Rust caller's state is intact when it returns. HCR_EL2,
    // VTTBR_EL2 and the EL1 state were set up by `el2::prepare` before the first call.
    unsafe { bulwark_enter_guest(regs) }
}
