//! A guest: its memory, registers, shadow page tables and state, and what
//! happens at each of its exits.
//!
//! The kernel's run loop owns the CPU: it enters a guest through the
//! switcher and, when the guest traps, hands the trap to
//! [`Guest::handle_exit`]. Everything a trap can mean is decided here, in
//! safe code:
//!
//! - a hypercall ([`hypercall`]) is decoded, its arguments checked, and
//!   carried out;
//! - a page fault goes to the shadow page tables first, and only reaches
//!   the guest when the guest's own tables forbid the access;
//! - any other exception is delivered to the guest's own handler
//!   ([`deliver`]), the way the CPU would have delivered it;
//! - a privileged instruction in ring 1 kills the guest with a reason
//!   naming it ([`insn`]); an `iretq` that faults in ring 1 is judged by
//!   its frame (a return to ring 0 kills; any other bad frame is the
//!   guest's own `#GP`);
//! - a direct trap from guest user code taken before the guest named a
//!   kernel stack faults at [`NO_KERNEL_STACK`], and kills naming that.
//!
//! Before every entry, [`Guest::prepare_entry`] delivers a pending virtual
//! interrupt if the guest's virtual interrupt flag allows it, and readies
//! the shadow tables (stack pinned, switcher installed).

mod deliver;
pub mod devices;
pub mod exit;
pub mod hypercall;
mod insn;
pub mod load;
#[cfg(test)]
mod tests;
mod vcpu;
pub mod zero_pool;

use crate::addr::{GuestPhysAddr, GuestVirtAddr, HostPhysAddr};
use crate::paging::{
    Access, FaultDecision, GuestMemory, OutsideGuestMemory, PagingConfig, PagingError, PagingStats,
    ShadowFrames, ShadowPaging, ZeroFill, ZeroRequest,
};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use guest_abi::boot::SHARED_PAGE_GPA;
use guest_abi::shared::offset as shared;
use switcher::{GuestRegs, selector};

pub use devices::{Devices, standard_devices};
pub use exit::{Exit, ExitEvents, NoEvents};
pub use insn::IretProblem;

/// What the CPU's TSS holds as `RSP1`, the stack of direct traps, while
/// the guest has named no kernel stack: the middle of the switcher's slot,
/// which the switcher never maps (its pages fit in the slot's first 2 MiB).
/// A direct trap from guest user code then pushes its frame just below this
/// address and page-faults there, as a supervisor write from ring 3, and
/// the host knows the fault for what it is (see [`KillReason::NoKernelStack`])
/// instead of taking it for a write to the switcher's pages. Canonical, so
/// the fault is a `#PF` with the address in CR2, not a `#GP`; 16-aligned,
/// as the CPU aligns the stack anyway.
pub const NO_KERNEL_STACK: u64 = switcher::SLOT_BASE + (1 << 38);

const _: () = assert!(
    NO_KERNEL_STACK - switcher::PAGE >= switcher::SLOT_BASE + 0x20_0000
        && NO_KERNEL_STACK.is_multiple_of(16)
        && (NO_KERNEL_STACK >> 39) & 0x1ff == switcher::SLOT_PML4_INDEX as u64
);

/// The bytes below [`NO_KERNEL_STACK`] a direct trap's frame takes: SS,
/// RSP, RFLAGS, CS, RIP (no error code: a software interrupt has none),
/// with room to spare.
const NO_KERNEL_STACK_FRAME: u64 = 64;

/// A guest's memory as the run loop needs it: the words the page tables
/// use, plus bytes (images, console output, trap frames), plus the page its
/// registers live in.
pub trait GuestRam: GuestMemory {
    /// Copies guest memory at `gpa` into `buf`.
    fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), OutsideGuestMemory>;
    /// Copies `data` into guest memory at `gpa`.
    fn write_bytes(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), OutsideGuestMemory>;
    /// The guest's registers. In the kernel they live in the guest's own
    /// register page, the very page the switcher pushes them to at an exit
    /// and pops them from at an entry (mapped into the switcher's slot while
    /// the guest runs), so they are never copied (lguest copied them only
    /// when another guest had run on the CPU; we need not even then). Not
    /// guest memory: the guest cannot name it.
    fn registers(&self) -> &GuestRegs;
    /// The guest's registers, to change.
    fn registers_mut(&mut self) -> &mut GuestRegs;
    /// Takes a register page for one more vCPU (numbered after the last);
    /// false if the host has no memory for it.
    fn add_vcpu(&mut self) -> bool;
    /// Makes vCPU `vcpu`'s register page the one [`Self::registers`] gives
    /// (vCPU 0's until told otherwise).
    fn select_vcpu(&mut self, vcpu: usize);
    /// Makes the page at `gpa` the shared page that [`Self::shared_u64`]
    /// reads: the active vCPU's. False (and nothing changes) if it is not
    /// a page of guest memory. The host reads and writes this page at
    /// every entry, so its place is kept at hand.
    fn select_shared_page(&mut self, gpa: GuestPhysAddr) -> bool;
    /// Word `offset` of the selected shared page (`offset` is taken modulo
    /// the page and rounded down to a word: an access never leaves it).
    fn shared_u64(&self, offset: u64) -> u64;
    /// Sets word `offset` of the selected shared page (as for
    /// [`Self::shared_u64`]).
    fn set_shared_u64(&mut self, offset: u64, value: u64);
}

/// What the host offers a guest besides memory and frames.
pub trait HostServices {
    /// Nanoseconds since the host booted.
    fn now_ns(&self) -> u64;
    /// Prints one line of a guest's console output.
    fn console_line(&mut self, guest: &str, line: &[u8]);
    /// Sets the running guest's FS base to `base` (canonical, checked by
    /// the caller). It lives in the CPU while the guest runs, like the
    /// guest's FPU registers, and the kernel keeps it with them when
    /// another guest takes the CPU.
    fn set_fs_base(&mut self, base: u64);
}

/// Where a guest is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestState {
    /// Ready to run.
    Runnable,
    /// Waiting in the halt hypercall for a virtual interrupt.
    Halted,
    /// Ended by its own shutdown hypercall.
    Exited(u64),
    /// Ended by the host.
    Killed(KillReason),
}

/// Why the host ended a guest. Each names what the guest did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// A privileged instruction in the guest kernel (ring 1).
    PrivilegedInstruction {
        /// What it was (`cli`, `mov to cr3`, `mov from cr8`, `mov to dr7`, ...).
        what: &'static str,
        /// Where.
        rip: u64,
    },
    /// An `iretq` in the guest kernel whose frame returns to ring 0 (a
    /// code selector of privilege 0, or the switcher's own): the CPU
    /// refuses it with `#GP`, but it is an attempt on the host's ring.
    IretToRing0 {
        /// The frame's CS.
        cs: u64,
        /// Where the `iretq` is.
        rip: u64,
    },
    /// An `iretq` in the guest kernel that raised `#GP` because of its
    /// frame, with no `#GP` handler to take it (with one, the `#GP` is
    /// delivered, as the CPU would).
    BadIret {
        /// What is wrong with the frame.
        problem: IretProblem,
        /// The `#GP`'s error code.
        error_code: u64,
        /// Where the `iretq` is.
        rip: u64,
    },
    /// A direct trap from guest user code, taken before the guest named a
    /// kernel stack (`SetKernelStack`): the CPU had nowhere to push its
    /// frame ([`NO_KERNEL_STACK`]).
    NoKernelStack {
        /// The vector, when the instruction at `rip` says (`int n`).
        vector: Option<u8>,
        /// Where, in user code.
        rip: u64,
    },
    /// `int 0x81` from guest user code.
    HypercallFromUser {
        /// Where.
        rip: u64,
    },
    /// An exception the guest has no handler for.
    Unhandled {
        /// The vector.
        vector: u8,
        /// Where.
        rip: u64,
        /// For a page fault, the address.
        address: Option<u64>,
    },
    /// A write to (or a fetch from) the switcher's pages.
    SwitcherAccess {
        /// The address touched.
        address: u64,
        /// Where.
        rip: u64,
    },
    /// A malformed page-table entry, root or ring (the shadow tables said).
    Paging(PagingError),
    /// It broke the rules of its zero pool (a bad page or bad counts).
    ZeroPool(zero_pool::ZeroPoolError),
    /// A trap could not be delivered: the guest's stack is not usable.
    CannotDeliver {
        /// The vector being delivered.
        vector: u8,
        /// The stack pointer it would have used.
        stack: u64,
    },
    /// A bad hypercall argument that leaves the guest no sane way on.
    BadHypercall(&'static str, u64),
    /// A double fault or machine check while the guest ran.
    Fatal(u8),
    /// It halted with no interrupt pending and nothing that could raise
    /// one (no timer armed, no device): it would sleep for ever, and the
    /// host, which ends when every guest has, with it.
    HaltedForever {
        /// Whether its virtual interrupts were off as well.
        interrupts_off: bool,
    },
    /// It broke one of its virtio devices (a malformed ring, descriptor
    /// or status; the reason names the device, the queue and what).
    Device(crate::virtio::DeviceError),
    /// It ran longer than its time budget.
    OverBudget {
        /// The budget, in milliseconds of CPU time.
        budget_ms: u64,
        /// Whether its virtual interrupts were off at the end.
        interrupts_off: bool,
    },
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrivilegedInstruction { what, rip } => {
                write!(f, "privileged instruction `{what}` at rip {rip:#x}")
            }
            Self::IretToRing0 { cs, rip } => write!(
                f,
                "iretq to ring 0 (its frame's cs is {cs:#x}) at rip {rip:#x}"
            ),
            Self::BadIret {
                problem,
                error_code,
                rip,
            } => write!(
                f,
                "iretq with a bad frame at rip {rip:#x}: {problem}: #GP({error_code:#x})"
            ),
            Self::NoKernelStack { vector, rip } => {
                match vector {
                    Some(v) => write!(f, "direct trap {v:#x}")?,
                    None => f.write_str("a direct trap")?,
                }
                write!(
                    f,
                    " taken with no kernel stack set (SetKernelStack) at rip {rip:#x}"
                )
            }
            Self::HypercallFromUser { rip } => {
                write!(f, "hypercall from user mode (ring 3) at rip {rip:#x}")
            }
            Self::Unhandled {
                vector,
                rip,
                address,
            } => {
                write!(
                    f,
                    "unhandled {} at rip {rip:#x}",
                    insn::exception_name(*vector)
                )?;
                match address {
                    Some(a) => write!(f, " (address {a:#x})"),
                    None => Ok(()),
                }
            }
            Self::SwitcherAccess { address, rip } => write!(
                f,
                "write to the switcher's pages at {address:#x} (rip {rip:#x})"
            ),
            Self::Paging(e) => write!(f, "{e}"),
            Self::CannotDeliver { vector, stack } => write!(
                f,
                "cannot deliver {}: its stack at {stack:#x} is not mapped writable",
                insn::exception_name(*vector)
            ),
            Self::BadHypercall(what, value) => write!(f, "bad hypercall: {what} ({value:#x})"),
            Self::Fatal(vector) => write!(f, "{} while running", insn::exception_name(*vector)),
            Self::HaltedForever { interrupts_off } => write!(
                f,
                "halted with nothing to wake it (no interrupt pending, no timer armed{})",
                if *interrupts_off {
                    ", virtual interrupts off"
                } else {
                    ""
                }
            ),
            Self::Device(error) => write!(f, "{error}"),
            Self::ZeroPool(error) => write!(f, "{error}"),
            Self::OverBudget {
                budget_ms,
                interrupts_off,
            } => write!(
                f,
                "ran over its time budget of {budget_ms} ms{}",
                if *interrupts_off {
                    " with its virtual interrupts off"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Exits by reason, printed when the guest ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// Hypercalls.
    pub hypercalls: u64,
    /// Page faults (fixed or reflected).
    pub page_faults: u64,
    /// Other exceptions reflected into the guest.
    pub exceptions: u64,
    /// Host interrupts that took the CPU from the guest.
    pub interrupts: u64,
    /// Of those, the host's timer: a time slice, a budget or a timer of
    /// the guest's own ending while it ran.
    pub host_timers: u64,
    /// Virtual interrupts delivered.
    pub virtual_interrupts: u64,
    /// Exits the guest made while handling a virtual interrupt (between
    /// its delivery and the guest's end of interrupt, see
    /// `guest_abi::shared::SharedPage::in_interrupt`):
    /// work the interrupt caused, such as a timer handler re-arming the
    /// timer. Counted here instead of in `hypercalls`, `page_faults` or
    /// `exceptions`, which count only what the guest's own code did.
    pub in_interrupt_handlers: u64,
    /// CR3 loads: one per entry (the switcher loads the shadow root) and
    /// one per exit (back to the host's).
    pub cr3_loads: u64,
}

impl ExitCounters {
    /// All exits.
    pub fn total(&self) -> u64 {
        self.guest_caused() + self.interrupts + self.in_interrupt_handlers
    }

    /// Exits the guest's own code caused, outside any interrupt's doing:
    /// not a host interrupt, not work inside a virtual-interrupt handler.
    /// Unlike the total, this does not depend on how fast the machine is
    /// (a slow loop meets more host ticks, never more of these).
    pub fn guest_caused(&self) -> u64 {
        self.hypercalls + self.page_faults + self.exceptions
    }
}

impl fmt::Display for ExitCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exits={} hypercalls={} page_faults={} exceptions={} interrupts={} irq_handler_exits={} virtual_irqs={} cr3_loads={}",
            self.total(),
            self.hypercalls,
            self.page_faults,
            self.exceptions,
            self.interrupts,
            self.in_interrupt_handlers,
            self.virtual_interrupts,
            self.cr3_loads
        )
    }
}

/// The kinds of exit the guest's own code makes, as [`ExitCounters`]
/// counts them.
#[derive(Clone, Copy, Debug)]
enum GuestExit {
    Hypercall,
    PageFault,
    Exception,
}

/// A measurement's id and the counts at its start (`BenchMark` phase 0).
#[derive(Clone, Copy, Debug)]
struct BenchStart {
    id: u64,
    counters: ExitCounters,
    paging: PagingStats,
}

/// Where the guest wants a trap delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapTarget {
    /// Guest-virtual handler address (canonical, kernel half).
    pub handler: u64,
    /// Leave virtual interrupts on while delivering.
    pub keep_interrupts: bool,
    /// Reached directly from user code through the CPU's IDT.
    pub direct: bool,
}

/// What the run loop does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Enter the guest again.
    Resume,
    /// The guest waits for a virtual interrupt: run another.
    Halted,
    /// The guest is over ([`Guest::state`] says how).
    Ended,
}

/// One guest.
pub struct Guest<M: GuestRam> {
    /// Its name (the archive entry and arguments it was started with).
    pub name: String,
    memory: M,
    paging: ShadowPaging,
    /// The active vCPU's own part ([`vcpu`]): the one whose exit is being
    /// handled.
    vcpu: vcpu::Vcpu,
    /// Which vCPU that is.
    active_vcpu: usize,
    /// The other vCPUs' parts, by number (empty for a guest of one vCPU;
    /// the active vCPU's place is empty).
    parked: Vec<Option<vcpu::Vcpu>>,
    /// How many vCPUs it may start.
    max_vcpus: usize,
    /// vCPUs started and not yet handed to the kernel.
    started_vcpus: Vec<usize>,
    /// vCPUs another vCPU sent an interrupt, not yet told to the kernel
    /// (bit `k` for vCPU `k`).
    interrupted_vcpus: u64,
    /// How it ended, once it has (whichever vCPU's exit ended it).
    end: Option<GuestState>,
    /// The measurement a `bench_mark` hypercall started.
    bench_mark: Option<BenchStart>,
    /// Exits by reason.
    pub counters: ExitCounters,
    /// Nanoseconds of CPU time it has run for, and the most it may.
    pub cpu_ns_used: u64,
    cpu_ns_budget: u64,
    console: Vec<u8>,
    /// Its virtio devices.
    devices: Devices,
}

/// The stack pages kept mapped below the guest kernel's stack top.
const PINNED_STACK_PAGES: u64 = 2;

impl<M: GuestRam> Guest<M> {
    /// Makes a guest from a loaded image in `memory`, which may start up
    /// to `max_vcpus` vCPUs (at least 1).
    #[allow(clippy::too_many_arguments)]
    pub fn new<F: ShadowFrames>(
        name: String,
        memory: M,
        image: load::LoadedImage,
        paging: PagingConfig,
        cpu_ns_budget: u64,
        devices: Devices,
        max_vcpus: usize,
        frames: &mut F,
    ) -> Result<Self, PagingError> {
        let mut memory = memory;
        let mut paging = ShadowPaging::new(paging, &memory, frames, image.root)?;
        // The host writes the shared page at every entry (the clock, the
        // pending interrupts), so it must never be read as a root: not the
        // initial one, nor one the guest switches to later.
        if let Err(e) = paging.reserve_shared_page(SHARED_PAGE_GPA) {
            paging.teardown(frames);
            return Err(e);
        }
        // The MMU ring is the one in the shared page, as the ABI says
        // (`SharedPage::mmu_ring`).
        let ring = SHARED_PAGE_GPA + shared::MMU_RING;
        if let Err(e) = paging.register_ring(&mut memory, ring) {
            paging.teardown(frames);
            return Err(e);
        }
        *memory.registers_mut() = GuestRegs {
            rip: image.entry,
            cs: u64::from(selector::GUEST_KERNEL_CODE),
            ss: u64::from(selector::GUEST_KERNEL_DATA),
            rflags: RFLAGS_IF | RFLAGS_RESERVED,
            rdi: image.boot_params,
            ..GuestRegs::default()
        };
        let max_vcpus = max_vcpus.max(1);
        let vcpus_field = GuestPhysAddr::new(
            guest_abi::boot::BOOT_PARAMS_GPA
                + core::mem::offset_of!(guest_abi::boot::BootParams, vcpus) as u64,
        );
        let shared_page = GuestPhysAddr::new(SHARED_PAGE_GPA);
        if memory.write_u64(vcpus_field, max_vcpus as u64).is_err()
            || !memory.select_shared_page(shared_page)
        {
            paging.teardown(frames);
            return Err(PagingError::GuestMemory { gpa: vcpus_field });
        }
        Ok(Self {
            name,
            memory,
            paging,
            vcpu: vcpu::Vcpu::boot(),
            active_vcpu: 0,
            parked: Vec::new(),
            max_vcpus,
            started_vcpus: Vec::new(),
            interrupted_vcpus: 0,
            end: None,
            bench_mark: None,
            counters: ExitCounters::default(),
            cpu_ns_used: 0,
            cpu_ns_budget,
            console: Vec::new(),
            devices,
        })
        .map(|mut guest: Self| {
            if guest.install_devices().is_err() {
                guest.devices = Devices::new();
            }
            guest
        })
    }

    /// Its registers, as of its last exit (or as the host set them for its
    /// next entry).
    pub fn regs(&self) -> &GuestRegs {
        self.memory.registers()
    }

    /// Its registers, to change.
    pub fn regs_mut(&mut self) -> &mut GuestRegs {
        self.memory.registers_mut()
    }

    /// Its memory (the kernel needs the register page's frame to enter it).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Where it is in its life: how it ended, or else whether the active
    /// vCPU runs or waits.
    pub fn state(&self) -> &GuestState {
        self.end.as_ref().unwrap_or(&self.vcpu.state)
    }

    /// Whether it has ended.
    #[inline]
    pub fn has_ended(&self) -> bool {
        self.end.is_some()
    }

    /// Its shadow page tables' counters.
    pub fn paging_stats(&self) -> PagingStats {
        self.paging.stats()
    }

    /// What the CPU's tables must be changed to for this guest, if anything
    /// changed since the last call: the stack for direct traps, and the
    /// direct-trap gates (all of them, or none if only the stack changed).
    pub fn take_cpu_tables(
        &mut self,
    ) -> Option<(u64, impl Iterator<Item = (u8, Option<u64>)> + '_)> {
        let stack_stale = core::mem::take(&mut self.vcpu.stack_stale);
        let traps_stale = core::mem::take(&mut self.vcpu.traps_stale);
        if !stack_stale && !traps_stale {
            return None;
        }
        let stack = self.vcpu.kernel_stack.unwrap_or(NO_KERNEL_STACK);
        let traps = if traps_stale {
            &self.vcpu.traps[..]
        } else {
            &[]
        };
        let gates = traps.iter().enumerate().filter_map(|(v, t)| {
            let vector = u8::try_from(v).ok()?;
            // A host vector never gets a handler: `set_trap` refuses it, and
            // its gate goes back to the switcher's stub all the same.
            let direct = t.filter(|t| t.direct && insn::may_be_direct(vector));
            insn::has_rewritable_gate(vector).then(|| (vector, direct.map(|t| t.handler)))
        });
        Some((stack, gates))
    }

    /// Marks the CPU's tables as needing this guest's direct traps again
    /// (another guest ran on this CPU in between).
    pub fn cpu_tables_lost(&mut self) {
        self.vcpu.stack_stale = true;
        self.vcpu.traps_stale = true;
    }

    /// Wakes the active vCPU if it halted and its timer has fired. Returns
    /// whether it can run.
    pub fn poll(&mut self, now_ns: u64) -> bool {
        self.fire_timer(now_ns);
        if self.vcpu.state == GuestState::Halted && self.pending_irqs() != 0 {
            self.vcpu.state = GuestState::Runnable;
        }
        !self.has_ended() && self.vcpu.state == GuestState::Runnable
    }

    /// Everything before an entry: time in the shared page, a due virtual
    /// interrupt delivered, the shadow tables ready. Returns the shadow root
    /// to run on, or `None` if the guest was killed on the way.
    ///
    /// Inlined into the run loop: it runs before every entry, and the
    /// common case (nothing pending, nothing to pin) is a few loads and
    /// stores, less than a call's saving and restoring of registers.
    #[inline(always)]
    pub fn prepare_entry<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        switcher_view: HostPhysAddr,
        now_ns: u64,
    ) -> Option<HostPhysAddr> {
        self.fire_timer(now_ns);
        self.write_shared(shared::TIME_NS, now_ns);
        self.deliver_pending_interrupt(frames);
        if self.has_ended() {
            return None;
        }
        self.sanitize_regs();
        match self
            .paging
            .prepare_to_run(&mut self.memory, frames, switcher_view)
        {
            Ok(root) => {
                self.counters.cr3_loads += 2;
                self.settle_shadow(frames);
                Some(root)
            }
            Err(e) => {
                self.kill(KillReason::Paging(e));
                None
            }
        }
    }

    /// Charges `ran_ns` of CPU time the guest used, and ends it if that
    /// takes it over its budget.
    pub fn charge_cpu_time(&mut self, ran_ns: u64) -> Next {
        self.cpu_ns_used = self.cpu_ns_used.saturating_add(ran_ns);
        if self.cpu_ns_used > self.cpu_ns_budget {
            let interrupts_off = self.read_shared(shared::IRQ_ENABLED) == 0;
            self.kill(KillReason::OverBudget {
                budget_ms: self.cpu_ns_budget / 1_000_000,
                interrupts_off,
            });
            return Next::Ended;
        }
        Next::Resume
    }

    /// CPU time it may still use before its budget ends it.
    pub fn cpu_ns_left(&self) -> u64 {
        self.cpu_ns_budget.saturating_sub(self.cpu_ns_used)
    }

    /// When the active vCPU's virtual timer is due (host nanoseconds), if
    /// it set one.
    pub fn timer_deadline(&self) -> Option<u64> {
        self.vcpu.timer_deadline
    }

    /// Handles `exit`, which just happened (its trap is in [`Self::regs`]).
    #[inline(always)]
    pub fn handle_exit<F: ShadowFrames, H: HostServices>(
        &mut self,
        exit: Exit,
        frames: &mut F,
        host: &mut H,
    ) -> Next {
        let next = match exit {
            Exit::Hypercall(number) => {
                self.count_guest_exit(GuestExit::Hypercall);
                self.hypercall(number, frames, host)
            }
            Exit::PageFault {
                address,
                error_code,
            } => {
                self.count_guest_exit(GuestExit::PageFault);
                self.page_fault(address, error_code, frames)
            }
            Exit::GeneralProtection => self.general_protection(frames),
            Exit::Nmi => Next::Resume,
            Exit::Fatal(vector) => self.kill(KillReason::Fatal(vector)),
            Exit::Exception { vector, error_code } => {
                self.count_guest_exit(GuestExit::Exception);
                self.deliver(frames, vector, error_code)
            }
            Exit::HostTimer => {
                self.counters.interrupts += 1;
                self.counters.host_timers += 1;
                Next::Resume
            }
            Exit::HostInterrupt(_) => {
                self.counters.interrupts += 1;
                Next::Resume
            }
        };
        self.settle_shadow(frames);
        // A guest's last words (a line without its newline) are printed
        // however it ended.
        if next == Next::Ended {
            self.flush_console(host);
        }
        next
    }

    /// Before the vCPU enters again, and before what it asked can be
    /// relied on: if the exit dropped a shadow entry other vCPUs of the
    /// guest may still hold in their TLBs, waits until each has left the
    /// guest once, then frees the tables the drops released
    /// ([`crate::paging::vcpus`]). Nothing to do with one vCPU.
    #[inline(always)]
    fn settle_shadow<F: ShadowFrames>(&mut self, frames: &mut F) {
        let owed = self.paging.owed_vcpus();
        if owed != 0 {
            frames.shoot_down(owed);
            self.paging.finish_shootdown(frames);
        }
    }

    /// Counts an exit the guest made: as its interrupt handler's while it
    /// is still in one (it has not yet said its end of interrupt), else by
    /// kind.
    fn count_guest_exit(&mut self, kind: GuestExit) {
        if self.vcpu.in_interrupt_handler {
            if self.read_shared(shared::IN_INTERRUPT) != 0 {
                self.counters.in_interrupt_handlers += 1;
                return;
            }
            self.vcpu.in_interrupt_handler = false;
        }
        let counter = match kind {
            GuestExit::Hypercall => &mut self.counters.hypercalls,
            GuestExit::PageFault => &mut self.counters.page_faults,
            GuestExit::Exception => &mut self.counters.exceptions,
        };
        *counter += 1;
    }

    /// Ends the guest's tables, returning every frame; gives the final counts.
    pub fn teardown<F: ShadowFrames>(self, frames: &mut F) -> (M, PagingStats) {
        let stats = self.paging.teardown(frames);
        (self.memory, stats)
    }

    fn page_fault<F: ShadowFrames>(&mut self, cr2: u64, error_code: u64, frames: &mut F) -> Next {
        let write = error_code & 2 != 0;
        if self.is_direct_trap_without_stack(cr2, error_code) {
            let mut code = [0u8; 16];
            let n = self.read_code(frames, &mut code);
            let vector = (n >= 2 && code[0] == 0xcd).then_some(code[1]);
            return self.kill(KillReason::NoKernelStack {
                vector,
                rip: self.regs().rip,
            });
        }
        let in_switcher = GuestVirtAddr::try_new(cr2).is_ok_and(GuestVirtAddr::in_switcher_slot);
        if in_switcher && write {
            return self.kill(KillReason::SwitcherAccess {
                address: cr2,
                rip: self.regs().rip,
            });
        }
        let Ok(address) = GuestVirtAddr::try_new(cr2) else {
            return self.kill(KillReason::Unhandled {
                vector: 14,
                rip: self.regs().rip,
                address: Some(cr2),
            });
        };
        let mut decision = self
            .paging
            .demand_page(&mut self.memory, frames, address, error_code);
        if let FaultDecision::ZeroOnDemand(request) = decision {
            decision = match self.map_zero_page(frames, request) {
                Ok(decision) => decision,
                Err(error) => return self.kill(KillReason::ZeroPool(error)),
            };
        }
        match decision {
            FaultDecision::Fixed => Next::Resume,
            FaultDecision::Reflect {
                address,
                error_code,
            } => {
                self.write_shared(shared::FAULT_ADDRESS, address.as_u64());
                if self.vcpu.traps[14].is_none() {
                    return self.kill(KillReason::Unhandled {
                        vector: 14,
                        rip: self.regs().rip,
                        address: Some(address.as_u64()),
                    });
                }
                self.deliver(frames, 14, Some(error_code))
            }
            FaultDecision::Kill(e) => self.kill(KillReason::Paging(e)),
            // `map_zero_page` decided it.
            FaultDecision::ZeroOnDemand(_) => Next::Resume,
        }
    }

    /// A fault on a zero-on-demand entry: maps a page from the faulting
    /// vCPU's zero pool there (`zero_pool`), or leaves the fault to the
    /// guest when the pool is empty.
    fn map_zero_page<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        request: ZeroRequest,
    ) -> Result<FaultDecision, zero_pool::ZeroPoolError> {
        let Some(page) = zero_pool::take(&mut self.memory)? else {
            return Ok(self.paging.zero_pool_empty(request));
        };
        Ok(
            match self
                .paging
                .map_zero_page(&mut self.memory, frames, request, page)
            {
                ZeroFill::Used(decision) => decision,
                ZeroFill::Unused => {
                    zero_pool::untake(&mut self.memory);
                    FaultDecision::Fixed
                }
            },
        )
    }

    /// Whether a page fault is a direct trap's frame pushed at
    /// [`NO_KERNEL_STACK`]: a supervisor write (the CPU's own push) while
    /// user code ran, just below the sentinel, with no kernel stack named.
    fn is_direct_trap_without_stack(&self, cr2: u64, error_code: u64) -> bool {
        const WRITE: u64 = 1 << 1;
        const USER: u64 = 1 << 2;
        self.vcpu.kernel_stack.is_none()
            && self.regs().cs & 3 == 3
            && error_code & (WRITE | USER) == WRITE
            && (NO_KERNEL_STACK - NO_KERNEL_STACK_FRAME..NO_KERNEL_STACK).contains(&cr2)
    }

    fn general_protection<F: ShadowFrames>(&mut self, frames: &mut F) -> Next {
        let from_user = self.regs().cs & 3 == 3;
        let error = self.regs().error_code;
        if from_user && insn::is_gate_fault(error, guest_abi::hypercall::VECTOR) {
            return self.kill(KillReason::HypercallFromUser {
                rip: self.regs().rip,
            });
        }
        if !from_user {
            let mut bytes = [0u8; 16];
            let n = self.read_code(frames, &mut bytes);
            if let Some(slot) = insn::iret_operand_bytes(&bytes[..n]) {
                return self.iret_fault(frames, slot, error);
            }
            if let Some(what) = insn::privileged(&bytes[..n]) {
                return self.kill(KillReason::PrivilegedInstruction {
                    what,
                    rip: self.regs().rip,
                });
            }
        }
        self.count_guest_exit(GuestExit::Exception);
        self.deliver(frames, 13, Some(error))
    }

    /// An `iret` (each frame slot `slot` bytes) raised `#GP` (with
    /// `error`) in ring 1, which may execute it: its frame is at fault.
    /// A return to ring 0 kills, naming it; any other bad frame is the
    /// guest's own mistake, a `#GP` delivered to its handler as the CPU
    /// would, or, with no handler, a kill that says what was wrong.
    fn iret_fault<F: ShadowFrames>(&mut self, frames: &mut F, slot: u8, error: u64) -> Next {
        let rip = self.regs().rip;
        let mut bytes = [0u8; 40];
        let size = 5 * usize::from(slot);
        let read = self.read_virt(frames, self.regs().rsp, &mut bytes[..size]);
        let verdict = if read < size {
            insn::IretVerdict::BadFrame(IretProblem::Unreadable)
        } else {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                let at = i * usize::from(slot);
                w[..usize::from(slot)].copy_from_slice(&bytes[at..at + usize::from(slot)]);
                u64::from_le_bytes(w)
            };
            let frame = insn::IretFrame {
                rip: word(0),
                cs: word(1),
                rflags: word(2),
                rsp: word(3),
                ss: word(4),
            };
            insn::judge_iret(&frame, self.regs().rflags)
        };
        match verdict {
            insn::IretVerdict::ToRing0 { cs } => self.kill(KillReason::IretToRing0 { cs, rip }),
            insn::IretVerdict::BadFrame(problem) if self.vcpu.traps[13].is_none() => {
                self.kill(KillReason::BadIret {
                    problem,
                    error_code: error,
                    rip,
                })
            }
            insn::IretVerdict::BadFrame(_) => {
                self.count_guest_exit(GuestExit::Exception);
                self.deliver(frames, 13, Some(error))
            }
        }
    }

    /// Reads up to 16 bytes of code at the guest's `rip` (fewer where the
    /// next page is not mapped); returns how many.
    fn read_code<F: ShadowFrames>(&mut self, frames: &mut F, buf: &mut [u8; 16]) -> usize {
        self.read_virt(frames, self.regs().rip, buf)
    }

    /// Reads guest-virtual memory at `vaddr` into `buf` as the guest kernel
    /// would (up to where its tables stop allowing it); returns how many
    /// bytes it could.
    fn read_virt<F: ShadowFrames>(&mut self, frames: &mut F, vaddr: u64, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(gpa) =
                self.translate(frames, vaddr.wrapping_add(n as u64), Access::KERNEL_READ)
            else {
                break;
            };
            let in_page = (4096 - gpa.page_offset()) as usize;
            let take = in_page.min(buf.len() - n);
            if self.memory.read_bytes(gpa, &mut buf[n..n + take]).is_err() {
                break;
            }
            n += take;
        }
        n
    }

    /// The guest-physical address behind guest-virtual `vaddr` for an
    /// access of kind `access`, faulting the page into the shadow (with its
    /// accessed and dirty bits) as the CPU's own access would have. `None`
    /// if the guest's tables do not allow it.
    fn translate<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vaddr: u64,
        access: Access,
    ) -> Option<GuestPhysAddr> {
        let vaddr = GuestVirtAddr::try_new(vaddr).ok()?;
        if vaddr.in_switcher_slot() {
            return None;
        }
        // A malformed entry is not this access's business: the guest's own
        // access will fault on it and be killed with the reason.
        self.paging
            .access_for_guest(&mut self.memory, frames, vaddr, access)
            .ok()
            .flatten()
    }

    fn fire_timer(&mut self, now_ns: u64) {
        if self.vcpu.timer_deadline.is_some_and(|d| now_ns >= d) {
            self.vcpu.timer_deadline = None;
            self.raise_irq(guest_abi::hypercall::TIMER_VECTOR);
        }
    }

    fn raise_irq(&mut self, vector: u8) {
        let bit = 1u64 << (vector - 32);
        let pending = self.pending_irqs();
        self.write_shared(shared::IRQ_PENDING, pending | bit);
    }

    fn pending_irqs(&self) -> u64 {
        self.read_shared(shared::IRQ_PENDING)
    }

    /// Word `offset` of the active vCPU's shared page.
    fn read_shared(&self, offset: u64) -> u64 {
        self.memory.shared_u64(offset)
    }

    /// Sets word `offset` of the active vCPU's shared page.
    fn write_shared(&mut self, offset: u64, value: u64) {
        self.memory.set_shared_u64(offset, value);
    }

    /// Whatever the host did to the registers (and the guest could not), it
    /// enters in ring 1 or 3 with interrupts on and no I/O privilege.
    fn sanitize_regs(&mut self) {
        let regs = self.regs_mut();
        let (cs, ss) = if regs.cs & 3 == 3 {
            (selector::GUEST_USER_CODE, selector::GUEST_USER_DATA)
        } else {
            (selector::GUEST_KERNEL_CODE, selector::GUEST_KERNEL_DATA)
        };
        regs.cs = u64::from(cs);
        regs.ss = u64::from(ss);
        regs.rflags = (regs.rflags & RFLAGS_GUEST_MASK) | RFLAGS_IF | RFLAGS_RESERVED;
    }

    fn kill(&mut self, reason: KillReason) -> Next {
        if !self.has_ended() {
            self.end = Some(GuestState::Killed(reason));
        }
        Next::Ended
    }
}

/// RFLAGS.IF: always on in a guest, so the host's tick can take the CPU back.
const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS bit 1, always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// The flags a guest may have: arithmetic flags, TF, DF, AC, ID (not IOPL,
/// NT, RF, VM, VIF, VIP).
const RFLAGS_GUEST_MASK: u64 =
    0b1000_1101_0101 | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 18) | (1 << 21);
