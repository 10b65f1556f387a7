//! Interrupt plumbing of a passed-through function: which VFIO_DEVICE_SET_IRQS
//! calls follow from what the guest programs (include/uapi/linux/vfio.h;
//! PCI Local Bus 3.0 6.8 for MSI/MSI-X, 6.2.4 for INTx).
//!
//! The seam with the VMM is [`IrqProvider`]: for each interrupt kind the VMM
//! hands over the eventfds it registered with KVM (KVM_IRQFD on the vector's
//! GSI, with a resample eventfd for INTx) and, for MSI/MSI-X, the
//! [`MsiRouter`] that programs the GSI routes. VFIO signals the same eventfds,
//! so device interrupts reach the guest without leaving the kernel.
//!
//! Policy:
//! - INTx is on whenever neither MSI nor MSI-X is: VFIO refuses to switch
//!   between modes without disabling the old one first.
//! - MSI-X: when the guest sets the enable bit, the index is enabled with the
//!   full table size (kernels with VFIO_IRQ_INFO_NORESIZE cannot grow it
//!   later) but no vector attached; a vector's eventfd is attached the first
//!   time the guest unmasks it. Later masking is done by the router (route
//!   masking), not by detaching, so mask/unmask costs no host irq churn.
//! - MSI: all enabled vectors are attached at enable (MSI has no per-vector
//!   table to wait for).
//! - Disabling MSI or MSI-X is SET_IRQS DATA_NONE with count 0, then INTx again.

use resources::lock;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::interrupt::{MsiMessage, MsiRouter};
use resources::{limited_debug, LogLimiter};

static ROUTER_EVENTS: LogLimiter = LogLimiter::new();
use vmm_sys_util::eventfd::EventFd;

use crate::device::{IrqIndex, IrqRequest, VfioDeviceOps};

/// Message-signalled interrupt kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiKind {
    Msi,
    Msix,
}

/// What the VMM provides for a function's MSI or MSI-X vectors.
pub struct MsiVectors {
    /// Programs GSI routes from what the guest writes (address, data, mask).
    pub router: Box<dyn MsiRouter>,
    /// `eventfds[v]` is registered with KVM_IRQFD on vector `v`'s GSI.
    pub eventfds: Vec<EventFd>,
}

/// What the VMM provides for a function's INTx pin.
pub struct IntxFds {
    /// Registered with KVM_IRQFD (flag KVM_IRQFD_FLAG_RESAMPLE) on the pin's GSI.
    pub trigger: EventFd,
    /// The irqfd's resample eventfd: KVM signals it when the guest EOIs the
    /// level interrupt, and VFIO then unmasks the (auto-masked) host line.
    pub resample: EventFd,
}

/// Implemented by the VMM; called while a [`crate::pci::VfioPciDevice`] is built.
pub trait IrqProvider {
    /// Wire `count` vectors of `kind` (the capability's table size or maximum).
    fn msi(&mut self, kind: MsiKind, count: u16) -> io::Result<MsiVectors>;
    /// Wire INTx pin `pin` (1..=4 for INTA..INTD) of this function.
    fn intx(&mut self, pin: u8) -> io::Result<IntxFds>;
}

/// A router call the emulation made, replayed here as SET_IRQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouterEvent {
    Enable(Option<u16>),
    Update { vector: u16, masked: bool },
}

pub(crate) type EventQueue = Arc<Mutex<Vec<RouterEvent>>>;

/// Forwards to the VMM's router and records what changed.
pub(crate) struct RecordingRouter {
    inner: Box<dyn MsiRouter>,
    events: EventQueue,
}

impl RecordingRouter {
    pub(crate) fn new(inner: Box<dyn MsiRouter>, events: EventQueue) -> Self {
        RecordingRouter { inner, events }
    }

    fn record(&self, e: RouterEvent) {
        lock(&self.events).push(e);
    }
}

impl MsiRouter for RecordingRouter {
    fn update(&mut self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        self.record(RouterEvent::Update { vector, masked });
        self.inner.update(vector, msg, masked)
    }

    fn enable(&mut self, vectors: Option<u16>) -> io::Result<()> {
        self.record(RouterEvent::Enable(vectors));
        self.inner.enable(vectors)
    }

    fn trigger(&mut self, vector: u16) -> io::Result<()> {
        self.inner.trigger(vector)
    }

    // The function mask is the VMM router's to hold: VFIO keeps every eventfd attached.
    fn set_function_mask(&mut self, masked: bool) -> io::Result<()> {
        self.inner.set_function_mask(masked)
    }

    fn commit(&mut self) -> io::Result<()> {
        self.inner.commit()
    }

    fn is_pending(&mut self, vector: u16) -> bool {
        self.inner.is_pending(vector)
    }
}

/// The VFIO side of one MSI or MSI-X capability.
pub(crate) struct MsiLine {
    kind: MsiKind,
    events: EventQueue,
    fds: Vec<EventFd>,
    /// Last mask state the guest programmed per vector, enabled or not.
    unmasked: Vec<bool>,
    /// `Some` while enabled: which vectors have their eventfd attached.
    attached: Option<Vec<bool>>,
}

impl MsiLine {
    /// Returns the line and the router for the emulation to call.
    pub(crate) fn new(kind: MsiKind, wiring: MsiVectors) -> (Self, RecordingRouter) {
        let events = EventQueue::default();
        let router = RecordingRouter::new(wiring.router, events.clone());
        let unmasked = vec![false; wiring.eventfds.len()];
        let line = MsiLine {
            kind,
            events,
            fds: wiring.eventfds,
            unmasked,
            attached: None,
        };
        (line, router)
    }

    fn index(&self) -> IrqIndex {
        match self.kind {
            MsiKind::Msi => IrqIndex::Msi,
            MsiKind::Msix => IrqIndex::Msix,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.attached.is_some()
    }

    fn take_events(&self) -> Vec<RouterEvent> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Enable `n` vectors. MSI attaches them all; MSI-X attaches those the
    /// guest already unmasked and leaves the rest at -1 until unmasked.
    fn enable(&mut self, ops: &dyn VfioDeviceOps, n: u16) -> io::Result<()> {
        let n = usize::from(n).min(self.fds.len());
        let attach: Vec<bool> = match self.kind {
            MsiKind::Msix => self.unmasked[..n].to_vec(),
            MsiKind::Msi => vec![true; n],
        };
        let fds: Vec<i32> = (0..n)
            .map(|v| {
                if attach[v] {
                    self.fds[v].as_raw_fd()
                } else {
                    -1
                }
            })
            .collect();
        if n > 0 {
            ops.set_irqs(IrqRequest::Trigger {
                index: self.index(),
                start: 0,
                fds: &fds,
            })?;
        }
        self.attached = Some(attach);
        Ok(())
    }

    fn attach(&mut self, ops: &dyn VfioDeviceOps, vector: u16) -> io::Result<()> {
        let v = usize::from(vector);
        let index = self.index();
        let (Some(attached), Some(fd)) = (self.attached.as_mut(), self.fds.get(v)) else {
            return Ok(());
        };
        if attached.get(v) != Some(&false) {
            return Ok(());
        }
        let fds = [fd.as_raw_fd()];
        ops.set_irqs(IrqRequest::Trigger {
            index,
            start: v as u32,
            fds: &fds,
        })?;
        attached[v] = true;
        Ok(())
    }

    /// Disable the index if it is on.
    pub(crate) fn disable(&mut self, ops: &dyn VfioDeviceOps) -> io::Result<()> {
        if self.attached.take().is_some() {
            ops.set_irqs(IrqRequest::Disable {
                index: self.index(),
            })?;
        }
        Ok(())
    }

    fn note_masks<'e>(&mut self, events: impl Iterator<Item = &'e RouterEvent>) {
        for e in events {
            if let RouterEvent::Update { vector, masked } = *e {
                if let Some(m) = self.unmasked.get_mut(usize::from(vector)) {
                    *m = !masked;
                }
            }
        }
    }

    /// Replay router events as SET_IRQS. Returns whether the line was turned
    /// on (`Some(true)`) or off (`Some(false)`), so the caller switches INTx.
    pub(crate) fn sync(
        &mut self,
        ops: &dyn VfioDeviceOps,
        before_enable: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<Option<bool>> {
        let mut switched = None;
        let events = self.take_events();
        for (i, e) in events.iter().enumerate() {
            limited_debug!(ROUTER_EVENTS, "{:?} router event {e:?}", self.kind);
            match *e {
                RouterEvent::Enable(Some(n)) => {
                    if self.enabled() {
                        self.disable(ops)?;
                    }
                    before_enable()?;
                    // The emulation reports the unmasked vectors right after
                    // enabling; fold them in so one SET_IRQS attaches them all.
                    self.note_masks(
                        events[i + 1..]
                            .iter()
                            .take_while(|e| !matches!(e, RouterEvent::Enable(_))),
                    );
                    self.enable(ops, n)?;
                    switched = Some(true);
                }
                RouterEvent::Enable(None) => {
                    self.disable(ops)?;
                    switched = Some(false);
                }
                RouterEvent::Update { vector, masked } => {
                    self.note_masks(std::iter::once(e));
                    if !masked {
                        self.attach(ops, vector)?;
                    }
                }
            }
        }
        Ok(switched)
    }
}

/// The VFIO side of INTx.
pub(crate) struct IntxLine {
    fds: IntxFds,
    on: bool,
}

impl IntxLine {
    pub(crate) fn new(fds: IntxFds) -> Self {
        IntxLine { fds, on: false }
    }

    /// Trigger eventfd first: VFIO accepts the resample (unmask) eventfd only
    /// while INTx is enabled.
    pub(crate) fn enable(&mut self, ops: &dyn VfioDeviceOps) -> io::Result<()> {
        if self.on {
            return Ok(());
        }
        let fds = [self.fds.trigger.as_raw_fd()];
        ops.set_irqs(IrqRequest::Trigger {
            index: IrqIndex::Intx,
            start: 0,
            fds: &fds,
        })?;
        self.on = true;
        let fd = self.fds.resample.as_raw_fd();
        ops.set_irqs(IrqRequest::Resample {
            index: IrqIndex::Intx,
            fd,
        })
    }

    pub(crate) fn disable(&mut self, ops: &dyn VfioDeviceOps) -> io::Result<()> {
        if self.on {
            self.on = false;
            ops.set_irqs(IrqRequest::Disable {
                index: IrqIndex::Intx,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, CallLog, FakeDevice, NullRouter};

    fn efd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn line(kind: MsiKind, n: usize) -> (MsiLine, RecordingRouter, Vec<i32>) {
        let eventfds: Vec<EventFd> = (0..n).map(|_| efd()).collect();
        let raw = eventfds.iter().map(|e| e.as_raw_fd()).collect();
        let (l, r) = MsiLine::new(
            kind,
            MsiVectors {
                router: Box::new(NullRouter),
                eventfds,
            },
        );
        (l, r, raw)
    }

    fn sync(l: &mut MsiLine, dev: &FakeDevice) -> Option<bool> {
        l.sync(dev, &mut || Ok(())).unwrap()
    }

    #[test]
    fn msix_enable_allocates_all_vectors_unattached() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, _) = line(MsiKind::Msix, 4);
        r.enable(Some(4)).unwrap();
        assert_eq!(sync(&mut l, &dev), Some(true));
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 0,
                fds: vec![-1; 4]
            }]
        );
    }

    #[test]
    fn msix_unmask_attaches_once_and_mask_detaches_nothing() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, raw) = line(MsiKind::Msix, 4);
        r.enable(Some(4)).unwrap();
        sync(&mut l, &dev);
        log.take();
        r.update(2, MsiMessage::default(), false).unwrap();
        r.update(2, MsiMessage::default(), true).unwrap();
        r.update(2, MsiMessage::default(), false).unwrap();
        assert_eq!(sync(&mut l, &dev), None);
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 2,
                fds: vec![raw[2]]
            }]
        );
    }

    #[test]
    fn msix_vectors_unmasked_before_enable_are_attached_at_enable() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, raw) = line(MsiKind::Msix, 3);
        r.update(1, MsiMessage::default(), false).unwrap();
        r.enable(Some(3)).unwrap();
        sync(&mut l, &dev);
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 0,
                fds: vec![-1, raw[1], -1]
            }]
        );
    }

    #[test]
    fn msix_enable_attaches_vectors_reported_unmasked_in_the_same_batch() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, raw) = line(MsiKind::Msix, 3);
        r.enable(Some(3)).unwrap();
        r.update(0, MsiMessage::default(), false).unwrap();
        r.update(2, MsiMessage::default(), false).unwrap();
        sync(&mut l, &dev);
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 0,
                fds: vec![raw[0], -1, raw[2]]
            }]
        );
    }

    #[test]
    fn msix_disable_is_data_none_count_zero() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, _) = line(MsiKind::Msix, 2);
        r.enable(Some(2)).unwrap();
        sync(&mut l, &dev);
        log.take();
        r.enable(None).unwrap();
        assert_eq!(sync(&mut l, &dev), Some(false));
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqDisable {
                index: IrqIndex::Msix
            }]
        );
        assert!(!l.enabled());
    }

    #[test]
    fn msi_enable_attaches_every_enabled_vector() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let (mut l, mut r, raw) = line(MsiKind::Msi, 4);
        r.enable(Some(2)).unwrap();
        sync(&mut l, &dev);
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqTrigger {
                index: IrqIndex::Msi,
                start: 0,
                fds: raw[..2].to_vec()
            }]
        );
    }

    #[test]
    fn intx_sets_trigger_before_resample_and_disables_once() {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        let fds = IntxFds {
            trigger: efd(),
            resample: efd(),
        };
        let (t, rs) = (fds.trigger.as_raw_fd(), fds.resample.as_raw_fd());
        let mut intx = IntxLine::new(fds);
        intx.enable(&dev).unwrap();
        intx.enable(&dev).unwrap();
        intx.disable(&dev).unwrap();
        intx.disable(&dev).unwrap();
        assert_eq!(
            log.irq_calls(),
            vec![
                Call::IrqTrigger {
                    index: IrqIndex::Intx,
                    start: 0,
                    fds: vec![t]
                },
                Call::IrqResample {
                    index: IrqIndex::Intx,
                    fd: rs
                },
                Call::IrqDisable {
                    index: IrqIndex::Intx
                },
            ]
        );
    }
}
