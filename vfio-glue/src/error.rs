//! Errors of the VFIO glue: host checks (sysfs, /dev/vfio, rlimits), container
//! and DMA mapping, device access. Each variant names the action that failed and
//! carries what a user needs to fix it; guest misbehaviour is never an error here.

use std::io;
use std::path::PathBuf;

use crate::addr::HostPciAddress;
use crate::container::IovaRange;

/// A device in an IOMMU group that keeps the group from being handed to VFIO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffender {
    /// sysfs name of the device (a PCI address for PCI devices).
    pub name: String,
    /// Driver it is bound to.
    pub driver: String,
    /// Another function of the same multi-function device as the one requested.
    pub sibling: bool,
}

impl std::fmt::Display for GroupOffender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = &self.name;
        write!(f, "{n} is bound to `{}`", self.driver)?;
        if self.sibling {
            write!(
                f,
                " (another function of the same multi-function device; the kernel groups \
                 functions without ACS together, so it must leave its driver too)"
            )?;
        }
        write!(f, ": {}", rebind_hint(n))
    }
}

/// Shell commands that move `name` to vfio-pci (Documentation/driver-api/vfio.rst).
pub fn rebind_hint(name: &str) -> String {
    format!(
        "`echo {name} > /sys/bus/pci/devices/{name}/driver/unbind; \
         echo vfio-pci > /sys/bus/pci/devices/{name}/driver_override; \
         echo {name} > /sys/bus/pci/drivers_probe`"
    )
}

fn list_offenders(list: &[GroupOffender]) -> String {
    list.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn mib(bytes: &u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// `DDDD:BB:DD`: the slot (physical device) `addr` is a function of.
pub fn slot_name(addr: &HostPciAddress) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}",
        addr.segment(),
        addr.bus(),
        addr.device()
    )
}

/// A host function of a slot and the driver it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMember {
    pub addr: HostPciAddress,
    pub driver: Option<String>,
}

fn list_members(list: &[SlotMember]) -> String {
    let found = list
        .iter()
        .map(|m| match &m.driver {
            Some(d) => format!("{} on {d}", m.addr),
            None => format!("{} on no driver", m.addr),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let fixes = list
        .iter()
        .filter(|m| !m.driver.as_deref().is_some_and(crate::host::is_vfio_driver))
        .map(|m| rebind_hint(&m.addr.to_string()))
        .collect::<Vec<_>>()
        .join("; ");
    format!("found {found}; every function passes through, so bind the others to vfio-pci: {fixes}")
}

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{addr}: no such PCI device ({path:?} is missing); `lspci -D` lists the host's devices"
    )]
    DeviceMissing { addr: HostPciAddress, path: PathBuf },

    #[error("{}: no such PCI device: no function {}.* under {path:?}; `lspci -D` lists the host's devices", slot_name(.slot), slot_name(.slot))]
    SlotMissing { slot: HostPciAddress, path: PathBuf },

    #[error("{}: not every function is on vfio-pci: {}", slot_name(.slot), list_members(.members))]
    SlotNotOnVfio {
        slot: HostPciAddress,
        members: Vec<SlotMember>,
    },

    #[error("{addr}: vendor {vendor:#06x}, class {class:#08x}: only an NVIDIA GPU (vendor 0x10de, class 0x03xxxx) takes a GPUDirect `clique`; drop `clique` from this entry or give it to the GPU function")]
    CliqueNotGpu {
        addr: HostPciAddress,
        vendor: u16,
        class: u32,
    },

    #[error("{addr}: bound to `{driver}`, not vfio-pci; rebind it with {}", rebind_hint(&addr.to_string()))]
    BoundToOtherDriver {
        addr: HostPciAddress,
        driver: String,
    },

    #[error("{addr}: not bound to any driver; bind it to vfio-pci (`modprobe vfio-pci`, then `echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; echo {addr} > /sys/bus/pci/drivers_probe`)")]
    NotBound { addr: HostPciAddress },

    #[error("{addr}: has no IOMMU group; enable the IOMMU (`intel_iommu=on` or `amd_iommu=on` on the host kernel command line)")]
    NoIommuGroup { addr: HostPciAddress },

    #[error("{addr}: IOMMU group {group} is not viable for VFIO: {}", list_offenders(.offenders))]
    GroupNotViable {
        addr: HostPciAddress,
        group: u32,
        offenders: Vec<GroupOffender>,
    },

    #[error("{addr}: {path:?} does not exist; is vfio-pci loaded and the device bound to it?")]
    NoGroupNode { addr: HostPciAddress, path: PathBuf },

    #[error("{addr}: no permission to open {path:?}; run as root or give this user the node (`chown $USER {}`)", .path.display())]
    NoPermission {
        addr: HostPciAddress,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: {path:?} is busy: another process (another VM?) holds IOMMU group {group}")]
    GroupBusy {
        addr: HostPciAddress,
        group: u32,
        path: PathBuf,
    },

    #[error("{addr}: cannot open {path:?}")]
    OpenGroupNode {
        addr: HostPciAddress,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("RLIMIT_MEMLOCK is {} MiB but DMA mapping pins all {} MiB of guest RAM; raise it (`ulimit -l {}` in the shell, `LimitMEMLOCK={}` in a systemd unit) or run with CAP_IPC_LOCK", mib(.current), mib(.need), .need.div_ceil(1024), .need)]
    MemlockTooLow { need: u64, current: u64 },

    #[error("reading {path:?}")]
    ReadSysfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("opening the VFIO container /dev/vfio/vfio")]
    OpenContainer(#[source] vfio_ioctls::VfioError),

    #[error("{addr}: opening the device through VFIO")]
    OpenDevice {
        addr: HostPciAddress,
        #[source]
        source: vfio_ioctls::VfioError,
    },

    #[error("reading the IOMMU's IOVA ranges (VFIO_IOMMU_GET_INFO)")]
    IommuInfo(#[source] io::Error),

    #[error("guest RAM {iova:#x}+{size:#x} lies outside the IOVA ranges the IOMMU accepts ({ranges:x?}); use less memory")]
    IovaOutOfRange {
        iova: u64,
        size: u64,
        ranges: Vec<IovaRange>,
    },

    #[error("guest RAM {iova:#x}+{size:#x} has no host mapping")]
    GuestRamHostAddress { iova: u64, size: u64 },

    #[error("DMA-mapping guest RAM {iova:#x}+{size:#x}")]
    MapDma {
        iova: u64,
        size: u64,
        #[source]
        source: io::Error,
    },

    #[error("DMA-unmapping {iova:#x}+{size:#x}")]
    UnmapDma {
        iova: u64,
        size: u64,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: VFIO region {index} (config space) missing or unreadable")]
    ConfigRegion { addr: HostPciAddress, index: u32 },

    #[error("{addr}: mmap of region {index} at {offset:#x}+{size:#x}")]
    MmapRegion {
        addr: HostPciAddress,
        index: u32,
        offset: u64,
        size: u64,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: VFIO_DEVICE_SET_IRQS on irq index {index}")]
    SetIrqs {
        addr: HostPciAddress,
        index: u32,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: wiring {what} interrupts to KVM")]
    WireIrqs {
        addr: HostPciAddress,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: cannot present BAR {index} to the guest")]
    SetupBar {
        addr: HostPciAddress,
        index: u8,
        #[source]
        source: devices::pci::PciError,
    },

    #[error("{addr}: cannot place BAR {index} at {gpa:#x}")]
    PlaceBar {
        addr: HostPciAddress,
        index: u8,
        gpa: u64,
        #[source]
        source: devices::pci::PciError,
    },

    #[error("{addr}: cannot emulate the device's {what} capability")]
    EmulateCap {
        addr: HostPciAddress,
        what: &'static str,
        #[source]
        source: devices::pci::PciError,
    },

    #[error("{addr}: cannot add the GPUDirect P2P clique capability")]
    Clique {
        addr: HostPciAddress,
        #[source]
        source: crate::pci::CliqueError,
    },

    #[error("{addr}: VFIO_DEVICE_RESET")]
    Reset {
        addr: HostPciAddress,
        #[source]
        source: io::Error,
    },

    #[error(
        "{addr}: not reset: it has no FLR or PM reset, and a bus reset would also reset \
         {blocker} (IOMMU group {group}), which Strait does not hold; pass every function \
         of that bus through to this VM (all of group {group} included) or give {addr} \
         another reset method; device state may leak between VMs"
    )]
    HotResetBlocked {
        addr: HostPciAddress,
        blocker: HostPciAddress,
        group: u32,
    },

    #[error(
        "{addr}: no reset mechanism (no FLR or PM reset, and VFIO offers no bus or slot \
         reset for it); device state may leak between VMs"
    )]
    NoResetMethod { addr: HostPciAddress },

    #[error("{addr}: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")]
    HotResetInfo {
        addr: HostPciAddress,
        #[source]
        source: io::Error,
    },

    #[error("{addr}: VFIO_DEVICE_PCI_HOT_RESET of IOMMU groups {groups:?}")]
    HotReset {
        addr: HostPciAddress,
        groups: Vec<u32>,
        #[source]
        source: io::Error,
    },

    #[error(
        "{addr}: the card does not answer after its reset (config space {}); it is stuck. \
         Try another reset method (`cat /sys/bus/pci/devices/{addr}/reset_method`, then \
         e.g. `echo bus > /sys/bus/pci/devices/{addr}/reset_method`) or power-cycle the host",
        if source.is_some() { "unreadable" } else { "reads vendor ID 0xffff" }
    )]
    DeviceStuck {
        addr: HostPciAddress,
        #[source]
        source: Option<io::Error>,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
