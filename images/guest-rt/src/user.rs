//! Leaving ring 1 for guest user code (ring 3).
//!
//! The way down is an `iretq` with user selectors: the CPU drops to ring 3
//! and the guest kernel gets control back only through a trap, which the
//! host delivers on the stack named with `set_kernel_stack`. So [`enter`]
//! first gives the host a stack of the runtime's own for that.

use crate::hypercall;
use guest_abi::hypercall::Error;

/// The guest user code segment selector (guest_abi::boot::selector).
pub const USER_CODE_SELECTOR: u64 = guest_abi::boot::selector::USER_CODE as u64;
/// The guest user data/stack segment selector (guest_abi::boot::selector).
pub const USER_DATA_SELECTOR: u64 = guest_abi::boot::selector::USER_DATA as u64;
/// RFLAGS for user code: IF, and bit 1, which is always set. (Ring 1 cannot
/// change the real IF with `iretq`; the host keeps it on anyway.)
const USER_RFLAGS: u64 = 0x202;

/// Bytes of the stack traps from user code are delivered on.
const TRAP_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; TRAP_STACK_BYTES]);

/// The stack for traps from user code. Only its address is ever taken.
static mut TRAP_STACK: Stack = Stack([0; TRAP_STACK_BYTES]);

/// Runs user code at `rip` with stack pointer `rsp`, in ring 3. Never
/// returns: the user code comes back only through traps, whose handlers
/// run on the runtime's trap stack.
///
/// # Safety
///
/// `rip` and `rsp` must be mapped for user access (the `USER` bit at every
/// level) in the current address space, and the host told of the entries.
pub unsafe fn enter(rip: u64, rsp: u64) -> Result<core::convert::Infallible, Error> {
    let top = (&raw mut TRAP_STACK) as u64 + TRAP_STACK_BYTES as u64;
    // SAFETY: the trap stack is a static used for nothing else.
    unsafe { hypercall::set_kernel_stack(top) }?;
    // SAFETY: the caller vouches for rip and rsp; the frame is exactly what
    // iretq pops (RIP, CS, RFLAGS, RSP, SS).
    unsafe {
        core::arch::asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "iretq",
            ss = const USER_DATA_SELECTOR,
            rsp = in(reg) rsp,
            rflags = const USER_RFLAGS,
            cs = const USER_CODE_SELECTOR,
            rip = in(reg) rip,
            options(noreturn),
        )
    }
}
