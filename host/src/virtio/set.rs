//! A guest's devices together: numbered in the order they were added, each
//! with its page and vector, and the two hypercalls answered by number.
//!
//! This is what the run loop holds per guest. The devices keep their
//! types (the host pushes frames into the network card and input into the
//! console by name: [`GuestDevices::net`], [`GuestDevices::console`]),
//! and the hypercalls reach them by number through [`VirtioDevice`].
//! Each call gives a [`Reply`] saying exactly what the run loop does next:
//! a value for `rax`, perhaps an interrupt to raise, a failed call, or the
//! reason to end the guest.

use super::console::{Console, ConsoleSink};
use super::device::{Device, VirtioDevice};
use super::error::DeviceError;
use super::net::{FrameSink, Net};
use super::queue::Interrupt;
use super::rng::{EntropySource, Rng};
use crate::guest::GuestRam;
use crate::paging::OutsideGuestMemory;
use guest_abi::hypercall::Error;
use guest_abi::virtio::{DEVICE_PAGE_BYTES, DEVICE_PAGES_GPA, MAX_DEVICES};

/// What the run loop does with a device hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Return `value` in `rax`.
    Value(u64),
    /// Return `value` and raise the virtual interrupt `vector`: the one
    /// interrupt for the whole batch the call completed.
    ValueAndInterrupt {
        /// For `rax`.
        value: u64,
        /// The device's vector.
        vector: u8,
    },
    /// Fail the call (no such device, no such queue).
    Fail(Error),
    /// The guest broke the device with a malformed ring or status: end it
    /// with this reason (the device is marked `DEVICE_NEEDS_RESET`
    /// either way, should the host rather let the guest reset it).
    Kill(DeviceError),
}

/// One guest's devices, at most one of each kind.
#[derive(Clone, Debug)]
pub struct GuestDevices<N: FrameSink, C: ConsoleSink, E: EntropySource> {
    net: Option<Device<Net<N>>>,
    console: Option<Device<Console<C>>>,
    rng: Option<Device<Rng<E>>>,
    count: usize,
}

impl<N: FrameSink, C: ConsoleSink, E: EntropySource> Default for GuestDevices<N, C, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: FrameSink, C: ConsoleSink, E: EntropySource> GuestDevices<N, C, E> {
    /// No devices.
    pub fn new() -> Self {
        Self {
            net: None,
            console: None,
            rng: None,
            count: 0,
        }
    }

    /// Adds the network card as the next device (a second one replaces
    /// nothing: it is refused, as is a ninth device).
    pub fn with_net(mut self, mac: [u8; 6], sink: N) -> Self {
        if self.net.is_none() {
            self.net = Device::new(self.count, Net::new(mac, sink));
            self.count += usize::from(self.net.is_some());
        }
        self
    }

    /// Adds the console as the next device.
    pub fn with_console(mut self, sink: C) -> Self {
        if self.console.is_none() {
            self.console = Device::new(self.count, Console::new(sink));
            self.count += usize::from(self.console.is_some());
        }
        self
    }

    /// Adds the entropy source as the next device.
    pub fn with_rng(mut self, source: E) -> Self {
        if self.rng.is_none() {
            self.rng = Device::new(self.count, Rng::new(source));
            self.count += usize::from(self.rng.is_some());
        }
        self
    }

    /// How many devices there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The two words for the boot parameters: the first device page's
    /// guest-physical address (0 with no devices) and the count.
    pub fn boot_params(&self) -> (u64, u64) {
        let first = if self.count == 0 { 0 } else { DEVICE_PAGES_GPA };
        (first, self.count as u64)
    }

    /// The network card, to push frames into.
    pub fn net(&mut self) -> Option<&mut Device<Net<N>>> {
        self.net.as_mut()
    }

    /// The console, to push input into.
    pub fn console(&mut self) -> Option<&mut Device<Console<C>>> {
        self.console.as_mut()
    }

    /// The entropy source.
    pub fn rng(&mut self) -> Option<&mut Device<Rng<E>>> {
        self.rng.as_mut()
    }

    /// Device number `index`, whatever its kind.
    pub fn by_index<M: GuestRam>(&mut self, index: u64) -> Option<&mut dyn VirtioDevice<M>> {
        if index >= MAX_DEVICES as u64 {
            return None;
        }
        let page = DEVICE_PAGES_GPA + index * DEVICE_PAGE_BYTES;
        if self.net.as_ref().is_some_and(|d| d.page().as_u64() == page) {
            return self.net.as_mut().map(|d| d as &mut dyn VirtioDevice<M>);
        }
        if self
            .console
            .as_ref()
            .is_some_and(|d| d.page().as_u64() == page)
        {
            return self.console.as_mut().map(|d| d as &mut dyn VirtioDevice<M>);
        }
        if self.rng.as_ref().is_some_and(|d| d.page().as_u64() == page) {
            return self.rng.as_mut().map(|d| d as &mut dyn VirtioDevice<M>);
        }
        None
    }

    /// Writes every device's page (when the guest is loaded, before it
    /// runs).
    pub fn install<M: GuestRam>(&self, mem: &mut M) -> Result<(), OutsideGuestMemory> {
        if let Some(net) = &self.net {
            net.install(mem)?;
        }
        if let Some(console) = &self.console {
            console.install(mem)?;
        }
        if let Some(rng) = &self.rng {
            rng.install(mem)?;
        }
        Ok(())
    }

    /// Whether any device may still interrupt the guest unprompted (a
    /// halted guest with one is waiting, not stuck).
    pub fn may_interrupt(&self) -> bool {
        self.net.as_ref().is_some_and(Device::may_interrupt)
            || self.console.as_ref().is_some_and(Device::may_interrupt)
            || self.rng.as_ref().is_some_and(Device::may_interrupt)
    }

    /// The `virtio_status(device)` hypercall.
    pub fn status_call<M: GuestRam>(&mut self, mem: &mut M, device: u64) -> Reply {
        let Some(device) = self.by_index::<M>(device) else {
            return Reply::Fail(Error::InvalidArgument);
        };
        match device.status_call(mem) {
            Ok(status) => Reply::Value(u64::from(status)),
            Err(e) => Reply::Kill(e),
        }
    }

    /// The `virtio_notify(device, queue)` hypercall.
    pub fn notify<M: GuestRam>(&mut self, mem: &mut M, device: u64, queue: u64) -> Reply {
        let Some(device) = self.by_index::<M>(device) else {
            return Reply::Fail(Error::InvalidArgument);
        };
        match device.notify(mem, queue) {
            Ok(Interrupt::NotNeeded) => Reply::Value(0),
            Ok(Interrupt::Needed) => Reply::ValueAndInterrupt {
                value: 0,
                vector: device.vector(),
            },
            Err(e) if e.broke_device() => Reply::Kill(e),
            Err(_) => Reply::Fail(Error::InvalidArgument),
        }
    }
}
