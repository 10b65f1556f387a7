//! The PCI side of a Strait VM, assembled the way the VMM does it (platform contract in
//! the project brief): host bridge 00:00.0, root port `i` at 00:(i+1).0 with secondary
//! bus i+1, the passed-through functions of port `i` at (i+1):00.f. Addresses come from
//! `resources` (`plan_mmio64`, then `place_bars` into `arch`'s windows) and are programmed
//! as firmware would: every BAR placed, every root port window opened around its BARs.
//!
//! The guest reaches config space only through the ECAM window on the MMIO bus and ports
//! 0xcf8/0xcfc on the port bus; the BAR spans vfio-glue traps (MSI-X table and PBA, small
//! BARs, I/O BARs, the ROM) sit on the same buses and end in `bar_read`/`bar_write`. The
//! effects of config writes (BAR moves, decode switches) are recorded for the tests, in
//! place of the device manager that would re-map.

use resources::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arch::x86_64::layout;
use devices::bus::{Bus, BusDevice, BusError};
use devices::pci::config_access::{ECAM_SIZE, PCI_CONFIG_ADDRESS_PORT};
use devices::pci::{
    BarKind, Bdf, ConfigWriteHandler, ConfigWriteResult, HostBridge, PciCf8, PciDevice, PciEcam,
    PciError, PciRoot, RootPort, RootPortConfig, SharedPciDevice, ROM_BAR_INDEX,
};
use resources::{
    place_bars, plan_mmio64, AddressAllocator, AllocError, BarRequest, PlanError, PortPlacement,
    PortRequest, Windows,
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

/// One function to pass through and where it goes.
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// Root port index: the function lands on bus `port + 1`.
    pub port: usize,
    pub function: u8,
    pub host: HostPciAddress,
    pub spec: FunctionSpec,
}

impl Passthrough {
    /// The guest address of the function.
    pub fn guest_bdf(&self) -> Bdf {
        Bdf::from_devfn(0, self.port as u8 + 1, self.function)
    }

    /// Whether its header must carry the multi-function bit: function 0 of a slot
    /// holding several functions.
    pub fn multifunction(&self, all: &[Passthrough]) -> bool {
        self.function == 0 && all.iter().any(|p| p.port == self.port && p.function != 0)
    }
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
    #[error("planning the 64-bit MMIO window")]
    PlanMmio64(#[source] Box<PlanError>),
    #[error("creating the {window} window allocator")]
    CreateWindow {
        window: &'static str,
        #[source]
        source: Box<AllocError>,
    },
    #[error("placing the BARs")]
    PlaceBars(#[source] Box<PlanError>),
    #[error("placing BAR {index} of {bdf}")]
    PlaceBar {
        bdf: Bdf,
        index: u8,
        #[source]
        source: Box<vfio_glue::Error>,
    },
    #[error("building or programming root port {port}")]
    RootPort {
        port: usize,
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

/// Where the planner put things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The 64-bit MMIO window, (start, size).
    pub mmio64: (u64, u64),
    /// Per root port, in port order.
    pub ports: Vec<PortPlacement>,
}

/// Effects of guest config writes, as the ECAM and CF8 handlers saw them.
pub type ConfigWrites = Arc<Mutex<Vec<(Bdf, ConfigWriteResult)>>>;

/// Functions behind each root port: (guest function number, device).
type Ports = Vec<Vec<(u8, Arc<Mutex<VfioPciDevice>>)>>;

/// A segment and the root ports in it, in port order.
type Segment = (PciRoot, Vec<Arc<Mutex<RootPort>>>);

/// The assembled PCI side of a VM.
pub struct Machine {
    /// Guest physical address space: ECAM and the trapped BAR spans.
    pub mmio: Bus,
    /// Guest port space: 0xcf8..=0xcff and the I/O BARs.
    pub pio: Bus,
    pub root: Arc<PciRoot>,
    pub plan: Plan,
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

/// The BAR requests of one port, and which (function, BAR index) each one is.
fn port_request(port: usize, functions: &[(u8, Arc<Mutex<VfioPciDevice>>)]) -> PortRequest {
    let mut bars = Vec::new();
    for (_, dev) in functions {
        let dev = lock(&dev);
        bars.extend(dev.bars().iter().map(|b| BarRequest {
            size: b.size,
            class: b.kind.into(),
        }));
    }
    PortRequest {
        tag: format!("root port {port}"),
        bars,
    }
}

fn allocator(window: &'static str, start: u64, len: u64) -> Result<AddressAllocator, SetupError> {
    // A zero-sized 64-bit window (no 64-bit BARs) is an empty allocator.
    AddressAllocator::with_size(start, len).map_err(|e| SetupError::CreateWindow {
        window,
        source: Box::new(e),
    })
}

/// `plan_mmio64`, then `place_bars` into the platform windows.
fn plan(cfg: &MachineConfig, requests: &[PortRequest]) -> Result<Plan, SetupError> {
    let ram_end = layout::ram_end(cfg.ram_size).0;
    let mmio64 = plan_mmio64(ram_end, requests, cfg.phys_bits, &cfg.iova)
        .map_err(|e| SetupError::PlanMmio64(Box::new(e)))?;
    let io_start = u64::from(layout::PCI_IO_START);
    let mut io = allocator("I/O", io_start, layout::PCI_IO_SIZE)?;
    let mut mmio32 = allocator("32-bit MMIO", layout::MMIO32_START.0, layout::MMIO32_SIZE)?;
    let mut m64 = allocator("64-bit MMIO", mmio64.0, mmio64.1)?;
    let windows = Windows {
        io: &mut io,
        mmio32: &mut mmio32,
        mmio64: &mut m64,
    };
    let ports = place_bars(requests, windows).map_err(|e| SetupError::PlaceBars(Box::new(e)))?;
    Ok(Plan { mmio64, ports })
}

/// Program every BAR of the port's functions with its planned address, in the order
/// `port_request` listed them.
fn place_port_bars(
    port: usize,
    functions: &[(u8, Arc<Mutex<VfioPciDevice>>)],
    placement: &PortPlacement,
) -> Result<(), SetupError> {
    let mut addrs = placement.bar_addrs.iter();
    for (function, dev) in functions {
        let mut dev = lock(&dev);
        let bdf = Bdf::from_devfn(0, port as u8 + 1, *function);
        for bar in dev.bars() {
            let gpa = addrs.next().copied().unwrap_or_default();
            dev.place_bar(bar.index, gpa)
                .map_err(|e| SetupError::PlaceBar {
                    bdf,
                    index: bar.index,
                    source: Box::new(e),
                })?;
        }
    }
    Ok(())
}

fn root_port(port: usize, placement: &PortPlacement) -> Result<RootPort, PciError> {
    let mut rp = RootPort::new(RootPortConfig::new(port as u8, port as u8 + 1))?;
    rp.set_io_window(placement.io.clone())?;
    rp.set_mem_window(placement.mem.clone())?;
    rp.set_prefetchable_window(placement.prefetchable.clone())?;
    Ok(rp)
}

fn port_bdf(port: usize) -> Bdf {
    Bdf::from_devfn(0, 0, (port as u8 + 1) << 3)
}

/// The segment: host bridge, one root port per placement, the functions behind them.
fn build_root(ports: &Ports, placements: &[PortPlacement]) -> Result<Segment, SetupError> {
    let mut root = PciRoot::new(0);
    let attach = |root: &mut PciRoot, bdf: Bdf, dev: SharedPciDevice| {
        root.add_device(bdf, dev)
            .map_err(|source| SetupError::Attach { bdf, source })
    };
    attach(
        &mut root,
        Bdf::default(),
        Arc::new(Mutex::new(HostBridge::new())),
    )?;
    let mut root_ports = Vec::new();
    for (port, placement) in placements.iter().enumerate() {
        let rp =
            root_port(port, placement).map_err(|source| SetupError::RootPort { port, source })?;
        let rp = Arc::new(Mutex::new(rp));
        attach(&mut root, port_bdf(port), rp.clone())?;
        root_ports.push(rp);
        for (function, dev) in &ports[port] {
            let bdf = Bdf::from_devfn(0, port as u8 + 1, *function);
            attach(&mut root, bdf, dev.clone())?;
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
    let guard = lock(&dev);
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
    /// description and whether its header needs the multi-function bit).
    pub fn build(
        cfg: &MachineConfig,
        list: &[Passthrough],
        make: &mut dyn FnMut(&Passthrough, bool) -> VfioPciDevice,
    ) -> Result<Machine, SetupError> {
        let nports = list.iter().map(|p| p.port + 1).max().unwrap_or(0);
        let mut ports: Ports = (0..nports).map(|_| Vec::new()).collect();
        let mut functions = BTreeMap::new();
        for p in list {
            let dev = Arc::new(Mutex::new(make(p, p.multifunction(list))));
            functions.insert(p.guest_bdf(), dev.clone());
            ports[p.port].push((p.function, dev));
        }
        let requests: Vec<PortRequest> = ports
            .iter()
            .enumerate()
            .map(|(i, f)| port_request(i, f))
            .collect();
        let plan = plan(cfg, &requests)?;
        for (i, (functions, placement)) in ports.iter().zip(&plan.ports).enumerate() {
            place_port_bars(i, functions, placement)?;
        }
        let (root, root_ports) = build_root(&ports, &plan.ports)?;
        let root = Arc::new(root);
        let writes = ConfigWrites::default();
        let (mut mmio, mut pio) = (Bus::new(), Bus::new());
        let ecam = PciEcam::new(root.clone(), Some(recording_handler(&writes)));
        let ecam_base = layout::PCI_ECAM_START.0;
        mmio.insert(Arc::new(Mutex::new(ecam)), ecam_base, ECAM_SIZE)
            .map_err(bus_error("ECAM"))?;
        let cf8 = PciCf8::new(root.clone(), Some(recording_handler(&writes)));
        pio.insert(Arc::new(Mutex::new(cf8)), PCI_CONFIG_ADDRESS_PORT, 8)
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

    /// Root port `i` (at 00:(i+1).0).
    pub fn port(&self, i: usize) -> Option<MutexGuard<'_, RootPort>> {
        let p = self.ports.get(i)?;
        Some(lock(&p))
    }

    /// The passed-through function the guest sees at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<MutexGuard<'_, VfioPciDevice>> {
        let f = self.functions.get(&bdf)?;
        Some(lock(&f))
    }

    /// Guest addresses of the root ports, in port order.
    pub fn port_bdfs(&self) -> Vec<Bdf> {
        (0..self.ports.len()).map(port_bdf).collect()
    }
}
