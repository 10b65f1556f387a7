//! What the benchmark runs inside L2: a /init that prints its marker, says
//! whether the passed-through nvme controller is on its PCI bus and, in `nvme`
//! mode, binds the stock driver and runs `iobench` (sequential 64 KiB, then
//! random 4 KiB reads, O_DIRECT, several in flight) before powering off. The
//! mode and load come from L2's command line (`testbed.bench=boot|nvme`,
//! `testbed.iosecs=`, `testbed.qd=`), so one image serves every launch.
//! `iobench` (src/bin/iobench.rs) is compiled here, statically, with rustc.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::elf_is_static;
use crate::images::{Cache, KeyHasher};

/// iobench's source, compiled into a static executable for L2.
const IOBENCH_SOURCE: &str = include_str!("../bin/iobench.rs");

/// L2's /init for the benchmark.
pub fn l2_init() -> String {
    let (vendor, device) = Device::Nvme.pci_id();
    format!(
        r#"#!/bin/sh
echo TESTBED-INIT
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=boot; secs=4; qd=4
for w in $(cat /proc/cmdline); do
	case $w in
	testbed.bench=*) mode=${{w#*=}};;
	testbed.iosecs=*) secs=${{w#*=}};;
	testbed.qd=*) qd=${{w#*=}};;
	esac
done
nvme=none
for d in /sys/bus/pci/devices/*; do
	[ -e "$d/vendor" ] || continue
	read v < "$d/vendor"; read i < "$d/device"
	[ "$v:$i" = "0x{vendor:04x}:0x{device:04x}" ] && nvme=${{d##*/}}
done
echo "TESTBED-BENCH mode=$mode nvme=$nvme"
if [ "$mode" = nvme ] && [ "$nvme" != none ]; then
	while read m; do insmod /lib/modules/$m || echo "TESTBED-BENCH insmod $m failed"; done < /etc/testbed/modules
	n=0
	while [ ! -b /dev/nvme0n1 ] && [ $n -lt 300 ]; do usleep 100000; n=$((n + 1)); done
	if [ -b /dev/nvme0n1 ]; then
		echo "TESTBED-BENCH ready"
		iobench --mode seq --bs 65536 --qd $qd --secs $secs /dev/nvme0n1
		iobench --mode rand --bs 4096 --qd $qd --secs $secs /dev/nvme0n1
	else
		echo "TESTBED-BENCH error: no /dev/nvme0n1 after 30 s"
	fi
fi
echo TESTBED-DONE
poweroff -f
"#
    )
}

/// The rustc that builds iobench: `$RUSTC`, else `rustc` on the PATH.
fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// The compiler's version line, part of the cache key.
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

/// The arguments that build `source` into a static, stripped `output`.
pub fn iobench_rustc_args(source: &Path, output: &Path) -> Vec<String> {
    [
        "--crate-name",
        "iobench",
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

/// The static iobench executable, built once per source text and compiler.
pub fn iobench(cache: &Cache) -> Result<PathBuf> {
    let version = rustc_version()?;
    let key = KeyHasher::default()
        .str(IOBENCH_SOURCE)
        .str(&version)
        .finish();
    cache.artefact("iobench", key, "bin", || {
        let stem = cache
            .dir()
            .join(format!(".iobench-{key:016x}-{}", std::process::id()));
        let (source, output) = (stem.with_extension("rs"), stem.with_extension("out"));
        std::fs::write(&source, IOBENCH_SOURCE).map_err(|e| Error::WriteFile {
            path: source.clone(),
            source: e,
        })?;
        let built = compile(&source, &output);
        let _ = std::fs::remove_file(&source);
        let bytes = built.and_then(|()| {
            std::fs::read(&output).map_err(|e| Error::ReadFile {
                path: output.clone(),
                source: e,
            })
        });
        let _ = std::fs::remove_file(&output);
        let bytes = bytes?;
        if !elf_is_static(&bytes) {
            return Err(Error::BuildGuestTool {
                what: "iobench".into(),
                command: rustc(),
                detail: "the result needs a dynamic loader (crt-static ignored?)".into(),
            });
        }
        Ok(bytes)
    })
}

fn compile(source: &Path, output: &Path) -> Result<()> {
    let args = iobench_rustc_args(source, output);
    let command = format!("{} {}", rustc(), args.join(" "));
    log::info!("building iobench: {command}");
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
        what: "iobench".into(),
        command,
        detail: format!("{}: {}", out.status, crate::outcome::tail(&stderr, 10)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_its_marker_first_and_finds_nvme_by_id() {
        let init = l2_init();
        assert!(init.starts_with("#!/bin/sh\necho TESTBED-INIT\n"));
        assert!(init.contains("\"0x1b36:0x0010\""));
        assert!(init.contains("echo \"TESTBED-BENCH mode=$mode nvme=$nvme\""));
    }

    #[test]
    fn init_runs_both_loads_with_the_command_line_settings() {
        let init = l2_init();
        assert!(init.contains("iobench --mode seq --bs 65536 --qd $qd --secs $secs /dev/nvme0n1"));
        assert!(init.contains("iobench --mode rand --bs 4096 --qd $qd --secs $secs /dev/nvme0n1"));
        assert!(init.contains("testbed.iosecs=*) secs=${w#*=};;"));
    }

    #[test]
    fn iobench_is_linked_statically() {
        let args = iobench_rustc_args(Path::new("/c/i.rs"), Path::new("/c/i.out"));
        assert!(args
            .windows(2)
            .any(|w| w == ["-C", "target-feature=+crt-static"]));
        assert_eq!(args[args.len() - 2..], ["/c/i.out", "/c/i.rs"]);
    }
}
