//! Paths: from the text a program passes to the components the tree walks.
//!
//! The tree has no symbolic links and a program's working directory is
//! always `/` (std on Hermit cannot change it), so a path is resolved by
//! its text alone: relative paths start at `/`, `.` and empty components
//! vanish, `..` drops the component before it (and stays at `/` at the
//! top, as on Unix).

use super::Errno;
use alloc::vec::Vec;
use hermit_abi::errno::{ENAMETOOLONG, ENOENT};

/// Longest name of one directory entry, as `dirent64::d_name` allows
/// (256 bytes with its NUL).
pub const NAME_MAX: usize = 255;

/// A path made ready for the tree.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The names from `/` down, none empty, `.` or `..`.
    pub components: Vec<&'a str>,
    /// Whether the text ended in `/`: then it must name a directory.
    pub wants_directory: bool,
}

impl<'a> Resolved<'a> {
    /// The last component and the components of its parent, or `None` for
    /// `/` itself.
    pub fn split_last(&self) -> Option<(&'a str, &[&'a str])> {
        self.components
            .split_last()
            .map(|(name, parent)| (*name, parent))
    }
}

/// Resolves `path` as the module docs say. An empty path names nothing
/// (`ENOENT`, as on Unix); a component longer than [`NAME_MAX`] is
/// `ENAMETOOLONG`.
pub fn resolve(path: &str) -> Result<Resolved<'_>, Errno> {
    if path.is_empty() {
        return Err(ENOENT);
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            name if name.len() > NAME_MAX => return Err(ENAMETOOLONG),
            name => components.push(name),
        }
    }
    let wants_directory = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    Ok(Resolved {
        components,
        wants_directory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str) -> Vec<&str> {
        resolve(path).unwrap().components
    }

    #[test]
    fn absolute_and_relative_paths_start_at_the_root() {
        assert_eq!(parts("/tmp/a"), ["tmp", "a"]);
        assert_eq!(parts("tmp/a"), ["tmp", "a"]);
        assert!(parts("/").is_empty());
    }

    #[test]
    fn dots_and_doubled_slashes_vanish_and_dot_dot_goes_up() {
        assert_eq!(parts("//tmp/./b//c/../d"), ["tmp", "b", "d"]);
        assert_eq!(parts("/../../x"), ["x"]);
        assert!(parts("a/..").is_empty());
    }

    #[test]
    fn a_trailing_slash_asks_for_a_directory() {
        assert!(resolve("/tmp/").unwrap().wants_directory);
        assert!(resolve("/tmp/..").unwrap().wants_directory);
        assert!(!resolve("/tmp").unwrap().wants_directory);
    }

    #[test]
    fn empty_paths_and_long_names_are_refused() {
        assert_eq!(resolve(""), Err(ENOENT));
        let long = "x".repeat(NAME_MAX + 1);
        assert_eq!(resolve(&long), Err(ENAMETOOLONG));
        assert!(resolve(&"y".repeat(NAME_MAX)).is_ok());
    }

    #[test]
    fn split_last_gives_the_name_and_its_parent() {
        let resolved = resolve("/a/b/c").unwrap();
        assert_eq!(resolved.split_last(), Some(("c", &["a", "b"][..])));
        assert_eq!(resolve("/").unwrap().split_last(), None);
    }
}
