//! The sandbox a running Strait sits in: what each thread may still do once the guest
//! runs. Every thread calls [`enter`] with its [`ThreadKind`] at the point its setup
//! work is done (a vCPU before its first KVM_RUN, the main thread after `build_vm`,
//! helper threads as they start) and gives up, for itself:
//! 1. privileges ([`privileges`]): the capability bounding set, root (`--user`), every
//!    capability, then no_new_privs and a Landlock domain with no file access but the
//!    [`PathRule`]s the thread keeps (the main thread: removing the API socket);
//! 2. syscalls ([`seccomp`]): the seccomp filter of its kind (`--seccomp on|log|off`).
//!
//! Per thread, because credentials, capabilities, Landlock domains and seccomp filters
//! all belong to threads: a thread started later inherits its parent's, so the main
//! thread goes last, after starting every other.

pub mod privileges;
pub mod seccomp;

use std::cell::Cell;
use std::sync::OnceLock;

pub use privileges::{main_thread_paths, Landlock, PathRule, RunAs};
pub use seccomp::VIOLATION_EXIT_CODE;

/// What a seccomp violation does (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// A call outside the filter stops Strait with one line naming it.
    #[default]
    On,
    /// Calls outside the filter are allowed and logged by the kernel (audit, dmesg:
    /// `type=1326 ... syscall=N`), to find a missing rule.
    Log,
    /// No filter.
    Off,
}

/// The kinds of thread Strait runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread after setup: waits, then tears down.
    Main,
    Vcpu,
    /// `strait-signals`: SIGINT/SIGTERM to a stop request.
    Signals,
    /// `strait-stdin`: console input.
    Stdin,
    /// `strait-ram`: faulting RAM in and DMA-mapping it behind the running guest.
    Prefault,
    /// `strait-io`: the virtio devices' event loop (queue eventfds, disk and tap fds).
    Io,
    /// `strait-api`: the control API's event loop (Unix socket connections).
    Api,
    /// `strait-blk<d>-<n>`: a virtio-blk disk's worker threads (disk reads and writes).
    Blk,
    /// `strait-release<n>`: releasing passed-through functions at teardown (their
    /// resets, the device fds' close).
    Release,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Signals,
        ThreadKind::Stdin,
        ThreadKind::Prefault,
        ThreadKind::Io,
        ThreadKind::Api,
        ThreadKind::Blk,
        ThreadKind::Release,
    ];

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Signals => "signals",
            ThreadKind::Stdin => "stdin",
            ThreadKind::Prefault => "prefault",
            ThreadKind::Io => "io",
            ThreadKind::Api => "api",
            ThreadKind::Blk => "blk",
            ThreadKind::Release => "release",
        }
    }
}

/// Failures entering the sandbox: each stops Strait (it never runs a guest unsandboxed
/// by accident).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter")]
    Seccomp(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter of the {kind} thread")]
    InstallFilter {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot give up privileges ({what})")]
    Privileges {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the SIGSYS handler")]
    SigsysHandler(#[source] std::io::Error),
}

/// How the sandbox is set up for this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    pub seccomp: SeccompMode,
    pub run_as: Option<RunAs>,
}

static CONFIG: OnceLock<SandboxConfig> = OnceLock::new();

thread_local! {
    /// This thread's kind once it entered, for the SIGSYS handler. Const-initialised and
    /// without a destructor, so reading it from a signal handler is async-signal-safe.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

fn current_kind_name() -> &'static str {
    KIND.with(Cell::get).map_or("unsandboxed", ThreadKind::name)
}

/// Set the sandbox up for this process, before any thread enters it: compiles every
/// filter once (so a bad rule fails here) and installs the SIGSYS handler.
pub fn configure(config: SandboxConfig) -> Result<(), SandboxError> {
    if config.seccomp != SeccompMode::Off {
        for kind in ThreadKind::ALL {
            seccomp::compile(kind, config.seccomp)?;
        }
        seccomp::install_sigsys_handler().map_err(SandboxError::SigsysHandler)?;
    }
    // A second configure (tests) keeps the first.
    let _ = CONFIG.set(config);
    Ok(())
}

/// Give up this thread's privileges and install its seccomp filter. In a process that
/// never called [`configure`] (unit tests, a library user) this does nothing: `strait
/// run` always configures first.
pub fn enter(kind: ThreadKind) -> Result<(), SandboxError> {
    enter_keeping(kind, &[])
}

/// [`enter`], keeping the file rights `keep` under Landlock.
pub fn enter_keeping(kind: ThreadKind, keep: &[PathRule]) -> Result<(), SandboxError> {
    let Some(config) = CONFIG.get().copied() else {
        return Ok(());
    };
    let landlock = privileges::give_up(config.run_as, keep)?;
    if kind == ThreadKind::Main {
        let kept: Vec<String> = keep.iter().map(|r| r.path.display().to_string()).collect();
        match landlock {
            Landlock::Restricted(abi) => log::info!(
                "Landlock ABI {abi}: no file access but removing files in [{}] \
                 (checked: opening / is refused)",
                kept.join(", ")
            ),
            Landlock::Unsupported => {
                log::info!("Landlock unavailable: file access not restricted")
            }
        }
    }
    if config.seccomp != SeccompMode::Off {
        let filter = seccomp::compile(kind, config.seccomp)?;
        seccompiler::apply_filter(&filter).map_err(|source| SandboxError::InstallFilter {
            kind: kind.name(),
            source,
        })?;
    }
    KIND.with(|k| k.set(Some(kind)));
    Ok(())
}
