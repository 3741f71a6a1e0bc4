//! virtio-net: a network card with one MAC, one receive queue (0) and one
//! transmit queue (1).
//!
//! Every frame, each way, is preceded by the 12-byte `virtio_net_hdr_v1`
//! ([`guest_abi::virtio::NetHeader`]). No offload is offered, so the
//! guest's header says nothing the host needs: the host skips it on
//! transmit and writes a zeroed one (with `num_buffers` 1) on receive.
//!
//! - **Transmit**: a notify of queue 1 takes every chain ready, copies each
//!   whole Ethernet frame out of guest memory and hands it to the
//!   [`FrameSink`] (the virtual switch, later); one interrupt at the end
//!   returns all the buffers.
//! - **Receive**: the host hands frames to [`Device::receive_frames`]; each
//!   goes into the next receive buffer the guest posted, or, if there is
//!   none (or it is too small), is dropped and counted. The guest is never
//!   waited for: a network drops what it cannot deliver. Since every frame
//!   looks at the ring afresh, the driver need not notify the receive
//!   queue when it posts buffers (its used ring says
//!   `VIRTQ_USED_F_NO_NOTIFY`, which `virtio-drivers` honours): a guest
//!   that receives a batch of frames and posts their buffers back makes no
//!   exit for it. A notify that comes anyway checks the new buffers at
//!   once, so a malformed one is refused then rather than at the first
//!   frame that needs it.

use super::chain::{DescriptorChain, Direction};
use super::device::{Backend, Device, QueueSpec};
use super::error::{DeviceError, QueueError};
use super::queue::{Interrupt, Virtqueue};
use crate::guest::GuestRam;
use alloc::vec::Vec;
use guest_abi::virtio::{
    CONFIG_MAX, DeviceType, NET_HEADER_BYTES, NET_LINK_UP, feature, net_queue,
};

/// The largest Ethernet frame (without its checksum) either way: the
/// default MTU of 1500, the 14-byte header and a VLAN tag.
pub const MAX_FRAME_BYTES: usize = 1518;

/// Where transmitted frames go.
pub trait FrameSink {
    /// Takes one whole Ethernet frame from the guest.
    fn send(&mut self, frame: &[u8]);
}

/// A virtio-net device's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent by the guest and handed to the sink.
    pub tx_packets: u64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: u64,
    /// Frames from the guest dropped: shorter than the header, empty, or
    /// longer than [`MAX_FRAME_BYTES`].
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: u64,
    /// Frames for the guest dropped: no buffer posted, a buffer too small,
    /// the device not live, or the frame too long.
    pub rx_dropped: u64,
}

/// The virtio-net back end.
#[derive(Clone, Debug)]
pub struct Net<S: FrameSink> {
    mac: [u8; 6],
    sink: S,
    /// Its counts.
    pub counters: NetCounters,
    /// A frame being copied out of the guest, kept to save allocations.
    scratch: Vec<u8>,
}

impl<S: FrameSink> Net<S> {
    /// A card with address `mac`, sending to `sink`.
    pub fn new(mac: [u8; 6], sink: S) -> Self {
        Self {
            mac,
            sink,
            counters: NetCounters::default(),
            scratch: Vec::new(),
        }
    }

    /// Its MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, to change.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Sends every frame ready on the transmit queue.
    fn transmit_all<M: GuestRam>(
        &mut self,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        while let Some(chain) = ring.next_chain(mem)? {
            self.transmit(mem, &chain)?;
            ring.complete(mem, chain, 0)?;
        }
        Ok(())
    }

    /// Sends one chain's frame, or drops it if it is no frame.
    fn transmit<M: GuestRam>(
        &mut self,
        mem: &M,
        chain: &DescriptorChain,
    ) -> Result<(), QueueError> {
        let header = NET_HEADER_BYTES as u64;
        let frame_bytes = chain.bytes().saturating_sub(header);
        if chain.bytes() <= header || frame_bytes > MAX_FRAME_BYTES as u64 {
            self.counters.tx_dropped += 1;
            return Ok(());
        }
        self.scratch.resize(frame_bytes as usize, 0);
        let copied = chain.read_at(mem, header, &mut self.scratch)?;
        self.sink.send(&self.scratch[..copied]);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += copied as u64;
        Ok(())
    }

    /// Delivers `frame` into the next posted receive buffer, if there is
    /// one big enough.
    fn deliver<M: GuestRam>(
        &mut self,
        ring: &mut Virtqueue,
        mem: &mut M,
        frame: &[u8],
    ) -> Result<(), QueueError> {
        let Some(chain) = ring.next_chain(mem)? else {
            self.counters.rx_dropped += 1;
            return Ok(());
        };
        let total = NET_HEADER_BYTES + frame.len();
        if chain.bytes() < total as u64 {
            // Left posted: the next, smaller frame may fit.
            self.counters.rx_dropped += 1;
            return Ok(());
        }
        chain.write_at(mem, 0, &received_header())?;
        chain.write_at(mem, NET_HEADER_BYTES as u64, frame)?;
        ring.complete(mem, chain, total as u32)?;
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += frame.len() as u64;
        Ok(())
    }
}

/// The header of a received frame: no offload, one buffer.
fn received_header() -> [u8; NET_HEADER_BYTES] {
    let mut header = [0; NET_HEADER_BYTES];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    header
}

static NET_QUEUES: [QueueSpec; 2] = [
    QueueSpec {
        max_size: 256,
        direction: Direction::DeviceWrites,
    },
    QueueSpec {
        max_size: 256,
        direction: Direction::DeviceReads,
    },
];

impl<S: FrameSink> Backend for Net<S> {
    const NAME: &'static str = "virtio-net";
    const TYPE: DeviceType = DeviceType::Net;

    fn features(&self) -> u64 {
        feature::NET_MAC | feature::NET_STATUS
    }

    fn queues(&self) -> &'static [QueueSpec] {
        &NET_QUEUES
    }

    fn config(&self, out: &mut [u8; CONFIG_MAX]) -> usize {
        out[..6].copy_from_slice(&self.mac);
        out[6..8].copy_from_slice(&NET_LINK_UP.to_le_bytes());
        out[8..10].copy_from_slice(&1u16.to_le_bytes());
        out[10..12].copy_from_slice(&1500u16.to_le_bytes());
        12
    }

    fn completes_unprompted(&self, queue: u16) -> bool {
        queue == net_queue::RECEIVE
    }

    fn needs_notify(&self, queue: u16) -> bool {
        // Every frame for the guest looks at the receive ring afresh.
        queue != net_queue::RECEIVE
    }

    fn process<M: GuestRam>(
        &mut self,
        queue: u16,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        match queue {
            net_queue::TRANSMIT => self.transmit_all(ring, mem),
            // Receive buffers wait for frames from the host; a notify
            // (which the driver need not make) has them checked now.
            _ => ring.check_available(mem),
        }
    }
}

impl<S: FrameSink> Device<Net<S>> {
    /// Delivers frames from the host to the guest, one per posted receive
    /// buffer, and says whether to interrupt it (once, for all of them).
    /// Frames that find no buffer are dropped and counted.
    pub fn receive_frames<'f, M: GuestRam>(
        &mut self,
        mem: &mut M,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> Result<Interrupt, DeviceError> {
        let mut frames = frames.into_iter();
        if !self.queue_is_live(net_queue::RECEIVE) {
            self.backend_mut().counters.rx_dropped += frames.count() as u64;
            return Ok(Interrupt::NotNeeded);
        }
        self.run_queue(mem, net_queue::RECEIVE, |net, ring, mem| {
            for frame in frames.by_ref() {
                if frame.len() > MAX_FRAME_BYTES || frame.is_empty() {
                    net.counters.rx_dropped += 1;
                    continue;
                }
                net.deliver(ring, mem, frame)?;
            }
            Ok(())
        })
    }

    /// Delivers one frame (see [`Self::receive_frames`]).
    pub fn receive_frame<M: GuestRam>(
        &mut self,
        mem: &mut M,
        frame: &[u8],
    ) -> Result<Interrupt, DeviceError> {
        self.receive_frames(mem, [frame])
    }
}
