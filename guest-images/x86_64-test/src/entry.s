/* Multiboot (v1) entry of the test guest: 32-bit protected mode, paging off,
 * EAX = 0x2BADB002, EBX = Multiboot information. Identity-map 4 GiB with 2 MiB pages,
 * enter long mode, call guest_main(magic, info). */

    .section .multiboot, "a"
    .balign 4
    .long 0x1badb002                      /* magic */
    .long 0x00000003                      /* flags: page-aligned modules, memory information */
    .long -(0x1badb002 + 0x00000003)      /* checksum */

    .section .bss
    .balign 4096
g_pml4:
    .skip 4096
g_pdpt:
    .skip 4096
g_pd:
    .skip 4096 * 4
    .balign 16
g_stack:
    .skip 0x10000
g_stack_top:

    .section .rodata
    .balign 16
g_gdt:
    .quad 0
    .quad 0x00af9a000000ffff              /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff              /* 0x10: data */
g_gdt_end:
    .global g_gdtr
g_gdtr:
    .short g_gdt_end - g_gdt - 1
    .quad g_gdt

    .section .text.entry32, "ax"
    .code32
    .global guest_entry32
guest_entry32:
    cli
    cld
    mov %eax, %edi
    mov %ebx, %esi
    mov $g_stack_top, %esp
    /* .bss is zeroed by the loader (Multiboot: memsz beyond filesz is zero). */
    mov $g_pdpt, %eax
    or $3, %eax
    mov %eax, g_pml4
    mov $g_pd, %eax
    or $3, %eax
    mov %eax, g_pdpt
    add $0x1000, %eax
    mov %eax, g_pdpt + 8
    add $0x1000, %eax
    mov %eax, g_pdpt + 16
    add $0x1000, %eax
    mov %eax, g_pdpt + 24
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, g_pd(, %ecx, 8)
    movl $0, g_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $g_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    lgdt g_gdtr
    ljmp $0x08, $2f
    .code64
2:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $g_stack_top, %rsp
    mov %edi, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call guest_main
3:
    hlt
    jmp 3b
