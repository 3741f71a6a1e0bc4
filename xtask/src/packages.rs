//! Make sure the host tools are installed: QEMU and the files it needs.
//!
//! The README promises that `cargo xtask run` and `cargo xtask test` do all
//! the set-up on a fresh Debian machine, and CI is such a machine (running as
//! root, with no QEMU). So when a tool is missing and we are root on a system
//! with `apt-get`, we install its Debian package ourselves and say so in one
//! line. Otherwise we stop with one line naming the exact command to run:
//! installing software with someone else's `sudo` is not ours to do.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// Something on disk that a Debian package provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// A program looked up in `PATH` (`qemu-system-x86_64`), or an absolute
    /// path to a data file (`/usr/share/qemu/qboot.rom`).
    pub name: &'static str,
    /// The Debian package that ships it.
    pub debian_package: &'static str,
}

/// The emulator itself.
pub const QEMU: Requirement = Requirement {
    name: "qemu-system-x86_64",
    debian_package: "qemu-system-x86",
};

/// qboot, the minimal firmware that boots a PVH kernel fastest on a full PC
/// machine (Debian: `qemu-system-data`, a dependency of `qemu-system-x86`).
pub const QBOOT_ROM: Requirement = Requirement {
    name: "/usr/share/qemu/qboot.rom",
    debian_package: "qemu-system-data",
};

/// GRUB's tools: `grub-mkimage`, `grub-mkrescue`, `grub-mknetdir`.
pub const GRUB_MKIMAGE: Requirement = Requirement {
    name: "grub-mkimage",
    debian_package: "grub-common",
};

/// `grub-mkrescue`, which makes the hybrid ISO.
pub const GRUB_MKRESCUE: Requirement = Requirement {
    name: "grub-mkrescue",
    debian_package: "grub-common",
};

/// `grub-mknetdir`, which makes the PXE TFTP root.
pub const GRUB_MKNETDIR: Requirement = Requirement {
    name: "grub-mknetdir",
    debian_package: "grub-common",
};

/// GRUB's modules and boot sectors for BIOS machines (`i386-pc`).
pub const GRUB_BIOS: Requirement = Requirement {
    name: "/usr/lib/grub/i386-pc/boot.img",
    debian_package: "grub-pc-bin",
};

/// GRUB's modules for 64-bit UEFI machines (`x86_64-efi`).
pub const GRUB_EFI: Requirement = Requirement {
    name: "/usr/lib/grub/x86_64-efi/kernel.img",
    debian_package: "grub-efi-amd64-bin",
};

/// The ISO 9660 writer behind `grub-mkrescue`.
pub const XORRISO: Requirement = Requirement {
    name: "xorriso",
    debian_package: "xorriso",
};

/// FAT file systems without mounting them: the ISO's EFI image and the
/// disk's EFI system partition (`mformat`, `mmd`, `mcopy`).
pub const MTOOLS: Requirement = Requirement {
    name: "mformat",
    debian_package: "mtools",
};

/// Writes the disk image's GPT on a plain file (no loop device, no root).
pub const SGDISK: Requirement = Requirement {
    name: "/sbin/sgdisk",
    debian_package: "gdisk",
};

/// `qemu-img`, for `cargo xtask image --qcow2`.
pub const QEMU_IMG: Requirement = Requirement {
    name: "qemu-img",
    debian_package: "qemu-utils",
};

/// The DHCP and TFTP server of `cargo xtask pxe` (the binary alone: the
/// `dnsmasq` package would also start a system service).
pub const DNSMASQ: Requirement = Requirement {
    name: "/usr/sbin/dnsmasq",
    debian_package: "dnsmasq-base",
};

/// UEFI firmware for QEMU.
pub const OVMF: Requirement = Requirement {
    name: "/usr/share/ovmf/OVMF.fd",
    debian_package: "ovmf",
};

/// iPXE, QEMU's network boot ROM for its virtio NIC (BIOS and UEFI in one
/// file; QEMU looks for it in /usr/lib/ipxe/qemu on Debian).
pub const IPXE_ROM: Requirement = Requirement {
    name: "/usr/lib/ipxe/qemu/efi-virtio.rom",
    debian_package: "ipxe-qemu",
};

/// `ip`, for the network namespace and tap device of a PXE boot.
pub const IP: Requirement = Requirement {
    name: "/bin/ip",
    debian_package: "iproute2",
};

/// The debugger of `cargo xtask run --gdb` (the QEMU tests attach it).
pub const GDB: Requirement = Requirement {
    name: "gdb",
    debian_package: "gdb",
};

/// What the tests of the README's commands need besides [`BOOT_PATHS`]:
/// the debugger and `qemu-img`.
pub const README_TOOLS: [Requirement; 2] = [GDB, QEMU_IMG];

/// Everything the GRUB boot paths need: to make the three images, to serve
/// PXE, and to boot them under QEMU (UEFI firmware, network boot ROM).
/// `cargo xtask test` installs them before its QEMU tests start several
/// boots at once (two apt-gets at once would fight over dpkg's lock).
pub const BOOT_PATHS: [Requirement; 14] = [
    GRUB_MKIMAGE,
    GRUB_MKRESCUE,
    GRUB_MKNETDIR,
    GRUB_BIOS,
    GRUB_EFI,
    XORRISO,
    MTOOLS,
    SGDISK,
    DNSMASQ,
    OVMF,
    IPXE_ROM,
    IP,
    QEMU,
    QBOOT_ROM,
];

/// Makes sure every one of `requirements` is present: whatever is missing
/// is named in one line and installed with one `apt-get install`, or, when
/// we may not install, named in one error line with the command that would.
pub fn ensure_all(requirements: &[Requirement]) -> Result<()> {
    let missing: Vec<Requirement> = requirements
        .iter()
        .copied()
        .filter(|r| locate(r.name).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|r| r.debian_package).collect();
    packages.dedup();
    let names: Vec<&str> = missing.iter().map(|r| r.name).collect();
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root() || locate("apt-get").is_none() {
        return Err(Error::new(format!(
            "missing: {}; install the Debian packages with: sudo {command}",
            names.join(", ")
        )));
    }
    eprintln!(
        "xtask: missing {}; installing the Debian packages ({command})",
        names.join(", ")
    );
    apt_get_update_once()?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&packages);
    apt_get(&args)?;
    match missing.iter().find(|r| locate(r.name).is_none()) {
        Some(still) => Err(Error::new(format!(
            "installed {} but {} is still missing",
            still.debian_package, still.name
        ))),
        None => Ok(()),
    }
}

/// Makes sure `requirement` is present, installing its package when we may.
/// Returns where it is.
pub fn ensure(requirement: Requirement) -> Result<PathBuf> {
    ensure_all(&[requirement])?;
    locate(requirement.name)
        .ok_or_else(|| Error::new(format!("{} is missing after its install", requirement.name)))
}

/// A program in `PATH`, or an absolute path that exists.
fn locate(name: &str) -> Option<PathBuf> {
    if Path::new(name).is_absolute() {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether we run as root (may install packages, make network namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh machine's package lists may be empty or stale; refresh them
/// before the first install, and only then.
fn apt_get_update_once() -> Result<()> {
    static UPDATED: Once = Once::new();
    let mut result = Ok(());
    UPDATED.call_once(|| result = apt_get(&["update"]));
    result
}

fn apt_get(args: &[&str]) -> Result<()> {
    let output = Command::new("apt-get")
        .arg("-q")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| Error::new(format!("cannot run apt-get: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::new(format!(
        "`apt-get {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_and_files_by_absolute_path() {
        assert!(locate("sh").is_some());
        assert!(locate("/").is_some());
        assert!(locate("surely-no-such-program-here").is_none());
        assert!(locate("/surely/no/such/file").is_none());
    }

    #[test]
    fn a_present_requirement_needs_no_install() {
        let sh = Requirement {
            name: "sh",
            debian_package: "dash",
        };
        assert!(ensure(sh).is_ok());
    }
}
