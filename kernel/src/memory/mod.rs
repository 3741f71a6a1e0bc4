//! Physical memory: the frame allocator, the host's own page tables, the heap.
//!
//! At boot [`init`] takes the loader's memory map and:
//!
//! 1. sets up the frame allocator ([`host::frames::FrameBitmap`]) over all
//!    usable RAM, with the kernel image, the first MiB (firmware, and later
//!    the application-processor trampoline), boot modules and the
//!    allocator's own bitmap held back;
//! 2. builds the host's final page tables ([`paging`]): the kernel image
//!    mapped where it was loaded, with per-section rights, and a *direct
//!    map* of all RAM at [`PHYS_OFFSET`], through which the host reaches any
//!    frame (a guest's memory, a shadow page table) by address arithmetic;
//! 3. gives the heap ([`heap`]) a contiguous run of frames.
//!
//! Guests never see any of this: they run on shadow tables that map only
//! their own frames and the switcher.

pub mod heap;
pub mod paging;

use crate::boot::{BootInfo, RegionKind};
use host::addr::{HostPhysAddr, PAGE_SIZE};
use host::frames::{FrameBitmap, FrameStats};
use spin::Mutex;

/// Where all of physical memory appears in the host's address space: the
/// first kernel-half slot (PML4 entry 256).
pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;

/// The boot page tables reach physical memory below this address only; the
/// allocator's bitmap and the first page-table frames must come from there.
const BOOT_MAPPED_LIMIT: u64 = 4 << 30;

/// The first MiB holds real-mode firmware data; never hand it out.
const LOW_MEMORY_END: u64 = 1 << 20;

static FRAMES: Mutex<Option<FrameBitmap<'static>>> = Mutex::new(None);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range `[start, end)` of the kernel image (it runs
/// identity-mapped, so these are also its virtual addresses).
pub fn kernel_image() -> (HostPhysAddr, HostPhysAddr) {
    (
        HostPhysAddr::new((&raw const __kernel_start) as u64),
        HostPhysAddr::new((&raw const __kernel_end) as u64),
    )
}

/// The virtual address through which the host reaches physical `addr`.
pub fn phys_to_virt(addr: HostPhysAddr) -> *mut u8 {
    (PHYS_OFFSET + addr.as_u64()) as *mut u8
}

/// Why memory could not be set up.
#[derive(Debug)]
pub enum MemoryError {
    /// No usable region below 4 GiB can hold the frame bitmap.
    NoRoomForBitmap(usize),
    /// Building the page tables ran out of frames, or hit a conflict.
    PageTables(&'static str),
    /// No contiguous run of frames for the heap.
    NoRoomForHeap(u64),
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRoomForBitmap(bytes) => {
                write!(
                    f,
                    "no usable RAM below 4 GiB for the {bytes}-byte frame bitmap"
                )
            }
            Self::PageTables(what) => write!(f, "building the host page tables: {what}"),
            Self::NoRoomForHeap(bytes) => {
                write!(f, "no contiguous run of {} MiB for the heap", bytes >> 20)
            }
        }
    }
}

/// Sets up frames, page tables and heap; see the module docs.
pub fn init(boot: &BootInfo, nx: bool) -> Result<(), MemoryError> {
    init_frames(boot)?;
    paging::init(boot, nx)?;
    heap::init()
}

fn init_frames(boot: &BootInfo) -> Result<(), MemoryError> {
    let usable = || {
        boot.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
    };
    let limit = usable().map(|r| r.end).max().unwrap_or_default();
    let words = FrameBitmap::storage_words(limit);
    let bytes = (words * 8) as u64;
    let (image_start, image_end) = kernel_image();

    // The bitmap goes in the first usable stretch that the boot tables reach
    // and that overlaps nothing else we must keep.
    let keep_out = |start: u64, end: u64| {
        let overlaps = |a: HostPhysAddr, b: HostPhysAddr| start < b.as_u64() && a.as_u64() < end;
        end > BOOT_MAPPED_LIMIT
            || start < LOW_MEMORY_END
            || overlaps(image_start, image_end)
            || overlaps(boot.loader_data.start, boot.loader_data.end)
            || boot.modules().iter().any(|m| overlaps(m.start, m.end))
    };
    // Candidates: the start of each region, and just past each thing kept.
    let candidates = usable()
        .map(|r| r.start.as_u64().max(LOW_MEMORY_END))
        .chain([image_end.as_u64(), boot.loader_data.end.as_u64()])
        .chain(boot.modules().iter().map(|m| m.end.as_u64()))
        .map(|s| s.div_ceil(PAGE_SIZE) * PAGE_SIZE);
    let inside_usable =
        |s: u64| usable().any(|r| r.start.as_u64() <= s && s + bytes <= r.end.as_u64());
    let bitmap_at = candidates
        .filter(|&s| inside_usable(s) && !keep_out(s, s + bytes))
        .min()
        .ok_or(MemoryError::NoRoomForBitmap(words * 8))?;

    let storage_ptr = phys_to_virt(HostPhysAddr::new(bitmap_at)).cast::<u64>();
    // SAFETY: [bitmap_at, bitmap_at + bytes) is usable RAM below 4 GiB (so
    // mapped by the boot tables at PHYS_OFFSET, and later by the direct
    // map), overlapping nothing else in use, and reserved below so the
    // allocator never hands it out: this slice is its only reference.
    let storage = unsafe { core::slice::from_raw_parts_mut(storage_ptr, words) };
    let mut frames = FrameBitmap::new(storage, limit);
    for region in usable() {
        frames.add_free_region(region.start, region.end);
    }
    frames.reserve(HostPhysAddr::new(0), HostPhysAddr::new(LOW_MEMORY_END));
    frames.reserve(image_start, image_end);
    frames.reserve(
        HostPhysAddr::new(bitmap_at),
        HostPhysAddr::new(bitmap_at + bytes),
    );
    frames.reserve(boot.loader_data.start, boot.loader_data.end);
    for module in boot.modules() {
        frames.reserve(module.start, module.end);
    }
    *FRAMES.lock() = Some(frames);
    Ok(())
}

/// Takes one frame of RAM, or `None` when memory is exhausted.
pub fn alloc_frame() -> Option<HostPhysAddr> {
    FRAMES.lock().as_mut()?.allocate()
}

/// Takes `count` physically contiguous frames.
pub fn alloc_contiguous(count: u64) -> Option<HostPhysAddr> {
    FRAMES.lock().as_mut()?.allocate_contiguous(count)
}

/// Returns a frame. A bad free is a host bug, and reported loudly.
pub fn free_frame(frame: HostPhysAddr) {
    if let Some(frames) = FRAMES.lock().as_mut()
        && let Err(e) = frames.free(frame)
    {
        log::error!("frame allocator: {e}");
    }
}

/// The frame allocator's counts.
pub fn frame_stats() -> FrameStats {
    FRAMES
        .lock()
        .as_ref()
        .map(|f| f.stats())
        .unwrap_or_default()
}
