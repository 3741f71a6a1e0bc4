//! The device side of the split virtqueue (virtio 1.x §2.7), written for
//! guests that may lie.
//!
//! A queue is three areas of guest memory the driver chose: a table of
//! descriptors (buffer address, length, flags, next), the available ring
//! (the heads of the chains the driver offers, and an index it advances)
//! and the used ring (the heads the device has finished with, their
//! lengths, and an index the device advances). The host reads the driver's
//! two areas and writes its one, and trusts none of it:
//!
//! - [`QueueLayout::check`], when the driver marks the queue ready: a size
//!   that is a power of two within the queue's maximum, every ring aligned
//!   as the specification says and wholly inside guest memory;
//! - [`Virtqueue::next_chain`], for each request: the available index at
//!   most a queue's worth ahead of the last one seen, the head inside the
//!   table, and every descriptor of the chain checked (inside memory, not
//!   indirect, the direction the queue's device expects, the chain's total
//!   bounded by [`super::MAX_CHAIN_BYTES`]), the walk stopped at the first
//!   descriptor it meets twice, and never longer than the queue.
//!
//! Requests are completed in batches: [`Virtqueue::complete`] writes each
//! used element, and [`Virtqueue::publish`] advances the used index once
//! for all of them and says whether the guest wants an interrupt for them.
//!
//! A queue whose buffers wait for the host (a network card's receive
//! buffers, waiting for frames) is looked at whenever the host has
//! something for it, so its driver need not notify it at all: the host
//! says so in the used ring's flags ([`Virtqueue::suppress_notifies`],
//! virtio's `VIRTQ_USED_F_NO_NOTIFY`). A driver that notifies anyway has
//! its new buffers checked at once ([`Virtqueue::check_available`]), so a
//! broken one is refused at the notify that posted it, not at the first
//! frame that needs it.

use super::chain::{Buffer, DescriptorChain, Direction};
use super::error::{QueueError, Ring};
use super::memory;
use crate::addr::GuestPhysAddr;
use crate::guest::GuestRam;
use alloc::vec;
use alloc::vec::Vec;
use guest_abi::virtio::ring;

/// Whether a batch of completions calls for a virtual interrupt.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Nothing new for the guest, or it asked not to be interrupted.
    NotNeeded,
    /// Buffers were used and the guest wants to hear of it: raise the
    /// device's vector (once, however many buffers the batch used).
    Needed,
}

impl Interrupt {
    /// `Needed` if either is.
    pub fn or(self, other: Interrupt) -> Interrupt {
        if self == Interrupt::Needed || other == Interrupt::Needed {
            Interrupt::Needed
        } else {
            Interrupt::NotNeeded
        }
    }
}

/// Where a queue's three areas are, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    size: u16,
    descriptors: GuestPhysAddr,
    available: GuestPhysAddr,
    used: GuestPhysAddr,
}

impl QueueLayout {
    /// Checks what the driver wrote for a queue: `size` entries (at most
    /// `max`), and the guest-physical addresses of its three areas.
    pub fn check<M: GuestRam>(
        mem: &M,
        size: u16,
        max: u16,
        descriptors: u64,
        available: u64,
        used: u64,
    ) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > max || size > ring::MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize { size, max });
        }
        let areas = [
            (
                Ring::Descriptors,
                descriptors,
                ring::DESCRIPTOR_ALIGN,
                ring::descriptor_table_bytes(size),
            ),
            (
                Ring::Available,
                available,
                ring::AVAIL_ALIGN,
                ring::avail_ring_bytes(size),
            ),
            (
                Ring::Used,
                used,
                ring::USED_ALIGN,
                ring::used_ring_bytes(size),
            ),
        ];
        for (which, raw, align, bytes) in areas {
            check_area(mem, which, GuestPhysAddr::new(raw), align, bytes)?;
        }
        Ok(Self {
            size,
            descriptors: GuestPhysAddr::new(descriptors),
            available: GuestPhysAddr::new(available),
            used: GuestPhysAddr::new(used),
        })
    }

    /// The queue's size.
    pub fn size(&self) -> u16 {
        self.size
    }
}

/// One ring area: aligned, and inside guest memory.
fn check_area<M: GuestRam>(
    mem: &M,
    ring: Ring,
    at: GuestPhysAddr,
    align: u64,
    bytes: u64,
) -> Result<(), QueueError> {
    if !at.as_u64().is_multiple_of(align) {
        return Err(QueueError::Misaligned { ring, at, align });
    }
    if !memory::lies_inside(mem, at, bytes) {
        return Err(QueueError::RingOutsideMemory { ring, at, bytes });
    }
    Ok(())
}

/// One descriptor as the guest wrote it, not yet checked.
struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A live queue: its checked layout and the device's place in its rings.
#[derive(Clone, Debug)]
pub struct Virtqueue {
    layout: QueueLayout,
    direction: Direction,
    /// The available index the device has reached: the next chain to take
    /// is in slot `next_avail % size`.
    next_avail: u16,
    /// The used index the device has reached (written, maybe not yet
    /// published).
    next_used: u16,
    /// The used index the guest has been shown.
    published_used: u16,
    /// The available index up to which [`Self::check_available`] has
    /// checked chains not yet taken (taking checks each chain again: the
    /// guest may have rewritten it since).
    checked_avail: u16,
    /// Loop detection: `seen[i] == walk` when the current walk has been
    /// through descriptor `i`. A fresh number per walk clears it at no cost.
    seen: Vec<u32>,
    walk: u32,
}

impl Virtqueue {
    /// A queue starting afresh on `layout`, whose buffers go `direction`.
    pub fn new(layout: QueueLayout, direction: Direction) -> Self {
        Self {
            layout,
            direction,
            next_avail: 0,
            next_used: 0,
            published_used: 0,
            checked_avail: 0,
            seen: vec![0; usize::from(layout.size)],
            walk: 0,
        }
    }

    /// The queue's checked layout.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The next chain the driver made available, checked, or `None` if
    /// there is none. The queue does not move on until the chain is
    /// [`Self::complete`]d, so a device that cannot take a request yet (a
    /// frame too large for the buffer) leaves it for later.
    pub fn next_chain<M: GuestRam>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let (_, ahead) = self.available_ahead(mem)?;
        if ahead == 0 {
            return Ok(None);
        }
        let slot = self.next_avail % self.layout.size;
        let head = self.available_head(mem, slot)?;
        self.walk_chain(mem, head).map(Some)
    }

    /// Checks, without taking them, the chains made available since the
    /// last look: what a notify of a queue whose buffers wait for the host
    /// does, so that a malformed buffer is refused when it is posted. Each
    /// chain is checked once here (a notify costs only its new buffers),
    /// and again when it is taken.
    pub fn check_available<M: GuestRam>(&mut self, mem: &M) -> Result<(), QueueError> {
        let (avail_idx, ahead) = self.available_ahead(mem)?;
        // Start after the chains already checked, if they are still ahead
        // of the device (they are, unless the guest moved its index back).
        let checked = self.checked_avail.wrapping_sub(self.next_avail);
        let mut index = if checked <= ahead {
            self.checked_avail
        } else {
            self.next_avail
        };
        while index != avail_idx {
            let head = self.available_head(mem, index % self.layout.size)?;
            self.walk_chain(mem, head)?;
            index = index.wrapping_add(1);
        }
        self.checked_avail = avail_idx;
        Ok(())
    }

    /// Tells the driver it need not notify this queue (the used ring's
    /// `VIRTQ_USED_F_NO_NOTIFY`): the host looks at its available ring
    /// whenever it has something for it. A notify stays allowed.
    pub fn suppress_notifies<M: GuestRam>(&self, mem: &mut M) -> Result<(), QueueError> {
        let flags = memory::offset(self.layout.used, ring::FLAGS)?;
        Ok(memory::write_u16(mem, flags, ring::USED_F_NO_NOTIFY)?)
    }

    /// Finishes `chain`, the one [`Self::next_chain`] returned last, with
    /// `written` bytes written into it: its used element goes into the used
    /// ring (not yet shown to the guest: see [`Self::publish`]).
    pub fn complete<M: GuestRam>(
        &mut self,
        mem: &mut M,
        chain: DescriptorChain,
        written: u32,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.layout.size);
        let element = memory::offset(
            self.layout.used,
            ring::RING + slot * ring::USED_ELEMENT_BYTES,
        )?;
        memory::write_u32(mem, element, u32::from(chain.head()))?;
        memory::write_u32(mem, memory::offset(element, 4)?, written)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Shows the guest every element completed since the last call, with
    /// one write of the used index, and says whether it wants an interrupt
    /// for them (it does unless its available ring says
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`).
    pub fn publish<M: GuestRam>(&mut self, mem: &mut M) -> Result<Interrupt, QueueError> {
        if self.next_used == self.published_used {
            return Ok(Interrupt::NotNeeded);
        }
        let idx = memory::offset(self.layout.used, ring::IDX)?;
        memory::write_u16(mem, idx, self.next_used)?;
        self.published_used = self.next_used;
        let flags = memory::read_u16(mem, memory::offset(self.layout.available, ring::FLAGS)?)?;
        Ok(if flags & ring::AVAIL_F_NO_INTERRUPT == 0 {
            Interrupt::Needed
        } else {
            Interrupt::NotNeeded
        })
    }

    /// The driver's available index and how far it is ahead of the
    /// device: at most a queue's worth, or the ring is refused.
    fn available_ahead<M: GuestRam>(&self, mem: &M) -> Result<(u16, u16), QueueError> {
        let at = memory::offset(self.layout.available, ring::IDX)?;
        let avail_idx = memory::read_u16(mem, at)?;
        let ahead = avail_idx.wrapping_sub(self.next_avail);
        if ahead > self.layout.size {
            return Err(QueueError::AvailTooFarAhead {
                avail_idx,
                seen: self.next_avail,
                size: self.layout.size,
            });
        }
        Ok((avail_idx, ahead))
    }

    fn available_head<M: GuestRam>(&self, mem: &M, slot: u16) -> Result<u16, QueueError> {
        let at = memory::offset(self.layout.available, ring::RING + 2 * u64::from(slot))?;
        let head = memory::read_u16(mem, at)?;
        if head >= self.layout.size {
            return Err(QueueError::HeadOutOfRange {
                head,
                size: self.layout.size,
            });
        }
        Ok(head)
    }

    /// Walks the chain from `head`, checking each descriptor.
    fn walk_chain<M: GuestRam>(
        &mut self,
        mem: &M,
        head: u16,
    ) -> Result<DescriptorChain, QueueError> {
        self.start_walk();
        let mut chain = DescriptorChain::new(head, self.direction);
        let mut index = head;
        for _ in 0..self.layout.size {
            self.seen[usize::from(index)] = self.walk;
            let descriptor = self.read_descriptor(mem, index)?;
            chain.push(self.check_descriptor(mem, index, &descriptor, chain.bytes())?);
            if descriptor.flags & ring::DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            let next = descriptor.next;
            if next >= self.layout.size {
                return Err(QueueError::NextOutOfRange {
                    descriptor: index,
                    next,
                    size: self.layout.size,
                });
            }
            if self.seen[usize::from(next)] == self.walk {
                return Err(QueueError::Loop {
                    descriptor: index,
                    back_to: next,
                });
            }
            index = next;
        }
        Err(QueueError::ChainTooLong {
            head,
            size: self.layout.size,
        })
    }

    /// A new walk number; when the numbers run out, the marks are cleared.
    fn start_walk(&mut self) {
        self.walk = self.walk.wrapping_add(1);
        if self.walk == 0 {
            self.seen.fill(0);
            self.walk = 1;
        }
    }

    fn read_descriptor<M: GuestRam>(
        &self,
        mem: &M,
        index: u16,
    ) -> Result<RawDescriptor, QueueError> {
        let at = memory::offset(
            self.layout.descriptors,
            u64::from(index) * ring::DESCRIPTOR_BYTES,
        )?;
        let mut bytes = [0u8; ring::DESCRIPTOR_BYTES as usize];
        mem.read_bytes(at, &mut bytes)?;
        let word = |range: core::ops::Range<usize>| {
            let mut raw = [0u8; 8];
            raw[..range.len()].copy_from_slice(&bytes[range]);
            u64::from_le_bytes(raw)
        };
        Ok(RawDescriptor {
            addr: word(0..8),
            len: word(8..12) as u32,
            flags: word(12..14) as u16,
            next: word(14..16) as u16,
        })
    }

    /// Checks one descriptor of a chain that holds `bytes_before` bytes so
    /// far, and gives its buffer.
    fn check_descriptor<M: GuestRam>(
        &self,
        mem: &M,
        index: u16,
        descriptor: &RawDescriptor,
        bytes_before: u64,
    ) -> Result<Buffer, QueueError> {
        if descriptor.flags & ring::DESC_F_INDIRECT != 0 {
            return Err(QueueError::Indirect { descriptor: index });
        }
        let writable = descriptor.flags & ring::DESC_F_WRITE != 0;
        match (self.direction, writable) {
            (Direction::DeviceWrites, false) => {
                return Err(QueueError::ReadOnlyBuffer { descriptor: index });
            }
            (Direction::DeviceReads, true) => {
                return Err(QueueError::WriteOnlyBuffer { descriptor: index });
            }
            _ => {}
        }
        let bytes = bytes_before + u64::from(descriptor.len);
        if bytes > super::MAX_CHAIN_BYTES {
            return Err(QueueError::ChainTooLarge {
                descriptor: index,
                bytes,
            });
        }
        let addr = GuestPhysAddr::new(descriptor.addr);
        if !memory::lies_inside(mem, addr, u64::from(descriptor.len)) {
            return Err(QueueError::BufferOutsideMemory {
                descriptor: index,
                addr,
                len: descriptor.len,
            });
        }
        Ok(Buffer {
            addr,
            len: descriptor.len,
        })
    }
}
