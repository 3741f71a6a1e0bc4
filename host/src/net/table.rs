//! The forwarding table: which port each station's MAC address was last
//! seen on.
//!
//! The switch learns from source addresses: a frame from `a` entering on
//! port 3 says `a` lives behind port 3, so frames for `a` need go nowhere
//! else. The table is bounded, because the addresses are chosen by the
//! guests, and a guest could invent a new one for every frame:
//!
//! - **Ageing.** An entry not refreshed for a lifetime of ticks is
//!   forgotten at the next tick (a station that went quiet may have
//!   moved, or gone).
//! - **Eviction.** A new address arriving at a full table replaces the
//!   entry seen least recently. Finding it costs a pass over the table,
//!   paid only when the table is full; the victim's frames are then
//!   flooded until it speaks again, which the flood bounds keep cheap.
//! - **Moves.** An address seen on a different port from before is moved
//!   there at once: the newest evidence wins (a guest restarted on a new
//!   port, or a station that moved behind the uplink).

use super::ethernet::MacAddress;
use super::port::PortId;
use alloc::collections::BTreeMap;

/// A moment on the switch's logical clock, which the kernel advances
/// (see [`super::Switch::tick`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(pub u64);

impl Tick {
    /// How many ticks have passed from `earlier` to `self` (none if
    /// `earlier` is later).
    pub const fn ticks_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The tick after this one.
    pub const fn next(self) -> Tick {
        Tick(self.0 + 1)
    }
}

/// What the table has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    /// Addresses learned that the table did not hold.
    pub learned: u64,
    /// Addresses seen on a port other than the one the table held.
    pub moves: u64,
    /// Entries dropped to make room for a new address.
    pub evictions: u64,
    /// Entries forgotten because they were not refreshed in time.
    pub aged: u64,
    /// Entries forgotten because their port was removed.
    pub forgotten: u64,
}

/// One learned address.
#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    last_seen: Tick,
}

/// MAC address -> port, bounded in size and in age.
#[derive(Clone, Debug)]
pub struct ForwardingTable {
    entries: BTreeMap<MacAddress, Entry>,
    capacity: usize,
    lifetime: u64,
    counters: TableCounters,
}

impl ForwardingTable {
    /// An empty table that holds at most `capacity` addresses, each for
    /// `lifetime` ticks after it was last seen.
    pub fn new(capacity: usize, lifetime: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity,
            lifetime,
            counters: TableCounters::default(),
        }
    }

    /// Records that `mac` was seen on `port` at `now`. Only station
    /// addresses are learned: a group address is nobody's location.
    pub fn learn(&mut self, mac: MacAddress, port: PortId, now: Tick) {
        if !mac.is_station() || self.capacity == 0 {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&mac) {
            if entry.port != port {
                self.counters.moves += 1;
                entry.port = port;
            }
            entry.last_seen = now;
            return;
        }
        if self.entries.len() >= self.capacity {
            self.evict_least_recently_seen();
        }
        self.entries.insert(
            mac,
            Entry {
                port,
                last_seen: now,
            },
        );
        self.counters.learned += 1;
    }

    /// The port `mac` was last seen on, if the table still holds it.
    pub fn lookup(&self, mac: MacAddress) -> Option<PortId> {
        self.entries.get(&mac).map(|entry| entry.port)
    }

    /// Forgets every address learned on `port` (it is being removed).
    pub fn forget_port(&mut self, port: PortId) {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.port != port);
        self.counters.forgotten += (before - self.entries.len()) as u64;
    }

    /// Forgets every entry last seen a whole lifetime or more before
    /// `now`.
    pub fn expire(&mut self, now: Tick) {
        let lifetime = self.lifetime;
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| now.ticks_since(entry.last_seen) < lifetime);
        self.counters.aged += (before - self.entries.len()) as u64;
    }

    /// How many addresses it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most addresses it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// What it has done.
    pub fn counters(&self) -> TableCounters {
        self.counters
    }

    /// Every address it holds, with its port, in address order.
    pub fn entries(&self) -> impl Iterator<Item = (MacAddress, PortId)> + '_ {
        self.entries.iter().map(|(mac, entry)| (*mac, entry.port))
    }

    /// Drops the entry seen longest ago (the lowest address among equals,
    /// so the choice is reproducible).
    fn evict_least_recently_seen(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_seen)
            .map(|(mac, _)| *mac);
        if let Some(mac) = oldest {
            self.entries.remove(&mac);
            self.counters.evictions += 1;
        }
    }
}
