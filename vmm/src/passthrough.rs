//! Passing host PCI functions through to the guest, behind q35-like PCIe root ports
//! (BRIEF.md, "Platform contract", PCI topology; vfio-glue's recipe in its crate header).
//!
//! Topology: the functions of one host device (same domain:bus:slot) share one root
//! port; root port `i` is 00:(i+1).0 with secondary bus i+1, and its device's functions
//! are (i+1):00.f, numbered from 0 in host function order (function 0 must exist for the
//! guest to scan the slot). Ports follow the order the spec first names each device.
//!
//! The recipe, split around guest RAM so every host check runs before anything is
//! opened or allocated: [`check_host`] (used by `strait validate` and before `run`);
//! [`open`] (host checks again, container, KVM VFIO device, device fds) before RAM;
//! [`Opened::attach`] (in `attach.rs`) after RAM.

use std::sync::Arc;

use devices::pci::{Bdf, PciError};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use resources::PlanError;
use vfio_glue::addr::same_slot;
use vfio_glue::host::{check_no_duplicates, probe_device};
use vfio_glue::{check_memlock, HostDevice, HostPaths, HostPciAddress, VfioBackend};

use crate::error::ExitCode;
use crate::spec::VmSpec;

/// Failures passing devices through. Host-check variants keep vfio-glue's message,
/// which names the device and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error(transparent)]
    Vfio(#[from] vfio_glue::Error),
    #[error("cannot create the KVM VFIO device (is the kvm module built with VFIO support?)")]
    KvmVfioDevice(#[source] kvm_ioctls::Error),
    #[error("cannot read the IOMMU's IOVA ranges")]
    IovaRanges(#[source] std::io::Error),
    #[error("cannot place the passed-through devices' BARs")]
    PlaceBars(#[source] Box<PlanError>),
    #[error(
        "passthrough: {count} devices need more root ports than bus 0 has slots ({MAX_ROOT_PORTS})"
    )]
    TooManyDevices { count: usize },
    #[error("cannot set up the MSI GSI pool")]
    GsiPool(#[source] resources::IdError),
    #[error("cannot set up root port {bdf}")]
    RootPort {
        bdf: Bdf,
        #[source]
        source: PciError,
    },
}

impl From<PlanError> for PassthroughError {
    fn from(e: PlanError) -> Self {
        PassthroughError::PlaceBars(Box::new(e))
    }
}

impl PassthroughError {
    /// The exit code: one per kind a user fixes differently (see `ExitCode`).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PassthroughError::Vfio(e) => vfio_exit_code(e),
            PassthroughError::PlaceBars(_) | PassthroughError::KvmVfioDevice(_) => ExitCode::Host,
            PassthroughError::TooManyDevices { .. } => ExitCode::Spec,
            PassthroughError::IovaRanges(_)
            | PassthroughError::GsiPool(_)
            | PassthroughError::RootPort { .. } => ExitCode::Fatal,
        }
    }
}

/// Exit code of a vfio-glue failure.
pub fn vfio_exit_code(e: &vfio_glue::Error) -> ExitCode {
    use vfio_glue::Error as E;
    match e {
        E::ParsePciAddress { .. } => ExitCode::PciAddress,
        E::DeviceMissing { .. } => ExitCode::DeviceMissing,
        E::BoundToOtherDriver { .. } | E::NotBound { .. } => ExitCode::DeviceDriver,
        E::GroupNotViable { .. } => ExitCode::GroupNotViable,
        E::DuplicateDevice { .. } => ExitCode::DuplicateDevice,
        E::NoPermission { .. } => ExitCode::VfioPermission,
        E::MemlockTooLow { .. } => ExitCode::Memlock,
        E::NoIommuGroup { .. }
        | E::NoGroupNode { .. }
        | E::GroupBusy { .. }
        | E::OpenGroupNode { .. }
        | E::ReadSysfs { .. }
        | E::OpenContainer(_)
        | E::OpenDevice { .. }
        | E::IommuInfo(_)
        | E::IovaOutOfRange { .. }
        | E::MapDma { .. } => ExitCode::Host,
        _ => ExitCode::Fatal,
    }
}

/// The spec's passthrough addresses, in order, duplicates kept (for the host checks to
/// report them).
pub fn spec_addresses(spec: &VmSpec) -> Result<Vec<HostPciAddress>, vfio_glue::Error> {
    spec.passthrough
        .iter()
        .map(|p| vfio_glue::parse_host_address(&p.host))
        .collect()
}

/// Every host check, in the order a user fixes them: duplicates, then per device
/// (exists, bound to vfio-pci, IOMMU group viable, /dev/vfio/N opens), then the memlock
/// limit for pinning `ram_bytes`. Opens nothing for good.
pub fn check_host(
    paths: &HostPaths,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
) -> Result<Vec<HostDevice>, vfio_glue::Error> {
    check_no_duplicates(addrs)?;
    let hosts = addrs
        .iter()
        .map(|a| probe_device(paths, *a))
        .collect::<Result<Vec<_>, _>>()?;
    if !addrs.is_empty() {
        check_memlock(ram_bytes)?;
    }
    Ok(hosts)
}

/// One passed-through function's place in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionPlan {
    pub host: HostPciAddress,
    pub guest: Bdf,
    /// Index in the spec's `passthrough` list.
    pub spec_index: usize,
    /// Function 0 of a slot holding several functions.
    pub multifunction: bool,
}

/// One root port and the functions of one host device behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Root port number `i`: the port is 00:(i+1).0, its secondary bus i+1.
    pub port: u8,
    pub functions: Vec<FunctionPlan>,
}

impl SlotPlan {
    /// The root port's own address.
    pub fn port_bdf(&self) -> Bdf {
        Bdf::from_devfn(0, 0, (self.port + 1) << 3)
    }

    /// The port's slot number on bus 0 (its INTx `_PRT` rotation).
    pub fn port_slot(&self) -> u8 {
        self.port + 1
    }
}

/// Root ports a guest can have: slots 1..=31 of bus 0.
pub const MAX_ROOT_PORTS: usize = 31;

/// Group `addrs` by host device into root-port slots, in the order of first mention.
/// Returns `None` beyond [`MAX_ROOT_PORTS`] devices.
pub fn plan_slots(addrs: &[HostPciAddress]) -> Option<Vec<SlotPlan>> {
    let mut groups: Vec<Vec<(usize, HostPciAddress)>> = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        match groups.iter_mut().find(|g| same_slot(&g[0].1, a)) {
            Some(g) => g.push((i, *a)),
            None => groups.push(vec![(i, *a)]),
        }
    }
    if groups.len() > MAX_ROOT_PORTS {
        return None;
    }
    let slots = (0u8..).zip(groups).map(|(port, mut g)| {
        g.sort_by_key(|(_, a)| a.function());
        let multi = g.len() > 1;
        let functions = (0u8..)
            .zip(g)
            .map(|(f, (spec_index, host))| FunctionPlan {
                host,
                guest: Bdf::from_devfn(0, port + 1, f),
                spec_index,
                multifunction: multi && f == 0,
            })
            .collect();
        SlotPlan { port, functions }
    });
    Some(slots.collect())
}

/// Devices opened through VFIO, before guest RAM exists; [`Opened::attach`] takes them.
pub struct Opened {
    pub(crate) container: Arc<vfio_glue::Container>,
    pub(crate) backends: Vec<Option<VfioBackend>>,
    pub(crate) slots: Vec<SlotPlan>,
}

/// Check and open the spec's devices (`addrs`) for a guest with `ram_bytes` of RAM.
pub fn open(
    vm: &VmFd,
    addrs: &[HostPciAddress],
    ram_bytes: u64,
) -> Result<Option<Opened>, PassthroughError> {
    if addrs.is_empty() {
        return Ok(None);
    }
    let slots = plan_slots(addrs).ok_or(PassthroughError::TooManyDevices { count: addrs.len() })?;
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = vm
        .create_device(&mut dev)
        .map_err(PassthroughError::KvmVfioDevice)?;
    // Runs the host checks of `check_host` again before opening anything: the host may
    // have changed since `run` checked it.
    let paths = HostPaths::default();
    let opened = vfio_glue::open_devices(&paths, addrs, ram_bytes, Some(kvm_vfio))?;
    let backends = opened.devices.into_iter().map(|(_, b)| Some(b)).collect();
    Ok(Some(Opened {
        container: opened.container,
        backends,
        slots,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> HostPciAddress {
        s.parse().unwrap()
    }

    fn guests(slots: &[SlotPlan]) -> Vec<Vec<(String, String, usize, bool)>> {
        slots
            .iter()
            .map(|s| {
                s.functions
                    .iter()
                    .map(|f| {
                        let (h, g) = (f.host.to_string(), f.guest.to_string());
                        (h, g, f.spec_index, f.multifunction)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn separate_devices_get_one_root_port_each() {
        let slots = plan_slots(&[a("00:03.0"), a("00:04.0"), a("00:05.0")]).unwrap();
        assert_eq!(slots.len(), 3);
        let ports: Vec<String> = slots.iter().map(|s| s.port_bdf().to_string()).collect();
        assert_eq!(ports, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
        assert_eq!(
            guests(&slots)[2],
            [("0000:00:05.0".into(), "0000:03:00.0".into(), 2, false)]
        );
        assert_eq!(slots[1].port_slot(), 2);
    }

    #[test]
    fn functions_of_one_device_share_a_port_in_function_order() {
        // A GPU's audio function listed first, another device in between.
        let slots = plan_slots(&[a("01:00.1"), a("02:00.0"), a("01:00.0")]).unwrap();
        let g = guests(&slots);
        assert_eq!(
            g[0],
            [
                ("0000:01:00.0".into(), "0000:01:00.0".into(), 2, true),
                ("0000:01:00.1".into(), "0000:01:00.1".into(), 0, false),
            ]
        );
        assert_eq!(
            g[1],
            [("0000:02:00.0".into(), "0000:02:00.0".into(), 1, false)]
        );
    }

    #[test]
    fn a_lone_function_becomes_function_0() {
        let slots = plan_slots(&[a("01:00.3")]).unwrap();
        assert_eq!(slots[0].functions[0].guest.to_string(), "0000:01:00.0");
        assert!(!slots[0].functions[0].multifunction);
    }

    #[test]
    fn same_bus_and_slot_on_another_domain_is_another_device() {
        let slots = plan_slots(&[a("0000:01:00.0"), a("0001:01:00.1")]).unwrap();
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn more_devices_than_bus_0_slots_is_rejected() {
        let many: Vec<HostPciAddress> = (0..32u8)
            .map(|d| Bdf::new(0, d + 1, 0, 0).unwrap())
            .collect();
        assert!(plan_slots(&many[..31]).is_some());
        assert!(plan_slots(&many).is_none());
    }

    #[test]
    fn spec_addresses_keep_duplicates_for_the_host_checks() {
        let mut spec = crate::spec::VmSpec::parse(
            r#"{"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "/k"}}"#,
        )
        .unwrap();
        for h in ["0000:01:00.0", "01:00.0"] {
            spec.passthrough
                .push(crate::spec::PassthroughSpec { host: h.into() });
        }
        let addrs = spec_addresses(&spec).unwrap();
        assert_eq!(addrs, [a("01:00.0"), a("01:00.0")]);
        let err = check_host(&HostPaths::default(), &addrs, 1 << 26).unwrap_err();
        assert_eq!(vfio_exit_code(&err), ExitCode::DuplicateDevice);
    }

    #[test]
    fn host_problems_map_to_host_and_internal_ones_to_fatal() {
        let e = PassthroughError::Vfio(vfio_glue::Error::NoIommuGroup { addr: a("01:00.0") });
        assert_eq!(e.exit_code(), ExitCode::Host);
        let e = PassthroughError::Vfio(vfio_glue::Error::Reset {
            addr: a("01:00.0"),
            source: std::io::Error::other("x"),
        });
        assert_eq!(e.exit_code(), ExitCode::Fatal);
        let e = PassthroughError::TooManyDevices { count: 40 };
        assert_eq!(e.exit_code(), ExitCode::Spec);
    }
}
