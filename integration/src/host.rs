//! The host (L0) side prerequisites: QEMU, a stock Debian kernel with its
//! modules, a static busybox and modprobe. Finds them, installs the Debian
//! packages when something is missing (as root only), and resolves the kernel
//! version from /lib/modules and /boot instead of hard-coding one.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The Debian packages that provide everything the testbed runs.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    "cpio",
    "kmod",
    "e2fsprogs",
];

const QEMU: &str = "qemu-system-x86_64";
const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
const MODPROBE_CANDIDATES: &[&str] = &["/sbin/modprobe", "/usr/sbin/modprobe", "/usr/bin/modprobe"];

/// The kernel L1 boots. L2 always boots the stock one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum L1Kernel {
    /// The host's own (bookworm's Linux 6.1): vfio-pci maps BARs with 4 KiB pfns.
    #[default]
    Stock,
    /// The newest from bookworm-backports (Linux 6.12), unpacked into the cache:
    /// vfio-pci maps BARs with huge (PMD/PUD) pfns.
    Backports,
}

impl L1Kernel {
    /// Its name on command lines (`--l1-kernel`).
    pub fn name(self) -> &'static str {
        match self {
            L1Kernel::Stock => "stock",
            L1Kernel::Backports => "backports",
        }
    }

    /// The kernel called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [L1Kernel::Stock, L1Kernel::Backports]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A kernel the testbed boots: its release, bzImage and the root its modules are under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTree {
    /// The release, the directory name under `<root>/lib/modules`.
    pub version: String,
    /// The bzImage.
    pub image: PathBuf,
    /// `/` for the host's kernel; the unpacked tree for a backported one.
    pub root: PathBuf,
}

/// Where the host's tools and kernel are.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// `qemu-system-x86_64`, used as L0 and (through the 9p share) as L2's VMM in L1.
    pub qemu: PathBuf,
    /// A statically linked busybox, copied into every initramfs.
    pub busybox: PathBuf,
    /// kmod's modprobe, asked for module files in load order.
    pub modprobe: PathBuf,
    /// The kernel release, e.g. the directory name under /lib/modules.
    pub kernel_version: String,
    /// The bzImage booted as L1 and as L2.
    pub kernel_image: PathBuf,
    /// e2fsprogs' mke2fs and debugfs: root filesystem images for L2's virtio disks.
    pub mke2fs: PathBuf,
    pub debugfs: PathBuf,
}

impl HostEnv {
    /// The host's own kernel (L2's, and L1's unless a scenario asks for another).
    pub fn stock_kernel(&self) -> KernelTree {
        KernelTree {
            version: self.kernel_version.clone(),
            image: self.kernel_image.clone(),
            root: PathBuf::from("/"),
        }
    }

    /// Finds the prerequisites; when some are missing and `install` is set,
    /// installs [`PACKAGES`] with apt-get (root only) and looks again.
    pub fn discover(install: bool) -> Result<Self> {
        match Self::find() {
            Ok(env) => Ok(env),
            Err(_) if install => {
                // Parallel tests would race for dpkg's lock: one installs, the
                // others wait and then find what it installed.
                static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
                let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(missing) = Self::find() {
                    install_packages(&missing)?;
                }
                Self::find().map_err(|still| Error::MissingPrerequisites {
                    missing: still.join(", "),
                    reason: format!("still missing after installing {}", PACKAGES.join(" ")),
                })
            }
            Err(missing) => Err(Error::MissingPrerequisites {
                missing: missing.join(", "),
                reason: "installation disabled".into(),
            }),
        }
    }

    /// Looks for everything; the error lists every missing piece.
    fn find() -> std::result::Result<Self, Vec<String>> {
        let mut missing = Vec::new();
        let qemu = find_in_path(QEMU);
        if qemu.is_none() {
            missing.push(format!("{QEMU} (qemu-system-x86)"));
        }
        let busybox = BUSYBOX_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| is_static_elf(p));
        if busybox.is_none() {
            missing.push("a statically linked busybox (busybox-static)".into());
        }
        let modprobe = MODPROBE_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| find_in_path("modprobe"));
        if modprobe.is_none() {
            missing.push("modprobe (kmod)".into());
        }
        let e2fs = |name: &str| {
            ["/sbin", "/usr/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
                .or_else(|| find_in_path(name))
        };
        let (mke2fs, debugfs) = (e2fs("mke2fs"), e2fs("debugfs"));
        if mke2fs.is_none() || debugfs.is_none() {
            missing.push("mke2fs and debugfs (e2fsprogs)".into());
        }
        let kernel = resolve_kernel(Path::new("/"));
        if let Err(detail) = &kernel {
            missing.push(format!("a kernel (linux-image-amd64): {detail}"));
        }
        match (qemu, busybox, modprobe, kernel, mke2fs, debugfs) {
            (
                Some(qemu),
                Some(busybox),
                Some(modprobe),
                Ok((kernel_version, kernel_image)),
                Some(mke2fs),
                Some(debugfs),
            ) => Ok(Self {
                qemu,
                busybox,
                modprobe,
                kernel_version,
                kernel_image,
                mke2fs,
                debugfs,
            }),
            _ => Err(missing),
        }
    }
}

/// Runs `apt-get update` and `apt-get install -y` for [`PACKAGES`].
fn install_packages(missing: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(Error::MissingPrerequisites {
            missing: missing.join(", "),
            reason: format!(
                "not root, so cannot install them; run `apt-get install -y {}` as root",
                PACKAGES.join(" ")
            ),
        });
    }
    log::info!(
        "installing {} (missing: {})",
        PACKAGES.join(" "),
        missing.join(", ")
    );
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(PACKAGES);
    apt(&install)
}

fn apt(args: &[&str]) -> Result<()> {
    let command = format!("apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        // Another apt (another test binary, unattended upgrades) may hold the lock.
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.to_string())
        .map_err(|e| e.to_string());
    match status {
        Ok(s) if s == "exit status: 0" => Ok(()),
        Ok(s) | Err(s) => Err(Error::InstallPackages {
            packages: PACKAGES.join(" "),
            command,
            status: s,
        }),
    }
}

/// Picks the newest kernel release that has both `/boot/vmlinuz-VER` and
/// `/lib/modules/VER/modules.dep` under `root`.
pub fn resolve_kernel(root: &Path) -> std::result::Result<(String, PathBuf), String> {
    let modules = root.join("lib/modules");
    let entries = std::fs::read_dir(&modules).map_err(|e| format!("{}: {e}", modules.display()))?;
    let mut versions: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| modules.join(v).join("modules.dep").is_file())
        .filter(|v| root.join("boot").join(format!("vmlinuz-{v}")).is_file())
        .collect();
    if let Ok(wanted) = std::env::var("TESTBED_KERNEL_VERSION") {
        versions.retain(|v| *v == wanted);
    }
    versions.sort_by(|a, b| compare_versions(a, b));
    let version = versions
        .pop()
        .ok_or_else(|| "no version with both an image and modules".to_string())?;
    let image = root.join("boot").join(format!("vmlinuz-{version}"));
    Ok((version, image))
}

/// Orders kernel releases by their numeric parts ("6.1.0-9" < "6.1.0-10").
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// True when `path` is an ELF executable without a PT_INTERP header, i.e. it
/// runs in an initramfs that has no dynamic loader or libc.
pub fn is_static_elf(path: &Path) -> bool {
    std::fs::read(path)
        .map(|bytes| elf_is_static(&bytes))
        .unwrap_or(false)
}

/// Parses an ELF64 little-endian header and its program headers.
pub fn elf_is_static(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // Magic, 64-bit class, little endian.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let offset = phoff as usize + i * usize::from(phentsize);
        u32_at(offset).is_some_and(|p_type| p_type != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(program_types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56 * program_types.len()];
        bytes[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(program_types.len() as u16).to_le_bytes());
        for (i, t) in program_types.iter().enumerate() {
            bytes[64 + i * 56..68 + i * 56].copy_from_slice(&t.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn elf_without_interp_is_static() {
        assert!(elf_is_static(&elf(&[1, 1, 4])));
    }

    #[test]
    fn elf_with_interp_is_dynamic() {
        assert!(!elf_is_static(&elf(&[6, 3, 1])));
    }

    #[test]
    fn non_elf_is_not_static() {
        assert!(!elf_is_static(b"#!/bin/sh\necho hi\n"));
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-9-amd64", "6.1.0-10-amd64"),
            Ordering::Less
        );
        assert_eq!(
            compare_versions("6.10.0-1-amd64", "6.9.0-1-amd64"),
            Ordering::Greater
        );
    }

    #[test]
    fn newest_kernel_with_image_and_modules_wins() {
        let root = std::env::temp_dir().join(format!("testbed-kernel-{}", std::process::id()));
        for (v, image) in [
            ("6.1.0-9-amd64", true),
            ("6.1.0-10-amd64", true),
            ("6.2.0-1", false),
        ] {
            let dir = root.join("lib/modules").join(v);
            std::fs::create_dir_all(&dir).ok();
            std::fs::write(dir.join("modules.dep"), "").ok();
            std::fs::create_dir_all(root.join("boot")).ok();
            if image {
                std::fs::write(root.join("boot").join(format!("vmlinuz-{v}")), "").ok();
            }
        }
        let found = resolve_kernel(&root);
        std::fs::remove_dir_all(&root).ok();
        assert_eq!(found.map(|(v, _)| v), Ok("6.1.0-10-amd64".to_string()));
    }
}
