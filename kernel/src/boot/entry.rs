//! The first instructions: from a loader's 32-bit protected mode to Rust in
//! long mode.
//!
//! Two loaders can start us, and both hand over the CPU in the same state
//! (32-bit protected mode, paging off, flat segments, interrupts off), with
//! a pointer to their boot information in `ebx`:
//!
//! - a **PVH** loader (QEMU `-kernel`) finds [`_start32`] through the Xen ELF
//!   note below; `ebx` points to a `hvm_start_info`.
//! - a **Multiboot2** loader (GRUB, from an ISO, a disk or the network) finds
//!   the header below; `eax` holds the Multiboot2 magic and `ebx` points to
//!   its information structure.
//!
//! So there is one entry. It zeroes `.bss`, builds boot page tables that map
//! the first 4 GiB twice (identity, where the kernel runs, and at
//! [`crate::memory::PHYS_OFFSET`], the direct map the rest of the kernel
//! uses), turns on long mode and jumps to `kernel_entry(eax, ebx)` in
//! `main.rs`. The kernel replaces these tables with its own as soon as it
//! knows how much memory there is.

use core::arch::global_asm;

global_asm!(
    r#"
    /* ---- Multiboot2 header (GRUB): magic, arch 0 (i386), length, checksum,
       then the end tag. No other tags: GRUB loads our ELF segments where the
       program headers say and enters at the ELF entry, _start32. */
    .section .multiboot2_header, "a"
    .balign 8
multiboot2_header:
    .long 0xe85250d6
    .long 0
    .long multiboot2_header_end - multiboot2_header
    .long -(0xe85250d6 + (multiboot2_header_end - multiboot2_header))
    .short 0, 0
    .long 8
multiboot2_header_end:

    /* ---- PVH note (QEMU -kernel): XEN_ELFNOTE_PHYS32_ENTRY = 18. */
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad _start32

    .section .boot.text, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    /* Keep the loader's eax (Multiboot2 magic, or nothing for PVH) and ebx
       (its boot information) in registers the code below leaves alone. */
    mov %eax, %ebp
    mov %ebx, %esi

    /* Zero .bss: the page tables and the stack below live there. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PML4[0] and PML4[256] both point at one PDPT: the first 4 GiB appear
       at 0 (identity) and at the direct-map offset. */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov %eax, boot_pml4 + 256 * 8

    /* PDPT[0..4] -> four page directories. */
    mov $boot_pds, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b

    /* 2048 entries of 2 MiB (present, writable, huge) cover 4 GiB. */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pds(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    /* Long mode: PAE, the tables, EFER.LME, then paging (with WP, so the
       kernel too obeys read-only mappings). */
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax
    mov %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $start64

    .code64
start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $__stack_top, %rsp
    /* kernel_entry(loader_eax, loader_ebx), both zero-extended. */
    mov %ebp, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call kernel_entry
3:  hlt
    jmp 3b

    /* A boot GDT just good enough to reach 64-bit code; gdt.rs loads the
       real one. */
    .section .rodata
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pds:
    .skip 4 * 4096
"#,
    options(att_syntax)
);
