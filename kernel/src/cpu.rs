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
        "cpu: nx={} apic={} 1g-pages={} umip={} smep={} smap={} invariant-tsc={} hypervisor={} vmx/svm={} (pcid={} xsave={}: not used)",
        f.nx,
        f.apic,
        f.huge_1g,
        f.umip,
        f.smep,
        f.smap,
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
/// where the host's tables are: the per-CPU state page of the switcher,
/// which ring 1 can read, holds the host's saved CR3, GDTR, IDTR and stack
/// pointer (see `docs/DESIGN.md`, "The privilege model"). Those are
/// addresses of nothing the guest has mapped. Not SMAP: the guest kernel
/// is supervisor too, and it must reach its own user pages without `stac`,
/// which ring 1 cannot execute.
pub fn harden(features: &Features) {
    use x86_64::registers::control::{Cr4, Cr4Flags};
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
