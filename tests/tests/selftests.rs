//! The kernel's own self-tests and its command-line handling.

use qemu_tests::boot;

/// Many frame and heap allocations and frees inside the kernel; the kernel
/// checks that its counts come back to where they started.
#[test]
fn alloc_stress_balances_and_succeeds() {
    let boot = boot("test=alloc-stress");
    boot.expect_success();
    boot.line_starting("alloc-stress: ok");
}

/// A typo in a key must not brick a remote machine: warn, and boot.
#[test]
fn unknown_key_warns_and_still_boots() {
    let boot = boot("colour=blue");
    boot.expect_success();
    boot.line_containing(&["unknown command-line key", "colour"]);
}

/// A known key with a bad value stops the machine, naming the word.
#[test]
fn malformed_value_fails_naming_the_word() {
    let boot = boot("log=loud");
    boot.expect_kernel_failure();
    boot.line_containing(&["log=loud", "not valid"]);
}
