//! `strait check [BDF...]`: a read-only preflight of the host for GPU passthrough.
//!
//! Each rule reads a few files (sysfs, procfs, /dev nodes) under a root directory and
//! returns [`Finding`]s: OK, WARN or FAIL, one line each, the WARN and FAIL ones with the
//! exact fix. Nothing on the host is changed and no spec is needed. The rules follow the
//! kernel's Documentation/driver-api/vfio.rst (IOMMU groups, viability, interrupt
//! remapping), Documentation/ABI/testing/sysfs-bus-pci and
//! Documentation/admin-guide/mm/hugetlbpage.rst.
//!
//! - [`platform`]: KVM, the IOMMU (ACPI tables, active units, kernel command line),
//!   interrupt remapping, the VFIO modules;
//! - [`pci`]: every display/3D/accelerator function and every function named on the
//!   command line: driver, IOMMU group, reset, BARs, PCIe link, NUMA node;
//! - [`memory`]: hugepage pools, the locked-memory limit, VFIO's DMA entry limit.
//!
//! The exit code is the worst status: 0 all OK, 1 some WARN, 2 some FAIL.

pub mod memory;
pub mod pci;
pub mod pci_hw;
pub mod platform;
pub mod root;

use serde::Serialize;
use vfio_glue::HostPciAddress;

pub use memory::ProcessLimits;
pub use pci_hw::phys_bits;
pub use root::HostRoot;

/// How a checked item stands, in rising order of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The exit code of a report whose worst status is this one.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One checked item: what was found and, unless OK, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule, e.g. `iommu units` or `driver`.
    pub check: &'static str,
    /// What the rule looked at when there are several: a PCI address, a page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub status: Status,
    pub detail: String,
    /// The command or setting that fixes a WARN or FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            subject: None,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Finding::ok(check, detail)
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            status: Status::Fail,
            ..Finding::warn(check, detail, fix)
        }
    }

    /// The same finding about `subject`.
    pub fn on(self, subject: impl ToString) -> Self {
        Finding {
            subject: Some(subject.to_string()),
            ..self
        }
    }

    /// One line: status, subject, rule, detail and fix.
    pub fn line(&self) -> String {
        let subject = self
            .subject
            .as_ref()
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let mut line = format!(
            "{:<5} {subject}{}: {}",
            self.status.label(),
            self.check,
            self.detail
        );
        if let Some(fix) = &self.fix {
            line.push_str(" -- fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// Everything `strait check` found, in the order the rules ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

/// The JSON document of `strait check --json`.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    status: Status,
    exit_code: u8,
    ok: usize,
    warn: usize,
    fail: usize,
    findings: &'a [Finding],
}

impl Report {
    /// The worst status of any finding (OK for none).
    pub fn status(&self) -> Status {
        self.findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0 when everything is OK, 1 for any WARN, 2 for any FAIL.
    pub fn exit_code(&self) -> u8 {
        self.status().exit_code()
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// The text report, one line per finding.
    pub fn lines(&self) -> Vec<String> {
        self.findings.iter().map(Finding::line).collect()
    }

    /// The JSON report: overall status, exit code, counts and every finding.
    pub fn to_json(&self) -> serde_json::Value {
        let doc = JsonReport {
            status: self.status(),
            exit_code: self.exit_code(),
            ok: self.count(Status::Ok),
            warn: self.count(Status::Warn),
            fail: self.count(Status::Fail),
            findings: &self.findings,
        };
        serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    /// Where the host's `/` is.
    pub root: HostRoot,
    /// Functions to check besides the display, 3D and accelerator controllers.
    pub devices: Vec<HostPciAddress>,
    /// Guest RAM in bytes, for the memory rules (`--memory`).
    pub memory: Option<u64>,
    /// This process's locked-memory limit and capability, `None` when unreadable.
    pub limits: Option<ProcessLimits>,
}

/// Run every rule.
pub fn run(input: &CheckInput) -> Report {
    let mut findings = platform::check(&input.root);
    findings.extend(pci::check(&input.root, &input.devices, input.memory));
    findings.extend(memory::check(
        &input.root,
        input.memory,
        input.limits.as_ref(),
    ));
    Report { findings }
}

/// Why a `--memory` size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size: write bytes or a number with K, M, G or T (e.g. 16G, 512M)")]
    Malformed(String),
    #[error("{0:?} is 0 or does not fit in 64 bits")]
    OutOfRange(String),
}

/// Parse a RAM size: bytes (`1073741824`) or a number with a binary unit (`512M`,
/// `16G`, `16GiB`, `1T`; case-insensitive).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let malformed = || SizeError::Malformed(input.to_string());
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| malformed())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(malformed()),
    };
    number
        .checked_mul(1u64 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| SizeError::OutOfRange(input.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        let findings = statuses
            .iter()
            .map(|s| Finding {
                status: *s,
                ..Finding::ok("test", "x")
            })
            .collect();
        Report { findings }
    }

    #[test]
    fn exit_code_is_the_worst_status() {
        assert_eq!(report(&[]).exit_code(), 0);
        assert_eq!(report(&[Status::Ok, Status::Ok]).exit_code(), 0);
        assert_eq!(report(&[Status::Ok, Status::Warn]).exit_code(), 1);
        assert_eq!(
            report(&[Status::Fail, Status::Warn, Status::Ok]).exit_code(),
            2
        );
    }

    #[test]
    fn a_line_carries_status_subject_detail_and_fix() {
        let f = Finding::fail("driver", "bound to nouveau", "modprobe vfio-pci").on("0000:01:00.0");
        assert_eq!(
            f.line(),
            "FAIL  0000:01:00.0 driver: bound to nouveau -- fix: modprobe vfio-pci"
        );
        assert_eq!(Finding::ok("kvm", "fine").line(), "OK    kvm: fine");
    }

    #[test]
    fn json_has_status_counts_and_findings() {
        let mut r = report(&[Status::Ok]);
        r.findings
            .push(Finding::warn("iommu=pt", "missing", "add iommu=pt").on("cmdline"));
        let v = r.to_json();
        assert_eq!(v["status"], "warn");
        assert_eq!(v["exit_code"], 1);
        assert_eq!((v["ok"].as_u64(), v["warn"].as_u64()), (Some(1), Some(1)));
        assert_eq!(v["fail"], 0);
        let w = &v["findings"][1];
        assert_eq!(w["check"], "iommu=pt");
        assert_eq!(w["subject"], "cmdline");
        assert_eq!(w["status"], "warn");
        assert_eq!(w["fix"], "add iommu=pt");
        assert!(v["findings"][0].get("fix").is_none());
    }

    fn run_on(host: &root::fake::FakeHost) -> Report {
        run(&CheckInput {
            root: host.root(),
            devices: vec!["0000:01:00.0".parse().unwrap()],
            memory: Some(16 << 30),
            limits: Some(ProcessLimits::default()),
        })
    }

    #[test]
    fn ready_host_is_all_ok_and_exits_0() {
        let host = root::fake::FakeHost::ready();
        let r = run_on(&host);
        let bad: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.status != Status::Ok)
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        assert_eq!(r.exit_code(), 0);
        assert!(r.findings.iter().any(|f| f.check == "bars"));
        assert!(r.findings.iter().any(|f| f.check == "dma entries"));
    }

    #[test]
    fn a_warning_exits_1_and_a_failure_exits_2() {
        let host = root::fake::FakeHost::ready();
        host.write("proc/cmdline", "intel_iommu=on");
        assert_eq!(run_on(&host).exit_code(), 1);
        host.remove("dev/kvm");
        let r = run_on(&host);
        assert_eq!(r.exit_code(), 2);
        assert_eq!(r.to_json()["exit_code"], 2);
        assert_eq!(r.to_json()["fail"], 1);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for s in ["", "G", "16X", "1.5G", "-1G"] {
            assert!(matches!(parse_size(s), Err(SizeError::Malformed(_))), "{s}");
        }
        assert!(matches!(parse_size("0"), Err(SizeError::OutOfRange(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::OutOfRange(_))
        ));
    }
}
