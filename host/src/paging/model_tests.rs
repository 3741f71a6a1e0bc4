//! The model-based property test of the shadow page tables.
//!
//! A random guest (up to four address spaces over a shared kernel half)
//! changes its tables and tells the host, one entry at a time or in ring
//! batches; it switches roots, flushes and faults with every kind of access.
//! After every step the shadow is compared with a deliberately simple,
//! separate model of what the guest's tables allow ([`reference_walk`]):
//!
//! - every present shadow leaf, in every cached root, maps its address to
//!   the host frame behind the guest page the guest's tables give, with no
//!   more rights (writable only if writable at every level and dirty; user
//!   only if user at every level; no-execute if any level says so), and the
//!   guest's entries are marked accessed;
//! - every fault gets the decision the model predicts (fixed, or reflected
//!   with the architectural error code), and a fixed fault is really mapped;
//! - the kernel half is the same in every root, the stack stays pinned, the
//!   switcher sits in its slot;
//! - the frames the host holds are exactly those reachable from the roots
//!   plus its spare tables, which are zeroed and reachable from nowhere;
//!   each table's bitmap of entries in use names exactly its entries that
//!   are not zero; and after teardown every frame is back.

use super::entry::{Level, ShadowEntry, ShadowEntryKind, TableIndex};
use super::testing::*;
use super::{Eviction, FaultDecision, GuestMemory, PagingConfig, ShadowFrames};
use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use guest_abi::pte::{self, MmuOp, ring};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::vec::Vec;

/// The guest roots.
const ROOTS: [u64; 4] = [ROOT_A, ROOT_B, 0x3000, 0x4000];
/// Where the ring lives.
const RING: u64 = 0x8000;
/// The switcher table the test "kernel" installs.
const SWITCHER: HostPhysAddr = HostPhysAddr::new(0xdead_0000);
/// The kernel stack: two pages under top-level slot 257, never touched by
/// the random writes.
const STACK_TOP: u64 = 0xffff_8080_0000_2000;
/// Cases run by the property test.
const CASES: u32 = 256;

/// One of 24 virtual addresses whose paths collide often.
fn vaddr(index: u8) -> u64 {
    let i = u64::from(index % 24);
    let pml4 = [0, 1, 300][(i % 3) as usize];
    let pdpt = [0, 2][(i / 3 % 2) as usize];
    let pd = [0, 3][(i / 6 % 2) as usize];
    let pt = [0, 5][(i / 12 % 2) as usize];
    GuestVirtAddr::new_truncate(pml4 << 39 | pdpt << 30 | pd << 21 | pt << 12).as_u64()
}

/// What a random write puts in an entry.
#[derive(Clone, Copy, Debug)]
enum Value {
    Absent,
    /// A fresh table (above level 1) or a 4 KiB page (level 1).
    TableOrPage {
        frame: u8,
        flags: u8,
    },
    /// A large page at level 2 or 3 (elsewhere: like `TableOrPage`).
    Large {
        which: u8,
        flags: u8,
    },
    /// Outside guest memory or with reserved bits: the guest must die.
    Malformed {
        reserved: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Write {
    root: u8,
    va: u8,
    level: u8,
    value: Value,
}

#[derive(Clone, Debug)]
enum Step {
    Write(Write),
    Batch(Vec<Write>),
    Switch(u8),
    Fault { va: u8, page: u8, code: u8 },
    FlushUser,
    FlushAll,
    Invalidate(u8),
}

fn flags_from(bits: u8) -> u64 {
    let mut f = 0;
    for (bit, flag) in [
        pte::WRITABLE,
        pte::USER,
        pte::NO_EXECUTE,
        pte::ACCESSED,
        pte::DIRTY,
    ]
    .into_iter()
    .enumerate()
    {
        if bits & (1 << bit) != 0 {
            f |= flag;
        }
    }
    f
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(Value::Absent),
        24 => (any::<u8>(), any::<u8>()).prop_map(|(frame, flags)| Value::TableOrPage { frame, flags }),
        9 => (any::<u8>(), any::<u8>()).prop_map(|(which, flags)| Value::Large { which, flags }),
        1 => any::<bool>().prop_map(|reserved| Value::Malformed { reserved }),
    ]
}

fn write_strategy() -> impl Strategy<Value = Write> {
    (0u8..4, any::<u8>(), 1u8..=4, value_strategy()).prop_map(|(root, va, level, value)| Write {
        root,
        va,
        level,
        value,
    })
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => write_strategy().prop_map(Step::Write),
        3 => prop::collection::vec(write_strategy(), 1..6).prop_map(Step::Batch),
        3 => (0u8..4).prop_map(Step::Switch),
        10 => (any::<u8>(), 0u8..3, 0u8..32).prop_map(|(va, page, code)| Step::Fault { va, page, code }),
        1 => Just(Step::FlushUser),
        1 => Just(Step::FlushAll),
        2 => any::<u8>().prop_map(Step::Invalidate),
    ]
}

fn config_strategy() -> impl Strategy<Value = PagingConfig> {
    (2usize..=4, any::<Option<u64>>(), any::<bool>()).prop_map(
        |(cached_roots, seed, eager_fill)| PagingConfig {
            cached_roots,
            eviction: match seed {
                None => Eviction::LeastRecentlyUsed,
                Some(seed) => Eviction::Random { seed },
            },
            eager_fill,
            physical_address_bits: 46,
        },
    )
}

/// What the guest's tables say about one address: the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reference {
    NotPresent,
    Malformed,
    Mapped {
        page: u64,
        write: bool,
        user: bool,
        execute: bool,
        dirty: bool,
        all_accessed: bool,
    },
}

/// Walks the guest's tables, written as plainly as possible and apart from
/// the code under test.
fn reference_walk(mem: &FakeGuestMemory, root: u64, va: u64) -> Reference {
    let (mut write, mut user, mut execute, mut all_accessed) = (true, true, true, true);
    let mut table = root;
    for level in (1..=4u32).rev() {
        let index = (va >> (12 + 9 * (level - 1))) & 511;
        let e = mem.get(table + index * 8);
        if e & pte::PRESENT == 0 {
            return Reference::NotPresent;
        }
        let address = e & 0x000f_ffff_ffff_f000;
        if address >> 46 != 0 {
            return Reference::Malformed;
        }
        write &= e & pte::WRITABLE != 0;
        user &= e & pte::USER != 0;
        execute &= e & pte::NO_EXECUTE == 0;
        // Kernel-half top-level entries are shared by all roots: only the
        // root that faulted gets the accessed bit there (see the module
        // docs of `paging`), so the model does not ask for it.
        let shared_top = level == 4 && index >= 256;
        all_accessed &= shared_top || e & pte::ACCESSED != 0;
        let large = level > 1 && e & pte::HUGE_PAGE != 0;
        if level == 4 && large {
            return Reference::Malformed;
        }
        if level == 1 || large {
            let size = 1u64 << (12 + 9 * (level - 1));
            let base = if large { address & !0x1000 } else { address };
            if base % size != 0 || base + size > MEMORY_SIZE {
                return Reference::Malformed;
            }
            return Reference::Mapped {
                page: base + (va & (size - 1) & !0xfff),
                write,
                user,
                execute,
                dirty: e & pte::DIRTY != 0,
                all_accessed,
            };
        }
        if address + 4096 > MEMORY_SIZE {
            return Reference::Malformed;
        }
        table = address;
    }
    unreachable!()
}

/// The test's guest and host together.
struct Model {
    f: Fixture,
    current: u64,
    ring_head: u64,
    dead: bool,
    faults_checked: u64,
}

impl Model {
    fn new(config: PagingConfig) -> Self {
        let mut f = Fixture::new(config);
        f.roots = ROOTS.to_vec();
        f.map(ROOT_A, STACK_TOP - 0x2000, 0x9000, pte::WRITABLE);
        f.map(ROOT_A, STACK_TOP - 0x1000, 0xa000, pte::WRITABLE);
        f.paging
            .set_kernel_stack(&mut f.mem, &mut f.frames, STACK_TOP, 2)
            .unwrap();
        f.paging.register_ring(&mut f.mem, RING).unwrap();
        f.paging
            .prepare_to_run(&mut f.mem, &mut f.frames, SWITCHER)
            .unwrap();
        Self {
            f,
            current: ROOT_A,
            ring_head: 0,
            dead: false,
            faults_checked: 0,
        }
    }

    /// The raw value a write puts in its entry.
    fn value(&mut self, w: &Write) -> u64 {
        let level = w.level;
        match w.value {
            Value::Absent => 0,
            Value::Malformed { reserved: true } => (1 << 50) | 0x5000 | 1,
            Value::Malformed { reserved: false } => MEMORY_SIZE | 1,
            Value::TableOrPage { flags, .. } | Value::Large { flags, .. }
                if level == 4 || (level > 1 && matches!(w.value, Value::TableOrPage { .. })) =>
            {
                self.f.new_table() | pte::PRESENT | (flags_from(flags) & !pte::DIRTY)
            }
            Value::TableOrPage { frame, flags } => {
                (0x20_0000 + u64::from(frame % 8) * 0x1000) | pte::PRESENT | flags_from(flags)
            }
            Value::Large { which, flags } => {
                let base = if level == 2 {
                    0x80_0000 + u64::from(which % 2) * 0x20_0000
                } else {
                    (1 + u64::from(which % 2)) << 30
                };
                base | pte::PRESENT | pte::HUGE_PAGE | flags_from(flags)
            }
        }
    }

    /// Writes the guest entry; `None` if the path above it is a large page
    /// (the write is then skipped).
    fn write_guest(&mut self, w: &Write) -> Option<(u64, u64, u64)> {
        let root = ROOTS[usize::from(w.root % 4)];
        let va = vaddr(w.va);
        let level = Level::from_number(u64::from(w.level))?;
        let mut table = root;
        for l in Level::TOP_DOWN {
            let at = table + 8 * GuestVirtAddr::new_truncate(va).table_index(l.number()) as u64;
            if l == level {
                let value = self.value(w);
                if l == Level::L4 && GuestVirtAddr::new_truncate(va).is_upper_half() {
                    for r in ROOTS {
                        self.f.mem.set(r + (at - root), value);
                    }
                } else {
                    self.f.mem.set(at, value);
                }
                return Some((root, va, value));
            }
            let e = self.f.mem.get(at);
            if e & pte::PRESENT == 0 {
                let t = self.f.new_table() | TABLE_FLAGS | pte::ACCESSED;
                if l == Level::L4 && GuestVirtAddr::new_truncate(va).is_upper_half() {
                    for r in ROOTS {
                        self.f.mem.set(r + (at - root), t);
                    }
                } else {
                    self.f.mem.set(at, t);
                }
                table = t & pte::ADDRESS_MASK;
            } else if e & pte::HUGE_PAGE != 0 || (e & pte::ADDRESS_MASK) + 4096 > MEMORY_SIZE {
                // A large page, or a malformed entry of a batch that will
                // kill the guest: nothing to walk into.
                return None;
            } else {
                table = e & pte::ADDRESS_MASK;
            }
        }
        None
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Write(w) => {
                if let Some((root, va, value)) = self.write_guest(w) {
                    let r = self.f.paging.set_entry(
                        &mut self.f.mem,
                        &mut self.f.frames,
                        root,
                        va,
                        u64::from(w.level),
                        value,
                    );
                    self.expect_ok_unless_malformed(r.is_ok(), w)?;
                }
            }
            Step::Batch(writes) => {
                let mut malformed = false;
                for w in writes {
                    if let Some((root, va, value)) = self.write_guest(w) {
                        let op = MmuOp::SetEntry {
                            root,
                            vaddr: va,
                            level: w.level,
                            value,
                        };
                        for (i, word) in (0..).zip(op.encode()) {
                            self.f
                                .mem
                                .set(RING + ring::slot_offset(self.ring_head) + 8 * i, word);
                        }
                        self.ring_head += 1;
                        malformed |= matches!(w.value, Value::Malformed { .. });
                    }
                }
                self.f.mem.set(RING + ring::HEAD_OFFSET, self.ring_head);
                let r = self
                    .f
                    .paging
                    .apply_ring(&mut self.f.mem, &mut self.f.frames);
                prop_assert_eq!(r.is_err(), malformed, "ring result {:?}", r);
                if malformed {
                    self.dead = true;
                }
            }
            Step::Switch(r) => {
                let root = ROOTS[usize::from(r % 4)];
                self.f
                    .paging
                    .switch_root(&mut self.f.mem, &mut self.f.frames, root)
                    .map_err(|e| TestCaseError::fail(std::format!("switch: {e}")))?;
                self.current = root;
            }
            Step::Fault { va, page, code } => {
                self.fault(vaddr(*va) + u64::from(*page) * 0x1000, *code)?
            }
            Step::FlushUser => self.f.paging.flush_user(&mut self.f.frames),
            Step::FlushAll => self.f.paging.flush_all(&mut self.f.frames),
            Step::Invalidate(va) => {
                let va = GuestVirtAddr::try_new(vaddr(*va)).unwrap();
                self.f.paging.invalidate_page(&mut self.f.frames, va);
            }
        }
        if !self.dead {
            let cr3 = self
                .f
                .paging
                .prepare_to_run(&mut self.f.mem, &mut self.f.frames, SWITCHER)
                .map_err(|e| TestCaseError::fail(std::format!("prepare: {e}")))?;
            prop_assert_eq!(cr3, self.f.paging.current_shadow_root());
        }
        Ok(())
    }

    fn expect_ok_unless_malformed(&mut self, ok: bool, w: &Write) -> Result<(), TestCaseError> {
        let malformed = matches!(w.value, Value::Malformed { .. });
        prop_assert_eq!(ok, !malformed, "set_entry of {:?}", w);
        if malformed {
            self.dead = true;
        }
        Ok(())
    }

    fn fault(&mut self, va: u64, code: u8) -> Result<(), TestCaseError> {
        let code = u64::from(code) & !0b1000; // never the reserved-bit flag
        let (write, user, fetch) = (code & 2 != 0, code & 4 != 0, code & 16 != 0);
        let expected = reference_walk(&self.f.mem, self.current, va);
        // The shadow leaf before the fault: a real CPU never faults on an
        // access it already allows, so such a fault is one the host cannot
        // fix (it would loop), and must be refused.
        let before = self.f.leaf(va);
        let got = self.f.fault(va, code);
        let access = code & (2 | 4 | 16);
        self.faults_checked += 1;
        match expected {
            Reference::NotPresent => prop_assert_eq!(
                got,
                FaultDecision::Reflect {
                    address: GuestVirtAddr::try_new(va).unwrap(),
                    error_code: access
                }
            ),
            Reference::Malformed => prop_assert!(matches!(got, FaultDecision::Kill(_))),
            Reference::Mapped {
                page,
                write: w,
                user: u,
                execute: x,
                ..
            } => {
                // SMEP: the guest kernel never executes a user page.
                let smep = fetch && !user && u;
                let flags = before.flags();
                let already = before.is_present()
                    && before.frame() == Ok(FakeGuestMemory::backing(page >> 12))
                    && (!write || flags.contains(super::PteFlags::WRITABLE))
                    && (!user || flags.contains(super::PteFlags::USER))
                    && (!fetch || !flags.contains(super::PteFlags::NO_EXECUTE));
                if (!write || w) && (!user || u) && (!fetch || x) && !smep && already {
                    prop_assert_eq!(
                        got,
                        FaultDecision::Kill(super::PagingError::FaultWithoutProgress {
                            vaddr: GuestVirtAddr::try_new(va).unwrap(),
                            error_code: code
                        })
                    );
                } else if (!write || w) && (!user || u) && (!fetch || x) && !smep {
                    prop_assert_eq!(got, FaultDecision::Fixed);
                    let leaf = self.f.leaf(va);
                    prop_assert!(leaf.is_present());
                    prop_assert!(!write || leaf.flags().contains(super::PteFlags::WRITABLE));
                } else {
                    prop_assert_eq!(
                        got,
                        FaultDecision::Reflect {
                            address: GuestVirtAddr::try_new(va).unwrap(),
                            error_code: access | 1
                        }
                    );
                }
            }
        }
        Ok(())
    }

    /// The invariants of the module docs.
    fn check(&self) -> Result<(), TestCaseError> {
        let frames = &self.f.frames;
        let mut tables = BTreeSet::new();
        let roots: Vec<GuestPhysAddr> = self.f.paging.cached_roots().collect();
        let current = self.f.paging.current_shadow_root();
        let mut kernel_half: Option<Vec<u64>> = None;
        for (i, &guest_root) in roots.iter().enumerate() {
            // The running root comes first.
            let shadow = self.shadow_of(guest_root);
            prop_assert!(i != 0 || shadow == current);
            prop_assert!(tables.insert(shadow), "two roots share a top-level frame");
            let half: Vec<u64> = TableIndex::range(256, 511)
                .map(|ix| frames.read_entry(shadow, ix))
                .collect();
            if let Some(k) = &kernel_half {
                prop_assert_eq!(k, &half, "kernel halves differ");
            }
            kernel_half = Some(half);
            for index in TableIndex::range(0, 511) {
                let e = ShadowEntry::from_raw(frames.read_entry(shadow, index));
                if let ShadowEntryKind::Table(t) = e.decode(Level::L4) {
                    let va = (index.as_usize() as u64) << 39;
                    self.check_tree(guest_root.as_u64(), t, Level::L3, va, &mut tables)?;
                }
            }
        }
        let slot = ShadowEntry::from_raw(frames.read_entry(current, TableIndex::new(511).unwrap()));
        prop_assert_eq!(slot.frame(), Ok(SWITCHER));
        let stats = self.f.paging.stats();
        prop_assert_eq!(tables.len() as u64, stats.frames_held);
        for &table in &tables {
            let populated = self.f.paging.book.populated(table);
            for index in TableIndex::all() {
                prop_assert_eq!(
                    populated.contains(index),
                    frames.read_entry(table, index) != 0,
                    "bitmap of {} at {}",
                    table,
                    index.as_usize()
                );
            }
        }
        prop_assert_eq!(
            self.f.paging.book.len(),
            tables.len(),
            "notes of freed tables"
        );
        let spares = self.f.paging.book.spares();
        prop_assert_eq!(spares.len() as u64, stats.frames_spare);
        let distinct: BTreeSet<HostPhysAddr> = spares.iter().copied().collect();
        prop_assert_eq!(distinct.len(), spares.len(), "a spare kept twice");
        for &spare in spares {
            prop_assert!(self.f.frames.owns(spare), "{} is no live frame", spare);
            prop_assert!(!tables.contains(&spare), "spare {} is in use", spare);
            prop_assert!(
                TableIndex::all().all(|i| frames.read_entry(spare, i) == 0),
                "spare {} is not zeroed",
                spare
            );
        }
        prop_assert!(stats.frames_held + stats.frames_spare <= self.f.paging.shadow_frame_limit());
        prop_assert_eq!(tables.len() + spares.len(), frames.in_use());
        for page in [STACK_TOP - 0x2000, STACK_TOP - 0x1000] {
            prop_assert!(
                self.f
                    .leaf(page)
                    .flags()
                    .contains(super::PteFlags::WRITABLE)
            );
        }
        Ok(())
    }

    fn shadow_of(&self, guest_root: GuestPhysAddr) -> HostPhysAddr {
        self.f.paging.roots.find(guest_root).unwrap()
    }

    fn check_tree(
        &self,
        guest_root: u64,
        table: HostPhysAddr,
        level: Level,
        base: u64,
        tables: &mut BTreeSet<HostPhysAddr>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            self.f.frames.owns(table),
            "{} is no live shadow frame",
            table
        );
        // Shared kernel tables are reached once per root: count them once.
        if !tables.insert(table) {
            return Ok(());
        }
        for index in TableIndex::all() {
            let e = ShadowEntry::from_raw(self.f.frames.read_entry(table, index));
            let va = base | (index.as_usize() as u64) << (12 + 9 * (level.number() as u32 - 1));
            match e.decode(level) {
                ShadowEntryKind::Absent => {}
                ShadowEntryKind::Table(t) => {
                    self.check_tree(guest_root, t, level.below().unwrap(), va, tables)?
                }
                ShadowEntryKind::Page(frame) => self.check_leaf(guest_root, va, e, frame)?,
            }
        }
        Ok(())
    }

    fn check_leaf(
        &self,
        guest_root: u64,
        va: u64,
        e: ShadowEntry,
        frame: HostPhysAddr,
    ) -> Result<(), TestCaseError> {
        let va = GuestVirtAddr::new_truncate(va).as_u64();
        let Reference::Mapped {
            page,
            write,
            user,
            execute,
            dirty,
            all_accessed,
        } = reference_walk(&self.f.mem, guest_root, va)
        else {
            return Err(TestCaseError::fail(std::format!(
                "shadow maps {va:#x} in root {guest_root:#x}, the guest does not"
            )));
        };
        let flags = e.flags();
        use super::PteFlags as P;
        prop_assert_eq!(
            Some(frame),
            self.f.mem.host_frame(GuestPhysAddr::new(page)),
            "frame of {:#x}",
            va
        );
        prop_assert!(
            !flags.contains(P::WRITABLE) || (write && dirty),
            "write rights at {:#x}",
            va
        );
        prop_assert!(!flags.contains(P::USER) || user, "user rights at {:#x}", va);
        prop_assert!(
            flags.contains(P::NO_EXECUTE) || execute,
            "execute rights at {:#x}",
            va
        );
        prop_assert!(
            !flags.intersects(P::GLOBAL | P::HUGE_PAGE | P::CACHE_DISABLE | P::WRITE_THROUGH)
        );
        prop_assert!(all_accessed, "accessed bits at {:#x}", va);
        Ok(())
    }
}

/// Runs [`CASES`] random guests through the model and checks that exactly
/// that many ran.
#[test]
fn the_shadow_never_grants_more_than_the_guests_tables() {
    let config = ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let cases = core::cell::Cell::new(0u32);
    let totals = core::cell::Cell::new(super::PagingStats::default());
    let strategy = (
        config_strategy(),
        prop::collection::vec(step_strategy(), 1..64),
    );
    let result = runner.run(&strategy, |(config, steps)| {
        let mut model = Model::new(config);
        model.check()?;
        for step in &steps {
            model.step(step)?;
            if model.dead {
                break;
            }
            model.check()?;
        }
        let stats = model.f.teardown();
        prop_assert_eq!(stats.frames_held, 0);
        cases.set(cases.get() + 1);
        let mut t = totals.get();
        t.faults_fixed += stats.faults_fixed;
        t.faults_reflected += stats.faults_reflected;
        t.eager_fills += stats.eager_fills;
        t.ring_ops += stats.ring_ops;
        t.roots_evicted += stats.roots_evicted;
        totals.set(t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = totals.get();
    std::println!(
        "shadow paging model: {} cases passed ({} faults fixed, {} reflected, \
         {} eager fills, {} ring ops, {} roots evicted)",
        cases.get(),
        t.faults_fixed,
        t.faults_reflected,
        t.eager_fills,
        t.ring_ops,
        t.roots_evicted
    );
    assert_eq!(cases.get(), CASES);
}
