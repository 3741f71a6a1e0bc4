//! Property tests: whatever ports come and go, whatever frames they send
//! and however (or whether) their queues are drained, the switch never
//! panics, never sends a frame back where it came from, stays within its
//! bounds, and accounts for every frame: each one offered to a port is
//! sent, dropped as full, still queued, or dropped with the port.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

/// Small bounds, so that random sequences reach them.
const LIMITS: Limits = Limits {
    table_capacity: 4,
    entry_lifetime: 3,
    queue_frames: 3,
    queue_bytes: 3000,
    floods_per_tick: 4,
};

const MAX_PORTS: usize = 6;

/// Where a frame records the port it entered on, to catch a hairpin.
const ORIGIN: core::ops::Range<usize> = 14..22;

#[derive(Clone, Debug)]
enum Op {
    /// The `port`-th live port sends a frame.
    Input {
        port: usize,
        destination: u8,
        source: u8,
        len: usize,
    },
    /// The `port`-th live port takes up to `take` frames.
    Drain {
        port: usize,
        take: usize,
    },
    Add,
    Remove {
        port: usize,
    },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        8 => 14usize..200,
        1 => 0usize..14,
        1 => 1400usize..1600,
    ];
    prop_oneof![
        8 => (0usize..8, 0u8..10, 0u8..10, len).prop_map(|(port, destination, source, len)| {
            Op::Input { port, destination, source, len }
        }),
        3 => (0usize..8, 0usize..5).prop_map(|(port, take)| Op::Drain { port, take }),
        1 => Just(Op::Add),
        1 => (0usize..8).prop_map(|port| Op::Remove { port }),
        1 => Just(Op::Tick),
    ]
}

/// Addresses from a small set, so that frames meet learned ones: six
/// stations, broadcast, a multicast group and zero.
fn address(n: u8) -> MacAddress {
    match n {
        0..=5 => MacAddress::new([0x02, 0, 0, 0, 0, n + 1]),
        6 => MacAddress::BROADCAST,
        7 => MacAddress::new([0x01, 0x00, 0x5e, 0, 0, 1]),
        _ => MacAddress::new([0; 6]),
    }
}

fn frame(destination: MacAddress, source: MacAddress, origin: PortId, len: usize) -> Vec<u8> {
    let mut frame = std::vec![0u8; len.max(ORIGIN.end)];
    frame[..6].copy_from_slice(&destination.octets());
    frame[6..12].copy_from_slice(&source.octets());
    frame[ORIGIN].copy_from_slice(&origin.0.to_le_bytes());
    frame.truncate(len);
    frame
}

/// What the test saw, kept beside the switch.
#[derive(Default)]
struct Model {
    live: Vec<PortId>,
    /// Frames the switch said it sent towards each port.
    offered: BTreeMap<PortId, u64>,
    /// Bytes the test took from each port.
    taken_bytes: BTreeMap<PortId, u64>,
}

impl Model {
    fn pick(&self, n: usize) -> Option<PortId> {
        (!self.live.is_empty()).then(|| self.live[n % self.live.len()])
    }

    fn record(&mut self, from: PortId, outcome: Outcome) -> Result<(), TestCaseError> {
        match outcome {
            Outcome::Forwarded { to, .. } => {
                prop_assert!(to != from, "a hairpin");
                prop_assert!(self.live.contains(&to));
                *self.offered.entry(to).or_default() += 1;
            }
            Outcome::Flooded { queued, full } => {
                prop_assert_eq!(queued + full, self.live.len() - 1);
                for port in self.live.iter().filter(|&&port| port != from) {
                    *self.offered.entry(*port).or_default() += 1;
                }
            }
            Outcome::Filtered | Outcome::Dropped(_) => {}
        }
        Ok(())
    }
}

fn apply(switch: &mut Switch, model: &mut Model, op: Op) -> Result<(), TestCaseError> {
    match op {
        Op::Input {
            port,
            destination,
            source,
            len,
        } => {
            let Some(from) = model.pick(port) else {
                return Ok(());
            };
            let sent = frame(address(destination), address(source), from, len);
            let outcome = switch.input(from, &sent);
            model.record(from, outcome)?;
        }
        Op::Drain { port, take } => {
            let Some(to) = model.pick(port) else {
                return Ok(());
            };
            let frames: Vec<Vec<u8>> = switch
                .drain(to, |frames| frames.take(take).map(<[u8]>::to_vec).collect())
                .expect("a live port");
            for frame in &frames {
                prop_assert!((14..=MAX_FRAME_BYTES).contains(&frame.len()));
                if frame.len() >= ORIGIN.end {
                    let origin = u64::from_le_bytes(frame[ORIGIN].try_into().unwrap());
                    prop_assert!(origin != to.0, "a frame went back to its port");
                }
                *model.taken_bytes.entry(to).or_default() += frame.len() as u64;
            }
        }
        Op::Add => {
            if model.live.len() < MAX_PORTS {
                let id = switch.add_port(PortKind::Guest, "g");
                model.live.push(id);
            }
        }
        Op::Remove { port } => {
            let Some(gone) = model.pick(port) else {
                return Ok(());
            };
            let last = switch.remove_port(gone).expect("a live port");
            model.live.retain(|&port| port != gone);
            let offered = model.offered.get(&gone).copied().unwrap_or(0);
            prop_assert_eq!(
                offered,
                last.tx_packets + last.drops_full + last.drops_removed
            );
            prop_assert!(switch.drain(gone, |_| ()).is_none());
        }
        Op::Tick => switch.tick(),
    }
    Ok(())
}

/// What must hold after every step.
fn check(switch: &Switch, model: &Model) -> Result<(), TestCaseError> {
    let counts = switch.counters();
    prop_assert_eq!(counts.ports, model.live.len());
    prop_assert!(counts.entries <= LIMITS.table_capacity);
    for (_, port) in switch.table().entries() {
        prop_assert!(model.live.contains(&port), "an address on a removed port");
    }
    for stats in switch.ports() {
        let c = stats.counters;
        prop_assert!(stats.queued_frames <= LIMITS.queue_frames);
        prop_assert!(stats.queued_bytes <= LIMITS.queue_bytes);
        prop_assert_eq!(
            c.rx_packets,
            c.forwarded + c.floods + c.filtered + c.drops_flood_rate
        );
        let offered = model.offered.get(&stats.id).copied().unwrap_or(0);
        prop_assert_eq!(
            offered,
            c.tx_packets + c.drops_full + stats.queued_frames as u64
        );
        let taken = model.taken_bytes.get(&stats.id).copied().unwrap_or(0);
        prop_assert_eq!(taken, c.tx_bytes);
        prop_assert_eq!(c.drops_removed, 0);
    }
    let with_frames: Vec<PortId> = switch.ports_with_frames().collect();
    let expected: Vec<PortId> = switch
        .ports()
        .filter(|stats| stats.queued_frames > 0)
        .map(|stats| stats.id)
        .collect();
    prop_assert_eq!(with_frames, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_traffic_keeps_the_switch_bounded_and_every_frame_accounted_for(
        initial_ports in 0usize..4,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let mut switch = Switch::new(LIMITS);
        let mut model = Model::default();
        for _ in 0..initial_ports {
            model.live.push(switch.add_port(PortKind::Guest, "g"));
        }
        for op in ops {
            apply(&mut switch, &mut model, op)?;
            check(&switch, &model)?;
        }
    }
}
