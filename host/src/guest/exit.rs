//! What an exit is, decided once.
//!
//! The switcher comes back to the host with the vector of whatever took the
//! CPU from the guest in its register page: the hypercall gate, an
//! exception, or one of the host's own interrupts. Everything after that
//! (the host's interrupt handling, the guest's handling, the time slice,
//! the benchmarks' bookkeeping) asks one question, "what was it?", and
//! [`Exit::of`] is the one place that answers it. lguest spread the same
//! question over `lguest_arch_handle_trap` and `run_guest`; here the rest
//! of the host matches on the answer.

use guest_abi::hypercall::{self, Number, has_error_code, host_vector};
use switcher::GuestRegs;

/// Why the guest left ring 1 (or ring 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `int 0x81` from the guest kernel: a hypercall, with the call's
    /// number if it is one the host knows.
    Hypercall(Option<Number>),
    /// A page fault at the address the CPU's CR2 held.
    PageFault {
        /// The faulting address (CR2 at the exit).
        address: u64,
        /// The CPU's error code.
        error_code: u64,
    },
    /// A general-protection fault: often a privileged instruction, which the
    /// host decodes before deciding.
    GeneralProtection,
    /// A non-maskable interrupt: the host's business, nothing for the
    /// guest.
    Nmi,
    /// A double fault or a machine check: nothing a guest can be handed.
    Fatal(u8),
    /// Any other exception, to be delivered to the guest's handler.
    Exception {
        /// Its vector (below 32).
        vector: u8,
        /// Its error code, for the vectors that push one.
        error_code: Option<u64>,
    },
    /// The host's own timer ([`host_vector::TIMER`], a real interrupt; not
    /// the guest's virtual timer, [`hypercall::TIMER_VECTOR`], which the
    /// host raises in the shared page and never reaches the CPU's IDT
    /// although it has the same number).
    HostTimer,
    /// Any other interrupt of the host's (spurious, a device).
    HostInterrupt(u8),
}

impl Exit {
    /// Classifies the exit whose trap the switcher saved in `regs`, with
    /// the CPU's CR2 as it was at the exit.
    pub fn of(regs: &GuestRegs, cr2: u64) -> Self {
        let vector = regs.vector as u8;
        match vector {
            hypercall::VECTOR => Exit::Hypercall(Number::from_raw(regs.rax)),
            14 => Exit::PageFault {
                address: cr2,
                error_code: regs.error_code,
            },
            13 => Exit::GeneralProtection,
            2 => Exit::Nmi,
            8 | 18 => Exit::Fatal(vector),
            0..=31 => Exit::Exception {
                vector,
                error_code: has_error_code(vector).then_some(regs.error_code),
            },
            host_vector::TIMER => Exit::HostTimer,
            _ => Exit::HostInterrupt(vector),
        }
    }

    /// Whether the guest itself caused it (a hypercall, a fault, an
    /// exception), rather than the host taking the CPU back.
    pub fn is_the_guests(self) -> bool {
        !matches!(self, Exit::Nmi | Exit::HostTimer | Exit::HostInterrupt(_))
    }

    /// The host interrupt's vector, if it was one, for the host's own
    /// handler (acknowledge the APIC, count the tick).
    pub fn host_interrupt(self) -> Option<u8> {
        match self {
            Exit::HostTimer => Some(host_vector::TIMER),
            Exit::HostInterrupt(vector) => Some(vector),
            _ => None,
        }
    }
}

/// What the run loop tells whoever watches it: each exit as it begins to be
/// handled, and the moment the host is about to enter the guest again. The
/// benchmarks' bookkeeping (`kernel/src/bench.rs`, the host's cycles per
/// kind of exit) is one watcher; the ordinary run has none, and the
/// do-nothing methods below compile to nothing (the way rust-vmm's
/// `vm-superio` takes its `SerialEvents`).
pub trait ExitEvents {
    /// The switcher has returned with `exit`.
    fn exit(&mut self, _exit: Exit) {}
    /// The host is about to enter the guest again.
    fn entering(&mut self) {}
    /// The guest's turn is over: the last exit's handling ends here, not
    /// at its next entry (other guests' turns come in between).
    fn turn_over(&mut self) {}
}

/// Nobody watching.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl ExitEvents for NoEvents {}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(vector: u8, error_code: u64, rax: u64) -> GuestRegs {
        GuestRegs {
            vector: u64::from(vector),
            error_code,
            rax,
            ..GuestRegs::default()
        }
    }

    #[test]
    fn every_vector_has_exactly_one_meaning() {
        for vector in 0..=255u8 {
            let exit = Exit::of(&regs(vector, 7, 0), 0x1234);
            let expected = match vector {
                0x81 => Exit::Hypercall(Some(Number::ConsoleWrite)),
                14 => Exit::PageFault {
                    address: 0x1234,
                    error_code: 7,
                },
                13 => Exit::GeneralProtection,
                2 => Exit::Nmi,
                8 | 18 => Exit::Fatal(vector),
                0..=31 => Exit::Exception {
                    vector,
                    error_code: has_error_code(vector).then_some(7),
                },
                0x20 => Exit::HostTimer,
                _ => Exit::HostInterrupt(vector),
            };
            assert_eq!(exit, expected, "vector {vector:#x}");
            assert_eq!(
                exit.host_interrupt().is_some(),
                vector >= 32 && vector != 0x81,
                "vector {vector:#x}"
            );
        }
    }

    #[test]
    fn a_hypercall_carries_its_number_or_none() {
        let nop = Exit::of(&regs(0x81, 0, Number::Nop as u64), 0);
        assert_eq!(nop, Exit::Hypercall(Some(Number::Nop)));
        assert_eq!(Exit::of(&regs(0x81, 0, u64::MAX), 0), Exit::Hypercall(None));
        assert!(nop.is_the_guests());
        assert!(!Exit::HostTimer.is_the_guests());
    }
}
