//! Make sure the pinned Rust toolchain is complete before building.
//!
//! `rust-toolchain.toml` names the toolchain, the `x86_64-unknown-none`
//! target and the components (`rust-src`, `clippy`, `rustfmt`). On the machines
//! this project runs on, `RUSTUP_AUTO_INSTALL=0` stops rustup from fetching
//! a missing target or component by itself, so the kernel build would fail
//! with "can't find crate for `core`". `rustup toolchain install`, run in the
//! workspace root with no arguments, reads the file and installs whatever is
//! missing; when everything is there it returns at once. We stay quiet then
//! and show rustup's output only when it had to work or failed.
//!
//! One trap: `cargo` hands every process it runs, `cargo xtask` included,
//! `RUSTUP_TOOLCHAIN` (and `RUSTUP_TOOLCHAIN_SOURCE`). rustup treats that as
//! an environment override and then installs the bare toolchain, without
//! the targets and components the file names. So rustup runs here without
//! them, and afterwards we check that the target's `core` really is there.

use crate::workspace::Workspace;
use crate::{Error, Result};
use std::process::Command;
use std::sync::OnceLock;

/// Installs the toolchain, targets and components of `rust-toolchain.toml`
/// if any is missing. Runs rustup at most once per process.
pub fn ensure_complete(workspace: &Workspace) -> Result<()> {
    static DONE: OnceLock<Result<()>> = OnceLock::new();
    DONE.get_or_init(|| install(workspace)).clone()
}

fn install(workspace: &Workspace) -> Result<()> {
    let output = Command::new("rustup")
        .args(["toolchain", "install"])
        .current_dir(&workspace.root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTUP_TOOLCHAIN_SOURCE")
        .output()
        .map_err(|e| {
            Error::new(format!(
                "cannot run rustup ({e}): install it from https://rustup.rs \
                 (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
            ))
        })?;
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Error::new(format!(
            "`rustup toolchain install` failed in {}:\n{said}",
            workspace.root.display()
        )));
    }
    if rustup_downloaded_something(&said) {
        eprint!("{said}");
    }
    check_target_installed(workspace)
}

/// The bare-metal target every kernel and guest is built for.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Fails with the command that fixes it when the toolchain that builds the
/// workspace has no `core` for [`KERNEL_TARGET`]: better one clear line
/// here than "can't find crate for `core`" deep in a build.
fn check_target_installed(workspace: &Workspace) -> Result<()> {
    let output = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", KERNEL_TARGET])
        .current_dir(&workspace.root)
        .output()
        .map_err(|e| Error::new(format!("cannot run rustc: {e}")))?;
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let has_core = std::fs::read_dir(&libdir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| entry.file_name().to_string_lossy().starts_with("libcore-"));
    if output.status.success() && has_core {
        return Ok(());
    }
    Err(Error::new(format!(
        "the toolchain has no `core` for {KERNEL_TARGET} (looked in {libdir:?}): \
         run `rustup target add {KERNEL_TARGET}` in {}",
        workspace.root.display()
    )))
}

/// rustup says "using existing install" and nothing about downloads when the
/// toolchain was already complete.
fn rustup_downloaded_something(said: &str) -> bool {
    said.contains("downloading") || said.contains("installing component")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_install_is_quiet() {
        let said = "info: using existing install for 1.95.0-x86_64-unknown-linux-gnu\n\
                    info: the active toolchain `1.95.0` has been installed\n";
        assert!(!rustup_downloaded_something(said));
        assert!(rustup_downloaded_something(
            "info: downloading component 'rust-src'\n"
        ));
    }
}
