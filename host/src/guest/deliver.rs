//! Delivering traps and virtual interrupts into the guest, as the CPU
//! would have.
//!
//! The guest registered a handler for each trap it cares about
//! ([`guest_abi::hypercall::Number::SetTrap`]). Delivering means doing what
//! the CPU does in long mode for an interrupt gate: pick the stack (the
//! current one in the guest kernel, below its red zone; the registered
//! kernel stack if the guest was in user mode), align it to 16 bytes, push
//! SS, RSP, RFLAGS, CS, RIP
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
use guest_abi::hypercall::RED_ZONE_BYTES;
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
        let Some(target) = self.vcpu.traps[usize::from(vector)] else {
            return self.kill(KillReason::Unhandled {
                vector,
                rip: self.regs().rip,
                address: None,
            });
        };
        let from_user = self.regs().cs & 3 == 3;
        let stack = if from_user {
            match self.vcpu.kernel_stack {
                Some(top) => top,
                None => return self.kill(KillReason::CannotDeliver { vector, stack: 0 }),
            }
        } else {
            self.regs().rsp
        };
        // Code built for the System V ABI keeps locals in the 128 bytes
        // below its stack pointer without moving it; a CPU would push over
        // them, we do not (`RED_ZONE_BYTES`). A fresh kernel stack has none.
        let top = if from_user {
            stack
        } else {
            stack.wrapping_sub(RED_ZONE_BYTES)
        };
        // The guest sees its virtual interrupt flag as RFLAGS.IF.
        let irq_enabled = self.read_shared(shared::IRQ_ENABLED) != 0;
        let rflags = (self.regs().rflags & !RFLAGS_IF) | if irq_enabled { RFLAGS_IF } else { 0 };
        let (r, e) = (*self.regs(), error_code.unwrap_or(0));
        let with_error = [e, r.rip, r.cs, rflags, r.rsp, r.ss];
        let frame = if error_code.is_some() {
            &with_error[..]
        } else {
            &with_error[1..]
        };
        let sp = (top & !0xf).wrapping_sub(8 * frame.len() as u64);
        if !self.write_stack(frames, sp, frame) {
            return self.kill(KillReason::CannotDeliver { vector, stack });
        }
        let regs = self.regs_mut();
        regs.rsp = sp;
        regs.rip = target.handler;
        regs.cs = u64::from(selector::GUEST_KERNEL_CODE);
        regs.ss = u64::from(selector::GUEST_KERNEL_DATA);
        // Like an interrupt gate: no single-stepping into the handler.
        regs.rflags &= !(1 << 8);
        if !target.keep_interrupts {
            self.write_shared(shared::IRQ_ENABLED, 0);
        }
        Next::Resume
    }

    /// Writes `words` at guest-virtual `sp` (8-aligned) as the guest kernel
    /// would: translated once per page (a frame spans at most two), with
    /// the access checked and accessed/dirty set. Says whether it could.
    fn write_stack<F: ShadowFrames>(&mut self, frames: &mut F, sp: u64, words: &[u64]) -> bool {
        let mut done = 0;
        while done < words.len() {
            let at = sp.wrapping_add(8 * done as u64);
            let Some(gpa) = self.translate(frames, at, Access::KERNEL_WRITE) else {
                return false;
            };
            let in_page = ((4096 - gpa.page_offset()) / 8) as usize;
            for (i, &word) in words[done..].iter().take(in_page).enumerate() {
                let Some(word_gpa) = gpa.checked_add(8 * i as u64) else {
                    return false;
                };
                if self.memory.write_u64(word_gpa, word).is_err() {
                    return false;
                }
            }
            done += in_page.min(words.len() - done);
        }
        true
    }

    /// Delivers the lowest pending virtual interrupt if the guest has its
    /// virtual interrupts on and a handler for it.
    ///
    /// Inlined into every entry: the common case, nothing pending, is one
    /// read of the shared page.
    #[inline(always)]
    pub(super) fn deliver_pending_interrupt<F: ShadowFrames>(&mut self, frames: &mut F) {
        let pending = self.pending_irqs();
        if pending != 0 {
            self.deliver_interrupt_of(frames, pending);
        }
    }

    /// Delivers the lowest of the `pending` virtual interrupts, if the
    /// guest has its virtual interrupts on.
    fn deliver_interrupt_of<F: ShadowFrames>(&mut self, frames: &mut F, pending: u64) {
        if self.read_shared(shared::IRQ_ENABLED) == 0 {
            return;
        }
        let vector = guest_abi::shared::FIRST_VIRTUAL_IRQ + pending.trailing_zeros() as u8;
        self.write_shared(shared::IRQ_PENDING, pending & (pending - 1));
        if self.vcpu.traps[usize::from(vector)].is_none() {
            // No handler: the interrupt is dropped, as a masked line would be.
            return;
        }
        self.counters.virtual_interrupts += 1;
        let keeps_interrupts =
            self.vcpu.traps[usize::from(vector)].is_some_and(|t| t.keep_interrupts);
        if self.deliver(frames, vector, None) == Next::Resume && !keeps_interrupts {
            self.write_shared(shared::IN_INTERRUPT, 1);
            self.vcpu.in_interrupt_handler = true;
        }
    }
}
