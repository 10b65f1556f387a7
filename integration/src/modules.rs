//! Kernel modules for the L1 and L2 initramfs images. kmod's
//! `modprobe -S VER --show-depends NAME` lists the module files in load order
//! (dependencies first); the images carry those files and a list that /init
//! walks with busybox `insmod`. Host modprobe configuration is ignored so the
//! images hold stock modules with stock options.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// One kernel module asked for: the first name that resolves wins (module
/// names changed between releases, e.g. bochs vs bochs-drm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleRequest {
    /// Alternative names, tried in order.
    pub names: &'static [&'static str],
    /// When set, a module no name of which resolves is skipped (e.g.
    /// vfio_virqfd, merged into vfio in newer kernels).
    pub optional: bool,
}

impl ModuleRequest {
    /// A module that must exist (as a file or built in).
    pub const fn required(names: &'static [&'static str]) -> Self {
        Self {
            names,
            optional: false,
        }
    }

    /// A module that may be absent.
    pub const fn optional(names: &'static [&'static str]) -> Self {
        Self {
            names,
            optional: true,
        }
    }
}

/// One line of `modprobe --show-depends` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependLine {
    /// A module file to load.
    Insmod(PathBuf),
    /// A module compiled into the kernel: nothing to load.
    Builtin(String),
}

/// Parses `modprobe --show-depends` output. Options after the path (from
/// modprobe.d) are dropped; unknown lines are ignored.
pub fn parse_show_depends(output: &str) -> Vec<DependLine> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("insmod"), Some(path)) => Some(DependLine::Insmod(PathBuf::from(path))),
                (Some("builtin"), Some(name)) => Some(DependLine::Builtin(name.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// Appends the files of `lines` to `order`, keeping the first occurrence of
/// each: a module listed again by a later request is already loaded.
pub fn merge_load_order(order: &mut Vec<PathBuf>, lines: &[DependLine]) {
    for line in lines {
        if let DependLine::Insmod(path) = line {
            if !order.contains(path) {
                order.push(path.clone());
            }
        }
    }
}

/// Resolves `requests` for kernel `version`, whose `lib/modules` is under `root` (`/`
/// for the host's own), into module files in load order.
pub fn resolve(
    modprobe: &Path,
    root: &Path,
    version: &str,
    requests: &[ModuleRequest],
) -> Result<Vec<PathBuf>> {
    let mut order = Vec::new();
    for request in requests {
        let mut last_error = String::from("no names given");
        let mut found = false;
        for name in request.names {
            match show_depends(modprobe, root, version, name) {
                Ok(lines) => {
                    merge_load_order(&mut order, &lines);
                    found = true;
                    break;
                }
                Err(detail) => last_error = detail,
            }
        }
        if !found && !request.optional {
            return Err(Error::ResolveModule {
                module: request.names.join("|"),
                version: version.to_string(),
                detail: last_error,
            });
        }
    }
    Ok(order)
}

fn show_depends(
    modprobe: &Path,
    root: &Path,
    version: &str,
    name: &str,
) -> std::result::Result<Vec<DependLine>, String> {
    let mut command = Command::new(modprobe);
    if root != Path::new("/") {
        command.arg("-d").arg(root);
    }
    let output = command
        .args(["-C", "/dev/null", "-S", version, "--show-depends", name])
        .output()
        .map_err(|e| format!("running {}: {e}", modprobe.display()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(parse_show_depends(&String::from_utf8_lossy(&output.stdout)))
}

/// How a module file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain `.ko`.
    None,
    /// `.ko.xz`.
    Xz,
    /// `.ko.zst`.
    Zstd,
    /// `.ko.gz`.
    Gzip,
}

impl Compression {
    /// Classifies a module path by its extension.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Self::Xz,
            Some("zst") => Self::Zstd,
            Some("gz") => Self::Gzip,
            _ => Self::None,
        }
    }

    /// The decompressor command (busybox insmod loads plain `.ko` files only).
    pub fn tool(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Xz => Some("xz"),
            Self::Zstd => Some("zstd"),
            Self::Gzip => Some("gzip"),
        }
    }
}

/// The file name a module gets in an image: its base name with any
/// compression suffix removed (`kvm-amd.ko.xz` -> `kvm-amd.ko`).
pub fn image_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.find(".ko") {
        Some(end) => format!("{}.ko", &name[..end]),
        None => name,
    }
}

/// Reads a module file, decompressing it when needed.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let Some(tool) = Compression::of(path).tool() else {
        return std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        });
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| Error::Decompress {
            path: path.to_path_buf(),
            detail: format!("running {tool}: {e}"),
        })?;
    if !output.status.success() {
        let detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(Error::Decompress {
            path: path.to_path_buf(),
            detail,
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_depends_lines_are_parsed_with_options_dropped() {
        let out = "insmod /lib/modules/v/kernel/virt/lib/irqbypass.ko \n\
                   builtin crc32c\n\
                   insmod /lib/modules/v/kernel/arch/x86/kvm/kvm-amd.ko nested=1\n\
                   garbage\n";
        assert_eq!(
            parse_show_depends(out),
            vec![
                DependLine::Insmod(PathBuf::from("/lib/modules/v/kernel/virt/lib/irqbypass.ko")),
                DependLine::Builtin("crc32c".into()),
                DependLine::Insmod(PathBuf::from(
                    "/lib/modules/v/kernel/arch/x86/kvm/kvm-amd.ko"
                )),
            ]
        );
    }

    #[test]
    fn merge_keeps_first_occurrence_in_order() {
        let lines = |names: &[&str]| -> Vec<DependLine> {
            names
                .iter()
                .map(|n| DependLine::Insmod(PathBuf::from(n)))
                .collect()
        };
        let mut order = Vec::new();
        merge_load_order(&mut order, &lines(&["vfio.ko", "vfio.ko", "vfio-pci.ko"]));
        merge_load_order(&mut order, &lines(&["vfio.ko", "vfio_iommu_type1.ko"]));
        let names: Vec<_> = order
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["vfio.ko", "vfio-pci.ko", "vfio_iommu_type1.ko"]);
    }

    #[test]
    fn builtin_modules_add_no_files() {
        let mut order = Vec::new();
        merge_load_order(&mut order, &[DependLine::Builtin("kvm".into())]);
        assert!(order.is_empty());
    }

    #[test]
    fn compression_follows_extension() {
        assert_eq!(Compression::of(Path::new("/m/kvm.ko")), Compression::None);
        assert_eq!(Compression::of(Path::new("/m/kvm.ko.xz")), Compression::Xz);
        assert_eq!(
            Compression::of(Path::new("/m/kvm.ko.zst")),
            Compression::Zstd
        );
    }

    #[test]
    fn image_name_strips_compression_suffix() {
        assert_eq!(image_name(Path::new("/m/kvm-amd.ko.zst")), "kvm-amd.ko");
        assert_eq!(image_name(Path::new("/m/9p.ko")), "9p.ko");
    }

    #[test]
    fn missing_required_module_is_resolve_error() {
        let missing = [ModuleRequest::required(&["no-such-module-testbed"])];
        let result = resolve(
            Path::new("/nonexistent/modprobe"),
            Path::new("/"),
            "0.0",
            &missing,
        );
        assert!(matches!(result, Err(Error::ResolveModule { .. })));
    }

    #[test]
    fn missing_optional_module_is_skipped() {
        let missing = [ModuleRequest::optional(&["no-such-module-testbed"])];
        let result = resolve(
            Path::new("/nonexistent/modprobe"),
            Path::new("/"),
            "0.0",
            &missing,
        );
        assert!(matches!(result, Ok(files) if files.is_empty()));
    }
}
