//! Emulated devices and the PCI model. Nothing here touches KVM or VFIO:
//! interrupts leave through the traits in [`interrupt`], BAR moves are returned
//! to the caller.

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod virtio;
