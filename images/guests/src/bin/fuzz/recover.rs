//! Taking a trap and carrying on: every exception the fuzzer causes comes
//! back to it, and it goes on with the next action.
//!
//! Every action that may trap runs inside [`guarded!`]: one `asm!` block
//! that first records where it ends (its recovery point, the label `77` at
//! the end of the block) and the stack pointer, then runs the dangerous
//! instructions. A trap anywhere in between, in ring 1 or in ring 3, comes
//! to [`on_trap`] (registered for every exception vector; page faults reach
//! it through guest-rt's probe, which keeps the faults of its own probes),
//! which notes the trap and rewrites the frame to resume at the recovery
//! point, on the recorded stack, in ring 1. That is setjmp/longjmp: the
//! "jmp_buf" is two words, the longjmp the `iretq` of guest-rt's trap path.
//! guest-rt's probe recovers the same way for the one instruction it knows,
//! by skipping it; here any instruction may be the one that faults, so the
//! frame is sent to the end of the block instead.
//!
//! The whole action is one asm block that declares every register it
//! changes, and a trap keeps every register as it was (the host's exit and
//! guest-rt's trap path save and restore them all), so resuming at the end
//! with whatever they held at the trap is sound. A trap
//! outside any guarded action means the fuzzer lost control of itself: it
//! says so and exits with [`LOST_CONTROL`].

use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::boot::selector;
use guest_rt::traps::{self, Delivery, TrapFrame};
use guest_rt::{hypercall, println};

/// The exit code when a trap came outside every guarded action.
pub const LOST_CONTROL: u64 = 3;

/// Where a trap inside a guarded action resumes (0: no action guarded).
/// Written by the asm of [`guarded!`], cleared by [`on_trap`].
pub static RESUME_RIP: AtomicU64 = AtomicU64::new(0);
/// The stack pointer to resume with.
pub static RESUME_RSP: AtomicU64 = AtomicU64::new(0);

/// The step being run, for the report of a lost trap.
pub static STEP: AtomicU64 = AtomicU64::new(0);

/// Traps taken, in all.
static TRAPS_TAKEN: AtomicU64 = AtomicU64::new(0);
/// Traps taken by vector (exceptions); the last slot counts direct traps.
static TRAPS_BY_VECTOR: [AtomicU64; 33] = [const { AtomicU64::new(0) }; 33];
/// The last trap: vector, error code, rip, ring and (page faults) address.
static LAST: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The vectors of the direct traps the fuzzer keeps registered (its `int n`
/// that must not end it).
pub const DIRECT_VECTORS: [u8; 3] = [0x80, 0x90, 0xf0];

/// One trap, as [`on_trap`] saw it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Trap {
    /// The vector.
    pub vector: u64,
    /// The error code (0 for a vector without one).
    pub error_code: u64,
    /// Where it happened.
    pub rip: u64,
    /// The ring it happened in.
    pub ring: u64,
    /// For a page fault, the faulting address.
    pub address: u64,
}

impl core::fmt::Display for Trap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "vector {} error {:#x} at {:#x} ring {}",
            self.vector, self.error_code, self.rip, self.ring
        )?;
        if self.vector == 14 {
            write!(f, " address {:#x}", self.address)?;
        }
        Ok(())
    }
}

/// Traps taken so far.
pub fn traps_taken() -> u64 {
    TRAPS_TAKEN.load(Ordering::SeqCst)
}

/// The last trap taken.
pub fn last_trap() -> Trap {
    let [vector, error_code, rip, ring, address] =
        LAST.each_ref().map(|w| w.load(Ordering::SeqCst));
    Trap {
        vector,
        error_code,
        rip,
        ring,
        address,
    }
}

/// Traps taken for exception `vector` (32: direct traps).
pub fn traps_of(vector: usize) -> u64 {
    TRAPS_BY_VECTOR
        .get(vector)
        .map_or(0, |count| count.load(Ordering::SeqCst))
}

/// Bytes of the stack traps from ring 3 are delivered on.
const TRAP_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct TrapStack([u8; TRAP_STACK_BYTES]);

/// The stack traps from ring 3 are delivered on. Only its address is
/// ever taken.
static mut TRAP_STACK: TrapStack = TrapStack([0; TRAP_STACK_BYTES]);

/// Names [`TRAP_STACK`] to the host as the kernel stack (again, after a
/// random `set_kernel_stack`).
pub fn restore_kernel_stack() {
    let top = (&raw mut TRAP_STACK) as u64 + TRAP_STACK_BYTES as u64;
    // SAFETY: the trap stack is a static used for nothing else.
    if let Err(e) = unsafe { hypercall::set_kernel_stack(top) } {
        println!("fuzz: the host refused our kernel stack: {e:?}");
        hypercall::shutdown(crate::BAD_SETUP);
    }
}

/// Registers [`on_trap`] for every exception vector (page faults through
/// guest-rt's probe) and [`on_direct`] for the [`DIRECT_VECTORS`], and
/// the stack for traps from ring 3.
pub fn install() -> Result<(), guest_abi::hypercall::Error> {
    restore_kernel_stack();
    guest_rt::probe::install(on_trap)?;
    for vector in 0..32u8 {
        if vector != traps::vector::PAGE_FAULT {
            traps::set_handler(vector, on_trap, Delivery::Exception)?;
        }
    }
    for vector in DIRECT_VECTORS {
        traps::set_direct_handler(vector, on_direct)?;
    }
    for vector in IRQ_VECTORS {
        traps::set_handler(vector, on_irq, Delivery::Interrupt)?;
    }
    Ok(())
}

/// Virtual interrupt vectors the fuzzer handles (besides the runtime's
/// timer, 32): the fuzzer raises them itself, through the shared page's
/// pending bits (bit `n` for vector `32 + n`).
pub const IRQ_VECTORS: core::ops::RangeInclusive<u8> = 33..=40;

/// Virtual interrupts taken by [`on_irq`].
static IRQS_TAKEN: AtomicU64 = AtomicU64::new(0);

/// Virtual interrupts the fuzzer's own handlers took.
pub fn irqs_taken() -> u64 {
    IRQS_TAKEN.load(Ordering::SeqCst)
}

/// A virtual interrupt the fuzzer raised: counted; the runtime turns
/// virtual interrupts back on after it if they were on.
fn on_irq(_frame: &mut TrapFrame) {
    IRQS_TAKEN.fetch_add(1, Ordering::SeqCst);
}

/// Puts back the fuzzer's own handler for `vector` after a random
/// `set_trap` may have changed it: its own, the runtime's timer, or none.
pub fn restore_handler(vector: u8) -> Result<(), guest_abi::hypercall::Error> {
    if vector == traps::vector::PAGE_FAULT {
        guest_rt::probe::install(on_trap)
    } else if vector < 32 {
        traps::set_handler(vector, on_trap, Delivery::Exception)
    } else if DIRECT_VECTORS.contains(&vector) {
        traps::set_direct_handler(vector, on_direct)
    } else if IRQ_VECTORS.contains(&vector) {
        traps::set_handler(vector, on_irq, Delivery::Interrupt)
    } else if vector == guest_abi::hypercall::TIMER_VECTOR {
        traps::set_handler(vector, on_timer, Delivery::Interrupt)
    } else {
        // SAFETY: a zero handler removes the vector.
        unsafe { hypercall::set_trap(vector, 0, 0) }.map(drop)
    }
}

/// The timer's handler, should a random `set_trap` have taken the
/// runtime's: the fuzzer keeps its virtual interrupts off, so it never
/// runs, but the vector must lead somewhere sound.
fn on_timer(_frame: &mut TrapFrame) {}

fn record(frame: &TrapFrame, vector: u64) {
    let address = if vector == 14 {
        traps::fault_address()
    } else {
        0
    };
    let values = [
        vector,
        frame.error_code,
        frame.rip,
        u64::from(frame.ring()),
        address,
    ];
    for (word, value) in LAST.iter().zip(values) {
        word.store(value, Ordering::SeqCst);
    }
    TRAPS_TAKEN.fetch_add(1, Ordering::SeqCst);
    if let Some(count) = TRAPS_BY_VECTOR.get(vector.min(32) as usize) {
        count.fetch_add(1, Ordering::SeqCst);
    }
}

/// RFLAGS to resume with: bit 1 and IF (which ring 1 cannot change
/// anyway), no single-stepping, direction up, no nested task, no alignment
/// checks.
const SANE_RFLAGS: u64 = 0x202;

/// Every exception: back to the recovery point of the running action.
fn on_trap(frame: &mut TrapFrame) {
    record(frame, frame.vector);
    let resume = RESUME_RIP.swap(0, Ordering::SeqCst);
    if resume == 0 {
        lost_control(frame);
    }
    frame.rip = resume;
    frame.rsp = RESUME_RSP.load(Ordering::SeqCst);
    frame.cs = u64::from(selector::KERNEL_CODE);
    frame.ss = u64::from(selector::KERNEL_DATA);
    frame.rflags = SANE_RFLAGS;
}

/// A direct trap (`int n` on one of [`DIRECT_VECTORS`], from ring 1 or
/// ring 3): noted, and the interrupted code goes on. RFLAGS.IF is cleared
/// in the frame so the runtime does not turn virtual interrupts on for
/// it: they stay off for the whole run (see the crate docs), and `iretq`
/// in ring 1 and 3 cannot change the real flag anyway.
fn on_direct(frame: &mut TrapFrame) {
    record(frame, 32);
    frame.rflags &= !traps::RFLAGS_IF;
}

fn lost_control(frame: &TrapFrame) -> ! {
    println!(
        "fuzz: LOST CONTROL at step {}: trap vector {} (error {:#x}) at {:#x} in ring {}, outside every guarded action",
        STEP.load(Ordering::SeqCst),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.ring()
    );
    hypercall::shutdown(LOST_CONTROL)
}

/// Runs the instructions `body` (asm template strings) with a recovery
/// point at their end (label `77`), then `operands` (asm operands).
/// Expands to an `asm!` expression: the caller wraps it in `unsafe` with
/// its SAFETY comment.
///
/// The operands must name every general register the body changes (as an
/// output, `out("rcx") _` for one the template names itself), never rbx,
/// rbp or r12-r15: a trap resumes with the registers as they were at the
/// trap (the host and guest-rt's trap path keep them all), so the
/// registers the compiler relies on are those the body never touched. The
/// x87, MMX and SSE registers need no naming: the guest is soft-float, and
/// no compiled code keeps anything there.
macro_rules! guarded {
    ([$($body:expr),* $(,)?] $(, $($operands:tt)*)?) => {
        ::core::arch::asm!(
            "lea {resume_tmp}, [rip + 77f]",
            "mov qword ptr [rip + {resume_rip}], {resume_tmp}",
            "mov qword ptr [rip + {resume_rsp}], rsp",
            $($body,)*
            "77:",
            "mov rsp, qword ptr [rip + {resume_rsp}]",
            "mov qword ptr [rip + {resume_rip}], 0",
            "cld",
            resume_rip = sym $crate::recover::RESUME_RIP,
            resume_rsp = sym $crate::recover::RESUME_RSP,
            resume_tmp = out(reg) _,
            $($($operands)*)?
        )
    };
}
pub(crate) use guarded;
