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
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let _ = hypercall::bench_mark(0, id);
    let start = time::cycles();
    for _ in 0..iterations {
        op();
    }
    let cycles = time::cycles() - start;
    let _ = hypercall::bench_mark(1, id);
    let hundredths = cycles * 100 / iterations.max(1);
    println!(
        "bench {name} id={id} iterations={iterations} total_cycles={cycles} per_op={}.{:02}",
        hundredths / 100,
        hundredths % 100
    );
    cycles
}
