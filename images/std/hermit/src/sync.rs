//! The runtime's one kind of lock: virtual interrupts off on this vCPU,
//! plus a spin lock against the other vCPUs.
//!
//! On one vCPU the only thing that can cut into running code is a virtual
//! interrupt (the timer, which may switch threads), so turning virtual
//! interrupts off is the whole lock, and [`IrqLock`] takes no spin lock:
//! with one vCPU (`smp::several()` false) it costs what it did before
//! there were several. With several vCPUs it also spins on a flag of its
//! own. Interrupts go off first, so a holder is never preempted on its
//! vCPU, and the threads of the others spin at most as long as a short
//! critical section runs (or as long as the host keeps the holder's vCPU
//! off its CPU).
//!
//! # Lock order
//!
//! A closure given to [`IrqLock::with`] may take another lock only further
//! down this list, never one above:
//!
//! 1. the network stack (`net`), 2. the file system (`fs`),
//! 3. the scheduler (`sched`: threads, run queue, futex waiters, each
//!    vCPU's own state), 4. the entropy fallback, 5. the console,
//! 6. the heap (`memory`).
//!
//! No thread switches away holding any of them, but for the scheduler's,
//! which a switch hands over: the context that switches away takes it, and
//! the one that resumes lets it go ([`IrqLock::hold`], [`IrqLock::let_go`]).

use crate::smp;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_rt::irq;

/// A value that only code holding the lock (interrupts off on its vCPU,
/// and the spin lock when there are several) may touch.
pub struct IrqLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: every access holds the lock: interrupts off, so no thread or
// handler of this vCPU cuts in, and with several vCPUs the spin lock, so
// no other vCPU's code is inside either.
unsafe impl<T: Send> Sync for IrqLock<T> {}

impl<T> IrqLock<T> {
    /// A lock holding `value`.
    pub const fn new(value: T) -> Self {
        IrqLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value with the lock held, then puts the interrupt
    /// flag back as it was. `f` must not take this lock again, take one
    /// above it in the lock order, nor switch threads: every caller keeps
    /// its closure short and flat.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let was_enabled = irq::disable();
        // SAFETY: interrupts are off; the lock is let go below, before
        // they come back on, and the reference does not outlive it.
        let result = f(unsafe { self.hold() });
        // SAFETY: taken by `hold` above.
        unsafe { self.let_go() };
        irq::restore(was_enabled);
        result
    }

    /// Takes the lock and gives the value.
    ///
    /// # Safety
    ///
    /// Virtual interrupts are off, this vCPU does not hold the lock yet,
    /// and the reference is dropped before [`IrqLock::let_go`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn hold(&self) -> &mut T {
        if smp::several() {
            self.spin();
        }
        // SAFETY: the lock is ours (the spin lock, or on one vCPU the
        // interrupts the caller turned off), so no other reference is live.
        unsafe { &mut *self.value.get() }
    }

    /// The value, for the context that resumed holding the lock (the
    /// scheduler's switch hands it over).
    ///
    /// # Safety
    ///
    /// This vCPU holds the lock, interrupts are off, and no other
    /// reference to the value is live.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn held(&self) -> &mut T {
        // SAFETY: the caller promises the lock is ours and the reference
        // the only one.
        unsafe { &mut *self.value.get() }
    }

    /// Lets go of the lock [`IrqLock::hold`] took (perhaps in another
    /// context of this vCPU: the scheduler's switch).
    ///
    /// # Safety
    ///
    /// This vCPU holds the lock, and no reference from `hold` is used
    /// after.
    pub unsafe fn let_go(&self) {
        if smp::several() {
            self.locked.store(false, Ordering::Release);
        }
    }

    /// Spins until the flag is ours; waits reading, not writing, so the
    /// holder's cache line is not pulled away at every turn.
    fn spin(&self) {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }
}
