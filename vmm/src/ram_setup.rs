//! Guest RAM made ready while the guest already runs: faulted in (the host kernel
//! zeroes each page) and, with passed-through devices, DMA-mapped, by a few threads
//! taking chunks in turn ([`vfio_glue::dma_chunks`]: 128 MiB, whole hugepages, so a
//! 1 GiB page is one chunk).
//!
//! Why the vCPUs need not wait: KVM faults a page the guest touches first on its own,
//! and no device can reach RAM before the mapping is complete, because each function's
//! Bus Master Enable is held back until then (`vfio_glue::dma`); the vCPUs wait only
//! when the guest sets it early.
//!
//! Each chunk is faulted in before it is mapped, also without `memory.prefault`:
//! VFIO_IOMMU_MAP_DMA faults in what it pins itself, but under the container's lock,
//! one call at a time; faulting first zeroes the chunks on every thread at once and
//! leaves the map call only the pinning.
//!
//! The threads run at a lower priority (nice 10) than the vCPUs and the kernel
//! loader: on a host with few CPUs the zeroing must not delay the guest's start.
//!
//! With guest NUMA, the chunks of each node's RAM form a queue of their own, and the
//! threads that start on it are pinned to that host node's CPUs, so its pages are zeroed
//! by the node that will use them; a thread whose queue is empty helps with the others
//! (every chunk gets done, even on a node no thread started on).
//!
//! The end is a timeline mark (`dma_mapped`, or `ram_prefaulted` without devices).
//! A chunk that fails stops the VM with the error. A reboot in place goes on with the
//! work; the VM's teardown cancels it between chunks and joins the threads
//! ([`RamSetup::cancel`], also on drop) before RAM is unmapped.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use resources::lock;
use vfio_glue::{dma_chunks, GuestDma, RamRegion, VfioPciDevice};

use crate::error::ExitCode;
use crate::exits::StopReason;
use crate::logger::{self, phase};
use crate::memory::{self, GuestRam};
use crate::sandbox::{self, ThreadKind};
use crate::stop::StopSignal;

/// Bytes one thread faults in and maps before it looks for a stop request or the next
/// chunk: tens of milliseconds of zeroing, so a stop is seen within a second.
pub const CHUNK: u64 = 128 << 20;
/// The most VFIO_IOMMU_MAP_DMA mappings (vfio_iommu_type1 entries) guest RAM of
/// `ram_bytes` takes: one per [`CHUNK`] of each RAM region (fewer on 1 GiB pages).
pub fn mapping_count(ram_bytes: u64) -> u64 {
    memory::plan_regions(ram_bytes)
        .iter()
        .map(|r| r.len.div_ceil(CHUNK))
        .sum()
}

/// Most threads; beyond this the page allocator's locks, not zeroing, limit.
const MAX_THREADS: usize = 16;

/// Guest RAM's pending DMA mapping and the functions whose bus mastering waits for it.
pub type PendingDma = (Arc<GuestDma>, Vec<Arc<Mutex<VfioPciDevice>>>);

/// What the threads are asked to do.
pub struct RamSetupParams {
    /// Fault every chunk in (`memory.prefault`, or RAM that is DMA-mapped).
    pub populate: bool,
    /// Bytes per chunk, rounded up to whole pages ([`CHUNK`]).
    pub chunk: u64,
    /// The pending DMA mapping of guest RAM, and the functions whose held bus mastering
    /// is released once it is complete.
    pub dma: Option<PendingDma>,
    pub stop: Arc<StopSignal>,
    /// Guest RAM bound to host nodes, with the CPUs whose threads fault it in.
    pub nodes: Vec<NodeRam>,
}

/// Guest RAM bound to a host NUMA node: its guest physical range and the node's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRam {
    pub guest: Range<u64>,
    pub cpus: Vec<usize>,
}

/// The threads making guest RAM ready, until joined.
#[derive(Debug, Default)]
pub struct RamSetup {
    thread: Option<JoinHandle<()>>,
    cancelled: Arc<AtomicBool>,
}

/// The chunks of one host node's RAM (or of RAM bound to none: `cpus` empty), and how
/// far the threads got.
#[derive(Debug)]
struct Queue {
    chunks: Vec<RamRegion>,
    next: AtomicUsize,
    cpus: Vec<usize>,
}

impl Queue {
    fn take(&self) -> Option<&RamRegion> {
        self.chunks.get(self.next.fetch_add(1, Ordering::SeqCst))
    }

    fn done(&self) -> bool {
        self.next.load(Ordering::SeqCst) >= self.chunks.len()
    }
}

/// `chunks` split by node: one queue per entry of `nodes` holding the chunks that start
/// in its range, then one unpinned queue for the rest; empty queues left out.
fn queues(chunks: Vec<RamRegion>, nodes: &[NodeRam]) -> Vec<Queue> {
    let mut split: Vec<(Vec<RamRegion>, Vec<usize>)> =
        nodes.iter().map(|n| (Vec::new(), n.cpus.clone())).collect();
    let mut rest = Vec::new();
    for c in chunks {
        match nodes.iter().position(|n| n.guest.contains(&c.gpa)) {
            Some(i) => split[i].0.push(c),
            None => rest.push(c),
        }
    }
    split.push((rest, Vec::new()));
    split
        .into_iter()
        .filter(|(chunks, _)| !chunks.is_empty())
        .map(|(chunks, cpus)| Queue {
            chunks,
            next: AtomicUsize::new(0),
            cpus,
        })
        .collect()
}

/// The chunk queues the threads share, and how the work went.
struct Work {
    queues: Vec<Queue>,
    failed: AtomicBool,
    error: Mutex<Option<(String, ExitCode)>>,
    populate: bool,
    touch_step: usize,
    dma: Option<Arc<GuestDma>>,
    stop: Arc<StopSignal>,
    cancelled: Arc<AtomicBool>,
}

impl RamSetup {
    /// Start on `ram`; nothing to do (no prefault, no DMA) starts nothing.
    pub fn start(ram: &GuestRam, p: RamSetupParams) -> std::io::Result<RamSetup> {
        if !p.populate && p.dma.is_none() {
            return Ok(RamSetup::default());
        }
        let page = ram.page_size();
        let regions: Vec<RamRegion> = match &p.dma {
            Some((dma, _)) => dma.regions().to_vec(),
            None => ram
                .slots()
                .map(|(gpa, host_addr, size)| RamRegion {
                    gpa,
                    size,
                    host_addr,
                })
                .collect(),
        };
        let (dma, release) = p.dma.unzip();
        let cancelled = Arc::new(AtomicBool::new(false));
        let work = Work {
            queues: queues(dma_chunks(&regions, p.chunk, page), &p.nodes),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            populate: p.populate || dma.is_some(),
            touch_step: ram.touch_step(),
            dma,
            stop: p.stop,
            cancelled: cancelled.clone(),
        };
        let chunks = work.queues.iter().map(|q| q.chunks.len()).sum();
        // At least one thread per queue, so each node's RAM starts on its own CPUs.
        let threads = thread_count(chunks).max(work.queues.len());
        let release = release.unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name("strait-ram".into())
            .spawn(move || run(&work, threads, &release))?;
        Ok(RamSetup {
            thread: Some(thread),
            cancelled,
        })
    }

    /// Stop the threads at their next chunk and wait for them (the VM's teardown).
    pub fn cancel(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the RAM setup thread panicked");
            }
        }
    }
}

impl Drop for RamSetup {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Threads for `chunks` chunks: one per CPU, at most one per chunk and [`MAX_THREADS`].
fn thread_count(chunks: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.min(chunks).clamp(1, MAX_THREADS)
}

/// The first thread: start the others, work with them, then finish the mapping.
fn run(work: &Work, threads: usize, release: &[Arc<Mutex<VfioPciDevice>>]) {
    for q in work.queues.iter().filter(|q| !q.cpus.is_empty()) {
        let (first, last) = (q.chunks.first(), q.chunks.last());
        if let (Some(a), Some(b)) = (first, last) {
            log::info!(
                "numa: RAM {:#x}..{:#x} faulted in on host CPUs {:?}",
                a.gpa,
                b.gpa + b.size,
                q.cpus
            );
        }
    }
    let home = |i: usize| i % work.queues.len().max(1);
    std::thread::scope(|s| {
        for i in 1..threads {
            let spawned = std::thread::Builder::new()
                .name("strait-ram".into())
                .spawn_scoped(s, move || work_on(work, home(i)));
            if spawned.is_err() {
                break; // Fewer threads: the others take the chunks.
            }
        }
        work_on(work, home(0));
    });
    finish(work, release);
}

/// How much lower than the vCPUs and the kernel loader the RAM threads run (nice):
/// zeroing takes the CPU time the guest's boot leaves.
const NICENESS: libc::c_int = 10;

/// One thread: pin it to its queue's CPUs (`home`), lower its priority, enter the
/// sandbox, then take chunks (its queue's first, then the others') until none is left,
/// one failed or the VM stops.
fn work_on(work: &Work, home: usize) {
    if let Some(cpus) = work
        .queues
        .get(home)
        .map(|q| &q.cpus)
        .filter(|c| !c.is_empty())
    {
        // SAFETY: pthread_self is always valid for the calling thread.
        let me = unsafe { libc::pthread_self() };
        if let Err(e) = crate::numa::pin_thread(me, cpus) {
            log::warn!("numa: a RAM setup thread stays unpinned (host CPUs {cpus:?}): {e}");
        }
    }
    // SAFETY: setpriority on this thread (a TID is a PRIO_PROCESS target on Linux).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICENESS) } != 0
    {
        log::debug!(
            "RAM setup thread keeps its priority: {}",
            std::io::Error::last_os_error()
        );
    }
    if let Err(e) = sandbox::enter(ThreadKind::Prefault) {
        let what = crate::error::Error::from(e).one_line();
        fail(work, format!("a RAM setup thread: {what}"), ExitCode::Fatal);
        return;
    }
    let n = work.queues.len();
    let mut order = (0..n).map(|k| &work.queues[(home + k) % n]);
    let mut queue = order.next();
    while !work.failed.load(Ordering::SeqCst) && !work.cancelled.load(Ordering::SeqCst) {
        let Some(q) = queue else {
            return;
        };
        let Some(c) = q.take() else {
            queue = order.next();
            continue;
        };
        if work.populate {
            let range = host_range(c);
            if let Err(e) = memory::populate(range.start, range.len(), work.touch_step) {
                let what = format!("cannot fault guest RAM {:#x}+{:#x} in: {e}", c.gpa, c.size);
                return fail(work, what, ExitCode::Host);
            }
        }
        if let Some(dma) = &work.dma {
            if let Err(e) = dma.map_chunk(c) {
                let code = crate::error::Error::from(crate::passthrough::PassthroughError::from(e));
                return fail(work, code.one_line(), code.exit_code());
            }
        }
    }
}

fn host_range(c: &RamRegion) -> Range<usize> {
    let start = c.host_addr as usize;
    start..start + c.size as usize
}

/// Record the first failure; the other threads stop at their next chunk.
fn fail(work: &Work, what: String, code: ExitCode) {
    work.failed.store(true, Ordering::SeqCst);
    lock(&work.error).get_or_insert((what, code));
}

/// After every thread: complete the mapping and release the held bus mastering, or
/// stop the VM with the failure.
fn finish(work: &Work, release: &[Arc<Mutex<VfioPciDevice>>]) {
    let done = work.queues.iter().all(Queue::done);
    if let Some((what, exit)) = lock(&work.error).take() {
        if let Some(dma) = &work.dma {
            dma.finish(false);
        }
        work.stop.stop(StopReason::RamSetup { what, exit });
        return;
    }
    if !done || work.cancelled.load(Ordering::SeqCst) {
        if let Some(dma) = &work.dma {
            dma.finish(false);
        }
        return;
    }
    match &work.dma {
        Some(dma) => {
            dma.set_complete();
            for f in release {
                lock(f).release_bus_master();
            }
            dma.finish(true);
            logger::mark(phase::DMA_MAPPED);
        }
        None => logger::mark(phase::RAM_PREFAULTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::plan_regions;
    use crate::spec::{HugePages, MemorySpec};
    use devices::pci::PciDevice;
    use vfio_glue::fake::{Call, CallLog, FakeDevice, FakeDmaMapper, NoIrqs};
    use vfio_glue::VfioPciParams;

    const MIB: u64 = 1 << 20;

    /// 8 MiB of anonymous guest RAM, its pending DMA mapping and one function over the
    /// fake backend, all logging to one call log.
    fn machine(
        mapper: FakeDmaMapper,
        log: &CallLog,
    ) -> (GuestRam, Arc<GuestDma>, Arc<Mutex<VfioPciDevice>>) {
        let spec = MemorySpec {
            size_mib: 8,
            hugepages: HugePages::None,
            prefault: false,
        };
        let ram = GuestRam::new(&spec, &plan_regions(8 * MIB)).unwrap();
        let dma = GuestDma::pending(Arc::new(mapper), ram.memory()).unwrap();
        let mut cfg = vec![0u8; 256];
        cfg[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        let params = VfioPciParams {
            addr: "0000:01:00.0".parse().unwrap(),
            multifunction: false,
            clique: None,
        };
        let backend = Box::new(FakeDevice::new(log.clone(), &cfg));
        let dev = VfioPciDevice::new(backend, dma.clone(), &mut NoIrqs, params).unwrap();
        (ram, dma, Arc::new(Mutex::new(dev)))
    }

    fn start(
        ram: &GuestRam,
        dma: &Arc<GuestDma>,
        dev: &Arc<Mutex<VfioPciDevice>>,
        stop: &Arc<StopSignal>,
    ) -> RamSetup {
        start_on(ram, dma, dev, stop, Vec::new())
    }

    fn start_on(
        ram: &GuestRam,
        dma: &Arc<GuestDma>,
        dev: &Arc<Mutex<VfioPciDevice>>,
        stop: &Arc<StopSignal>,
        nodes: Vec<NodeRam>,
    ) -> RamSetup {
        let params = RamSetupParams {
            populate: false,
            chunk: 2 * MIB,
            dma: Some((dma.clone(), vec![dev.clone()])),
            stop: stop.clone(),
            nodes,
        };
        RamSetup::start(ram, params).unwrap()
    }

    /// The guest sets memory decode and Bus Master Enable; a vCPU then waits as the vCPU
    /// loop does, and returns the calls made by the time it may re-enter the guest.
    fn guest_sets_bus_master(
        dev: &Arc<Mutex<VfioPciDevice>>,
        dma: &Arc<GuestDma>,
        stop: &Arc<StopSignal>,
        log: &CallLog,
    ) -> std::thread::JoinHandle<Vec<Call>> {
        lock(dev).config_write(1, 0, &[6, 0]);
        assert_eq!(
            lock(dev).config_read(1) & 0xffff,
            6,
            "the guest reads back its write"
        );
        let (dma, stop, log) = (dma.clone(), stop.clone(), log.clone());
        std::thread::spawn(move || {
            crate::vcpu::wait_for_dma(&dma, &stop);
            log.calls()
        })
    }

    fn bme_writes(calls: &[Call]) -> Vec<Vec<u8>> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::RegionWrite {
                    offset: 4, data, ..
                } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_vcpu_setting_bus_master_runs_on_only_after_all_ram_is_mapped() {
        bus_master_waits_for_all_ram(Vec::new());
    }

    #[test]
    fn ram_split_over_nodes_is_all_mapped_before_bus_master() {
        // The first 4 MiB on one node, 2 MiB on another (no thread may be left for it),
        // the last 2 MiB on none; CPU 0 exists everywhere.
        let node = |guest: Range<u64>| NodeRam {
            guest,
            cpus: vec![0],
        };
        bus_master_waits_for_all_ram(vec![node(0..4 * MIB), node(4 * MIB..6 * MIB)]);
    }

    #[test]
    fn chunks_queue_by_the_node_they_start_in() {
        let chunk = |gpa| RamRegion {
            gpa,
            size: 2 * MIB,
            host_addr: 0,
        };
        let chunks = (0..4).map(|i| chunk(i * 2 * MIB)).collect();
        let nodes = [
            NodeRam {
                guest: 0..4 * MIB,
                cpus: vec![0, 1],
            },
            NodeRam {
                guest: 4 * MIB..6 * MIB,
                cpus: vec![2],
            },
            NodeRam {
                guest: 64 * MIB..128 * MIB,
                cpus: vec![3],
            },
        ];
        let q = queues(chunks, &nodes);
        let picture: Vec<(Vec<u64>, Vec<usize>)> = q
            .iter()
            .map(|q| {
                (
                    q.chunks.iter().map(|c| c.gpa / MIB).collect(),
                    q.cpus.clone(),
                )
            })
            .collect();
        assert_eq!(
            picture,
            [
                (vec![0, 2], vec![0, 1]),
                (vec![4], vec![2]),
                (vec![6], vec![])
            ],
            "the empty node's queue is left out, the unbound rest comes last"
        );
        assert_eq!(queues(Vec::new(), &nodes).len(), 0);
    }

    fn bus_master_waits_for_all_ram(nodes: Vec<NodeRam>) {
        let log = CallLog::default();
        let (ram, dma, dev) = machine(FakeDmaMapper::new(log.clone(), vec![]), &log);
        let stop = Arc::new(StopSignal::default());
        log.take();
        let vcpu = guest_sets_bus_master(&dev, &dma, &stop, &log);
        // The device got memory decode only.
        assert_eq!(bme_writes(&log.calls()), vec![vec![2, 0]]);
        let mut setup = start_on(&ram, &dma, &dev, &stop, nodes);
        let seen = vcpu.join().unwrap();
        setup.cancel();
        let maps = seen
            .iter()
            .filter(|c| matches!(c, Call::DmaMap { .. }))
            .count();
        assert_eq!(
            maps, 4,
            "every 2 MiB chunk mapped before the vCPU went on: {seen:?}"
        );
        let last_map = seen.iter().rposition(|c| matches!(c, Call::DmaMap { .. }));
        let bme_on = seen.iter().position(
            |c| matches!(c, Call::RegionWrite { offset: 4, data, .. } if data[0] & 4 != 0),
        );
        assert!(
            bme_on > last_map,
            "bus mastering reached the device after the last map: {seen:?}"
        );
        assert!(!stop.is_stopping());
    }

    #[test]
    fn a_failing_chunk_stops_the_vm_and_bus_master_stays_off() {
        let log = CallLog::default();
        let mut mapper = FakeDmaMapper::new(log.clone(), vec![]);
        mapper.fail_at = Some((4 * MIB, libc::EFAULT));
        let (ram, dma, dev) = machine(mapper, &log);
        let stop = Arc::new(StopSignal::default());
        log.take();
        let vcpu = guest_sets_bus_master(&dev, &dma, &stop, &log);
        let mut setup = start(&ram, &dma, &dev, &stop);
        let seen = vcpu.join().unwrap();
        setup.cancel();
        assert!(stop.is_stopping());
        assert!(
            matches!(stop.wait(), StopReason::RamSetup { exit: ExitCode::Host, ref what } if what.contains("0x400000")),
            "{:?}",
            stop.wait()
        );
        assert_eq!(bme_writes(&seen), vec![vec![2, 0]]);
        assert_eq!(bme_writes(&log.calls()), vec![vec![2, 0]]);
    }

    #[test]
    fn ram_takes_one_mapping_per_chunk_of_each_region() {
        assert_eq!(mapping_count(512 * MIB), 4);
        // 3 GiB below the hole, 1 GiB above it.
        assert_eq!(mapping_count(4096 * MIB), 24 + 8);
    }

    #[test]
    fn nothing_to_do_starts_no_thread() {
        let spec = MemorySpec {
            size_mib: 4,
            hugepages: HugePages::None,
            prefault: false,
        };
        let ram = GuestRam::new(&spec, &plan_regions(4 * MIB)).unwrap();
        let params = RamSetupParams {
            populate: false,
            chunk: CHUNK,
            dma: None,
            stop: Arc::new(StopSignal::default()),
            nodes: Vec::new(),
        };
        assert!(RamSetup::start(&ram, params).unwrap().thread.is_none());
    }
}
