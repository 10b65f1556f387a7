//! Read-only queries of the host's sysfs for VFIO: the PCI functions, a device's
//! driver, IOMMU group, reset methods and other attributes, and the members of an
//! IOMMU group (Documentation/ABI/testing/sysfs-bus-pci, sysfs-kernel-iommu_groups).
//!
//! The root is a path prefix so that tests build a fake tree in a temporary
//! directory; production uses `/sys`.

use std::io;
use std::path::{Path, PathBuf};

use devices::pci::PortLink;

use crate::addr::HostPciAddress;
use crate::error::{Error, Result};

/// A sysfs tree rooted at `root` (normally `/sys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/sys")
    }
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::ReadSysfs {
        path: path.to_path_buf(),
        source,
    }
}

/// The last component of a symlink's target, or `None` when `link` does not exist.
fn link_name(link: &Path) -> Result<Option<String>> {
    match std::fs::read_link(link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(link)(e)),
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `/sys/bus/pci/devices/<addr>`: what VFIO opens the device by.
    pub fn device_dir(&self, addr: &HostPciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr.to_string())
    }

    fn group_devices_dir(&self, group: u32) -> PathBuf {
        self.root
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices")
    }

    /// The driver `addr` is bound to, `None` when unbound.
    pub fn driver(&self, addr: &HostPciAddress) -> Result<Option<String>> {
        link_name(&self.device_dir(addr).join("driver"))
    }

    /// The IOMMU group of `addr`, `None` when the device has none (IOMMU off).
    pub fn iommu_group(&self, addr: &HostPciAddress) -> Result<Option<u32>> {
        let link = self.device_dir(addr).join("iommu_group");
        let Some(name) = link_name(&link)? else {
            return Ok(None);
        };
        let group = name.parse().map_err(|_| {
            read_err(&link)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("iommu_group link names {name:?}, not a number"),
            ))
        })?;
        Ok(Some(group))
    }

    /// sysfs names of every device in `group`, sorted.
    pub fn group_members(&self, group: u32) -> Result<Vec<String>> {
        let dir = self.group_devices_dir(group);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(read_err(&dir))? {
            let entry = entry.map_err(read_err(&dir))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Driver of a group member named as in [`Sysfs::group_members`].
    pub fn member_driver(&self, group: u32, name: &str) -> Result<Option<String>> {
        link_name(&self.group_devices_dir(group).join(name).join("driver"))
    }

    /// Every PCI function on the host, sorted; names that are not PCI addresses
    /// are skipped.
    pub fn pci_devices(&self) -> Result<Vec<HostPciAddress>> {
        let dir = self.root.join("bus/pci/devices");
        let mut addrs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(read_err(&dir))? {
            let entry = entry.map_err(read_err(&dir))?;
            if let Ok(addr) = entry.file_name().to_string_lossy().parse() {
                addrs.push(addr);
            }
        }
        addrs.sort();
        Ok(addrs)
    }

    /// The text of attribute `name` of `addr` (`class`, `numa_node`, `resource`,
    /// ...), trimmed; `None` when the kernel does not publish it.
    pub fn attr(&self, addr: &HostPciAddress, name: &str) -> Option<String> {
        std::fs::read_to_string(self.device_dir(addr).join(name))
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The PCIe link above `addr`: its own `current_link_speed`/`current_link_width`,
    /// else its upstream port's (the parent in the device tree); `None` when neither
    /// reports one (a root-complex integrated endpoint, a conventional PCI device).
    pub fn upstream_link(&self, addr: &HostPciAddress) -> Option<PortLink> {
        let dir = self.device_dir(addr);
        let read = |d: &Path| {
            let attr = |n: &str| std::fs::read_to_string(d.join(n)).ok();
            PortLink::from_sysfs(&attr("current_link_speed")?, &attr("current_link_width")?)
        };
        read(&dir).or_else(|| {
            let parent = std::fs::canonicalize(&dir).ok()?.parent()?.to_path_buf();
            read(&parent)
        })
    }

    /// Reset methods the kernel found for `addr` (`flr`, `pm`, `bus`, ...), in
    /// the order it tries them. `None` when the kernel does not publish the
    /// file (before 5.15); an empty list when the device has no reset.
    pub fn reset_methods(&self, addr: &HostPciAddress) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.device_dir(addr).join("reset_method")).ok()?;
        Some(text.split_whitespace().map(str::to_string).collect())
    }
}

#[cfg(any(test, feature = "fakes"))]
pub mod fake {
    //! A fake sysfs tree: the symlinks VFIO's checks follow, nothing more.

    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    use vmm_sys_util::tempdir::TempDir;

    use super::Sysfs;

    /// A sysfs tree in a temporary directory, removed on drop.
    pub struct FakeSysfs {
        pub dir: TempDir,
        root: PathBuf,
    }

    impl Default for FakeSysfs {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FakeSysfs {
        /// The tree at the top of the temporary directory.
        pub fn new() -> Self {
            let dir = TempDir::new().expect("tempdir");
            let root = dir.as_path().to_path_buf();
            FakeSysfs { dir, root }
        }

        /// The tree at `<tempdir>/sys`, for a fake host that also holds `proc/`
        /// and `dev/` next to it.
        pub fn under_sys() -> Self {
            let dir = TempDir::new().expect("tempdir");
            let root = dir.as_path().join("sys");
            std::fs::create_dir_all(&root).expect("mkdir sys");
            FakeSysfs { dir, root }
        }

        /// The sysfs root (`/sys` on a real host).
        pub fn root(&self) -> &Path {
            &self.root
        }

        pub fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.root())
        }

        /// Add PCI function `name`, bound to `driver`, in `group`.
        pub fn add(&self, name: &str, driver: Option<&str>, group: Option<u32>) {
            let root = self.root();
            let dev = root.join("devices/pci0000:00").join(name);
            std::fs::create_dir_all(&dev).expect("mkdir dev");
            let bus_dir = root.join("bus/pci/devices");
            std::fs::create_dir_all(&bus_dir).expect("mkdir bus");
            symlink(&dev, bus_dir.join(name)).expect("bus link");
            if let Some(drv) = driver {
                let d = root.join("bus/pci/drivers").join(drv);
                std::fs::create_dir_all(&d).expect("mkdir drv");
                symlink(&d, dev.join("driver")).expect("driver link");
            }
            if let Some(g) = group {
                let gdir = root.join("kernel/iommu_groups").join(g.to_string());
                std::fs::create_dir_all(gdir.join("devices")).expect("mkdir group");
                symlink(&gdir, dev.join("iommu_group")).expect("group link");
                symlink(&dev, gdir.join("devices").join(name)).expect("member link");
            }
        }

        pub fn set_reset_methods(&self, name: &str, methods: &str) {
            self.set_attr(name, "reset_method", methods);
        }

        pub fn set_attr(&self, name: &str, attr: &str, text: &str) {
            let dev = self.root().join("devices/pci0000:00").join(name);
            std::fs::write(dev.join(attr), text).expect("attribute");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysfs;
    use super::*;
    use devices::pci::LinkSpeed;

    #[test]
    fn upstream_link_is_the_devices_own_when_it_reports_one() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(1));
        fs.set_attr("0000:01:00.0", "current_link_speed", "16.0 GT/s PCIe\n");
        fs.set_attr("0000:01:00.0", "current_link_width", "16\n");
        let link = fs.sysfs().upstream_link(&a("0000:01:00.0")).unwrap();
        assert_eq!((link.speed, link.width), (LinkSpeed::Gen4, 16));
    }

    #[test]
    fn upstream_link_falls_back_to_the_parent_port() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(1));
        fs.set_attr("0000:01:00.0", "current_link_speed", "Unknown\n");
        let port = fs.root().join("devices/pci0000:00");
        std::fs::write(port.join("current_link_speed"), "8.0 GT/s PCIe\n").unwrap();
        std::fs::write(port.join("current_link_width"), "4\n").unwrap();
        let link = fs.sysfs().upstream_link(&a("0000:01:00.0")).unwrap();
        assert_eq!((link.speed, link.width), (LinkSpeed::Gen3, 4));
    }

    #[test]
    fn no_link_anywhere_is_none() {
        let fs = FakeSysfs::new();
        fs.add("0000:00:03.0", Some("vfio-pci"), Some(1));
        assert_eq!(fs.sysfs().upstream_link(&a("0000:00:03.0")), None);
    }

    fn a(s: &str) -> HostPciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn reads_driver_group_and_members() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(7));
        fs.add("0000:01:00.1", Some("snd_hda_intel"), Some(7));
        let s = fs.sysfs();
        assert_eq!(
            s.driver(&a("0000:01:00.0")).unwrap().as_deref(),
            Some("vfio-pci")
        );
        assert_eq!(s.iommu_group(&a("0000:01:00.0")).unwrap(), Some(7));
        assert_eq!(
            s.group_members(7).unwrap(),
            vec!["0000:01:00.0", "0000:01:00.1"]
        );
    }

    #[test]
    fn unbound_device_without_group_reads_as_none() {
        let fs = FakeSysfs::new();
        fs.add("0000:02:00.0", None, None);
        let s = fs.sysfs();
        assert_eq!(s.driver(&a("0000:02:00.0")).unwrap(), None);
        assert_eq!(s.iommu_group(&a("0000:02:00.0")).unwrap(), None);
    }

    #[test]
    fn reset_methods_split_on_whitespace() {
        let fs = FakeSysfs::new();
        fs.add("0000:02:00.0", None, None);
        let s = fs.sysfs();
        assert_eq!(s.reset_methods(&a("0000:02:00.0")), None);
        fs.set_reset_methods("0000:02:00.0", "flr bus\n");
        assert_eq!(
            s.reset_methods(&a("0000:02:00.0")),
            Some(vec!["flr".to_string(), "bus".to_string()])
        );
    }

    #[test]
    fn lists_pci_devices_sorted_and_reads_attributes() {
        let fs = FakeSysfs::new();
        fs.add("0000:02:00.0", None, None);
        fs.add("0000:01:00.0", None, None);
        fs.set_attr("0000:01:00.0", "class", "0x030000\n");
        let s = fs.sysfs();
        assert_eq!(
            s.pci_devices().unwrap(),
            vec![a("0000:01:00.0"), a("0000:02:00.0")]
        );
        assert_eq!(
            s.attr(&a("0000:01:00.0"), "class").as_deref(),
            Some("0x030000")
        );
        assert_eq!(s.attr(&a("0000:01:00.0"), "numa_node"), None);
    }

    #[test]
    fn missing_group_directory_is_a_read_error() {
        let fs = FakeSysfs::new();
        assert!(matches!(
            fs.sysfs().group_members(3),
            Err(Error::ReadSysfs { .. })
        ));
    }
}
