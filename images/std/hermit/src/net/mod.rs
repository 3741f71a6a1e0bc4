//! The network: TCP and UDP sockets for std's `TcpListener`, `TcpStream`
//! and `UdpSocket`, on smoltcp over the guest's virtio-net card.
//!
//! - [`address`]: the guest's IPv4 address (`10.0.0.NN/24` from the MAC
//!   address the host gives, or `RGUEST_IP=`; the scheme is documented
//!   there) and socket addresses as std passes them (pure, tested on
//!   Linux);
//! - `link` (Hermit only): the card as a smoltcp device;
//! - `stack` (Hermit only): smoltcp's interface and the program's sockets,
//!   every operation one attempt that never blocks;
//! - `syscalls` (Hermit only): the `sys_*` socket functions std calls.
//!
//! The network comes up at the first socket call, not at start, so a
//! program that never uses it pays nothing: the card is found by its type
//! among the guest's virtio devices, guest-rt's DMA pool gets a few pages
//! of the heap for the rings, and the interface gets its address. If
//! there is no card, every socket call fails with `ENETDOWN`.
//!
//! # Waiting
//!
//! A call that cannot finish yet ([`block_on`]) polls smoltcp, tries, and
//! if it must wait, sleeps on the scheduler's futex for one word,
//! [`EVENTS`], with a deadline: the earliest of its own timeout
//! (`SO_RCVTIMEO`, `SO_SNDTIMEO`), the time smoltcp wants to be polled
//! again (a retransmission), and [`MAX_WAIT_NS`]. Whatever can make a
//! socket ready bumps the word and wakes every waiter: the card's
//! interrupt (its handler is ours, registered over guest-rt's), and a
//! poll by another thread that changed some socket. So a blocked thread
//! lets the others run, the guest halts when none can, and a frame wakes
//! it. Nonblocking sockets answer `EAGAIN` instead of waiting, and so does
//! a timeout, as on Unix (std reads both as `WouldBlock`).
//!
//! # One exit per batch
//!
//! smoltcp sends frames only inside a poll, and the card's transport holds
//! their notify back (see `link`), so every call on the stack
//! ([`with_stack`]) ends with at most one notify, which hands the host
//! every frame the call produced. It is made after the stack's guard is
//! down, with virtual interrupts on: a notify ends the guest's turn (so
//! that the guest the frames are for can answer), and an answer that
//! comes meanwhile is delivered as the hypercall returns. Made inside the
//! guard, the answer's interrupt would wait for the guard's end, and
//! cost an exit of its own to be taken.
//!
//! # Closing
//!
//! Closing a stream does not drop it: smoltcp sends what is queued and a
//! FIN, in the background. But a guest that ends takes its stack with
//! it, so `close` waits (at most [`CLOSE_LINGER_NS`]) until the peer has
//! acknowledged everything, FIN included: a server that writes its answer
//! and returns from `main` has delivered it.

/// A positive errno value.
pub use crate::fs::Errno;
/// A socket's number, kept in the descriptor table.
pub use crate::fs::tree::SocketId;

pub mod address;

#[cfg(target_os = "hermit")]
mod link;
#[cfg(target_os = "hermit")]
mod stack;
#[cfg(target_os = "hermit")]
mod syscalls;

#[cfg(target_os = "hermit")]
pub use hermit_only::*;

#[cfg(target_os = "hermit")]
mod hermit_only {
    use super::stack::{Stack, WOULD_BLOCK};
    use super::{Errno, SocketId, address, link::Link};
    use crate::sync::IrqLock;
    use crate::{console, sched, time};
    use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use guest_abi::boot::KERNEL_OFFSET;
    use guest_abi::virtio::{DeviceType, device_vector};
    use guest_rt::paging::FrameAllocator;
    use guest_rt::traps::{self, Delivery, TrapFrame};
    use guest_rt::virtio::{self, PageTransport};
    use hermit_abi::errno::ENETDOWN;

    /// Pages of DMA memory for the card's two rings, with room to spare.
    const DMA_PAGES: usize = 16;

    /// The longest a waiting thread sleeps without looking again.
    pub const MAX_WAIT_NS: u64 = 250_000_000;

    /// The longest `close` waits for a stream's data to be acknowledged.
    pub const CLOSE_LINGER_NS: u64 = 2_000_000_000;

    /// Bumped by everything that may make a socket ready; the futex the
    /// waiting threads sleep on.
    pub static EVENTS: AtomicU32 = AtomicU32::new(0);

    /// The stack, once brought up; `Err` if bringing it up failed (not
    /// tried again).
    static STACK: IrqLock<Option<Result<Stack, Errno>>> = IrqLock::new(None);

    /// The card's device number once the stack is up (`usize::MAX`
    /// before): whose held-back notifies [`with_stack`] makes.
    static CARD: AtomicUsize = AtomicUsize::new(usize::MAX);

    /// Runs `operation` on the stack, bringing it up first if need be;
    /// then hands the host whatever frames it sent, with one notify.
    pub fn with_stack<T>(operation: impl FnOnce(&mut Stack) -> T) -> Result<T, Errno> {
        let result = STACK.with(|slot| {
            let stack = slot.get_or_insert_with(bring_up).as_mut().map_err(|e| *e)?;
            CARD.store(stack.card(), Ordering::Relaxed);
            Ok(operation(stack))
        });
        // Outside the guard (see "One exit per batch"). Another thread may
        // have put frames on the ring since: they go too.
        virtio::flush_notifies(CARD.load(Ordering::Relaxed));
        result
    }

    /// Wakes every thread waiting for the network.
    fn signal_event() {
        EVENTS.fetch_add(1, Ordering::SeqCst);
        sched::futex_wake(&EVENTS, usize::MAX);
    }

    /// The card's interrupt: frames came in, or went out.
    fn on_card_interrupt(_frame: &mut TrapFrame) {
        signal_event();
    }

    /// Registers the card's interrupt handler ahead of its bring-up, if
    /// there is a card: called on vCPU 0 before it starts the others,
    /// which copy its traps. The card's frames interrupt vCPU 0 whichever
    /// vCPU brought the stack up, and a notify's answer the vCPU that made
    /// it: each must have the handler. Until the card is up it never
    /// interrupts.
    pub fn prepare_interrupts() {
        let Some(vector) = virtio::find(DeviceType::Net).and_then(device_vector) else {
            return;
        };
        if traps::set_handler(vector, on_card_interrupt, Delivery::Interrupt).is_err() {
            console::report(format_args!("net: the host refused the card's handler"));
        }
    }

    /// Finds the card, gives guest-rt's DMA pool pages from the heap,
    /// opens the card and configures the interface.
    fn bring_up() -> Result<Stack, Errno> {
        let result = try_bring_up();
        match &result {
            Ok(stack) => {
                let config = stack.config();
                console::report(format_args!(
                    "net: up, {}/{}{}",
                    config.address,
                    config.prefix_len,
                    config
                        .gateway
                        .map_or(alloc::string::String::new(), |g| alloc::format!(" via {g}"))
                ));
            }
            Err(why) => console::report(format_args!("net: no network: {why}")),
        }
        result.map_err(|_| ENETDOWN)
    }

    fn try_bring_up() -> Result<Stack, alloc::string::String> {
        use alloc::format;
        let index = virtio::find(DeviceType::Net).ok_or("the guest has no virtio-net card")?;
        give_dma_pages()?;
        let transport = PageTransport::new(index).map_err(|e| format!("{e}"))?;
        let vector = device_vector(index).ok_or("no vector for the card")?;
        let link = Link::open(transport).map_err(|e| format!("virtio-net: {e:?}"))?;
        traps::set_handler(vector, on_card_interrupt, Delivery::Interrupt)
            .map_err(|e| format!("the card's handler: {e:?}"))?;
        let command_line = crate::args::parse(guest_rt::boot::cmdline());
        let mac = link.mac();
        let config = address::choose(mac, command_line.environment.iter().copied())
            .map_err(|variable| format!("{variable} is malformed"))?;
        let seed = time::now_ns()
            ^ u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
        Ok(Stack::new(link, config, time::now_ns(), seed))
    }

    /// Gives guest-rt's DMA pool [`DMA_PAGES`] page-aligned pages of the
    /// heap, for good (the pool never gives them back).
    fn give_dma_pages() -> Result<(), alloc::string::String> {
        if virtio::dma_pages_in_use() > 0 {
            return Ok(());
        }
        let bytes = DMA_PAGES * 4096;
        let layout = core::alloc::Layout::from_size_align(bytes, 4096).map_err(|_| "layout")?;
        let pages = crate::memory::allocate(layout).ok_or("no memory for DMA pages")?;
        let start = pages.as_ptr() as u64 - KERNEL_OFFSET;
        let mut frames = FrameAllocator::new(start, start + bytes as u64);
        match virtio::give_dma_pages(&mut frames, DMA_PAGES) {
            Ok(()) | Err(virtio::DmaSetupError::AlreadyGiven) => Ok(()),
            Err(e) => Err(alloc::format!("DMA pages: {e:?}")),
        }
    }

    /// Which timeout a wait is under.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Direction {
        /// Reading or accepting: `SO_RCVTIMEO`.
        Receive,
        /// Writing or connecting: `SO_SNDTIMEO`.
        Send,
    }

    /// Tries `attempt` on socket `id` until it answers, waiting in between
    /// as the socket's options say (nonblocking: not at all; a timeout:
    /// that long, then `EAGAIN`).
    pub fn block_on<T>(
        id: SocketId,
        direction: Direction,
        attempt: impl FnMut(&mut Stack) -> Option<Result<T, Errno>>,
    ) -> Result<T, Errno> {
        let options = with_stack(|stack| stack.options(id).map(|options| *options))??;
        let timeout = match direction {
            Direction::Receive => options.receive_timeout,
            Direction::Send => options.send_timeout,
        };
        let deadline = timeout.map(|ns| time::now_ns().saturating_add(ns));
        wait_until(options.nonblocking, deadline, attempt)
    }

    /// Tries `attempt` until it answers, or the deadline passes
    /// (`EAGAIN`); with `once`, tries only once.
    pub fn wait_until<T>(
        once: bool,
        deadline: Option<u64>,
        mut attempt: impl FnMut(&mut Stack) -> Option<Result<T, Errno>>,
    ) -> Result<T, Errno> {
        loop {
            let seen = EVENTS.load(Ordering::SeqCst);
            let now = time::now_ns();
            let (outcome, changed, delay) = with_stack(|stack| {
                let mut changed = stack.poll(now);
                let outcome = attempt(stack);
                if outcome.is_some() {
                    changed |= stack.poll(now);
                }
                (outcome, changed, stack.poll_delay_ns(now))
            })?;
            if changed {
                signal_event();
            }
            if let Some(result) = outcome {
                return result;
            }
            if once || deadline.is_some_and(|at| now >= at) {
                return Err(WOULD_BLOCK);
            }
            let wake = now + delay.unwrap_or(MAX_WAIT_NS).clamp(1, MAX_WAIT_NS);
            let wake = deadline.map_or(wake, |at| at.min(wake));
            // EAGAIN (something happened since `seen`) and a timeout both
            // mean: look again.
            let _ = sched::futex_wait(&EVENTS, seen, Some(wake));
        }
    }

    /// Ends socket `id` (its last descriptor was closed); a stream's data
    /// is delivered first, for at most [`CLOSE_LINGER_NS`].
    pub fn close(id: SocketId) {
        let Ok(was_stream) = with_stack(|stack| stack.close(id)) else {
            return;
        };
        signal_event();
        if was_stream {
            let deadline = time::now_ns().saturating_add(CLOSE_LINGER_NS);
            let _ = wait_until(false, Some(deadline), |stack| {
                (!stack.closing_streams_unfinished()).then_some(Ok(()))
            });
        }
    }

    /// `read` or `recv` on socket `id`.
    pub fn receive(id: SocketId, buffer: &mut [u8], flags: i32) -> Result<usize, Errno> {
        let peek = flags & hermit_abi::MSG_PEEK != 0;
        block_on(id, Direction::Receive, |stack| {
            stack.receive(id, buffer, peek)
        })
    }

    /// `write` or `send` on socket `id`.
    pub fn send(id: SocketId, bytes: &[u8]) -> Result<usize, Errno> {
        block_on(id, Direction::Send, |stack| stack.send(id, bytes))
    }
}
