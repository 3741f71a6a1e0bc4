//! Page-table entries, as the guest writes them and the host reads them.
//!
//! An rguest guest keeps ordinary x86-64 four-level page tables in its own
//! memory, holding *guest-physical* addresses. The CPU never uses them: the
//! host reads them and builds the real ("shadow") tables from them. This
//! module is the contract for that: which bits mean what, which the host
//! honours, which it ignores, which make it kill the guest, and how the guest
//! tells the host that an entry changed (directly, or through the [`ring`]).
//!
//! # The bits
//!
//! The hardware meanings of [`PRESENT`], [`WRITABLE`], [`USER`],
//! [`ACCESSED`], [`DIRTY`], [`HUGE_PAGE`] and [`NO_EXECUTE`] hold, with the
//! guest kernel treated as supervisor (it runs in ring 1) and CR0.WP on: a
//! supervisor write to a read-only page faults.
//!
//! - [`ACCESSED`] and [`DIRTY`] are emulated: the host sets them in the
//!   guest's entries when the guest's code first reads or writes through
//!   them, exactly when the CPU would. A guest that sets them itself (Linux
//!   does, for new kernel mappings) saves itself those faults: the host then
//!   maps the page at once when told of the change.
//! - [`GLOBAL`], [`WRITE_THROUGH`], [`CACHE_DISABLE`] and the PAT bits are
//!   accepted and ignored: guest memory is always mapped write-back, and no
//!   guest mapping is global (it would outlive the switch back to the host).
//! - [`SOFTWARE_BITS`] (bits 9..=11 and 52..=62) are the guest's own: the host
//!   never reads them. In a not-present entry every bit but [`PRESENT`] is
//!   the guest's (Linux keeps swap entries there).
//! - Bits from the host's physical-address width up to bit 51 are reserved
//!   and must be zero in a present entry; so must [`HUGE_PAGE`] in a
//!   top-level entry and the address bits below a large page's alignment.
//!   A present entry whose frame (or, for a large page, any part of it) lies
//!   outside the guest's memory is malformed too. The host kills a guest that
//!   shows it a malformed entry, with the reason.
//!
//! # The address space
//!
//! The top-level slot [`SWITCHER_PML4_INDEX`] (the top 512 GiB) belongs to
//! the host's switcher: a guest may never make that entry present. Accesses
//! there fault into the guest as if nothing were mapped.
//!
//! The kernel half (top-level slots [`KERNEL_HALF_FIRST_PML4_INDEX`] up to
//! the switcher slot) must be the same in every address space of the guest,
//! as Linux keeps it: the host shares one shadow of it between all roots.
//!
//! # Telling the host
//!
//! The host's shadow is like a TLB that never forgets by itself: after
//! changing a present entry the guest must tell the host, with the address
//! space (its root's guest-physical address), one virtual address the entry
//! translates, the entry's level and its new value ([`MmuOp::SetEntry`]).
//! A table page shared by several places in the user half must be reported
//! once per place (or the guest flushes). Making a not-present entry present
//! needs no report if the old one was never reported either, but reporting
//! it lets the host map it at once when [`ACCESSED`] is already set.
//!
//! # Pages the host fills with zeros
//!
//! The commonest fault of all is the first touch of a page of heap or stack,
//! and handled by the guest it costs two exits: the host reflects the fault,
//! and the guest reports the page it mapped. A guest can leave that fault to
//! the host instead, in one exit and without its own handler running:
//!
//! - It writes a *zero-on-demand* entry where the page will be: a
//!   not-present level-1 entry with [`ZERO_ON_DEMAND`] set and the address
//!   bits zero ([`zero_on_demand`] makes one, [`is_zero_on_demand`] tells
//!   one). Its [`WRITABLE`], [`USER`], [`NO_EXECUTE`] and other software bits
//!   are the ones the page will have.
//! - It lends the host free pages in the zero pool of its shared page
//!   ([`crate::shared::ZeroPool`]).
//!
//! At a fault on such an entry that its rights allow, the host takes the
//! next page from the pool of the vCPU that faulted, fills it with zeros,
//! writes the entry ([`zero_on_demand_filled`]: the page, present, accessed,
//! dirty for a write) with an atomic compare-and-exchange, and maps it. The
//! page is the guest's from then on, found in its own entry like any other.
//! With the pool empty, or an access the entry's rights forbid, the fault
//! is reflected to the guest as for any not-present entry, which is also
//! when the guest refills the pool. A page taken from the pool is never
//! given back, so a guest that wants its pages back clears the pool's
//! counts while no fault can use them (only its own vCPU's faults do).

/// The entry maps something.
pub const PRESENT: u64 = 1 << 0;
/// Writes are allowed (at every level of the walk).
pub const WRITABLE: u64 = 1 << 1;
/// User (ring 3) accesses are allowed (at every level of the walk).
pub const USER: u64 = 1 << 2;
/// Page-level write-through: ignored by the host.
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Page-level cache disable: ignored by the host.
pub const CACHE_DISABLE: u64 = 1 << 4;
/// Set by the host when the entry was used for a translation.
pub const ACCESSED: u64 = 1 << 5;
/// Set by the host in a leaf entry when its page was written.
pub const DIRTY: u64 = 1 << 6;
/// In a level-2 or level-3 entry: this entry maps a 2 MiB or 1 GiB page.
/// In a level-1 entry this bit is PAT, which the host ignores.
pub const HUGE_PAGE: u64 = 1 << 7;
/// Global mapping: ignored by the host.
pub const GLOBAL: u64 = 1 << 8;
/// The PAT bit of a large-page entry: ignored by the host.
pub const LARGE_PAGE_PAT: u64 = 1 << 12;
/// Instruction fetches are not allowed (at any level of the walk).
pub const NO_EXECUTE: u64 = 1 << 63;

/// Bits the guest may use for itself in a present entry; the host never
/// looks at them.
pub const SOFTWARE_BITS: u64 = (0b111 << 9) | (0x7ff << 52);

/// Where the frame address sits in an entry: bits 12..=51.
pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// In a not-present level-1 entry with no address bits: the host may map a
/// zeroed page from the zero pool here (see "Pages the host fills with
/// zeros" above). Bit 11, a software bit: in any other entry it is the
/// guest's own.
pub const ZERO_ON_DEMAND: u64 = 1 << 11;

/// The bits of a zero-on-demand entry the filled entry keeps.
const ZERO_ON_DEMAND_KEEPS: u64 = WRITABLE | USER | NO_EXECUTE | (SOFTWARE_BITS & !ZERO_ON_DEMAND);

/// A zero-on-demand entry for a page with the rights and software bits of
/// `flags` (its other bits are dropped).
pub const fn zero_on_demand(flags: u64) -> u64 {
    (flags & ZERO_ON_DEMAND_KEEPS) | ZERO_ON_DEMAND
}

/// Whether `entry` is a zero-on-demand entry (meaningful at level 1).
pub const fn is_zero_on_demand(entry: u64) -> bool {
    entry & (PRESENT | ADDRESS_MASK | ZERO_ON_DEMAND) == ZERO_ON_DEMAND
}

/// The entry the host writes over the zero-on-demand `entry` when it maps
/// the zeroed guest page `page` there for a read or (`write`) a write.
pub const fn zero_on_demand_filled(entry: u64, page: u64, write: bool) -> u64 {
    let dirty = if write { DIRTY } else { 0 };
    (entry & ZERO_ON_DEMAND_KEEPS) | (page & ADDRESS_MASK) | PRESENT | ACCESSED | dirty
}

/// The top bit of the architectural address field: physical addresses have
/// at most 52 bits.
pub const MAX_PHYSICAL_ADDRESS_BITS: u32 = 52;

/// Levels of a page table: 4 is the top (PML4), 1 maps 4 KiB pages.
pub const LEVELS: u8 = 4;

/// Entries in one table page.
pub const ENTRIES_PER_TABLE: usize = 512;

/// The top-level slot that belongs to the host's switcher.
pub const SWITCHER_PML4_INDEX: usize = 511;

/// The first top-level slot of the kernel half.
pub const KERNEL_HALF_FIRST_PML4_INDEX: usize = 256;

/// The bytes one entry at `level` maps: 4 KiB, 2 MiB, 1 GiB or 512 GiB.
/// `None` for a level that does not exist.
pub const fn bytes_mapped_at_level(level: u8) -> Option<u64> {
    match level {
        1..=4 => Some(1 << (12 + 9 * (level as u32 - 1))),
        _ => None,
    }
}

/// What the guest asks of the host's memory management, one at a time by
/// hypercall or many at once through the [`ring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuOp {
    /// Nothing: a slot the guest chose to leave empty.
    Nop,
    /// The entry at `level` that translates `vaddr` in the address space
    /// whose top-level table is at guest-physical `root` now holds `value`.
    SetEntry {
        /// Guest-physical address of the address space's top-level table.
        root: u64,
        /// A virtual address this entry translates.
        vaddr: u64,
        /// 1 (4 KiB pages) to 4 (top level).
        level: u8,
        /// The entry's new value, as the guest wrote it in its table.
        value: u64,
    },
    /// Forget the translation of one virtual address (like `invlpg`).
    InvalidatePage {
        /// The address.
        vaddr: u64,
    },
    /// Forget the user half of the current address space.
    FlushUser,
    /// Forget every translation of every address space.
    FlushAll,
}

/// Why four words are not an [`MmuOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuOpError {
    /// The first word names no operation (or has unknown bits set).
    UnknownOp(u64),
    /// A [`MmuOp::SetEntry`] names a level other than 1..=4.
    BadLevel(u64),
}

impl core::fmt::Display for MmuOpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownOp(w) => write!(f, "unknown MMU operation word {w:#x}"),
            Self::BadLevel(l) => write!(f, "page-table level {l} does not exist"),
        }
    }
}

/// The operation codes, in the low byte of an op's first word.
mod op_code {
    pub const NOP: u64 = 0;
    pub const SET_ENTRY: u64 = 1;
    pub const INVALIDATE_PAGE: u64 = 2;
    pub const FLUSH_USER: u64 = 3;
    pub const FLUSH_ALL: u64 = 4;
}

impl MmuOp {
    /// The op as the four words of a ring slot: `[code | level << 8, a, b, c]`.
    pub const fn encode(&self) -> [u64; 4] {
        match *self {
            Self::Nop => [op_code::NOP, 0, 0, 0],
            Self::SetEntry {
                root,
                vaddr,
                level,
                value,
            } => [op_code::SET_ENTRY | (level as u64) << 8, root, vaddr, value],
            Self::InvalidatePage { vaddr } => [op_code::INVALIDATE_PAGE, vaddr, 0, 0],
            Self::FlushUser => [op_code::FLUSH_USER, 0, 0, 0],
            Self::FlushAll => [op_code::FLUSH_ALL, 0, 0, 0],
        }
    }

    /// Reads an op back from four words. Only the bits [`Self::encode`]
    /// writes may be set in the first word; the other words' unused parts
    /// are ignored.
    pub const fn decode(words: [u64; 4]) -> Result<Self, MmuOpError> {
        let [first, a, b, c] = words;
        let code = first & 0xff;
        let level = (first >> 8) & 0xff;
        if first >> 16 != 0 || (code != op_code::SET_ENTRY && level != 0) {
            return Err(MmuOpError::UnknownOp(first));
        }
        match code {
            op_code::NOP => Ok(Self::Nop),
            op_code::SET_ENTRY => {
                if level < 1 || level > LEVELS as u64 {
                    return Err(MmuOpError::BadLevel(level));
                }
                Ok(Self::SetEntry {
                    root: a,
                    vaddr: b,
                    level: level as u8,
                    value: c,
                })
            }
            op_code::INVALIDATE_PAGE => Ok(Self::InvalidatePage { vaddr: a }),
            op_code::FLUSH_USER => Ok(Self::FlushUser),
            op_code::FLUSH_ALL => Ok(Self::FlushAll),
            _ => Err(MmuOpError::UnknownOp(first)),
        }
    }
}

/// The asynchronous MMU ring: page-table updates queued in guest memory and
/// applied by the host in order when the guest asks, with the
/// [`crate::hypercall::Number::FlushMmuRing`] hypercall (one exit for the
/// whole batch). Ops still queued at other exits are left alone.
///
/// The ring is in the shared page, [`crate::shared::SharedPage::mmu_ring`]:
/// guest-physical [`crate::boot::SHARED_PAGE_GPA`] plus
/// [`crate::shared::offset::MMU_RING`] (1024). The host registers it there
/// itself when it creates the guest (starting from the `head` it finds
/// there, zero in fresh memory); the guest has nothing to set up. It takes [`RING_BYTES`]:
///
/// | offset | size | written by | meaning |
/// | --- | --- | --- | --- |
/// | [`HEAD_OFFSET`] | u64 | guest | ops ever queued (free-running) |
/// | [`TAIL_OFFSET`] | u64 | host | ops ever applied (free-running) |
/// | [`SLOTS_OFFSET`] | [`RING_SLOTS`] x 32 | guest | op number `n` in slot `n % RING_SLOTS`, as [`MmuOp::encode`] |
///
/// The guest may queue while `head - tail < RING_SLOTS` (wrapping
/// arithmetic). The host keeps its own count of what it applied and only
/// reports it in `tail`: it never believes the `tail` in memory, and a
/// `head` more than [`RING_SLOTS`] ahead of it is an error that kills the
/// guest.
pub mod ring {
    use super::MmuOp;

    /// Slots in the ring.
    pub const RING_SLOTS: u64 = 64;
    /// Bytes of one slot: four words.
    pub const SLOT_BYTES: u64 = 32;
    /// Where `head` is.
    pub const HEAD_OFFSET: u64 = 0;
    /// Where `tail` is.
    pub const TAIL_OFFSET: u64 = 8;
    /// Where the slots start.
    pub const SLOTS_OFFSET: u64 = 16;
    /// The whole ring's size in bytes.
    pub const RING_BYTES: u64 = SLOTS_OFFSET + RING_SLOTS * SLOT_BYTES;

    /// The byte offset, from the ring's start, of the slot holding op
    /// number `n`.
    pub const fn slot_offset(n: u64) -> u64 {
        SLOTS_OFFSET + (n % RING_SLOTS) * SLOT_BYTES
    }

    // The slots are 4 words each, as MmuOp::encode makes them.
    const _: () = assert!(SLOT_BYTES == 8 * MmuOp::Nop.encode().len() as u64);
    const _: () = assert!(RING_BYTES <= 4096);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_survive_encoding() {
        let ops = [
            MmuOp::Nop,
            MmuOp::SetEntry {
                root: 0x1000,
                vaddr: 0xffff_8000_0000_0000,
                level: 3,
                value: 0x2003,
            },
            MmuOp::InvalidatePage { vaddr: 0x4000 },
            MmuOp::FlushUser,
            MmuOp::FlushAll,
        ];
        for op in ops {
            assert_eq!(MmuOp::decode(op.encode()), Ok(op));
        }
    }

    #[test]
    fn bad_words_are_refused_with_the_value() {
        assert_eq!(MmuOp::decode([9, 0, 0, 0]), Err(MmuOpError::UnknownOp(9)));
        assert_eq!(
            MmuOp::decode([1 | 5 << 8, 0, 0, 0]),
            Err(MmuOpError::BadLevel(5))
        );
        assert_eq!(MmuOp::decode([1, 0, 0, 0]), Err(MmuOpError::BadLevel(0)));
        assert_eq!(
            MmuOp::decode([3 | 1 << 8, 0, 0, 0]),
            Err(MmuOpError::UnknownOp(0x103))
        );
        assert_eq!(
            MmuOp::decode([1 << 20, 0, 0, 0]),
            Err(MmuOpError::UnknownOp(1 << 20))
        );
    }

    #[test]
    fn level_sizes_and_bit_groups() {
        assert_eq!(bytes_mapped_at_level(1), Some(4096));
        assert_eq!(bytes_mapped_at_level(2), Some(2 << 20));
        assert_eq!(bytes_mapped_at_level(3), Some(1 << 30));
        assert_eq!(bytes_mapped_at_level(4), Some(512 << 30));
        assert_eq!(bytes_mapped_at_level(0), None);
        assert_eq!(SOFTWARE_BITS & ADDRESS_MASK, 0);
        assert_eq!(SOFTWARE_BITS & (PRESENT | WRITABLE | NO_EXECUTE), 0);
        assert_eq!(ring::slot_offset(ring::RING_SLOTS + 1), 16 + 32);
    }

    #[test]
    fn zero_on_demand_entries_keep_rights_and_software_bits_only() {
        let flags = WRITABLE | USER | NO_EXECUTE | (1 << 9) | (1 << 60) | GLOBAL | 0x5000;
        let entry = zero_on_demand(flags);
        assert!(is_zero_on_demand(entry));
        assert_eq!(entry & PRESENT, 0);
        assert_eq!(entry & (GLOBAL | ADDRESS_MASK), 0);
        // Not one: present, an address, or no mark.
        assert!(!is_zero_on_demand(entry | PRESENT));
        assert!(!is_zero_on_demand(entry | 0x1000));
        assert!(!is_zero_on_demand(0));
        let filled = zero_on_demand_filled(entry, 0x7000, false);
        assert_eq!(
            filled,
            0x7000 | PRESENT | ACCESSED | WRITABLE | USER | NO_EXECUTE | (1 << 9) | (1 << 60)
        );
        assert_eq!(zero_on_demand_filled(entry, 0x7000, true), filled | DIRTY);
        assert_eq!(filled & ZERO_ON_DEMAND, 0);
    }
}
