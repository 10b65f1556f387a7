//! A running VM: its vCPU threads, devices, KVM handles and RAM, and how it ends.
//!
//! The first stop request wins (a power-off written by the guest, a triple fault, a fatal
//! exit); then every vCPU thread is kicked out of KVM_RUN and joined, and only then is
//! guest RAM unmapped (field order of [`Vm`]). Passed-through functions go quiet before
//! that: their BAR slots and traps are removed, interrupts and bus mastering turned off
//! and the functions reset; dropping the devices then unmaps DMA and closes the fds.
//!
//! SIGINT and SIGTERM are one more stop request ([`forward_termination_signals`]), so a
//! killed Strait tears down in the same order.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::{io, mem};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::device_manager::DeviceManager;
use crate::error::Error;
use crate::exits::{ExitCounters, StopReason};
use crate::logger::{self, phase};
use crate::memory::GuestRam;
use crate::passthrough::Passthrough;
use crate::stop::StopSignal;
use crate::vcpu::{self, VcpuContext, VcpuError};

/// How a guest that ended normally ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    PowerOff,
    Reboot(&'static str),
}

/// Map the stop reason to the outcome of `strait run`.
pub fn outcome(reason: StopReason) -> Result<GuestExit, Error> {
    match reason {
        StopReason::PowerOff => Ok(GuestExit::PowerOff),
        StopReason::Reboot(how) => Ok(GuestExit::Reboot(how)),
        StopReason::GuestFatal { vcpu, what } => Err(Error::GuestFatal { vcpu, what }),
        StopReason::HostFailure { vcpu, what } => Err(Error::VcpuFailed { vcpu, what }),
        StopReason::Signal(signal) => Err(Error::Signalled { signal }),
    }
}

/// The termination signals Strait turns into a stop request.
fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// Block SIGINT and SIGTERM in the calling thread, and so in every thread it starts
/// later, and turn them into a stop request on `stop` from a thread of their own (a
/// signal handler could not take the stop signal's lock). Call before starting threads.
pub fn forward_termination_signals(stop: Arc<StopSignal>) -> io::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    std::thread::Builder::new()
        .name("strait-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is ours to write.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if stop.is_stopping() {
                log::warn!("signal {sig} while stopping; teardown is under way");
            } else {
                log::info!("signal {sig}: stopping the VM");
            }
            stop.stop(StopReason::Signal(sig));
        })
        .map(drop)
}

/// What a [`Vm`] is made of.
pub(crate) struct VmParts {
    pub kvm: Kvm,
    pub vm_fd: Arc<VmFd>,
    pub ram: GuestRam,
    pub devices: DeviceManager,
    pub stop: Arc<StopSignal>,
    pub passthrough: Option<Passthrough>,
}

/// A built VM. Fields drop in order: threads are joined (in `Drop`) before the fds close
/// and RAM is unmapped.
pub struct Vm {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<StopSignal>,
    counters: Arc<ExitCounters>,
    passthrough: Option<Passthrough>,
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
            devices,
            stop,
            passthrough,
        } = parts;
        let counters = Arc::new(ExitCounters::default());
        Vm {
            threads: Vec::new(),
            stop,
            counters,
            passthrough,
            devices,
            vm_fd,
            _kvm: kvm,
            ram,
        }
    }

    /// Start one thread per vCPU; vCPU 0 is the boot processor.
    pub fn start_vcpus(&mut self, vcpus: Vec<VcpuFd>) -> Result<(), VcpuError> {
        vcpu::install_kick_handler()?;
        let ctx = VcpuContext {
            buses: self.devices.buses().clone(),
            counters: self.counters.clone(),
            stop: self.stop.clone(),
            bars: self.passthrough.as_ref().and_then(|p| p.bars().cloned()),
        };
        for (index, fd) in (0u32..).zip(vcpus) {
            self.threads.push(vcpu::spawn_vcpu(index, fd, ctx.clone())?);
        }
        Ok(())
    }

    /// Pin each vCPU thread to the host CPUs `cpus` gives for its index (guest NUMA);
    /// a vCPU it gives none for, or a refusal, leaves the thread where it is (logged).
    pub fn pin_vcpus<'a>(&self, cpus: impl Fn(u32) -> Option<&'a [usize]>) {
        use std::os::unix::thread::JoinHandleExt;
        for (i, t) in (0u32..).zip(&self.threads) {
            let Some(set) = cpus(i).filter(|s| !s.is_empty()) else {
                continue;
            };
            match crate::numa::pin_thread(t.as_pthread_t(), set) {
                Ok(()) => log::info!("numa: vcpu{i} pinned to host CPUs {set:?}"),
                Err(e) => log::warn!("numa: cannot pin vcpu{i} to host CPUs {set:?}: {e}"),
            }
        }
    }

    /// Run until the guest powers off, reboots or dies; stop and join all vCPUs.
    pub fn wait(mut self) -> Result<GuestExit, Error> {
        let reason = self.stop.wait();
        self.stop_vcpus();
        logger::mark(phase::GUEST_EXIT);
        log::info!("{}", self.counters.summary());
        outcome(reason)
    }

    /// Kick every vCPU thread out of KVM_RUN and join it.
    fn stop_vcpus(&mut self) {
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
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("vcpu").to_string();
            if t.join().is_err() {
                log::error!("{name} panicked");
            }
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

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_vcpus();
        if let Some(p) = &self.passthrough {
            p.shutdown();
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
    fn termination_set_holds_sigint_and_sigterm_only() {
        let set = termination_signals();
        // SAFETY: `set` is initialised.
        let has = |s| unsafe { libc::sigismember(&set, s) } == 1;
        assert!(has(libc::SIGINT) && has(libc::SIGTERM));
        assert!(!has(libc::SIGKILL) && !has(libc::SIGHUP));
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
