//! What one run produced, and whether it passed: the L1 and L2 consoles, the
//! parsed `TESTBED-CHECK` results, the VMM's exit status and timings. A
//! failing run is reported with the console tails, so a red test explains
//! itself without digging through the work directory.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::l0::{self, L0Exit, Marker};

/// Console lines shown in a failure report, per console.
pub const TAIL_LINES: usize = 40;

/// Result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// PASS or FAIL.
    pub passed: bool,
    /// One line of detail from the check.
    pub detail: String,
}

/// Parses the `TESTBED-CHECK <name> PASS|FAIL <detail>` lines of L2's
/// console. Markers may follow other output on the same line (kernel
/// messages interleave with /init's); lines with another status are ignored.
pub fn parse_checks(console: &str) -> Vec<CheckResult> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("TESTBED-CHECK ")? + "TESTBED-CHECK ".len()..];
            let mut parts = rest.trim_end_matches('\r').splitn(3, ' ');
            let name = parts.next()?.to_string();
            let passed = match parts.next()? {
                "PASS" => true,
                "FAIL" => false,
                _ => return None,
            };
            let detail = parts.next().unwrap_or("").trim().to_string();
            Some(CheckResult {
                name,
                passed,
                detail,
            })
        })
        .collect()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where time went, measured on L0's wall clock from L0's start (markers on
/// L1's console) and on L1's clock (from the run script's timings file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// L1's /init started.
    pub l1_init: Option<Duration>,
    /// L1 has bound the devices and is about to start the VMM.
    pub l1_ready: Option<Duration>,
    /// L1 saw L2's `TESTBED-INIT` (polled every 0.5 s).
    pub l2_init: Option<Duration>,
    /// The VMM exited.
    pub vmm_exit: Option<Duration>,
    /// L0 exited (or was killed).
    pub total: Duration,
    /// VMM start to L2's /init, on L1's clock.
    pub l1_launch_to_l2_init: Option<f64>,
    /// VMM start to VMM exit, on L1's clock.
    pub l1_launch_to_exit: Option<f64>,
}

impl Timings {
    /// Combines L0-side markers with L1's `name=uptime` timings file.
    pub fn from_markers(markers: &[Marker], total: Duration, l1_timings: &str) -> Self {
        let at = |name: &str| markers.iter().find(|m| m.name == name).map(|m| m.at);
        let uptime = |name: &str| {
            l1_timings
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('=')?.parse::<f64>().ok())
        };
        let since_launch =
            |name: &str| Some(uptime(name)? - uptime("launch")?).filter(|d: &f64| *d >= 0.0);
        Self {
            l1_init: at("init"),
            l1_ready: at("ready"),
            l2_init: at("l2-init"),
            vmm_exit: at("vmm-exit"),
            total,
            l1_launch_to_l2_init: since_launch("l2-init"),
            l1_launch_to_exit: since_launch("vmm-exit"),
        }
    }

    /// One line: `L1 init 2.1s, L1 ready 6.0s, ...`.
    pub fn summary(&self) -> String {
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()));
        let l1 = |d: Option<f64>| d.map_or("-".into(), |d| format!("{d:.1}s"));
        format!(
            "L1 /init {}, L1 ready {}, L2 /init {}, VMM exit {}, total {:.1}s (in L1: launch->L2 /init {}, launch->exit {})",
            secs(self.l1_init),
            secs(self.l1_ready),
            secs(self.l2_init),
            secs(self.vmm_exit),
            self.total.as_secs_f64(),
            l1(self.l1_launch_to_l2_init),
            l1(self.l1_launch_to_exit),
        )
    }
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// VMM label (`qemu`, `strait`).
    pub vmm: String,
    /// Check names a passing run reports.
    pub expected_checks: Vec<String>,
    /// Guest-side results (from L2's console) then host-side results.
    pub checks: Vec<CheckResult>,
    /// L1's console (L0's serial output).
    pub l1_console: String,
    /// L2's console (the VMM's stdout and stderr).
    pub l2_console: String,
    /// The VMM's exit status, if L1 recorded one.
    pub vmm_exit: Option<i32>,
    /// The exit status the scenario expects of the VMM (0 unless it says otherwise).
    pub expected_exit: i32,
    /// What L1's actions printed (`l1-actions.log`).
    pub actions_log: String,
    /// L1 killed the VMM at its deadline.
    pub vmm_timed_out: bool,
    /// L1's own failure message (`TESTBED-L1-ERROR`), if any.
    pub l1_error: Option<String>,
    /// How L0 ended.
    pub l0_exit: L0Exit,
    /// L0 QEMU's stderr (shown in reports when L0 itself failed).
    pub l0_stderr: String,
    /// Timings.
    pub timings: Timings,
    /// The run's work directory (consoles, spec, timings).
    pub work_dir: PathBuf,
    /// Why an earlier attempt of this run was thrown away (a known flake of the
    /// nested emulation, not of the VMM), one line each.
    pub reruns: Vec<String>,
}

/// testbed.md: the outer emulation of nested SVM rarely crashes L1 with this
/// message right after a switch back from L2.
const NESTED_CRASH: &str = "stack guard page was hit";

impl Outcome {
    /// Why this failed run is a known flaw of the outer emulation rather than
    /// the VMM's: testbed.md's L1 crash, or an L1 CPU stuck in VMRUN (a soft
    /// lockup or RCU stall report, seen with QEMU and Strait alike, about one
    /// launch in 30). The caller may rerun once.
    pub fn nested_flake(&self) -> Option<String> {
        if self.problems().is_empty() {
            return None;
        }
        if self.l1_console.contains(NESTED_CRASH) {
            return Some(format!("L1 died with \"{NESTED_CRASH}\" (testbed.md)"));
        }
        if let L0Exit::Stalled { stall, .. } = &self.l0_exit {
            return Some(format!("{stall} (nested emulation lock-up)"));
        }
        l0::lockup_report(&self.l1_console)
            .map(|report| format!("L1's kernel reported \"{report}\" (nested emulation lock-up)"))
    }

    /// The result of check `name`.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// True when check `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.check(name).is_some_and(|c| c.passed)
    }

    /// Whether L2's /init printed `marker` (`TESTBED-INIT`, `TESTBED-DONE`).
    pub fn l2_printed(&self, marker: &str) -> bool {
        self.l2_console.contains(marker)
    }

    /// Every reason the run did not pass; empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.l0_exit {
            L0Exit::Exited(Some(0)) => {}
            L0Exit::Exited(code) => problems.push(format!("L0 QEMU exited with {code:?}")),
            L0Exit::TimedOut(limit) => problems.push(format!("L0 killed after {limit:?}")),
            L0Exit::Stalled { after, stall } => {
                problems.push(format!("L0 killed after {after:?}: {stall}"))
            }
        }
        if let Some(error) = &self.l1_error {
            problems.push(format!("L1 gave up: {error}"));
        }
        if self.vmm_timed_out {
            problems.push("L1 killed the VMM at its deadline".into());
        }
        match self.vmm_exit {
            Some(code) if code == self.expected_exit => {}
            Some(code) => problems.push(format!(
                "VMM ({}) exited with status {code}, want {}",
                self.vmm, self.expected_exit
            )),
            None => problems.push(format!(
                "no exit status recorded for the VMM ({})",
                self.vmm
            )),
        }
        for marker in ["TESTBED-INIT", "TESTBED-DONE"] {
            if !self.l2_printed(marker) {
                problems.push(format!("L2 never printed {marker}"));
            }
        }
        for name in &self.expected_checks {
            match self.check(name) {
                None => problems.push(format!("check {name} did not report")),
                Some(c) if !c.passed => problems.push(format!("check {name} FAIL: {}", c.detail)),
                Some(_) => {}
            }
        }
        problems
    }

    /// Ok when the run passed; otherwise `ScenarioFailed` with the report.
    pub fn verify(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::ScenarioFailed {
            report: self.failure_report(&problems),
        })
    }

    /// The failure report for this run's own [`Outcome::problems`].
    pub fn report(&self) -> String {
        self.failure_report(&self.problems())
    }

    /// Checks and timings, one line each.
    pub fn summary(&self) -> String {
        let mut s = format!("scenario `{}` with {}:\n", self.scenario, self.vmm);
        for c in &self.checks {
            let status = if c.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "  {status} {}: {}", c.name, c.detail);
        }
        let exit = self
            .vmm_exit
            .map_or("none recorded".into(), |c| c.to_string());
        let _ = writeln!(s, "  VMM exit status: {exit}");
        let _ = writeln!(s, "  timings: {}", self.timings.summary());
        for why in &self.reruns {
            let _ = writeln!(s, "  rerun: {why}");
        }
        let _ = write!(s, "  work dir: {}", self.work_dir.display());
        s
    }

    /// The report of a failed run: `problems`, the summary, and the tails of
    /// L2's and L1's consoles.
    pub fn failure_report(&self, problems: &[String]) -> String {
        let mut s = format!(
            "testbed scenario `{}` with {} FAILED:\n",
            self.scenario, self.vmm
        );
        for p in problems {
            let _ = writeln!(s, "  - {p}");
        }
        let _ = writeln!(s, "{}", self.summary());
        let _ = writeln!(
            s,
            "--- L2 console (VMM output), last {TAIL_LINES} lines ---"
        );
        let _ = writeln!(s, "{}", tail(&self.l2_console, TAIL_LINES));
        let _ = writeln!(s, "--- L1 console, last {TAIL_LINES} lines ---");
        let _ = writeln!(s, "{}", tail(&self.l1_console, TAIL_LINES));
        if self.l0_exit != L0Exit::Exited(Some(0)) && !self.l0_stderr.is_empty() {
            let _ = writeln!(s, "--- L0 QEMU stderr, last 10 lines ---");
            let _ = writeln!(s, "{}", tail(&self.l0_stderr, 10));
        }
        s.push_str("--- end ---");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(l2_console: &str) -> Outcome {
        Outcome {
            scenario: "nvme".into(),
            vmm: "qemu".into(),
            expected_checks: vec!["nvme-bound".into(), "nvme-pattern".into()],
            checks: parse_checks(l2_console),
            l1_console: (1..=50).map(|i| format!("l1 line {i}\n")).collect(),
            l2_console: l2_console.into(),
            vmm_exit: Some(0),
            expected_exit: 0,
            actions_log: String::new(),
            vmm_timed_out: false,
            l1_error: None,
            l0_exit: L0Exit::Exited(Some(0)),
            l0_stderr: String::new(),
            timings: Timings::default(),
            work_dir: PathBuf::from("/w"),
            reruns: Vec::new(),
        }
    }

    const GOOD: &str = "TESTBED-INIT\r\nTESTBED-CHECK nvme-bound PASS 01:00.0 bound to nvme\r\n\
                        TESTBED-CHECK nvme-pattern PASS md5 abc\r\nTESTBED-DONE failed=0\r\n";

    #[test]
    fn check_markers_are_parsed_with_detail() {
        let checks =
            parse_checks("junk [  1.0] TESTBED-CHECK a PASS one two\r\nTESTBED-CHECK b FAIL\n");
        assert_eq!(
            checks,
            [
                CheckResult {
                    name: "a".into(),
                    passed: true,
                    detail: "one two".into()
                },
                CheckResult {
                    name: "b".into(),
                    passed: false,
                    detail: String::new()
                },
            ]
        );
    }

    #[test]
    fn malformed_check_lines_are_ignored() {
        assert!(parse_checks("TESTBED-CHECK a MAYBE x\nTESTBED-CHECK\n").is_empty());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn clean_run_has_no_problems() {
        assert!(outcome(GOOD).verify().is_ok());
    }

    #[test]
    fn failed_and_missing_checks_are_problems() {
        let o = outcome("TESTBED-INIT\nTESTBED-CHECK nvme-bound FAIL no device\nTESTBED-DONE\n");
        let problems = o.problems();
        assert!(problems.contains(&"check nvme-bound FAIL: no device".to_string()));
        assert!(problems.contains(&"check nvme-pattern did not report".to_string()));
    }

    #[test]
    fn vmm_status_and_timeouts_are_problems() {
        let mut o = outcome(GOOD);
        o.vmm_exit = Some(1);
        o.l0_exit = L0Exit::TimedOut(Duration::from_secs(240));
        let problems = o.problems();
        assert!(problems.iter().any(|p| p.contains("exited with status 1")));
        assert!(problems.iter().any(|p| p.contains("L0 killed after 240s")));
    }

    #[test]
    fn failure_report_holds_console_tails() {
        let mut o = outcome(GOOD);
        o.vmm_exit = None;
        let Err(Error::ScenarioFailed { report }) = o.verify() else {
            panic!("a run without a VMM status must fail");
        };
        assert!(report.contains("no exit status recorded for the VMM (qemu)"));
        assert!(report.contains("--- L2 console (VMM output), last 40 lines ---\nTESTBED-INIT"));
        assert!(report.contains("l1 line 50"));
        assert!(report.contains("l1 line 11\n"));
        assert!(
            !report.contains("l1 line 10\n"),
            "only the last 40 L1 lines belong in the report"
        );
    }

    #[test]
    fn timings_combine_markers_and_l1_uptimes() {
        let markers = [Marker {
            name: "ready".into(),
            at: Duration::from_secs(5),
        }];
        let t = Timings::from_markers(
            &markers,
            Duration::from_secs(30),
            "launch=10.0\nl2-init=19.5\nvmm-exit=25.0\n",
        );
        assert_eq!(t.l1_ready, Some(Duration::from_secs(5)));
        assert_eq!(t.l1_init, None);
        assert_eq!(t.l1_launch_to_l2_init, Some(9.5));
        assert_eq!(t.l1_launch_to_exit, Some(15.0));
    }

    #[test]
    fn lockup_in_l1_of_a_failed_run_is_a_nested_flake() {
        let mut o = outcome("TESTBED-INIT\n");
        o.l1_console =
            "[ 37.1] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [strait:134]".into();
        assert!(o
            .nested_flake()
            .is_some_and(|why| why.contains("soft lockup")));
    }

    #[test]
    fn passing_run_is_never_a_flake() {
        let mut o = outcome(GOOD);
        o.l1_console = "BUG: soft lockup".into();
        assert!(
            o.problems().is_empty(),
            "fixture must pass: {:?}",
            o.problems()
        );
        assert_eq!(o.nested_flake(), None);
    }

    #[test]
    fn failure_without_a_known_report_is_real() {
        let o = outcome("TESTBED-INIT\n");
        assert!(!o.problems().is_empty());
        assert_eq!(o.nested_flake(), None);
    }

    #[test]
    fn l1_frozen_silent_is_a_nested_flake() {
        let mut o = outcome("");
        o.l0_exit = L0Exit::Stalled {
            after: Duration::from_secs(100),
            stall: crate::l0::Stall::ConsoleSilent(Duration::from_secs(91)),
        };
        assert!(o.nested_flake().is_some_and(|why| why.contains("silent")));
    }
}
