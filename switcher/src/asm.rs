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
//! from the Rust types in [`crate::layout`]. What it saves of the host goes
//! to the CPU's host page, which only the host's tables map; the one
//! exception is the host's CR3, which the way out needs before it can reach
//! the host page, and so keeps in the state page (see
//! [`crate::layout::StatePage`]).
//!
//! Entry points, as offsets from `switcher_start` (exported to the kernel):
//! `switch_to_guest` and the 256 trap stubs at `guest_trap_stubs`,
//! [`crate::STUB_STRIDE`] bytes apart.
//!
//! Instructions on the way in, host to guest (count them when changing):
//! 7 pushes of host state, 1 `cli`, 6 saves of host state, 2 table loads,
//! 1 busy-bit clear, 2 for `ltr`, 1 for CR3, 1 `lea`, 15 register pops, 1
//! `add`, 1 `iretq`: 38. On the way out, guest to host: 1-2 in the stub, 1
//! `jmp`, 15 register pushes, 2 to find the register slot, 2 for CR3, 2
//! table loads, 4 for the host's TSS, 1 stack switch, 1 `popfq`, 6 pops, 1
//! `ret`: 36-37.

use crate::layout::{
    DESCRIPTOR_TYPE_BYTE, PAGE, REGS_OFFSET, STUB_STRIDE, TSS_BUSY_BIT, host_page,
    host_page_offset, register_page_offset, selector, state, state_page_offset,
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
 * switch_to_guest(rdi = the slot address of this CPU's register page,
 *                 rsi = the shadow root to run the guest on)
 *
 * Called by the host with interrupts off, with the entering guest's own
 * register page mapped at rdi in the guest's tables (the host's tables map
 * a page of the CPU's own there); returns when the guest traps, with the
 * guest's registers and the trap's vector in the guest's register page.
 * The shadow root comes in a register, so no page a guest can read ever
 * holds it. The CPU's pages are at fixed distances from rdi: the state
 * page one page up, the IDT page two, the host page three.
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
    /* What the way back needs once it is on the host's tables goes to the
       host page, which no guest maps. */
    mov %rsp, {host}+{host_rsp}(%rdi)
    sgdt {host}+{host_gdtr}(%rdi)
    sidt {host}+{host_idtr}(%rdi)
    str {host}+{host_tr}(%rdi)
    /* The host's CR3 goes to the state page: the way back reads it while
       still on the guest's tables, where the host page is not mapped. */
    mov %cr3, %rax
    mov %rax, {state}+{host_cr3}(%rdi)
    /* The guest's GDT keeps the host's ring-0 selectors, so the code and
       stack we are running on stay valid across lgdt. */
    lgdt {host}+{guest_gdtr}(%rdi)
    lidt {host}+{guest_idtr}(%rdi)
    /* ltr faults on a busy TSS, and the last ltr on this CPU left it busy. */
    andb ${not_busy}, {state} + {guest_gdt} + {guest_tss} + {type_byte}(%rdi)
    mov ${guest_tss}, %ax
    ltr %ax
    /* CR3 last: from here on only the switcher slot of the host is mapped,
       and we need nothing else. */
    mov %rsi, %cr3
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
 * top of the register slot). The vectors whose bit is set in
 * guest_abi::hypercall::ERROR_CODE_VECTORS (8, 10-14, 17, 21, 29, 30) come
 * with an error code from the CPU; the others push a zero in its place so
 * the frame has one shape.
 */
    .balign {stride}
    .global guest_trap_stubs
guest_trap_stubs:
    .set vector, 0
    .rept 256
    .balign {stride}
    .if !(vector < 32 && (({error_code_vectors} >> vector) & 1))
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
       this CPU's register slot): the slot's address is the stack pointer
       rounded down to its page, and the CPU's other pages are at fixed
       distances from it. */
    mov %rsp, %rsi
    and $-{page}, %rsi
    /* The host's tables first, from the one word of the host the state
       page keeps: only then is the host page mapped. */
    mov {state}+{host_cr3}(%rsi), %rax
    mov %rax, %cr3
    /* The host's GDT and IDT, from the host page. */
    lgdt {host}+{host_gdtr}(%rsi)
    lidt {host}+{host_idtr}(%rsi)
    /* The host's TSS descriptor is busy from its own ltr: clear, reload. */
    mov {host}+{host_gdt_base}(%rsi), %rax
    movzwl {host}+{host_tr}(%rsi), %ecx
    andb ${not_busy}, {type_byte}(%rax, %rcx)
    ltr %cx
    /* Back on the host's stack: return from switch_to_guest. */
    mov {host}+{host_rsp}(%rsi), %rsp
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
        state = const state_page_offset(0) - register_page_offset(0),
        host = const host_page_offset(0) - register_page_offset(0),
        regs = const REGS_OFFSET,
        stride = const STUB_STRIDE,
        error_code_vectors = const guest_abi::hypercall::ERROR_CODE_VECTORS,
        not_busy = const !TSS_BUSY_BIT,
        type_byte = const DESCRIPTOR_TYPE_BYTE,
        guest_tss = const selector::GUEST_TSS,
        guest_gdt = const state::GUEST_GDT,
        host_cr3 = const state::HOST_CR3,
        guest_gdtr = const host_page::GUEST_GDTR,
        guest_idtr = const host_page::GUEST_IDTR,
        host_rsp = const host_page::HOST_RSP,
        host_gdtr = const host_page::HOST_GDTR,
        host_gdt_base = const host_page::HOST_GDT_BASE,
        host_idtr = const host_page::HOST_IDTR,
        host_tr = const host_page::HOST_TR,
        options(att_syntax)
    );
}
