//! Delivering traps and virtual interrupts into the guest, as the CPU
//! would have.
//!
//! The guest registered a handler for each trap it cares about
//! ([`guest_abi::hypercall::Number::SetTrap`]). Delivering means doing what
//! the CPU does in long mode for an interrupt gate: pick the stack (the
//! current one in the guest kernel; the registered kernel stack if the guest
//! was in user mode), align it to 16 bytes, push SS, RSP, RFLAGS, CS, RIP
//! and the error code if there is one, and continue at the handler in ring 1
//! with (virtual) interrupts off. The guest returns with `iretq`, which
//! ring 1 may execute.
//!
//! The frame is written through the guest's own page tables, with the
//! access checks and accessed/dirty bits of a real kernel write. If the
//! stack is not writable there is no way to tell the guest anything, and it
//! is killed: the lguest rule.

use super::{Guest, GuestRam, KillReason, Next, RFLAGS_IF, shared};
use crate::paging::{Access, ShadowFrames};
use switcher::selector;

impl<M: GuestRam> Guest<M> {
    /// Delivers trap `vector` (with `error_code` if it has one) to the
    /// guest's handler, or kills the guest if it has none.
    pub(super) fn deliver<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        vector: u8,
        error_code: Option<u64>,
    ) -> Next {
        let Some(target) = self.traps[usize::from(vector)] else {
            return self.kill(KillReason::Unhandled {
                vector,
                rip: self.regs.rip,
                address: None,
            });
        };
        let from_user = self.regs.cs & 3 == 3;
        let stack = if from_user {
            match self.kernel_stack {
                Some(top) => top,
                None => return self.kill(KillReason::CannotDeliver { vector, stack: 0 }),
            }
        } else {
            self.regs.rsp
        };
        // The guest sees its virtual interrupt flag as RFLAGS.IF.
        let irq_enabled = self.read_shared(shared::IRQ_ENABLED).unwrap_or(0) != 0;
        let rflags = (self.regs.rflags & !RFLAGS_IF) | if irq_enabled { RFLAGS_IF } else { 0 };
        let frame = [
            self.regs.rip,
            self.regs.cs,
            rflags,
            self.regs.rsp,
            self.regs.ss,
        ];
        let mut sp = stack & !0xf;
        let words = error_code.iter().chain(frame.iter());
        sp = sp.wrapping_sub(8 * (frame.len() as u64 + u64::from(error_code.is_some())));
        let mut at = sp;
        for &word in words {
            let Some(gpa) = self.translate(frames, at, Access::KERNEL_WRITE) else {
                return self.kill(KillReason::CannotDeliver { vector, stack });
            };
            if self.memory.write_u64(gpa, word).is_err() {
                return self.kill(KillReason::CannotDeliver { vector, stack });
            }
            at = at.wrapping_add(8);
        }
        self.regs.rsp = sp;
        self.regs.rip = target.handler;
        self.regs.cs = u64::from(selector::GUEST_KERNEL_CODE);
        self.regs.ss = u64::from(selector::GUEST_KERNEL_DATA);
        // Like an interrupt gate: no single-stepping into the handler.
        self.regs.rflags &= !(1 << 8);
        if !target.keep_interrupts {
            let _ = self.write_shared(shared::IRQ_ENABLED, 0);
        }
        Next::Resume
    }

    /// Delivers the lowest pending virtual interrupt if the guest has its
    /// virtual interrupts on and a handler for it.
    pub(super) fn deliver_pending_interrupt<F: ShadowFrames>(&mut self, frames: &mut F) {
        let pending = self.pending_irqs();
        if pending == 0 || self.read_shared(shared::IRQ_ENABLED).unwrap_or(0) == 0 {
            return;
        }
        let vector = 32 + pending.trailing_zeros() as u8;
        let _ = self.write_shared(shared::IRQ_PENDING, pending & (pending - 1));
        if self.traps[usize::from(vector)].is_none() {
            // No handler: the interrupt is dropped, as a masked line would be.
            return;
        }
        self.counters.virtual_interrupts += 1;
        self.deliver(frames, vector, None);
    }
}
