//! `testbed`: build the nested testbed's images and run its scenarios from
//! the command line. `testbed run nvme --vmm qemu` boots L0 -> L1 -> L2 and
//! prints the checks, timings and, on failure, the console tails.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use testbed::bench::{self, BenchOptions};
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
        /// Override L2's RAM, in MiB (a whole number of the scenario's hugepages; L1
        /// gets the memory to back it).
        #[arg(long)]
        memory_mib: Option<u32>,
    },
    /// The main job: build Strait, then boot a guest on the testbed with Strait and the
    /// embedded default (scenario `passthrough`: nvme, bochs-display and an 8 GiB-BAR
    /// ivshmem behind PCIe root ports, driven by the guest's stock drivers).
    Demo {
        /// Scenario to show instead of `passthrough`.
        #[arg(long, default_value = "passthrough")]
        scenario: String,
        /// Use this strait binary instead of building target/release/strait.
        #[arg(long)]
        strait_binary: Option<PathBuf>,
    },
    /// List the built-in scenarios.
    List,
    /// Benchmark Strait against QEMU in one L1 boot; writes integration/results/<date>/.
    Bench(BenchArgs),
    /// (Inside L1) run a benchmark plan; started by the bench's run script.
    #[command(hide = true)]
    L1Agent {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long)]
        results: PathBuf,
        #[arg(long = "device")]
        devices: Vec<String>,
        #[arg(long)]
        deadline_secs: u64,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Repetitions per VMM and measurement (launches alternate Q S Q S ...).
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Development run: one repetition, 512 MiB only, 2 s loads (unless overridden).
    #[arg(long)]
    quick: bool,
    /// Guest RAM sizes (MiB) of the memory setup launches.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<u32>>,
    /// Seconds of each iobench pattern (and of each netbench direction).
    #[arg(long)]
    io_secs: Option<u64>,
    /// iobench's queue depth (threads).
    #[arg(long)]
    qd: Option<u32>,
    /// L2 vCPUs (default 1: nested SVM under TCG freezes L1 more often with 2).
    #[arg(long)]
    vcpus: Option<u32>,
    /// The strait binary (default: target/release/strait of this workspace).
    #[arg(long)]
    strait_binary: Option<PathBuf>,
    /// Directory that receives `<date>/` (default: integration/results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these kinds of launch (boot, bare, initcall, nvme, blk, net, reboot, bar, memory,
    /// kernel, ram, passthrough), e.g. `--only blk`
    /// while working on one path; the report leaves the others out.
    #[arg(long, value_delimiter = ',', value_parser = parse_launch_kind)]
    only: Vec<bench::plan::LaunchKind>,
    /// Guest RAM sizes (MiB) of the launch series (on 1 GiB pages rounded up to whole GiB).
    #[arg(long, value_delimiter = ',')]
    series_sizes: Option<Vec<u32>>,
    /// Repetitions of the launch series (default 1; each adds about 20-25 minutes).
    #[arg(long)]
    series_reps: Option<u32>,
    /// The kernel L1 boots: `stock` (the host's, Linux 6.1) or `backports` (Linux 6.12
    /// from bookworm-backports, whose vfio-pci maps BARs with huge pfns).
    #[arg(long, default_value = "stock", value_parser = parse_l1_kernel)]
    l1_kernel: testbed::host::L1Kernel,
    /// The reference VMM in L1: `backports` (QEMU 10.0 from bookworm-backports, the
    /// default), `stock` (the host's QEMU 7.2), or a path to a qemu-system-x86_64.
    #[arg(long, default_value = "backports")]
    qemu: String,
    /// Only re-render results.md and chart.svg from an existing raw.json.
    #[arg(long, value_name = "RAW_JSON")]
    render: Option<PathBuf>,
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
        Cmd::Bench(args) => bench(args, opts, &mut out),
        Cmd::Demo {
            scenario,
            strait_binary,
        } => {
            let binary = match strait_binary {
                Some(binary) => binary.clone(),
                None => build_strait()?,
            };
            opts.vmm = Vmm::Strait { binary };
            let scenario = Scenario::builtin(scenario)?;
            let outcome = Testbed::new(opts)?.run(&scenario)?;
            demo_report(&outcome, &mut out);
            Ok(report_verdict(&outcome, &mut out))
        }
        Cmd::L1Agent {
            plan,
            results,
            devices,
            deadline_secs,
        } => {
            bench::agent::run(&bench::agent::AgentArgs {
                plan: plan.clone(),
                results: results.clone(),
                devices: devices.clone(),
                deadline_secs: *deadline_secs,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            vmm,
            strait_binary,
            break_checks,
            keep,
            timeout,
            memory_mib,
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
            if let Some(mib) = memory_mib {
                scenario.memory_mib = *mib;
                scenario.validate()?;
            }
            let outcome = Testbed::new(opts)?.run(&scenario)?;
            let _ = writeln!(out, "{}", outcome.summary());
            Ok(report_verdict(&outcome, &mut out))
        }
    }
}

/// PASSED, or the failure report with the console tails; the exit code to match.
fn report_verdict(outcome: &testbed::Outcome, out: &mut impl Write) -> ExitCode {
    match outcome.verify() {
        Ok(()) => {
            let _ = writeln!(out, "PASSED");
            ExitCode::SUCCESS
        }
        Err(report) => {
            let _ = writeln!(out, "{report}");
            ExitCode::FAILURE
        }
    }
}

/// Builds target/release/strait with the cargo that runs us, so the demo never
/// shows a stale binary.
fn build_strait() -> testbed::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args(["build", "--release", "-p", "vmm", "--bin", "strait"])
        .current_dir(testbed::workspace_dir())
        .status()
        .map_err(|source| testbed::Error::Spawn {
            program: "cargo build --release -p vmm".into(),
            source,
        })?;
    if !status.success() {
        return Err(testbed::Error::MissingPrerequisites {
            missing: "a release build of strait".into(),
            reason: format!(
                "`cargo build --release -p vmm` failed ({status}); see its output above"
            ),
        });
    }
    Ok(testbed::default_strait_binary())
}

/// What the demo shows: the spec Strait ran, the guest's console, then the summary.
fn demo_report(outcome: &testbed::Outcome, out: &mut impl Write) {
    if let Ok(spec) = std::fs::read_to_string(outcome.work_dir.join("spec.json")) {
        let _ = writeln!(
            out,
            "== the VM spec Strait ran (in L1)\n{}",
            spec.trim_end()
        );
    }
    let _ = writeln!(
        out,
        "== L2's console and Strait's log\n{}",
        outcome.l2_console.trim_end()
    );
    let _ = writeln!(out, "== result\n{}", outcome.summary());
}

fn parse_l1_kernel(name: &str) -> Result<testbed::host::L1Kernel, String> {
    testbed::host::L1Kernel::from_name(name)
        .ok_or_else(|| format!("no L1 kernel `{name}`; one of stock, backports"))
}

fn parse_launch_kind(name: &str) -> Result<bench::plan::LaunchKind, String> {
    bench::plan::LaunchKind::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = bench::plan::LaunchKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        format!("no launch kind `{name}`; one of {}", all.join(", "))
    })
}

/// `testbed bench`: runs the benchmark (or re-renders a result set) and prints the tables.
fn bench(
    args: &BenchArgs,
    opts: TestbedOptions,
    out: &mut impl Write,
) -> testbed::Result<ExitCode> {
    let results = if let Some(raw) = &args.render {
        bench::render(raw)?
    } else {
        let mut b = if args.quick {
            BenchOptions::quick()
        } else {
            BenchOptions::full(args.reps)
        };
        if let Some(sizes) = &args.sizes {
            b.memory_sizes = sizes.clone();
        }
        if let Some(sizes) = &args.series_sizes {
            b.sweep.sizes = sizes.clone();
        }
        b.sweep.reps = args.series_reps.unwrap_or(b.sweep.reps);
        b.io.secs = args.io_secs.unwrap_or(b.io.secs);
        b.io.queue_depth = args.qd.unwrap_or(b.io.queue_depth);
        b.vcpus = args.vcpus.unwrap_or(b.vcpus);
        b.only = args.only.clone();
        b.l1_kernel = args.l1_kernel;
        b.qemu = bench::QemuChoice::parse(&args.qemu);
        if let Some(path) = &args.strait_binary {
            b.strait_binary = path.clone();
        }
        if let Some(root) = &args.out {
            b.results_root = root.clone();
        }
        if let Ok(me) = std::env::current_exe() {
            b.agent_binary = me;
        }
        let argv: Vec<String> = std::env::args().skip(1).collect();
        b.command = format!("cargo run --release -p testbed -- {}", argv.join(" "));
        Testbed::new(opts)?.bench(&b)?
    };
    let _ = writeln!(out, "{}", results.markdown);
    let _ = writeln!(out, "results written to {}", results.dir.display());
    Ok(ExitCode::SUCCESS)
}
