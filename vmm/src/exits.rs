//! What a vCPU exit means: the pure decision step of the vCPU loop (KVM API,
//! Documentation/virt/kvm/api.rst, "kvm_run" exit reasons).
//!
//! [`handle_exit`] takes one exit, dispatches I/O to the buses and says whether the vCPU
//! goes on or the VM stops, and why. It touches no vCPU fd, so every decision is unit
//! tested. Exits are counted per kind for the benchmark; MMIO exits into the trapped parts
//! of passed-through BARs (`bar_read`, `bar_write`) are counted apart from other MMIO, so
//! the benchmark can show that BAR data accesses, mapped into the guest, cost none.

use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;
use resources::limited_debug;
use resources::LogLimiter;

use crate::io_buses::IoBuses;

static UNCLAIMED_PIO: LogLimiter = LogLimiter::new();
static UNCLAIMED_MMIO: LogLimiter = LogLimiter::new();
static STRING_IO: LogLimiter = LogLimiter::new();
static IGNORED_EXIT: LogLimiter = LogLimiter::new();

/// Why the VM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// ACPI S5 or a KVM shutdown system event.
    PowerOff,
    /// The guest asked for a reset (how: ACPI reset register, i8042, system event, API).
    Reboot(&'static str),
    /// A triple fault: the guest's CPU state is beyond repair. Linux only falls back to
    /// one after the ACPI reset register failed, so it is a crash, not a reboot.
    TripleFault { vcpu: u32 },
    /// The guest cannot go on (entry failure, KVM internal error, crash event).
    GuestFatal { vcpu: u32, what: String },
    /// A host-side failure in the vCPU loop (ioctl error, thread spawn).
    HostFailure { vcpu: u32, what: String },
    /// Strait got SIGINT, SIGTERM or SIGHUP and stopped at once (during setup, or a
    /// second signal while the guest was shutting down).
    Signal(i32),
    /// The guest did not power off within the graceful shutdown timeout.
    ShutdownTimeout { secs: u64 },
    /// Faulting in or DMA-mapping guest RAM behind the running guest failed
    /// (`ram_setup`): the error, and the exit code it has during setup.
    RamSetup {
        what: String,
        exit: crate::error::ExitCode,
    },
}

/// Decision for one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM. `dump_regs` asks the caller to log the vCPU registers first.
    Stop { reason: StopReason, dump_regs: bool },
}

/// Exit counts by kind, shared by all vCPUs.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub hlt: AtomicU64,
    pub shutdown: AtomicU64,
    pub system_event: AtomicU64,
    pub interrupted: AtomicU64,
    pub other: AtomicU64,
    pub bar_read: AtomicU64,
    pub bar_write: AtomicU64,
}

impl ExitCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a KVM_RUN that returned EINTR/EAGAIN (a kick or a signal).
    pub fn count_interrupted(&self) {
        Self::bump(&self.interrupted);
    }

    /// `(name, count)` pairs, in a fixed order.
    pub fn snapshot(&self) -> [(&'static str, u64); 11] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("io_in", get(&self.io_in)),
            ("io_out", get(&self.io_out)),
            ("mmio_read", get(&self.mmio_read)),
            ("mmio_write", get(&self.mmio_write)),
            ("hlt", get(&self.hlt)),
            ("shutdown", get(&self.shutdown)),
            ("system_event", get(&self.system_event)),
            ("interrupted", get(&self.interrupted)),
            ("other", get(&self.other)),
            ("bar_read", get(&self.bar_read)),
            ("bar_write", get(&self.bar_write)),
        ]
    }

    /// One line a benchmark can parse: `exits: total=N io_in=N ...`.
    pub fn summary(&self) -> String {
        let snap = self.snapshot();
        let total: u64 = snap.iter().map(|(_, n)| n).sum();
        let mut s = format!("exits: total={total}");
        for (name, n) in snap {
            s.push_str(&format!(" {name}={n}"));
        }
        s
    }
}

/// Decide what exit `exit` of vCPU `vcpu` means, performing any I/O it asks for.
pub fn handle_exit(
    vcpu: u32,
    exit: VcpuExit<'_>,
    buses: &IoBuses,
    counters: &ExitCounters,
) -> Step {
    if log::log_enabled!(log::Level::Trace) {
        trace_exit(vcpu, &exit);
    }
    match exit {
        VcpuExit::IoIn(port, data) => {
            ExitCounters::bump(&counters.io_in);
            port_read(buses, port, data);
            Step::Continue
        }
        VcpuExit::IoOut(port, data) => {
            ExitCounters::bump(&counters.io_out);
            port_write(buses, port, data);
            Step::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if buses.bar_mmio().read(addr, data) {
                ExitCounters::bump(&counters.bar_read);
                return Step::Continue;
            }
            ExitCounters::bump(&counters.mmio_read);
            if !buses.mmio().read(addr, data) {
                limited_debug!(
                    UNCLAIMED_MMIO,
                    "vcpu{vcpu}: unclaimed MMIO read at {addr:#x}"
                );
                data.fill(0xff);
            }
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if buses.bar_mmio().write(addr, data) {
                ExitCounters::bump(&counters.bar_write);
                return Step::Continue;
            }
            ExitCounters::bump(&counters.mmio_write);
            if !buses.mmio().write(addr, data) {
                limited_debug!(
                    UNCLAIMED_MMIO,
                    "vcpu{vcpu}: unclaimed MMIO write at {addr:#x}"
                );
            }
            Step::Continue
        }
        // With the in-kernel LAPIC, HLT stays in KVM; an exit here is harmless.
        VcpuExit::Hlt => {
            ExitCounters::bump(&counters.hlt);
            Step::Continue
        }
        VcpuExit::Shutdown => {
            ExitCounters::bump(&counters.shutdown);
            stop(StopReason::TripleFault { vcpu }, true)
        }
        VcpuExit::SystemEvent(kind, data) => {
            ExitCounters::bump(&counters.system_event);
            system_event(vcpu, kind, data)
        }
        VcpuExit::FailEntry(reason, cpu) => {
            ExitCounters::bump(&counters.other);
            let what = format!("VM entry failed, hardware reason {reason:#x} on host cpu {cpu}");
            stop(StopReason::GuestFatal { vcpu, what }, true)
        }
        VcpuExit::InternalError => {
            ExitCounters::bump(&counters.other);
            let what = "KVM internal error (emulation failure)".to_string();
            stop(StopReason::GuestFatal { vcpu, what }, true)
        }
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => {
            ExitCounters::bump(&counters.other);
            Step::Continue
        }
        other => {
            ExitCounters::bump(&counters.other);
            limited_debug!(IGNORED_EXIT, "vcpu{vcpu}: unexpected exit {other:?}");
            let what = format!("unexpected vCPU exit {other:?}");
            stop(StopReason::GuestFatal { vcpu, what }, true)
        }
    }
}

/// Trace one exit, addresses in hex (the `Debug` form of `VcpuExit` prints decimal).
fn trace_exit(vcpu: u32, exit: &VcpuExit<'_>) {
    match exit {
        VcpuExit::IoIn(port, data) => log::trace!("vcpu{vcpu}: in {port:#x} len {}", data.len()),
        VcpuExit::IoOut(port, data) => log::trace!("vcpu{vcpu}: out {port:#x} {data:x?}"),
        VcpuExit::MmioRead(addr, data) => {
            log::trace!("vcpu{vcpu}: mmio read {addr:#x} len {}", data.len())
        }
        VcpuExit::MmioWrite(addr, data) => {
            log::trace!("vcpu{vcpu}: mmio write {addr:#x} {data:x?}")
        }
        other => log::trace!("vcpu{vcpu}: exit {other:?}"),
    }
}

fn stop(reason: StopReason, dump_regs: bool) -> Step {
    Step::Stop { reason, dump_regs }
}

fn system_event(vcpu: u32, kind: u32, data: &[u64]) -> Step {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => stop(StopReason::PowerOff, false),
        KVM_SYSTEM_EVENT_RESET => stop(StopReason::Reboot("system reset event"), false),
        KVM_SYSTEM_EVENT_CRASH => {
            let what = format!("guest crash event {data:x?}");
            stop(StopReason::GuestFatal { vcpu, what }, true)
        }
        _ => {
            limited_debug!(
                IGNORED_EXIT,
                "vcpu{vcpu}: system event {kind} {data:x?} ignored"
            );
            Step::Continue
        }
    }
}

/// Size of each access: KVM reports `rep ins/outs` as one exit with `count * size` bytes
/// and kvm-ioctls drops the size, so anything wider than 4 is split into bytes.
fn access_width(len: usize) -> usize {
    match len {
        1 | 2 | 4 => len,
        _ => {
            limited_debug!(STRING_IO, "string port I/O of {len} bytes split into bytes");
            1
        }
    }
}

fn port_read(buses: &IoBuses, port: u16, data: &mut [u8]) {
    let width = access_width(data.len());
    let pio = buses.pio();
    for chunk in data.chunks_mut(width) {
        if !pio.read(u64::from(port), chunk) {
            limited_debug!(UNCLAIMED_PIO, "unclaimed port read at {port:#x}");
            chunk.fill(0xff);
        }
    }
}

fn port_write(buses: &IoBuses, port: u16, data: &[u8]) {
    let width = access_width(data.len());
    let pio = buses.pio();
    for chunk in data.chunks(width) {
        if !pio.write(u64::from(port), chunk) {
            limited_debug!(
                UNCLAIMED_PIO,
                "unclaimed port write {chunk:x?} at {port:#x}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::{Bus, BusDevice};
    use std::sync::{Arc, Mutex};

    /// Remembers the last write, reads back `0x40 + offset`.
    #[derive(Default)]
    struct Probe(Vec<u8>);

    impl BusDevice for Probe {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn buses() -> (IoBuses, Arc<Mutex<Probe>>) {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut pio = Bus::new();
        pio.insert(probe.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(probe.clone(), 0xd000_0000, 0x1000).unwrap();
        (IoBuses::new(pio, mmio), probe)
    }

    fn run(exit: VcpuExit<'_>) -> (Step, ExitCounters) {
        let (b, _) = buses();
        let c = ExitCounters::default();
        (handle_exit(0, exit, &b, &c), c)
    }

    #[test]
    fn port_read_reaches_device_with_offset() {
        let mut d = [0u8];
        let (step, c) = run(VcpuExit::IoIn(0x3fd, &mut d));
        assert_eq!((step, d[0]), (Step::Continue, 0x45));
        assert_eq!(c.io_in.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn unclaimed_port_reads_all_ones() {
        let mut d = [0u8; 2];
        let (step, _) = run(VcpuExit::IoIn(0x80, &mut d));
        assert_eq!((step, d), (Step::Continue, [0xff, 0xff]));
    }

    #[test]
    fn port_write_reaches_device() {
        let (b, probe) = buses();
        let c = ExitCounters::default();
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x3f8, b"A"), &b, &c),
            Step::Continue
        );
        assert_eq!(probe.lock().unwrap().0, b"A");
        assert_eq!(c.io_out.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn string_port_write_is_split_into_bytes() {
        let (b, probe) = buses();
        let c = ExitCounters::default();
        handle_exit(0, VcpuExit::IoOut(0x3f8, b"hello"), &b, &c);
        assert_eq!(probe.lock().unwrap().0, b"hello");
    }

    #[test]
    fn unclaimed_mmio_reads_all_ones_and_writes_drop() {
        let mut d = [0u8; 4];
        let (step, c) = run(VcpuExit::MmioRead(0xfe00_0000, &mut d));
        assert_eq!((step, d), (Step::Continue, [0xff; 4]));
        assert_eq!(c.mmio_read.load(Ordering::Relaxed), 1);
        let (step, c) = run(VcpuExit::MmioWrite(0xfe00_0000, &[1, 2, 3, 4]));
        assert_eq!(step, Step::Continue);
        assert_eq!(c.mmio_write.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn claimed_mmio_read_reaches_device() {
        let mut d = [0u8; 4];
        run(VcpuExit::MmioRead(0xd000_0001, &mut d));
        assert_eq!(d, [0x41; 4]);
    }

    #[test]
    fn bar_trap_exits_are_counted_apart_from_other_mmio() {
        let (b, probe) = buses();
        b.bar_mmio_mut()
            .insert(probe.clone(), 0xc010_0000, 0x1000)
            .unwrap();
        let c = ExitCounters::default();
        let mut d = [0u8; 4];
        handle_exit(0, VcpuExit::MmioRead(0xc010_0004, &mut d), &b, &c);
        handle_exit(0, VcpuExit::MmioWrite(0xc010_0000, &[9]), &b, &c);
        handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut d), &b, &c);
        assert_eq!(d, [0x40; 4]);
        assert_eq!(probe.lock().unwrap().0, [9]);
        assert_eq!(c.bar_read.load(Ordering::Relaxed), 1);
        assert_eq!(c.bar_write.load(Ordering::Relaxed), 1);
        assert_eq!(c.mmio_read.load(Ordering::Relaxed), 1);
        assert!(
            c.summary().ends_with(" bar_read=1 bar_write=1"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn triple_fault_is_a_crash_with_registers() {
        let (step, c) = run(VcpuExit::Shutdown);
        assert_eq!(step, stop(StopReason::TripleFault { vcpu: 0 }, true));
        assert_eq!(c.shutdown.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn shutdown_event_powers_off() {
        let (step, _) = run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]));
        assert_eq!(step, stop(StopReason::PowerOff, false));
    }

    #[test]
    fn reset_event_reboots() {
        let (step, _) = run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]));
        assert!(matches!(
            step,
            Step::Stop {
                reason: StopReason::Reboot(_),
                ..
            }
        ));
    }

    #[test]
    fn crash_event_is_fatal_with_registers() {
        let (step, _) = run(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]));
        assert!(matches!(
            step,
            Step::Stop {
                reason: StopReason::GuestFatal { .. },
                dump_regs: true
            }
        ));
    }

    #[test]
    fn entry_failure_is_fatal_with_registers() {
        let (step, c) = run(VcpuExit::FailEntry(0x21, 1));
        assert!(matches!(
            step,
            Step::Stop {
                reason: StopReason::GuestFatal { vcpu: 0, .. },
                dump_regs: true
            }
        ));
        assert_eq!(c.other.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn internal_error_is_fatal() {
        let (step, _) = run(VcpuExit::InternalError);
        assert!(matches!(
            step,
            Step::Stop {
                reason: StopReason::GuestFatal { .. },
                ..
            }
        ));
    }

    #[test]
    fn hlt_continues() {
        let (step, c) = run(VcpuExit::Hlt);
        assert_eq!(step, Step::Continue);
        assert_eq!(c.hlt.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn summary_lists_total_and_kinds() {
        let c = ExitCounters::default();
        c.count_interrupted();
        ExitCounters::bump(&c.io_out);
        let s = c.summary();
        assert!(s.starts_with("exits: total=2 io_in=0 io_out=1"), "{s}");
        assert!(s.contains(" interrupted=1"), "{s}");
    }
}
