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
//! Each vCPU's one-shot timer serves its own slice and the sleepers'
//! deadlines: it is armed for whichever comes first, and only re-armed
//! when that changes. When no thread is ready a vCPU goes to its idle
//! context (the boot stack on vCPU 0, guest-rt's static stack on the
//! others), which halts until its timer; when no thread is ready, none has
//! a deadline and no vCPU runs one, nothing can ever wake one, and the
//! guest ends with a report (exit code 105).
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
//! A thread made ready by another vCPU is taken by an idle vCPU only when
//! that one looks: there is no way to interrupt another vCPU. So an idle
//! vCPU halts with its timer armed for [`IDLE_POLL_NS`] while any other
//! vCPU runs a thread (one timer interrupt and one halt, two exits, per
//! millisecond per idle vCPU: a fraction of a percent of a CPU), and only
//! for the sleepers' deadlines when none does. A ready thread thus waits
//! at most a millisecond for an idle vCPU, or a slice for a busy one.
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

/// How often an idle vCPU looks for threads made ready by others, while
/// another vCPU runs a thread.
pub const IDLE_POLL_NS: u64 = 1_000_000;

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
        let thread = self.current_thread();
        thread.state = state;
        thread.deadline = deadline;
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

    fn earliest_deadline(&self) -> Option<u64> {
        self.threads
            .values()
            .filter_map(|thread| thread.deadline)
            .min()
    }

    /// Makes sure this vCPU's timer fires no later than the end of the
    /// slice (if another thread is ready to take over), the earliest
    /// deadline, or (idle, while another vCPU runs a thread) the next look
    /// for threads it made ready.
    ///
    /// A hypercall only when that is earlier than what is armed: a timer
    /// that is no longer wanted, or wanted later, is left to fire, and the
    /// handler finds nothing to do and arms the next one. Threads that hand
    /// the CPU to each other through futexes thus switch without exits.
    fn rearm(&mut self, now: u64) {
        let running = self.cpu().current.is_some();
        let slice = (running && !self.ready.is_empty()).then_some(self.cpu().slice_end);
        let poll =
            (smp::several() && !running && self.busy_elsewhere()).then_some(now + IDLE_POLL_NS);
        let Some(wanted) = slice
            .into_iter()
            .chain(poll)
            .chain(self.earliest_deadline())
            .min()
        else {
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
        if next == previous {
            return None;
        }
        if next.is_some() {
            count_turn(self.holder);
        }
        Some(Switch {
            save_to,
            load_rsp,
            thread_pointer,
        })
    }
}

/// Counts a switch to a thread on vCPU `vcpu` (the caller's).
fn count_turn(vcpu: usize) {
    let turns = &TURNS[vcpu];
    // Only this vCPU writes its count: no atomic read-modify-write needed.
    turns.store(turns.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Prints how many thread turns each vCPU gave, when there are several
/// (`hermit: vcpu 0 ran 37 thread turns, vcpu 1 ran 35`). Allocates
/// nothing: it may run when the heap is exhausted.
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
        for (vcpu, turns) in TURNS.iter().take(self.0).enumerate() {
            let turns = turns.load(Ordering::Relaxed);
            match vcpu {
                0 => write!(f, "vcpu 0 ran {turns} thread turns")?,
                _ => write!(f, ", vcpu {vcpu} ran {turns}")?,
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
            // SAFETY: taken just above; the reference is not used again.
            unsafe { SCHEDULER.let_go() };
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
/// to it held, and frees what threads that finished on this vCPU left,
/// now that we run on another stack. Returns why this thread was made
/// ready.
fn after_switch() -> Wakeup {
    let (buried, wakeup) = {
        // SAFETY: this vCPU holds the lock, handed over by the switch, and
        // interrupts are off; the reference ends with this block.
        let cpu = here(unsafe { SCHEDULER.held() }).cpu();
        (core::mem::take(&mut cpu.graveyard), cpu.wakeup)
    };
    // SAFETY: held (see above), and the reference is gone.
    unsafe { SCHEDULER.let_go() };
    drop(buried);
    wakeup
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
        wakeup: Wakeup::Signalled,
        stack: Some(stack),
        tls: Some(tls),
    });
    Some(SCHEDULER.with(|scheduler| {
        let scheduler = here(scheduler);
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
    SCHEDULER.with(|scheduler| {
        let scheduler = here(scheduler);
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
/// runs ready threads, halts until its timer while none is, and ends the
/// guest if none ever can be. Never returns; the guest ends when a thread
/// calls `exit`.
pub fn run_idle() -> ! {
    irq::disable();
    loop {
        let turn = switch_unless(|scheduler| {
            let now = time::now_ns();
            scheduler.wake_expired(now);
            if !scheduler.ready.is_empty() {
                return None;
            }
            if scheduler.earliest_deadline().is_some() || scheduler.busy_elsewhere() {
                scheduler.rearm(now);
                Some(IdleStep::Wait)
            } else {
                Some(IdleStep::Deadlock)
            }
        });
        match turn {
            Turn::Resumed(_) => {}
            Turn::Stayed(IdleStep::Wait) => {
                hypercall::halt();
                // Take the timer's interrupt, then look again.
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
