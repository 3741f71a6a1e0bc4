//! The guest's vCPUs: starting the others at boot, and knowing which one
//! code runs on.
//!
//! A guest given several vCPUs (`guests=name:0:vcpus=N`) runs its threads
//! on all of them: vCPU 0 starts the others with guest-rt's `smp` module
//! (a static stack and shared page each), and every vCPU then runs the
//! scheduler's idle loop, taking ready threads (`sched`). Code finds its
//! vCPU through the GS base, which guest-rt points at a block of each
//! vCPU's own: that needs `FSGSBASE` in the boot parameters (the host
//! offers it on a CPU that has it; QEMU's `-cpu max` does). Without it,
//! or with one vCPU, the guest runs on vCPU 0 alone, exactly as before
//! there were several ([`several`] is false, and no lock spins).

use crate::console;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use guest_abi::boot::feature;
use guest_rt::{boot, smp};

/// The most vCPUs the runtime uses (guest-rt's limit, the host's too).
pub const MAX_VCPUS: usize = smp::MAX_VCPUS;

/// Whether other vCPUs may run runtime code: set before the first starts.
static SEVERAL: AtomicBool = AtomicBool::new(false);

/// How many vCPUs run threads (started ones, vCPU 0 included).
static RUNNING: AtomicUsize = AtomicUsize::new(1);

/// Whether more than one vCPU may be in the runtime: what makes the locks
/// spin.
#[inline]
pub fn several() -> bool {
    SEVERAL.load(Ordering::Relaxed)
}

/// How many vCPUs run threads: what `available_parallelism` says.
pub fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

/// The number of the vCPU this code runs on (0 with one vCPU). Valid until
/// the thread may switch (virtual interrupts on, or a block): a thread may
/// resume on another vCPU.
#[inline]
pub fn this_vcpu() -> usize {
    smp::this_vcpu() as usize
}

/// Starts every other vCPU the host gives us (vCPU 0 calls this once, with
/// the scheduler ready), each running `idle`. Returns how many vCPUs run.
pub fn start_others(idle: smp::Entry) -> usize {
    let wanted = smp::vcpus() as usize;
    if wanted <= 1 {
        return 1;
    }
    if boot::params().features & feature::FSGSBASE == 0 {
        console::report(format_args!(
            "{wanted} vcpus, but no FSGSBASE to tell them apart: running on vcpu 0 alone"
        ));
        return 1;
    }
    SEVERAL.store(true, Ordering::SeqCst);
    for vcpu in 1..wanted {
        // Counted before the start: the new vCPU may take the main thread
        // (and it ask) before this one returns from the hypercall.
        RUNNING.store(vcpu + 1, Ordering::Release);
        if let Err(e) = smp::start(vcpu as u64, idle) {
            RUNNING.store(vcpu, Ordering::Release);
            console::report(format_args!("starting vcpu {vcpu} refused: {e:?}"));
            break;
        }
    }
    running()
}
