//! virtio-rng: one queue of device-writable buffers, each filled with
//! random bytes from an [`EntropySource`] the moment the guest notifies.

use super::chain::Direction;
use super::device::{Backend, QueueSpec};
use super::error::QueueError;
use super::queue::Virtqueue;
use crate::guest::GuestRam;
use guest_abi::virtio::DeviceType;

/// Where random bytes come from (the CPU's `rdrand` or a seeded generator,
/// in the kernel).
pub trait EntropySource {
    /// Fills `out` with random bytes.
    fn fill(&mut self, out: &mut [u8]);
}

/// The virtio-rng back end.
#[derive(Clone, Debug)]
pub struct Rng<E: EntropySource> {
    source: E,
    /// Random bytes handed to the guest.
    pub bytes_delivered: u64,
}

impl<E: EntropySource> Rng<E> {
    /// A device drawing from `source`.
    pub fn new(source: E) -> Self {
        Self {
            source,
            bytes_delivered: 0,
        }
    }
}

static RNG_QUEUES: [QueueSpec; 1] = [QueueSpec {
    max_size: 64,
    direction: Direction::DeviceWrites,
}];

impl<E: EntropySource> Backend for Rng<E> {
    const NAME: &'static str = "virtio-rng";
    const TYPE: DeviceType = DeviceType::Rng;

    fn queues(&self) -> &'static [QueueSpec] {
        &RNG_QUEUES
    }

    fn process<M: GuestRam>(
        &mut self,
        _queue: u16,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        let mut piece = [0u8; 256];
        while let Some(chain) = ring.next_chain(mem)? {
            let mut offset = 0;
            while offset < chain.bytes() {
                let n = (chain.bytes() - offset).min(piece.len() as u64) as usize;
                self.source.fill(&mut piece[..n]);
                let written = chain.write_at(mem, offset, &piece[..n])?;
                if written == 0 {
                    break; // Cannot happen (the chain holds its bytes), but never spin.
                }
                offset += written as u64;
            }
            self.bytes_delivered += chain.bytes();
            // At most MAX_CHAIN_BYTES: fits.
            let written = u32::try_from(chain.bytes()).unwrap_or(u32::MAX);
            ring.complete(mem, chain, written)?;
        }
        Ok(())
    }
}
