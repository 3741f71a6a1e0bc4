//! Deliberate faults: each `test=<fault>` word makes the kernel commit one,
//! and the test checks both halves of the contract: the report on the
//! console and the failure exit status (not a reset, not a hang).

use qemu_tests::{Boot, boot};

/// Boots with `test=<word>`, expects the failure status and an exception
/// report naming `mnemonic` with the faulting `rip=`; returns the boot and
/// the report (from its `EXCEPTION` line to the end) for further checks.
fn expect_exception(word: &str, mnemonic: &str) -> (Boot, String) {
    let boot = boot(&format!("test={word}"));
    boot.expect_kernel_failure();
    let report = boot.report_starting("EXCEPTION ").to_string();
    if !report.lines().next().unwrap_or("").contains(mnemonic) {
        boot.fail(&format!("the exception report does not name {mnemonic}"));
    }
    if !report.contains("rip=") {
        boot.fail("the exception report has no rip=");
    }
    (boot, report)
}

#[test]
fn invalid_opcode_is_reported() {
    expect_exception("fault-ud", "#UD");
}

#[test]
fn page_fault_is_reported_with_the_address() {
    let (boot, report) = expect_exception("fault-pf", "#PF");
    if !report.contains("cr2=") {
        boot.fail("the page-fault report has no cr2=");
    }
}

#[test]
fn divide_error_is_reported() {
    expect_exception("fault-de", "#DE");
}

/// A stack overflow cannot be reported on the overflowed stack: the double
/// fault handler runs on its own IST stack, and must still get its words out.
#[test]
fn stack_overflow_becomes_a_reported_double_fault() {
    expect_exception("fault-stack", "#DF");
}

#[test]
fn panic_prints_its_location_and_message() {
    let boot = boot("test=panic");
    boot.expect_kernel_failure();
    let panic = boot.line_starting("PANIC at ");
    // `PANIC at <file>:<line>: <message>`
    let location = panic.trim_start_matches("PANIC at ");
    let mut parts = location.splitn(3, ':');
    let (file, line, message) = (parts.next(), parts.next(), parts.next());
    let well_formed = file.is_some_and(|f| f.ends_with(".rs"))
        && line.is_some_and(|l| l.parse::<u32>().is_ok())
        && message.is_some_and(|m| !m.trim().is_empty());
    if !well_formed {
        boot.fail("the panic line is not `PANIC at <file>:<line>: <message>`");
    }
}
