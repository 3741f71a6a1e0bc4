//! Tests of the containment holes a hostile guest found in the shadow
//! tables: an unbounded number of shadow frames (and the flush over all of
//! them), a supervisor fetch of a user page that SMEP refuses but the walk
//! did not model (and, more generally, a fault "fixed" without progress),
//! roots that are not page-table roots, and reports naming the switcher's
//! slot below the top level.

use super::testing::*;
use super::*;
use guest_abi::pte;

const USER_VA: u64 = 0x40_0000;
const KERNEL_VA: u64 = 0xffff_8000_0020_0000;
const FETCH: u64 = FaultCode::FETCH.bits();

/// A fixture whose shadow may hold at most `limit` frames.
fn bounded(limit: u64) -> Fixture {
    let mut f = Fixture::new(PagingConfig::default());
    f.paging.set_shadow_frame_limit(limit);
    f
}

/// A user address in its own 1 GiB region, so each needs three fresh
/// shadow tables.
fn sparse(i: u64) -> u64 {
    USER_VA + (i << 30)
}

#[test]
fn the_default_bound_is_proportional_to_guest_memory_with_a_floor() {
    assert_eq!(default_shadow_frame_limit(16 << 20), MIN_SHADOW_FRAME_LIMIT);
    assert_eq!(default_shadow_frame_limit(1 << 30), 32768);
    let f = Fixture::new(PagingConfig::default());
    assert_eq!(
        f.paging.shadow_frame_limit(),
        default_shadow_frame_limit(MEMORY_SIZE)
    );
    f.teardown();
}

#[test]
fn shadow_frames_stay_within_the_bound_and_are_reclaimed() {
    let limit = 20;
    let mut f = bounded(limit);
    f.map(ROOT_A, KERNEL_VA, 0x6000, pte::WRITABLE);
    for i in 0..100 {
        f.map(ROOT_A, sparse(i), 0x5000, 0);
    }
    // Another cached root holds tables too: the first to go.
    f.paging
        .switch_root(&mut f.mem, &mut f.frames, ROOT_B)
        .unwrap();
    f.map(ROOT_B, USER_VA, 0x5000, 0);
    f.fault(USER_VA, 0);
    f.paging
        .switch_root(&mut f.mem, &mut f.frames, ROOT_A)
        .unwrap();
    for i in 0..100 {
        assert_eq!(f.fault(sparse(i), 0), FaultDecision::Fixed, "page {i}");
        assert!(f.leaf(sparse(i)).is_present());
        let stats = f.paging.stats();
        let (held, spare) = (stats.frames_held, stats.frames_spare);
        assert!(
            held + spare <= limit,
            "{held} shadow frames held and {spare} spare, bound {limit}"
        );
        assert_eq!(held + spare, f.frames.in_use() as u64);
    }
    let stats = f.paging.stats();
    assert!(stats.reclaims >= 10, "{stats:?}");
    // A flush of everything now frees at most the bound.
    let before = f.frames.in_use();
    f.paging.flush_all(&mut f.frames);
    assert!(before - f.frames.in_use() <= limit as usize);
    f.teardown();
}

#[test]
fn a_mapping_that_cannot_fit_even_alone_kills_with_the_bound() {
    let mut f = bounded(3);
    f.map(ROOT_A, USER_VA, 0x5000, 0);
    assert_eq!(
        f.fault(USER_VA, 0),
        FaultDecision::Kill(PagingError::ShadowLimit {
            limit: 3,
            vaddr: GuestVirtAddr::try_new(USER_VA).unwrap()
        })
    );
    f.teardown();
}

#[test]
fn the_kernel_stack_is_pinned_whole_even_when_pinning_it_reclaims() {
    // The two stack pages lie in different 2 MiB regions: two level-1
    // tables. Root, level 3, level 2 and the two leaves: five frames.
    let top = KERNEL_VA + (2 << 20) + 0x1000;
    let mut f = bounded(5);
    f.map(ROOT_A, top - 0x2000, 0x7000, pte::WRITABLE);
    f.map(ROOT_A, top - 0x1000, 0x8000, pte::WRITABLE);
    f.map(ROOT_A, USER_VA, 0x5000, 0);
    assert_eq!(f.fault(USER_VA, 0), FaultDecision::Fixed);
    f.paging
        .set_kernel_stack(&mut f.mem, &mut f.frames, top, 2)
        .unwrap();
    assert!(f.paging.stats().reclaims >= 1);
    for page in [top - 0x2000, top - 0x1000] {
        assert!(
            f.leaf(page).flags().contains(PteFlags::WRITABLE),
            "{page:#x}"
        );
    }
    f.teardown();

    // With four, the stack alone does not fit: a trap could never be
    // delivered, so that is a kill, not a loop.
    let mut f = bounded(4);
    f.map(ROOT_A, top - 0x2000, 0x7000, pte::WRITABLE);
    f.map(ROOT_A, top - 0x1000, 0x8000, pte::WRITABLE);
    assert!(matches!(
        f.paging.set_kernel_stack(&mut f.mem, &mut f.frames, top, 2),
        Err(PagingError::ShadowLimit { limit: 4, .. })
    ));
    f.teardown();
}

#[test]
fn a_supervisor_fetch_of_a_user_page_is_reflected_as_smep_reports_it() {
    let mut f = Fixture::new(PagingConfig::default());
    // Every level allows user access (the fixture's tables do).
    f.map(ROOT_A, USER_VA, 0x5000, pte::USER);
    let expected = FaultDecision::Reflect {
        address: GuestVirtAddr::try_new(USER_VA).unwrap(),
        error_code: 1 | FETCH,
    };
    // First touch, and after a user read mapped it: the same answer, never
    // a "fix" that the CPU refuses again.
    assert_eq!(f.fault(USER_VA, FETCH | 1), expected);
    assert_eq!(
        f.fault(USER_VA, FaultCode::USER.bits()),
        FaultDecision::Fixed
    );
    assert_eq!(f.fault(USER_VA, FETCH | 1), expected);
    // A supervisor page is fine to execute; a user fetch of a user page too.
    f.map(ROOT_A, USER_VA + 0x1000, 0x6000, 0);
    assert_eq!(f.fault(USER_VA + 0x1000, FETCH), FaultDecision::Fixed);
    f.map(ROOT_A, USER_VA + 0x2000, 0x7000, pte::USER);
    assert_eq!(
        f.fault(USER_VA + 0x2000, FETCH | FaultCode::USER.bits()),
        FaultDecision::Fixed
    );
    f.teardown();
}

#[test]
fn a_fault_the_shadow_already_allows_is_not_fixed_again() {
    let mut f = Fixture::new(PagingConfig::default());
    f.map(ROOT_A, USER_VA, 0x5000, pte::WRITABLE | pte::USER);
    assert_eq!(f.fault(USER_VA, 0), FaultDecision::Fixed);
    // A write needs the shadow made writable: progress.
    assert_eq!(f.fault(USER_VA, 3), FaultDecision::Fixed);
    // The same write again: the shadow already allows it.
    assert_eq!(
        f.fault(USER_VA, 3),
        FaultDecision::Kill(PagingError::FaultWithoutProgress {
            vaddr: GuestVirtAddr::try_new(USER_VA).unwrap(),
            error_code: 3
        })
    );
    f.teardown();
}

#[test]
fn the_shared_page_is_never_a_root() {
    let mut f = Fixture::new(PagingConfig::default());
    f.paging.reserve_shared_page(0x3000).unwrap();
    assert_eq!(
        f.paging.switch_root(&mut f.mem, &mut f.frames, 0x3000),
        Err(PagingError::SharedPageAsRoot { root: 0x3000 })
    );
    assert_eq!(
        f.set_entry(0x3000, USER_VA, Level::L1, 0),
        Err(PagingError::SharedPageAsRoot { root: 0x3000 })
    );
    assert_eq!(
        f.paging.reserve_shared_page(ROOT_A),
        Err(PagingError::SharedPageAsRoot { root: ROOT_A })
    );
    f.teardown();
}

#[test]
fn a_kernel_half_table_of_the_running_root_is_not_a_root() {
    let mut f = Fixture::new(PagingConfig::default());
    f.map(ROOT_A, KERNEL_VA, 0x6000, 0);
    let slot = GuestVirtAddr::try_new(KERNEL_VA).unwrap().table_index(4);
    let level3 = f.guest_entry(ROOT_A, KERNEL_VA, Level::L4) & pte::ADDRESS_MASK;
    assert_eq!(
        f.paging.switch_root(&mut f.mem, &mut f.frames, level3),
        Err(PagingError::TableAsRoot { root: level3, slot })
    );
    // A real second root still is one.
    assert!(
        f.paging
            .switch_root(&mut f.mem, &mut f.frames, ROOT_B)
            .is_ok()
    );
    f.teardown();
}

#[test]
fn entries_below_the_top_level_in_the_switcher_slot_are_refused() {
    let mut f = Fixture::new(PagingConfig::default());
    let va = SWITCHER_SLOT_BASE + 0x1000;
    for level in [Level::L3, Level::L2, Level::L1] {
        for value in [0x5001, 0] {
            assert_eq!(
                f.set_entry(ROOT_A, va, level, value),
                Err(PagingError::SwitcherSlotBelowTop {
                    value,
                    level,
                    vaddr: GuestVirtAddr::try_new(va).unwrap()
                })
            );
        }
    }
    // Through the ring too.
    let op = guest_abi::pte::MmuOp::SetEntry {
        root: ROOT_A,
        vaddr: va,
        level: 1,
        value: 0x5001,
    };
    assert!(matches!(
        f.paging.apply_op(&mut f.mem, &mut f.frames, op),
        Err(PagingError::SwitcherSlotBelowTop { .. })
    ));
    // Clearing the top-level entry stays harmless.
    assert_eq!(
        f.set_entry(ROOT_A, SWITCHER_SLOT_BASE, Level::L4, 0),
        Ok(())
    );
    f.teardown();
}
