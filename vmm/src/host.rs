//! Checks that the host can run a spec, without starting anything: the files the spec
//! names, /dev/kvm and its limits, the hugepage pool, the PCI functions to pass through.
//! `strait validate` runs all of them and prints a summary; `strait run` runs them before
//! building the VM so a short hugepage pool or a missing device is one clear line, not a
//! failure halfway through boot.

use std::path::Path;

use kvm_ioctls::Cap;

use vfio_glue::HostPaths;

use crate::boot::{self, KernelFormat, KernelImage};
use crate::device_manager::{self, DeviceError};
use crate::files;
use crate::memory::{self, MemoryError};
use crate::passthrough;

use crate::spec::{SerialSpec, SpecError, VmSpec};

/// The host lacks something the spec needs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot open /dev/kvm{}", kvm_hint(.0, "; is KVM enabled and may this user open it (group kvm)?"))]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create a VM{}", kvm_hint(.0, " (another hypervisor running? out of memory?)"))]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error(
        "the open-files limit (ulimit -n) is {limit}, below the {need} this VM needs at \
         least; raise it, e.g. `ulimit -n 4096`, or LimitNOFILE= in a systemd unit"
    )]
    OpenFilesLimit { limit: u64, need: u64 },
    #[error("the host KVM lacks {0}, which Strait needs")]
    MissingCapability(&'static str),
    #[error("vcpus: {count} exceeds this host's KVM limit of {max}")]
    TooManyVcpus { count: u32, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("passthrough: {0}")]
    Passthrough(#[from] vfio_glue::Error),
    #[error(transparent)]
    Numa(#[from] crate::numa::NumaError),
}

/// What to do about a failed /dev/kvm open or KVM_CREATE_VM: out of file descriptors
/// (EMFILE: this process's `ulimit -n`; ENFILE: the host's table) is told apart from
/// `otherwise`, the usual causes.
pub(crate) fn kvm_hint(e: &kvm_ioctls::Error, otherwise: &'static str) -> String {
    match e.errno() {
        libc::EMFILE => format!(
            ": the open-files limit ({}) is reached; raise it, e.g. `ulimit -n 4096`, \
             or LimitNOFILE= in a systemd unit",
            open_files_limit().map_or("ulimit -n".into(), |n| n.to_string())
        ),
        libc::ENFILE => {
            ": the host's open-file table is full; close files or raise fs.file-max".into()
        }
        _ => otherwise.into(),
    }
}

/// The soft RLIMIT_NOFILE of this process.
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives for the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// File descriptors any VM holds (stdio, /dev/kvm, the VM, kernel and console files,
/// eventfds of the legacy devices and the stop signal) with room to spare.
const FDS_BASE: u64 = 32;
/// Per passed-through function: container, group, device and a few interrupt eventfds
/// (MSI-X vectors add more; this is the least, not an estimate).
const FDS_PER_DEVICE: u64 = 8;

/// The fewest descriptors a VM of `vcpus` with `devices` passed through can run with.
pub fn open_files_needed(vcpus: u32, devices: usize) -> u64 {
    FDS_BASE + u64::from(vcpus) + FDS_PER_DEVICE * devices as u64
}

/// Refuse a soft open-files `limit` below `need`, before anything is opened: otherwise
/// some later open fails with EMFILE in the middle of building the VM.
fn check_open_files(limit: Option<u64>, need: u64) -> Result<(), HostError> {
    match limit {
        Some(limit) if limit < need => Err(HostError::OpenFilesLimit { limit, need }),
        _ => Ok(()),
    }
}

/// KVM features the boot recipe relies on.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Check the kernel and initramfs files are readable (a spec error: the spec names them).
pub fn check_files(spec: &VmSpec) -> Result<(), SpecError> {
    readable("kernel.path", &spec.kernel.path)?;
    if let Some(initramfs) = &spec.kernel.initramfs {
        readable("kernel.initramfs", initramfs)?;
    }
    Ok(())
}

fn readable(field: &'static str, path: &Path) -> Result<(), SpecError> {
    let err = |source| SpecError::ReadFile {
        field,
        path: path.to_path_buf(),
        source,
    };
    files::open_regular(path).map_err(err)?;
    Ok(())
}

/// Identify the kernel, check the command line fits its limit, RAM holds the kernel's
/// decompression area and the initramfs fits above it in low RAM.
pub fn check_kernel(spec: &VmSpec) -> Result<KernelImage, boot::BootError> {
    let image = boot::open_kernel(&spec.kernel.path)?;
    let (len, max) = (spec.kernel.cmdline.len() + 1, image.cmdline_max());
    if len > max {
        return Err(boot::BootError::CmdlineTooLong { len, max });
    }
    let initramfs = match &spec.kernel.initramfs {
        Some(path) => Some((path, initramfs_len(path)?)),
        None => None,
    };
    image.check_ram(&spec.memory, initramfs.map(|(_, len)| len))?;
    if let Some((path, size)) = initramfs {
        boot::place_initramfs(
            &image,
            spec.memory_bytes(),
            image.estimated_end(),
            path,
            size,
        )?;
    }
    Ok(image)
}

fn initramfs_len(path: &Path) -> Result<u64, boot::BootError> {
    let meta = files::open_regular(path)
        .and_then(|f| f.metadata())
        .map_err(|source| boot::BootError::OpenInitramfs {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(meta.len())
}

/// Open the console file the way `run` opens it (the same function: no symbolic link,
/// a regular file, a directory that exists and is writable). A file created only for
/// this check is removed again, so `validate` leaves nothing behind.
pub fn check_console(spec: &VmSpec) -> Result<(), DeviceError> {
    let SerialSpec::File(console) = &spec.serial else {
        return Ok(());
    };
    let (file, created) = device_manager::open_console_file(&console.file)?;
    drop(file);
    if created {
        if let Err(e) = std::fs::remove_file(&console.file) {
            log::debug!("cannot remove {}: {e}", console.file.display());
        }
    }
    Ok(())
}

/// Check /dev/kvm, its vCPU limit and capabilities, the hugepage pool and passthrough
/// devices.
pub fn check_host(spec: &VmSpec) -> Result<(), HostError> {
    let need = open_files_needed(spec.vcpus, spec.passthrough.len());
    check_open_files(open_files_limit(), need)?;
    let kvm = crate::preopened::open_kvm().map_err(HostError::OpenKvm)?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCapability(name));
        }
    }
    // Creating the VM here makes an fd limit or a busy KVM a host error with its fix, in
    // `validate` too, rather than a failure in the middle of `run`.
    drop(kvm.create_vm().map_err(HostError::CreateVm)?);
    let max = kvm.get_max_vcpus();
    if spec.vcpus as usize > max {
        return Err(HostError::TooManyVcpus {
            count: spec.vcpus,
            max,
        });
    }
    memory::check_backing(spec.memory.hugepages, spec.memory_bytes())?;
    check_passthrough(spec, &HostPaths::default())
}

/// The passthrough checks `run` repeats when it opens the devices: each device exists,
/// is bound to vfio-pci, its IOMMU group is viable and /dev/vfio/N opens; no device is
/// listed twice; the memlock limit covers guest RAM.
pub fn check_passthrough(spec: &VmSpec, paths: &HostPaths) -> Result<(), HostError> {
    let addrs = passthrough::expand_hosts(&paths.sysfs, &spec.passthrough_hosts())?;
    passthrough::check_host(paths, &addrs, spec.memory_bytes())?;
    passthrough::cliques(&paths.sysfs, spec)?;
    let nodes = crate::numa::HostNodes::new(paths.sysfs.root());
    crate::numa::plan(spec, &nodes, &crate::numa::device_nodes(spec, &nodes))?;
    Ok(())
}

/// A human summary of what `strait validate` checked, one line per item.
pub fn summary(spec: &VmSpec, image: &KernelImage) -> Vec<String> {
    let kind = match image.probe.format {
        KernelFormat::BzImage => "bzImage",
        KernelFormat::Elf => "ELF vmlinux",
    };
    let mut lines = vec![
        format!(
            "kernel: {} ({kind}, {} KiB)",
            image.path.display(),
            image.len >> 10
        ),
        format!(
            "memory: {} MiB, {} pages, prefault {}",
            spec.memory.size_mib, spec.memory.hugepages, spec.memory.prefault
        ),
        format!("vcpus: {}", spec.vcpus),
    ];
    if let Some(p) = &spec.kernel.initramfs {
        let size = std::fs::metadata(p).map(|m| m.len() >> 10).unwrap_or(0);
        lines.push(format!("initramfs: {} ({size} KiB)", p.display()));
    }
    for p in &spec.passthrough {
        lines.push(format!("passthrough: {}", String::from(p.host.clone())));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HugePages, KernelSpec, MemorySpec, PassthroughSpec, SerialSpec};

    fn spec(kernel: &str, initramfs: Option<&str>) -> VmSpec {
        VmSpec {
            vcpus: 1,
            memory: MemorySpec {
                size_mib: 64,
                hugepages: HugePages::None,
                prefault: true,
            },
            cpu: Default::default(),
            kernel: KernelSpec {
                path: kernel.into(),
                initramfs: initramfs.map(Into::into),
                cmdline: "console=ttyS0".into(),
            },
            passthrough: vec![],
            serial: SerialSpec::Off,
            lifecycle: Default::default(),
            api_socket: None,
            disks: vec![],
            net: vec![],
            p2p: Default::default(),
            numa: None,
        }
    }

    #[test]
    fn missing_kernel_names_the_field() {
        let err = check_files(&spec("/nonexistent/vmlinuz", None)).unwrap_err();
        assert!(matches!(
            err,
            SpecError::ReadFile {
                field: "kernel.path",
                ..
            }
        ));
    }

    #[test]
    fn missing_initramfs_names_the_field() {
        let err = check_files(&spec("/proc/self/exe", Some("/nonexistent/initrd"))).unwrap_err();
        assert!(matches!(
            err,
            SpecError::ReadFile {
                field: "kernel.initramfs",
                ..
            }
        ));
    }

    #[test]
    fn directory_is_not_a_kernel_file() {
        let err = check_files(&spec("/", None)).unwrap_err();
        assert!(matches!(
            err,
            SpecError::ReadFile {
                field: "kernel.path",
                ..
            }
        ));
    }

    #[test]
    fn fifo_kernel_and_initramfs_are_refused_naming_the_field() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let fifo = dir.as_path().join("fifo");
        crate::files::tests::mkfifo(&fifo);
        let fifo = fifo.to_str().unwrap();
        let refused = |err: SpecError, want: &str| {
            matches!(&err, SpecError::ReadFile { field, source, .. }
                if *field == want && files::is_not_regular(source))
        };
        let err = check_files(&spec(fifo, None)).unwrap_err();
        assert!(refused(err, "kernel.path"));
        let err = check_files(&spec("/proc/self/exe", Some(fifo))).unwrap_err();
        assert!(refused(err, "kernel.initramfs"));
    }

    fn with_console(path: &Path) -> VmSpec {
        let mut s = spec("/k", None);
        s.serial = SerialSpec::File(crate::spec::ConsoleFileSpec {
            file: path.to_path_buf(),
            max_bytes: None,
        });
        s
    }

    #[test]
    fn console_check_leaves_no_file_behind() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("console.log");
        check_console(&with_console(&path)).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"kept").unwrap();
        check_console(&with_console(&path)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn console_in_a_missing_directory_fails_validate_with_exit_3() {
        let path = Path::new("/nonexistent/strait/console.log");
        let err = check_console(&with_console(path)).unwrap_err();
        assert!(matches!(err, DeviceError::OpenConsole { .. }), "{err:?}");
        let e = crate::error::Error::Devices(err);
        assert_eq!(e.exit_code(), crate::error::ExitCode::Host);
    }

    #[test]
    fn console_in_a_read_only_directory_fails_validate() {
        // /proc/self is not writable, even for root.
        let err = check_console(&with_console(Path::new("/proc/self/console.log"))).unwrap_err();
        assert!(matches!(err, DeviceError::OpenConsole { .. }), "{err:?}");
    }

    #[test]
    fn open_files_limit_below_the_vm_needs_is_refused() {
        let need = open_files_needed(4, 2);
        assert_eq!(need, 32 + 4 + 16);
        let err = check_open_files(Some(need - 1), need).unwrap_err();
        assert!(matches!(err, HostError::OpenFilesLimit { limit, .. } if limit == need - 1));
        assert_eq!(
            crate::error::Error::Host(err).exit_code(),
            crate::error::ExitCode::Host
        );
        check_open_files(Some(need), need).unwrap();
        check_open_files(None, need).unwrap();
    }

    #[test]
    fn out_of_file_descriptors_says_raise_ulimit_n() {
        let e = HostError::CreateVm(kvm_ioctls::Error::new(libc::EMFILE));
        let line = crate::error::Error::Host(e).one_line();
        assert!(line.contains("ulimit -n"), "{line}");
        assert!(!line.contains("another hypervisor"), "{line}");
        let e = HostError::OpenKvm(kvm_ioctls::Error::new(libc::EMFILE));
        assert!(e.to_string().contains("ulimit -n"), "{e}");
        let e = HostError::CreateVm(kvm_ioctls::Error::new(libc::ENFILE));
        assert!(e.to_string().contains("fs.file-max"), "{e}");
        let e = HostError::CreateVm(kvm_ioctls::Error::new(libc::EBUSY));
        assert!(e.to_string().contains("another hypervisor"), "{e}");
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let err = check_kernel(&spec("/proc/self/status", None)).unwrap_err();
        assert!(matches!(err, boot::BootError::NotAKernel { .. }));
    }

    #[test]
    fn executable_is_not_an_x86_kernel() {
        // Our own test binary is a 64-bit x86 ELF, but a program, not a vmlinux.
        let err = check_kernel(&spec("/proc/self/exe", None)).unwrap_err();
        assert!(
            matches!(err, boot::BootError::NotX86Kernel { .. }),
            "{err:?}"
        );
        let e = crate::error::Error::Boot(err);
        assert_eq!(e.exit_code(), crate::error::ExitCode::Kernel);
    }

    #[test]
    fn ram_too_small_for_the_kernel_is_refused_with_exit_4() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let kernel = dir.as_path().join("bzImage");
        std::fs::write(&kernel, boot::tests::debian_like_head()).unwrap();
        let err = check_kernel(&spec(kernel.to_str().unwrap(), None)).unwrap_err();
        assert!(
            matches!(
                err,
                boot::BootError::RamTooSmall {
                    size_mib: 64,
                    need_mib: 80,
                    ..
                }
            ),
            "{err:?}"
        );
        let e = crate::error::Error::Boot(err);
        assert_eq!(e.exit_code(), crate::error::ExitCode::Kernel);
        assert!(e.one_line().contains("at least 80"), "{}", e.one_line());
    }

    /// A sysfs tree and /dev/vfio in a temporary directory: only the links and nodes
    /// the host checks follow.
    struct FakeHost {
        dir: vmm_sys_util::tempdir::TempDir,
    }

    impl FakeHost {
        fn new() -> Self {
            let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
            std::fs::create_dir_all(dir.as_path().join("dev-vfio")).unwrap();
            FakeHost { dir }
        }

        fn paths(&self) -> HostPaths {
            HostPaths {
                sysfs: vfio_glue::sysfs::Sysfs::new(self.dir.as_path()),
                dev_vfio: self.dir.as_path().join("dev-vfio"),
            }
        }

        /// PCI function `name` bound to `driver`, in IOMMU group `group` with a node.
        fn add(&self, name: &str, driver: &str, group: u32) {
            use std::os::unix::fs::symlink;
            let root = self.dir.as_path();
            let dev = root.join("devices/pci0000:00").join(name);
            std::fs::create_dir_all(&dev).unwrap();
            let bus = root.join("bus/pci/devices");
            std::fs::create_dir_all(&bus).unwrap();
            symlink(&dev, bus.join(name)).unwrap();
            let drv = root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            symlink(&drv, dev.join("driver")).unwrap();
            let g = root.join("kernel/iommu_groups").join(group.to_string());
            std::fs::create_dir_all(g.join("devices")).unwrap();
            let _ = symlink(&g, dev.join("iommu_group"));
            symlink(&dev, g.join("devices").join(name)).unwrap();
            std::fs::write(root.join("dev-vfio").join(group.to_string()), b"").unwrap();
        }
    }

    fn with_devices(hosts: &[&str]) -> VmSpec {
        let mut s = spec("/k", None);
        s.passthrough = hosts
            .iter()
            .map(|h| PassthroughSpec {
                host: h.to_string().into(),
                clique: None,
            })
            .collect();
        s
    }

    fn check(host: &FakeHost, devices: &[&str]) -> crate::error::ExitCode {
        let err = check_passthrough(&with_devices(devices), &host.paths()).unwrap_err();
        crate::error::Error::Host(err).exit_code()
    }

    #[test]
    fn device_bound_to_vfio_pci_in_a_viable_group_passes() {
        let host = FakeHost::new();
        host.add("0000:01:00.0", "vfio-pci", 4);
        host.add("0000:00:01.0", "pcieport", 4);
        check_passthrough(&with_devices(&["0000:01:00.0"]), &host.paths()).unwrap();
    }

    #[test]
    fn absent_device_is_exit_11() {
        let host = FakeHost::new();
        assert_eq!(check(&host, &["0000:7f:1f.7"]) as u8, 11);
    }

    #[test]
    fn device_on_a_host_driver_is_exit_12() {
        let host = FakeHost::new();
        host.add("0000:01:00.0", "nvme", 4);
        assert_eq!(check(&host, &["0000:01:00.0"]) as u8, 12);
    }

    #[test]
    fn group_shared_with_a_host_driver_is_exit_13() {
        let host = FakeHost::new();
        host.add("0000:01:00.0", "vfio-pci", 4);
        host.add("0000:01:00.1", "snd_hda_intel", 4);
        assert_eq!(check(&host, &["0000:01:00.0"]) as u8, 13);
    }

    #[test]
    fn device_listed_twice_is_exit_14_from_the_spec_before_any_probe() {
        // Duplicates are the spec's to refuse, once; the host is never asked.
        let source = with_devices(&["0000:01:00.0", "01:00.0"])
            .validate()
            .unwrap_err();
        let e = crate::error::Error::Spec {
            path: "vm.json".into(),
            source,
        };
        assert_eq!(e.exit_code() as u8, 14);
    }

    #[test]
    fn no_passthrough_needs_no_sysfs() {
        let host = FakeHost::new();
        check_passthrough(&with_devices(&[]), &host.paths()).unwrap();
    }
}
