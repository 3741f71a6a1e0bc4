//! Where things are: the workspace root and cargo's target directory.
//!
//! Both the `cargo xtask` binary and the QEMU tests are compiled from this
//! workspace, so the root is known at compile time (the parent of this
//! crate's manifest directory). The target directory follows cargo's own
//! rule for the one override we use: `CARGO_TARGET_DIR` when set (cargo
//! passes it down to the processes it runs), otherwise `<root>/target`.

use std::path::{Path, PathBuf};

/// The rguest workspace on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The directory holding the workspace `Cargo.toml`.
    pub root: PathBuf,
    /// Where cargo puts build output (`target/` unless overridden).
    pub target_dir: PathBuf,
}

impl Workspace {
    /// The workspace this crate was built from.
    pub fn current() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            // Cargo resolves a relative CARGO_TARGET_DIR against the
            // directory it was started in, which is our current directory.
            Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| root.join("target")),
            None => root.join("target"),
        };
        Self { root, target_dir }
    }
}
