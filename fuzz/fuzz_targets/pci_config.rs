//! Config space of the host bridge, a root port and a passed-through function over
//! the fake VFIO backend: any sequence of reads, writes (any size, any offset) and BAR
//! reads never panics, and the bridges keep their vendor and device IDs.
#![no_main]
use std::io;

use devices::pci::{HostBridge, PciDevice, RootPort, RootPortConfig};
use libfuzzer_sys::fuzz_target;
use vfio_glue::device::{IrqIndex, IrqInfo, RegionInfo};
use vfio_glue::fake::{CallLog, FakeDevice, FakeDmaMapper, NullRouter};
use vfio_glue::{
    GuestDma, Holder, IntxFds, IrqProvider, MsiKind, MsiVectors, VfioPciDevice, VfioPciParams,
};
use vmm_sys_util::eventfd::EventFd;

struct Irqs;
impl IrqProvider for Irqs {
    fn msi(&mut self, _: MsiKind, count: u16, _: Holder) -> io::Result<MsiVectors> {
        let eventfds = (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        Ok(MsiVectors {
            router: Box::new(NullRouter),
            eventfds,
        })
    }
    fn intx(&mut self, _: u8) -> io::Result<IntxFds> {
        Ok(IntxFds {
            trigger: EventFd::new(libc::EFD_NONBLOCK)?,
            resample: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }
}

/// An nvme-like function: BAR0 64-bit 16 KiB with the MSI-X table and PBA, MSI, INTx,
/// a PCIe capability and an extended capability list.
fn vfio_function() -> VfioPciDevice {
    let mut c = vec![0u8; 4096];
    let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
    put(0x00, &0x0010_1b36u32.to_le_bytes());
    put(0x06, &0x0010u16.to_le_bytes());
    put(0x08, &0x0108_0202u32.to_le_bytes());
    put(0x10, &0x4u32.to_le_bytes());
    put(0x34, &[0x50]);
    put(0x3d, &[1]);
    put(0x50, &[0x05, 0x70, 0x84, 0x00]);
    put(0x70, &[0x11, 0x80, 0x03, 0x00]);
    put(0x74, &0x2000u32.to_le_bytes());
    put(0x78, &0x3000u32.to_le_bytes());
    put(0x80, &[0x10, 0x00, 0x02, 0x00]);
    put(0x100, &(0x01u32 | 1 << 16 | 0x140 << 20).to_le_bytes());
    put(0x140, &(0x15u32 | 1 << 16).to_le_bytes());
    let log = CallLog::default();
    let region = RegionInfo {
        size: 0x4000,
        readable: true,
        writable: true,
        mmap: true,
        ..Default::default()
    };
    let irq = |count| IrqInfo {
        count,
        eventfd: true,
        maskable: true,
        automasked: count == 1,
        noresize: true,
    };
    let dev = FakeDevice::new(log.clone(), &c)
        .with_region(0, region)
        .with_irq(IrqIndex::Intx, irq(1))
        .with_irq(IrqIndex::Msi, irq(4))
        .with_irq(IrqIndex::Msix, irq(4));
    let mem = vm_memory_stub();
    let dma = GuestDma::map(std::sync::Arc::new(FakeDmaMapper::new(log, vec![])), &mem)
        .expect("fake DMA map");
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().expect("address"),
        multifunction: false,
        clique: None,
    };
    VfioPciDevice::new(Box::new(dev), dma, &mut Irqs, params).expect("fake function")
}

fn vm_memory_stub() -> vm_memory::GuestMemoryMmap {
    vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)])
        .expect("guest memory")
}

fuzz_target!(|data: &[u8]| {
    let mut devices: Vec<Box<dyn PciDevice>> = vec![
        Box::new(HostBridge::new()),
        Box::new(RootPort::new(RootPortConfig::new(0, 1)).expect("root port")),
        Box::new(vfio_function()),
    ];
    let ids: Vec<u32> = devices.iter_mut().map(|d| d.config_read(0)).collect();
    for op in data.chunks_exact(8) {
        let d = &mut devices[usize::from(op[0]) % 3];
        let reg = usize::from(u16::from_le_bytes([op[1], op[2]])) % 1100;
        let offset = u64::from(op[3] % 4);
        let len = usize::from(op[3] >> 2) % 5;
        if op[0] & 0x80 != 0 {
            let _ = d.config_read(reg);
        } else {
            let _ = d.config_write(reg, offset, &op[4..4 + len.min(4)]);
        }
        if op[0] & 0x40 != 0 {
            let mut b = [0u8; 4];
            d.bar_read(op[1] % 8, u64::from(op[2]) * 64, &mut b[..len.clamp(1, 4)]);
        }
    }
    // The emulated bridges' IDs are read-only; the VFIO function's come from the
    // device (the fake stores what it is given; vfio-pci and the hardware filter).
    for (d, id) in devices.iter_mut().zip(ids).take(2) {
        assert_eq!(d.config_read(0), id, "vendor and device IDs are read-only");
    }
});
