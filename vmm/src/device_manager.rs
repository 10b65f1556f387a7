//! The device manager: owns the port I/O and MMIO buses the vCPU loop dispatches to and
//! places the legacy PC devices on them at the platform's ports (constants in
//! `arch::x86_64::layout`).
//!
//! Interrupts of emulated devices are `EventFd`s registered with KVM as irqfds, so a
//! device raising a line never needs a vCPU exit. PCI config space is a [`PciRoot`]
//! reached through ports 0xcf8/0xcfc and the ECAM window (PCIe Base 7.2.2), with the host
//! bridge at 00:00.0; root ports and passed-through functions join that root, and the
//! trapped parts of their BARs go on the port I/O bus and on an MMIO bus of their own.

use resources::lock;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch::x86_64::layout;
use devices::bus::{Bus, BusError};
use devices::legacy::acpi_pm::ACPI_PM_PORT_LEN;
use devices::legacy::cmos::CMOS_PORT_LEN;
use devices::legacy::i8042::I8042_PORT_LEN;
use devices::legacy::serial::SERIAL_PORT_LEN;
use devices::legacy::{AcpiPm, Cmos, EventFdTrigger, PowerControl, SerialPort, I8042};
use devices::pci::config_access::CF8_PORTS_LEN;
use devices::pci::{Bdf, HostBridge, PciCf8, PciEcam, PciError, PciRoot, SharedPciDevice};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::files;
use crate::io_buses::IoBuses;
use crate::passthrough::ConfigEffects;
use crate::spec::{ConsoleFileSpec, SerialSpec};
use crate::stop::PowerButton;

/// CMOS index/data ports (not part of the arch layout: no table describes them).
const CMOS_PORT: u16 = 0x70;

/// Failures creating devices. A console file that cannot be opened is the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("serial.file: cannot open {} for appending{}", path.display(), console_hint(source))]
    OpenConsole {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the {what} interrupt eventfd")]
    CreateEventFd {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot register the {what} irqfd on GSI {gsi}")]
    RegisterIrqfd {
        what: &'static str,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot place the {what} on the bus")]
    PlaceDevice {
        what: &'static str,
        #[source]
        source: BusError,
    },
    #[error("cannot attach PCI function {bdf}")]
    AddPciFunction {
        bdf: Bdf,
        #[source]
        source: PciError,
    },
}

/// Console output sink.
type Console = Box<dyn Write + Send>;

/// PCI segment of the root complex (the only one; `Bdf::default()` is on it).
const PCI_SEGMENT: u16 = 0;

/// PCI functions to attach below the host bridge, in an order where each bridge comes
/// before what sits behind it, and who hears about their config writes.
#[derive(Default)]
pub struct PciFunctions {
    pub functions: Vec<(Bdf, SharedPciDevice)>,
    /// Receives BAR moves and decode switches of `watched[i]` as function `i`, and
    /// Secondary Bus Resets of `watched_ports[i]` as port `i`.
    pub effects: Option<Arc<ConfigEffects>>,
    pub watched: Vec<SharedPciDevice>,
    pub watched_ports: Vec<SharedPciDevice>,
    /// The extra host bridges' root buses (one per further guest NUMA node).
    pub root_buses: Vec<u8>,
}

/// The ACPI power button: an edge on the Generic Event Device's GSI
/// ([`layout::GED_IRQ`]), whose `_EVT` notifies `\_SB.PWRB` (see the DSDT).
pub struct GedPowerButton {
    irq: EventFd,
}

impl GedPowerButton {
    fn new(vm: &VmFd) -> Result<GedPowerButton, DeviceError> {
        let what = "ACPI power button";
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| DeviceError::CreateEventFd { what, source })?;
        let gsi = layout::GED_IRQ;
        vm.register_irqfd(&irq, gsi)
            .map_err(|source| DeviceError::RegisterIrqfd { what, gsi, source })?;
        Ok(GedPowerButton { irq })
    }
}

impl PowerButton for GedPowerButton {
    fn press(&self) -> io::Result<()> {
        self.irq.write(1)
    }
}

/// Emulated devices of one VM.
pub struct DeviceManager {
    buses: IoBuses,
    serial: Arc<Mutex<SerialPort<Console>>>,
    pci_root: Arc<PciRoot>,
    cmos: Arc<Mutex<Cmos>>,
    console_input: bool,
    power_button: Arc<GedPowerButton>,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("buses", &self.buses)
            .finish_non_exhaustive()
    }
}

impl DeviceManager {
    /// Create COM1, the i8042, the ACPI power registers and power button and the CMOS on
    /// fresh buses.
    pub fn new(
        vm: &VmFd,
        serial: &SerialSpec,
        power: Arc<dyn PowerControl>,
        pci: PciFunctions,
    ) -> Result<DeviceManager, DeviceError> {
        let buses = IoBuses::default();
        let serial_dev = Arc::new(Mutex::new(create_serial(vm, serial)?));
        let mut pio = buses.pio_mut();
        place(
            &mut pio,
            "serial",
            serial_dev.clone(),
            layout::COM1_PORT,
            SERIAL_PORT_LEN,
        )?;
        let i8042 = Arc::new(Mutex::new(I8042::new(power.clone())));
        place(
            &mut pio,
            "i8042",
            i8042,
            layout::I8042_DATA_PORT,
            I8042_PORT_LEN,
        )?;
        let pm = AcpiPm::new(power, layout::ACPI_S5_SLEEP_TYPE, layout::ACPI_RESET_VALUE);
        let pm = Arc::new(Mutex::new(pm));
        place(
            &mut pio,
            "ACPI PM registers",
            pm,
            layout::ACPI_SLEEP_CONTROL_PORT,
            ACPI_PM_PORT_LEN,
        )?;
        let cmos = Arc::new(Mutex::new(Cmos::default()));
        place(&mut pio, "CMOS", cmos.clone(), CMOS_PORT, CMOS_PORT_LEN)?;
        drop(pio);
        let pci_root = create_pci_root(&buses, pci)?;
        let console_input = *serial == SerialSpec::Stdio;
        let power_button = Arc::new(GedPowerButton::new(vm)?);
        Ok(DeviceManager {
            buses,
            serial: serial_dev,
            pci_root,
            cmos,
            console_input,
            power_button,
        })
    }

    /// A machine reset: COM1 and the CMOS back to power-on. The i8042, the ACPI PM
    /// registers and the GED hold no state; the root ports are reset with their plan.
    pub fn reset(&self) {
        lock(&self.serial).reset();
        lock(&self.cmos).reset();
    }

    /// The guest's ACPI power button.
    pub fn power_button(&self) -> Arc<GedPowerButton> {
        self.power_button.clone()
    }

    /// The buses, for the vCPU loop and for adding PCI devices.
    pub fn buses(&self) -> &IoBuses {
        &self.buses
    }

    /// The PCI root complex (config space of segment 0).
    pub fn pci_root(&self) -> &Arc<PciRoot> {
        &self.pci_root
    }

    /// Forward Strait's stdin to COM1 on a helper thread (console `"stdio"` only).
    /// The thread ends at EOF; it is never joined (a blocking read cannot be cancelled).
    pub fn start_console_input(&self) -> io::Result<()> {
        if !self.console_input {
            return Ok(());
        }
        let serial = self.serial.clone();
        std::thread::Builder::new()
            .name("strait-stdin".into())
            .spawn(move || forward_stdin(&serial))
            .map(|_| ())
    }
}

fn place(
    bus: &mut Bus,
    what: &'static str,
    dev: devices::bus::SharedDevice,
    port: u16,
    len: u64,
) -> Result<(), DeviceError> {
    bus.insert(dev, u64::from(port), len)
        .map_err(|source| DeviceError::PlaceDevice { what, source })
}

/// The root complex: host bridge at 00:00.0, reachable through 0xcf8/0xcfc and ECAM,
/// the extra host bridges' root buses, then `pci`'s root ports and passed-through
/// functions.
///
/// The handlers of both front-ends only queue the effects of config writes; the vCPU
/// applies them after the dispatch that caused them (see [`IoBuses`] on lock order).
fn create_pci_root(buses: &IoBuses, pci: PciFunctions) -> Result<Arc<PciRoot>, DeviceError> {
    let mut root = PciRoot::new(PCI_SEGMENT);
    let bdf = resources::HOST_BRIDGE;
    let bridge = Arc::new(Mutex::new(HostBridge::new()));
    root.add_device(bdf, bridge)
        .map_err(|source| DeviceError::AddPciFunction { bdf, source })?;
    for &bus in &pci.root_buses {
        root.add_root_bus(bus)
            .map_err(|source| DeviceError::AddPciFunction {
                bdf: Bdf::from_devfn(PCI_SEGMENT, bus, 0),
                source,
            })?;
    }
    for (bdf, dev) in pci.functions {
        root.add_device(bdf, dev)
            .map_err(|source| DeviceError::AddPciFunction { bdf, source })?;
    }
    let root = Arc::new(root);
    let handler = || {
        pci.effects
            .as_ref()
            .map(|e| e.handler(root.clone(), pci.watched.clone(), pci.watched_ports.clone()))
    };
    let cf8 = Arc::new(Mutex::new(PciCf8::new(root.clone(), handler())));
    let port = layout::PCI_CONFIG_ADDRESS_PORT;
    place(
        &mut buses.pio_mut(),
        "PCI config ports",
        cf8,
        port,
        CF8_PORTS_LEN,
    )?;
    let ecam = Arc::new(Mutex::new(PciEcam::new(root.clone(), handler())));
    let (base, len) = (layout::PCI_ECAM_START.0, layout::PCI_ECAM_SIZE);
    buses
        .mmio_mut()
        .insert(ecam, base, len)
        .map_err(|source| DeviceError::PlaceDevice {
            what: "PCI ECAM window",
            source,
        })?;
    Ok(root)
}

fn create_serial(vm: &VmFd, spec: &SerialSpec) -> Result<SerialPort<Console>, DeviceError> {
    let out: Console = match spec {
        SerialSpec::Stdio => Box::new(io::stdout()),
        SerialSpec::Off => Box::new(io::sink()),
        SerialSpec::File(spec) => Box::new(CappedConsole::open(spec)?),
    };
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::CreateEventFd {
        what: "serial",
        source,
    })?;
    vm.register_irqfd(&evt, layout::COM1_IRQ)
        .map_err(|source| DeviceError::RegisterIrqfd {
            what: "serial",
            gsi: layout::COM1_IRQ,
            source,
        })?;
    Ok(SerialPort::new(EventFdTrigger::new(evt), out))
}

/// Open (or create) the console file at `path` for appending; true if it was created.
///
/// `O_NOFOLLOW`: Strait often runs as root, and following a link planted at the path
/// would let it create or append to any file. Mode 0600: the console can carry secrets.
/// `O_NONBLOCK`: a FIFO without a reader fails at once instead of hanging. Anything but
/// a regular file is refused. `validate` calls this too (and removes a file it created),
/// so it fails exactly where `run` would.
pub fn open_console_file(path: &Path) -> Result<(File, bool), DeviceError> {
    let err = |source| DeviceError::OpenConsole {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let (file, created) = match opts.clone().create_new(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match opts.open(path) {
            Ok(f) => (f, false),
            Err(e) => return Err(err(not_regular_or(path, e))),
        },
        Err(e) => return Err(err(e)),
    };
    let kind = file.metadata().map_err(err)?.file_type();
    if !kind.is_file() {
        return Err(err(files::not_regular(kind)));
    }
    Ok((file, created))
}

/// An open that failed on an existing path: a link (ELOOP) or a FIFO without a reader
/// (ENXIO) is described as what it is; other errors are kept.
fn not_regular_or(path: &Path, e: io::Error) -> io::Error {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => files::not_regular(m.file_type()),
        _ => e,
    }
}

/// What to do about a console file that does not open, for the error line.
fn console_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            " (no such directory: create it, or name a path in an existing one)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (this user may not write there: fix the permissions or name another path)"
        }
        _ => "",
    }
}

/// The console file, appended to until it reaches `max_bytes`; later output is dropped
/// with one log line, so a chatty or hostile guest cannot fill the host's disk.
struct CappedConsole {
    file: File,
    path: PathBuf,
    /// Bytes the file may still grow by (u64::MAX without a cap).
    room: u64,
    max_bytes: Option<u64>,
    dropped: bool,
}

impl CappedConsole {
    fn open(spec: &ConsoleFileSpec) -> Result<CappedConsole, DeviceError> {
        let (file, _) = open_console_file(&spec.file)?;
        let len = file.metadata().map_or(0, |m| m.len());
        Ok(CappedConsole {
            file,
            path: spec.file.clone(),
            room: spec.max_bytes.map_or(u64::MAX, |m| m.saturating_sub(len)),
            max_bytes: spec.max_bytes,
            dropped: false,
        })
    }
}

impl Write for CappedConsole {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            if !self.dropped {
                self.dropped = true;
                log::warn!(
                    "serial.file: {} reached max_bytes ({}); further console output is dropped",
                    self.path.display(),
                    self.max_bytes.unwrap_or(0)
                );
            }
            return Ok(buf.len());
        }
        let fits = usize::try_from(self.room).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.file.write(&buf[..fits])?;
        self.room -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copy stdin into the UART's receive FIFO, waiting while the guest has not drained it.
fn forward_stdin(serial: &Mutex<SerialPort<Console>>) {
    // Fail closed: a thread that cannot enter the sandbox ends; the guest only loses input.
    if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::Stdin) {
        log::error!(
            "console input off: {}",
            crate::error::Error::from(e).one_line()
        );
        return;
    }
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("console input stopped: {e}");
                return;
            }
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = lock(serial).enqueue_input(pending);
            pending = &pending[taken..];
            if taken == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
    }

    #[test]
    fn clones_share_the_same_buses() {
        let a = IoBuses::default();
        let b = a.clone();
        a.pio_mut()
            .insert(Arc::new(Mutex::new(Nop)), 0x80, 1)
            .unwrap();
        let mut d = [0xaa];
        assert!(b.pio().read(0x80, &mut d));
        assert_eq!(d, [0]);
        assert!(!b.mmio().read(0x80, &mut d));
    }

    #[test]
    fn overlapping_placement_is_an_error() {
        let mut bus = Bus::new();
        place(&mut bus, "a", Arc::new(Mutex::new(Nop)), 0x3f8, 8).unwrap();
        let err = place(&mut bus, "b", Arc::new(Mutex::new(Nop)), 0x3fc, 1).unwrap_err();
        assert!(matches!(err, DeviceError::PlaceDevice { what: "b", .. }));
    }

    #[test]
    fn pci_root_answers_on_cf8_and_ecam() {
        let buses = IoBuses::default();
        let root = create_pci_root(&buses, PciFunctions::default()).unwrap();
        assert_eq!(root.devices().len(), 1);
        // CF8: enable bit, bus 0, device 0, function 0, register 0 (vendor/device ID).
        let port = u64::from(layout::PCI_CONFIG_ADDRESS_PORT);
        assert!(buses.pio().write(port, &0x8000_0000u32.to_le_bytes()));
        let mut id = [0u8; 4];
        assert!(buses.pio().read(port + 4, &mut id));
        let mut ecam_id = [0u8; 4];
        assert!(buses.mmio().read(layout::PCI_ECAM_START.0, &mut ecam_id));
        assert_eq!(id, ecam_id);
        assert_ne!(id, [0xff; 4], "host bridge present");
        // An empty slot reads as all ones (no device).
        let mut empty = [0u8; 4];
        buses
            .mmio()
            .read(layout::PCI_ECAM_START.0 + (1 << 15), &mut empty);
        assert_eq!(empty, [0xff; 4]);
    }

    fn tempdir() -> vmm_sys_util::tempdir::TempDir {
        vmm_sys_util::tempdir::TempDir::new().unwrap()
    }

    fn open_err(path: &Path) -> io::Error {
        match open_console_file(path) {
            Err(DeviceError::OpenConsole { source, .. }) => source,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn console_file_is_created_0600_and_appended() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let path = dir.as_path().join("console.log");
        let (mut f, created) = open_console_file(&path).unwrap();
        assert!(created);
        f.write_all(b"a").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (mut f, created) = open_console_file(&path).unwrap();
        assert!(!created);
        f.write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
    }

    #[test]
    fn dangling_console_link_is_refused_and_its_target_not_created() {
        let dir = tempdir();
        let (link, target) = (dir.as_path().join("c.log"), dir.as_path().join("t"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(files::is_not_regular(&open_err(&link)));
        assert!(!target.exists());
        std::fs::write(&target, b"").unwrap();
        assert!(files::is_not_regular(&open_err(&link)));
    }

    #[test]
    fn console_fifo_is_refused_without_blocking() {
        let dir = tempdir();
        let fifo = dir.as_path().join("fifo");
        crate::files::tests::mkfifo(&fifo);
        assert!(files::is_not_regular(&open_err(&fifo)));
    }

    #[test]
    fn console_in_a_missing_directory_says_so() {
        let path = Path::new("/nonexistent/strait/console.log");
        let e = open_err(path);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let line = DeviceError::OpenConsole {
            path: path.into(),
            source: e,
        }
        .to_string();
        assert!(line.contains("no such directory"), "{line}");
    }

    #[test]
    fn console_output_stops_at_max_bytes() {
        let dir = tempdir();
        let path = dir.as_path().join("c.log");
        std::fs::write(&path, b"old\n").unwrap();
        let spec = ConsoleFileSpec {
            file: path.clone(),
            max_bytes: Some(10),
        };
        let mut console = CappedConsole::open(&spec).unwrap();
        console.write_all(b"0123456789").unwrap();
        console.write_all(b"more").unwrap();
        assert!(console.dropped);
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n012345");
        let mut full = CappedConsole::open(&spec).unwrap();
        full.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 10);
    }

    #[test]
    fn legacy_port_ranges_do_not_overlap() {
        let mut ranges = [
            (layout::COM1_PORT, SERIAL_PORT_LEN),
            (layout::I8042_DATA_PORT, I8042_PORT_LEN),
            (layout::ACPI_SLEEP_CONTROL_PORT, ACPI_PM_PORT_LEN),
            (CMOS_PORT, CMOS_PORT_LEN),
            (layout::PCI_CONFIG_ADDRESS_PORT, 8),
        ];
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(u64::from(w[0].0) + w[0].1 <= u64::from(w[1].0), "{w:x?}");
        }
        // The ACPI registers must match the FADT: control, status, reset in a row.
        assert_eq!(
            layout::ACPI_SLEEP_STATUS_PORT,
            layout::ACPI_SLEEP_CONTROL_PORT + 1
        );
        assert_eq!(layout::ACPI_RESET_PORT, layout::ACPI_SLEEP_CONTROL_PORT + 2);
        assert_eq!(layout::I8042_COMMAND_PORT, layout::I8042_DATA_PORT + 4);
    }
}
