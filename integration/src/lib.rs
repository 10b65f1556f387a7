//! The nested-KVM testbed. No build machine has a GPU or a KVM that boots a
//! stock kernel, so guests are tested three levels deep (see
//! the project's testbed notes, summarised in integration/README.md):
//!
//! * L0: QEMU with TCG on the host, emulating q35 + an Intel IOMMU + the
//!   devices under test (nvme, bochs-display, ivshmem, edu);
//! * L1: Debian's kernel from a small initramfs, with kvm_amd (nested SVM)
//!   and vfio-pci, running the VMM under test from the host's tree (9p);
//! * L2: the guest that VMM boots, same kernel, whose /init runs the
//!   scenario's checks and powers off.
//!
//! ```no_run
//! use testbed::{scenario, Testbed, TestbedOptions};
//! let outcome = Testbed::new(TestbedOptions::default())?.run(&scenario::nvme())?;
//! outcome.verify()?;
//! # Ok::<(), testbed::Error>(())
//! ```
//!
//! [`bench`] runs QEMU and Strait alternately in one L1 boot and reports
//! their ratios (`testbed bench`); [`bench::series`] launches one scenario's
//! guest many times in one L1 boot ([`Testbed::run_series`]).

pub mod bench;
pub mod checks;
pub mod cpio;
pub mod device;
mod error;
pub mod host;
pub mod images;
pub mod kernel;
pub mod l0;
pub mod modules;
pub mod outcome;
mod run;
pub mod scenario;
pub mod scripts;
pub mod vmm;

use std::path::{Path, PathBuf};

pub use device::Device;
pub use error::{Error, Result};
pub use outcome::{CheckResult, Outcome, Timings};
pub use scenario::{HugePages, Scenario};
pub use vmm::Vmm;

use host::HostEnv;
use images::Cache;

/// How the testbed runs.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// The VMM that boots L2 inside L1.
    pub vmm: Vmm,
    /// Artefact cache and run directories; default `integration/cache`.
    /// Must not lie under /tmp, /run, /proc, /sys or /dev: L1 mounts its own
    /// file systems there over the host's tree.
    pub cache_dir: PathBuf,
    /// Install missing Debian packages (root only).
    pub install_missing: bool,
    /// L1 vCPUs.
    pub l0_smp: u32,
    /// L1 RAM in MiB; default sized from the scenario.
    pub l0_memory_mib: Option<u32>,
    /// Force the first check of each scenario to FAIL (default: env TESTBED_BREAK=1).
    pub break_checks: bool,
    /// Keep the devices' backing files after a passing run.
    pub keep_backing_files: bool,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        Self {
            vmm: Vmm::Qemu,
            cache_dir: crate_dir().join("cache"),
            install_missing: true,
            l0_smp: 2,
            l0_memory_mib: None,
            break_checks: std::env::var("TESTBED_BREAK").is_ok_and(|v| v == "1"),
            keep_backing_files: false,
        }
    }
}

/// The `integration/` directory (this crate's manifest directory).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (the parent of `integration/`).
pub fn workspace_dir() -> PathBuf {
    let dir = crate_dir();
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// The strait binary of a release build of this workspace.
pub fn default_strait_binary() -> PathBuf {
    workspace_dir().join("target/release/strait")
}

/// The images a scenario boots.
#[derive(Debug, Clone)]
pub struct Artefacts {
    /// L1's kernel: the extracted ELF vmlinux, or the bzImage if extraction failed.
    pub l1_kernel: PathBuf,
    /// L2's kernel: the stock bzImage.
    pub kernel: PathBuf,
    /// L1 initramfs.
    pub l1_initrd: PathBuf,
    /// L2 initramfs for the scenario.
    pub l2_initrd: PathBuf,
}

/// A ready testbed: prerequisites found, cache open.
#[derive(Debug)]
pub struct Testbed {
    opts: TestbedOptions,
    host: HostEnv,
    cache: Cache,
}

/// Attempts of a run whose L1 froze (a known flaw of the outer emulation, see
/// [`Outcome::nested_flake`]); a run that fails otherwise is never repeated.
const FLAKE_ATTEMPTS: usize = 3;

/// Host directories L1 covers with its own mounts inside the chroot. L1 keeps
/// the top directory of the cache's tree visible when it sits under a tmpfs one
/// (`/tmp/clone/...`), but never anything under the pseudo file systems.
const HIDDEN: &[&str] = &["/proc", "/sys", "/dev"];
const TMPFS: &[&str] = &["/tmp", "/run"];

/// The directory L1 keeps visible for `dir` when `dir` is under a tmpfs mount
/// of the chroot: its first two components (`/tmp/clone`). `None` when `dir`
/// needs nothing kept.
fn kept_top(dir: &Path) -> Option<PathBuf> {
    TMPFS
        .iter()
        .any(|t| dir.starts_with(t))
        .then(|| dir.components().take(3).collect())
}

/// Why L1 could not see `path` (which must be canonical) beside the cache dir.
fn hidden_in_l1(path: &Path, cache: &Path) -> Option<String> {
    if HIDDEN.iter().any(|h| path.starts_with(h)) || TMPFS.iter().any(|t| path == Path::new(t)) {
        return Some(format!("{} is covered by L1's own mounts", path.display()));
    }
    match (kept_top(path), kept_top(cache)) {
        (Some(p), Some(c)) if p == c => None,
        (Some(p), _) => Some(format!(
            "{} is under a tmpfs of L1's chroot and outside {}, the one tree L1 keeps",
            path.display(),
            p.display()
        )),
        _ => None,
    }
}

impl Testbed {
    /// Finds (or installs) the prerequisites and opens the cache.
    pub fn new(opts: TestbedOptions) -> Result<Self> {
        let host = HostEnv::discover(opts.install_missing)?;
        let cache = Cache::new(&opts.cache_dir)?;
        let dir = std::fs::canonicalize(cache.dir()).map_err(|source| Error::ReadFile {
            path: cache.dir().into(),
            source,
        })?;
        if let Some(why) = hidden_in_l1(&dir, &dir) {
            return Err(Error::MissingPrerequisites {
                missing: format!("a cache dir L1 can see ({why})"),
                reason: "choose one outside /proc, /sys, /dev, and not /tmp or /run itself".into(),
            });
        }
        if let Vmm::Strait { binary } = &opts.vmm {
            if !binary.is_file() {
                return Err(Error::MissingPrerequisites {
                    missing: format!("the strait binary {}", binary.display()),
                    reason: "build it with `cargo build --release -p vmm`".into(),
                });
            }
            let bin = std::fs::canonicalize(binary).map_err(|source| Error::ReadFile {
                path: binary.clone(),
                source,
            })?;
            if let Some(why) = hidden_in_l1(&bin, &dir) {
                return Err(Error::MissingPrerequisites {
                    missing: format!("a strait binary L1 can see ({why})"),
                    reason: "keep it in the same tree as the testbed's cache".into(),
                });
            }
        }
        let cache = Cache::new(&dir)?;
        Ok(Self { opts, host, cache })
    }

    /// The options in use.
    pub fn options(&self) -> &TestbedOptions {
        &self.opts
    }

    /// The host's kernel version used for L1 and L2.
    pub fn kernel_version(&self) -> &str {
        &self.host.kernel_version
    }

    /// Builds (or finds in the cache) the images `scenario` boots.
    pub fn prepare(&self, scenario: &Scenario) -> Result<Artefacts> {
        scenario.validate()?;
        let l2_initrd = images::l2_image(&self.host, &self.cache, scenario)?;
        self.artefacts_with(l2_initrd)
    }

    /// L1's kernel and image, L2's kernel, and the given L2 image.
    fn artefacts_with(&self, l2_initrd: PathBuf) -> Result<Artefacts> {
        let bzimage = &self.host.kernel_image;
        let l1_kernel = kernel::vmlinux(bzimage, &self.cache).unwrap_or_else(|e| {
            log::warn!("booting L1 from the bzImage (slower under TCG): {e}");
            bzimage.clone()
        });
        Ok(Artefacts {
            l1_kernel,
            kernel: bzimage.clone(),
            l1_initrd: images::l1_image(&self.host, &self.cache)?,
            l2_initrd,
        })
    }

    /// Runs `scenario` end to end and collects what happened. A run that
    /// happened but failed is an `Ok(Outcome)`; call [`Outcome::verify`].
    pub fn run(&self, scenario: &Scenario) -> Result<Outcome> {
        let scenario = if self.opts.break_checks {
            scenario.clone().with_broken_check()
        } else {
            scenario.clone()
        };
        let artefacts = self.prepare(&scenario)?;
        let context = run::RunContext {
            opts: &self.opts,
            host: &self.host,
            cache: &self.cache,
            scenario: &scenario,
            artefacts: &artefacts,
        };
        let mut reruns = Vec::new();
        loop {
            let mut outcome = run::run(&context)?;
            let flake = outcome.nested_flake();
            match flake {
                Some(why) if reruns.len() + 1 < FLAKE_ATTEMPTS => {
                    log::warn!("{why}; running again in a fresh L1");
                    reruns.push(format!("{why} in {}", outcome.work_dir.display()));
                }
                _ => {
                    outcome.reruns = reruns;
                    return Ok(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod visibility_tests {
    use super::*;

    #[test]
    fn checkout_under_tmp_is_kept_whole() {
        let cache = Path::new("/tmp/clone/integration/cache");
        assert_eq!(kept_top(cache), Some(PathBuf::from("/tmp/clone")));
        assert_eq!(hidden_in_l1(cache, cache), None);
        let bin = Path::new("/tmp/clone/target/release/strait");
        assert_eq!(hidden_in_l1(bin, cache), None);
    }

    #[test]
    fn binary_in_another_tmp_tree_is_hidden() {
        let cache = Path::new("/tmp/clone/integration/cache");
        assert!(hidden_in_l1(Path::new("/tmp/other/strait"), cache).is_some());
    }

    #[test]
    fn pseudo_file_systems_and_bare_tmp_are_hidden() {
        for p in ["/proc/x", "/dev/shm/c", "/tmp", "/run"] {
            assert!(hidden_in_l1(Path::new(p), Path::new(p)).is_some(), "{p}");
        }
    }

    #[test]
    fn ordinary_paths_need_nothing_kept() {
        let cache = Path::new("/work/repo/integration/cache");
        assert_eq!(kept_top(cache), None);
        assert_eq!(hidden_in_l1(cache, cache), None);
        assert_eq!(hidden_in_l1(Path::new("/opt/strait"), cache), None);
    }
}
