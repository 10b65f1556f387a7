//! VFIO passthrough of host PCI functions: host checks, the type1 IOMMU
//! container with guest RAM mapped for DMA, the device behind a small trait,
//! BAR planning (what KVM maps directly, what traps), and a
//! [`devices::pci::PciDevice`] that virtualises the device's config space.
//!
//! This is the only crate that calls vfio-ioctls. Hardware sits behind
//! [`device::VfioDeviceOps`] and [`container::DmaMapper`], with recording
//! fakes in `fake` (feature `fakes`) for tests.
//!
//! The recipe, as the VMM's passthrough layer (`vmm/src/passthrough/`) runs it, with
//! addresses from `resources::Topology`:
//! 1. [`open::open_devices`]: host checks, container, one backend per device.
//! 2. [`container::GuestDma::map`]: guest RAM at IOVA = guest physical address.
//! 3. [`pci::VfioPciDevice::new`] per backend, with the VMM's
//!    [`irq::IrqProvider`] (KVM irqfds + GSI routes); then
//!    [`pci::VfioPciDevice::place_bar`] for every BAR and a KVM memory slot per
//!    [`pci::VfioPciDevice::direct_mappings`] entry, at the BAR address plus offset.
//! 4. On [`devices::pci::ConfigWriteResult`] BAR moves, move the slots; on
//!    memory decode off, remove them (vfio-pci zaps the mmaps then).
//! 5. Teardown: remove the slots, then drop the devices (interrupts off, bus
//!    master off, reset), then the last `GuestDma` handle (DMA unmapped).
//!
//! Every reset is VFIO_DEVICE_RESET, or for a function without one a hot reset of its
//! bus when this process holds every group it reaches ([`hot_reset`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod addr;
pub mod bars;
pub mod caps;
pub mod container;
pub mod device;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod host;
pub mod hot_reset;
pub mod irq;
pub mod mapping;
pub mod open;
pub mod pci;
pub mod sysfs;

pub use addr::HostPciAddress;
pub use container::{Container, DmaMapper, GuestDma, IovaRange};
pub use device::{VfioBackend, VfioDeviceOps};
pub use error::{Error, Result};
pub use host::{check_memlock, HostDevice, HostPaths};
pub use irq::{IntxFds, IrqProvider, MsiKind, MsiVectors};
pub use open::{open_devices, OpenedDevices};
pub use pci::{DirectMapping, VfioPciDevice, VfioPciParams};
