//! A guest's console output as the operator's terminal may see it.
//!
//! A guest's bytes end up on the host's serial console, read by a person
//! or a program (a terminal emulator, a log collector). Left as they are,
//! they could carry terminal escape sequences (moving the cursor, rewriting
//! earlier lines, setting a window title, on some terminals worse), which
//! would let a guest forge the host's own messages or act on the terminal.
//! So each line is shown with its control characters replaced by `?` (a tab
//! stays a tab) and any byte that is not UTF-8 by U+FFFD, and nothing else
//! changed. The pieces come out as `&str` slices of the line itself, so
//! printing a clean line copies and allocates nothing.
//!
//! Printing a guest's line is on the path of its every console write, so
//! the usual line, all printable ASCII, is recognised eight bytes at a time
//! ([`is_plain`], [`copy_if_plain`]) and [`Staging`] puts a whole output
//! line together for the device, which takes many bytes per look at its
//! status; anything else takes the careful character-by-character path.

/// What a control character becomes.
const CONTROL: &str = "?";
/// What a byte that is not UTF-8 becomes.
const NOT_UTF8: &str = "\u{fffd}";

/// Calls `emit` with the pieces of `line` that make it safe to show, in
/// order: runs of printable text, and the replacements between them.
pub fn for_each_printable(line: &[u8], mut emit: impl FnMut(&str)) {
    // Most lines are plain printable ASCII: one pass to see it, and the
    // line goes out whole.
    if is_plain(line)
        && let Ok(text) = core::str::from_utf8(line)
    {
        if !text.is_empty() {
            emit(text);
        }
        return;
    }
    for chunk in line.utf8_chunks() {
        emit_valid(chunk.valid(), &mut emit);
        if !chunk.invalid().is_empty() {
            emit(NOT_UTF8);
        }
    }
}

/// `text` with its control characters replaced.
fn emit_valid(text: &str, emit: &mut impl FnMut(&str)) {
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if is_control(c) {
            if start < at {
                emit(&text[start..at]);
            }
            emit(CONTROL);
            start = at + c.len_utf8();
        }
    }
    if start < text.len() {
        emit(&text[start..]);
    }
}

/// The C0 controls but tab, DEL, and the C1 controls (U+0080-U+009F, which
/// some terminals read as escape sequences too).
fn is_control(c: char) -> bool {
    c != '\t' && c.is_control()
}

/// A byte shown as it is wherever it stands: printable ASCII or a tab.
fn is_plain_byte(byte: u8) -> bool {
    byte == b'\t' || (0x20..0x7f).contains(&byte)
}

/// The byte 1 in each of a word's eight bytes.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The top bit of each of a word's eight bytes.
const TOPS: u64 = ONES * 0x80;

/// Whether each of the eight bytes is printable ASCII (0x20-0x7e), with a
/// few operations on the word instead of a test per byte.
///
/// Each term sets the top bit of some byte if and only if one is out of
/// range: `word` itself for bytes of 0x80 and up; then, with those ruled
/// out, subtracting 0x20 from every byte borrows (and sets the top bit of
/// the lowest byte below 0x20, which `!word` keeps) exactly when a byte is
/// below 0x20, and subtracting 1 from `word ^ 0x7f..` does the same for a
/// byte equal to 0x7f (DEL). A borrow may mark a good byte above the bad
/// one, which does not change the answer.
fn word_is_printable(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let del = word ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del;
    (word | below_space | is_del) & TOPS == 0
}

/// Whether all eight bytes are plain; a word with a tab (rare) takes the
/// byte-by-byte test.
fn word_is_plain(bytes: [u8; 8]) -> bool {
    word_is_printable(u64::from_le_bytes(bytes)) || bytes.iter().all(|&b| is_plain_byte(b))
}

/// Eight bytes of `bytes` from `at` (which must leave eight).
fn word_at(bytes: &[u8], at: usize) -> [u8; 8] {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    word
}

/// Whether `each` holds for every word of `bytes` (eight bytes long at
/// least), given with its offset: every eight bytes, the last word ending
/// where `bytes` ends, overlapping the one before unless the length is a
/// multiple of eight (a few bytes looked at twice are cheaper than a loop
/// over the last ones).
#[inline(always)]
fn all_words(bytes: &[u8], mut each: impl FnMut(usize, [u8; 8]) -> bool) -> bool {
    let last = bytes.len() - 8;
    let mut at = 0;
    while at < last {
        if !each(at, word_at(bytes, at)) {
            return false;
        }
        at += 8;
    }
    each(last, word_at(bytes, last))
}

/// Whether every byte of `line` is plain (printable ASCII or a tab): such a
/// line is shown exactly as it is.
pub fn is_plain(line: &[u8]) -> bool {
    if line.len() < 8 {
        return line.iter().all(|&b| is_plain_byte(b));
    }
    all_words(line, |_, word| word_is_plain(word))
}

/// Copies `line` to the start of `out` in the same pass that checks it is
/// plain ([`is_plain`]), and says whether it is. If it is not, or `out` is
/// too short, what `out` holds is unspecified (part of `line`).
pub fn copy_if_plain(line: &[u8], out: &mut [u8]) -> bool {
    let Some(out) = out.get_mut(..line.len()) else {
        return false;
    };
    if line.len() < 8 {
        for (to, &byte) in out.iter_mut().zip(line) {
            if !is_plain_byte(byte) {
                return false;
            }
            *to = byte;
        }
        return true;
    }
    all_words(line, |at, word| {
        out[at..at + 8].copy_from_slice(&word);
        word_is_plain(word)
    })
}

/// Whether `bytes` holds a newline, eight bytes at a time.
pub fn has_newline(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return bytes.contains(&b'\n');
    }
    !all_words(bytes, |_, word| {
        // A zero byte of `x` is a newline; subtracting 1 from each byte
        // borrows into the top bit exactly when some byte is zero (as in
        // `word_is_printable`).
        let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'\n'));
        x.wrapping_sub(ONES) & !x & TOPS == 0
    })
}

/// Output put together in a buffer and handed to `sink` a bufferful at a
/// time: a serial port takes up to a FIFO's worth of bytes per look at its
/// status, so a line written in one go costs a look per 16 bytes, where a
/// write per piece (prefix, name, text, line end) costs one per piece.
pub struct Staging<'a, S: FnMut(&[u8])> {
    buffer: &'a mut [u8],
    len: usize,
    sink: S,
}

impl<'a, S: FnMut(&[u8])> Staging<'a, S> {
    /// Stages in `buffer`, for `sink`.
    pub fn new(buffer: &'a mut [u8], sink: S) -> Self {
        Self {
            buffer,
            len: 0,
            sink,
        }
    }

    /// Adds `bytes` as they are: the host's own text.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        // Inlined, a short constant (a prefix) is copied with a store or
        // two, not a call to `memcpy`.
        match self.buffer.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.push_in_parts(bytes),
        }
    }

    /// [`Self::push`] for more than the room left: what fits, then the
    /// rest after a flush.
    fn push_in_parts(&mut self, mut bytes: &[u8]) {
        loop {
            let room = &mut self.buffer[self.len..];
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if bytes.is_empty() {
                return;
            }
            self.flush();
            if self.buffer.is_empty() {
                (self.sink)(bytes);
                return;
            }
        }
    }

    /// Adds `line` as it is shown ([`for_each_printable`]). A plain line
    /// that fits is checked and copied in one pass.
    #[inline]
    pub fn push_printable(&mut self, line: &[u8]) {
        if let Some(room) = self.buffer.get_mut(self.len..self.len + line.len())
            && copy_if_plain(line, room)
        {
            self.len += line.len();
            return;
        }
        self.push_printable_slowly(line);
    }

    /// [`Self::push_printable`] for a line that is not plain or does not
    /// fit: a plain one longer than the buffer goes to `sink` directly.
    fn push_printable_slowly(&mut self, line: &[u8]) {
        if !is_plain(line) {
            for_each_printable(line, |piece| self.push(piece.as_bytes()));
        } else if line.len() > self.buffer.len() {
            self.flush();
            (self.sink)(line);
        } else {
            self.push(line);
        }
    }

    /// Hands what is staged to `sink`.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buffer[..self.len]);
            self.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn shown(line: &[u8]) -> String {
        let mut out = String::new();
        for_each_printable(line, |piece| out.push_str(piece));
        out
    }

    /// What the careful path alone shows: the reference for the fast ones.
    fn shown_slowly(line: &[u8]) -> String {
        let mut out = String::new();
        for chunk in line.utf8_chunks() {
            emit_valid(chunk.valid(), &mut |piece: &str| out.push_str(piece));
            if !chunk.invalid().is_empty() {
                out.push_str(NOT_UTF8);
            }
        }
        out
    }

    /// `[name] line\r\n` through a [`Staging`] of `size` bytes, and how
    /// many times it reached the sink.
    fn staged(name: &[u8], line: &[u8], size: usize) -> (Vec<u8>, usize) {
        let mut buffer = alloc::vec![0; size];
        let mut out = Vec::new();
        let mut writes = 0;
        let mut staging = Staging::new(&mut buffer, |bytes: &[u8]| {
            out.extend_from_slice(bytes);
            writes += 1;
        });
        staging.push(b"[");
        staging.push_printable(name);
        staging.push(b"] ");
        staging.push_printable(line);
        staging.push(b"\r\n");
        staging.flush();
        (out, writes)
    }

    /// Bytes around every boundary the fast paths test (tab, space, DEL,
    /// the top bit, newline), printable ASCII, and anything.
    fn tricky_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => 0x20u8..0x7f,
            1 => prop::sample::select(alloc::vec![
                0x00, 0x08, 0x09, 0x0a, 0x0d, 0x1b, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0x9b,
                0xc2, 0xe2, 0xff,
            ]),
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..max)
    }

    #[test]
    fn plain_text_and_tabs_pass_unchanged() {
        assert_eq!(shown(b"hello\tworld: 42%"), "hello\tworld: 42%");
        assert_eq!(
            shown("gr\u{fc}\u{df}e \u{2603}".as_bytes()),
            "gr\u{fc}\u{df}e \u{2603}"
        );
        assert_eq!(shown(b""), "");
    }

    #[test]
    fn escape_sequences_and_controls_are_defused() {
        assert_eq!(shown(b"\x1b[2J\x1b]0;owned\x07x"), "?[2J?]0;owned?x");
        assert_eq!(shown(b"a\rb\x08c\x7f"), "a?b?c?");
        assert_eq!(shown("\u{9b}31m".as_bytes()), "?31m", "a C1 CSI");
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        assert_eq!(shown(b"ok\xff\xfeok"), "ok\u{fffd}\u{fffd}ok");
        assert_eq!(shown(b"\xe2\x82"), "\u{fffd}", "a sequence cut short");
    }

    #[test]
    fn every_byte_value_anywhere_in_a_line_is_judged_as_alone() {
        // Lengths below, at and between whole words (the last word of 11
        // and 19 overlaps the one before).
        for len in [1, 7, 8, 11, 16, 19] {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut line = alloc::vec![b'a'; len];
                    line[at] = byte;
                    let plain = is_plain_byte(byte);
                    assert_eq!(is_plain(&line), plain, "{byte:#x} at {at} of {len}");
                    let mut out = alloc::vec![0; len];
                    assert_eq!(copy_if_plain(&line, &mut out), plain);
                    if plain {
                        assert_eq!(out, line);
                    }
                    assert_eq!(has_newline(&line), byte == b'\n');
                }
            }
        }
    }

    #[test]
    fn copy_if_plain_wants_room_for_the_whole_line() {
        let mut out = [0; 4];
        assert!(!copy_if_plain(b"hello", &mut out));
        assert!(copy_if_plain(b"hell", &mut out));
        assert_eq!(&out, b"hell");
    }

    #[test]
    fn a_staged_line_is_written_once() {
        let (out, writes) = staged(b"bench", b"bench: a short line", 64);
        assert_eq!(out, b"[bench] bench: a short line\r\n");
        assert_eq!(writes, 1);
        let (out, _) = staged(b"g", b"\x1b[2Jgr\xc3\xbc\xff", 64);
        assert_eq!(out, "[g] ?[2Jgr\u{fc}\u{fffd}\r\n".as_bytes());
    }

    #[test]
    fn a_long_plain_line_goes_to_the_sink_unstaged() {
        let line = [b'x'; 100];
        let (out, writes) = staged(b"g", &line, 16);
        assert_eq!(&out[..4], b"[g] ");
        assert_eq!(&out[4..104], &line[..]);
        assert_eq!(&out[104..], b"\r\n");
        assert_eq!(writes, 3, "the prefix, the line, the line end");
    }

    proptest! {
        /// Whatever the bytes, what is shown has no control character but
        /// tab, and printable ASCII passes through unchanged.
        #[test]
        fn nothing_shown_is_a_control_character(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = shown(&line);
            prop_assert!(out.chars().all(|c| c == '\t' || !c.is_control()));
            if line.iter().all(|b| (0x20..0x7f).contains(b)) {
                prop_assert_eq!(out.as_bytes(), &line[..]);
            }
        }

        /// The word-at-a-time tests answer as the byte-at-a-time ones.
        #[test]
        fn fast_tests_agree_with_the_byte_by_byte_ones(line in tricky_bytes(40)) {
            let plain = line.iter().all(|&b| is_plain_byte(b));
            prop_assert_eq!(is_plain(&line), plain);
            let mut out = alloc::vec![0; line.len()];
            prop_assert_eq!(copy_if_plain(&line, &mut out), plain);
            if plain {
                prop_assert_eq!(&out, &line);
            }
            prop_assert_eq!(has_newline(&line), line.contains(&b'\n'));
        }

        /// Whatever the bytes and the buffer's size, staging shows a line
        /// exactly as the careful path alone does.
        #[test]
        fn staging_shows_what_the_careful_path_shows(
            name in tricky_bytes(12),
            line in tricky_bytes(80),
            size in 0usize..48,
        ) {
            prop_assert_eq!(shown(&line), shown_slowly(&line));
            let expected = alloc::format!(
                "[{}] {}\r\n",
                shown_slowly(&name),
                shown_slowly(&line)
            );
            let (out, _) = staged(&name, &line, size);
            prop_assert_eq!(out, expected.into_bytes());
        }
    }
}
