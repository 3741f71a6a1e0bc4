//! Kernel state on one CPU.
//!
//! The guest kernel runs on one virtual CPU and is never preempted: the
//! timer handler only asks for a reschedule when it interrupts ring 1 (see
//! [`crate::process`]). So kernel state needs no locks, only a rule that no
//! two pieces of code hold `&mut` to it at once. [`Kernel::with`] enforces
//! that rule at run time: a nested borrow panics instead of aliasing. A
//! borrow must never be held across a context switch (the code that
//! switches copies out what it needs first).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value the kernel shares between its paths, borrowed one at a time.
pub struct Kernel<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: one CPU, and `with` admits one borrower at a time (checked), so
// the value is never reached from two places at once.
unsafe impl<T> Sync for Kernel<T> {}

impl<T> Kernel<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with the value borrowed mutably. Panics if it already is.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(
            !self.busy.swap(true, Ordering::Acquire),
            "kernel state borrowed twice"
        );
        // SAFETY: `busy` was false, so no other borrow exists; it stays
        // true until this one ends.
        let result = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        result
    }
}
