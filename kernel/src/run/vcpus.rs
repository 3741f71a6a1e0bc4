//! A guest shared by its vCPUs, and the shoot-down between them.
//!
//! Each vCPU of a guest has a slot of its own ([`super::Slot`]) that the
//! CPUs hand around as they do a guest of one vCPU; the guest itself,
//! [`host::guest::Guest`], is behind a lock in a [`SharedGuest`] that
//! every slot of it holds. A CPU running a vCPU's turn takes the lock for
//! each exit it handles (and the entry that follows), never while the
//! vCPU is in the guest, so the guest's other vCPUs run at the same time
//! on other CPUs. A guest of one vCPU is locked once for its whole turn:
//! its exits cost what they did before there were vCPUs.
//!
//! Lock order: the machine's lock before a guest's; no CPU takes the
//! machine's lock while it holds a guest's.
//!
//! **The shoot-down.** Each vCPU counts its passes into and out of the
//! guest (`passes`: odd while it is in the guest) and says which CPU runs
//! it. When an exit dropped a shadow entry another vCPU may still hold in
//! its TLB ([`host::paging::vcpus`]), [`GuestFrames::shoot_down`] sends
//! each other vCPU that is in the guest the shoot-down interrupt
//! ([`guest_abi::hypercall::host_vector::SHOOTDOWN`]) and waits until its
//! count has moved: it left the guest (its CPU loaded the host's CR3), and
//! its next entry loads the shadow root afresh, so nothing it uses is
//! older than the tables now. The interrupted turn goes on.

use super::{FrameGuestMemory, HostFrames};
use crate::apic;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use host::addr::HostPhysAddr;
use host::config::MAX_GUEST_VCPUS;
use host::guest::Guest;
use host::paging::{ShadowFrames, TableIndex};

/// A guest, as all its vCPUs' slots hold it.
pub(super) struct SharedGuest {
    pub guest: spin::Mutex<Guest<FrameGuestMemory>>,
    /// Whether it may have more than one vCPU: then its lock is taken per
    /// exit, and its vCPUs' passes are counted.
    pub several: bool,
    vcpus: [VcpuRun; MAX_GUEST_VCPUS as usize],
}

/// Where one vCPU is, for the others' shoot-downs.
#[derive(Default)]
struct VcpuRun {
    /// Entries plus exits: odd while the vCPU is in the guest.
    passes: AtomicU64,
    /// The local APIC id of the CPU that runs it (or ran it last).
    apic_id: AtomicU32,
}

impl SharedGuest {
    pub fn new(guest: Guest<FrameGuestMemory>) -> Self {
        Self {
            several: guest.max_vcpus() > 1,
            guest: spin::Mutex::new(guest),
            vcpus: core::array::from_fn(|_| VcpuRun::default()),
        }
    }

    /// vCPU `vcpu` is about to enter the guest on the CPU with local APIC
    /// id `apic_id`.
    #[inline]
    pub fn entering(&self, vcpu: usize, apic_id: u32) {
        if let Some(run) = self.vcpus.get(vcpu) {
            run.apic_id.store(apic_id, Ordering::Relaxed);
            run.passes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// vCPU `vcpu` has left the guest.
    #[inline]
    pub fn left(&self, vcpu: usize) {
        if let Some(run) = self.vcpus.get(vcpu) {
            run.passes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes each vCPU of `vcpus` (bit `k` for vCPU `k`) that is in the
    /// guest leave it once, without waiting: another vCPU sent it an
    /// interrupt, which goes in at its next entry.
    pub fn kick(&self, vcpus: u64) {
        for (vcpu, run) in self.vcpus.iter().enumerate() {
            if vcpus & (1 << vcpu) != 0 && run.passes.load(Ordering::SeqCst) % 2 == 1 {
                apic::send_shootdown(run.apic_id.load(Ordering::Relaxed));
            }
        }
    }

    /// Interrupts each vCPU of `vcpus` (bit `k` for vCPU `k`) but `me`
    /// that is in the guest, and waits until each has left it once.
    /// Returns how many it waited for.
    fn shoot_down(&self, me: usize, vcpus: u64) -> u32 {
        // The shadow tables were written before this: the counts must be
        // read after those writes are visible (x86 may move a load before
        // an earlier store).
        fence(Ordering::SeqCst);
        let mut waited = 0;
        for (vcpu, run) in self.vcpus.iter().enumerate() {
            if vcpu == me || vcpus & (1 << vcpu) == 0 {
                continue;
            }
            let passes = run.passes.load(Ordering::SeqCst);
            if passes % 2 == 0 {
                continue;
            }
            apic::send_shootdown(run.apic_id.load(Ordering::Relaxed));
            // The vCPU is in the guest with interrupts on (a guest never
            // runs with them off): the interrupt takes it out at once.
            while run.passes.load(Ordering::SeqCst) == passes {
                core::hint::spin_loop();
            }
            waited += 1;
        }
        waited
    }
}

/// Shadow-table frames for an exit of vCPU `vcpu` of `guest`: the frame
/// allocator's, and the shoot-down of the guest's other vCPUs.
pub(super) struct GuestFrames<'g> {
    pub guest: &'g SharedGuest,
    pub vcpu: usize,
}

impl ShadowFrames for GuestFrames<'_> {
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
        HostFrames.allocate_zeroed()
    }

    fn free(&mut self, frame: HostPhysAddr) {
        HostFrames.free(frame);
    }

    #[inline]
    fn read_entry(&self, table: HostPhysAddr, index: TableIndex) -> u64 {
        HostFrames.read_entry(table, index)
    }

    #[inline]
    fn write_entry(&mut self, table: HostPhysAddr, index: TableIndex, value: u64) {
        HostFrames.write_entry(table, index, value);
    }

    fn shoot_down(&mut self, vcpus: u64) {
        let waited = self.guest.shoot_down(self.vcpu, vcpus);
        SHOOTDOWN_WAITS.fetch_add(u64::from(waited), Ordering::Relaxed);
    }
}

/// vCPUs interrupted and waited for by shoot-downs, machine-wide.
pub(super) static SHOOTDOWN_WAITS: AtomicU64 = AtomicU64::new(0);
