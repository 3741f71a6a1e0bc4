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
//! shares (every other vCPU), or the user half of the address space that
//! vCPU runs (that vCPU). Such a change is *owed* a shoot-down to those
//! vCPUs ([`ShadowPaging::owed_vcpus`]), and the guest's exit may not
//! return (nor may the change be relied on) until each of them has left
//! the guest once ([`ShadowFrames::shoot_down`]: the kernel sends their
//! CPUs an interrupt and waits). Until then, no shadow table freed by the
//! change may be used again, by this guest or any other: a CPU's
//! paging-structure caches may still point into it. So such tables wait
//! in a list ([`ShadowPaging::finish_shootdown`] gives them back after the
//! shoot-down), and a shadow table needed meanwhile at the bound shoots
//! down first ([`ShadowPaging::allocate_table`]). A table of the active
//! vCPU's own roots, or of a root another vCPU has cached but does not
//! run, is in no TLB (every CPU loads CR3 at each entry and exit) and is
//! freed at once: a context switch that evicts a root owes nothing.
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

/// vCPU `k` as a one-element set (guests have at most 16 vCPUs).
pub(super) fn vcpu_bit(k: usize) -> u64 {
    1u64.checked_shl(k as u32).unwrap_or(0)
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
        let shadow = self.new_root_table(frames)?;
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

    /// Whether `root` is the guest root some vCPU runs.
    pub fn is_running_root(&self, root: GuestPhysAddr) -> bool {
        self.every_running_root().any(|running| running == root)
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
        self.owed_vcpus != 0
    }

    /// The vCPUs owed a shoot-down, bit `k` for vCPU `k`.
    pub fn owed_vcpus(&self) -> u64 {
        self.owed_vcpus
    }

    /// Every vCPU but the active one, as a set.
    #[inline]
    pub(super) fn other_vcpus(&self) -> u64 {
        if self.parked.is_empty() {
            return 0;
        }
        self.parked
            .iter()
            .enumerate()
            .filter(|(_, vcpu)| vcpu.is_some())
            .fold(0, |set, (k, _)| set | vcpu_bit(k))
    }

    /// Notes a drop the vCPUs in `vcpus` may be using.
    pub(super) fn owe_shootdown(&mut self, vcpus: u64) {
        self.owed_vcpus |= vcpus;
    }

    /// Runs `f` with the tables it frees held until the vCPUs in `vcpus`
    /// have been shot down (they may walk them: the kernel half, or a
    /// root they run); with no such vCPU, `f` frees at once.
    #[inline]
    pub(super) fn holding_for<R>(&mut self, vcpus: u64, f: impl FnOnce(&mut Self) -> R) -> R {
        if vcpus == 0 {
            return f(self);
        }
        let was = self.hold_for;
        self.hold_for |= vcpus;
        let result = f(self);
        self.hold_for = was;
        result
    }

    /// The shoot-down is done (every vCPU owed one left the guest once
    /// since the drops): the tables they freed go back.
    pub fn finish_shootdown<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.owed_vcpus = 0;
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
        frames.shoot_down(self.owed_vcpus);
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
            self.holding_for(running, |s| s.clear_entry(frames, shadow, vaddr, level));
            self.owe_shootdown(running);
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
            self.holding_for(running, |s| s.flush_user_half(frames, shadow));
            self.owe_shootdown(running);
        }
        for vcpu in self.parked_mut() {
            if vcpu.roots.current().guest_root == root
                && vcpu.stack.is_some_and(|s| !s.bottom.is_upper_half())
            {
                vcpu.stack_needs_pin = true;
            }
        }
    }

    /// Every parked vCPU's shadow of guest root `root`, with that vCPU as
    /// a set if it runs that root (it may hold translations of it), else
    /// the empty set.
    fn parked_shadows_of(&self, root: GuestPhysAddr) -> Vec<(HostPhysAddr, u64)> {
        self.parked
            .iter()
            .enumerate()
            .filter_map(|(k, vcpu)| {
                let vcpu = vcpu.as_ref()?;
                let running = vcpu.roots.current().guest_root == root;
                let shadow = vcpu.roots.find(root)?;
                Some((shadow, if running { vcpu_bit(k) } else { 0 }))
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
        self.owe_shootdown(self.other_vcpus());
        for vcpu in self.parked_mut() {
            vcpu.stack_needs_pin |= vcpu.stack.is_some();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::addr::{GuestPhysAddr, GuestVirtAddr};
    use crate::paging::testing::*;
    use crate::paging::{FaultDecision, Level, PagingConfig, PagingError, ShadowPaging};
    use guest_abi::pte;

    const USER_VA: u64 = 0x40_0000;
    const KERNEL_VA: u64 = 0xffff_8000_0020_0000;
    const READ: u64 = 0;
    const WRITE: u64 = 2;
    /// The switcher's table, as the kernel would name it (never followed).
    const SWITCHER_TABLE: crate::addr::HostPhysAddr = crate::addr::HostPhysAddr::new(0xdead_0000);

    /// The fixture with a second vCPU, both in address space A, each with
    /// the user and the kernel page faulted in.
    fn two_vcpus() -> Fixture {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
        f.map(ROOT_A, KERNEL_VA, 0x6000, pte::WRITABLE);
        f.paging
            .add_vcpu(&mut f.frames, 1, GuestPhysAddr::new(ROOT_A))
            .unwrap();
        for vcpu in [0, 1] {
            f.paging.activate(vcpu);
            assert_eq!(f.fault(USER_VA, READ), FaultDecision::Fixed);
        }
        f.paging.activate(0);
        f
    }

    fn root_of(f: &mut Fixture, vcpu: usize) -> crate::addr::HostPhysAddr {
        f.paging.activate(vcpu);
        let root = f.paging.current_shadow_root();
        f.paging.activate(0);
        root
    }

    #[test]
    fn each_vcpu_has_its_own_root_and_they_share_the_kernel_half() {
        let mut f = two_vcpus();
        assert_eq!(f.paging.vcpus(), 2);
        assert_ne!(root_of(&mut f, 0), root_of(&mut f, 1));
        // A kernel page filled by vCPU 1 is mapped for vCPU 0 at once.
        f.paging.activate(1);
        assert_eq!(f.fault(KERNEL_VA, READ), FaultDecision::Fixed);
        f.paging.activate(0);
        assert!(f.leaf(KERNEL_VA).is_present());
        assert!(!f.paging.shootdown_owed(), "filling owes nothing");
        f.teardown();
    }

    #[test]
    fn a_reported_user_change_reaches_every_vcpus_shadow_and_owes_a_shootdown() {
        let mut f = two_vcpus();
        f.write(ROOT_A, USER_VA, Level::L1, 0);
        f.set_entry(ROOT_A, USER_VA, Level::L1, 0).unwrap();
        assert!(f.paging.shootdown_owed(), "vCPU 1 runs that address space");
        f.paging.finish_shootdown(&mut f.frames);
        assert!(!f.paging.shootdown_owed());
        for vcpu in [0, 1] {
            f.paging.activate(vcpu);
            assert!(!f.leaf(USER_VA).is_present(), "vCPU {vcpu}");
        }
        f.paging.activate(0);
        f.teardown();
    }

    #[test]
    fn a_change_to_an_address_space_no_other_vcpu_holds_owes_nothing() {
        let mut f = two_vcpus();
        f.map(ROOT_B, USER_VA, 0x7000, pte::WRITABLE | pte::USER);
        f.paging
            .switch_root(&mut f.mem, &mut f.frames, ROOT_B)
            .unwrap();
        assert_eq!(f.fault(USER_VA, READ), FaultDecision::Fixed);
        f.write(ROOT_B, USER_VA, Level::L1, 0x8000 | pte::PRESENT);
        f.set_entry(ROOT_B, USER_VA, Level::L1, 0x8000 | pte::PRESENT)
            .unwrap();
        assert!(!f.paging.shootdown_owed());
        f.teardown();
    }

    #[test]
    fn tables_dropped_while_vcpus_share_are_freed_only_after_the_shootdown() {
        let mut f = two_vcpus();
        let held = f.paging.stats().frames_held;
        let in_use = f.frames.in_use();
        // Dropping the top-level entry frees the user tables under it, in
        // both vCPUs' roots: three levels each. vCPU 0's own go at once
        // (its CPU is in the host); vCPU 1's wait for its shoot-down.
        f.write(ROOT_A, USER_VA, Level::L4, 0);
        f.set_entry(ROOT_A, USER_VA, Level::L4, 0).unwrap();
        assert_eq!(f.paging.owed_vcpus(), 0b10, "vCPU 1 alone is owed one");
        assert_eq!(f.paging.stats().frames_held, held - 3, "vCPU 1's held");
        f.paging.finish_shootdown(&mut f.frames);
        let stats = f.paging.stats();
        assert_eq!(stats.frames_held, held - 6);
        assert_eq!(stats.frames_spare + stats.frames_held, in_use as u64);
        assert_eq!(f.paging.stats().shootdowns, 1);
        f.teardown();
    }

    #[test]
    fn a_kernel_half_drop_owes_a_shootdown_and_repins_every_vcpus_stack() {
        let mut f = two_vcpus();
        f.paging.activate(1);
        f.paging
            .set_kernel_stack(&mut f.mem, &mut f.frames, KERNEL_VA + 0x1000, 1)
            .unwrap();
        f.paging.activate(0);
        f.paging.flush_all(&mut f.frames);
        assert!(f.paging.shootdown_owed());
        f.paging.finish_shootdown(&mut f.frames);
        f.paging.activate(1);
        assert!(!f.leaf(KERNEL_VA).is_present());
        f.paging
            .prepare_to_run(&mut f.mem, &mut f.frames, SWITCHER_TABLE)
            .unwrap();
        assert!(
            f.leaf(KERNEL_VA).is_present(),
            "vCPU 1's stack pinned again"
        );
        assert!(!f.leaf(USER_VA).is_present(), "its user half flushed");
        f.paging.activate(0);
        f.teardown();
    }

    #[test]
    fn at_the_bound_held_tables_are_shot_down_before_they_are_reused() {
        let mut f = two_vcpus();
        f.write(ROOT_A, USER_VA, Level::L4, 0);
        f.map(ROOT_A, 0x80_0000, 0x9000, pte::WRITABLE | pte::USER);
        let Fixture {
            mut mem,
            frames,
            mut paging,
            ..
        } = f;
        let mut frames = CountingFrames(frames, std::vec::Vec::new());
        paging
            .set_entry(&mut mem, &mut frames, ROOT_A, USER_VA, 4, 0)
            .unwrap();
        // No room but what vCPU 1's held tables take: a new mapping needs
        // tables, and the held ones go back first.
        let stats = paging.stats();
        paging.set_shadow_frame_limit(stats.frames_held);
        let at = GuestVirtAddr::new_truncate(0x80_0000);
        let decision = paging.demand_page(&mut mem, &mut frames, at, WRITE | 4);
        assert_eq!(decision, FaultDecision::Fixed);
        assert_eq!(
            frames.1,
            [0b10],
            "one shoot-down of vCPU 1, before the reuse"
        );
        let stats = paging.teardown(&mut frames);
        assert_eq!((stats.frames_held, frames.0.in_use()), (0, 0));
    }

    #[test]
    fn evicting_a_root_of_its_own_owes_nothing() {
        let mut f = two_vcpus();
        // Four more address spaces than the one vCPU 0 faulted in: the
        // cache (four roots) evicts A, whose user tables go.
        let mut roots = std::vec![ROOT_B];
        roots.extend((0..3).map(|_| f.new_table()));
        for root in roots {
            f.paging
                .switch_root(&mut f.mem, &mut f.frames, root)
                .unwrap();
        }
        assert_eq!(f.paging.stats().roots_evicted, 1);
        assert!(!f.paging.shootdown_owed(), "no other vCPU runs A");
        f.teardown();
    }

    #[test]
    fn a_fault_the_shadow_allows_is_retried_once_per_fill_with_several_vcpus() {
        let mut f = two_vcpus();
        // vCPU 0 faulted through a stale translation: retried, not killed.
        assert_eq!(f.fault(USER_VA, READ), FaultDecision::Fixed);
        assert_eq!(f.paging.stats().faults_retried, 1);
        // The same fault again with nothing filled in between is no race.
        assert!(matches!(
            f.fault(USER_VA, READ),
            FaultDecision::Kill(PagingError::FaultWithoutProgress { .. })
        ));
        f.teardown();
    }

    #[test]
    fn one_vcpu_kills_a_fault_without_progress_at_once() {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
        assert_eq!(f.fault(USER_VA, READ), FaultDecision::Fixed);
        assert!(matches!(
            f.fault(USER_VA, READ),
            FaultDecision::Kill(PagingError::FaultWithoutProgress { .. })
        ));
        assert!(!f.paging.shootdown_owed());
        f.teardown();
    }

    #[test]
    fn vcpus_start_in_order_and_teardown_returns_every_frame() {
        let mut f = two_vcpus();
        assert!(
            f.paging
                .add_vcpu(&mut f.frames, 3, GuestPhysAddr::new(ROOT_A))
                .is_err()
        );
        f.paging
            .add_vcpu(&mut f.frames, 2, GuestPhysAddr::new(ROOT_B))
            .unwrap();
        f.paging.activate(2);
        assert_eq!(f.paging.current_guest_root(), GuestPhysAddr::new(ROOT_B));
        assert_eq!(f.paging.active_vcpu(), 2);
        f.paging.activate(0);
        assert_eq!(ShadowPaging::vcpus(&f.paging), 3);
        f.teardown();
    }

    /// The fixture's frames, keeping the shoot-downs asked for.
    struct CountingFrames(FakeFrames, std::vec::Vec<u64>);

    impl crate::paging::ShadowFrames for CountingFrames {
        fn allocate_zeroed(&mut self) -> Option<crate::addr::HostPhysAddr> {
            self.0.allocate_zeroed()
        }
        fn free(&mut self, frame: crate::addr::HostPhysAddr) {
            self.0.free(frame);
        }
        fn read_entry(
            &self,
            table: crate::addr::HostPhysAddr,
            index: crate::paging::TableIndex,
        ) -> u64 {
            self.0.read_entry(table, index)
        }
        fn write_entry(
            &mut self,
            table: crate::addr::HostPhysAddr,
            index: crate::paging::TableIndex,
            value: u64,
        ) {
            self.0.write_entry(table, index, value);
        }
        fn shoot_down(&mut self, vcpus: u64) {
            self.1.push(vcpus);
        }
    }
}
