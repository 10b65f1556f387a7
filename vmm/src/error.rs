//! Strait's top-level error and the exit code each class of failure maps to.
//!
//! `main` prints the error chain once, on one line, and exits with [`Error::exit_code`]:
//! scripts can tell "fix your spec" from "fix your host" from "the guest died".

use std::path::PathBuf;

use crate::boot::BootError;
use crate::builder::VmError;
use crate::device_manager::DeviceError;
use crate::host::HostError;
use crate::memory::MemoryError;
use crate::spec::SpecError;
use crate::vcpu::VcpuError;

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
    /// The guest died (entry failure, KVM internal error) or Strait failed internally.
    Fatal = 5,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(c: ExitCode) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

/// Text for `--help`, kept next to the enum it documents.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  guest powered off or rebooted (run); spec and host are fine (validate)
  2  bad command line or VM spec (the message names the field)
  3  host resources missing: /dev/kvm, hugepages, passthrough devices, memory
  4  kernel, initramfs or command line cannot be loaded
  5  guest fatal error (VM entry failure, KVM internal error) or internal error";

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
    #[error("vcpu{vcpu}: guest fatal error: {what}")]
    GuestFatal { vcpu: u32, what: String },
    #[error("vcpu{vcpu}: {what}")]
    VcpuFailed { vcpu: u32, what: String },
}

impl Error {
    /// The exit code for this failure's class.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Spec { .. } => ExitCode::Spec,
            Error::Host(_) | Error::Memory(_) => ExitCode::Host,
            Error::Devices(DeviceError::OpenConsole { .. }) => ExitCode::Host,
            Error::Vm(e) if e.is_host_problem() => ExitCode::Host,
            Error::Boot(_) => ExitCode::Kernel,
            Error::Devices(_) | Error::Vcpu(_) | Error::Vm(_) => ExitCode::Fatal,
            Error::GuestFatal { .. } | Error::VcpuFailed { .. } => ExitCode::Fatal,
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
    fn guest_fatal_exits_5() {
        let e = Error::GuestFatal {
            vcpu: 1,
            what: "VM entry failed".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::Fatal);
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
}
