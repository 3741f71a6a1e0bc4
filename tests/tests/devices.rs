//! The guests' virtio devices under the host: the `devices` guest
//! (`images/guests/src/bin/devices.rs`) drives its virtio-console,
//! virtio-rng and virtio-net with the `virtio-drivers` crate over
//! `guest_rt::virtio`, and two of them exchange a thousand checked frames
//! through the host's virtual switch.
//!
//! Then the same exchange beside guests that hand the host hostile rings
//! (`guests=devices/hostile-<kind>`, `images/guests/src/bin/devices/hostile.rs`):
//! each must be killed with a reason naming exactly what it forged, or,
//! for a call that harms nothing, see the call fail and live on; and the
//! exchange must not notice. All of them share one boot.

use qemu_tests::{Boot, boot, boot_machine, number_after, start_machine};
use std::sync::OnceLock;
use std::time::Duration;

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
    the_exchange_completed(&boot);
}

/// The same exchange with the two guests on two CPUs at once: a frame for a
/// guest in a turn on the other CPU waits in the switch, and that CPU is
/// sent the scheduler's interrupt so that it comes home and takes it (the
/// classic driver notifies once per frame, so this is that path a thousand
/// times and more).
#[test]
fn the_exchange_also_completes_with_the_guests_on_two_cpus() {
    let boot = boot_machine("guests=devices/a,devices/b,hello", |machine| {
        machine.cpus = 2
    });
    boot.expect_success();
    the_exchange_completed(&boot);
}

/// Checks that `devices/a` and `devices/b` passed their device checks and
/// agreed on the checksum of all 1000 frames, that `hello` exited 0, and
/// that every frame of host memory came back.
fn the_exchange_completed(boot: &Boot) {
    device_checks_passed(boot, "devices/a");
    device_checks_passed(boot, "devices/b");
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

/// Memory per guest in the hostile boot, set on its command line: the
/// reasons of `outside` and `ring-outside` name addresses at its end.
const GUEST_MEM_MIB: u64 = 16;

/// The end of a guest's memory, as the host prints a guest-physical
/// address.
fn memory_end_minus(bytes: u64) -> String {
    format!("gpa:{:#x}", (GUEST_MEM_MIB << 20) - bytes)
}

/// Each hostile ring the host must end its guest for, and the whole of
/// the reason it must give (`misaligned`'s names an address the guest
/// prints, and is checked on its own).
fn lethal_actions() -> Vec<(&'static str, String)> {
    let net = "virtio-net queue 1";
    vec![
        ("loop", format!("{net}: descriptor 1 loops back to 0")),
        (
            "outside",
            format!(
                "{net}: descriptor 0's buffer at {} (64 bytes) is outside guest memory",
                memory_end_minus(0)
            ),
        ),
        (
            "wrap",
            format!(
                "{net}: descriptor 0's buffer at gpa:0xfffffffffffffff0 (64 bytes) is outside guest memory"
            ),
        ),
        (
            "huge",
            format!(
                "{net}: descriptor 0 takes its chain to 4294967295 bytes, more than the 1048576 a chain may hold"
            ),
        ),
        (
            "long-chain",
            format!("{net}: descriptor 7 continues at 8, past the table of 8"),
        ),
        (
            "write-only",
            format!("{net}: descriptor 0 is device-writable on a queue the device only reads"),
        ),
        (
            "indirect",
            format!(
                "{net}: descriptor 0 is indirect, and indirect descriptors were not negotiated"
            ),
        ),
        (
            "avail-ahead",
            format!("{net}: available index 9 is more than the queue's 8 entries ahead of 0"),
        ),
        (
            "bad-head",
            format!("{net}: available ring names descriptor 8, past the table of 8"),
        ),
        (
            "read-only",
            String::from(
                "virtio-rng queue 0: descriptor 0 is device-readable on a queue the device writes (a write into a read-only buffer)",
            ),
        ),
        (
            "rx-read-only",
            String::from(
                "virtio-net queue 0: descriptor 0 is device-readable on a queue the device writes (a write into a read-only buffer)",
            ),
        ),
        (
            "ring-outside",
            format!(
                "{net}: used ring at {} (70 bytes) is outside guest memory",
                memory_end_minus(64)
            ),
        ),
        ("misaligned", String::new()),
        (
            "bad-size",
            format!("{net}: size 3 is not a power of two between 1 and the queue's maximum 256"),
        ),
        (
            "driver-ok-early",
            String::from(
                "virtio-net: DRIVER_OK set before the features were accepted (FEATURES_OK)",
            ),
        ),
    ]
}

/// The exit code of a hostile guest whose calls the host refused without
/// a kill.
const CONTAINED: u64 = 3;

/// Each call the host refuses without a kill, and the line the guest
/// prints about what the host answered.
const CONTAINED_ACTIONS: &[(&str, &[&str])] = &[
    (
        "no-queue",
        &[
            "devices: no-queue: queue 2 InvalidArgument, queue 65537 InvalidArgument, queue 18446744073709551615 InvalidArgument; the card still live (status 0xf), queue 1 answers 0",
        ],
    ),
    (
        "no-device",
        &[
            "devices: no-device: device 3: status InvalidArgument, notify InvalidArgument",
            "devices: no-device: device 8: status InvalidArgument, notify InvalidArgument",
            "devices: no-device: device 18446744073709551615: status InvalidArgument, notify InvalidArgument",
        ],
    ),
];

/// How long the hostile boot may take. Measured under TCG on a 2-core
/// machine, the whole boot (the exchange and seventeen hostile guests) ends
/// in about a second; this is the margin for a slower or busier machine,
/// whose only cost is the wait for a boot that is wedged anyway.
const HOSTILE_TIME_LIMIT: Duration = Duration::from_secs(300);

/// The one boot the hostile tests read: the exchange and `hello`, then
/// every hostile guest.
fn hostile() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let mut guests: Vec<String> = ["devices/a", "devices/b", "hello"].map(String::from).into();
        guests.extend(
            lethal_actions()
                .iter()
                .map(|(kind, _)| format!("devices/hostile-{kind}:killed")),
        );
        guests.extend(
            CONTAINED_ACTIONS
                .iter()
                .map(|(kind, _)| format!("devices/hostile-{kind}:{CONTAINED}")),
        );
        let cmdline = format!("guest_mem={GUEST_MEM_MIB} guests={}", guests.join(","));
        start_machine(&cmdline, HOSTILE_TIME_LIMIT, |_| {}).finish()
    })
}

/// Every hostile guest in the boot, lethal or contained.
fn hostile_guests() -> Vec<String> {
    lethal_actions()
        .into_iter()
        .map(|(kind, _)| kind)
        .chain(CONTAINED_ACTIONS.iter().map(|(kind, _)| *kind))
        .map(|kind| format!("devices/hostile-{kind}"))
        .collect()
}

/// Each lethal guest announced its action and was killed with exactly
/// the reason that names it: the device, the queue, the descriptor or
/// ring, and the value it forged.
#[test]
fn every_hostile_ring_ends_its_guest_with_exactly_its_reason() {
    let boot = hostile();
    for (kind, reason) in lethal_actions() {
        let name = format!("devices/hostile-{kind}");
        let announced = boot.line_containing(&[
            &format!("[{name}]"),
            &format!("devices: about to try {kind}: "),
        ]);
        let reason = if kind == "misaligned" {
            let Some(at) = word_after(announced, "a descriptor table at ") else {
                boot.fail("misaligned did not say where its descriptor table is");
            };
            format!("virtio-net queue 1: descriptor table at {at} is not 16-byte aligned")
        } else {
            reason
        };
        let killed = format!("guest {name} killed: ");
        let line = boot.line_containing(&[&killed]);
        if line.trim_start() != format!("{killed}{reason}") {
            boot.fail(&format!(
                "{name} was killed with another reason than `{reason}`"
            ));
        }
    }
    if boot.serial().contains("survived") {
        boot.fail("a hostile guest survived what the host must refuse");
    }
}

/// A notify of a queue the card does not have, and calls for devices
/// the guest does not have, fail with `InvalidArgument`, break nothing
/// (the card is still live and answers), and the guest exits on its own.
#[test]
fn calls_naming_no_queue_or_no_device_fail_without_a_kill() {
    let boot = hostile();
    for (kind, lines) in CONTAINED_ACTIONS {
        let prefix = format!("[devices/hostile-{kind}]");
        for line in *lines {
            boot.line_containing(&[&prefix, line]);
        }
        boot.line_containing(&[&format!(
            "guest devices/hostile-{kind} exited code={CONTAINED}"
        )]);
    }
}

/// Beside the hostile guests, `devices/a` and `devices/b` exchange their
/// 1000 frames and agree on the checksum, `hello` exits 0, every guest
/// ends as expected and every frame of host memory comes back.
#[test]
fn the_exchange_beside_the_hostile_guests_completes() {
    let boot = hostile();
    boot.expect_success();
    the_exchange_completed(boot);
}

/// The count after `key=` in `line`, or the test fails.
fn count(boot: &Boot, line: &str, key: &str) -> u64 {
    number_after(line, &format!(" {key}="))
        .unwrap_or_else(|| boot.fail(&format!("no {key}= in `{line}`")))
}

/// Nothing entered the switch from a hostile guest: its port took in no
/// frame at all, not even one dropped for its size; what `a` and `b`'s
/// ports took in is exactly what each says it sent; and the switch only
/// ever learned their two addresses, so no frame with another source
/// (a hostile guest's) passed through it.
#[test]
fn nothing_leaks_from_the_hostile_guests_into_the_switch() {
    let boot = hostile();
    for name in hostile_guests() {
        let port = boot.line_containing(&[&format!("guest {name} network: port ")]);
        for key in ["rx_packets", "rx_bytes", "drops_runt", "drops_oversize"] {
            if count(boot, port, key) != 0 {
                boot.fail(&format!("{name}'s port has {key} above 0"));
            }
        }
    }
    for name in ["devices/a", "devices/b"] {
        let said = boot.line_containing(&[&format!("[{name}]"), "devices: net: ", "frames sent"]);
        let sent = number_after(said, "devices: net: ")
            .unwrap_or_else(|| boot.fail(&format!("{name} did not say how many frames it sent")));
        let port = boot.line_containing(&[&format!("guest {name} network: port ")]);
        if count(boot, port, "rx_packets") != sent {
            boot.fail(&format!(
                "{name} sent {sent} frames, but its port took in another number"
            ));
        }
    }
    let switch = boot.line_containing(&["network: switch "]);
    if count(boot, switch, "learned") != 2 || count(boot, switch, "unknown_port") != 0 {
        boot.fail("the switch learned other addresses than devices/a's and devices/b's");
    }
}
