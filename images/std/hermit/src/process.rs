//! The end of the guest: `exit`, `abort`, and the process id.
//!
//! The guest is one process, so ending it is the host's `Shutdown`
//! hypercall with the exit code, after the console's last partial line.
//! A panic reaches us as `sys_abort` (std is built with `panic = "abort"`:
//! it prints the message, then aborts), so an abort ends the guest with
//! 101, the code of a panicking Rust program; an abort that follows an
//! allocation std could not get is reported as running out of memory
//! (`hermit: out of memory: ...`, code 104).

use crate::{console, memory, smp};
use core::sync::atomic::{AtomicUsize, Ordering};
use guest_rt::{exit_code, hypercall, irq};

/// The process id `getpid` gives: the guest is the one process there is.
const PROCESS_ID: i32 = 1;

/// Which vCPU (its number + 1) is ending the guest; 0 while none is.
static ENDING: AtomicUsize = AtomicUsize::new(0);

/// Ends the guest with `code`, the console flushed first (and, with
/// several vCPUs, how many thread turns each gave). Only the first vCPU to
/// get here ends it, once: another that arrives meanwhile (two idle vCPUs
/// finding the same deadlock) halts until the guest is gone.
pub fn end(code: u64) -> ! {
    claim_the_end();
    crate::sched::report_turns();
    console::flush();
    hypercall::shutdown(code)
}

/// Ends the guest with `code` after the runtime's line `why`, printed by
/// the vCPU that ends it only.
pub fn end_saying(code: u64, why: core::fmt::Arguments<'_>) -> ! {
    claim_the_end();
    console::report(why);
    end(code)
}

/// Returns if this vCPU is the one ending the guest (the first to ask, or
/// asking again); another halts here until the guest is gone.
fn claim_the_end() {
    let me = smp::this_vcpu() + 1;
    let first = ENDING.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire);
    if first.is_err_and(|ending| ending != me) {
        irq::disable();
        loop {
            // The ending vCPU is awake: the host lets this one halt.
            hypercall::halt();
        }
    }
}

/// `exit(status)`: the guest ends with the status's low 8 bits, as a Unix
/// process's would.
#[unsafe(no_mangle)]
pub extern "C" fn sys_exit(status: i32) -> ! {
    end(u64::from(status as u8))
}

/// `abort()`: a panic (code 101), or the end of memory (code 104).
#[unsafe(no_mangle)]
pub extern "C" fn sys_abort() -> ! {
    if let Some(failure) = memory::last_failure() {
        console::report(format_args!(
            "out of memory: {} bytes (aligned to {}) could not be allocated in a heap of {} bytes",
            failure.size, failure.align, failure.heap_bytes
        ));
        end(exit_code::OUT_OF_MEMORY);
    }
    end(exit_code::PANIC)
}

/// `getpid()`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_getpid() -> i32 {
    PROCESS_ID
}

/// `get_errno()`: every function here returns its error itself (a negated
/// `errno`), so there is no last error to keep, and this says "none" (0).
/// std asks only in `io::Error::last_os_error`, which its Hermit code does
/// not use after our calls.
#[unsafe(no_mangle)]
pub extern "C" fn sys_get_errno() -> i32 {
    0
}

/// `errno()`: as [`sys_get_errno`].
#[unsafe(no_mangle)]
pub extern "C" fn sys_errno() -> i32 {
    sys_get_errno()
}
