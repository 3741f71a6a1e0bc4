//! Several vCPUs on one guest's shadow tables, and the shoot-down.
//!
//! A guest of several vCPUs has one set of shadow tables, but each vCPU
//! runs on its own CPU, with its own CR3, and so needs a top-level table
//! of its own: the switcher's slot (top-level entry 511) must point at the
//! pages of the CPU it runs on (part (vi)), and two vCPUs in the same
//! address space may run on two CPUs at once. So each vCPU keeps its own
//! cache of shadow roots ([`VcpuPaging`]: the root cache of part (iv),
//! with its kernel stack and its MMU ring), while the kernel half stays
//! one set of tables under every root of every vCPU. Two vCPUs running
//! the same process each shadow its user half; the guest's reports of a
//! user-half change reach every vCPU's shadow of that address space, its
//! flushes every vCPU's.
//!
//! The host handles one vCPU's exit at a time (the guest's lock), and the
//! vCPU being handled is the *active* one: its part sits in
//! [`ShadowPaging`]'s own fields, where parts (i) to (vii) find it, and the
//! others are parked here. [`ShadowPaging::activate`] swaps them.
//!
//! **The shoot-down.** The switcher loads CR3 at every entry, so a CPU's
//! TLB holds nothing of a guest it is not running, and a vCPU that leaves
//! the guest once holds nothing stale. But another vCPU of the same guest
//! may be in the guest right now, using translations of a shadow entry
//! this exit just dropped or downgraded: the kernel half, which every root
//! shares, or the user half of the address space that vCPU runs. Such a
//! change is *owed* a shoot-down ([`ShadowPaging::shootdown_owed`]), and
//! the guest's exit may not return (nor may the change be relied on)
//! until every other vCPU in the guest has left it once
//! ([`ShadowFrames::shoot_down`]: the kernel sends those CPUs an
//! interrupt and waits). Until then, no shadow table freed by the change
//! may be used again, by this guest or any other: a CPU's paging-structure
//! caches may still point into it. So while the guest has more than one
//! vCPU, freed tables wait in a list ([`ShadowPaging::finish_shootdown`]
//! gives them back after the shoot-down), and a shadow table needed
//! meanwhile at the bound shoots down first
//! ([`ShadowPaging::allocate_table`]).
//!
//! A change that only adds or widens (a fault filled, a read-only page
//! made writable for its first write) owes nothing: a stale, narrower
//! translation just faults, and the fault finds the shadow already right
//! (`FaultDecision::Retry`, not the kill a single vCPU would earn for a
//! fault that makes no progress).

use super::hw::ShadowFrames;
use super::roots::RootCache;
use super::{KernelStack, MmuRing, PagingError, ShadowPaging};
use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use alloc::vec::Vec;

/// What of the shadow tables belongs to one vCPU.
pub(super) struct VcpuPaging {
    /// Its shadow roots; the running one is its CR3.
    pub roots: RootCache,
    /// Its kernel stack, kept pinned (part (ii)).
    pub stack: Option<KernelStack>,
    /// Set when a shadow entry that may have mapped its stack was dropped.
    pub stack_needs_pin: bool,
    /// Its MMU ring, in its own shared page.
    pub ring: Option<MmuRing>,
}

/// A shadow table freed while a shoot-down is owed, given back once it is
/// done.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeldTable {
    pub frame: HostPhysAddr,
    pub zeroed: bool,
}

impl ShadowPaging {
    /// How many vCPUs the tables serve (1 until [`Self::add_vcpu`]).
    pub fn vcpus(&self) -> usize {
        self.parked.len().max(1)
    }

    /// The vCPU whose exit is being handled.
    pub fn active_vcpu(&self) -> usize {
        self.active_vcpu
    }

    /// Whether other vCPUs may hold translations of these tables: then
    /// drops owe a shoot-down and freed tables wait for it.
    pub(super) fn shared_by_vcpus(&self) -> bool {
        self.parked.len() > 1
    }

    /// Adds vCPU `vcpu`, starting in address space `root` (the guest root
    /// the starting vCPU runs): a root of its own, with the kernel half.
    /// Its number must be the next one.
    pub fn add_vcpu<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vcpu: usize,
        root: GuestPhysAddr,
    ) -> Result<(), PagingError> {
        if self.parked.is_empty() {
            // The first vCPU's part is the active one; its place in the
            // list stays empty while it is.
            self.parked.push(None);
        }
        if vcpu != self.parked.len() {
            return Err(PagingError::BadConfig {
                cached_roots: self.config.cached_roots,
            });
        }
        let zero = GuestVirtAddr::new_truncate(0);
        let shadow = match self.allocate_table(frames, zero) {
            Err(PagingError::ShadowLimit { .. }) => {
                self.reclaim(frames, true);
                self.allocate_table(frames, zero)?
            }
            other => other?,
        };
        self.copy_kernel_half(frames, shadow);
        self.stats.roots_made += 1;
        self.parked.push(Some(VcpuPaging {
            roots: RootCache::new(root, shadow, self.config.cached_roots, self.config.eviction),
            stack: None,
            stack_needs_pin: false,
            ring: None,
        }));
        Ok(())
    }

    /// Makes `vcpu` the active vCPU (its exit is next), parking the one
    /// that was. Free when it already is.
    pub fn activate(&mut self, vcpu: usize) {
        if vcpu == self.active_vcpu {
            return;
        }
        let Some(Some(mut incoming)) = self.parked.get_mut(vcpu).map(Option::take) else {
            return;
        };
        core::mem::swap(&mut self.roots, &mut incoming.roots);
        core::mem::swap(&mut self.stack, &mut incoming.stack);
        core::mem::swap(&mut self.stack_needs_pin, &mut incoming.stack_needs_pin);
        core::mem::swap(&mut self.ring, &mut incoming.ring);
        if let Some(place) = self.parked.get_mut(self.active_vcpu) {
            *place = Some(incoming);
        }
        self.active_vcpu = vcpu;
        // The eager fill's memory of a walk is the last vCPU's.
        self.upper_walk = None;
    }

    /// The guest root every vCPU runs.
    pub(super) fn every_running_root(&self) -> impl Iterator<Item = GuestPhysAddr> + '_ {
        core::iter::once(self.roots.current().guest_root).chain(
            self.parked
                .iter()
                .flatten()
                .map(|vcpu| vcpu.roots.current().guest_root),
        )
    }

    /// The parked vCPUs' parts.
    pub(super) fn parked_mut(&mut self) -> impl Iterator<Item = &mut VcpuPaging> {
        self.parked.iter_mut().flatten()
    }

    /// Every shadow root of every vCPU, the active vCPU's first.
    pub(super) fn every_root(&self) -> Vec<HostPhysAddr> {
        let mut all: Vec<HostPhysAddr> = self.roots.all_frames().collect();
        for vcpu in self.parked.iter().flatten() {
            all.extend(vcpu.roots.all_frames());
        }
        all
    }

    /// Whether a shoot-down is owed: a shadow entry another vCPU may be
    /// using was dropped or narrowed since the last one.
    pub fn shootdown_owed(&self) -> bool {
        self.shootdown_owed
    }

    /// Notes a drop another vCPU may be using (the kernel half, or an
    /// address space another vCPU runs).
    pub(super) fn owe_shootdown(&mut self) {
        if self.shared_by_vcpus() {
            self.shootdown_owed = true;
        }
    }

    /// The shoot-down is done (every other vCPU left the guest once since
    /// the drops): the tables they freed go back.
    pub fn finish_shootdown<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.shootdown_owed = false;
        let held = core::mem::take(&mut self.held_tables);
        for table in &held {
            self.release_now(frames, table.frame, table.zeroed);
        }
        // Keep the list's memory for the next exit's drops.
        self.held_tables = held;
        self.held_tables.clear();
        self.stats.shootdowns += 1;
    }

    /// Shoots down and gives the held tables back, if any are held: what an
    /// allocation at the bound does before it reclaims.
    pub(super) fn shoot_down_now<F: ShadowFrames>(&mut self, frames: &mut F) -> bool {
        if self.held_tables.is_empty() {
            return false;
        }
        frames.shoot_down();
        self.finish_shootdown(frames);
        true
    }

    /// Drops the shadow of guest root `root`'s user-half entry at `vaddr`
    /// and `level` in every parked vCPU that caches that address space;
    /// one that runs it is owed a shoot-down.
    pub(super) fn clear_in_parked<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
        level: super::Level,
    ) {
        for (shadow, running) in self.parked_shadows_of(root) {
            self.clear_entry(frames, shadow, vaddr, level);
            if running {
                self.owe_shootdown();
            }
        }
        for vcpu in self.parked_mut() {
            if vcpu.roots.current().guest_root == root {
                Self::stack_dropped(vcpu, vaddr, level);
            }
        }
    }

    /// Drops the user half of guest root `root` in every parked vCPU that
    /// caches it.
    pub(super) fn flush_user_in_parked<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        root: GuestPhysAddr,
    ) {
        for (shadow, running) in self.parked_shadows_of(root) {
            self.flush_user_half(frames, shadow);
            if running {
                self.owe_shootdown();
            }
        }
        for vcpu in self.parked_mut() {
            if vcpu.roots.current().guest_root == root
                && vcpu.stack.is_some_and(|s| !s.bottom.is_upper_half())
            {
                vcpu.stack_needs_pin = true;
            }
        }
    }

    /// Every parked vCPU's shadow of guest root `root`, and whether that
    /// vCPU runs it.
    fn parked_shadows_of(&self, root: GuestPhysAddr) -> Vec<(HostPhysAddr, bool)> {
        self.parked
            .iter()
            .flatten()
            .filter_map(|vcpu| {
                let running = vcpu.roots.current().guest_root == root;
                vcpu.roots.find(root).map(|shadow| (shadow, running))
            })
            .collect()
    }

    /// A parked vCPU's stack may have been under a dropped entry.
    fn stack_dropped(vcpu: &mut VcpuPaging, vaddr: GuestVirtAddr, level: super::Level) {
        if let Some(stack) = vcpu.stack
            && stack.overlaps(vaddr, level)
        {
            vcpu.stack_needs_pin = true;
        }
    }

    /// The kernel half was dropped (in part or whole): every parked vCPU
    /// pins its stack again before it next runs, and the others owe a
    /// shoot-down.
    pub(super) fn kernel_half_dropped_for_parked(&mut self) {
        self.owe_shootdown();
        for vcpu in self.parked_mut() {
            vcpu.stack_needs_pin |= vcpu.stack.is_some();
        }
    }
}
