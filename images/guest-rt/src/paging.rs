//! Page tables: mapping pages in the guest's own tables and telling the
//! host (guest_abi::pte).
//!
//! The guest's tables hold guest-physical addresses, and the CPU never uses
//! them: the host reads them to build its shadow. So every change to an
//! entry is a write in guest memory *and* a report to the host
//! (`MmuOp::SetEntry`: the root, a virtual address the entry translates,
//! its level, its new value). Table pages are reached through the start-up
//! map (guest-virtual `KERNEL_OFFSET + p`), which covers guest memory up to
//! [`STARTUP_MAP_BYTES`].
//!
//! This is as much paging as the guests here need: one bump allocator for
//! free pages after the image, and [`map_page`] for 4 KiB pages.

use guest_abi::pte::{ACCESSED, ADDRESS_MASK, PRESENT, USER, WRITABLE};

/// Bytes of guest memory the start-up map shows (guest_abi::boot).
pub const STARTUP_MAP_BYTES: u64 = 1 << 30;

/// Bytes of a page.
pub const PAGE_BYTES: u64 = 4096;

/// The index of the entry at `level` (4 = top) that translates `vaddr`.
pub const fn table_index(vaddr: u64, level: u8) -> usize {
    ((vaddr >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

/// A non-leaf entry pointing at the table at `table_gpa`. It allows
/// everything (writes, and user access if `user`): the leaf says what is
/// really allowed, since rights are the intersection along the walk.
/// ACCESSED is set because the host would set it at the first walk anyway.
pub const fn table_entry(table_gpa: u64, user: bool) -> u64 {
    let user_bit = if user { USER } else { 0 };
    (table_gpa & ADDRESS_MASK) | PRESENT | WRITABLE | ACCESSED | user_bit
}

/// Hands out free pages of guest memory, one after another, never back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAllocator {
    next: u64,
    end: u64,
}

impl FrameAllocator {
    /// Pages from `start` (rounded up to a page) to `end`, cut at the end
    /// of the start-up map so every page handed out can be written.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            next: start.next_multiple_of(PAGE_BYTES),
            end: end.min(STARTUP_MAP_BYTES),
        }
    }

    /// The guest-physical address of a free page, if one is left.
    pub fn allocate(&mut self) -> Option<u64> {
        let page = self.next;
        if page.checked_add(PAGE_BYTES)? > self.end {
            return None;
        }
        self.next += PAGE_BYTES;
        Some(page)
    }
}

/// Why [`map_page`] could not map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No free page left for a table.
    OutOfMemory,
    /// A large page already covers the address at this level.
    LargePageInTheWay(u8),
    /// The host refused to hear of an entry.
    Refused(guest_abi::hypercall::Error),
}

#[cfg(target_os = "none")]
pub use bare::*;

#[cfg(target_os = "none")]
mod bare {
    use super::*;
    use crate::boot::{self, kernel_virtual};
    use crate::hypercall;
    use guest_abi::pte::{HUGE_PAGE, MmuOp};

    impl FrameAllocator {
        /// Every page after the loaded image (from the boot parameters).
        pub fn after_image() -> Self {
            let params = boot::params();
            Self::new(params.image_end, params.memory_bytes)
        }

        /// A free page, zeroed.
        pub fn allocate_zeroed(&mut self) -> Option<u64> {
            let page = self.allocate()?;
            // SAFETY: the page is free guest memory (after the image,
            // handed out once) inside the start-up map, which is writable.
            unsafe { (kernel_virtual(page) as *mut u8).write_bytes(0, PAGE_BYTES as usize) };
            Some(page)
        }
    }

    /// The entry `index` of the table at guest-physical `table`.
    fn entry_slot(table: u64, index: usize) -> *mut u64 {
        (kernel_virtual(table) as *mut u64).wrapping_add(index)
    }

    /// Writes `value` into the entry at `level` for `vaddr` and reports it.
    fn set_entry(
        root: u64,
        slot: *mut u64,
        vaddr: u64,
        level: u8,
        value: u64,
    ) -> Result<(), MapError> {
        // SAFETY: `slot` is an entry of one of our tables, in the start-up
        // map; volatile, because the host reads it behind the compiler.
        unsafe { slot.write_volatile(value) };
        let op = MmuOp::SetEntry {
            root,
            vaddr,
            level,
            value,
        };
        // SAFETY: we report exactly the entry we just wrote.
        unsafe { hypercall::mmu_op(op) }.map_err(MapError::Refused)?;
        Ok(())
    }

    /// Maps the 4 KiB page at guest-virtual `vaddr` to guest-physical
    /// `page` with the leaf `flags` (PRESENT added), in the address space
    /// whose top-level table is at guest-physical `root`, making missing
    /// tables from `frames`. Every entry written is reported to the host.
    ///
    /// # Safety
    ///
    /// `root` must be a live table tree of this guest, and the mapping must
    /// not pull memory out from under code that uses `vaddr`.
    pub unsafe fn map_page(
        root: u64,
        vaddr: u64,
        page: u64,
        flags: u64,
        frames: &mut FrameAllocator,
    ) -> Result<(), MapError> {
        let user = flags & USER != 0;
        let mut table = root;
        for level in (2..=4).rev() {
            let slot = entry_slot(table, table_index(vaddr, level));
            // SAFETY: an entry of our own table (see set_entry).
            let mut entry = unsafe { slot.read_volatile() };
            if entry & PRESENT == 0 || (user && entry & USER == 0) {
                let next = if entry & PRESENT == 0 {
                    frames.allocate_zeroed().ok_or(MapError::OutOfMemory)?
                } else {
                    entry & ADDRESS_MASK
                };
                entry = table_entry(next, user);
                set_entry(root, slot, vaddr, level, entry)?;
            } else if level < 4 && entry & HUGE_PAGE != 0 {
                return Err(MapError::LargePageInTheWay(level));
            }
            table = entry & ADDRESS_MASK;
        }
        let slot = entry_slot(table, table_index(vaddr, 1));
        set_entry(
            root,
            slot,
            vaddr,
            1,
            (page & ADDRESS_MASK) | flags | PRESENT,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_pick_nine_bits_per_level() {
        let vaddr = 0xffff_8000_4020_3000u64;
        assert_eq!(table_index(vaddr, 4), 256);
        assert_eq!(table_index(vaddr, 3), 1);
        assert_eq!(table_index(vaddr, 2), 1);
        assert_eq!(table_index(vaddr, 1), 3);
        assert_eq!(table_index(0x40_0000, 2), 2);
    }

    #[test]
    fn table_entries_allow_everything_the_leaf_may_restrict() {
        let entry = table_entry(0x5000, true);
        assert_eq!(entry & ADDRESS_MASK, 0x5000);
        assert_eq!(entry & !ADDRESS_MASK, PRESENT | WRITABLE | ACCESSED | USER);
        assert_eq!(table_entry(0x5000, false) & USER, 0);
    }

    #[test]
    fn the_allocator_rounds_up_and_stops_at_the_end_and_the_map() {
        let mut frames = FrameAllocator::new(0x10_0001, 0x10_3000);
        assert_eq!(frames.allocate(), Some(0x10_1000));
        assert_eq!(frames.allocate(), Some(0x10_2000));
        assert_eq!(frames.allocate(), None);
        let mut big = FrameAllocator::new(STARTUP_MAP_BYTES - PAGE_BYTES, u64::MAX);
        assert!(big.allocate().is_some());
        assert_eq!(big.allocate(), None);
    }
}
