//! The one shape of a trap's registers, on both sides of the contract.
//!
//! Whatever takes the CPU from running code (an exception, an interrupt, a
//! hypercall) ends with the same picture in memory: the CPU's `iretq`
//! frame, below it the vector and error code a stub pushed, below those
//! the fifteen general registers pushed in a fixed order. The host's
//! switcher leaves a guest's registers in this shape in its register page
//! (`switcher::GuestRegs`), the host's own trap stubs leave it on the
//! host's stack, and a guest kernel's runtime leaves it on its kernel stack
//! for its handlers (`guest_rt::traps::TrapFrame`). It is written down
//! once, here.

/// A trap's registers, lowest address first: the general registers as the
/// stubs push them (`rax` first, so `r15` lands lowest), the vector and
/// error code, then the frame `iretq` pops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // The general registers need no words.
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The trap's vector (pushed by the stub).
    pub vector: u64,
    /// The CPU's error code, or 0 for a vector without one
    /// ([`crate::hypercall::has_error_code`]).
    pub error_code: u64,
    /// Where the interrupted code resumes.
    pub rip: u64,
    /// Its code segment; the low two bits are its ring.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

impl TrapFrame {
    /// The ring the interrupted code ran in (1: a guest kernel, 3: its user
    /// code).
    pub fn ring(&self) -> u8 {
        (self.cs & 3) as u8
    }

    /// Whether the interrupted code had interrupts on, as far as the frame
    /// says (RFLAGS.IF).
    pub fn interrupts_were_on(&self) -> bool {
        self.rflags & RFLAGS_IF != 0
    }
}

/// The frame's size: 22 quadwords, so a stub that starts on a 16-byte
/// aligned stack leaves it aligned.
const _: () = assert!(size_of::<TrapFrame>() == 22 * 8);
