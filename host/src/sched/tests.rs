//! The scheduler against today's loop, on simulated CPUs, and its edges.

use super::sim::{Machine, Phase, SimGuest, TurnRecord, moves, shared_queue, todays_round_robin};
use super::*;
use std::println;
use std::vec::Vec;

const CPU0: CpuId = CpuId(0);
const CPU1: CpuId = CpuId(1);

fn vcpu(guest: u32) -> VcpuId {
    VcpuId::new(guest, 0)
}

/// A halt until `until`, with no CPU to kick.
fn idle(until: Option<u64>) -> Decision {
    Decision::Idle {
        until,
        kicks: CpuSet::EMPTY,
    }
}

/// The turns a scheduler on one CPU gives, driven as the kernel would.
fn one_cpu_turns(guests: &[SimGuest], slice_ns: u64) -> Vec<TurnRecord> {
    let mut machine = Machine::new(1, slice_ns, guests);
    machine.run_to_end();
    machine.trace
}

fn turn(guest: u32, start: u64, end: u64) -> TurnRecord {
    TurnRecord {
        guest,
        cpu: 0,
        start,
        end,
    }
}

/// Today's behaviour on one CPU, written out: slices only while another
/// guest is runnable, a turn cut short by another guest's timer (A at 27),
/// a woken guest taking its own place in the cycle (B right after A), a
/// guest alone running to its end.
#[test]
fn one_cpu_gives_todays_turns() {
    let guests = [
        SimGuest::job(25),
        SimGuest::new(&[Phase::Compute(5), Phase::Sleep(12), Phase::Compute(5)]),
        SimGuest::job(30),
    ];
    let (a, b, c) = (0, 1, 2);
    let expected = [
        turn(a, 0, 10),
        turn(b, 10, 15),
        turn(c, 15, 25),
        turn(a, 25, 27),
        turn(b, 27, 32),
        turn(c, 32, 42),
        turn(a, 42, 52),
        turn(c, 52, 62),
        turn(a, 62, 65),
    ];
    assert_eq!(todays_round_robin(&guests, 10), expected);
    assert_eq!(one_cpu_turns(&guests, 10), expected);
}

/// More shapes, turn by turn against the transcription of today's loop:
/// everyone asleep at once (the CPU idles to the first timer), wakes behind
/// and ahead of the cursor, guests ending mid-cycle.
#[test]
fn one_cpu_matches_todays_loop() {
    use Phase::{Compute as C, Sleep as S};
    let scenarios: [&[&[Phase]]; 4] = [
        &[&[C(3), S(50), C(3)], &[C(4), S(20), C(1), S(5), C(2)]],
        &[
            &[C(100)],
            &[C(1), S(7), C(1), S(7), C(1)],
            &[C(35)],
            &[C(2), S(1), C(40)],
        ],
        &[&[C(10)], &[C(10)], &[C(10)], &[C(10)]],
        &[
            &[C(1), S(100), C(1)],
            &[C(1), S(100), C(1)],
            &[C(1), S(3), C(30)],
        ],
    ];
    for phases in scenarios {
        let guests: Vec<SimGuest> = phases.iter().map(|p| SimGuest::new(p)).collect();
        assert_eq!(one_cpu_turns(&guests, 10), todays_round_robin(&guests, 10));
    }
}

/// 8 compute-bound vCPUs: while all of them are still running, each has
/// had the same number of slices (within one) and the same CPU time
/// (within one slice), on 1, 2 and 4 CPUs.
#[test]
fn compute_bound_vcpus_share_fairly() {
    const SLICE: u64 = 10;
    for cpus in [1, 2, 4] {
        let guests = std::vec![SimGuest::job(1000); 8];
        let mut machine = Machine::new(cpus, SLICE, &guests);
        // Each vCPU wants 1000; the first can end at 8000 / cpus.
        let horizon = 8000 / cpus as u64 - 2 * SLICE;
        machine.run_until(horizon);
        let shares = machine.shares();
        assert_eq!(shares.len(), 8, "every vCPU ran on {cpus} CPU(s)");
        let turns: Vec<usize> = shares.values().map(|&(turns, _)| turns).collect();
        let times: Vec<u64> = shares.values().map(|&(_, ns)| ns).collect();
        let spread = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap();
        let turns_u64: Vec<u64> = turns.iter().map(|&t| t as u64).collect();
        assert!(spread(&turns_u64) <= 1, "{cpus} CPU(s): turns {turns:?}");
        assert!(spread(&times) <= SLICE, "{cpus} CPU(s): CPU time {times:?}");
        let fair = horizon * cpus as u64 / 8;
        for &t in &times {
            assert!(
                t.abs_diff(fair) <= 2 * SLICE,
                "{cpus} CPU(s): {t} against {fair}"
            );
        }
        machine.run_to_end();
        assert_eq!(
            machine.now,
            8000 / cpus as u64,
            "no CPU idles while work waits"
        );
        assert_eq!(machine.sched.counters().migrations, 0);
    }
}

/// A CPU whose queue is empty takes a waiting vCPU from the busiest one.
#[test]
fn an_idle_cpu_steals() {
    let mut sched = Scheduler::new(2, 10);
    for guest in 0..3 {
        sched.add(vcpu(guest)).unwrap();
    }
    // Spread by load: 0 and 2 on CPU 0, 1 on CPU 1.
    assert_eq!(sched.whereabouts(vcpu(2)), Some(Whereabouts::Waiting(CPU0)));
    assert!(
        matches!(sched.pick(CPU0, 0), Decision::Run { vcpu: v, until: Some(10), .. } if v == vcpu(0))
    );
    assert!(
        matches!(sched.pick(CPU1, 0), Decision::Run { vcpu: v, until: None, .. } if v == vcpu(1))
    );
    sched.turn_ended(CPU1, vcpu(1), 4, Outcome::Ended).unwrap();
    let Decision::Run { vcpu: stolen, .. } = sched.pick(CPU1, 4) else {
        panic!("CPU 1 should steal");
    };
    assert_eq!(stolen, vcpu(2));
    assert_eq!(sched.counters().steals, 1);
    assert_eq!(sched.counters().migrations, 1);
    // Nothing left anywhere: the next CPU to ask parks.
    sched
        .turn_ended(CPU0, vcpu(0), 10, Outcome::Runnable { timer: None })
        .unwrap();
    assert!(
        matches!(sched.pick(CPU0, 10), Decision::Run { vcpu: v, until: None, .. } if v == vcpu(0))
    );
    sched.turn_ended(CPU1, vcpu(2), 10, Outcome::Ended).unwrap();
    assert_eq!(sched.pick(CPU1, 10), idle(None));
}

/// With [`Placement::Rotate`], every turn after a vCPU's first is on
/// another CPU than its last, sliced or halted, and all still end: on 2 and
/// 3 CPUs, three guests that compute and sleep.
#[test]
fn rotation_moves_every_vcpu_at_every_turn() {
    let guests = [
        SimGuest::job(45),
        SimGuest::new(&[Phase::Compute(5), Phase::Sleep(12), Phase::Compute(25)]),
        SimGuest::new(&[Phase::Compute(15), Phase::Sleep(3), Phase::Compute(5)]),
    ];
    for cpus in [2, 3] {
        let mut machine = Machine::new(cpus, 10, &guests);
        machine.sched.set_placement(Placement::Rotate);
        machine.run_to_end();
        let mut last_cpu = std::collections::BTreeMap::new();
        for turn in &machine.trace {
            if let Some(last) = last_cpu.insert(turn.guest, turn.cpu) {
                assert_ne!(last, turn.cpu, "{cpus} CPUs: {turn:?} did not move");
            }
        }
        let turns = machine.trace.len() as u64;
        let firsts = guests.len() as u64;
        assert!(turns > firsts, "{cpus} CPUs: only {turns} turns");
        assert_eq!(machine.sched.counters().migrations, turns - firsts);
        assert_eq!(machine.ended_at.len(), guests.len());
    }
}

/// Halted vCPUs run again at their deadline, the idle CPU's timer is set
/// for the first of them, and a running vCPU's turn ends at the next one.
#[test]
fn halted_vcpus_wake_at_their_deadline() {
    let mut sched = Scheduler::new(1, 10);
    let (a, b) = (vcpu(0), vcpu(1));
    sched.add(a).unwrap();
    sched.add(b).unwrap();
    assert!(
        matches!(sched.pick(CPU0, 0), Decision::Run { vcpu, until: Some(10), .. } if vcpu == a)
    );
    sched
        .turn_ended(CPU0, a, 5, Outcome::Halted { timer: Some(50) })
        .unwrap();
    assert!(
        matches!(sched.pick(CPU0, 5), Decision::Run { vcpu, until: Some(50), .. } if vcpu == b)
    );
    sched
        .turn_ended(CPU0, b, 8, Outcome::Halted { timer: Some(30) })
        .unwrap();
    assert_eq!(sched.pick(CPU0, 8), idle(Some(30)));
    // Woken early (a spurious interrupt): still nothing due.
    assert_eq!(sched.pick(CPU0, 20), idle(Some(30)));
    assert!(
        matches!(sched.pick(CPU0, 30), Decision::Run { vcpu, until: Some(50), .. } if vcpu == b)
    );
    sched
        .turn_ended(CPU0, b, 40, Outcome::Halted { timer: None })
        .unwrap();
    assert_eq!(sched.pick(CPU0, 40), idle(Some(50)));
    assert!(matches!(sched.pick(CPU0, 50), Decision::Run { vcpu, until: None, .. } if vcpu == a));
    assert_eq!(
        sched.whereabouts(b),
        Some(Whereabouts::Halted { timer: None })
    );
}

/// On several CPUs, a halted vCPU's deadline is watched by the CPU it last
/// ran on, and only that one.
#[test]
fn the_last_cpu_watches_a_halted_vcpu() {
    let mut sched = Scheduler::new(2, 10);
    sched.add(vcpu(0)).unwrap();
    sched.pick(CPU0, 0);
    sched
        .turn_ended(CPU0, vcpu(0), 1, Outcome::Halted { timer: Some(40) })
        .unwrap();
    assert_eq!(sched.pick(CPU0, 1), idle(Some(40)));
    assert_eq!(sched.pick(CPU1, 1), idle(None));
    assert!(matches!(sched.pick(CPU0, 40), Decision::Run { vcpu: v, .. } if v == vcpu(0)));
}

/// Removing a vCPU in a turn is refused, naming the CPU; at its turn's end
/// `Ended` forgets it. A waiting or halted one goes at once.
#[test]
fn removing_a_running_vcpu_is_refused() {
    let mut sched = Scheduler::new(2, 10);
    sched.add(vcpu(0)).unwrap();
    sched.add(vcpu(1)).unwrap();
    sched.pick(CPU1, 0);
    let Some(Whereabouts::Running(cpu)) = sched.whereabouts(vcpu(1)) else {
        panic!("vCPU 1 runs");
    };
    assert_eq!(sched.remove(vcpu(1)), Err(RemoveError::Running(cpu)));
    assert_eq!(sched.remove(vcpu(0)), Ok(()));
    assert_eq!(sched.remove(vcpu(0)), Err(RemoveError::Unknown));
    sched.turn_ended(cpu, vcpu(1), 3, Outcome::Ended).unwrap();
    assert_eq!(sched.whereabouts(vcpu(1)), None);
    assert!(sched.is_empty());
}

/// A woken vCPU goes back to its own CPU and kicks it if it is parked; if
/// that CPU is busy, a parked one is kicked (and will steal).
#[test]
fn wake_kicks_a_parked_cpu() {
    let mut sched = Scheduler::new(3, 10);
    sched.add(vcpu(0)).unwrap();
    sched.add(vcpu(1)).unwrap();
    sched.pick(CPU0, 0);
    sched.pick(CPU1, 0);
    assert_eq!(sched.pick(CpuId(2), 0), idle(None));
    sched
        .turn_ended(CPU1, vcpu(1), 2, Outcome::Halted { timer: None })
        .unwrap();
    assert_eq!(sched.pick(CPU1, 2), idle(None));
    // Its own CPU is parked: that one.
    assert_eq!(sched.wake(vcpu(1)), Some(CPU1));
    assert_eq!(sched.wake(vcpu(1)), None, "a second wake changes nothing");
    assert!(matches!(sched.pick(CPU1, 3), Decision::Run { vcpu: v, .. } if v == vcpu(1)));
    // CPU 0's vCPU halts; CPU 0 takes a job; then its vCPU wakes: CPU 2.
    sched
        .turn_ended(CPU0, vcpu(0), 4, Outcome::Halted { timer: None })
        .unwrap();
    sched.add(vcpu(2)).unwrap();
    assert!(matches!(sched.pick(CPU0, 4), Decision::Run { vcpu: v, .. } if v == vcpu(2)));
    assert_eq!(sched.wake(vcpu(0)), Some(CpuId(2)));
    assert!(matches!(sched.pick(CpuId(2), 5), Decision::Run { vcpu: v, .. } if v == vcpu(0)));
    assert_eq!(sched.counters().steals, 1);
}

/// With no CPU parked, a wake kicks the busy CPU whose vCPU runs alone
/// (no slice end), so that the woken one gets its turn.
#[test]
fn wake_kicks_a_cpu_running_alone() {
    let mut sched = Scheduler::new(1, 10);
    sched.add(vcpu(0)).unwrap();
    sched.add(vcpu(1)).unwrap();
    sched.pick(CPU0, 0);
    sched
        .turn_ended(CPU0, vcpu(0), 1, Outcome::Halted { timer: None })
        .unwrap();
    assert!(
        matches!(sched.pick(CPU0, 1), Decision::Run { vcpu: v, until: None, .. } if v == vcpu(1))
    );
    assert_eq!(sched.wake(vcpu(0)), Some(CPU0));
    // The turn is sliced now: asked again, the CPU gets a slice's end.
    assert!(
        matches!(sched.pick(CPU0, 3), Decision::Run { vcpu: v, until: Some(13), .. } if v == vcpu(1))
    );
}

/// A wake that comes during a turn which then ends halted is not lost.
#[test]
fn a_wake_during_a_turn_is_not_lost() {
    let mut sched = Scheduler::new(1, 10);
    sched.add(vcpu(0)).unwrap();
    sched.pick(CPU0, 0);
    assert_eq!(sched.wake(vcpu(0)), None);
    sched
        .turn_ended(CPU0, vcpu(0), 1, Outcome::Halted { timer: None })
        .unwrap();
    assert_eq!(sched.whereabouts(vcpu(0)), Some(Whereabouts::Waiting(CPU0)));
    // Once only: the next halt holds.
    sched.pick(CPU0, 1);
    sched
        .turn_ended(CPU0, vcpu(0), 2, Outcome::Halted { timer: None })
        .unwrap();
    assert_eq!(sched.pick(CPU0, 2), idle(None));
}

/// The kernel's mistakes are refused, not obeyed.
#[test]
fn mistakes_are_refused() {
    let mut sched = Scheduler::new(2, 10);
    sched.add(vcpu(0)).unwrap();
    assert_eq!(sched.add(vcpu(0)), Err(AddError::Duplicate));
    let ended = Outcome::Ended;
    assert_eq!(
        sched.turn_ended(CPU0, vcpu(0), 0, ended),
        Err(TurnError::NotRunningThere)
    );
    sched.pick(CPU0, 0);
    assert_eq!(
        sched.turn_ended(CPU1, vcpu(0), 0, ended),
        Err(TurnError::NotRunningThere)
    );
    assert_eq!(
        sched.turn_ended(CPU0, vcpu(9), 0, ended),
        Err(TurnError::NotRunningThere)
    );
    // Asked again mid-turn, a CPU keeps its vCPU; the other finds nothing.
    assert!(matches!(sched.pick(CPU0, 1), Decision::Run { vcpu: v, .. } if v == vcpu(0)));
    assert_eq!(sched.pick(CPU1, 1), idle(None));
    assert_eq!(sched.wake(vcpu(9)), None);
}

/// `pick` moves words in room reserved by `add`: no queue grows.
#[test]
fn pick_does_not_allocate() {
    let guests: Vec<SimGuest> = (1..=12)
        .map(|i| {
            SimGuest::new(&[
                Phase::Compute(i * 7),
                Phase::Sleep(13),
                Phase::Compute(i * 5),
            ])
        })
        .collect();
    let mut machine = Machine::new(3, 10, &guests);
    let before = machine.sched.capacities();
    machine.run_to_end();
    assert_eq!(machine.sched.capacities(), before);
}

/// The measurement behind stealing (see the module's documentation):
/// simulated time to finish 8 jobs on 1, 2 and 4 CPUs, and how often a
/// job moved between CPUs, with per-CPU queues and stealing against one
/// shared queue. Printed; only sanity is asserted.
#[test]
fn measurement() {
    const SLICE: u64 = 10;
    let equal = std::vec![SimGuest::job(100); 8];
    // Near-equal: out of step, as real jobs are.
    let near: Vec<SimGuest> = (0..8).map(|i| SimGuest::job(95 + (i * 37) % 11)).collect();
    let unequal: Vec<SimGuest> = (1..=8).map(|i| SimGuest::job(20 * i)).collect();
    let workloads = [
        ("8 equal jobs of 100 ms", &equal[..]),
        ("8 jobs of 95..105 ms", &near[..]),
        ("8 jobs of 20..160 ms", &unequal[..]),
    ];
    for (name, jobs) in workloads {
        let work: u64 = jobs.iter().map(|j| j.compute_left().unwrap()).sum();
        let longest = jobs
            .iter()
            .map(|j| j.compute_left().unwrap())
            .max()
            .unwrap();
        println!("{name}, {SLICE} ms slices ({work} ms of work):");
        println!("  cpus | stealing: ms, moves, steals | shared queue: ms, moves | ideal ms");
        let mut single = 0;
        for cpus in [1, 2, 4] {
            let mut machine = Machine::new(cpus, SLICE, jobs);
            let stealing = machine.run_to_end();
            let (shared, shared_trace) = shared_queue(cpus, SLICE, jobs);
            let ideal = (work / cpus as u64).max(longest);
            println!(
                "  {cpus:>4} | {stealing:>12} {:>6} {:>7} | {shared:>16} {:>6} | {ideal:>8}",
                machine.moves(),
                machine.sched.counters().steals,
                moves(&shared_trace),
            );
            if cpus == 1 {
                single = stealing;
                assert_eq!(stealing, work);
            }
            assert!(stealing >= ideal, "{cpus} CPUs: {stealing} ms");
            assert!(cpus == 1 || stealing < single, "{cpus} CPUs: {stealing} ms");
            assert!(machine.moves() <= moves(&shared_trace));
        }
    }
}
