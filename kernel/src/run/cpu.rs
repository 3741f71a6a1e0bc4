//! One CPU's part in the run: pick, run a turn, say how it ended, again.
//!
//! Every CPU that runs guests, the boot CPU and each application processor
//! alike, runs [`run_on_this_cpu`] until every guest has ended. Its loop
//! takes the lock on the [`Machine`](super::machine) once per turn: to hand
//! back the slot of the guest whose turn just ended and pick the next
//! (one hold, as [`host::sched`] wants), and, on the boot CPU, to poll the
//! network. Then, without the lock, it runs the turn ([`run_turn`]): the
//! guest is entered again after each exit the host handles, until it
//! halts, ends, uses up its slice while others wait, or another CPU sends
//! this one the scheduler's interrupt (there is work here to pick: frames
//! for this guest, a vCPU woken for this CPU). With nothing to run the CPU
//! halts until the first timer it watches is due, or that interrupt.
//!
//! The host's timer on each CPU is one-shot ([`DeadlineTimer`]): armed for
//! the first moment something is due (the turn's end, the guest's own
//! timer, the end of its budget), so a guest computing alone is not
//! interrupted at all.

use super::machine::{CpuAccount, MACHINE, Machine, Pick};
use super::vcpus::{GuestFrames, SharedGuest};
use super::{FrameGuestMemory, Services, Slot};
use crate::network;
use crate::switcher::CpuSwitcher;
use crate::{apic, interrupts};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use alloc::string::String;
use guest_abi::hypercall::{Number, host_vector};
use host::guest::{Exit, ExitEvents, Guest, HostServices, Next, NoEvents};
use host::sched::{CpuId, VcpuId};

/// Runs guests on this CPU (`cpu` to the scheduler) until every guest has
/// ended; returns what this CPU did. Interrupts must be off; they are off
/// again on return.
pub(super) fn run_on_this_cpu(
    cpu: CpuId,
    switcher: &mut CpuSwitcher,
    mut services: Services,
) -> CpuAccount {
    let mut account = CpuAccount::default();
    let mut timer = DeadlineTimer::new();
    apic::set_timer_masked(false);
    let mut ended_turn: Option<(Box<Slot>, Next)> = None;
    loop {
        let mut guard = lock_machine(&mut account);
        let Some(machine) = guard.as_mut() else {
            // Cannot happen: the boot CPU takes the machine away only
            // once no CPU is in the run.
            break;
        };
        let now = services.now_ns();
        if let Some((slot, next)) = ended_turn.take()
            && let Some((slot, port_stats)) = machine.turn_ended(cpu, slot, next, now)
        {
            drop(guard);
            end_of_life(cpu, slot, port_stats);
            continue;
        }
        let polling = machine.network.needs_polling();
        if polling && cpu == CpuId::BOOT {
            machine.poll_network(cpu, now);
        }
        // While there is a network to poll, turns end in time for it (and
        // for the counters page's lines of the guests in them).
        let poll_due = polling.then(|| now + network::POLL_NS);
        match machine.pick(cpu, now) {
            Pick::Over => break,
            Pick::Idle { until } => {
                drop(guard);
                account.halts += 1;
                let wake = if cpu == CpuId::BOOT {
                    min_deadline(until, poll_due)
                } else {
                    until
                };
                idle_until(&mut timer, wake, now);
            }
            Pick::Run { mut slot, until } => {
                drop(guard);
                let turn = Turn {
                    slice_end: min_deadline(until, poll_due),
                    timer: &mut timer,
                };
                let next = take_turn(cpu, &mut slot, turn, switcher, &mut services, &mut account);
                account.busy_ns += services.now_ns().saturating_sub(now);
                ended_turn = Some((slot, next));
            }
        }
    }
    if cpu != CpuId::BOOT {
        apic::set_timer_masked(true);
    }
    account
}

/// Takes the machine's lock for the edge of a turn, counting in `account`
/// the times another CPU held it: how contended the one lock is, which
/// the SMP benchmark reports.
fn lock_machine(account: &mut CpuAccount) -> spin::MutexGuard<'static, Option<Machine>> {
    if let Some(guard) = MACHINE.try_lock() {
        return guard;
    }
    account.lock_waits += 1;
    MACHINE.lock()
}

/// A guest ended: reported (lines printed, frames freed), and started
/// again if its command line says so, without holding up the other CPUs.
fn end_of_life(cpu: CpuId, slot: Box<Slot>, port_stats: Option<String>) {
    // A guest is known by its first vCPU, whose place a new life takes.
    let vcpu = VcpuId::new(slot.vcpu.guest, 0);
    let as_expected = super::report_end(*slot, port_stats);
    let relaunch = MACHINE
        .lock()
        .as_mut()
        .and_then(|machine| machine.guest_reported(cpu, vcpu, as_expected));
    if let Some(job) = relaunch {
        let started = job.starter.start_again(&job.relaunch, job.vcpu);
        if let Some(machine) = MACHINE.lock().as_mut() {
            machine.guest_restarted(cpu, job.vcpu, started);
        }
    }
}

/// One turn of the vCPU in `slot` on this CPU: its state handed to the
/// CPU, the turn run (watched by the benchmark's events with `bench=on`),
/// its state taken back, and the turn counted.
fn take_turn(
    cpu: CpuId,
    slot: &mut Slot,
    turn: Turn<'_>,
    switcher: &mut CpuSwitcher,
    services: &mut Services,
    account: &mut CpuAccount,
) -> Next {
    let shared = Arc::clone(&slot.guest);
    let mut guest = shared.guest.lock();
    guest.activate(slot.index);
    if switcher.begin_turn(&slot.cpu_state) {
        guest.cpu_tables_lost();
        account.state_loads += 1;
    }
    let vcpu = VcpuOnCpu {
        shared: &shared,
        index: slot.index,
        apic_id: apic::id(),
        started: core::cell::Cell::new(None),
    };
    let next = if crate::bench::enabled() {
        run_turn(guest, &vcpu, turn, &mut slot.host_shares, switcher, services)
    } else {
        run_turn(guest, &vcpu, turn, &mut NoEvents, switcher, services)
    };
    if let Some(started) = vcpu.started.take()
        && let Some(machine) = MACHINE.lock().as_mut()
    {
        machine.vcpus_started(cpu, slot, &started);
    }
    switcher.end_turn(&mut slot.cpu_state);
    account.turns += 1;
    account.guests_seen |= 1u64 << (slot.vcpu.guest % 64);
    next
}

/// The vCPU a turn runs, as the turn needs it: its guest (locked for each
/// exit if the guest may have several vCPUs, else for the whole turn), its
/// number, and this CPU's local APIC id (for the others' shoot-downs).
struct VcpuOnCpu<'g> {
    shared: &'g SharedGuest,
    index: usize,
    apic_id: u32,
    /// vCPUs the turn's exits started, to be placed after it.
    started: core::cell::Cell<Option<Vec<usize>>>,
}

impl<'g> VcpuOnCpu<'g> {
    /// The guest, locked, this vCPU the active one.
    fn lock(&self) -> spin::MutexGuard<'g, Guest<FrameGuestMemory>> {
        let mut guest = self.shared.guest.lock();
        guest.activate(self.index);
        guest
    }
}

/// What bounds one guest's turn on the CPU, and the timer that enforces it.
struct Turn<'t> {
    /// When the turn ends whatever the guest does (its slice ended with
    /// another guest waiting, another guest's timer is due, or the network
    /// wants polling).
    slice_end: Option<u64>,
    timer: &'t mut DeadlineTimer,
}

/// Runs one vCPU until its turn ends, it halts or its guest ends; charges
/// the CPU time it used to the guest's budget. `guest` comes locked; a
/// guest of several vCPUs is unlocked while this one is in it.
fn run_turn<'g, E: ExitEvents>(
    guest: spin::MutexGuard<'g, Guest<FrameGuestMemory>>,
    vcpu: &VcpuOnCpu<'g>,
    turn: Turn<'_>,
    events: &mut E,
    switcher: &mut CpuSwitcher,
    services: &mut Services,
) -> Next {
    let several = vcpu.shared.several;
    let mut frames = GuestFrames {
        guest: vcpu.shared,
        vcpu: vcpu.index,
    };
    let mut held = Some(guest);
    let mut started = services.now_ns();
    loop {
        let now = services.now_ns();
        let guest = held.get_or_insert_with(|| vcpu.lock());
        let Some(root) = guest.prepare_entry(&mut frames, switcher.guest_view(), now) else {
            events.turn_over();
            return Next::Ended;
        };
        if let Some((stack, gates)) = guest.take_cpu_tables() {
            switcher.set_direct_trap_stack(stack);
            for (vector, handler) in gates {
                switcher.set_direct_trap(vector, handler);
            }
        }
        let budget_end = started.saturating_add(guest.cpu_ns_left());
        let due = min_deadline(turn.slice_end, guest.timer_deadline())
            .map_or(budget_end, |d| d.min(budget_end));
        turn.timer.arm(due, now);
        if several {
            held = None;
            vcpu.shared.entering(vcpu.index, vcpu.apic_id);
        }
        events.entering();
        let cr2 = switcher.run(root);
        if several {
            vcpu.shared.left(vcpu.index);
        }
        let guest = held.get_or_insert_with(|| vcpu.lock());
        let exit = Exit::of(guest.regs(), cr2);
        events.exit(exit);
        if let Some(vector) = exit.host_interrupt() {
            interrupts::handle_host_interrupt(vector);
        }
        if exit == Exit::HostTimer {
            turn.timer.fired();
        }
        // Another vCPU's exit may have ended the guest while this one ran.
        let next = if several && guest.has_ended() {
            Next::Ended
        } else {
            guest.handle_exit(exit, &mut frames, services)
        };
        if several {
            let new = guest.take_started_vcpus();
            if !new.is_empty() {
                let mut all = vcpu.started.take().unwrap_or_default();
                all.extend(new);
                vcpu.started.set(Some(all));
            }
        }
        // Frames it sent end its turn too, so that the guest they are
        // for can answer while this one waits; and another CPU's
        // interrupt ends it, for there is something to pick.
        let sent_frames =
            exit == Exit::Hypercall(Some(Number::VirtioNotify)) && guest.has_outbound_frames();
        let kicked = exit == Exit::HostInterrupt(host_vector::RESCHEDULE);
        let turn_over = next != Next::Resume || exit == Exit::HostTimer || sent_frames || kicked;
        if !turn_over {
            continue;
        }
        // The time is charged when the turn ends, and at the host's timer
        // (which may be the budget's end).
        let now = services.now_ns();
        if guest.charge_cpu_time(now.saturating_sub(started)) == Next::Ended {
            events.turn_over();
            return Next::Ended;
        }
        started = now;
        if next != Next::Resume
            || turn.slice_end.is_some_and(|end| now >= end)
            || sent_frames
            || kicked
        {
            events.turn_over();
            return next;
        }
    }
}

/// The earlier of two optional deadlines.
pub(super) fn min_deadline(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// This CPU's one-shot timer, armed for an absolute deadline (host
/// nanoseconds). It writes the APIC only when the deadline changes or the
/// last one fired: a guest's hypercalls, faults and other exits, which
/// change nothing, cost no timer access.
struct DeadlineTimer {
    /// The deadline armed and not yet fired.
    armed: Option<u64>,
}

impl DeadlineTimer {
    fn new() -> Self {
        Self { armed: None }
    }

    /// Makes the timer fire at `deadline` (at once if it is not after
    /// `now`).
    fn arm(&mut self, deadline: u64, now: u64) {
        if self.armed == Some(deadline) {
            return;
        }
        apic::arm_timer(deadline.saturating_sub(now));
        self.armed = Some(deadline);
    }

    /// The timer has fired (or may have): the next `arm` writes the APIC.
    fn fired(&mut self) {
        self.armed = None;
    }
}

/// The longest a CPU sleeps with nothing to run and no timer it watches
/// due: it is woken by the scheduler's interrupt when work comes, so this
/// only bounds how long a mistake could keep it asleep.
const IDLE_LIMIT_NS: u64 = 1_000_000_000;

/// Sleeps until `first_due` (host nanoseconds), the scheduler's interrupt,
/// or another host interrupt.
fn idle_until(timer: &mut DeadlineTimer, first_due: Option<u64>, now: u64) {
    timer.arm(first_due.unwrap_or(now + IDLE_LIMIT_NS), now);
    // An interrupt sent while this CPU decided to sleep is pending, and
    // `sti; hlt` takes it at once: no wake-up is lost.
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
    timer.fired();
}
