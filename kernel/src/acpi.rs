//! ACPI, read once at boot for one fact: which CPUs the machine has.
//!
//! The loader says where the tables start (PVH's `rsdp_paddr`, a
//! Multiboot2 RSDP tag), or we search the BIOS areas as on any PC. The
//! `acpi` crate walks the tables; we map each region it asks for into the
//! device window (tables may sit in memory the direct map leaves out).
//! The MADT's enabled local APICs are the CPUs the host may use: their
//! APIC ids are what [`crate::smp`] sends its start-up interrupts to.

use crate::boot::AcpiRoot;
use crate::memory::paging::map_mmio;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
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
#[derive(Clone, Debug, Default)]
pub struct Processors {
    /// The local APIC ids of the processors enabled now, in the MADT's
    /// order (the boot CPU's among them).
    pub apic_ids: Vec<u32>,
    /// Processors that could be brought online later (not started).
    pub online_capable: u32,
    /// The MADT describes a multiprocessor wake-up mailbox (ACPI 6.4; used
    /// by confidential VMs, which have no INIT-SIPI-SIPI): reported, not
    /// used.
    pub wakeup_mailbox: bool,
}

/// Reads the processor list from the MADT, or says why it could not.
pub fn processors(root: AcpiRoot) -> Result<Processors, acpi::AcpiError> {
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
    let mut found = Processors::default();
    for entry in madt.get().entries() {
        let (apic_id, flags) = match entry {
            MadtEntry::LocalApic(apic) => (u32::from(apic.apic_id), apic.flags),
            MadtEntry::LocalX2Apic(apic) => (apic.x2apic_id, apic.flags),
            MadtEntry::MultiprocessorWakeup(_) => {
                found.wakeup_mailbox = true;
                continue;
            }
            _ => continue,
        };
        if flags & ENABLED != 0 {
            found.apic_ids.push(apic_id);
        } else if flags & ONLINE_CAPABLE != 0 {
            found.online_capable += 1;
        }
    }
    Ok(found)
}

/// Local APIC flags: the processor is usable now.
const ENABLED: u32 = 1 << 0;
/// Local APIC flags: the processor can be enabled later (hot plug).
const ONLINE_CAPABLE: u32 = 1 << 1;
