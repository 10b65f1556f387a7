//! Handles a privileged launcher opened for Strait and passed as inherited file
//! descriptors (`--kvm-fd N`), so Strait itself never needs to open the device nodes:
//! the launcher (root, or the only holder of the `kvm` group) opens /dev/kvm, starts
//! Strait with the fd left open (without CLOEXEC) and names its number.
//!
//! Every place that would open /dev/kvm asks [`open_kvm`], which hands out a duplicate
//! of the inherited fd when there is one.

use std::os::fd::{FromRawFd, RawFd};
use std::sync::OnceLock;

use kvm_ioctls::Kvm;

static KVM_FD: OnceLock<RawFd> = OnceLock::new();

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
    fn a_file_that_is_not_kvm_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            set_kvm_fd(f.as_raw_fd()),
            Err(PreopenedError::NotKvm { .. })
        ));
    }
}
