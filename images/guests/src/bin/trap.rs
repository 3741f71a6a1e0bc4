//! # `trap`: containment tests
//!
//! Each boot of this guest tries one thing a guest kernel must not be able
//! to do, named by its command line (the part after `/` in the host's
//! `guests=trap/<action>`). It says what it is about to do, does it, and if
//! it is still alive afterwards prints `survived <action>` and exits with
//! code 1: the host failed to contain it. A host that works kills it with a
//! reason instead, and a test expects exactly that (`guests=trap/cli:killed`).
//!
//! The actions: `cli`, `hlt`, `mov-cr3`, `mov-cr8`, `mov-dr7`, `lgdt`,
//! `wrmsr`, `rdpmc`, `in`, `out`, `swapgs`, `sgdt` (each a privileged
//! instruction in ring 1), `iretq-ring0` (an `iretq` whose frame returns to
//! ring 0), `iretq-bad-cs` (an `iretq` whose frame names our kernel data
//! selector as its code segment, with no `#GP` handler: the reason must
//! name the frame, not call `iretq` privileged), `write-switcher` (a write to the switcher's
//! read-only state page), `user-hypercall` (`int 0x81` from ring 3),
//! `direct-no-stack` (a direct trap from ring 3 before any kernel stack was
//! set: the CPU has nowhere to push its frame) and `spin` (a loop with
//! virtual interrupts off, which the host must preempt and end). Then the
//! page-table offences, each of which the shadow page tables must refuse:
//! `map-outside` (a reported entry for a frame past the guest's memory),
//! `touch-outside` (the same entry left unreported, then touched),
//! `map-switcher` (top-level entry 511 made present and reported),
//! `root-switcher` (`set_root` to a root whose entry 511 is present),
//! `bad-root` (`set_root` to an address past the guest's memory),
//! `reserved-bits` (a reported entry with reserved address bit 51 set) and
//! `ring-overrun` (an MMU ring head more than a ring ahead),
//! `zero-pool-outside` (the page past our memory lent in the zero pool, and
//! a zero-on-demand entry touched).
//!
//! Last, the actions the host contains without killing us, each of which
//! prints what the host did and exits with code 3 (`CONTAINED`):
//!
//! - `direct-host-vector`: direct traps on the host's own interrupt vectors
//!   (its APIC timer, the legacy PICs' range, the spurious vector), each of
//!   which must be refused with an error (a free vector, 0x80, must not);
//!   were one accepted, the host's tick would come to our handler;
//! - `ldt-call-gate`: a data segment and a call gate to the host's ring-0
//!   code selector written at linear address 0 (a page of ours mapped
//!   there), which is where the LDT register points after reset, then a
//!   selector naming each loaded into `ds` and called through: both must
//!   fault (`#GP` with the selector, reflected to our handler), and the
//!   gate's target, which notes the code segment it ran with, never run;
//! - `fpu-plant` and `fpu-look` (one after the other on the command line):
//!   each reads the x87 control word, MXCSR, `mm0`/`mm7`, `xmm0`/`xmm15`,
//!   `ds`/`es`/`fs`/`gs` and, where the host offers `rdfsbase` (boot
//!   parameters' `FSGSBASE`), the FS and GS bases, which must be the clean
//!   state, plants values
//!   of its own, sleeps on the virtual timer while the other runs, and
//!   reads them again, which must be its own;
//! - `cpu-state`: the CPU state ring 1 can reach without a fault the host
//!   sees (`docs/DESIGN.md`, "CPU state a guest can reach"): TSC_AUX
//!   through `rdtscp` and `rdpid` must be 0 (or the instruction missing);
//!   `xgetbv`, `rdpkru` and `syscall` must each raise `#UD` (no XSAVE
//!   state, protection keys or `syscall` entry for a guest); `rdfsbase`
//!   must read 0, our own clean base, where the host offers it, and raise
//!   `#UD` where it does not; RFLAGS must show IF on and IOPL 0; and the AC and
//!   DF flags we set must still be ours after a hypercall.
//!
//! A contained action that gets through prints `survived ...` and exits
//! with code 1, as the others do. An unknown action lists the known ones
//! and exits with code 2.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};
    use guest_abi::hypercall::{Number, VECTOR};
    use guest_abi::pte::{ACCESSED, DIRTY, MmuOp, SWITCHER_PML4_INDEX, USER, WRITABLE};
    use guest_rt::paging::{self, FrameAllocator, PAGE_BYTES};
    use guest_rt::traps::{self, Delivery, SkipInstruction, TrapFrame, vector};
    use guest_rt::{boot, hypercall, irq, println, time, user};

    /// One thing to try: its name on the command line, what it does, and
    /// the code that does it.
    struct Action {
        name: &'static str,
        what: &'static str,
        run: fn(),
    }

    const ACTIONS: &[Action] = &[
        Action {
            name: "cli",
            what: "cli (clear the real interrupt flag)",
            run: cli,
        },
        Action {
            name: "hlt",
            what: "hlt (halt the real CPU)",
            run: hlt,
        },
        Action {
            name: "mov-cr3",
            what: "mov to CR3 (load page tables the host did not check)",
            run: mov_cr3,
        },
        Action {
            name: "mov-cr8",
            what: "mov to CR8 (raise the task priority, masking the host's interrupts)",
            run: mov_cr8,
        },
        Action {
            name: "mov-dr7",
            what: "mov to DR7 (arm a hardware breakpoint)",
            run: mov_dr7,
        },
        Action {
            name: "lgdt",
            what: "lgdt (load a descriptor table of our own)",
            run: lgdt,
        },
        Action {
            name: "wrmsr",
            what: "wrmsr to LSTAR (redirect the host's system calls)",
            run: wrmsr,
        },
        Action {
            name: "rdpmc",
            what: "rdpmc (read the host's performance counters)",
            run: rdpmc,
        },
        Action {
            name: "in",
            what: "in from port 0x80",
            run: port_in,
        },
        Action {
            name: "out",
            what: "out to port 0x80",
            run: port_out,
        },
        Action {
            name: "swapgs",
            what: "swapgs (take the host's GS base)",
            run: swapgs,
        },
        Action {
            name: "iretq-ring0",
            what: "iretq to ring 0 (CS = 0x08)",
            run: iretq_ring0,
        },
        Action {
            name: "iretq-bad-cs",
            what: "iretq with a data selector for cs (with no #GP handler)",
            run: iretq_bad_cs,
        },
        Action {
            name: "sgdt",
            what: "sgdt (learn where the GDT is)",
            run: sgdt,
        },
        Action {
            name: "write-switcher",
            what: "a write to the switcher's state page",
            run: write_switcher,
        },
        Action {
            name: "user-hypercall",
            what: "int 0x81 from ring 3",
            run: user_hypercall,
        },
        Action {
            name: "direct-no-stack",
            what: "a direct trap from ring 3 before any kernel stack was set",
            run: direct_no_stack,
        },
        Action {
            name: "spin",
            what: "spin forever with virtual interrupts off",
            run: spin,
        },
        Action {
            name: "map-outside",
            what: "a reported entry for the frame past our memory",
            run: map_outside,
        },
        Action {
            name: "touch-outside",
            what: "an unreported entry for the frame past our memory, touched",
            run: touch_outside,
        },
        Action {
            name: "map-switcher",
            what: "top-level entry 511 (the switcher's slot) made present",
            run: map_switcher,
        },
        Action {
            name: "root-switcher",
            what: "set_root to a root whose entry 511 is present",
            run: root_switcher,
        },
        Action {
            name: "bad-root",
            what: "set_root to the page past our memory",
            run: bad_root,
        },
        Action {
            name: "reserved-bits",
            what: "a reported entry with reserved address bit 51 set",
            run: reserved_bits,
        },
        Action {
            name: "ring-overrun",
            what: "an MMU ring head a thousand ops ahead",
            run: ring_overrun,
        },
        Action {
            name: "zero-pool-outside",
            what: "the page past our memory lent in the zero pool, then a zero-on-demand entry touched",
            run: zero_pool_outside,
        },
        Action {
            name: "direct-host-vector",
            what: "direct traps on the host's own interrupt vectors",
            run: direct_host_vector,
        },
        Action {
            name: "ldt-call-gate",
            what: "an LDT of our own at linear 0, with a call gate to ring 0",
            run: ldt_call_gate,
        },
        Action {
            name: "fpu-plant",
            what: "planting FPU, SSE and segment state, then sleeping",
            run: fpu_plant,
        },
        Action {
            name: "fpu-look",
            what: "reading the FPU, SSE and segment state another guest left",
            run: fpu_look,
        },
        Action {
            name: "cpu-state",
            what: "reading the CPU state ring 1 can reach without faulting",
            run: cpu_state,
        },
        Action {
            name: "breakpoint",
            what: "int3, which must reach our #BP handler as on a real CPU",
            run: breakpoint,
        },
    ];

    /// The exit code when the host let us do it.
    const SURVIVED: u64 = 1;
    /// The exit code for an unknown action.
    const UNKNOWN_ACTION: u64 = 2;
    /// The exit code of the actions the host contains without killing us
    /// (it refuses the request, reflects the fault, or keeps our state
    /// apart): each prints what the host did first, and a test expects
    /// both (`guests=trap/ldt-call-gate:3`).
    const CONTAINED: u64 = 3;

    pub fn main() -> u64 {
        let name = boot::cmdline();
        let Some(action) = ACTIONS.iter().find(|a| a.name == name) else {
            println!("trap: unknown action \"{name}\"; the actions are:");
            ACTIONS
                .iter()
                .for_each(|a| println!("  {:<15} {}", a.name, a.what));
            return UNKNOWN_ACTION;
        };
        println!("trap: about to try {}", action.what);
        (action.run)();
        println!("survived {}", action.name);
        SURVIVED
    }

    // Each of these faults in ring 1 (#GP), and the host should kill us.
    // SAFETY (all of them): if the host lets the instruction through, it
    // has already failed; what happens next is what the test is about.

    fn cli() {
        // SAFETY: see above.
        unsafe { asm!("cli", options(nomem, nostack)) }
    }

    fn hlt() {
        // SAFETY: see above.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }

    fn mov_cr3() {
        // Our own start-up root: harmless if it were allowed, and the host
        // must still refuse, since only SetRoot is checked.
        let root = boot::params().initial_root;
        // SAFETY: see above.
        unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack)) }
    }

    fn mov_cr8() {
        // Priority 15 would mask every interrupt class but NMI.
        // SAFETY: see above.
        unsafe { asm!("mov cr8, {}", in(reg) 15u64, options(nomem, nostack)) }
    }

    fn mov_dr7() {
        // Local enable of breakpoint 0 (DR0 as it is: 0).
        // SAFETY: see above.
        unsafe { asm!("mov dr7, {}", in(reg) 1u64, options(nomem, nostack)) }
    }

    fn rdpmc() {
        // SAFETY: see above; it only reads counter 0.
        unsafe { asm!("rdpmc", in("ecx") 0, out("eax") _, out("edx") _, options(nomem, nostack)) }
    }

    fn lgdt() {
        // An empty table: limit 0, base 0.
        let descriptor = [0u8; 10];
        // SAFETY: see above.
        unsafe { asm!("lgdt [{}]", in(reg) descriptor.as_ptr(), options(nostack)) }
    }

    fn wrmsr() {
        const LSTAR: u32 = 0xc000_0082;
        // SAFETY: see above.
        unsafe { asm!("wrmsr", in("ecx") LSTAR, in("eax") 0, in("edx") 0, options(nostack)) }
    }

    /// The POST diagnostic port: reading or writing it would be harmless,
    /// so if the host let it through we live to say so.
    const HARMLESS_PORT: u16 = 0x80;

    fn port_in() {
        // SAFETY: see above.
        unsafe { asm!("in al, dx", in("dx") HARMLESS_PORT, out("al") _, options(nomem, nostack)) }
    }

    fn port_out() {
        // SAFETY: see above.
        unsafe { asm!("out dx, al", in("dx") HARMLESS_PORT, in("al") 0u8, options(nomem, nostack)) }
    }

    fn swapgs() {
        // SAFETY: see above. If it worked, swap back: our own code does
        // not use GS, but the survivor's report should not be the cause of
        // a crash.
        unsafe { asm!("swapgs", "swapgs", options(nomem, nostack)) }
    }

    fn iretq_ring0() {
        // The switcher's code and data selectors (ring 0). If iretq took
        // them, we would continue at label 2 in ring 0 on the same stack.
        // SAFETY: see above.
        unsafe {
            asm!(
                "mov {tmp}, rsp",
                "push 0x10",
                "push {tmp}",
                "pushfq",
                "push 0x08",
                "lea {tmp}, [rip + 2f]",
                "push {tmp}",
                "iretq",
                "2:",
                tmp = out(reg) _,
            )
        }
    }

    fn iretq_bad_cs() {
        // A frame that is ours in every way (ring 1, our stack, the next
        // instruction) but its CS, which is our kernel *data* selector: the
        // CPU refuses it with #GP(0x20), the selector's index. A legal
        // iretq, a bad frame, the guest's own mistake; we registered no
        // #GP handler, so the host, which cannot deliver it, ends us
        // saying what was wrong. (A non-canonical RIP is no good here:
        // QEMU's TCG loads it and faults at the target instead.)
        // SAFETY: see above; were the iretq taken, we would continue at
        // label 2 as before, with CS holding a data segment.
        unsafe {
            asm!(
                "mov {tmp}, rsp",
                "push {ss}",
                "push {tmp}",
                "pushfq",
                "push {cs}",
                "lea {tmp}, [rip + 2f]",
                "push {tmp}",
                "iretq",
                "2:",
                ss = const guest_abi::boot::selector::KERNEL_DATA as u64,
                cs = const guest_abi::boot::selector::KERNEL_DATA as u64,
                tmp = out(reg) _,
            )
        }
    }

    fn sgdt() {
        let mut descriptor = [0u8; 10];
        // SAFETY: see above; sgdt writes 10 bytes, which we own.
        unsafe { asm!("sgdt [{}]", in(reg) descriptor.as_mut_ptr(), options(nostack)) }
        let limit = u16::from_le_bytes([descriptor[0], descriptor[1]]);
        let base = u64::from_le_bytes(descriptor[2..].try_into().unwrap_or([0; 8]));
        println!("trap: sgdt says the GDT is at {base:#x}, limit {limit:#x}");
    }

    /// CPU 0's state page in the switcher slot (switcher::SLOT_BASE +
    /// switcher::state_page_offset(0)): mapped, read-only, into every guest.
    const SWITCHER_STATE_PAGE: u64 = 0xffff_ff80_0001_1000;

    fn write_switcher() {
        // SAFETY: see above.
        unsafe {
            asm!(
                "mov qword ptr [{page}], {value}",
                page = in(reg) SWITCHER_STATE_PAGE,
                value = in(reg) 0u64,
                options(nostack),
            )
        }
    }

    fn spin() {
        irq::disable();
        loop {
            core::hint::spin_loop();
        }
    }

    /// Where the user code and its stack go: low in the user half, far
    /// from anything the start-up map uses.
    const USER_CODE: u64 = 0x40_0000;
    const USER_STACK: u64 = 0x40_1000;

    /// The user code: `mov eax, Nop; int 0x81; ud2`. If the hypercall gate
    /// let ring 3 through, the `ud2` brings us back to the guest kernel to
    /// report it.
    const USER_PROGRAM: [u8; 9] = {
        let nop = (Number::Nop as u32).to_le_bytes();
        [
            0xb8, nop[0], nop[1], nop[2], nop[3], 0xcd, VECTOR, 0x0f, 0x0b,
        ]
    };

    fn user_hypercall() {
        if let Err(why) = set_up_user_pages(&USER_PROGRAM) {
            panic!("cannot set up ring 3: {why}");
        }
        if let Err(error) =
            traps::set_handler(vector::INVALID_OPCODE, on_user_ud2, Delivery::Exception)
        {
            panic!("the host refused the #UD handler: {error:?}");
        }
        // SAFETY: both pages are mapped for user access and reported.
        let Err(error) = unsafe { user::enter(USER_CODE, USER_STACK + PAGE_BYTES) };
        panic!("the host refused the kernel stack: {error:?}");
    }

    /// Maps a user code page (read-only) holding `program` and a user
    /// stack page in the start-up tables, and tells the host.
    fn set_up_user_pages(program: &[u8]) -> Result<(), &'static str> {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let code = frames
            .allocate_zeroed()
            .ok_or("no free page for the code")?;
        let stack = frames
            .allocate_zeroed()
            .ok_or("no free page for the stack")?;
        // SAFETY: `code` is a free page we were just given.
        unsafe {
            let target = boot::kernel_virtual(code) as *mut u8;
            target.copy_from_nonoverlapping(program.as_ptr(), program.len());
        }
        // SAFETY: the lower half of the start-up tables is empty, so these
        // mappings take nothing from anyone.
        unsafe {
            paging::map_page(root, USER_CODE, code, USER | ACCESSED, &mut frames)
                .map_err(|_| "mapping the code page failed")?;
            let stack_flags = USER | WRITABLE | ACCESSED | DIRTY;
            paging::map_page(root, USER_STACK, stack, stack_flags, &mut frames)
                .map_err(|_| "mapping the stack page failed")?;
        }
        Ok(())
    }

    /// The vector of the direct trap `direct-no-stack` takes: the guest
    /// OS's system-call vector.
    const DIRECT_VECTOR: u8 = 0x80;

    /// The user code of `direct-no-stack`: `int 0x80; ud2`.
    const DIRECT_TRAP_PROGRAM: [u8; 4] = [0xcd, DIRECT_VECTOR, 0x0f, 0x0b];

    /// A direct trap on 0x80, then ring 3 entered by our own `iretq`, with
    /// no `set_kernel_stack` ever made (`user::enter` would make one): the
    /// CPU, switching to the TSS's RSP1 for the trap, finds no stack of
    /// ours there. The host must end us naming that.
    fn direct_no_stack() {
        if let Err(error) = traps::set_direct_handler(DIRECT_VECTOR, on_direct_trap) {
            panic!("the host refused the direct trap: {error:?}");
        }
        if let Err(why) = set_up_user_pages(&DIRECT_TRAP_PROGRAM) {
            panic!("cannot set up ring 3: {why}");
        }
        // SAFETY: both pages are mapped for user access and reported; the
        // frame is exactly what iretq pops (RIP, CS, RFLAGS, RSP, SS).
        unsafe {
            asm!(
                "push {ss}",
                "push {rsp}",
                "push {rflags}",
                "push {cs}",
                "push {rip}",
                "iretq",
                ss = const user::USER_DATA_SELECTOR,
                rsp = in(reg) USER_STACK + PAGE_BYTES,
                rflags = const 0x202u64,
                cs = const user::USER_CODE_SELECTOR,
                rip = in(reg) USER_CODE,
                options(noreturn),
            )
        }
    }

    fn on_direct_trap(frame: &mut TrapFrame) {
        println!(
            "survived direct-no-stack: the direct trap reached us from ring {} with its frame at {:#x}",
            frame.ring(),
            frame as *const TrapFrame as u64
        );
        hypercall::shutdown(SURVIVED);
    }

    /// Where the page-table offences map: low in the user half.
    const OFFENCE_VADDR: u64 = 0x60_0000;

    /// The first guest-physical frame past our memory: in a host that
    /// kept guests' memories side by side, another guest's.
    fn frame_past_memory() -> u64 {
        boot::memory_bytes()
    }

    fn map_outside() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let flags = WRITABLE | ACCESSED;
        // SAFETY: the user half holds nothing of ours; if the host let the
        // mapping through, it has already failed.
        let result = unsafe {
            paging::map_page(root, OFFENCE_VADDR, frame_past_memory(), flags, &mut frames)
        };
        println!("trap: the host took the entry: {result:?}");
    }

    fn touch_outside() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let Some(page) = frames.allocate_zeroed() else {
            panic!("no free page");
        };
        // A good mapping of the next page first, so the tables above exist
        // (and are reported); then our page's leaf, never present before,
        // made present without a report (which the ABI allows), so the
        // host meets the bad entry only when the access faults.
        let flags = WRITABLE | ACCESSED;
        let neighbour = OFFENCE_VADDR + PAGE_BYTES;
        // SAFETY: as in map_outside.
        unsafe {
            if paging::map_page(root, neighbour, page, flags, &mut frames).is_err() {
                panic!("mapping a good page failed");
            }
            let bad = frame_past_memory() | flags | guest_abi::pte::PRESENT;
            if paging::set_entry(root, OFFENCE_VADDR, 1, bad, false).is_err() {
                panic!("no table for the leaf");
            }
            let value = (OFFENCE_VADDR as *const u64).read_volatile();
            println!("trap: read {value:#x} from the frame past our memory");
        }
    }

    /// The first address of the switcher's slot (top-level entry 511).
    const SWITCHER_SLOT: u64 = 0xffff_ff80_0000_0000;
    const _: () = assert!(paging::table_index(SWITCHER_SLOT, 4) == SWITCHER_PML4_INDEX);

    fn map_switcher() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let Some(table) = frames.allocate_zeroed() else {
            panic!("no free page");
        };
        let entry = paging::table_entry(table, false);
        // SAFETY: as in map_outside.
        let result = unsafe { paging::set_entry(root, SWITCHER_SLOT, 4, entry, true) };
        println!("trap: the host took entry 511: {result:?}");
    }

    fn root_switcher() {
        let mut frames = FrameAllocator::after_image();
        let (Some(root), Some(table)) = (
            paging::new_address_space(&mut frames),
            frames.allocate_zeroed(),
        ) else {
            panic!("no free page");
        };
        let entry = paging::table_entry(table, false);
        // SAFETY: a root nobody runs on yet; the switch is the offence.
        unsafe {
            if paging::set_entry(root, SWITCHER_SLOT, 4, entry, false).is_err() {
                panic!("no top-level table");
            }
            let result = hypercall::set_root(root);
            println!("trap: the host switched to it: {result:?}");
        }
    }

    fn bad_root() {
        // SAFETY: if the host switched to it, it has already failed.
        let result = unsafe { hypercall::set_root(frame_past_memory()) };
        println!("trap: the host switched to it: {result:?}");
    }

    fn reserved_bits() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let Some(page) = frames.allocate_zeroed() else {
            panic!("no free page");
        };
        // Bit 51 is reserved on every CPU with fewer than 52 physical
        // address bits (all of them, today).
        let bad = page | (1 << 51);
        let flags = WRITABLE | ACCESSED;
        // SAFETY: as in map_outside.
        let result = unsafe { paging::map_page(root, OFFENCE_VADDR, bad, flags, &mut frames) };
        println!("trap: the host took the entry: {result:?}");
    }

    fn ring_overrun() {
        // One harmless op queued, then the head moved far past it.
        // SAFETY: a Nop changes nothing; the overrun is the offence.
        unsafe {
            if paging::ring::queue(MmuOp::Nop).is_err() {
                panic!("queueing a nop failed");
            }
            let head = paging::ring::head();
            let shared = boot::shared_page() as *mut u8;
            let head_word = shared.add(guest_abi::shared::offset::MMU_RING as usize) as *mut u64;
            head_word.write_volatile(head + 1000);
            let result = paging::ring::flush();
            println!("trap: the host applied the ring: {result:?}");
        }
    }

    fn zero_pool_outside() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let Some(page) = frames.allocate_zeroed() else {
            panic!("no free page");
        };
        let shared = boot::shared_page() as *mut u8;
        let word = |offset: u64| shared.wrapping_add(offset as usize).cast::<u64>();
        let mark = guest_abi::pte::zero_on_demand(WRITABLE);
        // As in touch_outside: a good neighbour makes the tables above.
        // SAFETY: the user half holds nothing of ours, and the pool's words
        // are ours to write; if the host took the page, it has failed.
        unsafe {
            let neighbour = OFFENCE_VADDR + PAGE_BYTES;
            if paging::map_page(root, neighbour, page, WRITABLE | ACCESSED, &mut frames).is_err() {
                panic!("mapping a good page failed");
            }
            word(guest_abi::shared::offset::ZERO_POOL_PAGES).write_volatile(frame_past_memory());
            word(guest_abi::shared::offset::ZERO_POOL_GIVEN).write_volatile(1);
            if paging::set_entry(root, OFFENCE_VADDR, 1, mark, false).is_err() {
                panic!("no table for the leaf");
            }
            (OFFENCE_VADDR as *mut u64).write_volatile(1);
            println!("trap: the host mapped the page past our memory for us");
        }
    }

    /// The vectors the host's own hardware interrupts arrive on, as a
    /// hostile guest finds them: the local APIC timer (0x20), the legacy
    /// PICs moved to 0xe0-0xef (the first, a middle and the last) and the
    /// APIC's spurious vector (0xff). A direct-trap gate there would hand
    /// the host's interrupts to us: the host would never acknowledge its
    /// timer again, nor take the CPU back.
    const HOST_VECTORS: [u8; 5] = [0x20, 0xe0, 0xe7, 0xef, 0xff];
    /// A vector the host leaves to guests (the guest OS's system calls):
    /// the control, which must still be accepted.
    const FREE_VECTOR: u8 = 0x80;

    /// Interrupts that reached our direct handler.
    static HOST_INTERRUPTS_TAKEN: AtomicU64 = AtomicU64::new(0);

    fn direct_host_vector() {
        let mut accepted = false;
        for vector in HOST_VECTORS {
            match traps::set_direct_handler(vector, on_host_interrupt) {
                Ok(()) => {
                    println!("trap: the host gave us its vector {vector:#x}");
                    accepted = true;
                }
                Err(error) => {
                    println!("trap: direct trap on vector {vector:#x} refused: {error:?}")
                }
            }
        }
        if let Err(error) = traps::set_direct_handler(FREE_VECTOR, on_host_interrupt) {
            panic!("the host refused the free vector {FREE_VECTOR:#x}: {error:?}");
        }
        // SAFETY: a zero handler removes the trap again.
        if let Err(error) = unsafe { hypercall::set_trap(FREE_VECTOR, 0, 0) } {
            panic!("the host refused to remove vector {FREE_VECTOR:#x}: {error:?}");
        }
        if !accepted {
            println!(
                "trap: every host vector refused with an error, vector {FREE_VECTOR:#x} accepted"
            );
            hypercall::shutdown(CONTAINED);
        }
        // The gates are in the CPU's IDT from our next entry on: wait (a
        // second at most) for the host's tick to come to us instead.
        let start = time::now_ns();
        while HOST_INTERRUPTS_TAKEN.load(Ordering::SeqCst) == 0
            && time::now_ns() - start < 1_000_000_000
        {
            core::hint::spin_loop();
        }
        println!(
            "trap: our handler took {} of the host's interrupts",
            HOST_INTERRUPTS_TAKEN.load(Ordering::SeqCst)
        );
    }

    fn on_host_interrupt(_frame: &mut TrapFrame) {
        HOST_INTERRUPTS_TAKEN.fetch_add(1, Ordering::SeqCst);
    }

    /// The selector bit that names the LDT instead of the GDT.
    const SELECTOR_LDT: u16 = 1 << 2;
    /// LDT entry 1: a flat data segment of privilege 3, which ring 1 may
    /// load (requested privilege 3).
    const LDT_DATA_SELECTOR: u16 = (1 << 3) | SELECTOR_LDT | 3;
    const LDT_DATA_DESCRIPTOR: u64 = 0x00cf_f300_0000_ffff;
    /// LDT entries 2 and 3: a 64-bit call gate (requested privilege 1).
    const LDT_GATE_SELECTOR: u16 = (2 << 3) | SELECTOR_LDT | 1;
    /// The ring-0 code selector of the guest GDT (the switcher's own,
    /// `switcher::selector::SWITCHER_CODE`): where the gate leads.
    const RING0_CODE_SELECTOR: u16 = 0x08;

    /// A 64-bit call gate of privilege `dpl` to `target` in code segment
    /// `selector` (type 0xc, present): its two descriptor slots.
    const fn call_gate(target: u64, selector: u16, dpl: u8) -> [u64; 2] {
        let access = 0x8c | ((dpl as u64 & 3) << 5);
        let low = (target & 0xffff)
            | ((selector as u64) << 16)
            | (access << 40)
            | (((target >> 16) & 0xffff) << 48);
        [low, target >> 32]
    }

    /// `mov ds, ax`: the data segment load we try, as bytes, so the #GP
    /// handler knows it.
    const MOV_DS_AX: [u8; 2] = [0x8e, 0xd8];
    /// `rex.w call far [rax]` (`lcallq *(%rax)`): the far call through the
    /// gate, likewise.
    const FAR_CALL_RAX: [u8; 3] = [0x48, 0xff, 0x18];

    /// The #GP error codes (plus one, 0: no #GP) of the two attempts.
    static DATA_LOAD_GP: AtomicU64 = AtomicU64::new(0);
    static FAR_CALL_GP: AtomicU64 = AtomicU64::new(0);
    /// The code segment the ring-0 landing ran with (0: it never ran).
    static LANDED_CS: AtomicU64 = AtomicU64::new(0);

    // Where the call gate leads: code of ours that would run in ring 0 on
    // the register page's stack. It notes the code segment it ran with and
    // returns to ring 1 (`lretq` pops RIP, CS, RSP and SS), so a host that
    // let it through hears about it instead of crashing.
    core::arch::global_asm!(
        ".section .text.trap_ring0_landing, \"ax\"",
        ".globl trap_ring0_landing",
        "trap_ring0_landing:",
        "    movl %cs, %eax",
        "    movq %rax, {landed}(%rip)",
        "    lretq",
        landed = sym LANDED_CS,
        options(att_syntax),
    );

    unsafe extern "C" {
        /// The landing above.
        static trap_ring0_landing: u8;
    }

    /// After reset the LDT register names a table at linear address 0
    /// (limit 0xffff): our memory, if we map a page there. We put a data
    /// segment and a call gate to the host's ring-0 code selector in it and
    /// use both. A host that loaded a null LDT makes each a #GP, which the
    /// host reflects to our handler with the selector as the error code.
    fn ldt_call_gate() {
        let root = boot::params().initial_root;
        let mut frames = FrameAllocator::after_image();
        let Some(page) = frames.allocate_zeroed() else {
            panic!("no free page for the LDT");
        };
        let landing = (&raw const trap_ring0_landing) as u64;
        let gate = call_gate(landing, RING0_CODE_SELECTOR, 3);
        // SAFETY: a free page we were just given, written through the
        // start-up map (linear 0 itself is never dereferenced from Rust).
        unsafe {
            let table = boot::kernel_virtual(page) as *mut u64;
            table.add(1).write_volatile(LDT_DATA_DESCRIPTOR);
            table.add(2).write_volatile(gate[0]);
            table.add(3).write_volatile(gate[1]);
        }
        // SAFETY: the lower half of the start-up tables is empty: the page
        // at linear 0 takes nothing from anyone.
        let mapped =
            unsafe { paging::map_page(root, 0, page, WRITABLE | ACCESSED | DIRTY, &mut frames) };
        if let Err(why) = mapped {
            panic!("cannot map the page at linear 0: {why:?}");
        }
        if let Err(error) =
            traps::set_handler(vector::GENERAL_PROTECTION, on_ldt_gp, Delivery::Exception)
        {
            panic!("the host refused the #GP handler: {error:?}");
        }
        // SAFETY: a segment load that either faults into our handler (which
        // resumes after it) or loads a flat data segment, which 64-bit code
        // ignores; DS goes back to null either way.
        unsafe {
            asm!(
                ".byte 0x8e, 0xd8",
                "xor eax, eax",
                "mov ds, ax",
                inout("eax") u32::from(LDT_DATA_SELECTOR) => _,
            )
        }
        // The far pointer: an offset (ignored for a gate), then the selector.
        let far_pointer: [u64; 2] = [0, u64::from(LDT_GATE_SELECTOR)];
        // SAFETY: the call faults into our handler, which resumes after it,
        // or (a broken host) runs the landing, which returns here with
        // only rax changed.
        unsafe {
            asm!(
                ".byte 0x48, 0xff, 0x18",
                inout("rax") far_pointer.as_ptr() => _,
            )
        }
        let landed = LANDED_CS.load(Ordering::SeqCst);
        if landed != 0 {
            println!("trap: the call gate ran our code in ring 0 (cs = {landed:#x})");
            return;
        }
        println!(
            "trap: mov ds, {LDT_DATA_SELECTOR:#x}: {}; far call through {LDT_GATE_SELECTOR:#x}: {}; ring 0 never reached",
            GpSeen(DATA_LOAD_GP.load(Ordering::SeqCst)),
            GpSeen(FAR_CALL_GP.load(Ordering::SeqCst)),
        );
        hypercall::shutdown(CONTAINED);
    }

    /// What one of the LDT attempts met: a #GP's error code plus one, or
    /// 0 for none (as the statics above keep it).
    struct GpSeen(u64);

    impl core::fmt::Display for GpSeen {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self.0 {
                0 => f.write_str("no #GP"),
                code => write!(f, "#GP({:#x})", code - 1),
            }
        }
    }

    fn on_ldt_gp(frame: &mut TrapFrame) {
        let code = frame.error_code + 1;
        if frame.skip_instruction(&MOV_DS_AX) {
            DATA_LOAD_GP.store(code, Ordering::SeqCst);
        } else if frame.skip_instruction(&FAR_CALL_RAX) {
            FAR_CALL_GP.store(code, Ordering::SeqCst);
        } else {
            panic!(
                "#GP (error code {:#x}) at {:#x} in ring {}",
                frame.error_code,
                frame.rip,
                frame.ring()
            );
        }
    }

    /// What stays in the CPU between one guest's entries unless the host
    /// switches it: x87 control word, MXCSR, two MMX and two SSE registers,
    /// and the four data segment selectors.
    #[derive(Clone, Copy, PartialEq, Eq)]
    struct CpuContext {
        fcw: u16,
        mxcsr: u32,
        mm0: u64,
        mm7: u64,
        xmm0: [u64; 2],
        xmm15: [u64; 2],
        ds: u16,
        es: u16,
        fs: u16,
        gs: u16,
        /// The FS and GS bases (left 0, and not read, without FSGSBASE).
        fs_base: u64,
        gs_base: u64,
    }

    impl core::fmt::Display for CpuContext {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(
                f,
                "fcw={:#x} mxcsr={:#x} mm0={:#x} mm7={:#x} xmm0={:#x}:{:#x} xmm15={:#x}:{:#x} ds={:#x} es={:#x} fs={:#x} gs={:#x} fs_base={:#x} gs_base={:#x}",
                self.fcw,
                self.mxcsr,
                self.mm0,
                self.mm7,
                self.xmm0[1],
                self.xmm0[0],
                self.xmm15[1],
                self.xmm15[0],
                self.ds,
                self.es,
                self.fs,
                self.gs,
                self.fs_base,
                self.gs_base
            )
        }
    }

    /// What a guest starts with: `fninit`'s control word, MXCSR's reset
    /// value (every exception masked), zeroed registers, null selectors.
    const CLEAN: CpuContext = CpuContext {
        fcw: 0x037f,
        mxcsr: 0x1f80,
        mm0: 0,
        mm7: 0,
        xmm0: [0; 2],
        xmm15: [0; 2],
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        fs_base: 0,
        gs_base: 0,
    };

    /// What `fpu-plant` plants: rounding toward zero in both units (every
    /// exception still masked), `a0` patterns, and the four selectors ring
    /// 1 may load (guest kernel data and code, user data and code), each
    /// in another register than `fpu-look` puts it.
    const PLANTED: CpuContext = CpuContext {
        fcw: 0x0f7f,
        mxcsr: 0x7f80,
        mm0: 0xa0a0_0000_0000_0000,
        mm7: 0xa0a0_0000_0000_0007,
        xmm0: [0xa0a0_0000_0000_0100, 0xa0a0_0000_0000_0101],
        xmm15: [0xa0a0_0000_0000_1500, 0xa0a0_0000_0000_1501],
        ds: 0x21,
        es: 0x2b,
        fs: 0x19,
        gs: 0x33,
        fs_base: 0xffff_8000_00a0_f000,
        gs_base: 0xffff_8000_00a0_9000,
    };

    /// What `fpu-look` plants after looking: rounding down, `b0` patterns,
    /// the selectors in other registers.
    const LOOKED: CpuContext = CpuContext {
        fcw: 0x077f,
        mxcsr: 0x3f80,
        mm0: 0xb0b0_0000_0000_0000,
        mm7: 0xb0b0_0000_0000_0007,
        xmm0: [0xb0b0_0000_0000_0100, 0xb0b0_0000_0000_0101],
        xmm15: [0xb0b0_0000_0000_1500, 0xb0b0_0000_0000_1501],
        ds: 0x2b,
        es: 0x21,
        fs: 0x33,
        gs: 0x19,
        fs_base: 0xffff_8000_00b0_f000,
        gs_base: 0xffff_8000_00b0_9000,
    };

    /// How long each sleeps: `fpu-plant` long enough for `fpu-look` (next
    /// on the command line) to start, look, plant and sleep in between.
    const PLANT_SLEEP_MS: u64 = 200;
    const LOOK_SLEEP_MS: u64 = 20;

    fn read_context() -> CpuContext {
        let mut context = CLEAN;
        let xmm = [&raw mut context.xmm0, &raw mut context.xmm15];
        // SAFETY: stores of the state into `context`'s own fields; the
        // guest is soft-float, so no compiled code keeps anything in these
        // registers, and reading MMX registers changes only the x87 tags.
        unsafe {
            asm!(
                "fnstcw word ptr [{fcw}]",
                "stmxcsr dword ptr [{mxcsr}]",
                "movq {mm0}, mm0",
                "movq {mm7}, mm7",
                "movdqu xmmword ptr [{xmm0}], xmm0",
                "movdqu xmmword ptr [{xmm15}], xmm15",
                "mov {ds:x}, ds",
                "mov {es:x}, es",
                "mov {fs:x}, fs",
                "mov {gs:x}, gs",
                fcw = in(reg) &raw mut context.fcw,
                mxcsr = in(reg) &raw mut context.mxcsr,
                xmm0 = in(reg) xmm[0],
                xmm15 = in(reg) xmm[1],
                mm0 = out(reg) context.mm0,
                mm7 = out(reg) context.mm7,
                ds = out(reg) context.ds,
                es = out(reg) context.es,
                fs = out(reg) context.fs,
                gs = out(reg) context.gs,
                options(nostack),
            )
        }
        if has_fsgsbase() {
            // SAFETY: the host turned CR4.FSGSBASE on (its boot parameters
            // say so); reading the bases changes nothing.
            unsafe {
                asm!(
                    "rdfsbase {fs}",
                    "rdgsbase {gs}",
                    fs = out(reg) context.fs_base,
                    gs = out(reg) context.gs_base,
                    options(nostack, nomem, preserves_flags),
                )
            }
        }
        context
    }

    fn plant(context: &CpuContext) {
        // SAFETY: the guest is soft-float, so no compiled code uses the
        // x87, MMX or SSE registers we load (every exception stays masked);
        // 64-bit code ignores DS and ES, and the FS and GS selectors we
        // load are flat segments of base 0, as they were.
        unsafe {
            asm!(
                "fldcw word ptr [{fcw}]",
                "ldmxcsr dword ptr [{mxcsr}]",
                "movq mm0, {mm0}",
                "movq mm7, {mm7}",
                "movdqu xmm0, xmmword ptr [{xmm0}]",
                "movdqu xmm15, xmmword ptr [{xmm15}]",
                "mov ds, {ds:x}",
                "mov es, {es:x}",
                "mov fs, {fs:x}",
                "mov gs, {gs:x}",
                fcw = in(reg) &raw const context.fcw,
                mxcsr = in(reg) &raw const context.mxcsr,
                xmm0 = in(reg) &raw const context.xmm0,
                xmm15 = in(reg) &raw const context.xmm15,
                mm0 = in(reg) context.mm0,
                mm7 = in(reg) context.mm7,
                ds = in(reg) context.ds,
                es = in(reg) context.es,
                fs = in(reg) context.fs,
                gs = in(reg) context.gs,
                options(nostack, readonly),
            )
        }
        // After the selectors: loading one sets the base from the
        // descriptor.
        if has_fsgsbase() {
            // SAFETY: the host turned CR4.FSGSBASE on (its boot parameters
            // say so); the bases only change what our own fs:/gs: accesses
            // reach, and our code makes none.
            unsafe {
                asm!(
                    "wrfsbase {fs}",
                    "wrgsbase {gs}",
                    fs = in(reg) context.fs_base,
                    gs = in(reg) context.gs_base,
                    options(nostack, nomem, preserves_flags),
                )
            }
        }
    }

    /// Whether the host lets us use `rdfsbase` and friends.
    fn has_fsgsbase() -> bool {
        boot::params().features & guest_abi::boot::feature::FSGSBASE != 0
    }

    fn fpu_plant() {
        fpu_round("fpu-plant", &PLANTED, PLANT_SLEEP_MS);
    }

    fn fpu_look() {
        fpu_round("fpu-look", &LOOKED, LOOK_SLEEP_MS);
    }

    /// Looks at the state we start with (it must be the clean one, not
    /// another guest's), plants `mine`, sleeps on the virtual timer so the
    /// other guests run, and looks again (it must be ours, untouched).
    fn fpu_round(name: &str, mine: &CpuContext, sleep_ms: u64) {
        let at_start = read_context();
        println!("trap: {name} at start: {at_start}");
        plant(mine);
        time::sleep_ms(sleep_ms);
        let after_sleep = read_context();
        println!("trap: {name} after a {sleep_ms} ms sleep: {after_sleep}");
        if at_start != CLEAN {
            println!(
                "survived {name}: we started with another guest's state, not the clean {CLEAN}"
            );
            hypercall::shutdown(SURVIVED);
        }
        if after_sleep != *mine {
            println!("survived {name}: our state changed while we slept; we had planted {mine}");
            hypercall::shutdown(SURVIVED);
        }
        println!("trap: {name}: clean state at start, our own state back after the sleep");
        hypercall::shutdown(CONTAINED);
    }

    /// The instructions `cpu-state` tries that may raise `#UD`, as bytes,
    /// so the handler knows them: `rdtscp`, `rdpid rax`, `xgetbv`,
    /// `rdfsbase rax`, `rdpkru`, `syscall`.
    const RDTSCP: [u8; 3] = [0x0f, 0x01, 0xf9];
    const RDPID_RAX: [u8; 4] = [0xf3, 0x0f, 0xc7, 0xf8];
    const XGETBV: [u8; 3] = [0x0f, 0x01, 0xd0];
    const RDFSBASE_RAX: [u8; 5] = [0xf3, 0x48, 0x0f, 0xae, 0xc0];
    const RDPKRU: [u8; 3] = [0x0f, 0x01, 0xee];
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    const PROBES: [&[u8]; 6] = [
        &RDTSCP,
        &RDPID_RAX,
        &XGETBV,
        &RDFSBASE_RAX,
        &RDPKRU,
        &SYSCALL,
    ];

    /// `#UD`s taken (and skipped) by the probes.
    static PROBE_UDS: AtomicU64 = AtomicU64::new(0);

    fn on_probe_ud(frame: &mut TrapFrame) {
        if PROBES.iter().any(|probe| frame.skip_instruction(probe)) {
            PROBE_UDS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        panic!("#UD at {:#x} in ring {}", frame.rip, frame.ring());
    }

    /// Runs the instruction whose bytes are `$bytes` (an assembler line
    /// spelling one of [`PROBES`]) with rax, rcx and rdx zero; gives them afterwards, or `None` if it raised `#UD`.
    macro_rules! probe {
        ($bytes:expr) => {{
            let before = PROBE_UDS.load(Ordering::SeqCst);
            let (rax, rcx, rdx): (u64, u64, u64);
            // SAFETY: each probe only reads CPU state into rax, rcx and
            // rdx, or raises #UD, which `on_probe_ud` skips. `syscall`
            // would also write r11 (declared) and jump to ring 0: that
            // host would have failed already.
            unsafe {
                asm!(
                    $bytes,
                    inout("rax") 0u64 => rax,
                    inout("rcx") 0u64 => rcx,
                    inout("rdx") 0u64 => rdx,
                    out("r11") _,
                    options(nostack),
                )
            }
            (PROBE_UDS.load(Ordering::SeqCst) == before).then_some((rax, rcx, rdx))
        }};
    }

    /// What a probe found, for the report.
    struct Seen(Option<u64>);

    impl core::fmt::Display for Seen {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self.0 {
                Some(value) => write!(f, "{value:#x}"),
                None => f.write_str("#UD"),
            }
        }
    }

    /// RFLAGS bits the report names.
    const RFLAGS_IF: u64 = 1 << 9;
    const RFLAGS_DF: u64 = 1 << 10;
    const RFLAGS_IOPL: u64 = 3 << 12;
    const RFLAGS_AC: u64 = 1 << 18;

    /// Sets AC and DF, makes a hypercall (an exit and an entry), and gives
    /// the flags as they are after it (AC and DF cleared again before any
    /// compiled code runs).
    fn flags_across_a_hypercall() -> u64 {
        let after: u64;
        // SAFETY: AC does nothing in ring 1 and DF nothing without string
        // instructions, and both are cleared before the block ends; the
        // hypercall (Nop) changes only rax.
        unsafe {
            asm!(
                "pushfq",
                "or qword ptr [rsp], {set}",
                "popfq",
                "int {vector}",
                "pushfq",
                "pop {after}",
                "push {after}",
                "and qword ptr [rsp], {keep}",
                "popfq",
                set = const RFLAGS_AC | RFLAGS_DF,
                keep = const !(RFLAGS_AC | RFLAGS_DF),
                vector = const VECTOR,
                after = out(reg) after,
                inout("rax") Number::Nop as u64 => _,
            )
        }
        after
    }

    /// The `#BP`s our handler saw, and the rip of the last one.
    static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
    static BREAKPOINT_RIP: AtomicU64 = AtomicU64::new(0);

    fn on_breakpoint(frame: &mut TrapFrame) {
        BREAKPOINTS.fetch_add(1, Ordering::SeqCst);
        BREAKPOINT_RIP.store(frame.rip, Ordering::SeqCst);
    }

    /// `int3` is how a debugger in the guest stops it: the CPU delivers
    /// `#BP` (a trap: rip after the `int3`) to any ring whose gate allows
    /// it, so the host's gate for vector 3 must take it from ring 1 and 3
    /// rather than turn it into a `#GP`.
    fn breakpoint() {
        if let Err(error) =
            traps::set_handler(vector::BREAKPOINT, on_breakpoint, Delivery::Exception)
        {
            panic!("the host refused the #BP handler: {error:?}");
        }
        let after: u64;
        // SAFETY: `int3` only traps to the handler registered above, which
        // returns to the next instruction; `lea` reads the address of that
        // instruction.
        unsafe {
            core::arch::asm!(
                "int3",
                "2: lea {after}, [rip + 2b]",
                after = out(reg) after,
            );
        }
        let seen = BREAKPOINTS.load(Ordering::SeqCst);
        let rip = BREAKPOINT_RIP.load(Ordering::SeqCst);
        if seen != 1 || rip != after {
            println!(
                "survived breakpoint: {seen} #BP seen, rip {rip:#x}, expected 1 at {after:#x}"
            );
            hypercall::shutdown(SURVIVED);
        }
        println!("trap: breakpoint: int3 reached our #BP handler once, resuming after it");
        hypercall::shutdown(CONTAINED);
    }

    fn cpu_state() {
        if let Err(error) =
            traps::set_handler(vector::INVALID_OPCODE, on_probe_ud, Delivery::Exception)
        {
            panic!("the host refused the #UD handler: {error:?}");
        }
        let rdtscp = probe!(".byte 0x0f, 0x01, 0xf9").map(|(_, tsc_aux, _)| tsc_aux);
        let rdpid = probe!(".byte 0xf3, 0x0f, 0xc7, 0xf8").map(|(value, _, _)| value);
        let xgetbv = probe!(".byte 0x0f, 0x01, 0xd0").map(|(low, _, high)| (high << 32) | low);
        let rdfsbase = probe!(".byte 0xf3, 0x48, 0x0f, 0xae, 0xc0").map(|(base, _, _)| base);
        let rdpkru = probe!(".byte 0x0f, 0x01, 0xee").map(|(pkru, _, _)| pkru);
        let syscall = probe!(".byte 0x0f, 0x05").map(|(rax, _, _)| rax);
        let flags = flags_across_a_hypercall();
        let interrupts = u64::from(flags & RFLAGS_IF != 0);
        let iopl = (flags & RFLAGS_IOPL) >> 12;
        let ac_df_kept = flags & (RFLAGS_AC | RFLAGS_DF) == RFLAGS_AC | RFLAGS_DF;
        println!(
            "trap: cpu-state: rdtscp tsc_aux={} rdpid={} xgetbv={} rdfsbase={} rdpkru={} syscall={} if={interrupts} iopl={iopl} ac+df across a hypercall: {}",
            Seen(rdtscp),
            Seen(rdpid),
            Seen(xgetbv),
            Seen(rdfsbase),
            Seen(rdpkru),
            Seen(syscall),
            if ac_df_kept { "kept" } else { "lost" },
        );
        let rdfsbase_as_promised = if has_fsgsbase() {
            rdfsbase == Some(0)
        } else {
            rdfsbase.is_none()
        };
        let as_expected = rdtscp.unwrap_or(0) == 0
            && rdpid.unwrap_or(0) == 0
            && rdfsbase_as_promised
            && [xgetbv, rdpkru, syscall].iter().all(Option::is_none)
            && interrupts == 1
            && iopl == 0
            && ac_df_kept;
        if !as_expected {
            println!("survived cpu-state: the state above is not what the host promises");
            hypercall::shutdown(SURVIVED);
        }
        println!("trap: cpu-state: as the host promises");
        hypercall::shutdown(CONTAINED);
    }

    fn on_user_ud2(frame: &mut TrapFrame) {
        if frame.ring() == 3 {
            println!(
                "survived user-hypercall: int 0x81 from ring 3 returned rax = {:#x}",
                frame.rax
            );
            hypercall::shutdown(SURVIVED);
        }
        panic!("#UD in ring {} at {:#x}", frame.ring(), frame.rip);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
