//! `cargo xtask pxe`: network boot through a real DHCP and TFTP server,
//! `dnsmasq`, serving the TFTP root that `cargo xtask image` writes
//! (`target/image/pxe/`).
//!
//! The chain a machine follows: its PXE firmware (a server's NIC ROM, or
//! QEMU's iPXE) asks for an address by DHCP and says which firmware it is
//! (option 93, client architecture: 0 for BIOS, 7 or 9 for x86-64 UEFI);
//! dnsmasq answers with the matching GRUB network image
//! ([`image::PXE_BIOS_BOOT_FILE`] or [`image::PXE_UEFI_BOOT_FILE`]), which
//! the firmware fetches by TFTP; GRUB fetches its `grub.cfg`, the kernel and
//! the guest archive by TFTP from the same server and boots them.
//!
//! Two ways to serve ([`Addressing`]):
//!
//! - `--range A,B`: dnsmasq is the network's DHCP server and hands out
//!   addresses from A to B. Only on a network of your own (a direct cable,
//!   a lab switch): two DHCP servers on one LAN fight.
//! - `--proxy`: another DHCP server hands out the addresses; dnsmasq only
//!   adds the boot information (proxy DHCP, part of the PXE standard).
//!   GRUB 2.06 (Debian 12's) then takes the *other* server for its TFTP
//!   server and stops at `grub rescue>`, so in this mode we make GRUB
//!   network images of our own that name this server in their prefix
//!   ([`PROXY_BIOS_BOOT_FILE`], [`PROXY_UEFI_BOOT_FILE`]).
//!
//! The same [`Server`] runs in the foreground for `cargo xtask pxe` and
//! in the background ([`Server::spawn`]) inside a [`NetNs`] for `cargo xtask
//! run --boot pxe` and the tests ([`Lab`]).

use crate::image::{self, PXE_BIOS_BOOT_FILE, PXE_UEFI_BOOT_FILE};
use crate::netns::NetNs;
use crate::packages;
use crate::{Error, Result};
use std::ffi::OsString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;

/// How the server gives machines their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// A full DHCP server handing out `first..=last`.
    Range {
        /// The first address handed out.
        first: Ipv4Addr,
        /// The last.
        last: Ipv4Addr,
    },
    /// Proxy DHCP beside the network's own DHCP server.
    Proxy,
}

impl FromStr for Addressing {
    type Err = Error;
    /// `A,B` for a range.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::new(format!(
                "--range {s}: expected two IPv4 addresses, FIRST,LAST"
            ))
        };
        let (first, last) = s.split_once(',').ok_or_else(bad)?;
        let first: Ipv4Addr = first.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = last.trim().parse().map_err(|_| bad())?;
        if u32::from(first) > u32::from(last) {
            return Err(bad());
        }
        Ok(Self::Range { first, last })
    }
}

/// One dnsmasq: which interface, which TFTP root, how to address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The network interface to serve on (and only on).
    pub interface: String,
    /// The TFTP root (`target/image/pxe`).
    pub root: PathBuf,
    /// Full DHCP or proxy DHCP.
    pub addressing: Addressing,
}

/// The GRUB network images for proxy DHCP, made by `cargo xtask pxe --proxy`
/// beside `grub-mknetdir`'s: the same, but with this server's address in
/// their prefix (`(tftp,<address>)/boot/grub`).
pub const PROXY_BIOS_BOOT_FILE: &str = "boot/grub/i386-pc/core-proxy.0";
/// The UEFI one.
pub const PROXY_UEFI_BOOT_FILE: &str = "boot/grub/x86_64-efi/core-proxy.efi";

/// DHCP tags dnsmasq sets for UEFI clients (option 93 = 7 or 9).
const EFI_TAG: &str = "efi64";

impl Server {
    /// dnsmasq's arguments. `proxy_subnet` is the interface's network
    /// address, which proxy DHCP needs (see [`interface_network`]).
    pub fn args(&self, proxy_subnet: Option<Ipv4Addr>) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--keep-in-foreground",
            // Ours alone: no /etc/dnsmasq.conf, no DNS, no lease file,
            // no pid file; the log to stderr.
            "--conf-file=/dev/null",
            "--port=0",
            "--leasefile-ro",
            "--pid-file=",
            "--log-facility=-",
            "--log-dhcp",
            "--bind-interfaces",
            "--enable-tftp",
        ]
        .map(OsString::from)
        .to_vec();
        args.push(format!("--interface={}", self.interface).into());
        let mut root = OsString::from("--tftp-root=");
        root.push(&self.root);
        args.push(root);
        // iPXE and most UEFI firmware say 7 ("EFI BC"), some say 9.
        for arch in [7, 9] {
            args.push(format!("--dhcp-match=set:{EFI_TAG},option:client-arch,{arch}").into());
        }
        match (self.addressing, proxy_subnet) {
            (Addressing::Range { first, last }, _) => {
                args.push(format!("--dhcp-range={first},{last},1h").into());
                args.push("--dhcp-authoritative".into());
                args.push(format!("--dhcp-boot=tag:{EFI_TAG},{PXE_UEFI_BOOT_FILE}").into());
                args.push(format!("--dhcp-boot=tag:!{EFI_TAG},{PXE_BIOS_BOOT_FILE}").into());
            }
            (Addressing::Proxy, subnet) => {
                let subnet = subnet.unwrap_or(Ipv4Addr::UNSPECIFIED);
                args.push(format!("--dhcp-range={subnet},proxy").into());
                // A proxy answers PXE clients through the PXE boot menu; one
                // entry per client type boots without showing it. File names
                // with a suffix are sent as they are.
                args.push(format!("--pxe-service=x86PC,rguest,{PROXY_BIOS_BOOT_FILE}").into());
                for csa in ["BC_EFI", "x86-64_EFI"] {
                    args.push(format!("--pxe-service={csa},rguest,{PROXY_UEFI_BOOT_FILE}").into());
                }
            }
        }
        args
    }

    /// Checks the TFTP root and finds what [`Server::args`] needs.
    fn prepare(&self, netns: Option<&NetNs>) -> Result<Vec<OsString>> {
        packages::ensure(packages::DNSMASQ)?;
        for file in [PXE_BIOS_BOOT_FILE, PXE_UEFI_BOOT_FILE, image::KERNEL_PATH] {
            if !self.root.join(file).is_file() {
                return Err(Error::new(format!(
                    "{} has no {file}: make the TFTP root with `cargo xtask image`",
                    self.root.display()
                )));
            }
        }
        let subnet = match self.addressing {
            Addressing::Proxy => {
                let (address, network) = interface_address(&self.interface, netns)?;
                make_proxy_images(&self.root, address)?;
                Some(network)
            }
            Addressing::Range { .. } => None,
        };
        let mut args = self.args(subnet);
        if !readable_by_anyone(&self.root) {
            // dnsmasq drops root for `nobody`, who could not read the files.
            args.push("--user=root".into());
        }
        Ok(args)
    }

    /// The dnsmasq command, in `netns` if given.
    fn command(&self, netns: Option<&NetNs>) -> Result<Command> {
        let args = self.prepare(netns)?;
        let mut command = match netns {
            Some(netns) => netns.command(packages::DNSMASQ.name),
            None => Command::new(packages::DNSMASQ.name),
        };
        command.args(args);
        Ok(command)
    }

    /// `cargo xtask pxe`: becomes dnsmasq (exec), in the foreground, its log
    /// on stdout, until it ends (Ctrl-C). Exec rather than a child: a signal
    /// meant for the server (a service manager's SIGTERM) reaches it, and
    /// no dnsmasq is left behind holding the DHCP port. Returns only when
    /// dnsmasq cannot be started.
    pub fn serve(&self) -> Result<u8> {
        let mut command = self.command(None)?;
        eprintln!(
            "xtask: serving {} on {} ({}); Ctrl-C stops",
            self.root.display(),
            self.interface,
            match self.addressing {
                Addressing::Range { first, last } => format!("DHCP {first} - {last}"),
                Addressing::Proxy => "proxy DHCP".into(),
            }
        );
        use std::os::unix::process::CommandExt;
        let error = command.stderr(std::io::stdout()).exec();
        Err(Error::new(format!("cannot start dnsmasq: {error}")))
    }

    /// Starts dnsmasq in the background inside `netns`, its log written to
    /// `log`. It is killed when the returned [`Running`] drops.
    pub fn spawn(&self, netns: &NetNs, log: &Path) -> Result<Running> {
        let mut command = self.command(Some(netns))?;
        let log_file = File::create(log)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| Error::new(format!("cannot start dnsmasq: {e}")))?;
        let running = Running {
            child,
            log: log.to_path_buf(),
        };
        running.wait_until_ready()?;
        Ok(running)
    }
}

/// How long [`Running::wait_until_ready`] waits for dnsmasq to come up.
const READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A dnsmasq started by [`Server::spawn`]; killed on drop.
#[derive(Debug)]
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Everything dnsmasq has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for dnsmasq to say its TFTP server is up; an early exit (a bad
    /// option, a busy port) is an error with its log at once.
    ///
    /// The limit only ends a dnsmasq that neither comes up nor dies, so it
    /// can be generous: dnsmasq is up well within a second on an idle
    /// machine, and the 30 s allow for a loaded 2-core CI machine with a
    /// QEMU and image builds beside it.
    fn wait_until_ready(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + READY_LIMIT;
        while std::time::Instant::now() < deadline {
            if self.log().contains("TFTP root is") {
                return Ok(());
            }
            if !process_alive(self.child.id()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(Error::new(format!(
            "dnsmasq did not start:\n{}",
            self.log()
        )))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The server and the namespace go after this, as fields.
        let _ = std::fs::remove_file(&self.server.log);
    }
}

/// Whether `pid` (our child) still runs, without reaping it. A zombie
/// counts as gone.
fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the field after the parenthesised command name.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    matches!(state, Some(Some(s)) if s != 'Z' && s != 'X')
}

/// Makes [`PROXY_BIOS_BOOT_FILE`] and [`PROXY_UEFI_BOOT_FILE`] in `root`:
/// GRUB's network images as `grub-mknetdir` makes them (the PXE or EFI
/// network driver and TFTP built in, everything else loaded from the
/// prefix), with `server` named in the prefix.
fn make_proxy_images(root: &Path, server: Ipv4Addr) -> Result<()> {
    packages::ensure_all(&[
        packages::GRUB_MKIMAGE,
        packages::GRUB_BIOS,
        packages::GRUB_EFI,
    ])?;
    let prefix = format!("(tftp,{server})/{}", image::GRUB_DIR);
    let platforms = [
        (
            "i386-pc-pxe",
            packages::GRUB_BIOS,
            PROXY_BIOS_BOOT_FILE,
            "pxe",
        ),
        (
            "x86_64-efi",
            packages::GRUB_EFI,
            PROXY_UEFI_BOOT_FILE,
            "efinet",
        ),
    ];
    for (format, platform, out, driver) in platforms {
        let mut mkimage = Command::new("grub-mkimage");
        mkimage
            .args(["-O", format, "-p", &prefix, "-d"])
            .arg(image::grub_platform_dir(platform))
            .arg("-o")
            .arg(root.join(out))
            .args([driver, "tftp"]);
        image::run_quietly(&mut mkimage, "grub-mkimage")?;
    }
    Ok(())
}

/// The first IPv4 address of `interface` and its network address, from
/// `ip -o -4 addr show dev <interface>` (in `netns` if given).
pub fn interface_address(interface: &str, netns: Option<&NetNs>) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let mut command = match netns {
        Some(netns) => netns.command(packages::IP.name),
        None => Command::new(packages::IP.name),
    };
    let output = command
        .args(["-o", "-4", "addr", "show", "dev", interface])
        .output()
        .map_err(|e| Error::new(format!("cannot run ip: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    address_of(&text).ok_or_else(|| {
        Error::new(format!(
            "interface {interface} has no IPv4 address: proxy DHCP serves the network of one"
        ))
    })
}

/// The address and the network address in a line of `ip -o -4 addr`
/// (`... inet A/N ...`).
fn address_of(ip_output: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mut words = ip_output.split_whitespace();
    words.find(|w| *w == "inet")?;
    let (addr, prefix) = words.next()?.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some((addr, Ipv4Addr::from(u32::from(addr) & mask)))
}

/// Whether every directory from `/` down to `dir` lets others in, and `dir`
/// lets them list it: then dnsmasq can serve it as `nobody`.
fn readable_by_anyone(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    dir.ancestors()
        .all(|p| mode(p).is_ok_and(|m| m & 0o001 != 0))
        && mode(&dir).is_ok_and(|m| m & 0o004 != 0)
}

/// A private PXE network for one QEMU: a namespace, a tap in it with the
/// server's address, and dnsmasq serving `root` on it. Dropping it stops
/// dnsmasq, then removes the namespace and the tap, and dnsmasq's log.
#[derive(Debug)]
pub struct Lab {
    // Dropped in this order: the server before its namespace.
    server: Running,
    netns: NetNs,
}

/// The tap device inside a [`Lab`]'s namespace, which QEMU's NIC opens.
pub const LAB_TAP: &str = "rguest0";
/// The server's address on it, and the addresses it hands out.
const LAB_SERVER: &str = "10.33.0.1/24";
const LAB_FIRST: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 10);
const LAB_LAST: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 50);

impl Lab {
    /// Sets up the network and starts dnsmasq on it.
    pub fn start(root: &Path) -> Result<Self> {
        packages::ensure_all(&[packages::IP, packages::DNSMASQ, packages::IPXE_ROM])?;
        let netns = NetNs::create()?;
        netns.add_tap(LAB_TAP, LAB_SERVER)?;
        let log = std::env::temp_dir().join(format!("{}-dnsmasq.log", netns.name()));
        let server = Server {
            interface: LAB_TAP.into(),
            root: root.to_path_buf(),
            addressing: Addressing::Range {
                first: LAB_FIRST,
                last: LAB_LAST,
            },
        }
        .spawn(&netns, &log)?;
        Ok(Self { server, netns })
    }

    /// The namespace QEMU must run in.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// What dnsmasq logged (DHCP offers, TFTP transfers).
    pub fn server_log(&self) -> String {
        self.server.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addressing: Addressing) -> Server {
        Server {
            interface: "eth1".into(),
            root: "/srv/pxe".into(),
            addressing,
        }
    }

    fn joined(args: Vec<OsString>) -> String {
        args.into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_range_server_hands_bios_and_uefi_clients_their_grub() {
        let line = joined(server("10.0.0.10,10.0.0.20".parse().unwrap()).args(None));
        for part in [
            "--interface=eth1",
            "--tftp-root=/srv/pxe",
            "--enable-tftp",
            "--port=0",
            "--dhcp-range=10.0.0.10,10.0.0.20,1h",
            "--dhcp-match=set:efi64,option:client-arch,7",
            "--dhcp-boot=tag:efi64,boot/grub/x86_64-efi/core.efi",
            "--dhcp-boot=tag:!efi64,boot/grub/i386-pc/core.0",
        ] {
            assert!(line.contains(part), "{part} missing from {line}");
        }
        assert!(!line.contains("proxy"));
    }

    #[test]
    fn a_proxy_server_offers_boot_services_on_the_interface_network() {
        let line = joined(server(Addressing::Proxy).args(Some(Ipv4Addr::new(192, 168, 1, 0))));
        assert!(line.contains("--dhcp-range=192.168.1.0,proxy"), "{line}");
        assert!(line.contains("--pxe-service=x86PC,rguest,boot/grub/i386-pc/core-proxy.0"));
        assert!(line.contains("--pxe-service=BC_EFI,rguest,boot/grub/x86_64-efi/core-proxy.efi"));
        assert!(!line.contains("--dhcp-authoritative"));
    }

    #[test]
    fn ranges_parse_and_mistakes_are_refused() {
        assert_eq!(
            "10.0.0.10,10.0.0.20".parse::<Addressing>(),
            Ok(Addressing::Range {
                first: Ipv4Addr::new(10, 0, 0, 10),
                last: Ipv4Addr::new(10, 0, 0, 20)
            })
        );
        for bad in ["10.0.0.10", "10.0.0.20,10.0.0.10", "a,b", "10.0.0.1,"] {
            assert!(bad.parse::<Addressing>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_network_comes_from_ip_addr_output() {
        let line = "2: eth0    inet 192.168.7.23/24 brd 192.168.7.255 scope global eth0\\";
        assert_eq!(
            address_of(line),
            Some((
                Ipv4Addr::new(192, 168, 7, 23),
                Ipv4Addr::new(192, 168, 7, 0)
            ))
        );
        assert_eq!(
            address_of("3: x inet 10.1.2.3/8 scope global x").map(|(_, net)| net),
            Some(Ipv4Addr::new(10, 0, 0, 0))
        );
        assert_eq!(address_of(""), None);
    }

    #[test]
    fn a_dead_child_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Waits for the exit itself, not for a while: `true` may take any
        // time to start and end on a loaded machine. WNOWAIT leaves the
        // child a zombie, which is exactly the state to check.
        // SAFETY: `info` is a valid siginfo_t for waitid to fill; `pid` is
        // our own child, not yet reaped.
        let waited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        assert_eq!(waited, 0, "waitid: {}", std::io::Error::last_os_error());
        assert!(!process_alive(pid), "a zombie counts as gone");
        child.wait().unwrap();
        assert!(process_alive(std::process::id()));
    }
}
