//! The run loop: start the guests the command line names, share the CPU
//! between them, and report how each ended.
//!
//! The decisions live in [`host::guest`]; this module gives them hardware:
//! guest memory made of host frames ([`FrameGuestMemory`]), shadow-table
//! frames ([`HostFrames`]), the clock and the console ([`Services`]), and
//! the switcher that actually enters the guest. Guests take turns on the
//! boot CPU: each runs until its time slice ends while another guest is
//! waiting (then the next runnable guest goes), until another guest's
//! timer wakes it, until it halts waiting for a virtual interrupt, or until
//! it ends. The host's timer is one-shot ([`DeadlineTimer`]): armed for the
//! first of those moments, and for the guest's own timer and the end of its
//! budget, so a guest computing alone is not interrupted at all. With every
//! guest halted, the CPU sleeps until the first guest timer is due.
//!
//! Each exit is classified once ([`Exit::of`]) and handed on; whoever
//! watches the exits (the benchmarks' [`HostShares`], with `bench=on`)
//! does so through [`ExitEvents`], which the ordinary run leaves empty.

use crate::bench::HostShares;
use crate::boot::Region;
use crate::hostnet::snapshot::GuestLine;
use crate::network::{self, Network};
use crate::switcher::CpuSwitcher;
use crate::{apic, interrupts, memory};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_abi::boot::feature;
use guest_abi::hypercall::Number;
use host::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use host::archive::GuestArchive;
use host::config::{Config, Expect, GuestSpec, RootEviction};
use host::guest::load::Platform;
use host::guest::{
    Devices, Exit, ExitEvents, Guest, GuestRam, GuestState, HostServices, Next, NoEvents,
    standard_devices,
};
use host::net::PortId;
use host::paging::{
    Eviction, GuestMemory, OutsideGuestMemory, PagingConfig, ShadowFrames, TableIndex,
};
use host::sched::{CpuId, Decision, Outcome, Scheduler, VcpuId};
use switcher::GuestRegs;

/// A guest's memory: one host frame per guest page, not necessarily
/// contiguous, reached through the direct map.
pub struct FrameGuestMemory {
    frames: Vec<HostPhysAddr>,
    /// The guest's register page: not guest memory (the guest cannot name
    /// it); the switcher maps it into the slot while the guest runs.
    registers: HostPhysAddr,
}

impl FrameGuestMemory {
    /// Takes `bytes` of host memory (zeroed) for a guest.
    fn new(bytes: u64) -> Option<Self> {
        let pages = bytes / PAGE_SIZE;
        let mut frames = Vec::with_capacity(pages as usize + 1);
        for _ in 0..=pages {
            match memory::alloc_frame() {
                Some(frame) => {
                    zero_frame(frame);
                    frames.push(frame);
                }
                None => {
                    frames.into_iter().for_each(memory::free_frame);
                    return None;
                }
            }
        }
        let registers = frames.pop()?;
        Some(Self { frames, registers })
    }

    /// The frame of the guest's register page.
    pub fn register_page(&self) -> HostPhysAddr {
        self.registers
    }

    /// Gives the frames back.
    fn release(self) {
        self.frames.into_iter().for_each(memory::free_frame);
        memory::free_frame(self.registers);
    }

    fn registers_ptr(&self) -> *mut GuestRegs {
        memory::phys_to_virt(self.registers)
            .wrapping_add(switcher::REGS_OFFSET as usize)
            .cast()
    }

    /// The host address of guest byte `gpa`, if `len` bytes from it stay
    /// inside one page of guest memory.
    fn host_ptr(&self, gpa: GuestPhysAddr, len: usize) -> Result<*mut u8, OutsideGuestMemory> {
        let page = usize::try_from(gpa.frame_number()).map_err(|_| OutsideGuestMemory(gpa))?;
        let frame = self.frames.get(page).ok_or(OutsideGuestMemory(gpa))?;
        if gpa.page_offset() as usize + len > PAGE_SIZE as usize {
            return Err(OutsideGuestMemory(gpa));
        }
        Ok(memory::phys_to_virt(*frame).wrapping_add(gpa.page_offset() as usize))
    }

    fn word(&self, gpa: GuestPhysAddr) -> Result<&AtomicU64, OutsideGuestMemory> {
        if !gpa.as_u64().is_multiple_of(8) {
            return Err(OutsideGuestMemory(gpa));
        }
        let ptr = self.host_ptr(gpa, 8)?;
        // SAFETY: `host_ptr` checked that the 8 aligned bytes are inside a
        // frame of this guest's memory, which the direct map reaches and
        // which lives as long as `self`. The guest may write the word
        // concurrently (on another CPU), hence the atomic.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }
}

fn zero_frame(frame: HostPhysAddr) {
    // SAFETY: a frame just taken from the allocator, ours alone.
    unsafe { memory::phys_to_virt(frame).write_bytes(0, PAGE_SIZE as usize) };
}

impl GuestMemory for FrameGuestMemory {
    fn size(&self) -> u64 {
        self.frames.len() as u64 * PAGE_SIZE
    }

    fn host_frame(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.frames
            .get(usize::try_from(gpa.frame_number()).ok()?)
            .copied()
    }

    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, OutsideGuestMemory> {
        Ok(self.word(gpa)?.load(Ordering::Relaxed))
    }

    fn write_u64(&mut self, gpa: GuestPhysAddr, value: u64) -> Result<(), OutsideGuestMemory> {
        self.word(gpa)?.store(value, Ordering::Relaxed);
        Ok(())
    }

    fn compare_exchange_u64(
        &mut self,
        gpa: GuestPhysAddr,
        current: u64,
        new: u64,
    ) -> Result<bool, OutsideGuestMemory> {
        let word = self.word(gpa)?;
        Ok(word
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok())
    }
}

impl GuestRam for FrameGuestMemory {
    fn registers(&self) -> &GuestRegs {
        // SAFETY: the register frame is this guest's alone (taken in `new`,
        // freed in `release`), reached through the direct map; `REGS_OFFSET`
        // leaves exactly one aligned `GuestRegs` at the page's top. The
        // switcher writes it only inside `CpuSwitcher::run`, which takes no
        // reference to it, so no Rust reference is live across a write.
        unsafe { &*self.registers_ptr() }
    }

    fn registers_mut(&mut self) -> &mut GuestRegs {
        // SAFETY: as for `registers`; `&mut self` makes this the only one.
        unsafe { &mut *self.registers_ptr() }
    }

    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutsideGuestMemory> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa
                .checked_add(done as u64)
                .ok_or(OutsideGuestMemory(gpa))?;
            let n = (buf.len() - done).min((PAGE_SIZE - at.page_offset()) as usize);
            let src = self.host_ptr(at, n)?;
            // SAFETY: `host_ptr` checked the n bytes lie in one guest frame.
            unsafe { core::ptr::copy_nonoverlapping(src, buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    fn write_bytes(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), OutsideGuestMemory> {
        let mut done = 0;
        while done < data.len() {
            let at = gpa
                .checked_add(done as u64)
                .ok_or(OutsideGuestMemory(gpa))?;
            let n = (data.len() - done).min((PAGE_SIZE - at.page_offset()) as usize);
            let dst = self.host_ptr(at, n)?;
            // SAFETY: as for `read_bytes`.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), dst, n) };
            done += n;
        }
        Ok(())
    }
}

/// Shadow page-table frames, straight from the frame allocator.
pub struct HostFrames;

impl ShadowFrames for HostFrames {
    fn allocate_zeroed(&mut self) -> Option<HostPhysAddr> {
        let frame = memory::alloc_frame()?;
        zero_frame(frame);
        Some(frame)
    }

    fn free(&mut self, frame: HostPhysAddr) {
        memory::free_frame(frame);
    }

    fn read_entry(&self, table: HostPhysAddr, index: TableIndex) -> u64 {
        // SAFETY: `table` is a shadow-table frame we handed out (the trait's
        // contract), and `index` < 512.
        unsafe {
            memory::phys_to_virt(table)
                .cast::<u64>()
                .add(index.as_usize())
                .read_volatile()
        }
    }

    fn write_entry(&mut self, table: HostPhysAddr, index: TableIndex, value: u64) {
        // SAFETY: as for `read_entry`.
        unsafe {
            memory::phys_to_virt(table)
                .cast::<u64>()
                .add(index.as_usize())
                .write_volatile(value)
        }
    }
}

/// The clock and the console, for guests.
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

/// One guest and what is expected of it.
struct Slot {
    guest: Guest<FrameGuestMemory>,
    /// Its identity for the scheduler.
    vcpu: VcpuId,
    expect: Expect,
    /// Its network card's port on the virtual switch.
    port: PortId,
    /// The host's share of the guest's no-op hypercalls, for the benchmark.
    host_shares: HostShares,
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

/// Runs the guests of `config` to their ends. Returns whether every guest
/// ended as expected.
pub fn run_guests(
    config: &Config<'_>,
    archive: Option<&[u8]>,
    tsc_hz: u64,
    regions: &[Region],
) -> Result<bool, RunError> {
    let archive =
        GuestArchive::open(archive.ok_or(RunError::NoArchive)?).map_err(RunError::Archive)?;
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
    let mut slots = Vec::new();
    let mut network = Network::start(config, regions, services.now_ns());
    // The network's rings and buffers live as long as the host: only what
    // the guests take must come back.
    let frames_before = memory::frame_stats();
    let mut all_started = true;
    for (index, spec) in GuestSpec::parse_list(config.guests).flatten().enumerate() {
        let devices = standard_devices(guest_mac(index), entropy_seed());
        let port = network.add_guest(spec.image);
        // A guest that cannot start is reported, and the others still run.
        let vcpu = VcpuId::new(index as u32, 0);
        match start_guest(&archive, spec, &settings, devices, port, vcpu) {
            Ok(slot) => slots.push(slot),
            Err(e) => {
                network.remove_guest(port);
                println!("guest {} failed to start: {e}", spec.image);
                all_started = false;
            }
        }
    }
    log::info!("running {} guest(s): {}", slots.len(), config.guests);
    let all_as_expected =
        schedule(&mut slots, &mut switcher, &mut network, services, slice_ns) && all_started;
    network.final_stats(apic::uptime_ms());
    println!("network: {}", network.counters());
    let frames_after = memory::frame_stats();
    println!(
        "frames: {} free before the guests, {} after ({})",
        frames_before.free,
        frames_after.free,
        if frames_before.free == frames_after.free {
            "balanced"
        } else {
            "LEAKED"
        }
    );
    Ok(all_as_expected && frames_before.free == frames_after.free)
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
    port: PortId,
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
    match Guest::new(
        name.clone(),
        mem,
        loaded,
        settings.paging,
        settings.budget_ns,
        devices,
        &mut HostFrames,
    ) {
        Ok(guest) => Ok(Slot {
            guest,
            vcpu,
            expect: spec.expect,
            host_shares: HostShares::default(),
            port,
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

/// Puts the frames guest `from` sent into the switch, and hands every
/// guest the frames waiting on its port (one interrupt each for the lot).
fn switch_frames(slots: &mut [Slot], network: &mut Network, sched: &mut Scheduler, from: usize) {
    let slot = &mut slots[from];
    network.sent_by_guest(slot.port, slot.guest.take_outbound_frames());
    deliver_frames(slots, network, sched);
}

/// Hands every guest the frames waiting on its port, if any are; a
/// halted guest they wake is the scheduler's to run again.
fn deliver_frames(slots: &mut [Slot], network: &mut Network, sched: &mut Scheduler) {
    if !network.has_frames_waiting() {
        return;
    }
    for slot in slots.iter_mut() {
        let was_halted = *slot.guest.state() == GuestState::Halted;
        network.deliver_to_guest(slot.port, |frames| slot.guest.receive_frames(frames));
        if was_halted && *slot.guest.state() == GuestState::Runnable {
            // One CPU: the kick, if any, is this one.
            let _ = sched.wake(slot.vcpu);
        }
    }
}

/// The guests' lines of the counters page.
fn guest_lines(slots: &mut [Slot]) -> Vec<GuestLine> {
    slots
        .iter_mut()
        .map(|slot| GuestLine {
            name: slot.guest.name.clone(),
            cpu_ms: slot.guest.cpu_ns_used / 1_000_000,
            exits: slot.guest.counters,
            paging: slot.guest.paging_stats(),
            device_requests: slot.guest.device_requests(),
        })
        .collect()
}

/// Runs the guests until all have ended, on the boot CPU, taking turns as
/// the scheduler ([`host::sched`]) decides: the policy (whose turn, how
/// long) is there, tested on Linux; the mechanics (the timer, the world
/// switch, the network between turns) are here.
fn schedule(
    slots: &mut Vec<Slot>,
    switcher: &mut CpuSwitcher,
    network: &mut Network,
    mut services: Services,
    slice_ns: u64,
) -> bool {
    const CPU: CpuId = CpuId::BOOT;
    let mut sched = Scheduler::new(1, slice_ns);
    for slot in slots.iter() {
        // Ids are the guests' numbers, unique by construction.
        let _ = sched.add(slot.vcpu);
    }
    let mut all_as_expected = true;
    let mut timer = DeadlineTimer::new();
    // Which guest ran here last, by its register page (unique per guest).
    let mut last_on_cpu: Option<HostPhysAddr> = None;
    while !slots.is_empty() {
        let now = services.now_ns();
        if network.needs_polling() {
            network.poll(now, || guest_lines(slots));
            deliver_frames(slots, network, &mut sched);
        }
        let poll_due = network.needs_polling().then(|| now + network::POLL_NS);
        let (vcpu, until) = match sched.pick(CPU, now) {
            Decision::Idle { until } => {
                idle_until(&mut timer, min_deadline(until, poll_due), now);
                continue;
            }
            Decision::Run { vcpu, until, .. } => (vcpu, until),
        };
        let Some(current) = slots.iter().position(|s| s.vcpu == vcpu) else {
            // Not one of ours (cannot happen: every slot's vCPU is added
            // once and ended with it): let the scheduler forget it.
            let _ = sched.turn_ended(CPU, vcpu, now, Outcome::Ended);
            continue;
        };
        let slot = &mut slots[current];
        if !slot.guest.poll(now) {
            // Picked for a timer that woke nothing the guest can run for.
            let timer_due = slot.guest.timer_deadline();
            let _ = sched.turn_ended(CPU, vcpu, now, Outcome::Halted { timer: timer_due });
            continue;
        }
        let turn = Turn {
            slice_end: min_deadline(until, poll_due),
            timer: &mut timer,
        };
        let id = slot.guest.memory().register_page();
        if last_on_cpu != Some(id) {
            slot.guest.cpu_tables_lost();
            last_on_cpu = Some(id);
        }
        let next = if crate::bench::enabled() {
            run_turn(
                &mut slot.guest,
                turn,
                &mut slot.host_shares,
                switcher,
                &mut services,
            )
        } else {
            run_turn(
                &mut slot.guest,
                turn,
                &mut NoEvents,
                switcher,
                &mut services,
            )
        };
        let timer_due = slots[current].guest.timer_deadline();
        let outcome = match next {
            Next::Resume => Outcome::Runnable { timer: timer_due },
            Next::Halted => Outcome::Halted { timer: timer_due },
            Next::Ended => Outcome::Ended,
        };
        let _ = sched.turn_ended(CPU, vcpu, services.now_ns(), outcome);
        switch_frames(slots, network, &mut sched, current);
        if next == Next::Ended {
            let slot = slots.remove(current);
            switcher.release_registers(slot.guest.memory().register_page());
            all_as_expected &= report_end(slot, network);
            last_on_cpu = None;
        }
    }
    all_as_expected
}

/// What bounds one guest's turn on the CPU, and the timer that enforces it.
struct Turn<'t> {
    /// When the turn ends whatever the guest does (its slice ended with
    /// another guest waiting, or another guest's timer is due).
    slice_end: Option<u64>,
    timer: &'t mut DeadlineTimer,
}

/// Runs one guest until its turn ends, it halts or it ends; charges the CPU
/// time it used to its budget.
fn run_turn<E: ExitEvents>(
    guest: &mut Guest<FrameGuestMemory>,
    turn: Turn<'_>,
    events: &mut E,
    switcher: &mut CpuSwitcher,
    services: &mut Services,
) -> Next {
    let mut started = services.now_ns();
    loop {
        let now = services.now_ns();
        let Some(root) = guest.prepare_entry(&mut HostFrames, switcher.guest_view(), now) else {
            events.turn_over();
            return Next::Ended;
        };
        if let Some((stack, gates)) = guest.take_cpu_tables() {
            switcher.set_direct_trap_stack(stack);
            for (vector, handler) in gates {
                switcher.set_direct_trap(vector, handler);
            }
        }
        let budget_end = started.saturating_add(guest.cpu_ns_left());
        let due = min_deadline(turn.slice_end, guest.timer_deadline())
            .map_or(budget_end, |d| d.min(budget_end));
        turn.timer.arm(due, now);
        events.entering();
        let cr2 = switcher.run(root, guest.memory().register_page());
        let exit = Exit::of(guest.regs(), cr2);
        events.exit(exit);
        if let Some(vector) = exit.host_interrupt() {
            interrupts::handle_host_interrupt(vector);
        }
        let next = guest.handle_exit(exit, &mut HostFrames, services);
        // The time is charged when the turn ends, and at the host's timer
        // (which may be the budget's end).
        // Frames it sent end its turn too, so that the guest they are
        // for can answer while this one waits.
        let sent_frames =
            exit == Exit::Hypercall(Some(Number::VirtioNotify)) && guest.has_outbound_frames();
        let turn_over = next != Next::Resume || exit == Exit::HostTimer || sent_frames;
        if !turn_over {
            continue;
        }
        let now = services.now_ns();
        if guest.charge_cpu_time(now.saturating_sub(started)) == Next::Ended {
            events.turn_over();
            return Next::Ended;
        }
        started = now;
        if next != Next::Resume || turn.slice_end.is_some_and(|end| now >= end) || sent_frames {
            events.turn_over();
            return next;
        }
    }
}

/// The earlier of two optional deadlines.
fn min_deadline(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The host's one-shot timer, armed for an absolute deadline (host
/// nanoseconds). It writes the APIC only when the deadline changes or the
/// last one fired: a guest's hypercalls, faults and other exits, which
/// change nothing, cost no timer access.
struct DeadlineTimer {
    /// The deadline armed, and the count of timer interrupts then.
    armed: Option<(u64, u64)>,
}

impl DeadlineTimer {
    fn new() -> Self {
        Self { armed: None }
    }

    /// Makes the timer fire at `deadline` (at once if it is not after
    /// `now`).
    fn arm(&mut self, deadline: u64, now: u64) {
        let fired = apic::ticks();
        if self.armed == Some((deadline, fired)) {
            return;
        }
        apic::arm_timer(deadline.saturating_sub(now));
        self.armed = Some((deadline, fired));
    }
}

/// The longest the CPU sleeps with every guest halted and no timer of
/// theirs due: they are woken by nothing else today, so this only bounds
/// how long a mistake could keep the host asleep.
const IDLE_LIMIT_NS: u64 = 1_000_000_000;

/// Sleeps until the first guest timer is due (`first_due`, host
/// nanoseconds), or a host interrupt.
fn idle_until(timer: &mut DeadlineTimer, first_due: Option<u64>, now: u64) {
    timer.arm(first_due.unwrap_or(now + IDLE_LIMIT_NS), now);
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

/// Prints how a guest ended and returns its frames. Says whether that was
/// the expected end.
fn report_end(slot: Slot, network: &mut Network) -> bool {
    let Slot {
        guest,
        expect,
        host_shares,
        port,
        ..
    } = slot;
    if let Some(stats) = network.remove_guest(port) {
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
        "guest {name} paging: faults_fixed={} faults_reflected={} roots_made={} roots_reused={} roots_evicted={} eager_fills={} shadow_frames_held={}",
        paging.faults_fixed,
        paging.faults_reflected,
        paging.roots_made,
        paging.roots_reused,
        paging.roots_evicted,
        paging.eager_fills,
        paging.frames_held
    );
    if !as_expected {
        println!("guest {name}: expected {expect:?}, but it ended otherwise");
    }
    as_expected
}
