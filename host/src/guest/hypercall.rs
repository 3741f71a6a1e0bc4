//! Hypercalls: decode, check, carry out.
//!
//! One `match` over [`Number`], each arm short and calling the part of the
//! host that owns the work (lguest's `do_hcall`). Arguments come from the
//! guest's registers, so each is checked before use: addresses must be
//! canonical and mapped, lengths bounded, vectors in range. A bad argument
//! is an error returned in `rax`; only what leaves the guest no sane way to
//! continue (a trap handler inside the switcher's slot) kills it.

use super::{
    BenchStart, Guest, GuestRam, GuestState, HostServices, KillReason, Next, TrapTarget, insn,
    shared,
};
use crate::addr::GuestVirtAddr;
use crate::paging::{Access, ShadowFrames};
use guest_abi::hypercall::{CONSOLE_WRITE_MAX, Error, Number, trap_flags};
use guest_abi::pte::MmuOp;

/// Longest console line kept before it is printed anyway.
const CONSOLE_LINE_MAX: usize = 512;

impl<M: GuestRam> Guest<M> {
    /// Carries out the hypercall in the guest's registers; its result goes
    /// to `rax`.
    pub(super) fn hypercall<F: ShadowFrames, H: HostServices>(
        &mut self,
        number: Option<Number>,
        frames: &mut F,
        host: &mut H,
    ) -> Next {
        let r = *self.regs();
        let (a, b, c, d) = (r.rdi, r.rsi, r.rdx, r.r10);
        let result = match number {
            None => Err(Error::UnknownCall),
            Some(Number::Nop) => Ok(0),
            Some(Number::ConsoleWrite) => self.console_write(frames, host, a, b),
            Some(Number::SetTrap) => return self.set_trap(a, b, c),
            Some(Number::SetKernelStack) => self.set_kernel_stack(frames, a),
            Some(Number::Halt) => return self.halt(),
            Some(Number::SetTimer) => {
                self.vcpu.timer_deadline = (a != 0).then(|| host.now_ns().saturating_add(a));
                Ok(0)
            }
            Some(Number::ReadTime) => Ok(host.now_ns()),
            Some(Number::Shutdown) => {
                self.flush_console(host);
                if !self.has_ended() {
                    self.end = Some(GuestState::Exited(a));
                }
                return Next::Ended;
            }
            Some(Number::FlushMmuRing) => {
                return self.paging_result(|g, f| g.paging.apply_ring(&mut g.memory, f), frames);
            }
            Some(Number::MmuOp) => match MmuOp::decode([a, b, c, d]) {
                Ok(op) => {
                    return self.paging_result(
                        |g, f| g.paging.apply_op(&mut g.memory, f, op).map(|()| 0),
                        frames,
                    );
                }
                Err(_) => Err(Error::InvalidArgument),
            },
            Some(Number::SetRoot) => {
                let switched = self.paging_result(
                    |g, f| g.paging.switch_root(&mut g.memory, f, a).map(|_| 0),
                    frames,
                );
                if switched != Next::Resume || b == 0 {
                    return switched;
                }
                self.set_kernel_stack(frames, b)
            }
            Some(Number::BenchMark) => self.bench_mark(host, a, b),
            Some(Number::VirtioStatus) => {
                match self.device_call(host, |devices, mem| devices.status_call(mem, a)) {
                    Ok(result) => result,
                    Err(ended) => return ended,
                }
            }
            Some(Number::VirtioNotify) => {
                match self.device_call(host, |devices, mem| devices.notify(mem, a, b)) {
                    Ok(result) => result,
                    Err(ended) => return ended,
                }
            }
            Some(Number::StartVcpu) => self.start_vcpu(frames, a, b, c, d),
            Some(Number::SendIpi) => self.send_ipi(a, b),
            Some(Number::SetFsBase) => match GuestVirtAddr::try_new(a) {
                Ok(_) => {
                    host.set_fs_base(a);
                    Ok(0)
                }
                Err(_) => Err(Error::BadAddress),
            },
        };
        self.regs_mut().rax = match result {
            Ok(value) => value,
            Err(e) => e.to_return_value(),
        };
        Next::Resume
    }

    /// Runs a shadow-paging operation; a paging error is a malformed entry,
    /// root or ring, and kills the guest.
    fn paging_result<F: ShadowFrames>(
        &mut self,
        op: impl FnOnce(&mut Self, &mut F) -> Result<u64, crate::paging::PagingError>,
        frames: &mut F,
    ) -> Next {
        match op(self, frames) {
            Ok(value) => {
                self.regs_mut().rax = value;
                Next::Resume
            }
            Err(e) => self.kill(KillReason::Paging(e)),
        }
    }

    fn console_write<F: ShadowFrames, H: HostServices>(
        &mut self,
        frames: &mut F,
        host: &mut H,
        buffer: u64,
        len: u64,
    ) -> Result<u64, Error> {
        if len > CONSOLE_WRITE_MAX {
            return Err(Error::TooLong);
        }
        let mut chunk = [0u8; 256];
        let mut done = 0;
        while done < len {
            let at = buffer.checked_add(done).ok_or(Error::BadAddress)?;
            let gpa = self
                .translate(frames, at, Access::KERNEL_READ)
                .ok_or(Error::BadAddress)?;
            let in_page = 4096 - gpa.page_offset();
            let n = (len - done).min(in_page).min(chunk.len() as u64) as usize;
            let bytes = chunk.get_mut(..n).ok_or(Error::TooLong)?;
            self.memory
                .read_bytes(gpa, bytes)
                .map_err(|_| Error::BadAddress)?;
            self.console_bytes(host, bytes);
            done += n as u64;
        }
        Ok(len)
    }

    /// Adds `bytes` to the guest's console line, printing the line at
    /// each newline (even an empty one: a blank line is output too) and
    /// whenever it reaches [`CONSOLE_LINE_MAX`] bytes. Whole runs between
    /// newlines are copied at once, not byte by byte.
    fn console_bytes<H: HostServices>(&mut self, host: &mut H, bytes: &[u8]) {
        // The usual write, one whole line with nothing held before it: it
        // is printed from `bytes` (already the host's copy), as the loop
        // below would print it, without being copied into the line first.
        if self.console.is_empty()
            && let Some((b'\n', line)) = bytes.split_last()
            && line.len() <= CONSOLE_LINE_MAX
            && !crate::text::has_newline(line)
        {
            host.console_line(&self.name, line);
            return;
        }
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (mut text, newline) = match piece.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (piece, false),
            };
            while !text.is_empty() {
                if self.console.len() >= CONSOLE_LINE_MAX {
                    self.flush_console(host);
                }
                let room = CONSOLE_LINE_MAX.saturating_sub(self.console.len());
                let (now, later) = text.split_at(room.min(text.len()));
                self.console.extend_from_slice(now);
                text = later;
            }
            if newline {
                host.console_line(&self.name, &self.console);
                self.console.clear();
            }
        }
    }

    /// Prints what is left of a console line.
    pub(super) fn flush_console<H: HostServices>(&mut self, host: &mut H) {
        if !self.console.is_empty() {
            host.console_line(&self.name, &self.console);
            self.console.clear();
        }
    }

    fn set_trap(&mut self, vector: u64, handler: u64, flags: u64) -> Next {
        let Ok(vector) = u8::try_from(vector) else {
            self.regs_mut().rax = Error::InvalidArgument.to_return_value();
            return Next::Resume;
        };
        if handler == 0 {
            self.vcpu.traps[usize::from(vector)] = None;
            self.vcpu.traps_stale = true;
            self.regs_mut().rax = 0;
            return Next::Resume;
        }
        let direct = flags & trap_flags::DIRECT_FROM_USER != 0;
        let valid_flags =
            flags & !(trap_flags::DIRECT_FROM_USER | trap_flags::KEEP_INTERRUPTS) == 0;
        // A direct trap is a gate in the CPU's own IDT, so never on an
        // exception, the hypercall gate or one of the host's interrupt
        // vectors (its tick would go to the guest, unacknowledged). Asking
        // is a refused request, not an offence: an error, not a kill.
        if !valid_flags || (direct && !insn::may_be_direct(vector)) {
            self.regs_mut().rax = Error::InvalidArgument.to_return_value();
            return Next::Resume;
        }
        // A handler must be in the guest kernel's half and never in the
        // switcher's slot: a direct-trap gate there would run the guest's
        // "handler" with the switcher's code segment in reach.
        let in_kernel_half = GuestVirtAddr::try_new(handler)
            .is_ok_and(|h| h.is_upper_half() && !h.in_switcher_slot());
        if !in_kernel_half {
            return self.kill(KillReason::BadHypercall(
                "trap handler outside the guest kernel",
                handler,
            ));
        }
        self.vcpu.traps[usize::from(vector)] = Some(TrapTarget {
            handler,
            keep_interrupts: flags & trap_flags::KEEP_INTERRUPTS != 0,
            direct,
        });
        self.vcpu.traps_stale |= direct;
        self.regs_mut().rax = 0;
        Next::Resume
    }

    fn set_kernel_stack<F: ShadowFrames>(
        &mut self,
        frames: &mut F,
        top: u64,
    ) -> Result<u64, Error> {
        // The next process's stack at a context switch, named and pinned
        // before: it passed every check below then, and is mapped still.
        let pages = super::PINNED_STACK_PAGES;
        if top.is_multiple_of(16) && self.paging.reuse_pinned_stack(top, pages) {
            self.vcpu.kernel_stack = Some(top);
            self.vcpu.stack_stale = true;
            return Ok(0);
        }
        let canonical =
            GuestVirtAddr::try_new(top).is_ok_and(|t| t.is_upper_half() && !t.in_switcher_slot());
        if !canonical || !top.is_multiple_of(16) {
            return Err(Error::InvalidArgument);
        }
        // A guest OS sets a stack at every context switch, so the common
        // case (all pages mapped) must cost one pinning pass, no more. A
        // refused stack must change nothing: the old one is pinned again.
        if self
            .paging
            .set_kernel_stack(&mut self.memory, frames, top, pages)
            .is_err()
        {
            let restored = match self.vcpu.kernel_stack {
                Some(old) => self
                    .paging
                    .set_kernel_stack(&mut self.memory, frames, old, pages),
                None => {
                    self.paging.forget_kernel_stack();
                    Ok(())
                }
            };
            if let Err(e) = restored {
                // The old stack is gone too: no trap could be delivered.
                let _ = self.kill(KillReason::Paging(e));
            }
            return Err(Error::BadAddress);
        }
        self.vcpu.kernel_stack = Some(top);
        self.vcpu.stack_stale = true;
        Ok(0)
    }

    /// Starts (phase 0) or ends (phase 1) measurement `id`; at the end,
    /// prints the events in between.
    fn bench_mark<H: HostServices>(
        &mut self,
        host: &mut H,
        phase: u64,
        id: u64,
    ) -> Result<u64, Error> {
        match phase {
            0 => {
                self.bench_mark = Some(BenchStart {
                    id,
                    counters: self.counters,
                    paging: self.paging.stats(),
                });
                Ok(0)
            }
            1 => {
                let Some(start) = self.bench_mark.take().filter(|m| m.id == id) else {
                    return Err(Error::InvalidArgument);
                };
                let (started, c0, p0) = (start.id, start.counters, start.paging);
                let (c1, p1) = (self.counters, self.paging.stats());
                // The ending call's own exit and its two CR3 loads are not
                // part of what was measured (the starting call's are
                // already outside the snapshot).
                let line = alloc::format!(
                    "bench events id={started} exits={} guest_exits={} host_interrupts={} host_ticks={} irq_handler_exits={} hypercalls={} page_faults={} exceptions={} virtual_irqs={} cr3_loads={} shadow_faults_fixed={} faults_reflected={} pages_zeroed={} entries_set={} roots_made={} roots_reused={} roots_evicted={}",
                    (c1.total() - c0.total()).saturating_sub(1),
                    (c1.guest_caused() - c0.guest_caused()).saturating_sub(1),
                    c1.interrupts - c0.interrupts,
                    c1.host_timers - c0.host_timers,
                    c1.in_interrupt_handlers - c0.in_interrupt_handlers,
                    (c1.hypercalls - c0.hypercalls).saturating_sub(1),
                    c1.page_faults - c0.page_faults,
                    c1.exceptions - c0.exceptions,
                    c1.virtual_interrupts - c0.virtual_interrupts,
                    (c1.cr3_loads - c0.cr3_loads).saturating_sub(2),
                    p1.faults_fixed - p0.faults_fixed,
                    p1.faults_reflected - p0.faults_reflected,
                    p1.pages_zeroed - p0.pages_zeroed,
                    p1.entries_set - p0.entries_set,
                    p1.roots_made - p0.roots_made,
                    p1.roots_reused - p0.roots_reused,
                    p1.roots_evicted - p0.roots_evicted,
                );
                self.flush_console(host);
                host.console_line(&self.name, line.as_bytes());
                Ok(0)
            }
            _ => Err(Error::InvalidArgument),
        }
    }

    /// Sleeps until a virtual interrupt is pending. Waking is the only way
    /// out of a halt (a halted guest uses no time, so its budget never ends
    /// it), so a halt that nothing can end is the guest's end: the host
    /// runs until every guest has ended, and would otherwise never finish.
    /// The runtime's sleep halts with its virtual interrupts off and a
    /// timer armed: that is a sleep with a way out, since a pending
    /// interrupt ends a halt whatever the virtual interrupt flag (it is
    /// delivered once the guest turns interrupts back on).
    fn halt(&mut self) -> Next {
        self.regs_mut().rax = 0;
        if self.pending_irqs() != 0 {
            return Next::Resume;
        }
        if !self.can_be_woken() {
            // A vCPU of several may sleep for good while another runs: it
            // waits for the guest's end. The last one awake may not.
            if !self.another_vcpu_awake() {
                let interrupts_off = self.read_shared(shared::IRQ_ENABLED) == 0;
                return self.kill(KillReason::HaltedForever { interrupts_off });
            }
            self.vcpu.halted_for_good = true;
        }
        self.vcpu.state = GuestState::Halted;
        Next::Halted
    }

    /// Whether anything could raise a virtual interrupt for this guest
    /// later: its timer, or a device with a receive queue running (a
    /// network card, a console's input).
    fn can_be_woken(&self) -> bool {
        self.vcpu.timer_deadline.is_some() || self.devices.may_interrupt()
    }
}
