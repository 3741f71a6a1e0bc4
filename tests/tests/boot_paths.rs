//! The seven ways into the host (`cargo xtask run --boot ...`): `-kernel`
//! through PVH, and GRUB through Multiboot2 from the hybrid ISO, the GPT
//! disk image and the network (a real dnsmasq in a network namespace
//! handing QEMU's iPXE the GRUB network image), each under BIOS (SeaBIOS)
//! and UEFI (OVMF).
//!
//! Every path must come up to the banner naming its protocol, report the
//! memory and the CPUs it found, run the default guest to its clean exit,
//! and shut down with the success status. And for each family of paths
//! (direct, local media, network) a guest archive cut short is refused with
//! the reason, the kernel then shutting down by itself with its failure
//! status: no panic, no exception, no reset, no hang.
//!
//! The PXE tests make a network namespace, a tap device and a dnsmasq, which
//! only root may: they are `#[ignore]`d with that reason, and `cargo xtask
//! test` includes them when it runs as root (a plain `cargo test` or another
//! user skips them, and the skip is counted and said, not passed).

use qemu_tests::{Boot, boot_machine, boot_via, default_images, images, number_after};
use xtask::bootpath::BootPath;

/// Boots `path` from the default images and checks everything a boot
/// reports.
fn boots_and_runs_the_default_guest(path: BootPath) {
    let boot = boot_via(path, &default_images());
    boot.expect_success();
    expect_protocol(&boot, path);
    let memory = boot.line_containing(&["memory:", "MiB usable"]);
    if number_after(memory, "memory:").is_none_or(|mib| mib == 0) {
        boot.fail("the memory line has no usable MiB");
    }
    let cpus = boot.line_containing(&["cpus:", "enabled in the ACPI MADT"]);
    if number_after(cpus, "cpus:").is_none_or(|n| n == 0) {
        boot.fail("the ACPI MADT gave no enabled CPU");
    }
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["rguest: shutting down"]);
}

/// The banner (which may follow firmware and GRUB output on the same
/// console) names the protocol of `path` and the command line GRUB passed.
fn expect_protocol(boot: &Boot, path: BootPath) {
    let banner = boot.line_containing(&["rguest ", "booted via "]);
    if !banner.contains(&format!("booted via {};", path.protocol())) {
        boot.fail(&format!(
            "the banner does not say `booted via {}`",
            path.protocol()
        ));
    }
    if !banner.contains("command line: \"guests=hello\"") {
        boot.fail("the kernel did not get the default command line");
    }
}

#[test]
fn direct_pvh_boot() {
    boots_and_runs_the_default_guest(BootPath::Direct);
}

#[test]
fn iso_bios_boot() {
    boots_and_runs_the_default_guest(BootPath::Iso);
}

#[test]
fn iso_uefi_boot() {
    boots_and_runs_the_default_guest(BootPath::IsoUefi);
}

#[test]
fn disk_bios_boot() {
    boots_and_runs_the_default_guest(BootPath::Disk);
}

#[test]
fn disk_uefi_boot() {
    boots_and_runs_the_default_guest(BootPath::DiskUefi);
}

#[test]
#[ignore = "needs root (a network namespace); cargo xtask test runs it as root"]
fn pxe_bios_boot() {
    boots_and_runs_the_default_guest(BootPath::Pxe);
}

#[test]
#[ignore = "needs root (a network namespace); cargo xtask test runs it as root"]
fn pxe_uefi_boot() {
    boots_and_runs_the_default_guest(BootPath::PxeUefi);
}

/// What a refused archive must look like: the kernel says why and ends by
/// its own hand with the failure status, having run no guest.
fn expect_archive_refused(boot: &Boot) {
    boot.expect_kernel_failure();
    boot.line_containing(&["error: the guest archive", "truncated or corrupt"]);
    for crash in ["PANIC", "EXCEPTION"] {
        if boot.serial().contains(crash) {
            boot.fail(&format!("a refused archive must not end in a {crash}"));
        }
    }
    if boot.serial().contains("exited code=") {
        boot.fail("a guest ran from a truncated archive");
    }
}

#[test]
fn direct_boot_refuses_a_truncated_archive() {
    let truncated = qemu_tests::truncated_guests();
    let boot = boot_machine("guests=hello", |machine| machine.initrd = Some(truncated));
    expect_archive_refused(&boot);
}

/// The local media family (ISO and disk share GRUB's menu); UEFI, whose
/// memory map differs the most from a `-kernel` boot's.
#[test]
fn disk_boot_refuses_a_truncated_archive() {
    let path = BootPath::DiskUefi;
    let dir = images("truncated-disk", &qemu_tests::truncated_guests(), &[path]);
    let boot = boot_via(path, &dir);
    expect_protocol(&boot, path);
    expect_archive_refused(&boot);
}

#[test]
#[ignore = "needs root (a network namespace); cargo xtask test runs it as root"]
fn pxe_boot_refuses_a_truncated_archive() {
    let path = BootPath::Pxe;
    let dir = images("truncated-pxe", &qemu_tests::truncated_guests(), &[path]);
    let boot = boot_via(path, &dir);
    expect_protocol(&boot, path);
    expect_archive_refused(&boot);
}
