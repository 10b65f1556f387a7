//! The legacy VFIO container/group uAPI, issued directly (Documentation/driver-api/
//! vfio.rst, "Groups, Devices, and IOMMUs"; include/uapi/linux/vfio.h): the container
//! (/dev/vfio/vfio) checks the API version and offers VFIO_TYPE1v2_IOMMU; each group
//! (/dev/vfio/N) must be viable, joins the container (the first one sets the IOMMU
//! type) and the KVM VFIO pseudo-device, and hands out its devices' fds by name.
//!
//! Both the container and the groups come either from a path or from a descriptor a
//! privileged launcher opened ([`VfioFds`]): the uAPI never needs a path after that,
//! so a launcher can keep /dev/vfio to itself. vfio-ioctls (0.10) opens both by path
//! with no way to hand it a file, which is why this crate speaks the uAPI itself.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvm_bindings::{
    kvm_device_attr, KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, KVM_DEV_VFIO_GROUP_DEL,
};
use log::warn;
use resources::lock;
use vfio_bindings::bindings::vfio::{
    vfio_group_status, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_BASE, VFIO_GROUP_FLAGS_VIABLE,
    VFIO_TYPE,
};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE as u32, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE as u32, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);

/// Descriptors a privileged launcher opened for Strait: the container and groups by
/// number. What is missing here is opened by path.
#[derive(Debug, Default)]
pub struct VfioFds {
    pub container: Option<File>,
    pub groups: BTreeMap<u32, File>,
}

/// Why the container or a group could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("opening {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a VFIO container (VFIO_GET_API_VERSION answered {answer})")]
    NotContainer { answer: i32 },
    #[error("the VFIO container does not offer the type1v2 IOMMU")]
    NoType1v2,
    #[error("{what} (group {group})")]
    Ioctl {
        what: &'static str,
        group: u32,
        #[source]
        source: io::Error,
    },
    #[error("group {group} is not viable: a device in it is bound to a non-VFIO driver")]
    NotViable { group: u32 },
}

fn last_error(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Check that `file` is a VFIO container that offers type1v2.
pub fn check_container(file: &File) -> Result<(), GroupError> {
    // SAFETY: VFIO_GET_API_VERSION takes no argument; any fd may be asked.
    let answer = unsafe { ioctl(file, VFIO_GET_API_VERSION()) };
    if answer != VFIO_API_VERSION as i32 {
        return Err(GroupError::NotContainer { answer });
    }
    // SAFETY: VFIO_CHECK_EXTENSION takes an integer.
    let ret = unsafe { ioctl_with_val(file, VFIO_CHECK_EXTENSION(), VFIO_TYPE1v2_IOMMU.into()) };
    if ret != 1 {
        return Err(GroupError::NoType1v2);
    }
    Ok(())
}

/// `VFIO_GROUP_GET_STATUS` flags of `file`; fails on anything but a VFIO group.
pub fn group_status(file: &File) -> io::Result<u32> {
    let mut status = vfio_group_status {
        argsz: std::mem::size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: `status` is a vfio_group_status of argsz bytes the kernel fills.
    last_error(unsafe { ioctl_with_mut_ref(file, VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

fn open_rw(path: &Path) -> Result<File, GroupError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| GroupError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// The container with its attached groups. Dropping it takes each group out of KVM's
/// VFIO device and the container (the devices opened through it must be gone first).
pub struct Groups {
    container: File,
    kvm_vfio: Option<kvm_ioctls::DeviceFd>,
    dev_vfio: PathBuf,
    /// Launcher-given groups not yet attached.
    given: Mutex<BTreeMap<u32, File>>,
    attached: Mutex<Vec<(u32, File)>>,
}

impl Groups {
    /// The container from `fds` or opened at `dev_vfio`/vfio; groups come from `fds`
    /// or are opened at `dev_vfio`/N as devices need them.
    pub fn open(
        fds: VfioFds,
        dev_vfio: &Path,
        kvm_vfio: Option<kvm_ioctls::DeviceFd>,
    ) -> Result<Self, GroupError> {
        let given = fds.groups.len();
        let container = match fds.container {
            Some(f) => {
                log::info!("VFIO: container and {given} group(s) from the launcher");
                f
            }
            None => {
                if given > 0 {
                    log::info!("VFIO: {given} group(s) from the launcher");
                }
                open_rw(&dev_vfio.join("vfio"))?
            }
        };
        check_container(&container)?;
        Ok(Groups {
            container,
            kvm_vfio,
            dev_vfio: dev_vfio.to_path_buf(),
            given: Mutex::new(fds.groups),
            attached: Mutex::new(Vec::new()),
        })
    }

    /// The container, for DMA mapping and IOMMU info.
    pub fn container(&self) -> &File {
        &self.container
    }

    /// The attached groups, in order: the ones a hot reset may name.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = lock(&self.attached).iter().map(|(g, _)| *g).collect();
        ids.sort_unstable();
        ids
    }

    /// Run `f` with the fds of `groups` (for VFIO_DEVICE_PCI_HOT_RESET); fails if one is
    /// not attached.
    pub fn with_fds<T>(&self, groups: &[u32], f: impl FnOnce(&[RawFd]) -> T) -> io::Result<T> {
        let attached = lock(&self.attached);
        let fds = groups
            .iter()
            .map(|g| {
                attached
                    .iter()
                    .find_map(|(id, file)| (id == g).then(|| file.as_raw_fd()))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "IOMMU group not held"))?;
        Ok(f(&fds))
    }

    /// Attach `group` (if not yet) and open the device `name` (its PCI address) in it.
    pub fn open_device(&self, group: u32, name: &str) -> Result<File, GroupError> {
        let mut attached = lock(&self.attached);
        if !attached.iter().any(|(g, _)| *g == group) {
            let given = lock(&self.given).remove(&group);
            let file = match given {
                Some(f) => f,
                None => open_rw(&self.dev_vfio.join(group.to_string()))?,
            };
            self.attach(group, &file, attached.is_empty())?;
            attached.push((group, file));
        }
        let file = attached
            .iter()
            .find_map(|(g, f)| (*g == group).then_some(f))
            .ok_or(GroupError::NotViable { group })?;
        let cname = CString::new(name).map_err(|e| GroupError::Ioctl {
            what: "device name",
            group,
            source: io::Error::other(e),
        })?;
        // SAFETY: the argument is a NUL-terminated device name the kernel only reads.
        let fd = unsafe { ioctl_with_ptr(file, VFIO_GROUP_GET_DEVICE_FD(), cname.as_ptr()) };
        let fd = last_error(fd).map_err(|source| GroupError::Ioctl {
            what: "VFIO_GROUP_GET_DEVICE_FD",
            group,
            source,
        })?;
        // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn attach(&self, group: u32, file: &File, first: bool) -> Result<(), GroupError> {
        let io = |what| {
            move |source| GroupError::Ioctl {
                what,
                group,
                source,
            }
        };
        let flags = group_status(file).map_err(io("VFIO_GROUP_GET_STATUS"))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(GroupError::NotViable { group });
        }
        let cfd = self.container.as_raw_fd();
        // SAFETY: the argument points at the container's fd number, read by the kernel.
        let ret = unsafe { ioctl_with_ref(file, VFIO_GROUP_SET_CONTAINER(), &cfd) };
        last_error(ret).map_err(io("VFIO_GROUP_SET_CONTAINER"))?;
        let joined = || -> Result<(), GroupError> {
            if first {
                // SAFETY: VFIO_SET_IOMMU takes an integer.
                let ret = unsafe {
                    ioctl_with_val(&self.container, VFIO_SET_IOMMU(), VFIO_TYPE1v2_IOMMU.into())
                };
                last_error(ret).map_err(io("VFIO_SET_IOMMU"))?;
            }
            self.kvm_group(file, KVM_DEV_VFIO_GROUP_ADD)
                .map_err(io("KVM_DEV_VFIO_GROUP_ADD"))
        };
        if let Err(e) = joined() {
            // SAFETY: no argument; undoes the SET_CONTAINER above.
            unsafe { ioctl(file, VFIO_GROUP_UNSET_CONTAINER()) };
            return Err(e);
        }
        Ok(())
    }

    /// Add or remove `file` to/from KVM's VFIO device (it tells KVM about
    /// non-coherent DMA); nothing without one.
    fn kvm_group(&self, file: &File, op: u32) -> io::Result<()> {
        let Some(dev) = &self.kvm_vfio else {
            return Ok(());
        };
        let fd = file.as_raw_fd();
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_GROUP,
            attr: u64::from(op),
            addr: std::ptr::addr_of!(fd) as u64,
        };
        dev.set_device_attr(&attr)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for (group, file) in lock(&self.attached).drain(..).rev() {
            if let Err(e) = self.kvm_group(&file, KVM_DEV_VFIO_GROUP_DEL) {
                warn!("group {group}: KVM_DEV_VFIO_GROUP_DEL: {e}");
            }
            // SAFETY: no argument; the group's devices are closed by now.
            if unsafe { ioctl(&file, VFIO_GROUP_UNSET_CONTAINER()) } < 0 {
                warn!(
                    "group {group}: VFIO_GROUP_UNSET_CONTAINER: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// The VFIO group number of a `/sys/dev/char/MAJ:MIN` link target
/// (`../../devices/virtual/vfio/12`), `None` for any other device.
pub fn group_of_char_link(target: &Path) -> Option<u32> {
    let mut parts = target.components().rev();
    let name = parts.next()?.as_os_str().to_str()?;
    let class = parts.next()?.as_os_str();
    (class == "vfio").then(|| name.parse().ok()).flatten()
}

/// The VFIO group `file` is, from its device number, checked with GROUP_GET_STATUS.
pub fn group_of_file(file: &File) -> io::Result<u32> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = file.metadata()?;
    let not_group = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a VFIO group (/dev/vfio/N)",
        )
    };
    if !meta.file_type().is_char_device() {
        return Err(not_group());
    }
    let rdev = meta.rdev();
    let link = format!("/sys/dev/char/{}:{}", libc::major(rdev), libc::minor(rdev));
    let target = std::fs::read_link(link).map_err(|_| not_group())?;
    let group = group_of_char_link(&target).ok_or_else(not_group)?;
    group_status(file).map_err(|_| not_group())?;
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_number_comes_from_the_vfio_class_link() {
        let link = Path::new("../../devices/virtual/vfio/12");
        assert_eq!(group_of_char_link(link), Some(12));
        assert_eq!(
            group_of_char_link(Path::new("../../devices/virtual/misc/vfio")),
            None
        );
        assert_eq!(
            group_of_char_link(Path::new("../../devices/virtual/vfio/vfio")),
            None
        );
        assert_eq!(group_of_char_link(Path::new("12")), None);
    }

    #[test]
    fn a_file_that_is_not_a_group_is_refused() {
        let f = File::open("/dev/null").unwrap();
        assert!(group_of_file(&f).is_err());
        let f = File::open("/proc/self/status").unwrap();
        assert!(group_of_file(&f).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_container_is_refused() {
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(
            check_container(&f),
            Err(GroupError::NotContainer { .. })
        ));
    }
}
