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
use guest_abi::hypercall::Number;

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

/// The host's share of a guest's exits, by kind: cycles from the
/// switcher's return to its next call into the same guest (the exit's
/// handling and the next entry's preparation). Under `-icount` these are
/// instructions: where the host's time goes, per kind of exit.
#[derive(Clone, Debug, Default)]
pub struct HostShares {
    /// Per kind ([`ExitKind::index`]): exits counted and cycles spent.
    by_kind: [(u64, u64); ExitKind::COUNT],
}

/// What a guest exit was, for [`HostShares`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// A hypercall, by number.
    Hypercall(Number),
    /// `int 0x81` with a number the host does not know.
    UnknownHypercall,
    /// A page fault.
    PageFault,
    /// Any other exception.
    Exception,
    /// A host interrupt (the tick).
    Interrupt,
}

impl ExitKind {
    const COUNT: usize = Number::ALL.len() + 4;

    /// Classifies the exit whose trap is in `regs`.
    pub fn of(regs: &switcher::GuestRegs) -> Self {
        match regs.vector as u8 {
            v if v == guest_abi::hypercall::VECTOR => {
                Number::from_raw(regs.rax).map_or(Self::UnknownHypercall, Self::Hypercall)
            }
            14 => Self::PageFault,
            0..=31 => Self::Exception,
            _ => Self::Interrupt,
        }
    }

    fn index(self) -> usize {
        let n = Number::ALL.len();
        match self {
            Self::Hypercall(number) => number as usize,
            Self::UnknownHypercall => n,
            Self::PageFault => n + 1,
            Self::Exception => n + 2,
            Self::Interrupt => n + 3,
        }
    }

    fn all() -> impl Iterator<Item = Self> {
        Number::ALL.into_iter().map(Self::Hypercall).chain([
            Self::UnknownHypercall,
            Self::PageFault,
            Self::Exception,
            Self::Interrupt,
        ])
    }
}

impl core::fmt::Display for ExitKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Hypercall(number) => write!(f, "hypercall:{number:?}"),
            Self::UnknownHypercall => f.write_str("hypercall:unknown"),
            Self::PageFault => f.write_str("page_fault"),
            Self::Exception => f.write_str("exception"),
            Self::Interrupt => f.write_str("interrupt"),
        }
    }
}

impl HostShares {
    /// Adds one exit of `kind` that cost `cycles` in the host.
    pub fn add(&mut self, kind: ExitKind, cycles: u64) {
        let (exits, total) = &mut self.by_kind[kind.index()];
        *exits += 1;
        *total += cycles;
    }

    /// Prints one `bench host` line per kind of exit guest `name` made.
    pub fn report(&self, name: &str) {
        for kind in ExitKind::all() {
            let (exits, cycles) = self.by_kind[kind.index()];
            if let Some(per_exit) = cycles.checked_div(exits) {
                println!(
                    "bench host {name} {kind} exits={exits} host_cycles={cycles} per_exit={per_exit}"
                );
            }
        }
    }
}
