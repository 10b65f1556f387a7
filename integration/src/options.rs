//! How the testbed runs ([`TestbedOptions`]), where this checkout keeps
//! its parts (the crate and workspace directories, the release strait
//! binary), and which host paths L1 can see at all: L1 chroots into the
//! host's tree over 9p and mounts its own file systems on top, so a cache or
//! binary under those mounts would be invisible to it.

use std::path::{Path, PathBuf};

use crate::vmm::Vmm;

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
    /// 1 GiB pages L1 reserves on its command line; default: those the scenario's RAM
    /// needs (the benchmark reserves its own).
    pub l1_1g_pages: Option<u32>,
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
            l1_1g_pages: None,
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
pub(crate) fn hidden_in_l1(path: &Path, cache: &Path) -> Option<String> {
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

#[cfg(test)]
mod tests {
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
