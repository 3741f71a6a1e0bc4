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
//!    [`GUESTS`] order, so the same images make the same bytes.
//!
//! The host's reader is `host/src/archive.rs`.

use crate::artefacts::{self, KERNEL_TARGET, Profile};
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The packages whose binaries are the guests: the small guests, and the
/// guest OS (`images/os`).
const GUESTS_PACKAGES: [&str; 2] = ["guests", "os"];

/// Every guest, by name: the binary's name, the archive entry's name and
/// the name on the kernel command line.
pub const GUESTS: [&str; 8] = [
    "hello",
    "trap",
    "bench",
    "mm",
    "isolation",
    "fuzz",
    "devices",
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

/// Builds every guest and packs them; returns the archive's path.
pub fn build(workspace: &Workspace, profile: Profile) -> Result<PathBuf> {
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
    let images = GUESTS
        .iter()
        .map(|name| read(&dir.join(name)).map(|bytes| (*name, bytes)))
        .collect::<Result<Vec<_>>>()?;
    let archive = archive_path(workspace, profile);
    write_file(&archive, &pack(&images)?)?;
    Ok(archive)
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
            "cargo built the guests but {} cannot be read: {e}",
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
    fn guest_names_are_plain() {
        for bad in ["", "a/b", "two words", FORMAT_MARKER, &"x".repeat(101)] {
            assert!(pack(&[(bad, vec![])]).is_err(), "{bad:?}");
        }
        for name in GUESTS {
            assert!(check_name(name).is_ok());
        }
    }
}
