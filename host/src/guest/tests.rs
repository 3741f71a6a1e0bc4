//! A guest's life, exit by exit.
//!
//! Every test here starts the way the kernel does: a guest image (a tiny
//! ELF file written byte by byte below, [`Image`]) is loaded into a fake
//! guest memory with [`load::load`], a [`Guest`] is made from it, and then
//! the test plays the switcher: it sets [`Guest::regs`] as a trap would
//! have left them and calls [`Guest::handle_exit`] or
//! [`Guest::prepare_entry`], and checks what the host decided. Guest memory
//! is read back through the start-up map (guest-virtual
//! `KERNEL_OFFSET + p` is guest-physical `p`), so a trap frame is checked
//! where the guest itself would find it.
//!
//! The tests follow the module's story: loading; the hypercalls; the
//! exceptions and their delivery; `#GP` and the privileged instructions;
//! page faults; virtual interrupts and the time budget; what every entry
//! does to the registers; teardown.

use super::load::{self, LoadError, LoadedImage};
use super::*;
use crate::paging::testing::{FakeFrames, FakeGuestMemory};
use crate::paging::{PteFlags, ShadowEntry};
use elf::abi::{EM_386, EM_X86_64, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};
use guest_abi::ABI_VERSION;
use guest_abi::boot::{
    BOOT_PARAMS_GPA, BootParams, IMAGE_MIN_GPA, KERNEL_OFFSET, MAGIC, NOTE_NAME,
    NOTE_TYPE_ABI_VERSION, STARTUP_TABLES_GPA,
};
use guest_abi::hypercall::{
    CONSOLE_WRITE_MAX, Error, Number, RED_ZONE_BYTES, TIMER_VECTOR, trap_flags,
};
use guest_abi::pte::{MmuOp, ring};
use guest_abi::shared as shared_abi;
use proptest::prelude::*;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

// ---------------------------------------------------------------------------
// The guest's world: its memory map, its image, a fake host.
// ---------------------------------------------------------------------------

/// Guest memory: 4 MiB, two 2 MiB pages of start-up map.
const MEMORY: u64 = 4 << 20;
/// The guest's name, as the host prints it.
const NAME: &str = "hello/world";
/// The command line it gets.
const CMDLINE: &str = "verbose=1 answer=42";
/// Where the image loads.
const IMAGE_GPA: u64 = IMAGE_MIN_GPA;
/// The image's size in memory (code, then zeroed data).
const IMAGE_MEMSZ: u64 = 0x3000;
/// Bytes of code the image carries in its file.
const CODE_BYTES: usize = 0x80;
/// The entry point: the image's first byte.
const ENTRY: u64 = kva(IMAGE_GPA);
/// Where the guest's exception handlers are.
const HANDLER: u64 = kva(IMAGE_GPA + 0x100);
/// Where its timer interrupt handler is.
const TIMER_HANDLER: u64 = kva(IMAGE_GPA + 0x200);
/// Where an instruction that traps sits.
const TRAPPING_RIP: u64 = kva(IMAGE_GPA + 0x800);
/// The guest kernel's stack top (inside the start-up map).
const STACK_TOP: u64 = kva(0x30_0000);
/// Where console text is put.
const BUFFER: u64 = kva(0x20_0000);
/// Guest user code and its stack (the lower half).
const USER_RIP: u64 = 0x40_1234;
const USER_RSP: u64 = 0x7fff_f000;
/// A lower-half address nothing maps.
const UNMAPPED: u64 = 0x1000;
/// A kernel-half address past the start-up map (memory ends at 4 MiB).
const UNMAPPED_KERNEL: u64 = kva(MEMORY + (2 << 20));
/// An address in the switcher's slot (CPU 0's register page).
const SWITCHER_ADDRESS: u64 = 0xffff_ff80_0001_1000;
/// The switcher table the test "kernel" installs.
const SWITCHER_TABLE: HostPhysAddr = HostPhysAddr::new(0xdead_0000);
/// The fake clock at the start.
const BOOT_TIME: u64 = 1_000_000;
/// The test guest's network address.
const GUEST_MAC: [u8; 6] = [0x02, 0x72, 0x67, 0, 0, 1];
/// What the fake host offers every guest: FSGSBASE, and a clock.
const PLATFORM: load::Platform = load::Platform {
    features: guest_abi::boot::feature::FSGSBASE,
    clock_tsc_base: 0x1234_5678,
    clock_ns_per_cycle: 3 << 31,
};

/// RFLAGS bits by name.
const CF: u64 = 1 << 0;
const TF: u64 = 1 << 8;
const IF: u64 = RFLAGS_IF;
const IOPL3: u64 = 3 << 12;
const NT: u64 = 1 << 14;
const RF: u64 = 1 << 16;
const VM: u64 = 1 << 17;

/// The start-up map's virtual address for guest-physical `gpa`.
const fn kva(gpa: u64) -> u64 {
    KERNEL_OFFSET.wrapping_add(gpa)
}

const KERNEL_CS: u64 = selector::GUEST_KERNEL_CODE as u64;
const KERNEL_SS: u64 = selector::GUEST_KERNEL_DATA as u64;
const USER_CS: u64 = selector::GUEST_USER_CODE as u64;
const USER_SS: u64 = selector::GUEST_USER_DATA as u64;

/// One program header and the bytes it carries in the file.
#[derive(Clone, Debug)]
struct Segment {
    kind: u32,
    flags: u32,
    vaddr: u64,
    paddr: u64,
    memsz: u64,
    align: u64,
    data: Vec<u8>,
}

impl Segment {
    /// A loadable segment at `paddr`, at its start-up map address.
    fn load(paddr: u64, flags: u32, data: Vec<u8>, memsz: u64) -> Self {
        Self {
            kind: PT_LOAD,
            flags,
            vaddr: kva(paddr),
            paddr,
            memsz,
            align: 0x1000,
            data,
        }
    }

    /// A note segment holding one note.
    fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Self {
        let mut data = Vec::new();
        for word in [name.len() as u32, desc.len() as u32, n_type] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        for part in [name, desc] {
            data.extend_from_slice(part);
            data.resize(data.len().next_multiple_of(4), 0);
        }
        Self {
            kind: PT_NOTE,
            flags: PF_R,
            vaddr: 0,
            paddr: 0,
            memsz: data.len() as u64,
            align: 4,
            data,
        }
    }

    /// The rguest ABI note, claiming `version`.
    fn abi_note(version: u32) -> Self {
        Self::note(NOTE_NAME, NOTE_TYPE_ABI_VERSION, &version.to_le_bytes())
    }
}

/// The code the good image carries: a recognisable pattern.
fn code() -> Vec<u8> {
    (0..CODE_BYTES).map(|i| (i as u8) ^ 0x5a).collect()
}

/// A guest image, before it is written out as an ELF file.
#[derive(Clone, Debug)]
struct Image {
    /// `ET_EXEC` or `ET_DYN`.
    elf_type: u16,
    machine: u16,
    entry: u64,
    segments: Vec<Segment>,
}

impl Image {
    /// A valid image: the ABI note, then one executable segment at 1 MiB
    /// whose tail is zero-filled data, entered at its first byte.
    fn good() -> Self {
        Self {
            elf_type: elf::abi::ET_EXEC,
            machine: EM_X86_64,
            entry: ENTRY,
            segments: vec![
                Segment::abi_note(ABI_VERSION),
                Segment::load(IMAGE_GPA, PF_R | PF_X, code(), IMAGE_MEMSZ),
            ],
        }
    }

    /// The good image with its loadable segment changed by `change`.
    fn with_code_segment(change: impl FnOnce(&mut Segment)) -> Self {
        let mut image = Self::good();
        change(&mut image.segments[1]);
        image
    }

    /// The ELF file: header, program headers, then each segment's bytes in
    /// order (so the file's last byte belongs to the last segment).
    fn bytes(&self) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        let mut offsets = Vec::new();
        let mut at = EHDR + PHDR * self.segments.len();
        for s in &self.segments {
            at = at.next_multiple_of(8);
            offsets.push(at as u64);
            at += s.data.len();
        }
        let mut out = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        out.resize(16, 0);
        out.extend_from_slice(&self.elf_type.to_le_bytes());
        out.extend_from_slice(&self.machine.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&self.entry.to_le_bytes());
        out.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [EHDR, PHDR, self.segments.len(), 64, 0, 0] {
            out.extend_from_slice(&(half as u16).to_le_bytes());
        }
        assert_eq!(out.len(), EHDR);
        for (s, &offset) in self.segments.iter().zip(&offsets) {
            out.extend_from_slice(&s.kind.to_le_bytes());
            out.extend_from_slice(&s.flags.to_le_bytes());
            for word in [
                offset,
                s.vaddr,
                s.paddr,
                s.data.len() as u64,
                s.memsz,
                s.align,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        for (s, &offset) in self.segments.iter().zip(&offsets) {
            out.resize(offset as usize, 0);
            out.extend_from_slice(&s.data);
        }
        out
    }
}

/// Loads `image` into a fresh memory of `size` bytes.
fn load_into(size: u64, image: &[u8]) -> (FakeGuestMemory, Result<LoadedImage, LoadError>) {
    let mut mem = FakeGuestMemory::new(size);
    let result = load::load(&mut mem, image, CMDLINE, &PLATFORM);
    (mem, result)
}

/// What the guest could get from the host: a clock the test sets, and a
/// console that keeps every line.
struct FakeHost {
    now: u64,
    lines: Vec<(String, Vec<u8>)>,
    /// The last FS base a guest set.
    fs_base: Option<u64>,
}

impl HostServices for FakeHost {
    fn now_ns(&self) -> u64 {
        self.now
    }

    fn console_line(&mut self, guest: &str, line: &[u8]) {
        self.lines.push((guest.to_string(), line.to_vec()));
    }

    fn set_fs_base(&mut self, base: u64) {
        self.fs_base = Some(base);
    }
}

impl FakeHost {
    /// The lines printed, as text.
    fn printed(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|(name, line)| std::format!("{name}: {}", String::from_utf8_lossy(line)))
            .collect()
    }
}

/// A guest made from the good image, with its host and frames.
struct World {
    guest: Guest<FakeGuestMemory>,
    frames: FakeFrames,
    host: FakeHost,
}

impl World {
    /// A fresh guest with a budget no test reaches.
    fn new() -> Self {
        Self::with_budget(1_000_000_000)
    }

    /// A fresh guest that may use `budget_ns` of CPU time.
    fn with_budget(budget_ns: u64) -> Self {
        Self::with_vcpus(budget_ns, 1)
    }

    /// A fresh guest that may use `budget_ns` of CPU time and start up to
    /// `vcpus` vCPUs.
    fn with_vcpus(budget_ns: u64, vcpus: usize) -> Self {
        let (mem, loaded) = load_into(MEMORY, &Image::good().bytes());
        let mut frames = FakeFrames::new(1_000);
        let guest = Guest::new(
            NAME.to_string(),
            mem,
            loaded.unwrap(),
            PagingConfig::default(),
            budget_ns,
            standard_devices(GUEST_MAC, [7; 32]),
            vcpus,
            &mut frames,
        )
        .unwrap();
        Self {
            guest,
            frames,
            host: FakeHost {
                now: BOOT_TIME,
                lines: Vec::new(),
                fs_base: None,
            },
        }
    }

    /// The exit in `*self.guest.regs()` happened, with CR2 = `cr2`.
    fn exit(&mut self, cr2: u64) -> Next {
        let exit = Exit::of(self.guest.regs(), cr2);
        self.guest
            .handle_exit(exit, &mut self.frames, &mut self.host)
    }

    /// The guest kernel executes `int 0x81` with `number` and `args`.
    fn hypercall(&mut self, number: u64, args: &[u64]) -> Next {
        let mut a = [0; 4];
        a[..args.len()].copy_from_slice(args);
        let r = self.guest.regs_mut();
        (r.vector, r.error_code, r.rax) = (u64::from(guest_abi::hypercall::VECTOR), 0, number);
        (r.rdi, r.rsi, r.rdx, r.r10) = (a[0], a[1], a[2], a[3]);
        self.exit(0)
    }

    /// A hypercall that returns to the guest; gives `rax`.
    fn call(&mut self, number: Number, args: &[u64]) -> u64 {
        assert_eq!(
            self.hypercall(number as u64, args),
            Next::Resume,
            "{number:?}"
        );
        self.guest.regs().rax
    }

    /// Registers `handler` for `vector`; gives the result.
    fn set_trap(&mut self, vector: u64, handler: u64, flags: u64) -> u64 {
        self.call(Number::SetTrap, &[vector, handler, flags])
    }

    /// The CPU was in the guest kernel at `rip` with stack `rsp`.
    fn in_kernel(&mut self, rip: u64, rsp: u64) {
        let r = self.guest.regs_mut();
        (r.rip, r.cs, r.rsp, r.ss, r.rflags) = (rip, KERNEL_CS, rsp, KERNEL_SS, IF | 2);
    }

    /// The CPU was in guest user code at `rip` with stack `rsp`.
    fn in_user(&mut self, rip: u64, rsp: u64) {
        let r = self.guest.regs_mut();
        (r.rip, r.cs, r.rsp, r.ss, r.rflags) = (rip, USER_CS, rsp, USER_SS, IF | 2);
    }

    /// Exception `vector` (with `error_code`, 0 if none) where the
    /// registers say.
    fn trap(&mut self, vector: u8, error_code: u64) -> Next {
        {
            let r = self.guest.regs_mut();
            (r.vector, r.error_code) = (u64::from(vector), error_code);
        }
        self.exit(0)
    }

    /// A page fault at `address` with `error_code`.
    fn page_fault(&mut self, address: u64, error_code: u64) -> Next {
        {
            let r = self.guest.regs_mut();
            (r.vector, r.error_code) = (14, error_code);
        }
        self.exit(address)
    }

    /// Everything before an entry, at the fake clock's time.
    fn enter(&mut self) -> Option<HostPhysAddr> {
        self.guest
            .prepare_entry(&mut self.frames, SWITCHER_TABLE, self.host.now)
    }

    /// A word of the shared page.
    fn shared(&self, offset: u64) -> u64 {
        self.guest.memory.get(SHARED_PAGE_GPA + offset)
    }

    fn set_shared(&mut self, offset: u64, value: u64) {
        self.guest.memory.set(SHARED_PAGE_GPA + offset, value);
    }

    /// `n` words of guest memory at start-up-map address `at`.
    fn words(&self, at: u64, n: u64) -> Vec<u64> {
        (0..n)
            .map(|i| self.guest.memory.get(at - KERNEL_OFFSET + 8 * i))
            .collect()
    }

    /// Writes `bytes` at start-up-map address `at`.
    fn poke(&mut self, at: u64, bytes: &[u8]) {
        let gpa = GuestPhysAddr::new(at - KERNEL_OFFSET);
        self.guest.memory.write_bytes(gpa, bytes).unwrap();
    }

    /// Why the guest was killed (failing the test if it was not).
    fn kill_reason(&self) -> &KillReason {
        match self.guest.state() {
            GuestState::Killed(reason) => reason,
            other => panic!("the guest was not killed: {other:?}"),
        }
    }

    /// The shadow leaf for `vaddr` in the running root.
    fn shadow_leaf(&self, vaddr: u64) -> ShadowEntry {
        ShadowPaging::shadow_leaf(
            &self.frames,
            self.guest.paging.current_shadow_root(),
            GuestVirtAddr::try_new(vaddr).unwrap(),
        )
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

#[test]
fn a_good_image_loads_with_its_entry_and_segment() {
    let mut mem = FakeGuestMemory::new(MEMORY);
    // Junk where the zero-filled part of the segment goes.
    mem.set(IMAGE_GPA + 0x1008, 0xdead_beef);
    let loaded = load::load(&mut mem, &Image::good().bytes(), CMDLINE, &PLATFORM).unwrap();
    assert_eq!(
        loaded,
        LoadedImage {
            entry: ENTRY,
            image_end: IMAGE_GPA + IMAGE_MEMSZ,
            boot_params: kva(BOOT_PARAMS_GPA),
            root: STARTUP_TABLES_GPA,
        }
    );
    let mut loaded_code = vec![0; CODE_BYTES];
    mem.read_bytes(GuestPhysAddr::new(IMAGE_GPA), &mut loaded_code)
        .unwrap();
    assert_eq!(loaded_code, code());
    assert_eq!(mem.get(IMAGE_GPA + 0x1008), 0, "the data part is zeroed");
}

// ---------------------------------------------------------------------------
// Position-independent images (a Rust `std` program for the Hermit target).
// ---------------------------------------------------------------------------

/// Where, in a PIE's one loadable segment, its relocation table is.
const PIE_RELA: u64 = 0x100;
/// A word the test relocations patch, and the pointer its addend makes.
const PIE_SLOT: u64 = 0x1000;
const PIE_ADDEND: i64 = 0x40;
/// The guest-virtual address a PIE's link-time 0 lands at.
const PIE_BIAS: u64 = kva(IMAGE_MIN_GPA);
/// `R_X86_64_RELATIVE`.
const RELATIVE: u32 = 8;

/// A static PIE: the ABI note, one executable and writable segment linked
/// at 0 holding code, then `relocations` (offset, type, addend) at
/// [`PIE_RELA`]; a dynamic segment naming them, with `more_dynamic` tags;
/// and a TLS template of `tls_memsz` bytes.
fn pie(relocations: &[(u64, u32, i64)], more_dynamic: &[(i64, u64)], tls_memsz: u64) -> Image {
    let mut data = code();
    data.resize(PIE_RELA as usize, 0);
    for &(offset, kind, addend) in relocations {
        data.extend_from_slice(&offset.to_le_bytes());
        data.extend_from_slice(&u64::from(kind).to_le_bytes());
        data.extend_from_slice(&addend.to_le_bytes());
    }
    let mut dynamic = Vec::new();
    let rela_bytes = 24 * relocations.len() as u64;
    let tags = [(7, PIE_RELA), (8, rela_bytes), (9, 24)];
    for &(tag, value) in tags.iter().chain(more_dynamic).chain(&[(0, 0)]) {
        dynamic.extend_from_slice(&tag.to_le_bytes());
        dynamic.extend_from_slice(&value.to_le_bytes());
    }
    let segment = |kind, flags, vaddr, data: Vec<u8>, memsz| Segment {
        kind,
        flags,
        vaddr,
        paddr: vaddr,
        memsz,
        align: 8,
        data,
    };
    let dynamic_len = dynamic.len() as u64;
    Image {
        elf_type: elf::abi::ET_DYN,
        machine: EM_X86_64,
        entry: 0,
        segments: vec![
            Segment::abi_note(ABI_VERSION),
            segment(PT_LOAD, PF_R | PF_W | PF_X, 0, data, IMAGE_MEMSZ),
            segment(elf::abi::PT_DYNAMIC, PF_R, 0x800, dynamic, dynamic_len),
            segment(elf::abi::PT_TLS, PF_R, 0x900, vec![7; 16], tls_memsz),
        ],
    }
}

#[test]
fn a_pie_is_loaded_at_the_image_area_and_its_relocations_applied() {
    let image = pie(&[(PIE_SLOT, RELATIVE, PIE_ADDEND), (0x1008, 0, 0)], &[], 64);
    let mut mem = FakeGuestMemory::new(MEMORY);
    mem.set(IMAGE_GPA + 0x1008, 0x5555);
    let loaded = load::load(&mut mem, &image.bytes(), CMDLINE, &PLATFORM).unwrap();
    assert_eq!(loaded.entry, PIE_BIAS, "e_entry 0, moved with the image");
    assert_eq!(loaded.image_end, IMAGE_GPA + IMAGE_MEMSZ);
    assert_eq!(
        mem.get(IMAGE_GPA + PIE_SLOT),
        PIE_BIAS + PIE_ADDEND as u64,
        "R_X86_64_RELATIVE: the load address plus the addend"
    );
    assert_eq!(
        mem.get(IMAGE_GPA + 0x1008),
        0,
        "R_X86_64_NONE patches nothing"
    );
    let mut loaded_code = vec![0; CODE_BYTES];
    mem.read_bytes(GuestPhysAddr::new(IMAGE_GPA), &mut loaded_code)
        .unwrap();
    assert_eq!(loaded_code, code());
    let field = |offset: usize| BOOT_PARAMS_GPA + offset as u64;
    use core::mem::offset_of;
    assert_eq!(mem.get(field(offset_of!(BootParams, load_bias))), PIE_BIAS);
    assert_eq!(
        mem.get(field(offset_of!(BootParams, features))),
        PLATFORM.features
    );
}

#[test]
fn a_linked_image_has_no_load_bias_and_the_clock_is_in_the_shared_page() {
    use core::mem::offset_of;
    let (mem, loaded) = load_into(MEMORY, &Image::good().bytes());
    loaded.unwrap();
    let bias = BOOT_PARAMS_GPA + offset_of!(BootParams, load_bias) as u64;
    assert_eq!(mem.get(bias), 0);
    assert_eq!(
        mem.get(SHARED_PAGE_GPA + shared::CLOCK_TSC_BASE),
        PLATFORM.clock_tsc_base
    );
    assert_eq!(
        mem.get(SHARED_PAGE_GPA + shared::CLOCK_NS_PER_CYCLE),
        PLATFORM.clock_ns_per_cycle
    );
}

#[test]
fn a_relocation_outside_the_loaded_segments_is_refused_naming_its_offset() {
    for offset in [IMAGE_MEMSZ - 4, IMAGE_MEMSZ, MEMORY, u64::MAX - 3] {
        let image = pie(&[(offset, RELATIVE, 0)], &[], 64);
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::RelocationOutside { offset }),
            "offset {offset:#x}"
        );
    }
}

#[test]
fn relocations_a_static_pie_does_not_have_are_refused() {
    // R_X86_64_64 needs a symbol: a dynamic linker's work.
    let image = pie(&[(PIE_SLOT, 1, 0)], &[], 64);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::UnsupportedRelocation { kind: 1 })
    );
    for (tag, what) in [
        (36, "packed (RELR) relocations"),
        (17, "REL relocations"),
        (23, "PLT relocations"),
    ] {
        let image = pie(&[], &[(tag, 0x100)], 64);
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::UnsupportedRelocationTable(what))
        );
    }
    // A table that runs past the segment's file data.
    let image = pie(&[(PIE_SLOT, RELATIVE, 0)], &[(8, 1 << 40)], 64);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::RelocationTableOutside)
    );
}

#[test]
fn a_tls_segment_larger_than_guest_memory_is_refused() {
    let image = pie(&[], &[], MEMORY + 1);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::TlsTooLarge { memsz: MEMORY + 1 })
    );
    let text = LoadError::TlsTooLarge { memsz: 5 }.to_string();
    assert!(text.contains("thread-local storage"), "{text}");
}

#[test]
fn a_pie_segment_linked_past_guest_memory_is_refused() {
    let mut image = pie(&[], &[], 64);
    image.segments[1].vaddr = MEMORY;
    image.segments[1].paddr = MEMORY;
    assert!(matches!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::SegmentOutside { .. })
    ));
}

proptest! {
    /// A PIE with bytes changed at random loads or is refused, but never
    /// panics, and what loads stays inside the image area.
    #[test]
    fn corrupted_pies_never_panic(
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = pie(&[(PIE_SLOT, RELATIVE, PIE_ADDEND)], &[], 64).bytes();
        let len = bytes.len();
        for (at, value) in changes {
            bytes[at % len] = value;
        }
        if let Ok(loaded) = load_into(MEMORY, &bytes).1 {
            prop_assert!(loaded.entry >= kva(IMAGE_MIN_GPA));
            prop_assert!(loaded.image_end <= MEMORY);
        }
    }
}

#[test]
fn boot_params_carry_magic_version_memory_and_command_line() {
    use core::mem::offset_of;
    let (mem, loaded) = load_into(MEMORY, &Image::good().bytes());
    loaded.unwrap();
    let field = |offset: usize| BOOT_PARAMS_GPA + offset as u64;
    let magic_and_version = mem.get(field(offset_of!(BootParams, magic)));
    assert_eq!(magic_and_version as u32, MAGIC);
    assert_eq!((magic_and_version >> 32) as u32, ABI_VERSION);
    assert_eq!(mem.get(field(offset_of!(BootParams, memory_bytes))), MEMORY);
    assert_eq!(
        mem.get(field(offset_of!(BootParams, shared_page))),
        kva(SHARED_PAGE_GPA)
    );
    assert_eq!(
        mem.get(field(offset_of!(BootParams, image_end))),
        IMAGE_GPA + IMAGE_MEMSZ
    );
    assert_eq!(
        mem.get(field(offset_of!(BootParams, initial_root))),
        STARTUP_TABLES_GPA
    );
    assert_eq!(
        mem.get(field(offset_of!(BootParams, cmdline_len))),
        CMDLINE.len() as u64
    );
    let mut cmdline = vec![0; CMDLINE.len() + 1];
    mem.read_bytes(
        GuestPhysAddr::new(field(offset_of!(BootParams, cmdline))),
        &mut cmdline,
    )
    .unwrap();
    assert_eq!(&cmdline[..CMDLINE.len()], CMDLINE.as_bytes());
    assert_eq!(cmdline[CMDLINE.len()], 0);
}

#[test]
fn a_new_guest_starts_at_the_entry_in_ring_1_with_boot_params_in_rdi() {
    let w = World::new();
    let r = *w.guest.regs();
    assert_eq!((r.rip, r.cs, r.ss), (ENTRY, KERNEL_CS, KERNEL_SS));
    assert_eq!(r.rdi, kva(BOOT_PARAMS_GPA));
    assert_eq!(r.rflags, IF | 2);
    assert_eq!(r.rsp, 0);
    assert_eq!(w.guest.state(), &GuestState::Runnable);
    assert_eq!(w.shared(shared::IRQ_ENABLED), 0, "virtual interrupts off");
}

#[test]
fn the_startup_map_lets_the_shadow_fault_in_the_entry_page() {
    let mut w = World::new();
    assert!(!w.shadow_leaf(ENTRY).is_present());
    // The first instruction fetch of the guest faults (the shadow is empty).
    w.in_kernel(ENTRY, 0);
    assert_eq!(w.page_fault(ENTRY, 0x10), Next::Resume);
    assert_eq!(w.guest.state(), &GuestState::Runnable);
    assert_eq!(
        w.guest.regs().rip,
        ENTRY,
        "the guest retries the same fetch"
    );
    let leaf = w.shadow_leaf(ENTRY);
    assert!(leaf.is_present());
    assert!(!leaf.flags().contains(PteFlags::USER), "supervisor only");
    assert!(!leaf.flags().contains(PteFlags::NO_EXECUTE), "executable");
    assert_eq!(
        leaf.raw() & guest_abi::pte::ADDRESS_MASK,
        FakeGuestMemory::backing(IMAGE_GPA >> 12).as_u64()
    );
    assert_eq!(w.guest.paging_stats().faults_fixed, 1);
    assert_eq!(w.guest.counters.page_faults, 1);
}

#[test]
fn memory_too_small_for_an_image_is_refused() {
    let (_, result) = load_into(1 << 20, &Image::good().bytes());
    assert_eq!(result, Err(LoadError::MemoryTooSmall(1 << 20)));
}

#[test]
fn what_is_not_an_x86_64_elf_file_is_refused() {
    let mut wrong_machine = Image::good();
    wrong_machine.machine = EM_386;
    let mut class32 = Image::good().bytes();
    class32[4] = 1;
    for bytes in [
        b"hello, world".to_vec(),
        Vec::new(),
        wrong_machine.bytes(),
        class32,
    ] {
        assert_eq!(load_into(MEMORY, &bytes).1, Err(LoadError::NotElf));
    }
}

#[test]
fn an_image_without_the_abi_note_is_refused() {
    let mut no_notes = Image::good();
    no_notes.segments.remove(0);
    let mut other_name = Image::good();
    other_name.segments[0] = Segment::note(b"rguests\0", NOTE_TYPE_ABI_VERSION, &[1, 0, 0, 0]);
    let mut other_type = Image::good();
    other_type.segments[0] = Segment::note(NOTE_NAME, 2, &ABI_VERSION.to_le_bytes());
    let mut short_desc = Image::good();
    short_desc.segments[0] = Segment::note(NOTE_NAME, NOTE_TYPE_ABI_VERSION, &[1, 0]);
    for image in [no_notes, other_name, other_type, short_desc] {
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::NoAbiNote),
            "{image:?}"
        );
    }
}

#[test]
fn an_image_for_another_abi_version_is_refused_naming_it() {
    let mut image = Image::good();
    image.segments[0] = Segment::abi_note(ABI_VERSION + 1);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::AbiVersion {
            image: ABI_VERSION + 1
        })
    );
}

#[test]
fn segments_outside_the_image_area_are_refused() {
    let cases = [
        (MEMORY - 0x1000, 0x2000),    // runs past the end of memory
        (MEMORY, 0x1000),             // starts at it
        (0x8000, 0x1000),             // below IMAGE_MIN_GPA (the host's pages)
        (IMAGE_GPA - 0x1000, 0x2000), // straddles IMAGE_MIN_GPA
        (u64::MAX - 0xfff, 0x2000),   // wraps around
    ];
    for (paddr, memsz) in cases {
        let image = Image::with_code_segment(|s| {
            *s = Segment::load(paddr, PF_R | PF_X, vec![0x90; 16], memsz);
        });
        let mut image = image;
        image.entry = kva(paddr);
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::SegmentOutside { paddr, memsz }),
            "{paddr:#x}+{memsz:#x}"
        );
    }
}

#[test]
fn a_segment_with_more_file_than_memory_is_refused() {
    let image = Image::with_code_segment(|s| s.memsz = 0x10);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::SegmentOutside {
            paddr: IMAGE_GPA,
            memsz: 0x10
        })
    );
}

#[test]
fn a_segment_not_where_the_startup_map_puts_it_is_refused() {
    for vaddr in [IMAGE_GPA, kva(IMAGE_GPA) + 0x1000, 0xffff_ffff_8000_0000] {
        let image = Image::with_code_segment(|s| s.vaddr = vaddr);
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::SegmentNotInStartupMap {
                vaddr,
                paddr: IMAGE_GPA
            })
        );
    }
}

#[test]
fn an_entry_outside_an_executable_segment_is_refused() {
    // Past the segment's end, before its start, at a physical address.
    for entry in [ENTRY + IMAGE_MEMSZ, ENTRY - 1, IMAGE_GPA] {
        let mut image = Image::good();
        image.entry = entry;
        assert_eq!(
            load_into(MEMORY, &image.bytes()).1,
            Err(LoadError::BadEntry(entry))
        );
    }
    // Inside a segment that is not executable.
    let image = Image::with_code_segment(|s| s.flags = PF_R | PF_W);
    assert_eq!(
        load_into(MEMORY, &image.bytes()).1,
        Err(LoadError::BadEntry(ENTRY))
    );
}

#[test]
fn an_entry_in_a_second_executable_segment_is_accepted() {
    let mut image = Image::with_code_segment(|s| s.flags = PF_R | PF_W);
    let text = 0x20_0000;
    image
        .segments
        .push(Segment::load(text, PF_R | PF_X, vec![0xf4; 8], 0x1000));
    image.entry = kva(text + 4);
    let loaded = load_into(MEMORY, &image.bytes()).1.unwrap();
    assert_eq!(loaded.entry, kva(text + 4));
    assert_eq!(loaded.image_end, text + 0x1000);
}

#[test]
fn load_errors_say_what_is_wrong() {
    let text = LoadError::AbiVersion { image: 7 }.to_string();
    assert!(text.contains("ABI version 7"), "{text}");
    let text = LoadError::BadEntry(0x1234).to_string();
    assert!(text.contains("0x1234"), "{text}");
}

/// Cases run by each loader property test.
const LOADER_CASES: u32 = 128;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(LOADER_CASES))]

    /// Random bytes are never a guest, and never a panic.
    #[test]
    fn random_bytes_are_refused_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        prop_assert!(load_into(MEMORY, &bytes).1.is_err());
    }

    /// Random bytes behind a valid ELF magic and class get further into the
    /// parser, and are still refused.
    #[test]
    fn random_headers_are_refused_without_panicking(
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        bytes.extend_from_slice(&tail);
        prop_assert!(load_into(MEMORY, &bytes).1.is_err());
    }

    /// Every truncation of a good image is refused.
    #[test]
    fn truncated_images_are_refused(cut in 0usize..1000) {
        let bytes = Image::good().bytes();
        let len = cut % bytes.len();
        prop_assert!(load_into(MEMORY, &bytes[..len]).1.is_err());
    }

    /// A good image with bytes changed at random loads or is refused, but
    /// never panics, and what loads has its entry in the image area.
    #[test]
    fn corrupted_images_never_panic(
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = Image::good().bytes();
        let len = bytes.len();
        for (at, value) in changes {
            bytes[at % len] = value;
        }
        if let Ok(loaded) = load_into(MEMORY, &bytes).1 {
            prop_assert!(loaded.entry >= kva(IMAGE_MIN_GPA));
            prop_assert!(loaded.entry < kva(MEMORY));
            prop_assert!(loaded.image_end <= MEMORY);
        }
    }
}

// ---------------------------------------------------------------------------
// Hypercalls.
// ---------------------------------------------------------------------------

#[test]
fn nop_returns_zero_and_leaves_the_other_registers() {
    let mut w = World::new();
    w.guest.regs_mut().rbx = 0x1234;
    w.guest.regs_mut().rip = ENTRY + 2;
    assert_eq!(w.call(Number::Nop, &[9, 9, 9, 9]), 0);
    let r = *w.guest.regs();
    assert_eq!((r.rbx, r.rdi, r.rip), (0x1234, 9, ENTRY + 2));
    assert_eq!(w.guest.counters.hypercalls, 1);
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn an_unknown_hypercall_returns_unknown_call() {
    let mut w = World::new();
    for number in [Number::ALL.len() as u64, 0x100, u64::MAX] {
        assert_eq!(w.hypercall(number, &[]), Next::Resume);
        assert_eq!(w.guest.regs().rax, Error::UnknownCall.to_return_value());
    }
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn read_time_returns_the_host_clock() {
    let mut w = World::new();
    w.host.now = 123_456_789;
    assert_eq!(w.call(Number::ReadTime, &[]), 123_456_789);
}

#[test]
fn console_write_prints_whole_lines_prefixed_by_the_guest_name() {
    let mut w = World::new();
    w.poke(BUFFER, b"hello\nwor");
    assert_eq!(w.call(Number::ConsoleWrite, &[BUFFER, 9]), 9);
    assert_eq!(w.host.printed(), ["hello/world: hello"]);
    // The rest of the line waits for its newline.
    w.poke(BUFFER, b"ld!\n");
    assert_eq!(w.call(Number::ConsoleWrite, &[BUFFER, 4]), 4);
    assert_eq!(
        w.host.printed(),
        ["hello/world: hello", "hello/world: world!"]
    );
    assert_eq!(w.call(Number::ConsoleWrite, &[BUFFER, 0]), 0);
    assert_eq!(w.host.lines.len(), 2);
}

#[test]
fn console_write_reads_across_pages_and_breaks_overlong_lines() {
    let mut w = World::new();
    // 700 bytes without a newline, starting 100 bytes before a page ends.
    let text: Vec<u8> = (0..700).map(|i| b'a' + (i % 26) as u8).collect();
    let at = BUFFER + 0x1000 - 100;
    w.poke(at, &text);
    assert_eq!(w.call(Number::ConsoleWrite, &[at, 700]), 700);
    assert_eq!(w.host.lines.len(), 1);
    assert_eq!(w.host.lines[0].1, text[..512]);
    assert_eq!(w.hypercall(Number::Shutdown as u64, &[0]), Next::Ended);
    assert_eq!(w.host.lines.len(), 2);
    assert_eq!(w.host.lines[1].1, text[512..]);
}

#[test]
fn console_write_prints_blank_lines_too() {
    let mut w = World::new();
    w.poke(BUFFER, b"a\n\nb\n");
    assert_eq!(w.call(Number::ConsoleWrite, &[BUFFER, 5]), 5);
    assert_eq!(
        w.host.printed(),
        ["hello/world: a", "hello/world: ", "hello/world: b"]
    );
}

#[test]
fn a_killed_guest_still_gets_its_last_line_printed() {
    let mut w = World::new();
    w.poke(BUFFER, b"about to cli");
    w.call(Number::ConsoleWrite, &[BUFFER, 12]);
    assert!(w.host.lines.is_empty());
    w.poke(TRAPPING_RIP, &[0xfa]);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(13, 0), Next::Ended);
    assert_eq!(w.host.printed(), ["hello/world: about to cli"]);
}

#[test]
fn console_write_refuses_too_long_a_buffer() {
    let mut w = World::new();
    w.poke(BUFFER, b"x\n");
    let result = w.call(Number::ConsoleWrite, &[BUFFER, CONSOLE_WRITE_MAX + 1]);
    assert_eq!(result, Error::TooLong.to_return_value());
    assert!(w.host.lines.is_empty());
    // The largest write is fine.
    let result = w.call(Number::ConsoleWrite, &[BUFFER, CONSOLE_WRITE_MAX]);
    assert_eq!(result, CONSOLE_WRITE_MAX);
}

#[test]
fn console_write_refuses_bad_buffers_without_killing() {
    let mut w = World::new();
    for buffer in [
        UNMAPPED,
        UNMAPPED_KERNEL,
        0x0000_8000_0000_0000, // not canonical
        SWITCHER_ADDRESS,
        u64::MAX - 7, // wraps around
    ] {
        let result = w.call(Number::ConsoleWrite, &[buffer, 16]);
        assert_eq!(result, Error::BadAddress.to_return_value(), "{buffer:#x}");
    }
    assert_eq!(w.guest.state(), &GuestState::Runnable);
    assert!(w.host.lines.is_empty());
}

#[test]
fn shutdown_exits_with_its_code_and_flushes_the_console() {
    let mut w = World::new();
    w.poke(BUFFER, b"bye");
    w.call(Number::ConsoleWrite, &[BUFFER, 3]);
    assert!(w.host.lines.is_empty());
    assert_eq!(w.hypercall(Number::Shutdown as u64, &[42]), Next::Ended);
    assert_eq!(w.guest.state(), &GuestState::Exited(42));
    assert!(w.guest.has_ended());
    assert_eq!(w.host.printed(), ["hello/world: bye"]);
    assert_eq!(w.enter(), None, "an ended guest is not entered");
}

#[test]
fn set_trap_refuses_unknown_flags_and_vectors() {
    let mut w = World::new();
    let invalid = Error::InvalidArgument.to_return_value();
    assert_eq!(w.set_trap(6, HANDLER, 1 << 2), invalid);
    assert_eq!(w.set_trap(256, HANDLER, 0), invalid);
    assert_eq!(w.set_trap(u64::MAX, HANDLER, 0), invalid);
    // Nothing was registered: a #UD is unhandled.
    w.in_kernel(ENTRY, STACK_TOP);
    assert_eq!(w.trap(6, 0), Next::Ended);
    assert!(matches!(
        w.kill_reason(),
        KillReason::Unhandled { vector: 6, .. }
    ));
}

#[test]
fn set_trap_kills_for_a_handler_outside_the_guest_kernel() {
    for handler in [
        0x40_0000,             // the lower half: user code
        0x0000_8000_0000_0000, // not canonical
        SWITCHER_ADDRESS,      // the switcher's slot
        0xffff_ff80_0000_0000, // its first byte
    ] {
        let mut w = World::new();
        assert_eq!(
            w.hypercall(Number::SetTrap as u64, &[6, handler, 0]),
            Next::Ended
        );
        assert_eq!(
            w.kill_reason(),
            &KillReason::BadHypercall("trap handler outside the guest kernel", handler)
        );
    }
}

#[test]
fn direct_traps_are_only_for_software_interrupt_vectors() {
    let mut w = World::new();
    let invalid = Error::InvalidArgument.to_return_value();
    let direct = trap_flags::DIRECT_FROM_USER;
    for vector in [0, 6, 14, 31, u64::from(guest_abi::hypercall::VECTOR)] {
        assert_eq!(w.set_trap(vector, HANDLER, direct), invalid, "{vector}");
    }
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    assert_eq!(w.set_trap(0x80, HANDLER, direct), 0);
    assert_eq!(w.set_trap(32, TIMER_HANDLER, 0), 0);
    let (stack, gates) = w.guest.take_cpu_tables().expect("tables changed");
    let gates: Vec<_> = gates.filter(|(_, handler)| handler.is_some()).collect();
    assert_eq!(stack, STACK_TOP);
    assert_eq!(
        gates,
        [(0x80, Some(HANDLER))],
        "only direct traps are gates"
    );
    assert!(w.guest.take_cpu_tables().is_none(), "nothing changed since");
    // A zero handler removes the trap, and the gate with it.
    assert_eq!(w.set_trap(0x80, 0, 0), 0);
    let (_, mut gates) = w.guest.take_cpu_tables().expect("tables changed");
    assert!(gates.all(|(_, handler)| handler.is_none()));
}

#[test]
fn the_cpu_tables_are_handed_out_again_after_another_guest_ran() {
    let mut w = World::new();
    assert!(
        w.guest.take_cpu_tables().is_some(),
        "a new guest has tables"
    );
    assert!(w.guest.take_cpu_tables().is_none());
    w.guest.cpu_tables_lost();
    let (stack, gates) = w.guest.take_cpu_tables().unwrap();
    assert_eq!(stack, NO_KERNEL_STACK);
    assert_eq!(gates.count(), 256 - 32 - 1, "every direct-trap vector");
}

#[test]
fn set_kernel_stack_checks_its_address() {
    let mut w = World::new();
    let invalid = Error::InvalidArgument.to_return_value();
    for top in [
        STACK_TOP + 8,         // not 16-byte aligned
        USER_RSP,              // the lower half
        0x8000_0000_0000_0000, // not canonical
        0xffff_ff80_0000_2000, // the switcher's slot
    ] {
        assert_eq!(w.call(Number::SetKernelStack, &[top]), invalid, "{top:#x}");
    }
    for top in [UNMAPPED_KERNEL, kva(0x1_0000_0000)] {
        let result = w.call(Number::SetKernelStack, &[top]);
        assert_eq!(result, Error::BadAddress.to_return_value(), "{top:#x}");
    }
    assert_eq!(w.guest.state(), &GuestState::Runnable);
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    // Its pages are mapped writable in the shadow at once.
    for page in [STACK_TOP - 0x1000, STACK_TOP - 0x2000] {
        assert!(
            w.guest
                .paging
                .maps_writable(&w.frames, GuestVirtAddr::try_new(page).unwrap())
        );
    }
}

/// A guest OS names the next process's kernel stack at every switch: a
/// stack named again is the kernel stack again (given to the CPU's TSS)
/// without a walk, and after the shadow is flushed it is pinned afresh.
#[test]
fn kernel_stacks_taking_turns_stay_pinned_and_are_pinned_again_after_a_flush() {
    let mut w = World::new();
    let (a, b) = (STACK_TOP, STACK_TOP - 0x4000);
    for top in [a, b, a, b, a] {
        assert_eq!(w.call(Number::SetKernelStack, &[top]), 0, "{top:#x}");
        let (stack, _) = w.guest.take_cpu_tables().expect("the stack changed");
        assert_eq!(stack, top);
    }
    let invalid = Error::InvalidArgument.to_return_value();
    assert_eq!(w.call(Number::SetKernelStack, &[b + 8]), invalid);
    assert_eq!(w.call(Number::MmuOp, &MmuOp::FlushAll.encode()), 0);
    assert_eq!(w.call(Number::SetKernelStack, &[b]), 0);
    for page in [b - 0x1000, b - 0x2000] {
        let page = GuestVirtAddr::try_new(page).unwrap();
        assert!(w.guest.paging.maps_writable(&w.frames, page), "{page:?}");
    }
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn a_refused_kernel_stack_leaves_the_old_one_pinned() {
    let mut w = World::new();
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    let refused = w.call(Number::SetKernelStack, &[UNMAPPED_KERNEL]);
    assert_eq!(refused, Error::BadAddress.to_return_value());
    // The guest flushes its whole shadow; the stack is pinned again before
    // the next entry, and it is the old one, still mapped.
    assert_eq!(w.call(Number::MmuOp, &MmuOp::FlushAll.encode()), 0);
    assert!(w.enter().is_some(), "killed: {:?}", w.guest.state());
    assert!(
        w.guest
            .paging
            .maps_writable(&w.frames, GuestVirtAddr::try_new(STACK_TOP - 8).unwrap())
    );
}

#[test]
fn halt_sleeps_until_the_timer_fires() {
    let mut w = World::new();
    assert_eq!(w.call(Number::SetTimer, &[1_000]), 0);
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Halted);
    assert_eq!(w.guest.state(), &GuestState::Halted);
    assert!(!w.guest.poll(BOOT_TIME + 999), "not yet");
    assert_eq!(w.guest.state(), &GuestState::Halted);
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
    assert!(w.guest.poll(BOOT_TIME + 1_000));
    assert_eq!(w.guest.state(), &GuestState::Runnable);
    assert_eq!(w.shared(shared::IRQ_PENDING), 1 << (TIMER_VECTOR - 32));
    assert_eq!(w.guest.regs().rax, 0, "halt returns 0");
}

#[test]
fn halt_returns_at_once_when_an_interrupt_is_pending() {
    let mut w = World::new();
    w.set_shared(shared::IRQ_PENDING, 1);
    assert_eq!(w.call(Number::Halt, &[]), 0);
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn a_timer_set_to_zero_is_cancelled() {
    let mut w = World::new();
    w.call(Number::SetTimer, &[1_000]);
    w.call(Number::SetTimer, &[0]);
    // No timer: nothing could wake it, so the halt ends it.
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Ended);
    assert!(!w.guest.poll(u64::MAX), "no timer fired");
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
}

#[test]
fn the_timer_fires_once() {
    let mut w = World::new();
    w.call(Number::SetTimer, &[10]);
    assert!(w.guest.poll(BOOT_TIME + 10));
    w.set_shared(shared::IRQ_PENDING, 0); // the guest took it
    // Fired, it is disarmed: a halt now has nothing to wake it.
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Ended);
    assert!(matches!(w.kill_reason(), KillReason::HaltedForever { .. }));
}

#[test]
fn mmu_op_refuses_words_that_are_no_op() {
    let mut w = World::new();
    let result = w.call(Number::MmuOp, &[9, 0, 0, 0]);
    assert_eq!(result, Error::InvalidArgument.to_return_value());
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn mmu_op_invalidates_a_page_in_the_shadow() {
    let mut w = World::new();
    w.in_kernel(ENTRY, 0);
    w.page_fault(ENTRY, 0x10);
    assert!(w.shadow_leaf(ENTRY).is_present());
    let op = MmuOp::InvalidatePage { vaddr: ENTRY }.encode();
    assert_eq!(w.call(Number::MmuOp, &op), 0);
    assert!(!w.shadow_leaf(ENTRY).is_present());
}

#[test]
fn flush_mmu_ring_applies_the_ring_in_the_shared_page() {
    let mut w = World::new();
    w.in_kernel(ENTRY, 0);
    w.page_fault(ENTRY, 0x10);
    assert!(w.shadow_leaf(ENTRY).is_present());
    // The guest queues one op in slot 0 and moves `head` on.
    let base = shared::MMU_RING;
    let op = MmuOp::InvalidatePage { vaddr: ENTRY }.encode();
    for (i, word) in (0..).zip(op) {
        w.set_shared(base + ring::slot_offset(0) + 8 * i, word);
    }
    w.set_shared(base + ring::HEAD_OFFSET, 1);
    assert_eq!(w.call(Number::FlushMmuRing, &[]), 1, "one op applied");
    assert_eq!(w.shared(base + ring::TAIL_OFFSET), 1);
    assert!(!w.shadow_leaf(ENTRY).is_present());
    assert_eq!(w.guest.paging_stats().ring_ops, 1);
}

#[test]
fn set_root_to_a_page_outside_memory_kills() {
    let mut w = World::new();
    assert_eq!(w.hypercall(Number::SetRoot as u64, &[MEMORY]), Next::Ended);
    assert!(matches!(
        w.kill_reason(),
        KillReason::Paging(PagingError::BadRoot { root: MEMORY, .. })
    ));
}

// ---------------------------------------------------------------------------
// Exceptions, delivered as the CPU would.
// ---------------------------------------------------------------------------

#[test]
fn an_exception_with_a_handler_is_delivered_with_a_cpu_style_frame() {
    let mut w = World::new();
    assert_eq!(w.set_trap(6, HANDLER, 0), 0);
    w.set_shared(shared::IRQ_ENABLED, 1);
    // The stack pointer is not 16-byte aligned: the frame goes below the
    // aligned address, as the CPU puts it.
    let rsp = STACK_TOP - 8;
    w.in_kernel(TRAPPING_RIP, rsp);
    w.guest.regs_mut().rflags = IF | 2 | CF | TF;
    assert_eq!(w.trap(6, 0), Next::Resume);
    let frame = STACK_TOP - 16 - RED_ZONE_BYTES - 5 * 8;
    let r = *w.guest.regs();
    assert_eq!(
        (r.rip, r.rsp, r.cs, r.ss),
        (HANDLER, frame, KERNEL_CS, KERNEL_SS)
    );
    assert_eq!(
        w.words(frame, 5),
        [TRAPPING_RIP, KERNEL_CS, IF | 2 | CF | TF, rsp, KERNEL_SS]
    );
    assert_eq!(r.rflags & TF, 0, "no single-stepping into the handler");
    assert_eq!(w.shared(shared::IRQ_ENABLED), 0, "virtual interrupts off");
    assert_eq!(w.guest.counters.exceptions, 1);
}

#[test]
fn the_frame_shows_the_virtual_interrupt_flag_as_rflags_if() {
    let mut w = World::new();
    w.set_trap(0, HANDLER, 0);
    w.set_shared(shared::IRQ_ENABLED, 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(0, 0), Next::Resume);
    let frame = STACK_TOP - RED_ZONE_BYTES - 5 * 8;
    assert_eq!(w.guest.regs().rsp, frame);
    assert_eq!(w.words(frame + 16, 1), [2], "IF clear: the guest had cli'd");
}

#[test]
fn keep_interrupts_leaves_the_virtual_flag_on() {
    let mut w = World::new();
    w.set_trap(3, HANDLER, trap_flags::KEEP_INTERRUPTS);
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(3, 0), Next::Resume);
    assert_eq!(w.guest.regs().rip, HANDLER);
    assert_eq!(w.shared(shared::IRQ_ENABLED), 1);
}

#[test]
fn an_exception_without_a_handler_kills_naming_the_vector() {
    let mut w = World::new();
    w.set_trap(0, HANDLER, 0); // a handler for another vector
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(6, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::Unhandled {
            vector: 6,
            rip: TRAPPING_RIP,
            address: None
        }
    );
    let text = w.kill_reason().to_string();
    assert!(
        text.contains("#UD") && text.contains("0xffff800000100800"),
        "{text}"
    );
}

#[test]
fn an_exception_in_user_mode_is_delivered_on_the_kernel_stack() {
    let mut w = World::new();
    w.set_trap(6, HANDLER, 0);
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.trap(6, 0), Next::Resume);
    let frame = STACK_TOP - 5 * 8;
    let r = *w.guest.regs();
    assert_eq!(
        (r.rip, r.rsp, r.cs, r.ss),
        (HANDLER, frame, KERNEL_CS, KERNEL_SS)
    );
    assert_eq!(w.words(frame, 5), [USER_RIP, USER_CS, 2, USER_RSP, USER_SS]);
}

#[test]
fn an_exception_in_user_mode_without_a_kernel_stack_cannot_be_delivered() {
    let mut w = World::new();
    w.set_trap(6, HANDLER, 0);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.trap(6, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::CannotDeliver {
            vector: 6,
            stack: 0
        }
    );
}

#[test]
fn an_exception_on_an_unmapped_kernel_stack_cannot_be_delivered() {
    let mut w = World::new();
    w.set_trap(6, HANDLER, 0);
    w.in_kernel(TRAPPING_RIP, UNMAPPED_KERNEL);
    assert_eq!(w.trap(6, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::CannotDeliver {
            vector: 6,
            stack: UNMAPPED_KERNEL
        }
    );
}

#[test]
fn double_faults_and_machine_checks_are_fatal() {
    for vector in [8, 18] {
        let mut w = World::new();
        w.set_trap(u64::from(vector), HANDLER, 0);
        w.in_kernel(TRAPPING_RIP, STACK_TOP);
        assert_eq!(w.trap(vector, 0), Next::Ended);
        assert_eq!(w.kill_reason(), &KillReason::Fatal(vector));
    }
}

#[test]
fn nmis_and_host_interrupts_only_resume() {
    let mut w = World::new();
    w.set_trap(2, HANDLER, 0);
    w.set_trap(32, TIMER_HANDLER, 0);
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    for vector in [2, 32, 0x30, 0xff] {
        assert_eq!(w.trap(vector, 0), Next::Resume);
        assert_eq!(w.guest.regs().rip, TRAPPING_RIP, "vector {vector}");
    }
    assert_eq!(w.guest.counters.interrupts, 3, "the NMI is not counted");
    assert_eq!(w.guest.counters.exceptions, 0);
}

// ---------------------------------------------------------------------------
// General protection: privileged instructions, hypercalls from user mode.
// ---------------------------------------------------------------------------

#[test]
fn privileged_instructions_in_ring_1_kill_naming_them() {
    let cases: [(&[u8], &str); 9] = [
        (&[0xfa], "cli"),
        (&[0xf4], "hlt"),
        (&[0x0f, 0x22, 0xd8], "mov to cr3"),
        (&[0x0f, 0x01, 0x15, 0, 0, 0, 0], "lgdt"),
        (&[0x0f, 0x30], "wrmsr"),
        (&[0xe4, 0x60], "in"),
        (&[0xee], "out"),
        (&[0x0f, 0x01, 0xf8], "swapgs"),
        (&[0x0f, 0x01, 0x04, 0x24], "sgdt"),
    ];
    for (code, what) in cases {
        let mut w = World::new();
        w.set_trap(13, HANDLER, 0); // a handler does not save it
        w.poke(TRAPPING_RIP, code);
        w.in_kernel(TRAPPING_RIP, STACK_TOP);
        assert_eq!(w.trap(13, 0), Next::Ended, "{what}");
        assert_eq!(
            w.kill_reason(),
            &KillReason::PrivilegedInstruction {
                what,
                rip: TRAPPING_RIP
            }
        );
    }
}

#[test]
fn a_privileged_instruction_across_a_page_boundary_is_named() {
    let mut w = World::new();
    let rip = kva(IMAGE_GPA + 0x1fff);
    w.poke(rip, &[0x0f, 0x22, 0xd8]);
    w.in_kernel(rip, STACK_TOP);
    assert_eq!(w.trap(13, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::PrivilegedInstruction {
            what: "mov to cr3",
            rip
        }
    );
}

#[test]
fn a_privileged_instruction_at_the_end_of_memory_is_named() {
    let mut w = World::new();
    let rip = kva(MEMORY - 1);
    w.poke(rip, &[0xfa]);
    w.in_kernel(rip, STACK_TOP);
    assert_eq!(w.trap(13, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::PrivilegedInstruction { what: "cli", rip }
    );
}

#[test]
fn an_ordinary_gp_in_ring_1_is_delivered_with_its_error_code() {
    let mut w = World::new();
    w.set_trap(13, HANDLER, 0);
    w.poke(TRAPPING_RIP, &[0x8e, 0xd8]); // mov ds, ax with a bad selector
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(13, 0x18), Next::Resume);
    let frame = STACK_TOP - RED_ZONE_BYTES - 6 * 8;
    assert_eq!(w.guest.regs().rsp, frame);
    assert_eq!(w.guest.regs().rip, HANDLER);
    assert_eq!(
        w.words(frame, 6),
        [0x18, TRAPPING_RIP, KERNEL_CS, 2, STACK_TOP, KERNEL_SS]
    );
}

#[test]
fn a_gp_in_ring_1_without_a_handler_kills_as_unhandled() {
    let mut w = World::new();
    w.poke(TRAPPING_RIP, &[0x8e, 0xd8]);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(13, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::Unhandled {
            vector: 13,
            rip: TRAPPING_RIP,
            address: None
        }
    );
}

#[test]
fn a_hypercall_from_user_mode_kills() {
    let mut w = World::new();
    w.set_trap(13, HANDLER, 0);
    w.call(Number::SetKernelStack, &[STACK_TOP]);
    w.in_user(USER_RIP, USER_RSP);
    let gate_error = (u64::from(guest_abi::hypercall::VECTOR) << 3) | 2;
    assert_eq!(w.trap(13, gate_error), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::HypercallFromUser { rip: USER_RIP }
    );
}

#[test]
fn a_gp_in_user_mode_goes_to_the_guest_kernel() {
    let mut w = World::new();
    w.set_trap(13, HANDLER, 0);
    w.call(Number::SetKernelStack, &[STACK_TOP]);
    w.in_user(USER_RIP, USER_RSP);
    // `int 0x80` through a gate the guest did not open to user mode: its
    // kernel's business, not the host's.
    let gate_error = (0x80 << 3) | 2;
    assert_eq!(w.trap(13, gate_error), Next::Resume);
    let frame = STACK_TOP - 6 * 8;
    assert_eq!((w.guest.regs().rip, w.guest.regs().rsp), (HANDLER, frame));
    assert_eq!(w.words(frame, 2), [gate_error, USER_RIP]);
    assert_eq!(w.guest.regs().cs, KERNEL_CS);
}

// ---------------------------------------------------------------------------
// Page faults.
// ---------------------------------------------------------------------------

#[test]
fn a_write_to_the_switcher_slot_kills() {
    for error_code in [2, 3] {
        let mut w = World::new();
        w.set_trap(14, HANDLER, 0);
        w.in_kernel(TRAPPING_RIP, STACK_TOP);
        assert_eq!(w.page_fault(SWITCHER_ADDRESS, error_code), Next::Ended);
        assert_eq!(
            w.kill_reason(),
            &KillReason::SwitcherAccess {
                address: SWITCHER_ADDRESS,
                rip: TRAPPING_RIP
            }
        );
    }
}

#[test]
fn a_read_of_the_switcher_slot_faults_into_the_guest_as_unmapped() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.page_fault(SWITCHER_ADDRESS, 0), Next::Resume);
    assert_eq!(w.guest.regs().rip, HANDLER);
    assert_eq!(w.shared(shared::FAULT_ADDRESS), SWITCHER_ADDRESS);
    assert_eq!(
        w.words(STACK_TOP - RED_ZONE_BYTES - 6 * 8, 2),
        [0, TRAPPING_RIP],
        "not present, read"
    );
}

#[test]
fn a_fault_the_guest_tables_forbid_is_delivered_with_its_address() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.page_fault(UNMAPPED, 2), Next::Resume);
    assert_eq!(w.shared(shared::FAULT_ADDRESS), UNMAPPED);
    let frame = STACK_TOP - RED_ZONE_BYTES - 6 * 8;
    assert_eq!(w.guest.regs().rip, HANDLER);
    assert_eq!(
        w.words(frame, 6),
        [2, TRAPPING_RIP, KERNEL_CS, 2, STACK_TOP, KERNEL_SS]
    );
    assert_eq!(w.guest.paging_stats().faults_reflected, 1);
    assert_eq!(w.guest.counters.page_faults, 1);
}

#[test]
fn user_access_to_the_guest_kernel_gets_a_protection_fault() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.call(Number::SetKernelStack, &[STACK_TOP]);
    w.in_user(USER_RIP, USER_RSP);
    // A user read of the (supervisor-only) start-up map: present but
    // forbidden, so the guest sees protection | user.
    assert_eq!(w.page_fault(ENTRY, 4), Next::Resume);
    assert_eq!(w.shared(shared::FAULT_ADDRESS), ENTRY);
    assert_eq!(w.words(STACK_TOP - 6 * 8, 2), [5, USER_RIP]);
}

#[test]
fn a_fault_without_a_handler_kills_with_the_address() {
    let mut w = World::new();
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.page_fault(UNMAPPED, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::Unhandled {
            vector: 14,
            rip: TRAPPING_RIP,
            address: Some(UNMAPPED)
        }
    );
    assert!(w.kill_reason().to_string().contains("(address 0x1000)"));
}

#[test]
fn a_fault_at_a_non_canonical_address_kills() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.page_fault(0x8000_0000_0000_0000, 0), Next::Ended);
    assert!(matches!(
        w.kill_reason(),
        KillReason::Unhandled {
            vector: 14,
            address: Some(0x8000_0000_0000_0000),
            ..
        }
    ));
}

// ---------------------------------------------------------------------------
// Virtual interrupts and the time budget.
// ---------------------------------------------------------------------------

/// A guest with a timer handler, at `TRAPPING_RIP` on its stack.
fn world_with_timer_handler() -> World {
    let mut w = World::new();
    assert_eq!(w.set_trap(u64::from(TIMER_VECTOR), TIMER_HANDLER, 0), 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    w
}

#[test]
fn a_pending_interrupt_waits_while_virtual_interrupts_are_off() {
    let mut w = world_with_timer_handler();
    w.set_shared(shared::IRQ_PENDING, 1);
    w.set_shared(shared::IRQ_ENABLED, 0);
    assert!(w.enter().is_some());
    assert_eq!(w.guest.regs().rip, TRAPPING_RIP);
    assert_eq!(w.shared(shared::IRQ_PENDING), 1, "still pending");
    assert_eq!(w.guest.counters.virtual_interrupts, 0);
}

#[test]
fn a_pending_interrupt_is_delivered_once_virtual_interrupts_are_on() {
    let mut w = world_with_timer_handler();
    w.set_shared(shared::IRQ_PENDING, 1);
    w.set_shared(shared::IRQ_ENABLED, 1);
    assert!(w.enter().is_some());
    let frame = STACK_TOP - RED_ZONE_BYTES - 5 * 8;
    assert_eq!(
        (w.guest.regs().rip, w.guest.regs().rsp),
        (TIMER_HANDLER, frame)
    );
    assert_eq!(
        w.words(frame, 5),
        [TRAPPING_RIP, KERNEL_CS, IF | 2, STACK_TOP, KERNEL_SS]
    );
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
    assert_eq!(w.shared(shared::IRQ_ENABLED), 0);
    assert_eq!(w.guest.counters.virtual_interrupts, 1);
    // Off now: the next entry delivers nothing more.
    w.set_shared(shared::IRQ_PENDING, 1);
    w.enter();
    assert_eq!(w.guest.regs().rip, TIMER_HANDLER);
    assert_eq!(w.guest.regs().rsp, frame);
}

#[test]
fn an_interrupt_in_user_mode_is_delivered_on_the_kernel_stack() {
    let mut w = world_with_timer_handler();
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    w.in_user(USER_RIP, USER_RSP);
    w.set_shared(shared::IRQ_PENDING, 1);
    w.set_shared(shared::IRQ_ENABLED, 1);
    assert!(w.enter().is_some());
    let frame = STACK_TOP - 5 * 8;
    let r = *w.guest.regs();
    assert_eq!((r.rip, r.rsp, r.cs), (TIMER_HANDLER, frame, KERNEL_CS));
    assert_eq!(
        w.words(frame, 5),
        [USER_RIP, USER_CS, IF | 2, USER_RSP, USER_SS]
    );
}

#[test]
fn a_pending_interrupt_without_a_handler_is_dropped() {
    let mut w = World::new();
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    w.set_shared(shared::IRQ_PENDING, 1);
    w.set_shared(shared::IRQ_ENABLED, 1);
    assert!(w.enter().is_some());
    assert_eq!(w.guest.regs().rip, TRAPPING_RIP);
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
    assert_eq!(w.shared(shared::IRQ_ENABLED), 1);
    assert_eq!(w.guest.counters.virtual_interrupts, 0);
}

#[test]
fn the_lowest_pending_interrupt_goes_first() {
    let mut w = world_with_timer_handler();
    w.set_trap(33, HANDLER, 0);
    w.set_shared(shared::IRQ_PENDING, 0b11);
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.enter();
    assert_eq!(w.guest.regs().rip, TIMER_HANDLER);
    assert_eq!(w.shared(shared::IRQ_PENDING), 0b10);
}

#[test]
fn the_timer_fires_at_entry_and_the_time_is_in_the_shared_page() {
    let mut w = world_with_timer_handler();
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.call(Number::SetTimer, &[500]);
    w.host.now = BOOT_TIME + 499;
    w.enter();
    assert_eq!(w.guest.regs().rip, TRAPPING_RIP, "not yet");
    assert_eq!(w.shared(shared::TIME_NS), BOOT_TIME + 499);
    w.host.now = BOOT_TIME + 500;
    w.enter();
    assert_eq!(w.guest.regs().rip, TIMER_HANDLER);
    assert_eq!(w.shared(shared::TIME_NS), BOOT_TIME + 500);
}

#[test]
fn a_guest_that_overruns_its_budget_is_killed() {
    for (irq_enabled, interrupts_off) in [(0, true), (1, false)] {
        let mut w = World::with_budget(3_000_000);
        w.set_shared(shared::IRQ_ENABLED, irq_enabled);
        for left in [2_000_000, 1_000_000, 0] {
            assert_eq!(w.guest.charge_cpu_time(1_000_000), Next::Resume);
            assert_eq!(w.guest.cpu_ns_left(), left);
        }
        assert_eq!(w.guest.state(), &GuestState::Runnable);
        assert_eq!(w.guest.charge_cpu_time(1), Next::Ended);
        assert_eq!(
            w.kill_reason(),
            &KillReason::OverBudget {
                budget_ms: 3,
                interrupts_off
            }
        );
        assert_eq!(w.guest.cpu_ns_used, 3_000_001);
    }
}

#[test]
fn the_first_reason_to_kill_is_kept() {
    let mut w = World::with_budget(0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.trap(6, 0), Next::Ended);
    assert_eq!(w.guest.charge_cpu_time(1), Next::Ended);
    assert!(matches!(
        w.kill_reason(),
        KillReason::Unhandled { vector: 6, .. }
    ));
}

// ---------------------------------------------------------------------------
// Every entry.
// ---------------------------------------------------------------------------

#[test]
fn entry_clears_the_flags_a_guest_may_not_have() {
    let mut w = World::new();
    w.in_kernel(ENTRY, STACK_TOP);
    w.guest.regs_mut().rflags = IOPL3 | NT | RF | VM | CF | TF | (1 << 63);
    w.guest.regs_mut().cs = 0x08; // the host's own code segment
    w.guest.regs_mut().ss = 0;
    let root = w.enter().expect("entered");
    let flags = w.guest.regs().rflags;
    assert_eq!(flags & (IOPL3 | NT | RF | VM), 0, "{flags:#x}");
    assert_eq!(flags, IF | 2 | CF | TF);
    assert_eq!(
        (w.guest.regs().cs, w.guest.regs().ss),
        (KERNEL_CS, KERNEL_SS)
    );
    assert_eq!(root, w.guest.paging.current_shadow_root());
    assert_eq!(w.guest.counters.cr3_loads, 2);
}

#[test]
fn entry_turns_interrupts_on_and_keeps_user_mode_in_ring_3() {
    let mut w = World::new();
    w.in_user(USER_RIP, USER_RSP);
    w.guest.regs_mut().rflags = 0;
    w.guest.regs_mut().cs = 0x0b; // RPL 3 on a ring-0 selector
    w.guest.regs_mut().ss = 0x10;
    w.enter().expect("entered");
    assert_eq!(w.guest.regs().rflags, IF | 2);
    assert_eq!((w.guest.regs().cs, w.guest.regs().ss), (USER_CS, USER_SS));
}

#[test]
fn entry_installs_the_switcher_in_the_running_root() {
    let mut w = World::new();
    let root = w.enter().unwrap();
    let slot = crate::paging::TableIndex::new(switcher::SLOT_PML4_INDEX).unwrap();
    let entry = ShadowEntry::from_raw(w.frames.read_entry(root, slot));
    assert!(entry.is_present());
    assert_eq!(
        entry.raw() & guest_abi::pte::ADDRESS_MASK,
        SWITCHER_TABLE.as_u64()
    );
    assert!(!entry.flags().contains(PteFlags::USER));
}

// ---------------------------------------------------------------------------
// Teardown.
// ---------------------------------------------------------------------------

#[test]
fn teardown_returns_every_shadow_frame() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.call(Number::SetKernelStack, &[STACK_TOP]);
    w.in_kernel(ENTRY, STACK_TOP);
    w.page_fault(ENTRY, 0x10);
    w.page_fault(UNMAPPED, 2);
    w.enter().unwrap();
    assert!(w.frames.in_use() > 1);
    let World {
        guest, mut frames, ..
    } = w;
    let (memory, stats) = guest.teardown(&mut frames);
    assert_eq!(stats.frames_held, 0);
    assert_eq!(frames.in_use(), 0, "shadow frames leaked");
    assert_eq!(memory.size(), MEMORY, "the memory comes back too");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a guest puts in its registers at a hypercall or trap, the
    /// host decides without panicking, and a guest it lets run enters in
    /// ring 1 or 3 with interrupts on and no I/O privilege.
    #[test]
    fn any_registers_at_any_exit_are_judged_without_panicking(
        exits in proptest::collection::vec(
            (0u64..0x110, any::<u64>(), any::<[u64; 5]>(), any::<u64>(), any::<u64>()),
            1..8,
        ),
    ) {
        let mut w = World::new();
        for (vector, error_code, [rax, rdi, rsi, rdx, r10], rflags, cr2) in exits {
            let r = w.guest.regs_mut();
            (r.vector, r.error_code, r.rflags) = (vector, error_code, rflags);
            (r.rax, r.rdi, r.rsi, r.rdx, r.r10) = (rax % 16, rdi, rsi, rdx, r10);
            w.exit(cr2);
            if w.guest.has_ended() {
                break;
            }
            w.guest.poll(u64::MAX);
            if w.enter().is_some() {
                let r = *w.guest.regs();
                prop_assert_eq!(r.rflags & (IF | IOPL3 | NT | VM), IF);
                prop_assert!(r.cs == KERNEL_CS || r.cs == USER_CS);
            }
        }
        let World { guest, mut frames, .. } = w;
        guest.teardown(&mut frames);
        prop_assert_eq!(frames.in_use(), 0);
    }
}

#[test]
fn bench_mark_counts_the_exits_between_its_two_calls() {
    let mut w = World::new();
    assert_eq!(w.call(Number::BenchMark, &[0, 7]), 0);
    for _ in 0..3 {
        w.call(Number::Nop, &[]);
    }
    assert_eq!(w.call(Number::BenchMark, &[1, 7]), 0);
    let printed = w.host.printed();
    let line = printed.last().expect("a bench events line");
    assert!(
        line.contains("bench events id=7 exits=3 guest_exits=3 host_interrupts=0 host_ticks=0 irq_handler_exits=0 hypercalls=3 page_faults=0"),
        "{line}"
    );
}

/// A host tick in a measured region, the virtual timer it brings and the
/// handler's re-arming hypercall are all told apart from what the guest's
/// own code did: a slow loop meets more ticks, never more guest exits.
#[test]
fn exits_of_an_interrupt_handler_are_not_the_guests_own() {
    /// The host's timer vector (`host_vector::TIMER`).
    const HOST_TICK_VECTOR: u8 = guest_abi::hypercall::host_vector::TIMER;
    let mut w = world_with_timer_handler();
    w.set_shared(shared::IRQ_ENABLED, 1);
    assert_eq!(w.call(Number::BenchMark, &[0, 9]), 0);
    // The host's timer: a host interrupt, and the guest's timer is
    // pending by then.
    assert_eq!(w.trap(HOST_TICK_VECTOR, 0), Next::Resume);
    w.set_shared(shared::IRQ_PENDING, 1 << (TIMER_VECTOR - 32));
    assert!(w.enter().is_some());
    assert_eq!(w.guest.regs().rip, TIMER_HANDLER);
    // The handler re-arms its timer, and takes another pending interrupt
    // with interrupts on (the runtime's `irq::enable` makes a `nop` exit
    // for it): both the interrupt's work...
    w.call(Number::SetTimer, &[1_000_000]);
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.call(Number::Nop, &[]);
    // ...and ends its interrupt (the runtime does, as its handler
    // returns); then the guest's own code makes one hypercall of its own.
    assert_eq!(w.shared(shared::IN_INTERRUPT), 1, "set at delivery");
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.set_shared(shared::IN_INTERRUPT, 0);
    w.call(Number::Nop, &[]);
    assert_eq!(w.call(Number::BenchMark, &[1, 9]), 0);
    let printed = w.host.printed();
    let line = printed.last().expect("a bench events line");
    assert!(
        line.contains(
            "exits=4 guest_exits=1 host_interrupts=1 host_ticks=1 irq_handler_exits=2 hypercalls=1"
        ),
        "{line}"
    );
}

#[test]
fn bench_mark_refuses_an_end_without_its_start() {
    let mut w = World::new();
    let refused = guest_abi::hypercall::Error::InvalidArgument.to_return_value();
    assert_eq!(w.call(Number::BenchMark, &[1, 7]), refused);
    assert_eq!(w.call(Number::BenchMark, &[0, 7]), 0);
    assert_eq!(w.call(Number::BenchMark, &[1, 8]), refused);
    assert_eq!(w.call(Number::BenchMark, &[2, 7]), refused);
    assert!(w.host.printed().is_empty());
}

#[test]
fn a_frame_that_straddles_two_stack_pages_is_written_to_both() {
    let mut w = World::new();
    assert_eq!(w.set_trap(13, HANDLER, 0), 0);
    w.set_shared(shared::IRQ_ENABLED, 1);
    // 16 bytes above a page boundary: rsp and ss land in the upper page,
    // the error code, rip, cs and rflags in the lower one.
    let rsp = STACK_TOP - 4096 + 16 + RED_ZONE_BYTES;
    w.in_kernel(TRAPPING_RIP, rsp);
    w.guest.regs_mut().rflags = IF | 2;
    assert_eq!(w.trap(13, 0x1234), Next::Resume);
    let frame = rsp - RED_ZONE_BYTES - 6 * 8;
    assert_eq!(w.guest.regs().rsp, frame);
    assert_eq!(
        w.words(frame, 6),
        [0x1234, TRAPPING_RIP, KERNEL_CS, IF | 2, rsp, KERNEL_SS]
    );
}

#[test]
fn a_new_kernel_stack_alone_does_not_rewrite_the_gates() {
    let mut w = World::new();
    let _ = w.guest.take_cpu_tables();
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    let (stack, gates) = w.guest.take_cpu_tables().expect("the stack changed");
    assert_eq!(stack, STACK_TOP);
    assert_eq!(
        gates.count(),
        0,
        "a context switch must not rewrite the IDT"
    );
}

#[test]
fn an_image_must_lie_in_the_start_up_map_of_whole_2_mib_pages() {
    use crate::paging::GuestMemory;
    // 3 MiB of memory: the start-up map covers the first 2 MiB only, so a
    // segment reaching past 2 MiB is refused rather than left unmapped.
    let image = Image::good();
    let (mem, loaded) = load_into(3 << 20, &image.bytes());
    assert!(loaded.is_ok(), "the good image lies below 2 MiB");
    assert_eq!(mem.size(), 3 << 20);
    let mut big = Image::good();
    let load = big.segments.iter_mut().find(|s| s.kind == PT_LOAD).unwrap();
    load.memsz = (2 << 20) - IMAGE_GPA + 4096;
    let (_, loaded) = load_into(3 << 20, &big.bytes());
    assert!(
        matches!(loaded, Err(LoadError::SegmentOutside { .. })),
        "{loaded:?}"
    );
}

#[test]
fn the_hosts_own_accesses_to_guest_memory_are_not_counted_as_guest_faults() {
    let mut w = World::new();
    assert_eq!(w.set_trap(6, HANDLER, 0), 0);
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    let before = w.guest.paging_stats().faults_fixed;
    assert_eq!(w.trap(6, 0), Next::Resume);
    assert_eq!(
        w.guest.paging_stats().faults_fixed,
        before,
        "writing the trap frame is the host's access, not a guest fault"
    );
    assert_eq!(
        w.words(STACK_TOP - RED_ZONE_BYTES - 5 * 8, 1),
        [TRAPPING_RIP]
    );
}

// ---------------------------------------------------------------------------
// Containment holes: a halt nothing can end, the shared page as a root.
// ---------------------------------------------------------------------------

#[test]
fn a_halt_with_nothing_to_wake_it_ends_the_guest_saying_so() {
    // Virtual interrupts off (as the guest starts) and no timer.
    let mut w = World::new();
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::HaltedForever {
            interrupts_off: true
        }
    );
    assert_eq!(
        w.kill_reason().to_string(),
        "halted with nothing to wake it (no interrupt pending, no timer armed, \
         virtual interrupts off)"
    );
    // Virtual interrupts on, and a timer that was cancelled.
    let mut w = World::new();
    w.set_shared(shared::IRQ_ENABLED, 1);
    w.call(Number::SetTimer, &[1_000]);
    w.call(Number::SetTimer, &[0]);
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::HaltedForever {
            interrupts_off: false
        }
    );
}

#[test]
fn the_runtimes_sleep_halting_with_interrupts_off_and_a_timer_still_wakes() {
    // images/guest-rt/src/time.rs: virtual interrupts off, timer armed.
    let mut w = World::new();
    assert_eq!(w.shared(shared::IRQ_ENABLED), 0);
    w.call(Number::SetTimer, &[500]);
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Halted);
    assert!(!w.guest.poll(BOOT_TIME + 499));
    assert!(w.guest.poll(BOOT_TIME + 500));
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn set_root_to_the_shared_page_kills_naming_it() {
    let mut w = World::new();
    assert_eq!(
        w.hypercall(Number::SetRoot as u64, &[SHARED_PAGE_GPA]),
        Next::Ended
    );
    assert_eq!(
        w.kill_reason(),
        &KillReason::Paging(PagingError::SharedPageAsRoot {
            root: SHARED_PAGE_GPA
        })
    );
    // The guest's memory (its clock word) was never used as a root.
    assert!(
        w.guest
            .paging
            .cached_roots()
            .all(|r| r.as_u64() != SHARED_PAGE_GPA)
    );
}

// ---------------------------------------------------------------------------
// Containment holes: direct traps on the host's own interrupt vectors.
// ---------------------------------------------------------------------------

#[test]
fn direct_traps_on_the_hosts_interrupt_vectors_are_refused_without_a_kill() {
    use guest_abi::hypercall::host_vector;
    let mut w = World::new();
    let invalid = Error::InvalidArgument.to_return_value();
    let direct = trap_flags::DIRECT_FROM_USER;
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    // The host's tick, the legacy PICs (first, last, and the slave's
    // first), the scheduler's IPI and the APIC's spurious vector: each an
    // error, nothing more.
    let host_vectors = [
        host_vector::TIMER,
        host_vector::LEGACY_PIC_BASE,
        host_vector::LEGACY_PIC_BASE + 8,
        host_vector::LEGACY_PIC_BASE + host_vector::LEGACY_PIC_LINES - 1,
        host_vector::SHOOTDOWN,
        host_vector::RESCHEDULE,
        host_vector::SPURIOUS,
    ];
    assert_eq!(host_vectors, [0x20, 0xe0, 0xe8, 0xef, 0xfd, 0xfe, 0xff]);
    for vector in host_vectors {
        assert_eq!(
            w.set_trap(u64::from(vector), HANDLER, direct),
            invalid,
            "{vector:#x}"
        );
        assert!(!w.guest.has_ended(), "a refused request is not an offence");
    }
    // Their neighbours are software vectors the guest may have.
    for vector in [0x21u8, 0xdf, 0xf0, 0xfc] {
        assert_eq!(
            w.set_trap(u64::from(vector), HANDLER, direct),
            0,
            "{vector:#x}"
        );
    }
    // The virtual timer has the host tick's number, but the host delivers
    // it: as an ordinary trap it is still the guest's.
    assert_eq!(w.set_trap(u64::from(TIMER_VECTOR), TIMER_HANDLER, 0), 0);
    let (_, gates) = w.guest.take_cpu_tables().expect("tables changed");
    let gates: Vec<(u8, Option<u64>)> = gates.collect();
    for vector in host_vectors {
        assert!(
            gates.contains(&(vector, None)),
            "{vector:#x} keeps the switcher's stub"
        );
    }
    let handed_out: Vec<u8> = gates
        .iter()
        .filter(|(_, handler)| handler.is_some())
        .map(|(vector, _)| *vector)
        .collect();
    assert_eq!(handed_out, [0x21, 0xdf, 0xf0, 0xfc]);
}

#[test]
fn no_direct_gate_is_ever_handed_out_on_a_host_vector() {
    // Whatever a guest asks, in any order, the CPU's IDT never gets a guest
    // handler on a vector the host's hardware interrupts use.
    let mut w = World::new();
    for vector in 0..=255u64 {
        let _ = w.set_trap(vector, HANDLER, trap_flags::DIRECT_FROM_USER);
    }
    assert!(!w.guest.has_ended());
    let (_, gates) = w.guest.take_cpu_tables().expect("tables changed");
    for (vector, handler) in gates {
        if guest_abi::hypercall::host_vector::contains(vector) {
            assert_eq!(handler, None, "{vector:#x}");
        }
    }
}

// ---------------------------------------------------------------------------
// Kill reasons that name what the guest did: a faulting `iretq`, control
// and debug registers, a direct trap with no kernel stack.
// ---------------------------------------------------------------------------

/// Where the `iretq` tests put the frame the instruction pops.
const IRET_FRAME: u64 = STACK_TOP - 5 * 8;

/// The guest kernel at `TRAPPING_RIP` executes `code` (an `iret`) with the
/// stack at [`IRET_FRAME`] holding `frame` (`slot` bytes a slot), and the
/// CPU raises `#GP(error_code)`.
fn iret_faults(w: &mut World, code: &[u8], frame: [u64; 5], slot: usize, error_code: u64) -> Next {
    let bytes: Vec<u8> = frame
        .iter()
        .flat_map(|word| word.to_le_bytes().into_iter().take(slot))
        .collect();
    w.poke(IRET_FRAME, &bytes);
    w.poke(TRAPPING_RIP, code);
    w.in_kernel(TRAPPING_RIP, IRET_FRAME);
    w.trap(13, error_code)
}

#[test]
fn an_iretq_to_ring_0_kills_naming_ring_0_not_iretq() {
    for with_handler in [false, true] {
        let mut w = World::new();
        if with_handler {
            w.set_trap(13, HANDLER, 0); // a handler does not save it
        }
        // The `trap` guest's `iretq-ring0`: the switcher's own selectors.
        let frame = [TRAPPING_RIP + 2, 0x08, IF | 2, STACK_TOP, 0x10];
        assert_eq!(
            iret_faults(&mut w, &[0x48, 0xcf], frame, 8, 0x08),
            Next::Ended
        );
        assert_eq!(
            w.kill_reason(),
            &KillReason::IretToRing0 {
                cs: 0x08,
                rip: TRAPPING_RIP
            }
        );
        let said = w.kill_reason().to_string();
        assert!(
            said.contains("iretq to ring 0 (its frame's cs is 0x8)"),
            "{said}"
        );
        assert!(!said.contains("privileged"), "{said}");
    }
}

#[test]
fn an_iretq_with_a_bad_frame_and_no_handler_kills_saying_what_was_wrong() {
    let mut w = World::new();
    let non_canonical = 0x8000_0000_0000;
    let frame = [non_canonical, KERNEL_CS, IF | 2, STACK_TOP, KERNEL_SS];
    assert_eq!(iret_faults(&mut w, &[0x48, 0xcf], frame, 8, 0), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::BadIret {
            problem: IretProblem::NonCanonicalRip(non_canonical),
            error_code: 0,
            rip: TRAPPING_RIP
        }
    );
    assert_eq!(
        w.kill_reason().to_string(),
        std::format!(
            "iretq with a bad frame at rip {TRAPPING_RIP:#x}: rip 0x800000000000 is not canonical: #GP(0x0)"
        )
    );
}

#[test]
fn an_iretq_with_a_bad_frame_is_the_guests_own_gp_when_it_has_a_handler() {
    let mut w = World::new();
    w.set_trap(13, HANDLER, 0);
    // A selector of the guest's own that is not code: the CPU says #GP(0x21).
    let frame = [ENTRY, 0x21, IF | 2, STACK_TOP, KERNEL_SS];
    assert_eq!(
        iret_faults(&mut w, &[0x48, 0xcf], frame, 8, 0x21),
        Next::Resume
    );
    assert_eq!(w.guest.regs().rip, HANDLER);
    let delivered = ((IRET_FRAME - RED_ZONE_BYTES) & !0xf) - 6 * 8;
    assert_eq!(w.guest.regs().rsp, delivered);
    assert_eq!(
        w.words(delivered, 6),
        [0x21, TRAPPING_RIP, KERNEL_CS, 2, IRET_FRAME, KERNEL_SS]
    );
    assert_eq!(w.guest.counters.exceptions, 1);
}

#[test]
fn a_32_bit_iret_is_judged_by_its_4_byte_frame() {
    let mut w = World::new();
    // The guest kernel's code selector with privilege 3 in its RPL.
    let frame = [0x10_0000, KERNEL_CS | 3, IF | 2, 0x30_0000, KERNEL_SS];
    assert_eq!(iret_faults(&mut w, &[0xcf], frame, 4, 0x1b), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::BadIret {
            problem: IretProblem::BadCode(0x1b),
            error_code: 0x1b,
            rip: TRAPPING_RIP
        }
    );
}

#[test]
fn an_iretq_with_nt_set_is_named() {
    let mut w = World::new();
    let frame = [ENTRY, KERNEL_CS, IF | 2, STACK_TOP, KERNEL_SS];
    w.poke(IRET_FRAME, &frame.map(u64::to_le_bytes).concat());
    w.poke(TRAPPING_RIP, &[0x48, 0xcf]);
    w.in_kernel(TRAPPING_RIP, IRET_FRAME);
    w.guest.regs_mut().rflags |= NT;
    assert_eq!(w.trap(13, 0), Next::Ended);
    let said = w.kill_reason().to_string();
    assert!(said.contains("RFLAGS.NT set"), "{said}");
}

#[test]
fn control_and_debug_register_accesses_are_named_exactly() {
    let cases: [(&[u8], &str); 6] = [
        (&[0x44, 0x0f, 0x22, 0xc0], "mov to cr8"),
        (&[0x44, 0x0f, 0x20, 0xc0], "mov from cr8"),
        (&[0x0f, 0x20, 0xd8], "mov from cr3"),
        (&[0x0f, 0x22, 0xe0], "mov to cr4"),
        (&[0x0f, 0x23, 0xf8], "mov to dr7"),
        (&[0x0f, 0x21, 0xf0], "mov from dr6"),
    ];
    for (code, what) in cases {
        let mut w = World::new();
        w.poke(TRAPPING_RIP, code);
        w.in_kernel(TRAPPING_RIP, STACK_TOP);
        assert_eq!(w.trap(13, 0), Next::Ended, "{what}");
        assert_eq!(
            w.kill_reason(),
            &KillReason::PrivilegedInstruction {
                what,
                rip: TRAPPING_RIP
            }
        );
    }
}

#[test]
fn the_direct_trap_stack_is_the_sentinel_until_the_guest_names_one() {
    let mut w = World::new();
    assert_eq!(w.set_trap(0x80, HANDLER, trap_flags::DIRECT_FROM_USER), 0);
    let (stack, _) = w.guest.take_cpu_tables().expect("tables changed");
    assert_eq!(stack, NO_KERNEL_STACK);
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    let (stack, _) = w.guest.take_cpu_tables().expect("the stack changed");
    assert_eq!(stack, STACK_TOP);
}

#[test]
fn a_direct_trap_taken_with_no_kernel_stack_is_named() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    assert_eq!(w.set_trap(0x80, HANDLER, trap_flags::DIRECT_FROM_USER), 0);
    // The user code's `int 0x80`, where the test can write it (the host
    // reads it through the guest's tables, as it reads any code).
    w.poke(TRAPPING_RIP, &[0xcd, 0x80]);
    w.in_user(TRAPPING_RIP, USER_RSP);
    // The CPU pushes SS first, just below RSP1, as a supervisor write.
    assert_eq!(w.page_fault(NO_KERNEL_STACK - 8, 2), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::NoKernelStack {
            vector: Some(0x80),
            rip: TRAPPING_RIP
        }
    );
    assert_eq!(
        w.kill_reason().to_string(),
        std::format!(
            "direct trap 0x80 taken with no kernel stack set (SetKernelStack) at rip {TRAPPING_RIP:#x}"
        )
    );
    // Code the host cannot read still gets the diagnosis, without the vector.
    let mut w = World::new();
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(NO_KERNEL_STACK - 40, 3), Next::Ended);
    assert_eq!(
        w.kill_reason(),
        &KillReason::NoKernelStack {
            vector: None,
            rip: USER_RIP
        }
    );
}

#[test]
fn only_the_cpus_own_push_from_user_mode_is_taken_for_a_missing_stack() {
    // The guest kernel writing there itself is a write to the switcher's
    // slot, as anywhere in it.
    let mut w = World::new();
    w.in_kernel(TRAPPING_RIP, STACK_TOP);
    assert_eq!(w.page_fault(NO_KERNEL_STACK - 8, 2), Next::Ended);
    assert!(matches!(w.kill_reason(), KillReason::SwitcherAccess { .. }));
    // User code writing there (the user bit set) likewise.
    let mut w = World::new();
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(NO_KERNEL_STACK - 8, 6), Next::Ended);
    assert!(matches!(w.kill_reason(), KillReason::SwitcherAccess { .. }));
    // With a kernel stack named, RSP1 is that stack, never the sentinel.
    let mut w = World::new();
    assert_eq!(w.call(Number::SetKernelStack, &[STACK_TOP]), 0);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(NO_KERNEL_STACK - 8, 2), Next::Ended);
    assert!(matches!(w.kill_reason(), KillReason::SwitcherAccess { .. }));
}

// Property tests of exits with arbitrary registers, over this module's
// `World`.
#[path = "exit_props.rs"]
mod exit_props;

// ---------------------------------------------------------------------------
// Thread-local storage and the red zone.
// ---------------------------------------------------------------------------

#[test]
fn set_fs_base_hands_a_canonical_base_to_the_host_and_refuses_others() {
    let mut w = World::new();
    assert_eq!(w.call(Number::SetFsBase, &[kva(0x20_0000)]), 0);
    assert_eq!(w.host.fs_base, Some(kva(0x20_0000)));
    assert_eq!(
        w.call(Number::SetFsBase, &[0x0000_8000_0000_0000]),
        Error::BadAddress.to_return_value()
    );
    assert_eq!(w.host.fs_base, Some(kva(0x20_0000)), "unchanged");
}

#[test]
fn a_trap_in_ring_1_leaves_the_red_zone_below_the_stack_pointer_alone() {
    let mut w = World::new();
    w.set_trap(6, HANDLER, 0);
    let rsp = STACK_TOP - 0x100;
    w.in_kernel(TRAPPING_RIP, rsp);
    let red_zone = rsp - RED_ZONE_BYTES..rsp;
    for (i, at) in red_zone.clone().step_by(8).enumerate() {
        w.guest
            .memory
            .set(at - KERNEL_OFFSET, 0xaaaa_0000 + i as u64);
    }
    assert_eq!(w.trap(6, 0), Next::Resume);
    for (i, at) in red_zone.step_by(8).enumerate() {
        assert_eq!(
            w.guest.memory.get(at - KERNEL_OFFSET),
            0xaaaa_0000 + i as u64
        );
    }
    assert!(w.guest.regs().rsp + 5 * 8 <= rsp - RED_ZONE_BYTES);
}

// ---------------------------------------------------------------------------
// Devices.
// ---------------------------------------------------------------------------

#[test]
fn every_guest_gets_a_console_an_entropy_source_and_a_network_card() {
    use core::mem::offset_of;
    use guest_abi::virtio::{DEVICE_PAGE_BYTES, DEVICE_PAGES_GPA, DevicePage, DeviceType};
    let w = World::new();
    let field = |offset: usize| BOOT_PARAMS_GPA + offset as u64;
    assert_eq!(
        w.guest
            .memory
            .get(field(offset_of!(BootParams, virtio_devices))),
        DEVICE_PAGES_GPA
    );
    assert_eq!(
        w.guest
            .memory
            .get(field(offset_of!(BootParams, virtio_device_count))),
        3
    );
    let types: Vec<u32> = (0..3)
        .map(|i| {
            let page = DEVICE_PAGES_GPA + i * DEVICE_PAGE_BYTES;
            let at = page + offset_of!(DevicePage, device_type) as u64;
            let mut bytes = [0; 4];
            w.guest
                .memory
                .read_bytes(GuestPhysAddr::new(at), &mut bytes)
                .unwrap();
            u32::from_le_bytes(bytes)
        })
        .collect();
    assert_eq!(
        types,
        [
            DeviceType::Console as u32,
            DeviceType::Rng as u32,
            DeviceType::Net as u32
        ]
    );
}

#[test]
fn a_device_call_for_a_device_that_does_not_exist_fails() {
    let mut w = World::new();
    let refused = Error::InvalidArgument.to_return_value();
    assert_eq!(w.call(Number::VirtioStatus, &[3]), refused);
    assert_eq!(w.call(Number::VirtioStatus, &[u64::MAX]), refused);
    assert_eq!(w.call(Number::VirtioNotify, &[7, 0]), refused);
    assert_eq!(w.call(Number::VirtioNotify, &[0, 9]), refused);
    assert_eq!(w.guest.state(), &GuestState::Runnable);
}

#[test]
fn a_halt_with_no_live_device_and_no_timer_ends_the_guest() {
    let mut w = World::new();
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Ended);
    assert!(matches!(w.kill_reason(), KillReason::HaltedForever { .. }));
}

#[test]
fn frames_for_a_guest_whose_card_is_not_running_are_dropped_without_waking_it() {
    let mut w = World::new();
    w.guest.receive_frames([&[0u8; 60][..]]);
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
    assert!(!w.guest.has_outbound_frames());
    assert_eq!(w.guest.take_outbound_frames().count(), 0);
}

// ---- Several vCPUs -------------------------------------------------------

/// A page of guest memory for a second vCPU's shared page.
const SECOND_SHARED_PAGE: u64 = 0x28_0000;
/// Where the second vCPU starts, and its stack.
const SECOND_ENTRY: u64 = HANDLER;
const SECOND_STACK: u64 = kva(0x38_0000);

/// Starts vCPU 1 of a guest of two; gives the call's result.
fn start_second(w: &mut World, page: u64) -> u64 {
    w.call(Number::StartVcpu, &[1, SECOND_ENTRY, SECOND_STACK, page])
}

#[test]
fn a_second_vcpu_starts_with_its_own_registers_shared_page_and_a_copy_of_the_traps() {
    let mut w = World::with_vcpus(1_000_000_000, 2);
    let vcpus_field = BOOT_PARAMS_GPA + core::mem::offset_of!(BootParams, vcpus) as u64;
    assert_eq!(
        w.guest.memory.get(vcpus_field),
        2,
        "the boot parameters say"
    );
    assert_eq!(w.set_trap(14, HANDLER, 0), 0);
    w.guest.memory.set(SECOND_SHARED_PAGE + 64, 0xdead);
    assert_eq!(start_second(&mut w, SECOND_SHARED_PAGE), 0);
    assert_eq!(w.guest.take_started_vcpus(), [1]);
    assert_eq!((w.guest.vcpus(), w.guest.max_vcpus()), (2, 2));
    let clock = [shared::CLOCK_TSC_BASE, shared::CLOCK_NS_PER_CYCLE];
    for offset in (0..4096).step_by(8) {
        let want = if clock.contains(&offset) {
            w.shared(offset)
        } else {
            0
        };
        assert_eq!(
            w.guest.memory.get(SECOND_SHARED_PAGE + offset),
            want,
            "{offset}"
        );
    }
    w.guest.activate(1);
    assert_eq!(w.guest.active_vcpu(), 1);
    let r = *w.guest.regs();
    assert_eq!((r.rip, r.rsp, r.rdi), (SECOND_ENTRY, SECOND_STACK, 1));
    assert_eq!((r.cs, r.ss), (KERNEL_CS, KERNEL_SS));
    assert!(w.guest.vcpu.traps[14].is_some(), "traps copied");
    assert_eq!(w.guest.vcpu.kernel_stack, None);
    // Its own trap table from now on.
    assert_eq!(w.set_trap(14, 0, 0), 0);
    w.guest.activate(0);
    assert!(w.guest.vcpu.traps[14].is_some());
    assert_eq!(w.guest.regs().rax, 0, "the caller's result is its own");
}

#[test]
fn start_vcpu_refuses_what_cannot_be_done_without_killing() {
    let mut w = World::with_vcpus(1_000_000_000, 2);
    let invalid = Error::InvalidArgument.to_return_value();
    let bad = Error::BadAddress.to_return_value();
    let page = SECOND_SHARED_PAGE;
    let cases = [
        ([2, SECOND_ENTRY, SECOND_STACK, page], invalid),
        ([0, SECOND_ENTRY, SECOND_STACK, page], invalid),
        ([u64::MAX, SECOND_ENTRY, SECOND_STACK, page], invalid),
        ([1, USER_RIP, SECOND_STACK, page], bad),
        ([1, SECOND_ENTRY, USER_RSP, page], bad),
        ([1, SWITCHER_ADDRESS, SECOND_STACK, page], bad),
        ([1, SECOND_ENTRY, SECOND_STACK, SHARED_PAGE_GPA], bad),
        ([1, SECOND_ENTRY, SECOND_STACK, MEMORY], bad),
        ([1, SECOND_ENTRY, SECOND_STACK, page + 8], bad),
        ([1, SECOND_ENTRY, SECOND_STACK, STARTUP_TABLES_GPA], bad),
    ];
    for (args, want) in cases {
        assert_eq!(w.call(Number::StartVcpu, &args), want, "{args:x?}");
        assert!(!w.guest.has_ended());
    }
    assert_eq!(w.guest.vcpus(), 1, "nothing started");
    assert_eq!(start_second(&mut w, page), 0);
    assert_eq!(
        start_second(&mut w, page + 4096),
        invalid,
        "started already"
    );
    assert_eq!(w.guest.vcpus(), 2);
}

#[test]
fn a_guest_of_one_vcpu_starts_no_other() {
    let mut w = World::new();
    assert_eq!(
        start_second(&mut w, SECOND_SHARED_PAGE),
        Error::InvalidArgument.to_return_value()
    );
    assert!(w.guest.take_started_vcpus().is_empty());
}

#[test]
fn a_second_vcpus_shared_page_is_never_a_root() {
    let mut w = World::with_vcpus(1_000_000_000, 2);
    assert_eq!(start_second(&mut w, SECOND_SHARED_PAGE), 0);
    assert_eq!(
        w.hypercall(Number::SetRoot as u64, &[SECOND_SHARED_PAGE]),
        Next::Ended
    );
    assert!(matches!(
        w.kill_reason(),
        KillReason::Paging(crate::paging::PagingError::SharedPageAsRoot { .. })
    ));
}

#[test]
fn an_interrupt_sent_to_another_vcpu_wakes_it_in_its_own_page() {
    let mut w = World::with_vcpus(1_000_000_000, 2);
    let invalid = Error::InvalidArgument.to_return_value();
    assert_eq!(w.call(Number::SendIpi, &[1, 40]), invalid, "not started");
    assert_eq!(start_second(&mut w, SECOND_SHARED_PAGE), 0);
    for (vcpu, vector) in [(2, 40), (u64::MAX, 40), (1, 31), (1, 96), (1, 0x1_0028)] {
        assert_eq!(
            w.call(Number::SendIpi, &[vcpu, vector]),
            invalid,
            "{vcpu} {vector}"
        );
    }
    // vCPU 1 halts with its interrupts off and nothing else to wake it:
    // allowed while vCPU 0 runs.
    w.guest.activate(1);
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Halted);
    w.guest.activate(0);
    assert_eq!(w.call(Number::SendIpi, &[1, 40]), 0);
    assert_eq!(w.guest.take_interrupted_vcpus(), 0b10);
    assert_eq!(w.guest.take_interrupted_vcpus(), 0, "told once");
    assert_eq!(w.shared(shared::IRQ_PENDING), 0, "not vCPU 0's");
    let pending = w.guest.memory.get(SECOND_SHARED_PAGE + shared::IRQ_PENDING);
    assert_eq!(pending, 1 << (40 - 32));
    w.guest.activate(1);
    assert_eq!(*w.guest.state(), GuestState::Runnable, "woken");
    // Its own interrupt, to itself, is just pending.
    assert_eq!(w.call(Number::SendIpi, &[1, 41]), 0);
    assert_eq!(w.guest.take_interrupted_vcpus(), 0);
    let pending = w.guest.memory.get(SECOND_SHARED_PAGE + shared::IRQ_PENDING);
    assert_eq!(pending, 0b11 << (40 - 32));
    assert!(!w.guest.has_ended());
}

#[test]
fn each_vcpu_has_its_own_timer_and_halt_and_an_end_ends_them_all() {
    let mut w = World::with_vcpus(1_000_000_000, 2);
    assert_eq!(start_second(&mut w, SECOND_SHARED_PAGE), 0);
    w.guest.activate(1);
    assert_eq!(w.call(Number::SetTimer, &[5_000]), 0);
    assert_eq!(w.hypercall(Number::Halt as u64, &[]), Next::Halted);
    assert_eq!(*w.guest.state(), GuestState::Halted);
    w.guest.activate(0);
    assert_eq!(w.guest.timer_deadline(), None);
    assert_eq!(*w.guest.state(), GuestState::Runnable, "vCPU 0 runs on");
    // vCPU 1's timer raises its own interrupt, in its own page.
    w.host.now += 5_000;
    w.guest.activate(1);
    assert!(w.guest.poll(w.host.now));
    let pending = w.guest.memory.get(SECOND_SHARED_PAGE + shared::IRQ_PENDING);
    assert_eq!(pending, 1 << (TIMER_VECTOR - 32));
    w.guest.activate(0);
    assert_eq!(w.shared(shared::IRQ_PENDING), 0);
    // vCPU 1 shuts the guest down: vCPU 0 enters no more.
    w.guest.activate(1);
    assert_eq!(w.hypercall(Number::Shutdown as u64, &[3]), Next::Ended);
    w.guest.activate(0);
    assert_eq!(*w.guest.state(), GuestState::Exited(3));
    assert!(w.enter().is_none());
    assert!(!w.guest.poll(w.host.now));
}

/// The lines printed for `text` (at `BUFFER`) written in pieces of
/// `sizes` (used in turn, round again if need be), then a shutdown.
fn console_lines_written_in(text: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut w = World::new();
    w.poke(BUFFER, text);
    let mut done = 0;
    for &size in sizes.iter().cycle() {
        if done == text.len() {
            break;
        }
        let n = size.min(text.len() - done);
        let at = BUFFER + done as u64;
        assert_eq!(w.call(Number::ConsoleWrite, &[at, n as u64]), n as u64);
        done += n;
    }
    assert_eq!(w.hypercall(Number::Shutdown as u64, &[0]), Next::Ended);
    w.host.lines.into_iter().map(|(_, line)| line).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However a guest's output is cut into writes, the same lines are
    /// printed (a whole line in one write is printed straight from it):
    /// each line as it is, broken every 512 bytes, a blank line too.
    #[test]
    fn console_lines_do_not_depend_on_how_the_output_is_cut(
        text in proptest::collection::vec(
            prop_oneof![8 => b'a'..=b'z', 1 => Just(b'\n'), 1 => any::<u8>()],
            0..1500,
        ),
        sizes in proptest::collection::vec(1usize..700, 1..6),
    ) {
        let mut expected = Vec::new();
        let mut lines = text.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                // A blank line; nothing after the last newline.
                if lines.peek().is_some() {
                    expected.push(Vec::new());
                }
            } else {
                expected.extend(line.chunks(512).map(<[u8]>::to_vec));
            }
        }
        prop_assert_eq!(&console_lines_written_in(&text, &[text.len().max(1)]), &expected);
        prop_assert_eq!(&console_lines_written_in(&text, &sizes), &expected);
    }
}

#[test]
fn console_lines_written_a_byte_at_a_time_are_the_same() {
    let text = b"one\n\ntwo\nthree";
    let lines = console_lines_written_in(text, &[1]);
    assert_eq!(lines, console_lines_written_in(text, &[text.len()]));
    assert_eq!(lines, [&b"one"[..], b"", b"two", b"three"]);
}

// ---------------------------------------------------------------------------
// The zero pool.
// ---------------------------------------------------------------------------

/// Where the zero-pool tests put their user page.
const ZERO_VA: u64 = 0x40_0000;

/// The guest's own tables for [`ZERO_VA`] in the running root: three
/// fresh tables under entry 0 of the top level, with a zero-on-demand
/// entry (user, writable) at the bottom. Gives the level-1 entry's address.
fn zero_on_demand_page(w: &mut World) -> u64 {
    let root = w.guest.paging.current_guest_root().as_u64();
    let (l3, l2, l1) = (0x38_0000, 0x38_1000, 0x38_2000);
    let table = guest_abi::pte::PRESENT | guest_abi::pte::WRITABLE | guest_abi::pte::USER;
    w.guest.memory.set(root, l3 | table);
    w.guest.memory.set(l3, l2 | table);
    w.guest.memory.set(l2 + 2 * 8, l1 | table);
    let marker = guest_abi::pte::zero_on_demand(guest_abi::pte::WRITABLE | guest_abi::pte::USER);
    w.guest.memory.set(l1, marker);
    l1
}

/// The guest lends `pages` in its pool.
fn lend(w: &mut World, pages: &[u64]) {
    let given = w.shared(shared::ZERO_POOL_GIVEN);
    for (n, &page) in (given..).zip(pages) {
        let slot = shared::ZERO_POOL_PAGES + (n % shared_abi::ZERO_POOL_SLOTS) * 8;
        w.set_shared(slot, page);
    }
    w.set_shared(shared::ZERO_POOL_GIVEN, given + pages.len() as u64);
}

#[test]
fn a_fault_on_a_zero_on_demand_page_takes_a_lent_page_in_one_exit() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    let entry_at = zero_on_demand_page(&mut w);
    lend(&mut w, &[0x39_0000, 0x39_1000]);
    w.guest.memory.set(0x39_0000 + 16, 77);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(ZERO_VA, 4 | 2), Next::Resume);
    assert_eq!(w.guest.regs().rip, USER_RIP, "no fault reached the guest");
    let entry = w.guest.memory.get(entry_at);
    assert_eq!(entry & guest_abi::pte::ADDRESS_MASK, 0x39_0000);
    assert_ne!(entry & guest_abi::pte::DIRTY, 0);
    assert_eq!(w.guest.memory.get(0x39_0000 + 16), 0, "zeroed");
    assert!(w.shadow_leaf(ZERO_VA).flags().contains(PteFlags::WRITABLE));
    assert_eq!(w.shared(shared::ZERO_POOL_TAKEN), 1);
    let stats = w.guest.paging_stats();
    assert_eq!((stats.pages_zeroed, stats.faults_reflected), (1, 0));
}

#[test]
fn with_the_pool_empty_the_fault_is_the_guests() {
    let mut w = World::new();
    w.set_trap(14, HANDLER, 0);
    w.call(Number::SetKernelStack, &[STACK_TOP]);
    let entry_at = zero_on_demand_page(&mut w);
    let marker = w.guest.memory.get(entry_at);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(ZERO_VA, 4), Next::Resume);
    assert_eq!(w.guest.regs().rip, HANDLER);
    assert_eq!(w.shared(shared::FAULT_ADDRESS), ZERO_VA);
    assert_eq!(w.words(STACK_TOP - 6 * 8, 1), [4], "not present, user read");
    assert_eq!(w.guest.memory.get(entry_at), marker, "left to the guest");
    assert_eq!(w.guest.paging_stats().faults_reflected, 1);
}

#[test]
fn a_pool_that_breaks_its_rules_kills_naming_what_it_lent() {
    let bad_page = |page: u64| {
        let mut w = World::new();
        zero_on_demand_page(&mut w);
        lend(&mut w, &[page]);
        w.in_user(USER_RIP, USER_RSP);
        assert_eq!(w.page_fault(ZERO_VA, 4), Next::Ended);
        w.kill_reason().clone()
    };
    for page in [MEMORY, 0x39_0010, !0xfff] {
        assert_eq!(
            bad_page(page),
            KillReason::ZeroPool(zero_pool::ZeroPoolError::Page {
                gpa: page,
                memory_size: MEMORY
            })
        );
    }
    let mut w = World::new();
    zero_on_demand_page(&mut w);
    w.set_shared(shared::ZERO_POOL_GIVEN, shared_abi::ZERO_POOL_SLOTS + 1);
    w.in_user(USER_RIP, USER_RSP);
    assert_eq!(w.page_fault(ZERO_VA, 4), Next::Ended);
    let reason = w.kill_reason().clone();
    assert_eq!(
        reason,
        KillReason::ZeroPool(zero_pool::ZeroPoolError::Counts {
            given: shared_abi::ZERO_POOL_SLOTS + 1,
            taken: 0
        })
    );
    assert!(reason.to_string().contains("65 pages given, 0 taken"));
}
