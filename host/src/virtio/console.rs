//! virtio-console: one port, its receive queue (0) for input from the host
//! and its transmit queue (1) for the guest's output.
//!
//! Output goes to a [`ConsoleSink`] (the host console, with the guest's
//! name before each line, later). Input the host pushes
//! ([`Device::push_input`]) waits in a small buffer until the guest posts
//! receive buffers for it; what does not fit in that buffer is dropped
//! and counted, as a serial line drops what nobody reads.

use super::chain::Direction;
use super::device::{Backend, Device, QueueSpec};
use super::error::{DeviceError, QueueError};
use super::queue::{Interrupt, Virtqueue};
use crate::guest::GuestRam;
use alloc::collections::VecDeque;
use guest_abi::virtio::{CONFIG_MAX, DeviceType, console_queue};

/// Input bytes kept for the guest before it posts buffers for them.
pub const INPUT_MAX: usize = 4096;

/// Where the guest's output goes.
pub trait ConsoleSink {
    /// Takes bytes the guest wrote.
    fn write(&mut self, bytes: &[u8]);
}

/// A virtio-console device's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Bytes the guest wrote.
    pub tx_bytes: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Input bytes dropped because the buffer was full.
    pub input_dropped: u64,
}

/// The virtio-console back end.
#[derive(Clone, Debug)]
pub struct Console<S: ConsoleSink> {
    sink: S,
    input: VecDeque<u8>,
    /// Its counts.
    pub counters: ConsoleCounters,
}

impl<S: ConsoleSink> Console<S> {
    /// A console writing to `sink`.
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            input: VecDeque::new(),
            counters: ConsoleCounters::default(),
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Where output goes, to change (the run loop flushes it).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Input waiting for the guest.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Passes every chain ready on the transmit queue to the sink, a piece
    /// at a time (no allocation however large the chain).
    fn transmit_all<M: GuestRam>(
        &mut self,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        let mut piece = [0u8; 256];
        while let Some(chain) = ring.next_chain(mem)? {
            let mut offset = 0;
            while offset < chain.bytes() {
                let n = chain.read_at(mem, offset, &mut piece)?;
                if n == 0 {
                    break; // Cannot happen (the chain holds its bytes), but never spin.
                }
                self.sink.write(&piece[..n]);
                offset += n as u64;
            }
            self.counters.tx_bytes += chain.bytes();
            ring.complete(mem, chain, 0)?;
        }
        Ok(())
    }

    /// Moves waiting input into the receive buffers the guest posted.
    fn deliver_input<M: GuestRam>(
        &mut self,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        while !self.input.is_empty() {
            let Some(chain) = ring.next_chain(mem)? else {
                break;
            };
            let n = usize::try_from(chain.bytes())
                .unwrap_or(usize::MAX)
                .min(self.input.len());
            let (first, second) = self.input.as_slices();
            let from_first = n.min(first.len());
            chain.write_at(mem, 0, &first[..from_first])?;
            chain.write_at(mem, from_first as u64, &second[..n - from_first])?;
            self.input.drain(..n);
            self.counters.rx_bytes += n as u64;
            ring.complete(mem, chain, n as u32)?;
        }
        Ok(())
    }
}

static CONSOLE_QUEUES: [QueueSpec; 2] = [
    QueueSpec {
        max_size: 64,
        direction: Direction::DeviceWrites,
    },
    QueueSpec {
        max_size: 64,
        direction: Direction::DeviceReads,
    },
];

impl<S: ConsoleSink> Backend for Console<S> {
    const NAME: &'static str = "virtio-console";
    const TYPE: DeviceType = DeviceType::Console;

    fn queues(&self) -> &'static [QueueSpec] {
        &CONSOLE_QUEUES
    }

    fn config(&self, _out: &mut [u8; CONFIG_MAX]) -> usize {
        // cols, rows, ports, emergency write: none offered, all zero.
        12
    }

    fn reset(&mut self) {
        // Input waits for the next driver; only the queues are forgotten.
    }

    fn completes_unprompted(&self, queue: u16) -> bool {
        queue == console_queue::RECEIVE
    }

    fn process<M: GuestRam>(
        &mut self,
        queue: u16,
        ring: &mut Virtqueue,
        mem: &mut M,
    ) -> Result<(), QueueError> {
        match queue {
            console_queue::TRANSMIT => self.transmit_all(ring, mem),
            // New receive buffers: input that waited can go.
            _ => self.deliver_input(ring, mem),
        }
    }
}

impl<S: ConsoleSink> Device<Console<S>> {
    /// Input for the guest: kept (up to [`INPUT_MAX`] bytes waiting; the
    /// rest dropped and counted) and delivered at once into whatever
    /// receive buffers the guest has posted. Says whether to interrupt it.
    pub fn push_input<M: GuestRam>(
        &mut self,
        mem: &mut M,
        bytes: &[u8],
    ) -> Result<Interrupt, DeviceError> {
        let console = self.backend_mut();
        let room = INPUT_MAX - console.input.len();
        let kept = bytes.len().min(room);
        console.input.extend(&bytes[..kept]);
        console.counters.input_dropped += (bytes.len() - kept) as u64;
        self.run_queue(mem, console_queue::RECEIVE, |console, ring, mem| {
            console.deliver_input(ring, mem)
        })
    }
}
