//! The heap: `talc` over all guest memory after the image.
//!
//! The host loads the image from guest-physical 1 MiB up and says where it
//! ends (`BootParams::image_end`); everything from there to the end of
//! guest memory is ours, and the start-up map already shows it at
//! `KERNEL_OFFSET + p`. So the heap is that one run, claimed once; std's
//! allocations (`sys_malloc` and friends, which take the alignment), thread
//! stacks and thread-local blocks all come from it.
//!
//! An allocation std asks for and cannot get is remembered, so that the
//! abort that follows can say the guest ran out of memory
//! ([`last_failure`]).

use crate::sync::IrqLock;
use core::alloc::Layout;
use core::ptr::{NonNull, null_mut};
use talc::DefaultBinning;
use talc::base::Talc;
use talc::source::Manual;

struct Heap {
    talc: Talc<Manual, DefaultBinning>,
    /// Bytes claimed.
    bytes: usize,
    /// std's last allocation that failed.
    last_failure: Option<Failure>,
}

/// An allocation that could not be made.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// Bytes asked for.
    pub size: usize,
    /// Their alignment.
    pub align: usize,
    /// Bytes of the whole heap.
    pub heap_bytes: usize,
}

static HEAP: IrqLock<Heap> = IrqLock::new(Heap {
    talc: Talc::new(Manual),
    bytes: 0,
    last_failure: None,
});

/// Gives the heap guest-physical `start..end` (seen through the start-up
/// map). Returns the bytes claimed, 0 if there was no room for a heap.
pub fn init(start_gpa: u64, end_gpa: u64) -> usize {
    let base = guest_rt::boot::kernel_virtual(start_gpa) as *mut u8;
    let bytes = usize::try_from(end_gpa.saturating_sub(start_gpa)).unwrap_or(0);
    HEAP.with(|heap| {
        // SAFETY: the boot parameters give this memory to the guest, past
        // the image and the host's pages; the start-up map shows it
        // writable at this address, and nothing else in the guest uses it.
        let claimed = unsafe { heap.talc.claim(base, bytes) };
        heap.bytes = if claimed.is_some() { bytes } else { 0 };
        heap.bytes
    })
}

/// Allocates `layout` for the runtime itself (stacks, thread-local
/// blocks); `None` when there is no room. Not recorded as a failure: the
/// runtime turns it into an error for the program.
pub fn allocate(layout: Layout) -> Option<NonNull<u8>> {
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: the size is nonzero, as talc requires.
    HEAP.with(|heap| unsafe { heap.talc.allocate(layout) })
}

/// Gives back what [`allocate`] gave.
///
/// # Safety
///
/// `pointer` came from [`allocate`] with this `layout`, and is not used
/// again.
pub unsafe fn deallocate(pointer: NonNull<u8>, layout: Layout) {
    // SAFETY: the caller promises the allocation is ours and done with.
    HEAP.with(|heap| unsafe { heap.talc.deallocate(pointer.as_ptr(), layout) });
}

/// std's last allocation that failed, if one did.
pub fn last_failure() -> Option<Failure> {
    HEAP.with(|heap| heap.last_failure)
}

/// An allocation for std, remembered if it fails.
fn allocate_for_std(size: usize, align: usize) -> *mut u8 {
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return null_mut();
    };
    match allocate(layout) {
        Some(pointer) => pointer.as_ptr(),
        None => {
            remember_failure(layout);
            null_mut()
        }
    }
}

fn remember_failure(layout: Layout) {
    HEAP.with(|heap| {
        heap.last_failure = Some(Failure {
            size: layout.size(),
            align: layout.align(),
            heap_bytes: heap.bytes,
        });
    });
}

/// `malloc(size, align)`: null when it cannot.
#[unsafe(no_mangle)]
pub extern "C" fn sys_malloc(size: usize, align: usize) -> *mut u8 {
    allocate_for_std(size, align)
}

/// `alloc(size, align)`: as `malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_alloc(size: usize, align: usize) -> *mut u8 {
    allocate_for_std(size, align)
}

/// `alloc_zeroed(size, align)`: as `malloc`, the bytes zeroed.
#[unsafe(no_mangle)]
pub extern "C" fn sys_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let pointer = allocate_for_std(size, align);
    if !pointer.is_null() {
        // SAFETY: the allocation just made holds `size` bytes.
        unsafe { pointer.write_bytes(0, size) };
    }
    pointer
}

/// `free(ptr, size, align)`.
///
/// # Safety
///
/// `ptr` came from `sys_malloc` (or `sys_realloc`) with this size and
/// alignment, and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_free(ptr: *mut u8, size: usize, align: usize) {
    let (Some(pointer), Ok(layout)) = (NonNull::new(ptr), Layout::from_size_align(size, align))
    else {
        return;
    };
    if size > 0 {
        // SAFETY: the caller promises it is an allocation of ours.
        unsafe { deallocate(pointer, layout) };
    }
}

/// `dealloc(ptr, size, align)`: as `free`.
///
/// # Safety
///
/// As for [`sys_free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: the same contract.
    unsafe { sys_free(ptr, size, align) }
}

/// `realloc(ptr, size, align, new_size)`: in place when talc can, else a
/// new allocation and a copy; null (the old one kept) when it cannot.
///
/// # Safety
///
/// `ptr` came from `sys_malloc` (or `sys_realloc`) with `size` and `align`;
/// on success it is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_realloc(
    ptr: *mut u8,
    size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    let (Some(old), Ok(old_layout), Ok(new_layout)) = (
        NonNull::new(ptr),
        Layout::from_size_align(size, align),
        Layout::from_size_align(new_size, align),
    ) else {
        return null_mut();
    };
    if size == 0 || new_size == 0 {
        return null_mut();
    }
    // SAFETY: the caller promises `old` is ours with `old_layout`; the new
    // size is nonzero.
    let in_place = HEAP.with(|heap| unsafe {
        heap.talc
            .try_realloc_in_place(old.as_ptr(), old_layout, new_size)
    });
    if in_place {
        return ptr;
    }
    let Some(new) = allocate(new_layout) else {
        remember_failure(new_layout);
        return null_mut();
    };
    // SAFETY: both allocations are live, distinct, and hold at least the
    // smaller of the two sizes (growing, since shrinking is always done in
    // place); the old one is ours to give back.
    unsafe {
        new.as_ptr()
            .copy_from_nonoverlapping(old.as_ptr(), size.min(new_size));
        deallocate(old, old_layout);
    }
    new.as_ptr()
}
