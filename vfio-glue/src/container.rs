//! The VFIO type1 IOMMU container and the DMA mapping of guest RAM into it
//! (Documentation/driver-api/vfio.rst, include/uapi/linux/vfio.h:
//! VFIO_TYPE1v2_IOMMU, VFIO_IOMMU_MAP_DMA/UNMAP_DMA, VFIO_IOMMU_GET_INFO with
//! the VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE capability).
//!
//! Guest RAM is mapped with IOVA = guest physical address, so a device the guest
//! programs with a guest physical address DMAs into the right host page. The
//! mapping pins every page, which is why the memlock limit must cover it.
//! Hardware sits behind [`DmaMapper`]; tests use a recording fake.

use std::any::Any;
use std::io;
use std::sync::Arc;

use log::{error, info};
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDeviceFd, VfioOps};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_io_nr;

use crate::error::{Error, Result};
use crate::hot_reset::HeldGroups;

ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

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
    inner: Arc<VfioContainer>,
    /// Duplicates of the attached groups' fds, for hot resets.
    groups: Arc<HeldGroups>,
}

impl Container {
    /// Open /dev/vfio/vfio and check it offers VFIO_TYPE1v2_IOMMU. `kvm_vfio` is
    /// the KVM VFIO pseudo-device (KVM_DEV_TYPE_VFIO), which tells KVM about
    /// non-coherent DMA; groups are added to it as they are attached.
    pub fn open(kvm_vfio: Option<kvm_ioctls::DeviceFd>) -> Result<Self> {
        let handle = kvm_vfio.map(|fd| Arc::new(VfioDeviceFd::new_from_kvm(fd)));
        let inner = VfioContainer::new(handle).map_err(Error::OpenContainer)?;
        Ok(Container {
            inner: Arc::new(inner),
            groups: Arc::default(),
        })
    }

    /// The group fds this container's devices may name in a hot reset.
    pub(crate) fn held_groups(&self) -> Arc<HeldGroups> {
        self.groups.clone()
    }

    /// The handle vfio-ioctls opens devices through (attaching their group).
    pub(crate) fn ops(&self) -> Arc<dyn VfioOps> {
        self.inner.clone()
    }
}

fn vfio_to_io(e: vfio_ioctls::VfioError) -> io::Error {
    use std::error::Error as _;
    let errno = e
        .source()
        .and_then(|s| s.downcast_ref::<vmm_sys_util::errno::Error>())
        .map(|s| s.errno());
    match errno {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::other(e),
    }
}

impl DmaMapper for Container {
    unsafe fn map(&self, iova: u64, size: u64, host_addr: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(io::Error::other)?;
        // SAFETY: the caller upholds the mapping contract of this trait method,
        // which is the contract of vfio_dma_map.
        unsafe { self.inner.vfio_dma_map(iova, size, host_addr as *mut u8) }.map_err(vfio_to_io)
    }

    fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(io::Error::other)?;
        self.inner.vfio_dma_unmap(iova, size).map_err(vfio_to_io)
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
                ioctl_with_mut_ptr(&*self.inner, VFIO_IOMMU_GET_INFO(), buf.as_mut_ptr())
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

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

fn u64_at(buf: &[u8], off: usize) -> Option<u64> {
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

/// One guest RAM region as DMA sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub gpa: u64,
    pub size: u64,
    pub host_addr: u64,
}

/// The RAM regions of a vm-memory guest memory.
pub fn ram_regions<M: GuestMemoryBackend>(mem: &M) -> Result<Vec<RamRegion>> {
    mem.iter()
        .map(|r| {
            let (gpa, size) = (r.start_addr().raw_value(), r.len());
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| Error::GuestRamHostAddress { iova: gpa, size })?;
            Ok(RamRegion {
                gpa,
                size,
                host_addr: host as u64,
            })
        })
        .collect()
}

/// Guest RAM mapped for DMA. Unmapped when dropped (after the devices that
/// hold it let go, so no device DMAs into unmapped memory). It keeps the guest
/// memory alive so the pinned host pages cannot be unmapped under the IOMMU.
pub struct GuestDma {
    mapper: Arc<dyn DmaMapper>,
    mapped: Vec<(u64, u64)>,
    _keep_alive: Box<dyn Any + Send + Sync>,
}

impl GuestDma {
    /// Map every region of `mem` at IOVA = guest physical address, inside the
    /// IOVA ranges the IOMMU reports. On failure nothing stays mapped.
    pub fn map<M>(mapper: Arc<dyn DmaMapper>, mem: &M) -> Result<Arc<GuestDma>>
    where
        M: GuestMemoryBackend + Clone + Send + Sync + 'static,
    {
        let regions = ram_regions(mem)?;
        let ranges = mapper.iova_ranges().map_err(Error::IommuInfo)?;
        info!("IOMMU IOVA ranges: {ranges:x?}");
        check_inside(&regions, &ranges)?;
        let mut dma = GuestDma {
            mapper,
            mapped: Vec::new(),
            _keep_alive: Box::new(mem.clone()),
        };
        let total: u64 = regions.iter().map(|r| r.size).sum();
        for r in &regions {
            // SAFETY: `r` is a region of `mem`, kept alive by `_keep_alive` until
            // after unmap; vm-memory only accesses guest RAM volatilely.
            let res = unsafe { dma.mapper.map(r.gpa, r.size, r.host_addr) };
            if let Err(source) = res {
                return Err(map_error(r, total, source));
            }
            dma.mapped.push((r.gpa, r.size));
        }
        Ok(Arc::new(dma))
    }

    /// The mappings in place, (iova, size).
    pub fn mapped(&self) -> &[(u64, u64)] {
        &self.mapped
    }

    /// Unmap everything still mapped; errors are logged and the rest goes on.
    fn unmap_all(&mut self) {
        for (iova, size) in self.mapped.drain(..).rev() {
            if let Err(e) = self.mapper.unmap(iova, size) {
                error!(
                    "{}",
                    Error::UnmapDma {
                        iova,
                        size,
                        source: e
                    }
                );
            }
        }
    }
}

/// ENOMEM from MAP_DMA is almost always the memlock limit; say so with numbers.
fn map_error(r: &RamRegion, total: u64, source: io::Error) -> Error {
    if source.raw_os_error() == Some(libc::ENOMEM) {
        if let Err(e) = crate::host::check_memlock(total) {
            return e;
        }
    }
    Error::MapDma {
        iova: r.gpa,
        size: r.size,
        source,
    }
}

fn check_inside(regions: &[RamRegion], ranges: &[IovaRange]) -> Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    for r in regions {
        if !ranges.iter().any(|x| x.contains(r.gpa, r.size)) {
            return Err(Error::IovaOutOfRange {
                iova: r.gpa,
                size: r.size,
                ranges: ranges.to_vec(),
            });
        }
    }
    Ok(())
}

impl Drop for GuestDma {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, CallLog, FakeDmaMapper};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const TESTBED: IovaRange = IovaRange {
        start: 0,
        end: (1 << 39) - 1,
    };

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

    fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let r: Vec<_> = ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
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
    fn maps_every_ram_region_at_its_guest_address() {
        let log = CallLog::default();
        let mapper = Arc::new(FakeDmaMapper::new(log.clone(), vec![TESTBED]));
        let dma = GuestDma::map(mapper, &mem(&[(0, 0x10000), (1 << 32, 0x20000)])).unwrap();
        assert_eq!(dma.mapped(), &[(0, 0x10000), (1 << 32, 0x20000)]);
        assert_eq!(
            log.calls(),
            vec![
                Call::DmaMap {
                    iova: 0,
                    size: 0x10000
                },
                Call::DmaMap {
                    iova: 1 << 32,
                    size: 0x20000
                }
            ]
        );
    }

    #[test]
    fn ram_outside_iova_ranges_is_rejected_before_mapping() {
        let log = CallLog::default();
        let mapper = Arc::new(FakeDmaMapper::new(log.clone(), vec![TESTBED]));
        let err = GuestDma::map(mapper, &mem(&[(0, 0x1000), (1 << 39, 0x1000)])).err();
        assert!(matches!(err, Some(Error::IovaOutOfRange { iova, .. }) if iova == 1 << 39));
        assert_eq!(log.calls(), vec![Call::ContainerClosed]);
    }

    #[test]
    fn failed_map_unmaps_what_was_mapped() {
        let log = CallLog::default();
        let mut mapper = FakeDmaMapper::new(log.clone(), vec![]);
        mapper.fail_at = Some((0x100000, libc::EINVAL));
        let err = GuestDma::map(Arc::new(mapper), &mem(&[(0, 0x1000), (0x100000, 0x1000)])).err();
        assert!(matches!(err, Some(Error::MapDma { iova: 0x100000, .. })));
        assert_eq!(
            log.calls(),
            vec![
                Call::DmaMap {
                    iova: 0,
                    size: 0x1000
                },
                Call::DmaUnmap {
                    iova: 0,
                    size: 0x1000
                },
                Call::ContainerClosed
            ]
        );
    }

    #[test]
    fn dropping_the_mapping_unmaps_then_closes_the_container() {
        let log = CallLog::default();
        let mapper = Arc::new(FakeDmaMapper::new(log.clone(), vec![TESTBED]));
        let dma = GuestDma::map(mapper, &mem(&[(0, 0x1000), (0x2000, 0x1000)])).unwrap();
        log.take();
        drop(dma);
        assert_eq!(
            log.calls(),
            vec![
                Call::DmaUnmap {
                    iova: 0x2000,
                    size: 0x1000
                },
                Call::DmaUnmap {
                    iova: 0,
                    size: 0x1000
                },
                Call::ContainerClosed
            ]
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
