//! Guests with several vCPUs (`guests=smp/<mode>:<end>:vcpus=N`): the
//! `smp` guest (`images/guests/src/bin/smp.rs`) starts its other vCPUs by
//! hypercall and checks from the inside what the host must guarantee; here
//! each mode's verdict, the host's counts and the end of each guest are
//! read from the outside.
//!
//! - `threads`: every vCPU runs the same fixed work and sends vCPU 0 a
//!   numbered sequence; one shared counter ends at exactly vCPUs × 2000.
//! - `race`: vCPU 0 moves a page vCPU 1 keeps writing from one frame to
//!   another, 200 times; the old frame must not change once the report
//!   returned (the shoot-down). Without the shoot-down this fails in the
//!   first round.
//! - `refuse`: the start-vCPU calls the host must refuse are refused,
//!   without a kill.
//! - `kill`: vCPU 0 executes `cli` while vCPU 1 prints; the whole guest is
//!   killed, and nothing of it runs afterwards.
//! - `ipi`: the two vCPUs wake each other with interrupts (the send-IPI
//!   hypercall), 200 round trips, each halted with nothing else to wake it.
//! - `spin`: every vCPU spins with its virtual interrupts off, until the
//!   guest's budget ends it.
//!
//! The first five share one boot on two CPUs, beside a `hello`.

use qemu_tests::{Boot, boot, boot_machine, number_after};
use std::sync::OnceLock;

/// The one boot of five modes, on two vCPUs each, on `-smp 2`, that the
/// first five tests read.
fn boot_the_modes() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        boot_machine(
            "guests=smp/threads:0:vcpus=2,smp/race:0:vcpus=2,smp/refuse:0:vcpus=2,smp/kill:killed:vcpus=2,smp/ipi:0:vcpus=2,hello",
            |machine| machine.cpus = 2,
        )
    });
    boot.expect_success();
    boot.line_containing(&["frames:", "balanced"]);
    boot
}

#[test]
fn a_guest_of_two_vcpus_runs_on_both_and_sees_its_own_writes() {
    let boot = boot_the_modes();
    for vcpu in 0..2 {
        boot.line_containing(&[&format!("smp threads: vcpu {vcpu} ran 2000000 iterations")]);
    }
    boot.line_containing(&["smp threads: vcpu 0 read vcpu 1's 1000 messages in order"]);
    boot.line_containing(&["smp threads: 2 vcpus, counter 4000 as expected, every vcpu ran"]);
    boot.line_containing(&["guest smp/threads exited code=0"]);
    // Both CPUs ran guests' turns.
    for cpu in 0..2 {
        let marker = format!("cpu {cpu}:");
        let line = boot.line_starting(&marker);
        if number_after(line, &marker).is_none_or(|turns| turns == 0) {
            boot.fail(&format!("cpu {cpu} ran no turn: `{line}`"));
        }
    }
}

#[test]
fn racing_page_table_updates_never_leave_a_stale_writable_mapping() {
    let boot = boot_the_modes();
    boot.line_containing(&["smp race: 200 rounds", "no stale writable mapping"]);
    boot.line_containing(&["guest smp/race exited code=0"]);
    // Each round's report owed the running vCPU 1 a shoot-down.
    let paging = boot.line_containing(&["guest smp/race paging:"]);
    match number_after(paging, "shootdowns=") {
        Some(n) if n >= 200 => {}
        other => boot.fail(&format!("expected 200 shoot-downs or more, got {other:?}")),
    }
}

#[test]
fn start_calls_out_of_bounds_are_refused_with_an_error() {
    let boot = boot_the_modes();
    boot.line_containing(&[
        "smp refuse: 8 bad starts refused as they should be, vcpu 1 started once",
    ]);
    boot.line_containing(&["guest smp/refuse exited code=0"]);
}

#[test]
fn a_guest_killed_on_one_vcpu_stops_on_every_vcpu() {
    let boot = boot_the_modes();
    let lines: Vec<&str> = boot.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| boot.fail(&format!("no line with `{needle}`")))
    };
    let rules = at("smp kill: vcpu 0 breaks the rules");
    let killed = at("guest smp/kill killed: privileged instruction `cli`");
    let alive: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("smp kill: vcpu 1 alive"))
        .collect();
    if alive.iter().filter(|&&i| i < rules).count() < 2 {
        boot.fail("vcpu 1 did not print twice before vcpu 0 broke the rules");
    }
    if let Some(&late) = alive.iter().find(|&&i| i > killed) {
        boot.fail(&format!(
            "vcpu 1 ran after its guest was killed: `{}`",
            lines[late]
        ));
    }
}

#[test]
fn vcpus_wake_each_other_with_interrupts() {
    let boot = boot_the_modes();
    boot.line_containing(&["smp ipi: 200 round trips, every interrupt once"]);
    boot.line_containing(&["guest smp/ipi exited code=0"]);
}

/// Every vCPU spins with its virtual interrupts off: the guest's one CPU
/// budget, which its vCPUs spend together, ends it, while the host's
/// other guest runs to its end.
#[test]
fn a_guest_whose_vcpus_all_spin_is_ended_by_its_budget() {
    let boot = boot_machine(
        "guest_budget_ms=1000 guests=smp/spin:killed:vcpus=2,hello",
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    boot.line_containing(&["smp spin: 2 vcpus spin with interrupts off"]);
    boot.line_containing(&[
        "guest smp/spin killed: ran over its time budget of 1000 ms with its virtual interrupts off",
    ]);
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// More vCPUs than CPUs: they take turns, and the counts still come out.
/// A vCPU that waits for another spins until its slice ends, so the
/// slices are 1 ms here (`timer_hz=1000`), not 10: the run takes about 1.5
/// s instead of 12.
#[test]
fn four_vcpus_share_one_cpu_by_turns() {
    let boot = boot("timer_hz=1000 guests=smp/threads:0:vcpus=4");
    boot.expect_success();
    boot.line_containing(&["smp threads: 4 vcpus, counter 8000 as expected, every vcpu ran"]);
    boot.line_containing(&["frames:", "balanced"]);
}

#[test]
fn four_vcpus_run_on_four_cpus() {
    let boot = boot_machine("guests=smp/threads:0:vcpus=4", |machine| machine.cpus = 4);
    boot.expect_success();
    boot.line_containing(&["smp threads: 4 vcpus, counter 8000 as expected, every vcpu ran"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// A guest may have at most 16 vCPUs: more is refused on the command line,
/// with the bound named, before any guest runs.
#[test]
fn more_vcpus_than_allowed_are_refused_by_name() {
    let boot = boot("guests=smp/threads:0:vcpus=17");
    boot.expect_kernel_failure();
    boot.line_containing(&["`guests=smp/threads:0:vcpus=17` is not valid", "1 to 16"]);
}

/// A guest of several vCPUs started again gets them all again, and one
/// killed with a vCPU running comes back as well; the old lives' places
/// and frames go. (`refuse` is the shortest life that starts a vCPU.)
#[test]
fn a_guest_of_several_vcpus_lives_again_with_all_of_them() {
    let boot = boot_machine(
        "guests=smp/refuse:0:vcpus=2:restart=2,smp/kill:killed:vcpus=2:restart=1",
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    let lives = boot
        .lines()
        .filter(|l| {
            l.contains("smp refuse: 8 bad starts refused as they should be, vcpu 1 started once")
        })
        .count();
    if lives != 3 {
        boot.fail(&format!("expected 3 lives of smp/refuse, saw {lives}"));
    }
    boot.line_containing(&["guest smp/refuse restarted (restart 2 of 2)"]);
    boot.line_containing(&["guest smp/kill restarted (restart 1 of 1)"]);
    let kills = boot
        .lines()
        .filter(|l| l.starts_with("guest smp/kill killed: privileged instruction `cli`"))
        .count();
    if kills != 2 {
        boot.fail(&format!("expected smp/kill killed twice, saw {kills}"));
    }
    boot.line_containing(&["frames:", "balanced"]);
}
