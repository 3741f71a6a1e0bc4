//! # Shadow page tables
//!
//! The guest keeps page tables, but the CPU never sees them: while a guest
//! runs, CR3 holds a *shadow* root that the host builds from the guest's
//! tables, translating every guest-physical frame into the host frame that
//! backs it and granting no right the guest's tables do not. This is the
//! most delicate part of the host (lguest's "most complicated part"), and
//! like lguest's it falls into seven parts. They are not one file each:
//! parts (i) and (ii) share [`fault`], and parts (vi) and (vii) live here in
//! `mod.rs`, beside the [`ShadowPaging`] state they set up:
//!
//! 1. [`fault`]: filling the shadow when the guest faults
//!    ([`ShadowPaging::demand_page`]), with accessed and dirty bits
//!    emulated in the guest's entries;
//! 2. [`fault`] again: keeping the guest kernel stack mapped
//!    ([`ShadowPaging::pin_stack`]) so a trap can always be delivered;
//! 3. [`update`]: the guest telling us an entry changed
//!    ([`ShadowPaging::set_entry`]), one at a time or batched through the
//!    MMU ring ([`ShadowPaging::apply_ring`]);
//! 4. [`roots`]: switching roots when the guest writes CR3
//!    ([`ShadowPaging::switch_root`]), through a small cache of shadow roots;
//! 5. [`flush`]: throwing shadow entries away (the user half, everything,
//!    one address);
//! 6. the switcher slot: [`ShadowPaging::install_switcher`] and
//!    [`ShadowPaging::prepare_to_run`], below;
//! 7. setup and teardown: [`ShadowPaging::new`] and
//!    [`ShadowPaging::teardown`], with every shadow frame counted.
//!
//! Underneath are the typed entries ([`entry`]), the guest walk ([`walk`]),
//! the shadow-table plumbing ([`shadow`]) and the two hardware seams
//! ([`hw`]): guest memory and shadow frames, traits so that all of this runs
//! in `cargo test` against fakes.
//!
//! ## Decisions
//!
//! - **Large guest pages are split.** A guest 2 MiB or 1 GiB page is
//!   shadowed by 4 KiB entries, filled one fault at a time. Guest memory is
//!   backed by host frames that need not be contiguous, so a large guest
//!   page usually has no large host page to become; and the accessed/dirty
//!   emulation works per 4 KiB shadow entry (a read maps one 4 KiB piece
//!   read-only) exactly as for small pages. The price is more shadow faults
//!   and shadow tables for guests that map memory with large pages.
//! - **Rights live in the leaves.** A shadow leaf carries the rights of the
//!   guest's whole walk (writable only if every level is writable *and* the
//!   guest's leaf is dirty; user only if every level allows it; no-execute
//!   if any level forbids it). Intermediate shadow entries grant
//!   everything. That makes one shadow table usable under any path, which
//!   is what lets the kernel half be shared.
//! - **One shared kernel half.** The shadow tables below the top-level slots
//!   256..=510 belong to the guest, not to a root: every cached root's
//!   top-level entries there point at the same shadow tables, so a
//!   kernel-half change is made once and is seen by every root, and a new
//!   root starts with the kernel already mapped. This relies on the guest
//!   keeping its kernel half identical in all its address spaces (the
//!   [`guest_abi::pte`] contract; Linux does). One consequence: the
//!   accessed bit of a kernel-half top-level entry is set only in the
//!   address space whose fault filled the shared shadow below it, not in
//!   the other roots' copies of that entry (Linux never reads those bits).
//! - **The guest's caching bits and global bit are dropped**: guest memory
//!   is always write-back, and a global guest mapping would survive the
//!   switch back to the host's CR3.
//! - **The shadow is a bounded cache.** Each guest may hold at most
//!   [`ShadowPaging::shadow_frame_limit`] shadow frames (by default in
//!   proportion to its memory), so no guest can starve the others of host
//!   memory by touching many sparse addresses. At the bound the shadow is
//!   reclaimed (the other roots first, then everything) and refilled fault
//!   by fault; only a mapping that cannot fit even then kills the guest.
//!   The bound also bounds the work of one exit (a flush of everything).
//! - **No fault is "fixed" twice.** A fault the shadow already allows is
//!   one the CPU refused for a reason outside the model; it kills the guest
//!   with the fault ([`PagingError::FaultWithoutProgress`]) instead of being
//!   mapped again for ever. SMEP, the one such reason the host turns on, is
//!   modelled ([`Access::allowed_by`]): a supervisor fetch from a user page
//!   is reflected to the guest as the CPU reports it.
//! - **No TLB flushing here.** The switcher loads CR3 on every entry, which
//!   drops every (non-global) translation, so changing a shadow entry needs
//!   no `invlpg`.

pub mod entry;
pub mod error;
pub mod fault;
pub mod flush;
pub mod hw;
pub mod roots;
pub mod shadow;
pub mod tables;
pub mod update;
pub mod vcpus;
pub mod walk;

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod bound_tests;

#[cfg(test)]
mod validator_props;

pub use entry::{GuestEntry, GuestEntryKind, Level, PteFlags, ShadowEntry, TableIndex};
pub use error::PagingError;
pub use fault::{FaultDecision, ZeroFill, ZeroRequest};
pub use hw::{GuestMemory, OutsideGuestMemory, ShadowFrames};
pub use roots::{Eviction, RootSwitch};
pub use walk::{Access, FaultCode};

use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use entry::GuestLimits;
use guest_abi::pte::{KERNEL_HALF_FIRST_PML4_INDEX, SWITCHER_PML4_INDEX};
use roots::RootCache;

/// The first address of the switcher's slot.
pub const SWITCHER_SLOT_BASE: u64 = switcher::SLOT_BASE;

/// The fewest shadow roots a guest may cache.
pub const MIN_CACHED_ROOTS: usize = 2;
/// The most shadow roots a guest may cache.
pub const MAX_CACHED_ROOTS: usize = 16;
/// The largest guest kernel stack that is kept pinned, in pages.
pub const MAX_STACK_PAGES: u64 = 16;

/// Top-level slots of the kernel half: 256..=510 (the switcher has 511).
const KERNEL_HALF_SLOTS: usize = SWITCHER_PML4_INDEX - KERNEL_HALF_FIRST_PML4_INDEX;

/// How a guest's shadow page tables behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingConfig {
    /// How many shadow roots (address spaces) to keep, in
    /// [`MIN_CACHED_ROOTS`]..=[`MAX_CACHED_ROOTS`].
    pub cached_roots: usize,
    /// Which cached root to throw out when a new one is needed.
    pub eviction: Eviction,
    /// Fill the shadow at once when the guest reports an entry it already
    /// marked accessed (off: only invalidate, and let the fault fill it).
    pub eager_fill: bool,
    /// The host's physical-address width (CPUID 0x8000_0008); address bits
    /// above it are reserved in guest entries.
    pub physical_address_bits: u8,
}

impl Default for PagingConfig {
    fn default() -> Self {
        Self {
            cached_roots: 4,
            eviction: Eviction::LeastRecentlyUsed,
            eager_fill: true,
            physical_address_bits: 46,
        }
    }
}

/// What the shadow page tables of one guest have done, for the benchmark
/// tables and the leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingStats {
    /// Faults fixed by filling the shadow.
    pub faults_fixed: u64,
    /// Faults handed to the guest because its own tables forbid the access.
    pub faults_reflected: u64,
    /// Zeroed pages from the guest's zero pool mapped at zero-on-demand
    /// entries ([`ShadowPaging::map_zero_page`]).
    pub pages_zeroed: u64,
    /// Faults that found a guest entry changing under the walk, left for
    /// the guest to retry.
    pub faults_raced: u64,
    /// Entry changes reported by the guest (hypercall or ring).
    pub entries_set: u64,
    /// Of those, entries mapped at once because the guest had marked them
    /// accessed.
    pub eager_fills: u64,
    /// Ops taken from the MMU ring.
    pub ring_ops: u64,
    /// Shadow roots built for a guest root not in the cache.
    pub roots_made: u64,
    /// Root switches served from the cache.
    pub roots_reused: u64,
    /// Cached roots thrown out to make room.
    pub roots_evicted: u64,
    /// Flushes of the user half, of everything, or of one page.
    pub flushes: u64,
    /// Host frames the shadow tables hold now (never more than the bound,
    /// [`ShadowPaging::shadow_frame_limit`]).
    pub frames_held: u64,
    /// Times the bound was reached and shadow tables were thrown away to
    /// make room (see [`ShadowPaging::shadow_frame_limit`]).
    pub reclaims: u64,
    /// Zeroed spare tables kept for reuse ([`tables`]), beside
    /// `frames_held`; the two together stay within the bound.
    pub frames_spare: u64,
    /// Shoot-downs done ([`vcpus`]): exits whose drops the guest's other
    /// vCPUs had to leave the guest for.
    pub shootdowns: u64,
    /// Faults that found the shadow already allowing the access, taken as
    /// another vCPU's fill that this vCPU's stale translation had not yet
    /// seen, and retried ([`vcpus`]).
    pub faults_retried: u64,
}

/// The guest kernel stack that must stay mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelStack {
    /// The lowest page.
    bottom: GuestVirtAddr,
    /// How many pages.
    pages: u64,
}

impl KernelStack {
    /// Whether a shadow entry at `level` translating `vaddr` may map part
    /// of the stack.
    fn overlaps(&self, vaddr: GuestVirtAddr, level: Level) -> bool {
        let span = level.bytes_mapped();
        let start = vaddr.as_u64() & !(span - 1);
        let bottom = self.bottom.as_u64();
        let end = bottom.saturating_add(self.pages * crate::addr::PAGE_SIZE);
        start < end && bottom < start.saturating_add(span)
    }
}

/// The registered MMU ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MmuRing {
    /// Where it is in guest memory.
    base: GuestPhysAddr,
    /// Ops applied so far: the host's own count, never read back from the
    /// guest.
    applied: u64,
}

/// The shadow page tables of one guest: a cache of shadow roots, the shared
/// kernel half, and the state of the stack pin and the MMU ring.
///
/// The guest's memory and the host's frames are passed to each call (see
/// [`hw`]); this struct holds no reference to either.
///
/// The root cache, the stack and the ring are the *active* vCPU's (the one
/// whose exit is being handled); a guest of several vCPUs keeps the
/// others' in `parked` ([`vcpus`]).
pub struct ShadowPaging {
    config: PagingConfig,
    limits: GuestLimits,
    roots: RootCache,
    /// Which vCPU's part is in `roots`, `stack`, `stack_needs_pin` and
    /// `ring`.
    active_vcpu: usize,
    /// Every vCPU's part but the active one's, by vCPU number (empty for a
    /// guest of one vCPU).
    parked: alloc::vec::Vec<Option<vcpus::VcpuPaging>>,
    /// The vCPUs owed a shoot-down for drops since the last one (bit `k`
    /// for vCPU `k`).
    owed_vcpus: u64,
    /// While set, tables freed are held until these vCPUs are shot down
    /// ([`vcpus::ShadowPaging::holding_for`]).
    hold_for: u64,
    /// Shadow tables freed while other vCPUs may still hold translations
    /// through them, until the next shoot-down.
    held_tables: alloc::vec::Vec<vcpus::HeldTable>,
    /// The last fault retried as another vCPU's doing: (vCPU, address,
    /// error code, `faults_fixed` then).
    retried_fault: Option<(usize, GuestVirtAddr, u64, u64)>,
    /// The shared shadow tables below top-level slots 256..=510, as the
    /// entries every root has there.
    kernel_half: [ShadowEntry; KERNEL_HALF_SLOTS],
    stack: Option<KernelStack>,
    /// Set when a shadow entry that may have mapped the stack was dropped.
    stack_needs_pin: bool,
    ring: Option<MmuRing>,
    stats: PagingStats,
    /// The most shadow frames this guest may hold (see
    /// [`Self::shadow_frame_limit`]).
    frame_limit: u64,
    /// The guest's shared page, which is never accepted as a root.
    shared_pages: alloc::vec::Vec<GuestPhysAddr>,
    /// The guest's kernel-half level-3 tables, by top-level slot, as the
    /// running root's entries 256..=510 named them when last read (`None`:
    /// to be read again). Kept so that building a shadow root does not
    /// read 255 guest entries each time (the kernel half is the same in
    /// every address space, and changes only through reports at the top
    /// level, which drop this).
    kernel_tables: Option<alloc::vec::Vec<(GuestPhysAddr, usize)>>,
    /// Which entries of each shadow table are in use, and the spare
    /// zeroed tables ([`tables`]).
    book: tables::TableBook,
    /// The upper levels of the eager fill's last full walk, which faults
    /// under the same level-1 table use too ([`walk::UpperWalk`]).
    upper_walk: Option<walk::UpperWalk>,
    /// The kernel-half stacks known to be pinned still ([`fault`]).
    pinned_stacks: fault::PinnedStacks,
    /// The host's own last kernel-half translation ([`fault`]).
    kernel_translation: Option<fault::KernelTranslation>,
    /// The walk of the last fault that found a zero-on-demand entry, kept
    /// for mapping its page ([`fault`]): in the fault's decision it would
    /// make every decision a hundred bytes to copy.
    zero_walk: Option<(GuestVirtAddr, walk::GuestWalk)>,
}

/// The fewest shadow frames a guest may hold, whatever its size: room for a
/// few processes' worth of tables (a busy address space with its kernel
/// half takes a few dozen), so small guests reclaim rarely.
pub const MIN_SHADOW_FRAME_LIMIT: u64 = 1024;

/// Guest pages per shadow frame in the default bound: one shadow frame for
/// every 8 guest pages (an eighth of the guest's size in shadow tables).
pub const GUEST_PAGES_PER_SHADOW_FRAME: u64 = 8;

/// The default bound on a guest's shadow frames for `memory_size` bytes of
/// guest memory: one frame per [`GUEST_PAGES_PER_SHADOW_FRAME`] guest pages,
/// at least [`MIN_SHADOW_FRAME_LIMIT`]. A 16 MiB guest gets 1024 frames
/// (4 MiB), a 1 GiB guest 32768 (128 MiB): proportional to what the host
/// already gave it, so no guest can take the others' memory for shadows.
pub const fn default_shadow_frame_limit(memory_size: u64) -> u64 {
    let pages = memory_size / crate::addr::PAGE_SIZE;
    let proportional = pages / GUEST_PAGES_PER_SHADOW_FRAME;
    if proportional > MIN_SHADOW_FRAME_LIMIT {
        proportional
    } else {
        MIN_SHADOW_FRAME_LIMIT
    }
}

impl ShadowPaging {
    /// (vii) Sets up the shadow tables of a guest whose memory is `mem`,
    /// starting in the address space whose top-level table is at guest
    /// `root`. Allocates the first shadow root.
    pub fn new<M: GuestMemory, F: ShadowFrames>(
        config: PagingConfig,
        mem: &M,
        frames: &mut F,
        root: u64,
    ) -> Result<Self, PagingError> {
        if !(MIN_CACHED_ROOTS..=MAX_CACHED_ROOTS).contains(&config.cached_roots) {
            return Err(PagingError::BadConfig {
                cached_roots: config.cached_roots,
            });
        }
        let limits = GuestLimits::new(mem.size(), config.physical_address_bits);
        let root = Self::check_root(&limits, &[], mem, root)?;
        let no_frame = PagingError::OutOfFrames {
            vaddr: GuestVirtAddr::new_truncate(0),
        };
        let first = frames.allocate_zeroed().ok_or(no_frame)?;
        let mut book = tables::TableBook::default();
        if book.insert(first).is_err() {
            frames.free(first);
            return Err(no_frame);
        }
        let stats = PagingStats {
            frames_held: 1,
            roots_made: 1,
            ..PagingStats::default()
        };
        Ok(Self {
            config,
            limits,
            roots: RootCache::new(root, first, config.cached_roots, config.eviction),
            active_vcpu: 0,
            parked: alloc::vec::Vec::new(),
            owed_vcpus: 0,
            hold_for: 0,
            held_tables: alloc::vec::Vec::new(),
            retried_fault: None,
            kernel_half: [ShadowEntry::ABSENT; KERNEL_HALF_SLOTS],
            kernel_tables: None,
            stack: None,
            stack_needs_pin: false,
            ring: None,
            stats,
            frame_limit: default_shadow_frame_limit(mem.size()),
            shared_pages: alloc::vec::Vec::new(),
            book,
            upper_walk: None,
            pinned_stacks: fault::PinnedStacks::default(),
            kernel_translation: None,
            zero_walk: None,
        })
    }

    /// The most host frames this guest's shadow tables may hold (its
    /// bound; by default [`default_shadow_frame_limit`] of its memory).
    ///
    /// Shadow tables are a cache, so reaching the bound is not an error:
    /// the shadow of the other cached roots is thrown away first, then, if
    /// that freed too little, everything (the kernel half and the running
    /// user half, as lguest did when it ran short), and the running address
    /// space is refilled fault by fault. Only when even that cannot fit one
    /// mapping (or the pinned kernel stack) is the guest killed
    /// ([`PagingError::ShadowLimit`]). A working set larger than the bound
    /// makes progress, slowly, and the time budget is the backstop.
    ///
    /// This also bounds the work of one exit: a flush of everything, or a
    /// reclaim, frees at most `limit` tables (each read once, 512 entries),
    /// and one exit frees at most `limit` plus what it allocated itself (a
    /// ring's worth of eager fills, at most three tables each). At the
    /// largest default (32768 frames, a 1 GiB guest) and the 160 ns per
    /// table measured under QEMU TCG (3.2 ms for 20,000 tables) that is
    /// about 5 ms in the worst exit; a 16 MiB guest's 1024, about 0.16 ms.
    pub fn shadow_frame_limit(&self) -> u64 {
        self.frame_limit
    }

    /// Sets the bound of [`Self::shadow_frame_limit`] (at least 1: the
    /// running root's own frame). Tables already held above a lower bound
    /// are reclaimed at the next allocation.
    pub fn set_shadow_frame_limit(&mut self, limit: u64) {
        self.frame_limit = limit.max(1);
    }

    /// Names a shared page of the guest's (each vCPU has one, which the
    /// host writes at every entry), which is then refused as a root;
    /// refused also if it is a vCPU's running root already.
    pub fn reserve_shared_page(&mut self, page: u64) -> Result<(), PagingError> {
        let page = GuestPhysAddr::new(page);
        self.shared_pages.push(page);
        if self.every_running_root().any(|root| root == page) {
            return Err(PagingError::SharedPageAsRoot {
                root: page.as_u64(),
            });
        }
        Ok(())
    }

    /// (vii) Releases every host frame the shadow tables hold, each exactly
    /// once, and returns the final counts (`frames_held` is then 0).
    pub fn teardown<F: ShadowFrames>(mut self, frames: &mut F) -> PagingStats {
        // The kernel half first: dropping it writes into every root. No
        // vCPU runs any more, so nothing needs shooting down.
        self.drop_kernel_half(frames);
        for root in self.every_root() {
            self.free_root(frames, root);
        }
        for held in core::mem::take(&mut self.held_tables) {
            self.release_now(frames, held.frame, held.zeroed);
        }
        for spare in self.book.drain_spares() {
            frames.free(spare);
        }
        self.stats()
    }

    /// The counters so far.
    pub fn stats(&self) -> PagingStats {
        PagingStats {
            frames_spare: self.book.spare_count() as u64,
            ..self.stats
        }
    }

    /// The configuration this guest's tables run with.
    pub fn config(&self) -> PagingConfig {
        self.config
    }

    /// The guest root (CR3 value) of the running address space.
    pub fn current_guest_root(&self) -> GuestPhysAddr {
        self.roots.current().guest_root
    }

    /// The shadow root of the running address space: what CR3 holds while
    /// the guest runs.
    pub fn current_shadow_root(&self) -> HostPhysAddr {
        self.roots.current().shadow
    }

    /// (vi) Puts the switcher into the running root: its top-level slot
    /// points at `switcher_table`, this CPU's switcher table (made by the
    /// kernel, mapping the code read-only, this CPU's register slot
    /// writable, with the running guest's own register page in it, and its
    /// state and IDT pages read-only). The slot is supervisor-only, so guest
    /// user code cannot reach it. The guest can never write this slot: no
    /// guest entry is ever copied there.
    ///
    /// It is written only when it differs: at almost every entry the slot
    /// holds this CPU's table already.
    pub fn install_switcher<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        switcher_table: HostPhysAddr,
    ) {
        let root = self.roots.current().shadow;
        let entry = ShadowEntry::supervisor_table(switcher_table);
        if let Some(slot) = TableIndex::new(SWITCHER_PML4_INDEX)
            && frames.read_entry(root, slot) != entry.raw()
        {
            self.write_shadow(frames, root, slot, entry);
        }
    }

    /// (ii, vi) Everything before entering the guest: re-pins the kernel
    /// stack if a shadow entry under it was dropped, puts this CPU's
    /// switcher in the slot, and returns the shadow root to load into CR3.
    pub fn prepare_to_run<M: GuestMemory, F: ShadowFrames>(
        &mut self,
        mem: &mut M,
        frames: &mut F,
        switcher_table: HostPhysAddr,
    ) -> Result<HostPhysAddr, PagingError> {
        if self.stack_needs_pin {
            self.pin_stack(mem, frames)?;
        }
        self.install_switcher(frames, switcher_table);
        Ok(self.current_shadow_root())
    }

    /// Checks a guest root (a CR3 value): a page inside guest memory, not
    /// the shared page, whose switcher slot is not present.
    fn check_root<M: GuestMemory>(
        limits: &GuestLimits,
        shared_pages: &[GuestPhysAddr],
        mem: &M,
        root: u64,
    ) -> Result<GuestPhysAddr, PagingError> {
        let gpa = GuestPhysAddr::new(root);
        if !gpa.is_page_aligned() || !limits.contains(gpa, crate::addr::PAGE_SIZE) {
            return Err(PagingError::BadRoot {
                root,
                memory_size: limits.memory_size,
            });
        }
        if shared_pages.contains(&gpa) {
            return Err(PagingError::SharedPageAsRoot { root });
        }
        let slot = GuestPhysAddr::new(root + 8 * SWITCHER_PML4_INDEX as u64);
        let value = mem
            .read_u64(slot)
            .map_err(|_| PagingError::GuestMemory { gpa: slot })?;
        if GuestEntry::new(value).is_present() {
            return Err(PagingError::SwitcherSlot {
                value,
                vaddr: GuestVirtAddr::new_truncate(SWITCHER_SLOT_BASE),
            });
        }
        Ok(gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn setup_checks_the_config_and_teardown_returns_every_frame() {
        let mem = FakeGuestMemory::new(1 << 20);
        let mut frames = FakeFrames::new(100);
        for cached_roots in [0, 1, 17] {
            let config = PagingConfig {
                cached_roots,
                ..PagingConfig::default()
            };
            assert_eq!(
                ShadowPaging::new(config, &mem, &mut frames, 0).err(),
                Some(PagingError::BadConfig { cached_roots })
            );
        }
        let paging = ShadowPaging::new(PagingConfig::default(), &mem, &mut frames, 0).unwrap();
        assert_eq!(frames.in_use(), 1);
        assert_eq!(paging.teardown(&mut frames).frames_held, 0);
        assert_eq!(frames.in_use(), 0);
        assert!(ShadowPaging::new(PagingConfig::default(), &mem, &mut frames, 1 << 20).is_err());
    }
}
