//! What the CPUs share while guests run: the scheduler, the guests, and the
//! network, behind one lock ([`MACHINE`]).
//!
//! Each vCPU has a [`Place`] here (a guest of one vCPU, one place). A vCPU
//! that is not in a turn is *home*: its [`Slot`] sits in its place, and any
//! CPU may deliver frames to it, wake it, or show its counters. A vCPU in a
//! turn is *away*: the CPU running it has taken the slot out of the table
//! and owns it until the turn ends, so a vCPU is never on two CPUs at
//! once, and the borrow checker, not a convention, says so. (The vCPUs of
//! one guest share the guest itself behind its own lock, see
//! [`super::vcpus`].) What the others know of an
//! away guest is which CPU has it, so that they can send that CPU an
//! interrupt when something waits for the guest (frames for its network
//! card): the turn ends, the guest comes home, and the frames go in.
//!
//! Every CPU takes the lock at the edges of its turns only: to say how a
//! turn ended and pick the next in one hold, as the scheduler wants, and
//! (the boot CPU) to poll the network. Nothing inside a turn takes it, so
//! a guest's exits cost what they cost with one CPU.

use super::vcpus::SharedGuest;
use super::{RunError, Services, Slot, Starter};
use crate::apic;
use crate::hostnet::snapshot::GuestLine;
use crate::network::Network;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use host::config::{Expect, GuestSpec, Restart};
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
    /// How to start it again when it ends, if its command line says so.
    pub relaunch: Option<Relaunch>,
}

/// What starting a guest again takes: its command-line entry, owned (the
/// command line is not kept), its number (for its MAC), and the lives it
/// has left.
#[derive(Clone, Debug)]
pub(super) struct Relaunch {
    pub image: String,
    pub arg: String,
    pub expect: Expect,
    /// Restarts still allowed.
    pub left: Restart,
    /// Its number among the guests.
    pub index: usize,
    /// Restarts so far.
    pub restarts: u32,
    /// The vCPUs it may have.
    pub vcpus: u16,
}

impl Relaunch {
    /// The relaunch of guest `index` from `spec`, if it asks for one.
    pub fn of(spec: &GuestSpec<'_>, index: usize) -> Option<Self> {
        (spec.restart != Restart::Never).then(|| Self {
            image: String::from(spec.image),
            arg: String::from(spec.arg),
            expect: spec.expect,
            left: spec.restart,
            index,
            restarts: 0,
            vcpus: spec.vcpus,
        })
    }

    /// Whether another life is allowed.
    fn has_another_life(&self) -> bool {
        self.left.allows_another()
    }

    /// Which restart the last was: `restart 2 of 3`, or `restart 2` for a
    /// guest restarted every time.
    fn which(&self) -> String {
        match self.left {
            Restart::Times(left) => alloc::format!(
                "restart {} of {}",
                self.restarts,
                self.restarts.saturating_add(left)
            ),
            Restart::Always | Restart::Never => alloc::format!("restart {}", self.restarts),
        }
    }

    /// Takes one of the lives left, if there is one.
    fn take_life(&mut self) -> bool {
        let taken = self.left.take_one();
        self.restarts += u32::from(taken);
        taken
    }
}

/// A guest to start again, outside the lock (loading an image takes a
/// while).
pub(super) struct RelaunchJob {
    pub relaunch: Relaunch,
    pub vcpu: VcpuId,
    pub starter: Starter,
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
    /// Turn edges at which another CPU held the machine's lock.
    pub lock_waits: u64,
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
    /// For the guests started again.
    pub starter: Starter,
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
            let Whereabouts::Home(slot) =
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
            let (runnable, timer) = {
                let mut guest = slot.lock();
                (guest.poll(now), guest.timer_deadline())
            };
            if runnable {
                return Pick::Run { slot, until };
            }
            // Picked for a timer that woke nothing the guest can run for.
            // (A vCPU whose guest ended meanwhile is stopped when its
            // guest's last turn ends: it waits, halted, until then.)
            place.whereabouts = Whereabouts::Home(slot);
            let _ = self
                .sched
                .turn_ended(cpu, vcpu, now, Outcome::Halted { timer });
        }
    }

    /// Takes back the slot of a vCPU whose turn on `cpu` ended with `next`:
    /// the scheduler told, the frames its guest sent switched and every
    /// waiting frame delivered. When a guest has ended, its other vCPUs
    /// are stopped (those at home at once, those away told to leave their
    /// turns), and the slot of the last to stop is returned, to be
    /// reported outside the lock ([`super::report_end`]); its port is off
    /// the switch, its places gone.
    pub fn turn_ended(
        &mut self,
        cpu: CpuId,
        slot: Box<Slot>,
        next: Next,
        now: u64,
    ) -> Option<(Box<Slot>, Option<alloc::string::String>)> {
        let Some(at) = self.places.iter().position(|p| p.vcpu == slot.vcpu) else {
            log::error!("a turn ended for {:?}, which has no place", slot.vcpu);
            return None;
        };
        let mut slot = slot;
        let port = self.places[at].port;
        let (timer, ended) = {
            let mut guest = slot.lock();
            self.network
                .sent_by_guest(port, guest.take_outbound_frames());
            (guest.timer_deadline(), guest.has_ended())
        };
        // Another vCPU may have ended the guest since this one's last exit
        // (this one halted, say, while the other shut down): it stops too,
        // and if it is the last to, the guest is reported.
        let next = if ended { Next::Ended } else { next };
        let outcome = match next {
            Next::Resume => Outcome::Runnable { timer },
            Next::Halted => Outcome::Halted { timer },
            Next::Ended => Outcome::Ended,
        };
        let _ = self.sched.turn_ended(cpu, slot.vcpu, now, outcome);
        if self.network.needs_polling() && slot.index == 0 {
            self.places[at].line = Some(slot.line());
        }
        let ended = if next == Next::Ended {
            self.places[at].whereabouts = Whereabouts::Gone;
            self.last_vcpu_stopped(slot)
        } else {
            self.places[at].whereabouts = Whereabouts::Home(slot);
            None
        };
        self.deliver_frames(cpu);
        ended
    }

    /// A vCPU of a guest that ended has stopped (its place is gone): the
    /// guest's other vCPUs at home stop too, those away are told to leave
    /// their turns. Returns the slot to report if no vCPU of the guest is
    /// left in a turn, with its port's last line if it will not live again.
    fn last_vcpu_stopped(
        &mut self,
        slot: Box<Slot>,
    ) -> Option<(Box<Slot>, Option<alloc::string::String>)> {
        let guest = slot.vcpu.guest;
        let mut still_away = false;
        for place in self.places.iter_mut().filter(|p| p.vcpu.guest == guest) {
            match place.whereabouts {
                Whereabouts::Home(_) => {
                    let _ = self.sched.remove(place.vcpu);
                    // Its slot goes: the guest is the last slot's to report.
                    place.whereabouts = Whereabouts::Gone;
                }
                Whereabouts::Away(cpu) => {
                    still_away = true;
                    apic::send_reschedule(self.apic_ids[cpu.index()]);
                }
                Whereabouts::Gone => {}
            }
        }
        if still_away {
            return None;
        }
        // Every vCPU has stopped: the places of the vCPUs it started go
        // (a new life starts with one), and vCPU 0's stays for a new life.
        self.places
            .retain(|p| p.vcpu.guest != guest || p.vcpu.index == 0);
        let first = self
            .places
            .iter()
            .find(|p| p.vcpu == VcpuId::new(guest, 0))?;
        let port = first.port;
        // A guest that will live again keeps its port, and its frames.
        let again = first
            .relaunch
            .as_ref()
            .is_some_and(Relaunch::has_another_life);
        let stats = if again {
            None
        } else {
            self.network.remove_guest(port)
        };
        Some((slot, stats))
    }

    /// vCPUs `numbers` of `guest` (whose first vCPU is `first`) have
    /// started, on `me`: each gets a place, at home, and goes to the
    /// scheduler, which may send an idle CPU for it at once.
    pub fn vcpus_started(
        &mut self,
        me: CpuId,
        guest: &Arc<SharedGuest>,
        first: VcpuId,
        expect: Expect,
        numbers: &[usize],
    ) {
        let port = self.places.iter().find(|p| p.vcpu == first).map(|p| p.port);
        let Some(port) = port else {
            return;
        };
        for &number in numbers {
            let Some(slot) = Slot::for_vcpu(guest, first, number, expect) else {
                log::error!("vCPU {number} of {first:?} has no register page");
                continue;
            };
            let vcpu = slot.vcpu;
            self.places.push(Place {
                vcpu,
                port,
                whereabouts: Whereabouts::Home(Box::new(slot)),
                line: None,
                relaunch: None,
            });
            if let Ok(Some(kick)) = self.sched.add(vcpu) {
                let mut kicks = CpuSet::EMPTY;
                kicks.insert(kick);
                self.kick(kicks, me);
            }
        }
    }

    /// vCPUs `vcpus` (bit `k` for vCPU `k`) of the guest whose first vCPU
    /// is `first` were sent an interrupt by another: the scheduler wakes
    /// those halted (sending a CPU for them if none is awake to take
    /// them).
    pub fn wake_vcpus(&mut self, me: CpuId, first: VcpuId, vcpus: u64) {
        let mut kicks = CpuSet::EMPTY;
        for k in (0..64u16).filter(|k| vcpus & (1 << k) != 0) {
            if let Some(cpu) = self.sched.wake(VcpuId::new(first.guest, k)) {
                kicks.insert(cpu);
            }
        }
        self.kick(kicks, me);
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
            // Received frames go to vCPU 0, whose interrupt they raise.
            if place.vcpu.index != 0 {
                continue;
            }
            match &mut place.whereabouts {
                Whereabouts::Home(slot) => {
                    let mut guest = slot.lock();
                    let was_halted = *guest.state() == GuestState::Halted;
                    self.network
                        .deliver_to_guest(port, |frames| guest.receive_frames(frames));
                    let woken = was_halted && *guest.state() == GuestState::Runnable;
                    drop(guest);
                    if woken {
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

    /// Guest `vcpu` ended and was reported; `as_expected` says whether it
    /// ended as its command line expected. Returns what starting it again
    /// takes, if its command line asks for another life; otherwise it is
    /// gone, and the last guest gone ends the run (every other CPU is told
    /// to leave it).
    pub fn guest_reported(
        &mut self,
        me: CpuId,
        vcpu: VcpuId,
        as_expected: bool,
    ) -> Option<RelaunchJob> {
        self.all_as_expected &= as_expected;
        let place = self.places.iter_mut().find(|p| p.vcpu == vcpu);
        if let Some(relaunch) = place.and_then(|p| p.relaunch.as_mut())
            && relaunch.take_life()
        {
            return Some(RelaunchJob {
                relaunch: relaunch.clone(),
                vcpu,
                starter: self.starter,
            });
        }
        self.guest_gone(me);
        None
    }

    /// A guest started again (`started`: its new slot, or why it could not
    /// be) goes home and to the scheduler; one that could not start is
    /// gone.
    pub fn guest_restarted(&mut self, me: CpuId, vcpu: VcpuId, started: Result<Slot, RunError>) {
        let Some(place) = self.places.iter_mut().find(|p| p.vcpu == vcpu) else {
            return;
        };
        let which = place
            .relaunch
            .as_ref()
            .map_or(String::new(), Relaunch::which);
        match started {
            Ok(slot) => {
                println!("guest {} restarted ({which})", slot.lock().name);
                place.whereabouts = Whereabouts::Home(Box::new(slot));
                if let Ok(Some(kick)) = self.sched.add(vcpu) {
                    let mut kicks = CpuSet::EMPTY;
                    kicks.insert(kick);
                    self.kick(kicks, me);
                }
            }
            Err(e) => {
                let name = place.relaunch.as_ref().map_or("?", |r| r.image.as_str());
                println!("guest {name} could not be restarted: {e}");
                let port = place.port;
                self.network.remove_guest(port);
                self.all_as_expected = false;
                self.guest_gone(me);
            }
        }
    }

    /// One guest fewer; the last ends the run.
    fn guest_gone(&mut self, me: CpuId) {
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
        .filter(|place| place.vcpu.index == 0)
        .filter_map(|place| match &mut place.whereabouts {
            Whereabouts::Home(slot) => Some(slot.line()),
            Whereabouts::Away(_) => place.line.clone(),
            Whereabouts::Gone => None,
        })
        .collect()
}
