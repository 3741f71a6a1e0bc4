//! Several CPUs: every CPU of the machine comes up, and the guests still
//! run (on the boot CPU) to a clean end.
//!
//! The kernel starts each application processor with INIT-SIPI-SIPI and
//! sets it up as the boot CPU (`kernel/src/smp/`), then prints one line,
//! `cpus: N enabled in the ACPI MADT; M up (cpu 0 apic 0 (boot), cpu 1 apic
//! 1, ...)`, and a line for each CPU left out. Here every CPU of QEMU's
//! `-smp N` must come up, exactly N of them; two guests must end well; and
//! the frames must balance. Under TCG each CPU is a thread of its own, so
//! the start-up really runs in parallel with the boot CPU's wait.

use qemu_tests::{Boot, boot_machine, number_after};

/// Boots `-smp cpus` with two guests and checks the whole story.
fn boot_with_cpus(cpus: u32) -> Boot {
    let boot = boot_machine("guests=hello,hello/second", |machine| machine.cpus = cpus);
    boot.expect_success();
    eprintln!(
        "-smp {cpus}: booted and shut down in {:?}",
        boot.record.elapsed
    );
    expect_every_cpu_up(&boot, cpus);
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["guest hello/second exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
    boot
}

/// The `cpus:` line counts `cpus` CPUs in the MADT and as many up, names
/// each by index and APIC id (QEMU numbers them alike), and no CPU was
/// left out.
fn expect_every_cpu_up(boot: &Boot, cpus: u32) {
    let line = boot.line_containing(&["cpus:", "enabled in the ACPI MADT"]);
    let enabled = number_after(line, "cpus:");
    let up = number_after(line, "MADT;");
    if enabled != Some(u64::from(cpus)) || up != Some(u64::from(cpus)) {
        boot.fail(&format!(
            "expected {cpus} CPUs enabled and {cpus} up, the line says {enabled:?} and {up:?}"
        ));
    }
    if !line.contains("cpu 0 apic 0 (boot)") {
        boot.fail("the boot CPU is not named as cpu 0");
    }
    for cpu in 1..cpus {
        if !line.contains(&format!("cpu {cpu} apic {cpu}")) {
            boot.fail(&format!("cpu {cpu} is not among the CPUs up"));
        }
    }
    if boot.lines().any(|l| l.contains("did not come up")) {
        boot.fail("a CPU was left out");
    }
}

/// One CPU: nothing to start, and the line says so (no start-up report).
#[test]
fn one_cpu_boots_as_before() {
    let boot = boot_with_cpus(1);
    if boot.lines().any(|l| l.contains("other CPU")) {
        boot.fail("with one CPU no other should be started");
    }
}

#[test]
fn two_cpus_both_come_up() {
    boot_with_cpus(2);
}

#[test]
fn four_cpus_all_come_up() {
    boot_with_cpus(4);
}
