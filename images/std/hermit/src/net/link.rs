//! The guest's virtio-net card as a smoltcp [`Device`]: frames in and out
//! of `VirtIONetRaw`, with every receive buffer kept posted.
//!
//! The card is the one the host gives every guest (found by its type,
//! not its number). Its receive queue always holds [`QUEUE_SIZE`] empty
//! buffers: the host hands a guest frames only into posted buffers, and
//! drops (and counts) a frame that finds none, as a network does (a TCP
//! window of 64 KiB is some 45 frames). A received frame is copied out of
//! its buffer into the token smoltcp reads, and the buffer goes straight
//! back to the card, so smoltcp's two tokens (a receive and a transmit
//! one, alive together) need not share the card.
//!
//! Transmit buffers come from a free list and go back to it once the card
//! has used them: the host takes a frame inside the notify hypercall, so
//! a buffer is free again at the next send.
//!
//! # One exit per batch
//!
//! A notify is an exit, and virtio-drivers notifies the device for each
//! buffer it adds. So the card's transport holds its notifies back
//! (`PageTransport::deferring_notifies`): a frame smoltcp sends is only
//! put on the transmit ring, and one notify hands the host every frame of
//! a poll, made after the poll by `super::with_stack` (once the stack's
//! guard is down: see there). Were the transmit ring to fill within a
//! poll, [`Device::transmit`] flushes early ([`Link::flush`]) and takes
//! the buffers back.
//! The receive queue needs no notify at all: the host looks at it
//! whenever it has a frame, and says so in the ring, which virtio-drivers
//! honours, so posting a buffer back costs nothing. Nor does the transmit
//! queue ask for interrupts: its buffers are taken back by polling, and an
//! interrupt raised by a notify made with interrupts off (inside the
//! stack's guard) would cost another exit when they come back on.
//!
//! Every buffer is on the heap, which the start-up map shows, so the card
//! reaches it through `GuestHal`'s address translation; only the rings
//! come from guest-rt's DMA pool.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use guest_abi::virtio::net_queue;
use guest_rt::virtio::virtio_drivers::device::net::VirtIONetRaw;
use guest_rt::virtio::{self, GuestHal, PageTransport};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Descriptors per queue: receive buffers posted, frames in flight.
pub const QUEUE_SIZE: usize = 128;

/// The largest Ethernet frame carried (without a VLAN tag or the FCS).
pub const MAX_FRAME_BYTES: usize = 1514;

/// A buffer's bytes: the 12-byte virtio-net header and the largest frame,
/// rounded up.
const BUFFER_BYTES: usize = 2048;

/// What passed through the card.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Frames handed to the card.
    pub sent: u64,
    /// Frames taken from it.
    pub received: u64,
    /// Frames smoltcp produced that found no free descriptor.
    pub send_dropped: u64,
}

/// The card, its posted receive buffers and its transmit buffers.
pub struct Link {
    card: VirtIONetRaw<GuestHal, PageTransport, QUEUE_SIZE>,
    /// The card's device number, for [`virtio::flush_notifies`].
    device: usize,
    /// The receive buffer posted under each token (its head descriptor).
    posted: Vec<Option<Box<[u8]>>>,
    /// The transmit buffer in flight under each token.
    in_flight: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers the card is done with.
    free: Vec<Box<[u8]>>,
    /// Bytes of the virtio-net header before each frame.
    header_bytes: usize,
    counters: Counters,
}

/// Why the card could not be brought up.
#[derive(Debug)]
pub enum LinkError {
    /// The device page or the host refused.
    Device(guest_rt::virtio::DeviceError),
    /// The driver refused.
    Driver(guest_rt::virtio::virtio_drivers::Error),
}

impl Link {
    /// Brings device `transport` up as a network card and posts a buffer
    /// on every receive descriptor.
    pub fn open(transport: PageTransport) -> Result<Self, LinkError> {
        let device = transport.index();
        let transport = transport
            .deferring_notifies()
            .without_interrupts_on(net_queue::TRANSMIT);
        let card = VirtIONetRaw::new(transport).map_err(LinkError::Driver)?;
        let header_bytes = card
            .fill_buffer_header(&mut [0u8; BUFFER_BYTES])
            .map_err(LinkError::Driver)?;
        let mut link = Link {
            card,
            device,
            posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            in_flight: (0..QUEUE_SIZE).map(|_| None).collect(),
            free: Vec::new(),
            header_bytes,
            counters: Counters::default(),
        };
        for _ in 0..QUEUE_SIZE {
            link.post(new_buffer()).map_err(LinkError::Driver)?;
        }
        link.flush();
        Ok(link)
    }

    /// Hands the host every frame put on the transmit ring since the last
    /// flush, with one notify (none if there is nothing new).
    pub fn flush(&mut self) {
        virtio::flush_notifies(self.device);
    }

    /// The card's device number.
    pub fn device(&self) -> usize {
        self.device
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.card.mac_address()
    }

    /// What passed through the card so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Clears the card's interrupt status (the wake-up itself was taken by
    /// the interrupt handler).
    pub fn acknowledge_interrupt(&mut self) {
        self.card.ack_interrupt();
    }

    /// Posts `buffer` for a frame.
    fn post(
        &mut self,
        mut buffer: Box<[u8]>,
    ) -> Result<(), guest_rt::virtio::virtio_drivers::Error> {
        // SAFETY: the buffer is a heap allocation we keep, untouched, in
        // `posted` under its token until the card has used it
        // (`take_frame` calls receive_complete with the same buffer).
        let token = unsafe { self.card.receive_begin(&mut buffer) }?;
        self.posted[usize::from(token)] = Some(buffer);
        Ok(())
    }

    /// The next received frame, copied out; its buffer is posted again.
    fn take_frame(&mut self) -> Option<Received> {
        let token = self.card.poll_receive()?;
        let mut buffer = self.posted.get_mut(usize::from(token))?.take()?;
        // SAFETY: the buffer posted under this token, as the driver asks.
        let done = unsafe { self.card.receive_complete(token, &mut buffer) };
        let mut received = Received {
            frame: [0; MAX_FRAME_BYTES],
            len: 0,
        };
        if let Ok((header, len)) = done {
            let len = len.min(MAX_FRAME_BYTES);
            received.frame[..len].copy_from_slice(&buffer[header..header + len]);
            received.len = len;
            self.counters.received += 1;
        }
        // A refused post leaves one descriptor fewer; the card still works.
        let _ = self.post(buffer);
        Some(received)
    }

    /// Takes back every transmit buffer the card has used.
    fn reclaim(&mut self) {
        while let Some(token) = self.card.poll_transmit() {
            let Some(buffer) = self
                .in_flight
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                break;
            };
            // SAFETY: the buffer transmitted under this token.
            let _ = unsafe { self.card.transmit_complete(token, &buffer) };
            self.free.push(buffer);
        }
    }

    /// Sends the `len`-byte frame `fill` writes.
    fn transmit_frame<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reclaim();
        let mut buffer = self.free.pop().unwrap_or_else(new_buffer);
        let header = self.header_bytes;
        let len = len.min(MAX_FRAME_BYTES);
        buffer[..header].fill(0);
        let result = fill(&mut buffer[header..header + len]);
        // SAFETY: the buffer is a heap allocation kept, untouched, in
        // `in_flight` under its token until the card has used it
        // (`reclaim` calls transmit_complete with the same buffer).
        match unsafe { self.card.transmit_begin(&buffer[..header + len]) } {
            Ok(token) => {
                self.in_flight[usize::from(token)] = Some(buffer);
                self.counters.sent += 1;
                self.reclaim();
            }
            Err(_) => {
                self.free.push(buffer);
                self.counters.send_dropped += 1;
            }
        }
        result
    }
}

/// A zeroed buffer for the card.
fn new_buffer() -> Box<[u8]> {
    vec![0u8; BUFFER_BYTES].into_boxed_slice()
}

/// A frame taken from the card, for smoltcp to read.
pub struct Received {
    frame: [u8; MAX_FRAME_BYTES],
    len: usize,
}

impl RxToken for Received {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.frame[..self.len])
    }
}

/// The right to send one frame.
pub struct Transmit<'a> {
    link: &'a mut Link,
}

impl TxToken for Transmit<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.link.transmit_frame(len, f)
    }
}

impl Device for Link {
    type RxToken<'a> = Received;
    type TxToken<'a> = Transmit<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Received, Transmit<'_>)> {
        let frame = self.take_frame()?;
        Some((frame, Transmit { link: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Transmit<'_>> {
        self.reclaim();
        if !self.card.can_send() && virtio::notifies_pending(self.device) {
            // The ring is full of frames the host has not been told of:
            // this batch ends here, and its buffers come back at once.
            self.flush();
            self.reclaim();
        }
        self.card.can_send().then_some(Transmit { link: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = MAX_FRAME_BYTES;
        capabilities
    }
}
