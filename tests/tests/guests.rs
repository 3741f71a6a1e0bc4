//! Guests under the host: the default guest, several side by side, and the
//! exit-status contract (success only when every guest ends as expected).

use qemu_tests::{boot, number_after};

/// `cargo xtask run`'s default: the hello guest prints, sleeps on its
/// virtual timer, survives the #DE and #UD it causes, and exits 0; the host
/// gives back every frame it took for it.
#[test]
fn hello_guest_runs_to_a_clean_exit() {
    let boot = boot("guests=hello");
    boot.expect_success();
    boot.line_starting("[hello]");
    boot.line_containing(&["guest hello exited code=0"]);
    let counters = boot.line_containing(&["guest hello counters:"]);
    let hypercalls = number_after(counters, "hypercalls=").unwrap_or(0);
    let exceptions = number_after(counters, "exceptions=").unwrap_or(0);
    if hypercalls == 0 || exceptions < 2 {
        boot.fail("expected hypercalls and at least the #DE and #UD among the exits");
    }
    boot.line_containing(&["frames:", "balanced"]);
}

/// Two guests interleaved by the host's tick both finish, each with its own
/// exit line.
#[test]
fn two_guests_side_by_side_both_finish() {
    let boot = boot("guests=hello,hello/second");
    boot.expect_success();
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["guest hello/second exited code=0"]);
    boot.line_starting("[hello/second]");
}

/// A guest that ends otherwise than the command line expects makes the
/// whole run a failure: scripts can trust the status.
#[test]
fn an_unexpected_guest_end_fails_the_run() {
    let boot = boot("guests=hello:7");
    boot.expect_kernel_failure();
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["expected Exit(7)"]);
}

/// Naming a guest the archive does not hold is a clear error listing what
/// it does hold; the guests that can start still run, and the run fails.
#[test]
fn an_unknown_guest_is_refused_naming_the_choices() {
    let boot = boot("guests=nosuchguest,hello");
    boot.expect_kernel_failure();
    boot.line_containing(&[
        "guest nosuchguest failed to start",
        "no guest `nosuchguest`",
        "hello",
    ]);
    boot.line_containing(&["guest hello exited code=0"]);
}
