//! `testbed bench`: Strait against QEMU, phase by phase, in one L1 boot.
//!
//! The host builds a plan of VMM launches (boot to /init, NVMe reads, RAM +
//! DMA setup at several sizes and page kinds), repetition by repetition with
//! QEMU and Strait alternating, and boots L1 once. Inside L1 the agent
//! ([`agent`], the `testbed l1-agent` subcommand of this same binary) runs
//! the launches and records timestamps and samples; back on the host
//! [`metrics`] turns them into medians and ratios and [`report`] writes a
//! markdown table and an SVG chart into `integration/results/<date>/`,
//! together with the raw records (`raw.json`, re-rendered by `--render`).

pub mod agent;
pub mod analysis;
pub mod guest;
pub mod metrics;
pub mod plan;
pub mod probe;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::l0::{L0Exit, Stall};
use crate::outcome::tail;
use crate::run::{self, RunContext};
use crate::scenario::{Device, HugePages, Scenario};
use crate::scripts::{self, RunPlan};
use crate::vmm::{device_placeholder, Vmm};
use crate::{images, l0, Artefacts, Testbed, TestbedOptions};

use metrics::{Layout, Metric};
use plan::{IoLoad, LaunchRecord, Plan, PlanConfig, PLAN_FILE, RESULTS_FILE};
use report::Machine;

/// RAM of the boot and NVMe launches, on 2 MiB pages, like the scenarios'.
const BASE_MEMORY_MIB: u32 = 512;
/// L1 RAM beyond L2's hugepages and the largest 4 KiB-page guest: L1's kernel,
/// the page cache of the host share, the VMMs themselves.
const L1_HEADROOM_MIB: u32 = 2048;

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
            strait_binary: crate::default_strait_binary(),
            agent_binary: crate::workspace_dir().join("target/release/testbed"),
            results_root: crate::crate_dir().join("results"),
            command: format!("cargo run --release -p testbed -- bench --reps {reps}"),
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
            ..Self::full(1)
        }
    }

    fn layout(&self) -> Layout {
        Layout {
            memory_sizes: self.memory_sizes.clone(),
            page_kinds: vec![HugePages::None, HugePages::Size2M],
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

/// 2 MiB pages L1 reserves: the largest guest plus the VMM's slack.
pub fn bench_hugepages(largest_mib: u32) -> u32 {
    largest_mib.div_ceil(2) + 8
}

/// L1's RAM: the reserved hugepages, room for the largest guest on 4 KiB
/// pages next to them, and headroom.
pub fn bench_l1_memory_mib(largest_mib: u32) -> u32 {
    2 * bench_hugepages(largest_mib) + largest_mib + L1_HEADROOM_MIB
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
/// A live L1 prints a heartbeat every 20 s; this much silence means it froze.
const CONSOLE_SILENCE: Duration = Duration::from_secs(90);

/// L1 kernel reports that mean one of its CPUs is stuck for good.
const LOCKUP_REPORTS: &[&str] = &[
    "BUG: soft lockup",
    "rcu_sched self-detected stall",
    "rcu: INFO: rcu_sched detected stalls",
    "blocked for more than",
];

/// The first lockup report in L1's console, if any.
pub fn lockup_report(console: &str) -> Option<&'static str> {
    LOCKUP_REPORTS.iter().copied().find(|r| console.contains(r))
}

/// The host's watch over a benchmark's L1: its kernel must not report a
/// stuck CPU, its console must not fall silent, and the agent's files must
/// change at least once per `progress_limit` (the longest launch plus the
/// agent's reaping grace and a margin).
fn bench_watch(progress_limit: Duration) -> impl Fn(&Path, Duration) -> Option<Stall> {
    move |dir, silence| {
        let console = std::fs::read_to_string(dir.join("l1-console.log")).unwrap_or_default();
        if let Some(report) = lockup_report(&console) {
            return Some(Stall::KernelReport(report));
        }
        if silence > CONSOLE_SILENCE {
            return Some(Stall::ConsoleSilent(silence));
        }
        let newest = ["run.sh", "agent.log", RESULTS_FILE]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok()?.modified().ok())
            .max()?;
        let idle = newest.elapsed().ok()?;
        (idle > progress_limit).then_some(Stall::NoProgress(idle))
    }
}

/// What the L1 boots of one benchmark produced.
#[derive(Debug, Default)]
struct Boots {
    records: Vec<LaunchRecord>,
    /// One line per boot.
    summaries: Vec<String>,
    /// Launches L1 stalled in, once per stall.
    stalls: Vec<String>,
    /// L0 wall time, all boots.
    wall: Duration,
}

/// What every L1 boot of one benchmark shares.
struct BenchSetup<'a> {
    opts: &'a BenchOptions,
    testbed: TestbedOptions,
    scenario: Scenario,
    artefacts: Artefacts,
    cfg: PlanConfig,
    largest: u32,
}

impl Testbed {
    /// Runs the benchmark and writes a result set; a launch that could not
    /// measure something shows as n/a with its reason, never as a number.
    /// If L1 stalls (the nested emulation occasionally locks up one of its
    /// CPUs), L1 is booted again for the launches not yet recorded; the launch
    /// it stalled in is tried again once, then recorded as not run.
    pub fn bench(&self, opts: &BenchOptions) -> Result<BenchResults> {
        let mut setup = self.bench_setup(opts)?;
        let boots = self.bench_boots(&mut setup)?;
        let mut machine = self.machine(opts, &setup.testbed, setup.largest, boots.wall);
        machine.l1_boots = boots.summaries;
        machine.stalled_launches = boots.stalls;
        let raw = RawResults {
            machine,
            memory_sizes: opts.memory_sizes.clone(),
            page_kinds: opts.layout().page_kinds,
            records: boots.records,
        };
        let dir = result_dir(&opts.results_root, &raw.machine.date)?;
        write_results(&dir, &raw)
    }

    /// Boots L1 until every launch has a record (or [`MAX_L1_BOOTS`]).
    fn bench_boots(&self, setup: &mut BenchSetup<'_>) -> Result<Boots> {
        let all = plan::build(&setup.cfg).launches;
        log::warn!("bench: {} launches", all.len());
        let mut b = Boots::default();
        let mut last = None;
        let unrecorded = |records: &[LaunchRecord]| -> Vec<String> {
            all.iter()
                .filter(|l| !records.iter().any(|r| r.key.id == l.key.id))
                .map(|l| l.key.id.clone())
                .collect()
        };
        for boot in 1..=MAX_L1_BOOTS {
            let remaining = unrecorded(&b.records);
            if remaining.is_empty() {
                break;
            }
            let (work_dir, l0_run) = self.bench_boot(setup, &remaining)?;
            let text = std::fs::read_to_string(work_dir.join(RESULTS_FILE)).unwrap_or_default();
            let new = plan::parse_results(&text);
            b.wall += l0_run.elapsed;
            b.summaries.push(format!(
                "{} of {} launches recorded; L0 {:?} after {:.0} s",
                new.len(),
                remaining.len(),
                l0_run.exit,
                l0_run.elapsed.as_secs_f64()
            ));
            b.records.extend(new);
            let stall = match l0_run.exit {
                L0Exit::Stalled { stall, .. } => Some(stall),
                _ => None,
            };
            last = Some((work_dir, l0_run));
            let (Some(stall), Some(stuck)) = (stall, unrecorded(&b.records).first().cloned())
            else {
                break;
            };
            b.stalls.push(stuck.clone());
            let tries = b.stalls.iter().filter(|id| **id == stuck).count() as u32;
            log::warn!("{stuck}: L1 stalled ({stall}), try {tries} (boot {boot})");
            if let Some(l) = all
                .iter()
                .find(|l| l.key.id == stuck && tries >= STALL_TRIES)
            {
                let why = format!("L1 stalled during this launch {tries} times (last: {stall})");
                b.records.push(LaunchRecord::not_run(l.key.clone(), why));
            }
        }
        if b.records.iter().all(|r| r.not_run.is_some()) {
            return Err(match last {
                Some((dir, l0_run)) => no_results(&dir, &l0_run),
                None => Error::BenchFailed {
                    report: "the benchmark plan is empty".into(),
                },
            });
        }
        Ok(b)
    }

    /// Images, options and the plan's configuration, once per benchmark.
    fn bench_setup<'a>(&self, opts: &'a BenchOptions) -> Result<BenchSetup<'a>> {
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
        let l2 = images::l2_bench_image(&self.host, &self.cache, &guest::l2_init(), &iobench)?;
        let artefacts = self.artefacts_with(l2)?;
        let largest = opts.largest_mib();
        let mut testbed = self.opts.clone();
        testbed.l0_memory_mib = Some(bench_l1_memory_mib(largest));
        testbed.vmm = Vmm::Strait {
            binary: opts.strait_binary.clone(),
        };
        let mut scenario = Scenario::new("bench");
        scenario.devices = vec![Device::Nvme];
        scenario.vcpus = opts.vcpus;
        scenario.memory_mib = BASE_MEMORY_MIB;
        let ctx = RunContext {
            opts: &testbed,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &artefacts,
        };
        let cfg = PlanConfig {
            reps: opts.reps,
            memory_sizes: opts.memory_sizes.clone(),
            page_kinds: opts.layout().page_kinds,
            guest: run::guest_config(&ctx),
            strait: opts.strait_binary.clone(),
            work_dir: PathBuf::new(),
            io: opts.io,
        };
        Ok(BenchSetup {
            opts,
            testbed,
            scenario,
            artefacts,
            cfg,
            largest,
        })
    }

    /// One L1 boot running the launches named in `ids`, in plan order.
    fn bench_boot(
        &self,
        setup: &mut BenchSetup<'_>,
        ids: &[String],
    ) -> Result<(PathBuf, l0::L0Run)> {
        let subset = |mut plan: Plan| {
            plan.launches.retain(|l| ids.contains(&l.key.id));
            plan
        };
        let planned = subset(plan::build(&setup.cfg));
        let timeout = plan::l0_timeout_secs(&planned, setup.opts.io);
        let longest = planned.launches.iter().map(|l| l.timeout_secs).max();
        let mut scenario = setup.scenario.clone();
        scenario.timeout = Duration::from_secs(timeout);
        let ctx = RunContext {
            opts: &setup.testbed,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &setup.artefacts,
        };
        log::warn!(
            "bench: booting L1 for {} launches, L0 limit {timeout} s",
            ids.len()
        );
        let watch = bench_watch(Duration::from_secs(longest.unwrap_or(0) + 90));
        let (cfg, opts, largest) = (&mut setup.cfg, setup.opts, setup.largest);
        run::boot_l1(
            &ctx,
            "all",
            |dir| {
                cfg.work_dir = dir.to_path_buf();
                write_bench_files(&ctx, &subset(plan::build(cfg)), opts, largest, dir)
            },
            &watch,
        )
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
        let qemu = first_line(&self.host.qemu.display().to_string(), &["--version"]);
        let l1_mib = tb.l0_memory_mib.unwrap_or(0);
        Machine {
            date: utc_date(SystemTime::now()),
            command: opts.command.clone(),
            host_cpu: host_cpu_model(),
            host_cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            l0: format!("{qemu}; TCG, q35 + intel-iommu, -cpu EPYC,+svm,+npt"),
            l1: format!(
                "{} vCPUs, {l1_mib} MiB; kvm_amd (nested SVM), vfio-pci; {} x 2 MiB hugepages reserved; transparent hugepages: never",
                tb.l0_smp,
                bench_hugepages(largest)
            ),
            l2: format!(
                "{} vCPU(s); boot and NVMe launches {BASE_MEMORY_MIB} MiB on 2 MiB pages; memory launches {:?} MiB on 4 KiB and 2 MiB pages; \
                 L0's emulated NVMe controller ({} MiB namespace) passed through",
                opts.vcpus,
                opts.memory_sizes,
                l0::NVME_IMAGE_BYTES >> 20
            ),
            kernel: self.host.kernel_version.clone(),
            qemu,
            strait_commit: git_commit(&crate::workspace_dir()),
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

/// The plan and L1's script in a fresh work directory.
fn write_bench_files(
    ctx: &RunContext<'_>,
    plan: &Plan,
    opts: &BenchOptions,
    largest: u32,
    dir: &Path,
) -> Result<()> {
    let plan_path = dir.join(PLAN_FILE);
    let json = serde_json::to_string_pretty(plan).map_err(|e| Error::BenchResults {
        path: plan_path.clone(),
        detail: e.to_string(),
    })?;
    run::write(&plan_path, &json)?;
    let agent = vec![
        opts.agent_binary.display().to_string(),
        "-v".into(),
        "l1-agent".into(),
        "--plan".into(),
        plan_path.display().to_string(),
        "--results".into(),
        dir.join(RESULTS_FILE).display().to_string(),
        "--device".into(),
        device_placeholder(0),
    ];
    let run_plan = RunPlan {
        work_dir: dir.to_path_buf(),
        devices: ctx.scenario.devices.clone(),
        hugepages: HugePages::Size2M,
        hugepage_count: bench_hugepages(largest),
        vmm_command: agent,
        spec_template: None,
        l0_timeout_secs: ctx.scenario.timeout.as_secs(),
    };
    run::write(&dir.join("run.sh"), &scripts::l1_bench_script(&run_plan))
}

/// The error for a run without a single record, with what L1 and the agent said.
fn no_results(work_dir: &Path, l0_run: &l0::L0Run) -> Error {
    let agent = std::fs::read_to_string(work_dir.join("agent.log")).unwrap_or_default();
    let l1_error = std::fs::read_to_string(work_dir.join("l1-error")).unwrap_or_default();
    Error::BenchFailed {
        report: format!(
            "the benchmark produced no results (L0 {:?} after {:.0} s; work dir {})\n{}\
             --- agent log, last 20 lines ---\n{}\n--- L1 console, last 30 lines ---\n{}\n--- end ---",
            l0_run.exit,
            l0_run.elapsed.as_secs_f64(),
            work_dir.display(),
            if l1_error.is_empty() { String::new() } else { format!("L1 gave up: {l1_error}\n") },
            tail(&agent, 20),
            tail(&l0_run.console, 30)
        ),
    }
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
    text.replace(&format!("{}/", crate::workspace_dir().display()), "")
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
        assert_eq!(bench_l1_memory_mib(2048), 2064 + 2048 + 2048);
    }

    #[test]
    fn quick_mode_runs_once_at_one_size() {
        let q = BenchOptions::quick();
        assert_eq!((q.reps, q.memory_sizes.clone()), (1, vec![512]));
        assert_eq!(q.largest_mib(), 512);
        assert_eq!(BenchOptions::full(3).largest_mib(), 2048);
    }

    #[test]
    fn lockup_reports_are_recognised() {
        let console =
            "[  129.385309] watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [strait-vcpu0:163]";
        assert_eq!(lockup_report(console), Some("BUG: soft lockup"));
        assert_eq!(lockup_report("TESTBED-L1 heartbeat uptime=52.92"), None);
    }

    #[test]
    fn watch_stops_a_silent_l1() {
        let watch = bench_watch(Duration::from_secs(3600));
        assert_eq!(
            watch(Path::new("/nonexistent"), Duration::from_secs(91)),
            Some(Stall::ConsoleSilent(Duration::from_secs(91)))
        );
    }

    #[test]
    fn watch_stops_an_l1_whose_agent_makes_no_progress() {
        let dir = std::env::temp_dir().join(format!("testbed-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").ok();
        let patient = bench_watch(Duration::from_secs(3600))(&dir, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(20));
        let impatient = bench_watch(Duration::from_millis(1))(&dir, Duration::ZERO);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(patient, None);
        assert!(matches!(impatient, Some(Stall::NoProgress(_))));
    }

    #[test]
    fn checkout_paths_are_made_relative() {
        let path = crate::workspace_dir().join("target/release/strait");
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
