//! # `switcher`: where host and guest meet
//!
//! The switcher is the only piece of the host a guest ever has mapped. It
//! lives in one fixed top-level slot at the top of the virtual address space,
//! the same in the host's tables and in every shadow root, so the code that
//! changes CR3 keeps running across the change (lguest's top 4 MB, moved to
//! long mode).
//!
//! This crate fixes where that slot is; the world-switch code itself joins
//! it with the first guest.
#![no_std]
#![forbid(unsafe_code)]

/// The index of the top-level (PML4) entry that holds the switcher: the last
/// one, so the switcher sits in the top 512 GiB of the address space.
pub const SLOT_PML4_INDEX: usize = 511;

/// The first virtual address of the switcher slot.
pub const SLOT_BASE: u64 = 0xffff_ff80_0000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_base_is_the_start_of_its_pml4_entry() {
        assert_eq!((SLOT_BASE >> 39) & 0x1ff, SLOT_PML4_INDEX as u64);
        assert_eq!(SLOT_BASE & ((1 << 39) - 1), 0);
    }
}
