//! The program's arguments and environment, from the guest's command line.
//!
//! The host gives a guest one line of text: what follows `name/` in its
//! `guests=name/...` entry (at most `guest_abi::boot::CMDLINE_MAX` bytes).
//! A Unix program expects `argv` and an environment, so the line is cut
//! into words at whitespace and read with one simple rule:
//!
//! - leading words that contain `=` are environment variables
//!   (`KEY=VALUE`);
//! - the first word without `=` ends them: it and every word after it are
//!   the arguments;
//! - a word `--` also ends them (and is dropped), so an argument that
//!   contains `=` can be passed: `guests=app/-- --level=3`.
//!
//! `argv[0]` is always [`PROGRAM_NAME`]: the host does not tell a guest the
//! name it was started under. So `guests=app/RUST_BACKTRACE=1 LOG=info in
//! out` runs the program with `argv = ["app", "in", "out"]` and the two
//! variables set. There is no quoting: a word never contains whitespace.
//!
//! The parsing is pure and tested on Linux; `to_c` (Hermit only) turns the
//! result into the NUL-terminated arrays std's `runtime_entry` takes.

use alloc::vec::Vec;

/// `argv[0]`, the program name every guest program sees.
pub const PROGRAM_NAME: &str = "app";

/// The word that ends the environment variables explicitly.
const END_OF_ENVIRONMENT: &str = "--";

/// A command line read as environment variables and arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommandLine<'a> {
    /// `KEY=VALUE` words, in order.
    pub environment: Vec<&'a str>,
    /// The arguments after `argv[0]`, in order.
    pub arguments: Vec<&'a str>,
}

/// Reads `line` by the rule in the module docs.
pub fn parse(line: &str) -> CommandLine<'_> {
    let mut parsed = CommandLine::default();
    let mut words = line.split_ascii_whitespace();
    for word in words.by_ref() {
        if word == END_OF_ENVIRONMENT {
            break;
        }
        if !word.contains('=') {
            parsed.arguments.push(word);
            break;
        }
        parsed.environment.push(word);
    }
    parsed.arguments.extend(words);
    parsed
}

#[cfg(target_os = "hermit")]
pub use c_arrays::{CArguments, to_c};

#[cfg(target_os = "hermit")]
mod c_arrays {
    use super::{CommandLine, PROGRAM_NAME};
    use alloc::vec::Vec;
    use core::ffi::c_char;

    /// `argc`, `argv` and `envp` as C wants them. They live as long as the
    /// program: std keeps pointers into them.
    pub struct CArguments {
        /// How many arguments, `argv[0]` included.
        pub argc: i32,
        /// The arguments, NUL-terminated, then a null pointer.
        pub argv: *const *const c_char,
        /// The `KEY=VALUE` strings, NUL-terminated, then a null pointer.
        pub envp: *const *const c_char,
    }

    /// Copies `words` into leaked NUL-terminated strings and a leaked
    /// null-terminated array of pointers to them.
    fn leak_c_array<'a>(words: impl Iterator<Item = &'a str>) -> *const *const c_char {
        let mut pointers: Vec<*const c_char> = words
            .map(|word| {
                let mut bytes = Vec::with_capacity(word.len() + 1);
                bytes.extend_from_slice(word.as_bytes());
                bytes.push(0);
                bytes.leak().as_ptr().cast::<c_char>()
            })
            .collect();
        pointers.push(core::ptr::null());
        pointers.leak().as_ptr()
    }

    /// The C form of `line`, with [`PROGRAM_NAME`] as `argv[0]`.
    pub fn to_c(line: &CommandLine<'_>) -> CArguments {
        let arguments = core::iter::once(PROGRAM_NAME).chain(line.arguments.iter().copied());
        CArguments {
            argc: i32::try_from(line.arguments.len() + 1).unwrap_or(i32::MAX),
            argv: leak_c_array(arguments),
            envp: leak_c_array(line.environment.iter().copied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn read(line: &str) -> (Vec<&str>, Vec<&str>) {
        let parsed = parse(line);
        (parsed.environment, parsed.arguments)
    }

    #[test]
    fn leading_assignments_are_the_environment() {
        assert_eq!(
            read("RUST_BACKTRACE=1 LOG=info in out"),
            (vec!["RUST_BACKTRACE=1", "LOG=info"], vec!["in", "out"])
        );
    }

    #[test]
    fn the_first_plain_word_ends_the_environment() {
        assert_eq!(read("run A=1"), (vec![], vec!["run", "A=1"]));
    }

    #[test]
    fn a_double_dash_ends_it_too_and_is_dropped() {
        assert_eq!(
            read("A=1 -- --level=3 x"),
            (vec!["A=1"], vec!["--level=3", "x"])
        );
        assert_eq!(read("-- --"), (vec![], vec!["--"]));
    }

    #[test]
    fn empty_and_blank_lines_give_nothing() {
        assert_eq!(read(""), (vec![], vec![]));
        assert_eq!(read("  \t "), (vec![], vec![]));
        assert_eq!(read(" A=1   b  "), (vec!["A=1"], vec!["b"]));
    }
}
