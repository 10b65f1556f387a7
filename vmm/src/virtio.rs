//! The VMM side of the virtio devices: opening their backends from the spec, putting
//! each on the guest's PCI topology, wiring its notifications (KVM_IOEVENTFD) and
//! interrupts (MSI-X vectors as KVM irqfds through [`GsiRouting`]), and the I/O thread
//! ([`crate::io_thread`]) that runs them.
//!
//! Topology: every virtio function is a slot of its own behind its own PCIe root port,
//! after the passed-through slots ([`slot_requests`]). A root port rather than the root
//! bus because that is the one rule the topology plan has for every slot: the same bus
//! numbering, bridge windows and BAR placement as passed-through devices, no second
//! kind of slot to place; Linux's virtio_pci binds the same either way (QEMU's q35 puts
//! virtio devices behind root ports too), and an endpoint on bus 0 would have to
//! present itself as a root-complex integrated endpoint.
//!
//! Order of use in the boot recipe: [`slot_requests`] before the topology is numbered;
//! [`VirtioDevices::create`] once guest RAM and the GSI routing exist; [`VirtioDevices::bars`]
//! for the placement; [`VirtioDevices::place`] with the placed map; then
//! [`VirtioDevices::map_bars`] on the buses and [`VirtioDevices::start`].

use std::io;
use std::sync::{Arc, Mutex};

use devices::bus::{BusDevice, SharedDevice};
use devices::pci::{Bdf, PciDevice, SharedPciDevice};
use devices::virtio::block::{
    Block, DiskError, DiskFile, DiskOptions, WorkerConfig, WORKER_THREADS,
};
use devices::virtio::net::tap::{self, Tap, TapError};
use devices::virtio::net::vhost::VhostNet;
use devices::virtio::net::Net;
use devices::virtio::pci::{msix_vectors, TransportError, TransportParams, VirtioPciTransport};
use devices::virtio::SharedVirtioDevice;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use resources::{lock, BarClass, BarRequest, FunctionBar, PciMap, SlotRequest};
use vfio_glue::{Holder, IrqProvider, MsiKind};
use vm_memory::GuestMemoryMmap;

use crate::interrupts::{GsiRouting, KvmIrqProvider};
use crate::io_buses::IoBuses;
use crate::io_thread::{IoThread, QueueEvents};
use crate::spec::VmSpec;

/// Names of a disk's worker threads: `strait-blk<disk>-<worker>` (for logs, `ps -T` and
/// the seccomp filter).
pub const BLOCK_THREAD_PREFIX: &str = "strait-blk";

/// Failures setting up virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("disks[{index}].path: {source}")]
    OpenDisk {
        index: usize,
        #[source]
        source: DiskError,
    },
    #[error("net[{index}].{field}: {source}")]
    OpenTap {
        index: usize,
        field: &'static str,
        #[source]
        source: TapError,
    },
    #[error(
        "net[{index}].tap: there is no interface {name} (/sys/class/net/{name}); create it \
         first, e.g. `ip tuntap add dev {name} mode tap user $USER` and `ip link set {name} up`"
    )]
    NoInterface { index: usize, name: String },
    #[error("{label}: cannot allocate its MSI-X vectors")]
    Vectors {
        label: String,
        #[source]
        source: io::Error,
    },
    #[error("{label}: cannot build the virtio-pci function")]
    Transport {
        label: String,
        #[source]
        source: TransportError,
    },
    #[error("{label}: the topology plan has no slot for it")]
    NoSlot { label: String },
    #[error("{label}: cannot place BAR 0 at {addr:#x}")]
    PlaceBar {
        label: String,
        addr: u64,
        #[source]
        source: devices::pci::PciError,
    },
    #[error("{label}: cannot register the queue {queue} notify address {addr:#x} with KVM")]
    IoEventFd {
        label: String,
        queue: usize,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{label}: cannot trap BAR 0 at {addr:#x}")]
    TrapBar {
        label: String,
        addr: u64,
        #[source]
        source: devices::bus::BusError,
    },
    #[error("cannot start the I/O thread")]
    IoThread(#[source] io::Error),
    #[error("{label}: cannot start its worker threads")]
    BlockWorkers {
        label: String,
        #[source]
        source: io::Error,
    },
}

impl VirtioError {
    /// True when the spec names something unusable (a missing or malformed image).
    pub fn is_spec_problem(&self) -> bool {
        matches!(
            self,
            VirtioError::OpenDisk { .. }
                | VirtioError::OpenTap { .. }
                | VirtioError::NoInterface { .. }
        )
    }
}

/// The topology slots of the spec's virtio devices: disks, then network interfaces.
pub fn slot_requests(spec: &VmSpec) -> Vec<SlotRequest> {
    let disks = (0..spec.disks.len()).map(|i| format!("virtio-blk disks[{i}]"));
    let nets = (0..spec.net.len()).map(|i| format!("virtio-net net[{i}]"));
    disks
        .chain(nets)
        .map(|tag| SlotRequest {
            tag,
            functions: 1,
            node: None,
        })
        .collect()
}

/// Check every network interface as far as can be done without taking it (for
/// `validate` and before `run`): a named tap exists and /dev/net/tun opens for this
/// user; an inherited fd is an open tap with the flags Strait needs.
pub fn check_net(spec: &VmSpec) -> Result<(), VirtioError> {
    for (index, n) in spec.net.iter().enumerate() {
        if let Some(name) = &n.tap {
            if !tap::interface_exists(name) {
                return Err(VirtioError::NoInterface {
                    index,
                    name: name.clone(),
                });
            }
            tap::check_tun_access().map_err(|source| VirtioError::OpenTap {
                index,
                field: "tap",
                source,
            })?;
        }
        if let Some(fd) = n.tap_fd {
            tap::tap_fd_name(fd).map_err(|source| VirtioError::OpenTap {
                index,
                field: "tap_fd",
                source,
            })?;
        }
    }
    Ok(())
}

fn open_tap(spec: &VmSpec, index: usize) -> Result<Tap, VirtioError> {
    let n = &spec.net[index];
    let err = |field| {
        move |source| VirtioError::OpenTap {
            index,
            field,
            source,
        }
    };
    match (&n.tap, n.tap_fd) {
        (Some(name), _) => {
            if !tap::interface_exists(name) {
                return Err(VirtioError::NoInterface {
                    index,
                    name: name.clone(),
                });
            }
            Tap::open(name).map_err(err("tap"))
        }
        (None, Some(fd)) => {
            tap::tap_fd_name(fd).map_err(err("tap_fd"))?;
            let owned = tap::inherited_fd(fd)
                .ok_or(TapError::NotTap { fd })
                .map_err(err("tap_fd"))?;
            Tap::from_fd(owned).map_err(err("tap_fd"))
        }
        (None, None) => Err(VirtioError::OpenTap {
            index,
            field: "tap",
            source: TapError::BadName(String::new()),
        }),
    }
}

/// A virtio-net device for `net[index]`, on vhost-net when asked for and available.
fn net_device(
    spec: &VmSpec,
    index: usize,
    mem: &GuestMemoryMmap,
) -> Result<(String, Net), VirtioError> {
    let n = &spec.net[index];
    let tap = open_tap(spec, index)?;
    let mac = n.mac_or_default();
    let label = format!("virtio-net net[{index}] ({})", tap.name());
    let vhost = if n.vhost {
        match VhostNet::open(mem) {
            Ok(v) => {
                log::info!("{label}: MAC {mac}, data path vhost-net (in the host kernel)");
                Some(v)
            }
            Err(e) => {
                log::info!(
                    "{label}: MAC {mac}, data path userspace on {} (vhost-net unavailable: {e}: {})",
                    crate::io_thread::IO_THREAD_NAME,
                    vhost_cause(&e)
                );
                None
            }
        }
    } else {
        log::info!(
            "{label}: MAC {mac}, data path userspace on {} (\"vhost\": false)",
            crate::io_thread::IO_THREAD_NAME
        );
        None
    };
    Ok((label.clone(), Net::new(label, mac, tap, vhost)))
}

fn vhost_cause(e: &dyn std::error::Error) -> String {
    e.source().map_or_else(String::new, |s| s.to_string())
}

/// Open every disk of `spec` as `run` does (for `validate`): the file exists, is a
/// regular file or block device of a whole number of sectors, and opens for writing
/// unless readonly (and with O_DIRECT if `direct`).
pub fn check_disks(spec: &VmSpec) -> Result<(), VirtioError> {
    for index in 0..spec.disks.len() {
        open_disk(spec, index)?;
    }
    Ok(())
}

fn open_disk(spec: &VmSpec, index: usize) -> Result<DiskFile, VirtioError> {
    let d = &spec.disks[index];
    let options = DiskOptions {
        readonly: d.readonly,
        direct: d.direct,
    };
    DiskFile::open(&d.path, options).map_err(|source| VirtioError::OpenDisk { index, source })
}

/// A virtio function's BAR 0, as a trapped span on the MMIO bus.
struct BarTrap(Arc<Mutex<VirtioPciTransport>>);

impl BusDevice for BarTrap {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.0).bar_read(devices::virtio::pci::BAR_INDEX, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.0).bar_write(devices::virtio::pci::BAR_INDEX, offset, data);
    }
}

/// One virtio function.
struct Function {
    label: String,
    device: SharedVirtioDevice,
    transport: Arc<Mutex<VirtioPciTransport>>,
    /// Guest address, once placed.
    bdf: Option<Bdf>,
}

/// The VM's virtio devices and their I/O thread.
pub struct VirtioDevices {
    functions: Vec<Function>,
    io: Option<IoThread>,
}

impl std::fmt::Debug for VirtioDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.functions.iter().map(|f| f.label.as_str()).collect();
        f.debug_struct("VirtioDevices")
            .field("functions", &labels)
            .finish_non_exhaustive()
    }
}

impl VirtioDevices {
    /// Open the backends and build each function's transport, its MSI-X vectors routed
    /// through `routing`.
    pub fn create(
        spec: &VmSpec,
        mem: &GuestMemoryMmap,
        routing: &Arc<GsiRouting>,
    ) -> Result<VirtioDevices, VirtioError> {
        let mut functions = Vec::new();
        for (index, d) in spec.disks.iter().enumerate() {
            let disk = open_disk(spec, index)?;
            let label = format!("virtio-blk disks[{index}] ({})", d.path.display());
            log::info!(
                "{label}: {} sectors, {}{}, serial {}",
                disk.size() / devices::virtio::block::SECTOR_SIZE,
                if d.readonly {
                    "read-only"
                } else {
                    "read-write"
                },
                if d.direct {
                    ", O_DIRECT"
                } else {
                    ", host page cache"
                },
                d.serial_or_default(index)
            );
            let workers = WorkerConfig {
                threads: WORKER_THREADS,
                name: format!("{BLOCK_THREAD_PREFIX}{index}-"),
                on_start: Arc::new(|| {
                    crate::sandbox::enter(crate::sandbox::ThreadKind::Blk)
                        .map_err(|e| crate::error::Error::from(e).one_line())
                }),
            };
            let block = Block::new(label.clone(), disk, &d.serial_or_default(index), &workers)
                .map_err(|source| VirtioError::BlockWorkers {
                    label: label.clone(),
                    source,
                })?;
            functions.push(function(label, Arc::new(Mutex::new(block)), mem, routing)?);
        }
        for index in 0..spec.net.len() {
            let (label, net) = net_device(spec, index, mem)?;
            functions.push(function(label, Arc::new(Mutex::new(net)), mem, routing)?);
        }
        Ok(VirtioDevices {
            functions,
            io: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Each function's BARs, one slot each, in [`slot_requests`] order.
    pub fn bars(&self) -> Vec<Vec<FunctionBar>> {
        self.functions
            .iter()
            .map(|f| {
                lock(&f.transport)
                    .bars()
                    .into_iter()
                    .map(|b| FunctionBar {
                        function: 0,
                        index: b.index,
                        request: BarRequest {
                            size: b.size,
                            class: BarClass::from(b.kind),
                        },
                    })
                    .collect()
            })
            .collect()
    }

    /// Take the guest addresses from `map`, where the virtio slots start at port
    /// `first_port`, and register each queue's notify address with KVM_IOEVENTFD.
    pub fn place(&mut self, map: &PciMap, first_port: usize, vm: &VmFd) -> Result<(), VirtioError> {
        for (i, f) in self.functions.iter_mut().enumerate() {
            let port = map
                .ports
                .get(first_port + i)
                .ok_or_else(|| VirtioError::NoSlot {
                    label: f.label.clone(),
                })?;
            let bdf = *port
                .slot
                .functions
                .first()
                .ok_or_else(|| VirtioError::NoSlot {
                    label: f.label.clone(),
                })?;
            f.label = format!("{bdf} {}", f.label);
            f.bdf = Some(bdf);
            let mut t = lock(&f.transport);
            for bar in &port.bars {
                t.place_bar(bar.addr)
                    .map_err(|source| VirtioError::PlaceBar {
                        label: f.label.clone(),
                        addr: bar.addr,
                        source,
                    })?;
                log::info!("{}: BAR {} at {:#x}", f.label, bar.index, bar.addr);
                for (queue, (offset, fd)) in t.notify_events().into_iter().enumerate() {
                    let addr = bar.addr + offset;
                    vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                        .map_err(|source| VirtioError::IoEventFd {
                            label: f.label.clone(),
                            queue,
                            addr,
                            source,
                        })?;
                }
            }
        }
        Ok(())
    }

    /// The functions for the PCI root, at their guest addresses.
    pub fn pci_functions(&self) -> Vec<(Bdf, SharedPciDevice)> {
        self.functions
            .iter()
            .filter_map(|f| Some((f.bdf?, f.transport.clone() as SharedPciDevice)))
            .collect()
    }

    /// Trap each BAR 0 on the MMIO bus (its notify writes go to KVM's ioeventfds first).
    pub fn map_bars(&self, buses: &IoBuses) -> Result<(), VirtioError> {
        for f in &self.functions {
            let bars = lock(&f.transport).bars();
            for b in bars {
                let trap: SharedDevice = Arc::new(Mutex::new(BarTrap(f.transport.clone())));
                buses
                    .bar_mmio_mut()
                    .insert(trap, b.addr, b.size)
                    .map_err(|source| VirtioError::TrapBar {
                        label: f.label.clone(),
                        addr: b.addr,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Start the I/O thread over every device's queues.
    pub fn start(&mut self) -> Result<(), VirtioError> {
        if self.functions.is_empty() {
            return Ok(());
        }
        let mut events = Vec::new();
        for f in &self.functions {
            let t = lock(&f.transport);
            let kicks = t
                .notify_events()
                .into_iter()
                .map(|(_, fd)| fd.try_clone())
                .collect::<io::Result<Vec<_>>>()
                .map_err(VirtioError::IoThread)?;
            let wanted = lock(&f.device).io_events().map_err(VirtioError::IoThread)?;
            events.push(QueueEvents {
                label: f.label.clone(),
                device: f.device.clone(),
                kicks: if wanted.kicks { kicks } else { Vec::new() },
                backend: wanted.backend,
            });
        }
        self.io = Some(IoThread::start(events).map_err(VirtioError::IoThread)?);
        Ok(())
    }

    /// A machine reset: every transport and device back to status 0 (the device stops,
    /// the negotiation and queues are forgotten). The I/O thread keeps running over the
    /// same notify eventfds.
    pub fn reset(&self) {
        for f in &self.functions {
            lock(&f.transport).reset();
        }
    }

    /// Stop the I/O thread and the devices (before guest RAM is unmapped).
    pub fn stop(&mut self) {
        if let Some(mut io) = self.io.take() {
            io.stop();
        }
        for f in &self.functions {
            lock(&f.device).reset();
        }
    }
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A transport for `device`, with one MSI-X vector per queue plus one for config.
fn function(
    label: String,
    device: SharedVirtioDevice,
    mem: &GuestMemoryMmap,
    routing: &Arc<GsiRouting>,
) -> Result<Function, VirtioError> {
    let queues = lock(&device).queue_max_sizes().len();
    let mut irqs = KvmIrqProvider {
        routing: routing.clone(),
        // Only MSI-X is offered: no INTx pin, so the slot is never used.
        port_slot: 0,
        label: label.clone(),
    };
    let vectors = irqs
        .msi(MsiKind::Msix, msix_vectors(queues), Holder::Router)
        .map_err(|source| VirtioError::Vectors {
            label: label.clone(),
            source,
        })?;
    let params = TransportParams {
        label: label.clone(),
        device: device.clone(),
        mem: mem.clone(),
        msix: vectors.router,
        vector_fds: vectors.eventfds,
    };
    let transport = VirtioPciTransport::new(params).map_err(|source| VirtioError::Transport {
        label: label.clone(),
        source,
    })?;
    Ok(Function {
        label,
        device,
        transport: Arc::new(Mutex::new(transport)),
        bdf: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec_with(disk: &std::path::Path, readonly: bool) -> VmSpec {
        let text = format!(
            r#"{{"vcpus": 1, "memory": {{"size_mib": 64}}, "kernel": {{"path": "/k"}},
                "disks": [{{"path": "{}", "readonly": {readonly}}}]}}"#,
            disk.display()
        );
        VmSpec::parse(&text).unwrap()
    }

    fn temp_file(name: &str, bytes: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strait-vmm-virtio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![0; bytes])
            .unwrap();
        path
    }

    #[test]
    fn each_disk_is_a_one_function_slot() {
        let spec = spec_with(std::path::Path::new("/x.img"), false);
        let slots = slot_requests(&spec);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].functions, 1);
        assert_eq!(slots[0].tag, "virtio-blk disks[0]");
    }

    #[test]
    fn net_interfaces_follow_the_disks_one_slot_each() {
        let text = r#"{"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "/k"},
            "disks": [{"path": "/a.img"}], "net": [{"tap": "tap0"}, {"tap": "tap1"}]}"#;
        let tags: Vec<String> = slot_requests(&VmSpec::parse(text).unwrap())
            .into_iter()
            .map(|s| s.tag)
            .collect();
        assert_eq!(
            tags,
            [
                "virtio-blk disks[0]",
                "virtio-net net[0]",
                "virtio-net net[1]"
            ]
        );
    }

    #[test]
    fn validate_refuses_a_missing_tap_naming_the_field() {
        let text = r#"{"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "/k"},
            "net": [{"tap": "strait-nx0"}]}"#;
        let e = check_net(&VmSpec::parse(text).unwrap()).unwrap_err();
        assert!(e.is_spec_problem());
        assert!(matches!(&e, VirtioError::NoInterface { index: 0, name } if name == "strait-nx0"));
        assert!(e.to_string().starts_with("net[0].tap: "), "{e}");
    }

    #[test]
    fn validate_refuses_an_fd_that_is_not_a_tap() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let text = format!(
            r#"{{"vcpus": 1, "memory": {{"size_mib": 64}}, "kernel": {{"path": "/k"}},
                "net": [{{"tap_fd": {fd}}}]}}"#
        );
        let e = check_net(&VmSpec::parse(&text).unwrap()).unwrap_err();
        assert!(matches!(
            e,
            VirtioError::OpenTap {
                index: 0,
                field: "tap_fd",
                source: TapError::NotTap { .. }
            }
        ));
        assert!(e.to_string().starts_with("net[0].tap_fd: "), "{e}");
    }

    #[test]
    fn validate_refuses_a_missing_image_naming_the_field() {
        let spec = spec_with(std::path::Path::new("/nonexistent/strait.img"), false);
        let e = check_disks(&spec).unwrap_err();
        assert!(e.is_spec_problem());
        assert!(e.to_string().starts_with("disks[0].path: "), "{e}");
    }

    #[test]
    fn validate_refuses_an_image_of_partial_sectors() {
        let path = temp_file("odd.img", 1000);
        let e = check_disks(&spec_with(&path, true)).unwrap_err();
        assert!(matches!(
            e,
            VirtioError::OpenDisk {
                index: 0,
                source: DiskError::NotSectorMultiple { size: 1000, .. }
            }
        ));
        let good = temp_file("good.img", 4096);
        check_disks(&spec_with(&good, false)).unwrap();
    }
}
