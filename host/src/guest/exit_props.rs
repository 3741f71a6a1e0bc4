//! Property tests of a guest's exits with arbitrary registers: any
//! hypercall number with any arguments, any exception or interrupt vector
//! with any error code, CR2, RIP, CS, RSP and RFLAGS. The host must never
//! panic on them; each exit resumes, halts or ends the guest (never ends
//! it without a reason), an entry after a resume is always in ring 1 or 3
//! with the host's own segment selectors and IF on, and every shadow frame
//! comes back at teardown.
//!
//! A child of the guest tests, for their [`World`] (a guest loaded from a
//! small image, with fake memory, frames and host services).

use super::*;

/// Cases per property.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An argument or register: boundary values, addresses of the guest's own
/// memory (physical and through the start-up map), the switcher's slot,
/// and anything.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MIN as u64),
        Just(0x0000_7fff_ffff_ffff),
        Just(0xffff_8000_0000_0000),
        Just(0xffff_ff80_0000_0000),
        Just(0xffff_ffff_ffff_f000),
        Just(MEMORY),
        Just(SHARED_PAGE_GPA),
        Just(STACK_TOP),
        Just(BUFFER),
        Just(HANDLER),
        (0..MEMORY).prop_map(|a| a & !7),
        (0..MEMORY).prop_map(kva),
        any::<u64>(),
    ]
}

/// A code segment: the guest kernel's, guest user code's, or anything.
fn code_segment() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(KERNEL_CS),
        Just(USER_CS),
        any::<u16>().prop_map(u64::from)
    ]
}

/// One exit: a hypercall, or a trap of any vector.
#[derive(Clone, Debug)]
enum Exit {
    Hypercall {
        number: u64,
        args: [u64; 4],
    },
    Trap {
        vector: u8,
        error_code: u64,
        cr2: u64,
        rip: u64,
        cs: u64,
        rsp: u64,
        rflags: u64,
    },
}

fn exit() -> impl Strategy<Value = Exit> {
    prop_oneof![
        (0..16u64, [value(), value(), value(), value()])
            .prop_map(|(number, args)| Exit::Hypercall { number, args }),
        (
            any::<u8>(),
            value(),
            value(),
            prop_oneof![Just(TRAPPING_RIP), Just(ENTRY), value()],
            code_segment(),
            prop_oneof![Just(STACK_TOP), value()],
            any::<u64>(),
        )
            .prop_map(
                |(vector, error_code, cr2, rip, cs, rsp, rflags)| Exit::Trap {
                    vector,
                    error_code,
                    cr2,
                    rip,
                    cs,
                    rsp,
                    rflags,
                }
            ),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_exits_never_panic_and_every_frame_comes_back(
        handlers in any::<bool>(),
        exits in proptest::collection::vec(exit(), 1..32),
    ) {
        let mut w = World::new();
        if handlers {
            // Handlers for every exception and a kernel stack, so traps
            // are delivered rather than fatal.
            for vector in 0..32 {
                let _ = w.set_trap(vector, HANDLER, trap_flags::KEEP_INTERRUPTS);
            }
            let _ = w.call(Number::SetKernelStack, &[STACK_TOP]);
        }
        for exit in exits {
            let next = match exit {
                Exit::Hypercall { number, args } => w.hypercall(number, &args),
                Exit::Trap { vector, error_code, cr2, rip, cs, rsp, rflags } => {
                    let r = w.guest.regs_mut();
                    (r.vector, r.error_code) = (u64::from(vector), error_code);
                    (r.rip, r.cs, r.rsp, r.rflags) = (rip, cs, rsp, rflags);
                    w.exit(cr2)
                }
            };
            match next {
                Next::Ended => {
                    prop_assert!(w.guest.has_ended(), "Ended, but the guest is {:?}", w.guest.state());
                    break;
                }
                // A halted guest waits for the run loop's timer.
                Next::Halted => break,
                Next::Resume => prop_assert!(!w.guest.has_ended()),
            }
            if w.enter().is_none() {
                prop_assert!(w.guest.has_ended());
                break;
            }
            let r = w.guest.regs();
            let ring = r.cs & 3;
            prop_assert!(
                (ring == 1 && r.cs == KERNEL_CS && r.ss == KERNEL_SS)
                    || (ring == 3 && r.cs == USER_CS && r.ss == USER_SS),
                "entered with cs {:#x} ss {:#x}", r.cs, r.ss
            );
            prop_assert!(r.rflags & IF != 0 && r.rflags & (IOPL3 | NT | VM) == 0);
        }
        if let GuestState::Killed(reason) = w.guest.state() {
            let said = std::format!("{reason}");
            prop_assert!(!said.is_empty());
        }
        let World { guest, mut frames, .. } = w;
        let (_, stats) = guest.teardown(&mut frames);
        prop_assert_eq!(stats.frames_held, 0);
        prop_assert_eq!(frames.in_use(), 0, "shadow frames leaked");
    }

    /// A zero pool scribbled on (any counts, any pages) and faults of any
    /// kind on a zero-on-demand entry: the host maps a page of the guest's
    /// own, reflects the fault or kills with a reason, never panics, and
    /// every frame comes back.
    #[test]
    fn a_scribbled_zero_pool_never_panics(
        given in prop_oneof![Just(0u64), 0..80u64, any::<u64>()],
        taken in prop_oneof![Just(0u64), any::<u64>()],
        pages in proptest::collection::vec(value(), 1..4),
        faults in proptest::collection::vec((0..32u64, prop_oneof![Just(ZERO_VA), value()]), 1..8),
    ) {
        let mut w = World::new();
        let _ = w.set_trap(14, HANDLER, 0);
        let _ = w.call(Number::SetKernelStack, &[STACK_TOP]);
        zero_on_demand_page(&mut w);
        lend(&mut w, &pages);
        w.set_shared(shared::ZERO_POOL_GIVEN, given);
        w.set_shared(shared::ZERO_POOL_TAKEN, taken);
        for (error_code, address) in faults {
            w.in_user(USER_RIP, USER_RSP);
            match w.page_fault(address, error_code) {
                Next::Ended => {
                    let said = std::format!("{}", w.kill_reason());
                    prop_assert!(!said.is_empty());
                    break;
                }
                Next::Halted => break,
                Next::Resume => {}
            }
            if w.enter().is_none() {
                break;
            }
        }
        let World { guest, mut frames, .. } = w;
        let (_, stats) = guest.teardown(&mut frames);
        prop_assert_eq!(stats.frames_held, 0);
        prop_assert_eq!(frames.in_use(), 0, "shadow frames leaked");
    }
}
