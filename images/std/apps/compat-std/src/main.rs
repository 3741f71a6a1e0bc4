//! `compat-std`: the parts of std that the README's compatibility table
//! promises, beyond the other programs: what works, and what returns an
//! error because a guest has no such thing.
//!
//! Works: `RwLock`, `Barrier` and `Once` across threads,
//! `available_parallelism` (the guest's vCPUs: 1, or the count in the
//! environment variable `COMPAT_STD_CPUS`, as in
//! `guests="compat-std/COMPAT_STD_CPUS=2:0:vcpus=2"`), thread-locals per thread,
//! `env::set_var`, a UDP socket bound to any port (the runtime's network,
//! on the guest's virtio-net). Returns an error (and does not crash): a TCP
//! connection to 127.0.0.1 (refused: there is no loopback), a `Command` (a
//! guest is one process), `fs::rename` (std on Hermit does not implement
//! it).
//! Standard input reads as empty.
//! Prints `compat-std: ok` and exits 0, or each wrong answer and exits 1.

use hermit as _;
use std::cell::Cell;
use std::io::{ErrorKind, Read};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Barrier, Once, RwLock};
use std::{env, fs, thread};

thread_local! {
    static MINE: Cell<u32> = const { Cell::new(0) };
}

fn main() -> ExitCode {
    let checks = [
        (
            "RwLock, Barrier and Once across 3 threads",
            sync_across_threads(),
        ),
        (
            "available_parallelism is the vCPU count (COMPAT_STD_CPUS, default 1)",
            parallelism() == Some(expected_cpus()),
        ),
        ("thread-locals are per thread", thread_locals_are_separate()),
        ("set_var then var", set_var_reads_back()),
        (
            "TcpStream::connect to 127.0.0.1 is refused (no loopback)",
            TcpStream::connect("127.0.0.1:80")
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        ),
        (
            "UdpSocket::bind to any port works",
            UdpSocket::bind("0.0.0.0:0").is_ok(),
        ),
        ("Command::spawn fails", Command::new("ls").spawn().is_err()),
        ("fs::rename is unsupported", rename_is_unsupported()),
        ("stdin is empty", stdin_is_empty()),
    ];
    let mut failed = 0;
    for (what, ok) in checks {
        if !ok {
            println!("compat-std: FAILED: {what}");
            failed += 1;
        }
    }
    if failed > 0 {
        return ExitCode::from(1);
    }
    println!("compat-std: ok: {} checks", checks.len());
    ExitCode::SUCCESS
}

fn sync_across_threads() -> bool {
    let table = Arc::new(RwLock::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(3));
    static INIT: Once = Once::new();
    let workers: Vec<_> = (0..3)
        .map(|id| {
            let (table, barrier) = (table.clone(), barrier.clone());
            thread::spawn(move || {
                INIT.call_once(|| table.write().unwrap().push(100));
                table.write().unwrap().push(id);
                barrier.wait();
                table.read().unwrap().len()
            })
        })
        .collect();
    let seen: Vec<usize> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
    seen == [4, 4, 4] && table.read().unwrap().iter().filter(|v| **v == 100).count() == 1
}

fn parallelism() -> Option<usize> {
    thread::available_parallelism().ok().map(usize::from)
}

/// How many CPUs `available_parallelism` should report.
fn expected_cpus() -> usize {
    env::var("COMPAT_STD_CPUS")
        .ok()
        .and_then(|cpus| cpus.parse().ok())
        .unwrap_or(1)
}

fn thread_locals_are_separate() -> bool {
    MINE.with(|m| m.set(7));
    let other = thread::spawn(|| MINE.with(Cell::get)).join().ok();
    other == Some(0) && MINE.with(Cell::get) == 7
}

fn set_var_reads_back() -> bool {
    // SAFETY: one thread runs here (the others have been joined).
    unsafe { env::set_var("COMPAT_STD", "yes") };
    env::var("COMPAT_STD").as_deref() == Ok("yes")
}

/// std on Hermit answers "unsupported" for `rename` without asking the
/// runtime; the file stays where it was.
fn rename_is_unsupported() -> bool {
    let (from, to) = ("/tmp/compat-std-a", "/tmp/compat-std-b");
    fs::write(from, "stays").is_ok()
        && fs::rename(from, to).is_err_and(|e| e.kind() == ErrorKind::Unsupported)
        && fs::read_to_string(from).is_ok_and(|text| text == "stays")
}

fn stdin_is_empty() -> bool {
    let mut text = String::new();
    matches!(std::io::stdin().read_to_string(&mut text), Ok(0)) || text.is_empty()
}
