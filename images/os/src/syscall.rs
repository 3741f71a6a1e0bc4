//! System calls: `int 0x80` from user code, a direct trap.
//!
//! The gate is registered with `DIRECT_FROM_USER`: the host puts it in the
//! CPU's IDT as a ring-3-callable gate into our ring-1 code, so a system
//! call goes from ring 3 straight to [`on_syscall`] on the process's kernel
//! stack (TSS.RSP1) and back with `iretq`, and the host never hears of it.
//! (`syscall`/`sysret` would land in the host's ring 0; `docs/DESIGN.md`,
//! "The privilege model".)
//!
//! The convention is Linux's: the number in `rax`, arguments in `rdi`,
//! `rsi`, `rdx`, `r10`, the result in `rax` (`u64::MAX` for failure); the
//! other registers are preserved (the trap path saves them all).

use crate::{pipe, process, vm};
use guest_rt::traps::TrapFrame;
use guest_rt::{bench, hypercall};

/// The system-call vector.
pub const VECTOR: u8 = 0x80;

/// The calls, by number (`rax`).
pub mod nr {
    /// `getpid() -> pid`.
    pub const GETPID: u64 = 0;
    /// `exit(code) -> !`.
    pub const EXIT: u64 = 1;
    /// `fork() -> child pid (parent) | 0 (child)`.
    pub const FORK: u64 = 2;
    /// `wait() -> pid`, exit code in `rdx`.
    pub const WAIT: u64 = 3;
    /// `yield()`.
    pub const YIELD: u64 = 4;
    /// `write(buf, len)`: to the console.
    pub const WRITE: u64 = 5;
    /// `sbrk(delta) -> old break`.
    pub const SBRK: u64 = 6;
    /// `pipe() -> n`.
    pub const PIPE: u64 = 7;
    /// `pipe_read(n, buf, len) -> bytes`.
    pub const PIPE_READ: u64 = 8;
    /// `pipe_write(n, buf, len) -> bytes`.
    pub const PIPE_WRITE: u64 = 9;
    /// `pipe_free(n)`.
    pub const PIPE_FREE: u64 = 10;
    /// `bench_begin() -> id`: the host starts counting events.
    pub const BENCH_BEGIN: u64 = 11;
    /// `bench_end(id, name, iterations, cycles)`: prints the result line.
    pub const BENCH_END: u64 = 12;
    /// `kernel_bench(name, iterations)`: a benchmark the kernel runs.
    pub const KERNEL_BENCH: u64 = 13;
    /// `free_pages() -> count`.
    pub const FREE_PAGES: u64 = 14;
}

/// Benchmark names, by the number user code passes.
pub const BENCH_NAMES: [&str; 11] = [
    "syscall",
    "pf_read",
    "pf_write_after_read",
    "ctxsw_hit",
    "ctxsw_miss",
    "cow_fault",
    "pte_update_single",
    "pte_update_batched",
    "fork_exit_wait",
    "cow_bench",
    "pipe_pingpong",
];

/// Failure, as returned in `rax`.
pub const FAILED: u64 = u64::MAX;

/// The system-call gate's handler.
pub fn on_syscall(frame: &mut TrapFrame) {
    let (a, b, c, d) = (frame.rdi, frame.rsi, frame.rdx, frame.r10);
    frame.rax = match frame.rax {
        nr::GETPID => process::pid(),
        nr::EXIT => process::exit(a),
        nr::FORK => process::fork(frame).unwrap_or(FAILED),
        nr::WAIT => match process::wait() {
            Some((pid, code)) => {
                frame.rdx = code;
                pid
            }
            None => FAILED,
        },
        nr::YIELD => {
            process::yield_now();
            0
        }
        nr::WRITE => write(a, b),
        nr::SBRK => process::sbrk(a as i64).unwrap_or(FAILED),
        nr::PIPE => pipe::create().map_or(FAILED, |n| n as u64),
        nr::PIPE_READ => pipe_read(a, b, c),
        nr::PIPE_WRITE => pipe_write(a, b, c),
        nr::PIPE_FREE => {
            if pipe::destroy(a as usize) {
                0
            } else {
                FAILED
            }
        }
        nr::BENCH_BEGIN => bench::begin(),
        nr::BENCH_END => match BENCH_NAMES.get(b as usize) {
            Some(name) => {
                bench::end(name, a, c, d);
                0
            }
            None => FAILED,
        },
        nr::KERNEL_BENCH => kernel_bench(a, b),
        nr::FREE_PAGES => crate::zero_pool::free_pages(),
        _ => FAILED,
    };
    process::reschedule_if_asked();
}

/// Bytes copied between user memory and the kernel at a time.
const CHUNK: usize = 256;

/// Copies user bytes at `addr` into `buf` (volatile: the pages may fault
/// in, and the compiler must not assume anything of them).
fn copy_in(addr: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        // SAFETY: the caller checked the range is in the user half; a page
        // not mapped there faults into our handler, which maps it or ends
        // the process.
        *byte = unsafe { ((addr + i as u64) as *const u8).read_volatile() };
    }
}

fn copy_out(addr: u64, buf: &[u8]) {
    for (i, &byte) in buf.iter().enumerate() {
        // SAFETY: as in copy_in.
        unsafe { ((addr + i as u64) as *mut u8).write_volatile(byte) };
    }
}

fn write(addr: u64, len: u64) -> u64 {
    if !vm::is_user_range(addr, len) {
        return FAILED;
    }
    let mut buf = [0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        copy_in(addr + done, &mut buf[..n]);
        if hypercall::console_write(&buf[..n]).is_err() {
            return FAILED;
        }
        done += n as u64;
    }
    len
}

fn pipe_read(n: u64, addr: u64, len: u64) -> u64 {
    if !vm::is_user_range(addr, len) {
        return FAILED;
    }
    let mut buf = [0u8; CHUNK];
    let want = len.min(CHUNK as u64) as usize;
    match pipe::read(n as usize, &mut buf[..want]) {
        Some(got) => {
            copy_out(addr, &buf[..got]);
            got as u64
        }
        None => FAILED,
    }
}

fn pipe_write(n: u64, addr: u64, len: u64) -> u64 {
    if !vm::is_user_range(addr, len) {
        return FAILED;
    }
    let mut buf = [0u8; CHUNK];
    let mut done = 0;
    while done < len {
        let count = (len - done).min(CHUNK as u64) as usize;
        copy_in(addr + done, &mut buf[..count]);
        if pipe::write(n as usize, &buf[..count]).is_none() {
            return FAILED;
        }
        done += count as u64;
    }
    len
}

/// The benchmarks only the kernel can run (they time hypercalls), by the
/// number of their name in [`BENCH_NAMES`].
fn kernel_bench(name: u64, iterations: u64) -> u64 {
    let batched = match BENCH_NAMES.get(name as usize) {
        Some(&"pte_update_single") => false,
        Some(&"pte_update_batched") => true,
        _ => return FAILED,
    };
    let space = process::space();
    // Warm: the tables and the shadow path exist before the timing.
    let _ = space.pte_update_bench(2, batched);
    let id = bench::begin();
    let Some(cycles) = space.pte_update_bench(iterations, batched) else {
        return FAILED;
    };
    bench::end(BENCH_NAMES[name as usize], id, iterations, cycles);
    0
}
