//! The runtime's one kind of lock: turning virtual interrupts off.
//!
//! The guest has one CPU, and the only thing that can cut into running
//! code is a virtual interrupt (the timer, which may switch threads). So
//! state shared between threads is safe to touch while virtual interrupts
//! are off, and a spin lock would be worse than useless: a thread
//! preempted while holding it would leave the others spinning forever.

use core::cell::UnsafeCell;
use guest_rt::irq;

/// A value that only code running with virtual interrupts off may touch.
pub struct IrqCell<T> {
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through `with`, which turns virtual interrupts
// off first; with one CPU and no other way in, accesses never overlap.
unsafe impl<T: Send> Sync for IrqCell<T> {}

impl<T> IrqCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        IrqCell {
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value with virtual interrupts off, then puts the
    /// flag back as it was. `f` must not call `with` on the same cell
    /// again, nor switch threads (another thread would then find the value
    /// borrowed): every caller keeps its closure short and flat.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let was_enabled = irq::disable();
        // SAFETY: interrupts are off, so no other thread runs and no
        // handler cuts in until we restore them; the callers never nest
        // `with` on one cell, so this is the only reference.
        let result = f(unsafe { &mut *self.value.get() });
        irq::restore(was_enabled);
        result
    }
}
