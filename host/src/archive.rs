//! The guest archive: the guest kernels a boot carries with it.
//!
//! Every boot path hands the host one boot module (QEMU's `-initrd`, a
//! GRUB `module2` line) holding the guests it may run. The format is a
//! plain POSIX `ustar` archive, so any `tar` can make or list one:
//!
//! - the first entry is named [`FORMAT_MARKER`] (`rguest-guests-v1`) and is
//!   empty: it says which version of this format follows, and a host
//!   refuses an archive without it;
//! - every other entry is one guest kernel, an ELF file, named by the name
//!   the command line uses for it (`guests=hello,...`).
//!
//! The bytes come from outside the host, so everything is checked and
//! nothing here can panic: a truncated or corrupt archive is an
//! [`ArchiveError`] with the reason.

use core::fmt;
use tar_no_std::TarArchiveRef;

/// The name of the first entry, which carries the format version.
pub const FORMAT_MARKER: &str = "rguest-guests-v1";

/// Why an archive was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveError {
    /// The bytes are not a `ustar` archive (or are cut short).
    Corrupt,
    /// The first entry is not the version marker.
    NoFormatMarker,
    /// An entry's name is not valid UTF-8 or is too long.
    BadName,
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt => {
                f.write_str("the guest archive is not a valid tar file (truncated or corrupt)")
            }
            Self::NoFormatMarker => write!(
                f,
                "the guest archive does not start with the `{FORMAT_MARKER}` entry: unknown format"
            ),
            Self::BadName => f.write_str("the guest archive has an entry with an unreadable name"),
        }
    }
}

/// A checked guest archive.
pub struct GuestArchive<'a> {
    tar: TarArchiveRef<'a>,
}

impl<'a> GuestArchive<'a> {
    /// Checks `bytes` and opens the archive.
    pub fn open(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        let tar = TarArchiveRef::new(bytes).map_err(|_| ArchiveError::Corrupt)?;
        let archive = Self { tar };
        let mut entries = archive.tar.entries();
        let first = entries.next().ok_or(ArchiveError::NoFormatMarker)?;
        match first.filename().as_str() {
            Ok(FORMAT_MARKER) => {}
            Ok(_) => return Err(ArchiveError::NoFormatMarker),
            Err(_) => return Err(ArchiveError::BadName),
        }
        for entry in entries {
            entry
                .filename()
                .as_str()
                .map_err(|_| ArchiveError::BadName)?;
        }
        Ok(archive)
    }

    /// The guest image named `name`.
    pub fn find(&self, name: &str) -> Option<&'a [u8]> {
        self.tar
            .entries()
            .skip(1)
            .find(|e| e.filename().as_str() == Ok(name))
            .map(|e| e.data())
    }

    /// The names of the guests in the archive, in archive order.
    pub fn names(&self) -> impl Iterator<Item = GuestName> + '_ {
        self.tar.entries().skip(1).map(|e| {
            let mut name = GuestName::default();
            name.set(e.filename().as_str().unwrap_or("?"));
            name
        })
    }
}

/// A guest's name, held inline (archive names are at most 100 bytes).
#[derive(Clone, Copy)]
pub struct GuestName {
    bytes: [u8; 100],
    len: usize,
}

impl Default for GuestName {
    fn default() -> Self {
        Self {
            bytes: [0; 100],
            len: 0,
        }
    }
}

impl GuestName {
    fn set(&mut self, name: &str) {
        let len = name.len().min(self.bytes.len());
        self.bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        self.len = len;
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl fmt::Display for GuestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A minimal ustar writer for the tests: 512-byte header, data padded
    /// to 512, two zero blocks at the end.
    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[100..108].copy_from_slice(b"0000644\0");
            header[108..116].copy_from_slice(b"0000000\0");
            header[116..124].copy_from_slice(b"0000000\0");
            let size = std::format!("{:011o}\0", data.len());
            header[124..136].copy_from_slice(size.as_bytes());
            header[136..148].copy_from_slice(b"00000000000\0");
            header[156] = b'0';
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
            let sum = std::format!("{sum:06o}\0 ");
            header[148..156].copy_from_slice(sum.as_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    #[test]
    fn finds_guests_by_name() {
        let bytes = tar(&[
            (FORMAT_MARKER, b""),
            ("hello", b"\x7fELF-hello"),
            ("trap", b"T"),
        ]);
        let archive = GuestArchive::open(&bytes).unwrap();
        assert_eq!(archive.find("hello"), Some(&b"\x7fELF-hello"[..]));
        assert_eq!(archive.find("trap"), Some(&b"T"[..]));
        assert_eq!(archive.find("nope"), None);
        assert_eq!(archive.find(FORMAT_MARKER), None);
        let names: Vec<_> = archive
            .names()
            .map(|n| std::string::String::from(n.as_str()))
            .collect();
        assert_eq!(names, ["hello", "trap"]);
    }

    #[test]
    fn refuses_an_archive_without_the_marker() {
        let bytes = tar(&[("hello", b"x")]);
        assert_eq!(
            GuestArchive::open(&bytes).err(),
            Some(ArchiveError::NoFormatMarker)
        );
    }

    #[test]
    fn refuses_garbage_and_truncation_without_panicking() {
        assert!(GuestArchive::open(&[]).is_err());
        assert!(GuestArchive::open(&[0x55; 700]).is_err());
        let bytes = tar(&[(FORMAT_MARKER, b""), ("hello", &[7u8; 3000])]);
        for cut in [0, 100, 511, 512, 700, 1024, 1500, 2000, 3000] {
            // Truncated archives are refused or, if the cut falls after
            // whole entries, read without panicking.
            if let Ok(archive) = GuestArchive::open(&bytes[..cut]) {
                let _ = archive.find("hello");
            }
        }
    }
}
