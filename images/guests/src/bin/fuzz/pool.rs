//! The zero pool (`guest_abi::shared::ZeroPool`): pages the fuzzer lends
//! the host for its zero-on-demand entries (`guest_abi::pte`, "Pages the
//! host fills with zeros"), and the action that attacks it.
//!
//! The fuzzer sets [`ZERO_FRAMES`] frames of its own aside for lending.
//! Each is free, lent (waiting in the pool), or the page of the entry the
//! host filled with it; that one is free again once its entry maps
//! something else (nothing but the host's fills ever puts these frames in
//! an entry). Pages still lent at the end are simply left.
//!
//! [`ZeroPool`] keeps the counts and slots as the fuzzer wrote them, and
//! `taken` as the host must have written it. The host takes a page only at
//! a fault on a zero-on-demand entry that the entry's rights allow, and the
//! fuzzer makes such an access only where the shadow must agree with its
//! tables (a clean address space: then the access must fault), so every
//! take is predicted exactly ([`Outcome::Filled`]) and checked: the entry,
//! the page's zeros, the count. No choice of the fuzzer's depends on how
//! the host's shadow happens to stand.
//!
//! The action ([`Fuzzer::zero_pool`]) lends good pages; writes
//! zero-on-demand entries with random rights and software bits in the
//! orderly region and touches them; writes marks that are not marks (at
//! levels 2 and 3, or with address bits), which must stay plain
//! not-present entries; takes the pages back by resetting the counts; and
//! now and then lends a page that is none (unaligned, past the end of
//! memory) or sets counts that make no sense, then touches a mark. Only a
//! fault that takes the bad slot is lethal, and the model announces it as
//! such; a bad page lent behind good ones waits until the good ones are
//! gone.

use crate::LETHAL_DAMPING;
use crate::fuzzer::Fuzzer;
use crate::model::{Access, Fate, Limits, Outcome, PoolNext, Walk, read_phys};
use crate::space::{ORDERLY_BASE, ORDERLY_PAGES, ORDERLY_TABLES, access_name, orderly_vaddr};
use core::sync::atomic::{Ordering, compiler_fence};
use guest_abi::pte::{
    ACCESSED, ADDRESS_MASK, CACHE_DISABLE, DIRTY, GLOBAL, HUGE_PAGE, NO_EXECUTE, PRESENT,
    SOFTWARE_BITS, USER, WRITABLE, WRITE_THROUGH, is_zero_on_demand, zero_on_demand,
    zero_on_demand_filled,
};
use guest_abi::shared::{ZERO_POOL_SLOTS, offset};
use guest_rt::boot;
use guest_rt::paging::{FrameAllocator, PAGE_BYTES, table_entry};

/// Frames set aside for lending: a pool's worth, and some for the entries
/// that hold them.
pub const ZERO_FRAMES: usize = 96;

/// Where one of the frames set aside is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Ours, in no entry and not lent.
    Free,
    /// Counted in the pool, not yet taken.
    Lent,
    /// Taken by the host, and written into the entry at this address.
    Mapped(u64),
}

/// The fuzzer's zero pool, as it wrote it and as the host must have taken
/// from it.
pub struct ZeroPool {
    frames: [u64; ZERO_FRAMES],
    state: [Frame; ZERO_FRAMES],
    /// The slots, as written.
    slots: [u64; ZERO_POOL_SLOTS as usize],
    /// The counts: `given` as written, `taken` as the host must have it.
    given: u64,
    taken: u64,
    /// Pages lent, pages the host filled, and resets of the counts.
    pub lent: u64,
    pub fills: u64,
    pub resets: u64,
}

/// The word at byte `offset` of the shared page.
fn shared_word(offset: u64) -> *mut u64 {
    (boot::shared_page() as *mut u8)
        .wrapping_add(offset as usize)
        .cast()
}

/// One of the pool's words (`offset` one of `offset::ZERO_POOL_*`).
fn read_shared(offset: u64) -> u64 {
    // SAFETY: a word of the shared page, mapped for the guest's life;
    // volatile, because the host writes `taken` behind the compiler.
    unsafe { shared_word(offset).read_volatile() }
}

/// The pool's `taken` count, as the host wrote it.
pub fn host_taken() -> u64 {
    read_shared(offset::ZERO_POOL_TAKEN)
}

/// Writes one of the pool's words (`offset` one of `offset::ZERO_POOL_*`).
fn write_shared(offset: u64, value: u64) {
    // SAFETY: the pool's words are the guest's to write, in its shared
    // page; the host reads them only at a fault, never trusting them.
    unsafe { shared_word(offset).write_volatile(value) }
}

impl ZeroPool {
    /// Sets [`ZERO_FRAMES`] frames aside; the pool starts empty (both
    /// counts 0, as the host made the shared page).
    pub fn new(allocator: &mut FrameAllocator) -> Result<Self, &'static str> {
        let mut frames = [0; ZERO_FRAMES];
        for frame in &mut frames {
            *frame = allocator.allocate().ok_or("out of guest memory")?;
        }
        Ok(Self {
            frames,
            state: [Frame::Free; ZERO_FRAMES],
            slots: [0; ZERO_POOL_SLOTS as usize],
            given: read_shared(offset::ZERO_POOL_GIVEN),
            taken: host_taken(),
            lent: 0,
            fills: 0,
            resets: 0,
        })
    }

    /// The `taken` count the host must have written.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Pages counted and not taken (more than a pool's worth if the counts
    /// make no sense).
    fn waiting(&self) -> u64 {
        self.given.wrapping_sub(self.taken)
    }

    /// What the next fault on a zero-on-demand entry gets.
    pub fn next(&self, limits: &Limits) -> PoolNext {
        let slot = self.slots[(self.taken % ZERO_POOL_SLOTS) as usize];
        PoolNext::of(self.given, self.taken, slot, limits)
    }

    /// The host took the next page, for the entry at `leaf`.
    fn took(&mut self, leaf: u64) {
        let page = self.slots[(self.taken % ZERO_POOL_SLOTS) as usize];
        if let Some(index) = self.frames.iter().position(|&f| f == page) {
            self.state[index] = Frame::Mapped(leaf);
        }
        self.taken = self.taken.wrapping_add(1);
        self.fills += 1;
    }

    /// Frames whose entry maps something else by now are free again.
    fn release_unmapped(&mut self) {
        for (frame, state) in self.frames.iter().zip(self.state.iter_mut()) {
            if let Frame::Mapped(leaf) = *state
                && read_phys(leaf) & (PRESENT | ADDRESS_MASK) != frame | PRESENT
            {
                *state = Frame::Free;
            }
        }
    }

    /// How many frames are free.
    fn free_count(&self) -> u64 {
        self.state.iter().filter(|&&s| s == Frame::Free).count() as u64
    }

    /// A free frame: the first from `pick` on.
    fn free_frame(&self, pick: u64) -> Option<usize> {
        (0..ZERO_FRAMES)
            .map(|n| (pick as usize + n) % ZERO_FRAMES)
            .find(|&i| self.state[i] == Frame::Free)
    }

    /// Puts `page` (one of ours or not a page at all) in the next slot and
    /// counts it.
    fn lend(&mut self, page: u64) {
        write_shared(
            offset::ZERO_POOL_PAGES + (self.given % ZERO_POOL_SLOTS) * 8,
            page,
        );
        self.slots[(self.given % ZERO_POOL_SLOTS) as usize] = page;
        if let Some(index) = self.frames.iter().position(|&f| f == page) {
            self.state[index] = Frame::Lent;
        }
        // The page must be in its slot before the host sees it counted.
        compiler_fence(Ordering::SeqCst);
        self.set_given(self.given.wrapping_add(1));
        self.lent += 1;
    }

    /// Writes `given`.
    fn set_given(&mut self, given: u64) {
        write_shared(offset::ZERO_POOL_GIVEN, given);
        self.given = given;
    }

    /// Both counts to `count`: every page lent is ours again.
    fn reset(&mut self, count: u64) {
        write_shared(offset::ZERO_POOL_TAKEN, count);
        self.set_given(count);
        self.taken = count;
        for state in &mut self.state {
            if *state == Frame::Lent {
                *state = Frame::Free;
            }
        }
        self.resets += 1;
    }
}

/// Some of the bits a zero-on-demand entry may carry that the filled entry
/// drops: caching, accessed, dirty, PAT, global.
const DROPPED_BITS: u64 = WRITE_THROUGH | CACHE_DISABLE | ACCESSED | DIRTY | HUGE_PAGE | GLOBAL;

/// An announcement's note on the zero-on-demand entry an access meets (its
/// value), and what the pool gives next; nothing if it meets none.
pub struct PoolNote(Option<(u64, PoolNext)>);

impl core::fmt::Display for PoolNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some((mark, next)) => write!(f, ", a zero-on-demand entry {mark:#x}, with {next}"),
            None => Ok(()),
        }
    }
}

impl Fuzzer {
    /// What `access` to `vaddr` does in the running address space, the
    /// zero pool as it stands.
    pub fn expect(&self, vaddr: u64, access: Access) -> Outcome {
        let pool = self.space.pool.next(&self.limits);
        crate::model::outcome(self.space.root(), vaddr, access, &self.limits, pool)
    }

    /// For an announcement: the zero-on-demand entry the walk to `vaddr`
    /// ends in, if it does, and what the pool gives next.
    pub fn pool_note(&self, vaddr: u64) -> PoolNote {
        match crate::model::walk(self.space.root(), vaddr, &self.limits) {
            Walk::ZeroOnDemand { mark, .. } => {
                PoolNote(Some((mark, self.space.pool.next(&self.limits))))
            }
            _ => PoolNote(None),
        }
    }

    /// After an access of `vaddr` that went ahead, expected to come to
    /// `expect`: the host took from the pool exactly what the model said,
    /// filled the entry as the ABI says with a page of zeros (but for what
    /// a write put there), or left the zero-on-demand entry the walk ended
    /// in (`mark`, with its place) as it was.
    pub fn settle_pool(
        &mut self,
        vaddr: u64,
        access: Access,
        written: u64,
        expect: Outcome,
        mark: Option<(u64, u64)>,
    ) {
        let name = access_name(access);
        let model = self.space.pool.taken();
        let took = host_taken().wrapping_sub(model);
        match expect {
            Outcome::Filled { page, leaf, mark } if took == 1 => {
                let write = access == Access::Write;
                let filled = zero_on_demand_filled(mark, page, write);
                let entry = read_phys(leaf);
                if entry != filled {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: the zero-on-demand entry {mark:#x} at {leaf:#x} should now be {filled:#x}, is {entry:#x}"
                    ));
                }
                let offset = vaddr & (PAGE_BYTES - 1) & !7;
                for at in (0..PAGE_BYTES).step_by(8) {
                    let expected = if write && at == offset { written } else { 0 };
                    let seen = read_phys(page + at);
                    if seen != expected {
                        self.mismatch(format_args!(
                            "{name} {vaddr:#x}: the lent page {page:#x} holds {seen:#x} at {at:#x}, not {expected:#x}"
                        ));
                    }
                }
                self.space.pool.took(leaf);
            }
            Outcome::Filled { page, .. } => self.mismatch(format_args!(
                "{name} {vaddr:#x}: the host should have taken the lent page {page:#x} (count {model}); it took {took}"
            )),
            _ if took != 0 => self.mismatch(format_args!(
                "{name} {vaddr:#x}: the host took {took} pages from the zero pool (count {model}), none expected"
            )),
            _ => {
                if let Some((leaf, mark)) = mark
                    && read_phys(leaf) != mark
                {
                    self.mismatch(format_args!(
                        "{name} {vaddr:#x}: the zero-on-demand entry {mark:#x} at {leaf:#x} became {:#x} with no page taken",
                        read_phys(leaf)
                    ));
                }
            }
        }
    }

    /// After any action: the host took nothing the model did not expect.
    pub fn check_pool(&self) {
        let (host, model) = (host_taken(), self.space.pool.taken());
        if host != model {
            self.mismatch(format_args!(
                "the zero pool's taken count is {host}, the model says {model}"
            ));
        }
    }

    /// One action on the zero pool: lend pages, write a mark and touch it,
    /// touch a mark already there, write an entry that is not a mark,
    /// take the pages back, or attack with a bad page or bad counts.
    pub fn zero_pool(&mut self) {
        match self.rng.weighted(&[28, 35, 10, 10, 8, 9]) {
            0 => {
                let count = if self.rng.one_in(5) {
                    ZERO_POOL_SLOTS
                } else {
                    1 + self.rng.below(8)
                };
                self.lend_pages(count);
            }
            1 => self.mark_and_touch(),
            2 => self.touch_a_mark(),
            3 => self.not_a_mark(),
            4 => self.reset_pool(),
            _ => self.pool_attack(),
        }
    }

    /// Lends up to `count` free frames of ours (as many as the pool has
    /// room for); none while the counts make no sense.
    fn lend_pages(&mut self, count: u64) {
        self.space.pool.release_unmapped();
        let pool = &self.space.pool;
        let room = ZERO_POOL_SLOTS.saturating_sub(pool.waiting());
        let count = count.min(room).min(pool.free_count());
        if count == 0
            || !self.go(
                Fate::Safe,
                format_args!("lend {count} pages to the zero pool"),
            )
        {
            return;
        }
        for _ in 0..count {
            let pick = self.rng.below(ZERO_FRAMES as u64);
            let Some(index) = self.space.pool.free_frame(pick) else {
                break;
            };
            let page = self.space.pool.frames[index];
            self.space.pool.lend(page);
        }
    }

    /// A zero-on-demand entry with random rights and software bits, and
    /// now and then bits the filled entry must drop.
    fn random_mark(&mut self) -> u64 {
        let mut flags = 0;
        for (bit, percent) in [(WRITABLE, 60), (USER, 30), (NO_EXECUTE, 40)] {
            if self.rng.percent(percent) {
                flags |= bit;
            }
        }
        if self.rng.percent(40) {
            flags |= self.rng.next() & SOFTWARE_BITS;
        }
        let mut mark = zero_on_demand(flags);
        if self.rng.one_in(5) {
            mark |= self.rng.next() & DROPPED_BITS;
        }
        mark
    }

    /// A random access, and an address in page `page` for it (a fetch
    /// starts at the page's first byte).
    fn random_access(&mut self, page: u64) -> (u64, Access) {
        match self.rng.weighted(&[50, 30, 20]) {
            0 => (page + 8 * self.rng.below(PAGE_BYTES / 8), Access::Read),
            1 => (page + 8 * self.rng.below(PAGE_BYTES / 8), Access::Write),
            _ => (page, Access::Fetch),
        }
    }

    /// Most of the time, a page lent if none waits (so that a mark can be
    /// filled), when the counts make sense.
    fn maybe_lend_one(&mut self) {
        if self.rng.percent(70) && self.space.pool.waiting() == 0 {
            let count = 1 + self.rng.below(4);
            self.lend_pages(count);
        }
    }

    /// Most of the time, the user half flushed if the running address
    /// space is dirty: a fill is only tried where the shadow is clean.
    fn maybe_flush(&mut self) {
        if !self.space.is_clean() && self.rng.percent(60) {
            self.flush_user();
        }
    }

    /// Writes a mark into an orderly level-1 entry, reported as the
    /// orderly region's entries are, with rights that allow `access` if
    /// given; its address.
    fn write_mark(&mut self, access: Option<Access>) -> u64 {
        let j = self.rng.below(ORDERLY_TABLES);
        let i = self.rng.below(ORDERLY_PAGES);
        let mark = match (self.random_mark(), access) {
            (mark, Some(Access::Write)) => mark | WRITABLE,
            (mark, Some(Access::Fetch)) => mark & !(NO_EXECUTE | USER),
            (mark, _) => mark,
        };
        let gpa = self.space.orderly_l1[j as usize] + 8 * i;
        let vaddr = orderly_vaddr(j, i);
        self.report_orderly(gpa, vaddr, 1, mark);
        vaddr
    }

    /// A mark written into the orderly region, then read, written or
    /// fetched: the host fills it from the pool, or reflects the fault.
    fn mark_and_touch(&mut self) {
        self.maybe_lend_one();
        let page = self.write_mark(None);
        self.maybe_flush();
        let (vaddr, access) = self.random_access(page);
        self.touch_at(vaddr, access);
    }

    /// A touch of one of the marks in the orderly region's level-1 tables
    /// (a new one if there is none).
    fn touch_a_mark(&mut self) {
        let mut marks = [0u64; (ORDERLY_TABLES * ORDERLY_PAGES) as usize];
        let mut count = 0;
        for j in 0..ORDERLY_TABLES {
            for i in 0..ORDERLY_PAGES {
                let entry = read_phys(self.space.orderly_l1[j as usize] + 8 * i);
                if is_zero_on_demand(entry) {
                    marks[count] = orderly_vaddr(j, i);
                    count += 1;
                }
            }
        }
        if count == 0 {
            return self.mark_and_touch();
        }
        self.maybe_lend_one();
        self.maybe_flush();
        let page = self.rng.pick(&marks[..count]);
        let (vaddr, access) = self.random_access(page);
        self.touch_at(vaddr, access);
    }

    /// An entry that looks like a mark but is none: a mark with address
    /// bits at level 1, or a mark at level 2 or 3 (the region's table put
    /// back after). It is a plain not-present entry: touched, it faults
    /// and the host takes nothing, though the pool has pages.
    fn not_a_mark(&mut self) {
        let j = self.rng.below(ORDERLY_TABLES);
        let i = self.rng.below(ORDERLY_PAGES);
        let mark = self.random_mark();
        let (gpa, entry_vaddr, level, restore) = match self.rng.below(3) {
            0 => (
                self.space.orderly_l1[j as usize] + 8 * i,
                orderly_vaddr(j, i),
                1,
                None,
            ),
            1 => (
                self.space.orderly_l2 + 8 * j,
                orderly_vaddr(j, 0),
                2,
                Some(table_entry(self.space.orderly_l1[j as usize], true)),
            ),
            _ => (
                self.space.orderly_l3,
                ORDERLY_BASE,
                3,
                Some(table_entry(self.space.orderly_l2, true)),
            ),
        };
        let value = if level == 1 {
            let address = (1 + self.rng.below(self.limits.memory / PAGE_BYTES - 1)) * PAGE_BYTES;
            mark | (address & ADDRESS_MASK)
        } else {
            mark
        };
        self.maybe_lend_one();
        self.report_orderly(gpa, entry_vaddr, level, value);
        self.maybe_flush();
        let (vaddr, access) = self.random_access(orderly_vaddr(j, i));
        self.touch_at(vaddr, access);
        let entry = read_phys(gpa);
        if entry != value {
            self.mismatch(format_args!(
                "the entry {value:#x} at level {level} (at {gpa:#x}), no zero-on-demand one, became {entry:#x}"
            ));
        }
        if let Some(table) = restore {
            self.report_orderly(gpa, entry_vaddr, level, table);
        }
    }

    /// Takes every page lent back: `given` back to `taken` mostly, or
    /// `taken` up to `given`, or both counts anywhere (near the wrap
    /// too). Also what mends counts or a page that make no sense.
    fn reset_pool(&mut self) {
        let pool = &self.space.pool;
        let count = match self.rng.weighted(&[70, 15, 15]) {
            0 => pool.taken,
            1 => pool.given,
            _ => {
                let random = self.rng.next();
                self.rng
                    .pick(&[0, u64::MAX - 1, u64::MAX, (1 << 63) - 2, random])
            }
        };
        self.reset_pool_to(count);
    }

    /// Sets both counts to `count`, taking back every page lent.
    fn reset_pool_to(&mut self, count: u64) {
        if self.go(
            Fate::Safe,
            format_args!("take the zero pool's pages back: both counts {count}"),
        ) {
            self.space.pool.reset(count);
        }
    }

    /// A page that is none (unaligned, past the end of memory, a huge
    /// value), behind a few good ones or next, or counts that make no
    /// sense (more than a pool ahead, or behind); then a mark touched.
    /// Lethal only if the touch takes the bad slot; if the touch is not
    /// carried out (and mostly if it is and survives), `given` is put back
    /// as it was.
    fn pool_attack(&mut self) {
        self.space.pool.release_unmapped();
        let sane = self.space.pool.waiting() < ZERO_POOL_SLOTS;
        let bad_page = sane && self.rng.percent(65);
        if bad_page && self.rng.percent(40) {
            // Behind good pages: the touch below takes one of them.
            let count = 1 + self.rng.below(3);
            self.lend_pages(count);
        } else if bad_page && self.space.pool.waiting() != 0 {
            // Next: the touch below takes it.
            self.reset_pool_to(self.space.pool.taken);
        }
        // Mostly a mark whose rights allow the touch; in a clean shadow
        // (unless MMU ring ops wait), where it must fault.
        let (offset, access) = self.random_access(0);
        let allow = self.rng.percent(75).then_some(access);
        let page = self.write_mark(allow);
        if !self.space.is_clean() {
            self.flush_user();
        }
        let before = self.space.pool.given;
        let what = if bad_page && self.space.pool.waiting() < ZERO_POOL_SLOTS {
            let bad = self.bad_page();
            self.space.pool.lend(bad);
            "lent a page that is none"
        } else {
            let taken = self.space.pool.taken;
            let given = match self.rng.below(4) {
                0 => taken.wrapping_add(ZERO_POOL_SLOTS + 1 + self.rng.below(100)),
                1 => taken.wrapping_add(1 << 63),
                2 => taken.wrapping_sub(1 + self.rng.below(3)),
                _ => self.rng.next(),
            };
            self.space.pool.set_given(given);
            "counts that make no sense"
        };
        if self.verbose {
            let (step, given) = (self.step, self.space.pool.given);
            guest_rt::println!(
                "fuzz: step {step}: zero pool attacked: {what} (given {given}, taken {})",
                self.space.pool.taken
            );
        }
        self.damping = LETHAL_DAMPING;
        let vaddr = page + offset;
        // Not carried out, or it did not reach the bad slot (a page waits
        // before it, or the mark's rights forbid the access): mostly put
        // back, so that the pool serves again; else left for a later fault
        // to meet (until the counts are reset).
        if !self.touch_at(vaddr, access) || self.rng.percent(60) {
            self.space.pool.set_given(before);
        }
    }

    /// A value the host must refuse as a lent page: unaligned (inside
    /// memory or not), at or past the end of memory, or huge.
    fn bad_page(&mut self) -> u64 {
        let memory = self.limits.memory;
        let frame = self.space.pool.frames[self.rng.below(ZERO_FRAMES as u64) as usize];
        self.rng.pick(&[
            frame + 8,
            frame + 1,
            frame | 0x800,
            memory - 8,
            memory,
            memory + PAGE_BYTES,
            1 << 40,
            (1 << 52) - PAGE_BYTES,
            !(PAGE_BYTES - 1),
            u64::MAX,
        ])
    }
}
