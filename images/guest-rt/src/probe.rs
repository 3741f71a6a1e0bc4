//! Probing memory that may not be there: a read or a write whose page
//! fault comes back to the caller as a value instead of ending the guest.
//!
//! A guest that checks its own paging (or a host's containment) needs to
//! touch an address and learn *that* it faulted, with the address and
//! error code the host reflected. [`install`] registers a page-fault
//! handler that recognises the one instruction [`read`] or [`write`] is
//! executing, records the fault, and resumes after that instruction (a
//! "fixup", as a kernel's `copy_from_user` has); [`read`] and [`write`]
//! then return the [`Fault`]. Any other page fault goes to the handler
//! the program passed to [`install`].

/// What the host reported for a reflected page fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (the shared page's `fault_address`).
    pub address: u64,
    /// The page-fault error code: bit 0 present, bit 1 write, bit 2 user,
    /// bit 4 instruction fetch.
    pub error_code: u64,
}

/// Page-fault error code bit: the page was present (a rights violation).
pub const PF_PRESENT: u64 = 1 << 0;
/// Page-fault error code bit: the access was a write.
pub const PF_WRITE: u64 = 1 << 1;
/// Page-fault error code bit: the access came from user code (ring 3).
pub const PF_USER: u64 = 1 << 2;

/// `mov rax, qword ptr [rdi]`: the instruction [`read`] probes with.
pub const READ_INSTRUCTION: [u8; 3] = [0x48, 0x8b, 0x07];
/// `mov qword ptr [rdi], rax`: the instruction [`write`] probes with.
pub const WRITE_INSTRUCTION: [u8; 3] = [0x48, 0x89, 0x07];

#[cfg(any(target_os = "none", target_os = "hermit"))]
pub use bare::*;

#[cfg(any(target_os = "none", target_os = "hermit"))]
mod bare {
    use super::*;
    use crate::traps::{self, Delivery, Handler, SkipInstruction, TrapFrame, vector};
    use core::arch::asm;
    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use guest_abi::hypercall::Error;

    /// Set while a probe's instruction may fault.
    static PROBING: AtomicBool = AtomicBool::new(false);
    /// Set by the handler when the probe faulted.
    static FAULTED: AtomicBool = AtomicBool::new(false);
    static FAULT_ADDRESS: AtomicU64 = AtomicU64::new(0);
    static FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
    /// The program's handler for every other page fault (0: none).
    static OTHER: AtomicUsize = AtomicUsize::new(0);

    /// Registers the probing page-fault handler; page faults that are not
    /// a probe's go to `other`.
    pub fn install(other: Handler) -> Result<(), Error> {
        OTHER.store(other as usize, Ordering::Release);
        traps::set_handler(vector::PAGE_FAULT, on_page_fault, Delivery::Exception)
    }

    fn on_page_fault(frame: &mut TrapFrame) {
        if PROBING.load(Ordering::Acquire)
            && (frame.skip_instruction(&READ_INSTRUCTION)
                || frame.skip_instruction(&WRITE_INSTRUCTION))
        {
            FAULT_ADDRESS.store(traps::fault_address(), Ordering::Relaxed);
            FAULT_ERROR.store(frame.error_code, Ordering::Relaxed);
            FAULTED.store(true, Ordering::Release);
            return;
        }
        let other = OTHER.load(Ordering::Acquire);
        // SAFETY: a nonzero value was stored from a `Handler` by `install`.
        let other: Handler = unsafe { core::mem::transmute::<usize, Handler>(other) };
        other(frame);
    }

    /// Runs `access` (one of the probe instructions) with faults caught.
    fn probing(access: impl FnOnce()) -> Result<(), Fault> {
        FAULTED.store(false, Ordering::Release);
        PROBING.store(true, Ordering::Release);
        access();
        PROBING.store(false, Ordering::Release);
        if FAULTED.load(Ordering::Acquire) {
            return Err(Fault {
                address: FAULT_ADDRESS.load(Ordering::Relaxed),
                error_code: FAULT_ERROR.load(Ordering::Relaxed),
            });
        }
        Ok(())
    }

    /// Reads the word at `address`, or says how that faulted.
    pub fn read(address: u64) -> Result<u64, Fault> {
        let mut value = 0;
        probing(|| {
            // SAFETY: a read, which either succeeds or faults into our
            // handler, which resumes after it; rax then holds garbage that
            // is not returned.
            unsafe {
                asm!(
                    "mov rax, qword ptr [rdi]",
                    in("rdi") address,
                    out("rax") value,
                    options(nostack, readonly),
                )
            }
        })?;
        Ok(value)
    }

    /// Writes `value` to the word at `address`, or says how that faulted.
    ///
    /// # Safety
    ///
    /// If the write succeeds it changes memory: `address` must be a word
    /// nothing else relies on.
    pub unsafe fn write(address: u64, value: u64) -> Result<(), Fault> {
        probing(|| {
            // SAFETY: the caller vouches for the word; a fault resumes
            // after the instruction.
            unsafe {
                asm!(
                    "mov qword ptr [rdi], rax",
                    in("rdi") address,
                    in("rax") value,
                    options(nostack),
                )
            }
        })
    }
}
