//! Passing host PCI functions through to the guest: one layer under the VMM, entered
//! through [`Passthrough`] (kernel VFIO docs, vfio-glue's recipe in its crate header).
//!
//! Where things go is `resources`' [`Topology`]: the functions of one host device (same
//! domain:bus:slot) form one guest slot behind a root port of its own, in the order the
//! spec first names each device, functions in host function order.
//!
//! The life of the layer, split around guest RAM so that every host check runs before
//! anything is opened or allocated:
//! 1. [`check_host`] (by `strait validate`, and by `run` before anything starts);
//! 2. [`Passthrough::open`]: host checks again, the VFIO container, the KVM VFIO
//!    device, the device fds; before RAM;
//! 3. [`Passthrough::attach`] (`attach.rs`): prepare RAM's DMA mapping, take each
//!    function over, lay its BARs out and build the root ports; after RAM. The chunks
//!    of the mapping are mapped in the background (`ram_setup`), and each function's
//!    bus mastering waits for them;
//! 4. [`Passthrough::start`]: the BAR mapper (`bars.rs`, rules in `bar_rules.rs`) makes
//!    BARs live as the guest enables decode; the vCPUs call [`Passthrough::bars`];
//! 5. [`Passthrough::reset`] when the guest reboots in place: BARs dead, every function
//!    reset through VFIO and checked, its guest view at power-on, the root ports as
//!    planned; guest RAM stays DMA-mapped;
//! 6. [`Passthrough::shutdown`]: BAR slots and traps out, every function quiet and
//!    reset, all at once (one thread each: a reset waits 100 ms or more).

mod attach;
mod bar_rules;
mod bars;
mod release;

use std::sync::{Arc, Mutex};

use arch::x86_64::PciWindows;
use devices::pci::{Bdf, PciDevice, PciError, SharedPciDevice};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use resources::{lock, PciMap, PlanError, SlotRequest, Topology, TopologyError};
use vfio_glue::addr::same_slot;
use vfio_glue::host::probe_device;
use vfio_glue::{check_memlock, HostDevice, HostPaths, HostPciAddress, VfioBackend};
use vfio_glue::{Container, GuestDma, VfioPciDevice};

pub use attach::AttachParams;
pub use bar_rules::{BarWindows, ConfigEffects, Effect, Refusal};
pub use bars::BarMapper;

use crate::device_manager::PciFunctions;
use crate::io_buses::IoBuses;
use crate::pci_layout::RootPorts;
use crate::slots::{MemorySlots, SlotPool};
use crate::spec::HostSelector;

/// Failures passing devices through. Host-check variants keep vfio-glue's message,
/// which names the device and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error(transparent)]
    Vfio(#[from] vfio_glue::Error),
    #[error("cannot create the KVM VFIO device (is the kvm module built with VFIO support?)")]
    KvmVfioDevice(#[source] kvm_ioctls::Error),
    #[error("cannot read the IOMMU's IOVA ranges")]
    IovaRanges(#[source] std::io::Error),
    #[error("cannot place the passed-through devices' BARs")]
    PlaceBars(#[source] Box<PlanError>),
    #[error("passthrough: {0}")]
    Topology(#[source] TopologyError),
    #[error("cannot start the threads that release the devices at teardown")]
    ReleaseThreads(#[source] std::io::Error),
    #[error("cannot set up the MSI GSI pool")]
    GsiPool(#[source] resources::IdError),
    #[error(
        "p2p: {label}: BAR {bar} at {addr:#x}+{size:#x} lies outside the IOMMU's IOVA ranges \
         {iova:x?}, so peers cannot DMA into it; use less memory or fewer devices, or \
         \"p2p\": \"best-effort\" to pass it without peer-to-peer DMA"
    )]
    P2pOutsideIova {
        label: String,
        bar: u8,
        addr: u64,
        size: u64,
        iova: Vec<(u64, u64)>,
    },
    #[error("cannot set up root port {bdf}")]
    RootPort {
        bdf: Bdf,
        #[source]
        source: PciError,
    },
}

impl From<PlanError> for PassthroughError {
    fn from(e: PlanError) -> Self {
        PassthroughError::PlaceBars(Box::new(e))
    }
}

/// Every host check, in the order a user fixes them: per device (exists, bound to
/// vfio-pci, IOMMU group viable, /dev/vfio/N opens), then the memlock limit for pinning
/// `ram_bytes`. Opens nothing for good. Duplicates were refused with the spec.
pub fn check_host(
    paths: &HostPaths,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
) -> Result<Vec<HostDevice>, vfio_glue::Error> {
    let hosts = addrs
        .iter()
        .map(|a| probe_device(paths, *a))
        .collect::<Result<Vec<_>, _>>()?;
    if !addrs.is_empty() {
        check_memlock(ram_bytes)?;
    }
    Ok(hosts)
}

/// The host functions `hosts` name, in spec order: a function as given, a slot as
/// its functions from sysfs (every one on vfio-pci, else `SlotNotOnVfio` lists them).
pub fn expand_hosts(
    sysfs: &vfio_glue::sysfs::Sysfs,
    hosts: &[HostSelector],
) -> Result<Vec<HostPciAddress>, vfio_glue::Error> {
    Ok(expand_entries(sysfs, hosts)?.concat())
}

/// As [`expand_hosts`], the functions of each entry apart.
pub fn expand_entries(
    sysfs: &vfio_glue::sysfs::Sysfs,
    hosts: &[HostSelector],
) -> Result<Vec<Vec<HostPciAddress>>, vfio_glue::Error> {
    hosts
        .iter()
        .map(|h| match *h {
            HostSelector::Function(a) => Ok(vec![a]),
            HostSelector::Slot(s) => vfio_glue::host::slot_functions(sysfs, s),
        })
        .collect()
}

/// Each function of `entries` (per passthrough entry) with its entry's guest NUMA node.
pub fn function_nodes(
    entries: &[Vec<HostPciAddress>],
    node_of: impl Fn(usize) -> Option<u32>,
) -> Vec<Option<u32>> {
    entries
        .iter()
        .enumerate()
        .flat_map(|(i, fs)| std::iter::repeat_n(node_of(i), fs.len()))
        .collect()
}

/// The functions that get the GPUDirect P2P clique capability, with their ID: for each
/// entry of `spec` with a `clique`, its NVIDIA GPU functions (`CliqueNotGpu` when it
/// has none). Slots are expanded as [`expand_hosts`] does.
pub fn cliques(
    sysfs: &vfio_glue::sysfs::Sysfs,
    spec: &crate::spec::VmSpec,
) -> Result<Vec<(HostPciAddress, u8)>, vfio_glue::Error> {
    let mut out = Vec::new();
    for (p, sel) in spec.passthrough.iter().zip(spec.passthrough_hosts()) {
        let Some(clique) = p.clique else {
            continue;
        };
        let functions = expand_hosts(sysfs, &[sel])?;
        let gpus = vfio_glue::host::clique_functions(sysfs, &functions)?;
        out.extend(gpus.into_iter().map(|a| (a, clique)));
    }
    Ok(out)
}

/// The host functions of each guest slot, in the order of first mention, each slot's
/// functions in host function order; and the topology numbered for them.
pub fn plan_slots(
    addrs: &[HostPciAddress],
) -> Result<(Topology, Vec<Vec<HostPciAddress>>), TopologyError> {
    plan_slots_with(addrs, &[], &[])
}

/// As [`plan_slots`], each slot on the guest NUMA node of its first function in
/// `nodes` (per address; missing: none), with `extra` slots (the virtio devices')
/// numbered after the passed-through ones: one topology for every device of the guest.
pub fn plan_slots_with(
    addrs: &[HostPciAddress],
    nodes: &[Option<u32>],
    extra: &[SlotRequest],
) -> Result<(Topology, Vec<Vec<HostPciAddress>>), TopologyError> {
    let node_of = |a: &HostPciAddress| {
        let i = addrs.iter().position(|b| b == a)?;
        nodes.get(i).copied().flatten()
    };
    let mut groups: Vec<Vec<HostPciAddress>> = Vec::new();
    for a in addrs {
        match groups.iter_mut().find(|g| same_slot(&g[0], a)) {
            Some(g) => g.push(*a),
            None => groups.push(vec![*a]),
        }
    }
    for g in &mut groups {
        g.sort_by_key(|a| a.function());
    }
    let requests: Vec<SlotRequest> = groups
        .iter()
        .map(|g| SlotRequest {
            tag: g[0].to_string(),
            functions: u8::try_from(g.len()).unwrap_or(u8::MAX),
            node: g.iter().find_map(node_of),
        })
        .chain(extra.iter().cloned())
        .collect();
    Ok((Topology::new(&requests)?, groups))
}

/// Peer-to-peer DMA as attach decided it.
struct P2pPlan {
    /// Per function, in `Passthrough::functions` order: its BARs are DMA-mapped.
    on: Vec<bool>,
    /// The container's IOVA ranges (inclusive).
    iova: Vec<(u64, u64)>,
}

/// A function taken over and placed.
struct Function {
    /// `host as guest`, the prefix of this function's log lines.
    label: String,
    dev: Arc<Mutex<VfioPciDevice>>,
}

/// The passed-through devices of one VM, from opened to running.
pub struct Passthrough {
    container: Arc<Container>,
    topology: Topology,
    /// Host functions per guest slot, in [`Topology`] order.
    hosts: Vec<Vec<HostPciAddress>>,
    /// Opened device fds by host address, until [`Passthrough::attach`] takes them.
    backends: Vec<(HostPciAddress, VfioBackend)>,
    /// After attach: root ports, in topology order, and the functions.
    ports: RootPorts,
    functions: Vec<(Bdf, Function)>,
    acpi: Option<PciWindows>,
    /// After attach: where every slot's BARs went, the extra slots' included.
    map: Option<PciMap>,
    bar_windows: Option<BarWindows>,
    /// After attach, when peer-to-peer DMA is on: per function (in `functions` order)
    /// whether its BARs are DMA-mapped, and the IOVA ranges.
    p2p: Option<P2pPlan>,
    /// After start.
    bars: Option<Arc<BarMapper>>,
    /// After attach: guest RAM's DMA mapping (its chunks mapped by `ram_setup`).
    dma: Option<Arc<GuestDma>>,
    /// After start: the threads that release the functions side by side at teardown.
    release: Option<release::ReleasePool>,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl Passthrough {
    /// Check and open the devices `addrs` (on guest NUMA nodes `nodes`, per address)
    /// for a guest with `ram_bytes` of RAM; `None` when there are none. `extra` slots
    /// (virtio devices) join the same topology after the passed-through slots.
    pub fn open(
        vm: &VmFd,
        addrs: &[HostPciAddress],
        nodes: &[Option<u32>],
        ram_bytes: u64,
        extra: &[SlotRequest],
    ) -> Result<Option<Passthrough>, PassthroughError> {
        if addrs.is_empty() {
            return Ok(None);
        }
        let (topology, hosts) =
            plan_slots_with(addrs, nodes, extra).map_err(PassthroughError::Topology)?;
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .create_device(&mut dev)
            .map_err(PassthroughError::KvmVfioDevice)?;
        // Runs the host checks of `check_host` again before opening anything: the host
        // may have changed since `run` checked it.
        let opened = vfio_glue::open_devices(
            &crate::preopened::host_paths(),
            addrs,
            ram_bytes,
            Some(kvm_vfio),
            crate::preopened::take_vfio_fds(),
        )?;
        let backends = opened
            .devices
            .into_iter()
            .map(|(host, b)| (host.addr, b))
            .collect();
        Ok(Some(Passthrough {
            container: opened.container,
            topology,
            hosts,
            backends,
            ports: RootPorts::default(),
            functions: Vec::new(),
            acpi: None,
            map: None,
            bar_windows: None,
            p2p: None,
            bars: None,
            dma: None,
            release: None,
        }))
    }

    /// The placed topology (after attach), for the extra slots' devices.
    pub fn pci_map(&self) -> Option<&PciMap> {
        self.map.as_ref()
    }

    /// Index in the topology of the first extra slot: after the passed-through ones.
    pub fn first_extra_port(&self) -> usize {
        self.hosts.len()
    }

    /// The host bridge windows and bus range for the ACPI tables (after attach).
    pub fn acpi_windows(&self) -> Option<PciWindows> {
        self.acpi
    }

    /// The functions for the PCI root, each root port before what sits behind it, and
    /// the endpoints whose config writes `effects` hears about (in `functions` order).
    pub fn pci_functions(&self, effects: &Arc<ConfigEffects>) -> PciFunctions {
        let endpoints = self
            .functions
            .iter()
            .map(|(bdf, f)| (*bdf, f.dev.clone() as SharedPciDevice));
        PciFunctions {
            functions: self
                .ports
                .functions()
                .into_iter()
                .chain(endpoints)
                .collect(),
            effects: Some(effects.clone()),
            watched: self
                .functions
                .iter()
                .map(|(_, f)| f.dev.clone() as SharedPciDevice)
                .collect(),
            watched_ports: self.ports.shared(),
            root_buses: Vec::new(),
        }
    }

    /// Start tracking the BARs: they go live in KVM slots from `pool` and on `buses`
    /// as the guest enables decode (config-write effects queue in `effects`).
    pub fn start(
        &mut self,
        slots: Arc<dyn MemorySlots>,
        pool: SlotPool,
        buses: &IoBuses,
        effects: Arc<ConfigEffects>,
    ) -> Result<(), PassthroughError> {
        let threads = release::ReleasePool::start(self.functions.len())
            .map_err(PassthroughError::ReleaseThreads)?;
        self.release = Some(threads);
        let Some(windows) = self.bar_windows.clone() else {
            return Ok(());
        };
        let p2p = self.p2p.as_ref().map(|plan| bars::P2pDma {
            mapper: self.container.clone(),
            iova: plan
                .iova
                .iter()
                .map(|&(start, end)| vfio_glue::IovaRange { start, end })
                .collect(),
        });
        let params = bars::BarMapperParams {
            slots,
            pool,
            buses: buses.clone(),
            windows,
            effects,
            behind_ports: self.behind_ports(),
            ports: self.ports.ports(),
            p2p,
        };
        let on = |i: usize| {
            self.p2p
                .as_ref()
                .is_some_and(|p| p.on.get(i) == Some(&true))
        };
        let watched = self
            .functions
            .iter()
            .enumerate()
            .map(|(i, (_, f))| (f.label.clone(), f.dev.clone(), on(i)))
            .collect();
        self.bars = Some(Arc::new(BarMapper::new(params, watched)));
        Ok(())
    }

    /// For each passthrough root port (topology order), the indices in `functions` of
    /// the functions behind it.
    fn behind_ports(&self) -> Vec<Vec<usize>> {
        self.topology
            .ports
            .iter()
            .take(self.hosts.len())
            .map(|port| {
                (0..self.functions.len())
                    .filter(|&i| port.functions.contains(&self.functions[i].0))
                    .collect()
            })
            .collect()
    }

    /// A machine reset (reboot in place): every function reset and checked (the first
    /// that does not come back fails it), the root ports rebuilt as planned. Guest RAM
    /// stays DMA-mapped and the GSIs stay allocated.
    pub fn reset(&self) -> Result<(), PassthroughError> {
        match &self.bars {
            Some(bars) => bars.reset_all()?,
            None => {
                for (_, f) in &self.functions {
                    lock(&f.dev).reset()?;
                }
            }
        }
        self.ports.reset()
    }

    /// Guest RAM's DMA mapping (after attach), which the vCPUs wait for while a
    /// function holds its bus mastering back.
    pub fn dma(&self) -> Option<&Arc<GuestDma>> {
        self.dma.as_ref()
    }

    /// Every function, for releasing held bus mastering once RAM is DMA-mapped.
    pub fn function_devices(&self) -> Vec<Arc<Mutex<VfioPciDevice>>> {
        self.functions.iter().map(|(_, f)| f.dev.clone()).collect()
    }

    /// The BAR mapper the vCPUs apply config-write effects through (after start).
    pub fn bars(&self) -> Option<&Arc<BarMapper>> {
        self.bars.as_ref()
    }

    /// Each function as the control API reports it: host and guest address, IDs, BARs.
    pub fn device_views(&self) -> Vec<crate::api::routes::DeviceView> {
        self.functions
            .iter()
            .map(|(guest, f)| {
                let mut dev = lock(&f.dev);
                let ids = dev.config_read(0);
                let bars = dev
                    .bars()
                    .into_iter()
                    .map(|b| crate::api::routes::BarView {
                        index: b.index,
                        kind: format!("{:?}", b.kind),
                        addr: format!("{:#x}", b.addr),
                        size: b.size,
                    })
                    .collect();
                crate::api::routes::DeviceView {
                    host: dev.host_address().to_string(),
                    guest: guest.to_string(),
                    vendor_id: format!("{:#06x}", ids & 0xffff),
                    device_id: format!("{:#06x}", ids >> 16),
                    bars,
                }
            })
            .collect()
    }

    /// Teardown, once the vCPUs are gone: every function quiet (interrupts and bus
    /// mastering off), then all released side by side on the release threads, each
    /// ending in its reset ([`VfioPciDevice::release`]). The BARs' KVM slots are left
    /// to go with the VM: removing them one by one only cost time (about 0.4 s for
    /// three functions on the testbed) with no vCPU left to reach them. Guest RAM's
    /// DMA is unmapped when the last function lets it go, after every reset.
    pub fn shutdown(&self) {
        let devices = self.function_devices();
        for d in &devices {
            lock(d).quiesce_for_release();
        }
        match &self.release {
            Some(pool) => pool.release(&devices),
            None => devices.iter().for_each(|d| lock(d).release()),
        }
    }
}

#[cfg(test)]
mod tests;
