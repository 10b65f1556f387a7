//! Packages from Debian's `bookworm-backports` suite, downloaded and unpacked (never
//! installed) into the testbed's cache: Linux 6.12 for L1 (vfio-pci's huge pfnmap,
//! O_DIRECT on tmpfs) and QEMU 10 as the reference VMM in L1. apt-get works from a
//! private directory (its own sources list, package lists and an empty dpkg status),
//! so neither root nor the host's apt configuration is needed, and the host's
//! packages stay as they are. L1 sees the unpacked tree through the 9p share of `/`.
//!
//! Layout under `<cache>/backports/`: `apt/` (apt's state), `debs/` (the downloaded
//! packages), `root/` (everything unpacked with `dpkg-deb -x`, `depmod` run for the
//! kernel) and `root/.testbed-unpacked` (the packages and versions that are in it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::host::{compare_versions, KernelTree};

/// The suite, from the same archive and keyring as the host's bookworm.
const SOURCE: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                      http://deb.debian.org/debian bookworm-backports main";

/// The meta package whose dependency names the newest backported kernel.
const KERNEL_META: &str = "linux-image-amd64";

/// QEMU's x86 system emulator with its data, shared parts and the SeaBIOS it needs
/// (newer than bookworm's). Its libraries are the ones bookworm's QEMU 7.2 links.
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];

/// Records what `root/` holds, one `package version` a line.
const STAMP: &str = ".testbed-unpacked";

/// QEMU unpacked from backports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedQemu {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Its firmware directories, for `-L` (searched before the host's).
    pub data_dirs: Vec<PathBuf>,
}

/// The backports tree in the testbed's cache directory.
#[derive(Debug, Clone)]
pub struct Backports {
    dir: PathBuf,
}

impl Backports {
    /// The tree under `cache_dir` (created on first use).
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            dir: cache_dir.join("backports"),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The newest backported kernel, unpacked with its modules (modules.dep built).
    pub fn kernel(&self, depmod: &Path) -> Result<KernelTree> {
        let package = if let Some(found) = self.unpacked_kernel_package() {
            found
        } else {
            self.update()?;
            let package = self.kernel_package()?;
            self.unpack(&[package.as_str()])?;
            package
        };
        let version = package
            .strip_prefix("linux-image-")
            .unwrap_or(&package)
            .to_string();
        let root = self.root();
        let image = root.join("boot").join(format!("vmlinuz-{version}"));
        let modules = root.join("lib/modules").join(&version);
        if !modules.join("modules.dep").is_file() {
            run(Command::new(depmod).arg("-b").arg(&root).arg(&version))?;
        }
        if !image.is_file() {
            return Err(missing(
                &image,
                "the backported kernel package has no image",
            ));
        }
        Ok(KernelTree {
            version,
            image,
            root,
        })
    }

    /// QEMU from backports, unpacked.
    pub fn qemu(&self) -> Result<UnpackedQemu> {
        let root = self.root();
        let binary = root.join("usr/bin/qemu-system-x86_64");
        if !QEMU_PACKAGES.iter().all(|p| self.has_unpacked(p)) {
            self.update()?;
            self.unpack(QEMU_PACKAGES)?;
        }
        if !binary.is_file() {
            return Err(missing(&binary, "qemu-system-x86 unpacked without it"));
        }
        Ok(UnpackedQemu {
            binary,
            data_dirs: vec![root.join("usr/share/seabios"), root.join("usr/share/qemu")],
        })
    }

    fn stamp(&self) -> String {
        fs::read_to_string(self.root().join(STAMP)).unwrap_or_default()
    }

    fn has_unpacked(&self, package: &str) -> bool {
        self.stamp()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(package))
    }

    /// `linux-image-<version>` already unpacked, if any (the newest).
    fn unpacked_kernel_package(&self) -> Option<String> {
        let stamp = self.stamp();
        let mut kernels: Vec<&str> = stamp
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| p.starts_with("linux-image-6"))
            .collect();
        kernels.sort_by(|a, b| compare_versions(a, b));
        kernels.last().map(|p| p.to_string())
    }

    /// apt-get or apt-cache with every directory in the private tree.
    fn apt(&self, program: &str) -> Command {
        let apt = self.dir.join("apt");
        let mut command = Command::new(program);
        let opt = |name: &str, value: &Path| format!("{name}={}", value.display());
        for setting in [
            opt("Dir::Etc", &apt.join("etc")),
            opt("Dir::Etc::SourceList", &apt.join("etc/sources.list")),
            "Dir::Etc::SourceParts=-".into(),
            opt("Dir::State", &apt),
            opt("Dir::State::Lists", &apt.join("lists")),
            opt("Dir::State::status", &apt.join("status")),
            opt("Dir::Cache", &apt.join("cache")),
            "Debug::NoLocking=1".into(),
        ] {
            command.arg("-o").arg(setting);
        }
        if is_root() {
            // The _apt user could not write into the cache: download as root
            // rather than warn about it on every package.
            command.args(["-o", "APT::Sandbox::User=root"]);
        }
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// Fetches the suite's package lists into the private tree.
    fn update(&self) -> Result<()> {
        let apt = self.dir.join("apt");
        for dir in ["etc", "lists/partial", "cache/archives/partial"] {
            create_dir(&apt.join(dir))?;
        }
        write(&apt.join("etc/sources.list"), &format!("{SOURCE}\n"))?;
        write(&apt.join("status"), "")?;
        run(self.apt("apt-get").arg("update").arg("-q"))
    }

    /// `linux-image-<version>` named by the backported meta package.
    fn kernel_package(&self) -> Result<String> {
        let out = output(
            self.apt("apt-cache")
                .args(["show", "--no-all-versions", KERNEL_META]),
        )?;
        depends_on_kernel(&out).ok_or_else(|| Error::MissingPrerequisites {
            missing: "a backported kernel".into(),
            reason: format!("{KERNEL_META} in bookworm-backports depends on no linux-image-6.*"),
        })
    }

    /// Downloads `packages` and unpacks them into `root/`.
    fn unpack(&self, packages: &[&str]) -> Result<()> {
        let debs = self.dir.join("debs");
        create_dir(&debs)?;
        run(self
            .apt("apt-get")
            .current_dir(&debs)
            .arg("download")
            .args(packages))?;
        let root = self.root();
        create_dir(&root)?;
        let mut stamp = self.stamp();
        for package in packages {
            let deb = newest_deb(&debs, package)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            let name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
            let version = name
                .as_deref()
                .and_then(|n| n.split('_').nth(1))
                .unwrap_or("");
            stamp.push_str(&format!("{package} {}\n", version.replace("%3a", ":")));
        }
        write(&root.join(STAMP), &stamp)
    }
}

/// The `linux-image-<version>` in an `apt-cache show` Depends line.
pub fn depends_on_kernel(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .find(|p| p.starts_with("linux-image-6"))
        .map(str::to_string)
}

/// The downloaded `.deb` of `package` (`<package>_<version>_<arch>.deb`), newest first.
fn newest_deb(debs: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = fs::read_dir(debs)
        .map_err(|source| Error::ReadFile {
            path: debs.into(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    found.pop().ok_or_else(|| {
        missing(
            &debs.join(format!("{package}_*.deb")),
            "apt-get download left none",
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn missing(path: &Path, why: &str) -> Error {
    Error::MissingPrerequisites {
        missing: path.display().to_string(),
        reason: why.into(),
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.into(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| Error::WriteFile {
        path: path.into(),
        source,
    })
}

/// Runs `command`; its stdout on success, its stderr's tail in the error.
fn output(command: &mut Command) -> Result<String> {
    let program = format!("{command:?}");
    let out = command.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    Err(Error::InstallPackages {
        packages: "from bookworm-backports".into(),
        command: program,
        status: format!("{}: {tail}", out.status),
    })
}

fn run(command: &mut Command) -> Result<()> {
    output(command).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_taken_from_the_meta_package_depends() {
        let show = "Package: linux-image-amd64\nVersion: 6.12.95-1~bpo12+1\n\
                    Depends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n";
        assert_eq!(
            depends_on_kernel(show).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
    }

    #[test]
    fn meta_package_without_a_kernel_is_none() {
        assert_eq!(depends_on_kernel("Depends: firmware-linux\n"), None);
        assert_eq!(depends_on_kernel("Package: x\n"), None);
    }
}
