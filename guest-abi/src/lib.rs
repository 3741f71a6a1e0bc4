//! # `guest-abi`: the contract between host and guest
//!
//! Everything a paravirtual guest and the rguest host must agree on lives
//! here, and nothing else: no dependencies beyond `core`, no `unsafe`, so
//! both sides (and a reader) can trust it. The host checks [`ABI_VERSION`]
//! when a guest starts; a guest built against another version is refused.
//!
//! Read in this order:
//!
//! - [`boot`]: how a guest is loaded and entered, and its boot parameters.
//! - [`hypercall`]: the calling convention and the calls.
//! - [`frame`]: the shape of a trap's registers, on both sides.
//! - [`shared`]: the page both sides read and write without a call (the
//!   virtual interrupt flag, pending interrupts, the fault address, the
//!   pool of pages the host fills on demand).
//! - [`pte`]: what the bits of the guest's page-table entries mean to the
//!   host, and the ring through which the guest reports its changes.
//! - [`virtio`]: the guest's devices: a page per device in guest memory,
//!   notify and status by hypercall, completion by virtual interrupt, and
//!   the virtio split rings the host reads and writes.
#![no_std]
#![forbid(unsafe_code)]

/// The version of this contract. Bump it on any incompatible change.
pub const ABI_VERSION: u32 = 6;

pub mod boot;
pub mod frame;
pub mod hypercall;
pub mod pte;
pub mod shared;
pub mod virtio;
