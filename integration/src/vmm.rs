//! The VMM under test, run inside L1 to boot L2: QEMU (the reference) or
//! Strait. Both get the same L2 kernel, initramfs, command line, memory and
//! devices. Device addresses in L1 are only known once L1 has looked them up
//! by vendor:device id, so commands and specs carry `@DEVn@` placeholders that
//! L1's run script replaces with the BDFs it found (domain included,
//! `0000:00:03.0`).

use std::path::{Path, PathBuf};

use crate::scenario::{HugePages, Launcher, StraitSettings};

/// Which VMM boots L2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    /// qemu-system-x86_64 from the host, with KVM and vfio-pci.
    Qemu,
    /// Strait, `strait run SPEC.json`.
    Strait {
        /// The strait binary (a host path, visible in L1 through the 9p share).
        binary: PathBuf,
    },
}

/// What the VMM must boot, as host paths (L1 sees the host's tree at the same paths).
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// QEMU binary (used by `Vmm::Qemu`).
    pub qemu: PathBuf,
    /// L2 vCPUs.
    pub vcpus: u32,
    /// L2 RAM in MiB.
    pub memory_mib: u32,
    /// Backing of L2 RAM.
    pub hugepages: HugePages,
    /// Fault all of RAM in before (QEMU: `prealloc` of its hugetlbfs backend) or
    /// beside (Strait: `memory.prefault`) the guest's start.
    pub prefault: bool,
    /// L2 kernel (bzImage).
    pub kernel: PathBuf,
    /// L2 initramfs.
    pub initramfs: PathBuf,
    /// L2 kernel command line.
    pub cmdline: String,
    /// Number of passed-through devices (`@DEV0@`..).
    pub devices: usize,
    /// Strait-only spec settings (lifecycle, API socket).
    pub strait: StraitSettings,
    /// Raw disk images given to L2 as virtio-blk (host paths, /dev/vda first).
    pub disks: Vec<PathBuf>,
    /// Open the disks with O_DIRECT: Strait `"direct": true`, QEMU
    /// `cache=none,aio=io_uring`; they must be block devices in L1.
    pub direct_disks: bool,
    /// Give L2 virtio-net on L1's tap ([`crate::net`]).
    pub net: bool,
    /// Devices passed through as whole slots: (index, functions). Strait gets the slot
    /// form `DDDD:BB:DD`, QEMU one vfio-pci device per function behind one root port.
    pub whole_slots: Vec<(usize, u8)>,
    /// Hide the hypervisor from L2's CPUID (Strait: `cpu.hide_hypervisor`; QEMU:
    /// `kvm=off,hypervisor=off`).
    pub hide_hypervisor: bool,
    /// Guest NUMA nodes (Strait only): vCPU `i` and an equal share of RAM on node `i`,
    /// all on L1's node 0; 0 for none.
    pub numa_nodes: u32,
    /// Strait's spec says `"numa": "auto"`.
    pub numa_auto: bool,
}

#[cfg(test)]
impl GuestConfig {
    /// A 2-vCPU, 512 MiB guest on 2 MiB pages with nothing else: the unit tests' base,
    /// which they override with struct update syntax.
    pub(crate) fn for_tests() -> GuestConfig {
        GuestConfig {
            strait: Default::default(),
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            vcpus: 2,
            memory_mib: 512,
            hugepages: HugePages::Size2M,
            prefault: true,
            kernel: PathBuf::from("/boot/vmlinuz"),
            initramfs: PathBuf::from("/c/l2.cpio"),
            cmdline: "console=ttyS0".into(),
            devices: 0,
            disks: Vec::new(),
            direct_disks: false,
            net: false,
            whole_slots: Vec::new(),
            hide_hypervisor: false,
            numa_nodes: 0,
            numa_auto: false,
        }
    }
}

/// The control API socket in L1's chroot: on its /run tmpfs (a Unix socket cannot be
/// created on the 9p share that holds the work dir).
pub const API_SOCKET: &str = "/run/strait-api.sock";

/// The placeholder for the BDF of the `index`-th passed-through device.
pub fn device_placeholder(index: usize) -> String {
    format!("@DEV{index}@")
}

/// The placeholder for the slot (`DDDD:BB:DD`) of the `index`-th device.
pub fn slot_placeholder(index: usize) -> String {
    format!("@SLOT{index}@")
}

/// Where L1 mounts hugetlbfs for each page size (inside the chroot).
pub fn hugetlbfs_mount(hugepages: HugePages) -> Option<&'static str> {
    match hugepages {
        HugePages::None => None,
        HugePages::Size2M => Some("/dev/hugepages"),
        HugePages::Size1G => Some("/dev/hugepages1G"),
    }
}

impl Vmm {
    /// Short name for messages and work directory names.
    pub fn label(&self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Strait { .. } => "strait",
        }
    }

    /// The command L1 runs (in the chroot), with `@DEVn@` placeholders.
    /// `spec_path` is where L1 writes the filled-in spec for Strait.
    pub fn command(&self, guest: &GuestConfig, spec_path: &Path) -> Vec<String> {
        match self {
            Vmm::Qemu => qemu_command(guest),
            Vmm::Strait { binary } => {
                let (bin, spec) = (
                    binary.display().to_string(),
                    spec_path.display().to_string(),
                );
                match guest.strait.launcher {
                    None => vec![bin, "run".into(), spec],
                    Some(l) => launcher_command(l, bin, spec, guest.devices),
                }
            }
        }
    }

    /// The spec template (with placeholders) that L1 fills in, if the VMM takes one.
    pub fn spec_template(&self, guest: &GuestConfig) -> Option<String> {
        match self {
            Vmm::Qemu => None,
            Vmm::Strait { .. } => serde_json::to_string_pretty(&strait_spec(guest)).ok(),
        }
    }
}

/// The user a launcher runs Strait as (`--user`, or setpriv before Strait starts).
pub const LAUNCHER_UID: u32 = 1000;

/// A privileged launcher as a shell: it opens /dev/kvm (fd 3), the VFIO container
/// (fd 4) and each device's group (fds 5..), raises the memlock limit, and starts
/// Strait with those fds, either as root with `--user` or already as that user.
const LAUNCHER_SH: &str = r#"set -e
bin=$1; spec=$2; how=$3; uid=$4; shift 4
exec 3<>/dev/kvm 4<>/dev/vfio/vfio
fd=5; groups=
for d in "$@"; do
	g=$(basename "$(readlink /sys/bus/pci/devices/$d/iommu_group)")
	eval "exec $fd<>/dev/vfio/$g"
	groups="$groups --vfio-group-fd $fd"; fd=$((fd + 1))
done
ulimit -l unlimited
set -- "$bin" run "$spec" --kvm-fd 3 --vfio-container-fd 4 $groups
echo "launcher: $how, uid $uid: $*"
if [ "$how" = unprivileged ]; then
	exec /usr/bin/setpriv --reuid=$uid --regid=$uid --clear-groups "$@"
fi
exec "$@" --user $uid:$uid
"#;

/// `sh -c LAUNCHER_SH` with Strait, the spec, how, the user and the devices.
fn launcher_command(l: Launcher, bin: String, spec: String, devices: usize) -> Vec<String> {
    let how = match l {
        Launcher::RootWithUser => "root-with-user",
        Launcher::Unprivileged => "unprivileged",
    };
    let mut v = vec![
        "sh".into(),
        "-c".into(),
        LAUNCHER_SH.into(),
        "launcher".into(),
        bin,
        spec,
    ];
    v.extend([how.to_string(), LAUNCHER_UID.to_string()]);
    v.extend((0..devices).map(device_placeholder));
    v
}

/// QEMU as L2's VMM: q35 with KVM, host CPU model, RAM from hugetlbfs
/// (preallocated, as VFIO pins it anyway), one PCIe root port per device.
pub fn qemu_command(guest: &GuestConfig) -> Vec<String> {
    let mut args = vec![guest.qemu.display().to_string()];
    let mut machine = String::from("q35,accel=kvm");
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    if let Some(dir) = hugetlbfs_mount(guest.hugepages) {
        let backend = format!(
            "memory-backend-file,id=ram0,size={}M,mem-path={dir},prealloc={}",
            guest.memory_mib,
            if guest.prefault { "on" } else { "off" }
        );
        push(&["-object", &backend]);
        machine.push_str(",memory-backend=ram0");
    }
    let cpu = if guest.hide_hypervisor {
        "host,kvm=off,hypervisor=off"
    } else {
        "host"
    };
    push(&["-machine", &machine, "-cpu", cpu]);
    push(&[
        "-smp",
        &guest.vcpus.to_string(),
        "-m",
        &format!("{}M", guest.memory_mib),
    ]);
    push(&[
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    for i in 0..guest.devices {
        let port = format!(
            "pcie-root-port,id=rp{i},bus=pcie.0,chassis={},slot={}",
            i + 1,
            i + 1
        );
        push(&["-device", &port]);
        match guest.whole_slots.iter().find(|(d, _)| *d == i) {
            Some((_, functions)) => {
                for f in 0..*functions {
                    let multi = if f == 0 { ",multifunction=on" } else { "" };
                    let vfio = format!(
                        "vfio-pci,host={}.{f},bus=rp{i},addr=0.{f}{multi}",
                        slot_placeholder(i)
                    );
                    push(&["-device", &vfio]);
                }
            }
            None => {
                let vfio = format!("vfio-pci,host={},bus=rp{i}", device_placeholder(i));
                push(&["-device", &vfio]);
            }
        }
    }
    // Each disk behind a root port of its own, after the passed-through devices, as
    // Strait places them; host page cache like Strait's `"direct": false`, or O_DIRECT
    // with QEMU's fastest asynchronous backend like `"direct": true`.
    let cache = if guest.direct_disks {
        "cache=none,aio=io_uring"
    } else {
        "cache=writeback"
    };
    for (i, disk) in guest.disks.iter().enumerate() {
        let n = guest.devices + i + 1;
        let drive = format!(
            "file={},if=none,id=vd{i},format=raw,{cache}",
            disk.display()
        );
        let port = format!("pcie-root-port,id=rpv{i},bus=pcie.0,chassis={n},slot={n}");
        let blk = format!("virtio-blk-pci,drive=vd{i},bus=rpv{i},disable-legacy=on");
        push(&["-drive", &drive, "-device", &port, "-device", &blk]);
    }
    if guest.net {
        args.extend(crate::net::qemu_args(guest.devices + guest.disks.len() + 1));
    }
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    push(&["-kernel", &guest.kernel.display().to_string()]);
    push(&["-initrd", &guest.initramfs.display().to_string()]);
    push(&["-append", &guest.cmdline]);
    args
}

/// The JSON VM spec Strait boots `guest` from, in the format the workspace
/// README documents field by field under "The VM spec" (schema:
/// `vmm/spec.schema.json`). Each passed-through device's `host` is a
/// [`device_placeholder`]: L1's run script replaces it with the BDF it found
/// for that device, since only L1 knows its bus numbering.
pub fn strait_spec(guest: &GuestConfig) -> serde_json::Value {
    let passthrough: Vec<_> = (0..guest.devices)
        .map(|i| {
            let host = if guest.whole_slots.iter().any(|(d, _)| *d == i) {
                slot_placeholder(i)
            } else {
                device_placeholder(i)
            };
            serde_json::json!({ "host": host })
        })
        .collect();
    let mut spec = serde_json::json!({
        "vcpus": guest.vcpus,
        "memory": { "size_mib": guest.memory_mib, "hugepages": guest.hugepages.spec_value() },
        "kernel": {
            "path": guest.kernel.display().to_string(),
            "initramfs": guest.initramfs.display().to_string(),
            "cmdline": guest.cmdline,
        },
        "serial": "stdio",
    });
    if !guest.prefault {
        spec["memory"]["prefault"] = false.into();
    }
    if !passthrough.is_empty() {
        spec["passthrough"] = serde_json::Value::Array(passthrough);
    }
    let mut lifecycle = serde_json::Map::new();
    if let Some(t) = guest.strait.shutdown_timeout_s {
        lifecycle.insert("shutdown_timeout_s".into(), t.into());
    }
    if let Some(r) = guest.strait.on_reboot {
        lifecycle.insert("on_reboot".into(), r.into());
    }
    if !lifecycle.is_empty() {
        spec["lifecycle"] = serde_json::Value::Object(lifecycle);
    }
    if guest.strait.api_socket {
        spec["api_socket"] = API_SOCKET.into();
    }
    if !guest.disks.is_empty() {
        let disks = guest
            .disks
            .iter()
            .map(|p| {
                serde_json::json!({ "path": p.display().to_string(), "direct": guest.direct_disks })
            })
            .collect();
        spec["disks"] = serde_json::Value::Array(disks);
    }
    if guest.net {
        spec["net"] = crate::net::strait_spec(!guest.strait.net_userspace);
    }
    if let Some(p2p) = guest.strait.p2p {
        spec["p2p"] = p2p.into();
    }
    if guest.hide_hypervisor {
        spec["cpu"] = serde_json::json!({ "hide_hypervisor": true });
    }
    if let Some(share) = guest.memory_mib.checked_div(guest.numa_nodes) {
        let nodes: Vec<_> = (0..guest.numa_nodes)
            .map(|i| serde_json::json!({ "vcpus": [i], "memory_mib": share, "host_node": 0 }))
            .collect();
        spec["numa"] = serde_json::Value::Array(nodes);
    }
    if guest.numa_auto {
        spec["numa"] = "auto".into();
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(devices: usize, hugepages: HugePages) -> GuestConfig {
        GuestConfig {
            hugepages,
            kernel: PathBuf::from("/boot/vmlinuz-test"),
            initramfs: PathBuf::from("/cache/l2.cpio"),
            cmdline: "console=ttyS0 pci=nomsi".into(),
            devices,
            ..GuestConfig::for_tests()
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_gets_one_root_port_and_vfio_device_per_device() {
        let args = qemu_command(&guest(2, HugePages::Size2M));
        assert_eq!(
            after(&args, "-device"),
            [
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
                "vfio-pci,host=@DEV0@,bus=rp0",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2",
                "vfio-pci,host=@DEV1@,bus=rp1",
            ]
        );
    }

    #[test]
    fn a_whole_slot_is_one_spec_entry_and_one_vfio_device_per_function_for_qemu() {
        let mut g = guest(1, HugePages::Size2M);
        g.whole_slots = vec![(0, 2)];
        assert_eq!(
            after(&qemu_command(&g), "-device"),
            [
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
                "vfio-pci,host=@SLOT0@.0,bus=rp0,addr=0.0,multifunction=on",
                "vfio-pci,host=@SLOT0@.1,bus=rp0,addr=0.1",
            ]
        );
        assert_eq!(strait_spec(&g)["passthrough"][0]["host"], "@SLOT0@");
    }

    #[test]
    fn hiding_the_hypervisor_reaches_both_vmms() {
        let mut g = guest(0, HugePages::Size2M);
        g.hide_hypervisor = true;
        assert_eq!(
            after(&qemu_command(&g), "-cpu"),
            ["host,kvm=off,hypervisor=off"]
        );
        assert_eq!(strait_spec(&g)["cpu"]["hide_hypervisor"], true);
    }

    #[test]
    fn qemu_ram_comes_from_hugetlbfs_with_prealloc() {
        let args = qemu_command(&guest(0, HugePages::Size2M));
        assert_eq!(
            after(&args, "-object"),
            ["memory-backend-file,id=ram0,size=512M,mem-path=/dev/hugepages,prealloc=on"]
        );
        assert_eq!(
            after(&args, "-machine"),
            ["q35,accel=kvm,memory-backend=ram0"]
        );
        assert_eq!(after(&args, "-m"), ["512M"]);
    }

    #[test]
    fn prefault_off_reaches_both_vmms() {
        let g = GuestConfig {
            prefault: false,
            ..guest(0, HugePages::Size1G)
        };
        assert_eq!(
            after(&qemu_command(&g), "-object"),
            ["memory-backend-file,id=ram0,size=512M,mem-path=/dev/hugepages1G,prealloc=off"]
        );
        assert_eq!(
            strait_spec(&g)["memory"],
            serde_json::json!({ "size_mib": 512, "hugepages": "1G", "prefault": false })
        );
    }

    #[test]
    fn qemu_without_hugepages_has_no_backend() {
        let args = qemu_command(&guest(0, HugePages::None));
        assert!(after(&args, "-object").is_empty());
        assert_eq!(after(&args, "-machine"), ["q35,accel=kvm"]);
    }

    #[test]
    fn qemu_boots_kernel_initrd_and_cmdline() {
        let args = qemu_command(&guest(0, HugePages::None));
        assert_eq!(after(&args, "-kernel"), ["/boot/vmlinuz-test"]);
        assert_eq!(after(&args, "-initrd"), ["/cache/l2.cpio"]);
        assert_eq!(after(&args, "-append"), ["console=ttyS0 pci=nomsi"]);
    }

    #[test]
    fn strait_spec_matches_the_brief_format() {
        let spec = strait_spec(&guest(1, HugePages::Size2M));
        let want = serde_json::json!({
            "vcpus": 2,
            "memory": { "size_mib": 512, "hugepages": "2M" },
            "kernel": {
                "path": "/boot/vmlinuz-test",
                "initramfs": "/cache/l2.cpio",
                "cmdline": "console=ttyS0 pci=nomsi",
            },
            "passthrough": [ { "host": "@DEV0@" } ],
            "serial": "stdio",
        });
        assert_eq!(spec, want);
    }

    #[test]
    fn strait_spec_without_devices_omits_passthrough() {
        let spec = strait_spec(&guest(0, HugePages::None));
        assert!(spec.get("passthrough").is_none());
        assert_eq!(spec["memory"]["hugepages"], "none");
    }

    #[test]
    fn strait_command_runs_the_spec() {
        let vmm = Vmm::Strait {
            binary: PathBuf::from("/repo/target/release/strait"),
        };
        let cmd = vmm.command(&guest(0, HugePages::None), Path::new("/work/spec.json"));
        assert_eq!(
            cmd,
            ["/repo/target/release/strait", "run", "/work/spec.json"]
        );
    }
}
