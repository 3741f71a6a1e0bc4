//! A simulated machine for the scheduler's tests: a clock, CPUs, and
//! guests that follow scripts (compute so long, sleep so long, ...).
//!
//! Three drivers share the guests: [`todays_round_robin`], a transcription
//! of the loop `kernel/src/run.rs` ran before the scheduler (one CPU); the
//! [`Machine`], the kernel's loop as it calls the [`Scheduler`] on every
//! CPU; and [`shared_queue`], the alternative the scheduler does not take
//! (one queue for all CPUs), for the measurement.

use super::*;
use std::collections::{BTreeMap, VecDeque};
use std::vec;
use std::vec::Vec;

/// What a simulated guest does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Compute for so many nanoseconds of CPU time.
    Compute(u64),
    /// Halt with its timer set so many nanoseconds ahead.
    Sleep(u64),
}

/// A simulated guest: what it has left to do.
#[derive(Clone, Debug)]
pub struct SimGuest {
    phases: VecDeque<Phase>,
}

impl SimGuest {
    /// A guest that goes through `phases` and ends (it starts computing:
    /// every guest starts runnable).
    pub fn new(phases: &[Phase]) -> Self {
        Self {
            phases: phases.iter().copied().collect(),
        }
    }

    /// A guest that computes for `ns` and ends.
    pub fn job(ns: u64) -> Self {
        Self::new(&[Phase::Compute(ns)])
    }

    /// CPU time its current phase still wants, if it computes.
    pub fn compute_left(&self) -> Option<u64> {
        match self.phases.front() {
            Some(Phase::Compute(left)) => Some(*left),
            _ => None,
        }
    }

    /// Runs it from `from` until `until` at the latest; returns when its
    /// turn ended and how.
    pub fn run(&mut self, from: u64, until: Option<u64>) -> (u64, Outcome) {
        let Some(Phase::Compute(left)) = self.phases.front_mut() else {
            self.phases.clear();
            return (from, Outcome::Ended);
        };
        let end = until.map_or(from + *left, |until| until.min(from + *left));
        *left -= end - from;
        if *left > 0 {
            return (end, Outcome::Runnable { timer: None });
        }
        self.phases.pop_front();
        match self.phases.pop_front() {
            None => (end, Outcome::Ended),
            Some(Phase::Sleep(ns)) => (
                end,
                Outcome::Halted {
                    timer: Some(end + ns),
                },
            ),
            Some(compute) => {
                self.phases.push_front(compute);
                (end, Outcome::Runnable { timer: None })
            }
        }
    }
}

/// One turn: which guest ran, on which CPU, from when to when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRecord {
    pub guest: u32,
    pub cpu: usize,
    pub start: u64,
    pub end: u64,
}

/// The loop of `kernel/src/run.rs` before the scheduler (its `schedule`),
/// transcribed with simulated guests for real ones: round robin over the
/// guests' list with a cursor; all guests polled (due timers fired) at
/// each step; the slice only when another guest is runnable; the turn
/// also ends at another guest's timer; idle until the first timer.
pub fn todays_round_robin(guests: &[SimGuest], slice_ns: u64) -> Vec<TurnRecord> {
    struct Slot {
        id: u32,
        guest: SimGuest,
        runnable: bool,
        timer: Option<u64>,
    }
    let mut slots: Vec<Slot> = (0..)
        .zip(guests)
        .map(|(id, guest)| Slot {
            id,
            guest: guest.clone(),
            runnable: true,
            timer: None,
        })
        .collect();
    let mut trace = Vec::new();
    let (mut now, mut current) = (0, 0);
    while !slots.is_empty() {
        current %= slots.len();
        for slot in &mut slots {
            if slot.timer.is_some_and(|due| now >= due) {
                slot.timer = None;
                slot.runnable = true;
            }
        }
        let runnable = slots.iter().filter(|s| s.runnable).count();
        if runnable == 0 {
            now = slots
                .iter()
                .filter_map(|s| s.timer)
                .min()
                .expect("no timer");
            continue;
        }
        if !slots[current].runnable {
            current += 1;
            continue;
        }
        let slice_end = (runnable > 1).then(|| now + slice_ns);
        let others_due = (0..slots.len())
            .filter(|&i| i != current)
            .filter_map(|i| slots[i].timer)
            .min();
        let slot = &mut slots[current];
        let (end, outcome) = slot.guest.run(now, earliest(slice_end, others_due));
        trace.push(TurnRecord {
            guest: slot.id,
            cpu: 0,
            start: now,
            end,
        });
        now = end;
        match outcome {
            Outcome::Ended => {
                slots.remove(current);
            }
            Outcome::Runnable { timer } => {
                slot.timer = timer;
                current += 1;
            }
            Outcome::Halted { timer } => {
                slot.timer = timer;
                slot.runnable = false;
                current += 1;
            }
        }
    }
    trace
}

/// A simulated CPU, as the machine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SimCpu {
    /// About to pick.
    Free,
    /// In `vcpu`'s turn since `start`, which ends at `ends_at`.
    Running {
        vcpu: VcpuId,
        start: u64,
        ends_at: u64,
    },
    /// Halted until `until`, or a kick.
    Parked { until: Option<u64> },
}

/// The kernel's loop on every CPU, calling the scheduler, with one clock.
/// Events are taken in time order, the lowest-numbered CPU first at equal
/// times.
pub struct Machine {
    pub sched: Scheduler,
    cpus: Vec<SimCpu>,
    guests: BTreeMap<VcpuId, SimGuest>,
    pub now: u64,
    pub trace: Vec<TurnRecord>,
    /// When each guest ended.
    pub ended_at: BTreeMap<VcpuId, u64>,
}

impl Machine {
    /// `cpus` CPUs sharing `guests` (guest `i` is vCPU 0 of guest `i`).
    pub fn new(cpus: usize, slice_ns: u64, guests: &[SimGuest]) -> Self {
        let mut sched = Scheduler::new(cpus, slice_ns);
        let mut table = BTreeMap::new();
        for (guest, sim) in (0..).zip(guests) {
            let id = VcpuId::new(guest, 0);
            sched.add(id).expect("a new id");
            table.insert(id, sim.clone());
        }
        Self {
            sched,
            cpus: vec![SimCpu::Free; cpus],
            guests: table,
            now: 0,
            trace: Vec::new(),
            ended_at: BTreeMap::new(),
        }
    }

    /// Runs until every guest has ended; returns the time then.
    pub fn run_to_end(&mut self) -> u64 {
        while !self.guests.is_empty() {
            assert!(self.step(), "every CPU halted for good with guests left");
        }
        self.now
    }

    /// Runs until `deadline` or the end (no event after `deadline` is
    /// taken).
    pub fn run_until(&mut self, deadline: u64) {
        while !self.guests.is_empty() && self.next_event().is_some_and(|(t, _)| t <= deadline) {
            self.step();
        }
    }

    /// Takes the next event; false if there is none.
    pub fn step(&mut self) -> bool {
        let Some((at, cpu)) = self.next_event() else {
            return false;
        };
        self.now = self.now.max(at);
        match self.cpus[cpu] {
            SimCpu::Free => self.pick(cpu),
            SimCpu::Running {
                vcpu,
                start,
                ends_at,
            } => self.end_turn(cpu, vcpu, start, ends_at),
            SimCpu::Parked { .. } => self.cpus[cpu] = SimCpu::Free,
        }
        true
    }

    fn next_event(&self) -> Option<(u64, usize)> {
        (0..self.cpus.len())
            .filter_map(|cpu| match self.cpus[cpu] {
                SimCpu::Free => Some((self.now, cpu)),
                SimCpu::Running { ends_at, .. } => Some((ends_at, cpu)),
                SimCpu::Parked { until } => until.map(|t| (t, cpu)),
            })
            .min()
    }

    fn pick(&mut self, cpu: usize) {
        match self.sched.pick(CpuId(cpu), self.now) {
            Decision::Run { vcpu, until, kicks } => {
                let guest = &self.guests[&vcpu];
                let natural = self.now + guest.compute_left().expect("a runnable guest computes");
                let ends_at = until.map_or(natural, |until| until.min(natural));
                assert!(
                    until.is_none_or(|u| u > self.now),
                    "a turn that ends at once"
                );
                self.cpus[cpu] = SimCpu::Running {
                    vcpu,
                    start: self.now,
                    ends_at,
                };
                self.kick(kicks, cpu);
            }
            Decision::Idle { until, kicks } => {
                self.cpus[cpu] = SimCpu::Parked { until };
                self.kick(kicks, cpu);
            }
        }
    }

    fn end_turn(&mut self, cpu: usize, vcpu: VcpuId, start: u64, ends_at: u64) {
        let guest = self.guests.get_mut(&vcpu).expect("a running guest");
        let (end, outcome) = guest.run(start, Some(ends_at));
        assert_eq!(end, ends_at);
        self.trace.push(TurnRecord {
            guest: vcpu.guest,
            cpu,
            start,
            end,
        });
        if outcome == Outcome::Ended {
            self.guests.remove(&vcpu);
            self.ended_at.insert(vcpu, end);
        }
        self.sched
            .turn_ended(CpuId(cpu), vcpu, end, outcome)
            .expect("the vCPU ran there");
        self.cpus[cpu] = SimCpu::Free;
    }

    /// An IPI: a parked CPU picks, a busy one ends its turn now.
    fn kick(&mut self, kicks: CpuSet, from: usize) {
        for target in kicks.iter().map(CpuId::index).filter(|&c| c != from) {
            match &mut self.cpus[target] {
                SimCpu::Parked { .. } => self.cpus[target] = SimCpu::Free,
                SimCpu::Running { ends_at, .. } => *ends_at = (*ends_at).min(self.now),
                SimCpu::Free => {}
            }
        }
    }

    /// Each guest's turns, and CPU time, in the trace so far.
    pub fn shares(&self) -> BTreeMap<u32, (usize, u64)> {
        let mut shares = BTreeMap::new();
        for turn in &self.trace {
            let (turns, ns) = shares.entry(turn.guest).or_insert((0, 0));
            *turns += 1;
            *ns += turn.end - turn.start;
        }
        shares
    }

    /// Turns on another CPU than the guest's turn before.
    pub fn moves(&self) -> usize {
        moves(&self.trace)
    }
}

/// Turns in `trace` on another CPU than the same guest's turn before.
pub fn moves(trace: &[TurnRecord]) -> usize {
    let mut last = BTreeMap::new();
    trace
        .iter()
        .filter(|turn| {
            last.insert(turn.guest, turn.cpu)
                .is_some_and(|cpu| cpu != turn.cpu)
        })
        .count()
}

/// The alternative: one first-in first-out queue that every CPU takes
/// from, with the same slices (only while others wait). Compute-only
/// guests. Returns the time the last one ended, and the trace.
pub fn shared_queue(cpus: usize, slice_ns: u64, guests: &[SimGuest]) -> (u64, Vec<TurnRecord>) {
    let mut queue: VecDeque<(u32, SimGuest)> = (0..).zip(guests.iter().cloned()).collect();
    // Per CPU: the guest it runs, from when, until when.
    let mut running: Vec<Option<(u32, SimGuest, u64, u64)>> = vec![None; cpus];
    let (mut now, mut trace) = (0, Vec::new());
    loop {
        for slot in running.iter_mut().filter(|slot| slot.is_none()) {
            let Some((id, guest)) = queue.pop_front() else {
                break;
            };
            let natural = now + guest.compute_left().expect("compute-only guests");
            let end = if queue.is_empty() {
                natural
            } else {
                natural.min(now + slice_ns)
            };
            *slot = Some((id, guest, now, end));
        }
        let Some(cpu) = (0..cpus)
            .filter(|&c| running[c].is_some())
            .min_by_key(|&c| running[c].as_ref().map(|r| r.3))
        else {
            return (now, trace);
        };
        let (id, mut guest, start, end) = running[cpu].take().expect("chosen as running");
        now = end;
        trace.push(TurnRecord {
            guest: id,
            cpu,
            start,
            end,
        });
        if guest.run(start, Some(end)).1 != Outcome::Ended {
            queue.push_back((id, guest));
        }
    }
}
