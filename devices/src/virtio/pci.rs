//! The virtio-pci transport, modern interface only (virtio 1.2, 4.1): one PCI function
//! whose BAR 0 holds the common configuration, ISR, device configuration and notify
//! structures, and the MSI-X table and PBA; vendor capabilities in config space say
//! where each one is (4.1.4).
//!
//! What the driver does and what this does (3.1.1 device initialization):
//! - features (4.1.4.3): the device's 64 bits read 32 at a time through the select
//!   registers; the driver's written the same way while DRIVER is set and FEATURES_OK is
//!   not. FEATURES_OK sticks only if the driver took no bit the device did not offer and
//!   took VIRTIO_F_VERSION_1 (no legacy interface);
//! - queues: size (a power of two up to the device's maximum), MSI-X vector, ring
//!   addresses, enable; checked against guest RAM when DRIVER_OK is set, and then handed
//!   to the device ([`VirtioDevice::activate`]). A queue that fails the check fails the
//!   activation: the device sets DEVICE_NEEDS_RESET and signals a configuration change;
//! - status 0 is a reset (4.1.4.3.1): the device stops (waiting for the requests it is
//!   processing) before the write completes, so the driver's read back sees 0 and no
//!   request of the old queues is touched afterwards;
//! - notifications: queue `i` is notified at `NOTIFY_OFFSET + 4 * i` of BAR 0. The VMM
//!   registers [`VirtioPciTransport::notify_events`] with KVM_IOEVENTFD, so a notify costs
//!   no exit to userspace; a notify that does trap (no ioeventfd) signals the same eventfd;
//! - interrupts: MSI-X only. The vector eventfds come from the VMM (irqfds); the device
//!   writes them from the I/O thread (virtio-blk: from the worker that completed a
//!   request). A function whose driver does not enable MSI-X gets
//!   no interrupts (no INTx): Linux's virtio_pci always tries MSI-X first.
//!
//! Not implemented: the PCI configuration access capability (VIRTIO_PCI_CAP_PCI_CFG,
//! which Linux does not use), packed rings, per-queue reset, and following a BAR the
//! guest moves (Strait places BARs before boot and Linux keeps them; a move is logged).

use resources::{limited_debug, lock, LogLimiter};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, Interrupts, SharedVirtioDevice, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_DEVICE_BASE,
    VIRTIO_PCI_VENDOR,
};
use crate::interrupt::MsiRouter;
use crate::pci::ratelimit::apply_changes;
use crate::pci::{
    BarInfo, BarKind, ConfigSize, ConfigWriteResult, Msix, MsixLayout, PciConfigSpace, PciDevice,
    PciError, PciIds,
};

/// The BAR that holds every structure.
pub const BAR_INDEX: u8 = 0;
/// Its size: six 4 KiB regions, rounded up to a power of two.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
/// Start of the notify structure in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between the notify addresses of consecutive queues.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const REGION_LEN: u64 = 0x1000;
const MSIX_TABLE_OFFSET: u32 = 0x4000;
const MSIX_PBA_OFFSET: u32 = 0x5000;

/// Vendor-specific capability ID and the virtio structure types (4.1.4).
const CAP_ID_VENDOR: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// Subsystem ID Linux expects of modern devices (any value >= 0x40 works).
const SUBSYSTEM_ID: u16 = 0x1100;
/// Revision 1: a modern-only device (4.1.2.1).
const REVISION: u8 = 1;

/// Offsets in the common configuration structure (4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC_LO: u64 = 0x20;
    pub const QUEUE_DESC_HI: u64 = 0x24;
    pub const QUEUE_AVAIL_LO: u64 = 0x28;
    pub const QUEUE_AVAIL_HI: u64 = 0x2c;
    pub const QUEUE_USED_LO: u64 = 0x30;
    pub const QUEUE_USED_HI: u64 = 0x34;
}

static GUEST_ODDITY: LogLimiter = LogLimiter::new();

/// One queue as the driver configured it.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// What the transport needs besides the device.
pub struct TransportParams {
    /// Prefix of log lines, e.g. "00:03.0 virtio-blk disks[0]".
    pub label: String,
    pub device: SharedVirtioDevice,
    pub mem: GuestMemoryMmap,
    /// Delivery of the MSI-X vectors (one per queue, plus one for configuration).
    pub msix: Box<dyn MsiRouter>,
    /// The eventfd of each vector, in vector order: writing one raises it.
    pub vector_fds: Vec<EventFd>,
}

/// Why a transport could not be built (Strait's mistake or the host's, never the guest's).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("virtio-pci config space")]
    Pci(#[from] PciError),
    #[error("cannot create a queue notify eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The MSI-X vectors a device with `queues` queues gets: one each, plus configuration.
pub fn msix_vectors(queues: usize) -> u16 {
    u16::try_from(queues + 1).unwrap_or(u16::MAX)
}

/// A virtio device on PCI.
pub struct VirtioPciTransport {
    label: String,
    cfg: PciConfigSpace,
    msix: Msix,
    /// Applies what the guest changes in the MSI-X capability and table.
    router: Box<dyn MsiRouter>,
    device: SharedVirtioDevice,
    mem: GuestMemoryMmap,
    vector_fds: Vec<EventFd>,
    kicks: Vec<EventFd>,
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueConfig>,
}

impl std::fmt::Debug for VirtioPciTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciTransport")
            .field("label", &self.label)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A vendor capability body (after ID and next): length, type, BAR, id, padding,
/// offset, length, and the notify multiplier for the notify structure.
fn cap_body(cfg_type: u8, offset: u64, len: u64) -> Vec<u8> {
    let cap_len: u8 = if cfg_type == CAP_NOTIFY { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, BAR_INDEX, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(len as u32).to_le_bytes());
    if cfg_type == CAP_NOTIFY {
        b.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
    }
    b
}

impl VirtioPciTransport {
    pub fn new(p: TransportParams) -> Result<Self, TransportError> {
        let (device_type, class, features, max_sizes) = {
            let d = lock(&p.device);
            (
                d.device_type(),
                d.pci_class(),
                d.features(),
                d.queue_max_sizes(),
            )
        };
        let ids = PciIds {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device_type as u16,
            class,
            revision: REVISION,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: SUBSYSTEM_ID,
        };
        let mut cfg = PciConfigSpace::new_type0(ids, ConfigSize::Pci);
        cfg.add_bar(
            BAR_INDEX,
            BarKind::Mem32 {
                prefetchable: false,
            },
            BAR_SIZE,
        )?;
        let notify_len = (max_sizes.len() as u64 * u64::from(NOTIFY_MULTIPLIER)).max(4);
        for (ty, off, len) in [
            (CAP_COMMON, COMMON_OFFSET, REGION_LEN),
            (CAP_ISR, ISR_OFFSET, REGION_LEN),
            (CAP_DEVICE, DEVICE_OFFSET, REGION_LEN),
            (CAP_NOTIFY, NOTIFY_OFFSET, notify_len),
        ] {
            cfg.add_capability(CAP_ID_VENDOR, &cap_body(ty, off, len))?;
        }
        let layout = MsixLayout {
            vectors: msix_vectors(max_sizes.len()),
            table_bir: BAR_INDEX,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bir: BAR_INDEX,
            pba_offset: MSIX_PBA_OFFSET,
        };
        let mut msix = Msix::new(layout)?;
        msix.add_to(&mut cfg)?;
        let kicks = max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(VirtioPciTransport {
            label: p.label,
            cfg,
            msix,
            router: p.msix,
            device: p.device,
            mem: p.mem,
            vector_fds: p.vector_fds,
            kicks,
            device_features: features | 1 << VIRTIO_F_VERSION_1,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            queue_select: 0,
            queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
        })
    }

    /// Place BAR 0 at `addr` (from the topology plan).
    pub fn place_bar(&mut self, addr: u64) -> Result<(), PciError> {
        self.cfg.set_bar_addr(BAR_INDEX, addr)
    }

    /// Each queue's notify offset in BAR 0 and the eventfd a notify there signals: for
    /// KVM_IOEVENTFD at (BAR address + offset).
    pub fn notify_events(&self) -> Vec<(u64, &EventFd)> {
        (0u64..)
            .zip(&self.kicks)
            .map(|(i, fd)| (NOTIFY_OFFSET + i * u64::from(NOTIFY_MULTIPLIER), fd))
            .collect()
    }

    /// The device, for the I/O thread.
    pub fn device(&self) -> &SharedVirtioDevice {
        &self.device
    }

    /// The device status the driver last saw (for tests and logs).
    pub fn status(&self) -> u8 {
        self.status
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64) -> u64 {
        use common::*;
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let qf = |f: fn(&QueueConfig) -> u64| q.as_ref().map_or(0, f);
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => self.config_vector.into(),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => self.status.into(),
            CONFIG_GENERATION => self.config_generation.into(),
            QUEUE_SELECT => self.queue_select.into(),
            // An absent queue reads size 0: the driver stops there (4.1.4.3.2).
            QUEUE_SIZE => qf(|q| q.size.into()),
            QUEUE_MSIX_VECTOR => q.map_or(VIRTIO_MSI_NO_VECTOR, |q| q.vector).into(),
            QUEUE_ENABLE => qf(|q| q.enabled.into()),
            QUEUE_NOTIFY_OFF => self.queue_select.into(),
            QUEUE_DESC_LO => qf(|q| q.desc & 0xffff_ffff),
            QUEUE_DESC_HI => qf(|q| q.desc >> 32),
            QUEUE_AVAIL_LO => qf(|q| q.avail & 0xffff_ffff),
            QUEUE_AVAIL_HI => qf(|q| q.avail >> 32),
            QUEUE_USED_LO => qf(|q| q.used & 0xffff_ffff),
            QUEUE_USED_HI => qf(|q| q.used >> 32),
            _ => 0,
        }
    }

    fn common_write(&mut self, offset: u64, v: u64) {
        use common::*;
        let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER as u8 != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0;
        let setting_up = self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 == 0;
        let vectors = self.vector_fds.len() as u64;
        let vector = |v: u64| {
            if v < vectors {
                v as u16
            } else {
                VIRTIO_MSI_NO_VECTOR
            }
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE if negotiating => {
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => self.config_vector = vector(v),
            DEVICE_STATUS => self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE if setting_up => {
                if let Some(q) = self.selected() {
                    q.size = v as u16;
                }
            }
            QUEUE_MSIX_VECTOR => {
                let vec = vector(v);
                if let Some(q) = self.selected() {
                    q.vector = vec;
                }
            }
            QUEUE_ENABLE if setting_up && v == 1 => {
                if let Some(q) = self.selected() {
                    q.enabled = true;
                }
            }
            QUEUE_DESC_LO | QUEUE_DESC_HI | QUEUE_AVAIL_LO | QUEUE_AVAIL_HI | QUEUE_USED_LO
            | QUEUE_USED_HI
                if setting_up =>
            {
                if let Some(q) = self.selected() {
                    let field = match offset & !7 {
                        QUEUE_DESC_LO => &mut q.desc,
                        QUEUE_AVAIL_LO => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xffff_ffff) | (v & 0xffff_ffff)
                    } else {
                        (*field & 0xffff_ffff) | (v & 0xffff_ffff) << 32
                    };
                }
            }
            _ => limited_debug!(
                GUEST_ODDITY,
                "{}: common config write {offset:#x} = {v:#x} dropped (status {:#x})",
                self.label,
                self.status
            ),
        }
    }

    /// The driver wrote the device status (2.1, 3.1.1).
    fn write_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let added = new & !old;
        let mut status = old | new;
        if added & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 && !self.features_acceptable() {
            log::warn!(
                "{}: driver features {:#x} refused (device offers {:#x})",
                self.label,
                self.driver_features,
                self.device_features
            );
            status &= !(VIRTIO_CONFIG_S_FEATURES_OK as u8);
        }
        self.status = status;
        let ready = status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0;
        if added & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 && ready {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    /// Hand the configured queues to the device, or flag the device as needing a reset.
    fn activate(&mut self) {
        let result = self
            .build_activation()
            .and_then(|a| lock(&self.device).activate(a));
        match result {
            Ok(()) => log::info!(
                "{}: driver ready, features {:#x}",
                self.label,
                self.driver_features
            ),
            Err(e) => {
                log::warn!("{}: cannot start the device: {e}", self.label);
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
                self.config_generation = self.config_generation.wrapping_add(1);
                if let Some(fd) = self.vector_fd(self.config_vector) {
                    let _ = fd.write(1);
                }
            }
        }
    }

    fn vector_fd(&self, vector: u16) -> Option<&EventFd> {
        self.vector_fds.get(usize::from(vector))
    }

    fn build_activation(&self) -> Result<Activation, super::ActivateError> {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut irqs = Interrupts::default();
        for (i, c) in self.queues.iter().enumerate() {
            let mut q = Queue::new(c.max_size).map_err(|_| super::ActivateError::BadQueue(i))?;
            if c.enabled {
                q.try_set_size(c.size)
                    .map_err(|_| super::ActivateError::BadQueue(i))?;
                q.try_set_desc_table_address(vm_memory::GuestAddress(c.desc))
                    .map_err(|_| super::ActivateError::BadQueue(i))?;
                q.try_set_avail_ring_address(vm_memory::GuestAddress(c.avail))
                    .map_err(|_| super::ActivateError::BadQueue(i))?;
                q.try_set_used_ring_address(vm_memory::GuestAddress(c.used))
                    .map_err(|_| super::ActivateError::BadQueue(i))?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    return Err(super::ActivateError::BadQueue(i));
                }
            }
            queues.push(q);
            irqs.queues
                .push(self.vector_fd(c.vector).and_then(|f| f.try_clone().ok()));
        }
        if !self.queues.iter().any(|q| q.enabled) {
            return Err(super::ActivateError::NoQueue);
        }
        irqs.config = self
            .vector_fd(self.config_vector)
            .and_then(|f| f.try_clone().ok());
        let kicks = self
            .kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| super::ActivateError::Backend(format!("cloning a notify eventfd: {e}")))?;
        Ok(Activation {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues,
            interrupts: irqs,
            kicks,
        })
    }

    /// Device reset (status 0, or the machine's reset): the device stops first, then
    /// the transport forgets the negotiation and the queues.
    pub fn reset(&mut self) {
        lock(&self.device).reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        // Drain notifies of the old queues so they cannot kick the new ones.
        for k in &self.kicks {
            let _ = k.read();
        }
        log::debug!("{}: reset", self.label);
    }

    fn region_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (base, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        match base {
            COMMON_OFFSET => {
                let v = self.common_read(off).to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&v[..n]);
            }
            // No INTx: nothing is ever pending in the ISR (4.1.4.5).
            ISR_OFFSET => {}
            DEVICE_OFFSET => lock(&self.device).read_config(off, data),
            _ => data.fill(0xff),
        }
    }

    fn region_write(&mut self, offset: u64, data: &[u8]) {
        let (base, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        match base {
            COMMON_OFFSET => {
                let mut v = [0u8; 8];
                let n = data.len().min(8);
                v[..n].copy_from_slice(&data[..n]);
                self.common_write(off, u64::from_le_bytes(v));
            }
            DEVICE_OFFSET => lock(&self.device).write_config(off, data),
            NOTIFY_OFFSET => {
                // Reached only when no ioeventfd took the write.
                let q = off / u64::from(NOTIFY_MULTIPLIER);
                if let Some(k) = usize::try_from(q).ok().and_then(|q| self.kicks.get(q)) {
                    let _ = k.write(1);
                }
            }
            _ => {}
        }
    }
}

impl PciDevice for VirtioPciTransport {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.cfg.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let res = self.cfg.write(reg, offset, data);
        let at = reg.saturating_mul(4).saturating_add(offset as usize);
        let changes = self.msix.config_write(&self.cfg, at, data.len());
        apply_changes(self.router.as_mut(), &changes);
        if !res.bar_moves.is_empty() {
            log::warn!(
                "{}: the guest moved BAR 0 ({:x?}); Strait does not follow virtio BAR moves",
                self.label,
                res.bar_moves
            );
        }
        res
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.cfg.bars()
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        if index != BAR_INDEX || offset >= BAR_SIZE {
            data.fill(0xff);
            return;
        }
        let router = &mut self.router;
        if !self
            .msix
            .read(index, offset, data, &mut |v| router.is_pending(v))
        {
            self.region_read(offset, data);
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index != BAR_INDEX || offset >= BAR_SIZE || data.is_empty() {
            return;
        }
        match self.msix.write(index, offset, data) {
            Some(changes) => apply_changes(self.router.as_mut(), &changes),
            None => self.region_write(offset, data),
        }
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
