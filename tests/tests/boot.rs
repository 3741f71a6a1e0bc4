//! A plain boot: the kernel comes up, says what machine it found, and shuts
//! down cleanly; and the harness notices when it does not.

use qemu_tests::{boot, boot_machine, number_after};

#[test]
fn boots_reports_memory_and_cpu_and_shuts_down_cleanly() {
    let boot = boot("");
    boot.expect_success();
    let banner = boot.line_starting("rguest ");
    if !banner.contains("booted via PVH") {
        boot.fail("the banner does not say it booted via PVH");
    }
    let memory = boot.line_starting("memory:");
    if number_after(memory, "memory:").is_none_or(|mib| mib == 0) {
        boot.fail("the memory line has no usable MiB");
    }
    let cpu = boot.line_starting("cpu:");
    if cpu.trim_start_matches("cpu:").trim().is_empty() {
        boot.fail("the cpu line names no vendor");
    }
    boot.line_starting("rguest: shutting down");
}

/// The memory the kernel reports follows the machine's: it reads the real
/// memory map, not a constant.
#[test]
fn reported_memory_follows_the_machine() {
    let boot = boot_machine("", |machine| machine.memory = "1G".into());
    boot.expect_success();
    let mib = number_after(boot.line_starting("memory:"), "memory:").unwrap_or(0);
    if !(900..=1024).contains(&mib) {
        boot.fail(&format!("a 1 GiB machine reported {mib} MiB usable"));
    }
}

/// The harness must be able to fail: a boot that ends in a panic is not a
/// success, and saying so must stop the test.
#[test]
#[should_panic(expected = "expected \"kernel shut down cleanly\"")]
fn the_harness_refuses_a_failed_boot() {
    boot("test=panic").expect_success();
}
