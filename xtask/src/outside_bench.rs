//! The outside TCP throughput of `cargo xtask bench`: from this machine,
//! through QEMU's user network and the host's NIC (the uplink), the
//! switch, to a guest's server, and the guest's answer back.
//!
//! One plain TCG boot per card model (virtio-net, then the e1000): the
//! std guest `net-server-std` takes an address of the user network for
//! itself (10.0.2.20) and serves six transfers on port 7000; QEMU
//! forwards a free port of this machine's loopback to it. Here, in plain
//! Rust std, three transfers go to the guest: each connects, sends
//! [`TRANSFER_BYTES`] of a pattern, closes its writing half and reads
//! the server's answer (`bytes=<count> fnv1a=<checksum>`), which must
//! match what was sent. Three come from the guest: each asks `PULL
//! <count>`, and what comes back must be the same pattern, byte for
//! byte. A transfer is timed by this machine's clock from the connection
//! to its end; each direction's figure is the median of its three, in
//! Mbit/s. Like every figure of the benchmarks, it says how fast QEMU
//! runs this machine, not what real hardware would do; it is printed and
//! stored, never asserted.

use crate::qemu::{GuestForward, Machine, NicModel, UserNet};
use crate::session::{self, Options};
use crate::{Error, Result};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The bytes of one transfer.
pub const TRANSFER_BYTES: u64 = 16 << 20;
/// Transfers each way.
const TRANSFERS: usize = 3;
/// The guest's address on QEMU's user network, and its server's port.
const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const GUEST_PORT: u16 = 7000;
/// The boot's command line: the server with an address of the user
/// network, on port 7000, for both directions' transfers.
const CMDLINE: &str = "guest_mem=64 \
    guests=\"net-server-std/RGUEST_IP=10.0.2.20/24 RGUEST_GATEWAY=10.0.2.2 7000 6\"";
/// Wide limits: a slow machine must not fail the benchmark.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
const LISTEN_LIMIT: Duration = Duration::from_secs(180);
const IO_LIMIT: Duration = Duration::from_secs(120);

/// The models measured, in order.
pub const MODELS: [NicModel; 2] = [NicModel::VirtioNet, NicModel::E1000];

/// FNV-1a, 64 bits: the server's checksum.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The pattern `net-client-std` sends and `net-server-std` sends back on
/// a `PULL`: splitmix64 from `0x5eed`, eight little-endian bytes a step.
struct Pattern(u64);

impl Pattern {
    fn new() -> Self {
        Self(0x5eed)
    }

    fn fill(&mut self, buffer: &mut [u8]) {
        for word in buffer.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
    }
}

/// Each direction's transfers, in Mbit/s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runs {
    /// From this machine to the guest.
    pub to_guest: Vec<f64>,
    /// From the guest to this machine.
    pub from_guest: Vec<f64>,
}

/// Boots `kernel` with `guests` and the card `model`, and measures the
/// transfers each way.
pub fn measure(
    kernel: &Path,
    guests: &Path,
    accel: crate::qemu::Accel,
    model: NicModel,
) -> Result<Runs> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("no free loopback port: {e}")))?;
    let mut machine = Machine::new(kernel);
    machine.initrd = Some(guests.to_path_buf());
    machine.accel = accel;
    machine.cmdline = CMDLINE.to_string();
    machine.nic = Some(UserNet {
        model,
        forward: None,
        to_guests: vec![GuestForward {
            from: port,
            address: GUEST_ADDRESS,
            port: GUEST_PORT,
        }],
    });
    let mut session = session::start(machine.command()?, &Options::captured(BOOT_LIMIT))?;
    let outcome = run_transfers(&mut session, port);
    let record = session.stop();
    outcome.map_err(|e| {
        Error::new(format!(
            "outside throughput ({}): {e}\n{}",
            model.name(),
            record.transcript()
        ))
    })
}

/// Waits for the server, then makes the transfers.
fn run_transfers(session: &mut session::Session, port: u16) -> std::result::Result<Runs, String> {
    let give_up = Instant::now() + LISTEN_LIMIT;
    while !session
        .serial_so_far()
        .contains("net-server-std: listening on")
    {
        if session.has_ended() || Instant::now() > give_up {
            return Err("the server never said it was listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mbit_per_s =
        |elapsed: Duration| TRANSFER_BYTES as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e6;
    let mut runs = Runs::default();
    for _ in 0..TRANSFERS {
        runs.to_guest.push(mbit_per_s(push(port)?));
    }
    for _ in 0..TRANSFERS {
        runs.from_guest.push(mbit_per_s(pull(port)?));
    }
    let serial = session.serial_so_far();
    if let Some(bad) = ["FAILED", "panicked", "EXCEPTION"]
        .into_iter()
        .find(|bad| serial.contains(bad))
    {
        return Err(format!("`{bad}` in the boot's output"));
    }
    Ok(runs)
}

/// A connection to the guest's server, with wide time limits.
fn connect(port: u16) -> std::result::Result<TcpStream, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, IO_LIMIT)
        .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(IO_LIMIT)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// One transfer to the guest: the pattern out, the server's count and
/// checksum back, checked. Returns the time from connecting to the
/// answer.
fn push(port: u16) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut stream = connect(port)?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pattern = Pattern::new();
    let mut checksum = FNV_START;
    let mut sent = 0u64;
    while sent < TRANSFER_BYTES {
        let n = chunk.len().min((TRANSFER_BYTES - sent) as usize);
        pattern.fill(&mut chunk[..n]);
        checksum = fnv1a(checksum, &chunk[..n]);
        stream
            .write_all(&chunk[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        sent += n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let elapsed = started.elapsed();
    let expected = format!("bytes={sent} fnv1a={checksum:016x}");
    if answer.trim_end() != expected {
        return Err(format!(
            "the server answered `{}`, expected `{expected}`",
            answer.trim_end()
        ));
    }
    Ok(elapsed)
}

/// One transfer from the guest: `PULL <count>`, then the pattern back,
/// compared byte for byte. Returns the time from connecting to its end.
fn pull(port: u16) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut stream = connect(port)?;
    stream
        .write_all(format!("PULL {TRANSFER_BYTES}\n").as_bytes())
        .map_err(|e| format!("asking for the data: {e}"))?;
    let mut received = vec![0u8; 64 * 1024];
    let mut checksum = FNV_START;
    let mut count = 0u64;
    loop {
        match stream.read(&mut received) {
            Ok(0) => break,
            Ok(n) => {
                checksum = fnv1a(checksum, &received[..n]);
                count += n as u64;
            }
            Err(e) => return Err(format!("read after {count} bytes: {e}")),
        }
    }
    let elapsed = started.elapsed();
    if count != TRANSFER_BYTES {
        return Err(format!(
            "{count} bytes came, {TRANSFER_BYTES} were asked for"
        ));
    }
    if checksum != pattern_checksum(TRANSFER_BYTES) {
        return Err("the bytes that came are not the pattern".into());
    }
    Ok(elapsed)
}

/// The FNV-1a of the first `total` bytes of the pattern, made in 64 KiB
/// pieces as the server makes them (the pattern moves on by whole words).
fn pattern_checksum(total: u64) -> u64 {
    let mut pattern = Pattern::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut checksum = FNV_START;
    let mut made = 0u64;
    while made < total {
        let n = chunk.len().min((total - made) as usize);
        pattern.fill(&mut chunk[..n]);
        checksum = fnv1a(checksum, &chunk[..n]);
        made += n as u64;
    }
    checksum
}

/// The median (the upper of an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One model's entry of `results.json`: each direction's runs and their
/// median, or the error that stopped it.
pub fn entry(model: NicModel, runs: &Result<Runs>) -> (String, Value) {
    let direction = |runs: &[f64]| {
        json!({
            "tcp_throughput_mbit_s": median(runs).map(round2),
            "tcp_throughput_runs_mbit_s": runs.iter().copied().map(round2).collect::<Vec<_>>(),
        })
    };
    let value = match runs {
        Ok(runs) => json!({
            "to_guest": direction(&runs.to_guest),
            "from_guest": direction(&runs.from_guest),
            "tcp_transfer_bytes": TRANSFER_BYTES,
        }),
        Err(e) => json!({ "error": e.to_string().lines().next().unwrap_or_default() }),
    };
    (model.name().to_string(), value)
}

/// The printed lines for the entries.
pub fn print(entries: &serde_json::Map<String, Value>) {
    println!(
        "outside (this machine and a guest, through QEMU's user network, the uplink and the switch; TCG wall time, {} MiB a transfer):",
        TRANSFER_BYTES >> 20
    );
    for (model, value) in entries {
        if let Some(error) = value.get("error") {
            println!("  {model:<16} not measured: {error}");
            continue;
        }
        let figure = |direction: &str| {
            let d = &value[direction];
            format!(
                "{} Mbit/s (median of {})",
                d["tcp_throughput_mbit_s"], d["tcp_throughput_runs_mbit_s"]
            )
        };
        println!(
            "  {model:<16} to the guest {}, from the guest {}",
            figure("to_guest"),
            figure("from_guest")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_the_servers_fnv1a() {
        assert_eq!(fnv1a(FNV_START, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_START, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_pattern_is_the_same_in_any_whole_word_pieces() {
        let mut whole = vec![0u8; 1000];
        Pattern::new().fill(&mut whole);
        let mut pieces = vec![0u8; 1000];
        let mut pattern = Pattern::new();
        pattern.fill(&mut pieces[..64]);
        pattern.fill(&mut pieces[64..]);
        assert_eq!(whole, pieces);
        assert_eq!(pattern_checksum(1000), fnv1a(FNV_START, &whole));
    }

    #[test]
    fn entries_hold_the_median_or_the_error() {
        let runs = Runs {
            to_guest: vec![10.0, 30.0, 20.0],
            from_guest: vec![5.0, 1.0, 3.0],
        };
        let (name, ok) = entry(NicModel::E1000, &Ok(runs));
        assert_eq!(name, "e1000");
        assert_eq!(ok["to_guest"]["tcp_throughput_mbit_s"], 20.0);
        assert_eq!(ok["from_guest"]["tcp_throughput_mbit_s"], 3.0);
        let (_, bad) = entry(NicModel::VirtioNet, &Err(Error::new("no\nmore")));
        assert_eq!(bad["error"], "no");
    }
}
