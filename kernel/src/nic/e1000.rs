//! The Intel e1000 family (8254x, 82574): our own driver.
//!
//! Why this card, and what the registers mean, is told in
//! [`host::nic::e1000`], which holds everything here that is plain data
//! and is tested on Linux. This module does what needs the machine: it
//! maps the card's registers (BAR 0, 128 KiB of 32-bit registers), lends
//! it memory, and moves frames.
//!
//! The story of a frame. The card has two rings of 16-byte "legacy"
//! descriptors in one page of ours ([`DescriptorPage`]), [`RING_SIZE`]
//! each, and each descriptor points at a buffer of ours for good
//! ([`DmaBuffers`]: receive buffer `i` belongs to receive descriptor
//! `i`, transmit buffer `i` to transmit descriptor `i`). Receiving: the
//! card fills descriptors from its head up to the tail we set, writing
//! each one back with a length and the "descriptor done" bit; we read
//! them in order from our own index, judge each
//! ([`RxDescriptor::judge`]: done, whole, no error, a length that fits),
//! hand the frame on, rewrite the descriptor with its buffer's address
//! (never trusting what the card left there) and give it back by moving
//! the tail. Sending: we copy a frame into the next free descriptor's
//! buffer, fill the descriptor, and move the tail; the card sets "done"
//! once it is sent, and we take descriptors back oldest first.
//!
//! Nothing the card writes is used as an index or a length unchecked:
//! the ring indices are ours ([`Ring`]), the card's head register is never
//! read, and a receive length is bounded by the buffer. No interrupts:
//! every cause is masked, and the run loop polls.

use super::{BUFFER_BYTES, DmaBuffers, UplinkCounters, map_bar};
use crate::apic;
use crate::boot::Region;
use crate::memory;
use crate::pci::{self, PortIoConfig};
use core::fmt;
use core::sync::atomic::{Ordering, fence};
use host::addr::{HostPhysAddr, PAGE_SIZE};
use host::net::MacAddress;
use host::nic::e1000::{
    self as spec, DESCRIPTOR_BYTES, Model, Received, Ring, RxDescriptor, TxDescriptor, ctrl, rctl,
    reg, tctl,
};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};

/// Descriptors per ring. 64 receive buffers hold a burst of 90 KiB
/// between two polls, as the virtio driver's queues do.
const RING_SIZE: usize = 64;

/// How long a reset may take before the card is given up on: the manual
/// asks for a wait of at least 1 µs; QEMU is done at once.
const RESET_POLLS: u32 = 1000;
const RESET_POLL_US: u64 = 100;
/// How long one EEPROM word may take.
const EEPROM_POLLS: u32 = 1000;
const EEPROM_POLL_US: u64 = 10;

/// Why a card that was found could not be brought up.
#[derive(Debug)]
pub enum ProbeError {
    Bars,
    NoRegisters,
    Map,
    Reset,
    NoMac,
    NoMemory,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bars => "its registers (BARs) could not be placed",
            Self::NoRegisters => "no memory BAR 0 of 128 KiB for its registers",
            Self::Map => "its registers could not be mapped",
            Self::Reset => "it did not come out of reset",
            Self::NoMac => "no valid MAC address in its receive address or EEPROM",
            Self::NoMemory => "no memory for its rings and buffers",
        })
    }
}

/// The card's registers: BAR 0, mapped uncached.
struct Registers {
    base: u64,
    size: u64,
}

impl Registers {
    /// Register `offset`; a register past the BAR (which the constants
    /// never name, the BAR being checked at bring-up) reads as 0.
    fn read(&self, offset: usize) -> u32 {
        if offset as u64 + 4 > self.size {
            return 0;
        }
        // SAFETY: `base` maps the whole BAR uncached (`map_bar`), the
        // register lies inside it and is 4-aligned; reading a register
        // has no effect on memory.
        unsafe { ((self.base + offset as u64) as *const u32).read_volatile() }
    }

    /// Writes register `offset` (ignored past the BAR).
    fn write(&self, offset: usize, value: u32) {
        if offset as u64 + 4 > self.size {
            return;
        }
        // SAFETY: as in `read`. What a write makes the card do with
        // memory is bounded by the ring and buffer addresses we give it,
        // all ours.
        unsafe { ((self.base + offset as u64) as *mut u32).write_volatile(value) }
    }
}

/// Which ring of the [`DescriptorPage`].
#[derive(Clone, Copy)]
enum Which {
    Receive,
    Transmit,
}

/// One page of ours holding both rings: receive descriptors first, then
/// transmit descriptors, [`RING_SIZE`] each.
struct DescriptorPage {
    base: HostPhysAddr,
}

impl DescriptorPage {
    fn new() -> Option<Self> {
        const { assert!(2 * RING_SIZE * DESCRIPTOR_BYTES <= PAGE_SIZE as usize) };
        let base = memory::alloc_contiguous(1)?;
        // SAFETY: the frame was just taken, ours alone, in the direct map.
        unsafe { memory::phys_to_virt(base).write_bytes(0, PAGE_SIZE as usize) };
        Some(Self { base })
    }

    /// The physical address of a ring, for the card.
    fn phys(&self, which: Which) -> u64 {
        self.base.as_u64() + self.offset(which, 0) as u64
    }

    fn offset(&self, which: Which, index: usize) -> usize {
        assert!(index < RING_SIZE);
        let ring = match which {
            Which::Receive => 0,
            Which::Transmit => RING_SIZE,
        };
        (ring + index) * DESCRIPTOR_BYTES
    }

    /// Descriptor `index` as two words, as the card left it.
    fn read(&self, which: Which, index: usize) -> [u64; 2] {
        let at = memory::phys_to_virt(self.base).wrapping_add(self.offset(which, index));
        // SAFETY: the descriptor lies in our page (`offset` checks the
        // index), 16-aligned; the card may write it at any time, hence
        // volatile reads, and any bits it writes are judged afterwards.
        unsafe {
            let words = at.cast::<u64>();
            [words.read_volatile(), words.add(1).read_volatile()]
        }
    }

    /// Writes descriptor `index`.
    fn write(&self, which: Which, index: usize, words: [u64; 2]) {
        let at = memory::phys_to_virt(self.base).wrapping_add(self.offset(which, index));
        // SAFETY: as in `read`; the descriptor is ours (not lent to the
        // card) when we write it.
        unsafe {
            let pointer = at.cast::<u64>();
            pointer.write_volatile(words[0]);
            pointer.add(1).write_volatile(words[1]);
        }
    }
}

impl Drop for DescriptorPage {
    fn drop(&mut self) {
        memory::free_frame(self.base);
    }
}

/// An e1000-family card, up and polled.
pub struct E1000 {
    registers: Registers,
    model: Model,
    location: DeviceFunction,
    mac: MacAddress,
    descriptors: DescriptorPage,
    /// `RING_SIZE` receive buffers, then `RING_SIZE` transmit buffers.
    buffers: DmaBuffers,
    rx: Ring,
    /// A frame in pieces is being dropped (see `RxDescriptor::judge`).
    rx_in_fragment: bool,
    tx: Ring,
    counters: UplinkCounters,
}

impl E1000 {
    /// Brings up the card `model` at `location`: places and maps its
    /// registers, resets it, reads its MAC address, sets up both rings
    /// and turns receiving (promiscuous: the switch's guests have MAC
    /// addresses of their own) and sending on.
    pub fn bring_up(
        root: &mut PciRoot<PortIoConfig>,
        location: DeviceFunction,
        model: Model,
        regions: &[Region],
    ) -> Result<E1000, ProbeError> {
        pci::assign_bars(root, location, regions).ok_or(ProbeError::Bars)?;
        let bar = pci::memory_bars(root, location)
            .into_iter()
            .find(|bar| bar.index == 0 && bar.size >= reg::BAR_BYTES)
            .ok_or(ProbeError::NoRegisters)?;
        let base = map_bar(bar).ok_or(ProbeError::Map)?;
        pci::enable(root, location);
        let registers = Registers {
            base,
            size: bar.size,
        };
        reset(&registers)?;
        let mac = read_mac(&registers, model).ok_or(ProbeError::NoMac)?;
        let descriptors = DescriptorPage::new().ok_or(ProbeError::NoMemory)?;
        let buffers = DmaBuffers::new(2 * RING_SIZE).ok_or(ProbeError::NoMemory)?;
        let ring = || Ring::new(RING_SIZE).ok_or(ProbeError::NoMemory);
        let nic = E1000 {
            registers,
            model,
            location,
            mac: MacAddress::new(mac),
            descriptors,
            buffers,
            rx: ring()?,
            rx_in_fragment: false,
            tx: ring()?,
            counters: UplinkCounters::default(),
        };
        nic.start();
        Ok(nic)
    }

    /// Programs the address filter and both rings, then turns them on.
    fn start(&self) {
        let registers = &self.registers;
        let (ral, rah) = spec::receive_address(self.mac.octets());
        registers.write(reg::RAL0, ral);
        registers.write(reg::RAH0, rah);
        for word in 0..reg::MTA_WORDS {
            registers.write(reg::MTA + 4 * word, 0);
        }
        for index in 0..RING_SIZE {
            let lent = RxDescriptor::lend(self.buffers.phys(index));
            self.descriptors
                .write(Which::Receive, index, lent.to_words());
            self.descriptors.write(Which::Transmit, index, [0, 0]);
        }
        fence(Ordering::SeqCst);
        let rx = self.descriptors.phys(Which::Receive);
        registers.write(reg::RDBAL, rx as u32);
        registers.write(reg::RDBAH, (rx >> 32) as u32);
        registers.write(reg::RDLEN, self.rx.bytes());
        registers.write(reg::RDH, 0);
        // Every descriptor but the last is the card's: a tail equal to
        // the head would mean "none".
        registers.write(reg::RDT, (RING_SIZE - 1) as u32);
        registers.write(
            reg::RCTL,
            rctl::EN | rctl::UPE | rctl::MPE | rctl::BAM | rctl::BSIZE_2048 | rctl::SECRC,
        );
        let tx = self.descriptors.phys(Which::Transmit);
        registers.write(reg::TDBAL, tx as u32);
        registers.write(reg::TDBAH, (tx >> 32) as u32);
        registers.write(reg::TDLEN, self.tx.bytes());
        registers.write(reg::TDH, 0);
        registers.write(reg::TDT, 0);
        registers.write(reg::TIPG, spec::TIPG_COPPER);
        registers.write(
            reg::TCTL,
            tctl::EN | tctl::PSP | tctl::CT_15 | tctl::COLD_FULL_DUPLEX,
        );
    }

    /// Which member of the family it is.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The rest of its `nic:` line: the link as the card sees it now, and
    /// the rings.
    pub fn details(&self) -> alloc::string::String {
        let (up, speed) = spec::link(self.registers.read(reg::STATUS));
        let link = if up { "up" } else { "down" };
        alloc::format!("link {link} {speed} Mb/s, {RING_SIZE} descriptors each way")
    }

    /// The card's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Where it sits on PCI.
    pub fn location(&self) -> DeviceFunction {
        self.location
    }

    /// What it has done so far.
    pub fn counters(&self) -> UplinkCounters {
        self.counters
    }

    /// Hands on every frame received since the last call, oldest first,
    /// at most a ring's worth; gives each descriptor back. Returns how
    /// many frames it handed on.
    pub fn receive(&mut self, mut deliver: impl FnMut(&[u8])) -> usize {
        let mut delivered = 0;
        let mut tail = None;
        for _ in 0..RING_SIZE {
            let index = self.rx.next();
            let written = RxDescriptor::from_words(self.descriptors.read(Which::Receive, index));
            let (received, in_fragment) = written.judge(BUFFER_BYTES, self.rx_in_fragment);
            match received {
                Received::Pending => break,
                Received::Frame(length) => {
                    // Read the frame only after the descriptor said done.
                    fence(Ordering::Acquire);
                    deliver(&self.buffers.slice(index)[..length]);
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += length as u64;
                    delivered += 1;
                }
                Received::Dropped(_) => self.counters.rx_errors += 1,
            }
            self.rx_in_fragment = in_fragment;
            // Lent again with our own address, whatever the card left.
            let lent = RxDescriptor::lend(self.buffers.phys(index));
            self.descriptors
                .write(Which::Receive, index, lent.to_words());
            self.rx.advance();
            tail = Some(index);
        }
        if let Some(tail) = tail {
            fence(Ordering::SeqCst);
            self.registers.write(reg::RDT, tail as u32);
        }
        delivered
    }

    /// Sends frames from `frames` while a transmit descriptor is free,
    /// taking each only when it can be sent; one tail write for them all.
    /// Returns how many it took.
    pub fn transmit_from<'a>(&mut self, mut frames: impl Iterator<Item = &'a [u8]>) -> usize {
        self.reclaim_sent();
        let mut taken = 0;
        let mut tail = None;
        while self.tx.can_lend() {
            let Some(frame) = frames.next() else {
                break;
            };
            taken += 1;
            let Ok(length) = u16::try_from(frame.len()) else {
                self.counters.tx_oversize += 1;
                continue;
            };
            if frame.len() > BUFFER_BYTES {
                self.counters.tx_oversize += 1;
                continue;
            }
            let Some((index, next_tail)) = self.tx.lend() else {
                break;
            };
            let buffer = RING_SIZE + index;
            self.buffers.slice(buffer)[..frame.len()].copy_from_slice(frame);
            let descriptor = TxDescriptor::frame(self.buffers.phys(buffer), length);
            self.descriptors
                .write(Which::Transmit, index, descriptor.to_words());
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += frame.len() as u64;
            tail = Some(next_tail);
        }
        if let Some(tail) = tail {
            // The descriptors and buffers are written before the card
            // learns of them.
            fence(Ordering::SeqCst);
            self.registers.write(reg::TDT, tail as u32);
        }
        taken
    }

    /// Takes back, oldest first, the transmit descriptors the card has
    /// sent. A card that never says so only fills the ring: frames then
    /// wait (bounded) in the switch.
    fn reclaim_sent(&mut self) {
        while let Some(index) = self.tx.oldest_lent() {
            let written = TxDescriptor::from_words(self.descriptors.read(Which::Transmit, index));
            if !written.done() {
                break;
            }
            self.tx.take_back();
        }
    }
}

impl Drop for E1000 {
    /// Stops the card before its rings and buffers go back to the frame
    /// allocator: nothing may DMA into memory that is no longer ours.
    fn drop(&mut self) {
        self.registers.write(reg::RCTL, 0);
        self.registers.write(reg::TCTL, 0);
        self.registers
            .write(reg::CTRL, self.registers.read(reg::CTRL) | ctrl::RST);
    }
}

/// Resets the card and masks every interrupt cause.
fn reset(registers: &Registers) -> Result<(), ProbeError> {
    registers.write(reg::IMC, u32::MAX);
    registers.write(reg::CTRL, registers.read(reg::CTRL) | ctrl::RST);
    apic::delay_us(RESET_POLL_US);
    let mut polls = 0;
    while registers.read(reg::CTRL) & ctrl::RST != 0 {
        polls += 1;
        if polls > RESET_POLLS {
            return Err(ProbeError::Reset);
        }
        apic::delay_us(RESET_POLL_US);
    }
    registers.write(reg::IMC, u32::MAX);
    let control = registers.read(reg::CTRL);
    let control =
        (control | ctrl::SLU | ctrl::ASDE) & !(ctrl::LRST | ctrl::ILOS | ctrl::VME | ctrl::PHY_RST);
    registers.write(reg::CTRL, control);
    Ok(())
}

/// The card's MAC address: what the card loaded into its receive address
/// 0 from its EEPROM at reset, or, if it did not, the EEPROM's first
/// three words.
fn read_mac(registers: &Registers, model: Model) -> Option<[u8; 6]> {
    let loaded =
        spec::mac_from_receive_address(registers.read(reg::RAL0), registers.read(reg::RAH0));
    if loaded.is_some() {
        return loaded;
    }
    let mut words = [0u16; 3];
    for (word, slot) in words.iter_mut().enumerate() {
        *slot = read_eeprom(registers, model, word as u8)?;
    }
    spec::mac_from_eeprom(words)
}

/// EEPROM word `word`, through `EERD`, bounded in time.
fn read_eeprom(registers: &Registers, model: Model, word: u8) -> Option<u16> {
    registers.write(reg::EERD, spec::eerd_request(model, word));
    for _ in 0..EEPROM_POLLS {
        if let Some(value) = spec::eerd_result(model, registers.read(reg::EERD)) {
            return Some(value);
        }
        apic::delay_us(EEPROM_POLL_US);
    }
    None
}
