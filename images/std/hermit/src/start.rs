//! The program's start: from guest-rt's `_start` to std's `runtime_entry`.
//!
//! guest-rt's `_start` (the ELF entry) loads its boot stack, checks the
//! boot parameters and the image's place, registers its timer handler and
//! calls [`start`] (through `guest_rt::entry!`). We set up what std
//! expects of a kernel, in dependency order: the heap (everything else
//! allocates), the scheduler's timer, the main thread (its stack and
//! thread-local block from the heap) with the command line as `argv` and
//! the environment; with several vCPUs, the others started (`smp`), each
//! in its idle loop; then the boot stack becomes vCPU 0's idle context,
//! and the main thread runs std's `runtime_entry`, which calls `main` and
//! then `sys_exit` with its result.

use crate::{args, console, memory, net, process, sched, smp};
use guest_rt::{boot, exit_code};

guest_rt::entry!(start);

/// The main thread's stack, if the heap has room for it; else
/// [`MAIN_STACK_FALLBACK_BYTES`].
const MAIN_STACK_BYTES: usize = 2 << 20;

/// The main thread's stack in a guest too small for [`MAIN_STACK_BYTES`].
const MAIN_STACK_FALLBACK_BYTES: usize = 256 << 10;

unsafe extern "C" {
    /// std's entry on Hermit: sets up the environment, calls `main`, and
    /// exits with its result.
    fn runtime_entry(argc: i32, argv: *const *const u8, env: *const *const u8) -> !;
}

fn start() -> u64 {
    let params = boot::params();
    if memory::init(params.image_end, params.memory_bytes) == 0 {
        console::report(format_args!(
            "no memory for a heap after the image (image ends at {:#x}, memory {:#x} bytes)",
            params.image_end, params.memory_bytes
        ));
        return exit_code::OUT_OF_MEMORY;
    }
    sched::init();
    let command_line = args::to_c(&args::parse(boot::cmdline()));
    let arguments = alloc::boxed::Box::leak(alloc::boxed::Box::new(command_line));
    let argument = core::ptr::from_mut(arguments) as usize;
    let main = sched::spawn(main_thread, argument, MAIN_STACK_BYTES)
        .or_else(|| sched::spawn(main_thread, argument, MAIN_STACK_FALLBACK_BYTES));
    if main.is_none() {
        console::report(format_args!("no memory for the main thread's stack"));
        process::end(exit_code::OUT_OF_MEMORY);
    }
    if guest_rt::smp::vcpus() > 1 {
        // The others copy our traps when they start: the card's and the
        // wake-up's too.
        net::prepare_interrupts();
        sched::prepare_wakes();
        smp::start_others(sched::secondary_idle);
    }
    sched::run_idle()
}

/// The main thread: std's runtime with the command line.
extern "C" fn main_thread(argument: usize) {
    // SAFETY: `start` leaked the arguments for us, for the program's life.
    let arguments = unsafe { &*(argument as *const args::CArguments) };
    // SAFETY: argv and envp are NUL-terminated strings in null-terminated
    // arrays that live as long as the program, as std requires.
    unsafe { runtime_entry(arguments.argc, arguments.argv.cast(), arguments.envp.cast()) }
}
