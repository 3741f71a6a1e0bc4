//! ACPI, read once at boot for one fact: how many CPUs the machine has.
//!
//! The loader says where the tables start (PVH's `rsdp_paddr`, a
//! Multiboot2 RSDP tag), or we search the BIOS areas as on any PC. The
//! `acpi` crate walks the tables; we map each region it asks for into the
//! device window (tables may sit in memory the direct map leaves out).
//! Counting the MADT's enabled local APICs gives the CPUs the host could
//! use; for now it runs on the boot CPU and says so.

use crate::boot::AcpiRoot;
use crate::memory::paging::map_mmio;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use host::addr::HostPhysAddr;

/// Maps ACPI regions through the kernel's device window.
#[derive(Clone, Copy)]
struct Mapper;

impl AcpiHandler for Mapper {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = map_mmio(HostPhysAddr::new(physical_address as u64), size as u64)
            .ok()
            .and_then(|v| NonNull::new(v.as_mut_ptr::<T>()))
            .unwrap_or(NonNull::dangling());
        // SAFETY: `virt` maps `size` bytes from `physical_address` (or, if
        // mapping failed, is dangling and `acpi` fails on the first read:
        // a page fault report rather than silent garbage).
        unsafe { PhysicalMapping::new(physical_address, virt, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // The window is small and boot-time only: mappings stay.
    }
}

/// What the MADT says about the processors.
#[derive(Clone, Copy, Debug)]
pub struct CpuCount {
    /// Processors enabled now.
    pub enabled: u32,
    /// Processors that could be brought online later.
    pub online_capable: u32,
}

/// Counts the CPUs in the MADT, or says why it could not.
pub fn count_cpus(root: AcpiRoot) -> Result<CpuCount, acpi::AcpiError> {
    // SAFETY: the addresses come from the loader (or the BIOS search,
    // which checks signatures and checksums); `Mapper` maps what is asked.
    let tables = unsafe {
        match root {
            AcpiRoot::Rsdp(address) => AcpiTables::from_rsdp(Mapper, address as usize),
            AcpiRoot::Rsdt { revision, address } => {
                AcpiTables::from_rsdt(Mapper, revision, address as usize)
            }
            AcpiRoot::Unknown => AcpiTables::search_for_rsdp_bios(Mapper),
        }
    }?;
    let madt = tables.find_table::<Madt>()?;
    let mut count = CpuCount {
        enabled: 0,
        online_capable: 0,
    };
    for entry in madt.get().entries() {
        let flags = match entry {
            MadtEntry::LocalApic(apic) => apic.flags,
            MadtEntry::LocalX2Apic(apic) => apic.flags,
            _ => continue,
        };
        if flags & 1 != 0 {
            count.enabled += 1;
        } else if flags & 2 != 0 {
            count.online_capable += 1;
        }
    }
    Ok(count)
}
