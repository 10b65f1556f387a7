//! What one testbed run does: which emulated devices L0 gives L1 and L1 passes
//! through to L2, L2's shape (vCPUs, memory, hugepages, extra command line),
//! the guest-side checks, host-side checks after L0 exits, and the time limit.
//! The built-in scenarios are the ones named on the `testbed run` command line.

use std::time::Duration;

use crate::checks::{self, Check};
use crate::device::Device;
use crate::error::{Error, Result};

/// How L2's RAM is backed in L1. Serialised as the spec's `memory.hugepages` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[serde(rename = "none")]
    None,
    /// 2 MiB pages, reserved at run time in L1.
    #[serde(rename = "2M")]
    Size2M,
    /// 1 GiB pages, reserved on L1's kernel command line.
    #[serde(rename = "1G")]
    Size1G,
}

impl HugePages {
    /// The page size in MiB, if any.
    pub fn page_mib(self) -> Option<u32> {
        match self {
            HugePages::None => None,
            HugePages::Size2M => Some(2),
            HugePages::Size1G => Some(1024),
        }
    }

    /// The value of the spec's `memory.hugepages` field.
    pub fn spec_value(self) -> &'static str {
        match self {
            HugePages::None => "none",
            HugePages::Size2M => "2M",
            HugePages::Size1G => "1G",
        }
    }
}

/// A check done on the host after L0 exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCheck {
    /// The first 32-bit word of the ivshmem backing file holds the value L2 wrote.
    IvshmemWord {
        /// The expected little-endian value.
        value: u32,
    },
    /// Every thread of the VMM, sampled by L1 while L2 ran, had a seccomp filter
    /// (`Seccomp: 2`), no_new_privs and no effective capability.
    VmmSandboxed,
    /// The VMM wrote at most this many log lines (`strait:` on its stderr).
    VmmLogLines {
        /// The most lines allowed.
        max: usize,
    },
}

impl HostCheck {
    /// The name reported with the check's result.
    pub fn name(self) -> &'static str {
        match self {
            HostCheck::IvshmemWord { .. } => "ivshmem-backing",
            HostCheck::VmmSandboxed => "vmm-sandboxed",
            HostCheck::VmmLogLines { .. } => "vmm-log-lines",
        }
    }
}

/// A static std-only program built from `integration/src/bin/` into L2's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestTool {
    /// `hostile`: abuses config space, BARs and MSI-X of every PCI function.
    Hostile,
}

impl GuestTool {
    /// Its name (crate and cache name).
    pub fn name(self) -> &'static str {
        match self {
            GuestTool::Hostile => "hostile",
        }
    }

    /// Where it sits in L2's image.
    pub fn image_path(self) -> &'static str {
        match self {
            GuestTool::Hostile => "bin/hostile",
        }
    }

    /// Its source text.
    pub fn source(self) -> &'static str {
        match self {
            GuestTool::Hostile => include_str!("bin/hostile.rs"),
        }
    }
}

/// Everything one testbed run needs to know about the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Scenario name (also names cache entries and work directories).
    pub name: String,
    /// Devices passed through, in order; each at most once.
    pub devices: Vec<Device>,
    /// L2 vCPUs.
    pub vcpus: u32,
    /// L2 RAM in MiB.
    pub memory_mib: u32,
    /// Backing of L2 RAM in L1.
    pub hugepages: HugePages,
    /// Appended to L2's kernel command line (e.g. `pci=nomsi`).
    pub cmdline_extra: String,
    /// Guest-side checks, run in order.
    pub checks: Vec<Check>,
    /// Host-side checks after L0 exits.
    pub host_checks: Vec<HostCheck>,
    /// Programs built into L2's image.
    pub tools: Vec<GuestTool>,
    /// Wall-clock limit for the whole L0 run.
    pub timeout: Duration,
}

/// The default L0 time limit: generous, since TCG on a loaded 2-core machine is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// Names of the built-in scenarios.
pub const BUILTIN: &[&str] = &[
    "nvme",
    "boot",
    "boot-1g",
    "passthrough",
    "nvme-intx",
    "edu",
    "hostile",
];

impl Scenario {
    /// A scenario with no devices or checks and the defaults of the baseline.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            devices: Vec::new(),
            vcpus: 1,
            memory_mib: 512,
            hugepages: HugePages::Size2M,
            cmdline_extra: String::new(),
            checks: Vec::new(),
            host_checks: Vec::new(),
            tools: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "nvme" => Ok(nvme()),
            "boot" => Ok(boot()),
            "boot-1g" => Ok(boot_1g()),
            "passthrough" => Ok(passthrough()),
            "nvme-intx" => Ok(nvme_intx()),
            "edu" => Ok(edu()),
            "hostile" => Ok(hostile()),
            _ => Err(Error::UnknownScenario {
                name: name.into(),
                known: BUILTIN.join(", "),
            }),
        }
    }

    /// The same scenario with its first check forced to FAIL, to see what a
    /// red run reports.
    pub fn with_broken_check(mut self) -> Self {
        if let Some(first) = self.checks.first_mut() {
            first.broken = true;
        }
        self.name.push_str("-broken");
        self
    }

    /// Names of the checks whose results a passing run must contain.
    pub fn expected_checks(&self) -> Vec<String> {
        let guest = self.checks.iter().map(|c| c.name.clone());
        guest
            .chain(self.host_checks.iter().map(|c| c.name().to_string()))
            .collect()
    }

    /// Rejects scenarios the testbed cannot run.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidScenario {
            name: self.name.clone(),
            reason,
        };
        if self.vcpus == 0 || self.memory_mib < 64 {
            return Err(invalid(format!(
                "needs >= 1 vCPU and >= 64 MiB, has {} and {}",
                self.vcpus, self.memory_mib
            )));
        }
        if let Some(page) = self.hugepages.page_mib() {
            if self.memory_mib % page != 0 {
                return Err(invalid(format!(
                    "{} MiB is not a whole number of {page} MiB pages",
                    self.memory_mib
                )));
            }
        }
        for (i, device) in self.devices.iter().enumerate() {
            if self.devices[..i].contains(device) {
                return Err(invalid(format!("device {} listed twice", device.name())));
            }
        }
        let names = self.expected_checks();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) || names[..i].contains(name) {
                return Err(invalid(format!(
                    "check name `{name}` is empty, has spaces or repeats"
                )));
            }
        }
        Ok(())
    }
}

/// The baseline: nvme passed through; the stock driver binds, a pattern
/// round-trips, MSI-X vectors fire.
pub fn nvme() -> Scenario {
    let mut s = Scenario::new("nvme");
    s.devices = vec![Device::Nvme];
    s.checks = vec![
        checks::nvme_bound(),
        checks::nvme_pattern(),
        checks::nvme_msix(),
    ];
    s
}

/// No devices: L2 boots and sees its vCPUs and memory.
pub fn boot() -> Scenario {
    let mut s = Scenario::new("boot");
    s.vcpus = 2;
    s.checks = vec![checks::cpus(s.vcpus), checks::memory(s.memory_mib)];
    s
}

/// No devices, RAM on 1 GiB pages (reserved on L1's kernel command line).
pub fn boot_1g() -> Scenario {
    let mut s = Scenario::new("boot-1g");
    s.memory_mib = 1024;
    s.hugepages = HugePages::Size1G;
    s.checks = vec![checks::cpus(s.vcpus), checks::memory(s.memory_mib)];
    s
}

/// nvme, bochs-display and ivshmem together; ivshmem's BAR above 4 GiB is
/// written by L2 and read back by the host from the backing file.
pub fn passthrough() -> Scenario {
    let mut s = Scenario::new("passthrough");
    s.devices = vec![Device::Nvme, Device::Bochs, Device::Ivshmem];
    s.vcpus = 2;
    s.checks = vec![
        checks::nvme_bound(),
        checks::nvme_pattern(),
        checks::nvme_msix(),
        checks::bochs_drm(),
        checks::ivshmem_bar(),
    ];
    s.host_checks = vec![HostCheck::IvshmemWord {
        value: checks::IVSHMEM_MAGIC,
    }];
    s.timeout = Duration::from_secs(420);
    s
}

/// nvme with `pci=nomsi`: the driver falls back to INTx through the IO-APIC.
pub fn nvme_intx() -> Scenario {
    let mut s = Scenario::new("nvme-intx");
    s.devices = vec![Device::Nvme];
    s.cmdline_extra = "pci=nomsi".into();
    s.checks = vec![
        checks::nvme_bound(),
        checks::nvme_pattern(),
        checks::nvme_intx(),
    ];
    s
}

/// QEMU's edu device: BAR0 registers answer through the passthrough.
pub fn edu() -> Scenario {
    let mut s = Scenario::new("edu");
    s.devices = vec![Device::Edu];
    s.checks = vec![checks::edu_mmio()];
    s
}

/// A hostile guest: `hostile` writes every config offset with every size on every
/// function (nvme, edu, their root ports, the host bridge), moves the BARs onto RAM and
/// onto each other and toggles the MSI-X function mask in a loop; then nvme must still
/// work, the VMM must have kept its log short, and L1 must have seen every VMM thread
/// sandboxed while the guest ran.
pub fn hostile() -> Scenario {
    let mut s = Scenario::new("hostile");
    s.devices = vec![Device::Nvme, Device::Edu];
    s.tools = vec![GuestTool::Hostile];
    s.checks = vec![
        checks::hostile(),
        checks::nvme_bound(),
        checks::nvme_pattern(),
    ];
    s.host_checks = vec![
        HostCheck::VmmSandboxed,
        HostCheck::VmmLogLines {
            max: HOSTILE_MAX_LOG_LINES,
        },
    ];
    s.timeout = Duration::from_secs(420);
    s
}

/// The most lines a VMM may log through the `hostile` run: its setup and teardown
/// lines (about 35 with two devices) plus a few rate-limited lines per kind of abuse.
pub const HOSTILE_MAX_LOG_LINES: usize = 150;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_resolves_and_validates() {
        for name in BUILTIN {
            let scenario = Scenario::builtin(name);
            assert!(matches!(&scenario, Ok(s) if s.name == *name && s.validate().is_ok()));
        }
    }

    #[test]
    fn unknown_scenario_is_rejected() {
        assert!(matches!(
            Scenario::builtin("gpu"),
            Err(Error::UnknownScenario { .. })
        ));
    }

    #[test]
    fn duplicate_device_is_invalid() {
        let mut s = nvme();
        s.devices.push(Device::Nvme);
        assert!(matches!(s.validate(), Err(Error::InvalidScenario { .. })));
    }

    #[test]
    fn memory_must_fill_whole_hugepages() {
        let mut s = boot_1g();
        s.memory_mib = 1536;
        assert!(matches!(s.validate(), Err(Error::InvalidScenario { .. })));
    }

    #[test]
    fn duplicate_check_name_is_invalid() {
        let mut s = nvme();
        s.checks.push(checks::nvme_bound());
        assert!(matches!(s.validate(), Err(Error::InvalidScenario { .. })));
    }

    #[test]
    fn broken_variant_marks_first_check_and_renames() {
        let s = nvme().with_broken_check();
        assert_eq!(s.name, "nvme-broken");
        assert!(s.checks[0].broken && !s.checks[1].broken);
    }

    #[test]
    fn expected_checks_include_host_checks() {
        let names = passthrough().expected_checks();
        assert_eq!(names.last().map(String::as_str), Some("ivshmem-backing"));
    }
}
