//! virtio devices, the lguest way: descriptors in guest memory, "notify" by
//! hypercall, completion by virtual interrupt.
//!
//! A guest's devices are virtio 1.x devices (the OASIS specification,
//! "Virtual I/O Device Version 1.2"), but their transport is neither PCI
//! nor MMIO: there is no device register for the guest to trap on, since
//! trapping is what a paravirtual guest avoids. As in lguest, each device is
//! described by one page of guest memory, the [`DevicePage`], which the host
//! fills in before the guest starts and which the guest then reads and
//! writes freely. The host looks at what the guest wrote only when the guest
//! asks it to, with one of two hypercalls, and it checks everything it reads
//! there: the page is guest memory, and the guest may scribble on all of it.
//!
//! # Finding the devices
//!
//! The boot parameters carry the list (the host's [`crate::boot::BootParams`]
//! gains two words at its end, after `load_bias`):
//!
//! - `virtio_devices: u64`: the guest-physical address of device 0's page,
//!   0 when the guest has no devices. The pages follow one another, one
//!   4 KiB page per device; the host puts them at [`DEVICE_PAGES_GPA`],
//!   below the image and above the start-up tables, but a guest should
//!   read the address from the boot parameters.
//! - `virtio_device_count: u64`: how many pages, at most [`MAX_DEVICES`].
//!
//! Device `i`'s page is at `virtio_devices + i * 4096`, and `i` is the
//! device's number in both hypercalls.
//!
//! # The device page
//!
//! The host writes a page's *device fields* (magic, [`DeviceType`], offered
//! features, the number of queues and each one's largest size, the
//! interrupt vector, the config space) when the guest starts and whenever
//! the guest resets the device. It never reads them back: it keeps its own
//! copy. The guest writes the *driver fields* (its features, the status,
//! and each queue's size, ring addresses and readiness), and the host reads
//! them only inside the [`Number::VirtioStatus`](crate::hypercall::Number::VirtioStatus) hypercall. Interrupt status is the
//! one word both write: the host sets bits, the guest clears them.
//!
//! # The hypercalls
//!
//! Two calls of [`Number`](crate::hypercall::Number):
//!
//! - [`Number::VirtioStatus`](crate::hypercall::Number::VirtioStatus) `virtio_status(device)`: "I wrote the device page:
//!   read it". The host reads the status the guest wrote and acts on what
//!   changed: 0 resets the device (queues forgotten, the page's device
//!   fields written again, the driver fields zeroed); `FEATURES_OK` makes it
//!   read [`DevicePage::driver_features`] and accept them only if they are
//!   a subset of the offered ones that includes [`feature::VERSION_1`]
//!   (otherwise `FEATURES_OK` is cleared in the status it writes back, as
//!   virtio §3.1.1 asks the driver to check); and once `FEATURES_OK` is
//!   accepted, every call also reads the queue descriptors: a queue newly
//!   marked ready is checked and started, one no longer marked ready is
//!   stopped (so a driver's `queue_set` and `queue_unset` each end with
//!   this call). Returns the status the host accepted, which it also writes
//!   back to [`DevicePage::status`]; `-InvalidArgument` for a device that
//!   does not exist.
//! - [`Number::VirtioNotify`](crate::hypercall::Number::VirtioNotify) `virtio_notify(device, queue)`: the driver made
//!   buffers available on `queue`. The host processes *every* buffer that
//!   is available, not just one, and completes them with one interrupt at
//!   most. Returns 0; `-InvalidArgument` for a device or queue that does
//!   not exist. A notify before the device is live does nothing.
//!
//! A notify is an exit, so a driver makes as few as it can: one after a
//! batch of buffers, not one per buffer (the guest runtime's transport can
//! hold its notifies back until the batch is complete). Some queues need
//! none at all: the host looks at virtio-net's receive queue whenever it
//! has a frame for the guest, and says so by setting
//! [`ring::USED_F_NO_NOTIFY`] in that queue's used ring when the queue
//! starts (virtio §2.7.10's notification suppression, which drivers such
//! as `virtio-drivers` honour). A notify of such a queue is still allowed:
//! the host then checks the buffers posted since the last look, so that a
//! malformed one is refused at once rather than when a frame first needs
//! it.
//!
//! Everything the guest handed over is checked before use: a queue's size
//! must be a power of two no larger than the queue's maximum, its rings
//! aligned as the specification says ([`ring::DESCRIPTOR_ALIGN`] and the
//! rest) and inside guest memory, every descriptor's buffer inside guest
//! memory, chains free of loops and no longer than the queue, a
//! device-writable buffer never followed by a device-readable one, and
//! nothing the device must write marked read-only. A device that meets a
//! broken ring or descriptor sets [`status::DEVICE_NEEDS_RESET`] and
//! [`interrupt::CONFIG_CHANGED`], stops, and reports it; the host may end
//! the guest with the reason, as it does for a malformed page-table entry
//! (`virtio-net queue 0: descriptor 5 loops back to 2`).
//!
//! # Completion
//!
//! When the host has put buffers on a queue's used ring it sets
//! [`interrupt::QUEUE`] in [`DevicePage::interrupt_status`] and raises the
//! device's virtual interrupt, vector [`DevicePage::vector`] =
//! [`FIRST_DEVICE_VECTOR`]` + i` for device `i` (bit `vector - 32` of the
//! shared page's pending interrupts). One interrupt covers a whole batch,
//! and the host honours the available ring's [`ring::AVAIL_F_NO_INTERRUPT`].
//! The guest acknowledges by swapping the interrupt status with 0 (an
//! atomic exchange on the aligned word; no hypercall).
//!
//! # What is offered
//!
//! Every device offers [`feature::VERSION_1`] and the modern (non-legacy)
//! ring layout with separate descriptor, driver and device areas; none
//! offers indirect descriptors or event indices (a descriptor with
//! [`ring::DESC_F_INDIRECT`] is refused). The config space is read-only:
//! the host ignores writes to it. virtio-net ([`DeviceType::Net`]) offers
//! [`feature::NET_MAC`] and [`feature::NET_STATUS`], receive queue 0 and
//! transmit queue 1, and its packets carry the 12-byte [`NetHeader`]
//! (`virtio_net_hdr_v1`: no checksum or segmentation offload, so the guest
//! sends it zeroed). virtio-console ([`DeviceType::Console`]) has receive
//! queue 0 and transmit queue 1 of port 0, and no features. virtio-rng
//! ([`DeviceType::Rng`]) has one request queue.

use core::mem::offset_of;

/// Guest-physical address where the host puts device 0's page (see the
/// module docs: guests read it from the boot parameters). Above the
/// start-up tables (at most five pages from `0x3000`), below the image.
pub const DEVICE_PAGES_GPA: u64 = 0x8000;

/// The most devices a guest has (their pages end at `0x10000`).
pub const MAX_DEVICES: usize = 8;

/// The size of one device page.
pub const DEVICE_PAGE_BYTES: u64 = 4096;

/// The virtual interrupt vector of device 0; device `i` raises
/// `FIRST_DEVICE_VECTOR + i`. The one-shot timer has 32.
pub const FIRST_DEVICE_VECTOR: u8 = 33;

/// The virtual interrupt vector of device `index`, if there can be one.
pub const fn device_vector(index: usize) -> Option<u8> {
    if index < MAX_DEVICES {
        Some(FIRST_DEVICE_VECTOR + index as u8)
    } else {
        None
    }
}

const _: () = assert!(crate::shared::is_virtual_irq(FIRST_DEVICE_VECTOR));
const _: () = assert!(crate::shared::is_virtual_irq(
    FIRST_DEVICE_VECTOR + MAX_DEVICES as u8 - 1
));
const _: () = assert!(FIRST_DEVICE_VECTOR > crate::hypercall::TIMER_VECTOR);

/// [`DevicePage::magic`]: "VIRT".
pub const DEVICE_MAGIC: u32 = u32::from_le_bytes(*b"VIRT");

/// The most queues a device page describes.
pub const MAX_QUEUES: usize = 8;

/// The largest config space a device page holds.
pub const CONFIG_MAX: usize = 256;

/// The virtio device types (virtio §5) that rguest provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceType {
    /// A network card: Ethernet frames.
    Net = 1,
    /// A console: bytes in and out.
    Console = 3,
    /// An entropy source.
    Rng = 4,
}

impl DeviceType {
    /// Decodes [`DevicePage::device_type`].
    pub const fn from_raw(raw: u32) -> Option<DeviceType> {
        match raw {
            1 => Some(DeviceType::Net),
            3 => Some(DeviceType::Console),
            4 => Some(DeviceType::Rng),
            _ => None,
        }
    }
}

/// One queue's description in the device page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDescriptor {
    /// Device field: the largest size the queue may have, a power of two;
    /// 0 if the device has no such queue.
    pub max_size: u16,
    /// Driver field: the queue's size (a power of two, at most `max_size`).
    pub size: u16,
    /// Driver field: nonzero once the driver has set the queue up (virtio's
    /// `queue_ready`); read by the host at the next status call.
    pub ready: u16,
    /// Reserved, zero.
    pub reserved: u16,
    /// Driver field: guest-physical address of the descriptor table
    /// (aligned to [`ring::DESCRIPTOR_ALIGN`]).
    pub descriptors: u64,
    /// Driver field: guest-physical address of the driver area, the
    /// available ring (aligned to [`ring::AVAIL_ALIGN`]).
    pub driver_area: u64,
    /// Driver field: guest-physical address of the device area, the used
    /// ring (aligned to [`ring::USED_ALIGN`]).
    pub device_area: u64,
}

/// One device's page (see the module docs for who writes what, and when).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DevicePage {
    /// Device field: [`DEVICE_MAGIC`].
    pub magic: u32,
    /// Device field: a [`DeviceType`].
    pub device_type: u32,
    /// Device field: the features the device offers ([`feature`] bits).
    pub device_features: u64,
    /// Driver field: the features the driver accepts; read by the host when
    /// the status first says `FEATURES_OK`.
    pub driver_features: u64,
    /// Driver field, [`status`] bits: what the driver sets; after each
    /// status call, what the host accepted.
    pub status: u32,
    /// Device field: changes whenever the host changes the config space.
    pub config_generation: u32,
    /// Set by the host ([`interrupt`] bits), cleared by the guest's atomic
    /// exchange with 0 when it acknowledges.
    pub interrupt_status: u64,
    /// Device field: the device's virtual interrupt vector.
    pub vector: u32,
    /// Device field: how many of [`Self::queues`] the device has.
    pub queue_count: u32,
    /// Device field: bytes of [`Self::config`] the device defines.
    pub config_len: u32,
    /// Reserved, zero.
    pub reserved0: [u32; 3],
    /// The queues, by number.
    pub queues: [QueueDescriptor; MAX_QUEUES],
    /// Reserved, zero.
    pub reserved1: [u8; 192],
    /// Device field: the device-specific config space ([`NetConfig`],
    /// [`ConsoleConfig`]), read-only.
    pub config: [u8; CONFIG_MAX],
}

/// Byte offsets in the [`DevicePage`], for code that reaches it by address.
pub mod offset {
    use super::{DevicePage, QueueDescriptor};
    use core::mem::offset_of;

    /// [`DevicePage::magic`].
    pub const MAGIC: u64 = offset_of!(DevicePage, magic) as u64;
    /// [`DevicePage::device_type`].
    pub const DEVICE_TYPE: u64 = offset_of!(DevicePage, device_type) as u64;
    /// [`DevicePage::device_features`].
    pub const DEVICE_FEATURES: u64 = offset_of!(DevicePage, device_features) as u64;
    /// [`DevicePage::driver_features`].
    pub const DRIVER_FEATURES: u64 = offset_of!(DevicePage, driver_features) as u64;
    /// [`DevicePage::status`].
    pub const STATUS: u64 = offset_of!(DevicePage, status) as u64;
    /// [`DevicePage::config_generation`].
    pub const CONFIG_GENERATION: u64 = offset_of!(DevicePage, config_generation) as u64;
    /// [`DevicePage::interrupt_status`].
    pub const INTERRUPT_STATUS: u64 = offset_of!(DevicePage, interrupt_status) as u64;
    /// [`DevicePage::vector`].
    pub const VECTOR: u64 = offset_of!(DevicePage, vector) as u64;
    /// [`DevicePage::queue_count`].
    pub const QUEUE_COUNT: u64 = offset_of!(DevicePage, queue_count) as u64;
    /// [`DevicePage::config_len`].
    pub const CONFIG_LEN: u64 = offset_of!(DevicePage, config_len) as u64;
    /// [`DevicePage::queues`].
    pub const QUEUES: u64 = offset_of!(DevicePage, queues) as u64;
    /// [`DevicePage::config`].
    pub const CONFIG: u64 = offset_of!(DevicePage, config) as u64;
    /// The size of one [`QueueDescriptor`].
    pub const QUEUE_BYTES: u64 = size_of::<QueueDescriptor>() as u64;

    /// Offsets inside one [`QueueDescriptor`].
    pub mod queue {
        use super::super::QueueDescriptor;
        use core::mem::offset_of;

        /// [`QueueDescriptor::max_size`].
        pub const MAX_SIZE: u64 = offset_of!(QueueDescriptor, max_size) as u64;
        /// [`QueueDescriptor::size`].
        pub const SIZE: u64 = offset_of!(QueueDescriptor, size) as u64;
        /// [`QueueDescriptor::ready`].
        pub const READY: u64 = offset_of!(QueueDescriptor, ready) as u64;
        /// [`QueueDescriptor::descriptors`].
        pub const DESCRIPTORS: u64 = offset_of!(QueueDescriptor, descriptors) as u64;
        /// [`QueueDescriptor::driver_area`].
        pub const DRIVER_AREA: u64 = offset_of!(QueueDescriptor, driver_area) as u64;
        /// [`QueueDescriptor::device_area`].
        pub const DEVICE_AREA: u64 = offset_of!(QueueDescriptor, device_area) as u64;
    }

    /// Where queue `queue`'s descriptor starts in the page.
    pub const fn queue(queue: usize) -> u64 {
        QUEUES + queue as u64 * QUEUE_BYTES
    }
}

const _: () = assert!(size_of::<QueueDescriptor>() == 32);
const _: () = assert!(offset::queue::SIZE == 2 && offset::queue::READY == 4);
const _: () = assert!(offset::queue::DESCRIPTORS == 8);
const _: () = assert!(offset::queue::DRIVER_AREA == 16 && offset::queue::DEVICE_AREA == 24);
const _: () = assert!(offset::DEVICE_TYPE == 4 && offset::DEVICE_FEATURES == 8);
const _: () = assert!(offset::DRIVER_FEATURES == 16 && offset::STATUS == 24);
const _: () = assert!(offset::CONFIG_GENERATION == 28 && offset::INTERRUPT_STATUS == 32);
const _: () = assert!(offset::VECTOR == 40 && offset::QUEUE_COUNT == 44);
const _: () = assert!(offset::CONFIG_LEN == 48 && offset::QUEUES == 64);
const _: () = assert!(offset::CONFIG == 512);
const _: () = assert!(size_of::<DevicePage>() == 768);
const _: () = assert!(size_of::<DevicePage>() as u64 <= DEVICE_PAGE_BYTES);
const _: () = assert!(DEVICE_PAGES_GPA + MAX_DEVICES as u64 * DEVICE_PAGE_BYTES <= 0x1_0000);
const _: () = assert!(DEVICE_PAGES_GPA < crate::boot::IMAGE_MIN_GPA);
const _: () = assert!(offset_of!(DevicePage, interrupt_status) % 8 == 0);

/// Device status bits (virtio §2.1), in [`DevicePage::status`].
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device is live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done (cleared by the host if it refused the
    /// driver's features).
    pub const FEATURES_OK: u32 = 8;
    /// Set by the host: the device met something it cannot go on from (a
    /// malformed ring or descriptor) and stopped; only a reset revives it.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// [`DevicePage::interrupt_status`] bits (virtio's ISR status).
pub mod interrupt {
    /// A queue's used ring has new buffers.
    pub const QUEUE: u64 = 1 << 0;
    /// The config space or the device's status changed (for instance to
    /// [`super::status::DEVICE_NEEDS_RESET`]).
    pub const CONFIG_CHANGED: u64 = 1 << 1;
}

/// Feature bits (virtio §6 and §5.1.3).
pub mod feature {
    /// The device has a MAC address in its config space (net).
    pub const NET_MAC: u64 = 1 << 5;
    /// The config space has a status word (net: link up).
    pub const NET_STATUS: u64 = 1 << 16;
    /// Indirect descriptors. Not offered.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` and `avail_event`. Not offered.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// virtio 1.x: offered by every device, required of every driver.
    pub const VERSION_1: u64 = 1 << 32;
}

/// The split virtqueue as laid out in guest memory (virtio §2.7): a
/// descriptor table of [`Descriptor`]s, the available ring (`flags: u16,
/// idx: u16, ring: [u16; size], used_event: u16`) and the used ring
/// (`flags: u16, idx: u16, ring: [UsedElement; size], avail_event: u16`),
/// every field little-endian.
pub mod ring {
    use core::mem::offset_of;

    /// The largest queue size the specification allows.
    pub const MAX_QUEUE_SIZE: u16 = 32768;

    /// Alignment of the descriptor table.
    pub const DESCRIPTOR_ALIGN: u64 = 16;
    /// Alignment of the available ring.
    pub const AVAIL_ALIGN: u64 = 2;
    /// Alignment of the used ring.
    pub const USED_ALIGN: u64 = 4;

    /// The descriptor continues in [`Descriptor::next`].
    pub const DESC_F_NEXT: u16 = 1;
    /// The buffer is device-writable (otherwise device-readable).
    pub const DESC_F_WRITE: u16 = 2;
    /// The buffer is a table of descriptors. Refused: not negotiated.
    pub const DESC_F_INDIRECT: u16 = 4;

    /// Available ring flag: the driver asks for no interrupt.
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    /// Used ring flag: the device asks for no notify. The host sets it on
    /// queues it looks at by itself (virtio-net's receive queue), once,
    /// when the queue starts.
    pub const USED_F_NO_NOTIFY: u16 = 1;

    /// One entry of the descriptor table.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Descriptor {
        /// Guest-physical address of the buffer.
        pub addr: u64,
        /// Its length in bytes.
        pub len: u32,
        /// `DESC_F_*` bits.
        pub flags: u16,
        /// The next descriptor, with [`DESC_F_NEXT`].
        pub next: u16,
    }

    /// One entry of the used ring.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct UsedElement {
        /// The head descriptor of the completed chain.
        pub id: u32,
        /// Bytes the device wrote into the chain's writable buffers.
        pub len: u32,
    }

    /// Bytes of one descriptor.
    pub const DESCRIPTOR_BYTES: u64 = size_of::<Descriptor>() as u64;
    /// Bytes of one used element.
    pub const USED_ELEMENT_BYTES: u64 = size_of::<UsedElement>() as u64;
    /// Offset of the rings' `flags` word.
    pub const FLAGS: u64 = 0;
    /// Offset of the rings' `idx` word.
    pub const IDX: u64 = 2;
    /// Offset of the rings' first element.
    pub const RING: u64 = 4;

    const _: () = assert!(DESCRIPTOR_BYTES == 16 && USED_ELEMENT_BYTES == 8);
    const _: () = assert!(offset_of!(Descriptor, len) == 8);
    const _: () = assert!(offset_of!(Descriptor, flags) == 12);
    const _: () = assert!(offset_of!(Descriptor, next) == 14);

    /// Bytes of a descriptor table of `size` entries.
    pub const fn descriptor_table_bytes(size: u16) -> u64 {
        DESCRIPTOR_BYTES * size as u64
    }

    /// Bytes of an available ring of `size` entries (with `used_event`).
    pub const fn avail_ring_bytes(size: u16) -> u64 {
        RING + 2 * size as u64 + 2
    }

    /// Bytes of a used ring of `size` entries (with `avail_event`).
    pub const fn used_ring_bytes(size: u16) -> u64 {
        RING + USED_ELEMENT_BYTES * size as u64 + 2
    }
}

/// virtio-net's queues.
pub mod net_queue {
    /// Frames for the guest.
    pub const RECEIVE: u16 = 0;
    /// Frames from the guest.
    pub const TRANSMIT: u16 = 1;
}

/// virtio-console's queues (port 0).
pub mod console_queue {
    /// Input for the guest.
    pub const RECEIVE: u16 = 0;
    /// Output from the guest.
    pub const TRANSMIT: u16 = 1;
}

/// virtio-rng's one queue.
pub const RNG_REQUEST_QUEUE: u16 = 0;

/// The header before every virtio-net frame (`virtio_net_hdr_v1`, 12
/// bytes with [`feature::VERSION_1`]). With no offloads negotiated, the
/// guest sends it zeroed, and the host delivers it zeroed but for
/// `num_buffers`, which is 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `VIRTIO_NET_HDR_F_*`: none used.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`: none used.
    pub gso_type: u8,
    /// Header length, for segmentation.
    pub hdr_len: u16,
    /// Segment size, for segmentation.
    pub gso_size: u16,
    /// Where checksumming starts, for checksum offload.
    pub csum_start: u16,
    /// Where the checksum goes, for checksum offload.
    pub csum_offset: u16,
    /// How many buffers the received frame spans: always 1.
    pub num_buffers: u16,
}

/// Bytes of a [`NetHeader`].
pub const NET_HEADER_BYTES: usize = size_of::<NetHeader>();
const _: () = assert!(NET_HEADER_BYTES == 12);
const _: () = assert!(offset_of!(NetHeader, num_buffers) == 10);

/// virtio-net's config space (virtio §5.1.4), at [`DevicePage::config`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The card's MAC address ([`feature::NET_MAC`]).
    pub mac: [u8; 6],
    /// [`NET_LINK_UP`] ([`feature::NET_STATUS`]).
    pub status: u16,
    /// Queue pairs: 1 (no multiqueue offered).
    pub max_virtqueue_pairs: u16,
    /// The MTU: 1500 (the feature is not offered; informational).
    pub mtu: u16,
}

/// [`NetConfig::status`]: the link is up.
pub const NET_LINK_UP: u16 = 1;
const _: () = assert!(size_of::<NetConfig>() == 12);
const _: () = assert!(offset_of!(NetConfig, status) == 6);

/// virtio-console's config space (virtio §5.3.4): meaningful only with
/// features rguest does not offer, so all zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Ports (multiport).
    pub max_nr_ports: u32,
    /// Emergency write.
    pub emerg_wr: u32,
}

const _: () = assert!(size_of::<ConsoleConfig>() == 12);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_types_round_trip_and_match_the_specification() {
        for t in [DeviceType::Net, DeviceType::Console, DeviceType::Rng] {
            assert_eq!(DeviceType::from_raw(t as u32), Some(t));
        }
        assert_eq!(DeviceType::Net as u32, 1);
        assert_eq!(DeviceType::Console as u32, 3);
        assert_eq!(DeviceType::Rng as u32, 4);
        assert_eq!(DeviceType::from_raw(2), None);
    }

    #[test]
    fn every_device_has_a_virtual_interrupt_of_its_own() {
        for i in 0..MAX_DEVICES {
            let v = device_vector(i).unwrap();
            assert!(crate::shared::is_virtual_irq(v));
            assert_ne!(v, crate::hypercall::TIMER_VECTOR);
        }
        assert_eq!(device_vector(MAX_DEVICES), None);
    }

    #[test]
    fn ring_sizes_include_the_event_words() {
        assert_eq!(ring::descriptor_table_bytes(256), 4096);
        assert_eq!(ring::avail_ring_bytes(256), 6 + 512);
        assert_eq!(ring::used_ring_bytes(256), 6 + 2048);
    }
}
