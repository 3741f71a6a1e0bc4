//! The host's own network interface, and the counters page it serves.
//!
//! The last stop of the network chapter. The guests' cards and the
//! machine's NIC ([`crate::nic`]) are ports of the virtual switch
//! ([`host::net`]); so is the host itself, through a TCP/IP stack of its
//! own (`smoltcp`) with a MAC address of its own ([`HOST_MAC`]). What the
//! switch queues for the host's port goes into smoltcp's receive queue,
//! and what smoltcp sends goes into the switch on that port ([`PortWire`]):
//! to the stack, the switch is its Ethernet cable.
//!
//! The interface gets its address from a DHCP server on the uplink (QEMU's
//! user networking hands out 10.0.2.15, with the gateway 10.0.2.2), or from
//! the command line (`host_ip=`, `host_gateway=`). On it the host serves,
//! at `http_port=` (80), the counters ([`http`], [`snapshot`]): `GET
//! /counters` as JSON, `GET /` as a page that reloads itself. Connections
//! are served in turn by a few listening sockets, each one request, each
//! bounded in size and time.
//!
//! The run loop drives it like everything else: [`HostNet::poll`] at its
//! poll points, with the switch and the host's port, and a closure that
//! fills a [`Snapshot`] should a request want one.

pub mod http;
pub mod selftest;
pub mod snapshot;

pub use snapshot::{HostLine, MemoryLine, PortLine, Snapshot, UplinkLine};

use crate::nic::Uplink;
use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use host::config::{Config, HostIp};
use host::net::{MAX_FRAME_BYTES, MacAddress, PortId, Switch};
use http::{MAX_REQUEST_BYTES, Route};
use smoltcp::iface::{Config as InterfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// The host interface's MAC address: locally administered (`02`), "rg",
/// then number 0, which no guest has (theirs count from 1).
pub const HOST_MAC: MacAddress = MacAddress::new([0x02, 0x72, 0x67, 0, 0, 0]);

/// Connections served at once. One more is refused (reset): smoltcp has
/// no backlog, a socket is one connection. Eight leave room for a browser's
/// few idle connections beside a script's requests.
const HTTP_SOCKETS: usize = 8;
/// Each socket's receive buffer: one request head.
const HTTP_RX_BYTES: usize = MAX_REQUEST_BYTES;
/// Each socket's send buffer; a longer answer is fed in as it drains.
const HTTP_TX_BYTES: usize = 16 * 1024;
/// A connection whose request head has not come in by then is answered
/// with what came (most likely 400): a client that connects and sends
/// nothing must not hold a socket for long.
const REQUEST_LIMIT_MS: u64 = 5_000;
/// A connection not answered and closed by then is reset (a client that
/// does not read its answer).
const CONNECTION_LIMIT_MS: u64 = 10_000;
/// How often the page reloads itself.
const PAGE_REFRESH_S: u32 = 2;
/// Frames waiting each way between the switch and the stack.
const WIRE_QUEUE_FRAMES: usize = 64;

/// The host's interface: the stack, its sockets, and its side of the
/// switch port.
pub struct HostNet {
    iface: Interface,
    sockets: SocketSet<'static>,
    wire: PortWire,
    dhcp: Option<SocketHandle>,
    connections: Vec<Connection>,
    http_port: u16,
    mac: MacAddress,
    http_requests: u64,
}

impl HostNet {
    /// The interface `config` asks for (`None` with `host_ip=off`), with
    /// MAC `mac`, at host time `now_ms`. Prints one line saying how it is
    /// addressed and where the counters will be.
    pub fn new(config: &Config<'_>, mac: MacAddress, now_ms: u64) -> Option<HostNet> {
        let mut wire = PortWire::default();
        let hardware = HardwareAddress::Ethernet(EthernetAddress(mac.octets()));
        let mut interface_config = InterfaceConfig::new(hardware);
        interface_config.random_seed = crate::apic::rdtsc();
        let mut iface = Interface::new(interface_config, &mut wire, instant(now_ms));
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = match config.host_ip {
            HostIp::Off => {
                println!("hostnet: off (host_ip=off)");
                return None;
            }
            HostIp::Dhcp => {
                println!(
                    "hostnet: interface {mac}, address by DHCP; counters on TCP port {}",
                    config.http_port
                );
                Some(sockets.add(dhcpv4::Socket::new()))
            }
            HostIp::Static {
                address,
                prefix_len,
            } => {
                set_address(
                    &mut iface,
                    Ipv4Cidr::new(address, prefix_len),
                    config.host_gateway,
                );
                println!(
                    "hostnet: interface {mac}, address {address}/{prefix_len}; counters at http://{address}:{}/",
                    config.http_port
                );
                None
            }
        };
        let connections = (0..HTTP_SOCKETS)
            .map(|_| {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; HTTP_RX_BYTES]),
                    tcp::SocketBuffer::new(vec![0; HTTP_TX_BYTES]),
                );
                Connection::new(sockets.add(socket))
            })
            .collect();
        Some(HostNet {
            iface,
            sockets,
            wire,
            dhcp,
            connections,
            http_port: config.http_port,
            mac,
            http_requests: 0,
        })
    }

    /// One round of the interface at host time `now_ms`: takes the frames
    /// the switch holds for `port`, lets the stack and the DHCP client
    /// work, serves HTTP (calling `snapshot` at most once, and only if a
    /// request is waiting for the numbers), and puts what the stack sends
    /// into the switch. Bounded work: at most a queue's worth of frames
    /// each way.
    pub fn poll(
        &mut self,
        now_ms: u64,
        switch: &mut Switch,
        port: PortId,
        snapshot: impl FnOnce(&Switch) -> Snapshot,
    ) {
        self.wire.take_from(switch, port);
        let now = instant(now_ms);
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        self.follow_dhcp();
        if self.read_requests(now_ms) {
            let mut numbers = snapshot(switch);
            numbers.host = self.host_line();
            self.answer_requests(&numbers);
        }
        self.write_answers();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        self.wire.give_to(switch, port);
    }

    /// Its IPv4 address, once it has one.
    pub fn address(&self) -> Option<Ipv4Cidr> {
        // The stack speaks IPv4 alone: every address is one.
        self.iface.ip_addrs().first().map(|cidr| match cidr {
            IpCidr::Ipv4(v4) => *v4,
        })
    }

    /// HTTP requests answered so far.
    pub fn http_requests(&self) -> u64 {
        self.http_requests
    }

    /// Whether a connection is open now (a request being read or answered).
    pub fn serving(&self) -> bool {
        self.connections.iter().any(|c| c.since_ms.is_some())
    }

    /// Its own line of the counters page.
    pub fn host_line(&self) -> HostLine {
        let gateway = self
            .iface
            .routes()
            .get_default_ipv4_route()
            .map(|route| route.via_router.to_string());
        HostLine {
            mac: self.mac.to_string(),
            address: self.address().map(|a| a.to_string()),
            gateway,
            http_requests: self.http_requests,
        }
    }

    /// Applies what the DHCP client learnt (or lost).
    fn follow_dhcp(&mut self) {
        let Some(handle) = self.dhcp else {
            return;
        };
        match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            None => {}
            Some(dhcpv4::Event::Configured(lease)) => {
                set_address(&mut self.iface, lease.address, lease.router);
                let router = lease
                    .router
                    .map_or_else(|| String::from("none"), |r| r.to_string());
                println!(
                    "hostnet: address {} by DHCP from {}, gateway {router}; counters at http://{}:{}/",
                    lease.address,
                    lease.server.address,
                    lease.address.address(),
                    self.http_port
                );
            }
            Some(dhcpv4::Event::Deconfigured) => {
                // The client says so once at its start too, with no lease
                // to lose: only a lost lease is news.
                if self.address().is_some() {
                    println!("hostnet: DHCP lease lost; no address");
                }
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
            }
        }
    }

    /// Re-arms closed sockets, reads request heads, and drops connections
    /// held too long. Says whether a request now waits for its answer.
    fn read_requests(&mut self, now_ms: u64) -> bool {
        let mut waiting = false;
        for connection in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(connection.handle);
            connection.step(socket, self.http_port, now_ms);
            waiting |= connection.phase == Phase::Answering && connection.answer.is_empty();
        }
        waiting
    }

    /// Gives every request waiting its answer, from `numbers`.
    fn answer_requests(&mut self, numbers: &Snapshot) {
        let mut json = None;
        let mut html = None;
        for connection in &mut self.connections {
            if connection.phase != Phase::Answering || !connection.answer.is_empty() {
                continue;
            }
            let request = http::parse(&connection.received);
            let (content_type, body) = match request.route {
                Route::Counters => (
                    "application/json",
                    json.get_or_insert_with(|| render(|out| numbers.write_json(out))),
                ),
                Route::Page => (
                    "text/html; charset=utf-8",
                    html.get_or_insert_with(|| {
                        render(|out| numbers.write_html(out, PAGE_REFRESH_S))
                    }),
                ),
                other => ("text/plain; charset=utf-8", &mut error_body(other)),
            };
            connection.answer = http::response(request, content_type, body.as_bytes());
            self.http_requests += 1;
        }
    }

    /// Feeds each answer into its socket as room frees, and closes the
    /// connection once all of it is in.
    fn write_answers(&mut self) {
        for connection in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(connection.handle);
            connection.write(socket);
        }
    }
}

/// Renders with `write` into a new string (formatting into a `String`
/// cannot fail).
fn render(write: impl FnOnce(&mut String) -> core::fmt::Result) -> String {
    let mut out = String::new();
    let _ = write(&mut out);
    out
}

/// The short text body of an error answer.
fn error_body(route: Route) -> String {
    let (code, reason) = http::status(route);
    alloc::format!("{code} {reason}: this host serves / and /counters\n")
}

/// Gives the interface `address`, and `router` as its default route.
fn set_address(iface: &mut Interface, address: Ipv4Cidr, router: Option<Ipv4Address>) {
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        // The list holds at least one address.
        let _ = addrs.push(IpCidr::Ipv4(address));
    });
    match router {
        Some(router) => {
            let _ = iface.routes_mut().add_default_ipv4_route(router);
        }
        None => {
            iface.routes_mut().remove_default_ipv4_route();
        }
    }
}

/// Host milliseconds as smoltcp's clock.
fn instant(now_ms: u64) -> Instant {
    Instant::from_millis(now_ms.min(i64::MAX as u64) as i64)
}

/// Where an HTTP connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Listening, or reading the request head.
    Reading,
    /// The head is in; the answer is made, or being fed to the socket.
    Answering,
    /// All of the answer is in the socket, which is closing.
    Closing,
}

/// One listening socket and the request it serves.
struct Connection {
    handle: SocketHandle,
    phase: Phase,
    /// The request head so far (at most `MAX_REQUEST_BYTES`).
    received: Vec<u8>,
    /// The answer, once made.
    answer: Vec<u8>,
    /// How much of it the socket has taken.
    sent: usize,
    /// When the connection was established, while it is.
    since_ms: Option<u64>,
}

impl Connection {
    fn new(handle: SocketHandle) -> Self {
        Self {
            handle,
            phase: Phase::Reading,
            received: Vec::new(),
            answer: Vec::new(),
            sent: 0,
            since_ms: None,
        }
    }

    /// Forgets the last request and listens again.
    fn listen(&mut self, socket: &mut tcp::Socket<'_>, port: u16) {
        if socket.state() != tcp::State::Closed {
            socket.abort();
        }
        // Only fails for port 0 or a socket still open: neither here.
        let _ = socket.listen(port);
        self.forget();
    }

    /// Forgets the last request.
    fn forget(&mut self) {
        self.phase = Phase::Reading;
        self.received.clear();
        self.answer = Vec::new();
        self.sent = 0;
        self.since_ms = None;
    }

    /// Moves the connection on by what its socket did.
    fn step(&mut self, socket: &mut tcp::Socket<'_>, port: u16, now_ms: u64) {
        match socket.state() {
            // Closed, or closed by us and done (TIME-WAIT keeps nothing
            // we need: the answer was acknowledged): serve the next.
            tcp::State::Closed | tcp::State::TimeWait => return self.listen(socket, port),
            // Listening again by itself (a reset before the handshake
            // ended): nothing of the last request may leak into the next.
            tcp::State::Listen | tcp::State::SynReceived => {
                if self.since_ms.is_some() {
                    self.forget();
                }
                return;
            }
            _ => {}
        }
        let since = *self.since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) > CONNECTION_LIMIT_MS {
            return self.listen(socket, port);
        }
        if self.phase != Phase::Reading {
            // Whatever else the client sends is dropped, so that its
            // FIN, behind it, is not kept out by a full window.
            while socket.can_recv() {
                match socket.recv(|data| (data.len(), ())) {
                    Ok(()) => {}
                    Err(_) => break,
                }
            }
            return;
        }
        let mut chunk = [0u8; 512];
        while self.received.len() < MAX_REQUEST_BYTES && socket.can_recv() {
            let room = (MAX_REQUEST_BYTES - self.received.len()).min(chunk.len());
            match socket.recv_slice(&mut chunk[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
            }
        }
        // A client that stops sending before the empty line gets an
        // answer to what it sent (most likely 400).
        let too_slow = now_ms.saturating_sub(since) > REQUEST_LIMIT_MS;
        if http::head_complete(&self.received) || !socket.may_recv() || too_slow {
            self.phase = Phase::Answering;
        }
    }

    /// Feeds the answer to the socket; closes it once all is in.
    fn write(&mut self, socket: &mut tcp::Socket<'_>) {
        if self.phase != Phase::Answering || self.answer.is_empty() {
            return;
        }
        while self.sent < self.answer.len() && socket.can_send() {
            match socket.send_slice(&self.answer[self.sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.sent += n,
            }
        }
        if self.sent == self.answer.len() {
            socket.close();
            self.phase = Phase::Closing;
        }
    }
}

/// The host's side of its switch port, as smoltcp's device: frames the
/// switch delivered, waiting for the stack, and frames the stack sent,
/// waiting for the switch.
#[derive(Default)]
pub struct PortWire {
    inbound: VecDeque<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}

impl PortWire {
    /// Takes the frames the switch holds for `port`, as many as there is
    /// room for (the rest wait in the switch, which bounds them).
    fn take_from(&mut self, switch: &mut Switch, port: PortId) {
        let room = WIRE_QUEUE_FRAMES.saturating_sub(self.inbound.len());
        switch.drain(port, |frames| {
            for frame in frames.take(room) {
                self.inbound.push_back(frame.to_vec());
            }
        });
    }

    /// Puts what the stack sent into the switch on `port`.
    fn give_to(&mut self, switch: &mut Switch, port: PortId) {
        for frame in self.outbound.drain(..) {
            switch.input(port, &frame);
        }
    }
}

impl Device for PortWire {
    type RxToken<'a> = InboundFrame;
    type TxToken<'a> = OutboundFrame<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(InboundFrame, OutboundFrame<'_>)> {
        let frame = self.inbound.pop_front()?;
        Some((InboundFrame(frame), OutboundFrame(&mut self.outbound)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<OutboundFrame<'_>> {
        (self.outbound.len() < WIRE_QUEUE_FRAMES).then_some(OutboundFrame(&mut self.outbound))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        // smoltcp counts the Ethernet header in the MTU; the switch's
        // largest frame also leaves room for a VLAN tag we never send.
        capabilities.max_transmission_unit = MAX_FRAME_BYTES - 4;
        capabilities.max_burst_size = Some(WIRE_QUEUE_FRAMES);
        capabilities
    }
}

/// A frame from the switch, for the stack to read.
pub struct InboundFrame(Vec<u8>);

impl RxToken for InboundFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Room for a frame the stack sends, queued for the switch.
pub struct OutboundFrame<'a>(&'a mut VecDeque<Vec<u8>>);

impl TxToken for OutboundFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

/// The uplink's line of the counters page.
pub fn uplink_line(uplink: &Uplink) -> UplinkLine {
    let counters = uplink.counters();
    UplinkLine {
        location: uplink.location().to_string(),
        model: uplink.model().to_string(),
        mac: uplink.mac().to_string(),
        rx_packets: counters.rx_packets,
        rx_bytes: counters.rx_bytes,
        tx_packets: counters.tx_packets,
        tx_bytes: counters.tx_bytes,
    }
}

/// The machine's memory line of the counters page, now.
pub fn memory_line() -> MemoryLine {
    let (heap_allocations, heap_bytes) = crate::memory::heap::usage();
    MemoryLine {
        frames: crate::memory::frame_stats(),
        heap_allocations,
        heap_bytes,
        heap_size: crate::memory::heap::HEAP_SIZE,
    }
}

/// Prints `numbers` on the console as `stats ...` lines (what
/// `stats_interval_ms=` asks for, and what the lead may print on demand).
pub fn print_stats(numbers: &Snapshot) {
    let text = render(|out| numbers.write_text(out));
    for line in text.lines() {
        println!("{line}");
    }
}
