//! The transport: one device page in guest memory, the status and
//! feature handshake, the queues, and the interrupt status.
//!
//! A [`Device`] is the common half of every virtio device, the part
//! virtio-PCI or virtio-MMIO would do in registers. It writes the device
//! fields of its page ([`Device::install`]), answers the two hypercalls
//! ([`Device::status_call`], [`Device::notify`]) by reading the driver's
//! fields only then and checking them, starts and stops queues, and runs a
//! batch of work on a queue for its [`Backend`] (the device proper: net,
//! console, entropy), publishing the batch's completions at once and
//! setting the interrupt status when the guest should hear of them.
//!
//! A guest that hands the device a malformed queue breaks it: the status
//! gains `DEVICE_NEEDS_RESET`, the interrupt status `CONFIG_CHANGED`, the
//! device does nothing more until the driver resets it, and the call
//! returns the [`DeviceError`] that says why.

use super::chain::Direction;
use super::error::{DeviceError, Problem, QueueError};
use super::memory;
use super::queue::{Interrupt, QueueLayout, Virtqueue};
use crate::addr::GuestPhysAddr;
use crate::guest::GuestRam;
use crate::paging::OutsideGuestMemory;
use alloc::vec::Vec;
use guest_abi::virtio::{
    CONFIG_MAX, DEVICE_MAGIC, DEVICE_PAGE_BYTES, DEVICE_PAGES_GPA, DeviceType, MAX_DEVICES,
    MAX_QUEUES, device_vector, feature, interrupt, offset, status,
};

/// What a device offers for one of its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    /// The largest size the driver may give it (a power of two).
    pub max_size: u16,
    /// Which way its buffers go.
    pub direction: Direction,
}

/// The device proper, behind the transport.
pub trait Backend {
    /// Its name in reports (`virtio-net`).
    const NAME: &'static str;
    /// Its virtio device type.
    const TYPE: DeviceType;

    /// The device-specific features it offers (the transport adds
    /// `VIRTIO_F_VERSION_1`): none unless it says.
    fn features(&self) -> u64 {
        0
    }

    /// Its queues, by number (at most [`MAX_QUEUES`]).
    fn queues(&self) -> &'static [QueueSpec];

    /// Writes its config space into `out`; returns how many bytes it has
    /// (none unless it says).
    fn config(&self, _out: &mut [u8; CONFIG_MAX]) -> usize {
        0
    }

    /// Forgets everything the driver set up (a reset); the transport
    /// forgets the queues itself, so a device that keeps nothing else does
    /// nothing here.
    fn reset(&mut self) {}

    /// Whether, with queue `queue` ready, it may later complete a buffer
    /// on its own (a frame or input arriving), and so wake a halted guest:
    /// not unless it says.
    fn completes_unprompted(&self, _queue: u16) -> bool {
        false
    }

    /// Whether the driver must notify queue `queue` for the device to see
    /// its new buffers: yes, unless the device looks at the queue on its
    /// own whenever it has something for it (then the host sets
    /// `VIRTQ_USED_F_NO_NOTIFY` in its used ring when it starts, and a
    /// notify only has the new buffers checked early).
    fn needs_notify(&self, _queue: u16) -> bool {
        true
    }

    /// Does the work the driver notified queue `queue` of: takes every
    /// chain that is ready, and completes what it can.
    fn process<M: GuestRam>(
        &mut self,
        queue: u16,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError>;
}

/// A device's own counts, printed with the guest's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Notify hypercalls.
    pub notifies: u64,
    /// Status hypercalls.
    pub status_calls: u64,
    /// Virtual interrupts asked for (one per batch).
    pub interrupts: u64,
    /// Resets by the driver.
    pub resets: u64,
    /// Malformed queues, rings or descriptors met (each breaks the device).
    pub bad_descriptors: u64,
}

/// The status bits a driver may set.
const DRIVER_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// One virtio device of a guest: the transport around a [`Backend`].
#[derive(Clone, Debug)]
pub struct Device<B: Backend> {
    page: GuestPhysAddr,
    vector: u8,
    backend: B,
    /// The status the host accepted.
    status: u32,
    /// The features the host accepted (valid once `FEATURES_OK` is).
    driver_features: u64,
    /// The live queues, by number.
    queues: Vec<Option<Virtqueue>>,
    /// Its counts.
    pub counters: DeviceCounters,
}

impl<B: Backend> Device<B> {
    /// Device number `index` of its guest (its page and its vector follow
    /// from the number), or `None` past [`MAX_DEVICES`].
    pub fn new(index: usize, backend: B) -> Option<Self> {
        let vector = device_vector(index)?;
        let page = GuestPhysAddr::new(DEVICE_PAGES_GPA + index as u64 * DEVICE_PAGE_BYTES);
        let queues = backend.queues().iter().map(|_| None).collect();
        Some(Self {
            page,
            vector,
            backend,
            status: 0,
            driver_features: 0,
            queues,
            counters: DeviceCounters::default(),
        })
    }

    /// The guest-physical address of its page.
    pub fn page(&self) -> GuestPhysAddr {
        self.page
    }

    /// Its virtual interrupt vector.
    pub fn vector(&self) -> u8 {
        self.vector
    }

    /// The back end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The back end, to change.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The status the host accepted last.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features both sides agreed on (0 before `FEATURES_OK`).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    /// The features offered: the back end's and `VIRTIO_F_VERSION_1`.
    pub fn offered_features(&self) -> u64 {
        self.backend.features() | feature::VERSION_1
    }

    /// Whether the driver has it running: `DRIVER_OK`, and neither
    /// `FAILED` nor `DEVICE_NEEDS_RESET`.
    pub fn is_live(&self) -> bool {
        self.status & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET)
            == status::DRIVER_OK
    }

    /// Whether queue `queue` is live: the device is, and the queue ready.
    pub fn queue_is_live(&self, queue: u16) -> bool {
        self.is_live() && self.queue(queue).is_some()
    }

    /// Whether the device may still raise an interrupt without being asked
    /// (a frame or input for a ready receive queue): a guest halted with
    /// such a device is waiting, not stuck.
    pub fn may_interrupt(&self) -> bool {
        (0..self.queues.len() as u16)
            .any(|q| self.queue_is_live(q) && self.backend.completes_unprompted(q))
    }

    fn queue(&self, queue: u16) -> Option<&Virtqueue> {
        self.queues.get(usize::from(queue))?.as_ref()
    }

    /// Writes the whole page as a reset device has it: the device fields
    /// filled in, every driver field zero. At the guest's start, and at
    /// every reset (the guest may have scribbled on any of it).
    pub fn install<M: GuestRam>(&self, mem: &mut M) -> Result<(), OutsideGuestMemory> {
        mem.write_bytes(self.page, &[0; DEVICE_PAGE_BYTES as usize])?;
        let at = |offset: u64| memory::offset(self.page, offset);
        memory::write_u32(mem, at(offset::MAGIC)?, DEVICE_MAGIC)?;
        memory::write_u32(mem, at(offset::DEVICE_TYPE)?, B::TYPE as u32)?;
        memory::write_u64(mem, at(offset::DEVICE_FEATURES)?, self.offered_features())?;
        memory::write_u32(mem, at(offset::VECTOR)?, u32::from(self.vector))?;
        let specs = self.backend.queues();
        let count = specs.len().min(MAX_QUEUES);
        memory::write_u32(mem, at(offset::QUEUE_COUNT)?, count as u32)?;
        for (q, spec) in specs.iter().take(count).enumerate() {
            let max = at(offset::queue(q) + offset::queue::MAX_SIZE)?;
            memory::write_u16(mem, max, spec.max_size)?;
        }
        let mut config = [0; CONFIG_MAX];
        let len = self.backend.config(&mut config).min(CONFIG_MAX);
        memory::write_u32(mem, at(offset::CONFIG_LEN)?, len as u32)?;
        mem.write_bytes(at(offset::CONFIG)?, &config[..len])
    }

    /// The `virtio_status` hypercall: reads the status the driver wrote and
    /// acts on what changed (see `guest_abi::virtio`); returns the status
    /// the host accepted, which it also writes back to the page.
    pub fn status_call<M: GuestRam>(&mut self, mem: &mut M) -> Result<u32, DeviceError> {
        self.counters.status_calls += 1;
        let wanted = self.read_page_u32(mem, offset::STATUS)?;
        if wanted == 0 {
            self.reset(mem)?;
            return Ok(0);
        }
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.advance_status(mem, wanted & DRIVER_BITS)?;
        }
        self.write_status(mem)?;
        Ok(self.status)
    }

    /// Takes the driver's new status bits, in the order virtio §3.1.1
    /// gives them.
    fn advance_status<M: GuestRam>(&mut self, mem: &mut M, wanted: u32) -> Result<(), DeviceError> {
        // The handshake's steps stay done until a reset; the rest is the
        // driver's to set as it likes.
        let steps = status::FEATURES_OK | status::DRIVER_OK;
        self.status = (self.status & steps) | (wanted & !steps);
        if wanted & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            self.negotiate(mem)?;
        }
        if self.status & status::FEATURES_OK != 0 {
            self.sync_queues(mem)?;
        }
        if wanted & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            if self.status & status::FEATURES_OK == 0 {
                return Err(self.break_device(mem, None, Problem::DriverOkWithoutFeatures));
            }
            self.status |= status::DRIVER_OK;
        }
        Ok(())
    }

    /// Accepts the driver's features if they are offered ones and include
    /// `VIRTIO_F_VERSION_1` (this transport has no legacy mode); otherwise
    /// `FEATURES_OK` stays clear, which the driver sees when it reads the
    /// status back.
    fn negotiate<M: GuestRam>(&mut self, mem: &mut M) -> Result<(), DeviceError> {
        let wanted = self.read_page_u64(mem, offset::DRIVER_FEATURES)?;
        let offered = self.offered_features();
        if wanted & !offered == 0 && wanted & feature::VERSION_1 != 0 {
            self.driver_features = wanted;
            self.status |= status::FEATURES_OK;
        }
        Ok(())
    }

    /// Starts every queue the driver newly marked ready (checking its
    /// layout) and stops every one it no longer marks ready. A ready
    /// queue's layout is read once, when it starts: changing it afterwards
    /// is the driver's mistake, and changes nothing.
    fn sync_queues<M: GuestRam>(&mut self, mem: &mut M) -> Result<(), DeviceError> {
        let specs = self.backend.queues();
        for (q, spec) in specs.iter().enumerate().take(MAX_QUEUES) {
            let base = offset::queue(q);
            let ready = self.read_page_u16(mem, base + offset::queue::READY)? != 0;
            match (ready, self.queues[q].is_some()) {
                (true, false) => {
                    let ring = self
                        .start_queue(mem, q as u16, base, *spec)
                        .map_err(|e| self.break_device(mem, Some(q as u16), Problem::Queue(e)))?;
                    self.queues[q] = Some(ring);
                }
                (false, true) => self.queues[q] = None,
                _ => {}
            }
        }
        Ok(())
    }

    /// Queue `queue`, whose descriptor is at `base` in the page, as the
    /// driver laid it out (checked); told it needs no notify if the back
    /// end looks at it by itself.
    fn start_queue<M: GuestRam>(
        &self,
        mem: &mut M,
        queue: u16,
        base: u64,
        spec: QueueSpec,
    ) -> Result<Virtqueue, QueueError> {
        let layout = self.read_layout(mem, base, spec.max_size)?;
        let ring = Virtqueue::new(layout, spec.direction);
        if !self.backend.needs_notify(queue) {
            ring.suppress_notifies(mem)?;
        }
        Ok(ring)
    }

    /// Reads and checks the layout the driver wrote for the queue whose
    /// descriptor is at `base` in the page.
    fn read_layout<M: GuestRam>(
        &self,
        mem: &M,
        base: u64,
        max: u16,
    ) -> Result<QueueLayout, QueueError> {
        let field = |offset: u64| memory::offset(self.page, base + offset);
        let size = memory::read_u16(mem, field(offset::queue::SIZE)?)?;
        let descriptors = memory::read_u64(mem, field(offset::queue::DESCRIPTORS)?)?;
        let available = memory::read_u64(mem, field(offset::queue::DRIVER_AREA)?)?;
        let used = memory::read_u64(mem, field(offset::queue::DEVICE_AREA)?)?;
        QueueLayout::check(mem, size, max, descriptors, available, used)
    }

    /// Back to the state of a device just found: the back end and queues
    /// forgotten, the page written afresh.
    fn reset<M: GuestRam>(&mut self, mem: &mut M) -> Result<(), DeviceError> {
        self.counters.resets += 1;
        self.backend.reset();
        self.status = 0;
        self.driver_features = 0;
        self.queues.iter_mut().for_each(|q| *q = None);
        self.install(mem).map_err(|e| self.page_error(e))
    }

    /// The `virtio_notify` hypercall: processes every chain ready on queue
    /// `queue`, and says whether the guest must be interrupted for the
    /// batch (the interrupt status is already set). A notify before the
    /// device or the queue is live does nothing.
    pub fn notify<M: GuestRam>(
        &mut self,
        mem: &mut M,
        queue: u64,
    ) -> Result<Interrupt, DeviceError> {
        self.counters.notifies += 1;
        let Some(q) = u16::try_from(queue)
            .ok()
            .filter(|&q| usize::from(q) < self.queues.len())
        else {
            return Err(DeviceError {
                device: B::NAME,
                queue: None,
                problem: Problem::NoSuchQueue {
                    queue,
                    count: self.queues.len(),
                },
            });
        };
        self.run_queue(mem, q, |backend, ring, mem| backend.process(q, ring, mem))
    }

    /// Runs `work` on queue `queue` if it is live, then publishes what it
    /// completed in one go, and sets the interrupt status if the guest
    /// wants to hear of it. A malformed ring breaks the device.
    pub fn run_queue<M: GuestRam>(
        &mut self,
        mem: &mut M,
        queue: u16,
        work: impl FnOnce(&mut B, &mut Virtqueue, &mut M) -> Result<(), QueueError>,
    ) -> Result<Interrupt, DeviceError> {
        if !self.is_live() {
            return Ok(Interrupt::NotNeeded);
        }
        let Some(ring) = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
        else {
            return Ok(Interrupt::NotNeeded);
        };
        let outcome = work(&mut self.backend, ring, mem).and_then(|()| ring.publish(mem));
        match outcome {
            Ok(Interrupt::NotNeeded) => Ok(Interrupt::NotNeeded),
            Ok(Interrupt::Needed) => {
                self.counters.interrupts += 1;
                self.set_interrupt_status(mem, interrupt::QUEUE)?;
                Ok(Interrupt::Needed)
            }
            Err(e) => Err(self.break_device(mem, Some(queue), Problem::Queue(e))),
        }
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`, and a config-change
    /// interrupt status for the driver to notice) and gives the error.
    fn break_device<M: GuestRam>(
        &mut self,
        mem: &mut M,
        queue: Option<u16>,
        problem: Problem,
    ) -> DeviceError {
        self.counters.bad_descriptors += 1;
        self.status |= status::DEVICE_NEEDS_RESET;
        // Best effort: the page may be the very thing that is broken.
        let _ = self.write_status(mem);
        let _ = self.set_interrupt_status(mem, interrupt::CONFIG_CHANGED);
        DeviceError {
            device: B::NAME,
            queue,
            problem,
        }
    }

    fn set_interrupt_status<M: GuestRam>(&self, mem: &mut M, bits: u64) -> Result<(), DeviceError> {
        let at =
            memory::offset(self.page, offset::INTERRUPT_STATUS).map_err(|e| self.page_error(e))?;
        memory::set_bits(mem, at, bits).map_err(|e| self.page_error(e))
    }

    fn write_status<M: GuestRam>(&self, mem: &mut M) -> Result<(), DeviceError> {
        let at = memory::offset(self.page, offset::STATUS).map_err(|e| self.page_error(e))?;
        memory::write_u32(mem, at, self.status).map_err(|e| self.page_error(e))
    }

    fn read_page_u16<M: GuestRam>(&self, mem: &M, offset: u64) -> Result<u16, DeviceError> {
        memory::offset(self.page, offset)
            .and_then(|at| memory::read_u16(mem, at))
            .map_err(|e| self.page_error(e))
    }

    fn read_page_u32<M: GuestRam>(&self, mem: &M, offset: u64) -> Result<u32, DeviceError> {
        memory::offset(self.page, offset)
            .and_then(|at| memory::read_u32(mem, at))
            .map_err(|e| self.page_error(e))
    }

    fn read_page_u64<M: GuestRam>(&self, mem: &M, offset: u64) -> Result<u64, DeviceError> {
        memory::offset(self.page, offset)
            .and_then(|at| memory::read_u64(mem, at))
            .map_err(|e| self.page_error(e))
    }

    /// The page (not the one field that failed: the page is what the
    /// host put in the wrong place) is outside guest memory.
    fn page_error(&self, _: OutsideGuestMemory) -> DeviceError {
        DeviceError {
            device: B::NAME,
            queue: None,
            problem: Problem::PageOutsideMemory(self.page),
        }
    }
}

const _: () = assert!(MAX_DEVICES <= 8 && DEVICE_PAGE_BYTES == crate::addr::PAGE_SIZE);

/// What the run loop needs of any device, whatever its back end, so that
/// a guest's devices can sit in one list (`Box<dyn VirtioDevice<M>>`) that
/// the two hypercalls index.
pub trait VirtioDevice<M: GuestRam> {
    /// Its name in reports.
    fn name(&self) -> &'static str;
    /// Its virtual interrupt vector.
    fn vector(&self) -> u8;
    /// Writes its page (at the guest's start).
    fn install(&self, mem: &mut M) -> Result<(), OutsideGuestMemory>;
    /// The `virtio_status` hypercall.
    fn status_call(&mut self, mem: &mut M) -> Result<u32, DeviceError>;
    /// The `virtio_notify` hypercall.
    fn notify(&mut self, mem: &mut M, queue: u64) -> Result<Interrupt, DeviceError>;
    /// Whether it may interrupt a halted guest later.
    fn may_interrupt(&self) -> bool;
    /// Its counts.
    fn counters(&self) -> DeviceCounters;
}

impl<M: GuestRam, B: Backend> VirtioDevice<M> for Device<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }
    fn vector(&self) -> u8 {
        self.vector
    }
    fn install(&self, mem: &mut M) -> Result<(), OutsideGuestMemory> {
        Device::install(self, mem)
    }
    fn status_call(&mut self, mem: &mut M) -> Result<u32, DeviceError> {
        Device::status_call(self, mem)
    }
    fn notify(&mut self, mem: &mut M, queue: u64) -> Result<Interrupt, DeviceError> {
        Device::notify(self, mem, queue)
    }
    fn may_interrupt(&self) -> bool {
        Device::may_interrupt(self)
    }
    fn counters(&self) -> DeviceCounters {
        self.counters
    }
}
