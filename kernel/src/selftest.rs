//! Self-tests chosen on the command line (`test=<name>`).
//!
//! The QEMU integration tests boot the kernel with one of these to prove
//! that the machinery everything else relies on really works: that a CPU
//! exception produces a report and the failure status, that a panic does,
//! that the double-fault handler survives a blown stack, and that the frame
//! allocator and heap give back exactly what they took.

use crate::{memory, power};
use alloc::boxed::Box;
use alloc::vec::Vec;
use host::config::BootTest;

/// Runs `test`. The fault tests never return.
pub fn run(test: BootTest) {
    println!("selftest: {}", test.name());
    match test {
        BootTest::FaultInvalidOpcode => {
            // SAFETY: not sound on purpose: ud2 raises #UD, whose handler
            // reports it and ends the machine.
            unsafe { core::arch::asm!("ud2") };
        }
        BootTest::FaultPageFault => {
            // Address 0x10 is below the kernel image and nothing maps it.
            let p = core::hint::black_box(0x10usize) as *const u64;
            // SAFETY: not sound on purpose: the read raises #PF.
            let v = unsafe { p.read_volatile() };
            println!("read {v}: the page fault did not happen");
        }
        BootTest::FaultDivide => {
            let zero = core::hint::black_box(0u64);
            // SAFETY: not sound on purpose: div by zero raises #DE (Rust's
            // `/` would panic before reaching the instruction).
            unsafe {
                core::arch::asm!("div {0}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _)
            };
        }
        BootTest::FaultStackOverflow => {
            let depth = recurse(core::hint::black_box(1));
            println!("recursed {depth} deep: the stack did not overflow");
        }
        BootTest::Panic => panic!("selftest: a deliberate panic"),
        BootTest::AllocStress => alloc_stress(),
        // Needs the memory map and the configuration: `main` runs it
        // (`hostnet::selftest`) before coming here.
        BootTest::Net => {}
    }
    // The fault tests only get here if the fault did not happen.
    power::exit(power::FAILURE);
}

/// Each frame of this recursion holds half a KiB, so a 128 KiB stack lasts
/// about 250 calls before it runs into the guard page. Frames much smaller
/// than the guard page are the point: the first touch of the guard is then
/// near its top, and the CPU's push of the page fault's frame lands in the
/// guard too, which makes the double fault the test expects. (With frames
/// of a whole page, the first touch could land anywhere in the guard,
/// depending on how deep the stack was when the recursion began; near its
/// bottom, the fault's frame went to the mapped page below and the fault
/// was reported as a plain #PF.)
#[inline(never)]
fn recurse(n: u64) -> u64 {
    let mut buffer = [0u8; 512];
    core::hint::black_box(&mut buffer);
    if n > 1_000_000 {
        return n;
    }
    recurse(n + 1) + u64::from(buffer[0])
}

/// Takes and returns thousands of frames and heap blocks in mixed order and
/// checks that every count returns to where it started.
fn alloc_stress() {
    const ROUNDS: usize = 8;
    const FRAMES_PER_ROUND: usize = 4096;
    let frames_before = memory::frame_stats();
    let heap_before = memory::heap::usage();
    let mut total_frames = 0;
    for round in 0..ROUNDS {
        let mut held = Vec::with_capacity(FRAMES_PER_ROUND);
        let mut boxes = Vec::new();
        for i in 0..FRAMES_PER_ROUND {
            let Some(frame) = memory::alloc_frame() else {
                break;
            };
            // Write a pattern through the direct map, so a frame handed out
            // twice would show up as a clobbered pattern below.
            let p = memory::phys_to_virt(frame).cast::<u64>();
            // SAFETY: the frame is ours until we free it below, and the
            // direct map reaches it.
            unsafe { p.write(frame.as_u64() ^ 0x5a5a) };
            held.push(frame);
            boxes.push(Box::new([i as u8; 64]));
        }
        for &frame in &held {
            let p = memory::phys_to_virt(frame).cast::<u64>();
            // SAFETY: as above.
            let v = unsafe { p.read() };
            if v != frame.as_u64() ^ 0x5a5a {
                println!("alloc-stress: FAILED: frame {frame} was handed out twice");
                power::exit(power::FAILURE);
            }
        }
        total_frames += held.len();
        // Free in an order different from allocation: odd ones, then even.
        for (_, frame) in held.iter().enumerate().filter(|(i, _)| i % 2 == round % 2) {
            memory::free_frame(*frame);
        }
        for (_, frame) in held.iter().enumerate().filter(|(i, _)| i % 2 != round % 2) {
            memory::free_frame(*frame);
        }
        drop(boxes);
    }
    let frames_after = memory::frame_stats();
    let heap_after = memory::heap::usage();
    println!(
        "alloc-stress: {total_frames} frames in {ROUNDS} rounds; free frames before={} after={}; heap allocations before={} after={}, bytes before={} after={}",
        frames_before.free,
        frames_after.free,
        heap_before.0,
        heap_after.0,
        heap_before.1,
        heap_after.1
    );
    if frames_before == frames_after && heap_before == heap_after {
        println!("alloc-stress: ok");
        power::exit(power::SUCCESS);
    }
    println!("alloc-stress: FAILED: counts did not balance");
    power::exit(power::FAILURE);
}
