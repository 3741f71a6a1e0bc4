//! The world switch itself, in assembly.
//!
//! The code below is assembled into its own page-aligned section,
//! `.switcher`, which the kernel maps (read-only, executable) at
//! [`crate::SLOT_BASE`] in its own tables and in every guest's. It runs at
//! that address, not where it was linked, so it is position-independent:
//! it reaches nothing by absolute address. It finds its CPU's pages in the
//! slot from `rdi` on the way in and from the stack pointer on the way out
//! (the CPU put the stack at the top of the register slot, where the
//! running guest's own register page is mapped), and every offset comes
//! from the Rust types in [`crate::layout`].
//!
//! Entry points, as offsets from `switcher_start` (exported to the kernel):
//! `switch_to_guest` and the 256 trap stubs at `guest_trap_stubs`,
//! [`crate::STUB_STRIDE`] bytes apart.
//!
//! Instructions on the way in, host to guest (count them when changing):
//! 7 pushes of host state, 1 `cli`, 1 `lea`, 6 saves of host state, 2
//! table loads, 1 busy-bit clear, 2 for `ltr`, 2 for CR3, 1 `lea`, 15
//! register pops, 1 `add`, 1 `iretq`: 40. On the way out, guest to host:
//! 1-2 in the stub, 1 `jmp`, 15 register pushes, 3 to find the state page,
//! 2 for CR3, 2 table loads, 4 for the host's TSS, 1 stack switch, 1
//! `popfq`, 6 pops, 1 `ret`: 37-38.

use crate::layout::{
    DESCRIPTOR_TYPE_BYTE, PAGE, REGS_OFFSET, STUB_STRIDE, TSS_BUSY_BIT, selector, state,
};
use core::arch::global_asm;

// The one exception to this crate's `deny(unsafe_code)`: assembly is, by
// nature, outside what the compiler checks. It runs only on the switch to
// and from a guest, with the layout above as its contract.
#[allow(unsafe_code)]
mod code {
    use super::*;

    global_asm!(
        r#"
    .section .switcher, "ax"
    .balign 4096
    .global switcher_start
switcher_start:

/*
 * switch_to_guest(rdi = the slot address of this CPU's register page)
 *
 * Called by the host with interrupts off, with the entering guest's own
 * register page mapped at rdi in the guest's tables (the host's tables map
 * a page of the CPU's own there); returns when the guest traps, with the
 * guest's registers and the trap's vector in the guest's register page.
 */
    .global switch_to_guest
switch_to_guest:
    /* The host's callee-saved registers and flags stay on the host stack;
       only the stack pointer is remembered. */
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    pushfq
    /* An interrupt between the table loads below and the iretq would find
       half a guest: keep them off (the caller should have already). */
    cli
    lea {page}(%rdi), %rsi
    mov %rsp, {host_rsp}(%rsi)
    mov %cr3, %rax
    mov %rax, {host_cr3}(%rsi)
    sgdt {host_gdtr}(%rsi)
    sidt {host_idtr}(%rsi)
    str {host_tr}(%rsi)
    /* The guest's GDT keeps the host's ring-0 selectors, so the code and
       stack we are running on stay valid across lgdt. */
    lgdt {guest_gdtr}(%rsi)
    lidt {guest_idtr}(%rsi)
    /* ltr faults on a busy TSS, and the last ltr on this CPU left it busy. */
    andb ${not_busy}, {guest_gdt} + {guest_tss} + {type_byte}(%rsi)
    mov ${guest_tss}, %ax
    ltr %ax
    /* CR3 last: from here on only the switcher slot of the host is mapped,
       and we need nothing else. */
    mov {guest_cr3}(%rsi), %rax
    mov %rax, %cr3
    /* The guest's registers, as its last trap left them (or as the host
       prepared them), then its interrupt frame. */
    lea {regs}(%rdi), %rsp
"#,
    pop_registers!(),
    r#"
    add $16, %rsp
    iretq

/*
 * The trap stubs: every vector of the guest IDT but the direct traps lands
 * in one of these, on the guest's register page (TSS.RSP0 or IST1: the
 * top of the register slot). Vectors 8, 10-14, 17, 21, 29 and 30 come with
 * an error code from the CPU; the others push a zero in its place so the
 * frame has one shape.
 */
    .balign {stride}
    .global guest_trap_stubs
guest_trap_stubs:
    .set vector, 0
    .rept 256
    .balign {stride}
    .if !(vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 || vector == 29 || vector == 30)
    push $0
    .endif
    push $vector
    jmp guest_trap_common
    .set vector, vector + 1
    .endr

guest_trap_common:
"#,
    push_registers!(),
    r#"
    /* The guest's registers are now saved in its register page (mapped in
       this CPU's register slot). The state page is the next one up. */
    mov %rsp, %rsi
    and $-{page}, %rsi
    add ${page}, %rsi
    /* Host memory first: the host's tables, its GDT and IDT. */
    mov {host_cr3}(%rsi), %rax
    mov %rax, %cr3
    lgdt {host_gdtr}(%rsi)
    lidt {host_idtr}(%rsi)
    /* The host's TSS descriptor is busy from its own ltr: clear, reload. */
    mov {host_gdt_base}(%rsi), %rax
    movzwl {host_tr}(%rsi), %ecx
    andb ${not_busy}, {type_byte}(%rax, %rcx)
    ltr %cx
    /* Back on the host's stack: return from switch_to_guest. */
    mov {host_rsp}(%rsi), %rsp
    popfq
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .global switcher_end
switcher_end:
"#,
        page = const PAGE,
        regs = const REGS_OFFSET,
        stride = const STUB_STRIDE,
        not_busy = const !TSS_BUSY_BIT,
        type_byte = const DESCRIPTOR_TYPE_BYTE,
        guest_tss = const selector::GUEST_TSS,
        guest_gdt = const state::GUEST_GDT,
        guest_gdtr = const state::GUEST_GDTR,
        guest_idtr = const state::GUEST_IDTR,
        guest_cr3 = const state::GUEST_CR3,
        host_rsp = const state::HOST_RSP,
        host_cr3 = const state::HOST_CR3,
        host_gdtr = const state::HOST_GDTR,
        host_gdt_base = const state::HOST_GDT_BASE,
        host_idtr = const state::HOST_IDTR,
        host_tr = const state::HOST_TR,
        options(att_syntax)
    );
}
