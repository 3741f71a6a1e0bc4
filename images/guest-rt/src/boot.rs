//! The guest's first instructions, its boot parameters, and the call of
//! the program's main.
//!
//! The host enters `_start` (the ELF entry point) in ring 1 with `rdi` =
//! the guest-virtual address of the [`BootParams`], `rsp` = 0 and virtual
//! interrupts off, on the start-up tables (guest-virtual `KERNEL_OFFSET +
//! p` maps guest-physical `p`). `_start` loads our own stack, a static in
//! `.bss`, and calls [`rust_start`], which checks the parameters, registers
//! the runtime's own trap handlers (the timer) and calls the program's
//! main, declared with [`crate::entry!`]. What main returns is the guest's
//! exit code.

use crate::{exit_code, hypercall, println, time};
use core::sync::atomic::{AtomicPtr, Ordering};
use guest_abi::ABI_VERSION;
use guest_abi::boot::{BootParams, CMDLINE_MAX, IMAGE_MIN_GPA, KERNEL_OFFSET, MAGIC};
use guest_abi::shared::SharedPage;

/// Bytes of the boot stack, on which main and (while in ring 1) every
/// trap handler run.
pub const STACK_BYTES: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_BYTES]);

/// The boot stack. Only the assembly below names it (by symbol): Rust
/// never makes a reference to it.
static mut BOOT_STACK: Stack = Stack([0; STACK_BYTES]);

// `_start` comes first in .text (linker.ld puts .text.entry first).
core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".globl _start",
    "_start:",
    "    lea rsp, [rip + {stack} + {stack_bytes}]",
    // A zero frame pointer ends backtraces here.
    "    xor ebp, ebp",
    // rdi still holds the boot parameters' address: rust_start's argument.
    "    call {rust_start}",
    "    ud2",
    stack = sym BOOT_STACK,
    stack_bytes = const STACK_BYTES,
    rust_start = sym rust_start,
);

unsafe extern "Rust" {
    /// The program's main, defined by [`crate::entry!`].
    safe fn __rguest_main() -> u64;
}

/// Declares the guest program's main: a `fn() -> u64` whose result is the
/// guest's exit code (0 for success; keep your own codes below 100, the
/// runtime uses [`crate::exit_code`]).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The runtime calls this once the guest is set up.
        #[unsafe(no_mangle)]
        pub fn __rguest_main() -> u64 {
            let main: fn() -> u64 = $main;
            main()
        }
    };
}

/// Where the boot parameters are, once [`rust_start`] has checked them.
static BOOT_PARAMS: AtomicPtr<BootParams> = AtomicPtr::new(core::ptr::null_mut());

/// The Rust side of `_start`.
extern "C" fn rust_start(params: *const BootParams) -> ! {
    if let Err(why) = check(params) {
        println!("guest-rt: cannot start: {why}");
        hypercall::shutdown(exit_code::BAD_BOOT);
    }
    BOOT_PARAMS.store(params.cast_mut(), Ordering::Release);
    time::init();
    hypercall::shutdown(__rguest_main())
}

/// Whether `params` are boot parameters this runtime understands, in an
/// image laid out where the host put it.
fn check(params: *const BootParams) -> Result<(), &'static str> {
    if params.is_null() || !params.is_aligned() {
        return Err("the boot parameters' address is null or misaligned");
    }
    // SAFETY: the host promises a BootParams at this address, mapped by
    // the start-up tables, for the guest's whole life; it is aligned.
    let params = unsafe { &*params };
    if params.magic != MAGIC {
        return Err("the boot parameters have the wrong magic number");
    }
    if params.abi_version != ABI_VERSION {
        return Err("the host speaks another ABI version");
    }
    check_image_address(params)
}

/// Whether the image runs where it was linked (`linker.ld`) to run.
#[cfg(target_os = "none")]
fn check_image_address(_params: &BootParams) -> Result<(), &'static str> {
    unsafe extern "C" {
        /// The first byte of the image (linker.ld).
        static __image_start: u8;
    }
    if (&raw const __image_start) as u64 != KERNEL_OFFSET + IMAGE_MIN_GPA {
        return Err("linker.ld and guest_abi disagree on where the image is");
    }
    Ok(())
}

/// Whether the position-independent image runs where the host says it
/// relocated it: its ELF header (which the linker maps at link-time
/// address 0) must be at the load bias, and that at the image's place.
#[cfg(target_os = "hermit")]
fn check_image_address(params: &BootParams) -> Result<(), &'static str> {
    if image_header() != params.load_bias {
        return Err("the host's load bias is not where the image runs");
    }
    if params.load_bias != KERNEL_OFFSET + IMAGE_MIN_GPA {
        return Err("the host loaded the image somewhere guest_abi does not say");
    }
    Ok(())
}

/// The guest-virtual address of the image's own ELF header (which lld
/// names `__ehdr_start` when a loadable segment covers it): for a
/// position-independent image, its load bias.
#[cfg(target_os = "hermit")]
pub fn image_header() -> u64 {
    unsafe extern "C" {
        /// The ELF header, as the linker placed it.
        static __ehdr_start: u8;
    }
    (&raw const __ehdr_start) as u64
}

/// The boot parameters the host gave us.
pub fn params() -> &'static BootParams {
    let params = BOOT_PARAMS.load(Ordering::Acquire);
    assert!(!params.is_null(), "boot parameters asked for before start");
    // SAFETY: rust_start stored it after checking it; the host keeps the
    // page mapped and nothing in the guest writes it.
    unsafe { &*params }
}

/// The guest's command line: its argument in the host's `guests=` list
/// (`name/argument`). Empty if there is none or it is not UTF-8.
pub fn cmdline() -> &'static str {
    let params = params();
    let len = usize::try_from(params.cmdline_len).map_or(CMDLINE_MAX, |l| l.min(CMDLINE_MAX));
    core::str::from_utf8(&params.cmdline[..len]).unwrap_or("")
}

/// Bytes of guest memory.
pub fn memory_bytes() -> u64 {
    params().memory_bytes
}

/// The page shared with the host.
pub fn shared_page() -> *mut SharedPage {
    params().shared_page as *mut SharedPage
}

/// The guest-virtual address at which the start-up tables show
/// guest-physical `gpa`.
pub const fn kernel_virtual(gpa: u64) -> u64 {
    KERNEL_OFFSET + gpa
}
