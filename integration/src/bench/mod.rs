//! `testbed bench`: Strait against QEMU, phase by phase, in one L1 boot.
//!
//! The host builds a plan of VMM launches (boot to /init, NVMe and virtio-blk
//! reads, virtio-net throughput both ways, reboot, RAM + DMA setup at several
//! sizes and page kinds), repetition by repetition with QEMU and Strait
//! alternating, after a launch series over RAM sizes, page sizes, prefault,
//! kernel cache and devices ([`sweep`]), and boots L1 once. Inside L1 the agent
//! ([`agent`], the `testbed l1-agent` subcommand of this same binary) runs
//! the launches and records timestamps and samples; back on the host
//! [`metrics`] turns them into medians and ratios and [`report`] writes a
//! markdown table and an SVG chart into `integration/results/<date>/`,
//! together with the raw records (`raw.json`, re-rendered by `--render`).

pub mod agent;
pub mod analysis;
pub(crate) mod boots;
pub mod guest;
pub mod initcalls;
pub mod l1mem;
pub mod metrics;
pub mod plan;
pub mod probe;
pub mod report;
pub mod series;
pub mod sweep;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::L1Kernel;
use crate::options::{self, TestbedOptions};
use crate::run::{self, RunContext};
use crate::scenario::{GuestTool, HugePages, Scenario};
use crate::vmm::Vmm;
use crate::{images, l0, Testbed};
use plan::LaunchKind;

use boots::{AgentRun, Boots};
use metrics::{Layout, Metric};
use plan::Sweep;
use plan::{IoLoad, LaunchRecord, PlanConfig};
use report::Machine;

/// RAM of the boot and NVMe launches, on 2 MiB pages, like the scenarios'.
const BASE_MEMORY_MIB: u32 = 512;
/// The disk L0 gives L1 for the blk launch (blank, sparse; `l0::L1_DISK_BYTES`).
const L1_DISK_IMAGE: &str = "bench-disk.img";
/// L1 RAM beyond L2's hugepages and the largest 4 KiB-page guest: L1's kernel,
/// the page cache of the host share, the VMMs themselves.
const L1_HEADROOM_MIB: u32 = 2048;
/// Strait's per-user cache in L1 during the benchmark: on L1's own tmpfs (in the
/// chroot), as on a local disk, not on the host share that L1 reads slowly.
const L1_VMM_CACHE: &str = "/run/strait-cache";
/// The `passthrough` scenario's devices, in `@DEVn@` order (nvme first: the other
/// launches pass it alone).
const BENCH_DEVICES: [Device; 3] = [Device::Nvme, Device::Bochs, Device::Ivshmem];

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Repetitions per VMM and measurement.
    pub reps: u32,
    /// Guest RAM sizes of the memory launches.
    pub memory_sizes: Vec<u32>,
    /// iobench's load.
    pub io: IoLoad,
    /// L2 vCPUs.
    pub vcpus: u32,
    /// The strait binary.
    pub strait_binary: PathBuf,
    /// The testbed binary that runs as the agent inside L1.
    pub agent_binary: PathBuf,
    /// Where result sets go: `<results_root>/<date>/`.
    pub results_root: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// Only these kinds of launch; all when empty.
    pub only: Vec<LaunchKind>,
    /// The kernel L1 boots.
    pub l1_kernel: L1Kernel,
    /// The reference VMM in L1.
    pub qemu: QemuChoice,
    /// The launch series over RAM, kernel cache and devices.
    pub sweep: Sweep,
}

/// Which QEMU is the reference VMM in L1 (`bench --qemu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuChoice {
    /// The host's (bookworm: 7.2), the one that is also L0.
    Stock,
    /// The newest Debian ships, from bookworm-backports (10.0), unpacked into the
    /// cache with its firmware.
    Backports,
    /// This binary (its own firmware path).
    Path(PathBuf),
}

impl QemuChoice {
    /// `stock`, `backports`, or a path to a qemu-system-x86_64.
    pub fn parse(text: &str) -> Self {
        match text {
            "stock" => QemuChoice::Stock,
            "backports" => QemuChoice::Backports,
            path => QemuChoice::Path(PathBuf::from(path)),
        }
    }
}

impl BenchOptions {
    /// The full benchmark: `reps` repetitions, 512 MiB, 1 GiB and 2 GiB guests.
    /// Five repetitions take about ten minutes on the 2-core build machines.
    pub fn full(reps: u32) -> Self {
        Self {
            reps,
            memory_sizes: vec![512, 1024, 2048],
            io: IoLoad {
                secs: 4,
                queue_depth: 4,
            },
            vcpus: 1,
            strait_binary: options::default_strait_binary(),
            agent_binary: options::workspace_dir().join("target/release/testbed"),
            results_root: options::crate_dir().join("results"),
            command: format!("cargo run --release -p testbed -- bench --reps {reps}"),
            only: vec![],
            l1_kernel: L1Kernel::Stock,
            qemu: QemuChoice::Backports,
            sweep: Sweep {
                sizes: vec![BASE_MEMORY_MIB, 4096, 12288],
                reps: reps.min(FULL_SERIES_REPS),
            },
        }
    }

    /// For development: one repetition, one 512 MiB memory size, short loads.
    pub fn quick() -> Self {
        Self {
            memory_sizes: vec![BASE_MEMORY_MIB],
            io: IoLoad {
                secs: 2,
                queue_depth: 4,
            },
            command: "cargo run --release -p testbed -- bench --quick".into(),
            sweep: Sweep {
                sizes: vec![BASE_MEMORY_MIB, 2048],
                reps: 1,
            },
            ..Self::full(1)
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            memory_sizes: self.memory_sizes.clone(),
            page_kinds: vec![HugePages::None, HugePages::Size2M],
            sweep: self.sweep.clone(),
        }
    }

    fn wants(&self, kind: LaunchKind) -> bool {
        self.only.is_empty() || self.only.contains(&kind)
    }

    /// The RAM series as far as this run has it (for L1's size).
    fn ram_sweep(&self) -> Sweep {
        match self.wants(LaunchKind::Ram) {
            true => self.sweep.clone(),
            false => Sweep::none(),
        }
    }

    /// L1's devices: the three of the `passthrough` scenario if a launch passes them
    /// (the three-device launches of the series, or the `bar` launches).
    fn l1_devices(&self) -> Vec<Device> {
        let series = self.wants(LaunchKind::Passthrough) && self.sweep.reps > 0;
        match series || self.wants(LaunchKind::Bar) {
            true => BENCH_DEVICES.to_vec(),
            false => vec![Device::Nvme],
        }
    }

    fn largest_mib(&self) -> u32 {
        self.memory_sizes
            .iter()
            .copied()
            .chain([BASE_MEMORY_MIB])
            .max()
            .unwrap_or(BASE_MEMORY_MIB)
    }
}

pub use plan::bench_hugepages;

/// Repetitions of the launch series in the full benchmark: one takes about 30 minutes
/// with the full sizes on the 2-core build machine under other testbeds' load (about 20
/// on a quiet one), beside 10-13 for five repetitions of the rest.
const FULL_SERIES_REPS: u32 = 1;

/// L1's RAM: headroom and the most that one phase of the plan holds at once: the
/// run script's 2 MiB pages beside the largest guest on 4 KiB pages, or beside the
/// 1 GiB pages reserved at boot (the series' 1 GiB launches run first); the series'
/// largest guest on 2 MiB pages (the agent frees the 1 GiB pages before).
pub fn bench_l1_memory_mib(largest_mib: u32, ram: &Sweep) -> u32 {
    let pool = 2 * bench_hugepages(largest_mib);
    let on_2m = ram
        .sizes_on(HugePages::Size2M)
        .last()
        .map_or(0, |&mib| 2 * bench_hugepages(mib));
    let phases = [
        pool + largest_mib,
        pool + 1024 * ram.gigantic_pages(),
        on_2m,
    ];
    phases.into_iter().max().unwrap_or(0) + L1_HEADROOM_MIB
}

/// Everything a result set holds; `raw.json` in the result directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawResults {
    /// Machine and versions.
    pub machine: Machine,
    /// Memory sizes measured.
    pub memory_sizes: Vec<u32>,
    /// Page kinds measured.
    pub page_kinds: Vec<HugePages>,
    /// The launch series.
    #[serde(default = "Sweep::none")]
    pub sweep: Sweep,
    /// The agent's records.
    pub records: Vec<LaunchRecord>,
}

/// A written result set.
#[derive(Debug, Clone)]
pub struct BenchResults {
    /// The result directory.
    pub dir: PathBuf,
    /// The rows of the table.
    pub metrics: Vec<Metric>,
    /// The markdown page.
    pub markdown: String,
}

/// L1 boots a benchmark may take: after a stall, L1 is booted again for the
/// launches not yet recorded.
const MAX_L1_BOOTS: u32 = 5;
/// A launch during which L1 stalled is tried this many times in all.
const STALL_TRIES: u32 = 2;

impl Testbed {
    /// Runs the benchmark and writes a result set; a launch that could not
    /// measure something shows as n/a with its reason, never as a number.
    /// If L1 stalls (the nested emulation occasionally locks up one of its
    /// CPUs), L1 is booted again for the launches not yet recorded; the launch
    /// it stalled in is tried again once, then recorded as not run.
    pub fn bench(&self, opts: &BenchOptions) -> Result<BenchResults> {
        let largest = opts.largest_mib();
        let run = self.bench_run(opts)?;
        let boots = self.agent_boots(&run)?;
        if boots.records.iter().all(|r| r.not_run.is_some()) {
            return Err(no_results(&boots));
        }
        let mut machine = self.machine(opts, &run.testbed, largest, boots.wall);
        machine.l1_boots = boots.summaries;
        machine.stalled_launches = boots.stalls.into_iter().map(|(id, _)| id).collect();
        let raw = RawResults {
            machine,
            memory_sizes: opts.memory_sizes.clone(),
            page_kinds: opts.layout().page_kinds,
            sweep: opts.sweep.clone(),
            records: boots.records,
        };
        let dir = result_dir(&opts.results_root, &raw.machine.date)?;
        write_results(&dir, &raw)
    }

    /// Images, L1's shape and the plan, once per benchmark.
    fn bench_run<'a>(&self, opts: &'a BenchOptions) -> Result<AgentRun<'a>> {
        for (what, path) in [
            ("strait", &opts.strait_binary),
            ("testbed (agent)", &opts.agent_binary),
        ] {
            if !path.is_file() {
                return Err(Error::MissingPrerequisites {
                    missing: format!("the {what} binary {}", path.display()),
                    reason: "build it with `cargo build --release -p vmm -p testbed`".into(),
                });
            }
        }
        let iobench = guest::iobench(&self.cache)?;
        let bar = GuestTool::BarTouch;
        let bartouch = images::static_tool(&self.cache, bar.name(), bar.source())?;
        let netbench = guest::netbench(&self.cache)?;
        let tools = [
            ("bin/iobench", iobench.as_path()),
            ("bin/netbench", netbench.as_path()),
            (bar.image_path(), bartouch.as_path()),
        ];
        let l2 = images::l2_bench_image(&self.host, &self.cache, &guest::l2_init(), &tools)?;
        let artefacts = self.artefacts_with(l2, opts.l1_kernel)?;
        let largest = opts.largest_mib();
        let mut testbed = self.opts.clone();
        testbed.l0_memory_mib = Some(bench_l1_memory_mib(largest, &opts.ram_sweep()));
        testbed.l1_1g_pages = Some(opts.ram_sweep().gigantic_pages());
        testbed.vmm = Vmm::Strait {
            binary: opts.strait_binary.clone(),
        };
        let mut scenario = Scenario::new("bench");
        scenario.devices = opts.l1_devices();
        scenario.vcpus = opts.vcpus;
        scenario.memory_mib = BASE_MEMORY_MIB;
        scenario.l1_disk = Some(L1_DISK_IMAGE);
        let ctx = RunContext {
            opts: &testbed,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &artefacts,
        };
        let mut guest = run::guest_config(&ctx);
        (guest.qemu, guest.qemu_data_dirs) = self.reference_qemu(&opts.qemu)?;
        // L1 runs it from the cache as is (an artefact is written without the
        // execute bit).
        let executable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&bartouch, executable).map_err(|source| Error::WriteFile {
            path: bartouch.clone(),
            source,
        })?;
        let warm_up = opts.wants(LaunchKind::Bar).then(|| {
            let (vendor, device) = Device::Ivshmem.pci_id();
            vec![
                bartouch.display().to_string(),
                "--device".into(),
                format!("{vendor:04x}:{device:04x}"),
                "--bar".into(),
                "2".into(),
            ]
        });
        let cfg = PlanConfig {
            reps: opts.reps,
            memory_sizes: opts.memory_sizes.clone(),
            page_kinds: opts.layout().page_kinds,
            guest,
            strait: opts.strait_binary.clone(),
            work_dir: PathBuf::new(),
            io: opts.io,
            netbench,
            only: opts.only.clone(),
            sweep: opts.sweep.clone(),
            vmm_cache: Some(PathBuf::from(L1_VMM_CACHE)),
        };
        Ok(AgentRun {
            testbed,
            scenario,
            artefacts,
            agent_binary: opts.agent_binary.clone(),
            hugepage_count: bench_hugepages(largest),
            io: opts.io,
            max_boots: MAX_L1_BOOTS,
            stall_tries: STALL_TRIES,
            plan: Box::new(move |dir| {
                let mut cfg = cfg.clone();
                cfg.work_dir = dir.to_path_buf();
                plan::build(&cfg)
            }),
            warm_up,
        })
    }

    /// The reference QEMU's binary and firmware directories.
    fn reference_qemu(&self, choice: &QemuChoice) -> Result<(PathBuf, Vec<PathBuf>)> {
        match choice {
            QemuChoice::Stock => Ok((self.host.qemu.clone(), Vec::new())),
            QemuChoice::Path(path) => Ok((path.clone(), Vec::new())),
            QemuChoice::Backports => {
                let qemu = crate::backports::Backports::new(self.cache.dir()).qemu()?;
                Ok((qemu.binary, qemu.data_dirs))
            }
        }
    }

    fn machine(
        &self,
        opts: &BenchOptions,
        tb: &TestbedOptions,
        largest: u32,
        wall: Duration,
    ) -> Machine {
        let first_line = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default()
        };
        let l0_qemu = first_line(&self.host.qemu.display().to_string(), &["--version"]);
        let qemu = match self.reference_qemu(&opts.qemu) {
            Ok((binary, _)) => format!(
                "{} ({})",
                first_line(&binary.display().to_string(), &["--version"]),
                binary.display()
            ),
            Err(e) => format!("unknown: {e}"),
        };
        let l1_kernel = self
            .l1_kernel(opts.l1_kernel)
            .map_or_else(|e| format!("unknown: {e}"), |k| k.version);
        let l1_mib = tb.l0_memory_mib.unwrap_or(0);
        Machine {
            date: utc_date(SystemTime::now()),
            command: opts.command.clone(),
            host_cpu: host_cpu_model(),
            host_cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            l0: format!("{l0_qemu}; TCG, q35 + intel-iommu, -cpu EPYC,+svm,+npt"),
            l1: format!(
                "{} vCPUs, {l1_mib} MiB; kvm_amd (nested SVM), vfio-pci; {} x 2 MiB hugepages reserved (the agent resizes the pool per launch), \
                 {} x 1 GiB on the command line (freed after the last 1 GiB launch); transparent hugepages: never; Strait's kernel cache on L1's tmpfs ({L1_VMM_CACHE})",
                tb.l0_smp,
                bench_hugepages(largest),
                tb.l1_1g_pages.unwrap_or(0)
            ),
            l2: format!(
                "{} vCPU(s); boot and NVMe launches {BASE_MEMORY_MIB} MiB on 2 MiB pages; memory launches {:?} MiB on 4 KiB and 2 MiB pages; \
                 L0's emulated NVMe controller ({} MiB namespace) passed through; \
                 the blk launch: no passthrough, a virtio-blk disk on L1's {} (L0's virtio-blk, {} MiB, sparse), O_DIRECT; \
                 the net launch: no passthrough, virtio-net on L1's tap {} with vhost-net, its netbench peer in L1 at {}; \
                 launch series: {:?} MiB on 2 MiB and 1 GiB pages (1 GiB: rounded up to whole GiB), {} repetition(s); the three-device launch passes nvme, bochs-display and ivshmem ({} GiB BAR)",
                opts.vcpus,
                opts.memory_sizes,
                l0::NVME_IMAGE_BYTES >> 20,
                l0::L1_DISK_DEVICE,
                l0::L1_DISK_BYTES >> 20,
                crate::net::TAP,
                crate::net::L1_ADDR,
                opts.sweep.sizes,
                opts.sweep.reps,
                l0::IVSHMEM_BYTES >> 30
            ),
            kernel: format!(
                "L1 {l1_kernel} ({}), L2 {}",
                opts.l1_kernel.name(),
                self.host.kernel_version
            ),
            qemu,
            strait_commit: git_commit(&options::workspace_dir()),
            rustc: guest::rustc_version().unwrap_or_default(),
            reps: opts.reps,
            io: format!(
                "{} s per pattern, queue depth {} (threads)",
                opts.io.secs, opts.io.queue_depth
            ),
            wall_secs: wall.as_secs_f64(),
            l1_boots: Vec::new(),
            stalled_launches: Vec::new(),
        }
    }
}

/// The error for a benchmark without a single record, with what L1 and the
/// agent said in its last boot.
fn no_results(boots: &Boots) -> Error {
    let report = match boots.work_dirs.last() {
        Some(dir) => format!(
            "the benchmark produced no results ({})\n{}",
            boots.summaries.join("; "),
            boots::boot_tails(dir)
        ),
        None => "the benchmark plan is empty".into(),
    };
    Error::BenchFailed { report }
}

/// A new directory `<root>/<date>`, or `<date>-2`, ... if that exists.
fn result_dir(root: &Path, date: &str) -> Result<PathBuf> {
    let mut dir = root.join(date);
    let mut n = 2;
    while dir.exists() {
        dir = root.join(format!("{date}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Writes `results.md`, `chart.svg` and `raw.json` into `dir`.
pub fn write_results(dir: &Path, raw: &RawResults) -> Result<BenchResults> {
    let layout = Layout {
        memory_sizes: raw.memory_sizes.clone(),
        page_kinds: raw.page_kinds.clone(),
        sweep: raw.sweep.clone(),
    };
    let metrics = metrics::metrics(&raw.records, &layout);
    let markdown = repo_relative(&report::markdown(
        &raw.machine,
        &metrics,
        &raw.records,
        &layout,
    ));
    let title = format!("Strait vs QEMU on the nested testbed, {}", raw.machine.date);
    run::write(&dir.join("results.md"), &markdown)?;
    run::write(&dir.join("chart.svg"), &report::svg(&metrics, &title))?;
    let raw_path = dir.join("raw.json");
    let json = serde_json::to_string_pretty(raw).map_err(|e| Error::BenchResults {
        path: raw_path.clone(),
        detail: e.to_string(),
    })?;
    run::write(&raw_path, &repo_relative(&json))?;
    Ok(BenchResults {
        dir: dir.to_path_buf(),
        metrics,
        markdown,
    })
}

/// Result sets are committed: paths inside this checkout become relative to
/// it (a failure reason may quote the strait binary's or a work dir's path).
fn repo_relative(text: &str) -> String {
    text.replace(&format!("{}/", options::workspace_dir().display()), "")
}

/// Re-renders `results.md` and `chart.svg` next to an existing `raw.json`.
pub fn render(raw_path: &Path) -> Result<BenchResults> {
    let text = std::fs::read_to_string(raw_path).map_err(|source| Error::ReadFile {
        path: raw_path.to_path_buf(),
        source,
    })?;
    let raw: RawResults = serde_json::from_str(&text).map_err(|e| Error::BenchResults {
        path: raw_path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let dir = raw_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    write_results(&dir, &raw)
}

/// `YYYY-MM-DD` (UTC) of `time`.
pub fn utc_date(time: SystemTime) -> String {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (the classic
/// era-of-400-years conversion).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn host_cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `git rev-parse` of the workspace, `+dirty` if anything differs from it.
fn git_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}+dirty (uncommitted changes)")
    } else {
        commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_converted_from_unix_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(86_399)),
            "1970-01-01"
        );
    }

    #[test]
    fn l1_fits_2g_of_hugepages_and_a_2g_guest_on_4k_pages() {
        assert_eq!(bench_hugepages(2048), 1032);
        assert_eq!(
            bench_l1_memory_mib(2048, &Sweep::none()),
            2064 + 2048 + 2048
        );
    }

    #[test]
    fn l1_holds_the_series_phase_by_phase() {
        let ram = BenchOptions::full(5).sweep;
        // 12 GiB of 1 GiB pages beside the 2 MiB pool of the 2 GiB memory launches.
        assert_eq!(bench_l1_memory_mib(2048, &ram), 12288 + 2064 + 2048);
        let small = Sweep {
            sizes: vec![512, 8192],
            reps: 1,
        };
        // 8 GiB of 1 GiB pages beside the run script's pool outweigh 8 GiB on 2 MiB pages.
        assert_eq!(bench_l1_memory_mib(512, &small), 8192 + 528 + 2048);
        let only_2m = Sweep {
            sizes: vec![512, 4000],
            reps: 1,
        };
        assert_eq!(only_2m.gigantic_pages(), 4);
        assert_eq!(bench_l1_memory_mib(512, &Sweep::none()), 528 + 512 + 2048);
    }

    #[test]
    fn quick_mode_runs_once_at_one_size() {
        let q = BenchOptions::quick();
        assert_eq!((q.reps, q.memory_sizes.clone()), (1, vec![512]));
        assert_eq!(q.largest_mib(), 512);
        assert_eq!(BenchOptions::full(3).largest_mib(), 2048);
        assert_eq!(q.sweep.sizes, [512, 2048]);
        let full = BenchOptions::full(5).sweep;
        assert_eq!((full.sizes, full.reps), (vec![512, 4096, 12288], 1));
    }

    #[test]
    fn l1_gets_three_devices_only_when_the_three_device_launch_runs() {
        let mut o = BenchOptions::quick();
        assert_eq!(o.l1_devices(), BENCH_DEVICES);
        o.only = vec![LaunchKind::Ram];
        assert_eq!(o.l1_devices(), [Device::Nvme]);
        o.only = vec![LaunchKind::Bar];
        assert_eq!(o.l1_devices(), BENCH_DEVICES, "bar reads ivshmem's BAR");
        o.only = vec![LaunchKind::Ram];
        assert_eq!(o.ram_sweep().gigantic_pages(), 2);
        o.only = vec![LaunchKind::Nvme];
        assert_eq!(o.ram_sweep(), Sweep::none());
    }

    #[test]
    fn checkout_paths_are_made_relative() {
        let path = options::workspace_dir().join("target/release/strait");
        let text = format!("spawning {}: ENOENT", path.display());
        assert_eq!(
            repo_relative(&text),
            "spawning target/release/strait: ENOENT"
        );
    }

    #[test]
    fn result_dirs_are_never_overwritten() {
        let root = std::env::temp_dir().join(format!("testbed-results-{}", std::process::id()));
        let first = result_dir(&root, "2026-01-01");
        let second = result_dir(&root, "2026-01-01");
        std::fs::remove_dir_all(&root).ok();
        assert!(matches!(first, Ok(p) if p.ends_with("2026-01-01")));
        assert!(matches!(second, Ok(p) if p.ends_with("2026-01-01-2")));
    }
}
