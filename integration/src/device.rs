//! The emulated PCI devices under test: what L0 adds to L1 for L1 to pass
//! through to L2, how L1 and L2 find each one (PCI vendor:device id, never
//! an address, since each VMM numbers buses its own way) and the stock
//! modules L2 needs to drive it.

use crate::modules::ModuleRequest;

/// An emulated PCI device that L0 adds to L1, for L1 to pass through to L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// QEMU's NVMe controller, backed by a raw image file.
    Nvme,
    /// bochs-display: a display controller (class 0x0380) with a framebuffer BAR.
    Bochs,
    /// ivshmem-plain with an 8 GiB shared-memory BAR backed by a sparse file.
    Ivshmem,
    /// QEMU's educational device (MMIO registers, DMA, INTx and MSI).
    Edu,
    /// bochs-display and edu as functions 0 and 1 of one slot behind a PCIe root port
    /// of L0's: like a GPU and its audio function, neither has FLR and they share
    /// their bus and IOMMU group, so the display resets only by a bus (hot) reset
    /// that reaches both. The display is passed through; edu stays bound to vfio-pci
    /// in L1 as its group sibling.
    DisplayPair,
    /// A GPU-like multi-function slot: bochs-display at function 0 and an ICH9 HD-audio
    /// controller at function 1 (like a GPU and its HDMI audio), in one IOMMU group.
    /// Found by its display function; passed through as a whole slot.
    GpuSlot,
}

impl Device {
    /// Every device, in the order L0 adds them.
    pub const ALL: [Device; 6] = [
        Device::Nvme,
        Device::Bochs,
        Device::Ivshmem,
        Device::Edu,
        Device::GpuSlot,
        Device::DisplayPair,
    ];

    /// PCI vendor and device id of the HD-audio function of [`Device::GpuSlot`].
    pub const HDA_ID: (u16, u16) = (0x8086, 0x293e);

    /// PCI vendor and device id: how L1 and L2 find the device in sysfs.
    pub fn pci_id(self) -> (u16, u16) {
        match self {
            Device::Nvme => (0x1b36, 0x0010),
            Device::Bochs | Device::DisplayPair => (0x1234, 0x1111),
            Device::Ivshmem => (0x1af4, 0x1110),
            Device::Edu => (0x1234, 0x11e8),
            Device::GpuSlot => (0x1234, 0x1111),
        }
    }

    /// Short name, used in scenario definitions and messages.
    pub fn name(self) -> &'static str {
        match self {
            Device::Nvme => "nvme",
            Device::Bochs => "bochs-display",
            Device::Ivshmem => "ivshmem",
            Device::Edu => "edu",
            Device::GpuSlot => "gpu-slot",
            Device::DisplayPair => "display-pair",
        }
    }

    /// Functions of the device's slot when it is passed through as a whole slot
    /// (`"host": "DDDD:BB:DD"`); `None` for a single function.
    pub fn slot_functions(self) -> Option<u8> {
        match self {
            Device::GpuSlot => Some(2),
            _ => None,
        }
    }

    /// PCI vendor:device ids of the other functions of its IOMMU group, which L1 binds
    /// to vfio-pci too (the group must be viable and a hot reset needs them there).
    pub fn group_siblings(self) -> &'static [(u16, u16)] {
        match self {
            Device::DisplayPair => &[(0x1234, 0x11e8)],
            _ => &[],
        }
    }

    /// The stock modules L2 needs to drive the device.
    pub fn l2_modules(self) -> &'static [ModuleRequest] {
        const NVME: &[ModuleRequest] = &[ModuleRequest::required(&["nvme"])];
        const BOCHS: &[ModuleRequest] = &[ModuleRequest::required(&["bochs", "bochs-drm"])];
        const GPU_SLOT: &[ModuleRequest] = &[
            ModuleRequest::required(&["bochs", "bochs-drm"]),
            ModuleRequest::required(&["snd-hda-intel"]),
        ];
        match self {
            Device::Nvme => NVME,
            Device::Bochs | Device::DisplayPair => BOCHS,
            Device::GpuSlot => GPU_SLOT,
            Device::Ivshmem | Device::Edu => &[],
        }
    }
}
