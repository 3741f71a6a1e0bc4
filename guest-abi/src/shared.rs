//! The shared data page: state the guest and host both read and write
//! without a hypercall.
//!
//! Exits are expensive, so the cheapest things travel through one page of
//! guest memory that the host reads and writes at every exit. The guest's
//! interrupt-enable flag is the important one: `cli` and `sti` cannot run in
//! ring 1, so the guest's kernel clears and sets [`SharedPage::irq_enabled`]
//! instead, and the host delivers a virtual interrupt only while it is 1.
//! The host never trusts a value here: the guest may scribble on all of it.

/// The layout of the shared page (guest-physical address and guest-virtual
/// address in [`crate::boot::BootParams`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedPage {
    /// The guest's virtual interrupt flag: nonzero = interrupts enabled.
    /// Written by the guest (its `sti`/`cli`), cleared by the host when it
    /// delivers an interrupt.
    pub irq_enabled: u64,
    /// Pending virtual interrupts, bit `n` for vector `32 + n`. The host sets
    /// bits, and clears one when it delivers it.
    pub irq_pending: u64,
    /// The faulting address of the last page fault the host reflected into
    /// the guest (the guest's CR2).
    pub fault_address: u64,
    /// Nanoseconds since the host booted, refreshed at every entry.
    pub time_ns: u64,
    /// Nonzero while the guest handles a virtual interrupt: set by the host
    /// when it delivers one to a handler that runs with virtual interrupts
    /// off (registered as an interrupt), cleared by the guest when that
    /// handler is done
    /// (its end of interrupt, after interrupts are back on, so that the
    /// exit which takes the next pending one still counts). The host uses
    /// it only to tell the exits an interrupt caused from the guest's own
    /// in its measurements (`bench events`), never to decide anything.
    pub in_interrupt: u64,
    /// The host's clock, readable without an exit: the host's nanoseconds
    /// since boot are `((tsc - clock_tsc_base) * clock_ns_per_cycle) >> 32`
    /// (a 128-bit product) for a `tsc` read with `rdtsc`, the same
    /// arithmetic the host's own clock does. Written by the host before the
    /// guest starts; 0 in `clock_ns_per_cycle` means the guest must ask with
    /// [`crate::hypercall::Number::ReadTime`].
    pub clock_tsc_base: u64,
    /// Nanoseconds per TSC cycle, as a 32.32 fixed-point number.
    pub clock_ns_per_cycle: u64,
    /// Free guest pages lent to the host for zero-on-demand entries.
    pub zero_pool: ZeroPool,
    /// Reserved, zero.
    pub reserved: [u64; 55],
    /// The page-table operation ring (see [`crate::pte`]), 1 KiB in.
    pub mmu_ring: [u8; crate::pte::ring::RING_BYTES as usize],
}

/// Pages in a [`ZeroPool`].
pub const ZERO_POOL_SLOTS: u64 = 64;

/// Free guest pages the guest lends the host, which maps them, zeroed, at
/// faults on zero-on-demand entries (see [`crate::pte`], "Pages the host
/// fills with zeros"). A ring like the MMU ring: both counts run freely.
///
/// The guest puts the `n`th page it lends in `pages[n % ZERO_POOL_SLOTS]`
/// and then counts it in `given`, never more than [`ZERO_POOL_SLOTS`]
/// ahead of `taken`. The host takes `pages[taken % ZERO_POOL_SLOTS]` while
/// `taken != given`, and counts it in `taken`. A page must be a
/// page-aligned guest-physical address in guest memory; the host kills a
/// guest that lends anything else, or whose `given` is more than a pool
/// ahead of `taken`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ZeroPool {
    /// Pages ever lent (the guest's count).
    pub given: u64,
    /// Pages ever taken (the host's count).
    pub taken: u64,
    /// The pages, by count modulo [`ZERO_POOL_SLOTS`].
    pub pages: [u64; ZERO_POOL_SLOTS as usize],
}

/// The vector of virtual interrupt 0 (bit 0 of [`SharedPage::irq_pending`]).
pub const FIRST_VIRTUAL_IRQ: u8 = 32;

/// Whether `vector` can be a virtual interrupt: one of the 64 vectors
/// [`SharedPage::irq_pending`] has a bit for (any other vector that reaches
/// a guest is an exception or a direct trap).
pub const fn is_virtual_irq(vector: u8) -> bool {
    vector >= FIRST_VIRTUAL_IRQ && vector - FIRST_VIRTUAL_IRQ < 64
}

/// Byte offsets of the fields, for code that reaches the page by address.
pub mod offset {
    use super::SharedPage;
    use core::mem::offset_of;

    /// [`SharedPage::irq_enabled`].
    pub const IRQ_ENABLED: u64 = offset_of!(SharedPage, irq_enabled) as u64;
    /// [`SharedPage::irq_pending`].
    pub const IRQ_PENDING: u64 = offset_of!(SharedPage, irq_pending) as u64;
    /// [`SharedPage::fault_address`].
    pub const FAULT_ADDRESS: u64 = offset_of!(SharedPage, fault_address) as u64;
    /// [`SharedPage::in_interrupt`].
    pub const IN_INTERRUPT: u64 = offset_of!(SharedPage, in_interrupt) as u64;
    /// [`SharedPage::time_ns`].
    pub const TIME_NS: u64 = offset_of!(SharedPage, time_ns) as u64;
    /// [`SharedPage::clock_tsc_base`].
    pub const CLOCK_TSC_BASE: u64 = offset_of!(SharedPage, clock_tsc_base) as u64;
    /// [`SharedPage::clock_ns_per_cycle`].
    pub const CLOCK_NS_PER_CYCLE: u64 = offset_of!(SharedPage, clock_ns_per_cycle) as u64;
    /// [`SharedPage::zero_pool`]'s `given`.
    pub const ZERO_POOL_GIVEN: u64 = offset_of!(SharedPage, zero_pool.given) as u64;
    /// [`SharedPage::zero_pool`]'s `taken`.
    pub const ZERO_POOL_TAKEN: u64 = offset_of!(SharedPage, zero_pool.taken) as u64;
    /// [`SharedPage::zero_pool`]'s `pages`.
    pub const ZERO_POOL_PAGES: u64 = offset_of!(SharedPage, zero_pool.pages) as u64;
    /// [`SharedPage::mmu_ring`].
    pub const MMU_RING: u64 = offset_of!(SharedPage, mmu_ring) as u64;
}

const _: () = assert!(size_of::<SharedPage>() <= 4096);
const _: () = assert!(offset::MMU_RING == 1024);
