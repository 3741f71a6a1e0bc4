//! Property tests: whatever a guest writes into its descriptor table and
//! available ring, the device side never panics, completes no more than
//! the queue holds, leaves the other devices' pages alone, and either
//! carries on or reports why it stopped.

use super::console::{Console, ConsoleSink};
use super::net::{FrameSink, Net};
use super::testing::*;
use super::*;
use crate::paging::testing::FakeGuestMemory;
use guest_abi::virtio::{offset, ring, status};
use proptest::prelude::*;
use std::string::ToString;
use std::vec::Vec;

struct Sink;

impl FrameSink for Sink {
    fn send(&mut self, frame: &[u8]) {
        assert!(!frame.is_empty() && frame.len() <= net::MAX_FRAME_BYTES);
    }
}

impl ConsoleSink for Sink {
    fn write(&mut self, _bytes: &[u8]) {}
}

/// A descriptor as a hostile guest might write it: addresses near the
/// buffers, the end of memory or anywhere; any length; any flags; any next.
fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![
        BUFFERS..BUFFERS + 0x1000,
        MEMORY - 0x100..MEMORY + 0x100,
        any::<u64>(),
    ];
    let len = prop_oneof![0u32..0x800, any::<u32>()];
    let flags = prop_oneof![0u16..8, any::<u16>()];
    let next = prop_oneof![0u16..10, any::<u16>()];
    (addr, len, flags, next)
}

/// Writes a random table and available ring into queue `queue` of a live
/// device.
fn scribble(
    mem: &mut FakeGuestMemory,
    ring: &TestRing,
    table: &[(u64, u32, u16, u16)],
    heads: &[u16],
    avail_idx: u16,
) {
    for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
        ring.set(mem, i as u16, addr, len, flags, next);
    }
    for (slot, head) in heads.iter().enumerate() {
        poke(
            mem,
            ring.available + 4 + 2 * slot as u64,
            &head.to_le_bytes(),
        );
    }
    ring.set_avail_idx(mem, avail_idx);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_descriptor_tables_never_panic_the_device_side(
        table in proptest::collection::vec(descriptor(), 8),
        heads in proptest::collection::vec(prop_oneof![0u16..8, any::<u16>()], 8),
        avail_idx in prop_oneof![0u16..10, any::<u16>()],
        queue in 0usize..2,
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1600), 0..4),
    ) {
        let mut mem = memory();
        let (mut device, rings) = bring_up(Net::new([2, 0, 0, 0, 0, 1], Sink), &mut mem, &[8, 8]);
        scribble(&mut mem, &rings[queue], &table, &heads, avail_idx);
        let before: Vec<u8> = peek::<_, 64>(&mem, guest_abi::virtio::DEVICE_PAGES_GPA + 0x1000).to_vec();
        let outcome = if queue == 0 {
            device.receive_frames(&mut mem, frames.iter().map(|f| f.as_slice()))
        } else {
            device.notify(&mut mem, 1)
        };
        match outcome {
            Ok(_) => {
                prop_assert!(device.is_live());
                let used = rings[queue].used_idx(&mem);
                prop_assert!(used <= 8);
            }
            Err(e) => {
                prop_assert!(e.broke_device());
                prop_assert!(!e.to_string().is_empty());
                prop_assert_ne!(device.status() & status::DEVICE_NEEDS_RESET, 0);
            }
        }
        // Device 1's page, where no buffer can be (they are all checked to
        // lie inside memory, and none was put there), is untouched.
        let after: Vec<u8> = peek::<_, 64>(&mem, guest_abi::virtio::DEVICE_PAGES_GPA + 0x1000).to_vec();
        prop_assert_eq!(before, after);
    }

    #[test]
    fn random_queue_layouts_never_panic_the_status_call(
        size in prop_oneof![0u16..300, any::<u16>()],
        descriptors in prop_oneof![RINGS..RINGS + 0x100, any::<u64>()],
        available in prop_oneof![RINGS..RINGS + 0x100, any::<u64>()],
        used in prop_oneof![RINGS..RINGS + 0x100, any::<u64>()],
        wanted_status in any::<u32>(),
    ) {
        let mut mem = memory();
        let mut device = Device::new(0, Console::new(Sink)).unwrap();
        device.install(&mut mem).unwrap();
        let page = device.page().as_u64();
        poke(&mut mem, page + offset::DRIVER_FEATURES, &guest_abi::virtio::feature::VERSION_1.to_le_bytes());
        let _ = set_status(&mut device, &mut mem, status::FEATURES_OK);
        let base = page + offset::queue(1);
        poke(&mut mem, base + offset::queue::SIZE, &size.to_le_bytes());
        poke(&mut mem, base + offset::queue::DESCRIPTORS, &descriptors.to_le_bytes());
        poke(&mut mem, base + offset::queue::DRIVER_AREA, &available.to_le_bytes());
        poke(&mut mem, base + offset::queue::DEVICE_AREA, &used.to_le_bytes());
        poke(&mut mem, base + offset::queue::READY, &1u16.to_le_bytes());
        let result = set_status(&mut device, &mut mem, wanted_status);
        if let Ok(accepted) = result {
            prop_assert_eq!(accepted & status::DEVICE_NEEDS_RESET, 0);
            if device.queue_is_live(1) {
                let layout = QueueLayout::check(&mem, size, 64, descriptors, available, used);
                prop_assert!(layout.is_ok());
            }
        }
        // Whatever happened, a notify of each queue stays safe.
        for q in 0..3 {
            let _ = device.notify(&mut mem, q);
        }
        let _ = ring::MAX_QUEUE_SIZE;
    }
}
