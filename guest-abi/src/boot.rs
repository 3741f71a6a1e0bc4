//! How a guest starts: its memory, its entry state, its boot parameters.
//!
//! The host loads the guest kernel's ELF image into guest memory at the
//! segments' physical addresses, writes a [`BootParams`] page at
//! [`BOOT_PARAMS_GPA`], and enters the ELF entry point in ring 1 with
//! `rdi` = the boot parameters' guest-virtual address, virtual interrupts
//! off, and an address space in which guest-physical address `p` appears at
//! guest-virtual [`KERNEL_OFFSET`]` + p` (the start-up map, supervisor-only,
//! writable, executable, for all of guest memory up to 1 GiB). `rsp` is 0:
//! the guest's first instructions load a stack of its own. The guest sets
//! up its own stack, IDT entries (hypercalls) and, later, its own tables.
//! Its code and stack segments are the [`selector`]s below.
//!
//! The rest of its CPU state is its own from the start, and stays its own
//! whatever other guests run in between: the x87 FPU, MMX and SSE (usable
//! from ring 1 and ring 3) start clean, as after `fninit` with MXCSR at
//! 0x1f80 and every register zero, and `ds`, `es`, `fs` and `gs` start
//! null (their bases are always 0: the GDT's segments are flat, and ring 1
//! cannot write the base registers). There is no LDT: a selector naming it
//! (bit 2 set) raises `#GP`, reflected to the guest like any other.
//!
//! The image is either linked at its load address (`ET_EXEC`: each
//! segment's virtual address is the start-up map's for its physical one) or
//! position-independent (`ET_DYN`, such as Rust's `x86_64-unknown-hermit`
//! executables): then the host loads it at guest-physical [`IMAGE_MIN_GPA`]
//! plus each segment's virtual address, applies its `R_X86_64_RELATIVE`
//! relocations (the only kind it accepts) for the virtual base
//! [`KERNEL_OFFSET`]` + `[`IMAGE_MIN_GPA`], and says so in
//! [`BootParams::load_bias`]. A `PT_TLS` segment is left to the guest: it
//! sets up its own thread-local storage and its FS base.
//!
//! An image says which ABI it was built for in an ELF note ([`NOTE_NAME`],
//! [`NOTE_TYPE_ABI_VERSION`]); the host refuses an image without the note or
//! with another version.

/// Where the start-up map puts guest-physical 0.
pub const KERNEL_OFFSET: u64 = 0xffff_8000_0000_0000;

/// Guest-physical address of the boot parameters page.
pub const BOOT_PARAMS_GPA: u64 = 0x1000;

/// Guest-physical address of the shared data page.
pub const SHARED_PAGE_GPA: u64 = 0x2000;

/// Guest-physical address of the start-up page tables the host builds: the
/// top-level table here, then one third-level table, then as many
/// second-level tables as the start-up map needs (2 MiB entries, marked
/// accessed and dirty). The guest may keep using them, or build its own and
/// switch with [`crate::hypercall::Number::SetRoot`].
pub const STARTUP_TABLES_GPA: u64 = 0x3000;

/// Guest images load at or above this guest-physical address.
pub const IMAGE_MIN_GPA: u64 = 0x10_0000;

/// The name of the ELF note that carries the ABI version.
pub const NOTE_NAME: &[u8] = b"rguest\0";

/// The type of that note; its payload is the `u32` [`crate::ABI_VERSION`].
pub const NOTE_TYPE_ABI_VERSION: u32 = 1;

/// The segment selectors of the guest's descriptor table (the host's guest
/// GDT, the same on every CPU). The guest never loads a descriptor table of
/// its own (`lgdt` is privileged), so these are the selectors its code runs
/// with, and the ones it puts in an `iretq` frame to enter its user code.
/// The requested privilege level is in each selector's low two bits: the
/// guest kernel runs in ring 1, its user code in ring 3.
pub mod selector {
    /// The guest kernel's 64-bit code segment (GDT entry 3, ring 1).
    pub const KERNEL_CODE: u16 = (3 << 3) | 1;
    /// The guest kernel's data and stack segment (GDT entry 4, ring 1).
    pub const KERNEL_DATA: u16 = (4 << 3) | 1;
    /// Guest user data and stack (GDT entry 5, ring 3). It comes before the
    /// user code segment, in the order `sysret` would want.
    pub const USER_DATA: u16 = (5 << 3) | 3;
    /// Guest user 64-bit code (GDT entry 6, ring 3).
    pub const USER_CODE: u16 = (6 << 3) | 3;

    const _: () = assert!(KERNEL_CODE == 0x19 && KERNEL_DATA == 0x21);
    const _: () = assert!(USER_DATA == 0x2b && USER_CODE == 0x33);
}

/// `BootParams::magic`: "RGST".
pub const MAGIC: u32 = u32::from_le_bytes(*b"RGST");

/// Longest guest command line.
pub const CMDLINE_MAX: usize = 256;

/// What the host tells a starting guest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootParams {
    /// [`MAGIC`].
    pub magic: u32,
    /// The host's [`crate::ABI_VERSION`].
    pub abi_version: u32,
    /// Bytes of guest memory (guest-physical `0..memory_bytes`).
    pub memory_bytes: u64,
    /// Guest-virtual address of the [`crate::shared::SharedPage`].
    pub shared_page: u64,
    /// First guest-physical byte after the loaded image: free memory starts
    /// here.
    pub image_end: u64,
    /// Guest-physical address of the top-level table in use at entry (the
    /// start-up tables at [`STARTUP_TABLES_GPA`]).
    pub initial_root: u64,
    /// Bytes of the command line used.
    pub cmdline_len: u64,
    /// The guest's command line (its argument from the host's `guests=`).
    pub cmdline: [u8; CMDLINE_MAX],
    /// What the CPU lets the guest do beyond the baseline ([`feature`]
    /// bits).
    pub features: u64,
    /// For a position-independent image (`ET_DYN`): the guest-virtual
    /// address its link-time address 0 was loaded at, after the host applied
    /// its relocations. 0 for an image linked at its load address.
    pub load_bias: u64,
    /// Guest-physical address of device 0's page ([`crate::virtio`]), 0 if
    /// the guest has no devices; device `i`'s page follows at `i` pages.
    pub virtio_devices: u64,
    /// How many devices there are.
    pub virtio_device_count: u64,
    /// How many vCPUs the guest may run (its `vcpus=` on the host's command
    /// line, 1 by default): vCPU 0 runs from boot, the others start with
    /// [`crate::hypercall::Number::StartVcpu`].
    pub vcpus: u64,
}

/// Bits of [`BootParams::features`].
pub mod feature {
    /// `rdfsbase`, `wrfsbase`, `rdgsbase` and `wrgsbase` work in every ring
    /// (CR4.FSGSBASE is on), and the host keeps each guest's FS and GS
    /// bases apart. Without it, a guest sets its FS base with
    /// [`crate::hypercall::Number::SetFsBase`] and its GS base not at all.
    pub const FSGSBASE: u64 = 1 << 0;
}
