//! Threads, and the scheduler that shares the one CPU between them.
//!
//! Each thread has a stack and a thread-local block of its own, both from
//! the heap, and a record here. The ready threads wait in a FIFO queue and
//! run in turn:
//!
//! - **voluntarily** they give the CPU up when they block (a futex, a
//!   join, a sleep), yield or end: [`switch_away`] saves only what the
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
//! The one-shot timer serves both the slice and the sleepers' deadlines: it
//! is armed for whichever comes first, and only re-armed when that
//! changes. When no thread is ready the CPU goes to the idle context (the
//! boot stack, where the runtime started), which halts until the timer;
//! when no thread is ready and none has a deadline, nothing can ever wake
//! one, and the guest ends with a report (exit code 105).
//!
//! Everything here runs with virtual interrupts off, and switches happen
//! only then: each side of a switch puts the flag back as it had it.

use crate::sync::IrqCell;
use crate::{console, memory, process, time, tls};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use guest_abi::hypercall::TIMER_VECTOR;
use guest_rt::traps::{self, Delivery, TrapFrame};
use guest_rt::{exit_code, hypercall, irq};
use hermit_abi::errno::{EAGAIN, EDEADLK, ESRCH, ETIMEDOUT};

/// A thread id (`hermit_abi::Tid`); 0 means none, so they start at 1.
pub type Tid = hermit_abi::Tid;

/// How long a thread runs before the timer lets the next ready one in.
pub const SLICE_NS: u64 = 10_000_000;

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

struct Scheduler {
    threads: BTreeMap<Tid, Box<Thread>>,
    ready: VecDeque<Tid>,
    /// Threads waiting on futexes, oldest first (woken in that order).
    futex_waiters: VecDeque<Tid>,
    /// The running thread; `None` in the idle context.
    current: Option<Tid>,
    /// The idle context's stack pointer while a thread runs.
    idle_rsp: u64,
    next_tid: Tid,
    /// When the running thread's slice ends.
    slice_end: u64,
    /// The deadline the timer is armed for.
    armed: Option<u64>,
    /// Stacks and blocks of finished threads, freed after the switch away
    /// from them (a thread cannot free the stack it runs on).
    graveyard: Vec<(Option<Stack>, Option<tls::Block>)>,
}

static SCHEDULER: IrqCell<Scheduler> = IrqCell::new(Scheduler {
    threads: BTreeMap::new(),
    ready: VecDeque::new(),
    futex_waiters: VecDeque::new(),
    current: None,
    idle_rsp: 0,
    next_tid: 1,
    slice_end: 0,
    armed: None,
    graveyard: Vec::new(),
});

/// What a switch needs, decided with the scheduler's state in hand and
/// carried out after letting go of it.
struct Switch {
    save_to: *mut u64,
    load_rsp: u64,
    thread_pointer: Option<u64>,
}

impl Scheduler {
    fn current_thread(&mut self) -> &mut Thread {
        let tid = self.current.expect("only a thread calls this");
        self.threads
            .get_mut(&tid)
            .expect("the current thread has a record")
    }

    /// Where the running context's stack pointer goes when it stops.
    fn current_slot(&mut self) -> *mut u64 {
        match self.current {
            Some(_) => &raw mut self.current_thread().saved_rsp,
            None => &raw mut self.idle_rsp,
        }
    }

    /// Puts the running thread at the back of the ready queue.
    fn requeue_current(&mut self) {
        if let Some(tid) = self.current {
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

    /// Makes sure the timer fires no later than the end of the slice (if
    /// another thread is ready to take over) or the earliest deadline.
    ///
    /// A hypercall only when that is earlier than what is armed: a timer
    /// that is no longer wanted, or wanted later, is left to fire, and the
    /// handler finds nothing to do and arms the next one. Threads that hand
    /// the CPU to each other through futexes thus switch without exits.
    fn rearm(&mut self, now: u64) {
        let others_ready = self.current.is_some() && !self.ready.is_empty();
        let slice = others_ready.then_some(self.slice_end);
        let Some(wanted) = slice.into_iter().chain(self.earliest_deadline()).min() else {
            return;
        };
        if self.armed.is_some_and(|armed| armed <= wanted) {
            return;
        }
        // The host refuses nothing but nonsense; if it did, the worst is a
        // late preemption or wake-up.
        let _ = hypercall::set_timer(wanted.saturating_sub(now).max(1));
        self.armed = Some(wanted);
    }

    /// Takes the next ready thread (or the idle context) in place of the
    /// running one, whose state the caller has already set. `None` when
    /// that is the running one itself.
    fn plan_switch(&mut self, now: u64) -> Option<Switch> {
        let next = self.ready.pop_front();
        let save_to = self.current_slot();
        let previous = self.current;
        self.current = next;
        self.slice_end = now + SLICE_NS;
        let (load_rsp, thread_pointer) = match next {
            Some(_) => {
                let thread = self.current_thread();
                thread.state = State::Running;
                let thread_pointer = thread.tls.as_ref().map(|block| block.thread_pointer);
                (thread.saved_rsp, thread_pointer)
            }
            None => (self.idle_rsp, None),
        };
        self.rearm(now);
        (next != previous).then_some(Switch {
            save_to,
            load_rsp,
            thread_pointer,
        })
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

/// Gives the CPU to the next ready thread (the running one's state already
/// set); returns when this context runs again. Virtual interrupts must be
/// off.
fn switch_away() {
    let plan = SCHEDULER.with(|scheduler| scheduler.plan_switch(time::now_ns()));
    let Some(plan) = plan else {
        return;
    };
    if let Some(thread_pointer) = plan.thread_pointer {
        tls::set_thread_pointer(thread_pointer);
    }
    // SAFETY: `save_to` is the running context's slot (in a boxed thread
    // record or the static scheduler, both stable), and `load_rsp` a stack
    // pointer saved by this function or laid out by `first_frame`, on a
    // stack still alive (finished threads are never resumed). Interrupts
    // are off, so nothing runs in between.
    unsafe { rguest_switch_context(plan.save_to, plan.load_rsp) };
    after_switch();
}

/// Frees what finished threads left, now that we run on another stack.
fn after_switch() {
    let buried = SCHEDULER.with(|scheduler| core::mem::take(&mut scheduler.graveyard));
    drop(buried);
}

/// A new thread's first Rust code.
extern "C" fn thread_main(entry: extern "C" fn(usize), argument: usize) -> ! {
    after_switch();
    irq::enable();
    entry(argument);
    exit_current()
}

/// Ends the running thread: its joiners wake, its memory is freed once
/// another context runs.
fn exit_current() -> ! {
    irq::disable();
    SCHEDULER.with(|scheduler| {
        let me = scheduler.current.expect("a thread is ending");
        let thread = scheduler.current_thread();
        thread.state = State::Finished;
        let remains = (thread.stack.take(), thread.tls.take());
        scheduler.graveyard.push(remains);
        let joiners: Vec<Tid> = scheduler
            .threads
            .iter()
            .filter(|(_, thread)| thread.state == State::Joining(me))
            .map(|(&tid, _)| tid)
            .collect();
        for joiner in joiners {
            scheduler.wake(joiner, Wakeup::Signalled);
        }
    });
    switch_away();
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
    let preempt = SCHEDULER.with(|scheduler| {
        let now = time::now_ns();
        scheduler.armed = None;
        scheduler.wake_expired(now);
        let preempt = scheduler.current.is_some()
            && !scheduler.ready.is_empty()
            && now >= scheduler.slice_end;
        if preempt {
            scheduler.requeue_current();
        } else {
            scheduler.rearm(now);
        }
        preempt
    });
    if preempt {
        switch_away();
    }
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
        let tid = scheduler.next_tid;
        scheduler.next_tid += 1;
        scheduler.threads.insert(tid, thread);
        scheduler.ready.push_back(tid);
        scheduler.rearm(time::now_ns());
        tid
    }))
}

/// Blocks the running thread in `state` until woken or `deadline`, and says
/// which it was.
fn block(state: State, deadline: Option<u64>) -> Wakeup {
    SCHEDULER.with(|scheduler| scheduler.block_current(state, deadline));
    switch_away();
    SCHEDULER.with(|scheduler| scheduler.current_thread().wakeup)
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
            let finished = SCHEDULER.with(|scheduler| {
                if scheduler.current == Some(tid) {
                    return Err(EDEADLK);
                }
                match scheduler.threads.get(&tid) {
                    None => Err(ESRCH),
                    Some(thread) => Ok(thread.state == State::Finished),
                }
            })?;
            if finished {
                let record = SCHEDULER.with(|scheduler| scheduler.threads.remove(&tid));
                drop(record);
                return Ok(());
            }
            block(State::Joining(tid), None);
        }
    })
}

/// Gives the CPU to the next ready thread, if there is one.
pub fn yield_now() {
    without_interrupts(|| {
        let others = SCHEDULER.with(|scheduler| {
            let others = !scheduler.ready.is_empty();
            if others {
                scheduler.requeue_current();
            }
            others
        });
        if others {
            switch_away();
        }
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
            block(State::Sleeping, Some(deadline));
        }
    });
}

/// Blocks while `word` holds `expected`, until [`futex_wake`] or the
/// `deadline` (host nanoseconds): `EAGAIN` if it did not hold, `ETIMEDOUT`
/// if the deadline came first.
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<u64>) -> Result<(), i32> {
    let address = word.as_ptr() as usize;
    without_interrupts(|| {
        if word.load(Ordering::SeqCst) != expected {
            return Err(EAGAIN);
        }
        if deadline.is_some_and(|at| at <= time::now_ns()) {
            return Err(ETIMEDOUT);
        }
        SCHEDULER.with(|scheduler| {
            let me = scheduler.current.expect("a thread waits");
            scheduler.futex_waiters.push_back(me);
        });
        match block(State::Waiting(address), deadline) {
            Wakeup::Signalled => Ok(()),
            Wakeup::TimedOut => Err(ETIMEDOUT),
        }
    })
}

/// Wakes up to `count` threads waiting on `word`, oldest first; returns
/// how many.
pub fn futex_wake(word: *const AtomicU32, count: usize) -> usize {
    let address = word as usize;
    SCHEDULER.with(|scheduler| {
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

/// What the idle context does next.
enum IdleStep {
    Run,
    Wait,
    Deadlock,
}

/// The idle context (the boot stack): runs ready threads, halts until the
/// timer while none is, and ends the guest if none ever can be. Never
/// returns; the guest ends when a thread calls `exit`.
pub fn run_idle() -> ! {
    irq::disable();
    loop {
        let step = SCHEDULER.with(|scheduler| {
            let now = time::now_ns();
            scheduler.wake_expired(now);
            if !scheduler.ready.is_empty() {
                IdleStep::Run
            } else if scheduler.earliest_deadline().is_some() {
                scheduler.rearm(now);
                IdleStep::Wait
            } else {
                IdleStep::Deadlock
            }
        });
        match step {
            IdleStep::Run => switch_away(),
            IdleStep::Wait => {
                hypercall::halt();
                // Take the timer's interrupt, then look again.
                irq::enable();
                irq::disable();
            }
            IdleStep::Deadlock => {
                console::report(format_args!(
                    "deadlock: every thread waits (futex, join) with no time limit"
                ));
                process::end(exit_code::DEADLOCK);
            }
        }
    }
}
