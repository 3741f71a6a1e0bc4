//! Shadow page tables on a real (emulated) machine: guests that build and
//! change their own page tables see the right data every time; guests that
//! show the host a bad entry or root are killed with the reason; two
//! guests side by side cannot see each other's memory; and the host's
//! counters and frame counts say what happened.
//!
//! Three boots, each shared by the tests that read it:
//!
//! - [`mm`]: the `mm` guest (its own tables, remaps, unmaps, two address
//!   spaces, root eviction, a ring-3 fault) beside a `hello`;
//! - [`offences`]: one `trap` guest per page-table offence, then a
//!   `hello` that must still run;
//! - [`isolation`]: two `isolation` guests side by side.

use qemu_tests::{Boot, boot, number_after};
use std::sync::OnceLock;

/// The `mm` guest, and a `hello` that runs beside it.
fn mm() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| boot("guests=mm,hello"))
}

/// What each of the `mm` guest's checks prints when it passes.
const MM_CHECKS: &[&str] = &[
    "mm: ok own-root:",
    "mm: ok map:",
    "mm: ok remap-direct:",
    "mm: ok remap-ring:",
    "mm: ok unmap:",
    "mm: ok address-spaces:",
    "mm: ok eviction:",
    "mm: ok user-supervisor:",
];

#[test]
fn the_mm_guest_passes_every_check_and_exits_0() {
    let boot = mm();
    boot.expect_success();
    if boot.serial().contains("mm: FAILED") || boot.serial().contains("mm: cannot go on") {
        boot.fail("the mm guest reported a failed check");
    }
    for check in MM_CHECKS {
        boot.line_containing(&["[mm]", check]);
    }
    boot.line_containing(&["[mm] mm: all checks passed"]);
    boot.line_containing(&["guest mm exited code=0"]);
    boot.line_containing(&["guest hello exited code=0"]);
}

#[test]
fn the_mm_guest_saw_its_batched_remaps_applied_and_its_faults() {
    let boot = mm();
    let ring = boot.line_containing(&["mm: ok remap-ring:"]);
    if number_after(ring, "applied") != Some(4) || number_after(ring, "tail = head =") != Some(4) {
        boot.fail("the MMU ring should have applied exactly the 4 queued remaps");
    }
    let unmap = boot.line_containing(&["mm: ok unmap:"]);
    if number_after(unmap, "mm: ok unmap:") != Some(5) {
        boot.fail("5 accesses to unmapped pages should have faulted");
    }
}

/// The numbers on a guest's `paging:` line, by name.
fn paging_counter(boot: &Boot, guest: &str, name: &str) -> u64 {
    let line = boot.line_containing(&[&format!("guest {guest} paging:")]);
    number_after(line, &format!(" {name}="))
        .unwrap_or_else(|| boot.fail(&format!("no {name}= on the paging line of {guest}")))
}

#[test]
fn the_mm_guest_counters_show_roots_cached_evicted_and_faults_reflected() {
    let boot = mm();
    let counter = |name| paging_counter(boot, "mm", name);
    // The start-up root, its own two, four more, and the first two again
    // after they were evicted: 9 with the default cache of 4 and LRU.
    if counter("roots_made") < 1 + 2 + 4 {
        boot.fail("mm made its two roots and four more besides the start-up one");
    }
    if counter("roots_reused") < 1 {
        boot.fail("switching back and forth must reuse cached roots");
    }
    if counter("roots_evicted") < 1 {
        boot.fail("more roots than the cache holds must evict one");
    }
    // Four read probes, one write probe, one ring-3 read.
    if counter("faults_reflected") < 6 {
        boot.fail("every probe of an unmapped page and the ring-3 read must be reflected");
    }
    if counter("faults_fixed") < 16 {
        boot.fail("the 16 pages mapped without accessed bits must be faulted in");
    }
    if counter("eager_fills") < 1 {
        boot.fail("the remaps reported already accessed must be filled at once");
    }
    // The line is printed just before teardown, so the shadow still holds
    // its tables (the `frames:` line shows they all come back).
    if counter("shadow_frames_held") == 0 {
        boot.fail("a guest with several address spaces must hold shadow tables");
    }
}

#[test]
fn every_frame_comes_back_after_the_guests() {
    for boot in [mm(), offences(), isolation()] {
        let line = boot.line_containing(&["frames:", "free before the guests"]);
        let before = number_after(line, "frames:");
        let after = number_after(line, "before the guests,");
        if before.is_none() || before != after || !line.contains("(balanced)") {
            boot.fail("the host must have as many free frames after the guests as before");
        }
    }
}

/// Each page-table offence the `trap` guest can commit, and what the
/// host's kill reason must say (host/src/paging/error.rs).
const OFFENCES: &[(&str, &[&str])] = &[
    (
        "map-outside",
        &["at level 1", "maps gpa:0x1000000 outside guest memory"],
    ),
    (
        "touch-outside",
        &["at level 1", "maps gpa:0x1000000 outside guest memory"],
    ),
    (
        "map-switcher",
        &["for gva:0xffffff8000000000 would map the switcher's slot"],
    ),
    (
        "root-switcher",
        &["for gva:0xffffff8000000000 would map the switcher's slot"],
    ),
    (
        "bad-root",
        &["page-table root 0x1000000 is not a page inside guest memory"],
    ),
    ("reserved-bits", &["has reserved bits 0x8000000000000 set"]),
    (
        "ring-overrun",
        &["MMU ring head 1001 is more than a ring ahead"],
    ),
    (
        "zero-pool-outside",
        &["zero pool lent page 0x1000000, not a page of guest memory"],
    ),
];

/// One boot with every offence (16 MiB guests, the default), and a
/// well-behaved guest after them.
fn offences() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let mut guests: Vec<String> = OFFENCES
            .iter()
            .map(|(action, _)| format!("trap/{action}:killed"))
            .collect();
        guests.push("hello".to_string());
        boot(&format!("guest_mem=16 guests={}", guests.join(",")))
    })
}

#[test]
fn every_page_table_offence_kills_its_guest_with_the_reason() {
    let boot = offences();
    for (action, reason) in OFFENCES {
        let killed = format!("guest trap/{action} killed:");
        let mut needles = vec![killed.as_str()];
        needles.extend(reason.iter());
        boot.line_containing(&needles);
    }
    if boot.serial().contains("survived") {
        boot.fail("a trap guest survived its page-table offence");
    }
    boot.line_containing(&["guest hello exited code=0"]);
    boot.expect_success();
}

/// Two guests that each fill their memory, check it while the other runs,
/// and then probe past their memory.
fn isolation() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| boot("guest_mem=16 guests=isolation/a:killed,isolation/b:killed"))
}

/// The index of the first line containing `needle`.
fn line_index(boot: &Boot, needle: &str) -> usize {
    boot.lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| boot.fail(&format!("no line contains `{needle}`")))
}

#[test]
fn side_by_side_guests_keep_their_own_memory() {
    let boot = isolation();
    boot.expect_success();
    if boot.serial().contains("FAILED") || boot.serial().contains("survived") {
        boot.fail("an isolation guest saw a wrong word or survived its probe");
    }
    for name in ["a", "b"] {
        boot.line_containing(&[&format!(
            "isolation {name}: own memory intact after 5 rounds"
        )]);
    }
    // Both filled their memory before either finished checking: they
    // really ran side by side, each checking while the other wrote. No
    // message passes between the two to order this; the margin is in the
    // guest (images/guests/src/bin/isolation.rs): each sleeps 5 times, each
    // time at least as long as its own fill took, and the other has the
    // CPU alone meanwhile, so it would have to run more than 5 times
    // slower than the first did to be still filling at the first's last
    // check. That holds however slow the machine is, only not if it slows
    // down fivefold for the second guest alone.
    let last_fill = ["a", "b"]
        .map(|n| line_index(boot, &format!("isolation {n}: filled")))
        .into_iter()
        .max();
    let first_intact = ["a", "b"]
        .map(|n| line_index(boot, &format!("isolation {n}: own memory intact")))
        .into_iter()
        .min();
    if last_fill >= first_intact {
        boot.fail("one guest finished its checks before the other had filled its memory");
    }
    // Different patterns, so one guest's words in the other's memory
    // would have been seen.
    let pattern = |n: &str| {
        let line = boot.line_containing(&[&format!("isolation {n}: filled")]);
        line[line.find("pattern").unwrap_or(0)..].to_string()
    };
    if pattern("a") == pattern("b") {
        boot.fail("the two guests must write different patterns");
    }
}

#[test]
fn probes_past_a_guests_memory_fault_or_kill_it() {
    let boot = isolation();
    for name in ["a", "b"] {
        // A read past its memory in the start-up map: not present (error
        // code 0), reflected to its own handler at that address.
        boot.line_containing(&[
            &format!("isolation {name}: beyond its memory faults"),
            "address 0xffff800001000000, error code 0x0",
        ]);
        // Mapping the next frame: killed with the reason.
        boot.line_containing(&[
            &format!("guest isolation/{name} killed:"),
            "maps gpa:0x1000000 outside guest memory (size 0x1000000)",
        ]);
        if paging_counter(boot, &format!("isolation/{name}"), "faults_reflected") < 1 {
            boot.fail("the read past memory must be a reflected fault");
        }
    }
}
