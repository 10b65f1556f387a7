//! Guest RAM: plans the regions of the platform layout (`arch::x86_64::layout`:
//! RAM below the 32-bit PCI hole, the rest from 4 GiB), maps them in this process and
//! hands them to vm-memory.
//!
//! Backing: `"none"` is anonymous memory aligned to 2 MiB with `MADV_HUGEPAGE` (THP);
//! `"2M"`/`"1G"` are hugetlb pages from the host pool via `MAP_HUGETLB | MAP_HUGE_*`, no
//! hugetlbfs mount needed. The pool is checked *before* mapping so a short pool is a clear
//! error, never a SIGBUS when the guest first touches a page.
//!
//! Prefaulting (the kernel zeroing every page) is most of the cost of RAM setup, so it
//! runs on several threads, each `MADV_POPULATE_WRITE` on its own page-aligned chunk.
//! RAM bound to a host NUMA node (guest NUMA) is prefaulted by threads pinned to that
//! node's CPUs, so the pages are zeroed by the node that will use them.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arch::x86_64::layout;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::sandbox::{self, ThreadKind};
use crate::spec::{HugePages, MemorySpec};

/// Alignment of anonymous RAM, so THP can back guest 2 MiB pages with host 2 MiB pages.
const THP_ALIGN: usize = 2 << 20;
/// Smallest share of RAM worth a prefault thread of its own: below this, starting the
/// thread and contending on the mm's locks cost more than the parallel zeroing saves.
const PREFAULT_MIN_CHUNK: usize = 128 << 20;
/// Most prefault threads; beyond this the page allocator's locks, not zeroing, limit.
const PREFAULT_MAX_THREADS: usize = 16;
/// Base page size, the step of the touch fallback on anonymous memory.
const BASE_PAGE: usize = 4096;
/// RAM one prefault call covers before its thread looks for a stop request: tens of
/// milliseconds of zeroing, so SIGINT/SIGTERM end even a huge prefault within a second.
const PREFAULT_STEP: usize = 64 << 20;

/// Whether a stop was requested (SIGINT/SIGTERM), asked between prefault steps; set once
/// by the command that builds the VM ([`stop_prefault_when`]).
static PREFAULT_STOP: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>> =
    std::sync::OnceLock::new();

/// Make prefaulting give up, with [`MemoryError::Stopped`], once `stopping` returns true.
/// A process-wide hook so that `GuestRam::new` keeps its signature; the first call wins.
pub fn stop_prefault_when(stopping: impl Fn() -> bool + Send + Sync + 'static) {
    if PREFAULT_STOP.set(Box::new(stopping)).is_err() {
        log::debug!("prefault stop hook already set");
    }
}

fn prefault_stop_requested() -> bool {
    PREFAULT_STOP.get().is_some_and(|stopping| stopping())
}
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
    #[error("guest RAM setup stopped by a signal")]
    Stopped,
    #[error("cannot describe guest RAM to vm-memory: {0}")]
    Regions(String),
}

/// Guest RAM `guest..guest + len` bound to host NUMA node `node`, prefaulted by threads
/// on host CPUs `cpus` (none: wherever the scheduler puts them).
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
}

impl GuestRam {
    /// Map and (optionally) prefault RAM for `spec` laid out as `ranges`.
    pub fn new(spec: &MemorySpec, ranges: &[RamRange]) -> Result<GuestRam, MemoryError> {
        GuestRam::new_bound(spec, ranges, &[])
    }

    /// [`GuestRam::new`], with the guest ranges of `binds` (guest start, length, host
    /// node) bound to their host node before they are prefaulted (guest NUMA).
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
            if spec.prefault {
                let parts = prefault_parts(r, binds);
                prefault(&map, spec.hugepages, &parts, &prefault_stop_requested)?;
            }
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

/// A part of one RAM mapping to prefault: byte offsets into the mapping, and the host
/// CPUs its threads must run on (`None`: anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefaultPart {
    pub range: Range<usize>,
    pub cpus: Option<Vec<usize>>,
}

/// The parts of RAM range `r` to prefault: each bound part (with its host CPUs, if
/// any) and the unbound rest, in address order.
pub fn prefault_parts(r: &RamRange, binds: &[RamBind]) -> Vec<PrefaultPart> {
    let mut bound: Vec<(u64, u64, Option<Vec<usize>>)> = binds
        .iter()
        .map(|b| {
            (
                b.guest.max(r.guest),
                (b.guest + b.len).min(r.guest + r.len),
                b,
            )
        })
        .filter(|(start, end, _)| start < end)
        .map(|(start, end, b)| (start, end, (!b.cpus.is_empty()).then(|| b.cpus.clone())))
        .collect();
    bound.sort_by_key(|p| p.0);
    let mut parts = Vec::new();
    let mut at = r.guest;
    let offset = |a: u64| (a - r.guest) as usize;
    for (start, end, cpus) in bound {
        if start > at {
            parts.push(PrefaultPart {
                range: offset(at)..offset(start),
                cpus: None,
            });
        }
        parts.push(PrefaultPart {
            range: offset(start)..offset(end),
            cpus,
        });
        at = end;
    }
    if at < r.guest + r.len {
        parts.push(PrefaultPart {
            range: offset(at)..offset(r.guest + r.len),
            cpus: None,
        });
    }
    parts
}

/// One prefault thread's work: bytes at `offset` into the mapping, and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefaultJob {
    pub offset: usize,
    pub len: usize,
    pub cpus: Option<Vec<usize>>,
}

/// The prefault threads' chunks for `parts`: each part split by [`prefault_chunks`]
/// over at most `parallelism` threads (and no more than its CPUs when pinned).
pub fn prefault_jobs(parts: &[PrefaultPart], align: usize, parallelism: usize) -> Vec<PrefaultJob> {
    parts
        .iter()
        .flat_map(|p| {
            let threads = p
                .cpus
                .as_ref()
                .map_or(parallelism, |c| parallelism.min(c.len()));
            prefault_chunks(p.range.len(), align, threads)
                .into_iter()
                .map(move |c| PrefaultJob {
                    offset: p.range.start + c.start,
                    len: c.len(),
                    cpus: p.cpus.clone(),
                })
        })
        .collect()
}

/// Split `len` bytes into one chunk per prefault thread, each starting on an `align`
/// boundary: min(`parallelism`, chunks of at least [`PREFAULT_MIN_CHUNK`],
/// [`PREFAULT_MAX_THREADS`]) chunks, at least one, the last one possibly shorter.
pub fn prefault_chunks(len: usize, align: usize, parallelism: usize) -> Vec<Range<usize>> {
    if len == 0 || align == 0 {
        return Vec::new();
    }
    let threads = parallelism
        .min(len / PREFAULT_MIN_CHUNK)
        .clamp(1, PREFAULT_MAX_THREADS);
    let step = len.div_ceil(align).div_ceil(threads) * align;
    (0..len)
        .step_by(step)
        .map(|start| start..len.min(start + step))
        .collect()
}

/// How each prefault thread walks its chunk.
#[derive(Clone, Copy)]
struct Steps<'a> {
    /// Bytes per MADV_POPULATE_WRITE call, a multiple of the page size.
    step: usize,
    /// Stride of the touch fallback.
    touch_step: usize,
    stopping: &'a (dyn Fn() -> bool + Sync),
}

/// Fault every page of `map` in now, the jobs of [`prefault_jobs`] for `parts` in
/// parallel, each [`PREFAULT_STEP`] at a time; gives up with [`MemoryError::Stopped`]
/// once `stopping`. The first job runs on this thread unless it must be pinned.
fn prefault(
    map: &Mapping,
    page: HugePages,
    parts: &[PrefaultPart],
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<(), MemoryError> {
    let (align, touch_step) = match page {
        // THP: chunk on 2 MiB so no huge page straddles two threads.
        HugePages::None => (THP_ALIGN, BASE_PAGE),
        huge => (huge.page_size() as usize, huge.page_size() as usize),
    };
    let steps = Steps {
        step: PREFAULT_STEP.next_multiple_of(align),
        touch_step,
        stopping,
    };
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = prefault_jobs(parts, align, parallelism);
    for p in parts.iter().filter(|p| p.cpus.is_some()) {
        let threads = jobs.iter().filter(|j| p.range.contains(&j.offset)).count();
        log::info!(
            "numa: prefault of RAM bytes {:#x}..{:#x} of a {:#x}-byte region on host CPUs {:?} ({threads} threads)",
            p.range.start,
            p.range.end,
            map.len,
            p.cpus.as_deref().unwrap_or_default()
        );
    }
    let base = map.addr as usize;
    let (here, there) = match jobs.split_first() {
        Some((first, rest)) if first.cpus.is_none() => (Some(first), rest),
        _ => (None, &jobs[..]),
    };
    let results: Vec<io::Result<()>> = std::thread::scope(|s| {
        let spawned: Vec<_> = there
            .iter()
            .map(|j| {
                let (addr, len, cpus) = (base + j.offset, j.len, j.cpus.as_deref());
                let spawn = std::thread::Builder::new()
                    .name("strait-prefault".into())
                    .spawn_scoped(s, move || {
                        if let Some(cpus) = cpus {
                            pin_self(cpus);
                        }
                        sandbox::enter(ThreadKind::Prefault).map_err(io::Error::other)?;
                        populate_in_steps(addr, len, steps)
                    });
                // Cannot start a thread: do that chunk here instead.
                spawn.map_err(|_| (addr, len))
            })
            .collect();
        let mut results: Vec<_> = here
            .map(|j| populate_in_steps(base + j.offset, j.len, steps))
            .into_iter()
            .collect();
        for handle in spawned {
            results.push(match handle {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err((addr, len)) => populate_in_steps(addr, len, steps),
            });
        }
        results
    });
    results
        .into_iter()
        .collect::<io::Result<()>>()
        .map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => MemoryError::Stopped,
            _ => MemoryError::Prefault(e),
        })
}

/// Pin the calling prefault thread to `cpus`; a failure only costs locality.
fn pin_self(cpus: &[usize]) {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    if let Err(e) = crate::numa::pin_thread(me, cpus) {
        log::warn!("numa: cannot pin a prefault thread to host CPUs {cpus:?}: {e}");
    }
}

/// [`populate`] `addr..addr+len` one `steps.step` at a time, giving up (`Interrupted`)
/// when a stop is requested between two steps.
fn populate_in_steps(addr: usize, len: usize, steps: Steps<'_>) -> io::Result<()> {
    for off in (0..len).step_by(steps.step) {
        if (steps.stopping)() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        populate(addr + off, steps.step.min(len - off), steps.touch_step)?;
    }
    Ok(())
}

/// Fault `addr..addr+len` (inside a mapping of ours) in: MADV_POPULATE_WRITE (Linux 5.14),
/// or on older kernels (EINVAL) writing one byte per `touch_step`.
fn populate(addr: usize, len: usize, touch_step: usize) -> io::Result<()> {
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
        // SAFETY: `off < len`, inside our private read-write mapping that no guest uses
        // yet (hugetlb pages were reserved at mmap, so this cannot SIGBUS); writing zero
        // over zero-filled memory changes nothing but residency.
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

    const MIB: usize = 1 << 20;

    #[test]
    fn small_ram_prefaults_on_one_thread() {
        assert_eq!(prefault_chunks(64 * MIB, 2 * MIB, 8), vec![0..64 * MIB]);
    }

    #[test]
    fn prefault_threads_are_limited_by_parallelism() {
        let c = prefault_chunks(2048 * MIB, 2 * MIB, 2);
        assert_eq!(c, vec![0..1024 * MIB, 1024 * MIB..2048 * MIB]);
    }

    #[test]
    fn prefault_chunks_are_at_least_128_mib() {
        assert_eq!(prefault_chunks(512 * MIB, 2 * MIB, 64).len(), 4);
        assert_eq!(prefault_chunks(255 * MIB, 2 * MIB, 64).len(), 1);
    }

    #[test]
    fn prefault_threads_are_capped_at_16() {
        assert_eq!(prefault_chunks(64 << 30, 2 * MIB, 256).len(), 16);
    }

    #[test]
    fn prefault_chunks_start_page_aligned_and_cover_ram() {
        let (len, page) = (3 << 30, 1 << 30);
        let c = prefault_chunks(len, page, 2);
        assert_eq!(c, vec![0..2 << 30, 2 << 30..3 << 30]);
        let c = prefault_chunks(1000 * MIB + 4096, 2 * MIB, 3);
        assert!(c.iter().all(|r| r.start % (2 * MIB) == 0));
        assert_eq!(c.first().map(|r| r.start), Some(0));
        assert_eq!(c.last().map(|r| r.end), Some(1000 * MIB + 4096));
        assert!(c.windows(2).all(|w| w[0].end == w[1].start));
    }

    fn bind(guest: u64, len: u64, node: u32, cpus: &[usize]) -> RamBind {
        RamBind {
            guest,
            len,
            node,
            cpus: cpus.to_vec(),
        }
    }

    #[test]
    fn prefault_parts_follow_the_node_binds() {
        let r = RamRange {
            guest: 0,
            len: 3 * GIB,
        };
        // Node 0 on CPUs 0-1 holds the first GiB, node 1 on CPUs 2-3 the rest and
        // beyond this range; a bind without CPUs runs anywhere.
        let binds = [bind(0, GIB, 0, &[0, 1]), bind(GIB, 4 * GIB, 1, &[2, 3])];
        let parts = prefault_parts(&r, &binds);
        let g = GIB as usize;
        assert_eq!(
            parts,
            [
                PrefaultPart {
                    range: 0..g,
                    cpus: Some(vec![0, 1])
                },
                PrefaultPart {
                    range: g..3 * g,
                    cpus: Some(vec![2, 3])
                },
            ]
        );
        let high = RamRange {
            guest: 4 * GIB,
            len: 2 * GIB,
        };
        let parts = prefault_parts(&high, &[bind(4 * GIB, GIB, 1, &[])]);
        assert_eq!(
            parts,
            [
                PrefaultPart {
                    range: 0..g,
                    cpus: None
                },
                PrefaultPart {
                    range: g..2 * g,
                    cpus: None
                },
            ]
        );
        assert_eq!(
            prefault_parts(&r, &[]),
            [PrefaultPart {
                range: 0..3 * g,
                cpus: None
            }]
        );
    }

    #[test]
    fn pinned_prefault_jobs_stay_in_their_part_on_at_most_its_cpus() {
        let g = GIB as usize;
        let parts = [
            PrefaultPart {
                range: 0..g,
                cpus: Some(vec![3]),
            },
            PrefaultPart {
                range: g..3 * g,
                cpus: Some(vec![0, 1]),
            },
        ];
        let jobs = prefault_jobs(&parts, 2 << 20, 8);
        // One CPU: one thread for the first GiB; two for the next two GiB.
        let shape: Vec<(usize, usize, Option<Vec<usize>>)> = jobs
            .iter()
            .map(|j| (j.offset, j.len, j.cpus.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                (0, g, Some(vec![3])),
                (g, g, Some(vec![0, 1])),
                (2 * g, g, Some(vec![0, 1])),
            ]
        );
    }

    #[test]
    fn empty_ram_has_no_prefault_chunks() {
        assert!(prefault_chunks(0, 2 * MIB, 4).is_empty());
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
    fn prefault_gives_up_between_steps_once_stopping() {
        let len = 3 * PREFAULT_STEP;
        let map = map_anonymous(len).unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let stop_after_one = || calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1;
        let whole = [PrefaultPart {
            range: 0..len,
            cpus: None,
        }];
        let err = prefault(&map, HugePages::None, &whole, &stop_after_one).unwrap_err();
        assert!(matches!(err, MemoryError::Stopped), "{err:?}");
        prefault(&map, HugePages::None, &whole, &|| false).unwrap();
    }

    #[test]
    fn pinned_prefault_threads_fault_their_part_in() {
        let len = 2 * PREFAULT_STEP;
        let map = map_anonymous(len).unwrap();
        // This thread's own CPUs, so the pin succeeds wherever the test runs.
        let cpus = crate::numa::parse_list(
            &std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(String::from))
                .unwrap_or_else(|| "0".into()),
        );
        let parts = [
            PrefaultPart {
                range: 0..PREFAULT_STEP,
                cpus: Some(cpus),
            },
            PrefaultPart {
                range: PREFAULT_STEP..len,
                cpus: None,
            },
        ];
        prefault(&map, HugePages::None, &parts, &|| false).unwrap();
        // SAFETY: reading our own mapping, all of it faulted in and zeroed.
        let last = unsafe { (map.addr as *const u8).add(len - 1).read_volatile() };
        assert_eq!(last, 0);
    }

    #[test]
    fn stopped_prefault_is_not_a_host_problem_line() {
        let e = crate::error::Error::Memory(MemoryError::Stopped);
        assert_eq!(e.one_line(), "guest RAM setup stopped by a signal");
    }

    #[test]
    fn anonymous_needs_no_pool() {
        check_hugepage_pool(HugePages::None, 1 << 50).unwrap();
    }
}
