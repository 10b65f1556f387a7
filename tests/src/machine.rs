//! The PCI side of a Strait VM, assembled from the same topology plan the VMM builds
//! from (`resources::Topology`: numbering, then placement inside `arch`'s windows) and
//! programmed as firmware would: every BAR placed, every root port window opened around
//! its BARs (`RootPort::for_port`). Nothing here restates where a port or function sits;
//! the tests' expectations of concrete addresses are what catch a change of the rule.
//!
//! The guest reaches config space only through the ECAM window on the MMIO bus and ports
//! 0xcf8/0xcfc on the port bus; the BAR spans vfio-glue traps (MSI-X table and PBA, small
//! BARs, I/O BARs, the ROM) sit on the same buses and end in `bar_read`/`bar_write`. The
//! effects of config writes (BAR moves, decode switches) are recorded for the tests, in
//! place of the device manager that would re-map.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arch::x86_64::layout;
use devices::bus::{Bus, BusDevice, BusError};
use devices::pci::config_access::CF8_PORTS_LEN;
use devices::pci::{
    BarKind, Bdf, ConfigWriteHandler, ConfigWriteResult, HostBridge, PciCf8, PciDevice, PciEcam,
    PciError, PciRoot, RootPort, SharedPciDevice, ROM_BAR_INDEX,
};
use resources::{
    lock, BarRequest, FunctionBar, PciMap, PlanError, PortMap, SlotRequest, Topology,
    TopologyError, HOST_BRIDGE,
};
use vfio_glue::{HostPciAddress, VfioPciDevice};

use crate::function::{self, FunctionSpec};

/// Guest physical address width and IOVA ranges of the nested testbed (its emulated
/// Intel IOMMU translates 39 bits and reserves the MSI window at 0xfee00000).
pub const TESTBED_PHYS_BITS: u8 = 39;
pub const TESTBED_IOVA: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

/// What the VM looks like from the host's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub ram_size: u64,
    pub phys_bits: u8,
    /// VFIO's IOVA ranges, inclusive.
    pub iova: Vec<(u64, u64)>,
}

impl MachineConfig {
    /// `ram_size` bytes of RAM on the nested testbed.
    pub fn testbed(ram_size: u64) -> Self {
        MachineConfig {
            ram_size,
            phys_bits: TESTBED_PHYS_BITS,
            iova: TESTBED_IOVA.to_vec(),
        }
    }
}

/// One function to pass through: the `function`-th function of the `port`-th device.
/// Where it lands in the guest is the topology plan's to say ([`Machine::build`]).
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// Index of the device (guest slot) in request order.
    pub port: usize,
    /// Index of the function within its device.
    pub function: u8,
    pub host: HostPciAddress,
    pub spec: FunctionSpec,
}

/// The slot requests of `list`: one per device, as many functions as it lists.
pub fn slot_requests(list: &[Passthrough]) -> Vec<SlotRequest> {
    let nports = list.iter().map(|p| p.port + 1).max().unwrap_or(0);
    (0..nports)
        .map(|port| SlotRequest {
            tag: format!("device {port}"),
            functions: list
                .iter()
                .filter(|p| p.port == port)
                .count()
                .try_into()
                .unwrap_or(u8::MAX),
            node: None,
        })
        .collect()
}

fn host(s: &str) -> HostPciAddress {
    // Literals of this module, all well-formed.
    s.parse().unwrap_or_default()
}

/// The VM the integration tests boot (in spirit): an NVMe controller behind root port 0,
/// the GPU (function 0) and its HDMI audio (function 1) behind root port 1.
pub fn standard_passthrough() -> Vec<Passthrough> {
    vec![
        Passthrough {
            port: 0,
            function: 0,
            host: host("0000:3b:00.0"),
            spec: function::nvme(),
        },
        Passthrough {
            port: 1,
            function: 0,
            host: host("0000:65:00.0"),
            spec: function::gpu(),
        },
        Passthrough {
            port: 1,
            function: 1,
            host: host("0000:65:00.1"),
            spec: function::hdmi_audio(),
        },
    ]
}

/// Why the machine could not be assembled (a fixture or planning failure). The big
/// sources are boxed: `PlanError` and `vfio_glue::Error` exceed 128 bytes.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("numbering the topology")]
    Topology(#[source] TopologyError),
    #[error("placing the BARs")]
    PlaceBars(#[source] Box<PlanError>),
    #[error("placing BAR {index} of {bdf}")]
    PlaceBar {
        bdf: Bdf,
        index: u8,
        #[source]
        source: Box<vfio_glue::Error>,
    },
    #[error("building or programming root port {bdf}")]
    RootPort {
        bdf: Bdf,
        #[source]
        source: PciError,
    },
    #[error("attaching {bdf}")]
    Attach {
        bdf: Bdf,
        #[source]
        source: PciError,
    },
    #[error("mapping {what} on a bus")]
    MapOnBus {
        what: String,
        #[source]
        source: BusError,
    },
}

/// A segment and the root ports in it, in topology order.
type Segment = (PciRoot, Vec<Arc<Mutex<RootPort>>>);

/// Effects of guest config writes, as the ECAM and CF8 handlers saw them.
pub type ConfigWrites = Arc<Mutex<Vec<(Bdf, ConfigWriteResult)>>>;

/// The assembled PCI side of a VM.
pub struct Machine {
    /// Guest physical address space: ECAM and the trapped BAR spans.
    pub mmio: Bus,
    /// Guest port space: 0xcf8..=0xcff and the I/O BARs.
    pub pio: Bus,
    pub root: Arc<PciRoot>,
    /// The topology plan, numbered and placed, as the VMM makes it.
    pub plan: PciMap,
    ports: Vec<Arc<Mutex<RootPort>>>,
    functions: BTreeMap<Bdf, Arc<Mutex<VfioPciDevice>>>,
    writes: ConfigWrites,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("root", &self.root)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Each port's BARs, in the order its functions report them.
fn function_bars(
    topology: &Topology,
    functions: &BTreeMap<Bdf, Arc<Mutex<VfioPciDevice>>>,
) -> Vec<Vec<FunctionBar>> {
    topology
        .ports
        .iter()
        .map(|port| {
            let mut bars = Vec::new();
            for (f, bdf) in (0u8..).zip(&port.functions) {
                let Some(dev) = functions.get(bdf) else {
                    continue;
                };
                bars.extend(lock(dev).bars().iter().map(|b| FunctionBar {
                    function: f,
                    index: b.index,
                    request: BarRequest {
                        size: b.size,
                        class: b.kind.into(),
                    },
                }));
            }
            bars
        })
        .collect()
}

/// Program every BAR with its planned address.
fn place_port_bars(
    port: &PortMap,
    functions: &BTreeMap<Bdf, Arc<Mutex<VfioPciDevice>>>,
) -> Result<(), SetupError> {
    for bar in &port.bars {
        let Some(dev) = functions.get(&bar.function) else {
            continue;
        };
        lock(dev)
            .place_bar(bar.index, bar.addr)
            .map_err(|e| SetupError::PlaceBar {
                bdf: bar.function,
                index: bar.index,
                source: Box::new(e),
            })?;
    }
    Ok(())
}

/// The segment: host bridge, one root port per placed port, the functions behind them.
fn build_root(
    plan: &PciMap,
    functions: &BTreeMap<Bdf, Arc<Mutex<VfioPciDevice>>>,
) -> Result<Segment, SetupError> {
    let mut root = PciRoot::new(0);
    let attach = |root: &mut PciRoot, bdf: Bdf, dev: SharedPciDevice| {
        root.add_device(bdf, dev)
            .map_err(|source| SetupError::Attach { bdf, source })
    };
    attach(
        &mut root,
        HOST_BRIDGE,
        Arc::new(Mutex::new(HostBridge::new())),
    )?;
    let mut root_ports = Vec::new();
    for port in &plan.ports {
        let bdf = port.slot.bdf;
        let rp = RootPort::for_port(port, None)
            .map_err(|source| SetupError::RootPort { bdf, source })?;
        let rp = Arc::new(Mutex::new(rp));
        attach(&mut root, bdf, rp.clone())?;
        root_ports.push(rp);
        for f in &port.slot.functions {
            if let Some(dev) = functions.get(f) {
                attach(&mut root, *f, dev.clone())?;
            }
        }
    }
    Ok((root, root_ports))
}

/// A trapped span of a BAR on a bus: accesses go to the function's BAR handlers.
struct BarSpan {
    dev: SharedPciDevice,
    index: u8,
    /// Offset of the span inside the BAR.
    offset: u64,
}

impl BusDevice for BarSpan {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.dev).bar_read(self.index, self.offset + offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.dev).bar_write(self.index, self.offset + offset, data);
    }
}

/// Put the spans of `dev`'s BARs that trap on the buses, at their planned addresses.
fn map_trapped(
    mmio: &mut Bus,
    pio: &mut Bus,
    bdf: Bdf,
    dev: &Arc<Mutex<VfioPciDevice>>,
) -> Result<(), SetupError> {
    let guard = lock(dev);
    let plans = guard.bar_plans();
    let mut spans = Vec::new();
    for bar in guard.bars() {
        let whole = (0, bar.size);
        match (bar.index, bar.kind) {
            (ROM_BAR_INDEX, _) | (_, BarKind::Io) => spans.push((bar, whole)),
            _ => {
                let plan = plans.iter().find(|p| p.index == bar.index);
                let trapped = plan.map(|p| p.trapped.clone()).unwrap_or_default();
                spans.extend(trapped.iter().map(|s| (bar, (s.offset, s.size))));
            }
        }
    }
    drop(guard);
    for (bar, (offset, size)) in spans {
        let span = BarSpan {
            dev: dev.clone(),
            index: bar.index,
            offset,
        };
        let bus = if bar.kind == BarKind::Io {
            &mut *pio
        } else {
            &mut *mmio
        };
        bus.insert(Arc::new(Mutex::new(span)), bar.addr + offset, size)
            .map_err(|source| SetupError::MapOnBus {
                what: format!("{bdf} BAR {} span {offset:#x}", bar.index),
                source,
            })?;
    }
    Ok(())
}

fn recording_handler(writes: &ConfigWrites) -> ConfigWriteHandler {
    let writes = writes.clone();
    Box::new(move |bdf, result| {
        lock(&writes).push((bdf, result));
    })
}

fn bus_error(what: &str) -> impl FnOnce(BusError) -> SetupError + '_ {
    move |source| SetupError::MapOnBus {
        what: what.to_string(),
        source,
    }
}

impl Machine {
    /// Assemble the VM around `list`, building each function with `make` (which gets the
    /// description, its guest address and whether its header needs the multi-function
    /// bit). Numbering and addresses come from `resources`' topology plan, the code the
    /// VMM builds from.
    pub fn build(
        cfg: &MachineConfig,
        list: &[Passthrough],
        make: &mut dyn FnMut(&Passthrough, Bdf, bool) -> VfioPciDevice,
    ) -> Result<Machine, SetupError> {
        let topology = Topology::new(&slot_requests(list)).map_err(SetupError::Topology)?;
        let mut functions = BTreeMap::new();
        for p in list {
            let Some(port) = topology.ports.get(p.port) else {
                continue;
            };
            let Some(&bdf) = port.functions.get(usize::from(p.function)) else {
                continue;
            };
            let multifunction = port.multifunction() && p.function == 0;
            functions.insert(bdf, Arc::new(Mutex::new(make(p, bdf, multifunction))));
        }
        let platform = layout::pci_platform(cfg.ram_size, cfg.phys_bits, cfg.iova.clone());
        let plan = topology
            .place(&platform, &function_bars(&topology, &functions))
            .map_err(|e| SetupError::PlaceBars(Box::new(e)))?;
        for port in &plan.ports {
            place_port_bars(port, &functions)?;
        }
        let (root, root_ports) = build_root(&plan, &functions)?;
        let root = Arc::new(root);
        let writes = ConfigWrites::default();
        let (mut mmio, mut pio) = (Bus::new(), Bus::new());
        let ecam = PciEcam::new(root.clone(), Some(recording_handler(&writes)));
        let ecam_base = layout::PCI_ECAM_START.0;
        mmio.insert(Arc::new(Mutex::new(ecam)), ecam_base, layout::PCI_ECAM_SIZE)
            .map_err(bus_error("ECAM"))?;
        let cf8 = PciCf8::new(root.clone(), Some(recording_handler(&writes)));
        let cf8_port = u64::from(layout::PCI_CONFIG_ADDRESS_PORT);
        pio.insert(Arc::new(Mutex::new(cf8)), cf8_port, CF8_PORTS_LEN)
            .map_err(bus_error("CF8"))?;
        for (bdf, dev) in &functions {
            map_trapped(&mut mmio, &mut pio, *bdf, dev)?;
        }
        Ok(Machine {
            mmio,
            pio,
            root,
            plan,
            ports: root_ports,
            functions,
            writes,
        })
    }

    /// Config write effects reported since the last call.
    pub fn take_config_writes(&self) -> Vec<(Bdf, ConfigWriteResult)> {
        std::mem::take(&mut *lock(&self.writes))
    }

    /// Root port `i`, in topology order.
    pub fn port(&self, i: usize) -> Option<MutexGuard<'_, RootPort>> {
        Some(lock(self.ports.get(i)?))
    }

    /// The passed-through function the guest sees at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<MutexGuard<'_, VfioPciDevice>> {
        Some(lock(self.functions.get(&bdf)?))
    }

    /// Guest addresses of the root ports, in topology order.
    pub fn port_bdfs(&self) -> Vec<Bdf> {
        self.plan.ports.iter().map(|p| p.slot.bdf).collect()
    }
}
