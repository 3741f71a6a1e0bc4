//! Containment: a guest kernel that tries something only the host may do
//! is killed with a reason naming what it did, and the host, and the guests
//! after it, carry on.
//!
//! All the misbehaving guests share one boot (they run one after another
//! and side by side on the host's tick); a well-behaved guest at the end
//! must still run to completion.

use qemu_tests::{Boot, boot, number_after};
use std::sync::OnceLock;

/// Each action the `trap` guest can take, and words the host's kill reason
/// must contain.
const ACTIONS: &[(&str, &[&str])] = &[
    ("cli", &["privileged instruction `cli`"]),
    ("hlt", &["privileged instruction `hlt`"]),
    ("mov-cr3", &["privileged instruction `mov to cr3`"]),
    ("lgdt", &["privileged instruction `lgdt`"]),
    ("wrmsr", &["privileged instruction `wrmsr`"]),
    ("in", &["privileged instruction `in`"]),
    ("out", &["privileged instruction `out`"]),
    ("swapgs", &["privileged instruction `swapgs`"]),
    ("iretq-ring0", &["privileged instruction `iretq`"]),
    ("sgdt", &["privileged instruction `sgdt`"]),
    ("write-switcher", &["write to the switcher's pages"]),
    ("user-hypercall", &["hypercall from user mode"]),
];

/// The one boot all the tests below read.
fn contained() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let mut guests: Vec<String> = ACTIONS
            .iter()
            .map(|(action, _)| format!("trap/{action}:killed"))
            .collect();
        guests.push("hello".to_string());
        boot(&format!("guests={}", guests.join(",")))
    })
}

#[test]
fn every_privileged_action_kills_its_guest_with_the_reason() {
    let boot = contained();
    for (action, reason) in ACTIONS {
        let mut needles = vec![format!("guest trap/{action} killed:")];
        needles.extend(reason.iter().map(|r| r.to_string()));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        boot.line_containing(&needles);
    }
    // No guest got past its action.
    if boot.serial().contains("survived") {
        boot.fail("a trap guest survived its privileged action");
    }
}

#[test]
fn the_guest_after_them_still_runs_and_the_host_succeeds() {
    let boot = contained();
    boot.expect_success();
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// A guest that spins with its virtual interrupts off is still preempted by
/// the host's real tick, and ended after its time budget.
#[test]
fn a_spinning_guest_is_preempted_and_ended_after_its_budget() {
    let boot = boot("guest_budget_ms=300 guests=trap/spin:killed,hello");
    boot.expect_success();
    boot.line_containing(&[
        "guest trap/spin killed:",
        "time budget",
        "virtual interrupts off",
    ]);
    let counters = boot.line_containing(&["guest trap/spin counters:"]);
    if number_after(counters, "ticks=").unwrap_or(0) < 30 {
        boot.fail("the spinning guest should have been charged at least 30 ticks");
    }
    boot.line_containing(&["guest hello exited code=0"]);
}

/// A kill the command line did not expect fails the run (the harness can
/// see a containment failure).
#[test]
fn an_unexpected_kill_fails_the_run() {
    let boot = boot("guests=trap/cli");
    boot.expect_kernel_failure();
    boot.line_containing(&["guest trap/cli killed:", "cli"]);
}
