//! What the VMM builds from a placed topology ([`PciMap`]), whoever placed it: the root
//! ports with their windows and the host bridge's windows for ACPI. The passthrough
//! layer places the topology when it has devices (the IOMMU's IOVA ranges bound the
//! 64-bit window); a guest with virtio devices only is placed here ([`place_without_iommu`]).

use std::sync::{Arc, Mutex};

use arch::x86_64::{layout, AddrRange, PciWindows};
use devices::pci::{Bdf, RootPort, SharedPciDevice};
use resources::{FunctionBar, PciMap, SlotRequest, Topology};

use crate::passthrough::PassthroughError;

/// One root port per slot of `map`, with its bus numbers and windows, in topology order.
pub fn root_ports(map: &PciMap) -> Result<Vec<(Bdf, SharedPciDevice)>, PassthroughError> {
    map.ports
        .iter()
        .map(|port| {
            let bdf = port.slot.bdf;
            let rp = RootPort::for_port(port)
                .map_err(|source| PassthroughError::RootPort { bdf, source })?;
            Ok((bdf, Arc::new(Mutex::new(rp)) as SharedPciDevice))
        })
        .collect()
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
