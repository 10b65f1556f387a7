//! `testbed`: build the nested testbed's images and run its scenarios from
//! the command line. `testbed run nvme --vmm qemu` boots L0 -> L1 -> L2 and
//! prints the checks, timings and, on failure, the console tails.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use testbed::{scenario, Scenario, Testbed, TestbedOptions, Vmm};

#[derive(Parser)]
#[command(about = "Nested-KVM testbed for Strait (L0 TCG -> L1 KVM+VFIO -> L2)")]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Do not apt-get install missing prerequisites.
    #[arg(long, global = true)]
    no_install: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or find in the cache) the L1 image and the L2 images of scenarios.
    Prepare {
        /// Scenarios to prepare; all built-in ones when omitted.
        scenarios: Vec<String>,
    },
    /// Run one scenario and report.
    Run {
        /// Scenario name (see `testbed list`).
        scenario: String,
        /// The VMM that boots L2 inside L1.
        #[arg(long, value_enum, default_value_t = VmmArg::Qemu)]
        vmm: VmmArg,
        /// The strait binary (default: target/release/strait of this workspace).
        #[arg(long)]
        strait_binary: Option<PathBuf>,
        /// Force the first check to FAIL, to see a failure report.
        #[arg(long = "break")]
        break_checks: bool,
        /// Keep the devices' backing files after a passing run.
        #[arg(long)]
        keep: bool,
        /// Override the scenario's time limit, in seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// List the built-in scenarios.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum VmmArg {
    Qemu,
    Strait,
}

/// Logs to stderr; the level comes from -v.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr(),
                "testbed {}: {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    });
    match execute(&cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "testbed: {e}");
            ExitCode::from(2)
        }
    }
}

fn execute(cli: &Cli) -> testbed::Result<ExitCode> {
    let mut out = std::io::stdout();
    let mut opts = TestbedOptions {
        install_missing: !cli.no_install,
        ..Default::default()
    };
    match &cli.command {
        Cmd::List => {
            for name in scenario::BUILTIN {
                let s = Scenario::builtin(name)?;
                let devices: Vec<_> = s.devices.iter().map(|d| d.name()).collect();
                let _ = writeln!(
                    out,
                    "{name:12} devices [{}], {} checks",
                    devices.join(", "),
                    s.checks.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Prepare { scenarios } => {
            let testbed = Testbed::new(opts)?;
            let names: Vec<&str> = if scenarios.is_empty() {
                scenario::BUILTIN.to_vec()
            } else {
                scenarios.iter().map(String::as_str).collect()
            };
            for name in names {
                let artefacts = testbed.prepare(&Scenario::builtin(name)?)?;
                let _ = writeln!(
                    out,
                    "{name}: L1 {}, L2 {}",
                    artefacts.l1_initrd.display(),
                    artefacts.l2_initrd.display()
                );
            }
            let _ = writeln!(out, "kernel {}", testbed.kernel_version());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            vmm,
            strait_binary,
            break_checks,
            keep,
            timeout,
        } => {
            opts.vmm = match vmm {
                VmmArg::Qemu => Vmm::Qemu,
                VmmArg::Strait => Vmm::Strait {
                    binary: strait_binary
                        .clone()
                        .unwrap_or_else(testbed::default_strait_binary),
                },
            };
            opts.break_checks |= *break_checks;
            opts.keep_backing_files = *keep;
            let mut scenario = Scenario::builtin(scenario)?;
            if let Some(secs) = timeout {
                scenario.timeout = Duration::from_secs(*secs);
            }
            let outcome = Testbed::new(opts)?.run(&scenario)?;
            let _ = writeln!(out, "{}", outcome.summary());
            match outcome.verify() {
                Ok(()) => {
                    let _ = writeln!(out, "PASSED");
                    Ok(ExitCode::SUCCESS)
                }
                Err(report) => {
                    let _ = writeln!(out, "{report}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
