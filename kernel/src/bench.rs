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
use crate::memory::paging::{HostPageRights, map_host_page, set_present};
use crate::memory::{self, MemoryError};
use crate::println;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_abi::hypercall::Number;
use host::addr::HostPhysAddr;
use host::guest::{Exit, ExitEvents};

global_asm!(
    r#"
    .section .text.bench, "ax"
    .global bare_iretq
bare_iretq:
    iretq

/* enter_ring3_loop(rdi = iterations, rsi = ring-3 rip, rdx = ring-3 rsp,
 * rcx = ring-3 cs, r8 = ring-3 ss) -> rax = cycles: runs the ring-3 loop
 * below and comes back when it raises USER_RETURN_VECTOR. */
    .global enter_ring3_loop
enter_ring3_loop:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, ring3_saved_rsp(%rip)
    push %r8
    push %rdx
    pushq $2            /* RFLAGS: interrupts off, so no tick lands inside */
    push %rcx
    push %rsi
    iretq

/* The USER_RETURN_VECTOR gate: back on the host's stack, as if
 * enter_ring3_loop returned (rax holds the loop's cycles). */
    .global ring3_return
ring3_return:
    mov ring3_saved_rsp(%rip), %rsp
    mov ${kernel_data}, %ecx
    mov %ecx, %ss
    mov %ecx, %ds
    mov %ecx, %es
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .bss.bench, "aw", @nobits
    .balign 8
ring3_saved_rsp:
    .skip 8

/* The ring-3 loop, on a page of its own that is mapped for ring 3:
 * rdi round trips through `int USER_INT_VECTOR`, timed with rdtsc. */
    .section .text.bench_user, "ax"
    .balign 4096
    .global ring3_loop
ring3_loop:
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %r8
1:  int ${user_int}
    dec %rdi
    jnz 1b
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    sub %r8, %rax
    int ${user_return}
2:  jmp 2b
    .balign 4096
"#,
    kernel_data = const crate::gdt::KERNEL_DATA_SELECTOR,
    user_int = const USER_INT_VECTOR,
    user_return = const USER_RETURN_VECTOR,
    options(att_syntax)
);

unsafe extern "C" {
    /// A handler that returns at once (`interrupts` points `BENCH_VECTOR`
    /// and `USER_INT_VECTOR` at it).
    pub static bare_iretq: u8;
    /// The `USER_RETURN_VECTOR` handler.
    pub static ring3_return: u8;
    static ring3_loop: u8;
    fn enter_ring3_loop(iterations: u64, rip: u64, rsp: u64, cs: u64, ss: u64) -> u64;
}

/// `int` from ring 3 to this vector returns at once (gate privilege 3).
pub const USER_INT_VECTOR: u8 = 0x82;
/// `int` from ring 3 to this vector ends the ring-3 loop (gate privilege 3).
pub const USER_RETURN_VECTOR: u8 = 0x83;

/// Where the host maps its ring-3 loop and stack (the lower half is
/// otherwise empty in the host's tables).
const RING3_CODE: u64 = 0x4000_0000;
const RING3_STACK: u64 = 0x4010_0000;
/// The page the native page-fault benchmark faults on.
const FAULT_PAGE: u64 = 0x4020_0000;

/// The address the #PF handler maps on demand while the page-fault
/// benchmark runs (0 otherwise).
static FAULT_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// Round trips per measurement.
const ITERATIONS: u64 = 10_000;

/// Set by `bench=exits`: the host's costs per exit and per frame are
/// measured and printed only then.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Measures the native analogues and prints them (`bench=on` or
/// `bench=exits`); with `watch_exits`, the run loop will also watch every
/// guest exit ([`HostShares`]).
pub fn run_native(watch_exits: bool) {
    ENABLED.store(watch_exits, Ordering::Relaxed);
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
    let measured = map_bench_pages().and_then(|()| {
        Ok([
            ("int_iretq_ring3", ring3_round_trips(ITERATIONS)),
            ("page_fault", page_faults(ITERATIONS / 10)?),
            ("pte_write_invlpg", pte_writes(ITERATIONS / 10)?),
        ])
    });
    match measured {
        Ok(results) => {
            for (name, (iterations, cycles)) in results {
                println!(
                    "bench native {name} iterations={iterations} total_cycles={cycles} per_op={}",
                    cycles / iterations.max(1)
                );
            }
        }
        Err(e) => log::warn!("bench: native ring-3 and page-fault analogues skipped: {e}"),
    }
}

/// Maps the ring-3 loop's code and stack, and the page the fault benchmark
/// uses, in the host's own tables.
fn map_bench_pages() -> Result<(), MemoryError> {
    let code = HostPhysAddr::new((&raw const ring3_loop) as u64);
    map_host_page(RING3_CODE, code, HostPageRights::UserReadExecute)?;
    let no_frame = MemoryError::PageTables("no frame for the benchmark");
    let stack = memory::alloc_frame().ok_or(no_frame)?;
    map_host_page(RING3_STACK, stack, HostPageRights::UserReadWrite)?;
    let page =
        memory::alloc_frame().ok_or(MemoryError::PageTables("no frame for the benchmark"))?;
    map_host_page(FAULT_PAGE, page, HostPageRights::ReadWrite)
}

/// `n` round trips from ring 3 through `int USER_INT_VECTOR` to ring 0 and
/// back: the native analogue of a guest's system call.
fn ring3_round_trips(n: u64) -> (u64, u64) {
    let selectors = crate::gdt::selectors();
    // SAFETY: the loop's page and stack are mapped for ring 3 just above;
    // it only loops and raises the two gates, and USER_RETURN_VECTOR's
    // handler restores everything `enter_ring3_loop` saved.
    let cycles = unsafe {
        enter_ring3_loop(
            n,
            RING3_CODE,
            RING3_STACK + 4096,
            u64::from(selectors.user_code.0),
            u64::from(selectors.user_data.0),
        )
    };
    (n, cycles)
}

/// `n` demand faults: the page is made not present, touched, and the #PF
/// handler ([`fix_bench_fault`]) maps it back: the native analogue of a
/// guest's shadow page fault (taken, fixed in the kernel, retried).
fn page_faults(n: u64) -> Result<(u64, u64), MemoryError> {
    let page = FAULT_PAGE as *mut u64;
    FAULT_ADDRESS.store(FAULT_PAGE, Ordering::SeqCst);
    let start = rdtsc();
    for _ in 0..n {
        set_present(FAULT_PAGE, false)?;
        // SAFETY: the page is ours; the read faults and the handler maps it.
        unsafe { core::ptr::read_volatile(page) };
    }
    let cycles = rdtsc() - start;
    FAULT_ADDRESS.store(0, Ordering::SeqCst);
    Ok((n, cycles))
}

/// `n` page-table entry updates with their `invlpg`: the native analogue of
/// a guest's set-entry hypercall.
fn pte_writes(n: u64) -> Result<(u64, u64), MemoryError> {
    let start = rdtsc();
    for i in 0..n {
        set_present(FAULT_PAGE, i % 2 == 0)?;
    }
    Ok((n, rdtsc() - start))
}

/// Called by the #PF handler: if the fault is the benchmark's, maps the
/// page back and says so (the faulting access is then retried).
pub fn fix_bench_fault(cr2: u64) -> bool {
    let address = FAULT_ADDRESS.load(Ordering::Relaxed);
    address != 0 && cr2 & !0xfff == address && set_present(address, true).is_ok()
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
///
/// Beside them, the guest's own share: the cycles of its turns (from the
/// first entry to the turn's end) less the host's shares in them, which
/// leaves exactly the time from each entry to its exit (the guest's code,
/// and the world switch both ways). The network figures set it against
/// the host's per packet. It is kept at the turns' edges only, so an exit
/// costs no more than before (the benchmarks time exits too).
#[derive(Clone, Debug, Default)]
pub struct HostShares {
    /// Per kind ([`ExitKind::index`]): exits counted and cycles spent.
    by_kind: [(u64, u64); ExitKind::COUNT],
    /// The exit being handled, and the cycle the switcher returned at.
    current: Option<(ExitKind, u64)>,
    /// The cycle of the current turn's first entry.
    turn_started: Option<u64>,
    /// Cycles of the guest's turns, from the first entry to the end.
    turn_cycles: u64,
}

impl ExitEvents for HostShares {
    fn exit(&mut self, exit: Exit) {
        self.current = Some((ExitKind::of(exit), rdtsc()));
    }

    fn entering(&mut self) {
        let now = rdtsc();
        match self.current.take() {
            Some((kind, at)) => self.add(kind, now - at),
            // Nothing to close: the turn's first entry.
            None => self.turn_started = Some(now),
        }
    }

    fn turn_over(&mut self) {
        let now = rdtsc();
        if let Some((kind, at)) = self.current.take() {
            self.add(kind, now - at);
        }
        if let Some(started) = self.turn_started.take() {
            self.turn_cycles += now - started;
        }
    }
}

/// Whether this boot watches its exits (`bench=exits`): the run loop then
/// does so with [`HostShares`].
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
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

    /// The kind of `exit`.
    pub fn of(exit: Exit) -> Self {
        match exit {
            Exit::Hypercall(number) => number.map_or(Self::UnknownHypercall, Self::Hypercall),
            Exit::PageFault { .. } => Self::PageFault,
            Exit::GeneralProtection | Exit::Nmi | Exit::Fatal(_) | Exit::Exception { .. } => {
                Self::Exception
            }
            Exit::HostTimer | Exit::HostInterrupt(_) => Self::Interrupt,
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

    /// Prints one `bench host` line per kind of exit guest `name` made,
    /// and the guest's own share as `bench net guest_code cycles=<c> of
    /// <name>` (with `bench=exits`; `cargo xtask bench` reads
    /// it for the network's split per packet).
    pub fn report(&self, name: &str) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let host: u64 = self.by_kind.iter().map(|&(_, cycles)| cycles).sum();
        let in_guest = self.turn_cycles.saturating_sub(host);
        println!("bench net guest_code cycles={in_guest} of {name}");
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
