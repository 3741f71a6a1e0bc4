//! Several vCPUs: starting the guest's other vCPUs, each on a stack and
//! with a shared page of its own.
//!
//! A guest may run as many vCPUs as its boot parameters say
//! ([`vcpus`], the host's `guests=name:expect:vcpus=N`). vCPU 0 runs from
//! boot; [`start`] starts the others, in order (1, 2, ...), each once
//! (`guest_abi::hypercall::Number::StartVcpu`). A started vCPU runs its
//! [`Entry`] in ring 1, in the caller's address space, with a copy of the
//! caller's traps, virtual interrupts off and no kernel stack, on a stack
//! of [`STACK_BYTES`] from a static array here, with its own shared page
//! (also a static here, [`shared_page`]) in which the host keeps its
//! virtual interrupt flag, pending interrupts, fault address and MMU ring.
//! Everything the vCPUs share must be atomics (`core::sync::atomic`).
//!
//! # What a secondary vCPU may use
//!
//! The rest of the runtime was written for one vCPU, and what it keeps in
//! the shared page it looks for in the boot vCPU's (vCPU 0's). On a
//! secondary vCPU these work:
//!
//! - `print!`/`println!` and `hypercall::console_write` (a line per write,
//!   with no shared buffer), `hypercall::nop`, `hypercall::read_time`,
//!   `hypercall::bench_mark`, `hypercall::shutdown` (it ends the whole
//!   guest, every vCPU), and a panic (which prints and shuts down);
//! - `hypercall::mmu_op`, and `paging::set_entry`, `paging::map_page` with
//!   their reports made by that hypercall (never two vCPUs on the same
//!   tables at once: the runtime takes no lock); `paging::read_entry`;
//! - `time::cycles`, and `time::now_ns` (it reads the clock's scale from
//!   the boot vCPU's page, which the host writes once, before boot);
//! - `hypercall::set_timer` (each vCPU's timer is its own, but with its
//!   interrupts off it only ever sets its pending bit), [`shared_page`] of
//!   its own number, and [`park`].
//!
//! These do not (the first two do with `FSGSBASE`: see below): `irq` (it
//! would turn vCPU 0's interrupts on and off),
//! `time::sleep_ns`/`sleep_ms` and `hypercall::halt` as a wait for
//! something (a secondary vCPU has interrupts off; [`park`] halts with its
//! timer armed, for the host kills a guest whose vCPU halts with nothing to
//! wake it), `paging::ring` (vCPU 0's ring), and
//! `traps::fault_address` and so `probe` (vCPU 0's fault address).
//!
//! # Which vCPU am I? (with `FSGSBASE`)
//!
//! When the boot parameters announce `feature::FSGSBASE`, the first
//! [`start`] points each vCPU's GS base at a small block of its own
//! ([`PerVcpu`]: its shared page and its number): vCPU 0's at once, each
//! secondary's before its entry runs. From then on [`this_vcpu`] and
//! [`this_shared_page`] answer for the vCPU that asks, and `irq` (so
//! `time::sleep_ns`, `virtio::wait_until`) uses the asking vCPU's own
//! virtual interrupt flag: those work on every vCPU. The GS base is then
//! the runtime's; guest code must not write it. Without the feature (or
//! before any start) there is no such block: [`this_vcpu`] says 0 and the
//! runtime uses the boot vCPU's page, as above.

use crate::{boot, hypercall};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use guest_abi::boot::{KERNEL_OFFSET, feature};
use guest_abi::hypercall::{Error, TIMER_VECTOR};
use guest_abi::shared::{FIRST_VIRTUAL_IRQ, SharedPage};

/// The most vCPUs this module starts (the host allows up to 16).
pub const MAX_VCPUS: usize = 16;

/// Bytes of each secondary vCPU's stack.
pub const STACK_BYTES: usize = 16 * 1024;

/// What a secondary vCPU runs, given its number. It never returns: a vCPU
/// with nothing left to do calls [`park`] with its number.
pub type Entry = fn(vcpu: u64) -> !;

#[repr(C, align(16))]
struct Stack([u8; STACK_BYTES]);

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The secondary vCPUs' stacks, vCPU `k`'s at index `k - 1`. Rust never
/// makes a reference to them: only addresses, handed to the host.
static mut STACKS: [Stack; MAX_VCPUS - 1] = [const { Stack([0; STACK_BYTES]) }; MAX_VCPUS - 1];

/// Their shared pages, the same way. The host writes them at every entry
/// of their vCPU; the guest reads them through raw pointers only.
static mut SHARED_PAGES: [Page; MAX_VCPUS - 1] = [const { Page([0; 4096]) }; MAX_VCPUS - 1];

/// Whether vCPU `k`'s stack and page are handed out (by a start that
/// succeeded, or one under way), so no two starts ever share them.
static CLAIMED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// Each secondary vCPU's [`Entry`], as an address (0: none).
static ENTRIES: [AtomicUsize; MAX_VCPUS] = [const { AtomicUsize::new(0) }; MAX_VCPUS];

/// Bit `k` is set once vCPU `k` runs (vCPU 0 always does).
static RUNNING: AtomicU64 = AtomicU64::new(1);

/// What a vCPU's GS base points at (see "Which vCPU am I?"): read with
/// `gs`-relative loads, so the layout is fixed.
#[repr(C)]
pub struct PerVcpu {
    /// The guest-virtual address of this vCPU's shared page (offset 0).
    shared_page: AtomicU64,
    /// This vCPU's number (offset 8).
    vcpu: AtomicU64,
}

/// Each vCPU's [`PerVcpu`], by number; filled in before its GS base points
/// at it.
static PER_VCPU: [PerVcpu; MAX_VCPUS] = [const {
    PerVcpu {
        shared_page: AtomicU64::new(0),
        vcpu: AtomicU64::new(0),
    }
}; MAX_VCPUS];

/// Set once vCPU 0's GS base points at its [`PerVcpu`]: from then on
/// every vCPU's does (secondaries set theirs before anything else).
static GS_PER_VCPU: AtomicBool = AtomicBool::new(false);

/// How many vCPUs the host lets this guest run (at least 1, at most
/// [`MAX_VCPUS`]).
pub fn vcpus() -> u64 {
    boot::params().vcpus.clamp(1, MAX_VCPUS as u64)
}

/// Starts vCPU `vcpu` running `entry` on its own stack and shared page.
/// Fails as the host does (`InvalidArgument` for a number out of range,
/// already started or not the next one; `BadAddress` for an address it
/// refused), and with `InvalidArgument` for 0 or a number past
/// [`MAX_VCPUS`] without asking it.
pub fn start(vcpu: u64, entry: Entry) -> Result<(), Error> {
    let index = usize::try_from(vcpu)
        .ok()
        .filter(|&i| (1..MAX_VCPUS).contains(&i))
        .ok_or(Error::InvalidArgument)?;
    if CLAIMED[index].swap(true, Ordering::AcqRel) {
        return Err(Error::InvalidArgument);
    }
    ENTRIES[index].store(entry as usize, Ordering::Release);
    describe(index, page_address(index));
    if boot::params().features & feature::FSGSBASE != 0 && !GS_PER_VCPU.load(Ordering::Acquire) {
        describe(0, boot::shared_page() as u64);
        point_gs_at(0);
        GS_PER_VCPU.store(true, Ordering::Release);
    }
    // The ABI wants `rsp + 8` 16-aligned at a function's first instruction
    // (a call pushed the return address): the entry starts one word below
    // the aligned top, as if called.
    let rsp = stack_top(index) - 8;
    let page = physical(page_address(index));
    // SAFETY: `secondary_start` is our code, an `extern "C"` function of
    // the vCPU number that never returns; the stack and the page are
    // vCPU `index`'s alone, claimed above and never handed out again.
    let started =
        unsafe { hypercall::start_vcpu(vcpu, secondary_start as *const () as u64, rsp, page) };
    if let Err(e) = started {
        // Nothing runs on them: the next start of this number may.
        CLAIMED[index].store(false, Ordering::Release);
        return Err(e);
    }
    Ok(())
}

/// Whether vCPU `vcpu` has reached its entry (vCPU 0: always).
pub fn running(vcpu: u64) -> bool {
    vcpu < MAX_VCPUS as u64 && RUNNING.load(Ordering::Acquire) & (1 << vcpu) != 0
}

/// vCPU `vcpu`'s shared page: the boot one for 0, else the page [`start`]
/// gave it; `None` past [`MAX_VCPUS`]. Only that vCPU should use it (the
/// host reads and writes it at that vCPU's exits and entries).
pub fn shared_page(vcpu: u64) -> Option<*mut SharedPage> {
    match usize::try_from(vcpu).ok()? {
        0 => Some(boot::shared_page()),
        index if index < MAX_VCPUS => Some(page_address(index) as *mut SharedPage),
        _ => None,
    }
}

/// Whether each vCPU's GS base points at its [`PerVcpu`] (see "Which
/// vCPU am I?"): `FSGSBASE`, and a vCPU started.
#[inline]
pub fn per_vcpu() -> bool {
    GS_PER_VCPU.load(Ordering::Relaxed)
}

/// The number of the vCPU that asks; 0 unless [`per_vcpu`].
#[inline]
pub fn this_vcpu() -> u64 {
    if per_vcpu() { gs_word::<8>() } else { 0 }
}

/// The shared page of the vCPU that asks (the boot one unless
/// [`per_vcpu`]).
#[inline]
pub fn this_shared_page() -> *mut SharedPage {
    if per_vcpu() {
        gs_word::<0>() as *mut SharedPage
    } else {
        boot::shared_page()
    }
}

/// The word at `OFFSET` in this vCPU's [`PerVcpu`].
#[inline(always)]
fn gs_word<const OFFSET: usize>() -> u64 {
    let word: u64;
    // SAFETY: only called once `per_vcpu`: this vCPU's GS base points at
    // its PerVcpu (a static, for the guest's life), which holds OFFSET.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[{offset}]",
            out(reg) word,
            offset = const OFFSET,
            options(nostack, readonly, preserves_flags),
        );
    }
    word
}

/// Fills in vCPU `index`'s [`PerVcpu`] before its GS base points there.
fn describe(index: usize, shared_page: u64) {
    PER_VCPU[index]
        .shared_page
        .store(shared_page, Ordering::Release);
    PER_VCPU[index].vcpu.store(index as u64, Ordering::Release);
}

/// Points this vCPU's GS base at `PER_VCPU[index]`.
fn point_gs_at(index: usize) {
    let block = &raw const PER_VCPU[index] as u64;
    // SAFETY: FSGSBASE is on (the callers check it, or that vCPU 0 found
    // it), so ring 1 may write the GS base, which the host keeps per
    // vCPU; nothing in the guest uses GS but the loads above.
    unsafe {
        core::arch::asm!("wrgsbase {}", in(reg) block, options(nostack, preserves_flags));
    }
}

/// How long [`park`] sleeps at a time.
pub const PARK_NS: u64 = 1_000_000_000;

/// Sleeps for good: what vCPU `vcpu` (the caller: its own number) does
/// when its work is over, costing no CPU. The host kills a guest whose
/// vCPU halts with nothing to wake it, so each halt has the vCPU's own
/// timer armed ([`PARK_NS`]); its interrupts stay off, so the timer's
/// interrupt stays pending, and is cleared here before the next halt.
pub fn park(vcpu: u64) -> ! {
    let timer_bit = 1u64 << (TIMER_VECTOR - FIRST_VIRTUAL_IRQ);
    let page = shared_page(vcpu).unwrap_or_else(boot::shared_page);
    // SAFETY: the caller's own shared page, mapped for the guest's life
    // and 8-byte aligned; the host touches it only while this vCPU is
    // stopped, so atomic accesses from it never race the host.
    let pending = unsafe { AtomicU64::from_ptr(&raw mut (*page).irq_pending) };
    loop {
        pending.fetch_and(!timer_bit, Ordering::SeqCst);
        if hypercall::set_timer(PARK_NS).is_err() {
            // No timer: a halt would be our end, so wait awake.
            core::hint::spin_loop();
            continue;
        }
        hypercall::halt();
    }
}

/// The top of vCPU `index`'s stack (16-aligned).
fn stack_top(index: usize) -> u64 {
    let stacks = (&raw mut STACKS).cast::<Stack>();
    stacks.wrapping_add(index - 1).wrapping_add(1) as u64
}

/// The guest-virtual address of vCPU `index`'s shared page.
fn page_address(index: usize) -> u64 {
    let pages = (&raw mut SHARED_PAGES).cast::<Page>();
    pages.wrapping_add(index - 1) as u64
}

/// The guest-physical address behind a guest-virtual address of the image:
/// the image runs where the start-up map shows its load address
/// (`boot` checks it).
fn physical(vaddr: u64) -> u64 {
    vaddr - KERNEL_OFFSET
}

/// Where a secondary vCPU starts: `rdi` holds its number (the host's
/// contract), the stack is its own. Marks it running and calls its entry.
extern "C" fn secondary_start(vcpu: u64) -> ! {
    let index = usize::try_from(vcpu).unwrap_or(MAX_VCPUS);
    let entry = ENTRIES.get(index).map_or(0, |e| e.load(Ordering::Acquire));
    assert!(entry != 0, "vCPU {vcpu} started with no entry");
    if per_vcpu() {
        point_gs_at(index);
    }
    RUNNING.fetch_or(1 << index, Ordering::AcqRel);
    // SAFETY: a nonzero entry was stored from an `Entry` by `start`, and
    // function pointers survive a round trip through usize.
    let entry: Entry = unsafe { core::mem::transmute::<usize, Entry>(entry) };
    entry(vcpu)
}
