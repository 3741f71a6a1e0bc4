//! The machine's own network cards, as plain data.
//!
//! The kernel drives the machine's NIC (`kernel/src/nic/`): it maps the
//! card's registers and lends it memory, which takes `unsafe` and a bare
//! machine. What a driver *decides* — which register holds what, how a
//! descriptor is laid out, whether what the card wrote back is a frame we
//! may hand on — is plain data, and lives here, where `cargo test` runs it
//! on Linux.
//!
//! - [`e1000`]: Intel's 8254x/82574 family (QEMU's `-device e1000` is the
//!   82540EM): its registers, its legacy descriptors, and the checks on
//!   every one the card hands back.

pub mod e1000;
