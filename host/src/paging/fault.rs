//! (i) Filling the shadow on a page fault, and (ii) keeping the guest
//! kernel stack mapped.
//!
//! The shadow starts empty and is filled lazily: every page fault while a
//! guest runs comes to the host first, and [`ShadowPaging::demand_page`]
//! decides. It walks the guest's tables like the CPU would
//! ([`super::walk`]); if the guest's own tables allow the access it maps
//! the page in the shadow and the guest never knows; if they do not, the
//! fault is the guest's and is reflected to it; if they are malformed, the
//! guest dies with the reason.
//!
//! Accessed and dirty bits are the CPU's job on real tables, so here they
//! are ours: a fault sets accessed in every guest entry of the walk, and a
//! write sets dirty in the leaf. The trick (lguest's) that keeps dirty
//! honest: a read maps the page read-only even if the guest allows writes,
//! so the first write faults again and we can set dirty then.
//!
//! A trap into the guest kernel puts a frame on its stack: the host writes
//! it when it delivers a trap, and the CPU pushes it itself when guest user
//! code makes a direct trap. So the stack is pinned:
//! [`ShadowPaging::pin_stack`] makes sure it is mapped writable in the
//! running root before the guest runs, so a direct trap never stops
//! half-way to fault the stack in, and a stack the guest's own tables do
//! not let it write is refused when the guest names it, not found at some
//! later trap, when there would be nowhere left to deliver the fault. A
//! guest whose pinned stack cannot be mapped again is killed.

use super::entry::{GuestEntry, Level, PteFlags, ShadowEntry, TableIndex};
use super::error::PagingError;
use super::hw::{GuestMemory, ShadowFrames};
use super::walk::{Access, GuestWalk, WalkOutcome, walk_guest};
use super::{KernelStack, MAX_STACK_PAGES, ShadowPaging};
use crate::addr::{GuestPhysAddr, GuestVirtAddr, PAGE_SIZE};
use guest_abi::pte::{is_zero_on_demand, zero_on_demand_filled};

/// Passes over the kernel stack before giving up on pinning it at the
/// bound: one may reclaim for the tables the other pages hold, one more
/// for the stack's own tables after a gentle reclaim; a third that still
/// reclaims means the stack alone does not fit.
const PIN_PASSES: usize = 3;

/// What to do about a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultDecision {
    /// The shadow now maps the page (or the guest's entry changed while we
    /// looked): resume the guest, which retries the access.
    Fixed,
    /// The guest's own tables forbid the access: deliver a page fault to
    /// the guest.
    Reflect {
        /// The faulting address, for the guest's CR2.
        address: GuestVirtAddr,
        /// The error code, as the CPU would have made it from the guest's
        /// tables.
        error_code: u64,
    },
    /// The guest's tables are malformed (or the host is out of frames):
    /// kill the guest with this reason.
    Kill(PagingError),
    /// The address has a zero-on-demand entry that allows the access: the
    /// caller takes a page from the faulting vCPU's zero pool and has it
    /// mapped ([`ShadowPaging::map_zero_page`]), or, with the pool empty,
    /// reflects the fault as not present.
    ZeroOnDemand(ZeroRequest),
}

/// A fault on a zero-on-demand entry (`guest_abi::pte`, "Pages the host
/// fills with zeros"), as [`ShadowPaging::demand_page`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroRequest {
    /// The faulting address.
    pub address: GuestVirtAddr,
    /// The hardware error code.
    pub error_code: u64,
}

/// What became of a page lent for a [`ZeroRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroFill {
    /// Mapped (or the guest killed over it): the page is the guest's entry's
    /// now, and the fault is decided.
    Used(FaultDecision),
    /// The guest changed the entry meanwhile (another vCPU of it): the page
    /// was not used, and the guest simply retries the access.
    Unused,
}

/// What filling one page came to, before it is told to the caller.
enum Fill {
    /// Mapped; the guest page (4 KiB) the address lands in.
    Mapped(GuestPhysAddr),
    Raced,
    Forbidden {
        present: bool,
    },
    /// The shadow already mapped the page with every right the access
    /// needs: the CPU faulted for a reason the walk does not model.
    NoProgress,
    /// A zero-on-demand entry whose rights allow the access (the walk down
    /// to it is kept in `zero_walk`).
    ZeroOnDemand,
}

impl ShadowPaging {
    /// (i) Handles a page fault at `vaddr` with the hardware `error_code`,
    /// in the running address space. Inlined into the exit handler: out of
    /// line it costs every fault some 30 instructions.
    #[inline(always)]
    pub fn demand_page<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        vaddr: GuestVirtAddr,
        error_code: u64,
    ) -> FaultDecision {
        let access = Access::from_error_code(error_code);
        let filled = self.fill(mem, frames, vaddr, access, true);
        self.decide(filled, vaddr, error_code)
    }

    /// What a fill at `vaddr` for a fault with `error_code` comes to.
    /// Inlined: every fault takes it.
    #[inline(always)]
    fn decide(
        &mut self,
        filled: Result<Fill, PagingError>,
        vaddr: GuestVirtAddr,
        error_code: u64,
    ) -> FaultDecision {
        let access = Access::from_error_code(error_code);
        match filled {
            Ok(Fill::Mapped(_)) => {
                self.stats.faults_fixed += 1;
                FaultDecision::Fixed
            }
            Ok(Fill::Raced) => {
                self.stats.faults_raced += 1;
                FaultDecision::Fixed
            }
            Ok(Fill::Forbidden { present }) => {
                self.stats.faults_reflected += 1;
                FaultDecision::Reflect {
                    address: vaddr,
                    error_code: access.error_code(present),
                }
            }
            // Mapping it again would change nothing, and the guest would
            // fault again at once, for ever: a gap in the model (SMEP was
            // one), reported with the fault rather than looped on.
            Ok(Fill::NoProgress) if self.retry_for_another_vcpu(vaddr, error_code) => {
                self.stats.faults_retried += 1;
                FaultDecision::Fixed
            }
            Ok(Fill::NoProgress) => {
                FaultDecision::Kill(PagingError::FaultWithoutProgress { vaddr, error_code })
            }
            Ok(Fill::ZeroOnDemand) => FaultDecision::ZeroOnDemand(ZeroRequest {
                address: vaddr,
                error_code,
            }),
            Err(reason) => FaultDecision::Kill(reason),
        }
    }

    /// What a [`ZeroRequest`] comes to when the guest's zero pool is empty:
    /// the fault is the guest's, as for any not-present entry.
    pub fn zero_pool_empty(&mut self, request: ZeroRequest) -> FaultDecision {
        self.stats.faults_reflected += 1;
        FaultDecision::Reflect {
            address: request.address,
            error_code: Access::from_error_code(request.error_code).error_code(false),
        }
    }

    /// Maps guest page `page`, lent by the guest in its zero pool, at the
    /// zero-on-demand entry of `request`: fills it with zeros, writes the
    /// guest's entry over the zero-on-demand one (with an atomic exchange,
    /// as another vCPU of the guest may be writing it), and then handles the
    /// fault as if the entry had always been there. One exit, where the
    /// guest's own handler would have cost two (the reflected fault, and its
    /// report of the new entry).
    pub fn map_zero_page<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        request: ZeroRequest,
        page: GuestPhysAddr,
    ) -> ZeroFill {
        let kill = |gpa| ZeroFill::Used(FaultDecision::Kill(PagingError::GuestMemory { gpa }));
        let Some((_, walk)) = self
            .zero_walk
            .take()
            .filter(|&(at, _)| at == request.address)
        else {
            return ZeroFill::Unused;
        };
        if mem.zero_page(page).is_err() {
            return kill(page);
        }
        let (entry_gpa, entry) = (walk.leaf_gpa(), walk.leaf());
        let access = Access::from_error_code(request.error_code);
        let filled = zero_on_demand_filled(entry.raw(), page.as_u64(), access.write);
        match mem.compare_exchange_u64(entry_gpa, entry.raw(), filled) {
            Ok(true) => {}
            Ok(false) => return ZeroFill::Unused,
            Err(_) => return kill(entry_gpa),
        }
        self.stats.pages_zeroed += 1;
        // The walk as it would be now: no need to make it again.
        let walk = walk.with_leaf(GuestEntry::new(filled), page);
        let mapped = self.fill_walk(mem, frames, request.address, access, true, &walk);
        ZeroFill::Used(self.decide(mapped, request.address, request.error_code))
    }

    /// Walks, judges, updates the guest's bits and maps: the body of
    /// [`Self::demand_page`]. `cpu_faulted`: the CPU refused this access
    /// (not the host's own access on the guest's behalf), so a shadow that
    /// already allows it means the fault cannot be fixed.
    fn fill<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        vaddr: GuestVirtAddr,
        access: Access,
        cpu_faulted: bool,
    ) -> Result<Fill, PagingError> {
        // The switcher's slot: nothing of the guest's can be there, so to
        // the guest it is simply not mapped (a stray pointer in guest user
        // code must not kill the whole guest).
        if vaddr.in_switcher_slot() {
            return Ok(Fill::Forbidden { present: false });
        }
        let root = self.roots.current().guest_root;
        // Borrowed, not moved out: the walk is a hundred bytes to copy.
        let outcome = self.walk(mem, root, vaddr)?;
        let walk = match &outcome {
            WalkOutcome::Mapped(walk) => walk,
            WalkOutcome::NotPresent(partial)
                if partial.leaf_level == Level::L1
                    && is_zero_on_demand(partial.leaf().raw())
                    && access.allowed_by(partial.rights.narrowed_by(partial.leaf().flags())) =>
            {
                self.zero_walk = Some((vaddr, *partial));
                return Ok(Fill::ZeroOnDemand);
            }
            WalkOutcome::NotPresent(_) => return Ok(Fill::Forbidden { present: false }),
        };
        self.fill_walk(mem, frames, vaddr, access, cpu_faulted, walk)
    }

    /// Walks the guest's tables for `vaddr` in `root`: from the level-1
    /// table on when the upper walk the eager fill kept covers it and its
    /// entries still hold (a fault near a page the guest just reported,
    /// as the next touches of a growing heap or stack are), else all four
    /// levels. A fault does not keep its own walk: measured, keeping one
    /// at every fault cost more (a new process's faults each land somewhere
    /// else: `ctxsw_miss` +55 instructions) than it saved.
    #[inline(always)]
    fn walk<M: GuestMemory>(
        &self,
        mem: &M,
        root: GuestPhysAddr,
        vaddr: GuestVirtAddr,
    ) -> Result<WalkOutcome, PagingError> {
        match &self.upper_walk {
            Some(upper) if upper.covers(root, vaddr) && upper.holds(mem) => {
                upper.walk_leaf(mem, vaddr, &self.limits)
            }
            _ => walk_guest(mem, root, vaddr, &self.limits),
        }
    }

    /// The rest of [`Self::fill`], once the guest's tables are walked and
    /// show a page.
    #[inline(always)]
    fn fill_walk<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        vaddr: GuestVirtAddr,
        access: Access,
        cpu_faulted: bool,
        walk: &GuestWalk,
    ) -> Result<Fill, PagingError> {
        if !access.allowed_by(walk.rights) {
            return Ok(Fill::Forbidden { present: true });
        }
        let Some(dirty) = Self::mark_accessed(mem, walk, access.write)? else {
            return Ok(Fill::Raced);
        };
        let leaf = self.shadow_leaf_for(mem, walk, dirty, vaddr)?;
        if vaddr.is_upper_half()
            && self
                .kernel_translation
                .is_some_and(|t| t.vpage == vaddr.page_base())
        {
            // Mapped again (a first write, or an entry the guest changed
            // without saying so): the host's note follows the new leaf.
            self.kernel_translation = None;
        }
        // One walk of the shadow serves the check and the write: where the
        // leaf's table exists (a neighbour was mapped, or this page read
        // before its first write), the leaf is written there at once.
        let root = self.roots.current().shadow;
        let Some(table) = Self::find_table(frames, root, vaddr, Level::L1) else {
            self.map_page_reclaiming(frames, vaddr, leaf)?;
            return Ok(Fill::Mapped(walk.page));
        };
        let index = TableIndex::of(vaddr, Level::L1);
        let existing = ShadowEntry::from_raw(frames.read_entry(table, index));
        if cpu_faulted && Self::already_allows(existing, leaf, access) {
            return Ok(Fill::NoProgress);
        }
        if existing.raw() == 0 {
            self.write_shadow(frames, table, index, leaf);
        } else {
            // In use before and after: the table's bitmap stays as it is.
            // Another frame than before (the guest changed the entry without
            // saying so) takes the old one from whoever shares the table.
            if vaddr.is_upper_half() && existing.frame() != leaf.frame() {
                self.owe_shootdown(self.other_vcpus());
            }
            frames.write_entry(table, index, leaf.raw());
        }
        Ok(Fill::Mapped(walk.page))
    }

    /// Whether a fault the shadow already allows may be another vCPU's
    /// doing: with several vCPUs, this one may have faulted through a
    /// translation older than another's fill (or its widening of a
    /// read-only page), and entering again, which loads CR3, is all it
    /// needs. The same fault again on the same vCPU with no fill in
    /// between is no such thing, and kills as with one vCPU.
    fn retry_for_another_vcpu(&mut self, vaddr: GuestVirtAddr, error_code: u64) -> bool {
        if !self.shared_by_vcpus() {
            return false;
        }
        let this = (self.active_vcpu, vaddr, error_code, self.stats.faults_fixed);
        if self.retried_fault == Some(this) {
            return false;
        }
        self.retried_fault = Some(this);
        true
    }

    /// Whether the shadow leaf `existing` already maps the frame of `leaf`
    /// (what the fill would write) with every right `access` needs: the
    /// CPU should not have faulted. The accessed and dirty bits are the
    /// CPU's to set in a shadow entry, so they are not compared.
    fn already_allows(existing: ShadowEntry, leaf: ShadowEntry, access: Access) -> bool {
        let flags = existing.flags();
        existing.is_present()
            && existing.frame() == leaf.frame()
            && (!access.write || flags.contains(PteFlags::WRITABLE))
            && (!access.user || flags.contains(PteFlags::USER))
            && (!access.fetch || !flags.contains(PteFlags::NO_EXECUTE))
    }

    /// The host's own access to guest-virtual `vaddr` on the guest's behalf
    /// (writing a trap frame to its stack, reading a hypercall's buffer):
    /// judged by the guest's tables exactly like the guest's own access,
    /// with the accessed and dirty bits set and the page mapped, but not
    /// counted as a guest fault. Gives the guest-physical address, or
    /// `None` if the guest's tables forbid the access.
    pub fn access_for_guest<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        vaddr: GuestVirtAddr,
        access: Access,
    ) -> Result<Option<GuestPhysAddr>, PagingError> {
        let offset = vaddr.as_u64() & 0xfff;
        let kernel = vaddr.is_upper_half() && !access.user && !access.fetch;
        if kernel
            && let Some(last) = self.kernel_translation
            && last.vpage == vaddr.page_base()
            && (last.writable || !access.write)
        {
            return Ok(last.page.checked_add(offset));
        }
        // Two tries: the first may find the guest changing an entry.
        for _ in 0..2 {
            match self.fill(mem, frames, vaddr, access, false)? {
                Fill::Mapped(page) => {
                    if kernel {
                        self.kernel_translation = Some(KernelTranslation {
                            vpage: vaddr.page_base(),
                            page,
                            writable: access.write,
                        });
                    }
                    return Ok(page.checked_add(offset));
                }
                Fill::Raced => continue,
                // The host's own accesses never take from the zero pool: to
                // them a zero-on-demand page is not mapped, as to the CPU.
                Fill::Forbidden { .. } | Fill::NoProgress | Fill::ZeroOnDemand => {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// A kernel-half shadow entry was dropped or replaced (or the whole
    /// half): what the host remembered of the half's shadow, the stacks
    /// pinned and its own last translation there, may be stale.
    pub(super) fn kernel_half_changed(&mut self) {
        self.pinned_stacks.forget_all();
        self.kernel_translation = None;
        if !self.parked.is_empty() {
            self.kernel_half_dropped_for_parked();
        }
    }

    /// Sets accessed in every entry of the walk, and dirty in the leaf for
    /// a write, as the CPU would. Returns whether the leaf is now dirty, or
    /// `None` if the guest changed an entry under us (the guest will fault
    /// again and we walk afresh).
    fn mark_accessed<M: GuestMemory>(
        mem: &mut M,
        walk: &GuestWalk,
        write: bool,
    ) -> Result<Option<bool>, PagingError> {
        let Some((&(leaf_gpa, leaf), upper)) = walk.entries().split_last() else {
            return Ok(Some(false));
        };
        // Above the leaf, accessed is nearly always set already: one test
        // each, and a write only when it is not.
        for &(gpa, entry) in upper {
            if !entry.flags().contains(PteFlags::ACCESSED)
                && !Self::swap_entry(mem, gpa, entry, entry.with(PteFlags::ACCESSED))?
            {
                return Ok(None);
            }
        }
        let mut wanted = leaf.with(PteFlags::ACCESSED);
        if write {
            wanted = wanted.with(PteFlags::DIRTY);
        }
        if wanted != leaf && !Self::swap_entry(mem, leaf_gpa, leaf, wanted)? {
            return Ok(None);
        }
        Ok(Some(wanted.flags().contains(PteFlags::DIRTY)))
    }

    /// Replaces guest entry `current` at `gpa` with `wanted` if the guest
    /// has not changed it meanwhile; says whether it did.
    fn swap_entry<M: GuestMemory>(
        mem: &mut M,
        gpa: GuestPhysAddr,
        current: GuestEntry,
        wanted: GuestEntry,
    ) -> Result<bool, PagingError> {
        mem.compare_exchange_u64(gpa, current.raw(), wanted.raw())
            .map_err(|_| PagingError::GuestMemory { gpa })
    }

    /// The shadow leaf for a walk: the host frame behind the guest page,
    /// with the walk's rights, writable only once the guest's leaf is dirty.
    /// Inlined: every fill makes one, and out of line the call and the
    /// error's construction cost a fault some 30 instructions.
    #[inline(always)]
    pub(super) fn shadow_leaf_for<M: GuestMemory>(
        &self,
        mem: &M,
        walk: &GuestWalk,
        dirty: bool,
        vaddr: GuestVirtAddr,
    ) -> Result<ShadowEntry, PagingError> {
        let frame = mem
            .host_frame(walk.page)
            .ok_or(PagingError::OutsideGuestMemory {
                value: walk.leaf().raw(),
                level: walk.leaf_level,
                vaddr,
                gpa: walk.page,
                memory_size: self.limits.memory_size,
            })?;
        Ok(ShadowEntry::page(frame, walk.rights, dirty))
    }

    /// (ii) Records where the guest kernel stack is (`pages` pages ending
    /// at `top`, the value of the guest's ring-1 stack pointer) and pins it
    /// in the running root.
    pub fn set_kernel_stack<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        top: u64,
        pages: u64,
    ) -> Result<(), PagingError> {
        let bad = PagingError::BadStack { top, pages };
        if pages == 0 || pages > MAX_STACK_PAGES {
            return Err(bad);
        }
        // The lowest byte of the stack and the highest must be canonical
        // and in the same half, outside the switcher slot.
        let highest = top.checked_sub(1).ok_or(bad)?;
        let lowest = top.checked_sub(pages * PAGE_SIZE).ok_or(bad)?;
        let (Ok(low), Ok(high)) = (
            GuestVirtAddr::try_new(lowest),
            GuestVirtAddr::try_new(highest),
        ) else {
            return Err(bad);
        };
        if low.is_upper_half() != high.is_upper_half() || high.in_switcher_slot() {
            return Err(bad);
        }
        let stack = KernelStack {
            bottom: low.page_base(),
            pages: pages + u64::from(low.page_base() != low),
        };
        if self.reuse_pinned_stack(top, pages) {
            return Ok(());
        }
        self.stack = Some(stack);
        self.pin_stack(mem, frames)?;
        if stack.bottom.is_upper_half() {
            self.pinned_stacks.remember(top, pages, stack);
        }
        Ok(())
    }

    /// (ii) Makes the kernel stack `pages` pages ending at `top` again, if
    /// it is one pinned before with no kernel-half shadow entry dropped
    /// since ([`PinnedStacks`]): it is still mapped writable in every root
    /// (the half is shared), and it passed every check when it was named,
    /// so there is nothing to check or walk. Says whether it was; if not,
    /// name it with [`Self::set_kernel_stack`]. A guest OS names the next
    /// process's stack at every context switch: this is that switch's
    /// common case.
    pub fn reuse_pinned_stack(&mut self, top: u64, pages: u64) -> bool {
        match self.pinned_stacks.find(top, pages) {
            Some(stack) => {
                self.stack = Some(stack);
                true
            }
            None => false,
        }
    }

    /// Forgets the kernel stack (a refused first stack leaves none).
    pub fn forget_kernel_stack(&mut self) {
        self.stack = None;
        self.stack_needs_pin = false;
    }

    /// (ii) Makes sure every page of the kernel stack is mapped writable in
    /// the running root, faulting the missing ones in as supervisor writes.
    /// An error here means a trap could not be delivered: kill the guest.
    pub fn pin_stack<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
    ) -> Result<(), PagingError> {
        let Some(stack) = self.stack else {
            self.stack_needs_pin = false;
            return Ok(());
        };
        // Pinning one page may reach the bound on shadow frames, and the
        // reclaim may throw away the pages pinned before it: the pass is
        // done again until one needs no reclaim. A stack that keeps
        // reclaiming itself does not fit in the bound at all, and no trap
        // could be delivered.
        for _ in 0..PIN_PASSES {
            let reclaims = self.stats.reclaims;
            for page in 0..stack.pages {
                let vaddr = GuestVirtAddr::new_truncate(stack.bottom.as_u64() + page * PAGE_SIZE);
                self.pin_page(mem, frames, vaddr)?;
            }
            if self.stats.reclaims == reclaims {
                self.stack_needs_pin = false;
                return Ok(());
            }
        }
        Err(PagingError::ShadowLimit {
            limit: self.frame_limit,
            vaddr: stack.bottom,
        })
    }

    /// Pins one stack page. Two tries: the first may find the guest
    /// changing the entry under us.
    fn pin_page<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        vaddr: GuestVirtAddr,
    ) -> Result<(), PagingError> {
        let write = Access::KERNEL_WRITE;
        for _ in 0..2 {
            if self.maps_writable(frames, vaddr) {
                return Ok(());
            }
            match self.demand_page(mem, frames, vaddr, write.error_code(false)) {
                FaultDecision::Fixed => {}
                FaultDecision::Reflect { error_code, .. } => {
                    return Err(PagingError::StackNotMapped { vaddr, error_code });
                }
                // A stack is pinned before the guest runs on it, so there is
                // no fault of the guest's to take a zeroed page for.
                FaultDecision::ZeroOnDemand(_) => {
                    return Err(PagingError::StackNotMapped {
                        vaddr,
                        error_code: write.error_code(false),
                    });
                }
                FaultDecision::Kill(reason) => return Err(reason),
            }
        }
        if self.maps_writable(frames, vaddr) {
            Ok(())
        } else {
            Err(PagingError::StackNotMapped {
                vaddr,
                error_code: write.error_code(true),
            })
        }
    }

    /// Whether the running root maps `vaddr` writable (lguest's quick
    /// check before the full fault path).
    pub fn maps_writable<F: ShadowFrames>(&self, frames: &F, vaddr: GuestVirtAddr) -> bool {
        let leaf = Self::shadow_leaf(frames, self.roots.current().shadow, vaddr);
        leaf.flags()
            .contains(PteFlags::PRESENT | PteFlags::WRITABLE)
    }

    /// Whether a dropped shadow entry at `level` for `vaddr` may have mapped
    /// part of the kernel stack; if so the stack is re-pinned before the
    /// guest runs again.
    pub(super) fn note_dropped(&mut self, vaddr: GuestVirtAddr, level: Level) {
        if vaddr.is_upper_half() {
            self.kernel_half_changed();
        }
        if self.stack.is_some_and(|stack| stack.overlaps(vaddr, level)) {
            self.stack_needs_pin = true;
        }
    }
}

/// The host's own last translation in the kernel half, for its accesses
/// on the guest's behalf ([`ShadowPaging::access_for_guest`]): delivering a
/// trap writes its frame to the guest kernel's stack, the same page again
/// and again, and each write would walk the guest's tables afresh. It says
/// no more than the shadow leaf the fill wrote (the guest's tables allowed
/// this kind of access, and its accessed bits, and dirty bit for a write,
/// are set) and is forgotten whenever that leaf may go or change (any
/// kernel-half drop, [`ShadowPaging::kernel_half_changed`], or the page
/// filled again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KernelTranslation {
    /// The guest-virtual page.
    vpage: GuestVirtAddr,
    /// The guest page behind it.
    page: GuestPhysAddr,
    /// Whether it was a write (else a read: a write must fill first).
    writable: bool,
}

/// How many kernel-half stacks [`PinnedStacks`] remembers: as many as a
/// guest OS has processes taking turns in the cache's largest setting.
const PINNED_STACKS: usize = super::MAX_CACHED_ROOTS;

/// One stack remembered: as the guest named it, and the pages it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pinned {
    top: u64,
    pages: u64,
    stack: KernelStack,
}

/// The kernel-half stacks pinned since the last kernel-half shadow entry
/// was dropped. The kernel half's shadow is shared by every root, so such a
/// stack stays mapped writable whichever root runs, until an entry of the
/// half is dropped or replaced ([`ShadowPaging::note_dropped`], the half
/// dropped whole), which forgets them all: a switch back to one of them
/// (the next context switch of a guest OS) need not walk its pages again.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PinnedStacks {
    stacks: [Option<Pinned>; PINNED_STACKS],
    /// The slot the next stack remembered takes (oldest first).
    next: usize,
}

impl PinnedStacks {
    /// The pages of the stack named `top`, `pages` if it is pinned still.
    /// The slots fill from the first, so the search stops at the first
    /// empty one (a guest OS with two processes looks at two).
    fn find(&self, top: u64, pages: u64) -> Option<KernelStack> {
        self.stacks
            .iter()
            .map_while(|s| *s)
            .find(|s| s.top == top && s.pages == pages)
            .map(|s| s.stack)
    }

    /// Records that the stack named `top`, `pages` (in the kernel half,
    /// covering `stack`) is pinned now.
    fn remember(&mut self, top: u64, pages: u64, stack: KernelStack) {
        if self.find(top, pages).is_some() {
            return;
        }
        if let Some(slot) = self.stacks.get_mut(self.next) {
            *slot = Some(Pinned { top, pages, stack });
        }
        self.next = (self.next + 1) % PINNED_STACKS;
    }

    /// A kernel-half shadow entry was dropped: any of them may be unmapped.
    pub(super) fn forget_all(&mut self) {
        if self.stacks[0].is_some() {
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testing::*;
    use crate::paging::{FaultCode, PagingConfig, PteFlags};
    use guest_abi::pte;

    const USER_VA: u64 = 0x40_0000;
    const KERNEL_VA: u64 = 0xffff_8000_0020_0000;
    const READ: u64 = 0;
    const WRITE: u64 = FaultCode::WRITE.bits();
    const USER: u64 = FaultCode::USER.bits();
    const FETCH: u64 = FaultCode::FETCH.bits();

    fn fixture() -> Fixture {
        Fixture::new(PagingConfig::default())
    }

    /// A fault at [`USER_VA`] reflected to the guest with `code`.
    fn reflect(code: u64) -> FaultDecision {
        FaultDecision::Reflect {
            address: GuestVirtAddr::try_new(USER_VA).unwrap(),
            error_code: code,
        }
    }

    #[test]
    fn a_read_maps_read_only_and_a_write_then_sets_dirty() {
        let mut f = fixture();
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
        assert_eq!(f.fault(USER_VA, USER), FaultDecision::Fixed);
        let leaf = f.leaf(USER_VA);
        assert_eq!(leaf.frame(), Ok(FakeGuestMemory::backing(5)));
        assert!(!leaf.flags().contains(PteFlags::WRITABLE));
        assert!(leaf.flags().contains(PteFlags::USER));
        let guest = f.guest_entry(ROOT_A, USER_VA, Level::L1);
        assert_eq!(guest & (pte::ACCESSED | pte::DIRTY), pte::ACCESSED);
        let top = f.guest_entry(ROOT_A, USER_VA, Level::L4);
        assert_ne!(top & pte::ACCESSED, 0, "every level of the walk is marked");

        assert_eq!(f.fault(USER_VA, USER | WRITE | 1), FaultDecision::Fixed);
        assert!(f.leaf(USER_VA).flags().contains(PteFlags::WRITABLE));
        assert_ne!(f.guest_entry(ROOT_A, USER_VA, Level::L1) & pte::DIRTY, 0);
        assert_eq!(f.paging.stats().faults_fixed, 2);
        f.teardown();
    }

    /// A fault on a zero-on-demand entry asks for a page; the page lent is
    /// zeroed, written into the guest's entry (accessed, dirty only for a
    /// write) and mapped, all in the one exit.
    #[test]
    fn a_zero_on_demand_entry_is_filled_with_a_lent_page() {
        let mut f = fixture();
        let marker = pte::zero_on_demand(pte::WRITABLE | pte::USER | (1 << 9));
        f.write(ROOT_A, USER_VA, Level::L1, marker);
        let page = 0x9000;
        f.mem.set(page + 8, 0xdead_beef);
        let FaultDecision::ZeroOnDemand(request) = f.fault(USER_VA, USER) else {
            panic!("a zero-on-demand entry must ask for a page");
        };
        let used =
            f.paging
                .map_zero_page(&mut f.mem, &mut f.frames, request, GuestPhysAddr::new(page));
        assert_eq!(used, ZeroFill::Used(FaultDecision::Fixed));
        assert_eq!(f.mem.get(page + 8), 0, "the page is zeroed");
        let entry = f.guest_entry(ROOT_A, USER_VA, Level::L1);
        let flags = pte::PRESENT | pte::ACCESSED | pte::WRITABLE | pte::USER | (1 << 9);
        assert_eq!(entry, page | flags, "no dirty bit for a read");
        let leaf = f.leaf(USER_VA);
        assert_eq!(leaf.frame(), Ok(FakeGuestMemory::backing(9)));
        assert!(
            !leaf.flags().contains(PteFlags::WRITABLE),
            "read-only until written"
        );
        let stats = f.paging.stats();
        assert_eq!((stats.pages_zeroed, stats.faults_fixed), (1, 1));
        assert_eq!(stats.faults_reflected, 0);
        f.teardown();
    }

    #[test]
    fn a_write_to_a_zero_on_demand_entry_maps_it_dirty_and_writable() {
        let mut f = fixture();
        f.write(
            ROOT_A,
            USER_VA,
            Level::L1,
            pte::zero_on_demand(pte::WRITABLE),
        );
        let FaultDecision::ZeroOnDemand(request) = f.fault(USER_VA, WRITE) else {
            panic!("a zero-on-demand entry must ask for a page");
        };
        let page = GuestPhysAddr::new(0xa000);
        f.paging
            .map_zero_page(&mut f.mem, &mut f.frames, request, page);
        assert_ne!(f.guest_entry(ROOT_A, USER_VA, Level::L1) & pte::DIRTY, 0);
        assert!(f.leaf(USER_VA).flags().contains(PteFlags::WRITABLE));
        f.teardown();
    }

    /// An access the entry's rights forbid, or a mark anywhere but a
    /// level-1 entry with no address, is an ordinary not-present fault:
    /// the guest's, and no page is asked for.
    #[test]
    fn zero_on_demand_needs_the_rights_and_a_level_1_entry_without_address() {
        let mut f = fixture();
        f.write(ROOT_A, USER_VA, Level::L1, pte::zero_on_demand(pte::USER));
        assert_eq!(f.fault(USER_VA, USER | WRITE), reflect(USER | WRITE));
        f.write(ROOT_A, USER_VA, Level::L1, pte::zero_on_demand(0));
        assert_eq!(f.fault(USER_VA, USER), reflect(USER), "supervisor only");
        let with_address = pte::zero_on_demand(pte::USER) | 0x5000;
        f.write(ROOT_A, USER_VA, Level::L1, with_address);
        assert_eq!(
            f.fault(USER_VA, USER),
            reflect(USER),
            "the guest's own bits"
        );
        f.write(ROOT_A, USER_VA, Level::L1, 0);
        f.write(ROOT_A, USER_VA, Level::L2, pte::zero_on_demand(pte::USER));
        assert_eq!(f.fault(USER_VA, USER), reflect(USER), "a level-2 mark");
        f.teardown();
    }

    /// The entry changed between the fault and the fill (another vCPU):
    /// the page is not used and the guest's new entry stands.
    #[test]
    fn a_zero_on_demand_entry_changed_meanwhile_leaves_the_page_unused() {
        let mut f = fixture();
        f.write(ROOT_A, USER_VA, Level::L1, pte::zero_on_demand(pte::USER));
        let FaultDecision::ZeroOnDemand(request) = f.fault(USER_VA, USER) else {
            panic!("a zero-on-demand entry must ask for a page");
        };
        f.write(ROOT_A, USER_VA, Level::L1, 0);
        let page = GuestPhysAddr::new(0xa000);
        let used = f
            .paging
            .map_zero_page(&mut f.mem, &mut f.frames, request, page);
        assert_eq!(used, ZeroFill::Unused);
        assert_eq!(f.guest_entry(ROOT_A, USER_VA, Level::L1), 0);
        assert_eq!(f.paging.stats().pages_zeroed, 0);
        // A page that is not the guest's kills, with the address named.
        f.write(ROOT_A, USER_VA, Level::L1, pte::zero_on_demand(pte::USER));
        let FaultDecision::ZeroOnDemand(request) = f.fault(USER_VA, USER) else {
            panic!("a zero-on-demand entry must ask for a page");
        };
        let outside = GuestPhysAddr::new(MEMORY_SIZE);
        assert!(matches!(
            f.paging.map_zero_page(&mut f.mem, &mut f.frames, request, outside),
            ZeroFill::Used(FaultDecision::Kill(PagingError::GuestMemory { gpa })) if gpa == outside
        ));
        f.teardown();
    }

    /// The host's own accesses (a trap frame, a hypercall's buffer) never
    /// take from the pool: a zero-on-demand page is not mapped to them.
    #[test]
    fn the_hosts_own_accesses_do_not_fill_zero_on_demand_entries() {
        let mut f = fixture();
        f.write(
            ROOT_A,
            USER_VA,
            Level::L1,
            pte::zero_on_demand(pte::WRITABLE),
        );
        let va = GuestVirtAddr::try_new(USER_VA).unwrap();
        let got = f
            .paging
            .access_for_guest(&mut f.mem, &mut f.frames, va, Access::KERNEL_WRITE);
        assert_eq!(got, Ok(None));
        f.teardown();
    }

    /// A fault under the level-1 table the eager fill last walked reads
    /// only its leaf; but the upper entries are read again each time, and
    /// a change there is seen as by a full walk.
    #[test]
    fn a_fault_near_a_reported_page_uses_the_kept_walk_but_believes_only_the_tables() {
        let mut f = fixture();
        // The upper levels accessed (a fault marks them), then a report
        // that the eager fill maps: it keeps its walk.
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
        assert_eq!(f.fault(USER_VA, USER), FaultDecision::Fixed);
        let reported = 0x6000 | pte::PRESENT | pte::WRITABLE | pte::USER | pte::ACCESSED;
        f.write(ROOT_A, USER_VA + 0x1000, Level::L1, reported);
        f.set_entry(ROOT_A, USER_VA + 0x1000, Level::L1, reported)
            .unwrap();
        assert_eq!(f.paging.stats().eager_fills, 1);
        // A neighbour, under the same table: filled through the kept walk,
        // with the rights of every level.
        f.map(ROOT_A, USER_VA + 0x2000, 0x7000, pte::WRITABLE | pte::USER);
        assert_eq!(
            f.fault(USER_VA + 0x2000, USER | WRITE),
            FaultDecision::Fixed
        );
        let leaf = f.leaf(USER_VA + 0x2000);
        assert_eq!(leaf.frame(), Ok(FakeGuestMemory::backing(7)));
        assert!(leaf.flags().contains(PteFlags::WRITABLE));
        // A malformed leaf there still kills.
        f.write(
            ROOT_A,
            USER_VA + 0x3000,
            Level::L1,
            MEMORY_SIZE | pte::PRESENT,
        );
        assert!(matches!(
            f.fault(USER_VA + 0x3000, USER),
            FaultDecision::Kill(PagingError::OutsideGuestMemory { .. })
        ));
        // The level-2 entry made read-only, unreported: a write fault on a
        // fourth page is the guest's (a full walk sees the change).
        let l2 = f.entry_gpa(ROOT_A, USER_VA, Level::L2, 0);
        let entry = f.mem.get(l2);
        f.mem.set(l2, entry & !pte::WRITABLE);
        f.map(ROOT_A, USER_VA + 0x4000, 0x8000, pte::WRITABLE | pte::USER);
        assert_eq!(
            f.fault(USER_VA + 0x4000, USER | WRITE),
            FaultDecision::Reflect {
                address: GuestVirtAddr::try_new(USER_VA + 0x4000).unwrap(),
                error_code: 1 | USER | WRITE,
            }
        );
        f.teardown();
    }

    #[test]
    fn a_read_of_an_already_dirty_page_maps_it_writable() {
        let mut f = fixture();
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::DIRTY);
        assert_eq!(f.fault(USER_VA, READ), FaultDecision::Fixed);
        assert!(f.leaf(USER_VA).flags().contains(PteFlags::WRITABLE));
        f.teardown();
    }

    #[test]
    fn forbidden_accesses_are_reflected_with_the_guests_error_code() {
        let mut f = fixture();
        assert_eq!(f.fault(USER_VA, READ), reflect(0), "nothing mapped");
        f.map(ROOT_A, USER_VA, 0x5000, pte::NO_EXECUTE);
        assert_eq!(
            f.fault(USER_VA, WRITE),
            reflect(1 | WRITE),
            "read-only, WP on"
        );
        assert_eq!(f.fault(USER_VA, USER), reflect(1 | USER), "supervisor page");
        assert_eq!(
            f.fault(USER_VA, FETCH),
            reflect(1 | FETCH),
            "no-execute page"
        );
        assert_eq!(f.paging.stats().faults_reflected, 4);
        assert!(!f.leaf(USER_VA).is_present());
        // Rights at a higher level count too.
        let top = f.guest_entry(ROOT_A, USER_VA, Level::L3);
        let at = f.entry_gpa(ROOT_A, USER_VA, Level::L3, 0);
        f.mem.set(at, top | pte::NO_EXECUTE);
        f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
        assert_eq!(f.fault(USER_VA, FETCH | USER), reflect(1 | FETCH | USER));
        f.teardown();
    }

    #[test]
    fn malformed_entries_kill_with_the_reason() {
        let mut f = fixture();
        f.map(ROOT_A, USER_VA, MEMORY_SIZE, 0);
        let FaultDecision::Kill(reason) = f.fault(USER_VA, READ) else {
            panic!("expected a kill");
        };
        assert_eq!(
            std::format!("{reason}"),
            "guest entry 0x100000001 at level 1 for gva:0x400000 maps gpa:0x100000000 \
             outside guest memory (size 0x100000000)"
        );
        f.write(ROOT_A, USER_VA, Level::L1, (1 << 50) | 0x5001);
        assert!(matches!(
            f.fault(USER_VA, READ),
            FaultDecision::Kill(PagingError::ReservedBits {
                bits: 0x4_0000_0000_0000,
                ..
            })
        ));
        f.teardown();
    }

    #[test]
    fn large_pages_are_split_into_small_shadow_pages() {
        let mut f = fixture();
        // A 2 MiB page at gpa 6 MiB and a 1 GiB page at gpa 1 GiB.
        let big = 6 << 20;
        f.write(
            ROOT_A,
            USER_VA,
            Level::L2,
            big | pte::HUGE_PAGE | pte::LARGE_PAGE_PAT | 1,
        );
        let giant_va = 0x80_0000_0000;
        f.write(ROOT_A, giant_va, Level::L3, (1 << 30) | pte::HUGE_PAGE | 3);
        assert_eq!(f.fault(USER_VA + 0x3000, READ), FaultDecision::Fixed);
        assert_eq!(
            f.leaf(USER_VA + 0x3000).frame(),
            Ok(FakeGuestMemory::backing((big >> 12) + 3))
        );
        assert!(
            !f.leaf(USER_VA).is_present(),
            "only the faulting piece is mapped"
        );
        let offset = 0x1234_5000;
        assert_eq!(f.fault(giant_va + offset, WRITE), FaultDecision::Fixed);
        let leaf = f.leaf(giant_va + offset);
        assert_eq!(
            leaf.frame(),
            Ok(FakeGuestMemory::backing(((1 << 30) + offset) >> 12))
        );
        assert!(leaf.flags().contains(PteFlags::WRITABLE));
        assert_ne!(f.guest_entry(ROOT_A, giant_va, Level::L3) & pte::DIRTY, 0);
        // A misaligned large page is malformed.
        f.write(
            ROOT_A,
            USER_VA,
            Level::L2,
            (big + 0x2000) | pte::HUGE_PAGE | 1,
        );
        assert!(matches!(
            f.fault(USER_VA, READ),
            FaultDecision::Kill(PagingError::MisalignedLargePage { .. })
        ));
        f.teardown();
    }

    #[test]
    fn the_switcher_slot_looks_unmapped_to_the_guest() {
        let mut f = fixture();
        let va = crate::paging::SWITCHER_SLOT_BASE + 0x1000;
        assert_eq!(
            f.fault(va, WRITE | 1),
            FaultDecision::Reflect {
                address: GuestVirtAddr::try_new(va).unwrap(),
                error_code: WRITE
            }
        );
        f.teardown();
    }

    #[test]
    fn running_out_of_host_frames_kills_rather_than_panics() {
        let mut f = fixture();
        f.frames = FakeFrames::new(0);
        let mut frames = FakeFrames::new(1);
        f.paging = ShadowPaging::new(PagingConfig::default(), &f.mem, &mut frames, ROOT_A).unwrap();
        f.frames = frames;
        f.map(ROOT_A, USER_VA, 0x5000, 0);
        assert!(matches!(
            f.fault(USER_VA, READ),
            FaultDecision::Kill(PagingError::OutOfFrames { .. })
        ));
        f.teardown();
    }

    #[test]
    fn the_kernel_stack_is_pinned_writable() {
        let mut f = fixture();
        f.map(ROOT_A, KERNEL_VA, 0x7000, pte::WRITABLE);
        f.map(ROOT_A, KERNEL_VA + 0x1000, 0x8000, pte::WRITABLE);
        f.paging
            .set_kernel_stack(&mut f.mem, &mut f.frames, KERNEL_VA + 0x2000, 2)
            .unwrap();
        assert!(f.leaf(KERNEL_VA).flags().contains(PteFlags::WRITABLE));
        assert!(
            f.leaf(KERNEL_VA + 0x1000)
                .flags()
                .contains(PteFlags::WRITABLE)
        );
        // A stack the guest made read-only cannot be pinned.
        f.map(ROOT_A, KERNEL_VA + 0x1000, 0x8000, 0);
        f.set_entry(ROOT_A, KERNEL_VA + 0x1000, Level::L1, 0x8001)
            .unwrap();
        let err = f.paging.pin_stack(&mut f.mem, &mut f.frames);
        assert!(matches!(
            err,
            Err(PagingError::StackNotMapped { error_code: 3, .. })
        ));
        assert!(matches!(
            f.paging
                .set_kernel_stack(&mut f.mem, &mut f.frames, KERNEL_VA, 0),
            Err(PagingError::BadStack { .. })
        ));
        assert!(matches!(
            f.paging
                .set_kernel_stack(&mut f.mem, &mut f.frames, 0x8000_0000_1000, 1),
            Err(PagingError::BadStack { .. })
        ));
        f.teardown();
    }

    fn stack(page: u64) -> (u64, KernelStack) {
        let stack = KernelStack {
            bottom: GuestVirtAddr::new_truncate(KERNEL_VA + page * PAGE_SIZE),
            pages: 2,
        };
        (stack.bottom.as_u64() + 2 * PAGE_SIZE, stack)
    }

    fn holds(pinned: &PinnedStacks, page: u64) -> bool {
        let (top, expected) = stack(page);
        pinned.find(top, 2) == Some(expected)
    }

    #[test]
    fn pinned_stacks_are_remembered_oldest_out_and_forgotten_together() {
        let mut pinned = PinnedStacks::default();
        assert!(!holds(&pinned, 0));
        let (top, s) = stack(0);
        pinned.remember(top, 2, s);
        pinned.remember(top, 2, s);
        assert!(holds(&pinned, 0));
        // The same top with another size is another stack.
        assert_eq!(pinned.find(top, 3), None);
        assert!(!holds(&pinned, 2));
        for i in 1..=PINNED_STACKS as u64 {
            let (top, s) = stack(2 * i);
            pinned.remember(top, 2, s);
        }
        // The first was the oldest: it made room for the last.
        assert!(!holds(&pinned, 0));
        for i in 1..=PINNED_STACKS as u64 {
            assert!(holds(&pinned, 2 * i), "stack {i}");
        }
        pinned.forget_all();
        assert!((0..=PINNED_STACKS as u64).all(|i| !holds(&pinned, 2 * i)));
    }

    /// Two processes' kernel stacks taking turns: the second switch to
    /// one finds it pinned still; once a kernel-half entry under it is
    /// dropped, naming it maps it again.
    #[test]
    fn a_stack_named_again_is_pinned_again_after_a_kernel_half_drop() {
        let mut f = fixture();
        for page in 0..4 {
            let flags = pte::WRITABLE;
            f.map(
                ROOT_A,
                KERNEL_VA + page * PAGE_SIZE,
                0x7000 + page * PAGE_SIZE,
                flags,
            );
        }
        let (a, b) = (KERNEL_VA + 0x2000, KERNEL_VA + 0x4000);
        for top in [a, b, a, b] {
            f.paging
                .set_kernel_stack(&mut f.mem, &mut f.frames, top, 2)
                .unwrap();
        }
        assert!(holds(&f.paging.pinned_stacks, 0));
        assert!(holds(&f.paging.pinned_stacks, 2));
        assert!(f.paging.reuse_pinned_stack(a, 2));
        assert_eq!(f.paging.stack, Some(stack(0).1));
        // The guest re-reports stack a's lower page (unchanged, but the
        // shadow leaf is replaced by a read-only one until a write).
        let entry = f.guest_entry(ROOT_A, KERNEL_VA, Level::L1) & !pte::DIRTY;
        f.set_entry(ROOT_A, KERNEL_VA, Level::L1, entry).unwrap();
        assert!(!holds(&f.paging.pinned_stacks, 0));
        assert!(!f.paging.reuse_pinned_stack(a, 2));
        f.paging
            .set_kernel_stack(&mut f.mem, &mut f.frames, a, 2)
            .unwrap();
        assert!(f.leaf(KERNEL_VA).flags().contains(PteFlags::WRITABLE));
        assert!(holds(&f.paging.pinned_stacks, 0));
        // Dropping everything forgets every stack.
        f.paging.flush_all(&mut f.frames);
        assert!(!holds(&f.paging.pinned_stacks, 0));
        f.teardown();
    }

    /// The host's own kernel-half accesses (a trap frame written to the
    /// guest's stack) are remembered per page, and what they remember
    /// follows the guest's reports and the dirty-bit rule.
    #[test]
    fn the_hosts_last_kernel_translation_follows_reports_and_dirty_bits() {
        let mut f = fixture();
        f.map(ROOT_A, KERNEL_VA, 0x7000, pte::WRITABLE);
        let va = GuestVirtAddr::try_new(KERNEL_VA + 0x18).unwrap();
        let access = |f: &mut Fixture, access| {
            f.paging
                .access_for_guest(&mut f.mem, &mut f.frames, va, access)
                .unwrap()
        };
        // A read first: the leaf stays clean, and a write after it still
        // goes to the guest's tables to set dirty.
        assert_eq!(
            access(&mut f, Access::KERNEL_READ),
            Some(GuestPhysAddr::new(0x7018))
        );
        assert_eq!(f.guest_entry(ROOT_A, KERNEL_VA, Level::L1) & pte::DIRTY, 0);
        assert_eq!(
            access(&mut f, Access::KERNEL_WRITE),
            Some(GuestPhysAddr::new(0x7018))
        );
        assert_ne!(f.guest_entry(ROOT_A, KERNEL_VA, Level::L1) & pte::DIRTY, 0);
        assert!(f.leaf(KERNEL_VA).flags().contains(PteFlags::WRITABLE));
        // Remembered: the same page again reads no guest entry (a changed
        // entry the guest did not report is not seen, as the CPU would not
        // see it through the shadow either).
        f.map(ROOT_A, KERNEL_VA, 0x9000, pte::WRITABLE);
        assert_eq!(
            access(&mut f, Access::KERNEL_WRITE),
            Some(GuestPhysAddr::new(0x7018))
        );
        // Reported: forgotten, and the new page is used.
        let entry = f.guest_entry(ROOT_A, KERNEL_VA, Level::L1);
        f.set_entry(ROOT_A, KERNEL_VA, Level::L1, entry).unwrap();
        assert_eq!(
            access(&mut f, Access::KERNEL_WRITE),
            Some(GuestPhysAddr::new(0x9018))
        );
        // Unmapped and reported: refused.
        f.set_entry(ROOT_A, KERNEL_VA, Level::L1, 0).unwrap();
        f.write(ROOT_A, KERNEL_VA, Level::L1, 0);
        assert_eq!(access(&mut f, Access::KERNEL_READ), None);
        // A user access never uses it.
        f.map(ROOT_A, KERNEL_VA, 0x7000, pte::WRITABLE);
        f.set_entry(
            ROOT_A,
            KERNEL_VA,
            Level::L1,
            0x7000 | pte::WRITABLE | pte::PRESENT,
        )
        .unwrap();
        assert!(access(&mut f, Access::KERNEL_WRITE).is_some());
        let user_write = Access {
            user: true,
            ..Access::KERNEL_WRITE
        };
        assert_eq!(access(&mut f, user_write), None);
        f.teardown();
    }
}
