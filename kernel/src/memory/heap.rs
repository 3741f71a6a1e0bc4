//! The kernel heap: `talc` over one contiguous run of frames.
//!
//! The host allocates little on the heap (guest descriptors, root caches,
//! device state); guest memory and page tables come straight from the frame
//! allocator. So the heap is a fixed run taken at boot and reached through
//! the direct map, and `talc`'s counters tell how much of it is in use.

use super::{MemoryError, alloc_contiguous, phys_to_virt};
use talc::TalcLock;
use talc::source::Manual;

/// The heap's size: 16 MiB.
pub const HEAP_SIZE: u64 = 16 << 20;

#[global_allocator]
static HEAP: TalcLock<spin::mutex::SpinMutex<()>, Manual> = TalcLock::new(Manual);

/// Claims the heap's frames and hands them to `talc`.
pub fn init() -> Result<(), MemoryError> {
    let frames = HEAP_SIZE / host::addr::PAGE_SIZE;
    let base = alloc_contiguous(frames).ok_or(MemoryError::NoRoomForHeap(HEAP_SIZE))?;
    // SAFETY: the frames were just taken from the allocator, so nothing else
    // uses them, and the direct map reaches all of them.
    let claimed = unsafe { HEAP.lock().claim(phys_to_virt(base), HEAP_SIZE as usize) };
    claimed
        .map(|_| ())
        .ok_or(MemoryError::NoRoomForHeap(HEAP_SIZE))
}

/// Live allocations and the bytes they hold.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    let counters = heap.counters();
    (counters.allocation_count, counters.allocated_bytes)
}
