//! Containment: a guest kernel that tries something only the host may do
//! is killed with a reason naming what it did, and the host, and the guests
//! after it, carry on.
//!
//! Some offences are contained without a kill: a request the host refuses
//! with an error (a direct trap on one of the host's own interrupt
//! vectors), a fault the CPU raises and the host reflects to the guest's
//! handler (a selector naming the LDT, which the host left null), or state
//! the host keeps apart (one guest's FPU, SSE and segment registers, never
//! seen by the next). Those guests exit with [`CONTAINED`] after a line
//! saying exactly what happened.
//!
//! All the misbehaving guests share one boot (they run one after another
//! and side by side on the host's tick); a well-behaved guest at the end
//! must still run to completion.

use qemu_tests::{Boot, boot, number_after};
use std::sync::OnceLock;

/// Each action the `trap` guest can take, and words the host's kill reason
/// must contain.
const ACTIONS: &[(&str, &[&str])] = &[
    ("cli", &["privileged instruction `cli`"]),
    ("hlt", &["privileged instruction `hlt`"]),
    ("mov-cr3", &["privileged instruction `mov to cr3`"]),
    ("mov-cr8", &["privileged instruction `mov to cr8`"]),
    ("mov-dr7", &["privileged instruction `mov to dr7`"]),
    ("lgdt", &["privileged instruction `lgdt`"]),
    ("wrmsr", &["privileged instruction `wrmsr`"]),
    ("rdpmc", &["privileged instruction `rdpmc`"]),
    ("in", &["privileged instruction `in`"]),
    ("out", &["privileged instruction `out`"]),
    ("swapgs", &["privileged instruction `swapgs`"]),
    ("iretq-ring0", &["iretq to ring 0 (its frame's cs is 0x8)"]),
    (
        "iretq-bad-cs",
        &[
            "iretq with a bad frame",
            "cs 0x21 is not a code selector the guest may use: #GP(0x20)",
        ],
    ),
    ("sgdt", &["privileged instruction `sgdt`"]),
    ("write-switcher", &["write to the switcher's pages"]),
    ("user-hypercall", &["hypercall from user mode"]),
    (
        "direct-no-stack",
        &["direct trap 0x80 taken with no kernel stack set (SetKernelStack)"],
    ),
];

/// The exit code of a `trap` action the host contained without killing it.
const CONTAINED: u64 = 3;

/// Each action the host contains without a kill, and words of the line the
/// guest prints about it before it exits with [`CONTAINED`]. `fpu-look`
/// comes right after `fpu-plant`, so that it runs while `fpu-plant` sleeps.
const CONTAINED_ACTIONS: &[(&str, &[&str])] = &[
    (
        "direct-host-vector",
        &["every host vector refused with an error, vector 0x80 accepted"],
    ),
    (
        "ldt-call-gate",
        &[
            "mov ds, 0xf: #GP(0xc)",
            "far call through 0x15: #GP(0x14)",
            "ring 0 never reached",
        ],
    ),
    (
        "fpu-plant",
        &["fpu-plant: clean state at start, our own state back after the sleep"],
    ),
    (
        "fpu-look",
        &["fpu-look: clean state at start, our own state back after the sleep"],
    ),
    ("cpu-state", &["cpu-state: as the host promises"]),
    (
        "breakpoint",
        &["breakpoint: int3 reached our #BP handler once, resuming after it"],
    ),
];

/// The one boot all the tests below read.
fn contained() -> &'static Boot {
    static BOOT: OnceLock<Boot> = OnceLock::new();
    BOOT.get_or_init(|| {
        let mut guests: Vec<String> = ACTIONS
            .iter()
            .map(|(action, _)| format!("trap/{action}:killed"))
            .collect();
        guests.extend(
            CONTAINED_ACTIONS
                .iter()
                .map(|(action, _)| format!("trap/{action}:{CONTAINED}")),
        );
        guests.push("hello".to_string());
        boot(&format!("guests={}", guests.join(",")))
    })
}

#[test]
fn every_privileged_action_kills_its_guest_with_the_reason() {
    let boot = contained();
    for (action, reason) in ACTIONS {
        let mut needles = vec![format!("guest trap/{action} killed:")];
        needles.extend(reason.iter().map(|r| r.to_string()));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        boot.line_containing(&needles);
    }
    // No guest got past its action.
    if boot.serial().contains("survived") {
        boot.fail("a trap guest survived its privileged action");
    }
}

#[test]
fn every_contained_action_ends_its_guest_with_what_the_host_did() {
    let boot = contained();
    for (action, what) in CONTAINED_ACTIONS {
        let mut needles = vec![format!("[trap/{action}]")];
        needles.extend(what.iter().map(|w| w.to_string()));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        boot.line_containing(&needles);
        boot.line_containing(&[&format!("guest trap/{action} exited code={CONTAINED}")]);
    }
}

/// The host's timer, the legacy PICs' range and the APIC's spurious vector
/// are the host's: a direct trap there would hand the guest the host's
/// interrupts (and the host would never take the CPU back). Each is refused
/// with `InvalidArgument`, the guest lives on, and the host's tick still
/// preempts everyone (the guests after it end as expected).
#[test]
fn direct_traps_on_the_hosts_interrupt_vectors_are_refused() {
    let boot = contained();
    for vector in ["0x20", "0xe0", "0xe7", "0xef", "0xff"] {
        boot.line_containing(&[
            "[trap/direct-host-vector]",
            &format!("direct trap on vector {vector} refused: InvalidArgument"),
        ]);
    }
    if boot.serial().contains("the host gave us its vector") {
        boot.fail("the host accepted a direct trap on one of its own vectors");
    }
}

/// The LDT register is null: a selector naming the LDT faults (#GP with the
/// selector as error code) instead of reading a descriptor from linear
/// address 0, the guest's own memory, where the `trap` guest put a call
/// gate to the host's ring-0 code selector.
#[test]
fn an_ldt_selector_faults_and_never_reaches_ring_0() {
    let boot = contained();
    boot.line_containing(&[
        "[trap/ldt-call-gate]",
        "#GP(0xc)",
        "#GP(0x14)",
        "ring 0 never reached",
    ]);
    if boot.serial().contains("ran our code in ring 0") {
        boot.fail("a call gate in a guest's LDT reached ring 0");
    }
}

/// Each guest starts with a clean FPU, SSE and segment state (`fninit`'s
/// control word, MXCSR 0x1f80, zeroed registers, null selectors, FS and GS
/// bases 0), never the one another guest left, and finds its own state
/// again after it slept while the other ran. The bases are read and
/// planted only where the host offers `rdfsbase` (its `cpu:` line says
/// `fsgsbase=true`; QEMU's `-cpu max` has it), and are 0 otherwise.
#[test]
fn fpu_sse_and_segment_state_stays_with_its_guest() {
    const CLEAN: &str = "fcw=0x37f mxcsr=0x1f80 mm0=0x0 mm7=0x0 xmm0=0x0:0x0 xmm15=0x0:0x0 ds=0x0 es=0x0 fs=0x0 gs=0x0 fs_base=0x0 gs_base=0x0";
    const PLANTED: &str = "fcw=0xf7f mxcsr=0x7f80 mm0=0xa0a0000000000000 mm7=0xa0a0000000000007 xmm0=0xa0a0000000000101:0xa0a0000000000100 xmm15=0xa0a0000000001501:0xa0a0000000001500 ds=0x21 es=0x2b fs=0x19 gs=0x33";
    const LOOKED: &str = "fcw=0x77f mxcsr=0x3f80 mm0=0xb0b0000000000000 mm7=0xb0b0000000000007 xmm0=0xb0b0000000000101:0xb0b0000000000100 xmm15=0xb0b0000000001501:0xb0b0000000001500 ds=0x2b es=0x21 fs=0x33 gs=0x19";
    let boot = contained();
    let fsgsbase = fsgsbase_offered(boot);
    let bases = |fs: &str, gs: &str| {
        if fsgsbase {
            format!(" fs_base={fs} gs_base={gs}")
        } else {
            String::from(" fs_base=0x0 gs_base=0x0")
        }
    };
    let planted = format!(
        "{PLANTED}{}",
        bases("0xffff800000a0f000", "0xffff800000a09000")
    );
    let looked = format!(
        "{LOOKED}{}",
        bases("0xffff800000b0f000", "0xffff800000b09000")
    );
    for (action, own) in [("fpu-plant", planted), ("fpu-look", looked)] {
        let tag = format!("[trap/{action}]");
        let at_start = boot.line_containing(&[&tag, &format!("{action} at start:")]);
        if !at_start.ends_with(CLEAN) {
            boot.fail(&format!("{action} did not start with the clean state"));
        }
        let after = boot.line_containing(&[&tag, &format!("{action} after a")]);
        if !after.ends_with(&own) {
            boot.fail(&format!(
                "{action} did not find its own state after its sleep"
            ));
        }
    }
}

/// Whether the host says its guests have `rdfsbase` and friends.
fn fsgsbase_offered(boot: &Boot) -> bool {
    boot.line_containing(&["cpu: nx="])
        .contains("fsgsbase=true")
}

/// What ring 1 can reach of the CPU without a fault the host sees is what
/// `docs/DESIGN.md` ("CPU state a guest can reach") promises: TSC_AUX 0
/// (or no `rdtscp`/`rdpid` at all), no XSAVE state, its own FS base (0 at
/// its start) where the host offers `rdfsbase` and no such instruction
/// where it does not, no protection keys, no `syscall`, IF on and IOPL 0,
/// and the guest's own AC and DF kept across an exit.
#[test]
fn the_cpu_state_a_guest_reaches_is_what_the_host_promises() {
    let boot = contained();
    let line = boot.line_containing(&["[trap/cpu-state]", "cpu-state: rdtscp"]);
    let rdfsbase = if fsgsbase_offered(boot) {
        "rdfsbase=0x0"
    } else {
        "rdfsbase=#UD"
    };
    for expected in [
        "xgetbv=#UD",
        rdfsbase,
        "rdpkru=#UD",
        "syscall=#UD",
        "if=1 iopl=0",
        "ac+df across a hypercall: kept",
    ] {
        if !line.contains(expected) {
            boot.fail(&format!("cpu-state did not report {expected}"));
        }
    }
    for (probe, zero_or_missing) in [("tsc_aux=", ["0x0", "#UD"]), ("rdpid=", ["0x0", "#UD"])] {
        if !zero_or_missing
            .iter()
            .any(|value| line.contains(&format!("{probe}{value} ")))
        {
            boot.fail(&format!("cpu-state: {probe} is neither 0 nor missing"));
        }
    }
}

/// `iretq` is legal in ring 1: no kill reason may call it privileged.
#[test]
fn no_kill_reason_calls_iretq_privileged() {
    let boot = contained();
    if boot.serial().contains("privileged instruction `iretq`") {
        boot.fail("an iretq was called a privileged instruction");
    }
}

#[test]
fn the_guest_after_them_still_runs_and_the_host_succeeds() {
    let boot = contained();
    boot.expect_success();
    boot.line_containing(&["guest hello exited code=0"]);
    boot.line_containing(&["frames:", "balanced"]);
}

/// A guest that spins with its virtual interrupts off is still preempted by
/// the host's real timer, and ended after its time budget: charged at
/// least the budget, and the other guest still ends well.
#[test]
fn a_spinning_guest_is_preempted_and_ended_after_its_budget() {
    let boot = boot("guest_budget_ms=300 guests=trap/spin:killed,hello");
    boot.expect_success();
    boot.line_containing(&[
        "guest trap/spin killed:",
        "time budget of 300 ms",
        "virtual interrupts off",
    ]);
    let counters = boot.line_containing(&["guest trap/spin counters:"]);
    if number_after(counters, "cpu_ms=").unwrap_or(0) < 300 {
        boot.fail("the spinning guest should have been charged at least its 300 ms");
    }
    boot.line_containing(&["guest hello exited code=0"]);
}

/// A kill the command line did not expect fails the run (the harness can
/// see a containment failure).
#[test]
fn an_unexpected_kill_fails_the_run() {
    let boot = boot("guests=trap/cli");
    boot.expect_kernel_failure();
    boot.line_containing(&["guest trap/cli killed:", "cli"]);
}
