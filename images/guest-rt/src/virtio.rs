//! virtio devices: the transport and the memory under the `virtio-drivers`
//! crate, and waiting for a device's interrupt.
//!
//! A guest's devices are ordinary virtio 1.x devices behind lguest's
//! transport (the contract is `guest_abi::virtio`): one page of guest memory
//! per device, which the host fills in and the guest writes freely; two
//! hypercalls, "I wrote the page, read it" (`virtio_status`) and "buffers
//! are waiting on this queue" (`virtio_notify`); and a virtual interrupt
//! per device when the host has used buffers. Everything above the
//! transport is the virtio specification's, so the guest drives its
//! devices with the drivers of the `virtio-drivers` crate, given the three
//! things it asks of a platform:
//!
//! - a [`Transport`](virtio_drivers::transport::Transport) for each
//!   device: [`PageTransport`], which reads and writes the device page
//!   with volatile accesses and makes the two hypercalls where virtio-PCI
//!   would write a register (and, for a driver that works in batches,
//!   holds its notifies back until the batch is complete, so that one exit
//!   carries it: see "Batches" below);
//! - a [`Hal`](virtio_drivers::Hal): [`GuestHal`], whose DMA memory comes
//!   from a pool of contiguous guest pages the program hands over once
//!   ([`give_dma_pages`]), and whose addresses are translated through the
//!   start-up map (guest-virtual `KERNEL_OFFSET + p` is guest-physical
//!   `p`). The host reads guest memory directly, so sharing a buffer with
//!   a device is only that translation: no bounce buffers;
//! - a way to sleep until a device has something: each transport registers
//!   a handler for its device's vector that counts
//!   ([`interrupts_taken`]), and [`wait_until`] halts, as
//!   `time::sleep_ns` does, until a condition holds (a used buffer on a
//!   ring) or a deadline passes; [`wait_for_interrupt`] waits for the
//!   interrupt itself.
//!
//! `virtio-drivers` is built without its `alloc` feature (guests have no
//! heap), which leaves out its console driver; [`Console`] is the small
//! transmit-only one a guest needs to write lines.
//!
//! # Using it
//!
//! ```ignore
//! let mut frames = FrameAllocator::after_image();
//! virtio::give_dma_pages(&mut frames, 32)?;      // before anything else takes frames
//! let index = virtio::find(DeviceType::Rng).unwrap();
//! let transport = PageTransport::new(index)?;
//! let mut rng = VirtIORng::<GuestHal, _>::new(transport)?;
//! ```
//!
//! # Batches
//!
//! `virtio-drivers` notifies the device each time it adds a buffer (unless
//! the used ring says `VIRTQ_USED_F_NO_NOTIFY`, as the host's receive
//! queues do), and a notify is an exit. A driver that adds buffers in
//! bursts, such as a network stack sending what one poll produced, makes
//! its transport [`PageTransport::deferring_notifies`]: `notify` then only
//! records the queue, and the driver calls [`flush_notifies`] once the
//! burst is over, one hypercall per queue that has new buffers (the host
//! takes every one of them in it). The driver must flush before it waits
//! for such a queue: the host sees nothing there until it does.
//!
//! Completions the driver polls for need no interrupt either (the host
//! uses a transmit buffer inside the very notify that hands it over, and a
//! network stack takes its transmit buffers back at the next send): an
//! interrupt raised while the guest has its interrupts off costs another
//! exit when it turns them back on. [`PageTransport::without_interrupts_on`]
//! asks for none on a queue (the available ring's
//! `VIRTQ_AVAIL_F_NO_INTERRUPT`).
//!
//! Two rules follow from the design. A buffer handed to a device must be
//! in the start-up map (the image, its stack and statics, frames reached
//! through `kernel_virtual`), not behind tables of the guest's own: the
//! translation panics otherwise. And the DMA pool's pages come out of the
//! program's own `FrameAllocator`, so a program that allocates frames
//! gives the pool its share from that allocator, not from a second one
//! over the same memory.

use guest_abi::boot::KERNEL_OFFSET;

/// The driver crate, as this module implements its traits: guests name its
/// drivers from here, so that they always get the version the transport
/// was written for.
pub use virtio_drivers;

/// The most pages the DMA pool holds (1 MiB): the rings of a few devices
/// and their buffers.
pub const DMA_POOL_MAX_PAGES: usize = 256;

/// Bytes of a page.
const PAGE_BYTES: u64 = 4096;

/// Runs of contiguous guest-physical pages, handed out first fit and taken
/// back: what [`GuestHal`] allocates DMA memory from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaPool {
    base: u64,
    pages: usize,
    /// Bit `i` set: page `i` is handed out.
    used: [u64; DMA_POOL_MAX_PAGES / 64],
}

impl DmaPool {
    /// A pool with no pages.
    pub const fn empty() -> Self {
        Self {
            base: 0,
            pages: 0,
            used: [0; DMA_POOL_MAX_PAGES / 64],
        }
    }

    /// A pool of the `pages` contiguous pages from guest-physical `base`
    /// (at most [`DMA_POOL_MAX_PAGES`] are used).
    pub const fn new(base: u64, pages: usize) -> Self {
        let pages = if pages < DMA_POOL_MAX_PAGES {
            pages
        } else {
            DMA_POOL_MAX_PAGES
        };
        Self {
            base,
            pages,
            used: [0; DMA_POOL_MAX_PAGES / 64],
        }
    }

    /// How many pages it holds.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// How many of them are handed out.
    pub fn pages_in_use(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The guest-physical address of `count` free contiguous pages, now
    /// handed out; `None` if there is no such run (or `count` is 0).
    pub fn allocate(&mut self, count: usize) -> Option<u64> {
        let first = self.first_free_run(count)?;
        self.mark(first, count, true);
        Some(self.base + first as u64 * PAGE_BYTES)
    }

    /// Takes back the `count` pages from `gpa`; false (and nothing taken
    /// back) unless they are all pages of this pool that are handed out.
    pub fn free(&mut self, gpa: u64, count: usize) -> bool {
        let Some(first) = self.page_index(gpa) else {
            return false;
        };
        let in_pool = first
            .checked_add(count)
            .is_some_and(|end| end <= self.pages);
        if count == 0 || !in_pool || !(first..first + count).all(|i| self.is_used(i)) {
            return false;
        }
        self.mark(first, count, false);
        true
    }

    /// The index of the page at `gpa`, if it is one of the pool's.
    fn page_index(&self, gpa: u64) -> Option<usize> {
        let offset = gpa.checked_sub(self.base)?;
        if !offset.is_multiple_of(PAGE_BYTES) {
            return None;
        }
        let index = usize::try_from(offset / PAGE_BYTES).ok()?;
        (index < self.pages).then_some(index)
    }

    /// The first page of the lowest run of `count` free pages.
    fn first_free_run(&self, count: usize) -> Option<usize> {
        if count == 0 {
            return None;
        }
        let mut run_start = 0;
        for page in 0..self.pages {
            if self.is_used(page) {
                run_start = page + 1;
            } else if page + 1 - run_start == count {
                return Some(run_start);
            }
        }
        None
    }

    fn is_used(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }

    fn mark(&mut self, first: usize, count: usize, used: bool) {
        for page in first..first + count {
            if used {
                self.used[page / 64] |= 1 << (page % 64);
            } else {
                self.used[page / 64] &= !(1 << (page % 64));
            }
        }
    }
}

/// The guest-physical address behind the `len` bytes at guest-virtual
/// `vaddr` in the start-up map, which shows the first `mapped_bytes` of
/// guest memory; `None` if any of them lies outside it.
pub fn start_up_physical(vaddr: u64, len: u64, mapped_bytes: u64) -> Option<u64> {
    let gpa = vaddr.checked_sub(KERNEL_OFFSET)?;
    (gpa.checked_add(len)? <= mapped_bytes).then_some(gpa)
}

#[cfg(any(target_os = "none", target_os = "hermit"))]
pub use bare::*;

#[cfg(any(target_os = "none", target_os = "hermit"))]
mod bare {
    use super::*;
    use crate::boot::{self, kernel_virtual};
    use crate::paging::{FrameAllocator, STARTUP_MAP_BYTES};
    use crate::traps::{self, Delivery, TrapFrame};
    use crate::{hypercall, irq, time};
    use core::cell::UnsafeCell;
    use core::fmt;
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
    use guest_abi::virtio::{
        CONFIG_MAX, DEVICE_MAGIC, DEVICE_PAGE_BYTES, DeviceType, FIRST_DEVICE_VECTOR, MAX_DEVICES,
        MAX_QUEUES, console_queue, device_vector, offset, ring, status,
    };
    use virtio_drivers::device::common::Feature;
    use virtio_drivers::queue::VirtQueue;
    use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};
    use virtio_drivers::{BufferDirection, Hal, PhysAddr};
    use zerocopy::{FromBytes, Immutable, IntoBytes};

    // ---- Finding the devices -------------------------------------------

    /// Bytes of guest memory the start-up map shows.
    fn mapped_bytes() -> u64 {
        boot::memory_bytes().min(STARTUP_MAP_BYTES)
    }

    /// The device pages the boot parameters announce: the first one's
    /// guest-physical address and how many, or `None` when there are none
    /// (or they are not where a page list can be).
    fn device_pages() -> Option<(u64, usize)> {
        let params = boot::params();
        let first = params.virtio_devices;
        let count = usize::try_from(params.virtio_device_count)
            .ok()?
            .min(MAX_DEVICES);
        let bytes = count as u64 * DEVICE_PAGE_BYTES;
        let fits = first
            .checked_add(bytes)
            .is_some_and(|end| end <= mapped_bytes());
        (first != 0 && first.is_multiple_of(DEVICE_PAGE_BYTES) && count > 0 && fits)
            .then_some((first, count))
    }

    /// How many devices the host gave us.
    pub fn device_count() -> usize {
        device_pages().map_or(0, |(_, count)| count)
    }

    /// Device `index`'s page, through the start-up map.
    fn page_address(index: usize) -> Option<*mut u8> {
        let (first, count) = device_pages()?;
        (index < count).then(|| kernel_virtual(first + index as u64 * DEVICE_PAGE_BYTES) as *mut u8)
    }

    /// What device `index` is, if its page says it is a device we know.
    pub fn device_type(index: usize) -> Option<DeviceType> {
        let page = Page(page_address(index)?);
        if page.read_u32(offset::MAGIC) != DEVICE_MAGIC {
            return None;
        }
        DeviceType::from_raw(page.read_u32(offset::DEVICE_TYPE))
    }

    /// The number of the first device of type `kind`.
    pub fn find(kind: DeviceType) -> Option<usize> {
        (0..device_count()).find(|&index| device_type(index) == Some(kind))
    }

    // ---- The device page -----------------------------------------------

    /// A device page, reached through the start-up map. Every access is
    /// volatile: the host writes the page while we are stopped, behind the
    /// compiler's back.
    #[derive(Clone, Copy, Debug)]
    struct Page(*mut u8);

    impl Page {
        fn at<T>(self, offset: u64) -> *mut T {
            self.0.wrapping_add(offset as usize).cast()
        }

        fn read_u8(self, offset: u64) -> u8 {
            // SAFETY: the page is guest memory in the start-up map for the
            // guest's life (device_pages checked it lies inside), and the
            // offsets we read are the ABI's, inside it and aligned for
            // their fields (or, for the config space, checked against its
            // length).
            unsafe { self.at::<u8>(offset).read_volatile() }
        }

        fn read_u16(self, offset: u64) -> u16 {
            // SAFETY: as in read_u8.
            unsafe { self.at::<u16>(offset).read_volatile() }
        }

        fn read_u32(self, offset: u64) -> u32 {
            // SAFETY: as in read_u8.
            unsafe { self.at::<u32>(offset).read_volatile() }
        }

        fn read_u64(self, offset: u64) -> u64 {
            // SAFETY: as in read_u8.
            unsafe { self.at::<u64>(offset).read_volatile() }
        }

        fn write_u16(self, offset: u64, value: u16) {
            // SAFETY: as in read_u8; the page is ours to write (the host
            // trusts nothing in it).
            unsafe { self.at::<u16>(offset).write_volatile(value) }
        }

        fn write_u32(self, offset: u64, value: u32) {
            // SAFETY: as in write_u16.
            unsafe { self.at::<u32>(offset).write_volatile(value) }
        }

        fn write_u64(self, offset: u64, value: u64) {
            // SAFETY: as in write_u16.
            unsafe { self.at::<u64>(offset).write_volatile(value) }
        }

        /// The interrupt status word, the one both sides write.
        fn interrupt_status(self) -> &'static AtomicU64 {
            // SAFETY: the word is in the page (mapped for the guest's
            // life) and 8-byte aligned (the ABI asserts it). The host sets
            // bits in it, we take them with an atomic exchange, which
            // loses none whenever the host writes.
            unsafe { AtomicU64::from_ptr(self.at(offset::INTERRUPT_STATUS)) }
        }
    }

    /// Why a device could not be opened.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DeviceError {
        /// The boot parameters list no device with this number.
        NoSuchDevice(usize),
        /// Its page does not start with `DEVICE_MAGIC`.
        BadMagic(usize),
        /// Its page names a device type we do not know.
        UnknownType(usize, u32),
        /// Its page names another vector than the ABI gives its number.
        WrongVector(usize, u32),
        /// The host refused our handler for its vector.
        HandlerRefused(guest_abi::hypercall::Error),
    }

    impl fmt::Display for DeviceError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::NoSuchDevice(i) => write!(f, "no virtio device {i}"),
                Self::BadMagic(i) => write!(f, "virtio device {i}: the page has no magic"),
                Self::UnknownType(i, t) => write!(f, "virtio device {i}: unknown type {t}"),
                Self::WrongVector(i, v) => write!(f, "virtio device {i}: vector {v}, not its own"),
                Self::HandlerRefused(e) => write!(f, "the host refused a device handler: {e:?}"),
            }
        }
    }

    /// lguest's virtio transport: one device's page, the `virtio_status`
    /// hypercall after each write the host must act on, and
    /// `virtio_notify` for a queue's new buffers (at once, or at the next
    /// [`flush_notifies`] when the transport defers them).
    #[derive(Debug)]
    pub struct PageTransport {
        index: usize,
        page: Page,
        device_type: virtio_drivers::transport::DeviceType,
        /// `notify` records the queue in [`PENDING_NOTIFIES`] instead of
        /// making the hypercall.
        defer_notifies: bool,
        /// Bit `q`: queue `q` is set up asking for no interrupt.
        quiet_queues: u8,
    }

    /// The queues whose notify a deferring transport holds back, by device
    /// number: bit `q` for queue `q` ([`MAX_QUEUES`] is 8). Outside the
    /// transport, which the driver owns, so that [`flush_notifies`] needs
    /// only the device's number.
    static PENDING_NOTIFIES: [AtomicU8; MAX_DEVICES] = [const { AtomicU8::new(0) }; MAX_DEVICES];

    const _: () = assert!(MAX_QUEUES <= 8);

    /// Makes the notifies device `index`'s deferring transport held back:
    /// one `virtio_notify` per queue with new buffers, in queue order.
    /// Returns how many it made (0 when nothing was waiting).
    pub fn flush_notifies(index: usize) -> u32 {
        let Some(pending) = PENDING_NOTIFIES.get(index) else {
            return 0;
        };
        let queues = pending.swap(0, Ordering::SeqCst);
        for queue in (0..MAX_QUEUES as u16).filter(|q| queues & (1 << q) != 0) {
            notify_now(index, queue);
        }
        queues.count_ones()
    }

    /// Whether device `index` has notifies held back.
    pub fn notifies_pending(index: usize) -> bool {
        PENDING_NOTIFIES
            .get(index)
            .is_some_and(|pending| pending.load(Ordering::SeqCst) != 0)
    }

    /// The `virtio_notify` hypercall for queue `queue` of device `index`.
    fn notify_now(index: usize, queue: u16) {
        // SAFETY: the buffers on the queue were added by a driver of
        // virtio-drivers through a `PageTransport` of this device, whose
        // contract (its `unsafe` add) keeps them alive and untouched until
        // the device has used them. A held-back notify is forgotten when
        // its queue is unset or the device reset (`queue_unset`,
        // `set_status`) or a new transport opens the device, so none
        // outlives the rings it is for.
        let result = unsafe { hypercall::virtio_notify(index as u64, u64::from(queue)) };
        // A refused notify would leave the driver spinning on a used
        // ring that never moves: better to stop here, saying why.
        if let Err(e) = result {
            panic!("virtio: notify of device {index} queue {queue}: {e:?}");
        }
    }

    /// Forgets the notifies held back for device `index`'s `queues` (bit
    /// `q` for queue `q`).
    fn forget_notifies(index: usize, queues: u8) {
        if let Some(pending) = PENDING_NOTIFIES.get(index) {
            pending.fetch_and(!queues, Ordering::SeqCst);
        }
    }

    impl PageTransport {
        /// Device `index` (its number in the hypercalls), checked, with a
        /// handler counting its interrupts registered.
        pub fn new(index: usize) -> Result<Self, DeviceError> {
            let page = Page(page_address(index).ok_or(DeviceError::NoSuchDevice(index))?);
            if page.read_u32(offset::MAGIC) != DEVICE_MAGIC {
                return Err(DeviceError::BadMagic(index));
            }
            let raw_type = page.read_u32(offset::DEVICE_TYPE);
            let device_type = DeviceType::from_raw(raw_type)
                .and_then(|t| virtio_drivers::transport::DeviceType::try_from(t as u32).ok())
                .ok_or(DeviceError::UnknownType(index, raw_type))?;
            let vector = page.read_u32(offset::VECTOR);
            if device_vector(index).map(u32::from) != Some(vector) {
                return Err(DeviceError::WrongVector(index, vector));
            }
            traps::set_handler(vector as u8, on_device_interrupt, Delivery::Interrupt)
                .map_err(DeviceError::HandlerRefused)?;
            forget_notifies(index, u8::MAX);
            Ok(Self {
                index,
                page,
                device_type,
                defer_notifies: false,
                quiet_queues: 0,
            })
        }

        /// This transport, holding its notifies back: `notify` only records
        /// the queue, and [`flush_notifies`] (with [`Self::index`]) makes
        /// the hypercalls, one per queue, however many buffers each got.
        /// The driver flushes at the end of every burst of buffers, and
        /// before it waits for one of them to be used.
        pub fn deferring_notifies(mut self) -> Self {
            self.defer_notifies = true;
            self
        }

        /// This transport, setting queue `queue` up to ask for no
        /// interrupt when the host uses its buffers (the available ring's
        /// `VIRTQ_AVAIL_F_NO_INTERRUPT`, written when the queue is set):
        /// for a queue whose used buffers the driver polls for.
        pub fn without_interrupts_on(mut self, queue: u16) -> Self {
            if usize::from(queue) < MAX_QUEUES {
                self.quiet_queues |= 1 << queue;
            }
            self
        }

        /// The device's number.
        pub fn index(&self) -> usize {
            self.index
        }

        /// Has the host read the page; returns the status it accepted.
        fn status_call(&self) -> u32 {
            // SAFETY: the only queues the page marks ready are those
            // `queue_set` described, whose rings are DMA memory the driver
            // gave the device for as long as the queue is set.
            match unsafe { hypercall::virtio_status(self.index as u64) } {
                Ok(accepted) => accepted as u32,
                // Only a device that does not exist is refused, and `new`
                // found this one: the host changed its mind.
                Err(e) => panic!("virtio: the host refused device {}: {e:?}", self.index),
            }
        }

        /// Where queue `queue`'s descriptor in the page starts.
        fn queue_field(queue: u16, field: u64) -> u64 {
            assert!(usize::from(queue) < MAX_QUEUES, "virtio queue {queue}");
            offset::queue(usize::from(queue)) + field
        }
    }

    impl Transport for PageTransport {
        fn device_type(&self) -> virtio_drivers::transport::DeviceType {
            self.device_type
        }

        fn read_device_features(&mut self) -> u64 {
            self.page.read_u64(offset::DEVICE_FEATURES)
        }

        fn write_driver_features(&mut self, driver_features: u64) {
            // Read by the host when the status first says FEATURES_OK.
            self.page
                .write_u64(offset::DRIVER_FEATURES, driver_features);
        }

        fn max_queue_size(&mut self, queue: u16) -> u32 {
            let count = self.page.read_u32(offset::QUEUE_COUNT);
            if usize::from(queue) >= MAX_QUEUES || u32::from(queue) >= count {
                return 0;
            }
            let field = Self::queue_field(queue, offset::queue::MAX_SIZE);
            u32::from(self.page.read_u16(field))
        }

        fn notify(&mut self, queue: u16) {
            if self.defer_notifies && usize::from(queue) < MAX_QUEUES {
                PENDING_NOTIFIES[self.index].fetch_or(1 << queue, Ordering::SeqCst);
            } else {
                notify_now(self.index, queue);
            }
        }

        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::from_bits_retain(self.page.read_u32(offset::STATUS))
        }

        fn set_status(&mut self, status: DeviceStatus) {
            if status.is_empty() {
                // A reset: the queues are gone, and their notifies.
                forget_notifies(self.index, u8::MAX);
            }
            self.page.write_u32(offset::STATUS, status.bits());
            // The host writes back what it accepted; get_status reads it.
            self.status_call();
        }

        fn set_guest_page_size(&mut self, _guest_page_size: u32) {
            // Only legacy transports have one.
        }

        fn requires_legacy_layout(&self) -> bool {
            false
        }

        fn queue_set(
            &mut self,
            queue: u16,
            size: u32,
            descriptors: PhysAddr,
            driver_area: PhysAddr,
            device_area: PhysAddr,
        ) {
            use offset::queue as field;
            let size = u16::try_from(size).expect("a virtqueue's size fits 16 bits");
            self.page
                .write_u16(Self::queue_field(queue, field::SIZE), size);
            self.page
                .write_u64(Self::queue_field(queue, field::DESCRIPTORS), descriptors);
            self.page
                .write_u64(Self::queue_field(queue, field::DRIVER_AREA), driver_area);
            self.page
                .write_u64(Self::queue_field(queue, field::DEVICE_AREA), device_area);
            if self.quiet_queues & (1 << queue) != 0 {
                let flags = kernel_virtual(driver_area + ring::FLAGS) as *mut u16;
                // SAFETY: the driver area is the available ring the driver
                // just allocated for this queue (DMA memory in the start-up
                // map, 2-byte aligned as the ring requires); its flags word
                // is the driver's to write, and virtio-drivers writes it
                // only when asked to change interrupts (it is never asked
                // here).
                unsafe { flags.write_volatile(ring::AVAIL_F_NO_INTERRUPT) };
            }
            // Ready last: the host reads the layout when it sees it ready.
            self.page
                .write_u16(Self::queue_field(queue, field::READY), 1);
            let accepted = self.status_call();
            // virtio-drivers does not look whether FEATURES_OK held; the
            // host starts queues only once it has. (A layout it refuses
            // ends the guest with the reason instead of returning here.)
            assert!(
                accepted & status::FEATURES_OK != 0,
                "virtio: device {} refused the driver's features (status {accepted:#x})",
                self.index
            );
        }

        fn queue_unset(&mut self, queue: u16) {
            if usize::from(queue) < MAX_QUEUES {
                forget_notifies(self.index, 1 << queue);
            }
            self.page
                .write_u16(Self::queue_field(queue, offset::queue::READY), 0);
            self.status_call();
        }

        fn queue_used(&mut self, queue: u16) -> bool {
            self.page
                .read_u16(Self::queue_field(queue, offset::queue::READY))
                != 0
        }

        fn ack_interrupt(&mut self) -> InterruptStatus {
            let pending = self.page.interrupt_status().swap(0, Ordering::SeqCst);
            InterruptStatus::from_bits_truncate(pending as u32)
        }

        fn read_config_generation(&self) -> u32 {
            self.page.read_u32(offset::CONFIG_GENERATION)
        }

        fn read_config_space<T: FromBytes + IntoBytes>(
            &self,
            config_offset: usize,
        ) -> virtio_drivers::Result<T> {
            let len = (self.page.read_u32(offset::CONFIG_LEN) as usize).min(CONFIG_MAX);
            if len == 0 {
                return Err(virtio_drivers::Error::ConfigSpaceMissing);
            }
            let end = config_offset.checked_add(size_of::<T>());
            if end.is_none_or(|end| end > len) {
                return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
            }
            // Byte by byte into a zeroed T: the page promises no alignment
            // for T, and any bytes make a valid T (FromBytes).
            let mut value = T::new_zeroed();
            let start = offset::CONFIG + config_offset as u64;
            for (i, byte) in value.as_mut_bytes().iter_mut().enumerate() {
                *byte = self.page.read_u8(start + i as u64);
            }
            Ok(value)
        }

        fn write_config_space<T: IntoBytes + Immutable>(
            &mut self,
            _offset: usize,
            _value: T,
        ) -> virtio_drivers::Result<()> {
            // The contract makes the config space read-only.
            Err(virtio_drivers::Error::Unsupported)
        }
    }

    // ---- Interrupts and waiting ----------------------------------------

    /// Interrupts taken, by device number.
    static DEVICE_INTERRUPTS: [AtomicU64; MAX_DEVICES] = [const { AtomicU64::new(0) }; MAX_DEVICES];

    /// Every device's handler: counts. The driver finds its used buffers
    /// on the rings and acknowledges with `ack_interrupt` when it likes;
    /// the count is what [`wait_for_interrupt`] watches. (What wakes a
    /// halted guest is the interrupt being pending, handled or not.)
    fn on_device_interrupt(frame: &mut TrapFrame) {
        let index = (frame.vector as usize).wrapping_sub(usize::from(FIRST_DEVICE_VECTOR));
        if let Some(count) = DEVICE_INTERRUPTS.get(index) {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Interrupts device `index` has raised and we have taken.
    pub fn interrupts_taken(index: usize) -> u64 {
        DEVICE_INTERRUPTS
            .get(index)
            .map_or(0, |count| count.load(Ordering::SeqCst))
    }

    /// Waits until device `index` raises an interrupt not yet taken when
    /// this was called, or `timeout_ns` nanoseconds pass; returns whether
    /// it did. (Most drivers rather wait for what the interrupt means, with
    /// [`wait_until`]: a used buffer on a ring.)
    pub fn wait_for_interrupt(index: usize, timeout_ns: u64) -> bool {
        let before = interrupts_taken(index);
        wait_until(timeout_ns, || interrupts_taken(index) != before)
    }

    /// Waits until `ready()` holds or `timeout_ns` nanoseconds pass;
    /// returns whether it held. `ready` is asked with virtual interrupts
    /// off, so nothing slips between the look and the halt: between looks
    /// the guest halts until a virtual interrupt is pending (a device's,
    /// or the timer armed for the deadline) and takes it. Uses the one-shot
    /// timer, so it cancels one the program had set; virtual interrupts
    /// are afterwards as the caller had them.
    pub fn wait_until(timeout_ns: u64, mut ready: impl FnMut() -> bool) -> bool {
        let deadline = time::now_ns().saturating_add(timeout_ns);
        let was_enabled = irq::disable();
        let held = loop {
            if ready() {
                break true;
            }
            let now = time::now_ns();
            if now >= deadline || hypercall::set_timer(deadline - now).is_err() {
                break false;
            }
            hypercall::halt();
            irq::enable();
            irq::disable();
        };
        let _ = hypercall::set_timer(0);
        irq::restore(was_enabled);
        held
    }

    // ---- DMA memory ----------------------------------------------------

    /// The pool behind [`GuestHal`], and a flag that lets one user at a
    /// time reach it.
    struct PoolCell {
        busy: AtomicBool,
        pool: UnsafeCell<DmaPool>,
    }

    // SAFETY: the pool is only reached through `with_pool`, which lets one
    // caller in at a time (`busy`).
    unsafe impl Sync for PoolCell {}

    static DMA_POOL: PoolCell = PoolCell {
        busy: AtomicBool::new(false),
        pool: UnsafeCell::new(DmaPool::empty()),
    };

    /// Runs `f` on the pool. A guest has one thread, so the pool is only
    /// busy when a trap handler reaches it from inside `f`: a bug, stopped
    /// here rather than left to corrupt it.
    fn with_pool<R>(f: impl FnOnce(&mut DmaPool) -> R) -> R {
        let was_busy = DMA_POOL.busy.swap(true, Ordering::Acquire);
        assert!(!was_busy, "virtio: the DMA pool was entered twice");
        // SAFETY: `busy` was clear and is now ours: no other reference to
        // the pool exists until we clear it.
        let result = f(unsafe { &mut *DMA_POOL.pool.get() });
        DMA_POOL.busy.store(false, Ordering::Release);
        result
    }

    /// Why [`give_dma_pages`] could not.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DmaSetupError {
        /// The pool already has its pages.
        AlreadyGiven,
        /// More than [`DMA_POOL_MAX_PAGES`], or none.
        BadCount(usize),
        /// The frame allocator ran out.
        OutOfMemory,
        /// The frame allocator handed out pages that do not follow one
        /// another.
        NotContiguous,
    }

    /// Gives the DMA pool `pages` contiguous pages from the program's own
    /// frame allocator, once, before any driver is made. A bump allocator
    /// such as `FrameAllocator` hands out consecutive pages; that is
    /// checked, not assumed.
    pub fn give_dma_pages(frames: &mut FrameAllocator, pages: usize) -> Result<(), DmaSetupError> {
        if pages == 0 || pages > DMA_POOL_MAX_PAGES {
            return Err(DmaSetupError::BadCount(pages));
        }
        if with_pool(|pool| pool.pages()) != 0 {
            return Err(DmaSetupError::AlreadyGiven);
        }
        let first = frames.allocate().ok_or(DmaSetupError::OutOfMemory)?;
        for i in 1..pages as u64 {
            let page = frames.allocate().ok_or(DmaSetupError::OutOfMemory)?;
            if page != first + i * PAGE_BYTES {
                return Err(DmaSetupError::NotContiguous);
            }
        }
        with_pool(|pool| *pool = DmaPool::new(first, pages));
        Ok(())
    }

    /// Pages of the DMA pool handed out now (what a program checks to see
    /// its drivers gave everything back).
    pub fn dma_pages_in_use() -> usize {
        with_pool(|pool| pool.pages_in_use())
    }

    /// `pages` zeroed pages from the pool: their guest-physical address
    /// and where the start-up map shows them.
    fn allocate_zeroed(pages: usize) -> Option<(u64, NonNull<u8>)> {
        let gpa = with_pool(|pool| pool.allocate(pages))?;
        let vaddr = kernel_virtual(gpa) as *mut u8;
        // SAFETY: the pool's pages are guest memory in the start-up map
        // (give_dma_pages took them from a FrameAllocator, which stops at
        // the map's end), just handed out to us alone.
        unsafe { vaddr.write_bytes(0, pages * PAGE_BYTES as usize) };
        Some((gpa, NonNull::new(vaddr)?))
    }

    /// A zeroed buffer of `bytes` from the DMA pool, for the program's
    /// whole life: for buffers that stay posted to a device, such as a
    /// network card's receive buffers. `None` when the pool has no room.
    pub fn dma_buffer(bytes: usize) -> Option<&'static mut [u8]> {
        let (_, vaddr) = allocate_zeroed(bytes.div_ceil(PAGE_BYTES as usize))?;
        // SAFETY: the pages were just handed out to us alone and are never
        // taken back, so the slice may live for the rest of the program.
        Some(unsafe { core::slice::from_raw_parts_mut(vaddr.as_ptr(), bytes) })
    }

    /// virtio-drivers' platform for an rguest guest: DMA memory from the
    /// pool, addresses through the start-up map, nothing to do to share.
    #[derive(Debug)]
    pub struct GuestHal;

    // SAFETY: dma_alloc returns zeroed, page-aligned pages handed out to
    // the caller alone until dma_dealloc (the pool tracks them); every
    // pointer it or mmio_phys_to_virt returns is the start-up map's view of
    // the physical address it goes with.
    unsafe impl Hal for GuestHal {
        fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            // A physical address of 0 is how virtio-drivers hears "none".
            allocate_zeroed(pages).unwrap_or((0, NonNull::dangling()))
        }

        unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
            if with_pool(|pool| pool.free(paddr, pages)) {
                0
            } else {
                -1
            }
        }

        unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
            // Only virtio-PCI asks (for its BARs); this transport has none.
            NonNull::new(kernel_virtual(paddr) as *mut u8).expect("the start-up map is not at 0")
        }

        unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
            let vaddr = buffer.cast::<u8>().as_ptr() as u64;
            let len = buffer.len() as u64;
            // The host reads and writes guest memory directly: sharing is
            // only finding the buffer's guest-physical address.
            start_up_physical(vaddr, len, mapped_bytes()).unwrap_or_else(|| {
                panic!(
                    "virtio: a buffer at {vaddr:#x} ({len} bytes) is outside the start-up \
                     map, where a device cannot find it"
                )
            })
        }

        unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
            // Nothing was copied: the device wrote the buffer itself.
        }
    }

    // ---- The console ---------------------------------------------------

    /// The transmit queue's size: one line at a time.
    const CONSOLE_QUEUE_SIZE: usize = 2;

    /// A virtio-console driver that writes (port 0's transmit queue). The
    /// crate's own `VirtIOConsole` needs a heap for its receive buffer;
    /// guests only write.
    pub struct Console<H: Hal, T: Transport> {
        transport: T,
        transmit: VirtQueue<H, CONSOLE_QUEUE_SIZE>,
    }

    impl<H: Hal, T: Transport> Console<H, T> {
        /// Brings the console up: no features but virtio 1.x, the transmit
        /// queue set, the driver ready.
        pub fn new(mut transport: T) -> virtio_drivers::Result<Self> {
            if transport.device_type() != virtio_drivers::transport::DeviceType::Console {
                return Err(virtio_drivers::Error::InvalidParam);
            }
            transport.begin_init(Feature::VERSION_1);
            let transmit = VirtQueue::new(&mut transport, console_queue::TRANSMIT, false, false)?;
            transport.finish_init();
            Ok(Self {
                transport,
                transmit,
            })
        }

        /// Writes `bytes`, and returns when the host has taken them (it
        /// does so inside the notify).
        pub fn write(&mut self, bytes: &[u8]) -> virtio_drivers::Result<()> {
            if bytes.is_empty() {
                return Ok(());
            }
            self.transmit
                .add_notify_wait_pop(&[bytes], &mut [], &mut self.transport)?;
            Ok(())
        }
    }

    impl<H: Hal, T: Transport> fmt::Write for Console<H, T> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.write(s.as_bytes()).map_err(|_| fmt::Error)
        }
    }

    impl<H: Hal, T: Transport> Drop for Console<H, T> {
        fn drop(&mut self) {
            // Before the queue's memory goes back to the pool, so the host
            // never writes a used ring that is someone else's.
            self.transport.queue_unset(console_queue::TRANSMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_hands_out_runs_first_fit_and_takes_them_back() {
        let mut pool = DmaPool::new(0x20_0000, 8);
        assert_eq!(pool.allocate(2), Some(0x20_0000));
        assert_eq!(pool.allocate(3), Some(0x20_2000));
        assert_eq!(pool.pages_in_use(), 5);
        assert!(pool.free(0x20_0000, 2));
        // The hole of two is too small for three: the run goes after.
        assert_eq!(pool.allocate(3), Some(0x20_5000));
        assert_eq!(pool.allocate(2), Some(0x20_0000));
        assert_eq!(pool.allocate(1), None);
        assert_eq!(pool.pages_in_use(), 8);
    }

    #[test]
    fn the_pool_refuses_what_it_did_not_hand_out() {
        let mut pool = DmaPool::new(0x20_0000, 4);
        assert_eq!(pool.allocate(0), None);
        let run = pool.allocate(2).unwrap();
        assert!(!pool.free(run, 3), "past the run, into free pages");
        assert!(!pool.free(run + 1, 1), "not page-aligned");
        assert!(!pool.free(0x10_0000, 1), "below the pool");
        assert!(!pool.free(0x20_4000, 1), "past the pool");
        assert!(!pool.free(run, 0));
        assert!(pool.free(run, 2));
        assert!(!pool.free(run, 2), "twice");
        assert_eq!(pool.pages_in_use(), 0);
    }

    #[test]
    fn the_pool_holds_at_most_its_bitmap_and_empty_holds_nothing() {
        let mut pool = DmaPool::new(0, DMA_POOL_MAX_PAGES + 10);
        assert_eq!(pool.pages(), DMA_POOL_MAX_PAGES);
        assert!(pool.allocate(DMA_POOL_MAX_PAGES).is_some());
        assert_eq!(pool.allocate(1), None);
        assert_eq!(DmaPool::empty().allocate(1), None);
    }

    #[test]
    fn start_up_addresses_translate_only_inside_the_map() {
        let mapped = 16 << 20;
        assert_eq!(
            start_up_physical(KERNEL_OFFSET + 0x1234, 10, mapped),
            Some(0x1234)
        );
        assert_eq!(
            start_up_physical(KERNEL_OFFSET + mapped - 4, 4, mapped),
            Some(mapped - 4)
        );
        assert_eq!(
            start_up_physical(KERNEL_OFFSET + mapped - 4, 5, mapped),
            None
        );
        assert_eq!(
            start_up_physical(0x40_0000, 1, mapped),
            None,
            "a user address"
        );
        assert_eq!(start_up_physical(u64::MAX, 2, mapped), None);
    }
}
