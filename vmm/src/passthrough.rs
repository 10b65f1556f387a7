//! Passing host PCI functions through to the guest, behind q35-like PCIe root ports
//! (BRIEF.md, "Platform contract", PCI topology; vfio-glue's recipe in its crate header).
//!
//! Topology: the functions of one host device (same domain:bus:slot) share one root
//! port; root port `i` is 00:(i+1).0 with secondary bus i+1, and its device's functions
//! are (i+1):00.f, numbered from 0 in host function order (function 0 must exist for the
//! guest to scan the slot). Ports follow the order the spec first names each device.
//!
//! The recipe, split around guest RAM so every host check runs before anything is
//! opened or allocated: [`check_host`] (used by `strait validate` and before `run`);
//! [`open`] (host checks again, container, KVM VFIO device, device fds) before RAM;
//! [`Opened::attach`] after RAM: DMA-map all RAM (IOVA = GPA), take each function
//! (reset, config space, BAR mmaps, interrupts), plan the 64-bit window from the BARs,
//! place every BAR and program each root port's bridge windows.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use arch::x86_64::layout;
use arch::x86_64::{AddrRange, PciWindows};
use devices::pci::{Bdf, PciDevice, PciError, RootPort, RootPortConfig, SharedPciDevice};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use resources::{
    place_bars, plan_mmio64, AddressAllocator, BarClass, BarRequest, PlanError, PortRequest,
    Windows,
};
use vfio_glue::addr::same_slot;
use vfio_glue::host::{check_no_duplicates, probe_device};
use vfio_glue::{
    check_memlock, DmaMapper, GuestDma, HostDevice, HostPaths, HostPciAddress, VfioBackend,
    VfioPciDevice, VfioPciParams,
};

use crate::bars::{BarMapper, BarMapperParams, BarWindows, ConfigEffects};
use crate::device_manager::{DeviceManager, PciFunctions};
use crate::error::ExitCode;
use crate::interrupts::{GsiRouting, KvmIrqProvider};
use crate::memory::GuestRam;
use crate::spec::VmSpec;
use crate::vm::PassthroughRuntime;

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
    #[error(
        "passthrough: {count} devices need more root ports than bus 0 has slots ({MAX_ROOT_PORTS})"
    )]
    TooManyDevices { count: usize },
    #[error("cannot set up the MSI GSI pool")]
    GsiPool(#[source] resources::IdError),
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

impl PassthroughError {
    /// The exit code: one per kind a user fixes differently (see `ExitCode`).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PassthroughError::Vfio(e) => vfio_exit_code(e),
            PassthroughError::PlaceBars(_) | PassthroughError::KvmVfioDevice(_) => ExitCode::Host,
            PassthroughError::TooManyDevices { .. } => ExitCode::Spec,
            PassthroughError::IovaRanges(_)
            | PassthroughError::GsiPool(_)
            | PassthroughError::RootPort { .. } => ExitCode::Fatal,
        }
    }
}

/// Exit code of a vfio-glue failure.
pub fn vfio_exit_code(e: &vfio_glue::Error) -> ExitCode {
    use vfio_glue::Error as E;
    match e {
        E::ParsePciAddress { .. } => ExitCode::PciAddress,
        E::DeviceMissing { .. } => ExitCode::DeviceMissing,
        E::BoundToOtherDriver { .. } | E::NotBound { .. } => ExitCode::DeviceDriver,
        E::GroupNotViable { .. } => ExitCode::GroupNotViable,
        E::DuplicateDevice { .. } => ExitCode::DuplicateDevice,
        E::NoPermission { .. } => ExitCode::VfioPermission,
        E::MemlockTooLow { .. } => ExitCode::Memlock,
        E::NoIommuGroup { .. }
        | E::NoGroupNode { .. }
        | E::GroupBusy { .. }
        | E::OpenGroupNode { .. }
        | E::ReadSysfs { .. }
        | E::OpenContainer(_)
        | E::OpenDevice { .. }
        | E::IommuInfo(_)
        | E::IovaOutOfRange { .. }
        | E::MapDma { .. } => ExitCode::Host,
        _ => ExitCode::Fatal,
    }
}

/// The spec's passthrough addresses, in order, duplicates kept (for the host checks to
/// report them).
pub fn spec_addresses(spec: &VmSpec) -> Result<Vec<HostPciAddress>, vfio_glue::Error> {
    spec.passthrough
        .iter()
        .map(|p| vfio_glue::parse_host_address(&p.host))
        .collect()
}

/// Every host check, in the order a user fixes them: duplicates, then per device
/// (exists, bound to vfio-pci, IOMMU group viable, /dev/vfio/N opens), then the memlock
/// limit for pinning `ram_bytes`. Opens nothing for good.
pub fn check_host(
    paths: &HostPaths,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
) -> Result<Vec<HostDevice>, vfio_glue::Error> {
    check_no_duplicates(addrs)?;
    let hosts = addrs
        .iter()
        .map(|a| probe_device(paths, *a))
        .collect::<Result<Vec<_>, _>>()?;
    if !addrs.is_empty() {
        check_memlock(ram_bytes)?;
    }
    Ok(hosts)
}

/// One passed-through function's place in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionPlan {
    pub host: HostPciAddress,
    pub guest: Bdf,
    /// Index in the spec's `passthrough` list.
    pub spec_index: usize,
    /// Function 0 of a slot holding several functions.
    pub multifunction: bool,
}

/// One root port and the functions of one host device behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Root port number `i`: the port is 00:(i+1).0, its secondary bus i+1.
    pub port: u8,
    pub functions: Vec<FunctionPlan>,
}

impl SlotPlan {
    /// The root port's own address.
    pub fn port_bdf(&self) -> Bdf {
        Bdf::from_devfn(0, 0, (self.port + 1) << 3)
    }

    /// The port's slot number on bus 0 (its INTx `_PRT` rotation).
    pub fn port_slot(&self) -> u8 {
        self.port + 1
    }
}

/// Root ports a guest can have: slots 1..=31 of bus 0.
pub const MAX_ROOT_PORTS: usize = 31;

/// Group `addrs` by host device into root-port slots, in the order of first mention.
/// Returns `None` beyond [`MAX_ROOT_PORTS`] devices.
pub fn plan_slots(addrs: &[HostPciAddress]) -> Option<Vec<SlotPlan>> {
    let mut groups: Vec<Vec<(usize, HostPciAddress)>> = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        match groups.iter_mut().find(|g| same_slot(&g[0].1, a)) {
            Some(g) => g.push((i, *a)),
            None => groups.push(vec![(i, *a)]),
        }
    }
    if groups.len() > MAX_ROOT_PORTS {
        return None;
    }
    let slots = (0u8..).zip(groups).map(|(port, mut g)| {
        g.sort_by_key(|(_, a)| a.function());
        let multi = g.len() > 1;
        let functions = (0u8..)
            .zip(g)
            .map(|(f, (spec_index, host))| FunctionPlan {
                host,
                guest: Bdf::from_devfn(0, port + 1, f),
                spec_index,
                multifunction: multi && f == 0,
            })
            .collect();
        SlotPlan { port, functions }
    });
    Some(slots.collect())
}

/// Devices opened through VFIO, before guest RAM exists.
pub struct Opened {
    container: Arc<vfio_glue::Container>,
    backends: Vec<Option<VfioBackend>>,
    slots: Vec<SlotPlan>,
}

/// Check and open the spec's devices (`addrs`) for a guest with `ram_bytes` of RAM.
pub fn open(
    vm: &VmFd,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
) -> Result<Option<Opened>, PassthroughError> {
    if addrs.is_empty() {
        return Ok(None);
    }
    let slots = plan_slots(addrs).ok_or(PassthroughError::TooManyDevices { count: addrs.len() })?;
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = vm
        .create_device(&mut dev)
        .map_err(PassthroughError::KvmVfioDevice)?;
    // Runs the host checks of `check_host` again before opening anything: the host may
    // have changed since `run` checked it.
    let paths = HostPaths::default();
    let opened = vfio_glue::open_devices(&paths, addrs, ram_bytes, Some(kvm_vfio))?;
    let backends = opened.devices.into_iter().map(|(_, b)| Some(b)).collect();
    Ok(Some(Opened {
        container: opened.container,
        backends,
        slots,
    }))
}

/// A function taken over and placed.
pub struct AttachedFunction {
    /// Root port number (`SlotPlan::port`).
    pub port: u8,
    pub guest: Bdf,
    /// `host as guest`, the prefix of this function's log lines.
    pub label: String,
    pub dev: Arc<Mutex<VfioPciDevice>>,
}

/// Everything the guest's PCI hierarchy needs from passthrough.
pub struct Attached {
    /// Root ports with their bus numbers and windows programmed.
    pub ports: Vec<(Bdf, SharedPciDevice)>,
    pub functions: Vec<AttachedFunction>,
    /// The host bridge windows and bus range for the ACPI tables.
    pub acpi: PciWindows,
    /// The same windows and RAM, for checking where the guest moves BARs.
    pub bar_windows: BarWindows,
}

impl Attached {
    /// The functions for the PCI root, each root port before what sits behind it, and
    /// the endpoints whose config writes `effects` hears about (in `functions` order).
    pub fn pci_functions(&self, effects: &Arc<ConfigEffects>) -> PciFunctions {
        let endpoints = self
            .functions
            .iter()
            .map(|f| (f.guest, f.dev.clone() as SharedPciDevice));
        let functions: Vec<(Bdf, SharedPciDevice)> =
            self.ports.iter().cloned().chain(endpoints).collect();
        let watched = self
            .functions
            .iter()
            .map(|f| f.dev.clone() as SharedPciDevice)
            .collect();
        PciFunctions {
            functions,
            effects: Some(effects.clone()),
            watched,
        }
    }

    /// What the running VM keeps: BAR mappings (in KVM slots after guest RAM's) and the
    /// functions to quiet at teardown.
    pub fn runtime(
        self,
        vm: Arc<VmFd>,
        ram: &GuestRam,
        devices: &DeviceManager,
        effects: Arc<ConfigEffects>,
    ) -> PassthroughRuntime {
        let params = BarMapperParams {
            slots: vm,
            first_slot: u32::try_from(ram.slots().count()).unwrap_or(u32::MAX),
            buses: devices.buses().clone(),
            windows: self.bar_windows,
            effects,
        };
        let watched = self
            .functions
            .iter()
            .map(|f| (f.label.clone(), f.dev.clone()))
            .collect();
        PassthroughRuntime {
            bars: Arc::new(BarMapper::new(params, watched)),
            functions: self.functions.into_iter().map(|f| f.dev).collect(),
        }
    }
}

/// What [`Opened::attach`] needs besides the opened devices.
pub struct AttachParams<'a> {
    pub ram: &'a GuestRam,
    pub ram_size: u64,
    pub routing: &'a Arc<GsiRouting>,
    /// Guest physical address width (CPUID 0x8000_0008).
    pub phys_bits: u8,
}

impl Opened {
    /// DMA-map guest RAM, take every function and place its BARs.
    pub fn attach(mut self, p: AttachParams<'_>) -> Result<Attached, PassthroughError> {
        let mapper: Arc<dyn DmaMapper> = self.container.clone();
        let dma = GuestDma::map(mapper, p.ram.memory())?;
        log::info!(
            "guest RAM DMA-mapped for passthrough ({} MiB)",
            p.ram_size >> 20
        );
        let mut functions = Vec::new();
        for slot in &self.slots {
            for f in &slot.functions {
                let Some(backend) = self.backends.get_mut(f.spec_index).and_then(Option::take)
                else {
                    continue;
                };
                let label = format!("{} as {}", f.host, f.guest);
                let mut irqs = KvmIrqProvider {
                    routing: p.routing.clone(),
                    port_slot: slot.port_slot(),
                    label: label.clone(),
                };
                let params = VfioPciParams {
                    addr: f.host,
                    multifunction: f.multifunction,
                };
                let dev = VfioPciDevice::new(Box::new(backend), dma.clone(), &mut irqs, params)?;
                functions.push(AttachedFunction {
                    port: slot.port,
                    guest: f.guest,
                    label,
                    dev: Arc::new(Mutex::new(dev)),
                });
            }
        }
        // The devices hold the mapping now; the last one to go unmaps it.
        drop(dma);
        let iova = self
            .container
            .iova_ranges()
            .map_err(PassthroughError::IovaRanges)?;
        let iova: Vec<(u64, u64)> = iova.iter().map(|r| (r.start, r.end)).collect();
        let layout = Placement {
            ram_size: p.ram_size,
            phys_bits: p.phys_bits,
            iova: &iova,
        };
        let (ports, mmio64) = layout.place(&self.slots, &functions)?;
        Ok(Attached {
            ports,
            functions,
            acpi: PciWindows {
                bus_end: u8::try_from(self.slots.len()).unwrap_or(u8::MAX),
                ..PciWindows::platform(AddrRange {
                    base: mmio64.start,
                    size: mmio64.end - mmio64.start,
                })
            },
            bar_windows: bar_windows(p.ram_size, mmio64),
        })
    }
}

/// The windows BARs may live in and the RAM they may not cover.
pub fn bar_windows(ram_size: u64, mmio64: Range<u64>) -> BarWindows {
    let mmio32 = layout::MMIO32_START.0;
    BarWindows {
        ram: layout::ram_regions(ram_size)
            .into_iter()
            .map(|(start, len)| start.0..start.0 + len)
            .collect(),
        io: u64::from(layout::PCI_IO_START)..u64::from(layout::PCI_IO_START) + layout::PCI_IO_SIZE,
        mmio32: mmio32..mmio32 + layout::MMIO32_SIZE,
        mmio64,
    }
}

/// Inputs of BAR placement.
struct Placement<'a> {
    ram_size: u64,
    phys_bits: u8,
    /// Inclusive IOVA ranges of the container.
    iova: &'a [(u64, u64)],
}

/// Root ports by address.
type PciPorts = Vec<(Bdf, SharedPciDevice)>;

/// (function index, BAR index) of each BAR of a port request, in request order.
type BarKeys = Vec<(usize, u8)>;

fn port_requests(
    slots: &[SlotPlan],
    functions: &[AttachedFunction],
) -> Vec<(PortRequest, BarKeys)> {
    slots
        .iter()
        .map(|slot| {
            let mut bars = Vec::new();
            let mut keys = Vec::new();
            let behind = functions
                .iter()
                .enumerate()
                .filter(|(_, f)| f.port == slot.port);
            for (fi, f) in behind {
                for b in f.dev.lock().unwrap_or_else(|e| e.into_inner()).bars() {
                    bars.push(BarRequest {
                        size: b.size,
                        class: BarClass::from(b.kind),
                    });
                    keys.push((fi, b.index));
                }
            }
            let host = slot
                .functions
                .first()
                .map(|f| f.host.to_string())
                .unwrap_or_default();
            let tag = format!("root port {} ({host})", slot.port_bdf());
            (PortRequest { tag, bars }, keys)
        })
        .collect()
}

impl Placement<'_> {
    /// Plan the 64-bit window, place every BAR, build the root ports with their windows.
    fn place(
        &self,
        slots: &[SlotPlan],
        functions: &[AttachedFunction],
    ) -> Result<(PciPorts, Range<u64>), PassthroughError> {
        let reqs = port_requests(slots, functions);
        let ports: Vec<PortRequest> = reqs.iter().map(|(r, _)| r.clone()).collect();
        let ram_end = layout::ram_end(self.ram_size).0;
        let (start, size) = plan_mmio64(ram_end, &ports, self.phys_bits, self.iova)?;
        log::info!(
            "64-bit PCI window {start:#x}+{size:#x} (guest physical bits {}, IOVA ranges {:x?})",
            self.phys_bits,
            self.iova
        );
        let alloc = |w, lo: u64, hi: u64| {
            AddressAllocator::new(lo, hi)
                .map_err(|source| PassthroughError::from(PlanError::Allocate { window: w, source }))
        };
        let io_start = u64::from(layout::PCI_IO_START);
        let mut io = alloc(
            resources::Window::Io,
            io_start,
            io_start + layout::PCI_IO_SIZE - 1,
        )?;
        let m32 = layout::MMIO32_START.0;
        let mut mmio32 = alloc(
            resources::Window::Mmio32,
            m32,
            m32 + layout::MMIO32_SIZE - 1,
        )?;
        let mut mmio64 = alloc(resources::Window::Mmio64, start, start + size.max(1) - 1)?;
        let windows = Windows {
            io: &mut io,
            mmio32: &mut mmio32,
            mmio64: &mut mmio64,
        };
        let placed = place_bars(&ports, windows)?;
        let mut root_ports = Vec::new();
        for ((slot, (_, keys)), placement) in slots.iter().zip(&reqs).zip(&placed) {
            for (&(fi, index), &addr) in keys.iter().zip(&placement.bar_addrs) {
                let Some(f) = functions.get(fi) else { continue };
                f.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .place_bar(index, addr)?;
                log::info!("{}: BAR {index} at {addr:#x}", f.label);
            }
            let bdf = slot.port_bdf();
            let err = |source| PassthroughError::RootPort { bdf, source };
            let mut port =
                RootPort::new(RootPortConfig::new(slot.port, slot.port + 1)).map_err(err)?;
            port.set_io_window(placement.io.clone()).map_err(err)?;
            port.set_mem_window(placement.mem.clone()).map_err(err)?;
            port.set_prefetchable_window(placement.prefetchable.clone())
                .map_err(err)?;
            root_ports.push((bdf, Arc::new(Mutex::new(port)) as SharedPciDevice));
        }
        Ok((root_ports, start..start + size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> HostPciAddress {
        s.parse().unwrap()
    }

    fn guests(slots: &[SlotPlan]) -> Vec<Vec<(String, String, usize, bool)>> {
        slots
            .iter()
            .map(|s| {
                s.functions
                    .iter()
                    .map(|f| {
                        let (h, g) = (f.host.to_string(), f.guest.to_string());
                        (h, g, f.spec_index, f.multifunction)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn separate_devices_get_one_root_port_each() {
        let slots = plan_slots(&[a("00:03.0"), a("00:04.0"), a("00:05.0")]).unwrap();
        assert_eq!(slots.len(), 3);
        let ports: Vec<String> = slots.iter().map(|s| s.port_bdf().to_string()).collect();
        assert_eq!(ports, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
        assert_eq!(
            guests(&slots)[2],
            [("0000:00:05.0".into(), "0000:03:00.0".into(), 2, false)]
        );
        assert_eq!(slots[1].port_slot(), 2);
    }

    #[test]
    fn functions_of_one_device_share_a_port_in_function_order() {
        // A GPU's audio function listed first, another device in between.
        let slots = plan_slots(&[a("01:00.1"), a("02:00.0"), a("01:00.0")]).unwrap();
        let g = guests(&slots);
        assert_eq!(
            g[0],
            [
                ("0000:01:00.0".into(), "0000:01:00.0".into(), 2, true),
                ("0000:01:00.1".into(), "0000:01:00.1".into(), 0, false),
            ]
        );
        assert_eq!(
            g[1],
            [("0000:02:00.0".into(), "0000:02:00.0".into(), 1, false)]
        );
    }

    #[test]
    fn a_lone_function_becomes_function_0() {
        let slots = plan_slots(&[a("01:00.3")]).unwrap();
        assert_eq!(slots[0].functions[0].guest.to_string(), "0000:01:00.0");
        assert!(!slots[0].functions[0].multifunction);
    }

    #[test]
    fn same_bus_and_slot_on_another_domain_is_another_device() {
        let slots = plan_slots(&[a("0000:01:00.0"), a("0001:01:00.1")]).unwrap();
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn more_devices_than_bus_0_slots_is_rejected() {
        let many: Vec<HostPciAddress> = (0..32u8)
            .map(|d| Bdf::new(0, d + 1, 0, 0).unwrap())
            .collect();
        assert!(plan_slots(&many[..31]).is_some());
        assert!(plan_slots(&many).is_none());
    }

    #[test]
    fn bar_windows_follow_the_platform_layout() {
        let w = bar_windows(4 << 30, 8 << 30..16 << 30);
        assert_eq!(w.ram, vec![0..3 << 30, 4 << 30..5 << 30]);
        assert_eq!(w.io, 0x1000..0x1_0000);
        assert_eq!(w.mmio32, 0xc000_0000..0xe000_0000);
        assert_eq!(w.mmio64, 8 << 30..16 << 30);
    }

    #[test]
    fn spec_addresses_keep_duplicates_for_the_host_checks() {
        let mut spec = crate::spec::VmSpec::parse(
            r#"{"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "/k"}}"#,
        )
        .unwrap();
        for h in ["0000:01:00.0", "01:00.0"] {
            spec.passthrough
                .push(crate::spec::PassthroughSpec { host: h.into() });
        }
        let addrs = spec_addresses(&spec).unwrap();
        assert_eq!(addrs, [a("01:00.0"), a("01:00.0")]);
        let err = check_host(&HostPaths::default(), &addrs, 1 << 26).unwrap_err();
        assert_eq!(vfio_exit_code(&err), ExitCode::DuplicateDevice);
    }

    #[test]
    fn host_problems_map_to_host_and_internal_ones_to_fatal() {
        let e = PassthroughError::Vfio(vfio_glue::Error::NoIommuGroup { addr: a("01:00.0") });
        assert_eq!(e.exit_code(), ExitCode::Host);
        let e = PassthroughError::Vfio(vfio_glue::Error::Reset {
            addr: a("01:00.0"),
            source: std::io::Error::other("x"),
        });
        assert_eq!(e.exit_code(), ExitCode::Fatal);
        let e = PassthroughError::TooManyDevices { count: 40 };
        assert_eq!(e.exit_code(), ExitCode::Spec);
    }
}
