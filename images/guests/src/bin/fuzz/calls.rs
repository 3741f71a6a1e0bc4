//! Random hypercalls: any number from 0 to 17 (15 starts a vCPU and 16
//! interrupts one, which a fuzzer of one vCPU is always refused: it has no
//! other; 17 names no call),
//! arguments from a pool of boundary values, and what each may do to the
//! fuzzer by the host's rules (`host/src/guest/hypercall.rs`).
//!
//! Calls that would take the fuzzer's own machinery away are followed by
//! a repair: a trap handler set at random is put back, and so is the
//! kernel stack; a switch to a root of random memory the host accepted is
//! switched back at once, before anything could fault through it. A halt
//! is always preceded by a timer the fuzzer arms, so it always ends.

use crate::fuzzer::Fuzzer;
use crate::model::{self, Fate, reason};
use crate::recover;
use crate::space::{LAST_PAGE, SWITCHER_SLOT, USER_CODE};
use guest_abi::boot::SHARED_PAGE_GPA;
use guest_abi::hypercall::{VECTOR, trap_flags};
use guest_abi::pte::{
    ADDRESS_MASK, KERNEL_HALF_FIRST_PML4_INDEX, MmuOp, PRESENT, SWITCHER_PML4_INDEX,
};
use guest_rt::boot::{self, kernel_virtual};
use guest_rt::hypercall;
use guest_rt::paging::PAGE_BYTES;

/// The hypercall numbers, by name (guest_abi::hypercall::Number).
mod number {
    pub const CONSOLE_WRITE: u64 = 0;
    pub const SET_TRAP: u64 = 1;
    pub const SET_KERNEL_STACK: u64 = 2;
    pub const HALT: u64 = 3;
    pub const SHUTDOWN: u64 = 6;
    pub const FLUSH_MMU_RING: u64 = 8;
    pub const MMU_OP: u64 = 9;
    pub const SET_ROOT: u64 = 10;
    pub const SEND_IPI: u64 = 16;
}

/// Hypercall `number` (any value) with `args`, by `int 0x81`; the raw
/// `rax` it returns.
///
/// # Safety
///
/// As for `guest_rt::hypercall::raw`: the arguments must not make the host
/// do to guest memory or control flow what the caller cannot live with.
pub unsafe fn raw(number: u64, args: [u64; 4]) -> u64 {
    let result: u64;
    // SAFETY: `int 0x81` enters the host, which preserves every register
    // but rax and does what the call says, which the caller vouches for.
    unsafe {
        core::arch::asm!(
            "int {vector}",
            vector = const VECTOR,
            inlateout("rax") number => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            options(nostack),
        );
    }
    result
}

/// The boot stack's address, for the pool (an address inside the running
/// stack, not the stack itself).
fn stack_address() -> u64 {
    let marker = 0u8;
    (&raw const marker) as u64
}

impl Fuzzer {
    /// A value from the pool of boundary values.
    pub fn boundary(&mut self) -> u64 {
        let memory = self.limits.memory;
        match self.rng.below(30) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => i64::MIN as u64,
            4 => 0x0000_7fff_ffff_ffff,
            5 => 0x0000_8000_0000_0000,
            6 => 0xffff_7fff_ffff_ffff,
            7 => 0xffff_8000_0000_0000,
            8 => SWITCHER_SLOT,
            9 => LAST_PAGE,
            10 => kernel_virtual(guest_abi::boot::IMAGE_MIN_GPA),
            11 => stack_address(),
            12 => boot::shared_page() as u64,
            13 => SHARED_PAGE_GPA,
            14 => memory,
            15 => memory - PAGE_BYTES,
            16 => memory + PAGE_BYTES,
            17 => kernel_virtual(memory),
            18 => 1 << 40,
            19 => self.rng.next() | 1,
            20 => self.rng.next(),
            21 => self.rng.below(PAGE_BYTES),
            22 => self.space.root(),
            23 => self.rng.pick(&self.space.data),
            24 => kernel_virtual(self.rng.pick(&self.space.data)),
            25 => u64::from(u32::MAX),
            26 => PAGE_BYTES,
            27 => USER_CODE,
            28 => self.space.roots[self.rng.below(self.space.root_count as u64) as usize],
            _ => (1 << 47) - PAGE_BYTES,
        }
    }

    /// A hypercall with a random number and random arguments.
    pub fn random_hypercall(&mut self) {
        let number = self.rng.below(18);
        let mut args = [0u64; 4];
        for arg in &mut args {
            *arg = self.boundary();
        }
        match number {
            number::CONSOLE_WRITE => {
                args[1] = self.rng.pick(&[0, 1, 7, 64, 200, 4096, 4097, u64::MAX]);
                self.plain_call(number, args);
            }
            number::SET_TRAP => self.set_trap(args),
            number::SET_KERNEL_STACK => {
                if self.go(Fate::Safe, format_args!("set_kernel_stack({:#x})", args[0])) {
                    // SAFETY: a stack the host accepts is only written when
                    // ring 3 traps, and ours is put back before that.
                    let _ = unsafe { raw(number, args) };
                    recover::restore_kernel_stack();
                }
            }
            number::HALT => self.halt_briefly(),
            number::SHUTDOWN if !self.rng.one_in(20) => self.plain_call(7, args),
            number::SHUTDOWN => {
                let fate = Fate::Exits(args[0]);
                if self.go(fate, format_args!("shutdown({})", args[0])) {
                    // SAFETY: Shutdown never comes back.
                    let _ = unsafe { raw(number, args) };
                    self.survived(fate);
                }
            }
            number::FLUSH_MMU_RING => {
                let fate = self.pending_fate();
                if self.go(fate, format_args!("flush_mmu_ring()")) {
                    // SAFETY: the queued ops' fate is announced above.
                    let _ = unsafe { raw(number, args) };
                    self.ring_applied();
                    self.survived(fate);
                }
            }
            number::MMU_OP => self.mmu_op(args),
            number::SET_ROOT => self.set_root(args[0]),
            number::SEND_IPI => {
                // Never vCPU 0, itself: an interrupt it did not raise in
                // one of its own windows would come unguarded.
                args[0] = args[0].max(1);
                self.plain_call(number, args)
            }
            _ => self.plain_call(number, args),
        }
    }

    /// A call that can do the fuzzer no harm (or an unknown number).
    fn plain_call(&mut self, number: u64, args: [u64; 4]) {
        if self.go(
            Fate::Safe,
            format_args!(
                "hypercall {number}({:#x}, {:#x}, {:#x}, {:#x})",
                args[0], args[1], args[2], args[3]
            ),
        ) {
            // SAFETY: console writes only read, the timer and clock calls
            // only count, unknown numbers are refused, and so are starting
            // and interrupting another vCPU (the fuzzer has one).
            let result = unsafe { raw(number, args) };
            if number == number::CONSOLE_WRITE {
                // End whatever line the random bytes left open, so that the
                // fuzzer's own lines start on lines of their own.
                let _ = hypercall::console_write(b"\n");
            }
            if self.verbose {
                guest_rt::println!("fuzz: step {}: returned {result:#x}", self.step);
            }
        }
    }

    /// `set_trap` with a random vector, handler and flags, judged as the
    /// host judges it; the vector's own handler is put back after.
    fn set_trap(&mut self, mut args: [u64; 4]) {
        if self.rng.percent(70) {
            args[0] = self.rng.below(256);
        }
        if self.rng.percent(30) {
            args[2] = self.rng.pick(&[0, 1, 2, 3, 4]);
        }
        let [vector, handler, flags, _] = args;
        let direct = flags & trap_flags::DIRECT_FROM_USER != 0;
        let valid_flags =
            flags & !(trap_flags::DIRECT_FROM_USER | trap_flags::KEEP_INTERRUPTS) == 0;
        let in_kernel_half = model::canonical(handler)
            && handler >> 63 != 0
            && guest_rt::paging::table_index(handler, 4) != SWITCHER_PML4_INDEX;
        let fate = match u8::try_from(vector) {
            Err(_) => Fate::Safe,
            Ok(_) if handler == 0 || !valid_flags => Fate::Safe,
            Ok(v) if direct && !guest_abi::hypercall::may_be_direct(v) => Fate::Safe,
            Ok(_) if in_kernel_half => Fate::Safe,
            Ok(_) => Fate::Killed(reason::BAD_HANDLER),
        };
        if !self.go(
            fate,
            format_args!("set_trap({vector:#x}, {handler:#x}, {flags:#x})"),
        ) {
            return;
        }
        // SAFETY: whatever the host took is replaced below, before any
        // trap could use it.
        let _ = unsafe { raw(number::SET_TRAP, args) };
        self.survived(fate);
        if let Ok(vector) = u8::try_from(vector)
            && let Err(e) = recover::restore_handler(vector)
        {
            guest_rt::println!("fuzz: the host refused our handler for {vector:#x} back: {e:?}");
            hypercall::shutdown(crate::BAD_SETUP);
        }
    }

    /// Arms a short timer and halts: the halt ends at the timer, or at
    /// once if an interrupt is already pending.
    fn halt_briefly(&mut self) {
        let ns = self.rng.pick(&[1u64, 1000, 100_000]);
        if self.go(Fate::Safe, format_args!("halt after a {ns} ns timer")) {
            let _ = hypercall::set_timer(ns);
            hypercall::halt();
        }
    }

    /// `mmu_op` with random words (which the host mostly refuses with an
    /// error) or a random but well-formed op.
    fn mmu_op(&mut self, args: [u64; 4]) {
        let words = if self.rng.percent(50) {
            args
        } else {
            let code = self.rng.below(7);
            let level = if code == 1 {
                self.rng.pick(&[0, 1, 1, 2, 3, 4, 4, 5])
            } else {
                0
            };
            let root = if self.rng.percent(70) {
                self.space.root()
            } else {
                args[1]
            };
            let value = if self.rng.percent(50) {
                self.boundary()
            } else {
                self.rng.pick(&self.space.data) | PRESENT | self.rng.below(0x80)
            };
            [code | level << 8, root, args[2], value]
        };
        let fate = model::op_fate(words, false, &self.limits);
        if !self.go(
            fate,
            format_args!(
                "mmu_op({:#x}, {:#x}, {:#x}, {:#x})",
                words[0], words[1], words[2], words[3]
            ),
        ) {
            return;
        }
        // SAFETY: a report only invalidates shadow entries (and maps what
        // the tables already say); a malformed one is announced above.
        let _ = unsafe { raw(number::MMU_OP, words) };
        self.survived(fate);
        match MmuOp::decode(words) {
            Ok(MmuOp::FlushUser) => self.space.mark_clean(),
            Ok(MmuOp::FlushAll) => self.space.mark_all_clean(),
            _ => {}
        }
    }

    /// `set_root` with a random argument: refused (and killed) as the
    /// host's root checks say; one of ours is a switch; any other page of
    /// guest memory is switched to and straight back.
    fn set_root(&mut self, mut root: u64) {
        if self.rng.percent(50) {
            root = self.space.roots[self.rng.below(self.space.root_count as u64) as usize];
        }
        let own = self.space.roots[..self.space.root_count]
            .iter()
            .position(|&r| r == root);
        let fate = match model::root_fate(root, &self.limits) {
            Fate::Safe if own.is_some() => Fate::Safe,
            Fate::Safe if self.kernel_table(root) => Fate::Killed(reason::TABLE_ROOT),
            Fate::Safe => Fate::May,
            refused => refused,
        };
        if !self.go(fate, format_args!("set_root({root:#x})")) {
            return;
        }
        // SAFETY: one of our roots maps the fuzzer where it runs; any other
        // is left again at once, before the fuzzer touches anything
        // through it (the shared kernel half keeps its code and stack).
        let _ = unsafe { raw(number::SET_ROOT, [root, 0, 0, 0]) };
        self.survived(fate);
        match own {
            Some(index) => self.space.current = index,
            None => {
                let back = self.space.root();
                // SAFETY: back to our own root.
                let _ = unsafe { raw(number::SET_ROOT, [back, 0, 0, 0]) };
            }
        }
    }

    /// Whether `root` is a table the running root's kernel half points
    /// at, which the host refuses as a root.
    fn kernel_table(&self, root: u64) -> bool {
        let current = self.space.root();
        (KERNEL_HALF_FIRST_PML4_INDEX..SWITCHER_PML4_INDEX).any(|slot| {
            let entry = model::read_phys(current + 8 * slot as u64);
            entry & PRESENT != 0 && entry & ADDRESS_MASK == root
        })
    }
}
