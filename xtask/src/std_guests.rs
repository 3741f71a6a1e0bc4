//! The Rust `std` guests: ordinary std programs built for Rust's
//! `x86_64-unknown-hermit` target and linked with the library OS in
//! `images/std/hermit` (the package `rguest-hermit`), which gives std the
//! Hermit application ABI on top of rguest's hypercalls.
//!
//! Two kinds are built here:
//!
//! - **the programs of `images/std/apps/`** ([`build_apps`]), each a
//!   package as a user's would be, built together in the workspace
//!   `images/std`, and packed by [`crate::guests`] into the guest archive
//!   beside the classic guests, named by their binary;
//! - **a user's crate** ([`build_app`], for `cargo xtask run --app PATH`):
//!   see [`crate::app`] for how a plain crate meets the runtime.
//!
//! The Hermit target is tier 3: its `std` is built from source with
//! nightly cargo (`-Zbuild-std`), so this needs the `nightly` toolchain
//! with its `rust-src` component. [`ensure_nightly`] adds `rust-src` when
//! it is missing (rustup run without cargo's `RUSTUP_TOOLCHAIN`, as
//! [`crate::toolchain`] explains), and fails in one line naming the
//! command that installs what is missing. Everything here builds with the
//! release profile whatever `--debug` says: std in the dev profile is large
//! and slow under TCG, and the kernel's profile is what `--debug` is for.
//!
//! The output goes to `target/hermit/` (one target directory for the apps
//! and for user crates, so std is built once for both).

use crate::commands::TestCounts;
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Rust target of the std guests.
pub const TARGET: &str = "x86_64-unknown-hermit";

/// The toolchain that builds them (for `-Zbuild-std`).
pub const TOOLCHAIN: &str = "nightly";

/// cargo's arguments that build std itself for [`TARGET`], in release,
/// and link the programs without debug info. The symbols stay (a
/// backtrace or `addr2line -f` still names functions); the line tables
/// go: they are 95% of a std program's ELF (`hello-std` 4.5 MB with them,
/// 160 KB without), and the guest archive, which the disk image's 64 MiB
/// EFI partition carries, would grow past 64 MiB with them.
pub const BUILD_STD_ARGS: [&str; 7] = [
    "--release",
    "-Zbuild-std=std,panic_abort",
    "-Zbuild-std-features=compiler-builtins-mem",
    "--target",
    TARGET,
    "--config",
    "profile.release.strip=\"debuginfo\"",
];

/// The runtime's package name.
pub const RUNTIME_PACKAGE: &str = "rguest-hermit";

/// The command that installs everything the std guests need.
pub const INSTALL_COMMAND: &str = "rustup toolchain install nightly --component rust-src";

/// Why the std guests cannot be built on this machine: the toolchain is
/// missing, as opposed to a program that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbuildable {
    /// No nightly toolchain, or no `rust-src` for it (and rustup could not
    /// add it). The string is the one-line reason.
    Toolchain(String),
    /// The build itself failed.
    Build(Error),
}

impl From<Unbuildable> for Error {
    fn from(why: Unbuildable) -> Error {
        match why {
            Unbuildable::Toolchain(reason) => Error::new(reason),
            Unbuildable::Build(error) => error,
        }
    }
}

/// The workspace of the std guests: `images/std`.
pub fn std_workspace(workspace: &Workspace) -> PathBuf {
    workspace.root.join("images").join("std")
}

/// The runtime's package directory, `images/std/hermit`.
pub fn runtime_dir(workspace: &Workspace) -> PathBuf {
    std_workspace(workspace).join("hermit")
}

/// Where cargo builds the std guests: `target/hermit`.
pub fn target_dir(workspace: &Workspace) -> PathBuf {
    workspace.target_dir.join("hermit")
}

/// Where a std guest's ELF of binary `name` lands.
pub fn elf_path(workspace: &Workspace, name: &str) -> PathBuf {
    target_dir(workspace)
        .join(TARGET)
        .join("release")
        .join(name)
}

/// The names of the programs in `images/std/apps/`: each directory there
/// with a `Cargo.toml` is one package whose binary has the directory's
/// name. Sorted, so the archive's order never changes. Needs no toolchain.
pub fn app_names(workspace: &Workspace) -> Vec<String> {
    let apps = std_workspace(workspace).join("apps");
    let mut names: Vec<String> = std::fs::read_dir(apps)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Builds every program of `images/std/apps/` and returns each one's name
/// and ELF path, in [`app_names`] order.
pub fn build_apps(
    workspace: &Workspace,
) -> std::result::Result<Vec<(String, PathBuf)>, Unbuildable> {
    ensure_nightly().map_err(|e| Unbuildable::Toolchain(e.0))?;
    let names = app_names(workspace);
    let mut cargo = nightly_cargo(workspace);
    cargo.current_dir(std_workspace(workspace));
    cargo.arg("build").args(BUILD_STD_ARGS);
    for name in &names {
        cargo.args(["--package", name]);
    }
    crate::artefacts::run_to_completion(&mut cargo, "building the std guests (images/std)")
        .map_err(|e| Unbuildable::Build(explain_build_failure(e)))?;
    names
        .into_iter()
        .map(|name| {
            let elf = elf_path(workspace, &name);
            if elf.is_file() {
                Ok((name, elf))
            } else {
                Err(Unbuildable::Build(Error::new(format!(
                    "cargo built the std guests but {} is missing",
                    elf.display()
                ))))
            }
        })
        .collect()
}

/// A build failure, with what is most often behind it when the runtime is
/// not there yet.
fn explain_build_failure(error: Error) -> Error {
    Error::new(format!(
        "{error}: the std guests did not compile (cargo's messages above name what is \
         missing; they need nightly with rust-src and the runtime in images/std/hermit)"
    ))
}

/// A cargo of the nightly toolchain, run through rustup, with the
/// variables of the cargo that runs us taken away (they would pin the
/// stable toolchain and its tools on the nightly build).
pub fn nightly_cargo(workspace: &Workspace) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", TOOLCHAIN, "cargo"]);
    without_cargo_toolchain(&mut command);
    command.env("CARGO_TARGET_DIR", target_dir(workspace));
    command
}

/// Removes what cargo hands the programs it runs and that would steer a
/// nested build of another toolchain: the toolchain override and the paths
/// of its `cargo` and `rustc`.
fn without_cargo_toolchain(command: &mut Command) {
    for variable in [
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        command.env_remove(variable);
    }
}

/// Makes sure the nightly toolchain has `rust-src`, adding it with rustup
/// when missing; runs rustup at most once per process. Fails in one line
/// naming what is missing and the command that installs it.
pub fn ensure_nightly() -> Result<()> {
    static DONE: OnceLock<Result<()>> = OnceLock::new();
    DONE.get_or_init(add_rust_src).clone()
}

fn add_rust_src() -> Result<()> {
    let mut rustup = Command::new("rustup");
    rustup.args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]);
    without_cargo_toolchain(&mut rustup);
    let output = rustup.output().map_err(|e| {
        Error::new(format!(
            "the std guests need rustup and the nightly toolchain, and rustup does not run \
             ({e}): install both with `{INSTALL_COMMAND}` after https://rustup.rs"
        ))
    })?;
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        if said.contains("downloading") {
            eprint!("{said}");
        }
        return Ok(());
    }
    Err(Error::new(missing_toolchain_reason(&said)))
}

/// The one line that says what rustup could not do and how to fix it.
fn missing_toolchain_reason(rustup_said: &str) -> String {
    let first_error = rustup_said
        .lines()
        .find(|line| line.contains("error"))
        .unwrap_or("rustup failed")
        .trim();
    if rustup_said.contains("not installed") || rustup_said.contains("not found") {
        format!(
            "the std guests need the nightly toolchain, which is not installed ({first_error}): \
             install it with `{INSTALL_COMMAND}`"
        )
    } else {
        format!(
            "the std guests need nightly's rust-src component and `rustup component add \
             rust-src --toolchain nightly` failed ({first_error}): run `{INSTALL_COMMAND}`"
        )
    }
}

/// The unit tests of the runtime (`images/std/hermit`) on Linux, with
/// the nightly toolchain; `test_words` go to the test binaries.
pub fn unit_tests(workspace: &Workspace, test_words: &[String]) -> Result<TestCounts> {
    ensure_nightly()?;
    let mut cargo = nightly_cargo(workspace);
    cargo.current_dir(std_workspace(workspace));
    crate::commands::run_cargo_test(cargo, &["--package", RUNTIME_PACKAGE], &[], test_words)
}

/// Checks that `dir` is a crate: a directory with a `Cargo.toml`.
pub fn check_crate_dir(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if manifest.is_file() {
        std::path::absolute(dir).map_err(|e| Error::new(format!("--app {}: {e}", dir.display())))
    } else {
        Err(Error::new(format!(
            "--app {}: no Cargo.toml there (give the directory of a crate with a main.rs)",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nightly_is_named_with_its_install_command() {
        let said = "error: toolchain 'nightly-x86_64-unknown-linux-gnu' is not installed\n";
        let reason = missing_toolchain_reason(said);
        assert!(
            reason.contains("nightly toolchain, which is not installed"),
            "{reason}"
        );
        assert!(reason.contains(INSTALL_COMMAND), "{reason}");
        assert!(!reason.contains('\n'));
        let reason = missing_toolchain_reason("error: could not download file\n");
        assert!(reason.contains("rust-src"), "{reason}");
        assert!(reason.contains(INSTALL_COMMAND), "{reason}");
    }

    #[test]
    fn the_apps_are_found_in_order() {
        let names = app_names(&Workspace::current());
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().any(|n| n == "threads-std"), "{names:?}");
    }
}
