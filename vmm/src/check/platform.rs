//! Host platform rules: KVM, the IOMMU and the VFIO modules.
//!
//! - KVM: /dev/kvm opens, the hardware module (kvm_intel, kvm_amd) is loaded.
//! - IOMMU: the firmware announces it (ACPI DMAR for Intel VT-d, IVRS for AMD-Vi),
//!   the kernel runs it (`/sys/class/iommu` has units), the kernel command line does
//!   not turn it off and has `iommu=pt` (Documentation/admin-guide/kernel-parameters).
//! - Interrupt remapping: vfio_iommu_type1 refuses a device whose MSIs are not
//!   isolated unless `allow_unsafe_interrupts` is set (drivers/vfio/vfio_iommu_type1.c).
//!   Intel units publish it as ECAP bit 3 (IR, VT-d spec 11.4.3); AMD-Vi remaps
//!   interrupts on every IVRS system Linux supports, so it is assumed there.
//! - VFIO: vfio, vfio_pci and vfio_iommu_type1 are loaded.

use std::io;

use super::{Finding, HostRoot};

/// Whose IOMMU the host has, from the ACPI tables or else the CPU vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Unknown,
}

const DMAR: &str = "sys/firmware/acpi/tables/DMAR";
const IVRS: &str = "sys/firmware/acpi/tables/IVRS";
const IOMMU_CLASS: &str = "sys/class/iommu";
const ALLOW_UNSAFE: &str = "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts";
/// Where a kernel parameter goes on Debian-like hosts; said once in every fix.
const BOOTLOADER: &str = "GRUB_CMDLINE_LINUX in /etc/default/grub, then `update-grub` and reboot";
/// ECAP.IR: the unit supports interrupt remapping (VT-d spec, Extended Capability).
const ECAP_IR: u64 = 1 << 3;

impl Vendor {
    pub fn detect(root: &HostRoot) -> Vendor {
        if root.exists(DMAR) {
            return Vendor::Intel;
        }
        if root.exists(IVRS) {
            return Vendor::Amd;
        }
        let cpuinfo = root.read("proc/cpuinfo").unwrap_or_default();
        let vendor = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("vendor_id"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim());
        match vendor {
            Some("GenuineIntel") => Vendor::Intel,
            Some("AuthenticAMD") => Vendor::Amd,
            _ => Vendor::Unknown,
        }
    }

    fn kvm_module(self) -> &'static str {
        match self {
            Vendor::Amd => "kvm_amd",
            Vendor::Intel | Vendor::Unknown => "kvm_intel",
        }
    }
}

/// Run the platform rules.
pub fn check(root: &HostRoot) -> Vec<Finding> {
    let vendor = Vendor::detect(root);
    let cmdline = root.read("proc/cmdline").unwrap_or_default();
    let units = root.list(IOMMU_CLASS);
    vec![
        kvm_device(root.open_rw("dev/kvm"), vendor),
        kvm_module(root, vendor),
        iommu_tables(root, vendor),
        iommu_units(&units, vendor, &cmdline),
        kernel_cmdline(vendor, &cmdline, !units.is_empty()),
        passthrough_mode(&cmdline),
        interrupt_remapping(root, &units, &cmdline),
        vfio_modules(root),
    ]
}

fn kvm_device(open: io::Result<()>, vendor: Vendor) -> Finding {
    const CHECK: &str = "kvm device";
    let module = vendor.kvm_module();
    match open {
        Ok(()) => Finding::ok(CHECK, "/dev/kvm opens"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Finding::fail(
            CHECK,
            "/dev/kvm is missing: KVM is not available",
            format!(
                "enable virtualization (VT-x / AMD-V) in the firmware setup, then `modprobe {module}`"
            ),
        ),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Finding::fail(
            CHECK,
            "/dev/kvm exists but this user may not open it",
            "run as root, or add the user to group kvm: `usermod -aG kvm $USER` and log in again",
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("/dev/kvm does not open: {e}"),
            "see `dmesg | grep -i kvm` for why KVM refuses",
        ),
    }
}

fn kvm_module(root: &HostRoot, vendor: Vendor) -> Finding {
    const CHECK: &str = "kvm module";
    if let Some(m) = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| root.module_loaded(m))
    {
        return Finding::ok(CHECK, format!("{m} loaded"));
    }
    let fix = format!(
        "`modprobe {}`; if it fails, enable VT-x / AMD-V in the firmware setup",
        vendor.kvm_module()
    );
    let others: Vec<String> = root
        .list("sys/module")
        .into_iter()
        .filter(|m| m.starts_with("kvm_"))
        .collect();
    if root.module_loaded("kvm") && !others.is_empty() {
        let detail = format!(
            "neither kvm_intel nor kvm_amd is loaded; KVM comes from {} (a nested or \
             paravirtual KVM may lack what passthrough needs)",
            others.join(", ")
        );
        return Finding::warn(CHECK, detail, fix);
    }
    Finding::fail(CHECK, "neither kvm_intel nor kvm_amd is loaded", fix)
}

fn iommu_tables(root: &HostRoot, vendor: Vendor) -> Finding {
    const CHECK: &str = "iommu firmware";
    if root.exists(DMAR) {
        return Finding::ok(CHECK, "ACPI DMAR table present (Intel VT-d)");
    }
    if root.exists(IVRS) {
        return Finding::ok(CHECK, "ACPI IVRS table present (AMD-Vi)");
    }
    let setting = match vendor {
        Vendor::Intel => "VT-d",
        Vendor::Amd => "AMD-Vi (the firmware's IOMMU setting)",
        Vendor::Unknown => "VT-d (Intel) or AMD-Vi (AMD)",
    };
    Finding::fail(
        CHECK,
        "no ACPI DMAR or IVRS table: the firmware announces no IOMMU",
        format!(
            "enable {setting} in the firmware setup; in a VM, give it a virtual IOMMU \
             (QEMU: `-device intel-iommu,intremap=on` on q35)"
        ),
    )
}

/// Kernel parameters that turn the IOMMU off.
fn off_flag(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find(|w| matches!(*w, "intel_iommu=off" | "amd_iommu=off" | "iommu=off"))
}

fn has_param(cmdline: &str, param: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == param)
}

/// How to get the IOMMU running. AMD-Vi is on by default once the firmware enables
/// it (`amd_iommu=` has no `on` value); Intel's depends on the kernel's
/// CONFIG_INTEL_IOMMU_DEFAULT_ON, so `intel_iommu=on` is the portable fix.
fn enable_fix(vendor: Vendor, cmdline: &str) -> String {
    if let Some(off) = off_flag(cmdline) {
        return format!("remove `{off}` from the kernel command line ({BOOTLOADER})");
    }
    match vendor {
        Vendor::Amd => "enable AMD-Vi / IOMMU in the firmware setup (Linux turns AMD-Vi on by \
                        itself once the firmware provides the IVRS table)"
            .to_string(),
        Vendor::Intel | Vendor::Unknown => {
            format!("add `intel_iommu=on` to the kernel command line ({BOOTLOADER})")
        }
    }
}

fn iommu_units(units: &[String], vendor: Vendor, cmdline: &str) -> Finding {
    const CHECK: &str = "iommu units";
    if units.is_empty() {
        return Finding::fail(
            CHECK,
            "/sys/class/iommu is empty: no IOMMU is active, so devices have no IOMMU group",
            enable_fix(vendor, cmdline),
        );
    }
    Finding::ok(CHECK, format!("active: {}", units.join(", ")))
}

fn kernel_cmdline(vendor: Vendor, cmdline: &str, active: bool) -> Finding {
    const CHECK: &str = "kernel cmdline";
    if let Some(off) = off_flag(cmdline) {
        return Finding::fail(
            CHECK,
            format!("`{off}` turns the IOMMU off"),
            enable_fix(vendor, cmdline),
        );
    }
    match vendor {
        _ if has_param(cmdline, "intel_iommu=on") => Finding::ok(CHECK, "intel_iommu=on"),
        Vendor::Amd => Finding::ok(CHECK, "AMD-Vi needs no parameter (on by default)"),
        _ if active => Finding::ok(
            CHECK,
            "no intel_iommu=on, but the kernel enables the IOMMU by default",
        ),
        _ => Finding::fail(
            CHECK,
            "no intel_iommu=on and the kernel did not enable the IOMMU by default",
            enable_fix(vendor, cmdline),
        ),
    }
}

fn passthrough_mode(cmdline: &str) -> Finding {
    const CHECK: &str = "iommu=pt";
    if has_param(cmdline, "iommu=pt") {
        return Finding::ok(CHECK, "host devices bypass IOMMU translation");
    }
    Finding::warn(
        CHECK,
        "not set: the host's own devices also DMA through IOMMU translation, which \
         slows host I/O (VFIO devices are translated either way)",
        format!("add `iommu=pt` to the kernel command line ({BOOTLOADER})"),
    )
}

/// Whether the host's IOMMU units remap interrupts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remapping {
    NoIommu,
    Supported(String),
    /// Off by a kernel parameter.
    Disabled(String),
    /// A unit lacks the capability.
    Missing(String),
    Unknown,
}

fn remapping(root: &HostRoot, units: &[String], cmdline: &str) -> Remapping {
    if units.is_empty() {
        return Remapping::NoIommu;
    }
    if let Some(p) = ["intremap=off", "nointremap"]
        .into_iter()
        .find(|p| has_param(cmdline, p))
    {
        return Remapping::Disabled(p.to_string());
    }
    if units.iter().all(|u| u.starts_with("ivhd")) {
        return Remapping::Supported("AMD-Vi with IVRS".into());
    }
    for unit in units {
        let ecap = root
            .read(&format!("{IOMMU_CLASS}/{unit}/intel-iommu/ecap"))
            .and_then(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok());
        match ecap {
            Some(e) if e & ECAP_IR == 0 => return Remapping::Missing(unit.clone()),
            Some(_) => {}
            None => return Remapping::Unknown,
        }
    }
    Remapping::Supported(format!("ECAP.IR set on {}", units.join(", ")))
}

fn interrupt_remapping(root: &HostRoot, units: &[String], cmdline: &str) -> Finding {
    const CHECK: &str = "interrupt remapping";
    let allow_unsafe = root
        .read(ALLOW_UNSAFE)
        .is_some_and(|v| matches!(v.as_str(), "Y" | "y" | "1"));
    let risk = "a guest could then forge MSIs: its device's DMA writes to the MSI \
                address range become interrupts the host delivers anywhere";
    let why = match remapping(root, units, cmdline) {
        Remapping::Supported(how) if allow_unsafe => {
            return Finding::ok(
                CHECK,
                format!("supported ({how}); allow_unsafe_interrupts=Y is set but unused"),
            )
        }
        Remapping::Supported(how) => return Finding::ok(CHECK, format!("supported ({how})")),
        Remapping::NoIommu => {
            return Finding::fail(
                CHECK,
                "no IOMMU, so no interrupt remapping",
                "enable the IOMMU first (see iommu units)",
            )
        }
        Remapping::Unknown => {
            return Finding::warn(
                CHECK,
                "cannot tell whether the IOMMU remaps interrupts",
                "check `dmesg | grep -i remapping` for \"Enabled IRQ remapping\"",
            )
        }
        Remapping::Disabled(p) => format!("turned off by `{p}`"),
        Remapping::Missing(unit) => format!("{unit} lacks it (ECAP.IR clear)"),
    };
    if allow_unsafe {
        return Finding::warn(
            CHECK,
            format!("{why}; allowed anyway by vfio_iommu_type1 allow_unsafe_interrupts=Y: {risk}"),
            "use a host whose IOMMU remaps interrupts, then `echo N > \
             /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts`",
        );
    }
    Finding::fail(
        CHECK,
        format!("{why}: vfio_iommu_type1 refuses to attach devices"),
        format!(
            "enable interrupt remapping (firmware VT-d/x2APIC settings; drop intremap=off), \
             or accept the risk with `options vfio_iommu_type1 allow_unsafe_interrupts=1` \
             in /etc/modprobe.d/vfio.conf: {risk}"
        ),
    )
}

fn vfio_modules(root: &HostRoot) -> Finding {
    const CHECK: &str = "vfio modules";
    let missing: Vec<&str> = ["vfio", "vfio_pci", "vfio_iommu_type1"]
        .into_iter()
        .filter(|m| !root.module_loaded(m))
        .collect();
    if missing.is_empty() {
        return Finding::ok(CHECK, "vfio, vfio_pci, vfio_iommu_type1 loaded");
    }
    Finding::fail(
        CHECK,
        format!("not loaded: {}", missing.join(", ")),
        "`modprobe vfio-pci` (loads vfio and vfio_iommu_type1 too); at every boot: \
         `echo vfio-pci > /etc/modules-load.d/vfio-pci.conf`",
    )
}

#[cfg(test)]
mod tests {
    use super::super::root::fake::FakeHost;
    use super::super::Status;
    use super::*;
    use crate::check::root::fake::assert_fix;

    fn intel_host() -> FakeHost {
        FakeHost::ready()
    }

    fn find(host: &FakeHost, check: &str) -> Finding {
        super::check(&host.root())
            .into_iter()
            .find(|f| f.check == check)
            .unwrap()
    }

    #[test]
    fn working_intel_host_is_all_ok() {
        let findings = super::check(&intel_host().root());
        assert_eq!(findings.len(), 8);
        for f in findings {
            assert_eq!(f.status, Status::Ok, "{f:?}");
            assert_eq!(f.fix, None);
        }
    }

    #[test]
    fn missing_dev_kvm_fails_with_modprobe() {
        let host = intel_host();
        host.remove("dev/kvm");
        assert_fix(
            &find(&host, "kvm device"),
            Status::Fail,
            "modprobe kvm_intel",
        );
    }

    #[test]
    fn unopenable_dev_kvm_fails_with_group_kvm() {
        let denied = Err(io::Error::from_raw_os_error(libc::EACCES));
        assert_fix(
            &kvm_device(denied, Vendor::Intel),
            Status::Fail,
            "usermod -aG kvm",
        );
        let other = Err(io::Error::from_raw_os_error(libc::ENXIO));
        assert_fix(&kvm_device(other, Vendor::Amd), Status::Fail, "dmesg");
    }

    #[test]
    fn no_hardware_kvm_module_fails_or_warns_beside_another_kvm() {
        let host = intel_host();
        host.remove("sys/module/kvm_intel");
        assert_fix(
            &find(&host, "kvm module"),
            Status::Fail,
            "modprobe kvm_intel",
        );
        host.mkdir("sys/module/kvm_pvm");
        let f = find(&host, "kvm module");
        assert_fix(&f, Status::Warn, "modprobe kvm_intel");
        assert!(f.detail.contains("kvm_pvm"));
    }

    #[test]
    fn amd_host_is_detected_from_ivrs() {
        let host = FakeHost::empty();
        host.write(IVRS, "");
        host.mkdir("sys/module/kvm_amd");
        assert_eq!(Vendor::detect(&host.root()), Vendor::Amd);
        assert_eq!(find(&host, "kvm module").status, Status::Ok);
        assert_eq!(find(&host, "iommu firmware").status, Status::Ok);
    }

    #[test]
    fn no_acpi_iommu_table_fails_with_firmware_setting() {
        let host = intel_host();
        host.remove(DMAR);
        assert_fix(&find(&host, "iommu firmware"), Status::Fail, "VT-d");
        host.write("proc/cpuinfo", "vendor_id : AuthenticAMD\n");
        assert_fix(&find(&host, "iommu firmware"), Status::Fail, "AMD-Vi");
    }

    #[test]
    fn no_active_unit_fails_with_the_kernel_parameter() {
        let host = intel_host();
        host.remove("sys/class/iommu/dmar0");
        host.write("proc/cmdline", "quiet");
        assert_fix(&find(&host, "iommu units"), Status::Fail, "intel_iommu=on");
        assert_fix(
            &find(&host, "kernel cmdline"),
            Status::Fail,
            "intel_iommu=on",
        );
    }

    #[test]
    fn iommu_off_on_the_command_line_fails_with_remove() {
        let host = intel_host();
        host.write("proc/cmdline", "intel_iommu=off iommu=pt");
        assert_fix(
            &find(&host, "kernel cmdline"),
            Status::Fail,
            "remove `intel_iommu=off`",
        );
    }

    #[test]
    fn intel_iommu_on_by_default_or_amd_needs_no_parameter() {
        let host = intel_host();
        host.write("proc/cmdline", "iommu=pt");
        assert_eq!(find(&host, "kernel cmdline").status, Status::Ok);
        assert_eq!(
            kernel_cmdline(Vendor::Amd, "quiet", false).status,
            Status::Ok
        );
    }

    #[test]
    fn missing_iommu_pt_warns() {
        let host = intel_host();
        host.write("proc/cmdline", "intel_iommu=on");
        assert_fix(&find(&host, "iommu=pt"), Status::Warn, "iommu=pt");
    }

    #[test]
    fn unit_without_ecap_ir_fails_and_names_allow_unsafe_interrupts() {
        let host = intel_host();
        host.write("sys/class/iommu/dmar0/intel-iommu/ecap", "f050d2");
        let f = find(&host, "interrupt remapping");
        assert_fix(&f, Status::Fail, "allow_unsafe_interrupts=1");
        assert!(f.fix.unwrap().contains("forge MSIs"));
    }

    #[test]
    fn allow_unsafe_interrupts_without_remapping_warns_about_forged_msis() {
        let host = intel_host();
        host.write("sys/class/iommu/dmar0/intel-iommu/ecap", "0x0");
        host.write(ALLOW_UNSAFE, "Y\n");
        let f = find(&host, "interrupt remapping");
        assert_fix(&f, Status::Warn, "allow_unsafe_interrupts");
        assert!(f.detail.contains("forge MSIs"));
    }

    #[test]
    fn allow_unsafe_interrupts_with_remapping_is_ok_and_noted() {
        let host = intel_host();
        host.write(ALLOW_UNSAFE, "Y\n");
        let f = find(&host, "interrupt remapping");
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.contains("set but unused"));
    }

    #[test]
    fn intremap_off_fails() {
        let host = intel_host();
        host.write("proc/cmdline", "intel_iommu=on iommu=pt intremap=off");
        let f = find(&host, "interrupt remapping");
        assert_fix(&f, Status::Fail, "drop intremap=off");
    }

    #[test]
    fn remapping_without_iommu_fails_and_unreadable_ecap_warns() {
        let host = intel_host();
        host.remove("sys/class/iommu/dmar0/intel-iommu/ecap");
        assert_fix(&find(&host, "interrupt remapping"), Status::Warn, "dmesg");
        host.remove("sys/class/iommu/dmar0");
        assert_fix(
            &find(&host, "interrupt remapping"),
            Status::Fail,
            "enable the IOMMU",
        );
    }

    #[test]
    fn amd_units_are_assumed_to_remap() {
        let host = intel_host();
        host.remove("sys/class/iommu/dmar0");
        host.mkdir("sys/class/iommu/ivhd0");
        assert_eq!(find(&host, "interrupt remapping").status, Status::Ok);
    }

    #[test]
    fn missing_vfio_modules_fail_with_modprobe() {
        let host = intel_host();
        host.remove("sys/module/vfio_pci");
        let f = find(&host, "vfio modules");
        assert_fix(&f, Status::Fail, "modprobe vfio-pci");
        assert!(f.detail.contains("vfio_pci"));
    }
}
