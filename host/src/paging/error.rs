//! Why the shadow page tables refused a guest (or could not serve it).
//!
//! One variant per reason, each carrying the bad value and where it was
//! found, so the line the host prints when it kills a guest is enough to
//! find the guest's bug. Apart from [`PagingError::OutOfFrames`] (the host
//! ran out of memory) and [`PagingError::FaultWithoutProgress`] (the CPU
//! refused an access for a reason the shadow does not model: a gap in the
//! host's model, reported instead of looping) every variant is the guest's
//! doing.

use super::entry::Level;
use crate::addr::{GuestPhysAddr, GuestVirtAddr, NonCanonical};
use core::fmt;
use guest_abi::pte::MmuOpError;

/// Why a paging operation failed. The host kills the guest with this
/// reason: none of these can be fixed by retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingError {
    /// A present entry has reserved address bits set.
    ReservedBits {
        /// The entry.
        value: u64,
        /// Its level.
        level: Level,
        /// The address being translated.
        vaddr: GuestVirtAddr,
        /// The offending bits.
        bits: u64,
    },
    /// A present entry points (partly) outside guest memory.
    OutsideGuestMemory {
        /// The entry.
        value: u64,
        /// Its level.
        level: Level,
        /// The address being translated.
        vaddr: GuestVirtAddr,
        /// The table or page it points at.
        gpa: GuestPhysAddr,
        /// The size of guest memory.
        memory_size: u64,
    },
    /// A top-level entry has the large-page bit set.
    HugePageAtTopLevel {
        /// The entry.
        value: u64,
        /// The address being translated.
        vaddr: GuestVirtAddr,
    },
    /// A large page's address is not aligned to its size.
    MisalignedLargePage {
        /// The entry.
        value: u64,
        /// Its level.
        level: Level,
        /// The address being translated.
        vaddr: GuestVirtAddr,
    },
    /// The guest tried to make its top-level switcher slot present.
    SwitcherSlot {
        /// The entry.
        value: u64,
        /// The address it would translate.
        vaddr: GuestVirtAddr,
    },
    /// The guest reported an entry below the top level for an address in
    /// the switcher's slot: no guest table can be there (its top-level
    /// entry is never present), so the report names nothing of the guest's.
    SwitcherSlotBelowTop {
        /// The entry.
        value: u64,
        /// Its level (1..=3).
        level: Level,
        /// The address it would translate.
        vaddr: GuestVirtAddr,
    },
    /// A page-table root (CR3 value) that is not page-aligned or not
    /// inside guest memory.
    BadRoot {
        /// The root.
        root: u64,
        /// The size of guest memory.
        memory_size: u64,
    },
    /// A page-table root that is the guest's shared page, which the host
    /// writes (the clock, pending interrupts) at every entry: as a root, its
    /// words would become top-level entries behind the guest's back.
    SharedPageAsRoot {
        /// The root.
        root: u64,
    },
    /// A page-table root that is a table the running address space already
    /// uses one level down, below a kernel-half top-level entry.
    TableAsRoot {
        /// The root.
        root: u64,
        /// The top-level slot (256..=510) whose entry points at it.
        slot: usize,
    },
    /// The running address space alone needs more shadow tables than the
    /// guest's bound allows, even after every other shadow table was thrown
    /// away.
    ShadowLimit {
        /// The bound, in shadow frames.
        limit: u64,
        /// The address being mapped.
        vaddr: GuestVirtAddr,
    },
    /// A page fault at an address the shadow already maps with every right
    /// the access needs: the CPU refused it for a reason the shadow does not
    /// model, and "fixing" it again would loop forever.
    FaultWithoutProgress {
        /// The address.
        vaddr: GuestVirtAddr,
        /// The hardware error code.
        error_code: u64,
    },
    /// A virtual address that is not canonical.
    NonCanonical(NonCanonical),
    /// A page-table level other than 1..=4.
    BadLevel(u64),
    /// The guest kernel stack cannot be mapped writable: a trap could not
    /// be delivered.
    StackNotMapped {
        /// The stack page.
        vaddr: GuestVirtAddr,
        /// The page-fault error code the guest's tables give a write there.
        error_code: u64,
    },
    /// The kernel stack the guest asked for is empty, too large or not
    /// inside one half of the address space.
    BadStack {
        /// Its top.
        top: u64,
        /// Its size in pages.
        pages: u64,
    },
    /// The MMU ring does not lie inside guest memory, 8-byte aligned.
    BadRing {
        /// The ring's guest-physical address.
        ring: u64,
    },
    /// The guest's ring head is further ahead than the ring has slots.
    RingOverrun {
        /// The head the guest wrote.
        head: u64,
        /// What the host has applied so far.
        applied: u64,
    },
    /// A ring slot (or a hypercall) holds no valid operation.
    BadOp {
        /// The op number in the ring (0 for a hypercall).
        slot: u64,
        /// What was wrong with it.
        error: MmuOpError,
    },
    /// The host has no frame left for a shadow table.
    OutOfFrames {
        /// The address being mapped.
        vaddr: GuestVirtAddr,
    },
    /// Guest memory refused an access the checks had allowed (a bug in the
    /// guest-memory implementation, reported rather than panicking).
    GuestMemory {
        /// The address.
        gpa: GuestPhysAddr,
    },
    /// The configuration asks for a root cache size outside
    /// [`super::MIN_CACHED_ROOTS`]..=[`super::MAX_CACHED_ROOTS`].
    BadConfig {
        /// The requested number of cached roots.
        cached_roots: usize,
    },
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ReservedBits {
                value,
                level,
                vaddr,
                bits,
            } => write!(
                f,
                "guest entry {value:#x} at level {} for {vaddr} has reserved bits {bits:#x} set",
                level.number()
            ),
            Self::OutsideGuestMemory {
                value,
                level,
                vaddr,
                gpa,
                memory_size,
            } => write!(
                f,
                "guest entry {value:#x} at level {} for {vaddr} maps {gpa} outside guest memory (size {memory_size:#x})",
                level.number()
            ),
            Self::HugePageAtTopLevel { value, vaddr } => write!(
                f,
                "guest entry {value:#x} at level 4 for {vaddr} sets the large-page bit"
            ),
            Self::MisalignedLargePage {
                value,
                level,
                vaddr,
            } => write!(
                f,
                "guest entry {value:#x} at level {} for {vaddr} maps a misaligned large page",
                level.number()
            ),
            Self::SwitcherSlot { value, vaddr } => write!(
                f,
                "guest entry {value:#x} for {vaddr} would map the switcher's slot"
            ),
            Self::SwitcherSlotBelowTop {
                value,
                level,
                vaddr,
            } => write!(
                f,
                "guest entry {value:#x} at level {} for {vaddr} lies in the switcher's slot",
                level.number()
            ),
            Self::SharedPageAsRoot { root } => write!(
                f,
                "page-table root {root:#x} is the shared page, which the host writes"
            ),
            Self::TableAsRoot { root, slot } => write!(
                f,
                "page-table root {root:#x} is the guest's own level-3 table under top-level slot {slot}"
            ),
            Self::ShadowLimit { limit, vaddr } => write!(
                f,
                "the running address space alone needs more than its bound of {limit} shadow frames (mapping {vaddr})"
            ),
            Self::FaultWithoutProgress { vaddr, error_code } => write!(
                f,
                "page fault at {vaddr} (code {error_code:#x}) recurs although the shadow already allows the access"
            ),
            Self::BadRoot { root, memory_size } => write!(
                f,
                "page-table root {root:#x} is not a page inside guest memory (size {memory_size:#x})"
            ),
            Self::NonCanonical(e) => write!(f, "{e}"),
            Self::BadLevel(level) => write!(f, "page-table level {level} does not exist"),
            Self::StackNotMapped { vaddr, error_code } => write!(
                f,
                "guest kernel stack page {vaddr} cannot be mapped writable (fault code {error_code:#x})"
            ),
            Self::BadStack { top, pages } => {
                write!(
                    f,
                    "guest kernel stack of {pages} pages below {top:#x} is not usable"
                )
            }
            Self::BadRing { ring } => {
                write!(
                    f,
                    "MMU ring at gpa:{ring:#x} is not aligned inside guest memory"
                )
            }
            Self::RingOverrun { head, applied } => write!(
                f,
                "MMU ring head {head} is more than a ring ahead of the {applied} ops applied"
            ),
            Self::BadOp { slot, error } => write!(f, "MMU op {slot}: {error}"),
            Self::OutOfFrames { vaddr } => {
                write!(f, "out of host frames for a shadow table mapping {vaddr}")
            }
            Self::GuestMemory { gpa } => write!(f, "guest memory refused access to {gpa}"),
            Self::BadConfig { cached_roots } => {
                write!(
                    f,
                    "{cached_roots} cached shadow roots is not a supported cache size"
                )
            }
        }
    }
}

impl From<NonCanonical> for PagingError {
    fn from(e: NonCanonical) -> Self {
        Self::NonCanonical(e)
    }
}
