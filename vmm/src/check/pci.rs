//! PCI function rules: which functions to check, and whether each can be handed to
//! VFIO (Documentation/driver-api/vfio.rst, Documentation/ABI/testing/sysfs-bus-pci).
//!
//! Checked are every display controller (class 0x03), every processing accelerator
//! (class 0x12) and every function named on the command line. A named function is one
//! the user means to pass through, so what would stop `strait run` is a FAIL; a
//! discovered one may be the host's own display, so the same finding is a WARN.
//!
//! Per function: the driver (vfio-pci, with rebind commands and blacklist lines
//! otherwise), the IOMMU group and its viability (the rule of
//! [`vfio_glue::host::check_group_viable`]), the reset methods, and through
//! [`super::pci_hw`] the BARs, the PCIe link and the NUMA node.

use vfio_glue::error::{rebind_hint, Error as VfioError};
use vfio_glue::host::{check_group_viable, is_vfio_driver};
use vfio_glue::sysfs::Sysfs;
use vfio_glue::HostPciAddress;

use super::{pci_hw, Finding, HostRoot};

/// PCI base classes checked without being named (PCI Code and ID Assignment 1.12).
const DISPLAY_CLASS: u32 = 0x03;
const ACCELERATOR_CLASS: u32 = 0x12;

/// Host GPU drivers and the modules to blacklist so they leave the device alone.
const GPU_DRIVERS: [(&str, &[&str]); 4] = [
    ("nouveau", &["nouveau"]),
    ("nvidia", &["nvidia", "nvidia_drm", "nvidia_modeset"]),
    ("amdgpu", &["amdgpu"]),
    ("radeon", &["radeon"]),
];

/// A function to check and why it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: HostPciAddress,
    /// Named on the command line (problems FAIL) rather than found by class (WARN).
    pub named: bool,
}

impl Target {
    /// A problem: FAIL for a named function, WARN for a discovered one.
    pub fn problem(self, check: &'static str, detail: String, fix: String) -> Finding {
        let f = if self.named {
            Finding::fail(check, detail, fix)
        } else {
            Finding::warn(check, detail, fix)
        };
        f.on(self.addr)
    }
}

/// The PCI class code of `addr` (`0x030000`), `None` when unreadable.
fn class(sysfs: &Sysfs, addr: &HostPciAddress) -> Option<u32> {
    let text = sysfs.attr(addr, "class")?;
    u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// The named functions, then every display and accelerator function not named.
pub fn targets(sysfs: &Sysfs, named: &[HostPciAddress]) -> Vec<Target> {
    let mut list: Vec<Target> = Vec::new();
    for addr in named {
        if !list.iter().any(|t| t.addr == *addr) {
            list.push(Target {
                addr: *addr,
                named: true,
            });
        }
    }
    for addr in sysfs.pci_devices().unwrap_or_default() {
        let base = class(sysfs, &addr).map(|c| c >> 16);
        let wanted = matches!(base, Some(DISPLAY_CLASS | ACCELERATOR_CLASS));
        if wanted && !list.iter().any(|t| t.addr == addr) {
            list.push(Target { addr, named: false });
        }
    }
    list
}

/// Run the PCI rules; `memory` is guest RAM for the BAR placement rule.
pub fn check(root: &HostRoot, named: &[HostPciAddress], memory: Option<u64>) -> Vec<Finding> {
    let sysfs = root.sysfs();
    let list = targets(&sysfs, named);
    if list.is_empty() {
        return vec![Finding::ok(
            "pci devices",
            "no display, 3D or accelerator controller found; name functions to check \
             them, e.g. `strait check 0000:01:00.0`",
        )];
    }
    let host = pci_hw::HostLimits::read(root, memory);
    let mut findings = Vec::new();
    for t in list {
        findings.extend(check_function(&sysfs, &host, t));
    }
    findings
}

fn check_function(sysfs: &Sysfs, host: &pci_hw::HostLimits, t: Target) -> Vec<Finding> {
    if !sysfs.device_dir(&t.addr).exists() {
        return vec![t.problem(
            "device",
            "no such PCI function".into(),
            "`lspci -D` lists the host's functions".into(),
        )];
    }
    vec![
        identity(sysfs, t),
        driver(sysfs, t),
        group(sysfs, t),
        reset(sysfs, t),
        pci_hw::bars(sysfs, host, t),
        pci_hw::link(sysfs, t),
        pci_hw::numa(sysfs, t),
    ]
}

fn class_name(class: Option<u32>) -> String {
    match class.map(|c| c >> 8) {
        Some(0x0300) => "VGA controller".into(),
        Some(0x0302) => "3D controller".into(),
        Some(0x0380) => "display controller".into(),
        Some(0x1200) => "processing accelerator".into(),
        Some(_) => format!("class {:#08x}", class.unwrap_or_default()),
        None => "unknown class".into(),
    }
}

/// `vendor:device` as `lspci -nn` and `vfio-pci ids=` write it.
fn ids(sysfs: &Sysfs, addr: &HostPciAddress) -> Option<String> {
    let id = |name| {
        sysfs
            .attr(addr, name)
            .map(|v| v.trim_start_matches("0x").to_string())
    };
    Some(format!("{}:{}", id("vendor")?, id("device")?))
}

fn identity(sysfs: &Sysfs, t: Target) -> Finding {
    let ids = ids(sysfs, &t.addr).unwrap_or_else(|| "?:?".into());
    let why = if t.named { "named" } else { "found by class" };
    Finding::ok(
        "device",
        format!("{} [{ids}], {why}", class_name(class(sysfs, &t.addr))),
    )
    .on(t.addr)
}

/// Blacklist lines for a host GPU driver, with the `ids=` alternative for hosts that
/// need the driver for another GPU.
fn blacklist_hint(driver: &str, ids: Option<&str>) -> Option<String> {
    let (_, modules) = GPU_DRIVERS.iter().find(|(d, _)| *d == driver)?;
    let lines: Vec<String> = modules.iter().map(|m| format!("blacklist {m}")).collect();
    let mut hint = format!(
        "; to keep {driver} off it at boot, add to /etc/modprobe.d/vfio.conf: `{}` \
         and run `update-initramfs -u`",
        lines.join("` `")
    );
    if let Some(ids) = ids {
        hint.push_str(&format!(
            " (when the host needs {driver} for another GPU, use `options vfio-pci ids={ids}` \
             and `softdep {driver} pre: vfio-pci` instead)"
        ));
    }
    Some(hint)
}

fn driver(sysfs: &Sysfs, t: Target) -> Finding {
    const CHECK: &str = "driver";
    let name = t.addr.to_string();
    let bound = match sysfs.driver(&t.addr) {
        Ok(d) => d,
        Err(e) => return t.problem(CHECK, e.to_string(), "run as root".into()),
    };
    match bound {
        Some(d) if is_vfio_driver(&d) => Finding::ok(CHECK, d).on(t.addr),
        Some(d) => {
            let ids = ids(sysfs, &t.addr);
            let mut fix = format!("`modprobe vfio-pci`, then {}", rebind_hint(&name));
            fix.push_str(&blacklist_hint(&d, ids.as_deref()).unwrap_or_default());
            t.problem(CHECK, format!("bound to {d}, not vfio-pci"), fix)
        }
        None => t.problem(
            CHECK,
            "bound to no driver".into(),
            format!(
                "`modprobe vfio-pci; echo vfio-pci > /sys/bus/pci/devices/{name}/driver_override; \
                 echo {name} > /sys/bus/pci/drivers_probe`"
            ),
        ),
    }
}

fn group(sysfs: &Sysfs, t: Target) -> Finding {
    const CHECK: &str = "iommu group";
    let group = match sysfs.iommu_group(&t.addr) {
        Ok(Some(g)) => g,
        Ok(None) => {
            return t.problem(
                CHECK,
                "none: the IOMMU is off".into(),
                "enable the IOMMU (see iommu units): `intel_iommu=on` on Intel, AMD-Vi in \
                 the firmware on AMD"
                    .into(),
            )
        }
        Err(e) => return t.problem(CHECK, e.to_string(), "run as root".into()),
    };
    let members = sysfs.group_members(group).unwrap_or_default().join(", ");
    let offenders = match check_group_viable(sysfs, t.addr, group) {
        Ok(()) => Vec::new(),
        Err(VfioError::GroupNotViable { offenders, .. }) => offenders,
        Err(e) => return t.problem(CHECK, e.to_string(), "run as root".into()),
    };
    // The function's own driver is the driver rule's business.
    let others: Vec<_> = offenders
        .into_iter()
        .filter(|o| o.name != t.addr.to_string())
        .collect();
    if others.is_empty() {
        return Finding::ok(CHECK, format!("{group}: {members}; viable")).on(t.addr);
    }
    let names: Vec<String> = others
        .iter()
        .map(|o| format!("{} on {}", o.name, o.driver))
        .collect();
    let fixes: Vec<String> = others.iter().map(|o| rebind_hint(&o.name)).collect();
    let sibling = if others.iter().any(|o| o.sibling) {
        " (another function of the same device: without ACS the kernel groups them, \
         so it must leave its driver too)"
    } else {
        ""
    };
    t.problem(
        CHECK,
        format!(
            "{group}: {members}; not viable: {}{sibling}",
            names.join(", ")
        ),
        format!("bind every member to vfio-pci: {}", fixes.join("; ")),
    )
}

fn reset(sysfs: &Sysfs, t: Target) -> Finding {
    const CHECK: &str = "reset";
    let fix = "reboot the host between VMs, or use a device-specific reset (e.g. the \
               vendor-reset module for older AMD GPUs); Strait has no PCI hot reset yet";
    match sysfs.reset_methods(&t.addr) {
        Some(m) if !m.is_empty() => Finding::ok(CHECK, m.join(", ")).on(t.addr),
        Some(_) => Finding::warn(
            CHECK,
            "no reset method: the device may not come back after the VM ends",
            fix,
        )
        .on(t.addr),
        None => Finding::warn(
            CHECK,
            "no reset method published (reset_method is missing; kernel before 5.15?): \
             the device may not come back after the VM ends",
            fix,
        )
        .on(t.addr),
    }
}

#[cfg(test)]
mod tests {
    use super::super::root::fake::{FakeHost, Pci};
    use super::super::Status;
    use super::*;
    use crate::check::root::fake::assert_fix;

    const GPU: &str = "0000:01:00.0";
    const AUDIO: &str = "0000:01:00.1";

    fn a(s: &str) -> HostPciAddress {
        s.parse().unwrap()
    }

    /// A GPU on vfio-pci alone in group 1, with FLR.
    fn host_with_gpu(driver: Option<&str>) -> FakeHost {
        let host = FakeHost::empty();
        host.pci(Pci {
            name: GPU,
            class: "0x030000",
            driver,
            group: Some(1),
        });
        host.pci_attr(GPU, "vendor", "0x10de");
        host.pci_attr(GPU, "device", "0x2204");
        host.pci_attr(GPU, "reset_method", "flr bus\n");
        host
    }

    fn find(host: &FakeHost, named: &[&str], check: &str) -> Finding {
        let named: Vec<_> = named.iter().map(|n| a(n)).collect();
        super::check(&host.root(), &named, None)
            .into_iter()
            .find(|f| f.check == check)
            .unwrap()
    }

    #[test]
    fn targets_are_named_functions_then_gpus_and_accelerators() {
        let host = host_with_gpu(Some("vfio-pci"));
        for (name, class) in [
            ("0000:02:00.0", "0x120000"),
            ("0000:03:00.0", "0x010802"),
            ("0000:00:02.0", "0x038000"),
        ] {
            host.pci(Pci {
                name,
                class,
                driver: None,
                group: None,
            });
        }
        let t = targets(&host.root().sysfs(), &[a("0000:03:00.0"), a(GPU)]);
        let list: Vec<_> = t.iter().map(|t| (t.addr.to_string(), t.named)).collect();
        let expect = [
            ("0000:03:00.0", true),
            (GPU, true),
            ("0000:00:02.0", false),
            ("0000:02:00.0", false),
        ];
        assert_eq!(list, expect.map(|(n, b)| (n.to_string(), b)));
    }

    #[test]
    fn no_device_at_all_is_ok_with_a_hint() {
        let host = FakeHost::empty();
        let f = super::check(&host.root(), &[], None);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Ok);
        assert!(f[0].detail.contains("strait check 0000:01:00.0"));
    }

    #[test]
    fn named_missing_function_fails_with_lspci() {
        let host = FakeHost::empty();
        assert_fix(&find(&host, &[GPU], "device"), Status::Fail, "lspci -D");
    }

    #[test]
    fn gpu_ready_for_vfio_is_ok() {
        let host = host_with_gpu(Some("vfio-pci"));
        for check in ["device", "driver", "iommu group", "reset"] {
            let f = find(&host, &[GPU], check);
            assert_eq!(f.status, Status::Ok, "{f:?}");
            assert_eq!(f.subject.as_deref(), Some(GPU));
        }
        assert!(find(&host, &[], "device").detail.contains("[10de:2204]"));
    }

    #[test]
    fn gpu_on_nouveau_fails_when_named_with_rebind_and_blacklist() {
        let host = host_with_gpu(Some("nouveau"));
        let f = find(&host, &[GPU], "driver");
        assert_fix(&f, Status::Fail, "driver_override");
        assert_fix(&f, Status::Fail, "drivers_probe");
        assert_fix(&f, Status::Fail, "blacklist nouveau");
        assert_fix(&f, Status::Fail, "ids=10de:2204");
    }

    #[test]
    fn discovered_gpu_on_nvidia_warns_with_every_nvidia_module() {
        let host = host_with_gpu(Some("nvidia"));
        let f = find(&host, &[], "driver");
        assert_fix(&f, Status::Warn, "blacklist nvidia_drm");
    }

    #[test]
    fn other_driver_gets_rebind_without_blacklist() {
        let host = host_with_gpu(Some("i915"));
        let f = find(&host, &[GPU], "driver");
        assert_fix(&f, Status::Fail, "driver/unbind");
        assert!(!f.fix.unwrap().contains("blacklist"));
    }

    #[test]
    fn unbound_gpu_gets_driver_override() {
        let host = host_with_gpu(None);
        assert_fix(
            &find(&host, &[GPU], "driver"),
            Status::Fail,
            "echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override",
        );
    }

    #[test]
    fn group_with_audio_on_a_host_driver_is_not_viable() {
        let host = host_with_gpu(Some("vfio-pci"));
        host.pci(Pci {
            name: AUDIO,
            class: "0x040300",
            driver: Some("snd_hda_intel"),
            group: Some(1),
        });
        let f = find(&host, &[GPU], "iommu group");
        assert_fix(
            &f,
            Status::Fail,
            "echo 0000:01:00.1 > /sys/bus/pci/devices/0000:01:00.1/driver/unbind",
        );
        assert!(f.detail.contains("0000:01:00.1 on snd_hda_intel"));
        assert!(f.detail.contains("same device"));
    }

    #[test]
    fn group_with_bridge_on_pcieport_and_unbound_member_is_viable() {
        let host = host_with_gpu(Some("nouveau"));
        for (name, driver) in [("0000:00:01.0", Some("pcieport")), (AUDIO, None)] {
            host.pci(Pci {
                name,
                class: "0x060400",
                driver,
                group: Some(1),
            });
        }
        let f = find(&host, &[GPU], "iommu group");
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f
            .detail
            .contains("0000:00:01.0, 0000:01:00.0, 0000:01:00.1"));
    }

    #[test]
    fn no_group_fails_with_enable_the_iommu() {
        let host = FakeHost::empty();
        host.pci(Pci {
            name: GPU,
            class: "0x030200",
            driver: Some("vfio-pci"),
            group: None,
        });
        assert_fix(
            &find(&host, &[GPU], "iommu group"),
            Status::Fail,
            "intel_iommu=on",
        );
    }

    #[test]
    fn empty_or_missing_reset_method_warns() {
        let host = host_with_gpu(Some("vfio-pci"));
        host.pci_attr(GPU, "reset_method", "\n");
        let f = find(&host, &[GPU], "reset");
        assert_fix(&f, Status::Warn, "reboot the host");
        assert!(f
            .detail
            .starts_with("no reset method: the device may not come back"));
        std::fs::remove_file(host.root().sysfs().device_dir(&a(GPU)).join("reset_method")).unwrap();
        assert_fix(&find(&host, &[GPU], "reset"), Status::Warn, "vendor-reset");
    }
}
