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
    /// Strait only: `strait check` in L1 before the run reports the IOMMU on, every
    /// device's group viable, nvme with FLR and the others with no reset method.
    StraitCheck,
    /// Strait only: `strait plan` in L1 before the run places every BAR where L2 finds
    /// it and the 64-bit window where `strait run` logged it.
    StraitPlan,
}

impl HostCheck {
    /// The name reported with the check's result.
    pub fn name(self) -> &'static str {
        match self {
            HostCheck::IvshmemWord { .. } => "ivshmem-backing",
            HostCheck::StraitCheck => "strait-check",
            HostCheck::StraitPlan => "strait-plan",
        }
    }

    /// Whether the check is about Strait's own tools (not run for another VMM).
    pub fn strait_only(self) -> bool {
        matches!(self, HostCheck::StraitCheck | HostCheck::StraitPlan)
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
    /// Hide the hypervisor from L2's CPUID.
    pub hide_hypervisor: bool,
    /// Guest NUMA nodes, one vCPU each (Strait only; 0: none).
    pub numa_nodes: u32,
    /// L1 gets two NUMA nodes, the devices on node 1 behind an expander bus, and
    /// Strait's spec says `"numa": "auto"`.
    pub l0_numa: bool,
    /// Guest-side checks, run in order.
    pub checks: Vec<Check>,
    /// Host-side checks after L0 exits.
    pub host_checks: Vec<HostCheck>,
    /// Wall-clock limit for the whole L0 run.
    pub timeout: Duration,
}

/// The default L0 time limit: generous, since TCG on a loaded 2-core machine is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// Names of the built-in scenarios.
pub const BUILTIN: &[&str] = &[
    "nvme",
    "boot",
    "boot-hidden",
    "boot-1g",
    "passthrough",
    "nvme-intx",
    "edu",
    "gpu-slot",
    "numa",
    "numa-auto",
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
            hide_hypervisor: false,
            numa_nodes: 0,
            l0_numa: false,
            checks: Vec::new(),
            host_checks: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "nvme" => Ok(nvme()),
            "boot" => Ok(boot()),
            "boot-hidden" => Ok(boot_hidden()),
            "boot-1g" => Ok(boot_1g()),
            "passthrough" => Ok(passthrough()),
            "nvme-intx" => Ok(nvme_intx()),
            "edu" => Ok(edu()),
            "gpu-slot" => Ok(gpu_slot()),
            "numa" => Ok(numa()),
            "numa-auto" => Ok(numa_auto()),
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
        self.expected_checks_for(true)
    }

    /// The checks a run reports, leaving out Strait's own unless `strait` runs it.
    pub fn expected_checks_for(&self, strait: bool) -> Vec<String> {
        let guest = self.checks.iter().map(|c| c.name.clone());
        let host = self.host_checks_for(strait).map(|c| c.name().to_string());
        guest.chain(host).collect()
    }

    /// The host checks of a run by Strait (`strait`) or another VMM.
    pub fn host_checks_for(&self, strait: bool) -> impl Iterator<Item = HostCheck> + '_ {
        self.host_checks
            .iter()
            .copied()
            .filter(move |c| strait || !c.strait_only())
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
    s.checks = vec![
        checks::cpus(s.vcpus),
        checks::memory(s.memory_mib),
        checks::tsc_deadline(),
    ];
    s
}

/// `boot` with the hypervisor hidden from L2's CPUID: no `hypervisor` flag, no
/// "Hypervisor detected" line, and the clock source L2 falls back to in the detail.
pub fn boot_hidden() -> Scenario {
    let mut s = boot();
    s.name = "boot-hidden".into();
    s.hide_hypervisor = true;
    s.checks = vec![
        checks::cpus(s.vcpus),
        checks::memory(s.memory_mib),
        checks::no_hypervisor(),
    ];
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
    s.host_checks = vec![
        HostCheck::IvshmemWord {
            value: checks::IVSHMEM_MAGIC,
        },
        HostCheck::StraitCheck,
        HostCheck::StraitPlan,
    ];
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

/// A GPU-like two-function slot (display + HD audio, one IOMMU group) passed through
/// as one guest slot: bochs-drm binds the display, snd_hda_intel the audio function.
pub fn gpu_slot() -> Scenario {
    let mut s = Scenario::new("gpu-slot");
    s.devices = vec![Device::GpuSlot];
    s.checks = vec![checks::bochs_drm(), checks::hda_in_display_slot()];
    s
}

/// Two guest NUMA nodes (Strait only: vCPU `i` and half the RAM on node `i`, both on
/// L1's node 0): L2 finds them in its SRAT and SLIT.
pub fn numa() -> Scenario {
    let mut s = Scenario::new("numa");
    s.vcpus = 2;
    s.numa_nodes = 2;
    s.checks = vec![checks::numa_nodes(2, s.memory_mib)];
    s
}

/// L1 with two NUMA nodes and the nvme on node 1 (pxb-pcie), Strait with `"numa":
/// "auto"`: L2 has two nodes (CPU `i` on node `i`) and its nvme reports node 1.
pub fn numa_auto() -> Scenario {
    let mut s = Scenario::new("numa-auto");
    s.devices = vec![Device::Nvme];
    s.vcpus = 2;
    s.l0_numa = true;
    s.checks = vec![
        checks::numa_nodes(2, s.memory_mib),
        checks::nvme_bound(),
        checks::device_node(Device::Nvme, 1),
    ];
    s
}

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
        assert_eq!(names.last().map(String::as_str), Some("strait-plan"));
        let qemu = passthrough().expected_checks_for(false);
        assert_eq!(qemu.last().map(String::as_str), Some("ivshmem-backing"));
    }
}
