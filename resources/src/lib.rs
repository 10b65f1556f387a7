//! Guest resource allocation: the one source of truth for the guest memory map.
//!
//! - [`AddressAllocator`]: tagged first-fit ranges for MMIO and I/O windows.
//! - [`BusNumberAllocator`], [`GsiAllocator`]: PCI bus numbers and MSI GSIs.
//! - [`plan_mmio64`]: the 64-bit PCI MMIO window above RAM, sized from the BARs.
//! - [`place_bars`]: BAR addresses and the bridge windows of each root port.
//! - [`Topology`]: the guest PCI topology of every device, numbered and placed
//!   ([`PciMap`]); the VMM builds from it, tests and `strait plan` read it.
//! - [`Bdf`]: PCI function addresses; [`LogLimiter`] and [`lock`]: helpers for all crates.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod address;
mod bdf;
mod ids;
mod layout;
mod placement;
mod plan;
mod topology;
mod util;

pub use address::{AddressAllocator, AllocError, Allocation};
pub use bdf::{Bdf, BdfError};
pub use ids::{BusNumberAllocator, GsiAllocator, IdError};
pub use placement::{
    place_bars, BarClass, BarRequest, PortPlacement, PortRequest, Window, Windows,
    BRIDGE_IO_GRANULE, BRIDGE_MEM_GRANULE, MIN_IO_BAR_SLOT, MIN_MEM_BAR_SLOT,
};
pub use plan::{plan_mmio64, Mmio64Floor, PlanError, Size};
pub use topology::{
    BridgeMap, BridgeSlot, FunctionBar, PciMap, PciPlatform, PlacedBar, PortMap, PortSlot,
    SlotRequest, Topology, TopologyError, HOST_BRIDGE, MAX_ROOT_PORTS,
};
pub use util::{lock, testing, LogLimiter};

/// Fixtures shared by the unit tests of several modules.
#[cfg(test)]
mod fixtures {
    use crate::{BarClass, BarRequest, PortRequest};

    /// A root port whose device has 64-bit prefetchable BARs of `sizes`.
    pub(crate) fn prefetchable_port(tag: &str, sizes: &[u64]) -> PortRequest {
        PortRequest {
            tag: tag.into(),
            bars: sizes
                .iter()
                .map(|&size| BarRequest {
                    size,
                    class: BarClass::Mem64 { prefetchable: true },
                })
                .collect(),
        }
    }
}
