//! # `kernel`: the rguest host, on bare metal
//!
//! This is the program a machine boots. It owns the hardware, and it is the
//! only crate of the project with `unsafe` code (besides the switcher's
//! assembly): everything that judges a guest lives in the safe `host`
//! crate, and this kernel gives it the hardware through small traits.
//!
//! The story of a boot, in the order [`kernel_entry`] tells it:
//!
//! 1. [`boot`]: a PVH or Multiboot2 loader enters in 32-bit mode; we reach
//!    long mode and copy what the loader told us (memory map, command line).
//! 2. [`console`]: the serial line, and the log level from the command line
//!    ([`host::config`]).
//! 3. [`cpu`], [`gdt`], [`interrupts`]: what the CPU can do (and the FPU
//!    and SSE given to guests); segments, a null LDT, the task state with
//!    its emergency stacks; an IDT whose every exception reports and stops
//!    the machine. [`cpu_check`]: whether this CPU keeps ring 1 out of
//!    ring 0 (a warning where it does not, as under QEMU's TCG).
//! 4. [`memory`]: the frame allocator, the host's page tables with the
//!    direct map of RAM, the heap.
//! 5. [`apic`]: the one-shot timer, calibrated against the PIT; [`acpi`]:
//!    which CPUs the machine has; [`smp`]: the others started, each set up
//!    as the boot CPU was, and parked until there is work for them.
//! 6. Then the real work: [`switcher`] installs the world switch in its
//!    slot (with [`context`], the FPU, SSE and segment state it hands from
//!    guest to guest), and [`run`] starts the guests named on the command
//!    line from the guest archive (the first boot module) and shares the
//!    CPU between them until each has ended; with `bench=on`, [`bench`] first measures
//!    the native analogues. Or a self-test instead ([`selftest`]). Last,
//!    [`power`] ends the machine with a status QEMU passes on.
//! 7. Beside the guests, the machine's network ([`network`]): the virtual
//!    switch joining the guests' network cards, the machine's own NIC as
//!    its uplink ([`pci`] finds it, [`nic`] drives it), and the host's own
//!    interface, which serves the counters page ([`hostnet`]).
//!
//! On any target but bare metal this crate is an empty program, so that
//! `cargo test` and `cargo clippy` over the workspace pass on Linux.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod acpi;
#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod context;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod cpu_check;
#[cfg(target_os = "none")]
mod gdt;
#[cfg(target_os = "none")]
mod hostnet;
#[cfg(target_os = "none")]
mod interrupts;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod network;
#[cfg(target_os = "none")]
mod nic;
#[cfg(target_os = "none")]
mod pci;
#[cfg(target_os = "none")]
mod power;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod switcher;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the rguest kernel runs on bare metal: build it with `cargo xtask build`");
}

#[cfg(target_os = "none")]
use host::config::Config;

/// The first Rust code, called by `boot/entry.rs` in long mode with the
/// registers the loader entered with.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(loader_eax: u32, loader_ebx: u32) -> ! {
    console::init();

    // SAFETY: the boot tables identity-map the first 4 GiB, and the
    // registers are the loader's, untouched by the entry code.
    let boot = match unsafe { boot::read_loader_info(loader_eax, loader_ebx) } {
        Ok(boot) => boot,
        Err(e) => fail(format_args!("cannot read the loader's information: {e}")),
    };
    println!(
        "rguest {} booted via {}; command line: \"{}\"",
        env!("CARGO_PKG_VERSION"),
        boot.protocol,
        boot.cmdline()
    );
    let config = match Config::parse(boot.cmdline(), |w| log::warn!("{w}")) {
        Ok(config) => config,
        Err(e) => fail(format_args!("{e}")),
    };
    console::set_level(config.log_level);
    if boot.truncated {
        log::warn!("the loader's memory map, modules or command line did not fit and were cut");
    }

    let features = cpu::detect();
    gdt::init();
    interrupts::init();
    if features.nx {
        // SAFETY: CPUID says NX exists; setting EFER.NXE only makes the NX
        // bit of page-table entries meaningful.
        unsafe {
            use x86_64::registers::model_specific::{Efer, EferFlags};
            Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE));
        }
    }
    cpu::harden(&features);
    cpu::enable_fpu_for_guests();
    cpu::enable_fs_gs_bases_for_guests(&features);
    // Before any guest: does this CPU keep ring 1 out of ring 0?
    cpu_check::run();
    if let Err(e) = memory::init(&boot, features.nx) {
        fail(format_args!("memory set-up failed: {e}"));
    }
    report_memory(&boot);

    let clocks = match apic::init(features.apic) {
        Ok(clocks) => clocks,
        Err(e) => fail(format_args!("timer set-up failed: {e:?}")),
    };
    x86_64::instructions::interrupts::enable();
    let (waited, elapsed) = wait_for_timer(3, 1_000_000);
    println!(
        "timer: one-shot local APIC timer ({} kHz after /16), slices of {} us; TSC {} MHz; {waited} timer interrupts of 1 ms in {} us",
        clocks.apic_timer_hz / 1000,
        1_000_000 / config.timer_hz,
        clocks.tsc_hz / 1_000_000,
        elapsed * 1_000_000 / clocks.tsc_hz.max(1),
    );
    smp::start_application_processors(&boot, &features);
    if !boot.notes.is_empty() {
        log::info!("boot: {}", boot.notes);
    }

    if config.test == Some(host::config::BootTest::Net) {
        hostnet::selftest::run(&config, boot.regions());
    }
    if let Some(test) = config.test {
        selftest::run(test);
    }
    x86_64::instructions::interrupts::disable();
    if config.bench != host::config::Bench::Off {
        bench::run_native(config.bench == host::config::Bench::Exits);
    }
    let archive = boot.modules().first().map(|m| {
        let len = (m.end.as_u64() - m.start.as_u64()) as usize;
        // SAFETY: the loader put the module there; the frame allocator keeps
        // its frames reserved, and the direct map reaches them.
        unsafe { core::slice::from_raw_parts(memory::phys_to_virt(m.start), len) }
    });
    match run::run_guests(&config, archive, clocks.tsc_hz, boot.regions()) {
        Ok(true) => {
            println!("rguest: shutting down");
            power::exit(power::SUCCESS)
        }
        Ok(false) => {
            println!("rguest: shutting down: a guest did not end as expected");
            power::exit(power::FAILURE)
        }
        Err(e) => fail(format_args!("{e}")),
    }
}

/// Prints the memory map summary and the allocator's counts.
#[cfg(target_os = "none")]
fn report_memory(boot: &boot::BootInfo) {
    for region in boot.regions() {
        log::debug!(
            "memory map: {} - {} {:?}",
            region.start,
            region.end,
            region.kind
        );
    }
    let stats = memory::frame_stats();
    let (image_start, image_end) = memory::kernel_image();
    println!(
        "memory: {} MiB usable in {} map entries; frames: {stats}; kernel image {image_start}-{image_end} ({} KiB); heap {} MiB; direct map at {:#x}",
        (stats.usable * host::addr::PAGE_SIZE) >> 20,
        boot.regions().len(),
        (image_end.as_u64() - image_start.as_u64()) >> 10,
        memory::heap::HEAP_SIZE >> 20,
        memory::PHYS_OFFSET,
    );
}

/// Arms the timer `n` times for `ns` and sleeps until each fires: proof
/// that its interrupts arrive. Returns the interrupts seen and the TSC
/// cycles it took.
#[cfg(target_os = "none")]
fn wait_for_timer(n: u64, ns: u64) -> (u64, u64) {
    use x86_64::instructions::interrupts;
    let start_tick = apic::ticks();
    let start = apic::rdtsc();
    for i in 1..=n {
        // Interrupts off between the look at the count and the `hlt`, or
        // the one interrupt armed could come in between and never wake us.
        interrupts::disable();
        apic::arm_timer(ns);
        while apic::ticks() < start_tick + i {
            interrupts::enable_and_hlt();
            interrupts::disable();
        }
        interrupts::enable();
    }
    (apic::ticks() - start_tick, apic::rdtsc() - start)
}

/// Reports a fatal boot error and stops with the failure status.
#[cfg(target_os = "none")]
fn fail(reason: core::fmt::Arguments<'_>) -> ! {
    console::emergency(format_args!("error: {reason}\n"));
    power::exit(power::FAILURE)
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(at) => console::emergency(format_args!(
            "\nPANIC at {}:{}: {}\n",
            at.file(),
            at.line(),
            info.message()
        )),
        None => console::emergency(format_args!("\nPANIC: {}\n", info.message())),
    }
    power::exit(power::FAILURE)
}
