//! Errors of the testbed: every failed host-side action (prerequisites, image
//! builds, spawning L0) is a variant named for that action, with its context.
//! A scenario that ran but did not pass is `ScenarioFailed`, whose report
//! carries the console tails so a red test explains itself.

use std::path::PathBuf;

/// Everything that can stop the testbed from producing or accepting an outcome.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Host tools or files are missing and could not be installed.
    #[error("testbed prerequisites missing: {missing}; {reason}")]
    MissingPrerequisites {
        /// What is missing, comma separated.
        missing: String,
        /// Why the testbed did not (or could not) install it.
        reason: String,
    },
    /// `apt-get` failed while installing the Debian packages the testbed needs.
    #[error("installing Debian packages ({packages}) failed: `{command}` {status}")]
    InstallPackages {
        /// The packages asked for.
        packages: String,
        /// The apt-get command that failed.
        command: String,
        /// Its exit status, or the spawn error.
        status: String,
    },
    /// No kernel with both an image in /boot and modules in /lib/modules.
    #[error("no usable kernel: need /boot/vmlinuz-VER and /lib/modules/VER ({detail})")]
    FindKernel {
        /// What was searched and seen.
        detail: String,
    },
    /// `modprobe --show-depends` could not resolve a kernel module.
    #[error("resolving kernel module {module} for {version}: {detail}")]
    ResolveModule {
        /// The module name (or alternatives) asked for.
        module: String,
        /// The kernel version.
        version: String,
        /// modprobe's complaint.
        detail: String,
    },
    /// A compressed module could not be decompressed.
    #[error("decompressing {path}: {detail}")]
    Decompress {
        /// The compressed module.
        path: PathBuf,
        /// The tool's complaint.
        detail: String,
    },
    /// Reading a host file failed.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a host file (artefact, run script, disk image) failed.
    #[error("writing {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating a cache or work directory failed.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting or waiting for a host process failed.
    #[error("running {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A scenario name that is not built in.
    #[error("unknown scenario `{name}` (built in: {known})")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The built-in names.
        known: String,
    },
    /// A scenario that cannot be run as described.
    #[error("invalid scenario `{name}`: {reason}")]
    InvalidScenario {
        /// The scenario.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Building a program for the guest images (the static `iobench`) failed.
    #[error("building {what} failed: `{command}`: {detail}")]
    BuildGuestTool {
        /// The program.
        what: String,
        /// The command run.
        command: String,
        /// Its status and complaint.
        detail: String,
    },
    /// The benchmark's plan or results file could not be read or written as JSON.
    #[error("benchmark data {path}: {detail}")]
    BenchResults {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The benchmark's L1 run produced no results; the report holds the console tails.
    #[error("{report}")]
    BenchFailed {
        /// Human-readable failure report.
        report: String,
    },
    /// The scenario ran but did not pass; the report holds checks and console tails.
    #[error("{report}")]
    ScenarioFailed {
        /// Human-readable failure report.
        report: String,
    },
}

/// Result alias for the testbed.
pub type Result<T> = std::result::Result<T, Error>;
