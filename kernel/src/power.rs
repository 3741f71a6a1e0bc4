//! Ending the machine, with a status the outside world can read.
//!
//! Under QEMU the `isa-debug-exit` device at port 0xf4 ends the emulator
//! with exit status `(value << 1) | 1`: we write [`SUCCESS`] (status 33) or
//! [`FAILURE`] (status 35), and `cargo xtask` turns those into 0 and 1. Any
//! other status (0 from a triple fault under `-no-reboot`, a signal, a
//! time-out) is also a failure, so a crash can never pass for success. On
//! real hardware, where nothing listens at 0xf4, the CPU halts for good.

use x86_64::instructions::port::Port;

/// The value for a clean shutdown.
pub const SUCCESS: u32 = 0x10;
/// The value for a failure (panic, exception, failed self-test, bad config).
pub const FAILURE: u32 = 0x11;

/// Ends the machine with `SUCCESS` or `FAILURE`.
pub fn exit(value: u32) -> ! {
    // SAFETY: writing to the debug-exit port has no effect on memory; where
    // no device decodes it the write is dropped.
    unsafe { Port::<u32>::new(0xf4).write(value) };
    halt_forever()
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
