//! What the host will make of the fuzzer's page tables: its rules
//! (`guest_abi::pte`, as `host/src/paging` enforces them) written a second
//! time, on the guest's side, so that the fuzzer knows before each action
//! whether the host must kill it, and for what.
//!
//! Three uses: an action the model says is lethal is announced on the
//! console first, naming the kill reason the host must give (and is mostly
//! skipped, so that a seed gets deep); an access in a *clean* address space
//! (no entry changed behind the host's back since its shadow was last
//! flushed) must fault or not, and read what the model says; and a write or
//! a fetch is only made where the model says it lands in one of the
//! fuzzer's own data frames, so that the fuzzer never scribbles on its own
//! tables or code.
//!
//! The kill reasons are fragments of the host's own messages
//! (`PagingError`'s, `ZeroPoolError`'s and `KillReason`'s `Display`),
//! matched by `cargo xtask fuzz` against the `killed:` line.
//!
//! A walk that ends in a zero-on-demand entry (`guest_abi::pte`, "Pages the
//! host fills with zeros") is judged with what the zero pool holds next
//! ([`PoolNext`]): an access the entry's rights allow gets the next lent
//! page, or a kill for a pool that makes no sense, or with the pool empty
//! the not-present fault.

use core::fmt;
use guest_abi::pte::{
    ACCESSED, ADDRESS_MASK, HUGE_PAGE, LARGE_PAGE_PAT, MmuOp, MmuOpError, NO_EXECUTE, PRESENT,
    SWITCHER_PML4_INDEX, USER, WRITABLE, is_zero_on_demand,
};
use guest_rt::boot::kernel_virtual;
use guest_rt::paging::{PAGE_BYTES, table_index};

/// How an action may end the fuzzer, by the model.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It cannot end it.
    Safe,
    /// It may end it (the model does not know enough to say).
    May,
    /// The host must kill it, with a reason containing this text.
    Killed(&'static str),
    /// It must end with this exit code.
    Exits(u64),
}

impl Fate {
    /// Whether the action may end the fuzzer.
    pub fn is_lethal(self) -> bool {
        self != Fate::Safe
    }

    /// The first fate of two actions run one after the other: the first
    /// one's, unless that one is safe.
    pub fn then(self, next: Fate) -> Fate {
        match self {
            Fate::Safe => next,
            Fate::May if next != Fate::Safe => Fate::May,
            other => other,
        }
    }
}

/// The host's kill reasons, as fragments of its messages.
pub mod reason {
    /// `PagingError::ReservedBits`.
    pub const RESERVED: &str = "reserved bits";
    /// `PagingError::OutsideGuestMemory`.
    pub const OUTSIDE: &str = "outside guest memory";
    /// `PagingError::HugePageAtTopLevel`.
    pub const TOP_HUGE: &str = "sets the large-page bit";
    /// `PagingError::MisalignedLargePage`.
    pub const MISALIGNED: &str = "misaligned large page";
    /// `PagingError::SwitcherSlot`.
    pub const SWITCHER_SLOT: &str = "would map the switcher's slot";
    /// `PagingError::SwitcherSlotBelowTop`.
    pub const SWITCHER_BELOW: &str = "lies in the switcher's slot";
    /// `PagingError::BadRoot`.
    pub const BAD_ROOT: &str = "is not a page inside guest memory";
    /// `PagingError::SharedPageAsRoot`.
    pub const SHARED_ROOT: &str = "is the shared page";
    /// `PagingError::TableAsRoot`.
    pub const TABLE_ROOT: &str = "own level-3 table";
    /// `PagingError::NonCanonical`.
    pub const NON_CANONICAL: &str = "is not a canonical address";
    /// `MmuOpError::BadLevel`, in a ring.
    pub const BAD_LEVEL: &str = "does not exist";
    /// `MmuOpError::UnknownOp`, in a ring.
    pub const UNKNOWN_OP: &str = "unknown MMU operation word";
    /// `PagingError::RingOverrun`.
    pub const RING_OVERRUN: &str = "more than a ring ahead";
    /// `KillReason::SwitcherAccess`.
    pub const SWITCHER_WRITE: &str = "write to the switcher's pages";
    /// `KillReason::HypercallFromUser`.
    pub const USER_HYPERCALL: &str = "hypercall from user mode";
    /// `KillReason::BadHypercall` for a trap handler.
    pub const BAD_HANDLER: &str = "trap handler outside the guest kernel";
    /// `KillReason::HaltedForever`.
    pub const HALTED_FOREVER: &str = "halted with nothing to wake it";
    /// `ZeroPoolError::Counts`.
    pub const POOL_COUNTS: &str = "zero pool counts make no sense";
    /// `ZeroPoolError::Page`.
    pub const POOL_PAGE: &str = "not a page of guest memory";
}

/// What the host judges the fuzzer's entries against.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Bytes of guest memory.
    pub memory: u64,
    /// The address bits of a present entry that must be clear: from the
    /// host's physical-address width (the same CPUID the host reads) to 51.
    pub reserved: u64,
}

impl Limits {
    /// The limits for `memory` bytes on a CPU with `physical_bits`
    /// physical-address bits (clamped as the host clamps them).
    pub fn new(memory: u64, physical_bits: u32) -> Self {
        let bits = physical_bits.clamp(12, 52);
        let below_52 = (1u64 << 52) - 1;
        Self {
            memory,
            reserved: below_52 & !((1u64 << bits) - 1),
        }
    }

    pub fn inside(&self, start: u64, len: u64) -> bool {
        start.checked_add(len).is_some_and(|end| end <= self.memory)
    }
}

/// One entry, as the host decodes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not present.
    Absent,
    /// The next table, at this guest-physical address.
    Table(u64),
    /// A page: its first byte and its size.
    Page(u64, u64),
    /// Malformed: the host kills with this reason.
    Kill(&'static str),
}

/// Bytes one entry at `level` maps.
pub const fn level_bytes(level: u8) -> u64 {
    1 << (12 + 9 * (level as u32 - 1))
}

/// `value` at `level` (1..=4), as `GuestEntry::decode` judges it.
pub fn decode(value: u64, level: u8, limits: &Limits) -> Decoded {
    if value & PRESENT == 0 {
        return Decoded::Absent;
    }
    if value & limits.reserved != 0 {
        return Decoded::Kill(reason::RESERVED);
    }
    let address = value & ADDRESS_MASK;
    let huge = value & HUGE_PAGE != 0;
    let (start, len, decoded) = match level {
        4 if huge => return Decoded::Kill(reason::TOP_HUGE),
        2 | 3 if huge => {
            let size = level_bytes(level);
            let base = address & !LARGE_PAGE_PAT;
            if base & (size - 1) != 0 {
                return Decoded::Kill(reason::MISALIGNED);
            }
            (base, size, Decoded::Page(base, size))
        }
        1 => (address, PAGE_BYTES, Decoded::Page(address, PAGE_BYTES)),
        _ => (address, PAGE_BYTES, Decoded::Table(address)),
    };
    if !limits.inside(start, len) {
        return Decoded::Kill(reason::OUTSIDE);
    }
    decoded
}

/// The word at guest-physical `gpa` (inside guest memory, 8-aligned),
/// through the start-up map.
pub fn read_phys(gpa: u64) -> u64 {
    // SAFETY: callers pass addresses inside guest memory, which the
    // start-up map shows (up to 1 GiB) for the guest's whole life;
    // volatile, because the host writes page tables behind the compiler
    // (accessed and dirty bits).
    unsafe { (kernel_virtual(gpa) as *const u64).read_volatile() }
}

/// Writes the word at guest-physical `gpa` through the start-up map.
///
/// # Safety
///
/// `gpa` must be inside guest memory, 8-aligned, and a word of the
/// fuzzer's own tables or data that nothing else relies on.
pub unsafe fn write_phys(gpa: u64, value: u64) {
    // SAFETY: as the caller promises.
    unsafe { (kernel_virtual(gpa) as *mut u64).write_volatile(value) }
}

/// Where a walk of the guest's tables ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// An entry on the way is malformed: the host kills with this reason.
    Kill(&'static str),
    /// An entry on the way is not present.
    Absent,
    /// A zero-on-demand entry at level 1 (not present, no address): the
    /// host may fill it from the zero pool.
    ZeroOnDemand {
        /// Every level, the entry included, allows writes.
        write: bool,
        /// Every level allows user access.
        user: bool,
        /// No level forbids fetches.
        execute: bool,
        /// Where the entry is (guest-physical).
        leaf: u64,
        /// What it holds.
        mark: u64,
    },
    /// A page is mapped.
    Page {
        /// The 4 KiB guest page the address lands in.
        page: u64,
        /// Every level allows writes.
        write: bool,
        /// Every level allows user access.
        user: bool,
        /// No level forbids fetches.
        execute: bool,
        /// Where the leaf entry is (guest-physical).
        leaf: u64,
    },
}

/// Walks the tables under `root` for `vaddr` as `walk_guest` does: four
/// levels at most, the first absent or malformed entry ends it.
pub fn walk(root: u64, vaddr: u64, limits: &Limits) -> Walk {
    let mut table = root;
    let (mut write, mut user, mut execute) = (true, true, true);
    for level in (1..=4u8).rev() {
        let slot = table + 8 * table_index(vaddr, level) as u64;
        let value = read_phys(slot);
        let decoded = decode(value, level, limits);
        let zero_on_demand = level == 1 && is_zero_on_demand(value);
        if let Decoded::Table(_) | Decoded::Page(..) = decoded {
            write &= value & WRITABLE != 0;
            user &= value & USER != 0;
            execute &= value & NO_EXECUTE == 0;
        }
        if zero_on_demand {
            // The host judges the access by the entry's rights as if it
            // were present (`ShadowPaging::fill`).
            return Walk::ZeroOnDemand {
                write: write && value & WRITABLE != 0,
                user: user && value & USER != 0,
                execute: execute && value & NO_EXECUTE == 0,
                leaf: slot,
                mark: value,
            };
        }
        match decoded {
            Decoded::Absent => return Walk::Absent,
            Decoded::Kill(why) => return Walk::Kill(why),
            Decoded::Table(next) => table = next,
            Decoded::Page(base, size) => {
                return Walk::Page {
                    page: base + (vaddr & (size - 1) & !(PAGE_BYTES - 1)),
                    write,
                    user,
                    execute,
                    leaf: slot,
                };
            }
        }
    }
    Walk::Absent
}

/// The kind of access a touch makes, from ring 1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// What a ring-1 access to `vaddr` must do on a clean shadow, by the walk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host kills the guest.
    Kill(&'static str),
    /// A page fault with this error code is reflected to the guest.
    Fault(u64),
    /// The access goes through to this guest page; the leaf is at `leaf`.
    Done {
        /// The 4 KiB guest page.
        page: u64,
        /// Where the leaf entry is.
        leaf: u64,
    },
    /// The host takes the zero pool's next page, zeroes it, writes it
    /// into the zero-on-demand entry at `leaf` (which held `mark`), and the
    /// access goes through to it.
    Filled {
        /// The lent page.
        page: u64,
        /// Where the zero-on-demand entry is.
        leaf: u64,
        /// What it held.
        mark: u64,
    },
}

/// What the zero pool gives at the next fault on a zero-on-demand entry
/// (`host::guest::zero_pool::take`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PoolNext {
    /// Nothing is waiting: the fault is the guest's.
    Empty,
    /// This page.
    Page(u64),
    /// The host kills the guest: its counts or the page make no sense.
    Kill(&'static str),
}

impl PoolNext {
    /// What a pool whose counts are `given` and `taken`, with `next` in the
    /// slot `taken` names, gives (the host's checks, in its order).
    pub fn of(given: u64, taken: u64, next: u64, limits: &Limits) -> Self {
        let waiting = given.wrapping_sub(taken);
        if waiting == 0 {
            PoolNext::Empty
        } else if waiting > guest_abi::shared::ZERO_POOL_SLOTS {
            PoolNext::Kill(reason::POOL_COUNTS)
        } else if !next.is_multiple_of(PAGE_BYTES) || !limits.inside(next, PAGE_BYTES) {
            PoolNext::Kill(reason::POOL_PAGE)
        } else {
            PoolNext::Page(next)
        }
    }
}

impl fmt::Display for PoolNext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolNext::Empty => f.write_str("the zero pool empty"),
            PoolNext::Page(page) => write!(f, "the zero pool lending {page:#x} next"),
            PoolNext::Kill(why) => write!(f, "the zero pool's next take killing ({why})"),
        }
    }
}

/// Page-fault error code bits, as the host reflects them.
const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
const PF_FETCH: u64 = 16;

/// Whether rights (`write`, `user`, `execute` over the whole walk) allow
/// `access` from ring 1 (supervisor, CR0.WP on, SMEP modelled as the host
/// models it: `Access::allowed_by`).
fn allowed(access: Access, write: bool, user: bool, execute: bool) -> bool {
    match access {
        Access::Read => true,
        Access::Write => write,
        Access::Fetch => execute && !user,
    }
}

/// What `access` to `vaddr` does under `root` from ring 1, with `pool`
/// what the zero pool gives next.
pub fn outcome(root: u64, vaddr: u64, access: Access, limits: &Limits, pool: PoolNext) -> Outcome {
    let code = match access {
        Access::Read => 0,
        Access::Write => PF_WRITE,
        Access::Fetch => PF_FETCH,
    };
    match walk(root, vaddr, limits) {
        Walk::Kill(why) => Outcome::Kill(why),
        Walk::Absent => Outcome::Fault(code),
        Walk::ZeroOnDemand {
            write,
            user,
            execute,
            leaf,
            mark,
        } => match pool {
            // Not present, whatever the pool holds: it is not looked at.
            _ if !allowed(access, write, user, execute) => Outcome::Fault(code),
            PoolNext::Empty => Outcome::Fault(code),
            PoolNext::Kill(why) => Outcome::Kill(why),
            PoolNext::Page(page) => Outcome::Filled { page, leaf, mark },
        },
        Walk::Page {
            page,
            write,
            user,
            execute,
            leaf,
        } => {
            if allowed(access, write, user, execute) {
                Outcome::Done { page, leaf }
            } else {
                Outcome::Fault(code | PF_PRESENT)
            }
        }
    }
}

/// Whether `vaddr` is canonical (bits 63..47 all equal).
pub fn canonical(vaddr: u64) -> bool {
    ((vaddr as i64) << 16 >> 16) as u64 == vaddr
}

/// What the host's root check (`check_root`) makes of `root`.
pub fn root_fate(root: u64, limits: &Limits) -> Fate {
    if !root.is_multiple_of(PAGE_BYTES) || !limits.inside(root, PAGE_BYTES) {
        return Fate::Killed(reason::BAD_ROOT);
    }
    if root == guest_abi::boot::SHARED_PAGE_GPA {
        return Fate::Killed(reason::SHARED_ROOT);
    }
    if read_phys(root + 8 * SWITCHER_PML4_INDEX as u64) & PRESENT != 0 {
        return Fate::Killed(reason::SWITCHER_SLOT);
    }
    Fate::Safe
}

/// What reporting `value` as the entry at `level` for `vaddr` under
/// `root` does (`ShadowPaging::set_entry`).
pub fn set_entry_fate(root: u64, vaddr: u64, level: u8, value: u64, limits: &Limits) -> Fate {
    if !canonical(vaddr) {
        return Fate::Killed(reason::NON_CANONICAL);
    }
    let root_check = root_fate(root, limits);
    if root_check != Fate::Safe {
        return root_check;
    }
    if table_index(vaddr, 4) == SWITCHER_PML4_INDEX {
        if level != 4 {
            return Fate::Killed(reason::SWITCHER_BELOW);
        }
        if value & PRESENT != 0 {
            return Fate::Killed(reason::SWITCHER_SLOT);
        }
        return Fate::Safe;
    }
    match decode(value, level, limits) {
        Decoded::Kill(why) => Fate::Killed(why),
        // The eager fill walks the tables afresh when the new leaf is
        // already accessed, and a malformed entry on that walk kills too;
        // but only where the host fills eagerly (`eager_fill=on`, the
        // default) and still caches the root (always the running one), so
        // the model, which knows neither setting, says it may.
        Decoded::Page(..) if value & ACCESSED != 0 => match walk(root, vaddr, limits) {
            Walk::Kill(_) => Fate::May,
            _ => Fate::Safe,
        },
        _ => Fate::Safe,
    }
}

/// What applying the four words of an MMU op does: `in_ring` for an op
/// taken from the ring (a word that is no op kills), else from the
/// `MmuOp` hypercall (where it is only an error).
pub fn op_fate(words: [u64; 4], in_ring: bool, limits: &Limits) -> Fate {
    let op = match MmuOp::decode(words) {
        Ok(op) => op,
        Err(_) if !in_ring => return Fate::Safe,
        Err(MmuOpError::BadLevel(_)) => return Fate::Killed(reason::BAD_LEVEL),
        Err(MmuOpError::UnknownOp(_)) => return Fate::Killed(reason::UNKNOWN_OP),
    };
    match op {
        MmuOp::SetEntry {
            root,
            vaddr,
            level,
            value,
        } => set_entry_fate(root, vaddr, level, value, limits),
        MmuOp::InvalidatePage { vaddr } if !canonical(vaddr) => Fate::Killed(reason::NON_CANONICAL),
        _ => Fate::Safe,
    }
}
