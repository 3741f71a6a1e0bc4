//! Naming what a guest did: exception names, and the privileged
//! instruction behind a general-protection fault in ring 1.
//!
//! In ring 1 every instruction that would touch the real machine (`cli`,
//! `hlt`, `mov` to a control register, `lgdt`, `wrmsr`, `in`/`out`,
//! `swapgs`, ...) raises `#GP`. A paravirtual guest kernel never executes
//! them, so one that does is broken or hostile, and the host ends it with
//! the instruction's name. Only the opcode is decoded: enough to name it,
//! never to emulate it.
//!
//! Also here, the vectors' rules: which a guest may take as direct traps
//! (gates in the CPU's own IDT), which never (the exceptions, the hypercall
//! gate, the host's own interrupt vectors).

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

/// Names the privileged instruction at the start of `code`, if it is one.
pub fn privileged(code: &[u8]) -> Option<&'static str> {
    // Skip legacy prefixes and one REX prefix; keep REX.W for iretq.
    let mut i = 0;
    while code.get(i).is_some_and(|b| {
        matches!(
            b,
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x2e | 0x3e | 0x26 | 0x36 | 0x64 | 0x65
        )
    }) {
        i += 1;
    }
    let rex_w = code.get(i).is_some_and(|b| b & 0xf8 == 0x48);
    if code.get(i).is_some_and(|b| b & 0xf0 == 0x40) {
        i += 1;
    }
    let op = *code.get(i)?;
    let next = code.get(i + 1).copied();
    Some(match op {
        0xfa => "cli",
        0xfb => "sti",
        0xf4 => "hlt",
        0xcf if rex_w => "iretq",
        0xcf => "iret",
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
            0x20 => "mov from cr",
            0x22 => match code.get(i + 2).map(|m| (m >> 3) & 7)? {
                3 => "mov to cr3",
                n => [
                    "mov to cr0",
                    "mov to cr1",
                    "mov to cr2",
                    "mov to cr3",
                    "mov to cr4",
                    "mov to cr5",
                    "mov to cr6",
                    "mov to cr7",
                ][usize::from(n)],
            },
            0x21 | 0x23 => "mov to/from debug register",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_privileged_instructions_guests_try() {
        let cases: [(&[u8], &str); 14] = [
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
            (&[0x48, 0xcf], "iretq"),
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
}
