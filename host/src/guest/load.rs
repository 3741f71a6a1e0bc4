//! Loading a guest: its kernel image, its boot parameters, its start-up
//! page tables.
//!
//! The image is an ELF file from the guest archive, so it is hostile input
//! like everything else a guest supplies. Every loadable segment must lie
//! inside guest memory, above the pages the host uses for the boot
//! parameters and tables, and at the virtual address the start-up map gives
//! its physical address; the entry point must be inside a loaded
//! executable segment; the image must carry the ABI-version note. Anything
//! else is a [`LoadError`], and the guest never starts.

use super::GuestRam;
use crate::addr::GuestPhysAddr;
use core::fmt;
use elf::ElfBytes;
use elf::abi::{PF_X, PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::note::Note;
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

/// How much of guest memory the start-up map covers at most.
const STARTUP_MAP_LIMIT: u64 = 1 << 30;

/// The bytes of guest memory the start-up map covers: whole 2 MiB pages
/// of it, up to [`STARTUP_MAP_LIMIT`]. An image must lie inside them, or its
/// entry would fault before the guest could map anything itself.
fn startup_mapped(memory: u64) -> u64 {
    memory.min(STARTUP_MAP_LIMIT) & !((2 << 20) - 1)
}

/// Loads `image` into `mem`, writes the boot parameters (with `cmdline`)
/// and the start-up tables.
pub fn load<M: GuestRam>(
    mem: &mut M,
    image: &[u8],
    cmdline: &str,
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
    check_abi_note(&elf)?;
    let segments = elf.segments().ok_or(LoadError::NotElf)?;
    let mut image_end = IMAGE_MIN_GPA;
    let mut entry_ok = false;
    let entry = elf.ehdr.e_entry;
    for phdr in segments.iter().filter(|p| p.p_type == PT_LOAD) {
        let end = phdr.p_paddr.checked_add(phdr.p_memsz);
        let outside = SegmentOutside(phdr.p_paddr, phdr.p_memsz);
        match end {
            Some(end) if phdr.p_paddr >= IMAGE_MIN_GPA && end <= startup_mapped(size) => {
                image_end = image_end.max(end);
            }
            _ => return Err(outside.into()),
        }
        if phdr.p_vaddr != KERNEL_OFFSET.wrapping_add(phdr.p_paddr) {
            return Err(LoadError::SegmentNotInStartupMap {
                vaddr: phdr.p_vaddr,
                paddr: phdr.p_paddr,
            });
        }
        if phdr.p_filesz > phdr.p_memsz {
            return Err(outside.into());
        }
        let data = elf.segment_data(&phdr).map_err(|_| LoadError::NotElf)?;
        let gpa = GuestPhysAddr::new(phdr.p_paddr);
        mem.write_bytes(gpa, data)
            .map_err(|_| LoadError::from(outside))?;
        zero(
            mem,
            phdr.p_paddr + phdr.p_filesz,
            phdr.p_memsz - phdr.p_filesz,
        )
        .map_err(|_| LoadError::from(outside))?;
        let in_segment = entry >= phdr.p_vaddr && entry - phdr.p_vaddr < phdr.p_memsz;
        entry_ok |= in_segment && phdr.p_flags & PF_X != 0;
    }
    if !entry_ok {
        return Err(LoadError::BadEntry(entry));
    }
    write_boot_params(mem, image_end, cmdline)?;
    write_startup_tables(mem)?;
    Ok(LoadedImage {
        entry,
        image_end,
        boot_params: KERNEL_OFFSET + BOOT_PARAMS_GPA,
        root: STARTUP_TABLES_GPA,
    })
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
    };
    params.cmdline[..len].copy_from_slice(&cmdline.as_bytes()[..len]);
    let too_small = LoadError::MemoryTooSmall(mem.size());
    mem.write_bytes(
        GuestPhysAddr::new(BOOT_PARAMS_GPA),
        &boot_params_bytes(&params),
    )
    .map_err(|_| too_small)?;
    zero(mem, SHARED_PAGE_GPA, 4096).map_err(|_| too_small)
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
