//! The file system: a writable tree in guest memory, behind the `sys_*`
//! file functions std's `fs` and `io` call on Hermit.
//!
//! There is no disk: the tree starts as `/` and `/tmp`, and what a program
//! writes lives in the guest's heap until the guest ends. Files carried in
//! with the guest (read-only, from the image) are not here yet.
//!
//! - [`path`]: path text to components (no symbolic links, the working
//!   directory always `/`);
//! - [`tree`]: the nodes, the open file descriptions, the descriptor table
//!   (pure data, tested on Linux);
//! - `syscalls` (Hermit only): the `sys_*` functions, with std's
//!   convention of a negated `errno` on failure.
//!
//! std on Hermit itself answers "unsupported" for `rename`, `sync_all`,
//! links, permissions and times, without asking us.

/// A positive `errno` value (`hermit_abi::errno`); the `sys_*` functions
/// return it negated.
pub type Errno = i32;

pub mod path;
pub mod tree;

#[cfg(target_os = "hermit")]
pub(crate) mod syscalls;
