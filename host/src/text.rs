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

/// What a control character becomes.
const CONTROL: &str = "?";
/// What a byte that is not UTF-8 becomes.
const NOT_UTF8: &str = "\u{fffd}";

/// Calls `emit` with the pieces of `line` that make it safe to show, in
/// order: runs of printable text, and the replacements between them.
pub fn for_each_printable(line: &[u8], mut emit: impl FnMut(&str)) {
    // Most lines are plain printable ASCII: one pass to see it, and the
    // line goes out whole.
    if line
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use proptest::prelude::*;

    fn shown(line: &[u8]) -> String {
        let mut out = String::new();
        for_each_printable(line, |piece| out.push_str(piece));
        out
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
    }
}
