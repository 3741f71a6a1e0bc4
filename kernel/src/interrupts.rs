//! The host's interrupt descriptor table, and what happens on each vector.
//!
//! Every one of the 256 vectors enters through a tiny assembly stub that
//! makes the stack look the same for all of them (a dummy error code where
//! the CPU pushes none, then the vector number), saves the general registers
//! and calls [`trap_dispatch`] with a [`TrapFrame`]. One shape for every
//! trap keeps the report code simple, and it is the same shape the switcher
//! will give a guest's registers.
//!
//! In the host itself an exception is always a bug: the report names the
//! exception and shows the registers, and the machine stops with the failure
//! status. External interrupts (the APIC timer) are counted and acknowledged.
//! Their vectors come from the guest contract's list of the host's own
//! ([`guest_abi::hypercall::host_vector`]), the one place that names them,
//! which the host also checks every direct trap a guest asks for against.
//!
//! All CPUs share the one IDT: it holds nothing per CPU. Each gate names a
//! stub, the kernel code selector (the same in every CPU's GDT) and, for
//! NMI, `#DF` and `#MC`, an IST slot *number*; where that slot's stack is,
//! each CPU's own TSS says ([`crate::gdt`]). So an application processor
//! only loads the table ([`init`]) the boot CPU built.

use crate::{apic, gdt, power};
use core::arch::global_asm;
use guest_abi::hypercall::host_vector;
use spin::Once;
use switcher::Gate;
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;

/// The vector of the host's one-shot timer interrupt. The host's hardware
/// vectors are part of the guest contract ([`host_vector`]: no guest may
/// have a direct trap on them), and written down only there.
pub const TIMER_VECTOR: u8 = host_vector::TIMER;
/// The scheduler's inter-processor interrupt: another CPU has work for
/// this one. Its handler only acknowledges it: the interrupt has done its
/// job by ending a guest's turn or a halt (see `crate::run`).
pub const RESCHEDULE_VECTOR: u8 = host_vector::RESCHEDULE;
/// The shoot-down interrupt: leave the guest once (`crate::run`'s vCPUs).
pub const SHOOTDOWN_VECTOR: u8 = host_vector::SHOOTDOWN;
/// A vector whose handler is a bare `iretq`: the native analogue the
/// benchmarks time a hypercall against. Only in the host's own IDT, raised
/// only by the host: no hardware interrupt uses it.
pub const BENCH_VECTOR: u8 = 0x80;
/// The vector the local APIC uses for spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = host_vector::SPURIOUS;

// The host's software vectors are not among its hardware ones (a guest may
// take them as direct traps: in the guest IDT they mean nothing to the host).
const _: () = assert!(
    !host_vector::contains(BENCH_VECTOR)
        && !host_vector::contains(crate::bench::USER_INT_VECTOR)
        && !host_vector::contains(crate::bench::USER_RETURN_VECTOR)
);

/// The registers at the moment of a trap, as the stubs leave them on the
/// stack: the very layout of a guest's registers in the switcher's register
/// page ([`switcher::GuestRegs`]), so there is one trap frame in the project.
pub type TrapFrame = switcher::GuestRegs;

// The stubs: 256 of them, 16 bytes apart, so the IDT can be filled by
// arithmetic. The vectors of `ERROR_CODE_VECTORS` (8, 10-14, 17, 21, 29 and
// 30) come with an error code from the CPU; the rest push a zero in its
// place. The same list drives the switcher's stubs and the guests'.
global_asm!(
    r#"
    .section .text.trap_stubs, "ax"
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if !(vector < 32 && (({error_code_vectors} >> vector) & 1))
    push $0
    .endif
    push $vector
    jmp trap_common
    .set vector, vector + 1
    .endr

trap_common:
"#,
    switcher::push_registers!(),
    r#"
    /* 22 quadwords on a stack the CPU aligned to 16: still aligned. */
    mov %rsp, %rdi
    cld
    call trap_dispatch
"#,
    switcher::pop_registers!(),
    r#"
    add $16, %rsp
    iretq
"#,
    error_code_vectors = const guest_abi::hypercall::ERROR_CODE_VECTORS,
    options(att_syntax)
);

unsafe extern "C" {
    /// The first of the 256 stubs above.
    static trap_stubs: [u8; 256 * 16];
}

static IDT: Once<[Gate; 256]> = Once::new();

/// Loads the IDT on this CPU, building it on the first call (the boot
/// CPU's): the other CPUs load the same table.
pub fn init() {
    let idt = IDT.call_once(|| {
        let stubs = (&raw const trap_stubs) as u64;
        let code = gdt::selectors().kernel_code.0;
        let mut idt = [Gate::default(); 256];
        for (vector, gate) in idt.iter_mut().enumerate() {
            let ist = match vector {
                2 => gdt::NMI_IST + 1,
                8 => gdt::DOUBLE_FAULT_IST + 1,
                18 => gdt::MACHINE_CHECK_IST + 1,
                _ => 0,
            };
            // Ring-0 interrupt gates: IF is cleared on entry, so handlers
            // are never themselves interrupted.
            *gate = Gate::interrupt(stubs + 16 * vector as u64, code, 0, ist as u8);
        }
        let bare_iretq = (&raw const crate::bench::bare_iretq) as u64;
        let ring3_return = (&raw const crate::bench::ring3_return) as u64;
        idt[usize::from(BENCH_VECTOR)] = Gate::interrupt(bare_iretq, code, 0, 0);
        // The host's own ring-3 benchmark may raise these two.
        idt[usize::from(crate::bench::USER_INT_VECTOR)] = Gate::interrupt(bare_iretq, code, 3, 0);
        idt[usize::from(crate::bench::USER_RETURN_VECTOR)] =
            Gate::interrupt(ring3_return, code, 3, 0);
        idt
    });
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::from_ptr(idt.as_ptr()),
    };
    // SAFETY: the table lives forever in a `static` and every gate points at
    // a stub above, with the kernel code selector of the loaded GDT.
    unsafe { lidt(&pointer) };
}

/// Called by `trap_common` for every trap, with interrupts off.
#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector as u8 {
        14 if crate::bench::fix_bench_fault(Cr2::read_raw()) => {}
        0..=31 => exception_report(frame),
        vector => handle_host_interrupt(vector),
    }
}

/// Runs the host's handler for external interrupt `vector`: called from
/// the IDT in the host, and by the run loop for an interrupt that arrived
/// while a guest ran (the switcher brought it back to the host).
pub fn handle_host_interrupt(vector: u8) {
    match vector {
        TIMER_VECTOR => {
            apic::on_timer_tick();
            apic::end_of_interrupt();
        }
        SPURIOUS_VECTOR => {}
        RESCHEDULE_VECTOR | SHOOTDOWN_VECTOR => apic::end_of_interrupt(),
        vector => {
            log::warn!("unexpected interrupt on vector {vector}");
            apic::end_of_interrupt();
        }
    }
}

/// The mnemonic and name of each exception vector.
const EXCEPTIONS: [(&str, &str); 32] = [
    ("#DE", "divide error"),
    ("#DB", "debug"),
    ("NMI", "non-maskable interrupt"),
    ("#BP", "breakpoint"),
    ("#OF", "overflow"),
    ("#BR", "bound range exceeded"),
    ("#UD", "invalid opcode"),
    ("#NM", "device not available"),
    ("#DF", "double fault"),
    ("#CSO", "coprocessor segment overrun"),
    ("#TS", "invalid TSS"),
    ("#NP", "segment not present"),
    ("#SS", "stack-segment fault"),
    ("#GP", "general protection"),
    ("#PF", "page fault"),
    ("#15", "reserved"),
    ("#MF", "x87 floating point"),
    ("#AC", "alignment check"),
    ("#MC", "machine check"),
    ("#XM", "SIMD floating point"),
    ("#VE", "virtualization"),
    ("#CP", "control protection"),
    ("#22", "reserved"),
    ("#23", "reserved"),
    ("#24", "reserved"),
    ("#25", "reserved"),
    ("#26", "reserved"),
    ("#27", "reserved"),
    ("#HV", "hypervisor injection"),
    ("#VC", "VMM communication"),
    ("#SX", "security"),
    ("#31", "reserved"),
];

/// Prints everything we know about a host exception and stops the machine.
fn exception_report(frame: &TrapFrame) -> ! {
    use crate::console::emergency;
    let (mnemonic, name) = EXCEPTIONS[frame.vector as usize % 32];
    emergency(format_args!(
        "\nEXCEPTION {mnemonic} ({name}, vector {}) in the host\n",
        frame.vector
    ));
    emergency(format_args!(
        "  rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x} error={:#x}\n",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss, frame.error_code
    ));
    if frame.vector == 14 {
        let cr2 = Cr2::read_raw();
        let e = frame.error_code;
        emergency(format_args!(
            "  cr2={cr2:#018x} ({} {}{}{})\n",
            if e & 1 != 0 {
                "protection violation"
            } else {
                "not present"
            },
            if e & 2 != 0 { "on write" } else { "on read" },
            if e & 4 != 0 { ", user" } else { "" },
            if e & 16 != 0 {
                ", instruction fetch"
            } else {
                ""
            },
        ));
    }
    let f = frame;
    emergency(format_args!(
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15
    ));
    power::exit(power::FAILURE)
}
