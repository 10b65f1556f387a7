//! A running VM: its vCPU threads, devices, KVM handles and RAM, and how it ends.
//!
//! The first stop request wins (a power-off written by the guest, a triple fault, a fatal
//! exit); then every vCPU thread is kicked out of KVM_RUN and joined, and only then is
//! guest RAM unmapped (field order of [`Vm`]). Passed-through functions go quiet before
//! that: their BAR slots and traps are removed, interrupts and bus mastering turned off
//! and the functions reset; dropping the devices then unmaps DMA and closes the fds.
//!
//! A reboot the guest asks for, with `lifecycle.on_reboot` "restart", resets the machine
//! and boots again in this process ([`reboot`]); the stop signal is re-armed and the
//! vCPU threads start again over the same fds.
//!
//! SIGINT, SIGTERM and SIGHUP ([`forward_termination_signals`]) press the guest's power
//! button and give it `lifecycle.shutdown_timeout_s` to power off; a second signal, or
//! one during setup, stops at once. Every path tears down in the same order.

mod reboot;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::{io, mem};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::api::routes::{DeviceView, RunState};
use crate::api::{Action, VmControl, VmView};
use crate::device_manager::DeviceManager;
use crate::error::{Error, ExitCode};
use crate::exits::{ExitCounters, StopReason};
use crate::logger::{self, phase};
use crate::memory::GuestRam;
use crate::passthrough::Passthrough;
use crate::ram_setup::RamSetup;
use crate::restart_gate::RestartGate;
use crate::sandbox::{self, ThreadKind};
use crate::spec::{OnReboot, VmSpec};
use crate::stop::{ShutdownStep, StopSignal};
use crate::vcpu::{self, PauseGate, ResetOrder, VcpuContext, VcpuError};

use crate::virtio::VirtioDevices;
pub(crate) use reboot::{PlatformState, Restart};
use std::os::unix::thread::JoinHandleExt;

/// How a guest that ended by its own request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5: exit code 0.
    PowerOff,
    /// A reboot with `lifecycle.on_reboot` "exit": exit code 8.
    Reboot(&'static str),
}

impl GuestExit {
    /// The process exit code for this ending.
    pub fn exit_code(self) -> ExitCode {
        match self {
            GuestExit::PowerOff => ExitCode::Success,
            GuestExit::Reboot(_) => ExitCode::Rebooted,
        }
    }
}

/// Map the stop reason to the outcome of `strait run`.
pub fn outcome(reason: StopReason) -> Result<GuestExit, Error> {
    match reason {
        StopReason::PowerOff => Ok(GuestExit::PowerOff),
        StopReason::Reboot(how) => Ok(GuestExit::Reboot(how)),
        StopReason::TripleFault { vcpu } => Err(Error::TripleFault { vcpu }),
        StopReason::GuestFatal { vcpu, what } => Err(Error::GuestFatal { vcpu, what }),
        StopReason::HostFailure { vcpu, what } => Err(Error::VcpuFailed { vcpu, what }),
        StopReason::Signal(signal) => Err(Error::Signalled { signal }),
        StopReason::ShutdownTimeout { secs } => Err(Error::ShutdownTimeout { secs }),
        StopReason::RamSetup { what, exit } => Err(Error::RamSetup { what, exit }),
    }
}

/// The termination signals Strait turns into a graceful shutdown.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Block SIGINT, SIGTERM and SIGHUP in the calling thread, and so in every thread it
/// starts later, and turn them into a graceful shutdown on `stop` (a stop at once
/// before the power button is armed) from a thread of their own (a signal handler could
/// not take the stop signal's lock). Call before starting threads.
pub fn forward_termination_signals(stop: Arc<StopSignal>) -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    std::thread::Builder::new()
        .name("strait-signals".into())
        .spawn(move || {
            if let Err(e) = sandbox::enter(ThreadKind::Signals) {
                log::error!("signal thread: {}", Error::from(e).one_line());
                stop.stop(StopReason::HostFailure {
                    vcpu: 0,
                    what: "the signal thread cannot enter the sandbox".into(),
                });
                return;
            }
            wait_for_signals(&set, &stop)
        })
        .map(drop)
}

/// Turn each SIGINT/SIGTERM in `set` into a stop request, forever.
fn wait_for_signals(set: &libc::sigset_t, stop: &StopSignal) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is ours to write.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            continue;
        }
        if stop.is_stopping() {
            // Kept for after a reboot in place, if one is under way; else too late.
            stop.stop(StopReason::Signal(sig));
            log::warn!("signal {sig} while stopping or rebooting; it stops the VM");
            continue;
        }
        match stop.shut_down(None, Some(StopReason::Signal(sig))) {
            ShutdownStep::ButtonPressed => log::info!(
                "signal {sig}: power button pressed; waiting for the guest to power off \
                 (another signal stops it now)"
            ),
            ShutdownStep::StoppedNow => {
                crate::terminal::restore();
                log::info!("signal {sig}: stopping the VM")
            }
        }
    }
}

/// What a [`Vm`] is made of.
pub(crate) struct VmParts {
    pub kvm: Kvm,
    pub vm_fd: Arc<VmFd>,
    pub ram: GuestRam,
    pub ram_setup: RamSetup,
    pub devices: DeviceManager,
    pub stop: Arc<StopSignal>,
    pub passthrough: Option<Passthrough>,
    pub virtio: VirtioDevices,
    pub restart: Restart,
}

/// A built VM. Fields drop in order: threads are joined (in `Drop`) before the fds close
/// and RAM is unmapped.
pub struct Vm {
    threads: Vec<JoinHandle<VcpuFd>>,
    /// Host CPUs per vCPU index ([`Vm::pin_vcpus`]); empty for none.
    vcpu_cpus: Vec<Vec<usize>>,
    /// Guest boots in this process.
    boots: Arc<AtomicU32>,
    restart: Restart,
    stop: Arc<StopSignal>,
    counters: Arc<ExitCounters>,
    gate: Arc<PauseGate>,
    /// Faulting in and DMA-mapping RAM in the background; cancelled and joined before
    /// the devices are reset and RAM is unmapped.
    ram_setup: RamSetup,
    /// Where the vCPU threads wait out a reboot in place.
    restart_gate: Arc<RestartGate<ResetOrder>>,
    passthrough: Option<Passthrough>,
    /// Its I/O thread is joined before RAM is unmapped (it reads and writes guest RAM).
    virtio: VirtioDevices,
    devices: DeviceManager,
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    ram: GuestRam,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub(crate) fn new(parts: VmParts) -> Vm {
        let VmParts {
            kvm,
            vm_fd,
            ram,
            ram_setup,
            devices,
            stop,
            passthrough,
            virtio,
            restart,
        } = parts;
        let counters = Arc::new(ExitCounters::default());
        Vm {
            threads: Vec::new(),
            vcpu_cpus: Vec::new(),
            boots: Arc::new(AtomicU32::new(1)),
            restart,
            stop,
            counters,
            gate: Arc::default(),
            ram_setup,
            restart_gate: Arc::new(RestartGate::new(0)),
            passthrough,
            virtio,
            devices,
            vm_fd,
            _kvm: kvm,
            ram,
        }
    }

    /// Start one thread per vCPU, for the life of the VM; vCPU 0 is the boot processor.
    pub fn start_vcpus(&mut self, vcpus: Vec<VcpuFd>) -> Result<(), VcpuError> {
        vcpu::install_kick_handler()?;
        self.restart_gate = Arc::new(RestartGate::new(vcpus.len()));
        let ctx = VcpuContext {
            buses: self.devices.buses().clone(),
            counters: self.counters.clone(),
            stop: self.stop.clone(),
            gate: self.gate.clone(),
            bars: self.passthrough.as_ref().and_then(|p| p.bars().cloned()),
            dma: self.passthrough.as_ref().and_then(|p| p.dma().cloned()),
            restart: self.restart_gate.clone(),
        };
        for (index, fd) in (0u32..).zip(vcpus) {
            self.threads.push(vcpu::spawn_vcpu(index, fd, ctx.clone())?);
        }
        self.gate
            .set_threads(self.threads.iter().map(|t| t.as_pthread_t()).collect());
        self.apply_pinning();
        Ok(())
    }

    /// The handle the control API acts through.
    pub fn control(&self, spec: &VmSpec) -> VmHandle {
        VmHandle {
            stop: self.stop.clone(),
            gate: self.gate.clone(),
            counters: self.counters.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory.size_mib,
            hugepages: spec.memory.hugepages.to_string(),
            boots: self.boots.clone(),
            restarts: spec.lifecycle.on_reboot == OnReboot::Restart,
            devices: self
                .passthrough
                .as_ref()
                .map_or_else(Vec::new, |p| p.device_views()),
        }
    }

    /// Pin vCPU `i`'s thread to the host CPUs `cpus[i]` (guest NUMA), now and after every
    /// reboot in place; an empty set, or a refusal, leaves the thread where it is (logged).
    pub fn pin_vcpus(&mut self, cpus: Vec<Vec<usize>>) {
        self.vcpu_cpus = cpus;
        self.apply_pinning();
    }

    fn apply_pinning(&self) {
        use std::os::unix::thread::JoinHandleExt;
        for ((i, t), set) in (0u32..).zip(&self.threads).zip(&self.vcpu_cpus) {
            if set.is_empty() {
                continue;
            }
            match crate::numa::pin_thread(t.as_pthread_t(), set) {
                Ok(()) => log::info!("numa: vcpu{i} pinned to host CPUs {set:?}"),
                Err(e) => log::warn!("numa: cannot pin vcpu{i} to host CPUs {set:?}: {e}"),
            }
        }
    }

    /// Run until the guest powers off, reboots (with `on_reboot` "exit") or dies,
    /// rebooting it in place meanwhile with "restart"; stop and join all vCPUs.
    pub fn wait(mut self, on_reboot: OnReboot) -> Result<GuestExit, Error> {
        let reason = loop {
            match self.stop.wait() {
                StopReason::Reboot(how) if on_reboot == OnReboot::Restart => self.reboot(how)?,
                reason => break reason,
            }
        };
        self.stop_vcpus();
        logger::mark(phase::GUEST_EXIT);
        log::info!("{}", self.counters.summary());
        outcome(reason)
    }

    /// Kick every vCPU thread out of KVM_RUN and join it.
    fn stop_vcpus(&mut self) {
        drop(self.join_vcpus());
    }

    /// Kick every vCPU thread out of KVM_RUN (the VM is stopping, or stopped by now).
    fn kick_vcpus(&mut self) {
        self.gate.resume();
        if !self.stop.is_stopping() {
            self.stop.stop(StopReason::HostFailure {
                vcpu: 0,
                what: "VM torn down".into(),
            });
        }
        for t in &self.threads {
            // A thread that already left its loop may be gone; nothing to kick then.
            let _ = t.kill(vcpu::kick_signal());
        }
    }

    /// Kick every vCPU thread out of KVM_RUN and wait until all are parked (a reboot in
    /// place); fails if a thread is gone.
    fn park_vcpus(&mut self) -> Result<(), Error> {
        self.kick_vcpus();
        self.restart_gate
            .wait_parked()
            .map_err(|gone| Error::VcpuFailed {
                vcpu: 0,
                what: format!("{} vCPU thread(s) ended during the reboot", gone.0),
            })
    }

    /// Kick every vCPU thread out of KVM_RUN, let it end, join it and take its fd back
    /// (in index order); fails if a thread panicked (its fd is gone).
    fn join_vcpus(&mut self) -> Result<Vec<VcpuFd>, Error> {
        self.kick_vcpus();
        self.restart_gate.end();
        let mut fds = Vec::new();
        let mut lost = None;
        for (index, t) in (0u32..).zip(self.threads.drain(..)) {
            match t.join() {
                Ok(fd) => fds.push(fd),
                Err(_) => {
                    log::error!("strait-vcpu{index} panicked");
                    lost.get_or_insert(index);
                }
            }
        }
        match lost {
            None => Ok(fds),
            Some(vcpu) => Err(Error::VcpuFailed {
                vcpu,
                what: "its thread panicked".into(),
            }),
        }
    }

    /// The KVM VM fd (memory slots, irqfds, GSI routes for devices added later).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Guest memory (valid for the life of the `Vm`).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// The device manager (buses).
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// Exit counters so far.
    pub fn counters(&self) -> &ExitCounters {
        &self.counters
    }
}

/// The VM as the control API sees and drives it (see [`crate::api::VmControl`]).
pub struct VmHandle {
    stop: Arc<StopSignal>,
    gate: Arc<PauseGate>,
    counters: Arc<ExitCounters>,
    vcpus: u32,
    memory_mib: u64,
    hugepages: String,
    boots: Arc<AtomicU32>,
    /// A reboot restarts the guest in place (`lifecycle.on_reboot` "restart").
    restarts: bool,
    /// Host and guest addresses, IDs and BARs as placed at boot.
    devices: Vec<DeviceView>,
}

impl VmControl for VmHandle {
    fn view(&self) -> VmView {
        let state = if self.restarts && self.stop.reboot_requested() {
            RunState::Rebooting
        } else if self.stop.is_stopping() {
            RunState::Stopping
        } else if self.gate.is_paused() {
            RunState::Paused
        } else if self.stop.shutdown_under_way() {
            RunState::ShuttingDown
        } else {
            RunState::Running
        };
        VmView {
            state,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            hugepages: self.hugepages.clone(),
            devices: self.devices.clone(),
            timeline: logger::timeline(),
            boots: self.boots.load(Ordering::SeqCst),
            exits: self.counters.snapshot().to_vec(),
        }
    }

    fn act(&self, action: Action) -> Result<(), String> {
        match action {
            Action::PowerButton => match self.stop.press_power_button() {
                Ok(true) => Ok(()),
                Ok(false) => Err("the power button is not wired yet".into()),
                Err(e) => Err(format!("cannot press the power button: {e}")),
            },
            Action::Shutdown(timeout) => {
                self.stop.shut_down(timeout, None);
                Ok(())
            }
            Action::Reboot => {
                self.stop.stop(StopReason::Reboot("control API"));
                Ok(())
            }
            Action::Pause => {
                if self.gate.pause() {
                    log::info!("vCPUs paused");
                    Ok(())
                } else {
                    self.gate.resume();
                    Err("the vCPUs did not stop within 5 s; resumed".into())
                }
            }
            Action::Resume => {
                self.gate.resume();
                log::info!("vCPUs resumed");
                Ok(())
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_vcpus();
        self.ram_setup.cancel();
        self.virtio.stop();
        if let Some(p) = &self.passthrough {
            p.shutdown();
            logger::mark(phase::DEVICES_RELEASED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_and_reboot_are_successes() {
        assert_eq!(outcome(StopReason::PowerOff).unwrap(), GuestExit::PowerOff);
        assert!(matches!(
            outcome(StopReason::Reboot("x")),
            Ok(GuestExit::Reboot("x"))
        ));
    }

    #[test]
    fn a_signal_is_an_error_naming_it() {
        let r = outcome(StopReason::Signal(libc::SIGTERM));
        assert!(matches!(r, Err(Error::Signalled { signal }) if signal == libc::SIGTERM));
    }

    #[test]
    fn termination_set_holds_sigint_sigterm_and_sighup_only() {
        let set = termination_signals();
        // SAFETY: `set` is initialised.
        let has = |s| unsafe { libc::sigismember(&set, s) } == 1;
        assert!(has(libc::SIGINT) && has(libc::SIGTERM) && has(libc::SIGHUP));
        assert!(!has(libc::SIGKILL) && !has(libc::SIGQUIT));
    }

    #[test]
    fn reboot_exits_8_and_power_off_0() {
        assert_eq!(GuestExit::PowerOff.exit_code() as u8, 0);
        assert_eq!(GuestExit::Reboot("x").exit_code() as u8, 8);
    }

    #[test]
    fn triple_fault_and_timeout_are_errors_of_their_own() {
        let r = outcome(StopReason::TripleFault { vcpu: 0 });
        assert!(matches!(r, Err(Error::TripleFault { vcpu: 0 })));
        let r = outcome(StopReason::ShutdownTimeout { secs: 30 });
        assert!(matches!(r, Err(Error::ShutdownTimeout { secs: 30 })));
    }

    #[test]
    fn guest_fatal_is_an_error() {
        let r = outcome(StopReason::GuestFatal {
            vcpu: 1,
            what: "x".into(),
        });
        assert!(matches!(r, Err(Error::GuestFatal { vcpu: 1, .. })));
    }
}
