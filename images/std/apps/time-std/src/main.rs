//! `time-std`: std's clocks and sleeps on rguest.
//!
//! Sleeps 1, 10 and 50 ms with `thread::sleep` and checks with `Instant`
//! that each lasted at least as long as asked (never at most: a slow or
//! busy machine may oversleep), that `Instant` never goes backwards over
//! 1,000 reads, and that `SystemTime` is after the Unix epoch and moved
//! forward by at least the time slept. Prints `time-std: ok ...` and exits
//! 0, or says what was wrong and exits 1.

use hermit as _;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let mut failures = Vec::new();
    let wall_before = SystemTime::now();
    let mut slept = Duration::ZERO;
    for millis in [1, 10, 50] {
        let asked = Duration::from_millis(millis);
        let start = Instant::now();
        thread::sleep(asked);
        let lasted = start.elapsed();
        println!("time-std: sleep({asked:?}) lasted {lasted:?}");
        if lasted < asked {
            failures.push(format!("sleep({asked:?}) ended after {lasted:?}"));
        }
        slept += asked;
    }
    if let Some((earlier, later)) = instant_going_backwards(1000) {
        failures.push(format!(
            "Instant went backwards: {earlier:?} then {later:?}"
        ));
    }
    match wall_before.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => println!("time-std: SystemTime is {since_epoch:?} after the Unix epoch"),
        Err(e) => failures.push(format!("SystemTime before the Unix epoch: {e}")),
    }
    match SystemTime::now().duration_since(wall_before) {
        Ok(moved) if moved >= slept => {}
        Ok(moved) => failures.push(format!(
            "SystemTime moved {moved:?} over sleeps of {slept:?}"
        )),
        Err(e) => failures.push(format!("SystemTime went backwards: {e}")),
    }
    if failures.is_empty() {
        println!("time-std: ok: every sleep lasted at least as asked; clocks move forward");
        ExitCode::SUCCESS
    } else {
        for failure in failures {
            println!("time-std: FAILED: {failure}");
        }
        ExitCode::from(1)
    }
}

/// The first pair of consecutive `Instant::now()` reads, of `reads`, where
/// the second is earlier than the first.
fn instant_going_backwards(reads: usize) -> Option<(Instant, Instant)> {
    let mut previous = Instant::now();
    for _ in 0..reads {
        let now = Instant::now();
        if now < previous {
            return Some((previous, now));
        }
        previous = now;
    }
    None
}
