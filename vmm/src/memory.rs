//! Guest RAM: plans the regions of the platform layout (`arch::x86_64::layout`:
//! RAM below the 32-bit PCI hole, the rest from 4 GiB), maps them in this process and
//! hands them to vm-memory.
//!
//! Backing: `"none"` is anonymous memory aligned to 2 MiB with `MADV_HUGEPAGE` (THP);
//! `"2M"`/`"1G"` are hugetlb pages from the host pool via `MAP_HUGETLB | MAP_HUGE_*`, no
//! hugetlbfs mount needed. The pool is checked *before* mapping so a short pool is a clear
//! error, never a SIGBUS when the guest first touches a page.
//!
//! Prefaulting (the kernel zeroing every page) is most of the cost of RAM setup; it
//! runs in the background while the guest starts (`ram_setup`), each thread
//! [`populate`]-ing a page-aligned chunk at a time.

use std::io;
use std::path::{Path, PathBuf};

use arch::x86_64::layout;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::spec::{HugePages, MemorySpec};

/// Alignment of anonymous RAM, so THP can back guest 2 MiB pages with host 2 MiB pages.
const THP_ALIGN: usize = 2 << 20;
/// Base page size, the step of the touch fallback on anonymous memory.
const BASE_PAGE: usize = 4096;

/// Where the host kernel says how much memory it can give without swapping.
pub const MEMINFO: &str = "/proc/meminfo";

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
    #[error(
        "memory.size_mib: {size_mib} MiB is more than this host can back: \
         {available_mib} MiB available (MemAvailable in {}); \
         lower memory.size_mib or free host memory", meminfo.display()
    )]
    RamUnavailable {
        size_mib: u64,
        available_mib: u64,
        meminfo: PathBuf,
    },
    #[error("cannot read MemAvailable from {}", path.display())]
    ReadMeminfo {
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
    #[error("numa: cannot bind guest RAM {guest:#x}+{len:#x} to host node {node}")]
    BindNode {
        guest: u64,
        len: u64,
        node: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot describe guest RAM to vm-memory: {0}")]
    Regions(String),
}

/// Guest RAM `guest..guest + len` bound to host NUMA node `node`, faulted in by
/// threads on host CPUs `cpus` (the node's; none: wherever the scheduler puts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBind {
    pub guest: u64,
    pub len: u64,
    pub node: u32,
    pub cpus: Vec<usize>,
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

/// Check the host can back `bytes` of guest RAM on `page` pages: the hugetlb pool for
/// `"2M"`/`"1G"`, the host's available memory for `"none"`. Called by `validate` and by
/// [`GuestRam::new`], before anything is mapped or prefaulted.
pub fn check_backing(page: HugePages, bytes: u64) -> Result<(), MemoryError> {
    check_hugepage_pool(page, bytes)?;
    check_available_memory(page, bytes, Path::new(MEMINFO))
}

/// Check anonymous RAM (`page` `"none"`) of `bytes` fits in the `MemAvailable` of the
/// meminfo file at `meminfo`. Without the check a too-large guest prefaults gigabytes
/// before failing, or without prefault is killed by the OOM killer once it runs; a
/// kernel older than 3.14 has no `MemAvailable` and is not checked.
pub fn check_available_memory(
    page: HugePages,
    bytes: u64,
    meminfo: &Path,
) -> Result<(), MemoryError> {
    if page != HugePages::None {
        return Ok(());
    }
    let text = std::fs::read_to_string(meminfo).map_err(|source| MemoryError::ReadMeminfo {
        path: meminfo.to_path_buf(),
        source,
    })?;
    let Some(available_kib) = mem_available_kib(&text) else {
        log::debug!("no MemAvailable in {}: not checked", meminfo.display());
        return Ok(());
    };
    let available = available_kib.saturating_mul(1024);
    if bytes > available {
        return Err(MemoryError::RamUnavailable {
            size_mib: bytes >> 20,
            available_mib: available >> 20,
            meminfo: meminfo.to_path_buf(),
        });
    }
    Ok(())
}

/// The `MemAvailable:  N kB` value of a /proc/meminfo text, in KiB.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
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
    page: HugePages,
}

impl GuestRam {
    /// Map RAM for `spec` laid out as `ranges`. Nothing is faulted in here: `ram_setup`
    /// does that (`memory.prefault`) while the guest starts.
    pub fn new(spec: &MemorySpec, ranges: &[RamRange]) -> Result<GuestRam, MemoryError> {
        GuestRam::new_bound(spec, ranges, &[])
    }

    /// [`GuestRam::new`], with the guest ranges of `binds` (guest start, length, host
    /// node) bound to their host node before any page is faulted in (guest NUMA).
    pub fn new_bound(
        spec: &MemorySpec,
        ranges: &[RamRange],
        binds: &[RamBind],
    ) -> Result<GuestRam, MemoryError> {
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        check_backing(spec.hugepages, total)?;
        let mut mappings = Vec::new();
        let mut regions = Vec::new();
        for r in ranges {
            let len = usize::try_from(r.len).map_err(|_| MemoryError::Map {
                size: r.len,
                page: spec.hugepages,
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            })?;
            let map = match spec.hugepages {
                HugePages::None => map_anonymous(len)?,
                page => map_hugetlb(len, page)?,
            };
            bind_range(&map, r, binds)?;
            regions.push(region(&map, r.guest, spec.hugepages)?);
            mappings.push(map);
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(GuestRam {
            memory,
            ranges: ranges.to_vec(),
            mappings,
            page: spec.hugepages,
        })
    }

    /// The host page size backing RAM (2 MiB for THP): chunks of work start on it.
    pub fn page_size(&self) -> u64 {
        match self.page {
            HugePages::None => THP_ALIGN as u64,
            huge => huge.page_size(),
        }
    }

    /// The stride of [`populate`]'s touch fallback on this RAM.
    pub fn touch_step(&self) -> usize {
        match self.page {
            HugePages::None => BASE_PAGE,
            huge => huge.page_size() as usize,
        }
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

/// Anonymous private memory, 2 MiB aligned, THP requested.
fn map_anonymous(len: usize) -> Result<Mapping, MemoryError> {
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
    Ok(map)
}

/// Private hugetlb memory from the host pool. Without MAP_NORESERVE the kernel reserves
/// the pages at mmap time, so a short pool fails here (ENOMEM) rather than with SIGBUS
/// (and the later prefault, or the touch fallback, cannot run out of pages). No
/// MAP_POPULATE: it would fault the pages in on this one thread.
fn map_hugetlb(len: usize, page: HugePages) -> Result<Mapping, MemoryError> {
    let size_flag = match page {
        HugePages::Size1G => libc::MAP_HUGE_1GB,
        _ => libc::MAP_HUGE_2MB,
    };
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | size_flag;
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

/// Bind the parts of `binds` inside `r` (mapped at `map`) to their host nodes.
fn bind_range(map: &Mapping, r: &RamRange, binds: &[RamBind]) -> Result<(), MemoryError> {
    for b in binds {
        let node = b.node;
        let (start, end) = (b.guest.max(r.guest), (b.guest + b.len).min(r.guest + r.len));
        if start >= end {
            continue;
        }
        let host = map.addr as u64 + (start - r.guest);
        crate::numa::bind_memory(host, end - start, node).map_err(|source| {
            MemoryError::BindNode {
                guest: start,
                len: end - start,
                node,
                source,
            }
        })?;
        log::info!("numa: guest RAM {start:#x}..{end:#x} bound to host node {node}");
    }
    Ok(())
}

/// Fault `addr..addr+len` (inside a mapping of ours) in: MADV_POPULATE_WRITE (Linux 5.14),
/// or on older kernels (EINVAL) writing one byte per `touch_step`.
pub(crate) fn populate(addr: usize, len: usize, touch_step: usize) -> io::Result<()> {
    // SAFETY: advice on part of our own read-write mapping.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    let base = addr as *mut u8;
    for off in (0..len).step_by(touch_step) {
        // SAFETY: `off < len`, inside our private read-write mapping (hugetlb pages were
        // reserved at mmap, so this cannot SIGBUS), which lives as long as `GuestRam`.
        // The guest may run already: a compare-exchange of a byte with itself faults
        // the page in for writing and never loses a byte the guest writes meanwhile.
        let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(base.add(off)) };
        let old = byte.load(std::sync::atomic::Ordering::Relaxed);
        let _ = byte.compare_exchange(
            old,
            old,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
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

    /// A meminfo file in a temporary directory with `available` as MemAvailable.
    fn meminfo(dir: &vmm_sys_util::tempdir::TempDir, available: Option<&str>) -> PathBuf {
        let path = dir.as_path().join("meminfo");
        let mut text = "MemTotal:       24683584 kB\nMemFree:        19634892 kB\n".to_string();
        if let Some(a) = available {
            text.push_str(&format!("MemAvailable:   {a} kB\n"));
        }
        text.push_str("Buffers:           25560 kB\n");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn anonymous_ram_beyond_mem_available_is_refused() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = meminfo(&dir, Some("23419832")); // about 22.3 GiB
        let err = check_available_memory(HugePages::None, 1 << 40, &path).unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::RamUnavailable {
                    size_mib: 0x10_0000,
                    available_mib: 22870,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn anonymous_ram_within_mem_available_passes() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = meminfo(&dir, Some("23419832"));
        check_available_memory(HugePages::None, 512 << 20, &path).unwrap();
    }

    #[test]
    fn hugetlb_ram_is_checked_against_the_pool_not_mem_available() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = meminfo(&dir, Some("1024"));
        check_available_memory(HugePages::Size2M, 1 << 40, &path).unwrap();
    }

    #[test]
    fn meminfo_without_mem_available_is_not_checked() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = meminfo(&dir, None);
        check_available_memory(HugePages::None, 1 << 40, &path).unwrap();
    }

    #[test]
    fn unreadable_meminfo_is_an_error() {
        let err =
            check_available_memory(HugePages::None, 1 << 20, Path::new("/nonexistent/meminfo"))
                .unwrap_err();
        assert!(matches!(err, MemoryError::ReadMeminfo { .. }), "{err:?}");
    }

    #[test]
    fn oversized_ram_fails_before_mapping_even_without_prefault() {
        // 64 TiB: more than any test host has available; mapping it would succeed
        // (MAP_NORESERVE) and only the guest's first touches would fail.
        let spec = MemorySpec {
            size_mib: 64 << 20,
            hugepages: HugePages::None,
            prefault: false,
        };
        let err = GuestRam::new(&spec, &plan_regions(64 << 40)).unwrap_err();
        assert!(matches!(err, MemoryError::RamUnavailable { .. }), "{err:?}");
    }

    #[test]
    fn populate_keeps_what_was_written() {
        let map = map_anonymous(4 << 20).unwrap();
        let base = map.addr as usize;
        // SAFETY: inside the fresh 4 MiB mapping.
        unsafe { (base as *mut u8).add(4096).write_volatile(0x5a) };
        populate(base, map.len, BASE_PAGE).unwrap();
        assert_eq!(
            // SAFETY: as above.
            unsafe { (base as *const u8).add(4096).read_volatile() },
            0x5a
        );
    }

    #[test]
    fn page_size_is_the_backing_page() {
        let spec = MemorySpec {
            size_mib: 4,
            hugepages: HugePages::None,
            prefault: true,
        };
        let ram = GuestRam::new(&spec, &plan_regions(4 << 20)).unwrap();
        assert_eq!(ram.page_size(), THP_ALIGN as u64);
        assert_eq!(ram.touch_step(), BASE_PAGE);
    }

    #[test]
    fn anonymous_needs_no_pool() {
        check_hugepage_pool(HugePages::None, 1 << 50).unwrap();
    }
}
