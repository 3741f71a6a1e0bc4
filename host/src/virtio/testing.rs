//! The guest's side of a device, played by the tests: a driver that lays
//! out split rings in a fake guest memory, writes descriptors (well-formed
//! or hostile), makes them available, and reads back what the device used.
//! It does by hand what `virtio-drivers` does in a real guest.

use super::device::{Backend, Device};
use crate::addr::GuestPhysAddr;
use crate::guest::GuestRam;
use crate::paging::testing::FakeGuestMemory;
use guest_abi::virtio::{feature, offset, ring, status};
use std::vec::Vec;

/// Guest memory of the tests: 1 MiB.
pub const MEMORY: u64 = 1 << 20;
/// Where the tests put their rings (one 16 KiB area per queue).
pub const RINGS: u64 = 0x2_0000;
/// Where the tests put their buffers.
pub const BUFFERS: u64 = 0x8_0000;

/// A fresh guest memory.
pub fn memory() -> FakeGuestMemory {
    FakeGuestMemory::new(MEMORY)
}

/// Writes `value` little-endian at `at`.
pub fn poke<M: GuestRam>(mem: &mut M, at: u64, bytes: &[u8]) {
    mem.write_bytes(GuestPhysAddr::new(at), bytes).unwrap();
}

/// Reads `N` bytes at `at`.
pub fn peek<M: GuestRam, const N: usize>(mem: &M, at: u64) -> [u8; N] {
    let mut out = [0; N];
    mem.read_bytes(GuestPhysAddr::new(at), &mut out).unwrap();
    out
}

/// Reads the `u16` at `at`.
pub fn peek_u16<M: GuestRam>(mem: &M, at: u64) -> u16 {
    u16::from_le_bytes(peek(mem, at))
}

/// Reads the `u32` at `at`.
pub fn peek_u32<M: GuestRam>(mem: &M, at: u64) -> u32 {
    u32::from_le_bytes(peek(mem, at))
}

/// Reads the `u64` at `at`.
pub fn peek_u64<M: GuestRam>(mem: &M, at: u64) -> u64 {
    u64::from_le_bytes(peek(mem, at))
}

/// One queue's rings, as the driver laid them out.
#[derive(Clone, Copy, Debug)]
pub struct TestRing {
    /// Its size.
    pub size: u16,
    /// The descriptor table.
    pub descriptors: u64,
    /// The available ring.
    pub available: u64,
    /// The used ring.
    pub used: u64,
    /// The driver's available index.
    pub avail_idx: u16,
    /// The used index the driver has read up to.
    pub used_seen: u16,
}

impl TestRing {
    /// Queue number `queue`'s rings, `size` entries, in the tests' area.
    pub fn new(queue: u64, size: u16) -> Self {
        let descriptors = RINGS + queue * 0x4000;
        let available = descriptors + ring::descriptor_table_bytes(size);
        let used = (available + ring::avail_ring_bytes(size)).next_multiple_of(4);
        Self {
            size,
            descriptors,
            available,
            used,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `index`.
    pub fn set(
        &self,
        mem: &mut FakeGuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.descriptors + u64::from(index) * 16;
        poke(mem, at, &addr.to_le_bytes());
        poke(mem, at + 8, &len.to_le_bytes());
        poke(mem, at + 12, &flags.to_le_bytes());
        poke(mem, at + 14, &next.to_le_bytes());
    }

    /// Makes the chain from `head` available.
    pub fn offer(&mut self, mem: &mut FakeGuestMemory, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        poke(mem, self.available + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    /// Writes the available index (a hostile driver may write anything).
    pub fn set_avail_idx(&self, mem: &mut FakeGuestMemory, idx: u16) {
        poke(mem, self.available + 2, &idx.to_le_bytes());
    }

    /// Writes the available ring's flags.
    pub fn set_avail_flags(&self, mem: &mut FakeGuestMemory, flags: u16) {
        poke(mem, self.available, &flags.to_le_bytes());
    }

    /// The used index the device published.
    pub fn used_idx(&self, mem: &FakeGuestMemory) -> u16 {
        peek_u16(mem, self.used + 2)
    }

    /// The used elements (head, length) published since the last call.
    pub fn take_used(&mut self, mem: &FakeGuestMemory) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while self.used_seen != self.used_idx(mem) {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            out.push((peek_u32(mem, at), peek_u32(mem, at + 4)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Writes this ring into queue `queue`'s descriptor in the page at
    /// `page`, marked ready.
    pub fn describe(&self, mem: &mut FakeGuestMemory, page: u64, queue: usize) {
        let base = page + offset::queue(queue);
        poke(mem, base + offset::queue::SIZE, &self.size.to_le_bytes());
        poke(
            mem,
            base + offset::queue::DESCRIPTORS,
            &self.descriptors.to_le_bytes(),
        );
        poke(
            mem,
            base + offset::queue::DRIVER_AREA,
            &self.available.to_le_bytes(),
        );
        poke(
            mem,
            base + offset::queue::DEVICE_AREA,
            &self.used.to_le_bytes(),
        );
        poke(mem, base + offset::queue::READY, &1u16.to_le_bytes());
    }
}

/// Writes the driver's status into the page and makes the status call.
pub fn set_status<B: Backend>(
    device: &mut Device<B>,
    mem: &mut FakeGuestMemory,
    bits: u32,
) -> Result<u32, super::DeviceError> {
    poke(
        mem,
        device.page().as_u64() + offset::STATUS,
        &bits.to_le_bytes(),
    );
    device.status_call(mem)
}

/// The whole handshake of virtio §3.1.1, as `virtio-drivers` does it:
/// acknowledge, features (`VERSION_1` and every device feature), queues,
/// `DRIVER_OK`. Returns the device with its rings.
pub fn bring_up<B: Backend>(
    backend: B,
    mem: &mut FakeGuestMemory,
    sizes: &[u16],
) -> (Device<B>, Vec<TestRing>) {
    let mut device = Device::new(0, backend).unwrap();
    device.install(mem).unwrap();
    let page = device.page().as_u64();
    let base = status::ACKNOWLEDGE | status::DRIVER;
    set_status(&mut device, mem, base).unwrap();
    let features = peek_u64(mem, page + offset::DEVICE_FEATURES);
    assert_ne!(features & feature::VERSION_1, 0);
    poke(mem, page + offset::DRIVER_FEATURES, &features.to_le_bytes());
    let accepted = set_status(&mut device, mem, base | status::FEATURES_OK).unwrap();
    assert_ne!(accepted & status::FEATURES_OK, 0);
    let rings: Vec<TestRing> = (0..sizes.len())
        .map(|q| TestRing::new(q as u64, sizes[q]))
        .collect();
    for (q, ring) in rings.iter().enumerate() {
        ring.describe(mem, page, q);
    }
    let live = base | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(set_status(&mut device, mem, live), Ok(live));
    (device, rings)
}
