//! The `cargo xtask` command line, parsed by hand.
//!
//! A handful of subcommands with a few flags each does not need an argument
//! parsing crate; this file is the whole grammar, and [`USAGE`] is its
//! documentation.

use crate::artefacts::Profile;
use crate::bootpath::BootPath;
use crate::pxe::Addressing;
use crate::qemu::{self, AccelRequest, Firmware, UserNet};
use crate::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The help text.
pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build                  build every artefact (the kernel ELF and the guest
                         archive guests.tar beside it, the Rust std guests of
                         images/std/apps included: they need the nightly
                         toolchain, whose rust-src xtask adds itself)
  run [options] [-- <kernel command-line words>]
                         build, then boot the kernel and its guests under
                         QEMU, serial on this terminal; exits 0 only on a
                         clean shutdown. The command line starts with
                         guests=hello unless your words name guests=
  run [options] --app PATH [ARGS...] [-- <kernel command-line words>]
                         build the Rust std crate in directory PATH (a
                         Hermit application, or a plain crate written for
                         Linux: the runtime is linked in) as a guest, pack
                         it with the classic guests, and run it alone:
                         guests=\"<binary>/<ARGS>\". Every word after PATH
                         up to -- is the program's (leading KEY=VALUE words
                         its environment), so run's own options go before
                         --app
  test [options] [-- <test filter and libtest options>]
                         unit tests on Linux, then the QEMU integration tests
  boot-times [--runs N] [--boot all|PATH,PATH...]
                         measure QEMU start -> first serial byte -> banner
                         for every firmware
  bench                  boot the benchmark guests twice (plain TCG, then
                         -icount), time TCP between here and a guest through
                         a virtio-net and an e1000 uplink, run 8 compute-bound
                         guests on 1, 2 and 4 CPUs, print a table, write
                         target/bench/results.json
  fuzz --seeds N [--first S] [--steps K] [--per-boot M] [--jobs J] [--smp N]
       [--timeout SECS] [-- <kernel command-line words>]
                         run the fuzz guest for seeds S.. S+N-1 (default S 1),
                         K steps each (default 10000), M guests per boot
                         (default 8) beside hello, J boots at a time (default
                         1) of N CPUs each (default 1), each boot killed after
                         SECS (default 120); says
                         how each fuzzer ended and exits non-zero if a boot
                         failed (the host crashed, hung, leaked frames or
                         panicked, hello did not exit 0, or a fuzzer ended
                         otherwise than it announced); words after -- go on
                         the kernel command line (roots=2 eviction=random)
  image [--qcow2] [--debug] [--kernel ELF] [--guests TAR | --no-guests]
        [-- <kernel command-line words>]
                         write target/image/: host.iso (BIOS+UEFI hybrid),
                         host.img (raw GPT disk, BIOS+UEFI; --qcow2 also
                         host.qcow2) and pxe/ (TFTP root); GRUB boots the
                         kernel with run's default command line + your words
  pxe --interface IF (--range FIRST,LAST | --proxy) [--root DIR]
                         serve target/image/pxe (or DIR) with dnsmasq, DHCP
                         and TFTP, in the foreground: --range on a network
                         of your own, --proxy beside an existing DHCP server
  help                   this text

options (run, test, boot-times, fuzz):
  --debug                build with the dev profile instead of release
  --accel auto|kvm|tcg   auto (default): KVM only when the CPU has VT-x/AMD-V
                         and /dev/kvm opens, TCG otherwise
  --firmware seabios|qboot|microvm
                         (default qboot; boot-times tries all)
options (run):
  --boot direct|iso|iso-uefi|disk|disk-uefi|pxe|pxe-uefi
                         how to boot (default direct: QEMU loads the kernel);
                         the others make that artefact and boot it through
                         GRUB under SeaBIOS or OVMF (pxe: as root, in a
                         network namespace with its own dnsmasq)
  --smp N                number of CPUs (default 1)
  --mem SIZE             memory, QEMU syntax: 512M, 2G (default 512M)
  --timeout SECS         kill QEMU after SECS seconds (default 60)
  --gdb                  start halted and wait for gdb on :1234 (no timeout)
  --net user[:PORT]      give the host a virtio-net NIC on QEMU's user
                         networking (its DHCP gives the host 10.0.2.15);
                         with PORT, 127.0.0.1:PORT here leads to the host's
                         counters page (its port 80, or http_port= of your
                         kernel words): http://127.0.0.1:PORT/ and
                         /counters. Then ,P=10.0.2.N:GP (N 16-254) makes
                         127.0.0.1:P lead to port GP of a guest that takes
                         10.0.2.N (RGUEST_IP=10.0.2.N/24 for a std guest).
                         ,model=e1000 (or e1000e) gives an Intel e1000
                         instead of virtio-net. Not with --boot pxe, whose
                         NIC it is
  --guests TAR           pass this guest archive instead of building one
  --no-guests            no guest archive and no default guests=hello
  --app PATH [ARGS...]   see run above (needs the nightly toolchain)
options (run, boot-times):
  --kernel ELF           boot this ELF instead of building the kernel
";

/// What `cargo xtask` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `build`
    Build(Common),
    /// `run`
    Run(RunArgs),
    /// `test`
    Test(TestArgs),
    /// `boot-times`
    BootTimes(BootTimesArgs),
    /// `bench`
    Bench(Common),
    /// `fuzz`
    Fuzz(FuzzArgs),
    /// `image`
    Image(ImageArgs),
    /// `pxe`
    Pxe(PxeArgs),
    /// `help`, `--help`, or nothing
    Help,
}

/// Options every booting command shares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Common {
    /// The cargo profile for the kernel.
    pub profile: Profile,
    /// `--accel`.
    pub accel: AccelRequest,
    /// `--firmware`.
    pub firmware: Firmware,
}

/// `cargo xtask run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// Profile, accelerator, firmware.
    pub common: Common,
    /// `--smp`.
    pub cpus: u32,
    /// `--mem`.
    pub memory: String,
    /// `--gdb`.
    pub gdb: bool,
    /// `--timeout` (ignored with `--gdb`).
    pub time_limit: Duration,
    /// The words after `--`, appended to the kernel command line.
    pub kernel_words: Vec<String>,
    /// `--kernel`: a prebuilt ELF to boot instead of building one.
    pub kernel: Option<PathBuf>,
    /// `--guests` / `--no-guests`: which guest archive to pass.
    pub guests: GuestsChoice,
    /// `--boot`: which way in.
    pub boot: BootPath,
    /// `--app PATH [ARGS...]`: a user's std crate to build and run.
    pub app: Option<AppArgs>,
    /// `--net user[:PORT]`: a NIC for the host on QEMU's user networking.
    pub net: Option<UserNet>,
}

/// `cargo xtask run --app PATH [ARGS...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArgs {
    /// The crate's directory.
    pub path: PathBuf,
    /// The program's arguments (its `argv[1..]`).
    pub args: Vec<String>,
}

/// `cargo xtask image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArgs {
    /// The profile of the kernel and guests.
    pub profile: Profile,
    /// `--kernel`: a prebuilt ELF instead of building one.
    pub kernel: Option<PathBuf>,
    /// `--guests` / `--no-guests`.
    pub guests: GuestsChoice,
    /// `--qcow2`: also write host.qcow2.
    pub qcow2: bool,
    /// The words after `--`, appended to the kernel command line.
    pub kernel_words: Vec<String>,
}

/// `cargo xtask pxe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeArgs {
    /// `--interface`.
    pub interface: String,
    /// `--range FIRST,LAST` or `--proxy`.
    pub addressing: Addressing,
    /// `--root`: another TFTP root than target/image/pxe.
    pub root: Option<PathBuf>,
}

/// Which guest archive `run` gives the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GuestsChoice {
    /// Build the guests and pass the fresh archive (the default).
    #[default]
    Build,
    /// `--guests TAR`: this archive, as it is.
    Given(PathBuf),
    /// `--no-guests`: boot the kernel alone.
    None,
}

/// `cargo xtask test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestArgs {
    /// Profile, accelerator, firmware.
    pub common: Common,
    /// The words after `--`, passed to the test binaries (a filter, ...).
    pub test_words: Vec<String>,
}

/// `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzArgs {
    /// Profile, accelerator, firmware.
    pub common: Common,
    /// `--seeds`: how many seeds.
    pub seeds: u64,
    /// `--first`: the first seed (default 1).
    pub first: u64,
    /// `--steps`: steps per seed (default 10000).
    pub steps: u64,
    /// `--per-boot`: fuzz guests per boot (default 8).
    pub per_boot: u64,
    /// `--jobs`: boots at a time (default 1).
    pub jobs: usize,
    /// `--smp`: CPUs of each boot (default 1): the guests share them.
    pub cpus: u32,
    /// `--timeout`: the time limit of one boot (default 120 s).
    pub time_limit: Duration,
    /// The words after `--`, put on the kernel command line before the
    /// guests (the shadow root cache's settings, say).
    pub kernel_words: Vec<String>,
}

/// `cargo xtask boot-times`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTimesArgs {
    /// Profile and accelerator (the firmware is varied).
    pub common: Common,
    /// Boots per firmware.
    pub runs: u32,
    /// `--boot`: measure these boot paths instead of the firmwares.
    pub boot: Vec<BootPath>,
    /// `--kernel`: a prebuilt ELF to boot instead of building one.
    pub kernel: Option<PathBuf>,
}

/// Parses the arguments after `cargo xtask`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Task> {
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Ok(Task::Help);
    };
    let mut flags = Flags::new(args.collect());
    // Before any flag: every word after `--app PATH` is the program's.
    let app = if command == "run" { flags.app()? } else { None };
    let task = match command.as_str() {
        "help" | "--help" | "-h" => return Ok(Task::Help),
        "build" => Task::Build(flags.common()?),
        "run" => Task::Run(RunArgs {
            net: flags.net()?,
            boot: flags.boot()?,
            common: flags.common()?,
            cpus: flags.number("--smp")?.unwrap_or(1),
            memory: flags.memory()?,
            gdb: flags.switch("--gdb"),
            time_limit: Duration::from_secs(flags.number("--timeout")?.unwrap_or(60).into()),
            kernel_words: flags.take_rest(),
            kernel: flags.value("--kernel")?.map(PathBuf::from),
            guests: flags.guests()?,
            app,
        }),
        "test" => Task::Test(TestArgs {
            common: flags.common()?,
            test_words: flags.take_rest(),
        }),
        "bench" => Task::Bench(flags.common()?),
        "fuzz" => Task::Fuzz(FuzzArgs {
            common: flags.common()?,
            seeds: flags
                .number("--seeds")?
                .ok_or_else(|| Error::new("fuzz needs --seeds N: how many seeds to run"))?
                .into(),
            first: flags.whole("--first")?.unwrap_or(1),
            steps: flags.number("--steps")?.map_or(10_000, u64::from),
            per_boot: flags.number("--per-boot")?.map_or(8, u64::from),
            jobs: flags.number("--jobs")?.map_or(1, |j| j as usize),
            cpus: flags.number("--smp")?.unwrap_or(1),
            time_limit: Duration::from_secs(flags.number("--timeout")?.unwrap_or(120).into()),
            kernel_words: flags.take_rest(),
        }),
        "image" => Task::Image(ImageArgs {
            profile: flags.common()?.profile,
            kernel: flags.value("--kernel")?.map(PathBuf::from),
            guests: flags.guests()?,
            qcow2: flags.switch("--qcow2"),
            kernel_words: flags.take_rest(),
        }),
        "pxe" => Task::Pxe(PxeArgs {
            interface: flags
                .value("--interface")?
                .ok_or_else(|| Error::new("pxe needs --interface IF: the network to serve"))?,
            addressing: flags.addressing()?,
            root: flags.value("--root")?.map(PathBuf::from),
        }),
        "boot-times" => Task::BootTimes(BootTimesArgs {
            common: flags.common()?,
            runs: flags.number("--runs")?.unwrap_or(5),
            boot: flags.boot_paths()?,
            kernel: flags.value("--kernel")?.map(PathBuf::from),
        }),
        other => {
            return Err(Error::new(format!(
                "unknown command `{other}` (try `cargo xtask help`)"
            )));
        }
    };
    flags.finish(&command)?;
    Ok(task)
}

/// The flags of one subcommand, consumed as the parser asks for them.
struct Flags {
    /// Words before `--`, not yet consumed.
    words: Vec<String>,
    /// Words after `--`.
    rest: Vec<String>,
}

impl Flags {
    fn new(mut words: Vec<String>) -> Self {
        let rest = match words.iter().position(|w| w == "--") {
            Some(dash) => {
                let rest = words.split_off(dash + 1);
                words.pop();
                rest
            }
            None => Vec::new(),
        };
        Self { words, rest }
    }

    fn common(&mut self) -> Result<Common> {
        Ok(Common {
            profile: if self.switch("--debug") {
                Profile::Debug
            } else {
                Profile::Release
            },
            accel: self
                .value("--accel")?
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or_default(),
            firmware: self
                .value("--firmware")?
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn switch(&mut self, name: &str) -> bool {
        let before = self.words.len();
        self.words.retain(|w| w != name);
        self.words.len() != before
    }

    /// `--name value` or `--name=value`; the last one wins.
    fn value(&mut self, name: &str) -> Result<Option<String>> {
        let mut found = None;
        let mut i = 0;
        while i < self.words.len() {
            if self.words[i] == name {
                if i + 1 >= self.words.len() {
                    return Err(Error::new(format!("{name} needs a value")));
                }
                found = Some(self.words.remove(i + 1));
                self.words.remove(i);
            } else if let Some(value) = self.words[i]
                .strip_prefix(name)
                .and_then(|tail| tail.strip_prefix('='))
            {
                found = Some(value.to_string());
                self.words.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    fn number(&mut self, name: &str) -> Result<Option<u32>> {
        self.value(name)?
            .map(|v| match v.parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(Error::new(format!(
                    "{name} {v}: expected a whole number above 0"
                ))),
            })
            .transpose()
    }

    /// A whole number, 0 included (a seed).
    fn whole(&mut self, name: &str) -> Result<Option<u64>> {
        self.value(name)?
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::new(format!("{name} {v}: expected a whole number")))
            })
            .transpose()
    }

    fn memory(&mut self) -> Result<String> {
        match self.value("--mem")? {
            None => Ok("512M".into()),
            Some(size) if qemu::valid_memory_size(&size) => Ok(size),
            Some(size) => Err(Error::new(format!(
                "--mem {size}: expected a size such as 512M or 2G"
            ))),
        }
    }

    /// `--app PATH [ARGS...]`: takes every word from `--app` on.
    fn app(&mut self) -> Result<Option<AppArgs>> {
        let Some(at) = self.words.iter().position(|w| w == "--app") else {
            if self.words.iter().any(|w| w.starts_with("--app=")) {
                return Err(Error::new("write --app PATH, not --app=PATH"));
            }
            return Ok(None);
        };
        let mut tail = self.words.split_off(at).into_iter().skip(1);
        let path = tail
            .next()
            .ok_or_else(|| Error::new("--app needs a value: the directory of a crate"))?;
        let app = AppArgs {
            path: PathBuf::from(path),
            args: tail.collect(),
        };
        if self
            .words
            .iter()
            .any(|w| w.starts_with("--guests") || w == "--no-guests")
        {
            return Err(Error::new(
                "--app makes its own guest archive: drop --guests / --no-guests",
            ));
        }
        Ok(Some(app))
    }

    fn guests(&mut self) -> Result<GuestsChoice> {
        let none = self.switch("--no-guests");
        match (self.value("--guests")?, none) {
            (Some(_), true) => Err(Error::new("--guests and --no-guests contradict each other")),
            (Some(tar), false) => Ok(GuestsChoice::Given(PathBuf::from(tar))),
            (None, true) => Ok(GuestsChoice::None),
            (None, false) => Ok(GuestsChoice::Build),
        }
    }

    /// `--boot`; a path other than `direct` picks its own firmware, so
    /// `--firmware` beside it is a contradiction.
    fn boot(&mut self) -> Result<BootPath> {
        let boot: BootPath = self
            .value("--boot")?
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or_default();
        let firmware_given = self.words.iter().any(|w| w.starts_with("--firmware"));
        if boot != BootPath::Direct && firmware_given {
            return Err(Error::new(format!(
                "--boot {} chooses its own firmware (SeaBIOS or OVMF): drop --firmware",
                boot.name()
            )));
        }
        Ok(boot)
    }

    /// `--net user` or `--net user:PORT`; refused beside a PXE boot, whose
    /// own NIC is the host's uplink.
    fn net(&mut self) -> Result<Option<UserNet>> {
        let Some(value) = self.value("--net")? else {
            return Ok(None);
        };
        let net = parse_net(&value)?;
        let pxe = self
            .words
            .windows(2)
            .any(|w| w[0] == "--boot" && w[1].starts_with("pxe"))
            || self.words.iter().any(|w| w.starts_with("--boot=pxe"));
        if pxe {
            return Err(Error::new(
                "--net beside --boot pxe: the PXE boot's own NIC is the host's uplink; drop --net",
            ));
        }
        Ok(Some(net))
    }

    /// `--boot all` or a comma-separated list of boot paths.
    fn boot_paths(&mut self) -> Result<Vec<BootPath>> {
        match self.value("--boot")?.as_deref() {
            None => Ok(Vec::new()),
            Some("all") => Ok(BootPath::ALL.to_vec()),
            Some(list) => list.split(',').map(str::parse).collect(),
        }
    }

    /// `--range FIRST,LAST` or `--proxy`, exactly one of them.
    fn addressing(&mut self) -> Result<Addressing> {
        let proxy = self.switch("--proxy");
        match (self.value("--range")?, proxy) {
            (Some(range), false) => range.parse(),
            (None, true) => Ok(Addressing::Proxy),
            _ => Err(Error::new(
                "pxe needs one of --range FIRST,LAST (hand out addresses on a network of \
                 your own) or --proxy (beside an existing DHCP server)",
            )),
        }
    }

    fn take_rest(&mut self) -> Vec<String> {
        std::mem::take(&mut self.rest)
    }

    /// Anything left over is a mistake worth stopping for.
    fn finish(self, command: &str) -> Result<()> {
        if let Some(word) = self.words.first() {
            return Err(Error::new(format!(
                "`cargo xtask {command}` does not take `{word}` (try `cargo xtask help`)"
            )));
        }
        if !self.rest.is_empty() {
            return Err(Error::new(format!(
                "`cargo xtask {command}` takes nothing after `--`"
            )));
        }
        Ok(())
    }
}

/// A `--net` value: `user` (a NIC, nothing forwarded) or `user:PORT`
/// (127.0.0.1:PORT forwarded to the host's counters page), then any
/// `,PORT=10.0.2.N:GUEST_PORT` (forwarded to a guest) and `,model=WORD`
/// (the card: `virtio`, `e1000`, `e1000e`).
pub fn parse_net(value: &str) -> Result<UserNet> {
    let bad = || {
        Error::new(format!(
            "--net {value}: expected user or user:PORT (a TCP port of 127.0.0.1, 1 to 65535), \
             then any ,PORT=10.0.2.N:GUEST_PORT (N from 16 to 254: a guest's address) \
             and ,model=virtio|e1000|e1000e (the card; default virtio)"
        ))
    };
    let mut parts = value.split(',');
    let mut net = match parts.next().unwrap_or_default().split_once(':') {
        None if value.split(',').next() == Some("user") => UserNet::default(),
        Some(("user", port)) => UserNet::forwarding(loopback_port(port).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    for part in parts {
        match part.strip_prefix("model=") {
            Some(word) => net.model = qemu::NicModel::from_word(word).ok_or_else(bad)?,
            None => net
                .to_guests
                .push(parse_guest_forward(part).ok_or_else(bad)?),
        }
    }
    Ok(net)
}

/// A port of this machine's loopback, 1 to 65535.
fn loopback_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// `PORT=10.0.2.N:GUEST_PORT`: a guest's address on QEMU's user network,
/// past the addresses QEMU hands out by DHCP itself (10.0.2.15 upward; the
/// host's interface takes the first).
fn parse_guest_forward(text: &str) -> Option<qemu::GuestForward> {
    let (from, to) = text.split_once('=')?;
    let (address, port) = to.split_once(':')?;
    let address: std::net::Ipv4Addr = address.parse().ok()?;
    let [10, 0, 2, n] = address.octets() else {
        return None;
    };
    (16..=254).contains(&n).then_some(())?;
    Some(qemu::GuestForward {
        from: loopback_port(from)?,
        address,
        port: loopback_port(port)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Accel;

    fn parse_words(line: &str) -> Result<Task> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn run_with_every_flag() {
        let Task::Run(run) = parse_words(
            "run --debug --smp 2 --mem=1G --gdb --accel tcg --firmware microvm \
             --timeout 5 -- log=debug test=panic",
        )
        .unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.common.profile, Profile::Debug);
        assert_eq!(run.common.accel, AccelRequest::Forced(Accel::Tcg));
        assert_eq!(run.common.firmware, Firmware::Microvm);
        assert_eq!((run.cpus, run.memory.as_str(), run.gdb), (2, "1G", true));
        assert_eq!(run.time_limit, Duration::from_secs(5));
        assert_eq!(run.kernel_words, ["log=debug", "test=panic"]);
        assert_eq!(run.guests, GuestsChoice::Build);
    }

    #[test]
    fn guests_can_be_given_or_left_out() {
        let Task::Run(run) = parse_words("run --guests /tmp/g.tar").unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.guests, GuestsChoice::Given("/tmp/g.tar".into()));
        let Task::Run(run) = parse_words("run --no-guests").unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.guests, GuestsChoice::None);
    }

    #[test]
    fn defaults() {
        let Task::Run(run) = parse_words("run").unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.common, Common::default());
        assert_eq!(run.common.firmware, Firmware::Qboot);
        assert_eq!((run.cpus, run.memory.as_str(), run.gdb), (1, "512M", false));
        assert_eq!(run.time_limit, Duration::from_secs(60));
        assert!(run.kernel_words.is_empty());
        assert_eq!(parse_words("").unwrap(), Task::Help);
        assert_eq!(
            parse_words("build").unwrap(),
            Task::Build(Common::default())
        );
    }

    #[test]
    fn boot_paths_image_and_pxe_parse() {
        let Task::Run(run) = parse_words("run --boot disk-uefi").unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.boot, BootPath::DiskUefi);
        let Task::Image(image) = parse_words("image --qcow2 --no-guests -- log=debug").unwrap()
        else {
            panic!("not an image")
        };
        assert!(image.qcow2);
        assert_eq!(image.guests, GuestsChoice::None);
        assert_eq!(image.kernel_words, ["log=debug"]);
        let Task::Pxe(pxe) = parse_words("pxe --interface eth1 --proxy").unwrap() else {
            panic!("not pxe")
        };
        assert_eq!(
            (pxe.interface.as_str(), pxe.addressing),
            ("eth1", Addressing::Proxy)
        );
        assert!(matches!(
            parse_words("pxe --interface eth1 --range 10.0.0.10,10.0.0.20"),
            Ok(Task::Pxe(PxeArgs {
                addressing: Addressing::Range { .. },
                ..
            }))
        ));
    }

    #[test]
    fn fuzz_takes_seeds_and_defaults_the_rest() {
        let Task::Fuzz(fuzz) = parse_words("fuzz --seeds 16").unwrap() else {
            panic!("not fuzz")
        };
        assert_eq!(
            (fuzz.seeds, fuzz.first, fuzz.steps, fuzz.per_boot, fuzz.jobs),
            (16, 1, 10_000, 8, 1)
        );
        assert_eq!(fuzz.time_limit, Duration::from_secs(120));
        let Task::Fuzz(fuzz) = parse_words(
            "fuzz --seeds 2 --first 0 --steps 50 --per-boot 1 --jobs 2 --smp 2 --timeout 9 --accel tcg",
        )
        .unwrap() else {
            panic!("not fuzz")
        };
        assert_eq!(
            (
                fuzz.seeds,
                fuzz.first,
                fuzz.steps,
                fuzz.per_boot,
                fuzz.jobs,
                fuzz.cpus
            ),
            (2, 0, 50, 1, 2, 2)
        );
        assert_eq!(fuzz.common.accel, AccelRequest::Forced(Accel::Tcg));
        let Task::Fuzz(fuzz) = parse_words("fuzz --seeds 1 -- roots=2 eager_fill=off").unwrap()
        else {
            panic!("not fuzz")
        };
        assert_eq!(fuzz.kernel_words, ["roots=2", "eager_fill=off"]);
        for bad in ["fuzz", "fuzz --seeds 0", "fuzz --seeds 2 --first x"] {
            assert!(parse_words(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_passes_words_after_dashes_to_the_tests() {
        let Task::Test(test) = parse_words("test -- faults --nocapture").unwrap() else {
            panic!("not a test")
        };
        assert_eq!(test.test_words, ["faults", "--nocapture"]);
    }

    #[test]
    fn every_word_after_app_path_is_the_programs() {
        let Task::Run(run) =
            parse_words("run --timeout 9 --app ../wc one --timeout 2 -- log=debug").unwrap()
        else {
            panic!("not a run")
        };
        let app = run.app.unwrap();
        assert_eq!(app.path, PathBuf::from("../wc"));
        assert_eq!(app.args, ["one", "--timeout", "2"]);
        assert_eq!(run.time_limit, Duration::from_secs(9));
        assert_eq!(run.kernel_words, ["log=debug"]);
        let Task::Run(run) = parse_words("run --app images/std/apps/args-std").unwrap() else {
            panic!("not a run")
        };
        assert!(run.app.unwrap().args.is_empty());
        assert_eq!(
            parse_words("run").map(|t| matches!(t, Task::Run(RunArgs { app: None, .. }))),
            Ok(true)
        );
    }

    #[test]
    fn net_gives_the_host_a_nic_with_or_without_a_forwarded_port() {
        let net_of = |line: &str| match parse_words(line) {
            Ok(Task::Run(run)) => run.net,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(net_of("run"), None);
        assert_eq!(net_of("run --net user"), Some(UserNet::default()));
        assert_eq!(
            net_of("run --net user:8080 -- test=net"),
            Some(UserNet::forwarding(8080))
        );
        assert_eq!(
            net_of("run --net=user:65535 --boot iso"),
            Some(UserNet::forwarding(65535))
        );
        let Task::Run(run) = parse_words("run --net user:8080 -- test=net").unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.kernel_words, ["test=net"]);
        let forward = run.net.and_then(|n| n.forward).unwrap();
        assert_eq!((forward.from, forward.to), (8080, qemu::HTTP_PORT));
        let net = net_of("run --net user:8080,8081=10.0.2.20:7000,8082=10.0.2.254:80").unwrap();
        assert_eq!(
            net.to_guests,
            [
                qemu::GuestForward {
                    from: 8081,
                    address: std::net::Ipv4Addr::new(10, 0, 2, 20),
                    port: 7000
                },
                qemu::GuestForward {
                    from: 8082,
                    address: std::net::Ipv4Addr::new(10, 0, 2, 254),
                    port: 80
                },
            ]
        );
        assert_eq!(
            net_of("run --net user,8081=10.0.2.16:1").map(|n| (n.forward, n.to_guests.len())),
            Some((None, 1))
        );
        let e1000 = net_of("run --net user:8080,model=e1000,8081=10.0.2.20:7000").unwrap();
        assert_eq!(e1000.model, qemu::NicModel::E1000);
        assert_eq!((e1000.forward.is_some(), e1000.to_guests.len()), (true, 1));
        assert_eq!(
            net_of("run --net user,model=e1000e").map(|n| n.model),
            Some(qemu::NicModel::E1000e)
        );
        assert_eq!(
            net_of("run --net user").map(|n| n.model),
            Some(Default::default())
        );
        for bad in [
            "user,model=rtl8139",
            "user,model=",
            "user,8081=10.0.2.15:80",
            "user,8081=10.0.3.20:80",
            "user,8081=10.0.2.20",
            "user,0=10.0.2.20:80",
            "user,8081=10.0.2.20:0",
            "user:8080,",
            "tap,8081=10.0.2.20:80",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for line in [
            "frobnicate",
            "run --smp",
            "run --smp 0",
            "run --smp two",
            "run --mem lots",
            "run --accel hvf",
            "run --firmware uefi",
            "run --guests a.tar --no-guests",
            "build --no-guests",
            "run --verbose",
            "build --gdb",
            "build -- log=debug",
            "run --boot floppy",
            "run --boot iso --firmware qboot",
            "image --smp 2",
            "pxe --range 10.0.0.1,10.0.0.9",
            "pxe --interface eth1",
            "pxe --interface eth1 --proxy --range 10.0.0.1,10.0.0.9",
            "pxe --interface eth1 --proxy -- x",
            "run --app",
            "run --app=x",
            "run --no-guests --app x",
            "build --app x",
            "run --net",
            "run --net tap",
            "run --net user:",
            "run --net user:0",
            "run --net user:70000",
            "run --net user:http",
            "run --net users:80",
            "run --net user:8080 --boot pxe",
            "run --boot=pxe-uefi --net user",
            "build --net user",
        ] {
            let error = parse_words(line).unwrap_err();
            assert!(!error.0.contains('\n'), "{line}: {error}");
        }
    }
}
