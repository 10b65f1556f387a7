//! Guest NUMA (the spec's `numa`): which host node each guest node's RAM comes from and
//! its vCPUs run on, read from the host's sysfs (Documentation/ABI/stable/sysfs-devices-node:
//! `online`, `nodeN/cpulist`, `nodeN/distance`; a PCI function's `numa_node`), and what
//! the guest is told (SRAT and SLIT, from `arch`).
//!
//! `"auto"` mirrors the host: one guest node per online host node with CPUs, in host
//! node order, the vCPUs and RAM split evenly, each device on its host node's guest
//! node (a device reporting no node, -1, on none); a host with one node gives the
//! guest no NUMA tables. Guest RAM of a node
//! is bound (`mbind(MPOL_BIND)`) to its host node before it is prefaulted, and the
//! prefault threads of that RAM run on the host node's CPUs (so the zeroing is local
//! too); its vCPU threads are pinned to that node's CPUs. Each guest node holding
//! devices gets a PCIe host bridge of its own (`resources::Topology`), whose `_PXM`
//! the guest reads its devices' node from.

use std::path::PathBuf;

use arch::x86_64::{split_ram, NumaNode, LOCAL_DISTANCE};

use crate::spec::{HugePages, NumaNodeSpec, NumaSpec, VmSpec};

/// A host node the spec names that the host lacks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NumaError {
    #[error("numa[{node}].host_node: the host has no NUMA node {host_node} (online: {online})")]
    NoHostNode {
        node: usize,
        host_node: u32,
        online: String,
    },
    #[error("numa[{node}].host_node: host node {host_node} has no CPU for its vCPUs")]
    NoHostCpus { node: usize, host_node: u32 },
}

/// The host's NUMA nodes, read under a sysfs root (`/sys` on a real host).
#[derive(Debug, Clone)]
pub struct HostNodes {
    root: PathBuf,
}

impl Default for HostNodes {
    fn default() -> Self {
        HostNodes::new("/sys")
    }
}

/// Parses a kernel CPU or node list ("0-3,8,10-11").
pub fn parse_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            out.extend(a..=b);
        }
    }
    out
}

impl HostNodes {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostNodes { root: root.into() }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// The online nodes' text ("0-1"); "0" on a host without NUMA in sysfs.
    pub fn online_text(&self) -> String {
        self.read("devices/system/node/online")
            .map_or("0".into(), |t| t.trim().to_string())
    }

    pub fn online(&self) -> Vec<usize> {
        parse_list(&self.online_text())
    }

    /// Host CPUs of `node`.
    pub fn cpus(&self, node: u32) -> Vec<usize> {
        self.read(&format!("devices/system/node/node{node}/cpulist"))
            .map(|t| parse_list(&t))
            .unwrap_or_default()
    }

    /// Distance from `a` to `b` (sysfs `nodeA/distance`, indexed by node number).
    pub fn distance(&self, a: u32, b: u32) -> u8 {
        let row = self.read(&format!("devices/system/node/node{a}/distance"));
        row.and_then(|r| r.split_whitespace().nth(b as usize)?.parse().ok())
            .unwrap_or(if a == b {
                LOCAL_DISTANCE
            } else {
                2 * LOCAL_DISTANCE
            })
    }

    /// The node a PCI function sits on, `None` when it reports none (-1).
    pub fn device_node(&self, addr: &devices::pci::Bdf) -> Option<u32> {
        let t = self.read(&format!("bus/pci/devices/{addr}/numa_node"))?;
        t.trim()
            .parse::<i64>()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
    }
}

/// One guest node, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNode {
    pub vcpus: Vec<u32>,
    pub memory: u64,
    pub host_node: u32,
    pub devices: Vec<usize>,
    /// The host node's CPUs, for pinning.
    pub host_cpus: Vec<usize>,
}

/// The guest's NUMA layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaPlan {
    pub nodes: Vec<GuestNode>,
    /// Host distances between the nodes' host nodes.
    pub distances: Vec<Vec<u8>>,
}

/// `"auto"`: one guest node per host node of `hosts` (more than one), vCPUs and RAM
/// split evenly (RAM in `page` multiples), each passthrough entry on the guest node of
/// its host node (`device_nodes`, per entry).
pub fn auto_nodes(
    vcpus: u32,
    memory: u64,
    page: u64,
    hosts: &[u32],
    device_nodes: &[Option<u32>],
) -> Vec<NumaNodeSpec> {
    let k = hosts.len() as u64;
    if k < 2 {
        return Vec::new();
    }
    let share = (memory / k) / page * page;
    hosts
        .iter()
        .enumerate()
        .map(|(i, &host_node)| {
            let i = i as u64;
            let lo = (u64::from(vcpus) * i / k) as u32;
            let hi = (u64::from(vcpus) * (i + 1) / k) as u32;
            let mem = if i + 1 == k {
                memory - share * (k - 1)
            } else {
                share
            };
            NumaNodeSpec {
                vcpus: (lo..hi).collect(),
                memory_mib: mem >> 20,
                host_node,
                devices: (0..device_nodes.len())
                    .filter(|d| device_nodes[*d] == Some(host_node))
                    .collect(),
            }
        })
        .collect()
}

/// The guest NUMA plan of `spec` on `host`; `device_nodes` per passthrough entry.
/// `None`: no `numa`, or `"auto"` with no device on a known node.
pub fn plan(
    spec: &VmSpec,
    host: &HostNodes,
    device_nodes: &[Option<u32>],
) -> Result<Option<NumaPlan>, NumaError> {
    let page = spec.memory.hugepages.page_size().max(2 << 20);
    let nodes = match &spec.numa {
        None => return Ok(None),
        Some(NumaSpec::Nodes(n)) => n.clone(),
        Some(NumaSpec::Auto(_)) => {
            let page = match spec.memory.hugepages {
                HugePages::None => 2 << 20,
                _ => page,
            };
            let hosts: Vec<u32> = host
                .online()
                .into_iter()
                .filter_map(|n| u32::try_from(n).ok())
                .filter(|n| !host.cpus(*n).is_empty())
                .collect();
            auto_nodes(spec.vcpus, spec.memory_bytes(), page, &hosts, device_nodes)
        }
    };
    if nodes.is_empty() {
        log::info!("numa: auto: the host has one NUMA node; so has the guest");
        return Ok(None);
    }
    let online = host.online();
    let mut planned = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !online.contains(&(n.host_node as usize)) {
            return Err(NumaError::NoHostNode {
                node: i,
                host_node: n.host_node,
                online: host.online_text(),
            });
        }
        let host_cpus = host.cpus(n.host_node);
        if host_cpus.is_empty() && !n.vcpus.is_empty() {
            return Err(NumaError::NoHostCpus {
                node: i,
                host_node: n.host_node,
            });
        }
        planned.push(GuestNode {
            vcpus: n.vcpus.clone(),
            memory: n.memory_mib << 20,
            host_node: n.host_node,
            devices: n.devices.clone(),
            host_cpus,
        });
    }
    // ACPI (and Linux, which otherwise drops the SLIT) wants two distinct nodes further
    // apart than a node from itself, also when they share a host node.
    let distances = (0..planned.len())
        .map(|a| {
            (0..planned.len())
                .map(|b| {
                    let d = host.distance(planned[a].host_node, planned[b].host_node);
                    if a == b {
                        LOCAL_DISTANCE
                    } else {
                        d.max(LOCAL_DISTANCE + 1)
                    }
                })
                .collect()
        })
        .collect();
    Ok(Some(NumaPlan {
        nodes: planned,
        distances,
    }))
}

impl NumaPlan {
    /// What the guest's SRAT and SLIT say, for RAM laid out as `ram` (base, length) and
    /// the guest PCI functions `devices` (guest node, `bus << 8 | devfn`).
    pub fn acpi_nodes(&self, ram: &[(u64, u64)], devices: &[(u32, u16)]) -> Vec<NumaNode> {
        let sizes: Vec<u64> = self.nodes.iter().map(|n| n.memory).collect();
        let split = split_ram(ram, &sizes);
        (0u32..)
            .zip(&self.nodes)
            .zip(split)
            .zip(&self.distances)
            .map(|(((i, n), memory), d)| NumaNode {
                vcpus: n.vcpus.clone(),
                memory,
                distances: d.clone(),
                devices: devices
                    .iter()
                    .filter(|(node, _)| *node == i)
                    .map(|(_, bdf)| *bdf)
                    .collect(),
            })
            .collect()
    }

    /// Guest RAM ranges and the host node each is bound to, with that node's CPUs for
    /// the threads that prefault it.
    pub fn ram_binds(&self, ram: &[(u64, u64)]) -> Vec<crate::memory::RamBind> {
        let sizes: Vec<u64> = self.nodes.iter().map(|n| n.memory).collect();
        split_ram(ram, &sizes)
            .into_iter()
            .zip(&self.nodes)
            .flat_map(|(ranges, n)| {
                ranges
                    .into_iter()
                    .map(move |(guest, len)| crate::memory::RamBind {
                        guest,
                        len,
                        node: n.host_node,
                        cpus: n.host_cpus.clone(),
                    })
            })
            .collect()
    }

    /// The guest node of passthrough entry `entry`: the node whose `devices` lists it,
    /// or the only node.
    pub fn entry_node(&self, entry: usize) -> Option<u32> {
        if self.nodes.len() == 1 {
            return Some(0);
        }
        let node = self.nodes.iter().position(|n| n.devices.contains(&entry))?;
        u32::try_from(node).ok()
    }

    /// The host CPUs vCPU `index` may run on (its node's), if it is on a node.
    pub fn vcpu_cpus(&self, index: u32) -> Option<&[usize]> {
        self.nodes
            .iter()
            .find(|n| n.vcpus.contains(&index))
            .map(|n| n.host_cpus.as_slice())
    }
}

/// Bind `len` bytes at `addr` (a fresh mapping) to host node `node` (MPOL_BIND), so the
/// pages are allocated there when first touched.
pub fn bind_memory(addr: u64, len: u64, node: u32) -> std::io::Result<()> {
    const MPOL_BIND: libc::c_long = 2;
    let mut mask = [0u64; 16];
    let (word, bit) = (node as usize / 64, node % 64);
    let slot = mask
        .get_mut(word)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    *slot |= 1 << bit;
    let maxnode = (mask.len() * 64) as libc::c_ulong;
    // SAFETY: mbind reads `maxnode` bits of `mask`, which lives for the call; it changes
    // the policy of the caller's own mapping `addr..addr+len`, nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pin the thread `thread` to host CPUs `cpus`.
pub fn pin_thread(thread: libc::pthread_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET bounds-checks `c` against the set's size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `thread` is a live thread of this process (its JoinHandle is held), and
    // `set` lives for the call.
    let rc = unsafe {
        libc::pthread_setaffinity_np(thread, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Each passthrough entry's host node (a slot's by its function 0).
pub fn device_nodes(spec: &VmSpec, host: &HostNodes) -> Vec<Option<u32>> {
    spec.passthrough_hosts()
        .iter()
        .map(|h| host.device_node(&h.addr()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with nodes 0 (CPUs 0-1) and 1 (CPUs 2-3), distance 21 between them.
    fn host() -> (vmm_sys_util::tempdir::TempDir, HostNodes) {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let root = dir.as_path().to_path_buf();
        let node = root.join("devices/system/node");
        for (n, cpus, dist) in [(0, "0-1", "10 21"), (1, "2-3", "21 10")] {
            std::fs::create_dir_all(node.join(format!("node{n}"))).unwrap();
            std::fs::write(node.join(format!("node{n}/cpulist")), cpus).unwrap();
            std::fs::write(node.join(format!("node{n}/distance")), dist).unwrap();
        }
        std::fs::write(node.join("online"), "0-1\n").unwrap();
        let dev = root.join("bus/pci/devices/0000:81:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        (dir, HostNodes::new(root))
    }

    fn spec(numa: &str, passthrough: &str) -> VmSpec {
        let text = format!(
            r#"{{"vcpus": 2, "memory": {{"size_mib": 512, "hugepages": "2M"}},
                "kernel": {{"path": "/k"}}, "passthrough": [{passthrough}], "numa": {numa}}}"#
        );
        let s = VmSpec::parse(&text).unwrap();
        s.validate().unwrap();
        s
    }

    #[test]
    fn cpu_lists_parse_ranges_and_singles() {
        assert_eq!(parse_list("0-2,5,7-8\n"), [0, 1, 2, 5, 7, 8]);
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn auto_mirrors_the_host_nodes_with_the_device_on_its_own() {
        let (_d, h) = host();
        let s = spec("\"auto\"", r#"{"host": "0000:81:00.0"}"#);
        let p = plan(&s, &h, &device_nodes(&s, &h)).unwrap().unwrap();
        assert_eq!(p.nodes.len(), 2);
        let n = &p.nodes[1];
        assert_eq!(
            (n.host_node, n.memory, n.vcpus.clone()),
            (1, 256 << 20, vec![1])
        );
        assert_eq!((p.nodes[0].devices.len(), n.devices.clone()), (0, vec![0]));
        assert_eq!(p.vcpu_cpus(1), Some(&[2usize, 3][..]));
        let binds: Vec<(u64, u64, u32, Vec<usize>)> = p
            .ram_binds(&[(0, 512 << 20)])
            .into_iter()
            .map(|b| (b.guest, b.len, b.node, b.cpus))
            .collect();
        assert_eq!(
            binds,
            [
                (0, 256 << 20, 0, vec![0, 1]),
                (256 << 20, 256 << 20, 1, vec![2, 3])
            ]
        );
        assert_eq!(p.entry_node(0), Some(1));
    }

    #[test]
    fn auto_splits_cpus_and_memory_between_the_host_nodes() {
        let nodes = auto_nodes(3, 3 << 30, 2 << 20, &[0, 1], &[Some(1), None, Some(0)]);
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].host_node, nodes[0].vcpus.clone()), (0, vec![0]));
        assert_eq!(
            (nodes[1].host_node, nodes[1].vcpus.clone()),
            (1, vec![1, 2])
        );
        assert_eq!(nodes[0].memory_mib + nodes[1].memory_mib, 3072);
        assert_eq!(
            (nodes[0].devices.clone(), nodes[1].devices.clone()),
            (vec![2], vec![0])
        );
    }

    #[test]
    fn auto_on_a_one_node_host_is_no_numa() {
        assert!(auto_nodes(2, 1 << 30, 2 << 20, &[0], &[Some(0)]).is_empty());
    }

    #[test]
    fn explicit_nodes_get_host_distances() {
        let (_d, h) = host();
        let s = spec(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 0},
                {"vcpus": [1], "memory_mib": 256, "host_node": 1}]"#,
            "",
        );
        let p = plan(&s, &h, &[]).unwrap().unwrap();
        assert_eq!(p.distances, [[10, 21], [21, 10]]);
        let acpi = p.acpi_nodes(&[(0, 512 << 20)], &[(1, 0x0300), (0, 0x0100)]);
        assert_eq!(acpi[1].memory, [(256 << 20, 256 << 20)]);
        assert_eq!(
            (acpi[0].devices.clone(), acpi[1].devices.clone()),
            (vec![0x0100], vec![0x0300])
        );
    }

    #[test]
    fn guest_nodes_on_one_host_node_are_still_apart() {
        let (_d, h) = host();
        let s = spec(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 1},
                {"vcpus": [1], "memory_mib": 256, "host_node": 1}]"#,
            "",
        );
        let p = plan(&s, &h, &[]).unwrap().unwrap();
        assert_eq!(p.distances, [[10, 11], [11, 10]]);
    }

    #[test]
    fn each_entry_is_on_the_node_listing_it() {
        let (_d, h) = host();
        let s = spec(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 0, "devices": [1]},
                {"vcpus": [1], "memory_mib": 256, "host_node": 1, "devices": [0]}]"#,
            r#"{"host": "0000:81:00.0"}, {"host": "0000:82:00.0"}, {"host": "0000:83:00.0"}"#,
        );
        let p = plan(&s, &h, &[]).unwrap().unwrap();
        assert_eq!(
            (p.entry_node(0), p.entry_node(1), p.entry_node(2)),
            (Some(1), Some(0), None)
        );
        let one = spec(
            r#"[{"vcpus": [0, 1], "memory_mib": 512, "host_node": 1}]"#,
            r#"{"host": "0000:81:00.0"}"#,
        );
        assert_eq!(plan(&one, &h, &[]).unwrap().unwrap().entry_node(0), Some(0));
    }

    #[test]
    fn a_node_the_host_lacks_is_named() {
        let (_d, h) = host();
        let s = spec(
            r#"[{"vcpus": [0, 1], "memory_mib": 512, "host_node": 3}]"#,
            "",
        );
        let err = plan(&s, &h, &[]).unwrap_err();
        assert_eq!(
            err,
            NumaError::NoHostNode {
                node: 0,
                host_node: 3,
                online: "0-1".into()
            }
        );
        assert!(err.to_string().starts_with("numa[0].host_node: "), "{err}");
    }

    #[test]
    fn memory_binds_to_a_node_of_this_host() {
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let res = bind_memory(addr as u64, 1 << 20, 0);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, 1 << 20) };
        // ENOSYS on kernels without NUMA support; EPERM under some sandboxes.
        if let Err(e) = res {
            assert!(
                matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)),
                "{e}"
            );
        }
    }
}
