//! # Hostile rings: what the host must refuse
//!
//! `guests=devices/hostile-<kind>` brings one device up through our own
//! transport (`guest_rt::virtio::PageTransport`) only as far as the attack
//! needs, and then, instead of handing the rings to a driver, writes them
//! by hand: the descriptor table and the available ring are our memory,
//! and nothing stops a guest from scribbling whatever it likes there. The
//! host reads them only when we call it, and must check every index,
//! address, length and flag before it trusts one; a ring it cannot go on
//! from breaks the device, and the host ends the guest with a reason that
//! names what we did (`virtio-net queue 1: descriptor 1 loops back to 0`).
//!
//! Each action prints `devices: about to try <kind>: <what>` right before
//! the call that must not come back, and, if it does come back, `survived
//! <kind>` and exits 1. A test expects each to be killed
//! (`devices/hostile-loop:killed`) with exactly its reason
//! (`tests/tests/devices.rs`). The lethal actions, by the step that is
//! refused:
//!
//! - at a notify of virtio-net's transmit queue, a chain that: `loop`s
//!   back to its head; lies `outside` guest memory (a buffer at the first
//!   byte past it); `wrap`s around the address space (a buffer whose end
//!   overflows 64 bits); is `huge` (a length of 4 GiB less one byte, far
//!   past what a chain may hold); is a `long-chain`, the whole table and on
//!   past its last descriptor; is `write-only` (a device-writable buffer on
//!   a queue the device only reads); is `indirect` (not negotiated);
//!   or an available ring that runs `avail-ahead` more than a queue's
//!   worth, or names a `bad-head` past the table;
//! - at a notify of virtio-rng's request queue, whose buffers the device
//!   writes: a `read-only` buffer (the write into a read-only descriptor);
//!   and the same on virtio-net's receive queue (`rx-read-only`), which
//!   needs no notify (the host looks at it when a frame comes) but whose
//!   notify, made anyway, has the host check the buffers posted;
//! - while the queue is set up (the status call of `queue_set`): a used
//!   ring straddling the end of guest memory (`ring-outside`), a
//!   descriptor table off its 16-byte alignment (`misaligned`), a queue
//!   size that is no power of two (`bad-size`); and, before any queue,
//!   `DRIVER_OK` without accepted features (`driver-ok-early`).
//!
//! Two more the host contains without a kill, since they harm nothing: a
//! notify of a queue the card does not have (`no-queue`) and calls naming
//! a device we do not have (`no-device`). Each call must fail with
//! `InvalidArgument`, and the card must still be live afterwards; the
//! guest prints what the host answered and exits with [`CONTAINED`].
//!
//! Every ring here is our own: one page of DMA memory holding the three
//! areas of a split virtqueue of [`SIZE`] entries ([`Ring`]), and a page
//! of payload for the buffers that are valid. The payload is zeros: were a
//! chain ever sent, it would reach the switch as a frame and show in our
//! port's counts, which the test reads.

use crate::guest::{self, Failed, check, fail};
use guest_abi::hypercall::Error;
use guest_abi::virtio::ring::{self, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Descriptor};
use guest_abi::virtio::{RNG_REQUEST_QUEUE, net_queue, status};
use guest_rt::paging::FrameAllocator;
use guest_rt::virtio::virtio_drivers::device::common::Feature;
use guest_rt::virtio::virtio_drivers::transport::{DeviceStatus, Transport};
use guest_rt::virtio::virtio_drivers::{BufferDirection, Hal};
use guest_rt::virtio::{self, GuestHal, PageTransport};
use guest_rt::{boot, hypercall, println};

/// The exit code when the host let a lethal action through.
const SURVIVED: u64 = 1;
/// The exit code for an unknown kind.
const UNKNOWN: u64 = 2;
/// The exit code of the actions the host contains without a kill.
const CONTAINED: u64 = 3;

/// Entries of our queues: small, so that a chain through the whole table
/// is short.
const SIZE: u16 = 8;
/// Where each area of a [`Ring`] lies in its page: the descriptor table
/// first, the available ring after it, the used ring at the half page.
const DESCRIPTORS: u64 = 0;
const AVAILABLE: u64 = ring::descriptor_table_bytes(SIZE);
const USED: u64 = 2048;
const _: () = assert!(AVAILABLE + ring::avail_ring_bytes(SIZE) <= USED);
const _: () = assert!(USED + ring::used_ring_bytes(SIZE) <= 4096);
const _: () = assert!(AVAILABLE.is_multiple_of(ring::AVAIL_ALIGN));
const _: () = assert!(USED.is_multiple_of(ring::USED_ALIGN));

/// Bytes of each valid buffer: the 12-byte virtio-net header and a
/// minimal Ethernet frame's worth.
const BUFFER_BYTES: u32 = 64;

/// Pages of DMA memory: a ring and a payload page, with room to spare.
const DMA_PAGES: usize = 4;

/// How an action that came back ended.
enum Outcome {
    /// The host let a lethal call through, answering this.
    Answered(Result<u64, Error>),
    /// The host refused what it should have without a kill, and the line
    /// saying how is printed.
    Contained,
}

/// One thing to try: its kind on the command line, and the function that
/// does it, which returns only if the host let it through (or, for the
/// contained ones, refused it without a kill).
struct Action {
    kind: &'static str,
    run: fn(&Devices) -> Result<Outcome, Failed>,
}

const ACTIONS: &[Action] = &[
    Action {
        kind: "loop",
        run: chain_loops,
    },
    Action {
        kind: "outside",
        run: buffer_outside,
    },
    Action {
        kind: "wrap",
        run: buffer_wraps,
    },
    Action {
        kind: "huge",
        run: buffer_huge,
    },
    Action {
        kind: "long-chain",
        run: chain_too_long,
    },
    Action {
        kind: "write-only",
        run: writable_on_transmit,
    },
    Action {
        kind: "indirect",
        run: indirect,
    },
    Action {
        kind: "avail-ahead",
        run: available_too_far_ahead,
    },
    Action {
        kind: "bad-head",
        run: head_past_the_table,
    },
    Action {
        kind: "read-only",
        run: readable_on_rng,
    },
    Action {
        kind: "rx-read-only",
        run: readable_on_receive,
    },
    Action {
        kind: "ring-outside",
        run: used_ring_outside,
    },
    Action {
        kind: "misaligned",
        run: descriptors_misaligned,
    },
    Action {
        kind: "bad-size",
        run: size_not_a_power_of_two,
    },
    Action {
        kind: "driver-ok-early",
        run: driver_ok_before_features,
    },
    Action {
        kind: "no-queue",
        run: notify_of_no_queue,
    },
    Action {
        kind: "no-device",
        run: calls_for_no_device,
    },
];

/// The numbers of the two devices we attack.
struct Devices {
    net: usize,
    rng: usize,
}

/// `guests=devices/hostile-<kind>`: finds the devices, takes DMA memory,
/// and tries `kind`. Returns the exit code.
pub fn main(kind: &str) -> u64 {
    let Some(action) = ACTIONS.iter().find(|a| a.kind == kind) else {
        println!("devices: unknown hostile kind `{kind}`; known:");
        for action in ACTIONS {
            println!("  hostile-{}", action.kind);
        }
        return UNKNOWN;
    };
    let set_up = || -> Result<Devices, Failed> {
        let found = guest::find_devices()?;
        let mut frames = FrameAllocator::after_image();
        check(virtio::give_dma_pages(&mut frames, DMA_PAGES), "DMA memory")?;
        Ok(Devices {
            net: found.net,
            rng: found.rng,
        })
    };
    let outcome = set_up().and_then(|devices| (action.run)(&devices));
    match outcome {
        Ok(Outcome::Contained) => CONTAINED,
        Ok(Outcome::Answered(answer)) => {
            println!("survived {kind}: the host answered {answer:x?}");
            SURVIVED
        }
        Err(Failed) => SURVIVED,
    }
}

/// Says what comes next: the test finds the line before the kill.
fn about_to_try(kind: &str, what: core::fmt::Arguments<'_>) {
    println!("devices: about to try {kind}: {what}");
}

// ---- Our own rings ------------------------------------------------------

/// One page of DMA memory laid out as a split virtqueue of [`SIZE`]
/// entries (the areas at [`DESCRIPTORS`], [`AVAILABLE`] and [`USED`]), and
/// a page of payload for valid buffers.
struct Ring {
    /// The page, through the start-up map.
    page: *mut u8,
    /// Its guest-physical address.
    gpa: u64,
    /// The payload page's guest-physical address.
    payload: u64,
    /// The available index we have written last.
    avail_idx: u16,
}

impl Ring {
    /// Two zeroed pages from the DMA pool, kept for the program's life.
    fn allocate() -> Result<Self, Failed> {
        let (gpa, page) = GuestHal::dma_alloc(1, BufferDirection::Both);
        let (payload, _) = GuestHal::dma_alloc(1, BufferDirection::Both);
        if gpa == 0 || payload == 0 {
            fail!("no DMA memory for a ring");
        }
        Ok(Self {
            page: page.as_ptr(),
            gpa,
            payload,
            avail_idx: 0,
        })
    }

    /// Writes descriptor `index` of the table, as it is: no check at all.
    fn set(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(index < SIZE, "descriptor {index} of {SIZE}");
        let at = DESCRIPTORS + u64::from(index) * ring::DESCRIPTOR_BYTES;
        let descriptor = Descriptor {
            addr,
            len,
            flags,
            next,
        };
        // SAFETY: the page is DMA memory handed to us alone for the
        // program's life (never given back), mapped by the start-up map;
        // the entry lies inside it (index < SIZE, the table at offset 0)
        // and is 16-byte aligned in a page-aligned page. Volatile: the host
        // reads it behind the compiler's back.
        unsafe {
            self.page
                .add(at as usize)
                .cast::<Descriptor>()
                .write_volatile(descriptor)
        };
    }

    /// Writes the available ring's word `offset` (its `flags`, `idx` or
    /// a slot of `ring`).
    fn write_available(&mut self, offset: u64, value: u16) {
        assert!(
            offset + 2 <= ring::avail_ring_bytes(SIZE),
            "available ring offset {offset}"
        );
        // SAFETY: as in `set`: inside our page (asserted), 2-byte aligned
        // (the ring and every word in it are).
        unsafe {
            self.page
                .add((AVAILABLE + offset) as usize)
                .cast::<u16>()
                .write_volatile(value)
        };
    }

    /// Makes the chain from `head` available: the next slot of the
    /// available ring names it, then the index moves on.
    fn offer(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % SIZE);
        self.write_available(ring::RING + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_available(ring::IDX, self.avail_idx);
    }

    /// Sets the available index to `idx` outright.
    fn set_available_index(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write_available(ring::IDX, idx);
    }

    /// The guest-physical addresses of the three areas.
    fn areas(&self) -> (u64, u64, u64) {
        (
            self.gpa + DESCRIPTORS,
            self.gpa + AVAILABLE,
            self.gpa + USED,
        )
    }
}

/// A device with its features accepted and a ring of ours ready, but no
/// queue set up yet.
fn negotiated(index: usize) -> Result<(PageTransport, Ring), Failed> {
    let mut transport = check(PageTransport::new(index), "opening a device")?;
    transport.begin_init(Feature::VERSION_1);
    Ok((transport, Ring::allocate()?))
}

/// A device live, with queue `queue` set up on a ring of ours (as a
/// driver would, but the ring is for us to write).
fn live(index: usize, queue: u16) -> Result<(PageTransport, Ring), Failed> {
    let (mut transport, ring) = negotiated(index)?;
    let (descriptors, available, used) = ring.areas();
    transport.queue_set(queue, u32::from(SIZE), descriptors, available, used);
    transport.finish_init();
    Ok((transport, ring))
}

/// virtio-net, live, with its transmit queue on a ring of ours.
fn transmit_ring(devices: &Devices) -> Result<Ring, Failed> {
    let (_transport, ring) = live(devices.net, net_queue::TRANSMIT)?;
    Ok(ring)
}

/// The `virtio_notify(device, queue)` hypercall: the host takes whatever
/// the queue's rings say.
fn notify(device: usize, queue: u64) -> Result<u64, Error> {
    // SAFETY: every buffer our rings make available is a page of DMA
    // memory we keep for the program's life and use for nothing else, or
    // an address outside our memory, which the host must refuse (that is
    // the point); nothing the host may write is memory we rely on.
    unsafe { hypercall::virtio_notify(device as u64, queue) }
}

/// The `virtio_status(device)` hypercall.
fn status_call(device: u64) -> Result<u64, Error> {
    // SAFETY: the only rings a page of ours describes are the DMA pages
    // of `Ring`, kept for the program's life; for a device that does not
    // exist there is no page at all.
    unsafe { hypercall::virtio_status(device) }
}

/// Notifies virtio-net's transmit queue after announcing `kind`; returns
/// only if the host let it through.
fn notify_transmit(devices: &Devices, kind: &str, what: core::fmt::Arguments<'_>) -> Outcome {
    about_to_try(kind, what);
    Outcome::Answered(notify(devices.net, u64::from(net_queue::TRANSMIT)))
}

// ---- Lethal at a notify -------------------------------------------------

/// A chain 0 -> 1 -> 0: descriptor 1's `next` leads back to the head. A
/// host that followed it would walk forever. The host must say
/// `virtio-net queue 1: descriptor 1 loops back to 0`.
fn chain_loops(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.set(0, ring.payload, BUFFER_BYTES, DESC_F_NEXT, 1);
    ring.set(1, ring.payload, BUFFER_BYTES, DESC_F_NEXT, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "loop",
        format_args!("a transmit chain 0 -> 1 -> 0"),
    ))
}

/// A buffer at the first byte past our memory. The host must say
/// `virtio-net queue 1: descriptor 0's buffer at gpa:<our size> (64
/// bytes) is outside guest memory`.
fn buffer_outside(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    let end = boot::memory_bytes();
    ring.set(0, end, BUFFER_BYTES, 0, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "outside",
        format_args!("a transmit buffer at {end:#x}, the end of our memory"),
    ))
}

/// A buffer whose end overflows 64 bits: `addr + len` wraps to a small
/// address inside our memory, which a careless bounds check would pass.
/// The host must say `virtio-net queue 1: descriptor 0's buffer at
/// gpa:0xfffffffffffffff0 (64 bytes) is outside guest memory`.
fn buffer_wraps(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    let addr = u64::MAX - 15;
    ring.set(0, addr, BUFFER_BYTES, 0, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "wrap",
        format_args!("a transmit buffer at {addr:#x}, whose end wraps past 2^64"),
    ))
}

/// A buffer of `u32::MAX` bytes (4 GiB less one, the most a descriptor
/// can say) at a valid address: the host would copy far more than our
/// memory. The host must say `virtio-net queue 1: descriptor 0 takes its
/// chain to 4294967295 bytes, more than the 1048576 a chain may hold`.
fn buffer_huge(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.set(0, ring.payload, u32::MAX, 0, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "huge",
        format_args!("a transmit buffer of {} bytes", u32::MAX),
    ))
}

/// A chain through every descriptor of the table, 0 -> 1 -> ... -> 7,
/// whose last one goes on to a ninth. A chain longer than the queue can
/// only go past the table or come back into it (a loop): this one goes
/// past. The host must say `virtio-net queue 1: descriptor 7 continues
/// at 8, past the table of 8`.
fn chain_too_long(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    for index in 0..SIZE {
        ring.set(index, ring.payload, BUFFER_BYTES, DESC_F_NEXT, index + 1);
    }
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "long-chain",
        format_args!("a transmit chain of all {SIZE} descriptors and one more"),
    ))
}

/// A device-writable buffer on the transmit queue, whose buffers the
/// device only reads. The host must say `virtio-net queue 1: descriptor 0
/// is device-writable on a queue the device only reads`.
fn writable_on_transmit(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.set(0, ring.payload, BUFFER_BYTES, DESC_F_WRITE, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "write-only",
        format_args!("a device-writable buffer on the transmit queue"),
    ))
}

/// An indirect descriptor, a feature the host does not offer. The host
/// must say `virtio-net queue 1: descriptor 0 is indirect, and indirect
/// descriptors were not negotiated`.
fn indirect(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.set(0, ring.payload, 16, DESC_F_INDIRECT, 0);
    ring.offer(0);
    Ok(notify_transmit(
        devices,
        "indirect",
        format_args!("an indirect descriptor, not negotiated"),
    ))
}

/// An available index a queue's worth and one more ahead of the device:
/// chains the ring has no slots for. The host must say `virtio-net queue
/// 1: available index 9 is more than the queue's 8 entries ahead of 0`.
fn available_too_far_ahead(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.set(0, ring.payload, BUFFER_BYTES, 0, 0);
    ring.set_available_index(SIZE + 1);
    Ok(notify_transmit(
        devices,
        "avail-ahead",
        format_args!("an available index of {}, {SIZE} slots", SIZE + 1),
    ))
}

/// An available ring naming descriptor 8 of a table of 8. The host must
/// say `virtio-net queue 1: available ring names descriptor 8, past the
/// table of 8`.
fn head_past_the_table(devices: &Devices) -> Result<Outcome, Failed> {
    let mut ring = transmit_ring(devices)?;
    ring.offer(SIZE);
    Ok(notify_transmit(
        devices,
        "bad-head",
        format_args!("a chain from descriptor {SIZE}, past the table"),
    ))
}

/// A device-readable buffer on virtio-rng's request queue, whose buffers
/// the device writes: the host would write into memory we marked
/// read-only. The host must say `virtio-rng queue 0: descriptor 0 is
/// device-readable on a queue the device writes (a write into a read-only
/// buffer)`.
fn readable_on_rng(devices: &Devices) -> Result<Outcome, Failed> {
    readable_on(
        devices.rng,
        RNG_REQUEST_QUEUE,
        "read-only",
        format_args!("a read-only buffer on the entropy device's request queue"),
    )
}

/// A device-readable buffer posted on virtio-net's receive queue, and
/// the notify the queue does not need: the host checks the new buffers
/// then, rather than when a frame first needs one. The host must say
/// `virtio-net queue 0: descriptor 0 is device-readable on a queue the
/// device writes (a write into a read-only buffer)`.
fn readable_on_receive(devices: &Devices) -> Result<Outcome, Failed> {
    readable_on(
        devices.net,
        net_queue::RECEIVE,
        "rx-read-only",
        format_args!("a read-only buffer on the network card's receive queue"),
    )
}

/// A device-readable buffer offered on `queue` of `device`, a queue the
/// device writes, and the notify that hands it over.
fn readable_on(
    device: usize,
    queue: u16,
    kind: &str,
    what: core::fmt::Arguments<'_>,
) -> Result<Outcome, Failed> {
    let (_transport, mut ring) = live(device, queue)?;
    ring.set(0, ring.payload, BUFFER_BYTES, 0, 0);
    ring.offer(0);
    about_to_try(kind, what);
    Ok(Outcome::Answered(notify(device, u64::from(queue))))
}

// ---- Lethal at set-up ---------------------------------------------------

/// Announces `kind` (`what` forged) and sets up the transmit queue with
/// `size` entries at `areas` (descriptor table, available ring, used
/// ring), one of which is forged: the host must refuse it at set-up.
fn set_up_forged_queue(
    mut transport: PageTransport,
    kind: &str,
    what: core::fmt::Arguments<'_>,
    size: u16,
    (descriptors, available, used): (u64, u64, u64),
) -> Result<Outcome, Failed> {
    about_to_try(kind, what);
    transport.queue_set(
        net_queue::TRANSMIT,
        u32::from(size),
        descriptors,
        available,
        used,
    );
    Ok(Outcome::Answered(Ok(transport.get_status().bits().into())))
}

/// A used ring (the area the host writes) that starts 64 bytes before
/// the end of our memory and runs 6 bytes past it. The host must say
/// `virtio-net queue 1: used ring at gpa:<end - 64> (70 bytes) is outside
/// guest memory` when the queue is set up.
fn used_ring_outside(devices: &Devices) -> Result<Outcome, Failed> {
    let (transport, ring) = negotiated(devices.net)?;
    let (descriptors, available, _) = ring.areas();
    let used = boot::memory_bytes() - 64;
    set_up_forged_queue(
        transport,
        "ring-outside",
        format_args!(
            "a used ring at {used:#x}, {} bytes across the end of our memory",
            ring::used_ring_bytes(SIZE)
        ),
        SIZE,
        (descriptors, available, used),
    )
}

/// A descriptor table 8 bytes past a 16-byte boundary. The host must say
/// `virtio-net queue 1: descriptor table at gpa:<its address> is not
/// 16-byte aligned` when the queue is set up.
fn descriptors_misaligned(devices: &Devices) -> Result<Outcome, Failed> {
    let (transport, ring) = negotiated(devices.net)?;
    let (descriptors, available, used) = ring.areas();
    let descriptors = descriptors + 8;
    set_up_forged_queue(
        transport,
        "misaligned",
        format_args!("a descriptor table at gpa:{descriptors:#x}"),
        SIZE,
        (descriptors, available, used),
    )
}

/// A queue of 3 entries: not a power of two. The host must say
/// `virtio-net queue 1: size 3 is not a power of two between 1 and the
/// queue's maximum 256` when the queue is set up.
fn size_not_a_power_of_two(devices: &Devices) -> Result<Outcome, Failed> {
    let (transport, ring) = negotiated(devices.net)?;
    set_up_forged_queue(
        transport,
        "bad-size",
        format_args!("a transmit queue of 3 entries"),
        3,
        ring.areas(),
    )
}

/// `DRIVER_OK` with no features accepted: a device driven before the
/// handshake. The host must say `virtio-net: DRIVER_OK set before the
/// features were accepted (FEATURES_OK)`.
fn driver_ok_before_features(devices: &Devices) -> Result<Outcome, Failed> {
    let mut transport = check(PageTransport::new(devices.net), "opening virtio-net")?;
    transport.set_status(DeviceStatus::empty());
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    about_to_try(
        "driver-ok-early",
        format_args!("DRIVER_OK without FEATURES_OK"),
    );
    transport
        .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK);
    Ok(Outcome::Answered(Ok(transport.get_status().bits().into())))
}

// ---- Contained: failed calls -------------------------------------------

/// What a call the host must refuse gave; `Err(Failed)` if it was let
/// through, after saying so.
fn refused(call: &str, answer: Result<u64, Error>) -> Result<Error, Failed> {
    match answer {
        Err(error) => Ok(error),
        Ok(value) => {
            println!("survived {call}: the host answered {value:#x}");
            Err(Failed)
        }
    }
}

/// Notifies of queues virtio-net does not have: 2 (it has 0 and 1),
/// 65537 (which, cut to 16 bits, would be the transmit queue) and the
/// largest number. Each call must fail with `InvalidArgument`, and leave
/// the card live: its status still `0xf` (no `DEVICE_NEEDS_RESET`), its
/// transmit queue still answering a notify with 0.
fn notify_of_no_queue(devices: &Devices) -> Result<Outcome, Failed> {
    let _ring = transmit_ring(devices)?;
    about_to_try(
        "no-queue",
        format_args!("notifies of virtio-net queues 2, 65537 and 2^64-1"),
    );
    let mut errors = [Error::InvalidArgument; 3];
    for (queue, error) in [2, 0x1_0001, u64::MAX].into_iter().zip(&mut errors) {
        *error = refused("no-queue", notify(devices.net, queue))?;
    }
    let live = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    let status = check(status_call(devices.net as u64), "the card's status")?;
    if status != u64::from(live) {
        fail!("no-queue: the card's status is {status:#x} after the refusals, not {live:#x}");
    }
    let answer = check(
        notify(devices.net, u64::from(net_queue::TRANSMIT)),
        "a notify of the transmit queue",
    )?;
    println!(
        "devices: no-queue: queue 2 {:?}, queue 65537 {:?}, queue 18446744073709551615 {:?}; the card still live (status {status:#x}), queue 1 answers {answer}",
        errors[0], errors[1], errors[2]
    );
    Ok(Outcome::Contained)
}

/// Calls naming devices we do not have: the number just past ours, the
/// first past the most a guest may have (8), and the largest number, for
/// both hypercalls. Each must fail with `InvalidArgument`.
fn calls_for_no_device(_devices: &Devices) -> Result<Outcome, Failed> {
    let past = virtio::device_count() as u64;
    about_to_try(
        "no-device",
        format_args!("status and notify calls for devices {past}, 8 and 2^64-1"),
    );
    for device in [past, 8, u64::MAX] {
        let by_status = refused("no-device", status_call(device))?;
        let by_notify = refused("no-device", {
            // SAFETY: there is no such device, so no rings to vouch for.
            unsafe { hypercall::virtio_notify(device, 0) }
        })?;
        println!("devices: no-device: device {device}: status {by_status:?}, notify {by_notify:?}");
    }
    Ok(Outcome::Contained)
}
