//! The two hardware seams of the shadow page tables.
//!
//! The paging code touches memory in exactly two ways, and each is a trait
//! so that the same code runs in the kernel (on real frames, through the
//! host's direct map) and in `cargo test` (on the fakes in
//! `paging::testing`):
//!
//! - [`GuestMemory`]: the guest's memory, where the guest's own page tables
//!   live: read an entry (or a run of words, a ring slot), set its
//!   accessed/dirty bits, and say which host frame backs a guest page.
//! - [`ShadowFrames`]: the host frames the shadow tables are made of:
//!   allocate a zeroed one, free it, read and write one of its entries.
//!
//! Both are generic parameters of the paging functions, so the kernel's
//! implementations are inlined into the hot paths: no virtual calls.

use super::entry::TableIndex;
use crate::addr::{GuestPhysAddr, HostPhysAddr};

/// An access outside guest memory (or not 8-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideGuestMemory(pub GuestPhysAddr);

/// A guest's memory: guest-physical `[0, size())`, each 4 KiB page backed by
/// some host frame (not necessarily contiguous ones).
///
/// # Implementation contract
///
/// Every method must refuse (not panic on) an address outside
/// `[0, size())`: the paging code checks first, but a second line costs
/// nothing. Word accesses must be single, aligned 8-byte accesses, because
/// another virtual CPU of the same guest may be writing the same entry.
pub trait GuestMemory {
    /// The size of guest memory in bytes.
    fn size(&self) -> u64;

    /// The host frame backing the guest page that contains `gpa`.
    fn host_frame(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr>;

    /// Reads the aligned 64-bit word at `gpa`.
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, OutsideGuestMemory>;

    /// Writes the aligned 64-bit word at `gpa`.
    fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> Result<(), OutsideGuestMemory>;

    /// Fills the 4 KiB guest page at `page` (page-aligned) with zeros: a
    /// page the host maps for a zero-on-demand entry.
    fn zero_page(&mut self, page: GuestPhysAddr) -> Result<(), OutsideGuestMemory>;

    /// Atomically replaces the word at `gpa` with `new` if it still holds
    /// `current`; says whether it did. This is how the host sets accessed
    /// and dirty bits without losing a concurrent change by the guest.
    fn compare_exchange_u64(
        &mut self,
        gpa: GuestPhysAddr,
        current: u64,
        new: u64,
    ) -> Result<bool, OutsideGuestMemory>;

    /// Reads `words.len()` consecutive aligned 64-bit words from `gpa` on,
    /// as a slot of the MMU ring is read: one check for the lot where the
    /// memory allows, instead of one per word. Each word is still a single
    /// aligned access, as in [`Self::read_u64`], and the words are not one
    /// snapshot (another vCPU may write them meanwhile). Refused, naming
    /// the first word out of reach, if any word is outside guest memory or
    /// `gpa` is not aligned; `words` then holds nothing to believe.
    ///
    /// The default reads word by word; an implementation that can check a
    /// run of words at once overrides it.
    fn read_u64s(&self, gpa: GuestPhysAddr, words: &mut [u64]) -> Result<(), OutsideGuestMemory> {
        for (i, word) in (0u64..).zip(words.iter_mut()) {
            let at = gpa.checked_add(8 * i).ok_or(OutsideGuestMemory(gpa))?;
            *word = self.read_u64(at)?;
        }
        Ok(())
    }
}

/// The host frames that shadow tables are made of.
///
/// # Implementation contract
///
/// `read_entry` and `write_entry` are only ever called on frames this
/// allocator handed out and that were not freed since; `free` is called
/// exactly once per allocated frame. An implementation may treat anything
/// else as a host bug (the test fake panics).
pub trait ShadowFrames {
    /// A zeroed 4 KiB frame, or `None` when host memory is exhausted.
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr>;

    /// Returns a frame from [`Self::allocate_zeroed`].
    fn free(&mut self, frame: HostPhysAddr);

    /// Entry `index` of the table in `table`.
    fn read_entry(&self, table: HostPhysAddr, index: TableIndex) -> u64;

    /// Sets entry `index` of the table in `table`.
    fn write_entry(&mut self, table: HostPhysAddr, index: TableIndex, value: u64);

    /// Returns once each vCPU in `vcpus` (bit `k` for vCPU `k`) of the
    /// guest whose tables these are has left the guest at least once since
    /// the call began (see [`super::vcpus`]): then none of them holds a
    /// translation older than the tables as they are now. A guest of one
    /// vCPU is never asked.
    fn shoot_down(&mut self, vcpus: u64) {
        let _ = vcpus;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testing::FakeGuestMemory;

    #[test]
    fn a_run_of_words_reads_as_the_words_do() {
        let mut mem = FakeGuestMemory::new(1 << 16);
        for i in 0..8 {
            mem.set(0x1ff0 + 8 * i, 100 + i);
        }
        // Across a page boundary too.
        let mut words = [0; 4];
        assert_eq!(
            mem.read_u64s(GuestPhysAddr::new(0x1ff8), &mut words),
            Ok(())
        );
        assert_eq!(words, [101, 102, 103, 104]);
        assert_eq!(mem.read_u64s(GuestPhysAddr::new(0x1ff0), &mut []), Ok(()));
    }

    #[test]
    fn a_run_of_words_out_of_reach_is_refused() {
        let size = 1 << 16;
        let mem = FakeGuestMemory::new(size);
        let mut words = [0; 4];
        // The last word past the end: refused, naming that word.
        assert_eq!(
            mem.read_u64s(GuestPhysAddr::new(size - 24), &mut words),
            Err(OutsideGuestMemory(GuestPhysAddr::new(size)))
        );
        assert_eq!(
            mem.read_u64s(GuestPhysAddr::new(size), &mut words),
            Err(OutsideGuestMemory(GuestPhysAddr::new(size)))
        );
        // Misaligned, and wrapping around the address space.
        assert!(
            mem.read_u64s(GuestPhysAddr::new(0x1004), &mut words)
                .is_err()
        );
        assert!(
            mem.read_u64s(GuestPhysAddr::new(u64::MAX - 7), &mut words)
                .is_err()
        );
    }
}
