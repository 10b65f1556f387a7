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
    }

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
