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
//!
//! A reboot in place keeps the vCPU fds: each one's state right after KVM_CREATE_VCPU
//! and KVM_SET_CPUID2 ([`PowerOnState`]: registers, segments, FPU, XCRs, LAPIC, MP
//! state, pending events, debug registers and the MSRs KVM knows, KVM's paravirtual
//! ones included) is kept, and the restarted thread puts it back and loads the boot
//! state on top before its first KVM_RUN ([`reset_vcpu`]).

use std::cell::Cell;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use resources::lock;

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::exits::{handle_exit, ExitCounters, Step, StopReason};
use crate::io_buses::IoBuses;
use crate::passthrough::BarMapper;
use crate::sandbox::{self, ThreadKind};
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
    #[error("KVM_GET_MSR_INDEX_LIST failed")]
    MsrIndexList(#[source] kvm_ioctls::Error),
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
    /// The MSRs a reset puts back ([`reset_msr_indices`]).
    pub reset_msrs: Vec<u32>,
    /// The spec's `cpu.hide_hypervisor`: no hypervisor bit, no KVM leaves.
    pub hide_hypervisor: bool,
}

/// The MSRs a reboot in place restores: the boot MSRs and KVM's paravirtual ones, as far
/// as this KVM knows them (KVM_GET_MSR_INDEX_LIST; KVM_SET_MSRS stops at the first
/// unknown index).
pub fn reset_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, VcpuError> {
    let known = kvm.get_msr_index_list().map_err(VcpuError::MsrIndexList)?;
    let known = known.as_slice();
    let wanted = arch::x86_64::boot_msrs()
        .into_iter()
        .map(|e| e.index)
        .chain(arch::x86_64::KVM_PARAVIRT_MSRS);
    Ok(wanted.filter(|i| known.contains(i)).collect())
}

/// A vCPU as KVM creates it (after KVM_SET_CPUID2), before Strait's boot state: what a
/// reset puts back. Optional parts are those this KVM cannot read.
#[derive(Clone)]
pub struct PowerOnState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    xcrs: Option<kvm_xcrs>,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: Option<kvm_vcpu_events>,
    debugregs: Option<kvm_debugregs>,
    msrs: Vec<kvm_msr_entry>,
}

impl std::fmt::Debug for PowerOnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerOnState")
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

fn kvm_err(index: u32, action: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Kvm {
        index,
        action,
        source,
    }
}

impl PowerOnState {
    /// Read `vcpu`'s state; `msrs` are the indices to keep ([`reset_msr_indices`]).
    fn capture(vcpu: &VcpuFd, index: u32, msrs: &[u32]) -> Result<PowerOnState, VcpuError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut list = Msrs::from_entries(&entries).map_err(|_| VcpuError::SetMsrs {
            index,
            set: 0,
            total: entries.len(),
        })?;
        let read = vcpu
            .get_msrs(&mut list)
            .map_err(kvm_err(index, "KVM_GET_MSRS"))?;
        Ok(PowerOnState {
            regs: vcpu.get_regs().map_err(kvm_err(index, "KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_err(index, "KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(kvm_err(index, "KVM_GET_FPU"))?,
            xcrs: vcpu.get_xcrs().ok(),
            lapic: vcpu.get_lapic().map_err(kvm_err(index, "KVM_GET_LAPIC"))?,
            mp_state: vcpu
                .get_mp_state()
                .map_err(kvm_err(index, "KVM_GET_MP_STATE"))?,
            events: vcpu.get_vcpu_events().ok(),
            debugregs: vcpu.get_debug_regs().ok(),
            msrs: list.as_slice()[..read].to_vec(),
        })
    }

    /// Write it back (the order QEMU's reset uses: registers, FPU, XCRs, segments, MSRs,
    /// LAPIC, MP state, events).
    fn restore(&self, vcpu: &VcpuFd, index: u32) -> Result<(), VcpuError> {
        let e = |action| kvm_err(index, action);
        vcpu.set_regs(&self.regs).map_err(e("KVM_SET_REGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(e("KVM_SET_FPU"))?;
        if let Some(x) = &self.xcrs {
            vcpu.set_xcrs(x).map_err(e("KVM_SET_XCRS"))?;
        }
        vcpu.set_sregs(&self.sregs).map_err(e("KVM_SET_SREGS"))?;
        set_all_msrs(vcpu, index, &self.msrs)?;
        vcpu.set_lapic(&self.lapic).map_err(e("KVM_SET_LAPIC"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(e("KVM_SET_MP_STATE"))?;
        if let Some(ev) = &self.events {
            vcpu.set_vcpu_events(ev).map_err(e("KVM_SET_VCPU_EVENTS"))?;
        }
        if let Some(d) = &self.debugregs {
            vcpu.set_debug_regs(d).map_err(e("KVM_SET_DEBUGREGS"))?;
        }
        Ok(())
    }
}

/// KVM_SET_MSRS with every entry, or an error naming how many KVM took.
fn set_all_msrs(vcpu: &VcpuFd, index: u32, entries: &[kvm_msr_entry]) -> Result<(), VcpuError> {
    let total = entries.len();
    let msrs = Msrs::from_entries(entries).map_err(|_| VcpuError::SetMsrs {
        index,
        set: 0,
        total,
    })?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(kvm_err(index, "KVM_SET_MSRS"))?;
    if set != total {
        return Err(VcpuError::SetMsrs { index, set, total });
    }
    Ok(())
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

/// Create vCPU `index` of `count`, keep its power-on state and load its boot state.
pub fn create_vcpu(
    vm: &VmFd,
    index: u32,
    count: u32,
    boot: &BootCpuState,
) -> Result<(VcpuFd, PowerOnState), VcpuError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm_err(index, "KVM_CREATE_VCPU"))?;
    let mut cpuid = boot.supported_cpuid.clone();
    arch::x86_64::patch_cpuid(&mut cpuid, index, count)
        .map_err(|source| VcpuError::Arch { index, source })?;
    if boot.hide_hypervisor {
        arch::x86_64::hide_hypervisor(&mut cpuid);
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(kvm_err(index, "KVM_SET_CPUID2"))?;
    let power_on = PowerOnState::capture(&vcpu, index, &boot.reset_msrs)?;
    load_boot_state(&vcpu, index, boot)?;
    Ok((vcpu, power_on))
}

/// A reboot in place: the power-on state back, then the boot state again.
pub fn reset_vcpu(
    vcpu: &VcpuFd,
    index: u32,
    power_on: &PowerOnState,
    boot: &BootCpuState,
) -> Result<(), VcpuError> {
    power_on.restore(vcpu, index)?;
    load_boot_state(vcpu, index, boot)
}

/// Strait's boot state over KVM's: MSRs, FPU, LAPIC LINT pins, and for the boot vCPU the
/// registers and segments of the 64-bit entry.
fn load_boot_state(vcpu: &VcpuFd, index: u32, boot: &BootCpuState) -> Result<(), VcpuError> {
    let kvm = |action| kvm_err(index, action);
    set_all_msrs(vcpu, index, &arch::x86_64::boot_msrs())?;
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
    Ok(())
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

/// Pausing the vCPUs (the API's pause/resume): a paused vCPU thread parks before its
/// next KVM_RUN; [`PauseGate::pause`] kicks every thread out of the guest and waits
/// until all are parked. Passed-through devices are not touched.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<PauseState>,
    changed: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

#[derive(Debug, Default)]
struct PauseState {
    paused: bool,
    parked: usize,
}

/// How long [`PauseGate::pause`] waits for the vCPUs to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);

impl PauseGate {
    /// The vCPU threads to kick (set when they start).
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        *lock(&self.threads) = threads;
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Park every vCPU; true once all are parked within the timeout.
    pub fn pause(&self) -> bool {
        lock(&self.state).paused = true;
        let threads = lock(&self.threads).clone();
        for t in &threads {
            // SAFETY: `t` is a vCPU thread of this process, joined only after the VM
            // stopped; the kick signal's handler only sets immediate_exit.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
        let deadline = Instant::now() + PARK_TIMEOUT;
        let mut s = lock(&self.state);
        while s.parked < threads.len() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Let the vCPUs run again.
    pub fn resume(&self) {
        lock(&self.state).paused = false;
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before KVM_RUN: wait here while paused (and not stopping).
    fn park_while_paused(&self, stop: &StopSignal) {
        let mut s = lock(&self.state);
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !stop.is_stopping() {
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        s.parked -= 1;
    }
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    pub buses: IoBuses,
    pub counters: Arc<ExitCounters>,
    pub stop: Arc<StopSignal>,
    pub gate: Arc<PauseGate>,
    /// Passed-through BARs: config-write effects are applied after each dispatch.
    pub bars: Option<Arc<BarMapper>>,
}

/// What a restarted vCPU thread does before its first KVM_RUN (a reboot in place).
pub struct ResetOrder {
    pub power_on: PowerOnState,
    pub boot: Arc<BootCpuState>,
    /// Every vCPU waits here after its reset, so no AP is reset after the boot vCPU
    /// could have sent it INIT/SIPI.
    pub barrier: Arc<Barrier>,
}

/// Start vCPU `index` on its own thread (after `reset`, if given). The thread gives the
/// fd back when the VM stops, for a reboot in place.
pub fn spawn_vcpu(
    index: u32,
    vcpu: VcpuFd,
    ctx: VcpuContext,
    reset: Option<ResetOrder>,
) -> Result<JoinHandle<VcpuFd>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("strait-vcpu{index}"))
        .spawn(move || run_vcpu(index, vcpu, &ctx, reset))
        .map_err(|source| VcpuError::SpawnThread { index, source })
}

/// The vCPU loop. Ends when the VM stops; reports its own reason for stopping, if any.
fn run_vcpu(index: u32, mut vcpu: VcpuFd, ctx: &VcpuContext, reset: Option<ResetOrder>) -> VcpuFd {
    let _guard = StopOnPanic {
        stop: &ctx.stop,
        index,
    };
    if let Some(order) = reset {
        let res = reset_vcpu(&vcpu, index, &order.power_on, &order.boot);
        order.barrier.wait();
        if let Err(e) = res {
            ctx.stop.stop(StopReason::HostFailure {
                vcpu: index,
                what: format!("reset for the reboot failed: {e}"),
            });
        }
    }
    KVM_RUN.with(|p| p.set(std::ptr::from_mut(vcpu.get_kvm_run())));
    if let Err(e) = sandbox::enter(ThreadKind::Vcpu) {
        ctx.stop.stop(StopReason::HostFailure {
            vcpu: index,
            what: crate::error::Error::from(e).one_line(),
        });
        return vcpu;
    }
    while !ctx.stop.is_stopping() {
        ctx.gate.park_while_paused(&ctx.stop);
        if ctx.stop.is_stopping() {
            break;
        }
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
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    vcpu
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
    fn pause_parks_every_vcpu_thread_and_resume_releases_them() {
        use std::os::unix::thread::JoinHandleExt;
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(StopSignal::default());
        install_kick_handler().unwrap();
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (g, s, r) = (gate.clone(), stop.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !s.is_stopping() {
                        g.park_while_paused(&s);
                        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        gate.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        assert!(gate.pause() && gate.is_paused());
        let before = runs.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), before);
        gate.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(runs.load(std::sync::atomic::Ordering::SeqCst) > before);
        assert!(gate.pause());
        stop.stop(StopReason::PowerOff);
        for t in threads {
            t.join().unwrap();
        }
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
