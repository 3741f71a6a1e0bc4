//! The seven ways into the host, as `cargo xtask run --boot` names them and
//! the tests boot them: `-kernel` (PVH), and GRUB (Multiboot2) from the ISO,
//! the disk image and the network, each under BIOS and UEFI.
//!
//! | path | artefact | firmware | QEMU boots from |
//! | --- | --- | --- | --- |
//! | `direct` | the kernel ELF and guests.tar | qboot (or `--firmware`) | `-kernel`, `-initrd` |
//! | `iso`, `iso-uefi` | `host.iso` | SeaBIOS, OVMF | an IDE CD-ROM |
//! | `disk`, `disk-uefi` | `host.img` | SeaBIOS, OVMF | a virtio disk |
//! | `pxe`, `pxe-uefi` | `pxe/` served by dnsmasq | SeaBIOS, OVMF (+ iPXE) | a virtio NIC in a network namespace |

use crate::image::{self, Payload};
use crate::pxe::{LAB_TAP, Lab};
use crate::qemu::{Firmware, Machine, Medium};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One way to boot the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootPath {
    /// QEMU loads the kernel through its PVH note.
    #[default]
    Direct,
    /// GRUB from the hybrid ISO, BIOS.
    Iso,
    /// The same ISO under UEFI.
    IsoUefi,
    /// GRUB from the GPT disk image, BIOS.
    Disk,
    /// The same disk under UEFI.
    DiskUefi,
    /// GRUB over the network, BIOS PXE.
    Pxe,
    /// GRUB over the network, UEFI PXE.
    PxeUefi,
}

/// The families of boot paths: the artefact they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `-kernel`.
    Direct,
    /// `host.iso`.
    Iso,
    /// `host.img`.
    Disk,
    /// The TFTP root.
    Pxe,
}

impl BootPath {
    /// Every path, in the order of the table above.
    pub const ALL: [BootPath; 7] = [
        Self::Direct,
        Self::Iso,
        Self::IsoUefi,
        Self::Disk,
        Self::DiskUefi,
        Self::Pxe,
        Self::PxeUefi,
    ];

    /// The name `--boot` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Iso => "iso",
            Self::IsoUefi => "iso-uefi",
            Self::Disk => "disk",
            Self::DiskUefi => "disk-uefi",
            Self::Pxe => "pxe",
            Self::PxeUefi => "pxe-uefi",
        }
    }

    /// Which artefact it boots.
    pub fn family(self) -> Family {
        match self {
            Self::Direct => Family::Direct,
            Self::Iso | Self::IsoUefi => Family::Iso,
            Self::Disk | Self::DiskUefi => Family::Disk,
            Self::Pxe | Self::PxeUefi => Family::Pxe,
        }
    }

    /// Whether the firmware is UEFI (OVMF).
    pub fn uefi(self) -> bool {
        matches!(self, Self::IsoUefi | Self::DiskUefi | Self::PxeUefi)
    }

    /// The protocol the kernel's banner names (`booted via ...`).
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Direct => "PVH",
            _ => "Multiboot2",
        }
    }

    /// The artefact of this path inside the image directory `dir`.
    pub fn artefact(self, dir: &Path) -> Option<PathBuf> {
        match self.family() {
            Family::Direct => None,
            Family::Iso => Some(dir.join(image::ISO_NAME)),
            Family::Disk => Some(dir.join(image::DISK_NAME)),
            Family::Pxe => Some(dir.join(image::PXE_DIR_NAME)),
        }
    }

    /// Writes the artefact this path boots into `dir` (nothing for `direct`,
    /// which boots the kernel ELF and the archive as they are).
    pub fn build(self, payload: &Payload, dir: &Path) -> Result<()> {
        let Some(out) = self.artefact(dir) else {
            return Ok(());
        };
        image::create_dir(dir)?;
        match self.family() {
            Family::Direct => Ok(()),
            Family::Iso => image::build_iso(payload, &out).map(drop),
            Family::Disk => crate::disk::build(payload, &out).map(drop),
            Family::Pxe => image::build_pxe(payload, &out).map(drop),
        }
    }

    /// Points `machine` at this path's artefact in `dir` and picks its
    /// firmware. A `direct` machine is left as it is. For PXE this starts
    /// the DHCP/TFTP server in a network namespace of its own: keep the
    /// returned [`Lab`] alive while QEMU runs; dropping it cleans up.
    pub fn attach(self, machine: &mut Machine, dir: &Path) -> Result<Option<Lab>> {
        let Some(artefact) = self.artefact(dir) else {
            return Ok(None);
        };
        machine.firmware = if self.uefi() {
            Firmware::Ovmf
        } else {
            Firmware::SeaBios
        };
        let mut lab = None;
        machine.medium = match self.family() {
            Family::Direct => Medium::Kernel,
            Family::Iso => Medium::Cdrom(artefact),
            Family::Disk => Medium::Disk(artefact),
            Family::Pxe => {
                let started = Lab::start(&artefact)?;
                let medium = Medium::Network {
                    netns: started.netns().name().to_string(),
                    tap: LAB_TAP.to_string(),
                };
                lab = Some(started);
                medium
            }
        };
        Ok(lab)
    }
}

impl FromStr for BootPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::new(format!(
                    "--boot {s}: expected direct, iso, iso-uefi, disk, disk-uefi, pxe or pxe-uefi"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_families_share_artefacts() {
        for path in BootPath::ALL {
            assert_eq!(path.name().parse::<BootPath>(), Ok(path));
        }
        assert!("usb".parse::<BootPath>().is_err());
        let dir = Path::new("/t/image");
        assert_eq!(BootPath::Direct.artefact(dir), None);
        assert_eq!(BootPath::IsoUefi.artefact(dir), BootPath::Iso.artefact(dir));
        assert_eq!(BootPath::DiskUefi.artefact(dir), Some(dir.join("host.img")));
        assert_eq!(BootPath::Pxe.artefact(dir), Some(dir.join("pxe")));
    }

    #[test]
    fn uefi_paths_boot_ovmf_and_bios_paths_seabios() {
        let dir = Path::new("/t/image");
        for (path, firmware) in [
            (BootPath::Iso, Firmware::SeaBios),
            (BootPath::IsoUefi, Firmware::Ovmf),
            (BootPath::Disk, Firmware::SeaBios),
            (BootPath::DiskUefi, Firmware::Ovmf),
        ] {
            let mut machine = Machine::new("/k/rguest");
            assert!(path.attach(&mut machine, dir).unwrap().is_none());
            assert_eq!(machine.firmware, firmware, "{}", path.name());
            let line: Vec<String> = machine
                .args()
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect();
            assert!(!line.contains(&"-kernel".to_string()), "{line:?}");
        }
    }
}
