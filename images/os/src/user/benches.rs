//! The benchmarks, each printing one `bench <name> id=.. iterations=..
//! total_cycles=.. per_op=..` line (the kernel prints it, in the format of
//! `guest_rt::bench`), right after the host's `bench events id=..` line
//! with the exits, faults and root switches the region cost.
//!
//! User code times itself with `rdtsc` between `bench_begin` and
//! `bench_end`; the page-table updates are timed by the kernel, which is
//! the one that makes those hypercalls.

use super::workloads::{COW_CHILDREN, cow_children, ping_pong_rounds};
use super::{
    Line, bench_begin, bench_end, cycles, exit, fork, getpid, kernel_bench, peek, pipe, pipe_free,
    poke, receive, sbrk, send, wait, yield_now,
};

const PAGE: u64 = 4096;

// Indices of crate::syscall::BENCH_NAMES.
const SYSCALL: usize = 0;
const PF_READ: usize = 1;
const PF_WRITE_AFTER_READ: usize = 2;
const CTXSW_HIT: usize = 3;
const CTXSW_MISS: usize = 4;
const COW_FAULT: usize = 5;
const PTE_UPDATE_SINGLE: usize = 6;
const PTE_UPDATE_BATCHED: usize = 7;
const FORK_EXIT_WAIT: usize = 8;
const COW_BENCH: usize = 9;
const PIPE_PINGPONG: usize = 10;

/// System calls timed: `getpid` through the direct-trap gate.
const SYSCALLS: u64 = 10_000;

/// `syscall`: [`SYSCALLS`] `getpid` calls between a `bench_mark` pair: the
/// host's events line must show no exits of the guest's own
/// (`guest_exits=0`: the gate never leaves the guest); host ticks that land
/// in the loop are counted apart, as many as the machine is slow.
pub fn syscall_loop() -> bool {
    let me = getpid();
    // Warm: the loop's code and stack are mapped before the timing.
    for _ in 0..100 {
        getpid();
    }
    let id = bench_begin();
    let start = cycles();
    let mut ok = true;
    for _ in 0..SYSCALLS {
        ok &= getpid() == me;
    }
    let took = cycles() - start;
    bench_end(id, SYSCALL, SYSCALLS, took);
    Line::new()
        .text("syscall: ")
        .num(SYSCALLS)
        .text(" getpid calls")
        .text(if ok { " ok" } else { " WRONG" })
        .print();
    ok
}

/// Every benchmark, in turn.
pub fn all() -> bool {
    let mut ok = syscall_loop();
    ok &= page_faults();
    ok &= context_switches(CTXSW_HIT, 2, 200);
    ok &= context_switches(CTXSW_MISS, 8, 50);
    ok &= cow_fault();
    ok &= kernel_bench(PTE_UPDATE_SINGLE, 1024);
    ok &= kernel_bench(PTE_UPDATE_BATCHED, 1024);
    ok &= fork_exit_wait();
    ok &= cow_bench();
    ok &= pipe_ping_pong();
    ok
}

/// Pages touched by the fault benchmarks.
const FAULT_PAGES: u64 = 256;

/// `pf_read`: the first read of a demand-zero page (the host reflects the
/// fault, the guest maps a zeroed page and reports it, the host fills it
/// read-only); `pf_write_after_read`: the first write to it after that
/// (the host alone: it sets dirty in our entry and makes its shadow
/// writable).
fn page_faults() -> bool {
    let base = sbrk((FAULT_PAGES * PAGE) as i64);
    let id = bench_begin();
    let start = cycles();
    let mut sum = 0;
    for p in 0..FAULT_PAGES {
        sum += peek(base + p * PAGE);
    }
    bench_end(id, PF_READ, FAULT_PAGES, cycles() - start);
    let id = bench_begin();
    let start = cycles();
    for p in 0..FAULT_PAGES {
        poke(base + p * PAGE, p);
    }
    bench_end(id, PF_WRITE_AFTER_READ, FAULT_PAGES, cycles() - start);
    let mut ok = sum == 0;
    for p in 0..FAULT_PAGES {
        ok &= peek(base + p * PAGE) == p;
    }
    sbrk(-((FAULT_PAGES * PAGE) as i64));
    ok
}

/// `ctxsw_hit` / `ctxsw_miss`: `procs` processes yielding to each other
/// round robin, `rounds` times each; one operation is one switch (a
/// `yield` system call, one `SetRoot` carrying the root and the kernel
/// stack, and the way back to user code). With 2 processes every root is
/// in the host's cache (a hit); with 8 and the default cache of 4 roots
/// most switches miss: plain LRU would miss every one, but the host's LRU
/// remembers the roots it evicted lately and, cycled over, keeps the older
/// ones, so one switch in three hits.
fn context_switches(name: usize, procs: u64, rounds: u64) -> bool {
    const WARM: u64 = 5;
    let mut forked = 0;
    for _ in 1..procs {
        match fork() {
            Some(0) => {
                for _ in 0..WARM + rounds + 2 {
                    yield_now();
                }
                exit(0)
            }
            Some(_) => forked += 1,
            None => break,
        }
    }
    for _ in 0..WARM {
        yield_now();
    }
    let id = bench_begin();
    let start = cycles();
    for _ in 0..rounds {
        yield_now();
    }
    let took = cycles() - start;
    bench_end(id, name, rounds * procs, took);
    let mut ok = forked == procs - 1;
    for _ in 0..forked {
        ok &= matches!(wait(), Some((_, 0)));
    }
    ok
}

/// Pages written by the copy-on-write fault benchmark.
const COW_FAULT_PAGES: u64 = 128;

/// `cow_fault`: the parent writes pages it shares with a child after a
/// fork (the child waits on a pipe meanwhile): the host reflects each
/// write, the guest copies the page and reports the new entry.
fn cow_fault() -> bool {
    let base = sbrk((COW_FAULT_PAGES * PAGE) as i64);
    for p in 0..COW_FAULT_PAGES {
        poke(base + p * PAGE, p);
    }
    let go = pipe();
    match fork() {
        Some(0) => {
            let _ = receive(go);
            let mut ok = true;
            for p in 0..COW_FAULT_PAGES {
                ok &= peek(base + p * PAGE) == p;
            }
            exit(if ok { 0 } else { 1 })
        }
        None => return false,
        Some(_) => {}
    }
    let id = bench_begin();
    let start = cycles();
    for p in 0..COW_FAULT_PAGES {
        poke(base + p * PAGE, p + 1);
    }
    bench_end(id, COW_FAULT, COW_FAULT_PAGES, cycles() - start);
    send(go, 1);
    let mut ok = matches!(wait(), Some((_, 0)));
    for p in 0..COW_FAULT_PAGES {
        ok &= peek(base + p * PAGE) == p + 1;
    }
    pipe_free(go);
    sbrk(-((COW_FAULT_PAGES * PAGE) as i64));
    ok
}

/// `fork_exit_wait`: a child that exits at once, forked and waited for.
fn fork_exit_wait() -> bool {
    const N: u64 = 50;
    let mut ok = true;
    let id = bench_begin();
    let start = cycles();
    for i in 0..N {
        match fork() {
            Some(0) => exit(i),
            Some(_) => ok &= matches!(wait(), Some((_, code)) if code == i),
            None => ok = false,
        }
    }
    bench_end(id, FORK_EXIT_WAIT, N, cycles() - start);
    ok
}

/// `cow_bench`: the copy-on-write workload, timed; one operation is one
/// child (fork, a fault per page of the buffer, exit, wait).
fn cow_bench() -> bool {
    let id = bench_begin();
    let start = cycles();
    let ok = cow_children(COW_CHILDREN);
    bench_end(id, COW_BENCH, COW_CHILDREN, cycles() - start);
    ok
}

/// `pipe_pingpong`: one round trip of a word through two pipes.
fn pipe_ping_pong() -> bool {
    const N: u64 = 200;
    let id = bench_begin();
    let start = cycles();
    let (ok, rounds) = ping_pong_rounds(N);
    bench_end(id, PIPE_PINGPONG, rounds.max(1), cycles() - start);
    ok
}
