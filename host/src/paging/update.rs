//! (iii) The guest tells us an entry changed.
//!
//! A guest writes its page tables as it likes, but the shadow does not
//! notice, just as a TLB would not. So after changing a present entry the
//! guest reports it ([`ShadowPaging::set_entry`]), naming the address space
//! (its root), one virtual address the entry translates, the level, and the
//! new value. We drop the shadow entry at that level, with everything below
//! it; the next fault fills it again from the guest's tables.
//!
//! Dropping is all correctness needs, but most kernels (Linux included) set
//! the accessed and dirty bits themselves when they make a mapping, and then
//! the fault that would follow is a waste: if the new entry maps a page and
//! is already marked accessed, we map it at once, read-only, or writable if
//! it is also dirty (lguest measured 10% on a copy-on-write benchmark). The
//! eager fill believes only the guest's tables: the reported value must
//! match what a fresh walk finds there, every level already accessed.
//! [`super::PagingConfig::eager_fill`] turns this off for benchmarking.
//!
//! Changes in the kernel half are made once, in the shared kernel tables,
//! and so reach every cached root. Changes in the user half of a root we
//! have no shadow for need nothing (the root will be built from scratch).
//!
//! Reports can also be queued in the MMU ring in guest memory
//! ([`guest_abi::pte::ring`]) and applied in one go when the guest asks,
//! with the `FlushMmuRing` hypercall ([`ShadowPaging::apply_ring`]): one
//! exit for a whole `fork`'s worth of changes. Nothing else applies them:
//! ops still queued at any other exit wait for that hypercall, so the guest
//! flushes the ring before it relies on the changes (and before the ring
//! fills). The ring is the guest's memory, so its indices are never
//! trusted: the host counts what it applied itself and applies at most one
//! ring's worth per call.
//!
//! A batch is applied under the guest's lock, op after op, so some of what
//! one op learns holds for the next ([`Batch`]): the root it checked; with
//! a guest of one vCPU, which cannot run while its exit is handled, the
//! guest entries read (nothing in a batch writes guest memory, so they
//! cannot change); and the shadow table of the last leaf replaced in place,
//! which only the next op in the same table may use, since any other op may
//! free or make shadow tables. Every op is still read, decoded and checked
//! on its own, and every report's value is compared with the guest's table.

use super::entry::{GuestEntry, GuestEntryKind, Level, PteFlags, ShadowEntry, TableIndex};
use super::error::PagingError;
use super::hw::{GuestMemory, OutsideGuestMemory, ShadowFrames};
use super::walk::{UpperWalk, WalkOutcome, walk_guest};
use super::{MmuRing, ShadowPaging};
use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use guest_abi::pte::{MmuOp, ring};

/// What the ops of one flush of the MMU ring learn once and use again (see
/// the module's introduction). A single report ([`ShadowPaging::set_entry`])
/// is a batch of one, which keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Batch {
    /// The last root checked: its raw value and the checked address (a
    /// root's check says nothing that one of its entries could undo).
    root: Option<(u64, GuestPhysAddr)>,
    /// Whether the guest's memory holds still for the whole batch: the
    /// guest has one vCPU, which does not run while its exit is handled,
    /// and no op writes guest memory. Then a guest entry read once in the
    /// batch need not be read again.
    frozen: bool,
    /// Whether [`ShadowPaging::upper_walk`]'s entries were read in this
    /// batch and held what it keeps (so, frozen, they still do).
    upper_read: bool,
    /// The shadow level-1 table the last op replaced an entry of in place.
    /// Taken by every op ([`Batch::next_op`]), and put back only by that
    /// in-place replacement, which makes and frees no shadow table: any
    /// other op may have freed it or changed the tables above it.
    leaf_table: Option<LeafTable>,
}

impl Batch {
    /// A batch of the ring's ops for the tables `paging`.
    fn of_ring(paging: &ShadowPaging) -> Self {
        Self {
            frozen: !paging.shared_by_vcpus(),
            ..Self::default()
        }
    }

    /// The shadow table the last op left for this one, if any; from now on
    /// the batch keeps none until this op puts one back.
    fn next_op(&mut self) -> Option<LeafTable> {
        self.leaf_table.take()
    }
}

/// A shadow level-1 table, and which guest table's 2 MiB it shadows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LeafTable {
    /// The guest address space.
    root: GuestPhysAddr,
    /// The 2 MiB region (virtual address shifted right by 21).
    region: u64,
    /// The shadow table.
    table: HostPhysAddr,
}

impl ShadowPaging {
    /// (iii) The entry at `level` translating `vaddr` in the address space
    /// rooted at guest `root` now holds `value` (the raw hypercall
    /// arguments; all are checked here).
    pub fn set_entry<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        root: u64,
        vaddr: u64,
        level: u64,
        value: u64,
    ) -> Result<(), PagingError> {
        let root = Self::check_root(&self.limits, &self.shared_pages, mem, root)?;
        let mut batch = Batch::default();
        self.set_entry_in(mem, frames, &mut batch, None, root, vaddr, level, value)
    }

    /// [`Self::set_entry`] for a root already checked, as an op of `batch`
    /// given the shadow table the last op left (`leaf_table`). Inlined into
    /// both callers: it is the whole of a report's work.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn set_entry_in<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        batch: &mut Batch,
        leaf_table: Option<LeafTable>,
        root: GuestPhysAddr,
        vaddr: u64,
        level: u64,
        value: u64,
    ) -> Result<(), PagingError> {
        let level = Level::from_number(level).ok_or(PagingError::BadLevel(level))?;
        let vaddr = GuestVirtAddr::try_new(vaddr)?;
        self.stats.entries_set += 1;
        if vaddr.in_switcher_slot() {
            // Nothing of the guest's is shadowed there. Making the
            // top-level entry present is an offence; clearing it is
            // harmless. Below the top level there is no guest table to
            // report on (the top-level entry is never present: roots and
            // top-level reports are checked), so any such report, present
            // or not, is a guest bug or a probe, refused like the first
            // rather than silently ignored.
            if level != Level::L4 {
                return Err(PagingError::SwitcherSlotBelowTop {
                    value,
                    level,
                    vaddr,
                });
            }
            if GuestEntry::new(value).is_present() {
                return Err(PagingError::SwitcherSlot { value, vaddr });
            }
            return Ok(());
        }
        let kind = GuestEntry::new(value).decode(level, vaddr, &self.limits)?;
        if level == Level::L4 && vaddr.is_upper_half() {
            // The kernel half's tables may have changed.
            self.kernel_tables = None;
        }
        if !self.parked.is_empty() && !vaddr.is_upper_half() {
            // Every other vCPU's shadow of this address space forgets the
            // entry (and is filled again by its own faults).
            self.clear_in_parked(frames, root, vaddr, level);
        }
        if level == Level::L1 {
            return self.set_leaf(mem, frames, batch, leaf_table, root, vaddr, value, kind);
        }
        let Some(shadow_root) = self.shadow_root_for(root, vaddr) else {
            return Ok(());
        };
        self.clear_entry(frames, shadow_root, vaddr, level);
        if vaddr.is_upper_half() {
            self.note_dropped(vaddr, level);
        }
        if let GuestEntryKind::Page { base, .. } = kind
            && self.config.eager_fill
            && let Some(leaf) = self.eager_leaf(mem, batch, root, vaddr, level, value, base)?
        {
            self.fill_eagerly(frames, shadow_root, vaddr, leaf)?;
        }
        Ok(())
    }

    /// [`Self::set_entry`] for a level-1 entry, the common case (a page
    /// mapped, unmapped, made writable or copied on write): the shadow
    /// entry is replaced in place, one read and one write where the
    /// shadow table exists, instead of being dropped and mapped again.
    /// Where it does, the table is left in `batch` for the next op, which
    /// finds it there if it reports an entry of the same table; otherwise
    /// the table is found from the shadow root.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn set_leaf<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &M,
        frames: &mut F,
        batch: &mut Batch,
        leaf_table: Option<LeafTable>,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
        value: u64,
        kind: GuestEntryKind,
    ) -> Result<(), PagingError> {
        // The shadow table to change: the one the last op left, if it is
        // this one; else the one under the shadow root (with no root, the
        // user half of an address space not cached, there is nothing to
        // change: the root will be built afresh).
        let region = vaddr.as_u64() / Level::L2.bytes_mapped();
        let (table, shadow_root) = match leaf_table {
            Some(last) if last.root == root && last.region == region => (Some(last.table), None),
            _ => {
                let Some(shadow_root) = self.shadow_root_for(root, vaddr) else {
                    return Ok(());
                };
                let table = Self::find_table(frames, shadow_root, vaddr, Level::L1);
                (table, Some(shadow_root))
            }
        };
        let leaf = match kind {
            GuestEntryKind::Page { base, .. } if self.config.eager_fill => {
                self.eager_leaf(mem, batch, root, vaddr, Level::L1, value, base)?
            }
            _ => None,
        };
        let index = TableIndex::of(vaddr, Level::L1);
        match table {
            Some(table) => {
                let old = frames.read_entry(table, index);
                let new = leaf.unwrap_or(ShadowEntry::ABSENT);
                if (old != 0) != (new.raw() != 0) {
                    self.write_shadow(frames, table, index, new);
                } else if old != new.raw() {
                    // In use before and after: the bitmap stays as it is.
                    frames.write_entry(table, index, new.raw());
                }
                if leaf.is_some() {
                    self.stats.eager_fills += 1;
                }
                batch.leaf_table = Some(LeafTable {
                    root,
                    region,
                    table,
                });
            }
            // No table: the root was looked up, and the page is mapped
            // with the tables it needs.
            None => {
                if let (Some(leaf), Some(shadow_root)) = (leaf, shadow_root) {
                    self.fill_eagerly(frames, shadow_root, vaddr, leaf)?;
                }
            }
        }
        if vaddr.is_upper_half() {
            self.note_dropped(vaddr, Level::L1);
        }
        Ok(())
    }

    /// The shadow root whose entries for `vaddr` mirror guest `root`: for
    /// the kernel half any root will do (they share it), for the user half
    /// only the root cached for `root`.
    fn shadow_root_for(
        &self,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
    ) -> Option<crate::addr::HostPhysAddr> {
        if vaddr.is_upper_half() {
            Some(self.roots.current().shadow)
        } else {
            self.roots.find(root)
        }
    }

    /// Maps `vaddr` with `leaf` in `shadow_root`, the tables below it made
    /// as needed. At the bound on shadow frames the page is simply left to
    /// fault in: an eager fill is a saving, never worth a reclaim (or the
    /// guest's life).
    fn fill_eagerly<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        shadow_root: HostPhysAddr,
        vaddr: GuestVirtAddr,
        leaf: ShadowEntry,
    ) -> Result<(), PagingError> {
        match self.map_page(frames, shadow_root, vaddr, leaf) {
            Ok(()) => {
                self.stats.eager_fills += 1;
                Ok(())
            }
            Err(PagingError::ShadowLimit { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The shadow leaf to map at once for a reported page entry (`value`
    /// at `level`, mapping guest `base`), if the guest's tables, walked
    /// afresh, end in that value at that level and every entry is already
    /// accessed; `None` if not (the next fault will fill it).
    ///
    /// A guest reports its entries in runs (a `fork`, an `mmap`, a batch of
    /// copy-on-write breaks), most in the same level-1 table, so the upper
    /// three levels of the last walk are kept ([`UpperWalk`]): when the
    /// next report lies under the same level-1 table and those three
    /// entries still hold the very values that walk decoded, the walk
    /// would find what it found then, and only the leaf is read. The
    /// entries are read again for every report, so nothing is believed
    /// that the guest's tables no longer say; only in a frozen batch
    /// ([`Batch::frozen`]), where they cannot change, are they read once.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn eager_leaf<M: GuestMemory>(
        &mut self,
        mem: &M,
        batch: &mut Batch,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
        level: Level,
        value: u64,
        base: GuestPhysAddr,
    ) -> Result<Option<ShadowEntry>, PagingError> {
        let flags = GuestEntry::new(value).flags();
        if !flags.contains(PteFlags::ACCESSED) {
            return Ok(None);
        }
        if level == Level::L1
            && let Some(upper) = self.upper_walk_to(mem, batch, root, vaddr)
        {
            return self.leaf_under(mem, upper, vaddr, value, base);
        }
        self.eager_leaf_walked(mem, batch, root, vaddr, level, value)
    }

    /// The kept upper walk, if it leads to the level-1 table of `vaddr` in
    /// `root` and its three entries still hold the values it decoded: read
    /// again here, unless a frozen batch has read them already.
    #[inline(always)]
    fn upper_walk_to<M: GuestMemory>(
        &self,
        mem: &M,
        batch: &mut Batch,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
    ) -> Option<&UpperWalk> {
        let upper = self.upper_walk.as_ref().filter(|u| u.covers(root, vaddr))?;
        if !(batch.frozen && batch.upper_read) {
            if !upper.holds(mem) {
                return None;
            }
            batch.upper_read = true;
        }
        Some(upper)
    }

    /// The shadow leaf for `value`, a level-1 entry mapping guest `base`,
    /// under the level-1 table `upper` leads to: if that table holds
    /// `value` for `vaddr`, with the rights of the upper levels and its own.
    #[inline(always)]
    fn leaf_under<M: GuestMemory>(
        &self,
        mem: &M,
        upper: &UpperWalk,
        vaddr: GuestVirtAddr,
        value: u64,
        base: GuestPhysAddr,
    ) -> Result<Option<ShadowEntry>, PagingError> {
        let at = upper.table.as_u64() + 8 * TableIndex::of(vaddr, Level::L1).as_usize() as u64;
        let at = GuestPhysAddr::new(at);
        let leaf = mem
            .read_u64(at)
            .map_err(|_| PagingError::GuestMemory { gpa: at })?;
        if leaf != value {
            return Ok(None);
        }
        let frame = mem
            .host_frame(base)
            .ok_or(PagingError::OutsideGuestMemory {
                value,
                level: Level::L1,
                vaddr,
                gpa: base,
                memory_size: self.limits.memory_size,
            })?;
        let flags = GuestEntry::new(value).flags();
        let rights = upper.rights.narrowed_by(flags);
        Ok(Some(ShadowEntry::page(
            frame,
            rights,
            flags.contains(PteFlags::DIRTY),
        )))
    }

    /// [`Self::eager_leaf`] by a fresh walk of the guest's tables, which
    /// keeps its upper levels for the reports after it. Out of line: the
    /// walk is the rarer way, and large.
    #[inline(never)]
    fn eager_leaf_walked<M: GuestMemory>(
        &mut self,
        mem: &M,
        batch: &mut Batch,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
        level: Level,
        value: u64,
    ) -> Result<Option<ShadowEntry>, PagingError> {
        let WalkOutcome::Mapped(walk) = walk_guest(mem, root, vaddr, &self.limits)? else {
            return Ok(None);
        };
        if walk.leaf_level != level || walk.leaf().raw() != value || !walk.all_accessed() {
            return Ok(None);
        }
        self.upper_walk = UpperWalk::of(root, vaddr, &walk);
        // Read just now, in this batch.
        batch.upper_read = true;
        let dirty = walk.leaf().flags().contains(PteFlags::DIRTY);
        self.shadow_leaf_for(mem, &walk, dirty, vaddr).map(Some)
    }

    /// Applies one MMU operation, from a hypercall or the ring.
    pub fn apply_op<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        op: MmuOp,
    ) -> Result<(), PagingError> {
        match op {
            MmuOp::Nop => Ok(()),
            MmuOp::SetEntry {
                root,
                vaddr,
                level,
                value,
            } => self.set_entry(mem, frames, root, vaddr, u64::from(level), value),
            MmuOp::InvalidatePage { vaddr } => {
                self.invalidate_page(frames, GuestVirtAddr::try_new(vaddr)?);
                Ok(())
            }
            MmuOp::FlushUser => {
                self.flush_user(frames);
                Ok(())
            }
            MmuOp::FlushAll => {
                self.flush_all(frames);
                Ok(())
            }
        }
    }

    /// Registers the guest's MMU ring at guest-physical `base`. The ring
    /// must be empty now: the current `head` is where the host starts.
    pub fn register_ring<M: GuestMemory>(
        &mut self,
        mem: &mut M,
        base: u64,
    ) -> Result<(), PagingError> {
        let start = GuestPhysAddr::new(base);
        if !base.is_multiple_of(8) || !self.limits.contains(start, ring::RING_BYTES) {
            return Err(PagingError::BadRing { ring: base });
        }
        let head = Self::ring_word(mem, start, ring::HEAD_OFFSET)?;
        Self::write_ring_word(mem, start, ring::TAIL_OFFSET, head)?;
        self.ring = Some(MmuRing {
            base: start,
            applied: head,
        });
        Ok(())
    }

    /// (iii) Applies the ops queued in the MMU ring, in order, at most one
    /// ring's worth; returns how many. The host's count of applied ops is
    /// written to the ring's `tail` for the guest to see, also when an op
    /// fails (the failing op is not counted).
    pub fn apply_ring<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
    ) -> Result<u64, PagingError> {
        let Some(MmuRing { base, applied }) = self.ring else {
            return Ok(0);
        };
        let head = Self::ring_word(mem, base, ring::HEAD_OFFSET)?;
        let pending = head.wrapping_sub(applied);
        if pending > ring::RING_SLOTS {
            return Err(PagingError::RingOverrun { head, applied });
        }
        let mut done = 0;
        let mut result = Ok(());
        let mut batch = Batch::of_ring(self);
        // `pending` is at most RING_SLOTS, whatever the guest wrote.
        while done < pending {
            let n = applied.wrapping_add(done);
            result = self.apply_ring_slot(mem, frames, base, n, &mut batch);
            if result.is_err() {
                break;
            }
            done += 1;
        }
        let applied = applied.wrapping_add(done);
        self.ring = Some(MmuRing { base, applied });
        self.stats.ring_ops += done;
        Self::write_ring_word(mem, base, ring::TAIL_OFFSET, applied)?;
        result.map(|()| done)
    }

    /// Reads, decodes and applies op number `n` of the ring at `base`, an
    /// op of `batch`.
    fn apply_ring_slot<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        base: GuestPhysAddr,
        n: u64,
        batch: &mut Batch,
    ) -> Result<(), PagingError> {
        // The slot's four words in one read (inside the ring, checked at
        // registration).
        let slot = GuestPhysAddr::new(base.as_u64().saturating_add(ring::slot_offset(n)));
        let mut words = [0u64; 4];
        mem.read_u64s(slot, &mut words)
            .map_err(|OutsideGuestMemory(gpa)| PagingError::GuestMemory { gpa })?;
        let op = MmuOp::decode(words).map_err(|error| PagingError::BadOp { slot: n, error })?;
        let leaf_table = batch.next_op();
        let MmuOp::SetEntry {
            root,
            vaddr,
            level,
            value,
        } = op
        else {
            return self.apply_op(mem, frames, op);
        };
        // A batch reports one address space's entries, mostly: its root is
        // checked once.
        let checked = match batch.root {
            Some((raw, checked)) if raw == root => checked,
            _ => {
                let checked = Self::check_root(&self.limits, &self.shared_pages, mem, root)?;
                batch.root = Some((root, checked));
                checked
            }
        };
        let level = u64::from(level);
        self.set_entry_in(mem, frames, batch, leaf_table, checked, vaddr, level, value)
    }

    /// Reads the ring word at `offset` (inside the ring, checked at
    /// registration).
    fn ring_word<M: GuestMemory>(
        mem: &M,
        base: GuestPhysAddr,
        offset: u64,
    ) -> Result<u64, PagingError> {
        let gpa = GuestPhysAddr::new(base.as_u64().saturating_add(offset));
        mem.read_u64(gpa)
            .map_err(|_| PagingError::GuestMemory { gpa })
    }

    /// Writes the ring word at `offset`.
    fn write_ring_word<M: GuestMemory>(
        mem: &mut M,
        base: GuestPhysAddr,
        offset: u64,
        value: u64,
    ) -> Result<(), PagingError> {
        let gpa = GuestPhysAddr::new(base.as_u64().saturating_add(offset));
        mem.write_u64(gpa, value)
            .map_err(|_| PagingError::GuestMemory { gpa })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testing::*;
    use crate::paging::{PagingConfig, PteFlags};
    use guest_abi::pte;

    const USER_VA: u64 = 0x40_0000;
    const KERNEL_VA: u64 = 0xffff_8000_0020_0000;

    #[test]
    fn a_reported_change_drops_the_old_shadow_entry() {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE);
        f.fault(USER_VA, 0);
        assert!(f.leaf(USER_VA).is_present());
        f.map(ROOT_A, USER_VA, 0x6000, pte::WRITABLE);
        f.set_entry(ROOT_A, USER_VA, Level::L1, 0x6003).unwrap();
        assert!(!f.leaf(USER_VA).is_present());
        // A change one level up drops the whole shadow table below.
        f.fault(USER_VA, 0);
        let pd = f.guest_entry(ROOT_A, USER_VA, Level::L2);
        f.set_entry(ROOT_A, USER_VA, Level::L2, pd).unwrap();
        assert!(!f.leaf(USER_VA).is_present());
        assert_eq!(
            f.paging.stats().frames_held,
            3,
            "root, level 3 and level 2 remain"
        );
        f.teardown();
    }

    #[test]
    fn accessed_and_dirty_entries_are_filled_eagerly() {
        let mut f = Fixture::new(PagingConfig::default());
        // The upper levels must be accessed too.
        f.map(ROOT_A, USER_VA + 0x1000, 0x1_0000, 0);
        f.fault(USER_VA + 0x1000, 0);
        let accessed = 0x5000 | pte::PRESENT | pte::WRITABLE | pte::ACCESSED;
        f.write(ROOT_A, USER_VA, Level::L1, accessed);
        f.set_entry(ROOT_A, USER_VA, Level::L1, accessed).unwrap();
        let leaf = f.leaf(USER_VA);
        assert!(leaf.is_present() && !leaf.flags().contains(PteFlags::WRITABLE));
        let dirty = accessed | pte::DIRTY;
        f.write(ROOT_A, USER_VA, Level::L1, dirty);
        f.set_entry(ROOT_A, USER_VA, Level::L1, dirty).unwrap();
        assert!(f.leaf(USER_VA).flags().contains(PteFlags::WRITABLE));
        // A value the guest's table does not hold is not believed.
        f.set_entry(
            ROOT_A,
            USER_VA,
            Level::L1,
            0x9000 | pte::PRESENT | pte::ACCESSED,
        )
        .unwrap();
        assert!(!f.leaf(USER_VA).is_present());
        assert_eq!(f.paging.stats().eager_fills, 2);
        f.teardown();

        let mut f = Fixture::new(PagingConfig {
            eager_fill: false,
            ..PagingConfig::default()
        });
        f.map(ROOT_A, USER_VA, 0x5000, pte::ACCESSED | pte::DIRTY);
        f.set_entry(ROOT_A, USER_VA, Level::L1, f.mem.get(0) | 0x5061)
            .unwrap();
        assert!(!f.leaf(USER_VA).is_present());
        f.teardown();
    }

    #[test]
    fn a_run_of_reports_reuses_the_upper_walk_but_believes_only_the_tables() {
        let mut f = Fixture::new(PagingConfig::default());
        // The upper levels must be accessed: a fault marks them.
        f.map(ROOT_A, USER_VA + 0x5000, 0x1_0000, 0);
        f.fault(USER_VA + 0x5000, 0);
        let page = |gpa: u64| gpa | pte::PRESENT | pte::WRITABLE | pte::ACCESSED;
        for i in 0..4 {
            let va = USER_VA + i * 0x1000;
            f.write(ROOT_A, va, Level::L1, page(0x5000 + i * 0x1000));
            f.set_entry(ROOT_A, va, Level::L1, page(0x5000 + i * 0x1000))
                .unwrap();
            assert_eq!(
                f.leaf(va).frame(),
                Ok(FakeGuestMemory::backing(5 + i)),
                "page {i}"
            );
        }
        assert_eq!(f.paging.stats().eager_fills, 4);
        // The level-2 entry now leads to another level-1 table, unreported:
        // a report of what the old table said is not believed, whatever the
        // last walk found.
        let l2 = f.entry_gpa(ROOT_A, USER_VA, Level::L2, 0);
        let other = f.new_table();
        f.mem.set(l2, other | TABLE_FLAGS | pte::ACCESSED);
        f.set_entry(ROOT_A, USER_VA + 0x4000, Level::L1, page(0x9000))
            .unwrap();
        assert!(!f.leaf(USER_VA + 0x4000).is_present());
        // What the new table says is, with the new level's rights.
        f.mem.set(other + 8 * 4, page(0xa000));
        f.mem.set(l2, other | pte::PRESENT | pte::ACCESSED);
        f.set_entry(ROOT_A, USER_VA + 0x4000, Level::L1, page(0xa000))
            .unwrap();
        let leaf = f.leaf(USER_VA + 0x4000);
        assert_eq!(leaf.frame(), Ok(FakeGuestMemory::backing(0xa)));
        assert!(
            !leaf.flags().contains(PteFlags::WRITABLE),
            "read-only above"
        );
        f.teardown();
    }

    #[test]
    fn an_eager_fill_at_the_bound_is_left_to_the_fault() {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, USER_VA, 0x1_0000, 0);
        f.fault(USER_VA, 0);
        let far = USER_VA + (1 << 30);
        f.map(ROOT_A, far + 0x1000, 0x1_1000, 0);
        f.fault(far + 0x1000, 0);
        f.paging
            .set_entry(&mut f.mem, &mut f.frames, ROOT_A, far + 0x1000, 2, 0)
            .unwrap();
        let held = f.paging.stats().frames_held;
        f.paging.set_shadow_frame_limit(held);
        let value = 0x5000 | pte::PRESENT | pte::ACCESSED;
        f.write(ROOT_A, far, Level::L1, value);
        assert_eq!(f.set_entry(ROOT_A, far, Level::L1, value), Ok(()));
        assert!(!f.leaf(far).is_present());
        f.teardown();
    }

    #[test]
    fn kernel_half_changes_reach_every_root() {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, KERNEL_VA, 0x5000, 0);
        f.fault(KERNEL_VA, 0);
        f.paging
            .switch_root(&mut f.mem, &mut f.frames, ROOT_B)
            .unwrap();
        assert!(f.leaf(KERNEL_VA).is_present(), "shared kernel half");
        f.map(ROOT_B, KERNEL_VA, 0x6000, 0);
        f.set_entry(ROOT_B, KERNEL_VA, Level::L1, 0x6001).unwrap();
        f.paging
            .switch_root(&mut f.mem, &mut f.frames, ROOT_A)
            .unwrap();
        assert!(!f.leaf(KERNEL_VA).is_present());
        f.teardown();
    }

    #[test]
    fn bad_reports_are_refused() {
        let mut f = Fixture::new(PagingConfig::default());
        let slot = crate::paging::SWITCHER_SLOT_BASE;
        assert!(matches!(
            f.set_entry(ROOT_A, slot, Level::L4, 0x5001),
            Err(PagingError::SwitcherSlot { value: 0x5001, .. })
        ));
        assert_eq!(f.set_entry(ROOT_A, slot, Level::L4, 0), Ok(()));
        assert_eq!(
            f.paging
                .set_entry(&mut f.mem, &mut f.frames, ROOT_A, 0, 7, 0),
            Err(PagingError::BadLevel(7))
        );
        assert!(matches!(
            f.paging
                .set_entry(&mut f.mem, &mut f.frames, ROOT_A, 1 << 47, 1, 0),
            Err(PagingError::NonCanonical(_))
        ));
        assert!(matches!(
            f.paging
                .set_entry(&mut f.mem, &mut f.frames, 0x1234, 0, 1, 0),
            Err(PagingError::BadRoot { root: 0x1234, .. })
        ));
        assert!(matches!(
            f.set_entry(ROOT_A, USER_VA, Level::L2, MEMORY_SIZE | 1),
            Err(PagingError::OutsideGuestMemory { .. })
        ));
        f.teardown();
    }

    const RING: u64 = 0x8000;

    fn queue(f: &mut Fixture, n: u64, op: MmuOp) {
        for (i, word) in (0..).zip(op.encode()) {
            f.mem.set(RING + ring::slot_offset(n) + 8 * i, word);
        }
    }

    /// A page entry, accessed and writable, for the batch tests.
    fn page(gpa: u64) -> u64 {
        gpa | pte::PRESENT | pte::WRITABLE | pte::ACCESSED
    }

    /// A report for `ROOT_A`.
    fn set(vaddr: u64, level: u8, value: u64) -> MmuOp {
        MmuOp::SetEntry {
            root: ROOT_A,
            vaddr,
            level,
            value,
        }
    }

    /// A fixture with a ring, the upper levels above `USER_VA` accessed and
    /// its shadow level-1 table made (by a fault), and the guest entries of
    /// `USER_VA` and the page after it mapping 0x5000 and 0x6000.
    fn batch_fixture() -> Fixture {
        let mut f = Fixture::new(PagingConfig::default());
        f.paging.register_ring(&mut f.mem, RING).unwrap();
        f.map(ROOT_A, USER_VA + 0x5000, 0x1_0000, 0);
        f.fault(USER_VA + 0x5000, 0);
        f.write(ROOT_A, USER_VA, Level::L1, page(0x5000));
        f.write(ROOT_A, USER_VA + 0x1000, Level::L1, page(0x6000));
        f
    }

    #[test]
    fn a_shadow_table_an_op_frees_is_not_used_by_the_next() {
        let mut f = batch_fixture();
        let l2 = f.guest_entry(ROOT_A, USER_VA, Level::L2);
        // Replaced in place (the table is left for the next op); the
        // level-2 entry reported (its shadow table is freed); a leaf of
        // the same table, which must be mapped in a new one.
        queue(&mut f, 0, set(USER_VA, 1, page(0x5000)));
        queue(&mut f, 1, set(USER_VA, 2, l2));
        queue(&mut f, 2, set(USER_VA + 0x1000, 1, page(0x6000)));
        // The same with a flush between.
        queue(&mut f, 3, set(USER_VA, 1, page(0x5000)));
        queue(&mut f, 4, MmuOp::FlushUser);
        queue(&mut f, 5, set(USER_VA + 0x1000, 1, page(0x6000)));
        for head in [3, 6] {
            f.mem.set(RING + ring::HEAD_OFFSET, head);
            assert_eq!(f.paging.apply_ring(&mut f.mem, &mut f.frames), Ok(3));
            // Dropped with its table, or by the flush.
            assert!(!f.leaf(USER_VA).is_present());
            assert_eq!(
                f.leaf(USER_VA + 0x1000).frame(),
                Ok(FakeGuestMemory::backing(6))
            );
        }
        f.teardown();
    }

    /// Guest memory that another vCPU writes while a batch is applied:
    /// word `write.0` takes `write.1` just before ring slot `before_slot`
    /// is read.
    struct AnotherVcpu {
        mem: core::cell::RefCell<FakeGuestMemory>,
        slots_read: core::cell::Cell<u64>,
        before_slot: u64,
        write: (u64, u64),
    }

    impl GuestMemory for AnotherVcpu {
        fn size(&self) -> u64 {
            self.mem.borrow().size()
        }
        fn host_frame(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
            self.mem.borrow().host_frame(gpa)
        }
        fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, OutsideGuestMemory> {
            self.mem.borrow().read_u64(gpa)
        }
        fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> Result<(), OutsideGuestMemory> {
            self.mem.get_mut().write_u64(gpa, value)
        }
        fn zero_page(&mut self, page: GuestPhysAddr) -> Result<(), OutsideGuestMemory> {
            self.mem.get_mut().zero_page(page)
        }
        fn compare_exchange_u64(
            &mut self,
            gpa: GuestPhysAddr,
            current: u64,
            new: u64,
        ) -> Result<bool, OutsideGuestMemory> {
            self.mem.get_mut().compare_exchange_u64(gpa, current, new)
        }
        fn read_u64s(
            &self,
            gpa: GuestPhysAddr,
            words: &mut [u64],
        ) -> Result<(), OutsideGuestMemory> {
            if self.slots_read.get() == self.before_slot {
                let (at, value) = self.write;
                self.mem.borrow_mut().set(at, value);
            }
            self.slots_read.set(self.slots_read.get() + 1);
            self.mem.borrow().read_u64s(gpa, words)
        }
    }

    #[test]
    fn a_batch_reads_the_upper_entries_again_while_other_vcpus_run() {
        for vcpus in [1, 2] {
            let mut f = batch_fixture();
            if vcpus == 2 {
                f.paging
                    .add_vcpu(&mut f.frames, 1, GuestPhysAddr::new(ROOT_A))
                    .unwrap();
            }
            // Between the two reports another vCPU points the level-2
            // entry at a new table, which maps the second page elsewhere.
            let l2 = f.entry_gpa(ROOT_A, USER_VA, Level::L2, 0);
            let other = f.new_table();
            f.mem.set(other + 8, page(0x9000));
            queue(&mut f, 0, set(USER_VA, 1, page(0x5000)));
            queue(&mut f, 1, set(USER_VA + 0x1000, 1, page(0x6000)));
            f.mem.set(RING + ring::HEAD_OFFSET, 2);
            let mem = core::mem::replace(&mut f.mem, FakeGuestMemory::new(MEMORY_SIZE));
            let mut mem = AnotherVcpu {
                mem: core::cell::RefCell::new(mem),
                slots_read: core::cell::Cell::new(0),
                before_slot: 1,
                write: (l2, other | TABLE_FLAGS | pte::ACCESSED),
            };
            assert_eq!(f.paging.apply_ring(&mut mem, &mut f.frames), Ok(2));
            f.mem = mem.mem.into_inner();
            let second = f.leaf(USER_VA + 0x1000);
            if vcpus == 2 {
                // What the tables no longer say is not believed.
                assert!(!second.is_present());
            } else {
                // A guest of one vCPU cannot do this (it does not run
                // while its batch is applied), so the host read the upper
                // entries once, for the first report, and believed them.
                assert_eq!(second.frame(), Ok(FakeGuestMemory::backing(6)));
            }
            f.teardown();
        }
    }

    #[test]
    fn the_ring_applies_queued_ops_in_order() {
        let mut f = Fixture::new(PagingConfig::default());
        f.paging.register_ring(&mut f.mem, RING).unwrap();
        f.map(ROOT_A, USER_VA, 0x5000, 0);
        f.fault(USER_VA, 0);
        f.map(ROOT_A, USER_VA, 0x6000, pte::ACCESSED);
        let set = MmuOp::SetEntry {
            root: ROOT_A,
            vaddr: USER_VA,
            level: 1,
            value: 0x6021,
        };
        queue(&mut f, 0, MmuOp::Nop);
        queue(&mut f, 1, set);
        f.mem.set(RING + ring::HEAD_OFFSET, 2);
        assert_eq!(f.paging.apply_ring(&mut f.mem, &mut f.frames), Ok(2));
        assert_eq!(f.mem.get(RING + ring::TAIL_OFFSET), 2);
        assert_eq!(f.leaf(USER_VA).frame(), Ok(FakeGuestMemory::backing(6)));
        assert_eq!(f.paging.apply_ring(&mut f.mem, &mut f.frames), Ok(0));

        // A lying tail changes nothing; a head too far ahead is refused.
        f.mem.set(RING + ring::TAIL_OFFSET, 1000);
        f.mem
            .set(RING + ring::HEAD_OFFSET, 2 + ring::RING_SLOTS + 1);
        assert_eq!(
            f.paging.apply_ring(&mut f.mem, &mut f.frames),
            Err(PagingError::RingOverrun {
                head: 2 + ring::RING_SLOTS + 1,
                applied: 2
            })
        );
        // A full ring is applied in one call, and a bad op stops it there.
        for n in 2..2 + ring::RING_SLOTS {
            queue(&mut f, n, MmuOp::InvalidatePage { vaddr: USER_VA });
        }
        queue(&mut f, 10, MmuOp::InvalidatePage { vaddr: 1 << 47 });
        f.mem.set(RING + ring::HEAD_OFFSET, 2 + ring::RING_SLOTS);
        assert!(matches!(
            f.paging.apply_ring(&mut f.mem, &mut f.frames),
            Err(PagingError::NonCanonical(_))
        ));
        assert_eq!(f.mem.get(RING + ring::TAIL_OFFSET), 10);
        f.mem.set(RING + ring::slot_offset(10), 99);
        assert_eq!(
            f.paging.apply_ring(&mut f.mem, &mut f.frames),
            Err(PagingError::BadOp {
                slot: 10,
                error: pte::MmuOpError::UnknownOp(99)
            })
        );
        queue(&mut f, 10, MmuOp::FlushUser);
        assert_eq!(f.paging.apply_ring(&mut f.mem, &mut f.frames), Ok(56));
        assert_eq!(
            f.paging.register_ring(&mut f.mem, MEMORY_SIZE - 8),
            Err(PagingError::BadRing {
                ring: MEMORY_SIZE - 8
            })
        );
        f.teardown();
    }
}
