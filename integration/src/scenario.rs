//! What one testbed run does: which emulated devices L0 gives L1 and L1 passes
//! through to L2, L2's shape (vCPUs, memory, hugepages, extra command line),
//! the guest-side checks, host-side checks after L0 exits, and the time limit.
//! The built-in scenarios are the ones named on the `testbed run` command line.

use std::time::Duration;

use crate::checks::{self, Check};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::modules::ModuleRequest;
use crate::p2p;
use crate::rootdisk::RootDisk;
use crate::vmm::API_SOCKET;

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
    /// L2's console holds `marker` (printed after the checks, e.g. by acpid's script).
    L2Printed {
        /// The check's name.
        name: &'static str,
        /// The text to find.
        marker: &'static str,
    },
    /// The output of L1's actions (`l1-actions.log`) holds `text`.
    ActionPrinted {
        /// The check's name.
        name: &'static str,
        /// The text to find.
        text: &'static str,
    },
    /// Every device in the VMM's `GET /vm` answer (printed by an action) sits at a
    /// guest address where L2's PCI map shows a function with the same vendor:device.
    ApiDevicesMatchL2,
    /// L2's `TESTBED-TICK <uptime>` lines have a gap of at least `secs` somewhere:
    /// the guest's clock went on while its vCPUs were paused.
    TickGap {
        /// The least gap, in seconds.
        secs: u32,
    },
    /// L2 printed `marker` at least `count` times (once per boot).
    L2PrintedTimes {
        /// The check's name.
        name: &'static str,
        /// The text to count.
        marker: &'static str,
        /// How many times.
        count: usize,
    },
    /// The file L2 wrote on its virtio-blk root disk is in the image (debugfs).
    RootDiskFile(RootDisk),
    /// Every thread of the VMM, sampled by L1 while L2 ran, had a seccomp filter
    /// (`Seccomp: 2`), no_new_privs and no effective capability.
    VmmSandboxed,
    /// Every thread of the VMM, in the same sample, ran as this user (real, effective,
    /// saved and filesystem UID).
    VmmRanAs {
        /// The user id.
        uid: u32,
    },
    /// Strait only: its API socket is gone once it exited (L1 lists the chroot's /run
    /// after the VMM ends): the main thread's Landlock domain still lets it remove it.
    ApiSocketRemoved,
    /// The VMM wrote at most this many log lines (`strait:` on its stderr).
    VmmLogLines {
        /// The most lines allowed.
        max: usize,
    },
    /// L0's ivshmem backing file holds, at the `p2p` data buffer's offset, the known
    /// block (`mapped`) or `p2pread`'s fill with no DMA on it (not `mapped`).
    P2pBacking {
        /// The VMM mapped the BAR for peer-to-peer DMA.
        mapped: bool,
    },
    /// L1's console has a DMAR fault inside ivshmem's BAR2 (as L2 placed it) exactly
    /// when `expected`.
    DmarFault {
        /// A fault must be there (otherwise: none may be).
        expected: bool,
    },
    /// Strait only: in L1's sample of the VMM's /proc/PID/maps, every mapping of a VFIO
    /// device of at least 2 MiB (a BAR) starts at an address aligned to its size, up to
    /// 1 GiB, and the largest is at least `min_bytes` long (so the check saw the BAR).
    BarMapsAligned {
        /// The size of the largest BAR mapping expected.
        min_bytes: u64,
    },
    /// Strait only, L1 with NUMA nodes (CPU `i` on node `i`): in L1's samples taken while
    /// L2 ran, guest RAM bound to host node `i` has its pages there (/proc/PID/numa_maps:
    /// a `bind:i` mapping with pages on `Ni` only), for each of `nodes` nodes, and vCPU
    /// thread `i` may run on CPU `i` only (Cpus_allowed_list).
    NumaPlacement {
        /// Guest (and host) nodes.
        nodes: u32,
    },
    /// Strait only: its log (on the VMM's output, with L2's console) holds `text`.
    StraitLogged {
        /// The check's name.
        name: &'static str,
        /// The text to find.
        text: &'static str,
    },
    /// Strait only: its timeline (`strait: timeline: <phase>=<ms>ms`) marks `first`
    /// before `then`, both once at least (the first of each counts).
    TimelineOrder {
        /// The phase that must come first.
        first: &'static str,
        /// The phase that must come after it.
        then: &'static str,
    },
}

impl HostCheck {
    /// The name reported with the check's result.
    pub fn name(self) -> &'static str {
        match self {
            HostCheck::IvshmemWord { .. } => "ivshmem-backing",
            HostCheck::StraitCheck => "strait-check",
            HostCheck::StraitPlan => "strait-plan",
            HostCheck::L2Printed { name, .. }
            | HostCheck::ActionPrinted { name, .. }
            | HostCheck::L2PrintedTimes { name, .. }
            | HostCheck::StraitLogged { name, .. } => name,
            HostCheck::ApiDevicesMatchL2 => "api-devices-match-l2",
            HostCheck::TickGap { .. } => "pause-gap",
            HostCheck::RootDiskFile(_) => "root-disk-file",
            HostCheck::VmmSandboxed => "vmm-sandboxed",
            HostCheck::VmmRanAs { .. } => "vmm-ran-as-user",
            HostCheck::ApiSocketRemoved => "api-socket-removed",
            HostCheck::VmmLogLines { .. } => "vmm-log-lines",
            HostCheck::P2pBacking { .. } => "p2p-backing",
            HostCheck::DmarFault { expected: true } => "l1-dmar-fault",
            HostCheck::DmarFault { expected: false } => "l1-no-dmar-fault",
            HostCheck::BarMapsAligned { .. } => "bar-maps-aligned",
            HostCheck::NumaPlacement { .. } => "numa-placement",
            HostCheck::TimelineOrder { .. } => "timeline-order",
        }
    }

    /// Whether L1 judges it from samples of the VMM (threads, maps) taken while L2 runs.
    pub fn sampled_by_l1(self) -> bool {
        matches!(
            self,
            HostCheck::VmmSandboxed
                | HostCheck::VmmRanAs { .. }
                | HostCheck::NumaPlacement { .. }
                | HostCheck::BarMapsAligned { .. }
        )
    }

    /// Whether the check is about Strait itself (not run for another VMM).
    pub fn strait_only(self) -> bool {
        matches!(
            self,
            HostCheck::StraitCheck
                | HostCheck::StraitPlan
                | HostCheck::VmmSandboxed
                | HostCheck::VmmRanAs { .. }
                | HostCheck::ApiSocketRemoved
                | HostCheck::VmmLogLines { .. }
                | HostCheck::BarMapsAligned { .. }
                | HostCheck::NumaPlacement { .. }
                | HostCheck::StraitLogged { .. }
                | HostCheck::TimelineOrder { .. }
        )
    }
}

/// A static std-only program built from `integration/src/bin/` into L2's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestTool {
    /// `hostile`: abuses config space, BARs and MSI-X of every PCI function.
    Hostile,
    /// `p2pread`: drives the nvme from userspace, reading by peer-to-peer DMA into
    /// ivshmem's BAR.
    P2pRead,
}

impl GuestTool {
    /// Its name (crate and cache name).
    pub fn name(self) -> &'static str {
        match self {
            GuestTool::Hostile => "hostile",
            GuestTool::P2pRead => "p2pread",
        }
    }

    /// Where it sits in L2's image.
    pub fn image_path(self) -> &'static str {
        match self {
            GuestTool::Hostile => "bin/hostile",
            GuestTool::P2pRead => "bin/p2pread",
        }
    }

    /// Its source text.
    pub fn source(self) -> &'static str {
        match self {
            GuestTool::Hostile => include_str!("bin/hostile.rs"),
            GuestTool::P2pRead => include_str!("bin/p2pread.rs"),
        }
    }
}

/// Something L1 does while the VMM runs, once L2's console shows `after`: a shell
/// command run in L1 (in the background; its output goes to `l1-actions.log`). It may
/// use `$vmm` (the VMM's pid), `$R` (the chroot) and `$VMM_BIN` (the VMM binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1Action {
    /// Marker in L2's console that starts the action.
    pub after: String,
    /// The shell command.
    pub run: String,
}

/// How L1 starts Strait when not directly as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// A root shell opens /dev/kvm, /dev/vfio/vfio and each device's /dev/vfio/N and
    /// starts Strait with the fds and `--user` ([`crate::vmm::LAUNCHER_UID`]).
    RootWithUser,
    /// The same shell, but Strait starts as that user (setpriv), never root: the fds
    /// and the memlock limit are all the launcher gives it.
    Unprivileged,
}

/// Strait-only settings of a scenario's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StraitSettings {
    /// Start Strait through a launcher that passes it pre-opened fds.
    pub launcher: Option<Launcher>,
    /// `lifecycle.shutdown_timeout_s`.
    pub shutdown_timeout_s: Option<u32>,
    /// `lifecycle.on_reboot`.
    pub on_reboot: Option<&'static str>,
    /// Give the VM a control API socket ([`API_SOCKET`]).
    pub api_socket: bool,
    /// `net[].vhost` false: frames on Strait's I/O thread instead of vhost-net.
    pub net_userspace: bool,
    /// No per-user cache for the VMM: Strait finds no decompressed kernel (the testbed
    /// reads one slowly, over 9p) and the guest decompresses its own.
    pub no_kernel_cache: bool,
    /// `p2p` (`"off"`, `"on"`...); `None`: the default (on with several devices).
    pub p2p: Option<&'static str>,
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
    /// Programs built into L2's image.
    pub tools: Vec<GuestTool>,
    /// Wall-clock limit for the whole L0 run.
    pub timeout: Duration,
    /// L2 modules besides the devices' (e.g. `evdev` and `button` for acpid).
    pub l2_modules: Vec<ModuleRequest>,
    /// Shell L2's /init runs after the checks and `TESTBED-DONE`; by default it powers
    /// off at once. It may leave the power-off to acpid, or never power off.
    pub l2_finish: String,
    /// What L1 does while the VMM runs.
    pub l1_actions: Vec<L1Action>,
    /// Strait's spec settings.
    pub strait: StraitSettings,
    /// The VMM's expected exit status.
    pub expected_exit: i32,
    /// An ext4 root filesystem on virtio-blk that L2 switches to (`/dev/vda`).
    pub root_disk: Option<RootDisk>,
    /// L2 gets virtio-net on a tap that L1 creates ([`crate::net`]).
    pub net: bool,
    /// L0's nvme image holds [`p2p::known_block`] at [`p2p::DISK_OFFSET`].
    pub nvme_known_block: bool,
    /// A file in the work dir that L0 gives L1 as a disk (`l0::L1_DISK_DEVICE`); with
    /// the root disk's image, L2's root disk is that block device opened with O_DIRECT.
    pub l1_disk: Option<&'static str>,
}

/// What L2's /init does after its checks unless a scenario says otherwise.
pub const DEFAULT_L2_FINISH: &str = "poweroff -f";

/// The default L0 time limit: generous, since TCG on a loaded 2-core machine is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

/// Names of the built-in scenarios.
pub const BUILTIN: &[&str] = &[
    "nvme",
    "dma-background",
    "boot",
    "boot-hidden",
    "boot-1g",
    "passthrough",
    "nvme-intx",
    "edu",
    "graceful-shutdown",
    "graceful-shutdown-timeout",
    "reboot",
    "hot-reset",
    "api",
    "root-disk",
    "root-disk-direct",
    "hostile",
    "net",
    "net-userspace",
    "gpu-slot",
    "numa",
    "numa-auto",
    "preopened",
    "unprivileged",
    "numa-split",
    "p2p",
    "p2p-off",
];

/// The modules L2 needs for virtio-net.
const NET_MODULES: &[ModuleRequest] = &[
    ModuleRequest::required(&["virtio_pci"]),
    ModuleRequest::required(&["virtio_net"]),
];

/// The modules L2 needs to boot from a virtio-blk ext4 root disk.
const ROOT_DISK_MODULES: &[ModuleRequest] = &[
    ModuleRequest::required(&["virtio_pci"]),
    ModuleRequest::required(&["virtio_blk"]),
    ModuleRequest::required(&["ext4"]),
];

impl Scenario {
    /// Whether L1 samples the VMM while L2 runs for one of the host checks.
    pub fn samples_vmm(&self) -> bool {
        self.host_checks.iter().any(|c| c.sampled_by_l1())
    }

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
            tools: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            l2_modules: Vec::new(),
            l2_finish: DEFAULT_L2_FINISH.into(),
            l1_actions: Vec::new(),
            strait: StraitSettings::default(),
            expected_exit: 0,
            root_disk: None,
            net: false,
            nvme_known_block: false,
            l1_disk: None,
        }
    }

    /// The stock modules L2 loads: its devices', the root disk's, then the scenario's
    /// own (`l2_modules`).
    pub fn all_l2_modules(&self) -> Vec<ModuleRequest> {
        let mut m: Vec<ModuleRequest> = self
            .devices
            .iter()
            .flat_map(|d| d.l2_modules().iter().copied())
            .collect();
        if self.root_disk.is_some() {
            m.extend_from_slice(ROOT_DISK_MODULES);
        }
        if self.net {
            m.extend_from_slice(NET_MODULES);
        }
        m.extend(self.l2_modules.iter().copied());
        m
    }

    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "nvme" => Ok(nvme()),
            "dma-background" => Ok(dma_background()),
            "boot" => Ok(boot()),
            "boot-hidden" => Ok(boot_hidden()),
            "boot-1g" => Ok(boot_1g()),
            "passthrough" => Ok(passthrough()),
            "nvme-intx" => Ok(nvme_intx()),
            "edu" => Ok(edu()),
            "graceful-shutdown" => Ok(graceful_shutdown()),
            "graceful-shutdown-timeout" => Ok(graceful_shutdown_timeout()),
            "reboot" => Ok(reboot()),
            "hot-reset" => Ok(hot_reset()),
            "api" => Ok(api()),
            "root-disk" => Ok(root_disk()),
            "root-disk-direct" => Ok(root_disk_direct()),
            "hostile" => Ok(hostile()),
            "net" => Ok(net()),
            "net-userspace" => Ok(net_userspace()),
            "gpu-slot" => Ok(gpu_slot()),
            "numa" => Ok(numa()),
            "numa-auto" => Ok(numa_auto()),
            "preopened" => Ok(preopened(Launcher::RootWithUser)),
            "unprivileged" => Ok(preopened(Launcher::Unprivileged)),
            "numa-split" => Ok(numa_split()),
            "p2p" => Ok(p2p()),
            "p2p-off" => Ok(p2p_off()),
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

/// Strait starts the vCPUs before guest RAM is DMA-mapped (in the background).
pub const VCPUS_BEFORE_DMA: HostCheck = HostCheck::TimelineOrder {
    first: "vcpus_started",
    then: "dma_mapped",
};

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

/// nvme with 3 GiB of RAM: Strait starts the vCPUs before guest RAM is DMA-mapped (in
/// the background), holds the nvme's bus mastering until it is, and the nvme still
/// reaches only mapped RAM (the pattern round-trips). Without the kernel cache, whose
/// lookup over 9p takes seconds on the testbed and would race the mapping.
pub fn dma_background() -> Scenario {
    let mut s = Scenario::new("dma-background");
    s.devices = vec![Device::Nvme];
    s.vcpus = 2;
    s.memory_mib = 3072;
    s.checks = vec![checks::nvme_bound(), checks::nvme_pattern()];
    s.host_checks = vec![VCPUS_BEFORE_DMA];
    s.strait.no_kernel_cache = true;
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
        checks::mp_table(),
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
        HostCheck::BarMapsAligned { min_bytes: 8 << 30 },
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

/// The stock modules acpid needs to see the ACPI power button: `button` turns the
/// button's notify into a KEY_POWER input event, `evdev` gives acpid /dev/input/event*.
fn acpid_modules() -> Vec<ModuleRequest> {
    vec![
        ModuleRequest::required(&["evdev"]),
        ModuleRequest::required(&["button"]),
    ]
}

/// L2's finish: busybox acpid with a power-button script (a marker on the console, then
/// power-off), then `ready` once acpid runs, then `then`. acpid logs to
/// /var/log/acpid.log by default and dies without that directory.
fn acpid_finish(ready: &str, then: &str) -> String {
    format!(
        r#"mkdir -p /etc/acpi/PWRF /var/log /var/run
printf '#!/bin/sh\necho "{BUTTON_PRESSED}" > /dev/console\nsync\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /var/log/acpid.log
sleep 1
pidof acpid >/dev/null || {{ echo "testbed: acpid is not running:"; cat /var/log/acpid.log; }}
echo {ready}
{then}"#
    )
}

/// The L2 marker after which L1 sends SIGTERM to the VMM.
pub const BUTTON_READY: &str = "TESTBED-BUTTON-READY";
/// What acpid's power-button script prints before powering off.
pub const BUTTON_PRESSED: &str = "TESTBED-POWER-BUTTON pressed: shutting down";

/// The VMM's exit status when the guest powered off after the button (Strait's README).
pub const EXIT_GUEST_SHUT_DOWN: i32 = 0;
/// The VMM's exit status when the guest ignored the button past the timeout.
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 9;

/// SIGTERM to Strait presses the ACPI power button (GED -> PNP0C0C); L2 runs busybox
/// acpid with a power-button script that prints a marker and powers off; Strait exits
/// with the "guest shut down" status.
pub fn graceful_shutdown() -> Scenario {
    let mut s = Scenario::new("graceful-shutdown");
    s.l2_modules = acpid_modules();
    s.checks = vec![checks::power_button_device()];
    s.l2_finish = acpid_finish(BUTTON_READY, "while :; do sleep 60; done");
    s.l1_actions = vec![L1Action {
        after: BUTTON_READY.into(),
        run: "kill -TERM $vmm".into(),
    }];
    s.host_checks = vec![HostCheck::L2Printed {
        name: "acpid-shutdown",
        marker: BUTTON_PRESSED,
    }];
    s.expected_exit = EXIT_GUEST_SHUT_DOWN;
    s
}

/// The same, but L2 ignores the button: Strait stops it after a 3 s timeout and exits
/// with the "stopped after the timeout" status.
pub fn graceful_shutdown_timeout() -> Scenario {
    let mut s = Scenario::new("graceful-shutdown-timeout");
    s.checks = vec![checks::cpus(s.vcpus)];
    s.l2_finish = format!("echo {BUTTON_READY}\nwhile :; do sleep 60; done");
    s.l1_actions = vec![L1Action {
        after: BUTTON_READY.into(),
        run: "kill -TERM $vmm".into(),
    }];
    s.strait.shutdown_timeout_s = Some(3);
    s.expected_exit = EXIT_SHUTDOWN_TIMEOUT;
    s
}

/// Marker L2 prints at every boot (before its checks).
pub const BOOT_MARKER: &str = "TESTBED-INIT";
/// Marker of the second boot, which found the first boot's block on the nvme.
pub const SECOND_BOOT: &str = "TESTBED-SECOND-BOOT";

/// nvme passed through; the guest reboots once (`reboot -f`, through the ACPI reset
/// register); Strait resets the vCPUs, devices and the nvme function and boots L2
/// again in the same process; the nvme checks pass again; the second boot powers off.
pub fn reboot() -> Scenario {
    let mut s = nvme();
    s.name = "reboot".into();
    // The second boot is told from the first by a block the first wrote to the nvme
    // namespace (past the pattern check's 1 MiB): it also proves the data survived.
    s.l2_finish = format!(
        r#"m=$(dd if=/dev/nvme0n1 bs=4k skip=1024 count=1 iflag=direct 2>/dev/null | head -c 16)
if [ "$m" = TESTBED-REBOOTED ]; then echo {SECOND_BOOT}; poweroff -f; fi
printf TESTBED-REBOOTED | dd of=/dev/nvme0n1 bs=4k seek=1024 count=1 conv=sync oflag=direct 2>/dev/null
sync
echo TESTBED-REBOOTING
reboot -f"#
    );
    s.host_checks = vec![
        HostCheck::L2PrintedTimes {
            name: "booted-twice",
            marker: BOOT_MARKER,
            count: 2,
        },
        HostCheck::L2Printed {
            name: "second-boot-saw-first",
            marker: SECOND_BOOT,
        },
        HostCheck::L2PrintedTimes {
            name: "nvme-pattern-twice",
            marker: "TESTBED-CHECK nvme-pattern PASS",
            count: 2,
        },
    ];
    s.strait.on_reboot = Some("restart");
    s
}

/// What Strait logs for each VFIO hot reset (vfio-glue's `pci` module).
pub const HOT_RESET_LOG: &str = "bus reset through VFIO hot reset";

/// The `reboot` guest plus a display that resets only by a bus reset
/// ([`Device::DisplayPair`]: bochs-display beside edu in one slot behind an L0 root
/// port, one IOMMU group, no FLR). Strait holds the group, so it resets the display with
/// VFIO_DEVICE_PCI_HOT_RESET when it takes it, at each guest-set secondary bus reset
/// (L2 resets the display through sysfs in each boot), at the reboot in place and at
/// release: five hot resets, and the display keeps working across them.
pub fn hot_reset() -> Scenario {
    let mut s = reboot();
    s.name = "hot-reset".into();
    s.devices.push(Device::DisplayPair);
    s.checks.push(checks::bochs_drm());
    s.checks.push(checks::guest_bus_reset());
    s.host_checks.push(HostCheck::L2PrintedTimes {
        name: "vfio-hot-resets",
        marker: HOT_RESET_LOG,
        count: 5,
    });
    s.host_checks.push(HostCheck::L2PrintedTimes {
        name: "guest-bus-reset-twice",
        marker: "TESTBED-CHECK guest-bus-reset PASS",
        count: 2,
    });
    s.timeout = Duration::from_secs(420);
    s
}

/// The L2 marker after which L1 drives the control API.
pub const API_READY: &str = "TESTBED-API-READY";
/// Seconds L1 keeps the guest paused.
pub const PAUSE_SECS: u32 = 4;

/// nvme passed through and a control API socket: once L2 is up, L1 runs `strait ctl
/// info` (the devices' guest addresses must match L2's PCI map), pauses the guest for
/// 4 s and resumes it (a gap in L2's clock), sends a burst of malformed requests, checks
/// the VM still answers, then asks for a shutdown through the API.
pub fn api() -> Scenario {
    let mut s = Scenario::new("api");
    s.devices = vec![Device::Nvme];
    s.l2_modules = acpid_modules();
    s.checks = vec![checks::nvme_bound(), checks::power_button_device()];
    s.strait.api_socket = true;
    s.l2_finish = acpid_finish(
        API_READY,
        r#"while :; do read up _ < /proc/uptime; echo "TESTBED-TICK $up"; usleep 200000; done"#,
    );
    let ctl = format!("chroot $R $VMM_BIN ctl {API_SOCKET}");
    s.l1_actions = vec![L1Action {
        after: API_READY.into(),
        run: format!(
            r#"sleep 2
echo "== info"; {ctl} info; echo "ctl-info-rc=$?"
echo "== pause"; {ctl} pause; echo "ctl-pause-rc=$?"
sleep {PAUSE_SECS}
echo "== resume"; {ctl} resume; echo "ctl-resume-rc=$?"
sleep 2
echo "== malformed"
chroot $R python3 - {API_SOCKET} <<'PY'
import socket, sys, threading, time
path = sys.argv[1]
def send(data, hold=0.0):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(10)
    try:
        c.connect(path)
        c.sendall(data)
        time.sleep(hold)
        c.recv(4096)
    except OSError:
        pass
    finally:
        c.close()
bad = [b"GARBAGE\r\n\r\n", b"GET /vm HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
       b"A" * 70000, b"PUT /vm/shutdown HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{\"x\":",
       b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 3\r\n\r\n}}}}}}", b"\x00\xff" * 100,
       b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", b"DELETE /vm HTTP/1.1\r\n\r\n",
       b"GET /vm HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n"]
threads = [threading.Thread(target=send, args=(b"GET /vm", 15.0)) for _ in range(5)]
threads += [threading.Thread(target=send, args=(b"GET /ping HTTP/1.1\r\n\r\n",)) for _ in range(40)]
threads += [threading.Thread(target=send, args=(d,)) for d in bad * 3]
for t in threads: t.start()
for t in threads: t.join()
print("burst sent", len(threads), "connections")
PY
echo "== ping"; {ctl} ping && echo "api-alive-after-burst"
echo "== counters"; {ctl} counters; echo "ctl-counters-rc=$?"
echo "== shutdown"; {ctl} shutdown; echo "ctl-shutdown-rc=$?""#
        ),
    }];
    s.host_checks = vec![
        HostCheck::ActionPrinted {
            name: "ctl-info",
            text: "ctl-info-rc=0",
        },
        HostCheck::ApiDevicesMatchL2,
        HostCheck::ActionPrinted {
            name: "ctl-pause-resume",
            text: "ctl-resume-rc=0",
        },
        HostCheck::TickGap {
            secs: PAUSE_SECS - 1,
        },
        HostCheck::ActionPrinted {
            name: "alive-after-malformed",
            text: "api-alive-after-burst",
        },
        HostCheck::L2Printed {
            name: "api-shutdown",
            marker: BUTTON_PRESSED,
        },
        HostCheck::ApiSocketRemoved,
    ];
    s
}

/// L2 boots from an ext4 root filesystem on virtio-blk (switch_root from the
/// initramfs), with the nvme still passed through; the file it writes there is read
/// back by the host from the image.
pub fn root_disk() -> Scenario {
    let disk = RootDisk {
        size_mib: 64,
        file: "/strait-was-here",
        content: "written by L2 on its virtio-blk root",
    };
    let mut s = Scenario::new("root-disk");
    s.devices = vec![Device::Nvme];
    s.checks = vec![
        checks::nvme_bound(),
        checks::nvme_pattern(),
        checks::root_disk_mount(),
    ];
    s.host_checks = vec![HostCheck::RootDiskFile(disk)];
    s.root_disk = Some(disk);
    s
}

/// `root-disk` with the image on a real block device in L1: L0 gives L1 the image as a
/// virtio-blk disk and the VMM opens L1's /dev/vda with O_DIRECT (Strait `"direct":
/// true`, QEMU `cache=none,aio=io_uring`), which L1's tmpfs would refuse. L1's sample of
/// the VMM's threads, the disk's workers among them, must show each sandboxed.
pub fn root_disk_direct() -> Scenario {
    let mut s = root_disk();
    s.name = "root-disk-direct".into();
    s.l1_disk = Some(crate::rootdisk::ROOT_IMAGE);
    s.host_checks.push(HostCheck::VmmSandboxed);
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
        HostCheck::StraitLogged {
            name: "landlock-in-force",
            text: "(checked: opening / is refused)",
        },
    ];
    s.timeout = Duration::from_secs(420);
    s
}

/// nvme through a launcher that opens /dev/kvm, /dev/vfio/vfio and /dev/vfio/N itself
/// and passes the fds (`preopened`: Strait started as root with `--user`;
/// `unprivileged`: Strait never root): the pattern round-trips, every thread is
/// sandboxed, and Strait logged that it used the launcher's fds. QEMU runs the plain
/// `nvme` setup.
pub fn preopened(launcher: Launcher) -> Scenario {
    let mut s = nvme();
    s.name = match launcher {
        Launcher::RootWithUser => "preopened",
        Launcher::Unprivileged => "unprivileged",
    }
    .into();
    s.strait.launcher = Some(launcher);
    s.host_checks = vec![
        HostCheck::VmmSandboxed,
        HostCheck::VmmRanAs {
            uid: crate::vmm::LAUNCHER_UID,
        },
        HostCheck::StraitLogged {
            name: "strait-used-launcher-fds",
            text: "VFIO: container and 1 group(s) from the launcher",
        },
    ];
    s
}

/// The most lines a VMM may log through the `hostile` run: its setup and teardown
/// lines (about 35 with two devices) plus a few rate-limited lines per kind of abuse.
pub const HOSTILE_MAX_LOG_LINES: usize = 150;

/// L2 on virtio-net over a tap in L1: it takes an address, reaches L1, and 64 MiB go
/// each way with matching md5 sums (busybox httpd and wget on both sides); the check
/// details carry the throughput. Strait must say it used vhost-net.
pub fn net() -> Scenario {
    let mut s = Scenario::new("net");
    s.net = true;
    s.checks = vec![
        checks::net_link(),
        checks::net_download(),
        checks::net_upload(),
    ];
    s.l1_actions = vec![L1Action {
        after: crate::net::UPLOAD_READY.into(),
        run: crate::net::upload_action(),
    }];
    s.host_checks = vec![HostCheck::StraitLogged {
        name: "strait-vhost-net",
        text: crate::net::STRAIT_VHOST_LOG,
    }];
    s.timeout = Duration::from_secs(600);
    s
}

/// The same on Strait's userspace path (`"vhost": false`): the frames cross the
/// `strait-io` thread.
pub fn net_userspace() -> Scenario {
    let mut s = net();
    s.name = "net-userspace".into();
    s.strait.net_userspace = true;
    s.host_checks = vec![HostCheck::StraitLogged {
        name: "strait-userspace-net",
        text: crate::net::STRAIT_USERSPACE_LOG,
    }];
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
    s.host_checks = vec![HostCheck::NumaPlacement { nodes: 2 }];
    s
}

/// As `numa-auto`, with an edu device on L1's node 0 (behind a second expander) beside
/// the nvme on node 1: Strait gives each guest node a host bridge of its own, and L2
/// reads node 0 for the edu and node 1 for the nvme; both devices work.
pub fn numa_split() -> Scenario {
    let mut s = numa_auto();
    s.name = "numa-split".into();
    s.devices = vec![Device::Nvme, Device::Edu];
    s.checks = vec![
        checks::numa_nodes(2, s.memory_mib),
        checks::nvme_bound(),
        checks::edu_mmio(),
        checks::device_node(Device::Nvme, 1),
        checks::device_node(Device::Edu, 0),
    ];
    s
}

/// Peer-to-peer DMA between passed-through devices: `p2pread` in L2 drives the nvme from
/// userspace (driver unbound, BAR0 mapped through sysfs, bus mastering on) with its
/// queues and data buffer in ivshmem's BAR2, and reads the known block L0's image holds;
/// it must arrive in the BAR (checked in L2) and in L0's backing file. Strait's `p2p`
/// is left at its default, on with two devices.
pub fn p2p() -> Scenario {
    let mut s = Scenario::new("p2p");
    s.devices = vec![Device::Nvme, Device::Ivshmem];
    s.nvme_known_block = true;
    s.tools = vec![GuestTool::P2pRead];
    s.checks = vec![checks::nvme_bound(), p2p::read_check(true)];
    s.host_checks = vec![
        HostCheck::P2pBacking { mapped: true },
        HostCheck::DmarFault { expected: false },
        HostCheck::StraitLogged {
            name: "strait-p2p-on",
            text: "peer-to-peer DMA mappings for 2 of 2 functions",
        },
    ];
    s.timeout = Duration::from_secs(420);
    s
}

/// The same with Strait's `"p2p": "off"`: the controller's DMA into ivshmem's BAR must
/// be blocked (L1's IOMMU reports a DMAR fault inside the BAR) and the backing file must
/// keep `p2pread`'s fill. It proves `p2p` measures the mapping. Strait only: QEMU maps
/// every mmapped BAR into the IOMMU and has no switch to stop it.
pub fn p2p_off() -> Scenario {
    let mut s = p2p();
    s.name = "p2p-off".into();
    s.strait.p2p = Some("off");
    s.checks = vec![checks::nvme_bound(), p2p::read_check(false)];
    s.host_checks = vec![
        HostCheck::P2pBacking { mapped: false },
        HostCheck::DmarFault { expected: true },
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
        assert_eq!(names.last().map(String::as_str), Some("bar-maps-aligned"));
        assert!(names.iter().any(|n| n == "strait-plan"));
        let qemu = passthrough().expected_checks_for(false);
        assert_eq!(qemu.last().map(String::as_str), Some("ivshmem-backing"));
    }
}
