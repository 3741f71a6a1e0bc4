//! Addresses, one type per address space.
//!
//! A hypervisor juggles three kinds of address, and mixing them up is the
//! classic shadow-paging bug (a guest-physical frame number written into a
//! shadow entry maps *host* memory the guest was never given). So each kind
//! is its own newtype, and converting between them goes through code that
//! knows the mapping:
//!
//! - [`HostPhysAddr`]: a byte in the machine's RAM, what the CPU's page tables
//!   hold while a guest runs (the shadow's frames).
//! - [`GuestPhysAddr`]: a byte in a guest's idea of physical memory, what the
//!   guest's own page tables hold; offset 0 is the start of its memory.
//! - [`GuestVirtAddr`]: an address the guest's code uses; always canonical.
//!
//! Arithmetic is checked: an offset that overflows is an error, never a wrap,
//! because every offset ultimately comes from a guest.

use core::fmt;

/// Size of the base page, the unit of every frame the host hands out.
pub const PAGE_SIZE: u64 = 4096;

/// How many bits of a page offset there are.
pub const PAGE_SHIFT: u32 = 12;

macro_rules! physical_address {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Adds a byte offset, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(raw) => Some(Self(raw)),
                    None => None,
                }
            }

            /// The start of the 4 KiB page this address is in.
            pub const fn page_base(self) -> Self {
                Self(self.0 & !(PAGE_SIZE - 1))
            }

            /// The offset of this address inside its 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// Whether this address is the start of a 4 KiB page.
            pub const fn is_page_aligned(self) -> bool {
                self.page_offset() == 0
            }

            /// The page frame number (address / 4 KiB).
            pub const fn frame_number(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }

            /// The address of page frame number `pfn`, or `None` if it does not fit.
            pub const fn from_frame_number(pfn: u64) -> Option<Self> {
                if pfn > (u64::MAX >> PAGE_SHIFT) {
                    None
                } else {
                    Some(Self(pfn << PAGE_SHIFT))
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{:#x}"), self.0)
            }
        }
    };
}

physical_address!(
    /// A host-physical address: a byte of the machine's RAM.
    HostPhysAddr,
    "hpa"
);

physical_address!(
    /// A guest-physical address: a byte of a guest's memory, counted from the
    /// start of that guest's memory.
    GuestPhysAddr,
    "gpa"
);

/// A canonical guest-virtual address.
///
/// x86-64 has 48 virtual address bits; bits 63..48 must copy bit 47. An
/// address that does not is not an address at all (using it raises `#GP`),
/// so this type cannot hold one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct GuestVirtAddr(u64);

/// The value handed to [`GuestVirtAddr::try_new`] was not canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonCanonical(pub u64);

impl fmt::Display for NonCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} is not a canonical address", self.0)
    }
}

impl GuestVirtAddr {
    /// Accepts `raw` only if it is canonical.
    pub const fn try_new(raw: u64) -> Result<Self, NonCanonical> {
        if Self::new_truncate(raw).0 == raw {
            Ok(Self(raw))
        } else {
            Err(NonCanonical(raw))
        }
    }

    /// Makes `raw` canonical by copying bit 47 into bits 63..48, as the
    /// CPU's address arithmetic would. Use where the upper bits are known to
    /// be meaningless (for example, rebuilding an address from table indices).
    pub const fn new_truncate(raw: u64) -> Self {
        Self((((raw << 16) as i64) >> 16) as u64)
    }

    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The index into the page table at `level` (4 = the top-level PML4,
    /// 1 = the last-level table) that translates this address.
    pub const fn table_index(self, level: u8) -> usize {
        ((self.0 >> (PAGE_SHIFT + 9 * (level as u32 - 1))) & 0x1ff) as usize
    }

    /// Whether this address is in the switcher's slot: the top-level entry
    /// that belongs to the host in every address space, which a guest may
    /// never map, write or name as a stack or handler
    /// ([`guest_abi::pte::SWITCHER_PML4_INDEX`], the one place the number is
    /// written).
    pub const fn in_switcher_slot(self) -> bool {
        self.table_index(4) == guest_abi::pte::SWITCHER_PML4_INDEX
    }

    /// The start of the 4 KiB page this address is in.
    pub const fn page_base(self) -> Self {
        Self(self.0 & !(PAGE_SIZE - 1))
    }

    /// Whether this is a kernel-half address (bit 47 set).
    pub const fn is_upper_half(self) -> bool {
        self.0 & (1 << 47) != 0
    }
}

impl fmt::Debug for GuestVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gva({:#x})", self.0)
    }
}

impl fmt::Display for GuestVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gva:{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses_are_accepted_and_others_refused() {
        assert!(GuestVirtAddr::try_new(0).is_ok());
        assert!(GuestVirtAddr::try_new(0x0000_7fff_ffff_ffff).is_ok());
        assert!(GuestVirtAddr::try_new(0xffff_8000_0000_0000).is_ok());
        assert_eq!(
            GuestVirtAddr::try_new(0x0000_8000_0000_0000),
            Err(NonCanonical(0x0000_8000_0000_0000))
        );
        assert!(GuestVirtAddr::try_new(0x1234_0000_0000_0000).is_err());
    }

    #[test]
    fn truncation_sign_extends_bit_47() {
        assert_eq!(
            GuestVirtAddr::new_truncate(0x0000_8000_0000_1000).as_u64(),
            0xffff_8000_0000_1000
        );
        assert_eq!(
            GuestVirtAddr::new_truncate(0xabcd_0000_0000_1000).as_u64(),
            0x1000
        );
    }

    #[test]
    fn table_indices_take_nine_bits_per_level() {
        let va = GuestVirtAddr::try_new(0xffff_ff80_4020_1000).unwrap();
        assert_eq!(va.table_index(4), 511);
        assert_eq!(va.table_index(3), 1);
        assert_eq!(va.table_index(2), 1);
        assert_eq!(va.table_index(1), 1);
        assert!(va.is_upper_half());
    }

    #[test]
    fn physical_arithmetic_is_checked() {
        assert_eq!(HostPhysAddr::new(u64::MAX).checked_add(1), None);
        let a = GuestPhysAddr::new(0x1234);
        assert_eq!(a.page_base(), GuestPhysAddr::new(0x1000));
        assert_eq!(a.page_offset(), 0x234);
        assert_eq!(a.frame_number(), 1);
        assert_eq!(
            GuestPhysAddr::from_frame_number(5),
            Some(GuestPhysAddr::new(0x5000))
        );
        assert_eq!(HostPhysAddr::from_frame_number(u64::MAX), None);
    }
}
