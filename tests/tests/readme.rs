//! The commands README.md shows, run as a user would type them.
//!
//! A documented command that silently breaks is worse than none: the first
//! thing a new user does is copy one. So every `cargo xtask ...` the README
//! shows (in a shell block or in running text) is listed in
//! [`README_COMMANDS`] with how it is checked: run exactly as written, run
//! in a quick form where the full one is long, or left out for a stated
//! reason (serving PXE on a real network, `dd` to a disk). The first test
//! fails when the README gains a command this file does not know.

use qemu_tests::{Record, cargo_xtask, free_loopback_port, http_get, kernel, start_cargo_xtask};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The commands share `target/` (the guest archive, `target/image/`), so
/// they run one at a time, as a user would type them.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a README command is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Run exactly as the README shows it, by the test named.
    AsWritten(&'static str),
    /// Run in this quicker form, by the test named.
    QuickForm(&'static str, &'static str),
    /// Not run here, for this reason.
    NotRun(&'static str),
}

/// Every `cargo xtask` command in README.md (as written there, without
/// `sudo` and trailing comments) and how it is checked.
const README_COMMANDS: &[(&str, Check)] = &[
    (
        "cargo xtask run",
        Check::AsWritten("run_boots_the_default_guest"),
    ),
    (
        "cargo xtask run -- guests=hello,bench/1000",
        Check::AsWritten("run_takes_kernel_words"),
    ),
    (
        "cargo xtask run -- guests=trap/cli:killed",
        Check::AsWritten("run_takes_kernel_words"),
    ),
    (
        "cargo xtask run -- log=debug",
        Check::AsWritten("run_takes_kernel_words"),
    ),
    (
        "cargo xtask run --smp 2 -- guests=bench/compute,bench/compute,hello",
        Check::AsWritten("run_shares_two_cpus"),
    ),
    (
        "cargo xtask run --smp 2 -- guests=smp/threads:0:vcpus=2",
        Check::AsWritten("run_a_guest_of_two_vcpus"),
    ),
    (
        "cargo xtask run --gdb",
        Check::AsWritten("run_gdb_stops_at_kernel_entry"),
    ),
    (
        "cargo xtask test",
        Check::NotRun("it is the command .ci/run runs"),
    ),
    (
        "cargo xtask test -- page_fault",
        Check::AsWritten("test_with_a_filter_runs_only_those_tests"),
    ),
    (
        "cargo xtask build",
        Check::AsWritten("build_names_its_artefacts"),
    ),
    (
        "cargo xtask help",
        Check::AsWritten("help_lists_every_command"),
    ),
    (
        "cargo xtask boot-times",
        Check::QuickForm(
            "cargo xtask boot-times --runs 1",
            "boot_times_measure_every_firmware",
        ),
    ),
    (
        "cargo xtask boot-times --boot all --runs 3",
        Check::QuickForm(
            "cargo xtask boot-times --boot direct,iso,disk-uefi --runs 1",
            "boot_times_measure_boot_paths",
        ),
    ),
    (
        "cargo xtask image",
        Check::AsWritten("image_writes_the_three_artefacts"),
    ),
    (
        "cargo xtask image -- <words>",
        Check::QuickForm(
            "cargo xtask image --qcow2 -- log=debug",
            "image_writes_the_three_artefacts",
        ),
    ),
    (
        "cargo xtask bench",
        Check::AsWritten("bench_reports_every_metric"),
    ),
    (
        "cargo xtask fuzz --seeds 1000",
        Check::QuickForm("cargo xtask fuzz --seeds 16", "fuzz_runs_clean_seeds"),
    ),
    (
        "cargo xtask fuzz --seeds N",
        Check::QuickForm("cargo xtask fuzz --seeds 16", "fuzz_runs_clean_seeds"),
    ),
    (
        "cargo xtask run -- guest_mem=32 guests=hello,threads-std,crates-std",
        Check::AsWritten("run_boots_std_guests"),
    ),
    (
        "cargo xtask run --app ../my-app input.txt",
        Check::QuickForm(
            "cargo xtask run --app /tmp/rguest-plain-app input.txt",
            "run_app_builds_a_plain_crate_and_a_hermit_app",
        ),
    ),
    (
        "cargo xtask run --app PATH [ARGS...] [-- <kernel words>]",
        Check::QuickForm(
            "cargo xtask run --app images/std/apps/args-std 0 -- log=debug",
            "run_app_builds_a_plain_crate_and_a_hermit_app",
        ),
    ),
    (
        "cargo xtask run --net user:8080 -- test=net",
        Check::QuickForm(
            "cargo xtask run --net user:PORT -- test=net",
            "run_net_serves_the_counters_page",
        ),
    ),
    (
        "cargo xtask run --net user -- guest_mem=64 guests=net-server-std,net-client-std,hello stats_interval_ms=200",
        Check::AsWritten("run_net_prints_the_counters_while_guests_run"),
    ),
    (
        "cargo xtask run --net user:8080,8081=10.0.2.20:7000 --timeout 60 -- guest_mem=64 'guests=\"net-server-std/RGUEST_IP=10.0.2.20/24 RGUEST_GATEWAY=10.0.2.2\"'",
        Check::NotRun(
            "it serves until --timeout ends it; hostnet.rs's \
             hostnet_a_guests_server_is_reached_from_outside boots that machine and fetches the page",
        ),
    ),
    (
        "cargo xtask pxe",
        Check::NotRun("it serves DHCP on a real network until stopped"),
    ),
    (
        "cargo xtask pxe --interface eth1 --range 10.33.0.10,10.33.0.50",
        Check::NotRun("it serves DHCP on a real network until stopped"),
    ),
    (
        "cargo xtask pxe --interface eth0 --proxy",
        Check::NotRun("it serves DHCP on a real network until stopped"),
    ),
];

/// How long one command may take. The slowest here, `bench` (14 boots)
/// and the nested `test`, take well under a minute on an idle 2-core
/// machine; the margin is for a loaded one.
const COMMAND_TIME_LIMIT: Duration = Duration::from_secs(600);

/// The `cargo xtask ...` commands README.md shows: the lines of its shell
/// blocks and its inline code spans, without `sudo` and comments; the bare
/// `cargo xtask` of running text names the tool, not a command.
fn commands_in_readme() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let mut found = Vec::new();
    let mut in_block = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let candidates: Vec<&str> = if in_block {
            vec![line.split('#').next().unwrap_or("")]
        } else {
            line.split('`').skip(1).step_by(2).collect()
        };
        for candidate in candidates {
            let words: Vec<&str> = candidate
                .split_whitespace()
                .skip_while(|w| *w == "sudo")
                .collect();
            if words.len() > 2 && words[..2] == ["cargo", "xtask"] {
                found.push(words.join(" "));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_readme_command_is_checked_here() {
    let known: Vec<&str> = README_COMMANDS.iter().map(|(c, _)| *c).collect();
    let unknown: Vec<String> = commands_in_readme()
        .into_iter()
        .filter(|c| !known.contains(&c.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md shows commands tests/tests/readme.rs does not check: {unknown:?}"
    );
    let shown = commands_in_readme();
    let stale: Vec<&str> = known
        .iter()
        .copied()
        .filter(|c| !shown.iter().any(|s| s == c))
        .collect();
    assert!(
        stale.is_empty(),
        "tests/tests/readme.rs lists commands README.md no longer shows: {stale:?}"
    );
}

/// Runs a README command line (`cargo xtask ...`, as one string).
fn run_command(line: &str) -> Record {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..2], ["cargo", "xtask"], "{line}");
    cargo_xtask(&words[2..], COMMAND_TIME_LIMIT)
}

/// Runs `line` and checks it exited 0; returns its stdout and stderr.
#[track_caller]
fn expect_success(line: &str) -> (String, String) {
    let record = run_command(line);
    if !record.exit_status.is_some_and(|s| s.success()) {
        panic!(
            "`{line}` did not succeed ({:?}):\n--- stdout\n{}\n--- stderr\n{}",
            record.exit_status, record.serial, record.qemu_messages
        );
    }
    (record.serial, record.qemu_messages)
}

/// The quick form of a README command, from the table.
fn quick_form(readme: &str) -> &'static str {
    match README_COMMANDS.iter().find(|(c, _)| *c == readme) {
        Some((_, Check::QuickForm(quick, _))) => quick,
        other => panic!("no quick form for `{readme}`: {other:?}"),
    }
}

#[test]
fn run_boots_the_default_guest() {
    let _turn = one_at_a_time();
    let (out, err) = expect_success("cargo xtask run");
    assert!(out.contains("guest hello exited code=0"), "{out}");
    assert!(err.contains("xtask: kernel shut down cleanly"), "{err}");
}

#[test]
fn run_takes_kernel_words() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success("cargo xtask run -- guests=hello,bench/1000");
    assert!(out.contains("guest hello exited code=0"), "{out}");
    assert!(out.contains("guest bench/1000 exited code=0"), "{out}");
    let (out, _) = expect_success("cargo xtask run -- guests=trap/cli:killed");
    assert!(out.contains("guest trap/cli killed:"), "{out}");
    let (out, _) = expect_success("cargo xtask run -- log=debug");
    assert!(out.contains("guest hello exited code=0"), "{out}");
    assert!(
        out.contains("DEBUG"),
        "log=debug printed no debug line:\n{out}"
    );
}

/// Two CPUs share three guests: each CPU says what it ran.
#[test]
fn run_shares_two_cpus() {
    let _turn = one_at_a_time();
    let (out, _) =
        expect_success("cargo xtask run --smp 2 -- guests=bench/compute,bench/compute,hello");
    assert!(out.contains("guest hello exited code=0"), "{out}");
    assert_eq!(
        out.matches("guest bench/compute exited code=0").count(),
        2,
        "{out}"
    );
    for cpu in ["cpu 0:", "cpu 1:"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(cpu) && l.contains(" turns,")),
            "no `{cpu}` line:\n{out}"
        );
    }
    assert!(out.contains("scheduler:"), "{out}");
}

#[test]
fn run_a_guest_of_two_vcpus() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success("cargo xtask run --smp 2 -- guests=smp/threads:0:vcpus=2");
    assert!(
        out.contains("smp threads: 2 vcpus, counter 4000 as expected, every vcpu ran"),
        "{out}"
    );
    assert!(out.contains("guest smp/threads exited code=0"), "{out}");
}

#[test]
fn run_boots_std_guests() {
    let _turn = one_at_a_time();
    let (out, _) =
        expect_success("cargo xtask run -- guest_mem=32 guests=hello,threads-std,crates-std");
    for guest in ["hello", "threads-std", "crates-std"] {
        assert!(
            out.contains(&format!("guest {guest} exited code=0")),
            "{out}"
        );
    }
}

/// `--app` on a plain std crate written for Linux (made here, in
/// `/tmp/rguest-plain-app`, outside any workspace, with a crates.io
/// dependency and a module) and on a Hermit application of
/// `images/std/apps`.
#[test]
fn run_app_builds_a_plain_crate_and_a_hermit_app() {
    let _turn = one_at_a_time();
    write_plain_app();
    let (out, err) = expect_success(quick_form("cargo xtask run --app ../my-app input.txt"));
    assert!(err.contains("built as guest `plain-app`"), "{err}");
    assert!(
        out.contains("[plain-app/input.txt] plain-app: args [\"app\", \"input.txt\"]"),
        "{out}"
    );
    assert!(out.contains("plain-app: 3 threads summed 6"), "{out}");
    assert!(
        out.contains("guest plain-app/input.txt exited code=0"),
        "{out}"
    );
    let (out, _) = expect_success(quick_form(
        "cargo xtask run --app PATH [ARGS...] [-- <kernel words>]",
    ));
    assert!(out.contains("guest args-std/0 exited code=0"), "{out}");
    assert!(
        out.contains("DEBUG"),
        "log=debug printed no debug line:\n{out}"
    );
}

/// The README's `--net user:8080` with a free port of this machine for
/// 8080 (which may be taken here): the page is fetched over it while the
/// machine runs, and `test=net` then ends cleanly.
#[test]
fn run_net_serves_the_counters_page() {
    let _turn = one_at_a_time();
    let port = free_loopback_port();
    let quick = quick_form("cargo xtask run --net user:8080 -- test=net")
        .replace("PORT", &port.to_string());
    let words: Vec<&str> = quick.split_whitespace().skip(2).collect();
    let mut run = start_cargo_xtask(&words, COMMAND_TIME_LIMIT);
    // The build comes first: the command's whole limit.
    run.wait_for_line(&["hostnet: address 10.0.2.15/24"], COMMAND_TIME_LIMIT);
    let counters =
        http_get(port, "/counters", Duration::from_secs(60)).unwrap_or_else(|e| run.fail(&e));
    let boot = run.finish();
    assert!(
        boot.record.exit_status.is_some_and(|s| s.success()),
        "`{quick}` did not succeed:\n{}",
        boot.record.transcript()
    );
    assert_eq!(counters.status, 200, "{}", counters.head);
    assert!(
        counters.body.contains("\"address\":\"10.0.2.15/24\""),
        "{}",
        counters.body
    );
    boot.line_containing(&["net: answered 1 HTTP requests", ": ok"]);
}

/// The README's console view of the counters: `stats` lines while the
/// guests run (the first is due 200 ms after the switch starts; the two
/// std guests' TCP and UDP exchange takes seconds), and a clean end.
#[test]
fn run_net_prints_the_counters_while_guests_run() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success(
        "cargo xtask run --net user -- guest_mem=64 guests=net-server-std,net-client-std,hello stats_interval_ms=200",
    );
    for guest in ["net-server-std", "net-client-std", "hello"] {
        assert!(
            out.contains(&format!("guest {guest} exited code=0")),
            "{out}"
        );
    }
    assert!(out.contains("nic: virtio-net at "), "{out}");
    assert!(out.contains("stats port uplink kind=uplink "), "{out}");
    assert!(out.contains("stats host mac=02:72:67:00:00:00 "), "{out}");
}

/// A plain std crate, as `cargo new` would make one for Linux: no
/// `hermit` anywhere.
fn write_plain_app() {
    let dir = std::path::Path::new("/tmp/rguest-plain-app");
    std::fs::create_dir_all(dir.join("src")).expect("the plain crate's directory can be made");
    let files = [
        (
            "Cargo.toml",
            "[package]\nname = \"plain-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nitoa = \"=1.0.15\"\n",
        ),
        (
            "src/main.rs",
            "mod report;\n\nfn main() {\n    \
             let args: Vec<String> = std::env::args().collect();\n    \
             report::say(&format!(\"plain-app: args {args:?}\"));\n    \
             let threads: Vec<_> = (0..3).map(|i| std::thread::spawn(move || i * 2)).collect();\n    \
             let sum: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();\n    \
             let mut text = itoa::Buffer::new();\n    \
             report::say(&format!(\"plain-app: 3 threads summed {}\", text.format(sum)));\n}\n",
        ),
        (
            "src/report.rs",
            "pub fn say(line: &str) {\n    println!(\"{line}\");\n}\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("the plain crate can be written");
    }
}

/// The README's gdb session, scripted: QEMU waits halted, gdb attaches,
/// stops at `kernel_entry`, and ends the machine.
#[test]
fn run_gdb_stops_at_kernel_entry() {
    let _turn = one_at_a_time();
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut xtask = {
        let mut cargo = xtask::artefacts::cargo(&xtask::workspace::Workspace::current());
        cargo
            .args(["xtask", "run", "--gdb"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that QEMU goes with it below.
            .process_group(0);
        cargo.spawn().expect("cargo xtask run --gdb starts")
    };
    let gdb = xtask::packages::ensure(xtask::packages::GDB).expect("gdb is installed");
    let mut script = Command::new(gdb);
    script.args(["-batch", "-nx"]);
    for command in [
        // QEMU may not listen yet: cargo is still checking the build.
        "set tcp auto-retry on",
        "set tcp connect-timeout 300",
        "target remote :1234",
        "hbreak kernel_entry",
        "continue",
        // In a release build the stop shows the first inlined callee
        // (`console::init`); the symbol of the pc is still kernel_entry.
        "info symbol $pc",
        "kill",
    ] {
        script.args(["-ex", command]);
    }
    script.arg(kernel());
    let record = xtask::session::run(
        script,
        &xtask::session::Options::captured(COMMAND_TIME_LIMIT),
    )
    .expect("gdb runs");
    // gdb's `kill` ended QEMU; if it never attached, end the group here.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", xtask.id())])
        .status();
    let _ = xtask.wait();
    assert!(
        record.serial.contains("Breakpoint 1,") && record.serial.contains("kernel_entry + "),
        "gdb did not stop at kernel_entry:\n{}\n{}",
        record.serial,
        record.qemu_messages
    );
}

#[test]
fn test_with_a_filter_runs_only_those_tests() {
    let _turn = one_at_a_time();
    let (out, err) = expect_success("cargo xtask test -- page_fault");
    assert!(out.contains("page_fault"), "{out}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("xtask: lints: clean; unit tests:"),
        "{err}"
    );
    assert!(last.contains(" 0 failed"), "{last}");
}

#[test]
fn build_names_its_artefacts() {
    let _turn = one_at_a_time();
    let (_, err) = expect_success("cargo xtask build");
    assert!(err.contains("xtask: kernel: "), "{err}");
    assert!(err.contains("guests.tar"), "{err}");
}

#[test]
fn help_lists_every_command() {
    let _turn = one_at_a_time();
    let (out, err) = expect_success("cargo xtask help");
    let text = out + &err;
    for command in [
        "build",
        "run",
        "test",
        "boot-times",
        "bench",
        "image",
        "pxe",
    ] {
        assert!(
            text.contains(&format!("\n  {command} ")),
            "{command}:\n{text}"
        );
    }
}

#[test]
fn boot_times_measure_every_firmware() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success(quick_form("cargo xtask boot-times"));
    for firmware in ["seabios", "qboot", "microvm"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(firmware))
            .unwrap_or_else(|| panic!("no {firmware} line:\n{out}"));
        assert!(!line.contains(" - "), "a time is missing: {line}");
    }
}

#[test]
fn boot_times_measure_boot_paths() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success(quick_form("cargo xtask boot-times --boot all --runs 3"));
    for path in ["direct", "iso", "disk-uefi"] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{path} "))),
            "no {path} line:\n{out}"
        );
    }
}

#[test]
fn image_writes_the_three_artefacts() {
    let _turn = one_at_a_time();
    let (_, err) = expect_success("cargo xtask image");
    for artefact in ["host.iso", "host.img", "pxe"] {
        assert!(err.contains(artefact), "{artefact}:\n{err}");
    }
    let (_, err) = expect_success(quick_form("cargo xtask image -- <words>"));
    assert!(err.contains("host.qcow2"), "{err}");
    assert!(err.contains("guests=hello log=debug"), "{err}");
}

#[test]
fn bench_reports_every_metric() {
    let _turn = one_at_a_time();
    let (out, err) = expect_success("cargo xtask bench");
    for metric in [
        "hypercall",
        "syscall",
        "pf_read",
        "ctxsw_hit",
        "fork_exit_wait",
        "std_thread_switch",
        "std_condvar_wake",
        "net_tcp_segment",
        "net_http_get",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{metric} "))),
            "no {metric} row:\n{out}"
        );
    }
    assert!(out.contains("network (guest to guest"), "{out}");
    assert!(err.contains("results.json"), "{err}");
}

#[test]
fn fuzz_runs_clean_seeds() {
    let _turn = one_at_a_time();
    let (out, _) = expect_success(quick_form("cargo xtask fuzz --seeds 1000"));
    assert!(out.contains("fuzz: every boot passed"), "{out}");
    assert!(out.contains("fuzz: steps executed: "), "{out}");
}
