//! (iv) Switching page tables: the guest writes CR3.
//!
//! Every guest process has its own page tables, so the guest switches roots
//! on almost every context switch. Building a shadow root from nothing each
//! time would throw away every shadow entry and fault them all back in, so
//! each guest keeps a small cache of shadow roots (`RootCache`), keyed by
//! the guest root's guest-physical address. A switch to a cached root costs
//! nothing; a new root reuses a free slot or evicts one ([`Eviction`]),
//! keeping its top-level frame and dropping its user half. The kernel half
//! is shared by all roots (see [`super`]), so even a brand-new root has the
//! guest kernel mapped from the start; the stack is re-pinned only if the
//! guest keeps its kernel stack in the user half.
//!
//! Plain LRU collapses when a workload cycles over more address spaces than
//! the cache holds (eight processes taking turns over four roots): the root
//! it evicts is always the next one wanted, and every switch misses. So the
//! cache remembers the guest roots it evicted lately (as many as it holds,
//! ARC's "ghost" list in miniature): a miss on one of those says the working
//! set is larger than the cache, and that miss evicts the most recently
//! used root instead, which keeps the older ones for their turn. A cycle of
//! eight over four then hits one switch in three; a workload whose working
//! set fits never meets a ghost and is served by LRU as before.

use super::error::PagingError;
use super::hw::{GuestMemory, ShadowFrames};
use super::{MAX_CACHED_ROOTS, ShadowPaging};
use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use guest_abi::pte::{self, KERNEL_HALF_FIRST_PML4_INDEX, SWITCHER_PML4_INDEX};

/// Which cached root to throw out when a new one is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// The one used least recently: keeps a working set of processes.
    LeastRecentlyUsed,
    /// One at random (lguest's choice), from a generator seeded with the
    /// given value: no bookkeeping, and no pathological access pattern.
    Random {
        /// The seed (0 is replaced by a fixed non-zero value).
        seed: u64,
    },
}

/// How a root switch was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSwitch {
    /// The root was cached.
    Reused,
    /// A new shadow root was built in a free slot.
    Made,
    /// A new shadow root was built by evicting the root of this guest
    /// root.
    Evicted(GuestPhysAddr),
}

/// One cached shadow root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RootSlot {
    /// The guest's root (CR3 value) this shadows.
    pub guest_root: GuestPhysAddr,
    /// The shadow top-level table.
    pub shadow: HostPhysAddr,
    /// When it was last switched to (a counter, not time).
    last_used: u64,
}

/// The cached shadow roots of one guest. The running root is kept apart
/// from the others, so there always is one.
pub(super) struct RootCache {
    current: RootSlot,
    others: [Option<RootSlot>; MAX_CACHED_ROOTS - 1],
    /// How many of `others` may be used: the configured size minus one.
    other_slots: usize,
    eviction: Eviction,
    clock: u64,
    random_state: u64,
    /// Guest roots evicted lately, a ring of [`Self::ghost_slots`]: a miss
    /// on one of them means the workload cycles over more roots than fit.
    ghosts: [Option<GuestPhysAddr>; MAX_CACHED_ROOTS],
    /// Where the next ghost goes in `ghosts`.
    next_ghost: usize,
}

impl RootCache {
    /// A cache of `capacity` roots holding the first one.
    pub(super) fn new(
        guest_root: GuestPhysAddr,
        shadow: HostPhysAddr,
        capacity: usize,
        eviction: Eviction,
    ) -> Self {
        let mut cache = Self {
            current: RootSlot {
                guest_root,
                shadow,
                last_used: 0,
            },
            others: [None; MAX_CACHED_ROOTS - 1],
            other_slots: capacity.clamp(2, MAX_CACHED_ROOTS) - 1,
            eviction: Eviction::LeastRecentlyUsed,
            clock: 0,
            random_state: 0x9e37_79b9_7f4a_7c15,
            ghosts: [None; MAX_CACHED_ROOTS],
            next_ghost: 0,
        };
        cache.eviction = eviction;
        if let Eviction::Random { seed } = eviction
            && seed != 0
        {
            cache.random_state = seed;
        }
        cache
    }

    /// The running root.
    pub(super) fn current(&self) -> RootSlot {
        self.current
    }

    /// The shadow of guest root `root`, if cached.
    pub(super) fn find(&self, root: GuestPhysAddr) -> Option<HostPhysAddr> {
        if self.current.guest_root == root {
            return Some(self.current.shadow);
        }
        self.others
            .iter()
            .flatten()
            .find(|slot| slot.guest_root == root)
            .map(|slot| slot.shadow)
    }

    /// The shadow top-level frames of every cached root, the running one
    /// first. Returned by value so the caller may change the tables.
    pub(super) fn all_frames(&self) -> impl Iterator<Item = HostPhysAddr> + use<> {
        let mut frames = [None; MAX_CACHED_ROOTS];
        frames[0] = Some(self.current.shadow);
        for (out, slot) in frames[1..].iter_mut().zip(self.others.iter()) {
            *out = slot.map(|s| s.shadow);
        }
        frames.into_iter().flatten()
    }

    /// The guest roots cached, the running one first.
    pub(super) fn guest_roots(&self) -> impl Iterator<Item = GuestPhysAddr> + '_ {
        core::iter::once(self.current.guest_root)
            .chain(self.others.iter().flatten().map(|s| s.guest_root))
    }

    /// Makes the cached root in `others[index]` the running one.
    fn promote(&mut self, index: usize, slot: RootSlot) {
        let previous = self.current;
        if let Some(place) = self.others.get_mut(index) {
            *place = Some(previous);
        }
        self.current = slot;
        self.touch();
    }

    /// Marks the running root as just used.
    fn touch(&mut self) {
        self.clock += 1;
        self.current.last_used = self.clock;
    }

    /// A usable slot of `others` holding nothing.
    fn free_slot(&self) -> Option<usize> {
        self.others
            .iter()
            .take(self.other_slots)
            .position(Option::is_none)
    }

    /// How many evicted roots are remembered: as many as the cache holds.
    fn ghost_slots(&self) -> usize {
        self.other_slots + 1
    }

    /// Remembers that `root` was evicted.
    fn remember_evicted(&mut self, root: GuestPhysAddr) {
        let slots = self.ghost_slots();
        if let Some(ghost) = self.ghosts.get_mut(self.next_ghost % slots) {
            *ghost = Some(root);
        }
        self.next_ghost = (self.next_ghost + 1) % slots;
    }

    /// Whether `root` was evicted lately; forgets it if so (it is about to
    /// be cached again).
    fn was_evicted_lately(&mut self, root: GuestPhysAddr) -> bool {
        match self.ghosts.iter_mut().find(|g| **g == Some(root)) {
            Some(ghost) => {
                *ghost = None;
                true
            }
            None => false,
        }
    }

    /// The slot of `others` to evict for `wanted` (all usable slots are
    /// full), and remembers its root as evicted.
    fn victim(&mut self, wanted: GuestPhysAddr) -> usize {
        let index = match self.eviction {
            Eviction::LeastRecentlyUsed => {
                let cycling = self.was_evicted_lately(wanted);
                let usable = self.others.iter().take(self.other_slots).enumerate();
                let last_used =
                    |(_, slot): &(usize, &Option<RootSlot>)| slot.map_or(0, |s| s.last_used);
                let chosen = if cycling {
                    // A cycle larger than the cache: keep the older roots.
                    usable.max_by_key(last_used)
                } else {
                    usable.min_by_key(last_used)
                };
                chosen.map_or(0, |(i, _)| i)
            }
            Eviction::Random { .. } => {
                // xorshift64: enough to break patterns, no dependency.
                let mut x = self.random_state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.random_state = x;
                (x % self.other_slots.max(1) as u64) as usize
            }
        };
        if let Some(slot) = self.others.get(index).copied().flatten() {
            self.remember_evicted(slot.guest_root);
        }
        index
    }

    /// Drops every cached root except the running one; returns their
    /// shadow frames.
    pub(super) fn drop_others(&mut self) -> impl Iterator<Item = HostPhysAddr> + use<> {
        let mut dropped = [None; MAX_CACHED_ROOTS - 1];
        for (out, slot) in dropped.iter_mut().zip(self.others.iter_mut()) {
            *out = slot.take().map(|s| s.shadow);
        }
        dropped.into_iter().flatten()
    }
}

impl ShadowPaging {
    /// (iv) The guest loaded `root` (its new CR3 value) into CR3: make the
    /// shadow of that address space the running one, building it if it is
    /// not cached, and re-pin the kernel stack in a new one.
    pub fn switch_root<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        root: u64,
    ) -> Result<RootSwitch, PagingError> {
        let root = Self::check_root(&self.limits, &self.shared_pages, mem, root)?;
        if self.roots.current.guest_root == root {
            self.roots.touch();
            self.stats.roots_reused += 1;
            return Ok(RootSwitch::Reused);
        }
        let cached = self
            .roots
            .others
            .iter()
            .enumerate()
            .find_map(|(i, slot)| slot.filter(|s| s.guest_root == root).map(|s| (i, s)));
        if let Some((index, slot)) = cached {
            self.roots.promote(index, slot);
            self.stats.roots_reused += 1;
            return Ok(RootSwitch::Reused);
        }
        self.check_not_kernel_table(mem, root)?;
        let how = match self.roots.free_slot() {
            Some(index) => {
                // At the bound, a reclaim makes room: it empties the other
                // slots (so `index` stays free) and clears the root being
                // left, which stays cached, empty.
                let shadow = self.new_root_table(frames)?;
                let slot = RootSlot {
                    guest_root: root,
                    shadow,
                    last_used: 0,
                };
                self.roots.promote(index, slot);
                RootSwitch::Made
            }
            None => {
                let index = self.roots.victim(root);
                let Some(victim) = self.roots.others.get(index).copied().flatten() else {
                    return Err(PagingError::BadConfig {
                        cached_roots: self.config.cached_roots,
                    });
                };
                // Keep the victim's frame and its (shared) kernel half;
                // its user half belonged to another process.
                self.flush_user_half(frames, victim.shadow);
                self.stats.roots_evicted += 1;
                let slot = RootSlot {
                    guest_root: root,
                    shadow: victim.shadow,
                    last_used: 0,
                };
                self.roots.promote(index, slot);
                RootSwitch::Evicted(victim.guest_root)
            }
        };
        self.stats.roots_made += 1;
        // A kernel stack in the kernel half is mapped in the new root
        // already (the half is shared); one in the user half is not.
        if self.stack.is_some_and(|s| !s.bottom.is_upper_half()) {
            self.pin_stack(mem, frames)?;
        }
        Ok(how)
    }

    /// A new shadow top-level table with the shared kernel half in it,
    /// reclaiming everything else at the bound.
    pub(super) fn new_root_table<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
    ) -> Result<HostPhysAddr, PagingError> {
        let zero = GuestVirtAddr::new_truncate(0);
        let shadow = match self.allocate_table(frames, zero) {
            Err(PagingError::ShadowLimit { .. }) => {
                self.reclaim(frames, true);
                self.allocate_table(frames, zero)?
            }
            other => other?,
        };
        self.copy_kernel_half(frames, shadow);
        Ok(shadow)
    }

    /// Refuses a new root that is one of the running address space's
    /// kernel-half level-3 tables (its top-level entries 256..=510 point at
    /// them). That is the cheap part of "a live lower-level table is no
    /// root": 255 reads of the running root, only when a shadow root is
    /// built (not on a switch served from the cache). The rest (a level-2
    /// or level-1 table, a user-half table, a table of another address
    /// space) would need a reverse map of every guest table and is not
    /// checked: such a root only confuses the guest itself, since every
    /// entry reached through it is still checked like any other
    /// ([`super::entry::GuestEntry::decode`]), its switcher slot must be
    /// absent ([`Self::check_root`]), and the shadow maps nothing but the
    /// guest's own memory. The host writes only the shared page, refused
    /// as a root outright, and accessed and dirty bits, as the CPU would.
    fn check_not_kernel_table<M: GuestMemory>(
        &mut self,
        mem: &M,
        root: GuestPhysAddr,
    ) -> Result<(), PagingError> {
        if self.kernel_tables.is_none() {
            self.kernel_tables = Some(self.read_kernel_tables(mem)?);
        }
        let tables = self.kernel_tables.as_deref().unwrap_or_default();
        match tables.iter().find(|(table, _)| *table == root) {
            Some(&(_, slot)) => Err(PagingError::TableAsRoot {
                root: root.as_u64(),
                slot,
            }),
            None => Ok(()),
        }
    }

    /// The level-3 tables the running root's kernel half points at, with
    /// their top-level slots.
    fn read_kernel_tables<M: GuestMemory>(
        &self,
        mem: &M,
    ) -> Result<alloc::vec::Vec<(GuestPhysAddr, usize)>, PagingError> {
        let current = self.roots.current().guest_root.as_u64();
        let mut tables = alloc::vec::Vec::new();
        for slot in KERNEL_HALF_FIRST_PML4_INDEX..SWITCHER_PML4_INDEX {
            let gpa = GuestPhysAddr::new(current + 8 * slot as u64);
            let value = mem
                .read_u64(gpa)
                .map_err(|_| PagingError::GuestMemory { gpa })?;
            if value & pte::PRESENT != 0 {
                tables.push((GuestPhysAddr::new(value & pte::ADDRESS_MASK), slot));
            }
        }
        Ok(tables)
    }

    /// The guest roots whose shadows are cached, the running one first.
    pub fn cached_roots(&self) -> impl Iterator<Item = GuestPhysAddr> + '_ {
        self.roots.guest_roots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::PagingConfig;
    use crate::paging::testing::*;
    use guest_abi::pte;

    const USER_VA: u64 = 0x40_0000;

    fn switch(f: &mut Fixture, root: u64) -> Result<RootSwitch, PagingError> {
        f.paging.switch_root(&mut f.mem, &mut f.frames, root)
    }

    #[test]
    fn cached_roots_are_reused_with_their_user_half() {
        let mut f = Fixture::new(PagingConfig::default());
        f.map(ROOT_A, USER_VA, 0x5000, 0);
        f.fault(USER_VA, 0);
        assert_eq!(switch(&mut f, ROOT_B), Ok(RootSwitch::Made));
        assert!(!f.leaf(USER_VA).is_present(), "another process");
        assert_eq!(switch(&mut f, ROOT_A), Ok(RootSwitch::Reused));
        assert!(f.leaf(USER_VA).is_present());
        assert_eq!(switch(&mut f, ROOT_A), Ok(RootSwitch::Reused));
        let s = f.paging.stats();
        assert_eq!((s.roots_made, s.roots_reused, s.roots_evicted), (2, 2, 0));
        f.teardown();
    }

    #[test]
    fn least_recently_used_roots_are_evicted_first() {
        let mut f = Fixture::new(PagingConfig {
            cached_roots: 3,
            ..PagingConfig::default()
        });
        let roots = [ROOT_A, ROOT_B, 0x3000, 0x4000];
        for &r in &roots[1..3] {
            switch(&mut f, r).unwrap();
            f.map(r, USER_VA, 0x5000, 0);
            f.fault(USER_VA, 0);
        }
        switch(&mut f, ROOT_A).unwrap(); // B is now the oldest
        assert_eq!(
            switch(&mut f, roots[3]),
            Ok(RootSwitch::Evicted(ROOT_B.into_gpa()))
        );
        let cached: std::vec::Vec<_> = f.paging.cached_roots().map(|r| r.as_u64()).collect();
        assert_eq!(cached.len(), 3);
        assert!(!cached.contains(&ROOT_B));
        assert!(
            !f.leaf(USER_VA).is_present(),
            "the evicted user half is gone"
        );
        assert_eq!(
            f.paging.stats().frames_held,
            3 + 3,
            "three roots, one user path"
        );
        f.teardown();
    }

    #[test]
    fn a_cycle_over_more_roots_than_fit_still_hits() {
        let mut f = Fixture::new(PagingConfig::default());
        for i in 0..96u64 {
            let r = 0x1000 * (1 + i % 8);
            switch(&mut f, r).unwrap();
            f.map(r, USER_VA, 0x5000, 0);
            f.fault(USER_VA, 0);
            assert!(f.leaf(USER_VA).is_present());
        }
        let s = f.paging.stats();
        // Plain LRU would miss every switch; the cache keeps the older
        // roots once it sees evicted ones come back: one hit in three.
        assert!(s.roots_reused >= 28, "{s:?}");
        assert_eq!(s.roots_made, s.roots_evicted + 4);
        f.teardown();

        // A working set that fits is LRU's as before: no miss after the
        // first round, however many rounds.
        let mut f = Fixture::new(PagingConfig::default());
        for i in 0..40u64 {
            switch(&mut f, 0x1000 * (1 + i % 4)).unwrap();
        }
        assert_eq!(f.paging.stats().roots_made, 4);
        f.teardown();
    }

    #[test]
    fn random_eviction_keeps_the_count_and_the_frames_right() {
        let mut f = Fixture::new(PagingConfig {
            cached_roots: 2,
            eviction: Eviction::Random { seed: 7 },
            ..PagingConfig::default()
        });
        for i in 0..20u64 {
            let r = 0x1000 * (1 + i % 5);
            switch(&mut f, r).unwrap();
            f.map(r, USER_VA, 0x5000, 0);
            f.fault(USER_VA, 0);
            assert!(f.paging.cached_roots().count() <= 2);
        }
        let s = f.paging.stats();
        assert_eq!(s.roots_made + s.roots_reused, 21);
        assert_eq!(s.roots_made, s.roots_evicted + 2);
        f.teardown();
    }

    #[test]
    fn bad_roots_are_refused() {
        let mut f = Fixture::new(PagingConfig::default());
        assert!(matches!(
            switch(&mut f, 0x1008),
            Err(PagingError::BadRoot { .. })
        ));
        assert!(matches!(
            switch(&mut f, MEMORY_SIZE),
            Err(PagingError::BadRoot { .. })
        ));
        f.mem.set(0x3000 + 511 * 8, 0x5000 | pte::PRESENT);
        assert!(matches!(
            switch(&mut f, 0x3000),
            Err(PagingError::SwitcherSlot { .. })
        ));
        f.teardown();
    }

    trait IntoGpa {
        fn into_gpa(self) -> GuestPhysAddr;
    }
    impl IntoGpa for u64 {
        fn into_gpa(self) -> GuestPhysAddr {
            GuestPhysAddr::new(self)
        }
    }
}
