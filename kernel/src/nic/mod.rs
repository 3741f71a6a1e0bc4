//! The machine's own network card: the uplink from the virtual switch to
//! the world outside.
//!
//! Two kinds of card are driven, each in a module of its own:
//!
//! - [`virtio`]: a virtio-net card, which QEMU and many clouds give a
//!   machine, through `virtio-drivers`;
//! - [`e1000`]: Intel's 8254x/82574 family ("e1000"), which QEMU, other
//!   hypervisors and many real machines offer, through our own driver
//!   over the plain data of [`host::nic::e1000`].
//!
//! [`Uplink::probe`] walks PCI ([`crate::pci`]) once and takes the first
//! card either driver knows, in bus order. From then on the run loop
//! polls it (no interrupts: it passes by every few milliseconds), through
//! the two calls both drivers answer the same way:
//!
//! - [`Uplink::receive`] hands each frame the card received to a closure
//!   (in the run loop: the switch's `input` on the uplink port), at most a
//!   ring's worth per call;
//! - [`Uplink::transmit_from`] sends frames the switch queued for the
//!   uplink, as many as the card has room for, the rest waiting in the
//!   switch's queue.
//!
//! Both keep their frames in buffers of our own ([`DmaBuffers`]),
//! physically contiguous frames lent to the card for good, and both map
//! the card's registers (its memory BARs) uncached ([`map_bar`]). No card
//! is no failure: [`Uplink::probe`] says so and returns `None`, and the
//! guests run without an uplink.

pub mod e1000;
pub mod virtio;

use crate::boot::Region;
use crate::memory::{self, paging};
use crate::pci::{self, MemoryBar};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use host::addr::{HostPhysAddr, PAGE_SIZE};
use host::net::MacAddress;
use spin::Mutex;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::virtio_device_type;

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
    /// Receive completions the driver refused (a bad length from the
    /// card, an error it reported, a frame in pieces).
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

/// The machine's NIC, up and polled: one of the cards we drive. (The
/// virtio driver, with its queues' bookkeeping inline, is boxed: one
/// allocation at boot keeps the enum small.)
pub enum Uplink {
    Virtio(Box<virtio::VirtioNic>),
    E1000(e1000::E1000),
}

/// Which driver a PCI function is for.
enum Kind {
    Virtio,
    E1000(host::nic::e1000::Model),
}

impl Uplink {
    /// Finds the first card on PCI that a driver here knows and brings it
    /// up, printing one line either way (`nic: virtio-net at 00:03.0 mac
    /// ...`, `nic: e1000 (82540EM) at 00:03.0 mac ...`, or `nic: none
    /// found; guests run without an uplink`). `regions` is the boot memory
    /// map, to keep BARs the host must place itself off RAM.
    pub fn probe(regions: &[Region]) -> Option<Uplink> {
        let mut root = pci::root();
        let found = pci::functions(&root)
            .into_iter()
            .find_map(|(function, info)| {
                if virtio_device_type(&info) == Some(DeviceType::Network) {
                    return Some((function, Kind::Virtio));
                }
                host::nic::e1000::Model::of(info.vendor_id, info.device_id)
                    .map(|model| (function, Kind::E1000(model)))
            });
        let Some((location, kind)) = found else {
            println!("nic: none found; guests run without an uplink");
            return None;
        };
        let (name, brought_up) = match kind {
            Kind::Virtio => (
                "virtio-net",
                virtio::VirtioNic::bring_up(&mut root, location, regions)
                    .map(|nic| Uplink::Virtio(Box::new(nic)))
                    .map_err(|e| alloc::format!("{e}")),
            ),
            Kind::E1000(model) => (
                model.name(),
                e1000::E1000::bring_up(&mut root, location, model, regions)
                    .map(Uplink::E1000)
                    .map_err(|e| alloc::format!("{e}")),
            ),
        };
        match brought_up {
            Ok(uplink) => {
                println!(
                    "nic: {name} at {location} mac {} ({})",
                    uplink.mac(),
                    uplink.details()
                );
                Some(uplink)
            }
            Err(e) => {
                println!("nic: {name} at {location} failed: {e}; guests run without an uplink");
                None
            }
        }
    }

    /// What kind of card it is (`virtio-net`, `e1000 (82540EM)`).
    pub fn model(&self) -> &'static str {
        match self {
            Uplink::Virtio(_) => "virtio-net",
            Uplink::E1000(nic) => nic.model().name(),
        }
    }

    /// The rest of its `nic:` line: buffers, link.
    fn details(&self) -> alloc::string::String {
        match self {
            Uplink::Virtio(_) => alloc::format!("{} buffers each way", virtio::QUEUE_SIZE),
            Uplink::E1000(nic) => nic.details(),
        }
    }

    /// The card's MAC address.
    pub fn mac(&self) -> MacAddress {
        match self {
            Uplink::Virtio(nic) => nic.mac(),
            Uplink::E1000(nic) => nic.mac(),
        }
    }

    /// Where it sits on PCI (`00:03.0`).
    pub fn location(&self) -> DeviceFunction {
        match self {
            Uplink::Virtio(nic) => nic.location(),
            Uplink::E1000(nic) => nic.location(),
        }
    }

    /// What it has done so far.
    pub fn counters(&self) -> UplinkCounters {
        match self {
            Uplink::Virtio(nic) => nic.counters(),
            Uplink::E1000(nic) => nic.counters(),
        }
    }

    /// Hands every frame received since the last call to `deliver`, oldest
    /// first (at most one ring's worth, so one call is bounded work), and
    /// gives the buffers back to the card. Returns how many it handed on.
    pub fn receive(&mut self, deliver: impl FnMut(&[u8])) -> usize {
        match self {
            Uplink::Virtio(nic) => nic.receive(deliver),
            Uplink::E1000(nic) => nic.receive(deliver),
        }
    }

    /// Sends frames from `frames` while the card has room, taking each
    /// from the iterator only when it can be sent: for the switch's
    /// `drain`, whose iterator leaves untaken frames queued. Returns how
    /// many it took.
    pub fn transmit_from<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        match self {
            Uplink::Virtio(nic) => nic.transmit_from(frames),
            Uplink::E1000(nic) => nic.transmit_from(frames),
        }
    }
}

/// `count` buffers of `BUFFER_BYTES` in physically contiguous frames of
/// our own, reached through the direct map.
pub(crate) struct DmaBuffers {
    base: HostPhysAddr,
    frames: u64,
    count: usize,
}

/// One buffer: the largest frame the switch carries (1518), and a virtio
/// header before it, rounded up so two fit a page (and the size the e1000
/// receives into).
pub(crate) const BUFFER_BYTES: usize = 2048;

impl DmaBuffers {
    pub(crate) fn new(count: usize) -> Option<Self> {
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
    pub(crate) fn slice(&mut self, index: usize) -> &mut [u8] {
        assert!(index < self.count);
        let start = memory::phys_to_virt(self.base).wrapping_add(index * BUFFER_BYTES);
        // SAFETY: the frames are ours from `new` until `drop`, the direct
        // map reaches them, and buffer `index` lies inside them. Each
        // buffer is used by one role at a time (see the callers).
        unsafe { core::slice::from_raw_parts_mut(start, BUFFER_BYTES) }
    }

    /// The physical address of buffer `index`, for the card.
    pub(crate) fn phys(&self, index: usize) -> u64 {
        assert!(index < self.count);
        self.base.as_u64() + (index * BUFFER_BYTES) as u64
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

/// Maps `bar` uncached, once; returns the virtual address of its start
/// (`None` for an unassigned BAR, or one that could not be mapped).
pub(crate) fn map_bar(bar: MemoryBar) -> Option<u64> {
    if bar.address.as_u64() == 0 || bar.size == 0 {
        return None;
    }
    let virt = paging::map_mmio(bar.address, bar.size).ok()?;
    MAPPED_BARS.lock().push(MappedBar {
        phys: bar.address.as_u64(),
        size: bar.size,
        virt: virt.as_u64(),
    });
    Some(virt.as_u64())
}

/// The virtual address of device registers at `phys`, `size` bytes long:
/// inside a BAR mapped by [`map_bar`], or mapped now.
pub(crate) fn device_registers(phys: u64, size: u64) -> Option<NonNull<u8>> {
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
