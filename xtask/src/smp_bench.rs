//! The SMP figures of `cargo xtask bench`: eight compute-bound guests
//! (`bench/compute`: a fixed chain of xorshift steps, no exit) on 1, 2 and
//! 4 CPUs, in plain TCG boots (QEMU runs each CPU on a thread of its own).
//!
//! The kernel prints, at the end of a run, how long the run took from the
//! first pick to the last guest's end (`run: 8 guest(s) on N CPU(s) in T
//! ms`), a line per CPU (`cpu K: T turns, G guests, ...`) and the
//! scheduler's counts (`scheduler: T turns, M migrations, S steals, ...`).
//! This module boots, reads those lines and reports the wall time, the
//! speed-up over one CPU, the turns and migrations, and how often a CPU
//! found the machine's one lock held at a turn's edge. Wall time on a
//! shared machine is noisy, and an emulator can run no more CPUs at once
//! than the machine it runs on has cores: on a 2-core machine, 4 CPUs
//! cannot beat 2. The figures are printed and stored, never asserted.
//!
//! Then the cost of a shoot-down ([`measure_shootdown`]): the `smp/bench`
//! guest on two vCPUs and two CPUs times a report of a changed kernel-half
//! page-table entry, first with vCPU 0 alone, then with vCPU 1 running
//! through that page, so that every report waits for vCPU 1 to leave the
//! guest once. Once plain, once under `-icount` (TSC cycles are then
//! instructions, of both CPUs, which the emulator runs in turns).

use crate::qemu::Machine;
use crate::session::{self, Options};
use crate::{Error, Result};
use serde_json::{Value, json};
use std::time::Duration;

/// The guest each boot runs eight of.
const GUEST: &str = "bench/compute";
/// How many of it.
const GUESTS: usize = 8;
/// The CPU counts compared.
const CPU_COUNTS: [u32; 3] = [1, 2, 4];
/// A boot's time limit: the run takes a few seconds on one CPU.
const TIME_LIMIT: Duration = Duration::from_secs(180);

/// What one boot's run said.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SmpRun {
    /// CPUs the machine had.
    pub cpus: u32,
    /// From the first pick to the last guest's end.
    pub wall_ms: u64,
    /// Turns each CPU ran, by CPU.
    pub turns_per_cpu: Vec<u64>,
    /// Turns on another CPU than the guest's last, as the scheduler counted.
    pub migrations: u64,
    /// Guests an idle CPU took from another's queue.
    pub steals: u64,
    /// Turn edges, over all CPUs, at which another CPU held the machine's
    /// one lock.
    pub lock_waits: u64,
}

/// Boots eight compute-bound guests on each CPU count; `machine` is the
/// benchmark's machine (kernel, guests, accelerator).
pub fn measure(machine: &Machine) -> Result<Vec<SmpRun>> {
    let guests = [GUEST; GUESTS].join(",");
    let mut runs = Vec::new();
    for cpus in CPU_COUNTS {
        let mut machine = machine.clone();
        machine.cpus = cpus;
        machine.count_instructions = false;
        machine.cmdline = format!("guests={guests}");
        eprintln!("xtask: bench boot `{}` on {cpus} CPU(s)", machine.cmdline);
        let record = session::run(machine.command()?, &Options::captured(TIME_LIMIT))?;
        if !record.outcome.is_success() {
            return Err(Error::new(format!(
                "SMP benchmark boot on {cpus} CPU(s) did not succeed:\n{}",
                record.transcript()
            )));
        }
        runs.push(parse(cpus, &record.serial).ok_or_else(|| {
            Error::new(format!(
                "SMP benchmark boot on {cpus} CPU(s): no `run:` and `scheduler:` lines:\n{}",
                record.transcript()
            ))
        })?);
    }
    Ok(runs)
}

/// Reads a run's `run:`, `cpu K:` and `scheduler:` lines.
pub fn parse(cpus: u32, serial: &str) -> Option<SmpRun> {
    let mut run = SmpRun {
        cpus,
        ..SmpRun::default()
    };
    let mut seen = (false, false);
    for line in serial.lines() {
        if let Some(rest) = line.strip_prefix("run: ") {
            run.wall_ms = number_before(rest, " ms")?;
            seen.0 = true;
        } else if let Some(rest) = line.strip_prefix("scheduler: ") {
            run.migrations = number_before(rest, " migrations")?;
            run.steals = number_before(rest, " steals")?;
            seen.1 = true;
        } else if let Some(rest) = line.strip_prefix("cpu ")
            && let Some((_, account)) = rest.split_once(": ")
            && account.contains(" turns,")
        {
            run.turns_per_cpu.push(number_before(account, " turns")?);
            run.lock_waits += number_before(account, " lock waits").unwrap_or(0);
        }
    }
    (seen == (true, true)).then_some(run)
}

/// The shoot-down guest and its command line.
const SHOOTDOWN_GUESTS: &str = "guests=smp/bench:0:vcpus=2";

/// One boot's `smp bench: reports=N alone_cycles_per_op=A
/// shootdown_cycles_per_op=S` (medians of TSC cycles per report).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShootdownRun {
    /// Reports timed in each phase.
    pub reports: u64,
    /// Per report, vCPU 0 alone.
    pub alone: u64,
    /// Per report, with vCPU 1 in the guest (each waits for it once).
    pub shootdown: u64,
}

/// Boots the shoot-down guest plain and under `-icount`; gives the JSON
/// entry (the boots that failed are named there, not fatal).
pub fn measure_shootdown(machine: &Machine) -> Value {
    let mut entry = serde_json::Map::new();
    entry.insert(
        "about".into(),
        json!("smp/bench on 2 vCPUs and 2 CPUs: median TSC cycles of one reported kernel-half entry change, vCPU 0 alone, then with vCPU 1 in the guest (each report then waits for it to leave once); under icount the cycles are instructions of both CPUs, which QEMU then runs in turns, so the wait measures its turn length"),
    );
    for (name, icount) in [("plain", false), ("icount", true)] {
        let mut machine = machine.clone();
        machine.cpus = 2;
        machine.count_instructions = icount;
        machine.cmdline = SHOOTDOWN_GUESTS.to_string();
        eprintln!("xtask: bench boot `{}` on 2 CPUs ({name})", machine.cmdline);
        let run = machine
            .command()
            .and_then(|command| session::run(command, &Options::captured(TIME_LIMIT)))
            .ok()
            .filter(|record| record.outcome.is_success())
            .and_then(|record| parse_shootdown(&record.serial));
        let value = match run {
            Some(r) => json!({
                "reports": r.reports,
                "alone_per_op": r.alone,
                "shootdown_per_op": r.shootdown,
                "ratio": round2(r.shootdown as f64 / r.alone.max(1) as f64),
            }),
            None => json!({"error": "the boot failed or printed no `smp bench:` line"}),
        };
        entry.insert(name.into(), value);
    }
    Value::Object(entry)
}

/// Reads the guest's `smp bench: reports=...` line.
pub fn parse_shootdown(serial: &str) -> Option<ShootdownRun> {
    let line = serial.lines().find_map(|l| {
        let at = l.find("smp bench: reports=")?;
        Some(&l[at..])
    })?;
    let field = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(ShootdownRun {
        reports: field("reports=")?,
        alone: field("alone_cycles_per_op=")?,
        shootdown: field("shootdown_cycles_per_op=")?,
    })
}

/// Prints the shoot-down figures.
pub fn print_shootdown(entry: &Value) {
    println!();
    println!("shoot-down: one reported kernel-half entry change, median per report");
    println!(
        "  (under -icount QEMU runs the CPUs in turns, so the wait there is its turn's length, not a cost)"
    );
    for name in ["icount", "plain"] {
        let run = &entry[name];
        match (
            run["alone_per_op"].as_u64(),
            run["shootdown_per_op"].as_u64(),
        ) {
            (Some(alone), Some(shot)) => println!(
                "  {name:>6}: {alone} alone, {shot} with the other vCPU in the guest (x{:.2}, +{} {})",
                run["ratio"].as_f64().unwrap_or(0.0),
                shot.saturating_sub(alone),
                if name == "icount" {
                    "instructions"
                } else {
                    "TCG cycles"
                },
            ),
            _ => println!(
                "  {name:>6}: {}",
                run["error"].as_str().unwrap_or("no figures")
            ),
        }
    }
}

/// The whole number right before `marker` in `text`.
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The runs as JSON: each with its speed-up over the one-CPU run.
pub fn summary(runs: &[SmpRun]) -> Value {
    let one = runs.iter().find(|r| r.cpus == 1).map(|r| r.wall_ms);
    let entries: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "cpus": r.cpus,
                "guests": GUESTS,
                "wall_ms": r.wall_ms,
                "speedup": one.filter(|_| r.wall_ms > 0).map(|o| round2(o as f64 / r.wall_ms as f64)),
                "turns_per_cpu": r.turns_per_cpu,
                "migrations": r.migrations,
                "steals": r.steals,
                "lock_waits": r.lock_waits,
            })
        })
        .collect();
    json!({
        "about": "eight bench/compute guests (no exits) per boot, plain TCG; wall time from the first pick to the last guest's end; the emulator runs at most as many CPUs at once as the machine has cores",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "runs": entries,
    })
}

/// Prints the runs as a table.
pub fn print(summary: &Value) {
    let cores = summary["machine_cores"].as_u64().unwrap_or(0);
    println!();
    println!("SMP: {GUESTS} compute-bound guests (plain TCG, this machine has {cores} cores)");
    println!("cpus   wall ms   speed-up   turns per CPU            migrations  steals  lock waits");
    for run in summary["runs"].as_array().into_iter().flatten() {
        let turns: Vec<String> = run["turns_per_cpu"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t.to_string())
            .collect();
        let number = |key: &str| run[key].as_u64().unwrap_or(0);
        println!(
            "{:>4} {:>9} {:>10} {:<24} {:>10} {:>7} {:>11}",
            number("cpus"),
            number("wall_ms"),
            run["speedup"]
                .as_f64()
                .map_or_else(|| String::from("-"), |s| format!("{s:.2}")),
            turns.join(" "),
            number("migrations"),
            number("steals"),
            number("lock_waits"),
        );
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shootdown_line_is_read_from_the_guests_output() {
        let serial = "[smp/bench] smp bench: reports=200 alone_cycles_per_op=21684 shootdown_cycles_per_op=42094\n";
        assert_eq!(
            parse_shootdown(serial),
            Some(ShootdownRun {
                reports: 200,
                alone: 21684,
                shootdown: 42094
            })
        );
        assert_eq!(parse_shootdown("smp bench: reports=200\n"), None);
    }

    const SERIAL: &str = "\
run: 8 guest(s) on 2 CPU(s) in 1023 ms
cpu 0: 83 turns, 7 guests, 83 state loads, 1005 ms in guests, 1 halts, 2 lock waits
cpu 1: 79 turns, 4 guests, 78 state loads, 1018 ms in guests, 0 halts, 5 lock waits
scheduler: 162 turns, 3 migrations, 3 steals, 1 idles, 2 kicks
";

    #[test]
    fn a_run_is_read_from_its_lines() {
        let run = parse(2, SERIAL).unwrap();
        assert_eq!(
            run,
            SmpRun {
                cpus: 2,
                wall_ms: 1023,
                turns_per_cpu: vec![83, 79],
                migrations: 3,
                steals: 3,
                lock_waits: 7,
            }
        );
    }

    #[test]
    fn a_boot_without_the_lines_is_not_a_run() {
        assert_eq!(parse(1, "cpu 0: up\n"), None);
        assert_eq!(parse(1, "run: 8 guest(s) on 1 CPU(s) in 5 ms\n"), None);
    }

    #[test]
    fn the_speedup_is_against_one_cpu() {
        let runs = [
            SmpRun {
                cpus: 1,
                wall_ms: 1200,
                ..SmpRun::default()
            },
            SmpRun {
                cpus: 2,
                wall_ms: 600,
                ..SmpRun::default()
            },
        ];
        let summary = summary(&runs);
        assert_eq!(summary["runs"][0]["speedup"], 1.0);
        assert_eq!(summary["runs"][1]["speedup"], 2.0);
    }
}
