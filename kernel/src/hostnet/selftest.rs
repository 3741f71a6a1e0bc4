//! `test=net`: the network's host half on its own, without guests.
//!
//! Finds the NIC, puts it and the host's interface on a switch, and runs
//! the loop the run loop runs between guests (NIC to switch, interface,
//! switch to NIC) until the HTTP requests stop: 3 s after the last answer,
//! or after [`FIRST_REQUEST_LIMIT_MS`] with none at all, which fails. A
//! machine without a NIC passes at once: it says so, and that is the
//! behaviour wanted. The QEMU test `tests/tests/hostnet.rs` boots this
//! with a NIC on QEMU's user network and a forwarded port, and fetches
//! the pages.

use super::{HOST_MAC, HostNet, PortLine, Snapshot, memory_line, print_stats, uplink_line};
use crate::boot::Region;
use crate::nic::Uplink;
use crate::{apic, power};
use alloc::vec::Vec;
use host::config::Config;
use host::net::{Limits, PortKind, Switch};

/// How long the test waits for its first request: a DHCP exchange and a
/// client's connection retries under a slow emulator fit many times.
const FIRST_REQUEST_LIMIT_MS: u64 = 60_000;
/// Quiet after the last answer that ends the test.
const QUIET_MS: u64 = 3_000;
/// The switch's tick, as in the run loop.
const SWITCH_TICK_MS: u64 = 100;

/// Runs the test and ends the machine with its verdict.
pub fn run(config: &Config<'_>, regions: &[Region]) -> ! {
    println!("selftest: net");
    let Some(mut uplink) = Uplink::probe(regions) else {
        println!("net: no uplink, nothing to serve: ok");
        power::exit(power::SUCCESS);
    };
    let mut switch = Switch::new(Limits::DEFAULT);
    let uplink_port = switch.add_port(PortKind::Uplink, "uplink");
    let host_port = switch.add_port(PortKind::HostInterface, "host");
    let start = apic::uptime_ms();
    let Some(mut hostnet) = HostNet::new(config, HOST_MAC, start) else {
        println!("net: no host interface, nothing to serve: ok");
        power::exit(power::SUCCESS);
    };
    let mut next_tick = start + SWITCH_TICK_MS;
    let mut next_stats = (config.stats_interval_ms > 0).then(|| start + config.stats_interval_ms);
    let mut answered = 0;
    let mut last_answer = start;
    loop {
        let now = apic::uptime_ms();
        if now >= next_tick {
            switch.tick();
            next_tick = now + SWITCH_TICK_MS;
        }
        uplink.receive(|frame| {
            switch.input(uplink_port, frame);
        });
        hostnet.poll(now, &mut switch, host_port, |switch| Snapshot {
            uptime_ms: now,
            memory: memory_line(),
            guests: Vec::new(),
            ports: switch.ports().map(PortLine::from).collect(),
            uplink: Some(uplink_line(&uplink)),
            host: Default::default(),
        });
        switch.drain(uplink_port, |frames| uplink.transmit_from(frames));
        if let Some(due) = next_stats.filter(|&due| now >= due) {
            print_stats(&snapshot_now(&switch, &uplink, &hostnet, now));
            next_stats = Some(due + config.stats_interval_ms);
        }
        if hostnet.http_requests() != answered {
            answered = hostnet.http_requests();
            last_answer = now;
        }
        let quiet = answered > 0 && !hostnet.serving() && now - last_answer >= QUIET_MS;
        if quiet {
            break;
        }
        if answered == 0 && now - start >= FIRST_REQUEST_LIMIT_MS {
            println!(
                "net: FAILED: no HTTP request in {} s",
                FIRST_REQUEST_LIMIT_MS / 1000
            );
            print_stats(&snapshot_now(&switch, &uplink, &hostnet, now));
            power::exit(power::FAILURE);
        }
        core::hint::spin_loop();
    }
    let now = apic::uptime_ms();
    print_stats(&snapshot_now(&switch, &uplink, &hostnet, now));
    println!(
        "net: answered {answered} HTTP requests; uplink {}: ok",
        uplink.counters()
    );
    power::exit(power::SUCCESS);
}

/// The counters of this test's machine, host line included.
fn snapshot_now(switch: &Switch, uplink: &Uplink, hostnet: &HostNet, now: u64) -> Snapshot {
    Snapshot {
        uptime_ms: now,
        memory: memory_line(),
        guests: Vec::new(),
        ports: switch.ports().map(PortLine::from).collect(),
        uplink: Some(uplink_line(uplink)),
        host: hostnet.host_line(),
    }
}
