/*
 * Entry points of Atrium's test firmware.
 *
 * The builtin VMM loads the flat image at 0x100000 and starts it at its first byte in 64-bit
 * long mode at CPL 3 (identity-mapped user pages, IOPL 3, RSP set, RDI = boot info).
 * QEMU loads the same image through the multiboot header below and enters `start32` in 32-bit
 * protected mode without paging; that path builds its own page tables, switches to long mode
 * at CPL 0 and calls the same `fw_main` with no boot info.
 */
        .section .text.entry, "ax"
        .code64
        .globl  start64
start64:
        jmp     entry64

        .balign 4
multiboot_header:
        .long   0x1BADB002                      /* magic */
        .long   0x00010000                      /* flags: address fields are valid */
        .long   -(0x1BADB002 + 0x00010000)      /* checksum */
        .long   multiboot_header                /* header_addr */
        .long   0x100000                        /* load_addr */
        .long   __load_end                      /* load_end_addr */
        .long   __bss_end                       /* bss_end_addr */
        .long   start32                         /* entry_addr */

entry64:
        call    fw_main
1:      jmp     1b

        .code32
start32:
        cli
        movl    $boot_stack_top, %esp
        /* PML4[0] -> PDPT, PDPT[0] -> PD, PD: 512 x 2 MiB identity pages (first 1 GiB). */
        movl    $boot_pdpt, %eax
        orl     $0x3, %eax
        movl    %eax, boot_pml4
        movl    $boot_pd, %eax
        orl     $0x3, %eax
        movl    %eax, boot_pdpt
        xorl    %ecx, %ecx
2:      movl    %ecx, %eax
        shll    $21, %eax
        orl     $0x83, %eax
        movl    %eax, boot_pd(,%ecx,8)
        incl    %ecx
        cmpl    $512, %ecx
        jne     2b
        lgdt    gdt64_ptr
        movl    %cr4, %eax
        orl     $0x20, %eax                     /* PAE */
        movl    %eax, %cr4
        movl    $boot_pml4, %eax
        movl    %eax, %cr3
        movl    $0xC0000080, %ecx               /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax               /* PG | PE */
        movl    %eax, %cr0
        ljmp    $0x08, $long64

        .code64
long64:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movq    $boot_stack_top, %rsp
        xorl    %edi, %edi
        call    fw_main
3:      cli
        hlt
        jmp     3b

        .section .rodata
        .balign 8
gdt64:
        .quad   0
        .quad   0x00af9b000000ffff              /* 0x08: 64-bit code */
        .quad   0x00cf93000000ffff              /* 0x10: data */
gdt64_end:
gdt64_ptr:
        .word   gdt64_end - gdt64 - 1
        .long   gdt64

        .section .bss
        .balign 4096
boot_pml4:
        .skip   4096
boot_pdpt:
        .skip   4096
boot_pd:
        .skip   4096
boot_stack:
        .skip   16384
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
