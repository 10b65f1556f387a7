//! The guest's PCI topology, planned once for every device: the one home of the rules
//! that say where each guest function sits and where its BARs and bridge windows go.
//! The VMM builds the guest from it, `strait`'s tests and tools read the same plan.
//!
//! Shape (PCIe Base 6.0, 1.3 root complex; q35-like): one host bridge at 00:00.0 on
//! bus 0, and one PCIe root port per guest slot, because a root port is what gives a
//! passed-through device a link (speed, width, AER, hot reset) the way a real server's
//! slot does; a device on the root bus would be a root-complex integrated endpoint,
//! which GPU drivers do not expect. Root port `i` has device number `i + 1` (slot 0 is
//! the host bridge's), its secondary bus is the next free bus number, and the functions
//! of its slot are (bus):00.f, numbered from 0 in the order the request lists them
//! (function 0 must exist for the guest to scan the slot).
//!
//! Guest NUMA (ACPI 6.5 6.2.14 `_PXM`; PCI Firmware 3.3 4.1.5 `_BBN`): a slot may name
//! the guest node its device belongs to. The root ports of one node sit under one host
//! bridge of their own, as on a multi-socket server (and as QEMU's `pxb-pcie` and
//! KubeVirt's expander buses do), so the guest reads each device's node from its root
//! bus. Bus 0's bridge (the main one) holds the lowest node named and the slots naming
//! none; every other node gets an extra bridge whose root bus is numbered right above
//! the previous bridge's bus range, its ports' buses following it. The device numbers
//! stay `i + 1` whichever root bus a port is on, so INTx routing by slot is the same
//! on every bridge. An extra bridge forwards the windows of its ports (their union); the
//! main bridge keeps the rest of the platform's windows. With no node named, or one,
//! there is one bridge and the picture is that of a guest without NUMA.
//!
//! Two steps, because the BARs are known only once the devices are open:
//! 1. [`Topology::new`] numbers bridges, slots, ports, buses and functions from the
//!    requests;
//! 2. [`Topology::place`] lays every BAR out: the 64-bit window sized from the BARs
//!    ([`plan_mmio64`]), then each BAR in the I/O, 32-bit or 64-bit window and each
//!    root port's windows around its share ([`place_bars`]), and each host bridge's
//!    windows from its ports'.

use std::ops::RangeInclusive;

use crate::address::{AddressAllocator, AllocError};
use crate::bdf::Bdf;
use crate::ids::{BusNumberAllocator, IdError};
use crate::placement::{place_bars, BarRequest, PortRequest, Window, Windows};
use crate::plan::{plan_mmio64, Mmio64Floor, PlanError};

/// Root ports a guest can have: slots 1..=31 of bus 0.
pub const MAX_ROOT_PORTS: usize = 31;

/// The host bridge's address.
pub const HOST_BRIDGE: Bdf = Bdf::from_devfn(0, 0, 0);

/// One guest slot to create: a device with `functions` functions behind a root port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// Names the slot in logs and errors, e.g. the host device "0000:01:00".
    pub tag: String,
    /// Functions of the device, 1..=8.
    pub functions: u8,
    /// The guest NUMA node the device belongs to, if any.
    pub node: Option<u32>,
}

/// Why the topology could not be numbered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("{count} devices need more root ports than bus 0 has slots ({MAX_ROOT_PORTS})")]
    TooManySlots { count: usize },
    #[error("{tag}: a slot holds 1 to 8 functions, not {functions}")]
    BadFunctionCount { tag: String, functions: u8 },
    #[error("no bus number left for another root port")]
    BusNumbers(#[source] IdError),
}

/// One root port and the slot behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSlot {
    pub tag: String,
    /// The root port's own address on bus 0.
    pub bdf: Bdf,
    pub secondary_bus: u8,
    /// The guest addresses of the slot's functions, function 0 first.
    pub functions: Vec<Bdf>,
    /// Index of its host bridge in [`Topology::bridges`].
    pub bridge: usize,
}

impl PortSlot {
    /// The port's device number on bus 0: its INTx `_PRT` rotation and its number in
    /// Link Capabilities.
    pub fn slot(&self) -> u8 {
        self.bdf.device()
    }

    /// Whether function 0's header must carry the multi-function bit.
    pub fn multifunction(&self) -> bool {
        self.functions.len() > 1
    }
}

/// One PCIe host bridge: its root bus and bus range, and the guest node it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSlot {
    /// Its root bus (`_BBN`); 0 for the main bridge.
    pub bus: u8,
    /// Last bus of its range (`bus..=bus_end` in its `_CRS`).
    pub bus_end: u8,
    /// Its proximity domain (`_PXM`): the guest node of its slots.
    pub node: Option<u32>,
}

/// The numbered topology: host bridges and root ports, with their functions. Ports are
/// in request order; `bridges[0]` is the main bridge on bus 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub ports: Vec<PortSlot>,
    pub bridges: Vec<BridgeSlot>,
}

/// The platform's windows for BARs, handed over by `arch` (which owns the layout),
/// and what the host allows: the guest's physical address width and the IOMMU's
/// inclusive IOVA ranges (empty: unrestricted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPlatform {
    /// I/O port window, (start, size).
    pub io: (u64, u64),
    /// 32-bit MMIO window below 4 GiB, (start, size).
    pub mmio32: (u64, u64),
    /// Where the 64-bit window may start.
    pub mmio64: Mmio64Floor,
    pub phys_bits: u8,
    pub iova: Vec<(u64, u64)>,
}

/// One BAR of a function behind a port, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionBar {
    /// Index of the function in [`PortSlot::functions`].
    pub function: u8,
    /// BAR number (0-5, or the ROM's).
    pub index: u8,
    pub request: BarRequest,
}

/// A BAR's guest address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedBar {
    pub function: Bdf,
    pub index: u8,
    pub addr: u64,
    pub request: BarRequest,
}

/// One root port, placed: its windows and the BARs behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub slot: PortSlot,
    pub io: Option<RangeInclusive<u64>>,
    pub mem: Option<RangeInclusive<u64>>,
    pub prefetchable: Option<RangeInclusive<u64>>,
    pub bars: Vec<PlacedBar>,
}

/// One host bridge, placed. An extra bridge forwards exactly its ports' windows (merged
/// where they touch); the main bridge (index 0) forwards the platform's windows less
/// the extra bridges' (its lists here are left empty: `arch` owns the platform windows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeMap {
    pub bridge: BridgeSlot,
    pub io: Vec<RangeInclusive<u64>>,
    /// 32-bit windows (the ports' memory windows).
    pub mem: Vec<RangeInclusive<u64>>,
    /// 64-bit windows (the ports' prefetchable windows).
    pub mem64: Vec<RangeInclusive<u64>>,
}

/// The whole guest PCI picture: what ACPI announces and what each port forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciMap {
    /// The 64-bit window, (start, size); size 0 when no BAR lives there.
    pub mmio64: (u64, u64),
    /// Highest bus number in use, over every bridge (the ECAM and MCFG cover
    /// 0..=bus_end).
    pub bus_end: u8,
    pub ports: Vec<PortMap>,
    /// The host bridges, the main one first.
    pub bridges: Vec<BridgeMap>,
}

/// `ranges` sorted, with ranges that overlap or touch merged.
fn merged(mut ranges: Vec<RangeInclusive<u64>>) -> Vec<RangeInclusive<u64>> {
    ranges.sort_by_key(|r| *r.start());
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.end().saturating_add(1) >= *r.start() => {
                *last = *last.start()..=(*last.end()).max(*r.end());
            }
            _ => out.push(r),
        }
    }
    out
}

impl Topology {
    /// Number bridges, ports, buses and functions for `slots`, ports in request order.
    pub fn new(slots: &[SlotRequest]) -> Result<Topology, TopologyError> {
        if slots.len() > MAX_ROOT_PORTS {
            return Err(TopologyError::TooManySlots { count: slots.len() });
        }
        if let Some(req) = slots.iter().find(|r| !(1..=8).contains(&r.functions)) {
            return Err(TopologyError::BadFunctionCount {
                tag: req.tag.clone(),
                functions: req.functions,
            });
        }
        // The main bridge takes the lowest node named (and the slots naming none).
        let mut nodes: Vec<Option<u32>> = slots.iter().map(|r| r.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let main = nodes.iter().copied().flatten().next();
        let mut bridge_nodes = vec![main];
        bridge_nodes.extend(
            nodes
                .into_iter()
                .flatten()
                .filter(|n| Some(*n) != main)
                .map(Some),
        );
        let bridge_of = |r: &SlotRequest| match r.node {
            None => 0,
            node => bridge_nodes.iter().position(|b| *b == node).unwrap_or(0),
        };
        let mut buses = BusNumberAllocator::new();
        let mut secondary = vec![0u8; slots.len()];
        let mut bridges = Vec::with_capacity(bridge_nodes.len());
        for (b, &node) in bridge_nodes.iter().enumerate() {
            let bus = match b {
                0 => 0,
                _ => buses.allocate().map_err(TopologyError::BusNumbers)?,
            };
            let mut bus_end = bus;
            for (i, _) in slots.iter().enumerate().filter(|(_, r)| bridge_of(r) == b) {
                bus_end = buses.allocate().map_err(TopologyError::BusNumbers)?;
                secondary[i] = bus_end;
            }
            bridges.push(BridgeSlot { bus, bus_end, node });
        }
        let ports = (1u8..)
            .zip(slots)
            .zip(secondary)
            .map(|((device, req), bus)| {
                let bridge = bridge_of(req);
                PortSlot {
                    tag: req.tag.clone(),
                    bdf: Bdf::from_devfn(0, bridges[bridge].bus, device << 3),
                    secondary_bus: bus,
                    functions: (0..req.functions)
                        .map(|f| Bdf::from_devfn(0, bus, f))
                        .collect(),
                    bridge,
                }
            })
            .collect();
        Ok(Topology { ports, bridges })
    }

    /// Highest bus number the topology uses.
    pub fn bus_end(&self) -> u8 {
        self.bridges.iter().map(|b| b.bus_end).max().unwrap_or(0)
    }

    /// Each host bridge with the windows it forwards (see [`BridgeMap`]).
    fn bridge_maps(&self, ports: &[PortMap]) -> Vec<BridgeMap> {
        (0..)
            .zip(&self.bridges)
            .map(|(b, bridge)| {
                let mine: Vec<&PortMap> = ports
                    .iter()
                    .filter(|p| b > 0 && p.slot.bridge == b)
                    .collect();
                let collect = |f: fn(&PortMap) -> &Option<RangeInclusive<u64>>| {
                    merged(mine.iter().filter_map(|p| f(p).clone()).collect())
                };
                BridgeMap {
                    bridge: bridge.clone(),
                    io: collect(|p| &p.io),
                    mem: collect(|p| &p.mem),
                    mem64: collect(|p| &p.prefetchable),
                }
            })
            .collect()
    }

    /// Place every BAR: `bars[i]` lists port `i`'s BARs in the order the devices report
    /// them. BARs of a function beyond the slot's are ignored.
    pub fn place(
        &self,
        platform: &PciPlatform,
        bars: &[Vec<FunctionBar>],
    ) -> Result<PciMap, PlanError> {
        let requests: Vec<PortRequest> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| PortRequest {
                tag: format!("root port {} ({})", port.bdf, port.tag),
                bars: bars
                    .get(i)
                    .map(|b| b.iter().map(|b| b.request).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let mmio64 = plan_mmio64(
            platform.mmio64,
            &requests,
            platform.phys_bits,
            &platform.iova,
        )?;
        let alloc = |window, (start, size): (u64, u64)| {
            AddressAllocator::with_size(start, size)
                .map_err(|source: AllocError| PlanError::Allocate { window, source })
        };
        let mut io = alloc(Window::Io, platform.io)?;
        let mut mmio32 = alloc(Window::Mmio32, platform.mmio32)?;
        let mut m64 = alloc(Window::Mmio64, mmio64)?;
        let windows = Windows {
            io: &mut io,
            mmio32: &mut mmio32,
            mmio64: &mut m64,
        };
        let placed = place_bars(&requests, windows)?;
        let ports = self
            .ports
            .iter()
            .zip(placed)
            .enumerate()
            .map(|(i, (slot, p))| {
                let port_bars = bars.get(i).map(Vec::as_slice).unwrap_or_default();
                let bars = port_bars
                    .iter()
                    .zip(&p.bar_addrs)
                    .filter_map(|(b, &addr)| {
                        Some(PlacedBar {
                            function: *slot.functions.get(usize::from(b.function))?,
                            index: b.index,
                            addr,
                            request: b.request,
                        })
                    })
                    .collect();
                PortMap {
                    slot: slot.clone(),
                    io: p.io,
                    mem: p.mem,
                    prefetchable: p.prefetchable,
                    bars,
                }
            })
            .collect::<Vec<_>>();
        Ok(PciMap {
            mmio64,
            bus_end: self.bus_end(),
            bridges: self.bridge_maps(&ports),
            ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::BarClass;

    const GIB: u64 = 1 << 30;

    fn slots(functions: &[u8]) -> Vec<SlotRequest> {
        functions
            .iter()
            .enumerate()
            .map(|(i, &functions)| SlotRequest {
                tag: format!("dev{i}"),
                functions,
                node: None,
            })
            .collect()
    }

    fn platform() -> PciPlatform {
        PciPlatform {
            io: (0x1000, 0xf000),
            mmio32: (0xc000_0000, 0x2000_0000),
            mmio64: Mmio64Floor {
                start: 4 * GIB,
                align: GIB,
            },
            phys_bits: 39,
            iova: vec![],
        }
    }

    fn bar(function: u8, index: u8, size: u64, class: BarClass) -> FunctionBar {
        FunctionBar {
            function,
            index,
            request: BarRequest { size, class },
        }
    }

    #[test]
    fn each_slot_gets_a_root_port_and_a_bus_of_its_own() {
        let t = Topology::new(&slots(&[1, 2, 1])).unwrap();
        let ports: Vec<String> = t.ports.iter().map(|p| p.bdf.to_string()).collect();
        assert_eq!(ports, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
        let buses: Vec<u8> = t.ports.iter().map(|p| p.secondary_bus).collect();
        assert_eq!(buses, [1, 2, 3]);
        assert_eq!(t.bus_end(), 3);
        let f: Vec<String> = t.ports[1].functions.iter().map(Bdf::to_string).collect();
        assert_eq!(f, ["0000:02:00.0", "0000:02:00.1"]);
        assert!(t.ports[1].multifunction());
        assert!(!t.ports[0].multifunction());
        assert_eq!(t.ports[2].slot(), 3);
    }

    #[test]
    fn more_slots_than_bus_0_has_is_refused() {
        assert!(Topology::new(&slots(&[1; MAX_ROOT_PORTS])).is_ok());
        assert_eq!(
            Topology::new(&slots(&[1; MAX_ROOT_PORTS + 1])),
            Err(TopologyError::TooManySlots { count: 32 })
        );
    }

    #[test]
    fn a_slot_holds_one_to_eight_functions() {
        for n in [0, 9] {
            assert!(matches!(
                Topology::new(&slots(&[n])),
                Err(TopologyError::BadFunctionCount { functions, .. }) if functions == n
            ));
        }
    }

    #[test]
    fn no_devices_is_bus_0_only() {
        let t = Topology::new(&[]).unwrap();
        let map = t.place(&platform(), &[]).unwrap();
        assert_eq!(map.bus_end, 0);
        assert_eq!(map.mmio64, (4 * GIB, 0));
        assert!(map.ports.is_empty());
    }

    #[test]
    fn bars_land_in_their_windows_behind_their_port() {
        let t = Topology::new(&slots(&[1, 2])).unwrap();
        let pref64 = BarClass::Mem64 { prefetchable: true };
        let mem32 = BarClass::Mem32 {
            prefetchable: false,
        };
        let bars = vec![
            vec![bar(0, 0, 0x4000, mem32)],
            vec![bar(0, 1, 8 * GIB, pref64), bar(1, 0, 0x1000, mem32)],
        ];
        let map = t.place(&platform(), &bars).unwrap();
        // From the floor, with the 8 GiB BAR aligned to its size inside.
        assert_eq!(map.mmio64, (4 * GIB, 12 * GIB));
        assert_eq!(map.bus_end, 2);
        let gpu = &map.ports[1];
        assert_eq!(gpu.bars[0].function.to_string(), "0000:02:00.0");
        assert_eq!(gpu.bars[0].addr, 8 * GIB);
        assert_eq!(gpu.bars[1].function.to_string(), "0000:02:00.1");
        assert_eq!(gpu.prefetchable, Some(8 * GIB..=16 * GIB - 1));
        let mem = gpu.mem.clone().unwrap();
        assert!(mem.contains(&gpu.bars[1].addr));
        let nvme = &map.ports[0];
        assert!(nvme.mem.clone().unwrap().contains(&nvme.bars[0].addr));
        assert!(nvme.prefetchable.is_none());
    }

    #[test]
    fn a_bar_of_a_function_the_slot_lacks_is_dropped() {
        let t = Topology::new(&slots(&[1])).unwrap();
        let mem32 = BarClass::Mem32 {
            prefetchable: false,
        };
        let map = t
            .place(&platform(), &[vec![bar(3, 0, 0x1000, mem32)]])
            .unwrap();
        assert!(map.ports[0].bars.is_empty());
    }

    fn on_nodes(nodes: &[Option<u32>]) -> Vec<SlotRequest> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, &node)| SlotRequest {
                tag: format!("dev{i}"),
                functions: 1,
                node,
            })
            .collect()
    }

    #[test]
    fn one_node_is_the_picture_without_numa() {
        let plain = Topology::new(&slots(&[1, 2, 1])).unwrap();
        for node in [0, 1] {
            let mut reqs = slots(&[1, 2, 1]);
            reqs.iter_mut().for_each(|r| r.node = Some(node));
            let t = Topology::new(&reqs).unwrap();
            assert_eq!(t.ports, plain.ports);
            assert_eq!(
                t.bridges,
                [BridgeSlot {
                    bus: 0,
                    bus_end: 3,
                    node: Some(node)
                }]
            );
        }
        assert_eq!(plain.bridges[0].node, None);
    }

    #[test]
    fn each_node_gets_a_host_bridge_numbered_above_the_last() {
        // nvme on node 1, edu on node 0, a virtio disk on none, a GPU on node 1.
        let t = Topology::new(&on_nodes(&[Some(1), Some(0), None, Some(1)])).unwrap();
        assert_eq!(
            t.bridges,
            [
                BridgeSlot {
                    bus: 0,
                    bus_end: 2,
                    node: Some(0)
                },
                BridgeSlot {
                    bus: 3,
                    bus_end: 5,
                    node: Some(1)
                },
            ]
        );
        let ports: Vec<(String, u8, usize)> = t
            .ports
            .iter()
            .map(|p| (p.bdf.to_string(), p.secondary_bus, p.bridge))
            .collect();
        assert_eq!(
            ports,
            [
                ("0000:03:01.0".into(), 4, 1),
                ("0000:00:02.0".into(), 1, 0),
                ("0000:00:03.0".into(), 2, 0),
                ("0000:03:04.0".into(), 5, 1),
            ]
        );
        assert_eq!(t.ports[3].functions[0].to_string(), "0000:05:00.0");
        assert_eq!(t.bus_end(), 5);
    }

    #[test]
    fn nodes_without_slots_on_bus_0_get_extra_bridges_in_node_order() {
        let t = Topology::new(&on_nodes(&[Some(3), Some(2), Some(1)])).unwrap();
        let bridges: Vec<(u8, u8, Option<u32>)> = t
            .bridges
            .iter()
            .map(|b| (b.bus, b.bus_end, b.node))
            .collect();
        assert_eq!(bridges, [(0, 1, Some(1)), (2, 3, Some(2)), (4, 5, Some(3))]);
    }

    #[test]
    fn extra_bridges_forward_their_ports_windows_only() {
        let t = Topology::new(&on_nodes(&[Some(1), Some(0), Some(1)])).unwrap();
        let pref64 = BarClass::Mem64 { prefetchable: true };
        let mem32 = BarClass::Mem32 {
            prefetchable: false,
        };
        let bars = vec![
            vec![bar(0, 0, 0x4000, mem32), bar(0, 2, GIB, pref64)],
            vec![bar(0, 0, 0x1000, mem32), bar(0, 1, 0x20, BarClass::Io)],
            vec![bar(0, 0, 0x1000, mem32), bar(0, 2, GIB, pref64)],
        ];
        let map = t.place(&platform(), &bars).unwrap();
        assert_eq!(map.bus_end, 4);
        assert_eq!(map.bridges.len(), 2);
        let (main, extra) = (&map.bridges[0], &map.bridges[1]);
        assert!(main.io.is_empty() && main.mem.is_empty() && main.mem64.is_empty());
        assert_eq!(extra.bridge.bus, 2);
        assert!(extra.io.is_empty());
        // Ports 0 and 2's windows, and nothing of port 1's.
        let covers = |list: &[RangeInclusive<u64>], r: &Option<RangeInclusive<u64>>| {
            let r = r.clone().unwrap();
            list.iter()
                .any(|w| w.start() <= r.start() && r.end() <= w.end())
        };
        for p in [&map.ports[0], &map.ports[2]] {
            assert!(covers(&extra.mem, &p.mem));
            assert!(covers(&extra.mem64, &p.prefetchable));
        }
        let edu = map.ports[1].mem.clone().unwrap();
        assert!(extra
            .mem
            .iter()
            .all(|w| w.end() < edu.start() || edu.end() < w.start()));
        // The two GPUs' 1 GiB windows touch: one range.
        assert_eq!(extra.mem64.len(), 1);
    }

    #[test]
    fn touching_ranges_merge_and_others_stay_apart() {
        assert_eq!(
            merged(vec![10..=19, 0..=9, 30..=39, 35..=50]),
            [0..=19, 30..=50]
        );
        assert!(merged(Vec::new()).is_empty());
    }
}
