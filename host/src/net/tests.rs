//! The switch, driven the way the kernel will drive it: ports added, frames
//! put in, queues drained, the clock ticked; and every count checked
//! exactly.
//!
//! In the module's order: addresses and frames, learning and forwarding,
//! flooding, the table's bounds, the queues' bounds, removal, the counters
//! page.

use super::ethernet::{Addresses, FrameError, HEADER_BYTES};
use super::*;
use std::format;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// A station address ending in `n`.
fn mac(n: u8) -> MacAddress {
    MacAddress::new([0x02, 0, 0, 0, 0, n])
}

/// A multicast address (IPv6 all-nodes).
const ALL_NODES: MacAddress = MacAddress::new([0x33, 0x33, 0, 0, 0, 1]);

/// A frame of `len` bytes from `source` to `destination`, its payload
/// filled with `fill` so that frames can be told apart.
fn frame_of(destination: MacAddress, source: MacAddress, len: usize, fill: u8) -> Vec<u8> {
    let mut frame = vec![fill; len.max(HEADER_BYTES)];
    frame[..6].copy_from_slice(&destination.octets());
    frame[6..12].copy_from_slice(&source.octets());
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame.truncate(len);
    frame
}

/// A 60-byte frame.
fn frame(destination: MacAddress, source: MacAddress) -> Vec<u8> {
    frame_of(destination, source, 60, 0)
}

/// Everything waiting for `port`, taken.
fn drained(switch: &mut Switch, port: PortId) -> Vec<Vec<u8>> {
    switch
        .drain(port, |frames| frames.map(<[u8]>::to_vec).collect())
        .expect("port on the switch")
}

fn counters(switch: &Switch, port: PortId) -> PortCounters {
    switch.port(port).expect("port on the switch").counters
}

fn queued(switch: &Switch, port: PortId) -> usize {
    switch.port(port).expect("port on the switch").queued_frames
}

/// A switch with three guests, `a`, `b` and `c`.
fn three_ports(limits: Limits) -> (Switch, [PortId; 3]) {
    let mut switch = Switch::new(limits);
    let a = switch.add_port(PortKind::Guest, "a");
    let b = switch.add_port(PortKind::Guest, "b");
    let c = switch.add_port(PortKind::Guest, "c");
    (switch, [a, b, c])
}

// ---------------------------------------------------------------------------
// Addresses and frames.
// ---------------------------------------------------------------------------

#[test]
fn addresses_print_and_classify() {
    assert_eq!(mac(1).to_string(), "02:00:00:00:00:01");
    assert_eq!(MacAddress::BROADCAST.to_string(), "ff:ff:ff:ff:ff:ff");
    assert!(mac(1).is_station());
    assert!(MacAddress::BROADCAST.is_group() && MacAddress::BROADCAST.is_broadcast());
    assert!(ALL_NODES.is_group() && !ALL_NODES.is_broadcast() && !ALL_NODES.is_station());
    assert!(MacAddress::new([0; 6]).is_zero() && !MacAddress::new([0; 6]).is_station());
    assert_eq!(
        MacAddress::from([1, 2, 3, 4, 5, 6]).octets(),
        [1, 2, 3, 4, 5, 6]
    );
}

#[test]
fn frame_sizes_are_checked_at_both_ends() {
    let header = frame_of(mac(2), mac(1), HEADER_BYTES, 0);
    assert_eq!(
        Addresses::of(&header),
        Ok(Addresses {
            destination: mac(2),
            source: mac(1)
        })
    );
    assert_eq!(Addresses::of(&header[..13]), Err(FrameError::Runt));
    assert_eq!(Addresses::of(&[]), Err(FrameError::Runt));
    let largest = frame_of(mac(2), mac(1), MAX_FRAME_BYTES, 0);
    assert!(Addresses::of(&largest).is_ok());
    let too_long = frame_of(mac(2), mac(1), MAX_FRAME_BYTES + 1, 0);
    assert_eq!(Addresses::of(&too_long), Err(FrameError::Oversize));
    assert_eq!(MAX_FRAME_BYTES, 1518);
}

// ---------------------------------------------------------------------------
// Learning and forwarding.
// ---------------------------------------------------------------------------

#[test]
fn a_learned_destination_gets_the_frame_alone() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    // b speaks first, so the switch learns where it lives.
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    drained(&mut switch, a);
    drained(&mut switch, c);
    assert_eq!(switch.lookup(mac(2)), Some(b));

    let sent = frame_of(mac(2), mac(1), 100, 7);
    let outcome = switch.input(a, &sent);
    assert_eq!(
        outcome,
        Outcome::Forwarded {
            to: b,
            queued: true
        }
    );
    assert_eq!(drained(&mut switch, b), vec![sent]);
    assert!(drained(&mut switch, c).is_empty());
    assert!(drained(&mut switch, a).is_empty());
    assert_eq!(switch.lookup(mac(1)), Some(a));
}

#[test]
fn a_conversation_floods_once_then_goes_direct() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    // a asks for b: b is not known yet, so everyone hears it.
    let request = frame(mac(2), mac(1));
    assert_eq!(
        switch.input(a, &request),
        Outcome::Flooded { queued: 2, full: 0 }
    );
    // b answers a, whom the switch has learned from the request.
    let reply = frame(mac(1), mac(2));
    assert_eq!(
        switch.input(b, &reply),
        Outcome::Forwarded {
            to: a,
            queued: true
        }
    );
    // And now a reaches b directly.
    assert_eq!(
        switch.input(a, &request),
        Outcome::Forwarded {
            to: b,
            queued: true
        }
    );
    assert_eq!(drained(&mut switch, a), vec![reply]);
    assert_eq!(
        drained(&mut switch, b),
        vec![request.clone(), request.clone()]
    );
    assert_eq!(drained(&mut switch, c), vec![request]);
}

#[test]
fn frames_to_a_station_on_the_same_port_are_not_sent_back() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    // Two stations behind a (a guest bridging, say).
    switch.input(a, &frame(MacAddress::BROADCAST, mac(1)));
    switch.input(a, &frame(MacAddress::BROADCAST, mac(11)));
    drained(&mut switch, b);
    drained(&mut switch, c);
    assert_eq!(switch.input(a, &frame(mac(11), mac(1))), Outcome::Filtered);
    // Even to its own address.
    assert_eq!(switch.input(a, &frame(mac(1), mac(1))), Outcome::Filtered);
    for port in [a, b, c] {
        assert!(drained(&mut switch, port).is_empty());
    }
    assert_eq!(counters(&switch, a).filtered, 2);
}

#[test]
fn group_and_zero_sources_are_never_learned() {
    let (mut switch, [a, ..]) = three_ports(Limits::DEFAULT);
    switch.input(a, &frame(MacAddress::BROADCAST, MacAddress::BROADCAST));
    switch.input(a, &frame(MacAddress::BROADCAST, ALL_NODES));
    switch.input(a, &frame(MacAddress::BROADCAST, MacAddress::new([0; 6])));
    assert!(switch.table().is_empty());
    assert_eq!(switch.lookup(ALL_NODES), None);
    assert_eq!(switch.counters().table.learned, 0);
}

#[test]
fn a_station_that_moves_is_followed() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    switch.input(a, &frame(MacAddress::BROADCAST, mac(1)));
    assert_eq!(switch.lookup(mac(1)), Some(a));
    // mac(1) now speaks from b (its guest restarted there).
    switch.input(b, &frame(MacAddress::BROADCAST, mac(1)));
    assert_eq!(switch.lookup(mac(1)), Some(b));
    for port in [a, b, c] {
        drained(&mut switch, port);
    }
    assert_eq!(
        switch.input(c, &frame(mac(1), mac(3))),
        Outcome::Forwarded {
            to: b,
            queued: true
        }
    );
    let table = switch.counters().table;
    assert_eq!((table.learned, table.moves), (2, 1));
    assert_eq!(switch.counters().entries, 2);
}

// ---------------------------------------------------------------------------
// Flooding.
// ---------------------------------------------------------------------------

#[test]
fn broadcast_multicast_and_unknown_unicast_reach_every_other_port() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    let host = switch.add_port(PortKind::HostInterface, "host");
    for (n, destination) in [MacAddress::BROADCAST, ALL_NODES, mac(9)]
        .into_iter()
        .enumerate()
    {
        let sent = frame_of(destination, mac(1), 64, n as u8);
        assert_eq!(
            switch.input(a, &sent),
            Outcome::Flooded { queued: 3, full: 0 }
        );
        for port in [b, c, host] {
            assert_eq!(drained(&mut switch, port), vec![sent.clone()]);
        }
        assert!(drained(&mut switch, a).is_empty(), "no hairpin");
    }
    assert_eq!(counters(&switch, a).floods, 3);
}

#[test]
fn a_multicast_destination_floods_even_if_someone_claimed_it() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    // A guest sending from a group address teaches the switch nothing.
    switch.input(b, &frame(MacAddress::BROADCAST, ALL_NODES));
    assert_eq!(
        switch.input(a, &frame(ALL_NODES, mac(1))),
        Outcome::Flooded { queued: 2, full: 0 }
    );
    assert_eq!(queued(&switch, c), 2);
}

#[test]
fn a_lone_port_floods_to_nobody() {
    let mut switch = Switch::default();
    let only = switch.add_port(PortKind::Uplink, "uplink");
    assert_eq!(
        switch.input(only, &frame(MacAddress::BROADCAST, mac(1))),
        Outcome::Flooded { queued: 0, full: 0 }
    );
    assert!(drained(&mut switch, only).is_empty());
}

#[test]
fn floods_per_tick_are_bounded_per_port_and_renewed_by_a_tick() {
    let limits = Limits {
        floods_per_tick: 3,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, c]) = three_ports(limits);
    // b is learned, so unicast to it is never limited.
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    for _ in 0..5 {
        switch.input(a, &frame(MacAddress::BROADCAST, mac(1)));
    }
    assert_eq!(counters(&switch, a).floods, 3);
    assert_eq!(counters(&switch, a).drops_flood_rate, 2);
    assert_eq!(
        switch.input(a, &frame(mac(9), mac(1))),
        Outcome::Dropped(InputDrop::FloodRate)
    );
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Forwarded {
            to: b,
            queued: true
        }
    );
    // Other ports have their own budget.
    assert_eq!(
        switch.input(c, &frame(MacAddress::BROADCAST, mac(3))),
        Outcome::Flooded { queued: 2, full: 0 }
    );
    switch.tick();
    assert_eq!(
        switch.input(a, &frame(MacAddress::BROADCAST, mac(1))),
        Outcome::Flooded { queued: 2, full: 0 }
    );
    let a_counts = counters(&switch, a);
    assert_eq!(
        (
            a_counts.rx_packets,
            a_counts.floods,
            a_counts.forwarded,
            a_counts.drops_flood_rate
        ),
        (8, 4, 1, 3)
    );
}

// ---------------------------------------------------------------------------
// The table's bounds.
// ---------------------------------------------------------------------------

#[test]
fn addresses_age_out_after_their_lifetime_unless_seen_again() {
    let limits = Limits {
        entry_lifetime: 3,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, _]) = three_ports(limits);
    switch.input(a, &frame(MacAddress::BROADCAST, mac(1)));
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    switch.tick();
    switch.tick();
    // mac(2) is seen again at tick 2; mac(1) was last seen at tick 0.
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    assert_eq!(switch.lookup(mac(1)), Some(a));
    switch.tick();
    assert_eq!(switch.lookup(mac(1)), None, "3 ticks old");
    assert_eq!(switch.lookup(mac(2)), Some(b));
    switch.tick();
    switch.tick();
    assert_eq!(switch.lookup(mac(2)), None);
    assert_eq!(switch.now(), Tick(5));
    assert_eq!(switch.counters().table.aged, 2);
    // Forgotten, a destination floods again.
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Flooded { queued: 2, full: 0 }
    );
}

#[test]
fn a_full_table_evicts_the_address_seen_longest_ago() {
    let limits = Limits {
        table_capacity: 4,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, _]) = three_ports(limits);
    for n in 1..=4 {
        switch.input(a, &frame(MacAddress::BROADCAST, mac(n)));
        switch.tick();
    }
    // mac(1) is refreshed, so mac(2) is now the one seen longest ago.
    switch.input(a, &frame(MacAddress::BROADCAST, mac(1)));
    switch.input(b, &frame(MacAddress::BROADCAST, mac(5)));
    assert_eq!(switch.table().len(), 4);
    assert_eq!(switch.lookup(mac(2)), None);
    for n in [1, 3, 4] {
        assert_eq!(switch.lookup(mac(n)), Some(a));
    }
    assert_eq!(switch.lookup(mac(5)), Some(b));
    // A spray of made-up addresses never grows the table.
    for n in 10..200 {
        switch.input(b, &frame(MacAddress::BROADCAST, mac(n)));
    }
    let counts = switch.counters();
    assert_eq!(counts.entries, 4);
    assert_eq!(counts.table.learned, 5 + 190);
    assert_eq!(counts.table.evictions, 1 + 190);
}

#[test]
fn a_table_of_no_capacity_learns_nothing_and_floods_everything() {
    let limits = Limits {
        table_capacity: 0,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, _]) = three_ports(limits);
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Flooded { queued: 2, full: 0 }
    );
    assert!(switch.table().is_empty());
}

// ---------------------------------------------------------------------------
// The queues' bounds.
// ---------------------------------------------------------------------------

#[test]
fn a_port_that_never_drains_loses_only_its_own_frames() {
    let limits = Limits {
        queue_frames: 8,
        floods_per_tick: 1000,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, c]) = three_ports(limits);
    for n in 0..100u8 {
        let sent = frame_of(MacAddress::BROADCAST, mac(1), 60, n);
        switch.input(a, &sent);
        // c drains after every frame; b never does.
        assert_eq!(drained(&mut switch, c), vec![sent]);
    }
    assert_eq!(queued(&switch, b), 8);
    let (b_counts, c_counts) = (counters(&switch, b), counters(&switch, c));
    assert_eq!((b_counts.tx_packets, b_counts.drops_full), (0, 92));
    assert_eq!((c_counts.tx_packets, c_counts.drops_full), (100, 0));
    // What b kept are the oldest frames, in order.
    let kept = drained(&mut switch, b);
    assert_eq!(
        kept.iter().map(|f| f[59]).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert_eq!(counters(&switch, b).tx_packets, 8);
}

#[test]
fn a_full_queue_is_reported_in_the_outcome() {
    let limits = Limits {
        queue_frames: 1,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, c]) = three_ports(limits);
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    drained(&mut switch, a);
    drained(&mut switch, c);
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Forwarded {
            to: b,
            queued: true
        }
    );
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Forwarded {
            to: b,
            queued: false
        }
    );
    assert_eq!(
        switch.input(c, &frame(MacAddress::BROADCAST, mac(3))),
        Outcome::Flooded { queued: 1, full: 1 }
    );
    assert_eq!(counters(&switch, b).drops_full, 2);
}

#[test]
fn queues_are_bounded_in_bytes_too() {
    let limits = Limits {
        queue_bytes: 3000,
        ..Limits::DEFAULT
    };
    let (mut switch, [a, b, _]) = three_ports(limits);
    for _ in 0..3 {
        switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 1000, 0));
    }
    // Full to the byte: even a smallest frame no longer fits.
    switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 14, 0));
    let stats = switch.port(b).unwrap();
    assert_eq!((stats.queued_frames, stats.queued_bytes), (3, 3000));
    assert_eq!(stats.counters.drops_full, 1);
    drained(&mut switch, b);
    switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 1518, 0));
    switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 1482, 0));
    switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 1, 0));
    let stats = switch.port(b).unwrap();
    assert_eq!((stats.queued_frames, stats.queued_bytes), (2, 3000));
}

#[test]
fn frames_not_taken_stay_queued_in_order() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    let sent: Vec<Vec<u8>> = (0..5)
        .map(|n| frame_of(MacAddress::BROADCAST, mac(1), 60 + n, n as u8))
        .collect();
    for frame in &sent {
        switch.input(a, frame);
    }
    // Room for two only (say, the guest posted two receive buffers).
    let first_two: Vec<Vec<u8>> = switch
        .drain(b, |frames| {
            assert_eq!(frames.len(), 5);
            frames.take(2).map(<[u8]>::to_vec).collect()
        })
        .unwrap();
    assert_eq!(first_two, sent[..2]);
    assert_eq!(queued(&switch, b), 3);
    assert_eq!(switch.ports_with_frames().collect::<Vec<_>>(), [b, c]);
    assert_eq!(drained(&mut switch, b), sent[2..]);
    let counts = counters(&switch, b);
    assert_eq!(counts.tx_packets, 5);
    assert_eq!(counts.tx_bytes, (60..65).sum::<u64>());
    assert_eq!(switch.port(b).unwrap().queued_bytes, 0);
}

#[test]
fn draining_an_absent_port_says_so() {
    let (mut switch, [a, ..]) = three_ports(Limits::DEFAULT);
    switch.remove_port(a);
    assert_eq!(switch.drain(a, |frames| frames.count()), None);
}

// ---------------------------------------------------------------------------
// Removal.
// ---------------------------------------------------------------------------

#[test]
fn removing_a_port_forgets_its_addresses_and_drops_its_queue() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    switch.input(b, &frame(MacAddress::BROADCAST, mac(2)));
    switch.input(b, &frame(MacAddress::BROADCAST, mac(12)));
    switch.input(c, &frame(MacAddress::BROADCAST, mac(3)));
    switch.input(a, &frame(mac(2), mac(1)));

    let last = switch.remove_port(b).expect("b was on the switch");
    assert_eq!(last.rx_packets, 2);
    assert_eq!(last.drops_removed, 2, "c's broadcast and a's unicast");
    assert_eq!(switch.lookup(mac(2)), None);
    assert_eq!(switch.lookup(mac(12)), None);
    assert_eq!(switch.lookup(mac(3)), Some(c));
    assert_eq!(switch.counters().table.forgotten, 2);
    assert_eq!(switch.counters().ports, 2);

    // b's addresses are unknown again: frames for them flood.
    assert_eq!(
        switch.input(a, &frame(mac(2), mac(1))),
        Outcome::Flooded { queued: 1, full: 0 }
    );
    // b's identifier names nothing now, and is never given out again.
    assert_eq!(
        switch.input(b, &frame(MacAddress::BROADCAST, mac(2))),
        Outcome::Dropped(InputDrop::UnknownPort)
    );
    assert_eq!(switch.counters().unknown_port, 1);
    assert_eq!(switch.remove_port(b), None);
    assert!(switch.port(b).is_none());
    let d = switch.add_port(PortKind::Guest, "d");
    assert!(d != b && d > c);
}

// ---------------------------------------------------------------------------
// Sizes.
// ---------------------------------------------------------------------------

#[test]
fn runts_and_oversize_frames_are_dropped_and_counted() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    assert_eq!(switch.input(a, &[]), Outcome::Dropped(InputDrop::Runt));
    assert_eq!(
        switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 13, 0)),
        Outcome::Dropped(InputDrop::Runt)
    );
    assert_eq!(
        switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), 1519, 0)),
        Outcome::Dropped(InputDrop::Oversize)
    );
    // Nothing was learned from them, nothing sent.
    assert!(switch.table().is_empty());
    assert!(switch.ports_with_frames().next().is_none());
    // The bounds themselves are carried.
    for len in [14, 1518] {
        assert_eq!(
            switch.input(a, &frame_of(MacAddress::BROADCAST, mac(1), len, 0)),
            Outcome::Flooded { queued: 2, full: 0 }
        );
    }
    let counts = counters(&switch, a);
    assert_eq!(
        (
            counts.drops_runt,
            counts.drops_oversize,
            counts.rx_packets,
            counts.rx_bytes
        ),
        (2, 1, 2, 14 + 1518)
    );
    assert_eq!(drained(&mut switch, b).len(), 2);
    assert_eq!(drained(&mut switch, c).len(), 2);
}

// ---------------------------------------------------------------------------
// Counters.
// ---------------------------------------------------------------------------

#[test]
fn counters_are_exact_after_a_mixed_exchange() {
    let limits = Limits {
        queue_frames: 2,
        ..Limits::DEFAULT
    };
    let mut switch = Switch::new(limits);
    let guest = switch.add_port(PortKind::Guest, "web");
    let uplink = switch.add_port(PortKind::Uplink, "uplink");
    let host = switch.add_port(PortKind::HostInterface, "host");

    switch.input(guest, &frame_of(MacAddress::BROADCAST, mac(1), 42, 0)); // ARP: flood
    switch.input(uplink, &frame_of(mac(1), mac(100), 60, 0)); // reply: to guest
    switch.input(guest, &frame_of(mac(100), mac(1), 1000, 0)); // to uplink
    switch.input(guest, &frame_of(mac(100), mac(1), 1000, 0)); // uplink full
    switch.input(guest, &[0; 10]); // runt
    drained(&mut switch, guest);
    drained(&mut switch, host);

    let web = counters(&switch, guest);
    assert_eq!(
        web,
        PortCounters {
            rx_packets: 3,
            rx_bytes: 2042,
            tx_packets: 1,
            tx_bytes: 60,
            forwarded: 2,
            floods: 1,
            drops_runt: 1,
            ..PortCounters::default()
        }
    );
    let up = switch.port(uplink).unwrap();
    assert_eq!(
        up.counters,
        PortCounters {
            rx_packets: 1,
            rx_bytes: 60,
            forwarded: 1,
            drops_full: 1,
            ..PortCounters::default()
        }
    );
    assert_eq!((up.queued_frames, up.queued_bytes), (2, 1042));
    let host_counts = counters(&switch, host);
    assert_eq!((host_counts.tx_packets, host_counts.tx_bytes), (1, 42));
    assert_eq!(
        switch.counters(),
        SwitchCounters {
            ports: 3,
            entries: 2,
            table: table::TableCounters {
                learned: 2,
                ..Default::default()
            },
            unknown_port: 0,
        }
    );
}

#[test]
fn the_counters_page_prints_one_line_per_port_and_one_for_the_switch() {
    let mut switch = Switch::default();
    let web = switch.add_port(PortKind::Guest, "web");
    let uplink = switch.add_port(PortKind::Uplink, "uplink");
    switch.input(web, &frame_of(MacAddress::BROADCAST, mac(1), 60, 0));
    switch.input(web, &[0; 3]);
    let lines: Vec<_> = switch.ports().map(|port| port.to_string()).collect();
    assert_eq!(
        lines,
        [
            "port web kind=guest rx_packets=1 rx_bytes=60 tx_packets=0 tx_bytes=0 \
             forwarded=0 floods=1 filtered=0 drops_full=0 drops_runt=1 drops_oversize=0 \
             drops_flood_rate=0 queued_frames=0 queued_bytes=0",
            "port uplink kind=uplink rx_packets=0 rx_bytes=0 tx_packets=0 tx_bytes=0 \
             forwarded=0 floods=0 filtered=0 drops_full=0 drops_runt=0 drops_oversize=0 \
             drops_flood_rate=0 queued_frames=1 queued_bytes=60",
        ]
    );
    assert_eq!(
        switch.counters().to_string(),
        "switch ports=2 entries=1 learned=1 moves=0 evictions=0 aged=0 forgotten=0 unknown_port=0"
    );
    assert_eq!(format!("{}", PortKind::HostInterface), "host");
    assert_eq!(uplink.to_string(), "1");
}

// ---------------------------------------------------------------------------
// The kernel's use.
// ---------------------------------------------------------------------------

/// How the kernel delivers a guest's frames: the drain's iterator is what
/// the virtio-net device takes, so the frames go from the switch's queue
/// into the guest's receive buffers without another copy, under one
/// interrupt. (Compiled, not run: the device needs a guest's memory.)
#[allow(dead_code)]
fn deliver_to_guest<M, S>(
    switch: &mut Switch,
    port: PortId,
    device: &mut crate::virtio::Device<crate::virtio::net::Net<S>>,
    mem: &mut M,
) -> Option<Result<crate::virtio::Interrupt, crate::virtio::DeviceError>>
where
    M: crate::guest::GuestRam,
    S: crate::virtio::net::FrameSink,
{
    switch.drain(port, |frames| device.receive_frames(mem, frames))
}

#[test]
fn buffers_are_reused_without_mixing_frames() {
    let (mut switch, [a, b, c]) = three_ports(Limits::DEFAULT);
    let long = frame_of(MacAddress::BROADCAST, mac(1), 1500, 0xaa);
    let short = frame_of(MacAddress::BROADCAST, mac(1), 20, 0xbb);
    switch.input(a, &long);
    drained(&mut switch, b);
    drained(&mut switch, c);
    // The long frame's buffers are spare now; a short frame in one of them
    // must carry nothing of the long one.
    switch.input(a, &short);
    assert_eq!(drained(&mut switch, b), vec![short.clone()]);
    assert_eq!(drained(&mut switch, c), vec![short]);
}
