//! A guest's virtio devices, as the run loop holds them: a console, an
//! entropy source and a network card (`crate::virtio` has the devices
//! themselves; this is where they meet a [`Guest`]).
//!
//! Each device's far end is a small buffer the guest owns rather than a
//! reference into the rest of the host, so a guest stays one value the run
//! loop can move, and the devices stay testable on their own:
//!
//! - the console's output collects in [`ConsoleLines`] and leaves, a line
//!   at a time and prefixed with the guest's name, through
//!   [`super::HostServices::console_line`] as soon as the notify that wrote
//!   it is done, like the `ConsoleWrite` hypercall's;
//! - the network card's transmitted frames wait in [`OutboundFrames`] (a
//!   bounded queue) until the run loop hands them to the virtual switch
//!   ([`Guest::take_outbound_frames`]); frames for the guest arrive
//!   through [`Guest::receive_frames`], which raises the card's interrupt
//!   once for the lot and wakes the guest if it was halted;
//! - the entropy device draws from [`SeededEntropy`], a ChaCha20 generator
//!   the kernel seeds from the CPU's random-number instruction when the
//!   guest starts.

use super::{Guest, GuestRam, GuestState, HostServices, KillReason, Next};
use crate::virtio::console::ConsoleSink;
use crate::virtio::net::{FrameSink, MAX_FRAME_BYTES};
use crate::virtio::rng::EntropySource;
use crate::virtio::{GuestDevices, Interrupt, Reply};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use chacha20::ChaCha20Rng;
use guest_abi::hypercall::Error;
use rand_core::{Rng, SeedableRng};

/// The devices every guest gets, in this order (device 0, 1, 2).
pub type Devices = GuestDevices<OutboundFrames, ConsoleLines, SeededEntropy>;

/// Frames a guest may have waiting for the switch: enough for a burst of
/// one notify's worth (a full transmit queue), not a place to hoard.
pub const OUTBOUND_FRAMES_MAX: usize = 256;

/// Frames the guest sent, waiting for the run loop to switch them.
#[derive(Clone, Debug, Default)]
pub struct OutboundFrames {
    frames: VecDeque<Vec<u8>>,
    /// Frames dropped because the queue was full.
    pub dropped: u64,
}

impl FrameSink for OutboundFrames {
    fn send(&mut self, frame: &[u8]) {
        if self.frames.len() >= OUTBOUND_FRAMES_MAX || frame.len() > MAX_FRAME_BYTES {
            self.dropped += 1;
            return;
        }
        self.frames.push_back(frame.to_vec());
    }
}

/// The console's output, until a line is whole (or too long to wait).
#[derive(Clone, Debug, Default)]
pub struct ConsoleLines {
    pending: Vec<u8>,
}

/// Longest console line kept before it is printed anyway.
const LINE_MAX: usize = 512;

impl ConsoleSink for ConsoleLines {
    fn write(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }
}

impl ConsoleLines {
    /// Prints every whole line (and a line grown too long) as `guest`'s.
    fn flush_lines<H: HostServices>(&mut self, guest: &str, host: &mut H) {
        while let Some(end) = self.line_end() {
            let rest = self.pending.split_off(end);
            let mut line = core::mem::replace(&mut self.pending, rest);
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            host.console_line(guest, &line);
        }
    }

    fn line_end(&self) -> Option<usize> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(newline) => Some(newline + 1),
            None => (self.pending.len() >= LINE_MAX).then_some(LINE_MAX),
        }
    }
}

/// Random bytes for a guest: ChaCha20, seeded once by the kernel.
#[derive(Debug)]
pub struct SeededEntropy(ChaCha20Rng);

impl SeededEntropy {
    /// A generator from 32 bytes of the CPU's randomness.
    pub fn new(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }
}

impl EntropySource for SeededEntropy {
    fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }
}

/// The devices every guest gets: a console, an entropy source seeded with
/// `seed`, and a network card with address `mac`.
pub fn standard_devices(mac: [u8; 6], seed: [u8; 32]) -> Devices {
    GuestDevices::new()
        .with_console(ConsoleLines::default())
        .with_rng(SeededEntropy::new(seed))
        .with_net(mac, OutboundFrames::default())
}

impl<M: GuestRam> Guest<M> {
    /// The `VirtioStatus` and `VirtioNotify` hypercalls: what the device
    /// says becomes the call's result, an interrupt, or the guest's end.
    pub(super) fn device_call<H: HostServices>(
        &mut self,
        host: &mut H,
        reply: impl FnOnce(&mut Devices, &mut M) -> Reply,
    ) -> Result<Result<u64, Error>, Next> {
        let reply = reply(&mut self.devices, &mut self.memory);
        if let Some(console) = self.devices.console() {
            console
                .backend_mut()
                .sink_mut()
                .flush_lines(&self.name, host);
        }
        match reply {
            Reply::Value(value) => Ok(Ok(value)),
            Reply::ValueAndInterrupt { value, vector } => {
                self.raise_irq(vector);
                Ok(Ok(value))
            }
            Reply::Fail(error) => Ok(Err(error)),
            Reply::Kill(error) => Err(self.kill(KillReason::Device(error))),
        }
    }

    /// The frames the guest sent since the last call, for the switch.
    pub fn take_outbound_frames(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.devices
            .net()
            .into_iter()
            .flat_map(|net| net.backend_mut().sink_mut().frames.drain(..))
    }

    /// Requests its devices served: status and notify calls, all devices.
    pub fn device_requests(&mut self) -> u64 {
        let mut total = 0;
        let mut add = |c: crate::virtio::DeviceCounters| total += c.notifies + c.status_calls;
        if let Some(net) = self.devices.net() {
            add(net.counters);
        }
        if let Some(console) = self.devices.console() {
            add(console.counters);
        }
        if let Some(rng) = self.devices.rng() {
            add(rng.counters);
        }
        total
    }

    /// Whether the guest has frames waiting for the switch.
    pub fn has_outbound_frames(&mut self) -> bool {
        self.devices
            .net()
            .is_some_and(|net| !net.backend().sink().frames.is_empty())
    }

    /// Hands `frames` to the guest's network card: copied into the receive
    /// buffers it posted (dropped, and counted, when there are none), one
    /// interrupt for all, and the guest woken if it was halted. A receive
    /// ring the guest broke ends it.
    pub fn receive_frames<'f>(&mut self, frames: impl IntoIterator<Item = &'f [u8]>) {
        if self.has_ended() {
            return;
        }
        let Some(net) = self.devices.net() else {
            return;
        };
        let vector = net.vector();
        match net.receive_frames(&mut self.memory, frames) {
            Ok(Interrupt::Needed) => {
                self.raise_irq(vector);
                if self.vcpu.state == GuestState::Halted {
                    self.vcpu.state = GuestState::Runnable;
                }
            }
            Ok(Interrupt::NotNeeded) => {}
            Err(error) => {
                self.kill(KillReason::Device(error));
            }
        }
    }

    /// Writes the device pages and their place in the boot parameters
    /// (at the guest's creation).
    pub(super) fn install_devices(&mut self) -> Result<(), Error> {
        use core::mem::offset_of;
        use guest_abi::boot::{BOOT_PARAMS_GPA, BootParams};
        let (first, count) = self.devices.boot_params();
        self.devices
            .install(&mut self.memory)
            .map_err(|_| Error::BadAddress)?;
        for (offset, value) in [
            (offset_of!(BootParams, virtio_devices), first),
            (offset_of!(BootParams, virtio_device_count), count),
        ] {
            let gpa = crate::addr::GuestPhysAddr::new(BOOT_PARAMS_GPA + offset as u64);
            self.memory
                .write_u64(gpa, value)
                .map_err(|_| Error::BadAddress)?;
        }
        Ok(())
    }
}
