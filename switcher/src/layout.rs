//! The switcher's pages, as Rust types: the single source of every offset
//! the assembly uses (it takes them as `const` operands, never literals).

use core::mem::{offset_of, size_of};

/// Size of a page.
pub const PAGE: u64 = 4096;

/// Bytes reserved for the switcher's code at the start of the slot.
pub const CODE_BYTES: u64 = 0x10000;

/// Offset in the slot of CPU 0's pages.
pub const PER_CPU_BASE: u64 = CODE_BYTES;

/// Bytes of slot per CPU: the register slot, the state and IDT pages, and
/// the host page. Only the host's tables map the host page: in a guest's
/// view of the slot its place is a gap that stays unmapped, so running off
/// the CPU's pages there faults.
pub const PER_CPU_BYTES: u64 = 4 * PAGE;

/// The most CPUs the slot has room for in its first 2 MiB (one page table).
pub const MAX_CPUS: usize = ((0x20_0000 - PER_CPU_BASE) / PER_CPU_BYTES) as usize;

/// Slot offset of CPU `cpu`'s register slot: the page mapped there is the
/// register page of the guest running on that CPU (each guest has its own;
/// the kernel swaps it in before the entry), or the CPU's own page when no
/// guest's is there.
pub const fn register_page_offset(cpu: usize) -> u64 {
    PER_CPU_BASE + cpu as u64 * PER_CPU_BYTES
}

/// Slot offset of CPU `cpu`'s state page.
pub const fn state_page_offset(cpu: usize) -> u64 {
    register_page_offset(cpu) + PAGE
}

/// Slot offset of CPU `cpu`'s IDT page.
pub const fn idt_page_offset(cpu: usize) -> u64 {
    register_page_offset(cpu) + 2 * PAGE
}

/// Slot offset of CPU `cpu`'s host page ([`HostPage`]): mapped in the
/// host's tables only, never in a guest's view of the slot.
pub const fn host_page_offset(cpu: usize) -> u64 {
    register_page_offset(cpu) + 3 * PAGE
}

/// A guest's registers as a trap leaves them at the top of the register
/// page: general registers (pushed by the switcher), vector and error code
/// (pushed by the stub; the error code by the CPU for some vectors), and
/// the CPU's interrupt frame.
pub type GuestRegs = guest_abi::frame::TrapFrame;

/// Where [`GuestRegs`] sits in the register page: at its very top, because
/// `RSP0` points at the page's end and the CPU pushes downwards.
pub const REGS_OFFSET: u64 = PAGE - size_of::<GuestRegs>() as u64;

/// Offset in [`GuestRegs`] of the vector, for the stub.
pub const REGS_VECTOR_OFFSET: u64 = offset_of!(GuestRegs, vector) as u64;

/// The operand of `lgdt`/`lidt`/`sgdt`/`sidt`: a 16-bit limit and a 64-bit
/// base. Padded in front so the base is naturally aligned; the instructions
/// use the address of `limit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TablePointer {
    padding: [u16; 3],
    /// Size of the table minus one.
    pub limit: u16,
    /// Virtual address of the table.
    pub base: u64,
}

impl TablePointer {
    /// Points at a table of `bytes` bytes at `base`.
    pub const fn new(base: u64, bytes: u64) -> Self {
        Self {
            padding: [0; 3],
            limit: (bytes - 1) as u16,
            base,
        }
    }
}

/// The 64-bit task state segment. In long mode the CPU only reads it: the
/// stacks for a privilege change (`rsp`) and the interrupt stack table.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    reserved0: u32,
    /// Stacks for entering rings 0, 1 and 2.
    pub rsp: [u64; 3],
    reserved1: u64,
    /// Interrupt stack table, slots 1-7 (index 0 = IST1).
    pub ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    /// Offset of the I/O permission bitmap: past the end of the TSS, so
    /// there is none and every port is denied to rings 1-3.
    pub iomap_base: u16,
}

/// Selectors of the guest GDT (index, with the requested privilege level).
pub mod selector {
    /// Ring-0 code: the switcher's stubs. Same index as the host's, so the
    /// switcher keeps running across `lgdt`.
    pub const SWITCHER_CODE: u16 = 0x08;
    /// Ring-0 data.
    pub const SWITCHER_DATA: u16 = 0x10;
    // The guest's four selectors are part of the guest ABI (guests put
    // them in their own `iretq` frames), so they are defined there.
    use guest_abi::boot::selector as guest;

    /// The guest kernel's code, ring 1.
    pub const GUEST_KERNEL_CODE: u16 = guest::KERNEL_CODE;
    /// The guest kernel's data and stack, ring 1.
    pub const GUEST_KERNEL_DATA: u16 = guest::KERNEL_DATA;
    /// Guest user data and stack, ring 3.
    pub const GUEST_USER_DATA: u16 = guest::USER_DATA;
    /// Guest user code, ring 3.
    pub const GUEST_USER_CODE: u16 = guest::USER_CODE;
    /// The guest TSS (two GDT slots).
    pub const GUEST_TSS: u16 = 0x38;
}

/// Entries in the guest GDT: null, six segments, the TSS's two slots.
pub const GDT_ENTRIES: usize = 9;

/// Descriptor type bit that `ltr` sets and the switcher clears.
pub const TSS_BUSY_BIT: u8 = 0x02;

/// Byte offset, inside a TSS descriptor, of its type byte.
pub const DESCRIPTOR_TYPE_BYTE: u64 = 5;

/// A flat segment descriptor: `code` (64-bit) or data, of privilege `dpl`,
/// with its accessed bit already set, so the CPU never writes it (the GDT is
/// read-only in the guest's tables).
pub const fn segment_descriptor(code: bool, dpl: u8) -> u64 {
    let access: u64 = if code { 0x9b } else { 0x93 } | ((dpl as u64 & 3) << 5);
    let flags: u64 = if code { 0xa } else { 0xc };
    0xffff | (access << 40) | (0xf << 48) | (flags << 52)
}

/// The two slots of an available 64-bit TSS descriptor.
pub const fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = size_of::<Tss>() as u64 - 1;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// The per-CPU state page: mapped read-only in every guest's view of the
/// slot, so a guest kernel (ring 1: paging cannot tell it from ring 0) can
/// read every word of it. It holds only what must be reachable while the
/// guest's CR3 is loaded, and why each word must be here is said beside it.
/// Everything the switcher needs only on the host's CR3 is in the
/// [`HostPage`], which no guest maps; the shadow root to enter is passed in
/// a register, never stored.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatePage {
    /// The guest GDT. The CPU reads its descriptors while the guest runs
    /// (every segment load, `iretq`, every trap's code and stack segment),
    /// so it must be mapped in the guest's tables. It holds only what the
    /// guest ABI already tells the guest (its selectors) and the TSS's slot
    /// address.
    pub guest_gdt: [u64; GDT_ENTRIES],
    /// The guest's task state. The CPU reads it at every trap, in the
    /// guest's address space: `rsp[0]` and `ist[0]`, the top of the
    /// register slot (a slot address, the same for every guest on this
    /// CPU), and `rsp[1]`, the guest kernel's own stack for direct traps.
    pub guest_tss: Tss,
    /// The host's CR3, saved at each entry. The exit path starts on the
    /// guest's CR3, where nothing of the host but the slot is mapped: this
    /// word is what takes it to the host's tables, so it must be readable
    /// before anything host-only is (the code pages are read-only and
    /// shared by every CPU, so a per-CPU value cannot live there either).
    /// Ring 1 can read it: the one accepted leak, see `docs/DESIGN.md`
    /// ("A known leak"): it is the physical address of a table no guest
    /// can map or load.
    pub host_cr3: u64,
}

/// Byte offsets into [`StatePage`], for the assembly.
#[allow(missing_docs)]
pub mod state {
    use super::StatePage;
    use core::mem::offset_of;

    pub const GUEST_GDT: u64 = offset_of!(StatePage, guest_gdt) as u64;
    pub const HOST_CR3: u64 = offset_of!(StatePage, host_cr3) as u64;
}

/// The per-CPU host page: what the switcher reads and writes only while the
/// host's CR3 is loaded (on the way in before it loads the guest's CR3, on
/// the way out after it loads the host's), so it lives in a page that only
/// the host's tables map. A guest cannot read it in any ring.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostPage {
    /// Points at the guest GDT in the state page (by its slot address), for
    /// the entry's `lgdt`.
    pub guest_gdtr: TablePointer,
    /// Points at the IDT page, for the entry's `lidt`.
    pub guest_idtr: TablePointer,
    /// Saved host stack pointer.
    pub host_rsp: u64,
    /// Saved host GDTR.
    pub host_gdtr: TablePointer,
    /// Saved host IDTR.
    pub host_idtr: TablePointer,
    /// Saved host task register.
    pub host_tr: u64,
}

/// Byte offsets into [`HostPage`], for the assembly.
#[allow(missing_docs)]
pub mod host_page {
    use super::{HostPage, TablePointer};
    use core::mem::offset_of;

    const LIMIT: u64 = offset_of!(TablePointer, limit) as u64;
    pub const GUEST_GDTR: u64 = offset_of!(HostPage, guest_gdtr) as u64 + LIMIT;
    pub const GUEST_IDTR: u64 = offset_of!(HostPage, guest_idtr) as u64 + LIMIT;
    pub const HOST_RSP: u64 = offset_of!(HostPage, host_rsp) as u64;
    pub const HOST_GDTR: u64 = offset_of!(HostPage, host_gdtr) as u64 + LIMIT;
    pub const HOST_GDT_BASE: u64 = HOST_GDTR + 2;
    pub const HOST_IDTR: u64 = offset_of!(HostPage, host_idtr) as u64 + LIMIT;
    pub const HOST_TR: u64 = offset_of!(HostPage, host_tr) as u64;
}

/// One 16-byte IDT gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    /// A present 64-bit interrupt gate (IF cleared on entry) to `handler`
    /// in code segment `selector`, usable by `int n` from rings up to
    /// `dpl`, on interrupt stack `ist` (0 = none).
    pub const fn interrupt(handler: u64, selector: u16, dpl: u8, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist,
            attributes: 0x8e | ((dpl & 3) << 5),
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    /// A present 64-bit trap gate (IF left as it is) to `handler`: the
    /// guest's direct traps, so that the host's timer still interrupts
    /// their handlers.
    pub const fn trap(handler: u64, selector: u16, dpl: u8) -> Self {
        let mut gate = Self::interrupt(handler, selector, dpl, 0);
        gate.attributes |= 1;
        gate
    }

    /// The handler address.
    pub const fn handler(&self) -> u64 {
        self.offset_low as u64
            | ((self.offset_mid as u64) << 16)
            | ((self.offset_high as u64) << 32)
    }
}

/// The per-CPU IDT page: 256 gates fill it exactly. The CPU reads it at
/// every trap while a guest runs, so it is mapped (read-only) in the
/// guest's view of the slot; its gates hold only slot addresses of the
/// switcher's stubs and the running guest's own direct-trap handlers.
pub type IdtPage = [Gate; 256];

/// Bytes between consecutive trap stubs in the code.
pub const STUB_STRIDE: u64 = 16;

const _: () = assert!(size_of::<StatePage>() as u64 <= PAGE);
const _: () = assert!(size_of::<HostPage>() as u64 <= PAGE);
const _: () = assert!(size_of::<IdtPage>() as u64 == PAGE);
const _: () = assert!(size_of::<Tss>() == 104);
const _: () = assert!(size_of::<GuestRegs>() == 22 * 8);
const _: () = assert!(host_page::GUEST_GDTR % 8 == 6 && host_page::HOST_GDTR % 8 == 6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_descriptors_match_the_architecture() {
        // The classic flat 64-bit ring-0 code and data descriptors, with the
        // accessed bit set.
        assert_eq!(segment_descriptor(true, 0), 0x00af_9b00_0000_ffff);
        assert_eq!(segment_descriptor(false, 0), 0x00cf_9300_0000_ffff);
        assert_eq!(segment_descriptor(true, 1), 0x00af_bb00_0000_ffff);
        assert_eq!(segment_descriptor(true, 3), 0x00af_fb00_0000_ffff);
        assert_eq!(segment_descriptor(false, 3), 0x00cf_f300_0000_ffff);
    }

    #[test]
    fn tss_descriptor_splits_base_and_limit() {
        let [low, high] = tss_descriptor(0xffff_ff80_1234_5678);
        assert_eq!(low & 0xffff, 103);
        assert_eq!((low >> 16) & 0xff_ffff, 0x34_5678);
        assert_eq!((low >> 56) & 0xff, 0x12);
        assert_eq!((low >> 40) & 0xff, 0x89);
        assert_eq!(high, 0xffff_ff80);
    }

    #[test]
    fn gates_keep_their_handler() {
        let g = Gate::interrupt(0xffff_ff80_0000_1230, 8, 1, 0);
        assert_eq!(g.handler(), 0xffff_ff80_0000_1230);
        assert_eq!(g.attributes, 0xae);
    }

    #[test]
    fn per_cpu_pages_fit_the_slot() {
        const { assert!(MAX_CPUS >= 64) };
        const { assert!(host_page_offset(MAX_CPUS - 1) + PAGE <= 0x20_0000) };
        // Each CPU's four pages are its own, the host page last.
        for cpu in [0, 1, MAX_CPUS - 1] {
            let pages = [
                register_page_offset(cpu),
                state_page_offset(cpu),
                idt_page_offset(cpu),
                host_page_offset(cpu),
            ];
            assert!(pages.windows(2).all(|w| w[1] == w[0] + PAGE));
            assert_eq!(host_page_offset(cpu) + PAGE, register_page_offset(cpu + 1));
        }
        assert_eq!(REGS_OFFSET + size_of::<GuestRegs>() as u64, PAGE);
    }
}
