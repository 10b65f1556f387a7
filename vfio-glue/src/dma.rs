//! Guest RAM in the IOMMU: mapped at IOVA = guest physical address through a
//! [`DmaMapper`] (VFIO_IOMMU_MAP_DMA, which pins every page), possibly in the
//! background while the guest already runs, and unmapped when the last device lets go.
//!
//! A mapping made in the background is cut in chunks ([`dma_chunks`]) that the VMM's
//! threads map in any order; the devices' bus mastering waits for it: a function
//! whose guest sets Bus Master Enable before every chunk is in keeps the bit off in
//! the device ([`GuestDma::hold_bus_master`]), and the VMM releases it once the
//! mapping is complete (PCI Local Bus 3.0, 6.2.2: without Bus Master Enable a
//! function issues no memory or I/O requests, so it cannot reach unmapped memory).
//! The vCPUs wait meanwhile ([`GuestDma::bus_master_held`], [`GuestDma::wait`]), so
//! the guest never runs on with a write of the bit not yet in effect.

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use log::{error, info};
use resources::lock;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::container::{DmaMapper, IovaRange};
use crate::error::{Error, Result};

/// One guest RAM region (or chunk of one) as DMA sees it.
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

/// `regions` cut in chunks of `chunk` bytes rounded up to a multiple of `page` (so
/// that no host page, a 1 GiB one included, is split between two mappings); the last
/// chunk of a region may be shorter. Chunks start at region start + k * chunk.
pub fn dma_chunks(regions: &[RamRegion], chunk: u64, page: u64) -> Vec<RamRegion> {
    let step = chunk.max(1).div_ceil(page.max(1)) * page.max(1);
    regions
        .iter()
        .flat_map(|r| {
            (0..r.size.div_ceil(step)).map(move |i| RamRegion {
                gpa: r.gpa + i * step,
                size: step.min(r.size - i * step),
                host_addr: r.host_addr + i * step,
            })
        })
        .collect()
}

/// Adjacent mappings `(iova, size)` merged into as few spans as possible: one
/// VFIO_IOMMU_UNMAP_DMA may cover several whole mappings (type1 v2 only refuses a
/// range that cuts one), so teardown unmaps each span in one call.
pub fn merged_spans(mapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted = mapped.to_vec();
    sorted.sort_unstable();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (iova, size) in sorted {
        match spans.last_mut() {
            Some((start, len)) if *start + *len == iova => *len += size,
            _ => spans.push((iova, size)),
        }
    }
    spans
}

/// How far the mapping of guest RAM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaProgress {
    /// Chunks are still being mapped, or held bus mastering is being released.
    Mapping,
    /// All of RAM is mapped and every held Bus Master Enable is in the device.
    Ready,
    /// A chunk failed (or setup was stopped): the VM is being stopped.
    Failed,
}

/// Guest RAM mapped for DMA. Unmapped when dropped (after the devices that
/// hold it let go, so no device DMAs into unmapped memory). It keeps the guest
/// memory alive so the pinned host pages cannot be unmapped under the IOMMU.
pub struct GuestDma {
    mapper: Arc<dyn DmaMapper>,
    regions: Vec<RamRegion>,
    mapped: Mutex<Vec<(u64, u64)>>,
    /// Every chunk is mapped: a Bus Master Enable written from now on goes straight
    /// to the device.
    complete: AtomicBool,
    /// Some function holds its Bus Master Enable back until [`GuestDma::finish`].
    held: AtomicBool,
    progress: Mutex<DmaProgress>,
    changed: Condvar,
    _keep_alive: Box<dyn Any + Send + Sync>,
}

impl GuestDma {
    /// Check that every region of `mem` lies inside the IOVA ranges the IOMMU
    /// reports, mapping nothing yet: the caller maps the chunks
    /// ([`GuestDma::map_chunk`]), then calls [`GuestDma::set_complete`] and
    /// [`GuestDma::finish`].
    pub fn pending<M>(mapper: Arc<dyn DmaMapper>, mem: &M) -> Result<Arc<GuestDma>>
    where
        M: GuestMemoryBackend + Clone + Send + Sync + 'static,
    {
        let regions = ram_regions(mem)?;
        let ranges = mapper.iova_ranges().map_err(Error::IommuInfo)?;
        info!("IOMMU IOVA ranges: {ranges:x?}");
        check_inside(&regions, &ranges)?;
        Ok(Arc::new(GuestDma {
            mapper,
            regions,
            mapped: Mutex::new(Vec::new()),
            complete: AtomicBool::new(false),
            held: AtomicBool::new(false),
            progress: Mutex::new(DmaProgress::Mapping),
            changed: Condvar::new(),
            _keep_alive: Box::new(mem.clone()),
        }))
    }

    /// Map every region of `mem` now, one call per region. On failure nothing
    /// stays mapped.
    pub fn map<M>(mapper: Arc<dyn DmaMapper>, mem: &M) -> Result<Arc<GuestDma>>
    where
        M: GuestMemoryBackend + Clone + Send + Sync + 'static,
    {
        let dma = GuestDma::pending(mapper, mem)?;
        for r in dma.regions.clone() {
            dma.map_chunk(&r)?;
        }
        dma.set_complete();
        dma.finish(true);
        Ok(dma)
    }

    /// The RAM regions to map (cut them with [`dma_chunks`]).
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Map one chunk of [`GuestDma::regions`]. Safe to call from several threads.
    pub fn map_chunk(&self, c: &RamRegion) -> Result<()> {
        let inside = self.regions.iter().any(|r| {
            c.gpa >= r.gpa
                && c.gpa + c.size <= r.gpa + r.size
                && c.host_addr == r.host_addr + (c.gpa - r.gpa)
        });
        if !inside {
            return Err(Error::GuestRamHostAddress {
                iova: c.gpa,
                size: c.size,
            });
        }
        // SAFETY: `c` lies inside a region of the guest memory kept alive by
        // `_keep_alive` until after the unmap in `Drop`; vm-memory only accesses
        // guest RAM volatilely.
        if let Err(source) = unsafe { self.mapper.map(c.gpa, c.size, c.host_addr) } {
            let total = self.regions.iter().map(|r| r.size).sum();
            return Err(map_error(c, total, source));
        }
        lock(&self.mapped).push((c.gpa, c.size));
        Ok(())
    }

    /// Every chunk is mapped: from now on a Bus Master Enable reaches the device at
    /// once. Functions that held theirs back still hold it until released.
    pub fn set_complete(&self) {
        self.complete.store(true, Ordering::SeqCst);
    }

    /// True once [`GuestDma::set_complete`] was called.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Called by a function, under its own lock, when the guest sets Bus Master
    /// Enable: true when the bit must be held back (the mapping is not complete).
    pub fn hold_bus_master(&self) -> bool {
        if self.is_complete() {
            return false;
        }
        self.held.store(true, Ordering::SeqCst);
        true
    }

    /// The end of the mapping: `ok` after every held bit was released (Ready), or
    /// not (Failed: the bits stay off). Wakes every waiter.
    pub fn finish(&self, ok: bool) {
        let mut p = lock(&self.progress);
        *p = if ok {
            DmaProgress::Ready
        } else {
            DmaProgress::Failed
        };
        // Nothing is held once the mapping has ended: from here on every vCPU exit
        // checks one atomic, not the progress lock.
        self.held.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// True while a vCPU must not go back to the guest: some function holds its Bus
    /// Master Enable back and the mapping has not finished. One atomic load when no
    /// function held it, or once the mapping has ended.
    pub fn bus_master_held(&self) -> bool {
        self.held.load(Ordering::SeqCst) && *lock(&self.progress) == DmaProgress::Mapping
    }

    /// Wait at most `timeout` for the mapping to finish; its progress then.
    pub fn wait(&self, timeout: Duration) -> DmaProgress {
        let p = lock(&self.progress);
        let (p, _) = self
            .changed
            .wait_timeout_while(p, timeout, |p| *p == DmaProgress::Mapping)
            .unwrap_or_else(|e| e.into_inner());
        *p
    }

    /// The mappings in place, (iova, size), in the order they were made.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        lock(&self.mapped).clone()
    }

    /// Unmap everything still mapped, adjacent chunks in one call; errors are logged
    /// and the rest goes on (when the last handle is dropped).
    fn unmap_all(&self) {
        let mapped = std::mem::take(&mut *lock(&self.mapped));
        for (iova, size) in merged_spans(&mapped).into_iter().rev() {
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

impl Drop for GuestDma {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

/// ENOMEM from MAP_DMA is almost always the memlock limit; say so with numbers.
/// Reads only the limit (getrlimit): a mapping thread in the sandbox opens no file.
fn map_error(r: &RamRegion, total: u64, source: io::Error) -> Error {
    if source.raw_os_error() == Some(libc::ENOMEM) {
        let limit = crate::host::memlock_limit().ok().flatten();
        if let Err(e) = crate::host::memlock_verdict(total, limit, false) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, CallLog, FakeDmaMapper};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const TESTBED: IovaRange = IovaRange {
        start: 0,
        end: (1 << 39) - 1,
    };
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn mem(ranges: &[(u64, usize)]) -> GuestMemoryMmap {
        let r: Vec<_> = ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    #[test]
    fn maps_every_ram_region_at_its_guest_address() {
        let log = CallLog::default();
        let mapper = Arc::new(FakeDmaMapper::new(log.clone(), vec![TESTBED]));
        let dma = GuestDma::map(mapper, &mem(&[(0, 0x10000), (1 << 32, 0x20000)])).unwrap();
        assert_eq!(dma.mapped(), [(0, 0x10000), (1 << 32, 0x20000)]);
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

    fn region(gpa: u64, size: u64) -> RamRegion {
        RamRegion {
            gpa,
            size,
            host_addr: 0x7f00_0000_0000 + gpa,
        }
    }

    #[test]
    fn chunks_cover_each_region_in_page_multiples() {
        let c = dma_chunks(
            &[region(0, 300 * MIB), region(4 * GIB, 64 * MIB)],
            128 * MIB,
            2 * MIB,
        );
        let spans: Vec<(u64, u64)> = c.iter().map(|c| (c.gpa, c.size)).collect();
        assert_eq!(
            spans,
            vec![
                (0, 128 * MIB),
                (128 * MIB, 128 * MIB),
                (256 * MIB, 44 * MIB),
                (4 * GIB, 64 * MIB)
            ]
        );
        assert!(c.iter().all(|c| c.host_addr == 0x7f00_0000_0000 + c.gpa));
    }

    #[test]
    fn a_1g_page_is_never_split_between_chunks() {
        let c = dma_chunks(&[region(0, 3 * GIB)], 128 * MIB, GIB);
        let spans: Vec<(u64, u64)> = c.iter().map(|c| (c.gpa, c.size)).collect();
        assert_eq!(spans, vec![(0, GIB), (GIB, GIB), (2 * GIB, GIB)]);
    }

    #[test]
    fn adjacent_mappings_merge_into_one_span() {
        let m = [
            (128 * MIB, 128 * MIB),
            (0, 128 * MIB),
            (4 * GIB, MIB),
            (3 * GIB, MIB),
        ];
        assert_eq!(
            merged_spans(&m),
            vec![(0, 256 * MIB), (3 * GIB, MIB), (4 * GIB, MIB)]
        );
    }

    fn pending(log: &CallLog) -> Arc<GuestDma> {
        let mapper = Arc::new(FakeDmaMapper::new(log.clone(), vec![TESTBED]));
        GuestDma::pending(mapper, &mem(&[(0, 0x40000)])).unwrap()
    }

    #[test]
    fn chunks_mapped_apart_are_unmapped_in_one_call() {
        let log = CallLog::default();
        let dma = pending(&log);
        for c in dma_chunks(dma.regions(), 0x10000, 0x1000) {
            dma.map_chunk(&c).unwrap();
        }
        log.take();
        drop(dma);
        assert_eq!(
            log.calls(),
            vec![
                Call::DmaUnmap {
                    iova: 0,
                    size: 0x40000
                },
                Call::ContainerClosed
            ]
        );
    }

    #[test]
    fn a_chunk_outside_guest_ram_is_refused() {
        let log = CallLog::default();
        let dma = pending(&log);
        let mut c = dma.regions()[0];
        c.size += 0x1000;
        assert!(matches!(
            dma.map_chunk(&c),
            Err(Error::GuestRamHostAddress { .. })
        ));
        assert!(dma.mapped().is_empty());
    }

    #[test]
    fn bus_master_is_held_only_before_the_mapping_is_complete() {
        let dma = pending(&CallLog::default());
        assert!(!dma.bus_master_held());
        assert!(dma.hold_bus_master());
        assert!(dma.bus_master_held());
        dma.set_complete();
        assert!(!dma.hold_bus_master());
        // Still held until the VMM released the held bits and finished.
        assert!(dma.bus_master_held());
        dma.finish(true);
        assert!(!dma.bus_master_held());
        assert_eq!(dma.wait(Duration::ZERO), DmaProgress::Ready);
    }

    #[test]
    fn a_waiter_wakes_when_the_mapping_finishes() {
        let dma = pending(&CallLog::default());
        assert_eq!(dma.wait(Duration::from_millis(1)), DmaProgress::Mapping);
        let d2 = dma.clone();
        let waiter = std::thread::spawn(move || d2.wait(Duration::from_secs(60)));
        dma.finish(false);
        assert_eq!(waiter.join().unwrap(), DmaProgress::Failed);
        assert!(!dma.bus_master_held());
    }
}
