//! # The scheduler: which vCPU each CPU runs next
//!
//! The kernel runs one loop on each CPU: ask the scheduler what to do,
//! enter a guest through the switcher or halt, and say how the turn
//! ended. The scheduler is that loop's policy and nothing else: it knows
//! the vCPUs by their ids ([`VcpuId`], a guest and a vCPU index), their
//! state as the kernel reports it, which CPU runs each one now, and a run
//! queue per CPU ([`RunQueue`]); it knows no hardware, takes the time as a
//! number of host nanoseconds, and runs in `cargo test` with a simulated
//! clock and simulated CPUs.
//!
//! ```text
//!   the run loop on CPU c                 Scheduler                      CPU c
//!   ─────────────────────                 ─────────                      ─────
//!   pick(c, now) ──────────────────────>  Run { vcpu, until, kicks } ──> enter vcpu, one-shot timer at `until`
//!                                         Idle { until } ─────────────> timer at `until`, hlt
//!   turn_ended(c, vcpu, now, outcome) ──> requeued, halted or forgotten
//!   wake(vcpu) (a device, another vCPU) > Some(cpu) ──────────────────> IPI to that CPU
//! ```
//!
//! ## How the kernel calls it
//!
//! One [`Scheduler`] for the machine, behind one lock; every CPU's loop is
//!
//! ```text
//! loop {
//!     match sched.pick(cpu, now) {                         // under the lock
//!         Run { vcpu, until, kicks } => {
//!             send an IPI to each CPU of `kicks` but this one;
//!             run vcpu's turn, with the timer armed for `until` (and the
//!             guest's own timer, and the end of its budget);
//!             sched.turn_ended(cpu, vcpu, now, outcome);    // same hold as the next pick
//!         }
//!         Idle { until, kicks } => send the IPIs; arm the timer for
//!             `until` (or a limit), hlt,
//!     }
//! }
//! ```
//!
//! and whatever makes a halted vCPU runnable outside its own turn (a frame
//! for its network card, a virtual interrupt from another vCPU) calls
//! [`Scheduler::wake`] and sends an IPI to the CPU it names, unless that is
//! the calling CPU itself. An IPI to a parked CPU makes it pick again; an
//! IPI to a busy CPU ends its turn (as a slice's end would). The kernel's
//! loop (`kernel/src/run/cpu.rs`) is exactly this. With one CPU, `pick`
//! and `turn_ended` give the turns of the single-CPU loop that came before
//! them, one for one, and the kicks are always empty or the boot CPU
//! itself (the tests hold a transcription of that loop and compare the two
//! turn by turn).
//!
//! ## Decisions
//!
//! - **The unit is a vCPU.** Each guest has one today; a guest with
//!   several adds several ids that share its guest number, and nothing
//!   here changes.
//! - **Positional round robin per CPU** ([`queue`]): a CPU serves the
//!   vCPUs waiting for it in the order they were added, cyclically, after
//!   the one it ran last. It is the old loop's order, so one CPU behaves
//!   exactly as before, and every waiting vCPU gets a turn per cycle.
//! - **Slices only when others wait.** A turn ends at `now + slice` only if
//!   another vCPU waits for the same CPU, and earlier if a vCPU waiting
//!   for that CPU (queued there, or halted with this CPU as its last) has
//!   a timer due: the timer is one-shot, and a vCPU computing alone is
//!   never interrupted.
//! - **Affinity.** A vCPU belongs to the CPU it last ran on (its FPU state
//!   and TLB entries are there): it goes back to that CPU's queue when it
//!   is preempted or woken, and that CPU's timer watches its wake-up
//!   deadline.
//! - **Per-CPU queues, and an idle CPU steals.** A CPU whose own queue is
//!   empty takes one vCPU from the queue with the most vCPUs waiting
//!   beyond what its own CPU is about to take: the victim's next in line,
//!   the one that left that CPU longest ago, so the coldest there.
//!
//!   Why not one shared queue: both keep every CPU busy while work waits,
//!   but a shared queue hands a vCPU to whichever CPU is free, so it moves
//!   between CPUs whenever jobs fall out of step, and each move costs its
//!   FPU state, its TLB entries and, on the machine, a lock that every CPU
//!   takes at every turn. Measured on the simulated machine
//!   (`cargo test -p host sched::tests::measurement -- --nocapture` prints
//!   it), with 10 ms slices, simulated ms to finish and moves between CPUs
//!   on 1, 2 and 4 CPUs:
//!
//!   | 8 jobs | stealing | shared queue | ideal |
//!   | --- | --- | --- | --- |
//!   | 100 ms each | 800, 400, 200 ms; 0, 0, 0 moves | 800, 400, 200; 0, 0, 0 | 800, 400, 200 |
//!   | 95 to 105 ms | 795, 399, 203; 0, 1, 1 | 795, 399, 201; 0, 1, 6 | 795, 397, 198 |
//!   | 20 to 160 ms | 720, 380, 220; 0, 1, 1 | 720, 370, 210; 0, 30, 36 | 720, 360, 180 |
//!
//!   Equal jobs in step move under neither. Once jobs end at different
//!   times, the shared queue moves a vCPU at one turn in three or four
//!   where stealing moves one vCPU once; stealing pays with up to 5% more
//!   time to finish (a CPU steals only when its own queue is empty, so two
//!   long jobs that started on one CPU share it to the end).
//! - **Idle CPUs halt until work comes.** A CPU with nothing to run or
//!   steal is parked: it halts until the first wake-up deadline it watches
//!   ([`Decision::Idle`]), or an IPI. Whoever makes work that no awake CPU
//!   will take is told which CPU to kick: a parked CPU (the vCPU's own,
//!   if parked, else the lowest-numbered), or, with none parked, a busy
//!   CPU whose turn has no slice end, so that the newcomer gets its turn.
//! - **Timers are fired at `pick`.** Each pick wakes every halted vCPU
//!   whose deadline has passed, on whichever CPU asks, and clears the due
//!   timers of waiting ones (their interrupt is delivered at their next
//!   entry), as the old loop's `poll` of every guest did. A linear pass:
//!   a machine has tens of vCPUs, not thousands.
//! - **A wake during a turn is not lost.** A vCPU woken while it runs,
//!   and whose turn then ends halted, is queued again instead.
//! - **Removing a running vCPU is refused** ([`RemoveError::Running`]).
//!   Only the CPU running it can take it off (its registers are in that
//!   CPU's switcher, its shadow root in that CPU's CR3), at its turn's end.
//!   The kernel kills the guest, kicks that CPU, and the turn ends with
//!   [`Outcome::Ended`], which forgets the vCPU. No vCPU is ever half
//!   removed.
//! - **No allocation in `pick`.** The queues' room for every vCPU is
//!   reserved when it is added; a pick moves words within them.
//! - **Deterministic.** No randomness: ties go to the lowest-numbered CPU
//!   and the lowest rank.

mod cpu_set;
pub mod queue;

#[cfg(test)]
mod props;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;
pub use cpu_set::{CpuId, CpuSet, MAX_CPUS};
use queue::Rank;
pub use queue::RunQueue;

/// A virtual CPU: the unit the scheduler runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId {
    /// Its guest, as the kernel numbers them.
    pub guest: u32,
    /// Which of the guest's vCPUs (0 for a guest with one).
    pub index: u16,
}

impl VcpuId {
    /// vCPU `index` of guest `guest`.
    pub const fn new(guest: u32, index: u16) -> Self {
        Self { guest, index }
    }
}

/// How a vCPU's turn ended, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It can run on: its slice ended, it was kicked, or it gave the CPU
    /// up (it sent frames another guest should answer).
    Runnable {
        /// Its virtual timer's deadline, if it set one.
        timer: Option<u64>,
    },
    /// It waits for a virtual interrupt: until its timer, if it set one,
    /// or until [`Scheduler::wake`].
    Halted {
        /// Its virtual timer's deadline, if it set one.
        timer: Option<u64>,
    },
    /// It is over; the scheduler forgets it.
    Ended,
}

/// What a CPU does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run `vcpu`.
    Run {
        /// The vCPU to enter.
        vcpu: VcpuId,
        /// When its turn ends whatever it does: the end of its slice if
        /// others wait for this CPU, or the first timer among the vCPUs
        /// waiting for it, whichever comes first. `None`: only the vCPU
        /// itself ends its turn.
        until: Option<u64>,
        /// CPUs to send an IPI (the picking CPU may be among them: it
        /// needs none): vCPUs that became runnable at this pick wait for
        /// them.
        kicks: CpuSet,
    },
    /// Nothing to run: halt until `until` (the first wake-up deadline
    /// among the vCPUs this CPU watches) or an IPI, then pick again.
    Idle {
        /// The first wake-up deadline; `None`: only an IPI brings work.
        until: Option<u64>,
        /// CPUs to send an IPI: vCPUs wait for them that no awake CPU
        /// will take (only with [`Placement::Rotate`], where no CPU steals:
        /// a vCPU this CPU sent on, to a parked CPU).
        kicks: CpuSet,
    },
}

/// Where a vCPU is, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whereabouts {
    /// In `cpu`'s run queue.
    Waiting(CpuId),
    /// On `cpu`, in a turn.
    Running(CpuId),
    /// Halted, waiting for its timer or a wake.
    Halted {
        /// Its wake-up deadline, if any.
        timer: Option<u64>,
    },
}

/// Why [`Scheduler::add`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// The scheduler knows a vCPU by that id already.
    Duplicate,
}

/// Why [`Scheduler::remove`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveError {
    /// No vCPU has that id.
    Unknown,
    /// It is in a turn on that CPU: only that CPU can take it off, when
    /// the turn ends (kick it; [`Outcome::Ended`] then forgets the vCPU).
    Running(CpuId),
}

/// Why [`Scheduler::turn_ended`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnError {
    /// That vCPU is not in a turn on that CPU.
    NotRunningThere,
}

/// Where a vCPU goes when its turn ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Back to the CPU it ran on (see the module docs: its state is
    /// there). The default.
    #[default]
    Affinity,
    /// To the next CPU (by number, cyclically): every turn is on another
    /// CPU than the last, and lasts at most a slice; no CPU steals. A test
    /// aid: it makes
    /// every guest move between CPUs all the time, so that whatever must
    /// follow a guest is seen to.
    Rotate,
}

/// Counts of what the scheduler did, for the console and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Turns handed out.
    pub turns: u64,
    /// Turns on another CPU than the vCPU's last one.
    pub migrations: u64,
    /// vCPUs taken from another CPU's queue.
    pub steals: u64,
    /// Picks that found nothing to run.
    pub idles: u64,
    /// IPIs asked for.
    pub kicks: u64,
}

/// One vCPU's bookkeeping.
#[derive(Debug)]
struct Vcpu {
    id: VcpuId,
    rank: Rank,
    state: State,
    /// The CPU it last ran on (or was first queued on): where it goes back
    /// to, and whose timer watches its deadline.
    home: CpuId,
    /// The CPU of its last turn, once it had one (its `home` too, unless
    /// [`Placement::Rotate`] sent it on).
    ran_on: Option<CpuId>,
    /// Its virtual timer's deadline.
    timer: Option<u64>,
    /// Woken while in a turn: if the turn ends halted, it runs again.
    woken_during_turn: bool,
    /// Host nanoseconds it has run.
    ran_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting(CpuId),
    Running(CpuId),
    Halted,
}

/// One CPU's bookkeeping.
#[derive(Debug)]
struct Cpu {
    queue: RunQueue,
    status: CpuStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CpuStatus {
    /// Between turns, or kicked: it will pick.
    Free,
    /// Running vCPU `rank` since `since`; `sliced`: its turn ends at a
    /// slice's end.
    Busy {
        rank: Rank,
        since: u64,
        sliced: bool,
    },
    /// Halted until a deadline or an IPI.
    Parked,
}

/// The scheduling policy for every CPU of the machine.
#[derive(Debug)]
pub struct Scheduler {
    slice_ns: u64,
    placement: Placement,
    cpus: Vec<Cpu>,
    /// Every vCPU, in rank order.
    vcpus: Vec<Vcpu>,
    next_rank: Rank,
    counters: Counters,
}

impl Scheduler {
    /// A scheduler for `cpus` CPUs, all parked, with turns of `slice_ns`
    /// while others wait.
    ///
    /// # Panics
    ///
    /// If `cpus` is 0 or above [`MAX_CPUS`].
    pub fn new(cpus: usize, slice_ns: u64) -> Self {
        assert!(
            (1..=MAX_CPUS).contains(&cpus),
            "the scheduler shares 1 to {MAX_CPUS} CPUs, not {cpus}"
        );
        Self {
            slice_ns: slice_ns.max(1),
            placement: Placement::Affinity,
            cpus: (0..cpus)
                .map(|_| Cpu {
                    queue: RunQueue::new(),
                    status: CpuStatus::Parked,
                })
                .collect(),
            vcpus: Vec::new(),
            next_rank: 0,
            counters: Counters::default(),
        }
    }

    /// Sends vCPUs to `placement` at the end of their turns from now on.
    pub fn set_placement(&mut self, placement: Placement) {
        self.placement = placement;
    }

    /// How many CPUs it shares out.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    /// How many vCPUs it knows.
    pub fn len(&self) -> usize {
        self.vcpus.len()
    }

    /// Whether it knows no vCPU.
    pub fn is_empty(&self) -> bool {
        self.vcpus.is_empty()
    }

    /// What it did so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Where `vcpu` is, if the scheduler knows it.
    pub fn whereabouts(&self, vcpu: VcpuId) -> Option<Whereabouts> {
        let v = &self.vcpus[self.position(vcpu)?];
        Some(match v.state {
            State::Waiting(cpu) => Whereabouts::Waiting(cpu),
            State::Running(cpu) => Whereabouts::Running(cpu),
            State::Halted => Whereabouts::Halted { timer: v.timer },
        })
    }

    /// The vCPU in a turn on `cpu`, if any.
    pub fn running_on(&self, cpu: CpuId) -> Option<VcpuId> {
        match self.cpus[cpu.index()].status {
            CpuStatus::Busy { rank, .. } => Some(self.vcpu(rank).id),
            _ => None,
        }
    }

    /// Host nanoseconds `vcpu` has run, over its ended turns.
    pub fn ran_ns(&self, vcpu: VcpuId) -> Option<u64> {
        Some(self.vcpus[self.position(vcpu)?].ran_ns)
    }

    /// Adds a runnable vCPU, on the least loaded CPU. Returns the CPU to
    /// kick, if no awake CPU will take it.
    pub fn add(&mut self, id: VcpuId) -> Result<Option<CpuId>, AddError> {
        if self.position(id).is_some() {
            return Err(AddError::Duplicate);
        }
        // The only allocation: room for one more vCPU everywhere.
        self.vcpus.reserve(1);
        let total = self.vcpus.len() + 1;
        for cpu in &mut self.cpus {
            cpu.queue.reserve_total(total);
        }
        let cpu = self.least_loaded();
        let rank = self.next_rank;
        self.next_rank += 1;
        // Its first CPU is its home until it runs somewhere.
        self.vcpus.push(Vcpu {
            id,
            rank,
            state: State::Halted,
            home: cpu,
            ran_on: None,
            timer: None,
            woken_during_turn: false,
            ran_ns: 0,
        });
        self.enqueue(rank, cpu);
        Ok(self.kicks().first())
    }

    /// Forgets a vCPU that is not in a turn.
    pub fn remove(&mut self, id: VcpuId) -> Result<(), RemoveError> {
        let at = self.position(id).ok_or(RemoveError::Unknown)?;
        let vcpu = &self.vcpus[at];
        match vcpu.state {
            State::Running(cpu) => return Err(RemoveError::Running(cpu)),
            State::Waiting(cpu) => {
                self.cpus[cpu.index()].queue.remove(vcpu.rank);
            }
            State::Halted => {}
        }
        self.vcpus.remove(at);
        Ok(())
    }

    /// Makes a halted vCPU runnable (a device or another vCPU raised an
    /// interrupt for it). Returns the CPU to kick, if no awake CPU will
    /// take it. Waking a vCPU that waits already does nothing; waking one
    /// in a turn keeps it from halting at the turn's end.
    pub fn wake(&mut self, id: VcpuId) -> Option<CpuId> {
        let at = self.position(id)?;
        let vcpu = &mut self.vcpus[at];
        match vcpu.state {
            State::Halted => {
                let (rank, home) = (vcpu.rank, vcpu.home);
                let queue = self.queue_after(home);
                self.enqueue(rank, queue);
                self.kicks().first()
            }
            State::Running(_) => {
                vcpu.woken_during_turn = true;
                None
            }
            State::Waiting(_) => None,
        }
    }

    /// Records the end of `id`'s turn on `cpu` at `now`. The kernel calls
    /// it and then [`Self::pick`] under one hold of the lock, so that no
    /// other CPU takes the vCPU it requeues before this one picks.
    pub fn turn_ended(
        &mut self,
        cpu: CpuId,
        id: VcpuId,
        now: u64,
        outcome: Outcome,
    ) -> Result<(), TurnError> {
        let at = self.position(id).ok_or(TurnError::NotRunningThere)?;
        let CpuStatus::Busy { since, .. } = self.cpus[cpu.index()].status else {
            return Err(TurnError::NotRunningThere);
        };
        if self.vcpus[at].state != State::Running(cpu) {
            return Err(TurnError::NotRunningThere);
        }
        self.cpus[cpu.index()].status = CpuStatus::Free;
        let vcpu = &mut self.vcpus[at];
        vcpu.ran_ns = vcpu.ran_ns.saturating_add(now.saturating_sub(since));
        let woken = core::mem::take(&mut vcpu.woken_during_turn);
        let rank = vcpu.rank;
        match outcome {
            Outcome::Ended => {
                self.vcpus.remove(at);
            }
            Outcome::Halted { timer } if !woken => {
                // Its home stays this CPU, whose timer watches its deadline
                // (the CPU picks next and arms for it).
                vcpu.timer = timer;
                vcpu.state = State::Halted;
            }
            Outcome::Runnable { timer } | Outcome::Halted { timer } => {
                vcpu.timer = timer;
                let queue = self.queue_after(cpu);
                self.enqueue(rank, queue);
            }
        }
        Ok(())
    }

    /// What `cpu` does next, at `now`. A CPU that asks in the middle of a
    /// turn keeps its vCPU.
    pub fn pick(&mut self, cpu: CpuId, now: u64) -> Decision {
        self.fire_timers(now);
        if let CpuStatus::Busy { rank, sliced, .. } = self.cpus[cpu.index()].status {
            let slice_end = sliced.then(|| now.saturating_add(self.slice_ns));
            return Decision::Run {
                vcpu: self.vcpu(rank).id,
                until: earliest(slice_end, self.first_timer_watched_by(cpu)),
                kicks: self.kicks(),
            };
        }
        let own = self.cpus[cpu.index()].queue.take_next();
        let Some(rank) = own.or_else(|| self.steal(cpu)) else {
            self.cpus[cpu.index()].status = CpuStatus::Parked;
            self.counters.idles += 1;
            return Decision::Idle {
                until: self.first_timer_watched_by(cpu),
                kicks: self.kicks_but(Some(cpu)),
            };
        };
        // A rotating vCPU always gets a slice's end: the next turn of
        // whichever vCPU arrives here is then at most a slice away, with no
        // kick (a kick would end this turn and send its vCPU on, to end
        // another CPU's turn, and so on round the CPUs).
        let sliced =
            !self.cpus[cpu.index()].queue.is_empty() || self.placement == Placement::Rotate;
        let slice_end = sliced.then(|| now.saturating_add(self.slice_ns));
        self.cpus[cpu.index()].status = CpuStatus::Busy {
            rank,
            since: now,
            sliced,
        };
        let vcpu = self.vcpu_mut(rank);
        let moved = vcpu.ran_on.unwrap_or(vcpu.home) != cpu;
        vcpu.home = cpu;
        vcpu.ran_on = Some(cpu);
        vcpu.state = State::Running(cpu);
        let id = vcpu.id;
        self.counters.turns += 1;
        self.counters.migrations += u64::from(moved);
        Decision::Run {
            vcpu: id,
            until: earliest(slice_end, self.first_timer_watched_by(cpu)),
            kicks: self.kicks(),
        }
    }

    /// Wakes the halted vCPUs whose deadline has come, and clears the due
    /// timers of waiting ones (their interrupt goes in at their entry).
    fn fire_timers(&mut self, now: u64) {
        for at in 0..self.vcpus.len() {
            let vcpu = &mut self.vcpus[at];
            let running = matches!(vcpu.state, State::Running(_));
            if running || vcpu.timer.is_none_or(|t| t > now) {
                continue;
            }
            vcpu.timer = None;
            if vcpu.state == State::Halted {
                let (rank, home) = (vcpu.rank, vcpu.home);
                let queue = self.queue_after(home);
                self.enqueue(rank, queue);
            }
        }
    }

    /// Takes a vCPU for `thief` from the queue with the most vCPUs waiting
    /// beyond what its own CPU is about to take: the victim's next in line,
    /// which left that CPU longest ago.
    fn steal(&mut self, thief: CpuId) -> Option<Rank> {
        if self.placement == Placement::Rotate {
            // A stolen vCPU could come straight back to the CPU it left.
            return None;
        }
        let victim = (0..self.cpus.len())
            .map(CpuId)
            .filter(|&cpu| cpu != thief && self.surplus(cpu) > 0)
            .max_by_key(|&cpu| (self.surplus(cpu), core::cmp::Reverse(cpu)))?;
        let queue = &mut self.cpus[victim.index()].queue;
        let rank = queue.next()?;
        queue.remove(rank);
        self.counters.steals += 1;
        // Through the thief's own queue, so that its cycle resumes after
        // the vCPU it took.
        let own = &mut self.cpus[thief.index()].queue;
        own.insert(rank);
        own.take_next()
    }

    /// vCPUs waiting for `cpu` that it will not take at once: all of its
    /// queue if it is busy or parked, all but one if it is about to pick.
    fn surplus(&self, cpu: CpuId) -> usize {
        let waiting = self.cpus[cpu.index()].queue.len();
        match self.cpus[cpu.index()].status {
            CpuStatus::Free => waiting.saturating_sub(1),
            CpuStatus::Busy { .. } | CpuStatus::Parked => waiting,
        }
    }

    /// The CPUs to kick so that no waiting vCPU is left without a CPU that
    /// will pick it: parked CPUs with vCPUs queued for them, then other
    /// parked CPUs (which will steal), then busy CPUs running a turn with
    /// no slice end while vCPUs wait for them. A kicked CPU counts as
    /// about to pick. With [`Placement::Rotate`], see
    /// [`Self::kick_parked_with_work`].
    fn kicks(&mut self) -> CpuSet {
        self.kicks_but(None)
    }

    /// [`Self::kicks`], never kicking `parking` (a CPU that is about to
    /// halt, whatever waits).
    fn kicks_but(&mut self, parking: Option<CpuId>) -> CpuSet {
        if self.placement == Placement::Rotate {
            return self.kick_parked_with_work();
        }
        let waiting: usize = self.cpus.iter().map(|cpu| cpu.queue.len()).sum();
        let picking = self.count_cpus(|status| status == CpuStatus::Free);
        let mut unattended = waiting.saturating_sub(picking);
        let mut kicks = CpuSet::EMPTY;
        let passes: [fn(&Cpu) -> bool; 3] = [
            |cpu| cpu.status == CpuStatus::Parked && !cpu.queue.is_empty(),
            |cpu| cpu.status == CpuStatus::Parked,
            |cpu| {
                matches!(cpu.status, CpuStatus::Busy { sliced: false, .. }) && !cpu.queue.is_empty()
            },
        ];
        for wanted in passes {
            for (index, cpu) in self.cpus.iter_mut().enumerate() {
                if unattended == 0 {
                    break;
                }
                if !wanted(cpu) || parking == Some(CpuId(index)) {
                    continue;
                }
                cpu.status = match cpu.status {
                    CpuStatus::Busy { rank, since, .. } => CpuStatus::Busy {
                        rank,
                        since,
                        sliced: true,
                    },
                    _ => CpuStatus::Free,
                };
                kicks.insert(CpuId(index));
                unattended -= 1;
            }
        }
        self.counters.kicks += kicks.len() as u64;
        kicks
    }

    /// [`Self::kicks`] with [`Placement::Rotate`]: no CPU steals, so each
    /// parked CPU with vCPUs in its own queue is kicked, and no other (a
    /// busy CPU's turn always has a slice's end).
    fn kick_parked_with_work(&mut self) -> CpuSet {
        let mut kicks = CpuSet::EMPTY;
        for (index, cpu) in self.cpus.iter_mut().enumerate() {
            if cpu.status == CpuStatus::Parked && !cpu.queue.is_empty() {
                cpu.status = CpuStatus::Free;
                kicks.insert(CpuId(index));
            }
        }
        self.counters.kicks += kicks.len() as u64;
        kicks
    }

    /// The first timer among the vCPUs that `cpu` watches: those queued
    /// there, and the halted ones that last ran there.
    fn first_timer_watched_by(&self, cpu: CpuId) -> Option<u64> {
        self.vcpus
            .iter()
            .filter(|v| match v.state {
                State::Waiting(on) => on == cpu,
                State::Halted => v.home == cpu,
                State::Running(_) => false,
            })
            .filter_map(|v| v.timer)
            .min()
    }

    /// The CPU with the fewest vCPUs, running or waiting (the lowest
    /// numbered of equals).
    fn least_loaded(&self) -> CpuId {
        let load =
            |cpu: &Cpu| cpu.queue.len() + usize::from(matches!(cpu.status, CpuStatus::Busy { .. }));
        let index = (0..self.cpus.len())
            .min_by_key(|&index| load(&self.cpus[index]))
            .unwrap_or(0);
        CpuId(index)
    }

    /// Checks the bookkeeping's invariants: each vCPU runs on at most one
    /// CPU, and that CPU says it runs it; each waiting vCPU is in its CPU's
    /// queue and no other; no CPU is parked while work waits that no CPU
    /// will take; every queue has room for every vCPU.
    #[cfg(test)]
    fn check(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        for (index, cpu) in self.cpus.iter().enumerate() {
            let here = CpuId(index);
            if !cpu.queue.is_sorted() || cpu.queue.capacity() < self.vcpus.len() {
                return Err(format!("{here}: queue unsorted or short of room"));
            }
            if let CpuStatus::Busy { rank, .. } = cpu.status
                && self.vcpu(rank).state != State::Running(here)
            {
                return Err(format!("{here} runs {rank}, which is elsewhere"));
            }
            for rank in cpu.queue.in_turn_order() {
                if self.vcpu(rank).state != State::Waiting(here) {
                    return Err(format!("{rank} queued on {here} but not waiting there"));
                }
            }
        }
        for v in &self.vcpus {
            match v.state {
                State::Running(cpu) => {
                    let running = self.cpus[cpu.index()].status;
                    if !matches!(running, CpuStatus::Busy { rank, .. } if rank == v.rank) {
                        return Err(format!("{:?} runs on {cpu}, which runs {running:?}", v.id));
                    }
                }
                State::Waiting(cpu) => {
                    let queues = self
                        .cpus
                        .iter()
                        .filter(|c| c.queue.contains(v.rank))
                        .count();
                    if queues != 1 || !self.cpus[cpu.index()].queue.contains(v.rank) {
                        return Err(format!(
                            "{:?} waits on {cpu} but is in {queues} queues",
                            v.id
                        ));
                    }
                }
                State::Halted => {
                    if self.cpus.iter().any(|c| c.queue.contains(v.rank)) {
                        return Err(format!("{:?} halted but queued", v.id));
                    }
                }
            }
        }
        if self.placement == Placement::Rotate {
            // No stealing: each queue is its own CPU's to take, at once if
            // it is parked, at the slice's end if it is busy.
            for (index, cpu) in self.cpus.iter().enumerate() {
                let unattended = match cpu.status {
                    CpuStatus::Parked => !cpu.queue.is_empty(),
                    CpuStatus::Busy { sliced, .. } => !sliced,
                    CpuStatus::Free => false,
                };
                if unattended {
                    return Err(format!(
                        "{} is {:?} with {} waiting",
                        CpuId(index),
                        cpu.status,
                        cpu.queue.len()
                    ));
                }
            }
            return Ok(());
        }
        let parked = self.count_cpus(|s| s == CpuStatus::Parked);
        let picking = self.count_cpus(|s| s == CpuStatus::Free);
        let waiting: usize = self.cpus.iter().map(|c| c.queue.len()).sum();
        if parked > 0 && waiting > picking {
            return Err(format!(
                "{parked} CPU(s) parked while {waiting} vCPU(s) wait for {picking}"
            ));
        }
        Ok(())
    }

    /// Whether no halted or waiting vCPU has a timer due at `now`.
    #[cfg(test)]
    fn timers_fired(&self, now: u64) -> bool {
        self.vcpus
            .iter()
            .filter(|v| !matches!(v.state, State::Running(_)))
            .all(|v| v.timer.is_none_or(|t| t > now))
    }

    /// The halted vCPUs with a deadline, and the CPU watching each.
    #[cfg(test)]
    fn halted_deadlines(&self) -> Vec<(VcpuId, CpuId, u64)> {
        self.vcpus
            .iter()
            .filter(|v| v.state == State::Halted)
            .filter_map(|v| Some((v.id, v.home, v.timer?)))
            .collect()
    }

    /// Whether `cpu` is between turns (about to pick).
    #[cfg(test)]
    fn is_free(&self, cpu: CpuId) -> bool {
        self.cpus[cpu.index()].status == CpuStatus::Free
    }

    /// Each run queue's room, to check that nothing but `add` allocates.
    #[cfg(test)]
    fn capacities(&self) -> Vec<usize> {
        self.cpus.iter().map(|cpu| cpu.queue.capacity()).collect()
    }

    /// The queue a vCPU joins when it can run again after a turn on `cpu`
    /// (or, halted, woken with `cpu` its home): that CPU's, or with
    /// [`Placement::Rotate`] the next one's.
    fn queue_after(&self, cpu: CpuId) -> CpuId {
        match self.placement {
            Placement::Affinity => cpu,
            Placement::Rotate => CpuId((cpu.index() + 1) % self.cpus.len()),
        }
    }

    fn enqueue(&mut self, rank: Rank, cpu: CpuId) {
        self.cpus[cpu.index()].queue.insert(rank);
        self.vcpu_mut(rank).state = State::Waiting(cpu);
    }

    fn count_cpus(&self, wanted: impl Fn(CpuStatus) -> bool) -> usize {
        self.cpus.iter().filter(|cpu| wanted(cpu.status)).count()
    }

    fn position(&self, id: VcpuId) -> Option<usize> {
        self.vcpus.iter().position(|v| v.id == id)
    }

    fn rank_position(&self, rank: Rank) -> usize {
        self.vcpus
            .binary_search_by_key(&rank, |v| v.rank)
            .expect("every queued or running rank is a known vCPU")
    }

    fn vcpu(&self, rank: Rank) -> &Vcpu {
        &self.vcpus[self.rank_position(rank)]
    }

    fn vcpu_mut(&mut self, rank: Rank) -> &mut Vcpu {
        let at = self.rank_position(rank);
        &mut self.vcpus[at]
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
