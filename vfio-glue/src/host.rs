//! Host-side checks before a device is handed to VFIO, each failing with an
//! error that says what to do: the device exists and is bound to vfio-pci, it
//! has an IOMMU group, every device in that group is bound to a driver the
//! kernel accepts for a VFIO group, the group node /dev/vfio/N opens, and
//! RLIMIT_MEMLOCK covers the guest RAM that DMA mapping pins.
//!
//! Viability follows Documentation/driver-api/vfio.rst ("the group is viable
//! when all devices are bound to VFIO bus drivers, or are unbound") with the
//! kernel's DMA-ownership exceptions for pci-stub and pcieport (Linux 5.19+).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::addr::{same_slot, HostPciAddress};
use crate::error::{Error, GroupOffender, Result, SlotMember};
use crate::sysfs::Sysfs;

/// Where the host's sysfs and VFIO group nodes live (prefixes for tests).
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub sysfs: Sysfs,
    pub dev_vfio: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sysfs: Sysfs::default(),
            dev_vfio: PathBuf::from("/dev/vfio"),
        }
    }
}

/// A host function that passed every check and may be opened through VFIO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub addr: HostPciAddress,
    pub group: u32,
    /// `/sys/bus/pci/devices/<addr>`, the name vfio-ioctls opens it by.
    pub sysfs_path: PathBuf,
    /// What the kernel lists in `reset_method` (None: not published).
    pub reset_methods: Option<Vec<String>>,
}

/// vfio-pci and its vendor variants (`mlx5_vfio_pci`, `nvgrace_gpu_vfio_pci`, ...).
pub fn is_vfio_driver(driver: &str) -> bool {
    driver.contains("vfio")
}

/// Drivers that may stay bound to other devices of a VFIO group: they set
/// `driver_managed_dma`, so the kernel still lets userspace own the group's DMA.
fn allowed_in_group(driver: &str) -> bool {
    is_vfio_driver(driver) || driver == "pci-stub" || driver == "pcieport"
}

/// Run every check on `addr`; nothing is opened for good, nothing is changed.
pub fn probe_device(paths: &HostPaths, addr: HostPciAddress) -> Result<HostDevice> {
    let sysfs = &paths.sysfs;
    let sysfs_path = sysfs.device_dir(&addr);
    if !sysfs_path.exists() {
        return Err(Error::DeviceMissing {
            addr,
            path: sysfs_path,
        });
    }
    match sysfs.driver(&addr)? {
        Some(d) if is_vfio_driver(&d) => {}
        Some(driver) => return Err(Error::BoundToOtherDriver { addr, driver }),
        None => return Err(Error::NotBound { addr }),
    }
    let group = sysfs
        .iommu_group(&addr)?
        .ok_or(Error::NoIommuGroup { addr })?;
    check_group_viable(sysfs, addr, group)?;
    check_group_node(&paths.dev_vfio.join(group.to_string()), addr, group)?;
    let reset_methods = sysfs.reset_methods(&addr);
    info!("{addr}: IOMMU group {group}, reset methods {reset_methods:?}");
    Ok(HostDevice {
        addr,
        group,
        sysfs_path,
        reset_methods,
    })
}

/// The functions of the host slot `slot` (its segment:bus:device; the function number
/// is ignored) in function order, with their drivers; `SlotMissing` when there is none.
pub fn slot_members(sysfs: &Sysfs, slot: HostPciAddress) -> Result<Vec<SlotMember>> {
    let members = sysfs
        .pci_devices()?
        .into_iter()
        .filter(|a| same_slot(a, &slot))
        .map(|addr| {
            Ok(SlotMember {
                addr,
                driver: sysfs.driver(&addr)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if members.is_empty() {
        return Err(Error::SlotMissing {
            slot,
            path: sysfs.root().join("bus/pci/devices"),
        });
    }
    Ok(members)
}

/// A whole slot to pass through: its functions in function order, each bound to a
/// VFIO driver; otherwise `SlotNotOnVfio` lists every function found with its driver
/// and the rebind commands for the others.
pub fn slot_functions(sysfs: &Sysfs, slot: HostPciAddress) -> Result<Vec<HostPciAddress>> {
    let members = slot_members(sysfs, slot)?;
    if members
        .iter()
        .all(|m| m.driver.as_deref().is_some_and(is_vfio_driver))
    {
        log::debug!(
            "{}: functions {:?}, all on vfio-pci",
            crate::error::slot_name(&slot),
            members
                .iter()
                .map(|m| m.addr.function())
                .collect::<Vec<_>>()
        );
        Ok(members.into_iter().map(|m| m.addr).collect())
    } else {
        Err(Error::SlotNotOnVfio { slot, members })
    }
}

/// Of `functions` (one entry of the spec: a function, or the functions of a slot), the
/// ones that take a GPUDirect clique: the NVIDIA display functions. A function named
/// alone must be one; a slot must hold one. Read from sysfs `vendor` and `class`.
pub fn clique_functions(
    sysfs: &Sysfs,
    functions: &[HostPciAddress],
) -> Result<Vec<HostPciAddress>> {
    let ids = |a: &HostPciAddress| {
        let hex = |name: &str| {
            sysfs
                .attr(a, name)
                .and_then(|t| u32::from_str_radix(t.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0)
        };
        (hex("vendor") as u16, hex("class"))
    };
    let gpus: Vec<HostPciAddress> = functions
        .iter()
        .copied()
        .filter(|a| {
            let (vendor, class) = ids(a);
            vendor == crate::pci::NVIDIA_VENDOR_ID && class >> 16 == 0x03
        })
        .collect();
    match functions.first() {
        Some(first) if gpus.is_empty() => {
            let (vendor, class) = ids(first);
            Err(Error::CliqueNotGpu {
                addr: *first,
                vendor,
                class,
            })
        }
        _ => Ok(gpus),
    }
}

/// Every member of `group` must be bound to a driver the kernel accepts.
/// Functions of the same multi-function device are called out: without ACS the
/// kernel groups them, and users often miss that the audio function of a GPU
/// has to leave its driver too.
pub fn check_group_viable(sysfs: &Sysfs, addr: HostPciAddress, group: u32) -> Result<()> {
    let mut offenders = Vec::new();
    for name in sysfs.group_members(group)? {
        let Some(driver) = sysfs.member_driver(group, &name)? else {
            continue;
        };
        if allowed_in_group(&driver) {
            continue;
        }
        let sibling = name
            .parse::<HostPciAddress>()
            .is_ok_and(|m| m != addr && same_slot(&m, &addr));
        offenders.push(GroupOffender {
            name,
            driver,
            sibling,
        });
    }
    if offenders.is_empty() {
        Ok(())
    } else {
        Err(Error::GroupNotViable {
            addr,
            group,
            offenders,
        })
    }
}

/// Map the failure to open a group node to what the user should do about it.
fn group_open_error(addr: HostPciAddress, group: u32, path: &Path, e: io::Error) -> Error {
    let path = path.to_path_buf();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => Error::NoGroupNode { addr, path },
        (io::ErrorKind::PermissionDenied, _) => Error::NoPermission {
            addr,
            path,
            source: e,
        },
        (_, Some(libc::EBUSY)) => Error::GroupBusy { addr, group, path },
        _ => Error::OpenGroupNode {
            addr,
            path,
            source: e,
        },
    }
}

/// Open and close /dev/vfio/N to surface missing nodes, permissions and a
/// group held by another process before any VFIO state is built.
fn check_group_node(path: &Path, addr: HostPciAddress, group: u32) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| group_open_error(addr, group, path, e))
}

/// Decide whether `need` bytes may be pinned under a soft limit of `limit`
/// bytes (`None`: unlimited), with or without CAP_IPC_LOCK, which exempts the
/// process from the limit in vfio_iommu_type1.
pub fn memlock_verdict(need: u64, limit: Option<u64>, cap_ipc_lock: bool) -> Result<()> {
    match limit {
        Some(current) if !cap_ipc_lock && current < need => {
            Err(Error::MemlockTooLow { need, current })
        }
        _ => Ok(()),
    }
}

/// CAP_IPC_LOCK (bit 14) in the effective set, from /proc/self/status.
pub fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// This process's RLIMIT_MEMLOCK soft limit in bytes, `None` when unlimited.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the rlimit struct we own.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur))
}

/// Check that this process may pin `need` bytes for DMA.
pub fn check_memlock(need: u64) -> Result<()> {
    match memlock_limit() {
        Ok(limit) => memlock_verdict(need, limit, has_cap_ipc_lock()),
        Err(e) => {
            warn!("getrlimit(RLIMIT_MEMLOCK): {e}; not checking");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::FakeSysfs;

    fn a(s: &str) -> HostPciAddress {
        s.parse().unwrap()
    }

    fn paths(fs: &FakeSysfs) -> HostPaths {
        let dev_vfio = fs.root().join("dev-vfio");
        std::fs::create_dir_all(&dev_vfio).unwrap();
        HostPaths {
            sysfs: fs.sysfs(),
            dev_vfio,
        }
    }

    fn add_node(p: &HostPaths, group: u32) {
        std::fs::write(p.dev_vfio.join(group.to_string()), b"").unwrap();
    }

    #[test]
    fn viable_device_passes_every_check() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:00:01.0", Some("pcieport"), Some(4));
        let p = paths(&fs);
        add_node(&p, 4);
        let dev = probe_device(&p, a("0000:01:00.0")).unwrap();
        assert_eq!(dev.group, 4);
        assert_eq!(
            dev.sysfs_path,
            fs.root().join("bus/pci/devices/0000:01:00.0")
        );
    }

    #[test]
    fn a_slot_expands_to_its_functions_in_order() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.1", Some("vfio-pci"), Some(4));
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:01:01.0", Some("nvme"), Some(5));
        let got = slot_functions(&fs.sysfs(), a("0000:01:00.0")).unwrap();
        assert_eq!(got, [a("0000:01:00.0"), a("0000:01:00.1")]);
    }

    #[test]
    fn a_slot_with_a_function_elsewhere_names_every_function() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:01:00.1", Some("snd_hda_intel"), Some(4));
        let err = slot_functions(&fs.sysfs(), a("0000:01:00.0")).unwrap_err();
        assert!(
            matches!(&err, Error::SlotNotOnVfio { members, .. } if members.len() == 2),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("0000:01:00: "), "{text}");
        assert!(text.contains("0000:01:00.1 on snd_hda_intel"), "{text}");
        assert!(
            text.contains("echo 0000:01:00.1 > /sys/bus/pci/devices/0000:01:00.1/driver/unbind"),
            "{text}"
        );
        assert!(
            !text.contains("devices/0000:01:00.0/driver/unbind"),
            "{text}"
        );
    }

    fn nvidia_slot(fs: &FakeSysfs) {
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:01:00.1", Some("vfio-pci"), Some(4));
        for f in ["0000:01:00.0", "0000:01:00.1"] {
            fs.set_attr(f, "vendor", "0x10de\n");
        }
        fs.set_attr("0000:01:00.0", "class", "0x030200\n");
        fs.set_attr("0000:01:00.1", "class", "0x040300\n");
    }

    #[test]
    fn a_clique_on_a_slot_goes_to_its_gpu_function() {
        let fs = FakeSysfs::new();
        nvidia_slot(&fs);
        let both = [a("0000:01:00.0"), a("0000:01:00.1")];
        assert_eq!(
            clique_functions(&fs.sysfs(), &both).unwrap(),
            [a("0000:01:00.0")]
        );
    }

    #[test]
    fn a_clique_on_a_function_that_is_no_nvidia_gpu_is_refused() {
        let fs = FakeSysfs::new();
        nvidia_slot(&fs);
        let err = clique_functions(&fs.sysfs(), &[a("0000:01:00.1")]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CliqueNotGpu {
                    vendor: 0x10de,
                    class: 0x040300,
                    ..
                }
            ),
            "{err:?}"
        );
        fs.add("0000:02:00.0", Some("vfio-pci"), Some(5));
        fs.set_attr("0000:02:00.0", "vendor", "0x1002\n");
        fs.set_attr("0000:02:00.0", "class", "0x030000\n");
        let err = clique_functions(&fs.sysfs(), &[a("0000:02:00.0")]).unwrap_err();
        assert!(
            matches!(err, Error::CliqueNotGpu { vendor: 0x1002, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn an_empty_slot_is_missing() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        let err = slot_functions(&fs.sysfs(), a("0000:02:00.0")).unwrap_err();
        assert!(matches!(err, Error::SlotMissing { .. }), "{err:?}");
    }

    #[test]
    fn missing_device_is_reported() {
        let fs = FakeSysfs::new();
        let err = probe_device(&paths(&fs), a("0000:09:00.0")).unwrap_err();
        assert!(matches!(err, Error::DeviceMissing { .. }));
    }

    #[test]
    fn device_on_another_driver_names_the_driver() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("nvme"), Some(4));
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        assert!(matches!(&err, Error::BoundToOtherDriver { driver, .. } if driver == "nvme"));
        assert!(err.to_string().contains("driver_override"));
    }

    #[test]
    fn unbound_device_is_reported() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", None, Some(4));
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        assert!(matches!(err, Error::NotBound { .. }));
    }

    #[test]
    fn device_without_group_means_iommu_off() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), None);
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        assert!(matches!(err, Error::NoIommuGroup { .. }));
    }

    #[test]
    fn group_member_on_host_driver_makes_group_not_viable() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:02:00.0", Some("e1000e"), Some(4));
        fs.add("0000:03:00.0", None, Some(4));
        fs.add("0000:00:1c.0", Some("pcieport"), Some(4));
        fs.add("0000:04:00.0", Some("pci-stub"), Some(4));
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        let Error::GroupNotViable {
            group, offenders, ..
        } = &err
        else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(*group, 4);
        assert_eq!(
            offenders,
            &vec![GroupOffender {
                name: "0000:02:00.0".into(),
                driver: "e1000e".into(),
                sibling: false
            }]
        );
        assert!(err
            .to_string()
            .contains("echo 0000:02:00.0 > /sys/bus/pci/devices/0000:02:00.0/driver/unbind"));
    }

    #[test]
    fn sibling_function_is_called_out() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        fs.add("0000:01:00.1", Some("snd_hda_intel"), Some(4));
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        let Error::GroupNotViable { offenders, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        assert!(offenders[0].sibling);
        assert!(err.to_string().contains("multi-function"));
    }

    #[test]
    fn missing_group_node_is_reported() {
        let fs = FakeSysfs::new();
        fs.add("0000:01:00.0", Some("vfio-pci"), Some(4));
        let err = probe_device(&paths(&fs), a("0000:01:00.0")).unwrap_err();
        assert!(matches!(err, Error::NoGroupNode { .. }));
    }

    #[test]
    fn eacces_on_group_node_is_no_permission() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        let err = group_open_error(a("0000:01:00.0"), 4, Path::new("/dev/vfio/4"), e);
        assert!(matches!(err, Error::NoPermission { .. }));
        assert!(err.to_string().contains("chown"));
    }

    #[test]
    fn ebusy_on_group_node_is_group_busy() {
        let e = io::Error::from_raw_os_error(libc::EBUSY);
        let err = group_open_error(a("0000:01:00.0"), 4, Path::new("/dev/vfio/4"), e);
        assert!(matches!(err, Error::GroupBusy { group: 4, .. }));
    }

    #[test]
    fn memlock_below_need_is_rejected_with_both_numbers() {
        let err = memlock_verdict(512 << 20, Some(8 << 20), false).unwrap_err();
        assert!(
            matches!(err, Error::MemlockTooLow { need, current } if need == 512 << 20 && current == 8 << 20)
        );
        assert!(err.to_string().contains("ulimit -l 524288"));
    }

    #[test]
    fn memlock_unlimited_or_capable_passes() {
        assert!(memlock_verdict(1 << 40, None, false).is_ok());
        assert!(memlock_verdict(1 << 40, Some(0), true).is_ok());
        assert!(memlock_verdict(1 << 20, Some(1 << 20), false).is_ok());
    }
}
