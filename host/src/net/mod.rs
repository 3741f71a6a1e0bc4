//! # The network: a virtual switch joining the guests, the uplink and the host
//!
//! After the devices, the wire between them. Each guest's virtio-net card
//! ([`crate::virtio::net`]) hands every frame the guest sends to a
//! [`crate::virtio::net::FrameSink`]; in the kernel that sink puts it into
//! this switch, on the guest's port. The switch is an ordinary layer-2
//! learning switch, and its other ports are the machine's network card
//! (the uplink, to the world outside) and the host's own TCP/IP interface
//! (smoltcp, which serves the counters page): both drivers live in the
//! kernel, and, like the guests, only give frames to the switch and take
//! frames from it.
//!
//! ```text
//!   guest virtio-net ──┐                      ┌──> guest virtio-net
//!   guest virtio-net ──┤      input           ├──> guest virtio-net
//!   uplink NIC ────────┼──> Switch ──> queues ┼──> uplink NIC
//!   host interface ────┘  (learning)  (drain) └──> host interface
//! ```
//!
//! Everything here is safe, allocation-light bookkeeping, tested on Linux;
//! the kernel's run loop drives it:
//!
//! - at boot, [`Switch::add_port`] for the uplink and the host interface;
//!   for each guest started, one more, and [`Switch::remove_port`] when it
//!   ends;
//! - every frame a port sends goes to [`Switch::input`];
//! - a port's frames come out with [`Switch::drain`], when the port can
//!   take them (for a guest, at its next entry or interrupt, straight into
//!   [`crate::virtio::Device::receive_frames`]);
//!   [`Switch::ports_with_frames`] says which ports have some;
//! - [`Switch::tick`] at a steady pace (the default [`Limits`] assume ten
//!   a second) ages learned addresses and renews each port's floods.
//!
//! Read in this order:
//!
//! 1. [`ethernet`]: MAC addresses, and the size of a frame.
//! 2. [`table`]: the forwarding table, learned and bounded.
//! 3. [`port`]: a port's identity and its counters.
//! 4. [`switch`]: the switch: forwarding, flooding, the bounded queues.
//!
//! ## Decisions
//!
//! - **Guests choose every byte.** Source addresses, destinations, sizes
//!   and rates are all a guest's to pick, so every structure is bounded:
//!   the table (by size, with ageing and eviction), each port's queue (by
//!   frames and bytes), each port's floods (per tick).
//! - **A port's trouble stays its own.** A full queue drops frames for
//!   that port only; a port flooding too fast loses its own floods. The
//!   others never wait.
//! - **No hairpin.** A frame never goes back out of the port it came in
//!   on.
//! - **One broadcast domain.** VLAN tags are carried, not read.

pub mod ethernet;
pub mod port;
pub mod switch;
pub mod table;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;

pub use ethernet::{MAX_FRAME_BYTES, MacAddress};
pub use port::{PortCounters, PortId, PortKind, PortStats};
pub use switch::{Frames, InputDrop, Limits, Outcome, Switch, SwitchCounters};
pub use table::{ForwardingTable, Tick};
