//! The command line: `strait run SPEC.json`, `strait validate SPEC.json`,
//! `strait plan SPEC.json` and `strait check [BDF...]`.
//!
//! `run` and `validate` run the same checks first (spec document, the files it names,
//! the host resources it needs), so `validate` passing means `run` gets past setup.
//! `check` needs no spec: it reads the host and reports what GPU passthrough needs.
//! Printing is left to `main`; this module returns what happened.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser, Subcommand};

use std::sync::Arc;

use vfio_glue::HostPciAddress;

use crate::api::{
    self,
    client::{self, CtlAnswer, CtlCommand},
};
use crate::boot::KernelImage;

use crate::builder::{build_vm, VmError};
use crate::check::{self, CheckInput, HostRoot, ProcessLimits, Report};
use crate::error::{Error, EXIT_CODES_HELP};
use crate::host;
use crate::logger::{self, phase};
use crate::plan::VmPlan;
use crate::sandbox::{self, RunAs, SandboxConfig, SeccompMode};
use crate::spec::VmSpec;
use crate::stop::StopSignal;
use crate::vm::{forward_termination_signals, outcome, GuestExit};

/// Strait: a minimal KVM virtual machine monitor for GPU passthrough.
///
/// Boots a Linux kernel (bzImage or ELF vmlinux) with an optional initramfs, as described
/// by a JSON VM spec. The guest's serial console (COM1) is on stdout; Strait's own
/// messages are on stderr.
#[derive(Debug, Parser)]
#[command(name = "strait", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// More log output: -v debug, -vv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot the VM described by SPEC and run it until the guest powers off or reboots.
    ///
    /// Example spec: {"vcpus": 2, "memory": {"size_mib": 512, "hugepages": "2M"},
    /// "kernel": {"path": "/boot/vmlinuz", "initramfs": "initrd.cpio.gz",
    /// "cmdline": "console=ttyS0"}}. Strait exits 0 when the guest powers off or
    /// asks for a reboot (it does not restart the guest).
    Run {
        /// Path of the JSON VM spec.
        spec: PathBuf,
        /// Serve the control API on this Unix socket (overrides the spec's `api_socket`).
        #[arg(long, value_name = "PATH")]
        api_socket: Option<PathBuf>,
        /// Seccomp filters on every thread once the guest runs: `on` stops Strait on a
        /// forbidden syscall (exit 159, one line naming it), `log` lets it through and
        /// the kernel logs it (audit/dmesg `type=1326`), `off` installs none.
        #[arg(long, value_enum, default_value_t = SeccompMode::On)]
        seccomp: SeccompMode,
        /// Run as this user and group after setup (numeric UID[:GID]; the group
        /// defaults to the UID). Needs root to start; see README, "Running unprivileged".
        #[arg(long, value_name = "UID[:GID]")]
        user: Option<RunAs>,
        /// Use this inherited file descriptor as /dev/kvm instead of opening it (a
        /// privileged launcher opened it; see README, "Running unprivileged").
        #[arg(long, value_name = "FD")]
        kvm_fd: Option<i32>,
        /// Use this inherited file descriptor as the VFIO container /dev/vfio/vfio.
        #[arg(long, value_name = "FD")]
        vfio_container_fd: Option<i32>,
        /// Use this inherited file descriptor as a VFIO group /dev/vfio/N (its number
        /// is read from the device); once per group of the spec's passthrough devices.
        #[arg(long, value_name = "FD")]
        vfio_group_fd: Vec<i32>,
    },
    /// Talk to a running Strait's control API: print its JSON answer.
    ///
    /// Exits 0 on a 2xx answer, 1 on another answer, 3 when SOCKET does not answer.
    Ctl {
        /// The control API socket (`api_socket` in the spec, or `run --api-socket`).
        socket: PathBuf,
        /// What to ask.
        #[arg(value_enum)]
        command: CtlCommand,
        /// With `shutdown`: seconds before the guest is stopped (default: the spec's
        /// lifecycle.shutdown_timeout_s).
        #[arg(long, value_name = "SECS")]
        timeout_s: Option<u32>,
    },
    /// Check SPEC and the host resources it names without starting anything.
    ///
    /// Checks the JSON document and its values, that the kernel is a bzImage or ELF
    /// vmlinux and the initramfs fits, that /dev/kvm opens and allows the vCPU count,
    /// that the hugepage pool has enough free pages, and that each passthrough device
    /// exists, is bound to vfio-pci in a viable IOMMU group whose /dev/vfio/N opens,
    /// with a locked-memory limit that covers guest RAM, and that the console file opens
    /// (the checks `run` makes first).
    Validate {
        /// Path of the JSON VM spec.
        spec: PathBuf,
    },
    /// Check the host for GPU passthrough, without a spec and without changing anything.
    ///
    /// Prints OK, WARN or FAIL per item, with the fix: KVM, the IOMMU and interrupt
    /// remapping, the VFIO modules; for every display, 3D or accelerator controller and
    /// every BDF given: its driver, IOMMU group, reset methods, BARs, PCIe link and NUMA
    /// node; the hugepage pools, `ulimit -l` and VFIO's DMA entry limit.
    /// Print the guest `run` would build for SPEC, without KVM and without opening a device.
    ///
    /// The guest physical address map: RAM, the 32- and 64-bit PCI windows, the host
    /// bridge, each root port with its bus and windows, each passed-through function
    /// with its BARs (size, address, prefetchability) and the pages that trap; the IOVA
    /// ranges and physical address bits it planned within. Read from the spec and sysfs
    /// with the planning code `run` uses.
    Plan {
        /// Path of the JSON VM spec.
        spec: PathBuf,
        /// Print the plan as a JSON document.
        #[arg(long)]
        json: bool,
    },
    #[command(after_help = CHECK_EXIT_CODES_HELP)]
    Check {
        /// PCI functions to check besides the GPUs found (DDDD:BB:DD.F or BB:DD.F).
        #[arg(value_parser = parse_bdf)]
        devices: Vec<HostPciAddress>,
        /// Guest RAM to check hugepages, `ulimit -l` and DMA limits against (16G, 512M,
        /// bytes).
        #[arg(long, value_name = "SIZE", value_parser = check::parse_size)]
        memory: Option<u64>,
        /// Print the report as a JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes of `strait check` (they differ from `run`'s).
pub const CHECK_EXIT_CODES_HELP: &str = "\
Exit codes of check:
  0  every item OK
  1  some item WARN, none FAIL
  2  some item FAIL (clap also exits 2 for a malformed command line)";

fn parse_bdf(s: &str) -> Result<HostPciAddress, String> {
    s.trim()
        .parse()
        .map_err(|e: devices::pci::BdfError| e.to_string())
}

/// What a successful command did, for `main` to report.
#[derive(Debug)]
pub enum Outcome {
    /// `validate`: one line per checked item.
    Valid(Vec<String>),
    /// `run`: how the guest ended.
    Ran(GuestExit),
    /// `check`: the report, and whether to print it as JSON.
    Checked { report: Report, json: bool },
    /// `plan`: the plan, and whether to print it as JSON.
    Planned { plan: Box<VmPlan>, json: bool },
    /// `ctl`: the API's answer.
    Ctl(CtlAnswer),
}

/// Run the command.
pub fn execute(cli: &Cli) -> Result<Outcome, Error> {
    match &cli.command {
        Command::Validate { spec } => {
            let (spec, image) = check(spec, false)?;
            Ok(Outcome::Valid(host::summary(&spec, &image)))
        }
        Command::Plan { spec, json } => {
            let spec = VmSpec::load(spec).map_err(|source| Error::Spec {
                path: spec.clone(),
                source,
            })?;
            let plan = crate::plan::plan(&spec, &HostRoot::default())?;
            Ok(Outcome::Planned {
                plan: Box::new(plan),
                json: *json,
            })
        }
        Command::Check {
            devices,
            memory,
            json,
        } => {
            let limits = ProcessLimits::current()
                .inspect_err(|e| log::warn!("reading RLIMIT_MEMLOCK: {e}"))
                .ok();
            let input = CheckInput {
                root: HostRoot::default(),
                devices: devices.clone(),
                memory: *memory,
                limits,
            };
            Ok(Outcome::Checked {
                report: check::run(&input),
                json: *json,
            })
        }
        Command::Ctl {
            socket,
            command,
            timeout_s,
        } => {
            let body = timeout_s
                .filter(|_| *command == CtlCommand::Shutdown)
                .map(|t| format!("{{\"timeout_s\": {t}}}"))
                .unwrap_or_default();
            client::send(socket, *command, &body)
                .map(Outcome::Ctl)
                .map_err(|source| Error::Ctl {
                    socket: socket.clone(),
                    source,
                })
        }
        Command::Run {
            spec,
            api_socket,
            seccomp,
            user,
            kvm_fd,
            vfio_container_fd,
            vfio_group_fd,
        } => {
            if let Some(fd) = kvm_fd {
                crate::preopened::set_kvm_fd(*fd)?;
            }
            crate::preopened::set_vfio_fds(*vfio_container_fd, vfio_group_fd)?;
            sandbox::configure(SandboxConfig {
                seccomp: *seccomp,
                run_as: *user,
            })?;
            let stop = Arc::new(StopSignal::default());
            forward_termination_signals(stop.clone()).map_err(VmError::Signals)?;
            let (spec, _) = check(spec, true).map_err(|e| signalled_or(e, &stop))?;
            if let Some(e) = stopped(&stop) {
                return Err(e);
            }
            let vm = build_vm(&spec, stop.clone()).map_err(|e| signalled_or(e, &stop))?;
            let socket = api_socket.as_ref().or(spec.api_socket.as_ref());
            let _api = socket
                .map(|path| api::start(path, Box::new(vm.control(&spec))))
                .transpose()?;
            // Restored when this returns, whatever the outcome (and by the panic hook).
            let _raw = raw_console(&spec);
            // Last: every other thread runs, each in its own sandbox.
            let keep = sandbox::main_thread_paths(socket.map(PathBuf::as_path));
            sandbox::enter_keeping(sandbox::ThreadKind::Main, &keep)?;
            let ran = vm.wait(spec.lifecycle.on_reboot);
            logger::mark(phase::TORN_DOWN);
            Ok(Outcome::Ran(ran?))
        }
    }
}

/// Raw mode for the console's terminal (`serial: "stdio"`, stdin a terminal); a
/// terminal that refuses is logged and left as it is.
fn raw_console(spec: &VmSpec) -> Option<crate::terminal::RawMode> {
    if spec.serial != crate::spec::SerialSpec::Stdio {
        return None;
    }
    crate::terminal::RawMode::enter().unwrap_or_else(|e| {
        log::warn!("console: cannot put the terminal in raw mode: {e}");
        None
    })
}

/// After SIGINT/SIGTERM the signal's error (exit 130/143) replaces `err`, whatever setup
/// step the signal cut short (a stopped prefault fails with `MemoryError::Stopped`).
fn signalled_or(err: Error, stop: &StopSignal) -> Error {
    stopped(stop).unwrap_or(err)
}

/// The error of the stop requested during setup, if any.
fn stopped(stop: &StopSignal) -> Option<Error> {
    stop.is_stopping()
        .then(|| outcome(stop.wait()).err())
        .flatten()
}

/// Load the spec and check it against the host; `timeline` marks the parse for `run`.
fn check(path: &Path, timeline: bool) -> Result<(VmSpec, KernelImage), Error> {
    let spec_err = |source| Error::Spec {
        path: path.to_path_buf(),
        source,
    };
    let spec = VmSpec::load(path).map_err(spec_err)?;
    if timeline {
        logger::mark(phase::SPEC_PARSED);
    }
    host::check_files(&spec).map_err(spec_err)?;
    let image = host::check_kernel(&spec)?;
    host::check_host(&spec)?;
    host::check_console(&spec)?;
    crate::virtio::check_disks(&spec)?;
    crate::virtio::check_net(&spec)?;
    Ok((spec, image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_with_verbosity() {
        let cli = Cli::try_parse_from(["strait", "-vv", "run", "vm.json"]).unwrap();
        assert_eq!(cli.verbose, 2);
        assert!(
            matches!(cli.command, Command::Run { ref spec, api_socket: None, seccomp: SeccompMode::On, user: None, kvm_fd: None, .. }
                if spec == Path::new("vm.json"))
        );
    }

    #[test]
    fn parses_run_with_an_api_socket_and_ctl_commands() {
        let cli = Cli::try_parse_from(["strait", "run", "vm.json", "--api-socket", "/run/s.sock"])
            .unwrap();
        assert!(
            matches!(cli.command, Command::Run { api_socket: Some(ref p), .. } if p == Path::new("/run/s.sock"))
        );
        let cli = Cli::try_parse_from(["strait", "ctl", "/run/s.sock", "power-button"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Ctl {
                command: CtlCommand::PowerButton,
                ..
            }
        ));
        let cli =
            Cli::try_parse_from(["strait", "ctl", "s", "shutdown", "--timeout-s", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Ctl {
                timeout_s: Some(5),
                ..
            }
        ));
        assert!(Cli::try_parse_from(["strait", "ctl", "s", "explode"]).is_err());
    }

    #[test]
    fn ctl_to_a_missing_socket_is_an_error_of_its_own() {
        let cli =
            Cli::try_parse_from(["strait", "ctl", "/nonexistent/strait.sock", "info"]).unwrap();
        let err = execute(&cli).unwrap_err();
        assert!(matches!(err, Error::Ctl { .. }));
        assert_eq!(err.exit_code(), crate::error::ExitCode::Host);
    }

    #[test]
    fn parses_run_with_seccomp_and_user() {
        let cli = Cli::try_parse_from([
            "strait",
            "run",
            "vm.json",
            "--seccomp",
            "log",
            "--user",
            "1000:36",
        ])
        .unwrap();
        let Command::Run { seccomp, user, .. } = cli.command else {
            panic!("not run");
        };
        assert_eq!(seccomp, SeccompMode::Log);
        assert_eq!(user, Some(RunAs { uid: 1000, gid: 36 }));
        assert!(Cli::try_parse_from(["strait", "run", "v.json", "--seccomp", "x"]).is_err());
    }

    #[test]
    fn parses_validate_with_trailing_flag() {
        let cli = Cli::try_parse_from(["strait", "validate", "vm.json", "-q"]).unwrap();
        assert!(cli.quiet);
        assert!(matches!(cli.command, Command::Validate { .. }));
    }

    #[test]
    fn missing_spec_argument_is_a_usage_error() {
        let err = Cli::try_parse_from(["strait", "run"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("3  host resources"), "{help}");
    }

    #[test]
    fn parses_check_with_devices_memory_and_json() {
        let cli = Cli::try_parse_from([
            "strait",
            "check",
            "01:00.0",
            "0000:02:00.1",
            "--memory",
            "16G",
            "--json",
        ])
        .unwrap();
        let Command::Check {
            devices,
            memory,
            json,
        } = cli.command
        else {
            panic!("not check: {:?}", cli.command);
        };
        let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        assert_eq!(names, ["0000:01:00.0", "0000:02:00.1"]);
        assert_eq!(memory, Some(16 << 30));
        assert!(json);
    }

    #[test]
    fn check_rejects_bad_bdf_and_size() {
        for args in [
            ["strait", "check", "01:00"],
            ["strait", "check", "--memory=16X"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        }
    }

    #[test]
    fn check_help_documents_its_exit_codes() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("check")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("1  some item WARN"), "{help}");
    }

    #[test]
    fn bad_spec_fails_before_touching_the_host() {
        let path = std::env::temp_dir().join(format!("strait-cli-{}.json", std::process::id()));
        std::fs::write(&path, "{\"vcpus\": 0}").unwrap();
        let cli = Cli::try_parse_from(["strait", "validate", path.to_str().unwrap()]).unwrap();
        let err = execute(&cli).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::Spec { .. }));
    }
}
