//! The machine's own network card: the uplink from the virtual switch to
//! the world outside.
//!
//! The guests' cards are the host's own virtio-net devices
//! ([`host::virtio::net`]); this is the other way round: the host is the
//! *driver* of a virtio-net device that QEMU (and many clouds) give the
//! machine. [`Uplink::probe`] finds it on PCI ([`crate::pci`]), brings it
//! up with `virtio-drivers` (its PCI transport and its raw net driver), and
//! from then on the run loop polls it: no interrupts, the run loop passes
//! by often enough.
//!
//! - [`Uplink::receive`] hands each frame the card received to a closure
//!   (in the run loop: the switch's `input` on the uplink port);
//! - [`Uplink::transmit_from`] sends frames the switch queued for the
//!   uplink, as many as the card has room for, the rest waiting in the
//!   switch's queue.
//!
//! The frames live in buffers of our own ([`DmaBuffers`]), physically
//! contiguous frames from the frame allocator lent to the card for good:
//! each receive buffer goes back to the card as soon as its frame has been
//! handed on, each transmit buffer once the card says it is sent. The
//! [`KernelHal`] tells `virtio-drivers` how to get DMA memory and how a
//! pointer of ours becomes an address the card can use.
//!
//! No card is no failure: [`Uplink::probe`] says so and returns `None`,
//! and the guests run without an uplink.

use crate::boot::Region;
use crate::memory::{self, PHYS_OFFSET, paging};
use crate::pci::{self, MemoryBar, PortIoConfig};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use host::addr::{HostPhysAddr, PAGE_SIZE};
use host::net::MacAddress;
use spin::Mutex;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Descriptors per queue, and so frames in flight each way. 64 receive
/// buffers hold a burst of 90 KiB: a TCP window's worth between two polls.
const QUEUE_SIZE: usize = 64;

/// One buffer: the virtio-net header (12 bytes) and the largest frame the
/// switch carries (1518), rounded up so two fit a page.
const BUFFER_BYTES: usize = 2048;

/// The card as `virtio-drivers` drives it.
type NetDevice = VirtIONetRaw<KernelHal, PciTransport, QUEUE_SIZE>;

/// What the card has done since it was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    /// Frames received from the wire and handed on.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames given to the card to send.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames too long for a buffer, not sent.
    pub tx_oversize: u64,
    /// Receive completions the driver refused (a bad length from the card).
    pub rx_errors: u64,
}

impl fmt::Display for UplinkCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} tx_oversize={} rx_errors={}",
            self.rx_packets,
            self.rx_bytes,
            self.tx_packets,
            self.tx_bytes,
            self.tx_oversize,
            self.rx_errors
        )
    }
}

/// The machine's NIC, up and polled.
pub struct Uplink {
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
enum ProbeError {
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

impl Uplink {
    /// Finds the first virtio-net card on PCI and brings it up, printing
    /// one line either way (`nic: virtio-net at 00:03.0 mac ...`, or `nic:
    /// none found; guests run without an uplink`). `regions` is the boot
    /// memory map, to keep BARs the host must place itself off RAM.
    pub fn probe(regions: &[Region]) -> Option<Uplink> {
        let mut root = pci::root();
        let found = pci::functions(&root)
            .into_iter()
            .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Network));
        let Some((location, _)) = found else {
            println!("nic: none found; guests run without an uplink");
            return None;
        };
        match Self::bring_up(&mut root, location, regions) {
            Ok(uplink) => {
                println!(
                    "nic: virtio-net at {location} mac {} ({QUEUE_SIZE} buffers each way)",
                    uplink.mac
                );
                Some(uplink)
            }
            Err(e) => {
                println!("nic: virtio-net at {location} failed: {e}; guests run without an uplink");
                None
            }
        }
    }

    fn bring_up(
        root: &mut PciRoot<PortIoConfig>,
        location: DeviceFunction,
        regions: &[Region],
    ) -> Result<Uplink, ProbeError> {
        pci::assign_bars(root, location, regions).ok_or(ProbeError::Bars)?;
        for bar in pci::memory_bars(root, location) {
            map_bar(bar).ok_or(ProbeError::Map)?;
        }
        pci::enable(root, location);
        let transport =
            PciTransport::new::<KernelHal, _>(root, location).map_err(ProbeError::Transport)?;
        let device = NetDevice::new(transport).map_err(ProbeError::Device)?;
        let buffers = DmaBuffers::new(2 * QUEUE_SIZE).ok_or(ProbeError::NoMemory)?;
        let mut uplink = Uplink {
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
            let buffer = self.rx_buffer_of[usize::from(token)];
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
            let Some((buffer, length)) = self.tx_in_flight[usize::from(token)].take() else {
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

/// `count` buffers of [`BUFFER_BYTES`] in physically contiguous frames
/// of our own, reached through the direct map.
struct DmaBuffers {
    base: HostPhysAddr,
    frames: u64,
    count: usize,
}

impl DmaBuffers {
    fn new(count: usize) -> Option<Self> {
        let frames = (count * BUFFER_BYTES).div_ceil(PAGE_SIZE as usize) as u64;
        let base = memory::alloc_contiguous(frames)?;
        Some(Self {
            base,
            frames,
            count,
        })
    }

    /// Buffer `index`, to fill or read. The card may be writing a lent
    /// buffer: callers only take slices of buffers the card gave back (or
    /// in order to lend them, which is what `virtio-drivers` asks for).
    fn slice(&mut self, index: usize) -> &mut [u8] {
        assert!(index < self.count);
        let start = memory::phys_to_virt(self.base).wrapping_add(index * BUFFER_BYTES);
        // SAFETY: the frames are ours from `new` until `drop`, the direct
        // map reaches them, and buffer `index` lies inside them. Each
        // buffer is used by one role at a time (see the callers).
        unsafe { core::slice::from_raw_parts_mut(start, BUFFER_BYTES) }
    }
}

impl Drop for DmaBuffers {
    fn drop(&mut self) {
        for frame in 0..self.frames {
            memory::free_frame(HostPhysAddr::new(self.base.as_u64() + frame * PAGE_SIZE));
        }
    }
}

/// A BAR mapped into the host's MMIO window: physical start, size, and
/// the virtual address of its start.
#[derive(Clone, Copy)]
struct MappedBar {
    phys: u64,
    size: u64,
    virt: u64,
}

/// The BARs mapped so far, so that `virtio-drivers` asking for pieces of
/// one BAR (its common, notify, ISR and device configuration) gets them
/// from one mapping.
static MAPPED_BARS: Mutex<Vec<MappedBar>> = Mutex::new(Vec::new());

/// Maps `bar` uncached, once.
fn map_bar(bar: MemoryBar) -> Option<()> {
    if bar.address.as_u64() == 0 || bar.size == 0 {
        return Some(());
    }
    let virt = paging::map_mmio(bar.address, bar.size).ok()?;
    MAPPED_BARS.lock().push(MappedBar {
        phys: bar.address.as_u64(),
        size: bar.size,
        virt: virt.as_u64(),
    });
    Some(())
}

/// The virtual address of device registers at `phys`, `size` bytes long:
/// inside a BAR mapped by [`map_bar`], or mapped now.
fn device_registers(phys: u64, size: u64) -> Option<NonNull<u8>> {
    let inside = MAPPED_BARS
        .lock()
        .iter()
        .find(|bar| bar.phys <= phys && phys + size <= bar.phys + bar.size)
        .map(|bar| bar.virt + (phys - bar.phys));
    let virt = match inside {
        Some(virt) => virt,
        None => paging::map_mmio(HostPhysAddr::new(phys), size)
            .ok()?
            .as_u64(),
    };
    NonNull::new(virt as *mut u8)
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
