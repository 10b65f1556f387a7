//! Handles a privileged launcher opened for Strait and passed as inherited file
//! descriptors (`--kvm-fd N`, `--vfio-container-fd N`, `--vfio-group-fd N`), so Strait
//! itself never needs to open the device nodes: the launcher (root, or the only holder
//! of the `kvm` group and /dev/vfio/N) opens them, starts Strait with the fds left open
//! (without CLOEXEC) and names their numbers. A tap comes the same way, as a `net[]`
//! entry's `tap_fd`.
//!
//! Every place that would open /dev/kvm asks [`open_kvm`], which hands out a duplicate
//! of the inherited fd when there is one; the passthrough layer takes the VFIO ones
//! with [`take_vfio_fds`]. Each fd is checked to be what its flag says when it is set.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Mutex, OnceLock};

use kvm_ioctls::Kvm;
use vfio_glue::group::VfioFds;

static KVM_FD: OnceLock<RawFd> = OnceLock::new();
static VFIO_FDS: Mutex<Option<VfioFds>> = Mutex::new(None);

/// The KVM API version every KVM answers `KVM_GET_API_VERSION` with.
const KVM_API_VERSION: i32 = 12;

/// Why an inherited descriptor is refused.
#[derive(Debug, thiserror::Error)]
pub enum PreopenedError {
    #[error("--kvm-fd {fd}: not an open file descriptor")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("--kvm-fd {fd}: not /dev/kvm (KVM_GET_API_VERSION answered {answer})")]
    NotKvm { fd: RawFd, answer: i32 },
    #[error("{flag} {fd}: not an open file descriptor")]
    VfioNotOpen {
        flag: &'static str,
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("--vfio-container-fd {fd}: not the VFIO container /dev/vfio/vfio")]
    NotContainer {
        fd: RawFd,
        #[source]
        source: vfio_glue::group::GroupError,
    },
    #[error("--vfio-group-fd {fd}: not a VFIO group /dev/vfio/N")]
    NotGroup {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("--vfio-group-fd {fd}: group {group} is given twice")]
    GroupTwice { fd: RawFd, group: u32 },
}

/// Duplicate `fd` (close-on-exec), leaving the inherited one alone.
fn dup(fd: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an integer fd; the kernel checks it is open.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(new)
}

/// Use the inherited `fd` as /dev/kvm from now on; checks it answers as KVM.
pub fn set_kvm_fd(fd: RawFd) -> Result<(), PreopenedError> {
    let copy = dup(fd).map_err(|source| PreopenedError::NotOpen { fd, source })?;
    // SAFETY: `copy` is a fresh fd we own; `Kvm` closes it when dropped.
    let kvm = unsafe { Kvm::from_raw_fd(copy) };
    let answer = kvm.get_api_version();
    if answer != KVM_API_VERSION {
        return Err(PreopenedError::NotKvm { fd, answer });
    }
    let _ = KVM_FD.set(fd);
    Ok(())
}

/// A duplicate of the inherited `fd` as a file of our own.
fn dup_file(flag: &'static str, fd: RawFd) -> Result<File, PreopenedError> {
    let copy = dup(fd).map_err(|source| PreopenedError::VfioNotOpen { flag, fd, source })?;
    // SAFETY: `copy` is a fresh fd we own.
    Ok(unsafe { File::from_raw_fd(copy) })
}

/// Use the inherited `container` and `groups` for VFIO instead of /dev/vfio/vfio and
/// /dev/vfio/N; checks each is what it is said to be (a group's number is read from
/// its device).
pub fn set_vfio_fds(container: Option<RawFd>, groups: &[RawFd]) -> Result<(), PreopenedError> {
    let mut fds = VfioFds::default();
    if let Some(fd) = container {
        let file = dup_file("--vfio-container-fd", fd)?;
        vfio_glue::group::check_container(&file)
            .map_err(|source| PreopenedError::NotContainer { fd, source })?;
        fds.container = Some(file);
    }
    for &fd in groups {
        let file = dup_file("--vfio-group-fd", fd)?;
        let group = vfio_glue::group::group_of_file(&file)
            .map_err(|source| PreopenedError::NotGroup { fd, source })?;
        if fds.groups.insert(group, file).is_some() {
            return Err(PreopenedError::GroupTwice { fd, group });
        }
    }
    *resources::lock(&VFIO_FDS) = Some(fds);
    Ok(())
}

/// Where the host's VFIO pieces are, with the groups a launcher gave (their nodes are
/// not opened by path).
pub fn host_paths() -> vfio_glue::HostPaths {
    let given_groups = resources::lock(&VFIO_FDS)
        .as_ref()
        .map(|f| f.groups.keys().copied().collect())
        .unwrap_or_default();
    vfio_glue::HostPaths {
        given_groups,
        ..Default::default()
    }
}

/// Hand the launcher's VFIO fds over (once).
pub fn take_vfio_fds() -> VfioFds {
    resources::lock(&VFIO_FDS).take().unwrap_or_default()
}

/// /dev/kvm: a duplicate of the inherited fd if there is one, else opened by path.
pub fn open_kvm() -> Result<Kvm, kvm_ioctls::Error> {
    match KVM_FD.get() {
        Some(&fd) => {
            let copy = dup(fd)
                .map_err(|e| kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EBADF)))?;
            // SAFETY: `copy` is a fresh fd we own, checked to be /dev/kvm.
            Ok(unsafe { Kvm::from_raw_fd(copy) })
        }
        None => Kvm::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_closed_fd_is_refused() {
        assert!(matches!(
            set_kvm_fd(987_654),
            Err(PreopenedError::NotOpen { fd: 987_654, .. })
        ));
    }

    #[test]
    fn vfio_fds_that_are_not_vfio_are_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        assert!(matches!(
            set_vfio_fds(Some(fd), &[]),
            Err(PreopenedError::NotContainer { .. })
        ));
        assert!(matches!(
            set_vfio_fds(None, &[fd]),
            Err(PreopenedError::NotGroup { .. })
        ));
        assert!(matches!(
            set_vfio_fds(None, &[987_654]),
            Err(PreopenedError::VfioNotOpen { fd: 987_654, .. })
        ));
        assert!(host_paths().given_groups.is_empty());
    }

    #[test]
    fn a_file_that_is_not_kvm_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            set_kvm_fd(f.as_raw_fd()),
            Err(PreopenedError::NotKvm { .. })
        ));
    }
}
