//! The bus reset of last resort: VFIO_DEVICE_PCI_HOT_RESET (include/uapi/linux/vfio.h,
//! "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO" and "VFIO_DEVICE_PCI_HOT_RESET").
//!
//! A function with no reset of its own (no FLR, no PM reset, and a bus it shares with
//! other functions, so the kernel will not reset the bus for it alone; VFIO then leaves
//! VFIO_DEVICE_FLAGS_RESET clear) can still be reset by a secondary bus reset of its
//! parent bridge, or a slot reset. That reset hits every function on the bus or slot,
//! so the kernel only does it for a process that proves it owns all of them: the
//! caller passes the fd of every IOMMU group the reset affects. Strait asks VFIO which
//! functions and groups those are ([`HotResetTarget`]), checks it holds each group
//! ([`plan`]), and names the first function whose group it does not hold otherwise.
//!
//! vfio-ioctls keeps its group files private, so [`HeldGroups`] keeps a duplicate of
//! each group fd this process opened, found by its /proc/self/fd link before the
//! sandbox closes /proc; the duplicate also keeps the group held until the container
//! goes, so a release-time hot reset of one function still sees its siblings' groups.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;

use log::{debug, warn};
use resources::lock;

use crate::addr::HostPciAddress;
use crate::error::{Error, Result};

/// One function a hot reset would reset, and the IOMMU group it sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotResetTarget {
    pub addr: HostPciAddress,
    pub group: u32,
}

/// The groups to pass to VFIO_DEVICE_PCI_HOT_RESET for a reset of `addr` that affects
/// `targets`, each once, in order; or the first target whose group is not in `held`.
pub fn plan(addr: HostPciAddress, targets: &[HotResetTarget], held: &[u32]) -> Result<Vec<u32>> {
    if let Some(b) = targets.iter().find(|t| !held.contains(&t.group)) {
        return Err(Error::HotResetBlocked {
            addr,
            blocker: b.addr,
            group: b.group,
        });
    }
    let mut groups: Vec<u32> = targets.iter().map(|t| t.group).collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(groups)
}

/// Size of struct vfio_pci_hot_reset_info and vfio_pci_hot_reset before their arrays.
pub(crate) const HEADER_BYTES: usize = 12;
/// Size of struct vfio_pci_dependent_device.
const DEPENDENT_BYTES: usize = 8;

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// The `count` field of a struct vfio_pci_hot_reset_info the kernel filled.
pub(crate) fn info_count(buf: &[u8]) -> usize {
    u32_at(buf, 8).unwrap_or(0) as usize
}

/// The buffer size for `count` dependent devices, with argsz set in its first word.
pub(crate) fn info_buffer(count: usize) -> Vec<u8> {
    let len = HEADER_BYTES + count * DEPENDENT_BYTES;
    let mut buf = vec![0u8; len];
    buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    buf
}

/// Decode the dependent devices of a filled struct vfio_pci_hot_reset_info
/// (group_id u32, segment u16, bus u8, devfn u8 each); entries past the buffer are
/// ignored.
pub(crate) fn parse_info(buf: &[u8]) -> Vec<HotResetTarget> {
    let count = info_count(buf);
    (0..count)
        .map_while(|i| {
            let off = HEADER_BYTES + i * DEPENDENT_BYTES;
            let e = buf.get(off..off + DEPENDENT_BYTES)?;
            let group = u32::from_ne_bytes(e[0..4].try_into().ok()?);
            let segment = u16::from_ne_bytes(e[4..6].try_into().ok()?);
            Some(HotResetTarget {
                addr: HostPciAddress::from_devfn(segment, e[6], e[7]),
                group,
            })
        })
        .collect()
}

/// struct vfio_pci_hot_reset naming `fds`, as 32-bit words.
pub(crate) fn reset_words(fds: &[RawFd]) -> Vec<u32> {
    let argsz = HEADER_BYTES + fds.len() * 4;
    let mut words = vec![argsz as u32, 0, fds.len() as u32];
    words.extend(fds.iter().map(|&fd| fd as u32));
    words
}

/// Duplicates of the VFIO group fds this process holds, by group number.
#[derive(Debug, Default)]
pub struct HeldGroups(Mutex<BTreeMap<u32, OwnedFd>>);

impl HeldGroups {
    /// Keep a duplicate of the open /dev/vfio/`group`, found among this process's fds.
    /// Must run before the sandbox (it reads /proc/self/fd). A group already kept, or
    /// one that is not open, is left as it is (the latter with a warning: a hot reset
    /// that needs it then names it as the blocker).
    pub fn keep(&self, group: u32) {
        let mut map = lock(&self.0);
        if map.contains_key(&group) {
            return;
        }
        let node = Path::new("/dev/vfio").join(group.to_string());
        match find_open_file(&node).and_then(dup_cloexec) {
            Ok(fd) => {
                debug!(
                    "IOMMU group {group}: fd {} kept for hot resets",
                    fd.as_raw_fd()
                );
                map.insert(group, fd);
            }
            Err(e) => warn!(
                "IOMMU group {group}: cannot keep its fd for a hot reset ({e}); a function \
                 of it that needs a bus reset will not be reset"
            ),
        }
    }

    /// The groups kept, in order.
    pub fn ids(&self) -> Vec<u32> {
        lock(&self.0).keys().copied().collect()
    }

    /// Run `f` with the fds of `groups`; fails if one is not kept.
    pub fn with_fds<T>(&self, groups: &[u32], f: impl FnOnce(&[RawFd]) -> T) -> io::Result<T> {
        let map = lock(&self.0);
        let fds = groups
            .iter()
            .map(|g| map.get(g).map(|fd| fd.as_raw_fd()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "IOMMU group not held"))?;
        Ok(f(&fds))
    }
}

/// The fd of this process whose /proc/self/fd link points at `target`.
fn find_open_file(target: &Path) -> io::Result<RawFd> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        if entry.path().read_link().is_ok_and(|l| l == target) {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "not open"))
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor; `fd` is not consumed.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, group: u32) -> HotResetTarget {
        HotResetTarget {
            addr: addr.parse().unwrap(),
            group,
        }
    }

    #[test]
    fn every_group_held_gives_each_group_once() {
        let targets = [
            t("0000:01:00.0", 7),
            t("0000:01:00.1", 7),
            t("0000:01:00.2", 9),
        ];
        let groups = plan(targets[0].addr, &targets, &[3, 7, 9]).unwrap();
        assert_eq!(groups, vec![7, 9]);
    }

    #[test]
    fn a_group_not_held_names_its_function() {
        let targets = [t("0000:01:00.0", 7), t("0000:01:00.1", 8)];
        let err = plan(targets[0].addr, &targets, &[7]).unwrap_err();
        assert!(matches!(
            err,
            Error::HotResetBlocked { blocker, group: 8, .. } if blocker == targets[1].addr
        ));
        let line = err.to_string();
        assert!(
            line.contains("0000:01:00.1") && line.contains("group 8"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn the_first_blocker_in_vfio_order_is_named() {
        let targets = [
            t("0000:01:00.0", 7),
            t("0000:02:00.0", 5),
            t("0000:03:00.0", 4),
        ];
        let err = plan(targets[0].addr, &targets, &[7]).unwrap_err();
        assert!(matches!(err, Error::HotResetBlocked { group: 5, .. }));
    }

    #[test]
    fn info_is_decoded_entry_by_entry() {
        let mut buf = info_buffer(2);
        buf[8..12].copy_from_slice(&2u32.to_ne_bytes());
        buf[12..16].copy_from_slice(&11u32.to_ne_bytes());
        buf[16..18].copy_from_slice(&0u16.to_ne_bytes());
        buf[18] = 0x01;
        buf[19] = 0x01; // device 0, function 1
        buf[20..24].copy_from_slice(&12u32.to_ne_bytes());
        buf[24..26].copy_from_slice(&1u16.to_ne_bytes());
        buf[26] = 0x02;
        buf[27] = 0x18; // device 3, function 0
        assert_eq!(u32_at(&buf, 0), Some(28));
        assert_eq!(
            parse_info(&buf),
            vec![t("0000:01:00.1", 11), t("0001:02:03.0", 12)]
        );
    }

    #[test]
    fn a_count_past_the_buffer_stops_at_its_end() {
        let mut buf = info_buffer(1);
        buf[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(parse_info(&buf).len(), 1);
        assert_eq!(info_count(&buf), 5);
    }

    #[test]
    fn reset_request_carries_argsz_count_and_fds() {
        assert_eq!(reset_words(&[5, 9]), vec![20, 0, 2, 5, 9]);
    }

    #[test]
    fn an_open_file_is_found_and_kept_by_its_link() {
        let path = std::env::temp_dir().join(format!("strait-held-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let fd = find_open_file(&path).unwrap();
        assert_eq!(fd, file.as_raw_fd());
        let dup = dup_cloexec(fd).unwrap();
        assert_ne!(dup.as_raw_fd(), fd);
        std::fs::remove_file(&path).unwrap();
        assert!(find_open_file(Path::new("/nonexistent/strait")).is_err());
    }

    #[test]
    fn fds_of_groups_not_kept_are_refused() {
        let held = HeldGroups::default();
        assert!(held.ids().is_empty());
        assert!(held.with_fds(&[3], |_| ()).is_err());
        assert!(held.with_fds(&[], |fds| fds.len()).unwrap() == 0);
    }
}
