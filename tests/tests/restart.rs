//! Guests started again: `guests=name:expect:restart=N` (or `:restart`,
//! every time) starts a guest afresh from its image when it ends, with the
//! same argument and network card, and expects each life to end as
//! `expect` says (`host::config::GuestSpec`, `kernel/src/run/machine.rs`).
//! Here each life must run in full, the restarts must be counted and
//! bounded, the frames of every life must come back, and a life that ends
//! otherwise than expected must fail the run.

use qemu_tests::{boot_machine, number_after};

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
