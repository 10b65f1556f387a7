//! The benchmark's plan: the VMM launches one L1 boot runs, in order, and what
//! the L1 agent records about each. The host writes the plan as JSON into the
//! run's work directory; the agent (`testbed l1-agent`, inside L1) appends one
//! [`LaunchRecord`] per line to the results file, so a run cut short still
//! leaves every finished launch behind.
//!
//! Launches come in repetitions; inside one, every measurement runs QEMU then
//! Strait back to back (Q S Q S ...), so slow drift of the shared 2-core host
//! hits both alike. The launch series over RAM, kernel cache and devices
//! ([`Sweep`]; what it measures: [`super::sweep`]) runs first, in an order of
//! its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::HugePages;
use crate::vmm::{qemu_command, strait_spec, GuestConfig, Vmm};

/// The plan's file name in the work dir.
pub const PLAN_FILE: &str = "bench-plan.json";
/// The agent's results (JSON lines) in the work dir.
pub const RESULTS_FILE: &str = "bench-results.jsonl";
/// Per-launch console logs (timestamped) in the work dir.
pub const LOGS_DIR: &str = "bench-logs";

/// L2 prints this once the nvme driver has bound: the agent samples the VMM's
/// memory and KVM's exit counters.
pub const READY_MARKER: &str = "TESTBED-BENCH ready";
/// L2's /init prints this first (both VMMs, same image).
pub const INIT_MARKER: &str = "TESTBED-INIT";
/// iobench prints these around each load; the agent samples KVM's counters.
pub const IO_BEGIN: &str = "IOBENCH-BEGIN";
/// See [`IO_BEGIN`].
pub const IO_RESULT: &str = "IOBENCH-RESULT";
/// netbench (in L2) prints these around each direction; the agent samples KVM's counters.
pub const NET_BEGIN: &str = "NETBENCH-BEGIN";
/// See [`NET_BEGIN`].
pub const NET_RESULT: &str = "NETBENCH-RESULT";
/// The netbench peer's lines in L1 (what it received, or sent and the client got).
pub const NET_PEER: &str = "NETBENCH-PEER";
/// The bench /init prints this just before `reboot -f` (first boot of a reboot launch).
pub const REBOOTING_MARKER: &str = "TESTBED-BENCH rebooting";
/// ... and this on the second boot, once it found the first boot's token on the nvme.
pub const SECOND_BOOT_MARKER: &str = "TESTBED-BENCH second-boot";

/// The trigger of a periodic sample ([`Launch::sample_period_ms`]).
pub const TICK_TRIGGER: &str = "tick";

/// Strait's timeline mark once all guest RAM is faulted in and DMA-mapped (in the
/// background, usually after the vCPUs started): the end of a memory launch under
/// Strait.
pub const STRAIT_READY_MARK: &str = "dma_mapped";
/// Strait's timeline mark once all guest RAM is faulted in, with no device.
pub const STRAIT_RAM_MARK: &str = "ram_prefaulted";
/// What the plain populate prints (agent, in L1): `TESTBED-POPULATE pages=2M mib=512
/// ms=81.2 first_ms=410.5` (`ms`: the timed second pass; the first also has L0 back the
/// pages, `l1mem::populate_twice`).
pub const POPULATE_MARK: &str = "TESTBED-POPULATE";

/// The VMM of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    /// QEMU 7.2 (the reference).
    Qemu,
    /// Strait.
    Strait,
    /// No VMM: the agent itself faults the same hugepages in L1 (mmap with
    /// `MAP_POPULATE`), the zeroing bandwidth a VMM's RAM setup is held to.
    Populate,
}

impl VmmKind {
    /// Both, in the order each measurement runs them.
    pub const BOTH: [VmmKind; 2] = [VmmKind::Qemu, VmmKind::Strait];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Strait => "strait",
            VmmKind::Populate => "populate",
        }
    }
}

/// What a launch measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchKind {
    /// L2 boots, prints its /init marker, checks the device is there, powers off.
    Boot,
    /// As `Boot` with no device passed through: the launch cost without VFIO.
    Bare,
    /// L2 boots, binds nvme, runs iobench (sequential then random), powers off.
    Nvme,
    /// L2 boots with no passed-through device and a virtio-blk disk on L1's disk
    /// (O_DIRECT in both VMMs), runs iobench against /dev/vda, powers off.
    Blk,
    /// L2 boots with no passed-through device and virtio-net on L1's tap (vhost-net
    /// in both VMMs), runs netbench against its peer in L1 both ways, powers off.
    Net,
    /// The VMM sets up RAM and DMA maps and is stopped once ready to run.
    Memory,
    /// L2 boots, binds nvme, leaves a token on it and reboots; the second boot finds
    /// the token, clears it and powers off. The VMM resets in place (QEMU's
    /// system_reset, Strait's reboot in place).
    Reboot,
    /// L2 boots with the three devices passed through and `bartouch` reads every
    /// 4 KiB page of the first GiB of ivshmem's 8 GiB BAR twice: the first pass takes
    /// the faults that map it (nested page faults, KVM, vfio-pci's fault handler), the
    /// second is the accesses alone.
    Bar,
    /// As `Bare`, Strait with its kernel cache empty (cold: it decompresses the
    /// bzImage beside RAM setup) or filled (cached); QEMU boots the same bzImage.
    Kernel,
    /// Launch series over RAM: L2 with no device boots to /init and powers off, at
    /// one RAM size on 2 MiB or 1 GiB pages, prefault on or off (QEMU: `prealloc`);
    /// and the plain populate of the same pages in L1 ([`VmmKind::Populate`]).
    Ram,
    /// Strait's RAM setup alone for the RAM series: prefault on, L2 (no device) holds
    /// at /init, and Strait is stopped at its `ram_prefaulted` mark (a guest that
    /// powers off first would end the setup before it is done).
    RamSetup,
    /// As `Boot` with the `passthrough` scenario's three devices: nvme,
    /// bochs-display and ivshmem with its 8 GiB BAR.
    Passthrough,
    /// L2 boots with no device and `initcall_debug`; /init prints the slow initcalls and
    /// the boot's milestones from its kernel log, which [`crate::bench::initcalls`]
    /// compares initcall by initcall.
    Initcall,
}

impl LaunchKind {
    /// Every kind: first those of a repetition, in the order it runs them, then
    /// those of the launch series.
    pub const ALL: [LaunchKind; 13] = [
        LaunchKind::Boot,
        LaunchKind::Bare,
        LaunchKind::Initcall,
        LaunchKind::Nvme,
        LaunchKind::Blk,
        LaunchKind::Net,
        LaunchKind::Reboot,
        LaunchKind::Bar,
        LaunchKind::Memory,
        LaunchKind::Kernel,
        LaunchKind::Ram,
        LaunchKind::RamSetup,
        LaunchKind::Passthrough,
    ];

    /// Lower-case name, as in the plan's JSON and `bench --only`.
    pub fn name(self) -> &'static str {
        match self {
            LaunchKind::Boot => "boot",
            LaunchKind::Bare => "bare",
            LaunchKind::Nvme => "nvme",
            LaunchKind::Blk => "blk",
            LaunchKind::Net => "net",
            LaunchKind::Memory => "memory",
            LaunchKind::Reboot => "reboot",
            LaunchKind::Bar => "bar",
            LaunchKind::Kernel => "kernel",
            LaunchKind::Ram => "ram",
            LaunchKind::RamSetup => "ram-setup",
            LaunchKind::Passthrough => "passthrough",
            LaunchKind::Initcall => "initcall",
        }
    }

    /// Devices L2 gets: none, the nvme (`@DEV0@`), or all three of the bench's L1
    /// (`bar` reads ivshmem's BAR).
    pub fn devices(self) -> usize {
        match self {
            LaunchKind::Bare
            | LaunchKind::Blk
            | LaunchKind::Net
            | LaunchKind::Kernel
            | LaunchKind::Ram
            | LaunchKind::RamSetup
            | LaunchKind::Initcall => 0,
            LaunchKind::Passthrough | LaunchKind::Bar => 3,
            LaunchKind::Boot | LaunchKind::Nvme | LaunchKind::Memory | LaunchKind::Reboot => 1,
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Identifies a launch and the configuration it measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchKey {
    /// Unique, file-name safe: `r2-mem-2048-2M-qemu`.
    pub id: String,
    /// What it measures.
    pub kind: LaunchKind,
    /// Which VMM.
    pub vmm: VmmKind,
    /// Repetition, from 1.
    pub rep: u32,
    /// L2 RAM.
    pub memory_mib: u32,
    /// Backing of L2 RAM.
    pub hugepages: HugePages,
    /// RAM faulted in at the start (Strait `memory.prefault`, QEMU `prealloc`).
    #[serde(default = "yes")]
    pub prefault: bool,
    /// Strait started with its kernel cache empty.
    #[serde(default)]
    pub cold_kernel: bool,
}

fn yes() -> bool {
    true
}

/// One VMM invocation for the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// What is run.
    pub key: LaunchKey,
    /// Program and arguments, with `@DEVn@` placeholders.
    pub command: Vec<String>,
    /// Strait's spec (placeholders inside), written to `spec_path` before the launch.
    pub spec: Option<serde_json::Value>,
    /// Where the spec goes.
    pub spec_path: Option<PathBuf>,
    /// QEMU's QMP socket: the agent times `query-status`'s answer on it.
    pub qmp_socket: Option<PathBuf>,
    /// Stop (SIGKILL) the VMM once QMP answered.
    pub stop_at_qmp: bool,
    /// Stop (SIGKILL) the VMM once an output line contains this.
    pub stop_at_line: Option<String>,
    /// Kill the VMM after this long.
    pub timeout_secs: u64,
    /// L1's transparent hugepages mode for this launch (the plan's is restored after).
    #[serde(default)]
    pub transparent_hugepages: Option<String>,
    /// A program the agent runs in L1 for the launch's length (started before the
    /// VMM, killed after it): the net launch's netbench peer. Its output lines join
    /// the VMM's.
    #[serde(default)]
    pub peer: Option<Vec<String>>,
    /// Keep every output line in the record, not only the marker lines (the
    /// initcall launch: its kernel log is the measurement).
    #[serde(default)]
    pub keep_all_lines: bool,
    /// Sample KVM's counters every this many ms from spawn until L2's /init marker
    /// (trigger [`TICK_TRIGGER`]): exits per boot phase.
    #[serde(default)]
    pub sample_period_ms: Option<u64>,
}

/// Everything the agent runs in one L1 boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// In order.
    pub launches: Vec<Launch>,
    /// Where per-launch logs go (a host path, the same inside L1's chroot).
    pub work_dir: PathBuf,
    /// Value written to L1's transparent_hugepage/enabled before the first launch.
    pub transparent_hugepages: String,
    /// Strait's per-user cache (`XDG_CACHE_HOME`) in L1, on its own tmpfs (a local
    /// disk's part), filled at the start from the testbed's; `None`: the run script's.
    #[serde(default)]
    pub vmm_cache: Option<PathBuf>,
}

/// iobench's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoLoad {
    /// Seconds per pattern.
    pub secs: u64,
    /// Requests in flight (iobench threads).
    pub queue_depth: u32,
}

/// What the plan is built from.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Repetitions of every measurement per VMM.
    pub reps: u32,
    /// Guest RAM sizes of the memory launches.
    pub memory_sizes: Vec<u32>,
    /// Page kinds of the memory launches.
    pub page_kinds: Vec<HugePages>,
    /// The guest of boot and nvme launches (memory launches change its RAM only).
    pub guest: GuestConfig,
    /// The strait binary.
    pub strait: PathBuf,
    /// The run's work dir.
    pub work_dir: PathBuf,
    /// iobench's load (netbench sends `io.secs` each way).
    pub io: IoLoad,
    /// The static netbench executable (the net launch's peer in L1).
    pub netbench: PathBuf,
    /// Only these kinds of launch (`bench --only`); all when empty.
    pub only: Vec<LaunchKind>,
    /// The launch series.
    pub sweep: Sweep,
    /// Strait's cache in L1 ([`Plan::vmm_cache`]).
    pub vmm_cache: Option<PathBuf>,
}

/// A measurement: what runs, on how much RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Measurement {
    pub kind: LaunchKind,
    pub memory_mib: u32,
    pub hugepages: HugePages,
    pub prefault: bool,
    pub cold_kernel: bool,
}

impl Measurement {
    fn label(self) -> String {
        match self.kind {
            LaunchKind::Boot => "boot".into(),
            LaunchKind::Bare => "bare".into(),
            LaunchKind::Nvme => "nvme".into(),
            LaunchKind::Blk => "blk".into(),
            LaunchKind::Net => "net".into(),
            LaunchKind::Reboot => "reboot".into(),
            LaunchKind::Bar => "bar".into(),
            LaunchKind::Initcall => "initcall".into(),
            LaunchKind::Memory => {
                format!("mem-{}-{}", self.memory_mib, self.hugepages.spec_value())
            }
            LaunchKind::Ram => format!(
                "ram-{}-{}{}",
                self.memory_mib,
                self.hugepages.spec_value(),
                if self.prefault { "" } else { "-lazy" }
            ),
            LaunchKind::RamSetup => format!(
                "ram-{}-{}-setup",
                self.memory_mib,
                self.hugepages.spec_value()
            ),
            LaunchKind::Kernel if self.cold_kernel => "kernel-cold".into(),
            LaunchKind::Kernel => "kernel-cached".into(),
            LaunchKind::Passthrough => "passthrough".into(),
        }
    }
}

/// The launches, repetition by repetition, QEMU before Strait in each measurement.
pub fn build(cfg: &PlanConfig) -> Plan {
    let base = Measurement {
        kind: LaunchKind::Boot,
        memory_mib: cfg.guest.memory_mib,
        hugepages: cfg.guest.hugepages,
        prefault: true,
        cold_kernel: false,
    };
    let mut measurements = vec![
        base,
        Measurement {
            kind: LaunchKind::Bare,
            ..base
        },
        Measurement {
            kind: LaunchKind::Initcall,
            ..base
        },
        Measurement {
            kind: LaunchKind::Nvme,
            ..base
        },
        Measurement {
            kind: LaunchKind::Blk,
            ..base
        },
        Measurement {
            kind: LaunchKind::Net,
            ..base
        },
        Measurement {
            kind: LaunchKind::Reboot,
            ..base
        },
        Measurement {
            kind: LaunchKind::Bar,
            ..base
        },
    ];
    for &memory_mib in &cfg.memory_sizes {
        for &hugepages in &cfg.page_kinds {
            measurements.push(Measurement {
                kind: LaunchKind::Memory,
                memory_mib,
                hugepages,
                ..base
            });
        }
    }
    if !cfg.only.is_empty() {
        measurements.retain(|m| cfg.only.contains(&m.kind));
    }
    let mut launches: Vec<Launch> = order(&cfg.sweep, base, &cfg.only)
        .into_iter()
        .map(|(rep, m, vmm)| launch(cfg, m, rep, vmm))
        .collect();
    for rep in 1..=cfg.reps {
        for m in &measurements {
            for vmm in VmmKind::BOTH {
                launches.push(launch(cfg, *m, rep, vmm));
            }
        }
    }
    Plan {
        launches,
        work_dir: cfg.work_dir.clone(),
        transparent_hugepages: "never".into(),
        vmm_cache: cfg.vmm_cache.clone(),
    }
}

/// L2's command line for a launch: the bench mode and iobench's load (netbench's
/// seconds each way; or, for a reboot, the launch's id, which its token on the nvme
/// carries), read by the bench /init from /proc/cmdline.
fn guest_cmdline(base: &str, kind: LaunchKind, io: IoLoad, id: &str) -> String {
    match kind {
        LaunchKind::Nvme | LaunchKind::Blk => format!(
            "{base} testbed.bench={} testbed.iosecs={} testbed.qd={}",
            if kind == LaunchKind::Nvme {
                "nvme"
            } else {
                "blk"
            },
            io.secs,
            io.queue_depth
        ),
        LaunchKind::Net => format!("{base} testbed.bench=net testbed.iosecs={}", io.secs),
        LaunchKind::Reboot => format!("{base} testbed.bench=reboot testbed.launch={id}"),
        LaunchKind::Bar => format!("{base} testbed.bench=bar"),
        LaunchKind::Initcall => format!(
            "{} testbed.bench=initcall",
            crate::bench::initcalls::debug_cmdline(base)
        ),
        LaunchKind::RamSetup => format!("{base} testbed.bench=hold"),
        LaunchKind::Boot
        | LaunchKind::Bare
        | LaunchKind::Memory
        | LaunchKind::Kernel
        | LaunchKind::Ram
        | LaunchKind::Passthrough => format!("{base} testbed.bench=boot"),
    }
}

/// One launch of measurement `m` in repetition `rep` under `vmm`.
pub(crate) fn launch(cfg: &PlanConfig, m: Measurement, rep: u32, vmm: VmmKind) -> Launch {
    let id = format!("r{rep}-{}-{}", m.label(), vmm.name());
    let mut guest = cfg.guest.clone();
    guest.memory_mib = m.memory_mib;
    guest.hugepages = m.hugepages;
    guest.prefault = m.prefault;
    guest.cmdline = guest_cmdline(&cfg.guest.cmdline, m.kind, cfg.io, &id);
    guest.devices = m.kind.devices();
    if m.kind == LaunchKind::Blk {
        guest.disks = vec![PathBuf::from(crate::l0::L1_DISK_DEVICE)];
        guest.direct_disks = true;
    }
    if m.kind == LaunchKind::Net {
        guest.net = true;
    }
    if m.kind == LaunchKind::Reboot {
        guest.strait.on_reboot = Some("restart");
    }
    let memory = m.kind == LaunchKind::Memory;
    let qmp_socket = (memory && vmm == VmmKind::Qemu)
        .then(|| PathBuf::from(format!("/tmp/testbed-qmp-{id}.sock")));
    let spec_path = (vmm == VmmKind::Strait).then(|| cfg.work_dir.join(format!("spec-{id}.json")));
    let command = match (vmm, &spec_path) {
        (VmmKind::Strait, Some(spec)) => Vmm::Strait {
            binary: cfg.strait.clone(),
        }
        .command(&guest, spec),
        (VmmKind::Qemu, _) => {
            let mut args = qemu_command(&guest);
            if m.kind == LaunchKind::Reboot {
                // QEMU resets the machine in place (system_reset) instead of exiting.
                args.retain(|a| a != "-no-reboot");
            }
            if let Some(socket) = &qmp_socket {
                // -S: stop before the first instruction; QMP answers once machine
                // init (RAM prealloc, vfio realize and its DMA maps) is done.
                let qmp = format!("unix:{},server=on,wait=off", socket.display());
                args.extend(["-S".into(), "-qmp".into(), qmp]);
            }
            args
        }
        // The agent populates in its own process.
        _ => Vec::new(),
    };
    let key = LaunchKey {
        id,
        kind: m.kind,
        vmm,
        rep,
        memory_mib: m.memory_mib,
        hugepages: m.hugepages,
        prefault: m.prefault,
        cold_kernel: m.cold_kernel,
    };
    Launch {
        command,
        spec: spec_path.as_ref().map(|_| strait_spec(&guest)),
        spec_path,
        stop_at_qmp: qmp_socket.is_some(),
        qmp_socket,
        stop_at_line: match (m.kind, vmm) {
            (LaunchKind::Memory, VmmKind::Strait) => {
                Some(format!("strait: timeline: {STRAIT_READY_MARK}="))
            }
            (LaunchKind::RamSetup, _) => Some(format!("strait: timeline: {STRAIT_RAM_MARK}=")),
            _ => None,
        },
        timeout_secs: timeout_secs(m.kind, cfg.io) + ram_secs(&key, 25),
        peer: (m.kind == LaunchKind::Net).then(|| {
            let port = crate::net::BENCH_PORT.to_string();
            let netbench = cfg.netbench.display().to_string();
            vec![netbench, "serve".into(), "--port".into(), port]
        }),
        keep_all_lines: m.kind == LaunchKind::Initcall,
        sample_period_ms: (m.kind == LaunchKind::Initcall)
            .then_some(crate::bench::initcalls::SAMPLE_PERIOD_MS),
        // vfio-pci's huge pfnmap (Linux 6.12) needs transparent hugepages on for the
        // BAR mapping: the L1 kernel's default (Debian: `always`), not the plan's `never`.
        transparent_hugepages: (m.kind == LaunchKind::Bar).then(|| BAR_THP.to_string()),
        key,
    }
}

/// L1's transparent hugepages mode during `bar` launches.
pub const BAR_THP: &str = "always";

/// Seconds per GiB of RAM a launch series' launch may add to its kind's time: L1
/// zeroes warm hugepages at about 1 GiB/s under TCG, but the first touch of a page of
/// L1's RAM makes L0 allocate it, 10-25 s per GiB on the loaded build machine.
fn ram_secs(key: &LaunchKey, per_gib: u64) -> u64 {
    match key.kind {
        LaunchKind::Ram | LaunchKind::RamSetup => {
            u64::from(key.memory_mib).div_ceil(1024) * per_gib
        }
        _ => 0,
    }
}

/// 2 MiB pages for a guest of `mib` MiB: its RAM and the VMM's slack.
pub fn bench_hugepages(mib: u32) -> u32 {
    mib.div_ceil(2) + 8
}

/// A page kind as the tables name it.
pub fn pages_label(pages: HugePages) -> &'static str {
    match pages {
        HugePages::None => "4 KiB pages",
        HugePages::Size2M => "2 MiB pages",
        HugePages::Size1G => "1 GiB pages",
    }
}

// The launch series (what it measures: `super::sweep`). It runs before the
// repetitions, in an order that lets one L1 hold it: L1 reserves its 1 GiB pages at
// boot (they cannot be had later), so every 1 GiB launch runs first; then the agent
// gives those pages back and grows the 2 MiB pool size by size, smallest first.

/// The page kinds of the RAM series, in the order they run (1 GiB first: see above).
pub const PAGE_KINDS: [HugePages; 2] = [HugePages::Size1G, HugePages::Size2M];

/// What the series runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sweep {
    /// Guest RAM sizes, MiB (on 1 GiB pages rounded up to whole GiB).
    pub sizes: Vec<u32>,
    /// Repetitions of every launch.
    pub reps: u32,
}

impl Sweep {
    /// No series.
    pub fn none() -> Self {
        Sweep {
            sizes: Vec::new(),
            reps: 0,
        }
    }

    /// The sizes run on `pages`: whole pages, ascending, each once.
    pub fn sizes_on(&self, pages: HugePages) -> Vec<u32> {
        let page = pages.page_mib().unwrap_or(1);
        let mut sizes: Vec<u32> = self.sizes.iter().map(|s| s.div_ceil(page) * page).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// 1 GiB pages L1 must reserve at boot: the largest 1 GiB guest's.
    pub fn gigantic_pages(&self) -> u32 {
        let sizes = self.sizes_on(HugePages::Size1G);
        sizes.last().map_or(0, |mib| mib / 1024)
    }

    /// The largest guest, MiB.
    pub fn largest_mib(&self) -> u32 {
        PAGE_KINDS
            .iter()
            .flat_map(|&p| self.sizes_on(p))
            .max()
            .unwrap_or(0)
    }
}

/// The series' launches in order, as (repetition, measurement, VMM): the kernel
/// cache's (Strait cold, then both VMMs cached), the RAM series (1 GiB pages, then
/// 2 MiB; sizes ascending; per size and repetition the populate, then prefault on
/// and off under both VMMs), the three-device launches. `base` is the boot
/// launch's guest; `only` as `bench --only`.
pub(crate) fn order(
    sweep: &Sweep,
    base: Measurement,
    only: &[LaunchKind],
) -> Vec<(u32, Measurement, VmmKind)> {
    let wanted = |k| only.is_empty() || only.contains(&k);
    let reps = 1..=sweep.reps;
    let mut out = Vec::new();
    if wanted(LaunchKind::Kernel) {
        let cached = Measurement {
            kind: LaunchKind::Kernel,
            ..base
        };
        let cold = Measurement {
            cold_kernel: true,
            ..cached
        };
        for rep in reps.clone() {
            out.push((rep, cold, VmmKind::Strait));
            out.extend(VmmKind::BOTH.map(|v| (rep, cached, v)));
        }
    }
    if wanted(LaunchKind::Ram) {
        for pages in PAGE_KINDS {
            for memory_mib in sweep.sizes_on(pages) {
                let on = Measurement {
                    kind: LaunchKind::Ram,
                    memory_mib,
                    hugepages: pages,
                    ..base
                };
                let off = Measurement {
                    prefault: false,
                    ..on
                };
                let setup = Measurement {
                    kind: LaunchKind::RamSetup,
                    ..on
                };
                for rep in reps.clone() {
                    out.push((rep, on, VmmKind::Populate));
                    out.push((rep, setup, VmmKind::Strait));
                    for m in [on, off] {
                        out.extend(VmmKind::BOTH.map(|v| (rep, m, v)));
                    }
                }
            }
        }
    }
    if wanted(LaunchKind::Passthrough) {
        let m = Measurement {
            kind: LaunchKind::Passthrough,
            ..base
        };
        for rep in reps {
            out.extend(VmmKind::BOTH.map(|v| (rep, m, v)));
        }
    }
    out
}

/// How long a launch may take before the agent kills it.
/// About three times the slowest seen on the testbed (QEMU to /init: up to 37 s).
pub fn timeout_secs(kind: LaunchKind, io: IoLoad) -> u64 {
    match kind {
        LaunchKind::Boot | LaunchKind::Bare | LaunchKind::Ram | LaunchKind::RamSetup => 100,
        // A cold launch decompresses the kernel twice at once, in Strait and in the
        // guest: 28 s, and once over 100 s with L1 starved by other testbeds.
        LaunchKind::Kernel => 240,
        // QEMU's guest reached /init after up to 15 s of uptime on a loaded testbed, on
        // top of SeaBIOS and the guest's own decompression (about 30 s).
        LaunchKind::Initcall => 150,
        LaunchKind::Nvme | LaunchKind::Blk | LaunchKind::Net => 120 + 2 * io.secs,
        LaunchKind::Reboot => 200,
        LaunchKind::Memory => 60,
        LaunchKind::Bar => 400,
        // QEMU took 55-93 s to the 3-device guest's exit, with its checks.
        LaunchKind::Passthrough => 300,
    }
}

impl LaunchKey {
    /// The measurement this launch is a repetition of (`mem-2048-2M-strait`).
    pub fn measurement(&self) -> String {
        self.id
            .split_once('-')
            .map_or(self.id.clone(), |(_, rest)| rest.to_string())
    }
}

/// What a launch usually takes on the testbed (for L0's time limit).
pub fn expected_secs(kind: LaunchKind, io: IoLoad) -> u64 {
    match kind {
        LaunchKind::Boot
        | LaunchKind::Bare
        | LaunchKind::Kernel
        | LaunchKind::Ram
        | LaunchKind::RamSetup => 30,
        LaunchKind::Initcall => 40,
        LaunchKind::Nvme | LaunchKind::Blk | LaunchKind::Net => 45 + 2 * io.secs,
        LaunchKind::Reboot => 60,
        LaunchKind::Memory => 20,
        LaunchKind::Bar => 120,
        LaunchKind::Passthrough => 100,
    }
}

/// What a planned launch usually takes: its kind's time, and its RAM's.
pub fn expected_launch_secs(key: &LaunchKey, io: IoLoad) -> u64 {
    match key.vmm {
        // The populate touches a size's pages first (twice).
        VmmKind::Populate => ram_secs(key, 15),
        VmmKind::Qemu | VmmKind::Strait => expected_secs(key.kind, io) + ram_secs(key, 3),
    }
}

/// L0's time limit for a plan: twice the expected time plus L1's boot and
/// teardown. The agent also stops starting launches that cannot finish in time.
pub fn l0_timeout_secs(plan: &Plan, io: IoLoad) -> u64 {
    let expected: u64 = plan
        .launches
        .iter()
        .map(|l| expected_launch_secs(&l.key, io))
        .sum();
    2 * expected + 180
}

/// An output line of the VMM and when the agent read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedLine {
    /// Milliseconds since the agent spawned the VMM.
    pub ms: f64,
    /// The line, without its line ending.
    pub text: String,
}

/// The VMM process as seen from L1's /proc at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// VmRSS from /proc/PID/status (hugetlb pages are never in it).
    pub vm_rss_kib: u64,
    /// VmLck: pages VFIO's type1 IOMMU driver pinned for DMA are accounted here.
    pub vm_lck_kib: u64,
    /// Sum of Rss over /proc/PID/smaps.
    pub smaps_rss_kib: u64,
    /// Rss of the guest-RAM mappings (those at least half the guest's RAM in size).
    pub guest_ram_rss_kib: u64,
    /// Number of guest-RAM mappings found.
    pub guest_ram_vmas: u32,
    /// Sum of Pss over /proc/PID/smaps, guest-RAM mappings excluded.
    pub pss_excl_guest_kib: u64,
    /// Hugetlb pages mapped (Private_Hugetlb + Shared_Hugetlb).
    pub hugetlb_kib: u64,
    /// Open file descriptors on /dev/vfio/*.
    pub vfio_fds: u32,
    /// vhost worker threads owned by the process (L1's kernel names them
    /// `vhost-<owner tid>`): at least one while vhost-net carries its frames.
    #[serde(default)]
    pub vhost_workers: u32,
}

impl ProcessSample {
    /// Resident memory of the VMM itself: Rss minus the guest-RAM mappings'.
    pub fn rss_excl_guest_kib(&self) -> u64 {
        self.smaps_rss_kib.saturating_sub(self.guest_ram_rss_kib)
    }
}

/// What the agent measured at a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// What triggered it: `ready`, `qmp-ready`, `stop-line`, or the first two
    /// words of an iobench or netbench line (`IOBENCH-BEGIN mode=seq`,
    /// `NETBENCH-BEGIN dir=up`).
    pub trigger: String,
    /// Milliseconds since spawn.
    pub ms: f64,
    /// The VMM process, if sampled (and readable).
    pub process: Option<ProcessSample>,
    /// Why the process could not be sampled.
    pub process_error: Option<String>,
    /// KVM's debugfs counters (all VMs, i.e. this one), if readable.
    pub kvm: BTreeMap<String, u64>,
}

/// Everything the agent recorded about one launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// The launch.
    pub key: LaunchKey,
    /// Why the launch did not run (spawn failure, skipped for lack of time).
    pub not_run: Option<String>,
    /// Exit status, if it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, if killed.
    pub exit_signal: Option<i32>,
    /// The agent stopped it on purpose (stop rule met).
    pub stopped: bool,
    /// The agent killed it at its time limit.
    pub timed_out: bool,
    /// Milliseconds from spawn to reaping the process.
    pub exit_ms: Option<f64>,
    /// Marker lines (TESTBED-*, IOBENCH-*, NETBENCH-*, strait timeline, exit
    /// counts and virtio-net data path).
    pub lines: Vec<TimedLine>,
    /// The last lines of output, to explain a failure.
    pub tail: Vec<String>,
    /// When QMP answered `query-status` (QEMU memory launches).
    pub qmp_ready_ms: Option<f64>,
    /// Why QMP never answered.
    pub qmp_error: Option<String>,
    /// Samples, in order.
    pub samples: Vec<Sample>,
}

impl LaunchRecord {
    /// A record for a launch that never ran.
    pub fn not_run(key: LaunchKey, why: String) -> Self {
        Self {
            key,
            not_run: Some(why),
            exit_code: None,
            exit_signal: None,
            stopped: false,
            timed_out: false,
            exit_ms: None,
            lines: Vec::new(),
            tail: Vec::new(),
            qmp_ready_ms: None,
            qmp_error: None,
            samples: Vec::new(),
        }
    }
}

/// Lines the agent keeps with their time of arrival.
pub fn is_marker_line(line: &str) -> bool {
    line.contains("TESTBED-")
        || line.contains("IOBENCH-")
        || line.contains("BARTOUCH-")
        || line.contains("NETBENCH-")
        || line.contains("strait: virtio-net")
        || line.contains("strait: timeline:")
        || line.contains("strait: reboot:")
        || line.contains("strait: exits:")
        || line.contains("strait: warn:")
        || line.contains("strait: error:")
        || line.contains(crate::bench::analysis::POWER_DOWN_LINE)
}

/// Parses the agent's results file (one JSON record per line; a torn last line
/// from a killed agent is skipped).
pub fn parse_results(text: &str) -> Vec<LaunchRecord> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `path` inside `work_dir`, for names the plan and agent share.
pub fn in_work_dir(work_dir: &Path, name: &str) -> PathBuf {
    work_dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(reps: u32) -> PlanConfig {
        PlanConfig {
            reps,
            memory_sizes: vec![512, 2048],
            page_kinds: vec![HugePages::None, HugePages::Size2M],
            guest: GuestConfig {
                initramfs: PathBuf::from("/c/l2-bench.cpio"),
                devices: 1,
                ..GuestConfig::for_tests()
            },
            strait: PathBuf::from("/repo/target/release/strait"),
            work_dir: PathBuf::from("/w"),
            netbench: PathBuf::from("/c/netbench.bin"),
            only: vec![],
            sweep: Sweep::none(),
            vmm_cache: None,
            io: IoLoad {
                secs: 4,
                queue_depth: 4,
            },
        }
    }

    #[test]
    fn each_measurement_runs_qemu_then_strait_per_repetition() {
        let plan = build(&config(2));
        // boot, bare, initcall, nvme, blk, net, reboot, bar, 2 sizes x 2 page kinds = 12
        // measurements, 2 VMMs, 2 reps.
        assert_eq!(plan.launches.len(), 48);
        let vmms: Vec<_> = plan.launches.iter().map(|l| l.key.vmm).collect();
        assert!(vmms
            .chunks(2)
            .all(|pair| pair == [VmmKind::Qemu, VmmKind::Strait]));
        assert_eq!(plan.launches[24].key.id, "r2-boot-qemu");
    }

    #[test]
    fn only_keeps_the_kinds_asked_for() {
        let plan = build(&PlanConfig {
            only: vec![LaunchKind::Blk, LaunchKind::Memory],
            ..config(1)
        });
        let ids: Vec<&str> = plan.launches.iter().map(|l| l.key.id.as_str()).collect();
        assert_eq!(ids[..2], ["r1-blk-qemu", "r1-blk-strait"]);
        // blk plus 2 sizes x 2 page kinds, 2 VMMs.
        assert_eq!(plan.launches.len(), 10);
        assert!(LaunchKind::ALL
            .iter()
            .all(|k| LaunchKind::from_name(k.name()) == Some(*k)));
        assert_eq!(LaunchKind::from_name("net"), Some(LaunchKind::Net));
        assert_eq!(LaunchKind::from_name("disk"), None);
    }

    #[test]
    fn bar_launch_passes_the_three_devices_and_asks_for_bartouch() {
        let plan = build(&PlanConfig {
            only: vec![LaunchKind::Bar],
            ..config(1)
        });
        let (qemu, strait) = (&plan.launches[0], &plan.launches[1]);
        assert_eq!(qemu.key.id, "r1-bar-qemu");
        let vfio = |l: &Launch| {
            l.command
                .iter()
                .filter(|a| a.starts_with("vfio-pci,"))
                .count()
        };
        assert_eq!(vfio(qemu), LaunchKind::Bar.devices());
        assert!(qemu
            .command
            .iter()
            .any(|a| a.ends_with("testbed.bench=bar")));
        let spec = strait
            .spec
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(spec.contains("@DEV2@"), "ivshmem, the third device: {spec}");
        assert_eq!(qemu.transparent_hugepages.as_deref(), Some(BAR_THP));
        assert_eq!(
            plan.transparent_hugepages, "never",
            "the other launches' mode"
        );
    }

    #[test]
    fn repetitions_share_their_measurement() {
        let plan = build(&config(2));
        assert_eq!(plan.launches[0].key.measurement(), "boot-qemu");
        assert_eq!(plan.launches[24].key.measurement(), "boot-qemu");
    }

    #[test]
    fn ids_are_unique() {
        let plan = build(&config(3));
        let mut ids: Vec<_> = plan.launches.iter().map(|l| l.key.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), plan.launches.len());
    }

    #[test]
    fn qemu_memory_launch_stops_before_running_and_answers_qmp() {
        let plan = build(&config(1));
        let l = &plan.launches[16];
        assert_eq!(l.key.id, "r1-mem-512-none-qemu");
        let tail: Vec<_> = l.command[l.command.len() - 3..].to_vec();
        assert_eq!(
            tail,
            [
                "-S",
                "-qmp",
                "unix:/tmp/testbed-qmp-r1-mem-512-none-qemu.sock,server=on,wait=off"
            ]
        );
        assert!(l.stop_at_qmp && l.stop_at_line.is_none());
        assert!(l.command.contains(&"-m".to_string()) && l.command.contains(&"512M".to_string()));
    }

    #[test]
    fn strait_memory_launch_stops_at_its_ready_mark() {
        let plan = build(&config(1));
        let l = &plan.launches[23];
        assert_eq!(l.key.id, "r1-mem-2048-2M-strait");
        assert_eq!(
            l.stop_at_line.as_deref(),
            Some("strait: timeline: dma_mapped=")
        );
        let spec = l.spec.as_ref().map(|s| s["memory"].clone());
        assert_eq!(
            spec,
            Some(serde_json::json!({ "size_mib": 2048, "hugepages": "2M" }))
        );
        assert_eq!(
            l.command,
            [
                "/repo/target/release/strait",
                "run",
                "/w/spec-r1-mem-2048-2M-strait.json"
            ]
        );
    }

    #[test]
    fn nvme_launch_passes_the_io_load_on_the_command_line() {
        let plan = build(&config(1));
        let l = &plan.launches[6];
        assert_eq!(l.key.kind, LaunchKind::Nvme);
        assert!(l
            .command
            .iter()
            .any(|a| a.ends_with("testbed.bench=nvme testbed.iosecs=4 testbed.qd=4")));
        assert!(!l.stop_at_qmp && l.stop_at_line.is_none());
    }

    #[test]
    fn blk_launch_gives_l1s_disk_with_o_direct_and_no_passthrough() {
        let plan = build(&config(1));
        let (qemu, strait) = (&plan.launches[8], &plan.launches[9]);
        assert_eq!(qemu.key.id, "r1-blk-qemu");
        assert!(qemu
            .command
            .iter()
            .any(|a| a == "file=/dev/vda,if=none,id=vd0,format=raw,cache=none,aio=io_uring"));
        assert!(!qemu.command.iter().any(|a| a.contains("vfio-pci")));
        assert!(qemu
            .command
            .iter()
            .any(|a| a.ends_with("testbed.bench=blk testbed.iosecs=4 testbed.qd=4")));
        let spec = strait.spec.as_ref().unwrap();
        assert_eq!(
            spec["disks"],
            serde_json::json!([{ "path": "/dev/vda", "direct": true }])
        );
        assert!(spec.get("passthrough").is_none());
    }

    #[test]
    fn net_launch_gives_virtio_net_on_vhost_and_runs_the_peer() {
        let plan = build(&config(1));
        let (qemu, strait) = (&plan.launches[10], &plan.launches[11]);
        assert_eq!(qemu.key.id, "r1-net-qemu");
        assert!(qemu
            .command
            .iter()
            .any(|a| a == "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=on"));
        assert!(!qemu.command.iter().any(|a| a.contains("vfio-pci")));
        assert!(qemu
            .command
            .iter()
            .any(|a| a.ends_with("testbed.bench=net testbed.iosecs=4")));
        let spec = strait.spec.as_ref().unwrap();
        assert_eq!(spec["net"][0]["vhost"], serde_json::json!(true));
        assert!(spec.get("passthrough").is_none());
        let peer = ["/c/netbench.bin", "serve", "--port", "5201"];
        for l in [qemu, strait] {
            assert_eq!(l.peer.as_deref(), Some(&peer.map(String::from)[..]));
        }
        assert!(plan.launches[8].peer.is_none());
    }

    #[test]
    fn bare_launch_passes_nothing_through() {
        let plan = build(&config(1));
        let (qemu, strait) = (&plan.launches[2], &plan.launches[3]);
        assert_eq!(qemu.key.id, "r1-bare-qemu");
        assert!(!qemu.command.iter().any(|a| a.contains("vfio-pci")));
        assert!(strait
            .spec
            .as_ref()
            .is_some_and(|s| s.get("passthrough").is_none()));
        let boot = &plan.launches[0];
        assert!(boot
            .command
            .iter()
            .any(|a| a == "vfio-pci,host=@DEV0@,bus=rp0"));
    }

    #[test]
    fn the_series_runs_first_with_its_own_guests() {
        let plan = build(&PlanConfig {
            sweep: Sweep {
                sizes: vec![512],
                reps: 1,
            },
            vmm_cache: Some(PathBuf::from("/run/c")),
            ..config(1)
        });
        let ids: Vec<&str> = plan.launches.iter().map(|l| l.key.id.as_str()).collect();
        assert_eq!(
            ids[..7],
            [
                "r1-kernel-cold-strait",
                "r1-kernel-cached-qemu",
                "r1-kernel-cached-strait",
                "r1-ram-1024-1G-populate",
                "r1-ram-1024-1G-setup-strait",
                "r1-ram-1024-1G-qemu",
                "r1-ram-1024-1G-strait",
            ]
        );
        assert_eq!(plan.vmm_cache.as_deref(), Some(Path::new("/run/c")));
        let find = |id: &str| plan.launches.iter().find(|l| l.key.id == id);
        assert!(find("r1-kernel-cold-strait").is_some_and(|l| l.key.cold_kernel));
        assert!(find("r1-ram-1024-1G-populate").is_some_and(|l| l.command.is_empty()));
        let setup = find("r1-ram-1024-1G-setup-strait");
        assert_eq!(
            setup.and_then(|l| l.stop_at_line.clone()).as_deref(),
            Some("strait: timeline: ram_prefaulted=")
        );
        assert!(
            setup.is_some_and(|l| l.spec.as_ref().is_some_and(|s| s["kernel"]["cmdline"]
                .as_str()
                .is_some_and(|c| c.ends_with("testbed.bench=hold"))))
        );
        let lazy = find("r1-ram-512-2M-lazy-strait").and_then(|l| l.spec.clone());
        assert_eq!(
            lazy.map(|s| s["memory"]["prefault"].clone()),
            Some(false.into())
        );
        let three = find("r1-passthrough-qemu").map(|l| l.command.join(" "));
        assert!(three.is_some_and(|c| c.contains("host=@DEV2@") && !c.contains("@DEV3@")));
        // 1 GiB launches time out later: 100 s and 25 s per GiB.
        assert_eq!(
            find("r1-ram-1024-1G-strait").map(|l| l.timeout_secs),
            Some(125)
        );
    }

    fn base() -> Measurement {
        Measurement {
            kind: LaunchKind::Boot,
            memory_mib: 512,
            hugepages: HugePages::Size2M,
            prefault: true,
            cold_kernel: false,
        }
    }

    fn sweep() -> Sweep {
        Sweep {
            sizes: vec![512, 2048],
            reps: 1,
        }
    }

    #[test]
    fn sizes_on_1g_pages_round_up_to_whole_pages_once() {
        let s = Sweep {
            sizes: vec![512, 1024, 2048, 3000],
            reps: 1,
        };
        assert_eq!(s.sizes_on(HugePages::Size1G), [1024, 2048, 3072]);
        assert_eq!(s.sizes_on(HugePages::Size2M), [512, 1024, 2048, 3000]);
        assert_eq!(s.gigantic_pages(), 3);
        assert_eq!(s.largest_mib(), 3072);
        assert_eq!(Sweep::none().gigantic_pages(), 0);
    }

    #[test]
    fn order_runs_the_cache_then_1g_then_2m_then_three_devices() {
        let o = order(&sweep(), base(), &[]);
        let labels: Vec<String> = o
            .iter()
            .map(|(_, m, v)| {
                format!(
                    "{:?}-{}-{}-{}-{}",
                    m.kind,
                    m.memory_mib,
                    m.hugepages.spec_value(),
                    m.prefault,
                    v.name()
                )
            })
            .collect();
        assert_eq!(labels[0], "Kernel-512-2M-true-strait");
        assert!(o[0].1.cold_kernel && !o[1].1.cold_kernel && !o[2].1.cold_kernel);
        assert_eq!(
            &labels[3..9],
            [
                "Ram-1024-1G-true-populate",
                "RamSetup-1024-1G-true-strait",
                "Ram-1024-1G-true-qemu",
                "Ram-1024-1G-true-strait",
                "Ram-1024-1G-false-qemu",
                "Ram-1024-1G-false-strait",
            ]
        );
        // 3 kernel + 2 sizes x 2 page kinds x 6 + 2 three-device launches.
        assert_eq!(o.len(), 3 + 24 + 2);
        assert_eq!(labels[15], "Ram-512-2M-true-populate");
        assert_eq!(labels[27], "Passthrough-512-2M-true-qemu");
        let only = order(&sweep(), base(), &[LaunchKind::Passthrough]);
        assert_eq!(only.len(), 2);
    }

    #[test]
    fn repetitions_of_a_size_run_together() {
        let o = order(&Sweep { reps: 2, ..sweep() }, base(), &[LaunchKind::Ram]);
        let first: Vec<(u32, u32)> = o
            .iter()
            .take(12)
            .map(|(rep, m, _)| (*rep, m.memory_mib))
            .collect();
        assert!(first[..6].iter().all(|&p| p == (1, 1024)));
        assert!(first[6..].iter().all(|&p| p == (2, 1024)));
    }

    #[test]
    fn initcall_launch_boots_without_device_or_quiet_and_samples_its_phases() {
        let plan = build(&config(1));
        let (qemu, strait) = (&plan.launches[4], &plan.launches[5]);
        assert_eq!(qemu.key.id, "r1-initcall-qemu");
        assert!(!qemu.command.iter().any(|a| a.contains("vfio-pci")));
        let cmdline = strait.spec.as_ref().map(|s| s["kernel"]["cmdline"].clone());
        assert_eq!(
            cmdline,
            Some(serde_json::json!(
                "console=ttyS0 quiet initcall_debug log_buf_len=4M testbed.bench=initcall"
            ))
        );
        assert!(strait
            .spec
            .as_ref()
            .is_some_and(|s| s.get("passthrough").is_none()));
        assert!(qemu.keep_all_lines && strait.keep_all_lines);
        assert_eq!(strait.sample_period_ms, Some(100));
        assert!(!plan.launches[0].keep_all_lines && plan.launches[0].sample_period_ms.is_none());
    }

    #[test]
    fn results_parse_skips_a_torn_line() {
        let key = build(&config(1)).launches[0].key.clone();
        let line = serde_json::to_string(&LaunchRecord::not_run(key, "skipped".into()))
            .unwrap_or_default();
        let text = format!("{line}\n{{\"key\": {{\"id\n");
        let records = parse_results(&text);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].not_run.as_deref(), Some("skipped"));
    }

    #[test]
    fn marker_lines_are_recognised() {
        assert!(is_marker_line("strait: timeline: memory_ready=12.0ms"));
        assert!(is_marker_line("[  2.1] TESTBED-INIT"));
        assert!(!is_marker_line("strait: guest powered off"));
        assert!(is_marker_line("BARTOUCH-END pass=first"));
        assert!(is_marker_line("[   10.70] reboot: Power down"));
    }

    #[test]
    fn l0_limit_covers_twice_the_expected_time() {
        let cfg = config(1);
        let plan = build(&cfg);
        // 4 boot (30) + 2 initcall (40) + 2 nvme (53) + 2 blk (53) + 2 net (53)
        // + 2 reboot (60) + 2 bar (120) + 8 memory (20) = 1038 s.
        assert_eq!(l0_timeout_secs(&plan, cfg.io), 2 * 1038 + 180);
    }

    #[test]
    fn reboot_launch_lets_both_vmms_reset_in_place() {
        let plan = build(&config(1));
        let (qemu, strait) = (&plan.launches[12], &plan.launches[13]);
        assert_eq!(qemu.key.id, "r1-reboot-qemu");
        assert!(!qemu.command.iter().any(|a| a == "-no-reboot"));
        assert!(qemu
            .command
            .iter()
            .any(|a| a.ends_with("testbed.bench=reboot testbed.launch=r1-reboot-qemu")));
        let spec = strait.spec.as_ref();
        assert_eq!(
            spec.map(|s| s["lifecycle"]["on_reboot"].clone()),
            Some(serde_json::json!("restart"))
        );
        assert!(spec.is_some_and(|s| s["kernel"]["cmdline"]
            .as_str()
            .is_some_and(|c| c.ends_with("testbed.launch=r1-reboot-strait"))));
        assert!(plan.launches[0].command.iter().any(|a| a == "-no-reboot"));
    }
}
