//! Interrupt plumbing of a passed-through function: what a guest access to its MSI
//! or MSI-X capability or table changed, applied in one place ([`MsiLine::apply`]):
//! the GSI routes and irqfds through the VMM's [`MsiRouter`], then the
//! VFIO_DEVICE_SET_IRQS calls (include/uapi/linux/vfio.h; PCI Local Bus 3.0 6.8 for
//! MSI/MSI-X, 6.2.4 for INTx).
//!
//! The seam with the VMM is [`IrqProvider`]: for each interrupt kind the VMM hands
//! over the eventfds it registered with KVM (KVM_IRQFD on the vector's GSI, with a
//! resample eventfd for INTx) and, for MSI/MSI-X, the router that programs the GSI
//! routes. VFIO signals the same eventfds, so device interrupts reach the guest
//! without leaving the kernel.
//!
//! Policy:
//! - INTx is on whenever neither MSI nor MSI-X is: VFIO refuses to switch
//!   between modes without disabling the old one first.
//! - MSI-X: when the guest sets the enable bit, the index is enabled with the
//!   full table size (kernels with VFIO_IRQ_INFO_NORESIZE cannot grow it
//!   later) but no vector attached; a vector is attached the first time the
//!   guest unmasks it. Masking is done here, at the source ([`Holder::Source`]):
//!   vfio-pci has no MASK/UNMASK action for MSI-X (Linux 6.1), so a masked vector's
//!   trigger is pointed at a hold eventfd of its own, where an interrupt waits (the
//!   PBA shows it) until the unmask points the trigger back at the irqfd and
//!   replays it. The irqfds stay registered in KVM, so a mask or unmask costs no
//!   KVM call, and a function-mask toggle is one SET_IRQS over the vectors it
//!   moves, whatever their number (as QEMU does per vector, with one call here).
//! - MSI: all enabled vectors are attached at enable (MSI has no per-vector
//!   table to wait for); its per-vector masks are held by the router
//!   ([`Holder::Router`]).
//! - Disabling MSI or MSI-X is SET_IRQS DATA_NONE with count 0, then INTx again.
//!
//! The way of one guest write to the MSI-X table, to the ioctls it causes:
//! vCPU exit (`vmm` vcpu.rs, exits.rs) -> MMIO bus (`devices` bus.rs) -> BAR trap
//! (`vmm` passthrough/bars.rs) -> `VfioPciDevice::bar_write` (`vfio-glue`
//! pci/mod.rs) -> `Msix::write` (`devices` pci/msix.rs) returns the [`MsiChange`]s
//! -> `apply_irqs` -> [`MsiLine::apply`] (here): the VMM's router (`vmm`
//! interrupts.rs: KVM_SET_GSI_ROUTING, KVM_IRQFD), then `VfioDeviceOps::set_irqs`
//! (device.rs: VFIO_DEVICE_SET_IRQS). 10 files (interrupt.rs holds the change type),
//! 5 calls from one workspace crate into another, and one callback trait
//! ([`MsiRouter`]) called once. Before the model returned its changes it was 11 files
//! and 8 crossings: the model called `update` and then `commit` on a recording router
//! here, which forwarded each to the VMM's router (two callback traits, each crossed
//! twice per access), and a second pass here replayed what the recording router had
//! kept as SET_IRQS.

use std::io;
use std::os::unix::io::AsRawFd;

use devices::interrupt::{MsiChange, MsiRouter};
use resources::{limited_debug, LogLimiter};

static CHANGES: LogLimiter = LogLimiter::new();
use vmm_sys_util::eventfd::EventFd;

use crate::device::{IrqIndex, IrqRequest, VfioDeviceOps};

/// Message-signalled interrupt kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiKind {
    Msi,
    Msix,
}

/// Where an interrupt raised while its vector is masked waits until the unmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// In the vector's eventfd: the router takes the irqfd off KVM while the vector
    /// is masked (its source signals whatever the mask: an emulated device, MSI).
    Router,
    /// At the source, which stops signalling the irqfd while the vector is masked
    /// (VFIO's trigger moves to a hold eventfd): the router keeps the irqfd in KVM.
    Source,
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
    /// Wire `count` vectors of `kind` (the capability's table size or maximum), masks
    /// held as `holder` says.
    fn msi(&mut self, kind: MsiKind, count: u16, holder: Holder) -> io::Result<MsiVectors>;
    /// Wire INTx pin `pin` (1..=4 for INTA..INTD) of this function.
    fn intx(&mut self, pin: u8) -> io::Result<IntxFds>;
}

/// What VFIO signals for one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Nothing: never unmasked since enable (the host vector stays masked).
    Nothing,
    Irqfd,
    /// The vector's hold eventfd: masked by the guest.
    Hold,
}

/// The VFIO side of one MSI or MSI-X capability, and the router of its KVM side.
pub(crate) struct MsiLine {
    kind: MsiKind,
    router: Box<dyn MsiRouter>,
    /// The irqfds, as VFIO gets them.
    fds: Vec<EventFd>,
    /// MSI-X: where VFIO signals a masked vector, made the first time one is needed.
    holds: Vec<Option<EventFd>>,
    /// MSI-X: the vector's own mask bit is clear, as last reported.
    unmasked: Vec<bool>,
    function_masked: bool,
    /// `Some` while enabled: what VFIO signals for each vector.
    targets: Option<Vec<Target>>,
}

impl MsiLine {
    pub(crate) fn new(kind: MsiKind, wiring: MsiVectors) -> Self {
        let n = wiring.eventfds.len();
        MsiLine {
            kind,
            router: wiring.router,
            fds: wiring.eventfds,
            holds: (0..n).map(|_| None).collect(),
            unmasked: vec![false; n],
            function_masked: false,
            targets: None,
        }
    }

    /// Who holds this line's masked interrupts.
    pub(crate) fn holder(kind: MsiKind) -> Holder {
        match kind {
            MsiKind::Msix => Holder::Source,
            MsiKind::Msi => Holder::Router,
        }
    }

    fn index(&self) -> IrqIndex {
        match self.kind {
            MsiKind::Msi => IrqIndex::Msi,
            MsiKind::Msix => IrqIndex::Msix,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.targets.is_some()
    }

    /// Whether an interrupt of masked vector `v` waits (for the PBA).
    pub(crate) fn held(&mut self, v: u16) -> bool {
        let v = usize::from(v);
        let on_hold = self
            .targets
            .as_ref()
            .is_some_and(|t| t.get(v) == Some(&Target::Hold));
        match self.holds.get(v) {
            Some(Some(hold)) if on_hold => peek(hold),
            _ => self.router.is_pending(v as u16),
        }
    }

    /// Apply what one guest access changed: routes and irqfds first (through the
    /// router), so VFIO never signals an eventfd KVM does not deliver yet, then
    /// SET_IRQS (the other way round when the access disabled the capability). Returns whether the line was turned on (`Some(true)`) or off
    /// (`Some(false)`), so the caller switches INTx; `before_enable` turns the other
    /// modes off first.
    pub(crate) fn apply(
        &mut self,
        ops: &dyn VfioDeviceOps,
        changes: &[MsiChange],
        before_enable: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<Option<bool>> {
        if changes.is_empty() {
            return Ok(None);
        }
        limited_debug!(CHANGES, "{:?} changes {changes:?}", self.kind);
        if changes.contains(&MsiChange::Enable(None)) {
            // Off in the reverse order: VFIO stops signalling before the irqfds go.
            let switched = self.apply_vfio(ops, changes, before_enable)?;
            return self.router.apply(changes).map(|()| switched);
        }
        let routed = self.router.apply(changes);
        let switched = self.apply_vfio(ops, changes, before_enable)?;
        routed.map(|()| switched)
    }

    fn apply_vfio(
        &mut self,
        ops: &dyn VfioDeviceOps,
        changes: &[MsiChange],
        before_enable: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<Option<bool>> {
        let (mut switched, mut fresh) = (None, false);
        let mut touched = Vec::new();
        for c in changes {
            match *c {
                MsiChange::Enable(Some(n)) => {
                    self.disable(ops)?;
                    before_enable()?;
                    let n = usize::from(n).min(self.fds.len());
                    self.targets = Some(vec![Target::Nothing; n]);
                    self.unmasked.fill(false);
                    (switched, fresh) = (Some(true), true);
                }
                MsiChange::Enable(None) => {
                    self.disable(ops)?;
                    (switched, fresh) = (Some(false), false);
                    touched.clear();
                }
                MsiChange::FunctionMask(m) => {
                    self.function_masked = m;
                    // The vectors in use: attached, or unmasked and waiting for it.
                    let targets = self.targets.iter().flatten().zip(&self.unmasked);
                    let in_use = targets
                        .enumerate()
                        .filter(|(_, (t, u))| **t != Target::Nothing || **u);
                    touched.extend(in_use.map(|(v, _)| v));
                }
                MsiChange::Vector { vector, masked, .. } => {
                    let v = usize::from(vector);
                    if let Some(u) = self.unmasked.get_mut(v) {
                        *u = !masked;
                        touched.push(v);
                    }
                }
                MsiChange::Deliver(_) => {}
            }
        }
        match self.targets.as_ref().map(Vec::len) {
            Some(n) if fresh => self.retarget(ops, 0, n)?,
            Some(_) => {
                touched.retain(|&v| self.wanted(v) != self.target(v));
                if let (Some(&lo), Some(&hi)) = (touched.iter().min(), touched.iter().max()) {
                    self.retarget(ops, lo, hi + 1)?;
                }
            }
            None => {}
        }
        Ok(switched)
    }

    /// What VFIO signals for vector `v` now (`None`: not enabled or out of range).
    fn target(&self, v: usize) -> Option<Target> {
        self.targets.as_ref()?.get(v).copied()
    }

    /// What VFIO should signal for vector `v` (`None`: not enabled or out of range).
    fn wanted(&self, v: usize) -> Option<Target> {
        let now = self.target(v)?;
        let deliver = self.unmasked[v] && !self.function_masked;
        Some(match (self.kind, now) {
            (MsiKind::Msi, _) => Target::Irqfd,
            (MsiKind::Msix, _) if deliver => Target::Irqfd,
            // Not attached yet: the host vector has no handler and stays masked, so
            // the device itself holds an interrupt until the attach.
            (MsiKind::Msix, Target::Nothing) => Target::Nothing,
            (MsiKind::Msix, _) => Target::Hold,
        })
    }

    /// One SET_IRQS for vectors `lo..hi` (each to what it should signal; those that do
    /// not move get the same eventfd again), then replay what waited on hold for the
    /// vectors that left it.
    fn retarget(&mut self, ops: &dyn VfioDeviceOps, lo: usize, hi: usize) -> io::Result<()> {
        let mut next = Vec::with_capacity(hi - lo);
        let mut fds = Vec::with_capacity(hi - lo);
        for v in lo..hi {
            let t = self.wanted(v).unwrap_or(Target::Nothing);
            fds.push(match t {
                Target::Nothing => -1,
                Target::Irqfd => self.fds[v].as_raw_fd(),
                Target::Hold => self.hold(v)?.as_raw_fd(),
            });
            next.push(t);
        }
        if !fds.is_empty() {
            ops.set_irqs(IrqRequest::Trigger {
                index: self.index(),
                start: lo as u32,
                fds: &fds,
            })?;
        }
        let Some(targets) = self.targets.as_mut() else {
            return Ok(());
        };
        for (v, t) in (lo..hi).zip(next) {
            let old = std::mem::replace(&mut targets[v], t);
            if old == Target::Hold && t == Target::Irqfd {
                // Signalled after the switch: what waited reaches KVM through the irqfd.
                if let Some(Some(hold)) = self.holds.get(v) {
                    if hold.read().is_ok() {
                        self.fds[v].write(1)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Vector `v`'s hold eventfd, made on first use.
    fn hold(&mut self, v: usize) -> io::Result<&EventFd> {
        match &mut self.holds[v] {
            Some(hold) => Ok(hold),
            slot @ None => Ok(slot.insert(EventFd::new(libc::EFD_NONBLOCK)?)),
        }
    }

    /// Disable the index if it is on; interrupts waiting on hold are dropped with it.
    pub(crate) fn disable(&mut self, ops: &dyn VfioDeviceOps) -> io::Result<()> {
        if self.targets.take().is_some() {
            ops.set_irqs(IrqRequest::Disable {
                index: self.index(),
            })?;
            for hold in self.holds.iter().flatten() {
                let _ = hold.read();
            }
        }
        Ok(())
    }
}

/// Whether `fd` has a count, leaving it there.
fn peek(fd: &EventFd) -> bool {
    match fd.read() {
        Ok(n) => fd.write(n).is_ok(),
        Err(_) => false,
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
    use devices::interrupt::MsiMessage;
    use std::sync::{Arc, Mutex};

    fn efd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    /// Counts the router's `apply` calls and the changes it was handed.
    #[derive(Clone, Default)]
    struct CountingRouter(Arc<Mutex<(usize, Vec<MsiChange>)>>);

    impl MsiRouter for CountingRouter {
        fn apply(&mut self, changes: &[MsiChange]) -> io::Result<()> {
            let mut c = self.0.lock().unwrap();
            c.0 += 1;
            c.1.extend_from_slice(changes);
            Ok(())
        }
        fn trigger(&mut self, _: u16) -> io::Result<()> {
            Ok(())
        }
    }

    fn line_with(kind: MsiKind, n: usize, router: Box<dyn MsiRouter>) -> (MsiLine, Vec<i32>) {
        let eventfds: Vec<EventFd> = (0..n).map(|_| efd()).collect();
        let raw = eventfds.iter().map(|e| e.as_raw_fd()).collect();
        let l = MsiLine::new(kind, MsiVectors { router, eventfds });
        (l, raw)
    }

    fn line(kind: MsiKind, n: usize) -> (MsiLine, Vec<i32>) {
        line_with(kind, n, Box::new(NullRouter))
    }

    fn apply(l: &mut MsiLine, dev: &FakeDevice, changes: &[MsiChange]) -> Option<bool> {
        l.apply(dev, changes, &mut || Ok(())).unwrap()
    }

    /// A fake device and the log it writes to.
    fn device() -> (CallLog, FakeDevice) {
        let log = CallLog::default();
        let dev = FakeDevice::new(log.clone(), &[]);
        (log, dev)
    }

    /// What enabling `n` vectors with `unmasked` ones clear reports.
    fn enable(n: u16, unmasked: &[u16]) -> Vec<MsiChange> {
        let mut c = vec![MsiChange::Enable(Some(n))];
        c.extend(unmasked.iter().map(|&v| vector(v, false)));
        c
    }

    fn vector(v: u16, masked: bool) -> MsiChange {
        MsiChange::Vector {
            vector: v,
            msg: MsiMessage::default(),
            masked,
        }
    }

    fn trigger_fds(calls: &[Call]) -> Vec<(u32, Vec<i32>)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::IrqTrigger { start, fds, .. } => Some((*start, fds.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn msix_enable_allocates_all_vectors_unattached() {
        let (log, dev) = device();
        let (mut l, _) = line(MsiKind::Msix, 4);
        assert_eq!(
            apply(&mut l, &dev, &[MsiChange::Enable(Some(4))]),
            Some(true)
        );
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
    fn msix_unmask_attaches_the_irqfd_and_mask_moves_to_a_hold_eventfd() {
        let (log, dev) = device();
        let (mut l, raw) = line(MsiKind::Msix, 4);
        apply(&mut l, &dev, &[MsiChange::Enable(Some(4))]);
        log.take();
        apply(&mut l, &dev, &[vector(2, false)]);
        apply(&mut l, &dev, &[vector(2, true)]);
        apply(&mut l, &dev, &[vector(2, false)]);
        let calls = trigger_fds(&log.irq_calls());
        assert_eq!(calls.len(), 3, "one SET_IRQS per mask change: {calls:?}");
        assert_eq!(calls[0], (2, vec![raw[2]]));
        assert!(calls[1].0 == 2 && calls[1].1[0] != raw[2] && calls[1].1[0] >= 0);
        assert_eq!(calls[2], (2, vec![raw[2]]));
    }

    #[test]
    fn an_interrupt_on_hold_shows_as_held_and_is_replayed_on_unmask() {
        let (_, dev) = device();
        let (mut l, _) = line(MsiKind::Msix, 2);
        apply(&mut l, &dev, &enable(2, &[1]));
        apply(&mut l, &dev, &[vector(1, true)]);
        assert!(!l.held(1));
        // The device fires while masked: VFIO signals the hold eventfd.
        l.holds[1].as_ref().unwrap().write(1).unwrap();
        assert!(l.held(1));
        assert!(l.held(1), "reading it keeps it");
        assert!(l.fds[1].read().is_err(), "nothing reached the irqfd");
        apply(&mut l, &dev, &[vector(1, false)]);
        assert_eq!(l.fds[1].read().unwrap(), 1, "replayed through the irqfd");
        assert!(!l.held(1));
    }

    #[test]
    fn msix_vectors_unmasked_in_the_enable_batch_are_attached_at_enable() {
        let (log, dev) = device();
        let (mut l, raw) = line(MsiKind::Msix, 3);
        let enable = [
            MsiChange::Enable(Some(3)),
            vector(0, false),
            vector(2, false),
        ];
        apply(&mut l, &dev, &enable);
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
    fn msix_enabled_under_the_function_mask_attaches_vectors_at_function_unmask() {
        let (log, dev) = device();
        let (mut l, raw) = line(MsiKind::Msix, 3);
        let enable = [
            MsiChange::FunctionMask(true),
            MsiChange::Enable(Some(3)),
            vector(0, false),
        ];
        apply(&mut l, &dev, &enable);
        apply(&mut l, &dev, &[vector(1, false)]);
        assert_eq!(trigger_fds(&log.take()), vec![(0, vec![-1; 3])]);
        apply(&mut l, &dev, &[MsiChange::FunctionMask(false)]);
        assert_eq!(trigger_fds(&log.take()), vec![(0, vec![raw[0], raw[1]])]);
    }

    #[test]
    fn function_mask_toggles_cost_one_set_irqs_each_at_2048_vectors() {
        let (log, dev) = device();
        let router = CountingRouter::default();
        let (mut l, raw) = line_with(MsiKind::Msix, 2048, Box::new(router.clone()));
        let all: Vec<u16> = (0..2048).collect();
        apply(&mut l, &dev, &enable(2048, &all));
        assert_eq!(log.take().len(), 1, "enable: one SET_IRQS for the table");
        *router.0.lock().unwrap() = Default::default();
        let toggles = 1000;
        for _ in 0..toggles {
            apply(&mut l, &dev, &[MsiChange::FunctionMask(true)]);
            apply(&mut l, &dev, &[MsiChange::FunctionMask(false)]);
        }
        let calls = log.take();
        assert_eq!(calls.len(), 2 * toggles, "one SET_IRQS per guest write");
        let last = trigger_fds(&calls).pop().unwrap();
        assert_eq!(last, (0, raw), "back on the irqfds");
        let (applies, changes) = router.0.lock().unwrap().clone();
        assert_eq!(applies, 2 * toggles, "one router call per guest write");
        assert!(changes
            .iter()
            .all(|c| matches!(c, MsiChange::FunctionMask(_))));
    }

    #[test]
    fn function_mask_moves_only_attached_vectors() {
        let (log, dev) = device();
        let (mut l, raw) = line(MsiKind::Msix, 64);
        apply(&mut l, &dev, &[MsiChange::Enable(Some(64))]);
        apply(&mut l, &dev, &[vector(3, false)]);
        apply(&mut l, &dev, &[vector(5, false)]);
        log.take();
        apply(&mut l, &dev, &[MsiChange::FunctionMask(true)]);
        apply(&mut l, &dev, &[MsiChange::FunctionMask(false)]);
        let calls = trigger_fds(&log.take());
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], (3, vec![raw[3], -1, raw[5]]));
    }

    #[test]
    fn masking_a_vector_that_was_never_attached_costs_nothing() {
        let (log, dev) = device();
        let (mut l, _) = line(MsiKind::Msix, 4);
        apply(&mut l, &dev, &[MsiChange::Enable(Some(4))]);
        log.take();
        apply(&mut l, &dev, &[vector(1, true)]);
        apply(&mut l, &dev, &[MsiChange::FunctionMask(true)]);
        assert!(log.take().is_empty());
    }

    #[test]
    fn msix_disable_is_data_none_count_zero_and_drops_what_was_held() {
        let (log, dev) = device();
        let (mut l, _) = line(MsiKind::Msix, 2);
        apply(&mut l, &dev, &enable(2, &[0]));
        apply(&mut l, &dev, &[vector(0, true)]);
        l.holds[0].as_ref().unwrap().write(1).unwrap();
        log.take();
        assert_eq!(apply(&mut l, &dev, &[MsiChange::Enable(None)]), Some(false));
        assert_eq!(
            log.irq_calls(),
            vec![Call::IrqDisable {
                index: IrqIndex::Msix
            }]
        );
        assert!(!l.enabled());
        assert!(l.holds[0].as_ref().unwrap().read().is_err());
    }

    #[test]
    fn msi_enable_attaches_every_enabled_vector_and_masks_stay_with_the_router() {
        let (log, dev) = device();
        let (mut l, raw) = line(MsiKind::Msi, 4);
        apply(&mut l, &dev, &enable(2, &[0]));
        apply(&mut l, &dev, &[vector(0, true)]);
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
        let (log, dev) = device();
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
