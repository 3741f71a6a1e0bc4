//! # Devices: virtio back ends, and lguest's transport for them
//!
//! The last chapter of the story (boot -> memory -> switcher -> run loop ->
//! page tables -> devices): how a guest gets a network card, a console and
//! an entropy source without a single trapped register.
//!
//! The devices are virtio 1.x devices, so a guest can drive them with an
//! ordinary virtio driver (the `virtio-drivers` crate, through a small
//! `Transport` of its own), but their transport is lguest's: a page per
//! device in guest memory, two hypercalls, and a virtual interrupt (the
//! contract is `guest_abi::virtio`). The guest sets up the virtio split
//! rings in its own memory; the host reads them only when the guest
//! notifies, and checks every index, address, length and flag it reads
//! before it copies a byte.
//!
//! Read in this order:
//!
//! 1. [`device`]: the transport, common to every device: the device page,
//!    the status and feature handshake, starting and stopping queues,
//!    batches of work and their one interrupt, a device broken by what the
//!    guest handed it ([`Device`], [`Backend`], [`VirtioDevice`]).
//! 2. [`queue`]: the device side of a split virtqueue: the ring layout
//!    checked, available chains taken, used elements published
//!    ([`Virtqueue`]).
//! 3. [`chain`]: a checked descriptor chain and the copying in and out of
//!    it ([`DescriptorChain`]).
//! 4. [`error`]: everything that can be refused, with the words a kill
//!    prints (`virtio-net queue 0: descriptor 5 loops back to 2`).
//! 5. The back ends: [`net`] (frames to a [`net::FrameSink`], from the
//!    host into posted buffers), [`console`] (output to a sink, input from
//!    the host) and [`rng`] (bytes from an [`rng::EntropySource`]).
//! 6. [`set`]: one guest's devices together, numbered, and the two
//!    hypercalls answered with a [`Reply`] for the run loop.
//!
//! ## Decisions
//!
//! - **The host reads driver state only inside a hypercall.** The device
//!   page and the rings are guest memory; the host keeps its own copy of
//!   everything it decided (offered features, queue sizes, each live
//!   queue's checked layout) and never reads those back.
//! - **Broken is final until a reset.** A malformed ring or descriptor
//!   sets `DEVICE_NEEDS_RESET`, stops the device, and is returned as a
//!   [`DeviceError`], so that the run loop can end the guest with the
//!   reason, as it does for a malformed page-table entry.
//! - **No indirect descriptors, no event indices.** Neither is offered, so
//!   the ring is the plain one; batching (one notify takes every ready
//!   chain, one interrupt covers every completion) does the work event
//!   indices would, `VIRTQ_AVAIL_F_NO_INTERRUPT` is honoured, and a queue
//!   the host looks at by itself (virtio-net's receive buffers) is marked
//!   `VIRTQ_USED_F_NO_NOTIFY`, so posting buffers there costs no exit.
//! - **Bounded work.** A chain holds at most the queue's size of
//!   descriptors and [`MAX_CHAIN_BYTES`] bytes, and a notify takes the
//!   chains the available index shows, which may be at most a queue's
//!   worth ahead of the device.

pub mod chain;
pub mod console;
pub mod device;
pub mod error;
mod memory;
pub mod net;
pub mod queue;
pub mod rng;
pub mod set;

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;

pub use chain::{Buffer, DescriptorChain, Direction};
pub use device::{Backend, Device, DeviceCounters, QueueSpec, VirtioDevice};
pub use error::{DeviceError, Problem, QueueError, Ring};
pub use queue::{Interrupt, QueueLayout, Virtqueue};
pub use set::{GuestDevices, Reply};

/// The most bytes one descriptor chain may hold: far more than a frame or
/// a console line, and a bound on what one request can make the host copy.
pub const MAX_CHAIN_BYTES: u64 = 1 << 20;
