//! The subcommands: `build`, `run`, `test`, `boot-times`, `image`, `pxe`.
//!
//! Each returns the process exit status for `main` to use: 0 only when
//! everything worked, so CI and scripts can trust it.

use crate::app;
use crate::artefacts;
use crate::artefacts::Profile;
use crate::bootpath::BootPath;
use crate::cli::{
    AppArgs, BootTimesArgs, Common, GuestsChoice, ImageArgs, PxeArgs, RunArgs, TestArgs,
};
use crate::guests::{self, StdGuests};
use crate::image::{self, Payload};
use crate::packages;
use crate::pxe;
use crate::qemu::{self, Accel, Firmware, Machine, UserNet};
use crate::session::{self, Options};
use crate::std_guests;
use crate::toolchain;
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The kernel command line `cargo xtask run` starts with; `cargo xtask run
/// -- ...` appends to it. It runs the `hello` guest; words of your own that
/// name `guests=` replace it, and `--no-guests` drops it.
pub const DEFAULT_CMDLINE: &str = "guests=hello";

/// The command-line key that names the guests to run.
const GUESTS_KEY: &str = "guests=";

/// Environment variables through which `cargo xtask test` tells the QEMU
/// tests what to boot and how (the tests work without them too).
pub mod test_env {
    /// Path of the kernel ELF to boot (so the tests do not build it again).
    pub const KERNEL: &str = "RGUEST_KERNEL";
    /// Path of the guest archive to pass as `-initrd`.
    pub const GUESTS: &str = "RGUEST_GUESTS";
    /// `kvm` or `tcg`: the accelerator already chosen (and explained).
    pub const ACCEL: &str = "RGUEST_ACCEL";
    /// `seabios`, `qboot` or `microvm`.
    pub const FIRMWARE: &str = "RGUEST_FIRMWARE";
}

/// `cargo xtask build`: every artefact, then where they are.
pub fn build(common: &Common) -> Result<u8> {
    let workspace = Workspace::current();
    let built = artefacts::build_all(&workspace, common.profile)?;
    eprintln!("xtask: kernel: {}", built.kernel.display());
    eprintln!("xtask: guests: {}", built.guests.display());
    Ok(0)
}

/// `cargo xtask run`: build, boot, and exit as the kernel did.
pub fn run(args: &RunArgs) -> Result<u8> {
    let kernel = kernel_to_boot(args.kernel.as_deref(), &args.common)?;
    let (initrd, default_guests) = match &args.app {
        Some(app) => {
            let (archive, word) = build_app(app, args.common.profile)?;
            (Some(archive), word)
        }
        None => (
            guests_for_run(&args.guests, &args.common, &args.kernel_words)?,
            DEFAULT_CMDLINE.to_string(),
        ),
    };
    let accel = announce_accel(&args.common);
    let mut machine = Machine::new(&kernel);
    machine.cmdline = cmdline_with_default(&default_guests, &args.kernel_words, initrd.is_some());
    machine.initrd = initrd;
    machine.cpus = args.cpus;
    machine.memory = args.memory.clone();
    machine.accel = accel;
    machine.firmware = args.common.firmware;
    machine.wait_for_gdb = args.gdb;
    machine.nic = args
        .net
        .clone()
        .map(|net| host_nic(net, &args.kernel_words))
        .transpose()?;
    // Kept alive while QEMU runs: a PXE boot's network and server.
    let lab = attach_boot_path(args.boot, &mut machine, args.common.profile)?;
    if args.gdb {
        eprintln!(
            "xtask: QEMU waits for gdb; attach with: gdb {} -ex 'target remote :{}'",
            kernel.display(),
            qemu::GDB_PORT
        );
    }
    let options = Options {
        time_limit: (!args.gdb).then_some(args.time_limit),
        echo: true,
        interactive: std::io::stdin().is_terminal(),
    };
    let record = session::run(machine.command()?, &options)?;
    eprintln!("xtask: {}", record.summary());
    if let Some(lab) = lab.filter(|_| !record.outcome.is_success()) {
        eprintln!("xtask: the DHCP/TFTP server's log:\n{}", lab.server_log());
    }
    Ok(record.outcome.exit_code())
}

/// `--net`'s card, its forwarded port (if any) leading to the counters
/// page where the kernel words put it (`http_port=`), checked free; says
/// where to look.
fn host_nic(mut net: UserNet, words: &[String]) -> Result<UserNet> {
    for guest in &net.to_guests {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", guest.from)) {
            return Err(Error::new(format!(
                "--net ...,{}={}:{}: 127.0.0.1:{} cannot be forwarded ({e}); pick another port",
                guest.from, guest.address, guest.port, guest.from
            )));
        }
        eprintln!(
            "xtask: 127.0.0.1:{} leads to {}:{}, a guest that takes that address (RGUEST_IP={}/24 RGUEST_GATEWAY=10.0.2.2 for a std guest)",
            guest.from, guest.address, guest.port, guest.address
        );
    }
    let Some(forward) = net.forward.as_mut() else {
        eprintln!("xtask: the host has a NIC on QEMU's user network (no port forwarded)");
        return Ok(net);
    };
    forward.to = http_port(words).unwrap_or(qemu::HTTP_PORT);
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", forward.from)) {
        return Err(Error::new(format!(
            "--net user:{}: 127.0.0.1:{} cannot be forwarded ({e}); pick another port",
            forward.from, forward.from
        )));
    }
    eprintln!(
        "xtask: the host's counters, once it has an address: http://127.0.0.1:{}/ and \
         http://127.0.0.1:{}/counters",
        forward.from, forward.from
    );
    Ok(net)
}

/// The port `http_port=` of the kernel words names, if it is a port (the
/// kernel refuses anything else, and says so).
fn http_port(words: &[String]) -> Option<u16> {
    words
        .iter()
        .rev()
        .find_map(|w| w.strip_prefix("http_port="))
        .and_then(|port| port.parse().ok())
}

/// For `--boot` other than `direct`: makes the artefact in `target/image/`
/// from what `machine` would boot directly, and points `machine` at it.
fn attach_boot_path(
    boot: BootPath,
    machine: &mut Machine,
    profile: Profile,
) -> Result<Option<pxe::Lab>> {
    if boot == BootPath::Direct {
        return Ok(None);
    }
    let payload = Payload {
        kernel: machine.kernel.clone(),
        guests: machine.initrd.clone(),
        cmdline: machine.cmdline.clone(),
    };
    let dir = image::image_dir(&Workspace::current());
    eprintln!(
        "xtask: making {} for --boot {} ({} build)",
        boot.artefact(&dir).unwrap_or_default().display(),
        boot.name(),
        profile.dir_name()
    );
    boot.build(&payload, &dir)?;
    boot.attach(machine, &dir)
}

/// `cargo xtask image`: the ISO, the disk image and the PXE tree, with
/// their sizes.
pub fn image(args: &ImageArgs) -> Result<u8> {
    let common = Common {
        profile: args.profile,
        ..Common::default()
    };
    let kernel = kernel_to_boot(args.kernel.as_deref(), &common)?;
    let guests = guests_to_pass(&args.guests, &common)?;
    let payload = Payload {
        cmdline: kernel_cmdline(&args.kernel_words, guests.is_some()),
        kernel,
        guests,
    };
    let dir = image::image_dir(&Workspace::current());
    let images = image::build_all(&payload, &dir, args.qcow2)?;
    eprintln!(
        "xtask: GRUB boots: multiboot2 /{} {}",
        image::KERNEL_PATH,
        payload.cmdline
    );
    let mut made = vec![&images.iso, &images.disk];
    made.extend(images.qcow2.as_ref());
    made.push(&images.pxe);
    for path in made {
        eprintln!("xtask: {} ({})", path.display(), size_of(path));
    }
    Ok(0)
}

/// A file's or directory tree's size for people: `25.3 MiB`, and for a
/// sparse file also what it takes on disk.
fn size_of(path: &Path) -> String {
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    let (len, blocks) = tree_size(path);
    if blocks * 512 + (1 << 20) < len {
        format!("{}, {} on disk", mib(len), mib(blocks * 512))
    } else {
        mib(len)
    }
}

/// Total length and 512-byte blocks of a file or of every file below a
/// directory.
fn tree_size(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    if !meta.is_dir() {
        return (meta.len(), meta.blocks());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| tree_size(&entry.path()))
        .fold((0, 0), |(l, b), (l2, b2)| (l + l2, b + b2))
}

/// `cargo xtask pxe`: dnsmasq in the foreground on the TFTP root. When the
/// root is the default one and does not exist yet, it is made first, as
/// `cargo xtask image` would.
pub fn pxe(args: &PxeArgs) -> Result<u8> {
    let default_root = image::image_dir(&Workspace::current()).join(image::PXE_DIR_NAME);
    let root = args.root.clone().unwrap_or(default_root);
    if args.root.is_none() && !root.is_dir() {
        eprintln!("xtask: no {} yet; making it", root.display());
        let common = Common::default();
        let guests = guests_to_pass(&GuestsChoice::Build, &common)?;
        let payload = Payload {
            kernel: kernel_to_boot(None, &common)?,
            cmdline: kernel_cmdline(&[], guests.is_some()),
            guests,
        };
        image::build_pxe(&payload, &root)?;
    }
    pxe::Server {
        interface: args.interface.clone(),
        root,
        addressing: args.addressing,
    }
    .serve()
}

/// The ELF given with `--kernel`, or the kernel freshly built.
fn kernel_to_boot(given: Option<&Path>, common: &Common) -> Result<PathBuf> {
    match given {
        Some(elf) => Ok(elf.to_path_buf()),
        None => artefacts::build_kernel(&Workspace::current(), common.profile),
    }
}

/// The guest archive `--guests`/`--no-guests` asked for, or the guests
/// freshly built.
fn guests_to_pass(choice: &GuestsChoice, common: &Common) -> Result<Option<PathBuf>> {
    match choice {
        GuestsChoice::Build => guests::build(&Workspace::current(), common.profile).map(Some),
        GuestsChoice::Given(archive) => Ok(Some(archive.clone())),
        GuestsChoice::None => Ok(None),
    }
}

/// `run --app`: builds the user's crate and an archive of the classic
/// guests and it; returns the archive and the `guests=` word that runs the
/// program with its arguments.
fn build_app(app: &AppArgs, profile: Profile) -> Result<(PathBuf, String)> {
    let workspace = Workspace::current();
    let built = app::build(&workspace, &app.path)?;
    let word = app_guests_word(&built.name, &app.args)?;
    let archive = guests::build_with_app(&workspace, profile, &built)?;
    eprintln!(
        "xtask: {} built as guest `{}`",
        app.path.display(),
        built.name
    );
    Ok((archive, word))
}

/// `guests="<name>/<args>"`: the host hands a guest the text after its
/// name as its command line, and the runtime splits it at spaces into the
/// program's environment (leading `KEY=VALUE` words) and arguments
/// (`images/std/hermit/src/args.rs`). The host's `guests=` grammar takes,
/// in double quotes, letters, digits, spaces and `-_./=+@%` in a guest's
/// argument (`host::config::GuestSpec`), at most 256 bytes of it; an
/// argument holding anything else (a space of its own, a comma, a colon, a
/// quote) cannot travel there and is refused here in one line.
pub fn app_guests_word(name: &str, args: &[String]) -> Result<String> {
    /// The longest guest command line (`guest_abi::boot::CMDLINE_MAX`).
    const CMDLINE_MAX: usize = 256;
    let allowed = |arg: &String| {
        !arg.is_empty()
            && arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=+@%".contains(&b))
    };
    if let Some(bad) = args.iter().find(|arg| !allowed(arg)) {
        return Err(Error::new(format!(
            "--app argument `{bad}`: a guest's arguments travel on the kernel command line, \
             which takes only letters, digits and `-_./=+@%` in each (words are split at spaces)"
        )));
    }
    if args.is_empty() {
        return Ok(format!("{GUESTS_KEY}{name}"));
    }
    let line = args.join(" ");
    if line.len() > CMDLINE_MAX {
        return Err(Error::new(format!(
            "--app arguments: {} bytes, more than the {CMDLINE_MAX} a guest's command line holds",
            line.len()
        )));
    }
    Ok(format!("{GUESTS_KEY}\"{name}/{line}\""))
}

/// For `run` without `--app`: the archive `--guests`/`--no-guests` asked
/// for, or the guests freshly built. The std guests are required only when
/// the command line names one; otherwise a missing nightly toolchain
/// leaves them out with a warning, and the default guest still runs.
fn guests_for_run(
    choice: &GuestsChoice,
    common: &Common,
    words: &[String],
) -> Result<Option<PathBuf>> {
    if *choice != GuestsChoice::Build {
        return guests_to_pass(choice, common);
    }
    let workspace = Workspace::current();
    let std_names = std_guests::app_names(&workspace);
    let wanted = if named_guests(words).any(|name| std_names.iter().any(|s| s == name)) {
        StdGuests::Required
    } else {
        StdGuests::IfToolchain
    };
    guests::build_with(&workspace, common.profile, wanted).map(Some)
}

/// The image names the `guests=` words of `words` name.
fn named_guests(words: &[String]) -> impl Iterator<Item = &str> {
    words
        .iter()
        .filter_map(|w| w.strip_prefix(GUESTS_KEY))
        .flat_map(|list| list.trim_matches('"').split(','))
        .map(|spec| spec.split(['/', ':']).next().unwrap_or_default())
}

/// The default command line with the user's words appended. The default
/// `guests=` goes when there are no guests, or when the user names their own
/// (the kernel would otherwise see two).
pub fn kernel_cmdline(words: &[String], with_guests: bool) -> String {
    cmdline_with_default(DEFAULT_CMDLINE, words, with_guests)
}

/// [`kernel_cmdline`] with another default `guests=` word.
fn cmdline_with_default(default_guests: &str, words: &[String], with_guests: bool) -> String {
    let own_guests = words.iter().any(|w| w.starts_with(GUESTS_KEY));
    let mut line = String::new();
    if with_guests && !own_guests {
        line.push_str(default_guests);
    }
    for word in words {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    line
}

/// Resolves `--accel` and says, in one line, what was chosen and why.
fn announce_accel(common: &Common) -> Accel {
    let choice = qemu::choose_accel(common.accel);
    eprintln!("xtask: {choice}");
    choice.accel
}

/// `cargo xtask test`: the lints, unit tests on Linux, the kernel, the QEMU
/// tests. Every stage runs even when an earlier one failed (a failing unit
/// test must not hide whether the QEMU tests pass), and the last line counts
/// them all; the status is 0 only when everything passed.
pub fn test(args: &TestArgs) -> Result<u8> {
    let workspace = Workspace::current();
    toolchain::ensure_complete(&workspace)?;

    eprintln!("xtask: 1/4 formatting and lints");
    let lints = lint(&workspace);

    eprintln!("xtask: 2/4 unit tests on Linux");
    let unit = cargo_test(
        &workspace,
        &["--workspace", "--exclude", "qemu-tests"],
        &[],
        &args.test_words,
    )?;

    // The std guests' runtime keeps its pure parts (argument parsing,
    // paths, the file tree) testable on Linux, in its own workspace.
    let unit = unit.plus(std_guests::unit_tests(&workspace, &args.test_words)?);

    eprintln!("xtask: 3/4 building the kernel and the guests");
    let built = artefacts::build_all(&workspace, args.common.profile)
        // Make sure QEMU is there before the tests start several boots at once.
        .and_then(|built| {
            let tools = [&packages::BOOT_PATHS[..], &packages::README_TOOLS].concat();
            packages::ensure_all(&tools).map(|()| built)
        })
        .map_err(|e| {
            Error::new(format!(
                "{e} (lints: {lints}; unit tests: {unit}; QEMU tests not run)"
            ))
        })?;

    eprintln!("xtask: 4/4 QEMU integration tests");
    let accel = announce_accel(&args.common);
    let kernel_path = built.kernel.to_string_lossy().into_owned();
    let guests_path = built.guests.to_string_lossy().into_owned();
    let env = [
        (test_env::KERNEL, kernel_path.as_str()),
        (test_env::GUESTS, guests_path.as_str()),
        (test_env::ACCEL, accel.name()),
        (test_env::FIRMWARE, args.common.firmware.name()),
    ];
    let mut words = args.test_words.clone();
    let as_root = packages::is_root();
    if as_root {
        // The tests that need root are `#[ignore]`d with that reason, so a
        // plain `cargo test` as another user skips them by itself.
        words.push("--include-ignored".into());
    }
    let qemu = cargo_test(&workspace, &["--package", "qemu-tests"], &env, &words)?;
    if qemu.ignored > 0 && !as_root {
        eprintln!(
            "xtask: skipped {} QEMU test(s) that need root (they make network namespaces \
             for PXE boots); run them with: sudo -E cargo xtask test",
            qemu.ignored
        );
    }

    eprintln!("xtask: lints: {lints}; unit tests: {unit}; QEMU tests: {qemu}");
    if lints.passed() && unit.all_passed() && qemu.all_passed() {
        Ok(0)
    } else {
        Ok(1)
    }
}

/// What the lint stage found: which of its checks failed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LintResults {
    /// The names of the checks that failed.
    pub failed: Vec<&'static str>,
}

impl LintResults {
    fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

impl std::fmt::Display for LintResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed() {
            f.write_str("clean")
        } else {
            write!(f, "FAILED ({})", self.failed.join(", "))
        }
    }
}

/// The packages built only for the bare-metal target (not default members,
/// so a plain `cargo clippy` on Linux never looks at them).
const BARE_METAL_PACKAGES: [&str; 4] = ["kernel", "guest-rt", "guests", "os"];

/// `cargo fmt --check` over the workspace, and clippy with `-D warnings`
/// over the Linux crates and over the bare-metal ones (where the kernel's
/// `unsafe` blocks are, and the rule that each carries a SAFETY comment).
fn lint(workspace: &Workspace) -> LintResults {
    let mut results = LintResults::default();
    let mut check = |name: &'static str, args: Vec<&str>| {
        let mut cargo = artefacts::cargo(workspace);
        cargo.args(&args);
        if artefacts::run_to_completion(&mut cargo, name).is_err() {
            eprintln!("xtask: {name} failed: cargo {}", args.join(" "));
            results.failed.push(name);
        }
    };
    check("rustfmt", vec!["fmt", "--all", "--check"]);
    check(
        "clippy (Linux crates)",
        vec!["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"],
    );
    let mut bare_metal = vec!["clippy", "--quiet", "--target", artefacts::KERNEL_TARGET];
    for package in BARE_METAL_PACKAGES {
        bare_metal.extend(["--package", package]);
    }
    bare_metal.extend(["--", "-D", "warnings"]);
    check("clippy (bare-metal crates)", bare_metal);
    lint_std_guests(workspace, &mut results);
    results
}

/// rustfmt and clippy over `images/std` (the runtime and the std
/// programs), with the nightly toolchain that builds them; clippy checks
/// them for the Hermit target, std built from source as for the build
/// (which then reuses what the check compiled of std's dependencies).
fn lint_std_guests(workspace: &Workspace, results: &mut LintResults) {
    if let Err(e) = std_guests::ensure_nightly() {
        eprintln!("xtask: cannot lint images/std: {e}");
        results.failed.push("rustfmt and clippy (std guests)");
        return;
    }
    let mut check = |name: &'static str, args: Vec<&str>| {
        let mut cargo = std_guests::nightly_cargo(workspace);
        cargo
            .current_dir(std_guests::std_workspace(workspace))
            .args(&args);
        if artefacts::run_to_completion(&mut cargo, name).is_err() {
            eprintln!(
                "xtask: {name} failed: cargo +nightly {} (in images/std)",
                args.join(" ")
            );
            results.failed.push(name);
        }
    };
    // Its own packages only: `--all` would also take in the path
    // dependencies outside it (guest-rt, guest-abi), the main workspace's.
    let apps = std_guests::app_names(workspace);
    let mut fmt = vec!["fmt", "--check", "--package", std_guests::RUNTIME_PACKAGE];
    for app in &apps {
        fmt.extend(["--package", app.as_str()]);
    }
    check("rustfmt (std guests)", fmt);
    let mut clippy = vec!["clippy", "--quiet", "--workspace"];
    clippy.extend(std_guests::BUILD_STD_ARGS);
    clippy.extend(["--", "-D", "warnings"]);
    check("clippy (std guests)", clippy);
}

/// Test counts summed over every `test result:` line of a `cargo test`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
    /// Tests skipped (`#[ignore]`d, e.g. because they need root).
    pub ignored: u32,
    /// Whether cargo itself succeeded (it fails on a build error too).
    pub cargo_succeeded: bool,
}

impl TestCounts {
    /// The counts of two `cargo test` runs together.
    pub fn plus(self, other: TestCounts) -> TestCounts {
        TestCounts {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
            ignored: self.ignored + other.ignored,
            cargo_succeeded: self.cargo_succeeded && other.cargo_succeeded,
        }
    }

    fn all_passed(self) -> bool {
        self.cargo_succeeded && self.failed == 0
    }

    /// Adds the counts of one libtest summary line such as
    /// `test result: ok. 7 passed; 0 failed; 1 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(tail) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in tail.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                match (n.parse::<u32>(), what) {
                    (Ok(n), "passed") => self.passed += n,
                    (Ok(n), "failed") => self.failed += n,
                    (Ok(n), "ignored") => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

impl std::fmt::Display for TestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.ignored > 0 {
            write!(f, ", {} skipped", self.ignored)?;
        }
        if !self.cargo_succeeded && self.failed == 0 {
            write!(f, " (cargo test failed)")?;
        }
        Ok(())
    }
}

/// Runs `cargo test <selection>`, showing its output as it comes and
/// counting the results.
fn cargo_test(
    workspace: &Workspace,
    selection: &[&str],
    env: &[(&str, &str)],
    test_words: &[String],
) -> Result<TestCounts> {
    run_cargo_test(artefacts::cargo(workspace), selection, env, test_words)
}

/// Runs `cargo` (a command of some toolchain) as `cargo test
/// <selection>`, showing its output as it comes and counting the results.
pub fn run_cargo_test(
    mut cargo: std::process::Command,
    selection: &[&str],
    env: &[(&str, &str)],
    test_words: &[String],
) -> Result<TestCounts> {
    // Every test binary runs even when one fails: a failure must not hide
    // how the others fare.
    cargo
        .args(["test", "--no-fail-fast"])
        .args(selection)
        .envs(env.iter().copied());
    if !test_words.is_empty() {
        cargo.arg("--").args(test_words);
    }
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start cargo test: {e}")))?;
    let mut counts = TestCounts::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        counts.add_line(&line);
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    let status = child
        .wait()
        .map_err(|e| Error::new(format!("cargo test: {e}")))?;
    counts.cargo_succeeded = status.success();
    Ok(counts)
}

/// `cargo xtask boot-times`: for every firmware, boot the kernel `runs`
/// times and print the median time from QEMU's start to the first serial
/// byte, to the banner, and to QEMU's exit.
pub fn boot_times(args: &BootTimesArgs) -> Result<u8> {
    let kernel = kernel_to_boot(args.kernel.as_deref(), &args.common)?;
    let accel = announce_accel(&args.common);
    if !args.boot.is_empty() {
        return boot_path_times(args, &kernel, accel);
    }
    // The same boot as `cargo xtask run`: the default guest runs, so "exit"
    // includes it.
    let guests = guests::build(&Workspace::current(), args.common.profile)?;
    println!(
        "firmware   first byte   banner   exit   (median of {} boots)",
        args.runs
    );
    for firmware in Firmware::ALL {
        let mut machine = Machine::new(&kernel);
        machine.cmdline = DEFAULT_CMDLINE.to_string();
        machine.initrd = Some(guests.clone());
        machine.accel = accel;
        machine.firmware = firmware;
        let times = measure(&machine, args.runs)?;
        println!(
            "{:<10} {:>10}   {:>6}   {:>4}",
            firmware.name(),
            millis(median(&times.first_byte)),
            millis(median(&times.banner)),
            millis(median(&times.exit)),
        );
    }
    Ok(0)
}

/// `cargo xtask boot-times --boot ...`: for every boot path asked for, make
/// its artefact (as `run --boot` does) and boot it `runs` times; print the
/// median time from QEMU's start to the banner and to QEMU's exit, and the
/// artefact's size.
fn boot_path_times(args: &BootTimesArgs, kernel: &Path, accel: Accel) -> Result<u8> {
    let workspace = Workspace::current();
    let guests = guests::build(&workspace, args.common.profile)?;
    let payload = Payload {
        kernel: kernel.to_path_buf(),
        cmdline: DEFAULT_CMDLINE.to_string(),
        guests: Some(guests),
    };
    let dir = image::image_dir(&workspace);
    println!(
        "boot path    banner      exit   artefact   (median of {} boots)",
        args.runs
    );
    for &path in &args.boot {
        path.build(&payload, &dir)?;
        let mut machine = Machine::new(kernel);
        machine.cmdline = payload.cmdline.clone();
        machine.initrd = payload.guests.clone();
        machine.accel = accel;
        let (mut banner, mut exit) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let mut booted = machine.clone();
            let _lab = path.attach(&mut booted, &dir)?;
            let record = session::run(
                booted.command()?,
                &Options::captured(Duration::from_secs(180)),
            )?;
            if !record.outcome.is_success() {
                return Err(Error::new(format!(
                    "--boot {} did not succeed:\n{}",
                    path.name(),
                    record.transcript()
                )));
            }
            banner.extend(record.time_to(BANNER_PROTOCOL));
            exit.push(record.elapsed);
        }
        let size = path.artefact(&dir).map_or("-".into(), |a| size_of(&a));
        println!(
            "{:<10} {:>8} {:>9}   {size}",
            path.name(),
            millis(median(&banner)),
            millis(median(&exit)),
        );
    }
    Ok(0)
}

/// The part of the banner that every boot path prints (GRUB and firmware
/// print before it, and GRUB's menu names `rguest` too).
const BANNER_PROTOCOL: &str = "booted via ";

/// The banner's first word, from which `boot-times` measures "booted".
pub const BANNER_PREFIX: &str = "rguest ";

#[derive(Default)]
struct BootTimes {
    first_byte: Vec<Duration>,
    banner: Vec<Duration>,
    exit: Vec<Duration>,
}

fn measure(machine: &Machine, runs: u32) -> Result<BootTimes> {
    let mut times = BootTimes::default();
    for _ in 0..runs {
        let record = session::run(
            machine.command()?,
            &Options::captured(Duration::from_secs(60)),
        )?;
        if !record.outcome.is_success() {
            return Err(Error::new(format!(
                "{} boot did not succeed:\n{}",
                machine.firmware.name(),
                record.transcript()
            )));
        }
        times.first_byte.extend(record.first_output());
        times.banner.extend(record.time_to(BANNER_PREFIX));
        times.exit.push(record.elapsed);
    }
    Ok(times)
}

fn median(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_are_counted() {
        let mut counts = TestCounts::default();
        counts.add_line("test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        counts.add_line(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        counts.add_line("running 3 tests");
        assert_eq!((counts.passed, counts.failed, counts.ignored), (9, 1, 1));
        counts.cargo_succeeded = true;
        assert!(!counts.all_passed());
    }

    #[test]
    fn user_words_follow_the_default_command_line() {
        let words = ["log=debug".to_string(), "test=panic".to_string()];
        let line = kernel_cmdline(&words, true);
        assert_eq!(line, "guests=hello log=debug test=panic");
        assert_eq!(kernel_cmdline(&words, false), "log=debug test=panic");
        assert_eq!(kernel_cmdline(&[], true), "guests=hello");
    }

    #[test]
    fn an_apps_arguments_follow_its_name_in_quotes() {
        let args = [
            "LANG=C".to_string(),
            "x-y_z.2".to_string(),
            "/tmp/a".to_string(),
        ];
        assert_eq!(
            app_guests_word("wc", &args).unwrap(),
            "guests=\"wc/LANG=C x-y_z.2 /tmp/a\""
        );
        assert_eq!(app_guests_word("wc", &[]).unwrap(), "guests=wc");
        for bad in ["a b", "", "a,b", "a:b", "a\"b", "é"] {
            let error = app_guests_word("wc", &[bad.to_string()]).unwrap_err();
            assert!(!error.0.contains('\n'), "{error}");
        }
        let long = vec!["x".repeat(100); 3];
        assert!(app_guests_word("wc", &long).is_err());
    }

    #[test]
    fn the_std_guests_a_command_line_names_are_found() {
        let words = [
            "log=debug".to_string(),
            "guests=hello,threads-std:0,args-std/a/b".to_string(),
        ];
        let names: Vec<&str> = named_guests(&words).collect();
        assert_eq!(names, ["hello", "threads-std", "args-std"]);
        let line = cmdline_with_default("guests=wc/x", &["log=debug".to_string()], true);
        assert_eq!(line, "guests=wc/x log=debug");
    }

    #[test]
    fn the_forwarded_port_follows_http_port() {
        let words =
            |line: &str| -> Vec<String> { line.split_whitespace().map(String::from).collect() };
        assert_eq!(http_port(&words("test=net")), None);
        assert_eq!(http_port(&words("http_port=8000 test=net")), Some(8000));
        assert_eq!(http_port(&words("http_port=1 http_port=2")), Some(2));
        assert_eq!(http_port(&words("http_port=x")), None);
        let net = host_nic(UserNet::default(), &words("http_port=8000")).unwrap();
        assert_eq!(net, UserNet::default());
        // A port nothing listens on: bound and released here.
        let free = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let net = host_nic(UserNet::forwarding(free), &words("http_port=8000")).unwrap();
        assert_eq!(net.forward.map(|f| (f.from, f.to)), Some((free, 8000)));
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = host_nic(UserNet::forwarding(port), &[]).unwrap_err();
        assert!(error.0.contains("pick another port"), "{error}");
    }

    #[test]
    fn guests_of_your_own_replace_the_default() {
        let words = ["guests=trap/cli:killed".to_string()];
        assert_eq!(kernel_cmdline(&words, true), "guests=trap/cli:killed");
    }
}
