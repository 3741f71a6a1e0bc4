//! Address spaces: each process's own four-level page tables.
//!
//! # The layout of a process
//!
//! | guest-virtual | what |
//! | --- | --- |
//! | [`USER_TEXT`] + | the OS image's read-only part (text, rodata), shared by every process read-only: the user programs are functions of this image, run through this alias |
//! | [`HEAP_BASE`] .. break | the heap, grown with `sbrk`: demand-zero |
//! | [`STACK_TOP`] - [`STACK_LIMIT`] .. [`STACK_TOP`] | the stack: demand-zero |
//! | `KERNEL_OFFSET` + | the kernel half: the start-up map of all guest memory, supervisor-only, the same top-level entries in every address space (guest_abi::pte requires it; the host shares one shadow of it between all roots) |
//!
//! Nothing is mapped until it is touched. The first fault in a level-1
//! table's worth (2 MiB) of heap or stack reaches our page-fault handler
//! (the host reflects it because our own entry is not present), which takes
//! a zeroed page, maps it and reports the entry to the host
//! ([`AddressSpace::fault`]). It also writes zero-on-demand entries over the
//! rest of that heap or stack in the table, so that the first touch of each
//! of those pages is the host's alone: it maps a page lent in the
//! [`crate::zero_pool`], zeroed, in one exit instead of two. With the pool
//! empty such a fault reaches us after all, and we map the page ourselves
//! and fill the pool again.
//!
//! # Copy-on-write
//!
//! [`AddressSpace::fork`] copies the tables, not the pages: every writable
//! page becomes read-only and marked [`COW`] in both parent and child, and
//! its reference count goes up. The first write to it faults (the host
//! reflects it: our entry forbids the write), and the fault copies the page
//! if it is still shared, or just makes it writable again if it is the last
//! reference. The parent's changed entries are reported through the MMU
//! ring, one exit for many; the child's tables are new, so the host has
//! nothing of them to forget.

use crate::{frames, mmu, zero_pool};
use guest_abi::pte;
use guest_abi::pte::{
    ACCESSED, ADDRESS_MASK, DIRTY, HUGE_PAGE, KERNEL_HALF_FIRST_PML4_INDEX, MmuOp, PRESENT, USER,
    WRITABLE,
};
use guest_rt::boot::{self, kernel_virtual};
use guest_rt::paging::{PAGE_BYTES, table_entry, table_index};

/// Where the shared text alias starts.
pub const USER_TEXT: u64 = 0x40_0000;
/// The heap's first address.
pub const HEAP_BASE: u64 = 0x1000_0000;
/// The heap may grow up to here.
pub const HEAP_LIMIT: u64 = 0x4000_0000;
/// The top of every process's stack.
pub const STACK_TOP: u64 = 0x40_0000_0000;
/// How far the stack may grow down.
pub const STACK_LIMIT: u64 = 1 << 20;
/// The end of the user half.
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Software bit (guest_abi::pte::SOFTWARE_BITS): a read-only page that is
/// writable in spirit, shared after a fork until someone writes.
pub const COW: u64 = 1 << 9;
/// Software bit: a page of the OS image's text alias, owned by nobody.
pub const SHARED_TEXT: u64 = 1 << 10;

/// # The GOT
///
/// The image is compiled position-independent, and calls into other
/// crates (`memset`, `memcpy`, the panic paths) go through the global
/// offset table in `.data`, which holds their *kernel* addresses: user code
/// running through the alias would jump into the supervisor-only kernel
/// half. So the alias gets a GOT of its own: [`init`] copies the GOT into
/// fresh pages with every entry that points into the read-only part moved
/// to its alias (and every other entry zeroed), and those pages appear at
/// the GOT's place in the alias, read-only, in every process.
static USER_GOT: crate::cell::Kernel<[u64; USER_GOT_PAGES]> =
    crate::cell::Kernel::new([0; USER_GOT_PAGES]);
/// The most pages the GOT may span.
const USER_GOT_PAGES: usize = 2;

fn got() -> (u64, u64) {
    unsafe extern "C" {
        static __got_start: u8;
        static __got_end: u8;
    }
    (
        (&raw const __got_start) as u64,
        (&raw const __got_end) as u64,
    )
}

/// Builds the alias's GOT (before the first process).
pub fn init() {
    let (start, end) = got();
    let (ro_start, ro_end) = image_read_only();
    let first_page = start & !(PAGE_BYTES - 1);
    USER_GOT.with(|pages| {
        for (i, page) in pages.iter_mut().enumerate() {
            let page_va = first_page + i as u64 * PAGE_BYTES;
            if page_va >= end {
                break;
            }
            *page = frames::alloc_zeroed().expect("memory for the user GOT");
            let mut at = start.max(page_va);
            while at < end.min(page_va + PAGE_BYTES) {
                // SAFETY: a GOT entry of our own image, 8-byte aligned.
                let target = unsafe { (at as *const u64).read() };
                let aliased = if (ro_start..ro_end).contains(&target) {
                    USER_TEXT + (target - ro_start)
                } else {
                    0
                };
                // SAFETY: the page was just allocated for this; the offset
                // is inside it.
                unsafe {
                    (frames::bytes(*page).add((at - page_va) as usize) as *mut u64).write(aliased)
                };
                at += 8;
            }
        }
        assert!(
            end <= first_page + (USER_GOT_PAGES as u64) * PAGE_BYTES,
            "the GOT spans too many pages"
        );
    });
}

/// The first and last byte of the image's read-only part (from linker.ld).
fn image_read_only() -> (u64, u64) {
    unsafe extern "C" {
        static __image_start: u8;
        static __rodata_end: u8;
    }
    (
        (&raw const __image_start) as u64,
        (&raw const __rodata_end) as u64,
    )
}

/// Where user code sees the kernel-image address `kernel_address` (of a
/// function or constant in the image's read-only part).
pub fn user_alias(kernel_address: u64) -> u64 {
    let (start, end) = image_read_only();
    assert!((start..end).contains(&kernel_address), "not in the text");
    USER_TEXT + (kernel_address - start)
}

/// Whether `[addr, addr + len)` lies in the user half.
pub fn is_user_range(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= USER_END)
}

/// Why a fault could not be fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// Nothing may be mapped there (outside heap and stack).
    Unmapped,
    /// A write to a page that is read-only for good (the text).
    ReadOnly,
    /// No free page.
    OutOfMemory,
}

/// One process's page tables, by their top-level table's guest-physical
/// address (what `SetRoot` takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    /// The top-level table.
    pub root: u64,
}

/// The entry `index` of the table at guest-physical `table`.
fn slot(table: u64, index: usize) -> *mut u64 {
    (kernel_virtual(table) as *mut u64).wrapping_add(index)
}

fn read(slot: *mut u64) -> u64 {
    // SAFETY: every slot we make is an entry of one of our tables, which
    // the start-up map shows; volatile, because the host sets accessed and
    // dirty bits in them behind the compiler.
    unsafe { slot.read_volatile() }
}

fn write(slot: *mut u64, value: u64) {
    // SAFETY: as in `read`.
    unsafe { slot.write_volatile(value) }
}

impl AddressSpace {
    /// An empty user half and the kernel half, copied from the tables the
    /// host started us on.
    pub fn new() -> Option<Self> {
        let root = frames::alloc_zeroed()?;
        let boot_root = boot::params().initial_root;
        // The switcher's slot (511) is never present; copying it keeps it so.
        for i in KERNEL_HALF_FIRST_PML4_INDEX..512 {
            write(slot(root, i), read(slot(boot_root, i)));
        }
        Some(Self { root })
    }

    /// A new address space with the image's read-only part at
    /// [`USER_TEXT`], for the first process.
    pub fn with_text() -> Option<Self> {
        let space = Self::new()?;
        let (start, end) = image_read_only();
        let mut page = start;
        while page < end {
            let entry = (page - boot::kernel_virtual(0)) | PRESENT | USER | ACCESSED | SHARED_TEXT;
            let leaf = space.leaf(USER_TEXT + (page - start), true)?;
            write(leaf, entry);
            page += PAGE_BYTES;
        }
        let got_page = got().0 & !(PAGE_BYTES - 1);
        for (i, &frame) in USER_GOT.with(|pages| *pages).iter().enumerate() {
            if frame != 0 {
                let vaddr = USER_TEXT + (got_page - start) + i as u64 * PAGE_BYTES;
                write(
                    space.leaf(vaddr, true)?,
                    frame | PRESENT | USER | ACCESSED | SHARED_TEXT,
                );
            }
        }
        Some(space)
    }

    /// The level-1 entry for `vaddr` (user half), making missing tables
    /// if `create`.
    fn leaf(&self, vaddr: u64, create: bool) -> Option<*mut u64> {
        if vaddr >= USER_END {
            return None;
        }
        let mut table = self.root;
        for level in (2..=4).rev() {
            let s = slot(table, table_index(vaddr, level));
            let mut entry = read(s);
            if entry & PRESENT == 0 {
                if !create {
                    return None;
                }
                // A new table under a not-present entry: the host has no
                // shadow of it, so nothing needs reporting.
                entry = table_entry(frames::alloc_zeroed()?, true);
                write(s, entry);
            }
            if entry & HUGE_PAGE != 0 {
                return None;
            }
            table = entry & ADDRESS_MASK;
        }
        Some(slot(table, table_index(vaddr, 1)))
    }

    /// The level-1 entry for `vaddr`, 0 if there is none.
    pub fn entry(&self, vaddr: u64) -> u64 {
        self.leaf(vaddr, false).map_or(0, read)
    }

    /// Fixes a fault at `vaddr` (a write if `write`) that the host
    /// reflected: demand-zero in the heap (below `heap_end`) and stack,
    /// copy-on-write on a shared page. Reports the new entry at once.
    pub fn fault(&self, vaddr: u64, write_access: bool, heap_end: u64) -> Result<(), FaultError> {
        let page_va = vaddr & !(PAGE_BYTES - 1);
        let entry = self.entry(page_va);
        let mut zero_on_demand_from = None;
        let value = if entry & PRESENT == 0 {
            let region = if (HEAP_BASE..heap_end).contains(&page_va) {
                HEAP_BASE..heap_end
            } else if (STACK_TOP - STACK_LIMIT..STACK_TOP).contains(&page_va) {
                STACK_TOP - STACK_LIMIT..STACK_TOP
            } else {
                return Err(FaultError::Unmapped);
            };
            if pte::is_zero_on_demand(entry) {
                // The host's pool ran dry: it is time to lend it more.
                zero_pool::refill();
            } else {
                // The first touch in this table: its neighbours are next.
                zero_on_demand_from = Some(region);
            }
            let page = frames::alloc_zeroed().ok_or(FaultError::OutOfMemory)?;
            // Accessed (and dirty for a write) already set, as the CPU
            // would: the host then maps it at once when told (eager fill),
            // and a read leaves the page read-only in the shadow until the
            // first write sets dirty (the host's dirty emulation).
            let dirty = if write_access { DIRTY } else { 0 };
            page | PRESENT | WRITABLE | USER | ACCESSED | dirty
        } else if write_access && entry & COW != 0 {
            let old = entry & ADDRESS_MASK;
            let page = if frames::refs(old) == 1 {
                old // the last sharer: write in place
            } else {
                let new = frames::alloc_dirty().ok_or(FaultError::OutOfMemory)?;
                // SAFETY: `old` is a live page we hold a reference to,
                // `new` a page just handed to us; both in the start-up map.
                unsafe {
                    frames::bytes(new).copy_from_nonoverlapping(frames::bytes(old), 4096);
                }
                frames::release(old);
                new
            };
            (entry & !(ADDRESS_MASK | COW)) | page | WRITABLE | ACCESSED | DIRTY
        } else if write_access && entry & WRITABLE == 0 {
            return Err(FaultError::ReadOnly);
        } else {
            // Present and allowed: the host changed its mind under us (a
            // race with another report). Retrying is all it takes.
            return Ok(());
        };
        let leaf = self.leaf(page_va, true).ok_or(FaultError::OutOfMemory)?;
        write(leaf, value);
        mmu::report(MmuOp::SetEntry {
            root: self.root,
            vaddr: page_va,
            level: 1,
            value,
        });
        if let Some(region) = zero_on_demand_from {
            Self::zero_on_demand_around(leaf, page_va, region);
        }
        Ok(())
    }

    /// Writes zero-on-demand entries (user, writable) for the pages of
    /// `region` that share the level-1 table of `leaf` (the entry of
    /// `page_va`) and have no entry yet. They were not present and still
    /// are not, so the host has nothing to forget: no report.
    fn zero_on_demand_around(leaf: *mut u64, page_va: u64, region: core::ops::Range<u64>) {
        let index = table_index(page_va, 1);
        let table = leaf.wrapping_sub(index);
        let table_va = page_va - index as u64 * PAGE_BYTES;
        let table_end = table_va + 512 * PAGE_BYTES;
        // The region's part of this table, as entry indices.
        let first = (region.start.max(table_va) - table_va) / PAGE_BYTES;
        let end = (region.end.min(table_end) - table_va) / PAGE_BYTES;
        let marker = pte::zero_on_demand(WRITABLE | USER);
        for i in first as usize..end as usize {
            let slot = table.wrapping_add(i);
            if read(slot) == 0 {
                write(slot, marker);
            }
        }
    }

    /// A copy-on-write copy of this address space (which must be the
    /// running one: its changed entries are reported to the host).
    pub fn fork(&self) -> Option<Self> {
        let child = Self::new()?;
        let copied = self.fork_table(self.root, child.root, 4, 0);
        mmu::flush();
        if copied.is_none() {
            child.destroy();
            return None;
        }
        Some(child)
    }

    /// Copies table `from` (at `level`, mapping from `base`) into the empty
    /// table `to`.
    fn fork_table(&self, from: u64, to: u64, level: u8, base: u64) -> Option<()> {
        let entries = if level == 4 {
            KERNEL_HALF_FIRST_PML4_INDEX
        } else {
            512
        };
        let span = 1u64 << (12 + 9 * (u32::from(level) - 1));
        for i in 0..entries {
            let entry = read(slot(from, i));
            if entry & PRESENT == 0 {
                continue;
            }
            let vaddr = base + i as u64 * span;
            if level > 1 {
                let table = frames::alloc_zeroed()?;
                write(slot(to, i), table_entry(table, true));
                self.fork_table(entry & ADDRESS_MASK, table, level - 1, vaddr)?;
                continue;
            }
            let mut shared = entry;
            if entry & SHARED_TEXT == 0 {
                frames::share(entry & ADDRESS_MASK);
                if entry & WRITABLE != 0 {
                    shared = (entry & !(WRITABLE | DIRTY)) | COW;
                    write(slot(from, i), shared);
                    mmu::queue(MmuOp::SetEntry {
                        root: self.root,
                        vaddr,
                        level: 1,
                        value: shared,
                    });
                }
            }
            write(slot(to, i), shared);
        }
        Some(())
    }

    /// Unmaps the pages of `[from, to)`, reporting the entries through the
    /// ring and releasing the pages once the host has applied them.
    pub fn unmap(&self, from: u64, to: u64) {
        let mut released = [0u64; 64];
        let mut n = 0;
        let mut page_va = from;
        while page_va < to {
            if let Some(leaf) = self.leaf(page_va, false) {
                let entry = read(leaf);
                if entry & PRESENT == 0 && entry != 0 {
                    // A zero-on-demand entry: never mapped, nothing to report.
                    write(leaf, 0);
                } else if entry & PRESENT != 0 {
                    write(leaf, 0);
                    mmu::queue(MmuOp::SetEntry {
                        root: self.root,
                        vaddr: page_va,
                        level: 1,
                        value: 0,
                    });
                    released[n] = entry & ADDRESS_MASK;
                    n += 1;
                    if n == released.len() {
                        mmu::flush();
                        released.iter().for_each(|&p| frames::release(p));
                        n = 0;
                    }
                }
            }
            page_va += PAGE_BYTES;
        }
        mmu::flush();
        released[..n].iter().for_each(|&p| frames::release(p));
    }

    /// Releases every page and table of the user half, and the root. The
    /// host must hold no shadow of it any more (the caller flushed it).
    pub fn destroy(self) {
        Self::release_table(self.root, 4);
    }

    fn release_table(table: u64, level: u8) {
        let entries = if level == 4 {
            KERNEL_HALF_FIRST_PML4_INDEX
        } else {
            512
        };
        for i in 0..entries {
            let entry = read(slot(table, i));
            if entry & PRESENT == 0 {
                continue;
            }
            if level > 1 {
                Self::release_table(entry & ADDRESS_MASK, level - 1);
            } else if entry & SHARED_TEXT == 0 {
                frames::release(entry & ADDRESS_MASK);
            }
        }
        frames::release(table);
    }
}

/// The page the page-table update benchmark maps and remaps: beyond any
/// heap break, so no fault ever maps it.
const PTE_BENCH_PAGE: u64 = HEAP_LIMIT - PAGE_BYTES;

impl AddressSpace {
    /// Rewrites the entry of one page `n` times (a different value each
    /// time, every one already accessed, so the host maps it at once when
    /// told) and reports each change: by its own hypercall, or queued in
    /// the MMU ring (`batched`), which costs one exit per 64. Returns the
    /// cycles the `n` updates took; everything is undone afterwards.
    pub fn pte_update_bench(&self, n: u64, batched: bool) -> Option<u64> {
        let page = frames::alloc_zeroed()?;
        let Some(leaf) = self.leaf(PTE_BENCH_PAGE, true) else {
            frames::release(page);
            return None;
        };
        let base = page | PRESENT | WRITABLE | USER | ACCESSED;
        let start = guest_rt::time::cycles();
        for i in 0..n {
            let value = if i % 2 == 0 { base | DIRTY } else { base };
            write(leaf, value);
            let op = MmuOp::SetEntry {
                root: self.root,
                vaddr: PTE_BENCH_PAGE,
                level: 1,
                value,
            };
            if batched {
                mmu::queue(op);
            } else {
                mmu::report(op);
            }
        }
        mmu::flush();
        let cycles = guest_rt::time::cycles() - start;
        write(leaf, 0);
        mmu::report(MmuOp::SetEntry {
            root: self.root,
            vaddr: PTE_BENCH_PAGE,
            level: 1,
            value: 0,
        });
        frames::release(page);
        Some(cycles)
    }
}
