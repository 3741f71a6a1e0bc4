//! Running QEMU under a time limit and judging how the machine ended.
//!
//! The kernel has two ways to say how things went, and this module reads
//! both: what it prints on the serial console (QEMU's stdout, captured here
//! with the time each piece arrived), and the byte it writes to the
//! `isa-debug-exit` port, which becomes QEMU's exit status
//! (`(byte << 1) | 1`):
//!
//! | QEMU status | meaning |
//! | --- | --- |
//! | 33 (`0x10`) | the kernel shut down cleanly |
//! | 35 (`0x11`) | the kernel reported a failure (exception, panic, bad command line) |
//! | other odd | the kernel wrote some other byte to the port |
//! | 0 | the machine reset with `-no-reboot`: a triple fault, most likely |
//! | 1 | QEMU itself failed (bad option, unloadable ELF) |
//! | a signal, or our time limit | QEMU died or wedged |
//!
//! Only the first is success: a script can trust a zero exit status from
//! `cargo xtask run`.
//!
//! Every run has a time limit (except under gdb, where a person holds the
//! machine on purpose). When it passes we kill QEMU: a wedged QEMU (an
//! emulation failure under a software KVM leaves it hanging) must never
//! hang a test or a CI job.

use crate::{Error, Result};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The exit-port byte of a clean shutdown.
pub const EXIT_SUCCESS_BYTE: u8 = 0x10;
/// The exit-port byte of a failure the kernel noticed itself.
pub const EXIT_FAILURE_BYTE: u8 = 0x11;

/// How to run QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Kill QEMU when this much time has passed; `None` only for gdb.
    pub time_limit: Option<Duration>,
    /// Copy the serial console and QEMU's messages to our stdout/stderr as
    /// they arrive (for `cargo xtask run`); they are captured either way.
    pub echo: bool,
    /// Let QEMU read our terminal (keyboard to the serial port, Ctrl-C to
    /// QEMU). Otherwise QEMU gets no input and runs in a process group of
    /// its own, so that killing the group leaves nothing behind.
    pub interactive: bool,
}

impl Options {
    /// Captured, not echoed, no input, killed after `time_limit`: how tests
    /// run the machine.
    pub fn captured(time_limit: Duration) -> Self {
        Self {
            time_limit: Some(time_limit),
            echo: false,
            interactive: false,
        }
    }
}

/// How the machine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel wrote [`EXIT_SUCCESS_BYTE`]: a clean shutdown.
    Success,
    /// The kernel wrote [`EXIT_FAILURE_BYTE`]: it noticed something wrong.
    KernelFailure,
    /// The kernel wrote some other byte to the exit port.
    OtherExitByte(u8),
    /// QEMU exited with status 0: with `-no-reboot` that is a machine reset
    /// (a triple fault, most likely).
    Reset,
    /// QEMU exited with a status no kernel can cause (its own error).
    QemuError(i32),
    /// QEMU was killed by this signal (not by us).
    Signal(i32),
    /// Our time limit passed and we killed QEMU.
    TimedOut(Duration),
    /// Its caller was done with the machine and killed QEMU
    /// ([`Session::stop`]).
    Stopped,
}

impl Outcome {
    /// Reads QEMU's exit status.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(0), _) => Self::Reset,
            (Some(code), _) if code & 1 == 1 && (3..=511).contains(&code) => {
                match (code >> 1) as u8 {
                    EXIT_SUCCESS_BYTE => Self::Success,
                    EXIT_FAILURE_BYTE => Self::KernelFailure,
                    byte => Self::OtherExitByte(byte),
                }
            }
            (Some(code), _) => Self::QemuError(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::QemuError(-1),
        }
    }

    /// Whether the kernel shut down cleanly.
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// The status `cargo xtask run` exits with: 0 only for success, and
    /// distinct non-zero values a script could tell apart.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::KernelFailure => 1,
            Self::OtherExitByte(_) => 2,
            Self::Reset => 3,
            Self::QemuError(_) | Self::Signal(_) => 4,
            Self::TimedOut(_) => 5,
            Self::Stopped => 6,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Success => write!(f, "kernel shut down cleanly"),
            Self::KernelFailure => write!(f, "kernel reported failure"),
            Self::OtherExitByte(b) => {
                write!(f, "kernel wrote unknown exit byte {b:#04x} to port 0xf4")
            }
            Self::Reset => write!(
                f,
                "machine reset (triple fault?): QEMU exited 0 without the kernel's exit byte"
            ),
            Self::QemuError(code) => write!(f, "QEMU failed with status {code}"),
            Self::Signal(signal) => write!(f, "QEMU was killed by signal {signal}"),
            Self::TimedOut(limit) => write!(f, "timed out after {} s", limit.as_secs_f32()),
            Self::Stopped => write!(f, "stopped by its caller while running"),
        }
    }
}

/// Everything one QEMU run produced.
#[derive(Debug, Clone)]
pub struct Record {
    /// How the machine ended.
    pub outcome: Outcome,
    /// Everything the kernel printed on the serial console (lossy UTF-8).
    pub serial: String,
    /// What QEMU itself printed on stderr.
    pub qemu_messages: String,
    /// From starting QEMU to its end.
    pub elapsed: Duration,
    /// The process's own exit status (`None` if it was stopped at its time
    /// limit): for a program other than QEMU, such as `cargo xtask` itself.
    pub exit_status: Option<ExitStatus>,
    /// When each piece of serial output had arrived: (time since QEMU
    /// started, length of the output so far).
    arrivals: Vec<(Duration, usize)>,
}

impl Record {
    /// Time from starting QEMU to the first serial byte.
    pub fn first_output(&self) -> Option<Duration> {
        self.arrivals.first().map(|&(at, _)| at)
    }

    /// Time from starting QEMU until `needle` had been printed completely.
    pub fn time_to(&self, needle: &str) -> Option<Duration> {
        let end = self.serial.find(needle)? + needle.len();
        self.arrivals
            .iter()
            .find(|&&(_, len)| len >= end)
            .map(|&(at, _)| at)
    }

    /// One line: the outcome, plus QEMU's last complaint when QEMU failed.
    pub fn summary(&self) -> String {
        let last_message = self
            .qemu_messages
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty());
        match (self.outcome, last_message) {
            (Outcome::QemuError(_) | Outcome::Signal(_), Some(message)) => {
                format!("{}: {message}", self.outcome)
            }
            _ => self.outcome.to_string(),
        }
    }

    /// Everything the machine and QEMU printed, framed for a failure report.
    pub fn transcript(&self) -> String {
        let mut text = format!(
            "--- outcome: {} (after {:.2} s)\n--- serial console:\n{}",
            self.summary(),
            self.elapsed.as_secs_f32(),
            self.serial
        );
        if !self.serial.ends_with('\n') {
            text.push('\n');
        }
        if !self.qemu_messages.is_empty() {
            text += "--- QEMU stderr:\n";
            text += &self.qemu_messages;
        }
        text + "--- end\n"
    }
}

/// Runs `command` (a QEMU built by [`crate::qemu::Machine::command`]) to its
/// end or to the time limit.
pub fn run(command: Command, options: &Options) -> Result<Record> {
    Ok(start(command, options)?.wait())
}

/// Starts `command` and returns at once: the caller may read the serial
/// console while the machine runs (to talk to it over a forwarded port, say),
/// then [`Session::wait`] for its end or [`Session::stop`] it. The time limit
/// counts from here; a session dropped unfinished kills its process group.
pub fn start(mut command: Command, options: &Options) -> Result<Session> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if options.interactive {
        command.stdin(Stdio::inherit());
    } else {
        command.stdin(Stdio::null()).process_group(0);
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| Error::new(format!("cannot start {:?}: {e}", command.get_program())))?;
    let serial = Capture::start(child.stdout.take(), started, options.echo, Echo::Stdout);
    let messages = Capture::start(child.stderr.take(), started, options.echo, Echo::Stderr);
    Ok(Session {
        child: Some(child),
        started,
        options: options.clone(),
        serial: Some(serial),
        messages: Some(messages),
    })
}

/// A QEMU (or any command) running under [`start`].
pub struct Session {
    /// `None` once waited for.
    child: Option<Child>,
    started: Instant,
    options: Options,
    serial: Option<Capture>,
    messages: Option<Capture>,
}

impl Session {
    /// What the serial console has printed so far (lossy UTF-8).
    pub fn serial_so_far(&self) -> String {
        self.serial.as_ref().map(Capture::text).unwrap_or_default()
    }

    /// Whether the process has ended (by itself, or killed).
    pub fn has_ended(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    /// When the time limit passes, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.options.time_limit.map(|limit| self.started + limit)
    }

    /// Waits for the end, or for the time limit (then kills it).
    pub fn wait(mut self) -> Record {
        let deadline = self.deadline();
        self.end(deadline, |options| {
            Outcome::TimedOut(options.time_limit.unwrap_or_default())
        })
    }

    /// Kills it now, unless it has ended already: for a caller done with a
    /// machine that would run on (a server waiting for clients). The
    /// outcome is [`Outcome::Stopped`], or how it ended if it had.
    pub fn stop(mut self) -> Record {
        self.end(Some(Instant::now()), |_| Outcome::Stopped)
    }

    /// Waits until `deadline`, kills what is still running then (calling
    /// that `killed`), and gathers the record.
    fn end(
        &mut self,
        deadline: Option<Instant>,
        killed: impl FnOnce(&Options) -> Outcome,
    ) -> Record {
        let mut child = self.child.take().expect("a session ends once");
        let exit_status = wait_until(&mut child, deadline);
        let outcome = match exit_status {
            Some(status) => Outcome::from_status(status),
            None => {
                stop(&mut child, self.options.interactive);
                killed(&self.options)
            }
        };
        let elapsed = self.started.elapsed();
        let (serial, arrivals) = self.serial.take().map(Capture::finish).unwrap_or_default();
        let (qemu_messages, _) = self
            .messages
            .take()
            .map(Capture::finish)
            .unwrap_or_default();
        Record {
            outcome,
            serial,
            qemu_messages,
            elapsed,
            exit_status,
            arrivals,
        }
    }
}

impl Drop for Session {
    /// A session left unfinished (its caller panicked) takes its process
    /// with it: no QEMU outlives its test.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && matches!(child.try_wait(), Ok(None))
        {
            stop(&mut child, self.options.interactive);
        }
    }
}

/// Waits for `child` to exit, until `deadline` if there is one.
/// `None` means the deadline passed first.
fn wait_until(child: &mut Child, deadline: Option<Instant>) -> Option<ExitStatus> {
    let Some(deadline) = deadline else {
        return child.wait().ok();
    };
    // Polling every few milliseconds: std has no wait-with-timeout, and a
    // few milliseconds are nothing beside a boot.
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ends a QEMU that ran past its limit.
///
/// A non-interactive QEMU leads its own process group: SIGKILL the group,
/// so that any helper it started goes too. An interactive one shares our
/// terminal and has set it to raw mode: SIGTERM first so that QEMU puts the
/// terminal back, and SIGKILL only if it does not go within two seconds.
fn stop(child: &mut Child, interactive: bool) {
    let pid = child.id() as libc::pid_t;
    if interactive {
        signal(pid, libc::SIGTERM);
        if wait_until(child, Some(Instant::now() + Duration::from_secs(2))).is_some() {
            return;
        }
        signal(pid, libc::SIGKILL);
    } else {
        signal(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// kill(2): a negative `pid` names a process group.
fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own
    // child (or the group it leads), which has not been reaped yet, so the
    // id cannot have been reused by another process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Where captured output is also copied to.
#[derive(Clone, Copy)]
enum Echo {
    Stdout,
    Stderr,
}

/// How long [`Capture::finish`] waits, after QEMU's end, for its reader
/// thread to reach the end of the pipe. When QEMU is gone the pipe closes at
/// once, and the thread has only to read what is left and be scheduled: a
/// millisecond on an idle machine. The wait is cut short by the end of the
/// pipe, so only a stray process holding it open costs the whole grace. It
/// is wide because a thread not yet scheduled when it runs out loses the
/// end of the transcript (the kernel's last lines, what the tests read),
/// and how long a ready thread waits for a core on a loaded 2-core machine
/// running two QEMUs is not ours to bound: 10 s is ten thousand times the
/// idle figure.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// A thread that reads one of QEMU's output pipes to its end.
struct Capture {
    shared: Arc<Mutex<Captured>>,
    done: mpsc::Receiver<()>,
}

/// What a [`Capture`] has read so far.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    /// (time since QEMU started, `bytes.len()` then), one per read.
    arrivals: Vec<(Duration, usize)>,
}

impl Capture {
    fn start(
        pipe: Option<impl Read + Send + 'static>,
        started: Instant,
        echo: bool,
        to: Echo,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Captured::default()));
        let (done_tx, done) = mpsc::channel();
        let writer = Arc::clone(&shared);
        std::thread::spawn(move || {
            if let Some(mut pipe) = pipe {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                    let piece = &buffer[..n];
                    let mut captured = writer.lock().unwrap();
                    captured.bytes.extend_from_slice(piece);
                    let len = captured.bytes.len();
                    captured.arrivals.push((started.elapsed(), len));
                    drop(captured);
                    if echo {
                        copy_out(piece, to);
                    }
                }
            }
            let _ = done_tx.send(());
        });
        Self { shared, done }
    }

    /// The text read so far.
    fn text(&self) -> String {
        let captured = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&captured.bytes).into_owned()
    }

    /// The text read, once the pipe has closed. Waits at most
    /// [`PIPE_GRACE`] after QEMU's end: a stray process holding the pipe
    /// open must not hang us.
    fn finish(self) -> (String, Vec<(Duration, usize)>) {
        let _ = self.done.recv_timeout(PIPE_GRACE);
        let captured = self.shared.lock().unwrap();
        let text = String::from_utf8_lossy(&captured.bytes).into_owned();
        (text, captured.arrivals.clone())
    }
}

fn copy_out(piece: &[u8], to: Echo) {
    // Best effort: a closed terminal must not stop the capture.
    let _ = match to {
        Echo::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(piece).and_then(|()| out.flush())
        }
        Echo::Stderr => std::io::stderr().lock().write_all(piece),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_statuses_are_read_as_the_kernel_meant_them() {
        assert_eq!(Outcome::from_status(status(33)), Outcome::Success);
        assert_eq!(Outcome::from_status(status(35)), Outcome::KernelFailure);
        assert_eq!(Outcome::from_status(status(0)), Outcome::Reset);
        assert_eq!(Outcome::from_status(status(1)), Outcome::QemuError(1));
        assert_eq!(Outcome::from_status(status(2)), Outcome::QemuError(2));
        assert_eq!(Outcome::from_status(status(5)), Outcome::OtherExitByte(2));
        assert_eq!(
            Outcome::from_status(ExitStatus::from_raw(9)),
            Outcome::Signal(9)
        );
    }

    #[test]
    fn only_success_exits_zero() {
        assert_eq!(Outcome::Success.exit_code(), 0);
        for other in [
            Outcome::KernelFailure,
            Outcome::OtherExitByte(3),
            Outcome::Reset,
            Outcome::QemuError(1),
            Outcome::Signal(9),
            Outcome::TimedOut(Duration::from_secs(1)),
            Outcome::Stopped,
        ] {
            assert_ne!(other.exit_code(), 0, "{other}");
        }
    }

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn output_and_status_are_captured() {
        let record = run(
            shell("echo hello; echo oops >&2; exit 35"),
            &Options::captured(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(record.outcome, Outcome::KernelFailure);
        assert_eq!(record.serial, "hello\n");
        assert_eq!(record.qemu_messages, "oops\n");
        assert!(record.first_output().is_some());
        assert!(record.time_to("hello").is_some());
        assert!(record.time_to("absent").is_none());
        assert!(record.transcript().contains("hello"));
    }

    #[test]
    fn a_started_session_is_readable_while_it_runs_and_can_be_stopped() {
        let mut session = start(
            shell("echo ready; sleep 30"),
            &Options::captured(Duration::from_secs(60)),
        )
        .unwrap();
        // The echo comes in milliseconds; 10 s is the margin for a loaded
        // machine.
        let until = Instant::now() + Duration::from_secs(10);
        while !session.serial_so_far().contains("ready\n") && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(session.serial_so_far(), "ready\n");
        assert!(!session.has_ended());
        let record = session.stop();
        assert_eq!(record.outcome, Outcome::Stopped);
        assert_eq!(record.serial, "ready\n");
    }

    #[test]
    fn a_session_that_ended_by_itself_keeps_its_outcome() {
        let mut session = start(
            shell("echo done; exit 33"),
            &Options::captured(Duration::from_secs(10)),
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !session.has_ended() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let record = session.stop();
        assert_eq!(record.outcome, Outcome::Success);
        assert_eq!(record.serial, "done\n");
    }

    #[test]
    fn a_wedged_process_and_its_children_are_killed_at_the_limit() {
        // `echo before` must run before the limit: the shell starts and
        // echoes in milliseconds on an idle machine; 3 s is the margin for
        // a loaded one.
        let limit = Duration::from_secs(3);
        let started = Instant::now();
        // The inner sleep holds the pipe open: only a group kill ends it.
        let record = run(
            shell("echo before; sleep 30 & sleep 30"),
            &Options::captured(limit),
        )
        .unwrap();
        assert_eq!(record.outcome, Outcome::TimedOut(limit));
        assert_eq!(record.serial, "before\n");
        // Killed with its group, the inner sleep closes the pipe at once;
        // had it survived, reading the pipe would have waited the whole
        // grace for it. The kill and the reads have the grace (10 s) as
        // their margin.
        let took = started.elapsed();
        assert!(
            took < limit + PIPE_GRACE,
            "{took:?}: the wedged process's child kept the pipe open"
        );
        assert!(record.summary().contains("timed out"));
    }
}
