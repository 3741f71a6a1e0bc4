//! The run loop: start the guests the command line names, share the CPUs
//! between them, and report how each ended.
//!
//! The decisions live in [`host::guest`] and [`host::sched`]; this module
//! gives them hardware: guest memory made of host frames
//! ([`FrameGuestMemory`]), shadow-table frames ([`HostFrames`]), the clock
//! and the console ([`Services`]), the switcher that actually enters a
//! guest, and the CPUs.
//!
//! [`run_guests`], on the boot CPU, loads every guest, puts them with the
//! scheduler and the network into the [`machine`] that every CPU shares,
//! and tells the other CPUs (each waiting in `crate::smp`'s idle loop) to
//! join with the scheduler's interrupt. Then every CPU, the boot CPU too,
//! runs guests in turns ([`cpu`]) until the last guest has ended; the boot
//! CPU waits for the others to leave, and reports: each CPU's share, the
//! network's counts, and whether every frame the guests took came back.
//!
//! Each exit is classified once ([`host::guest::Exit::of`]) and handed on;
//! whoever watches the exits (the benchmarks' [`HostShares`], with
//! `bench=exits`) does so through [`host::guest::ExitEvents`], which the
//! ordinary run leaves empty.

mod cpu;
mod guest_memory;
mod machine;
mod vcpus;

pub use guest_memory::{FrameGuestMemory, HostFrames};

use crate::bench::HostShares;
use crate::boot::Region;
use crate::hostnet::snapshot::GuestLine;
use crate::network::Network;
use crate::switcher::{CpuSwitcher, GuestCpuState};
use crate::{apic, memory, smp};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use guest_abi::boot::feature;
use host::archive::GuestArchive;
use host::config::{Config, Expect, GuestSpec, RootEviction};
use host::guest::load::Platform;
use host::guest::{Devices, Guest, GuestState, HostServices, standard_devices};
use host::paging::{Eviction, PagingConfig};
use host::sched::{CpuId, Scheduler, VcpuId};
use machine::{CpuAccount, MACHINE, Machine, Place, Relaunch, Whereabouts};

/// The clock and the console, for guests. Each CPU has a copy.
#[derive(Clone, Copy)]
pub struct Services {
    /// Nanoseconds per TSC cycle, as a 32.32 fixed-point number: the clock
    /// is read at every guest entry, and a 128-bit division there cost
    /// more than the rest of a hypercall's host path.
    ns_per_cycle: u64,
    boot_tsc: u64,
}

impl Services {
    fn new(tsc_hz: u64) -> Self {
        Self {
            ns_per_cycle: ((1_000_000_000u128 << 32) / u128::from(tsc_hz.max(1))) as u64,
            boot_tsc: apic::rdtsc(),
        }
    }
}

impl Services {
    /// What every guest is told about the machine: FSGSBASE if guests have
    /// it, and this clock's parameters, so that a guest reads the time
    /// without an exit.
    fn platform(&self) -> Platform {
        let fsgsbase = crate::cpu::fs_gs_bases_for_guests();
        Platform {
            features: if fsgsbase { feature::FSGSBASE } else { 0 },
            clock_tsc_base: self.boot_tsc,
            clock_ns_per_cycle: self.ns_per_cycle,
        }
    }
}

impl HostServices for Services {
    fn now_ns(&self) -> u64 {
        let cycles = apic::rdtsc().wrapping_sub(self.boot_tsc);
        ((u128::from(cycles) * u128::from(self.ns_per_cycle)) >> 32) as u64
    }

    fn console_line(&mut self, guest: &str, line: &[u8]) {
        crate::console::guest_line(guest, line);
    }

    fn set_fs_base(&mut self, base: u64) {
        crate::context::set_fs_base(base);
    }
}

/// One vCPU of a guest, what the CPUs need of it, and what is expected of
/// the guest. A guest of several vCPUs has a slot for each, sharing the
/// guest ([`vcpus`]).
struct Slot {
    guest: Arc<vcpus::SharedGuest>,
    /// Which of the guest's vCPUs.
    index: usize,
    /// Its identity for the scheduler.
    vcpu: VcpuId,
    /// What of it a CPU holds during its turns.
    cpu_state: GuestCpuState,
    expect: Expect,
    /// The host's share of the guest's no-op hypercalls, for the benchmark.
    host_shares: HostShares,
}

impl Slot {
    /// The guest, locked, with this vCPU the active one.
    fn lock(&self) -> spin::MutexGuard<'_, Guest<FrameGuestMemory>> {
        let mut guest = self.guest.guest.lock();
        guest.activate(self.index);
        guest
    }

    /// Its guest's line of the counters page.
    fn line(&mut self) -> GuestLine {
        let mut guest = self.lock();
        GuestLine {
            name: guest.name.clone(),
            cpu_ms: guest.cpu_ns_used / 1_000_000,
            exits: guest.counters,
            paging: guest.paging_stats(),
            device_requests: guest.device_requests(),
        }
    }

    /// A slot for vCPU `index` of `guest`, just started; `first` is the
    /// guest's first vCPU.
    fn for_vcpu(
        guest: &Arc<vcpus::SharedGuest>,
        first: VcpuId,
        index: usize,
        expect: Expect,
    ) -> Option<Slot> {
        let registers = guest.guest.lock().memory().register_page(index)?;
        Some(Slot {
            guest: Arc::clone(guest),
            index,
            vcpu: VcpuId::new(first.guest, u16::try_from(index).ok()?),
            cpu_state: GuestCpuState::new(registers),
            expect,
            host_shares: HostShares::default(),
        })
    }
}

/// Why the guests could not be started.
pub enum RunError {
    /// No guest archive was passed to the kernel.
    NoArchive,
    /// The archive is unreadable.
    Archive(host::archive::ArchiveError),
    /// A guest named on the command line is not in the archive.
    UnknownGuest(String, String),
    /// A guest could not be set up.
    Setup(String),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoArchive => {
                f.write_str("no guest archive: boot with the guests as a module (QEMU -initrd)")
            }
            Self::Archive(e) => write!(f, "{e}"),
            Self::UnknownGuest(name, known) => {
                write!(f, "no guest `{name}` in the archive; it holds: {known}")
            }
            Self::Setup(why) => f.write_str(why),
        }
    }
}

/// Runs the guests of `config` to their ends, on every CPU that is up.
/// Returns whether every guest ended as expected and every frame they took
/// came back.
pub fn run_guests(
    config: &Config<'_>,
    archive: Option<&'static [u8]>,
    tsc_hz: u64,
    regions: &[Region],
) -> Result<bool, RunError> {
    let archive_bytes = archive.ok_or(RunError::NoArchive)?;
    let archive = GuestArchive::open(archive_bytes).map_err(RunError::Archive)?;
    let mut switcher =
        CpuSwitcher::new(0).map_err(|e| RunError::Setup(alloc::format!("the switcher: {e}")))?;
    let services = Services::new(tsc_hz);
    let settings = GuestSettings {
        mem_bytes: config.guest_mem_mib << 20,
        budget_ns: config.guest_budget_ms.saturating_mul(1_000_000).max(1),
        paging: paging_config(config),
        platform: services.platform(),
    };
    let slice_ns = 1_000_000_000 / u64::from(config.timer_hz.max(1));
    let cpus = smp::cpus_up();
    let mut network = Network::start(config, regions, services.now_ns());
    // The network's rings and buffers live as long as the host: only what
    // the guests take must come back.
    let frames_before = memory::frame_stats();
    let mut sched = Scheduler::new(cpus.len(), slice_ns);
    sched.set_placement(config.placement);
    let (places, all_started) = place_guests(config, &archive, &settings, &mut network, &mut sched);
    log::info!(
        "running {} guest(s) on {} CPU(s): {}",
        places.len(),
        cpus.len(),
        config.guests
    );
    let machine = Machine {
        sched,
        guests_left: places.len(),
        places,
        network,
        services,
        apic_ids: cpus.iter().map(|cpu| cpu.apic_id).collect(),
        kernel_indices: cpus.iter().map(|cpu| cpu.index).collect(),
        cpus_in_run: 1,
        started: false,
        all_as_expected: true,
        accounts: alloc::vec![CpuAccount::default(); cpus.len()],
        starter: Starter {
            archive: archive_bytes,
            settings,
        },
    };
    // Published first, then announced: a CPU woken before it could see the
    // machine would go back to sleep.
    let mut guard = MACHINE.lock();
    guard.insert(machine).kick_all(CpuId::BOOT);
    drop(guard);
    start_when_all_joined(cpus.len());
    let run_started = services.now_ns();
    let account = cpu::run_on_this_cpu(CpuId::BOOT, &mut switcher, services);
    let Some(machine) = boot_cpu_leaves_run(account) else {
        return Err(RunError::Setup(String::from(
            "the run's shared state vanished before the boot CPU left it",
        )));
    };
    let run_ms = services.now_ns().saturating_sub(run_started) / 1_000_000;
    println!(
        "run: {} guest(s) on {} CPU(s) in {run_ms} ms",
        machine.places.len(),
        cpus.len()
    );
    report_cpus(&machine);
    machine.network.final_stats(apic::uptime_ms());
    println!("network: {}", machine.network.counters());
    let balanced = report_frames(frames_before.free);
    Ok(machine.all_as_expected && all_started && balanced)
}

/// Starts each guest `config` names, each with a port on the switch and a
/// place for the scheduler. A guest that cannot start is reported, and the
/// others still run; the flag says whether all started.
fn place_guests(
    config: &Config<'_>,
    archive: &GuestArchive<'_>,
    settings: &GuestSettings,
    network: &mut Network,
    sched: &mut Scheduler,
) -> (Vec<Place>, bool) {
    let mut places = Vec::new();
    let mut all_started = true;
    for (index, spec) in GuestSpec::parse_list(config.guests).flatten().enumerate() {
        let devices = standard_devices(guest_mac(index), entropy_seed());
        let port = network.add_guest(spec.image);
        let vcpu = VcpuId::new(index as u32, 0);
        match start_guest(archive, spec, settings, devices, vcpu) {
            Ok(slot) => {
                // Ids are the guests' numbers, unique by construction; every
                // CPU is told to pick when the run starts, so no kick yet.
                let _ = sched.add(vcpu);
                places.push(Place {
                    vcpu,
                    port,
                    whereabouts: Whereabouts::Home(Box::new(slot)),
                    line: None,
                    relaunch: Relaunch::of(&spec, index),
                });
            }
            Err(e) => {
                network.remove_guest(port);
                println!("guest {} failed to start: {e}", spec.image);
                all_started = false;
            }
        }
    }
    (places, all_started)
}

/// Prints the free frames before the guests (`free_before`) and now, and
/// says whether every frame the guests took came back.
fn report_frames(free_before: u64) -> bool {
    let free_after = memory::frame_stats().free;
    let balanced = free_before == free_after;
    println!(
        "frames: {free_before} free before the guests, {free_after} after ({})",
        if balanced { "balanced" } else { "LEAKED" }
    );
    balanced
}

/// Where an application processor joins the guests' run (from its idle
/// loop, whenever it wakes): if guests are running and this CPU is one the
/// scheduler shares out, it runs them with its `switcher` until the last
/// has ended. Interrupts must be off.
pub fn join_guests(kernel_index: usize, switcher: &mut CpuSwitcher) {
    let (cpu, services) = {
        let mut guard = MACHINE.lock();
        let Some(machine) = guard.as_mut() else {
            return;
        };
        let Some(cpu) = machine.cpu_id(kernel_index) else {
            return;
        };
        if machine.guests_left == 0 {
            return;
        }
        machine.cpus_in_run += 1;
        (cpu, machine.services)
    };
    while !MACHINE.lock().as_ref().is_some_and(|m| m.started) {
        core::hint::spin_loop();
    }
    let account = cpu::run_on_this_cpu(cpu, switcher, services);
    leave_run(cpu, account);
}

/// How long the boot CPU waits for the other CPUs to join the run before
/// it starts without those that have not: they start in microseconds, and
/// this allows for an emulator whose threads the host does not schedule
/// for a long while.
const JOIN_LIMIT_US: u64 = 5_000_000;

/// Waits until all `cpus` CPUs have joined the run (or the time limit has
/// passed), then lets them all start. So every CPU picks its first guest
/// from its own run queue, where the guests were spread, before any CPU
/// can find its queue empty and steal from another's: every CPU runs
/// guests, however late its emulator thread started. A CPU that has not
/// joined in time is named, and the others take its guests.
fn start_when_all_joined(cpus: usize) {
    let give_up_at = apic::rdtsc() + apic::tsc_cycles_for_us(JOIN_LIMIT_US);
    loop {
        let mut guard = MACHINE.lock();
        let Some(machine) = guard.as_mut() else {
            return;
        };
        let joined = machine.cpus_in_run;
        if joined == cpus || apic::rdtsc() > give_up_at {
            if joined < cpus {
                log::warn!(
                    "cpus: only {joined} of {cpus} joined the guests' run in {} s; the others' guests go to them",
                    JOIN_LIMIT_US / 1_000_000
                );
            }
            machine.started = true;
            return;
        }
        drop(guard);
        core::hint::spin_loop();
    }
}

/// An application processor leaves the run, leaving its account.
fn leave_run(cpu: CpuId, account: CpuAccount) {
    if let Some(machine) = MACHINE.lock().as_mut() {
        machine.accounts[cpu.index()] = account;
        machine.cpus_in_run -= 1;
    }
}

/// The boot CPU leaves the run last: it waits for every other CPU to have
/// left (the last guest's end told them to), then takes the machine.
fn boot_cpu_leaves_run(account: CpuAccount) -> Option<Machine> {
    loop {
        let mut guard = MACHINE.lock();
        let machine = guard.as_mut()?;
        if machine.cpus_in_run == 1 {
            machine.accounts[CpuId::BOOT.index()] = account;
            return guard.take();
        }
        drop(guard);
        core::hint::spin_loop();
    }
}

/// One line per CPU: its share of the run.
fn report_cpus(machine: &Machine) {
    for (cpu, account) in machine.accounts.iter().enumerate() {
        println!(
            "cpu {}: {} turns, {} guests, {} state loads, {} ms in guests, {} halts, {} lock waits",
            machine.kernel_indices[cpu],
            account.turns,
            account.guests(),
            account.state_loads,
            account.busy_ns / 1_000_000,
            account.halts,
            account.lock_waits
        );
    }
    let counters = machine.sched.counters();
    println!(
        "scheduler: {} turns, {} migrations, {} steals, {} idles, {} kicks, {} vCPUs shot down",
        counters.turns,
        counters.migrations,
        counters.steals,
        counters.idles,
        counters.kicks,
        vcpus::SHOOTDOWN_WAITS.load(Ordering::Relaxed)
    );
}

/// What starting a guest takes: the archive of images and the settings
/// every guest starts with. Kept for the guests that are started again.
#[derive(Clone, Copy)]
pub(super) struct Starter {
    /// The archive's bytes (opened and checked at the first start).
    archive: &'static [u8],
    settings: GuestSettings,
}

impl Starter {
    /// A new life for the guest `relaunch` describes: a fresh guest from
    /// its image, with the same argument, network card (MAC) and vCPU id.
    fn start_again(&self, relaunch: &Relaunch, vcpu: VcpuId) -> Result<Slot, RunError> {
        let archive = GuestArchive::open(self.archive).map_err(RunError::Archive)?;
        let spec = GuestSpec {
            image: &relaunch.image,
            arg: &relaunch.arg,
            expect: relaunch.expect,
            restart: relaunch.left,
            vcpus: relaunch.vcpus,
        };
        let devices = standard_devices(guest_mac(relaunch.index), entropy_seed());
        start_guest(&archive, spec, &self.settings, devices, vcpu)
    }
}

/// The shadow page tables' settings from the command line (`roots=`,
/// `eviction=`, `eager_fill=`), with this CPU's physical-address width.
fn paging_config(config: &Config<'_>) -> PagingConfig {
    PagingConfig {
        cached_roots: config.cached_roots,
        eviction: match config.eviction {
            RootEviction::LeastRecentlyUsed => Eviction::LeastRecentlyUsed,
            // A fixed seed: the same boot evicts the same roots.
            RootEviction::Random => Eviction::Random { seed: 0 },
        },
        eager_fill: config.eager_fill,
        physical_address_bits: crate::cpu::physical_address_bits(),
    }
}

/// What every guest starts with, from the command line and the machine.
#[derive(Clone, Copy)]
struct GuestSettings {
    mem_bytes: u64,
    budget_ns: u64,
    paging: PagingConfig,
    platform: Platform,
}

fn start_guest(
    archive: &GuestArchive<'_>,
    spec: GuestSpec<'_>,
    settings: &GuestSettings,
    devices: Devices,
    vcpu: VcpuId,
) -> Result<Slot, RunError> {
    let mut name = String::from(spec.image);
    if !spec.arg.is_empty() {
        let _ = write!(name, "/{}", spec.arg);
    }
    let Some(image) = archive.find(spec.image) else {
        let mut known = String::new();
        for n in archive.names() {
            let _ = write!(known, "{}{n}", if known.is_empty() { "" } else { ", " });
        }
        return Err(RunError::UnknownGuest(name, known));
    };
    let setup_error = RunError::Setup;
    let mut mem = FrameGuestMemory::new(settings.mem_bytes)
        .ok_or_else(|| setup_error(String::from("out of host memory")))?;
    let loaded = match host::guest::load::load(&mut mem, image, spec.arg, &settings.platform) {
        Ok(loaded) => loaded,
        Err(e) => {
            mem.release();
            return Err(setup_error(alloc::format!("{e}")));
        }
    };
    let Some(registers) = mem.register_page(0) else {
        mem.release();
        return Err(setup_error(String::from("no register page")));
    };
    match Guest::new(
        name.clone(),
        mem,
        loaded,
        settings.paging,
        settings.budget_ns,
        devices,
        usize::from(spec.vcpus),
        &mut HostFrames,
    ) {
        Ok(guest) => Ok(Slot {
            guest: Arc::new(vcpus::SharedGuest::new(guest)),
            index: 0,
            cpu_state: GuestCpuState::new(registers),
            vcpu,
            expect: spec.expect,
            host_shares: HostShares::default(),
        }),
        Err(e) => Err(setup_error(alloc::format!("{e}"))),
    }
}

/// Guest `index`'s network address: locally administered (`02`), then
/// "rg", then the guest's number from 1.
fn guest_mac(index: usize) -> [u8; 6] {
    let n = (index + 1) as u32;
    let [_, a, b, c] = n.to_be_bytes();
    [0x02, 0x72, 0x67, a, b, c]
}

/// 32 bytes to seed a guest's entropy device: the CPU's `rdrand` where
/// CPUID has it, mixed with the TSC either way (without `rdrand` the seed
/// is only as unpredictable as the time the guest started, and the boot
/// log says so once).
fn entropy_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let hardware = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_rdrand());
    for (i, chunk) in seed.chunks_exact_mut(8).enumerate() {
        let mut word = apic::rdtsc().rotate_left(17 * i as u32) ^ 0x9e37_79b9_7f4a_7c15;
        if hardware {
            let mut random = 0u64;
            // SAFETY: CPUID says `rdrand` exists; it only writes `random`.
            if unsafe { core::arch::x86_64::_rdrand64_step(&mut random) } == 1 {
                word ^= random;
            }
        }
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    if !hardware {
        static WARNED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            log::warn!("no rdrand: the guests' virtio-rng is seeded from the TSC alone");
        }
    }
    seed
}

/// Prints how a guest ended and returns its frames. Says whether that was
/// the expected end.
/// `port_stats` is its network card's last line, from the switch.
fn report_end(slot: Slot, port_stats: Option<String>) -> bool {
    let Slot {
        guest,
        expect,
        host_shares,
        ..
    } = slot;
    // The last vCPU's slot: no other holds the guest any more.
    let Ok(shared) = Arc::try_unwrap(guest) else {
        println!("guest ended while another of its vCPUs still held it: its frames are kept");
        return false;
    };
    let guest = shared.guest.into_inner();
    if let Some(stats) = port_stats {
        println!("guest {} network: {stats}", guest.name);
    }
    host_shares.report(&guest.name);
    let name = guest.name.clone();
    let counters = guest.counters;
    let cpu_ms = guest.cpu_ns_used / 1_000_000;
    let state = guest.state().clone();
    let paging = guest.paging_stats();
    let (memory, _) = guest.teardown(&mut HostFrames);
    memory.release();
    let as_expected = match (&state, expect) {
        (GuestState::Exited(code), Expect::Exit(want)) => *code == want,
        (GuestState::Killed(_), Expect::Killed) => true,
        (GuestState::Exited(_) | GuestState::Killed(_), Expect::Any) => true,
        _ => false,
    };
    match &state {
        GuestState::Exited(code) => println!("guest {name} exited code={code}"),
        GuestState::Killed(reason) => println!("guest {name} killed: {reason}"),
        other => println!("guest {name} ended in state {other:?}"),
    }
    println!("guest {name} counters: {counters} cpu_ms={cpu_ms}");
    println!(
        "guest {name} paging: faults_fixed={} faults_reflected={} pages_zeroed={} roots_made={} roots_reused={} roots_evicted={} eager_fills={} shadow_frames_held={} shootdowns={} faults_retried={}",
        paging.faults_fixed,
        paging.faults_reflected,
        paging.pages_zeroed,
        paging.roots_made,
        paging.roots_reused,
        paging.roots_evicted,
        paging.eager_fills,
        paging.frames_held,
        paging.shootdowns,
        paging.faults_retried
    );
    if !as_expected {
        println!("guest {name}: expected {expect:?}, but it ended otherwise");
    }
    as_expected
}
