//! # `fuzz`: a guest that attacks the host at random, from a seed
//!
//! Its command line is `<seed>/<steps>` (`guests=fuzz/7/10000:any`), with
//! an optional `/verbose`. From the seed a splitmix64 stream ([`rng`])
//! draws `steps` actions, each one of:
//!
//! - hypercalls with random numbers (0 to 17, unknown ones included) and
//!   arguments from a pool of boundary values ([`calls`]): 0, 1, all ones,
//!   the canonical edges, the switcher's slot and its last page, the
//!   fuzzer's own code, stack and shared page, guest-physical addresses at
//!   and past the end of its memory, unaligned and random values;
//! - page-table entries ([`space`]): an orderly region whose every change
//!   is reported properly (by hypercall or through the MMU ring), a chaos
//!   region of random entries (random flags, reserved bits, large pages at
//!   levels 2 and 3, frames inside and outside guest memory, the shared
//!   page, its own tables), reported or not, random MMU ring contents, and
//!   address spaces of its own; then reads, writes and fetches there;
//! - the zero pool ([`pool`]): pages lent to the host (free frames set
//!   aside for it, now and then a page that is none: unaligned, past the
//!   end of memory, huge; or counts more than a pool ahead of `taken`, or
//!   behind it), zero-on-demand entries with random rights and software
//!   bits written into the orderly region and read, written or fetched
//!   (the host must fill them with a lent page of zeros, or reflect the
//!   not-present fault when the pool is empty or the rights forbid the
//!   access), marks that are none (at levels 2 and 3, or with address
//!   bits), which must stay plain not-present entries, and the counts
//!   reset to take the pages back;
//! - privileged and segment instructions ([`cpu`]): segment loads with
//!   random selectors, `lar`/`lsl`/`verr`/`verw`, `pushf`/`popf` with
//!   random flags, far jumps, calls and returns, `int n`, `iretq` with
//!   crafted frames, excursions to ring 3, exceptions of every kind, x87
//!   and SSE exceptions, and the plainly privileged instructions.
//!
//! Every trap comes back to the fuzzer ([`recover`]). Before each action
//! the fuzzer asks its model of the host ([`model`]) how the action may end
//! it: an action that must or may end it is announced on the console first
//! (`fuzz: step <n>: must be killed (<reason>): <what>`, `... may end: ...`,
//! `... must exit <code>: ...`), so the host's kill reason can be checked
//! against it, and only a few such actions are carried out at all, so
//! that most seeds get thousands of steps deep (see
//! [`LETHAL_DAMPING`] and [`INCIDENTAL_DAMPING`]). Where the
//! shadow page tables must agree with the fuzzer's own tables (nothing
//! changed behind the host's back since the last flush), every access is
//! checked against the model: it faults with the error code the model
//! says, or reads what the frame holds, and the host set the accessed and
//! dirty bits. Every page the host takes from the zero pool is predicted:
//! a fault that may take one is only made where the shadow must agree, and
//! after each action the pool's `taken` count must be the model's; a
//! lent page that makes no sense is lethal only at the fault that takes
//! it, and announced there.
//!
//! Nothing the fuzzer does depends on time, so the same seed does the same
//! thing on every run, and a seed and the step it reached are a complete
//! record of what it did: no clock is read; its virtual interrupts are off
//! but for short windows in which it raises interrupts itself (pending
//! bits it writes into the shared page); every `halt` is preceded by a
//! timer it armed itself; and no page whose contents change with time or
//! with the command line (the shared page, the boot parameters, its own
//! stack) is ever linked where a walk could read it as a page table.
//! Verbose runs do the same as quiet ones, step for step.
//!
//! It prints `fuzz: progress <n> steps` every 1000 steps and `fuzz: done:
//! ...` at the end, then exits 0. Exit codes: 1 ([`SURVIVED`]) when an
//! action the host must kill it for did not; 3 ([`recover::LOST_CONTROL`])
//! when a trap came where the fuzzer had none guarded; 4 ([`MISMATCH`])
//! when the shadow tables disagreed with the model; 5 for a bad command
//! line or a refused setup. `cargo xtask fuzz` runs many seeds.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[path = "fuzz/calls.rs"]
mod calls;
#[cfg(target_os = "none")]
#[path = "fuzz/cpu.rs"]
mod cpu;
#[cfg(target_os = "none")]
#[path = "fuzz/model.rs"]
mod model;
#[cfg(target_os = "none")]
#[path = "fuzz/pool.rs"]
mod pool;
#[cfg(target_os = "none")]
#[path = "fuzz/recover.rs"]
mod recover;
#[cfg(target_os = "none")]
#[path = "fuzz/rng.rs"]
mod rng;
#[cfg(target_os = "none")]
#[path = "fuzz/space.rs"]
mod space;

#[cfg(target_os = "none")]
guest_rt::entry!(fuzzer::main);

/// The exit code when an action the host must kill us for did not.
#[cfg(target_os = "none")]
pub const SURVIVED: u64 = 1;
/// The exit code when the shadow page tables disagreed with the model.
#[cfg(target_os = "none")]
pub const MISMATCH: u64 = 4;
/// The exit code for a bad command line or a setup the host refused.
#[cfg(target_os = "none")]
pub const BAD_SETUP: u64 = 5;

/// Of the actions meant to end the fuzzer (privileged instructions,
/// `int n`, returns to ring 0, hypercalls from ring 3, writes to the
/// switcher, halts nothing can end, shutdowns, the touch that follows a
/// bad page or bad counts put in the zero pool), one in this many is
/// carried out; the others are skipped (the step does nothing).
#[cfg(target_os = "none")]
pub const LETHAL_DAMPING: u64 = 300;

/// Of the other actions the model calls lethal (a report or an access
/// that meets a malformed entry or a zero pool left in a bad state, a ring
/// with garbage in it, a random hypercall's bad argument), one in this
/// many is carried out. Once the
/// chaos region holds malformed entries, a good part of the actions there
/// are lethal: without this, no seed would get deep.
#[cfg(target_os = "none")]
pub const INCIDENTAL_DAMPING: u64 = 1000;

/// Steps between two progress lines.
#[cfg(target_os = "none")]
pub const PROGRESS_EVERY: u64 = 1000;

#[cfg(target_os = "none")]
mod fuzzer {
    use crate::model::{Fate, Limits};
    use crate::recover::{self, STEP};
    use crate::rng::Rng;
    use crate::space::Space;
    use crate::{
        BAD_SETUP, INCIDENTAL_DAMPING, LETHAL_DAMPING, MISMATCH, PROGRESS_EVERY, SURVIVED,
    };
    use core::fmt;
    use core::sync::atomic::Ordering;
    use guest_rt::{boot, hypercall, println};

    /// Counts of what the run did, printed at the end.
    #[derive(Default)]
    pub struct Stats {
        /// Actions of each kind carried out (indexed by [`Kind`]).
        pub by_kind: [u64; Kind::ALL.len()],
        /// Lethal actions skipped (see [`crate::LETHAL_DAMPING`]).
        pub lethal_skipped: u64,
        /// Accesses checked against the model.
        pub checked: u64,
    }

    /// The kinds of action, each with its weight (relative to the others:
    /// about one step in four is a touch) and its name in the report.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Hypercall,
        OrderlyEntry,
        ChaosEntry,
        Ring,
        Root,
        Flush,
        Touch,
        Spray,
        Segment,
        Flags,
        FarTransfer,
        Exception,
        Fpu,
        CpuState,
        Interrupts,
        Iretq,
        IntN,
        User,
        Privileged,
        Halt,
        Shutdown,
        ZeroPool,
    }

    impl Kind {
        const ALL: [(Kind, u32, &'static str); 22] = [
            (Kind::Hypercall, 110, "hypercall"),
            (Kind::OrderlyEntry, 110, "orderly-entry"),
            (Kind::ChaosEntry, 80, "chaos-entry"),
            (Kind::Ring, 45, "ring"),
            (Kind::Root, 30, "root"),
            (Kind::Flush, 35, "flush"),
            (Kind::Touch, 250, "touch"),
            (Kind::Spray, 2, "spray"),
            (Kind::Segment, 60, "segment"),
            (Kind::Flags, 30, "flags"),
            (Kind::FarTransfer, 30, "far"),
            (Kind::Exception, 50, "exception"),
            (Kind::Fpu, 20, "fpu"),
            (Kind::CpuState, 10, "cpu-state"),
            (Kind::Interrupts, 10, "interrupts"),
            (Kind::Iretq, 25, "iretq"),
            (Kind::IntN, 20, "int-n"),
            (Kind::User, 30, "user"),
            (Kind::Privileged, 5, "privileged"),
            (Kind::Halt, 3, "halt"),
            (Kind::Shutdown, 2, "shutdown"),
            (Kind::ZeroPool, 40, "zero-pool"),
        ];

        fn index(self) -> usize {
            Self::ALL.iter().position(|(k, ..)| *k == self).unwrap_or(0)
        }

        /// How many lethal actions of this kind are skipped for each one
        /// carried out.
        fn damping(self) -> u64 {
            match self {
                Kind::Privileged
                | Kind::Halt
                | Kind::Shutdown
                | Kind::IntN
                | Kind::Iretq
                | Kind::User => LETHAL_DAMPING,
                _ => INCIDENTAL_DAMPING,
            }
        }
    }

    /// The fuzzer: its stream, its place in it, and the state it keeps of
    /// its address spaces.
    pub struct Fuzzer {
        pub rng: Rng,
        pub step: u64,
        pub verbose: bool,
        pub limits: Limits,
        /// Whether the CPU has UMIP (then the host turns it on, and
        /// `sgdt` and friends fault in ring 1).
        pub umip: bool,
        pub space: Space,
        pub stats: Stats,
        /// The damping of the running action's kind.
        pub damping: u64,
    }

    /// Reads `<seed>/<steps>[/verbose]`.
    fn parse(cmdline: &str) -> Option<(u64, u64, bool)> {
        let mut words = cmdline.split('/');
        let seed = words.next()?.parse().ok()?;
        let steps = words.next()?.parse().ok()?;
        let verbose = match words.next() {
            None => false,
            Some("verbose") => true,
            Some(_) => return None,
        };
        words.next().is_none().then_some((seed, steps, verbose))
    }

    pub fn main() -> u64 {
        let Some((seed, steps, verbose)) = parse(boot::cmdline()) else {
            println!(
                "fuzz: cannot read the command line \"{}\"; expected <seed>/<steps>[/verbose]",
                boot::cmdline()
            );
            return BAD_SETUP;
        };
        let (physical_bits, umip) = crate::cpu::features();
        let limits = Limits::new(boot::memory_bytes(), physical_bits);
        if let Err(e) = recover::install() {
            println!("fuzz: the host refused a trap handler: {e:?}");
            return BAD_SETUP;
        }
        let space = match Space::new() {
            Ok(space) => space,
            Err(why) => {
                println!("fuzz: cannot set up: {why}");
                return BAD_SETUP;
            }
        };
        println!(
            "fuzz: seed {seed}, {steps} steps{}; {} MiB of memory, {physical_bits} physical address bits, umip {umip}",
            if verbose { ", verbose" } else { "" },
            limits.memory >> 20,
        );
        let mut fuzzer = Fuzzer {
            rng: Rng::new(seed),
            step: 0,
            verbose,
            limits,
            umip,
            space,
            stats: Stats::default(),
            damping: LETHAL_DAMPING,
        };
        while fuzzer.step < steps {
            fuzzer.step += 1;
            STEP.store(fuzzer.step, Ordering::SeqCst);
            fuzzer.one_action();
            if fuzzer.step.is_multiple_of(PROGRESS_EVERY) {
                println!("fuzz: progress {} steps", fuzzer.step);
            }
        }
        fuzzer.report();
        0
    }

    impl Fuzzer {
        fn one_action(&mut self) {
            let weights = Kind::ALL.map(|(_, weight, _)| weight);
            let (kind, ..) = Kind::ALL[self.rng.weighted(&weights)];
            self.stats.by_kind[kind.index()] += 1;
            self.damping = kind.damping();
            match kind {
                Kind::Hypercall => self.random_hypercall(),
                Kind::OrderlyEntry => self.orderly_entry(),
                Kind::ChaosEntry => self.chaos_entry(),
                Kind::Ring => self.ring_batch(),
                Kind::Root => self.root_action(),
                Kind::Flush => self.flush_user(),
                Kind::Touch => self.touch(),
                Kind::Spray => self.spray(),
                Kind::Segment => self.segment_load(),
                Kind::Flags => self.flags(),
                Kind::FarTransfer => self.far_transfer(),
                Kind::Exception => self.exception(),
                Kind::Fpu => self.fpu(),
                Kind::CpuState => self.cpu_state(),
                Kind::Interrupts => self.interrupts(),
                Kind::Iretq => self.iretq(),
                Kind::IntN => self.int_n(),
                Kind::User => self.user(),
                Kind::Privileged => self.privileged(),
                Kind::Halt => self.halt(),
                Kind::Shutdown => self.shutdown(),
                Kind::ZeroPool => self.zero_pool(),
            }
            self.check_pool();
        }

        /// Whether to carry out an action of `fate` described by `what`:
        /// always if it is safe, once in [`LETHAL_DAMPING`] or
        /// [`INCIDENTAL_DAMPING`] (by the action's kind) if not. An
        /// action that goes ahead is announced if it is lethal (or always,
        /// when verbose). Draws from the stream only for lethal actions,
        /// whose fate the model decides from the fuzzer's own memory.
        pub fn go(&mut self, fate: Fate, what: fmt::Arguments<'_>) -> bool {
            if fate.is_lethal() && !self.rng.one_in(self.damping) {
                self.stats.lethal_skipped += 1;
                if self.verbose {
                    println!("fuzz: step {}: skipped (lethal): {what}", self.step);
                }
                return false;
            }
            match fate {
                Fate::Safe if self.verbose => println!("fuzz: step {}: {what}", self.step),
                Fate::Safe => {}
                Fate::May => println!("fuzz: step {}: may end: {what}", self.step),
                Fate::Killed(why) => {
                    println!("fuzz: step {}: must be killed ({why}): {what}", self.step)
                }
                Fate::Exits(code) => {
                    println!("fuzz: step {}: must exit {code}: {what}", self.step)
                }
            }
            true
        }

        /// After an action of `fate` that went ahead: if the host had to
        /// end us for it and did not, say so and exit with [`SURVIVED`];
        /// if it only might have, say that we carried on (so that a later
        /// kill is never taken for this action's).
        pub fn survived(&self, fate: Fate) {
            match fate {
                Fate::May => println!("fuzz: step {}: carried on", self.step),
                Fate::Killed(why) => {
                    println!(
                        "fuzz: SURVIVED step {}: the host should have killed us ({why})",
                        self.step
                    );
                    hypercall::shutdown(SURVIVED);
                }
                Fate::Exits(code) => {
                    println!(
                        "fuzz: SURVIVED step {}: we should have exited with {code}",
                        self.step
                    );
                    hypercall::shutdown(SURVIVED);
                }
                Fate::Safe => {}
            }
        }

        /// The shadow tables disagreed with the model: say what was
        /// expected and seen, and exit with [`MISMATCH`].
        pub fn mismatch(&self, what: fmt::Arguments<'_>) -> ! {
            println!("fuzz: MISMATCH at step {}: {what}", self.step);
            hypercall::shutdown(MISMATCH)
        }

        fn report(&self) {
            println!(
                "fuzz: done: {} steps, {} traps taken, {} accesses checked, {} lethal actions skipped",
                self.step,
                recover::traps_taken(),
                self.stats.checked,
                self.stats.lethal_skipped
            );
            let mut line = Line::new();
            for ((_, _, name), count) in Kind::ALL.iter().zip(self.stats.by_kind) {
                line.push(format_args!(" {name}={count}"));
            }
            println!("fuzz: actions:{}", line.as_str());
            let mut line = Line::new();
            for vector in 0..=32 {
                let count = recover::traps_of(vector);
                if count > 0 {
                    line.push(format_args!(" {vector}={count}"));
                }
            }
            println!("fuzz: traps by vector (32: direct):{}", line.as_str());
            let pool = &self.space.pool;
            println!(
                "fuzz: zero pool: {} pages lent, {} filled by the host, {} resets of the counts",
                pool.lent, pool.fills, pool.resets
            );
        }
    }

    /// A short line built from pieces, without an allocator.
    struct Line {
        bytes: [u8; 400],
        len: usize,
    }

    impl Line {
        fn new() -> Self {
            Self {
                bytes: [0; 400],
                len: 0,
            }
        }

        fn push(&mut self, args: fmt::Arguments<'_>) {
            let _ = fmt::Write::write_fmt(self, args);
        }

        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
        }
    }

    impl fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = (self.len + s.len()).min(self.bytes.len());
            let take = end - self.len;
            self.bytes[self.len..end].copy_from_slice(&s.as_bytes()[..take]);
            self.len = end;
            Ok(())
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
