//! One VFIO device behind a small trait, [`VfioDeviceOps`]: region info (with
//! sparse mmap areas and the MSI-X-mappable capability), region read/write,
//! mmap, irq info, VFIO_DEVICE_SET_IRQS and VFIO_DEVICE_RESET
//! (include/uapi/linux/vfio.h). [`VfioBackend`] implements it over
//! vfio-ioctls; `fake::FakeDevice` implements it for tests.
//!
//! SET_IRQS is issued here rather than through vfio-ioctls' `enable_irq`,
//! which only sets whole blocks from vector 0: per-vector changes (an eventfd
//! of -1 detaches one vector) need `start`/`count` of our choosing.

use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::warn;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, VFIO_BASE, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl_io_nr;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::hot_reset::{self, HeldGroups, HotResetTarget};
use crate::mapping::HostMapping;

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
ioctl_io_nr!(
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    VFIO_TYPE as u32,
    VFIO_BASE + 12
);
ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_TYPE as u32, VFIO_BASE + 13);

/// VFIO region index of the ROM BAR and of config space (vfio.h VFIO_PCI_*_REGION_INDEX).
pub const ROM_REGION: u32 = 6;
pub const CONFIG_REGION: u32 = 7;

/// A byte range inside a region or BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

impl Span {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

/// What the kernel says about one region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// The region (or its sparse areas) may be mmap'ed.
    pub mmap: bool,
    /// VFIO_REGION_INFO_CAP_SPARSE_MMAP: only these areas may be mmap'ed.
    pub sparse_areas: Option<Vec<Span>>,
    /// VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the kernel would let the MSI-X table be mmap'ed.
    pub msix_mappable: bool,
}

/// Interrupt kinds of a PCI device (VFIO_PCI_*_IRQ_INDEX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqIndex {
    Intx = 0,
    Msi = 1,
    Msix = 2,
}

/// What the kernel says about one interrupt index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    pub count: u32,
    pub eventfd: bool,
    pub maskable: bool,
    pub automasked: bool,
    /// The number of vectors cannot change while enabled (disable, then re-enable).
    pub noresize: bool,
}

/// One VFIO_DEVICE_SET_IRQS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqRequest<'a> {
    /// DATA_EVENTFD|ACTION_TRIGGER: vectors `start..start + fds.len()` signal
    /// these eventfds; `-1` detaches a vector. Enables the index if it was off.
    Trigger {
        index: IrqIndex,
        start: u32,
        fds: &'a [RawFd],
    },
    /// DATA_NONE|ACTION_TRIGGER with count 0: disable the whole index.
    Disable { index: IrqIndex },
    /// DATA_EVENTFD|ACTION_UNMASK: the kernel unmasks the (auto-masked) INTx
    /// line when `fd` is signalled, i.e. KVM's irqfd resample eventfd.
    Resample { index: IrqIndex, fd: RawFd },
}

/// The operations passthrough needs from one VFIO device.
pub trait VfioDeviceOps: Send {
    /// The device supports VFIO_DEVICE_RESET (FLR, PM or bus reset).
    fn reset_supported(&self) -> bool;
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()>;
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Map `[offset, offset + size)` of region `index` into this process.
    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<HostMapping>;
    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo>;
    fn set_irqs(&self, req: IrqRequest<'_>) -> io::Result<()>;
    fn reset(&self) -> io::Result<()>;
    /// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: every function a bus or slot reset of this
    /// one resets too (itself included), with its IOMMU group. ENODEV: there is none.
    fn hot_reset_info(&self) -> io::Result<Vec<HotResetTarget>>;
    /// The IOMMU groups this process holds, which a hot reset may name.
    fn held_groups(&self) -> Vec<u32>;
    /// VFIO_DEVICE_PCI_HOT_RESET naming `groups` (each one held).
    fn hot_reset(&self, groups: &[u32]) -> io::Result<()>;
}

/// A device opened through vfio-ioctls.
pub struct VfioBackend {
    /// Dropped by hand: see [`VfioBackend`]'s `Drop`.
    dev: ManuallyDrop<VfioDevice>,
    flags: u32,
    regions: Vec<Option<RegionInfo>>,
    /// The function's sysfs directory, which vfio-ioctls reads again on drop.
    sysfs_path: PathBuf,
    /// The container's group fds, for a hot reset.
    groups: Arc<HeldGroups>,
}

/// Whether vfio-ioctls can release the device at `sysfs_path`: its drop reads the
/// `iommu_group` link there and panics when it is gone (the function was removed from
/// the host meanwhile, e.g. hot-unplugged or its bus reset away).
fn group_link_present(sysfs_path: &Path) -> bool {
    sysfs_path.join("iommu_group").read_link().is_ok()
}

impl Drop for VfioBackend {
    fn drop(&mut self) {
        if group_link_present(&self.sysfs_path) {
            // SAFETY: dropped once, here; `dev` is not used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.dev) };
        } else {
            // Leaking the fds is the safe end: the kernel closes them (and releases the
            // group) when Strait exits, which it is about to.
            warn!(
                "{}: sysfs entry gone; leaving the device's release to process exit",
                self.sysfs_path.display()
            );
        }
    }
}

fn region_from(dev: &VfioDevice, index: u32) -> Option<RegionInfo> {
    let flags = dev.get_region_flags(index);
    // vfio-pci reports absent BARs (and the upper half of 64-bit BARs) with no flags.
    if flags == 0 {
        return None;
    }
    let mut info = RegionInfo {
        size: dev.get_region_size(index),
        readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
        writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
        mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        ..Default::default()
    };
    for cap in dev.get_region_caps(index) {
        match cap {
            VfioRegionInfoCap::SparseMmap(s) => {
                let areas = s.areas.iter().map(|a| Span {
                    offset: a.offset,
                    size: a.size,
                });
                info.sparse_areas = Some(areas.collect());
            }
            VfioRegionInfoCap::MsixMappable => info.msix_mappable = true,
            _ => {}
        }
    }
    Some(info)
}

impl VfioBackend {
    /// Open `host` through `container` (attaching its group and, for the
    /// first group, setting the type1v2 IOMMU) and read its regions.
    pub fn open(container: &Container, host: &HostDevice) -> Result<Self> {
        let dev = VfioDevice::new(&host.sysfs_path, container.ops(), false).map_err(|source| {
            Error::OpenDevice {
                addr: host.addr,
                source,
            }
        })?;
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the fd is a VFIO device and `info` is a vfio_device_info of argsz bytes.
        let ret = unsafe { ioctl_with_mut_ref(&dev, VFIO_DEVICE_GET_INFO(), &mut info) };
        if ret < 0 {
            warn!(
                "{}: VFIO_DEVICE_GET_INFO: {}",
                host.addr,
                io::Error::last_os_error()
            );
        }
        let regions = (0..=CONFIG_REGION).map(|i| region_from(&dev, i)).collect();
        let groups = container.held_groups();
        groups.keep(host.group);
        Ok(VfioBackend {
            dev: ManuallyDrop::new(dev),
            flags: info.flags,
            regions,
            sysfs_path: host.sysfs_path.clone(),
            groups,
        })
    }

    fn region(&self, index: u32, offset: u64, len: usize) -> io::Result<u64> {
        let info = self
            .regions
            .get(index as usize)
            .and_then(|r| r.as_ref())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such region"))?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > info.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "access past region end",
            ));
        }
        Ok(self.dev.get_region_offset(index) + offset)
    }
}

fn check_len(n: isize, want: usize) -> io::Result<()> {
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != want => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short access"))
        }
        _ => Ok(()),
    }
}

fn irq_flags(req: &IrqRequest<'_>) -> (IrqIndex, u32, u32, Vec<RawFd>) {
    match *req {
        IrqRequest::Trigger { index, start, fds } => (
            index,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            start,
            fds.to_vec(),
        ),
        IrqRequest::Disable { index } => (
            index,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            Vec::new(),
        ),
        IrqRequest::Resample { index, fd } => (
            index,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            vec![fd],
        ),
    }
}

/// struct vfio_irq_set followed by its eventfd array, as 32-bit words.
pub(crate) fn irq_set_words(req: &IrqRequest<'_>) -> Vec<u32> {
    let (index, flags, start, fds) = irq_flags(req);
    let argsz = (5 + fds.len()) * 4;
    let mut words = vec![argsz as u32, flags, index as u32, start, fds.len() as u32];
    words.extend(fds.iter().map(|&fd| fd as u32));
    words
}

/// The largest alignment a BAR's host mapping gets: a PUD (1 GiB) page.
const MAX_BAR_ALIGN: u64 = 1 << 30;

impl VfioDeviceOps for VfioBackend {
    fn reset_supported(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).cloned().flatten()
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let at = self.region(index, offset, data.len())?;
        // SAFETY: pread writes at most data.len() bytes into `data`.
        let n = unsafe {
            libc::pread(
                self.dev.as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        check_len(n, data.len())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let at = self.region(index, offset, data.len())?;
        // SAFETY: pwrite reads at most data.len() bytes from `data`.
        let n = unsafe {
            libc::pwrite(
                self.dev.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        check_len(n, data.len())
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<HostMapping> {
        let len = usize::try_from(size).map_err(io::Error::other)?;
        let at = self.region(index, offset, len)?;
        let info = self.region_info(index).unwrap_or_default();
        let mut prot = 0;
        if info.readable {
            prot |= libc::PROT_READ;
        }
        if info.writable {
            prot |= libc::PROT_WRITE;
        }
        // Aligned like the BAR in guest physical space (its size, up to 1 GiB), the span
        // at its offset in the BAR: see HostMapping::map_file_aligned.
        let align = info
            .size
            .checked_next_power_of_two()
            .unwrap_or(0)
            .min(MAX_BAR_ALIGN);
        HostMapping::map_file_aligned(
            self.dev.as_raw_fd(),
            at,
            len,
            prot,
            usize::try_from(align).unwrap_or(0),
            usize::try_from(offset).unwrap_or(0),
        )
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        let irq = self.dev.get_irq_info(index as u32)?;
        Some(IrqInfo {
            count: irq.count,
            eventfd: irq.flags & VFIO_IRQ_INFO_EVENTFD != 0,
            maskable: irq.flags & VFIO_IRQ_INFO_MASKABLE != 0,
            automasked: irq.flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
            noresize: irq.flags & VFIO_IRQ_INFO_NORESIZE != 0,
        })
    }

    fn set_irqs(&self, req: IrqRequest<'_>) -> io::Result<()> {
        let words = irq_set_words(&req);
        // SAFETY: `words` is a complete struct vfio_irq_set of argsz bytes
        // (header plus one 32-bit fd per vector); the kernel only reads it.
        let ret = unsafe { ioctl_with_ptr(&*self.dev, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument and the fd is a VFIO device.
        let ret = unsafe { ioctl(&*self.dev, VFIO_DEVICE_RESET()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn hot_reset_info(&self) -> io::Result<Vec<HotResetTarget>> {
        // The first call learns the count (ENOSPC), the second fetches the list.
        let mut buf = hot_reset::info_buffer(0);
        for _ in 0..2 {
            // SAFETY: `buf` is a struct vfio_pci_hot_reset_info of argsz bytes (its
            // first word); the kernel writes at most that many.
            let ret = unsafe {
                ioctl_with_mut_ptr(
                    &*self.dev,
                    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                    buf.as_mut_ptr(),
                )
            };
            if ret == 0 {
                return Ok(hot_reset::parse_info(&buf));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSPC) {
                return Err(err);
            }
            buf = hot_reset::info_buffer(hot_reset::info_count(&buf));
        }
        Err(io::Error::other("the hot reset list kept growing"))
    }

    fn held_groups(&self) -> Vec<u32> {
        self.groups.ids()
    }

    fn hot_reset(&self, groups: &[u32]) -> io::Result<()> {
        let ret = self.groups.with_fds(groups, |fds| {
            let words = hot_reset::reset_words(fds);
            // SAFETY: `words` is a complete struct vfio_pci_hot_reset of argsz bytes
            // naming open group fds; the kernel only reads it.
            unsafe { ioctl_with_ptr(&*self.dev, VFIO_DEVICE_PCI_HOT_RESET(), words.as_ptr()) }
        })?;
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_whose_sysfs_entry_is_gone_is_not_handed_to_vfio_ioctls_drop() {
        let dir = std::env::temp_dir().join(format!("strait-gone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!group_link_present(&dir));
        assert!(!group_link_present(&dir.join("missing")));
        std::os::unix::fs::symlink("../../kernel/iommu_groups/7", dir.join("iommu_group")).unwrap();
        assert!(group_link_present(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trigger_request_encodes_start_count_and_fds() {
        let fds = [10, -1, 12];
        let w = irq_set_words(&IrqRequest::Trigger {
            index: IrqIndex::Msix,
            start: 4,
            fds: &fds,
        });
        assert_eq!(
            w[..5],
            [
                32,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                2,
                4,
                3
            ]
        );
        assert_eq!(w[5..], [10, u32::MAX, 12]);
    }

    #[test]
    fn disable_request_has_count_zero_and_no_data() {
        let w = irq_set_words(&IrqRequest::Disable {
            index: IrqIndex::Msi,
        });
        assert_eq!(
            w,
            vec![
                20,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                1,
                0,
                0
            ]
        );
    }

    #[test]
    fn resample_request_uses_unmask_action() {
        let w = irq_set_words(&IrqRequest::Resample {
            index: IrqIndex::Intx,
            fd: 7,
        });
        assert_eq!(
            w,
            vec![
                24,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                0,
                1,
                7
            ]
        );
    }
}
