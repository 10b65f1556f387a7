//! The VFIO type1 IOMMU container, which maps host memory for device DMA
//! (Documentation/driver-api/vfio.rst, include/uapi/linux/vfio.h:
//! VFIO_TYPE1v2_IOMMU, VFIO_IOMMU_MAP_DMA/UNMAP_DMA, VFIO_IOMMU_GET_INFO with
//! the VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE capability).
//!
//! A mapping pins every page, which is why the memlock limit must cover guest
//! RAM; guest RAM's mapping is [`crate::dma::GuestDma`]. Hardware sits behind
//! [`DmaMapper`]; tests use a recording fake.

use std::io;

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, VFIO_BASE, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::ioctl_io_nr;

use crate::error::{Error, Result};
use crate::group::{Groups, VfioFds};

ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);

/// An inclusive range of IO virtual addresses the IOMMU translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IovaRange {
    pub start: u64,
    /// Last valid address (inclusive, as the kernel reports it).
    pub end: u64,
}

impl IovaRange {
    /// True when `[base, base + size)` lies inside this range.
    pub fn contains(&self, base: u64, size: u64) -> bool {
        size > 0
            && base >= self.start
            && base
                .checked_add(size - 1)
                .is_some_and(|last| last <= self.end)
    }
}

/// Maps host memory into the IOMMU for device DMA.
pub trait DmaMapper: Send + Sync {
    /// Map `[host_addr, host_addr + size)` at `iova`, readable and writable by devices.
    ///
    /// # Safety
    /// The host range must stay mapped until [`DmaMapper::unmap`] succeeds for
    /// it, and must only be accessed through volatile or raw-pointer operations
    /// (guest RAM through vm-memory), since devices write it at any time.
    unsafe fn map(&self, iova: u64, size: u64, host_addr: u64) -> io::Result<()>;
    /// Remove the mapping made at `iova` with `size`.
    fn unmap(&self, iova: u64, size: u64) -> io::Result<()>;
    /// The IOVA ranges the IOMMU accepts; empty when the kernel does not say.
    fn iova_ranges(&self) -> io::Result<Vec<IovaRange>>;
}

/// A VFIO container (one IOMMU domain shared by all passed-through groups).
pub struct Container {
    groups: Groups,
}

impl Container {
    /// The container from `fds` (a launcher's) or /dev/vfio/vfio, checked to offer
    /// VFIO_TYPE1v2_IOMMU. `kvm_vfio` is the KVM VFIO pseudo-device
    /// (KVM_DEV_TYPE_VFIO), which tells KVM about non-coherent DMA; groups are added to
    /// it as they are attached. Groups not in `fds` are opened under `dev_vfio`.
    pub fn open(
        fds: VfioFds,
        dev_vfio: &std::path::Path,
        kvm_vfio: Option<kvm_ioctls::DeviceFd>,
    ) -> Result<Self> {
        let groups = Groups::open(fds, dev_vfio, kvm_vfio).map_err(Error::OpenContainer)?;
        Ok(Container { groups })
    }

    /// The groups, for opening devices (attaching their group first).
    pub(crate) fn groups(&self) -> &Groups {
        &self.groups
    }
}

impl DmaMapper for Container {
    unsafe fn map(&self, iova: u64, size: u64, host_addr: u64) -> io::Result<()> {
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: host_addr,
            iova,
            size,
        };
        // SAFETY: `map` is a complete vfio_iommu_type1_dma_map the kernel only reads; the
        // caller upholds this trait method's contract on the host range it names.
        let ret = unsafe { ioctl_with_ref(self.groups.container(), VFIO_IOMMU_MAP_DMA(), &map) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: `unmap` is a vfio_iommu_type1_dma_unmap of argsz bytes (no bitmap);
        // the kernel writes the unmapped size back into it.
        let ret = unsafe {
            ioctl_with_mut_ref(self.groups.container(), VFIO_IOMMU_UNMAP_DMA(), &mut unmap)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn iova_ranges(&self) -> io::Result<Vec<IovaRange>> {
        // First call learns the size of the capability chain, second fetches it.
        let mut buf = vec![0u8; 24];
        for _ in 0..2 {
            let argsz = u32::try_from(buf.len()).map_err(io::Error::other)?;
            buf[0..4].copy_from_slice(&argsz.to_ne_bytes());
            // SAFETY: `buf` is argsz bytes long and the kernel writes at most argsz
            // bytes of struct vfio_iommu_type1_info plus capabilities into it.
            let ret = unsafe {
                ioctl_with_mut_ptr(
                    self.groups.container(),
                    VFIO_IOMMU_GET_INFO(),
                    buf.as_mut_ptr(),
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            let want = u32_at(&buf, 0).unwrap_or(0) as usize;
            if want <= buf.len() {
                break;
            }
            buf.resize(want, 0);
        }
        Ok(parse_iova_ranges(&buf))
    }
}

pub(crate) fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

pub(crate) fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
    let b = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

/// Walk the capability chain of a `vfio_iommu_type1_info` buffer for the IOVA
/// range capability. The walk is bounded (offsets must move forward and stay in
/// the buffer) so a malformed chain cannot loop.
pub fn parse_iova_ranges(buf: &[u8]) -> Vec<IovaRange> {
    let flags = u32_at(buf, 4).unwrap_or(0);
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Vec::new();
    }
    let mut off = u32_at(buf, 16).unwrap_or(0) as usize;
    let mut ranges = Vec::new();
    while off >= 24 && off < buf.len() {
        let (Some(hdr), Some(next)) = (u32_at(buf, off), u32_at(buf, off + 4)) else {
            break;
        };
        if hdr & 0xffff == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = u32_at(buf, off + 8).unwrap_or(0) as usize;
            for i in 0..n {
                let at = off + 16 + i * 16;
                match (u64_at(buf, at), u64_at(buf, at + 8)) {
                    (Some(start), Some(end)) => ranges.push(IovaRange { start, end }),
                    _ => break,
                }
            }
        }
        if (next as usize) <= off {
            break;
        }
        off = next as usize;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (capability ID, next offset, IOVA ranges as (start, end)).
    type CapSpec = (u16, u32, Vec<(u64, u64)>);

    /// vfio_iommu_type1_info (24 bytes) + caps, built as the kernel lays them out.
    fn info_with_caps(caps: &[CapSpec]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&VFIO_IOMMU_INFO_CAPS.to_ne_bytes());
        b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        for (id, next, ranges) in caps {
            b.extend_from_slice(&(*id as u32).to_ne_bytes());
            b.extend_from_slice(&next.to_ne_bytes());
            b.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            for (s, e) in ranges {
                b.extend_from_slice(&s.to_ne_bytes());
                b.extend_from_slice(&e.to_ne_bytes());
            }
        }
        b
    }

    #[test]
    fn parses_iova_ranges_from_the_capability_chain() {
        let buf = info_with_caps(&[(1, 0, vec![(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)])]);
        assert_eq!(
            parse_iova_ranges(&buf),
            vec![
                IovaRange {
                    start: 0,
                    end: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: (1 << 39) - 1
                }
            ]
        );
    }

    #[test]
    fn looping_capability_chain_terminates() {
        // The capability's `next` points back at itself.
        let buf = info_with_caps(&[(1, 24, vec![(0, 0xffff)])]);
        assert_eq!(
            parse_iova_ranges(&buf),
            vec![IovaRange {
                start: 0,
                end: 0xffff
            }]
        );
    }

    #[test]
    fn no_caps_flag_means_no_ranges() {
        let mut buf = info_with_caps(&[(1, 0, vec![(0, 0xffff)])]);
        buf[4..8].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_iova_ranges(&buf).is_empty());
    }

    #[test]
    fn truncated_range_array_is_cut_short() {
        let mut buf = info_with_caps(&[(1, 0, vec![(0, 0xffff), (0x10000, 0x1ffff)])]);
        buf.truncate(buf.len() - 8);
        assert_eq!(
            parse_iova_ranges(&buf),
            vec![IovaRange {
                start: 0,
                end: 0xffff
            }]
        );
    }

    #[test]
    fn iova_range_containment_is_inclusive_of_the_end() {
        let r = IovaRange {
            start: 0x1000,
            end: 0x1fff,
        };
        assert!(r.contains(0x1000, 0x1000));
        assert!(!r.contains(0x1000, 0x1001));
        assert!(!r.contains(0xfff, 2));
        assert!(!r.contains(0x1000, 0));
    }
}
