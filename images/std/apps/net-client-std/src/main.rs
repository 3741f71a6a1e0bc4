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
//! `net-client-std bench [server]` is `cargo xtask bench`'s network
//! benchmark: the UDP round trips (so the server is up), then
//! [`BENCH_GETS`] small HTTP requests, each on a connection of its own
//! (connect, `GET /`, the answer read to its end), then [`BENCH_RUNS`]
//! transfers of [`BENCH_MEGABYTES`] MiB, each checked as above (the
//! server runs as `net-server-std bench`, and ends after the last). It
//! prints the lines `cargo xtask bench` reads: `bench net tcp_transfer
//! run=<i> bytes=<n> elapsed_ns=<t>` and `bench net http_get count=<n>
//! median_ns=<t>` (wall time by `Instant`), and the two regions timed by
//! the time-stamp counter inside host `bench_mark` pairs
//! (`guest_rt::bench`), whose events the host prints: `bench
//! net_tcp_segment ...` (all the transfers, per data segment of [`MSS`]
//! bytes) and `bench net_http_get ...` (per request).
//!
//! It prints `net-client-std: ok ...` and exits 0 on a match; any error
//! or mismatch prints `net-client-std: FAILED ...` and exits 1.

use guest_rt::bench;
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
/// The benchmark's transfers, and the MiB each sends.
const BENCH_RUNS: u32 = 3;
const BENCH_MEGABYTES: u64 = 20;
/// The benchmark's small HTTP requests.
const BENCH_GETS: u32 = 100;
/// TCP's payload per full segment on a 1500-byte Ethernet MTU: what
/// `net_tcp_segment`'s figures are per.
const MSS: u64 = 1460;

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
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|first| first == "bench") {
        args.next();
        return run_benchmark(args.next());
    }
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

/// The benchmark: UDP first (the server is up once it answers), then the
/// requests, then the transfers.
fn run_benchmark(server: Option<String>) -> Result<(), String> {
    let server: Ipv4Addr = match server {
        Some(text) => text.parse().map_err(|_| format!("bad address `{text}`"))?,
        None => Ipv4Addr::new(10, 0, 0, 1),
    };
    udp_round_trips(SocketAddr::from((server, PORT + 1)))?;
    let tcp = SocketAddr::from((server, PORT));
    // The requests first: the server ends after its last transfer.
    time_http_gets(tcp, BENCH_GETS)?;
    let id = bench::begin();
    let start = guest_rt::time::cycles();
    let mut sent = 0;
    for run in 1..=BENCH_RUNS {
        let mut stream = connect(tcp)?;
        let (bytes, elapsed, _) = transfer_and_check(&mut stream, BENCH_MEGABYTES << 20)?;
        println!(
            "bench net tcp_transfer run={run} bytes={bytes} elapsed_ns={}",
            elapsed.as_nanos()
        );
        sent += bytes;
    }
    let cycles = guest_rt::time::cycles() - start;
    bench::end("net_tcp_segment", id, sent.div_ceil(MSS), cycles);
    println!("net-client-std: ok bench");
    Ok(())
}

/// `count` small HTTP requests, one connection each: prints their median
/// wall time, and the region's cycles and events per request.
fn time_http_gets(server: SocketAddr, count: u32) -> Result<(), String> {
    let mut times = Vec::with_capacity(count as usize);
    let id = bench::begin();
    let start = guest_rt::time::cycles();
    for _ in 0..count {
        let began = Instant::now();
        http_get(server)?;
        times.push(began.elapsed());
    }
    let cycles = guest_rt::time::cycles() - start;
    bench::end("net_http_get", id, u64::from(count), cycles);
    times.sort();
    println!(
        "bench net http_get count={count} median_ns={}",
        times[times.len() / 2].as_nanos()
    );
    Ok(())
}

/// One `GET /` on a connection of its own, its answer read to the end.
fn http_get(server: SocketAddr) -> Result<(), String> {
    let mut stream = connect(server)?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("GET: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_LIMIT))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("reading a GET's answer: {e}"))?;
    if !answer.starts_with(b"HTTP/1.0 200 OK") {
        return Err(format!(
            "GET answered `{}`",
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
        ));
    }
    Ok(())
}

/// Each datagram of [`DATAGRAM_SIZES`] comes back as sent. A datagram not
/// answered within half a second is sent again, so the echo of an earlier
/// one may still arrive late, and twice: such a stale echo (equal to a
/// datagram sent before) is skipped; anything else that is not the
/// datagram just sent is a failure.
fn udp_round_trips(server: SocketAddr) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("UDP bind: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| format!("UDP set_read_timeout: {e}"))?;
    let start = Instant::now();
    let mut pattern = Pattern(SEED);
    let mut earlier: Vec<Vec<u8>> = Vec::new();
    for size in DATAGRAM_SIZES {
        let mut sent = vec![0u8; size];
        pattern.fill(&mut sent);
        let mut received = [0u8; 2048];
        let mut send = true;
        loop {
            if send {
                socket
                    .send_to(&sent, server)
                    .map_err(|e| format!("UDP send_to: {e}"))?;
            }
            match socket.recv_from(&mut received) {
                Ok((count, from)) if from == server => {
                    let echo = &received[..count];
                    if echo == &sent[..] {
                        break;
                    }
                    if !earlier.iter().any(|old| old[..] == *echo) {
                        return Err(format!(
                            "UDP: {size} bytes sent, {count} bytes back that were never sent"
                        ));
                    }
                    // A late echo of an earlier datagram: wait on.
                    send = false;
                }
                Ok((_, from)) => return Err(format!("a datagram from {from}, not the server")),
                Err(e) if e.kind() == ErrorKind::WouldBlock && start.elapsed() < REACH_LIMIT => {
                    send = true;
                }
                Err(e) => return Err(format!("UDP recv_from: {e}")),
            }
        }
        earlier.push(sent);
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
    let (sent, elapsed, agreed) = transfer_and_check(&mut stream, total)?;
    println!(
        "net-client-std: ok tcp: {sent} bytes sent in {:.2} s ({:.2} MB/s), server agrees: {}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64() / 1e6,
        agreed
    );
    Ok(())
}

/// Sends `total` bytes of the pattern, shuts the writing half and checks
/// the server's answer: the bytes sent, the time from the first write to
/// the answer, and the answer.
fn transfer_and_check(
    stream: &mut TcpStream,
    total: u64,
) -> Result<(u64, Duration, String), String> {
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
    reader
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let elapsed = start.elapsed();
    let expected = format!("bytes={sent} fnv1a={:016x}", checksum.0);
    if answer.trim_end() != expected {
        return Err(format!(
            "the server answered `{}`, expected `{expected}`",
            answer.trim_end()
        ));
    }
    Ok((sent, elapsed, expected))
}
