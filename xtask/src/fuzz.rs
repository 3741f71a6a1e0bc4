//! `cargo xtask fuzz`: the `fuzz` guest over many seeds, the host judged
//! after every boot.
//!
//! Each boot runs `--per-boot` fuzz guests, one seed each
//! (`guests=fuzz/<seed>/<steps>:any,...,hello`), and one `hello`, which
//! must exit 0: the fuzzers take turns on the host's tick with each other
//! and with a guest that must not notice them. A boot passes only if
//!
//! - QEMU exits with the kernel's success status (no hang, reset or host
//!   failure), the host prints `frames: ... (balanced)` and no `PANIC` or
//!   `EXCEPTION` line, and `hello` exits 0; and
//! - every fuzz guest ended the way it said it would (see
//!   `images/README.md`, "The fuzzer"): it completed its steps, or it was
//!   killed right after announcing a lethal action (`fuzz: step <n>: must
//!   be killed (<reason>)`, with the host's reason containing `<reason>`,
//!   or `may end`), or it shut down with the code it announced. Anything
//!   else is a finding: a kill with no announcement or with another
//!   reason, an action the host should have killed it for
//!   (`fuzz: SURVIVED`), shadow page tables that disagreed with its
//!   model (`fuzz: MISMATCH`), a trap it had not guarded (`fuzz: LOST
//!   CONTROL`).
//!
//! The summary gives the seeds, the steps the fuzzers executed (from their
//! own progress lines), how each fuzz guest ended, and for every failing
//! boot its seeds, what was wrong and the command line that reproduces
//! it; the whole serial output of a failing boot is kept in
//! `target/fuzz/`. The status is non-zero if any boot failed.

use crate::artefacts;
use crate::cli::FuzzArgs;
use crate::qemu::{self, Machine};
use crate::session::{self, Options, Outcome};
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The guest every boot runs beside the fuzzers, which must exit 0.
const WITNESS: &str = "hello";

/// The guests of a boot of `seeds`, `steps` each: the `guests=` word of
/// its kernel command line.
pub fn cmdline(seeds: &[u64], steps: u64) -> String {
    let mut guests: Vec<String> = seeds
        .iter()
        .map(|seed| format!("{}:any", guest_name(*seed, steps)))
        .collect();
    guests.push(WITNESS.to_string());
    format!("guests={}", guests.join(","))
}

/// The name the host gives the fuzz guest of `seed` (its image and
/// argument): the prefix of its console lines and its end line.
pub fn guest_name(seed: u64, steps: u64) -> String {
    format!("fuzz/{seed}/{steps}")
}

/// What a fuzz guest said before its end, by its last line of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// `must be killed (<reason>)`.
    Killed(String),
    /// `may end`.
    May,
    /// `must exit <code>`.
    Exit(u64),
    /// Nothing: its last line announced no lethal action.
    Nothing,
}

/// How one fuzz guest ended, and whether that was a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEnd {
    /// Its seed.
    pub seed: u64,
    /// The steps it executed, by its own lines.
    pub steps: u64,
    /// How it ended, as a class for the summary (`completed`, `killed:
    /// reserved bits`, ...).
    pub class: String,
    /// What was wrong with that end, if anything.
    pub finding: Option<String>,
}

/// What one boot came to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootReport {
    /// What is wrong with the host (or `hello`): a failed boot whatever
    /// the fuzzers did.
    pub host_problems: Vec<String>,
    /// Each fuzz guest's end.
    pub guests: Vec<GuestEnd>,
}

impl BootReport {
    /// Whether the boot passed: the host sound and no fuzz guest a finding.
    pub fn passed(&self) -> bool {
        self.host_problems.is_empty() && self.guests.iter().all(|g| g.finding.is_none())
    }

    /// Every problem of the boot, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut all = self.host_problems.clone();
        for guest in &self.guests {
            if let Some(finding) = &guest.finding {
                all.push(format!("seed {}: {finding}", guest.seed));
            }
        }
        all
    }
}

/// Judges a boot of `seeds` (`steps` each) from how QEMU ended and what
/// the machine printed.
pub fn judge(outcome: Outcome, serial: &str, seeds: &[u64], steps: u64) -> BootReport {
    let lines: Vec<&str> = serial.lines().map(|l| l.trim_end_matches('\r')).collect();
    let names: Vec<String> = seeds.iter().map(|&s| guest_name(s, steps)).collect();
    let guest_prefixes: Vec<String> = names
        .iter()
        .map(String::as_str)
        .chain([WITNESS])
        .map(|name| format!("[{name}] "))
        .collect();
    let is_guest_line = |line: &str| guest_prefixes.iter().any(|p| line.starts_with(p));
    let mut report = BootReport::default();
    if outcome != Outcome::Success {
        report.host_problems.push(format!("QEMU: {outcome}"));
    }
    match lines.iter().find(|l| l.starts_with("frames:")) {
        Some(line) if line.contains("(balanced)") => {}
        Some(line) => report.host_problems.push(format!("frame leak: {line}")),
        None => report
            .host_problems
            .push("no `frames:` line (the host never finished its guests)".into()),
    }
    for line in lines.iter().filter(|l| !is_guest_line(l)) {
        if line.starts_with("PANIC") || line.contains("EXCEPTION") {
            report.host_problems.push(format!("host: {line}"));
        }
    }
    let witness_end = format!("guest {WITNESS} exited code=0");
    if !lines.iter().any(|l| *l == witness_end) {
        report
            .host_problems
            .push(format!("`{WITNESS}` did not exit with code 0"));
    }
    for (&seed, name) in seeds.iter().zip(&names) {
        report.guests.push(judge_guest(&lines, seed, name));
    }
    report
}

/// Judges one fuzz guest by its own lines and the host's end line for it.
fn judge_guest(lines: &[&str], seed: u64, name: &str) -> GuestEnd {
    let prefix = format!("[{name}] ");
    // Its lines, from where its own text starts (random console writes of
    // its may have left bytes before it).
    let own: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| l.find("fuzz: ").map(|at| &l[at..]))
        .collect();
    let steps = own.iter().filter_map(|l| step_of(l)).max().unwrap_or(0);
    let completed = own.iter().any(|l| l.starts_with("fuzz: done:"));
    let announced = own.last().map_or(Announced::Nothing, |l| announcement(l));
    let last_words = own.last().copied().unwrap_or("(nothing)");
    let exited = format!("guest {name} exited code=");
    let killed = format!("guest {name} killed: ");
    let end = lines.iter().find_map(|l| {
        l.strip_prefix(exited.as_str())
            .and_then(|code| code.parse::<u64>().ok())
            .map(Ok)
            .or_else(|| l.strip_prefix(killed.as_str()).map(Err))
    });
    let (class, finding) = match end {
        None => ("no end".to_string(), Some("it never ended".to_string())),
        Some(Ok(0)) if completed => ("completed".to_string(), None),
        Some(Ok(code)) => match announced {
            Announced::Exit(expected) if expected == code => {
                (format!("exited {code} (as announced)"), None)
            }
            _ => (
                format!("exited {code}"),
                Some(format!(
                    "exited with code {code}; its last words: {last_words}"
                )),
            ),
        },
        Some(Err(reason)) => {
            let class = format!("killed: {}", kill_class(reason));
            let finding = match announced {
                Announced::Killed(needle) if reason.contains(&needle) => None,
                Announced::Killed(needle) => Some(format!(
                    "wrong kill reason: announced ({needle}), the host said: {reason}"
                )),
                Announced::May => None,
                Announced::Exit(code) => Some(format!(
                    "killed ({reason}) where it announced an exit with {code}"
                )),
                Announced::Nothing => Some(format!(
                    "killed with no lethal action announced: {reason}; its last words: {last_words}"
                )),
            };
            (class, finding)
        }
    };
    GuestEnd {
        seed,
        steps,
        class,
        finding,
    }
}

/// The step a fuzzer's line speaks of: `fuzz: step <n>: ...`, `fuzz:
/// progress <n> steps`, `fuzz: done: <n> steps, ...`.
fn step_of(line: &str) -> Option<u64> {
    let rest = ["fuzz: step ", "fuzz: progress ", "fuzz: done: "]
        .iter()
        .find_map(|p| line.strip_prefix(p))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a fuzzer's line announces.
fn announcement(line: &str) -> Announced {
    let Some(rest) = line.strip_prefix("fuzz: step ") else {
        return Announced::Nothing;
    };
    let Some((_, what)) = rest.split_once(": ") else {
        return Announced::Nothing;
    };
    if let Some(reason) = what.strip_prefix("must be killed (") {
        // The reason may itself hold parentheses: it ends at the last `):`.
        if let Some((needle, _)) = reason.rsplit_once("): ") {
            return Announced::Killed(needle.to_string());
        }
    }
    if what.starts_with("may end: ") {
        return Announced::May;
    }
    if let Some(code) = what
        .strip_prefix("must exit ")
        .and_then(|r| r.split(':').next())
        .and_then(|c| c.parse().ok())
    {
        return Announced::Exit(code);
    }
    Announced::Nothing
}

/// The host's kill reasons by class: fragments of its messages, in the
/// order they are tried.
const KILL_CLASSES: [&str; 28] = [
    "iretq to ring 0",
    "iretq with a bad frame",
    "hypercall from user mode",
    "write to the switcher's pages",
    "trap handler outside the guest kernel",
    "halted with nothing to wake it",
    "ran over its time budget",
    "taken with no kernel stack",
    "cannot deliver",
    "reserved bits",
    "outside guest memory",
    "sets the large-page bit",
    "misaligned large page",
    "would map the switcher's slot",
    "lies in the switcher's slot",
    "is not a page inside guest memory",
    "is the shared page",
    "own level-3 table",
    "is not a canonical address",
    "does not exist",
    "unknown MMU operation word",
    "more than a ring ahead",
    "cannot be mapped writable",
    "recurs although the shadow already allows",
    "bound of",
    "out of host frames",
    "zero pool counts make no sense",
    "not a page of guest memory",
];

/// A kill reason without its numbers: the instruction of a privileged
/// instruction, or the fragment of [`KILL_CLASSES`] it holds.
pub fn kill_class(reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("privileged instruction `") {
        return format!(
            "privileged instruction `{}`",
            rest.split('`').next().unwrap_or("")
        );
    }
    if let Some(class) = KILL_CLASSES.iter().find(|c| reason.contains(*c)) {
        return (*class).to_string();
    }
    reason
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(8)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The seeds of each boot: `per_boot` at a time from `first`.
pub fn boots(first: u64, seeds: u64, per_boot: u64) -> Vec<Vec<u64>> {
    let all: Vec<u64> = (first..first.saturating_add(seeds)).collect();
    all.chunks(per_boot.max(1) as usize)
        .map(<[u64]>::to_vec)
        .collect()
}

/// A boot that failed: its seeds, what was wrong, its kernel command
/// line and where its serial output was kept.
struct FailedBoot {
    seeds: Vec<u64>,
    problems: Vec<String>,
    cmdline: String,
    log: Option<PathBuf>,
}

/// What all the boots came to.
#[derive(Default)]
struct Summary {
    boots: usize,
    failed: Vec<FailedBoot>,
    steps: u64,
    seeds: usize,
    ends: BTreeMap<String, u64>,
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result<u8> {
    let workspace = Workspace::current();
    let built = artefacts::build_all(&workspace, args.common.profile)?;
    let choice = qemu::choose_accel(args.common.accel);
    eprintln!("xtask: {choice}");
    let plan = boots(args.first, args.seeds, args.per_boot);
    let last = args.first + args.seeds - 1;
    eprintln!(
        "xtask: fuzzing seeds {} to {last}, {} steps each, {} per boot: {} boots, {} at a time",
        args.first,
        args.steps,
        args.per_boot,
        plan.len(),
        args.jobs
    );
    let log_dir = workspace.target_dir.join("fuzz");
    let started = Instant::now();
    let next = Mutex::new(plan.iter().enumerate());
    let summary = Mutex::new(Summary::default());
    let setup_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let Some((index, seeds)) = next.lock().unwrap().next() else {
                        break;
                    };
                    let mut machine = Machine::new(&built.kernel);
                    let mut words = args.kernel_words.clone();
                    words.push(cmdline(seeds, args.steps));
                    machine.cmdline = words.join(" ");
                    machine.initrd = Some(built.guests.clone());
                    machine.accel = choice.accel;
                    machine.firmware = args.common.firmware;
                    machine.cpus = args.cpus;
                    let record = match machine
                        .command()
                        .and_then(|c| session::run(c, &Options::captured(args.time_limit)))
                    {
                        Ok(record) => record,
                        Err(e) => {
                            *setup_error.lock().unwrap() = Some(e);
                            break;
                        }
                    };
                    let report = judge(record.outcome, &record.serial, seeds, args.steps);
                    let kept = (!report.passed())
                        .then(|| keep_log(&log_dir, seeds, &machine.cmdline, &record.transcript()));
                    record_boot(
                        &summary,
                        index,
                        plan.len(),
                        seeds,
                        &report,
                        &machine.cmdline,
                        kept,
                    );
                }
            });
        }
    });
    if let Some(error) = setup_error.into_inner().unwrap() {
        return Err(error);
    }
    let summary = summary.into_inner().unwrap();
    print_summary(&summary, args, started.elapsed());
    Ok(if summary.failed.is_empty() { 0 } else { 1 })
}

/// Writes a failing boot's transcript to `dir`; its path, if it could.
fn keep_log(dir: &Path, seeds: &[u64], cmdline: &str, transcript: &str) -> Option<PathBuf> {
    let first = seeds.first().copied().unwrap_or(0);
    let last = seeds.last().copied().unwrap_or(0);
    let path = dir.join(format!("boot-{first}-{last}.log"));
    std::fs::create_dir_all(dir).ok()?;
    std::fs::write(
        &path,
        format!("kernel command line: {cmdline}\n{transcript}"),
    )
    .ok()?;
    Some(path)
}

/// Adds one boot to the summary and prints its line.
fn record_boot(
    summary: &Mutex<Summary>,
    index: usize,
    boots: usize,
    seeds: &[u64],
    report: &BootReport,
    cmdline: &str,
    log: Option<Option<PathBuf>>,
) {
    let mut summary = summary.lock().unwrap();
    summary.boots += 1;
    summary.seeds += seeds.len();
    let steps: u64 = report.guests.iter().map(|g| g.steps).sum();
    summary.steps += steps;
    for guest in &report.guests {
        *summary.ends.entry(guest.class.clone()).or_default() += 1;
    }
    let range = format!(
        "{}-{}",
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0)
    );
    if report.passed() {
        println!(
            "fuzz: boot {}/{boots} (seeds {range}): ok, {steps} steps",
            index + 1
        );
    } else {
        let problems = report.problems();
        println!(
            "fuzz: boot {}/{boots} (seeds {range}): FAILED: {}",
            index + 1,
            problems.join("; ")
        );
        summary.failed.push(FailedBoot {
            seeds: seeds.to_vec(),
            problems,
            cmdline: cmdline.to_string(),
            log: log.flatten(),
        });
    }
}

fn print_summary(summary: &Summary, args: &FuzzArgs, took: Duration) {
    println!(
        "fuzz: {} seeds ({} to {}), {} steps each, {} per boot: {} boots in {:.0} s, {} failed",
        summary.seeds,
        args.first,
        args.first + args.seeds - 1,
        args.steps,
        args.per_boot,
        summary.boots,
        took.as_secs_f64(),
        summary.failed.len()
    );
    if !args.kernel_words.is_empty() {
        println!("fuzz: with {}", args.kernel_words.join(" "));
    }
    println!(
        "fuzz: steps executed: {} of {}",
        summary.steps,
        summary.seeds as u64 * args.steps
    );
    println!("fuzz: how the fuzz guests ended:");
    let mut ends: Vec<(&String, &u64)> = summary.ends.iter().collect();
    ends.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (class, count) in ends {
        println!("fuzz: {count:>7}  {class}");
    }
    if summary.failed.is_empty() {
        println!("fuzz: every boot passed");
        return;
    }
    println!("fuzz: failing boots:");
    for failed in &summary.failed {
        println!("fuzz: seeds {:?}:", failed.seeds);
        for problem in &failed.problems {
            println!("fuzz:   {problem}");
        }
        println!(
            "fuzz:   reproduce: cargo xtask run --timeout {} -- {}",
            args.time_limit.as_secs(),
            failed.cmdline
        );
        if let Some(log) = &failed.log {
            println!("fuzz:   serial output: {}", log.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_END: &str = "frames: 10 free before the guests, 10 after (balanced)\n\
                          guest hello exited code=0\n";

    fn judge_one(lines: &str) -> GuestEnd {
        let serial = format!("{lines}\n{OK_END}");
        let report = judge(Outcome::Success, &serial, &[7], 100);
        assert!(report.host_problems.is_empty(), "{report:?}");
        report.guests[0].clone()
    }

    #[test]
    fn the_command_line_names_each_seed_and_the_witness() {
        assert_eq!(
            cmdline(&[3, 4], 100),
            "guests=fuzz/3/100:any,fuzz/4/100:any,hello"
        );
        assert_eq!(boots(1, 5, 2), [vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[test]
    fn a_completed_run_passes_with_its_steps() {
        let end = judge_one(
            "[fuzz/7/100] fuzz: progress 100 steps\n\
             [fuzz/7/100] fuzz: done: 100 steps, 3 traps taken\n\
             guest fuzz/7/100 exited code=0",
        );
        assert_eq!(
            (end.steps, end.class.as_str(), end.finding),
            (100, "completed", None)
        );
    }

    #[test]
    fn an_announced_kill_passes_and_another_reason_is_a_finding() {
        let announced =
            "[fuzz/7/100] fuzz: step 42: must be killed (privileged instruction `cli`): cli";
        let end = judge_one(&format!(
            "{announced}\nguest fuzz/7/100 killed: privileged instruction `cli` at rip 0x1000"
        ));
        assert_eq!(end.finding, None);
        assert_eq!(end.steps, 42);
        assert_eq!(end.class, "killed: privileged instruction `cli`");
        let end = judge_one(&format!(
            "{announced}\nguest fuzz/7/100 killed: privileged instruction `lgdt` at rip 0x1000"
        ));
        assert!(end.finding.unwrap().starts_with("wrong kill reason"));
    }

    #[test]
    fn unannounced_ends_and_the_fuzzers_own_alarms_are_findings() {
        let end = judge_one(
            "[fuzz/7/100] fuzz: step 5: may end: read 0x1000\n\
             [fuzz/7/100] fuzz: step 5: carried on\n\
             guest fuzz/7/100 killed: guest entry 0x3 at level 1 for gva:0x0 has reserved bits 0x8 set",
        );
        assert!(end.finding.unwrap().contains("no lethal action announced"));
        assert_eq!(end.class, "killed: reserved bits");
        let end = judge_one(
            "[fuzz/7/100] fuzz: MISMATCH at step 9: read 0x1000: ...\n\
             guest fuzz/7/100 exited code=4",
        );
        assert!(end.finding.unwrap().contains("MISMATCH"));
        let end = judge_one(
            "[fuzz/7/100] fuzz: step 9: must exit 42: shutdown(42)\n\
             guest fuzz/7/100 exited code=42",
        );
        assert_eq!(end.finding, None);
    }

    #[test]
    fn host_failures_fail_the_boot_whatever_the_guests_did() {
        let serial =
            "PANIC at host/src/x.rs:1: boom\nframes: 1 free before the guests, 0 after (LEAKED)\n";
        let report = judge(Outcome::KernelFailure, serial, &[], 100);
        assert_eq!(report.host_problems.len(), 4, "{report:?}");
        assert!(!report.passed());
        // A guest printing the word is not the host panicking.
        let serial = format!("[hello] PANIC EXCEPTION\n{OK_END}");
        assert!(judge(Outcome::Success, &serial, &[], 100).passed());
    }

    #[test]
    fn kill_reasons_are_classed_without_their_numbers() {
        assert_eq!(
            kill_class(
                "guest entry 0x5 at level 2 for gva:0x10 maps gpa:0x1000000 outside guest memory (size 0x1000000)"
            ),
            "outside guest memory"
        );
        assert_eq!(
            kill_class("iretq to ring 0 (its frame's cs is 0x8) at rip 0x1"),
            "iretq to ring 0"
        );
        assert_eq!(kill_class("something new at 0x1234"), "something new at");
    }
}
