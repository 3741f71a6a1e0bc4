//! The little-endian fields of guest memory that virtio reads and writes:
//! ring indices, descriptors, the device page's words.
//!
//! The rings put 16-bit and 32-bit fields at any even address, so these go
//! through the byte interface of [`GuestRam`]; only the interrupt status,
//! which the guest changes with an atomic exchange, is a whole aligned word
//! set with compare-and-exchange. Every access is checked by the memory
//! itself: an address outside the guest is an error, never a panic.

use crate::addr::GuestPhysAddr;
use crate::guest::GuestRam;
use crate::paging::OutsideGuestMemory;

/// `base + offset`, refusing an overflow as an access outside memory.
pub(super) fn offset(
    base: GuestPhysAddr,
    offset: u64,
) -> Result<GuestPhysAddr, OutsideGuestMemory> {
    base.checked_add(offset).ok_or(OutsideGuestMemory(base))
}

/// Whether the `len` bytes at `start` lie inside guest memory.
pub(super) fn lies_inside<M: GuestRam>(mem: &M, start: GuestPhysAddr, len: u64) -> bool {
    start
        .as_u64()
        .checked_add(len)
        .is_some_and(|end| end <= mem.size())
}

/// Reads the `N` bytes at `at`.
fn read_array<M: GuestRam, const N: usize>(
    mem: &M,
    at: GuestPhysAddr,
) -> Result<[u8; N], OutsideGuestMemory> {
    let mut bytes = [0; N];
    mem.read_bytes(at, &mut bytes)?;
    Ok(bytes)
}

/// Reads the little-endian `u16` at `at`.
pub(super) fn read_u16<M: GuestRam>(mem: &M, at: GuestPhysAddr) -> Result<u16, OutsideGuestMemory> {
    read_array(mem, at).map(u16::from_le_bytes)
}

/// Reads the little-endian `u32` at `at`.
pub(super) fn read_u32<M: GuestRam>(mem: &M, at: GuestPhysAddr) -> Result<u32, OutsideGuestMemory> {
    read_array(mem, at).map(u32::from_le_bytes)
}

/// Reads the little-endian `u64` at `at`.
pub(super) fn read_u64<M: GuestRam>(mem: &M, at: GuestPhysAddr) -> Result<u64, OutsideGuestMemory> {
    read_array(mem, at).map(u64::from_le_bytes)
}

/// Writes `value` little-endian at `at`.
pub(super) fn write_u16<M: GuestRam>(
    mem: &mut M,
    at: GuestPhysAddr,
    value: u16,
) -> Result<(), OutsideGuestMemory> {
    mem.write_bytes(at, &value.to_le_bytes())
}

/// Writes `value` little-endian at `at`.
pub(super) fn write_u32<M: GuestRam>(
    mem: &mut M,
    at: GuestPhysAddr,
    value: u32,
) -> Result<(), OutsideGuestMemory> {
    mem.write_bytes(at, &value.to_le_bytes())
}

/// Writes `value` little-endian at `at`.
pub(super) fn write_u64<M: GuestRam>(
    mem: &mut M,
    at: GuestPhysAddr,
    value: u64,
) -> Result<(), OutsideGuestMemory> {
    mem.write_bytes(at, &value.to_le_bytes())
}

/// Sets `bits` in the aligned word at `at` without losing a bit the guest
/// clears at the same moment (its acknowledgement is an atomic exchange).
/// A guest that keeps changing the word under us gets its last value
/// overwritten after a few tries: the host must not spin on a guest.
pub(super) fn set_bits<M: GuestRam>(
    mem: &mut M,
    at: GuestPhysAddr,
    bits: u64,
) -> Result<(), OutsideGuestMemory> {
    const TRIES: usize = 8;
    for _ in 0..TRIES {
        let current = mem.read_u64(at)?;
        if mem.compare_exchange_u64(at, current, current | bits)? {
            return Ok(());
        }
    }
    let current = mem.read_u64(at)?;
    mem.write_u64(at, current | bits)
}
