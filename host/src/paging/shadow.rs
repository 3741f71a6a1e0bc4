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

impl ShadowPaging {
    /// A fresh zeroed shadow table, counted; refused at the guest's bound
    /// ([`ShadowPaging::shadow_frame_limit`]) with
    /// [`PagingError::ShadowLimit`], which the callers at a safe point (no
    /// walk of the shadow under way) answer by reclaiming and trying again.
    pub(super) fn allocate_table<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vaddr: GuestVirtAddr,
    ) -> Result<HostPhysAddr, PagingError> {
        if self.stats.frames_held >= self.frame_limit {
            return Err(PagingError::ShadowLimit {
                limit: self.frame_limit,
                vaddr,
            });
        }
        let frame = frames
            .allocate_zeroed()
            .ok_or(PagingError::OutOfFrames { vaddr })?;
        self.stats.frames_held += 1;
        Ok(frame)
    }

    /// Gives one shadow frame back, counted.
    pub(super) fn free_frame<F: ShadowFrames>(&mut self, frames: &mut F, frame: HostPhysAddr) {
        frames.free(frame);
        self.stats.frames_held = self.stats.frames_held.saturating_sub(1);
    }

    /// Frees `table`, a shadow table at `level` below the top, and every
    /// table below it. Depth is bounded by the level (at most three).
    pub(super) fn free_table_tree<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        table: HostPhysAddr,
        level: Level,
    ) {
        if let Some(below) = level.below() {
            for index in TableIndex::all() {
                let entry = ShadowEntry::from_raw(frames.read_entry(table, index));
                if let ShadowEntryKind::Table(child) = entry.decode(level) {
                    self.free_table_tree(frames, child, below);
                }
            }
        }
        self.free_frame(frames, table);
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
            frames.write_entry(root, index, entry.raw());
        }
    }

    /// Copies the shared kernel half into a new root's top-level table.
    pub(super) fn copy_kernel_half<F: ShadowFrames>(&self, frames: &mut F, root: HostPhysAddr) {
        for (offset, entry) in self.kernel_half.iter().enumerate() {
            if let Some(index) = TableIndex::new(KERNEL_HALF_FIRST_PML4_INDEX + offset) {
                frames.write_entry(root, index, entry.raw());
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
                        frames.write_entry(table, index, link.raw());
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
        frames.write_entry(table, TableIndex::of(vaddr, Level::L1), leaf.raw());
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
        } else {
            frames.write_entry(table, index, ShadowEntry::ABSENT.raw());
        }
        if let (ShadowEntryKind::Table(child), Some(below)) = (entry.decode(level), level.below()) {
            self.free_table_tree(frames, child, below);
        }
    }

    /// Frees everything below the user-half slots of `root`.
    pub(super) fn flush_user_half<F: ShadowFrames>(&mut self, frames: &mut F, root: HostPhysAddr) {
        for index in TableIndex::range(0, KERNEL_HALF_FIRST_PML4_INDEX) {
            let entry = ShadowEntry::from_raw(frames.read_entry(root, index));
            if let ShadowEntryKind::Table(child) = entry.decode(Level::L4) {
                frames.write_entry(root, index, ShadowEntry::ABSENT.raw());
                self.free_table_tree(frames, child, Level::L3);
            }
        }
    }

    /// Frees the shared kernel half and clears it from every root.
    pub(super) fn drop_kernel_half<F: ShadowFrames>(&mut self, frames: &mut F) {
        for offset in 0..KERNEL_HALF_SLOTS {
            let Some(index) = TableIndex::new(KERNEL_HALF_FIRST_PML4_INDEX + offset) else {
                continue;
            };
            let entry = self.kernel_half.get(offset).copied().unwrap_or_default();
            if let ShadowEntryKind::Table(child) = entry.decode(Level::L4) {
                self.set_in_every_root(frames, index, ShadowEntry::ABSENT);
                self.free_table_tree(frames, child, Level::L3);
            }
        }
    }
}
