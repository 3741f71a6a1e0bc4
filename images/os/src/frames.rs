//! Guest-physical pages: a free list, and a reference count per page.
//!
//! Every page after the loaded image belongs to this allocator. A page can
//! be in several address spaces at once after a `fork` (copy-on-write), so
//! each has a count of the mappings that hold it; it goes back on the free
//! list when the last one lets go. The free list is threaded through the
//! free pages themselves (the first word of each names the next), reached
//! through the start-up map like all guest memory.

use crate::cell::Kernel;
use guest_rt::boot::{self, kernel_virtual};
use guest_rt::paging::{PAGE_BYTES, STARTUP_MAP_BYTES};

/// The most guest memory the allocator manages (the rest is left unused).
const MAX_BYTES: u64 = 64 << 20;
/// Pages of [`MAX_BYTES`].
const MAX_PAGES: usize = (MAX_BYTES / PAGE_BYTES) as usize;

struct Frames {
    /// The first free page (guest-physical), 0 for none.
    free_head: u64,
    free_count: u64,
    /// References to each page, by page number.
    refs: [u16; MAX_PAGES],
}

static FRAMES: Kernel<Frames> = Kernel::new(Frames {
    free_head: 0,
    free_count: 0,
    refs: [0; MAX_PAGES],
});

/// Puts every page after the image on the free list.
pub fn init() {
    let params = boot::params();
    let start = params.image_end.next_multiple_of(PAGE_BYTES);
    let end = params.memory_bytes.min(MAX_BYTES).min(STARTUP_MAP_BYTES);
    FRAMES.with(|f| {
        // Highest first, so allocation starts at the low end.
        let mut page = end - PAGE_BYTES;
        while page >= start {
            push_free(f, page);
            page -= PAGE_BYTES;
        }
    });
}

fn push_free(f: &mut Frames, page: u64) {
    // SAFETY: a free page of guest memory, in the start-up map; nothing
    // else uses it while it is free.
    unsafe { (kernel_virtual(page) as *mut u64).write(f.free_head) };
    f.free_head = page;
    f.free_count += 1;
}

/// The kernel's pointer to the bytes of guest-physical page `page`.
pub fn bytes(page: u64) -> *mut u8 {
    kernel_virtual(page) as *mut u8
}

/// A free page, zeroed, with one reference; `None` when memory is out.
pub fn alloc_zeroed() -> Option<u64> {
    let page = alloc_dirty()?;
    // SAFETY: the page was free and is now ours alone.
    unsafe { bytes(page).write_bytes(0, PAGE_BYTES as usize) };
    Some(page)
}

/// A free page with one reference and whatever bytes it held.
pub fn alloc_dirty() -> Option<u64> {
    FRAMES.with(|f| {
        let page = f.free_head;
        if page == 0 {
            return None;
        }
        // SAFETY: a page on the free list holds the next one's address.
        f.free_head = unsafe { (kernel_virtual(page) as *const u64).read() };
        f.free_count -= 1;
        f.refs[index(page)] = 1;
        Some(page)
    })
}

/// One more mapping holds `page`.
pub fn share(page: u64) {
    FRAMES.with(|f| {
        let refs = &mut f.refs[index(page)];
        assert!(*refs > 0 && *refs < u16::MAX, "sharing page {page:#x}");
        *refs += 1;
    });
}

/// How many mappings hold `page`.
pub fn refs(page: u64) -> u16 {
    FRAMES.with(|f| f.refs[index(page)])
}

/// One mapping lets go of `page`; the last one frees it.
pub fn release(page: u64) {
    FRAMES.with(|f| {
        let refs = &mut f.refs[index(page)];
        assert!(*refs > 0, "releasing free page {page:#x}");
        *refs -= 1;
        if *refs == 0 {
            push_free(f, page);
        }
    });
}

/// Free pages now.
pub fn free_count() -> u64 {
    FRAMES.with(|f| f.free_count)
}

fn index(page: u64) -> usize {
    let i = (page / PAGE_BYTES) as usize;
    assert!(i < MAX_PAGES, "page {page:#x} is not the allocator's");
    i
}
