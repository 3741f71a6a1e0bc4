//! # `os`: a small multi-process paravirtual guest OS
//!
//! Shadow paging only earns its keep with guests that have many address
//! spaces, so this guest is a tiny Unix-like kernel on top of `guest-rt`:
//! user processes in ring 3, each in its own address space, preempted by the
//! virtual timer; system calls through a *direct trap* (ring 3 straight to
//! the guest kernel in ring 1, no host exit); demand-zero heap and stack;
//! `fork` with copy-on-write; `exit` and `wait`; pipes.
//!
//! Read it in this order:
//!
//! 1. [`cell`]: the one-CPU kernel's way of sharing state;
//! 2. [`frames`]: guest-physical pages, reference-counted for sharing;
//! 3. [`mmu`]: telling the host about page-table changes, one at a time or
//!    batched through the MMU ring;
//! 4. [`vm`]: address spaces: building, forking copy-on-write, faulting,
//!    tearing down; with [`zero_pool`], the pages the host maps at the
//!    first touch of the heap and stack in one exit;
//! 5. [`process`]: the process table, the run queue, context switches,
//!    fork, exit and wait;
//! 6. [`pipe`]: byte pipes between processes;
//! 7. [`syscall`]: the system-call gate and its calls;
//! 8. [`user`]: the user side: the call wrappers and the workloads and
//!    benchmarks that run in ring 3.
//!
//! The command line (`guests=os/<workload>`) picks what the first process
//! runs: `forktree`, `pingpong`, `memtouch`, `cow`, `syscall`, `bench`, or
//! `all` (the default: the four workloads one after another). The guest's
//! exit code is the first process's: 0 when every check passed.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod cell;
#[cfg(target_os = "none")]
mod frames;
#[cfg(target_os = "none")]
mod mmu;
#[cfg(target_os = "none")]
mod pipe;
#[cfg(target_os = "none")]
mod process;
#[cfg(target_os = "none")]
mod syscall;
#[cfg(target_os = "none")]
mod user;
#[cfg(target_os = "none")]
mod vm;
#[cfg(target_os = "none")]
mod zero_pool;

#[cfg(target_os = "none")]
guest_rt::entry!(kernel_main);

/// The workloads the command line can name, in the order `all` runs them.
/// Their index is what the first process receives in `rdi`.
pub const WORKLOADS: [&str; 7] = [
    "all", "forktree", "pingpong", "memtouch", "cow", "syscall", "bench",
];

/// Boots the OS: frames, traps, the timer, the first process; then runs it.
#[cfg(target_os = "none")]
fn kernel_main() -> u64 {
    use guest_rt::{boot, println};
    let cmdline = boot::cmdline();
    let name = if cmdline.is_empty() { "all" } else { cmdline };
    let Some(workload) = WORKLOADS.iter().position(|w| *w == name) else {
        println!("os: unknown workload `{name}`; one of {WORKLOADS:?}");
        return 2;
    };
    frames::init();
    vm::init();
    mmu::init();
    zero_pool::refill();
    process::init_traps();
    println!(
        "os: {} KiB of memory, {} free pages; running `{name}`",
        boot::memory_bytes() / 1024,
        frames::free_count()
    );
    // Never returns: the first process's exit ends the guest.
    process::start_first(workload as u64)
}

#[cfg(not(target_os = "none"))]
fn main() {}
