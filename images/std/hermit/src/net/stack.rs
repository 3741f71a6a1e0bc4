//! The TCP/IP stack: smoltcp's interface over the card, and the sockets
//! std's programs hold.
//!
//! Each socket of the program ([`Socket`], numbered by a [`SocketId`]
//! that the descriptor table keeps) is one of:
//!
//! - a **fresh stream**: a TCP socket before `connect` or `listen`, which
//!   only remembers what `bind` gave it;
//! - a **stream**: one smoltcp TCP socket, connecting or connected;
//! - a **listener**: smoltcp has no listening socket that spawns
//!   connections, so a listener keeps up to [`MAX_BACKLOG`] smoltcp TCP
//!   sockets listening on its port; each takes one connection, and
//!   `accept` hands over one that has been established and puts a fresh
//!   listening one in its place;
//! - a **datagram** socket: one smoltcp UDP socket, with the peer
//!   `connect` chose.
//!
//! Every operation here is one attempt that never blocks: it answers
//! `None` when it would have to wait, and the caller (`super::block_on`)
//! waits for the card or a timer and tries again. The stack itself is
//! plain data behind one guard (virtual interrupts off), like the file
//! system.
//!
//! A stream the program closes is not dropped at once: smoltcp still has
//! to send what is queued and say goodbye. It is kept in a list of
//! closing sockets until it is closed or waiting out `TIME-WAIT`.

use super::address::Config;
use super::link::Link;
use super::{Errno, SocketId};
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use hermit_abi::errno::{
    EADDRINUSE, EADDRNOTAVAIL, EAGAIN, EALREADY, EBADF, ECONNREFUSED, EINVAL, EISCONN, EMSGSIZE,
    ENETUNREACH, ENOTCONN, EOPNOTSUPP, EPIPE,
};
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

/// Bytes of each TCP socket's receive buffer (its window).
const TCP_RECEIVE_BYTES: usize = 64 * 1024;
/// Bytes of each TCP socket's transmit buffer.
const TCP_SEND_BYTES: usize = 64 * 1024;
/// Datagrams each UDP socket queues each way.
const UDP_PACKETS: usize = 64;
/// Bytes of datagrams each UDP socket queues each way.
const UDP_BYTES: usize = 64 * 1024;
/// The largest UDP payload: one Ethernet frame (no IP fragmentation).
pub const MAX_DATAGRAM_BYTES: usize = 1500 - 20 - 8;
/// The most connections a listener has waiting to be accepted.
pub const MAX_BACKLOG: usize = 8;
/// The first ephemeral port (IANA's range).
const FIRST_EPHEMERAL_PORT: u16 = 49152;

/// Whether a socket is TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `SOCK_STREAM`.
    Tcp,
    /// `SOCK_DGRAM`.
    Udp,
}

/// Which half of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// No more reading: reads answer the end of the stream.
    pub read: bool,
    /// No more writing: a FIN goes out after what is queued.
    pub write: bool,
}

/// What a socket is now.
enum State {
    FreshStream {
        bound: Option<SocketAddrV4>,
    },
    Stream {
        handle: SocketHandle,
        /// `connect` was called and has not yet been seen to succeed.
        connecting: bool,
    },
    Listener {
        local: SocketAddrV4,
        waiting: Vec<SocketHandle>,
    },
    Datagram {
        handle: SocketHandle,
        peer: Option<SocketAddrV4>,
    },
}

/// The options std sets and reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `FIONBIO`: never wait.
    pub nonblocking: bool,
    /// `SO_RCVTIMEO`, in nanoseconds.
    pub receive_timeout: Option<u64>,
    /// `SO_SNDTIMEO`, in nanoseconds.
    pub send_timeout: Option<u64>,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `SO_REUSEADDR` (reported; binding a port twice is refused anyway
    /// only while a listener holds it).
    pub reuse_address: bool,
    /// `SO_KEEPALIVE`.
    pub keep_alive: bool,
    /// `SO_BROADCAST` (reported only).
    pub broadcast: bool,
    /// `SO_LINGER`, seconds (reported only; closing always finishes the
    /// stream in the background).
    pub linger: Option<i32>,
}

/// One socket of the program's.
pub struct Socket {
    state: State,
    /// Its options.
    pub options: Options,
    /// What `SO_ERROR` reports (and clears): 0 or an errno.
    pub error: Errno,
    shutdown: Shutdown,
}

/// What `poll` looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A read (or accept) would not wait.
    pub readable: bool,
    /// A write would not wait.
    pub writable: bool,
    /// The connection is gone (refused, reset, or both sides closed).
    pub hung_up: bool,
}

/// The interface, the card, and every socket.
pub struct Stack {
    interface: Interface,
    link: Link,
    sockets: SocketSet<'static>,
    table: BTreeMap<SocketId, Socket>,
    next_id: SocketId,
    next_port: u16,
    config: Config,
    closing: Vec<SocketHandle>,
}

// SAFETY: what is not `Send` in a stack is the card's transport, a pointer
// to its device page, which is in the start-up map for the guest's life and
// the same for every thread; the guest has one CPU, and the stack is only
// reached behind the network's guard (virtual interrupts off).
unsafe impl Send for Stack {}

/// smoltcp's time from the host's nanoseconds.
pub fn instant(now_ns: u64) -> Instant {
    Instant::from_micros(now_ns as i64 / 1000)
}

fn endpoint(address: SocketAddrV4) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(*address.ip()), address.port())
}

fn from_endpoint(endpoint: IpEndpoint) -> SocketAddrV4 {
    let IpAddress::Ipv4(address) = endpoint.addr;
    SocketAddrV4::new(address, endpoint.port)
}

fn listen_endpoint(address: SocketAddrV4) -> IpListenEndpoint {
    let addr = (!address.ip().is_unspecified()).then_some(IpAddress::Ipv4(*address.ip()));
    IpListenEndpoint {
        addr,
        port: address.port(),
    }
}

fn new_tcp_socket() -> tcp::Socket<'static> {
    let receive = tcp::SocketBuffer::new(vec![0; TCP_RECEIVE_BYTES]);
    let send = tcp::SocketBuffer::new(vec![0; TCP_SEND_BYTES]);
    let mut socket = tcp::Socket::new(receive, send);
    // Acknowledge every batch at once: the peer's window moves sooner, and
    // a poll processes all frames waiting before it answers anyway.
    socket.set_ack_delay(None);
    socket
}

fn new_udp_socket() -> udp::Socket<'static> {
    let buffer = || {
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            vec![0; UDP_BYTES],
        )
    };
    udp::Socket::new(buffer(), buffer())
}

/// Whether a TCP socket is still setting its connection up.
fn is_opening(state: tcp::State) -> bool {
    matches!(state, tcp::State::SynSent | tcp::State::SynReceived)
}

impl Stack {
    /// A stack on `link` configured by `config`, at `now_ns`.
    pub fn new(mut link: Link, config: Config, now_ns: u64, seed: u64) -> Self {
        let mac = smoltcp::wire::EthernetAddress(link.mac());
        let mut interface_config = smoltcp::iface::Config::new(mac.into());
        interface_config.random_seed = seed;
        let mut interface = Interface::new(interface_config, &mut link, instant(now_ns));
        interface.update_ip_addrs(|addresses| {
            let cidr = IpCidr::new(IpAddress::Ipv4(config.address), config.prefix_len);
            let _ = addresses.push(cidr);
        });
        if let Some(gateway) = config.gateway {
            let _ = interface.routes_mut().add_default_ipv4_route(gateway);
        }
        Stack {
            interface,
            link,
            sockets: SocketSet::new(Vec::new()),
            table: BTreeMap::new(),
            next_id: 1,
            next_port: FIRST_EPHEMERAL_PORT + (seed % 1000) as u16,
            config,
            closing: Vec::new(),
        }
    }

    /// The interface's configuration.
    pub fn config(&self) -> Config {
        self.config
    }

    /// The card's counters.
    pub fn link_counters(&self) -> super::link::Counters {
        self.link.counters()
    }

    /// The card's device number (whose held-back notifies
    /// `guest_rt::virtio::flush_notifies` makes).
    pub fn card(&self) -> usize {
        self.link.device()
    }

    /// Lets smoltcp take in what the card received and send what is due;
    /// true if any socket may have changed. Also forgets closing streams
    /// that are done. What the poll sends waits on the card's ring for
    /// `super::with_stack` to hand it to the host, with one notify.
    pub fn poll(&mut self, now_ns: u64) -> bool {
        self.link.acknowledge_interrupt();
        let result = self
            .interface
            .poll(instant(now_ns), &mut self.link, &mut self.sockets);
        self.forget_finished();
        result == PollResult::SocketStateChanged
    }

    /// How long until smoltcp wants to be polled again (a retransmission,
    /// a delayed acknowledgement), if it does.
    pub fn poll_delay_ns(&mut self, now_ns: u64) -> Option<u64> {
        self.interface
            .poll_delay(instant(now_ns), &self.sockets)
            .map(|delay| delay.total_micros().saturating_mul(1000))
    }

    fn forget_finished(&mut self) {
        let sockets = &mut self.sockets;
        self.closing.retain(|&handle| {
            let state = sockets.get::<tcp::Socket>(handle).state();
            let done = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(handle);
            }
            !done
        });
    }

    // ---- The table -------------------------------------------------------

    fn socket(&mut self, id: SocketId) -> Result<&mut Socket, Errno> {
        self.table.get_mut(&id).ok_or(EBADF)
    }

    /// A socket's options.
    pub fn options(&mut self, id: SocketId) -> Result<&mut Options, Errno> {
        Ok(&mut self.socket(id)?.options)
    }

    /// Takes a socket's pending error (`SO_ERROR`).
    pub fn take_error(&mut self, id: SocketId) -> Result<Errno, Errno> {
        Ok(core::mem::take(&mut self.socket(id)?.error))
    }

    fn insert(&mut self, state: State, options: Options) -> SocketId {
        let id = self.next_id;
        self.next_id += 1;
        let socket = Socket {
            state,
            options,
            error: 0,
            shutdown: Shutdown {
                read: false,
                write: false,
            },
        };
        self.table.insert(id, socket);
        id
    }

    /// A new socket.
    pub fn create(&mut self, protocol: Protocol, nonblocking: bool) -> SocketId {
        let options = Options {
            nonblocking,
            ..Options::default()
        };
        let state = match protocol {
            Protocol::Tcp => State::FreshStream { bound: None },
            Protocol::Udp => State::Datagram {
                handle: self.sockets.add(new_udp_socket()),
                peer: None,
            },
        };
        self.insert(state, options)
    }

    /// Ends a socket: a stream finishes in the background, the rest go at
    /// once. True if it was a stream.
    pub fn close(&mut self, id: SocketId) -> bool {
        let Some(socket) = self.table.remove(&id) else {
            return false;
        };
        match socket.state {
            State::FreshStream { .. } => {}
            State::Stream { handle, .. } => {
                self.sockets.get_mut::<tcp::Socket>(handle).close();
                self.closing.push(handle);
                return true;
            }
            State::Listener { waiting, .. } => {
                for handle in waiting {
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                    self.closing.push(handle);
                }
            }
            State::Datagram { handle, .. } => {
                self.sockets.remove(handle);
            }
        }
        false
    }

    /// Whether a closed stream still waits for its peer to acknowledge
    /// its data or its FIN: what `close` waits for, a while, before the
    /// program may end.
    pub fn closing_streams_unfinished(&self) -> bool {
        self.closing.iter().any(|&handle| {
            let state = self.sockets.get::<tcp::Socket>(handle).state();
            matches!(
                state,
                tcp::State::SynSent
                    | tcp::State::SynReceived
                    | tcp::State::Established
                    | tcp::State::CloseWait
                    | tcp::State::FinWait1
                    | tcp::State::Closing
                    | tcp::State::LastAck
            )
        })
    }

    // ---- Addresses -------------------------------------------------------

    fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX {
            FIRST_EPHEMERAL_PORT
        } else {
            port + 1
        };
        port
    }

    /// Whether a listener or bound socket other than `except` holds
    /// `port` for `protocol`.
    fn port_in_use(&self, protocol: Protocol, port: u16, except: SocketId) -> bool {
        self.table.iter().any(|(&id, socket)| {
            id != except
                && match (&socket.state, protocol) {
                    (State::Listener { local, .. }, Protocol::Tcp) => local.port() == port,
                    (State::FreshStream { bound: Some(b) }, Protocol::Tcp) => b.port() == port,
                    (State::Datagram { handle, .. }, Protocol::Udp) => {
                        self.sockets.get::<udp::Socket>(*handle).endpoint().port == port
                    }
                    _ => false,
                }
        })
    }

    /// Whether packets to `to` can go anywhere: not to ourselves or the
    /// loopback network (smoltcp has no loopback, so nothing listens there:
    /// `ECONNREFUSED` at once, as for a closed port), and only into our
    /// subnet unless there is a gateway (`ENETUNREACH` at once, rather
    /// than a connect that waits for nothing).
    fn check_route(&self, to: Ipv4Addr) -> Result<(), Errno> {
        if to.is_loopback() || to == self.config.address {
            return Err(ECONNREFUSED);
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.config.prefix_len))
            .unwrap_or(0);
        let same_subnet = u32::from(to) & mask == u32::from(self.config.address) & mask;
        if same_subnet || to.is_broadcast() || self.config.gateway.is_some() {
            Ok(())
        } else {
            Err(ENETUNREACH)
        }
    }

    /// Whether `address` may be a local address: ours, or any.
    fn is_local(&self, address: Ipv4Addr) -> bool {
        address.is_unspecified() || address == self.config.address
    }

    /// `bind(id, address)`.
    pub fn bind(&mut self, id: SocketId, address: SocketAddrV4) -> Result<(), Errno> {
        if !self.is_local(*address.ip()) {
            return Err(EADDRNOTAVAIL);
        }
        let protocol = match self.socket(id)?.state {
            State::FreshStream { bound: None } => Protocol::Tcp,
            State::Datagram { .. } => Protocol::Udp,
            _ => return Err(EINVAL),
        };
        let port = match address.port() {
            0 => self.ephemeral_port(),
            port if self.port_in_use(protocol, port, id) => return Err(EADDRINUSE),
            port => port,
        };
        let local = SocketAddrV4::new(*address.ip(), port);
        match &mut self.socket(id)?.state {
            State::FreshStream { bound } => *bound = Some(local),
            State::Datagram { handle, .. } => {
                let handle = *handle;
                let socket = self.sockets.get_mut::<udp::Socket>(handle);
                if socket.is_open() {
                    return Err(EINVAL);
                }
                socket.bind(listen_endpoint(local)).map_err(|_| EINVAL)?;
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// `listen(id, backlog)`: the port `bind` gave (or an ephemeral one).
    pub fn listen(&mut self, id: SocketId, backlog: i32) -> Result<(), Errno> {
        let bound = match self.socket(id)?.state {
            State::FreshStream { bound } => bound,
            State::Listener { .. } => return Ok(()),
            _ => return Err(EINVAL),
        };
        let local = match bound {
            Some(local) => local,
            None => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.ephemeral_port()),
        };
        let count = usize::try_from(backlog).unwrap_or(1).clamp(1, MAX_BACKLOG);
        let mut waiting = Vec::with_capacity(count);
        for _ in 0..count {
            waiting.push(self.new_listening(local)?);
        }
        self.socket(id)?.state = State::Listener { local, waiting };
        Ok(())
    }

    fn new_listening(&mut self, local: SocketAddrV4) -> Result<SocketHandle, Errno> {
        let mut socket = new_tcp_socket();
        socket.listen(listen_endpoint(local)).map_err(|_| EINVAL)?;
        Ok(self.sockets.add(socket))
    }

    /// `accept(id)`: a new stream socket and its peer, once a connection
    /// has been established.
    pub fn accept(&mut self, id: SocketId) -> Option<Result<(SocketId, SocketAddrV4), Errno>> {
        let (local, waiting) = match &self.table.get(&id)?.state {
            State::Listener { local, waiting } => (*local, waiting.clone()),
            _ => return Some(Err(EINVAL)),
        };
        let sockets = &self.sockets;
        let ready = waiting.iter().position(|&handle| {
            let state = sockets.get::<tcp::Socket>(handle).state();
            !matches!(
                state,
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
            )
        })?;
        let handle = waiting[ready];
        let replacement = match self.new_listening(local) {
            Ok(handle) => handle,
            Err(errno) => return Some(Err(errno)),
        };
        let options = self.table.get(&id)?.options;
        if let Some(State::Listener { waiting, .. }) = self.table.get_mut(&id).map(|s| &mut s.state)
        {
            waiting[ready] = replacement;
        }
        let peer = self
            .sockets
            .get::<tcp::Socket>(handle)
            .remote_endpoint()
            .map(from_endpoint)
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let options = Options {
            nonblocking: false,
            ..options
        };
        self.apply_stream_options(handle, options);
        let stream = self.insert(
            State::Stream {
                handle,
                connecting: false,
            },
            options,
        );
        Some(Ok((stream, peer)))
    }

    fn apply_stream_options(&mut self, handle: SocketHandle, options: Options) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.set_nagle_enabled(!options.nodelay);
        socket.set_keep_alive(options.keep_alive.then(|| Duration::from_secs(60)));
    }

    /// Sets `TCP_NODELAY` or `SO_KEEPALIVE` on the smoltcp socket too.
    pub fn options_changed(&mut self, id: SocketId) {
        let Some(socket) = self.table.get(&id) else {
            return;
        };
        if let State::Stream { handle, .. } = socket.state {
            let options = socket.options;
            self.apply_stream_options(handle, options);
        }
    }

    /// Starts `connect(id, to)`: a stream sends its SYN; a datagram
    /// socket only remembers its peer.
    pub fn start_connect(&mut self, id: SocketId, to: SocketAddrV4) -> Result<(), Errno> {
        if to.ip().is_unspecified() || to.port() == 0 {
            return Err(EADDRNOTAVAIL);
        }
        self.check_route(*to.ip())?;
        let bound = match &mut self.socket(id)?.state {
            State::FreshStream { bound } => *bound,
            State::Stream {
                connecting: true, ..
            } => return Err(EALREADY),
            State::Stream { .. } => return Err(EISCONN),
            State::Listener { .. } => return Err(EINVAL),
            State::Datagram { peer, .. } => {
                *peer = Some(to);
                return self.bind_if_unbound(id);
            }
        };
        let port = match bound {
            Some(local) => local.port(),
            None => self.ephemeral_port(),
        };
        let mut socket = new_tcp_socket();
        let context = self.interface.context();
        socket
            .connect(context, endpoint(to), port)
            .map_err(|_| EADDRNOTAVAIL)?;
        let handle = self.sockets.add(socket);
        let options = self.socket(id)?.options;
        self.apply_stream_options(handle, options);
        self.socket(id)?.state = State::Stream {
            handle,
            connecting: true,
        };
        Ok(())
    }

    /// Whether a connection `start_connect` began is up: `Some(Ok)` when
    /// established, `Some(Err(ECONNREFUSED))` when it failed.
    pub fn connect_progress(&mut self, id: SocketId) -> Option<Result<(), Errno>> {
        let socket = self.table.get_mut(&id)?;
        let State::Stream { handle, connecting } = &mut socket.state else {
            return Some(Ok(()));
        };
        let state = self.sockets.get::<tcp::Socket>(*handle).state();
        if is_opening(state) {
            return None;
        }
        let was_connecting = core::mem::replace(connecting, false);
        if state == tcp::State::Closed && was_connecting {
            socket.error = ECONNREFUSED;
            return Some(Err(ECONNREFUSED));
        }
        Some(Ok(()))
    }

    /// Gives a datagram socket an ephemeral port if it has none.
    fn bind_if_unbound(&mut self, id: SocketId) -> Result<(), Errno> {
        let State::Datagram { handle, .. } = self.socket(id)?.state else {
            return Ok(());
        };
        if self.sockets.get::<udp::Socket>(handle).is_open() {
            return Ok(());
        }
        let port = self.ephemeral_port();
        self.sockets
            .get_mut::<udp::Socket>(handle)
            .bind(port)
            .map_err(|_| EINVAL)
    }

    // ---- Data ------------------------------------------------------------

    /// Reads a stream (or a datagram, without its sender): the count, 0 at
    /// the end of the stream.
    pub fn receive(
        &mut self,
        id: SocketId,
        buffer: &mut [u8],
        peek: bool,
    ) -> Option<Result<usize, Errno>> {
        let socket = self.table.get(&id)?;
        let handle = match socket.state {
            State::Stream { handle, .. } => handle,
            State::Datagram { .. } => {
                return self
                    .receive_from(id, buffer, peek)
                    .map(|result| result.map(|(count, _)| count));
            }
            _ => return Some(Err(ENOTCONN)),
        };
        if socket.shutdown.read {
            return Some(Ok(0));
        }
        let tcp = self.sockets.get_mut::<tcp::Socket>(handle);
        if tcp.can_recv() {
            let read = if peek {
                tcp.peek_slice(buffer)
            } else {
                tcp.recv_slice(buffer)
            };
            return Some(Ok(read.unwrap_or(0)));
        }
        if is_opening(tcp.state()) || tcp.may_recv() {
            return None;
        }
        Some(Ok(0))
    }

    /// Writes a stream (or a datagram to the connected peer): the count
    /// taken, which may be short.
    pub fn send(&mut self, id: SocketId, bytes: &[u8]) -> Option<Result<usize, Errno>> {
        let socket = self.table.get(&id)?;
        let handle = match socket.state {
            State::Stream { handle, .. } => handle,
            State::Datagram { .. } => return self.send_to(id, bytes, None),
            _ => return Some(Err(ENOTCONN)),
        };
        if socket.shutdown.write {
            return Some(Err(EPIPE));
        }
        let tcp = self.sockets.get_mut::<tcp::Socket>(handle);
        if is_opening(tcp.state()) {
            return None;
        }
        if !tcp.may_send() {
            return Some(Err(EPIPE));
        }
        if bytes.is_empty() {
            return Some(Ok(0));
        }
        if !tcp.can_send() {
            return None;
        }
        Some(Ok(tcp.send_slice(bytes).unwrap_or(0)))
    }

    /// Takes one datagram: the bytes that fit (the rest of it is lost, as
    /// on Unix) and its sender.
    pub fn receive_from(
        &mut self,
        id: SocketId,
        buffer: &mut [u8],
        peek: bool,
    ) -> Option<Result<(usize, SocketAddrV4), Errno>> {
        let socket = self.table.get(&id)?;
        let State::Datagram { handle, peer } = socket.state else {
            return self.receive(id, buffer, peek).map(|result| {
                result.map(|count| (count, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
            });
        };
        let udp = self.sockets.get_mut::<udp::Socket>(handle);
        loop {
            let received = if peek {
                udp.peek().map(|(b, m)| (b, *m))
            } else {
                udp.recv()
            };
            let Ok((bytes, metadata)) = received else {
                return None;
            };
            let from = from_endpoint(metadata.endpoint);
            // A connected socket takes only its peer's datagrams.
            if peer.is_some_and(|peer| peer != from) {
                if peek {
                    let _ = udp.recv();
                }
                continue;
            }
            let count = bytes.len().min(buffer.len());
            buffer[..count].copy_from_slice(&bytes[..count]);
            return Some(Ok((count, from)));
        }
    }

    /// Queues one datagram to `to` (or the connected peer).
    pub fn send_to(
        &mut self,
        id: SocketId,
        bytes: &[u8],
        to: Option<SocketAddrV4>,
    ) -> Option<Result<usize, Errno>> {
        let socket = self.table.get(&id)?;
        let State::Datagram { handle, peer } = socket.state else {
            return match to {
                None => self.send(id, bytes),
                Some(_) => Some(Err(EISCONN)),
            };
        };
        let Some(to) = to.or(peer) else {
            return Some(Err(hermit_abi::errno::EDESTADDRREQ));
        };
        if bytes.len() > MAX_DATAGRAM_BYTES {
            return Some(Err(EMSGSIZE));
        }
        if let Err(errno) = self.check_route(*to.ip()) {
            return Some(Err(errno));
        }
        if let Err(errno) = self.bind_if_unbound(id) {
            return Some(Err(errno));
        }
        let udp = self.sockets.get_mut::<udp::Socket>(handle);
        match udp.send_slice(bytes, endpoint(to)) {
            Ok(()) => Some(Ok(bytes.len())),
            Err(udp::SendError::BufferFull) => None,
            Err(udp::SendError::Unaddressable) => Some(Err(EADDRNOTAVAIL)),
        }
    }

    /// `shutdown(id, how)`.
    pub fn shutdown(&mut self, id: SocketId, how: Shutdown) -> Result<(), Errno> {
        let socket = self.socket(id)?;
        let State::Stream { handle, .. } = socket.state else {
            return Err(ENOTCONN);
        };
        socket.shutdown.read |= how.read;
        socket.shutdown.write |= how.write;
        if how.write {
            self.sockets.get_mut::<tcp::Socket>(handle).close();
        }
        Ok(())
    }

    // ---- Looking -----------------------------------------------------------

    /// `getsockname(id)`.
    pub fn local_address(&mut self, id: SocketId) -> Result<SocketAddrV4, Errno> {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Ok(match self.socket(id)?.state {
            State::FreshStream { bound } => bound.unwrap_or(any),
            State::Listener { local, .. } => local,
            State::Stream { handle, .. } => self
                .sockets
                .get::<tcp::Socket>(handle)
                .local_endpoint()
                .map_or(any, from_endpoint),
            State::Datagram { handle, .. } => {
                let bound = self.sockets.get::<udp::Socket>(handle).endpoint();
                let address = match bound.addr {
                    Some(IpAddress::Ipv4(address)) => address,
                    None => Ipv4Addr::UNSPECIFIED,
                };
                SocketAddrV4::new(address, bound.port)
            }
        })
    }

    /// `getpeername(id)`.
    pub fn peer_address(&mut self, id: SocketId) -> Result<SocketAddrV4, Errno> {
        match self.socket(id)?.state {
            State::Stream { handle, .. } => self
                .sockets
                .get::<tcp::Socket>(handle)
                .remote_endpoint()
                .map(from_endpoint)
                .ok_or(ENOTCONN),
            State::Datagram { peer, .. } => peer.ok_or(ENOTCONN),
            _ => Err(ENOTCONN),
        }
    }

    /// What a socket is ready for.
    pub fn readiness(&mut self, id: SocketId) -> Result<Readiness, Errno> {
        let socket = self.table.get(&id).ok_or(EBADF)?;
        let shutdown = socket.shutdown;
        Ok(match &socket.state {
            State::FreshStream { .. } => Readiness {
                hung_up: true,
                ..Readiness::default()
            },
            State::Listener { waiting, .. } => Readiness {
                readable: waiting.iter().any(|&handle| {
                    let state = self.sockets.get::<tcp::Socket>(handle).state();
                    !matches!(
                        state,
                        tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
                    )
                }),
                ..Readiness::default()
            },
            State::Stream { handle, .. } => {
                let tcp = self.sockets.get::<tcp::Socket>(*handle);
                let opening = is_opening(tcp.state());
                let closed = tcp.state() == tcp::State::Closed;
                Readiness {
                    readable: shutdown.read || tcp.can_recv() || (!opening && !tcp.may_recv()),
                    writable: !opening && (tcp.can_send() || !tcp.may_send()),
                    hung_up: closed || (!tcp.may_recv() && !tcp.may_send() && !opening),
                }
            }
            State::Datagram { handle, .. } => {
                let udp = self.sockets.get::<udp::Socket>(*handle);
                Readiness {
                    readable: udp.can_recv(),
                    writable: udp.can_send(),
                    hung_up: false,
                }
            }
        })
    }

    /// Whether the socket exists and is of a kind `op` fits; for the
    /// calls that only some kinds take.
    pub fn protocol(&mut self, id: SocketId) -> Result<Protocol, Errno> {
        Ok(match self.socket(id)?.state {
            State::Datagram { .. } => Protocol::Udp,
            _ => Protocol::Tcp,
        })
    }

    /// Refuses an operation on a listener.
    pub fn not_listening(&mut self, id: SocketId) -> Result<(), Errno> {
        match self.socket(id)?.state {
            State::Listener { .. } => Err(EOPNOTSUPP),
            _ => Ok(()),
        }
    }
}

/// `EAGAIN`: the answer for "would block" and for a timeout, as on Unix.
pub const WOULD_BLOCK: Errno = EAGAIN;
