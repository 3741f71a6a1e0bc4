//! What can be wrong with what a guest hands a virtio device, each case
//! with the words the host prints when it ends the guest for it.
//!
//! [`QueueError`] is one ring's problem, found while reading its layout,
//! its available ring or a descriptor chain; [`DeviceError`] is what a
//! device reports: which device, which queue, and the problem, displayed
//! as `virtio-net queue 0: descriptor 5 loops back to 2`.

use crate::addr::GuestPhysAddr;
use core::fmt;

/// The three areas of a split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The driver area: the available ring.
    Available,
    /// The device area: the used ring.
    Used,
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Descriptors => "descriptor table",
            Self::Available => "available ring",
            Self::Used => "used ring",
        })
    }
}

/// A malformed queue, ring or descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue's size is zero, not a power of two, or above its maximum.
    BadSize {
        /// The size the driver asked for.
        size: u16,
        /// The queue's maximum.
        max: u16,
    },
    /// A ring's address is not aligned as virtio requires.
    Misaligned {
        /// Which ring.
        ring: Ring,
        /// Its address.
        at: GuestPhysAddr,
        /// The alignment it needs.
        align: u64,
    },
    /// A ring does not fit inside guest memory.
    RingOutsideMemory {
        /// Which ring.
        ring: Ring,
        /// Its address.
        at: GuestPhysAddr,
        /// Its size.
        bytes: u64,
    },
    /// The available index ran further ahead of the last one the device
    /// saw than the ring has slots.
    AvailTooFarAhead {
        /// The available ring's index now.
        avail_idx: u16,
        /// The index the device had reached.
        seen: u16,
        /// The queue's size.
        size: u16,
    },
    /// The available ring names a head past the descriptor table.
    HeadOutOfRange {
        /// The head it names.
        head: u16,
        /// The queue's size.
        size: u16,
    },
    /// A descriptor's `next` is past the descriptor table.
    NextOutOfRange {
        /// The descriptor.
        descriptor: u16,
        /// Its `next`.
        next: u16,
        /// The queue's size.
        size: u16,
    },
    /// A chain comes back to a descriptor it already went through.
    Loop {
        /// The descriptor whose `next` closes the loop.
        descriptor: u16,
        /// The descriptor it leads back to.
        back_to: u16,
    },
    /// A chain has more descriptors than the queue (only a loop can do
    /// that, and loops are caught first: a second line of defence).
    ChainTooLong {
        /// The chain's head.
        head: u16,
        /// The queue's size.
        size: u16,
    },
    /// A descriptor is indirect, and indirect descriptors were not
    /// negotiated.
    Indirect {
        /// The descriptor.
        descriptor: u16,
    },
    /// A descriptor's buffer is not inside guest memory.
    BufferOutsideMemory {
        /// The descriptor.
        descriptor: u16,
        /// Its address.
        addr: GuestPhysAddr,
        /// Its length.
        len: u32,
    },
    /// A descriptor takes its chain past the bytes a chain may hold.
    ChainTooLarge {
        /// The descriptor.
        descriptor: u16,
        /// The chain's bytes up to and including it.
        bytes: u64,
    },
    /// A device-readable buffer on a queue whose buffers the device writes
    /// (a receive queue): the device would have to write a read-only buffer.
    ReadOnlyBuffer {
        /// The descriptor.
        descriptor: u16,
    },
    /// A device-writable buffer on a queue whose buffers the device only
    /// reads (a transmit queue).
    WriteOnlyBuffer {
        /// The descriptor.
        descriptor: u16,
    },
    /// An access outside guest memory after the checks passed (the guest
    /// cannot cause it; it is here so that nothing can panic).
    Memory(GuestPhysAddr),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadSize { size, max } => write!(
                f,
                "size {size} is not a power of two between 1 and the queue's maximum {max}"
            ),
            Self::Misaligned { ring, at, align } => {
                write!(f, "{ring} at {at} is not {align}-byte aligned")
            }
            Self::RingOutsideMemory { ring, at, bytes } => {
                write!(f, "{ring} at {at} ({bytes} bytes) is outside guest memory")
            }
            Self::AvailTooFarAhead {
                avail_idx,
                seen,
                size,
            } => write!(
                f,
                "available index {avail_idx} is more than the queue's {size} entries ahead of {seen}"
            ),
            Self::HeadOutOfRange { head, size } => write!(
                f,
                "available ring names descriptor {head}, past the table of {size}"
            ),
            Self::NextOutOfRange {
                descriptor,
                next,
                size,
            } => write!(
                f,
                "descriptor {descriptor} continues at {next}, past the table of {size}"
            ),
            Self::Loop {
                descriptor,
                back_to,
            } => write!(f, "descriptor {descriptor} loops back to {back_to}"),
            Self::ChainTooLong { head, size } => write!(
                f,
                "the chain from descriptor {head} is longer than the queue's {size} descriptors"
            ),
            Self::Indirect { descriptor } => write!(
                f,
                "descriptor {descriptor} is indirect, and indirect descriptors were not negotiated"
            ),
            Self::BufferOutsideMemory {
                descriptor,
                addr,
                len,
            } => write!(
                f,
                "descriptor {descriptor}'s buffer at {addr} ({len} bytes) is outside guest memory"
            ),
            Self::ChainTooLarge { descriptor, bytes } => write!(
                f,
                "descriptor {descriptor} takes its chain to {bytes} bytes, more than the {} a chain may hold",
                super::MAX_CHAIN_BYTES
            ),
            Self::ReadOnlyBuffer { descriptor } => write!(
                f,
                "descriptor {descriptor} is device-readable on a queue the device writes (a write into a read-only buffer)"
            ),
            Self::WriteOnlyBuffer { descriptor } => write!(
                f,
                "descriptor {descriptor} is device-writable on a queue the device only reads"
            ),
            Self::Memory(at) => write!(f, "access at {at} outside guest memory"),
        }
    }
}

impl From<crate::paging::OutsideGuestMemory> for QueueError {
    fn from(e: crate::paging::OutsideGuestMemory) -> Self {
        Self::Memory(e.0)
    }
}

/// What went wrong, beyond one queue's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A queue, its rings or a chain is malformed.
    Queue(QueueError),
    /// A notify named a queue the device does not have (the hypercall
    /// fails; the device is not harmed).
    NoSuchQueue {
        /// The queue named.
        queue: u64,
        /// How many the device has.
        count: usize,
    },
    /// The driver set `DRIVER_OK` before the host accepted its features.
    DriverOkWithoutFeatures,
    /// The device page is not inside guest memory.
    PageOutsideMemory(GuestPhysAddr),
}

/// A device's report of something it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceError {
    /// The device (`virtio-net`, `virtio-console`, `virtio-rng`).
    pub device: &'static str,
    /// The queue concerned, if one is.
    pub queue: Option<u16>,
    /// What was wrong.
    pub problem: Problem,
}

impl DeviceError {
    /// Whether the device is now broken (status `DEVICE_NEEDS_RESET`),
    /// which only a malformed queue or status does; a notify of a queue
    /// that does not exist is only a failed call.
    pub fn broke_device(&self) -> bool {
        !matches!(self.problem, Problem::NoSuchQueue { .. })
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.device)?;
        if let Some(queue) = self.queue {
            write!(f, " queue {queue}")?;
        }
        match self.problem {
            Problem::Queue(e) => write!(f, ": {e}"),
            Problem::NoSuchQueue { queue, count } => write!(
                f,
                ": notify of queue {queue}, which does not exist (the device has {count})"
            ),
            Problem::DriverOkWithoutFeatures => {
                f.write_str(": DRIVER_OK set before the features were accepted (FEATURES_OK)")
            }
            Problem::PageOutsideMemory(at) => {
                write!(f, ": device page at {at} is outside guest memory")
            }
        }
    }
}
