//! Pages lent to the host, so that the first touch of a heap or stack page
//! costs one exit (`guest_abi::pte`, "Pages the host fills with zeros").
//!
//! [`crate::vm`] writes zero-on-demand entries over the heap and stack; a
//! touch of one is a fault the host handles alone, with the next page of
//! the pool in our shared page, zeroed. When the pool is empty the fault
//! reaches our own handler as before, which maps a page itself and fills
//! the pool again ([`refill`]). A lent page is allocated (one reference):
//! once the host has put it in an entry it is a mapped page like any other,
//! released when unmapped.
//!
//! `given` is ours, `taken` the host's; the host writes it only while we
//! are stopped in an exit, so plain volatile accesses suffice.

use crate::frames;
use core::sync::atomic::{Ordering, compiler_fence};
use guest_abi::shared::{ZERO_POOL_SLOTS, offset};
use guest_rt::boot;

fn word(offset: u64) -> *mut u64 {
    (boot::shared_page() as *mut u8)
        .wrapping_add(offset as usize)
        .cast()
}

fn read(offset: u64) -> u64 {
    // SAFETY: a word of the shared page, mapped for the guest's life.
    unsafe { word(offset).read_volatile() }
}

fn write(offset: u64, value: u64) {
    // SAFETY: as in `read`.
    unsafe { word(offset).write_volatile(value) }
}

/// Pages lent and not yet taken: still ours, counted as free.
pub fn waiting() -> u64 {
    read(offset::ZERO_POOL_GIVEN).wrapping_sub(read(offset::ZERO_POOL_TAKEN))
}

/// Free pages: on the free list, or lent and not yet taken.
pub fn free_pages() -> u64 {
    frames::free_count() + waiting()
}

/// Lends pages until the pool is full, or memory runs short.
pub fn refill() {
    let mut given = read(offset::ZERO_POOL_GIVEN);
    let taken = read(offset::ZERO_POOL_TAKEN);
    while given.wrapping_sub(taken) < ZERO_POOL_SLOTS {
        let Some(page) = frames::alloc_dirty() else {
            break;
        };
        write(
            offset::ZERO_POOL_PAGES + (given % ZERO_POOL_SLOTS) * 8,
            page,
        );
        given = given.wrapping_add(1);
    }
    // Every page must be in its slot before the host sees it counted.
    compiler_fence(Ordering::SeqCst);
    write(offset::ZERO_POOL_GIVEN, given);
}
