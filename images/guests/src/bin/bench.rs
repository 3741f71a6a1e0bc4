//! # `bench`: the hypercall round trip, timed from inside the guest
//!
//! Makes `N` `nop` hypercalls (guest -> host -> guest) between two reads of
//! the time-stamp counter with [`guest_rt::bench::measure`], which prints
//! one machine-readable line (and the host one with the events):
//!
//! ```text
//! bench hypercall id=<id> iterations=<n> total_cycles=<c> per_op=<x.xx>
//! ```
//!
//! and the same for the empty loop around them (`bench loop ...`), so the
//! loop's own cost can be taken off, and for a short console line written
//! with one hypercall (`bench console_line ...`, 100 of them), and for a
//! switch between two cached address spaces (`bench set_root_cached`).
//! Under QEMU
//! with `-icount shift=0` the counter advances by one per instruction
//! retired, so the numbers are instruction counts (guest and host
//! together). `N` is 10000 unless the command line (`guests=bench/<n>`)
//! says otherwise: TCG is slow. Virtual
//! interrupts stay off throughout (as at boot), so no virtual interrupt
//! lands in the timed loop; the host's own tick still does.
//!
//! `guests=bench/compute` instead computes, with no exit at all, a fixed
//! chain of [`COMPUTE_STEPS`] xorshift steps, and prints the result and the
//! time it took: the compute-bound guest of the SMP benchmark (eight of
//! them on 1, 2 and 4 CPUs).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use guest_rt::bench::measure;
    use guest_rt::paging::{self, FrameAllocator};
    use guest_rt::{boot, hypercall, println};

    const DEFAULT_ITERATIONS: u64 = 10_000;
    /// `bench/compute`'s work: some 0.15 s of TCG time.
    pub const COMPUTE_STEPS: u64 = 100_000_000;
    /// A short line, written to the console with one hypercall each time
    /// (`bench console_line`): the host's cost of a line the way a guest
    /// prints one.
    const SHORT_LINE: &[u8] = b"bench: a short line\n";
    const CONSOLE_LINES: u64 = 100;
    /// Untimed calls first, so the first timed one finds everything warm.
    const WARM_UP: u64 = 100;

    pub fn main() -> u64 {
        let iterations = match boot::cmdline() {
            "" => DEFAULT_ITERATIONS,
            "compute" => return compute(COMPUTE_STEPS),
            words => match words.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    println!("bench: \"{words}\" is not a number of iterations");
                    return 2;
                }
            },
        };
        for _ in 0..WARM_UP {
            hypercall::nop();
        }
        measure("hypercall", iterations, || {
            hypercall::nop();
        });
        measure("loop", iterations, || core::hint::black_box(()));
        measure("console_line", CONSOLE_LINES, || {
            let _ = hypercall::console_write(SHORT_LINE);
        });
        set_root_cached(iterations)
    }

    /// `bench set_root_cached`: a switch between two address spaces whose
    /// shadows are both cached (the start-up one and an empty one with the
    /// same kernel half, where this code runs), one `set_root` each: the
    /// host's cost of a cached root switch alone, without a guest OS's
    /// scheduler around it (`ctxsw_hit` is that, from `os/bench`).
    fn set_root_cached(iterations: u64) -> u64 {
        let mut frames = FrameAllocator::after_image();
        let Some(other) = paging::new_address_space(&mut frames) else {
            println!("bench: no memory for a second address space");
            return 2;
        };
        let roots = [other, boot::params().initial_root];
        let mut next = 0;
        let mut switch = || {
            // SAFETY: both roots map this code, its stack and data alike
            // (the same kernel half), so nothing changes under us.
            let _ = unsafe { hypercall::set_root(roots[next % 2]) };
            next += 1;
        };
        for _ in 0..WARM_UP {
            switch();
        }
        measure("set_root_cached", iterations, switch);
        0
    }

    /// `steps` of xorshift64, each depending on the last, so nothing can
    /// be skipped or run ahead; no memory touched, no exit made.
    fn compute(steps: u64) -> u64 {
        let started = guest_rt::time::now_ns();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..steps {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        let x = core::hint::black_box(x);
        let ms = (guest_rt::time::now_ns() - started) / 1_000_000;
        println!("bench compute steps={steps} result={x:#x} ms={ms}");
        0
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
