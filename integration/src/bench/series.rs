//! Launch series: one scenario's guest launched many times in one L1 boot,
//! Strait and QEMU interleaved, through the benchmark's agent (per-launch
//! timestamps, its time limit per launch) and its L1 watch. This is the
//! "boots N times in a row without a hang" acceptance run: each launch must
//! reach /init, pass the scenario's checks and exit 0.
//!
//! Two ways a launch can stall are told apart (testbed notes):
//! - L1 itself locks up (a soft-lockup report, a silent console, an agent
//!   that makes no progress): a known flaw of the outer emulation of nested
//!   SVM, seen with both VMMs. A fresh L1 is booted for the launches not yet
//!   recorded (up to four times, as the benchmark does), and the series says so.
//! - The VMM hangs while L1 lives on (heartbeat, agent on time): the agent
//!   kills it at its limit and records it timed out. That is a real failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::outcome::{parse_checks, CheckResult};
use crate::run::{self, RunContext};
use crate::scenario::Scenario;
use crate::vmm::{qemu_command, strait_spec, GuestConfig, Vmm};
use crate::{l0, Testbed};

use super::analysis::{median, ratio};
use super::boots::{self, AgentRun, Boots};
use super::plan::{
    self, IoLoad, Launch, LaunchKey, LaunchKind, LaunchRecord, Plan, VmmKind, INIT_MARKER,
};

/// L1 boots a series may take: the first, and a fresh L1 after each stall.
/// L1 has frozen up to twice in one 13-launch series here.
const MAX_L1_BOOTS: u32 = 5;
/// The launch L1 stalled in is tried again in the fresh L1, twice at most.
const STALL_TRIES: u32 = 3;
/// Boot launches run no I/O load.
const NO_IO: IoLoad = IoLoad {
    secs: 0,
    queue_depth: 1,
};

/// What a series runs.
#[derive(Debug, Clone)]
pub struct SeriesOptions {
    /// The strait binary.
    pub strait_binary: PathBuf,
    /// The testbed binary that runs as the agent inside L1.
    pub agent_binary: PathBuf,
    /// Launches under Strait.
    pub strait_launches: u32,
    /// Launches under QEMU, spread among Strait's.
    pub qemu_launches: u32,
}

/// The order of a series: QEMU's launches spread evenly among Strait's,
/// each before its share of them (10 and 3 give Q S S S S Q S S S Q S S S).
pub fn interleave(strait: u32, qemu: u32) -> Vec<VmmKind> {
    let mut order = Vec::new();
    let mut placed = 0;
    for s in 0..strait.max(1) {
        while placed < qemu && placed * strait <= s * qemu {
            order.push(VmmKind::Qemu);
            placed += 1;
        }
        if s < strait {
            order.push(VmmKind::Strait);
        }
    }
    order.extend((placed..qemu).map(|_| VmmKind::Qemu));
    order
}

/// The agent's plan: `order`'s launches of `guest`, `NN-<label>-<vmm>`, each
/// with the boot launch's time limit. Strait's specs go into `work_dir`.
pub fn series_plan(
    guest: &GuestConfig,
    strait: &Path,
    order: &[VmmKind],
    label: &str,
    work_dir: &Path,
) -> Plan {
    let launches = order
        .iter()
        .zip(1u32..)
        .map(|(&vmm, n)| {
            let id = format!("{n:02}-{label}-{}", vmm.name());
            let spec_path =
                (vmm == VmmKind::Strait).then(|| work_dir.join(format!("spec-{id}.json")));
            let command = match &spec_path {
                Some(spec) => Vmm::Strait {
                    binary: strait.to_path_buf(),
                }
                .command(guest, spec),
                None => qemu_command(guest),
            };
            Launch {
                key: LaunchKey {
                    id,
                    kind: LaunchKind::Boot,
                    vmm,
                    rep: n,
                    memory_mib: guest.memory_mib,
                    hugepages: guest.hugepages,
                    prefault: guest.prefault,
                    cold_kernel: false,
                },
                command,
                spec: spec_path.as_ref().map(|_| strait_spec(guest)),
                spec_path,
                qmp_socket: None,
                stop_at_qmp: false,
                stop_at_line: None,
                timeout_secs: plan::timeout_secs(LaunchKind::Boot, NO_IO),
                transparent_hugepages: None,
                peer: None,
                keep_all_lines: false,
                sample_period_ms: None,
            }
        })
        .collect();
    Plan {
        launches,
        work_dir: work_dir.to_path_buf(),
        transparent_hugepages: "never".into(),
        vmm_cache: None,
    }
}

/// What a series produced.
#[derive(Debug, Clone)]
pub struct SeriesOutcome {
    /// The scenario's name.
    pub scenario: String,
    /// Checks every launch must pass.
    pub expected_checks: Vec<String>,
    /// One record per planned launch, in plan order (`not_run` if it never ran).
    pub records: Vec<LaunchRecord>,
    /// One line per L1 boot.
    pub l1_boots: Vec<String>,
    /// Launches L1 stalled in (the known nested-emulation lock-up), with what was seen.
    pub stalls: Vec<String>,
    /// Each L1 boot's work dir.
    pub work_dirs: Vec<PathBuf>,
    /// What L1 and the agent said in the last boot (for failure messages).
    pub last_boot_tails: String,
}

impl Testbed {
    /// Launches `scenario`'s guest under Strait and QEMU, interleaved, in one
    /// L1 boot (a second one if L1 stalls, for the launches left). Launches
    /// that ran and failed are in the outcome; call [`SeriesOutcome::verify`].
    pub fn run_series(&self, scenario: &Scenario, opts: &SeriesOptions) -> Result<SeriesOutcome> {
        let scenario = if self.opts.break_checks {
            scenario.clone().with_broken_check()
        } else {
            scenario.clone()
        };
        for path in [&opts.strait_binary, &opts.agent_binary] {
            if !path.is_file() {
                return Err(Error::MissingPrerequisites {
                    missing: format!("the binary {}", path.display()),
                    reason: "build it with `cargo build --release -p vmm -p testbed`".into(),
                });
            }
        }
        let artefacts = self.prepare(&scenario)?;
        let mut testbed = self.opts.clone();
        testbed.vmm = Vmm::Strait {
            binary: opts.strait_binary.clone(),
        };
        let guest = run::guest_config(&RunContext {
            opts: &testbed,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &artefacts,
        });
        let order = interleave(opts.strait_launches, opts.qemu_launches);
        let (strait, label) = (opts.strait_binary.clone(), scenario.name.clone());
        let agent_run = AgentRun {
            testbed,
            hugepage_count: l0::hugepage_count(&scenario),
            scenario: scenario.clone(),
            artefacts,
            agent_binary: opts.agent_binary.clone(),
            io: NO_IO,
            max_boots: MAX_L1_BOOTS,
            stall_tries: STALL_TRIES,
            plan: Box::new(move |dir| series_plan(&guest, &strait, &order, &label, dir)),
            warm_up: None,
        };
        let boots = self.agent_boots(&agent_run)?;
        Ok(SeriesOutcome::new(
            &scenario,
            &(agent_run.plan)(Path::new("")),
            boots,
        ))
    }
}

impl SeriesOutcome {
    fn new(scenario: &Scenario, plan: &Plan, boots: Boots) -> Self {
        let records = plan
            .launches
            .iter()
            .map(|l| {
                // The last record wins: a launch L1 stalled in twice has one.
                let found = boots.records.iter().rev().find(|r| r.key.id == l.key.id);
                found.cloned().unwrap_or_else(|| {
                    let why = "L1 stalled and no L1 boot was left for it".to_string();
                    LaunchRecord::not_run(l.key.clone(), why)
                })
            })
            .collect();
        Self {
            scenario: scenario.name.clone(),
            expected_checks: scenario.expected_checks(),
            records,
            l1_boots: boots.summaries,
            stalls: boots
                .stalls
                .iter()
                .map(|(id, stall)| format!("{id}: {stall}"))
                .collect(),
            last_boot_tails: boots
                .work_dirs
                .last()
                .map(|d| boots::boot_tails(d))
                .unwrap_or_default(),
            work_dirs: boots.work_dirs,
        }
    }

    /// The guest's check results in a launch's output.
    pub fn checks(record: &LaunchRecord) -> Vec<CheckResult> {
        let text: Vec<&str> = record.lines.iter().map(|l| l.text.as_str()).collect();
        parse_checks(&text.join("\n"))
    }

    /// Why a launch did not pass; empty if it did.
    pub fn problems(&self, r: &LaunchRecord) -> Vec<String> {
        if let Some(why) = &r.not_run {
            return vec![format!("not run: {why}")];
        }
        let mut p = Vec::new();
        if r.timed_out {
            p.push(
                "hung: the agent killed it at its time limit while L1 kept its heartbeat".into(),
            );
        }
        if r.exit_code != Some(0) {
            p.push(format!(
                "exit code {:?}, signal {:?}",
                r.exit_code, r.exit_signal
            ));
        }
        if !r.lines.iter().any(|l| l.text.contains(INIT_MARKER)) {
            p.push("the guest never reached /init".into());
        }
        let checks = Self::checks(r);
        for name in &self.expected_checks {
            match checks.iter().find(|c| &c.name == name) {
                Some(c) if c.passed => {}
                Some(c) => p.push(format!("check {name} FAIL: {}", c.detail)),
                None => p.push(format!("check {name} not reported")),
            }
        }
        p
    }

    /// `vmm`'s launches.
    pub fn launches(&self, vmm: VmmKind) -> impl Iterator<Item = &LaunchRecord> {
        self.records.iter().filter(move |r| r.key.vmm == vmm)
    }

    /// Spawn-to-reaped wall times (s, L1's clock) of `vmm`'s passing launches.
    pub fn exit_secs(&self, vmm: VmmKind) -> Vec<f64> {
        self.launches(vmm)
            .filter(|r| self.problems(r).is_empty())
            .filter_map(|r| r.exit_ms.map(|ms| ms / 1000.0))
            .collect()
    }

    /// Median spawn-to-reaped wall time of `vmm`'s passing launches.
    pub fn median_exit_secs(&self, vmm: VmmKind) -> Option<f64> {
        median(&self.exit_secs(vmm))
    }

    /// Strait's median wall time over QEMU's, in this series.
    pub fn ratio(&self) -> Option<f64> {
        ratio(
            self.median_exit_secs(VmmKind::Strait),
            self.median_exit_secs(VmmKind::Qemu),
        )
    }

    /// Every launch on one line, then the medians, the ratio, and L1's boots.
    pub fn summary(&self) -> String {
        let mut s = format!("series {}: launch -> exit (L1 clock)\n", self.scenario);
        for r in &self.records {
            let init = r.lines.iter().find(|l| l.text.contains(INIT_MARKER));
            let problems = self.problems(r);
            let _ = writeln!(
                s,
                "  {:<20} /init {:>6}  exit {:>6}  {}",
                r.key.id,
                init.map_or("-".into(), |l| format!("{:.2}s", l.ms / 1000.0)),
                r.exit_ms
                    .map_or("-".into(), |ms| format!("{:.2}s", ms / 1000.0)),
                if problems.is_empty() {
                    "ok".into()
                } else {
                    problems.join("; ")
                }
            );
        }
        let secs = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2} s"));
        for vmm in VmmKind::BOTH {
            let _ = writeln!(
                s,
                "  median {}: {} over {} passing launches",
                vmm.name(),
                secs(self.median_exit_secs(vmm)),
                self.exit_secs(vmm).len()
            );
        }
        let ratio = self.ratio().map_or("n/a".into(), |r| format!("{r:.2}"));
        let _ = writeln!(s, "  ratio strait/qemu (median wall time): {ratio}");
        for (i, boot) in self.l1_boots.iter().enumerate() {
            let _ = writeln!(s, "  L1 boot {}: {boot}", i + 1);
        }
        for stall in &self.stalls {
            let _ = writeln!(
                s,
                "  L1 stalled in {stall} (known nested-emulation lock-up): remaining launches rerun in a fresh L1"
            );
        }
        s
    }

    /// Ok if every Strait launch passed and at least one QEMU launch did (the
    /// ratio needs one). Otherwise the failing launches with their output tails.
    pub fn verify(&self) -> Result<()> {
        let mut report = String::new();
        let failing = self
            .records
            .iter()
            .filter(|r| r.key.vmm == VmmKind::Strait || self.exit_secs(VmmKind::Qemu).is_empty())
            .filter(|r| !self.problems(r).is_empty());
        for r in failing {
            let _ = writeln!(
                report,
                "--- {}: {} ---\n{}",
                r.key.id,
                self.problems(r).join("; "),
                r.tail.join("\n")
            );
        }
        if report.is_empty() {
            return Ok(());
        }
        Err(Error::ScenarioFailed {
            report: format!(
                "{}{report}--- last L1 boot ---\n{}",
                self.summary(),
                self.last_boot_tails
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::TimedLine;
    use crate::scenario;
    use VmmKind::{Qemu as Q, Strait as S};

    #[test]
    fn qemu_launches_are_spread_among_straits() {
        assert_eq!(interleave(10, 3), [Q, S, S, S, S, Q, S, S, S, Q, S, S, S]);
        assert_eq!(interleave(2, 2), [Q, S, Q, S]);
        assert_eq!(interleave(0, 2), [Q, Q]);
        assert_eq!(interleave(3, 0), [S, S, S]);
    }

    fn guest() -> GuestConfig {
        GuestConfig {
            initramfs: PathBuf::from("/c/l2-boot.cpio"),
            ..GuestConfig::for_tests()
        }
    }

    #[test]
    fn plan_gives_strait_a_spec_in_the_work_dir_and_ids_in_order() {
        let plan = series_plan(
            &guest(),
            Path::new("/r/strait"),
            &[Q, S],
            "boot",
            Path::new("/w"),
        );
        let ids: Vec<&str> = plan.launches.iter().map(|l| l.key.id.as_str()).collect();
        assert_eq!(ids, ["01-boot-qemu", "02-boot-strait"]);
        assert_eq!(plan.launches[0].spec_path, None);
        assert_eq!(
            plan.launches[1].spec_path.as_deref(),
            Some(Path::new("/w/spec-02-boot-strait.json"))
        );
        assert_eq!(plan.launches[1].command[0], "/r/strait");
        // The agent runs a hung measurement once: per VMM, not per launch.
        assert_eq!(plan.launches[1].key.measurement(), "boot-strait");
    }

    fn outcome(record: LaunchRecord) -> SeriesOutcome {
        SeriesOutcome {
            scenario: "boot".into(),
            expected_checks: scenario::boot().expected_checks(),
            records: vec![record],
            l1_boots: Vec::new(),
            stalls: Vec::new(),
            work_dirs: Vec::new(),
            last_boot_tails: String::new(),
        }
    }

    fn passing(vmm: VmmKind) -> LaunchRecord {
        let key = LaunchKey {
            id: format!("01-boot-{}", vmm.name()),
            kind: LaunchKind::Boot,
            vmm,
            rep: 1,
            memory_mib: 512,
            hugepages: crate::HugePages::Size2M,
            prefault: true,
            cold_kernel: false,
        };
        let mut r = LaunchRecord::not_run(key, String::new());
        r.not_run = None;
        r.exit_code = Some(0);
        r.exit_ms = Some(8000.0);
        let line = |ms, text: &str| TimedLine {
            ms,
            text: text.into(),
        };
        r.lines = vec![
            line(2000.0, "TESTBED-INIT"),
            line(3000.0, "TESTBED-CHECK cpus PASS 2 CPUs"),
            line(3100.0, "TESTBED-CHECK memory PASS MemTotal 500000 kB"),
            line(
                3200.0,
                "TESTBED-CHECK tsc-deadline PASS TSC deadline timer available",
            ),
            line(
                3300.0,
                "TESTBED-CHECK mp-table PASS found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
            ),
        ];
        r
    }

    #[test]
    fn a_launch_with_its_checks_and_exit_0_passes() {
        let o = outcome(passing(S));
        assert!(
            o.problems(&o.records[0]).is_empty(),
            "{:?}",
            o.expected_checks
        );
        assert_eq!(o.median_exit_secs(S), Some(8.0));
    }

    #[test]
    fn a_hung_strait_launch_fails_the_series() {
        let mut r = passing(S);
        r.timed_out = true;
        r.exit_code = None;
        r.exit_signal = Some(9);
        let o = outcome(r);
        assert!(o.problems(&o.records[0])[0].starts_with("hung"));
        assert!(matches!(o.verify(), Err(Error::ScenarioFailed { .. })));
    }

    #[test]
    fn a_failed_check_fails_the_launch() {
        let mut r = passing(S);
        r.lines[1].text = "TESTBED-CHECK cpus FAIL 1 CPU".into();
        let o = outcome(r);
        assert_eq!(o.problems(&o.records[0]), ["check cpus FAIL: 1 CPU"]);
    }

    #[test]
    fn the_ratio_is_strait_over_qemu_medians() {
        let mut o = outcome(passing(S));
        let mut q = passing(Q);
        q.exit_ms = Some(16_000.0);
        o.records.push(q);
        assert_eq!(o.ratio(), Some(0.5));
        assert!(o.verify().is_ok());
    }
}
