//! A descriptor chain, once checked: the buffers one request is made of.
//!
//! The queue ([`super::queue`]) walks a chain through the guest's
//! descriptor table and checks every descriptor before it builds one of
//! these; from then on a device only copies bytes. A chain is all
//! device-readable (a transmit queue's) or all device-writable (a receive
//! queue's), as its queue's [`Direction`] says, and the copying methods
//! keep to it: [`DescriptorChain::write_at`] refuses a readable chain and
//! [`DescriptorChain::read_at`] a writable one, so no device ever writes a
//! buffer the guest made read-only.

use super::error::QueueError;
use super::memory;
use crate::addr::GuestPhysAddr;
use crate::guest::GuestRam;
use alloc::vec::Vec;

/// Which way a queue's buffers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Driver to device: the device reads them (transmit).
    DeviceReads,
    /// Device to driver: the device writes them (receive, entropy).
    DeviceWrites,
}

/// One descriptor's buffer, inside guest memory (checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Where it starts.
    pub addr: GuestPhysAddr,
    /// Its length.
    pub len: u32,
}

/// The checked buffers of one chain, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    direction: Direction,
    buffers: Vec<Buffer>,
    bytes: u64,
}

impl DescriptorChain {
    /// An empty chain starting at descriptor `head`.
    pub(super) fn new(head: u16, direction: Direction) -> Self {
        Self {
            head,
            direction,
            buffers: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a checked buffer.
    pub(super) fn push(&mut self, buffer: Buffer) {
        self.bytes += u64::from(buffer.len);
        self.buffers.push(buffer);
    }

    /// The head descriptor: what the used ring names when it is done.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Which way its buffers go.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Its buffers, in chain order.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// The bytes of all its buffers together.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Copies the chain's bytes from byte `offset` on into `out`, as far as
    /// the chain goes; returns how many. Only for a device-readable chain.
    pub fn read_at<M: GuestRam>(
        &self,
        mem: &M,
        offset: u64,
        out: &mut [u8],
    ) -> Result<usize, QueueError> {
        if self.direction != Direction::DeviceReads {
            return Err(QueueError::WriteOnlyBuffer {
                descriptor: self.head,
            });
        }
        let mut done = 0;
        for (at, range) in self.pieces(offset, out.len()) {
            mem.read_bytes(at, &mut out[range.clone()])?;
            done = range.end;
        }
        Ok(done)
    }

    /// Copies `data` into the chain from byte `offset` on, as far as the
    /// chain goes; returns how many bytes it wrote. Only for a
    /// device-writable chain.
    pub fn write_at<M: GuestRam>(
        &self,
        mem: &mut M,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, QueueError> {
        if self.direction != Direction::DeviceWrites {
            return Err(QueueError::ReadOnlyBuffer {
                descriptor: self.head,
            });
        }
        let mut done = 0;
        for (at, range) in self.pieces(offset, data.len()) {
            mem.write_bytes(at, &data[range.clone()])?;
            done = range.end;
        }
        Ok(done)
    }

    /// Splits the chain's bytes `offset..offset + len` into pieces of one
    /// buffer each: the guest address of each, and its range in a host
    /// slice that starts at `offset`.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Iterator<Item = (GuestPhysAddr, core::ops::Range<usize>)> + '_ {
        let mut skip = offset;
        let mut done = 0usize;
        self.buffers.iter().filter_map(move |buffer| {
            let buffer_len = u64::from(buffer.len);
            if skip >= buffer_len {
                skip -= buffer_len;
                return None;
            }
            let start = skip;
            skip = 0;
            let take = usize::try_from(buffer_len - start)
                .unwrap_or(usize::MAX)
                .min(len - done);
            if take == 0 {
                return None;
            }
            // Inside memory: checked when the chain was built.
            let at = memory::offset(buffer.addr, start).ok()?;
            let range = done..done + take;
            done += take;
            Some((at, range))
        })
    }
}
