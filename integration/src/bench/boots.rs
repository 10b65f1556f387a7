//! The agent's L1 boots: one L1 boot runs a whole plan of VMM launches through
//! `testbed l1-agent`; the host watches L1 for the known lock-ups of the outer
//! emulation of nested SVM (testbed notes, the watch in `l0.rs`) and boots a
//! fresh L1 for the launches not yet recorded. Shared by the benchmark and by
//! launch series (many launches of one scenario's guest), which both build on
//! this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::images::Artefacts;
use crate::l0::{self, L0Exit, Stall};
use crate::options::TestbedOptions;
use crate::outcome::tail;
use crate::run::{self, RunContext};
use crate::scenario::Scenario;
use crate::scripts::{self, RunPlan};
use crate::vmm::device_placeholder;
use crate::Testbed;

use super::plan::{self, IoLoad, LaunchRecord, Plan, PLAN_FILE, RESULTS_FILE};

/// The host's watch over an agent's L1: every L1's watch ([`l0::l1_stall`]:
/// no stuck CPU, no silent console), and the agent's files must change at
/// least once per `progress_limit` (the longest launch plus the agent's
/// reaping grace and a margin). A VMM that hangs while L1 lives is killed by
/// the agent at its launch's limit first, and recorded as timed out.
pub(crate) fn agent_watch(progress_limit: Duration) -> impl Fn(&Path, Duration) -> Option<Stall> {
    move |dir, silence| {
        if let Some(stall) = l0::l1_stall(dir, silence) {
            return Some(stall);
        }
        let newest = ["run.sh", "agent.log", RESULTS_FILE]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok()?.modified().ok())
            .max()?;
        let idle = newest.elapsed().ok()?;
        (idle > progress_limit).then_some(Stall::NoProgress(idle))
    }
}

/// Everything the L1 boots of one plan share.
pub(crate) struct AgentRun<'a> {
    /// L1's shape (RAM) and the testbed's options.
    pub testbed: TestbedOptions,
    /// Names the work dirs and gives the devices L1 binds; its time limit is
    /// set per boot from the launches left.
    pub scenario: Scenario,
    /// L1's and L2's images.
    pub artefacts: Artefacts,
    /// The testbed binary that runs as the agent inside L1.
    pub agent_binary: PathBuf,
    /// 2 MiB pages L1 reserves before the agent starts.
    pub hugepage_count: u32,
    /// iobench's load (for the expected time of NVMe launches).
    pub io: IoLoad,
    /// L1 boots at most.
    pub max_boots: u32,
    /// A launch during which L1 stalled is tried this many times in all.
    pub stall_tries: u32,
    /// The plan for a work dir (spec files live there).
    pub plan: Box<dyn Fn(&Path) -> Plan + 'a>,
    /// What L1 runs before binding the devices ([`RunPlan::warm_up`]).
    pub warm_up: Option<Vec<String>>,
}

/// What L0's time limit allows for L1's warm-up ([`AgentRun::warm_up`]): reading
/// ivshmem's 8 GiB BAR once took about 130 s on the loaded 2-core machine.
const WARM_UP_SECS: u64 = 400;

/// What the L1 boots of one plan produced.
#[derive(Debug, Default)]
pub(crate) struct Boots {
    /// Every record, in the order they arrived.
    pub records: Vec<LaunchRecord>,
    /// One line per boot.
    pub summaries: Vec<String>,
    /// Launches L1 stalled in, once per stall, with what was seen.
    pub stalls: Vec<(String, Stall)>,
    /// Each boot's work dir.
    pub work_dirs: Vec<PathBuf>,
    /// L0 wall time, all boots.
    pub wall: Duration,
}

impl Boots {
    /// Launches of `all` without a record.
    pub fn unrecorded(&self, all: &Plan) -> Vec<String> {
        all.launches
            .iter()
            .filter(|l| !self.records.iter().any(|r| r.key.id == l.key.id))
            .map(|l| l.key.id.clone())
            .collect()
    }
}

impl Testbed {
    /// Boots L1 until every launch of `run`'s plan has a record, L1 ends for
    /// another reason than a stall, or `run.max_boots` is reached. The launch
    /// L1 stalled in is retried in the next boot, then (after
    /// `run.stall_tries` stalls) recorded as not run.
    pub(crate) fn agent_boots(&self, run: &AgentRun<'_>) -> Result<Boots> {
        let all = (run.plan)(Path::new(""));
        let mut b = Boots::default();
        for boot in 1..=run.max_boots {
            let remaining = b.unrecorded(&all);
            if remaining.is_empty() {
                break;
            }
            let (work_dir, l0_run) = self.agent_boot(run, &remaining)?;
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
            b.work_dirs.push(work_dir);
            let stall = match l0_run.exit {
                L0Exit::Stalled { stall, .. } => Some(stall),
                _ => None,
            };
            let (Some(stall), Some(stuck)) = (stall, b.unrecorded(&all).first().cloned()) else {
                break;
            };
            b.stalls.push((stuck.clone(), stall));
            let tries = b.stalls.iter().filter(|(id, _)| *id == stuck).count() as u32;
            log::warn!("{stuck}: L1 stalled ({stall}), try {tries} (boot {boot})");
            if let Some(l) = all
                .launches
                .iter()
                .find(|l| l.key.id == stuck && tries >= run.stall_tries)
            {
                let why = format!("L1 stalled during this launch {tries} times (last: {stall})");
                b.records.push(LaunchRecord::not_run(l.key.clone(), why));
            }
        }
        Ok(b)
    }

    /// One L1 boot running the launches named in `ids`, in plan order.
    fn agent_boot(&self, run: &AgentRun<'_>, ids: &[String]) -> Result<(PathBuf, l0::L0Run)> {
        let subset = |dir: &Path| {
            let mut plan = (run.plan)(dir);
            plan.launches.retain(|l| ids.contains(&l.key.id));
            plan
        };
        let planned = subset(Path::new(""));
        let mut timeout = plan::l0_timeout_secs(&planned, run.io);
        if run.warm_up.is_some() {
            timeout += WARM_UP_SECS;
        }
        let longest = planned.launches.iter().map(|l| l.timeout_secs).max();
        let mut scenario = run.scenario.clone();
        scenario.timeout = Duration::from_secs(timeout);
        let ctx = RunContext {
            opts: &run.testbed,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &run.artefacts,
        };
        log::warn!(
            "{}: booting L1 for {} launches, L0 limit {timeout} s",
            scenario.name,
            ids.len()
        );
        let watch = agent_watch(Duration::from_secs(longest.unwrap_or(0) + 90));
        run::boot_l1(
            &ctx,
            "agent",
            |dir| write_agent_files(&ctx, &subset(dir), run, dir),
            &watch,
        )
    }
}

/// The plan and L1's script in a fresh work directory.
fn write_agent_files(
    ctx: &RunContext<'_>,
    plan: &Plan,
    run: &AgentRun<'_>,
    dir: &Path,
) -> Result<()> {
    let plan_path = dir.join(PLAN_FILE);
    let json = serde_json::to_string_pretty(plan).map_err(|e| Error::BenchResults {
        path: plan_path.clone(),
        detail: e.to_string(),
    })?;
    run::write(&plan_path, &json)?;
    let mut agent = vec![
        run.agent_binary.display().to_string(),
        "-v".into(),
        "l1-agent".into(),
        "--plan".into(),
        plan_path.display().to_string(),
        "--results".into(),
        dir.join(RESULTS_FILE).display().to_string(),
    ];
    for i in 0..ctx.scenario.devices.len() {
        agent.extend(["--device".into(), device_placeholder(i)]);
    }
    let run_plan = RunPlan {
        work_dir: dir.to_path_buf(),
        devices: ctx.scenario.devices.clone(),
        hugepages: ctx.scenario.hugepages,
        hugepage_count: run.hugepage_count,
        vmm_command: agent,
        spec_template: None,
        l0_timeout_secs: ctx.scenario.timeout.as_secs(),
        pre_commands: Vec::new(),
        actions: Vec::new(),
        net: false,
        kernel_cache: true,
        kvm_pages: false,
        warm_up: run.warm_up.clone(),
        thp: None,
    };
    run::write(&dir.join("run.sh"), &scripts::l1_bench_script(&run_plan))
}

/// What L1 and the agent said in a boot's work dir: for a failure message.
pub(crate) fn boot_tails(work_dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(work_dir.join(name)).unwrap_or_default();
    let l1_error = read("l1-error");
    format!(
        "work dir {}\n{}--- agent log, last 20 lines ---\n{}\n--- L1 console, last 30 lines ---\n{}\n--- end ---",
        work_dir.display(),
        if l1_error.is_empty() {
            String::new()
        } else {
            format!("L1 gave up: {l1_error}\n")
        },
        tail(&read("agent.log"), 20),
        tail(&read("l1-console.log"), 30)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_stops_a_silent_l1() {
        let watch = agent_watch(Duration::from_secs(3600));
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
        let patient = agent_watch(Duration::from_secs(3600))(&dir, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(20));
        let impatient = agent_watch(Duration::from_millis(1))(&dir, Duration::ZERO);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(patient, None);
        assert!(matches!(impatient, Some(Stall::NoProgress(_))));
    }
}
