//! `net-server-std`: an unmodified std network server, run as an rguest
//! guest beside `net-client-std` (`guests=net-server-std,net-client-std`:
//! the first guest is `10.0.0.1`, see the `hermit` runtime's
//! `net::address`).
//!
//! - TCP port 7000 (or the first argument): it accepts connections until
//!   one has sent data (or as many as the second argument says;
//!   `net-server-std bench` is `net-server-std 7000 3`, the server of
//!   `net-client-std bench`'s three transfers in `cargo xtask bench`).
//!   A connection that starts with `GET ` is answered with a tiny HTTP
//!   page (so the server can be looked at with `curl`) and does not
//!   count; one that starts with `PULL <count>\n` is sent `<count>` bytes
//!   (at most 1 GiB) of the pattern `net-client-std` sends (splitmix64
//!   from the seed `0x5eed`, eight little-endian bytes a step), for the
//!   receiver to check, and counts (`cargo xtask bench` times the guest
//!   sending to the outside so); any other is read to its end, and
//!   answered with one line, `bytes=<count> fnv1a=<checksum>` (FNV-1a, 64
//!   bits, over every byte), before the server closes it.
//! - UDP port 7001 (the TCP port + 1), on a thread of its own: every
//!   datagram is sent back to its sender, until one says `quit` (or none
//!   has come for 20 s after the first).
//!
//! It prints `net-server-std: ok ...` and exits 0 when both are done; any
//! error prints `net-server-std: FAILED ...` and exits 1.

use hermit as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

/// The TCP port unless the first argument says otherwise.
const DEFAULT_PORT: u16 = 7000;

/// How long the UDP echo waits for a datagram once it has had one.
const UDP_IDLE: Duration = Duration::from_secs(20);

/// How long a connection may stay silent before the server gives up.
const TCP_IDLE: Duration = Duration::from_secs(60);

/// The transfers `net-client-std bench` makes.
const BENCH_TRANSFERS: u32 = 3;

/// GETs reported one by one; the rest (a benchmark's hundreds) quietly.
const QUIET_AFTER_GETS: u32 = 3;

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

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("net-server-std: FAILED {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|first| first == "bench") {
        args = vec![DEFAULT_PORT.to_string(), BENCH_TRANSFERS.to_string()];
    }
    let mut args = args.into_iter();
    let port = match args.next() {
        Some(text) => text.parse().map_err(|_| format!("bad port `{text}`"))?,
        None => DEFAULT_PORT,
    };
    let transfers: u32 = match args.next() {
        Some(text) => text
            .parse()
            .map_err(|_| format!("bad transfer count `{text}`"))?,
        None => 1,
    };
    let udp = UdpSocket::bind(("0.0.0.0", port + 1)).map_err(|e| format!("UDP bind: {e}"))?;
    let echo = thread::spawn(move || udp_echo(udp));
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind: {e}"))?;
    println!(
        "net-server-std: listening on {}",
        listener
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
    );
    for _ in 0..transfers {
        serve_until_data(&listener)?;
    }
    let echoed = echo
        .join()
        .map_err(|_| "the UDP thread panicked".to_string())??;
    println!("net-server-std: ok udp: {echoed} datagrams echoed");
    println!("net-server-std: ok");
    Ok(())
}

/// Accepts connections, answering GETs, until one sends data.
fn serve_until_data(listener: &TcpListener) -> Result<(), String> {
    let mut answered_gets = 0u32;
    loop {
        let (mut stream, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        stream
            .set_read_timeout(Some(TCP_IDLE))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let mut first = [0u8; 4];
        let mut start = 0;
        while start < first.len() {
            match stream
                .read(&mut first[start..])
                .map_err(|e| format!("read: {e}"))?
            {
                0 => break,
                n => start += n,
            }
        }
        if &first[..start] == b"PULL" {
            println!("net-server-std: pull from {peer}");
            return send_pattern(stream);
        }
        if &first[..start] == b"GET " {
            answer_http(&mut stream)?;
            answered_gets += 1;
            if answered_gets <= QUIET_AFTER_GETS {
                println!("net-server-std: answered a GET from {peer}");
            }
            continue;
        }
        println!("net-server-std: connection from {peer}");
        return count_and_answer(stream, &first[..start]);
    }
}

/// Reads a request's head and answers with a small page.
fn answer_http(stream: &mut TcpStream) -> Result<(), String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buffer).map_err(|e| format!("read: {e}"))? {
            0 => break,
            n => head.extend_from_slice(&buffer[..n]),
        }
    }
    let body = "net-server-std on rguest: send data to this port to have it counted\n";
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(response.as_bytes())
        .map_err(|e| format!("write: {e}"))
}

/// Reads the stream to its end and answers with its count and checksum.
fn count_and_answer(mut stream: TcpStream, first: &[u8]) -> Result<(), String> {
    let mut checksum = Fnv1a::new();
    checksum.add(first);
    let mut count = first.len() as u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream
            .read(&mut buffer)
            .map_err(|e| format!("read after {count} bytes: {e}"))?
        {
            0 => break,
            n => {
                checksum.add(&buffer[..n]);
                count += n as u64;
            }
        }
    }
    let answer = format!("bytes={count} fnv1a={:016x}\n", checksum.0);
    stream
        .write_all(answer.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    println!("net-server-std: ok tcp: {}", answer.trim_end());
    Ok(())
}

/// The most a `PULL` may ask for.
const PULL_LIMIT: u64 = 1 << 30;

/// Reads the rest of a `PULL <count>\n` line and sends `count` bytes of
/// the pattern, then closes the connection.
fn send_pattern(mut stream: TcpStream) -> Result<(), String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        match stream.read(&mut byte).map_err(|e| format!("read: {e}"))? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&line);
    let total: u64 = text
        .trim()
        .parse()
        .ok()
        .filter(|&n| n <= PULL_LIMIT)
        .ok_or_else(|| format!("bad PULL count `{}`", text.trim()))?;
    let mut state = 0x5eed_u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = buffer.len().min((total - sent) as usize);
        for word in buffer[..n].chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        stream
            .write_all(&buffer[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += n as u64;
    }
    println!("net-server-std: ok pull: bytes={sent}");
    Ok(())
}

/// Echoes datagrams until `quit`, or silence after the first; returns
/// how many it echoed.
fn udp_echo(socket: UdpSocket) -> Result<u64, String> {
    let mut echoed = 0u64;
    let mut buffer = [0u8; 2048];
    loop {
        let timeout = (echoed > 0).then_some(UDP_IDLE);
        socket
            .set_read_timeout(timeout)
            .map_err(|e| format!("UDP set_read_timeout: {e}"))?;
        let (count, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && echoed > 0 => {
                println!("net-server-std: udp: no quit after {echoed} datagrams; done");
                return Ok(echoed);
            }
            Err(e) => return Err(format!("UDP recv_from: {e}")),
        };
        if &buffer[..count] == b"quit" {
            return Ok(echoed);
        }
        socket
            .send_to(&buffer[..count], from)
            .map_err(|e| format!("UDP send_to: {e}"))?;
        echoed += 1;
    }
}
