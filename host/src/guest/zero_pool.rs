//! The zero pool: free pages a guest lends the host, so that the first
//! touch of a page of its heap or stack costs one exit instead of two.
//!
//! A guest that writes zero-on-demand entries (`guest_abi::pte`, "Pages the
//! host fills with zeros") lends pages in the pool of each vCPU's shared
//! page ([`guest_abi::shared::ZeroPool`]). When the shadow tables find a
//! fault on such an entry ([`FaultDecision::ZeroOnDemand`]), the exit
//! handler takes the faulting vCPU's next page from here and the shadow
//! tables map it ([`crate::paging::ShadowPaging::map_zero_page`]). The
//! pool is guest memory, so its counts and pages are checked at every
//! take, never trusted.
//!
//! [`FaultDecision::ZeroOnDemand`]: crate::paging::FaultDecision::ZeroOnDemand

use super::GuestRam;
use crate::addr::{GuestPhysAddr, PAGE_SIZE};
use core::fmt;
use guest_abi::shared::{ZERO_POOL_SLOTS, offset};

/// How a guest broke the pool's rules (it is killed for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroPoolError {
    /// `given` is more than a pool's worth ahead of `taken` (or behind it).
    Counts {
        /// Pages the guest says it lent.
        given: u64,
        /// Pages the host took.
        taken: u64,
    },
    /// A lent page that is not a page-aligned address in guest memory.
    Page {
        /// What the guest put in the slot.
        gpa: u64,
        /// The size of guest memory.
        memory_size: u64,
    },
}

impl fmt::Display for ZeroPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Counts { given, taken } => write!(
                f,
                "zero pool counts make no sense: {given} pages given, {taken} taken \
                 (at most {ZERO_POOL_SLOTS} may wait)"
            ),
            Self::Page { gpa, memory_size } => write!(
                f,
                "zero pool lent page {gpa:#x}, not a page of guest memory (size {memory_size:#x})"
            ),
        }
    }
}

/// Takes the active vCPU's next lent page, or `None` if its pool is empty.
pub(super) fn take<M: GuestRam>(memory: &mut M) -> Result<Option<GuestPhysAddr>, ZeroPoolError> {
    let given = memory.shared_u64(offset::ZERO_POOL_GIVEN);
    let taken = memory.shared_u64(offset::ZERO_POOL_TAKEN);
    let waiting = given.wrapping_sub(taken);
    if waiting == 0 {
        return Ok(None);
    }
    if waiting > ZERO_POOL_SLOTS {
        return Err(ZeroPoolError::Counts { given, taken });
    }
    let gpa = memory.shared_u64(offset::ZERO_POOL_PAGES + (taken % ZERO_POOL_SLOTS) * 8);
    let page = GuestPhysAddr::new(gpa);
    if !page.is_page_aligned() || memory.host_frame(page).is_none() {
        return Err(ZeroPoolError::Page {
            gpa,
            memory_size: memory.size(),
        });
    }
    memory.set_shared_u64(offset::ZERO_POOL_TAKEN, taken.wrapping_add(1));
    Ok(Some(page))
}

/// Puts back the page [`take`] just gave, unused: the next take gives it
/// again.
pub(super) fn untake<M: GuestRam>(memory: &mut M) {
    let taken = memory.shared_u64(offset::ZERO_POOL_TAKEN);
    memory.set_shared_u64(offset::ZERO_POOL_TAKEN, taken.wrapping_sub(1));
}

const _: () = assert!(offset::ZERO_POOL_PAGES + ZERO_POOL_SLOTS * 8 <= PAGE_SIZE);
