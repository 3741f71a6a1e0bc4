//! The host's notes on its own shadow tables: which entries of each table
//! are in use, and a few spare tables kept zeroed.
//!
//! A shadow table has 512 entries, and a process typically uses two or
//! three of them. Freeing a tree of tables by reading every entry of every
//! table (to find the tables below) cost some 4,500 instructions per table
//! level under QEMU, and a fresh table from the allocator must be zeroed,
//! 4 KiB written, before use. Both costs hit hardest where a guest is
//! busiest: a context switch that evicts a cached root frees that root's
//! whole user half, and the next fault in the new process builds three
//! tables again.
//!
//! So the host keeps, for every shadow table it holds, a bitmap of its
//! entries that are not zero ([`Populated`]), in a small hash map keyed by
//! the table's frame ([`TableBook`]). Freeing a tree visits only the
//! entries in use, and clears them on the way, so the freed table is zeroed
//! again at the price of those few writes; up to [`MAX_SPARE_TABLES`] such
//! tables are kept as spares and handed out again by the next allocation
//! instead of a frame that must be zeroed whole. (lguest threw its page
//! tables away and zeroed new ones; Linux keeps a quicklist of zeroed
//! page-table pages for the same reason.)
//!
//! The bitmap must say exactly which entries are not zero: every write to a
//! shadow table goes through [`super::ShadowPaging::write_shadow`], which
//! keeps it so, and the model test checks it against the tables after
//! every step. The map's memory is taken fallibly: a host out of heap ends
//! the guest that needed a table ([`super::PagingError::OutOfFrames`]), as a
//! host out of frames does, and never panics.

use super::entry::TableIndex;
use crate::addr::HostPhysAddr;
use alloc::vec::Vec;

/// The most zeroed spare tables a guest keeps for reuse: enough for a few
/// processes' user halves (an evicted root's tables are the next root's).
pub const MAX_SPARE_TABLES: usize = 64;

/// Which of a table's 512 entries are not zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Populated([u64; 8]);

impl Populated {
    /// Marks entry `index` as in use (`true`) or zero (`false`).
    pub fn set(&mut self, index: TableIndex, in_use: bool) {
        let i = index.as_usize();
        if let Some(word) = self.0.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            if in_use {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }

    /// Whether entry `index` is in use.
    pub fn contains(&self, index: TableIndex) -> bool {
        let i = index.as_usize();
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The entries in use among `first..end`, in order.
    pub fn in_range(self, first: usize, end: usize) -> InUse {
        let end = end.min(512);
        let mut words = self.0;
        // Clear the bits outside `first..end`, once, so the iterator only
        // counts trailing zeros.
        for (w, word) in words.iter_mut().enumerate() {
            let (low, high) = (w * 64, w * 64 + 64);
            if high <= first || low >= end {
                *word = 0;
                continue;
            }
            if first > low {
                *word &= u64::MAX << (first - low);
            }
            if end < high {
                *word &= (1u64 << (end - low)) - 1;
            }
        }
        InUse { words, word: 0 }
    }

    /// Every entry in use, in order.
    pub fn all(self) -> InUse {
        InUse {
            words: self.0,
            word: 0,
        }
    }

    /// How many entries are in use.
    #[cfg(test)]
    pub fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// The entries a [`Populated`] names, in order.
pub struct InUse {
    words: [u64; 8],
    word: usize,
}

impl Iterator for InUse {
    type Item = TableIndex;

    fn next(&mut self) -> Option<TableIndex> {
        while let Some(bits) = self.words.get_mut(self.word) {
            if *bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                *bits &= *bits - 1;
                return TableIndex::new(self.word * 64 + bit);
            }
            self.word += 1;
        }
        None
    }
}

/// One slot of the map: a table's frame number plus one (0: empty) and its
/// bitmap.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    populated: Populated,
}

/// The host ran out of heap for its notes: treated like running out of
/// frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

/// The bitmaps of every shadow table of one guest, by frame, and its spare
/// zeroed tables.
///
/// An open-addressing hash map with linear probing (deletion shifts the
/// run back, so there are no tombstones), at most half full. A lookup is
/// a multiply and, almost always, one probe: cheap enough to be made on
/// every write of a shadow entry.
#[derive(Default)]
pub struct TableBook {
    slots: Vec<Slot>,
    len: usize,
    spare: Vec<HostPhysAddr>,
}

impl TableBook {
    /// The first size of the map, in slots (a power of two).
    const FIRST_CAPACITY: usize = 64;

    /// The slot where the search for `key` starts.
    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing: the frame numbers of tables are often close
        // together, and the multiply spreads them over the whole map.
        let mask = self.slots.len().wrapping_sub(1);
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
    }

    /// The index of `table`'s slot, if it is in the map.
    fn find(&self, table: HostPhysAddr) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let key = table.frame_number() + 1;
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        // At most half full, so an empty slot ends every search; the bound
        // only keeps a broken map from looping.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if slot.key == key {
                return Some(i);
            }
            if slot.key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Starts the notes of a new table, all of whose entries are zero.
    pub fn insert(&mut self, table: HostPhysAddr) -> Result<(), NoRoom> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow()?;
        }
        let key = table.frame_number() + 1;
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        for _ in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(i) else {
                break;
            };
            if slot.key == 0 || slot.key == key {
                if slot.key == 0 {
                    self.len += 1;
                }
                *slot = Slot {
                    key,
                    populated: Populated::default(),
                };
                return Ok(());
            }
            i = (i + 1) & mask;
        }
        Err(NoRoom)
    }

    /// Doubles the map (or makes its first slots), moving every entry.
    fn grow(&mut self) -> Result<(), NoRoom> {
        let capacity = (self.slots.len() * 2).max(Self::FIRST_CAPACITY);
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).map_err(|_| NoRoom)?;
        slots.resize(capacity, Slot::default());
        let old = core::mem::replace(&mut self.slots, slots);
        let mask = capacity - 1;
        for slot in old.into_iter().filter(|s| s.key != 0) {
            let mut i = self.home(slot.key);
            while self.slots.get(i).is_some_and(|s| s.key != 0) {
                i = (i + 1) & mask;
            }
            if let Some(place) = self.slots.get_mut(i) {
                *place = slot;
            }
        }
        Ok(())
    }

    /// Forgets `table`, giving back what its bitmap said.
    pub fn remove(&mut self, table: HostPhysAddr) -> Populated {
        let Some(mut hole) = self.find(table) else {
            return Populated::default();
        };
        let populated = self
            .slots
            .get(hole)
            .map(|s| s.populated)
            .unwrap_or_default();
        self.len -= 1;
        // Backward-shift deletion: move later members of the run into the
        // hole when their home allows, so no search stops early.
        let mask = self.slots.len() - 1;
        let mut next = (hole + 1) & mask;
        // At most half full: an empty slot ends the run.
        while let Some(slot) = self.slots.get(next).copied().filter(|s| s.key != 0) {
            let home = self.home(slot.key);
            // Whether `home` lies cyclically outside (hole, next]: then the
            // slot may move back to the hole.
            let movable = if hole <= next {
                home <= hole || home > next
            } else {
                home <= hole && home > next
            };
            if movable {
                if let Some(place) = self.slots.get_mut(hole) {
                    *place = slot;
                }
                hole = next;
            }
            next = (next + 1) & mask;
        }
        if let Some(place) = self.slots.get_mut(hole) {
            *place = Slot::default();
        }
        populated
    }

    /// The bitmap of `table` (all zero if it has none).
    pub fn populated(&self, table: HostPhysAddr) -> Populated {
        self.find(table)
            .and_then(|i| self.slots.get(i))
            .map(|s| s.populated)
            .unwrap_or_default()
    }

    /// Notes that entry `index` of `table` is now in use or zero.
    pub fn note(&mut self, table: HostPhysAddr, index: TableIndex, in_use: bool) {
        if let Some(slot) = self.find(table).and_then(|i| self.slots.get_mut(i)) {
            slot.populated.set(index, in_use);
        }
    }

    /// How many tables have notes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no table has notes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A spare zeroed table, if one is kept.
    pub fn take_spare(&mut self) -> Option<HostPhysAddr> {
        self.spare.pop()
    }

    /// Keeps zeroed `table` as a spare if there is room; gives it back if
    /// not.
    pub fn keep_spare(&mut self, table: HostPhysAddr) -> Option<HostPhysAddr> {
        if self.spare.len() >= MAX_SPARE_TABLES {
            return Some(table);
        }
        if self.spare.capacity() == 0 && self.spare.try_reserve_exact(MAX_SPARE_TABLES).is_err() {
            return Some(table);
        }
        self.spare.push(table);
        None
    }

    /// How many spare tables are kept.
    pub fn spare_count(&self) -> usize {
        self.spare.len()
    }

    /// The spare tables, for the caller to free (teardown).
    pub fn drain_spares(&mut self) -> impl Iterator<Item = HostPhysAddr> + '_ {
        self.spare.drain(..)
    }

    /// The spare tables (for the tests' checks).
    #[cfg(test)]
    pub fn spares(&self) -> &[HostPhysAddr] {
        &self.spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn frame(n: u64) -> HostPhysAddr {
        HostPhysAddr::from_frame_number(n).unwrap()
    }

    fn ix(i: usize) -> TableIndex {
        TableIndex::new(i).unwrap()
    }

    #[test]
    fn a_bitmap_lists_its_entries_in_order_and_by_range() {
        let mut p = Populated::default();
        for i in [0, 1, 63, 64, 255, 256, 300, 511] {
            p.set(ix(i), true);
        }
        p.set(ix(1), false);
        let all: std::vec::Vec<usize> = p.all().map(|i| i.as_usize()).collect();
        assert_eq!(all, [0, 63, 64, 255, 256, 300, 511]);
        let user: std::vec::Vec<usize> = p.in_range(0, 256).map(|i| i.as_usize()).collect();
        assert_eq!(user, [0, 63, 64, 255]);
        let mid: std::vec::Vec<usize> = p.in_range(64, 301).map(|i| i.as_usize()).collect();
        assert_eq!(mid, [64, 255, 256, 300]);
        assert_eq!(p.count(), 7);
        assert!(p.contains(ix(511)) && !p.contains(ix(1)));
    }

    proptest! {
        /// The map agrees with a `BTreeMap` whatever the order of inserts,
        /// notes and removals (frames chosen to collide often).
        #[test]
        fn the_map_behaves_like_a_map(ops in prop::collection::vec((0u8..3, 0u64..300, 0usize..512), 1..400)) {
            let mut book = TableBook::default();
            let mut model: BTreeMap<u64, Populated> = BTreeMap::new();
            for (op, n, index) in ops {
                let table = frame(n * 64 + 5);
                match op {
                    0 => {
                        book.insert(table).unwrap();
                        model.insert(n, Populated::default());
                    }
                    1 => {
                        book.note(table, ix(index), true);
                        if let Some(p) = model.get_mut(&n) {
                            p.set(ix(index), true);
                        }
                    }
                    _ => {
                        let got = book.remove(table);
                        prop_assert_eq!(got, model.remove(&n).unwrap_or_default());
                    }
                }
                prop_assert_eq!(book.len(), model.len());
            }
            for (n, p) in &model {
                prop_assert_eq!(book.populated(frame(n * 64 + 5)), *p);
            }
        }

        /// Ranges list exactly the bits set inside them.
        #[test]
        fn ranges_are_exact(bits in prop::collection::btree_set(0usize..512, 0..40), first in 0usize..512, len in 0usize..512) {
            let mut p = Populated::default();
            for &b in &bits {
                p.set(ix(b), true);
            }
            let end = (first + len).min(512);
            let got: std::vec::Vec<usize> = p.in_range(first, end).map(|i| i.as_usize()).collect();
            let want: std::vec::Vec<usize> = bits.range(first..end).copied().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn spares_are_bounded() {
        let mut book = TableBook::default();
        for n in 0..MAX_SPARE_TABLES as u64 {
            assert_eq!(book.keep_spare(frame(n)), None);
        }
        assert_eq!(book.keep_spare(frame(999)), Some(frame(999)));
        assert_eq!(book.spare_count(), MAX_SPARE_TABLES);
        assert_eq!(book.take_spare(), Some(frame(MAX_SPARE_TABLES as u64 - 1)));
        assert_eq!(book.drain_spares().count(), MAX_SPARE_TABLES - 1);
    }
}
