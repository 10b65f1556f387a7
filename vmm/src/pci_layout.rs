//! What the VMM builds from a placed topology ([`PciMap`]), whoever placed it: the root
//! ports with their windows, the host bridges' windows for ACPI, and the guest NUMA
//! node of every function (its host bridge's). The passthrough
//! layer places the topology when it has devices (the IOMMU's IOVA ranges bound the
//! 64-bit window); a guest with virtio devices only is placed here ([`place_without_iommu`]).

use std::sync::{Arc, Mutex};

use arch::x86_64::{layout, AddrRange, PciHostBridge, PciWindows};
use devices::pci::{Bdf, PortLink, RootPort, SharedPciDevice};
use resources::{lock, FunctionBar, PciMap, PortMap, SlotRequest, Topology};

use crate::passthrough::PassthroughError;

/// The root ports of a placed topology, in topology order, each with the plan it was
/// built from: a machine reset builds them again from it (bus numbers, windows, bridge
/// control and MSI as planned, whatever the guest changed).
#[derive(Default)]
pub struct RootPorts {
    ports: Vec<(Arc<Mutex<RootPort>>, PortMap, Option<PortLink>)>,
}

impl RootPorts {
    /// One root port per slot of `map`, with its bus numbers and windows; port `i`'s
    /// link is `links[i]` (the host's link above the device), Gen3 x16 where none.
    pub fn build(map: &PciMap, links: &[Option<PortLink>]) -> Result<RootPorts, PassthroughError> {
        let ports = (0..)
            .zip(&map.ports)
            .map(|(i, plan)| {
                let link = links.get(i).copied().flatten();
                Ok((Arc::new(Mutex::new(port(plan, link)?)), plan.clone(), link))
            })
            .collect::<Result<_, PassthroughError>>()?;
        Ok(RootPorts { ports })
    }

    /// The ports as PCI functions for the root, at their addresses.
    pub fn functions(&self) -> Vec<(Bdf, SharedPciDevice)> {
        self.ports
            .iter()
            .map(|(p, plan, _)| (plan.slot.bdf, p.clone() as SharedPciDevice))
            .collect()
    }

    /// Port `i` as its config-write handler knows it.
    pub fn shared(&self) -> Vec<SharedPciDevice> {
        self.ports()
            .into_iter()
            .map(|p| p as SharedPciDevice)
            .collect()
    }

    /// Port `i`, for reading the windows the guest programmed in it.
    pub fn ports(&self) -> Vec<Arc<Mutex<RootPort>>> {
        self.ports.iter().map(|(p, _, _)| p.clone()).collect()
    }

    /// Back to the plan (a machine reset).
    pub fn reset(&self) -> Result<(), PassthroughError> {
        for (p, plan, link) in &self.ports {
            *lock(p) = port(plan, *link)?;
        }
        Ok(())
    }
}

fn port(plan: &PortMap, link: Option<PortLink>) -> Result<RootPort, PassthroughError> {
    let bdf = plan.slot.bdf;
    RootPort::for_port(plan, link).map_err(|source| PassthroughError::RootPort { bdf, source })
}

/// The host bridge's bus range and windows for the DSDT.
pub fn acpi_windows(map: &PciMap) -> PciWindows {
    PciWindows {
        bus_end: map.bus_end,
        ..PciWindows::platform(AddrRange {
            base: map.mmio64.0,
            size: map.mmio64.1,
        })
    }
}

/// The main host bridge's guest node and the extra host bridges, for the DSDT.
pub fn acpi_bridges(map: &PciMap) -> (Option<u32>, Vec<PciHostBridge>) {
    let ranges = |list: &[std::ops::RangeInclusive<u64>]| -> Vec<AddrRange> {
        list.iter()
            .map(|r| AddrRange {
                base: *r.start(),
                size: r.end() - r.start() + 1,
            })
            .collect()
    };
    let main = map.bridges.first().and_then(|b| b.bridge.node);
    let extra = map
        .bridges
        .iter()
        .skip(1)
        .map(|b| PciHostBridge {
            bus: b.bridge.bus,
            bus_end: b.bridge.bus_end,
            pxm: b.bridge.node,
            io: ranges(&b.io),
            mmio: [ranges(&b.mem), ranges(&b.mem64)].concat(),
        })
        .collect();
    (main, extra)
}

/// The extra host bridges' root buses, for the PCI root.
pub fn root_buses(map: &PciMap) -> Vec<u8> {
    map.bridges.iter().skip(1).map(|b| b.bridge.bus).collect()
}

/// Every guest function on a guest NUMA node (its host bridge's), as (node,
/// `bus << 8 | devfn`).
pub fn node_functions(map: &PciMap) -> Vec<(u32, u16)> {
    map.ports
        .iter()
        .filter_map(|p| Some((map.bridges.get(p.slot.bridge)?.bridge.node?, p)))
        .flat_map(|(node, p)| {
            p.slot
                .functions
                .iter()
                .map(move |f| (node, u16::from(f.bus()) << 8 | u16::from(f.devfn())))
        })
        .collect()
}

/// Number and place `slots` (with their `bars`) for a guest without passed-through
/// devices: no IOMMU restricts the 64-bit window.
pub fn place_without_iommu(
    slots: &[SlotRequest],
    bars: &[Vec<FunctionBar>],
    ram_size: u64,
    phys_bits: u8,
) -> Result<PciMap, PassthroughError> {
    let topology = Topology::new(slots).map_err(PassthroughError::Topology)?;
    let platform = layout::pci_platform(ram_size, phys_bits, Vec::new());
    Ok(topology.place(&platform, bars)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use resources::{BarClass, BarRequest};

    /// An nvme on guest node 1 and an edu on node 0, placed without an IOMMU.
    fn two_nodes() -> PciMap {
        let req = |tag: &str, node| SlotRequest {
            tag: tag.into(),
            functions: 1,
            node: Some(node),
        };
        let bar = FunctionBar {
            function: 0,
            index: 0,
            request: BarRequest {
                size: 0x4000,
                class: BarClass::Mem32 {
                    prefetchable: false,
                },
            },
        };
        place_without_iommu(
            &[req("nvme", 1), req("edu", 0)],
            &[vec![bar], vec![bar]],
            512 << 20,
            40,
        )
        .unwrap()
    }

    #[test]
    fn an_extra_bridge_carries_its_node_buses_and_its_port_window() {
        let map = two_nodes();
        let (main, extra) = acpi_bridges(&map);
        assert_eq!(main, Some(0));
        assert_eq!(extra.len(), 1);
        let b = &extra[0];
        assert_eq!((b.bus, b.bus_end, b.pxm), (2, 3, Some(1)));
        let nvme = map.ports[0].mem.clone().unwrap();
        assert_eq!(
            b.mmio,
            [AddrRange {
                base: *nvme.start(),
                size: 1 << 20
            }]
        );
        assert!(b.io.is_empty());
        assert_eq!(root_buses(&map), [2]);
        // acpi_windows' bus range (for the MCFG) covers the extra bridge's buses.
        assert_eq!(acpi_windows(&map).bus_end, 3);
    }

    #[test]
    fn functions_are_on_their_bridges_node() {
        // nvme 03:00.0 on node 1, edu 01:00.0 on node 0.
        assert_eq!(node_functions(&two_nodes()), [(1, 0x0300), (0, 0x0100)]);
    }
}
