//! The host as `strait check` reads it: files under a root directory (`/` on a real
//! host, a temporary tree in tests), read-only. A file that cannot be read reads as
//! absent; each rule decides what absence means.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use vfio_glue::sysfs::Sysfs;

/// A host's file system seen from `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot::new("/")
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// `rel` (written without a leading `/`, e.g. `proc/cmdline`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The file's text, trimmed; `None` when it is missing or unreadable.
    pub fn read(&self, rel: &str) -> Option<String> {
        read_trimmed(&self.path(rel))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Names in directory `rel`, sorted; empty when it is missing.
    pub fn list(&self, rel: &str) -> Vec<String> {
        list_dir(&self.path(rel))
    }

    /// Whether kernel module `name` is loaded or built in (`/sys/module/<name>`).
    pub fn module_loaded(&self, name: &str) -> bool {
        self.exists(&format!("sys/module/{name}"))
    }

    /// Open `rel` for reading and writing and close it again (what a VMM does with
    /// /dev/kvm); nothing is written.
    pub fn open_rw(&self, rel: &str) -> io::Result<()> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(rel))
            .map(drop)
    }

    /// The PCI view of `sys/`, shared with the VFIO host checks.
    pub fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.path("sys"))
    }
}

/// A file's text, trimmed; `None` when missing or unreadable.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
}

/// Names in directory `dir`, sorted; empty when it is missing.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake host tree: sysfs (through vfio-glue's fake, so PCI links look the
    //! way the VFIO checks expect), procfs files and /dev nodes as plain files.

    use vfio_glue::sysfs::fake::FakeSysfs;

    use super::HostRoot;
    use crate::check::{Finding, Status};

    /// `f` has `status` and a fix that mentions `needle`.
    pub fn assert_fix(f: &Finding, status: Status, needle: &str) {
        assert_eq!(f.status, status, "{f:?}");
        let fix = f.fix.as_deref().unwrap_or_default();
        assert!(fix.contains(needle), "{needle:?} not in {fix:?}");
    }

    /// A PCI function to add to the fake tree.
    pub struct Pci<'a> {
        pub name: &'a str,
        pub class: &'a str,
        pub driver: Option<&'a str>,
        pub group: Option<u32>,
    }

    pub struct FakeHost {
        pub sys: FakeSysfs,
    }

    impl FakeHost {
        /// An empty tree: no file at all.
        pub fn empty() -> Self {
            FakeHost {
                sys: FakeSysfs::under_sys(),
            }
        }

        pub fn root(&self) -> HostRoot {
            HostRoot::new(self.sys.dir.as_path())
        }

        /// Write `text` at `rel`, creating parent directories.
        pub fn write(&self, rel: &str, text: &str) {
            let path = self.root().path(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, text).unwrap();
        }

        pub fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.root().path(rel)).unwrap();
        }

        pub fn remove(&self, rel: &str) {
            let path = self.root().path(rel);
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }

        /// Add a PCI function with its class, driver and IOMMU group.
        pub fn pci(&self, dev: Pci<'_>) {
            self.sys.add(dev.name, dev.driver, dev.group);
            self.sys.set_attr(dev.name, "class", dev.class);
        }

        pub fn pci_attr(&self, name: &str, attr: &str, text: &str) {
            self.sys.set_attr(name, attr, text);
        }

        /// An Intel host ready for passthrough: KVM, VT-d with interrupt remapping,
        /// the VFIO modules, a GPU on vfio-pci alone in its group at full link
        /// speed with FLR, 16 GiB of free 2 MiB pages.
        pub fn ready() -> Self {
            let host = FakeHost::empty();
            host.write("dev/kvm", "");
            for m in ["kvm", "kvm_intel", "vfio", "vfio_pci"] {
                host.mkdir(&format!("sys/module/{m}"));
            }
            let type1 = "sys/module/vfio_iommu_type1/parameters";
            host.write(&format!("{type1}/allow_unsafe_interrupts"), "N\n");
            host.write(&format!("{type1}/dma_entry_limit"), "65535\n");
            host.write("sys/firmware/acpi/tables/DMAR", "");
            host.write("sys/class/iommu/dmar0/intel-iommu/ecap", "f050da\n");
            host.write("proc/cmdline", "ro quiet intel_iommu=on iommu=pt\n");
            host.write(
                "proc/cpuinfo",
                "vendor_id\t: GenuineIntel\naddress sizes\t: 46 bits physical, 48 bits virtual\n",
            );
            let pool = "sys/kernel/mm/hugepages/hugepages-2048kB";
            host.write(&format!("{pool}/nr_hugepages"), "8192\n");
            host.write(&format!("{pool}/free_hugepages"), "8192\n");
            let gpu = "0000:01:00.0";
            host.pci(Pci {
                name: gpu,
                class: "0x030000",
                driver: Some("vfio-pci"),
                group: Some(1),
            });
            for (attr, text) in [
                ("reset_method", "flr bus"),
                ("max_link_speed", "16.0 GT/s PCIe"),
                ("current_link_speed", "16.0 GT/s PCIe"),
                ("max_link_width", "16"),
                ("current_link_width", "16"),
                ("numa_node", "-1"),
                (
                    "resource",
                    "0x00000000fa000000 0x00000000faffffff 0x0000000000040200\n\
                     0x0000003800000000 0x0000003fffffffff 0x000000000014220c\n",
                ),
            ] {
                host.pci_attr(gpu, attr, text);
            }
            host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;

    #[test]
    fn reads_lists_and_opens_under_the_root() {
        let host = FakeHost::empty();
        host.write("proc/cmdline", "quiet intel_iommu=on\n");
        host.mkdir("sys/module/kvm");
        host.write("dev/kvm", "");
        let root = host.root();
        assert_eq!(
            root.read("/proc/cmdline").as_deref(),
            Some("quiet intel_iommu=on")
        );
        assert!(root.module_loaded("kvm"));
        assert!(!root.module_loaded("kvm_intel"));
        assert_eq!(root.list("sys/module"), vec!["kvm"]);
        assert!(root.list("sys/class/iommu").is_empty());
        assert!(root.open_rw("dev/kvm").is_ok());
        assert!(root.open_rw("dev/vfio/vfio").is_err());
    }
}
