//! A guest's state beyond what the switcher carries: its x87, MMX and SSE
//! registers, and its data segment selectors.
//!
//! The switcher saves a guest's general registers, flags, stack and code
//! segment at every exit and loads them at every entry. Two more parts of
//! the CPU belong to the running guest, and the switcher leaves them alone:
//!
//! - the x87 FPU, MMX and SSE registers, with the x87 control and status
//!   words and MXCSR: the host never uses them (it is soft-float, see
//!   [`crate::cpu::enable_fpu_for_guests`]);
//! - the data segment selectors `ds`, `es`, `fs` and `gs`: a trap into
//!   ring 0 keeps them, and nothing in the host loads them after boot
//!   (64-bit code ignores `ds` and `es`, and the host uses no `fs` or `gs`
//!   base);
//! - the FS and GS bases, which a guest sets with `wrfsbase`/`wrgsbase`
//!   (where [`crate::cpu::enable_fs_gs_bases_for_guests`] allowed them) or
//!   its FS base with the `SetFsBase` hypercall: a `std` program's
//!   thread-local storage.
//!
//! So across a guest's exits they simply stay in the CPU, and a hypercall,
//! a page fault or a host tick that resumes the same guest costs nothing
//! here. They change hands at the edges of a guest's *turn* on a CPU
//! ([`crate::switcher::CpuSwitcher::begin_turn`] and `end_turn`): at the
//! end the CPU's state is saved into the guest's [`GuestContext`]
//! (`fxsave64`, and the four selectors and two bases read), and at the
//! start it is loaded from there (`fxrstor64`, the selectors and bases
//! loaded), unless the guest's last turn was the last turn on this very
//! CPU, when the CPU still holds it. The context is the guest's own (in its
//! run-loop slot, from its start to its end), not the CPU's: a guest that
//! moves to another CPU takes it along, and since it was saved when its
//! turn ended, nothing of it is left behind in the CPU it left. A guest
//! that never ran gets the clean state: `fninit`'s control word, MXCSR
//! 0x1f80 (every SIMD exception masked), every register zero and every x87
//! register empty, null selectors. So no guest sees anything of another,
//! and each finds its own state again however many guests ran in between,
//! on whichever CPU.
//!
//! The selectors a guest loads name descriptors of the guest GDT, which the
//! host's GDT does not have at the same places, so they are loaded with the
//! guest GDT in the GDTR for the four instructions (and the host's put
//! back): a segment register keeps the descriptor it loaded when the GDTR
//! changes. Every selector a guest can hold can be loaded in ring 0 (the
//! checks only get easier with a lower privilege level). Every CPU's guest
//! GDT has the same descriptors at the same places (only its TSS's address
//! differs), so a selector saved on one CPU means the same on another.
//!
//! Each guest's context is 528 bytes of the host's heap. `fxsave`, not
//! XSAVE: the machines here have crashed with XSAVE enabled, and without
//! it the guests have no AVX state to save.
//!
//! The cost, counted in instructions under QEMU's `-icount`: nothing on
//! an exit and entry of the same guest within a turn; a save (some 40
//! instructions) at the end of each turn, and a load (some 60, guest GDT
//! included) at the start of a turn that follows another guest's or
//! comes from another CPU; next to that, such a turn start also rewrites
//! the guest's 223 direct-trap gates in the IDT. `fxsave64` and
//! `fxrstor64` each count as one instruction there; on hardware they move
//! 512 bytes each, some tens of cycles apiece.

use alloc::boxed::Box;
use core::arch::asm;
use switcher::TablePointer;
use x86_64::instructions::tables::sgdt;

/// The bytes `fxsave64` writes and `fxrstor64` reads, 16-byte aligned as
/// both require.
#[repr(C, align(16))]
struct FxsaveArea([u8; FXSAVE_BYTES]);

const FXSAVE_BYTES: usize = 512;
/// Where the x87 control word is in the area (Intel SDM vol. 1, 10.5.1).
const FCW_OFFSET: usize = 0;
/// Where MXCSR is.
const MXCSR_OFFSET: usize = 24;
/// `fninit`'s control word: every x87 exception masked, 64-bit precision,
/// rounding to nearest.
const CLEAN_FCW: u16 = 0x037f;
/// MXCSR at reset: every SIMD exception masked, rounding to nearest.
const CLEAN_MXCSR: u32 = 0x1f80;

impl FxsaveArea {
    /// The clean state: the control words above, and zero everywhere else:
    /// status word 0, every x87 register empty (the abridged tag word is
    /// 0), every x87, MMX and SSE register zero.
    const CLEAN: Self = {
        let mut bytes = [0u8; FXSAVE_BYTES];
        let fcw = CLEAN_FCW.to_le_bytes();
        bytes[FCW_OFFSET] = fcw[0];
        bytes[FCW_OFFSET + 1] = fcw[1];
        let mxcsr = CLEAN_MXCSR.to_le_bytes();
        let mut i = 0;
        while i < mxcsr.len() {
            bytes[MXCSR_OFFSET + i] = mxcsr[i];
            i += 1;
        }
        Self(bytes)
    };
}

const _: () = assert!(size_of::<FxsaveArea>() == 512 && align_of::<FxsaveArea>() == 16);

/// The four data segment selectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DataSelectors {
    ds: u16,
    es: u16,
    fs: u16,
    gs: u16,
}

impl DataSelectors {
    /// All four null: what a new guest starts with.
    const NULL: Self = Self {
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
    };

    /// The selectors in the CPU now.
    fn read() -> Self {
        let (ds, es, fs, gs): (u16, u16, u16, u16);
        // SAFETY: reading a segment register changes nothing.
        unsafe {
            asm!(
                "mov {ds:x}, ds",
                "mov {es:x}, es",
                "mov {fs:x}, fs",
                "mov {gs:x}, gs",
                ds = out(reg) ds,
                es = out(reg) es,
                fs = out(reg) fs,
                gs = out(reg) gs,
                options(nomem, nostack, preserves_flags),
            );
        }
        Self { ds, es, fs, gs }
    }

    /// Loads them into the CPU. They are selectors of the guest GDT that
    /// `guest_gdt` points at (see the module docs); null ones need no GDT.
    fn load(self, guest_gdt: &TablePointer) {
        if self == Self::NULL {
            // SAFETY: a null selector may be loaded into a data segment
            // register in ring 0 whatever the GDT; the host does not use
            // them (see the module docs).
            unsafe {
                asm!(
                    "mov ds, {null:x}",
                    "mov es, {null:x}",
                    "mov fs, {null:x}",
                    "mov gs, {null:x}",
                    null = in(reg) 0u16,
                    options(nomem, nostack, preserves_flags),
                );
            }
            return;
        }
        let host_gdt = sgdt();
        // SAFETY: the selectors were read from the CPU while a guest ran
        // on the guest GDT, so each names a descriptor of it that the guest
        // could load, which ring 0 can load as well. `guest_gdt` is this
        // CPU's guest GDTR (its table in the switcher's slot, mapped in the
        // host's tables); it keeps the host's code and stack selectors at
        // the host's indices, so the running code and stack stay valid,
        // and the host's own GDTR is loaded back at once. Interrupts are
        // off (the switcher runs guests with them off), so no handler
        // runs in between.
        unsafe {
            asm!(
                "lgdt [{guest}]",
                "mov ds, {ds:x}",
                "mov es, {es:x}",
                "mov fs, {fs:x}",
                "mov gs, {gs:x}",
                "lgdt [{host}]",
                guest = in(reg) &raw const guest_gdt.limit,
                host = in(reg) &raw const host_gdt,
                ds = in(reg) self.ds,
                es = in(reg) self.es,
                fs = in(reg) self.fs,
                gs = in(reg) self.gs,
                options(readonly, nostack, preserves_flags),
            );
        }
    }
}

/// The integer loaded before every `fxrstor64` (see [`GuestContext::load`]).
static POINTER_RESET_OPERAND: i32 = 0;

/// One guest's state of the kinds above, while it is not in a CPU.
pub struct GuestContext {
    fpu: FxsaveArea,
    selectors: DataSelectors,
    bases: SegmentBases,
}

/// The FS and GS bases. Loaded after the selectors: loading a selector
/// sets (Intel) or may keep (AMD, null selector) a base, and the guest's
/// own base must win.
#[derive(Clone, Copy)]
struct SegmentBases {
    fs: u64,
    gs: u64,
}

impl SegmentBases {
    /// A new guest's: both 0, as the flat descriptors give.
    const ZERO: Self = Self { fs: 0, gs: 0 };

    fn read() -> Self {
        use x86_64::registers::model_specific::{FsBase, GsBase};
        use x86_64::registers::segmentation::{FS, GS, Segment64};
        if crate::cpu::fs_gs_bases_for_guests() {
            Self {
                fs: FS::read_base().as_u64(),
                gs: GS::read_base().as_u64(),
            }
        } else {
            Self {
                fs: FsBase::read().as_u64(),
                gs: GsBase::read().as_u64(),
            }
        }
    }

    fn load(self) {
        use x86_64::VirtAddr;
        use x86_64::registers::model_specific::{FsBase, GsBase};
        use x86_64::registers::segmentation::{FS, GS, Segment64};
        // Both were read from the CPU (so canonical) or are 0.
        let (fs, gs) = (
            VirtAddr::new_truncate(self.fs),
            VirtAddr::new_truncate(self.gs),
        );
        if crate::cpu::fs_gs_bases_for_guests() {
            // SAFETY: CR4.FSGSBASE is on; the host uses neither base.
            unsafe {
                FS::write_base(fs);
                GS::write_base(gs);
            }
        } else {
            FsBase::write(fs);
            GsBase::write(gs);
        }
    }
}

/// Sets the running guest's FS base (the `SetFsBase` hypercall): it lives
/// in the CPU while the guest runs, and [`GuestContexts::switch`] keeps it.
/// `base` is canonical (the hypercall checks).
pub fn set_fs_base(base: u64) {
    x86_64::registers::model_specific::FsBase::write(x86_64::VirtAddr::new_truncate(base));
}

impl GuestContext {
    /// The clean state (see the module docs), for a guest that never ran.
    pub fn clean() -> Box<Self> {
        Box::new(Self {
            fpu: FxsaveArea::CLEAN,
            selectors: DataSelectors::NULL,
            bases: SegmentBases::ZERO,
        })
    }

    /// Keeps what the CPU holds now (the state of the guest whose turn
    /// ends). Interrupts must be off.
    pub fn save(&mut self) {
        // SAFETY: the area is 512 writable bytes, 16-byte aligned (its
        // type says so); `fxsave64` writes only them, and never raises an
        // x87 exception a guest left pending.
        unsafe {
            asm!(
                "fxsave64 [{area}]",
                area = in(reg) self.fpu.0.as_mut_ptr(),
                options(nostack, preserves_flags),
            );
        }
        self.selectors = DataSelectors::read();
        self.bases = SegmentBases::read();
    }

    /// Puts it back into the CPU. `guest_gdt` is this CPU's guest GDTR.
    /// Interrupts must be off.
    pub fn load(&self, guest_gdt: &TablePointer) {
        // AMD CPUs (without the "FP error pointers" feature) restore the
        // x87 last-instruction and last-operand pointers and opcode only
        // when an x87 exception is pending, so they would keep the last
        // guest's. Clearing the exceptions and the tags, then loading an
        // integer, makes them the host's own fixed values first (what
        // Linux does for X86_BUG_FXSAVE_LEAK); on other CPUs this is
        // merely overwritten.
        //
        // SAFETY: `fnclex` and `emms` cannot fault (CR0.EM and TS are off),
        // and with the exceptions cleared and every register empty the
        // `fild` of a static integer cannot either. The area is
        // 512 readable bytes, 16-byte aligned, written only by `fxsave64`
        // or from `FxsaveArea::CLEAN`, so its MXCSR has no reserved bit
        // set and `fxrstor64` does not fault on it; it replaces every
        // x87, MMX and SSE register, control and status word.
        unsafe {
            asm!(
                "fnclex",
                "emms",
                "fild dword ptr [{zero}]",
                "fxrstor64 [{area}]",
                zero = in(reg) &raw const POINTER_RESET_OPERAND,
                area = in(reg) self.fpu.0.as_ptr(),
                options(readonly, nostack, preserves_flags),
            );
        }
        self.selectors.load(guest_gdt);
        self.bases.load();
    }
}
