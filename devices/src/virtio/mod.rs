//! Virtio devices (Virtual I/O Device spec 1.2), in three layers kept apart as the
//! style guide asks:
//! - the transport, [`pci`]: a modern-only virtio-pci function (4.1): capabilities,
//!   feature negotiation, queue setup, device status and reset, MSI-X. It never touches
//!   KVM: it hands out the notify addresses and the eventfds the VMM registers with
//!   KVM_IOEVENTFD, and signals interrupts by writing the eventfds the VMM turned into
//!   irqfds;
//! - the devices, behind [`VirtioDevice`]: what a request means ([`block`], [`net`]);
//! - the backends: where the bytes go ([`block::disk`]: a raw image or block device;
//!   [`net::tap`] and [`net::vhost`]: a tap, its frames moved by Strait or vhost-net).
//!
//! Guest-written descriptors are hostile input: [`chain`] is the one place they are
//! read, bounds-checked against guest RAM and capped in length.

pub mod block;
pub mod chain;
pub mod net;
pub mod pci;
#[cfg(test)]
pub(crate) mod testutil;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use resources::LogLimiter;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Vendor ID of virtio PCI functions (4.1.2).
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type (4.1.2.1).
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// "No vector" in the MSI-X vector registers (4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

static SIGNAL_FAILED: LogLimiter = LogLimiter::new();

/// Where a device signals the driver: one eventfd per queue (the irqfd of the MSI-X
/// vector the driver gave the queue) and one for configuration changes. Writing an
/// eventfd is all it takes: the VMM registered it with KVM, so no lock and no vCPU exit
/// is involved, and an interrupt raised while the vector is masked is held in the
/// eventfd until the driver unmasks it.
#[derive(Debug, Default)]
pub struct Interrupts {
    pub queues: Vec<Option<EventFd>>,
    pub config: Option<EventFd>,
}

impl Interrupts {
    /// Signal the used ring of `queue`; a queue without a vector is polled by the driver.
    pub fn signal_queue(&self, queue: usize) {
        if let Some(Some(fd)) = self.queues.get(queue) {
            if let Err(e) = fd.write(1) {
                resources::limited_debug!(SIGNAL_FAILED, "virtio: queue {queue} interrupt: {e}");
            }
        }
    }

    pub fn signal_config(&self) {
        if let Some(fd) = &self.config {
            let _ = fd.write(1);
        }
    }
}

/// What a device gets when the driver sets DRIVER_OK (3.1.1 step 8).
#[derive(Debug)]
pub struct Activation {
    pub mem: GuestMemoryMmap,
    /// The features the driver accepted.
    pub features: u64,
    /// One per queue the device offers; queues the driver left disabled are not ready.
    pub queues: Vec<Queue>,
    pub interrupts: Interrupts,
    /// Each queue's notify eventfd (the one KVM signals): for an in-kernel backend
    /// (vhost-net's kick).
    pub kicks: Vec<EventFd>,
}

/// What the I/O thread waits on for a device.
#[derive(Debug)]
pub struct IoEvents {
    /// Whether it watches the queues' notify eventfds (false when the host kernel does).
    pub kicks: bool,
    /// Backend fds whose readability runs `process_queue(index)`, watched edge-triggered.
    pub backend: Vec<(OwnedFd, usize)>,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver enabled no usable queue")]
    NoQueue,
    #[error("queue {0} lies outside guest RAM or is not ready")]
    BadQueue(usize),
    #[error("the backend refused to start: {0}")]
    Backend(String),
}

/// One virtio device, as the transport and the I/O thread see it. The transport calls
/// the configuration methods from vCPU threads, the I/O thread calls
/// [`VirtioDevice::process_queue`]; both go through one mutex, so a reset waits for the
/// batch of requests being processed and none runs after it.
pub trait VirtioDevice: Send {
    /// Virtio device type (5: 1 net, 2 block).
    fn device_type(&self) -> u32;
    /// PCI class code of the function (base << 16 | sub << 8 | prog-if).
    fn pci_class(&self) -> u32;
    /// Feature bits offered (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Largest size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Read the device-specific configuration at `offset` (out of range reads zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration; dropped unless the device defines it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start processing with the queues the driver set up.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stop, forget the queues and return to the state after construction.
    fn reset(&mut self);
    /// The driver notified queue `index` (or its backend became ready): process it.
    fn process_queue(&mut self, index: usize);
    /// What the I/O thread should wait on (asked once, when it starts).
    fn io_events(&self) -> std::io::Result<IoEvents> {
        Ok(IoEvents {
            kicks: true,
            backend: Vec::new(),
        })
    }
}

/// A device shared by its transport and the I/O thread.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;
