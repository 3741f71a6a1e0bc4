//! Does ring 1 hold on this CPU? A self-check, run once at boot before any
//! guest, that says so in one line.
//!
//! Guest kernels run in ring 1, and everything the host keeps from them
//! rests on the CPU refusing ring 1 what only ring 0 may do. Hardware does,
//! and so does a virtual machine with VT-x or AMD-V (the guest's rings are
//! the hardware's). QEMU's TCG does not, in one case: in 64-bit mode a
//! `mov` of a null selector with RPL = CPL into SS is legal at CPL 1, and
//! TCG then takes the CPL from the null SS's descriptor privilege, which is
//! 0 (`helper_load_seg` loads an all-zero descriptor cache, and the CPL
//! follows SS's DPL). From there on the guest kernel runs with ring 0's
//! rights until its next trap: it can read and write control registers,
//! load its own tables, clear CR0.WP and write the switcher's pages. The
//! host cannot stop the load (it is unprivileged) nor undo what follows it
//! (see `docs/DESIGN.md`, "When ring 1 does not hold").
//!
//! So the host tries it on itself, the way a guest kernel would: it enters
//! ring 1 on the guest kernel's own descriptors (a DPL-1 code and data
//! segment at the guest ABI's selectors), loads the null selector with RPL
//! 1 into SS, and reads CR0, which only ring 0 may do:
//!
//! - on a CPU that holds ring 1, the read raises `#GP`, which comes back to
//!   the host through the probe's IDT: `cpu check: ring 1 holds ...`;
//! - where the read succeeds, the probe comes back through a gate of
//!   privilege 1 (`int 0x81`, the hypercall vector's, as a guest kernel
//!   would), and the host prints the [`RING_ZERO_WARNING`] and carries on
//!   (the tests run under TCG);
//! - anything else (some other trap) is reported as an unverified CPU.
//!
//! The probe runs on the host's own page tables and task state (its `#GP`
//! switches to the TSS's ring-0 stack) with a temporary GDT and IDT of its
//! own, loaded only for the probe: the host's are back before it returns.
//!
//! `tests/tests/cpu_check.rs` holds the two verdict lines word for word:
//! change them there too.

use crate::gdt;
use core::arch::global_asm;
use switcher::{Gate, segment_descriptor, selector};
use x86_64::VirtAddr;
use x86_64::structures::DescriptorTablePointer;

/// What the host prints when ring 1 holds.
pub const RING_ONE_HOLDS: &str =
    "cpu check: ring 1 holds (a ring-0 instruction after a null SS load in ring 1 faults)";

/// What the host prints when ring 1 reached ring 0.
pub const RING_ZERO_WARNING: &str = "warning: this CPU lets ring 1 reach ring 0 (null SS load gives CPL 0: a QEMU TCG bug); guests are NOT contained from each other or from the host here";

/// The vector the probe comes back through when its privileged read did
/// not fault: the hypercall vector, whose gate a guest kernel may raise.
const RETURN_VECTOR: u8 = guest_abi::hypercall::VECTOR;

/// `#GP`.
const GENERAL_PROTECTION: u64 = 13;

/// The null selector with RPL 1: the one a guest kernel may put in SS.
const NULL_RPL1: u16 = 1;

global_asm!(
    r#"
    .section .text.cpu_check, "ax"

/* cpu_check_run(rdi = the probe's GDTR, rsi = the probe's IDTR)
 *     -> rax = the vector that brought the probe back,
 *        rdx = the instruction it interrupted (or, for `int`, follows).
 * Enters ring 1, runs the probe there, and returns when the probe traps:
 * to the caller, as from an ordinary function, with the host's GDT, IDT,
 * stack, segments and flags as they were. */
    .global cpu_check_run
cpu_check_run:
    /* The callee-saved registers and the flags stay on the host stack; the
       stack pointer and the host's tables go where the way back finds them
       without any register to help: RIP-relative statics. */
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    pushfq
    /* No interrupt may come between the table loads and the way back: the
       probe's IDT knows only exceptions and the return vector. */
    cli
    mov %rsp, cpu_check_host_rsp(%rip)
    sgdt cpu_check_host_gdtr(%rip)
    sidt cpu_check_host_idtr(%rip)
    /* The probe's tables. Its GDT has the host's ring-0 code and data at
       the host's selectors, so the code and stack we run on stay valid
       across lgdt; TR keeps the host's TSS (lgdt does not reload it), whose
       RSP0 is the stack a trap from ring 1 switches to. */
    lgdt (%rdi)
    lidt (%rsi)
    /* An interrupt frame into ring 1: the guest kernel's data and code
       selectors, the probe's own stack, interrupts off (RFLAGS = 2, IOPL
       0), and the probe's first instruction. iretq to an outer ring also
       nulls DS and ES (ring-0 data); the way back reloads them. */
    pushq ${ring1_data}
    lea cpu_check_stack_top(%rip), %rax
    push %rax
    pushq $2
    pushq ${ring1_code}
    lea cpu_check_ring1(%rip), %rax
    push %rax
    iretq

/* The probe, in ring 1 (CPL 1: supervisor for paging, so the kernel's own
 * text and the stack above, both supervisor pages, are reachable). */
cpu_check_ring1:
    /* A null selector with RPL 1 into SS: legal at CPL 1 in 64-bit mode,
       and what the TCG bug turns into CPL 0. A CPU that refused it would
       raise #GP here, which comes back like the one below. */
    mov ${null_rpl1}, %eax
    .global cpu_check_null_ss
cpu_check_null_ss:
    mov %eax, %ss
    .global cpu_check_privileged
cpu_check_privileged:
    /* Only ring 0 may read CR0: on a CPU that holds ring 1, #GP here. */
    mov %cr0, %rax
    /* Still here: the read ran with ring 0's rights. Come back through the
       DPL-1 gate, as a guest kernel's hypercall would. */
    int ${return_vector}
    /* The gate never returns here (the way back does not iretq). */
    ud2

/* The probe's IDT entries: a stub for each exception (so an unexpected
 * one comes back too, and says which), then one for the return vector.
 * Vectors 8, 10-14, 17, 21, 29 and 30 come with an error code from the
 * CPU; the others push a zero in its place, so every frame has one shape:
 * vector, error code, then the CPU's frame (rip first). */
    .balign 16
    .global cpu_check_stubs
cpu_check_stubs:
    .set vector, 0
    .rept 32
    .balign 16
    .if !(vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 || vector == 29 || vector == 30)
    push $0
    .endif
    push $vector
    jmp cpu_check_back
    .set vector, vector + 1
    .endr
    .balign 16
    .global cpu_check_return_stub
cpu_check_return_stub:
    push $0
    push ${return_vector}

/* Back in ring 0 (CS is the probe GDT's ring-0 code, the host's selector),
 * on the host TSS's RSP0 stack after a trap from ring 1, or on the probe's
 * own stack if the probe ran with ring 0's rights (no stack switch then). */
cpu_check_back:
    /* The result: the vector, and the interrupted rip under the error
       code; the rest of the frame is left where it is. */
    pop %rax
    pop %rcx
    mov (%rsp), %rdx
    /* The host's stack, GDT and IDT, as cpu_check_run found them. */
    mov cpu_check_host_rsp(%rip), %rsp
    lgdt cpu_check_host_gdtr(%rip)
    lidt cpu_check_host_idtr(%rip)
    /* SS is null (or the probe's null RPL-1 selector), DS and ES were
       nulled by the iretq into ring 1: the host's data selector in all
       three, as boot left them. FS and GS were null already. */
    mov ${kernel_data}, %ecx
    mov %ecx, %ss
    mov %ecx, %ds
    mov %ecx, %es
    /* The caller's flags (interrupts as they were) and registers. */
    popfq
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .bss.cpu_check, "aw", @nobits
    .balign 16
cpu_check_host_rsp:
    .skip 8
    .balign 16
cpu_check_host_gdtr:
    .skip 16
cpu_check_host_idtr:
    .skip 16
/* The probe's ring-1 stack: nothing is pushed on it unless the probe runs
   with ring 0's rights and traps without a stack switch. */
    .balign 16
cpu_check_stack:
    .skip 4096
cpu_check_stack_top:
"#,
    ring1_code = const selector::GUEST_KERNEL_CODE,
    ring1_data = const selector::GUEST_KERNEL_DATA,
    null_rpl1 = const NULL_RPL1,
    return_vector = const RETURN_VECTOR,
    kernel_data = const gdt::KERNEL_DATA_SELECTOR,
    options(att_syntax)
);

/// What `cpu_check_run` returns, in `rax` and `rdx` (the SysV ABI returns
/// a 16-byte struct of two integers there).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Trap {
    vector: u64,
    rip: u64,
}

unsafe extern "C" {
    fn cpu_check_run(
        gdtr: *const DescriptorTablePointer,
        idtr: *const DescriptorTablePointer,
    ) -> Trap;
    static cpu_check_null_ss: u8;
    static cpu_check_privileged: u8;
    static cpu_check_stubs: [u8; 32 * 16];
    static cpu_check_return_stub: u8;
}

/// What the probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A ring-0 instruction faulted in ring 1, even after a null SS load
    /// (or the load itself faulted).
    Holds,
    /// The ring-0 instruction ran: ring 1 reached ring 0.
    RingZero,
    /// Something else brought the probe back.
    Unexpected {
        /// The vector.
        vector: u64,
        /// Where.
        rip: u64,
    },
}

/// Runs the probe (interrupts must be off or may be on: it turns them off
/// and back as they were), prints its verdict and returns it.
pub fn run() -> Verdict {
    let verdict = probe();
    match verdict {
        Verdict::Holds => crate::println!("{RING_ONE_HOLDS}"),
        Verdict::RingZero => crate::println!("{RING_ZERO_WARNING}"),
        Verdict::Unexpected { vector, rip } => crate::println!(
            "warning: the ring-1 self-check came back on vector {vector} at {rip:#x}; whether guests are contained on this CPU is unknown"
        ),
    }
    verdict
}

/// The probe's GDT: the guest kernel's ring-1 descriptors at the guest
/// ABI's selectors, and the switcher's (the host's) ring-0 ones.
fn probe_gdt() -> [u64; 8] {
    let mut gdt = [0u64; 8];
    for (selector, code, dpl) in [
        (selector::SWITCHER_CODE, true, 0),
        (selector::SWITCHER_DATA, false, 0),
        (selector::GUEST_KERNEL_CODE, true, 1),
        (selector::GUEST_KERNEL_DATA, false, 1),
    ] {
        gdt[usize::from(selector >> 3)] = segment_descriptor(code, dpl);
    }
    gdt
}

/// The probe's IDT: every exception to its stub, the return vector to its
/// own with privilege 1, nothing else present (an `int` to any other
/// vector faults, and that `#GP` comes back too). NMI, `#DF` and `#MC` run
/// on the host's IST stacks, as in the host's IDT.
fn probe_idt() -> [Gate; RETURN_VECTOR as usize + 1] {
    let code = gdt::selectors().kernel_code.0;
    let stubs = (&raw const cpu_check_stubs) as u64;
    let mut idt = [Gate::default(); RETURN_VECTOR as usize + 1];
    for (vector, gate) in idt.iter_mut().enumerate().take(32) {
        let ist = match vector {
            2 => gdt::NMI_IST + 1,
            8 => gdt::DOUBLE_FAULT_IST + 1,
            18 => gdt::MACHINE_CHECK_IST + 1,
            _ => 0,
        };
        *gate = Gate::interrupt(stubs + 16 * vector as u64, code, 0, ist as u8);
    }
    let back = (&raw const cpu_check_return_stub) as u64;
    idt[usize::from(RETURN_VECTOR)] = Gate::interrupt(back, code, 1, 0);
    idt
}

fn probe() -> Verdict {
    // The probe's ring-0 selectors must be the host's, so the running code
    // and stack stay valid across its `lgdt` (checked, not assumed).
    let host = gdt::selectors();
    assert!(
        host.kernel_code.0 == selector::SWITCHER_CODE
            && host.kernel_data.0 == selector::SWITCHER_DATA,
        "the host's ring-0 selectors must be the switcher's"
    );
    let gdt = probe_gdt();
    let idt = probe_idt();
    let gdtr = DescriptorTablePointer {
        limit: (size_of_val(&gdt) - 1) as u16,
        base: VirtAddr::from_ptr(gdt.as_ptr()),
    };
    let idtr = DescriptorTablePointer {
        limit: (size_of_val(&idt) - 1) as u16,
        base: VirtAddr::from_ptr(idt.as_ptr()),
    };
    // SAFETY: `cpu_check_run` returns like a function, with the host's GDT,
    // IDT, stack, segment registers and flags as they were and the
    // callee-saved registers restored; it clobbers only what the C ABI lets
    // it. Its tables live on this stack frame until it has returned and
    // cover everything the probe can raise: the exceptions (each returns
    // to the host), the return vector, and `#GP`/`#NP` for any other
    // vector. The probe reaches only its own code (kernel text, supervisor)
    // and stack (kernel bss), runs with interrupts off, and changes nothing
    // in ring 1 (where it can change nothing); where the CPU gives it ring
    // 0's rights, it only reads CR0 and traps back at once.
    let trap = unsafe { cpu_check_run(&gdtr, &idtr) };
    let null_ss = (&raw const cpu_check_null_ss) as u64;
    let privileged = (&raw const cpu_check_privileged) as u64;
    log::debug!(
        "cpu check: the probe came back on vector {} at {:#x} (null SS load at {null_ss:#x}, ring-0 read at {privileged:#x})",
        trap.vector,
        trap.rip
    );
    match trap.vector {
        // `#GP` at the read, or at the null SS load before it.
        GENERAL_PROTECTION if trap.rip == privileged || trap.rip == null_ss => Verdict::Holds,
        v if v == u64::from(RETURN_VECTOR) => Verdict::RingZero,
        vector => Verdict::Unexpected {
            vector,
            rip: trap.rip,
        },
    }
}
