//! The guest OS (`images/os`) under the host: each workload runs to its
//! checked answer, several OS guests run side by side, system calls never
//! leave the guest, and the benchmarks all report.

use qemu_tests::{Boot, boot, number_after};

/// Boots `guests=<guests>` and expects every guest to end with exit code 0
/// and the host to get back every frame.
fn run(guests: &str) -> Boot {
    let boot = boot(&format!("guests={guests}"));
    boot.expect_success();
    boot.line_containing(&["frames:", "balanced"]);
    boot
}

/// Checks one OS guest ended well: its checks passed and its pages all
/// came back to its kernel.
fn os_guest_passed(boot: &Boot, name: &str) {
    let prefix = format!("[{name}]");
    boot.line_containing(&[&prefix, "user: all checks passed"]);
    boot.line_containing(&[&prefix, "os: first process exited with 0", "(balanced)"]);
    boot.line_containing(&[&format!("guest {name} exited code=0")]);
}

/// Fourteen processes sum squares down a tree of forks; the root checks
/// the closed form.
#[test]
fn fork_tree_sums_are_right() {
    let boot = run("os/forktree");
    let line = boot.line_containing(&["forktree: depth=3 processes=14", " ok"]);
    let sum = number_after(line, "sum=");
    if sum.is_none() || sum != number_after(line, "expected=") {
        boot.fail("the tree's sum is not the closed form");
    }
    os_guest_passed(&boot, "os/forktree");
}

/// Two processes bounce a number through two pipes.
#[test]
fn pipe_ping_pong_answers_every_round() {
    let boot = run("os/pingpong");
    boot.line_containing(&["pingpong: rounds=500 ok"]);
    os_guest_passed(&boot, "os/pingpong");
    // Every round is two switches between the same two roots: cached.
    let paging = boot.line_containing(&["guest os/pingpong paging:"]);
    if number_after(paging, "roots_reused=").unwrap_or(0) < 900 {
        boot.fail("the two processes' roots were not reused from the cache");
    }
}

/// Pages are demand-zeroed, written, unmapped and remapped zeroed; all
/// come back to the allocator.
#[test]
fn memory_toucher_maps_unmaps_and_remaps() {
    let boot = run("os/memtouch");
    boot.line_containing(&["memtouch: pages=256 rounds=4 pages returned ok"]);
    os_guest_passed(&boot, "os/memtouch");
}

/// Children write over a buffer shared copy-on-write; each sees the
/// parent's bytes first and its own after, the parent's stay as they were.
#[test]
fn copy_on_write_children_see_their_own_copies() {
    let boot = run("os/cow");
    boot.line_containing(&["cow: children=8 pages=64 ok"]);
    os_guest_passed(&boot, "os/cow");
    // The writes reached the guest's own #PF handler (reflected).
    let paging = boot.line_containing(&["guest os/cow paging:"]);
    if number_after(paging, "faults_reflected=").unwrap_or(0) < 8 * 64 {
        boot.fail("fewer reflected faults than copy-on-write pages written");
    }
}

/// Two OS guests with different workloads, and a third, run at once, each
/// in its own memory, each to its own right answer.
#[test]
fn several_os_guests_side_by_side() {
    let boot = run("os/cow,os/pingpong,os/forktree");
    boot.line_containing(&["[os/cow]", "cow: children=8 pages=64 ok"]);
    boot.line_containing(&["[os/pingpong]", "pingpong: rounds=500 ok"]);
    boot.line_containing(&["[os/forktree]", "forktree: depth=3", " ok"]);
    for name in ["os/cow", "os/pingpong", "os/forktree"] {
        os_guest_passed(&boot, name);
    }
}

/// The default workload runs all four in one guest.
#[test]
fn all_workloads_in_one_guest() {
    let boot = run("os");
    for line in [
        "forktree: depth=3",
        "pingpong: rounds=500 ok",
        "memtouch: pages=256",
        "cow: children=8",
    ] {
        boot.line_containing(&["[os]", line]);
    }
    os_guest_passed(&boot, "os");
}

/// 10000 `getpid` calls through the direct-trap gate cost the host
/// nothing: in every one of the five loops, not one exit is the guest's own
/// doing (no fault, no exception, no hypercall). The host's ticks that land
/// in a loop, and its timer handler's work when a tick brings the guest's
/// virtual timer, are counted apart (`host_interrupts=`,
/// `irq_handler_exits=`): how many there are depends only on how fast the
/// machine is, so they are checked for consistency, never for a value.
#[test]
fn system_calls_make_no_host_exits() {
    let boot = run("os/syscall");
    os_guest_passed(&boot, "os/syscall");
    let mut loops = 0;
    for line in boot
        .lines()
        .filter(|l| l.starts_with("[os/syscall] bench events "))
    {
        let n = |key| number_after(line, key).unwrap_or(u64::MAX);
        if n("guest_exits=") != 0 {
            boot.fail(&format!("a system call left the guest: {line}"));
        }
        if n("exits=") != n("host_interrupts=") + n("irq_handler_exits=") {
            boot.fail(&format!(
                "exits that are neither the host's nor a handler's: {line}"
            ));
        }
        loops += 1;
    }
    if loops != 5 {
        boot.fail(&format!("expected five system-call loops, saw {loops}"));
    }
    boot.line_containing(&["bench syscall ", "iterations=10000", "per_op="]);
}

/// Every benchmark reports one result line, and the checks around them
/// pass.
#[test]
fn benchmarks_all_report() {
    let boot = run("os/bench");
    os_guest_passed(&boot, "os/bench");
    for name in [
        "syscall",
        "pf_read",
        "pf_write_after_read",
        "ctxsw_hit",
        "ctxsw_miss",
        "cow_fault",
        "pte_update_single",
        "pte_update_batched",
        "fork_exit_wait",
        "cow_bench",
    ] {
        let line = boot.line_containing(&[&format!("bench {name} id="), "per_op="]);
        if number_after(line, "total_cycles=").unwrap_or(0) == 0 {
            boot.fail(&format!("{name} measured nothing"));
        }
    }
    // A write after a read is the host's alone (dirty emulation): no
    // reflected fault, no hypercall of the guest's own (its timer
    // handler's, if a tick came, are counted apart).
    let id = number_after(
        boot.line_containing(&["bench pf_write_after_read id="]),
        "id=",
    )
    .unwrap();
    let events = boot.line_containing(&[&format!("bench events id={id} ")]);
    if number_after(events, "faults_reflected=") != Some(0)
        || number_after(events, "hypercalls=") != Some(0)
    {
        boot.fail("the write after a read reached the guest");
    }
    // The first touch of a heap page is the host's alone (zero-on-demand
    // entries and the zero pool): one exit and no fault of the guest's,
    // but for the first touch in the table (which writes the entries) and
    // one each time the pool of 64 runs dry (which fills it again).
    let id = number_after(boot.line_containing(&["bench pf_read id="]), "id=").unwrap();
    let events = boot.line_containing(&[&format!("bench events id={id} ")]);
    let count = |name: &str| number_after(events, &format!(" {name}=")).unwrap_or(u64::MAX);
    let (zeroed, reflected) = (count("pages_zeroed"), count("faults_reflected"));
    if zeroed.saturating_add(reflected) != 256 || reflected > 256 / 64 + 1 {
        boot.fail(&format!(
            "256 first touches: {zeroed} zero-filled by the host, {reflected} reflected"
        ));
    }
    // (A tick's exits, if one came, are counted apart.)
    if count("guest_exits") != count("page_faults") + count("hypercalls")
        || count("hypercalls") != reflected
    {
        boot.fail("a zero-filled page must cost one exit, a reflected one two");
    }
    // The batched updates make one exit per ring's worth, not per entry.
    let id = number_after(
        boot.line_containing(&["bench pte_update_batched id="]),
        "id=",
    )
    .unwrap();
    let events = boot.line_containing(&[&format!("bench events id={id} ")]);
    if number_after(events, "hypercalls=").unwrap_or(u64::MAX) > 1024 / 64 + 2 {
        boot.fail("the ring did not batch the page-table updates");
    }
}
