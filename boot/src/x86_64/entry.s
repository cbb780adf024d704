/* Bulwark x86_64 entry: GRUB (multiboot2) jumps here in 32-bit protected mode, paging off,
 * EAX = 0x36d76289, EBX = physical address of the multiboot2 information.
 * We identity-map the first 4 GiB with 2 MiB pages, enter long mode and call
 * bulwark_main_x86(magic, mbi) on the boot stack. Included by hypervisor/src/x86_64/mod.rs. */

    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6                      /* magic */
    .long 0                               /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header     /* header length */
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header))
    /* end tag */
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .bss.pagetables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack_bottom:
    .skip 0x20000
    .global boot_stack_top
boot_stack_top:

    .section .rodata
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff              /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf92000000ffff              /* 0x10: data, DPL0 */
boot_gdt_end:
boot_gdtr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.entry32, "ax"
    .code32
    .global bulwark_entry32
bulwark_entry32:
    cli
    cld
    mov %eax, %edi                        /* magic: first argument */
    mov %ebx, %esi                        /* MBI: second argument */
    mov $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four PDs (present, writable) */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt
    add $0x1000, %eax
    mov %eax, boot_pdpt + 8
    add $0x1000, %eax
    mov %eax, boot_pdpt + 16
    add $0x1000, %eax
    mov %eax, boot_pdpt + 24

    /* 2048 PD entries: i * 2 MiB, present | writable | page size */
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(, %ecx, 8)
    movl $0, boot_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    mov %cr4, %eax
    or $(1 << 5), %eax                    /* PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx                 /* IA32_EFER.LME */
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    and $0x9fffffff, %eax                 /* caches on: clear CD and NW (some BIOSes leave them set) */
    or $0x80000001, %eax                  /* PG | PE */
    mov %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $2f

    .code64
2:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %edi, %edi                        /* zero-extend both arguments */
    mov %esi, %esi
    xor %ebp, %ebp
    call bulwark_main_x86
3:
    cli
    hlt
    jmp 3b
