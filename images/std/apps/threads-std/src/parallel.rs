//! `threads-std parallel`: threads that compute side by side, and meet
//! through every kind of shared state std offers.
//!
//! [`THREADS`] workers start together behind a `Barrier`. Each runs
//! [`ROUNDS`] rounds; a round is [`WORK_PER_ROUND`] steps of a hash of its
//! own (no sharing: what several vCPUs do at once), then one `fetch_add`
//! on a shared `AtomicU64`, one increment of a shared `Mutex<u64>`, and a
//! turn of a token passed around all workers under a `Mutex` and a
//! `Condvar` (each waits for its turn, so every round every worker sleeps
//! and is woken by another). At the end each sends its hash through an
//! `mpsc` channel. The main thread checks every total exactly: the atomic
//! and the mutex at `THREADS * ROUNDS`, the token at `THREADS * ROUNDS`
//! passes in order, each hash against the same hash computed here alone.
//! Prints `threads-std: ok: parallel, ...` with `available_parallelism`,
//! or what was wrong, and exits 1.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, mpsc};
use std::thread;

/// Worker threads.
pub const THREADS: u64 = 4;
/// Rounds each worker runs.
pub const ROUNDS: u64 = 200;
/// Hash steps each worker computes per round.
pub const WORK_PER_ROUND: u64 = 20_000;

/// The token passed around the workers: whose turn it is, and how many
/// passes were made.
struct Token {
    turn: Mutex<(u64, u64)>,
    changed: Condvar,
}

/// What the workers share.
struct Shared {
    atomic: AtomicU64,
    mutex: Mutex<u64>,
    token: Token,
    start: Barrier,
}

pub fn run() -> ExitCode {
    let shared = Arc::new(Shared {
        atomic: AtomicU64::new(0),
        mutex: Mutex::new(0),
        token: Token {
            turn: Mutex::new((0, 0)),
            changed: Condvar::new(),
        },
        start: Barrier::new(THREADS as usize),
    });
    let (results, received) = mpsc::channel();
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (shared, results) = (shared.clone(), results.clone());
            thread::spawn(move || work(id, &shared, &results))
        })
        .collect();
    drop(results);
    let mut hashes: Vec<(u64, u64)> = received.iter().collect();
    let joined = workers.into_iter().filter_map(|w| w.join().ok()).count();
    hashes.sort_unstable();
    let expected_hashes: Vec<(u64, u64)> = (0..THREADS).map(|id| (id, expected_hash(id))).collect();
    let atomic = shared.atomic.load(Ordering::SeqCst);
    let mutex = *shared.mutex.lock().unwrap();
    let passes = shared.token.turn.lock().unwrap().1;
    let total = THREADS * ROUNDS;
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    if atomic != total
        || mutex != total
        || passes != total
        || hashes != expected_hashes
        || joined != THREADS as usize
    {
        println!(
            "threads-std: FAILED: parallel: atomic={atomic} mutex={mutex} passes={passes} \
             (expected {total}), joined={joined}, hashes {hashes:x?}, expected {expected_hashes:x?}"
        );
        return ExitCode::from(1);
    }
    println!(
        "threads-std: ok: parallel, {THREADS} threads on {cpus} cpus, atomic={atomic} \
         mutex={mutex} token passes={passes}, hashes as computed alone, all joined"
    );
    ExitCode::SUCCESS
}

/// One worker: its rounds, then its hash on the channel.
fn work(id: u64, shared: &Shared, results: &mpsc::Sender<(u64, u64)>) {
    shared.start.wait();
    let mut hash = seed(id);
    for _ in 0..ROUNDS {
        hash = steps(hash, WORK_PER_ROUND);
        shared.atomic.fetch_add(1, Ordering::SeqCst);
        *shared.mutex.lock().unwrap() += 1;
        pass_token(id, &shared.token);
    }
    results.send((id, hash)).unwrap();
}

/// Waits for worker `id`'s turn, then hands the token to the next.
fn pass_token(id: u64, token: &Token) {
    let mut turn = token.turn.lock().unwrap();
    while turn.0 != id {
        turn = token.changed.wait(turn).unwrap();
    }
    turn.0 = (id + 1) % THREADS;
    turn.1 += 1;
    token.changed.notify_all();
}

/// Worker `id`'s hash, computed here alone.
fn expected_hash(id: u64) -> u64 {
    (0..ROUNDS).fold(seed(id), |hash, _| steps(hash, WORK_PER_ROUND))
}

fn seed(id: u64) -> u64 {
    0xcbf2_9ce4_8422_2325 ^ id
}

/// `count` steps of an FNV-1a-like hash over the step numbers.
fn steps(mut hash: u64, count: u64) -> u64 {
    for step in 0..count {
        hash = (hash ^ step).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
