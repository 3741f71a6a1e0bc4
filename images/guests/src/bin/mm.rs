//! # `mm`: a guest kernel on page tables of its own
//!
//! The shadow page tables' end-to-end test. The guest builds its own
//! four-level tables (a fresh root whose kernel half is the start-up
//! root's, plus a user half of its own), switches to them with `set_root`,
//! and then checks, one line each, that what it reads through its
//! mappings is what its own tables say, every time:
//!
//! 1. `map`: pages mapped (reported one entry at a time) read back the
//!    distinct pattern written into each, and the host set the accessed
//!    and dirty bits in the leaf entries as a CPU would;
//! 2. `remap-direct` and `remap-ring`: pages pointed at other frames (the
//!    new entries reported by hypercall, or queued in the MMU ring and
//!    applied with one `flush_mmu_ring`) show the new frames' data, and the
//!    old frames keep their own (seen through the start-up map);
//! 3. `unmap`: an access to an unmapped page faults into our own handler,
//!    with the address in the shared page;
//! 4. `address-spaces`: a second root with other frames at the same
//!    addresses; switching back and forth shows each its own data (the
//!    host's root cache);
//! 5. `eviction`: more roots than the host caches; the first two still see
//!    their data after theirs were thrown out and rebuilt;
//! 6. `user-supervisor` (last, as it leaves for ring 3): user code reads a
//!    user page, then a supervisor page, and the fault comes to our handler
//!    with the user bit in its error code.
//!
//! It prints `mm: ok <check>: ...` per check and `mm: all checks passed`
//! at the end, exiting 0. The first wrong value prints `mm: FAILED` with
//! what was expected and what was seen, and exits with [`FAILED`]
//! (another code for a fault nobody expected, or a refused call).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};
    use guest_abi::pte::{ACCESSED, ADDRESS_MASK, DIRTY, MmuOp, PRESENT, USER, WRITABLE, ring};
    use guest_rt::paging::{self, FrameAllocator, PAGE_BYTES};
    use guest_rt::probe::{self, Fault, PF_PRESENT, PF_USER, PF_WRITE};
    use guest_rt::traps::{self, Delivery, TrapFrame, vector};
    use guest_rt::{boot, hypercall, println, user};

    /// The exit code when a check saw a wrong value.
    const FAILED: u64 = 1;
    /// The exit code for a host call refused or memory run out.
    const SETUP_FAILED: u64 = 2;
    /// The exit code for a page fault at no probe.
    const UNEXPECTED_FAULT: u64 = 3;

    /// Where our pages go: 256 MiB into the user half, far from anything
    /// the start-up map uses. Supervisor-only: the kernel uses them.
    const BASE: u64 = 0x1000_0000;
    /// How many pages we map there.
    const PAGES: u64 = 16;
    /// Pages `0..4` are remapped by hypercall, `4..8` through the ring,
    /// `8..12` unmapped; `12..16` keep their first frames.
    const REMAP_DIRECT: core::ops::Range<u64> = 0..4;
    const REMAP_RING: core::ops::Range<u64> = 4..8;
    const UNMAPPED: core::ops::Range<u64> = 8..12;
    /// How many times we switch between the two address spaces.
    const SWITCHES: u64 = 5;
    /// More roots than the host keeps (4 by default), to make it evict.
    const EXTRA_ROOTS: u64 = 4;

    /// The user program's pages (ring 3).
    const USER_CODE: u64 = 0x40_0000;
    const USER_STACK: u64 = 0x40_1000;
    const USER_DATA: u64 = 0x40_2000;
    /// What the user data page holds in its first word.
    const USER_DATA_VALUE: u64 = 0x0005_e700_0da7_a000;
    /// A supervisor page the user code tries to read: one that stays
    /// mapped in the first address space.
    const SUPERVISOR_PAGE: u64 = BASE + 12 * PAGE_BYTES;

    /// The word at `word` of page `page` of the data set `tag`: every page
    /// of every set differs from every other.
    const fn pattern(tag: u64, page: u64, word: u64) -> u64 {
        (0x6d6d << 48) | (tag << 40) | (page << 24) | (word * 8)
    }

    /// Why a check failed: what, where, and the two values.
    struct Failure {
        what: &'static str,
        address: u64,
        expected: u64,
        seen: u64,
    }

    type Check = Result<(), Failure>;
    type CheckFn = fn(&mut World) -> Check;

    fn expect(what: &'static str, address: u64, expected: u64, seen: u64) -> Check {
        if expected == seen {
            return Ok(());
        }
        Err(Failure {
            what,
            address,
            expected,
            seen,
        })
    }

    /// A failure that ends the guest with `code` (setup gone wrong, not a
    /// wrong value).
    fn give_up(code: u64, why: core::fmt::Arguments<'_>) -> ! {
        println!("mm: cannot go on: {why}");
        hypercall::shutdown(code)
    }

    /// Our memory, and the roots and frames the checks share.
    struct World {
        frames: FrameAllocator,
        /// The first address space and the frame behind each page at
        /// [`BASE`] (0 once unmapped).
        root_a: u64,
        pages_a: [u64; PAGES as usize],
        /// What data set each page of the first address space shows.
        tags_a: [u64; PAGES as usize],
        /// The second address space and its frames.
        root_b: u64,
        pages_b: [u64; PAGES as usize],
    }

    impl World {
        fn frame(&mut self) -> u64 {
            self.frames
                .allocate_zeroed()
                .unwrap_or_else(|| give_up(SETUP_FAILED, format_args!("out of guest memory")))
        }

        fn root(&mut self) -> u64 {
            paging::new_address_space(&mut self.frames)
                .unwrap_or_else(|| give_up(SETUP_FAILED, format_args!("out of guest memory")))
        }
    }

    pub fn main() -> u64 {
        if let Err(e) = probe::install(unexpected_fault) {
            give_up(SETUP_FAILED, format_args!("#PF handler refused: {e:?}"));
        }
        if let Err(e) = traps::set_handler(vector::INVALID_OPCODE, on_ud2, Delivery::Exception) {
            give_up(SETUP_FAILED, format_args!("#UD handler refused: {e:?}"));
        }
        let mut frames = FrameAllocator::after_image();
        let root_a = paging::new_address_space(&mut frames)
            .unwrap_or_else(|| give_up(SETUP_FAILED, format_args!("no page for a root")));
        set_root(root_a);
        println!("mm: ok own-root: running on our own tables at gpa {root_a:#x}");
        let mut world = World {
            frames,
            root_a,
            pages_a: [0; PAGES as usize],
            tags_a: [1; PAGES as usize],
            root_b: 0,
            pages_b: [0; PAGES as usize],
        };
        let checks: [(&str, CheckFn); 6] = [
            ("map", map),
            ("remap-direct", remap_direct),
            ("remap-ring", remap_ring),
            ("unmap", unmap),
            ("address-spaces", address_spaces),
            ("eviction", eviction),
        ];
        for (name, check) in checks {
            if let Err(f) = check(&mut world) {
                println!(
                    "mm: FAILED {name}: {} at {:#x}: expected {:#x}, seen {:#x}",
                    f.what, f.address, f.expected, f.seen
                );
                return FAILED;
            }
        }
        user_supervisor(&mut world)
    }

    fn set_root(root: u64) {
        // SAFETY: every root we make has the start-up kernel half, which
        // maps our code, stack and data where they are.
        if let Err(e) = unsafe { hypercall::set_root(root) } {
            give_up(
                SETUP_FAILED,
                format_args!("set_root({root:#x}) refused: {e:?}"),
            );
        }
    }

    /// Maps `vaddr` to `frame` under `root` with `flags`, reporting each
    /// entry written.
    fn map_one(world_frames: &mut FrameAllocator, root: u64, vaddr: u64, frame: u64, flags: u64) {
        // SAFETY: nothing of ours lives in the user half but these pages.
        if let Err(e) = unsafe { paging::map_page(root, vaddr, frame, flags, world_frames) } {
            give_up(SETUP_FAILED, format_args!("mapping {vaddr:#x}: {e:?}"));
        }
    }

    /// The word at guest-virtual `address`.
    fn read(address: u64) -> u64 {
        // SAFETY: callers read only pages they mapped, 8-byte aligned.
        unsafe { (address as *const u64).read_volatile() }
    }

    fn write(address: u64, value: u64) {
        // SAFETY: callers write only pages they mapped writable.
        unsafe { (address as *mut u64).write_volatile(value) }
    }

    /// Fills the 4 KiB at guest-virtual `page_address` with data set `tag`.
    fn fill(page_address: u64, tag: u64, page: u64) {
        for word in 0..PAGE_BYTES / 8 {
            write(page_address + word * 8, pattern(tag, page, word));
        }
    }

    /// Checks that the 4 KiB at `page_address` hold data set `tag`.
    fn verify(what: &'static str, page_address: u64, tag: u64, page: u64) -> Check {
        for word in 0..PAGE_BYTES / 8 {
            let address = page_address + word * 8;
            expect(what, address, pattern(tag, page, word), read(address))?;
        }
        Ok(())
    }

    fn page_address(page: u64) -> u64 {
        BASE + page * PAGE_BYTES
    }

    /// 1. Map, touch, read back; the accessed and dirty bits emulated.
    fn map(w: &mut World) -> Check {
        for page in 0..PAGES {
            let frame = w.frame();
            w.pages_a[page as usize] = frame;
            // No accessed or dirty bit: the host must fault each page in,
            // read-only first, and set the bits itself.
            map_one(&mut w.frames, w.root_a, page_address(page), frame, WRITABLE);
        }
        // A read first: the page must read as zero (a fresh frame), and
        // the leaf must then be accessed but not dirty.
        expect("fresh page", BASE, 0, read(BASE))?;
        let leaf = paging::read_entry(w.root_a, BASE, 1).unwrap_or(0);
        expect("accessed bit after a read", BASE, ACCESSED, leaf & ACCESSED)?;
        expect("dirty bit after a read", BASE, 0, leaf & DIRTY)?;
        for page in 0..PAGES {
            fill(page_address(page), 1, page);
        }
        for page in 0..PAGES {
            verify("first data", page_address(page), 1, page)?;
            let leaf = paging::read_entry(w.root_a, page_address(page), 1).unwrap_or(0);
            let ad = ACCESSED | DIRTY;
            expect(
                "accessed+dirty after a write",
                page_address(page),
                ad,
                leaf & ad,
            )?;
        }
        println!(
            "mm: ok map: {PAGES} pages at {BASE:#x} hold their own patterns; accessed and dirty bits set by the host"
        );
        Ok(())
    }

    /// Points `page` of the first address space at a new frame holding
    /// data set 2; returns the old frame and the new entry.
    fn new_frame_for(w: &mut World, page: u64, leaf_flags: u64) -> (u64, u64) {
        let frame = w.frame();
        fill(boot::kernel_virtual(frame), 2, page);
        let old = core::mem::replace(&mut w.pages_a[page as usize], frame);
        w.tags_a[page as usize] = 2;
        (
            old,
            (frame & ADDRESS_MASK) | PRESENT | WRITABLE | leaf_flags,
        )
    }

    /// After a remap: the page shows the new frame's data and the old frame
    /// (through the start-up map) still holds its own.
    fn verify_remapped(page: u64, old: u64) -> Check {
        verify("new frame's data", page_address(page), 2, page)?;
        verify("old frame's data", boot::kernel_virtual(old), 1, page)
    }

    /// 2a. Remap, each entry reported by hypercall.
    fn remap_direct(w: &mut World) -> Check {
        for page in REMAP_DIRECT {
            // Already accessed and dirty, as Linux writes new kernel
            // entries: the host may map it at once (an eager fill).
            let (old, entry) = new_frame_for(w, page, ACCESSED | DIRTY);
            let vaddr = page_address(page);
            // SAFETY: only this program uses the page.
            let result = unsafe { paging::set_entry(w.root_a, vaddr, 1, entry, true) };
            if let Err(e) = result {
                give_up(SETUP_FAILED, format_args!("remap refused: {e:?}"));
            }
            verify_remapped(page, old)?;
        }
        println!(
            "mm: ok remap-direct: pages {REMAP_DIRECT:?} show their new frames, old frames intact"
        );
        Ok(())
    }

    /// 2b. Remap, the entries queued in the MMU ring and applied at once.
    fn remap_ring(w: &mut World) -> Check {
        let mut olds = [0; PAGES as usize];
        for page in REMAP_RING {
            let (old, entry) = new_frame_for(w, page, 0);
            olds[page as usize] = old;
            let vaddr = page_address(page);
            let op = MmuOp::SetEntry {
                root: w.root_a,
                vaddr,
                level: 1,
                value: entry,
            };
            // SAFETY: the op reports exactly the entry written.
            let queued = unsafe { paging::set_entry(w.root_a, vaddr, 1, entry, false) }
                .map_err(|_| ())
                .and_then(|()| unsafe { paging::ring::queue(op) }.map_err(|_| ()));
            if queued.is_err() {
                give_up(
                    SETUP_FAILED,
                    format_args!("queueing the remap of {vaddr:#x}"),
                );
            }
        }
        // SAFETY: every queued op reports an entry we wrote.
        let applied = unsafe { paging::ring::flush() }
            .unwrap_or_else(|e| give_up(SETUP_FAILED, format_args!("flush refused: {e:?}")));
        let queued = REMAP_RING.end - REMAP_RING.start;
        expect("ops applied by flush_mmu_ring", 0, queued, applied)?;
        let head = paging::ring::head();
        expect(
            "ring tail (host) = head (guest)",
            0,
            head,
            paging::ring::tail(),
        )?;
        for page in REMAP_RING {
            verify_remapped(page, olds[page as usize])?;
        }
        println!(
            "mm: ok remap-ring: {queued} remaps through the MMU ring ({} slots), applied {applied}, tail = head = {head}",
            ring::RING_SLOTS
        );
        Ok(())
    }

    /// 3. Unmap, and the next access faults into our own handler.
    fn unmap(w: &mut World) -> Check {
        for page in UNMAPPED {
            let vaddr = page_address(page);
            // SAFETY: only this program uses the page.
            if let Err(e) = unsafe { paging::set_entry(w.root_a, vaddr, 1, 0, true) } {
                give_up(SETUP_FAILED, format_args!("unmap refused: {e:?}"));
            }
            w.tags_a[page as usize] = 0;
        }
        let mut faults = 0;
        for page in UNMAPPED {
            let vaddr = page_address(page) + 8 * page;
            let fault = match probe::read(vaddr) {
                Ok(value) => {
                    return expect("a fault reading an unmapped page", vaddr, 0, value | 1);
                }
                Err(fault) => fault,
            };
            check_fault(fault, vaddr, 0)?;
            faults += 1;
            // The frame itself is untouched.
            let frame = w.pages_a[page as usize];
            verify(
                "unmapped frame's data",
                boot::kernel_virtual(frame),
                1,
                page,
            )?;
        }
        // A write faults too, with the write bit.
        let vaddr = page_address(UNMAPPED.start);
        // SAFETY: the page is unmapped; if the write went through, the
        // check below fails anyway.
        match unsafe { probe::write(vaddr, 0xbad) } {
            Ok(()) => return expect("a fault writing an unmapped page", vaddr, 1, 0),
            Err(fault) => check_fault(fault, vaddr, PF_WRITE)?,
        }
        faults += 1;
        println!(
            "mm: ok unmap: {faults} accesses to pages {UNMAPPED:?} faulted into our handler at the right address"
        );
        Ok(())
    }

    /// A reflected fault names `vaddr` with error bits `bits` (present,
    /// write, user).
    fn check_fault(fault: Fault, vaddr: u64, bits: u64) -> Check {
        expect("fault address", vaddr, vaddr, fault.address)?;
        let mask = PF_PRESENT | PF_WRITE | PF_USER;
        expect("fault error code", vaddr, bits, fault.error_code & mask)
    }

    /// Checks every page of the first address space that is mapped.
    fn verify_a(w: &World) -> Check {
        for page in 0..PAGES {
            match w.tags_a[page as usize] {
                0 => {}
                tag => verify("first address space", page_address(page), tag, page)?,
            }
        }
        Ok(())
    }

    fn verify_b() -> Check {
        for page in 0..PAGES {
            verify("second address space", page_address(page), 3, page)?;
        }
        Ok(())
    }

    /// 4. A second address space, and switches between the two.
    fn address_spaces(w: &mut World) -> Check {
        w.root_b = w.root();
        for page in 0..PAGES {
            let frame = w.frame();
            fill(boot::kernel_virtual(frame), 3, page);
            w.pages_b[page as usize] = frame;
            // Mapped while the first address space runs: the host has no
            // shadow of this root yet and builds it at the switch.
            let flags = WRITABLE | ACCESSED;
            map_one(&mut w.frames, w.root_b, page_address(page), frame, flags);
        }
        for _ in 0..SWITCHES {
            set_root(w.root_b);
            verify_b()?;
            set_root(w.root_a);
            verify_a(w)?;
        }
        println!(
            "mm: ok address-spaces: 2 roots with their own pages at {BASE:#x}, {} switches, each saw its own data",
            2 * SWITCHES
        );
        Ok(())
    }

    /// 5. More roots than the cache holds, then the first two again.
    fn eviction(w: &mut World) -> Check {
        for extra in 0..EXTRA_ROOTS {
            let root = w.root();
            let frame = w.frame();
            let tag = 4 + extra;
            fill(boot::kernel_virtual(frame), tag, 0);
            map_one(&mut w.frames, root, BASE, frame, WRITABLE);
            set_root(root);
            verify("extra address space", BASE, tag, 0)?;
        }
        set_root(w.root_a);
        verify_a(w)?;
        set_root(w.root_b);
        verify_b()?;
        set_root(w.root_a);
        verify_a(w)?;
        println!(
            "mm: ok eviction: {EXTRA_ROOTS} more roots, each its own page; the first two still see their data"
        );
        Ok(())
    }

    /// The user program: `mov rax, [USER_DATA]` (allowed), `mov rbx,
    /// [SUPERVISOR_PAGE]` (must fault), `ud2` (reached only if it did not).
    const USER_PROGRAM: [u8; 18] = {
        let data = (USER_DATA as u32).to_le_bytes();
        let supervisor = (SUPERVISOR_PAGE as u32).to_le_bytes();
        [
            0x48,
            0x8b,
            0x04,
            0x25,
            data[0],
            data[1],
            data[2],
            data[3], // mov rax, [data]
            0x48,
            0x8b,
            0x1c,
            0x25,
            supervisor[0],
            supervisor[1],
            supervisor[2],
            supervisor[3], // mov rbx, [supervisor]
            0x0f,
            0x0b, // ud2
        ]
    };

    /// Check 6: ring 3 reads a supervisor page; the fault is ours, with
    /// the user bit. Never returns: the end comes from
    /// [`unexpected_fault`] (which sees the ring-3 fault) or [`on_ud2`].
    fn user_supervisor(w: &mut World) -> u64 {
        let code = w.frame();
        let stack = w.frame();
        let data = w.frame();
        // SAFETY: fresh pages, ours alone, through the start-up map.
        unsafe {
            let target = boot::kernel_virtual(code) as *mut u8;
            target.copy_from_nonoverlapping(USER_PROGRAM.as_ptr(), USER_PROGRAM.len());
            (boot::kernel_virtual(data) as *mut u64).write(USER_DATA_VALUE);
        }
        let ro = USER | ACCESSED;
        map_one(&mut w.frames, w.root_a, USER_CODE, code, ro);
        map_one(
            &mut w.frames,
            w.root_a,
            USER_STACK,
            stack,
            ro | WRITABLE | DIRTY,
        );
        map_one(&mut w.frames, w.root_a, USER_DATA, data, ro);
        IN_USER.store(1, Ordering::Release);
        // SAFETY: the three pages are mapped for user access and reported.
        let Err(e) = unsafe { user::enter(USER_CODE, USER_STACK + PAGE_BYTES) };
        give_up(SETUP_FAILED, format_args!("entering ring 3: {e:?}"))
    }

    /// Set once the user program runs: its faults are the check's.
    static IN_USER: AtomicU64 = AtomicU64::new(0);

    /// A page fault at no probe: in ring 3, the last check's; anywhere
    /// else, a bug (ours or the host's).
    fn unexpected_fault(frame: &mut TrapFrame) {
        let address = traps::fault_address();
        if frame.ring() == 3 && IN_USER.load(Ordering::Acquire) == 1 {
            let fault = Fault {
                address,
                error_code: frame.error_code,
            };
            let result = expect(
                "ring 3's read of its own page",
                USER_DATA,
                USER_DATA_VALUE,
                frame.rax,
            )
            .and_then(|()| check_fault(fault, SUPERVISOR_PAGE, PF_PRESENT | PF_USER));
            finish(result);
        }
        println!(
            "mm: FAILED: unexpected page fault at {address:#x} (error code {:#x}) at rip {:#x} in ring {}",
            frame.error_code,
            frame.rip,
            frame.ring()
        );
        hypercall::shutdown(UNEXPECTED_FAULT);
    }

    /// The user program's `ud2`: its read of a supervisor page went through.
    fn on_ud2(frame: &mut TrapFrame) {
        if frame.ring() == 3 {
            finish(Err(Failure {
                what: "a fault for ring 3 reading a supervisor page; it read",
                address: SUPERVISOR_PAGE,
                expected: 0,
                seen: frame.rbx,
            }));
        }
        println!(
            "mm: FAILED: #UD at rip {:#x} in ring {}",
            frame.rip,
            frame.ring()
        );
        hypercall::shutdown(UNEXPECTED_FAULT);
    }

    fn finish(result: Check) -> ! {
        match result {
            Ok(()) => {
                println!(
                    "mm: ok user-supervisor: ring 3 read its page, then faulted on supervisor page {SUPERVISOR_PAGE:#x} with the user bit"
                );
                println!("mm: all checks passed");
                hypercall::shutdown(0)
            }
            Err(f) => {
                println!(
                    "mm: FAILED user-supervisor: {} at {:#x}: expected {:#x}, seen {:#x}",
                    f.what, f.address, f.expected, f.seen
                );
                hypercall::shutdown(FAILED)
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
