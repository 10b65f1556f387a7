//! One VFIO device behind a small trait, [`VfioDeviceOps`]: region info (with
//! sparse mmap areas and the MSI-X-mappable capability), region read/write,
//! mmap, irq info, VFIO_DEVICE_SET_IRQS and VFIO_DEVICE_RESET
//! (include/uapi/linux/vfio.h). [`VfioBackend`] implements it over the device fd
//! its group handed out ([`crate::group`]); `fake::FakeDevice` implements it for
//! tests.
//!
//! SET_IRQS takes `start`/`count` of our choosing: per-vector changes (an eventfd
//! of -1 detaches one vector) need them.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use log::warn;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_irq_info, VFIO_BASE, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl_io_nr;

use crate::container::{u32_at, u64_at, Container};
use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::hot_reset::{self, HotResetTarget};
use crate::mapping::HostMapping;

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
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

/// What a released function's operations become: its device fd is closed, so every
/// call fails with EBADF and nothing reaches the host device again.
pub(crate) struct Closed;

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl VfioDeviceOps for Closed {
    fn reset_supported(&self) -> bool {
        false
    }
    fn region_info(&self, _: u32) -> Option<RegionInfo> {
        None
    }
    fn region_read(&self, _: u32, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(closed())
    }
    fn region_write(&self, _: u32, _: u64, _: &[u8]) -> io::Result<()> {
        Err(closed())
    }
    fn mmap(&self, _: u32, _: u64, _: u64) -> io::Result<HostMapping> {
        Err(closed())
    }
    fn irq_info(&self, _: IrqIndex) -> Option<IrqInfo> {
        None
    }
    fn set_irqs(&self, _: IrqRequest<'_>) -> io::Result<()> {
        Err(closed())
    }
    fn reset(&self) -> io::Result<()> {
        Err(closed())
    }
    fn hot_reset_info(&self) -> io::Result<Vec<HotResetTarget>> {
        Err(closed())
    }
    fn held_groups(&self) -> Vec<u32> {
        Vec::new()
    }
    fn hot_reset(&self, _: &[u32]) -> io::Result<()> {
        Err(closed())
    }
}

/// A device opened through its VFIO group.
pub struct VfioBackend {
    file: File,
    flags: u32,
    /// Region info and the region's offset in the device fd, by region index.
    regions: Vec<Option<(RegionInfo, u64)>>,
    irqs: Vec<Option<IrqInfo>>,
    /// Keeps the group attached (and the container open) while the device is open; a
    /// hot reset names its groups' fds.
    container: Arc<Container>,
}

/// struct vfio_region_info (32 bytes) and the capability chain after it.
fn region_info_raw(file: &File, index: u32) -> io::Result<Vec<u64>> {
    // u64 words: the kernel writes u64 fields at 8-byte offsets.
    let mut buf = vec![0u64; 4];
    for _ in 0..2 {
        let argsz = (buf.len() * 8) as u32;
        // argsz, then flags 0 (first word); index, then cap_offset 0 (second).
        buf[0] = u64::from(argsz);
        buf[1] = u64::from(index);
        // SAFETY: `buf` is argsz bytes, a vfio_region_info with room for its caps; the
        // kernel writes at most argsz bytes.
        let ret =
            unsafe { ioctl_with_mut_ptr(file, VFIO_DEVICE_GET_REGION_INFO(), buf.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let want = (buf[0] & 0xffff_ffff) as usize;
        if want <= buf.len() * 8 {
            break;
        }
        buf.resize(want.div_ceil(8), 0);
    }
    Ok(buf)
}

fn as_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Region info from a `vfio_region_info` buffer: flags, size, offset and the sparse
/// mmap / MSI-X mappable capabilities. `None` for an absent region (no flags: vfio-pci
/// reports absent BARs and the upper half of 64-bit BARs so). The capability walk is
/// bounded: offsets must move forward and stay inside the buffer.
pub(crate) fn parse_region_info(buf: &[u8]) -> Option<(RegionInfo, u64)> {
    let flags = u32_at(buf, 4)?;
    if flags == 0 {
        return None;
    }
    let mut info = RegionInfo {
        size: u64_at(buf, 16)?,
        readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
        writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
        mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        ..Default::default()
    };
    let offset = u64_at(buf, 24)?;
    let mut at = if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
        u32_at(buf, 12).unwrap_or(0) as usize
    } else {
        0
    };
    while at >= 32 {
        let (Some(hdr), Some(next)) = (u32_at(buf, at), u32_at(buf, at + 4)) else {
            break;
        };
        match hdr & 0xffff {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let n = u32_at(buf, at + 8).unwrap_or(0) as usize;
                let areas = (0..n)
                    .map_while(|i| {
                        let a = at + 16 + i * 16;
                        Some(Span {
                            offset: u64_at(buf, a)?,
                            size: u64_at(buf, a + 8)?,
                        })
                    })
                    .collect();
                info.sparse_areas = Some(areas);
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => info.msix_mappable = true,
            _ => {}
        }
        if next as usize <= at {
            break;
        }
        at = next as usize;
    }
    Some((info, offset))
}

fn irq_info_raw(file: &File, index: u32) -> Option<IrqInfo> {
    let mut irq = vfio_irq_info {
        argsz: std::mem::size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `irq` is a vfio_irq_info of argsz bytes the kernel fills.
    let ret = unsafe { ioctl_with_mut_ref(file, VFIO_DEVICE_GET_IRQ_INFO(), &mut irq) };
    if ret < 0 {
        return None;
    }
    Some(IrqInfo {
        count: irq.count,
        eventfd: irq.flags & VFIO_IRQ_INFO_EVENTFD != 0,
        maskable: irq.flags & VFIO_IRQ_INFO_MASKABLE != 0,
        automasked: irq.flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
        noresize: irq.flags & VFIO_IRQ_INFO_NORESIZE != 0,
    })
}

impl VfioBackend {
    /// Open `host` through `container` (attaching its group and, for the first group,
    /// setting the type1v2 IOMMU) and read its regions and interrupts.
    pub fn open(container: &Arc<Container>, host: &HostDevice) -> Result<Self> {
        let file = container
            .groups()
            .open_device(host.group, &host.addr.to_string())
            .map_err(|source| Error::OpenDevice {
                addr: host.addr,
                source,
            })?;
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the fd is a VFIO device and `info` is a vfio_device_info of argsz bytes.
        let ret = unsafe { ioctl_with_mut_ref(&file, VFIO_DEVICE_GET_INFO(), &mut info) };
        if ret < 0 {
            warn!(
                "{}: VFIO_DEVICE_GET_INFO: {}",
                host.addr,
                io::Error::last_os_error()
            );
        }
        let regions = (0..=CONFIG_REGION.min(info.num_regions.saturating_sub(1)))
            .map(|i| {
                region_info_raw(&file, i)
                    .ok()
                    .and_then(|b| parse_region_info(&as_bytes(&b)))
            })
            .collect();
        let irqs = (0..info.num_irqs.min(3))
            .map(|i| irq_info_raw(&file, i))
            .collect();
        Ok(VfioBackend {
            file,
            flags: info.flags,
            regions,
            irqs,
            container: container.clone(),
        })
    }

    fn region(&self, index: u32, offset: u64, len: usize) -> io::Result<u64> {
        let (info, at) = self
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
        Ok(at + offset)
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
        let r = self.regions.get(index as usize)?.as_ref()?;
        Some(r.0.clone())
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let at = self.region(index, offset, data.len())?;
        // SAFETY: pread writes at most data.len() bytes into `data`.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
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
                self.file.as_raw_fd(),
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
            self.file.as_raw_fd(),
            at,
            len,
            prot,
            usize::try_from(align).unwrap_or(0),
            usize::try_from(offset).unwrap_or(0),
        )
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        *self.irqs.get(index as usize)?
    }

    fn set_irqs(&self, req: IrqRequest<'_>) -> io::Result<()> {
        let words = irq_set_words(&req);
        // SAFETY: `words` is a complete struct vfio_irq_set of argsz bytes
        // (header plus one 32-bit fd per vector); the kernel only reads it.
        let ret = unsafe { ioctl_with_ptr(&self.file, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument and the fd is a VFIO device.
        let ret = unsafe { ioctl(&self.file, VFIO_DEVICE_RESET()) };
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
                    &self.file,
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
        self.container.groups().ids()
    }

    fn hot_reset(&self, groups: &[u32]) -> io::Result<()> {
        let ret = self.container.groups().with_fds(groups, |fds| {
            let words = hot_reset::reset_words(fds);
            // SAFETY: `words` is a complete struct vfio_pci_hot_reset of argsz bytes
            // naming open group fds; the kernel only reads it.
            unsafe { ioctl_with_ptr(&self.file, VFIO_DEVICE_PCI_HOT_RESET(), words.as_ptr()) }
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

    /// vfio_region_info (32 bytes) as the kernel fills it, then `caps`.
    fn region_buf(flags: u32, size: u64, offset: u64, caps: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((32 + caps.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let cap_offset: u32 = if caps.is_empty() { 0 } else { 32 };
        b.extend_from_slice(&cap_offset.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(caps);
        b
    }

    fn cap(id: u16, next: u32, body: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&id.to_ne_bytes());
        c.extend_from_slice(&1u16.to_ne_bytes());
        c.extend_from_slice(&next.to_ne_bytes());
        c.extend_from_slice(body);
        c
    }

    #[test]
    fn region_info_reads_flags_size_offset_and_caps() {
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        let plain = region_buf(rw, 0x4000, 0x10_0000_0000, &[]);
        let (info, at) = parse_region_info(&plain).unwrap();
        assert_eq!(
            (info.size, at, info.readable, info.writable, info.mmap),
            (0x4000, 0x10_0000_0000, true, true, false)
        );
        assert_eq!(info.sparse_areas, None);
        // Sparse areas (0, 0x1000) and (0x3000, 0x1000), then MSI-X mappable.
        let mut body = Vec::new();
        body.extend_from_slice(&2u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        for (o, l) in [(0u64, 0x1000u64), (0x3000, 0x1000)] {
            body.extend_from_slice(&o.to_ne_bytes());
            body.extend_from_slice(&l.to_ne_bytes());
        }
        let sparse = cap(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, 32 + 48, &body);
        let msix = cap(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16, 0, &[]);
        let flags = rw | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
        let buf = region_buf(flags, 0x4000, 0, &[sparse, msix].concat());
        let (info, _) = parse_region_info(&buf).unwrap();
        assert!(info.mmap && info.msix_mappable);
        assert_eq!(
            info.sparse_areas,
            Some(vec![
                Span {
                    offset: 0,
                    size: 0x1000
                },
                Span {
                    offset: 0x3000,
                    size: 0x1000
                }
            ])
        );
    }

    #[test]
    fn absent_region_and_malformed_caps_are_safe() {
        assert_eq!(parse_region_info(&region_buf(0, 0x1000, 0, &[])), None);
        assert_eq!(parse_region_info(&[0u8; 8]), None);
        // A chain that points back at itself, and one that claims more areas than fit.
        let flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_CAPS;
        let looped = region_buf(flags, 1, 0, &cap(99, 32, &[]));
        assert!(parse_region_info(&looped).is_some());
        let mut body = 1000u32.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        let short = region_buf(
            flags,
            1,
            0,
            &cap(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, 0, &body),
        );
        let (info, _) = parse_region_info(&short).unwrap();
        assert_eq!(info.sparse_areas, Some(Vec::new()));
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
