//! The host's own page tables.
//!
//! The boot tables map the first 4 GiB twice with no rights distinctions.
//! [`init`] replaces them with the tables the host lives on from then on:
//!
//! - the kernel image, identity-mapped with 4 KiB pages: text read-only and
//!   executable, rodata read-only, data and bss writable and non-executable,
//!   and the page below the boot stack left out, so a stack overflow faults
//!   (and lands on the double-fault IST stack) instead of corrupting `.bss`;
//! - the direct map: every 2 MiB stretch that holds RAM, at
//!   [`PHYS_OFFSET`] + its physical address, writable, never executable;
//! - a window for device registers ([`map_mmio`]), mapped uncached.
//!
//! Nothing maps address 0, so a null pointer faults. The switcher's slot
//! (PML4 entry 511) is added here when the first guest runs.

use super::{MemoryError, PHYS_OFFSET, alloc_frame, kernel_image};
use crate::boot::{BootInfo, RegionKind};
use core::sync::atomic::{AtomicU64, Ordering};
use host::addr::HostPhysAddr;
use spin::Mutex;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as Flags,
    PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Device registers are mapped from here up.
const MMIO_BASE: u64 = 0xffff_c000_0000_0000;

/// The host's tables, kept for later mappings (MMIO, the switcher).
static HOST_TABLES: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);
static NEXT_MMIO: Mutex<u64> = Mutex::new(MMIO_BASE);
/// The no-execute bit, or nothing on a CPU without NX (where the bit is
/// reserved and setting it would fault).
static NX_FLAG: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __rodata_start: u8;
    static __data_start: u8;
    static __stack_guard: u8;
}

/// Page-table frames come from the frame allocator. The mapper zeroes each
/// new table itself.
struct TableFrames;

// SAFETY: `alloc_frame` hands out each frame once, and only unused RAM.
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let frame = alloc_frame()?;
        // While the boot tables are live, only the first 4 GiB are reachable.
        if frame.as_u64() >= super::BOOT_MAPPED_LIMIT {
            return None;
        }
        Some(PhysFrame::containing_address(PhysAddr::new(frame.as_u64())))
    }
}

/// Builds the host's tables and switches to them.
pub fn init(boot: &BootInfo, nx: bool) -> Result<(), MemoryError> {
    let root = alloc_frame().ok_or(MemoryError::PageTables("no frame for the root table"))?;
    let root_ptr = super::phys_to_virt(root).cast::<PageTable>();
    // SAFETY: `root` is a fresh frame, reachable at PHYS_OFFSET through the
    // boot tables; nothing else refers to it.
    let root_table = unsafe {
        root_ptr.write(PageTable::new());
        &mut *root_ptr
    };
    // SAFETY: all physical memory we touch while building is mapped at
    // PHYS_OFFSET (the boot tables map 4 GiB there, and `TableFrames` stays
    // below that).
    let mut tables = unsafe { OffsetPageTable::new(root_table, VirtAddr::new(PHYS_OFFSET)) };
    let nx_flag = if nx {
        Flags::NO_EXECUTE
    } else {
        Flags::empty()
    };
    NX_FLAG.store(nx_flag.bits(), Ordering::Relaxed);

    map_kernel_image(&mut tables, nx_flag)?;
    map_direct(&mut tables, boot, nx_flag)?;

    // SAFETY: the new tables map the running code, its stack and data at the
    // same addresses as before, and the direct map at the same offset.
    unsafe {
        Cr3::write(
            PhysFrame::containing_address(PhysAddr::new(root.as_u64())),
            Cr3Flags::empty(),
        )
    };
    *HOST_TABLES.lock() = Some(tables);
    Ok(())
}

fn map_kernel_image(tables: &mut OffsetPageTable<'_>, nx: Flags) -> Result<(), MemoryError> {
    let (start, end) = kernel_image();
    let rodata = (&raw const __rodata_start) as u64;
    let data = (&raw const __data_start) as u64;
    let guard = (&raw const __stack_guard) as u64;
    for addr in (start.as_u64()..end.as_u64()).step_by(Size4KiB::SIZE as usize) {
        let flags = if addr < rodata {
            Flags::PRESENT
        } else if addr < data {
            Flags::PRESENT | nx
        } else if addr == guard {
            continue;
        } else {
            Flags::PRESENT | Flags::WRITABLE | nx
        };
        map_4k(tables, addr, addr, flags)?;
    }
    Ok(())
}

/// Maps every 2 MiB stretch that overlaps RAM or ACPI data. MMIO holes are
/// left out so no device register is ever reached through a cached mapping.
fn map_direct(
    tables: &mut OffsetPageTable<'_>,
    boot: &BootInfo,
    nx: Flags,
) -> Result<(), MemoryError> {
    let ram = |kind| {
        matches!(
            kind,
            RegionKind::Usable | RegionKind::Acpi | RegionKind::AcpiNvs
        )
    };
    let mut last_mapped = None;
    for region in boot.regions().iter().filter(|r| ram(r.kind)) {
        let first = region.start.as_u64() / Size2MiB::SIZE;
        let last = region.end.as_u64().div_ceil(Size2MiB::SIZE);
        for chunk in first..last {
            if last_mapped.is_some_and(|l| chunk <= l) {
                continue;
            }
            let phys = chunk * Size2MiB::SIZE;
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(PHYS_OFFSET + phys));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(phys));
            let flags = Flags::PRESENT | Flags::WRITABLE | Flags::HUGE_PAGE | nx;
            // SAFETY: a fresh mapping in tables not yet in use.
            match unsafe { tables.map_to(page, frame, flags, &mut TableFrames) } {
                Ok(flush) => flush.ignore(),
                // Memory-map entries may share a 2 MiB stretch.
                Err(MapToError::PageAlreadyMapped(_)) => {}
                Err(_) => return Err(MemoryError::PageTables("direct map")),
            }
            last_mapped = Some(chunk);
        }
    }
    Ok(())
}

fn map_4k(
    tables: &mut OffsetPageTable<'_>,
    virt: u64,
    phys: u64,
    flags: Flags,
) -> Result<(), MemoryError> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: callers map frames that are what the mapping says (the kernel
    // image onto itself, device registers into the MMIO window).
    unsafe { tables.map_to(page, frame, flags, &mut TableFrames) }
        .map(|flush| flush.flush())
        .map_err(|_| MemoryError::PageTables("4 KiB mapping"))
}

/// Rights of a page the host maps for itself with [`map_host_page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPageRights {
    /// Read-only, executable (code).
    ReadExecute,
    /// Read-write, not executable (data).
    ReadWrite,
    /// Read-only, executable, reachable from ring 3 (the host's own ring-3
    /// benchmark code; never a guest's).
    UserReadExecute,
    /// Read-write, not executable, reachable from ring 3 (its stack).
    UserReadWrite,
}

/// Maps the 4 KiB frame `phys` at `virt` in the host's tables.
pub fn map_host_page(
    virt: u64,
    phys: HostPhysAddr,
    rights: HostPageRights,
) -> Result<(), MemoryError> {
    let mut guard = HOST_TABLES.lock();
    let tables = guard
        .as_mut()
        .ok_or(MemoryError::PageTables("not initialised"))?;
    let nx = Flags::from_bits_truncate(NX_FLAG.load(Ordering::Relaxed));
    let flags = match rights {
        HostPageRights::ReadExecute => Flags::PRESENT,
        HostPageRights::ReadWrite => Flags::PRESENT | Flags::WRITABLE | nx,
        HostPageRights::UserReadExecute => Flags::PRESENT | Flags::USER_ACCESSIBLE,
        HostPageRights::UserReadWrite => {
            Flags::PRESENT | Flags::WRITABLE | Flags::USER_ACCESSIBLE | nx
        }
    };
    map_4k(tables, virt, phys.as_u64(), flags)
}

/// Makes the host's writable 4 KiB data mapping at `virt` present or not
/// (keeping its frame), and flushes it from the TLB: what a native kernel
/// does in a demand fault, for the benchmarks' native analogue.
pub fn set_present(virt: u64, present: bool) -> Result<(), MemoryError> {
    let mut guard = HOST_TABLES.lock();
    let tables = guard
        .as_mut()
        .ok_or(MemoryError::PageTables("not initialised"))?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let mut flags = Flags::WRITABLE | Flags::from_bits_truncate(NX_FLAG.load(Ordering::Relaxed));
    if present {
        flags |= Flags::PRESENT;
    }
    // SAFETY: only the benchmark's own page changes, between accesses it
    // makes itself.
    unsafe { tables.update_flags(page, flags) }
        .map(|flush| flush.flush())
        .map_err(|_| MemoryError::PageTables("set_present"))
}

/// The no-execute bit for page-table entries the host writes by hand (0 on
/// a CPU without NX).
pub fn nx_bit() -> u64 {
    NX_FLAG.load(Ordering::Relaxed)
}

/// Maps `size` bytes of device registers at physical `phys`, uncached, and
/// returns their virtual address.
pub fn map_mmio(phys: HostPhysAddr, size: u64) -> Result<VirtAddr, MemoryError> {
    let mut guard = HOST_TABLES.lock();
    let tables = guard
        .as_mut()
        .ok_or(MemoryError::PageTables("not initialised"))?;
    let mut next = NEXT_MMIO.lock();
    let base = *next;
    let first = phys.page_base().as_u64();
    let end = phys.as_u64() + size;
    for (i, frame) in (first..end).step_by(Size4KiB::SIZE as usize).enumerate() {
        let flags = Flags::PRESENT
            | Flags::WRITABLE
            | Flags::NO_CACHE
            | Flags::WRITE_THROUGH
            | Flags::from_bits_truncate(NX_FLAG.load(Ordering::Relaxed));
        map_4k(tables, base + i as u64 * Size4KiB::SIZE, frame, flags)?;
        *next += Size4KiB::SIZE;
    }
    Ok(VirtAddr::new(base + phys.page_offset()))
}
