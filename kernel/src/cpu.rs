//! What this CPU can do, asked of CPUID once at boot.
//!
//! The host adapts to the CPU instead of assuming: NX is used when present,
//! UMIP (which makes `sgdt`/`sidt` fault in a guest's ring 1) is turned on
//! when present. Two features are reported but deliberately never used:
//! XSAVE (enabling it has crashed the software hypervisor on the machines
//! this project is built on) and PCID (TCG ignores it and the KVM here
//! refuses it). The x87 FPU, MMX and SSE are the guests' alone
//! ([`enable_fpu_for_guests`]): the host is built soft-float
//! (`x86_64-unknown-none`: not one x87 or SSE instruction in it), and
//! `context.rs` switches their state between guests with
//! `fxsave`/`fxrstor`, never XSAVE.

use raw_cpuid::CpuId;

/// The features the host cares about.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// No-execute page protection.
    pub nx: bool,
    /// A local APIC.
    pub apic: bool,
    /// 1 GiB pages.
    pub huge_1g: bool,
    /// User-mode instruction prevention.
    pub umip: bool,
    /// Supervisor-mode execution/access prevention.
    pub smep: bool,
    /// Supervisor-mode access prevention.
    pub smap: bool,
    /// Process-context identifiers (reported, not used).
    pub pcid: bool,
    /// XSAVE (reported, not used).
    pub xsave: bool,
    /// The TSC runs at a constant rate.
    pub invariant_tsc: bool,
    /// Hardware virtualization (VT-x or AMD-V) visible to us.
    pub hw_virt: bool,
    /// We run under a hypervisor.
    pub hypervisor: bool,
    /// `rdtscp` (and so the TSC_AUX MSR it reads).
    pub rdtscp: bool,
    /// `rdpid` (which reads TSC_AUX too).
    pub rdpid: bool,
    /// `sysenter`/`sysexit` and their MSRs.
    pub sysenter: bool,
    /// `rdfsbase`/`wrfsbase`/`rdgsbase`/`wrgsbase` (once CR4.FSGSBASE is on).
    pub fsgsbase: bool,
}

/// Reads CPUID and prints one summary line.
pub fn detect() -> Features {
    let cpuid = CpuId::new();
    let basic = cpuid.get_feature_info();
    let ext = cpuid.get_extended_processor_and_feature_identifiers();
    let leaf7 = cpuid.get_extended_feature_info();
    let features = Features {
        nx: ext.as_ref().is_some_and(|e| e.has_execute_disable()),
        apic: basic.as_ref().is_some_and(|f| f.has_apic()),
        huge_1g: ext.as_ref().is_some_and(|e| e.has_1gib_pages()),
        umip: leaf7.as_ref().is_some_and(|f| f.has_umip()),
        smep: leaf7.as_ref().is_some_and(|f| f.has_smep()),
        smap: leaf7.as_ref().is_some_and(|f| f.has_smap()),
        pcid: basic.as_ref().is_some_and(|f| f.has_pcid()),
        xsave: basic.as_ref().is_some_and(|f| f.has_xsave()),
        invariant_tsc: cpuid
            .get_advanced_power_mgmt_info()
            .is_some_and(|p| p.has_invariant_tsc()),
        hw_virt: basic.as_ref().is_some_and(|f| f.has_vmx())
            || ext.as_ref().is_some_and(|e| e.has_svm()),
        hypervisor: basic.as_ref().is_some_and(|f| f.has_hypervisor()),
        rdtscp: ext.as_ref().is_some_and(|e| e.has_rdtscp()),
        rdpid: leaf7.as_ref().is_some_and(|f| f.has_rdpid()),
        sysenter: basic.as_ref().is_some_and(|f| f.has_sysenter_sysexit()),
        fsgsbase: leaf7.as_ref().is_some_and(|f| f.has_fsgsbase()),
    };
    let vendor = cpuid.get_vendor_info();
    let brand = cpuid.get_processor_brand_string();
    let (family, model) = basic
        .as_ref()
        .map_or((0, 0), |f| (f.family_id(), f.model_id()));
    crate::println!(
        "cpu: {} \"{}\" family {family:#x} model {model:#x}",
        vendor.as_ref().map_or("unknown", |v| v.as_str()),
        brand.as_ref().map_or("", |b| b.as_str().trim()),
    );
    let f = features;
    crate::println!(
        "cpu: nx={} apic={} 1g-pages={} umip={} smep={} smap={} fsgsbase={} invariant-tsc={} hypervisor={} vmx/svm={} (pcid={} xsave={}: not used)",
        f.nx,
        f.apic,
        f.huge_1g,
        f.umip,
        f.smep,
        f.smap,
        f.fsgsbase,
        f.invariant_tsc,
        f.hypervisor,
        f.hw_virt,
        f.pcid,
        f.xsave
    );
    features
}

/// The CPU's physical-address width (bits above it are reserved in page
/// table entries); 36 if CPUID does not say.
pub fn physical_address_bits() -> u8 {
    CpuId::new()
        .get_processor_capacity_feature_info()
        .map_or(36, |c| c.physical_address_bits())
}

/// Turns on the protections that cost nothing and keep guests in their
/// place: UMIP (`sgdt`, `sidt`, `sldt`, `str`, `smsw` fault outside ring 0,
/// so a guest kernel that tries them is caught and killed, naming the
/// instruction, rather than reading the descriptor-table registers) and
/// SMEP (ring 0 never runs code from a user page). UMIP does not hide
/// everything of the host: the per-CPU state page of the switcher, which
/// ring 1 can read, still holds the host's CR3, which the way back from a
/// guest needs before it can reach anything host-only (see
/// `docs/DESIGN.md`, "A known leak"); the host's GDTR, IDTR and stack
/// pointer live in a page only the host maps. The CR3 is the address of
/// nothing the guest has mapped. Not SMAP: the guest kernel
/// is supervisor too, and it must reach its own user pages without `stac`,
/// which ring 1 cannot execute.
///
/// First it puts every piece of CPU state a guest could reach and the
/// host does not use into a known state, instead of the one the loader
/// left (the boot code only adds to CR0, CR4 and EFER; a firmware, GRUB,
/// or a kernel that `kexec`s us may have set anything):
/// `clear_what_guests_could_reach`. `docs/DESIGN.md`, "CPU state a guest
/// can reach", has the whole list.
pub fn harden(features: &Features) {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    clear_what_guests_could_reach(features);
    let mut add = Cr4Flags::empty();
    if features.umip {
        add |= Cr4Flags::USER_MODE_INSTRUCTION_PREVENTION;
    }
    if features.smep {
        add |= Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION;
    }
    // SAFETY: CPUID says both exist; neither changes how the host's own
    // ring-0 code runs (it never executes user pages, and UMIP only
    // affects rings 1-3).
    unsafe { Cr4::update(|flags| flags.insert(add)) };
}

/// CR4 bits a loader may have left on that would hand guests something:
/// VME and PVI (`cli`/`sti` in ring 3 change a virtual flag instead of
/// faulting), TSD (`rdtsc` faulting: guests time with it), DE, PGE (the
/// host never uses global pages: every CR3 load must drop every
/// translation), PCE (`rdpmc` at any privilege: the host's performance
/// counters), FSGSBASE (`wrfsbase`/`wrgsbase` at any privilege; turned on
/// again by [`enable_fs_gs_bases_for_guests`] once the guest contexts switch
/// the bases), PCIDE, OSXSAVE (AVX and the
/// XSAVE family: YMM and other state `fxsave` does not switch), Key
/// Locker, SMAP (the guest kernel, supervisor too, must reach its user
/// pages without `stac`), PKE and PKS (a PKRU nobody switches), CET,
/// UINTR (bit 25) and LAM_SUP (bit 28).
const CR4_CLEARED: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 7)
    | (1 << 8)
    | (1 << 16)
    | (1 << 17)
    | (1 << 18)
    | (1 << 19)
    | (1 << 21)
    | (1 << 22)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 28);
/// CR0.AM: with it off, RFLAGS.AC does nothing in any ring (no `#AC` in
/// guest user code, whatever it sets).
const CR0_ALIGNMENT_MASK: u64 = 1 << 18;
/// EFER.SCE (`syscall` would enter ring 0 at LSTAR, from a guest), LMSLE
/// (segment limits in 64-bit mode, which the guests' flat 4 GiB segments
/// would trip over in the upper half) and FFXSR (AMD's fast `fxsave`/
/// `fxrstor`, which in ring 0 skip the XMM registers: the guests' SSE
/// state would not be switched).
const EFER_CLEARED: u64 = (1 << 0) | (1 << 13) | (1 << 14);

/// MSRs zeroed at set-up (addresses).
mod msr {
    /// `sysenter`'s code selector: 0 makes it `#GP` (or `#UD` on AMD in long
    /// mode) instead of entering ring 0 wherever a loader pointed it.
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    /// `syscall`'s selectors, target and flag mask (unused: EFER.SCE is off).
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const SFMASK: u32 = 0xc000_0084;
    /// FS and GS bases, and the one `swapgs` exchanges: guests can only
    /// load selectors, whose descriptors all have base 0, and on AMD a
    /// null selector keeps the old base, so it must be 0 to begin with.
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// What `rdtscp` and `rdpid` give at any privilege.
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// Puts the CPU state guests can reach, or that decides what they can
/// reach, into a known state (see [`CR4_CLEARED`], [`CR0_ALIGNMENT_MASK`],
/// [`EFER_CLEARED`], [`msr`]), and clears the debug registers so that no
/// breakpoint a loader left fires in a guest or in the host.
fn clear_what_guests_could_reach(features: &Features) {
    use x86_64::registers::control::{Cr0, Cr4};
    use x86_64::registers::model_specific::{Efer, Msr};
    let zeroed = [
        msr::STAR,
        msr::LSTAR,
        msr::SFMASK,
        msr::FS_BASE,
        msr::GS_BASE,
        msr::KERNEL_GS_BASE,
    ]
    .into_iter()
    .chain(
        features
            .sysenter
            .then_some([msr::SYSENTER_CS, msr::SYSENTER_ESP, msr::SYSENTER_EIP])
            .into_iter()
            .flatten(),
    )
    .chain((features.rdtscp || features.rdpid).then_some(msr::TSC_AUX));
    // SAFETY: the host uses none of this state. Clearing these CR4 bits is
    // always allowed (PCIDE only with CR3's PCID 0, which the host's
    // tables always have; LA57 and VMXE, which cannot change here, are
    // left alone); CR0.AM and the EFER bits change nothing for ring 0;
    // every MSR written exists on every x86-64 CPU or on one whose CPUID
    // says so (`sysenter`, TSC_AUX), and 0 is a valid value for each; the
    // host has no FS or GS base, and no `syscall` or `sysenter` entry.
    // DR7 = 0x400 is its reset value (no breakpoint enabled), DR6's
    // likewise.
    unsafe {
        // Only when a bit is set: a CR4 write flushes the TLB for nothing.
        let cr4 = Cr4::read_raw();
        if cr4 & CR4_CLEARED != 0 {
            Cr4::write_raw(cr4 & !CR4_CLEARED);
        }
        Cr0::write_raw(Cr0::read_raw() & !CR0_ALIGNMENT_MASK);
        Efer::write_raw(Efer::read_raw() & !EFER_CLEARED);
        for address in zeroed {
            Msr::new(address).write(0);
        }
        core::arch::asm!(
            "mov dr7, {dr7}",
            "mov dr6, {dr6}",
            dr7 = in(reg) 0x400u64,
            dr6 = in(reg) 0xffff_0ff0u64,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// Lets guests use the x87 FPU, MMX and SSE, which every x86-64 CPU has.
/// The host itself never does (it is soft-float), so their registers hold
/// the running guest's state at all times, and `context.rs` switches them
/// only when another guest takes the CPU. So: CR0.EM off and CR0.MP on (the
/// instructions run, as on a CPU with its FPU); CR0.TS off (no lazy
/// switching on `#NM`, which would cost a trap and a host round trip per
/// guest slice); CR0.NE on (an x87 error is a `#MF` in the guest that made
/// it, reflected like any exception, not an external interrupt on the
/// masked legacy PIC); CR4.OSFXSR (SSE instructions run, and
/// `fxsave`/`fxrstor` carry the SSE registers and MXCSR) and CR4.OSXMMEXCPT
/// (an unmasked SIMD exception is a `#XM`, not a `#UD`). Not
/// CR4.OSXSAVE: see the module docs.
pub fn enable_fpu_for_guests() {
    use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
    // SAFETY: the host has no x87, MMX or SSE instruction, so these bits
    // change nothing for it; every x86-64 CPU has FXSR and SSE, which the
    // two CR4 bits announce the host handles (it does, in context.rs).
    unsafe {
        Cr0::update(|flags| {
            flags.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            flags.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
        });
        Cr4::update(|flags| {
            flags.insert(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE);
        });
    }
}

/// Whether CR4.FSGSBASE is on (see [`enable_fs_gs_bases_for_guests`]).
static FSGSBASE_ON: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Lets guests read and write their own FS and GS bases with `rdfsbase`,
/// `wrfsbase`, `rdgsbase` and `wrgsbase` (CR4.FSGSBASE), where the CPU has
/// them. A `std` program keeps its thread-local storage at FS, and its
/// runtime switches FS at every thread switch: with this, that costs no
/// exit (without it, each is a `SetFsBase` hypercall). It hands guests
/// nothing of the host's: the host uses no FS or GS base (no thread-locals,
/// no per-CPU data through GS, no `swapgs`: ring 0 is entered only from the
/// switcher, which reads nothing through them), and `context.rs` keeps each
/// guest's two bases with its FPU state, so a guest sees only its own. A
/// host that one day keeps per-CPU data at GS must `swapgs` on the way in
/// and out of every guest, as Linux does, because the guest's GS base is
/// the guest's to set.
///
/// Returns whether it is on.
pub fn enable_fs_gs_bases_for_guests(features: &Features) -> bool {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    if features.fsgsbase {
        // SAFETY: CPUID says the instructions exist; the bit only makes them
        // legal, and the host never uses FS or GS (see above).
        unsafe { Cr4::update(|flags| flags.insert(Cr4Flags::FSGSBASE)) };
        FSGSBASE_ON.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    features.fsgsbase
}

/// Whether guests have `rdfsbase` and friends.
pub fn fs_gs_bases_for_guests() -> bool {
    FSGSBASE_ON.load(core::sync::atomic::Ordering::Relaxed)
}
