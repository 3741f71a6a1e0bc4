//! # `switcher`: where host and guest meet
//!
//! The switcher is the only piece of the host a guest ever has mapped. It
//! lives in one fixed top-level slot at the top of the virtual address
//! space, the same in the host's tables and in every shadow root, so the
//! code that changes CR3 keeps running across the change (lguest's top 4 MB,
//! moved to long mode).
//!
//! ## The slot
//!
//! ```text
//! SLOT_BASE + 0x0000          code pages       (read-only, executable)
//! SLOT_BASE + 0x10000 + n*16K CPU n: register slot  (writable): the running
//!                                    guest's own register page
//!                                    state page     (read-only to the guest)
//!                                    IDT page       (read-only to the guest)
//!                                    host page      (the host's tables only)
//! ```
//!
//! The state, IDT and host pages belong to the CPU. The register page does
//! not: each guest has one of its own, and the kernel maps the page of the
//! guest it is about to run into its CPU's register slot (when no guest's
//! page is there, a page of the CPU's own stands in).
//!
//! A guest's shadow root maps the code and *its own CPU's* slot pages but
//! the host page, supervisor-only, so its user code sees nothing and its
//! kernel (ring 1) can read but never change the descriptor tables the CPU
//! uses. What the switcher keeps of the host is in the host page, which no
//! guest maps, except the host's CR3 (in the state page: the way back
//! needs it before it can reach anything host-only).
//!
//! ## The round trip
//!
//! The host calls [`asm`]'s `switch_to_guest` at its slot address with
//! the slot address of the CPU's register page in `rdi` (in the guest's
//! tables, the guest's own register page is mapped there) and the shadow
//! root in `rsi`. It saves the host's callee-saved registers on the host's
//! stack, the stack pointer and descriptor tables in the host page and the
//! CR3 in the state page, loads the guest's GDT, IDT and TSS (all in the
//! state and IDT pages), writes the guest's CR3 last, pops the guest's
//! registers from its register page and `iretq`s into the guest. Any trap
//! or interrupt then enters through the guest IDT, whose TSS points `RSP0`
//! at the top of the register slot: the CPU pushes its interrupt frame
//! there, the stub pushes the vector and the registers below it, and the
//! [`GuestRegs`] are saved in the guest's register page, exactly where the
//! host reads them. The way back loads the host's CR3 from the state page,
//! then the host's tables and stack from the host page, and returns from
//! `switch_to_guest` as if it were an ordinary call.
#![no_std]
#![deny(unsafe_code)]

/// The assembly that pushes the general registers in [`GuestRegs`] order
/// (`rax` first, so `r15` ends lowest in memory): shared by the switcher's
/// trap path and the kernel's own, so both make the same frame.
#[macro_export]
macro_rules! push_registers {
    () => {
        "push %rax\npush %rbx\npush %rcx\npush %rdx\npush %rsi\npush %rdi\npush %rbp\npush %r8\npush %r9\npush %r10\npush %r11\npush %r12\npush %r13\npush %r14\npush %r15\n"
    };
}

/// The assembly that pops what [`push_registers!`] pushed.
#[macro_export]
macro_rules! pop_registers {
    () => {
        "pop %r15\npop %r14\npop %r13\npop %r12\npop %r11\npop %r10\npop %r9\npop %r8\npop %rbp\npop %rdi\npop %rsi\npop %rdx\npop %rcx\npop %rbx\npop %rax\n"
    };
}

pub mod asm;
pub mod layout;

pub use layout::*;

/// The index of the top-level (PML4) entry that holds the switcher: the last
/// one, so the switcher sits in the top 512 GiB of the address space. The
/// guest contract owns the number (a guest may never map that slot:
/// [`guest_abi::pte::SWITCHER_PML4_INDEX`]); the switcher only names it.
pub const SLOT_PML4_INDEX: usize = guest_abi::pte::SWITCHER_PML4_INDEX;

/// The first virtual address of the switcher slot: the canonical address of
/// the slot's first byte (bits 63..48 copy bit 47, set here).
pub const SLOT_BASE: u64 = 0xffff_0000_0000_0000 | ((SLOT_PML4_INDEX as u64) << 39);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_base_is_the_start_of_its_pml4_entry() {
        assert_eq!((SLOT_BASE >> 39) & 0x1ff, SLOT_PML4_INDEX as u64);
        assert_eq!(SLOT_BASE & ((1 << 39) - 1), 0);
    }
}
