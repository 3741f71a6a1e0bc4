//! `cargo xtask bench`: numbers, not pass/fail.
//!
//! Real hardware is out of reach from the machines this project is built
//! on, and QEMU's TCG has no cycle model, so every benchmark boot runs
//! twice:
//!
//! - **plain** TCG: the TSC is the emulator's wall time ("TCG cycles"),
//!   noisy but the only notion of time there is;
//! - **`-icount shift=0,align=off,sleep=off`**: the TSC advances exactly
//!   once per instruction retired, so the same code gives the same count
//!   every run ("instructions").
//!
//! The Rust std programs' costs come from the `bench-std` guest
//! (`images/std/apps/bench-std`), whose metrics are named `std_*`; the
//! network's from `net-client-std bench` sending to `net-server-std
//! bench` through the host's switch (metrics `net_*`, and the `network`
//! entry of [`crate::net_bench`]: throughput, request time, frames per
//! notify and per virtual interrupt).
//!
//! In each boot the host first measures the native analogues on itself
//! (`bench=on`: `bench native <name> ...` lines), then runs the benchmark
//! guests, which time their operations with `guest_rt::bench::measure`
//! (`[guest] bench <name> id=<id> ...`) inside a `bench_mark` pair whose
//! events (exits, CR3 loads, shadow faults, ...) the host prints
//! (`[guest] bench events id=<id> ...`). This module boots, reads those
//! lines, sets each guest figure beside its native analogue as a ratio,
//! prints a table and writes `target/bench/results.json`. The base boots
//! are made a third time (`-icount`, `bench=exits`) to learn the host's
//! share of each kind of exit: watching every exit costs each some 25
//! instructions, so no other figure comes from that boot. Last come three
//! plain boots of eight compute-bound guests on 1, 2 and 4 CPUs, and the
//! cost of a shoot-down between two vCPUs ([`crate::smp_bench`]).

use crate::artefacts::{self, Profile};
use crate::qemu::{self, AccelRequest, Machine};
use crate::session::{self, Options};
use crate::workspace::Workspace;
use crate::{Error, Result};
use crate::{net_bench, outside_bench, smp_bench};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// One benchmark boot: a label (empty for the base configuration) and the
/// kernel command line.
pub struct BenchBoot {
    /// Appended to the metric names of this boot, as `name[label]`.
    pub label: &'static str,
    /// The kernel command line.
    pub cmdline: &'static str,
    /// The network boot: its figures go to `network` ([`net_bench`]), and
    /// its host shares stay out of the per-exit costs (a notify that ends
    /// the sender's turn is charged the receiver's whole turn too).
    pub network: bool,
}

/// The boots `cargo xtask bench` makes (each twice: plain and icount).
/// One guest per boot: guests share the CPU, and another guest's
/// instructions would land inside a measured region. The variants rerun
/// the guest OS's benchmarks with the shadow root cache changed (the seed
/// evicted at random "because this is easy"; the seed's eager fill of
/// accessed entries "saved 10%").
pub const BOOTS: &[BenchBoot] = &[
    BenchBoot {
        label: "",
        cmdline: "bench=on guests=bench",
        network: false,
    },
    BenchBoot {
        label: "",
        cmdline: "bench=on guests=os/bench",
        network: false,
    },
    // The Rust std program's everyday operations (`images/std/apps/
    // bench-std`): Instant::now, a Mutex, thread switches, spawn+join, a
    // Condvar wake, println!, the 4-thread workload; metrics `std_*`.
    BenchBoot {
        label: "",
        cmdline: "bench=on guest_mem=32 guests=bench-std",
        network: false,
    },
    // Two std guests through the host's switch (`net-client-std bench`
    // to `net-server-std bench`): TCP throughput, small HTTP requests,
    // frames per notify and per virtual interrupt; metrics `net_*`.
    BenchBoot {
        label: "",
        cmdline: "bench=exits guest_mem=64 guests=net-server-std/bench,net-client-std/bench",
        network: true,
    },
    BenchBoot {
        label: "eager_fill=off",
        cmdline: "bench=on eager_fill=off guests=os/bench",
        network: false,
    },
    BenchBoot {
        label: "eviction=random",
        cmdline: "bench=on eviction=random guests=os/bench",
        network: false,
    },
    BenchBoot {
        label: "roots=2",
        cmdline: "bench=on roots=2 guests=os/bench",
        network: false,
    },
    BenchBoot {
        label: "roots=8",
        cmdline: "bench=on roots=8 guests=os/bench",
        network: false,
    },
    BenchBoot {
        label: "roots=16",
        cmdline: "bench=on roots=16 guests=os/bench",
        network: false,
    },
];

/// Which native measurement each guest metric is set beside: what the
/// host itself does in ring 0 on its own tables for the same job.
pub const NATIVE_ANALOGUE: &[(&str, &str)] = &[
    ("hypercall", "int_iretq"),
    ("syscall", "int_iretq_ring3"),
    ("ctxsw_hit", "cr3_write"),
    ("ctxsw_miss", "cr3_write"),
    ("pf_read", "page_fault"),
    ("pf_write_after_read", "page_fault"),
    ("cow_fault", "page_fault"),
    ("pte_update_single", "pte_write_invlpg"),
    ("pte_update_batched", "pte_write_invlpg"),
];

/// How long one benchmark boot may take.
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// One measured operation: iterations, total cycles, and the events the
/// host counted in the region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// How many times the operation ran.
    pub iterations: u64,
    /// TSC cycles for all of them.
    pub total_cycles: u64,
    /// Events counted by the host over all iterations.
    pub events: BTreeMap<String, u64>,
}

impl Sample {
    /// Cycles per operation.
    pub fn per_op(&self) -> f64 {
        self.total_cycles as f64 / self.iterations.max(1) as f64
    }
}

/// What one boot printed, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootResults {
    /// `bench native <name> ...`
    pub native: BTreeMap<String, Sample>,
    /// `[guest] bench <name> ...`, with their events.
    pub guest: BTreeMap<String, Sample>,
    /// `bench host <guest> <kind> exits=<n> host_cycles=<c> ...`: the
    /// host's own share of each kind of exit (`hypercall:Nop`,
    /// `page_fault`, ...), summed over the guests.
    pub host: BTreeMap<String, Sample>,
}

/// Reads the `bench` lines of a boot's serial output.
pub fn parse(serial: &str) -> BootResults {
    let mut results = BootResults::default();
    let mut events: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in serial.lines().map(|l| l.trim_end_matches('\r')) {
        // Guest lines carry the host's `[name] ` prefix.
        let line = match line.strip_prefix('[') {
            Some(rest) => rest.split_once("] ").map_or(line, |(_, text)| text),
            None => line,
        };
        let Some(rest) = line.strip_prefix("bench ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(first) = words.next() else { continue };
        let fields = key_values(words.clone());
        match first {
            "native" => {
                if let Some(name) = words.next() {
                    results
                        .native
                        .insert(name.to_string(), sample(&key_values(words)));
                }
            }
            "host" => {
                let mut words = words;
                if let (Some(_guest), Some(kind)) = (words.next(), words.next()) {
                    let fields = key_values(words);
                    let share = results.host.entry(kind.to_string()).or_default();
                    share.iterations += fields.get("exits").copied().unwrap_or(0);
                    share.total_cycles += fields.get("host_cycles").copied().unwrap_or(0);
                }
            }
            // The network's wall-time figures: `net_bench` reads them.
            "net" => {}
            "events" => {
                if let Some(id) = fields.get("id") {
                    let mut counts = fields.clone();
                    counts.remove("id");
                    events.insert(id.to_string(), counts);
                }
            }
            name => {
                let mut measured = sample(&fields);
                if let Some(id) = fields.get("id") {
                    measured.events = events.remove(&id.to_string()).unwrap_or_default();
                }
                results.guest.insert(name.to_string(), measured);
            }
        }
    }
    results
}

fn key_values<'a>(words: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    words
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn sample(fields: &BTreeMap<String, u64>) -> Sample {
    Sample {
        iterations: fields.get("iterations").copied().unwrap_or(0),
        total_cycles: fields.get("total_cycles").copied().unwrap_or(0),
        events: BTreeMap::new(),
    }
}

/// `cargo xtask bench`: boot, measure, print, write the JSON.
pub fn run(profile: Profile, accel: AccelRequest) -> Result<u8> {
    let workspace = Workspace::current();
    let built = artefacts::build_all(&workspace, profile)?;
    let accel = qemu::choose_accel(accel);
    eprintln!("xtask: {accel}");
    let mut metrics = Map::new();
    let mut exit_path = Value::Null;
    let mut host_costs = BTreeMap::new();
    let mut network = Value::Null;
    for boot in BOOTS {
        let mut machine = Machine::new(&built.kernel);
        machine.initrd = Some(built.guests.clone());
        machine.accel = accel.accel;
        machine.cmdline = boot.cmdline.to_string();
        eprintln!("xtask: bench boot `{}` (plain, then -icount)", boot.cmdline);
        let (plain, plain_net) = boot_and_parse(&machine)?;
        machine.count_instructions = true;
        let (counted, counted_net) = boot_and_parse(&machine)?;
        if boot.network {
            network = net_bench::summary(&plain_net, &counted_net);
        }
        for (name, value) in combine(&plain, &counted) {
            let key = if boot.label.is_empty() {
                name
            } else {
                format!("{name}[{}]", boot.label)
            };
            metrics.insert(key, value);
        }
        if boot.label.is_empty() && !boot.network {
            // The host's share of each exit comes from one more boot, which
            // watches every exit (`bench=exits`): that costs each exit some
            // 25 instructions, so the figures above come from boots that
            // do not watch.
            machine.cmdline = boot.cmdline.replacen("bench=on", "bench=exits", 1);
            eprintln!("xtask: bench boot `{}` (-icount)", machine.cmdline);
            let (watched, _) = boot_and_parse(&machine)?;
            let split = split_exit_path(&counted, &watched);
            if !split.is_null() {
                exit_path = split;
            }
            for (kind, share) in &watched.host {
                let total: &mut Sample = host_costs.entry(kind.clone()).or_default();
                total.iterations += share.iterations;
                total.total_cycles += share.total_cycles;
            }
        }
    }
    let mut outside = Map::new();
    for model in outside_bench::MODELS {
        eprintln!(
            "xtask: bench boot: outside TCP throughput, uplink {} (plain)",
            model.name()
        );
        let runs = outside_bench::measure(&built.kernel, &built.guests, accel.accel, model);
        if let Err(e) = &runs {
            eprintln!("xtask: {e}");
        }
        let (name, value) = outside_bench::entry(model, &runs);
        outside.insert(name, value);
    }
    let mut base = Machine::new(&built.kernel);
    base.initrd = Some(built.guests.clone());
    base.accel = accel.accel;
    let smp = smp_bench::summary(&smp_bench::measure(&base)?);
    let shootdown = smp_bench::measure_shootdown(&base);
    print_table(&metrics, &exit_path);
    print_host_costs(&host_costs);
    if !network.is_null() {
        net_bench::print(&network);
    }
    outside_bench::print(&outside);
    smp_bench::print(&smp);
    smp_bench::print_shootdown(&shootdown);
    let host_cost: Map<String, Value> = host_costs
        .iter()
        .map(|(kind, s)| {
            (
                kind.clone(),
                json!({"exits": s.iterations, "instructions_per_exit": round2(s.per_op())}),
            )
        })
        .collect();
    let results = json!({
        "about": "cargo xtask bench: per-operation figures; instructions from a QEMU -icount shift=0 boot, tcg_cycles from a plain TCG boot (emulator wall time), events counted by the host; native_* measured by the host on itself in the same boot",
        "metrics": metrics,
        "exit_path": exit_path,
        "host_cost_per_exit": host_cost,
        "network": network,
        "network_outside": outside,
        "smp": smp,
        "shootdown": shootdown,
    });
    let dir = workspace.target_dir.join("bench");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| Error::new(e.to_string()))?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(0)
}

/// Boots, and reads the `bench` lines and the network's.
fn boot_and_parse(machine: &Machine) -> Result<(BootResults, net_bench::NetResults)> {
    let record = session::run(machine.command()?, &Options::captured(TIME_LIMIT))?;
    if !record.outcome.is_success() {
        return Err(Error::new(format!(
            "benchmark boot `{}` did not succeed:\n{}",
            machine.cmdline,
            record.transcript()
        )));
    }
    Ok((parse(&record.serial), net_bench::parse(&record.serial)))
}

/// Sets each guest metric beside its native analogue, per operation.
fn combine(plain: &BootResults, counted: &BootResults) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, exact) in &counted.guest {
        let wall = plain.guest.get(name);
        let native = NATIVE_ANALOGUE
            .iter()
            .find(|(m, _)| m == name)
            .map(|(_, n)| *n);
        let native_exact = native
            .and_then(|n| counted.native.get(n))
            .map(Sample::per_op);
        let native_wall = native.and_then(|n| plain.native.get(n)).map(Sample::per_op);
        let instructions = exact.per_op();
        let tcg_cycles = wall.map(Sample::per_op);
        let events: Map<String, Value> = exact
            .events
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!(round2(*v as f64 / exact.iterations.max(1) as f64)),
                )
            })
            .collect();
        out.push((
            name.clone(),
            json!({
                "iterations": exact.iterations,
                "instructions": round2(instructions),
                "tcg_cycles": tcg_cycles.map(round2),
                "events": events,
                "native": native,
                "native_instructions": native_exact.map(round2),
                "native_tcg_cycles": native_wall.map(round2),
                "ratio_instructions": native_exact.map(|n| round2(instructions / n)),
                "ratio_tcg_cycles": tcg_cycles.zip(native_wall).map(|(g, n)| round2(g / n)),
            }),
        ));
    }
    out
}

/// The hypercall round trip split into the host's part (from the
/// switcher's return to its next call) and the rest (the guest's `int`,
/// the CPU's trap delivery, the switcher both ways, the `iretq`).
fn split_exit_path(counted: &BootResults, watched: &BootResults) -> Value {
    let (Some(trip), Some(watched_trip), Some(host)) = (
        counted.guest.get("hypercall"),
        watched.guest.get("hypercall"),
        watched.host.get("hypercall:Nop"),
    ) else {
        return Value::Null;
    };
    let round_trip = trip.per_op();
    let watched_round_trip = watched_trip.per_op();
    let loop_cost = watched.guest.get("loop").map_or(0.0, Sample::per_op);
    let host_part = host.per_op();
    json!({
        "round_trip_instructions": round2(round_trip),
        "watched_round_trip_instructions": round2(watched_round_trip),
        "watch_instructions": round2(watched_round_trip - round_trip),
        "loop_instructions": round2(loop_cost),
        "host_instructions": round2(host_part),
        "switcher_and_cpu_instructions": round2(watched_round_trip - loop_cost - host_part),
    })
}

fn print_table(metrics: &Map<String, Value>, exit_path: &Value) {
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>12} {:>9} {:>9}  events per op",
        "metric", "instructions", "tcg cycles", "native", "native ins.", "ratio ins", "ratio tcg"
    );
    for (name, m) in metrics {
        let number = |key: &str| {
            m.get(key)
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |v| format!("{v:.1}"))
        };
        let events: Vec<String> = m
            .get("events")
            .and_then(Value::as_object)
            .map(|e| {
                e.iter()
                    .filter(|(_, v)| v.as_f64().unwrap_or(0.0) != 0.0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<28} {:>12} {:>12} {:>10} {:>12} {:>9} {:>9}  {}",
            name,
            number("instructions"),
            number("tcg_cycles"),
            m.get("native").and_then(Value::as_str).unwrap_or("-"),
            number("native_instructions"),
            number("ratio_instructions"),
            number("ratio_tcg_cycles"),
            events.join(" ")
        );
    }
    if let Some(trip) = exit_path
        .get("round_trip_instructions")
        .and_then(Value::as_f64)
    {
        let part = |key: &str| exit_path.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        println!(
            "hypercall round trip: {trip:.0} instructions; watched ({:.0}, of which {:.0} the watch's own): {:.0} in the host's run loop + {:.0} switcher and CPU (int, stubs, world switch both ways, iretq) + {:.0} guest loop",
            part("watched_round_trip_instructions"),
            part("watch_instructions"),
            part("host_instructions"),
            part("switcher_and_cpu_instructions"),
            part("loop_instructions"),
        );
    }
}

/// Where the host's instructions go, per kind of exit (base boot, -icount).
fn print_host_costs(costs: &BTreeMap<String, Sample>) {
    if costs.is_empty() {
        return;
    }
    println!("host instructions per exit, by kind (from the switcher's return to its next call):");
    for (kind, sample) in costs {
        println!(
            "  {kind:<24} {:>10.0} per exit  ({} exits)",
            sample.per_op(),
            sample.iterations
        );
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIAL: &str = "\
rguest 0.1.0 booted via PVH; command line: \"bench=on guests=bench\"
bench native int_iretq iterations=10000 total_cycles=40006 per_op=4
[bench] bench events id=1 exits=10000 hypercalls=10000 cr3_loads=20000 page_faults=0
[bench] bench hypercall id=1 iterations=10000 total_cycles=3610007 per_op=361.00
[bench] bench events id=2 exits=0 hypercalls=0 cr3_loads=0
[bench] bench loop id=2 iterations=10000 total_cycles=20007 per_op=2.00
bench host bench hypercall:Nop exits=10100 host_cycles=1757400 per_exit=174
bench host bench page_fault exits=8 host_cycles=16000 per_exit=2000
guest bench exited code=0
";

    #[test]
    fn parses_native_guest_event_and_host_lines() {
        let r = parse(SERIAL);
        assert_eq!(r.native["int_iretq"].total_cycles, 40006);
        let trip = &r.guest["hypercall"];
        assert_eq!((trip.iterations, trip.total_cycles), (10000, 3610007));
        assert_eq!(trip.events["exits"], 10000);
        assert_eq!(trip.events["cr3_loads"], 20000);
        assert!(!trip.events.contains_key("id"));
        assert_eq!(r.guest["loop"].events["exits"], 0);
        assert_eq!(r.host["hypercall:Nop"].iterations, 10100);
        assert_eq!(r.host["page_fault"].per_op(), 2000.0);
    }

    #[test]
    fn combines_into_ratios_and_per_op_events() {
        let r = parse(SERIAL);
        let combined: BTreeMap<_, _> = combine(&r, &r).into_iter().collect();
        let trip = &combined["hypercall"];
        assert_eq!(trip["instructions"], json!(361.0));
        assert_eq!(trip["native"], json!("int_iretq"));
        assert_eq!(trip["ratio_instructions"], json!(90.24));
        assert_eq!(trip["events"]["cr3_loads"], json!(2.0));
        let mut unwatched = r.clone();
        unwatched.guest.get_mut("hypercall").unwrap().total_cycles = 3_360_007;
        let split = split_exit_path(&unwatched, &r);
        assert_eq!(split["host_instructions"], json!(174.0));
        assert_eq!(split["round_trip_instructions"], json!(336.0));
        assert_eq!(split["watch_instructions"], json!(25.0));
        assert_eq!(split["switcher_and_cpu_instructions"], json!(185.0));
    }

    #[test]
    fn ignores_other_lines() {
        let r = parse("hello\n[g] not a bench line\nbench\n");
        assert_eq!(r, BootResults::default());
    }
}
