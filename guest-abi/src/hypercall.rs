//! Hypercalls: how a guest kernel asks the host for what ring 1 cannot do.
//!
//! # Calling convention
//!
//! The guest kernel executes `int 0x81` ([`VECTOR`]) with the call's number
//! in `rax` and up to four arguments in `rdi`, `rsi`, `rdx` and `r10` (the
//! Linux system-call registers, so guest code can share its wrappers). The
//! result comes back in `rax`: zero or a positive value on success, a
//! negated [`Error`] code on failure. Every other register is preserved.
//!
//! The gate has privilege level 1, so only the guest kernel can use it:
//! `int 0x81` from guest user code (ring 3) raises `#GP`, and the host kills
//! the guest for it.
//!
//! A call the host cannot make sense of (unknown number, a buffer outside
//! the guest's memory) fails with an error; a call that shows the guest is
//! broken beyond help (an IDT entry pointing into the host's switcher) kills
//! it, with the reason.
//!
//! # How the host delivers a trap
//!
//! A trap (an exception, a reflected page fault, a virtual interrupt) goes
//! to the handler the guest registered for its vector with
//! [`Number::SetTrap`]; without one the guest is killed. The host does what
//! a CPU in 64-bit mode does for an interrupt gate:
//!
//! 1. **The stack**: the interrupted one if the guest kernel (ring 1) was
//!    running, below its red zone ([`RED_ZONE_BYTES`]); the one registered
//!    with [`Number::SetKernelStack`] if guest user code (ring 3) was (no
//!    stack registered: the guest is killed).
//! 2. **Alignment**: the stack pointer is rounded down to 16 bytes first.
//! 3. **The frame**: five words, pushed in this order so that from the new
//!    stack pointer upwards they read RIP, CS, RFLAGS, RSP, SS (what
//!    `iretq` pops); then, below them, an error code for the vectors
//!    [`has_error_code`] names (8, 10 to 14, 17, 21, 29 and 30, as the CPU
//!    pushes one), so the handler finds it at the stack pointer. Nothing
//!    else is pushed: 40 or 48 bytes in all.
//! 4. **RFLAGS.IF in the frame is the guest's virtual interrupt flag**
//!    ([`crate::shared::SharedPage::irq_enabled`]) as it was when the trap
//!    came, not the real flag (which the host keeps on): a handler that
//!    wants a CPU's `iretq` behaviour turns the virtual flag back on when
//!    the frame's IF says it was on.
//! 5. **The handler runs in ring 1**, CS and SS the guest kernel's
//!    ([`crate::boot::selector`]), RFLAGS.TF cleared, and with virtual
//!    interrupts off unless it was registered with
//!    [`trap_flags::KEEP_INTERRUPTS`].
//!
//! For a reflected page fault the faulting address is in
//! [`crate::shared::SharedPage::fault_address`] (the guest's CR2) and the
//! error code is the one the guest's own tables give the access (bit 0
//! present, bit 1 write, bit 2 user, bit 4 instruction fetch). The frame is
//! written through the guest's tables like a kernel write: if the stack is
//! not writable there, the guest is killed. The handler returns with
//! `iretq`, which ring 1 may execute.

/// Bytes below the stack pointer of interrupted guest kernel code that the
/// host leaves alone when it pushes a trap frame on that stack: the System
/// V ABI's red zone, which code compiled for it (Rust's
/// `x86_64-unknown-hermit` target, for one) uses for locals without moving
/// the stack pointer. A CPU delivering an interrupt on the same stack would
/// overwrite it; the host does not.
pub const RED_ZONE_BYTES: u64 = 128;

/// The software-interrupt vector of the hypercall gate.
pub const VECTOR: u8 = 0x81;

/// Longest console write accepted in one call.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Hypercall numbers (`rax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Number {
    /// `console_write(gva buffer, len)`: print bytes on the host console,
    /// prefixed with the guest's name. Returns the bytes written.
    ConsoleWrite = 0,
    /// `set_trap(vector, gva handler, flags)`: where the guest wants trap
    /// `vector` delivered ([`TrapFlags`]); a zero handler removes it.
    SetTrap = 1,
    /// `set_kernel_stack(gva top)`: the stack the host switches to when it
    /// delivers a trap that interrupted guest user code (ring 3).
    SetKernelStack = 2,
    /// `halt()`: sleep until a virtual interrupt is pending. Returns at once
    /// if one already is.
    Halt = 3,
    /// `set_timer(ns)`: raise [`TIMER_VECTOR`] once, `ns` nanoseconds from
    /// now; 0 cancels.
    SetTimer = 4,
    /// `read_time()`: nanoseconds since the host booted.
    ReadTime = 5,
    /// `shutdown(code)`: the guest is done; `code` is its exit code.
    Shutdown = 6,
    /// `nop()`: returns 0 at once. What the benchmarks time.
    Nop = 7,
    /// `flush_mmu_ring()`: apply the queued page-table operations of the
    /// ring in the shared page (see [`crate::pte`]).
    FlushMmuRing = 8,
    /// `mmu_op(a, b, c, d)`: one page-table operation, encoded as one ring
    /// slot's four words (see [`crate::pte`]).
    MmuOp = 9,
    /// `set_root(gpa, kernel_stack)`: switch to the address space whose
    /// top-level table is at guest-physical `gpa` (the guest's `mov cr3`);
    /// with `kernel_stack` nonzero, also make it the kernel stack, as
    /// [`Number::SetKernelStack`] would, in the new address space: a
    /// guest OS's process switch in one exit. A refused stack fails the
    /// call (the root is switched all the same, and the old stack kept).
    SetRoot = 10,
    /// `bench_mark(phase, id)`: phase 0 starts measurement `id`, phase 1
    /// ends it; at the end the host prints the events (exits by reason,
    /// CR3 loads, shadow faults, root switches) between the two calls, the
    /// calls themselves not counted, as one `bench events id=<id> ...` line
    /// on the guest's console.
    BenchMark = 11,
    /// `set_fs_base(gva base)`: the guest's FS base (thread-local storage),
    /// kept per guest like its FPU state. `base` must be canonical. A guest
    /// whose boot parameters announce [`crate::boot::feature::FSGSBASE`]
    /// can instead write it with `wrfsbase` (and its GS base with
    /// `wrgsbase`), without an exit.
    SetFsBase = 12,
    /// `virtio_status(device)`: "I wrote device `device`'s page: read it"
    /// (see [`crate::virtio`]). Returns the status the host accepted.
    VirtioStatus = 13,
    /// `virtio_notify(device, queue)`: buffers are available on `queue`;
    /// the host takes every one (see [`crate::virtio`]).
    VirtioNotify = 14,
    /// `start_vcpu(vcpu, gva entry, gva stack, gpa shared_page)`: start the
    /// guest's vCPU number `vcpu` (1 to [`crate::boot::BootParams::vcpus`]
    /// − 1, each once) at `entry`, in ring 1, with `rsp` = `stack`, `rdi` =
    /// `vcpu`, every other register zero, virtual interrupts off, in the
    /// caller's address space, with a copy of the caller's traps (as if
    /// the CPUs shared one IDT; each vCPU's later `set_trap` is its own)
    /// and no kernel stack. `shared_page` is the page-aligned
    /// guest-physical address of the new vCPU's own
    /// [`crate::shared::SharedPage`] (its virtual interrupt flag, pending
    /// interrupts, fault address and MMU ring): not the boot vCPU's page
    /// nor another vCPU's. The host zeroes it and writes the clock into
    /// it. A vCPU's timer is its own; a device's interrupt for a request
    /// goes to the vCPU that notified it, and the network card's interrupt
    /// for received frames to vCPU 0. Fails with
    /// [`Error::InvalidArgument`] for a vCPU number out of range or already
    /// started, [`Error::BadAddress`] for a bad entry or page (a top-level
    /// table a vCPU runs on included), [`Error::TooLong`] when the host has
    /// no memory for another vCPU.
    StartVcpu = 15,
    /// `send_ipi(vcpu, vector)`: raise virtual interrupt `vector` (one the
    /// shared page has a pending bit for, [`crate::shared::is_virtual_irq`])
    /// on the guest's vCPU number `vcpu` (the caller's own included): a
    /// halted vCPU wakes, one running in the guest is made to leave it
    /// once, so that the interrupt is delivered at its next entry, as soon
    /// as its virtual interrupts are on. Fails with
    /// [`Error::InvalidArgument`] for a vCPU not started or a vector that
    /// is not a virtual interrupt.
    SendIpi = 16,
}

impl Number {
    /// Every hypercall, in number order.
    pub const ALL: [Number; 17] = [
        Number::ConsoleWrite,
        Number::SetTrap,
        Number::SetKernelStack,
        Number::Halt,
        Number::SetTimer,
        Number::ReadTime,
        Number::Shutdown,
        Number::Nop,
        Number::FlushMmuRing,
        Number::MmuOp,
        Number::SetRoot,
        Number::BenchMark,
        Number::SetFsBase,
        Number::VirtioStatus,
        Number::VirtioNotify,
        Number::StartVcpu,
        Number::SendIpi,
    ];

    /// Decodes `rax`.
    pub fn from_raw(raw: u64) -> Option<Number> {
        Self::ALL.get(usize::try_from(raw).ok()?).copied()
    }
}

/// Bit `v` is set for each exception vector `v` that comes with an error
/// code (see the module docs): 8, 10 to 14, 17, 21, 29 and 30, as on the
/// CPU.
pub const ERROR_CODE_VECTORS: u32 =
    (1 << 8) | (0b1_1111 << 10) | (1 << 17) | (1 << 21) | (1 << 29) | (1 << 30);

/// Whether the host pushes an error code when it delivers `vector`.
pub const fn has_error_code(vector: u8) -> bool {
    vector < 32 && ERROR_CODE_VECTORS & (1 << vector) != 0
}

/// The virtual interrupt vector of the one-shot timer.
pub const TIMER_VECTOR: u8 = 32;

/// Flags for [`Number::SetTrap`].
pub mod trap_flags {
    /// Deliver with virtual interrupts left as they are (a trap gate)
    /// rather than turned off (an interrupt gate).
    pub const KEEP_INTERRUPTS: u64 = 1 << 0;
    /// A direct trap: guest user code (ring 3) reaches the handler with
    /// `int vector` straight through the CPU's IDT, never through the host.
    /// Only for the vectors [`super::may_be_direct`] allows (0x20-0xff but
    /// the hypercall vector and the [`super::host_vector`]s); for any other
    /// the call fails with [`super::Error::InvalidArgument`]. The handler
    /// runs in ring 1 on the stack set with `set_kernel_stack`.
    pub const DIRECT_FROM_USER: u64 = 1 << 1;
}

/// The vectors of the host's own hardware interrupts. They arrive through
/// the CPU's IDT while a guest runs as much as while the host does, so a
/// direct trap on one would hand the host's interrupt to the guest: the
/// host would never acknowledge its timer again, and never take the CPU
/// back. [`Number::SetTrap`] refuses them as direct traps (a trap the host
/// delivers, such as the virtual [`TIMER_VECTOR`], may use any number: it
/// never reaches the CPU's IDT). The host's kernel programs its interrupt
/// controllers with these very constants: this is the one place they are
/// written down.
pub mod host_vector {
    /// The host's periodic tick, from the local APIC timer.
    pub const TIMER: u8 = 0x20;
    /// The first of the vectors the legacy 8259 PICs are moved to, away
    /// from the exceptions: the master's eight lines, then the slave's.
    /// Every line is masked, but a PIC can still raise a spurious interrupt
    /// on its last line.
    pub const LEGACY_PIC_BASE: u8 = 0xe0;
    /// How many vectors the two PICs take from [`LEGACY_PIC_BASE`].
    pub const LEGACY_PIC_LINES: u8 = 16;
    /// The scheduler's inter-processor interrupt: another CPU has work
    /// for this one (a vCPU woke, or frames wait for the guest running
    /// here), so it picks again.
    pub const RESCHEDULE: u8 = 0xfe;
    /// The shoot-down interrupt: another CPU changed the shadow tables of
    /// the guest whose vCPU runs here, and waits for this CPU to leave the
    /// guest once (the switcher's CR3 load at the next entry drops every
    /// stale translation). The turn goes on.
    pub const SHOOTDOWN: u8 = 0xfd;
    /// The local APIC's spurious-interrupt vector.
    pub const SPURIOUS: u8 = 0xff;

    /// Whether `vector` is one of the host's.
    pub const fn contains(vector: u8) -> bool {
        vector == TIMER
            || (vector >= LEGACY_PIC_BASE && vector - LEGACY_PIC_BASE < LEGACY_PIC_LINES)
            || vector == RESCHEDULE
            || vector == SHOOTDOWN
            || vector == SPURIOUS
    }
}

/// Whether `vector` may be a direct trap ([`trap_flags::DIRECT_FROM_USER`]):
/// not an exception (0-31), not the hypercall gate, not one of the host's
/// own interrupt vectors ([`host_vector`]).
pub const fn may_be_direct(vector: u8) -> bool {
    vector >= 32 && vector != VECTOR && !host_vector::contains(vector)
}

/// Why a hypercall failed (returned negated in `rax`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Error {
    /// No such hypercall.
    UnknownCall = 1,
    /// An address argument is outside guest memory or not mapped.
    BadAddress = 2,
    /// A length or count is too large.
    TooLong = 3,
    /// An argument is out of range (a vector, a flag).
    InvalidArgument = 4,
}

impl Error {
    /// The value returned in `rax`.
    pub const fn to_return_value(self) -> u64 {
        (self as u64).wrapping_neg()
    }

    /// Decodes a returned `rax`, if it is an error.
    pub fn from_return_value(rax: u64) -> Option<Error> {
        match rax.wrapping_neg() {
            1 => Some(Error::UnknownCall),
            2 => Some(Error::BadAddress),
            3 => Some(Error::TooLong),
            4 => Some(Error::InvalidArgument),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for n in Number::ALL {
            assert_eq!(Number::from_raw(n as u64), Some(n));
        }
        assert_eq!(Number::from_raw(Number::ALL.len() as u64), None);
        assert_eq!(Number::from_raw(u64::MAX), None);
    }

    #[test]
    fn error_codes_come_with_the_vectors_the_cpu_pushes_them_for() {
        let with: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
        for v in 0..=255u8 {
            assert_eq!(has_error_code(v), with.contains(&v), "vector {v}");
        }
    }

    #[test]
    fn the_host_vectors_are_its_timer_the_legacy_pics_its_ipis_and_the_spurious_vector() {
        for v in 0..=255u8 {
            let expected = v == 0x20 || (0xe0..=0xef).contains(&v) || v >= 0xfd;
            assert_eq!(host_vector::contains(v), expected, "vector {v:#x}");
        }
    }

    #[test]
    fn direct_traps_are_the_software_vectors_nobody_else_has() {
        for v in 0..=255u8 {
            let software = (0x21..=0xdf).contains(&v) || (0xf0..=0xfc).contains(&v);
            let expected = software && v != VECTOR;
            assert_eq!(may_be_direct(v), expected, "vector {v:#x}");
        }
        assert!(may_be_direct(0x80), "the guest OS's system-call vector");
        assert!(
            !may_be_direct(TIMER_VECTOR),
            "the host's tick shares its number"
        );
    }

    #[test]
    fn errors_round_trip_and_do_not_collide_with_results() {
        for e in [
            Error::UnknownCall,
            Error::BadAddress,
            Error::TooLong,
            Error::InvalidArgument,
        ] {
            assert_eq!(Error::from_return_value(e.to_return_value()), Some(e));
        }
        assert_eq!(Error::from_return_value(0), None);
        assert_eq!(Error::from_return_value(4096), None);
    }
}
