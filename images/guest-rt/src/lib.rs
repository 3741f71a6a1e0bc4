//! # `guest-rt`: the runtime of an rguest paravirtual guest kernel
//!
//! An rguest guest is a small kernel that runs in ring 1 on the host's
//! shadow page tables and asks the host, by hypercall, for everything ring 1
//! may not do (see `guest-abi` for the contract, and `docs/DESIGN.md`,
//! "The privilege model"). This crate is what every such guest needs before
//! it can do anything interesting; the programs in `images/guests` are built
//! on it and stay short.
//!
//! The modules, in the order a guest's life uses them:
//!
//! - [`note`]: the ELF note that tells the host which ABI the image speaks;
//! - `boot` (bare metal only): `_start`, our own stack, the boot parameters
//!   checked, and the program's main called through [`entry!`];
//! - `hypercall`: `int 0x81` and one safe wrapper per call;
//! - [`console`]: `print!`/`println!`, one console write per line;
//! - [`traps`]: the stubs the host delivers exceptions and virtual
//!   interrupts to, and Rust handlers that see a [`traps::TrapFrame`] they
//!   may change;
//! - `irq`, `time`: the virtual interrupt flag in the shared page, and
//!   sleeping on the one-shot virtual timer;
//! - [`paging`]: building page-table entries in the guest's own tables and
//!   reporting them to the host, one at a time or through the MMU ring;
//! - [`probe`]: touching memory that may fault, and learning how it did;
//! - `user`: leaving ring 1 for guest user code (ring 3);
//! - `smp`: starting the guest's other vCPUs, each with a stack and a
//!   shared page of its own, and what of the runtime they may use;
//! - `virtio` (feature `virtio`): the device page as a `virtio-drivers`
//!   transport, DMA memory for its drivers, and waiting for a device's
//!   interrupt.
//!
//! The image layout (linked at guest-virtual `KERNEL_OFFSET + 1 MiB`, loaded
//! at guest-physical 1 MiB) lives in `linker.ld` beside this crate; the
//! guest programs link with it (see `images/guests/build.rs`).
//!
//! It builds for two guest targets: bare metal (`x86_64-unknown-none`, the
//! classic guests, linked with `linker.ld`) and Rust's
//! `x86_64-unknown-hermit` (a position-independent image whose `std` is
//! served by `images/std/hermit`, which supplies its own panic handler).
//! On any other target only the pure parts (entry encodings, the line
//! buffer, the frame layout, the note) are built, so `cargo test` and
//! `cargo clippy` over the workspace pass on Linux and test them there.
#![cfg_attr(any(target_os = "none", target_os = "hermit"), no_std)]

pub mod console;
pub mod note;
pub mod paging;
pub mod probe;
pub mod traps;

#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod bench;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod boot;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod hypercall;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod irq;
// On Hermit, std brings its own panic handler.
#[cfg(target_os = "none")]
mod panic;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod smp;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod time;
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub mod user;
#[cfg(feature = "virtio")]
pub mod virtio;

/// The exit codes the runtime itself uses when it ends a guest. A program's
/// own codes should stay below 100.
pub mod exit_code {
    /// The program panicked (as Rust programs on Linux exit with 101).
    pub const PANIC: u64 = 101;
    /// The boot parameters were not what this runtime was built for.
    pub const BAD_BOOT: u64 = 102;
    /// A trap arrived for which no handler is registered.
    pub const UNHANDLED_TRAP: u64 = 103;
    /// The program ran out of memory (the Rust `std` runtime,
    /// `images/std/hermit`).
    pub const OUT_OF_MEMORY: u64 = 104;
    /// Every thread waits for something nothing can bring (the Rust `std`
    /// runtime's scheduler).
    pub const DEADLOCK: u64 = 105;
}
