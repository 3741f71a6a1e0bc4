//! The way in for an application processor: from the real mode a start-up
//! IPI leaves it in to `ap_main` in long mode, on the host's page tables.
//!
//! A start-up IPI starts a CPU in 16-bit real mode at the start of a page
//! below 1 MiB. So the first instructions must be copied there: [`install`]
//! picks two pages of usable RAM below 1 MiB from the loader's memory map
//! (the frame allocator never hands out the first MiB, so they are ours)
//! and puts the *trampoline* in the first, and a copy of the host's
//! top-level page table in the second. The rest of the way runs from the
//! kernel image, where it was linked:
//!
//! 1. `rguest_ap_trampoline` (16-bit, in the low page): loads a GDT that
//!    lives in the kernel image, turns on protected mode and far-jumps into
//!    the image, in 32-bit code.
//! 2. `rguest_ap_start32` (32-bit, paging off): checks it is the CPU the
//!    parameters ([`StartParams`]) are for, then enables PAE, loads CR3 with
//!    the low copy of the top-level table (a 32-bit `mov` to CR3 cannot name
//!    a table above 4 GiB, where the host's may be), sets EFER.LME (and NXE
//!    if the boot CPU has it: the host's tables use the NX bit, reserved
//!    without it), and turns on paging with write protection. Its code is in
//!    the kernel image, which the host's tables map where it lies, so the
//!    next instruction is found.
//! 3. `rguest_ap_start64` (long mode): loads the host's real CR3, the stack
//!    the boot CPU allocated for this CPU, and calls `ap_main(cpu)`.
//!
//! The boot CPU starts one processor at a time, so one [`StartParams`]
//! serves them all. It names the APIC id they are for, and the CPU with
//! that id claims them in step 2 (an atomic exchange of the id for
//! `CLAIMED`). A CPU that wakes up late, after the boot CPU took its
//! parameters back ([`withdraw`]) and maybe prepared them for the next,
//! finds another id or none, and stops in step 2 having touched nothing;
//! once a CPU has claimed them, the boot CPU cannot take them back, and
//! waits for it.
//!
//! The rest of what the boot CPU's boot did (its own GDT, TSS, IDT, the
//! CR0/CR4 bits of the FPU and of the protections) is `ap_main`'s, in Rust.

use crate::boot::{BootInfo, RegionKind};
use crate::memory::phys_to_virt;
use core::arch::global_asm;
use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use host::addr::{HostPhysAddr, PAGE_SIZE};

/// What the boot CPU tells the next processor it starts. Read by the 32-
/// and 64-bit steps of the trampoline (by offset: see the `const` operands
/// of the assembly), written only by the boot CPU, before the start-up IPI.
#[repr(C)]
struct StartParams {
    /// The (initial, 8-bit) local APIC id of the CPU these are for, or
    /// [`NOBODY`].
    apic_id: AtomicU32,
    /// The physical address of the low copy of the top-level page table.
    low_root: AtomicU32,
    /// EFER bits to set: LME, and NXE where the boot CPU has it.
    efer: AtomicU32,
    /// Padding, so the 64-bit fields are aligned.
    _reserved: AtomicU32,
    /// The host's top-level page table (CR3), anywhere in memory.
    root: AtomicU64,
    /// The top of the CPU's kernel stack.
    stack_top: AtomicU64,
    /// The CPU's index, `ap_main`'s argument.
    cpu: AtomicU64,
}

/// An APIC id no CPU has: the parameters are for nobody.
const NOBODY: u32 = u32::MAX;
/// Not an APIC id either: the CPU they were for has claimed them.
const CLAIMED: u32 = u32::MAX - 1;

static START: StartParams = StartParams {
    apic_id: AtomicU32::new(NOBODY),
    low_root: AtomicU32::new(0),
    efer: AtomicU32::new(0),
    _reserved: AtomicU32::new(0),
    root: AtomicU64::new(0),
    stack_top: AtomicU64::new(0),
    cpu: AtomicU64::new(0),
};

/// Selectors of the trampoline's GDT (`rguest_ap_gdt` below).
const CODE64: u16 = 0x08;
const DATA: u16 = 0x10;
const CODE32: u16 = 0x18;

/// CR0 for protected mode: PE, and ET (hard-wired to 1 anyway). Written
/// whole, not or-ed in: a CPU fresh from reset has CD and NW set, caches
/// off, and this clears them.
const CR0_PROTECTED: u32 = 0x11;
/// CR0 for long mode: PG, WP (ring 0 obeys read-only pages, as on the
/// boot CPU), ET, PE.
const CR0_PAGED: u32 = (1 << 31) | (1 << 16) | 0x11;
/// CR4.PAE: long mode's page tables.
const CR4_PAE: u32 = 1 << 5;
/// The EFER MSR, and its bits.
const IA32_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;
const EFER_NXE: u32 = 1 << 11;

global_asm!(
    r#"
    /* ---- Step 1, 16-bit: copied to the low page; the start-up IPI
       enters at its first byte with CS = page >> 4 and IP = 0. Only
       offsets within the blob and absolute addresses in the kernel image
       appear, so it runs wherever it is copied. */
    .pushsection .rodata.rguest_ap_trampoline, "a"
    .balign 16
    .code16
    .global rguest_ap_trampoline
rguest_ap_trampoline:
    cli
    cld
    /* DS = CS, so the blob reads its own data by offset. */
    mov %cs, %ax
    mov %ax, %ds
    /* The 32-bit form of lgdt: the GDT is in the kernel image, above 1 MiB. */
    lgdtl rguest_ap_gdt_pointer - rguest_ap_trampoline
    mov ${cr0_protected}, %eax
    mov %eax, %cr0
    /* A far jump with a 32-bit offset: loads CS from the new GDT (flat
       32-bit code) and goes to step 2, in the kernel image. */
    ljmpl ${code32}, $rguest_ap_start32
    .balign 4
rguest_ap_gdt_pointer:
    .short rguest_ap_gdt_end - rguest_ap_gdt - 1
    .long rguest_ap_gdt
    .global rguest_ap_trampoline_end
rguest_ap_trampoline_end:
    .popsection

    /* The trampoline's GDT: null, 64-bit code, flat data, flat 32-bit
       code. The accessed bits are set already (0x9b, 0x93): the CPU would
       otherwise write them when loading a selector, and once paging is on
       this read-only page would fault. */
    .pushsection .rodata.rguest_ap_gdt, "a"
    .balign 8
rguest_ap_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cf9b000000ffff
rguest_ap_gdt_end:
    .popsection

    .pushsection .text.rguest_ap_start, "ax"
    /* ---- Step 2, 32-bit protected mode, paging off: addresses are
       physical, and the kernel image lies at its link address. */
    .code32
rguest_ap_start32:
    mov ${data}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    /* Are the parameters ours? CPUID leaf 1 has this CPU's initial APIC
       id in EBX bits 31-24. If they name it, claim them, atomically: the
       id becomes CLAIMED, and the boot CPU, which can no longer withdraw
       them, waits for us. */
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %eax
    mov ${claimed}, %edx
    lock cmpxchg %edx, ({start} + {apic_id})
    jne 9f
    /* PAE, then the low copy of the host's top-level table. */
    mov %cr4, %eax
    or ${cr4_pae}, %eax
    mov %eax, %cr4
    mov ({start} + {low_root}), %eax
    mov %eax, %cr3
    /* EFER |= LME (and NXE, as the boot CPU). */
    mov ${efer_msr}, %ecx
    rdmsr
    or ({start} + {efer}), %eax
    wrmsr
    /* Paging on: long mode is active (in 32-bit compatibility mode)
       until the far jump loads the 64-bit code segment. */
    mov ${cr0_paged}, %eax
    mov %eax, %cr0
    ljmp ${code64}, $rguest_ap_start64
    /* Not the CPU the parameters are for: stop here, for good. */
9:  cli
    hlt
    jmp 9b

    /* ---- Step 3, long mode, on the host's tables (through the copy). */
    .code64
rguest_ap_start64:
    /* The host's real top-level table, wherever it is. */
    mov {start} + {root}(%rip), %rax
    mov %rax, %cr3
    mov {start} + {stack_top}(%rip), %rsp
    /* ap_main(cpu): the stack is 16-byte aligned before the call, as the
       ABI wants; a zero frame pointer ends backtraces here. */
    mov {start} + {cpu}(%rip), %rdi
    xor %ebp, %ebp
    call {ap_main}
8:  cli
    hlt
    jmp 8b
    .popsection
"#,
    start = sym START,
    ap_main = sym super::ap_main,
    apic_id = const offset_of!(StartParams, apic_id),
    claimed = const CLAIMED,
    low_root = const offset_of!(StartParams, low_root),
    efer = const offset_of!(StartParams, efer),
    root = const offset_of!(StartParams, root),
    stack_top = const offset_of!(StartParams, stack_top),
    cpu = const offset_of!(StartParams, cpu),
    code64 = const CODE64,
    data = const DATA,
    code32 = const CODE32,
    cr0_protected = const CR0_PROTECTED,
    cr0_paged = const CR0_PAGED,
    cr4_pae = const CR4_PAE,
    efer_msr = const IA32_EFER,
    options(att_syntax)
);

unsafe extern "C" {
    /// The 16-bit blob: from here to `rguest_ap_trampoline_end`.
    static rguest_ap_trampoline: u8;
    static rguest_ap_trampoline_end: u8;
}

/// The first address past the real-mode pages a start-up IPI can name
/// (vectors 0xa0-0xbf are reserved: the legacy video memory is there).
const START_PAGES_END: u64 = 0xa_0000;
/// Page 0 holds the real-mode interrupt table and the BIOS data area:
/// never used, even where the map calls it usable.
const FIRST_CANDIDATE: u64 = PAGE_SIZE;

/// The installed trampoline.
#[derive(Clone, Copy, Debug)]
pub struct Trampoline {
    /// The page of the 16-bit code.
    code: HostPhysAddr,
}

impl Trampoline {
    /// The start-up IPI's vector: the page number of the code.
    pub fn vector(&self) -> u8 {
        (self.code.as_u64() / PAGE_SIZE) as u8
    }

    /// The code page's physical address.
    pub fn address(&self) -> HostPhysAddr {
        self.code
    }
}

/// Why there is no trampoline.
#[derive(Debug)]
pub enum TrampolineError {
    /// No two pages of usable RAM below 640 KiB outside the boot modules.
    NoLowMemory,
    /// The pages did not keep what was written to them: not RAM.
    NotRam(HostPhysAddr),
}

impl fmt::Display for TrampolineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLowMemory => {
                f.write_str("no two free pages of usable RAM below 640 KiB for the trampoline")
            }
            Self::NotRam(at) => write!(f, "the trampoline page at {at} is not RAM"),
        }
    }
}

/// Puts the trampoline and the low copy of the top-level table `root` in
/// two low pages (see the module docs).
pub fn install(boot: &BootInfo, root: HostPhysAddr) -> Result<Trampoline, TrampolineError> {
    let code = choose_low_pages(boot).ok_or(TrampolineError::NoLowMemory)?;
    let table = HostPhysAddr::new(code.as_u64() + PAGE_SIZE);
    let blob = blob();
    // SAFETY: both pages are usable RAM below 1 MiB that the frame
    // allocator never hands out and that holds nothing we still need (the
    // loader's information was copied at boot; boot modules are avoided);
    // the direct map covers the first 2 MiB (it holds RAM). The blob is
    // shorter than a page (checked by `blob`), and the table is one page.
    unsafe {
        core::ptr::copy_nonoverlapping(blob.as_ptr(), phys_to_virt(code), blob.len());
        core::ptr::copy_nonoverlapping(phys_to_virt(root), phys_to_virt(table), PAGE_SIZE as usize);
    }
    if !holds(code, blob) {
        return Err(TrampolineError::NotRam(code));
    }
    // SAFETY: as above; both are now written, and only read here.
    let copied = unsafe { core::slice::from_raw_parts(phys_to_virt(root), PAGE_SIZE as usize) };
    if !holds(table, copied) {
        return Err(TrampolineError::NotRam(table));
    }
    START
        .low_root
        .store(table.as_u64() as u32, Ordering::Relaxed);
    START.root.store(root.as_u64(), Ordering::Relaxed);
    Ok(Trampoline { code })
}

/// The 16-bit code, as bytes to copy.
fn blob() -> &'static [u8] {
    let start = &raw const rguest_ap_trampoline;
    let end = &raw const rguest_ap_trampoline_end;
    let len = end as usize - start as usize;
    assert!(len as u64 <= PAGE_SIZE, "the trampoline fits in its page");
    // SAFETY: the assembly above defines both symbols around the blob, in
    // the kernel's read-only data, which lives for ever.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Whether physical memory at `at` reads back as `expected`.
fn holds(at: HostPhysAddr, expected: &[u8]) -> bool {
    // SAFETY: `at` is one of the two low pages `install` just wrote,
    // `expected.len()` bytes at most a page; reached by the direct map.
    let found = unsafe { core::slice::from_raw_parts(phys_to_virt(at), expected.len()) };
    found == expected
}

/// The lowest two consecutive pages, from page 1 up to 640 KiB, that the
/// memory map says are usable RAM and that no boot module or loader data
/// overlaps. Lowest, because it is the same on every boot of a machine
/// (usually 0x1000: a start-up vector of 1).
fn choose_low_pages(boot: &BootInfo) -> Option<HostPhysAddr> {
    let bytes = 2 * PAGE_SIZE;
    let usable = |start: u64| {
        boot.regions().iter().any(|r| {
            r.kind == RegionKind::Usable
                && r.start.as_u64() <= start
                && start + bytes <= r.end.as_u64()
        })
    };
    let overlaps = |start: u64, a: HostPhysAddr, b: HostPhysAddr| {
        start < b.as_u64() && a.as_u64() < start + bytes
    };
    let taken = |start: u64| {
        overlaps(start, boot.loader_data.start, boot.loader_data.end)
            || boot
                .modules()
                .iter()
                .any(|m| overlaps(start, m.start, m.end))
    };
    (FIRST_CANDIDATE..START_PAGES_END - bytes + 1)
        .step_by(PAGE_SIZE as usize)
        .find(|&start| usable(start) && !taken(start))
        .map(HostPhysAddr::new)
}

/// Fills in the parameters for starting CPU `cpu`, whose local APIC id is
/// `apic_id`, on the stack whose top is `stack_top`; `efer_nx`: whether to
/// turn on NX, as the boot CPU has.
pub fn prepare(cpu: usize, apic_id: u32, stack_top: u64, efer_nx: bool) {
    let efer = EFER_LME | if efer_nx { EFER_NXE } else { 0 };
    START.efer.store(efer, Ordering::Relaxed);
    START.stack_top.store(stack_top, Ordering::Relaxed);
    START.cpu.store(cpu as u64, Ordering::Relaxed);
    // Last, and released: whoever sees its id sees the rest.
    START.apic_id.store(apic_id, Ordering::Release);
}

/// Takes back the parameters prepared for `apic_id` if that CPU has not
/// claimed them: then no CPU can take them any more (one waking up now
/// stops in the trampoline), and `true`. `false`: the CPU has claimed them
/// and is on its way to `ap_main`; they must not be changed until it is
/// there.
pub fn withdraw(apic_id: u32) -> bool {
    START
        .apic_id
        .compare_exchange(apic_id, NOBODY, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}
