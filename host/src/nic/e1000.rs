//! The Intel 8254x ("e1000") family, as plain data: registers, bits and
//! legacy descriptors.
//!
//! Why this card. The 8254x register model (a 128 KiB memory BAR of 32-bit
//! registers, descriptor rings in RAM with a head the card moves and a tail
//! the driver moves) is the one Intel kept through the 82574 ("e1000e") to
//! the igb server NICs (82575/82576/I350), whose legacy descriptors and
//! ring registers are the same. QEMU emulates the 82540EM (`-device e1000`,
//! long its default NIC), and so do VirtualBox, VMware and most other
//! hypervisors: a driver for it is a second uplink wherever virtio-net is
//! not offered, and the start of one for real servers.
//!
//! The kernel's driver (`kernel/src/nic/e1000.rs`) writes the registers
//! named here and reads back descriptors through [`RxDescriptor`] and
//! [`TxDescriptor`]. What the card writes is trusted for nothing:
//! [`RxDescriptor::judge`] turns a written-back receive descriptor into a
//! frame length that fits our buffer, or a reason to drop it; the ring
//! indices ([`Ring`]) are the driver's own, never the card's.

/// PCI vendor ID of Intel.
pub const INTEL: u16 = 0x8086;

/// A member of the family the driver knows, by PCI device ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// 82540EM, QEMU's `-device e1000`.
    I82540Em,
    /// 82545EM (copper), as VMware offers it.
    I82545Em,
    /// 82574L, QEMU's `-device e1000e`.
    I82574L,
}

impl Model {
    /// The model of PCI device `vendor:device`, if it is one of ours.
    pub fn of(vendor: u16, device: u16) -> Option<Model> {
        match (vendor, device) {
            (INTEL, 0x100e) => Some(Model::I82540Em),
            (INTEL, 0x100f) => Some(Model::I82545Em),
            (INTEL, 0x10d3) => Some(Model::I82574L),
            _ => None,
        }
    }

    /// Its name, as the boot log and the counters page show it.
    pub fn name(self) -> &'static str {
        match self {
            Model::I82540Em => "e1000 (82540EM)",
            Model::I82545Em => "e1000 (82545EM)",
            Model::I82574L => "e1000e (82574L)",
        }
    }

    /// How the EEPROM read register (`EERD`) is laid out: the shift of
    /// the word address and the "done" bit. The 8254x put the address at
    /// bit 8 and "done" at bit 4; the 82574 moved them to 2 and 1.
    pub fn eerd_layout(self) -> (u32, u32) {
        match self {
            Model::I82540Em | Model::I82545Em => (8, 1 << 4),
            Model::I82574L => (2, 1 << 1),
        }
    }
}

/// Register offsets in BAR 0 (all 32 bits wide).
pub mod reg {
    /// Device control.
    pub const CTRL: usize = 0x0000;
    /// Device status (link up, speed).
    pub const STATUS: usize = 0x0008;
    /// EEPROM read.
    pub const EERD: usize = 0x0014;
    /// Interrupt mask clear: a 1 masks that cause.
    pub const IMC: usize = 0x00d8;
    /// Receive control.
    pub const RCTL: usize = 0x0100;
    /// Transmit control.
    pub const TCTL: usize = 0x0400;
    /// Transmit inter-packet gap.
    pub const TIPG: usize = 0x0410;
    /// Receive ring base, low 32 bits.
    pub const RDBAL: usize = 0x2800;
    /// Receive ring base, high 32 bits.
    pub const RDBAH: usize = 0x2804;
    /// Receive ring length in bytes.
    pub const RDLEN: usize = 0x2808;
    /// Receive head: the next descriptor the card fills.
    pub const RDH: usize = 0x2810;
    /// Receive tail: one past the last descriptor the card may fill.
    pub const RDT: usize = 0x2818;
    /// Transmit ring base, low 32 bits.
    pub const TDBAL: usize = 0x3800;
    /// Transmit ring base, high 32 bits.
    pub const TDBAH: usize = 0x3804;
    /// Transmit ring length in bytes.
    pub const TDLEN: usize = 0x3808;
    /// Transmit head: the next descriptor the card sends.
    pub const TDH: usize = 0x3810;
    /// Transmit tail: one past the last descriptor given to the card.
    pub const TDT: usize = 0x3818;
    /// Multicast table array.
    pub const MTA: usize = 0x5200;
    /// Its size in 32-bit words.
    pub const MTA_WORDS: usize = 128;
    /// Receive address 0: its low four bytes.
    pub const RAL0: usize = 0x5400;
    /// Receive address 0: its high two bytes and "address valid".
    pub const RAH0: usize = 0x5404;
    /// The lowest size BAR 0 must have for every register above.
    pub const BAR_BYTES: u64 = 0x2_0000;
}

/// `CTRL` bits.
pub mod ctrl {
    /// Auto speed detection.
    pub const ASDE: u32 = 1 << 5;
    /// Set link up (the MAC follows the PHY's link).
    pub const SLU: u32 = 1 << 6;
    /// Link reset (cleared for a plain link, as the three below).
    pub const LRST: u32 = 1 << 3;
    /// Invert loss-of-signal.
    pub const ILOS: u32 = 1 << 7;
    /// VLAN mode.
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
    /// Device reset; self-clearing.
    pub const RST: u32 = 1 << 26;
}

/// `STATUS` bits.
pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link up.
    pub const LU: u32 = 1 << 1;
    /// Speed (0: 10 Mb/s, 1: 100, 2 or 3: 1000): where it is.
    pub const SPEED_SHIFT: u32 = 6;
    /// Its width.
    pub const SPEED_MASK: u32 = 0b11;
}

/// `RCTL` bits.
pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Unicast promiscuous: the uplink carries frames for the guests' and
    /// the host interface's MAC addresses, not the card's.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous, for the same reason.
    pub const MPE: u32 = 1 << 4;
    /// Accept broadcast.
    pub const BAM: u32 = 1 << 15;
    /// Buffer size: 00 (with BSEX clear) is 2048 bytes.
    pub const BSIZE_2048: u32 = 0;
    /// Strip the Ethernet CRC: the switch wants frames without it.
    pub const SECRC: u32 = 1 << 26;
}

/// `TCTL` bits.
pub mod tctl {
    /// Transmitter enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold: 15, as the manual advises.
    pub const CT_15: u32 = 0x0f << 4;
    /// Collision distance: 64 byte times, for full duplex.
    pub const COLD_FULL_DUPLEX: u32 = 0x40 << 12;
}

/// `TIPG` for copper: IPGT 10, IPGR1 8, IPGR2 6 (the manual's values).
pub const TIPG_COPPER: u32 = 10 | 8 << 10 | 6 << 20;

/// The `RAH` bit that says the address is valid.
pub const RAH_AV: u32 = 1 << 31;

/// `EERD`'s start bit.
pub const EERD_START: u32 = 1;

/// The `EERD` value that asks for EEPROM word `word` on `model`.
pub fn eerd_request(model: Model, word: u8) -> u32 {
    let (shift, _) = model.eerd_layout();
    EERD_START | u32::from(word) << shift
}

/// The word an `EERD` read gives, once the card says it is done.
pub fn eerd_result(model: Model, value: u32) -> Option<u16> {
    let (_, done) = model.eerd_layout();
    (value & done != 0).then_some((value >> 16) as u16)
}

/// The MAC address held in `RAL0`/`RAH0`, if marked valid and usable (not
/// all zeros, not multicast).
pub fn mac_from_receive_address(ral: u32, rah: u32) -> Option<[u8; 6]> {
    if rah & RAH_AV == 0 {
        return None;
    }
    let [a, b, c, d] = ral.to_le_bytes();
    let [e, f, _, _] = rah.to_le_bytes();
    usable_mac([a, b, c, d, e, f])
}

/// The MAC address in EEPROM words 0, 1 and 2 (each little-endian), if
/// usable.
pub fn mac_from_eeprom(words: [u16; 3]) -> Option<[u8; 6]> {
    let [a, b] = words[0].to_le_bytes();
    let [c, d] = words[1].to_le_bytes();
    let [e, f] = words[2].to_le_bytes();
    usable_mac([a, b, c, d, e, f])
}

/// `RAL0` and `RAH0` (marked valid) for `mac`.
pub fn receive_address(mac: [u8; 6]) -> (u32, u32) {
    let [a, b, c, d, e, f] = mac;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, 0, 0]) | RAH_AV,
    )
}

fn usable_mac(mac: [u8; 6]) -> Option<[u8; 6]> {
    (mac != [0; 6] && mac[0] & 1 == 0).then_some(mac)
}

/// What `STATUS` says of the link: up, and its speed in Mb/s.
pub fn link(status_value: u32) -> (bool, u32) {
    let speed = match (status_value >> status::SPEED_SHIFT) & status::SPEED_MASK {
        0 => 10,
        1 => 100,
        _ => 1000,
    };
    (status_value & status::LU != 0, speed)
}

/// The size of one legacy descriptor, either kind.
pub const DESCRIPTOR_BYTES: usize = 16;

/// Descriptor status: the card is done with it.
pub const STATUS_DD: u8 = 1 << 0;
/// Receive status: the last descriptor of a packet.
pub const STATUS_EOP: u8 = 1 << 1;

/// A legacy receive descriptor: the buffer's address, which the driver
/// writes, and what the card writes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDescriptor {
    /// The buffer's physical address (the driver's).
    pub buffer: u64,
    /// The bytes received into it (the card's, as all below).
    pub length: u16,
    /// The packet checksum.
    pub checksum: u16,
    /// `DD`, `EOP` and more.
    pub status: u8,
    /// CRC, symbol, sequence, ... errors.
    pub errors: u8,
    /// The VLAN tag.
    pub special: u16,
}

/// What a written-back receive descriptor means to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// The card has not filled it yet.
    Pending,
    /// A whole frame of this many bytes, at the start of the buffer.
    Frame(usize),
    /// Something to drop and count, and why.
    Dropped(RxDrop),
}

/// Why a receive descriptor's frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The card reported an error (CRC, symbol, sequence, ...).
    CardError,
    /// A piece of a frame longer than a buffer (no end-of-packet), or the
    /// rest of one: we never enable long frames, so it is not ours to
    /// reassemble.
    Fragment,
    /// A length of zero, shorter than an Ethernet header, or longer than
    /// the buffer.
    BadLength,
}

impl RxDescriptor {
    /// A descriptor lending the card the buffer at `buffer`, status clear.
    pub fn lend(buffer: u64) -> Self {
        Self {
            buffer,
            ..Self::default()
        }
    }

    /// The descriptor as the card reads it, two little-endian words.
    pub fn to_words(self) -> [u64; 2] {
        let high = u64::from(self.length)
            | u64::from(self.checksum) << 16
            | u64::from(self.status) << 32
            | u64::from(self.errors) << 40
            | u64::from(self.special) << 48;
        [self.buffer, high]
    }

    /// The descriptor from the two words the card wrote.
    pub fn from_words([buffer, high]: [u64; 2]) -> Self {
        Self {
            buffer,
            length: high as u16,
            checksum: (high >> 16) as u16,
            status: (high >> 32) as u8,
            errors: (high >> 40) as u8,
            special: (high >> 48) as u16,
        }
    }

    /// Judges what the card wrote back, for a buffer of `buffer_bytes`.
    /// `in_fragment` says an earlier descriptor began a frame without
    /// ending it; the returned flag says whether the next one continues
    /// one.
    pub fn judge(&self, buffer_bytes: usize, in_fragment: bool) -> (Received, bool) {
        if self.status & STATUS_DD == 0 {
            return (Received::Pending, in_fragment);
        }
        let end = self.status & STATUS_EOP != 0;
        if in_fragment || !end {
            return (Received::Dropped(RxDrop::Fragment), !end);
        }
        if self.errors != 0 {
            return (Received::Dropped(RxDrop::CardError), false);
        }
        let length = usize::from(self.length);
        if !(ETHERNET_HEADER_BYTES..=buffer_bytes).contains(&length) {
            return (Received::Dropped(RxDrop::BadLength), false);
        }
        (Received::Frame(length), false)
    }
}

/// The shortest frame worth handing on: destination, source, type.
pub const ETHERNET_HEADER_BYTES: usize = 14;

/// Transmit command: end of packet.
pub const CMD_EOP: u8 = 1 << 0;
/// Transmit command: insert the Ethernet CRC.
pub const CMD_IFCS: u8 = 1 << 1;
/// Transmit command: report status (set `DD` once sent).
pub const CMD_RS: u8 = 1 << 3;

/// A legacy transmit descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDescriptor {
    /// The frame's physical address.
    pub buffer: u64,
    /// Its length.
    pub length: u16,
    /// Checksum offset (unused: no offloads).
    pub cso: u8,
    /// `CMD_*` bits.
    pub command: u8,
    /// `DD` once sent (the card's).
    pub status: u8,
    /// Checksum start (unused).
    pub css: u8,
    /// The VLAN tag (unused).
    pub special: u16,
}

impl TxDescriptor {
    /// One whole frame of `length` bytes at `buffer`, to be sent with its
    /// CRC added and its status reported.
    pub fn frame(buffer: u64, length: u16) -> Self {
        Self {
            buffer,
            length,
            command: CMD_EOP | CMD_IFCS | CMD_RS,
            ..Self::default()
        }
    }

    /// The descriptor as the card reads it.
    pub fn to_words(self) -> [u64; 2] {
        let high = u64::from(self.length)
            | u64::from(self.cso) << 16
            | u64::from(self.command) << 24
            | u64::from(self.status) << 32
            | u64::from(self.css) << 40
            | u64::from(self.special) << 48;
        [self.buffer, high]
    }

    /// The descriptor from the words the card wrote back.
    pub fn from_words([buffer, high]: [u64; 2]) -> Self {
        Self {
            buffer,
            length: high as u16,
            cso: (high >> 16) as u8,
            command: (high >> 24) as u8,
            status: (high >> 32) as u8,
            css: (high >> 40) as u8,
            special: (high >> 48) as u16,
        }
    }

    /// Whether the card says it has sent it.
    pub fn done(&self) -> bool {
        self.status & STATUS_DD != 0
    }
}

/// A ring of `size` descriptors as the driver keeps it: the next one to
/// look at (receive) or fill (transmit), and the oldest still lent
/// (transmit). Its indices are the driver's own, always below `size`: the
/// card's head register is never used to index anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    size: usize,
    /// The next descriptor to fill (transmit) or read (receive).
    next: usize,
    /// The oldest descriptor lent and not yet taken back (transmit).
    oldest: usize,
    /// Descriptors lent now (transmit).
    lent: usize,
}

impl Ring {
    /// A ring of `size` descriptors (at least 8, a multiple of 8: the
    /// card wants its length in bytes a multiple of 128), none lent.
    pub fn new(size: usize) -> Option<Self> {
        (size >= 8 && size.is_multiple_of(8)).then_some(Self {
            size,
            next: 0,
            oldest: 0,
            lent: 0,
        })
    }

    /// Its size in descriptors.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The ring's length in bytes, for `RDLEN`/`TDLEN`.
    pub fn bytes(&self) -> u32 {
        (self.size * DESCRIPTOR_BYTES) as u32
    }

    /// The next descriptor to read or fill.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Moves past the next descriptor; returns the new tail value (the
    /// index after the last one handed over).
    pub fn advance(&mut self) -> usize {
        self.next = (self.next + 1) % self.size;
        self.next
    }

    /// Transmit: whether one more descriptor may be lent. One stays
    /// unlent: a tail equal to the head means "empty" to the card.
    pub fn can_lend(&self) -> bool {
        self.lent < self.size - 1
    }

    /// Transmit: lends the next descriptor; returns its index and the new
    /// tail. `None` when full.
    pub fn lend(&mut self) -> Option<(usize, usize)> {
        if !self.can_lend() {
            return None;
        }
        let index = self.next;
        self.lent += 1;
        Some((index, self.advance()))
    }

    /// Transmit: the oldest descriptor lent, if any.
    pub fn oldest_lent(&self) -> Option<usize> {
        (self.lent > 0).then_some(self.oldest)
    }

    /// Transmit: takes the oldest descriptor back.
    pub fn take_back(&mut self) {
        if self.lent > 0 {
            self.lent -= 1;
            self.oldest = (self.oldest + 1) % self.size;
        }
    }

    /// Descriptors lent now.
    pub fn lent(&self) -> usize {
        self.lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn models_by_pci_id() {
        assert_eq!(Model::of(0x8086, 0x100e), Some(Model::I82540Em));
        assert_eq!(Model::of(0x8086, 0x10d3), Some(Model::I82574L));
        assert_eq!(Model::of(0x8086, 0x1234), None);
        assert_eq!(Model::of(0x1af4, 0x100e), None);
    }

    #[test]
    fn eeprom_reads_per_model() {
        assert_eq!(eerd_request(Model::I82540Em, 2), 0x0201);
        assert_eq!(eerd_request(Model::I82574L, 2), 0x0009);
        assert_eq!(eerd_result(Model::I82540Em, 0x5634_0210), Some(0x5634));
        assert_eq!(eerd_result(Model::I82540Em, 0x5634_0201), None);
        assert_eq!(eerd_result(Model::I82574L, 0x5634_000b), Some(0x5634));
    }

    #[test]
    fn mac_addresses_from_the_card() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let (ral, rah) = receive_address(mac);
        assert_eq!((ral, rah), (0x1200_5452, 0x8000_5634));
        assert_eq!(mac_from_receive_address(ral, rah), Some(mac));
        assert_eq!(mac_from_receive_address(ral, rah & !RAH_AV), None);
        assert_eq!(mac_from_receive_address(0, RAH_AV), None);
        assert_eq!(mac_from_eeprom([0x5452, 0x1200, 0x5634]), Some(mac));
        assert_eq!(mac_from_eeprom([0xffff; 3]), None, "multicast");
    }

    #[test]
    fn link_status() {
        assert_eq!(link(0x0000_0083), (true, 1000));
        assert_eq!(link(0x0000_0041), (false, 100));
    }

    #[test]
    fn descriptors_round_trip_through_words() {
        let rx = RxDescriptor {
            buffer: 0x1234_5000,
            length: 60,
            checksum: 0xbeef,
            status: STATUS_DD | STATUS_EOP,
            errors: 0,
            special: 7,
        };
        assert_eq!(RxDescriptor::from_words(rx.to_words()), rx);
        let tx = TxDescriptor::frame(0x8000, 1514);
        assert_eq!(tx.to_words(), [0x8000, 0x0b00_0000 | 1514]);
        assert_eq!(TxDescriptor::from_words(tx.to_words()), tx);
        assert!(!tx.done());
        assert!(TxDescriptor::from_words([0x8000, 1 << 32]).done());
    }

    #[test]
    fn every_written_back_receive_descriptor_is_judged() {
        let written = |length, status, errors| RxDescriptor {
            buffer: 0,
            length,
            status,
            errors,
            ..RxDescriptor::default()
        };
        let whole = STATUS_DD | STATUS_EOP;
        assert_eq!(written(60, 0, 0).judge(2048, false).0, Received::Pending);
        assert_eq!(
            written(60, whole, 0).judge(2048, false),
            (Received::Frame(60), false)
        );
        assert_eq!(
            written(2048, whole, 0).judge(2048, false).0,
            Received::Frame(2048)
        );
        for bad in [0, 13, 2049, u16::MAX] {
            assert_eq!(
                written(bad, whole, 0).judge(2048, false).0,
                Received::Dropped(RxDrop::BadLength),
                "{bad}"
            );
        }
        assert_eq!(
            written(60, whole, 1).judge(2048, false).0,
            Received::Dropped(RxDrop::CardError)
        );
        // A frame in pieces: every piece dropped, up to and with its end.
        assert_eq!(
            written(2048, STATUS_DD, 0).judge(2048, false),
            (Received::Dropped(RxDrop::Fragment), true)
        );
        assert_eq!(
            written(2048, STATUS_DD, 0).judge(2048, true),
            (Received::Dropped(RxDrop::Fragment), true)
        );
        assert_eq!(
            written(100, whole, 0).judge(2048, true),
            (Received::Dropped(RxDrop::Fragment), false)
        );
        assert_eq!(
            written(100, whole, 0).judge(2048, false).0,
            Received::Frame(100)
        );
    }

    #[test]
    fn rings_keep_one_descriptor_unlent_and_wrap() {
        assert_eq!(Ring::new(4), None);
        assert_eq!(Ring::new(12), None);
        let mut ring = Ring::new(8).unwrap();
        assert_eq!(ring.bytes(), 128);
        assert_eq!(ring.oldest_lent(), None);
        let tails: Vec<usize> = (0..7).map(|_| ring.lend().unwrap().1).collect();
        assert_eq!(tails, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ring.lend(), None, "full with one left");
        assert_eq!(ring.oldest_lent(), Some(0));
        ring.take_back();
        ring.take_back();
        assert_eq!(ring.lent(), 5);
        assert_eq!(ring.lend(), Some((7, 0)));
        assert_eq!(ring.lend(), Some((0, 1)));
        assert_eq!(ring.oldest_lent(), Some(2));
        for _ in 0..20 {
            ring.take_back();
        }
        assert_eq!(ring.lent(), 0);
        assert_eq!(ring.oldest_lent(), None);
    }

    #[test]
    fn receive_rings_wrap_their_next_index() {
        let mut ring = Ring::new(8).unwrap();
        for expected in [1, 2, 3, 4, 5, 6, 7, 0, 1] {
            assert_eq!(ring.advance(), expected);
        }
        assert_eq!(ring.next(), 1);
        assert_eq!(ring.size(), 8);
    }
}
