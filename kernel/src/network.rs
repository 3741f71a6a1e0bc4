//! The machine's network as the run loop sees it: the virtual switch, the
//! machine's own NIC as its uplink, and the host's own interface (which
//! serves the counters page), polled between the guests' turns.
//!
//! The guests' network cards are ports of the same switch; the run loop
//! hands their frames in ([`Network::sent_by_guest`]) and out
//! ([`Network::deliver_to_guest`]). Nothing here interrupts: the NIC is polled
//! (`crate::nic`), so while the machine has an uplink or a host interface,
//! no guest turn and no idle sleep lasts longer than [`POLL_NS`], and a
//! frame from outside waits at most that long.
//!
//! With `bench=exits` it also counts what the guests' traffic costs the host
//! outside the guests' own exits ([`HostCosts`]): the switch (frames in,
//! learning, queueing, draining) and the delivery of frames into the
//! receiving guests' buffers; `cargo xtask bench` sets them, per packet,
//! beside the guests' own share and their notifies'.

use crate::apic::rdtsc;
use crate::bench;
use crate::boot::Region;
use crate::hostnet::snapshot::GuestLine;
use crate::hostnet::{self, HOST_MAC, HostNet, PortLine, Snapshot};
use crate::nic::Uplink;
use alloc::string::String;
use alloc::vec::Vec;
use host::config::Config;
use host::net::{Frames, Limits, PortId, PortKind, Switch, SwitchCounters};

/// How long the outside may wait for the host's attention.
pub const POLL_NS: u64 = 2_000_000;

/// How often the switch's clock ticks (its learned addresses age, its
/// flood budgets renew): the ten a second its default limits assume.
const SWITCH_TICK_NS: u64 = 100_000_000;

/// What the guests' frames cost the host between turns, counted with
/// `bench=exits`: TSC cycles, which are instructions under `-icount`.
#[derive(Clone, Copy, Debug, Default)]
struct HostCosts {
    /// Frames the guests put into the switch.
    frames_in: u64,
    /// Cycles in the switch: frames in, and draining the ports to guests
    /// (the delivery itself not included).
    switch_cycles: u64,
    /// Deliveries to a guest, each of every frame waiting on its port.
    deliveries: u64,
    /// Cycles copying frames into guests' receive buffers and raising
    /// their interrupts (the virtio-net back end's receive half).
    delivery_cycles: u64,
}

/// The switch and what hangs off it besides the guests.
pub struct Network {
    switch: Switch,
    uplink: Option<(Uplink, PortId)>,
    host: Option<(HostNet, PortId)>,
    next_tick_ns: u64,
    stats_interval_ms: u64,
    next_stats_ms: Option<u64>,
    /// Counted only with `bench=exits`.
    costs: HostCosts,
}

impl Network {
    /// The switch, with the machine's NIC as its uplink if it has one
    /// (`nic:` says which, or that there is none) and the host's interface
    /// when `config` asks for one (`host_ip=`): by DHCP only with an
    /// uplink to ask on.
    pub fn start(config: &Config<'_>, regions: &[Region], now_ns: u64) -> Self {
        let mut switch = Switch::new(Limits::DEFAULT);
        let uplink = Uplink::probe(regions).map(|nic| {
            let port = switch.add_port(PortKind::Uplink, "uplink");
            (nic, port)
        });
        let wanted = uplink.is_some() || config.host_ip != host::config::HostIp::Dhcp;
        let host = wanted
            .then(|| HostNet::new(config, HOST_MAC, now_ns / 1_000_000))
            .flatten()
            .map(|interface| {
                let port = switch.add_port(PortKind::HostInterface, "host");
                (interface, port)
            });
        let stats_interval_ms = config.stats_interval_ms;
        Self {
            switch,
            uplink,
            host,
            next_tick_ns: now_ns + SWITCH_TICK_NS,
            stats_interval_ms,
            next_stats_ms: (stats_interval_ms > 0).then(|| now_ns / 1_000_000 + stats_interval_ms),
            costs: HostCosts::default(),
        }
    }

    /// Whether anything outside the guests needs polling (an uplink or the
    /// host's interface): then turns and sleeps are cut to [`POLL_NS`].
    pub fn needs_polling(&self) -> bool {
        self.uplink.is_some() || self.host.is_some()
    }

    /// A port for a guest's network card.
    pub fn add_guest(&mut self, name: &str) -> PortId {
        self.switch.add_port(PortKind::Guest, String::from(name))
    }

    /// Takes a guest's port off the switch; gives its last counts.
    pub fn remove_guest(&mut self, port: PortId) -> Option<String> {
        let line = self
            .switch
            .port(port)
            .map(|stats| alloc::format!("{stats}"));
        self.switch.remove_port(port);
        line
    }

    /// Frames a guest sent.
    pub fn sent_by_guest(&mut self, port: PortId, frames: impl Iterator<Item = Vec<u8>>) {
        let started = bench::enabled().then(rdtsc);
        let mut count = 0;
        for frame in frames {
            self.switch.input(port, &frame);
            count += 1;
        }
        if let Some(started) = started {
            self.costs.frames_in += count;
            self.costs.switch_cycles += rdtsc() - started;
        }
    }

    /// Whether any port has frames waiting.
    pub fn has_frames_waiting(&self) -> bool {
        self.switch.ports_with_frames().next().is_some()
    }

    /// Whether frames wait for a guest's port.
    pub fn has_frames_for(&self, port: PortId) -> bool {
        self.switch.ports_with_frames().any(|p| p == port)
    }

    /// Hands `deliver` the frames waiting for a guest's port.
    pub fn deliver_to_guest<R>(
        &mut self,
        port: PortId,
        deliver: impl FnOnce(Frames<'_>) -> R,
    ) -> Option<R> {
        if !bench::enabled() {
            return self.switch.drain(port, deliver);
        }
        let started = rdtsc();
        let mut delivery = 0;
        let result = self.switch.drain(port, |frames| {
            let at = rdtsc();
            let result = deliver(frames);
            delivery = rdtsc() - at;
            result
        });
        self.costs.deliveries += 1;
        self.costs.delivery_cycles += delivery;
        self.costs.switch_cycles += (rdtsc() - started).saturating_sub(delivery);
        result
    }

    /// One round for everything outside the guests, at host time `now_ns`:
    /// the switch's clock, frames from the NIC, the host's interface (its
    /// DHCP client and the counters page, for which `guests` gives the
    /// guests' lines only if a request is waiting), frames to the NIC, and
    /// the console's `stats` lines when `stats_interval_ms=` asks.
    pub fn poll(&mut self, now_ns: u64, guests: impl FnOnce() -> Vec<GuestLine>) {
        if now_ns >= self.next_tick_ns {
            self.switch.tick();
            self.next_tick_ns = now_ns + SWITCH_TICK_NS;
        }
        let now_ms = now_ns / 1_000_000;
        if let Some((nic, port)) = &mut self.uplink {
            let switch = &mut self.switch;
            nic.receive(|frame| {
                switch.input(*port, frame);
            });
        }
        let mut guests = Some(guests);
        if let Some((interface, port)) = &mut self.host {
            let uplink = self
                .uplink
                .as_ref()
                .map(|(nic, _)| hostnet::uplink_line(nic));
            interface.poll(now_ms, &mut self.switch, *port, |switch| Snapshot {
                uptime_ms: now_ms,
                memory: hostnet::memory_line(),
                guests: guests.take().map_or_else(Vec::new, |lines| lines()),
                ports: switch.ports().map(PortLine::from).collect(),
                uplink,
                host: Default::default(),
            });
        }
        if let Some((nic, port)) = &mut self.uplink {
            self.switch.drain(*port, |frames| nic.transmit_from(frames));
        }
        if let Some(due) = self.next_stats_ms.filter(|&due| now_ms >= due) {
            let lines = guests.take().map_or_else(Vec::new, |lines| lines());
            hostnet::print_stats(&self.snapshot(now_ms, lines));
            self.next_stats_ms = Some(due + self.stats_interval_ms);
        }
    }

    /// The last `stats` lines, when `stats_interval_ms=` asked for them:
    /// whatever the run's length, it ends with the counters as they are at
    /// its end (the guests gone, their ports with them). With `bench=exits`,
    /// also the host's costs of the guests' frames, as `bench net
    /// host_network frames_in=<n> switch_cycles=<c> deliveries=<d>
    /// delivery_cycles=<c>`.
    pub fn final_stats(&self, now_ms: u64) {
        if self.stats_interval_ms > 0 {
            hostnet::print_stats(&self.snapshot(now_ms, Vec::new()));
        }
        if bench::enabled() {
            let HostCosts {
                frames_in,
                switch_cycles,
                deliveries,
                delivery_cycles,
            } = self.costs;
            println!(
                "bench net host_network frames_in={frames_in} switch_cycles={switch_cycles} deliveries={deliveries} delivery_cycles={delivery_cycles}"
            );
        }
    }

    /// Everything the counters page shows, now.
    fn snapshot(&self, now_ms: u64, guests: Vec<GuestLine>) -> Snapshot {
        Snapshot {
            uptime_ms: now_ms,
            memory: hostnet::memory_line(),
            guests,
            ports: self.switch.ports().map(PortLine::from).collect(),
            uplink: self
                .uplink
                .as_ref()
                .map(|(nic, _)| hostnet::uplink_line(nic)),
            host: self
                .host
                .as_ref()
                .map(|(interface, _)| interface.host_line())
                .unwrap_or_default(),
        }
    }

    /// The switch's own counts.
    pub fn counters(&self) -> SwitchCounters {
        self.switch.counters()
    }
}
