//! `strait plan SPEC.json`: the guest that `run` would build, before anything starts.
//! It needs no KVM, opens no VFIO device and changes nothing; it reads the spec and
//! sysfs, and lays the guest out with the code `run` uses: the passthrough layer's slot
//! grouping, `vfio-glue`'s rule for the BARs a device shows the guest
//! ([`vfio_glue::pci::guest_bars`]) and for the spans that trap
//! ([`vfio_glue::bars::plan_bar`]), and `resources`' `Topology` inside `arch`'s
//! windows.
//!
//! What it reads instead of asking the kernel:
//! - BAR sizes: each function's sysfs `resource` (VFIO's regions report the same sizes);
//!   BAR kinds: the header in sysfs `config` (the first 64 bytes, readable by anyone);
//! - MSI-X table and PBA: the capability in `config`, which only root reads in full;
//!   without it the trapped pages are reported unknown, the addresses stay right;
//! - physical address bits: /proc/cpuinfo (KVM reports the host's to the guest);
//! - IOVA ranges: VFIO's rule, the IOMMU's address width (Intel: the MGAW field of
//!   `intel-iommu/cap`) minus the groups' `reserved_regions` except direct-relaxable
//!   ones. An AMD IOMMU's width is not in sysfs: the plan then assumes 48 bits and says so.

use std::fmt::{self, Write as _};

use arch::x86_64::layout;
use resources::{BarClass, BarRequest, FunctionBar, PciMap, Size};
use serde_json::{json, Value};
use vfio_glue::bars::plan_bar;
use vfio_glue::device::{RegionInfo, Span, ROM_REGION};
use vfio_glue::pci::{guest_bars, msix_holes, msix_of, GuestBar};
use vfio_glue::HostPciAddress;

use crate::check::HostRoot;
use crate::passthrough::{function_nodes, plan_slots_with};
use crate::spec::{HostSelector, VmSpec};

/// Why the plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Numa(#[from] crate::numa::NumaError),
    #[error("{addr}: no such PCI device ({path} is missing); `lspci -D` lists the host's devices")]
    DeviceMissing { addr: HostPciAddress, path: String },
    #[error("cannot read the host's physical address bits from /proc/cpuinfo")]
    PhysBits,
    #[error("passthrough: {0}")]
    Topology(#[source] resources::TopologyError),
    #[error("cannot place the passed-through devices' BARs")]
    Place(#[source] Box<resources::PlanError>),
}

/// Bits the IOMMU is assumed to translate when sysfs does not say.
const ASSUMED_IOMMU_BITS: u8 = 48;

/// One function of the plan: where it comes from and what the guest sees.
#[derive(Debug, Clone)]
struct FunctionView {
    guest: resources::Bdf,
    host: HostPciAddress,
    bars: Vec<GuestBar>,
    /// Trapped spans per BAR index; `None` when the MSI-X capability was unreadable.
    trapped: Option<Vec<(u8, Vec<Span>)>>,
}

/// What `run` would build.
#[derive(Debug, Clone)]
pub struct VmPlan {
    vcpus: u32,
    ram: Vec<(u64, u64)>,
    phys_bits: u8,
    iova: Vec<(u64, u64)>,
    /// How the IOVA ranges were found.
    iova_source: String,
    map: PciMap,
    functions: Vec<FunctionView>,
    /// Per root port, the host link it mirrors (`None`: the default Gen3 x16).
    links: Vec<Option<devices::pci::PortLink>>,
    numa: Vec<NumaView>,
}

/// A guest NUMA node as the plan shows it: vCPUs, RAM ranges (base, length), host node.
type NumaView = (Vec<u32>, Vec<(u64, u64)>, u32);

/// Plan `spec` (loaded and validated) on the host seen from `root`.
pub fn plan(spec: &VmSpec, root: &HostRoot) -> Result<VmPlan, PlanError> {
    let entries = expand_slots(root, spec)?;
    let hosts = entries.concat();
    let nodes = crate::numa::HostNodes::new(root.path("sys"));
    let numa_plan = crate::numa::plan(spec, &nodes, &crate::numa::device_nodes(spec, &nodes))?;
    let slot_nodes = function_nodes(&entries, |i| numa_plan.as_ref()?.entry_node(i));
    let (topology, groups) =
        plan_slots_with(&hosts, &slot_nodes, &[]).map_err(PlanError::Topology)?;
    let cpuinfo = root.read("proc/cpuinfo").unwrap_or_default();
    let phys_bits = crate::check::phys_bits(&cpuinfo).ok_or(PlanError::PhysBits)?;
    let mut functions = Vec::new();
    let mut bars = Vec::new();
    for (port, hosts) in topology.ports.iter().zip(&groups) {
        let mut port_bars = Vec::new();
        for ((f, guest), host) in (0u8..).zip(&port.functions).zip(hosts) {
            let view = read_function(root, *guest, *host)?;
            port_bars.extend(view.bars.iter().map(|b| FunctionBar {
                function: f,
                index: b.index,
                request: BarRequest {
                    size: b.size,
                    class: BarClass::from(b.kind),
                },
            }));
            functions.push(view);
        }
        bars.push(port_bars);
    }
    let sysfs = vfio_glue::sysfs::Sysfs::new(root.path("sys"));
    let links = groups
        .iter()
        .map(|g| g.first().and_then(|h| sysfs.upstream_link(h)))
        .collect();
    let ram: Vec<(u64, u64)> = layout::ram_regions(spec.memory_bytes())
        .into_iter()
        .map(|(a, len)| (a.0, len))
        .collect();
    let numa = numa_plan
        .map(|p| {
            let acpi = p.acpi_nodes(&ram, &[]);
            p.nodes
                .iter()
                .zip(acpi)
                .map(|(n, a)| (n.vcpus.clone(), a.memory, n.host_node))
                .collect()
        })
        .unwrap_or_default();
    let (iova, iova_source) = iova_ranges(root, &hosts);
    let ram_size = spec.memory_bytes();
    let platform = layout::pci_platform(ram_size, phys_bits, iova.clone());
    let map = topology
        .place(&platform, &bars)
        .map_err(|e| PlanError::Place(Box::new(e)))?;
    Ok(VmPlan {
        vcpus: spec.vcpus,
        ram: layout::ram_regions(ram_size)
            .into_iter()
            .map(|(a, len)| (a.0, len))
            .collect(),
        phys_bits,
        iova,
        iova_source,
        map,
        functions,
        links,
        numa,
    })
}

/// The host functions each spec entry names, a slot as every function sysfs lists for
/// it (on whatever driver: the plan shows what `run` would build once they are on
/// vfio-pci).
fn expand_slots(root: &HostRoot, spec: &VmSpec) -> Result<Vec<Vec<HostPciAddress>>, PlanError> {
    let sysfs = vfio_glue::sysfs::Sysfs::new(root.path("sys"));
    let mut entries = Vec::new();
    for h in spec.passthrough_hosts() {
        match h {
            HostSelector::Function(a) => entries.push(vec![a]),
            HostSelector::Slot(s) => {
                let members = vfio_glue::host::slot_members(&sysfs, s).map_err(|_| {
                    PlanError::DeviceMissing {
                        addr: s,
                        path: root.path("sys/bus/pci/devices").display().to_string(),
                    }
                })?;
                entries.push(members.iter().map(|m| m.addr).collect());
            }
        }
    }
    Ok(entries)
}

/// A function's BARs (from `config` and `resource`) and the spans that trap.
fn read_function(
    root: &HostRoot,
    guest: resources::Bdf,
    host: HostPciAddress,
) -> Result<FunctionView, PlanError> {
    let dir = format!("sys/bus/pci/devices/{host}");
    if !root.exists(&dir) {
        return Err(PlanError::DeviceMissing {
            addr: host,
            path: root.path(&dir).display().to_string(),
        });
    }
    let cfg = std::fs::read(root.path(&format!("{dir}/config"))).unwrap_or_default();
    let sizes = region_sizes(&root.read(&format!("{dir}/resource")).unwrap_or_default());
    let bars = guest_bars(&cfg, &|i| sizes.get(i as usize).copied().flatten());
    // The capability list lies past the header: whole config space needs root.
    let trapped = (cfg.len() > 64).then(|| {
        let msix = msix_of(&cfg);
        bars.iter()
            .filter(|b| b.index != resources_rom())
            .map(|b| {
                let holes = msix.as_ref().map(|m| msix_holes(m, b.index));
                let info = RegionInfo {
                    size: sizes
                        .get(usize::from(b.index))
                        .copied()
                        .flatten()
                        .unwrap_or(0),
                    readable: true,
                    writable: true,
                    mmap: true,
                    sparse_areas: None,
                    msix_mappable: false,
                };
                let io = b.kind == devices::pci::BarKind::Io;
                let p = plan_bar(b.index, io, &info, &holes.unwrap_or_default());
                (b.index, p.trapped)
            })
            .collect()
    });
    Ok(FunctionView {
        guest,
        host,
        bars,
        trapped,
    })
}

fn resources_rom() -> u8 {
    devices::pci::ROM_BAR_INDEX
}

/// Region sizes by VFIO region index (BARs 0-5, the ROM at 6) from a `resource` file.
fn region_sizes(text: &str) -> Vec<Option<u64>> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut sizes: Vec<Option<u64>> = text
        .lines()
        .take(ROM_REGION as usize + 1)
        .map(|line| {
            let mut f = line.split_whitespace().map(hex);
            let (start, end) = (f.next().flatten()?, f.next().flatten()?);
            (end > start).then(|| end - start + 1)
        })
        .collect();
    sizes.resize(ROM_REGION as usize + 1, None);
    sizes
}

/// VFIO's IOVA ranges for `hosts`, and how they were found.
fn iova_ranges(root: &HostRoot, hosts: &[HostPciAddress]) -> (Vec<(u64, u64)>, String) {
    if hosts.is_empty() {
        return (Vec::new(), "no device passed through".into());
    }
    let (bits, source) = match intel_mgaw(root) {
        Some(bits) => (
            bits,
            format!("IOMMU address width {bits} bits (intel-iommu cap)"),
        ),
        None => (
            ASSUMED_IOMMU_BITS,
            format!("IOMMU address width unknown, {ASSUMED_IOMMU_BITS} bits assumed"),
        ),
    };
    let top = (1u64 << bits.min(63)) - 1;
    let mut ranges = vec![(0, top)];
    for host in hosts {
        let group = root.path(&format!(
            "sys/bus/pci/devices/{host}/iommu_group/reserved_regions"
        ));
        let text = std::fs::read_to_string(group).unwrap_or_default();
        for (start, end) in reserved(&text) {
            ranges = exclude(&ranges, start, end);
        }
    }
    (ranges, source)
}

/// The Intel IOMMU's maximum guest address width (cap register bits 21:16, plus one),
/// the smallest over the units.
fn intel_mgaw(root: &HostRoot) -> Option<u8> {
    root.list("sys/class/iommu")
        .iter()
        .filter_map(|u| root.read(&format!("sys/class/iommu/{u}/intel-iommu/cap")))
        .filter_map(|cap| u64::from_str_radix(cap.trim_start_matches("0x"), 16).ok())
        .map(|cap| ((cap >> 16) & 0x3f) as u8 + 1)
        .min()
}

/// `reserved_regions` lines (`start end type`) VFIO keeps out of the IOVA space.
fn reserved(text: &str) -> Vec<(u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (s, e, kind) = (hex(f.next()?)?, hex(f.next()?)?, f.next()?);
            (kind != "direct-relaxable").then_some((s, e))
        })
        .collect()
}

/// `ranges` without `start..=end`.
fn exclude(ranges: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        if end < a || start > b {
            out.push((a, b));
            continue;
        }
        if start > a {
            out.push((a, start - 1));
        }
        if end < b {
            out.push((end + 1, b));
        }
    }
    out
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn range_json(r: &Option<std::ops::RangeInclusive<u64>>) -> Value {
    r.as_ref()
        .map_or(Value::Null, |r| json!([hex(*r.start()), hex(*r.end())]))
}

fn kind_name(class: BarClass) -> &'static str {
    match class {
        BarClass::Io => "io",
        BarClass::Mem32 { .. } => "mem32",
        BarClass::Mem64 { .. } => "mem64",
    }
}

fn prefetchable(class: BarClass) -> bool {
    matches!(
        class,
        BarClass::Mem32 { prefetchable: true } | BarClass::Mem64 { prefetchable: true }
    )
}

impl VmPlan {
    /// The last bus of the main host bridge's range.
    fn main_bus_end(&self) -> u8 {
        self.map
            .bridges
            .first()
            .map_or(self.map.bus_end, |b| b.bridge.bus_end)
    }

    fn function(&self, guest: resources::Bdf) -> Option<&FunctionView> {
        self.functions.iter().find(|f| f.guest == guest)
    }

    fn trapped(&self, guest: resources::Bdf, index: u8) -> Option<Vec<Span>> {
        let f = self.function(guest)?;
        if index == resources_rom() {
            return None;
        }
        let t = f.trapped.as_ref()?;
        Some(t.iter().find(|(i, _)| *i == index)?.1.clone())
    }

    /// The link root port `i` reports: the host's it mirrors, else the default.
    fn link(&self, i: usize) -> devices::pci::PortLink {
        self.links
            .get(i)
            .copied()
            .flatten()
            .unwrap_or(devices::pci::PortLink::DEFAULT)
    }

    /// The plan as a JSON document (addresses as hex strings: JSON numbers lose bits).
    pub fn to_json(&self) -> Value {
        let ports: Vec<Value> = self
            .map
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let link = self.link(i);
                let bars: Vec<Value> = p
                    .bars
                    .iter()
                    .map(|b| {
                        let host = self.function(b.function).map(|f| f.host.to_string());
                        let trapped = self.trapped(b.function, b.index).map(|spans| {
                            spans
                                .iter()
                                .map(|s| json!([hex(s.offset), hex(s.size)]))
                                .collect::<Vec<_>>()
                        });
                        json!({
                            "function": b.function.to_string(),
                            "host": host,
                            "index": b.index,
                            "size": hex(b.request.size),
                            "kind": kind_name(b.request.class),
                            "prefetchable": prefetchable(b.request.class),
                            "address": hex(b.addr),
                            "trapped": trapped,
                        })
                    })
                    .collect();
                let functions: Vec<Value> = p
                    .slot
                    .functions
                    .iter()
                    .map(|g| {
                        json!({
                            "guest": g.to_string(),
                            "host": self.function(*g).map(|f| f.host.to_string()),
                        })
                    })
                    .collect();
                json!({
                    "bdf": p.slot.bdf.to_string(),
                    "host_bridge": p.slot.bridge,
                    "secondary_bus": p.slot.secondary_bus,
                    "io": range_json(&p.io),
                    "mem": range_json(&p.mem),
                    "prefetchable": range_json(&p.prefetchable),
                    "link": json!({ "speed": link.speed.rate(), "width": link.width }),
                    "functions": functions,
                    "bars": bars,
                })
            })
            .collect();
        let (m64, m64_size) = self.map.mmio64;
        json!({
            "vcpus": self.vcpus,
            "numa_nodes": if self.numa.is_empty() {
                Value::Null
            } else {
                self.numa
                    .iter()
                    .map(|(cpus, mem, host)| {
                        let mem: Vec<Value> =
                            mem.iter().map(|(a, l)| json!([hex(*a), hex(*l)])).collect();
                        json!({ "vcpus": cpus, "memory": mem, "host_node": host })
                    })
                    .collect::<Vec<_>>()
                    .into()
            },
            "ram": self.ram.iter().map(|(a, l)| json!([hex(*a), hex(*l)])).collect::<Vec<_>>(),
            "phys_bits": self.phys_bits,
            "iova_ranges": self.iova.iter().map(|(a, b)| json!([hex(*a), hex(*b)])).collect::<Vec<_>>(),
            "iova_source": self.iova_source,
            "mmio32": [hex(layout::MMIO32_START.0), hex(layout::MMIO32_SIZE)],
            "mmio64": [hex(m64), hex(m64_size)],
            "ecam": [hex(layout::PCI_ECAM_START.0), hex(layout::PCI_ECAM_SIZE)],
            "host_bridge": {
                "bdf": resources::HOST_BRIDGE.to_string(),
                "buses": [0, self.main_bus_end()],
                "node": self.map.bridges.first().and_then(|b| b.bridge.node),
            },
            "extra_host_bridges": self.map.bridges.iter().skip(1).map(|b| {
                let list = |l: &[std::ops::RangeInclusive<u64>]| {
                    l.iter().map(|r| json!([hex(*r.start()), hex(*r.end())])).collect::<Vec<_>>()
                };
                json!({
                    "buses": [b.bridge.bus, b.bridge.bus_end],
                    "node": b.bridge.node,
                    "io": list(&b.io),
                    "mem": list(&b.mem),
                    "prefetchable": list(&b.mem64),
                })
            }).collect::<Vec<_>>(),
            "root_ports": ports,
        })
    }
}

fn window(r: &Option<std::ops::RangeInclusive<u64>>) -> String {
    r.as_ref()
        .map_or("-".into(), |r| format!("{:#x}-{:#x}", r.start(), r.end()))
}

impl fmt::Display for VmPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vCPUs {}", self.vcpus)?;
        for (a, len) in &self.ram {
            writeln!(
                f,
                "RAM          {a:#014x}-{:#014x}  {}",
                a + len - 1,
                Size(*len)
            )?;
        }
        let m32 = (layout::MMIO32_START.0, layout::MMIO32_SIZE);
        writeln!(
            f,
            "32-bit PCI   {:#014x}-{:#014x}  {}",
            m32.0,
            m32.0 + m32.1 - 1,
            Size(m32.1)
        )?;
        let ecam = (layout::PCI_ECAM_START.0, layout::PCI_ECAM_SIZE);
        writeln!(
            f,
            "ECAM         {:#014x}-{:#014x}",
            ecam.0,
            ecam.0 + ecam.1 - 1
        )?;
        let (m64, size) = self.map.mmio64;
        match size {
            0 => writeln!(f, "64-bit PCI   none (no 64-bit prefetchable BAR)")?,
            _ => writeln!(
                f,
                "64-bit PCI   {m64:#014x}-{:#014x}  {}",
                m64 + size - 1,
                Size(size)
            )?,
        }
        writeln!(f, "guest physical address bits {}", self.phys_bits)?;
        let iova: Vec<String> = self
            .iova
            .iter()
            .map(|(a, b)| format!("{a:#x}-{b:#x}"))
            .collect();
        let iova = if iova.is_empty() {
            "unrestricted".into()
        } else {
            iova.join(", ")
        };
        writeln!(f, "IOVA ranges  {iova} ({})", self.iova_source)?;
        for (i, (cpus, mem, host)) in self.numa.iter().enumerate() {
            let mib: u64 = mem.iter().map(|(_, l)| l >> 20).sum();
            writeln!(
                f,
                "NUMA node {i}  vCPUs {cpus:?}  {mib} MiB  on host node {host}"
            )?;
        }
        for (b, bridge) in self.map.bridges.iter().enumerate() {
            let node = bridge
                .bridge
                .node
                .map_or(String::new(), |n| format!("  NUMA node {n}"));
            if b == 0 {
                writeln!(
                    f,
                    "host bridge  {}  buses 0-{}{node}",
                    resources::HOST_BRIDGE,
                    bridge.bridge.bus_end
                )?;
            } else {
                let list = |l: &[std::ops::RangeInclusive<u64>]| {
                    let v: Vec<String> = l.iter().map(|r| window(&Some(r.clone()))).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                writeln!(
                    f,
                    "host bridge  root bus {:02x}  buses {}-{}{node}  io {}  mem {}  prefetchable {}",
                    bridge.bridge.bus,
                    bridge.bridge.bus,
                    bridge.bridge.bus_end,
                    list(&bridge.io),
                    list(&bridge.mem),
                    list(&bridge.mem64)
                )?;
            }
            for (i, p) in self.map.ports.iter().enumerate() {
                if p.slot.bridge == b {
                    self.fmt_port(f, i, p)?;
                }
            }
        }
        Ok(())
    }
}

impl VmPlan {
    /// Root port `i` (`p`), its functions and their BARs, as `Display` prints them.
    fn fmt_port(
        &self,
        f: &mut fmt::Formatter<'_>,
        i: usize,
        p: &resources::PortMap,
    ) -> fmt::Result {
        let link = self.link(i);
        writeln!(
            f,
            "  root port {} -> bus {}  io {}  mem {}  prefetchable {}  link {} x{}",
            p.slot.bdf,
            p.slot.secondary_bus,
            window(&p.io),
            window(&p.mem),
            window(&p.prefetchable),
            link.speed.rate(),
            link.width
        )?;
        for g in &p.slot.functions {
            let host = self.function(*g).map_or("?".into(), |v| v.host.to_string());
            writeln!(f, "    {g} (host {host})")?;
            for b in p.bars.iter().filter(|b| b.function == *g) {
                let mut line = format!(
                    "      BAR{} {} {}{} at {:#x}",
                    b.index,
                    Size(b.request.size),
                    kind_name(b.request.class),
                    if prefetchable(b.request.class) {
                        " prefetchable"
                    } else {
                        ""
                    },
                    b.addr
                );
                match self.trapped(*g, b.index) {
                    Some(t) if t.is_empty() => line.push_str(", mapped directly"),
                    Some(t) => {
                        let spans: Vec<String> = t
                            .iter()
                            .map(|s| format!("{:#x}+{:#x}", s.offset, s.size))
                            .collect();
                        let _ = write!(line, ", traps {}", spans.join(" "));
                    }
                    None if b.index == resources_rom() => line.push_str(", ROM (traps)"),
                    None => line.push_str(", trapped spans unknown (run as root)"),
                }
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
