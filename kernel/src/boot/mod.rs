//! Boot: how we got here, and what the loader told us.
//!
//! [`entry`] holds the first instructions (32-bit, then long mode). This
//! module turns the loader's information, PVH start info or Multiboot2 tags,
//! into one [`BootInfo`] that the rest of the kernel reads: the memory map,
//! the command line and the boot modules. It is copied into kernel memory
//! right away, so nothing later depends on where the loader left its tables
//! (the frame allocator may hand those frames out).

mod entry;

use core::fmt;
use host::addr::HostPhysAddr;

/// Multiboot2 loaders put this in `eax`.
const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

/// How the kernel was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Xen's PVH direct boot (QEMU `-kernel`).
    Pvh,
    /// Multiboot2 (GRUB, from disk, CD or network).
    Multiboot2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pvh => "PVH",
            Protocol::Multiboot2 => "Multiboot2",
        })
    }
}

/// What a range of the physical memory map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// RAM we may use.
    Usable,
    /// ACPI tables (reclaimable once parsed).
    Acpi,
    /// ACPI non-volatile storage: keep away.
    AcpiNvs,
    /// Anything else: firmware, MMIO, broken RAM.
    Reserved,
}

/// One range `[start, end)` of the physical memory map.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// First byte.
    pub start: HostPhysAddr,
    /// One past the last byte.
    pub end: HostPhysAddr,
    /// What it holds.
    pub kind: RegionKind,
}

/// A boot module (a file the loader put in memory for us: the guest archive).
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// First byte.
    pub start: HostPhysAddr,
    /// One past the last byte.
    pub end: HostPhysAddr,
}

/// Where the ACPI tables start, as the loader told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiRoot {
    /// Not given: search the BIOS areas for the RSDP.
    Unknown,
    /// The RSDP's physical address (PVH).
    Rsdp(u64),
    /// The RSDT (revision 0) or XSDT (revision 2+) address, from the copy
    /// of the RSDP a Multiboot2 loader hands over.
    Rsdt {
        /// The RSDP's revision.
        revision: u8,
        /// The table's physical address.
        address: u64,
    },
}

const MAX_REGIONS: usize = 128;
const MAX_MODULES: usize = 8;
const MAX_CMDLINE: usize = 2048;

/// Everything the loader told us, copied out of its tables.
pub struct BootInfo {
    /// Which loader.
    pub protocol: Protocol,
    regions: [Region; MAX_REGIONS],
    region_count: usize,
    modules: [Module; MAX_MODULES],
    module_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Memory-map entries or modules that did not fit, or a command line cut
    /// short: reported once logging is up.
    pub truncated: bool,
    /// Where the loader's own information lies, so it can be kept out of the
    /// frame allocator until we are done reading it.
    pub loader_data: Region,
    /// Where the ACPI tables are.
    pub acpi: AcpiRoot,
    /// What the Multiboot2 loader left that we ignore (a framebuffer, EFI
    /// boot services still running), for the boot report.
    pub notes: &'static str,
}

impl BootInfo {
    const fn empty(protocol: Protocol) -> Self {
        const NOTHING: Region = Region {
            start: HostPhysAddr::new(0),
            end: HostPhysAddr::new(0),
            kind: RegionKind::Reserved,
        };
        Self {
            protocol,
            regions: [NOTHING; MAX_REGIONS],
            region_count: 0,
            modules: [Module {
                start: HostPhysAddr::new(0),
                end: HostPhysAddr::new(0),
            }; MAX_MODULES],
            module_count: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            truncated: false,
            loader_data: NOTHING,
            acpi: AcpiRoot::Unknown,
            notes: "",
        }
    }

    /// The physical memory map, in the loader's order.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.region_count]
    }

    /// The boot modules.
    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// The kernel command line (invalid UTF-8 is dropped with a warning).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        core::str::from_utf8(bytes).unwrap_or("")
    }

    fn push_region(&mut self, start: u64, len: u64, kind: RegionKind) {
        // Some firmware pads its map with empty entries.
        if len == 0 {
            return;
        }
        let Some(end) = start.checked_add(len) else {
            self.truncated = true;
            return;
        };
        match self.regions.get_mut(self.region_count) {
            Some(slot) => {
                *slot = Region {
                    start: HostPhysAddr::new(start),
                    end: HostPhysAddr::new(end),
                    kind,
                };
                self.region_count += 1;
            }
            None => self.truncated = true,
        }
    }

    fn push_module(&mut self, start: u64, end: u64) {
        match self.modules.get_mut(self.module_count) {
            Some(slot) if start <= end => {
                *slot = Module {
                    start: HostPhysAddr::new(start),
                    end: HostPhysAddr::new(end),
                };
                self.module_count += 1;
            }
            _ => self.truncated = true,
        }
    }

    fn set_cmdline(&mut self, line: &[u8]) {
        let len = line.len().min(MAX_CMDLINE);
        self.truncated |= len < line.len();
        self.cmdline[..len].copy_from_slice(&line[..len]);
        self.cmdline_len = len;
    }
}

/// Why the loader's information could not be read.
#[derive(Debug)]
pub enum BootError {
    /// `ebx` pointed at something that is not a PVH start info.
    NotPvh(u32),
    /// The Multiboot2 structure did not parse.
    BadMultiboot2,
    /// The loader gave no memory map.
    NoMemoryMap,
}

/// Reads the loader's information. `eax` and `ebx` are the registers the
/// loader entered with.
///
/// # Safety
///
/// Must run while the boot page tables (identity map of the first 4 GiB) are
/// live, with `ebx` exactly as the loader passed it.
pub unsafe fn read_loader_info(eax: u32, ebx: u32) -> Result<BootInfo, BootError> {
    if eax == MULTIBOOT2_MAGIC {
        // SAFETY: a Multiboot2 loader put its information at `ebx`; our caller
        // guarantees it is identity-mapped.
        unsafe { read_multiboot2(ebx) }
    } else {
        // SAFETY: as above, for a PVH loader.
        unsafe { read_pvh(ebx) }
    }
}

/// # Safety
///
/// `start_info` is the PVH start-info address, identity-mapped.
unsafe fn read_pvh(start_info: u32) -> Result<BootInfo, BootError> {
    use pvh::start_info::MemmapType;
    use pvh::start_info::reader::StartInfoReader;

    // SAFETY: identity-mapped and handed to us by the loader (caller's
    // contract); the reader checks the magic value.
    let reader = unsafe { StartInfoReader::from_paddr_identity(start_info) }
        .ok_or(BootError::NotPvh(start_info))?;
    let mut info = BootInfo::empty(Protocol::Pvh);
    for entry in reader.memmap() {
        let kind = match entry.ty() {
            MemmapType::Ram => RegionKind::Usable,
            MemmapType::Acpi => RegionKind::Acpi,
            MemmapType::Nvs => RegionKind::AcpiNvs,
            _ => RegionKind::Reserved,
        };
        info.push_region(entry.addr, entry.size, kind);
    }
    if info.region_count == 0 {
        return Err(BootError::NoMemoryMap);
    }
    // QEMU's PVH option ROM puts the module list at a 4-byte-aligned
    // address, which the reader refuses (its entries hold u64s): read the
    // entries unaligned ourselves.
    let raw = reader.raw();
    let list = raw.modlist_paddr as usize as *const pvh::start_info::ModlistEntry;
    for i in 0..raw.nr_modules.min(MAX_MODULES as u32 + 1) as usize {
        // SAFETY: the loader says `nr_modules` entries are at
        // `modlist_paddr`, identity-mapped (our caller's contract); the read
        // makes no alignment assumption.
        let entry = unsafe { list.wrapping_add(i).read_unaligned() };
        info.push_module(entry.paddr, entry.paddr.saturating_add(entry.size));
    }
    if let Some(line) = reader.cmdline() {
        info.set_cmdline(line.to_bytes());
    }
    if raw.rsdp_paddr != 0 {
        info.acpi = AcpiRoot::Rsdp(raw.rsdp_paddr);
    }
    // The start info, its memory map and its command line sit in low memory
    // below 1 MiB, which the kernel never hands out.
    info.loader_data = Region {
        start: HostPhysAddr::new(0),
        end: HostPhysAddr::new(0),
        kind: RegionKind::Reserved,
    };
    Ok(info)
}

/// # Safety
///
/// `mbi` is the Multiboot2 information address, identity-mapped.
unsafe fn read_multiboot2(mbi: u32) -> Result<BootInfo, BootError> {
    use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

    let header = mbi as usize as *const BootInformationHeader;
    // SAFETY: the loader put a Multiboot2 information structure there
    // (caller's contract); `load` checks its size and alignment.
    let mb = unsafe { BootInformation::load(header) }.map_err(|_| BootError::BadMultiboot2)?;
    let mut info = BootInfo::empty(Protocol::Multiboot2);
    if let Some(map) = mb.memory_map_tag() {
        for area in map.memory_areas() {
            let kind = match area.typ() {
                MemoryAreaType::Available => RegionKind::Usable,
                MemoryAreaType::AcpiAvailable => RegionKind::Acpi,
                MemoryAreaType::ReservedHibernate => RegionKind::AcpiNvs,
                _ => RegionKind::Reserved,
            };
            info.push_region(area.start_address(), area.size(), kind);
        }
    }
    if info.region_count == 0
        && let Some(efi) = mb.efi_memory_map_tag()
    {
        // GRUB on UEFI may give only the firmware's map.
        for area in efi.memory_areas() {
            use multiboot2::EFIMemoryAreaType as T;
            let kind = match area.ty {
                T::CONVENTIONAL
                | T::LOADER_CODE
                | T::LOADER_DATA
                | T::BOOT_SERVICES_CODE
                | T::BOOT_SERVICES_DATA => RegionKind::Usable,
                T::ACPI_RECLAIM => RegionKind::Acpi,
                T::ACPI_NON_VOLATILE => RegionKind::AcpiNvs,
                _ => RegionKind::Reserved,
            };
            info.push_region(area.phys_start, area.page_count * 4096, kind);
        }
    }
    if info.region_count == 0 {
        return Err(BootError::NoMemoryMap);
    }
    if let Some(rsdp) = mb.rsdp_v2_tag() {
        info.acpi = AcpiRoot::Rsdt {
            revision: rsdp.revision(),
            address: rsdp.xsdt_address() as u64,
        };
    } else if let Some(rsdp) = mb.rsdp_v1_tag() {
        info.acpi = AcpiRoot::Rsdt {
            revision: rsdp.revision(),
            address: rsdp.rsdt_address() as u64,
        };
    }
    info.notes = match (
        mb.framebuffer_tag().is_some(),
        mb.efi_bs_not_exited_tag().is_some(),
    ) {
        (_, true) => "EFI boot services were left running (ignored)",
        (true, false) => "a framebuffer was set up (ignored: the console is serial)",
        _ => "",
    };
    for module in mb.module_tags() {
        info.push_module(
            u64::from(module.start_address()),
            u64::from(module.end_address()),
        );
    }
    if let Some(Ok(line)) = mb.command_line_tag().map(|t| t.cmdline()) {
        info.set_cmdline(line.as_bytes());
    }
    info.loader_data = Region {
        start: HostPhysAddr::new(mb.start_address() as u64),
        end: HostPhysAddr::new(mb.end_address() as u64),
        kind: RegionKind::Reserved,
    };
    Ok(info)
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPvh(at) => write!(
                f,
                "no Multiboot2 magic in eax, and no PVH start info at {at:#x}: unknown loader"
            ),
            Self::BadMultiboot2 => f.write_str("the Multiboot2 information does not parse"),
            Self::NoMemoryMap => f.write_str("the loader gave no memory map"),
        }
    }
}
