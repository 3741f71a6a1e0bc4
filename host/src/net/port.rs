//! A port of the switch as the outside sees it: its name, its kind, and
//! its counters, printed one line per port on the counters page.

use core::fmt;

/// Names one port for as long as the switch lives. Numbers are never
/// reused, so an identifier kept after its port was removed names nothing,
/// rather than whichever port came next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub(super) u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What is plugged into a port. Forwarding treats every kind alike; the
/// kind is for the reader of the counters, and for the kernel deciding
/// where a port's frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A guest's virtio-net device.
    Guest,
    /// The machine's network card, to the world outside.
    Uplink,
    /// The host's own network interface (its TCP/IP stack).
    HostInterface,
}

impl PortKind {
    /// The word the counters page prints.
    pub const fn name(self) -> &'static str {
        match self {
            PortKind::Guest => "guest",
            PortKind::Uplink => "uplink",
            PortKind::HostInterface => "host",
        }
    }
}

impl fmt::Display for PortKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One port's counts since it was added.
///
/// Every frame that enters is counted exactly once: as received
/// (`rx_packets`, then as exactly one of `forwarded`, `floods`, `filtered`
/// or `drops_flood_rate`) or as a drop by size (`drops_runt`,
/// `drops_oversize`). Every frame offered to the port is, likewise, sent
/// (`tx_packets`), dropped at a full queue (`drops_full`), still queued,
/// or dropped when the port is removed (`drops_removed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames taken in from the port, of a size the switch carries.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames handed out to the port (drained from its queue).
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Received frames sent to the one port their destination lives on.
    pub forwarded: u64,
    /// Received frames sent to every other port: broadcast, multicast, or
    /// for an address not learned.
    pub floods: u64,
    /// Received frames for an address on this same port, which the switch
    /// does not send back.
    pub filtered: u64,
    /// Frames for this port dropped because its queue was full.
    pub drops_full: u64,
    /// Frames from this port shorter than an Ethernet header.
    pub drops_runt: u64,
    /// Frames from this port longer than the largest frame.
    pub drops_oversize: u64,
    /// Frames from this port that would have flooded after its floods for
    /// the tick were spent.
    pub drops_flood_rate: u64,
    /// Frames still queued for this port when it was removed.
    pub drops_removed: u64,
}

/// A port's line on the counters page: who it is, its counts, and what is
/// waiting in its queue now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStats<'a> {
    /// Its identifier.
    pub id: PortId,
    /// Its name (a guest's name, `uplink`, `host`).
    pub name: &'a str,
    /// What is plugged into it.
    pub kind: PortKind,
    /// Its counts.
    pub counters: PortCounters,
    /// Frames waiting in its queue.
    pub queued_frames: usize,
    /// Their bytes.
    pub queued_bytes: usize,
}

impl fmt::Display for PortStats<'_> {
    /// One line, `port <name> kind=guest rx_packets=... queued_bytes=...`,
    /// each count as `key=value` so that scripts can split it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        write!(
            f,
            "port {} kind={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} \
             forwarded={} floods={} filtered={} drops_full={} drops_runt={} \
             drops_oversize={} drops_flood_rate={} queued_frames={} queued_bytes={}",
            self.name,
            self.kind,
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            c.forwarded,
            c.floods,
            c.filtered,
            c.drops_full,
            c.drops_runt,
            c.drops_oversize,
            c.drops_flood_rate,
            self.queued_frames,
            self.queued_bytes,
        )
    }
}
