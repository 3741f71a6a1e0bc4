//! The stacks of an application processor, each with an unmapped guard
//! page below it.
//!
//! The boot CPU's stacks are in the kernel image (the boot stack, with its
//! guard page, and the IST stacks of `gdt.rs`). Each other CPU gets its
//! own, in a window of the host's address space that nothing else uses:
//! CPU `n`'s stacks are in the `n`-th [`WINDOW_PER_CPU`] bytes from
//! [`WINDOW_BASE`], one after another with a page left unmapped below
//! each. So overflowing a stack faults on the guard page (and the fault,
//! which cannot push onto that stack, becomes a double fault on the
//! CPU's IST stack, which reports it) instead of running into its
//! neighbour. The frames come from the frame allocator, one at a time;
//! they are never freed, because a CPU, once up, runs until the machine
//! stops.

use crate::gdt::TssStacks;
use crate::memory::paging::{HostPageRights, map_host_page};
use crate::memory::{self, MemoryError};
use host::addr::PAGE_SIZE;
use x86_64::VirtAddr;

/// Where the window starts: PML4 entry 448, between the device window
/// (`paging.rs`, entry 384) and the switcher's slot (entry 511).
const WINDOW_BASE: u64 = 0xffff_e000_0000_0000;
/// Address space per CPU (mapped: the stacks below; the rest stays empty).
const WINDOW_PER_CPU: u64 = 1 << 20;
/// The kernel stack: as large as the boot CPU's.
const KERNEL_STACK_BYTES: u64 = 128 * 1024;
/// The IST and ring-0 stacks: as large as the boot CPU's (`gdt.rs`).
const TSS_STACK_BYTES: u64 = 16 * 1024;

/// One application processor's stacks (their tops).
#[derive(Clone, Copy, Debug)]
pub struct CpuStacks {
    /// Where `ap_main` starts.
    pub kernel_top: u64,
    /// What its TSS names.
    pub tss: TssStacks,
}

/// Maps the stacks of CPU `cpu` (see the module docs).
pub fn allocate(cpu: usize) -> Result<CpuStacks, MemoryError> {
    let mut next = WINDOW_BASE + cpu as u64 * WINDOW_PER_CPU;
    let mut stack = |bytes: u64| -> Result<VirtAddr, MemoryError> {
        let bottom = next + PAGE_SIZE; // the guard page stays unmapped
        for page in (bottom..bottom + bytes).step_by(PAGE_SIZE as usize) {
            let frame =
                memory::alloc_frame().ok_or(MemoryError::PageTables("no frame for a CPU stack"))?;
            map_host_page(page, frame, HostPageRights::ReadWrite)?;
        }
        next = bottom + bytes;
        Ok(VirtAddr::new(next))
    };
    let kernel_top = stack(KERNEL_STACK_BYTES)?.as_u64();
    let interrupt = [
        stack(TSS_STACK_BYTES)?,
        stack(TSS_STACK_BYTES)?,
        stack(TSS_STACK_BYTES)?,
    ];
    let ring0 = stack(TSS_STACK_BYTES)?;
    debug_assert!(next <= WINDOW_BASE + (cpu as u64 + 1) * WINDOW_PER_CPU);
    Ok(CpuStacks {
        kernel_top,
        tss: TssStacks { interrupt, ring0 },
    })
}
