//! The devices, driven the way a guest drives them: a driver written by
//! hand ([`super::testing`]) sets each device up through its page and the
//! status call, puts buffers on its rings, notifies, and reads back what
//! the device used.
//!
//! In the module's order: the transport (page, handshake, reset, queues),
//! then each back end (net, console, rng), then the hostile drivers, each
//! refused with the reason a kill would print.

use super::console::{Console, ConsoleSink, INPUT_MAX};
use super::net::{FrameSink, MAX_FRAME_BYTES, Net};
use super::rng::{EntropySource, Rng};
use super::testing::*;
use super::*;
use crate::addr::GuestPhysAddr;
use crate::paging::testing::FakeGuestMemory;
use guest_abi::virtio::{
    DEVICE_MAGIC, DEVICE_PAGES_GPA, DeviceType, FIRST_DEVICE_VECTOR, NET_HEADER_BYTES, feature,
    interrupt, offset, ring, status,
};
use std::string::ToString;
use std::vec;
use std::vec::Vec;

// ---------------------------------------------------------------------------
// Sinks and sources the tests can look into.
// ---------------------------------------------------------------------------

/// A network that keeps every frame sent to it.
#[derive(Clone, Debug, Default)]
struct Wire(Vec<Vec<u8>>);

impl FrameSink for Wire {
    fn send(&mut self, frame: &[u8]) {
        self.0.push(frame.to_vec());
    }
}

/// A screen that keeps every byte written to it.
#[derive(Clone, Debug, Default)]
struct Screen(Vec<u8>);

impl ConsoleSink for Screen {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Entropy that counts up: 1, 2, 3, ...
#[derive(Clone, Debug, Default)]
struct CountingSource(u8);

impl EntropySource for CountingSource {
    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            self.0 = self.0.wrapping_add(1);
            *byte = self.0;
        }
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const READ: u16 = 0;
const WRITE: u16 = ring::DESC_F_WRITE;
const NEXT: u16 = ring::DESC_F_NEXT;

/// A live virtio-net device with two queues of 8.
fn net() -> (FakeGuestMemory, Device<Net<Wire>>, Vec<TestRing>) {
    let mut mem = memory();
    let (device, rings) = bring_up(Net::new(MAC, Wire::default()), &mut mem, &[8, 8]);
    (mem, device, rings)
}

/// Puts a frame (behind a zeroed header) at `at` in guest memory.
fn put_frame(mem: &mut FakeGuestMemory, at: u64, frame: &[u8]) {
    poke(mem, at, &[0; NET_HEADER_BYTES]);
    poke(mem, at + NET_HEADER_BYTES as u64, frame);
}

fn interrupt_status(mem: &FakeGuestMemory, device_page: GuestPhysAddr) -> u64 {
    peek_u64(mem, device_page.as_u64() + offset::INTERRUPT_STATUS)
}

fn page_status(mem: &FakeGuestMemory, device_page: GuestPhysAddr) -> u32 {
    peek_u32(mem, device_page.as_u64() + offset::STATUS)
}

// ---------------------------------------------------------------------------
// The transport.
// ---------------------------------------------------------------------------

#[test]
fn the_page_tells_the_guest_what_the_device_is() {
    let mut mem = memory();
    let device = Device::new(2, Net::new(MAC, Wire::default())).unwrap();
    device.install(&mut mem).unwrap();
    let page = DEVICE_PAGES_GPA + 2 * 4096;
    assert_eq!(device.page().as_u64(), page);
    assert_eq!(peek_u32(&mem, page + offset::MAGIC), DEVICE_MAGIC);
    assert_eq!(
        peek_u32(&mem, page + offset::DEVICE_TYPE),
        DeviceType::Net as u32
    );
    assert_eq!(
        peek_u64(&mem, page + offset::DEVICE_FEATURES),
        feature::VERSION_1 | feature::NET_MAC | feature::NET_STATUS
    );
    assert_eq!(
        peek_u32(&mem, page + offset::VECTOR),
        u32::from(FIRST_DEVICE_VECTOR + 2)
    );
    assert_eq!(peek_u32(&mem, page + offset::QUEUE_COUNT), 2);
    for q in 0..2 {
        assert_eq!(peek_u16(&mem, page + offset::queue(q)), 256);
    }
    assert_eq!(peek_u16(&mem, page + offset::queue(2)), 0, "no third queue");
    assert_eq!(peek_u32(&mem, page + offset::CONFIG_LEN), 12);
    let config: [u8; 12] = peek(&mem, page + offset::CONFIG);
    assert_eq!(config[..6], MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
    assert!(Device::new(8, Net::new(MAC, Wire::default())).is_none());
}

#[test]
fn the_handshake_brings_the_device_to_life() {
    let (mem, device, _) = net();
    assert!(device.is_live());
    assert!(
        device.may_interrupt(),
        "a ready receive queue can wake the guest"
    );
    let live = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(page_status(&mem, device.page()), live);
    assert_eq!(
        device.negotiated_features(),
        feature::VERSION_1 | feature::NET_MAC | feature::NET_STATUS
    );
    assert_eq!(device.counters.status_calls, 3);
}

#[test]
fn features_not_offered_or_without_version_1_are_refused() {
    for features in [feature::VERSION_1 | feature::EVENT_IDX, feature::NET_MAC] {
        let mut mem = memory();
        let mut device = Device::new(0, Net::new(MAC, Wire::default())).unwrap();
        device.install(&mut mem).unwrap();
        let page = device.page().as_u64();
        poke(
            &mut mem,
            page + offset::DRIVER_FEATURES,
            &features.to_le_bytes(),
        );
        let wanted = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        let accepted = set_status(&mut device, &mut mem, wanted).unwrap();
        assert_eq!(
            accepted,
            status::ACKNOWLEDGE | status::DRIVER,
            "{features:#x}"
        );
        assert_eq!(page_status(&mem, device.page()), accepted);
        let error = set_status(&mut device, &mut mem, wanted | status::DRIVER_OK).unwrap_err();
        assert_eq!(error.problem, Problem::DriverOkWithoutFeatures);
        assert_eq!(
            error.to_string(),
            "virtio-net: DRIVER_OK set before the features were accepted (FEATURES_OK)"
        );
        assert!(!device.is_live());
        assert_ne!(
            page_status(&mem, device.page()) & status::DEVICE_NEEDS_RESET,
            0
        );
    }
}

#[test]
fn a_reset_forgets_the_driver_and_writes_the_page_afresh() {
    let (mut mem, mut device, _) = net();
    // The guest scribbles over the device's fields; the reset repairs them.
    poke(&mut mem, device.page().as_u64() + offset::MAGIC, &[0xff; 8]);
    assert_eq!(set_status(&mut device, &mut mem, 0), Ok(0));
    assert!(!device.is_live());
    assert_eq!(device.negotiated_features(), 0);
    assert!(!device.may_interrupt());
    let page = device.page().as_u64();
    assert_eq!(peek_u32(&mem, page + offset::MAGIC), DEVICE_MAGIC);
    assert_eq!(
        peek_u16(&mem, page + offset::queue(0) + offset::queue::READY),
        0
    );
    assert_eq!(peek_u64(&mem, page + offset::DRIVER_FEATURES), 0);
    assert_eq!(device.counters.resets, 1);
}

#[test]
fn a_reset_revives_a_broken_device() {
    let (mut mem, mut device, mut rings) = net();
    rings[1].set(&mut mem, 0, BUFFERS, 64, WRITE, 0);
    rings[1].offer(&mut mem, 0);
    assert!(device.notify(&mut mem, 1).is_err());
    // Broken: a status call without a reset changes nothing.
    let live = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    let still = set_status(&mut device, &mut mem, live).unwrap();
    assert_ne!(still & status::DEVICE_NEEDS_RESET, 0);
    assert!(!device.is_live());
    set_status(&mut device, &mut mem, 0).unwrap();
    let page = device.page().as_u64();
    poke(
        &mut mem,
        page + offset::DRIVER_FEATURES,
        &feature::VERSION_1.to_le_bytes(),
    );
    set_status(&mut device, &mut mem, status::FEATURES_OK).unwrap();
    let mut fresh = [TestRing::new(2, 8), TestRing::new(3, 8)];
    for (q, ring) in fresh.iter().enumerate() {
        ring.describe(&mut mem, page, q);
    }
    set_status(
        &mut device,
        &mut mem,
        status::FEATURES_OK | status::DRIVER_OK,
    )
    .unwrap();
    assert!(device.is_live());
    put_frame(&mut mem, BUFFERS, b"again");
    fresh[1].set(&mut mem, 0, BUFFERS, 17, READ, 0);
    fresh[1].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
    assert_eq!(device.backend().sink().0, vec![b"again".to_vec()]);
}

#[test]
fn a_queue_marked_not_ready_is_stopped_at_the_next_status_call() {
    let (mut mem, mut device, mut rings) = net();
    let page = device.page().as_u64();
    poke(
        &mut mem,
        page + offset::queue(1) + offset::queue::READY,
        &0u16.to_le_bytes(),
    );
    let live = device.status();
    set_status(&mut device, &mut mem, live).unwrap();
    assert!(!device.queue_is_live(1));
    put_frame(&mut mem, BUFFERS, b"late");
    rings[1].set(&mut mem, 0, BUFFERS, 16, READ, 0);
    rings[1].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::NotNeeded));
    assert!(device.backend().sink().0.is_empty());
}

#[test]
fn a_notify_before_driver_ok_does_nothing() {
    let mut mem = memory();
    let mut device = Device::new(0, Net::new(MAC, Wire::default())).unwrap();
    device.install(&mut mem).unwrap();
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::NotNeeded));
    assert_eq!(device.counters.notifies, 1);
}

#[test]
fn a_device_page_outside_memory_is_reported_not_panicked_on() {
    let mut mem = FakeGuestMemory::new(0x4000);
    let mut device = Device::new(0, Net::new(MAC, Wire::default())).unwrap();
    assert!(device.install(&mut mem).is_err());
    let error = device.status_call(&mut mem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "virtio-net: device page at gpa:0x8000 is outside guest memory"
    );
}

#[test]
fn the_devices_serve_a_list_of_trait_objects() {
    let mut mem = memory();
    let mut devices: Vec<std::boxed::Box<dyn VirtioDevice<FakeGuestMemory>>> = vec![
        std::boxed::Box::new(Device::new(0, Net::new(MAC, Wire::default())).unwrap()),
        std::boxed::Box::new(Device::new(1, Console::new(Screen::default())).unwrap()),
        std::boxed::Box::new(Device::new(2, Rng::new(CountingSource::default())).unwrap()),
    ];
    for device in &devices {
        device.install(&mut mem).unwrap();
    }
    let names: Vec<_> = devices.iter().map(|d| (d.name(), d.vector())).collect();
    assert_eq!(
        names,
        [
            ("virtio-net", 33),
            ("virtio-console", 34),
            ("virtio-rng", 35)
        ]
    );
    assert_eq!(devices[2].notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    assert!(devices[2].notify(&mut mem, 1).is_err());
    assert_eq!(devices[2].counters().notifies, 2);
    assert!(!devices[0].may_interrupt());
}

// ---------------------------------------------------------------------------
// A guest's devices together, and the hypercalls by number.
// ---------------------------------------------------------------------------

type Devices = GuestDevices<Wire, Screen, CountingSource>;

#[test]
fn devices_are_numbered_in_the_order_they_are_added() {
    let mut devices = Devices::new()
        .with_console(Screen::default())
        .with_net(MAC, Wire::default())
        .with_net(MAC, Wire::default())
        .with_rng(CountingSource::default());
    assert_eq!(devices.count(), 3, "a second card is refused");
    assert_eq!(devices.boot_params(), (DEVICE_PAGES_GPA, 3));
    assert_eq!(devices.console().unwrap().vector(), 33);
    assert_eq!(devices.net().unwrap().vector(), 34);
    assert_eq!(devices.rng().unwrap().vector(), 35);
    let name = |d: &mut Devices, i| d.by_index::<FakeGuestMemory>(i).map(|d| d.name());
    assert_eq!(name(&mut devices, 1), Some("virtio-net"));
    assert_eq!(name(&mut devices, 3), None);
    assert_eq!(name(&mut devices, u64::MAX), None);
    assert_eq!(Devices::new().boot_params(), (0, 0));
}

#[test]
fn the_hypercalls_reply_with_what_the_run_loop_does_next() {
    let mut mem = memory();
    let mut devices = Devices::new().with_net(MAC, Wire::default());
    devices.install(&mut mem).unwrap();
    assert!(!devices.may_interrupt());
    // The handshake through the status call, by number.
    let page = DEVICE_PAGES_GPA;
    let features = peek_u64(&mem, page + offset::DEVICE_FEATURES);
    poke(
        &mut mem,
        page + offset::DRIVER_FEATURES,
        &features.to_le_bytes(),
    );
    poke(
        &mut mem,
        page + offset::STATUS,
        &status::FEATURES_OK.to_le_bytes(),
    );
    let reply = devices.status_call(&mut mem, 0);
    assert_eq!(reply, Reply::Value(u64::from(status::FEATURES_OK)));
    let mut rings = [TestRing::new(0, 8), TestRing::new(1, 8)];
    for (q, ring) in rings.iter().enumerate() {
        ring.describe(&mut mem, page, q);
    }
    let live = status::FEATURES_OK | status::DRIVER_OK;
    poke(&mut mem, page + offset::STATUS, &live.to_le_bytes());
    assert_eq!(
        devices.status_call(&mut mem, 0),
        Reply::Value(u64::from(live))
    );
    assert!(devices.may_interrupt());

    put_frame(&mut mem, BUFFERS, b"hi");
    rings[1].set(&mut mem, 0, BUFFERS, 14, READ, 0);
    rings[1].offer(&mut mem, 0);
    assert_eq!(
        devices.notify(&mut mem, 0, 1),
        Reply::ValueAndInterrupt {
            value: 0,
            vector: 33
        }
    );
    assert_eq!(devices.notify(&mut mem, 0, 1), Reply::Value(0));
    assert_eq!(
        devices.notify(&mut mem, 0, 2),
        Reply::Fail(guest_abi::hypercall::Error::InvalidArgument)
    );
    assert_eq!(
        devices.notify(&mut mem, 1, 0),
        Reply::Fail(guest_abi::hypercall::Error::InvalidArgument)
    );
    assert_eq!(
        devices.status_call(&mut mem, 9),
        Reply::Fail(guest_abi::hypercall::Error::InvalidArgument)
    );

    rings[1].set(&mut mem, 1, BUFFERS, 14, READ | NEXT, 1);
    rings[1].offer(&mut mem, 1);
    let Reply::Kill(reason) = devices.notify(&mut mem, 0, 1) else {
        panic!("a loop must kill");
    };
    assert_eq!(
        reason.to_string(),
        "virtio-net queue 1: descriptor 1 loops back to 1"
    );
    assert!(!devices.may_interrupt());
}

// ---------------------------------------------------------------------------
// virtio-net.
// ---------------------------------------------------------------------------

#[test]
fn one_notify_sends_every_ready_frame_with_one_interrupt() {
    let (mut mem, mut device, mut rings) = net();
    let tx = &mut rings[1];
    // Frame 1 the way virtio-drivers sends it: header and frame apart.
    poke(&mut mem, BUFFERS, &[0; NET_HEADER_BYTES]);
    poke(&mut mem, BUFFERS + 0x100, b"first frame");
    tx.set(
        &mut mem,
        0,
        BUFFERS,
        NET_HEADER_BYTES as u32,
        READ | NEXT,
        1,
    );
    tx.set(&mut mem, 1, BUFFERS + 0x100, 11, READ, 0);
    tx.offer(&mut mem, 0);
    // Frame 2 in one buffer.
    put_frame(&mut mem, BUFFERS + 0x1000, b"second");
    tx.set(&mut mem, 2, BUFFERS + 0x1000, 18, READ, 0);
    tx.offer(&mut mem, 2);

    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
    assert_eq!(
        device.backend().sink().0,
        vec![b"first frame".to_vec(), b"second".to_vec()]
    );
    assert_eq!(tx.take_used(&mem), vec![(0, 0), (2, 0)]);
    assert_eq!(interrupt_status(&mem, device.page()), interrupt::QUEUE);
    let net = device.backend().counters;
    assert_eq!((net.tx_packets, net.tx_bytes, net.tx_dropped), (2, 17, 0));
    assert_eq!(
        (device.counters.notifies, device.counters.interrupts),
        (1, 1)
    );
}

#[test]
fn a_guest_that_asks_for_no_interrupt_gets_none() {
    let (mut mem, mut device, mut rings) = net();
    put_frame(&mut mem, BUFFERS, b"quiet");
    rings[1].set_avail_flags(&mut mem, ring::AVAIL_F_NO_INTERRUPT);
    rings[1].set(&mut mem, 0, BUFFERS, 17, READ, 0);
    rings[1].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::NotNeeded));
    assert_eq!(rings[1].take_used(&mem), vec![(0, 0)], "still completed");
    assert_eq!(interrupt_status(&mem, device.page()), 0);
}

#[test]
fn a_notify_with_nothing_new_needs_no_interrupt() {
    let (mut mem, mut device, _) = net();
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::NotNeeded));
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
}

#[test]
fn frames_that_are_no_frames_are_dropped_and_their_buffers_returned() {
    let (mut mem, mut device, mut rings) = net();
    let tx = &mut rings[1];
    tx.set(&mut mem, 0, BUFFERS, 12, READ, 0); // a header and nothing else
    tx.set(&mut mem, 1, BUFFERS, 5, READ, 0); // not even a header
    let oversized = (NET_HEADER_BYTES + MAX_FRAME_BYTES + 1) as u32;
    tx.set(&mut mem, 2, BUFFERS, oversized, READ, 0);
    for head in 0..3 {
        tx.offer(&mut mem, head);
    }
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
    assert!(device.backend().sink().0.is_empty());
    assert_eq!(device.backend().counters.tx_dropped, 3);
    assert_eq!(tx.take_used(&mem).len(), 3);
}

#[test]
fn received_frames_fill_posted_buffers_and_the_rest_are_dropped() {
    let (mut mem, mut device, mut rings) = net();
    let rx = &mut rings[0];
    rx.set(&mut mem, 0, BUFFERS, 1526, WRITE, 0);
    rx.set(&mut mem, 1, BUFFERS + 0x1000, 6, WRITE | NEXT, 2); // split in two
    rx.set(&mut mem, 2, BUFFERS + 0x2000, 1520, WRITE, 0);
    rx.offer(&mut mem, 0);
    rx.offer(&mut mem, 1);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));

    let frames: [&[u8]; 3] = [b"one", b"two!", b"three"];
    assert_eq!(
        device.receive_frames(&mut mem, frames),
        Ok(Interrupt::Needed)
    );
    assert_eq!(rx.take_used(&mem), vec![(0, 15), (1, 16)]);
    let mut header = [0u8; NET_HEADER_BYTES];
    header[10] = 1; // num_buffers
    assert_eq!(peek::<_, 12>(&mem, BUFFERS), header);
    assert_eq!(&peek::<_, 3>(&mem, BUFFERS + 12), b"one");
    // The second frame's header spans both buffers of its chain.
    assert_eq!(peek::<_, 6>(&mem, BUFFERS + 0x1000), header[..6]);
    assert_eq!(peek::<_, 10>(&mem, BUFFERS + 0x2000)[..6], header[6..]);
    assert_eq!(&peek::<_, 4>(&mem, BUFFERS + 0x2006), b"two!");
    let net = device.backend().counters;
    assert_eq!((net.rx_packets, net.rx_bytes, net.rx_dropped), (2, 7, 1));
    assert_eq!(device.counters.interrupts, 1, "one interrupt for the batch");
}

#[test]
fn a_frame_too_big_for_the_buffer_leaves_the_buffer_for_the_next() {
    let (mut mem, mut device, mut rings) = net();
    rings[0].set(&mut mem, 0, BUFFERS, 20, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    assert_eq!(
        device.receive_frame(&mut mem, &[7; 100]),
        Ok(Interrupt::NotNeeded)
    );
    assert_eq!(
        device.receive_frame(&mut mem, &[7; 8]),
        Ok(Interrupt::Needed)
    );
    assert_eq!(rings[0].take_used(&mem), vec![(0, 20)]);
    let net = device.backend().counters;
    assert_eq!((net.rx_packets, net.rx_dropped), (1, 1));
}

#[test]
fn the_receive_queue_needs_no_notify_and_the_others_do() {
    let (mem, _, rings) = net();
    assert_eq!(peek_u16(&mem, rings[0].used), ring::USED_F_NO_NOTIFY);
    assert_eq!(peek_u16(&mem, rings[1].used), 0, "transmit: notify");
    let (mem, _, rings) = console();
    // Console input waits for the notify that posts buffers for it.
    assert_eq!(peek_u16(&mem, rings[0].used), 0);
    assert_eq!(peek_u16(&mem, rings[1].used), 0);
}

#[test]
fn receive_buffers_posted_without_a_notify_are_filled() {
    let (mut mem, mut device, mut rings) = net();
    rings[0].set(&mut mem, 0, BUFFERS, 1526, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    assert_eq!(
        device.receive_frame(&mut mem, b"no notify"),
        Ok(Interrupt::Needed)
    );
    assert_eq!(rings[0].take_used(&mem), vec![(0, 21)]);
    assert_eq!(device.counters.notifies, 0);
}

#[test]
fn a_notify_of_the_receive_queue_checks_new_buffers_without_taking_them() {
    let (mut mem, mut device, mut rings) = net();
    let rx = &mut rings[0];
    rx.set(&mut mem, 0, BUFFERS, 1526, WRITE, 0);
    rx.set(&mut mem, 1, BUFFERS + 0x1000, 1526, WRITE, 0);
    rx.offer(&mut mem, 0);
    rx.offer(&mut mem, 1);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    assert!(rx.take_used(&mem).is_empty(), "checked, not taken");
    let frames: [&[u8]; 2] = [b"one", b"two"];
    assert_eq!(
        device.receive_frames(&mut mem, frames),
        Ok(Interrupt::Needed)
    );
    assert_eq!(rx.take_used(&mem), vec![(0, 15), (1, 15)]);
}

#[test]
fn hostile_a_receive_buffer_is_refused_at_the_notify_that_posts_it() {
    let (mut mem, mut device, mut rings) = net();
    let rx = &mut rings[0];
    rx.set(&mut mem, 0, BUFFERS, 1526, WRITE, 0);
    rx.offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    rx.set(&mut mem, 1, BUFFERS, 64, READ, 0);
    rx.offer(&mut mem, 1);
    let error = device.notify(&mut mem, 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "virtio-net queue 0: descriptor 1 is device-readable on a queue the device writes (a write into a read-only buffer)"
    );
    assert!(error.broke_device());
    assert!(!device.is_live());
}

#[test]
fn hostile_a_receive_buffer_broken_after_its_notify_is_refused_when_a_frame_comes() {
    let (mut mem, mut device, mut rings) = net();
    rings[0].set(&mut mem, 0, BUFFERS, 1526, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    // Rewritten after the check: a notify with nothing new looks at
    // nothing, but taking the chain checks it again.
    rings[0].set(&mut mem, 0, MEMORY - 8, 1526, WRITE, 0);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    let error = device.receive_frame(&mut mem, b"late").unwrap_err();
    assert!(matches!(
        error.problem,
        Problem::Queue(QueueError::BufferOutsideMemory { descriptor: 0, .. })
    ));
}

#[test]
fn a_receive_index_moved_back_is_checked_again_from_the_device_s_place() {
    let (mut mem, mut device, mut rings) = net();
    let rx = &mut rings[0];
    for d in 0..3 {
        rx.set(&mut mem, d, BUFFERS + u64::from(d) * 0x800, 1526, WRITE, 0);
        rx.offer(&mut mem, d);
    }
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::NotNeeded));
    // Back to one buffer, which the guest then breaks and offers again.
    rx.set_avail_idx(&mut mem, 1);
    rx.set(&mut mem, 0, BUFFERS, 64, READ, 0);
    let error = device.notify(&mut mem, 0).unwrap_err();
    assert_eq!(
        error.problem,
        Problem::Queue(QueueError::ReadOnlyBuffer { descriptor: 0 })
    );
}

#[test]
fn frames_for_a_device_not_yet_live_are_dropped() {
    let mut mem = memory();
    let mut device = Device::new(0, Net::new(MAC, Wire::default())).unwrap();
    device.install(&mut mem).unwrap();
    let frames: [&[u8]; 2] = [b"a", b"b"];
    assert_eq!(
        device.receive_frames(&mut mem, frames),
        Ok(Interrupt::NotNeeded)
    );
    assert_eq!(device.backend().counters.rx_dropped, 2);
}

#[test]
fn frames_too_long_or_empty_are_not_delivered() {
    let (mut mem, mut device, mut rings) = net();
    rings[0].set(&mut mem, 0, BUFFERS, 4096, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    let big = vec![0u8; MAX_FRAME_BYTES + 1];
    let frames: [&[u8]; 2] = [&big, b""];
    assert_eq!(
        device.receive_frames(&mut mem, frames),
        Ok(Interrupt::NotNeeded)
    );
    assert_eq!(device.backend().counters.rx_dropped, 2);
    assert!(rings[0].take_used(&mem).is_empty());
}

#[test]
fn rings_wrap_around_their_indices() {
    let (mut mem, mut device, mut rings) = net();
    put_frame(&mut mem, BUFFERS, b"x");
    rings[1].set(&mut mem, 3, BUFFERS, 13, READ, 0);
    // 70,000 frames: the 16-bit indices wrap, the slots go round 8,750 times.
    for _ in 0..70_000 {
        rings[1].offer(&mut mem, 3);
        assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
        assert_eq!(rings[1].take_used(&mem), vec![(3, 0)]);
    }
    assert_eq!(device.backend().counters.tx_packets, 70_000);
}

// ---------------------------------------------------------------------------
// virtio-console and virtio-rng.
// ---------------------------------------------------------------------------

fn console() -> (FakeGuestMemory, Device<Console<Screen>>, Vec<TestRing>) {
    let mut mem = memory();
    let (device, rings) = bring_up(Console::new(Screen::default()), &mut mem, &[4, 4]);
    (mem, device, rings)
}

#[test]
fn console_output_reaches_the_sink_in_order() {
    let (mut mem, mut device, mut rings) = console();
    let long = vec![b'z'; 1000];
    poke(&mut mem, BUFFERS, b"hello, ");
    poke(&mut mem, BUFFERS + 0x100, b"world\n");
    poke(&mut mem, BUFFERS + 0x1000, &long);
    rings[1].set(&mut mem, 0, BUFFERS, 7, READ | NEXT, 1);
    rings[1].set(&mut mem, 1, BUFFERS + 0x100, 6, READ, 0);
    rings[1].set(&mut mem, 2, BUFFERS + 0x1000, 1000, READ, 0);
    rings[1].offer(&mut mem, 0);
    rings[1].offer(&mut mem, 2);
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
    let mut expected = b"hello, world\n".to_vec();
    expected.extend_from_slice(&long);
    assert_eq!(device.backend().sink().0, expected);
    assert_eq!(device.backend().counters.tx_bytes, 1013);
    assert_eq!(rings[1].take_used(&mem), vec![(0, 0), (2, 0)]);
}

#[test]
fn console_input_waits_for_buffers_then_fills_them() {
    let (mut mem, mut device, mut rings) = console();
    assert_eq!(
        device.push_input(&mut mem, b"ls -l\n"),
        Ok(Interrupt::NotNeeded)
    );
    assert_eq!(device.backend().pending_input(), 6);
    rings[0].set(&mut mem, 0, BUFFERS, 4, WRITE, 0);
    rings[0].set(&mut mem, 1, BUFFERS + 0x100, 64, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    rings[0].offer(&mut mem, 1);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::Needed));
    assert_eq!(rings[0].take_used(&mem), vec![(0, 4), (1, 2)]);
    assert_eq!(&peek::<_, 4>(&mem, BUFFERS), b"ls -");
    assert_eq!(&peek::<_, 2>(&mem, BUFFERS + 0x100), b"l\n");
    assert_eq!(device.backend().pending_input(), 0);
    assert!(device.may_interrupt());
}

#[test]
fn console_input_beyond_the_buffer_is_dropped_and_counted() {
    let (mut mem, mut device, _) = console();
    let flood = vec![b'y'; INPUT_MAX + 10];
    let _ = device.push_input(&mut mem, &flood);
    assert_eq!(device.backend().pending_input(), INPUT_MAX);
    assert_eq!(device.backend().counters.input_dropped, 10);
}

#[test]
fn console_input_that_wraps_its_buffer_arrives_whole() {
    let (mut mem, mut device, mut rings) = console();
    let _ = device.push_input(&mut mem, &vec![b'a'; INPUT_MAX - 2]);
    rings[0].set(&mut mem, 0, BUFFERS, (INPUT_MAX - 4) as u32, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::Needed));
    rings[0].take_used(&mem);
    // Two bytes left at the end of the deque; four more wrap to its start.
    let _ = device.push_input(&mut mem, b"bcde");
    rings[0].set(&mut mem, 1, BUFFERS + 0x2000, 16, WRITE, 0);
    rings[0].offer(&mut mem, 1);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::Needed));
    assert_eq!(rings[0].take_used(&mem), vec![(1, 6)]);
    assert_eq!(&peek::<_, 6>(&mem, BUFFERS + 0x2000), b"aabcde");
}

#[test]
fn rng_fills_every_buffer_it_is_given() {
    let mut mem = memory();
    let (mut device, mut rings) = bring_up(Rng::new(CountingSource::default()), &mut mem, &[4]);
    rings[0].set(&mut mem, 0, BUFFERS, 3, WRITE | NEXT, 1);
    rings[0].set(&mut mem, 1, BUFFERS + 0x10, 2, WRITE, 0);
    rings[0].set(&mut mem, 2, BUFFERS + 0x100, 600, WRITE, 0);
    rings[0].offer(&mut mem, 0);
    rings[0].offer(&mut mem, 2);
    assert_eq!(device.notify(&mut mem, 0), Ok(Interrupt::Needed));
    assert_eq!(rings[0].take_used(&mem), vec![(0, 5), (2, 600)]);
    assert_eq!(peek::<_, 3>(&mem, BUFFERS), [1, 2, 3]);
    assert_eq!(peek::<_, 2>(&mem, BUFFERS + 0x10), [4, 5]);
    assert_eq!(peek::<_, 1>(&mem, BUFFERS + 0x100), [6]);
    assert_eq!(device.backend().bytes_delivered, 605);
    assert!(!device.may_interrupt(), "it answers only when asked");
}

// ---------------------------------------------------------------------------
// Hostile drivers: each refused, with the reason, and nothing panics.
// ---------------------------------------------------------------------------

/// Offers the chain at descriptor 2 on queue `queue` of a live net device
/// whose descriptors `set` wrote, and makes the device look at it: a
/// notify (which takes a transmit chain, and checks a receive one), then
/// a frame for the receive queue. Gives the error.
fn refused(queue: usize, set: impl FnOnce(&mut FakeGuestMemory, &TestRing)) -> DeviceError {
    let (mut mem, mut device, mut rings) = net();
    set(&mut mem, &rings[queue]);
    rings[queue].offer(&mut mem, 2);
    let take = |device: &mut Device<Net<Wire>>, mem: &mut FakeGuestMemory| {
        let _ = device.notify(mem, queue as u64)?;
        device.receive_frame(mem, b"a frame")
    };
    let error = take(&mut device, &mut mem).unwrap_err();
    assert!(error.broke_device());
    assert!(!device.is_live());
    assert_ne!(
        page_status(&mem, device.page()) & status::DEVICE_NEEDS_RESET,
        0
    );
    assert_eq!(
        interrupt_status(&mem, device.page()),
        interrupt::CONFIG_CHANGED
    );
    assert_eq!(device.counters.bad_descriptors, 1);
    assert!(rings[queue].take_used(&mem).is_empty());
    // Broken is final: the next notify does nothing.
    assert_eq!(
        device.notify(&mut mem, queue as u64),
        Ok(Interrupt::NotNeeded)
    );
    error
}

#[test]
fn hostile_a_loop_is_named() {
    let error = refused(1, |mem, tx| {
        tx.set(mem, 2, BUFFERS, 12, READ | NEXT, 5);
        tx.set(mem, 5, BUFFERS, 12, READ | NEXT, 2);
    });
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 5 loops back to 2"
    );
}

#[test]
fn hostile_a_descriptor_that_points_at_itself() {
    let error = refused(0, |mem, rx| rx.set(mem, 2, BUFFERS, 64, WRITE | NEXT, 2));
    assert_eq!(
        error.problem,
        Problem::Queue(QueueError::Loop {
            descriptor: 2,
            back_to: 2
        })
    );
}

#[test]
fn hostile_a_chain_longer_than_the_queue() {
    // Every descriptor of the table, and round again.
    let error = refused(1, |mem, tx| {
        for d in 0..8 {
            tx.set(mem, d, BUFFERS, 16, READ | NEXT, (d + 1) % 8);
        }
    });
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 1 loops back to 2"
    );
}

#[test]
fn hostile_an_address_past_guest_memory() {
    let error = refused(1, |mem, tx| tx.set(mem, 2, MEMORY - 8, 64, READ, 0));
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 2's buffer at gpa:0xffff8 (64 bytes) is outside guest memory"
    );
    let error = refused(1, |mem, tx| tx.set(mem, 2, u64::MAX - 4, 64, READ, 0));
    assert!(matches!(
        error.problem,
        Problem::Queue(QueueError::BufferOutsideMemory { descriptor: 2, .. })
    ));
}

#[test]
fn hostile_a_length_of_4_gib() {
    let error = refused(0, |mem, rx| rx.set(mem, 2, BUFFERS, u32::MAX, WRITE, 0));
    assert_eq!(
        error.to_string(),
        "virtio-net queue 0: descriptor 2 takes its chain to 4294967295 bytes, more than the 1048576 a chain may hold"
    );
}

#[test]
fn hostile_a_chain_whose_total_is_too_large() {
    let error = refused(0, |mem, rx| {
        rx.set(mem, 2, BUFFERS, 0x8_0000, WRITE | NEXT, 3);
        rx.set(mem, 3, BUFFERS, 0x8_0000, WRITE | NEXT, 4);
        rx.set(mem, 4, BUFFERS, 1, WRITE, 0);
    });
    assert_eq!(
        error.problem,
        Problem::Queue(QueueError::ChainTooLarge {
            descriptor: 4,
            bytes: (1 << 20) + 1
        })
    );
}

#[test]
fn hostile_a_receive_buffer_marked_read_only() {
    let error = refused(0, |mem, rx| {
        rx.set(mem, 2, BUFFERS, 64, WRITE | NEXT, 3);
        rx.set(mem, 3, BUFFERS + 64, 64, READ, 0);
    });
    assert_eq!(
        error.to_string(),
        "virtio-net queue 0: descriptor 3 is device-readable on a queue the device writes (a write into a read-only buffer)"
    );
}

#[test]
fn hostile_a_read_only_buffer_is_never_written_even_when_a_frame_arrives() {
    let (mut mem, mut device, mut rings) = net();
    poke(&mut mem, BUFFERS, &[0xaa; 64]);
    rings[0].set(&mut mem, 0, BUFFERS, 64, READ, 0);
    rings[0].offer(&mut mem, 0);
    let error = device.receive_frame(&mut mem, b"payload").unwrap_err();
    assert_eq!(
        error.problem,
        Problem::Queue(QueueError::ReadOnlyBuffer { descriptor: 0 })
    );
    assert_eq!(peek::<_, 64>(&mem, BUFFERS), [0xaa; 64], "untouched");
}

#[test]
fn hostile_a_transmit_buffer_marked_writable() {
    let error = refused(1, |mem, tx| tx.set(mem, 2, BUFFERS, 64, WRITE, 0));
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 2 is device-writable on a queue the device only reads"
    );
}

#[test]
fn hostile_an_indirect_descriptor() {
    let error = refused(1, |mem, tx| {
        tx.set(mem, 2, BUFFERS, 64, ring::DESC_F_INDIRECT, 0)
    });
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 2 is indirect, and indirect descriptors were not negotiated"
    );
}

#[test]
fn hostile_a_next_past_the_table() {
    let error = refused(1, |mem, tx| tx.set(mem, 2, BUFFERS, 64, READ | NEXT, 8));
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: descriptor 2 continues at 8, past the table of 8"
    );
}

#[test]
fn hostile_a_head_past_the_table() {
    let (mut mem, mut device, rings) = net();
    poke(&mut mem, rings[1].available + 4, &9u16.to_le_bytes());
    rings[1].set_avail_idx(&mut mem, 1);
    let error = device.notify(&mut mem, 1).unwrap_err();
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: available ring names descriptor 9, past the table of 8"
    );
}

#[test]
fn hostile_an_available_index_too_far_ahead() {
    let (mut mem, mut device, rings) = net();
    rings[1].set_avail_idx(&mut mem, 9);
    let error = device.notify(&mut mem, 1).unwrap_err();
    assert_eq!(
        error.to_string(),
        "virtio-net queue 1: available index 9 is more than the queue's 8 entries ahead of 0"
    );
}

#[test]
fn hostile_a_notify_of_a_queue_that_does_not_exist() {
    let (mut mem, mut device, _) = net();
    for queue in [2, 7, u64::from(u16::MAX) + 1, u64::MAX] {
        let error = device.notify(&mut mem, queue).unwrap_err();
        assert!(!error.broke_device(), "only the call fails");
        assert_eq!(
            error.to_string(),
            std::format!(
                "virtio-net: notify of queue {queue}, which does not exist (the device has 2)"
            )
        );
    }
    assert!(device.is_live());
}

/// Brings a net device up to `FEATURES_OK`, then describes queue 0 with
/// `edit` applied to a good ring, and marks it ready: the status call's
/// error.
fn refused_layout(edit: impl FnOnce(&mut TestRing)) -> DeviceError {
    let mut mem = memory();
    let mut device = Device::new(0, Net::new(MAC, Wire::default())).unwrap();
    device.install(&mut mem).unwrap();
    let page = device.page().as_u64();
    poke(
        &mut mem,
        page + offset::DRIVER_FEATURES,
        &feature::VERSION_1.to_le_bytes(),
    );
    set_status(&mut device, &mut mem, status::FEATURES_OK).unwrap();
    let mut ring = TestRing::new(0, 8);
    edit(&mut ring);
    ring.describe(&mut mem, page, 0);
    let error = set_status(&mut device, &mut mem, status::FEATURES_OK).unwrap_err();
    assert!(error.broke_device());
    assert_ne!(device.status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(!device.queue_is_live(0));
    error
}

#[test]
fn hostile_ring_layouts_are_refused_when_the_queue_is_made_ready() {
    type Edit = fn(&mut TestRing);
    let cases: [(Edit, &str); 9] = [
        (
            |r| r.descriptors += 8,
            "descriptor table at gpa:0x20008 is not 16-byte aligned",
        ),
        (
            |r| r.available += 1,
            "available ring at gpa:0x20081 is not 2-byte aligned",
        ),
        (
            |r| r.used += 2,
            "used ring at gpa:0x2009a is not 4-byte aligned",
        ),
        (
            |r| r.descriptors = MEMORY - 64,
            "descriptor table at gpa:0xfffc0 (128 bytes) is outside guest memory",
        ),
        (
            |r| r.used = u64::MAX - 3,
            "used ring at gpa:0xfffffffffffffffc (70 bytes) is outside guest memory",
        ),
        (
            |r| r.available = MEMORY,
            "available ring at gpa:0x100000 (22 bytes) is outside guest memory",
        ),
        (
            |r| r.size = 6,
            "size 6 is not a power of two between 1 and the queue's maximum 256",
        ),
        (
            |r| r.size = 512,
            "size 512 is not a power of two between 1 and the queue's maximum 256",
        ),
        (
            |r| r.size = 0,
            "size 0 is not a power of two between 1 and the queue's maximum 256",
        ),
    ];
    for (edit, reason) in cases {
        let error = refused_layout(edit);
        assert_eq!(
            error.to_string(),
            std::format!("virtio-net queue 0: {reason}")
        );
    }
}

#[test]
fn a_driver_cannot_write_the_device_broken_bit_itself() {
    let (mut mem, mut device, _) = net();
    let with = device.status() | status::DEVICE_NEEDS_RESET;
    let accepted = set_status(&mut device, &mut mem, with).unwrap();
    assert_eq!(accepted & status::DEVICE_NEEDS_RESET, 0);
    assert!(device.is_live());
}

#[test]
fn a_changed_layout_of_a_live_queue_changes_nothing() {
    let (mut mem, mut device, mut rings) = net();
    let page = device.page().as_u64();
    let base = page + offset::queue(1);
    poke(
        &mut mem,
        base + offset::queue::DESCRIPTORS,
        &(MEMORY * 2).to_le_bytes(),
    );
    let live = device.status();
    assert_eq!(set_status(&mut device, &mut mem, live), Ok(live));
    put_frame(&mut mem, BUFFERS, b"still here");
    rings[1].set(&mut mem, 0, BUFFERS, 22, READ, 0);
    rings[1].offer(&mut mem, 0);
    assert_eq!(device.notify(&mut mem, 1), Ok(Interrupt::Needed));
    assert_eq!(device.backend().sink().0, vec![b"still here".to_vec()]);
}
