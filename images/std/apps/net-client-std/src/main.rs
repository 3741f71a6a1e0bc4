//! `net-client-std`: an unmodified std network client, run as an rguest
//! guest beside `net-server-std` (`guests=net-server-std,net-client-std`).
//!
//! `net-client-std [server] [megabytes]` (default `10.0.0.1`, the first
//! guest's address, and 10):
//!
//! 1. UDP: sends datagrams of several sizes to the server's port 7001 and
//!    checks each comes back unchanged (resending after a timeout while
//!    the server is still starting), then says `quit`;
//! 2. TCP: connects to port 7000 (trying again while the server is not yet
//!    listening), sends `megabytes` MiB of a seeded pattern, shuts its
//!    writing half, reads the server's answer (`bytes=<n> fnv1a=<sum>`)
//!    and compares it with its own count and FNV-1a checksum; prints the
//!    throughput it measured. Before sending, with nothing to read yet, it
//!    checks that a nonblocking read and a read with a timeout both answer
//!    `WouldBlock`, the second only after its timeout; the answer is read
//!    through a clone of the stream (`try_clone`, a second descriptor).
//!
//! It prints `net-client-std: ok ...` and exits 0 on a match; any error
//! or mismatch prints `net-client-std: FAILED ...` and exits 1.

use hermit as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// The server's TCP port; its UDP echo is on the next one.
const PORT: u16 = 7000;
/// The pattern's seed.
const SEED: u64 = 0x7267_7565_7374;
/// Bytes per write.
const CHUNK_BYTES: usize = 64 * 1024;
/// How long to keep trying to reach the server while it starts.
const REACH_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for an answer before giving up.
const ANSWER_LIMIT: Duration = Duration::from_secs(120);
/// The read timeout checked before sending.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// The sizes of the UDP datagrams: from one byte to a full frame.
const DATAGRAM_SIZES: [usize; 5] = [1, 64, 512, 1024, 1472];

/// FNV-1a, 64 bits.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The pattern: splitmix64's stream from [`SEED`], eight bytes a step.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("net-client-std: FAILED {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let server: Ipv4Addr = match args.next() {
        Some(text) => text.parse().map_err(|_| format!("bad address `{text}`"))?,
        None => Ipv4Addr::new(10, 0, 0, 1),
    };
    let megabytes: u64 = match args.next() {
        Some(text) => text.parse().map_err(|_| format!("bad size `{text}`"))?,
        None => 10,
    };
    udp_round_trips(SocketAddr::from((server, PORT + 1)))?;
    send_and_check(SocketAddr::from((server, PORT)), megabytes << 20)?;
    println!("net-client-std: ok");
    Ok(())
}

/// Each datagram of [`DATAGRAM_SIZES`] comes back as sent.
fn udp_round_trips(server: SocketAddr) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("UDP bind: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| format!("UDP set_read_timeout: {e}"))?;
    let start = Instant::now();
    let mut pattern = Pattern(SEED);
    for size in DATAGRAM_SIZES {
        let mut sent = vec![0u8; size];
        pattern.fill(&mut sent);
        let mut received = [0u8; 2048];
        let count = loop {
            socket
                .send_to(&sent, server)
                .map_err(|e| format!("UDP send_to: {e}"))?;
            match socket.recv_from(&mut received) {
                Ok((count, from)) if from == server => break count,
                Ok((_, from)) => return Err(format!("a datagram from {from}, not the server")),
                Err(e) if e.kind() == ErrorKind::WouldBlock && start.elapsed() < REACH_LIMIT => {}
                Err(e) => return Err(format!("UDP recv_from: {e}")),
            }
        };
        if received[..count] != sent[..] {
            return Err(format!(
                "UDP: {size} bytes sent, {count} different bytes back"
            ));
        }
    }
    socket
        .send_to(b"quit", server)
        .map_err(|e| format!("UDP send_to: {e}"))?;
    println!(
        "net-client-std: ok udp: {} datagrams of 1 to 1472 bytes echoed by {server}",
        DATAGRAM_SIZES.len()
    );
    Ok(())
}

/// Connects, trying again while the server is not listening yet.
fn connect(server: SocketAddr) -> Result<TcpStream, String> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&server, Duration::from_secs(5)) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() < REACH_LIMIT => {
                if e.kind() != ErrorKind::ConnectionRefused && e.kind() != ErrorKind::TimedOut {
                    println!("net-client-std: connect: {e}; trying again");
                }
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("connect to {server}: {e}")),
        }
    }
}

/// With nothing to read, a nonblocking read answers `WouldBlock` at once,
/// and a read with a timeout answers it after the timeout.
fn check_waiting_reads(stream: &TcpStream) -> Result<(), String> {
    let mut byte = [0u8; 1];
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    let nonblocking = (&*stream).read(&mut byte);
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("set_nonblocking: {e}"))?;
    match nonblocking {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => return Err(format!("a nonblocking read gave {other:?}, not WouldBlock")),
    }
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let start = Instant::now();
    let timed = (&*stream).read(&mut byte);
    let waited = start.elapsed();
    stream
        .set_read_timeout(None)
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    match timed {
        Err(e) if e.kind() == ErrorKind::WouldBlock && waited >= READ_TIMEOUT => {}
        other => {
            return Err(format!(
                "a read with a timeout gave {other:?} after {waited:?}"
            ));
        }
    }
    println!(
        "net-client-std: ok waiting: nonblocking read WouldBlock, {} ms timeout WouldBlock after {} ms",
        READ_TIMEOUT.as_millis(),
        waited.as_millis()
    );
    Ok(())
}

/// Sends `total` bytes of the pattern and checks the server's answer.
fn send_and_check(server: SocketAddr, total: u64) -> Result<(), String> {
    let mut stream = connect(server)?;
    println!(
        "net-client-std: connected to {server} from {}",
        stream
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
    );
    check_waiting_reads(&stream)?;
    let mut checksum = Fnv1a::new();
    let mut pattern = Pattern(SEED);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let len = (total - sent).min(CHUNK_BYTES as u64) as usize;
        pattern.fill(&mut chunk[..len]);
        checksum.add(&chunk[..len]);
        stream
            .write_all(&chunk[..len])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += len as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_LIMIT))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut answer = String::new();
    let mut reader = stream.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    drop(stream);
    reader
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let expected = format!("bytes={sent} fnv1a={:016x}", checksum.0);
    if answer.trim_end() != expected {
        return Err(format!(
            "the server answered `{}`, expected `{expected}`",
            answer.trim_end()
        ));
    }
    println!(
        "net-client-std: ok tcp: {sent} bytes sent in {seconds:.2} s ({:.2} MB/s), server agrees: {expected}",
        sent as f64 / seconds / 1e6
    );
    Ok(())
}
