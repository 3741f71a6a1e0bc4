//! The guests: building their ELF images and packing them into the guest
//! archive that QEMU hands the host as `-initrd`.
//!
//! The guests live in `images/` (see `images/README.md`): the runtime
//! `guest-rt` and one binary per guest in the `guests` package. Like the
//! kernel they build only for `x86_64-unknown-none`; unlike it, cargo runs
//! for them in `images/`, so that `images/.cargo/config.toml` adds their
//! code-generation flags (RIP-relative code: the image lives at
//! `0xffff_8000_0010_0000`, beyond the reach of 32-bit absolute addresses).
//! The output still goes to the workspace's `target/`.
//!
//! The Rust `std` programs of `images/std/apps/` are guests too, built by
//! [`crate::std_guests`] with nightly for the Hermit target and packed
//! after the classic ones, in name order. `cargo xtask build` (and so
//! `test`, `bench`, `image`) fails without the nightly toolchain they need
//! ([`StdGuests::Required`]): the test suite runs them. `cargo xtask run`
//! asks for them only when its command line names one
//! ([`StdGuests::IfToolchain`]): otherwise a missing nightly costs a loud
//! warning and an archive without them, and the default guest still runs.
//!
//! # The archive, format v1
//!
//! One POSIX `ustar` file, `target/x86_64-unknown-none/<profile>/guests.tar`:
//!
//! 1. first, an empty regular file named [`FORMAT_MARKER`]
//!    (`rguest-guests-v1`): the format and its version. The host refuses an
//!    archive that does not start with the marker it knows, so a future
//!    format is refused loudly rather than misread;
//! 2. then one regular file per guest, holding its ELF image, named by the
//!    guest's name on the kernel command line (`guests=hello`): no
//!    directories, no paths;
//! 3. every entry with mode 0644, owner 0 and modification time 0, in
//!    [`GUESTS`] order, then the std guests in name order, so the same
//!    images make the same bytes.
//!
//! The host's reader is `host/src/archive.rs`.

use crate::app::BuiltApp;
use crate::artefacts::{self, KERNEL_TARGET, Profile};
use crate::std_guests::Unbuildable;
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The packages whose binaries are the guests: the small guests, and the
/// guest OS (`images/os`).
const GUESTS_PACKAGES: [&str; 2] = ["guests", "os"];

/// Every guest, by name: the binary's name, the archive entry's name and
/// the name on the kernel command line.
pub const GUESTS: [&str; 9] = [
    "hello",
    "trap",
    "bench",
    "mm",
    "isolation",
    "fuzz",
    "devices",
    "smp",
    "os",
];

/// The name of the archive's first, empty entry.
pub const FORMAT_MARKER: &str = "rguest-guests-v1";

/// The archive's file name, next to the kernel ELF.
const ARCHIVE_NAME: &str = "guests.tar";

/// Where the guest archive of `profile` is (built or not).
pub fn archive_path(workspace: &Workspace, profile: Profile) -> PathBuf {
    output_dir(workspace, profile).join(ARCHIVE_NAME)
}

/// Where cargo puts the guests' ELF files.
fn output_dir(workspace: &Workspace, profile: Profile) -> PathBuf {
    workspace
        .target_dir
        .join(KERNEL_TARGET)
        .join(profile.dir_name())
}

/// Whether the archive must hold the std guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdGuests {
    /// Fail when they cannot be built, the toolchain missing included.
    Required,
    /// Leave them out, with a warning, when the nightly toolchain they
    /// need is missing; any other failure still fails.
    IfToolchain,
}

/// Builds every guest, the std guests included, and packs them; returns
/// the archive's path.
pub fn build(workspace: &Workspace, profile: Profile) -> Result<PathBuf> {
    build_with(workspace, profile, StdGuests::Required)
}

/// Builds the classic guests and, as `std_guests` says, the std guests,
/// and packs them; returns the archive's path.
pub fn build_with(
    workspace: &Workspace,
    profile: Profile,
    std_guests: StdGuests,
) -> Result<PathBuf> {
    let mut images = build_classic(workspace, profile)?;
    match (crate::std_guests::build_apps(workspace), std_guests) {
        (Ok(built), _) => {
            for (name, elf) in built {
                images.push((name, read(&elf)?));
            }
        }
        (Err(Unbuildable::Toolchain(reason)), StdGuests::IfToolchain) => {
            eprintln!(
                "xtask: WARNING: the guest archive has no std guests ({}): {reason}",
                crate::std_guests::app_names(workspace).join(", ")
            );
        }
        (Err(why), _) => return Err(why.into()),
    }
    write_archive(&archive_path(workspace, profile), &images)
}

/// Builds the classic guests and packs them with `app` (a user's crate of
/// `cargo xtask run --app`) into an archive of the app's own,
/// `target/hermit-apps/<name>/guests.tar`; returns its path.
pub fn build_with_app(workspace: &Workspace, profile: Profile, app: &BuiltApp) -> Result<PathBuf> {
    if GUESTS.contains(&app.name.as_str()) {
        return Err(Error::new(format!(
            "--app: the binary `{}` has the name of a built-in guest; rename it",
            app.name
        )));
    }
    let mut images = build_classic(workspace, profile)?;
    images.push((app.name.clone(), read(&app.elf)?));
    let archive = crate::app::app_dir(workspace, &app.name).join(ARCHIVE_NAME);
    write_archive(&archive, &images)
}

/// Builds the classic guests (`images/guests`, `images/os`) and reads
/// their ELF files, in [`GUESTS`] order.
fn build_classic(workspace: &Workspace, profile: Profile) -> Result<Vec<(String, Vec<u8>)>> {
    crate::toolchain::ensure_complete(workspace)?;
    let mut cargo = artefacts::cargo(workspace);
    // In images/, for images/.cargo/config.toml (see the module docs). The
    // target directory is named, or cargo would use images/target.
    cargo.current_dir(workspace.root.join("images"));
    cargo.env("CARGO_TARGET_DIR", &workspace.target_dir);
    cargo.arg("build");
    for package in GUESTS_PACKAGES {
        cargo.args(["--package", package]);
    }
    cargo.args(["--target", KERNEL_TARGET]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    artefacts::run_to_completion(&mut cargo, "building the guests")?;
    let dir = output_dir(workspace, profile);
    GUESTS
        .iter()
        .map(|name| read(&dir.join(name)).map(|bytes| (name.to_string(), bytes)))
        .collect()
}

/// Packs `images` and writes the archive to `path`; returns `path`.
fn write_archive(path: &Path, images: &[(String, Vec<u8>)]) -> Result<PathBuf> {
    let named: Vec<(&str, Vec<u8>)> = images
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.clone()))
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_file(path, &pack(&named)?)?;
    Ok(path.to_path_buf())
}

/// The archive holding `images` (name, ELF bytes), in that order.
pub fn pack(images: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, FORMAT_MARKER, &[])?;
    for (name, bytes) in images {
        check_name(name)?;
        append(&mut builder, name, bytes)?;
    }
    builder
        .into_inner()
        .map_err(|e| Error::new(format!("packing the guests: {e}")))
}

/// The guests of an archive made by [`pack`], marker left out: each
/// entry's name and bytes, in order (for tests that make broken archives
/// from a good one).
pub fn unpack(archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let broken = |e: std::io::Error| Error::new(format!("reading a guest archive: {e}"));
    let mut reader = tar::Archive::new(archive);
    let mut images = Vec::new();
    for entry in reader.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let name = entry.path().map_err(broken)?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(broken)?;
        if name != FORMAT_MARKER {
            images.push((name, bytes));
        }
    }
    Ok(images)
}

/// A guest's name must fit a ustar name field and be a plain file name
/// that the kernel command line can carry.
fn check_name(name: &str) -> Result<()> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if name.is_empty() || name.len() > 100 || !plain || name == FORMAT_MARKER {
        return Err(Error::new(format!(
            "`{name}` cannot be a guest's name (letters, digits, - and _ only)"
        )));
    }
    Ok(())
}

/// Appends one regular file with a reproducible header.
fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(&mut header, name, bytes)
        .map_err(|e| Error::new(format!("packing guest `{name}`: {e}")))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(format!(
            "the guests were built but {} cannot be read: {e}",
            path.display()
        ))
    })
}

/// Writes `bytes` to `path` whole or not at all: into a file of its own
/// beside it, then renamed over it. A QEMU that opens the archive while a
/// build rewrites it (a test booting while `cargo xtask build` runs) gets
/// the old archive or the new one, never one cut short: which of the two
/// depends on timing, whether it is whole does not.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(format!(".{}.tmp", std::process::id()));
    let scratch = PathBuf::from(scratch);
    std::fs::write(&scratch, bytes)
        .and_then(|()| std::fs::rename(&scratch, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&scratch);
            Error::new(format!("cannot write {}: {e}", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(archive: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().to_string_lossy().into_owned();
                let kind = entry.header().entry_type();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                (name, kind, bytes)
            })
            .collect()
    }

    #[test]
    fn the_marker_comes_first_then_the_guests_in_order() {
        let archive = pack(&[("hello", b"\x7fELF one".to_vec()), ("trap", vec![7; 1000])]).unwrap();
        let found = entries(&archive);
        let names: Vec<&str> = found.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, [FORMAT_MARKER, "hello", "trap"]);
        assert!(
            found
                .iter()
                .all(|(_, kind, _)| *kind == tar::EntryType::Regular)
        );
        assert!(found[0].2.is_empty());
        assert_eq!(found[1].2, b"\x7fELF one");
        assert_eq!(found[2].2, vec![7; 1000]);
    }

    #[test]
    fn the_archive_is_ustar_and_reproducible() {
        let images = [("bench", vec![1, 2, 3])];
        let archive = pack(&images).unwrap();
        assert_eq!(archive, pack(&images).unwrap());
        // The ustar magic and version of the first header.
        assert_eq!(&archive[257..265], b"ustar\x0000");
        assert_eq!(archive.len() % 512, 0);
    }

    #[test]
    fn unpack_gives_back_what_pack_packed() {
        let images = [("hello", vec![1u8; 700]), ("threads-std", vec![2u8; 3])];
        let unpacked = unpack(&pack(&images).unwrap()).unwrap();
        let expected: Vec<(String, Vec<u8>)> = images
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect();
        assert_eq!(unpacked, expected);
    }

    #[test]
    fn guest_names_are_plain() {
        for bad in ["", "a/b", "two words", FORMAT_MARKER, &"x".repeat(101)] {
            assert!(pack(&[(bad, vec![])]).is_err(), "{bad:?}");
        }
        for name in GUESTS {
            assert!(check_name(name).is_ok());
        }
    }
}
