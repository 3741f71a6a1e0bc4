//! `print!` and `println!`: formatted output through the host's console.
//!
//! Every console write is a hypercall, an exit to the host, and the host
//! prefixes each write with the guest's name. Writing each formatting
//! fragment as it comes would cost an exit per fragment and scatter the
//! name through the middle of lines, so output is gathered in a
//! [`LineBuffer`] on the caller's stack and handed over a whole line at a
//! time. There is no shared buffer, hence no lock: a trap handler that
//! prints while the code it interrupted was printing just writes its own
//! lines in between.

use core::fmt;

/// Bytes gathered before a write; a longer line is written in pieces.
pub const LINE_BYTES: usize = 512;

/// Gathers formatted text and passes it to `sink` one line (or one full
/// buffer) at a time.
pub struct LineBuffer<F: FnMut(&[u8])> {
    bytes: [u8; LINE_BYTES],
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8])> LineBuffer<F> {
    /// An empty buffer that writes to `sink`.
    pub fn new(sink: F) -> Self {
        Self {
            bytes: [0; LINE_BYTES],
            len: 0,
            sink,
        }
    }

    /// Passes on what is gathered, if anything.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.bytes[..self.len]);
            self.len = 0;
        }
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
        if byte == b'\n' || self.len == LINE_BYTES {
            self.flush();
        }
    }
}

impl<F: FnMut(&[u8])> fmt::Write for LineBuffer<F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

/// Formats `args` to the host console (what `print!` expands to).
#[cfg(any(target_os = "none", target_os = "hermit"))]
pub fn print(args: fmt::Arguments<'_>) {
    use fmt::Write;
    let mut line = LineBuffer::new(|bytes: &[u8]| {
        // Nothing sensible to do if the host refuses console output.
        let _ = crate::hypercall::console_write(bytes);
    });
    let _ = line.write_fmt(args);
    line.flush();
}

/// Prints to the host console, like `std`'s `print!`.
#[cfg(any(target_os = "none", target_os = "hermit"))]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!($($arg)*))
    };
}

/// Prints a line to the host console, like `std`'s `println!`.
#[cfg(any(target_os = "none", target_os = "hermit"))]
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: impl Fn(&mut dyn fmt::Write)) -> Vec<Vec<u8>> {
        let mut writes = Vec::new();
        let mut line = LineBuffer::new(|bytes: &[u8]| writes.push(bytes.to_vec()));
        text(&mut line);
        line.flush();
        writes
    }

    #[test]
    fn one_write_per_line_however_many_fragments() {
        let writes = written(|w| {
            writeln!(w, "a{}b{}", 1, 2).unwrap();
            write!(w, "last").unwrap();
        });
        assert_eq!(writes, [b"a1b2\n".to_vec(), b"last".to_vec()]);
    }

    #[test]
    fn long_lines_go_in_full_buffers() {
        let writes = written(|w| w.write_str(&"x".repeat(LINE_BYTES + 3)).unwrap());
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].len(), LINE_BYTES);
        assert_eq!(writes[1].len(), 3);
        assert!(written(|_| {}).is_empty());
    }
}
