//! `cargo xtask`: the one entry point for people and CI.
//!
//! Everything a person or a CI machine does with rguest goes through here:
//! build the kernel ELF, boot it under QEMU, run the tests. The binary
//! (`main.rs`) only parses the command line; the work lives in this library
//! so that the QEMU integration tests in `tests/` boot the kernel with
//! exactly the same QEMU command line, time limit and exit-status rules as
//! `cargo xtask run` does.
//!
//! The modules, in the order a run needs them:
//!
//! - [`workspace`]: where the workspace and its `target/` directory are;
//! - [`toolchain`]: make sure rustup has the pinned toolchain, its targets
//!   and components (these machines do not fetch them by themselves);
//! - [`packages`]: make sure QEMU and friends are installed (installing the
//!   Debian package when we are root, or saying the exact command);
//! - [`artefacts`]: build the kernel ELF with cargo;
//! - [`guests`]: build the guest images and pack them into the guest
//!   archive (format described there), which QEMU passes as `-initrd`;
//! - [`std_guests`]: build the Rust `std` programs of `images/std/apps/`
//!   (nightly, the Hermit target, our runtime), packed beside them;
//! - [`app`]: `cargo xtask run --app PATH`: a user's std crate, Hermit
//!   application or plain Linux crate, built against our runtime;
//! - [`qemu`]: the QEMU command line: accelerator, firmware, devices;
//! - [`session`]: run QEMU under a time limit, capture the serial console,
//!   and turn QEMU's exit status into an [`session::Outcome`];
//! - [`image`], [`disk`]: the GRUB artefacts of `cargo xtask image` (ISO,
//!   GPT disk, PXE TFTP root);
//! - [`netns`], [`pxe`]: network namespaces and the DHCP/TFTP server of
//!   `cargo xtask pxe` and of PXE boots under QEMU;
//! - [`bootpath`]: the seven ways in (`--boot`), each an artefact, a
//!   firmware and a QEMU boot device;
//! - [`cli`]: the `cargo xtask` command line;
//! - [`commands`]: `build`, `run`, `test`, `boot-times`, `image` and
//!   `pxe`, built from the
//!   above;
//! - [`bench`]: `cargo xtask bench`, boots that measure, twice each (plain
//!   and with instruction counting), and the table and JSON they make.
//! - [`fuzz`]: `cargo xtask fuzz`, the `fuzz` guest over many seeds, each
//!   boot judged on the host's health and on how every fuzzer ended.

pub mod app;
pub mod artefacts;
pub mod bench;
pub mod bootpath;
pub mod cli;
pub mod commands;
pub mod disk;
pub mod fuzz;
pub mod guests;
pub mod image;
pub mod net_bench;
pub mod netns;
pub mod outside_bench;
pub mod packages;
pub mod pxe;
pub mod qemu;
pub mod session;
pub mod smp_bench;
pub mod std_guests;
pub mod toolchain;
pub mod workspace;

/// What can go wrong in an xtask step: a one-line, human-readable reason.
///
/// xtask prints it as `xtask: <reason>` and exits non-zero; there is nothing
/// a caller could do with a richer type, and a sentence is what a person
/// needs to fix the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    /// An error with the given explanation.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result type of every xtask step.
pub type Result<T> = std::result::Result<T, Error>;
