//! # `smp`: a guest on several vCPUs
//!
//! Run with vCPUs to spare (`guests=smp/<mode>:<expect>:vcpus=N`, on a
//! host with `--smp 2` or more for the vCPUs to run side by side). vCPU 0
//! starts the others with `guest_rt::smp::start`; everything they share is
//! an atomic. The mode is the command line:
//!
//! - `threads` (`:0`): every vCPU (all `vcpus=N` of them) runs the same
//!   fixed work, adding to a counter of its own and, every
//!   [`threads::SHARED_EVERY`] iterations, to one shared counter; each
//!   secondary then sends vCPU 0 a numbered sequence through a mailbox of
//!   its own (release stores, acquire loads), which vCPU 0 checks in order.
//!   Every vCPU prints its own `smp threads: vcpu <k> ran ...` line; vCPU 0
//!   ends with `smp threads: <n> vcpus, counter <c> as expected, every vcpu
//!   ran`.
//! - `race` (`:0`, `vcpus=2`): a stale writable mapping caught in the act.
//!   vCPU 1 writes a count through two pages (one in the kernel half, one
//!   in the user half) as fast as it can; vCPU 0 repoints one of them from
//!   one frame to another each round, reporting the entry (by hypercall,
//!   or through its MMU ring), and then checks that the old frame no
//!   longer changes: once the report returned, the host must have shot the
//!   old translation down on vCPU 1's CPU. A change prints
//!   `smp race: stale writable mapping in round <r>` and exits 1.
//! - `kill` (`:killed`, `vcpus=2`): vCPU 1 prints `smp kill: vcpu 1 alive
//!   <n>` now and then, for ever; after two such lines vCPU 0 prints `smp
//!   kill: vcpu 0 breaks the rules` and executes `cli`, privileged in ring
//!   1: the host kills the guest, vCPU 1 with it, so no `alive` line may
//!   follow.
//! - `ipi` (`:0`, `vcpus=2`): the two vCPUs interrupt each other in turn
//!   (the send-IPI hypercall), each halted with nothing else to wake it;
//!   prints `smp ipi: 200 round trips, every interrupt once, <c> cycles per
//!   round trip`.
//! - `spin` (`:killed`, `vcpus=2` or more): every vCPU spins with its
//!   virtual interrupts off; the guest's CPU budget, which its vCPUs spend
//!   together, ends it, while the host's other guests run.
//! - `refuse` (`:0`, `vcpus=2`): the start-vCPU calls the host must refuse
//!   (a number out of range, entry or stack outside the kernel half, a
//!   shared page outside memory, misaligned, or the boot vCPU's), one that
//!   succeeds, and the same number again, refused.
//! - `bench` (`:0`, `vcpus=2`): what a shoot-down costs. [`bench::REPORTS`]
//!   reports of a changed kernel-half leaf, timed one by one with the
//!   time-stamp counter, first with vCPU 0 alone, then with vCPU 1 running
//!   through that page; prints `smp bench: reports=<n>
//!   alone_cycles_per_op=<x> shootdown_cycles_per_op=<y>` (medians), after
//!   a `bench ...` line per phase (means) with the host's events, and then
//!   the slowest report of each phase.
//!
//! Waits for another vCPU are bounded by a number of spins
//! ([`SPIN_LIMIT`]), never by the clock: exceeding it is a failure. A
//! failure prints `smp <mode>: FAILED: ...` and exits [`FAILED`]; a call
//! the host refused unexpectedly or memory run out, [`SETUP_FAILED`].
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use guest_abi::boot::KERNEL_OFFSET;
    use guest_abi::pte::{ACCESSED, ADDRESS_MASK, DIRTY, MmuOp, PRESENT, WRITABLE};
    use guest_rt::paging::{self, FrameAllocator};
    use guest_rt::{boot, hypercall, println, smp};

    /// The exit code for a check that failed.
    pub const FAILED: u64 = 1;
    /// The exit code for a call refused unexpectedly, memory run out, or a
    /// command line this guest does not know.
    pub const SETUP_FAILED: u64 = 2;

    /// The most spins a wait for another vCPU takes before it counts as a
    /// failure: some thousand times what the slowest wait here needs when
    /// two vCPUs share one CPU by turns.
    pub const SPIN_LIMIT: u64 = 1 << 31;

    /// A kernel-half address of ours outside the start-up map (top-level
    /// slot 257, the next after it): pages mapped there have 4 KiB leaves
    /// of our own tables.
    pub const KERNEL_PAGES: u64 = KERNEL_OFFSET + (1 << 39);
    /// A user-half address of ours (supervisor-only pages).
    pub const USER_PAGES: u64 = 0x6000_0000;

    pub fn main() -> u64 {
        match boot::cmdline() {
            "threads" => threads::run(),
            "race" => race::run(),
            "kill" => kill::run(),
            "refuse" => refuse::run(),
            "spin" => spin::run(),
            "ipi" => ipi::run(),
            "bench" => bench::run(),
            other => {
                println!("smp: unknown mode \"{other}\" (threads, race, kill, refuse or bench)");
                SETUP_FAILED
            }
        }
    }

    /// Ends the guest (every vCPU) with `code`, after `smp <mode>: <why>`.
    /// Callable from any vCPU.
    pub fn give_up(code: u64, why: core::fmt::Arguments<'_>) -> ! {
        println!("smp {}: {why}", boot::cmdline());
        hypercall::shutdown(code)
    }

    /// Spins until `ready`; gives up (a failure) after [`SPIN_LIMIT`]
    /// spins.
    pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
        for _ in 0..SPIN_LIMIT {
            if ready() {
                return;
            }
            core::hint::spin_loop();
        }
        give_up(
            FAILED,
            format_args!("FAILED: gave up waiting for {what} after {SPIN_LIMIT} spins"),
        )
    }

    /// Starts vCPU `vcpu` on `entry`, or gives up.
    pub fn start(vcpu: u64, entry: smp::Entry) {
        if let Err(e) = smp::start(vcpu, entry) {
            give_up(
                SETUP_FAILED,
                format_args!("starting vcpu {vcpu} refused: {e:?}"),
            );
        }
    }

    /// Gives up unless the host lets us run at least `needed` vCPUs.
    pub fn need_vcpus(needed: u64) {
        let vcpus = smp::vcpus();
        if vcpus < needed {
            give_up(
                SETUP_FAILED,
                format_args!("needs vcpus={needed} (or more), has {vcpus}"),
            );
        }
    }

    /// A zeroed free page, or give up.
    pub fn frame(frames: &mut FrameAllocator) -> u64 {
        frames
            .allocate_zeroed()
            .unwrap_or_else(|| give_up(SETUP_FAILED, format_args!("out of guest memory")))
    }

    /// The leaf entry mapping `frame` writable. Accessed and dirty already,
    /// so the host never has to set them while another vCPU rewrites it.
    pub const fn leaf(frame: u64) -> u64 {
        (frame & ADDRESS_MASK) | PRESENT | WRITABLE | ACCESSED | DIRTY
    }

    /// Maps the page at `vaddr` to `frame` in the start-up tables (ours
    /// for good: we never switch roots), making tables from `frames`.
    pub fn map(frames: &mut FrameAllocator, vaddr: u64, frame: u64) {
        let root = boot::params().initial_root;
        let flags = WRITABLE | ACCESSED | DIRTY;
        // SAFETY: nothing of ours lives at KERNEL_PAGES or USER_PAGES but
        // the pages this program maps there.
        if let Err(e) = unsafe { paging::map_page(root, vaddr, frame, flags, frames) } {
            give_up(SETUP_FAILED, format_args!("mapping {vaddr:#x}: {e:?}"));
        }
    }

    /// How a changed entry reaches the host.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Report {
        /// One `MmuOp` hypercall.
        Hypercall,
        /// Queued in vCPU 0's MMU ring, then flushed (vCPU 0 only).
        Ring,
    }

    /// Points the page at `vaddr` (mapped by [`map`]) at `frame` and
    /// reports it as `report` says; when this returns, no vCPU writes the
    /// old frame through `vaddr` any more (the host's shoot-down).
    pub fn point(vaddr: u64, frame: u64, report: Report) {
        let root = boot::params().initial_root;
        let value = leaf(frame);
        let at_once = report == Report::Hypercall;
        // SAFETY: the page is this program's alone, and every frame it
        // points at is a free page taken for it; the vCPU writing through
        // it may write either, and nothing else uses them.
        if let Err(e) = unsafe { paging::set_entry(root, vaddr, 1, value, at_once) } {
            refused(vaddr, report, &e);
        }
        if at_once {
            return;
        }
        let op = MmuOp::SetEntry {
            root,
            vaddr,
            level: 1,
            value,
        };
        // SAFETY: the op reports the entry just written.
        if let Err(e) = unsafe { paging::ring::queue(op) } {
            refused(vaddr, report, &e);
        }
        // SAFETY: every op we queue reports an entry we wrote.
        if let Err(e) = unsafe { paging::ring::flush() } {
            refused(vaddr, report, &e);
        }
    }

    fn refused(vaddr: u64, report: Report, e: &dyn core::fmt::Debug) -> ! {
        give_up(
            SETUP_FAILED,
            format_args!("repointing {vaddr:#x} ({report:?}) refused: {e:?}"),
        )
    }

    /// `threads`: the same work on every vCPU, a shared counter, and
    /// mailboxes to vCPU 0.
    pub mod threads {
        use super::{FAILED, give_up, start, wait_for};
        use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use guest_rt::println;
        use guest_rt::smp::{self, MAX_VCPUS};

        /// Iterations of each vCPU's work.
        pub const WORK_ITERATIONS: u64 = 2_000_000;
        /// One shared-counter increment per this many iterations.
        pub const SHARED_EVERY: u64 = 1000;
        /// Messages each secondary vCPU sends vCPU 0.
        pub const MESSAGES: u64 = 1000;
        /// Slots of a mailbox: a sender waits when they are all full.
        const SLOTS: u64 = 16;

        /// What one vCPU writes and vCPU 0 reads, on a cache line (or two)
        /// of its own.
        #[repr(align(128))]
        struct PerVcpu {
            /// Its own counter: only it writes it.
            work: AtomicU64,
            /// Set (release) when it has sent everything.
            done: AtomicBool,
            /// Its messages to vCPU 0, a single-producer ring.
            slots: [AtomicU64; SLOTS as usize],
            /// Messages sent (written by the sender, release).
            sent: AtomicU64,
            /// Messages taken (written by vCPU 0, release).
            taken: AtomicU64,
        }

        static VCPUS: [PerVcpu; MAX_VCPUS] = [const {
            PerVcpu {
                work: AtomicU64::new(0),
                done: AtomicBool::new(false),
                slots: [const { AtomicU64::new(0) }; SLOTS as usize],
                sent: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            }
        }; MAX_VCPUS];

        /// Every vCPU's increments, [`SHARED_EVERY`] iterations apart.
        static SHARED: AtomicU64 = AtomicU64::new(0);

        /// Message `seq` of vCPU `vcpu`: both in it, so a message read
        /// from the wrong slot, twice or out of order shows.
        const fn message(vcpu: u64, seq: u64) -> u64 {
            (vcpu << 32) | seq
        }

        pub fn run() -> u64 {
            let vcpus = smp::vcpus();
            for vcpu in 1..vcpus {
                start(vcpu, secondary);
            }
            work(0);
            for vcpu in 1..vcpus {
                for seq in 1..=MESSAGES {
                    let got = receive(vcpu);
                    if got != message(vcpu, seq) {
                        give_up(
                            FAILED,
                            format_args!(
                                "FAILED: message {seq} of vcpu {vcpu} read as {got:#x}, expected {:#x}",
                                message(vcpu, seq)
                            ),
                        );
                    }
                }
                println!("smp threads: vcpu 0 read vcpu {vcpu}'s {MESSAGES} messages in order");
            }
            for vcpu in 1..vcpus {
                let mine = &VCPUS[vcpu as usize];
                wait_for("a vcpu to be done", || mine.done.load(Ordering::Acquire));
                // Its own counter, written relaxed before its release of
                // `done`: we must see the last value.
                let work = mine.work.load(Ordering::Relaxed);
                if work != WORK_ITERATIONS || !smp::running(vcpu) {
                    give_up(
                        FAILED,
                        format_args!("FAILED: vcpu {vcpu} done with its counter at {work}"),
                    );
                }
            }
            let counter = SHARED.load(Ordering::SeqCst);
            let expected = vcpus * (WORK_ITERATIONS / SHARED_EVERY);
            if counter != expected {
                println!("smp threads: FAILED: counter {counter}, expected {expected}");
                return FAILED;
            }
            println!("smp threads: {vcpus} vcpus, counter {counter} as expected, every vcpu ran");
            0
        }

        /// A secondary vCPU's part: the work, then its messages.
        fn secondary(vcpu: u64) -> ! {
            work(vcpu);
            for seq in 1..=MESSAGES {
                send(vcpu, message(vcpu, seq));
            }
            println!("smp threads: vcpu {vcpu} done");
            VCPUS[vcpu as usize].done.store(true, Ordering::Release);
            smp::park(vcpu)
        }

        /// The fixed work: [`WORK_ITERATIONS`] increments of our own
        /// counter, and one of the shared counter per [`SHARED_EVERY`].
        fn work(vcpu: u64) {
            let mine = &VCPUS[vcpu as usize].work;
            for i in 1..=WORK_ITERATIONS {
                mine.store(mine.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                if i % SHARED_EVERY == 0 {
                    SHARED.fetch_add(1, Ordering::Relaxed);
                }
            }
            println!(
                "smp threads: vcpu {vcpu} ran {WORK_ITERATIONS} iterations ({} shared increments)",
                WORK_ITERATIONS / SHARED_EVERY
            );
        }

        /// Puts `message` in vCPU `vcpu`'s mailbox, waiting for room.
        fn send(vcpu: u64, message: u64) {
            let mailbox = &VCPUS[vcpu as usize];
            let sent = mailbox.sent.load(Ordering::Relaxed);
            wait_for("room in a mailbox", || {
                sent - mailbox.taken.load(Ordering::Acquire) < SLOTS
            });
            mailbox.slots[(sent % SLOTS) as usize].store(message, Ordering::Relaxed);
            // Publishes the slot written just before.
            mailbox.sent.store(sent + 1, Ordering::Release);
        }

        /// Takes the next message from vCPU `vcpu`'s mailbox (vCPU 0).
        fn receive(vcpu: u64) -> u64 {
            let mailbox = &VCPUS[vcpu as usize];
            let taken = mailbox.taken.load(Ordering::Relaxed);
            wait_for("a message", || mailbox.sent.load(Ordering::Acquire) > taken);
            let message = mailbox.slots[(taken % SLOTS) as usize].load(Ordering::Relaxed);
            // Hands the slot back only after it was read.
            mailbox.taken.store(taken + 1, Ordering::Release);
            message
        }
    }

    /// `race`: a stale writable mapping, caught by writing through it.
    pub mod race {
        use super::{
            FAILED, KERNEL_PAGES, Report, USER_PAGES, frame, map, need_vcpus, point, start,
            wait_for,
        };
        use core::sync::atomic::{AtomicU64, Ordering};
        use guest_rt::paging::{FrameAllocator, PAGE_BYTES};
        use guest_rt::{boot, println};

        /// Rounds: each repoints one page once.
        pub const ROUNDS: u64 = 200;
        /// Writes vCPU 1 makes after a report before the old frame is
        /// compared: every word of the page written about twice over.
        pub const WRITES_AFTER: u64 = 1000;
        const WORDS: u64 = PAGE_BYTES / 8;

        /// The two pages vCPU 1 writes through.
        const PAGES: [u64; 2] = [KERNEL_PAGES, USER_PAGES];

        /// vCPU 1's iterations (each a write through both pages), in a
        /// page of its own (the .bss, far from both).
        static PROGRESS: AtomicU64 = AtomicU64::new(0);

        pub fn run() -> u64 {
            need_vcpus(2);
            let mut frames = FrameAllocator::after_image();
            // Two frames per page, the first mapped now.
            let mut pair = [[0; 2]; 2];
            for (page, vaddr) in PAGES.iter().enumerate() {
                pair[page] = [frame(&mut frames), frame(&mut frames)];
                map(&mut frames, *vaddr, pair[page][0]);
            }
            start(1, writer);
            wait_for("vcpu 1 to write", || PROGRESS.load(Ordering::Acquire) > 0);
            for round in 0..ROUNDS {
                let page = (round % 2) as usize;
                // Each page's frames swap roles every time it comes up.
                let flip = ((round / 2) % 2) as usize;
                let (old, new) = (pair[page][flip], pair[page][1 - flip]);
                let report = if (round / 4) % 2 == 0 {
                    Report::Hypercall
                } else {
                    Report::Ring
                };
                if let Err(why) = one_round(PAGES[page], old, new, report) {
                    println!(
                        "smp race: stale writable mapping in round {round} ({} page at {:#x}, {report:?}): {why}",
                        if page == 0 {
                            "kernel-half"
                        } else {
                            "user-half"
                        },
                        PAGES[page]
                    );
                    return FAILED;
                }
            }
            let writes = PROGRESS.load(Ordering::Acquire);
            println!(
                "smp race: {ROUNDS} rounds (kernel-half and user-half pages, reported by hypercall and through the ring), no stale writable mapping; vcpu 1 wrote {writes} times through each page"
            );
            0
        }

        /// Points `vaddr` at `old`, waits for vCPU 1 to write through it,
        /// points it at `new` and checks that `old` then stays as it was.
        fn one_round(vaddr: u64, old: u64, new: u64, report: Report) -> Result<(), Mismatch> {
            point(vaddr, old, report);
            // Writes that began after the report: vCPU 1 holds vaddr ->
            // old in its TLB now.
            let before = PROGRESS.load(Ordering::Acquire);
            wait_for("vcpu 1's writes", || {
                PROGRESS.load(Ordering::Acquire) >= before + 2
            });
            point(vaddr, new, report);
            let snapshot = read_frame(old);
            let after = PROGRESS.load(Ordering::Acquire);
            wait_for("vcpu 1's writes", || {
                PROGRESS.load(Ordering::Acquire) >= after + WRITES_AFTER
            });
            let now = read_frame(old);
            if let Some(word) = (0..WORDS as usize).find(|&w| now[w] != snapshot[w]) {
                return Err(Mismatch::OldChanged {
                    word,
                    was: snapshot[word],
                    now: now[word],
                    after,
                });
            }
            // And the writes went somewhere: to the new frame.
            let newest = read_frame(new).into_iter().max().unwrap_or(0);
            if newest <= after {
                return Err(Mismatch::NewUnwritten { newest, after });
            }
            Ok(())
        }

        /// What went wrong in a round.
        enum Mismatch {
            /// The old frame changed after the report returned.
            OldChanged {
                word: usize,
                was: u64,
                now: u64,
                after: u64,
            },
            /// The new frame saw none of the writes made since.
            NewUnwritten { newest: u64, after: u64 },
        }

        impl core::fmt::Display for Mismatch {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self {
                    Mismatch::OldChanged {
                        word,
                        was,
                        now,
                        after,
                    } => write!(
                        f,
                        "the old frame's word {word} went from {was} to {now} (vcpu 1 was at {after} when the report returned)"
                    ),
                    Mismatch::NewUnwritten { newest, after } => write!(
                        f,
                        "the new frame's newest write is {newest}, none after {after}: the writes went elsewhere"
                    ),
                }
            }
        }

        /// The frame at guest-physical `frame`, read through the start-up
        /// map (a second mapping, which the test never changes).
        fn read_frame(frame: u64) -> [u64; WORDS as usize] {
            let words = boot::kernel_virtual(frame) as *const u64;
            // SAFETY: a frame of ours inside the start-up map, 8-byte
            // aligned; volatile, since vCPU 1 may write it behind us.
            core::array::from_fn(|w| unsafe { words.add(w).read_volatile() })
        }

        /// vCPU 1: writes its count through both pages, a word further
        /// each time, for ever.
        fn writer(_vcpu: u64) -> ! {
            let mut count = 0u64;
            loop {
                count += 1;
                let offset = (count % WORDS) * 8;
                for page in PAGES {
                    // SAFETY: both pages stay mapped writable (to one frame
                    // of theirs or the other) for the guest's life; nothing
                    // but this loop writes through them.
                    unsafe { ((page + offset) as *mut u64).write_volatile(count) };
                }
                PROGRESS.store(count, Ordering::Release);
            }
        }
    }

    /// `kill`: one vCPU breaks the rules, and the whole guest ends.
    pub mod kill {
        use super::{FAILED, need_vcpus, start, wait_for};
        use core::sync::atomic::{AtomicU64, Ordering};
        use guest_rt::println;

        /// vCPU 1's loop iterations between two `alive` lines.
        pub const ITERATIONS_PER_LINE: u64 = 2_000_000;
        /// `alive` lines vCPU 0 waits for before it breaks the rules.
        pub const LINES_FIRST: u64 = 2;

        /// `alive` lines printed so far.
        static LINES: AtomicU64 = AtomicU64::new(0);

        pub fn run() -> u64 {
            need_vcpus(2);
            start(1, alive);
            wait_for("vcpu 1's alive lines", || {
                LINES.load(Ordering::Acquire) >= LINES_FIRST
            });
            println!("smp kill: vcpu 0 breaks the rules");
            // SAFETY: `cli` changes no memory; in ring 1 it raises #GP and
            // the host kills the guest, which is the test. Were it ever
            // to go through, only the interrupt flag would change.
            unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
            println!("smp kill: FAILED: survived cli");
            FAILED
        }

        /// vCPU 1: counts for ever, with a numbered line now and then.
        fn alive(vcpu: u64) -> ! {
            let mut line = 0;
            loop {
                for i in 0..ITERATIONS_PER_LINE {
                    // Kept, so the loop is real work, not folded away.
                    core::hint::black_box(i);
                }
                line += 1;
                println!("smp kill: vcpu {vcpu} alive {line}");
                LINES.store(line, Ordering::Release);
            }
        }
    }

    /// `ipi` (`:0`, `vcpus=2`): vCPU 0 and vCPU 1 interrupt each other in
    /// turn, [`ipi::ROUNDS`] times, each halting with its virtual
    /// interrupts off until the other's interrupt is pending (no timer, no
    /// polling: only the other vCPU can wake it). Every interrupt must
    /// arrive exactly once.
    pub mod ipi {
        use super::{FAILED, SETUP_FAILED, give_up, need_vcpus, start};
        use core::sync::atomic::{AtomicU64, Ordering};
        use guest_rt::traps::{self, Delivery, TrapFrame};
        use guest_rt::{hypercall, irq, println, time};

        /// Round trips.
        pub const ROUNDS: u64 = 200;
        /// vCPU 1's interrupt (vCPU 0 sends it), and vCPU 0's.
        const PING: u8 = 40;
        const PONG: u8 = 41;

        static PINGS: AtomicU64 = AtomicU64::new(0);
        static PONGS: AtomicU64 = AtomicU64::new(0);

        fn on_ping(_frame: &mut TrapFrame) {
            PINGS.fetch_add(1, Ordering::AcqRel);
        }

        fn on_pong(_frame: &mut TrapFrame) {
            PONGS.fetch_add(1, Ordering::AcqRel);
        }

        pub fn run() -> u64 {
            need_vcpus(2);
            // Registered before the start, so vCPU 1 has them too.
            let handlers = traps::set_handler(PING, on_ping, Delivery::Interrupt)
                .and(traps::set_handler(PONG, on_pong, Delivery::Interrupt));
            if let Err(e) = handlers {
                give_up(
                    SETUP_FAILED,
                    format_args!("interrupt handlers refused: {e:?}"),
                );
            }
            start(1, responder);
            let started = time::cycles();
            for round in 1..=ROUNDS {
                send(1, PING);
                sleep_until(|| PONGS.load(Ordering::Acquire) >= round);
            }
            let cycles = (time::cycles() - started) / ROUNDS;
            let (pings, pongs) = (PINGS.load(Ordering::Acquire), PONGS.load(Ordering::Acquire));
            if pings != ROUNDS || pongs != ROUNDS {
                println!("smp ipi: FAILED: {pings} pings and {pongs} pongs for {ROUNDS} rounds");
                return FAILED;
            }
            println!(
                "smp ipi: {ROUNDS} round trips, every interrupt once, {cycles} cycles per round trip"
            );
            0
        }

        /// vCPU 1: answers each ping with a pong, for ever.
        fn responder(_vcpu: u64) -> ! {
            let mut answered = 0;
            loop {
                sleep_until(|| PINGS.load(Ordering::Acquire) > answered);
                answered += 1;
                send(0, PONG);
            }
        }

        fn send(vcpu: u64, vector: u8) {
            if let Err(e) = hypercall::send_ipi(vcpu, vector) {
                give_up(
                    SETUP_FAILED,
                    format_args!("send_ipi({vcpu}, {vector}): {e:?}"),
                );
            }
        }

        /// Halts until `done` holds. The check runs with virtual interrupts
        /// off, so an interrupt that comes after it stays pending, and the
        /// halt returns at once for it: no wake-up is lost.
        fn sleep_until(done: impl Fn() -> bool) {
            loop {
                irq::disable();
                if done() {
                    irq::enable();
                    return;
                }
                hypercall::halt();
                // Takes the pending interrupt.
                irq::enable();
            }
        }
    }

    /// `spin` (`:killed`): every vCPU spins for ever with its virtual
    /// interrupts off. Only the guest's CPU budget, which all its vCPUs
    /// spend, can end it; the host's other guests run meanwhile.
    pub mod spin {
        use super::{FAILED, need_vcpus, start};
        use guest_rt::{println, smp};

        pub fn run() -> u64 {
            need_vcpus(2);
            let vcpus = smp::vcpus();
            for vcpu in 1..vcpus {
                start(vcpu, spin);
            }
            println!("smp spin: {vcpus} vcpus spin with interrupts off");
            spin(0);
            #[allow(unreachable_code)]
            FAILED
        }

        /// Spins for ever.
        fn spin(_vcpu: u64) -> ! {
            loop {
                core::hint::spin_loop();
            }
        }
    }

    /// `refuse`: the start-vCPU calls the host must refuse, and one it
    /// must not.
    pub mod refuse {
        use super::{FAILED, SETUP_FAILED, frame, give_up, wait_for};
        use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use guest_abi::boot::SHARED_PAGE_GPA;
        use guest_abi::hypercall::Error;
        use guest_rt::paging::FrameAllocator;
        use guest_rt::{boot, hypercall, println, smp};

        /// A user-half address: no entry or stack may be there.
        const USER_ADDRESS: u64 = 0x40_0000;
        const STACK_BYTES: usize = 16 * 1024;

        #[repr(C, align(16))]
        struct Stack([u8; STACK_BYTES]);

        /// The stack the calls that should fail name: were one to succeed,
        /// its vCPU would run `stray` here, alone (we stop at the first).
        static mut SPARE_STACK: Stack = Stack([0; STACK_BYTES]);

        /// Set by a vCPU the host started when it should have refused.
        static STRAY: AtomicU64 = AtomicU64::new(0);
        /// Set by vCPU 1 once it runs.
        static STARTED: AtomicBool = AtomicBool::new(false);

        /// One call the host must refuse, with `expected`.
        struct Case {
            what: &'static str,
            vcpu: u64,
            entry: u64,
            stack: u64,
            page: u64,
            expected: Error,
        }

        pub fn run() -> u64 {
            if smp::vcpus() != 2 {
                give_up(
                    SETUP_FAILED,
                    format_args!("needs vcpus=2, has {}", smp::vcpus()),
                );
            }
            let mut frames = FrameAllocator::after_image();
            let page = frame(&mut frames);
            let entry = stray as *const () as u64;
            // The ABI's alignment at a function's entry (see guest_rt::smp).
            let stack = (&raw mut SPARE_STACK).wrapping_add(1) as u64 - 8;
            let memory = boot::memory_bytes();
            let case = |what, vcpu, entry, stack, page, expected| Case {
                what,
                vcpu,
                entry,
                stack,
                page,
                expected,
            };
            let before = [
                case(
                    "vcpu 2 (beyond vcpus=2)",
                    2,
                    entry,
                    stack,
                    page,
                    Error::InvalidArgument,
                ),
                case(
                    "vcpu 0 (the boot vcpu)",
                    0,
                    entry,
                    stack,
                    page,
                    Error::InvalidArgument,
                ),
                case(
                    "an entry in the user half",
                    1,
                    USER_ADDRESS,
                    stack,
                    page,
                    Error::BadAddress,
                ),
                case(
                    "a stack in the user half",
                    1,
                    entry,
                    USER_ADDRESS,
                    page,
                    Error::BadAddress,
                ),
                case(
                    "a shared page past memory",
                    1,
                    entry,
                    stack,
                    memory,
                    Error::BadAddress,
                ),
                case(
                    "a misaligned shared page",
                    1,
                    entry,
                    stack,
                    page + 8,
                    Error::BadAddress,
                ),
                case(
                    "the boot vcpu's shared page",
                    1,
                    entry,
                    stack,
                    SHARED_PAGE_GPA,
                    Error::BadAddress,
                ),
            ];
            for c in &before {
                if let Err(code) = check(c) {
                    return code;
                }
            }
            if let Err(e) = smp::start(1, secondary) {
                println!("smp refuse: FAILED: a good start of vcpu 1 refused: {e:?}");
                return FAILED;
            }
            println!("smp refuse: ok: a good start of vcpu 1 succeeded");
            wait_for("vcpu 1 to run", || STARTED.load(Ordering::Acquire));
            let again = frame(&mut frames);
            let twice = case(
                "vcpu 1 again",
                1,
                entry,
                stack,
                again,
                Error::InvalidArgument,
            );
            if let Err(code) = check(&twice) {
                return code;
            }
            println!(
                "smp refuse: {} bad starts refused as they should be, vcpu 1 started once",
                before.len() + 1
            );
            0
        }

        /// Makes the call `c` describes and checks the host refused it as
        /// expected; on anything else, the exit code.
        fn check(c: &Case) -> Result<(), u64> {
            // SAFETY: were the host to accept, the vCPU would run `stray`
            // (ours, never returning) on the spare stack with a page of
            // ours or one the host refuses; we then stop at once, so no
            // second vCPU ever shares them.
            let result = unsafe { hypercall::start_vcpu(c.vcpu, c.entry, c.stack, c.page) };
            match result {
                Err(e) if e == c.expected => {
                    println!("smp refuse: ok: {} refused with {e:?}", c.what);
                    Ok(())
                }
                other => {
                    println!(
                        "smp refuse: FAILED: {}: {other:?}, expected {:?}",
                        c.what, c.expected
                    );
                    Err(FAILED)
                }
            }
        }

        /// vCPU 1, started the proper way: says so and sleeps.
        fn secondary(vcpu: u64) -> ! {
            println!("smp refuse: vcpu {vcpu} runs");
            STARTED.store(true, Ordering::Release);
            smp::park(vcpu)
        }

        /// Where a start that should have failed goes.
        extern "C" fn stray(vcpu: u64) -> ! {
            STRAY.store(vcpu | 1 << 63, Ordering::Release);
            println!(
                "smp refuse: FAILED: vcpu {vcpu} started by a call the host should have refused"
            );
            hypercall::shutdown(FAILED)
        }
    }

    /// `bench`: what a report costs alone, and with a shoot-down.
    pub mod bench {
        use super::{KERNEL_PAGES, Report, frame, map, need_vcpus, point, start, wait_for};
        use core::sync::atomic::{AtomicU64, Ordering};
        use guest_rt::paging::FrameAllocator;
        use guest_rt::{println, time};

        /// Timed reports per phase.
        pub const REPORTS: usize = 200;
        /// Untimed reports first, so tables and caches are warm.
        const WARM_UP: usize = 10;

        /// The page reported: one of ours, with a 4 KiB leaf.
        const PAGE: u64 = KERNEL_PAGES;

        /// vCPU 1's passes over the page.
        static PROGRESS: AtomicU64 = AtomicU64::new(0);

        pub fn run() -> u64 {
            need_vcpus(2);
            let mut frames = FrameAllocator::after_image();
            let pair = [frame(&mut frames), frame(&mut frames)];
            map(&mut frames, PAGE, pair[0]);
            let (alone, alone_max) = phase("smp_report_alone", pair, || {});
            start(1, toucher);
            let (shootdown, shootdown_max) = phase("smp_report_shootdown", pair, || {
                // vCPU 1 touches the page anew before each report, so each
                // finds it in vCPU 1's TLB.
                let seen = PROGRESS.load(Ordering::Acquire);
                wait_for("vcpu 1 to touch the page", || {
                    PROGRESS.load(Ordering::Acquire) >= seen + 2
                });
            });
            println!(
                "smp bench: reports={REPORTS} alone_cycles_per_op={alone} shootdown_cycles_per_op={shootdown}"
            );
            // The slowest of each: a turn lost to another guest or a host
            // tick lands in one report, which the medians leave out.
            println!(
                "smp bench: slowest report alone_cycles={alone_max} shootdown_cycles={shootdown_max}"
            );
            0
        }

        /// [`REPORTS`] reports of the page's leaf, alternately at each of
        /// `pair`, each timed on its own (`before` untimed, ahead of each);
        /// prints the `bench <name>` line (the mean) and returns the
        /// median and the slowest.
        fn phase(name: &str, pair: [u64; 2], mut before: impl FnMut()) -> (u64, u64) {
            for i in 0..WARM_UP {
                before();
                point(PAGE, pair[i % 2], Report::Hypercall);
            }
            let mut cycles = [0u64; REPORTS];
            let id = guest_rt::bench::begin();
            for (i, spent) in cycles.iter_mut().enumerate() {
                before();
                let start = time::cycles();
                point(PAGE, pair[(WARM_UP + i) % 2], Report::Hypercall);
                *spent = time::cycles() - start;
            }
            guest_rt::bench::end(name, id, REPORTS as u64, cycles.iter().sum());
            cycles.sort_unstable();
            (cycles[REPORTS / 2], cycles[REPORTS - 1])
        }

        /// vCPU 1: reads and writes the page, for ever.
        fn toucher(_vcpu: u64) -> ! {
            let word = PAGE as *mut u64;
            let mut passes = 0u64;
            loop {
                // SAFETY: the page stays mapped writable to one of two
                // frames of ours for the guest's life; only this loop uses
                // its first word.
                unsafe { word.write_volatile(word.read_volatile() + 1) };
                passes += 1;
                PROGRESS.store(passes, Ordering::Release);
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
