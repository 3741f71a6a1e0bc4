//! The two hardware seams of the shadow page tables.
//!
//! The paging code touches memory in exactly two ways, and each is a trait
//! so that the same code runs in the kernel (on real frames, through the
//! host's direct map) and in `cargo test` (on the fakes in
//! `paging::testing`):
//!
//! - [`GuestMemory`]: the guest's memory, where the guest's own page tables
//!   live: read an entry, set its accessed/dirty bits, and say which host
//!   frame backs a guest page.
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
