//! The network figures of `cargo xtask bench`, from its network boot:
//! `net-client-std bench` sends to `net-server-std bench` through the
//! host's switch (three transfers of 20 MiB, after 100 small HTTP
//! requests; see those programs).
//!
//! Wall-time figures come from the plain TCG boot, where the guest's
//! `Instant` is the emulator's wall time: the TCP throughput (the median
//! of the three transfers, each timed from its first write to the
//! server's answer) and the median time of one HTTP request (a connection
//! of its own each). The counts come from the `-icount` boot and cover
//! each guest's whole life (dominated by the transfers): the frames it
//! sent into the switch and received from it (its port's counts, `guest
//! <name> network: ...`), its notify hypercalls (`bench host <name>
//! hypercall:VirtioNotify exits=...`) and its virtual interrupts (`guest
//! <name> counters: ... virtual_irqs=...`). The instructions per segment
//! and per request are ordinary metrics (`net_tcp_segment`,
//! `net_http_get`), read by [`crate::bench`].
//!
//! The `-icount` boot also splits the instructions per packet (a frame a
//! guest put into the switch) four ways, over both guests' whole lives:
//! the guests' own code (`bench net guest_code ... of <name>`: from each
//! entry to its exit, the world switch included), the switch (`bench net
//! host_network ... switch_cycles=`: frames in, learning, queueing,
//! draining), the virtio-net back end (its transmit half is the host's
//! share of the notify exits, `bench host <name> hypercall:VirtioNotify`,
//! which copy the batch's frames out; its receive half `delivery_cycles=`,
//! frames copied into posted buffers), and the host's share of the other
//! exits (halts, interrupts taken, faults).

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// One guest's life on the network, as the host counted it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GuestTraffic {
    /// Frames the guest put into the switch (its port's `rx_packets`).
    pub frames_sent: u64,
    /// Frames the switch handed the guest (its port's `tx_packets`).
    pub frames_received: u64,
    /// Its `VirtioNotify` hypercalls.
    pub notifies: u64,
    /// The host's instructions in them (to the guest's next entry, or the
    /// end of its turn).
    pub notify_host_cycles: u64,
    /// The host's instructions in its other exits.
    pub other_host_cycles: u64,
    /// Instructions in the guest: from each entry to its exit.
    pub guest_cycles: u64,
    /// Virtual interrupts delivered to it.
    pub virtual_irqs: u64,
}

/// What the guests' frames cost the host between turns
/// (`bench net host_network ...`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostNetwork {
    /// Frames the guests put into the switch.
    pub frames_in: u64,
    /// Instructions in the switch.
    pub switch_cycles: u64,
    /// Instructions delivering frames into the guests' buffers.
    pub delivery_cycles: u64,
}

/// What one network boot printed, parsed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NetResults {
    /// Each transfer: bytes, and nanoseconds by the guest's `Instant`.
    pub transfers: Vec<(u64, u64)>,
    /// The median time of one small HTTP request, in nanoseconds.
    pub http_get_median_ns: Option<u64>,
    /// Per guest, by name.
    pub guests: BTreeMap<String, GuestTraffic>,
    /// The host's costs between turns, if it printed them.
    pub host: Option<HostNetwork>,
}

/// Reads the network lines of a boot's serial output.
pub fn parse(serial: &str) -> NetResults {
    let mut results = NetResults::default();
    for line in serial.lines().map(|l| l.trim_end_matches('\r')) {
        let text = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] "))
            .map_or(line, |(_, text)| text);
        if let Some(rest) = line.strip_prefix("bench net guest_code ") {
            read_guest_code(&mut results, rest);
        } else if let Some(rest) = text.strip_prefix("bench net ") {
            read_guest_figure(&mut results, rest);
        } else if let Some((guest, rest)) = guest_line(line, " network: ") {
            let fields = numbers(rest);
            let traffic = results.guests.entry(guest).or_default();
            traffic.frames_sent = fields.get("rx_packets").copied().unwrap_or(0);
            traffic.frames_received = fields.get("tx_packets").copied().unwrap_or(0);
        } else if let Some((guest, rest)) = guest_line(line, " counters: ") {
            let irqs = numbers(rest).get("virtual_irqs").copied().unwrap_or(0);
            results.guests.entry(guest).or_default().virtual_irqs = irqs;
        } else if let Some(rest) = line.strip_prefix("bench host ") {
            read_host_share(&mut results, rest);
        }
    }
    results
}

/// `<guest> <kind> exits=<n> host_cycles=<c> ...` (a name may hold
/// spaces; the kind is the word before the numbers).
fn read_host_share(results: &mut NetResults, rest: &str) {
    let Some((who, fields)) = rest.split_once(" exits=") else {
        return;
    };
    let Some((guest, kind)) = who.rsplit_once(' ') else {
        return;
    };
    let fields = numbers(&format!("exits={fields}"));
    let traffic = results.guests.entry(guest.to_string()).or_default();
    let cycles = fields.get("host_cycles").copied().unwrap_or(0);
    if kind == "hypercall:VirtioNotify" {
        traffic.notifies = fields.get("exits").copied().unwrap_or(0);
        traffic.notify_host_cycles = cycles;
    } else {
        traffic.other_host_cycles += cycles;
    }
}

/// `tcp_transfer ...` or `http_get ...`, as a guest printed it.
fn read_guest_figure(results: &mut NetResults, rest: &str) {
    let (name, fields) = rest.split_once(' ').unwrap_or((rest, ""));
    let fields = numbers(fields);
    match name {
        "tcp_transfer" => {
            if let (Some(&bytes), Some(&ns)) = (fields.get("bytes"), fields.get("elapsed_ns")) {
                results.transfers.push((bytes, ns));
            }
        }
        "http_get" => results.http_get_median_ns = fields.get("median_ns").copied(),
        "host_network" => {
            results.host = Some(HostNetwork {
                frames_in: fields.get("frames_in").copied().unwrap_or(0),
                switch_cycles: fields.get("switch_cycles").copied().unwrap_or(0),
                delivery_cycles: fields.get("delivery_cycles").copied().unwrap_or(0),
            });
        }
        _ => {}
    }
}

/// `bench net guest_code cycles=<c> of <name>`: the guest's
/// own instructions.
fn read_guest_code(results: &mut NetResults, rest: &str) {
    if let Some((fields, guest)) = rest.split_once(" of ") {
        let cycles = numbers(fields).get("cycles").copied().unwrap_or(0);
        results
            .guests
            .entry(guest.to_string())
            .or_default()
            .guest_cycles = cycles;
    }
}

/// `guest <name><marker><rest>` (a name may hold spaces): the name and
/// the rest.
fn guest_line<'a>(line: &'a str, marker: &str) -> Option<(String, &'a str)> {
    let (name, rest) = line.strip_prefix("guest ")?.split_once(marker)?;
    Some((name.to_string(), rest))
}

fn numbers(text: &str) -> BTreeMap<String, u64> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Megabits per second of each transfer.
fn mbit_per_s(transfers: &[(u64, u64)]) -> Vec<f64> {
    transfers
        .iter()
        .map(|&(bytes, ns)| bytes as f64 * 8.0 * 1e3 / ns.max(1) as f64)
        .collect()
}

/// The median of `values` (the upper one of an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// The `network` entry of `results.json`: wall time from the plain boot,
/// counts from the `-icount` one.
pub fn summary(plain: &NetResults, counted: &NetResults) -> Value {
    let runs = mbit_per_s(&plain.transfers);
    let guests: Map<String, Value> = counted
        .guests
        .iter()
        .map(|(name, t)| (name.clone(), traffic_json(t)))
        .collect();
    json!({
        "about": "guest to guest through the host's switch: net-client-std bench to net-server-std bench; wall time (plain TCG boot, the emulator's wall time) and counts over each guest's whole life (-icount boot)",
        "tcp_throughput_mbit_s": median(&runs).map(round2),
        "tcp_throughput_runs_mbit_s": runs.iter().copied().map(round2).collect::<Vec<_>>(),
        "tcp_transfer_bytes": plain.transfers.first().map(|&(bytes, _)| bytes),
        "http_get_median_us": plain.http_get_median_ns.map(|ns| round2(ns as f64 / 1e3)),
        "guests": guests,
        "instructions": split(counted),
    })
}

/// The instructions per packet, four ways, and per notify (see the
/// module's docs); `null` without the host's counts.
fn split(counted: &NetResults) -> Value {
    let Some(host) = &counted.host else {
        return Value::Null;
    };
    let sum = |f: fn(&GuestTraffic) -> u64| counted.guests.values().map(f).sum::<u64>();
    let packets = sum(|t| t.frames_sent);
    let notifies = sum(|t| t.notifies);
    let notify_cycles = sum(|t| t.notify_host_cycles);
    let per_packet = |cycles: u64| ratio(cycles, packets);
    json!({
        "about": "per packet (a frame a guest put into the switch) and per notify, over both guests' whole lives, -icount boot: the guests' own code (each entry to its exit, the world switch included), the switch, the virtio-net back end (transmit: the host's share of the notify exits; receive: frames copied into posted buffers) and the host's share of the guests' other exits",
        "packets": packets,
        "notifies": notifies,
        "per_packet": {
            "guest": per_packet(sum(|t| t.guest_cycles)),
            "switch": per_packet(host.switch_cycles),
            "back_end_transmit": per_packet(notify_cycles),
            "back_end_receive": per_packet(host.delivery_cycles),
            "host_other_exits": per_packet(sum(|t| t.other_host_cycles)),
        },
        "per_notify": {
            "packets": ratio(packets, notifies),
            "back_end_transmit": ratio(notify_cycles, notifies),
        },
    })
}

fn traffic_json(t: &GuestTraffic) -> Value {
    let frames = t.frames_sent + t.frames_received;
    json!({
        "frames_sent": t.frames_sent,
        "frames_received": t.frames_received,
        "notifies": t.notifies,
        "virtual_irqs": t.virtual_irqs,
        "notifies_per_frame": ratio(t.notifies, frames),
        "frames_received_per_virtual_irq": ratio(t.frames_received, t.virtual_irqs),
    })
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| round2(a as f64 / b as f64))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Prints the summary under the table.
pub fn print(summary: &Value) {
    let number = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |x| format!("{x}"))
    };
    let runs: Vec<String> = summary["tcp_throughput_runs_mbit_s"]
        .as_array()
        .map(|runs| runs.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    println!(
        "network (guest to guest through the switch, TCG wall time): TCP {} Mbit/s (median of {}), small HTTP request {} us (median)",
        number(summary, "tcp_throughput_mbit_s"),
        runs.join(", "),
        number(summary, "http_get_median_us"),
    );
    let Some(guests) = summary["guests"].as_object() else {
        return;
    };
    for (name, t) in guests {
        println!(
            "  {name:<24} frames sent {} received {}, notifies {} ({} per frame), virtual irqs {} ({} frames received per irq)",
            t["frames_sent"],
            t["frames_received"],
            t["notifies"],
            number(t, "notifies_per_frame"),
            t["virtual_irqs"],
            number(t, "frames_received_per_virtual_irq"),
        );
    }
    let split = &summary["instructions"];
    if split.is_null() {
        return;
    }
    let per = &split["per_packet"];
    println!(
        "  instructions per packet ({} packets, -icount): guest {} + switch {} + back end {} (transmit, in the notifies) + {} (receive, into posted buffers) + host's other exits {}",
        split["packets"],
        number(per, "guest"),
        number(per, "switch"),
        number(per, "back_end_transmit"),
        number(per, "back_end_receive"),
        number(per, "host_other_exits"),
    );
    println!(
        "  per notify: {} packets, {} host instructions (the batch's frames copied out)",
        number(&split["per_notify"], "packets"),
        number(&split["per_notify"], "back_end_transmit"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "\
[net-client-std/bench] bench net http_get count=100 median_ns=1026875
[net-client-std/bench] bench net tcp_transfer run=1 bytes=20971520 elapsed_ns=1681875978
[net-client-std/bench] bench net tcp_transfer run=2 bytes=20971520 elapsed_ns=1627234194
[net-client-std/bench] bench net tcp_transfer run=3 bytes=20971520 elapsed_ns=1628830616
guest net-server-std/7000 3 network: port net-server-std kind=guest rx_packets=43718 rx_bytes=2380323 tx_packets=43822 tx_bytes=65286977
bench host net-server-std/7000 3 hypercall:VirtioNotify exits=87668 host_cycles=8903356748 per_exit=101557
bench host net-server-std/7000 3 hypercall:Halt exits=10 host_cycles=1000 per_exit=100
bench host net-server-std/7000 3 page_fault exits=2 host_cycles=500 per_exit=250
bench net guest_code cycles=4371400 of net-server-std/7000 3
guest net-server-std/7000 3 counters: exits=110765 hypercalls=110232 virtual_irqs=22331 cr3_loads=221530 cpu_ms=2398
bench net host_network frames_in=43718 switch_cycles=437180 deliveries=900 delivery_cycles=874360
";

    #[test]
    fn parses_transfers_requests_and_counts() {
        let r = parse(SERIAL);
        assert_eq!(r.transfers.len(), 3);
        assert_eq!(r.http_get_median_ns, Some(1026875));
        let server = &r.guests["net-server-std/7000 3"];
        assert_eq!(
            (
                server.frames_sent,
                server.frames_received,
                server.notifies,
                server.virtual_irqs
            ),
            (43718, 43822, 87668, 22331)
        );
    }

    #[test]
    fn summarises_the_median_and_per_frame_counts() {
        let r = parse(SERIAL);
        let s = summary(&r, &r);
        assert_eq!(s["tcp_throughput_mbit_s"], json!(103.0));
        assert_eq!(s["http_get_median_us"], json!(1026.88));
        let server = &s["guests"]["net-server-std/7000 3"];
        assert_eq!(server["notifies_per_frame"], json!(1.0));
        assert_eq!(server["frames_received_per_virtual_irq"], json!(1.96));
    }

    #[test]
    fn splits_the_instructions_per_packet() {
        let r = parse(SERIAL);
        let server = &r.guests["net-server-std/7000 3"];
        assert_eq!(
            (
                server.notify_host_cycles,
                server.other_host_cycles,
                server.guest_cycles
            ),
            (8903356748, 1500, 4371400)
        );
        let s = summary(&r, &r);
        let split = &s["instructions"];
        assert_eq!(split["packets"], json!(43718));
        assert_eq!(split["per_packet"]["guest"], json!(99.99));
        assert_eq!(split["per_packet"]["switch"], json!(10.0));
        assert_eq!(split["per_packet"]["back_end_receive"], json!(20.0));
        assert_eq!(split["per_notify"]["packets"], json!(0.5));
    }

    #[test]
    fn an_empty_boot_gives_no_figures() {
        let s = summary(&NetResults::default(), &NetResults::default());
        assert_eq!(s["tcp_throughput_mbit_s"], Value::Null);
        assert_eq!(s["instructions"], Value::Null);
    }
}
