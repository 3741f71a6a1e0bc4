//! Building what QEMU boots: the kernel ELF, and (through [`crate::guests`])
//! the guest archive.
//!
//! The kernel is a member of the workspace but not a default member: it
//! builds only for `x86_64-unknown-none`, so plain `cargo build` on Linux
//! skips it and we build it here with the target named explicitly.

use crate::toolchain;
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::path::PathBuf;
use std::process::Command;

/// The bare-metal target the kernel is built for.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// The kernel's package and binary names.
const KERNEL_PACKAGE: &str = "kernel";
const KERNEL_BINARY: &str = "rguest";

/// Which cargo profile to build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Optimised, with line tables (the default: TCG runs it much faster).
    #[default]
    Release,
    /// cargo's `dev` profile: unoptimised, full debug info.
    Debug,
}

impl Profile {
    /// The directory cargo writes this profile's output to.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Debug => "debug",
        }
    }
}

/// Where the kernel ELF of `profile` is (built or not).
pub fn kernel_path(workspace: &Workspace, profile: Profile) -> PathBuf {
    workspace
        .target_dir
        .join(KERNEL_TARGET)
        .join(profile.dir_name())
        .join(KERNEL_BINARY)
}

/// Where the bootable artefacts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The guest archive (QEMU's `-initrd`).
    pub guests: PathBuf,
}

/// Builds every bootable artefact: the kernel ELF and the guest archive.
pub fn build_all(workspace: &Workspace, profile: Profile) -> Result<Built> {
    Ok(Built {
        kernel: build_kernel(workspace, profile)?,
        guests: crate::guests::build(workspace, profile)?,
    })
}

/// Builds the kernel ELF with cargo (its output goes straight to our
/// terminal) and returns its path.
pub fn build_kernel(workspace: &Workspace, profile: Profile) -> Result<PathBuf> {
    toolchain::ensure_complete(workspace)?;
    let mut cargo = cargo(workspace);
    cargo.args([
        "build",
        "--package",
        KERNEL_PACKAGE,
        "--target",
        KERNEL_TARGET,
    ]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    run_to_completion(&mut cargo, "building the kernel")?;
    let elf = kernel_path(workspace, profile);
    if !elf.is_file() {
        return Err(Error::new(format!(
            "cargo built the kernel but {} is missing",
            elf.display()
        )));
    }
    Ok(elf)
}

/// A `cargo` command in the workspace root, using the same cargo that runs
/// us (cargo sets `CARGO` for the programs it starts).
pub fn cargo(workspace: &Workspace) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(&workspace.root);
    command
}

/// Runs `command` with its output on our terminal; a failure is an error
/// that says what we were `doing`.
pub fn run_to_completion(command: &mut Command, doing: &str) -> Result<()> {
    let status = command
        .status()
        .map_err(|e| Error::new(format!("{doing}: cannot start {command:?}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("{doing} failed ({status})")))
    }
}
