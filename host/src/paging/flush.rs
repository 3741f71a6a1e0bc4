//! (v) Flushing: throwing shadow entries away.
//!
//! Dropping a shadow entry is always safe (the next access faults and
//! refills it from the guest's tables), so these are the guest's big
//! hammers: after changing many entries it may flush instead of reporting
//! each. They are the shadow's equivalents of reloading CR3 (the user half
//! of the running root), of toggling CR4.PGE (everything, every root) and of
//! `invlpg` (one address).

use super::ShadowPaging;
use super::entry::Level;
use super::hw::ShadowFrames;
use crate::addr::GuestVirtAddr;

impl ShadowPaging {
    /// Drops the user half of the running root (and every other vCPU's
    /// shadow of the same address space: a guest's flush reaches all its
    /// vCPUs).
    pub fn flush_user<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.stats.flushes += 1;
        let root = self.roots.current().shadow;
        self.flush_user_half(frames, root);
        if !self.parked.is_empty() {
            let guest_root = self.roots.current().guest_root;
            self.flush_user_in_parked(frames, guest_root);
        }
        if let Some(stack) = self.stack
            && !stack.bottom.is_upper_half()
        {
            self.stack_needs_pin = true;
        }
    }

    /// Drops everything: the shared kernel half, the user half of the
    /// running root, and every other cached root with its frame. The
    /// kernel stack is re-pinned before the guest runs again.
    ///
    /// Its cost is bounded by the guest's bound on shadow frames: it frees
    /// at most [`ShadowPaging::shadow_frame_limit`] tables (see there for
    /// the worst case in time).
    pub fn flush_all<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.stats.flushes += 1;
        self.drop_other_roots(frames);
        self.clear_running(frames);
    }

    /// Makes room at the bound on shadow frames (counted in
    /// [`super::PagingStats::reclaims`]): throws away the other cached
    /// roots, and then, if `everything` or if what is left still fills more
    /// than three quarters of the bound, the running root's shadow too (as
    /// lguest did when it ran short). Each reclaim that clears the running
    /// root leaves at least a quarter of the bound free, so reclaims cost
    /// O(1) per table allocated, amortized.
    pub(super) fn reclaim<F: ShadowFrames>(&mut self, frames: &mut F, everything: bool) {
        self.stats.reclaims += 1;
        self.drop_other_roots(frames);
        if everything || self.stats.frames_held > self.frame_limit / 4 * 3 {
            self.clear_running(frames);
        }
    }

    /// Frees every cached root but the running one, with its user half
    /// (of every vCPU: their running roots stay). A root built again later
    /// is re-pinned ([`Self::switch_root`]).
    fn drop_other_roots<F: ShadowFrames>(&mut self, frames: &mut F) {
        let others = self.roots.drop_others();
        for root in others {
            self.free_root(frames, root);
        }
        let mut parked_others = alloc::vec::Vec::new();
        for vcpu in self.parked_mut() {
            parked_others.extend(vcpu.roots.drop_others());
        }
        for root in parked_others {
            self.free_root(frames, root);
        }
    }

    /// Drops the shared kernel half and the running user half, keeping
    /// only the running root's own frame; the stack is re-pinned before the
    /// guest runs again.
    fn clear_running<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.drop_kernel_half(frames);
        let root = self.roots.current().shadow;
        self.flush_user_half(frames, root);
        self.stack_needs_pin = self.stack.is_some();
        let mut parked_running = alloc::vec::Vec::new();
        for (k, vcpu) in self.parked.iter_mut().enumerate() {
            if let Some(vcpu) = vcpu {
                parked_running.push((vcpu.roots.current().shadow, super::vcpus::vcpu_bit(k)));
                vcpu.stack_needs_pin = vcpu.stack.is_some();
            }
        }
        for (root, vcpu) in parked_running {
            self.holding_for(vcpu, |s| s.flush_user_half(frames, root));
            self.owe_shootdown(vcpu);
        }
    }

    /// Drops the shadow translation of `vaddr` in the running root (and so,
    /// for a kernel-half address, in every root), like `invlpg`. Only the
    /// 4 KiB leaf goes: a guest that changed a higher-level entry reports it
    /// with `set_entry` at that level.
    pub fn invalidate_page<F: ShadowFrames>(&mut self, frames: &mut F, vaddr: GuestVirtAddr) {
        self.stats.flushes += 1;
        if vaddr.in_switcher_slot() {
            return;
        }
        let root = self.roots.current().shadow;
        self.clear_entry(frames, root, vaddr, Level::L1);
        self.note_dropped(vaddr, Level::L1);
        if !self.parked.is_empty() && !vaddr.is_upper_half() {
            let guest_root = self.roots.current().guest_root;
            self.clear_in_parked(frames, guest_root, vaddr, Level::L1);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::addr::{GuestVirtAddr, HostPhysAddr};
    use crate::paging::testing::*;
    use crate::paging::{Level, PagingConfig, PteFlags, ShadowEntry, TableIndex};
    use guest_abi::pte;

    const USER_VA: u64 = 0x40_0000;
    const KERNEL_VA: u64 = 0xffff_8000_0020_0000;

    fn mapped(f: &mut Fixture) {
        f.map(ROOT_A, USER_VA, 0x5000, 0);
        f.map(ROOT_A, KERNEL_VA, 0x6000, pte::WRITABLE);
        f.fault(USER_VA, 0);
        f.fault(KERNEL_VA, 0);
    }

    #[test]
    fn flushing_the_user_half_keeps_the_kernel() {
        let mut f = Fixture::new(PagingConfig::default());
        mapped(&mut f);
        f.paging.flush_user(&mut f.frames);
        assert!(!f.leaf(USER_VA).is_present());
        assert!(f.leaf(KERNEL_VA).is_present());
        assert_eq!(f.paging.stats().frames_held, 4);
        f.teardown();
    }

    #[test]
    fn flushing_everything_leaves_one_empty_root_and_repins_the_stack() {
        let mut f = Fixture::new(PagingConfig::default());
        mapped(&mut f);
        f.paging
            .set_kernel_stack(&mut f.mem, &mut f.frames, KERNEL_VA + 0x1000, 1)
            .unwrap();
        f.paging
            .switch_root(&mut f.mem, &mut f.frames, ROOT_B)
            .unwrap();
        f.paging.flush_all(&mut f.frames);
        assert_eq!(f.paging.stats().frames_held, 1);
        assert!(!f.leaf(KERNEL_VA).is_present());
        let switcher = HostPhysAddr::new(0x7777_7000);
        let cr3 = f
            .paging
            .prepare_to_run(&mut f.mem, &mut f.frames, switcher)
            .unwrap();
        assert_eq!(cr3, f.paging.current_shadow_root());
        assert!(f.leaf(KERNEL_VA).flags().contains(PteFlags::WRITABLE));
        f.teardown();
    }

    #[test]
    fn invalidating_one_page_drops_only_its_leaf() {
        let mut f = Fixture::new(PagingConfig::default());
        mapped(&mut f);
        f.map(ROOT_A, USER_VA + 0x1000, 0x7000, 0);
        f.fault(USER_VA + 0x1000, 0);
        let va = GuestVirtAddr::try_new(USER_VA).unwrap();
        f.paging.invalidate_page(&mut f.frames, va);
        assert!(!f.leaf(USER_VA).is_present());
        assert!(f.leaf(USER_VA + 0x1000).is_present());
        f.teardown();
    }

    #[test]
    fn the_switcher_slot_is_installed_supervisor_only() {
        let mut f = Fixture::new(PagingConfig::default());
        let switcher = HostPhysAddr::new(0x7777_7000);
        f.paging.install_switcher(&mut f.frames, switcher);
        let root = f.paging.current_shadow_root();
        let slot = TableIndex::new(511).unwrap();
        let entry = ShadowEntry::from_raw(crate::paging::ShadowFrames::read_entry(
            &f.frames, root, slot,
        ));
        assert_eq!(entry.frame(), Ok(switcher));
        assert!(!entry.flags().contains(PteFlags::USER));
        // Flushes and teardown never follow or free it.
        f.paging.flush_all(&mut f.frames);
        f.paging.invalidate_page(
            &mut f.frames,
            GuestVirtAddr::try_new(crate::paging::SWITCHER_SLOT_BASE).unwrap(),
        );
        let _ = Level::L4;
        f.teardown();
    }
}
