//! The initramfs images booted as L1 and L2, built from the host's busybox
//! and stock kernel modules and cached under `integration/cache/`, named by a
//! hash of everything that goes in (kernel version, file sizes and mtimes,
//! script text), so a rerun with unchanged inputs reuses the file as is.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{Error, Result};
use crate::host::{elf_is_static, HostEnv, KernelTree};
use crate::modules::{self, ModuleRequest};
use crate::scenario::Scenario;
use crate::scripts;

/// Bumped when the image layout changes in a way the hashed inputs miss.
const FORMAT_VERSION: &str = "testbed-images-1";

/// L1 needs KVM (nested SVM), VFIO, and virtio-pci + 9p for the host shares.
pub const L1_MODULES: &[ModuleRequest] = &[
    ModuleRequest::required(&["kvm_amd"]),
    ModuleRequest::required(&["vfio"]),
    ModuleRequest::required(&["vfio_iommu_type1"]),
    ModuleRequest::optional(&["vfio_virqfd"]),
    ModuleRequest::required(&["vfio-pci"]),
    ModuleRequest::required(&["virtio_pci"]),
    ModuleRequest::required(&["9pnet_virtio"]),
    ModuleRequest::required(&["9p"]),
    // The disk L0 gives L1 (`l0::L1_DISK_DEVICE`) for O_DIRECT disks of L2.
    ModuleRequest::required(&["virtio_blk"]),
    // The `net` scenario's tap and the vhost-net data path of the VMM under test.
    ModuleRequest::required(&["tun"]),
    ModuleRequest::required(&["vhost_net"]),
];

/// The images a scenario boots.
#[derive(Debug, Clone)]
pub struct Artefacts {
    /// L1's kernel: the extracted ELF vmlinux, or the bzImage if extraction failed.
    pub l1_kernel: PathBuf,
    /// L1's kernel release.
    pub l1_version: String,
    /// L2's kernel: the stock bzImage.
    pub kernel: PathBuf,
    /// L1 initramfs.
    pub l1_initrd: PathBuf,
    /// L2 initramfs for the scenario.
    pub l2_initrd: PathBuf,
}

/// A 64-bit FNV-1a hash: stable across Rust releases, unlike `DefaultHasher`.
#[derive(Debug, Clone)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl KeyHasher {
    /// Feeds bytes, followed by a separator so ("ab","c") != ("a","bc").
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        for byte in data.iter().chain(&[0xff]) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Feeds a string.
    pub fn str(&mut self, text: &str) -> &mut Self {
        self.bytes(text.as_bytes())
    }

    /// Feeds a file's identity: path, size and modification time (cheaper
    /// than hashing contents; package upgrades change all three).
    pub fn file(&mut self, path: &Path) -> &mut Self {
        let meta = fs::metadata(path).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        self.str(&path.display().to_string())
            .str(&format!("{len}:{mtime}"))
    }

    /// The key.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The artefact cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Uses (and creates) `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.into(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of artefact `prefix` with `key`; built with `build` unless
    /// present. Written to a temporary name and renamed, so a concurrent or
    /// interrupted build never leaves a truncated artefact behind.
    pub fn artefact(
        &self,
        prefix: &str,
        key: u64,
        ext: &str,
        build: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<PathBuf> {
        let path = self.dir.join(artefact_name(prefix, key, ext));
        if path.is_file() {
            log::debug!("cache hit: {}", path.display());
            return Ok(path);
        }
        log::info!("building {}", path.display());
        let bytes = build()?;
        // Tests of one binary build the same image on several threads at once:
        // each writer gets its own temporary file, and the renames race harmlessly.
        static WRITERS: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}-{}.tmp",
            artefact_name(prefix, key, ext),
            std::process::id(),
            WRITERS.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&tmp, bytes).map_err(|source| Error::WriteFile {
            path: tmp.clone(),
            source,
        })?;
        if let Err(source) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            if !path.is_file() {
                return Err(Error::WriteFile { path, source });
            }
        }
        Ok(path)
    }
}

/// `<prefix>-<16 hex digits>.<ext>`.
pub fn artefact_name(prefix: &str, key: u64, ext: &str) -> String {
    format!("{prefix}-{key:016x}.{ext}")
}

/// Files that go into an image besides busybox and modules.
struct ImageFiles<'a> {
    modules: &'a [PathBuf],
    scripts: &'a [(&'a str, &'a str)],
    /// Executables copied from the host: (path in the image, host file).
    binaries: &'a [(&'a str, &'a Path)],
}

fn image_key(host: &HostEnv, kernel: &str, kind: &str, files: &ImageFiles<'_>) -> u64 {
    let mut hasher = KeyHasher::default();
    hasher
        .str(FORMAT_VERSION)
        .str(kind)
        .str(kernel)
        .file(&host.busybox);
    for module in files.modules {
        hasher.file(module);
    }
    for (path, text) in files.scripts {
        hasher.str(path).str(text);
    }
    for (path, host_file) in files.binaries {
        hasher.str(path).file(host_file);
    }
    hasher.finish()
}

/// Lays out an initramfs: directories, /dev/console, busybox, the modules
/// with their load order in /etc/testbed/modules, and the scripts.
fn build_image(host: &HostEnv, files: &ImageFiles<'_>) -> Result<Vec<u8>> {
    let mut cpio = CpioWriter::new();
    for dir in [
        "bin",
        "dev",
        "etc",
        "etc/testbed",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
    ] {
        cpio.dir(dir);
    }
    for dir in ["run", "host", "work"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    let busybox = fs::read(&host.busybox).map_err(|source| Error::ReadFile {
        path: host.busybox.clone(),
        source,
    })?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    let mut order = String::new();
    for module in files.modules {
        let name = modules::image_name(module);
        cpio.file(
            &format!("lib/modules/{name}"),
            0o644,
            &modules::read_module(module)?,
        );
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("etc/testbed/modules", 0o644, order.as_bytes());
    for (path, text) in files.scripts {
        cpio.file(path, 0o755, text.as_bytes());
    }
    for (path, host_file) in files.binaries {
        let bytes = fs::read(host_file).map_err(|source| Error::ReadFile {
            path: host_file.to_path_buf(),
            source,
        })?;
        cpio.file(path, 0o755, &bytes);
    }
    Ok(cpio.finish())
}

/// The L1 image for `kernel`: generic, shared by every scenario and VMM.
pub fn l1_image(host: &HostEnv, cache: &Cache, kernel: &KernelTree) -> Result<PathBuf> {
    let modules = modules::resolve(&host.modprobe, &kernel.root, &kernel.version, L1_MODULES)?;
    let scripts = [("init", scripts::L1_INIT)];
    let files = ImageFiles {
        modules: &modules,
        scripts: &scripts,
        binaries: &[],
    };
    let key = image_key(host, &kernel.version, "l1", &files);
    cache.artefact("l1", key, "cpio", || build_image(host, &files))
}

/// L2's modules: always from the host's own kernel.
fn stock_modules(host: &HostEnv, requests: &[ModuleRequest]) -> Result<Vec<PathBuf>> {
    modules::resolve(
        &host.modprobe,
        Path::new("/"),
        &host.kernel_version,
        requests,
    )
}

/// The L2 image of `scenario`: the modules its devices need and its checks.
pub fn l2_image(host: &HostEnv, cache: &Cache, scenario: &Scenario) -> Result<PathBuf> {
    let requests = scenario.all_l2_modules();
    let modules = stock_modules(host, &requests)?;
    let checks = scripts::l2_checks_script(scenario);
    let finish = scripts::l2_finish_script(scenario);
    let scripts = [
        ("init", scripts::L2_INIT),
        ("etc/testbed/lib.sh", crate::checks::L2_LIB),
        ("etc/testbed/checks.sh", checks.as_str()),
        ("etc/testbed/finish.sh", finish.as_str()),
    ];
    let tools = scenario
        .tools
        .iter()
        .map(|t| Ok((t.image_path(), static_tool(cache, t.name(), t.source())?)))
        .collect::<Result<Vec<_>>>()?;
    let binaries: Vec<(&str, &Path)> = tools.iter().map(|(p, b)| (*p, b.as_path())).collect();
    let files = ImageFiles {
        modules: &modules,
        scripts: &scripts,
        binaries: &binaries,
    };
    let prefix = format!("l2-{}", scenario.name);
    let key = image_key(host, &host.kernel_version, &prefix, &files);
    cache.artefact(&prefix, key, "cpio", || build_image(host, &files))
}

/// The benchmark's L2 image: the nvme, virtio-blk and virtio-net drivers, the
/// bench /init and its static tools as (path in the image, host file):
/// `bin/iobench`, `bin/netbench`, `bartouch`.
pub fn l2_bench_image(
    host: &HostEnv,
    cache: &Cache,
    init: &str,
    tools: &[(&str, &Path)],
) -> Result<PathBuf> {
    let mut requests: Vec<ModuleRequest> = crate::device::Device::Nvme.l2_modules().to_vec();
    // The blk launch's disk and the net launch's interface.
    requests.extend([
        ModuleRequest::required(&["virtio_pci"]),
        ModuleRequest::required(&["virtio_blk"]),
        ModuleRequest::required(&["virtio_net"]),
    ]);
    let modules = stock_modules(host, &requests)?;
    let scripts = [("init", init)];
    let files = ImageFiles {
        modules: &modules,
        scripts: &scripts,
        binaries: tools,
    };
    let prefix = "l2-bench";
    let key = image_key(host, &host.kernel_version, prefix, &files);
    cache.artefact(prefix, key, "cpio", || build_image(host, &files))
}

/// The rustc that builds the guest tools: `$RUSTC`, else `rustc` on the PATH.
fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// The compiler's version line, part of the guest tools' cache keys.
pub fn rustc_version() -> Result<String> {
    let rustc = rustc();
    let out = Command::new(&rustc)
        .arg("-V")
        .output()
        .map_err(|source| Error::Spawn {
            program: rustc.clone(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The arguments that build `source` into a static, stripped `output` named `name`.
pub fn static_rustc_args(name: &str, source: &Path, output: &Path) -> Vec<String> {
    [
        "--crate-name",
        name,
        "--edition",
        "2021",
        "-C",
        "opt-level=3",
        "-C",
        "panic=abort",
        "-C",
        "strip=symbols",
        "-C",
        "target-feature=+crt-static",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([output.display().to_string(), source.display().to_string()])
    .collect()
}

/// A std-only guest tool (`src/bin/NAME.rs`) as a static executable for L2, built once
/// per source text and compiler. The cached file is executable, so L1 can run it
/// too (the benchmark's netbench peer).
pub fn static_tool(cache: &Cache, name: &str, source_text: &str) -> Result<PathBuf> {
    let version = rustc_version()?;
    let key = KeyHasher::default().str(source_text).str(&version).finish();
    let path = build_static_tool(cache, name, source_text, key)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| {
        Error::WriteFile {
            path: path.clone(),
            source: e,
        }
    })?;
    Ok(path)
}

fn build_static_tool(cache: &Cache, name: &str, source_text: &str, key: u64) -> Result<PathBuf> {
    cache.artefact(name, key, "bin", || {
        let stem = cache
            .dir()
            .join(format!(".{name}-{key:016x}-{}", std::process::id()));
        let (source, output) = (stem.with_extension("rs"), stem.with_extension("out"));
        fs::write(&source, source_text).map_err(|e| Error::WriteFile {
            path: source.clone(),
            source: e,
        })?;
        let built = compile_tool(name, &source, &output);
        let _ = fs::remove_file(&source);
        let bytes = built.and_then(|()| {
            fs::read(&output).map_err(|e| Error::ReadFile {
                path: output.clone(),
                source: e,
            })
        });
        let _ = fs::remove_file(&output);
        let bytes = bytes?;
        if !elf_is_static(&bytes) {
            return Err(Error::BuildGuestTool {
                what: name.into(),
                command: rustc(),
                detail: "the result needs a dynamic loader (crt-static ignored?)".into(),
            });
        }
        Ok(bytes)
    })
}

fn compile_tool(name: &str, source: &Path, output: &Path) -> Result<()> {
    let args = static_rustc_args(name, source, output);
    let command = format!("{} {}", rustc(), args.join(" "));
    log::info!("building {name}: {command}");
    let out = Command::new(rustc())
        .args(&args)
        .output()
        .map_err(|source| Error::Spawn {
            program: rustc(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(Error::BuildGuestTool {
        what: name.into(),
        command,
        detail: format!("{}: {}", out.status, crate::outcome::tail(&stderr, 10)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_any_input() {
        let key = |a: &str, b: &str| KeyHasher::default().str(a).str(b).finish();
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_ne!(key("6.1.0-1", "init"), key("6.1.0-2", "init"));
        assert_eq!(key("x", "y"), key("x", "y"));
    }

    #[test]
    fn key_is_stable_fnv1a() {
        // FNV-1a of the empty input followed by the 0xff separator.
        let expected = (0xcbf2_9ce4_8422_2325u64 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        assert_eq!(KeyHasher::default().bytes(&[]).finish(), expected);
    }

    #[test]
    fn file_identity_includes_size() {
        let dir = std::env::temp_dir().join(format!("testbed-key-{}", std::process::id()));
        fs::create_dir_all(&dir).ok();
        let file = dir.join("f");
        fs::write(&file, "a").ok();
        let before = KeyHasher::default().file(&file).finish();
        fs::write(&file, "ab").ok();
        let after = KeyHasher::default().file(&file).finish();
        fs::remove_dir_all(&dir).ok();
        assert_ne!(before, after);
    }

    #[test]
    fn artefact_is_built_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("testbed-cache-{}", std::process::id()));
        let cache = Cache::new(&dir);
        let mut builds = 0;
        let mut get = |cache: &Cache| {
            cache.artefact("l1", 7, "cpio", || {
                builds += 1;
                Ok(b"image".to_vec())
            })
        };
        let first = cache.as_ref().ok().map(&mut get);
        let second = cache.as_ref().ok().map(&mut get);
        fs::remove_dir_all(&dir).ok();
        assert!(matches!(first, Some(Ok(p)) if p.ends_with("l1-0000000000000007.cpio")));
        assert!(matches!(second, Some(Ok(_))));
        assert_eq!(builds, 1);
    }

    #[test]
    fn threads_building_one_artefact_at_once_all_get_it() {
        let dir = std::env::temp_dir().join(format!("testbed-race-{}", std::process::id()));
        let cache = Cache::new(&dir).expect("temp cache dir");
        let barrier = std::sync::Barrier::new(8);
        let results: Vec<Result<PathBuf>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        cache.artefact("l2", 9, "cpio", || {
                            barrier.wait();
                            Ok(vec![0u8; 1 << 20])
                        })
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        let leftovers = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        fs::remove_dir_all(&dir).ok();
        for r in &results {
            assert!(
                matches!(r, Ok(p) if p.ends_with("l2-0000000000000009.cpio")),
                "{r:?}"
            );
        }
        assert_eq!(leftovers, 1, "temporary files left behind");
    }
}
