//! The switch: frames in at one port, out at the ports they are for.
//!
//! [`Switch::input`] takes a frame from a port, learns where its sender
//! lives, and puts a copy in the outbound queue of each port it is for:
//! the one port its destination was learned on, or, for broadcast,
//! multicast and addresses not learned, every port but the one it came in
//! on. Nothing is delivered inside `input`: the switch owns no device. The
//! kernel empties a port's queue with [`Switch::drain`] when the port can
//! take frames: a guest's at its next entry or interrupt, straight into
//! its virtio-net receive queue, the uplink's when its NIC has room.
//!
//! Queues rather than an iterator of deliveries out of `input`, because a
//! frame's destinations are not all ready when it arrives (a guest may be
//! halted, or running on another slice), and because a queue is where a
//! bound can be put: each holds at most [`Limits::queue_frames`] frames and
//! [`Limits::queue_bytes`] bytes, and a frame for a full queue is dropped
//! and counted at that port alone. A guest that never drains its queue
//! loses its own frames; it cannot make the host grow, nor delay anyone
//! else.
//!
//! Floods are the costly case (one frame, a copy per port), and a port can
//! cause them at will with made-up destinations, so each port may flood
//! at most [`Limits::floods_per_tick`] frames per tick; the rest are
//! dropped and counted. Frames to learned addresses are never limited.
//!
//! Queued frames live in buffers of [`MAX_FRAME_BYTES`] capacity, and a
//! drained buffer goes back to a small pool for the next frame, so a
//! switch in steady state copies frames without allocating.

use super::ethernet::{Addresses, FrameError, MAX_FRAME_BYTES, MacAddress};
use super::port::{PortCounters, PortId, PortKind, PortStats};
use super::table::{ForwardingTable, TableCounters, Tick};
use alloc::collections::VecDeque;
use alloc::collections::vec_deque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The switch's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most addresses the forwarding table holds.
    pub table_capacity: usize,
    /// How many ticks a learned address is kept without being seen again.
    pub entry_lifetime: u64,
    /// The most frames a port's outbound queue holds.
    pub queue_frames: usize,
    /// The most bytes of frames a port's outbound queue holds.
    pub queue_bytes: usize,
    /// The most frames one port may flood per tick.
    pub floods_per_tick: u32,
}

impl Limits {
    /// Bounds for a tick of 100 ms: 1024 addresses kept for 5 minutes;
    /// per port 256 frames and 256 KiB queued (at most 256 buffers of
    /// 1518 bytes, 380 KiB, per port), and 100 floods per tick, 1000 a
    /// second, far more than ARP, DHCP and neighbour discovery need.
    pub const DEFAULT: Limits = Limits {
        table_capacity: 1024,
        entry_lifetime: 3000,
        queue_frames: 256,
        queue_bytes: 256 * 1024,
        floods_per_tick: 100,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What became of a frame given to [`Switch::input`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its destination was learned on port `to`; `queued` says whether
    /// that port's queue had room.
    Forwarded {
        /// The destination's port.
        to: PortId,
        /// Whether it was queued there (else it was dropped as full).
        queued: bool,
    },
    /// It went to every other port: `queued` of them took it, `full` had
    /// no room.
    Flooded {
        /// Ports whose queue took a copy.
        queued: usize,
        /// Ports whose queue was full.
        full: usize,
    },
    /// Its destination lives on the port it came from: nothing to do.
    Filtered,
    /// It was dropped before going anywhere.
    Dropped(InputDrop),
}

/// Why a frame was dropped as it entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputDrop {
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than [`MAX_FRAME_BYTES`].
    Oversize,
    /// It would flood, and its port had spent its floods for the tick.
    FloodRate,
    /// The port is not (or no longer) on the switch.
    UnknownPort,
}

impl From<FrameError> for InputDrop {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Runt => InputDrop::Runt,
            FrameError::Oversize => InputDrop::Oversize,
        }
    }
}

/// The switch's own counts, beside its ports'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Ports on the switch now.
    pub ports: usize,
    /// Addresses in the forwarding table now.
    pub entries: usize,
    /// What the forwarding table has done.
    pub table: TableCounters,
    /// Frames given for a port that is not on the switch.
    pub unknown_port: u64,
}

impl fmt::Display for SwitchCounters {
    /// One line, `switch ports=3 entries=5 learned=...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.table;
        write!(
            f,
            "switch ports={} entries={} learned={} moves={} evictions={} aged={} \
             forgotten={} unknown_port={}",
            self.ports,
            self.entries,
            t.learned,
            t.moves,
            t.evictions,
            t.aged,
            t.forgotten,
            self.unknown_port,
        )
    }
}

/// The frames waiting for one port, oldest first, handed to the closure
/// of [`Switch::drain`]. Only the frames it takes leave the queue.
#[derive(Debug)]
pub struct Frames<'a> {
    waiting: vec_deque::Iter<'a, Vec<u8>>,
    taken: &'a mut usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let frame = self.waiting.next()?;
        *self.taken += 1;
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.waiting.size_hint()
    }
}

impl ExactSizeIterator for Frames<'_> {}

/// A layer-2 learning switch joining guests, the uplink and the host.
#[derive(Debug)]
pub struct Switch {
    /// In order of identifier (identifiers only grow, so adding pushes).
    ports: Vec<Port>,
    table: ForwardingTable,
    limits: Limits,
    now: Tick,
    next_id: u64,
    pool: BufferPool,
    unknown_port: u64,
}

impl Switch {
    /// A switch with no ports, bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            ports: Vec::new(),
            table: ForwardingTable::new(limits.table_capacity, limits.entry_lifetime),
            limits,
            now: Tick::default(),
            next_id: 0,
            pool: BufferPool::default(),
            unknown_port: 0,
        }
    }

    /// Plugs in a port of kind `kind`, named `name` on the counters page
    /// (one word: the page splits lines at spaces).
    pub fn add_port(&mut self, kind: PortKind, name: impl Into<String>) -> PortId {
        let id = PortId(self.next_id);
        self.next_id += 1;
        self.ports.push(Port::new(id, kind, name.into()));
        id
    }

    /// Unplugs `port` (its guest ended): forgets the addresses learned on
    /// it and drops its queue. Returns its final counts, or `None` if it
    /// was not on the switch.
    pub fn remove_port(&mut self, port: PortId) -> Option<PortCounters> {
        let index = self.index_of(port)?;
        let mut removed = self.ports.remove(index);
        self.table.forget_port(port);
        removed.counters.drops_removed += removed.queue.frames.len() as u64;
        for buffer in removed.queue.frames.drain(..) {
            self.pool.give_back(buffer);
        }
        Some(removed.counters)
    }

    /// Takes `frame` in from port `from` and queues it for the ports it is
    /// for. Says what became of it; the counts say the same.
    pub fn input(&mut self, from: PortId, frame: &[u8]) -> Outcome {
        let Some(index) = self.index_of(from) else {
            self.unknown_port += 1;
            return Outcome::Dropped(InputDrop::UnknownPort);
        };
        let addresses = match Addresses::of(frame) {
            Ok(addresses) => addresses,
            Err(error) => {
                self.ports[index].count_refused(error);
                return Outcome::Dropped(error.into());
            }
        };
        self.ports[index].count_received(frame);
        self.table.learn(addresses.source, from, self.now);
        match self.destination_port(addresses.destination) {
            Some(to) if to == from => {
                self.ports[index].counters.filtered += 1;
                Outcome::Filtered
            }
            Some(to) => self.forward(index, to, frame),
            None => self.flood(index, frame),
        }
    }

    /// Hands the frames waiting for `port` to `deliver`, oldest first;
    /// those it takes from the iterator leave the queue and are counted
    /// as sent, the rest stay for next time. Returns what `deliver`
    /// returned, or `None` if the port is not on the switch.
    ///
    /// For a guest: `switch.drain(port, |frames| device.receive_frames(mem,
    /// frames))`, one interrupt for the lot.
    pub fn drain<R>(&mut self, port: PortId, deliver: impl FnOnce(Frames<'_>) -> R) -> Option<R> {
        let index = self.index_of(port)?;
        let port = &mut self.ports[index];
        let mut taken = 0;
        let result = deliver(Frames {
            waiting: port.queue.frames.iter(),
            taken: &mut taken,
        });
        port.send_oldest(taken, &mut self.pool);
        Some(result)
    }

    /// Advances the logical clock by one tick: addresses not seen for
    /// their lifetime are forgotten, and every port may flood again.
    pub fn tick(&mut self) {
        self.now = self.now.next();
        self.table.expire(self.now);
        for port in &mut self.ports {
            port.floods_this_tick = 0;
        }
    }

    /// The logical clock.
    pub fn now(&self) -> Tick {
        self.now
    }

    /// Its bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The port `mac` was learned on, if any.
    pub fn lookup(&self, mac: MacAddress) -> Option<PortId> {
        self.table.lookup(mac)
    }

    /// The forwarding table, to read.
    pub fn table(&self) -> &ForwardingTable {
        &self.table
    }

    /// The ports whose queues hold frames: those the kernel should drain
    /// (and whose guests it should wake).
    pub fn ports_with_frames(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports
            .iter()
            .filter(|port| !port.queue.frames.is_empty())
            .map(|port| port.id)
    }

    /// One port's line on the counters page, if it is on the switch.
    pub fn port(&self, port: PortId) -> Option<PortStats<'_>> {
        self.index_of(port).map(|index| self.ports[index].stats())
    }

    /// Every port's line, in the order they were added.
    pub fn ports(&self) -> impl Iterator<Item = PortStats<'_>> + '_ {
        self.ports.iter().map(Port::stats)
    }

    /// The switch's own counts.
    pub fn counters(&self) -> SwitchCounters {
        SwitchCounters {
            ports: self.ports.len(),
            entries: self.table.len(),
            table: self.table.counters(),
            unknown_port: self.unknown_port,
        }
    }

    /// Where a frame to `destination` goes: a learned port, or `None` to
    /// flood (group addresses are never learned, so they always flood).
    fn destination_port(&self, destination: MacAddress) -> Option<PortId> {
        if destination.is_group() {
            return None;
        }
        self.table.lookup(destination)
    }

    /// Queues a frame from the port at `from_index` for port `to`.
    fn forward(&mut self, from_index: usize, to: PortId, frame: &[u8]) -> Outcome {
        self.ports[from_index].counters.forwarded += 1;
        // The table forgets a port's addresses when the port is removed,
        // so `to` is on the switch.
        let queued = match self.index_of(to) {
            Some(to_index) => self.ports[to_index].offer(frame, &mut self.pool, &self.limits),
            None => false,
        };
        Outcome::Forwarded { to, queued }
    }

    /// Queues a frame from the port at `from_index` for every other port,
    /// if that port has floods left this tick.
    fn flood(&mut self, from_index: usize, frame: &[u8]) -> Outcome {
        let sender = &mut self.ports[from_index];
        if sender.floods_this_tick >= self.limits.floods_per_tick {
            sender.counters.drops_flood_rate += 1;
            return Outcome::Dropped(InputDrop::FloodRate);
        }
        sender.floods_this_tick += 1;
        sender.counters.floods += 1;
        let from = sender.id;
        let (mut queued, mut full) = (0, 0);
        for port in self.ports.iter_mut().filter(|port| port.id != from) {
            if port.offer(frame, &mut self.pool, &self.limits) {
                queued += 1;
            } else {
                full += 1;
            }
        }
        Outcome::Flooded { queued, full }
    }

    /// Where `port` is in `ports`, if it is on the switch.
    fn index_of(&self, port: PortId) -> Option<usize> {
        self.ports.binary_search_by_key(&port, |p| p.id).ok()
    }
}

impl Default for Switch {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

/// One port, inside the switch.
#[derive(Debug)]
struct Port {
    id: PortId,
    kind: PortKind,
    name: String,
    queue: OutboundQueue,
    counters: PortCounters,
    /// Frames flooded since the last tick.
    floods_this_tick: u32,
}

impl Port {
    fn new(id: PortId, kind: PortKind, name: String) -> Self {
        Self {
            id,
            kind,
            name,
            queue: OutboundQueue::default(),
            counters: PortCounters::default(),
            floods_this_tick: 0,
        }
    }

    fn count_received(&mut self, frame: &[u8]) {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += frame.len() as u64;
    }

    fn count_refused(&mut self, error: FrameError) {
        match error {
            FrameError::Runt => self.counters.drops_runt += 1,
            FrameError::Oversize => self.counters.drops_oversize += 1,
        }
    }

    /// Queues a copy of `frame` if the queue has room for it; else counts
    /// it dropped. Says whether it was queued.
    fn offer(&mut self, frame: &[u8], pool: &mut BufferPool, limits: &Limits) -> bool {
        if !self.queue.has_room_for(frame, limits) {
            self.counters.drops_full += 1;
            return false;
        }
        self.queue.push(pool.copy_of(frame));
        true
    }

    /// Takes the `count` oldest frames off the queue as sent.
    fn send_oldest(&mut self, count: usize, pool: &mut BufferPool) {
        for _ in 0..count {
            let Some(frame) = self.queue.pop() else {
                break;
            };
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += frame.len() as u64;
            pool.give_back(frame);
        }
    }

    fn stats(&self) -> PortStats<'_> {
        PortStats {
            id: self.id,
            name: &self.name,
            kind: self.kind,
            counters: self.counters,
            queued_frames: self.queue.frames.len(),
            queued_bytes: self.queue.bytes,
        }
    }
}

/// Frames waiting for a port, with their total size kept for the bound.
#[derive(Debug, Default)]
struct OutboundQueue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl OutboundQueue {
    fn has_room_for(&self, frame: &[u8], limits: &Limits) -> bool {
        self.frames.len() < limits.queue_frames && self.bytes + frame.len() <= limits.queue_bytes
    }

    fn push(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }
}

/// Buffers whose frames were sent, kept for the next frames.
#[derive(Debug, Default)]
struct BufferPool {
    spare: Vec<Vec<u8>>,
}

impl BufferPool {
    /// Buffers kept beyond this are freed: enough for a burst across a few
    /// ports, little memory when idle (96 KiB).
    const MAX_SPARE: usize = 64;

    /// A buffer holding a copy of `frame`.
    fn copy_of(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut buffer = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_FRAME_BYTES));
        buffer.extend_from_slice(frame);
        buffer
    }

    fn give_back(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < Self::MAX_SPARE {
            buffer.clear();
            self.spare.push(buffer);
        }
    }
}
