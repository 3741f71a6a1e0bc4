//! Naming what a guest did: exception names, and the privileged
//! instruction behind a general-protection fault in ring 1.
//!
//! In ring 1 every instruction that would touch the real machine (`cli`,
//! `hlt`, `mov` to a control register, `lgdt`, `wrmsr`, `in`/`out`,
//! `swapgs`, ...) raises `#GP`. A paravirtual guest kernel never executes
//! them, so one that does is broken or hostile, and the host ends it with
//! the instruction's name. Only the opcode is decoded (with the ModRM
//! `reg` field and REX.R for a control or debug register: `mov to cr8`,
//! `mov from cr3`, `mov to dr7`): enough to name it, never to emulate it.
//!
//! `iret` is not among them: ring 1 may execute it, and when it raises
//! `#GP` there the frame it pops is at fault. [`judge_iret`] names what is
//! wrong with that frame, and tells a return to ring 0 (the host's ring,
//! which the guest is killed for trying) from the guest's own mistakes.
//!
//! Also here, the vectors' rules: which a guest may take as direct traps
//! (gates in the CPU's own IDT), which never (the exceptions, the hypercall
//! gate, the host's own interrupt vectors).

use crate::addr::GuestVirtAddr;

/// The mnemonic and name of exception `vector`.
pub fn exception_name(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE (divide error)",
        "#DB (debug)",
        "NMI",
        "#BP (breakpoint)",
        "#OF (overflow)",
        "#BR (bound range)",
        "#UD (invalid opcode)",
        "#NM (device not available)",
        "#DF (double fault)",
        "coprocessor segment overrun",
        "#TS (invalid TSS)",
        "#NP (segment not present)",
        "#SS (stack fault)",
        "#GP (general protection)",
        "#PF (page fault)",
        "reserved exception 15",
        "#MF (x87 error)",
        "#AC (alignment check)",
        "#MC (machine check)",
        "#XM (SIMD error)",
        "#VE (virtualization)",
        "#CP (control protection)",
        "reserved exception 22",
        "reserved exception 23",
        "reserved exception 24",
        "reserved exception 25",
        "reserved exception 26",
        "reserved exception 27",
        "#HV (hypervisor injection)",
        "#VC (VMM communication)",
        "#SX (security)",
        "reserved exception 31",
    ];
    NAMES
        .get(usize::from(vector))
        .copied()
        .unwrap_or("an interrupt")
}

/// Whether `vector` may be a direct trap (user code reaching the guest
/// kernel through the CPU's IDT): not an exception, not the hypercall gate,
/// not one of the host's own interrupt vectors, whose gates must always
/// bring the interrupt back to the host. The contract's rule
/// ([`guest_abi::hypercall::may_be_direct`]), over the host's vectors as the
/// kernel programs them ([`guest_abi::hypercall::host_vector`]).
pub fn may_be_direct(vector: u8) -> bool {
    guest_abi::hypercall::may_be_direct(vector)
}

/// Whether the CPU's IDT gate for `vector` is one a guest's direct traps
/// could have changed, and so is rewritten whenever they are handed to the
/// CPU again: every vector from 32 up but the hypercall gate. The host's
/// own vectors are among them; as no direct trap is ever accepted there,
/// each rewrite puts their switcher stub back.
pub fn has_rewritable_gate(vector: u8) -> bool {
    vector >= 32 && vector != guest_abi::hypercall::VECTOR
}

/// Whether a `#GP` error code says the fault came from IDT gate `vector`
/// (`int vector` through a gate of too high a privilege). The architecture
/// puts the vector in bits 3 and up, with bit 1 set (SDM vol. 3, 6.13);
/// QEMU's TCG (7.2) puts the gate's byte offset in the 16-byte IDT there
/// instead (`vector * 16 + 2`). Both are accepted.
pub fn is_gate_fault(error_code: u64, vector: u8) -> bool {
    let vector = u64::from(vector);
    error_code == (vector << 3) | 2 || error_code == (vector << 4) | 2
}

/// What the prefixes in front of an opcode said: where the opcode is, the
/// REX prefix (0 if none), and whether there was a `lock` (`0xf0`) or an
/// operand-size (`0x66`) prefix.
struct Prefixes {
    opcode_at: usize,
    rex: u8,
    lock: bool,
    operand_size: bool,
}

impl Prefixes {
    /// Skips the legacy prefixes and one REX prefix (which counts only
    /// right before the opcode).
    fn of(code: &[u8]) -> Self {
        let mut i = 0;
        let (mut lock, mut operand_size) = (false, false);
        while let Some(&b) = code.get(i) {
            match b {
                0xf0 => lock = true,
                0x66 => operand_size = true,
                0x67 | 0xf2 | 0xf3 | 0x2e | 0x3e | 0x26 | 0x36 | 0x64 | 0x65 => {}
                _ => break,
            }
            i += 1;
        }
        let rex = code
            .get(i)
            .copied()
            .filter(|b| b & 0xf0 == 0x40)
            .unwrap_or(0);
        if rex != 0 {
            i += 1;
        }
        Self {
            opcode_at: i,
            rex,
            lock,
            operand_size,
        }
    }

    /// REX.W: 64-bit operands.
    fn rex_w(&self) -> bool {
        self.rex & 0x08 != 0
    }

    /// REX.R: the fourth bit of the ModRM `reg` field.
    fn rex_r(&self) -> usize {
        usize::from(self.rex & 0x04 != 0) << 3
    }
}

/// `mov` between a general register and a control or debug register
/// (`0f 20`, `0f 22`, `0f 21`, `0f 23`), by direction and register number
/// (ModRM `reg`, extended by REX.R). Only `cr0`, `cr2` to `cr4`, `cr8` and
/// `dr0` to `dr7` exist; the others raise `#UD`, not `#GP`, but are named
/// all the same should one come here.
const MOV_FROM_CR: [&str; 16] = [
    "mov from cr0",
    "mov from cr1",
    "mov from cr2",
    "mov from cr3",
    "mov from cr4",
    "mov from cr5",
    "mov from cr6",
    "mov from cr7",
    "mov from cr8",
    "mov from cr9",
    "mov from cr10",
    "mov from cr11",
    "mov from cr12",
    "mov from cr13",
    "mov from cr14",
    "mov from cr15",
];
const MOV_TO_CR: [&str; 16] = [
    "mov to cr0",
    "mov to cr1",
    "mov to cr2",
    "mov to cr3",
    "mov to cr4",
    "mov to cr5",
    "mov to cr6",
    "mov to cr7",
    "mov to cr8",
    "mov to cr9",
    "mov to cr10",
    "mov to cr11",
    "mov to cr12",
    "mov to cr13",
    "mov to cr14",
    "mov to cr15",
];
const MOV_FROM_DR: [&str; 16] = [
    "mov from dr0",
    "mov from dr1",
    "mov from dr2",
    "mov from dr3",
    "mov from dr4",
    "mov from dr5",
    "mov from dr6",
    "mov from dr7",
    "mov from dr8",
    "mov from dr9",
    "mov from dr10",
    "mov from dr11",
    "mov from dr12",
    "mov from dr13",
    "mov from dr14",
    "mov from dr15",
];
const MOV_TO_DR: [&str; 16] = [
    "mov to dr0",
    "mov to dr1",
    "mov to dr2",
    "mov to dr3",
    "mov to dr4",
    "mov to dr5",
    "mov to dr6",
    "mov to dr7",
    "mov to dr8",
    "mov to dr9",
    "mov to dr10",
    "mov to dr11",
    "mov to dr12",
    "mov to dr13",
    "mov to dr14",
    "mov to dr15",
];

/// Names the privileged instruction at the start of `code`, if it is one.
///
/// Not `iret`: ring 1 may execute it, and when it faults the frame it
/// pops is at fault, not the instruction ([`iret_operand_bytes`],
/// [`judge_iret`]).
pub fn privileged(code: &[u8]) -> Option<&'static str> {
    let prefixes = Prefixes::of(code);
    let i = prefixes.opcode_at;
    let op = *code.get(i)?;
    let next = code.get(i + 1).copied();
    // The register a `mov` to or from a control or debug register names:
    // ModRM `reg`, extended by REX.R.
    let modrm_reg = || {
        code.get(i + 2)
            .map(|m| usize::from((m >> 3) & 7) | prefixes.rex_r())
    };
    Some(match op {
        0xfa => "cli",
        0xfb => "sti",
        0xf4 => "hlt",
        0xe4 | 0xe5 | 0xec | 0xed => "in",
        0xe6 | 0xe7 | 0xee | 0xef => "out",
        0x6c | 0x6d => "ins",
        0x6e | 0x6f => "outs",
        0xcd => "int n",
        0x9d => "popf",
        0x0f => match next? {
            0x01 => match code.get(i + 2).copied()? {
                0xf8 => "swapgs",
                0xf9 => "rdtscp",
                0xca => "clac",
                0xcb => "stac",
                0xc8 => "monitor",
                0xc9 => "mwait",
                0xc1 => "vmcall",
                0xc2 => "vmlaunch",
                0xc3 => "vmresume",
                0xc4 => "vmxoff",
                0xd0 => "xgetbv",
                0xd1 => "xsetbv",
                0xd8 => "vmrun",
                0xd9 => "vmmcall",
                0xda => "vmload",
                0xdb => "vmsave",
                0xdc => "stgi",
                0xdd => "clgi",
                0xde => "skinit",
                0xdf => "invlpga",
                0xee => "rdpkru",
                0xef => "wrpkru",
                // Other register forms are other instructions than their
                // ModRM reg field's memory form (0f 01 d1 is xsetbv, not
                // lgdt): only smsw and lmsw have register forms.
                m if m >= 0xc0 && !matches!((m >> 3) & 7, 4 | 6) => return None,
                m => match (m >> 3) & 7 {
                    0 => "sgdt",
                    1 => "sidt",
                    2 => "lgdt",
                    3 => "lidt",
                    4 => "smsw",
                    6 => "lmsw",
                    7 => "invlpg",
                    _ => return None,
                },
            },
            0x00 => match code.get(i + 2).map(|m| (m >> 3) & 7)? {
                0 => "sldt",
                1 => "str",
                2 => "lldt",
                3 => "ltr",
                _ => return None,
            },
            // AMD's `lock mov cr0` is its other encoding of `mov cr8`.
            0x20 | 0x22 => {
                let n = modrm_reg()? | if prefixes.lock { 8 } else { 0 };
                let names = if next == Some(0x20) {
                    &MOV_FROM_CR
                } else {
                    &MOV_TO_CR
                };
                names[n & 15]
            }
            0x21 => MOV_FROM_DR[modrm_reg()? & 15],
            0x23 => MOV_TO_DR[modrm_reg()? & 15],
            0x06 => "clts",
            0x08 => "invd",
            0x09 => "wbinvd",
            0x30 => "wrmsr",
            0x32 => "rdmsr",
            0x33 => "rdpmc",
            0x05 => "syscall",
            0x07 => "sysret",
            0x34 => "sysenter",
            0x35 => "sysexit",
            _ => return None,
        },
        _ => return None,
    })
}

/// If `code` starts with an `iret`, the size of each of the five slots of
/// the frame it pops (RIP, CS, RFLAGS, RSP, SS; in 64-bit mode it pops all
/// five at every size): 8 for `iretq` (REX.W), 2 with an operand-size
/// prefix, 4 otherwise.
pub fn iret_operand_bytes(code: &[u8]) -> Option<u8> {
    let prefixes = Prefixes::of(code);
    (code.get(prefixes.opcode_at) == Some(&0xcf)).then_some(if prefixes.rex_w() {
        8
    } else if prefixes.operand_size {
        2
    } else {
        4
    })
}

/// The frame an `iret` pops, each slot zero-extended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IretFrame {
    /// Where it returns to.
    pub rip: u64,
    /// The code segment it returns to: its low two bits are the ring.
    pub cs: u64,
    /// The flags it loads.
    pub rflags: u64,
    /// The stack pointer it loads.
    pub rsp: u64,
    /// The stack segment it loads.
    pub ss: u64,
}

/// What is wrong with the frame of an `iret` that raised `#GP` in the
/// guest kernel (ring 1), as the CPU checks it (SDM vol. 2, IRET, for
/// IA-32e mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IretProblem {
    /// RFLAGS.NT was set when it ran: a return from a nested task, which
    /// long mode refuses.
    NestedTask,
    /// Its CS is null.
    NullCode,
    /// Its CS is not a code segment the guest may return to at its
    /// privilege: the guest kernel's (`0x19`) or user code's (`0x33`).
    BadCode(u64),
    /// Its RIP is not canonical.
    NonCanonicalRip(u64),
    /// Its SS does not go with its CS: the guest kernel's data (`0x21`) or
    /// null for ring 1, user data (`0x2b`) for ring 3.
    BadStack(u64),
    /// The frame could not be read through the guest's tables.
    Unreadable,
    /// Nothing in the frame explains the fault.
    NoneFound,
}

impl core::fmt::Display for IretProblem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NestedTask => {
                f.write_str("RFLAGS.NT set (a task return, which long mode refuses)")
            }
            Self::NullCode => f.write_str("a null cs"),
            Self::BadCode(cs) => write!(f, "cs {cs:#x} is not a code selector the guest may use"),
            Self::NonCanonicalRip(rip) => write!(f, "rip {rip:#x} is not canonical"),
            Self::BadStack(ss) => write!(f, "ss {ss:#x} does not go with its cs"),
            Self::Unreadable => f.write_str("the frame is not readable"),
            Self::NoneFound => f.write_str("nothing wrong found in the frame"),
        }
    }
}

/// How the host takes an `iret` in ring 1 that raised `#GP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IretVerdict {
    /// Its frame names the switcher's ring-0 code segment, or a selector
    /// of privilege 0: an attempt to enter the host's ring.
    ToRing0 {
        /// The frame's CS.
        cs: u64,
    },
    /// Any other bad frame: the guest's own mistake.
    BadFrame(IretProblem),
}

/// Judges the frame of an `iret` that faulted in ring 1 with `rflags` the
/// flags it ran with: the first thing the CPU would have refused.
pub fn judge_iret(frame: &IretFrame, rflags: u64) -> IretVerdict {
    use switcher::selector::{
        GUEST_KERNEL_CODE, GUEST_KERNEL_DATA, GUEST_USER_CODE, GUEST_USER_DATA, SWITCHER_CODE,
        SWITCHER_DATA,
    };
    const NT: u64 = 1 << 14;
    let index = |selector: u64| selector & !7;
    let ring0 = [SWITCHER_CODE, SWITCHER_DATA].map(|s| index(u64::from(s)));
    let cs = frame.cs & 0xffff;
    if index(cs) != 0 && (cs & 3 == 0 || ring0.contains(&index(cs))) {
        return IretVerdict::ToRing0 { cs };
    }
    let problem = if rflags & NT != 0 {
        IretProblem::NestedTask
    } else if index(cs) == 0 {
        IretProblem::NullCode
    } else if cs != u64::from(GUEST_KERNEL_CODE) && cs != u64::from(GUEST_USER_CODE) {
        IretProblem::BadCode(cs)
    } else if GuestVirtAddr::try_new(frame.rip).is_err() {
        IretProblem::NonCanonicalRip(frame.rip)
    } else {
        let ss = frame.ss & 0xffff;
        let ss_ok = if cs & 3 == 3 {
            ss == u64::from(GUEST_USER_DATA)
        } else {
            // In 64-bit mode a return to ring 1 may load a null SS.
            ss == u64::from(GUEST_KERNEL_DATA) || ss & !3 == 0
        };
        if ss_ok {
            IretProblem::NoneFound
        } else {
            IretProblem::BadStack(ss)
        }
    };
    IretVerdict::BadFrame(problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_privileged_instructions_guests_try() {
        let cases: [(&[u8], &str); 17] = [
            (&[0xfa], "cli"),
            (&[0xf4], "hlt"),
            (&[0x0f, 0x22, 0xd8], "mov to cr3"),
            (&[0x0f, 0x22, 0xe0], "mov to cr4"),
            (&[0x0f, 0x01, 0x10], "lgdt"),
            (&[0x0f, 0x01, 0x00], "sgdt"),
            (&[0x0f, 0x30], "wrmsr"),
            (&[0xec], "in"),
            (&[0xe6, 0x80], "out"),
            (&[0x0f, 0x01, 0xf8], "swapgs"),
            (&[0x0f, 0x01, 0xd1], "xsetbv"),
            (&[0x0f, 0x01, 0xd8], "vmrun"),
            (&[0x0f, 0x01, 0xc1], "vmcall"),
            (&[0x0f, 0x01, 0xe0], "smsw"),
            (&[0x66, 0xef], "out"),
            (&[0x0f, 0x00, 0xc8], "str"),
            (&[0x41, 0x0f, 0x22, 0xd8], "mov to cr3"),
        ];
        for (code, name) in cases {
            assert_eq!(privileged(code), Some(name), "{code:x?}");
        }
    }

    #[test]
    fn ordinary_or_truncated_code_is_not_named() {
        assert_eq!(privileged(&[0x90]), None);
        assert_eq!(privileged(&[0x48, 0x89, 0xc3]), None);
        assert_eq!(privileged(&[]), None);
        assert_eq!(privileged(&[0x0f]), None);
        assert_eq!(privileged(&[0x0f, 0x01]), None);
        assert_eq!(privileged(&[0x66; 16]), None);
    }

    #[test]
    fn gate_faults_are_recognised_in_both_encodings() {
        assert!(is_gate_fault(0x40a, 0x81));
        assert!(is_gate_fault(0x812, 0x81));
        assert!(!is_gate_fault(0x408, 0x81));
        assert!(!is_gate_fault(0x40a, 0x80));
        assert!(!is_gate_fault(0, 0x81));
    }

    #[test]
    fn error_codes_and_direct_vectors() {
        assert!(
            may_be_direct(0x80)
                && !may_be_direct(guest_abi::hypercall::VECTOR)
                && !may_be_direct(14)
        );
        // The host's timer, the legacy PICs' range and the spurious vector.
        for host in [0x20, 0xe0, 0xe7, 0xe8, 0xef, 0xff] {
            assert!(!may_be_direct(host), "{host:#x}");
            assert!(has_rewritable_gate(host), "{host:#x} gets its stub back");
        }
        assert!(may_be_direct(0x21) && may_be_direct(0xdf) && may_be_direct(0xf0));
        assert!(!has_rewritable_gate(13) && !has_rewritable_gate(guest_abi::hypercall::VECTOR));
    }
    #[test]
    fn control_and_debug_registers_are_named_by_number_and_direction() {
        let cases: [(&[u8], &str); 12] = [
            // mov cr8, rax: REX.R extends ModRM reg 0 to 8.
            (&[0x44, 0x0f, 0x22, 0xc0], "mov to cr8"),
            // mov rax, cr8
            (&[0x44, 0x0f, 0x20, 0xc0], "mov from cr8"),
            // AMD's encoding of mov cr8, eax: lock mov cr0, eax.
            (&[0xf0, 0x0f, 0x22, 0xc0], "mov to cr8"),
            (&[0x0f, 0x20, 0xd8], "mov from cr3"),
            (&[0x0f, 0x20, 0xd0], "mov from cr2"),
            (&[0x0f, 0x22, 0xd0], "mov to cr2"),
            (&[0x0f, 0x22, 0xc0], "mov to cr0"),
            (&[0x0f, 0x20, 0xe0], "mov from cr4"),
            // mov dr7, rax and mov rax, dr6; REX.B (0x41) names another
            // general register, not another debug register.
            (&[0x0f, 0x23, 0xf8], "mov to dr7"),
            (&[0x0f, 0x21, 0xf0], "mov from dr6"),
            (&[0x41, 0x0f, 0x23, 0xc7], "mov to dr0"),
            (&[0x0f, 0x21, 0xc8], "mov from dr1"),
        ];
        for (code, name) in cases {
            assert_eq!(privileged(code), Some(name), "{code:x?}");
        }
        // Without its ModRM byte nothing says which register.
        assert_eq!(privileged(&[0x0f, 0x22]), None);
        assert_eq!(privileged(&[0x0f, 0x21]), None);
    }

    #[test]
    fn iret_is_not_privileged_and_its_frame_size_is_known() {
        assert_eq!(privileged(&[0x48, 0xcf]), None);
        assert_eq!(privileged(&[0xcf]), None);
        assert_eq!(iret_operand_bytes(&[0x48, 0xcf]), Some(8));
        assert_eq!(iret_operand_bytes(&[0xcf]), Some(4));
        assert_eq!(iret_operand_bytes(&[0x66, 0xcf]), Some(2));
        assert_eq!(iret_operand_bytes(&[0x90]), None);
        assert_eq!(iret_operand_bytes(&[]), None);
    }

    #[test]
    fn an_iret_frame_is_judged_as_the_cpu_checks_it() {
        use switcher::selector::{
            GUEST_KERNEL_CODE, GUEST_KERNEL_DATA, GUEST_USER_CODE, GUEST_USER_DATA,
        };
        let good = IretFrame {
            rip: 0xffff_8000_0010_0000,
            cs: u64::from(GUEST_KERNEL_CODE),
            rflags: 0x202,
            rsp: 0xffff_8000_0030_0000,
            ss: u64::from(GUEST_KERNEL_DATA),
        };
        let user = IretFrame {
            rip: 0x40_0000,
            cs: u64::from(GUEST_USER_CODE),
            ss: u64::from(GUEST_USER_DATA),
            ..good
        };
        let with = |change: fn(&mut IretFrame)| {
            let mut f = good;
            change(&mut f);
            f
        };
        let bad = IretVerdict::BadFrame;
        let cases = [
            (good, 0x202, bad(IretProblem::NoneFound)),
            (user, 0x202, bad(IretProblem::NoneFound)),
            (with(|f| f.ss = 0), 0x202, bad(IretProblem::NoneFound)),
            (
                with(|f| f.cs = 0x08),
                0x202,
                IretVerdict::ToRing0 { cs: 0x08 },
            ),
            (
                with(|f| f.cs = 0x18),
                0x202,
                IretVerdict::ToRing0 { cs: 0x18 },
            ),
            (
                with(|f| f.cs = 0x0b),
                0x202,
                IretVerdict::ToRing0 { cs: 0x0b },
            ),
            (good, 0x202 | (1 << 14), bad(IretProblem::NestedTask)),
            (with(|f| f.cs = 1), 0x202, bad(IretProblem::NullCode)),
            (
                with(|f| f.cs = 0x21),
                0x202,
                bad(IretProblem::BadCode(0x21)),
            ),
            (
                with(|f| f.cs = 0x1f),
                0x202,
                bad(IretProblem::BadCode(0x1f)),
            ),
            (
                with(|f| f.rip = 0x8000_0000_0000),
                0x202,
                bad(IretProblem::NonCanonicalRip(0x8000_0000_0000)),
            ),
            (
                with(|f| f.ss = 0x2b),
                0x202,
                bad(IretProblem::BadStack(0x2b)),
            ),
            (
                IretFrame { ss: 0x21, ..user },
                0x202,
                bad(IretProblem::BadStack(0x21)),
            ),
            (
                with(|f| f.ss = 0x10),
                0x202,
                bad(IretProblem::BadStack(0x10)),
            ),
        ];
        for (frame, rflags, verdict) in cases {
            assert_eq!(judge_iret(&frame, rflags), verdict, "{frame:x?}");
        }
    }
}
