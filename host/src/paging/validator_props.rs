//! Property tests of the validators every guest value passes through
//! before it means anything: [`GuestEntry::decode`] (and the limits it
//! judges against), [`MmuOp::decode`], and [`ShadowPaging::set_entry`] and
//! [`ShadowPaging::apply_ring`] with whatever the guest wrote.
//!
//! The properties are the contract's: no input makes the host panic; an
//! entry accepted maps or links only what lies inside guest memory, has no
//! reserved bit set, and never reaches the switcher's slot; every shadow
//! leaf the host builds maps a frame of guest memory; and every shadow
//! frame comes back at teardown. The guest-side fuzzer (`images/guests`,
//! `cargo xtask fuzz`) throws the same kinds of values at a running host;
//! these check the same rules exhaustively on Linux, with shrinking.

use super::entry::{GuestEntry, GuestEntryKind, GuestLimits, Level};
use super::error::PagingError;
use super::testing::{FakeGuestMemory, Fixture, GUEST_BACKING_BASE, MEMORY_SIZE, ROOT_A};
use super::{PagingConfig, SWITCHER_SLOT_BASE, ShadowPaging};
use crate::addr::{GuestVirtAddr, HostPhysAddr, PAGE_SIZE};
use guest_abi::pte::{
    self, ADDRESS_MASK, HUGE_PAGE, LARGE_PAGE_PAT, MmuOp, MmuOpError, PRESENT, ring,
};
use proptest::prelude::*;
use std::vec::Vec;

/// Cases per property.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Frames worth pointing an entry at: around the start and end of guest
/// memory, large-page boundaries, far outside, and anything.
fn address(memory: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(PAGE_SIZE),
        Just(memory.saturating_sub(PAGE_SIZE)),
        Just(memory),
        Just(memory + PAGE_SIZE),
        (0..16u64).prop_map(|n| n << 21),
        (0..8u64).prop_map(|n| n << 30),
        (0..memory / PAGE_SIZE).prop_map(|n| n * PAGE_SIZE),
        any::<u64>(),
    ]
    .prop_map(|a| a & ADDRESS_MASK)
}

/// An entry: an address with random flags, sometimes a reserved bit, or
/// any 64 bits at all.
fn entry(memory: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (address(memory), any::<u64>(), 0..64u32, any::<bool>()).prop_map(
            |(address, flags, bit, reserved)| {
                let flags = flags & !ADDRESS_MASK;
                address | flags | if reserved { 1 << bit } else { 0 }
            }
        ),
        1 => any::<u64>(),
    ]
}

/// A virtual address: canonical edges, the switcher's slot, small user and
/// kernel addresses, anything.
fn vaddr() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(0x0000_7fff_ffff_f000),
        Just(0x0000_8000_0000_0000),
        Just(0xffff_8000_0000_0000),
        Just(SWITCHER_SLOT_BASE),
        Just(0xffff_ffff_ffff_f000),
        (0..1u64 << 24).prop_map(|a| a << 12),
        (0..1u64 << 24).prop_map(|a| 0xffff_8000_0000_0000 | a << 12),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any entry at any level against any limits: no panic, and what is
    /// accepted keeps every rule of guest_abi::pte.
    #[test]
    fn decoded_entries_keep_the_rules(
        memory in prop_oneof![Just(16u64 << 20), Just(MEMORY_SIZE), any::<u64>()],
        bits in any::<u8>(),
        value in entry(16 << 20),
        level in 1..=4u8,
        va in vaddr(),
    ) {
        let limits = GuestLimits::new(memory, bits);
        // The reserved bits are a run from the width (at least 12, at most
        // 52) up to bit 51.
        prop_assert_eq!(limits.reserved_mask & !(((1u64 << 52) - 1) & !0xfff), 0);
        let level = Level::from_number(u64::from(level)).unwrap();
        let va = GuestVirtAddr::new_truncate(va);
        let present = value & PRESENT != 0;
        let huge = value & HUGE_PAGE != 0;
        let inside = |start: u64, len: u64| start.checked_add(len).is_some_and(|e| e <= memory);
        match GuestEntry::new(value).decode(level, va, &limits) {
            Ok(GuestEntryKind::Absent) => prop_assert!(!present),
            Ok(GuestEntryKind::Table(table)) => {
                prop_assert!(present && level != Level::L1 && !huge);
                prop_assert_eq!(table.as_u64(), value & ADDRESS_MASK);
                prop_assert!(table.is_page_aligned() && inside(table.as_u64(), PAGE_SIZE));
                prop_assert_eq!(value & limits.reserved_mask, 0);
            }
            Ok(GuestEntryKind::Page { base, level: page_level }) => {
                prop_assert!(present && page_level == level && level != Level::L4);
                prop_assert!(level == Level::L1 || huge);
                let size = level.bytes_mapped();
                prop_assert_eq!(base.as_u64() % size, 0);
                prop_assert!(inside(base.as_u64(), size));
                prop_assert_eq!(value & limits.reserved_mask, 0);
                let expected = value & ADDRESS_MASK & !if level == Level::L1 { 0 } else { LARGE_PAGE_PAT };
                prop_assert_eq!(base.as_u64(), expected);
            }
            Err(PagingError::ReservedBits { bits, .. }) => {
                prop_assert!(present && bits != 0 && bits == value & limits.reserved_mask);
            }
            Err(PagingError::HugePageAtTopLevel { .. }) => {
                prop_assert!(present && huge && level == Level::L4);
            }
            Err(PagingError::MisalignedLargePage { .. }) => {
                prop_assert!(present && huge && matches!(level, Level::L2 | Level::L3));
                let base = value & ADDRESS_MASK & !LARGE_PAGE_PAT;
                prop_assert_ne!(base % level.bytes_mapped(), 0);
            }
            Err(PagingError::OutsideGuestMemory { gpa, .. }) => {
                prop_assert!(present);
                let len = if huge && level != Level::L1 { level.bytes_mapped() } else { PAGE_SIZE };
                prop_assert!(!inside(gpa.as_u64(), len));
            }
            Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
        }
    }

    /// Any four words are an MMU op or a refusal, never a panic; an op
    /// decoded encodes back to itself, and every op survives encoding.
    #[test]
    fn mmu_ops_decode_or_are_refused(
        words in prop_oneof![
            any::<[u64; 4]>(),
            (0..8u64, 0..8u64, any::<[u64; 3]>()).prop_map(|(c, l, [a, b, d])| [c | l << 8, a, b, d]),
        ],
        root in any::<u64>(),
        va in any::<u64>(),
        level in 1..=4u8,
        value in any::<u64>(),
    ) {
        match MmuOp::decode(words) {
            Ok(op) => prop_assert_eq!(MmuOp::decode(op.encode()), Ok(op)),
            Err(MmuOpError::BadLevel(l)) => {
                prop_assert!(words[0] & 0xff == 1 && !(1..=4).contains(&l));
            }
            Err(MmuOpError::UnknownOp(w)) => prop_assert_eq!(w, words[0]),
        }
        let op = MmuOp::SetEntry { root, vaddr: va, level, value };
        prop_assert_eq!(MmuOp::decode(op.encode()), Ok(op));
    }

    /// Any reports, in any order, between faults at any address with any
    /// error code: the host refuses what breaks the rules, accepts the
    /// rest, maps only guest memory, never touches the switcher's slot,
    /// and gives every shadow frame back.
    #[test]
    fn reports_and_faults_never_map_outside_guest_memory(
        steps in proptest::collection::vec(
            prop_oneof![
                3 => (
                    prop_oneof![Just(ROOT_A), Just(0x2000u64), address(MEMORY_SIZE)],
                    vaddr(),
                    0..7u64,
                    entry(MEMORY_SIZE),
                    any::<bool>(),
                )
                    .prop_map(|(root, va, level, value, write)| Step::Report { root, va, level, value, write }),
                2 => (vaddr(), any::<u64>()).prop_map(|(va, code)| Step::Fault { va, code }),
            ],
            1..48,
        ),
    ) {
        let mut f = Fixture::new(PagingConfig::default());
        let limits = GuestLimits::new(MEMORY_SIZE, PagingConfig::default().physical_address_bits);
        let mut touched = Vec::new();
        for step in steps {
            match step {
                Step::Report { root, va, level, value, write } => {
                    if write && let Some(l) = Level::from_number(level) {
                        write_entry(&mut f, va, l, value);
                    }
                    let result = f.paging.set_entry(&mut f.mem, &mut f.frames, root, va, level, value);
                    if result.is_ok() {
                        let l = Level::from_number(level);
                        prop_assert!(l.is_some(), "level {} accepted", level);
                        let va = GuestVirtAddr::try_new(va);
                        prop_assert!(va.is_ok(), "non-canonical address accepted");
                        prop_assert!(root.is_multiple_of(PAGE_SIZE) && root + PAGE_SIZE <= MEMORY_SIZE);
                        let in_slot = va.unwrap().table_index(4) == pte::SWITCHER_PML4_INDEX;
                        if in_slot {
                            prop_assert!(l == Some(Level::L4) && value & PRESENT == 0);
                        } else {
                            prop_assert!(
                                GuestEntry::new(value).decode(l.unwrap(), va.unwrap(), &limits).is_ok()
                            );
                        }
                    }
                    touched.push(va);
                }
                Step::Fault { va, code } => {
                    if let Ok(address) = GuestVirtAddr::try_new(va) {
                        // The run loop never asks for the switcher's slot
                        // (a write there kills first); a read may come.
                        let _ = f.paging.demand_page(&mut f.mem, &mut f.frames, address, code);
                        touched.push(va);
                    }
                }
            }
            check_shadow(&f, &touched)?;
        }
        f.teardown();
    }

    /// Whatever the guest leaves in its MMU ring: no panic, at most one
    /// ring's worth applied, the host's own count reported in `tail`, and
    /// every shadow frame back at teardown.
    #[test]
    fn any_ring_contents_are_applied_or_refused(
        head in prop_oneof![0..=ring::RING_SLOTS + 2, any::<u64>()],
        slots in proptest::collection::vec(
            prop_oneof![
                any::<[u64; 4]>(),
                (0..6u64, vaddr(), entry(MEMORY_SIZE)).prop_map(|(code, va, value)| {
                    [code | if code == 1 { 1 << 8 } else { 0 }, ROOT_A, va, value]
                }),
            ],
            ring::RING_SLOTS as usize,
        ),
    ) {
        const RING: u64 = 0x8000;
        let mut f = Fixture::new(PagingConfig::default());
        f.paging.register_ring(&mut f.mem, RING).unwrap();
        for (n, words) in (0u64..).zip(&slots) {
            for (i, word) in (0u64..).zip(words) {
                f.mem.set(RING + ring::slot_offset(n) + 8 * i, *word);
            }
        }
        f.mem.set(RING + ring::HEAD_OFFSET, head);
        match f.paging.apply_ring(&mut f.mem, &mut f.frames) {
            Ok(applied) => {
                prop_assert!(applied <= ring::RING_SLOTS && applied == head);
                prop_assert_eq!(f.mem.get(RING + ring::TAIL_OFFSET), head);
            }
            Err(PagingError::RingOverrun { .. }) => prop_assert!(head > ring::RING_SLOTS),
            Err(_) => prop_assert!(f.mem.get(RING + ring::TAIL_OFFSET) < head),
        }
        let touched: Vec<u64> = slots.iter().map(|w| w[2]).collect();
        check_shadow(&f, &touched)?;
        f.teardown();
    }
}

/// One thing the guest does to its shadow.
#[derive(Clone, Debug)]
enum Step {
    /// Reports an entry (with `write`, having written it first).
    Report {
        root: u64,
        va: u64,
        level: u64,
        value: u64,
        write: bool,
    },
    /// Faults at `va` with `code`.
    Fault { va: u64, code: u64 },
}

/// Writes `value` as the entry at `level` for `va` in the running tables,
/// as the guest writes the entry it reports, making missing tables above
/// it; gives up where a table above is a large page or outside memory
/// (the fixture's memory would refuse to be read there).
fn write_entry(f: &mut Fixture, va: u64, level: Level, value: u64) {
    let va = GuestVirtAddr::new_truncate(va);
    let mut table = ROOT_A;
    for l in Level::TOP_DOWN {
        let at = table + 8 * va.table_index(l.number()) as u64;
        if l == level {
            f.mem.set(at, value);
            return;
        }
        let e = f.mem.get(at);
        table = if e & PRESENT == 0 {
            let t = f.new_table();
            f.mem.set(at, t | super::testing::TABLE_FLAGS);
            t
        } else if e & HUGE_PAGE != 0 || (e & ADDRESS_MASK) + PAGE_SIZE > MEMORY_SIZE {
            return;
        } else {
            e & ADDRESS_MASK
        };
    }
}

/// The shadow's invariants at the addresses the guest touched: every leaf
/// maps a host frame backing guest memory, and the switcher's slot of the
/// running root is empty (the fixture installs no switcher: only a guest
/// entry could have filled it).
fn check_shadow(f: &Fixture, touched: &[u64]) -> Result<(), TestCaseError> {
    let root = f.paging.current_shadow_root();
    let slot = super::TableIndex::new(pte::SWITCHER_PML4_INDEX).unwrap();
    use super::ShadowFrames;
    prop_assert_eq!(
        f.frames.read_entry(root, slot),
        0,
        "the switcher slot was written"
    );
    for &va in touched {
        let Ok(address) = GuestVirtAddr::try_new(va) else {
            continue;
        };
        let leaf = ShadowPaging::shadow_leaf(&f.frames, root, address);
        if let Ok(frame) = leaf.frame() {
            prop_assert!(
                backs_guest_memory(frame),
                "{va:#x} maps {frame:?}, not guest memory"
            );
        }
    }
    Ok(())
}

/// Whether `frame` backs a page of the fixture's guest memory.
fn backs_guest_memory(frame: HostPhysAddr) -> bool {
    let pages = MEMORY_SIZE / PAGE_SIZE;
    let number = frame.as_u64() / PAGE_SIZE;
    number >= GUEST_BACKING_BASE
        && (number - GUEST_BACKING_BASE) ^ 3 < pages
        && FakeGuestMemory::backing((number - GUEST_BACKING_BASE) ^ 3) == frame
}
