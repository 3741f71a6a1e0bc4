//! Time: the host's clock, the one-shot virtual timer, sleeping, and the
//! time-stamp counter.
//!
//! Sleeping is the classic race made safe: the check "has the timer fired?"
//! and the wait must not let the interrupt slip between them, or we would
//! wait for an interrupt that already came. So the check happens with
//! virtual interrupts off, and `halt` returns as soon as an interrupt is
//! *pending*, delivered or not; turning interrupts back on then delivers it.

use crate::traps::{self, Delivery, TrapFrame};
use crate::{hypercall, irq};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::hypercall::TIMER_VECTOR;

/// Timer interrupts taken since boot.
static TIMER_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Registers the timer's handler (the runtime does this before main).
pub(crate) fn init() {
    if traps::set_handler(TIMER_VECTOR, on_timer, Delivery::Interrupt).is_err() {
        crate::println!("guest-rt: the host refused the timer handler; sleeping will hang");
    }
}

fn on_timer(_frame: &mut TrapFrame) {
    TIMER_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// Timer interrupts taken since boot.
pub fn timer_interrupts() -> u64 {
    TIMER_INTERRUPTS.load(Ordering::SeqCst)
}

/// Nanoseconds since the host booted. Read from the time-stamp counter
/// with the host's own scale from the shared page, so no exit is needed;
/// only a host that publishes no scale (0) is asked by hypercall.
pub fn now_ns() -> u64 {
    let shared = crate::boot::shared_page();
    // SAFETY: the shared page is mapped for the guest's whole life; the
    // host writes these fields before the guest starts and only while it
    // is stopped, so plain reads never see them half-written.
    let (tsc_base, ns_per_cycle) = unsafe {
        (
            (&raw const (*shared).clock_tsc_base).read_volatile(),
            (&raw const (*shared).clock_ns_per_cycle).read_volatile(),
        )
    };
    if ns_per_cycle == 0 {
        return hypercall::read_time();
    }
    scale_cycles(cycles().wrapping_sub(tsc_base), ns_per_cycle)
}

/// `cycles` counted at `ns_per_cycle` (32.32 fixed point), in nanoseconds:
/// the host's clock arithmetic, with a 128-bit product so that no run is
/// long enough to overflow it.
pub const fn scale_cycles(cycles: u64, ns_per_cycle: u64) -> u64 {
    ((cycles as u128 * ns_per_cycle as u128) >> 32) as u64
}

/// Sleeps at least `ns` nanoseconds on the virtual timer. Interrupts are on
/// while it waits, and as the caller had them afterwards.
pub fn sleep_ns(ns: u64) {
    if ns == 0 {
        return;
    }
    let was_enabled = irq::disable();
    let before = timer_interrupts();
    if hypercall::set_timer(ns).is_err() {
        crate::println!("guest-rt: the host refused a {ns} ns timer");
        irq::restore(was_enabled);
        return;
    }
    while timer_interrupts() == before {
        hypercall::halt();
        // Take what is pending (the timer, or something else), then look
        // again with interrupts off.
        irq::enable();
        irq::disable();
    }
    irq::restore(was_enabled);
}

/// Sleeps at least `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    sleep_ns(ms.saturating_mul(1_000_000));
}

/// The time-stamp counter. Ring 1 may read it (CR4.TSD is off). Under QEMU
/// TCG it is the emulator's wall time; with `-icount` it counts
/// instructions retired.
#[inline(always)]
pub fn cycles() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc only reads the counter into edx:eax.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack));
    }
    u64::from(high) << 32 | u64::from(low)
}
