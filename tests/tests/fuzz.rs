//! The fuzzer, a few fixed seeds: the `fuzz` guest throws random
//! hypercalls, page-table entries, MMU ring contents and privileged and
//! segment instructions at the host, and the host must survive every one
//! with its frames balanced and the `hello` guest beside it intact, and end
//! each fuzzer the way it announced. `cargo xtask fuzz --seeds N` runs as
//! many seeds as you like; these are a handful that end in different ways
//! (killed for several reasons, shut down, run to the end), judged by the
//! same code.
//!
//! A seed does the same thing on every run (the fuzzer never looks at the
//! clock), so these tests pass or fail the same way every time.

use qemu_tests::boot;
use xtask::fuzz::{cmdline, judge};

/// Steps per seed, as `cargo xtask fuzz` runs them by default.
const STEPS: u64 = 10_000;

/// Eight seeds in one boot, beside `hello`: the host survives them all,
/// its frames balance, and every fuzzer ended as it announced.
#[test]
fn the_host_survives_eight_fuzz_seeds() {
    let seeds: Vec<u64> = (1..=8).collect();
    let boot = boot(&cmdline(&seeds, STEPS));
    let report = judge(boot.outcome(), boot.serial(), &seeds, STEPS);
    if !report.passed() {
        boot.fail(&report.problems().join("; "));
    }
    let steps: u64 = report.guests.iter().map(|g| g.steps).sum();
    let completed = report.guests.iter().filter(|g| g.class == "completed");
    // The seeds are chosen to get deep: some run all their steps.
    if completed.count() == 0 || steps < STEPS * 2 {
        boot.fail(&format!(
            "the fuzzers executed only {steps} steps, none to the end: {:?}",
            report.guests
        ));
    }
}

/// The same seed twice in one boot, once printing every action: both
/// end the same way at the same step, however the host interleaved them.
#[test]
fn a_fuzz_seed_does_the_same_thing_every_time() {
    const SEED: u64 = 3;
    let quiet = format!("fuzz/{SEED}/{STEPS}");
    let verbose = format!("{quiet}/verbose");
    let boot = boot(&format!("guests={quiet}:any,{verbose}:any"));
    boot.expect_success();
    let end = |name: &str| -> String {
        let line = boot.line_starting(&format!("guest {name} "));
        line.replacen(name, "<name>", 1)
    };
    let last_step = |name: &str| -> String {
        let prefix = format!("[{name}] fuzz: step ");
        boot.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter(|l| l.contains("must be killed") || l.contains("must exit"))
            .last()
            .unwrap_or("")
            .to_string()
    };
    if end(&quiet) != end(&verbose) || last_step(&quiet) != last_step(&verbose) {
        boot.fail(&format!(
            "seed {SEED} ended differently: `{}` after `{}`, and verbose `{}` after `{}`",
            end(&quiet),
            last_step(&quiet),
            end(&verbose),
            last_step(&verbose)
        ));
    }
}
