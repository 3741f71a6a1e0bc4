//! Threads, and the scheduler that shares the vCPUs between them.
//!
//! Each thread has a stack and a thread-local block of its own, both from
//! the heap, and a record here. The ready threads wait in one FIFO queue
//! and run in turn, on whichever vCPU takes them next:
//!
//! - **voluntarily** they give the vCPU up when they block (a futex, a
//!   join, a sleep), yield or end: [`switch_unless`] saves only what the
//!   System V ABI says a call preserves (the callee-saved registers, the
//!   x87 control word and MXCSR's control bits) and loads the next
//!   thread's;
//! - **preemptively** the virtual timer takes it from them after a time
//!   slice ([`SLICE_NS`]), armed only while another thread is ready: the
//!   trap path (guest-rt's, which on this target also keeps the x87/SSE
//!   registers with `fxsave64`) has already saved everything of the
//!   interrupted thread on its own stack, so the handler switches the
//!   same way, and the thread resumes inside it later.
//!
//! Each vCPU's one-shot timer serves its own slice and its own sleepers'
//! deadlines (those of the threads that blocked on it): it is armed for
//! whichever comes first, and only re-armed when that changes. When no
//! thread is ready a vCPU goes to its idle context (the boot stack on
//! vCPU 0, guest-rt's static stack on the others), which halts until its
//! timer or another vCPU wakes it; when no thread is ready, none has a
//! deadline and no vCPU runs one, nothing can ever wake one, and the guest
//! ends with a report (exit code 105).
//!
//! # Several vCPUs
//!
//! Everything here is one [`IrqLock`]: the threads, the run queue, the
//! futex waiters, and each vCPU's own part ([`Cpu`]: its running thread,
//! idle context, slice and armed timer, found by `smp::this_vcpu`). A
//! switch holds it from the moment the running thread's state is decided
//! until its registers are saved, so no other vCPU resumes a thread whose
//! context is still being written: the context that switches away takes
//! the lock, and the one resumed lets it go ([`after_switch`]). The same
//! hold covers a futex waiter's look at its word and its going to sleep,
//! so a wake from another vCPU cannot slip between them.
//!
//! A vCPU with nothing to run says so ([`Scheduler::idle`]) in the same
//! hold in which it found the run queue empty, then halts, its timer armed
//! for its own sleepers only, or not at all. Whoever makes threads ready
//! (a futex wake, a thread's end for its joiners, a spawn, a deadline
//! handled, on any vCPU, in a thread or a handler) takes one idle vCPU out
//! of that set per ready thread and, once it has let go of the lock, sends
//! each an interrupt ([`WAKE_VECTOR`], `send_ipi`) whose handler does
//! nothing: the halt ends and the idle loop looks at the queue again. No
//! wake-up is lost: the idle vCPU halts with its virtual interrupts off,
//! and a halt returns at once for an interrupt already pending. The IPI
//! goes out after the lock because a `SendIpi` ends the sender's turn on
//! the host: the woken vCPU would spin on a lock whose holder is not
//! running. Only idle vCPUs are sent one, once per halt; busy ones find
//! the ready threads when their thread blocks or its slice ends.
//!
//! An idle vCPU with no deadline of its own halts with nothing but an IPI
//! to wake it, which the host allows while another vCPU is awake. The
//! guest is deadlocked when a vCPU going idle finds no thread ready, none
//! with a deadline and no other vCPU running one: only the last one to go
//! idle can see that, so one vCPU reports it.
//!
//! Everything here runs with virtual interrupts off, and switches happen
//! only then: each side of a switch puts the flag back as it had it.

use crate::smp::{self, MAX_VCPUS};
use crate::sync::IrqLock;
use crate::{console, memory, process, time, tls};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use guest_abi::hypercall::TIMER_VECTOR;
use guest_rt::traps::{self, Delivery, TrapFrame};
use guest_rt::{exit_code, hypercall, irq};
use hermit_abi::errno::{EAGAIN, EDEADLK, ESRCH, ETIMEDOUT};

/// A thread id (`hermit_abi::Tid`); 0 means none, so they start at 1.
pub type Tid = hermit_abi::Tid;

/// How long a thread runs before the timer lets the next ready one in.
pub const SLICE_NS: u64 = 10_000_000;

/// The virtual interrupt that wakes an idle vCPU (its handler does
/// nothing): clear of the timer's (32) and the devices' (33-40).
pub const WAKE_VECTOR: u8 = 48;

const _: () = assert!(guest_abi::shared::is_virtual_irq(WAKE_VECTOR));
const _: () = assert!(
    WAKE_VECTOR > TIMER_VECTOR
        && WAKE_VECTOR - guest_abi::virtio::FIRST_DEVICE_VECTOR
            >= guest_abi::virtio::MAX_DEVICES as u8
);
// The idle set is one bit per vCPU.
const _: () = assert!(MAX_VCPUS <= 64);

/// The smallest stack a thread is given, whatever it asks for.
const MIN_STACK_BYTES: usize = 32 * 1024;

/// Stacks are aligned as the ABI wants the stack pointer at a call.
const STACK_ALIGN: usize = 16;

/// MXCSR as at reset (all exceptions masked), for a new thread.
const INITIAL_MXCSR: u32 = 0x1f80;
/// The x87 control word as after `fninit`, for a new thread.
const INITIAL_FPU_CONTROL: u32 = 0x037f;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Running,
    Sleeping,
    /// On the futex at this address.
    Waiting(usize),
    /// Until this thread has finished.
    Joining(Tid),
    Finished,
}

/// Why a blocked thread was made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wakeup {
    Signalled,
    TimedOut,
}

/// A thread's stack, from the heap.
struct Stack {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: plain memory, owned by one thread record.
unsafe impl Send for Stack {}

impl Stack {
    /// A stack of at least `bytes`; `None` if the heap has no room.
    fn new(bytes: usize) -> Option<Stack> {
        let size = bytes
            .max(MIN_STACK_BYTES)
            .checked_next_multiple_of(STACK_ALIGN)?;
        let layout = Layout::from_size_align(size, STACK_ALIGN).ok()?;
        let base = memory::allocate(layout)?;
        Some(Stack { base, layout })
    }

    /// Lays out the frame [`rguest_switch_context`] pops for a thread that
    /// has never run: control words, six callee-saved registers (`entry`
    /// in r12, `argument` in r13) and the trampoline as return address, so
    /// that after its `ret` the stack pointer is 16-aligned, as before a
    /// call. Returns the stack pointer to save.
    fn first_frame(&self, entry: extern "C" fn(usize), argument: usize) -> u64 {
        let top = self.base.as_ptr() as u64 + self.layout.size() as u64;
        let frame = top - 80;
        let words: [u64; 8] = [
            u64::from(INITIAL_FPU_CONTROL) << 32 | u64::from(INITIAL_MXCSR),
            0,                     // r15
            0,                     // r14
            argument as u64,       // r13
            entry as usize as u64, // r12
            0,                     // rbx
            0,                     // rbp: ends backtraces
            rguest_thread_trampoline as *const () as u64,
        ];
        // SAFETY: the frame's 64 bytes lie inside the stack (80 bytes below
        // its 16-aligned top), which nothing else uses yet.
        unsafe { (frame as *mut [u64; 8]).write(words) };
        frame
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the allocation `new` made, with its layout; the scheduler
        // drops a stack only after its thread switched away for good.
        unsafe { memory::deallocate(self.base, self.layout) };
    }
}

struct Thread {
    /// The stack pointer while it is not running.
    saved_rsp: u64,
    state: State,
    /// When to wake it if nothing else does (host nanoseconds).
    deadline: Option<u64>,
    /// The vCPU whose timer serves the deadline: the one it blocked on.
    home: usize,
    wakeup: Wakeup,
    /// Taken (to be freed) when it finishes.
    stack: Option<Stack>,
    tls: Option<tls::Block>,
}

/// One vCPU's part of the scheduler.
struct Cpu {
    /// The running thread; `None` in the idle context.
    current: Option<Tid>,
    /// The idle context's stack pointer while a thread runs.
    idle_rsp: u64,
    /// When the running thread's slice ends.
    slice_end: u64,
    /// The deadline this vCPU's timer is armed for.
    armed: Option<u64>,
    /// Why the thread it last switched to was made ready (for that thread
    /// to read once it runs, without looking its record up again).
    wakeup: Wakeup,
    /// Stacks and blocks of threads that finished here, freed after the
    /// switch away from them (a thread cannot free the stack it runs on).
    graveyard: Vec<(Option<Stack>, Option<tls::Block>)>,
    /// The idle vCPUs (a bit each) this one must wake once it lets go of
    /// the lock.
    wake: u64,
}

impl Cpu {
    const fn new() -> Self {
        Cpu {
            current: None,
            idle_rsp: 0,
            slice_end: 0,
            armed: None,
            wakeup: Wakeup::Signalled,
            graveyard: Vec::new(),
            wake: 0,
        }
    }
}

struct Scheduler {
    threads: BTreeMap<Tid, Box<Thread>>,
    ready: VecDeque<Tid>,
    /// Threads waiting on futexes, oldest first (woken in that order).
    futex_waiters: VecDeque<Tid>,
    next_tid: Tid,
    /// Each vCPU's own part, by number.
    cpus: [Cpu; MAX_VCPUS],
    /// The vCPUs (a bit each) halted in their idle loop, or about to be,
    /// that nobody has woken since: set by the vCPU when it finds nothing
    /// ready, cleared by it when it looks again or by whoever wakes it.
    idle: u64,
    /// The number of the vCPU that holds the lock: set by whoever takes it
    /// ([`here`]), so that [`Scheduler::cpu`] asks the GS base once per
    /// hold, not at every use.
    holder: usize,
}

static SCHEDULER: IrqLock<Scheduler> = IrqLock::new(Scheduler {
    threads: BTreeMap::new(),
    ready: VecDeque::new(),
    futex_waiters: VecDeque::new(),
    next_tid: 1,
    cpus: [const { Cpu::new() }; MAX_VCPUS],
    idle: 0,
    holder: 0,
});

/// The scheduler, just locked by this vCPU, marked as held by it.
fn here(scheduler: &mut Scheduler) -> &mut Scheduler {
    scheduler.holder = smp::this_vcpu();
    scheduler
}

/// How many times each vCPU switched to a thread (for the report at the
/// end). Each vCPU writes only its own, with interrupts off.
static TURNS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// How many times each vCPU halted in its idle loop (an exit each, and
/// most often another for what ends it: the timer, or a wake-up).
static IDLE_HALTS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// What a switch needs, decided with the scheduler's state in hand and
/// carried out after letting go of it.
struct Switch {
    save_to: *mut u64,
    load_rsp: u64,
    thread_pointer: Option<u64>,
}

impl Scheduler {
    /// The part of the vCPU that holds the lock.
    fn cpu(&mut self) -> &mut Cpu {
        &mut self.cpus[self.holder]
    }

    fn current_thread(&mut self) -> &mut Thread {
        let tid = self.cpu().current.expect("only a thread calls this");
        self.threads
            .get_mut(&tid)
            .expect("the current thread has a record")
    }

    /// Where the running context's stack pointer goes when it stops.
    fn current_slot(&mut self) -> *mut u64 {
        match self.cpu().current {
            Some(_) => &raw mut self.current_thread().saved_rsp,
            None => &raw mut self.cpu().idle_rsp,
        }
    }

    /// Whether a vCPU other than the holder runs a thread.
    fn busy_elsewhere(&self) -> bool {
        let me = self.holder;
        self.cpus
            .iter()
            .enumerate()
            .any(|(vcpu, cpu)| vcpu != me && cpu.current.is_some())
    }

    /// Puts the running thread at the back of the ready queue.
    fn requeue_current(&mut self) {
        if let Some(tid) = self.cpu().current {
            self.current_thread().state = State::Ready;
            self.ready.push_back(tid);
        }
    }

    /// Marks the running thread blocked in `state` until `deadline`.
    fn block_current(&mut self, state: State, deadline: Option<u64>) {
        let home = self.holder;
        let thread = self.current_thread();
        thread.state = state;
        thread.deadline = deadline;
        thread.home = home;
        thread.wakeup = Wakeup::Signalled;
    }

    /// Makes `tid` ready, for `why`.
    fn wake(&mut self, tid: Tid, why: Wakeup) {
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        if matches!(thread.state, State::Waiting(_)) {
            self.futex_waiters.retain(|&waiter| waiter != tid);
        }
        thread.state = State::Ready;
        thread.deadline = None;
        thread.wakeup = why;
        self.ready.push_back(tid);
    }

    /// Wakes every thread whose deadline has come.
    fn wake_expired(&mut self, now: u64) {
        let expired: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(_, thread)| thread.deadline.is_some_and(|at| at <= now))
            .map(|(&tid, _)| tid)
            .collect();
        for tid in expired {
            self.wake(tid, Wakeup::TimedOut);
        }
    }

    /// Whether any thread waits with a deadline (whichever vCPU's).
    fn any_deadline(&self) -> bool {
        self.threads
            .values()
            .any(|thread| thread.deadline.is_some())
    }

    /// The earliest deadline of the threads that blocked on this vCPU.
    fn own_deadline(&self) -> Option<u64> {
        self.threads
            .values()
            .filter(|thread| thread.home == self.holder)
            .filter_map(|thread| thread.deadline)
            .min()
    }

    /// Makes sure this vCPU's timer fires no later than the end of the
    /// slice (if another thread is ready to take over) or the earliest
    /// deadline of its own sleepers.
    ///
    /// A hypercall only when that is earlier than what is armed: a timer
    /// that is no longer wanted, or wanted later, is left to fire, and the
    /// handler finds nothing to do and arms the next one. Threads that hand
    /// the CPU to each other through futexes thus switch without exits.
    fn rearm(&mut self, now: u64) {
        let running = self.cpu().current.is_some();
        let slice = (running && !self.ready.is_empty()).then_some(self.cpu().slice_end);
        let Some(wanted) = slice.into_iter().chain(self.own_deadline()).min() else {
            return;
        };
        let cpu = self.cpu();
        if cpu.armed.is_some_and(|armed| armed <= wanted) {
            return;
        }
        // The host refuses nothing but nonsense; if it did, the worst is a
        // late preemption or wake-up.
        let _ = hypercall::set_timer(wanted.saturating_sub(now).max(1));
        cpu.armed = Some(wanted);
    }

    /// Takes an idle vCPU out of [`Scheduler::idle`] for each ready thread
    /// (this one first, if it is idle: it is in a handler of its idle loop,
    /// which looks again when the handler returns), and notes the others
    /// to be woken once the lock is let go.
    fn wake_idle(&mut self) {
        let mut wanted = self.ready.len();
        let me = 1u64 << self.holder;
        if wanted > 0 && self.idle & me != 0 {
            self.idle &= !me;
            wanted -= 1;
        }
        while wanted > 0 && self.idle != 0 {
            let lowest = self.idle & self.idle.wrapping_neg();
            self.idle &= !lowest;
            self.cpu().wake |= lowest;
            wanted -= 1;
        }
    }

    /// What a hold that switches nothing does last: the idle vCPUs to wake
    /// for the threads now ready, for [`send_wakes`] after the let-go.
    fn wakes_owed(&mut self) -> u64 {
        self.wake_idle();
        core::mem::take(&mut self.cpu().wake)
    }

    /// Takes the next ready thread (or the idle context) in place of the
    /// running one, whose state the caller has already set. `None` when
    /// that is the running one itself.
    fn plan_switch(&mut self, now: u64) -> Option<Switch> {
        let next = self.ready.pop_front();
        let save_to = self.current_slot();
        let cpu = self.cpu();
        let previous = cpu.current;
        cpu.current = next;
        cpu.slice_end = now + SLICE_NS;
        let (load_rsp, thread_pointer, wakeup) = match next {
            Some(_) => {
                let thread = self.current_thread();
                thread.state = State::Running;
                let thread_pointer = thread.tls.as_ref().map(|block| block.thread_pointer);
                (thread.saved_rsp, thread_pointer, thread.wakeup)
            }
            None => (self.cpu().idle_rsp, None, Wakeup::Signalled),
        };
        self.cpu().wakeup = wakeup;
        self.rearm(now);
        self.wake_idle();
        if next == previous {
            return None;
        }
        if next.is_some() {
            count(&TURNS, self.holder);
        }
        Some(Switch {
            save_to,
            load_rsp,
            thread_pointer,
        })
    }
}

/// Counts one more event of `counts` (a switch to a thread, an idle halt)
/// on vCPU `vcpu` (the caller's).
fn count(counts: &[AtomicU64; MAX_VCPUS], vcpu: usize) {
    let count = &counts[vcpu];
    // Only this vCPU writes its count: no atomic read-modify-write needed.
    count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Prints how many thread turns each vCPU gave and how often it halted
/// idle, when there are several (`hermit: vcpu 0 ran 37 thread turns (4
/// idle halts), vcpu 1 ran 35 (9)`). Allocates nothing: it may run when
/// the heap is exhausted.
pub fn report_turns() {
    let vcpus = smp::running();
    if vcpus > 1 {
        console::report(format_args!("{}", Turns(vcpus)));
    }
}

/// The turns of the first so many vCPUs, as [`report_turns`] prints them.
struct Turns(usize);

impl core::fmt::Display for Turns {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (vcpu, (turns, halts)) in TURNS.iter().zip(&IDLE_HALTS).take(self.0).enumerate() {
            let turns = turns.load(Ordering::Relaxed);
            let halts = halts.load(Ordering::Relaxed);
            match vcpu {
                0 => write!(f, "vcpu 0 ran {turns} thread turns ({halts} idle halts)")?,
                _ => write!(f, ", vcpu {vcpu} ran {turns} ({halts})")?,
            }
        }
        Ok(())
    }
}

// The switch itself, and the first instructions of a new thread.
core::arch::global_asm!(
    ".pushsection .text.rguest_switch, \"ax\"",
    ".globl rguest_switch_context",
    // rdi: where to save this context's stack pointer; rsi: the stack
    // pointer of the context to resume.
    "rguest_switch_context:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    sub rsp, 8",
    "    stmxcsr [rsp]",
    "    fnstcw [rsp + 4]",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    ldmxcsr [rsp]",
    "    fldcw [rsp + 4]",
    "    add rsp, 8",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    "",
    // A new thread's first `ret` lands here, with its entry and argument
    // in r12 and r13 (Stack::first_frame).
    ".globl rguest_thread_trampoline",
    "rguest_thread_trampoline:",
    "    mov rdi, r12",
    "    mov rsi, r13",
    "    call {thread_main}",
    "    ud2",
    ".popsection",
    thread_main = sym thread_main,
);

unsafe extern "C" {
    /// Saves the callee-saved state on this stack and its stack pointer at
    /// `save_to`, then resumes the context whose stack pointer is
    /// `load_rsp`. Returns when something switches back.
    fn rguest_switch_context(save_to: *mut u64, load_rsp: u64);
    /// Where a new thread starts (never called from Rust).
    fn rguest_thread_trampoline();
}

/// What [`switch_unless`] did.
enum Turn<T> {
    /// The running context goes on, with the decision's answer.
    Stayed(T),
    /// It gave its vCPU up and runs again now (perhaps on another vCPU),
    /// made ready for this reason.
    Resumed(Wakeup),
}

/// With the scheduler's lock held, `decide` either answers (the running
/// context goes on) or sets the running thread's state and says `None`:
/// then the vCPU goes to the next ready thread, or its idle context, and
/// this returns when this context runs again. The lock is held from the
/// decision until this context's registers are saved (see "Several
/// vCPUs"). Virtual interrupts must be off.
fn switch_unless<T>(decide: impl FnOnce(&mut Scheduler) -> Option<T>) -> Turn<T> {
    let plan = {
        // SAFETY: interrupts are off (the caller's duty) and this vCPU
        // holds no scheduler lock (nothing here nests); the reference ends
        // with this block, before the switch.
        let scheduler = here(unsafe { SCHEDULER.hold() });
        if let Some(answer) = decide(scheduler) {
            let wakes = scheduler.wakes_owed();
            // SAFETY: taken just above; the reference is not used again.
            unsafe { SCHEDULER.let_go() };
            send_wakes(wakes);
            return Turn::Stayed(answer);
        }
        scheduler.plan_switch(time::now_ns())
    };
    if let Some(plan) = plan {
        if let Some(thread_pointer) = plan.thread_pointer {
            tls::set_thread_pointer(thread_pointer);
        }
        // SAFETY: `save_to` is the running context's slot (in a boxed
        // thread record or the static scheduler, both stable), and
        // `load_rsp` a stack pointer saved here or laid out by
        // `first_frame`, on a stack still alive (finished threads are never
        // resumed). Interrupts are off and the scheduler's lock is held, so
        // nothing on this vCPU or another touches either until the switch
        // is done; the resumed context lets the lock go.
        unsafe { rguest_switch_context(plan.save_to, plan.load_rsp) };
    }
    Turn::Resumed(after_switch())
}

/// What a context does first when it runs again (or a new thread first of
/// all): lets go of the scheduler's lock, which the context that switched
/// to it held, wakes the idle vCPUs the switch found ready threads for,
/// and frees what threads that finished on this vCPU left, now that we
/// run on another stack. Returns why this thread was made ready.
fn after_switch() -> Wakeup {
    let (buried, wakeup, wakes) = {
        // SAFETY: this vCPU holds the lock, handed over by the switch, and
        // interrupts are off; the reference ends with this block.
        let cpu = here(unsafe { SCHEDULER.held() }).cpu();
        let wakes = core::mem::take(&mut cpu.wake);
        (core::mem::take(&mut cpu.graveyard), cpu.wakeup, wakes)
    };
    // SAFETY: held (see above), and the reference is gone.
    unsafe { SCHEDULER.let_go() };
    send_wakes(wakes);
    drop(buried);
    wakeup
}

/// Wakes the idle vCPUs in `wakes` (a bit each), which the caller took out
/// of [`Scheduler::idle`] under the lock it has let go of since.
fn send_wakes(mut wakes: u64) {
    while wakes != 0 {
        let vcpu = wakes.trailing_zeros();
        wakes &= wakes - 1;
        // Fails only for a vCPU not started, and only a started one can
        // be idle.
        let _ = hypercall::send_ipi(u64::from(vcpu), WAKE_VECTOR);
    }
}

/// Runs `f` on the scheduler with its lock held, then wakes the idle
/// vCPUs the threads it made ready need. Virtual interrupts are off
/// meanwhile, then put back as they were.
fn with_scheduler<T>(f: impl FnOnce(&mut Scheduler) -> T) -> T {
    without_interrupts(|| {
        let (result, wakes) = {
            // SAFETY: interrupts are off and this vCPU holds no scheduler
            // lock (no caller is inside one); the reference ends with this
            // block, before the let-go.
            let scheduler = here(unsafe { SCHEDULER.hold() });
            let result = f(scheduler);
            (result, scheduler.wakes_owed())
        };
        // SAFETY: taken just above; the reference is gone.
        unsafe { SCHEDULER.let_go() };
        send_wakes(wakes);
        result
    })
}

/// A new thread's first Rust code.
extern "C" fn thread_main(entry: extern "C" fn(usize), argument: usize) -> ! {
    after_switch();
    irq::enable();
    entry(argument);
    exit_current()
}

/// Ends the running thread: its joiners wake, its memory is freed once
/// another context runs on this vCPU.
fn exit_current() -> ! {
    irq::disable();
    let _ = switch_unless(|scheduler| {
        let me = scheduler.cpu().current.expect("a thread is ending");
        let thread = scheduler.current_thread();
        thread.state = State::Finished;
        let remains = (thread.stack.take(), thread.tls.take());
        scheduler.cpu().graveyard.push(remains);
        let joiners: Vec<Tid> = scheduler
            .threads
            .iter()
            .filter(|(_, thread)| thread.state == State::Joining(me))
            .map(|(&tid, _)| tid)
            .collect();
        for joiner in joiners {
            scheduler.wake(joiner, Wakeup::Signalled);
        }
        None::<()>
    });
    unreachable!("a finished thread was resumed");
}

/// Registers the preemption timer's handler (in place of guest-rt's).
pub fn init() {
    if traps::set_handler(TIMER_VECTOR, on_timer, Delivery::Interrupt).is_err() {
        console::report(format_args!("the host refused the timer handler"));
    }
}

/// Registers the wake-up interrupt's handler: called on vCPU 0 before it
/// starts the others, which copy its traps; with one vCPU, never.
pub fn prepare_wakes() {
    if traps::set_handler(WAKE_VECTOR, on_wake, Delivery::Interrupt).is_err() {
        console::report(format_args!("the host refused the wake-up handler"));
    }
}

/// The wake-up interrupt: it has ended the idle loop's halt, which is all
/// it is for; the loop looks at the run queue again.
fn on_wake(_frame: &mut TrapFrame) {}

/// The virtual timer: wakes the sleepers whose time has come, and ends the
/// running thread's slice if it is over and another is ready.
fn on_timer(_frame: &mut TrapFrame) {
    let _ = switch_unless(|scheduler| {
        let now = time::now_ns();
        scheduler.cpu().armed = None;
        scheduler.wake_expired(now);
        let cpu = scheduler.cpu();
        let preempt = cpu.current.is_some() && now >= cpu.slice_end;
        if preempt && !scheduler.ready.is_empty() {
            scheduler.requeue_current();
            return None;
        }
        scheduler.rearm(now);
        Some(())
    });
}

/// Starts a thread running `entry(argument)` on a stack of at least
/// `stack_bytes`; `None` (nothing started) if memory is short.
pub fn spawn(entry: extern "C" fn(usize), argument: usize, stack_bytes: usize) -> Option<Tid> {
    let stack = Stack::new(stack_bytes)?;
    let tls = tls::Block::new()?;
    let saved_rsp = stack.first_frame(entry, argument);
    let thread = Box::new(Thread {
        saved_rsp,
        state: State::Ready,
        deadline: None,
        home: 0,
        wakeup: Wakeup::Signalled,
        stack: Some(stack),
        tls: Some(tls),
    });
    Some(with_scheduler(|scheduler| {
        let tid = scheduler.next_tid;
        scheduler.next_tid += 1;
        scheduler.threads.insert(tid, thread);
        scheduler.ready.push_back(tid);
        scheduler.rearm(time::now_ns());
        tid
    }))
}

/// Runs `f` with virtual interrupts off, and puts them back after.
fn without_interrupts<T>(f: impl FnOnce() -> T) -> T {
    let was_enabled = irq::disable();
    let result = f();
    irq::restore(was_enabled);
    result
}

/// Waits for thread `tid` to finish, and forgets it.
pub fn join(tid: Tid) -> Result<(), i32> {
    without_interrupts(|| {
        loop {
            // Looked at and blocked on in one hold: its end cannot come
            // between the two.
            let turn = switch_unless(|scheduler| {
                if scheduler.cpu().current == Some(tid) {
                    return Some(Err(EDEADLK));
                }
                match scheduler.threads.get(&tid) {
                    None => Some(Err(ESRCH)),
                    Some(thread) if thread.state == State::Finished => {
                        Some(Ok(scheduler.threads.remove(&tid)))
                    }
                    Some(_) => {
                        scheduler.block_current(State::Joining(tid), None);
                        None
                    }
                }
            });
            if let Turn::Stayed(outcome) = turn {
                // The record is freed outside the lock.
                return outcome.map(drop);
            }
        }
    })
}

/// Gives the CPU to the next ready thread, if there is one.
pub fn yield_now() {
    without_interrupts(|| {
        let _ = switch_unless(|scheduler| {
            if scheduler.ready.is_empty() {
                return Some(());
            }
            scheduler.requeue_current();
            None
        });
    });
}

/// Sleeps at least `ns` nanoseconds (0: just yields).
pub fn sleep(ns: u64) {
    if ns == 0 {
        return yield_now();
    }
    let deadline = time::now_ns().saturating_add(ns);
    without_interrupts(|| {
        while time::now_ns() < deadline {
            let _ = switch_unless(|scheduler| {
                scheduler.block_current(State::Sleeping, Some(deadline));
                None::<()>
            });
        }
    });
}

/// Blocks while `word` holds `expected`, until [`futex_wake`] or the
/// `deadline` (host nanoseconds): `EAGAIN` if it did not hold, `ETIMEDOUT`
/// if the deadline came first.
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<u64>) -> Result<(), i32> {
    let address = word.as_ptr() as usize;
    without_interrupts(|| {
        // The word is read under the lock a waker takes after changing
        // it: either we see the change, or the waker sees us waiting.
        let turn = switch_unless(|scheduler| {
            if word.load(Ordering::SeqCst) != expected {
                return Some(Err(EAGAIN));
            }
            if deadline.is_some_and(|at| at <= time::now_ns()) {
                return Some(Err(ETIMEDOUT));
            }
            let me = scheduler.cpu().current.expect("a thread waits");
            scheduler.futex_waiters.push_back(me);
            scheduler.block_current(State::Waiting(address), deadline);
            None
        });
        match turn {
            Turn::Stayed(refused) => refused,
            Turn::Resumed(Wakeup::Signalled) => Ok(()),
            Turn::Resumed(Wakeup::TimedOut) => Err(ETIMEDOUT),
        }
    })
}

/// Wakes up to `count` threads waiting on `word`, oldest first; returns
/// how many.
pub fn futex_wake(word: *const AtomicU32, count: usize) -> usize {
    let address = word as usize;
    with_scheduler(|scheduler| {
        let chosen: Vec<Tid> = scheduler
            .futex_waiters
            .iter()
            .copied()
            .filter(|tid| {
                scheduler
                    .threads
                    .get(tid)
                    .is_some_and(|thread| thread.state == State::Waiting(address))
            })
            .take(count)
            .collect();
        for &tid in &chosen {
            scheduler.wake(tid, Wakeup::Signalled);
        }
        scheduler.rearm(time::now_ns());
        chosen.len()
    })
}

/// What the idle context does next, when no thread is ready.
enum IdleStep {
    Wait,
    Deadlock,
}

/// The idle context (vCPU 0's boot stack, or another vCPU's start stack):
/// runs ready threads, halts while none is (until its timer or a wake-up),
/// and ends the guest if none ever can be. Never returns; the guest ends
/// when a thread calls `exit`.
pub fn run_idle() -> ! {
    irq::disable();
    loop {
        let turn = switch_unless(|scheduler| {
            let now = time::now_ns();
            let me = 1u64 << scheduler.holder;
            scheduler.idle &= !me;
            scheduler.wake_expired(now);
            if !scheduler.ready.is_empty() {
                return None;
            }
            if scheduler.any_deadline() || scheduler.busy_elsewhere() {
                // Published in the hold that found nothing ready: a thread
                // made ready after it finds us idle and wakes us.
                scheduler.idle |= me;
                scheduler.rearm(now);
                Some(IdleStep::Wait)
            } else {
                Some(IdleStep::Deadlock)
            }
        });
        match turn {
            Turn::Resumed(_) => {}
            Turn::Stayed(IdleStep::Wait) => {
                count(&IDLE_HALTS, smp::this_vcpu());
                // Returns at once if a wake-up (or the timer) is pending.
                hypercall::halt();
                // Take the interrupt, then look again.
                irq::enable();
                irq::disable();
            }
            Turn::Stayed(IdleStep::Deadlock) => process::end_saying(
                exit_code::DEADLOCK,
                format_args!("deadlock: every thread waits (futex, join) with no time limit"),
            ),
        }
    }
}

/// Where a vCPU other than the boot one starts (`smp::start_others`): its
/// idle loop.
pub fn secondary_idle(_vcpu: u64) -> ! {
    run_idle()
}
