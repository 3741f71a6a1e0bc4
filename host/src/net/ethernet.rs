//! Ethernet, as far as a switch needs it: two addresses at the front of a
//! frame, and the sizes a frame may have.
//!
//! A layer-2 switch reads nothing past the first 12 bytes: the destination
//! address says where a frame goes, the source address where its sender
//! lives. The EtherType, a VLAN tag, the payload are carried unread, so
//! every port of the switch is in one broadcast domain.

use core::fmt;

/// The Ethernet header: destination, source, EtherType.
pub const HEADER_BYTES: usize = 14;

/// The largest payload a port may carry: the default MTU.
pub const MTU: usize = 1500;

/// Room for one 802.1Q tag, which the switch carries without reading.
pub const VLAN_TAG_BYTES: usize = 4;

/// The longest frame the switch takes (without its checksum, which virtio
/// and the NIC deal with): a full payload, the header and a VLAN tag.
pub const MAX_FRAME_BYTES: usize = HEADER_BYTES + MTU + VLAN_TAG_BYTES;

// The switch and the virtio-net device must agree on what a frame is, or
// frames one accepts would be dropped silently by the other.
const _: () = assert!(MAX_FRAME_BYTES == crate::virtio::net::MAX_FRAME_BYTES);

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    /// `ff:ff:ff:ff:ff:ff`: every station.
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// The address with these six octets, in wire order.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// Its six octets, in wire order.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether it names a group of stations (multicast, broadcast
    /// included): the I/G bit, the lowest bit of the first octet.
    pub const fn is_group(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether it is the broadcast address.
    pub const fn is_broadcast(self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// Whether it is all zeros, which no station may use as its own.
    pub const fn is_zero(self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }

    /// Whether it can be one station's own address, and so be learned as
    /// living behind a port: neither a group nor zero.
    pub const fn is_station(self) -> bool {
        !self.is_group() && !self.is_zero()
    }
}

impl From<[u8; 6]> for MacAddress {
    fn from(octets: [u8; 6]) -> Self {
        Self(octets)
    }
}

impl fmt::Display for MacAddress {
    /// The usual form, `02:00:00:00:00:01`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why a frame is no frame the switch will carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the Ethernet header.
    Runt,
    /// Longer than [`MAX_FRAME_BYTES`].
    Oversize,
}

/// The two addresses at the front of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// Where the frame goes.
    pub destination: MacAddress,
    /// Who sent it.
    pub source: MacAddress,
}

impl Addresses {
    /// Reads them from `frame`, after checking its length: a frame no
    /// port could carry is refused here, before anything is learned from
    /// it.
    pub fn of(frame: &[u8]) -> Result<Self, FrameError> {
        if frame.len() < HEADER_BYTES {
            return Err(FrameError::Runt);
        }
        if frame.len() > MAX_FRAME_BYTES {
            return Err(FrameError::Oversize);
        }
        Ok(Self {
            destination: MacAddress(octets_at(frame, 0)),
            source: MacAddress(octets_at(frame, 6)),
        })
    }
}

/// The six octets at `start` of a frame at least `start + 6` long.
fn octets_at(frame: &[u8], start: usize) -> [u8; 6] {
    let mut octets = [0; 6];
    octets.copy_from_slice(&frame[start..start + 6]);
    octets
}
