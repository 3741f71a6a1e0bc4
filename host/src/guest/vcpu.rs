//! A guest's vCPUs: what each has of its own, and how a guest starts more.
//!
//! A guest has one vCPU from boot, and may start more, up to the count its
//! `guests=` entry gives (`:vcpus=N`), with the start-vCPU hypercall. What
//! they share is most of the guest: its memory, shadow tables (each vCPU
//! with its own roots, see [`crate::paging::vcpus`]), devices, console,
//! CPU budget and counters. What each has of its own is a [`Vcpu`]: its
//! registers (a register page each, in [`super::GuestRam`]), whether it
//! halted, its traps and kernel stack, its timer, and its shared page (its
//! virtual interrupt flag, pending interrupts, fault address and MMU ring).
//!
//! The host handles one exit of a guest at a time (the kernel holds the
//! guest's lock), and [`Guest::activate`] makes the exiting vCPU the
//! *active* one: its part is in [`Guest`]'s `vcpu` field, where every
//! exit handler finds it, and the others wait in `parked`. A guest of one
//! vCPU never parks anything, and pays nothing for the others.

use super::{Guest, GuestRam, GuestState, KillReason, TrapTarget};
use crate::addr::{GuestPhysAddr, GuestVirtAddr};
use crate::paging::ShadowFrames;
use alloc::boxed::Box;
use alloc::vec::Vec;
use guest_abi::boot::SHARED_PAGE_GPA;
use guest_abi::hypercall::Error;
use guest_abi::shared::offset as shared;
use switcher::{GuestRegs, selector};

/// What of a guest is one vCPU's own.
pub(super) struct Vcpu {
    /// Runnable or halted (the guest's end is the guest's, not here).
    pub state: GuestState,
    /// Where it wants each trap delivered.
    pub traps: Box<[Option<TrapTarget>; 256]>,
    /// Its kernel stack's top, once named.
    pub kernel_stack: Option<u64>,
    /// When its virtual timer is due (host nanoseconds).
    pub timer_deadline: Option<u64>,
    /// Set when a virtual interrupt is delivered, until an exit finds that
    /// the guest has ended it (`SharedPage::in_interrupt` cleared): the
    /// exits in between are the interrupt handler's. A host-side copy so
    /// that the common exit, outside any handler, reads no guest memory.
    pub in_interrupt_handler: bool,
    /// Set when the kernel stack changed: the kernel must copy it into the
    /// CPU's TSS before the next entry (a guest OS does so at every context
    /// switch, so it must stay cheap).
    pub stack_stale: bool,
    /// Set when a direct trap changed: the kernel must rewrite the CPU's
    /// IDT gates (rare).
    pub traps_stale: bool,
    /// Its shared page.
    pub shared_page: GuestPhysAddr,
    /// It halted with nothing that could wake it (another vCPU ran on):
    /// it sleeps until the guest ends.
    pub halted_for_good: bool,
}

impl Vcpu {
    /// The boot vCPU, with the shared page the boot contract names.
    pub fn boot() -> Self {
        Self::new(GuestPhysAddr::new(SHARED_PAGE_GPA), Box::new([None; 256]))
    }

    fn new(shared_page: GuestPhysAddr, traps: Box<[Option<TrapTarget>; 256]>) -> Self {
        Self {
            state: GuestState::Runnable,
            traps,
            kernel_stack: None,
            timer_deadline: None,
            in_interrupt_handler: false,
            stack_stale: true,
            traps_stale: true,
            shared_page,
            halted_for_good: false,
        }
    }
}

impl<M: GuestRam> Guest<M> {
    /// How many vCPUs it has started (1 until it starts more).
    pub fn vcpus(&self) -> usize {
        self.parked.len().max(1)
    }

    /// How many vCPUs it may have.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// The vCPU whose exits are being handled.
    pub fn active_vcpu(&self) -> usize {
        self.active_vcpu
    }

    /// Makes vCPU `vcpu` the active one: its registers, traps, timer,
    /// shared page and shadow roots are what the next calls act on. Free
    /// when it is already (always, for a guest of one vCPU).
    #[inline]
    pub fn activate(&mut self, vcpu: usize) {
        if vcpu != self.active_vcpu {
            self.switch_active(vcpu);
        }
    }

    fn switch_active(&mut self, vcpu: usize) {
        let Some(Some(incoming)) = self.parked.get_mut(vcpu).map(Option::take) else {
            return;
        };
        let outgoing = core::mem::replace(&mut self.vcpu, incoming);
        if let Some(place) = self.parked.get_mut(self.active_vcpu) {
            *place = Some(outgoing);
        }
        self.active_vcpu = vcpu;
        self.memory.select_vcpu(vcpu);
        // Checked when the vCPU started: always a page of guest memory.
        let _ = self.memory.select_shared_page(self.vcpu.shared_page);
        self.paging.activate(vcpu);
    }

    /// Whether a vCPU other than the active one may still run: started,
    /// and not asleep for good.
    pub(super) fn another_vcpu_awake(&self) -> bool {
        self.parked
            .iter()
            .flatten()
            .any(|vcpu| !vcpu.halted_for_good)
    }

    /// The send-IPI hypercall: virtual interrupt `vector` for vCPU
    /// `target` (see [`guest_abi::hypercall::Number::SendIpi`]). Another
    /// vCPU's interrupt goes into its own shared page; a halted one is
    /// woken, and the kernel is told (see [`Self::take_interrupted_vcpus`]).
    pub(super) fn send_ipi(&mut self, target: u64, vector: u64) -> Result<u64, Error> {
        let vector = u8::try_from(vector)
            .ok()
            .filter(|&v| guest_abi::shared::is_virtual_irq(v))
            .ok_or(Error::InvalidArgument)?;
        let target = usize::try_from(target).map_err(|_| Error::InvalidArgument)?;
        if target == self.active_vcpu {
            self.raise_irq(vector);
            return Ok(0);
        }
        let Some(Some(vcpu)) = self.parked.get_mut(target) else {
            return Err(Error::InvalidArgument);
        };
        let pending = vcpu
            .shared_page
            .checked_add(shared::IRQ_PENDING)
            .ok_or(Error::BadAddress)?;
        if vcpu.state == GuestState::Halted {
            vcpu.state = GuestState::Runnable;
            vcpu.halted_for_good = false;
        }
        let bit = 1u64 << (vector - guest_abi::shared::FIRST_VIRTUAL_IRQ);
        let was = self
            .memory
            .read_u64(pending)
            .map_err(|_| Error::BadAddress)?;
        self.memory
            .write_u64(pending, was | bit)
            .map_err(|_| Error::BadAddress)?;
        self.interrupted_vcpus |= 1u64 << target.min(63);
        Ok(0)
    }

    /// The vCPUs other vCPUs sent an interrupt since the last call (bit
    /// `k` for vCPU `k`): the kernel wakes those halted between turns, and
    /// makes those in the guest leave it once so that the interrupt goes
    /// in.
    pub fn take_interrupted_vcpus(&mut self) -> u64 {
        core::mem::take(&mut self.interrupted_vcpus)
    }

    /// The vCPUs started since the last call, for the kernel to schedule.
    pub fn take_started_vcpus(&mut self) -> Vec<usize> {
        core::mem::take(&mut self.started_vcpus)
    }

    /// The start-vCPU hypercall: vCPU `vcpu` starts at `entry` on `stack`,
    /// with `shared_page` its own (see
    /// [`guest_abi::hypercall::Number::StartVcpu`]).
    pub(super) fn start_vcpu<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vcpu: u64,
        entry: u64,
        stack: u64,
        shared_page: u64,
    ) -> Result<u64, Error> {
        let number = usize::try_from(vcpu).map_err(|_| Error::InvalidArgument)?;
        if number == 0 || number >= self.max_vcpus || number != self.vcpus() {
            // Out of range, already started, or not the next one: vCPUs
            // start in order, so that their numbers are dense.
            return Err(Error::InvalidArgument);
        }
        let in_kernel = |a: u64| {
            GuestVirtAddr::try_new(a).is_ok_and(|a| a.is_upper_half() && !a.in_switcher_slot())
        };
        if !in_kernel(entry) || !in_kernel(stack) {
            return Err(Error::BadAddress);
        }
        let page = GuestPhysAddr::new(shared_page);
        let taken = self.vcpu.shared_page == page
            || self.parked.iter().flatten().any(|v| v.shared_page == page);
        // Nor a top-level table a vCPU runs on: the host is about to zero it.
        let in_use = taken || self.paging.is_running_root(page);
        if !page.is_page_aligned() || page.as_u64() >= self.memory.size() || in_use {
            return Err(Error::BadAddress);
        }
        self.prepare_shared_page(page)?;
        if !self.memory.add_vcpu() {
            return Err(Error::TooLong);
        }
        let root = self.paging.current_guest_root();
        if let Err(e) = self.paging.add_vcpu(frames, number, root) {
            let _ = self.kill(KillReason::Paging(e));
            return Err(Error::TooLong);
        }
        if let Err(e) = self.paging.reserve_shared_page(shared_page) {
            let _ = self.kill(KillReason::Paging(e));
            return Err(Error::BadAddress);
        }
        if self.parked.is_empty() {
            self.parked.push(None);
        }
        self.parked
            .push(Some(Vcpu::new(page, self.vcpu.traps.clone())));
        self.started_vcpus.push(number);
        // Its first registers and its MMU ring are set as it, active.
        let caller = self.active_vcpu;
        self.activate(number);
        *self.regs_mut() = GuestRegs {
            rip: entry,
            rsp: stack,
            rdi: vcpu,
            cs: u64::from(selector::GUEST_KERNEL_CODE),
            ss: u64::from(selector::GUEST_KERNEL_DATA),
            rflags: super::RFLAGS_IF | super::RFLAGS_RESERVED,
            ..GuestRegs::default()
        };
        let ring = self
            .paging
            .register_ring(&mut self.memory, shared_page + shared::MMU_RING);
        self.activate(caller);
        match ring {
            Ok(()) => Ok(0),
            Err(e) => {
                let _ = self.kill(KillReason::Paging(e));
                Err(Error::BadAddress)
            }
        }
    }

    /// Zeroes a new vCPU's shared page, with its virtual interrupts off,
    /// and copies the clock into it from the boot vCPU's.
    fn prepare_shared_page(&mut self, page: GuestPhysAddr) -> Result<(), Error> {
        let boot_page = GuestPhysAddr::new(SHARED_PAGE_GPA);
        let mut clock = [0u64; 2];
        for (value, offset) in clock
            .iter_mut()
            .zip([shared::CLOCK_TSC_BASE, shared::CLOCK_NS_PER_CYCLE])
        {
            *value = self
                .memory
                .read_u64(boot_page.checked_add(offset).ok_or(Error::BadAddress)?)
                .map_err(|_| Error::BadAddress)?;
        }
        self.memory
            .write_bytes(page, &[0; 4096])
            .map_err(|_| Error::BadAddress)?;
        for (value, offset) in clock
            .into_iter()
            .zip([shared::CLOCK_TSC_BASE, shared::CLOCK_NS_PER_CYCLE])
        {
            let at = page.checked_add(offset).ok_or(Error::BadAddress)?;
            self.memory
                .write_u64(at, value)
                .map_err(|_| Error::BadAddress)?;
        }
        Ok(())
    }
}
