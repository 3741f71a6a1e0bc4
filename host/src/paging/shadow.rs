//! The shadow tables themselves: allocating, finding, clearing and freeing
//! them, with every frame counted in [`super::PagingStats::frames_held`].
//!
//! Ownership is simple and strict. Each cached root owns its top-level
//! frame and the tables below its user-half slots (0..=255). The guest as a
//! whole owns the tables below the kernel-half slots (256..=510), which
//! every root points at (see `kernel_half` in [`ShadowPaging`]). Slot 511
//! points at the switcher's table, which the kernel owns: it is never
//! followed, counted or freed here. A table is freed when the entry that
//! owns it is cleared, together with everything below it, so each frame
//! goes back exactly once.

use super::entry::{Level, ShadowEntry, ShadowEntryKind, TableIndex};
use super::error::PagingError;
use super::hw::ShadowFrames;
use super::{KERNEL_HALF_SLOTS, ShadowPaging};
use crate::addr::{GuestVirtAddr, HostPhysAddr};
use guest_abi::pte::{KERNEL_HALF_FIRST_PML4_INDEX, SWITCHER_PML4_INDEX};

/// The most entries in use for which a freed table is cleared entry by
/// entry and kept as a spare; a fuller one goes back to the allocator,
/// which zeroes the whole frame faster than clearing that many entries.
const ZEROING_WORTH_IT: u32 = 64;

impl ShadowPaging {
    /// A fresh zeroed shadow table, counted; refused at the guest's bound
    /// ([`ShadowPaging::shadow_frame_limit`]) with
    /// [`PagingError::ShadowLimit`], which the callers at a safe point (no
    /// walk of the shadow under way) answer by reclaiming and trying again.
    /// A spare table ([`super::tables`]) is taken first: it is zeroed
    /// already, where a frame from the allocator must be zeroed whole.
    pub(super) fn allocate_table<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vaddr: GuestVirtAddr,
    ) -> Result<HostPhysAddr, PagingError> {
        if self.stats.frames_held >= self.frame_limit && !self.shoot_down_now(frames) {
            return Err(PagingError::ShadowLimit {
                limit: self.frame_limit,
                vaddr,
            });
        }
        let frame = match self.book.take_spare() {
            Some(spare) => spare,
            None => frames
                .allocate_zeroed()
                .ok_or(PagingError::OutOfFrames { vaddr })?,
        };
        if self.book.insert(frame).is_err() {
            // No heap left for the table's notes: as good as no frame.
            frames.free(frame);
            return Err(PagingError::OutOfFrames { vaddr });
        }
        self.stats.frames_held += 1;
        Ok(frame)
    }

    /// Gives back `table`, whose notes are already dropped: at once, or,
    /// if another vCPU may still walk it, after the next shoot-down
    /// ([`super::vcpus`]).
    fn release_table<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        zeroed: bool,
    ) {
        if self.hold_for != 0 {
            self.held_tables.push(super::vcpus::HeldTable {
                frame: table,
                zeroed,
            });
            self.owe_shootdown(self.hold_for);
            return;
        }
        self.release_now(frames, table, zeroed);
    }

    /// Gives back `table`, counted: kept as a spare if `zeroed` and there
    /// is room under the bound (spares count against it too), else to the
    /// allocator.
    pub(super) fn release_now<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        zeroed: bool,
    ) {
        self.stats.frames_held = self.stats.frames_held.saturating_sub(1);
        let room = self.stats.frames_held + (self.book.spare_count() as u64) < self.frame_limit;
        let unkept = if zeroed && room {
            self.book.keep_spare(table)
        } else {
            Some(table)
        };
        if let Some(table) = unkept {
            frames.free(table);
        }
    }

    /// Writes entry `index` of shadow table `table`, keeping the table's
    /// bitmap of entries in use exact. Every write of a shadow entry goes
    /// through here.
    pub(super) fn write_shadow<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        index: TableIndex,
        entry: ShadowEntry,
    ) {
        frames.write_entry(table, index, entry.raw());
        self.book.note(table, index, entry.raw() != 0);
    }

    /// Frees `table`, a shadow table at `level`, and every table below it,
    /// visiting only the entries its bitmap says are in use (and clearing
    /// them, so the table goes back zeroed). A table with more entries in
    /// use than [`ZEROING_WORTH_IT`] goes to the allocator as it is: it
    /// would cost more to clear entry by entry than to zero afresh. Depth
    /// is bounded by the level (at most three below a root).
    pub(super) fn free_table_tree<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        level: Level,
    ) {
        let populated = self.book.remove(table);
        let mut cleared = 0;
        for index in populated.all() {
            let entry = ShadowEntry::from_raw(frames.read_entry(table, index));
            // Past the limit the table goes to the allocator uncleared.
            cleared += 1;
            if cleared <= ZEROING_WORTH_IT {
                frames.write_entry(table, index, ShadowEntry::ABSENT.raw());
            }
            if let (ShadowEntryKind::Table(child), Some(below)) =
                (entry.decode(level), level.below())
            {
                self.free_table_tree(frames, child, below);
            }
        }
        self.release_table(frames, table, cleared <= ZEROING_WORTH_IT);
    }

    /// Frees a root's top-level table with its user half; the kernel half
    /// below it is shared and stays, the switcher's table is the kernel's.
    pub(super) fn free_root<F: ShadowFrames>(&mut self, frames: &mut F, root: HostPhysAddr) {
        self.flush_user_half(frames, root);
        let populated = self.book.remove(root);
        let mut cleared = 0;
        for index in populated.all() {
            cleared += 1;
            if cleared > ZEROING_WORTH_IT {
                break;
            }
            frames.write_entry(root, index, ShadowEntry::ABSENT.raw());
        }
        self.release_table(frames, root, cleared <= ZEROING_WORTH_IT);
    }

    /// Whether a top-level index is in the shared kernel half.
    pub(super) fn is_kernel_slot(index: TableIndex) -> bool {
        (KERNEL_HALF_FIRST_PML4_INDEX..SWITCHER_PML4_INDEX).contains(&index.as_usize())
    }

    /// Writes top-level entry `index` of every cached root: how a change to
    /// the shared kernel half reaches them all.
    fn set_in_every_root<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        index: TableIndex,
        entry: ShadowEntry,
    ) {
        if let Some(shared) = self
            .kernel_half
            .get_mut(index.as_usize().wrapping_sub(KERNEL_HALF_FIRST_PML4_INDEX))
        {
            *shared = entry;
            // A kernel-half slot filled or dropped: the guest's table
            // behind it may be new.
            self.kernel_tables = None;
        }
        for root in self.roots.all_frames() {
            self.write_shadow(frames, root, index, entry);
        }
        if !self.parked.is_empty() {
            for vcpu in 0..self.parked.len() {
                let roots = self.parked[vcpu].as_ref().map(|v| v.roots.all_frames());
                for root in roots.into_iter().flatten() {
                    self.write_shadow(frames, root, index, entry);
                }
            }
        }
    }

    /// Copies the shared kernel half into a new root's top-level table
    /// (zeroed: only the slots in use are written).
    pub(super) fn copy_kernel_half<F: ShadowFrames>(&mut self, frames: &mut F, root: HostPhysAddr) {
        for offset in 0..KERNEL_HALF_SLOTS {
            let entry = self.kernel_half.get(offset).copied().unwrap_or_default();
            if let (true, Some(index)) = (
                entry.is_present(),
                TableIndex::new(KERNEL_HALF_FIRST_PML4_INDEX + offset),
            ) {
                self.write_shadow(frames, root, index, entry);
            }
        }
    }

    /// The level-1 shadow table that translates `vaddr` under `root`,
    /// allocating the missing levels on the way down.
    pub(super) fn leaf_table_for<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        root: HostPhysAddr,
        vaddr: GuestVirtAddr,
    ) -> Result<HostPhysAddr, PagingError> {
        let mut table = root;
        for level in [Level::L4, Level::L3, Level::L2] {
            let index = TableIndex::of(vaddr, level);
            let entry = ShadowEntry::from_raw(frames.read_entry(table, index));
            table = match entry.decode(level) {
                ShadowEntryKind::Table(next) => next,
                _ => {
                    let next = self.allocate_table(frames, vaddr)?;
                    let link = ShadowEntry::table(next);
                    if level == Level::L4 && Self::is_kernel_slot(index) {
                        self.set_in_every_root(frames, index, link);
                    } else {
                        self.write_shadow(frames, table, index, link);
                    }
                    next
                }
            };
        }
        Ok(table)
    }

    /// The shadow table at `level` that translates `vaddr` under `root`, if
    /// the levels above it exist.
    pub(super) fn find_table<F: ShadowFrames>(
        frames: &F,
        root: HostPhysAddr,
        vaddr: GuestVirtAddr,
        level: Level,
    ) -> Option<HostPhysAddr> {
        let mut table = root;
        for upper in Level::TOP_DOWN {
            if upper == level {
                return Some(table);
            }
            let entry =
                ShadowEntry::from_raw(frames.read_entry(table, TableIndex::of(vaddr, upper)));
            match entry.decode(upper) {
                ShadowEntryKind::Table(next) => table = next,
                _ => return None,
            }
        }
        None
    }

    /// The shadow leaf for `vaddr` under `root` (absent if any level is).
    pub fn shadow_leaf<F: ShadowFrames>(
        frames: &F,
        root: HostPhysAddr,
        vaddr: GuestVirtAddr,
    ) -> ShadowEntry {
        match Self::find_table(frames, root, vaddr, Level::L1) {
            Some(table) => {
                ShadowEntry::from_raw(frames.read_entry(table, TableIndex::of(vaddr, Level::L1)))
            }
            None => ShadowEntry::ABSENT,
        }
    }

    /// Maps the 4 KiB page of `vaddr` in the running root with `leaf`,
    /// reclaiming at the bound: first gently (the other roots, more if that
    /// freed too little), then everything. Fails only if even an emptied
    /// shadow cannot hold this one mapping.
    pub(super) fn map_page_reclaiming<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vaddr: GuestVirtAddr,
        leaf: ShadowEntry,
    ) -> Result<(), PagingError> {
        for everything in [false, true] {
            let root = self.roots.current().shadow;
            match self.map_page(frames, root, vaddr, leaf) {
                Err(PagingError::ShadowLimit { .. }) => self.reclaim(frames, everything),
                other => return other,
            }
        }
        let root = self.roots.current().shadow;
        self.map_page(frames, root, vaddr, leaf)
    }

    /// Maps the 4 KiB page of `vaddr` under `root` with `leaf`.
    pub(super) fn map_page<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        root: HostPhysAddr,
        vaddr: GuestVirtAddr,
        leaf: ShadowEntry,
    ) -> Result<(), PagingError> {
        let table = self.leaf_table_for(frames, root, vaddr)?;
        self.write_shadow(frames, table, TableIndex::of(vaddr, Level::L1), leaf);
        Ok(())
    }

    /// Clears the shadow entry at `level` that translates `vaddr` under
    /// `root`, freeing whatever tables hung below it. A kernel-half
    /// top-level entry is cleared in every root.
    pub(super) fn clear_entry<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        root: HostPhysAddr,
        vaddr: GuestVirtAddr,
        level: Level,
    ) {
        let index = TableIndex::of(vaddr, level);
        if level == Level::L4 && index.as_usize() == SWITCHER_PML4_INDEX {
            return;
        }
        let Some(table) = Self::find_table(frames, root, vaddr, level) else {
            return;
        };
        let entry = ShadowEntry::from_raw(frames.read_entry(table, index));
        if level == Level::L4 && Self::is_kernel_slot(index) {
            self.set_in_every_root(frames, index, ShadowEntry::ABSENT);
        } else if entry.raw() != 0 {
            self.write_shadow(frames, table, index, ShadowEntry::ABSENT);
        }
        if let (ShadowEntryKind::Table(child), Some(below)) = (entry.decode(level), level.below()) {
            // The kernel half's tables are under every vCPU's roots.
            let shared = if vaddr.is_upper_half() {
                self.other_vcpus()
            } else {
                0
            };
            self.holding_for(shared, |s| s.free_table_tree(frames, child, below));
        }
    }

    /// Frees everything below the user-half slots of `root`: only the
    /// slots its bitmap says are in use are read.
    pub(super) fn flush_user_half<F: ShadowFrames>(&mut self, frames: &mut F, root: HostPhysAddr) {
        let populated = self.book.populated(root);
        for index in populated.in_range(0, KERNEL_HALF_FIRST_PML4_INDEX) {
            let entry = ShadowEntry::from_raw(frames.read_entry(root, index));
            self.write_shadow(frames, root, index, ShadowEntry::ABSENT);
            if let ShadowEntryKind::Table(child) = entry.decode(Level::L4) {
                self.free_table_tree(frames, child, Level::L3);
            }
        }
    }

    /// Frees the shared kernel half and clears it from every root.
    pub(super) fn drop_kernel_half<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.kernel_half_changed();
        for offset in 0..KERNEL_HALF_SLOTS {
            let Some(index) = TableIndex::new(KERNEL_HALF_FIRST_PML4_INDEX + offset) else {
                continue;
            };
            let entry = self.kernel_half.get(offset).copied().unwrap_or_default();
            if let ShadowEntryKind::Table(child) = entry.decode(Level::L4) {
                self.set_in_every_root(frames, index, ShadowEntry::ABSENT);
                let shared = self.other_vcpus();
                self.holding_for(shared, |s| s.free_table_tree(frames, child, Level::L3));
            }
        }
    }
}
