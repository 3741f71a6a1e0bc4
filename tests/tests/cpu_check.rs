//! The host's ring-1 self-check (`kernel/src/cpu_check.rs`): every boot
//! says, once and before any guest runs, whether this CPU keeps ring 1 out
//! of ring 0, and then carries on either way.
//!
//! Which verdict is right depends on the accelerator. Under QEMU's TCG a
//! null selector loaded into SS in ring 1 gives CPL 0 (a TCG bug: the CPL
//! follows the null SS's descriptor privilege, 0), so the host must warn
//! that its guests are not contained there. With KVM (which `--accel auto`
//! picks only on a CPU with VT-x or AMD-V) the guest's rings are the
//! hardware's, and ring 1 holds.

use qemu_tests::boot;
use xtask::commands::test_env;
use xtask::qemu::{self, Accel, AccelRequest};

/// The kernel's `cpu_check::RING_ONE_HOLDS`, word for word.
const RING_ONE_HOLDS: &str =
    "cpu check: ring 1 holds (a ring-0 instruction after a null SS load in ring 1 faults)";

/// The kernel's `cpu_check::RING_ZERO_WARNING`, word for word.
const RING_ZERO_WARNING: &str = "warning: this CPU lets ring 1 reach ring 0 (null SS load gives CPL 0: a QEMU TCG bug); guests are NOT contained from each other or from the host here";

/// The accelerator the harness boots with: `RGUEST_ACCEL` as `cargo xtask
/// test` sets it, or what `--accel auto` would choose (as the harness does).
fn accel() -> Accel {
    match std::env::var(test_env::ACCEL).ok().as_deref() {
        Some("kvm") => Accel::Kvm,
        Some("tcg") => Accel::Tcg,
        _ => qemu::choose_accel(AccelRequest::Auto).accel,
    }
}

/// Is `line` one of the self-check's verdicts (either of the two above, or
/// the warning for a probe that came back some other way)?
fn is_verdict(line: &str) -> bool {
    line.starts_with("cpu check:")
        || (line.starts_with("warning:") && (line.contains("ring 1") || line.contains("ring-1")))
}

#[test]
fn the_boot_says_whether_ring_1_holds_before_any_guest() {
    let expected = match accel() {
        Accel::Tcg => RING_ZERO_WARNING,
        Accel::Kvm => RING_ONE_HOLDS,
    };
    let boot = boot("guests=hello");
    // The check never stops the machine, whatever it finds.
    boot.expect_success();
    let verdicts: Vec<(usize, &str)> = boot
        .lines()
        .enumerate()
        .filter(|(_, line)| is_verdict(line))
        .collect();
    match verdicts.as_slice() {
        [(_, line)] if *line == expected => {}
        [(_, line)] => boot.fail(&format!(
            "under {:?} the self-check should say\n  {expected}\nbut it said\n  {line}",
            accel()
        )),
        _ => boot.fail(&format!(
            "expected exactly one self-check verdict, found {}",
            verdicts.len()
        )),
    }
    let verdict_at = verdicts[0].0;
    let first_guest_line = boot
        .lines()
        .position(|line| line.starts_with("[hello]"))
        .unwrap_or_else(|| boot.fail("the hello guest printed nothing"));
    if verdict_at > first_guest_line {
        boot.fail("the self-check's verdict came after a guest had run");
    }
    boot.line_containing(&["guest hello exited code=0"]);
}
