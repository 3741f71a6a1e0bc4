//! Traps: exceptions and virtual interrupts, delivered by the host.
//!
//! # How the host delivers a trap
//!
//! Like a CPU in 64-bit mode would: on the guest kernel's stack (the
//! current one if the guest was in ring 1, the one given with
//! `set_kernel_stack` if it was in ring 3), aligned down to 16, it pushes
//! SS, RSP, RFLAGS, CS and RIP, then an error code for the vectors in
//! [`ERROR_CODE_VECTORS`] (guest_abi::hypercall has the full contract), and
//! jumps to the handler registered for the
//! vector (`set_trap`), in ring 1. Virtual interrupts are then off (the
//! shared page's `irq_enabled` is 0) unless the handler was registered with
//! `KEEP_INTERRUPTS`. For a reflected page fault the faulting address is in
//! the shared page ([`fault_address`]). The handler returns with `iretq`,
//! which ring 1 may execute (it cannot change the real interrupt flag; the
//! host keeps that on).
//!
//! # What this module does with it
//!
//! Every vector has a 16-byte stub (in `global_asm!` below) that pushes a
//! zero where the CPU pushed no error code, then the vector number, and
//! jumps to one common path. That saves every general register, so the
//! stack then holds a [`TrapFrame`], and calls [`dispatch`], which runs the
//! Rust handler registered with [`set_handler`]. The handler may change the
//! frame (skip the faulting instruction, change a register); the common
//! path restores the registers from it and `iretq`s to wherever it says.
//!
//! # The virtual interrupt flag on the way out
//!
//! A CPU's `iretq` restores RFLAGS.IF from the frame; ours cannot (the flag
//! is virtual), so `dispatch` does it: for a handler registered as a
//! [`Delivery::Interrupt`] (the host turned the flag off) it turns the flag
//! back on when the frame's RFLAGS.IF is set. The host writes the virtual
//! flag into the pushed RFLAGS.IF, as lguest did (the real IF is always on,
//! so it would say nothing). Exceptions are registered as
//! [`Delivery::Exception`], with `KEEP_INTERRUPTS`, so the flag does not
//! change around them and nothing needs restoring; that also keeps them
//! right with a host that pushed the real RFLAGS, since virtual interrupts
//! are only delivered while the flag is on.

/// Exception vectors a guest is likely to handle (the CPU's numbering).
pub mod vector {
    /// `#DE`: divide error.
    pub const DIVIDE_ERROR: u8 = 0;
    /// `#BP`: breakpoint (`int3`).
    pub const BREAKPOINT: u8 = 3;
    /// `#UD`: invalid opcode.
    pub const INVALID_OPCODE: u8 = 6;
    /// `#DF`: double fault.
    pub const DOUBLE_FAULT: u8 = 8;
    /// `#GP`: general protection.
    pub const GENERAL_PROTECTION: u8 = 13;
    /// `#PF`: page fault.
    pub const PAGE_FAULT: u8 = 14;
}

/// Bit `v` is set when the host pushes an error code for vector `v` (8, 10
/// to 14, 17, 21, 29 and 30, as the CPU does; guest_abi::hypercall).
pub const ERROR_CODE_VECTORS: u32 = guest_abi::hypercall::ERROR_CODE_VECTORS;

/// Whether the host pushes an error code for `vector`.
pub const fn has_error_code(vector: u8) -> bool {
    guest_abi::hypercall::has_error_code(vector)
}

/// The stack as the common trap path leaves it: the registers it saved,
/// the vector and error code the stub pushed (or the host, for the error
/// code), and the frame the host pushed: the contract's one trap frame
/// (`guest_abi::frame`), the very shape the host's switcher keeps a guest's
/// registers in.
pub use guest_abi::frame::{RFLAGS_IF, TrapFrame};

/// How a handler wants its trap delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Leave the virtual interrupt flag as the interrupted code had it
    /// (`KEEP_INTERRUPTS`, a trap gate): for exceptions.
    Exception,
    /// Turn virtual interrupts off for the handler and back on after it (an
    /// interrupt gate): for virtual interrupts such as the timer.
    Interrupt,
}

/// A Rust trap handler. It may change the frame: the interrupted code
/// resumes with the registers and at the `rip` the frame holds when the
/// handler returns, so it must leave them pointing somewhere sound.
pub type Handler = fn(&mut TrapFrame);

#[cfg(any(target_os = "none", target_os = "hermit"))]
pub use bare::*;

#[cfg(any(target_os = "none", target_os = "hermit"))]
mod bare {
    use super::*;
    use crate::hypercall;
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use guest_abi::hypercall::{Error, trap_flags};

    /// Bytes of one stub; the stub of vector `v` is at `v * STUB_BYTES`.
    const STUB_BYTES: u64 = 16;

    // Code built for Hermit uses SSE everywhere, the handlers included, so
    // on that target the common path keeps the interrupted code's x87 and
    // SSE registers (512 bytes, 16-aligned, below the aligned stack pointer)
    // around the handler; a handler that switches threads then leaves them
    // on the thread's own stack. Bare-metal guests are built without SSE
    // and skip the cost. (Macros, because an assembly template takes only
    // literals.)
    #[cfg(target_os = "hermit")]
    macro_rules! save_fpu {
        () => {
            "  subq $512, %rsp\n  fxsave64 (%rsp)"
        };
    }
    #[cfg(target_os = "hermit")]
    macro_rules! restore_fpu {
        () => {
            "  fxrstor64 (%rsp)"
        };
    }
    #[cfg(target_os = "none")]
    macro_rules! save_fpu {
        () => {
            ""
        };
    }
    #[cfg(target_os = "none")]
    macro_rules! restore_fpu {
        () => {
            ""
        };
    }

    // The stubs and the common path. AT&T syntax, because a bare symbol as
    // an Intel-syntax operand (`push vector`) would be read as memory.
    core::arch::global_asm!(
        ".section .text.traps, \"ax\"",
        ".balign 16",
        ".globl rguest_trap_stubs",
        "rguest_trap_stubs:",
        ".set rguest_vector, 0",
        ".rept 256",
        "1:",
        // No error code from the host: push a zero so every frame has one.
        // (Nested, so the shift is never evaluated for a vector >= 32.)
        "  .if rguest_vector < 32",
        "    .if (({error_code_vectors} >> rguest_vector) & 1) == 0",
        "      pushq $0",
        "    .endif",
        "  .else",
        "    pushq $0",
        "  .endif",
        "  pushq $rguest_vector",
        "  jmp rguest_trap_common",
        // Pad the stub to its slot with int3; the assembler refuses if the
        // stub is already past it (.org cannot move backwards).
        "  .org 1b + {stub_bytes}, 0xcc",
        "  .set rguest_vector, rguest_vector + 1",
        ".endr",
        "",
        "rguest_trap_common:",
        "  pushq %rax",
        "  pushq %rbx",
        "  pushq %rcx",
        "  pushq %rdx",
        "  pushq %rsi",
        "  pushq %rdi",
        "  pushq %rbp",
        "  pushq %r8",
        "  pushq %r9",
        "  pushq %r10",
        "  pushq %r11",
        "  pushq %r12",
        "  pushq %r13",
        "  pushq %r14",
        "  pushq %r15",
        // The frame is now a TrapFrame at rsp: pass it to dispatch.
        "  movq %rsp, %rdi",
        // rbx is callee-saved: it brings the frame's address back to us.
        "  movq %rsp, %rbx",
        // The ABI wants a 16-byte-aligned stack at the call and the
        // direction flag clear; the interrupted code promised neither.
        "  andq $-16, %rsp",
        "  cld",
        save_fpu!(),
        "  call {dispatch}",
        restore_fpu!(),
        "  movq %rbx, %rsp",
        "  popq %r15",
        "  popq %r14",
        "  popq %r13",
        "  popq %r12",
        "  popq %r11",
        "  popq %r10",
        "  popq %r9",
        "  popq %r8",
        "  popq %rbp",
        "  popq %rdi",
        "  popq %rsi",
        "  popq %rdx",
        "  popq %rcx",
        "  popq %rbx",
        "  popq %rax",
        // Drop the vector and the error code.
        "  addq $16, %rsp",
        "  iretq",
        stub_bytes = const STUB_BYTES,
        error_code_vectors = const ERROR_CODE_VECTORS,
        dispatch = sym dispatch,
        options(att_syntax),
    );

    unsafe extern "C" {
        /// The first of the 256 stubs (defined in the assembly above).
        static rguest_trap_stubs: [u8; 256 * STUB_BYTES as usize];
    }

    /// The guest-virtual address of the stub for `vector`.
    fn stub_address(vector: u8) -> u64 {
        (&raw const rguest_trap_stubs) as u64 + u64::from(vector) * STUB_BYTES
    }

    /// The registered handlers, as addresses (0: none), by vector.
    static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
    /// What [`dispatch`] does after each vector's handler.
    static ON_RETURN: [AtomicU8; 256] = [const { AtomicU8::new(ON_RETURN_NOTHING) }; 256];

    /// An exception: the handler decides everything.
    const ON_RETURN_NOTHING: u8 = 0;
    /// A direct trap: the virtual interrupt flag back as the frame had it
    /// (the system call's path, kept to one load and branch here).
    const ON_RETURN_RESTORE_FLAG: u8 = 1;
    /// A virtual interrupt: the flag back, then the end of interrupt.
    const ON_RETURN_END_OF_INTERRUPT: u8 = 2;

    /// Runs `handler` for trap `vector`, delivered as `delivery` says.
    pub fn set_handler(vector: u8, handler: Handler, delivery: Delivery) -> Result<(), Error> {
        let flags = match delivery {
            Delivery::Exception => trap_flags::KEEP_INTERRUPTS,
            Delivery::Interrupt => 0,
        };
        let on_return = match delivery {
            Delivery::Exception => ON_RETURN_NOTHING,
            Delivery::Interrupt => ON_RETURN_END_OF_INTERRUPT,
        };
        register(vector, handler, on_return, flags)
    }

    /// Puts `handler` in the table, then asks the host for the vector (in
    /// that order, so a trap that comes at once finds it); if the host
    /// refuses, the handler the vector had before is put back.
    fn register(vector: u8, handler: Handler, on_return: u8, flags: u64) -> Result<(), Error> {
        let index = usize::from(vector);
        let old_handler = HANDLERS[index].swap(handler as usize, Ordering::AcqRel);
        let old_on_return = ON_RETURN[index].swap(on_return, Ordering::AcqRel);
        // SAFETY: the stub is our own code, which handles the frame the
        // host pushes (see the module docs) for the program's whole life.
        let result = unsafe { hypercall::set_trap(vector, stub_address(vector), flags) };
        if result.is_err() {
            HANDLERS[index].store(old_handler, Ordering::Release);
            ON_RETURN[index].store(old_on_return, Ordering::Release);
        }
        result.map(drop)
    }

    /// Runs `handler` for vector `vector` as a *direct trap*: guest user
    /// code reaches it with `int vector` through the CPU's own IDT, from
    /// ring 3 straight to ring 1 on the stack given with `set_kernel_stack`,
    /// without the host (a system-call gate). The host is never involved,
    /// so the virtual interrupt flag stays as user code had it (on); the
    /// handler runs like a [`Delivery::Interrupt`] on the way out (the flag
    /// is turned back on if the frame's RFLAGS.IF says it was on).
    ///
    /// The host refuses (`InvalidArgument`) the vectors the contract keeps
    /// from direct traps (`guest_abi::hypercall::may_be_direct`): the
    /// exceptions, the hypercall gate and the host's own interrupt vectors.
    pub fn set_direct_handler(vector: u8, handler: Handler) -> Result<(), Error> {
        register(
            vector,
            handler,
            ON_RETURN_RESTORE_FLAG,
            trap_flags::DIRECT_FROM_USER,
        )
    }

    /// Where the common trap path calls in: runs the vector's handler.
    extern "C" fn dispatch(frame: &mut TrapFrame) {
        let index = (frame.vector & 0xff) as usize;
        let handler = HANDLERS[index].load(Ordering::Acquire);
        if handler == 0 {
            unhandled(frame);
        }
        // SAFETY: a nonzero entry was stored from a `Handler` by
        // set_handler, and function pointers survive a round trip through
        // usize.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(frame);
        match ON_RETURN[index].load(Ordering::Acquire) {
            ON_RETURN_NOTHING => {}
            ON_RETURN_RESTORE_FLAG => {
                if frame.interrupts_were_on() {
                    crate::irq::enable();
                }
            }
            _ => {
                if frame.interrupts_were_on() {
                    crate::irq::enable();
                }
                // After `enable`: the exit it may make to take the next
                // pending interrupt is still this interrupt's doing.
                crate::irq::end_of_interrupt();
            }
        }
    }

    /// A trap nobody asked for: say what it was and end the guest.
    fn unhandled(frame: &TrapFrame) -> ! {
        crate::println!(
            "guest-rt: unhandled trap {} (error code {:#x}) at {:#x} in ring {}",
            frame.vector,
            frame.error_code,
            frame.rip,
            frame.ring()
        );
        hypercall::shutdown(crate::exit_code::UNHANDLED_TRAP)
    }

    /// The faulting address of the last page fault the host reflected to
    /// us (our CR2).
    pub fn fault_address() -> u64 {
        let shared = crate::boot::shared_page();
        // SAFETY: the shared page is mapped for the guest's whole life;
        // the host writes the field only while we are not running.
        unsafe { (&raw const (*shared).fault_address).read_volatile() }
    }

    /// What a handler may do to its frame beyond changing registers.
    pub trait SkipInstruction {
        /// Resumes after the instruction at `rip` if its bytes are
        /// `expected` (the instruction the handler knows it trapped on);
        /// returns whether it did.
        ///
        /// Only for traps from the guest kernel, whose code is always
        /// mapped: the bytes are read at `rip`.
        fn skip_instruction(&mut self, expected: &[u8]) -> bool;
    }

    impl SkipInstruction for TrapFrame {
        fn skip_instruction(&mut self, expected: &[u8]) -> bool {
            if self.ring() != 1 {
                return false;
            }
            // SAFETY: ring-1 code runs from our image, which stays mapped
            // and readable; we read no more bytes than the instruction we
            // expect there, and only compare them.
            let found =
                unsafe { core::slice::from_raw_parts(self.rip as *const u8, expected.len()) };
            if found != expected {
                return false;
            }
            self.rip += expected.len() as u64;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_with_the_vectors_the_cpu_pushes_them_for() {
        let with: Vec<u8> = (0..=255).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
    }

    #[test]
    fn the_frame_is_the_registers_then_vector_error_code_and_cpu_frame() {
        use core::mem::offset_of;
        // 15 registers, vector, error code, then the 5 words the host pushed.
        assert_eq!(offset_of!(TrapFrame, rax), 14 * 8);
        assert_eq!(offset_of!(TrapFrame, vector), 15 * 8);
        assert_eq!(offset_of!(TrapFrame, rip), 17 * 8);
        assert_eq!(size_of::<TrapFrame>(), 22 * 8);
    }
}
