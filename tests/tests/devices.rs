//! The guests' virtio devices under the host: the `devices` guest
//! (`images/guests/src/bin/devices.rs`) drives its virtio-console,
//! virtio-rng and virtio-net with the `virtio-drivers` crate over
//! `guest_rt::virtio`, and two of them exchange a thousand checked frames
//! through the host's virtual switch.

use qemu_tests::{Boot, boot};

/// The checks every `devices` guest makes before the network, in order.
const DEVICE_CHECKS: [&str; 4] = [
    "devices: ok found 3 devices",
    "devices: ok console:",
    "devices: ok rng 64 bytes, not all equal",
    "devices: ok dma: every page back",
];

/// Checks that the `devices` guest `name` passed its device checks, wrote
/// a line through virtio-console, and exited 0.
fn device_checks_passed(boot: &Boot, name: &str) {
    let prefix = format!("[{name}]");
    for check in DEVICE_CHECKS {
        boot.line_containing(&[&prefix, check]);
    }
    // The host prints what came through the console device, prefixed with
    // the guest's name like its hypercall output.
    boot.line_containing(&[&prefix, "devices: this line came through virtio-console"]);
    boot.line_containing(&[&prefix, "devices: all checks passed"]);
    boot.line_containing(&[&format!("guest {name} exited code=0")]);
    if boot
        .lines()
        .any(|l| l.starts_with(&prefix) && l.contains("FAILED"))
    {
        boot.fail(&format!("{name} reported a failed check"));
    }
}

/// The word after `marker` in `line`.
fn word_after<'l>(line: &'l str, marker: &str) -> Option<&'l str> {
    let tail = &line[line.find(marker)? + marker.len()..];
    tail.split_whitespace().next()
}

/// Two guests find each other on the switch; `a` sends 1000 frames of a
/// seeded pattern, `b` checks each and reports the checksum of them all,
/// which both print and must agree on. A third guest without a driver runs
/// beside them; every frame of host memory comes back.
#[test]
fn two_guests_exchange_a_thousand_checked_frames() {
    let boot = boot("guests=devices/a,devices/b,hello");
    boot.expect_success();
    device_checks_passed(&boot, "devices/a");
    device_checks_passed(&boot, "devices/b");
    boot.line_containing(&["[devices/a]", "devices: ok net peer", "said hello"]);
    let sent = boot.line_containing(&["[devices/a]", "devices: ok net 1000 frames sent to"]);
    let received = boot.line_containing(&[
        "[devices/b]",
        "devices: ok net 1000 frames received and checked",
    ]);
    let (sent_sum, received_sum) = (
        word_after(sent, "checksum "),
        word_after(received, "checksum "),
    );
    if sent_sum.is_none() || sent_sum != received_sum {
        boot.fail("the sender's and the receiver's checksums differ");
    }
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// Without a role the guest checks its devices and leaves the network
/// alone.
#[test]
fn a_lone_devices_guest_checks_its_devices_and_skips_the_network() {
    let boot = boot("guests=devices");
    boot.expect_success();
    device_checks_passed(&boot, "devices");
    boot.line_containing(&["[devices]", "devices: net skipped"]);
    boot.line_containing(&["frames:", "balanced"]);
}
