//! The fake-backed VM the integration tests drive: the standard topology of
//! `strait_tests::machine` with every function served by vfio-glue's fakes, and one
//! backend call log and one interrupt recorder per function. The fakes are a
//! dev-dependency, so this lives with the tests rather than in the library.

use std::collections::BTreeMap;
use std::sync::Arc;

use devices::pci::Bdf;
use strait_tests::function::{FunctionSpec, LargeRegions};
use strait_tests::irqs::IrqRecorder;
use strait_tests::machine::{
    standard_passthrough, Machine, MachineConfig, Passthrough, TESTBED_IOVA,
};
use vfio_glue::device::ROM_REGION;
use vfio_glue::fake::{CallLog, FakeDevice, FakeDmaMapper};
use vfio_glue::{GuestDma, IovaRange, VfioDeviceOps, VfioPciDevice, VfioPciParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const GIB: u64 = 1 << 30;

/// A fake backend serving `spec` and logging to `log`, its ROM image written in.
pub fn backend(spec: &FunctionSpec, log: &CallLog) -> Box<dyn VfioDeviceOps> {
    let mut fake = FakeDevice::new(log.clone(), &spec.config_space());
    for (index, info) in spec.backed_regions() {
        fake = fake.with_region(index, info);
    }
    for (index, info) in spec.irqs() {
        fake = fake.with_irq(index, info);
    }
    if let Some(rom) = spec.rom_image() {
        fake.region_write(ROM_REGION, 0, &rom)
            .expect("the fake's ROM region holds the image");
    }
    Box::new(LargeRegions::new(Box::new(fake), spec.regions()))
}

/// A VM and, per guest function, its backend's calls and the VMM-side recorder.
pub struct Vm {
    pub machine: Machine,
    pub logs: BTreeMap<Bdf, CallLog>,
    pub irqs: BTreeMap<Bdf, IrqRecorder>,
}

/// The standard VM (NVMe behind port 0, GPU and audio behind port 1), 2 GiB of RAM,
/// on the testbed's IOMMU.
pub fn vm() -> Vm {
    vm_with(&standard_passthrough())
}

/// A VM passing through `list`, 2 GiB of RAM, on the testbed's IOMMU.
pub fn vm_with(list: &[Passthrough]) -> Vm {
    let ranges = TESTBED_IOVA
        .iter()
        .map(|&(start, end)| IovaRange { start, end })
        .collect();
    let mapper = Arc::new(FakeDmaMapper::new(CallLog::default(), ranges));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])
        .expect("1 MiB of guest memory");
    let dma = GuestDma::map(mapper, &mem).expect("the fake mapper maps anything in range");
    let (mut logs, mut irqs) = (BTreeMap::new(), BTreeMap::new());
    let mut make = |p: &Passthrough, guest: Bdf, multifunction: bool| {
        let (log, mut rec) = (CallLog::default(), IrqRecorder::default());
        logs.insert(guest, log.clone());
        irqs.insert(guest, rec.clone());
        let params = VfioPciParams {
            addr: p.host,
            multifunction,
            clique: None,
        };
        VfioPciDevice::new(backend(&p.spec, &log), dma.clone(), &mut rec, params)
            .expect("the fake backend is a well-formed device")
    };
    let cfg = MachineConfig::testbed(2 * GIB);
    let machine = Machine::build(&cfg, list, &mut make).expect("the standard VM assembles");
    Vm {
        machine,
        logs,
        irqs,
    }
}
