//! `bench-std`: what std's everyday operations cost in a guest.
//!
//! Each benchmark runs inside a host `bench_mark` pair and is timed with
//! the time-stamp counter (`guest_rt::bench`), which under QEMU's
//! `-icount` counts instructions; each prints the line `cargo xtask bench`
//! reads, `bench std_<name> id=.. iterations=.. total_cycles=..
//! per_op=..`, after the host's `bench events id=..` line (exits, CR3
//! loads, faults of the region):
//!
//! - `std_instant_now`: one `Instant::now()`;
//! - `std_mutex_uncontended`: one `Mutex` lock and unlock, no contention;
//! - `std_thread_switch`: one switch between two threads of the guest
//!   that take turns with `thread::yield_now()`;
//! - `std_spawn_join`: `thread::spawn` of an empty closure, then `join`;
//! - `std_condvar_wake`: waking a thread asleep on a `Condvar` (a futex
//!   wait and wake), one per hand-over between two threads;
//! - `std_println`: `println!` of a short line;
//! - `std_threads_workload`: `threads-std`'s work end to end (4 threads,
//!   40,000 contended increments, a channel, joins), once.
//!
//! Each checks its own result; a wrong one prints `bench-std: FAILED`
//! and exits 1.

use guest_rt::bench;
use hermit as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Instant;

fn main() -> ExitCode {
    bench::measure("std_instant_now", 10_000, || {
        black_box(Instant::now());
    });
    let lock = Mutex::new(0u64);
    bench::measure("std_mutex_uncontended", 10_000, || {
        *lock.lock().unwrap() += 1
    });
    let checks = [
        ("mutex", *lock.lock().unwrap() == 10_000),
        ("thread switch", thread_switches(1_000)),
        ("spawn and join", spawn_joins(100)),
        ("condvar wake", condvar_hand_overs(500)),
        ("println", printlns(100)),
        ("4-thread workload", threads_workload() == 40_000),
    ];
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        println!("bench-std: done");
        ExitCode::SUCCESS
    } else {
        println!("bench-std: FAILED: {failed:?}");
        ExitCode::from(1)
    }
}

/// Two threads take `rounds` turns each, handing over with `yield_now`:
/// `2 * rounds` switches. True if every turn was taken.
fn thread_switches(rounds: u64) -> bool {
    let turn = Arc::new(AtomicU64::new(0));
    let take_turns = |parity: u64, turn: Arc<AtomicU64>| {
        move || {
            for _ in 0..rounds {
                while turn.load(Ordering::Acquire) % 2 != parity {
                    thread::yield_now();
                }
                turn.fetch_add(1, Ordering::AcqRel);
            }
        }
    };
    let id = bench::begin();
    let start = guest_rt::time::cycles();
    let even = thread::spawn(take_turns(0, turn.clone()));
    let odd = thread::spawn(take_turns(1, turn.clone()));
    let joined = even.join().is_ok() && odd.join().is_ok();
    bench::end(
        "std_thread_switch",
        id,
        2 * rounds,
        guest_rt::time::cycles() - start,
    );
    joined && turn.load(Ordering::Acquire) == 2 * rounds
}

/// `count` spawns of an empty thread, each joined at once.
fn spawn_joins(count: u64) -> bool {
    let mut joined = 0;
    bench::measure("std_spawn_join", count, || {
        joined += u64::from(thread::spawn(|| black_box(1)).join().is_ok());
    });
    joined == count
}

/// Two threads hand a token back and forth `rounds` times through a
/// `Mutex` and a `Condvar`; each hand-over wakes the other, asleep in
/// `wait`: `2 * rounds` wakes.
fn condvar_hand_overs(rounds: u64) -> bool {
    let shared = Arc::new((Mutex::new(0u64), Condvar::new()));
    let play = |parity: u64, shared: Arc<(Mutex<u64>, Condvar)>| {
        move || {
            let (token, handed) = &*shared;
            for _ in 0..rounds {
                let mut token = handed
                    .wait_while(token.lock().unwrap(), |t| *t % 2 != parity)
                    .unwrap();
                *token += 1;
                handed.notify_one();
            }
        }
    };
    let id = bench::begin();
    let start = guest_rt::time::cycles();
    let first = thread::spawn(play(0, shared.clone()));
    let second = thread::spawn(play(1, shared.clone()));
    let joined = first.join().is_ok() && second.join().is_ok();
    bench::end(
        "std_condvar_wake",
        id,
        2 * rounds,
        guest_rt::time::cycles() - start,
    );
    joined && *shared.0.lock().unwrap() == 2 * rounds
}

fn printlns(count: u64) -> bool {
    bench::measure("std_println", count, || println!("bench-std: a short line"));
    true
}

/// `threads-std`'s workload, timed once: returns the final count.
fn threads_workload() -> u64 {
    let id = bench::begin();
    let start = guest_rt::time::cycles();
    let counter = Arc::new(Mutex::new(0u64));
    let (done, finished) = mpsc::channel();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (counter, done) = (counter.clone(), done.clone());
            thread::spawn(move || {
                for _ in 0..10_000 {
                    *counter.lock().unwrap() += 1;
                }
                done.send(()).unwrap();
            })
        })
        .collect();
    drop(done);
    let reports = finished.iter().count();
    let joined = workers.into_iter().filter_map(|w| w.join().ok()).count();
    bench::end(
        "std_threads_workload",
        id,
        1,
        guest_rt::time::cycles() - start,
    );
    let total = *counter.lock().unwrap();
    if reports == 4 && joined == 4 {
        total
    } else {
        0
    }
}
