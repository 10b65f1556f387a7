//! Memory rules: the hugepage pools (Documentation/admin-guide/mm/hugetlbpage.rst),
//! the locked-memory limit DMA mapping is charged to, and vfio_iommu_type1's limit on
//! DMA mappings (drivers/vfio/vfio_iommu_type1.c, `dma_entry_limit`).
//!
//! With `--memory SIZE` each is compared with the guest RAM; without, the pools and
//! limits are reported as they are.

use std::io;

use resources::Size;
use vfio_glue::host::{has_cap_ipc_lock, memlock_limit, memlock_verdict};

use super::{Finding, HostRoot};

const POOLS: &str = "sys/kernel/mm/hugepages";
const NODES: &str = "sys/devices/system/node";
const DMA_ENTRY_LIMIT: &str = "sys/module/vfio_iommu_type1/parameters/dma_entry_limit";
/// The granule of the DMA entry rule: the smallest hugepage and THP size.
const DMA_GRANULE: u64 = 2 << 20;

/// What the kernel charges this process's DMA pinning against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessLimits {
    /// RLIMIT_MEMLOCK soft limit in bytes; `None` when unlimited.
    pub memlock: Option<u64>,
    /// CAP_IPC_LOCK exempts the process from the limit.
    pub cap_ipc_lock: bool,
}

impl ProcessLimits {
    /// This process's limits.
    pub fn current() -> io::Result<Self> {
        Ok(ProcessLimits {
            memlock: memlock_limit()?,
            cap_ipc_lock: has_cap_ipc_lock(),
        })
    }
}

/// Run the memory rules; `memory` is the guest RAM in bytes, `limits` `None` when
/// this process's limits could not be read.
pub fn check(root: &HostRoot, memory: Option<u64>, limits: Option<&ProcessLimits>) -> Vec<Finding> {
    let pools = read_pools(root);
    let mut findings: Vec<Finding> = pools.iter().map(Pool::finding).collect();
    findings.push(hugepages(&pools, memory));
    findings.push(memlock(memory, limits));
    findings.push(dma_entries(root, memory));
    findings
}

/// One hugepage size: the host-wide pool and each node's share.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pool {
    /// Page size in bytes.
    size: u64,
    total: u64,
    free: u64,
    /// (node, total, free).
    nodes: Vec<(u32, u64, u64)>,
}

/// "hugepages-2048kB" -> 2 MiB.
fn pool_size(dir_name: &str) -> Option<u64> {
    let kib: u64 = dir_name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

fn read_count(root: &HostRoot, rel: &str) -> u64 {
    root.read(rel).and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn read_pools(root: &HostRoot) -> Vec<Pool> {
    let mut pools: Vec<Pool> = Vec::new();
    for name in root.list(POOLS) {
        let Some(size) = pool_size(&name) else {
            continue;
        };
        let dir = format!("{POOLS}/{name}");
        let mut nodes = Vec::new();
        for node in root.list(NODES) {
            let Some(n) = node.strip_prefix("node").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let nd = format!("{NODES}/{node}/hugepages/{name}");
            let total = read_count(root, &format!("{nd}/nr_hugepages"));
            nodes.push((n, total, read_count(root, &format!("{nd}/free_hugepages"))));
        }
        nodes.sort_unstable();
        pools.push(Pool {
            size,
            total: read_count(root, &format!("{dir}/nr_hugepages")),
            free: read_count(root, &format!("{dir}/free_hugepages")),
            nodes,
        });
    }
    pools.sort_by_key(|p| p.size);
    pools
}

impl Pool {
    fn nr_path(&self) -> String {
        format!("/{POOLS}/hugepages-{}kB/nr_hugepages", self.size >> 10)
    }

    fn finding(&self) -> Finding {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(n, total, free)| format!("node{n} {free}/{total}"))
            .collect();
        let per_node = if nodes.is_empty() {
            String::new()
        } else {
            format!(" ({})", nodes.join(", "))
        };
        Finding::ok(
            "hugepage pool",
            format!("{} of {} free{per_node}", self.free, self.total),
        )
        .on(Size(self.size))
    }

    /// Pages of this size `bytes` of RAM takes.
    fn pages_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.size)
    }
}

fn hugepages(pools: &[Pool], memory: Option<u64>) -> Finding {
    const CHECK: &str = "hugepages for guest RAM";
    let Some(two_m) = pools.iter().find(|p| p.size == 2 << 20) else {
        return Finding::warn(
            CHECK,
            "no 2 MiB hugepage pool: the kernel has no hugetlb support",
            "use a kernel built with CONFIG_HUGETLBFS (Debian's is)",
        );
    };
    let Some(ram) = memory else {
        if pools.iter().any(|p| p.total > 0) {
            return Finding::ok(CHECK, "pools reserved; pass --memory SIZE to compare");
        }
        return Finding::warn(
            CHECK,
            "no hugepages reserved: guest RAM would use small pages",
            format!(
                "reserve RAM / 2 MiB pages, e.g. for 16 GiB: `echo 8192 > {}`, or \
                 `hugepagesz=1G hugepages=16` on the kernel command line",
                two_m.nr_path()
            ),
        );
    };
    // Biggest pages first; a pool serves RAM that is a whole number of its pages.
    let fits = |p: &&Pool| ram % p.size == 0 && p.free >= p.pages_for(ram);
    if let Some(p) = pools.iter().rev().find(fits) {
        return Finding::ok(
            CHECK,
            format!(
                "{} fits in {} free {} pages",
                Size(ram),
                p.free,
                Size(p.size)
            ),
        );
    }
    let need = two_m.pages_for(ram);
    let gib_pages = ram.div_ceil(1 << 30);
    Finding::warn(
        CHECK,
        format!(
            "no pool has {} free (2 MiB: {} of {need} pages free): a spec with \
             \"hugepages\" fails, \"none\" uses small pages",
            Size(ram),
            two_m.free
        ),
        format!(
            "`echo {} > {}`, or `hugepagesz=1G hugepages={gib_pages}` on the kernel \
             command line",
            two_m.total + (need - two_m.free),
            two_m.nr_path()
        ),
    )
}

fn memlock(memory: Option<u64>, limits: Option<&ProcessLimits>) -> Finding {
    const CHECK: &str = "memlock";
    let Some(limits) = limits else {
        return Finding::warn(
            CHECK,
            "cannot read this process's RLIMIT_MEMLOCK",
            "compare `ulimit -l` (KiB) with the guest RAM by hand",
        );
    };
    let limit = limits
        .memlock
        .map_or("unlimited".to_string(), |l| Size(l).to_string());
    if limits.cap_ipc_lock {
        return Finding::ok(CHECK, format!("{limit}; CAP_IPC_LOCK exempts this process"));
    }
    let Some(ram) = memory else {
        return Finding::ok(
            CHECK,
            format!("ulimit -l is {limit}; pass --memory SIZE to compare with guest RAM"),
        );
    };
    match memlock_verdict(ram, limits.memlock, false) {
        Ok(()) => Finding::ok(CHECK, format!("{limit} covers {} of guest RAM", Size(ram))),
        Err(_) => Finding::fail(
            CHECK,
            format!(
                "ulimit -l is {limit} but DMA mapping pins all {} of guest RAM",
                Size(ram)
            ),
            format!(
                "`ulimit -l {}` (or `unlimited`) in the shell that runs strait, \
                 `LimitMEMLOCK={ram}` in a systemd unit, or run with CAP_IPC_LOCK",
                ram.div_ceil(1024)
            ),
        ),
    }
}

/// vfio_iommu_type1 counts one entry (`struct vfio_dma`) per VFIO_IOMMU_MAP_DMA
/// mapping, whatever its size, and refuses mappings past `dma_entry_limit` (default
/// 65535) with ENOSPC. Strait maps guest RAM in chunks of 128 MiB or one 1 GiB page
/// (`ram_setup::mapping_count`: 8 for 1 GiB): below that is a FAIL. A
/// mapping is only as large as the memory behind it is contiguous to the VMM, though:
/// RAM mapped per page (a guest vIOMMU, a balloon or virtio-mem punching holes) needs
/// one entry per piece. With 4 KiB pages no limit covers that worst case; with the
/// 2 MiB pages the pools and THP give it is RAM / 2 MiB, and past the limit the host
/// is one such feature away from ENOSPC: a WARN.
fn dma_entries(root: &HostRoot, memory: Option<u64>) -> Finding {
    const CHECK: &str = "dma entries";
    let Some(limit) = root
        .read(DMA_ENTRY_LIMIT)
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return Finding::ok(CHECK, "vfio_iommu_type1 not loaded (default limit 65535)");
    };
    let Some(ram) = memory else {
        return Finding::ok(
            CHECK,
            format!("dma_entry_limit {limit}; pass --memory SIZE to compare"),
        );
    };
    let strait = crate::ram_setup::mapping_count(ram);
    let worst = ram.div_ceil(DMA_GRANULE);
    let fix = |want: u64| {
        format!(
            "`options vfio_iommu_type1 dma_entry_limit={want}` in /etc/modprobe.d/vfio.conf, \
             or `echo {want} > /{DMA_ENTRY_LIMIT}` before starting the VM"
        )
    };
    if limit < strait {
        return Finding::fail(
            CHECK,
            format!("dma_entry_limit {limit} is below the {strait} mappings of guest RAM"),
            fix(worst),
        );
    }
    if worst > limit {
        return Finding::warn(
            CHECK,
            format!(
                "dma_entry_limit {limit}: {} of guest RAM mapped in 2 MiB pieces would need \
                 {worst} entries (Strait maps it in {strait})",
                Size(ram)
            ),
            fix(worst),
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "dma_entry_limit {limit} covers {} of guest RAM even in 2 MiB pieces",
            Size(ram)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::root::fake::FakeHost;
    use super::super::Status;
    use super::*;
    use crate::check::root::fake::assert_fix;

    const GIB: u64 = 1 << 30;

    fn pool(host: &FakeHost, kib: u64, total: u64, free: u64) {
        let dir = format!("{POOLS}/hugepages-{kib}kB");
        host.write(&format!("{dir}/nr_hugepages"), &format!("{total}\n"));
        host.write(&format!("{dir}/free_hugepages"), &format!("{free}\n"));
    }

    fn find(host: &FakeHost, memory: Option<u64>, check: &str) -> Finding {
        let limits = ProcessLimits::default();
        super::check(&host.root(), memory, Some(&limits))
            .into_iter()
            .find(|f| f.check == check)
            .unwrap()
    }

    #[test]
    fn pools_are_listed_per_size_and_node() {
        let host = FakeHost::empty();
        pool(&host, 2048, 1024, 1000);
        pool(&host, 1048576, 0, 0);
        let node = format!("{NODES}/node1/hugepages/hugepages-2048kB");
        host.write(&format!("{node}/nr_hugepages"), "512");
        host.write(&format!("{node}/free_hugepages"), "500");
        let all = super::check(&host.root(), None, Some(&ProcessLimits::default()));
        let pools: Vec<_> = all.iter().filter(|f| f.check == "hugepage pool").collect();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].subject.as_deref(), Some("2 MiB"));
        assert_eq!(pools[0].detail, "1000 of 1024 free (node1 500/512)");
        assert_eq!(pools[1].subject.as_deref(), Some("1 GiB"));
    }

    #[test]
    fn enough_free_pages_is_ok() {
        let host = FakeHost::empty();
        pool(&host, 2048, 0, 0);
        pool(&host, 1048576, 16, 16);
        let f = find(&host, Some(16 * GIB), "hugepages for guest RAM");
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.detail.contains("1 GiB pages"));
    }

    #[test]
    fn short_pool_warns_with_the_nr_hugepages_to_write() {
        let host = FakeHost::empty();
        pool(&host, 2048, 100, 96);
        let f = find(&host, Some(GIB), "hugepages for guest RAM");
        // 512 pages needed, 96 free: 100 + 416 reserved.
        assert_fix(
            &f,
            Status::Warn,
            "echo 516 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        );
    }

    #[test]
    fn no_reserved_pages_or_no_hugetlb_warns() {
        let host = FakeHost::empty();
        assert_fix(
            &find(&host, None, "hugepages for guest RAM"),
            Status::Warn,
            "CONFIG_HUGETLBFS",
        );
        pool(&host, 2048, 0, 0);
        assert_fix(
            &find(&host, None, "hugepages for guest RAM"),
            Status::Warn,
            "echo 8192 >",
        );
    }

    #[test]
    fn memlock_below_guest_ram_fails_with_ulimit() {
        let limits = ProcessLimits {
            memlock: Some(8 << 20),
            cap_ipc_lock: false,
        };
        assert_fix(
            &memlock(Some(16 * GIB), Some(&limits)),
            Status::Fail,
            "ulimit -l 16777216",
        );
    }

    #[test]
    fn memlock_unlimited_capable_or_unasked_is_ok() {
        let low = ProcessLimits {
            memlock: Some(8 << 20),
            cap_ipc_lock: false,
        };
        let capable = ProcessLimits {
            cap_ipc_lock: true,
            ..low
        };
        assert_eq!(memlock(Some(GIB), Some(&capable)).status, Status::Ok);
        assert_eq!(memlock(None, Some(&low)).status, Status::Ok);
        let unlimited = ProcessLimits::default();
        assert_eq!(memlock(Some(GIB), Some(&unlimited)).status, Status::Ok);
    }

    #[test]
    fn unreadable_memlock_warns() {
        assert_fix(&memlock(Some(GIB), None), Status::Warn, "ulimit -l");
    }

    #[test]
    fn dma_entry_limit_below_ram_in_2m_pieces_warns() {
        let host = FakeHost::empty();
        host.write(DMA_ENTRY_LIMIT, "65535\n");
        assert_eq!(
            find(&host, Some(64 * GIB), "dma entries").status,
            Status::Ok
        );
        // 256 GiB in 2 MiB pieces: 131072 entries.
        let f = find(&host, Some(256 * GIB), "dma entries");
        assert_fix(&f, Status::Warn, "dma_entry_limit=131072");
    }

    #[test]
    fn dma_entry_limit_below_straits_own_mappings_fails() {
        let host = FakeHost::empty();
        host.write(DMA_ENTRY_LIMIT, "1\n");
        // 8 GiB: RAM below and above the PCI hole, two mappings.
        let f = find(&host, Some(8 * GIB), "dma entries");
        assert_fix(
            &f,
            Status::Fail,
            "options vfio_iommu_type1 dma_entry_limit=4096",
        );
    }

    #[test]
    fn dma_entry_limit_unloaded_or_unasked_is_ok() {
        let host = FakeHost::empty();
        assert_eq!(find(&host, Some(GIB), "dma entries").status, Status::Ok);
        host.write(DMA_ENTRY_LIMIT, "65535\n");
        assert_eq!(find(&host, None, "dma entries").status, Status::Ok);
    }
}
