//! Processes: the table, the run queue, context switches, fork, exit, wait.
//!
//! # A process
//!
//! Each process has an address space ([`crate::vm`]), a kernel stack of its
//! own ([`KERNEL_STACK_BYTES`] in the image's `.bss`, so in the kernel half
//! of every address space), and, while it is not running, a saved kernel
//! stack pointer. User code enters the kernel on its kernel stack: the host
//! delivers traps from ring 3 there (`SetKernelStack`) and the CPU takes the
//! system-call gate there too (the same stack becomes TSS.RSP1).
//!
//! # Switching
//!
//! A switch happens only in kernel code, on the running process's kernel
//! stack: it saves the callee-saved registers and the stack pointer, tells
//! the host the next address space (`SetRoot`, the guest's CR3 write) and
//! kernel stack (`SetKernelStack`), loads the next process's stack pointer
//! and returns into wherever that process stopped: in a system call that
//! blocked or yielded, in the timer handler that preempted it, or, for a
//! new process, in [`first_return`], which leaves for user code by the
//! trap frame prepared on its stack.
//!
//! # Preemption
//!
//! The virtual timer ticks every [`TICK_NS`]; its handler re-arms it. If it
//! interrupted user code, it yields the CPU right there (the user's state
//! is on the kernel stack, in the trap frame). If it interrupted the kernel,
//! it only asks for a reschedule, taken when the system call returns: the
//! kernel itself is never preempted, so its state needs no locks
//! ([`crate::cell`]).

use crate::cell::Kernel;
use crate::vm::{self, AddressSpace};
use crate::{mmu, syscall, zero_pool};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_abi::boot::selector;
use guest_abi::hypercall::TIMER_VECTOR;
use guest_abi::pte::MmuOp;
use guest_rt::traps::{self, Delivery, TrapFrame, vector};
use guest_rt::{hypercall, irq, println};

/// The most processes at once.
pub const MAX_PROCESSES: usize = 24;
/// Bytes of each process's kernel stack.
pub const KERNEL_STACK_BYTES: usize = 16 * 1024;
/// The scheduling quantum: the virtual timer's period.
pub const TICK_NS: u64 = 10_000_000;

#[repr(C, align(4096))]
struct KernelStack([u8; KERNEL_STACK_BYTES]);

/// The kernel stacks, one per process slot. Only their addresses are
/// taken; each is used by its process alone.
static mut KERNEL_STACKS: [KernelStack; MAX_PROCESSES] =
    [const { KernelStack([0; KERNEL_STACK_BYTES]) }; MAX_PROCESSES];

/// What a blocked process waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A child to end (`wait`).
    Child,
    /// Bytes in pipe `n`.
    PipeRead(usize),
    /// Room in pipe `n`.
    PipeWrite(usize),
}

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The slot is unused.
    Free,
    /// In the run queue.
    Runnable,
    /// On the CPU.
    Running,
    /// Waiting; not in the run queue.
    Blocked(Wait),
    /// Ended, its exit code not yet collected by `wait`.
    Zombie,
}

/// No parent (the first process).
const NO_PARENT: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Process {
    state: State,
    pid: u64,
    parent: usize,
    space: Option<AddressSpace>,
    /// The saved kernel stack pointer while not running.
    context: u64,
    exit_code: u64,
    /// The heap's break: `[HEAP_BASE, heap_end)` is demand-zero.
    heap_end: u64,
}

const FREE: Process = Process {
    state: State::Free,
    pid: 0,
    parent: NO_PARENT,
    space: None,
    context: 0,
    exit_code: 0,
    heap_end: vm::HEAP_BASE,
};

/// A first-in, first-out queue of process slots.
struct RunQueue {
    slots: [usize; MAX_PROCESSES],
    head: usize,
    len: usize,
}

impl RunQueue {
    fn push(&mut self, slot: usize) {
        assert!(self.len < MAX_PROCESSES, "run queue overflow");
        self.slots[(self.head + self.len) % MAX_PROCESSES] = slot;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let slot = self.slots[self.head];
        self.head = (self.head + 1) % MAX_PROCESSES;
        self.len -= 1;
        Some(slot)
    }
}

struct Table {
    procs: [Process; MAX_PROCESSES],
    current: usize,
    next_pid: u64,
    queue: RunQueue,
}

static TABLE: Kernel<Table> = Kernel::new(Table {
    procs: [FREE; MAX_PROCESSES],
    current: 0,
    next_pid: 1,
    queue: RunQueue {
        slots: [0; MAX_PROCESSES],
        head: 0,
        len: 0,
    },
});

/// Set by the timer when it interrupted the kernel: yield on the way out.
static NEED_RESCHED: AtomicBool = AtomicBool::new(false);
/// Context switches so far.
static SWITCHES: AtomicU64 = AtomicU64::new(0);
/// Free pages when the first process started (for the leak check).
static FREE_AT_START: AtomicU64 = AtomicU64::new(0);
/// Where the boot stack's pointer goes when the first process starts; the
/// boot stack is never resumed.
static mut BOOT_CONTEXT: u64 = 0;

// The context switch and a new process's first return to user mode.
core::arch::global_asm!(
    ".section .text.os_switch, \"ax\"",
    // os_switch_stacks(save: *mut u64 [rdi], load: u64 [rsi])
    ".globl os_switch_stacks",
    "os_switch_stacks:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    mov rsp, rsi",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    // A new process's stack: six zero registers, this address, and a
    // TrapFrame (16-byte aligned) that says where user code starts.
    ".globl os_first_return",
    "os_first_return:",
    "    call {first_run}",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rbp",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rbx",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    first_run = sym first_run,
);

unsafe extern "C" {
    /// Saves the callee-saved registers and stack pointer into `*save`,
    /// continues on the stack `load` saved.
    fn os_switch_stacks(save: *mut u64, load: u64);
    /// Where a new process's kernel stack "returns" first.
    fn os_first_return();
}

/// A new process, before it leaves for user code the first time: it did
/// not come through a switch that would restore its interrupt flag.
extern "C" fn first_run() {
    irq::enable();
}

fn stack_top(slot: usize) -> u64 {
    // SAFETY: only the address is taken.
    let base = unsafe { (&raw const KERNEL_STACKS[slot]) as u64 };
    base + KERNEL_STACK_BYTES as u64
}

/// Writes a new process's kernel stack: `frame` at the top, and below it
/// what [`os_switch_stacks`] pops before returning into
/// [`os_first_return`]. Returns the stack pointer to save.
fn prepare_stack(slot: usize, frame: &TrapFrame) -> u64 {
    let top = stack_top(slot);
    let frame_at = top - size_of::<TrapFrame>() as u64;
    let context = frame_at - 8 - 6 * 8;
    let words = context as *mut u64;
    // SAFETY: the slot's stack is free (the slot is being set up) and
    // ours; the writes stay inside it (frame and seven words below).
    unsafe {
        (frame_at as *mut TrapFrame).write(*frame);
        for i in 0..6 {
            words.add(i).write(0);
        }
        words.add(6).write(os_first_return as *const () as u64);
    }
    context
}

/// Registers the trap handlers: the system-call gate, page faults, the
/// timer, and the exceptions that end a user process.
pub fn init_traps() {
    let ok = traps::set_direct_handler(syscall::VECTOR, syscall::on_syscall).is_ok()
        && traps::set_handler(vector::PAGE_FAULT, on_page_fault, Delivery::Exception).is_ok()
        && traps::set_handler(TIMER_VECTOR, on_timer, Delivery::Interrupt).is_ok()
        && [
            vector::DIVIDE_ERROR,
            vector::BREAKPOINT,
            vector::INVALID_OPCODE,
            vector::GENERAL_PROTECTION,
        ]
        .into_iter()
        .all(|v| traps::set_handler(v, on_exception, Delivery::Exception).is_ok());
    assert!(ok, "the host refused a trap handler");
}

/// Starts the first process (pid 1) on `workload`, and never returns.
pub fn start_first(workload: u64) -> ! {
    FREE_AT_START.store(zero_pool::free_pages(), Ordering::Relaxed);
    let space = AddressSpace::with_text().expect("memory for the first process");
    let frame = TrapFrame {
        rip: vm::user_alias(crate::user::user_main as *const () as u64),
        // As if called: the stack 8 bytes below a 16-byte boundary.
        rsp: vm::STACK_TOP - 8,
        rdi: workload,
        cs: selector::USER_CODE.into(),
        ss: selector::USER_DATA.into(),
        rflags: traps::RFLAGS_IF | 2,
        ..zero_frame()
    };
    let context = prepare_stack(0, &frame);
    TABLE.with(|t| {
        t.procs[0] = Process {
            state: State::Running,
            pid: 1,
            parent: NO_PARENT,
            space: Some(space),
            context,
            ..FREE
        };
        t.next_pid = 2;
        t.current = 0;
    });
    let _ = irq::disable();
    let _ = hypercall::set_timer(TICK_NS);
    enter_space(0, space.root);
    // SAFETY: BOOT_CONTEXT is a word only this call writes; `context` is
    // the stack prepared above.
    unsafe { os_switch_stacks(&raw mut BOOT_CONTEXT, context) };
    unreachable!("the boot stack is never resumed")
}

fn zero_frame() -> TrapFrame {
    TrapFrame {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rbp: 0,
        rdi: 0,
        rsi: 0,
        rdx: 0,
        rcx: 0,
        rbx: 0,
        rax: 0,
        vector: 0,
        error_code: 0,
        rip: 0,
        cs: 0,
        rflags: 0,
        rsp: 0,
        ss: 0,
    }
}

/// Tells the host the address space and kernel stack of process `slot`,
/// in one exit.
fn enter_space(slot: usize, root: u64) {
    // SAFETY: every process's tables map the kernel half as the running
    // code needs it (copied from the start-up tables), and the slot's
    // kernel stack belongs to the process alone.
    let switched = unsafe { hypercall::switch_process(root, stack_top(slot)) };
    assert!(switched.is_ok(), "the host refused a switch");
}

/// Gives the CPU to process `next` (already taken off the run queue).
fn switch_to(next: usize) {
    let switch = TABLE.with(|t| {
        let current = t.current;
        t.procs[next].state = State::Running;
        if current == next {
            return None;
        }
        t.current = next;
        let save = &raw mut t.procs[current].context;
        Some((save, t.procs[next].context, t.procs[next].space))
    });
    let Some((save, load, space)) = switch else {
        return;
    };
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    let root = space.expect("a runnable process has an address space").root;
    enter_space(next, root);
    // SAFETY: `save` is the current process's context word in the table,
    // which no borrow holds now and which nothing else writes while it
    // runs; `load` is what the next process saved (or prepare_stack made).
    unsafe { os_switch_stacks(save, load) };
}

/// Gives the CPU to the next runnable process; the running one (if still
/// runnable) goes to the back of the queue.
pub fn yield_now() {
    let was_enabled = irq::disable();
    let next = TABLE.with(|t| {
        let current = t.current;
        if t.procs[current].state == State::Running {
            t.procs[current].state = State::Runnable;
            t.queue.push(current);
        }
        t.queue.pop()
    });
    match next {
        Some(next) => switch_to(next),
        None => panic!("every process is blocked: deadlock"),
    }
    irq::restore(was_enabled);
}

/// Yields if the timer asked for it while the kernel ran.
pub fn reschedule_if_asked() {
    if NEED_RESCHED.swap(false, Ordering::Relaxed) {
        yield_now();
    }
}

/// Blocks the running process until woken for `wait`.
pub fn block(wait: Wait) {
    TABLE.with(|t| {
        let current = t.current;
        t.procs[current].state = State::Blocked(wait);
    });
    yield_now();
}

/// Makes every process blocked on `wait` runnable.
pub fn wake(wait: Wait) {
    TABLE.with(|t| {
        for slot in 0..MAX_PROCESSES {
            if t.procs[slot].state == State::Blocked(wait) {
                t.procs[slot].state = State::Runnable;
                t.queue.push(slot);
            }
        }
    });
}

/// The running process's pid.
pub fn pid() -> u64 {
    TABLE.with(|t| t.procs[t.current].pid)
}

/// The running process's address space.
pub fn space() -> AddressSpace {
    TABLE
        .with(|t| t.procs[t.current].space)
        .expect("a running process has an address space")
}

/// The running process's heap break.
pub fn heap_end() -> u64 {
    TABLE.with(|t| t.procs[t.current].heap_end)
}

/// Moves the running process's heap break by `delta` bytes (rounded to
/// pages); returns the old break, or `None` if it would leave the heap.
/// Shrinking unmaps the pages.
pub fn sbrk(delta: i64) -> Option<u64> {
    let old = heap_end();
    let new = old.checked_add_signed(delta)?.next_multiple_of(4096);
    if !(vm::HEAP_BASE..=vm::HEAP_LIMIT).contains(&new) {
        return None;
    }
    if new < old {
        space().unmap(new, old);
    }
    TABLE.with(|t| t.procs[t.current].heap_end = new);
    Some(old)
}

/// Context switches so far.
pub fn switches() -> u64 {
    SWITCHES.load(Ordering::Relaxed)
}

/// A copy of the running process, returning to user code from `frame`
/// with `rax` = 0. Returns the child's pid, or `None` when out of
/// processes or memory.
pub fn fork(frame: &TrapFrame) -> Option<u64> {
    let slot = TABLE.with(|t| (0..MAX_PROCESSES).find(|&s| t.procs[s].state == State::Free))?;
    let space = space().fork()?;
    let mut child_frame = *frame;
    child_frame.rax = 0;
    let context = prepare_stack(slot, &child_frame);
    let pid = TABLE.with(|t| {
        let pid = t.next_pid;
        t.next_pid += 1;
        t.procs[slot] = Process {
            state: State::Runnable,
            pid,
            parent: t.current,
            space: Some(space),
            context,
            exit_code: 0,
            heap_end: t.procs[t.current].heap_end,
        };
        t.queue.push(slot);
        pid
    });
    Some(pid)
}

/// Ends the running process with `code`. Its parent learns the code from
/// `wait`; its children go to the first process. When the first process
/// ends, the guest ends with its code.
pub fn exit(code: u64) -> ! {
    let _ = irq::disable();
    // Forget our user half in the host before its pages go back to the
    // allocator: another process may get them next.
    mmu::queue(MmuOp::FlushUser);
    mmu::flush();
    let (space, first) = TABLE.with(|t| {
        let current = t.current;
        t.procs[current].state = State::Zombie;
        t.procs[current].exit_code = code;
        let parent = t.procs[current].parent;
        // Orphans go to the first process, which may be waiting already.
        let mut orphan_zombie = false;
        for slot in 0..MAX_PROCESSES {
            if t.procs[slot].parent == current && t.procs[slot].state != State::Free {
                t.procs[slot].parent = 0;
                orphan_zombie |= t.procs[slot].state == State::Zombie;
            }
        }
        for (waiter, ends) in [(parent, true), (0, orphan_zombie)] {
            if ends && waiter != NO_PARENT && t.procs[waiter].state == State::Blocked(Wait::Child) {
                t.procs[waiter].state = State::Runnable;
                t.queue.push(waiter);
            }
        }
        (t.procs[current].space.take(), parent == NO_PARENT)
    });
    if let Some(space) = space {
        space.destroy();
    }
    if first {
        finish(code);
    }
    yield_now();
    unreachable!("a zombie was scheduled")
}

/// The first process ended: report and end the guest.
fn finish(code: u64) -> ! {
    let free = zero_pool::free_pages();
    let at_start = FREE_AT_START.load(Ordering::Relaxed);
    // Every process's pages and tables are back: each freed its own at
    // its exit.
    println!(
        "os: first process exited with {code}; {} context switches; {free} pages free, {} at start ({})",
        switches(),
        at_start,
        if free == at_start {
            "balanced"
        } else {
            "LEAKED"
        }
    );
    if free != at_start {
        hypercall::shutdown(3);
    }
    hypercall::shutdown(code)
}

/// Waits for a child to end; returns its pid and exit code, or `None` if
/// there are no children.
pub fn wait() -> Option<(u64, u64)> {
    loop {
        let found = TABLE.with(|t| {
            let current = t.current;
            let mut children = false;
            for slot in 0..MAX_PROCESSES {
                let p = t.procs[slot];
                if p.parent != current || p.state == State::Free || slot == current {
                    continue;
                }
                children = true;
                if p.state == State::Zombie {
                    t.procs[slot] = FREE;
                    return Some(Some((p.pid, p.exit_code)));
                }
            }
            if !children {
                return Some(None);
            }
            t.procs[current].state = State::Blocked(Wait::Child);
            None
        });
        match found {
            Some(result) => return result,
            None => yield_now(),
        }
    }
}

fn on_timer(frame: &mut TrapFrame) {
    let _ = hypercall::set_timer(TICK_NS);
    if frame.ring() == 3 {
        // The interrupt's own work ends here; the switch to another
        // process, and all that process then does until this one runs
        // again, is the scheduler's (the host counts it as ours).
        irq::end_of_interrupt();
        yield_now();
    } else {
        NEED_RESCHED.store(true, Ordering::Relaxed);
    }
}

fn on_page_fault(frame: &mut TrapFrame) {
    let address = traps::fault_address();
    let write = frame.error_code & 2 != 0;
    let result = if vm::is_user_range(address, 1) {
        space().fault(address, write, heap_end())
    } else {
        Err(vm::FaultError::Unmapped)
    };
    if let Err(why) = result {
        if frame.ring() == 3 || vm::is_user_range(address, 1) {
            println!(
                "os: pid {} killed: page fault at {address:#x} ({why:?}, {}) rip {:#x}",
                pid(),
                if write { "write" } else { "read" },
                frame.rip
            );
            exit(128 + 14);
        }
        panic!("kernel page fault at {address:#x}, rip {:#x}", frame.rip);
    }
}

fn on_exception(frame: &mut TrapFrame) {
    if frame.ring() != 3 {
        panic!(
            "exception {} in the kernel at {:#x}",
            frame.vector, frame.rip
        );
    }
    println!(
        "os: pid {} killed: exception {} at rip {:#x}",
        pid(),
        frame.vector,
        frame.rip
    );
    exit(128 + frame.vector);
}
