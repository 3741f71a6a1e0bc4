//! What the CPUs share while guests run: the scheduler, the guests, and the
//! network, behind one lock ([`MACHINE`]).
//!
//! Each guest has a [`Place`] here, by its number. A guest that is not in a
//! turn is *home*: its [`Slot`] sits in its place, and any CPU may deliver
//! frames to it, wake it, or show its counters. A guest in a turn is *away*:
//! the CPU running it has taken the slot out of the table and owns it
//! until the turn ends, so a guest is never on two CPUs at once, and the
//! borrow checker, not a convention, says so. What the others know of an
//! away guest is which CPU has it, so that they can send that CPU an
//! interrupt when something waits for the guest (frames for its network
//! card): the turn ends, the guest comes home, and the frames go in.
//!
//! Every CPU takes the lock at the edges of its turns only: to say how a
//! turn ended and pick the next in one hold, as the scheduler wants, and
//! (the boot CPU) to poll the network. Nothing inside a turn takes it, so
//! a guest's exits cost what they cost with one CPU.

use super::{Services, Slot};
use crate::apic;
use crate::hostnet::snapshot::GuestLine;
use crate::network::Network;
use alloc::boxed::Box;
use alloc::vec::Vec;
use host::guest::{GuestState, Next};
use host::net::PortId;
use host::sched::{CpuId, CpuSet, Decision, Outcome, Scheduler, VcpuId};

/// The guests' run, while it lasts: `None` before the boot CPU starts the
/// guests and after every CPU has left their run.
pub(super) static MACHINE: spin::Mutex<Option<Machine>> = spin::Mutex::new(None);

/// Where a guest is.
pub(super) struct Place {
    /// Its identity for the scheduler.
    pub vcpu: VcpuId,
    /// Its network card's port on the virtual switch.
    pub port: PortId,
    pub whereabouts: Whereabouts,
    /// Its counters-page line as its last turn ended, kept while the host
    /// serves that page (so that a guest away in a turn still has one).
    pub line: Option<GuestLine>,
}

pub(super) enum Whereabouts {
    /// Between turns: its slot is here.
    Home(Box<Slot>),
    /// In a turn on this CPU, which holds its slot.
    Away(CpuId),
    /// Ended and reported (or being reported).
    Gone,
}

/// What a CPU does next.
pub(super) enum Pick {
    /// Run this guest's turn until `until` (if any).
    Run { slot: Box<Slot>, until: Option<u64> },
    /// Halt until `until` (if any) or an interrupt.
    Idle { until: Option<u64> },
    /// Every guest has ended: leave the run.
    Over,
}

/// A CPU's account of its part in the run, printed when it is over.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CpuAccount {
    /// Guest turns it ran.
    pub turns: u64,
    /// Host nanoseconds it spent in those turns.
    pub busy_ns: u64,
    /// Times it halted with nothing to run.
    pub halts: u64,
    /// Turns that put the guest's state into this CPU: another guest ran
    /// here since its last turn, it last ran on another CPU, or never ran.
    pub state_loads: u64,
    /// Which guests it ran (guest numbers below 64; more are not told
    /// apart, see [`Self::guests`]).
    pub guests_seen: u64,
}

impl CpuAccount {
    /// How many guests it ran.
    pub fn guests(&self) -> u32 {
        self.guests_seen.count_ones()
    }
}

/// Everything the CPUs share while guests run.
pub(super) struct Machine {
    pub sched: Scheduler,
    pub places: Vec<Place>,
    pub network: Network,
    /// The clock and console every CPU's loop uses (a copy each).
    pub services: Services,
    /// The local APIC id of each CPU the scheduler shares out, by its
    /// [`CpuId`], and the kernel's index of that CPU (`crate::smp`).
    pub apic_ids: Vec<u32>,
    pub kernel_indices: Vec<usize>,
    /// Guests not yet ended and reported.
    pub guests_left: usize,
    /// CPUs inside the run (the boot CPU waits for none to be left).
    pub cpus_in_run: usize,
    /// Whether the CPUs may pick (see `super::start_when_all_joined`).
    pub started: bool,
    /// Whether every guest so far ended as expected.
    pub all_as_expected: bool,
    /// Each CPU's account, written as it leaves the run.
    pub accounts: Vec<CpuAccount>,
}

impl Machine {
    /// The scheduler's id of the CPU the kernel numbers `kernel_index`,
    /// if the scheduler shares out that CPU.
    pub fn cpu_id(&self, kernel_index: usize) -> Option<CpuId> {
        self.kernel_indices
            .iter()
            .position(|&i| i == kernel_index)
            .map(CpuId)
    }

    /// Sends the scheduler's interrupt to each CPU of `kicks` but `me`.
    pub fn kick(&self, kicks: CpuSet, me: CpuId) {
        for cpu in kicks.iter().filter(|&cpu| cpu != me) {
            apic::send_reschedule(self.apic_ids[cpu.index()]);
        }
    }

    /// Sends the scheduler's interrupt to every CPU but `me`.
    pub fn kick_all(&self, me: CpuId) {
        for (index, &apic_id) in self.apic_ids.iter().enumerate() {
            if index != me.index() {
                apic::send_reschedule(apic_id);
            }
        }
    }

    /// What `cpu` does next, at `now`: the scheduler's pick, with its
    /// kicks sent, and the picked guest's slot taken out of its place.
    pub fn pick(&mut self, cpu: CpuId, now: u64) -> Pick {
        loop {
            if self.guests_left == 0 {
                return Pick::Over;
            }
            let (vcpu, until) = match self.sched.pick(cpu, now) {
                Decision::Idle { until, kicks } => {
                    self.kick(kicks, cpu);
                    return Pick::Idle { until };
                }
                Decision::Run { vcpu, until, kicks } => {
                    self.kick(kicks, cpu);
                    (vcpu, until)
                }
            };
            let Some(place) = self.places.iter_mut().find(|p| p.vcpu == vcpu) else {
                // Not one of ours (cannot happen: every place's vCPU is
                // added once and ended with it): let the scheduler forget it.
                let _ = self.sched.turn_ended(cpu, vcpu, now, Outcome::Ended);
                continue;
            };
            let Whereabouts::Home(mut slot) =
                core::mem::replace(&mut place.whereabouts, Whereabouts::Away(cpu))
            else {
                // The scheduler hands out only vCPUs it knows as waiting,
                // which are home; should it ever not, the guest stays
                // where it is and the scheduler forgets nothing it has.
                log::error!("scheduler picked {vcpu:?}, which is not home");
                let _ = self
                    .sched
                    .turn_ended(cpu, vcpu, now, Outcome::Runnable { timer: None });
                continue;
            };
            if slot.guest.poll(now) {
                return Pick::Run { slot, until };
            }
            // Picked for a timer that woke nothing the guest can run for.
            let timer = slot.guest.timer_deadline();
            place.whereabouts = Whereabouts::Home(slot);
            let _ = self
                .sched
                .turn_ended(cpu, vcpu, now, Outcome::Halted { timer });
        }
    }

    /// Takes back the slot of a guest whose turn on `cpu` ended with
    /// `next`: the scheduler told, the frames it sent switched and every
    /// waiting frame delivered. A guest that ended is returned, to be
    /// reported outside the lock ([`super::report_end`]); its port is off
    /// the switch, its place gone.
    pub fn turn_ended(
        &mut self,
        cpu: CpuId,
        mut slot: Box<Slot>,
        next: Next,
        now: u64,
    ) -> Option<(Box<Slot>, Option<alloc::string::String>)> {
        let Some(at) = self.places.iter().position(|p| p.vcpu == slot.vcpu) else {
            log::error!("a turn ended for {:?}, which has no place", slot.vcpu);
            return None;
        };
        let timer = slot.guest.timer_deadline();
        let outcome = match next {
            Next::Resume => Outcome::Runnable { timer },
            Next::Halted => Outcome::Halted { timer },
            Next::Ended => Outcome::Ended,
        };
        let _ = self.sched.turn_ended(cpu, slot.vcpu, now, outcome);
        let port = self.places[at].port;
        self.network
            .sent_by_guest(port, slot.guest.take_outbound_frames());
        if self.network.needs_polling() {
            self.places[at].line = Some(slot.line());
        }
        let ended = if next == Next::Ended {
            self.places[at].whereabouts = Whereabouts::Gone;
            let stats = self.network.remove_guest(port);
            Some((slot, stats))
        } else {
            self.places[at].whereabouts = Whereabouts::Home(slot);
            None
        };
        self.deliver_frames(cpu);
        ended
    }

    /// Hands every guest at home the frames waiting on its port, waking
    /// those they wake (with an interrupt to the CPU that should run them),
    /// and sends an interrupt to each CPU running a guest that has frames
    /// waiting, so that its turn ends and they go in.
    pub fn deliver_frames(&mut self, me: CpuId) {
        if !self.network.has_frames_waiting() {
            return;
        }
        for at in 0..self.places.len() {
            let place = &mut self.places[at];
            let port = place.port;
            match &mut place.whereabouts {
                Whereabouts::Home(slot) => {
                    let was_halted = *slot.guest.state() == GuestState::Halted;
                    self.network
                        .deliver_to_guest(port, |frames| slot.guest.receive_frames(frames));
                    if was_halted && *slot.guest.state() == GuestState::Runnable {
                        let vcpu = slot.vcpu;
                        if let Some(kick) = self.sched.wake(vcpu) {
                            let mut kicks = CpuSet::EMPTY;
                            kicks.insert(kick);
                            self.kick(kicks, me);
                        }
                    }
                }
                Whereabouts::Away(cpu) => {
                    let cpu = *cpu;
                    if cpu != me && self.network.has_frames_for(port) {
                        apic::send_reschedule(self.apic_ids[cpu.index()]);
                    }
                }
                Whereabouts::Gone => {}
            }
        }
    }

    /// One round of the network's outside world (the uplink, the host's
    /// interface), and the frames it brought delivered.
    pub fn poll_network(&mut self, me: CpuId, now: u64) {
        let places = &mut self.places;
        self.network.poll(now, || guest_lines(places));
        self.deliver_frames(me);
    }

    /// A guest ended and was reported; `as_expected` says whether it
    /// ended as its command line expected. The last one ends the run, and
    /// every other CPU is told to leave it.
    pub fn guest_reported(&mut self, me: CpuId, as_expected: bool) {
        self.all_as_expected &= as_expected;
        self.guests_left -= 1;
        if self.guests_left == 0 {
            self.kick_all(me);
        }
    }
}

/// The guests' lines of the counters page: those at home as they are now,
/// those away as their last turn left them (turns last at most
/// [`crate::network::POLL_NS`] while the page is served).
fn guest_lines(places: &mut [Place]) -> Vec<GuestLine> {
    places
        .iter_mut()
        .filter_map(|place| match &mut place.whereabouts {
            Whereabouts::Home(slot) => Some(slot.line()),
            Whereabouts::Away(_) => place.line.clone(),
            Whereabouts::Gone => None,
        })
        .collect()
}
