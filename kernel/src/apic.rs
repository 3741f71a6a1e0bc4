//! Time: the local APIC timer, calibrated against the PIT, and the TSC rate.
//!
//! The host needs a timer to take the CPU back from guests that do not give
//! it up (a guest spinning with its virtual interrupts off is still
//! preempted by this real interrupt), and it needs to know how fast its
//! clocks run. The timer is one-shot: the run loop arms it for the next
//! moment something is due (the end of a time slice while another guest
//! waits, a guest's own virtual timer, the end of its budget) with
//! [`arm_timer`], so a guest computing alone is not interrupted for
//! nothing, and a guest's timer fires when it is due rather than at the
//! next tick of a fixed period. The local APIC timer and the TSC run at rates no register
//! tells us, so we count both across a few milliseconds of the one clock
//! whose rate is fixed by the PC's design: the 8254 PIT at 1.193182 MHz.
//!
//! Under an emulator all three clocks are the host machine's wall time, and
//! the emulator can be descheduled at any moment: a stall that falls
//! between starting the PIT and reading the TSC shortens the window we
//! measure and makes every clock look slower than it is (a long one would
//! make the tick period collapse). So we measure three times and keep the
//! median, which one stall cannot move.
//!
//! The legacy 8259 PICs are moved out of the exception vectors and masked:
//! all interrupts arrive through the local APIC.
//!
//! Every CPU has a local APIC of its own, at the same physical address (each
//! CPU sees its own there), so one mapping serves them all. [`init`] runs on
//! the boot CPU: it maps the registers, calibrates, and sets up its own
//! APIC with [`init_this_cpu`], which each application processor runs too
//! (`smp.rs`). The calibration is shared: every CPU's timer counts the same
//! bus clock. The registers are reached the way the firmware left the APIC:
//! through the mapped page (xAPIC, what QEMU and most firmware hand over),
//! or through MSRs when it is already in x2APIC mode. The boot CPU starts
//! the others with inter-processor interrupts ([`send_init`],
//! [`send_startup`]) timed with [`delay_us`], and once guests run, tells a
//! CPU to pick again with another ([`send_reschedule`]).

use crate::interrupts::{RESCHEDULE_VECTOR, SHOOTDOWN_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::memory::paging::map_mmio;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use host::addr::HostPhysAddr;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Local APIC register offsets (Intel SDM vol. 3, table 11-1).
mod reg {
    pub const EOI: usize = 0xb0;
    pub const SPURIOUS: usize = 0xf0;
    pub const LVT_TIMER: usize = 0x320;
    pub const TIMER_INITIAL: usize = 0x380;
    pub const TIMER_CURRENT: usize = 0x390;
    pub const TIMER_DIVIDE: usize = 0x3e0;
    pub const TASK_PRIORITY: usize = 0x80;
    pub const ID: usize = 0x20;
    /// The interrupt command register: low half (xAPIC; the whole
    /// register in x2APIC mode) and destination half.
    pub const ICR_LOW: usize = 0x300;
    pub const ICR_HIGH: usize = 0x310;
}

/// Interrupt command bits (Intel SDM vol. 3, "Interrupt Command Register").
mod icr {
    /// Delivery mode INIT.
    pub const INIT: u32 = 0b101 << 8;
    /// Delivery mode start-up (SIPI); the vector is the start page number.
    pub const STARTUP: u32 = 0b110 << 8;
    /// Level: assert (required set for every mode but INIT de-assert).
    pub const ASSERT: u32 = 1 << 14;
    /// xAPIC only: the previous command is still being sent.
    pub const SEND_PENDING: u32 = 1 << 12;
}

const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE bit 10: the APIC is in x2APIC mode.
const X2APIC_ENABLED: u64 = 1 << 10;
/// x2APIC mode: register at xAPIC offset `o` is MSR `X2APIC_MSR_BASE + o / 16`.
const X2APIC_MSR_BASE: u32 = 0x800;
const PIT_HZ: u64 = 1_193_182;
/// The length of one calibration window, and how many are taken (the
/// median counts): together about as long as one 10 ms window was.
const CALIBRATION_MS: u64 = 3;
const CALIBRATION_RUNS: usize = 3;
/// LVT mask bit.
const MASKED: u32 = 1 << 16;

static APIC_BASE: AtomicUsize = AtomicUsize::new(0);
/// The firmware left the APIC in x2APIC mode: registers are MSRs.
static X2APIC: AtomicBool = AtomicBool::new(false);
/// Timer interrupts taken.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// APIC timer counts per nanosecond, 32.32 fixed point (set by `init`).
static COUNTS_PER_NS: AtomicU64 = AtomicU64::new(0);
/// The TSC's rate (set by `init`), for [`uptime_ms`].
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// What calibration measured.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    /// The TSC's rate.
    pub tsc_hz: u64,
    /// The APIC timer's input rate after its divider (16).
    pub apic_timer_hz: u64,
}

/// Why the timer could not be set up.
#[derive(Debug)]
pub enum ApicError {
    /// CPUID says there is no local APIC.
    NoApic,
    /// Its registers could not be mapped.
    Map,
    /// The PIT did not count (no PIT, or a broken one).
    NoPit,
}

/// Maps the local APIC, masks the PICs, calibrates, and leaves the timer in
/// one-shot mode, unarmed. Interrupts stay off; the caller enables them.
pub fn init(has_apic: bool) -> Result<Clocks, ApicError> {
    if !has_apic {
        return Err(ApicError::NoApic);
    }
    disable_legacy_pics();
    // SAFETY: reading IA32_APIC_BASE has no side effects; CPUID said the
    // APIC (and so the MSR) exists.
    let base_msr = unsafe { Msr::new(IA32_APIC_BASE).read() };
    X2APIC.store(base_msr & X2APIC_ENABLED != 0, Ordering::Relaxed);
    let phys = HostPhysAddr::new(base_msr & 0x000f_ffff_ffff_f000);
    let virt = map_mmio(phys, 4096).map_err(|_| ApicError::Map)?;
    APIC_BASE.store(virt.as_u64() as usize, Ordering::Release);

    init_this_cpu();

    let (tsc_ticks, apic_ticks) = median_count_across_pit_intervals().ok_or(ApicError::NoPit)?;
    let tsc_hz = tsc_ticks * 1000 / CALIBRATION_MS;
    let apic_timer_hz = apic_ticks * 1000 / CALIBRATION_MS;

    let counts_per_ns = ((u128::from(apic_timer_hz) << 32) / 1_000_000_000) as u64;
    COUNTS_PER_NS.store(counts_per_ns.max(1), Ordering::Relaxed);
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    // One-shot (mode bits 0), unmasked; nothing counts until `arm_timer`.
    write(reg::LVT_TIMER, u32::from(TIMER_VECTOR));
    Ok(Clocks {
        tsc_hz,
        apic_timer_hz,
    })
}

/// Sets up the local APIC of the CPU that runs this: accept every
/// interrupt priority, software-enable the APIC with the spurious vector,
/// and leave the timer one-shot, divided by 16 and masked. The boot CPU
/// runs it from [`init`]; each application processor runs it itself, after
/// [`init`] has mapped the registers.
pub fn init_this_cpu() {
    write(reg::TASK_PRIORITY, 0);
    write(reg::SPURIOUS, (1 << 8) | u32::from(SPURIOUS_VECTOR));
    write(reg::TIMER_DIVIDE, 0b0011); // divide by 16
    write(reg::LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
}

/// Masks or unmasks this CPU's timer interrupt (one-shot mode either way).
pub fn set_timer_masked(masked: bool) {
    let mask = if masked { MASKED } else { 0 };
    write(reg::LVT_TIMER, mask | u32::from(TIMER_VECTOR));
}

/// This CPU's local APIC id.
pub fn id() -> u32 {
    let raw = read(reg::ID);
    if X2APIC.load(Ordering::Relaxed) {
        raw
    } else {
        raw >> 24
    }
}

/// Sends an INIT to the CPU whose local APIC id is `apic_id`: it stops
/// whatever it does and waits for a start-up IPI.
pub fn send_init(apic_id: u32) {
    send_ipi(apic_id, icr::INIT | icr::ASSERT);
}

/// Sends a start-up IPI to `apic_id`: a CPU waiting after INIT starts in
/// real mode at physical address `page << 12` (an address below 1 MiB);
/// any other CPU ignores it.
pub fn send_startup(apic_id: u32, page: u8) {
    send_ipi(apic_id, icr::STARTUP | icr::ASSERT | u32::from(page));
}

/// Sends the scheduler's interrupt ([`RESCHEDULE_VECTOR`]) to the CPU
/// whose local APIC id is `apic_id`: it ends the turn of the guest running
/// there, or wakes the CPU from its halt, and it picks again.
pub fn send_reschedule(apic_id: u32) {
    send_ipi(apic_id, icr::ASSERT | u32::from(RESCHEDULE_VECTOR));
}

/// Sends the shoot-down interrupt ([`SHOOTDOWN_VECTOR`]) to the CPU whose
/// local APIC id is `apic_id`: it leaves the guest it runs once.
pub fn send_shootdown(apic_id: u32) {
    send_ipi(apic_id, icr::ASSERT | u32::from(SHOOTDOWN_VECTOR));
}

/// Writes the interrupt command register: the destination, then the
/// command, which sends it. In xAPIC mode the destination is 8 bits (the
/// caller sends to no id above 255) and we wait, bounded, for the local
/// APIC to have sent the previous command; in x2APIC mode the register is
/// one 64-bit MSR and has no pending bit.
fn send_ipi(apic_id: u32, command: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        let value = (u64::from(apic_id) << 32) | u64::from(command);
        // SAFETY: in x2APIC mode the ICR is this MSR; an INIT or start-up
        // IPI to another CPU changes nothing of this one.
        unsafe { Msr::new(X2APIC_MSR_BASE + (reg::ICR_LOW >> 4) as u32).write(value) };
        return;
    }
    wait_until_sent();
    write(reg::ICR_HIGH, apic_id << 24);
    write(reg::ICR_LOW, command);
    wait_until_sent();
}

/// Waits (at most 10 ms) until the xAPIC has sent its last command.
fn wait_until_sent() {
    let deadline = rdtsc() + tsc_cycles_for_us(10_000);
    while read(reg::ICR_LOW) & icr::SEND_PENDING != 0 && rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

/// Spins for at least `us` microseconds, by the TSC (calibrated in [`init`]).
pub fn delay_us(us: u64) {
    let deadline = rdtsc() + tsc_cycles_for_us(us);
    while rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

/// TSC cycles in `us` microseconds (at least one).
pub fn tsc_cycles_for_us(us: u64) -> u64 {
    (u128::from(TSC_HZ.load(Ordering::Relaxed)) * u128::from(us) / 1_000_000).max(1) as u64
}

/// Arms the one-shot timer to interrupt `ns` nanoseconds from now (at least
/// one count of the APIC timer, at most as many as its 32-bit counter
/// holds: some 68 s at QEMU's 62.5 MHz after the divider; a later deadline
/// is simply met by arming again when that one fires). Replaces whatever
/// was armed.
pub fn arm_timer(ns: u64) {
    let counts = (u128::from(ns) * u128::from(COUNTS_PER_NS.load(Ordering::Relaxed))) >> 32;
    let counts = counts.clamp(1, u128::from(u32::MAX)) as u32;
    write(reg::TIMER_INITIAL, counts);
}

/// Milliseconds since the TSC started counting (0 before [`init`]), for
/// the log's timestamps.
pub fn uptime_ms() -> u64 {
    rdtsc() / (TSC_HZ.load(Ordering::Relaxed) / 1000).max(1)
}

/// [`count_across_pit_interval`] [`CALIBRATION_RUNS`] times; the run with
/// the median TSC count (and its APIC count: both come from the same
/// window, so a stall moved both alike).
fn median_count_across_pit_intervals() -> Option<(u64, u64)> {
    let mut runs = [(0, 0); CALIBRATION_RUNS];
    for run in &mut runs {
        *run = count_across_pit_interval()?;
    }
    runs.sort_unstable();
    Some(runs[CALIBRATION_RUNS / 2])
}

/// Runs the APIC timer (one-shot, masked) and the TSC while PIT channel 2
/// counts down [`CALIBRATION_MS`]; returns how far each advanced.
fn count_across_pit_interval() -> Option<(u64, u64)> {
    let latch = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: the PIT's ports; channel 2 drives only the (gated-off)
    // speaker, so programming it disturbs nothing else.
    unsafe {
        // Gate on, speaker off.
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        // Channel 2, low then high byte, mode 0 (interrupt on terminal count).
        command.write(0b1011_0000);
        channel2.write(latch as u8);
        channel2.write((latch >> 8) as u8);
    }
    write(reg::TIMER_INITIAL, u32::MAX);
    let tsc_start = rdtsc();
    // Bounded: a machine without a PIT must not hang here forever.
    let mut spins: u64 = 0;
    // SAFETY: reading the gate port has no side effects.
    while unsafe { gate.read() } & 0x20 == 0 {
        spins += 1;
        if spins > 500_000_000 {
            return None;
        }
        core::hint::spin_loop();
    }
    let tsc = rdtsc() - tsc_start;
    let apic = u64::from(u32::MAX - read(reg::TIMER_CURRENT));
    write(reg::TIMER_INITIAL, 0);
    Some((tsc, apic))
}

/// Moves the 8259 PICs to vectors 0xe0-0xef (away from the exceptions,
/// where a stray legacy interrupt would pass for a CPU fault) and masks
/// every line. The range is one of the host's vectors of the guest
/// contract (`guest_abi::hypercall::host_vector`), which no guest may take
/// as a direct trap: a masked PIC still raises a spurious interrupt now
/// and then.
fn disable_legacy_pics() {
    use guest_abi::hypercall::host_vector::{LEGACY_PIC_BASE, LEGACY_PIC_LINES};
    const INIT: u8 = 0x11;
    const SLAVE_BASE: u8 = LEGACY_PIC_BASE + 8;
    const _: () = assert!(LEGACY_PIC_LINES == 16 && LEGACY_PIC_BASE.is_multiple_of(8));
    let steps: [(u16, u8); 10] = [
        (0x20, INIT),
        (0xa0, INIT),
        (0x21, LEGACY_PIC_BASE), // master's vector base
        (0xa1, SLAVE_BASE),      // slave's vector base
        (0x21, 4),               // slave on line 2
        (0xa1, 2),               // slave identity
        (0x21, 1),               // 8086 mode
        (0xa1, 1),
        (0x21, 0xff), // mask all
        (0xa1, 0xff),
    ];
    for (port, value) in steps {
        // SAFETY: the standard PIC initialisation sequence on the PIC ports.
        unsafe { Port::<u8>::new(port).write(value) };
    }
}

/// Called by the timer interrupt.
pub fn on_timer_tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Timer interrupts taken since boot.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Tells the local APIC the current interrupt is handled.
pub fn end_of_interrupt() {
    if APIC_BASE.load(Ordering::Acquire) != 0 {
        write(reg::EOI, 0);
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads a counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn register(offset: usize) -> *mut u32 {
    (APIC_BASE.load(Ordering::Acquire) + offset) as *mut u32
}

/// The MSR of the register at xAPIC offset `offset`, in x2APIC mode.
fn x2apic_msr(offset: usize) -> Msr {
    Msr::new(X2APIC_MSR_BASE + (offset >> 4) as u32)
}

fn write(offset: usize, value: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: `offset` is one of the register offsets above, each of
        // which has its MSR in x2APIC mode, the mode the APIC is in.
        unsafe { x2apic_msr(offset).write(u64::from(value)) };
        return;
    }
    // SAFETY: `offset` is one of the register offsets above, inside the
    // uncached page `init` mapped; APIC registers take 32-bit accesses.
    unsafe { register(offset).write_volatile(value) }
}

fn read(offset: usize) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: as in `write`; reading these registers has no effect.
        return unsafe { x2apic_msr(offset).read() } as u32;
    }
    // SAFETY: as for `write`.
    unsafe { register(offset).read_volatile() }
}
