//! TCP and UDP between two Rust `std` guests through the host's virtual
//! switch: `net-server-std` and `net-client-std` (`images/std/apps/`), on
//! the sockets of the `hermit` runtime (smoltcp over each guest's
//! virtio-net card), beside `hello`.
//!
//! The client sends 10 MiB of a seeded pattern over one TCP connection;
//! the server answers with the byte count and an FNV-1a checksum, which
//! the client compares with its own; before that, five UDP datagrams of 1
//! to 1472 bytes make a round trip through the server's echo. The test
//! checks both programs' `ok` lines, that both name the same checksum,
//! that every guest ended once with code 0, and that the host got every
//! frame back. The client's throughput is printed, never judged: these
//! are TCG machines of any speed.

use qemu_tests::{Boot, boot, boot_machine, number_after};

/// The boot: 64 MiB per guest (each TCP socket has 128 KiB of buffers, and
/// the programs a 64 KiB chunk), the server first so that it is
/// `10.0.0.1`, the address the client goes to by default.
const CMDLINE: &str = "guest_mem=64 guests=net-server-std,net-client-std,hello";

/// The checksum in the line of `guest` that holds `marker`.
fn checksum_in(boot: &Boot, guest: &str, marker: &str) -> String {
    let line = boot.line_containing(&[&format!("[{guest}]"), marker]);
    match line.split("fnv1a=").nth(1) {
        Some(rest) => rest.split_whitespace().next().unwrap_or("").to_string(),
        None => boot.fail(&format!("no checksum in `{line}`")),
    }
}

/// Checks that each of `guests` ended exactly once, with code 0, and that
/// no other guest ended.
fn expect_each_exited_zero_once(boot: &Boot, guests: &[&str]) {
    let ends: Vec<&str> = boot
        .lines()
        .filter(|l| {
            l.starts_with("guest ") && (l.contains(" exited code=") || l.contains(" killed: "))
        })
        .collect();
    if ends.len() != guests.len() {
        boot.fail(&format!(
            "expected {} guest ends, saw {}: {ends:?}",
            guests.len(),
            ends.len()
        ));
    }
    for guest in guests {
        let end = format!("guest {guest} exited code=0");
        if ends.iter().filter(|l| **l == end).count() != 1 {
            boot.fail(&format!("expected `{end}` once"));
        }
    }
}

#[test]
fn two_std_guests_exchange_ten_megabytes_over_tcp_and_agree_on_the_checksum() {
    expect_the_exchange(&boot(CMDLINE));
}

/// The same on two CPUs, where the two guests run at the same time: frames
/// for a guest in a turn on the other CPU wait in the switch, and that CPU
/// is sent the scheduler's interrupt so that the turn ends and they go in.
#[test]
fn the_exchange_also_holds_with_the_guests_on_two_cpus() {
    let boot = boot_machine(CMDLINE, |machine| machine.cpus = 2);
    expect_the_exchange(&boot);
    let cpus: Vec<&str> = boot
        .lines()
        .filter(|l| l.starts_with("cpu ") && l.contains(" turns,"))
        .collect();
    if cpus.len() != 2 {
        boot.fail(&format!("expected two CPUs' accounts, saw {cpus:?}"));
    }
}

/// Everything both programs must have said and done, and the host too.
fn expect_the_exchange(boot: &Boot) {
    boot.expect_success();
    boot.line_containing(&["[net-server-std]", "hermit: net: up, 10.0.0.1/24"]);
    boot.line_containing(&["[net-client-std]", "hermit: net: up, 10.0.0.2/24"]);
    boot.line_containing(&["[net-client-std]", "net-client-std: ok udp: 5 datagrams"]);
    // The client sends a datagram again after half a second without its
    // echo (the first may come before the server has bound its socket, as
    // it can when the two run at once on two CPUs), and the server echoes
    // every one it gets: at least the client's five.
    let echoed = boot.line_containing(&["[net-server-std]", "net-server-std: ok udp:"]);
    if number_after(echoed, "ok udp:").is_none_or(|n| n < 5) {
        boot.fail(&format!(
            "the server echoed fewer than 5 datagrams: `{echoed}`"
        ));
    }
    let server = checksum_in(boot, "net-server-std", "ok tcp: bytes=10485760 ");
    let client = checksum_in(boot, "net-client-std", "ok tcp: 10485760 bytes sent");
    if server != client || server.len() != 16 {
        boot.fail(&format!("server checksum {server}, client {client}"));
    }
    let throughput = boot.line_containing(&["[net-client-std]", "MB/s"]);
    println!("{throughput}");
    for guest in ["net-server-std", "net-client-std"] {
        boot.line_containing(&[&format!("[{guest}]"), &format!("{guest}: ok")]);
        if boot.serial().contains(&format!("{guest}: FAILED")) {
            boot.fail(&format!("{guest} reported a failure"));
        }
    }
    expect_each_exited_zero_once(boot, &["net-server-std", "net-client-std", "hello"]);
    boot.line_containing(&["frames:", "balanced"]);
}
