//! Rust `std` programs as guests (`images/std/apps/`, on the runtime in
//! `images/std/hermit`): each runs side by side with `hello` and ends as
//! expected, a panic and an exhausted heap end only their own guest, a
//! broken std image is refused while the others run, and a guest of two
//! vCPUs runs its threads on both.
//!
//! The programs check their own results and print `<name>: ok ...`; the
//! tests read those lines, count every guest's end exactly once, and check
//! that the host got every frame back. One boot carries all the programs
//! that should succeed, one those that should fail: each boot is two
//! seconds or so of QEMU, shared among many checks.

use qemu_tests::{Boot, boot, boot_machine};
use std::path::PathBuf;
use xtask::guests;

/// Memory per guest for the std programs, in MiB (`guest_mem=`): std's
/// threads each have a stack of their own on the heap.
const GUEST_MEM: &str = "guest_mem=32";

/// The programs that succeed, with the guest word that runs each (one
/// `args-std` with a command line it must check).
const SUCCEEDING: [(&str, &str); 8] = [
    ("hello-std", "Hello from Rust std on rguest!"),
    ("threads-std", "threads-std: ok: 4 threads, counter=40000"),
    ("collections-std", "collections-std: ok"),
    ("time-std", "time-std: ok"),
    ("files-std", "files-std: ok"),
    ("crates-std", "crates-std: ok"),
    (
        "args-std/ARGS_STD_VARS=2 LANG=C 2 x /tmp/y",
        "args-std: ok: 3 arguments, 2 variables",
    ),
    ("compat-std", "compat-std: ok"),
];

/// Boots `guests="<list>"` with [`GUEST_MEM`] (quoted: an argument may
/// hold spaces).
fn boot_guests(list: &[&str]) -> Boot {
    boot(&format!("{GUEST_MEM} guests=\"{}\"", list.join(",")))
}

/// Checks that every guest of `names` ended exactly once, with exactly
/// the line `end` makes of its name, and that no other guest ended.
fn expect_each_ended_once(boot: &Boot, ends: &[(&str, String)]) {
    let ended: Vec<&str> = boot
        .lines()
        .filter(|l| {
            l.starts_with("guest ") && (l.contains(" exited code=") || l.contains(" killed: "))
        })
        .collect();
    if ended.len() != ends.len() {
        boot.fail(&format!(
            "expected {} guest ends, saw {}: {ended:?}",
            ends.len(),
            ended.len()
        ));
    }
    for (name, end) in ends {
        let matching = ended.iter().filter(|l| l.starts_with(end.as_str())).count();
        if matching != 1 {
            boot.fail(&format!(
                "expected `{end}` once for {name}, saw it {matching} times"
            ));
        }
    }
}

/// Every std program that should succeed, beside `hello`, in one boot:
/// each prints its `ok` line and exits 0, and the host gets every frame
/// back.
#[test]
fn std_programs_run_beside_hello_and_pass_their_checks() {
    let mut list = vec!["hello"];
    list.extend(SUCCEEDING.iter().map(|(word, _)| *word));
    let boot = boot_guests(&list);
    boot.expect_success();
    for (word, ok_line) in SUCCEEDING {
        boot.line_containing(&[&format!("[{word}]"), ok_line]);
    }
    let ends: Vec<(&str, String)> = list
        .iter()
        .map(|word| (*word, format!("guest {word} exited code=0")))
        .collect();
    expect_each_ended_once(&boot, &ends);
    boot.line_containing(&["frames:", "balanced"]);
}

/// A panic prints std's message and ends its guest with 101, as on
/// Linux; running out of memory prints std's reason and ends its guest
/// with the runtime's code for it, 104; `hello`
/// and `threads-std`, beside them, finish unharmed, and every frame
/// comes back.
#[test]
fn a_panic_and_an_exhausted_heap_end_only_their_own_guest() {
    let boot = boot_guests(&["hello", "panic-std:101", "oom-std:104", "threads-std"]);
    boot.expect_success();
    boot.line_containing(&["[panic-std]", "panic-std: the answer was 41, not 42"]);
    if boot.serial().contains("panic-std: FAILED") {
        boot.fail("panic-std ran on after its panic");
    }
    boot.line_containing(&["[oom-std]", "memory allocation of", "failed"]);
    boot.line_containing(&["[threads-std]", "threads-std: ok"]);
    expect_each_ended_once(
        &boot,
        &[
            ("hello", "guest hello exited code=0".into()),
            ("panic-std", "guest panic-std exited code=101".into()),
            ("oom-std", "guest oom-std exited code=104".into()),
            ("threads-std", "guest threads-std exited code=0".into()),
        ],
    );
    boot.line_containing(&["frames:", "balanced"]);
}

/// Threads on two vCPUs (`vcpus=2`, on two CPUs): `threads-std parallel`
/// computes side by side and meets through an atomic, a mutex, a condvar
/// and a channel, every total exact; the runtime says both vCPUs gave
/// threads turns; `available_parallelism` says 2 (`compat-std`, told so),
/// and the contended default `threads-std` passes too. Every frame comes
/// back.
#[test]
fn std_threads_run_on_two_vcpus() {
    let list = [
        "threads-std/parallel:0:vcpus=2",
        "threads-std:0:vcpus=2",
        "compat-std/COMPAT_STD_CPUS=2:0:vcpus=2",
    ];
    let boot = boot_machine(
        &format!("{GUEST_MEM} guests=\"{}\"", list.join(",")),
        |machine| machine.cpus = 2,
    );
    boot.expect_success();
    boot.line_containing(&[
        "[threads-std/parallel]",
        "threads-std: ok: parallel, 4 threads on 2 cpus, atomic=800 mutex=800 token passes=800, \
         hashes as computed alone, all joined",
    ]);
    let turns = boot.line_containing(&["[threads-std/parallel]", "hermit: vcpu 0 ran "]);
    let vcpu0 = qemu_tests::number_after(turns, "vcpu 0 ran");
    let vcpu1 = qemu_tests::number_after(turns, "vcpu 1 ran");
    if vcpu0.is_none_or(|n| n == 0) || vcpu1.is_none_or(|n| n == 0) {
        boot.fail(&format!("both vCPUs should have run threads: `{turns}`"));
    }
    boot.line_containing(&["[threads-std]", "threads-std: ok: 4 threads, counter=40000"]);
    boot.line_containing(&["[compat-std/COMPAT_STD_CPUS=2]", "compat-std: ok"]);
    expect_each_ended_once(
        &boot,
        &[
            (
                "threads-std/parallel",
                "guest threads-std/parallel exited code=0".into(),
            ),
            ("threads-std", "guest threads-std exited code=0".into()),
            (
                "compat-std/COMPAT_STD_CPUS=2",
                "guest compat-std/COMPAT_STD_CPUS=2 exited code=0".into(),
            ),
        ],
    );
    boot.line_containing(&["frames:", "balanced"]);
}

/// A std image cut short in the archive is refused with a reason when its
/// guest starts; the other guests still run to their end, and the run
/// fails (a guest did not end as expected).
#[test]
fn a_truncated_std_image_is_refused_and_the_others_run() {
    let archive = archive_with_truncated("hello-std");
    let boot = boot_machine(
        &format!("{GUEST_MEM} guests=hello,hello-std,threads-std"),
        |machine| machine.initrd = Some(archive),
    );
    boot.expect_kernel_failure();
    // The reason names what is wrong with the image (today: `the image is
    // not an x86-64 ELF executable`, its program headers being cut off).
    boot.line_containing(&["guest hello-std failed to start: ", "image"]);
    expect_each_ended_once(
        &boot,
        &[
            ("hello", "guest hello exited code=0".into()),
            ("threads-std", "guest threads-std exited code=0".into()),
        ],
    );
}

/// The guest archive with guest `name`'s ELF cut to half its length,
/// written to `target/qemu-tests/`.
fn archive_with_truncated(name: &str) -> PathBuf {
    let whole = std::fs::read(qemu_tests::guests()).expect("the guest archive is readable");
    let mut images = guests::unpack(&whole).expect("the guest archive unpacks");
    let (_, elf) = images
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the guest archive has no {name}"));
    elf.truncate(elf.len() / 2);
    let named: Vec<(&str, Vec<u8>)> = images
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    let packed = guests::pack(&named).expect("the images pack");
    let dir = xtask::workspace::Workspace::current()
        .target_dir
        .join("qemu-tests");
    std::fs::create_dir_all(&dir).expect("target/qemu-tests can be made");
    let path = dir.join(format!("guests-truncated-{name}.tar"));
    std::fs::write(&path, packed).expect("the archive can be written");
    path
}
