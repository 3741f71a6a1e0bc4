//! The kernel command line, parsed into a typed [`Config`].
//!
//! The command line is a list of `key=value` words separated by spaces, as
//! QEMU's `-append`, GRUB's `multiboot2` line or `cargo xtask run -- ...`
//! pass it. Every key the host knows is one entry of [`KEYS`], which says
//! what values it takes, its default and what it means, and reads it into a
//! typed field of [`Config`]; the README's command-line table is checked
//! against that list by a unit test here. An unknown key is a [`Warning`]
//! (the machine still boots: a typo must not brick a remote server), a known
//! key with a malformed value is a [`ConfigError`] (the machine stops and
//! says which word was wrong, because running with a setting the user did
//! not ask for is worse).

use crate::paging::{MAX_CACHED_ROOTS, MIN_CACHED_ROOTS};
use crate::sched::Placement;
use core::fmt;
use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use core::str::FromStr;

/// How much the host logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: one line per notable event.
    Info,
    /// Details useful while developing.
    Debug,
    /// Everything.
    Trace,
}

/// A self-test the kernel runs instead of its normal work, chosen with
/// `test=<name>`. The QEMU integration tests use these to prove that the
/// machinery they rely on (exception reports, exit status, allocator
/// balance) really works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTest {
    /// Execute `ud2`: an invalid-opcode exception report, failure status.
    FaultInvalidOpcode,
    /// Read an unmapped address: a page-fault report with CR2.
    FaultPageFault,
    /// Divide by zero.
    FaultDivide,
    /// Overflow the kernel stack: the double-fault handler on its IST stack
    /// must still report.
    FaultStackOverflow,
    /// Call `panic!`: the panic message and location, failure status.
    Panic,
    /// Allocate and free many frames and heap blocks; counts must balance.
    AllocStress,
    /// Bring up the machine's NIC and the host's interface, serve the
    /// counters over HTTP until the requests stop, then report.
    Net,
}

impl BootTest {
    const NAMES: [(&'static str, BootTest); 7] = [
        ("fault-ud", BootTest::FaultInvalidOpcode),
        ("fault-pf", BootTest::FaultPageFault),
        ("fault-de", BootTest::FaultDivide),
        ("fault-stack", BootTest::FaultStackOverflow),
        ("panic", BootTest::Panic),
        ("alloc-stress", BootTest::AllocStress),
        ("net", BootTest::Net),
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Everything the command line can set, with its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config<'a> {
    /// `log=error|warn|info|debug|trace` (default `info`).
    pub log_level: LogLevel,
    /// `timer_hz=<1..=10000>`: time slices of 1/timer_hz s between guests
    /// that wait for the CPU (default 100).
    pub timer_hz: u32,
    /// `test=<name>`: run a self-test (see [`BootTest`]).
    pub test: Option<BootTest>,
    /// `guests=a,b,...`: the guests to run, each `image[/arg][:expect]`
    /// (see [`GuestSpec`]); default `hello`.
    pub guests: &'a str,
    /// `guest_mem=<MiB>`: memory per guest (default 16, 2..=1024).
    pub guest_mem_mib: u64,
    /// `guest_budget_ms=<ms>`: the most CPU time a guest may use before the
    /// host ends it (default 60000).
    pub guest_budget_ms: u64,
    /// `bench=off|on|exits`: measure the native analogues of the
    /// benchmarks before running the guests, and with `exits` watch every
    /// guest exit for the host's share too (default off).
    pub bench: Bench,
    /// `roots=<2..16>`: shadow roots (address spaces) each guest caches
    /// (default 4).
    pub cached_roots: usize,
    /// `eviction=lru|random`: which cached root a new one replaces
    /// (default `lru`).
    pub eviction: RootEviction,
    /// `eager_fill=on|off`: map a reported entry at once when the guest
    /// already marked it accessed (default on).
    pub eager_fill: bool,
    /// `host_ip=dhcp|off|A.B.C.D/N`: how the host's own interface gets
    /// its address (default DHCP).
    pub host_ip: HostIp,
    /// `host_gateway=none|A.B.C.D`: the default route of a static
    /// `host_ip` (DHCP brings its own).
    pub host_gateway: Option<Ipv4Addr>,
    /// `http_port=<1..=65535>`: where the counters page is served
    /// (default 80).
    pub http_port: u16,
    /// `stats_interval_ms=<ms>`: print the counters on the console this
    /// often; 0, the default, never.
    pub stats_interval_ms: u64,
    /// `sched=affinity|rotate`: where a guest's next turn is: on the CPU
    /// of its last (default), or on the next CPU (a test aid).
    pub placement: Placement,
}

/// `host_ip=`: how the host's own network interface is addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIp {
    /// Ask a DHCP server on the uplink (`dhcp`).
    Dhcp,
    /// This address and prefix length (`10.0.2.15/24`).
    Static {
        /// The address.
        address: Ipv4Addr,
        /// The prefix length, 0 to 32.
        prefix_len: u8,
    },
    /// No host interface at all (`off`): no address, no counters page.
    Off,
}

impl HostIp {
    /// Parses `dhcp`, `off` or `A.B.C.D/N`.
    fn parse(value: &str) -> Option<Self> {
        match value {
            "dhcp" => Some(Self::Dhcp),
            "off" => Some(Self::Off),
            _ => {
                let (address, prefix_len) = value.split_once('/')?;
                Some(Self::Static {
                    address: address.parse().ok()?,
                    prefix_len: number(prefix_len, 0..=32)?,
                })
            }
        }
    }
}

/// `bench=`: what a boot measures besides running its guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// Nothing (`off`).
    Off,
    /// The native analogues of the benchmarks, measured by the host on
    /// itself before the guests run (`on`); the guests' own figures are
    /// then those of an unwatched host, as in any other boot.
    Native,
    /// The native analogues, and the host's share of every guest exit by
    /// kind (`exits`): two clock reads and a sum per exit, which every
    /// figure of the boot then includes (some 25 instructions an exit).
    Exits,
}

/// `eviction=`: which cached shadow root to throw out when a guest switches
/// to an address space not in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootEviction {
    /// The least recently used (`lru`), with a memory of the roots evicted
    /// lately: a miss on one of those (a cycle over more roots than the
    /// cache holds) evicts the most recently used instead.
    LeastRecentlyUsed,
    /// One at random (`random`), lguest's choice.
    Random,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            timer_hz: 100,
            test: None,
            guests: "hello",
            guest_mem_mib: 16,
            guest_budget_ms: 60_000,
            bench: Bench::Off,
            cached_roots: 4,
            eviction: RootEviction::LeastRecentlyUsed,
            eager_fill: true,
            host_ip: HostIp::Dhcp,
            host_gateway: None,
            http_port: 80,
            stats_interval_ms: 0,
            placement: Placement::Affinity,
        }
    }
}

/// A word the host did not understand but could ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warning<'a> {
    /// `key=value` with a key nobody reads.
    UnknownKey(&'a str),
    /// A word without `=`.
    NotKeyValue(&'a str),
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(k) => write!(f, "unknown command-line key `{k}` ignored"),
            Self::NotKeyValue(w) => {
                write!(f, "command-line word `{w}` is not key=value; ignored")
            }
        }
    }
}

/// A known key with a value that makes no sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError<'a> {
    /// The key.
    pub key: &'a str,
    /// The value given.
    pub value: &'a str,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command line: `{}={}` is not valid; expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl<'a> Config<'a> {
    /// Parses `cmdline`, reporting ignorable words through `warn`. A key is
    /// known if it is in [`KEYS`], and read by that entry.
    pub fn parse(
        cmdline: &'a str,
        mut warn: impl FnMut(Warning<'a>),
    ) -> Result<Self, ConfigError<'a>> {
        let mut config = Config::default();
        for word in words(cmdline) {
            let Some((key, value)) = word.split_once('=') else {
                warn(Warning::NotKeyValue(word));
                continue;
            };
            let value = unquote(value);
            match KEYS.iter().find(|known| known.name == key) {
                Some(known) => (known.set)(&mut config, value).map_err(|expected| ConfigError {
                    key,
                    value,
                    expected,
                })?,
                None => warn(Warning::UnknownKey(key)),
            }
        }
        Ok(config)
    }
}

/// The words of a command line: separated by whitespace, except inside
/// double quotes, so that a value may hold spaces (`guests="app/a b"`).
fn words(cmdline: &str) -> impl Iterator<Item = &str> {
    let mut rest = cmdline;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                !quoted && c.is_ascii_whitespace()
            })
            .map_or(rest.len(), |(i, _)| i);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word)
    })
}

/// A value without the double quotes around it, if it has them.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// One key of the kernel command line: what the README's table says of it,
/// and how the parser reads its value. [`KEYS`] holds them all.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The key, the part of the word before `=`.
    pub name: &'static str,
    /// The values it takes (Markdown, as the README shows them).
    pub values: &'static str,
    /// Its value when the command line does not name it, as it would be
    /// written there; `None` when leaving it out means "none" (no self-test).
    pub default: Option<&'static str>,
    /// What it does (Markdown).
    pub meaning: &'static str,
    /// Reads `value` into the configuration, or says what would have been
    /// accepted.
    set: for<'a> fn(&mut Config<'a>, &'a str) -> Result<(), &'static str>,
}

/// Every key of the kernel command line, in the order of the README's
/// table. The parser knows exactly these keys, and a unit test checks the
/// README's table against this list, row by row, so the two cannot drift.
pub const KEYS: [Key; 15] = [
    Key {
        name: "log",
        values: "`error`, `warn`, `info`, `debug`, `trace`",
        default: Some("info"),
        meaning: "how much the host logs",
        set: |c, v| {
            c.log_level = parse_level(v).ok_or(LOG_LEVELS)?;
            Ok(())
        },
    },
    Key {
        name: "timer_hz",
        values: "1 to 10000",
        default: Some("100"),
        meaning: "time slices: a guest runs up to 1/timer_hz s while another waits (the host's timer is one-shot, armed only for a slice's end, a guest's own timer or the end of its budget)",
        set: |c, v| {
            c.timer_hz = number(v, 1..=10_000).ok_or("a whole number of Hz from 1 to 10000")?;
            Ok(())
        },
    },
    Key {
        name: "test",
        values: "`fault-ud`, `fault-pf`, `fault-de`, `fault-stack`, `panic`, `alloc-stress`, `net`",
        default: None,
        meaning: "a self-test instead of normal work: the faults and `panic` must each end in a \
                  report and a failure status, `alloc-stress` in frame and heap counts that \
                  balance, `net` in the NIC and the host's interface up and the counters served \
                  over HTTP until no request has come for 3 s",
        set: |c, v| {
            let test = BootTest::NAMES.iter().find(|(n, _)| *n == v);
            c.test = Some(test.map(|(_, t)| *t).ok_or(TEST_NAMES)?);
            Ok(())
        },
    },
    Key {
        name: "guests",
        values: "comma-separated `name` or `name/argument` (its command line), each with \
                 `:code`, `:killed` or `:any` for the end expected (default `:0`), then \
                 optionally `:restart` (started again whenever it ends) or `:restart=N` (at \
                 most N times), and `:vcpus=N` (1 to 16 vCPUs, default 1); in double quotes (around the whole list) an argument may hold \
                 spaces and `=` (`guests=\"app/KEY=v a b,hello\"`)",
        default: Some("hello"),
        meaning: "the guests to run, from the guest archive; the QEMU exit status is success \
                  only if every guest ends as expected (`cargo xtask run` also passes \
                  `guests=hello`)",
        set: |c, v| {
            if GuestSpec::parse_list(v).any(|s| s.is_none()) {
                return Err(
                    "a comma-separated list of image[/arg][:code|:killed|:any][:restart[=N]][:vcpus=N], \
                     N vCPUs from 1 to 16",
                );
            }
            c.guests = v;
            Ok(())
        },
    },
    Key {
        name: "guest_mem",
        values: "2 to 1024",
        default: Some("16"),
        meaning: "memory per guest, in MiB",
        set: |c, v| {
            c.guest_mem_mib = number(v, 2..=1024).ok_or("a whole number of MiB from 2 to 1024")?;
            Ok(())
        },
    },
    Key {
        name: "guest_budget_ms",
        values: "a whole number above 0",
        default: Some("60000"),
        meaning: "CPU time a guest may use, in milliseconds, before the host ends it",
        set: |c, v| {
            c.guest_budget_ms =
                number(v, 1..=u64::MAX).ok_or("a whole number of milliseconds above 0")?;
            Ok(())
        },
    },
    Key {
        name: "bench",
        values: "`off`, `on`, `exits`",
        default: Some("off"),
        meaning: "measure the native analogues of the benchmarks before running the guests; \
                  `exits` also measures the host's share of every guest exit, by kind (which \
                  costs each exit some 25 instructions)",
        set: |c, v| {
            c.bench = match v {
                "off" => Bench::Off,
                "on" => Bench::Native,
                "exits" => Bench::Exits,
                _ => return Err("off, on or exits"),
            };
            Ok(())
        },
    },
    Key {
        name: "roots",
        values: "2 to 16",
        default: Some("4"),
        meaning: "shadow roots (address spaces) each guest keeps cached",
        set: |c, v| {
            c.cached_roots = number(v, MIN_CACHED_ROOTS..=MAX_CACHED_ROOTS)
                .ok_or("a whole number of roots from 2 to 16")?;
            Ok(())
        },
    },
    Key {
        name: "eviction",
        values: "`lru`, `random`",
        default: Some("lru"),
        meaning: "which cached shadow root a new one replaces: the least recently used (with a \
                  memory of the roots evicted lately: a miss on one of those, a cycle over more \
                  roots than fit, evicts the most recently used instead), or one at random \
                  (lguest's choice)",
        set: |c, v| {
            c.eviction = match v {
                "lru" => RootEviction::LeastRecentlyUsed,
                "random" => RootEviction::Random,
                _ => return Err("lru or random"),
            };
            Ok(())
        },
    },
    Key {
        name: "eager_fill",
        values: "`on`, `off`",
        default: Some("on"),
        meaning: "map a page at once when the guest reports an entry it already marked \
                  accessed (`off`: only drop the old shadow entry, and let the next fault \
                  fill it)",
        set: |c, v| {
            c.eager_fill = on_off(v)?;
            Ok(())
        },
    },
    Key {
        name: "sched",
        values: "`affinity`, `rotate`",
        default: Some("affinity"),
        meaning: "where a guest's next turn is: on the CPU it last ran on (`affinity`), or on \
                  the next CPU, so that every guest moves at every turn (`rotate`, a test aid)",
        set: |c, v| {
            c.placement = match v {
                "affinity" => Placement::Affinity,
                "rotate" => Placement::Rotate,
                _ => return Err("affinity or rotate"),
            };
            Ok(())
        },
    },
    Key {
        name: "host_ip",
        values: "`dhcp`, `off`, or an address and prefix length (`10.0.2.15/24`)",
        default: Some("dhcp"),
        meaning: "how the host's own network interface (a port of the virtual switch, which \
                  serves the counters page) gets its address: from a DHCP server on the uplink, \
                  this one, or none: `off` leaves the interface out",
        set: |c, v| {
            c.host_ip = HostIp::parse(v).ok_or("dhcp, off, or an address like 10.0.2.15/24")?;
            Ok(())
        },
    },
    Key {
        name: "host_gateway",
        values: "`none`, or an address (`10.0.2.2`)",
        default: Some("none"),
        meaning: "the default route of a static `host_ip` (DHCP brings its own)",
        set: |c, v| {
            c.host_gateway = match v {
                "none" => None,
                _ => Some(v.parse().map_err(|_| "none, or an address like 10.0.2.2")?),
            };
            Ok(())
        },
    },
    Key {
        name: "http_port",
        values: "1 to 65535",
        default: Some("80"),
        meaning: "the TCP port of the counters page on the host's interface: `/` (HTML, \
                  reloading itself) and `/counters` (JSON)",
        set: |c, v| {
            c.http_port = number(v, 1..=65_535).ok_or("a TCP port from 1 to 65535")?;
            Ok(())
        },
    },
    Key {
        name: "stats_interval_ms",
        values: "0, or a whole number of milliseconds",
        default: Some("0"),
        meaning: "print the counters page's numbers on the console this often, as `stats ...` \
                  lines (0: never)",
        set: |c, v| {
            c.stats_interval_ms =
                number(v, 0..=u64::MAX).ok_or("a whole number of milliseconds")?;
            Ok(())
        },
    },
];

// The error message for `roots=` names the bounds.
const _: () = assert!(MIN_CACHED_ROOTS == 2 && MAX_CACHED_ROOTS == 16);

const LOG_LEVELS: &str = "one of error, warn, info, debug, trace";
const TEST_NAMES: &str =
    "one of fault-ud, fault-pf, fault-de, fault-stack, panic, alloc-stress, net";

/// A whole number in `range`.
fn number<T: FromStr + PartialOrd>(value: &str, range: RangeInclusive<T>) -> Option<T> {
    value.parse().ok().filter(|n| range.contains(n))
}

/// `on` or `off`.
fn on_off(value: &str) -> Result<bool, &'static str> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off"),
    }
}

fn parse_level(value: &str) -> Option<LogLevel> {
    Some(match value {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

/// How a guest is expected to end (the QEMU exit status is success only
/// if every guest ends as expected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Shut down with this exit code.
    Exit(u64),
    /// Killed by the host.
    Killed,
    /// Either: the guest may exit with any code or be killed (a fuzzer,
    /// whose end depends on what it draws). The run then stands or falls
    /// by the host surviving it, and by the other guests.
    Any,
}

/// Whether a guest that ends is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// It is not (the default).
    Never,
    /// It is, this many times at most (`:restart=N`).
    Times(u32),
    /// It is, every time (`:restart`): a service, which the machine runs
    /// until it is stopped.
    Always,
}

impl Restart {
    /// Whether another life is allowed.
    pub fn allows_another(self) -> bool {
        !matches!(self, Self::Never | Self::Times(0))
    }

    /// Uses up one restart; false (and nothing changes) if none is left.
    pub fn take_one(&mut self) -> bool {
        if !self.allows_another() {
            return false;
        }
        if let Self::Times(left) = self {
            *left -= 1;
        }
        true
    }
}

/// One guest to run: `image[/arg][:expect][:restart[=N]][:vcpus=N]`, e.g.
/// `hello`, `trap/cli:killed`, `bench:0`, `fuzz/7/10000:any`,
/// `args-std/LANG=C a b`, `web:any:restart`, `smp/race:0:vcpus=2`. A guest to be restarted is started afresh from its
/// image with the same argument, network card and address, and each of
/// its lives is expected to end as `expect` says. The argument may
/// hold `/`, `=`, `+`, `@`, `%` and spaces (the guest reads it as it likes:
/// a `std` guest's runtime makes its environment and arguments of it), the
/// image name may not; neither may hold `,`, `:` or quotes, which the list
/// and the command line use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSpec<'a> {
    /// The archive entry to run.
    pub image: &'a str,
    /// Its command line (empty if none).
    pub arg: &'a str,
    /// How it should end (default: exit code 0).
    pub expect: Expect,
    /// Whether it is started again when it ends (default: never).
    pub restart: Restart,
    /// How many vCPUs it may run (`:vcpus=N`, 1 to [`MAX_GUEST_VCPUS`];
    /// default 1).
    pub vcpus: u16,
}

/// The most vCPUs one guest may have. More than the host has CPUs is
/// allowed (they take turns), but each costs a register page and a share
/// of every shadow-table change (a vCPU's own shadow roots, and the
/// shoot-down that waits for it).
pub const MAX_GUEST_VCPUS: u16 = 16;

impl<'a> GuestSpec<'a> {
    /// Parses one `image[/arg][:expect][:restart[=N]][:vcpus=N]` (the last
    /// two in either order); `None` if malformed.
    pub fn parse(word: &'a str) -> Option<Self> {
        // The options come last, in any order, each at most once.
        let mut word = word;
        let mut restart = None;
        let mut vcpus = None;
        while let Some((rest, option)) = word.rsplit_once(':') {
            if option == "restart" && restart.is_none() {
                restart = Some(Restart::Always);
            } else if let Some(times) = option.strip_prefix("restart=")
                && restart.is_none()
            {
                restart = Some(Restart::Times(times.parse().ok()?));
            } else if let Some(count) = option.strip_prefix("vcpus=")
                && vcpus.is_none()
            {
                let count: u16 = count.parse().ok()?;
                vcpus = Some(count);
                if !(1..=MAX_GUEST_VCPUS).contains(&count) {
                    return None;
                }
            } else {
                break;
            }
            word = rest;
        }
        let restart = restart.unwrap_or(Restart::Never);
        let vcpus = vcpus.unwrap_or(1);
        let (rest, expect) = match word.rsplit_once(':') {
            Some((rest, "killed")) => (rest, Expect::Killed),
            Some((rest, "any")) => (rest, Expect::Any),
            Some((rest, code)) => (rest, Expect::Exit(code.parse().ok()?)),
            None => (word, Expect::Exit(0)),
        };
        let (image, arg) = rest.split_once('/').unwrap_or((rest, ""));
        let name_ok = |s: &str, extra: &[u8]| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
        };
        (!image.is_empty() && name_ok(image, b"") && name_ok(arg, b"/=+@% ")).then_some(Self {
            image,
            arg,
            expect,
            restart,
            vcpus,
        })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(list: &'a str) -> impl Iterator<Item = Option<Self>> + 'a {
        list.split(',').map(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn parse(s: &str) -> (Result<Config<'_>, ConfigError<'_>>, Vec<Warning<'_>>) {
        let mut warnings = Vec::new();
        let r = Config::parse(s, |w| warnings.push(w));
        (r, warnings)
    }

    #[test]
    fn empty_line_gives_defaults() {
        let (c, w) = parse("   ");
        assert_eq!(c.unwrap(), Config::default());
        assert!(w.is_empty());
    }

    #[test]
    fn known_keys_are_typed() {
        let (c, w) = parse("log=debug timer_hz=250 test=fault-pf guests=hello,bench");
        let c = c.unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.timer_hz, 250);
        assert_eq!(c.test, Some(BootTest::FaultPageFault));
        assert_eq!(c.test.unwrap().name(), "fault-pf");
        assert_eq!(c.guests, "hello,bench");
        assert!(w.is_empty());
    }

    #[test]
    fn guest_specs_name_image_argument_and_expected_end() {
        let specs: Vec<_> = GuestSpec::parse_list("hello,trap/cli:killed,bench:3").collect();
        assert_eq!(
            specs,
            [
                Some(GuestSpec {
                    image: "hello",
                    arg: "",
                    expect: Expect::Exit(0),
                    restart: Restart::Never,
                    vcpus: 1,
                }),
                Some(GuestSpec {
                    image: "trap",
                    arg: "cli",
                    expect: Expect::Killed,
                    restart: Restart::Never,
                    vcpus: 1,
                }),
                Some(GuestSpec {
                    image: "bench",
                    arg: "",
                    expect: Expect::Exit(3),
                    restart: Restart::Never,
                    vcpus: 1,
                }),
            ]
        );
        assert_eq!(GuestSpec::parse("/x"), None);
        assert_eq!(GuestSpec::parse("a b"), None);
        assert_eq!(GuestSpec::parse("a:"), None);
    }

    #[test]
    fn a_quoted_value_may_hold_spaces_and_equals_signs() {
        let (c, w) =
            parse(r#"log=debug guests="args-std/LANG=C HOME=/tmp a  b:0,hello" timer_hz=250"#);
        let c = c.unwrap();
        assert_eq!(c.guests, "args-std/LANG=C HOME=/tmp a  b:0,hello");
        assert_eq!((c.log_level, c.timer_hz), (LogLevel::Debug, 250));
        assert!(w.is_empty());
        let specs: Vec<_> = GuestSpec::parse_list(c.guests).flatten().collect();
        assert_eq!(specs[0].arg, "LANG=C HOME=/tmp a  b");
        assert_eq!(specs[1].image, "hello");
        // Unquoted, the space ends the word, and the rest is not key=value.
        let (c, w) = parse("guests=args-std/a b");
        assert_eq!(c.unwrap().guests, "args-std/a");
        assert_eq!(w, [Warning::NotKeyValue("b")]);
        // What the list and the command line use stays out of an argument.
        for bad in [r#"guests="a/x"y""#, "guests=a/x:y", r#"guests="a/ö""#] {
            assert!(parse(bad).0.is_err(), "{bad}");
        }
    }

    #[test]
    fn restarts_are_used_up_one_by_one_unless_there_is_no_bound() {
        let mut twice = Restart::Times(2);
        assert!(twice.take_one() && twice.take_one());
        assert_eq!(twice, Restart::Times(0));
        assert!(!twice.allows_another() && !twice.take_one());
        assert_eq!(twice, Restart::Times(0));
        let mut never = Restart::Never;
        assert!(!never.take_one());
        let mut always = Restart::Always;
        assert!((0..1000).all(|_| always.take_one()));
        assert_eq!(always, Restart::Always);
    }

    #[test]
    fn any_end_may_be_expected_and_arguments_may_hold_slashes() {
        assert_eq!(
            GuestSpec::parse("fuzz/7/10000/verbose:any"),
            Some(GuestSpec {
                image: "fuzz",
                arg: "7/10000/verbose",
                expect: Expect::Any,
                restart: Restart::Never,
                vcpus: 1,
            })
        );
        assert_eq!(
            GuestSpec::parse("fuzz/1/2").map(|s| (s.arg, s.expect)),
            Some(("1/2", Expect::Exit(0)))
        );
        assert_eq!(GuestSpec::parse("fuzz/1:anything"), None);
        assert_eq!(
            GuestSpec::parse("web/8080:any:restart").map(|s| (s.arg, s.expect, s.restart)),
            Some(("8080", Expect::Any, Restart::Always))
        );
        assert_eq!(
            GuestSpec::parse("hello:restart=2").map(|s| (s.expect, s.restart)),
            Some((Expect::Exit(0), Restart::Times(2)))
        );
        assert_eq!(
            GuestSpec::parse("hello:killed:restart=0").map(|s| (s.expect, s.restart)),
            Some((Expect::Killed, Restart::Times(0)))
        );
        for bad in [
            "hello:restart=x",
            "hello:restart=",
            "hello:restart:any",
            "hello:restart=-1",
        ] {
            assert_eq!(GuestSpec::parse(bad), None, "{bad}");
        }
        assert_eq!(GuestSpec::parse("fuzz/1:Any"), None);
        let (c, w) = parse("guests=fuzz/1/100:any,fuzz/2/100:any,hello");
        assert_eq!(c.unwrap().guests, "fuzz/1/100:any,fuzz/2/100:any,hello");
        assert!(w.is_empty());
    }

    #[test]
    fn vcpus_are_counted_from_one_to_the_bound_in_either_order_with_restart() {
        let vcpus = |s| GuestSpec::parse(s).map(|s| (s.expect, s.restart, s.vcpus));
        assert_eq!(vcpus("smp"), Some((Expect::Exit(0), Restart::Never, 1)));
        assert_eq!(
            vcpus("smp/race:0:vcpus=2"),
            Some((Expect::Exit(0), Restart::Never, 2))
        );
        assert_eq!(
            vcpus("smp:any:vcpus=16:restart=1"),
            Some((Expect::Any, Restart::Times(1), 16))
        );
        assert_eq!(
            vcpus("smp:killed:restart:vcpus=3"),
            Some((Expect::Killed, Restart::Always, 3))
        );
        for bad in [
            "smp:vcpus=0",
            "smp:vcpus=17",
            "smp:vcpus=",
            "smp:vcpus=two",
            "smp:vcpus=2:vcpus=2",
            "smp:restart:restart=1",
            "smp:vcpus=2:any",
        ] {
            assert_eq!(GuestSpec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sched_places_guests_by_affinity_unless_told_to_rotate() {
        assert_eq!(Config::default().placement, Placement::Affinity);
        let (c, w) = parse("sched=rotate");
        assert_eq!((c.unwrap().placement, w), (Placement::Rotate, Vec::new()));
        let (c, _) = parse("sched=affinity");
        assert_eq!(c.unwrap().placement, Placement::Affinity);
    }

    #[test]
    fn shadow_root_cache_keys_are_typed() {
        let c = parse("").0.unwrap();
        assert_eq!(
            (c.cached_roots, c.eviction, c.eager_fill),
            (4, RootEviction::LeastRecentlyUsed, true)
        );
        let (c, w) = parse("roots=16 eviction=random eager_fill=off");
        let c = c.unwrap();
        assert_eq!(
            (c.cached_roots, c.eviction, c.eager_fill),
            (16, RootEviction::Random, false)
        );
        assert!(w.is_empty());
        let c = parse("roots=2 eviction=lru eager_fill=on").0.unwrap();
        assert_eq!(
            (c.cached_roots, c.eviction, c.eager_fill),
            (2, RootEviction::LeastRecentlyUsed, true)
        );
    }

    #[test]
    fn host_network_keys_are_typed() {
        let c = parse("").0.unwrap();
        assert_eq!(
            (c.host_ip, c.host_gateway, c.http_port, c.stats_interval_ms),
            (HostIp::Dhcp, None, 80, 0)
        );
        let (c, w) = parse(
            "host_ip=10.0.2.15/24 host_gateway=10.0.2.2 http_port=8080 stats_interval_ms=500",
        );
        let c = c.unwrap();
        assert_eq!(
            c.host_ip,
            HostIp::Static {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24
            }
        );
        assert_eq!(c.host_gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!((c.http_port, c.stats_interval_ms), (8080, 500));
        assert!(w.is_empty());
        assert_eq!(parse("host_ip=off").0.unwrap().host_ip, HostIp::Off);
        assert_eq!(parse("test=net").0.unwrap().test, Some(BootTest::Net));
    }

    #[test]
    fn later_words_override_earlier_ones() {
        let (c, _) = parse("log=error log=trace");
        assert_eq!(c.unwrap().log_level, LogLevel::Trace);
    }

    #[test]
    fn unknown_and_bare_words_are_warnings() {
        let (c, w) = parse("colour=blue quiet log=warn");
        assert_eq!(c.unwrap().log_level, LogLevel::Warn);
        assert_eq!(
            w,
            [Warning::UnknownKey("colour"), Warning::NotKeyValue("quiet")]
        );
    }

    #[test]
    fn malformed_values_are_errors_naming_the_word() {
        for (line, key, value) in [
            ("log=loud", "log", "loud"),
            ("timer_hz=0", "timer_hz", "0"),
            ("timer_hz=fast", "timer_hz", "fast"),
            ("test=nope", "test", "nope"),
            ("guests=", "guests", ""),
            ("guests=a,,b", "guests", "a,,b"),
            ("guests=trap/cli:maybe", "guests", "trap/cli:maybe"),
            ("guest_mem=1", "guest_mem", "1"),
            ("guest_budget_ms=0", "guest_budget_ms", "0"),
            ("roots=1", "roots", "1"),
            ("roots=17", "roots", "17"),
            ("roots=many", "roots", "many"),
            ("eviction=fifo", "eviction", "fifo"),
            ("eager_fill=yes", "eager_fill", "yes"),
            ("sched=random", "sched", "random"),
            ("host_ip=auto", "host_ip", "auto"),
            ("host_ip=10.0.2.15", "host_ip", "10.0.2.15"),
            ("host_ip=10.0.2.15/33", "host_ip", "10.0.2.15/33"),
            ("host_ip=10.0.2/24", "host_ip", "10.0.2/24"),
            ("host_gateway=10.0.2", "host_gateway", "10.0.2"),
            ("http_port=0", "http_port", "0"),
            ("http_port=65536", "http_port", "65536"),
            ("stats_interval_ms=-1", "stats_interval_ms", "-1"),
        ] {
            let err = parse(line).0.unwrap_err();
            assert_eq!((err.key, err.value), (key, value), "{line}");
            assert!(std::format!("{err}").contains(line), "{err}");
        }
    }

    #[test]
    fn every_key_in_the_list_is_known_and_its_default_is_the_default() {
        for key in KEYS {
            let bogus = format!("{}=?", key.name);
            let err = parse(&bogus).0.unwrap_err();
            assert_eq!(err.key, key.name, "{bogus} must be an error, not a warning");
            match key.default {
                Some(default) => {
                    let word = format!("{}={default}", key.name);
                    let (c, w) = parse(&word);
                    assert_eq!(c, Ok(Config::default()), "{word} is not the default");
                    assert!(w.is_empty(), "{word}");
                }
                None => {
                    assert_eq!(key.name, "test", "only `test` has no default");
                    assert_eq!(Config::default().test, None);
                }
            }
        }
        let values = |name| KEYS.iter().find(|k| k.name == name).unwrap().values;
        for (name, _) in BootTest::NAMES {
            assert!(values("test").contains(&format!("`{name}`")), "{name}");
        }
        for name in ["error", "warn", "info", "debug", "trace"] {
            assert!(values("log").contains(&format!("`{name}`")), "{name}");
        }
    }

    /// The cells of one Markdown table row (a `\|` does not split).
    fn cells(line: &str) -> Vec<String> {
        let line = line.trim();
        let inner = line.strip_prefix('|').unwrap_or(line);
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        let mut cells = std::vec![String::new()];
        let mut escaped = false;
        for ch in inner.chars() {
            match cells.last_mut() {
                Some(cell) if ch != '|' || escaped => cell.push(ch),
                _ => cells.push(String::new()),
            }
            escaped = ch == '\\';
        }
        cells.iter().map(|c| c.trim().to_string()).collect()
    }

    /// The rows of the table in the README's "The kernel command line".
    fn readme_rows(readme: &str) -> Vec<Vec<String>> {
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("The kernel command line\n"))
            .expect("README.md has no section `## The kernel command line`");
        let mut lines = section.lines().skip_while(|l| !l.starts_with("| key |"));
        let header = lines
            .next()
            .expect("that section has no `| key | ...` table");
        assert_eq!(cells(header), ["key", "values", "default", "meaning"]);
        lines.next(); // | --- | --- | ...
        lines
            .take_while(|l| l.starts_with('|'))
            .map(cells)
            .collect()
    }

    /// The README row of `key`.
    fn readme_row(key: &Key) -> Vec<String> {
        std::vec![
            format!("`{}`", key.name),
            key.values.to_string(),
            key.default
                .map_or_else(|| "none".to_string(), |d| format!("`{d}`")),
            key.meaning.to_string(),
        ]
    }

    #[test]
    fn the_readme_table_has_one_row_per_key_in_order_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let rows = readme_rows(&readme);
        let wanted: Vec<_> = KEYS.iter().map(readme_row).collect();
        let table: Vec<_> = wanted
            .iter()
            .map(|row| format!("| {} |", row.join(" | ")))
            .collect();
        let table = table.join("\n");
        let first =
            |rows: &[Vec<String>]| -> Vec<String> { rows.iter().map(|r| r[0].clone()).collect() };
        assert_eq!(
            first(&rows),
            first(&wanted),
            "the README's command-line table must have one row per key of \
             host::config::KEYS, in its order; its rows should be:\n{table}"
        );
        for (row, want) in rows.iter().zip(&wanted) {
            assert_eq!(row.get(2), want.get(2), "the default of {}", want[0]);
            assert_eq!(
                row,
                want,
                "the README's row for {} should read:\n| {} |",
                want[0],
                want.join(" | ")
            );
        }
    }
}
