//! The other CPUs: started, set up like the boot CPU, and parked.
//!
//! Where this sits in the story of a boot (`main.rs`): the boot CPU has its
//! GDT, IDT, memory and a calibrated local APIC timer; ACPI's MADT lists the
//! processors ([`crate::acpi`]). [`start_application_processors`] now
//! starts each of the others, the *application processors* (APs), one at a
//! time, the way the Intel SDM describes (vol. 3, "MP Initialization"):
//!
//! 1. it allocates the CPU's stacks ([`stacks`]), each above a guard page;
//! 2. it points the trampoline's parameters at them ([`trampoline`]) and
//!    sends the CPU an INIT, waits 10 ms, sends a start-up IPI naming the
//!    trampoline's page, waits 200 us, and sends a second one (a CPU that
//!    took the first ignores it), all timed by the TSC;
//! 3. the CPU runs the trampoline from real mode to long mode, on the
//!    host's page tables, and calls [`ap_main`], which sets it up as the
//!    boot CPU was: its own GDT and TSS with its own IST stacks, the shared
//!    IDT, the same hardening and the same CR0, CR4 and EFER bits, its own
//!    local APIC (with a one-shot timer, checked to interrupt once, then
//!    masked), and its own switcher pages ([`CpuSwitcher::new`]);
//! 4. it reports in through its state ([`CpuState`], an atomic per CPU),
//!    and parks in [`ap_idle`], halted with interrupts on.
//!
//! The boot CPU waits for each report with a wide time limit; a CPU that
//! does not report in time is named on the console and left out, and the
//! others run. The summary line says how many came up: `cpus: 4 enabled in
//! the ACPI MADT; 4 up (cpu 0 apic 0 (boot), cpu 1 apic 1, ...)`.
//!
//! Parked in [`ap_idle`], each AP waits for the guests' run to start, and
//! then runs guests like the boot CPU ([`crate::run`]).
//!
//! What the APs share with the boot CPU, and why it is safe: the frame
//! allocator, the host's page tables (`memory/`) and the heap (`talc`) are
//! behind spin locks; the console is a spin lock taken with interrupts
//! off, and every line is written under one hold of it, so lines from two
//! CPUs never mix (a crash report, written without the lock, may); the
//! IDT is read-only once built; the timer calibration is read-only after
//! boot. Not yet ready for guests on several CPUs: the host changes its
//! own mappings with an `invlpg` on the CPU that changes them only (no TLB
//! shoot-down: today only the boot CPU's benchmark changes a mapping that
//! exists, and new mappings need none); the timer's tick count
//! (`apic::ticks`) is one for all CPUs; the boot CPU's GDT, TSS and IST
//! stacks are `static mut`s, touched by no other CPU.

mod stacks;
mod trampoline;

use crate::boot::BootInfo;
use crate::cpu::Features;
use crate::switcher::CpuSwitcher;
use crate::{acpi, apic, cpu, gdt, interrupts, power};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};
use spin::Once;
use stacks::CpuStacks;
use trampoline::Trampoline;
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, EferFlags};

/// How long the boot CPU waits for a started CPU to reach `ap_main`. A
/// CPU starts in well under a millisecond, even under TCG on a busy host;
/// this allows for a host that does not schedule the emulator's thread for
/// a long while.
const ANSWER_LIMIT_US: u64 = 1_000_000;
/// How long a CPU that reached `ap_main` may take to set itself up (a few
/// hundred pages to map and a timer interrupt to see).
const SETUP_LIMIT_US: u64 = 5_000_000;
/// The SDM's waits: after INIT, and after each start-up IPI.
const AFTER_INIT_US: u64 = 10_000;
const AFTER_STARTUP_US: u64 = 200;
/// The one-shot interrupt each AP's timer must deliver, and how long the
/// CPU waits for it.
const TIMER_CHECK_NS: u64 = 100_000;
const TIMER_CHECK_LIMIT_US: u64 = 100_000;
/// The highest APIC id the trampoline can tell apart (CPUID gives it 8
/// bits) and an xAPIC can address (255 is the broadcast id).
const MAX_APIC_ID: u32 = 254;

/// Where a CPU is in its start-up, or why it was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum CpuState {
    /// To be started.
    Planned,
    /// Sent INIT and start-up IPIs; not heard from yet.
    Starting,
    /// In `ap_main`, setting itself up.
    Arrived,
    /// Set up, parked in `ap_idle` (the boot CPU: running).
    Up,
    /// Left out: the switcher's slot has no room for more CPUs.
    NoSwitcherSlot,
    /// Left out: an APIC id the trampoline and the xAPIC cannot address.
    ApicIdTooLarge,
    /// Left out: no memory for its stacks.
    NoStacks,
    /// Left out: no trampoline (no free low memory).
    NoTrampoline,
    /// Left out: did not reach `ap_main` in time.
    NoAnswer,
    /// Left out: claimed its start-up parameters but did not reach
    /// `ap_main` in time.
    Lost,
    /// Left out: reached `ap_main` but did not finish setting up in time.
    Stuck,
    /// Left out: its set-up failed (the CPU said why on the console).
    SetupFailed,
}

impl CpuState {
    const ALL: [Self; 12] = [
        Self::Planned,
        Self::Starting,
        Self::Arrived,
        Self::Up,
        Self::NoSwitcherSlot,
        Self::ApicIdTooLarge,
        Self::NoStacks,
        Self::NoTrampoline,
        Self::NoAnswer,
        Self::Lost,
        Self::Stuck,
        Self::SetupFailed,
    ];

    /// Why a CPU in this state is left out (`None`: it is not).
    fn left_out_because(self) -> Option<&'static str> {
        Some(match self {
            Self::Planned | Self::Starting | Self::Arrived | Self::Up => return None,
            Self::NoSwitcherSlot => "no room for its pages in the switcher's slot",
            Self::ApicIdTooLarge => "its APIC id is above 254",
            Self::NoStacks => "no memory for its stacks",
            Self::NoTrampoline => "no trampoline to start it with",
            Self::NoAnswer => "no answer to INIT-SIPI-SIPI",
            Self::Lost => "it started but never reached its Rust code",
            Self::Stuck => "it did not finish setting itself up",
            Self::SetupFailed => "its set-up failed",
        })
    }
}

/// One CPU of the MADT's list.
struct Cpu {
    /// Its local APIC id.
    apic_id: u32,
    /// Its stacks (none for the boot CPU, or when allocating them failed).
    stacks: Option<CpuStacks>,
    /// A [`CpuState`]: written by the boot CPU and by the CPU itself.
    state: AtomicU8,
}

impl Cpu {
    fn state(&self) -> CpuState {
        CpuState::ALL[usize::from(self.state.load(Ordering::Acquire))]
    }

    fn set(&self, state: CpuState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Moves from `from` to `to` if no one moved it elsewhere first (the CPU
    /// reporting in and the boot CPU giving up on it race through here).
    fn advance(&self, from: CpuState, to: CpuState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Every enabled CPU, the boot CPU first (index 0); an AP's index is its
/// `cpu` number everywhere (`ap_main`'s argument, its switcher's pages).
static CPUS: Once<Vec<Cpu>> = Once::new();

/// What the boot CPU was set up with, for the others to match.
struct BootCpu {
    features: Features,
    cr0: u64,
    cr4: u64,
    efer: u64,
}

static BOOT_CPU: Once<BootCpu> = Once::new();

/// Starts every enabled CPU of the MADT and prints the `cpus:` line (see the
/// module docs). The boot CPU must be fully set up, its timer calibrated.
pub fn start_application_processors(boot: &BootInfo, features: &Features) {
    let processors = match acpi::processors(boot.acpi) {
        Ok(processors) => processors,
        Err(e) => {
            crate::println!("cpus: the ACPI tables could not be read ({e:?}); 1 up (the boot CPU)");
            return;
        }
    };
    if processors.wakeup_mailbox {
        log::info!("cpus: the MADT offers a wake-up mailbox; not used (INIT-SIPI-SIPI is)");
    }
    BOOT_CPU.call_once(|| BootCpu {
        features: *features,
        cr0: Cr0::read_raw(),
        cr4: Cr4::read_raw(),
        efer: Efer::read_raw(),
    });
    let started = apic::rdtsc();
    let cpus = CPUS.call_once(|| plan(&processors.apic_ids));
    if cpus.len() > 1 {
        bring_up(boot, cpus);
        let us = (apic::rdtsc() - started) / apic::tsc_cycles_for_us(1);
        log::info!(
            "cpus: starting {} other CPU(s) took {} ms",
            cpus.len() - 1,
            us / 1000
        );
    }
    report(cpus, processors.apic_ids.len(), processors.online_capable);
}

/// The boot CPU first, then the others in the MADT's order, each with its
/// stacks, or the reason it cannot be started.
fn plan(apic_ids: &[u32]) -> Vec<Cpu> {
    let boot_id = apic::id();
    if !apic_ids.contains(&boot_id) {
        log::warn!("cpus: the boot CPU's APIC id {boot_id} is not in the MADT");
    }
    let others = apic_ids.iter().copied().filter(|&id| id != boot_id);
    let mut cpus = Vec::with_capacity(apic_ids.len().max(1));
    cpus.push(Cpu {
        apic_id: boot_id,
        stacks: None,
        state: AtomicU8::new(CpuState::Up as u8),
    });
    for (index, apic_id) in others.enumerate().map(|(i, id)| (i + 1, id)) {
        let (stacks, state) = if index >= ::switcher::MAX_CPUS {
            (None, CpuState::NoSwitcherSlot)
        } else if apic_id > MAX_APIC_ID {
            (None, CpuState::ApicIdTooLarge)
        } else {
            match stacks::allocate(index) {
                Ok(stacks) => (Some(stacks), CpuState::Planned),
                Err(e) => {
                    log::warn!("cpu {index}: {e}");
                    (None, CpuState::NoStacks)
                }
            }
        };
        cpus.push(Cpu {
            apic_id,
            stacks,
            state: AtomicU8::new(state as u8),
        });
    }
    cpus
}

/// Installs the trampoline and starts the planned CPUs one by one.
fn bring_up(boot: &BootInfo, cpus: &[Cpu]) {
    let root = Cr3::read().0.start_address().as_u64();
    let trampoline = match trampoline::install(boot, host::addr::HostPhysAddr::new(root)) {
        Ok(trampoline) => trampoline,
        Err(e) => {
            log::warn!("cpus: {e}");
            for cpu in cpus {
                cpu.advance(CpuState::Planned, CpuState::NoTrampoline);
            }
            return;
        }
    };
    log::debug!(
        "cpus: trampoline at {} (start-up vector {:#x})",
        trampoline.address(),
        trampoline.vector()
    );
    let nx = BOOT_CPU
        .get()
        .is_some_and(|b| b.efer & EferFlags::NO_EXECUTE_ENABLE.bits() != 0);
    let mut parameters_free = true;
    for (index, cpu) in cpus.iter().enumerate() {
        match (cpu.state(), cpu.stacks) {
            (CpuState::Planned, Some(_)) if !parameters_free => {
                cpu.advance(CpuState::Planned, CpuState::NoTrampoline);
            }
            (CpuState::Planned, Some(stacks)) => {
                trampoline::prepare(index, cpu.apic_id, stacks.kernel_top, nx);
                start(cpu, trampoline);
                // A CPU that claimed the parameters and then never reached
                // `ap_main` may still read them: they are its for good.
                parameters_free = cpu.state() != CpuState::Lost;
                if !parameters_free {
                    log::warn!(
                        "cpus: cpu {index} may still read the trampoline's parameters: no more CPUs are started"
                    );
                }
            }
            _ => {}
        }
    }
}

/// INIT, start-up, start-up (see the module docs), then waits for the CPU
/// to report in.
fn start(cpu: &Cpu, trampoline: Trampoline) {
    cpu.set(CpuState::Starting);
    apic::send_init(cpu.apic_id);
    apic::delay_us(AFTER_INIT_US);
    for _ in 0..2 {
        apic::send_startup(cpu.apic_id, trampoline.vector());
        apic::delay_us(AFTER_STARTUP_US);
    }
    await_report(cpu);
}

/// Waits until `cpu` is up or has failed; past the time limits, gives up
/// on it (unless it reported in at that very moment).
fn await_report(cpu: &Cpu) {
    let answer_by = apic::rdtsc() + apic::tsc_cycles_for_us(ANSWER_LIMIT_US);
    let set_up_by = answer_by + apic::tsc_cycles_for_us(SETUP_LIMIT_US);
    loop {
        let now = apic::rdtsc();
        match cpu.state() {
            // Silent: take the parameters back, unless it has just claimed
            // them (then it is in the trampoline: wait on).
            CpuState::Starting if now > answer_by && trampoline::withdraw(cpu.apic_id) => {
                cpu.advance(CpuState::Starting, CpuState::NoAnswer);
            }
            CpuState::Starting if now > set_up_by => {
                cpu.advance(CpuState::Starting, CpuState::Lost);
            }
            CpuState::Arrived if now > set_up_by => {
                cpu.advance(CpuState::Arrived, CpuState::Stuck);
            }
            CpuState::Starting | CpuState::Arrived => core::hint::spin_loop(),
            _ => return,
        }
    }
}

/// Prints a line for each CPU left out, then the summary.
fn report(cpus: &[Cpu], enabled: usize, online_capable: u32) {
    let mut up = alloc::string::String::new();
    let mut count = 0;
    for (index, cpu) in cpus.iter().enumerate() {
        let state = cpu.state();
        if let Some(why) = state.left_out_because() {
            crate::println!(
                "cpu {index} (apic {}) did not come up ({why}); left out",
                cpu.apic_id
            );
        } else if state == CpuState::Up {
            use core::fmt::Write;
            let boot = if index == 0 { " (boot)" } else { "" };
            let comma = if count == 0 { "" } else { ", " };
            let _ = write!(up, "{comma}cpu {index} apic {}{boot}", cpu.apic_id);
            count += 1;
        }
    }
    let hot_plug = match online_capable {
        0 => alloc::string::String::new(),
        n => alloc::format!(" ({n} more could come online)"),
    };
    crate::println!("cpus: {enabled} enabled in the ACPI MADT{hot_plug}; {count} up ({up})");
}

/// The first Rust code of an application processor, called by the
/// trampoline on the stack the boot CPU allocated for CPU `cpu`, with
/// interrupts off.
extern "C" fn ap_main(cpu: usize) -> ! {
    let Some(record) = CPUS.get().and_then(|cpus| cpus.get(cpu)) else {
        power::halt_forever()
    };
    // The boot CPU may have given up on us already: then we are no one's,
    // and stop before touching anything.
    if !record.advance(CpuState::Starting, CpuState::Arrived) {
        power::halt_forever()
    }
    match set_up(cpu, record) {
        Ok(this) if record.advance(CpuState::Arrived, CpuState::Up) => ap_idle(this),
        Ok(_) => power::halt_forever(),
        Err(e) => {
            log::error!("cpu {cpu} (apic {}): {e}", record.apic_id);
            record.advance(CpuState::Arrived, CpuState::SetupFailed);
            power::halt_forever()
        }
    }
}

/// One application processor, set up: what the scheduler will run guests
/// with.
struct ApplicationProcessor {
    /// Its index (0 is the boot CPU).
    cpu: usize,
    /// Its local APIC id.
    apic_id: u32,
    /// Its switcher: its own register, state, IDT and host pages in the
    /// slot, and its own view of the slot for guests.
    switcher: CpuSwitcher,
}

/// Why an AP could not set itself up.
enum SetupError {
    /// Its local APIC timer did not interrupt.
    Timer,
    /// Its switcher pages could not be set up.
    Switcher(crate::memory::MemoryError),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timer => f.write_str("its local APIC timer did not interrupt"),
            Self::Switcher(e) => write!(f, "its switcher: {e}"),
        }
    }
}

/// Sets this AP up as the boot CPU was (see the module docs, step 3).
fn set_up(cpu: usize, record: &Cpu) -> Result<ApplicationProcessor, SetupError> {
    let boot_cpu = BOOT_CPU
        .get()
        .expect("the boot CPU starts APs after BOOT_CPU");
    let stacks = record.stacks.expect("a started CPU has stacks");
    gdt::init_application_processor(stacks.tss);
    interrupts::init();
    cpu::harden(&boot_cpu.features);
    cpu::enable_fpu_for_guests();
    cpu::enable_fs_gs_bases_for_guests(&boot_cpu.features);
    match_control_registers(cpu, boot_cpu);
    apic::init_this_cpu();
    check_local_timer()?;
    let switcher = CpuSwitcher::new(cpu).map_err(SetupError::Switcher)?;
    Ok(ApplicationProcessor {
        cpu,
        apic_id: record.apic_id,
        switcher,
    })
}

/// Makes CR0, CR4 and EFER hold what the boot CPU's hold. The steps above
/// set the same bits the boot CPU's set-up does; what else the boot CPU
/// has (bits its loader set that the host leaves alone) is copied here,
/// and said, so that every CPU runs guests alike.
fn match_control_registers(cpu: usize, boot_cpu: &BootCpu) {
    let (cr0, cr4, efer) = (Cr0::read_raw(), Cr4::read_raw(), Efer::read_raw());
    if (cr0, cr4, efer) == (boot_cpu.cr0, boot_cpu.cr4, boot_cpu.efer) {
        return;
    }
    log::info!(
        "cpu {cpu}: cr0 {cr0:#x} cr4 {cr4:#x} efer {efer:#x} set to the boot CPU's {:#x} {:#x} {:#x}",
        boot_cpu.cr0,
        boot_cpu.cr4,
        boot_cpu.efer
    );
    // SAFETY: the boot CPU runs the host with exactly these values, in the
    // same mode (long mode, paging on), on the same page tables and the
    // same kind of CPU; the bits the two sets differ in are ones its loader
    // set and the host does not depend on (the host's own needs, long mode,
    // paging, write protection and NX, are already set here).
    unsafe {
        Cr4::write_raw(boot_cpu.cr4);
        Efer::write_raw(boot_cpu.efer);
        Cr0::write_raw(boot_cpu.cr0);
    }
}

/// Arms this CPU's timer once, unmasked, and waits for its interrupt: proof
/// that its local APIC, the shared IDT and this CPU's GDT work together.
/// Then masks it again, until the scheduler uses it. While APs start, no
/// other CPU's timer is armed, so the tick counted is this CPU's.
fn check_local_timer() -> Result<(), SetupError> {
    use x86_64::instructions::interrupts as cpu_interrupts;
    let before = apic::ticks();
    let give_up_at = apic::rdtsc() + apic::tsc_cycles_for_us(TIMER_CHECK_LIMIT_US);
    apic::set_timer_masked(false);
    apic::arm_timer(TIMER_CHECK_NS);
    cpu_interrupts::enable();
    while apic::ticks() == before && apic::rdtsc() < give_up_at {
        core::hint::spin_loop();
    }
    cpu_interrupts::disable();
    apic::set_timer_masked(true);
    if apic::ticks() == before {
        return Err(SetupError::Timer);
    }
    Ok(())
}

/// Where an application processor waits for work: halted, woken by an
/// interrupt, and then joining the guests' run if there is one
/// ([`crate::run::join_guests`]), which the boot CPU announces with the
/// scheduler's interrupt to every CPU. Interrupts are on only inside the
/// halt: a wake-up sent between the look and the `hlt` stays pending, and
/// `sti; hlt` takes it at once.
fn ap_idle(mut this: ApplicationProcessor) -> ! {
    log::debug!(
        "cpu {} (apic {}): up, idle; its switcher's guest view at {}",
        this.cpu,
        this.apic_id,
        this.switcher.guest_view()
    );
    loop {
        crate::run::join_guests(this.cpu, &mut this.switcher);
        x86_64::instructions::interrupts::enable_and_hlt();
        x86_64::instructions::interrupts::disable();
    }
}

/// A CPU that came up: its index (0 is the boot CPU) and local APIC id.
#[derive(Clone, Copy, Debug)]
pub struct UpCpu {
    pub index: usize,
    pub apic_id: u32,
}

/// The CPUs that are up, the boot CPU first: those the run shares guests
/// between. Only the boot CPU, before any other CPU was started (or with
/// none), when the MADT could not be read.
pub fn cpus_up() -> Vec<UpCpu> {
    let Some(cpus) = CPUS.get() else {
        return alloc::vec![UpCpu {
            index: 0,
            apic_id: apic::id(),
        }];
    };
    cpus.iter()
        .enumerate()
        .filter(|(_, cpu)| cpu.state() == CpuState::Up)
        .map(|(index, cpu)| UpCpu {
            index,
            apic_id: cpu.apic_id,
        })
        .take(host::sched::MAX_CPUS)
        .collect()
}
