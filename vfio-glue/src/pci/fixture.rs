//! Test fixture for [`VfioPciDevice`]: a fake NVMe-like device and the VMM
//! side of the interrupt seam, recording what it is asked.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::interrupt::{MsiChange, MsiRouter};
use devices::pci::PciDevice;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::container::IovaRange;
use crate::device::{IrqInfo, RegionInfo, Span};
use crate::fake::{CallLog, FakeDevice, FakeDmaMapper};
use crate::irq::{Holder, IntxFds, MsiKind, MsiVectors};

pub(super) const PAGE: u64 = 4096;

/// Config space of the test device: an NVMe-like endpoint with
/// BAR0 64-bit 16 KiB (MSI-X table at 0x2000, PBA at 0x3000), BAR2 I/O 32 B,
/// BAR3 32-bit 256 B, BAR4 64-bit prefetchable 1 MiB, caps PM -> MSI -> MSI-X
/// -> PCIe, ext caps AER -> SR-IOV -> ARI -> LTR, INTA.
pub(super) fn config() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
    put(0x00, &0x0010_1b36u32.to_le_bytes());
    put(0x06, &0x0010u16.to_le_bytes()); // status: capability list
    put(0x08, &0x0108_0202u32.to_le_bytes());
    put(0x0e, &[0x80]); // multi-function on the host
    put(0x10, &0x4u32.to_le_bytes());
    put(0x18, &0x1u32.to_le_bytes());
    put(0x1c, &0x0u32.to_le_bytes());
    put(0x20, &0xcu32.to_le_bytes());
    put(0x34, &[0x40]);
    put(0x3d, &[1]);
    put(0x40, &[0x01, 0x50, 0x03, 0x00]);
    put(0x50, &[0x05, 0x70, 0x84, 0x00]); // MSI: 64-bit, 4 vectors capable
    put(0x70, &[0x11, 0x80, 0x03, 0x00]); // MSI-X: 4 vectors
    put(0x74, &0x2000u32.to_le_bytes());
    put(0x78, &0x3000u32.to_le_bytes());
    put(0x80, &[0x10, 0x00, 0x02, 0x00]);
    let ext = |id: u32, next: u32| (id | 1 << 16 | next << 20).to_le_bytes();
    put(0x100, &ext(0x01, 0x140));
    put(0x140, &ext(0x10, 0x180));
    put(0x148, &[0xaa; 8]);
    put(0x180, &ext(0x0e, 0x1c0));
    put(0x1c0, &ext(0x18, 0));
    c
}

pub(super) fn mem_region(size: u64) -> RegionInfo {
    RegionInfo {
        size,
        readable: true,
        writable: true,
        mmap: true,
        ..Default::default()
    }
}

pub(super) fn irq(count: u32) -> IrqInfo {
    IrqInfo {
        count,
        eventfd: true,
        maskable: true,
        automasked: count == 1,
        noresize: true,
    }
}

pub(super) fn fake(log: &CallLog, cfg: &[u8]) -> FakeDevice {
    let mut sparse = mem_region(0x10_0000);
    sparse.sparse_areas = Some(vec![Span {
        offset: 0,
        size: 0x8_0000,
    }]);
    let rom = RegionInfo {
        size: 0x1_0000,
        readable: true,
        ..Default::default()
    };
    FakeDevice::new(log.clone(), cfg)
        .with_region(0, mem_region(4 * PAGE))
        .with_region(
            2,
            RegionInfo {
                size: 0x20,
                readable: true,
                writable: true,
                ..Default::default()
            },
        )
        .with_region(3, mem_region(256))
        .with_region(4, sparse)
        .with_region(ROM_REGION, rom)
        .with_irq(IrqIndex::Intx, irq(1))
        .with_irq(IrqIndex::Msi, irq(4))
        .with_irq(IrqIndex::Msix, irq(4))
}

/// Router calls the VMM saw: (kind, vector, masked) or enables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Routed {
    Enable(MsiKind, Option<u16>),
    Update(MsiKind, u16, bool),
}

#[derive(Clone)]
pub(super) struct VmmRouter(MsiKind, Arc<Mutex<Vec<Routed>>>);

impl MsiRouter for VmmRouter {
    fn apply(&mut self, changes: &[MsiChange]) -> std::io::Result<()> {
        let mut routed = self.1.lock().unwrap();
        for c in changes {
            match *c {
                MsiChange::Enable(n) => routed.push(Routed::Enable(self.0, n)),
                MsiChange::Vector { vector, masked, .. } => {
                    routed.push(Routed::Update(self.0, vector, masked))
                }
                MsiChange::FunctionMask(_) | MsiChange::Deliver(_) => {}
            }
        }
        Ok(())
    }
    fn trigger(&mut self, _vector: u16) -> std::io::Result<()> {
        Ok(())
    }
}

/// The VMM side of the seam: eventfds per vector, remembered for assertions.
#[derive(Default)]
pub(super) struct Vmm {
    routed: Arc<Mutex<Vec<Routed>>>,
    pub msix_fds: Vec<i32>,
    pub msi_fds: Vec<i32>,
    pub intx_fds: Option<(i32, i32)>,
}

pub(super) fn efd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

impl IrqProvider for Vmm {
    fn msi(&mut self, kind: MsiKind, count: u16, _: Holder) -> std::io::Result<MsiVectors> {
        let eventfds: Vec<EventFd> = (0..count).map(|_| efd()).collect();
        let raw = eventfds.iter().map(|e| e.as_raw_fd()).collect();
        match kind {
            MsiKind::Msix => self.msix_fds = raw,
            MsiKind::Msi => self.msi_fds = raw,
        }
        Ok(MsiVectors {
            router: Box::new(VmmRouter(kind, self.routed.clone())),
            eventfds,
        })
    }

    fn intx(&mut self, _pin: u8) -> std::io::Result<IntxFds> {
        let fds = IntxFds {
            trigger: efd(),
            resample: efd(),
        };
        self.intx_fds = Some((fds.trigger.as_raw_fd(), fds.resample.as_raw_fd()));
        Ok(fds)
    }
}

pub(super) struct Fixture {
    pub dev: VfioPciDevice,
    pub log: CallLog,
    pub vmm: Vmm,
}

pub(super) fn build(fake_dev: FakeDevice, log: CallLog, multifunction: bool) -> Fixture {
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction,
        clique: None,
    };
    let (dev, vmm) = take(fake_dev, log.clone(), params).unwrap();
    Fixture { dev, log, vmm }
}

/// The device taken with `params`, or why not.
pub(super) fn build_with(
    fake_dev: FakeDevice,
    log: CallLog,
    params: VfioPciParams,
) -> Result<VfioPciDevice> {
    take(fake_dev, log, params).map(|(dev, _)| dev)
}

/// A fixture whose guest RAM is not DMA-mapped yet (the mapping runs in the background).
pub(super) fn pending() -> (Fixture, Arc<GuestDma>) {
    let log = CallLog::default();
    let dma = GuestDma::pending(mapper(&log), &guest_mem()).unwrap();
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: None,
    };
    let mut vmm = Vmm::default();
    let fake_dev = Box::new(fake(&log, &config()));
    let dev = VfioPciDevice::new(fake_dev, dma.clone(), &mut vmm, params).unwrap();
    (Fixture { dev, log, vmm }, dma)
}

fn mapper(log: &CallLog) -> Arc<FakeDmaMapper> {
    Arc::new(FakeDmaMapper::new(
        log.clone(),
        vec![IovaRange {
            start: 0,
            end: (1 << 39) - 1,
        }],
    ))
}

fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn take(fake_dev: FakeDevice, log: CallLog, params: VfioPciParams) -> Result<(VfioPciDevice, Vmm)> {
    let dma = GuestDma::map(mapper(&log), &guest_mem()).unwrap();
    let mut vmm = Vmm::default();
    let dev = VfioPciDevice::new(Box::new(fake_dev), dma, &mut vmm, params)?;
    Ok((dev, vmm))
}

pub(super) fn fixture() -> Fixture {
    let log = CallLog::default();
    build(fake(&log, &config()), log, false)
}

impl Fixture {
    pub(super) fn write(&mut self, off: usize, bytes: &[u8]) -> ConfigWriteResult {
        self.dev.config_write(off / 4, (off % 4) as u64, bytes)
    }

    pub(super) fn read(&mut self, off: usize) -> u32 {
        self.dev.config_read(off / 4)
    }

    pub(super) fn msix_control(&mut self, v: u16) {
        self.write(0x72, &v.to_le_bytes());
    }

    pub(super) fn msix_entry(&mut self, vector: u64, masked: bool) {
        let base = 0x2000 + vector * 16;
        self.dev.bar_write(0, base, &0xfee0_0000u32.to_le_bytes());
        self.dev
            .bar_write(0, base + 8, &(0x40 + vector as u32).to_le_bytes());
        self.dev
            .bar_write(0, base + 12, &u32::from(masked).to_le_bytes());
    }

    pub(super) fn routed(&self) -> Vec<Routed> {
        std::mem::take(&mut *self.vmm.routed.lock().unwrap())
    }
}
