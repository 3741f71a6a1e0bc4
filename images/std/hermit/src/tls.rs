//! Thread-local storage: each thread's copy of the image's `PT_TLS`
//! segment, and the FS base that points at it.
//!
//! Code for the Hermit target reaches thread-locals the initial-exec way:
//! at fixed negative offsets from the thread pointer in the FS base (x86-64
//! TLS "variant II"). The block is the segment's initialised bytes
//! (`.tdata`) followed by zeros (`.tbss`), ending where the thread pointer
//! points, aligned as the segment asks; at the thread pointer sits the
//! thread control block, whose first word is the thread pointer itself (so
//! `mov %fs:0, ...` finds it). A thread's FS base is written with
//! `wrfsbase` when the host lets ring 1 do so (`feature::FSGSBASE`), else
//! by the `SetFsBase` hypercall.
//!
//! The segment is found in our own program headers, which the first
//! loadable segment of a position-independent image carries along with the
//! ELF header (lld names it `__ehdr_start`).

use crate::memory;
use core::alloc::Layout;
use core::ptr::NonNull;
use guest_abi::boot::feature;
use guest_abi::hypercall::Number;
use guest_rt::{boot, hypercall};

/// `p_type` of the thread-local segment.
const PT_TLS: u32 = 7;

/// Bytes of the thread control block: the self pointer, and room to spare.
const TCB_BYTES: usize = 64;

/// Where the template of a thread's block is in the image.
#[derive(Clone, Copy)]
struct Template {
    /// The initialised bytes (`.tdata`).
    image: *const u8,
    /// How many bytes are initialised.
    file_bytes: usize,
    /// Bytes of the whole block (`.tdata` + `.tbss`).
    memory_bytes: usize,
    /// The segment's own alignment (`p_align`, at least 1).
    align: usize,
}

/// The thread pointer's alignment: the control block's words, and room for
/// a segment aligned to less.
const THREAD_POINTER_ALIGN: usize = 16;

impl Template {
    /// Bytes from the block's start to the thread pointer: the size rounded
    /// up to the segment's own alignment, exactly as the linker computed
    /// every variable's offset from the thread pointer. Rounding to more
    /// would put every thread-local a few bytes off.
    fn offset(&self) -> usize {
        self.memory_bytes.next_multiple_of(self.align)
    }

    /// The thread pointer's place in the allocation: the offset rounded up
    /// to [`THREAD_POINTER_ALIGN`], so that the pointer is aligned for the
    /// control block while the block, which ends at it, starts where the
    /// segment's alignment wants it.
    fn thread_pointer_at(&self) -> usize {
        self.offset().next_multiple_of(THREAD_POINTER_ALIGN)
    }

    fn layout(&self) -> Option<Layout> {
        let align = self.align.max(THREAD_POINTER_ALIGN);
        Layout::from_size_align(self.thread_pointer_at() + TCB_BYTES, align).ok()
    }
}

/// The offsets of the ELF header fields and program header fields we read.
mod elf {
    pub const E_PHOFF: usize = 32;
    pub const E_PHENTSIZE: usize = 54;
    pub const E_PHNUM: usize = 56;
    pub const P_TYPE: usize = 0;
    pub const P_VADDR: usize = 16;
    pub const P_FILESZ: usize = 32;
    pub const P_MEMSZ: usize = 40;
    pub const P_ALIGN: usize = 48;
}

/// Reads a field of the loaded image.
///
/// # Safety
///
/// `base + offset` must be inside the loaded image and hold a `T`.
unsafe fn field<T: Copy>(base: u64, offset: usize) -> T {
    // SAFETY: the caller promises the address is in the image; the headers
    // are not aligned for every type, hence the unaligned read.
    unsafe { ((base as usize + offset) as *const T).read_unaligned() }
}

/// The image's `PT_TLS` segment, if it has one.
fn template() -> Option<Template> {
    let header = boot::image_header();
    // SAFETY: the host loaded the image with its headers (the first
    // loadable segment starts at the file's start), at the load bias
    // guest-rt checked, and maps it for the guest's whole life.
    unsafe {
        let table = header + field::<u64>(header, elf::E_PHOFF);
        let entry_bytes = usize::from(field::<u16>(header, elf::E_PHENTSIZE));
        let count = usize::from(field::<u16>(header, elf::E_PHNUM));
        (0..count)
            .map(|index| table + (index * entry_bytes) as u64)
            .find(|&entry| field::<u32>(entry, elf::P_TYPE) == PT_TLS)
            .map(|entry| Template {
                image: (header + field::<u64>(entry, elf::P_VADDR)) as *const u8,
                file_bytes: field::<u64>(entry, elf::P_FILESZ) as usize,
                memory_bytes: field::<u64>(entry, elf::P_MEMSZ) as usize,
                align: (field::<u64>(entry, elf::P_ALIGN) as usize).max(1),
            })
    }
}

/// One thread's thread-local block.
pub struct Block {
    allocation: NonNull<u8>,
    layout: Layout,
    /// The thread pointer, the value for the FS base.
    pub thread_pointer: u64,
}

// SAFETY: the block is plain memory owned by one thread's record; moving
// the record between threads of the scheduler moves nothing else.
unsafe impl Send for Block {}

impl Block {
    /// A fresh block: the template's bytes, zeros, the self pointer. `None`
    /// when memory is short.
    pub fn new() -> Option<Block> {
        let template = template().unwrap_or(Template {
            image: core::ptr::null(),
            file_bytes: 0,
            memory_bytes: 0,
            align: 1,
        });
        let layout = template.layout()?;
        let allocation = memory::allocate(layout)?;
        let start = allocation.as_ptr();
        // SAFETY: the allocation holds thread_pointer_at + TCB_BYTES bytes,
        // and the block (offset bytes ending at the thread pointer) starts
        // inside it; the template's bytes are in the loaded image,
        // `file_bytes <= memory_bytes <= offset`; the thread pointer is
        // 16-aligned (the allocation is, and so is its place in it), so its
        // self pointer fits.
        let thread_pointer = unsafe {
            start.write_bytes(0, layout.size());
            let thread_pointer = start.add(template.thread_pointer_at());
            let block = thread_pointer.sub(template.offset());
            if template.file_bytes > 0 {
                block.copy_from_nonoverlapping(template.image, template.file_bytes);
            }
            thread_pointer.cast::<u64>().write(thread_pointer as u64);
            thread_pointer as u64
        };
        Some(Block {
            allocation,
            layout,
            thread_pointer,
        })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the allocation is the one `new` made with this layout,
        // and the thread it served is gone (the scheduler drops a block
        // only once its thread has switched away for good).
        unsafe { memory::deallocate(self.allocation, self.layout) };
    }
}

/// Points the FS base at `thread_pointer`.
pub fn set_thread_pointer(thread_pointer: u64) {
    if boot::params().features & feature::FSGSBASE != 0 {
        // SAFETY: the host set CR4.FSGSBASE and keeps the FS base per
        // guest; the new base only changes where %fs-relative accesses go,
        // and the caller is switching to the thread that owns the block.
        unsafe {
            core::arch::asm!("wrfsbase {}", in(reg) thread_pointer, options(nostack, preserves_flags));
        }
    } else {
        // SAFETY: SetFsBase only sets the FS base (a canonical heap
        // address), for the same reason as above.
        let _ = unsafe { hypercall::raw(Number::SetFsBase, [thread_pointer, 0, 0, 0]) };
    }
}
