//! Network namespaces with a tap device: a private Ethernet segment on which
//! QEMU's NIC and a real DHCP/TFTP server (`dnsmasq`) meet, for PXE boots
//! under `cargo xtask run --boot pxe` and in the tests.
//!
//! A namespace keeps the DHCP server off every real network of the machine
//! (a stray DHCP server on a LAN is a nuisance), and each boot gets its own,
//! so two PXE boots at once never answer each other's machines.
//!
//! [`NetNs`] deletes its namespace when dropped, which also removes every
//! link inside it, also when a test fails. A process killed before its
//! `Drop` ran leaves a namespace behind; the next [`NetNs::create`] removes
//! those whose creating process is gone. Creating namespaces needs root
//! (`CAP_SYS_ADMIN`).

use crate::packages;
use crate::{Error, Result};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace we make is named `rguest-<pid>-<n>`.
const NAME_PREFIX: &str = "rguest-";

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with its loopback up.
    pub fn create() -> Result<Self> {
        packages::ensure(packages::IP)?;
        if !crate::packages::is_root() {
            return Err(Error::new(
                "a PXE boot needs a network namespace, which only root may create (run as root)",
            ));
        }
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a tap device `tap` with the IPv4 address `cidr` (`10.0.0.1/24`)
    /// and brings it up. It has no carrier until QEMU opens it.
    pub fn add_tap(&self, tap: &str, cidr: &str) -> Result<()> {
        let n = ["-n", self.name.as_str()];
        ip(&[&n[..], &["tuntap", "add", "dev", tap, "mode", "tap"]].concat())?;
        ip(&[&n[..], &["addr", "add", cidr, "dev", tap]].concat())?;
        ip(&[&n[..], &["link", "set", tap, "up"]].concat())
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// enters it and then execs `program`, so the child's pid is the
    /// program's (signals and process groups work as without it).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(packages::IP.name);
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!(
                "xtask: could not remove network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes our namespaces whose creating process no longer runs.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// The pid in a name `rguest-<pid>-<n>`.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Runs `ip` with `args`; its complaint becomes the error.
fn ip(args: &[&str]) -> Result<()> {
    let mut command = Command::new(packages::IP.name);
    command.args(args);
    crate::image::run_quietly(&mut command, &format!("ip {}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_names_are_ever_cleaned_up() {
        assert_eq!(creator_pid("rguest-1234-0"), Some(1234));
        assert_eq!(creator_pid("rguest-1234-x"), None);
        assert_eq!(creator_pid("rguest-lab"), None);
        assert_eq!(creator_pid("docker-1234-0"), None);
    }
}
