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
//! free pages after the image, [`map_page`] for 4 KiB pages,
//! [`new_address_space`] for a root of the guest's own (sharing the kernel
//! half, as guest_abi::pte requires), [`read_entry`] and [`set_entry`] for
//! one entry of an existing walk, and [`ring`] for batching reports through
//! the MMU ring of the shared page.

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
    /// No table at this level on the walk to the address.
    NoTable(u8),
}

#[cfg(any(target_os = "none", target_os = "hermit"))]
pub use bare::*;

#[cfg(any(target_os = "none", target_os = "hermit"))]
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
    fn write_and_report(
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
                write_and_report(root, slot, vaddr, level, entry)?;
            } else if level < 4 && entry & HUGE_PAGE != 0 {
                return Err(MapError::LargePageInTheWay(level));
            }
            table = entry & ADDRESS_MASK;
        }
        let slot = entry_slot(table, table_index(vaddr, 1));
        write_and_report(
            root,
            slot,
            vaddr,
            1,
            (page & ADDRESS_MASK) | flags | PRESENT,
        )
    }

    /// Where the entry at `level` for `vaddr` is, in the tables under
    /// `root`: `None` if a table above it is missing (or a large page
    /// covers the address).
    fn find_slot(root: u64, vaddr: u64, level: u8) -> Option<*mut u64> {
        let mut table = root;
        for upper in ((level + 1)..=4).rev() {
            // SAFETY: an entry of one of our own tables, in the start-up map.
            let entry = unsafe { entry_slot(table, table_index(vaddr, upper)).read_volatile() };
            if entry & PRESENT == 0 || (upper < 4 && entry & HUGE_PAGE != 0) {
                return None;
            }
            table = entry & ADDRESS_MASK;
        }
        Some(entry_slot(table, table_index(vaddr, level)))
    }

    /// The entry at `level` (1 = the page) that translates `vaddr` under
    /// `root`, as it is now in guest memory (with the accessed and dirty
    /// bits the host has set); `None` if a table above it is missing.
    pub fn read_entry(root: u64, vaddr: u64, level: u8) -> Option<u64> {
        // SAFETY: find_slot returns an entry of one of our own tables.
        find_slot(root, vaddr, level).map(|slot| unsafe { slot.read_volatile() })
    }

    /// Writes `value` into the entry at `level` for `vaddr` under `root`,
    /// whose tables above it must exist. With `report`, tells the host at
    /// once (`MmuOp::SetEntry`); without, the caller reports it (through
    /// the [`ring`]) before relying on it.
    ///
    /// # Safety
    ///
    /// As for [`map_page`]: the change must not pull memory out from under
    /// code that uses `vaddr`.
    pub unsafe fn set_entry(
        root: u64,
        vaddr: u64,
        level: u8,
        value: u64,
        report: bool,
    ) -> Result<(), MapError> {
        let slot = find_slot(root, vaddr, level).ok_or(MapError::NoTable(level + 1))?;
        if report {
            return write_and_report(root, slot, vaddr, level, value);
        }
        // SAFETY: an entry of our own table; the caller reports it.
        unsafe { slot.write_volatile(value) };
        Ok(())
    }

    /// A new address space: a zeroed top-level table whose kernel half
    /// (top-level slots 256 to 510) is a copy of the start-up root's, so it
    /// points at the same kernel tables, as guest_abi::pte requires of every
    /// address space. Its user half is empty. Nothing needs reporting: the
    /// host builds a shadow for it at the first `set_root`.
    pub fn new_address_space(frames: &mut FrameAllocator) -> Option<u64> {
        use guest_abi::pte::{KERNEL_HALF_FIRST_PML4_INDEX, SWITCHER_PML4_INDEX};
        let root = frames.allocate_zeroed()?;
        let startup = boot::params().initial_root;
        for index in KERNEL_HALF_FIRST_PML4_INDEX..SWITCHER_PML4_INDEX {
            // SAFETY: both are top-level tables in guest memory, reached
            // through the start-up map; `root` is ours alone so far.
            unsafe { entry_slot(root, index).write_volatile(entry_slot(startup, index).read()) };
        }
        Some(root)
    }

    /// The MMU ring in the shared page (guest_abi::pte::ring): reports
    /// queued in guest memory and applied with one hypercall.
    pub mod ring {
        use crate::{boot, hypercall};
        use guest_abi::hypercall::Error;
        use guest_abi::pte::MmuOp;
        use guest_abi::pte::ring::{HEAD_OFFSET, RING_SLOTS, TAIL_OFFSET, slot_offset};
        use guest_abi::shared::offset::MMU_RING;

        fn word(offset: u64) -> *mut u64 {
            (boot::shared_page() as *mut u8).wrapping_add((MMU_RING + offset) as usize) as *mut u64
        }

        /// Ops ever queued.
        pub fn head() -> u64 {
            // SAFETY: the ring is in the shared page, mapped for the
            // guest's life and 8-byte aligned; only we write `head`.
            unsafe { word(HEAD_OFFSET).read_volatile() }
        }

        /// Ops the host says it applied.
        pub fn tail() -> u64 {
            // SAFETY: as for `head`; the host writes `tail` while we are
            // stopped.
            unsafe { word(TAIL_OFFSET).read_volatile() }
        }

        /// Queues `op`, first applying the queued ones if the ring is full.
        ///
        /// # Safety
        ///
        /// As for `hypercall::mmu_op`: the op must report what the guest
        /// wrote in tables it means to use.
        pub unsafe fn queue(op: MmuOp) -> Result<(), Error> {
            let head = head();
            if head.wrapping_sub(tail()) >= RING_SLOTS {
                // SAFETY: the caller vouches for every queued op.
                unsafe { flush() }?;
            }
            let slot = word(slot_offset(head));
            for (i, w) in op.encode().into_iter().enumerate() {
                // SAFETY: the slot's four words are inside the ring.
                unsafe { slot.wrapping_add(i).write_volatile(w) };
            }
            // The slot is written before the head that publishes it.
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            // SAFETY: as for `head`.
            unsafe { word(HEAD_OFFSET).write_volatile(head.wrapping_add(1)) };
            Ok(())
        }

        /// Has the host apply every queued op; returns how many it applied.
        ///
        /// # Safety
        ///
        /// As for [`queue`].
        pub unsafe fn flush() -> Result<u64, Error> {
            // SAFETY: the caller vouches for the queued ops.
            unsafe { hypercall::flush_mmu_ring() }
        }
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
