//! The `root-disk` scenario's ext4 root filesystem: built on the host without root
//! privileges or loop mounts (`mke2fs -t ext4 -d DIR IMG SIZE`, e2fsprogs), handed to L2
//! as a virtio-blk disk, and read back after L0 exits with `debugfs -R 'cat /FILE' IMG`.
//!
//! L2's initramfs loads virtio_pci, virtio_blk and ext4, mounts /dev/vda on /newroot
//! (the `root-disk-mount` check) and, when every check passed, `switch_root`s to it; the
//! disk's own /init ([`ROOT_INIT`]) writes the file, syncs and powers off.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The image's file name in the work directory.
pub const ROOT_IMAGE: &str = "root.img";

/// What the guest writes on its root disk and the host reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootDisk {
    /// Image size in MiB.
    pub size_mib: u32,
    /// Path of the file in the filesystem, from its root (`/FILE`).
    pub file: &'static str,
    /// The line the guest writes into it.
    pub content: &'static str,
}

/// The root filesystem's /init: runs after `switch_root`, as PID 1.
const ROOT_INIT: &str = r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
root=$(awk '$2 == "/" { print $1, $3 }' /proc/mounts | tail -n 1)
echo "@CONTENT@" > "@FILE@" && sync
got=$(cat "@FILE@")
if [ "$got" = "@CONTENT@" ]; then
	echo "TESTBED-CHECK root-disk-write PASS root is $root; wrote @FILE@"
	failed=0
else
	echo "TESTBED-CHECK root-disk-write FAIL root is $root; read back '$got'"
	failed=1
fi
echo "TESTBED-DONE failed=$failed"
sync
poweroff -f
"#;

/// Build the image in `work_dir` with `busybox` as its only program.
pub fn build(mke2fs: &Path, busybox: &Path, work_dir: &Path, disk: &RootDisk) -> Result<PathBuf> {
    let dir = work_dir.join("rootfs");
    for sub in ["bin", "dev", "proc", "sys", "tmp", "newroot"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|source| Error::CreateDir { path: d, source })?;
    }
    let write = |path: PathBuf, bytes: &[u8], mode: u32| {
        fs::write(&path, bytes)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
            .map_err(|source| Error::WriteFile { path, source })
    };
    let bb = fs::read(busybox).map_err(|source| Error::ReadFile {
        path: busybox.to_path_buf(),
        source,
    })?;
    write(dir.join("bin/busybox"), &bb, 0o755)?;
    let init = ROOT_INIT
        .replace("@CONTENT@", disk.content)
        .replace("@FILE@", disk.file);
    write(dir.join("init"), init.as_bytes(), 0o755)?;
    let sh = dir.join("bin/sh");
    std::os::unix::fs::symlink("busybox", &sh)
        .map_err(|source| Error::WriteFile { path: sh, source })?;
    let image = work_dir.join(ROOT_IMAGE);
    let output = Command::new(mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&dir)
        .arg(&image)
        .arg(format!("{}M", disk.size_mib))
        .output()
        .map_err(|source| Error::Spawn {
            program: mke2fs.display().to_string(),
            source,
        })?;
    let _ = fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(Error::BuildGuestTool {
            what: "the root filesystem image".into(),
            command: format!(
                "{} -t ext4 -d {} {}",
                mke2fs.display(),
                dir.display(),
                image.display()
            ),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(image)
}

/// `debugfs -R 'cat FILE' IMG`: the file's content as the host sees it, or why not.
pub fn read_file(debugfs: &Path, image: &Path, file: &str) -> std::result::Result<String, String> {
    let output = Command::new(debugfs)
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .map_err(|e| format!("running {}: {e}", debugfs.display()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
