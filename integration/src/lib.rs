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
//! [`bench`](mod@bench) runs QEMU and Strait alternately in one L1 boot and reports
//! their ratios (`testbed bench`); [`bench::series`] launches one scenario's
//! guest many times in one L1 boot ([`Testbed::run_series`]).
//!
//! # Module order
//!
//! Imports point one way, down this list; no file imports one above it, and
//! no core module imports `bench`:
//!
//! 1. `error`, `cpio`: the crate's errors; a cpio writer.
//! 2. `host` (prerequisites on the host), `modules` (kernel modules to pack).
//! 3. `device`: the emulated PCI devices under test.
//! 4. `checks`: L2's checks, per device; `p2p`: the peer-to-peer DMA checks.
//! 5. `scenario`: what one run does, and the built-in scenarios.
//! 6. `l0` (L0's QEMU and the watch for a stalled L1), `vmm` (the VMM under
//!    test: QEMU's command line or Strait's spec).
//! 7. `outcome` (what a run produced), `scripts` (L1's and L2's shell),
//!    `options` (how the testbed runs; paths L1 can see).
//! 8. `images` (L1 and L2 initramfs, cached), `kernel` (L1's vmlinux).
//! 9. `run`: one L1 boot and one run, as a linear recipe.
//! 10. this file: [`Testbed`], the entry type (new, prepare, run with reruns).
//! 11. `bench`, on top of all the above: `plan` <- `probe` <- `l1mem` <- `agent`
//!     (inside L1); `plan` <- `analysis` <- `sweep` <- `metrics` <- `report`; `guest` (the L2
//!     side); `boots` (an agent's L1 boots, on `run`) <- `series` and the
//!     benchmark itself in `bench/mod.rs`.

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
pub mod net;
mod options;
pub mod outcome;
pub mod p2p;
pub mod preflight;
pub mod rootdisk;
mod run;
pub mod scenario;
pub mod scripts;
pub mod vmm;

use std::path::PathBuf;

pub use device::Device;
pub use error::{Error, Result};
pub use images::Artefacts;
pub use options::{crate_dir, default_strait_binary, workspace_dir, TestbedOptions};
pub use outcome::{CheckResult, Outcome, Timings};
pub use scenario::{HugePages, Scenario};
pub use vmm::Vmm;

use host::HostEnv;
use images::Cache;
use options::hidden_in_l1;

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
