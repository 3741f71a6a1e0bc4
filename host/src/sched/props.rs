//! Property tests: whatever the kernel asks, in whatever order, on however
//! many CPUs, the scheduler keeps its invariants (a vCPU on one CPU at
//! most, each waiting vCPU in one queue, no CPU parked while work waits
//! for nobody, every halted vCPU's deadline watched by a timer); on one
//! CPU it gives exactly today's turns; and on a simulated machine every
//! guest ends, no guest is ever in two turns at once and no CPU in two.
//! With guests placed by affinity or rotated round the CPUs alike.

use super::sim::{Machine, Phase, SimGuest, TurnRecord, todays_round_robin};
use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What the kernel may ask; indices pick among the CPUs and the vCPUs
/// known (modulo their count).
#[derive(Clone, Debug)]
enum Op {
    Pick(usize),
    EndTurn(usize, End),
    Wake(usize),
    Add,
    Remove(usize),
    Advance(u64),
}

#[derive(Clone, Copy, Debug)]
enum End {
    Runnable(Option<u64>),
    Halted(Option<u64>),
    Ended,
}

fn op() -> impl Strategy<Value = Op> {
    let timer = proptest::option::of(1u64..50);
    prop_oneof![
        4 => any::<usize>().prop_map(Op::Pick),
        4 => (any::<usize>(), prop_oneof![
            timer.clone().prop_map(End::Runnable),
            timer.prop_map(End::Halted),
            Just(End::Ended),
        ]).prop_map(|(cpu, end)| Op::EndTurn(cpu, end)),
        2 => any::<usize>().prop_map(Op::Wake),
        2 => Just(Op::Add),
        1 => any::<usize>().prop_map(Op::Remove),
        2 => (0u64..30).prop_map(Op::Advance),
    ]
}

fn phases() -> impl Strategy<Value = Vec<Phase>> {
    proptest::collection::vec((1u64..40, proptest::option::of(1u64..60)), 1..5).prop_map(|steps| {
        let mut phases = Vec::new();
        for (compute, sleep) in steps {
            if let Some(sleep) = sleep.filter(|_| !phases.is_empty()) {
                phases.push(Phase::Sleep(sleep));
            }
            phases.push(Phase::Compute(compute));
        }
        phases
    })
}

/// The deadline each CPU's timer was last armed for by a decision.
type Armed = BTreeMap<CpuId, Option<u64>>;

fn apply(
    sched: &mut Scheduler,
    op: &Op,
    now: &mut u64,
    known: &mut BTreeSet<VcpuId>,
    next: &mut u32,
    armed: &mut Armed,
) {
    let cpus = sched.cpus();
    let nth = |i: usize| known.iter().nth(i % known.len().max(1)).copied();
    match *op {
        Op::Pick(cpu) => {
            let cpu = CpuId(cpu % cpus);
            let before = sched.capacities();
            let was = sched.running_on(cpu);
            let decision = sched.pick(cpu, *now);
            assert_eq!(sched.capacities(), before, "pick allocated");
            assert!(sched.timers_fired(*now), "a due timer left unfired");
            let until = match decision {
                Decision::Run { vcpu, until, .. } => {
                    assert!(
                        was.is_none_or(|v| v == vcpu),
                        "{cpu} dropped {was:?} for {vcpu:?}"
                    );
                    assert_eq!(sched.whereabouts(vcpu), Some(Whereabouts::Running(cpu)));
                    until
                }
                Decision::Idle { until, .. } => until,
            };
            assert!(
                until.is_none_or(|t| t > *now),
                "a deadline already past: {until:?}"
            );
            armed.insert(cpu, until);
        }
        Op::EndTurn(cpu, end) => {
            let cpu = CpuId(cpu % cpus);
            let Some(vcpu) = sched.running_on(cpu) else {
                return;
            };
            let at = |t: Option<u64>| t.map(|t| *now + t);
            let outcome = match end {
                End::Runnable(t) => Outcome::Runnable { timer: at(t) },
                End::Halted(t) => Outcome::Halted { timer: at(t) },
                End::Ended => Outcome::Ended,
            };
            sched
                .turn_ended(cpu, vcpu, *now, outcome)
                .expect("it runs there");
            if outcome == Outcome::Ended {
                known.remove(&vcpu);
            }
            if sched.placement == Placement::Rotate {
                // The kernel's next step, in the same hold of the lock: a
                // rotated vCPU waits on another CPU, which this pick's
                // kicks wake.
                apply(sched, &Op::Pick(cpu.index()), now, known, next, armed);
            }
        }
        Op::Wake(i) => {
            if let Some(vcpu) = nth(i) {
                let kick = sched.wake(vcpu);
                assert!(kick.is_none_or(|c| c.index() < cpus));
            }
        }
        Op::Add => {
            let vcpu = VcpuId::new(*next, (*next % 3) as u16);
            *next += 1;
            sched.add(vcpu).expect("a new id");
            known.insert(vcpu);
        }
        Op::Remove(i) => {
            if let Some(vcpu) = nth(i) {
                match sched.remove(vcpu) {
                    Ok(()) => {
                        known.remove(&vcpu);
                    }
                    Err(RemoveError::Running(cpu)) => {
                        assert_eq!(sched.running_on(cpu), Some(vcpu));
                    }
                    Err(RemoveError::Unknown) => panic!("{vcpu:?} is known"),
                }
            }
        }
        Op::Advance(ns) => *now += ns,
    }
}

/// Every halted vCPU's deadline is watched: its CPU is about to pick, or
/// its CPU's timer was armed no later than the deadline.
fn deadlines_watched(sched: &Scheduler, armed: &Armed) -> Result<(), std::string::String> {
    for (vcpu, cpu, due) in sched.halted_deadlines() {
        let watched =
            sched.is_free(cpu) || armed.get(&cpu).copied().flatten().is_some_and(|t| t <= due);
        if !watched {
            return Err(std::format!(
                "{vcpu:?} due at {due} on {cpu}, armed {:?}",
                armed.get(&cpu)
            ));
        }
    }
    Ok(())
}

/// No two turns of one guest, and no two turns on one CPU, overlap.
fn no_overlap(trace: &[TurnRecord]) -> Result<(), std::string::String> {
    for (i, a) in trace.iter().enumerate() {
        for b in &trace[i + 1..] {
            let overlap = a.start < b.end && b.start < a.end;
            if overlap && (a.guest == b.guest || a.cpu == b.cpu) {
                return Err(std::format!("{a:?} and {b:?} overlap"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn invariants_hold(
        cpus in 1usize..6,
        rotate in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..150),
    ) {
        let mut sched = Scheduler::new(cpus, 10);
        sched.set_placement(if rotate { Placement::Rotate } else { Placement::Affinity });
        let (mut now, mut next) = (0, 0);
        let mut known = BTreeSet::new();
        let mut armed = Armed::new();
        for op in &ops {
            apply(&mut sched, op, &mut now, &mut known, &mut next, &mut armed);
            prop_assert_eq!(sched.check(), Ok(()), "after {:?}", op);
            prop_assert_eq!(deadlines_watched(&sched, &armed), Ok(()), "after {:?}", op);
            prop_assert_eq!(sched.len(), known.len());
            for &vcpu in &known {
                prop_assert!(sched.whereabouts(vcpu).is_some());
            }
        }
    }

    #[test]
    fn one_cpu_is_todays_loop(guests in proptest::collection::vec(phases(), 1..6), slice in 1u64..20) {
        let guests: Vec<SimGuest> = guests.iter().map(|p| SimGuest::new(p)).collect();
        let mut machine = Machine::new(1, slice, &guests);
        machine.run_to_end();
        prop_assert_eq!(machine.trace, todays_round_robin(&guests, slice));
    }

    #[test]
    fn machines_finish_without_overlap(
        cpus in 1usize..6,
        rotate in any::<bool>(),
        guests in proptest::collection::vec(phases(), 1..10),
        slice in 1u64..20,
    ) {
        let guests: Vec<SimGuest> = guests.iter().map(|p| SimGuest::new(p)).collect();
        let mut machine = Machine::new(cpus, slice, &guests);
        machine.sched.set_placement(if rotate { Placement::Rotate } else { Placement::Affinity });
        machine.run_to_end();
        prop_assert_eq!(machine.ended_at.len(), guests.len());
        prop_assert_eq!(no_overlap(&machine.trace), Ok(()));
        prop_assert_eq!(machine.sched.check(), Ok(()));
        prop_assert!(machine.sched.is_empty());
    }
}
