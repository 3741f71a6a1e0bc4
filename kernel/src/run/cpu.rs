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
//! A turn holds its guest's own lock ([`Hold`]): a guest of one vCPU for
//! the whole turn, so its exits cost what they did before there were
//! vCPUs; a guest of several from each exit to the next entry, so that its
//! other vCPUs run meanwhile on other CPUs ([`super::vcpus`]).
//!
//! The host's timer on each CPU is one-shot ([`DeadlineTimer`]): armed for
//! the first moment something is due (the turn's end, the guest's own
//! timer, the end of its budget), so a guest computing alone is not
//! interrupted at all.

use super::machine::{CpuAccount, MACHINE, Machine, Pick};
use super::vcpus::{GuestFrames, SharedGuest};
use super::{FrameGuestMemory, HostFrames, Services, Slot};
use crate::network;
use crate::switcher::CpuSwitcher;
use crate::{apic, interrupts};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use guest_abi::hypercall::{Number, host_vector};
use host::guest::{Exit, ExitEvents, Guest, HostServices, Next, NoEvents};
use host::paging::ShadowFrames;
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
/// CPU, the turn run (watched by the benchmark's events with `bench=exits`),
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
    let next = if shared.several {
        // Locked for each exit, so the guest's other vCPUs run meanwhile.
        let mut hold = PerExit {
            shared: &shared,
            index: slot.index,
            apic_id: apic::id(),
            guard: Some(guest),
            cpu,
            first: VcpuId::new(slot.vcpu.guest, 0),
            expect: slot.expect,
        };
        let frames = GuestFrames {
            guest: &shared,
            vcpu: slot.index,
        };
        let next = run_turn_watched(
            &mut hold,
            frames,
            turn,
            &mut slot.host_shares,
            switcher,
            services,
        );
        hold.release();
        next
    } else {
        // Locked for the whole turn: nobody else wants it.
        run_turn_watched(
            &mut WholeTurn(&mut guest),
            HostFrames,
            turn,
            &mut slot.host_shares,
            switcher,
            services,
        )
    };
    switcher.end_turn(&mut slot.cpu_state);
    account.turns += 1;
    account.guests_seen |= 1u64 << (slot.vcpu.guest % 64);
    next
}

/// [`run_turn`], watched by the benchmark's events when `bench=exits`.
fn run_turn_watched<H: Hold, F: ShadowFrames>(
    hold: &mut H,
    frames: F,
    turn: Turn<'_>,
    host_shares: &mut crate::bench::HostShares,
    switcher: &mut CpuSwitcher,
    services: &mut Services,
) -> Next {
    if crate::bench::enabled() {
        run_turn(hold, frames, turn, host_shares, switcher, services)
    } else {
        run_turn(hold, frames, turn, &mut NoEvents, switcher, services)
    }
}

/// How a turn holds its guest between the vCPU's exits.
trait Hold {
    /// Whether other vCPUs of the guest may run meanwhile.
    const SHARED: bool;
    /// The guest, this vCPU the active one (locked if it was not).
    fn guest(&mut self) -> &mut Guest<FrameGuestMemory>;
    /// The vCPU is about to enter the guest.
    fn entering(&mut self);
    /// The vCPU has left the guest.
    fn left(&mut self);
}

/// A guest of one vCPU, locked for the whole turn.
struct WholeTurn<'t, 'g>(&'t mut spin::MutexGuard<'g, Guest<FrameGuestMemory>>);

impl Hold for WholeTurn<'_, '_> {
    const SHARED: bool = false;

    #[inline(always)]
    fn guest(&mut self) -> &mut Guest<FrameGuestMemory> {
        self.0
    }

    #[inline(always)]
    fn entering(&mut self) {}

    #[inline(always)]
    fn left(&mut self) {}
}

/// A vCPU of a guest of several, locked from its exit to its next entry.
struct PerExit<'g> {
    shared: &'g Arc<SharedGuest>,
    index: usize,
    /// This CPU's local APIC id (for the others' shoot-downs).
    apic_id: u32,
    guard: Option<spin::MutexGuard<'g, Guest<FrameGuestMemory>>>,
    /// For the vCPUs its exits start: this CPU, the guest's first vCPU
    /// and its expected end.
    cpu: CpuId,
    first: VcpuId,
    expect: host::config::Expect,
}

impl PerExit<'_> {
    /// Unlocks the guest; the vCPUs the exits since the last unlock
    /// started go to the scheduler, and those they sent an interrupt are
    /// woken (after the guest's lock, before the machine's), so that
    /// another CPU may run them at once.
    fn release(&mut self) {
        let Some(mut guest) = self.guard.take() else {
            return;
        };
        let started = guest.take_started_vcpus();
        let interrupted = guest.take_interrupted_vcpus();
        drop(guest);
        if started.is_empty() && interrupted == 0 {
            return;
        }
        // Those in the guest leave it once, and take the interrupt at their
        // next entry; those halted between turns are woken.
        self.shared.kick(interrupted);
        if let Some(machine) = MACHINE.lock().as_mut() {
            machine.vcpus_started(self.cpu, self.shared, self.first, self.expect, &started);
            machine.wake_vcpus(self.cpu, self.first, interrupted);
        }
    }
}

impl Hold for PerExit<'_> {
    const SHARED: bool = true;

    fn guest(&mut self) -> &mut Guest<FrameGuestMemory> {
        let (shared, index) = (self.shared, self.index);
        self.guard.get_or_insert_with(|| {
            let mut guest = shared.guest.lock();
            guest.activate(index);
            guest
        })
    }

    fn entering(&mut self) {
        self.release();
        self.shared.entering(self.index, self.apic_id);
    }

    fn left(&mut self) {
        self.shared.left(self.index);
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
/// the CPU time it used to the guest's budget.
fn run_turn<H: Hold, F: ShadowFrames, E: ExitEvents>(
    hold: &mut H,
    mut frames: F,
    turn: Turn<'_>,
    events: &mut E,
    switcher: &mut CpuSwitcher,
    services: &mut Services,
) -> Next {
    let mut started = services.now_ns();
    loop {
        let now = services.now_ns();
        let guest = hold.guest();
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
        // The vCPUs of a guest spend one budget, each perhaps at once on
        // a CPU of its own: each may use its share of what is left before
        // its time is charged, so that together they cannot overrun it.
        let left = if H::SHARED {
            guest.cpu_ns_left() / guest.vcpus() as u64
        } else {
            guest.cpu_ns_left()
        };
        let budget_end = started.saturating_add(left);
        let due = min_deadline(turn.slice_end, guest.timer_deadline())
            .map_or(budget_end, |d| d.min(budget_end));
        turn.timer.arm(due, now);
        hold.entering();
        events.entering();
        let cr2 = switcher.run(root);
        hold.left();
        let guest = hold.guest();
        let exit = Exit::of(guest.regs(), cr2);
        events.exit(exit);
        if let Some(vector) = exit.host_interrupt() {
            interrupts::handle_host_interrupt(vector);
        }
        if exit == Exit::HostTimer {
            turn.timer.fired();
        }
        // Another vCPU's exit may have ended the guest while this one ran.
        let next = if H::SHARED && guest.has_ended() {
            Next::Ended
        } else {
            guest.handle_exit(exit, &mut frames, services)
        };
        // Frames it sent end its turn too, so that the guest they are
        // for can answer while this one waits; and another CPU's
        // interrupt ends it, for there is something to pick.
        let sent_frames =
            exit == Exit::Hypercall(Some(Number::VirtioNotify)) && guest.has_outbound_frames();
        // So does starting or interrupting another vCPU (only a guest of
        // several can): with it waiting, the scheduler slices the turns,
        // and on one CPU it gets its share.
        let kicked = exit == Exit::HostInterrupt(host_vector::RESCHEDULE)
            || (H::SHARED
                && matches!(
                    exit,
                    Exit::Hypercall(Some(Number::StartVcpu | Number::SendIpi))
                ));
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
