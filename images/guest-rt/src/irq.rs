//! The virtual interrupt flag: `cli` and `sti` for a guest in ring 1.
//!
//! Each vCPU has its own flag, in its own shared page; this is the asking
//! vCPU's once `smp` knows which that is (with `FSGSBASE`), vCPU 0's
//! otherwise.
//!
//! The real interrupt flag belongs to the host, which keeps it on. The
//! guest's flag is `irq_enabled` in the shared page: the host delivers a
//! virtual interrupt only while it is nonzero, and turns it off when it
//! delivers one to a handler registered as an interrupt. Changing it costs a
//! memory write, not an exit; the one subtlety is turning it on while an
//! interrupt is already pending: the host only looks at the flag when we
//! exit, so [`enable`] makes a cheap exit (a `nop` hypercall) to have it
//! delivered at once rather than at the next host tick.

use crate::{hypercall, smp};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::shared::SharedPage;

/// The asking vCPU's shared page (vCPU 0's unless the runtime knows each
/// vCPU's: see `smp`, "Which vCPU am I?").
fn shared() -> *mut SharedPage {
    smp::this_shared_page()
}

fn flag() -> &'static AtomicU64 {
    // SAFETY: the shared page is mapped, 8-byte aligned (page-aligned) and
    // ours for the guest's whole life; the host touches it only while the
    // guest is stopped, so atomic accesses from the guest never race it.
    unsafe { AtomicU64::from_ptr(&raw mut (*shared()).irq_enabled) }
}

fn pending() -> u64 {
    // SAFETY: as in `flag`; the host sets bits here while we are stopped.
    unsafe { AtomicU64::from_ptr(&raw mut (*shared()).irq_pending) }.load(Ordering::SeqCst)
}

/// Whether virtual interrupts are on.
pub fn enabled() -> bool {
    flag().load(Ordering::SeqCst) != 0
}

/// Turns virtual interrupts off (`cli`); returns whether they were on.
/// SeqCst also keeps the compiler from moving memory accesses of the
/// critical section that follows above it.
pub fn disable() -> bool {
    flag().swap(0, Ordering::SeqCst) != 0
}

/// Turns virtual interrupts on (`sti`), and takes any that is pending.
pub fn enable() {
    flag().store(1, Ordering::SeqCst);
    if pending() != 0 {
        hypercall::nop();
    }
}

/// Tells the host this interrupt's handling is done (its end of
/// interrupt): exits from here on are the guest's own in the host's
/// measurements (`SharedPage::in_interrupt`). Only bookkeeping: nothing is
/// delivered or masked by it.
pub fn end_of_interrupt() {
    // SAFETY: as in `flag`.
    unsafe { AtomicU64::from_ptr(&raw mut (*shared()).in_interrupt) }.store(0, Ordering::SeqCst);
}

/// Puts the flag back as [`disable`] found it.
pub fn restore(was_enabled: bool) {
    if was_enabled {
        enable();
    } else {
        disable();
    }
}

/// Runs `f` with virtual interrupts off.
pub fn without_interrupts<T>(f: impl FnOnce() -> T) -> T {
    let was = disable();
    let result = f();
    restore(was);
    result
}
