//! What the VMM builds from a placed topology ([`PciMap`]), whoever placed it: the root
//! ports with their windows and the host bridge's windows for ACPI. The passthrough
//! layer places the topology when it has devices (the IOMMU's IOVA ranges bound the
//! 64-bit window); a guest with virtio devices only is placed here ([`place_without_iommu`]).

use std::sync::{Arc, Mutex};

use arch::x86_64::{layout, AddrRange, PciWindows};
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
        self.ports
            .iter()
            .map(|(p, _, _)| p.clone() as SharedPciDevice)
            .collect()
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
