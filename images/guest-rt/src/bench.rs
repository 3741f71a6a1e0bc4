//! Timing an operation the way `cargo xtask bench` reads it.
//!
//! [`measure`] runs an operation `n` times between two reads of the
//! time-stamp counter, inside a host `bench_mark` pair, and prints
//!
//! ```text
//! bench <name> id=<id> iterations=<n> total_cycles=<c> per_op=<x.xx>
//! ```
//!
//! right after the host's `bench events id=<id> ...` line with the exits,
//! CR3 loads and shadow faults the `n` operations cost. Under QEMU's
//! `-icount shift=0` the counter advances once per instruction retired, so
//! the same boot gives exact instruction counts.

use crate::{hypercall, println, time};
use core::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Times `iterations` runs of `op` and prints the result; returns the
/// cycles.
pub fn measure(name: &str, iterations: u64, mut op: impl FnMut()) -> u64 {
    let id = begin();
    let start = time::cycles();
    for _ in 0..iterations {
        op();
    }
    let cycles = time::cycles() - start;
    end(name, id, iterations, cycles);
    cycles
}

/// Starts a measurement whose timing the caller does itself (user code
/// timing a loop of its own, one call doing many operations): the host
/// counts events from here. Returns the id to pass to [`end`].
pub fn begin() -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let _ = hypercall::bench_mark(0, id);
    id
}

/// Ends measurement `id` (the host prints its `bench events` line) and
/// prints `bench <name> id=<id> iterations=<n> total_cycles=<c>
/// per_op=<x.xx>` for `iterations` operations that took `cycles`.
pub fn end(name: &str, id: u64, iterations: u64, cycles: u64) {
    let _ = hypercall::bench_mark(1, id);
    let hundredths = cycles * 100 / iterations.max(1);
    println!(
        "bench {name} id={id} iterations={iterations} total_cycles={cycles} per_op={}.{:02}",
        hundredths / 100,
        hundredths % 100
    );
}
