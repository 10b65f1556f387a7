//! The VMM's side of vfio-glue's interrupt seam ([`IrqProvider`] and the [`MsiRouter`]s
//! it hands out), recording every call so tests can check what a VMM would program into
//! KVM: which GSI routes (the guest's MSI address/data), masked or not, and which
//! eventfds VFIO was given.

use resources::lock;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::interrupt::{MsiChange, MsiMessage, MsiRouter};
use vfio_glue::{Holder, IntxFds, IrqProvider, MsiKind, MsiVectors};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A call a router made, tagged with the capability it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Enable(MsiKind, Option<u16>),
    Update(MsiKind, u16, MsiMessage, bool),
    Trigger(MsiKind, u16),
    FunctionMask(MsiKind, bool),
}

#[derive(Debug, Default)]
struct State {
    routed: Vec<Routed>,
    wired: Vec<(MsiKind, u16)>,
    msix_fds: Vec<RawFd>,
    msi_fds: Vec<RawFd>,
    intx: Option<(u8, RawFd, RawFd)>,
}

/// Records what one function asked of the VMM. Clones share the record, so a test keeps
/// one after lending another to `VfioPciDevice::new`.
#[derive(Debug, Clone, Default)]
pub struct IrqRecorder(Arc<Mutex<State>>);

impl IrqRecorder {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }

    /// Router calls since the last call to this.
    pub fn take_routed(&self) -> Vec<Routed> {
        std::mem::take(&mut self.state().routed)
    }

    /// The (kind, vector count) of every `IrqProvider::msi` call, in order.
    pub fn wired(&self) -> Vec<(MsiKind, u16)> {
        self.state().wired.clone()
    }

    /// Raw eventfds handed over for MSI-X vectors, by vector.
    pub fn msix_fds(&self) -> Vec<RawFd> {
        self.state().msix_fds.clone()
    }

    /// Raw eventfds handed over for MSI vectors, by vector.
    pub fn msi_fds(&self) -> Vec<RawFd> {
        self.state().msi_fds.clone()
    }

    /// (pin, trigger fd, resample fd) of the INTx wiring, if asked for.
    pub fn intx(&self) -> Option<(u8, RawFd, RawFd)> {
        self.state().intx
    }
}

fn eventfds(n: u16) -> std::io::Result<Vec<EventFd>> {
    (0..n).map(|_| EventFd::new(EFD_NONBLOCK)).collect()
}

impl IrqProvider for IrqRecorder {
    fn msi(&mut self, kind: MsiKind, count: u16, _: Holder) -> std::io::Result<MsiVectors> {
        let fds = eventfds(count)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut s = self.state();
        s.wired.push((kind, count));
        match kind {
            MsiKind::Msix => s.msix_fds = raw,
            MsiKind::Msi => s.msi_fds = raw,
        }
        let router = Router {
            kind,
            record: self.clone(),
        };
        Ok(MsiVectors {
            router: Box::new(router),
            eventfds: fds,
        })
    }

    fn intx(&mut self, pin: u8) -> std::io::Result<IntxFds> {
        let fds = IntxFds {
            trigger: EventFd::new(EFD_NONBLOCK)?,
            resample: EventFd::new(EFD_NONBLOCK)?,
        };
        self.state().intx = Some((pin, fds.trigger.as_raw_fd(), fds.resample.as_raw_fd()));
        Ok(fds)
    }
}

/// The router of one capability; appends to its recorder.
struct Router {
    kind: MsiKind,
    record: IrqRecorder,
}

impl MsiRouter for Router {
    fn apply(&mut self, changes: &[MsiChange]) -> std::io::Result<()> {
        let mut state = self.record.state();
        for c in changes {
            state.routed.push(match *c {
                MsiChange::Enable(n) => Routed::Enable(self.kind, n),
                MsiChange::FunctionMask(m) => Routed::FunctionMask(self.kind, m),
                MsiChange::Vector {
                    vector,
                    msg,
                    masked,
                } => Routed::Update(self.kind, vector, msg, masked),
                MsiChange::Deliver(v) => Routed::Trigger(self.kind, v),
            });
        }
        Ok(())
    }

    fn trigger(&mut self, vector: u16) -> std::io::Result<()> {
        let r = Routed::Trigger(self.kind, vector);
        self.record.state().routed.push(r);
        Ok(())
    }
}
