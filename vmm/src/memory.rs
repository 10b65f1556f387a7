//! Guest RAM: plans the regions of the platform layout (BRIEF.md, "Platform contract":
//! RAM below the 32-bit PCI hole, the rest from 4 GiB), maps them in this process and
//! hands them to vm-memory.
//!
//! Backing: `"none"` is anonymous memory aligned to 2 MiB with `MADV_HUGEPAGE` (THP);
//! `"2M"`/`"1G"` are hugetlb pages from the host pool via `MAP_HUGETLB | MAP_HUGE_*`, no
//! hugetlbfs mount needed. The pool is checked *before* mapping so a short pool is a clear
//! error, never a SIGBUS when the guest first touches a page.

use std::io;
use std::path::PathBuf;

use arch::x86_64::layout;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::spec::{HugePages, MemorySpec};

/// Alignment of anonymous RAM, so THP can back guest 2 MiB pages with host 2 MiB pages.
const THP_ALIGN: usize = 2 << 20;

/// Failures setting up guest RAM. All of them are host-resource problems.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "hugepages not available: need {need} {page} pages, {free} free; \
         echo {want} > {}", nr_path.display()
    )]
    HugepagesUnavailable {
        need: u64,
        free: u64,
        want: u64,
        page: HugePages,
        nr_path: PathBuf,
    },
    #[error("the host kernel has no {page} hugepage pool ({} missing)", path.display())]
    HugepagePoolMissing { page: HugePages, path: PathBuf },
    #[error("cannot read {}", path.display())]
    ReadPool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot map {size:#x} bytes of guest RAM ({page} pages)")]
    Map {
        size: u64,
        page: HugePages,
        #[source]
        source: io::Error,
    },
    #[error("cannot prefault guest RAM")]
    Prefault(#[source] io::Error),
    #[error("cannot describe guest RAM to vm-memory: {0}")]
    Regions(String),
}

/// One guest RAM range: guest physical start and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub guest: u64,
    pub len: u64,
}

/// RAM ranges for `size` bytes per the arch layout: below the 32-bit PCI hole, then the
/// rest from 4 GiB.
pub fn plan_regions(size: u64) -> Vec<RamRange> {
    layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| RamRange {
            guest: start.0,
            len,
        })
        .collect()
}

/// Directory of the host pool for `page` (None for plain anonymous memory).
pub fn hugepage_pool_dir(page: HugePages) -> Option<PathBuf> {
    let kib = match page {
        HugePages::None => return None,
        HugePages::Size2M => 2048,
        HugePages::Size1G => 1048576,
    };
    Some(PathBuf::from(format!(
        "/sys/kernel/mm/hugepages/hugepages-{kib}kB"
    )))
}

/// Check the host pool holds `bytes` worth of free `page` pages.
pub fn check_hugepage_pool(page: HugePages, bytes: u64) -> Result<(), MemoryError> {
    let Some(dir) = hugepage_pool_dir(page) else {
        return Ok(());
    };
    if !dir.is_dir() {
        return Err(MemoryError::HugepagePoolMissing { page, path: dir });
    }
    let read = |name: &str| -> Result<u64, MemoryError> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| MemoryError::ReadPool {
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| MemoryError::ReadPool {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
        })
    };
    let need = bytes.div_ceil(page.page_size());
    let free = read("free_hugepages")?;
    if free < need {
        let total = read("nr_hugepages")?;
        let want = total + (need - free);
        return Err(MemoryError::HugepagesUnavailable {
            need,
            free,
            want,
            page,
            nr_path: dir.join("nr_hugepages"),
        });
    }
    Ok(())
}

/// A mapping this module created and must unmap.
#[derive(Debug)]
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by `GuestRam`; the raw pointer is only used to
// unmap it on drop, which `GuestRam` does after every user of guest memory is gone.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state touched through `&self`.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is exactly a mapping created by `map_anonymous` or
        // `map_hugetlb` and not unmapped elsewhere.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Guest RAM: the vm-memory view plus the mappings behind it.
///
/// The regions are built with `MmapRegion::build_raw` (not owning), and the mappings are
/// unmapped when this is dropped. Do not keep clones of [`GuestRam::memory`] beyond the
/// life of the `GuestRam` (the VM drops it last, after joining vCPU threads).
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    ranges: Vec<RamRange>,
    // Declared after `memory` so vm-memory's handles drop before the unmapping.
    mappings: Vec<Mapping>,
}

impl GuestRam {
    /// Map and (optionally) prefault RAM for `spec` laid out as `ranges`.
    pub fn new(spec: &MemorySpec, ranges: &[RamRange]) -> Result<GuestRam, MemoryError> {
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        check_hugepage_pool(spec.hugepages, total)?;
        let mut mappings = Vec::new();
        let mut regions = Vec::new();
        for r in ranges {
            let len = usize::try_from(r.len).map_err(|_| MemoryError::Map {
                size: r.len,
                page: spec.hugepages,
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            })?;
            let map = match spec.hugepages {
                HugePages::None => map_anonymous(len, spec.prefault)?,
                page => map_hugetlb(len, page, spec.prefault)?,
            };
            regions.push(region(&map, r.guest, spec.hugepages)?);
            mappings.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(GuestRam {
            memory,
            ranges: ranges.to_vec(),
            mappings,
        })
    }

    /// The guest memory, for loaders and device emulation.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The RAM ranges, in guest physical order.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// (guest physical start, host address, length) per region, for KVM memory slots.
    pub fn slots(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.ranges
            .iter()
            .zip(&self.mappings)
            .map(|(r, m)| (r.guest, m.addr as u64, r.len))
    }
}

fn region(map: &Mapping, guest: u64, page: HugePages) -> Result<GuestRegionMmap, MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: `map` is a live mapping of `map.len` bytes with these protections; `GuestRam`
    // keeps it alive for as long as the region (see its docs).
    let mmap = unsafe { MmapRegion::build_raw(map.addr.cast(), map.len, prot, flags) }
        .map_err(|e| MemoryError::Regions(e.to_string()))?;
    let mut mmap = mmap;
    mmap.set_hugetlbfs(page != HugePages::None);
    GuestRegionMmap::new(mmap, GuestAddress(guest))
        .ok_or_else(|| MemoryError::Regions(format!("region at {guest:#x} overflows")))
}

/// Anonymous private memory, 2 MiB aligned, THP requested, optionally populated.
fn map_anonymous(len: usize, prefault: bool) -> Result<Mapping, MemoryError> {
    let err = |source| MemoryError::Map {
        size: len as u64,
        page: HugePages::None,
        source,
    };
    let reserve = len
        .checked_add(THP_ALIGN)
        .ok_or_else(|| err(io::Error::from_raw_os_error(libc::ENOMEM)))?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), reserve, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(err(io::Error::last_os_error()));
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(THP_ALIGN);
    let (head, tail) = (aligned - start, reserve - (aligned - start) - len);
    // SAFETY: head and tail are the unused ends of the mapping just created; trimming them
    // leaves exactly `aligned..aligned+len` mapped.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    let map = Mapping {
        addr: aligned as *mut libc::c_void,
        len,
    };
    // SAFETY: advice on our own mapping; failure only means no THP (not fatal).
    if unsafe { libc::madvise(map.addr, len, libc::MADV_HUGEPAGE) } != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) failed: {}",
            io::Error::last_os_error()
        );
    }
    if prefault {
        populate(&map)?;
    }
    Ok(map)
}

/// Private hugetlb memory from the host pool. Without MAP_NORESERVE the kernel reserves
/// the pages at mmap time, so a short pool fails here (ENOMEM) rather than with SIGBUS.
fn map_hugetlb(len: usize, page: HugePages, prefault: bool) -> Result<Mapping, MemoryError> {
    let size_flag = match page {
        HugePages::Size1G => libc::MAP_HUGE_1GB,
        _ => libc::MAP_HUGE_2MB,
    };
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | size_flag;
    if prefault {
        flags |= libc::MAP_POPULATE;
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh anonymous hugetlb mapping at an address of the kernel's choosing.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        let source = io::Error::last_os_error();
        return Err(MemoryError::Map {
            size: len as u64,
            page,
            source,
        });
    }
    Ok(Mapping { addr: raw, len })
}

/// Fault every page in now; MADV_POPULATE_WRITE (Linux 5.14) or touching each 4 KiB page.
fn populate(map: &Mapping) -> Result<(), MemoryError> {
    // SAFETY: advice on our own read-write mapping.
    if unsafe { libc::madvise(map.addr, map.len, libc::MADV_POPULATE_WRITE) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(MemoryError::Prefault(e));
    }
    let base = map.addr.cast::<u8>();
    for off in (0..map.len).step_by(4096) {
        // SAFETY: `off < len`, inside our private read-write mapping that nobody else uses
        // yet; writing zero over zero-filled memory changes nothing but residency.
        unsafe { base.add(off).write_volatile(0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    const GIB: u64 = 1 << 30;

    #[test]
    fn small_ram_is_one_low_region() {
        let v = plan_regions(512 << 20);
        assert_eq!(
            v,
            vec![RamRange {
                guest: 0,
                len: 512 << 20
            }]
        );
    }

    #[test]
    fn ram_exactly_filling_low_is_one_region() {
        assert_eq!(plan_regions(3 * GIB).len(), 1);
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let v = plan_regions(5 * GIB);
        assert_eq!(
            v,
            vec![
                RamRange {
                    guest: 0,
                    len: 3 * GIB
                },
                RamRange {
                    guest: 4 * GIB,
                    len: 2 * GIB
                }
            ]
        );
    }

    #[test]
    fn pool_dir_names_match_sysfs() {
        assert_eq!(hugepage_pool_dir(HugePages::None), None);
        let d = hugepage_pool_dir(HugePages::Size2M).unwrap();
        assert!(d.ends_with("hugepages-2048kB"));
        let d = hugepage_pool_dir(HugePages::Size1G).unwrap();
        assert!(d.ends_with("hugepages-1048576kB"));
    }

    #[test]
    fn anonymous_ram_maps_aligned_and_is_usable() {
        let spec = MemorySpec {
            size_mib: 4,
            hugepages: HugePages::None,
            prefault: true,
        };
        let ranges = plan_regions(4 << 20);
        let ram = GuestRam::new(&spec, &ranges).unwrap();
        let (_, host, len) = ram.slots().next().unwrap();
        assert_eq!(host % THP_ALIGN as u64, 0);
        assert_eq!(len, 4 << 20);
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x3ffffc))
            .unwrap();
        assert_eq!(
            ram.memory()
                .read_obj::<u32>(GuestAddress(0x3ffffc))
                .unwrap(),
            0xdead_beef
        );
        assert!(ram.memory().address_in_range(GuestAddress(0x3fffff)));
        assert!(!ram.memory().address_in_range(GuestAddress(0x400000)));
    }

    #[test]
    fn short_hugepage_pool_is_reported_before_mapping() {
        // Ask for far more pages than any test host has free.
        let err = check_hugepage_pool(HugePages::Size2M, 1 << 50).unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::HugepagesUnavailable {
                    need: 0x2000_0000,
                    ..
                } | MemoryError::HugepagePoolMissing { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn anonymous_needs_no_pool() {
        check_hugepage_pool(HugePages::None, 1 << 50).unwrap();
    }
}
