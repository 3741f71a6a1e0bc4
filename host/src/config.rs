//! The kernel command line, parsed into a typed [`Config`].
//!
//! The command line is a list of `key=value` words separated by spaces, as
//! QEMU's `-append`, GRUB's `multiboot2` line or `cargo xtask run -- ...`
//! pass it. Every key the host knows has a typed value here; an unknown key
//! is a [`Warning`] (the machine still boots: a typo must not brick a remote
//! server), a known key with a malformed value is a [`ConfigError`] (the
//! machine stops and says which word was wrong, because running with a
//! setting the user did not ask for is worse).

use core::fmt;

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
}

impl BootTest {
    const NAMES: [(&'static str, BootTest); 6] = [
        ("fault-ud", BootTest::FaultInvalidOpcode),
        ("fault-pf", BootTest::FaultPageFault),
        ("fault-de", BootTest::FaultDivide),
        ("fault-stack", BootTest::FaultStackOverflow),
        ("panic", BootTest::Panic),
        ("alloc-stress", BootTest::AllocStress),
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
    /// `timer_hz=<1..=10000>`: the host's periodic tick (default 100).
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
    /// `bench=on|off`: measure the native analogues of the benchmarks
    /// before running the guests (default off).
    pub bench: bool,
    /// `roots=<2..16>`: shadow roots (address spaces) each guest caches
    /// (default 4).
    pub cached_roots: usize,
    /// `eviction=lru|random`: which cached root a new one replaces
    /// (default `lru`).
    pub eviction: RootEviction,
    /// `eager_fill=on|off`: map a reported entry at once when the guest
    /// already marked it accessed (default on).
    pub eager_fill: bool,
}

/// `eviction=`: which cached shadow root to throw out when a guest switches
/// to an address space not in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootEviction {
    /// The least recently used (`lru`).
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
            bench: false,
            cached_roots: 4,
            eviction: RootEviction::LeastRecentlyUsed,
            eager_fill: true,
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
    /// Parses `cmdline`, reporting ignorable words through `warn`.
    pub fn parse(
        cmdline: &'a str,
        mut warn: impl FnMut(Warning<'a>),
    ) -> Result<Self, ConfigError<'a>> {
        let mut config = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                warn(Warning::NotKeyValue(word));
                continue;
            };
            let bad = |expected| ConfigError {
                key,
                value,
                expected,
            };
            match key {
                "log" => config.log_level = parse_level(value).ok_or(bad(LOG_LEVELS))?,
                "timer_hz" => {
                    config.timer_hz = value
                        .parse()
                        .ok()
                        .filter(|hz| (1..=10_000).contains(hz))
                        .ok_or(bad("a whole number of Hz from 1 to 10000"))?
                }
                "test" => {
                    config.test = Some(
                        BootTest::NAMES
                            .iter()
                            .find(|(n, _)| *n == value)
                            .map(|(_, t)| *t)
                            .ok_or(bad(TEST_NAMES))?,
                    )
                }
                "guests" => {
                    if GuestSpec::parse_list(value).any(|s| s.is_none()) {
                        return Err(bad("a comma-separated list of image[/arg][:code|:killed]"));
                    }
                    config.guests = value;
                }
                "bench" => {
                    config.bench = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("on or off")),
                    }
                }
                "guest_mem" => {
                    config.guest_mem_mib = value
                        .parse()
                        .ok()
                        .filter(|m| (2..=1024).contains(m))
                        .ok_or(bad("a whole number of MiB from 2 to 1024"))?
                }
                "guest_budget_ms" => {
                    config.guest_budget_ms = value
                        .parse()
                        .ok()
                        .filter(|&m| m > 0)
                        .ok_or(bad("a whole number of milliseconds above 0"))?
                }
                "roots" => {
                    config.cached_roots = value
                        .parse()
                        .ok()
                        .filter(|r| (2..=16).contains(r))
                        .ok_or(bad("a whole number of roots from 2 to 16"))?
                }
                "eviction" => {
                    config.eviction = match value {
                        "lru" => RootEviction::LeastRecentlyUsed,
                        "random" => RootEviction::Random,
                        _ => return Err(bad("lru or random")),
                    }
                }
                "eager_fill" => {
                    config.eager_fill = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("on or off")),
                    }
                }
                _ => warn(Warning::UnknownKey(key)),
            }
        }
        Ok(config)
    }
}

const LOG_LEVELS: &str = "one of error, warn, info, debug, trace";
const TEST_NAMES: &str = "one of fault-ud, fault-pf, fault-de, fault-stack, panic, alloc-stress";

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
}

/// One guest to run: `image[/arg][:expect]`, e.g. `hello`, `trap/cli:killed`,
/// `bench:0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSpec<'a> {
    /// The archive entry to run.
    pub image: &'a str,
    /// Its command line (empty if none).
    pub arg: &'a str,
    /// How it should end (default: exit code 0).
    pub expect: Expect,
}

impl<'a> GuestSpec<'a> {
    /// Parses one `image[/arg][:expect]`; `None` if malformed.
    pub fn parse(word: &'a str) -> Option<Self> {
        let (rest, expect) = match word.rsplit_once(':') {
            Some((rest, "killed")) => (rest, Expect::Killed),
            Some((rest, code)) => (rest, Expect::Exit(code.parse().ok()?)),
            None => (word, Expect::Exit(0)),
        };
        let (image, arg) = rest.split_once('/').unwrap_or((rest, ""));
        let name_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        (!image.is_empty() && name_ok(image) && name_ok(arg)).then_some(Self { image, arg, expect })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(list: &'a str) -> impl Iterator<Item = Option<Self>> + 'a {
        list.split(',').map(Self::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    expect: Expect::Exit(0)
                }),
                Some(GuestSpec {
                    image: "trap",
                    arg: "cli",
                    expect: Expect::Killed
                }),
                Some(GuestSpec {
                    image: "bench",
                    arg: "",
                    expect: Expect::Exit(3)
                }),
            ]
        );
        assert_eq!(GuestSpec::parse("/x"), None);
        assert_eq!(GuestSpec::parse("a b"), None);
        assert_eq!(GuestSpec::parse("a:"), None);
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
        ] {
            let err = parse(line).0.unwrap_err();
            assert_eq!((err.key, err.value), (key, value), "{line}");
            assert!(std::format!("{err}").contains(line), "{err}");
        }
    }
}
