//! Strait's top-level error and the exit code each class of failure maps to.
//!
//! `main` prints the error chain once, on one line, and exits with [`Error::exit_code`]:
//! scripts can tell "fix your spec" from "fix your host" from "the guest died". The
//! passthrough problems a user fixes each in their own way have codes of their own
//! (10..=17), and so do the ways a guest ends badly (6..=9); a stop at once by a signal
//! exits 128 + the signal number, as shells expect.

use std::path::PathBuf;

use crate::boot::BootError;
use crate::builder::VmError;
use crate::device_manager::DeviceError;
use crate::host::HostError;
use crate::memory::MemoryError;
use crate::passthrough::PassthroughError;
use crate::preopened::PreopenedError;
use crate::sandbox::SandboxError;
use crate::spec::SpecError;
use crate::vcpu::VcpuError;
use crate::virtio::VirtioError;

/// Process exit codes, one per class of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The guest powered off or asked for a reboot; `validate` found nothing wrong.
    Success = 0,
    /// The command line or the VM spec is wrong (clap also uses 2 for usage errors).
    Spec = 2,
    /// The host lacks something the spec needs (KVM, hugepages, a device, memory).
    Host = 3,
    /// The kernel, initramfs or command line cannot be loaded.
    Kernel = 4,
    /// Strait failed internally (a KVM or VFIO ioctl, a thread).
    Fatal = 5,
    /// The guest triple-faulted.
    TripleFault = 6,
    /// The guest died otherwise: KVM internal error, VM entry failure, crash event.
    GuestFatal = 7,
    /// The guest asked for a reboot and `lifecycle.on_reboot` is "exit".
    Rebooted = 8,
    /// The guest did not power off within `lifecycle.shutdown_timeout_s` of the power
    /// button; Strait stopped it (orderly teardown).
    ShutdownTimeout = 9,
    /// `passthrough[].host` is not a PCI address.
    PciAddress = 10,
    /// A passthrough device does not exist on the host.
    DeviceMissing = 11,
    /// A passthrough device is bound to another driver than vfio-pci, or to none.
    DeviceDriver = 12,
    /// A passthrough device's IOMMU group holds devices bound to host drivers.
    GroupNotViable = 13,
    /// The same device is listed twice in `passthrough`.
    DuplicateDevice = 14,
    /// No permission to open the device's /dev/vfio/N.
    VfioPermission = 15,
    /// RLIMIT_MEMLOCK is below the guest RAM that DMA mapping pins.
    Memlock = 16,
    /// A passed-through card does not answer after its reset (at start or at a reboot
    /// in place): another reset method or a host power cycle is needed.
    DeviceStuck = 17,
    /// Stopped at once by SIGHUP (128 + 1), after an orderly teardown.
    HungUp = 129,
    /// Stopped at once by SIGINT (128 + 2), after an orderly teardown.
    Interrupted = 130,
    /// Stopped at once by SIGTERM (128 + 15), after an orderly teardown.
    Terminated = 143,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// Text for `--help`, kept next to the enum it documents.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  guest powered off, also after the power button (run); spec and host are fine (validate)
  2  bad command line or VM spec (the message names the field)
  3  host resources missing: /dev/kvm, hugepages, passthrough devices, memory
  4  kernel, initramfs or command line cannot be loaded
  5  internal error (a KVM or VFIO ioctl failed)
  6  guest triple fault
  7  guest fatal error (KVM internal error, VM entry failure, guest crash event)
  8  guest rebooted and lifecycle.on_reboot is \"exit\"
  9  guest did not power off within lifecycle.shutdown_timeout_s of the power button
 10  passthrough: malformed PCI address
 11  passthrough: no such PCI device on the host
 12  passthrough: device bound to another driver than vfio-pci (the message names it)
 13  passthrough: IOMMU group not viable (the message names each device and driver)
 14  passthrough: the same device listed twice
 15  passthrough: no permission to open /dev/vfio/N
 16  passthrough: locked-memory limit (ulimit -l) below guest RAM
 17  passthrough: a card does not answer after its reset (at start or reboot)
129  stopped at once by SIGHUP (a second signal, or during setup)
130  stopped at once by SIGINT (a second signal, or during setup)
143  stopped at once by SIGTERM (a second signal, or during setup)
159  a thread made a syscall its seccomp filter forbids (one line names it)
`strait check` has its own: 0 all OK, 1 some WARN, 2 some FAIL.";

/// Everything `strait` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", path.display())]
    Spec {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Passthrough(#[from] PassthroughError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("ctl: no answer from {}", socket.display())]
    Ctl {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Preopened(#[from] PreopenedError),
    #[error("stopped by signal {signal}")]
    Signalled { signal: i32 },
    #[error("vcpu{vcpu}: guest fatal error: {what}")]
    GuestFatal { vcpu: u32, what: String },
    #[error("vcpu{vcpu}: the guest triple-faulted (its registers are logged above)")]
    TripleFault { vcpu: u32 },
    #[error(
        "the guest did not power off within {secs} s of the power button; stopped it \
         (raise lifecycle.shutdown_timeout_s, or check that the guest handles the ACPI \
         power button: acpid or systemd-logind, and the `button` driver)"
    )]
    ShutdownTimeout { secs: u64 },
    #[error("vcpu{vcpu}: {what}")]
    VcpuFailed { vcpu: u32, what: String },
    /// Guest RAM setup behind the running guest failed; `exit` is the code the same
    /// failure has during setup (e.g. 16 for the memlock limit).
    #[error("guest RAM setup failed while the guest ran: {what}")]
    RamSetup { what: String, exit: ExitCode },
}

/// Exit code of a failure passing devices through: one per kind a user fixes
/// differently.
fn passthrough_exit_code(e: &PassthroughError) -> ExitCode {
    match e {
        PassthroughError::Vfio(e) => vfio_exit_code(e),
        PassthroughError::PlaceBars(_) | PassthroughError::KvmVfioDevice(_) => ExitCode::Host,
        PassthroughError::Topology(_) => ExitCode::Spec,
        PassthroughError::IovaRanges(_)
        | PassthroughError::GsiPool(_)
        | PassthroughError::ReleaseThreads(_)
        | PassthroughError::RootPort { .. } => ExitCode::Fatal,
        PassthroughError::P2pOutsideIova { .. } => ExitCode::Host,
    }
}

/// Exit code of a `strait plan` failure: the same class `run` would exit with.
fn plan_exit_code(e: &crate::plan::PlanError) -> ExitCode {
    use crate::plan::PlanError as E;
    match e {
        E::DeviceMissing { .. } => ExitCode::DeviceMissing,
        E::Topology(_) => ExitCode::Spec,
        E::PhysBits | E::Place(_) | E::Numa(_) => ExitCode::Host,
    }
}

/// Exit code of a vfio-glue failure.
fn vfio_exit_code(e: &vfio_glue::Error) -> ExitCode {
    use vfio_glue::Error as E;
    match e {
        E::DeviceMissing { .. } | E::SlotMissing { .. } => ExitCode::DeviceMissing,
        E::BoundToOtherDriver { .. } | E::NotBound { .. } | E::SlotNotOnVfio { .. } => {
            ExitCode::DeviceDriver
        }
        E::GroupNotNeeded { .. } => ExitCode::Spec,
        E::GroupNotViable { .. } => ExitCode::GroupNotViable,
        E::CliqueNotGpu { .. } | E::Clique { .. } => ExitCode::Spec,
        E::NoPermission { .. } => ExitCode::VfioPermission,
        E::MemlockTooLow { .. } => ExitCode::Memlock,
        E::DeviceStuck { .. } => ExitCode::DeviceStuck,
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

impl Error {
    /// The exit code for this failure's class.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Spec {
                source: SpecError::PciAddress { .. },
                ..
            } => ExitCode::PciAddress,
            Error::Spec {
                source: SpecError::DuplicatePassthrough { .. },
                ..
            } => ExitCode::DuplicateDevice,
            Error::Spec { .. } => ExitCode::Spec,
            Error::Host(HostError::Passthrough(e)) => vfio_exit_code(e),
            Error::Passthrough(e) => passthrough_exit_code(e),
            Error::Plan(e) => plan_exit_code(e),
            Error::Virtio(e) if e.is_spec_problem() => ExitCode::Spec,
            Error::Virtio(_) => ExitCode::Fatal,
            Error::Signalled { signal } if *signal == libc::SIGINT => ExitCode::Interrupted,
            Error::Signalled { signal } if *signal == libc::SIGHUP => ExitCode::HungUp,
            Error::Signalled { .. } => ExitCode::Terminated,
            Error::Host(_) | Error::Memory(_) | Error::Api(_) | Error::Ctl { .. } => ExitCode::Host,
            Error::Devices(DeviceError::OpenConsole { .. }) => ExitCode::Host,
            Error::Vm(e) if e.is_host_problem() => ExitCode::Host,
            Error::Boot(_) => ExitCode::Kernel,
            Error::Devices(_) | Error::Vcpu(_) | Error::Vm(_) => ExitCode::Fatal,
            Error::VcpuFailed { .. } => ExitCode::Fatal,
            Error::RamSetup { exit, .. } => *exit,
            Error::GuestFatal { .. } => ExitCode::GuestFatal,
            Error::TripleFault { .. } => ExitCode::TripleFault,
            Error::ShutdownTimeout { .. } => ExitCode::ShutdownTimeout,
            Error::Sandbox(SandboxError::Privileges { .. }) => ExitCode::Host,
            Error::Sandbox(_) => ExitCode::Fatal,
            Error::Preopened(_) => ExitCode::Spec,
        }
    }

    /// The chain as one line: `outer: cause: root cause`.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            // A transparent wrapper may repeat its inner message; print each once.
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HugePages;

    fn spec_err(source: SpecError) -> Error {
        Error::Spec {
            path: "vm.json".into(),
            source,
        }
    }

    #[test]
    fn spec_errors_exit_2_with_file_and_field() {
        let e = spec_err(SpecError::MemoryNotPageMultiple {
            size_mib: 500,
            page: HugePages::Size2M,
            multiple_mib: 2,
        });
        assert_eq!(e.exit_code(), ExitCode::Spec);
        assert_eq!(
            e.one_line(),
            "vm.json: memory.size_mib: 500 MiB is not a multiple of the 2 MiB hugepage size; \
             use a multiple of 2"
        );
    }

    #[test]
    fn host_errors_exit_3() {
        let e = Error::Host(HostError::TooManyVcpus {
            count: 300,
            max: 288,
        });
        assert_eq!(e.exit_code(), ExitCode::Host);
        let e = Error::Memory(MemoryError::Prefault(std::io::Error::other("x")));
        assert_eq!(e.exit_code(), ExitCode::Host);
    }

    #[test]
    fn kernel_errors_exit_4() {
        let e = Error::Boot(BootError::NotAKernel {
            path: "/boot/config".into(),
        });
        assert_eq!(e.exit_code(), ExitCode::Kernel);
    }

    #[test]
    fn guest_failures_have_codes_of_their_own() {
        let e = Error::GuestFatal {
            vcpu: 1,
            what: "KVM internal error".into(),
        };
        assert_eq!(e.exit_code() as u8, 7);
        assert_eq!(Error::TripleFault { vcpu: 0 }.exit_code() as u8, 6);
        let e = Error::VcpuFailed {
            vcpu: 0,
            what: "KVM_RUN failed".into(),
        };
        assert_eq!(e.exit_code() as u8, 5);
    }

    #[test]
    fn lifecycle_codes_are_documented() {
        for c in [
            ExitCode::TripleFault,
            ExitCode::GuestFatal,
            ExitCode::Rebooted,
            ExitCode::ShutdownTimeout,
            ExitCode::HungUp,
        ] {
            let n = format!("\n{:>3}  ", c as u8);
            assert!(EXIT_CODES_HELP.contains(&n), "{n} undocumented");
        }
        assert_eq!(Error::ShutdownTimeout { secs: 3 }.exit_code() as u8, 9);
        assert_eq!(
            Error::Signalled {
                signal: libc::SIGHUP
            }
            .exit_code() as u8,
            129
        );
    }

    #[test]
    fn console_file_problem_is_a_host_problem() {
        let e = Error::Devices(DeviceError::OpenConsole {
            path: "/ro/console.log".into(),
            source: std::io::Error::other("read-only"),
        });
        assert_eq!(e.exit_code(), ExitCode::Host);
    }

    #[test]
    fn one_line_joins_the_chain_once() {
        let e = Error::Memory(MemoryError::Prefault(std::io::Error::other("no memory")));
        assert_eq!(e.one_line(), "cannot prefault guest RAM: no memory");
    }

    #[test]
    fn exit_code_values_are_stable() {
        let codes = [
            ExitCode::Success,
            ExitCode::Spec,
            ExitCode::Host,
            ExitCode::Kernel,
            ExitCode::Fatal,
        ];
        assert_eq!(codes.map(|c| c as u8), [0, 2, 3, 4, 5]);
    }

    fn addr() -> vfio_glue::HostPciAddress {
        "0000:01:00.0".parse().unwrap()
    }

    fn host(e: vfio_glue::Error) -> Error {
        Error::Host(HostError::Passthrough(e))
    }

    #[test]
    fn malformed_pci_address_exits_10() {
        let source = "0000:01:20.0".parse::<devices::pci::Bdf>().unwrap_err();
        let e = spec_err(SpecError::PciAddress { index: 0, source });
        assert_eq!(e.exit_code(), ExitCode::PciAddress);
        assert_eq!(ExitCode::PciAddress as u8, 10);
    }

    #[test]
    fn missing_device_exits_11() {
        let e = host(vfio_glue::Error::DeviceMissing {
            addr: addr(),
            path: "/sys/bus/pci/devices/0000:01:00.0".into(),
        });
        assert_eq!(e.exit_code() as u8, 11);
    }

    #[test]
    fn device_on_another_driver_exits_12_naming_it() {
        let e = host(vfio_glue::Error::BoundToOtherDriver {
            addr: addr(),
            driver: "nvme".into(),
        });
        assert_eq!(e.exit_code() as u8, 12);
        assert!(e.one_line().contains("bound to `nvme`"), "{}", e.one_line());
        let e = host(vfio_glue::Error::NotBound { addr: addr() });
        assert_eq!(e.exit_code(), ExitCode::DeviceDriver);
    }

    #[test]
    fn group_not_viable_exits_13_naming_each_offender() {
        let offender = |name: &str, driver: &str| vfio_glue::error::GroupOffender {
            name: name.into(),
            driver: driver.into(),
            sibling: false,
        };
        let e = host(vfio_glue::Error::GroupNotViable {
            addr: addr(),
            group: 7,
            offenders: vec![
                offender("0000:02:00.0", "e1000e"),
                offender("0000:03:00.0", "ahci"),
            ],
        });
        assert_eq!(e.exit_code() as u8, 13);
        let line = e.one_line();
        assert!(line.contains("0000:02:00.0 is bound to `e1000e`"), "{line}");
        assert!(line.contains("0000:03:00.0 is bound to `ahci`"), "{line}");
    }

    #[test]
    fn duplicate_device_exits_14() {
        let e = spec_err(SpecError::DuplicatePassthrough {
            index: 1,
            first: 0,
            addr: addr().to_string(),
        });
        assert_eq!(e.exit_code() as u8, 14);
    }

    #[test]
    fn no_permission_on_dev_vfio_exits_15() {
        let e = host(vfio_glue::Error::NoPermission {
            addr: addr(),
            path: "/dev/vfio/7".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        });
        assert_eq!(e.exit_code() as u8, 15);
    }

    #[test]
    fn memlock_too_low_exits_16_saying_how_to_raise_it() {
        let e = Error::Passthrough(PassthroughError::Vfio(vfio_glue::Error::MemlockTooLow {
            need: 512 << 20,
            current: 8 << 20,
        }));
        assert_eq!(e.exit_code() as u8, 16);
        assert!(
            e.one_line().contains("ulimit -l 524288"),
            "{}",
            e.one_line()
        );
    }

    #[test]
    fn passthrough_codes_are_distinct_and_outside_the_classes() {
        let codes = [
            ExitCode::PciAddress,
            ExitCode::DeviceMissing,
            ExitCode::DeviceDriver,
            ExitCode::GroupNotViable,
            ExitCode::DuplicateDevice,
            ExitCode::VfioPermission,
            ExitCode::Memlock,
            ExitCode::DeviceStuck,
        ];
        assert_eq!(codes.map(|c| c as u8), [10, 11, 12, 13, 14, 15, 16, 17]);
        for c in codes {
            let n = format!("\n{:>3}  passthrough:", c as u8);
            assert!(EXIT_CODES_HELP.contains(&n), "{n} undocumented");
        }
    }

    #[test]
    fn a_card_stuck_after_reset_exits_17_naming_the_card() {
        let e = Error::Passthrough(PassthroughError::Vfio(vfio_glue::Error::DeviceStuck {
            addr: addr(),
            source: None,
        }));
        assert_eq!(e.exit_code() as u8, 17);
        assert!(e.one_line().contains("reset_method"), "{}", e.one_line());
    }

    #[test]
    fn signals_exit_128_plus_the_signal() {
        let e = Error::Signalled {
            signal: libc::SIGINT,
        };
        assert_eq!(e.exit_code() as u8, 130);
        let e = Error::Signalled {
            signal: libc::SIGTERM,
        };
        assert_eq!(e.exit_code() as u8, 143);
    }
}
