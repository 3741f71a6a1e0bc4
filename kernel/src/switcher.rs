//! The switcher, installed: its slot in the host's tables, this CPU's pages,
//! and the call that runs a guest until it traps.
//!
//! The `switcher` crate holds the code and the layout; here the kernel
//! gives them memory. At boot [`CpuSwitcher::new`]:
//!
//! 1. maps the switcher's code pages (the kernel's `.switcher` section) at
//!    `SLOT_BASE` in the host's tables, read-only and executable (once, for
//!    whichever CPU comes first: all CPUs share the code);
//! 2. takes four frames for this CPU, maps them writable for the host,
//!    and fills in the guest GDT, TSS and IDT: the state page, the IDT
//!    page and the host page (what the switcher keeps of the host, and the
//!    pointers its entry loads), which are this CPU's, and a register page
//!    of the CPU's own, which fills the register slot only while no
//!    guest's page is there (each guest has its own register page, see
//!    below);
//! 3. builds this CPU's *guest view* of the slot, a small page-table tree
//!    that every shadow root on this CPU gets as its last top-level entry:
//!    the code read-only, the register slot writable, the state and IDT
//!    pages read-only, all supervisor-only, nothing of other CPUs, and not
//!    the host page.
//!
//! A guest uses the CPU in *turns* (the run loop's, `crate::run`). Its turn
//! starts with [`CpuSwitcher::begin_turn`], which maps the guest's own
//! register page into the guest view's register slot and hands the CPU
//! what the switcher's assembly does not carry, the guest's FPU, SSE and
//! segment state ([`crate::context`]); [`CpuSwitcher::run`] then enters the
//! guest as often as the turn lasts, each time coming back with its
//! registers, in that page, and the trap that stopped it; and
//! [`CpuSwitcher::end_turn`] saves the guest's state and puts the CPU's own
//! register page back. So between turns no guest's page is mapped in any
//! CPU's slot, and a guest can take its next turn on any CPU. The IDT gates
//! a guest's direct traps change are never the host's own interrupt vectors
//! ([`CpuSwitcher::set_direct_trap`]).

use crate::context::GuestContext;
use crate::memory::paging::{HostPageRights, map_host_page, nx_bit};
use crate::memory::{self, MemoryError, phys_to_virt};
use alloc::boxed::Box;
use host::addr::HostPhysAddr;
use switcher::{
    GDT_ENTRIES, Gate, HostPage, IdtPage, PAGE, SLOT_BASE, STUB_STRIDE, StatePage, TablePointer,
    Tss, host_page_offset, idt_page_offset, register_page_offset, segment_descriptor, selector,
    state_page_offset, tss_descriptor,
};

unsafe extern "C" {
    static __switcher_start: u8;
    static __switcher_end: u8;
    static switch_to_guest: u8;
    static guest_trap_stubs: u8;
}

/// Page-table entry bits for the hand-built guest view of the slot.
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;

/// Vectors that run on IST1 (the register page) in a guest: NMI, `#DF`, `#MC`.
const IST_VECTORS: [usize; 3] = [2, 8, 18];

/// One CPU's switcher: where its pages are, and its view of the slot for
/// guests.
pub struct CpuSwitcher {
    cpu: usize,
    /// The CPU's own register page: the host's tables map it in the register
    /// slot, and the guest view does whenever no guest's page is there.
    regs_frame: HostPhysAddr,
    state_frame: HostPhysAddr,
    idt_frame: HostPhysAddr,
    /// The host page: mapped in the host's tables only.
    host_frame: HostPhysAddr,
    /// The third-level table of the guest view: what shadow roots put in
    /// their last top-level entry.
    guest_view: HostPhysAddr,
    /// The frames of the guest view (third, second, first level).
    view_frames: [HostPhysAddr; 3],
    /// Turns begun here: what tells whether a guest's state is still in
    /// this CPU (see [`TurnStamp`]).
    turns: u64,
}

/// When a guest's last turn ended: on which CPU, and which of its turns
/// that was. The CPU still holds the guest's FPU, SSE and segment state
/// exactly when no turn has begun there since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TurnStamp {
    cpu: usize,
    turn: u64,
}

/// What of a guest lives in a CPU while the guest runs there: its register
/// page (mapped in the slot) and its FPU, SSE and segment state. Owned by
/// the guest's place in the run loop, and lent to a CPU for each turn.
pub struct GuestCpuState {
    registers: HostPhysAddr,
    context: Box<GuestContext>,
    last_turn: Option<TurnStamp>,
}

impl GuestCpuState {
    /// A guest that never ran, with its register page.
    pub fn new(registers: HostPhysAddr) -> Self {
        Self {
            registers,
            context: GuestContext::clean(),
            last_turn: None,
        }
    }
}

/// Offset of a switcher symbol from the start of the switcher's code.
fn code_offset(symbol: *const u8) -> u64 {
    symbol as u64 - (&raw const __switcher_start) as u64
}

/// The switcher code's physical frames (the kernel runs identity-mapped).
fn code_frames() -> impl Iterator<Item = HostPhysAddr> {
    let start = (&raw const __switcher_start) as u64;
    let end = (&raw const __switcher_end) as u64;
    (start..end).step_by(PAGE as usize).map(HostPhysAddr::new)
}

/// Whether the switcher's code pages are in the host's tables yet.
static CODE_MAPPED: spin::Mutex<bool> = spin::Mutex::new(false);

/// Maps the switcher's code pages at `SLOT_BASE` in the host's tables, the
/// first time any CPU sets up its switcher (the CPUs share them, and which
/// CPU comes first is not fixed: an application processor sets up its own
/// at start-up, the boot CPU when the guests start).
fn map_code_once() -> Result<(), MemoryError> {
    let mut mapped = CODE_MAPPED.lock();
    if !*mapped {
        for (i, frame) in code_frames().enumerate() {
            map_host_page(
                SLOT_BASE + i as u64 * PAGE,
                frame,
                HostPageRights::ReadExecute,
            )?;
        }
        *mapped = true;
    }
    Ok(())
}

fn zeroed_frame() -> Result<HostPhysAddr, MemoryError> {
    let frame =
        memory::alloc_frame().ok_or(MemoryError::PageTables("no frame for the switcher"))?;
    // SAFETY: a fresh frame from the allocator, reached through the direct map.
    unsafe { phys_to_virt(frame).write_bytes(0, PAGE as usize) };
    Ok(frame)
}

impl CpuSwitcher {
    /// Sets up the switcher for CPU `cpu` (see the module docs).
    pub fn new(cpu: usize) -> Result<Self, MemoryError> {
        map_code_once()?;
        let regs_frame = zeroed_frame()?;
        let state_frame = zeroed_frame()?;
        let idt_frame = zeroed_frame()?;
        let host_frame = zeroed_frame()?;
        for (offset, frame) in [
            (register_page_offset(cpu), regs_frame),
            (state_page_offset(cpu), state_frame),
            (idt_page_offset(cpu), idt_frame),
            (host_page_offset(cpu), host_frame),
        ] {
            map_host_page(SLOT_BASE + offset, frame, HostPageRights::ReadWrite)?;
        }
        let view_frames = [zeroed_frame()?, zeroed_frame()?, zeroed_frame()?];
        let mut this = Self {
            cpu,
            regs_frame,
            state_frame,
            idt_frame,
            host_frame,
            guest_view: view_frames[0],
            view_frames,
            turns: 0,
        };
        this.fill_state_and_host_pages();
        this.fill_idt();
        this.build_guest_view();
        Ok(this)
    }

    /// The frame shadow roots on this CPU put in their switcher slot.
    pub fn guest_view(&self) -> HostPhysAddr {
        self.guest_view
    }

    fn slot_address(&self, offset: u64) -> u64 {
        SLOT_BASE + offset
    }

    fn state(&mut self) -> &mut StatePage {
        // SAFETY: the state frame is ours alone (allocated in `new`), page
        // sized and aligned, and `StatePage` fits in a page; the switcher
        // writes it only inside `run`, while no reference is live.
        unsafe { &mut *phys_to_virt(self.state_frame).cast::<StatePage>() }
    }

    fn idt(&mut self) -> &mut IdtPage {
        // SAFETY: as for `state`, for the IDT frame.
        unsafe { &mut *phys_to_virt(self.idt_frame).cast::<IdtPage>() }
    }

    fn host_page(&mut self) -> &mut HostPage {
        // SAFETY: as for `state`, for the host frame (`HostPage` fits in a
        // page too).
        unsafe { &mut *phys_to_virt(self.host_frame).cast::<HostPage>() }
    }

    fn fill_state_and_host_pages(&mut self) {
        let state_va = self.slot_address(state_page_offset(self.cpu));
        let regs_top = self.slot_address(register_page_offset(self.cpu)) + PAGE;
        let tss_va = state_va + core::mem::offset_of!(StatePage, guest_tss) as u64;
        let gdt_va = state_va + core::mem::offset_of!(StatePage, guest_gdt) as u64;
        let [tss_low, tss_high] = tss_descriptor(tss_va);
        let idt_va = self.slot_address(idt_page_offset(self.cpu));
        let host = self.host_page();
        host.guest_gdtr = TablePointer::new(gdt_va, GDT_ENTRIES as u64 * 8);
        host.guest_idtr = TablePointer::new(idt_va, PAGE);
        let state = self.state();
        state.guest_gdt = [
            0,
            segment_descriptor(true, 0),
            segment_descriptor(false, 0),
            segment_descriptor(true, 1),
            segment_descriptor(false, 1),
            segment_descriptor(false, 3),
            segment_descriptor(true, 3),
            tss_low,
            tss_high,
        ];
        let mut tss = Tss::default();
        tss.rsp[0] = regs_top;
        // No guest has named a kernel stack yet: a direct trap would fault
        // at the sentinel (see `set_direct_trap_stack`).
        tss.rsp[1] = host::guest::NO_KERNEL_STACK;
        tss.ist[0] = regs_top;
        tss.iomap_base = size_of::<Tss>() as u16;
        state.guest_tss = tss;
    }

    /// Every vector goes to its switcher stub; the hypercall gate is the one
    /// the guest kernel (ring 1) may raise with `int`.
    fn fill_idt(&mut self) {
        for vector in 0..256 {
            let gate = self.stub_gate(vector);
            self.idt()[vector] = gate;
        }
    }

    fn stub_gate(&self, vector: usize) -> Gate {
        let stubs = SLOT_BASE + code_offset(&raw const guest_trap_stubs);
        // Who may raise the vector with `int n`: the hypercall gate ring 1
        // only; `int3` any ring, as on a real CPU, so that a debugger's
        // breakpoint in the guest (kernel or user) arrives as the `#BP`
        // the host delivers, not as a `#GP` against the gate; everything
        // else only the CPU itself.
        let dpl = match vector {
            v if v == usize::from(guest_abi::hypercall::VECTOR) => 1,
            3 => 3,
            _ => 0,
        };
        let ist = if IST_VECTORS.contains(&vector) { 1 } else { 0 };
        Gate::interrupt(
            stubs + vector as u64 * STUB_STRIDE,
            selector::SWITCHER_CODE,
            dpl,
            ist,
        )
    }

    fn build_guest_view(&mut self) {
        let [pdpt, pd, pt] = self.view_frames;
        let nx = nx_bit();
        write_entry(pdpt, 0, pd.as_u64() | PRESENT | WRITABLE);
        write_entry(pd, 0, pt.as_u64() | PRESENT | WRITABLE);
        for (i, frame) in code_frames().enumerate() {
            write_entry(pt, i, frame.as_u64() | PRESENT);
        }
        // Not the host page: its place stays unmapped here, so nothing a
        // guest runs can read what the switcher keeps of the host there.
        let pages = [
            (register_page_offset(self.cpu), self.regs_frame, WRITABLE),
            (state_page_offset(self.cpu), self.state_frame, 0),
            (idt_page_offset(self.cpu), self.idt_frame, 0),
        ];
        for (offset, frame, writable) in pages {
            write_entry(
                pt,
                (offset / PAGE) as usize,
                frame.as_u64() | PRESENT | writable | nx,
            );
        }
    }

    /// Sets the stack the CPU switches to when guest user code (ring 3)
    /// raises a direct trap into the guest kernel (TSS.RSP1): the guest's
    /// kernel stack, or, while it has named none,
    /// [`host::guest::NO_KERNEL_STACK`], an address in the switcher's slot
    /// that nothing maps, so that such a trap page-faults where the host
    /// recognizes it and names it (not as a write to the switcher's pages).
    pub fn set_direct_trap_stack(&mut self, top: u64) {
        self.state().guest_tss.rsp[1] = top;
    }

    /// Points `vector` straight at a guest kernel handler for `int vector`
    /// from guest user code (a trap gate: interrupts stay on, so the host's
    /// tick still preempts the handler), or back at the switcher.
    ///
    /// Never on a vector the contract forbids (an exception, the hypercall
    /// gate, one of the host's own interrupt vectors): the host refused it
    /// already, and if it ever did not, the stub stays, so the host's
    /// interrupts always come back to the host.
    pub fn set_direct_trap(&mut self, vector: u8, handler: Option<u64>) {
        let gate = match handler {
            Some(handler) if guest_abi::hypercall::may_be_direct(vector) => {
                Gate::trap(handler, selector::GUEST_KERNEL_CODE, 3)
            }
            _ => self.stub_gate(usize::from(vector)),
        };
        self.idt()[usize::from(vector)] = gate;
    }

    /// Begins a turn of `guest` here: maps its register page into this
    /// CPU's slot and puts its FPU, SSE and segment state into the CPU,
    /// unless the CPU still holds it (the guest's last turn was the last
    /// turn here). Returns whether it did: then the guest's direct-trap
    /// gates and stack are not in this CPU's tables either, and the caller
    /// sets them again. Interrupts must be off.
    pub fn begin_turn(&mut self, guest: &GuestCpuState) -> bool {
        self.map_registers(guest.registers);
        let here_last = guest.last_turn
            == Some(TurnStamp {
                cpu: self.cpu,
                turn: self.turns,
            });
        self.turns += 1;
        if !here_last {
            let guest_gdt = self.host_page().guest_gdtr;
            guest.context.load(&guest_gdt);
        }
        !here_last
    }

    /// Ends the turn `begin_turn` began: keeps the guest's FPU, SSE and
    /// segment state in `guest` (it may run on another CPU next), and puts
    /// this CPU's own register page back in the slot (the guest's page may
    /// be freed before anything runs here again). Interrupts must be off.
    pub fn end_turn(&mut self, guest: &mut GuestCpuState) {
        guest.context.save();
        guest.last_turn = Some(TurnStamp {
            cpu: self.cpu,
            turn: self.turns,
        });
        self.map_registers(self.regs_frame);
    }

    /// Points the guest view's register slot at `registers`. Entering a
    /// guest loads CR3, so no stale translation of the slot survives.
    fn map_registers(&mut self, registers: HostPhysAddr) {
        let [_, _, pt] = self.view_frames;
        let index = (register_page_offset(self.cpu) / PAGE) as usize;
        write_entry(
            pt,
            index,
            registers.as_u64() | PRESENT | WRITABLE | nx_bit(),
        );
    }

    /// Runs the guest whose turn this is (see [`Self::begin_turn`]), on the
    /// shadow root `root`, until it traps; the switcher then leaves its
    /// registers at the trap in its register page. Returns the guest's CR2
    /// (meaningful after a page fault).
    ///
    /// The register page is the guest's own, put into this CPU's slot for
    /// the turn, so the registers are never copied. Its FPU, SSE and
    /// segment state stay in the CPU across the exits of a turn: the same
    /// guest entering again (after a hypercall, a fault, a tick) pays
    /// nothing for them.
    ///
    /// Interrupts must be off.
    pub fn run(&mut self, root: HostPhysAddr) -> u64 {
        let entry = SLOT_BASE + code_offset(&raw const switch_to_guest);
        let regs_page = self.slot_address(register_page_offset(self.cpu));
        // SAFETY: `switch_to_guest` saves and restores everything the host
        // needs (callee-saved registers, flags, stack, CR3, GDT, IDT, TR)
        // and returns like a function; the guest's values it leaves in the
        // caller-saved registers are declared clobbered (`rsi`, which
        // carries `root` in, among them). The state and host pages were
        // filled in `new`, `root` is a shadow root with this CPU's switcher
        // view in its last slot, and that view maps, as the register page,
        // this CPU's own page or the page of the guest whose turn it is.
        unsafe {
            core::arch::asm!(
                "call {entry}",
                entry = in(reg) entry,
                in("rdi") regs_page,
                in("rsi") root.as_u64(),
                clobber_abi("sysv64"),
            );
        }
        x86_64::registers::control::Cr2::read_raw()
    }
}

fn write_entry(table: HostPhysAddr, index: usize, value: u64) {
    // SAFETY: `table` is a page-table frame of the guest view, ours alone,
    // and `index` < 512 (callers index within one table).
    unsafe {
        phys_to_virt(table)
            .cast::<u64>()
            .add(index % 512)
            .write(value)
    };
}
