//! The host half of the passthrough recipe, in order: check the list, probe
//! every device (driver, group viability, /dev/vfio/N), check the memlock
//! limit against guest RAM, open the container, open each device (which
//! attaches its group and sets the type1v2 IOMMU).
//!
//! The VMM then maps guest RAM ([`crate::dma::GuestDma::pending`], after at
//! least one device is open so the IOMMU is set) and builds one
//! [`crate::pci::VfioPciDevice`] per backend.

use std::sync::Arc;

use crate::addr::HostPciAddress;
use crate::container::Container;
use crate::device::VfioBackend;
use crate::error::Result;
use crate::host::{check_memlock, probe_device, HostDevice, HostPaths};

/// Devices opened through one container, ready for DMA mapping.
pub struct OpenedDevices {
    pub container: Arc<Container>,
    pub devices: Vec<(HostDevice, VfioBackend)>,
}

/// Check and open `addrs` for a guest with `ram_bytes` of RAM. `kvm_vfio` is
/// the KVM VFIO pseudo-device (KVM_DEV_TYPE_VFIO) the VMM created, if any.
/// Every check runs before anything is opened, so a bad setup fails with the
/// error that names its fix and leaves nothing half-open.
pub fn open_devices(
    paths: &HostPaths,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
    kvm_vfio: Option<kvm_ioctls::DeviceFd>,
) -> Result<OpenedDevices> {
    let hosts = addrs
        .iter()
        .map(|a| probe_device(paths, *a))
        .collect::<Result<Vec<_>>>()?;
    check_memlock(ram_bytes)?;
    let container = Arc::new(Container::open(kvm_vfio)?);
    let mut devices = Vec::with_capacity(hosts.len());
    for host in hosts {
        let backend = VfioBackend::open(&container, &host)?;
        devices.push((host, backend));
    }
    Ok(OpenedDevices { container, devices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::sysfs::fake::FakeSysfs;

    fn paths(fs: &FakeSysfs) -> HostPaths {
        HostPaths {
            sysfs: fs.sysfs(),
            dev_vfio: fs.root().join("dev-vfio"),
        }
    }

    #[test]
    fn host_problems_stop_before_the_container_opens() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(3));
        fs.add("0000:02:00.0", Some("nvme"), Some(4));
        let list = [
            "0000:01:00.0".parse().unwrap(),
            "0000:02:00.0".parse().unwrap(),
        ];
        let err = open_devices(&paths(&fs), &list, 1 << 30, None).err();
        assert!(matches!(err, Some(Error::NoGroupNode { .. })));
    }
}
