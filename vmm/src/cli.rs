//! The command line: `strait run SPEC.json` and `strait validate SPEC.json`.
//!
//! Both commands run the same checks first (spec document, the files it names, the host
//! resources it needs), so `validate` passing means `run` gets past setup. Printing is
//! left to `main`; this module returns what happened.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser, Subcommand};

use crate::boot::KernelImage;
use std::sync::Arc;

use crate::builder::{build_vm, VmError};
use crate::error::{Error, EXIT_CODES_HELP};
use crate::host;
use crate::logger::{self, phase};
use crate::memory;
use crate::spec::VmSpec;
use crate::vm::{forward_termination_signals, outcome, GuestExit, StopSignal};

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
}

/// What a successful command did, for `main` to report.
#[derive(Debug)]
pub enum Outcome {
    /// `validate`: one line per checked item.
    Valid(Vec<String>),
    /// `run`: how the guest ended.
    Ran(GuestExit),
}

/// Run the command.
pub fn execute(cli: &Cli) -> Result<Outcome, Error> {
    match &cli.command {
        Command::Validate { spec } => {
            let (spec, image) = check(spec, false)?;
            Ok(Outcome::Valid(host::summary(&spec, &image)))
        }
        Command::Run { spec } => {
            let stop = Arc::new(StopSignal::default());
            forward_termination_signals(stop.clone()).map_err(VmError::Signals)?;
            let prefault_stop = stop.clone();
            memory::stop_prefault_when(move || prefault_stop.is_stopping());
            let (spec, _) = check(spec, true).map_err(|e| signalled_or(e, &stop))?;
            if let Some(e) = stopped(&stop) {
                return Err(e);
            }
            let vm = build_vm(&spec, stop.clone()).map_err(|e| signalled_or(e, &stop))?;
            Ok(Outcome::Ran(vm.wait()?))
        }
    }
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
        assert!(matches!(cli.command, Command::Run { ref spec } if spec == Path::new("vm.json")));
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
    fn bad_spec_fails_before_touching_the_host() {
        let path = std::env::temp_dir().join(format!("strait-cli-{}.json", std::process::id()));
        std::fs::write(&path, "{\"vcpus\": 0}").unwrap();
        let cli = Cli::try_parse_from(["strait", "validate", path.to_str().unwrap()]).unwrap();
        let err = execute(&cli).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, Error::Spec { .. }));
    }
}
