//! The serial console, and the `log` facade on top of it.
//!
//! Everything the host says goes out of COM1 (I/O port 0x3f8), the one
//! device every PC, every QEMU machine and most server BMCs ("serial over
//! LAN") have. Output is line-oriented through [`log`]; [`println!`] is for
//! the few lines that must appear whatever the log level (the banner, the
//! final status), and [`emergency`] writes even when the console lock is
//! held by the code that just crashed.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use host::config::LogLevel;
use host::text::Staging;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550, Uart16550Tty};

const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);
static PRESENT: AtomicBool = AtomicBool::new(false);

/// COM1, written a run of bytes at a time: the UART takes up to a FIFO's
/// worth (16 bytes) for each look at its status register, where the
/// crate's terminal writer looks once per byte (the host's cost of a guest's
/// console line was mostly those looks: about 80 instructions a byte).
/// A `\n` goes out as `\r\n`, as the terminal writer sends it; the host
/// writes no other control character (a guest's are defused first).
struct Console {
    tty: Uart16550Tty<PioBackend>,
    /// Where a guest's line is put together, to go out in one write.
    staging: [u8; STAGING],
}

/// Room for the usual guest line, prefix included; a longer one goes out
/// in more writes.
const STAGING: usize = 256;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let uart = self.tty.inner_mut();
        for (i, run) in s.split('\n').enumerate() {
            if i > 0 {
                uart.send_bytes_exact(b"\r\n");
            }
            uart.send_bytes_exact(run.as_bytes());
        }
        Ok(())
    }
}

/// Brings up COM1 and makes `log` write to it at `Info` level.
pub fn init() {
    // SAFETY: COM1's eight registers are standard PC I/O ports that nothing
    // else in the kernel touches.
    if let Ok(tty) = unsafe { Uart16550Tty::new_port(COM1, Config::default()) } {
        *CONSOLE.lock() = Some(Console {
            tty,
            staging: [0; STAGING],
        });
        PRESENT.store(true, Ordering::Release);
    }
    // A second call (there is none) would fail harmlessly.
    let _ = log::set_logger(&LOGGER);
    set_level(LogLevel::Info);
}

/// Sets how much `log` lets through.
pub fn set_level(level: LogLevel) {
    log::set_max_level(match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    });
}

/// Writes formatted text to the console (used by `println!`).
pub fn write_fmt(args: fmt::Arguments<'_>) {
    // Interrupt handlers log too: hold the lock with interrupts off, or a
    // tick arriving mid-line would spin forever on it.
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(tty) = CONSOLE.lock().as_mut() {
            let _ = tty.write_fmt(args);
        }
    });
}

/// Prints one line of guest `name`'s console output as `[name] line`,
/// with what could act on the terminal defused ([`host::text`]), in one
/// piece (the lock held for the whole line) and without allocating.
///
/// The line is put together first and written in one go (`\r\n` as the
/// terminal writer ends a line; the defused text holds no control
/// character for it to translate), so the UART's status is looked at once
/// per 16 bytes of the whole line rather than once per piece.
pub fn guest_line(name: &str, line: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(Console { tty, staging }) = CONSOLE.lock().as_mut() {
            let uart = tty.inner_mut();
            let mut out = Staging::new(staging, |bytes| uart.send_bytes_exact(bytes));
            out.push(b"[");
            out.push_printable(name.as_bytes());
            out.push(b"] ");
            out.push_printable(line);
            out.push(b"\r\n");
            out.flush();
        }
    });
}

/// Writes without taking the console lock: for exception reports and
/// panics, which may have interrupted a holder of the lock. Lines may mix
/// with a half-written one; losing the crash report would be worse.
pub fn emergency(args: fmt::Arguments<'_>) {
    if !PRESENT.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: COM1 was initialised by `init`; a second handle to the same
    // ports only risks interleaved bytes, never memory unsafety.
    if let Ok(uart) = unsafe { Uart16550::new_port(COM1) } {
        let _ = Uart16550Tty::from_inner(uart).write_fmt(args);
    }
}

/// Prints a line to the console regardless of the log level.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ms = crate::apic::uptime_ms();
        match record.level() {
            log::Level::Info => write_fmt(format_args!("[{ms:>6}] {}\n", record.args())),
            level => write_fmt(format_args!(
                "[{ms:>6}] {level:<5} {}: {}\n",
                record.target(),
                record.args()
            )),
        }
    }

    fn flush(&self) {}
}
