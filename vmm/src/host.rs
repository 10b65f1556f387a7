//! Checks that the host can run a spec, without starting anything: the files the spec
//! names, /dev/kvm and its limits, the hugepage pool, the PCI functions to pass through.
//! `strait validate` runs all of them and prints a summary; `strait run` runs them before
//! building the VM so a short hugepage pool or a missing device is one clear line, not a
//! failure halfway through boot.

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

use crate::boot::{self, KernelFormat, KernelImage};
use crate::memory::{self, MemoryError};
use devices::pci::Bdf;

use crate::spec::{SpecError, VmSpec};

/// Where sysfs lists PCI functions.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The host lacks something the spec needs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot open /dev/kvm; is KVM enabled and may this user open it (group kvm)?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create a VM (another hypervisor running? out of memory?)")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("the host KVM lacks {0}, which Strait needs")]
    MissingCapability(&'static str),
    #[error("vcpus: {count} exceeds this host's KVM limit of {max}")]
    TooManyVcpus { count: u32, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("passthrough[{index}].host: no PCI function {addr} on this host ({} missing)", path.display())]
    PassthroughMissing {
        index: usize,
        addr: Bdf,
        path: PathBuf,
    },
    #[error(
        "passthrough[{index}].host: {addr} is in no IOMMU group; \
         enable the IOMMU (intel_iommu=on or amd_iommu=on)"
    )]
    NoIommuGroup { index: usize, addr: Bdf },
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
    let meta = File::open(path).and_then(|f| f.metadata()).map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    Ok(())
}

/// Identify the kernel, check the command line fits its limit and the initramfs fits
/// below it in low RAM.
pub fn check_kernel(spec: &VmSpec) -> Result<KernelImage, boot::BootError> {
    let image = boot::open_kernel(&spec.kernel.path)?;
    let (len, max) = (spec.kernel.cmdline.len() + 1, image.cmdline_max());
    if len > max {
        return Err(boot::BootError::CmdlineTooLong { len, max });
    }
    if let Some(path) = &spec.kernel.initramfs {
        let size = std::fs::metadata(path)
            .map_err(|source| boot::BootError::OpenInitramfs {
                path: path.clone(),
                source,
            })?
            .len();
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

/// Check /dev/kvm, its vCPU limit and capabilities, the hugepage pool and passthrough
/// devices.
pub fn check_host(spec: &VmSpec) -> Result<(), HostError> {
    let kvm = Kvm::new().map_err(HostError::OpenKvm)?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCapability(name));
        }
    }
    let max = kvm.get_max_vcpus();
    if spec.vcpus as usize > max {
        return Err(HostError::TooManyVcpus {
            count: spec.vcpus,
            max,
        });
    }
    memory::check_hugepage_pool(spec.memory.hugepages, spec.memory_bytes())?;
    check_passthrough(spec, Path::new(SYSFS_PCI_DEVICES))
}

/// Check each passthrough function exists under `sysfs` and sits in an IOMMU group.
pub fn check_passthrough(spec: &VmSpec, sysfs: &Path) -> Result<(), HostError> {
    // Syntax and duplicates were checked by `VmSpec::validate`; a failure here cannot
    // happen for a validated spec, so it is reported as "missing" rather than panicking.
    let addrs = spec.passthrough_addresses().unwrap_or_default();
    for (index, addr) in addrs.into_iter().enumerate() {
        let dir = sysfs.join(addr.to_string());
        if !dir.exists() {
            return Err(HostError::PassthroughMissing {
                index,
                addr,
                path: dir,
            });
        }
        if !dir.join("iommu_group").exists() {
            return Err(HostError::NoIommuGroup { index, addr });
        }
    }
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
        lines.push(format!("passthrough: {}", p.host));
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
            kernel: KernelSpec {
                path: kernel.into(),
                initramfs: initramfs.map(Into::into),
                cmdline: "console=ttyS0".into(),
            },
            passthrough: vec![],
            serial: SerialSpec::Off,
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
    fn executable_is_not_a_kernel() {
        // Our own test binary is an ELF, but not a loadable x86 kernel: the probe accepts
        // ELF by magic and leaves the detail to the loader, so use a non-ELF file.
        let err = check_kernel(&spec("/proc/self/status", None)).unwrap_err();
        assert!(matches!(err, boot::BootError::NotAKernel { .. }));
    }

    #[test]
    fn absent_passthrough_device_is_reported() {
        let mut s = spec("/k", None);
        s.passthrough = vec![PassthroughSpec {
            host: "0000:7f:1f.7".into(),
        }];
        let sysfs = std::env::temp_dir().join(format!("strait-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(&sysfs).unwrap();
        let err = check_passthrough(&s, &sysfs).unwrap_err();
        assert!(matches!(
            err,
            HostError::PassthroughMissing { index: 0, .. }
        ));
        let dev = sysfs.join("0000:7f:1f.7");
        std::fs::create_dir_all(&dev).unwrap();
        let err = check_passthrough(&s, &sysfs).unwrap_err();
        assert!(matches!(err, HostError::NoIommuGroup { index: 0, .. }));
        std::fs::create_dir_all(dev.join("iommu_group")).unwrap();
        let ok = check_passthrough(&s, &sysfs);
        std::fs::remove_dir_all(&sysfs).unwrap();
        ok.unwrap();
    }
}
