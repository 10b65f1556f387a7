//! Interrupts of passed-through functions, delivered by KVM without a trip through Strait:
//! vfio-glue's [`IrqProvider`] implemented with KVM GSI routing and irqfds (KVM API,
//! Documentation/virt/kvm/api.rst: KVM_SET_GSI_ROUTING, KVM_IRQFD with
//! KVM_IRQFD_FLAG_RESAMPLE).
//!
//! - MSI and MSI-X: every vector gets a GSI from [`GsiAllocator`] and an eventfd. VFIO
//!   signals the eventfd (VFIO_DEVICE_SET_IRQS); KVM's irqfd on the vector's GSI turns it
//!   into the MSI the guest programmed, through an MSI route.
//! - KVM_SET_GSI_ROUTING replaces the whole table, so [`GsiRouting`] keeps the table and
//!   always writes the default IOAPIC/PIC routes of GSIs 0..23 (those KVM installs with
//!   the in-kernel irqchip) plus every MSI route.
//! - Who holds an interrupt raised while its vector is masked ([`Holder`]):
//!   - `Router` (virtio functions, whose I/O thread or vhost-net writes the eventfd
//!     whatever the mask; MSI of passed-through functions): masking a vector (its own
//!     mask bit or the MSI-X function mask) deassigns its irqfd, unmasking reassigns
//!     it. KVM injects at assign time if the eventfd was signalled meanwhile, so the
//!     interrupt waits in the eventfd (the pending bit, see [`KvmMsiRouter`]'s
//!     `is_pending`) and is delivered on unmask, never lost.
//!   - `Source` (MSI-X of passed-through functions): vfio-glue stops VFIO signalling
//!     a masked vector's irqfd, so the irqfd stays assigned from the vector's first
//!     route until the capability is disabled: masks cost no KVM call here.
//! - Work per guest access is what changed: [`MsiRouter::apply`] gets the access's
//!   changes and makes at most one routing-table write; the function mask moves no
//!   route and, with `Router` holding, switches only the irqfds of vectors the guest
//!   unmasked (holding an interrupt needs the irqfd off: neither KVM nor vfio-pci can
//!   hold one otherwise).
//! - INTx: a level irqfd with a resample eventfd on the GSI the DSDT `_PRT` gives the
//!   root port's slot (`arch::x86_64::layout::pci_intx_gsi`); KVM signals the resample
//!   eventfd on EOI and VFIO unmasks the host line.

use resources::lock;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use arch::x86_64::layout::pci_intx_gsi;
use arch::x86_64::layout::IOAPIC_NUM_PINS;
use devices::interrupt::{MsiChange, MsiMessage, MsiRouter};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use resources::{limited_debug, GsiAllocator, LogLimiter};
use vfio_glue::{Holder, IntxFds, IrqProvider, MsiKind, MsiVectors};
use vmm_sys_util::eventfd::EventFd;

/// GSIs that also reach the dual 8259 PIC (ISA IRQs 0..15).
const PIC_GSI_COUNT: u32 = 16;

/// What a GSI is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A pin of an in-kernel interrupt controller (`KVM_IRQCHIP_*`).
    Irqchip { chip: u32, pin: u32 },
    /// A message-signalled interrupt.
    Msi(MsiMessage),
}

/// The routes KVM installs with KVM_CREATE_IRQCHIP: GSI n to IOAPIC pin n for n < 24,
/// and for n < 16 also to pin n % 8 of the master (n < 8) or slave PIC.
pub fn default_routes() -> Vec<(u32, Route)> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_NUM_PINS {
        let ioapic = Route::Irqchip {
            chip: KVM_IRQCHIP_IOAPIC,
            pin: gsi,
        };
        routes.push((gsi, ioapic));
        if gsi < PIC_GSI_COUNT {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            routes.push((gsi, Route::Irqchip { chip, pin: gsi % 8 }));
        }
    }
    routes
}

/// The whole routing table: the defaults, then the MSI routes in GSI order.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<(u32, Route)> {
    let mut table = default_routes();
    table.extend(msi.iter().map(|(&gsi, &m)| (gsi, Route::Msi(m))));
    table
}

/// One route as KVM_SET_GSI_ROUTING takes it.
pub fn kvm_entry(gsi: u32, route: Route) -> kvm_irq_routing_entry {
    let (type_, u) = match route {
        Route::Irqchip { chip, pin } => (
            KVM_IRQ_ROUTING_IRQCHIP,
            kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
            },
        ),
        Route::Msi(m) => (
            KVM_IRQ_ROUTING_MSI,
            kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: m.address as u32,
                    address_hi: (m.address >> 32) as u32,
                    data: m.data,
                    ..Default::default()
                },
            },
        ),
    };
    kvm_irq_routing_entry {
        gsi,
        type_,
        u,
        ..Default::default()
    }
}

/// The KVM calls interrupt wiring needs (a VM fd; a recording fake in tests).
pub trait IrqChip: Send + Sync {
    fn set_routes(&self, table: &[(u32, Route)]) -> io::Result<()>;
    fn assign(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    fn deassign(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    fn assign_level(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> io::Result<()>;
}

fn kvm_io(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl IrqChip for VmFd {
    fn set_routes(&self, table: &[(u32, Route)]) -> io::Result<()> {
        let entries: Vec<_> = table.iter().map(|&(g, r)| kvm_entry(g, r)).collect();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("{} GSI routes: {e:?}", entries.len())))?;
        self.set_gsi_routing(&routing).map_err(kvm_io)
    }

    fn assign(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.register_irqfd(fd, gsi).map_err(kvm_io)
    }

    fn deassign(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.unregister_irqfd(fd, gsi).map_err(kvm_io)
    }

    fn assign_level(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> io::Result<()> {
        self.register_irqfd_with_resample(fd, resample, gsi)
            .map_err(kvm_io)
    }
}

struct RoutingState {
    gsis: GsiAllocator,
    msi: BTreeMap<u32, MsiMessage>,
    /// `msi` changed since the table was last written.
    dirty: bool,
}

/// The VM's GSI routing table and MSI GSI pool, shared by all MSI routers.
pub struct GsiRouting {
    chip: Arc<dyn IrqChip>,
    state: Mutex<RoutingState>,
}

impl GsiRouting {
    pub fn new(chip: Arc<dyn IrqChip>, gsis: GsiAllocator) -> Arc<Self> {
        let state = RoutingState {
            gsis,
            msi: BTreeMap::new(),
            dirty: false,
        };
        Arc::new(GsiRouting {
            chip,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RoutingState> {
        lock(&self.state)
    }

    pub fn chip(&self) -> &Arc<dyn IrqChip> {
        &self.chip
    }

    fn allocate(&self, n: u16) -> io::Result<Vec<u32>> {
        let mut st = self.lock();
        let mut got = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            match st.gsis.allocate() {
                Ok(g) => got.push(g),
                Err(e) => {
                    for g in got {
                        let _ = st.gsis.free(g);
                    }
                    return Err(io::Error::other(e));
                }
            }
        }
        Ok(got)
    }

    /// Drop the MSI routes of `gsis` with one table write (none if they had no route).
    fn remove_routes(&self, gsis: &[u32]) -> io::Result<()> {
        for &g in gsis {
            self.stage(g, None);
        }
        self.flush()
    }

    /// Drop the routes of `gsis` and return them to the pool.
    fn release(&self, gsis: &[u32]) {
        if let Err(e) = self.remove_routes(gsis) {
            log::error!("KVM_SET_GSI_ROUTING while releasing GSIs: {e}");
        }
        let mut st = self.lock();
        for &g in gsis {
            let _ = st.gsis.free(g);
        }
    }

    /// Route `gsi` to `msg` (`None`: remove the route) in the table kept here; written
    /// to KVM by the next [`GsiRouting::flush`]. Returns whether anything changed.
    pub fn stage(&self, gsi: u32, msg: Option<MsiMessage>) -> bool {
        let mut st = self.lock();
        let old = match msg {
            Some(m) => st.msi.insert(gsi, m),
            None => st.msi.remove(&gsi),
        };
        let changed = old != msg;
        st.dirty |= changed;
        changed
    }

    /// Write the table to KVM if it changed since the last write (one ioctl).
    pub fn flush(&self) -> io::Result<()> {
        let mut st = self.lock();
        if !st.dirty {
            return Ok(());
        }
        self.chip.set_routes(&routing_table(&st.msi))?;
        st.dirty = false;
        Ok(())
    }

    /// Route `gsi` to `msg` (`None`: remove the route) and write the table if it changed.
    pub fn set_msi(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        self.stage(gsi, msg);
        self.flush()
    }

    /// The MSI routes in place, for tests and logs.
    pub fn msi_routes(&self) -> BTreeMap<u32, MsiMessage> {
        self.lock().msi.clone()
    }
}

/// One vector of an MSI or MSI-X capability.
struct Vector {
    gsi: u32,
    /// Our handle on the eventfd VFIO signals (a dup of the one handed to VFIO).
    fd: EventFd,
    /// Its irqfd is assigned in KVM.
    assigned: bool,
    /// Its own mask bit, as last programmed (vectors start masked).
    masked: bool,
    /// Its route is in the table.
    routed: bool,
}

/// An [`MsiRouter`] for one capability of one function.
pub struct KvmMsiRouter {
    routing: Arc<GsiRouting>,
    vectors: Vec<Vector>,
    enabled: bool,
    function_masked: bool,
    holder: Holder,
    label: String,
}

static ROUTER_DEBUG: LogLimiter = LogLimiter::new();

impl KvmMsiRouter {
    fn set_assigned(&mut self, v: usize, on: bool) -> io::Result<()> {
        let chip = self.routing.chip.clone();
        let Some(vec) = self.vectors.get_mut(v) else {
            return Ok(());
        };
        if vec.assigned == on {
            return Ok(());
        }
        if on {
            chip.assign(&vec.fd, vec.gsi)?;
        } else {
            chip.deassign(&vec.fd, vec.gsi)?;
        }
        vec.assigned = on;
        Ok(())
    }

    /// Whether vector `v`'s irqfd should be assigned now.
    fn wants_delivery(&self, v: usize) -> bool {
        let unmasked = |x: &Vector| !x.masked && !self.function_masked;
        self.enabled
            && self
                .vectors
                .get(v)
                .is_some_and(|x| x.routed && (self.holder == Holder::Source || unmasked(x)))
    }

    /// Every irqfd deassigned, every route removed, nothing left pending (the
    /// capability was disabled).
    fn disable_all(&mut self) -> io::Result<()> {
        let mut first_err = None;
        for v in 0..self.vectors.len() {
            if let Err(e) = self.set_assigned(v, false) {
                first_err.get_or_insert(e);
            }
            self.vectors[v].routed = false;
            let _ = self.vectors[v].fd.read();
        }
        let gsis: Vec<u32> = self.vectors.iter().map(|v| v.gsi).collect();
        if let Err(e) = self.routing.remove_routes(&gsis) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl KvmMsiRouter {
    /// Stage `vector`'s route; its irqfd is switched after the table is written.
    fn update(&mut self, vector: u16, msg: MsiMessage, masked: bool) -> bool {
        let label = &self.label;
        let Some(vec) = self.vectors.get_mut(usize::from(vector)) else {
            return false;
        };
        limited_debug!(
            ROUTER_DEBUG,
            "{label}: vector {vector} -> GSI {}, {msg:x?}, masked {masked}",
            vec.gsi
        );
        self.routing.stage(vec.gsi, Some(msg));
        vec.routed = true;
        vec.masked = masked;
        true
    }
}

impl MsiRouter for KvmMsiRouter {
    fn apply(&mut self, changes: &[MsiChange]) -> io::Result<()> {
        let mut first_err = None;
        let mut touched = Vec::new();
        let mut deliver = Vec::new();
        for c in changes {
            match *c {
                MsiChange::Enable(n) => {
                    self.enabled = n.is_some();
                    if n.is_none() {
                        touched.clear();
                        if let Err(e) = self.disable_all() {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                MsiChange::FunctionMask(m) => {
                    let moved = self.function_masked != m && self.holder == Holder::Router;
                    self.function_masked = m;
                    if moved {
                        touched.extend(0..self.vectors.len());
                    }
                }
                MsiChange::Vector {
                    vector,
                    msg,
                    masked,
                } => {
                    if self.update(vector, msg, masked) {
                        touched.push(usize::from(vector));
                    }
                }
                MsiChange::Deliver(v) => deliver.push(v),
            }
        }
        // The routes first: an irqfd assigned to an unrouted GSI would inject nothing.
        if let Err(e) = self.routing.flush() {
            first_err.get_or_insert(e);
        }
        for v in touched {
            if let Err(e) = self.set_assigned(v, self.wants_delivery(v)) {
                first_err.get_or_insert(e);
            }
        }
        for v in deliver {
            if let Err(e) = self.trigger(v) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn trigger(&mut self, vector: u16) -> io::Result<()> {
        // Through the eventfd: delivered now if assigned, else held until unmask.
        match self.vectors.get(usize::from(vector)) {
            Some(v) => v.fd.write(1),
            None => Ok(()),
        }
    }

    fn is_pending(&mut self, vector: u16) -> bool {
        // Only an unassigned eventfd holds anything; read it and put the count back.
        match self.vectors.get(usize::from(vector)) {
            Some(v) if !v.assigned => match v.fd.read() {
                Ok(n) => v.fd.write(n).is_ok(),
                Err(_) => false,
            },
            _ => false,
        }
    }
}

impl Drop for KvmMsiRouter {
    fn drop(&mut self) {
        for v in 0..self.vectors.len() {
            let _ = self.set_assigned(v, false);
        }
        let gsis: Vec<u32> = self.vectors.iter().map(|v| v.gsi).collect();
        self.routing.release(&gsis);
    }
}

/// Fresh eventfd pairs: one for VFIO, and our dup of it for KVM_IRQFD.
fn vector_fds(n: usize) -> io::Result<Vec<(EventFd, EventFd)>> {
    (0..n)
        .map(|_| {
            let vfio = EventFd::new(libc::EFD_NONBLOCK)?;
            let ours = vfio.try_clone()?;
            Ok((vfio, ours))
        })
        .collect()
}

/// Wires one passed-through function's interrupts.
pub struct KvmIrqProvider {
    pub routing: Arc<GsiRouting>,
    /// Slot of the function's root port on bus 0: the `_PRT` entry its INTx reaches
    /// after the bridge swizzle (the function sits in slot 0 below the port, so the
    /// swizzle leaves the pin unchanged).
    pub port_slot: u8,
    /// Names the function in logs.
    pub label: String,
}

impl IrqProvider for KvmIrqProvider {
    fn msi(&mut self, kind: MsiKind, count: u16, holder: Holder) -> io::Result<MsiVectors> {
        let gsis = self.routing.allocate(count)?;
        let fds = match vector_fds(gsis.len()) {
            Ok(fds) => fds,
            Err(e) => {
                self.routing.release(&gsis);
                return Err(e);
            }
        };
        let mut eventfds = Vec::with_capacity(fds.len());
        let mut vectors = Vec::with_capacity(fds.len());
        for (&gsi, (vfio, fd)) in gsis.iter().zip(fds) {
            eventfds.push(vfio);
            vectors.push(Vector {
                gsi,
                fd,
                assigned: false,
                masked: true,
                routed: false,
            });
        }
        log::debug!(
            "{}: {count} {kind:?} vectors on GSIs from {:?}",
            self.label,
            gsis.first()
        );
        let router = KvmMsiRouter {
            routing: self.routing.clone(),
            vectors,
            enabled: false,
            function_masked: false,
            holder,
            label: format!("{} {kind:?}", self.label),
        };
        Ok(MsiVectors {
            router: Box::new(router),
            eventfds,
        })
    }

    fn intx(&mut self, pin: u8) -> io::Result<IntxFds> {
        if !(1..=4).contains(&pin) {
            return Err(io::Error::other(format!(
                "interrupt pin {pin} is not INTA..INTD"
            )));
        }
        let gsi = pci_intx_gsi(self.port_slot, pin - 1);
        let trigger = EventFd::new(libc::EFD_NONBLOCK)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK)?;
        self.routing.chip.assign_level(&trigger, &resample, gsi)?;
        log::debug!(
            "{}: INT{} on GSI {gsi}",
            self.label,
            (b'A' + pin - 1) as char
        );
        Ok(IntxFds { trigger, resample })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Routes(Vec<(u32, Route)>),
        Assign(u32),
        Deassign(u32),
        Level(u32),
    }

    #[derive(Default)]
    struct FakeChip(Mutex<Vec<Call>>);

    impl FakeChip {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl IrqChip for FakeChip {
        fn set_routes(&self, table: &[(u32, Route)]) -> io::Result<()> {
            self.0.lock().unwrap().push(Call::Routes(table.to_vec()));
            Ok(())
        }
        fn assign(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
            self.0.lock().unwrap().push(Call::Assign(gsi));
            Ok(())
        }
        fn deassign(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
            self.0.lock().unwrap().push(Call::Deassign(gsi));
            Ok(())
        }
        fn assign_level(&self, _: &EventFd, _: &EventFd, gsi: u32) -> io::Result<()> {
            self.0.lock().unwrap().push(Call::Level(gsi));
            Ok(())
        }
    }

    fn setup() -> (Arc<FakeChip>, Arc<GsiRouting>) {
        let chip = Arc::new(FakeChip::default());
        let routing = GsiRouting::new(chip.clone(), GsiAllocator::new(24, 4095).unwrap());
        (chip, routing)
    }

    fn provider(routing: &Arc<GsiRouting>) -> KvmIrqProvider {
        KvmIrqProvider {
            routing: routing.clone(),
            port_slot: 1,
            label: "test".into(),
        }
    }

    const MSG: MsiMessage = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };

    fn vector(v: u16, masked: bool) -> MsiChange {
        MsiChange::Vector {
            vector: v,
            msg: MSG,
            masked,
        }
    }

    fn vectors(routing: &Arc<GsiRouting>, kind: MsiKind, n: u16, holder: Holder) -> MsiVectors {
        provider(routing).msi(kind, n, holder).unwrap()
    }

    /// What enabling `n` vectors with `unmasked` ones clear reports.
    fn enable(n: u16, unmasked: &[u16]) -> Vec<MsiChange> {
        let mut c = vec![MsiChange::Enable(Some(n))];
        c.extend(unmasked.iter().map(|&v| vector(v, false)));
        c
    }

    fn apply(router: &mut Box<dyn MsiRouter>, changes: &[MsiChange]) {
        router.apply(changes).unwrap();
    }

    #[test]
    fn default_routes_match_kvm_irqchip_defaults() {
        let r = default_routes();
        // 16 GSIs with IOAPIC + PIC, 8 with IOAPIC only.
        assert_eq!(r.len(), 16 * 2 + 8);
        let ioapic = |gsi| Route::Irqchip {
            chip: KVM_IRQCHIP_IOAPIC,
            pin: gsi,
        };
        assert_eq!(r[0], (0, ioapic(0)));
        assert!(r.contains(&(
            3,
            Route::Irqchip {
                chip: KVM_IRQCHIP_PIC_MASTER,
                pin: 3
            }
        )));
        assert!(r.contains(&(
            12,
            Route::Irqchip {
                chip: KVM_IRQCHIP_PIC_SLAVE,
                pin: 4
            }
        )));
        assert!(r.contains(&(23, ioapic(23))));
        assert!(!r.iter().any(|(g, _)| *g >= 24));
    }

    #[test]
    fn table_always_keeps_defaults_and_adds_msi_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(30, MSG);
        msi.insert(24, MSG);
        let t = routing_table(&msi);
        assert_eq!(&t[..40], default_routes().as_slice());
        assert_eq!(&t[40..], &[(24, Route::Msi(MSG)), (30, Route::Msi(MSG))]);
    }

    #[test]
    fn kvm_entry_splits_the_msi_address() {
        let m = MsiMessage {
            address: 0x1_fee0_1000,
            data: 7,
        };
        let e = kvm_entry(40, Route::Msi(m));
        assert_eq!((e.gsi, e.type_), (40, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built with the msi variant.
        let msi = unsafe { e.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 7)
        );
    }

    #[test]
    fn msix_vectors_get_gsis_from_24_and_separate_eventfds() {
        let (_, routing) = setup();
        let v = vectors(&routing, MsiKind::Msix, 3, Holder::Router);
        assert_eq!(v.eventfds.len(), 3);
        let fds: Vec<i32> = v.eventfds.iter().map(|e| e.as_raw_fd()).collect();
        assert!(fds[0] != fds[1] && fds[1] != fds[2]);
        let mut other = vectors(&routing, MsiKind::Msi, 1, Holder::Router);
        apply(&mut other.router, &enable(1, &[0]));
        assert_eq!(
            routing.msi_routes().keys().copied().collect::<Vec<_>>(),
            [27]
        );
    }

    #[test]
    fn unmask_routes_then_assigns_and_mask_deassigns() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 2, Holder::Router);
        apply(&mut v.router, &enable(2, &[1]));
        let calls = chip.take();
        assert!(matches!(&calls[0], Call::Routes(t) if t.last() == Some(&(25, Route::Msi(MSG)))));
        assert_eq!(calls[1], Call::Assign(25));
        apply(&mut v.router, &[vector(1, true)]);
        // Same message: no table write, only the deassign.
        assert_eq!(chip.take(), vec![Call::Deassign(25)]);
        apply(&mut v.router, &[vector(1, false)]);
        assert_eq!(chip.take(), vec![Call::Assign(25)]);
    }

    #[test]
    fn update_while_disabled_routes_but_does_not_assign() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 1, Holder::Router);
        apply(&mut v.router, &[vector(0, false)]);
        assert!(!chip.take().iter().any(|c| matches!(c, Call::Assign(_))));
    }

    #[test]
    fn disable_deassigns_and_drops_routes_but_keeps_defaults() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 2, Holder::Router);
        apply(&mut v.router, &enable(2, &[0]));
        chip.take();
        apply(&mut v.router, &[MsiChange::Enable(None)]);
        let calls = chip.take();
        assert_eq!(calls[0], Call::Deassign(24));
        assert_eq!(calls[1], Call::Routes(default_routes()));
        assert!(routing.msi_routes().is_empty());
    }

    #[test]
    fn trigger_while_masked_is_held_in_the_eventfd() {
        let (_, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 1, Holder::Router);
        apply(&mut v.router, &[MsiChange::Enable(Some(1))]);
        v.router.trigger(0).unwrap();
        // The count is visible through VFIO's copy: both are the same eventfd.
        assert_eq!(v.eventfds[0].read().unwrap(), 1);
    }

    #[test]
    fn dropping_a_router_frees_its_gsis_and_routes() {
        let (_, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 2, Holder::Router);
        apply(&mut v.router, &enable(2, &[0]));
        drop(v);
        assert!(routing.msi_routes().is_empty());
        let again = vectors(&routing, MsiKind::Msi, 1, Holder::Router);
        let mut r = again.router;
        apply(&mut r, &[vector(0, false)]);
        assert_eq!(
            routing.msi_routes().keys().copied().collect::<Vec<_>>(),
            [24]
        );
    }

    #[test]
    fn function_mask_toggles_move_no_route_and_switch_only_unmasked_vectors() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 8, Holder::Router);
        let mut enable = vec![MsiChange::Enable(Some(8))];
        enable.extend((0..8).map(|i| vector(i, i >= 2)));
        apply(&mut v.router, &enable);
        let calls = chip.take();
        let tables = calls.iter().filter(|c| matches!(c, Call::Routes(_)));
        assert_eq!(tables.count(), 1, "one table write for the whole access");
        assert_eq!(calls.len(), 3);
        for _ in 0..1000 {
            apply(&mut v.router, &[MsiChange::FunctionMask(true)]);
            apply(&mut v.router, &[MsiChange::FunctionMask(false)]);
        }
        let calls = chip.take();
        assert!(!calls.iter().any(|c| matches!(c, Call::Routes(_))));
        // Vectors 0 and 1 are the only ones the guest unmasked.
        assert_eq!(calls.len(), 2 * 2 * 1000);
        assert_eq!(&calls[..2], &[Call::Deassign(24), Call::Deassign(25)]);
    }

    #[test]
    fn source_held_vectors_keep_their_irqfd_through_masks_at_2048_vectors() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 2048, Holder::Source);
        let mut enable = vec![MsiChange::Enable(Some(2048))];
        enable.extend((0..2048).map(|i| vector(i, false)));
        apply(&mut v.router, &enable);
        let calls = chip.take();
        assert_eq!(
            calls.len(),
            1 + 2048,
            "one table write, one irqfd per vector"
        );
        for _ in 0..1000 {
            apply(&mut v.router, &[MsiChange::FunctionMask(true)]);
            apply(&mut v.router, &[MsiChange::FunctionMask(false)]);
            apply(&mut v.router, &[vector(7, true)]);
            apply(&mut v.router, &[vector(7, false)]);
        }
        assert!(chip.take().is_empty(), "masks cost no KVM call");
        apply(&mut v.router, &[MsiChange::Enable(None)]);
        let calls = chip.take();
        assert_eq!(calls.len(), 2048 + 1, "every irqfd off, one table write");
    }

    #[test]
    fn source_held_vectors_get_their_irqfd_at_first_route_even_masked() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 2, Holder::Source);
        apply(&mut v.router, &[MsiChange::Enable(Some(2))]);
        assert!(chip.take().is_empty());
        apply(&mut v.router, &[vector(1, true)]);
        let calls = chip.take();
        assert!(matches!(&calls[0], Call::Routes(_)));
        assert_eq!(calls[1..], [Call::Assign(25)]);
    }

    #[test]
    fn deliver_writes_the_eventfd_after_the_irqfd_is_assigned() {
        let (chip, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 1, Holder::Router);
        apply(&mut v.router, &[MsiChange::Enable(Some(1))]);
        apply(&mut v.router, &[vector(0, false), MsiChange::Deliver(0)]);
        assert_eq!(chip.take().last(), Some(&Call::Assign(24)));
        assert_eq!(v.eventfds[0].read().unwrap(), 1);
    }

    #[test]
    fn an_interrupt_held_by_a_mask_shows_as_pending_and_stays_held() {
        let (_, routing) = setup();
        let mut v = vectors(&routing, MsiKind::Msix, 1, Holder::Router);
        apply(
            &mut v.router,
            &[MsiChange::Enable(Some(1)), vector(0, true)],
        );
        assert!(!v.router.is_pending(0));
        v.eventfds[0].write(1).unwrap();
        assert!(v.router.is_pending(0));
        assert!(v.router.is_pending(0), "reading it keeps it");
        assert_eq!(v.eventfds[0].read().unwrap(), 1);
    }

    #[test]
    fn intx_uses_a_resampling_irqfd_on_the_slot_gsi() {
        let (chip, routing) = setup();
        provider(&routing).intx(1).unwrap();
        // Root port slot 1, INTA -> GSI 17 (DSDT _PRT rotation).
        assert_eq!(chip.take(), vec![Call::Level(17)]);
    }
}
