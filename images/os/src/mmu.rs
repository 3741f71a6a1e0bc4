//! Telling the host about page-table changes (guest_abi::pte).
//!
//! The host's shadow tables are a TLB that never forgets by itself: after
//! the guest changes a present entry, it must report the change before it
//! relies on it. Two ways:
//!
//! - [`report`]: one `MmuOp` hypercall, one exit, applied at once. For the
//!   single entry of a page fault.
//! - [`queue`] then [`flush`]: ops written into the MMU ring of the shared
//!   page (at offset 1024), applied by the host in order when we make one
//!   `FlushMmuRing` hypercall: one exit for a whole `fork`'s worth. The
//!   ring holds 64 ops; `queue` flushes by itself when it is full.
//!
//! The ring's `head` (ops ever queued) is ours, `tail` (ops ever applied)
//! the host's; both run freely and are compared with wrapping arithmetic.

use core::sync::atomic::{Ordering, compiler_fence};
use guest_abi::pte::MmuOp;
use guest_abi::pte::ring::{HEAD_OFFSET, RING_SLOTS, TAIL_OFFSET, slot_offset};
use guest_abi::shared::offset::MMU_RING;
use guest_rt::{boot, hypercall};

/// The ring, as the kernel sees it: a pointer to its first byte. Found
/// once per call, not once per word: the shared page's address comes from
/// the boot parameters, a call and a check each time.
#[derive(Clone, Copy)]
struct Ring(*mut u8);

impl Ring {
    fn get() -> Self {
        Self((boot::shared_page() as *mut u8).wrapping_add(MMU_RING as usize))
    }

    fn word(self, offset: u64) -> *mut u64 {
        self.0.wrapping_add(offset as usize).cast()
    }

    fn head(self) -> u64 {
        // SAFETY: the ring is in the shared page, mapped for the guest's life.
        unsafe { self.word(HEAD_OFFSET).read_volatile() }
    }

    fn tail(self) -> u64 {
        // SAFETY: as in head; the host writes it only while we are stopped.
        unsafe { self.word(TAIL_OFFSET).read_volatile() }
    }

    /// Ops queued and not yet applied.
    fn pending(self) -> u64 {
        self.head().wrapping_sub(self.tail())
    }
}

/// Checks the ring is empty, as the host registered it.
pub fn init() {
    assert_eq!(pending(), 0, "the MMU ring starts empty");
}

/// Ops queued and not yet applied.
pub fn pending() -> u64 {
    Ring::get().pending()
}

/// Queues `op`; flushes first if the ring is full.
pub fn queue(op: MmuOp) {
    let ring = Ring::get();
    if ring.pending() >= RING_SLOTS {
        flush();
    }
    let n = ring.head();
    let slot = ring.word(slot_offset(n));
    for (i, w) in op.encode().into_iter().enumerate() {
        // SAFETY: the slot is inside the ring (slot_offset keeps it there).
        unsafe { slot.wrapping_add(i).write_volatile(w) };
    }
    // The slot must be complete before the host can see it counted.
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as in Ring::head.
    unsafe { ring.word(HEAD_OFFSET).write_volatile(n.wrapping_add(1)) };
}

/// Has the host apply everything queued (one exit), if anything is.
pub fn flush() {
    if pending() == 0 {
        return;
    }
    // SAFETY: every queued op reports an entry exactly as we wrote it.
    let applied = unsafe { hypercall::flush_mmu_ring() };
    assert!(applied.is_ok(), "the host refused the MMU ring");
}

/// Reports `op` at once (one exit).
pub fn report(op: MmuOp) {
    // SAFETY: the callers report entries exactly as they wrote them.
    let result = unsafe { hypercall::mmu_op(op) };
    assert!(result.is_ok(), "the host refused {op:?}");
}
