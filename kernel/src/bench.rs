//! The native side of the benchmarks: what the host measures on itself, in
//! the same boot, to set each guest figure beside.
//!
//! Benchmarks report two clocks (`cargo xtask bench` boots twice): the
//! plain TSC, which under QEMU's TCG is the emulator's wall time, and, in a
//! boot with `-icount shift=0`, a TSC that advances exactly once per
//! instruction retired. Either way each figure here is a ratio's
//! denominator: a guest's hypercall round trip against the host's own
//! `int` + `iretq` round trip in ring 0.
//!
//! Every result is printed as one `bench ...` line that `xtask` parses.

use crate::apic::rdtsc;
use crate::interrupts::BENCH_VECTOR;
use crate::println;
use core::arch::global_asm;

global_asm!(
    r#"
    .section .text.bench, "ax"
    .global bare_iretq
bare_iretq:
    iretq
"#
);

unsafe extern "C" {
    /// A handler that returns at once (`interrupts` points `BENCH_VECTOR` at it).
    pub static bare_iretq: u8;
}

/// Round trips per measurement.
const ITERATIONS: u64 = 10_000;

/// Measures the native analogues and prints them.
pub fn run_native() {
    let cycles = int_round_trips(ITERATIONS);
    println!(
        "bench native int_iretq iterations={ITERATIONS} total_cycles={cycles} per_op={}",
        cycles / ITERATIONS
    );
    let cycles = cr3_writes(ITERATIONS);
    println!(
        "bench native cr3_write iterations={ITERATIONS} total_cycles={cycles} per_op={}",
        cycles / ITERATIONS
    );
}

/// `n` writes of CR3 with its own value: the native core of a context
/// switch (every non-global TLB entry dropped; no PCID here), set beside
/// the guest's `ctxsw_*`.
fn cr3_writes(n: u64) -> u64 {
    let start = rdtsc();
    for _ in 0..n {
        // SAFETY: reloading CR3 with the value it holds changes no mapping;
        // it only flushes the non-global TLB entries.
        unsafe {
            core::arch::asm!(
                "mov {t}, cr3",
                "mov cr3, {t}",
                t = out(reg) _,
                options(nostack, preserves_flags)
            )
        };
    }
    rdtsc() - start
}

/// `n` round trips through `int BENCH_VECTOR` and its bare `iretq`.
fn int_round_trips(n: u64) -> u64 {
    let start = rdtsc();
    for _ in 0..n {
        // SAFETY: the gate at BENCH_VECTOR returns at once with `iretq`,
        // restoring every register and flag.
        unsafe { core::arch::asm!("int {v}", v = const BENCH_VECTOR) };
    }
    rdtsc() - start
}

/// The host's share of guest exits of one kind: cycles from the return of
/// the switcher to its next call.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostShare {
    /// Exits counted.
    pub exits: u64,
    /// Cycles spent in the host for them.
    pub cycles: u64,
}

impl HostShare {
    /// Prints the share for hypercall exits of guest `name`, if any.
    pub fn report(&self, name: &str) {
        if self.exits > 0 {
            println!(
                "bench host {name} nop_hypercall_exits={} host_cycles={} per_exit={}",
                self.exits,
                self.cycles,
                self.cycles / self.exits
            );
        }
    }
}
