//! # `trap`: containment tests
//!
//! Each boot of this guest tries one thing a guest kernel must not be able
//! to do, named by its command line (the part after `/` in the host's
//! `guests=trap/<action>`). It says what it is about to do, does it, and if
//! it is still alive afterwards prints `survived <action>` and exits with
//! code 1: the host failed to contain it. A host that works kills it with a
//! reason instead, and a test expects exactly that (`guests=trap/cli:killed`).
//!
//! The actions: `cli`, `hlt`, `mov-cr3`, `lgdt`, `wrmsr`, `in`, `out`,
//! `swapgs`, `iretq-ring0`, `sgdt` (each a privileged instruction in ring
//! 1), `write-switcher` (a write to the switcher's read-only state page),
//! `user-hypercall` (`int 0x81` from ring 3) and `spin` (a loop with
//! virtual interrupts off, which the host must preempt and end). Then the
//! page-table offences, each of which the shadow page tables must refuse:
//! `map-outside` (a reported entry for a frame past the guest's memory),
//! `touch-outside` (the same entry left unreported, then touched),
//! `map-switcher` (top-level entry 511 made present and reported),
//! `root-switcher` (`set_root` to a root whose entry 511 is present),
//! `bad-root` (`set_root` to an address past the guest's memory),
//! `reserved-bits` (a reported entry with reserved address bit 51 set) and
//! `ring-overrun` (an MMU ring head more than a ring ahead). An unknown
//! action lists the known ones and exits with code 2.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guest_abi::hypercall::{Number, VECTOR};
    use guest_abi::pte::{ACCESSED, DIRTY, MmuOp, SWITCHER_PML4_INDEX, USER, WRITABLE};
    use guest_rt::paging::{self, FrameAllocator, PAGE_BYTES};
    use guest_rt::traps::{self, Delivery, TrapFrame, vector};
    use guest_rt::{boot, hypercall, irq, println, user};

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
    ];

    /// The exit code when the host let us do it.
    const SURVIVED: u64 = 1;
    /// The exit code for an unknown action.
    const UNKNOWN_ACTION: u64 = 2;

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
        if let Err(why) = set_up_user_pages() {
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

    /// Maps a user code page (read-only) and a user stack page in the
    /// start-up tables, and tells the host.
    fn set_up_user_pages() -> Result<(), &'static str> {
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
            target.copy_from_nonoverlapping(USER_PROGRAM.as_ptr(), USER_PROGRAM.len());
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
