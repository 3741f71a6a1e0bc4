//! Several CPUs: every CPU of the machine comes up, every CPU runs guests,
//! and guests that move between CPUs keep what is theirs.
//!
//! The kernel starts each application processor with INIT-SIPI-SIPI and
//! sets it up as the boot CPU (`kernel/src/smp/`), then prints one line,
//! `cpus: N enabled in the ACPI MADT; M up (cpu 0 apic 0 (boot), cpu 1 apic
//! 1, ...)`, and a line for each CPU left out. Here every CPU of QEMU's
//! `-smp N` must come up, exactly N of them; two guests must end well; and
//! the frames must balance. Under TCG each CPU is a thread of its own, so
//! the start-up really runs in parallel with the boot CPU's wait, and so do
//! the guests.
//!
//! At the end of the run the kernel prints a line per CPU, `cpu N: T turns,
//! G guests, ...`, and the scheduler's counts, `scheduler: T turns, M
//! migrations, ...`; the tests read both.

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

/// Each CPU's `cpu N: T turns, G guests, ...` line, as (turns, guests), for
/// CPUs 0 to `cpus - 1`: every CPU must have its line.
fn cpu_accounts(boot: &Boot, cpus: u32) -> Vec<(u64, u64)> {
    (0..cpus)
        .map(|cpu| {
            let marker = format!("cpu {cpu}:");
            let Some(line) = boot.lines().find(|l| l.starts_with(&marker)) else {
                boot.fail(&format!("no `{marker}` line at the end of the run"));
            };
            let turns = number_after(line, &marker);
            let guests = number_after(line, "turns,");
            match (turns, guests) {
                (Some(t), Some(g)) => (t, g),
                _ => boot.fail(&format!("cannot read `{line}`")),
            }
        })
        .collect()
}

/// The scheduler's `scheduler: T turns, M migrations, ...` line, as (T, M).
fn scheduler_counts(boot: &Boot) -> (u64, u64) {
    let line = boot.line_containing(&["scheduler:", "migrations"]);
    match (
        number_after(line, "scheduler:"),
        number_after(line, "turns,"),
    ) {
        (Some(turns), Some(migrations)) => (turns, migrations),
        _ => boot.fail(&format!("cannot read `{line}`")),
    }
}

/// The `isolation` guests `a`, `b`, ... (`count` of them), each expected to
/// be killed at its last probe.
fn isolation_guests(count: u8) -> Vec<String> {
    (b'a'..b'a' + count)
        .map(|c| format!("isolation/{}:killed", c as char))
        .collect()
}

/// Each `isolation` guest found its whole memory intact after every round
/// of sleeping while the others ran, and was killed for the frame past its
/// memory, not anything else.
fn expect_isolation_intact(boot: &Boot, count: u8) {
    for c in (b'a'..b'a' + count).map(char::from) {
        boot.line_containing(&[
            &format!("[isolation/{c}]"),
            "own memory intact after 5 rounds",
        ]);
        boot.line_containing(&[
            &format!("guest isolation/{c} killed:"),
            "outside guest memory",
        ]);
    }
}

/// Eight guests share `cpus` CPUs: all end as expected, with their memory
/// intact, every CPU runs some of them (each CPU starts with its own share
/// of the run queues: the run starts only when every CPU has joined), and
/// the frames balance.
fn eight_guests_on(cpus: u32) {
    let guests = isolation_guests(8);
    let boot = boot_machine(&format!("guests={}", guests.join(",")), |machine| {
        machine.cpus = cpus
    });
    boot.expect_success();
    expect_every_cpu_up(&boot, cpus);
    expect_isolation_intact(&boot, 8);
    for (cpu, (turns, guests)) in cpu_accounts(&boot, cpus).into_iter().enumerate() {
        eprintln!("-smp {cpus}: cpu {cpu} ran {turns} turns of {guests} guests");
        if turns == 0 || guests == 0 {
            boot.fail(&format!("cpu {cpu} ran no guest"));
        }
    }
    boot.line_containing(&["frames:", "balanced"]);
}

#[test]
fn eight_guests_on_two_cpus_all_end_well() {
    eight_guests_on(2);
}

#[test]
fn eight_guests_on_four_cpus_all_end_well_and_every_cpu_runs_guests() {
    eight_guests_on(4);
}

/// With `sched=rotate` every turn of a guest after its first is on the
/// other CPU: each guest moves at every turn, and keeps its memory (the
/// `isolation` guests check all of it after each sleep), its FPU, SSE and
/// segment state (`fpu-plant` and `fpu-look` plant theirs, sleep, and look
/// again: they exit 3 only if it is still theirs), and its timers (`hello`
/// exits 0 only if no sleep ended early). The scheduler's counts say that
/// every turn but each guest's first was a migration.
#[test]
fn guests_moved_at_every_turn_keep_memory_fpu_state_and_timers() {
    const GUESTS: u64 = 5;
    let boot = boot_machine(
        "sched=rotate guests=isolation/a:killed,isolation/b:killed,trap/fpu-plant:3,trap/fpu-look:3,hello",
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    expect_isolation_intact(&boot, 2);
    for action in ["fpu-plant", "fpu-look"] {
        boot.line_containing(&[
            &format!("[trap/{action}]"),
            "clean state at start, our own state back after the sleep",
        ]);
    }
    boot.line_containing(&["guest hello exited code=0"]);
    let (turns, migrations) = scheduler_counts(&boot);
    eprintln!("sched=rotate: {turns} turns, {migrations} migrations");
    if migrations + GUESTS != turns || migrations < GUESTS {
        boot.fail(&format!(
            "{turns} turns of {GUESTS} guests should be {} migrations, not {migrations}",
            turns.saturating_sub(GUESTS)
        ));
    }
    for (cpu, (turns, _)) in cpu_accounts(&boot, 2).into_iter().enumerate() {
        if turns == 0 {
            boot.fail(&format!("cpu {cpu} ran no guest"));
        }
    }
    boot.line_containing(&["frames:", "balanced"]);
}

/// Two guests spin with their virtual interrupts off, one per CPU of two,
/// while two others sleep on their timers and take exceptions: each
/// spinner is ended by its budget on whichever CPU it is (the host's own
/// timer takes every CPU back), and the others end well. The budget is
/// every guest's, and CPU time is the emulator's wall time on the CPU (an
/// emulator thread the machine does not schedule still counts), so the
/// others are `hello`s, which need about 1% of it.
#[test]
fn spinning_guests_are_ended_by_their_budgets_while_the_others_run() {
    let boot = boot_machine(
        "guest_budget_ms=1000 guests=trap/spin:killed,trap/spin:killed,hello,hello/b",
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    let killed = boot
        .lines()
        .filter(|l| {
            l.starts_with("guest trap/spin killed:")
                && l.contains("time budget of 1000 ms")
                && l.contains("virtual interrupts off")
        })
        .count();
    if killed != 2 {
        boot.fail(&format!("{killed} spinners ended by their budget, not 2"));
    }
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["guest hello/b exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}
