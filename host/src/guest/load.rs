//! Loading a guest: its kernel image, its boot parameters, its start-up
//! page tables.
//!
//! The image is an ELF file from the guest archive, so it is hostile input
//! like everything else a guest supplies. Every loadable segment must lie
//! inside guest memory, above the pages the host uses for the boot
//! parameters and tables; the entry point must be inside a loaded
//! executable segment; the image must carry the ABI-version note. Anything
//! else is a [`LoadError`], and the guest never starts.
//!
//! Two kinds of image are accepted (see `guest_abi::boot`):
//!
//! - **linked where it runs** (`ET_EXEC`, the guests of `images/guests`):
//!   each segment at its physical address, and at the virtual address the
//!   start-up map gives that;
//! - **position-independent** (`ET_DYN`, a static PIE such as a Rust `std`
//!   program for the Hermit target): its link-time address 0 placed at
//!   guest-physical [`IMAGE_MIN_GPA`], and its `R_X86_64_RELATIVE`
//!   relocations applied for the virtual address the start-up map gives
//!   that. Each relocation must patch 8 bytes inside a loaded segment; any
//!   other kind, or another relocation table (`DT_REL`, `DT_RELR`, PLT
//!   relocations: a dynamic linker's work), is refused. Its thread-local
//!   storage template (`PT_TLS`) is the guest's to set up, but one larger
//!   than the guest's memory is refused here.

use super::{GuestRam, shared};
use crate::addr::GuestPhysAddr;
use core::fmt;
use elf::ElfBytes;
use elf::abi::{ET_DYN, ET_EXEC, PF_X, PT_DYNAMIC, PT_LOAD, PT_NOTE, PT_TLS};
use elf::endian::LittleEndian;
use elf::note::Note;
use elf::segment::ProgramHeader;
use guest_abi::boot::{
    BOOT_PARAMS_GPA, BootParams, CMDLINE_MAX, IMAGE_MIN_GPA, KERNEL_OFFSET, MAGIC, NOTE_NAME,
    NOTE_TYPE_ABI_VERSION, SHARED_PAGE_GPA, STARTUP_TABLES_GPA,
};

/// Why a guest image could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Not a 64-bit little-endian x86-64 ELF executable.
    NotElf,
    /// No ABI-version note.
    NoAbiNote,
    /// Built for another ABI version.
    AbiVersion {
        /// The version the image was built for.
        image: u32,
    },
    /// A segment falls outside guest memory or below the image area.
    SegmentOutside {
        /// Its physical address.
        paddr: u64,
        /// Its size in memory.
        memsz: u64,
    },
    /// A segment's virtual address is not the start-up map's for its
    /// physical address.
    SegmentNotInStartupMap {
        /// Its virtual address.
        vaddr: u64,
        /// Its physical address.
        paddr: u64,
    },
    /// The entry point is not in an executable loaded segment.
    BadEntry(u64),
    /// The guest's memory is too small for its tables and image.
    MemoryTooSmall(u64),
    /// A relocation of a kind the loader does not apply.
    UnsupportedRelocation {
        /// Its `r_type`.
        kind: u32,
    },
    /// A relocation table a static PIE does not have (`DT_REL`, `DT_RELR`,
    /// PLT relocations).
    UnsupportedRelocationTable(&'static str),
    /// The relocation table is not inside the image's file data.
    RelocationTableOutside,
    /// A relocation would patch bytes outside the loaded segments.
    RelocationOutside {
        /// Its offset from the image's link-time address 0.
        offset: u64,
    },
    /// The thread-local storage template is larger than guest memory.
    TlsTooLarge {
        /// Its size in memory.
        memsz: u64,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotElf => f.write_str("the image is not an x86-64 ELF executable"),
            Self::NoAbiNote => f.write_str("the image has no rguest ABI-version note"),
            Self::AbiVersion { image } => write!(
                f,
                "the image was built for ABI version {image}, the host speaks {}",
                guest_abi::ABI_VERSION
            ),
            Self::SegmentOutside { paddr, memsz } => write!(
                f,
                "a segment at gpa {paddr:#x} (+{memsz:#x}) falls outside the guest's image area"
            ),
            Self::SegmentNotInStartupMap { vaddr, paddr } => write!(
                f,
                "a segment at gva {vaddr:#x} / gpa {paddr:#x} is not where the start-up map puts it"
            ),
            Self::BadEntry(entry) => write!(
                f,
                "the entry point {entry:#x} is not in an executable segment"
            ),
            Self::MemoryTooSmall(size) => write!(f, "{size} bytes of guest memory is too small"),
            Self::UnsupportedRelocation { kind } => write!(
                f,
                "the image has a relocation of type {kind}; only R_X86_64_RELATIVE (8) is applied (link a static PIE)"
            ),
            Self::UnsupportedRelocationTable(what) => write!(
                f,
                "the image has {what}, which needs a dynamic linker (link a static PIE)"
            ),
            Self::RelocationTableOutside => {
                f.write_str("the image's relocation table is outside its file data")
            }
            Self::RelocationOutside { offset } => write!(
                f,
                "a relocation at image offset {offset:#x} falls outside the loaded segments"
            ),
            Self::TlsTooLarge { memsz } => write!(
                f,
                "the thread-local storage segment ({memsz} bytes) is larger than the guest's memory"
            ),
        }
    }
}

/// What loading produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The guest-virtual entry point.
    pub entry: u64,
    /// The first guest-physical byte after the image.
    pub image_end: u64,
    /// The guest-virtual address of the boot parameters (for `rdi`).
    pub boot_params: u64,
    /// The guest-physical address of the start-up top-level table.
    pub root: u64,
}

/// What the host tells every guest about the machine besides its memory:
/// the [`guest_abi::boot::feature`] bits, and its clock's parameters for
/// the shared page (`SharedPage::clock_tsc_base`, `clock_ns_per_cycle`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// [`guest_abi::boot::feature`] bits.
    pub features: u64,
    /// The TSC value at which the host's clock reads 0.
    pub clock_tsc_base: u64,
    /// Nanoseconds per TSC cycle, 32.32 fixed point (0: no clock offered).
    pub clock_ns_per_cycle: u64,
}

/// Where an image's segments go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// `ET_EXEC`: at their physical addresses, which the start-up map shows
    /// at their virtual ones.
    Linked,
    /// `ET_DYN`: link-time address `a` at guest-physical `IMAGE_MIN_GPA + a`.
    Relocated,
}

impl Placement {
    /// The guest-virtual address link-time 0 ends up at (0 for a linked
    /// image, whose link-time addresses are its run-time ones).
    fn bias(self) -> u64 {
        match self {
            Placement::Linked => 0,
            Placement::Relocated => KERNEL_OFFSET + IMAGE_MIN_GPA,
        }
    }

    /// The guest-physical address of segment `phdr`, checked against the
    /// start-up map for a linked image.
    fn gpa(self, phdr: &ProgramHeader) -> Result<u64, LoadError> {
        match self {
            Placement::Linked => {
                if phdr.p_vaddr != KERNEL_OFFSET.wrapping_add(phdr.p_paddr) {
                    return Err(LoadError::SegmentNotInStartupMap {
                        vaddr: phdr.p_vaddr,
                        paddr: phdr.p_paddr,
                    });
                }
                Ok(phdr.p_paddr)
            }
            Placement::Relocated => {
                IMAGE_MIN_GPA
                    .checked_add(phdr.p_vaddr)
                    .ok_or(LoadError::SegmentOutside {
                        paddr: phdr.p_vaddr,
                        memsz: phdr.p_memsz,
                    })
            }
        }
    }
}

/// How much of guest memory the start-up map covers at most.
const STARTUP_MAP_LIMIT: u64 = 1 << 30;

/// The bytes of guest memory the start-up map covers: whole 2 MiB pages
/// of it, up to [`STARTUP_MAP_LIMIT`]. An image must lie inside them, or its
/// entry would fault before the guest could map anything itself.
fn startup_mapped(memory: u64) -> u64 {
    memory.min(STARTUP_MAP_LIMIT) & !((2 << 20) - 1)
}

/// Loads `image` into `mem`, writes the boot parameters (with `cmdline`
/// and what `platform` offers) and the start-up tables.
pub fn load<M: GuestRam>(
    mem: &mut M,
    image: &[u8],
    cmdline: &str,
    platform: &Platform,
) -> Result<LoadedImage, LoadError> {
    let size = mem.size();
    let tables_end = startup_tables_end(size);
    if size < IMAGE_MIN_GPA + 0x1000 || tables_end > IMAGE_MIN_GPA {
        return Err(LoadError::MemoryTooSmall(size));
    }
    let elf = ElfBytes::<LittleEndian>::minimal_parse(image).map_err(|_| LoadError::NotElf)?;
    if elf.ehdr.e_machine != elf::abi::EM_X86_64 || elf.ehdr.class != elf::file::Class::ELF64 {
        return Err(LoadError::NotElf);
    }
    let placement = match elf.ehdr.e_type {
        ET_EXEC => Placement::Linked,
        ET_DYN => Placement::Relocated,
        _ => return Err(LoadError::NotElf),
    };
    check_abi_note(&elf)?;
    let segments = elf.segments().ok_or(LoadError::NotElf)?;
    let mut image_end = IMAGE_MIN_GPA;
    let mut entry_ok = false;
    let bias = placement.bias();
    let entry = elf.ehdr.e_entry.wrapping_add(bias);
    for phdr in segments.iter().filter(|p| p.p_type == PT_LOAD) {
        let gpa = placement.gpa(&phdr)?;
        let outside = SegmentOutside(gpa, phdr.p_memsz);
        match gpa.checked_add(phdr.p_memsz) {
            Some(end) if gpa >= IMAGE_MIN_GPA && end <= startup_mapped(size) => {
                image_end = image_end.max(end);
            }
            _ => return Err(outside.into()),
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(outside.into());
        }
        let data = elf.segment_data(&phdr).map_err(|_| LoadError::NotElf)?;
        mem.write_bytes(GuestPhysAddr::new(gpa), data)
            .map_err(|_| LoadError::from(outside))?;
        zero(mem, gpa + phdr.p_filesz, phdr.p_memsz - phdr.p_filesz)
            .map_err(|_| LoadError::from(outside))?;
        let vaddr = KERNEL_OFFSET + gpa;
        let in_segment = entry >= vaddr && entry - vaddr < phdr.p_memsz;
        entry_ok |= in_segment && phdr.p_flags & PF_X != 0;
    }
    if !entry_ok {
        return Err(LoadError::BadEntry(entry));
    }
    if let Some(tls) = segments.iter().find(|p| p.p_type == PT_TLS)
        && tls.p_memsz > size
    {
        return Err(LoadError::TlsTooLarge { memsz: tls.p_memsz });
    }
    if placement == Placement::Relocated {
        relocate(mem, &elf, bias)?;
    }
    write_boot_params(mem, image_end, cmdline, platform, bias)?;
    write_startup_tables(mem)?;
    Ok(LoadedImage {
        entry,
        image_end,
        boot_params: KERNEL_OFFSET + BOOT_PARAMS_GPA,
        root: STARTUP_TABLES_GPA,
    })
}

/// Applies a position-independent image's relocations, now that its
/// segments are in `mem`, for link-time 0 at guest-virtual `bias`.
fn relocate<M: GuestRam>(
    mem: &mut M,
    elf: &ElfBytes<'_, LittleEndian>,
    bias: u64,
) -> Result<(), LoadError> {
    let segments = elf.segments().ok_or(LoadError::NotElf)?;
    let Some(dynamic) = segments.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        // No dynamic section: nothing to relocate.
        return Ok(());
    };
    let data = elf.segment_data(&dynamic).map_err(|_| LoadError::NotElf)?;
    let table = RelocationTable::read(elf::dynamic::DynamicTable::new(
        LittleEndian,
        elf::file::Class::ELF64,
        data,
    ))?;
    if table.bytes == 0 {
        return Ok(());
    }
    let bytes = file_bytes_at(elf, table.address, table.bytes)?;
    let relocations =
        elf::relocation::RelaIterator::new(LittleEndian, elf::file::Class::ELF64, bytes);
    for rela in relocations {
        match rela.r_type {
            elf::abi::R_X86_64_NONE => continue,
            elf::abi::R_X86_64_RELATIVE if rela.r_sym == 0 => {}
            kind => return Err(LoadError::UnsupportedRelocation { kind }),
        }
        let outside = LoadError::RelocationOutside {
            offset: rela.r_offset,
        };
        if !segments
            .iter()
            .any(|p| p.p_type == PT_LOAD && contains(&p, rela.r_offset, 8))
        {
            return Err(outside);
        }
        let target = IMAGE_MIN_GPA.checked_add(rela.r_offset).ok_or(outside)?;
        let value = bias.wrapping_add_signed(rela.r_addend);
        mem.write_u64(GuestPhysAddr::new(target), value)
            .map_err(|_| outside)?;
    }
    Ok(())
}

/// Where the `DT_RELA` table is, from the dynamic section.
struct RelocationTable {
    /// Its link-time address.
    address: u64,
    /// Its size in bytes.
    bytes: u64,
}

impl RelocationTable {
    fn read(dynamic: elf::dynamic::DynamicTable<'_, LittleEndian>) -> Result<Self, LoadError> {
        use elf::abi::{
            DT_JMPREL, DT_NULL, DT_PLTRELSZ, DT_REL, DT_RELA, DT_RELAENT, DT_RELASZ, DT_RELSZ,
        };
        /// `DT_RELRSZ` and `DT_RELR` (packed relative relocations).
        const DT_RELRSZ: i64 = 35;
        const DT_RELR: i64 = 36;
        let mut table = Self {
            address: 0,
            bytes: 0,
        };
        for entry in dynamic.iter() {
            let value = entry.d_val();
            match entry.d_tag {
                DT_NULL => break,
                DT_RELA => table.address = value,
                DT_RELASZ => table.bytes = value,
                DT_RELAENT if value != 24 => return Err(LoadError::RelocationTableOutside),
                DT_REL | DT_RELSZ if value != 0 => {
                    return Err(LoadError::UnsupportedRelocationTable("REL relocations"));
                }
                DT_JMPREL | DT_PLTRELSZ if value != 0 => {
                    return Err(LoadError::UnsupportedRelocationTable("PLT relocations"));
                }
                DT_RELR | DT_RELRSZ if value != 0 => {
                    return Err(LoadError::UnsupportedRelocationTable(
                        "packed (RELR) relocations",
                    ));
                }
                _ => {}
            }
        }
        Ok(table)
    }
}

/// Whether segment `phdr` holds the `len` bytes at link-time `offset`.
fn contains(phdr: &ProgramHeader, offset: u64, len: u64) -> bool {
    offset >= phdr.p_vaddr
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= phdr.p_vaddr.saturating_add(phdr.p_memsz))
}

/// The file bytes that a loaded segment puts at link-time `address`, `len`
/// of them, all from one segment's file data.
fn file_bytes_at<'a>(
    elf: &ElfBytes<'a, LittleEndian>,
    address: u64,
    len: u64,
) -> Result<&'a [u8], LoadError> {
    let segments = elf.segments().ok_or(LoadError::NotElf)?;
    let phdr = segments
        .iter()
        .find(|p| {
            p.p_type == PT_LOAD
                && address >= p.p_vaddr
                && address
                    .checked_add(len)
                    .is_some_and(|end| end <= p.p_vaddr.saturating_add(p.p_filesz))
        })
        .ok_or(LoadError::RelocationTableOutside)?;
    let data = elf
        .segment_data(&phdr)
        .map_err(|_| LoadError::RelocationTableOutside)?;
    let start = usize::try_from(address - phdr.p_vaddr).map_err(|_| LoadError::NotElf)?;
    let len = usize::try_from(len).map_err(|_| LoadError::NotElf)?;
    data.get(start..start + len)
        .ok_or(LoadError::RelocationTableOutside)
}

/// A segment that does not fit: the pieces of [`LoadError::SegmentOutside`].
#[derive(Clone, Copy)]
struct SegmentOutside(u64, u64);

impl From<SegmentOutside> for LoadError {
    fn from(SegmentOutside(paddr, memsz): SegmentOutside) -> Self {
        LoadError::SegmentOutside { paddr, memsz }
    }
}

fn check_abi_note(elf: &ElfBytes<'_, LittleEndian>) -> Result<(), LoadError> {
    let segments = elf.segments().ok_or(LoadError::NoAbiNote)?;
    for phdr in segments.iter().filter(|p| p.p_type == PT_NOTE) {
        let Ok(notes) = elf.segment_data_as_notes(&phdr) else {
            continue;
        };
        for note in notes {
            let Note::Unknown(note) = note else { continue };
            let name_matches =
                note.name == NOTE_NAME || note.name == &NOTE_NAME[..NOTE_NAME.len() - 1];
            if name_matches && note.n_type == u64::from(NOTE_TYPE_ABI_VERSION) {
                let version = note
                    .desc
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or(LoadError::NoAbiNote)?;
                return if version == guest_abi::ABI_VERSION {
                    Ok(())
                } else {
                    Err(LoadError::AbiVersion { image: version })
                };
            }
        }
    }
    Err(LoadError::NoAbiNote)
}

fn zero<M: GuestRam>(
    mem: &mut M,
    start: u64,
    len: u64,
) -> Result<(), crate::paging::OutsideGuestMemory> {
    const ZEROES: [u8; 512] = [0; 512];
    let mut at = start;
    let end = start + len;
    while at < end {
        let n = (end - at).min(ZEROES.len() as u64);
        mem.write_bytes(GuestPhysAddr::new(at), &ZEROES[..n as usize])?;
        at += n;
    }
    Ok(())
}

fn write_boot_params<M: GuestRam>(
    mem: &mut M,
    image_end: u64,
    cmdline: &str,
    platform: &Platform,
    load_bias: u64,
) -> Result<(), LoadError> {
    let len = cmdline.len().min(CMDLINE_MAX);
    let mut params = BootParams {
        magic: MAGIC,
        abi_version: guest_abi::ABI_VERSION,
        memory_bytes: mem.size(),
        shared_page: KERNEL_OFFSET + SHARED_PAGE_GPA,
        image_end,
        initial_root: STARTUP_TABLES_GPA,
        cmdline_len: len as u64,
        cmdline: [0; CMDLINE_MAX],
        features: platform.features,
        load_bias,
        // The guest's devices write these (`Guest::new`).
        virtio_devices: 0,
        virtio_device_count: 0,
        // `Guest::new` writes a guest's own count.
        vcpus: 1,
    };
    params.cmdline[..len].copy_from_slice(&cmdline.as_bytes()[..len]);
    let too_small = LoadError::MemoryTooSmall(mem.size());
    mem.write_bytes(
        GuestPhysAddr::new(BOOT_PARAMS_GPA),
        &boot_params_bytes(&params),
    )
    .map_err(|_| too_small)?;
    zero(mem, SHARED_PAGE_GPA, 4096).map_err(|_| too_small)?;
    let clock = [
        (shared::CLOCK_TSC_BASE, platform.clock_tsc_base),
        (shared::CLOCK_NS_PER_CYCLE, platform.clock_ns_per_cycle),
    ];
    for (offset, value) in clock {
        mem.write_u64(GuestPhysAddr::new(SHARED_PAGE_GPA + offset), value)
            .map_err(|_| too_small)?;
    }
    Ok(())
}

/// `BootParams` as the bytes of its `repr(C)` layout, field by field (no
/// `unsafe` transmute in this crate).
fn boot_params_bytes(p: &BootParams) -> [u8; size_of::<BootParams>()] {
    let mut out = [0u8; size_of::<BootParams>()];
    let mut put =
        |offset: usize, bytes: &[u8]| out[offset..offset + bytes.len()].copy_from_slice(bytes);
    use core::mem::offset_of;
    put(offset_of!(BootParams, magic), &p.magic.to_le_bytes());
    put(
        offset_of!(BootParams, abi_version),
        &p.abi_version.to_le_bytes(),
    );
    put(
        offset_of!(BootParams, memory_bytes),
        &p.memory_bytes.to_le_bytes(),
    );
    put(
        offset_of!(BootParams, shared_page),
        &p.shared_page.to_le_bytes(),
    );
    put(
        offset_of!(BootParams, image_end),
        &p.image_end.to_le_bytes(),
    );
    put(
        offset_of!(BootParams, initial_root),
        &p.initial_root.to_le_bytes(),
    );
    put(
        offset_of!(BootParams, cmdline_len),
        &p.cmdline_len.to_le_bytes(),
    );
    put(offset_of!(BootParams, cmdline), &p.cmdline);
    put(offset_of!(BootParams, features), &p.features.to_le_bytes());
    put(
        offset_of!(BootParams, load_bias),
        &p.load_bias.to_le_bytes(),
    );
    put(offset_of!(BootParams, vcpus), &p.vcpus.to_le_bytes());
    out
}

/// One top-level table, one third-level table, then one second-level table
/// per GiB mapped.
fn startup_tables_end(memory: u64) -> u64 {
    let gib = memory.min(STARTUP_MAP_LIMIT).div_ceil(1 << 30);
    STARTUP_TABLES_GPA + (2 + gib) * 4096
}

/// Builds the start-up map: guest-virtual `KERNEL_OFFSET + p` -> `p` with
/// 2 MiB pages, supervisor, writable, accessed and dirty (so the first
/// touches need no A/D emulation).
fn write_startup_tables<M: GuestRam>(mem: &mut M) -> Result<(), LoadError> {
    use guest_abi::pte::{ACCESSED, DIRTY, HUGE_PAGE, PRESENT, WRITABLE};
    let size = mem.size().min(STARTUP_MAP_LIMIT);
    let too_small = LoadError::MemoryTooSmall(mem.size());
    let pml4 = STARTUP_TABLES_GPA;
    let pdpt = pml4 + 4096;
    let pd = pdpt + 4096;
    zero(mem, pml4, startup_tables_end(size) - pml4).map_err(|_| too_small)?;
    let table = PRESENT | WRITABLE | ACCESSED;
    let kernel_slot = (KERNEL_OFFSET >> 39) & 0x1ff;
    let mut put = |gpa: u64, value: u64| {
        mem.write_u64(GuestPhysAddr::new(gpa), value)
            .map_err(|_| too_small)
    };
    put(pml4 + 8 * kernel_slot, pdpt | table)?;
    for gib in 0..size.div_ceil(1 << 30) {
        put(pdpt + 8 * gib, (pd + gib * 4096) | table)?;
    }
    for page in 0..size / (2 << 20) {
        let leaf = (page << 21) | PRESENT | WRITABLE | ACCESSED | DIRTY | HUGE_PAGE;
        put(pd + 8 * page, leaf)?;
    }
    Ok(())
}
