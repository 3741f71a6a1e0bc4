//! # `hermit`: the library OS for Rust `std` programs on rguest
//!
//! Rust's `x86_64-unknown-hermit` target builds an ordinary `std` program
//! that reaches its operating system only through the `sys_*` functions
//! the `hermit-abi` crate declares (`sys_write`, `sys_malloc`,
//! `sys_spawn2`, `sys_futex_wait`, `sys_open`, ...). The Hermit project
//! links such programs with its own kernel; this crate is a small kernel of
//! our own for the same functions, built on `guest-rt`, so that the program
//! becomes an rguest guest: a position-independent ELF the host loads,
//! relocates and enters in ring 1.
//!
//! A program uses it with two lines, as every Hermit program does:
//! `hermit = { package = "rguest-hermit", path = ".../images/std/hermit" }`
//! in its `Cargo.toml` and `use hermit as _;` in its `main.rs`.
//!
//! The modules, in the order a guest's life uses them:
//!
//! - `start`: the program's start (guest-rt's `_start` calls it): the
//!   heap, thread-local storage, the scheduler, then std's
//!   `runtime_entry` on the main thread;
//! - [`args`]: the command line as arguments and environment (the
//!   convention is documented there);
//! - `memory`: the heap (`talc` over the guest memory after the image);
//! - `tls`: each thread's thread-local block, copied from `PT_TLS`, and
//!   its FS base;
//! - `sched`: threads, a round-robin scheduler preempted by the virtual
//!   timer, and the idle loop that halts, on each of the guest's vCPUs;
//!   `smp`: starting the other vCPUs and knowing which one code runs on;
//!   `sync`: the lock (interrupts off, and a spin lock with several
//!   vCPUs), and the lock order; `thread`: std's thread calls on the
//!   scheduler; `futex`: waiting on a word;
//! - `time`: the clocks and sleeping; `entropy`: random bytes;
//! - `console`: standard output and error, a line at a time;
//! - [`fs`]: a writable file tree in guest memory;
//! - [`net`]: TCP and UDP sockets on smoltcp over the guest's virtio-net
//!   card (the addressing scheme is in [`net::address`]);
//! - `process`: exit, abort (a panic: 101; out of memory: 104) and the
//!   process id.
//!
//! Which `sys_*` functions exist, and what the failing ones return, is in
//! each module; `std` needs 48 of them for a program that uses threads,
//! sync, time, the environment, files and the network.
//!
//! On any target but Hermit only the pure parts (argument parsing, paths,
//! the file tree) are built, so `cargo test` runs them on Linux.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod args;
pub mod fs;
pub mod net;

#[cfg(target_os = "hermit")]
mod console;
#[cfg(target_os = "hermit")]
mod entropy;
#[cfg(target_os = "hermit")]
mod futex;
#[cfg(target_os = "hermit")]
mod memory;
#[cfg(target_os = "hermit")]
mod process;
#[cfg(target_os = "hermit")]
mod sched;
#[cfg(target_os = "hermit")]
mod smp;
#[cfg(target_os = "hermit")]
mod start;
#[cfg(target_os = "hermit")]
mod sync;
#[cfg(target_os = "hermit")]
mod thread;
#[cfg(target_os = "hermit")]
mod time;
#[cfg(target_os = "hermit")]
mod tls;
