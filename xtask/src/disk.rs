//! `host.img`: a raw GPT disk that boots rguest under BIOS and UEFI, for
//! writing onto a bare-metal disk (`dd`) or importing as a cloud image.
//!
//! The layout, in 512-byte sectors:
//!
//! | sectors | what |
//! | --- | --- |
//! | 0 | protective MBR, with GRUB's `boot.img` as its boot code (BIOS) |
//! | 1-33 | the GPT header and partition entries |
//! | 2048-4095 | partition 1, "BIOS boot" (`EF02`): GRUB's `core.img` |
//! | 4096-135167 | partition 2, the EFI system partition (`EF00`): FAT32 holding `EFI/BOOT/BOOTX64.EFI`, `boot/grub/grub.cfg`, the kernel and the guest archive |
//! | last 33 | the backup GPT |
//!
//! Everything is made on plain files, without loop devices or mounts (so
//! without root): `grub-mkimage` makes both GRUBs, `mtools` the FAT file
//! system, `sgdisk` the partition table; then we do by hand the two things
//! `grub-install` would do on a real disk: put `core.img` into the BIOS boot
//! partition and write `boot.img` into the MBR, each patched with the sector
//! it must load next.
//!
//! Both GRUBs start with the same embedded configuration: find the
//! partition that holds the kernel (a server may have other disks, so no
//! fixed `hd0`), make its `boot/grub` the prefix, and read `grub.cfg`
//! there, the same file the ISO and the PXE tree use.

use crate::image::{self, GRUB_DIR, GUESTS_PATH, KERNEL_PATH, Payload};
use crate::packages;
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: u64 = 512;
const MIB_SECTORS: u64 = (1 << 20) / SECTOR;

/// Partition 1, GRUB's BIOS boot partition: 1 MiB from 1 MiB.
const BIOS_BOOT_START: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = MIB_SECTORS;
/// Partition 2, the EFI system partition: 64 MiB from 2 MiB. 64 MiB is
/// enough sectors for FAT32 (which UEFI firmware must read; some refuse
/// FAT16) with 512-byte clusters.
const ESP_START: u64 = BIOS_BOOT_START + BIOS_BOOT_SECTORS;
const ESP_SECTORS: u64 = 64 * MIB_SECTORS;
/// The whole disk: the partitions, then 1 MiB for the backup GPT.
const DISK_SECTORS: u64 = ESP_START + ESP_SECTORS + MIB_SECTORS;

// The layout's promises, checked when xtask compiles: partitions on MiB
// boundaries, room for the backup GPT (33 sectors), and enough one-sector
// clusters for FAT32 (at least 65525, plus the FATs and reserved sectors).
const _: () =
    assert!(BIOS_BOOT_START.is_multiple_of(MIB_SECTORS) && ESP_START.is_multiple_of(MIB_SECTORS));
const _: () = assert!(DISK_SECTORS - (ESP_START + ESP_SECTORS) >= 33);
const _: () = assert!(ESP_SECTORS > 65525 + 1024);

/// The FAT volume's serial number, "RGUE", and its label.
const ESP_SERIAL: &str = "52475545";
const ESP_LABEL: &str = "RGUEST";

/// GRUB modules both GRUBs carry: partition tables, FAT, the menu, the
/// search for our partition, Multiboot2, the serial console.
const GRUB_MODULES: [&str; 12] = [
    "part_gpt",
    "part_msdos",
    "fat",
    "normal",
    "configfile",
    "search",
    "search_fs_file",
    "multiboot2",
    "serial",
    "terminal",
    "echo",
    "test",
];

/// In `boot.img` (GRUB's `boot/i386/pc/boot.S`): the 64-bit LBA of the first
/// sector of `core.img`, and the two bytes of a jump that works around BIOSes
/// passing a bad boot drive (`grub-bios-setup` turns it into two `nop`s
/// for hard disks).
const BOOT_IMG_KERNEL_SECTOR: usize = 0x5c;
const BOOT_IMG_DRIVE_CHECK: usize = 0x66;
/// The MBR's boot code ends where the disk signature and partition table
/// begin; `boot.img` must not overwrite those.
const MBR_CODE_LEN: usize = 440;
/// In `core.img`'s first sector (`diskboot.img`): the first blocklist entry
/// (LBA of the rest of `core.img`, 8 bytes) sits 12 bytes before the end.
const DISKBOOT_BLOCKLIST: u64 = SECTOR - 12;
/// Its default, the sector after a `core.img` at sector 1.
const DISKBOOT_DEFAULT_START: u64 = 2;

/// Writes the disk image to `out`.
pub fn build(payload: &Payload, out: &Path) -> Result<PathBuf> {
    packages::ensure_all(&[
        packages::GRUB_MKIMAGE,
        packages::GRUB_BIOS,
        packages::GRUB_EFI,
        packages::MTOOLS,
        packages::SGDISK,
    ])?;
    let work = image::scratch_dir(out, "parts")?;
    let early_cfg = work.join("early.cfg");
    image::write(&early_cfg, &early_config())?;
    let core = make_grub(&early_cfg, &work.join("core.img"), Platform::Bios)?;
    let efi = make_grub(&early_cfg, &work.join("bootx64.efi"), Platform::Uefi)?;
    let esp = make_esp(payload, &efi, &work.join("esp.img"))?;

    create_sparse(out, DISK_SECTORS * SECTOR)?;
    partition(out)?;
    write_sparse_at(out, ESP_START, &read(&esp)?)?;
    install_bios_grub(out, &read(&core)?)?;
    image::remove_dir(&work)?;
    Ok(out.to_path_buf())
}

/// The configuration built into both GRUBs (see the module docs).
fn early_config() -> String {
    format!(
        "search --no-floppy --file --set=root /{KERNEL_PATH}\n\
         set prefix=($root)/{GRUB_DIR}\n"
    )
}

#[derive(Clone, Copy)]
enum Platform {
    Bios,
    Uefi,
}

/// `grub-mkimage` for one platform: the BIOS `core.img` (with the BIOS
/// disk driver) or the UEFI `BOOTX64.EFI`, each with every module it needs
/// built in, so it never loads one from the disk.
fn make_grub(early_cfg: &Path, out: &Path, platform: Platform) -> Result<PathBuf> {
    let (format, dir, extra) = match platform {
        Platform::Bios => ("i386-pc", packages::GRUB_BIOS, Some("biosdisk")),
        Platform::Uefi => ("x86_64-efi", packages::GRUB_EFI, None),
    };
    let mut mkimage = Command::new("grub-mkimage");
    mkimage
        .args(["-O", format, "-p", &format!("/{GRUB_DIR}")])
        .arg("-d")
        .arg(image::grub_platform_dir(dir))
        .arg("-c")
        .arg(early_cfg)
        .arg("-o")
        .arg(out)
        .args(GRUB_MODULES)
        .args(extra);
    image::run_quietly(&mut mkimage, "grub-mkimage")?;
    Ok(out.to_path_buf())
}

/// The EFI system partition as a FAT32 image file, filled with `mtools`.
fn make_esp(payload: &Payload, efi_grub: &Path, out: &Path) -> Result<PathBuf> {
    create_sparse(out, ESP_SECTORS * SECTOR)?;
    let mut mformat = mtools("mformat", out);
    mformat
        .args(["-F", "-v", ESP_LABEL, "-N", ESP_SERIAL])
        // Hidden sectors: where the partition starts on the disk, as a
        // FAT boot sector on a real partition says.
        .args(["-H", &ESP_START.to_string(), "::"]);
    image::run_quietly(&mut mformat, "mformat")?;
    let mut mmd = mtools("mmd", out);
    mmd.args([
        "::/EFI",
        "::/EFI/BOOT",
        "::/boot",
        &format!("::/{GRUB_DIR}"),
    ]);
    image::run_quietly(&mut mmd, "mmd")?;

    let staging = image::scratch_dir(out, "files")?;
    let cfg = staging.join("grub.cfg");
    image::write(&cfg, &image::grub_cfg(payload)?)?;
    let mut files = vec![
        (efi_grub.to_path_buf(), "EFI/BOOT/BOOTX64.EFI".to_string()),
        (payload.kernel.clone(), KERNEL_PATH.to_string()),
        (cfg, format!("{GRUB_DIR}/grub.cfg")),
    ];
    if let Some(guests) = &payload.guests {
        files.push((guests.clone(), GUESTS_PATH.to_string()));
    }
    for (from, to) in files {
        let mut mcopy = mtools("mcopy", out);
        mcopy.arg(&from).arg(format!("::/{to}"));
        image::run_quietly(&mut mcopy, "mcopy")?;
    }
    image::remove_dir(&staging)?;
    Ok(out.to_path_buf())
}

/// An mtools command on the FAT image `fat`.
fn mtools(program: &str, fat: &Path) -> Command {
    let mut command = Command::new(program);
    command.arg("-i").arg(fat);
    // No ~/.mtoolsrc may change the image: the same image everywhere.
    command.env("MTOOLSRC", "/dev/null");
    command
}

/// Writes the GPT: the two partitions with their type codes and names.
fn partition(disk: &Path) -> Result<()> {
    let bios_end = BIOS_BOOT_START + BIOS_BOOT_SECTORS - 1;
    let esp_end = ESP_START + ESP_SECTORS - 1;
    let mut sgdisk = Command::new(packages::SGDISK.name);
    sgdisk
        .args(["--clear", "--set-alignment=2048"])
        .arg(format!("--new=1:{BIOS_BOOT_START}:{bios_end}"))
        .args(["--typecode=1:EF02", "--change-name=1:BIOS boot"])
        .arg(format!("--new=2:{ESP_START}:{esp_end}"))
        .args(["--typecode=2:EF00", "--change-name=2:EFI system"])
        .arg(disk);
    image::run_quietly(&mut sgdisk, "sgdisk")
}

/// Does what `grub-bios-setup` does: `core.img` into the BIOS boot
/// partition, its first sector told where the rest is, and `boot.img` into
/// the MBR's boot code, told where `core.img` is.
fn install_bios_grub(disk: &Path, core: &[u8]) -> Result<()> {
    if core.len() as u64 > BIOS_BOOT_SECTORS * SECTOR {
        return Err(Error::new(format!(
            "GRUB's core.img ({} bytes) does not fit the 1 MiB BIOS boot partition",
            core.len()
        )));
    }
    let core = patch_core(core, BIOS_BOOT_START)?;
    write_at(disk, BIOS_BOOT_START, &core)?;
    let boot_img = grub_boot_img()?;
    let mbr_code = patch_boot_img(&boot_img, BIOS_BOOT_START)?;
    write_at(disk, 0, &mbr_code)
}

/// `core.img` with its blocklist pointing at the sector after `at`.
fn patch_core(core: &[u8], at: u64) -> Result<Vec<u8>> {
    let mut core = core.to_vec();
    let field = DISKBOOT_BLOCKLIST as usize..DISKBOOT_BLOCKLIST as usize + 8;
    let default = core
        .get(field.clone())
        .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")));
    if default != Some(DISKBOOT_DEFAULT_START) {
        return Err(Error::new(
            "GRUB's core.img does not start with the diskboot sector this installer knows",
        ));
    }
    core[field].copy_from_slice(&(at + 1).to_le_bytes());
    Ok(core)
}

/// The MBR boot code: `boot.img`'s first 440 bytes, told to load `core.img`
/// from sector `core_at` and to trust the BIOS's boot drive.
fn patch_boot_img(boot_img: &[u8], core_at: u64) -> Result<Vec<u8>> {
    if boot_img.len() != SECTOR as usize {
        return Err(Error::new(format!(
            "GRUB's boot.img is {} bytes, not one sector",
            boot_img.len()
        )));
    }
    let mut code = boot_img[..MBR_CODE_LEN].to_vec();
    code[BOOT_IMG_KERNEL_SECTOR..BOOT_IMG_KERNEL_SECTOR + 8]
        .copy_from_slice(&core_at.to_le_bytes());
    code[BOOT_IMG_DRIVE_CHECK..BOOT_IMG_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(code)
}

fn grub_boot_img() -> Result<Vec<u8>> {
    read(Path::new(packages::GRUB_BIOS.name))
}

/// Like [`write_at`] into a fresh sparse file, but skips the all-zero
/// stretches (most of an empty FAT), so the image stays sparse on disk.
fn write_sparse_at(disk: &Path, lba: u64, bytes: &[u8]) -> Result<()> {
    const CHUNK: usize = 64 * 1024;
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            write_at(disk, lba + (i * CHUNK) as u64 / SECTOR, chunk)?;
        }
    }
    Ok(())
}

fn create_sparse(path: &Path, len: u64) -> Result<()> {
    File::create(path)
        .and_then(|file| file.set_len(len))
        .map_err(|e| Error::new(format!("cannot create {}: {e}", path.display())))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    Ok(bytes)
}

/// Writes `bytes` into `disk` from sector `lba` on.
fn write_at(disk: &Path, lba: u64, bytes: &[u8]) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(disk)
        .and_then(|mut file| {
            file.seek(SeekFrom::Start(lba * SECTOR))?;
            file.write_all(bytes)
        })
        .map_err(|e| Error::new(format!("cannot write {}: {e}", disk.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_img_is_told_where_its_second_sector_is() {
        let mut core = vec![0u8; 1024];
        core[DISKBOOT_BLOCKLIST as usize] = DISKBOOT_DEFAULT_START as u8;
        let patched = patch_core(&core, 2048).unwrap();
        let field = &patched[DISKBOOT_BLOCKLIST as usize..][..8];
        assert_eq!(u64::from_le_bytes(field.try_into().unwrap()), 2049);
        assert!(patch_core(&[0u8; 1024], 2048).is_err());
    }

    #[test]
    fn boot_img_is_told_where_core_img_is_and_keeps_the_partition_table_out() {
        let boot = vec![0xccu8; 512];
        let code = patch_boot_img(&boot, 2048).unwrap();
        assert_eq!(code.len(), MBR_CODE_LEN);
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
        assert!(patch_boot_img(&boot[..100], 2048).is_err());
    }

    #[test]
    fn the_early_config_finds_the_kernel_partition() {
        let cfg = early_config();
        assert!(cfg.contains("--file --set=root /boot/rguest"));
        assert!(cfg.contains("set prefix=($root)/boot/grub"));
    }
}
