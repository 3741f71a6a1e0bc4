//! The fuzzer's page tables: what it maps, how it tells the host, and the
//! accesses it makes there.
//!
//! Everything lives in the user half, away from the kernel half the
//! fuzzer runs in (which it never changes):
//!
//! - top-level slot 0: a user code page and a user stack page for the
//!   excursions to ring 3 (see `cpu.rs`), never touched again;
//! - slot 1: the *orderly* region, four level-1 tables of 32 pages each
//!   under one level-3 and one level-2 table. Every change there is
//!   reported as the contract asks (`guest_abi::pte`): for every address
//!   space that links the region, by hypercall or through the MMU ring.
//!   The host's shadow must then always agree with the tables;
//! - slots 2 to 5: the *chaos* region: random entries (tables, pages,
//!   large pages, frames of every kind, reserved bits, garbage) written at
//!   random into the root slots and a pool of tables, reported or not,
//!   with the level and address right or wrong;
//! - slot 6: the *spray* region, 4 GiB of 2 MiB pages over the fuzzer's
//!   memory (one level-3 table, one level-2 table of large pages linked
//!   four times), never changed: touching hundreds of its 2 MiB pages
//!   takes a shadow table each, past the host's bound on a guest's shadow
//!   frames, so the host must reclaim.
//!
//! Up to [`MAX_ROOTS`] address spaces share the kernel half, the user
//! pages, the orderly region and the spray region; each has chaos slots of
//! its own. An address space is *clean* while its shadow cannot hold
//! anything its tables no longer say: from a flush of its user half until
//! the next chaos write (or a change left unreported). Accesses in a clean
//! address space are checked against the model; a write or a fetch is only
//! made where the model says it lands in one of the fuzzer's data frames,
//! and in a clean address space, so the fuzzer never writes through a stale
//! shadow entry into its own tables.

use crate::fuzzer::Fuzzer;
use crate::model::{self, Access, Fate, Outcome, Walk, read_phys, write_phys};
use crate::pool::ZeroPool;
use crate::recover::{self, guarded};
use guest_abi::boot::SHARED_PAGE_GPA;
use guest_abi::pte::{
    ACCESSED, ADDRESS_MASK, CACHE_DISABLE, DIRTY, GLOBAL, HUGE_PAGE, MmuOp, NO_EXECUTE, PRESENT,
    USER, WRITABLE, WRITE_THROUGH, ring,
};
use guest_abi::shared::offset::MMU_RING;
use guest_rt::boot::{self, kernel_virtual};
use guest_rt::paging::{self, FrameAllocator, PAGE_BYTES, table_entry};
use guest_rt::{hypercall, probe};

/// Address spaces the fuzzer makes at most (the first is the start-up
/// one); more than the host caches by default (4), so that it evicts.
pub const MAX_ROOTS: usize = 6;
/// Tables in the chaos pool.
const CHAOS_TABLES: usize = 12;
/// Data frames: the pages the regions map, the only ones written through
/// them.
const DATA_FRAMES: usize = 16;
/// Level-1 tables of the orderly region, and pages used in each.
pub const ORDERLY_TABLES: u64 = 4;
pub const ORDERLY_PAGES: u64 = 32;

/// The top-level slot of the orderly region, and the chaos slots.
const ORDERLY_SLOT: u64 = 1;
const CHAOS_SLOTS: [u64; 4] = [2, 3, 4, 5];
/// The orderly region's first address.
pub const ORDERLY_BASE: u64 = ORDERLY_SLOT << 39;
/// The top-level slot of the spray region, its first address, and the
/// level-3 entries that link its table of large pages.
const SPRAY_SLOT: u64 = 6;
const SPRAY_BASE: u64 = SPRAY_SLOT << 39;
const SPRAY_GIBS: u64 = 4;

/// The user code and stack pages (top-level slot 0).
pub const USER_CODE: u64 = 0x40_0000;
pub const USER_STACK_TOP: u64 = 0x40_2000;

/// The switcher's slot and its last page.
pub const SWITCHER_SLOT: u64 = 0xffff_ff80_0000_0000;
/// Where the switcher's per-CPU pages start in its slot (after its 64 KiB
/// of code), and the distance between two CPUs' register slots
/// (`switcher::register_page_offset`).
const REGISTER_SLOTS: u64 = 0x1_0000;
const REGISTER_SLOT_STRIDE: u64 = 4 * PAGE_BYTES;
pub const LAST_PAGE: u64 = 0xffff_ffff_ffff_f000;

/// Bytes at the start of each data frame kept for its fetch stub: writes
/// go above them.
const STUB_BYTES: u64 = 64;

/// What the fetch stub of data frame `index` returns in `rax`.
pub const fn stub_value(index: usize) -> u64 {
    0x00f0_0000 + index as u64
}

/// The fuzzer's tables and frames, and which address spaces are clean.
pub struct Space {
    frames: FrameAllocator,
    /// The address spaces' roots; `roots[0]` is the start-up root.
    pub roots: [u64; MAX_ROOTS],
    pub root_count: usize,
    /// The running one (an index into `roots`).
    pub current: usize,
    /// Bit `i`: address space `i` is clean.
    clean: u32,
    pub orderly_l3: u64,
    pub orderly_l2: u64,
    pub orderly_l1: [u64; ORDERLY_TABLES as usize],
    chaos: [u64; CHAOS_TABLES],
    pub data: [u64; DATA_FRAMES],
    /// Bit `i`: data frame `i` was linked as a table somewhere, so writes
    /// to it change page tables.
    data_as_table: u32,
    /// The user code page.
    pub user_code: u64,
    /// The spray region's level-3 table (linked in slot 6 of every root).
    spray_l3: u64,
    /// MMU ring ops queued and not yet applied, in order.
    pending: [[u64; 4]; ring::RING_SLOTS as usize],
    pending_count: usize,
    /// The zero pool and the frames the fuzzer lends in it.
    pub pool: ZeroPool,
}

impl Space {
    /// Builds the regions in the start-up address space, and the user
    /// pages.
    pub fn new() -> Result<Self, &'static str> {
        let mut frames = FrameAllocator::after_image();
        let mut frame = || frames.allocate_zeroed().ok_or("out of guest memory");
        let orderly_l3 = frame()?;
        let orderly_l2 = frame()?;
        let mut orderly_l1 = [0; ORDERLY_TABLES as usize];
        for table in &mut orderly_l1 {
            *table = frame()?;
        }
        let mut chaos = [0; CHAOS_TABLES];
        for table in &mut chaos {
            *table = frame()?;
        }
        let mut data = [0; DATA_FRAMES];
        for (index, page) in data.iter_mut().enumerate() {
            *page = frame()?;
            write_stub(*page, index);
        }
        let user_code = frame()?;
        let user_stack = frame()?;
        let spray_l3 = frame()?;
        let spray_l2 = frame()?;
        let root = boot::params().initial_root;
        // SAFETY: the tables are fresh pages of ours; the entries link the
        // orderly region's tables to each other, and slot 1 of the
        // start-up root (empty, never reported) to them.
        unsafe {
            write_phys(orderly_l3, table_entry(orderly_l2, true));
            for (j, table) in orderly_l1.iter().enumerate() {
                write_phys(orderly_l2 + 8 * j as u64, table_entry(*table, true));
            }
            write_phys(root + 8 * ORDERLY_SLOT, table_entry(orderly_l3, true));
            // The spray region: 512 large pages cycling over guest memory
            // (accessed and dirty, so no fault is needed for the bits),
            // read-only, linked from four level-3 entries.
            let pages = (boot::memory_bytes() >> 21).max(1);
            for index in 0..512 {
                let base = (index % pages) << 21;
                let page = base | PRESENT | ACCESSED | DIRTY | HUGE_PAGE | NO_EXECUTE;
                write_phys(spray_l2 + 8 * index, page);
            }
            for index in 0..SPRAY_GIBS {
                write_phys(spray_l3 + 8 * index, table_entry(spray_l2, false));
            }
            write_phys(root + 8 * SPRAY_SLOT, table_entry(spray_l3, false));
        }
        // SAFETY: slot 0 of the start-up tables is empty: these mappings
        // take nothing from anyone.
        unsafe {
            paging::map_page(root, USER_CODE, user_code, USER | ACCESSED, &mut frames)
                .map_err(|_| "mapping the user code page failed")?;
            let stack_flags = USER | WRITABLE | ACCESSED | DIRTY;
            let stack_page = USER_STACK_TOP - PAGE_BYTES;
            paging::map_page(root, stack_page, user_stack, stack_flags, &mut frames)
                .map_err(|_| "mapping the user stack page failed")?;
        }
        // Last, so that every other frame is where it was before the pool.
        let pool = ZeroPool::new(&mut frames)?;
        let mut roots = [0; MAX_ROOTS];
        roots[0] = root;
        Ok(Self {
            frames,
            roots,
            root_count: 1,
            current: 0,
            // Nothing was ever reported unfaithfully yet.
            clean: 1,
            orderly_l3,
            orderly_l2,
            orderly_l1,
            chaos,
            data,
            data_as_table: 0,
            user_code,
            spray_l3,
            pending: [[0; 4]; ring::RING_SLOTS as usize],
            pending_count: 0,
            pool,
        })
    }

    /// The running root.
    pub fn root(&self) -> u64 {
        self.roots[self.current]
    }

    /// Whether the running address space is clean and nothing waits in
    /// the ring.
    pub fn is_clean(&self) -> bool {
        self.clean & (1 << self.current) != 0 && self.pending_count == 0
    }

    /// Something changed behind every shadow's back.
    fn dirty_all(&mut self) {
        self.clean = 0;
    }

    /// The running address space's user half was flushed.
    pub fn mark_clean(&mut self) {
        self.clean |= 1 << self.current;
    }

    /// Every shadow was flushed.
    pub fn mark_all_clean(&mut self) {
        self.clean = u32::MAX;
    }

    /// The index of the data frame `page` is, if it is one.
    pub fn data_index(&self, page: u64) -> Option<usize> {
        self.data.iter().position(|&d| d == page)
    }

    /// Whether a write to guest page `page` at `offset` changes nothing but
    /// data: one of the data frames, never linked as a table, above its
    /// stub.
    fn writable_data(&self, page: u64, offset: u64) -> bool {
        offset >= STUB_BYTES
            && self
                .data_index(page)
                .is_some_and(|i| self.data_as_table & (1 << i) == 0)
    }

    /// Whether the entry at `leaf` is in one of the orderly region's
    /// level-1 tables, which are only ever read as level-1 tables: what it
    /// maps is never a table.
    pub fn in_orderly_l1(&self, leaf: u64) -> bool {
        self.orderly_l1.contains(&(leaf & !(PAGE_BYTES - 1)))
    }

    /// Every table frame (the orderly region's and the chaos pool).
    fn any_table(&self, pick: u64) -> u64 {
        let orderly = [self.orderly_l3, self.orderly_l2];
        let count = orderly.len() + self.orderly_l1.len() + self.chaos.len();
        let index = pick as usize % count;
        match index {
            i if i < orderly.len() => orderly[i],
            i if i < orderly.len() + self.orderly_l1.len() => self.orderly_l1[i - orderly.len()],
            i => self.chaos[i - orderly.len() - self.orderly_l1.len()],
        }
    }
}

/// Writes the fetch stub of data frame `index` at its start: `mov eax,
/// stub_value(index); ret`.
fn write_stub(page: u64, index: usize) {
    let value = (stub_value(index) as u32).to_le_bytes();
    let stub = [
        0xb8, value[0], value[1], value[2], value[3], 0xc3, 0xcc, 0xcc,
    ];
    // SAFETY: a fresh data frame of ours, through the start-up map.
    unsafe { write_phys(page, u64::from_le_bytes(stub)) };
}

/// An orderly address: level-1 table `j`, page `i`.
pub fn orderly_vaddr(j: u64, i: u64) -> u64 {
    ORDERLY_BASE | (j << 21) | (i << 12)
}

/// The MMU ring word at byte `offset` of the ring.
fn ring_word(offset: u64) -> *mut u64 {
    (boot::shared_page() as *mut u8).wrapping_add((MMU_RING + offset) as usize) as *mut u64
}

impl Fuzzer {
    /// A chaos address: slot 2..=5, then small indices at each level, so
    /// that random links meet.
    fn chaos_vaddr(&mut self) -> u64 {
        let slot = self.rng.pick(&CHAOS_SLOTS);
        (slot << 39)
            | (self.rng.below(4) << 30)
            | (self.rng.below(4) << 21)
            | (self.rng.below(8) << 12)
    }

    /// Random flags for a present entry: mostly the ordinary ones, rarely
    /// caching, global and software bits.
    fn entry_flags(&mut self) -> u64 {
        let mut flags = PRESENT;
        for (bit, percent) in [
            (WRITABLE, 70),
            (USER, 40),
            (NO_EXECUTE, 20),
            (ACCESSED, 50),
            (DIRTY, 30),
            (WRITE_THROUGH, 5),
            (CACHE_DISABLE, 5),
            (GLOBAL, 5),
        ] {
            if self.rng.percent(percent) {
                flags |= bit;
            }
        }
        if self.rng.one_in(10) {
            flags |= self.rng.next() & guest_abi::pte::SOFTWARE_BITS;
        }
        flags
    }

    /// A frame that is not one of the fuzzer's tables or data frames: the
    /// start-up tables, its own code, the last page, a root, the user
    /// code; and, with `leaf_only`, pages whose contents change with time
    /// or with the command line: the shared page (the host writes the
    /// clock there at every entry), the boot parameters and the image's
    /// last page (the fuzzer's stack and statics).
    ///
    /// Those may only be mapped as pages, never read as tables: the walks
    /// through them would then depend on when they happen, and a seed
    /// would no longer do the same thing on every run. The orderly
    /// region's leaves are the only entries that can never be read as
    /// tables (its tables are linked nowhere else), so they alone get them.
    fn special_frame(&mut self, leaf_only: bool) -> u64 {
        let memory = self.limits.memory;
        let stable = [
            guest_abi::boot::STARTUP_TABLES_GPA,
            guest_abi::boot::STARTUP_TABLES_GPA + PAGE_BYTES,
            guest_abi::boot::IMAGE_MIN_GPA,
            memory - PAGE_BYTES,
            self.space.roots[self.rng.below(self.space.root_count as u64) as usize],
            self.space.user_code,
        ];
        let changing = [
            SHARED_PAGE_GPA,
            guest_abi::boot::BOOT_PARAMS_GPA,
            boot::params().image_end.next_multiple_of(PAGE_BYTES) - PAGE_BYTES,
        ];
        if leaf_only && self.rng.percent(50) {
            self.rng.pick(&changing)
        } else {
            self.rng.pick(&stable)
        }
    }

    /// A random entry value for the chaos region: a link to a table (or,
    /// rarely, to a data frame as a table), a page, a large page, a
    /// special frame, a frame outside guest memory, reserved bits, or an
    /// absent entry with garbage in it.
    fn chaos_value(&mut self) -> u64 {
        let memory = self.limits.memory;
        let two_mib = 2 << 20;
        let kind = self.rng.weighted(&[40, 30, 6, 1, 1, 8, 2, 10, 2]);
        let flags = self.entry_flags();
        match kind {
            0 => {
                if self.rng.one_in(20) {
                    let index = self.rng.below(DATA_FRAMES as u64) as usize;
                    self.space.data_as_table |= 1 << index;
                    self.space.data[index] | flags
                } else {
                    // The chaos tables: the orderly ones are linked only
                    // where they belong (see `special_frame`).
                    self.rng.pick(&self.space.chaos) | flags
                }
            }
            1 => self.rng.pick(&self.space.data) | flags,
            2 => (self.rng.below(memory / two_mib) * two_mib) | flags | HUGE_PAGE,
            3 => HUGE_PAGE | flags,
            4 => (two_mib + PAGE_BYTES) | flags | HUGE_PAGE,
            5 => self.special_frame(false) | flags,
            6 => {
                let outside = [
                    memory,
                    memory + PAGE_BYTES,
                    1 << 40,
                    self.limits.memory << 4,
                ];
                (self.rng.pick(&outside) & ADDRESS_MASK) | flags
            }
            7 => self.rng.next() & !PRESENT,
            _ => {
                // One reserved address bit: from the host's width to 51.
                let reserved = self.limits.reserved;
                let bit = if reserved == 0 {
                    0
                } else {
                    let lowest = u64::from(reserved.trailing_zeros());
                    1 << (lowest + self.rng.below(52 - lowest))
                };
                self.rng.pick(&self.space.data) | flags | bit
            }
        }
    }

    /// One change in the orderly region, reported faithfully (or, once in
    /// twenty, not: the region is then dirty until the next flush).
    pub fn orderly_entry(&mut self) {
        let j = self.rng.below(ORDERLY_TABLES);
        let i = self.rng.below(ORDERLY_PAGES);
        let (gpa, vaddr, level, value) = if self.rng.one_in(20) {
            // Level 2: a large page (aligned, inside memory), or the
            // table back.
            let value = if self.rng.percent(50) {
                let pages = self.limits.memory >> 21;
                (self.rng.below(pages) << 21) | self.entry_flags() | HUGE_PAGE
            } else {
                table_entry(self.space.orderly_l1[j as usize], true)
            };
            (self.space.orderly_l2 + 8 * j, orderly_vaddr(j, 0), 2, value)
        } else {
            let value = match self.rng.below(10) {
                0 => self.rng.next() & !PRESENT,
                1 => self.special_frame(true) | self.entry_flags(),
                _ => self.rng.pick(&self.space.data) | self.entry_flags(),
            };
            let table = self.space.orderly_l1[j as usize];
            (table + 8 * i, orderly_vaddr(j, i), 1, value)
        };
        self.report_orderly(gpa, vaddr, level, value);
    }

    /// Writes `value` into the orderly region's entry at `gpa` (at `level`,
    /// for `vaddr`), and reports it faithfully for every address space by
    /// hypercall or through the ring (or, once in twenty, only for the
    /// running one: the others are then dirty until a flush).
    pub fn report_orderly(&mut self, gpa: u64, vaddr: u64, level: u8, value: u64) {
        // SAFETY: an entry of the orderly region's own tables.
        unsafe { write_phys(gpa, value) };
        let lie = self.rng.one_in(20);
        let through_ring = self.rng.percent(40);
        let whom = if lie {
            " (only for the running root)"
        } else {
            ""
        };
        let roots = if lie {
            core::slice::from_ref(&self.space.roots[self.space.current])
        } else {
            &self.space.roots[..self.space.root_count]
        };
        let mut reports = [0u64; MAX_ROOTS];
        reports[..roots.len()].copy_from_slice(roots);
        let reports = &reports[..roots.len()];
        if through_ring {
            for &root in reports {
                self.report_entry(root, vaddr, level, value, true);
            }
            let fate = self.pending_fate();
            if !self.go(
                fate,
                format_args!(
                    "orderly entry {value:#x} at level {level} for {vaddr:#x}, reported through the ring{whom}"
                ),
            ) {
                self.unqueue();
                return;
            }
            self.flush_ring();
            self.survived(fate);
        } else {
            let fate = reports
                .iter()
                .map(|&root| model::set_entry_fate(root, vaddr, level, value, &self.limits))
                .fold(Fate::Safe, Fate::then);
            if !self.go(
                fate,
                format_args!(
                    "orderly entry {value:#x} at level {level} for {vaddr:#x}, reported by hypercall{whom}"
                ),
            ) {
                // Left unreported: the shadows may disagree until a flush.
                self.space.dirty_all();
                return;
            }
            for &root in reports {
                self.report_entry(root, vaddr, level, value, false);
            }
            self.survived(fate);
        }
        if lie {
            self.space.clean &= 1 << self.space.current;
        }
    }

    /// Reports one entry by hypercall, or queues the report in the ring.
    fn report_entry(&mut self, root: u64, vaddr: u64, level: u8, value: u64, through_ring: bool) {
        let op = MmuOp::SetEntry {
            root,
            vaddr,
            level,
            value,
        };
        if through_ring {
            if !self.queue(op.encode()) {
                // No room: the change goes unreported.
                self.space.dirty_all();
            }
        } else {
            // SAFETY: the op reports an entry of ours in the user half; a
            // wrong one only misleads the shadow of that half, which the
            // fuzzer treats as dirty.
            let _ = unsafe { hypercall::mmu_op(op) };
        }
    }

    /// Queues four words in the MMU ring; false if it is full (the
    /// fuzzer never applies the ring behind an action's announcement).
    fn queue(&mut self, words: [u64; 4]) -> bool {
        if self.space.pending_count >= ring::RING_SLOTS as usize {
            return false;
        }
        let head = paging::ring::head();
        let slot = ring_word(ring::slot_offset(head));
        for (i, word) in words.into_iter().enumerate() {
            // SAFETY: the slot's four words are inside the ring, in the
            // shared page.
            unsafe { slot.wrapping_add(i).write_volatile(word) };
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        // SAFETY: the ring's head word, ours to write.
        unsafe { ring_word(ring::HEAD_OFFSET).write_volatile(head.wrapping_add(1)) };
        if let Some(pending) = self.space.pending.get_mut(self.space.pending_count) {
            *pending = words;
        }
        self.space.pending_count += 1;
        true
    }

    /// Takes the queued ops back out of the ring (a lethal batch skipped):
    /// the head goes back to what the host applied, which it allows. The
    /// entries they reported stay written, unreported.
    pub fn unqueue(&mut self) {
        let applied = paging::ring::tail();
        // SAFETY: the ring's head word, ours to write.
        unsafe { ring_word(ring::HEAD_OFFSET).write_volatile(applied) };
        self.space.pending_count = 0;
        self.space.dirty_all();
    }

    /// What applying the queued ops does, in order.
    pub fn pending_fate(&self) -> Fate {
        self.space.pending[..self.space.pending_count.min(ring::RING_SLOTS as usize)]
            .iter()
            .map(|&words| model::op_fate(words, true, &self.limits))
            .fold(Fate::Safe, Fate::then)
    }

    /// Applies the queued ops (their fate already announced), and takes
    /// note of their flushes.
    pub fn flush_ring(&mut self) {
        // SAFETY: the queued ops report entries of the user half (or are
        // the fuzzer's garbage, for which the host kills it).
        let _ = unsafe { paging::ring::flush() };
        self.ring_applied();
    }

    /// The host applied the queued ops: their flushes cleaned the shadows.
    pub fn ring_applied(&mut self) {
        let ops = &self.space.pending[..self.space.pending_count.min(ring::RING_SLOTS as usize)];
        let decoded = ops.iter().filter_map(|&words| MmuOp::decode(words).ok());
        let mut clean = self.space.clean;
        for op in decoded {
            match op {
                MmuOp::FlushAll => clean = u32::MAX,
                MmuOp::FlushUser => clean |= 1 << self.space.current,
                _ => {}
            }
        }
        self.space.clean = clean;
        self.space.pending_count = 0;
    }

    /// A random entry written into the chaos region: a root slot, a chaos
    /// table or (rarely) an orderly one; then reported by hypercall,
    /// queued in the ring, or not reported, for a random root, level and
    /// address (right or wrong).
    pub fn chaos_entry(&mut self) {
        let (gpa, level, vaddr) = match self.rng.weighted(&[30, 68, 2]) {
            0 => {
                let root = self.space.roots[self.rng.below(self.space.root_count as u64) as usize];
                let slot = self.rng.pick(&CHAOS_SLOTS);
                (root + 8 * slot, 4, slot << 39)
            }
            1 => {
                let table = self.rng.pick(&self.space.chaos);
                let level = 1 + self.rng.below(3) as u8;
                (table + 8 * self.rng.below(8), level, self.chaos_vaddr())
            }
            _ => {
                // An orderly table, written over with a chaos value (which
                // never holds a changing frame): the orderly region is then
                // dirty like the rest.
                let pick = self.rng.next();
                let table = self.space.any_table(pick);
                let level = 1 + self.rng.below(3) as u8;
                (
                    table + 8 * self.rng.below(ORDERLY_PAGES),
                    level,
                    orderly_vaddr(0, 0),
                )
            }
        };
        let value = self.chaos_value();
        // SAFETY: an entry of one of the fuzzer's own user-half tables.
        unsafe { write_phys(gpa, value) };
        self.space.dirty_all();
        let root = if self.rng.percent(80) {
            self.space.root()
        } else {
            self.space.roots[self.rng.below(self.space.root_count as u64) as usize]
        };
        let how = self.rng.weighted(&[40, 30, 30]);
        if how == 2 {
            if self.verbose {
                let step = self.step;
                guest_rt::println!(
                    "fuzz: step {step}: chaos entry {value:#x} at gpa {gpa:#x}, unreported"
                );
            }
            return;
        }
        if how == 1
            && !self.queue(
                MmuOp::SetEntry {
                    root,
                    vaddr,
                    level,
                    value,
                }
                .encode(),
            )
        {
            return;
        }
        let fate = if how == 1 {
            self.pending_fate()
        } else {
            model::set_entry_fate(root, vaddr, level, value, &self.limits)
        };
        let channel = if how == 0 {
            "by hypercall"
        } else {
            "in the ring"
        };
        if !self.go(
            fate,
            format_args!(
                "chaos entry {value:#x} at gpa {gpa:#x}, reported as level {level} for {vaddr:#x} under root {root:#x} {channel}"
            ),
        ) {
            if how == 1 {
                self.unqueue();
            }
            return;
        }
        if how == 1 {
            self.flush_ring();
        } else {
            self.report_entry(root, vaddr, level, value, false);
        }
        self.survived(fate);
    }

    /// A batch of MMU ring ops, mostly sound, sometimes garbage, then
    /// applied (or, once in ten, left queued for later); rarely a head
    /// far past the ops applied.
    pub fn ring_batch(&mut self) {
        let count = if self.rng.one_in(20) {
            1 + self.rng.below(ring::RING_SLOTS)
        } else {
            1 + self.rng.below(8)
        };
        let free = ring::RING_SLOTS as usize - self.space.pending_count;
        for _ in 0..(count as usize).min(free) {
            let words = match self.rng.weighted(&[30, 25, 10, 10, 5, 3, 2, 1, 1]) {
                0 => {
                    // An orderly page, remapped and reported for the
                    // running root only (the region is then dirty for
                    // the others).
                    let j = self.rng.below(ORDERLY_TABLES);
                    let i = self.rng.below(ORDERLY_PAGES);
                    let value = self.rng.pick(&self.space.data) | self.entry_flags();
                    // SAFETY: an entry of the orderly region's own tables.
                    unsafe { write_phys(self.space.orderly_l1[j as usize] + 8 * i, value) };
                    self.space.clean &= 1 << self.space.current;
                    MmuOp::SetEntry {
                        root: self.space.root(),
                        vaddr: orderly_vaddr(j, i),
                        level: 1,
                        value,
                    }
                    .encode()
                }
                1 => {
                    let table = self.rng.pick(&self.space.chaos);
                    let gpa = table + 8 * self.rng.below(8);
                    let value = self.chaos_value();
                    // SAFETY: an entry of the fuzzer's chaos tables.
                    unsafe { write_phys(gpa, value) };
                    self.space.dirty_all();
                    MmuOp::SetEntry {
                        root: self.space.root(),
                        vaddr: self.chaos_vaddr(),
                        level: 1 + self.rng.below(4) as u8,
                        value,
                    }
                    .encode()
                }
                2 => MmuOp::Nop.encode(),
                3 => MmuOp::InvalidatePage {
                    vaddr: self.chaos_vaddr(),
                }
                .encode(),
                4 => MmuOp::FlushUser.encode(),
                5 => MmuOp::FlushAll.encode(),
                6 => MmuOp::InvalidatePage {
                    vaddr: self.boundary(),
                }
                .encode(),
                7 => [
                    self.rng.next(),
                    self.boundary(),
                    self.boundary(),
                    self.boundary(),
                ],
                _ => [
                    1 | (self.rng.pick(&[0u64, 5, 255]) << 8),
                    self.space.root(),
                    0,
                    0,
                ],
            };
            if !self.queue(words) {
                break;
            }
        }
        if self.rng.one_in(10) {
            if self.verbose {
                let step = self.step;
                guest_rt::println!("fuzz: step {step}: ring ops left queued");
            }
            return;
        }
        let overrun = self.rng.one_in(50);
        let fate = if overrun {
            Fate::Killed(model::reason::RING_OVERRUN)
        } else {
            self.pending_fate()
        };
        let pending = self.space.pending_count;
        let past = if overrun {
            ", head moved past a ring's worth"
        } else {
            ""
        };
        if !self.go(fate, format_args!("ring of {pending} ops applied{past}")) {
            self.unqueue();
            return;
        }
        if overrun {
            let tail = paging::ring::tail();
            let head = tail.wrapping_add(ring::RING_SLOTS + 1 + self.rng.below(1000));
            // SAFETY: the ring's head word, ours to write.
            unsafe { ring_word(ring::HEAD_OFFSET).write_volatile(head) };
        }
        self.flush_ring();
        self.survived(fate);
    }

    /// A new address space (sharing the kernel half, the user pages and
    /// the orderly region, with chaos slots of its own), a switch to one of
    /// ours, a flush of everything, or one page invalidated.
    pub fn root_action(&mut self) {
        match self.rng.weighted(&[2, 6, 1, 2]) {
            0 if self.space.root_count < MAX_ROOTS => {
                let Some(root) = paging::new_address_space(&mut self.space.frames) else {
                    return;
                };
                let first = self.space.roots[0];
                // SAFETY: the new root is ours alone; slots 0 and 1 link
                // the user pages and the orderly region as the first root
                // does.
                unsafe {
                    write_phys(root, read_phys(first));
                    write_phys(root + 8 * ORDERLY_SLOT, read_phys(first + 8 * ORDERLY_SLOT));
                    write_phys(
                        root + 8 * SPRAY_SLOT,
                        table_entry(self.space.spray_l3, false),
                    );
                }
                for slot in CHAOS_SLOTS {
                    if self.rng.percent(50) {
                        let value = self.rng.pick(&self.space.chaos) | self.entry_flags();
                        // SAFETY: a chaos slot of the new root.
                        unsafe { write_phys(root + 8 * slot, value) };
                    }
                }
                let index = self.space.root_count;
                self.space.roots[index] = root;
                self.space.root_count += 1;
                // Never run yet: the host has no shadow of it.
                self.space.clean |= 1 << index;
                if self.verbose {
                    let step = self.step;
                    guest_rt::println!("fuzz: step {step}: new address space at {root:#x}");
                }
            }
            0 | 1 => {
                let index = self.rng.below(self.space.root_count as u64) as usize;
                let root = self.space.roots[index];
                if self.go(Fate::Safe, format_args!("set_root({root:#x})")) {
                    // SAFETY: every root of ours has the start-up kernel
                    // half, which maps the fuzzer where it runs.
                    let _ = unsafe { hypercall::set_root(root) };
                    self.space.current = index;
                }
            }
            2 => {
                if self.go(Fate::Safe, format_args!("flush everything")) {
                    // SAFETY: a flush only drops shadow entries.
                    let _ = unsafe { hypercall::mmu_op(MmuOp::FlushAll) };
                    self.space.clean = u32::MAX;
                }
            }
            _ => {
                let vaddr = if self.rng.percent(50) {
                    self.chaos_vaddr()
                } else {
                    orderly_vaddr(
                        self.rng.below(ORDERLY_TABLES),
                        self.rng.below(ORDERLY_PAGES),
                    )
                };
                if self.go(Fate::Safe, format_args!("invalidate {vaddr:#x}")) {
                    // SAFETY: invalidating only drops shadow entries.
                    let _ = unsafe { hypercall::mmu_op(MmuOp::InvalidatePage { vaddr }) };
                }
            }
        }
    }

    /// Flushes the running address space's user half: it is clean after.
    pub fn flush_user(&mut self) {
        if self.go(Fate::Safe, format_args!("flush the user half")) {
            // SAFETY: a flush only drops shadow entries.
            let _ = unsafe { hypercall::mmu_op(MmuOp::FlushUser) };
            self.space.clean |= 1 << self.space.current;
        }
    }

    /// A read, write or fetch somewhere: the regions mostly, also the user
    /// page, the fuzzer's own kernel-half data, kernel addresses past its
    /// memory, the switcher's slot, non-canonical and low addresses. Where
    /// the model can say what must happen, it is checked.
    pub fn touch(&mut self) {
        let memory = self.limits.memory;
        let access = match self.rng.weighted(&[55, 30, 15]) {
            0 => Access::Read,
            1 => Access::Write,
            _ => Access::Fetch,
        };
        let offset = if access == Access::Fetch {
            0
        } else {
            8 * self.rng.below(PAGE_BYTES / 8)
        };
        let page = match self.rng.weighted(&[40, 30, 3, 3, 3, 3, 3, 3, 2]) {
            0 => orderly_vaddr(
                self.rng.below(ORDERLY_TABLES),
                self.rng.below(ORDERLY_PAGES),
            ),
            1 => self.chaos_vaddr(),
            2 => USER_CODE,
            3 => kernel_virtual(self.rng.pick(&self.space.data)),
            4 => kernel_virtual(memory + PAGE_BYTES * self.rng.below(4)),
            5 => kernel_virtual(
                self.rng
                    .pick(&[SHARED_PAGE_GPA, guest_abi::boot::BOOT_PARAMS_GPA]),
            ),
            6 => SWITCHER_SLOT + PAGE_BYTES * self.rng.below(24),
            7 => {
                let random = 0x0000_8000_0000_0000 | (self.rng.next() & 0x0000_7fff_ffff_f000);
                self.rng.pick(&[
                    0x0000_8000_0000_0000,
                    0xffff_7fff_ffff_f000,
                    1 << 63,
                    random,
                ])
            }
            _ => PAGE_BYTES * self.rng.below(4),
        };
        let vaddr = page + offset;
        if !model::canonical(vaddr) {
            self.touch_non_canonical(vaddr, access);
            return;
        }
        if page & SWITCHER_SLOT == SWITCHER_SLOT {
            self.touch_switcher(vaddr, access);
            return;
        }
        self.touch_at(vaddr, access);
    }

    /// A read, write or fetch of `vaddr` (canonical, outside the switcher's
    /// slot) from ring 1, announced as the model says and checked where
    /// the shadow must agree with the model; says whether it was made.
    /// A write or fetch that could hurt the fuzzer, or that the model
    /// cannot vouch for, is made a read; an access that may take a page
    /// from the zero pool is made only where the model can say whether it
    /// does (see [`crate::pool`]).
    pub fn touch_at(&mut self, vaddr: u64, mut access: Access) -> bool {
        let offset = vaddr & (PAGE_BYTES - 1);
        let kernel_half = vaddr >> 63 != 0;
        // The kernel half never changes, so its shadow is always clean.
        let clean = kernel_half || self.space.is_clean();
        let mut expect = self.expect(vaddr, access);
        // Writes and fetches only where they cannot hurt the fuzzer, and
        // only where the shadow is sure to agree with the model.
        let harmless = match expect {
            Outcome::Done { page, .. } => match access {
                Access::Write => self.space.writable_data(page, offset),
                Access::Fetch => self.space.data_index(page).is_some(),
                Access::Read => true,
            },
            // A lent page is ours: written, it changes nothing but itself
            // if it is never read as a table. Its zeros are no code.
            Outcome::Filled { leaf, .. } => match access {
                Access::Write => self.space.in_orderly_l1(leaf),
                Access::Fetch => false,
                Access::Read => true,
            },
            Outcome::Fault(_) | Outcome::Kill(_) => true,
        };
        if access != Access::Read && !(clean && harmless) {
            access = Access::Read;
            expect = self.expect(vaddr, access);
        }
        if !clean && let Outcome::Filled { .. } = expect {
            // A stale shadow entry may serve the read without a fault, and
            // then the host takes nothing: the model could not say.
            if self.verbose {
                let step = self.step;
                guest_rt::println!(
                    "fuzz: step {step}: read {vaddr:#x} not made: it may take from the zero pool"
                );
            }
            return false;
        }
        let fate = match expect {
            Outcome::Kill(why) if clean => Fate::Killed(why),
            Outcome::Kill(_) => Fate::May,
            _ => Fate::Safe,
        };
        let value = self.rng.next();
        let name = access_name(access);
        let note = self.pool_note(vaddr);
        if !self.go(fate, format_args!("{name} {vaddr:#x}{note}")) {
            return false;
        }
        let mark = match model::walk(self.space.root(), vaddr, &self.limits) {
            Walk::ZeroOnDemand { leaf, mark, .. } => Some((leaf, mark)),
            _ => None,
        };
        let seen = match access {
            Access::Read => probe::read(vaddr).map_err(|f| (f.address, f.error_code)),
            // SAFETY: the model put the write in a data frame (above its
            // stub), or in a lent page the host maps at an orderly level-1
            // entry, in a clean address space.
            Access::Write => unsafe { probe::write(vaddr, value) }
                .map(|()| value)
                .map_err(|f| (f.address, f.error_code)),
            Access::Fetch => fetch(vaddr),
        };
        self.survived(fate);
        if clean {
            self.check_touch(vaddr, access, value, expect, seen);
        }
        self.settle_pool(vaddr, access, value, expect, mark);
        true
    }

    /// Checks an access against the model's outcome.
    fn check_touch(
        &mut self,
        vaddr: u64,
        access: Access,
        written: u64,
        expect: Outcome,
        seen: Result<u64, (u64, u64)>,
    ) {
        self.stats.checked += 1;
        let name = access_name(access);
        match (expect, seen) {
            (Outcome::Fault(code), Err((address, error))) => {
                if address != vaddr || error & 0x1f != code {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: expected a page fault with code {code:#x}, got one at {address:#x} with code {error:#x}"
                    ));
                }
            }
            (Outcome::Fault(code), Ok(value)) => self.mismatch(format_args!(
                "{name} {vaddr:#x}: expected a page fault with code {code:#x}, the access went through ({value:#x})"
            )),
            (Outcome::Done { page, .. }, Err((address, error))) => self.mismatch(format_args!(
                "{name} {vaddr:#x}: expected to reach guest page {page:#x}, got a page fault at {address:#x} with code {error:#x}"
            )),
            (Outcome::Filled { page, .. }, Err((address, error))) => self.mismatch(format_args!(
                "{name} {vaddr:#x}: expected the host to fill the zero-on-demand entry with the lent page {page:#x}, got a page fault at {address:#x} with code {error:#x}"
            )),
            // The page's zeros, the entry and the count: `settle_pool`.
            (Outcome::Filled { page, .. }, Ok(value)) => {
                let expected = if access == Access::Write { written } else { 0 };
                if value != expected {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: the lent page {page:#x} should give {expected:#x}, gave {value:#x}"
                    ));
                }
            }
            (Outcome::Done { page, leaf }, Ok(value)) => {
                let offset = vaddr & (PAGE_BYTES - 1);
                let index = self.space.data_index(page);
                let expected = match access {
                    Access::Fetch => index.map(stub_value),
                    Access::Write => Some(written),
                    // Only data frames hold still: the shared page and the
                    // tables change under the host's hand.
                    Access::Read => index.map(|_| read_phys(page + offset)),
                };
                if let Some(expected) = expected.filter(|&e| e != value) {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: guest page {page:#x} should give {expected:#x}, gave {value:#x}"
                    ));
                }
                if access == Access::Write && read_phys(page + offset) != written {
                    self.mismatch(format_args!(
                        "write {vaddr:#x}: the write did not reach guest page {page:#x}"
                    ));
                }
                let leaf_value = read_phys(leaf);
                let needed = if access == Access::Write {
                    ACCESSED | DIRTY
                } else {
                    ACCESSED
                };
                if vaddr >> 63 == 0 && leaf_value & needed != needed {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: leaf entry {leaf_value:#x} at {leaf:#x} lacks the accessed/dirty bits {needed:#x}"
                    ));
                }
            }
            (Outcome::Kill(_), _) => {}
        }
    }

    /// A touch of a non-canonical address: a #GP, reflected.
    fn touch_non_canonical(&mut self, vaddr: u64, access: Access) {
        if !self.go(
            Fate::Safe,
            format_args!("{} non-canonical {vaddr:#x}", access_name(access)),
        ) {
            return;
        }
        let before = recover::traps_taken();
        // SAFETY: each access faults (#GP) into the recovery point; none
        // can touch memory, the address being non-canonical.
        unsafe {
            match access {
                Access::Read => {
                    guarded!(["mov rax, qword ptr [rdi]"], in("rdi") vaddr, out("rax") _)
                }
                Access::Write => {
                    guarded!(["mov qword ptr [rdi], rax"], in("rdi") vaddr, in("rax") 0u64)
                }
                Access::Fetch => guarded!(["call rdi"], in("rdi") vaddr),
            }
        }
        let trap = recover::last_trap();
        self.stats.checked += 1;
        if recover::traps_taken() == before || trap.vector != 13 {
            self.mismatch(format_args!(
                "{} non-canonical {vaddr:#x}: expected a #GP, got {}",
                access_name(access),
                if recover::traps_taken() == before {
                    TrapName::None
                } else {
                    TrapName::Some(trap)
                }
            ));
        }
    }

    /// Reads of many 2 MiB pages of the spray region, each checked: from
    /// a few dozen to more than the host's bound on shadow frames (1024 for
    /// a 16 MiB guest), so that it must reclaim the shadow, the pinned
    /// kernel stack included, while the fuzzer goes on.
    pub fn spray(&mut self) {
        let count = if self.rng.one_in(4) {
            1100 + self.rng.below(200)
        } else {
            32 + self.rng.below(200)
        };
        let first = self.rng.below(SPRAY_GIBS * 512);
        if !self.go(
            Fate::Safe,
            format_args!("read {count} large pages of the spray region from {first}"),
        ) {
            return;
        }
        for n in 0..count {
            let page = (first + n * 7) % (SPRAY_GIBS * 512);
            let offset = 8 * self.rng.below(PAGE_BYTES / 8) + PAGE_BYTES * self.rng.below(512);
            let vaddr = SPRAY_BASE + (page << 21) + offset;
            let expect = self.expect(vaddr, Access::Read);
            let seen = probe::read(vaddr).map_err(|f| (f.address, f.error_code));
            // The region never changes, so the model holds whatever the
            // rest of the shadow is doing.
            if let Outcome::Done { .. } | Outcome::Fault(_) = expect {
                self.check_touch(vaddr, Access::Read, 0, expect, seen);
            }
        }
    }

    /// A touch of the switcher's slot: reads may or may not fault, a write
    /// must be killed, a fetch may run the switcher's code in ring 1. Now
    /// and then with the running root's slot 511 made present behind the
    /// host's back first (and cleared after): the host must still treat
    /// the slot as nothing of the guest's.
    fn touch_switcher(&mut self, vaddr: u64, access: Access) {
        // A CPU's register slot maps the running guest's own register page,
        // writable (docs/DESIGN.md, "The register page belongs to the
        // guest"): a write there is allowed (the next exit overwrites it);
        // on any other page of the slot it is a kill.
        let register_slot = (vaddr - SWITCHER_SLOT)
            .checked_sub(REGISTER_SLOTS)
            .is_some_and(|offset| offset % REGISTER_SLOT_STRIDE < PAGE_BYTES);
        let fate = match access {
            Access::Read => Fate::Safe,
            Access::Write if register_slot => Fate::May,
            Access::Write => Fate::Killed(model::reason::SWITCHER_WRITE),
            Access::Fetch => Fate::May,
        };
        if !self.go(
            fate,
            format_args!("{} the switcher's slot at {vaddr:#x}", access_name(access)),
        ) {
            return;
        }
        let slot_511 = self.space.root() + 8 * 511;
        let behind_the_back = self.rng.one_in(3);
        if behind_the_back {
            let value = self.rng.pick(&self.space.chaos) | self.entry_flags();
            // SAFETY: the running root's top-level entry 511, which the
            // host never reads but to refuse it (and which is cleared
            // again below).
            unsafe { write_phys(slot_511, value) };
        }
        match access {
            Access::Read => {
                let _ = probe::read(vaddr);
            }
            Access::Write => {
                // SAFETY: the host must kill us for it; if it does not,
                // the write hit a page the host left writable, which is
                // what we report.
                let _ = unsafe { probe::write(vaddr, 0) };
            }
            Access::Fetch => {
                let _ = fetch(vaddr);
            }
        }
        if behind_the_back {
            // SAFETY: as above: back to not present.
            unsafe { write_phys(slot_511, 0) };
        }
        self.survived(fate);
    }
}

/// What a failed check saw: a trap, or none.
enum TrapName {
    None,
    Some(recover::Trap),
}

impl core::fmt::Display for TrapName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::None => f.write_str("no trap"),
            Self::Some(trap) => write!(f, "a trap ({trap})"),
        }
    }
}

pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
        Access::Fetch => "fetch",
    }
}

/// Calls `target` (a data frame's stub, or an address that faults): its
/// `rax`, or the page fault's address and error code.
fn fetch(target: u64) -> Result<u64, (u64, u64)> {
    let before = recover::traps_taken();
    let result: u64;
    // SAFETY: the target is a stub that returns (`mov eax, imm; ret`), or
    // the model says the fetch faults; either way we come back here, the
    // fault through the recovery point.
    unsafe { guarded!(["call rax"], inout("rax") target => result) };
    if recover::traps_taken() == before {
        return Ok(result);
    }
    let trap = recover::last_trap();
    if trap.vector == 14 {
        Err((trap.address, trap.error_code))
    } else {
        Err((u64::MAX, trap.vector << 32 | trap.error_code))
    }
}
