//! `threads-std`: std's threads and their synchronisation on rguest.
//!
//! With no argument: four threads wait on a `Condvar` until the main
//! thread says go, then each adds 1 to a shared `Mutex<u64>` 10,000 times
//! (contended: they all hammer the same lock), and reports through an
//! `mpsc` channel how many increments it made. The main thread checks
//! that the four reports came, that the counter is exactly 40,000, and
//! that every thread joined. Prints `threads-std: ok ...` and exits 0, or
//! says what was wrong and exits 1.
//!
//! With the argument `parallel` (`guests=threads-std/parallel:0:vcpus=2`):
//! the same threads, on however many vCPUs the guest has, each doing a
//! fixed amount of computing of its own between the shared traffic (see
//! [`parallel`]), with every total checked exactly. Which vCPU ran what is
//! for the runtime to say (`hermit: vcpu 0 ran ... thread turns, ...`).

mod parallel;

use hermit as _;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;

const THREADS: u64 = 4;
const INCREMENTS: u64 = 10_000;

/// The start signal: a flag behind a mutex, and the condvar to wait on.
type Gate = (Mutex<bool>, Condvar);

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => contended(),
        Some("parallel") => parallel::run(),
        Some(other) => {
            println!("threads-std: unknown mode {other:?} (none, or parallel)");
            ExitCode::from(2)
        }
    }
}

/// The default run: 40,000 increments of one contended mutex.
fn contended() -> ExitCode {
    let counter = Arc::new(Mutex::new(0u64));
    let gate: Arc<Gate> = Arc::new((Mutex::new(false), Condvar::new()));
    let (reports, received) = mpsc::channel();
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (counter, gate, reports) = (counter.clone(), gate.clone(), reports.clone());
            thread::spawn(move || {
                wait_for_go(&gate);
                for _ in 0..INCREMENTS {
                    *counter.lock().unwrap() += 1;
                }
                reports.send((id, INCREMENTS)).unwrap();
            })
        })
        .collect();
    drop(reports);
    open_gate(&gate);
    let mut report_ids: Vec<u64> = Vec::new();
    let mut reported = 0;
    for (id, increments) in received {
        report_ids.push(id);
        reported += increments;
    }
    let joined = workers
        .into_iter()
        .map(|w| w.join())
        .filter(Result::is_ok)
        .count();
    report_ids.sort_unstable();
    let total = *counter.lock().unwrap();
    let expected = THREADS * INCREMENTS;
    if total != expected
        || reported != expected
        || joined != THREADS as usize
        || report_ids != [0, 1, 2, 3]
    {
        println!(
            "threads-std: FAILED: counter={total} reported={reported} joined={joined} \
             reports from {report_ids:?}, expected {expected} from 4 threads"
        );
        return ExitCode::from(1);
    }
    println!(
        "threads-std: ok: {THREADS} threads, counter={total}, reports from {report_ids:?}, all joined"
    );
    ExitCode::SUCCESS
}

fn wait_for_go(gate: &Gate) {
    let (open, changed) = gate;
    let mut open = open.lock().unwrap();
    while !*open {
        open = changed.wait(open).unwrap();
    }
}

fn open_gate(gate: &Gate) {
    let (open, changed) = gate;
    *open.lock().unwrap() = true;
    changed.notify_all();
}
