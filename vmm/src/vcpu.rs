//! vCPUs: boot state per the arch recipe (arch/src/x86_64/mod.rs, step 4) and the thread
//! that runs each one.
//!
//! The loop is flat: enter the guest, let [`exits::handle_exit`] decide, repeat until the
//! VM stops. Stopping uses `kvm_run.immediate_exit` (KVM API, "immediate_exit"): the VM
//! sets its stop flag, then signals every vCPU thread; the signal handler sets
//! `immediate_exit` so a thread about to enter KVM_RUN returns at once with EINTR instead
//! of sleeping on a HLT, and a thread inside KVM_RUN is kicked out by the signal itself.
//! Application processors are started by the guest with INIT/SIPI through the in-kernel
//! LAPIC, which also holds their MP state.

use std::cell::Cell;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::exits::{handle_exit, ExitCounters, Step, StopReason};
use crate::io_buses::IoBuses;
use crate::passthrough::BarMapper;
use crate::stop::StopSignal;

/// Offset from SIGRTMIN of the signal that kicks vCPUs out of KVM_RUN.
const KICK_SIGNAL_OFFSET: c_int = 0;

/// Failures creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vcpu{index}: {action} failed")]
    Kvm {
        index: u32,
        action: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vcpu{index}: KVM accepted {set} of {total} boot MSRs")]
    SetMsrs {
        index: u32,
        set: usize,
        total: usize,
    },
    #[error("vcpu{index}: cannot compute its boot state")]
    Arch {
        index: u32,
        #[source]
        source: arch::Error,
    },
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot install the vCPU kick signal handler")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    #[error("vcpu{index}: cannot start its thread")]
    SpawnThread {
        index: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Boot state shared by all vCPUs.
#[derive(Debug, Clone)]
pub struct BootCpuState {
    /// 64-bit kernel entry (boot vCPU `rip`).
    pub entry: GuestAddress,
    /// CR3 of the identity-mapped boot page tables.
    pub cr3: u64,
    /// [`guest_cpuid`], patched per vCPU.
    pub supported_cpuid: CpuId,
    /// The spec's `cpu.hide_hypervisor`: no hypervisor bit, no KVM leaves.
    pub hide_hypervisor: bool,
}

/// The CPUID table every vCPU starts from: what KVM supports, plus what it emulates but
/// reports only as a capability (the TSC-deadline timer).
pub fn guest_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)?;
    let emulated = arch::x86_64::EmulatedFeatures {
        tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    log::debug!("KVM emulates {emulated:?}");
    arch::x86_64::add_emulated_features(&mut cpuid, emulated);
    Ok(cpuid)
}

/// The kernel command line the guest boots with: the spec's, plus, with the hypervisor
/// hidden, `tsc_early_khz=` with the rate KVM runs new vCPUs' TSCs at. A guest that
/// finds no hypervisor has no kvmclock and calibrates its TSC against the PIT, HPET or
/// ACPI PM timer; Strait offers only the PIT, and where that calibration fails (nested
/// or loaded hosts) the guest marks the TSC unusable and hangs in its timer checks.
pub fn guest_cmdline(kvm: &Kvm, cmdline: &str, hide_hypervisor: bool) -> String {
    if !hide_hypervisor || cmdline.contains("tsc_early_khz=") {
        return cmdline.to_string();
    }
    match tsc_khz(kvm) {
        Ok(khz) => with_tsc_khz(cmdline, khz),
        Err(e) => {
            log::warn!("cannot read the vCPU TSC rate ({e}); the guest calibrates its TSC");
            cmdline.to_string()
        }
    }
}

/// `cmdline` with `tsc_early_khz=khz` appended.
fn with_tsc_khz(cmdline: &str, khz: u32) -> String {
    format!("{} tsc_early_khz={khz}", cmdline.trim_end())
}

/// The TSC rate of a new vCPU (KVM_GET_TSC_KHZ), read from a scratch VM: the VM's own
/// vCPUs are created after the kernel is loaded.
fn tsc_khz(kvm: &Kvm) -> Result<u32, kvm_ioctls::Error> {
    let vm = kvm.create_vm()?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.get_tsc_khz()
}

/// Create vCPU `index` of `count` and load its boot state.
pub fn create_vcpu(
    vm: &VmFd,
    index: u32,
    count: u32,
    boot: &BootCpuState,
) -> Result<VcpuFd, VcpuError> {
    let kvm = |action| {
        move |source| VcpuError::Kvm {
            index,
            action,
            source,
        }
    };
    let arch_err = |source| VcpuError::Arch { index, source };
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm("KVM_CREATE_VCPU"))?;

    let mut cpuid = boot.supported_cpuid.clone();
    arch::x86_64::patch_cpuid(&mut cpuid, index, count).map_err(arch_err)?;
    if boot.hide_hypervisor {
        arch::x86_64::hide_hypervisor(&mut cpuid);
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;

    let entries = arch::x86_64::boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::SetMsrs {
        index,
        set: 0,
        total: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(VcpuError::SetMsrs {
            index,
            set,
            total: entries.len(),
        });
    }
    vcpu.set_fpu(&arch::x86_64::boot_fpu())
        .map_err(kvm("KVM_SET_FPU"))?;

    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    arch::x86_64::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

    // Only the boot vCPU starts at the kernel; APs wait for INIT/SIPI, which resets them.
    if index == 0 {
        vcpu.set_regs(&arch::x86_64::boot_regs(boot.entry))
            .map_err(kvm("KVM_SET_REGS"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        arch::x86_64::set_boot_sregs(&mut sregs, boot.cr3);
        vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    }
    Ok(vcpu)
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler. Const-initialised and without
    /// a destructor, so reading it from a signal handler is async-signal-safe.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set by `run_vcpu` to this thread's live kvm_run mapping
        // and cleared before the vCPU fd (and the mapping) is dropped. A volatile byte
        // store is all the handler does.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The kick signal number.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Install the kick handler (process-wide; once before starting vCPU threads).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::KickHandler)
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    pub buses: IoBuses,
    pub counters: Arc<ExitCounters>,
    pub stop: Arc<StopSignal>,
    /// Passed-through BARs: config-write effects are applied after each dispatch.
    pub bars: Option<Arc<BarMapper>>,
}

/// Start vCPU `index` on its own thread.
pub fn spawn_vcpu(index: u32, vcpu: VcpuFd, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("strait-vcpu{index}"))
        .spawn(move || run_vcpu(index, vcpu, &ctx))
        .map_err(|source| VcpuError::SpawnThread { index, source })
}

/// The vCPU loop. Ends when the VM stops; reports its own reason for stopping, if any.
fn run_vcpu(index: u32, mut vcpu: VcpuFd, ctx: &VcpuContext) {
    let _guard = StopOnPanic {
        stop: &ctx.stop,
        index,
    };
    KVM_RUN.with(|p| p.set(std::ptr::from_mut(vcpu.get_kvm_run())));
    while !ctx.stop.is_stopping() {
        let step = match vcpu.run() {
            Ok(exit) => {
                let step = handle_exit(index, exit, &ctx.buses, &ctx.counters);
                // Outside the bus locks now; before the guest sees the write complete.
                if let Some(bars) = &ctx.bars {
                    bars.apply_pending();
                }
                step
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ctx.counters.count_interrupted();
                // A kick only matters when stopping (checked by the loop); clear it so a
                // stray signal does not keep KVM_RUN returning at once.
                vcpu.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => Step::Stop {
                reason: StopReason::HostFailure {
                    vcpu: index,
                    what: format!("KVM_RUN failed: {e}"),
                },
                dump_regs: true,
            },
        };
        if let Step::Stop { reason, dump_regs } = step {
            if dump_regs {
                log_registers(index, &vcpu);
            }
            ctx.stop.stop(reason);
        }
    }
}

/// Stops the VM if a vCPU thread unwinds, so the main thread is not left waiting for a
/// stop request that will never come.
struct StopOnPanic<'a> {
    stop: &'a StopSignal,
    index: u32,
}

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        if std::thread::panicking() {
            let what = "vCPU thread panicked".to_string();
            self.stop.stop(StopReason::HostFailure {
                vcpu: self.index,
                what,
            });
        }
    }
}

/// Log what a user needs to debug a dead guest: instruction pointer, stack, paging state.
fn log_registers(index: u32, vcpu: &VcpuFd) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => log::error!(
            "vcpu{index}: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rsi={:#x} cr0={:#x} \
             cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rsi,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector
        ),
        (Err(e), _) | (_, Err(e)) => log::error!("vcpu{index}: cannot read registers: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_rate_is_appended_to_the_command_line() {
        assert_eq!(
            with_tsc_khz("console=ttyS0 quiet ", 2_994_372),
            "console=ttyS0 quiet tsc_early_khz=2994372"
        );
    }

    #[test]
    fn a_panicking_vcpu_thread_stops_the_vm() {
        let stop = Arc::new(StopSignal::default());
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            let _guard = StopOnPanic {
                stop: &s2,
                index: 3,
            };
            panic!("test panic");
        });
        assert!(t.join().is_err());
        assert!(matches!(
            stop.wait(),
            StopReason::HostFailure { vcpu: 3, .. }
        ));
    }

    #[test]
    fn kick_signal_is_a_realtime_signal() {
        assert!(kick_signal() >= SIGRTMIN() && kick_signal() <= vmm_sys_util::signal::SIGRTMAX());
    }

    #[test]
    fn kick_handler_without_vcpu_is_harmless() {
        // No kvm_run registered on this thread: the handler must not touch memory.
        kick_handler(kick_signal(), std::ptr::null_mut(), std::ptr::null_mut());
        assert!(KVM_RUN.with(Cell::get).is_null());
    }

    #[test]
    fn kick_handler_sets_immediate_exit() {
        // SAFETY: kvm_run is plain old data; all-zero is a valid value.
        let mut run: kvm_run = unsafe { std::mem::zeroed() };
        KVM_RUN.with(|p| p.set(&mut run));
        kick_handler(kick_signal(), std::ptr::null_mut(), std::ptr::null_mut());
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        assert_eq!(run.immediate_exit, 1);
    }
}
