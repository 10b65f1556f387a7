//! The host half of the passthrough recipe, in order: check the list, probe
//! every device (driver, group viability, /dev/vfio/N), check the memlock
//! limit against guest RAM, open the container, open each device (which
//! attaches its group and sets the type1v2 IOMMU). The container and groups a
//! launcher opened ([`VfioFds`]) are used instead of their device nodes.
//!
//! The VMM then maps guest RAM ([`crate::dma::GuestDma::pending`], after at
//! least one device is open so the IOMMU is set) and builds one
//! [`crate::pci::VfioPciDevice`] per backend.

use std::sync::Arc;

use crate::addr::HostPciAddress;
use crate::container::Container;
use crate::device::VfioBackend;
use crate::error::{Error, Result};
use crate::group::VfioFds;
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
    fds: VfioFds,
) -> Result<OpenedDevices> {
    let hosts = addrs
        .iter()
        .map(|a| probe_device(paths, *a))
        .collect::<Result<Vec<_>>>()?;
    if let Some(&group) = fds
        .groups
        .keys()
        .find(|g| !hosts.iter().any(|h| h.group == **g))
    {
        return Err(Error::GroupNotNeeded { group });
    }
    check_memlock(ram_bytes)?;
    let container = Arc::new(Container::open(fds, &paths.dev_vfio, kvm_vfio)?);
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
    use crate::sysfs::fake::FakeSysfs;

    fn paths(fs: &FakeSysfs) -> HostPaths {
        HostPaths {
            sysfs: fs.sysfs(),
            dev_vfio: fs.root().join("dev-vfio"),
            given_groups: Vec::new(),
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
        let err = open_devices(&paths(&fs), &list, 1 << 30, None, VfioFds::default()).err();
        assert!(matches!(err, Some(Error::NoGroupNode { .. })));
    }

    #[test]
    fn a_given_group_no_device_needs_is_refused() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(3));
        let mut p = paths(&fs);
        p.given_groups = vec![3, 9];
        let fds = VfioFds {
            container: None,
            groups: [(9, std::fs::File::open("/dev/null").unwrap())].into(),
        };
        let list = ["0000:01:00.0".parse().unwrap()];
        let err = open_devices(&p, &list, 1 << 30, None, fds).err();
        assert!(matches!(err, Some(Error::GroupNotNeeded { group: 9 })));
    }
}
