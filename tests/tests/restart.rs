//! Guests started again: `guests=name:expect:restart=N` (or `:restart`,
//! every time) starts a guest afresh from its image when it ends, with the
//! same argument and network card, and expects each life to end as
//! `expect` says (`host::config::GuestSpec`, `kernel/src/run/machine.rs`).
//! Here each life must run in full, the restarts must be counted and
//! bounded, the frames of every life must come back, and a life that ends
//! otherwise than expected must fail the run.

use qemu_tests::{boot_machine, http_get, number_after, start_machine, with_nic_and_guest};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The network boot's limit: a std guest's start, two lives and their
/// requests, on an emulator of any speed.
const MACHINE_LIMIT: Duration = Duration::from_secs(240);
/// Each step's: the server up, its budget spent, the new life up.
const STEP_LIMIT: Duration = Duration::from_secs(90);

/// `hello` three times (two restarts) and `isolation/a` twice (one), on two
/// CPUs: every life runs in full and ends as expected, each restart is
/// said, no more restarts than allowed are made, and the frames balance.
#[test]
fn guests_are_restarted_as_often_as_asked_and_each_life_runs_in_full() {
    let boot = boot_machine(
        "guests=hello:restart=2,isolation/a:killed:restart=1",
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    let count = |needle: &str| boot.serial().matches(needle).count();
    let lives = [
        ("guest hello exited code=0", 3),
        ("[hello] hello: done", 3),
        ("guest isolation/a killed:", 2),
        (
            "[isolation/a] isolation a: own memory intact after 5 rounds",
            2,
        ),
        ("guest hello restarted (restart 1 of 2)", 1),
        ("guest hello restarted (restart 2 of 2)", 1),
        ("guest isolation/a restarted (restart 1 of 1)", 1),
        ("restarted", 3),
    ];
    for (needle, want) in lives {
        let seen = count(needle);
        if seen != want {
            boot.fail(&format!("`{needle}` {seen} times, not {want}"));
        }
    }
    let run = boot.line_containing(&["run:", "guest(s) on"]);
    if number_after(run, "run:") != Some(2) {
        boot.fail("the run should count two guests, however often they ran");
    }
    boot.line_containing(&["frames:", "balanced"]);
}

/// A life that ends otherwise than expected fails the run, even though it
/// was restarted (and the restart ended the same way).
#[test]
fn an_unexpected_end_of_any_life_fails_the_run() {
    let boot = boot_machine("guests=trap/cli:restart=1,hello", |_| {});
    boot.expect_kernel_failure();
    let kills = boot.serial().matches("guest trap/cli killed:").count();
    if kills != 2 {
        boot.fail(&format!("trap/cli killed {kills} times, not 2"));
    }
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// A server that the host kills (its CPU budget is used up by the requests
/// it answers) is started again, and serves again, at the same address,
/// from outside the machine: QEMU forwards a port of this machine to the
/// guest's, through the host's NIC and switch, and the new life takes the
/// old one's network card.
#[test]
fn a_server_killed_and_restarted_serves_again_at_the_same_address() {
    const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
    const GUEST_PORT: u16 = 7000;
    let cmdline = "guest_mem=64 guest_budget_ms=1500 \
        guests=\"net-server-std/RGUEST_IP=10.0.2.20/24 RGUEST_GATEWAY=10.0.2.2:killed:restart=1\"";
    let mut machine = start_machine(
        cmdline,
        MACHINE_LIMIT,
        with_nic_and_guest(GUEST_ADDRESS, GUEST_PORT),
    );
    machine.wait_for_line(&["net-server-std", "listening on"], STEP_LIMIT);
    let port = machine.guest_port();
    // Requests until the budget runs out and the host starts it again
    // (some fail while it is killed and while the new life starts).
    let give_up = Instant::now() + STEP_LIMIT;
    while !machine.serial().contains("restarted (restart 1 of 1)") {
        if Instant::now() > give_up {
            machine.fail("the server was not killed and restarted in time");
        }
        let _ = http_get(port, "/", Duration::from_secs(5));
    }
    let give_up = Instant::now() + STEP_LIMIT;
    while machine.serial().matches("listening on").count() < 2 {
        if Instant::now() > give_up {
            machine.fail("the restarted server did not listen again");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = match http_get(port, "/", STEP_LIMIT) {
        Ok(answer) => answer,
        Err(e) => machine.fail(&format!("the restarted server: {e}")),
    };
    let boot = machine.stop();
    boot.line_containing(&["guest net-server-std", "killed:", "time budget of 1500 ms"]);
    eprintln!(
        "{}\n{:?}",
        boot.line_containing(&["guest net-server-std", "counters:"]),
        boot.record.elapsed
    );
    if !answer.body.contains("net-server-std on rguest") {
        boot.fail(&format!("the restarted server's page: {}", answer.body));
    }
    for bad in ["EXCEPTION", "panicked", "net-server-std: FAILED"] {
        if boot.serial().contains(bad) {
            boot.fail(&format!("`{bad}` while the server lived and died"));
        }
    }
}
