//! arm64 entry: the Linux Image header and the first instructions.
//!
//! Contract with whoever loads us (QEMU `-kernel`, U-Boot `booti`, Linux boot protocol):
//! `x0` = physical address of the device tree, MMU off, caches off or clean, interrupts masked,
//! the Image placed at a 2 MiB-aligned RAM base + `text_offset` (0x80000). Bulwark is linked at
//! 0x40080000 (QEMU virt) and is not position independent: the entry checks that it runs where
//! it was linked and parks otherwise.
//!
//! At EL2 the entry code:
//! 1. masks interrupts, lets EL2 use FP/SIMD (the compiler emits NEON for copies),
//! 2. zeroes BSS, switches to the boot stack,
//! 3. turns on the EL2 MMU with a 1 GiB-block identity map (first GiB Device-nGnRnE: the
//!    QEMU virt device region; 1-256 GiB Normal write-back: the virt RAM window; everything above
//!    Device, execute-never) so that Rust code may do unaligned accesses and use the caches,
//! 4. calls `bulwark_aarch64_main(dtb, 2)` (defined by the Bulwark binary), which never returns.
//!
//! At EL1 or EL3 (QEMU without `virtualization=on`, or with `secure=on` and no firmware) it calls
//! `bulwark_aarch64_wrong_el(dtb, el)` with the MMU off, which reports the problem and stops.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    /* arm64 Image header (Documentation/arch/arm64/booting.rst) */
    b       1f                      // code0: branch to the real entry
    .long   0                       // code1
    .quad   0x80000                 // text_offset
    .quad   __image_size            // image_size (includes BSS and the boot stack)
    .quad   0x2                     // flags: little endian, 4 KiB pages, placed near RAM base
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5 (no PE/COFF header)
1:
    msr     daifset, #0xf
    mov     x19, x0                 // x19 = device tree (preserved until Rust)
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2        // x20 = current EL

    /* Running where we were linked? Otherwise every absolute address is wrong: say so with
       position-independent code on QEMU virt's PL011 (the only console known without the device
       tree), then park. */
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    __wrong_address

    cmp     x20, #2
    b.eq    2f
    cmp     x20, #1
    b.eq    3f
    cmp     x20, #3
    b.eq    4f
    b       __park
3:  /* EL1: FP/SIMD on (CPACR_EL1.FPEN = 0b11), park vectors. */
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    adr     x1, __park_vectors
    msr     vbar_el1, x1
    b       5f
4:  /* EL3: FP/SIMD on (CPTR_EL3.TFP = 0), park vectors. */
    msr     cptr_el3, xzr
    adr     x1, __park_vectors
    msr     vbar_el3, x1
5:  isb
    bl      __zero_bss
    ldr     x1, =__boot_stack_top
    mov     sp, x1
    mov     x0, x19
    mov     x1, x20
    bl      bulwark_aarch64_wrong_el
    b       __park

2:  /* EL2. CPTR_EL2: FP/SIMD not trapped (TFP = 0); SVE (TZ) and SME (TSM) trapped until the
       back end decides what the guest gets; RES1 bits set. */
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    adr     x1, __park_vectors
    msr     vbar_el2, x1
    isb
    bl      __zero_bss
    ldr     x1, =__boot_stack_top
    mov     sp, x1

    /* Identity map with 1 GiB level-1 blocks. */
    adrp    x0, __el2_l1_table
    add     x0, x0, :lo12:__el2_l1_table
    mov     x1, #0
    ldr     x3, =0x0040000000000401     // Device-nGnRnE (AttrIndx 0), AF, XN
    mov     x4, #0x705                  // Normal WB (AttrIndx 1), inner shareable, AF
6:  lsl     x2, x1, #30
    cmp     x1, #1
    b.lo    7f
    cmp     x1, #256
    b.hs    7f
    orr     x2, x2, x4
    b       8f
7:  orr     x2, x2, x3
8:  str     x2, [x0, x1, lsl #3]
    add     x1, x1, #1
    cmp     x1, #512
    b.lo    6b
    dsb     ish

    mov     x1, #0xff00                 // MAIR: attr0 Device-nGnRnE, attr1 Normal WB RA WA
    msr     mair_el2, x1
    mrs     x1, id_aa64mmfr0_el1
    and     x1, x1, #0xf                // PARange
    cmp     x1, #5
    mov     x2, #5
    csel    x1, x1, x2, ls              // TCR_EL2.PS = min(PARange, 48 bits)
    ldr     x2, =0x80803519             // RES1 31/23, SH0 inner, WB/WB walks, 4 KiB, T0SZ 25
    orr     x2, x2, x1, lsl #16
    msr     tcr_el2, x2
    msr     ttbr0_el2, x0
    isb
    tlbi    alle2
    dsb     ish
    isb
    ldr     x1, =0x30c51835             // SCTLR_EL2: RES1 bits, M, C, I; no alignment checks
    msr     sctlr_el2, x1
    isb

    mov     x0, x19
    mov     x1, x20
    bl      bulwark_aarch64_main
    b       __park

__zero_bss:
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
9:  cmp     x1, x2
    b.hs    10f
    stp     xzr, xzr, [x1], #16
    b       9b
10: ret

__wrong_address:
    ldr     x1, =0x09000000
    adr     x2, __wrong_address_msg
11: ldrb    w3, [x2], #1
    cbz     w3, __park
    str     w3, [x1]
    b       11b
__wrong_address_msg:
    .ascii  "bulwark: ERROR Bulwark is not running at its link address 0x40080000: load it as an "
    .ascii  "arm64 Image (RAM base 0x40000000 + text_offset 0x80000) and enter it at EL2\r\n"
    .asciz  "bulwark: result status=176 reason=refused\r\n"
    .balign 4

    .global __park
__park:
    wfe
    b       __park

    /* Until the back end installs its own table: any exception parks the CPU. */
    .balign 2048
__park_vectors:
    .rept 16
    b       __park
    .balign 128
    .endr

    .section .bss.el2_l1_table, "aw", @nobits
    .balign 4096
__el2_l1_table:
    .space  4096
"#
);
