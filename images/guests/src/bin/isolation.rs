//! # `isolation`: guests cannot see each other's memory
//!
//! Run two side by side (`guests=isolation/a:killed,isolation/b:killed`).
//! Each fills all its free memory with a pattern derived from its command
//! line, then, [`ROUNDS`] times, sleeps (so the host runs the other guest)
//! and checks every word is still its own. Then it probes beyond its
//! memory: first a read just past its end in the start-up map (nothing is
//! mapped there, so the fault comes back to its own handler), then a page
//! entry pointing at the first guest-physical frame past its memory,
//! reported to the host, which must kill it ("outside guest memory"): the
//! host never maps a frame that is not the guest's own.
//!
//! Lines, in order: `isolation <arg>: filled <n> pages`,
//! `isolation <arg>: own memory intact after <r> rounds`,
//! `isolation <arg>: beyond its memory faults (...)`,
//! `isolation <arg>: mapping gpa <m> (just past its memory)`. A wrong word
//! prints `isolation <arg>: FAILED` with the address and both values and
//! exits 1; a guest still alive after the last probe prints
//! `isolation <arg>: survived ...` and exits 1.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use guest_abi::pte::{ACCESSED, WRITABLE};
    use guest_rt::paging::{self, FrameAllocator, PAGE_BYTES};
    use guest_rt::traps::TrapFrame;
    use guest_rt::{boot, hypercall, irq, println, probe, time};

    /// How many times each guest sleeps and checks its memory.
    const ROUNDS: u64 = 5;
    /// The shortest sleep: several host ticks, for the other guest. Each
    /// sleep is also at least as long as our own fill took (see `main`).
    const SLEEP_MS: u64 = 20;
    /// Pages kept out of the pattern for the probe's page tables.
    const TABLE_PAGES: u64 = 8;
    /// Where the probe maps the frame past our memory.
    const PROBE_VADDR: u64 = 0x5000_0000;

    /// The exit code for a wrong word, or a probe that went through.
    const FAILED: u64 = 1;
    /// The exit code for a fault nobody expected, or a refused call.
    const BROKEN: u64 = 2;

    pub fn main() -> u64 {
        let name = boot::cmdline();
        if let Err(e) = probe::install(unexpected_fault) {
            println!("isolation {name}: #PF handler refused: {e:?}");
            return BROKEN;
        }
        let memory = boot::memory_bytes();
        let tables_start = boot::params().image_end.next_multiple_of(PAGE_BYTES);
        let region = tables_start + TABLE_PAGES * PAGE_BYTES..memory;
        let seed = seed(name);
        let fill_started = time::now_ns();
        for address in region.clone().step_by(8) {
            // SAFETY: free memory after the image and the table pages,
            // mapped writable by the start-up map; nothing else uses it.
            unsafe {
                (boot::kernel_virtual(address) as *mut u64).write_volatile(word(seed, address))
            };
        }
        let fill_ns = time::now_ns() - fill_started;
        let pages = (region.end - region.start) / PAGE_BYTES;
        println!("isolation {name}: filled {pages} pages with pattern {seed:#x}");
        // The test wants the other guest to have filled its memory before
        // we finish checking ours (they ran side by side), and no message
        // can pass between us to make sure of it. Its fill is the same work
        // as ours, and it never halts while it fills, so while we sleep it
        // has the CPU alone: sleeping at least as long as our fill took,
        // ROUNDS times, gives it at least ROUNDS times the wall time our
        // fill needed (and half the time of our checks besides). It would
        // have to get less than a fifth of the CPU we got, over all that
        // time, to be still filling when we print our last line.
        let sleep_ns = (SLEEP_MS * 1_000_000).max(fill_ns);
        irq::enable();
        for _ in 0..ROUNDS {
            time::sleep_ns(sleep_ns);
            for address in region.clone().step_by(8) {
                // SAFETY: as above; reads only.
                let seen = unsafe { (boot::kernel_virtual(address) as *const u64).read_volatile() };
                let expected = word(seed, address);
                if seen != expected {
                    println!(
                        "isolation {name}: FAILED: gpa {address:#x}: expected {expected:#x}, seen {seen:#x}"
                    );
                    return FAILED;
                }
            }
        }
        println!("isolation {name}: own memory intact after {ROUNDS} rounds");
        // Past our memory the start-up map has nothing: a reflected fault.
        let beyond = boot::kernel_virtual(memory);
        match probe::read(beyond) {
            Ok(value) => {
                println!("isolation {name}: survived a read past its memory: {value:#x}");
                return FAILED;
            }
            Err(fault) => println!(
                "isolation {name}: beyond its memory faults (address {:#x}, error code {:#x})",
                fault.address, fault.error_code
            ),
        }
        // An entry for the first frame past our memory: the host must kill
        // us when we report it.
        println!("isolation {name}: mapping gpa {memory:#x} (just past its memory)");
        let mut frames = FrameAllocator::new(tables_start, region.start);
        let root = boot::params().initial_root;
        // SAFETY: the user half holds nothing of ours.
        let mapped = unsafe {
            paging::map_page(root, PROBE_VADDR, memory, WRITABLE | ACCESSED, &mut frames)
        };
        let seen = probe::read(PROBE_VADDR);
        println!("isolation {name}: survived mapping gpa {memory:#x}: {mapped:?}, read {seen:?}");
        FAILED
    }

    /// A number from the guest's name (FNV-1a), so each guest's pattern
    /// is its own.
    fn seed(name: &str) -> u64 {
        name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// The pattern's word at guest-physical `address`.
    fn word(seed: u64, address: u64) -> u64 {
        seed ^ address.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn unexpected_fault(frame: &mut TrapFrame) {
        println!(
            "isolation {}: unexpected page fault at {:#x} (error code {:#x}) at rip {:#x}",
            boot::cmdline(),
            guest_rt::traps::fault_address(),
            frame.error_code,
            frame.rip
        );
        hypercall::shutdown(BROKEN);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
