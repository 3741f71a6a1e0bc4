//! # `hello`: the first guest
//!
//! What `cargo xtask run` boots by default (`guests=hello`). It shows, in
//! order, that each piece of the guest side works: the console (a greeting
//! with its command line and memory), the virtual timer (three sleeps,
//! each timed with the host's clock), and reflected exceptions (a `#DE` and
//! a `#UD` it causes on purpose, each taken by its own handler, which skips
//! the faulting instruction so the guest carries on). It exits 0 only if
//! all of that happened as it should: 2 if a handler did not run, 3 if a
//! sleep ended early.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};
    use guest_rt::traps::{self, Delivery, SkipInstruction, TrapFrame, vector};
    use guest_rt::{boot, irq, println, time};

    /// `div ecx`: what we divide by zero with.
    const DIV_ECX: [u8; 2] = [0xf7, 0xf1];
    /// `ud2`: the instruction that is defined to be undefined.
    const UD2: [u8; 2] = [0x0f, 0x0b];

    /// The sleeps, in milliseconds.
    const SLEEPS_MS: [u64; 3] = [10, 20, 30];

    pub fn main() -> u64 {
        println!(
            "hello from an rguest guest: command line \"{}\", {} MiB of memory",
            boot::cmdline(),
            boot::memory_bytes() >> 20
        );
        let slept_well = sleeps();
        let handled = exceptions();
        println!("hello: done");
        match (handled, slept_well) {
            (false, _) => 2,
            (true, false) => 3,
            (true, true) => 0,
        }
    }

    /// Sleeps on the virtual timer; false if a sleep ended early.
    fn sleeps() -> bool {
        irq::enable();
        let mut all_long_enough = true;
        for (i, ms) in SLEEPS_MS.into_iter().enumerate() {
            let start = time::now_ns();
            time::sleep_ms(ms);
            let took_us = (time::now_ns() - start) / 1000;
            let early = took_us < ms * 1000;
            all_long_enough &= !early;
            println!(
                "sleep {}: asked {ms} ms, took {took_us} us{}",
                i + 1,
                if early { " (EARLY)" } else { "" }
            );
        }
        println!("timer interrupts taken: {}", time::timer_interrupts());
        all_long_enough
    }

    static DIVIDE_ERRORS: AtomicU64 = AtomicU64::new(0);
    static INVALID_OPCODES: AtomicU64 = AtomicU64::new(0);

    fn on_divide_error(frame: &mut TrapFrame) {
        skip(frame, &DIV_ECX, &DIVIDE_ERRORS, "#DE");
    }

    fn on_invalid_opcode(frame: &mut TrapFrame) {
        skip(frame, &UD2, &INVALID_OPCODES, "#UD");
    }

    /// Counts the trap and resumes after the instruction that caused it,
    /// which must be the one we planted.
    fn skip(frame: &mut TrapFrame, instruction: &[u8], count: &AtomicU64, name: &str) {
        let rip = frame.rip;
        assert!(
            frame.skip_instruction(instruction),
            "{name} at {rip:#x} is not the instruction we planted"
        );
        count.fetch_add(1, Ordering::SeqCst);
        println!(
            "{name} handler: trapped at {rip:#x}, resuming at {:#x}",
            frame.rip
        );
    }

    /// Causes a #DE and a #UD; true if each handler ran exactly once.
    fn exceptions() -> bool {
        let registered =
            traps::set_handler(vector::DIVIDE_ERROR, on_divide_error, Delivery::Exception).and(
                traps::set_handler(
                    vector::INVALID_OPCODE,
                    on_invalid_opcode,
                    Delivery::Exception,
                ),
            );
        if let Err(error) = registered {
            println!("the host refused a trap handler: {error:?}");
            return false;
        }
        divide_by_zero();
        let divide_errors = DIVIDE_ERRORS.load(Ordering::SeqCst);
        println!("#DE: handler ran {divide_errors} time(s), and we carried on");
        undefined_instruction();
        let invalid_opcodes = INVALID_OPCODES.load(Ordering::SeqCst);
        println!("#UD: handler ran {invalid_opcodes} time(s), and we carried on");
        divide_errors == 1 && invalid_opcodes == 1
    }

    fn divide_by_zero() {
        // SAFETY: `div ecx` with ecx = 0 raises #DE, whose handler skips
        // it; registers it might change are declared clobbered.
        unsafe {
            core::arch::asm!(
                ".byte {b0}, {b1}",
                b0 = const DIV_ECX[0],
                b1 = const DIV_ECX[1],
                in("ecx") 0,
                inout("eax") 1 => _,
                inout("edx") 0 => _,
                // Not `nomem`: the trap handler writes memory (its count).
                options(nostack),
            );
        }
    }

    fn undefined_instruction() {
        // SAFETY: ud2 raises #UD, whose handler skips it.
        unsafe {
            core::arch::asm!(
                ".byte {b0}, {b1}",
                b0 = const UD2[0],
                b1 = const UD2[1],
                // Not `nomem`: the trap handler writes memory (its count).
                options(nostack),
            );
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
