//! The virtio-net card, driven with `virtio-drivers`.
//!
//! The guests' cards are the host's own virtio-net devices
//! ([`host::virtio::net`]); this is the other way round: the host is the
//! *driver* of a virtio-net device that QEMU (and many clouds) give the
//! machine. [`VirtioNic::bring_up`] takes the card [`super::Uplink::probe`]
//! found on PCI and brings it up with `virtio-drivers` (its PCI transport
//! and its raw net driver).
//!
//! The frames live in buffers of our own ([`DmaBuffers`](super::DmaBuffers)), physically
//! contiguous frames from the frame allocator lent to the card for good:
//! each receive buffer goes back to the card as soon as its frame has been
//! handed on, each transmit buffer once the card says it is sent. The
//! [`KernelHal`] tells `virtio-drivers` how to get DMA memory and how a
//! pointer of ours becomes an address the card can use.

use super::{BUFFER_BYTES, DmaBuffers, UplinkCounters, device_registers, map_bar};
use crate::boot::Region;
use crate::memory::{self, PHYS_OFFSET};
use crate::pci::{self, PortIoConfig};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use host::addr::{HostPhysAddr, PAGE_SIZE};
use host::net::MacAddress;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Descriptors per queue, and so frames in flight each way. 64 receive
/// buffers hold a burst of 90 KiB: a TCP window's worth between two polls.
pub const QUEUE_SIZE: usize = 64;

/// The card as `virtio-drivers` drives it.
type NetDevice = VirtIONetRaw<KernelHal, PciTransport, QUEUE_SIZE>;

/// The virtio-net card, up and polled.
pub struct VirtioNic {
    device: NetDevice,
    location: DeviceFunction,
    mac: MacAddress,
    /// `QUEUE_SIZE` receive buffers, then `QUEUE_SIZE` transmit buffers.
    buffers: DmaBuffers,
    /// For each receive token the card holds, the buffer behind it.
    rx_buffer_of: [usize; QUEUE_SIZE],
    /// For each transmit token in flight, its buffer and length.
    tx_in_flight: [Option<(usize, usize)>; QUEUE_SIZE],
    /// Transmit buffers not lent to the card.
    tx_free: Vec<usize>,
    counters: UplinkCounters,
}

/// Why a card that was found could not be brought up.
#[derive(Debug)]
pub enum ProbeError {
    Bars,
    Map,
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    Device(virtio_drivers::Error),
    NoMemory,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bars => f.write_str("its registers (BARs) could not be placed"),
            Self::Map => f.write_str("its registers could not be mapped"),
            Self::Transport(e) => write!(f, "its virtio PCI capabilities: {e}"),
            Self::Device(e) => write!(f, "virtio set-up: {e}"),
            Self::NoMemory => f.write_str("no memory for its buffers"),
        }
    }
}

impl VirtioNic {
    /// Brings up the virtio-net card at `location`.
    pub fn bring_up(
        root: &mut PciRoot<PortIoConfig>,
        location: DeviceFunction,
        regions: &[Region],
    ) -> Result<VirtioNic, ProbeError> {
        pci::assign_bars(root, location, regions).ok_or(ProbeError::Bars)?;
        for bar in pci::memory_bars(root, location) {
            if bar.address.as_u64() != 0 && bar.size != 0 {
                map_bar(bar).ok_or(ProbeError::Map)?;
            }
        }
        pci::enable(root, location);
        let transport =
            PciTransport::new::<KernelHal, _>(root, location).map_err(ProbeError::Transport)?;
        let device = NetDevice::new(transport).map_err(ProbeError::Device)?;
        let buffers = DmaBuffers::new(2 * QUEUE_SIZE).ok_or(ProbeError::NoMemory)?;
        let mut uplink = VirtioNic {
            mac: MacAddress::new(device.mac_address()),
            device,
            location,
            buffers,
            rx_buffer_of: [0; QUEUE_SIZE],
            tx_in_flight: [None; QUEUE_SIZE],
            tx_free: (QUEUE_SIZE..2 * QUEUE_SIZE).collect(),
            counters: UplinkCounters::default(),
        };
        for buffer in 0..QUEUE_SIZE {
            uplink
                .lend_for_receive(buffer)
                .map_err(ProbeError::Device)?;
        }
        Ok(uplink)
    }

    /// The card's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Where it sits on PCI (`00:03.0`).
    pub fn location(&self) -> DeviceFunction {
        self.location
    }

    /// What it has done so far.
    pub fn counters(&self) -> UplinkCounters {
        self.counters
    }

    /// Hands every frame received since the last call to `deliver`, oldest
    /// first (at most one queue's worth, so one call is bounded work), and
    /// gives the buffers back to the card. Returns how many it handed on.
    pub fn receive(&mut self, mut deliver: impl FnMut(&[u8])) -> usize {
        let mut delivered = 0;
        while delivered < QUEUE_SIZE {
            let Some(token) = self.device.poll_receive() else {
                break;
            };
            // The token comes from the card's used ring: one out of range
            // is the card misbehaving, counted, and the queue left alone.
            let Some(&buffer) = self.rx_buffer_of.get(usize::from(token)) else {
                self.counters.rx_errors += 1;
                break;
            };
            // SAFETY: `buffer` is the one lent with `token` (recorded in
            // `lend_for_receive`), and the card has given it back.
            let done = unsafe {
                self.device
                    .receive_complete(token, self.buffers.slice(buffer))
            };
            match done {
                Ok((header, length)) => {
                    let frame = &self.buffers.slice(buffer)[header..header + length];
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += length as u64;
                    deliver(frame);
                    delivered += 1;
                }
                Err(_) => self.counters.rx_errors += 1,
            }
            if self.lend_for_receive(buffer).is_err() {
                // The queue had a free slot (this one): cannot happen.
                self.counters.rx_errors += 1;
            }
        }
        delivered
    }

    /// Sends frames from `frames` while the card has buffers free, taking
    /// each from the iterator only when it can be sent: for the switch's
    /// `drain`, whose iterator leaves untaken frames queued. Returns how
    /// many it took.
    pub fn transmit_from<'a>(&mut self, mut frames: impl Iterator<Item = &'a [u8]>) -> usize {
        self.reclaim_sent();
        let mut taken = 0;
        while !self.tx_free.is_empty() && self.device.can_send() {
            let Some(frame) = frames.next() else {
                break;
            };
            self.send(frame);
            taken += 1;
        }
        taken
    }

    /// Copies `frame` into a free transmit buffer behind the virtio-net
    /// header and lends it to the card.
    fn send(&mut self, frame: &[u8]) -> bool {
        let Some(&buffer) = self.tx_free.last() else {
            return false;
        };
        let slice = self.buffers.slice(buffer);
        let Ok(header) = self.device.fill_buffer_header(slice) else {
            return false;
        };
        if header + frame.len() > BUFFER_BYTES {
            self.counters.tx_oversize += 1;
            return true;
        }
        slice[header..header + frame.len()].copy_from_slice(frame);
        let length = header + frame.len();
        // SAFETY: the buffer is ours alone until the card hands its token
        // back (`reclaim_sent`), which is the only place it is touched
        // again.
        match unsafe { self.device.transmit_begin(&slice[..length]) } {
            Ok(token) => {
                self.tx_free.pop();
                self.tx_in_flight[usize::from(token)] = Some((buffer, length));
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += frame.len() as u64;
                true
            }
            Err(_) => false,
        }
    }

    /// Takes back the transmit buffers the card is done with.
    fn reclaim_sent(&mut self) {
        while let Some(token) = self.device.poll_transmit() {
            let in_flight = self.tx_in_flight.get_mut(usize::from(token));
            let Some((buffer, length)) = in_flight.and_then(Option::take) else {
                // A token we never lent: the card misbehaves; stop here
                // rather than give it a buffer it may still own.
                return;
            };
            let slice = &self.buffers.slice(buffer)[..length];
            // SAFETY: the same buffer and length `transmit_begin` took.
            if unsafe { self.device.transmit_complete(token, slice) }.is_ok() {
                self.tx_free.push(buffer);
            }
        }
    }

    /// Lends receive buffer `buffer` to the card.
    fn lend_for_receive(&mut self, buffer: usize) -> virtio_drivers::Result<()> {
        // SAFETY: the buffer is in the receive half, not lent (it was
        // never, or its completion was just taken), and nothing touches it
        // until the card gives it back in `receive`.
        let token = unsafe { self.device.receive_begin(self.buffers.slice(buffer))? };
        self.rx_buffer_of[usize::from(token)] = buffer;
        Ok(())
    }
}

/// The address the card uses for a byte the host reaches at `virt`: in the
/// direct map, its physical address; in the kernel image (its data, its
/// stack), which runs identity-mapped, the same address.
fn dma_address(virt: u64) -> PhysAddr {
    if virt >= PHYS_OFFSET {
        return virt - PHYS_OFFSET;
    }
    let (start, end) = memory::kernel_image();
    assert!(
        (start.as_u64()..end.as_u64()).contains(&virt),
        "nic: buffer at {virt:#x} is neither in the direct map nor in the kernel image"
    );
    virt
}

/// `virtio-drivers`' view of the host's memory.
pub struct KernelHal;

// SAFETY: `dma_alloc` hands out zeroed frames of its own (the frame
// allocator gives each once), page-aligned, reached through the direct map;
// `mmio_phys_to_virt` returns uncached mappings of device registers only;
// `share` translates addresses the host can reach (the direct map, the
// identity-mapped kernel image), both physically contiguous within a
// buffer, so no copy is needed and `unshare` has nothing to do.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(base) = memory::alloc_contiguous(pages as u64) else {
            return (0, NonNull::dangling());
        };
        let virt = memory::phys_to_virt(base);
        // SAFETY: `pages` frames just taken, ours alone, in the direct map.
        unsafe { virt.write_bytes(0, pages * PAGE_SIZE as usize) };
        match NonNull::new(virt) {
            Some(virt) => (base.as_u64(), virt),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        for page in 0..pages as u64 {
            memory::free_frame(HostPhysAddr::new(paddr + page * PAGE_SIZE));
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        device_registers(paddr, size as u64)
            .unwrap_or_else(|| panic!("nic: cannot map device registers at {paddr:#x}"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        dma_address(buffer.as_ptr().cast::<u8>() as u64)
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
