//! Standard output and standard error: the host's console.
//!
//! Each console write is a hypercall (an exit), and the host starts each
//! write on a line of its own, prefixed with the guest's name. So bytes are
//! gathered here and handed over whole lines at a time: everything up to
//! the last newline of what has been written, in one call (std's stdout is
//! already line-buffered; stderr is not, and a panic message arrives in
//! many small pieces). A partial line waits for its newline, for the
//! buffer to fill, or for the end of the guest ([`flush`]).

use crate::sync::IrqLock;
use guest_rt::hypercall;

/// Bytes gathered before they go out even without a newline: the most
/// the host takes in one call.
const BUFFER_BYTES: usize = guest_abi::hypercall::CONSOLE_WRITE_MAX as usize;

struct Pending {
    bytes: [u8; BUFFER_BYTES],
    len: usize,
}

static PENDING: IrqLock<Pending> = IrqLock::new(Pending {
    bytes: [0; BUFFER_BYTES],
    len: 0,
});

impl Pending {
    /// Adds `data`, writing out every complete line and every full buffer.
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = BUFFER_BYTES - self.len;
            let taken = data.len().min(room);
            self.bytes[self.len..self.len + taken].copy_from_slice(&data[..taken]);
            self.len += taken;
            data = &data[taken..];
            if self.len == BUFFER_BYTES {
                self.write_out(BUFFER_BYTES);
            } else if let Some(last_newline) = self.bytes[..self.len]
                .iter()
                .rposition(|&byte| byte == b'\n')
            {
                self.write_out(last_newline + 1);
            }
        }
    }

    /// Writes the first `count` bytes and keeps the rest.
    fn write_out(&mut self, count: usize) {
        // Nothing sensible to do if the host refuses console output.
        let _ = hypercall::console_write(&self.bytes[..count]);
        self.bytes.copy_within(count..self.len, 0);
        self.len -= count;
    }
}

/// Writes `bytes` to the console, a line at a time.
pub fn write(bytes: &[u8]) {
    PENDING.with(|pending| pending.push(bytes));
}

/// Writes the pieces as one (for `writev`); returns the bytes taken.
pub fn write_gathered<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> usize {
    PENDING.with(|pending| {
        pieces
            .map(|piece| {
                pending.push(piece);
                piece.len()
            })
            .sum()
    })
}

/// Writes out whatever is gathered, newline or not (at the guest's end).
pub fn flush() {
    PENDING.with(|pending| {
        if pending.len > 0 {
            pending.write_out(pending.len);
        }
    });
}

/// Prints one line of the runtime's own (`hermit: ...`), after whatever the
/// program left unfinished.
pub fn report(args: core::fmt::Arguments<'_>) {
    flush();
    guest_rt::println!("hermit: {args}");
}
