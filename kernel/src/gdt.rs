//! The host's segment descriptors and task state.
//!
//! Long mode has almost no use for segments, but the CPU still needs a GDT
//! for its code and stack selectors, and a TSS for one thing that matters a
//! great deal: the *interrupt stack table*. A double fault (typically from
//! overflowing the kernel stack), an NMI or a machine check must run on a
//! stack known to be good, so each gets its own (IST slots 1-3).
//!
//! The selectors match the boot GDT in `boot/entry.rs`, so reloading changes
//! nothing for the code that is running. Guests never see this GDT: the
//! switcher loads a per-CPU guest GDT of its own.
//!
//! Every CPU has a GDT and a TSS of its own, alike but for the stacks the
//! TSS names: a TSS descriptor is marked busy by `ltr`, so two CPUs cannot
//! share one, and two CPUs taking a double fault must not land on one
//! stack. The boot CPU's live in `static`s ([`init`]); each application
//! processor's are built by [`init_application_processor`] on the heap,
//! around stacks `smp.rs` allocated for it, with the same layout, so the
//! selectors (and the shared IDT's gates, which name them) hold on every
//! CPU.
//!
//! There is no LDT, and the LDT register says so: [`init`] loads it with
//! the null selector. Left as the CPU comes out of reset, it names a table
//! at linear address 0 with a limit of 0xffff, and linear 0 is whatever
//! the running guest maps there: a selector with its table bit set (bit 2)
//! would read a descriptor the guest wrote, such as a call gate to the
//! ring-0 code selector, which is a way into ring 0 (the shape of Xen's
//! XSA-298). With a null LDT every such selector faults (`#GP`, reflected
//! to the guest like any other). Nothing loads another: `lldt` is
//! privileged (a guest kernel that tries is killed naming it), neither the
//! switcher nor the kernel has an `lldt` but this one, and no GDT here or
//! in the switcher holds an LDT descriptor.

use alloc::boxed::Box;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// The kernel data selector: the second GDT entry, here and in the boot GDT
/// (assembly that reloads segments uses it as a constant; `init` checks).
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;

/// IST slot (0-based in the TSS, 1-based in IDT gates) for `#DF`.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST slot for NMI.
pub const NMI_IST: u16 = 1;
/// IST slot for `#MC`.
pub const MACHINE_CHECK_IST: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

// Written only by the CPU when it switches to them; Rust never reads them.
static mut IST_STACKS: [IstStack; 3] = [const { IstStack([0; IST_STACK_SIZE]) }; 3];

// The stack a trap from ring 3 switches to (TSS.RSP0). Guests never use it:
// they run on the switcher's TSS. Only the host's native ring-3 benchmark
// enters ring 3 on this TSS.
static mut RING0_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// The selectors the rest of the kernel needs.
#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    /// 64-bit ring-0 code.
    pub kernel_code: SegmentSelector,
    /// Ring-0 data and stack.
    pub kernel_data: SegmentSelector,
    /// The task state segment.
    pub tss: SegmentSelector,
    /// Ring-3 data and stack (the host's own ring-3 benchmark code only).
    pub user_data: SegmentSelector,
    /// Ring-3 64-bit code (likewise).
    pub user_code: SegmentSelector,
}

/// The tops of the stacks one CPU's TSS names (stacks grow down: each is
/// one past the stack's last byte).
#[derive(Clone, Copy, Debug)]
pub struct TssStacks {
    /// The IST stacks of `#DF`, NMI and `#MC`, in the order of
    /// [`DOUBLE_FAULT_IST`], [`NMI_IST`], [`MACHINE_CHECK_IST`].
    pub interrupt: [VirtAddr; 3],
    /// The stack of a trap from ring 3 (TSS.RSP0).
    pub ring0: VirtAddr,
}

/// Builds and loads the GDT and TSS of this (the boot) CPU.
pub fn init() {
    let tss = TSS.call_once(|| {
        let stacks = &raw mut IST_STACKS;
        // Stacks grow down: the IST entry is one past the top.
        let top = |slot: usize| {
            VirtAddr::from_ptr(stacks.cast::<IstStack>().wrapping_add(slot)) + IST_STACK_SIZE as u64
        };
        task_state(TssStacks {
            interrupt: [top(0), top(1), top(2)],
            ring0: VirtAddr::from_ptr(&raw mut RING0_STACK) + IST_STACK_SIZE as u64,
        })
    });
    let (gdt, selectors) = GDT.call_once(|| descriptor_table(tss));
    load(gdt, *selectors);
}

/// Builds and loads the GDT and TSS of an application processor, whose
/// TSS names `stacks`. They live as long as the CPU runs: for ever.
pub fn init_application_processor(stacks: TssStacks) {
    let tss: &'static TaskStateSegment = Box::leak(Box::new(task_state(stacks)));
    let (gdt, ours): &'static (GlobalDescriptorTable, Selectors) =
        Box::leak(Box::new(descriptor_table(tss)));
    let boot_cpu = selectors();
    assert!(
        ours.kernel_code == boot_cpu.kernel_code
            && ours.tss == boot_cpu.tss
            && ours.user_code == boot_cpu.user_code,
        "every CPU's GDT has the boot CPU's layout"
    );
    load(gdt, *ours);
}

/// A TSS whose IST slots and ring-0 stack are `stacks`.
fn task_state(stacks: TssStacks) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for (top, ist) in
        stacks
            .interrupt
            .into_iter()
            .zip([DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST])
    {
        tss.interrupt_stack_table[usize::from(ist)] = top;
    }
    tss.privilege_stack_table[0] = stacks.ring0;
    tss
}

/// The host's GDT around `tss`: the same entries in the same order on every
/// CPU, so the selectors are the same everywhere.
fn descriptor_table(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    (
        gdt,
        Selectors {
            kernel_code,
            kernel_data,
            tss,
            user_data,
            user_code,
        },
    )
}

/// Loads `gdt` on this CPU, reloads the segment registers from it, loads
/// its TSS and empties the LDT register.
fn load(gdt: &'static GlobalDescriptorTable, selectors: Selectors) {
    assert_eq!(selectors.kernel_data.0, KERNEL_DATA_SELECTOR);
    gdt.load();
    // SAFETY: the selectors name descriptors of the GDT just loaded, which
    // lives forever (a `static`, or leaked); its TSS descriptor is this
    // CPU's alone, so not yet busy; code and data are flat ring-0 segments
    // identical to the boot GDT's, so the running code is unaffected.
    unsafe {
        CS::set_reg(selectors.kernel_code);
        SS::set_reg(selectors.kernel_data);
        DS::set_reg(selectors.kernel_data);
        ES::set_reg(selectors.kernel_data);
        load_tss(selectors.tss);
    }
    load_null_ldt();
}

/// Empties this CPU's LDT register (see the module docs), and checks it.
fn load_null_ldt() {
    // SAFETY: loading the null selector is always allowed in ring 0 and
    // marks the LDT register invalid; nothing in the host uses the LDT.
    unsafe {
        core::arch::asm!("lldt {0:x}", in(reg) 0u16, options(nomem, nostack, preserves_flags));
    }
    let ldtr: u16;
    // SAFETY: `sldt` only reads the LDT register's selector.
    unsafe {
        core::arch::asm!("sldt {0:x}", out(reg) ldtr, options(nomem, nostack, preserves_flags));
    }
    assert_eq!(ldtr, 0, "the LDT register must hold the null selector");
}

/// The selectors of the loaded GDT.
pub fn selectors() -> Selectors {
    GDT.get().expect("gdt::init runs first").1
}
