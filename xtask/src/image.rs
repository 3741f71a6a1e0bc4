//! `cargo xtask image`: the artefacts that boot rguest on machines that are
//! not `cargo xtask run`'s, all through GRUB and Multiboot2.
//!
//! Into `target/image/` go:
//!
//! - `host.iso`: a hybrid GRUB image (`grub-mkrescue`) for a CD or a USB
//!   stick, bootable under BIOS and UEFI;
//! - `host.img`: a raw GPT disk for a bare-metal disk or a cloud image
//!   (made in [`crate::disk`]), and with `--qcow2` the same as `host.qcow2`;
//! - `pxe/`: a TFTP root for network boot (`grub-mknetdir`), which
//!   [`crate::pxe`] serves.
//!
//! All three carry the same [`Payload`] at the same paths: the kernel ELF at
//! [`KERNEL_PATH`], the guest archive at [`GUESTS_PATH`] (the first
//! Multiboot2 module, as the PVH initrd is for `-kernel` boots), and one
//! `grub.cfg` ([`grub_cfg`]) whose only entry boots them at once on the
//! serial console: a server in a rack has nobody at its keyboard.

use crate::packages::{self, Requirement};
use crate::workspace::Workspace;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the kernel ELF is inside every image (and the TFTP root).
pub const KERNEL_PATH: &str = "boot/rguest";
/// Where the guest archive is inside every image.
pub const GUESTS_PATH: &str = "boot/guests.tar";
/// GRUB's directory inside every image: its `grub.cfg` and modules.
pub const GRUB_DIR: &str = "boot/grub";

/// The file names in `target/image/`.
pub const ISO_NAME: &str = "host.iso";
/// The raw disk image.
pub const DISK_NAME: &str = "host.img";
/// The disk image as qcow2 (`--qcow2`).
pub const QCOW2_NAME: &str = "host.qcow2";
/// The TFTP root.
pub const PXE_DIR_NAME: &str = "pxe";

/// The PXE boot files inside the TFTP root, as `grub-mknetdir` names them.
pub const PXE_BIOS_BOOT_FILE: &str = "boot/grub/i386-pc/core.0";
/// The UEFI one.
pub const PXE_UEFI_BOOT_FILE: &str = "boot/grub/x86_64-efi/core.efi";

/// Everything a GRUB-booted image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The guest archive; `None` boots the kernel without a module.
    pub guests: Option<PathBuf>,
    /// The kernel command line (the same default as `cargo xtask run`).
    pub cmdline: String,
}

/// What [`build_all`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The hybrid ISO.
    pub iso: PathBuf,
    /// The raw GPT disk image.
    pub disk: PathBuf,
    /// The qcow2 copy of the disk image, when asked for.
    pub qcow2: Option<PathBuf>,
    /// The TFTP root.
    pub pxe: PathBuf,
}

/// `target/image/`.
pub fn image_dir(workspace: &Workspace) -> PathBuf {
    workspace.target_dir.join("image")
}

/// Writes all three artefacts (and the qcow2 copy if `qcow2`) into `dir`.
pub fn build_all(payload: &Payload, dir: &Path, qcow2: bool) -> Result<Images> {
    let disk = dir.join(DISK_NAME);
    let images = Images {
        iso: build_iso(payload, &dir.join(ISO_NAME))?,
        disk: crate::disk::build(payload, &disk)?,
        qcow2: if qcow2 {
            Some(convert_to_qcow2(&disk, &dir.join(QCOW2_NAME))?)
        } else {
            None
        },
        pxe: build_pxe(payload, &dir.join(PXE_DIR_NAME))?,
    };
    Ok(images)
}

/// The one `grub.cfg` of every image: serial console at 115200 baud (the
/// kernel's own console is the same first serial port), no menu delay, and
/// one entry that loads the kernel with `cmdline` and the guest archive as
/// its first module.
pub fn grub_cfg(payload: &Payload) -> Result<String> {
    let mut kernel_line = format!("multiboot2 /{KERNEL_PATH}");
    for word in payload.cmdline.split_whitespace() {
        kernel_line.push(' ');
        kernel_line.push_str(&grub_quote(word)?);
    }
    let module_line = match payload.guests {
        Some(_) => format!("    module2 /{GUESTS_PATH}\n"),
        None => String::new(),
    };
    Ok(format!(
        "# rguest: written by `cargo xtask image`\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         set timeout=0\n\
         set default=0\n\
         menuentry \"rguest\" {{\n    {kernel_line}\n{module_line}    boot\n}}\n"
    ))
}

/// One command-line word as GRUB's script reads it: as it is when it holds
/// only characters GRUB gives no meaning to, otherwise in single quotes.
fn grub_quote(word: &str) -> Result<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "=,/:._-+@%".contains(c);
    if word.chars().all(plain) {
        return Ok(word.to_string());
    }
    if word.contains('\'') {
        return Err(Error::new(format!(
            "the command-line word `{word}` has a single quote, which GRUB's menu cannot carry"
        )));
    }
    Ok(format!("'{word}'"))
}

/// Copies the kernel, the guest archive and `grub.cfg` into `root`, at the
/// paths GRUB's menu entry names.
fn stage_payload(payload: &Payload, root: &Path) -> Result<()> {
    create_dir(&root.join(GRUB_DIR))?;
    copy(&payload.kernel, &root.join(KERNEL_PATH))?;
    if let Some(guests) = &payload.guests {
        copy(guests, &root.join(GUESTS_PATH))?;
    }
    write(&root.join(GRUB_DIR).join("grub.cfg"), &grub_cfg(payload)?)
}

/// Makes the hybrid ISO at `out` with `grub-mkrescue`: El Torito for BIOS,
/// an EFI system partition image for UEFI, and an MBR so that the same file
/// also boots written to a USB stick.
pub fn build_iso(payload: &Payload, out: &Path) -> Result<PathBuf> {
    packages::ensure_all(&[
        packages::GRUB_MKRESCUE,
        packages::GRUB_BIOS,
        packages::GRUB_EFI,
        packages::XORRISO,
        packages::MTOOLS,
    ])?;
    let staging = scratch_dir(out, "iso-root")?;
    stage_payload(payload, &staging)?;
    let mut mkrescue = Command::new("grub-mkrescue");
    mkrescue.arg("-o").arg(out).arg(&staging);
    run_quietly(&mut mkrescue, "grub-mkrescue")?;
    remove_dir(&staging)?;
    Ok(out.to_path_buf())
}

/// Makes the TFTP root `dir` with `grub-mknetdir`, once per platform: GRUB's
/// network boot images ([`PXE_BIOS_BOOT_FILE`], [`PXE_UEFI_BOOT_FILE`]) and
/// modules, beside the payload. Whatever `dir` held before goes.
pub fn build_pxe(payload: &Payload, dir: &Path) -> Result<PathBuf> {
    packages::ensure_all(&[
        packages::GRUB_MKNETDIR,
        packages::GRUB_BIOS,
        packages::GRUB_EFI,
    ])?;
    remove_dir(dir)?;
    create_dir(dir)?;
    for platform in [packages::GRUB_BIOS, packages::GRUB_EFI] {
        let mut mknetdir = Command::new("grub-mknetdir");
        mknetdir
            .arg(format!("--net-directory={}", dir.display()))
            .arg(format!("--subdir={GRUB_DIR}"))
            .arg("-d")
            .arg(grub_platform_dir(platform));
        run_quietly(&mut mknetdir, "grub-mknetdir")?;
    }
    // grub-mknetdir's per-platform grub.cfg reads boot/grub/grub.cfg: ours.
    stage_payload(payload, dir)?;
    Ok(dir.to_path_buf())
}

/// `/usr/lib/grub/<platform>`: the directory of the file that `platform`
/// names.
pub fn grub_platform_dir(platform: Requirement) -> &'static Path {
    Path::new(platform.name)
        .parent()
        .expect("GRUB requirements name a file inside the platform directory")
}

/// Writes `qcow2` from the raw image `raw` with `qemu-img`.
fn convert_to_qcow2(raw: &Path, qcow2: &Path) -> Result<PathBuf> {
    packages::ensure(packages::QEMU_IMG)?;
    let mut convert = Command::new("qemu-img");
    convert
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2);
    run_quietly(&mut convert, "qemu-img convert")?;
    Ok(qcow2.to_path_buf())
}

/// Runs a tool, keeping its chatter unless it fails: then the error carries
/// what it said.
pub fn run_quietly(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .map_err(|e| Error::new(format!("cannot start {what}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::new(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

/// A fresh, empty directory beside `out` for building it
/// (`.<out's name>.<what>`), so that building two images into two
/// directories at once never mixes them up.
pub fn scratch_dir(out: &Path, what: &str) -> Result<PathBuf> {
    let parent = out.parent().unwrap_or(Path::new("."));
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let dir = parent.join(format!(".{name}.{what}"));
    remove_dir(&dir)?;
    create_dir(&dir)?;
    Ok(dir)
}

pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))
}

pub(crate) fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::new(format!("cannot remove {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map(drop).map_err(|e| {
        Error::new(format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text)
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(cmdline: &str, guests: bool) -> Payload {
        Payload {
            kernel: "/k/rguest".into(),
            guests: guests.then(|| "/k/guests.tar".into()),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn the_menu_boots_the_kernel_with_the_command_line_and_the_guests() {
        let cfg = grub_cfg(&payload("guests=hello log=debug", true)).unwrap();
        assert!(cfg.contains("multiboot2 /boot/rguest guests=hello log=debug\n"));
        assert!(cfg.contains("module2 /boot/guests.tar\n"));
        for line in [
            "serial --unit=0 --speed=115200",
            "terminal_input serial",
            "terminal_output serial",
            "set timeout=0",
        ] {
            assert!(cfg.contains(line), "{line} missing from\n{cfg}");
        }
    }

    #[test]
    fn no_guests_means_no_module() {
        let cfg = grub_cfg(&payload("", false)).unwrap();
        assert!(cfg.contains("multiboot2 /boot/rguest\n"));
        assert!(!cfg.contains("module2"));
    }

    #[test]
    fn words_grub_would_misread_are_quoted_or_refused() {
        assert_eq!(
            grub_quote("guests=trap/cli:killed").unwrap(),
            "guests=trap/cli:killed"
        );
        assert_eq!(grub_quote("a;b").unwrap(), "'a;b'");
        assert_eq!(grub_quote("$x").unwrap(), "'$x'");
        assert!(grub_quote("it's").is_err());
    }

    #[test]
    fn scratch_directories_sit_beside_their_output() {
        let base = std::env::temp_dir().join(format!("rguest-scratch-{}", std::process::id()));
        let dir = scratch_dir(&base.join("host.iso"), "iso-root").unwrap();
        assert_eq!(dir, base.join(".host.iso.iso-root"));
        assert!(dir.is_dir());
        remove_dir(&base).unwrap();
    }
}
