//! # `host`: the hypervisor proper
//!
//! This crate is everything that judges a guest, written in safe Rust so that
//! a hostile guest meets no `unsafe` on its way in, and so that all of it runs
//! in `cargo test` on Linux. The bare-metal kernel (`kernel/`) supplies the
//! hardware through small traits and calls in here.
//!
//! Read the modules in story order:
//!
//! 1. [`addr`]: the three address spaces we juggle (host-physical,
//!    guest-physical, guest-virtual), as distinct types.
//! 2. [`config`]: the kernel command line, parsed into a typed [`config::Config`].
//! 3. [`frames`]: the physical frame allocator's bookkeeping: which 4 KiB
//!    frames of host RAM are free, counted so leaks show.
//! 4. [`archive`]: the guest archive a boot carries, checked before use.
//! 5. [`guest`]: a guest's life: loading its image, and the run loop's
//!    decisions at each exit (hypercalls, faults, traps, kills).
//! 6. [`paging`]: the shadow page tables, the real tables the CPU uses while
//!    a guest runs, built from the guest's own and never granting more.
//! 7. [`virtio`]: the guests' devices: virtio back ends (net, console,
//!    entropy) behind lguest's transport, a page per device, notify by
//!    hypercall and completion by virtual interrupt, every ring checked.
//! 8. [`net`]: the virtual switch joining every guest's virtio-net, the
//!    uplink and the host's own interface: learning, bounded queues, counters.
//! 9. [`nic`]: the machine's own network cards as plain data: the e1000
//!    family's registers and descriptors, every one the card writes judged.
//! 10. [`text`]: a guest's console output made safe for the operator's
//!     terminal.
//! 11. [`sched`]: the scheduling policy: which vCPU each CPU runs next,
//!     per-CPU run queues, time slices, stealing, idle CPUs halting.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addr;
pub mod archive;
pub mod config;
pub mod frames;
pub mod guest;
pub mod net;
pub mod nic;
pub mod paging;
pub mod sched;
pub mod text;
pub mod virtio;
