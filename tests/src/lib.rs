//! The harness of the QEMU integration tests: boot the real kernel, read
//! what it prints, judge how it ends.
//!
//! These tests are the second of the three depths in `docs/DESIGN.md`
//! ("Tests, at three depths"): `host/`'s logic is unit-tested on Linux,
//! but only a real boot shows that the kernel's exception reports, exit
//! statuses and allocators work on an (emulated) machine. Each test calls
//! [`boot`] (or [`boot_machine`] for a machine of another shape), which
//! runs QEMU exactly as `cargo xtask run` does (the same
//! [`xtask::qemu::Machine`] and [`xtask::session::run`]),
//! under a time limit, and returns a [`Boot`] to question:
//!
//! ```no_run
//! let boot = qemu_tests::boot("test=fault-pf");
//! boot.expect_kernel_failure();
//! let report = boot.line_containing(&["EXCEPTION ", "#PF"]);
//! ```
//!
//! Every `expect_*` and `line_*` method that does not find what it wants
//! panics with the whole transcript (serial console, QEMU's messages, the
//! outcome), so a failing test shows everything the machine said.
//!
//! What to boot and how comes from the environment that `cargo xtask test`
//! sets ([`xtask::commands::test_env`]): the kernel ELF and the guest
//! archive, passed as `-initrd` to every boot (otherwise the harness builds
//! them once), the accelerator (otherwise chosen as
//! `--accel auto` would) and the firmware (otherwise the default). At most
//! [`MAX_PARALLEL_BOOTS`] machines run at once, however many test threads
//! libtest starts: TCG is CPU-bound, and the time limits assume a core each.
//!
//! A test that must act while the machine runs (fetch a page from the
//! host's network card, say) starts it with [`start_machine`] instead and
//! gets a [`Running`] machine: its serial console so far, a way to wait for
//! a line ([`Running::wait_for_line`]), and [`Running::finish`] for the
//! [`Boot`] at its end. [`with_nic`] gives a machine a virtio-net card on
//! QEMU's user network, with a free port of this machine's loopback
//! forwarded to the host's counters page, which [`http_get`] fetches:
//!
//! ```no_run
//! use std::time::Duration;
//! let mut machine = qemu_tests::start_machine("test=net", Duration::from_secs(120), qemu_tests::with_nic);
//! machine.wait_for_line(&["hostnet: address "], Duration::from_secs(60));
//! let answer = qemu_tests::http_get(machine.forwarded_port(), "/counters", Duration::from_secs(60));
//! let boot = machine.finish();
//! ```
//!
//! The GRUB boot paths (ISO, disk, PXE; BIOS and UEFI) boot through
//! [`boot_via`], from images that [`images`] makes with `cargo xtask
//! image`'s own code (once per test binary for the default ones). A PXE
//! boot gets a network namespace, a tap device and a dnsmasq of its own
//! ([`xtask::pxe::Lab`]), all removed when the boot ends, pass or fail.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use xtask::artefacts::{self, Profile};
use xtask::bootpath::{BootPath, Family};
use xtask::commands::{self, test_env};
use xtask::guests;
use xtask::image::Payload;
pub use xtask::qemu::NicModel;
use xtask::qemu::{self, Accel, AccelRequest, Firmware, Machine, UserNet};
use xtask::session::{self, Options, Session};
use xtask::workspace::Workspace;

pub use xtask::session::{Outcome, Record};

/// How long one boot may take before it counts as wedged. Measured under
/// TCG on a 2-core machine: the longest direct boots of the suite (two
/// `isolation` guests, the many guests of the containment boot) end in
/// under a second, QEMU's start included, and every direct-boot test
/// passed with two boots at once beside three processes that kept both
/// cores busy. 30 s is thirty times the slowest: the margin for a slower
/// or busier CI machine.
pub const TIME_LIMIT: Duration = Duration::from_secs(30);

/// How long a boot through GRUB may take. Measured under TCG on a 2-core
/// machine: PXE about 21 s (BIOS) and 23 s (UEFI) alone, mostly iPXE and
/// TFTP, and about 27 s each with two PXE boots at once beside two
/// processes that keep both cores busy; OVMF paths 3-5 s. 300 s is more
/// than ten times the loaded figure: a slower or busier CI machine must
/// not turn a working boot into a time-out (only a wedged boot waits this
/// long, and it fails either way).
pub const GRUB_TIME_LIMIT: Duration = Duration::from_secs(300);

/// How many QEMUs may run at the same time.
pub const MAX_PARALLEL_BOOTS: usize = 2;

/// Boots the kernel with `cmdline` on the default machine (1 CPU, 512 MiB)
/// and waits for it to end.
pub fn boot(cmdline: &str) -> Boot {
    boot_machine(cmdline, |_| {})
}

/// Boots the kernel with `cmdline` on a machine that `shape` adjusts (more
/// CPUs, other memory size, ...).
pub fn boot_machine(cmdline: &str, shape: impl FnOnce(&mut Machine)) -> Boot {
    start_machine(cmdline, TIME_LIMIT, shape).finish()
}

/// Starts the kernel with `cmdline` on a machine that `shape` adjusts, and
/// returns while it runs (after waiting for a boot slot, which it holds to
/// its end). It is killed when `time_limit` has passed since its start.
pub fn start_machine(
    cmdline: &str,
    time_limit: Duration,
    shape: impl FnOnce(&mut Machine),
) -> Running {
    let mut machine = Machine::new(kernel());
    machine.cmdline = cmdline.to_string();
    machine.initrd = Some(guests());
    machine.accel = accel();
    machine.firmware = firmware();
    shape(&mut machine);
    let command = machine
        .command()
        .unwrap_or_else(|e| panic!("cannot boot `{cmdline}`: {e}"));
    let slot = BOOT_SLOTS.take();
    let session = session::start(command, &Options::captured(time_limit))
        .unwrap_or_else(|e| panic!("cannot boot `{cmdline}`: {e}"));
    let nic = machine.nic.unwrap_or_default();
    Running {
        label: cmdline.to_string(),
        session: Some(session),
        forwarded_port: nic.forward.map(|f| f.from),
        guest_ports: nic.to_guests.iter().map(|g| g.from).collect(),
        _slot: slot,
    }
}

/// Gives `machine` a virtio-net card on QEMU's user network (whose DHCP
/// server hands out 10.0.2.15), with a free port of this machine's
/// loopback forwarded to the host's counters page (port 80): see
/// [`Running::forwarded_port`].
pub fn with_nic(machine: &mut Machine) {
    machine.nic = Some(UserNet::forwarding(free_loopback_port()));
}

/// [`with_nic`], and a free port of this machine's loopback forwarded to
/// `address:port` of QEMU's user network, where a guest on the host's
/// switch that takes that address answers: see
/// [`Running::guest_port`].
pub fn with_nic_and_guest(address: Ipv4Addr, port: u16) -> impl FnOnce(&mut Machine) {
    move |machine| {
        with_nic(machine);
        if let Some(nic) = machine.nic.as_mut() {
            nic.to_guests.push(xtask::qemu::GuestForward {
                from: free_loopback_port(),
                address,
                port,
            });
        }
    }
}

/// `shape` (such as [`with_nic`] or [`with_nic_and_guest`]), with the
/// host's card made a `model` (`NicModel::E1000`: an Intel 82540EM)
/// instead of virtio-net.
pub fn with_nic_model(
    model: NicModel,
    shape: impl FnOnce(&mut Machine),
) -> impl FnOnce(&mut Machine) {
    move |machine| {
        shape(machine);
        if let Some(nic) = machine.nic.as_mut() {
            nic.model = model;
        }
    }
}

/// A port of 127.0.0.1 that nothing listens on now: bound with port 0 (the
/// kernel picks a free one) and released at once, for QEMU to take.
pub fn free_loopback_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A machine (or a `cargo xtask` command) still running, started by
/// [`start_machine`] or [`start_cargo_xtask`]. Dropped unfinished (its test
/// panicked), it is killed and gives its boot slot back.
pub struct Running {
    /// The command line, or the command, for failure reports.
    label: String,
    /// `None` once ended.
    session: Option<Session>,
    forwarded_port: Option<u16>,
    /// The loopback ports forwarded to guests, in order.
    guest_ports: Vec<u16>,
    _slot: SlotGuard,
}

impl Running {
    /// What the serial console (a command's stdout) has printed so far.
    pub fn serial(&self) -> String {
        self.session().serial_so_far()
    }

    /// The loopback port forwarded to the first guest address (the
    /// machine must have been shaped [`with_nic_and_guest`]).
    pub fn guest_port(&self) -> u16 {
        self.guest_ports.first().copied().unwrap_or_else(|| {
            panic!(
                "`{}`: the machine has no port forwarded to a guest",
                self.label
            )
        })
    }

    /// The loopback port forwarded to the host's counters page (the
    /// machine must have been shaped [`with_nic`]).
    pub fn forwarded_port(&self) -> u16 {
        self.forwarded_port
            .unwrap_or_else(|| panic!("`{}`: the machine has no forwarded port", self.label))
    }

    /// Waits until a whole line holding every one of `needles` has been
    /// printed, and returns it. Fails the test, with the transcript, when
    /// `timeout` passes first or the machine ends without printing it.
    #[track_caller]
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> String {
        let give_up = Instant::now() + timeout;
        loop {
            let ended = self.session_mut().has_ended();
            if let Some(line) = line_with(&self.serial(), needles) {
                return line;
            }
            if ended {
                self.fail(&format!(
                    "it ended without a line holding all of {needles:?}"
                ));
            }
            if Instant::now() >= give_up {
                self.fail(&format!(
                    "no line holding all of {needles:?} within {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the machine's end (or its time limit) and returns the boot.
    pub fn finish(mut self) -> Boot {
        let record = self.take_session().wait();
        self.boot(record)
    }

    /// Ends the machine now (its outcome [`Outcome::Stopped`], unless it
    /// had ended by itself) and returns the boot.
    pub fn stop(mut self) -> Boot {
        let record = self.take_session().stop();
        self.boot(record)
    }

    /// Stops the machine and the test with `complaint` and the whole
    /// transcript.
    #[track_caller]
    pub fn fail(&mut self, complaint: &str) -> ! {
        let record = self.take_session().stop();
        self.boot(record).fail(complaint)
    }

    fn boot(&self, record: Record) -> Boot {
        Boot {
            cmdline: self.label.clone(),
            record,
            server_log: None,
        }
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("a running machine")
    }

    fn session_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("a running machine")
    }

    fn take_session(&mut self) -> Session {
        self.session.take().expect("a running machine")
    }
}

/// The first whole line (ended by a newline) of `text` that holds every
/// one of `needles`, without its line end.
fn line_with(text: &str, needles: &[&str]) -> Option<String> {
    text.split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| line.trim_end_matches(['\r', '\n']))
        .find(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(String::from)
}

/// One answer of an HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code (`200`).
    pub status: u16,
    /// The status line and the headers, as sent.
    pub head: String,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl HttpAnswer {
    /// Reads a whole answer; `None` when it is not HTTP.
    pub fn parse(bytes: &[u8]) -> Option<HttpAnswer> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        head.starts_with("HTTP/").then(|| HttpAnswer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    }

    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` as it is to `127.0.0.1:port` and reads everything that
/// comes back until the server closes (HTTP/1.0), each step bounded.
pub fn http_exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// `GET path` over HTTP/1.0 from `127.0.0.1:port`, tried again every
/// 300 ms while no HTTP answer comes (QEMU's user network accepts the
/// connection before the machine's side is up, then closes it), until
/// `limit` has passed: then the last error, in words.
pub fn http_get(port: u16, path: &str, limit: Duration) -> Result<HttpAnswer, String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: rguest\r\n\r\n");
    let give_up = Instant::now() + limit;
    loop {
        let error = match http_exchange(port, request.as_bytes()) {
            Ok(bytes) => match HttpAnswer::parse(&bytes) {
                Some(answer) => return Ok(answer),
                None => format!("not HTTP: {:?}", String::from_utf8_lossy(&bytes)),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= give_up {
            return Err(format!(
                "no answer to GET {path} on port {port} within {} s (last: {error})",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Boots `path` from the images in `images` (see [`images`]); `direct`
/// boots the kernel and the guest archive with `cargo xtask run`'s default
/// command line. PXE boots run in a network namespace of their own with
/// their own DHCP/TFTP server, gone again when this returns.
pub fn boot_via(path: BootPath, images: &Path) -> Boot {
    let label = format!("--boot {} from {}", path.name(), images.display());
    let mut machine = Machine::new(kernel());
    machine.cmdline = commands::DEFAULT_CMDLINE.to_string();
    machine.initrd = Some(guests());
    machine.accel = accel();
    machine.firmware = firmware();
    // The slot first: a PXE network waiting for a slot would hold a
    // namespace and a dnsmasq for nothing.
    let _slot = BOOT_SLOTS.take();
    let lab = path
        .attach(&mut machine, images)
        .unwrap_or_else(|e| panic!("cannot boot {label}: {e}"));
    let command = machine
        .command()
        .unwrap_or_else(|e| panic!("cannot boot {label}: {e}"));
    let record = session::run(command, &Options::captured(GRUB_TIME_LIMIT))
        .unwrap_or_else(|e| panic!("cannot boot {label}: {e}"));
    Boot {
        cmdline: label,
        record,
        server_log: lab.map(|lab| lab.server_log()),
    }
}

/// Runs `cargo xtask <args>` as a user would type it, output captured, in a
/// boot slot (it boots QEMU itself), stopped after `time_limit`. The
/// record's `serial` is the command's stdout, `qemu_messages` its stderr,
/// `exit_status` its status.
pub fn cargo_xtask(args: &[&str], time_limit: Duration) -> Record {
    let mut cargo = artefacts::cargo(&Workspace::current());
    cargo.arg("xtask").args(args);
    let _slot = BOOT_SLOTS.take();
    session::run(cargo, &Options::captured(time_limit))
        .unwrap_or_else(|e| panic!("cannot run cargo xtask {}: {e}", args.join(" ")))
}

/// Starts `cargo xtask <args>` as [`cargo_xtask`] does and returns while
/// it runs: its stdout is [`Running::serial`]; the [`Boot`] of
/// [`Running::finish`] holds its exit status in `record.exit_status`.
pub fn start_cargo_xtask(args: &[&str], time_limit: Duration) -> Running {
    let mut cargo = artefacts::cargo(&Workspace::current());
    cargo.arg("xtask").args(args);
    let label = format!("cargo xtask {}", args.join(" "));
    let slot = BOOT_SLOTS.take();
    let session = session::start(cargo, &Options::captured(time_limit))
        .unwrap_or_else(|e| panic!("cannot run {label}: {e}"));
    Running {
        label,
        session: Some(session),
        forwarded_port: None,
        guest_ports: Vec::new(),
        _slot: slot,
    }
}

/// The images of every GRUB boot path, made once per test binary from the
/// kernel, the guest archive and `cargo xtask run`'s default command line,
/// in `target/qemu-tests/images/`.
pub fn default_images() -> PathBuf {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES
        .get_or_init(|| images("images", &guests(), &BootPath::ALL))
        .clone()
}

/// Makes the images that `paths` boot, carrying the guest archive
/// `guest_archive`, in `target/qemu-tests/<name>/`, and returns that
/// directory. Each image is made once even when several paths share it.
pub fn images(name: &str, guest_archive: &Path, paths: &[BootPath]) -> PathBuf {
    let dir = test_dir().join(name);
    let payload = Payload {
        kernel: kernel(),
        guests: Some(guest_archive.to_path_buf()),
        cmdline: commands::DEFAULT_CMDLINE.to_string(),
    };
    let mut made: Vec<Family> = Vec::new();
    for path in paths {
        if !made.contains(&path.family()) {
            path.build(&payload, &dir).unwrap_or_else(|e| {
                panic!("cannot make the image for --boot {}: {e}", path.name())
            });
            made.push(path.family());
        }
    }
    dir
}

/// The guest archive cut short in the middle of a guest's image: what a
/// failed download or a short write leaves. Written once per test binary
/// to `target/qemu-tests/guests-truncated.tar`.
pub fn truncated_guests() -> PathBuf {
    static TRUNCATED: OnceLock<PathBuf> = OnceLock::new();
    TRUNCATED
        .get_or_init(|| {
            let whole = std::fs::read(guests()).expect("the guest archive is readable");
            // Half, and not on a 512-byte tar block boundary.
            let cut = &whole[..whole.len() / 2 + 100];
            let path = test_dir().join("guests-truncated.tar");
            std::fs::create_dir_all(test_dir()).expect("target/qemu-tests can be made");
            std::fs::write(&path, cut).expect("the truncated archive can be written");
            path
        })
        .clone()
}

/// `target/qemu-tests/`: what the tests make for themselves.
fn test_dir() -> PathBuf {
    Workspace::current().target_dir.join("qemu-tests")
}

/// One finished boot, and questions to ask it.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The kernel command line it was booted with.
    pub cmdline: String,
    /// What QEMU and the kernel did.
    pub record: Record,
    /// For a PXE boot, what the DHCP/TFTP server logged (shown when the
    /// test fails).
    pub server_log: Option<String>,
}

impl Boot {
    /// How the machine ended.
    pub fn outcome(&self) -> Outcome {
        self.record.outcome
    }

    /// Everything the kernel printed.
    pub fn serial(&self) -> &str {
        &self.record.serial
    }

    /// Stops the test with `complaint` and the whole transcript.
    #[track_caller]
    pub fn fail(&self, complaint: &str) -> ! {
        let server = match &self.server_log {
            Some(log) => format!("--- DHCP/TFTP server log:\n{log}--- end\n"),
            None => String::new(),
        };
        panic!(
            "boot with command line `{}`: {complaint}\n{}{server}",
            self.cmdline,
            self.record.transcript()
        )
    }

    /// Checks that the machine ended as `expected`.
    #[track_caller]
    pub fn expect_outcome(&self, expected: Outcome) -> &Self {
        if self.outcome() != expected {
            self.fail(&format!(
                "expected \"{expected}\", got \"{}\"",
                self.record.summary()
            ));
        }
        self
    }

    /// Checks that the kernel shut down cleanly (exit byte 0x10).
    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        self.expect_outcome(Outcome::Success)
    }

    /// Checks that the kernel reported a failure (exit byte 0x11): not a
    /// reset, not a time-out, not QEMU dying.
    #[track_caller]
    pub fn expect_kernel_failure(&self) -> &Self {
        self.expect_outcome(Outcome::KernelFailure)
    }

    /// Checks that the serial output contains `needle` somewhere.
    #[track_caller]
    pub fn expect_printed(&self, needle: &str) -> &Self {
        if !self.serial().contains(needle) {
            self.fail(&format!("expected the kernel to print `{needle}`"));
        }
        self
    }

    /// The first line that starts with `prefix` (leading blanks ignored).
    #[track_caller]
    pub fn line_starting(&self, prefix: &str) -> &str {
        self.lines()
            .find(|line| line.trim_start().starts_with(prefix))
            .unwrap_or_else(|| self.fail(&format!("no line starts with `{prefix}`")))
    }

    /// The first line that contains every one of `needles`.
    #[track_caller]
    pub fn line_containing(&self, needles: &[&str]) -> &str {
        self.lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
            .unwrap_or_else(|| self.fail(&format!("no line contains all of {needles:?}")))
    }

    /// The text from the first line starting with `prefix` to the end: a
    /// multi-line report such as an exception's.
    #[track_caller]
    pub fn report_starting(&self, prefix: &str) -> &str {
        let line = self.line_starting(prefix);
        let start = line.as_ptr() as usize - self.serial().as_ptr() as usize;
        &self.serial()[start..]
    }

    /// The serial output's lines, without the `\r` a serial console may add.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.serial()
            .lines()
            .map(|line| line.trim_end_matches('\r'))
    }
}

/// The first whole number in `text` after `marker`, e.g. the 511 of
/// `memory: 511 MiB usable` after `memory:`.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let tail = &text[text.find(marker)? + marker.len()..];
    let digits: String = tail
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The kernel ELF: the one `cargo xtask test` built, or one built now (once
/// per test binary) when the tests run on their own.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| match std::env::var_os(test_env::KERNEL) {
            Some(path) => PathBuf::from(path),
            None => artefacts::build_kernel(&Workspace::current(), Profile::Release)
                .unwrap_or_else(|e| panic!("cannot build the kernel: {e}")),
        })
        .clone()
}

/// The guest archive: the one `cargo xtask test` built, or one built now
/// (once per test binary) when the tests run on their own.
pub fn guests() -> PathBuf {
    static GUESTS: OnceLock<PathBuf> = OnceLock::new();
    GUESTS
        .get_or_init(|| match std::env::var_os(test_env::GUESTS) {
            Some(path) => PathBuf::from(path),
            None => guests::build(&Workspace::current(), Profile::Release)
                .unwrap_or_else(|e| panic!("cannot build the guests: {e}")),
        })
        .clone()
}

fn accel() -> Accel {
    match std::env::var(test_env::ACCEL).ok().as_deref() {
        Some("kvm") => Accel::Kvm,
        Some("tcg") => Accel::Tcg,
        _ => qemu::choose_accel(AccelRequest::Auto).accel,
    }
}

fn firmware() -> Firmware {
    std::env::var(test_env::FIRMWARE)
        .ok()
        .and_then(|name| name.parse().ok())
        .unwrap_or_default()
}

/// A counting semaphore: std has none, and two fields are all it takes.
struct Slots {
    in_use: Mutex<usize>,
    freed: Condvar,
}

static BOOT_SLOTS: Slots = Slots {
    in_use: Mutex::new(0),
    freed: Condvar::new(),
};

impl Slots {
    /// Waits for a free slot; it is given back when the guard drops.
    fn take(&'static self) -> SlotGuard {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use >= MAX_PARALLEL_BOOTS {
            in_use = self.freed.wait(in_use).unwrap_or_else(|e| e.into_inner());
        }
        *in_use += 1;
        SlotGuard(self)
    }
}

struct SlotGuard(&'static Slots);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.in_use.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_marker() {
        let line = "memory: 511 MiB usable in 6 map entries";
        assert_eq!(number_after(line, "memory:"), Some(511));
        assert_eq!(number_after(line, "in"), Some(6));
        assert_eq!(number_after(line, "MiB"), None);
        assert_eq!(number_after(line, "absent"), None);
    }

    #[test]
    fn only_whole_lines_are_waited_for() {
        let text = "booting\r\nhostnet: address 10.0.2.15/24 by DHCP\nhostnet: half";
        assert_eq!(
            line_with(text, &["hostnet:", "DHCP"]).as_deref(),
            Some("hostnet: address 10.0.2.15/24 by DHCP")
        );
        assert_eq!(line_with(text, &["half"]), None);
        assert_eq!(line_with(text, &["booting"]).as_deref(), Some("booting"));
    }

    #[test]
    fn http_answers_are_read() {
        let answer = HttpAnswer::parse(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}",
        )
        .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("Allow"), None);
        assert_eq!(answer.body, "{\"a\":1}");
        assert_eq!(HttpAnswer::parse(b""), None);
        assert_eq!(HttpAnswer::parse(b"garbage\r\n\r\n"), None);
    }

    #[test]
    fn a_free_port_can_be_bound_again() {
        let port = free_loopback_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }
}
