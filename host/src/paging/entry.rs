//! Page-table entries as typed values: the geometry of a table ([`Level`],
//! [`TableIndex`]), the flag bits ([`PteFlags`]), the guest's entries
//! ([`GuestEntry`], which must be checked before they mean anything) and the
//! shadow's ([`ShadowEntry`], which the host makes and so trusts).
//!
//! Nothing here acts on an entry in its raw form: a guest entry is decoded
//! into a [`GuestEntryKind`] (absent, next table, mapped page) by
//! [`GuestEntry::decode`], which is also where every rule of
//! [`guest_abi::pte`] about reserved bits, large pages and frames outside
//! guest memory is enforced. The rest of the paging code only ever sees
//! entries that passed.

use super::error::PagingError;
use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use bitflags::bitflags;
use guest_abi::pte;

/// A level of the four-level x86-64 page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Level 1, the page table proper: each entry maps 4 KiB.
    L1 = 1,
    /// Level 2, the page directory: each entry maps 2 MiB.
    L2 = 2,
    /// Level 3, the page-directory-pointer table: each entry maps 1 GiB.
    L3 = 3,
    /// Level 4, the top (PML4): each entry maps 512 GiB.
    L4 = 4,
}

impl Level {
    /// The levels from the top down, the order of every walk.
    pub const TOP_DOWN: [Level; 4] = [Level::L4, Level::L3, Level::L2, Level::L1];

    /// The level numbered `n` (1..=4), or `None`.
    pub const fn from_number(n: u64) -> Option<Self> {
        match n {
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            3 => Some(Self::L3),
            4 => Some(Self::L4),
            _ => None,
        }
    }

    /// The level's number, 1..=4.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The level below this one, `None` for [`Level::L1`].
    pub const fn below(self) -> Option<Self> {
        match self {
            Self::L4 => Some(Self::L3),
            Self::L3 => Some(Self::L2),
            Self::L2 => Some(Self::L1),
            Self::L1 => None,
        }
    }

    /// The bytes one entry at this level maps.
    pub const fn bytes_mapped(self) -> u64 {
        1 << (12 + 9 * (self as u32 - 1))
    }

    /// Whether an entry at this level may map a page directly: level 1
    /// always does; levels 2 and 3 may with [`PteFlags::HUGE_PAGE`].
    pub const fn may_map_page(self) -> bool {
        !matches!(self, Self::L4)
    }
}

/// An index into a table of 512 entries: below 512 by construction, so no
/// table access can go out of bounds whatever a guest supplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableIndex(u16);

impl TableIndex {
    /// The index `i`, or `None` if `i` is not below 512.
    pub const fn new(i: usize) -> Option<Self> {
        if i < pte::ENTRIES_PER_TABLE {
            Some(Self(i as u16))
        } else {
            None
        }
    }

    /// The index that translates `vaddr` in a table at `level`.
    pub const fn of(vaddr: GuestVirtAddr, level: Level) -> Self {
        // `table_index` masks to 9 bits, so this is always below 512.
        Self(vaddr.table_index(level as u8) as u16)
    }

    /// The index as a number.
    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }

    /// Every index of a table, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..pte::ENTRIES_PER_TABLE as u16).map(Self)
    }

    /// The indices in `[start, end)`, clipped to the table.
    pub fn range(start: usize, end: usize) -> impl Iterator<Item = Self> {
        let end = end.min(pte::ENTRIES_PER_TABLE);
        (start.min(end)..end).map(|i| Self(i as u16))
    }
}

bitflags! {
    /// The flag bits of an x86-64 page-table entry (see [`guest_abi::pte`]
    /// for what each means to an rguest guest).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// The entry maps something.
        const PRESENT = pte::PRESENT;
        /// Writes allowed.
        const WRITABLE = pte::WRITABLE;
        /// Ring-3 accesses allowed.
        const USER = pte::USER;
        /// Write-through caching (PWT).
        const WRITE_THROUGH = pte::WRITE_THROUGH;
        /// Caching disabled (PCD).
        const CACHE_DISABLE = pte::CACHE_DISABLE;
        /// Used for a translation.
        const ACCESSED = pte::ACCESSED;
        /// Written through (leaf entries).
        const DIRTY = pte::DIRTY;
        /// Maps a large page (PS) at levels 2 and 3; PAT at level 1.
        const HUGE_PAGE = pte::HUGE_PAGE;
        /// Survives CR3 writes.
        const GLOBAL = pte::GLOBAL;
        /// Instruction fetches forbidden.
        const NO_EXECUTE = pte::NO_EXECUTE;
    }
}

/// What a walk may do through the entries seen so far. The CPU grants an
/// access only if every level grants it, so rights only ever shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// Every level is writable.
    pub write: bool,
    /// Every level allows user access.
    pub user: bool,
    /// No level forbids instruction fetches.
    pub execute: bool,
}

impl Rights {
    /// The rights before any entry was seen.
    pub const ALL: Self = Self {
        write: true,
        user: true,
        execute: true,
    };

    /// These rights, narrowed by one more entry's flags.
    pub const fn narrowed_by(self, flags: PteFlags) -> Self {
        Self {
            write: self.write && flags.contains(PteFlags::WRITABLE),
            user: self.user && flags.contains(PteFlags::USER),
            execute: self.execute && !flags.contains(PteFlags::NO_EXECUTE),
        }
    }
}

/// The limits a guest's entries are judged against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLimits {
    /// Guest memory is `[0, memory_size)`.
    pub memory_size: u64,
    /// Bits `reserved_mask` of a present entry must be clear: from the
    /// host's physical-address width up to bit 51.
    pub reserved_mask: u64,
}

impl GuestLimits {
    /// Limits for a guest of `memory_size` bytes on a host whose physical
    /// addresses have `physical_address_bits` bits (clamped to 12..=52).
    pub const fn new(memory_size: u64, physical_address_bits: u8) -> Self {
        let bits = match physical_address_bits {
            b if b < 12 => 12,
            b if b > 52 => 52,
            b => b,
        } as u32;
        let below_52 = (1u64 << pte::MAX_PHYSICAL_ADDRESS_BITS) - 1;
        let below_width = (1u64 << bits) - 1;
        Self {
            memory_size,
            reserved_mask: below_52 & !below_width,
        }
    }

    /// Whether `[start, start + len)` lies inside guest memory.
    pub const fn contains(&self, start: GuestPhysAddr, len: u64) -> bool {
        match start.as_u64().checked_add(len) {
            Some(end) => end <= self.memory_size,
            None => false,
        }
    }
}

/// A page-table entry as the guest wrote it: not to be believed until
/// [`GuestEntry::decode`] says what it is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct GuestEntry(u64);

/// What a checked guest entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEntryKind {
    /// Not present: the rest of the entry is the guest's business.
    Absent,
    /// Points at the next level's table, inside guest memory.
    Table(GuestPhysAddr),
    /// Maps a page of `level.bytes_mapped()` bytes at `base`, all of it
    /// inside guest memory and aligned to its size.
    Page {
        /// The first byte of the page.
        base: GuestPhysAddr,
        /// The level of the entry, which gives the page's size.
        level: Level,
    },
}

/// Why an entry has no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The entry is not present.
    NotPresent,
    /// The entry maps a large page: its address field is not a 4 KiB
    /// frame's (bit 12 is PAT there).
    LargePage,
}

impl GuestEntry {
    /// Wraps a raw entry.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The flag bits (others dropped).
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// Whether the present bit is set.
    pub const fn is_present(self) -> bool {
        self.0 & pte::PRESENT != 0
    }

    /// The entry with `flags` added.
    pub const fn with(self, flags: PteFlags) -> Self {
        Self(self.0 | flags.bits())
    }

    /// The 4 KiB frame a present level-1 or table entry points at (not
    /// checked against guest memory: see [`Self::decode`]).
    pub const fn frame(self, level: Level) -> Result<GuestPhysAddr, FrameError> {
        if !self.is_present() {
            Err(FrameError::NotPresent)
        } else if !matches!(level, Level::L1) && self.0 & pte::HUGE_PAGE != 0 {
            Err(FrameError::LargePage)
        } else {
            Ok(GuestPhysAddr::new(self.0 & pte::ADDRESS_MASK))
        }
    }

    /// Checks the entry, found at `level` while translating `vaddr`,
    /// against every rule a present entry must keep, and says what it is.
    pub fn decode(
        self,
        level: Level,
        vaddr: GuestVirtAddr,
        limits: &GuestLimits,
    ) -> Result<GuestEntryKind, PagingError> {
        if !self.is_present() {
            return Ok(GuestEntryKind::Absent);
        }
        let value = self.0;
        if value & limits.reserved_mask != 0 {
            return Err(PagingError::ReservedBits {
                value,
                level,
                vaddr,
                bits: value & limits.reserved_mask,
            });
        }
        let address = value & pte::ADDRESS_MASK;
        let huge = value & pte::HUGE_PAGE != 0;
        let (start, len, kind) = match level {
            Level::L4 if huge => return Err(PagingError::HugePageAtTopLevel { value, vaddr }),
            Level::L3 | Level::L2 if huge => {
                // Bit 12 is PAT; the bits between it and the page's
                // alignment must be clear.
                let base = address & !pte::LARGE_PAGE_PAT;
                if base & (level.bytes_mapped() - 1) != 0 {
                    return Err(PagingError::MisalignedLargePage {
                        value,
                        level,
                        vaddr,
                    });
                }
                let base = GuestPhysAddr::new(base);
                let len = level.bytes_mapped();
                (base, len, GuestEntryKind::Page { base, level })
            }
            Level::L1 => {
                let base = GuestPhysAddr::new(address);
                (base, PAGE_SIZE, GuestEntryKind::Page { base, level })
            }
            _ => {
                let table = GuestPhysAddr::new(address);
                (table, PAGE_SIZE, GuestEntryKind::Table(table))
            }
        };
        if !limits.contains(start, len) {
            return Err(PagingError::OutsideGuestMemory {
                value,
                level,
                vaddr,
                gpa: start,
                memory_size: limits.memory_size,
            });
        }
        Ok(kind)
    }
}

impl core::fmt::Debug for GuestEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestEntry({:#x})", self.0)
    }
}

/// An entry of a shadow table: made by the host, read by the CPU.
///
/// The shadow never uses large pages (see the module docs of
/// [`super`]), so an entry is either absent, a table (levels 2..=4) or a
/// 4 KiB page (level 1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct ShadowEntry(u64);

/// What a shadow entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowEntryKind {
    /// Nothing mapped.
    Absent,
    /// The next level's shadow table.
    Table(HostPhysAddr),
    /// A 4 KiB page of guest memory.
    Page(HostPhysAddr),
}

impl ShadowEntry {
    /// The empty entry.
    pub const ABSENT: Self = Self(0);

    /// Wraps a raw entry read from a shadow table.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value, as the CPU sees it.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The flag bits.
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_truncate(self.0)
    }

    /// An entry pointing at the shadow table `table`. Intermediate entries
    /// grant everything: each leaf carries the rights of the guest's whole
    /// walk, so a shadow table can be shared by walks that differ above it.
    pub const fn table(table: HostPhysAddr) -> Self {
        Self(
            (table.as_u64() & pte::ADDRESS_MASK)
                | pte::PRESENT
                | pte::WRITABLE
                | pte::USER
                | pte::ACCESSED,
        )
    }

    /// An entry pointing at a host table the guest may only reach from
    /// the supervisor rings (the switcher's).
    pub const fn supervisor_table(table: HostPhysAddr) -> Self {
        Self((table.as_u64() & pte::ADDRESS_MASK) | pte::PRESENT | pte::WRITABLE | pte::ACCESSED)
    }

    /// A leaf mapping the 4 KiB host frame `frame` with `rights`, made
    /// writable only if `writable` (the guest's dirty bit is honest). The
    /// accessed bit (and dirty, when writable) is preset so the CPU never
    /// needs to write the entry; caching bits and global are never set.
    pub const fn page(frame: HostPhysAddr, rights: Rights, writable: bool) -> Self {
        let mut raw = (frame.as_u64() & pte::ADDRESS_MASK) | pte::PRESENT | pte::ACCESSED;
        if writable && rights.write {
            raw |= pte::WRITABLE | pte::DIRTY;
        }
        if rights.user {
            raw |= pte::USER;
        }
        if !rights.execute {
            raw |= pte::NO_EXECUTE;
        }
        Self(raw)
    }

    /// Whether the present bit is set.
    pub const fn is_present(self) -> bool {
        self.0 & pte::PRESENT != 0
    }

    /// The host frame the entry points at.
    pub const fn frame(self) -> Result<HostPhysAddr, FrameError> {
        if self.is_present() {
            Ok(HostPhysAddr::new(self.0 & pte::ADDRESS_MASK))
        } else {
            Err(FrameError::NotPresent)
        }
    }

    /// What the entry is, given the level of the table it sits in.
    pub const fn decode(self, level: Level) -> ShadowEntryKind {
        match self.frame() {
            Err(_) => ShadowEntryKind::Absent,
            Ok(frame) if matches!(level, Level::L1) => ShadowEntryKind::Page(frame),
            Ok(frame) => ShadowEntryKind::Table(frame),
        }
    }
}

impl core::fmt::Debug for ShadowEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ShadowEntry({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn va(raw: u64) -> GuestVirtAddr {
        GuestVirtAddr::try_new(raw).unwrap()
    }

    fn limits() -> GuestLimits {
        GuestLimits::new(4 * GIB, 40)
    }

    #[test]
    fn absent_entries_may_hold_anything() {
        let e = GuestEntry::new(!pte::PRESENT);
        assert_eq!(
            e.decode(Level::L1, va(0), &limits()),
            Ok(GuestEntryKind::Absent)
        );
    }

    #[test]
    fn tables_and_pages_decode_inside_memory() {
        let l = limits();
        let table = GuestEntry::new(0x5000 | 0x63);
        assert_eq!(
            table.decode(Level::L4, va(0), &l),
            Ok(GuestEntryKind::Table(GuestPhysAddr::new(0x5000)))
        );
        let page = GuestEntry::new(0x7000 | 0x3 | pte::NO_EXECUTE | (0x7ff << 52) | 0xe00);
        assert_eq!(
            page.decode(Level::L1, va(0), &l),
            Ok(GuestEntryKind::Page {
                base: GuestPhysAddr::new(0x7000),
                level: Level::L1
            })
        );
        let big = GuestEntry::new(0x4020_0000 | pte::HUGE_PAGE | pte::LARGE_PAGE_PAT | 1);
        assert_eq!(
            big.decode(Level::L2, va(0), &l),
            Ok(GuestEntryKind::Page {
                base: GuestPhysAddr::new(0x4020_0000),
                level: Level::L2
            })
        );
        assert_eq!(big.frame(Level::L2), Err(FrameError::LargePage));
        assert_eq!(page.frame(Level::L1), Ok(GuestPhysAddr::new(0x7000)));
        assert_eq!(
            GuestEntry::new(0).frame(Level::L1),
            Err(FrameError::NotPresent)
        );
    }

    #[test]
    fn malformed_entries_are_refused_with_the_reason() {
        let l = limits();
        let v = va(0xffff_8000_0000_0000);
        let reserved = GuestEntry::new((1 << 45) | 1);
        assert_eq!(
            reserved.decode(Level::L1, v, &l),
            Err(PagingError::ReservedBits {
                value: (1 << 45) | 1,
                level: Level::L1,
                vaddr: v,
                bits: 1 << 45
            })
        );
        let outside = GuestEntry::new((4 * GIB) | 1);
        assert!(matches!(
            outside.decode(Level::L3, v, &l),
            Err(PagingError::OutsideGuestMemory { .. })
        ));
        let top_huge = GuestEntry::new(0x1000 | pte::HUGE_PAGE | 1);
        assert!(matches!(
            top_huge.decode(Level::L4, v, &l),
            Err(PagingError::HugePageAtTopLevel { .. })
        ));
        let misaligned = GuestEntry::new(0x20_2000 | pte::HUGE_PAGE | 1);
        assert!(matches!(
            misaligned.decode(Level::L2, v, &l),
            Err(PagingError::MisalignedLargePage { .. })
        ));
        // A 1 GiB page whose end passes the end of memory.
        let tail = GuestEntry::new((3 * GIB) | pte::HUGE_PAGE | 1);
        assert!(tail.decode(Level::L3, v, &l).is_ok());
        let small = GuestLimits::new(3 * GIB + 4096, 40);
        assert!(tail.decode(Level::L3, v, &small).is_err());
    }

    #[test]
    fn reserved_mask_follows_the_host_width() {
        assert_eq!(GuestLimits::new(0, 52).reserved_mask, 0);
        assert_eq!(GuestLimits::new(0, 46).reserved_mask, 0x000f_c000_0000_0000);
        assert_eq!(GuestLimits::new(0, 200).reserved_mask, 0);
    }

    #[test]
    fn shadow_leaves_carry_only_the_granted_rights() {
        let f = HostPhysAddr::new(0x1234_5000);
        let ro = ShadowEntry::page(f, Rights::ALL, false);
        assert!(!ro.flags().contains(PteFlags::WRITABLE));
        let rw = ShadowEntry::page(f, Rights::ALL, true);
        assert!(rw.flags().contains(PteFlags::WRITABLE | PteFlags::DIRTY));
        let narrowed = Rights::ALL.narrowed_by(PteFlags::PRESENT | PteFlags::NO_EXECUTE);
        let k = ShadowEntry::page(f, narrowed, true);
        assert!(!k.flags().intersects(PteFlags::WRITABLE | PteFlags::USER));
        assert!(k.flags().contains(PteFlags::NO_EXECUTE));
        assert_eq!(k.decode(Level::L1), ShadowEntryKind::Page(f));
        assert_eq!(
            ShadowEntry::table(f).decode(Level::L2),
            ShadowEntryKind::Table(f)
        );
        assert_eq!(
            ShadowEntry::ABSENT.decode(Level::L3),
            ShadowEntryKind::Absent
        );
        assert_eq!(TableIndex::new(512), None);
        assert_eq!(TableIndex::range(510, 600).count(), 2);
    }
}
