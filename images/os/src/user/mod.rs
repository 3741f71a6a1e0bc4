//! The user side: what runs in ring 3.
//!
//! User programs are functions of this image, run through its read-only
//! alias at [`crate::vm::USER_TEXT`] in every process. That alias holds the
//! text and constants only, so user code must keep to what works there:
//! no statics (the data is not mapped for it), no `core::fmt` and no
//! trait objects (their tables hold the kernel's absolute addresses), and
//! nothing that can panic. Strings, numbers and loops are fine. So output
//! goes through [`Line`], a tiny formatter on the stack.
//!
//! - this file: the system-call wrappers and [`Line`];
//! - [`workloads`]: the four checked workloads;
//! - [`benches`]: the benchmarks.

mod benches;
mod workloads;

use crate::syscall::{FAILED, nr};
use core::arch::asm;

/// Makes system call `n`; returns `rax` and `rdx`.
#[inline(always)]
fn syscall(n: u64, a: u64, b: u64, c: u64, d: u64) -> (u64, u64) {
    let (rax, rdx): (u64, u64);
    // SAFETY: `int 0x80` is our kernel's gate; it preserves every register
    // but rax and rdx (declared) and touches only the memory the call
    // names. It runs on the kernel stack, not ours: nostack.
    unsafe {
        asm!(
            "int 0x80",
            inlateout("rax") n => rax,
            in("rdi") a,
            in("rsi") b,
            inlateout("rdx") c => rdx,
            in("r10") d,
            options(nostack),
        );
    }
    (rax, rdx)
}

/// This process's id.
#[inline(always)]
pub fn getpid() -> u64 {
    syscall(nr::GETPID, 0, 0, 0, 0).0
}

/// Ends this process with `code`.
pub fn exit(code: u64) -> ! {
    syscall(nr::EXIT, code, 0, 0, 0);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Forks: the child's pid in the parent, 0 in the child, `None` if it failed.
pub fn fork() -> Option<u64> {
    let pid = syscall(nr::FORK, 0, 0, 0, 0).0;
    (pid != FAILED).then_some(pid)
}

/// Waits for a child: its pid and exit code; `None` if there are none.
pub fn wait() -> Option<(u64, u64)> {
    let (pid, code) = syscall(nr::WAIT, 0, 0, 0, 0);
    (pid != FAILED).then_some((pid, code))
}

/// Lets the next process run.
#[inline(always)]
pub fn yield_now() {
    syscall(nr::YIELD, 0, 0, 0, 0);
}

/// Moves the heap's break by `delta` bytes; returns the old break.
pub fn sbrk(delta: i64) -> u64 {
    syscall(nr::SBRK, delta as u64, 0, 0, 0).0
}

/// A new pipe.
pub fn pipe() -> u64 {
    syscall(nr::PIPE, 0, 0, 0, 0).0
}

/// Frees a pipe.
pub fn pipe_free(n: u64) {
    syscall(nr::PIPE_FREE, n, 0, 0, 0);
}

/// Sends one word down pipe `n`.
pub fn send(n: u64, value: u64) -> bool {
    let bytes = value.to_le_bytes();
    syscall(nr::PIPE_WRITE, n, bytes.as_ptr() as u64, 8, 0).0 == 8
}

/// Receives one word from pipe `n`.
pub fn receive(n: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let at = bytes.as_mut_ptr() as u64 + got;
        let r = syscall(nr::PIPE_READ, n, at, 8 - got, 0).0;
        if r == FAILED || r == 0 {
            return None;
        }
        got += r;
    }
    Some(u64::from_le_bytes(bytes))
}

/// Free pages in the kernel.
pub fn free_pages() -> u64 {
    syscall(nr::FREE_PAGES, 0, 0, 0, 0).0
}

/// Starts a measurement (the host counts events from here); its id.
pub fn bench_begin() -> u64 {
    syscall(nr::BENCH_BEGIN, 0, 0, 0, 0).0
}

/// Ends measurement `id` of benchmark `name` (a `BENCH_NAMES` index): the
/// kernel prints the result line.
pub fn bench_end(id: u64, name: usize, iterations: u64, cycles: u64) {
    syscall(nr::BENCH_END, id, name as u64, iterations, cycles);
}

/// Runs kernel benchmark `name` for `iterations`.
pub fn kernel_bench(name: usize, iterations: u64) -> bool {
    syscall(nr::KERNEL_BENCH, name as u64, iterations, 0, 0).0 == 0
}

/// The time-stamp counter (readable in ring 3: CR4.TSD is off).
#[inline(always)]
pub fn cycles() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack)) };
    u64::from(high) << 32 | u64::from(low)
}

/// Reads the word at user address `addr`.
#[inline(always)]
pub fn peek(addr: u64) -> u64 {
    // SAFETY: user programs only name heap and stack addresses, which the
    // kernel maps on demand (or ends the process if they are not).
    unsafe { (addr as *const u64).read_volatile() }
}

/// Writes the word at user address `addr`.
#[inline(always)]
pub fn poke(addr: u64, value: u64) {
    // SAFETY: as in peek.
    unsafe { (addr as *mut u64).write_volatile(value) }
}

/// Bytes of a [`Line`].
const LINE_BYTES: usize = 128;

/// One line of output, formatted on the stack without `core::fmt`.
pub struct Line {
    buf: [u8; LINE_BYTES],
    len: usize,
}

impl Line {
    /// An empty line.
    pub fn new() -> Self {
        Self {
            buf: [0; LINE_BYTES],
            len: 0,
        }
    }

    /// Appends one byte (dropped when the line is full).
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// Appends text.
    pub fn text(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.byte(b);
        }
        self
    }

    /// Appends a number in decimal.
    pub fn num(&mut self, n: u64) -> &mut Self {
        let mut div = 1;
        while n / div >= 10 {
            div *= 10;
        }
        while div > 0 {
            self.byte(b'0' + (n / div % 10) as u8);
            div /= 10;
        }
        self
    }

    /// Prints the line (with its newline) as one console write.
    pub fn print(&mut self) {
        self.byte(b'\n');
        syscall(nr::WRITE, self.buf.as_ptr() as u64, self.len as u64, 0, 0);
        self.len = 0;
    }
}

/// The first process's code: runs `workload` (an index of
/// [`crate::WORKLOADS`]) and exits 0 if its checks passed, 1 if not.
pub extern "C" fn user_main(workload: u64) -> ! {
    let ok = match workload {
        0 => {
            workloads::fork_tree()
                & workloads::ping_pong()
                & workloads::mem_touch()
                & workloads::cow()
        }
        1 => workloads::fork_tree(),
        2 => workloads::ping_pong(),
        3 => workloads::mem_touch(),
        4 => workloads::cow(),
        // Five times, each a region of its own: the test wants no exit of
        // the guest's own doing in any of them. Host ticks (and the timer
        // handler's work when a tick brings the virtual timer) may land in
        // any number of them, as many as the machine is slow; the host
        // counts those apart, so no loop needs to be free of them.
        5 => (0..5).fold(true, |ok, _| ok & benches::syscall_loop()),
        _ => benches::all(),
    };
    Line::new()
        .text(if ok {
            "user: all checks passed"
        } else {
            "user: CHECK FAILED"
        })
        .print();
    exit(if ok { 0 } else { 1 })
}
