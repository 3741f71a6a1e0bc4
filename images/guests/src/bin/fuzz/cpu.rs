//! The fuzzer's instructions: segment loads and descriptor queries with
//! random selectors, flags, far transfers, exceptions of every kind, x87
//! and SSE exceptions, `iretq` with crafted frames, `int n`, excursions to
//! ring 3, and the plainly privileged instructions.
//!
//! Each runs inside [`guarded!`], so whatever traps comes back. What ring 1
//! may not do the host must kill the fuzzer for, naming the instruction
//! (`privileged instruction \`cli\``); everything else must come back as
//! the trap the CPU raised, which is checked where the architecture says
//! exactly which one it is.

use crate::fuzzer::Fuzzer;
use crate::model::{Fate, reason};
use crate::recover::{self, DIRECT_VECTORS, guarded};
use crate::space::{SWITCHER_SLOT, USER_CODE, USER_STACK_TOP};
use guest_abi::boot::selector;
use guest_abi::shared::offset::IRQ_PENDING;
use guest_rt::{boot, hypercall, println};

/// Selectors worth loading: null with every RPL, each entry of the guest
/// GDT (the switcher's ring-0 code and data, the guest's four segments,
/// the TSS) with a few RPLs, past the GDT's end, and the LDT (TI=1).
const SELECTORS: [u16; 28] = [
    0, 1, 2, 3, 0x08, 0x0b, 0x10, 0x13, 0x18, 0x19, 0x1b, 0x20, 0x21, 0x23, 0x28, 0x2b, 0x30, 0x33,
    0x38, 0x3b, 0x40, 0x48, 0x0c, 0x1d, 0x2f, 0xfff8, 0xffff, 0x07,
];

/// The RFLAGS bits `popf` and `iretq` are given at random: the arithmetic
/// flags, TF, IF, DF, IOPL, NT, RF, AC, VIF, VIP, ID. (VM and the reserved
/// bits are left out: they are for virtual-8086 mode.)
const FLAG_BITS: u64 = 0x0037_7fd5;
/// RFLAGS.NT: an `iretq` with it set faults, which the fuzzer's own
/// `iretq` (and guest-rt's) must not meet.
const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.TF and AC.
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_AC: u64 = 1 << 18;

/// A zeroed buffer for the privileged instructions that read or write
/// memory (`lgdt`, `sgdt`, `ins`, ...): nothing of value is in it.
static mut SCRATCH: [u64; 4] = [0; 4];

fn scratch() -> u64 {
    (&raw mut SCRATCH) as u64
}

// `int n` for every n: four bytes each (`int n; ret; int3`), so that `int
// n` can be reached with a call and an index, its vector an immediate.
core::arch::global_asm!(
    ".section .text.fuzz_int_stubs, \"ax\"",
    ".balign 4",
    ".globl fuzz_int_stubs",
    "fuzz_int_stubs:",
    ".set fuzz_int_vector, 0",
    ".rept 256",
    ".byte 0xcd, fuzz_int_vector, 0xc3, 0xcc",
    ".set fuzz_int_vector, fuzz_int_vector + 1",
    ".endr",
);

unsafe extern "C" {
    /// The 256 `int n` stubs above.
    static fuzz_int_stubs: [u8; 1024];
}

/// The physical-address width (CPUID 0x8000_0008, as the host reads it)
/// and whether the CPU has UMIP (CPUID 7, ECX bit 2).
pub fn features() -> (u32, bool) {
    let max_extended = cpuid(0x8000_0000, 0)[0];
    let physical_bits = if max_extended >= 0x8000_0008 {
        cpuid(0x8000_0008, 0)[0] & 0xff
    } else {
        36
    };
    let umip = cpuid(0, 0)[0] >= 7 && cpuid(7, 0)[2] & (1 << 2) != 0;
    (physical_bits, umip)
}

/// CPUID leaf `leaf`, subleaf `sub`: eax, ebx, ecx, edx.
fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: cpuid only reads the CPU's identification (ring 1 may); rbx
    // is reserved by the compiler, so it is saved and restored around.
    unsafe {
        core::arch::asm!(
            "mov {saved}, rbx",
            "cpuid",
            "xchg {saved}, rbx",
            saved = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") sub => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    [eax, ebx as u32, ecx, edx]
}

impl Fuzzer {
    /// A selector: mostly from [`SELECTORS`], sometimes any.
    fn selector(&mut self) -> u16 {
        if self.rng.one_in(8) {
            self.rng.next() as u16
        } else {
            self.rng.pick(&SELECTORS)
        }
    }

    /// A selector for SS in ring 1: any but a null one. The null one with
    /// RPL 1 is legal there, and QEMU's TCG loads every null selector into
    /// SS outside ring 3 (not checking the RPL) and then takes CPL 0 from
    /// it (the bug `kernel/src/cpu_check.rs` detects and warns of): the
    /// fuzzer would run its privileged instructions for real and hang the
    /// emulated machine, which is not the host's doing.
    fn stack_selector(&mut self) -> u16 {
        match self.selector() {
            null if null & !3 == 0 => selector::KERNEL_DATA,
            other => other,
        }
    }

    /// Checks that the last guarded action took exactly one of the
    /// `vectors` (in `ring`), having taken its first trap after `before`.
    fn expect_trap(&mut self, what: &str, before: u64, vectors: &[u64], ring: u64) {
        self.stats.checked += 1;
        let trap = recover::last_trap();
        let trapped = recover::traps_taken() != before;
        if !trapped || !vectors.contains(&trap.vector) || trap.ring != ring {
            if trapped {
                self.mismatch(format_args!(
                    "{what}: expected vector {vectors:?} in ring {ring}, got {trap}"
                ));
            }
            self.mismatch(format_args!(
                "{what}: expected vector {vectors:?} in ring {ring}, got no trap"
            ));
        }
    }

    /// A segment register loaded with a random selector (`mov sreg`, `pop
    /// fs/gs`), or a descriptor asked about (`lar`, `lsl`, `verr`,
    /// `verw`). Ring 1 may load what its privilege allows; the rest is a
    /// #GP (or #NP, #SS), reflected.
    pub fn segment_load(&mut self) {
        let kind = self.rng.below(11);
        let selector = if kind == 4 {
            self.stack_selector()
        } else {
            self.selector()
        };
        const NAMES: [&str; 11] = [
            "mov ds", "mov es", "mov fs", "mov gs", "mov ss", "pop fs", "pop gs", "lar", "lsl",
            "verr", "verw",
        ];
        if !self.go(
            Fate::Safe,
            format_args!("{} with selector {selector:#x}", NAMES[kind as usize]),
        ) {
            return;
        }
        let s = u32::from(selector);
        let wide = u64::from(selector);
        let (mut result, mut zero_flag): (u64, u8) = (0, 0);
        // SAFETY: segment loads and descriptor queries change no memory;
        // a fault resumes at the recovery point. SS is put back to the
        // guest kernel's data segment at once after a load that worked;
        // DS, ES, FS and GS are left as loaded (64-bit code ignores DS and
        // ES, the fuzzer never uses FS or GS, and the GDT's segments have
        // base 0), for the host to carry across its exits.
        unsafe {
            match kind {
                0 => guarded!(["mov ds, {s:x}"], s = in(reg) s),
                1 => guarded!(["mov es, {s:x}"], s = in(reg) s),
                2 => guarded!(["mov fs, {s:x}"], s = in(reg) s),
                3 => guarded!(["mov gs, {s:x}"], s = in(reg) s),
                4 => guarded!(
                    ["mov ss, {s:x}", "mov {k:e}, {kd}", "mov ss, {k:x}"],
                    s = in(reg) s,
                    k = out(reg) _,
                    kd = const selector::KERNEL_DATA
                ),
                5 => guarded!(["push {s}", "pop fs"], s = in(reg) wide),
                6 => guarded!(["push {s}", "pop gs"], s = in(reg) wide),
                7 => guarded!(
                    ["lar {r:e}, {s:e}", "setz {z}"],
                    s = in(reg) s,
                    r = out(reg) result,
                    z = out(reg_byte) zero_flag
                ),
                8 => guarded!(
                    ["lsl {r:e}, {s:e}", "setz {z}"],
                    s = in(reg) s,
                    r = out(reg) result,
                    z = out(reg_byte) zero_flag
                ),
                9 => {
                    guarded!(["verr {s:x}", "setz {z}"], s = in(reg) s, z = out(reg_byte) zero_flag)
                }
                _ => {
                    guarded!(["verw {s:x}", "setz {z}"], s = in(reg) s, z = out(reg_byte) zero_flag)
                }
            }
        }
        if self.verbose && kind >= 7 {
            println!(
                "fuzz: step {}: {} {selector:#x}: zf={zero_flag} result={result:#x}",
                self.step, NAMES[kind as usize]
            );
        }
    }

    /// `popf` of random flags, then `pushf` to see what stuck, then the
    /// old flags back. Ring 1 cannot change IF or IOPL this way (silently);
    /// TF makes a #DB after the next instruction, which is recovered.
    pub fn flags(&mut self) {
        let value = (self.rng.next() & FLAG_BITS) | 2;
        if !self.go(Fate::Safe, format_args!("popf {value:#x}")) {
            return;
        }
        let seen: u64;
        // SAFETY: flags only; the old ones are restored at the end, or
        // (after a #DB) by the recovery, which resumes with sane flags.
        unsafe {
            guarded!(
                ["pushfq", "push {v}", "popfq", "pushfq", "pop {seen}", "popfq"],
                v = in(reg) value,
                seen = out(reg) seen
            )
        }
        if self.verbose {
            println!(
                "fuzz: step {}: popf {value:#x}: rflags {seen:#x}",
                self.step
            );
        }
    }

    /// A far jump, call or return with a random selector (to the end of
    /// the block, or to ring 3 for a return): ring 1 may only stay in its
    /// own code segment or return outwards; the rest is a #GP, reflected.
    pub fn far_transfer(&mut self) {
        let selector = u64::from(self.selector());
        let kind = self.rng.below(4);
        let user_stack = if self.rng.percent(80) {
            USER_STACK_TOP
        } else {
            self.boundary()
        };
        let stack_selector = u64::from(self.stack_selector());
        const NAMES: [&str; 4] = ["far jmp", "far call", "far ret", "far ret (outwards)"];
        if !self.go(
            Fate::Safe,
            format_args!("{} to selector {selector:#x}", NAMES[kind as usize]),
        ) {
            return;
        }
        // SAFETY: each transfer lands at the recovery point (in ring 1, or
        // in ring 3, where the fetch of a supervisor page faults back to
        // it) or faults; the stack is restored there.
        unsafe {
            match kind {
                0 => guarded!(
                    [
                        "push {sel}",
                        "lea {t}, [rip + 77f]",
                        "push {t}",
                        // rex.w jmp far [rsp] (m16:64)
                        ".byte 0x48, 0xff, 0x2c, 0x24",
                    ],
                    sel = in(reg) selector,
                    t = out(reg) _
                ),
                1 => guarded!(
                    [
                        "push {sel}",
                        "lea {t}, [rip + 77f]",
                        "push {t}",
                        // rex.w call far [rsp] (m16:64)
                        ".byte 0x48, 0xff, 0x1c, 0x24",
                    ],
                    sel = in(reg) selector,
                    t = out(reg) _
                ),
                2 => guarded!(
                    [
                        "lea {t}, [rip + 77f]",
                        "push {sel}",
                        "push {t}",
                        // rex.w retf
                        ".byte 0x48, 0xcb",
                    ],
                    sel = in(reg) selector,
                    t = out(reg) _
                ),
                _ => guarded!(
                    [
                        "push {ss}",
                        "push {sp}",
                        "lea {t}, [rip + 77f]",
                        "push {sel}",
                        "push {t}",
                        ".byte 0x48, 0xcb",
                    ],
                    ss = in(reg) stack_selector,
                    sp = in(reg) user_stack,
                    sel = in(reg) selector,
                    t = out(reg) _
                ),
            }
        }
    }

    /// An exception of a kind the architecture fixes, checked to come back
    /// as that vector.
    pub fn exception(&mut self) {
        const NAMES: [&str; 9] = [
            "ud2",
            "int3",
            "int1",
            "div by zero",
            "idiv overflow",
            "into",
            "ud0",
            "non-canonical stack access",
            "misaligned movaps",
        ];
        // The vectors each may raise: int3 is a #BP (its gate is open to
        // every ring, as on a real CPU); int1 (`icebp`) is a #DB, but
        // QEMU's TCG makes it a #UD.
        // A non-canonical stack access is a #SS, which QEMU's TCG makes a
        // #GP.
        const VECTORS: [&[u64]; 9] = [
            &[6],
            &[3],
            &[1, 6],
            &[0],
            &[0],
            &[6],
            &[6],
            &[12, 13],
            &[13],
        ];
        let kind = self.rng.below(NAMES.len() as u64) as usize;
        if !self.go(Fate::Safe, format_args!("{}", NAMES[kind])) {
            return;
        }
        let before = recover::traps_taken();
        // SAFETY: each instruction traps before it changes anything; the
        // recovery point takes over.
        unsafe {
            match kind {
                0 => guarded!(["ud2"]),
                1 => guarded!([".byte 0xcc"]),
                2 => guarded!([".byte 0xf1"]),
                3 => guarded!(
                    ["xor edx, edx", "xor ecx, ecx", "div ecx"],
                    out("rax") _,
                    out("rcx") _,
                    out("rdx") _
                ),
                4 => guarded!(
                    ["cqo", "mov rcx, -1", "idiv rcx"],
                    inout("rax") i64::MIN => _,
                    out("rcx") _,
                    out("rdx") _
                ),
                5 => guarded!([".byte 0xce"]),
                6 => guarded!([".byte 0x0f, 0xff, 0xc0"]),
                7 => guarded!(
                    ["mov rax, qword ptr [rsp + rcx]"],
                    in("rcx") 1u64 << 62,
                    out("rax") _
                ),
                _ => guarded!(
                    [
                        "lea rax, [rsp - 64]",
                        "and rax, -16",
                        "movaps xmm0, xmmword ptr [rax + 8]",
                    ],
                    out("rax") _
                ),
            }
        }
        self.expect_trap(NAMES[kind], before, VECTORS[kind], 1);
    }

    /// An x87 or SSE division by zero (or zero by zero) under random
    /// exception masks: an unmasked one must come back as #MF or #XM, a
    /// masked one not at all. The FPU is reset afterwards.
    pub fn fpu(&mut self) {
        let sse = self.rng.percent(50);
        let zero_by_zero = self.rng.percent(50);
        // x87: masks are bits 0 (invalid) to 5; SSE: bits 7 (invalid) to 12.
        let fcw: u16 = 0x037f & !(self.rng.next() as u16 & 0x3f);
        let mxcsr: u32 = 0x1f80 & !(self.rng.next() as u32 & 0x1f80);
        let (masks_shift, control) = if sse {
            (7, u64::from(mxcsr))
        } else {
            (0, u64::from(fcw))
        };
        // Zero by zero is an invalid operation (mask bit 0), one by zero a
        // division by zero (mask bit 2).
        let mask_bit = if zero_by_zero { 0 } else { 2 };
        let unmasked = ((control >> masks_shift) >> mask_bit) & 1 == 0;
        // QEMU's TCG never raises #XM (it only sets MXCSR's flags), so an
        // unmasked SSE exception may also pass without a trap.
        let (expected, may_pass) = match (sse, unmasked) {
            (true, true) => (Some(19), true),
            (false, true) => (Some(16), false),
            (_, false) => (None, true),
        };
        if !self.go(
            Fate::Safe,
            format_args!(
                "{} {} with control {control:#x}",
                if sse { "divss" } else { "fdiv" },
                if zero_by_zero { "0/0" } else { "1/0" }
            ),
        ) {
            return;
        }
        let before = recover::traps_taken();
        let numerator: u32 = if zero_by_zero { 0 } else { 0x3f80_0000 };
        // SAFETY: the FPU's own registers only (the guest is soft-float:
        // no compiled code keeps anything there); a trap resumes at the
        // recovery point, and the FPU is reset below either way.
        unsafe {
            if sse {
                guarded!(
                    [
                        "ldmxcsr dword ptr [{m}]",
                        "movd xmm0, {n:e}",
                        "xorps xmm1, xmm1",
                        "divss xmm0, xmm1",
                    ],
                    m = in(reg) &raw const mxcsr,
                    n = in(reg) numerator
                )
            } else if zero_by_zero {
                guarded!(
                    [
                        "fninit",
                        "fldcw word ptr [{c}]",
                        "fldz",
                        "fldz",
                        // fdivp st(1), st(0)
                        ".byte 0xde, 0xf9",
                        "fwait",
                    ],
                    c = in(reg) &raw const fcw
                )
            } else {
                guarded!(
                    [
                        "fninit",
                        "fldcw word ptr [{c}]",
                        "fld1",
                        "fldz",
                        ".byte 0xde, 0xf9",
                        "fwait",
                    ],
                    c = in(reg) &raw const fcw
                )
            }
        }
        let trapped = recover::traps_taken() != before;
        let default_mxcsr: u32 = 0x1f80;
        // SAFETY: resets the FPU's control and status to their start-up
        // values (no waiting form, so a pending x87 exception is dropped).
        unsafe {
            core::arch::asm!(
                "fnclex",
                "fninit",
                "ldmxcsr dword ptr [{m}]",
                m = in(reg) &raw const default_mxcsr,
                options(nostack),
            )
        };
        let what = if sse { "divss" } else { "fdiv" };
        match expected {
            Some(_) if may_pass && !trapped => self.stats.checked += 1,
            Some(vector) => self.expect_trap(what, before, &[vector], 1),
            None if trapped => {
                let trap = recover::last_trap();
                self.mismatch(format_args!(
                    "{what} with every exception masked: expected no trap, got {trap}"
                ))
            }
            None => self.stats.checked += 1,
        }
    }

    /// The state the host must keep for each guest across its exits and
    /// other guests' turns (guest_abi::boot): random x87 control word,
    /// MXCSR, MMX and SSE registers and data segment selectors are
    /// planted, the fuzzer sleeps a millisecond (every other guest may run
    /// meanwhile), and they must all be back.
    pub fn cpu_state(&mut self) {
        let mut planted = CpuState {
            // Every exception stays masked; precision and rounding vary.
            fcw: 0x007f | (self.rng.next() as u16 & 0x0f00),
            // Every exception masked; rounding and flush-to-zero vary.
            mxcsr: 0x1f80 | (self.rng.next() as u32 & 0xe000),
            ..CpuState::default()
        };
        for word in planted.xmm.iter_mut().chain(&mut planted.mm) {
            *word = self.rng.next();
        }
        for selector in &mut planted.selectors {
            // Null, the guest kernel's code and data, user data and code:
            // what ring 1 may load into a data segment register.
            *selector = self.rng.pick(&[0, 0x19, 0x21, 0x2b, 0x33]);
        }
        if !self.go(
            Fate::Safe,
            format_args!(
                "plant fcw {:#x} mxcsr {:#x} selectors {:x?}, sleep, look",
                planted.fcw, planted.mxcsr, planted.selectors
            ),
        ) {
            return;
        }
        planted.plant();
        // A real sleep: nothing pending, a 1 ms timer.
        let pending = (boot::shared_page() as *mut u8).wrapping_add(IRQ_PENDING as usize);
        // SAFETY: the shared page's pending-interrupt word, which the guest
        // may write; with virtual interrupts off the timer only sets it.
        unsafe { (pending as *mut u64).write_volatile(0) };
        let _ = hypercall::set_timer(1_000_000);
        hypercall::halt();
        let seen = CpuState::read();
        CpuState::reset();
        self.stats.checked += 1;
        if seen != planted {
            self.mismatch(format_args!(
                "CPU state changed across a sleep: planted {planted:x?}, found {seen:x?}"
            ));
        }
    }

    /// Virtual interrupts, raised by the fuzzer itself (so that when they
    /// come does not depend on time): random pending bits in the shared
    /// page (handled vectors, the timer's, vectors nobody handles, all
    /// 64), then virtual interrupts on for a few hypercalls, at each of
    /// which the host delivers the lowest pending one (or drops it, with
    /// no handler), then off again.
    pub fn interrupts(&mut self) {
        let raised = match self.rng.below(4) {
            0 => 1u64 << self.rng.below(9),
            1 => self.rng.next() & 0x1ff,
            2 => self.rng.next(),
            _ => u64::MAX,
        };
        let exits = 1 + self.rng.below(72);
        if !self.go(
            Fate::Safe,
            format_args!("raise pending interrupts {raised:#x}, on for {exits} hypercalls"),
        ) {
            return;
        }
        let pending = (boot::shared_page() as *mut u8).wrapping_add(IRQ_PENDING as usize);
        let before = recover::irqs_taken();
        // SAFETY: the shared page's pending-interrupt word, which the guest
        // may write (the host trusts nothing there).
        unsafe { (pending as *mut u64).write_volatile(raised) };
        for _ in 0..exits {
            // Turning them on takes a pending one at once (a `nop`).
            guest_rt::irq::enable();
            hypercall::nop();
        }
        guest_rt::irq::disable();
        if self.verbose {
            let taken = recover::irqs_taken() - before;
            println!("fuzz: step {}: {taken} of ours taken", self.step);
        }
    }

    /// `iretq` with a crafted frame: mostly a return to ring 1 (to the end
    /// of the block, random flags) or to ring 3 (where the fetch of a
    /// supervisor page faults back); rarely selectors ring 1 may not load:
    /// a #GP reflected, or, for a return to ring 0, a kill.
    pub fn iretq(&mut self) {
        let kernel = u64::from(selector::KERNEL_CODE);
        let kernel_data = u64::from(selector::KERNEL_DATA);
        let user = u64::from(selector::USER_CODE);
        let user_data = u64::from(selector::USER_DATA);
        let (cs, ss) = match self.rng.weighted(&[70, 25, 5]) {
            0 => (kernel, kernel_data),
            1 => (user, user_data),
            _ => (
                u64::from(self.selector()),
                if self.rng.percent(50) {
                    u64::from(self.stack_selector())
                } else {
                    kernel_data
                },
            ),
        };
        let rflags = (self.rng.next() & FLAG_BITS & !RFLAGS_NT) | 2;
        let own_stack = cs == kernel || self.rng.percent(50);
        let rsp = if cs == user && self.rng.percent(80) {
            USER_STACK_TOP
        } else {
            self.boundary()
        };
        // The host kills for a frame that returns to ring 0 (a code
        // selector of privilege 0, or the switcher's own segments); any
        // other bad frame is the fuzzer's own #GP, reflected.
        let index = cs & !7;
        let fate = if index != 0 && (cs & 3 == 0 || index == 0x08 || index == 0x10) {
            Fate::Killed("iretq to ring 0")
        } else {
            Fate::Safe
        };
        if !self.go(
            fate,
            format_args!("iretq to {cs:#x}:end, ss {ss:#x}, rflags {rflags:#x}"),
        ) {
            return;
        }
        // SAFETY: the frame returns to the recovery point (in ring 1, or in
        // ring 3 where the supervisor page's fetch faults back to it), or
        // iretq faults; the stack is restored there.
        unsafe {
            if own_stack && cs == kernel {
                guarded!(
                    [
                        "mov {t}, rsp",
                        "push {ss}",
                        "push {t}",
                        "push {fl}",
                        "push {cs}",
                        "lea {t}, [rip + 77f]",
                        "push {t}",
                        "iretq",
                    ],
                    ss = in(reg) ss,
                    fl = in(reg) rflags,
                    cs = in(reg) cs,
                    t = out(reg) _
                )
            } else {
                guarded!(
                    [
                        "push {ss}",
                        "push {sp}",
                        "push {fl}",
                        "push {cs}",
                        "lea {t}, [rip + 77f]",
                        "push {t}",
                        "iretq",
                    ],
                    ss = in(reg) ss,
                    sp = in(reg) rsp,
                    fl = in(reg) rflags,
                    cs = in(reg) cs,
                    t = out(reg) _
                )
            }
        }
        self.survived(fate);
    }

    /// `int n` from ring 1: on one of the fuzzer's direct-trap vectors it
    /// reaches its handler through the CPU; `int 3` is a #BP; on any other
    /// (but the hypercall gate) the gate's privilege forbids it, and the
    /// host must kill the fuzzer for it.
    pub fn int_n(&mut self) {
        let vector = if self.rng.percent(90) {
            self.rng.pick(&DIRECT_VECTORS)
        } else {
            let v = self.rng.below(256) as u8;
            if v == guest_abi::hypercall::VECTOR {
                0x80
            } else {
                v
            }
        };
        let direct = DIRECT_VECTORS.contains(&vector);
        // `int 3` is a breakpoint, whose gate every ring may use: a #BP
        // for the recovery point, not a kill.
        let fate = if direct || vector == 3 {
            Fate::Safe
        } else {
            Fate::Killed("privileged instruction `int n`")
        };
        if !self.go(fate, format_args!("int {vector:#x}")) {
            return;
        }
        let stub = (&raw const fuzz_int_stubs) as u64 + 4 * u64::from(vector);
        let before = recover::traps_of(32);
        // SAFETY: the stub is `int n; ret`: a direct trap comes back to
        // it, anything else faults to the recovery point.
        unsafe { guarded!(["call {f}"], f = in(reg) stub) };
        self.survived(fate);
        if direct {
            self.stats.checked += 1;
            if recover::traps_of(32) != before + 1 {
                self.mismatch(format_args!(
                    "int {vector:#x}: the direct trap did not reach its handler"
                ));
            }
        }
    }

    /// An excursion to ring 3: a few bytes of code written to the user
    /// page, entered with `iretq`, ending in `ud2`. Whatever user code
    /// traps on is reflected (the host never kills a guest for what its
    /// user code does, but for a hypercall and a write to the switcher);
    /// the trap is checked to be the one the CPU raises.
    pub fn user(&mut self) {
        let kernel_data = (&raw mut SCRATCH) as u64;
        let mut code = [0x0fu8, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut put = |bytes: &[u8]| {
            code[..bytes.len()].copy_from_slice(bytes);
            code[bytes.len()..bytes.len() + 2].copy_from_slice(&[0x0f, 0x0b]);
        };
        let absolute = |opcode: u8, address: u64| {
            let a = address.to_le_bytes();
            [0x48, opcode, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]
        };
        let kind = self.rng.below(13);
        let random_vector = loop {
            let v = self.rng.below(256) as u8;
            if v != guest_abi::hypercall::VECTOR && !DIRECT_VECTORS.contains(&v) {
                break v;
            }
        };
        // cli, hlt, in, rdmsr, mov cr3, lgdt, swapgs.
        let privileged: &[u8] = match self.rng.below(7) {
            0 => &[0xfa],
            1 => &[0xf4],
            2 => &[0xec],
            3 => &[0x0f, 0x32],
            4 => &[0x0f, 0x22, 0xd8],
            5 => &[0x0f, 0x01, 0x10],
            _ => &[0x0f, 0x01, 0xf8],
        };
        let (name, vectors, fate): (&str, &[u64], Fate) = match kind {
            0 => ("ud2", &[6], Fate::Safe),
            1 => {
                put(&[0xb8, 7, 0, 0, 0, 0xcd, guest_abi::hypercall::VECTOR]);
                ("int 0x81", &[6], Fate::Killed(reason::USER_HYPERCALL))
            }
            2 => {
                put(&[0xcd, DIRECT_VECTORS[0]]);
                ("int (direct)", &[6], Fate::Safe)
            }
            3 => {
                put(&[0xcd, random_vector]);
                // Every gate but the breakpoint's forbids ring 3.
                let vectors: &[u64] = if random_vector == 3 { &[3] } else { &[13] };
                ("int n", vectors, Fate::Safe)
            }
            4 => {
                put(privileged);
                ("a privileged instruction", &[13], Fate::Safe)
            }
            5 => {
                put(&absolute(0xa1, kernel_data));
                ("read of a supervisor page", &[14], Fate::Safe)
            }
            6 => {
                put(&absolute(0xa3, USER_CODE));
                ("write to its read-only code", &[14], Fate::Safe)
            }
            7 => {
                put(&[0x0f, 0x05]);
                ("syscall", &[6], Fate::Safe)
            }
            8 => {
                put(&[0x0f, 0x34]);
                ("sysenter", &[6, 13], Fate::Safe)
            }
            9 => {
                put(&absolute(0xa3, SWITCHER_SLOT + 0x1_1000));
                (
                    "write to the switcher's slot",
                    &[14],
                    Fate::Killed(reason::SWITCHER_WRITE),
                )
            }
            10 => {
                put(&[0xcc]);
                ("int3", &[3], Fate::Safe)
            }
            11 => {
                // mov rax, [rsp - 9]: misaligned (inside the stack page),
                // a #AC with RFLAGS.AC where the host has CR0.AM on.
                put(&[0x48, 0x8b, 0x44, 0x24, 0xf7]);
                ("misaligned read", &[17, 6], Fate::Safe)
            }
            _ => {
                put(&absolute(0xa1, SWITCHER_SLOT));
                ("read of the switcher's slot", &[14], Fate::Safe)
            }
        };
        let mut rflags = 0x202;
        if kind == 11 || self.rng.one_in(10) {
            rflags |= RFLAGS_AC;
        }
        let single_step = self.rng.one_in(20);
        if single_step {
            rflags |= RFLAGS_TF;
        }
        // Single-stepping, ring 3 runs one instruction and the #DB brings
        // it back: `int 0x81`, the second, is never reached.
        let fate = if single_step && kind == 1 {
            Fate::Safe
        } else {
            fate
        };
        if !self.go(fate, format_args!("ring 3: {name}, rflags {rflags:#x}")) {
            return;
        }
        // SAFETY: the user code page is ours, mapped read-only for ring 3
        // in every address space, and written only here, through the
        // start-up map.
        unsafe {
            let target = boot::kernel_virtual(self.space.user_code) as *mut u8;
            target.copy_from_nonoverlapping(code.as_ptr(), code.len());
        }
        let before = recover::traps_taken();
        let direct_before = recover::traps_of(32);
        // SAFETY: ring 3 runs the code above and traps back to the
        // recovery point, on the kernel stack the fuzzer registered.
        unsafe {
            guarded!(
                [
                    "push {ss}",
                    "push {sp}",
                    "push {fl}",
                    "push {cs}",
                    "push {ip}",
                    "iretq",
                ],
                ss = in(reg) u64::from(selector::USER_DATA),
                sp = in(reg) USER_STACK_TOP,
                fl = in(reg) rflags,
                cs = in(reg) u64::from(selector::USER_CODE),
                ip = in(reg) USER_CODE,
                out("rax") _
            )
        }
        self.survived(fate);
        if single_step {
            // The #DB may come first; any trap back from ring 3 will do.
            self.expect_trap(
                name,
                before,
                &[1, vectors[0], *vectors.last().unwrap_or(&0)],
                3,
            );
            return;
        }
        self.expect_trap(name, before, vectors, 3);
        if kind == 2 && recover::traps_of(32) != direct_before + 1 {
            self.mismatch(format_args!(
                "ring 3 int {:#x}: the direct trap did not reach its handler",
                DIRECT_VECTORS[0]
            ));
        }
    }

    /// One plainly privileged instruction: the host must kill the fuzzer
    /// for it, naming it.
    pub fn privileged(&mut self) {
        let umip = self.umip;
        let kind = self.rng.below(36);
        let (name, fate) = match kind {
            0 => ("cli", Fate::Killed("privileged instruction `cli`")),
            1 => ("sti", Fate::Killed("privileged instruction `sti`")),
            2 => ("hlt", Fate::Killed("privileged instruction `hlt`")),
            3 => (
                "mov cr3, rax",
                Fate::Killed("privileged instruction `mov to cr3`"),
            ),
            4 => (
                "mov rax, cr0",
                Fate::Killed("privileged instruction `mov from cr0`"),
            ),
            5 => (
                "mov rax, cr2",
                Fate::Killed("privileged instruction `mov from cr2`"),
            ),
            6 => (
                "mov rax, cr4",
                Fate::Killed("privileged instruction `mov from cr4`"),
            ),
            7 => (
                "mov cr8, rax",
                Fate::Killed("privileged instruction `mov to cr8`"),
            ),
            8 => ("wrmsr", Fate::Killed("privileged instruction `wrmsr`")),
            9 => ("rdmsr", Fate::Killed("privileged instruction `rdmsr`")),
            10 => ("in al, dx", Fate::Killed("privileged instruction `in`")),
            11 => ("out dx, al", Fate::Killed("privileged instruction `out`")),
            12 => ("in al, 0x80", Fate::Killed("privileged instruction `in`")),
            13 => ("out 0x80, al", Fate::Killed("privileged instruction `out`")),
            14 => ("insb", Fate::Killed("privileged instruction `ins`")),
            15 => ("outsb", Fate::Killed("privileged instruction `outs`")),
            16 => ("lgdt", Fate::Killed("privileged instruction `lgdt`")),
            17 => ("lidt", Fate::Killed("privileged instruction `lidt`")),
            18 => ("lldt", Fate::Killed("privileged instruction `lldt`")),
            19 => ("ltr", Fate::Killed("privileged instruction `ltr`")),
            20 => ("swapgs", Fate::Killed("privileged instruction `swapgs`")),
            21 => ("invlpg", Fate::Killed("privileged instruction `invlpg`")),
            22 => ("wbinvd", Fate::Killed("privileged instruction `wbinvd`")),
            23 => ("invd", Fate::Killed("privileged instruction `invd`")),
            24 => ("clts", Fate::Killed("privileged instruction `clts`")),
            25 => (
                "mov dr7, rax",
                Fate::Killed("privileged instruction `mov to dr7`"),
            ),
            26 => (
                "mov rax, dr6",
                Fate::Killed("privileged instruction `mov from dr6`"),
            ),
            27 => ("rdpmc", Fate::Killed("privileged instruction `rdpmc`")),
            28 => ("lmsw", Fate::Killed("privileged instruction `lmsw`")),
            29 => ("rep insb", Fate::Killed("privileged instruction `ins`")),
            30 => umip_fate("sgdt", umip, "privileged instruction `sgdt`"),
            31 => umip_fate("sidt", umip, "privileged instruction `sidt`"),
            32 => umip_fate("sldt", umip, "privileged instruction `sldt`"),
            33 => umip_fate("str", umip, "privileged instruction `str`"),
            34 => umip_fate("smsw", umip, "privileged instruction `smsw`"),
            _ => (
                "mov cr0, rax",
                Fate::Killed("privileged instruction `mov to cr0`"),
            ),
        };
        if !self.go(fate, format_args!("{name}")) {
            return;
        }
        let buffer = scratch();
        let root = self.space.root();
        // SAFETY: ring 1 may do none of these: the host must kill us at
        // the first one. Should one get through, its operands are
        // harmless where they can be: our own root for CR3, our scratch
        // buffer for memory operands, the POST port for I/O, zero for the
        // task-priority and debug registers, LSTAR 0 (as the `trap` guest
        // does), and CR0 as the host has it (PE, MP, NE, WP, PG).
        unsafe {
            match kind {
                0 => guarded!(["cli"]),
                1 => guarded!(["sti"]),
                2 => guarded!(["hlt"]),
                3 => guarded!(["mov cr3, rax"], in("rax") root),
                4 => guarded!(["mov rax, cr0"], out("rax") _),
                5 => guarded!(["mov rax, cr2"], out("rax") _),
                6 => guarded!(["mov rax, cr4"], out("rax") _),
                7 => guarded!(["mov cr8, rax"], in("rax") 0u64),
                8 => guarded!(["wrmsr"], in("ecx") 0xc000_0082u32, in("eax") 0, in("edx") 0),
                9 => guarded!(["rdmsr"], in("ecx") 0x10u32, out("eax") _, out("edx") _),
                10 => guarded!(["in al, dx"], in("dx") 0x80u16, out("al") _),
                11 => guarded!(["out dx, al"], in("dx") 0x80u16, in("al") 0u8),
                12 => guarded!(["in al, 0x80"], out("al") _),
                13 => guarded!(["out 0x80, al"], in("al") 0u8),
                14 => guarded!(["insb"], in("dx") 0x80u16, inout("rdi") buffer => _),
                15 => guarded!(["outsb"], in("dx") 0x80u16, inout("rsi") buffer => _),
                16 => guarded!(["lgdt [rax]"], in("rax") buffer),
                17 => guarded!(["lidt [rax]"], in("rax") buffer),
                18 => guarded!(["lldt ax"], in("ax") 0u16),
                19 => guarded!(["ltr ax"], in("ax") 0x38u16),
                20 => guarded!(["swapgs", "swapgs"]),
                21 => guarded!(["invlpg [rax]"], in("rax") buffer),
                22 => guarded!(["wbinvd"]),
                23 => guarded!(["invd"]),
                24 => guarded!(["clts"]),
                25 => guarded!(["mov dr7, rax"], in("rax") 0u64),
                26 => guarded!(["mov rax, dr6"], out("rax") _),
                27 => guarded!(["rdpmc"], in("ecx") 0u32, out("eax") _, out("edx") _),
                28 => guarded!(["lmsw ax"], in("ax") 0x33u16),
                29 => guarded!(
                    ["rep insb"],
                    in("dx") 0x80u16,
                    inout("rdi") buffer => _,
                    inout("rcx") 1u64 => _
                ),
                30 => guarded!(["sgdt [rax]"], in("rax") buffer),
                31 => guarded!(["sidt [rax]"], in("rax") buffer),
                32 => guarded!(["sldt ax"], out("ax") _),
                33 => guarded!(["str ax"], out("ax") _),
                34 => guarded!(["smsw ax"], out("ax") _),
                _ => guarded!(["mov cr0, rax"], in("rax") 0x8005_0033u64),
            }
        }
        self.survived(fate);
    }

    /// A sleep on a timer the fuzzer arms itself (so the halt always ends,
    /// whatever time it is); or, rarely, a halt with the timer cancelled
    /// and nothing pending, which the host must end.
    pub fn halt(&mut self) {
        let forever = self.rng.percent(30);
        let ns = self.rng.pick(&[1u64, 1000, 100_000, 1_000_000]);
        let fate = if forever {
            Fate::Killed(reason::HALTED_FOREVER)
        } else {
            Fate::Safe
        };
        let timer = if forever { 0 } else { ns };
        if !self.go(
            fate,
            format_args!("halt with a {timer} ns timer (0: none, nothing pending)"),
        ) {
            return;
        }
        if forever {
            let _ = hypercall::set_timer(0);
            let pending = (boot::shared_page() as *mut u8).wrapping_add(IRQ_PENDING as usize);
            // SAFETY: the shared page's pending-interrupt word, which the
            // guest may write; with the timer cancelled and virtual
            // interrupts off, nothing sets it again before the halt.
            unsafe { (pending as *mut u64).write_volatile(0) };
        } else {
            let _ = hypercall::set_timer(ns);
        }
        hypercall::halt();
        self.survived(fate);
    }

    /// Ends the run with an exit code of its choosing.
    pub fn shutdown(&mut self) {
        let random = self.rng.next();
        let code = self.rng.pick(&[0, 1, 2, 7, 42, 101, u64::MAX, random]);
        let fate = Fate::Exits(code);
        if self.go(fate, format_args!("shutdown({code})")) {
            // SAFETY: Shutdown takes a code and never comes back.
            let _ = unsafe { crate::calls::raw(6, [code, 0, 0, 0]) };
            self.survived(fate);
        }
    }
}

/// The x87, MMX and SSE state and data selectors a guest keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuState {
    fcw: u16,
    mxcsr: u32,
    /// xmm0, xmm7 and xmm15, low half first.
    xmm: [u64; 6],
    /// mm0 and mm5.
    mm: [u64; 2],
    /// ds, es, fs, gs.
    selectors: [u16; 4],
}

impl CpuState {
    /// Loads this state.
    fn plant(&self) {
        // SAFETY: the guest is soft-float, so no compiled code keeps
        // anything in the x87, MMX or SSE registers; every exception stays
        // masked; the selectors are ones ring 1 may load, of flat segments
        // with base 0 that the fuzzer never addresses through.
        unsafe {
            core::arch::asm!(
                "fldcw word ptr [{s} + {fcw}]",
                "ldmxcsr dword ptr [{s} + {mxcsr}]",
                "movdqu xmm0, xmmword ptr [{s} + {xmm}]",
                "movdqu xmm7, xmmword ptr [{s} + {xmm} + 16]",
                "movdqu xmm15, xmmword ptr [{s} + {xmm} + 32]",
                "movq mm0, qword ptr [{s} + {mm}]",
                "movq mm5, qword ptr [{s} + {mm} + 8]",
                "mov ds, word ptr [{s} + {sel}]",
                "mov es, word ptr [{s} + {sel} + 2]",
                "mov fs, word ptr [{s} + {sel} + 4]",
                "mov gs, word ptr [{s} + {sel} + 6]",
                s = in(reg) self,
                fcw = const core::mem::offset_of!(CpuState, fcw),
                mxcsr = const core::mem::offset_of!(CpuState, mxcsr),
                xmm = const core::mem::offset_of!(CpuState, xmm),
                mm = const core::mem::offset_of!(CpuState, mm),
                sel = const core::mem::offset_of!(CpuState, selectors),
                options(nostack, readonly),
            )
        }
    }

    /// Reads the state as it is now.
    fn read() -> Self {
        let mut state = Self::default();
        let (ds, es, fs, gs): (u16, u16, u16, u16);
        // SAFETY: stores of the state into `state`'s own fields; reading
        // MMX registers changes only the x87 tags, which `reset` clears.
        unsafe {
            core::arch::asm!(
                "fnstcw word ptr [{s} + {fcw}]",
                "stmxcsr dword ptr [{s} + {mxcsr}]",
                "movdqu xmmword ptr [{s} + {xmm}], xmm0",
                "movdqu xmmword ptr [{s} + {xmm} + 16], xmm7",
                "movdqu xmmword ptr [{s} + {xmm} + 32], xmm15",
                "movq qword ptr [{s} + {mm}], mm0",
                "movq qword ptr [{s} + {mm} + 8], mm5",
                "mov {ds:x}, ds",
                "mov {es:x}, es",
                "mov {fs:x}, fs",
                "mov {gs:x}, gs",
                s = in(reg) &raw mut state,
                fcw = const core::mem::offset_of!(CpuState, fcw),
                mxcsr = const core::mem::offset_of!(CpuState, mxcsr),
                xmm = const core::mem::offset_of!(CpuState, xmm),
                mm = const core::mem::offset_of!(CpuState, mm),
                ds = out(reg) ds,
                es = out(reg) es,
                fs = out(reg) fs,
                gs = out(reg) gs,
                options(nostack),
            )
        }
        state.selectors = [ds, es, fs, gs];
        state
    }

    /// Leaves MMX for x87 and puts the control words back to their
    /// start-up values.
    fn reset() {
        let default_mxcsr: u32 = 0x1f80;
        // SAFETY: resets the FPU's control and status words (no waiting
        // form, so nothing pending is raised) and the MMX tags.
        unsafe {
            core::arch::asm!(
                "emms",
                "fninit",
                "ldmxcsr dword ptr [{m}]",
                m = in(reg) &raw const default_mxcsr,
                options(nostack),
            )
        };
    }
}

/// A UMIP instruction: killed where the host turned UMIP on (it does
/// wherever the CPU has it), maybe not elsewhere.
fn umip_fate(name: &'static str, umip: bool, needle: &'static str) -> (&'static str, Fate) {
    (
        name,
        if umip {
            Fate::Killed(needle)
        } else {
            Fate::May
        },
    )
}
