//! # `devices`: the guest's virtio devices, end to end
//!
//! Every guest gets a virtio-console, a virtio-rng and a virtio-net from
//! the host (`guest_abi::virtio`); this guest drives each with the drivers
//! of the `virtio-drivers` crate over `guest_rt::virtio`'s transport, and
//! checks, one line each (`devices: ok <check>`):
//!
//! 1. `found`: the boot parameters list the three devices, each page with
//!    the magic and a type we know;
//! 2. `console`: a line written through virtio-console reaches the host's
//!    console, prefixed with our name like any other output;
//! 3. `rng`: 64 bytes from virtio-rng, not all equal;
//! 4. `dma`: the two drivers dropped, every page of DMA memory they took
//!    is back in the pool;
//! 5. `net`: with a role on the command line, an exchange of Ethernet
//!    frames with a second guest through the host's virtual switch. Run
//!    two, `guests=devices/a,devices/b`: `b` broadcasts a hello until `a`
//!    answers; `a` sends [`net::FRAMES`] frames of a seeded pattern, each
//!    with its sequence number, to `b`'s address; `b` checks every payload
//!    in sequence and acknowledges, and at the end answers with the
//!    checksum of all it accepted, which `a` compares with its own. The
//!    exchange is go-back-N over an unreliable network: a frame the
//!    switch or a full receive queue drops is sent again, a frame out of
//!    sequence is dropped by `b`, and nothing is assumed about order
//!    beyond what one switch between two ports gives.
//!
//! It ends with `devices: all checks passed` and exit 0; the first failed
//! check prints `devices: FAILED ...` and exits 1. Without a role
//! (`guests=devices`) the network check is skipped.
//!
//! With `hostile-<kind>` for a role (`guests=devices/hostile-loop:killed`)
//! the guest checks nothing: it brings a device up and hands the host a
//! ring it must refuse, a loop, a buffer outside its memory, a length of
//! 4 GiB, a chain longer than the queue, and more ([`hostile`] lists
//! them); the host must end it with a reason naming exactly that, while
//! any other guests go on with their traffic.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_rt::entry!(guest::main);

#[cfg(target_os = "none")]
#[path = "devices/hostile.rs"]
mod hostile;

#[cfg(target_os = "none")]
mod guest {
    use super::net;
    use guest_abi::virtio::DeviceType;
    use guest_rt::paging::FrameAllocator;
    use guest_rt::virtio::virtio_drivers::device::rng::VirtIORng;
    use guest_rt::virtio::{self, Console, GuestHal, PageTransport};
    use guest_rt::{boot, println};

    /// A check that failed; its `devices: FAILED` line is printed.
    pub struct Failed;

    /// Prints `devices: FAILED <what>` and returns [`Failed`] from the
    /// function.
    macro_rules! fail {
        ($($arg:tt)*) => {{
            guest_rt::println!("devices: FAILED {}", format_args!($($arg)*));
            return Err($crate::guest::Failed);
        }};
    }
    pub(crate) use fail;

    /// `result`'s value, or a `FAILED` line naming `what` and the error.
    pub fn check<T, E: core::fmt::Debug>(result: Result<T, E>, what: &str) -> Result<T, Failed> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => fail!("{what}: {error:?}"),
        }
    }

    /// Pages of DMA memory: the rings of the three devices (two pages a
    /// queue) and the network card's receive buffers, with room to spare.
    const DMA_PAGES: usize = 64;

    /// The bytes asked of the entropy device.
    const RANDOM_BYTES: usize = 64;

    pub fn main() -> u64 {
        if let Some(kind) = boot::cmdline().strip_prefix("hostile-") {
            return super::hostile::main(kind);
        }
        match run() {
            Ok(()) => {
                println!("devices: all checks passed");
                0
            }
            Err(Failed) => 1,
        }
    }

    fn run() -> Result<(), Failed> {
        let found = find_devices()?;
        let mut frames = FrameAllocator::after_image();
        check(virtio::give_dma_pages(&mut frames, DMA_PAGES), "DMA memory")?;
        console(found.console)?;
        rng(found.rng)?;
        dma_pages_back()?;
        match boot::cmdline() {
            "a" => net::send(found.net),
            "b" => net::receive(found.net),
            "" => {
                println!("devices: net skipped (no role: run devices/a and devices/b)");
                Ok(())
            }
            other => fail!("unknown role `{other}` (a or b)"),
        }
    }

    /// The numbers of our three devices.
    pub struct Found {
        pub console: usize,
        pub rng: usize,
        pub net: usize,
    }

    /// Finds each device by the type its page names, not by position.
    pub fn find_devices() -> Result<Found, Failed> {
        let count = virtio::device_count();
        let find = |kind| match virtio::find(kind) {
            Some(index) => Ok(index),
            None => {
                println!("devices: FAILED no {kind:?} among {count} device(s)");
                Err(Failed)
            }
        };
        let found = Found {
            console: find(DeviceType::Console)?,
            rng: find(DeviceType::Rng)?,
            net: find(DeviceType::Net)?,
        };
        println!(
            "devices: ok found {count} devices: console {}, rng {}, net {}",
            found.console, found.rng, found.net
        );
        Ok(found)
    }

    fn open(index: usize) -> Result<PageTransport, Failed> {
        check(PageTransport::new(index), "opening a device")
    }

    /// Writes one line through virtio-console.
    fn console(index: usize) -> Result<(), Failed> {
        let mut console = check(Console::<GuestHal, _>::new(open(index)?), "virtio-console")?;
        let line = b"devices: this line came through virtio-console\n";
        check(console.write(line), "writing to virtio-console")?;
        println!("devices: ok console: a line written through virtio-console");
        Ok(())
    }

    /// Asks virtio-rng for bytes and looks at them.
    fn rng(index: usize) -> Result<(), Failed> {
        let mut rng = check(VirtIORng::<GuestHal, _>::new(open(index)?), "virtio-rng")?;
        let mut bytes = [0u8; RANDOM_BYTES];
        let got = check(rng.request_entropy(&mut bytes), "reading virtio-rng")?;
        if got != RANDOM_BYTES {
            fail!("rng gave {got} bytes, asked {RANDOM_BYTES}");
        }
        if bytes.iter().all(|&b| b == bytes[0]) {
            fail!("rng gave {RANDOM_BYTES} bytes all {:#04x}", bytes[0]);
        }
        println!(
            "devices: ok rng {got} bytes, not all equal (first {:02x?})",
            &bytes[..4]
        );
        Ok(())
    }

    /// With the console and rng drivers dropped, their rings went back.
    fn dma_pages_back() -> Result<(), Failed> {
        let in_use = virtio::dma_pages_in_use();
        if in_use != 0 {
            fail!("{in_use} DMA pages still handed out after the drivers were dropped");
        }
        println!("devices: ok dma: every page back after the console and rng drivers");
        Ok(())
    }
}

/// The frame exchange between `devices/a` and `devices/b`.
#[cfg(target_os = "none")]
mod net {
    use crate::guest::{Failed, check, fail};
    use guest_rt::virtio::virtio_drivers::device::net::VirtIONetRaw;
    use guest_rt::virtio::{self, GuestHal, PageTransport};
    use guest_rt::{println, time};

    /// Frames `a` sends.
    pub const FRAMES: u32 = 1000;
    /// Payload bytes in each.
    const PAYLOAD_BYTES: usize = 1024;
    /// Frames `a` may have sent and not yet seen acknowledged: half the
    /// receive buffers `b` keeps posted.
    const WINDOW: u32 = 32;
    /// Descriptors per queue, and receive buffers posted.
    const QUEUE_SIZE: usize = 64;
    /// Bytes of a receive buffer: the 12-byte virtio header and the
    /// largest frame, rounded up.
    const RX_BUFFER_BYTES: usize = 2048;
    /// The largest Ethernet frame the card carries.
    const MAX_FRAME_BYTES: usize = 1518;

    /// How long `a` waits for an acknowledgement before it sends again
    /// from the first frame not acknowledged.
    const RETRANSMIT_NS: u64 = 50_000_000;
    /// How often `b` says hello until `a` answers.
    const HELLO_EVERY_NS: u64 = 100_000_000;
    /// How long either waits without progress before it gives up: far
    /// longer than a slow machine needs, well inside a test's time limit.
    const GIVE_UP_NS: u64 = 10_000_000_000;
    /// How long `b` stays to answer retransmissions once it has every
    /// frame, if `a`'s goodbye never comes.
    const LINGER_NS: u64 = 2_000_000_000;

    /// The seed of the payload pattern, known to both sides.
    const SEED: u64 = 0x7267_7565_7374_0001;

    /// The Ethertype of our frames: IEEE 802's "local experimental".
    const ETHERTYPE: u16 = 0x88b5;
    /// Our frames start, after the Ethernet header, with this.
    const MAGIC: [u8; 4] = *b"RGdv";
    const BROADCAST: [u8; 6] = [0xff; 6];

    /// Offsets in a frame: the Ethernet header, then ours, then the
    /// payload.
    const DESTINATION: usize = 0;
    const SOURCE: usize = 6;
    const TYPE: usize = 12;
    const OUR_MAGIC: usize = 14;
    const KIND: usize = 18;
    const SEQUENCE: usize = 20;
    const VALUE: usize = 24;
    const PAYLOAD: usize = 32;
    const _: () = assert!(PAYLOAD + PAYLOAD_BYTES <= MAX_FRAME_BYTES);

    /// What a frame of ours says.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        /// `b` is here (broadcast; the value is the role, `b'b'`).
        Hello = 1,
        /// Frame `sequence` of the pattern.
        Data = 2,
        /// `b` has every frame before `sequence`.
        Ack = 3,
        /// `b` has all `sequence` frames; the value is their checksum.
        Done = 4,
        /// `a` heard the checksum: `b` may go.
        Bye = 5,
    }

    impl Kind {
        fn from_byte(byte: u8) -> Option<Kind> {
            [Kind::Hello, Kind::Data, Kind::Ack, Kind::Done, Kind::Bye]
                .into_iter()
                .find(|k| *k as u8 == byte)
        }
    }

    /// One received frame of ours.
    struct Message<'f> {
        from: [u8; 6],
        kind: Kind,
        sequence: u32,
        value: u64,
        payload: &'f [u8],
    }

    /// Reads `frame` as one of ours, if it is one.
    fn parse(frame: &[u8]) -> Option<Message<'_>> {
        if frame.len() < PAYLOAD
            || frame[TYPE..TYPE + 2] != ETHERTYPE.to_be_bytes()
            || frame[OUR_MAGIC..OUR_MAGIC + 4] != MAGIC
        {
            return None;
        }
        Some(Message {
            from: frame[SOURCE..SOURCE + 6].try_into().ok()?,
            kind: Kind::from_byte(frame[KIND])?,
            sequence: u32::from_le_bytes(frame[SEQUENCE..SEQUENCE + 4].try_into().ok()?),
            value: u64::from_le_bytes(frame[VALUE..VALUE + 8].try_into().ok()?),
            payload: &frame[PAYLOAD..],
        })
    }

    /// Fills `payload` with frame `sequence`'s pattern: splitmix64 from the
    /// seed and the sequence number, so each frame's bytes differ.
    fn pattern(sequence: u32, payload: &mut [u8]) {
        let mut state = SEED ^ u64::from(sequence).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for chunk in payload.chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }

    /// FNV-1a, 64 bits: the checksum of the payloads, in sequence.
    struct Checksum(u64);

    impl Checksum {
        fn new() -> Self {
            Self(0xcbf2_9ce4_8422_2325)
        }

        fn add(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }

    /// What `a` expects `b` to report: the checksum of every payload.
    fn expected_checksum() -> u64 {
        let mut sum = Checksum::new();
        let mut payload = [0u8; PAYLOAD_BYTES];
        for sequence in 0..FRAMES {
            pattern(sequence, &mut payload);
            sum.add(&payload);
        }
        sum.0
    }

    /// A MAC address as people write it.
    struct Mac([u8; 6]);

    impl core::fmt::Display for Mac {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let [a, b, c, d, e, g] = self.0;
            write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
        }
    }

    /// The network card with every receive buffer posted.
    struct Link {
        card: VirtIONetRaw<GuestHal, PageTransport, QUEUE_SIZE>,
        /// The card's device number.
        index: usize,
        mac: [u8; 6],
        /// The buffer posted under each token (the head descriptor).
        posted: [Option<&'static mut [u8]>; QUEUE_SIZE],
        /// Frames sent, counting every retransmission.
        sent: u64,
    }

    impl Link {
        /// Prints what the exchange cost: frames sent, and the card's and
        /// the timer's interrupts taken.
        fn report(&self) {
            println!(
                "devices: net: {} frames sent, {} card interrupts, {} timer interrupts",
                self.sent,
                virtio::interrupts_taken(self.index),
                time::timer_interrupts()
            );
        }

        /// Brings the card up and posts a buffer on every receive
        /// descriptor: the host drops frames that find none.
        fn open(index: usize) -> Result<Self, Failed> {
            let transport = check(PageTransport::new(index), "opening virtio-net")?;
            let card = check(VirtIONetRaw::new(transport), "virtio-net")?;
            let mac = card.mac_address();
            let mut link = Link {
                card,
                index,
                mac,
                posted: [const { None }; QUEUE_SIZE],
                sent: 0,
            };
            // One run of DMA memory, two buffers a page.
            let Some(buffers) = virtio::dma_buffer(QUEUE_SIZE * RX_BUFFER_BYTES) else {
                fail!("no DMA memory for receive buffers");
            };
            for buffer in buffers.chunks_exact_mut(RX_BUFFER_BYTES) {
                link.post(buffer)?;
            }
            println!("devices: ok net up, mac {}", Mac(mac));
            Ok(link)
        }

        /// Posts `buffer` for a frame.
        fn post(&mut self, buffer: &'static mut [u8]) -> Result<(), Failed> {
            // SAFETY: the buffer is DMA memory for the program's life, and
            // we touch it again only after the device has used it
            // (receive_complete, with the same buffer, in `receive`).
            let token = check(
                unsafe { self.card.receive_begin(buffer) },
                "posting a receive buffer",
            )?;
            let Some(slot) = self.posted.get_mut(usize::from(token)) else {
                fail!("receive token {token} past the queue");
            };
            // The buffer was handed to the device above, and the table
            // only remembers where: it is read again once the device is done.
            *slot = Some(buffer);
            Ok(())
        }

        /// Sends one frame (the card adds the virtio header).
        fn send(&mut self, frame: &[u8]) -> Result<(), Failed> {
            check(self.card.send(frame), "sending a frame")?;
            self.sent += 1;
            Ok(())
        }

        /// Sends one of our frames to `to`.
        fn send_message(
            &mut self,
            to: [u8; 6],
            kind: Kind,
            sequence: u32,
            value: u64,
        ) -> Result<(), Failed> {
            let mut frame = [0u8; PAYLOAD + PAYLOAD_BYTES];
            frame[DESTINATION..DESTINATION + 6].copy_from_slice(&to);
            frame[SOURCE..SOURCE + 6].copy_from_slice(&self.mac);
            frame[TYPE..TYPE + 2].copy_from_slice(&ETHERTYPE.to_be_bytes());
            frame[OUR_MAGIC..OUR_MAGIC + 4].copy_from_slice(&MAGIC);
            frame[KIND] = kind as u8;
            frame[SEQUENCE..SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
            frame[VALUE..VALUE + 8].copy_from_slice(&value.to_le_bytes());
            let len = if kind == Kind::Data {
                pattern(sequence, &mut frame[PAYLOAD..]);
                PAYLOAD + PAYLOAD_BYTES
            } else {
                PAYLOAD
            };
            self.send(&frame[..len])
        }

        /// Whether a frame is waiting.
        fn has_frame(&self) -> bool {
            self.card.poll_receive().is_some()
        }

        /// The next frame, copied into `out`, waiting at most `timeout_ns`
        /// for one; `None` if none came. The buffer goes straight back.
        fn receive(&mut self, timeout_ns: u64, out: &mut [u8]) -> Result<Option<usize>, Failed> {
            let card = &self.card;
            if !virtio::wait_until(timeout_ns, || card.poll_receive().is_some()) {
                return Ok(None);
            }
            self.card.ack_interrupt();
            let Some(token) = self.card.poll_receive() else {
                return Ok(None);
            };
            let Some(buffer) = self
                .posted
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                fail!("the card used token {token}, which holds no buffer");
            };
            // SAFETY: the buffer posted under this token, as the driver
            // asks.
            let done = unsafe { self.card.receive_complete(token, buffer) };
            let (header, len) = check(done, "completing a receive")?;
            let frame = &buffer[header..header + len];
            let copied = frame.len().min(out.len());
            out[..copied].copy_from_slice(&frame[..copied]);
            self.post(buffer)?;
            Ok(Some(copied))
        }
    }

    /// Nanoseconds since `start`.
    fn since(start: u64) -> u64 {
        time::now_ns().saturating_sub(start)
    }

    /// `a`: waits for `b`'s hello, sends every frame, and checks `b`'s
    /// checksum.
    pub fn send(index: usize) -> Result<(), Failed> {
        let mut link = Link::open(index)?;
        let peer = wait_for_hello(&mut link)?;
        println!("devices: ok net peer {} said hello", Mac(peer));
        let expected = expected_checksum();
        let mut frame = [0u8; MAX_FRAME_BYTES];
        // Every frame before `base` is acknowledged; `next` goes next.
        let (mut base, mut next, mut resent) = (0u32, 0u32, 0u64);
        let mut progress_at = time::now_ns();
        let mut deadline = progress_at + RETRANSMIT_NS;
        loop {
            while next < FRAMES && next < base + WINDOW {
                link.send_message(peer, Kind::Data, next, 0)?;
                next += 1;
            }
            let wait = deadline.saturating_sub(time::now_ns());
            if let Some(len) = link.receive(wait, &mut frame)? {
                let Some(message) = parse(&frame[..len]).filter(|m| m.from == peer) else {
                    continue;
                };
                match message.kind {
                    Kind::Ack | Kind::Done if message.sequence > base => {
                        if message.sequence > next {
                            fail!("{} acknowledged, {next} sent", message.sequence);
                        }
                        base = message.sequence;
                        progress_at = time::now_ns();
                        deadline = progress_at + RETRANSMIT_NS;
                    }
                    _ => {}
                }
                if message.kind == Kind::Done && message.sequence == FRAMES {
                    return finish_sending(&mut link, peer, message.value, expected, resent);
                }
            } else if time::now_ns() >= deadline {
                if since(progress_at) > GIVE_UP_NS {
                    fail!("net: no acknowledgement past frame {base} for 10 s");
                }
                // Go back N: everything not acknowledged, again.
                resent += u64::from(next - base);
                next = base;
                deadline = time::now_ns() + RETRANSMIT_NS;
            }
        }
    }

    /// `a`, with `b`'s checksum: compares it and says goodbye.
    fn finish_sending(
        link: &mut Link,
        peer: [u8; 6],
        reported: u64,
        expected: u64,
        resent: u64,
    ) -> Result<(), Failed> {
        if reported != expected {
            fail!("net: b's checksum {reported:#018x}, ours {expected:#018x}");
        }
        // Three goodbyes: one may be dropped; if all are, b stops waiting
        // on its own after a while.
        for _ in 0..3 {
            link.send_message(peer, Kind::Bye, FRAMES, 0)?;
        }
        println!(
            "devices: ok net {FRAMES} frames sent to {}, {resent} sent again, checksum {expected:#018x} agreed",
            Mac(peer)
        );
        link.report();
        Ok(())
    }

    /// `a`: the address of the first `b` that says hello.
    fn wait_for_hello(link: &mut Link) -> Result<[u8; 6], Failed> {
        let start = time::now_ns();
        let mut frame = [0u8; MAX_FRAME_BYTES];
        while since(start) < GIVE_UP_NS {
            let wait = GIVE_UP_NS - since(start).min(GIVE_UP_NS);
            let Some(len) = link.receive(wait, &mut frame)? else {
                continue;
            };
            if let Some(m) = parse(&frame[..len])
                && m.kind == Kind::Hello
                && m.value == u64::from(b'b')
            {
                return Ok(m.from);
            }
        }
        fail!("net: no hello from devices/b in 10 s")
    }

    /// What `b` knows of the exchange.
    struct Receiver {
        peer: Option<[u8; 6]>,
        /// Every frame before this one was accepted.
        expected: u32,
        checksum: Checksum,
        /// Frames dropped for being out of sequence or repeated.
        unexpected: u64,
        payload: [u8; PAYLOAD_BYTES],
    }

    impl Receiver {
        /// Takes one frame of `a`'s, checking its payload; true if it was
        /// the next in sequence.
        fn accept(&mut self, message: &Message<'_>) -> Result<bool, Failed> {
            if message.sequence != self.expected || self.expected == FRAMES {
                self.unexpected += 1;
                return Ok(false);
            }
            pattern(message.sequence, &mut self.payload);
            if message.payload != self.payload {
                let at = message
                    .payload
                    .iter()
                    .zip(&self.payload)
                    .position(|(got, want)| got != want);
                fail!(
                    "net: frame {} has {} payload bytes, differing from the pattern at {at:?}",
                    message.sequence,
                    message.payload.len()
                );
            }
            self.checksum.add(message.payload);
            self.expected += 1;
            Ok(true)
        }
    }

    /// `b`: says hello until `a` sends, checks every frame, acknowledges,
    /// reports the checksum, and waits for the goodbye.
    pub fn receive(index: usize) -> Result<(), Failed> {
        let mut link = Link::open(index)?;
        let mut state = Receiver {
            peer: None,
            expected: 0,
            checksum: Checksum::new(),
            unexpected: 0,
            payload: [0; PAYLOAD_BYTES],
        };
        let mut frame = [0u8; MAX_FRAME_BYTES];
        let mut heard_at = time::now_ns();
        let mut hello_at: Option<u64> = None;
        let mut owe_acknowledgement = false;
        loop {
            if state.peer.is_none() && hello_at.is_none_or(|at| since(at) >= HELLO_EVERY_NS) {
                link.send_message(BROADCAST, Kind::Hello, 0, u64::from(b'b'))?;
                hello_at = Some(time::now_ns());
            }
            // One acknowledgement per batch: once the frames already
            // waiting are taken, not after each.
            if owe_acknowledgement && !link.has_frame() {
                acknowledge(&mut link, &state)?;
                owe_acknowledgement = false;
            }
            let (wait, limit) = match (state.peer, state.expected == FRAMES) {
                (None, _) => (HELLO_EVERY_NS, GIVE_UP_NS),
                (Some(_), false) => (GIVE_UP_NS, GIVE_UP_NS),
                (Some(_), true) => (LINGER_NS, LINGER_NS),
            };
            let Some(len) = link.receive(wait, &mut frame)? else {
                if since(heard_at) < limit {
                    continue;
                }
                if state.expected == FRAMES {
                    break;
                }
                fail!("net: nothing from a for 10 s, at frame {}", state.expected);
            };
            let Some(message) = parse(&frame[..len]) else {
                continue;
            };
            if state.peer.is_some_and(|p| p != message.from) {
                continue;
            }
            match message.kind {
                Kind::Data => {
                    state.peer = Some(message.from);
                    heard_at = time::now_ns();
                    state.accept(&message)?;
                    owe_acknowledgement = true;
                }
                Kind::Bye if state.expected == FRAMES => break,
                _ => {}
            }
        }
        println!(
            "devices: ok net {FRAMES} frames received and checked, {} out of sequence, checksum {:#018x}",
            state.unexpected, state.checksum.0
        );
        link.report();
        Ok(())
    }

    /// `b`: tells `a` how far it got: the next frame it wants, or, with
    /// every frame in, the checksum of them all.
    fn acknowledge(link: &mut Link, state: &Receiver) -> Result<(), Failed> {
        let Some(peer) = state.peer else {
            return Ok(());
        };
        if state.expected == FRAMES {
            link.send_message(peer, Kind::Done, FRAMES, state.checksum.0)
        } else {
            link.send_message(peer, Kind::Ack, state.expected, 0)
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
