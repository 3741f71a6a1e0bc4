//! The guest's IPv4 address, and socket addresses as std passes them.
//!
//! # The addressing scheme
//!
//! There is no DHCP server on the guests' switch yet, so each guest
//! derives a static address from its MAC address, which the host makes
//! `02:72:67:00:00:NN`, NN being the guest's position in the host's
//! `guests=` list, from 1:
//!
//! - the address is **`10.0.0.NN/24`**: the first guest is `10.0.0.1`, the
//!   second `10.0.0.2`, and so on, so guests find each other by their
//!   place on the command line (`guests=server,client` : the client
//!   connects to `10.0.0.1`);
//! - the environment variable **`RGUEST_IP=a.b.c.d/len`** (or without
//!   `/len`, meaning /24) on the guest's command line overrides it
//!   (`guests="net-server-std/RGUEST_IP=10.0.0.5/24"`), and
//!   **`RGUEST_GATEWAY=a.b.c.d`** adds a default route; there is none
//!   otherwise (the subnet is the switch).
//!
//! A last byte of 0 or 255 (no such guest position below 255) would make
//! a network or broadcast address; such a guest needs `RGUEST_IP`.
//!
//! Only IPv4 exists: `AF_INET6` sockets are refused.
//!
//! # Socket addresses
//!
//! Hermit's `sockaddr_in` is BSD's: a length byte, a one-byte family
//! (`AF_INET` is 3 on Hermit), the port and the address in network byte
//! order. [`read_socket_address`] and [`socket_address`] convert.

use super::Errno;
use core::net::{Ipv4Addr, SocketAddrV4};
use hermit_abi::errno::{EAFNOSUPPORT, EINVAL};
use hermit_abi::{AF_INET, sockaddr_in, socklen_t};

/// The prefix length of the derived addresses and of an `RGUEST_IP`
/// without one.
pub const DEFAULT_PREFIX_LEN: u8 = 24;

/// The environment variable that sets the address.
pub const ADDRESS_VARIABLE: &str = "RGUEST_IP";

/// The environment variable that sets the default gateway.
pub const GATEWAY_VARIABLE: &str = "RGUEST_GATEWAY";

/// How the interface is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Its address.
    pub address: Ipv4Addr,
    /// The length of its subnet's prefix.
    pub prefix_len: u8,
    /// The default route, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// `10.0.0.NN/24` for a card whose MAC address ends in `NN`.
pub fn derived_from(mac: [u8; 6]) -> Config {
    Config {
        address: Ipv4Addr::new(10, 0, 0, mac[5]),
        prefix_len: DEFAULT_PREFIX_LEN,
        gateway: None,
    }
}

/// `a.b.c.d/len` or `a.b.c.d` (meaning /24).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix_len) = match text.split_once('/') {
        Some((address, len)) => (address, len.parse().ok()?),
        None => (text, DEFAULT_PREFIX_LEN),
    };
    (prefix_len <= 32).then_some((address.parse().ok()?, prefix_len))
}

/// The configuration for a card with `mac`, given the environment's
/// `KEY=VALUE` words: derived, unless the variables say otherwise.
/// `Err` names a variable whose value is malformed.
pub fn choose<'a>(
    mac: [u8; 6],
    environment: impl Iterator<Item = &'a str>,
) -> Result<Config, &'static str> {
    let mut config = derived_from(mac);
    for word in environment {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if key == ADDRESS_VARIABLE {
            let (address, prefix_len) = parse_cidr(value).ok_or(ADDRESS_VARIABLE)?;
            config.address = address;
            config.prefix_len = prefix_len;
        } else if key == GATEWAY_VARIABLE {
            config.gateway = Some(value.parse().map_err(|_| GATEWAY_VARIABLE)?);
        }
    }
    Ok(config)
}

/// The IPv4 socket address in the `len` bytes std passed: `EINVAL` if too
/// short, `EAFNOSUPPORT` for another family.
pub fn read_socket_address(raw: &[u8]) -> Result<SocketAddrV4, Errno> {
    if raw.len() < size_of::<sockaddr_in>() {
        return Err(if raw.len() >= 2 && i32::from(raw[1]) != AF_INET {
            EAFNOSUPPORT
        } else {
            EINVAL
        });
    }
    if i32::from(raw[1]) != AF_INET {
        return Err(EAFNOSUPPORT);
    }
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let address = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
    Ok(SocketAddrV4::new(address, port))
}

/// `address` as a `sockaddr_in`.
pub fn socket_address(address: SocketAddrV4) -> sockaddr_in {
    let mut raw = sockaddr_in {
        sin_len: size_of::<sockaddr_in>() as u8,
        sin_family: AF_INET as u8,
        sin_port: address.port().to_be(),
        ..sockaddr_in::default()
    };
    raw.sin_addr.s_addr = u32::from_ne_bytes(address.ip().octets());
    raw
}

/// The bytes of `address` as a `sockaddr_in`, and the length to report.
pub fn socket_address_bytes(address: SocketAddrV4) -> ([u8; 16], socklen_t) {
    let raw = socket_address(address);
    let mut bytes = [0u8; 16];
    bytes[0] = raw.sin_len;
    bytes[1] = raw.sin_family;
    bytes[2..4].copy_from_slice(&address.port().to_be_bytes());
    bytes[4..8].copy_from_slice(&address.ip().octets());
    (bytes, size_of::<sockaddr_in>() as socklen_t)
}

/// A host name std asks to resolve, if it is one we know without a
/// resolver: a numeric IPv4 address or `localhost`.
pub fn resolve(name: &str) -> Option<Ipv4Addr> {
    if name.eq_ignore_ascii_case("localhost") {
        return Some(Ipv4Addr::LOCALHOST);
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x72, 0x67, 0, 0, 3];

    #[test]
    fn the_address_comes_from_the_mac_unless_the_environment_says() {
        let derived = choose(MAC, ["HOME=/", "X=1"].into_iter()).unwrap();
        assert_eq!(derived.address, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(derived.prefix_len, 24);
        assert_eq!(derived.gateway, None);
        let set = choose(
            MAC,
            ["RGUEST_IP=192.168.7.9/16", "RGUEST_GATEWAY=192.168.0.1"].into_iter(),
        )
        .unwrap();
        assert_eq!(set.address, Ipv4Addr::new(192, 168, 7, 9));
        assert_eq!(set.prefix_len, 16);
        assert_eq!(set.gateway, Some(Ipv4Addr::new(192, 168, 0, 1)));
        let bare = choose(MAC, ["RGUEST_IP=10.1.2.3"].into_iter()).unwrap();
        assert_eq!(
            (bare.address, bare.prefix_len),
            (Ipv4Addr::new(10, 1, 2, 3), 24)
        );
        assert_eq!(
            choose(MAC, ["RGUEST_IP=10.1.2"].into_iter()),
            Err("RGUEST_IP")
        );
        assert_eq!(
            choose(MAC, ["RGUEST_IP=10.1.2.3/33"].into_iter()),
            Err("RGUEST_IP")
        );
        assert_eq!(
            choose(MAC, ["RGUEST_GATEWAY=x"].into_iter()),
            Err("RGUEST_GATEWAY")
        );
    }

    #[test]
    fn socket_addresses_round_trip_in_network_order() {
        let address = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000);
        let (bytes, len) = socket_address_bytes(address);
        assert_eq!(len, 16);
        assert_eq!(&bytes[..8], &[16, AF_INET as u8, 0x1b, 0x58, 10, 0, 0, 1]);
        assert_eq!(read_socket_address(&bytes), Ok(address));
        let raw = socket_address(address);
        assert_eq!(raw.sin_port, 7000u16.to_be());
        assert_eq!(raw.sin_addr.s_addr.to_ne_bytes(), [10, 0, 0, 1]);
        let mut other = bytes;
        other[1] = 1;
        assert_eq!(read_socket_address(&other), Err(EAFNOSUPPORT));
        assert_eq!(read_socket_address(&bytes[..4]), Err(EINVAL));
    }

    #[test]
    fn only_numbers_and_localhost_resolve() {
        assert_eq!(resolve("localhost"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(resolve("10.0.0.2"), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(resolve("example.com"), None);
    }
}
