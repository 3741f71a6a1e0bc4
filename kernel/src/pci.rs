//! The PCI bus: how the host finds the machine's own devices.
//!
//! The network chapter needs the machine's NIC, and on a PC (QEMU's `pc`
//! machine, most clouds) that card sits on PCI. This module reads PCI
//! configuration space through the oldest way there is, two I/O ports
//! ([`PortIoConfig`]: the address at `0xcf8`, the data at `0xcfc`), which
//! every PC chipset has and which QEMU's `pc` machine offers alone (it has
//! no memory-mapped configuration space). On that access it lends
//! `virtio-drivers`' [`PciRoot`] to walk the buses: bus 0, and every bus a
//! PCI-to-PCI bridge leads to ([`functions`]).
//!
//! A device's registers live behind its BARs, which the firmware assigns
//! (SeaBIOS and qboot both do). Where it did not, [`assign_bars`] places
//! them itself in the hole below 4 GiB that holds no RAM, no firmware
//! region and no other device's BAR. [`enable`] then lets the device
//! decode its memory BARs and master the bus (its DMA).
//!
//! Only the NIC driver ([`crate::nic`]) uses this today, once at boot.

use crate::boot::{Region, RegionKind};
use alloc::vec::Vec;
use host::addr::HostPhysAddr;
use spin::Mutex;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType,
    MemoryBarType, PciRoot,
};
use x86_64::instructions::port::Port;

/// Where configuration space addresses are written.
const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Where the addressed 32-bit word is then read or written.
const CONFIG_DATA_PORT: u16 = 0xcfc;
/// The bit of the address word that turns the access on.
const CONFIG_ENABLE: u32 = 1 << 31;
/// The register of a bridge that holds its primary, secondary and
/// subordinate bus numbers.
const BRIDGE_BUS_NUMBERS: u8 = 0x18;

/// The address and data ports are one pair for the whole machine: a write
/// of the address and the access that follows must not interleave with
/// another's.
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

/// PCI configuration space through the I/O ports `0xcf8`/`0xcfc`
/// ("configuration mechanism #1" of the PCI local bus specification).
#[derive(Debug)]
pub struct PortIoConfig;

impl PortIoConfig {
    /// The address word that selects `register` of `function`.
    fn address(function: DeviceFunction, register: u8) -> u32 {
        CONFIG_ENABLE
            | u32::from(function.bus) << 16
            | u32::from(function.device & 0x1f) << 11
            | u32::from(function.function & 0x7) << 8
            | u32::from(register & 0xfc)
    }
}

impl ConfigurationAccess for PortIoConfig {
    fn read_word(&self, function: DeviceFunction, register: u8) -> u32 {
        let _pair = CONFIG_LOCK.lock();
        // SAFETY: 0xcf8 and 0xcfc are the PC's configuration ports: writing
        // an address there selects a register of configuration space, and
        // reading the data port reads it; neither touches memory.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS_PORT).write(Self::address(function, register));
            Port::<u32>::new(CONFIG_DATA_PORT).read()
        }
    }

    fn write_word(&mut self, function: DeviceFunction, register: u8, data: u32) {
        let _pair = CONFIG_LOCK.lock();
        // SAFETY: as in `read_word`. What the write changes (a BAR, the
        // command register) is the caller's business: `PciRoot` and this
        // module only write registers of the device being set up.
        unsafe {
            Port::<u32>::new(CONFIG_ADDRESS_PORT).write(Self::address(function, register));
            Port::<u32>::new(CONFIG_DATA_PORT).write(data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortIoConfig
    }
}

/// The machine's PCI root, reached through the I/O ports.
pub fn root() -> PciRoot<PortIoConfig> {
    PciRoot::new(PortIoConfig)
}

/// Every function on bus 0 and on the buses behind its bridges, in bus
/// order. A bus is walked once, however many bridges claim it.
pub fn functions(root: &PciRoot<PortIoConfig>) -> Vec<(DeviceFunction, DeviceFunctionInfo)> {
    let mut found = Vec::new();
    let mut buses = alloc::vec![0u8];
    let mut next = 0;
    while let Some(&bus) = buses.get(next) {
        next += 1;
        for (function, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let secondary = (PortIoConfig.read_word(function, BRIDGE_BUS_NUMBERS) >> 8) as u8;
                if secondary != 0 && !buses.contains(&secondary) {
                    buses.push(secondary);
                }
            }
            found.push((function, info));
        }
    }
    found
}

/// One memory BAR: where it is and how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBar {
    /// Its index (0 to 5).
    pub index: u8,
    /// Its physical address (0: not assigned).
    pub address: HostPhysAddr,
    /// Its size in bytes (a power of two).
    pub size: u64,
    /// Whether it takes two registers (a 64-bit BAR).
    pub wide: bool,
}

/// The memory BARs of `function` (I/O BARs are left out: nothing here
/// uses them).
pub fn memory_bars(root: &mut PciRoot<PortIoConfig>, function: DeviceFunction) -> Vec<MemoryBar> {
    let Ok(bars) = root.bars(function) else {
        return Vec::new();
    };
    bars.iter()
        .enumerate()
        .filter_map(|(index, bar)| match bar {
            Some(BarInfo::Memory {
                address_type,
                address,
                size,
                ..
            }) => Some(MemoryBar {
                index: index as u8,
                address: HostPhysAddr::new(*address),
                size: *size,
                wide: *address_type == MemoryBarType::Width64,
            }),
            _ => None,
        })
        .collect()
}

/// The lowest address a BAR may be given by [`assign_bars`]: 3 GiB, above
/// what a small machine's RAM reaches, if the memory map allows.
const BAR_WINDOW_START: u64 = 0xc000_0000;
/// Where the window ends: the I/O APIC, the local APIC and the firmware
/// sit above.
const BAR_WINDOW_END: u64 = 0xfec0_0000;

/// Gives each unassigned memory BAR of `function` an address in the hole
/// below 4 GiB: above all RAM of the memory map `regions`, clear of every
/// region the map names and of every BAR already assigned on the bus.
/// Returns how many it placed, or `None` if one did not fit.
pub fn assign_bars(
    root: &mut PciRoot<PortIoConfig>,
    function: DeviceFunction,
    regions: &[Region],
) -> Option<usize> {
    let unassigned: Vec<MemoryBar> = memory_bars(root, function)
        .into_iter()
        .filter(|bar| bar.address.as_u64() == 0 && bar.size > 0)
        .collect();
    if unassigned.is_empty() {
        return Some(0);
    }
    let mut taken: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.start.as_u64(), r.end.as_u64()))
        .collect();
    for (other, _) in functions(root) {
        for bar in memory_bars(root, other) {
            if bar.address.as_u64() != 0 {
                taken.push((bar.address.as_u64(), bar.address.as_u64() + bar.size));
            }
        }
    }
    let ram_top = regions
        .iter()
        .filter(|r| matches!(r.kind, RegionKind::Usable | RegionKind::Acpi))
        .map(|r| r.end.as_u64())
        .filter(|&end| end <= BAR_WINDOW_END)
        .max()
        .unwrap_or(0);
    let mut floor = BAR_WINDOW_START.max(ram_top);
    for bar in &unassigned {
        let at = free_spot(floor, bar.size, &taken)?;
        if bar.wide {
            root.set_bar_64(function, bar.index, at);
        } else {
            root.set_bar_32(function, bar.index, at as u32);
        }
        log::info!(
            "pci: {function} BAR{} was unassigned; placed at {at:#x} ({} KiB)",
            bar.index,
            bar.size >> 10
        );
        taken.push((at, at + bar.size));
        floor = at + bar.size;
    }
    Some(unassigned.len())
}

/// The lowest address from `floor` up, aligned to `size` (a BAR's
/// alignment is its size), where `size` bytes overlap nothing `taken`,
/// below [`BAR_WINDOW_END`].
fn free_spot(floor: u64, size: u64, taken: &[(u64, u64)]) -> Option<u64> {
    let size = size.max(host::addr::PAGE_SIZE);
    let mut at = floor.next_multiple_of(size);
    while at + size <= BAR_WINDOW_END {
        match taken.iter().find(|&&(s, e)| at < e && s < at + size) {
            Some(&(_, end)) => at = end.next_multiple_of(size),
            None => return Some(at),
        }
    }
    None
}

/// Lets `function` answer at its memory BARs and read and write RAM on its
/// own (bus mastering: a virtio device's queues live in RAM).
pub fn enable(root: &mut PciRoot<PortIoConfig>, function: DeviceFunction) {
    let (_, command) = root.get_status_command(function);
    root.set_command(
        function,
        command | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
}
