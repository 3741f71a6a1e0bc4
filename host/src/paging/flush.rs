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
use guest_abi::pte::SWITCHER_PML4_INDEX;

impl ShadowPaging {
    /// Drops the user half of the running root.
    pub fn flush_user<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.stats.flushes += 1;
        let root = self.roots.current().shadow;
        self.flush_user_half(frames, root);
        if let Some(stack) = self.stack
            && !stack.bottom.is_upper_half()
        {
            self.stack_needs_pin = true;
        }
    }

    /// Drops everything: the shared kernel half, the user half of the
    /// running root, and every other cached root with its frame. The
    /// kernel stack is re-pinned before the guest runs again.
    pub fn flush_all<F: ShadowFrames>(&mut self, frames: &mut F) {
        self.stats.flushes += 1;
        self.drop_kernel_half(frames);
        let others = self.roots.drop_others();
        for root in others {
            self.flush_user_half(frames, root);
            self.free_frame(frames, root);
        }
        let root = self.roots.current().shadow;
        self.flush_user_half(frames, root);
        self.stack_needs_pin = self.stack.is_some();
    }

    /// Drops the shadow translation of `vaddr` in the running root (and so,
    /// for a kernel-half address, in every root), like `invlpg`. Only the
    /// 4 KiB leaf goes: a guest that changed a higher-level entry reports it
    /// with `set_entry` at that level.
    pub fn invalidate_page<F: ShadowFrames>(&mut self, frames: &mut F, vaddr: GuestVirtAddr) {
        self.stats.flushes += 1;
        if vaddr.table_index(4) == SWITCHER_PML4_INDEX {
            return;
        }
        let root = self.roots.current().shadow;
        self.clear_entry(frames, root, vaddr, Level::L1);
        self.note_dropped(vaddr, Level::L1);
    }
}
