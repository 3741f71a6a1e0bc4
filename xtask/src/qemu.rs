//! The QEMU command line that boots the rguest kernel.
//!
//! One [`Machine`] describes one boot: which ELF, which kernel command line,
//! how many CPUs and how much memory, which accelerator and firmware, and
//! whether to wait for gdb. [`Machine::command`] turns it into the
//! `qemu-system-x86_64` invocation; [`crate::session`] runs it.
//!
//! The fixed parts, and why:
//!
//! - `-kernel <elf>`: QEMU loads the ELF itself and enters it through the
//!   PVH note; no bootloader, no disk image.
//! - `-initrd <guests.tar>` (when the machine has guests): QEMU loads the
//!   guest archive into RAM and passes it as the first module of the PVH
//!   start info (see [`crate::guests`] for its format).
//! - `-nodefaults -display none -serial stdio`: no VGA, NIC, floppy or
//!   CD-ROM to emulate (and no option ROMs for the firmware to run); the
//!   first serial port is our stdout, the only console the kernel has.
//! - `-no-reboot`: a triple fault ends QEMU (status 0) instead of rebooting
//!   the kernel forever.
//! - `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: the kernel writes a
//!   byte `v` to port 0xf4 and QEMU exits with status `(v << 1) | 1`; that is
//!   how the kernel says "success" or "failure" (see [`crate::session`]).
//!
//! A machine may also boot through GRUB instead of `-kernel` ([`Medium`]):
//! from a CD-ROM, a disk or the network, with SeaBIOS or OVMF (UEFI) as the
//! firmware; see [`crate::bootpath`] for the seven ways in.
//!
//! And it may have a network card for the host ([`UserNet`], `cargo xtask
//! run --net user[:PORT]`): a virtio-net NIC on QEMU's user networking
//! (slirp), which the host drives as the uplink of its virtual switch. Its
//! DHCP server gives the host's own interface 10.0.2.15, and a TCP port of
//! this machine's loopback may be forwarded to that interface's counters
//! page. The card has no option ROM (`romfile=`): nothing boots from it, so
//! the firmware has nothing to run and QEMU no ROM file to find.

use crate::packages;
use crate::{Error, Result};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// The I/O port of QEMU's `isa-debug-exit` device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The TCP port gdb attaches to with `--gdb` (QEMU's `-s`).
pub const GDB_PORT: u16 = 1234;

/// How the emulated CPU executes code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`, with the host's CPU model.
    Kvm,
    /// QEMU's own translator (Tiny Code Generator) with every CPU feature
    /// it can emulate (`-cpu max`: UMIP, and so on).
    Tcg,
}

/// What the user asked for with `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelRequest {
    /// KVM where it is real hardware virtualization, TCG otherwise.
    #[default]
    Auto,
    /// This accelerator, no questions asked.
    Forced(Accel),
}

impl FromStr for AccelRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Forced(Accel::Kvm)),
            "tcg" => Ok(Self::Forced(Accel::Tcg)),
            _ => Err(Error::new(format!(
                "--accel {s}: expected auto, kvm or tcg"
            ))),
        }
    }
}

impl Accel {
    /// The name QEMU and our flags use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// An accelerator and the sentence that explains the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why, for a line like `accel: tcg (<why>)`.
    pub why: String,
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accel: {} ({})", self.accel.name(), self.why)
    }
}

/// Resolves `--accel` against this machine.
///
/// KVM is used only when the CPU really has VT-x or AMD-V *and* `/dev/kvm`
/// opens read-write. The check on the CPU flags matters: a `/dev/kvm`
/// without them is a software hypervisor (such as `kvm_pvm`) that emulates
/// ring 0 and ring 1 one instruction at a time and stops QEMU with an
/// emulation failure on `int n` from ring 1, which is exactly how our guests
/// make hypercalls.
pub fn choose_accel(request: AccelRequest) -> AccelChoice {
    match request {
        AccelRequest::Forced(accel) => AccelChoice {
            accel,
            why: "forced by --accel".into(),
        },
        AccelRequest::Auto => {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let kvm = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .map(drop)
                .map_err(|e| e.kind());
            auto_accel(&cpuinfo, kvm)
        }
    }
}

/// The decision of [`choose_accel`], given the text of `/proc/cpuinfo` and
/// the result of opening `/dev/kvm` read-write.
fn auto_accel(cpuinfo: &str, kvm_open: std::result::Result<(), std::io::ErrorKind>) -> AccelChoice {
    let hardware = hardware_virtualization(cpuinfo);
    let tcg = |why: String| AccelChoice {
        accel: Accel::Tcg,
        why,
    };
    match (hardware, kvm_open) {
        (Some(name), Ok(())) => AccelChoice {
            accel: Accel::Kvm,
            why: format!("this CPU has {name} and /dev/kvm opens"),
        },
        (Some(name), Err(std::io::ErrorKind::NotFound)) => tcg(format!(
            "this CPU has {name} but there is no /dev/kvm: load kvm_intel or kvm_amd"
        )),
        (Some(name), Err(e)) => tcg(format!(
            "this CPU has {name} but /dev/kvm does not open read-write ({e}): \
             join the kvm group"
        )),
        (None, Err(std::io::ErrorKind::NotFound)) => tcg("no /dev/kvm and no VT-x/AMD-V".into()),
        (None, _) => tcg(
            "/dev/kvm present but this CPU has no VT-x/AMD-V: it is a software \
             hypervisor that emulates ring 0/1 and crashes on int n"
                .into(),
        ),
    }
}

/// `Some("VT-x")` or `Some("AMD-V")` when a `flags` line of `/proc/cpuinfo`
/// lists `vmx` or `svm`.
fn hardware_virtualization(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace());
    for flag in flags {
        match flag {
            "vmx" => return Some("VT-x"),
            "svm" => return Some("AMD-V"),
            _ => {}
        }
    }
    None
}

/// The firmware that starts the machine and hands over to the PVH entry.
///
/// Measured here (QEMU 7.2, TCG, a tiny PVH kernel), QEMU start to the first
/// serial byte: SeaBIOS 70-250 ms, qboot about 35 ms, `-M microvm` about
/// 22 ms. qboot is the default: nearly as fast as microvm, and still a full
/// PC (PCI bus, legacy PIC, ACPI tables) for the devices to come; microvm
/// boots our kernel too (serial, isa-debug-exit, PIT and local APIC timer
/// all work there) but has no PCI unless asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// QEMU's default BIOS on the `pc` machine.
    SeaBios,
    /// `-bios qboot.rom` on the `pc` machine: a minimal firmware that jumps
    /// straight to the loaded kernel.
    #[default]
    Qboot,
    /// The `microvm` machine type (with its own qboot build).
    Microvm,
    /// OVMF, UEFI firmware, for the GRUB boot paths under UEFI. Not in
    /// [`Firmware::ALL`]: it cannot load a PVH kernel by itself.
    Ovmf,
}

impl Firmware {
    /// Every firmware, in the order `boot-times` measures them.
    pub const ALL: [Firmware; 3] = [Self::SeaBios, Self::Qboot, Self::Microvm];

    /// The name our flags use.
    pub fn name(self) -> &'static str {
        match self {
            Self::SeaBios => "seabios",
            Self::Qboot => "qboot",
            Self::Microvm => "microvm",
            Self::Ovmf => "ovmf",
        }
    }

    /// QEMU arguments selecting this firmware.
    fn args(self) -> Vec<OsString> {
        match self {
            Self::SeaBios => vec![],
            Self::Qboot => vec!["-bios".into(), packages::QBOOT_ROM.name.into()],
            Self::Microvm => vec!["-M".into(), "microvm".into()],
            Self::Ovmf => vec!["-bios".into(), packages::OVMF.name.into()],
        }
    }
}

impl FromStr for Firmware {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| Error::new(format!("firmware {s}: expected seabios, qboot or microvm")))
    }
}

/// What the machine boots from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Medium {
    /// QEMU loads [`Machine::kernel`] itself (`-kernel`, PVH) with
    /// [`Machine::cmdline`] and [`Machine::initrd`].
    #[default]
    Kernel,
    /// A CD-ROM image (the hybrid ISO) on the IDE bus.
    Cdrom(PathBuf),
    /// A disk image on virtio-blk, as cloud machines have; raw, or qcow2
    /// when its name ends in `.qcow2`. Booted as a snapshot: the boot
    /// never changes the file.
    Disk(PathBuf),
    /// The network (`-boot n`): a virtio NIC whose ROM is iPXE, on the tap
    /// device `tap` inside the network namespace `netns`, where QEMU runs
    /// too (see [`crate::pxe::Lab`]).
    Network {
        /// The namespace's name.
        netns: String,
        /// The tap device in it.
        tap: String,
    },
}

/// The TCP port of the host's counters page (`http_port=`'s default), where
/// [`UserNet::forward`] leads unless told otherwise.
pub const HTTP_PORT: u16 = 80;

/// Which card QEMU gives the host for its uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NicModel {
    /// `virtio-net-pci` (the default).
    #[default]
    VirtioNet,
    /// `e1000`: Intel's 82540EM.
    E1000,
    /// `e1000e`: Intel's 82574L.
    E1000e,
}

impl NicModel {
    /// The model's word in `--net ...,model=WORD`, and QEMU's device name.
    pub fn name(self) -> &'static str {
        match self {
            NicModel::VirtioNet => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::E1000e => "e1000e",
        }
    }

    /// The model named `word` (`virtio` for short too).
    pub fn from_word(word: &str) -> Option<NicModel> {
        match word {
            "virtio" | "virtio-net-pci" => Some(NicModel::VirtioNet),
            "e1000" => Some(NicModel::E1000),
            "e1000e" => Some(NicModel::E1000e),
            _ => None,
        }
    }
}

/// A network card for the host on QEMU's user networking: `-netdev user`
/// and a `virtio-net-pci` (or e1000) device on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserNet {
    /// The card.
    pub model: NicModel,
    /// A TCP port of this machine's loopback forwarded to the host.
    pub forward: Option<PortForward>,
    /// Ports forwarded to guests: a guest on the host's switch that takes
    /// an address of the user network for itself (a std guest with
    /// `RGUEST_IP=10.0.2.20/24`) is on the same Ethernet as QEMU's user
    /// network, which reaches it like any machine there.
    pub to_guests: Vec<GuestForward>,
}

/// `127.0.0.1:<from>` here to `<address>:<port>`, a guest behind the
/// host's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestForward {
    /// The loopback port on this machine.
    pub from: u16,
    /// The guest's address on the user network (10.0.2.16 to 10.0.2.254).
    pub address: std::net::Ipv4Addr,
    /// The guest's port.
    pub port: u16,
}

/// `127.0.0.1:<from>` here to port `<to>` of the host's interface (QEMU's
/// `hostfwd`; user networking reaches the host's own address alone, not
/// the guests behind its switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// The loopback port on this machine.
    pub from: u16,
    /// The host's port.
    pub to: u16,
}

impl UserNet {
    /// A card whose loopback port `from` leads to the host's counters page.
    pub fn forwarding(from: u16) -> Self {
        Self {
            forward: Some(PortForward {
                from,
                to: HTTP_PORT,
            }),
            ..Self::default()
        }
    }

    /// `-netdev user,...` and `-device virtio-net-pci,...` (or the model's).
    fn args(&self) -> [String; 4] {
        let mut netdev = String::from("user,id=uplink");
        if let Some(PortForward { from, to }) = self.forward {
            netdev += &format!(",hostfwd=tcp:127.0.0.1:{from}-:{to}");
        }
        for GuestForward {
            from,
            address,
            port,
        } in &self.to_guests
        {
            netdev += &format!(",hostfwd=tcp:127.0.0.1:{from}-{address}:{port}");
        }
        [
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("{},netdev=uplink,romfile=", self.model.name()),
        ]
    }
}

/// One boot of the kernel: everything that varies between QEMU runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The kernel command line (`key=value` words).
    pub cmdline: String,
    /// The guest archive, passed as `-initrd`; `None` boots without guests.
    pub initrd: Option<PathBuf>,
    /// What to boot from: the kernel itself, or a GRUB image (whose own
    /// menu then carries the command line and the guests).
    pub medium: Medium,
    /// Number of CPUs (`-smp`).
    pub cpus: u32,
    /// Memory size in QEMU's syntax (`512M`, `2G`).
    pub memory: String,
    /// The accelerator.
    pub accel: Accel,
    /// The firmware.
    pub firmware: Firmware,
    /// Start halted and wait for gdb on [`GDB_PORT`].
    pub wait_for_gdb: bool,
    /// `-icount shift=0,align=off,sleep=off`: the TSC counts instructions
    /// retired, one per instruction (TCG only; for `cargo xtask bench`).
    pub count_instructions: bool,
    /// A network card for the host on QEMU's user networking (beside the
    /// boot NIC of [`Medium::Network`], if any).
    pub nic: Option<UserNet>,
}

impl Machine {
    /// A one-CPU, 512 MiB TCG machine on qboot booting `kernel` with an
    /// empty command line and no guests.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            cmdline: String::new(),
            initrd: None,
            medium: Medium::Kernel,
            cpus: 1,
            memory: "512M".into(),
            accel: Accel::Tcg,
            firmware: Firmware::default(),
            wait_for_gdb: false,
            count_instructions: false,
            nic: None,
        }
    }

    /// The QEMU command for this boot, after making sure QEMU (and the
    /// firmware file, if any) is installed.
    pub fn command(&self) -> Result<Command> {
        let qemu = packages::ensure(packages::QEMU)?;
        match self.firmware {
            Firmware::Qboot => drop(packages::ensure(packages::QBOOT_ROM)?),
            Firmware::Ovmf => drop(packages::ensure(packages::OVMF)?),
            Firmware::SeaBios | Firmware::Microvm => {}
        }
        let mut command = match &self.medium {
            Medium::Kernel => {
                self.check_kernel_files()?;
                Command::new(qemu)
            }
            Medium::Cdrom(image) | Medium::Disk(image) => {
                check_file(image, "boot image")?;
                Command::new(qemu)
            }
            Medium::Network { netns, .. } => {
                packages::ensure(packages::IPXE_ROM)?;
                let mut command = Command::new(packages::IP.name);
                command.args(["netns", "exec", netns]).arg(qemu);
                command
            }
        };
        command.args(self.args());
        Ok(command)
    }

    /// The kernel ELF and the guest archive of a `-kernel` boot must exist.
    fn check_kernel_files(&self) -> Result<()> {
        if !self.kernel.is_file() {
            return Err(Error::new(format!(
                "no kernel at {} (build it with `cargo xtask build`)",
                self.kernel.display()
            )));
        }
        if let Some(initrd) = self.initrd.as_ref().filter(|path| !path.is_file()) {
            return Err(Error::new(format!(
                "no guest archive at {} (build it with `cargo xtask build`)",
                initrd.display()
            )));
        }
        Ok(())
    }

    /// The arguments after `qemu-system-x86_64`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.firmware.args();
        let mut push = |words: &[&str]| args.extend(words.iter().map(OsString::from));
        push(&["-nodefaults", "-display", "none", "-serial", "stdio"]);
        push(&["-no-reboot"]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        push(&["-m", &self.memory, "-smp", &self.cpus.to_string()]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        if self.wait_for_gdb {
            push(&["-s", "-S"]);
        }
        if self.count_instructions && self.accel == Accel::Tcg {
            push(&["-icount", "shift=0,align=off,sleep=off"]);
        }
        match &self.medium {
            Medium::Kernel => args.extend(self.kernel_args()),
            Medium::Cdrom(image) => args.extend(drive(image, "if=ide,media=cdrom,readonly=on")),
            Medium::Disk(image) => args.extend(drive(image, "if=virtio,snapshot=on")),
            Medium::Network { tap, .. } => {
                let netdev = format!("tap,id=net0,ifname={tap},script=no,downscript=no");
                push(&["-netdev", &netdev]);
                push(&["-device", "virtio-net-pci,netdev=net0", "-boot", "n"]);
            }
        }
        if let Some(nic) = &self.nic {
            args.extend(nic.args().map(OsString::from));
        }
        args
    }

    /// `-initrd`, `-append` and `-kernel` for a direct boot.
    fn kernel_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(initrd) = &self.initrd {
            args.push("-initrd".into());
            args.push(initrd.clone().into());
        }
        args.extend([
            "-append".into(),
            self.cmdline.clone().into(),
            "-kernel".into(),
        ]);
        args.push(self.kernel.clone().into());
        args
    }
}

/// `-drive file=<image>,format=<raw|qcow2>,<how>`.
fn drive(image: &Path, how: &str) -> [OsString; 2] {
    let format = match image.extension() {
        Some(ext) if ext == "qcow2" => "qcow2",
        _ => "raw",
    };
    let mut spec = OsString::from("file=");
    // QEMU's option syntax: a comma in the path is written twice.
    spec.push(image.to_string_lossy().replace(',', ",,"));
    spec.push(format!(",format={format},{how}"));
    ["-drive".into(), spec]
}

/// An error naming `what` when `path` is not a file.
fn check_file(path: &Path, what: &str) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "no {what} at {} (make it with `cargo xtask image`)",
            path.display()
        )))
    }
}

/// Checks a `--mem` value: a whole number with an optional `K`, `M`, `G` or
/// `T` suffix, as QEMU's `-m` takes it (no suffix means MiB).
pub fn valid_memory_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    size.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    const PVM_CPU: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\n";
    const VTX_CPU: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
    const AMD_CPU: &str = "flags\t\t: fpu svm sse2\n";

    #[test]
    fn auto_uses_kvm_only_with_hardware_virtualization_and_an_open_dev_kvm() {
        assert_eq!(auto_accel(VTX_CPU, Ok(())).accel, Accel::Kvm);
        assert_eq!(auto_accel(AMD_CPU, Ok(())).accel, Accel::Kvm);
        assert_eq!(
            auto_accel(VTX_CPU, Err(ErrorKind::NotFound)).accel,
            Accel::Tcg
        );
        assert_eq!(
            auto_accel(VTX_CPU, Err(ErrorKind::PermissionDenied)).accel,
            Accel::Tcg
        );
        assert_eq!(
            auto_accel(PVM_CPU, Err(ErrorKind::NotFound)).accel,
            Accel::Tcg
        );
    }

    #[test]
    fn a_dev_kvm_without_vmx_or_svm_is_refused_and_the_reason_says_so() {
        let choice = auto_accel(PVM_CPU, Ok(()));
        assert_eq!(choice.accel, Accel::Tcg);
        let line = choice.to_string();
        assert!(line.starts_with("accel: tcg ("), "{line}");
        assert!(line.contains("no VT-x/AMD-V"), "{line}");
    }

    #[test]
    fn flags_are_whole_words() {
        assert_eq!(hardware_virtualization("flags : vmxfoo svmbar\n"), None);
        assert_eq!(hardware_virtualization("model name : vmx\n"), None);
    }

    #[test]
    fn flag_values_parse() {
        assert_eq!("auto".parse::<AccelRequest>(), Ok(AccelRequest::Auto));
        assert_eq!(
            "tcg".parse::<AccelRequest>(),
            Ok(AccelRequest::Forced(Accel::Tcg))
        );
        assert!("hvf".parse::<AccelRequest>().is_err());
        for firmware in Firmware::ALL {
            assert_eq!(firmware.name().parse::<Firmware>(), Ok(firmware));
        }
        assert!("uefi".parse::<Firmware>().is_err());
    }

    #[test]
    fn memory_sizes() {
        for good in ["512M", "2G", "1024", "64m"] {
            assert!(valid_memory_size(good), "{good}");
        }
        for bad in ["", "M", "0", "1.5G", "512MB", "-1G", "lots"] {
            assert!(!valid_memory_size(bad), "{bad}");
        }
    }

    #[test]
    fn a_machine_without_guests_has_no_initrd() {
        let args = Machine::new("/k/rguest").args();
        assert!(!args.iter().any(|a| a == "-initrd"));
    }

    #[test]
    fn the_command_line_has_the_fixed_devices_and_the_choices() {
        let mut machine = Machine::new("/k/rguest");
        machine.cmdline = "log=debug test=panic".into();
        machine.cpus = 2;
        machine.firmware = Firmware::Microvm;
        machine.wait_for_gdb = true;
        machine.initrd = Some("/k/guests.tar".into());
        let args: Vec<String> = machine
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        for part in [
            "-M microvm",
            "-serial stdio",
            "-no-reboot",
            "-device isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-m 512M -smp 2",
            "-accel tcg -cpu max",
            "-s -S",
            "-kernel /k/rguest",
            "-initrd /k/guests.tar",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        // The command line is one argument, however many words it has.
        assert!(args.contains(&"log=debug test=panic".to_string()));
        assert!(!line.contains("-netdev"), "no NIC unless asked: {line}");
    }

    fn words(machine: &Machine) -> String {
        let args: Vec<String> = machine
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        args.join(" ")
    }

    #[test]
    fn a_user_nic_forwards_a_loopback_port_to_the_counters_page() {
        let mut machine = Machine::new("/k/rguest");
        machine.nic = Some(UserNet::forwarding(8080));
        assert!(
            words(&machine).ends_with(
                "-netdev user,id=uplink,hostfwd=tcp:127.0.0.1:8080-:80 \
                 -device virtio-net-pci,netdev=uplink,romfile="
            ),
            "{}",
            words(&machine)
        );
        machine.nic = Some(UserNet {
            forward: Some(PortForward {
                from: 9000,
                to: 8000,
            }),
            to_guests: vec![GuestForward {
                from: 9001,
                address: std::net::Ipv4Addr::new(10, 0, 2, 20),
                port: 7000,
            }],
            model: NicModel::E1000,
        });
        assert!(
            words(&machine).ends_with("-device e1000,netdev=uplink,romfile="),
            "{}",
            words(&machine)
        );
        assert!(
            words(&machine).contains(
                "hostfwd=tcp:127.0.0.1:9000-:8000,hostfwd=tcp:127.0.0.1:9001-10.0.2.20:7000 "
            ),
            "{}",
            words(&machine)
        );
        machine.nic = Some(UserNet::default());
        let line = words(&machine);
        assert!(line.contains("-netdev user,id=uplink -device"), "{line}");
        assert!(!line.contains("hostfwd"), "{line}");
    }

    #[test]
    fn a_user_nic_sits_beside_the_pxe_boot_nic() {
        let mut machine = Machine::new("/k/rguest");
        machine.medium = Medium::Network {
            netns: "ns".into(),
            tap: "tap0".into(),
        };
        let pxe_only = words(&machine);
        assert!(
            pxe_only.contains("-netdev tap,id=net0,ifname=tap0"),
            "{pxe_only}"
        );
        assert!(pxe_only.contains("-device virtio-net-pci,netdev=net0 -boot n"));
        machine.nic = Some(UserNet::forwarding(8080));
        let both = words(&machine);
        assert!(both.starts_with(&pxe_only), "{both}");
        assert!(both.contains("netdev=uplink"), "{both}");
    }
}
