//! Tests of the BAR mapper over a fake VFIO device and fake KVM slots.
use super::*;
use devices::bus::Bus;
use devices::pci::{Bdf, PciRoot};
use devices::pci::{PciEcam, SharedPciDevice};
use vfio_glue::device::RegionInfo;
use vfio_glue::fake::{CallLog, FakeDevice, FakeDmaMapper};
use vfio_glue::{GuestDma, Holder, IntxFds, IrqProvider, MsiKind, MsiVectors, VfioPciParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const GIB: u64 = 1 << 30;
const BAR0: u64 = 0xc000_0000;
const IO_BAR: u64 = 0x1000;
const ROM: u64 = 0xc100_0000;

fn windows() -> BarWindows {
    BarWindows {
        ram: vec![0..3 * GIB, 4 * GIB..5 * GIB],
        io: 0x1000..0x1_0000,
        mmio32: 0xc000_0000..0xe000_0000,
        mmio64: 8 * GIB..16 * GIB,
    }
}

#[derive(Default)]
struct FakeSlots(Mutex<Vec<(u32, u64, u64)>>);

impl FakeSlots {
    fn live(&self) -> Vec<(u32, u64, u64)> {
        lock(&self.0).clone()
    }
}

impl MemorySlots for FakeSlots {
    unsafe fn add(&self, slot: u32, gpa: u64, size: u64, _host: u64) -> io::Result<()> {
        let mut v = lock(&self.0);
        if v.iter()
            .any(|&(s, g, n)| s == slot || (g < gpa + size && gpa < g + n))
        {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        v.push((slot, gpa, size));
        Ok(())
    }

    fn remove(&self, slot: u32, _gpa: u64) -> io::Result<()> {
        lock(&self.0).retain(|&(s, _, _)| s != slot);
        Ok(())
    }
}

struct NoIrqs;

impl IrqProvider for NoIrqs {
    fn msi(&mut self, _: MsiKind, _: u16, _: Holder) -> io::Result<MsiVectors> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn intx(&mut self, _: u8) -> io::Result<IntxFds> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A function with BAR0 64-bit 16 KiB (mmap-able) and BAR2 I/O 32 bytes, at
/// [`BAR0`] and [`IO_BAR`].
fn function() -> Arc<Mutex<VfioPciDevice>> {
    build_function(false)
}

/// [`function`], with a 32 KiB expansion ROM at [`ROM`] when `rom`.
fn build_function(rom: bool) -> Arc<Mutex<VfioPciDevice>> {
    let mut cfg = vec![0u8; 256];
    cfg[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
    cfg[0x10] = 0x4;
    cfg[0x18] = 0x1;
    let region = |size, mmap| RegionInfo {
        size,
        readable: true,
        writable: true,
        mmap,
        ..Default::default()
    };
    let log = CallLog::default();
    let mut dev = FakeDevice::new(log.clone(), &cfg)
        .with_region(0, region(0x4000, true))
        .with_region(2, region(0x20, false));
    if rom {
        dev = dev.with_region(vfio_glue::device::ROM_REGION, region(0x8000, false));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let dma = GuestDma::map(Arc::new(FakeDmaMapper::new(log, vec![])), &mem).unwrap();
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: None,
    };
    let mut d = VfioPciDevice::new(Box::new(dev), dma, &mut NoIrqs, params).unwrap();
    d.place_bar(0, BAR0).unwrap();
    d.place_bar(2, IO_BAR).unwrap();
    if rom {
        d.place_bar(ROM_BAR_INDEX, ROM).unwrap();
    }
    Arc::new(Mutex::new(d))
}

fn mapper() -> (
    BarMapper,
    Arc<FakeSlots>,
    IoBuses,
    Arc<Mutex<VfioPciDevice>>,
) {
    let slots = Arc::new(FakeSlots::default());
    let buses = IoBuses::new(Bus::new(), Bus::new());
    let dev = function();
    let params = BarMapperParams {
        slots: slots.clone(),
        pool: SlotPool::new(1),
        buses: buses.clone(),
        windows: windows(),
        effects: Arc::default(),
        behind_ports: vec![vec![0]],
        p2p: None,
    };
    let m = BarMapper::new(params, vec![("f".into(), dev.clone(), false)]);
    (m, slots, buses, dev)
}

fn decode(mem: Option<bool>, io: Option<bool>) -> ConfigWriteResult {
    ConfigWriteResult {
        mem_decode: mem,
        io_decode: io,
        ..Default::default()
    }
}

fn moved(index: u8, old: u64, new: u64) -> ConfigWriteResult {
    let mv = devices::pci::BarMove {
        index,
        kind: BarKind::Mem64 {
            prefetchable: false,
        },
        size: 0x4000,
        old,
        new,
    };
    ConfigWriteResult {
        bar_moves: vec![mv],
        ..Default::default()
    }
}

fn apply(m: &BarMapper, r: ConfigWriteResult) {
    m.effects.push(0, r);
    m.apply_pending();
}

#[test]
fn nothing_is_live_before_the_guest_enables_decode() {
    let (m, slots, buses, _) = mapper();
    assert!(slots.live().is_empty());
    assert!(buses.pio().resolve(IO_BAR).is_none());
    assert_eq!(m.live(), vec![vec![(0, None), (2, None)]]);
}

#[test]
fn memory_decode_maps_the_bar_as_a_slot_and_io_decode_traps_the_io_bar() {
    let (m, slots, buses, _) = mapper();
    apply(&m, decode(Some(true), None));
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
    assert!(buses.pio().resolve(IO_BAR).is_none());
    apply(&m, decode(None, Some(true)));
    assert!(buses.pio().resolve(IO_BAR + 0x1f).is_some());
    assert!(buses.pio().resolve(IO_BAR + 0x20).is_none());
    assert_eq!(m.live(), vec![vec![(0, Some(BAR0)), (2, Some(IO_BAR))]]);
}

#[test]
fn decode_off_removes_the_slots_and_on_restores_them() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    apply(&m, decode(Some(false), None));
    assert!(slots.live().is_empty());
    apply(&m, decode(Some(true), None));
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
}

#[test]
fn moved_bar_is_remapped_at_its_new_address() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    apply(&m, moved(0, BAR0, 0xd000_0000));
    assert_eq!(slots.live(), vec![(1, 0xd000_0000, 0x4000)]);
}

#[test]
fn move_onto_ram_is_refused_and_the_old_mapping_kept() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    apply(&m, moved(0, BAR0, 0x10_0000));
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
    assert_eq!(m.live()[0][0], (0, Some(BAR0)));
}

#[test]
fn move_outside_the_windows_is_refused_and_the_old_mapping_kept() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    apply(&m, moved(0, BAR0, 0xfee0_0000));
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
}

#[test]
fn move_that_kvm_rejects_keeps_the_old_mapping() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    // Something else already holds the target range.
    // SAFETY: the fake does not touch host memory.
    unsafe { slots.add(99, 0xd000_0000, 0x1000, 0) }.unwrap();
    apply(&m, moved(0, BAR0, 0xd000_0000));
    assert!(slots.live().contains(&(1, BAR0, 0x4000)));
    assert_eq!(m.live()[0][0], (0, Some(BAR0)));
}

#[test]
fn unmap_all_leaves_no_slot_and_no_trap() {
    let (m, slots, buses, _) = mapper();
    apply(&m, decode(Some(true), Some(true)));
    m.unmap_all();
    assert!(slots.live().is_empty());
    assert!(buses.pio().resolve(IO_BAR).is_none());
}

#[test]
fn guest_config_write_reaches_the_mapper_through_the_handler() {
    let (m, slots, _, dev) = mapper();
    let shared: SharedPciDevice = dev;
    let bdf: Bdf = "01:00.0".parse().unwrap();
    let mut root = PciRoot::new(0);
    let port = devices::pci::RootPort::new(devices::pci::RootPortConfig::new(0, 1)).unwrap();
    root.add_device("00:01.0".parse().unwrap(), Arc::new(Mutex::new(port)))
        .unwrap();
    root.add_device(bdf, shared.clone()).unwrap();
    let root = Arc::new(root);
    let handler = m.effects.handler(root.clone(), vec![shared], Vec::new());
    let mut ecam = PciEcam::new(root, Some(handler));
    // Command register of 01:00.0: memory space enable.
    ecam.write(0, 1 << 20 | 4, &[0x02, 0x00]);
    assert!(slots.live().is_empty(), "applied only after the dispatch");
    m.apply_pending();
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
}

#[test]
fn trapped_io_bar_reaches_the_function() {
    let (m, _, buses, _) = mapper();
    apply(&m, decode(None, Some(true)));
    let mut d = [0u8; 4];
    assert!(buses.pio().read(IO_BAR + 4, &mut d));
    // The fake's region holds zeros.
    assert_eq!(d, [0; 4]);
}

#[test]
fn secondary_bus_reset_on_the_port_resets_the_function_behind_it() {
    let (m, slots, buses, dev) = mapper();
    let shared: SharedPciDevice = dev.clone();
    let port = devices::pci::RootPort::new(devices::pci::RootPortConfig::new(0, 1)).unwrap();
    let port: SharedPciDevice = Arc::new(Mutex::new(port));
    let mut root = PciRoot::new(0);
    root.add_device("00:01.0".parse().unwrap(), port.clone())
        .unwrap();
    root.add_device("01:00.0".parse().unwrap(), shared.clone())
        .unwrap();
    let root = Arc::new(root);
    let handler = m.effects.handler(root.clone(), vec![shared], vec![port]);
    let mut ecam = PciEcam::new(root, Some(handler));
    ecam.write(0, 1 << 20 | 4, &[0x03, 0x00]);
    m.apply_pending();
    assert!(!slots.live().is_empty());
    // Bridge Control (0x3e) of 00:01.0: Secondary Bus Reset.
    ecam.write(0, 1 << 15 | 0x3e, &[0x40, 0x00]);
    m.apply_pending();
    assert!(slots.live().is_empty(), "BARs dead after the bus reset");
    assert!(buses.pio().resolve(IO_BAR).is_none());
    assert_eq!(lock(&dev).config_read(1) & 0xffff, 0, "decode off");
}

#[test]
fn reset_all_brings_moved_bars_back_to_their_placement() {
    let (m, slots, _, dev) = mapper();
    apply(&m, decode(Some(true), None));
    lock(&dev).config_write(4, 0, &0xd000_0000u32.to_le_bytes());
    apply(&m, moved(0, BAR0, 0xd000_0000));
    m.reset_all().unwrap();
    assert!(slots.live().is_empty());
    assert_eq!(lock(&dev).config_read(4) & !0xf, BAR0 as u32);
    apply(&m, decode(Some(true), None));
    assert_eq!(slots.live(), vec![(1, BAR0, 0x4000)]);
}

#[test]
fn a_guest_retrying_a_refused_move_leaves_the_log_small() {
    let (m, slots, _, _) = mapper();
    apply(&m, decode(Some(true), None));
    // SAFETY: the fake does not touch host memory.
    unsafe { slots.add(99, 0xd000_0000, 0x1000, 0) }.unwrap();
    let lines = resources::testing::lines_logged_by(|| {
        for _ in 0..10_000 {
            apply(&m, moved(0, BAR0, 0xd000_0000));
            apply(&m, moved(0, BAR0, 0x1000));
        }
    });
    assert!(lines <= 3 * 20, "{lines} lines for 20,000 refused moves");
    assert_eq!(m.live()[0][0], (0, Some(BAR0)));
}

#[test]
fn the_rom_decodes_only_with_its_enable_bit_and_memory_decode() {
    let slots = Arc::new(FakeSlots::default());
    let buses = IoBuses::new(Bus::new(), Bus::new());
    let params = BarMapperParams {
        slots,
        pool: SlotPool::new(1),
        buses: buses.clone(),
        windows: windows(),
        effects: Arc::default(),
        behind_ports: vec![vec![0]],
        p2p: None,
    };
    let m = BarMapper::new(params, vec![("f".into(), build_function(true), false)]);
    let rom_live = || m.live()[0].iter().find(|b| b.0 == ROM_BAR_INDEX).unwrap().1;
    apply(&m, decode(Some(true), None));
    assert_eq!(rom_live(), None, "memory decode alone leaves the ROM off");
    assert!(buses.bar_mmio().resolve(ROM).is_none());
    let rom_on = |on| ConfigWriteResult {
        rom_decode: Some(on),
        ..Default::default()
    };
    apply(&m, rom_on(true));
    assert_eq!(rom_live(), Some(ROM));
    assert!(buses.bar_mmio().resolve(ROM + 0x7fff).is_some());
    apply(&m, decode(Some(false), None));
    assert_eq!(rom_live(), None, "memory decode off turns the ROM off too");
    apply(&m, decode(Some(true), None));
    apply(&m, rom_on(false));
    assert_eq!(rom_live(), None);
}

/// A mapper whose function has peer-to-peer DMA on (`p2p`), over a fake container
/// accepting `iova`; the container's calls land in the returned log.
fn p2p_mapper(p2p: bool, iova: Vec<vfio_glue::IovaRange>) -> (BarMapper, CallLog) {
    let log = CallLog::default();
    let params = BarMapperParams {
        slots: Arc::new(FakeSlots::default()),
        pool: SlotPool::new(1),
        buses: IoBuses::new(Bus::new(), Bus::new()),
        windows: windows(),
        effects: Arc::default(),
        behind_ports: vec![vec![0]],
        p2p: Some(P2pDma {
            mapper: Arc::new(FakeDmaMapper::new(log.clone(), iova.clone())),
            iova,
        }),
    };
    let m = BarMapper::new(params, vec![("f".into(), function(), p2p)]);
    (m, log)
}

fn dma_calls(log: &CallLog) -> Vec<vfio_glue::fake::Call> {
    log.take()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                vfio_glue::fake::Call::DmaMap { .. } | vfio_glue::fake::Call::DmaUnmap { .. }
            )
        })
        .collect()
}

use vfio_glue::fake::Call::{DmaMap, DmaUnmap};

#[test]
fn p2p_maps_the_bar_at_its_guest_address_when_decode_turns_on() {
    let (m, log) = p2p_mapper(true, vec![]);
    assert!(dma_calls(&log).is_empty());
    apply(&m, decode(Some(true), Some(true)));
    // BAR0's one directly mapped span; the I/O BAR has none.
    assert_eq!(
        dma_calls(&log),
        [DmaMap {
            iova: BAR0,
            size: 0x4000
        }]
    );
}

#[test]
fn p2p_unmaps_when_decode_turns_off_and_maps_again_when_on() {
    let (m, log) = p2p_mapper(true, vec![]);
    apply(&m, decode(Some(true), None));
    log.take();
    apply(&m, decode(Some(false), None));
    assert_eq!(
        dma_calls(&log),
        [DmaUnmap {
            iova: BAR0,
            size: 0x4000
        }]
    );
    apply(&m, decode(Some(true), None));
    assert_eq!(
        dma_calls(&log),
        [DmaMap {
            iova: BAR0,
            size: 0x4000
        }]
    );
}

#[test]
fn p2p_follows_a_moved_bar() {
    let (m, log) = p2p_mapper(true, vec![]);
    apply(&m, decode(Some(true), None));
    log.take();
    apply(&m, moved(0, BAR0, 0xd000_0000));
    assert_eq!(
        dma_calls(&log),
        [
            DmaUnmap {
                iova: BAR0,
                size: 0x4000
            },
            DmaMap {
                iova: 0xd000_0000,
                size: 0x4000
            }
        ]
    );
}

#[test]
fn p2p_moves_nothing_while_decode_is_off() {
    let (m, log) = p2p_mapper(true, vec![]);
    apply(&m, moved(0, BAR0, 0xd000_0000));
    assert!(dma_calls(&log).is_empty());
}

#[test]
fn p2p_off_for_the_function_maps_nothing() {
    let (m, log) = p2p_mapper(false, vec![]);
    apply(&m, decode(Some(true), None));
    m.unmap_all();
    assert!(dma_calls(&log).is_empty());
}

#[test]
fn p2p_outside_the_iova_ranges_keeps_the_slot_and_maps_nothing() {
    let below_bar = vfio_glue::IovaRange {
        start: 0,
        end: BAR0 - 1,
    };
    let (m, log) = p2p_mapper(true, vec![below_bar]);
    apply(&m, decode(Some(true), None));
    assert!(dma_calls(&log).is_empty());
    assert_eq!(m.live()[0][0], (0, Some(BAR0)));
    m.unmap_all();
    assert!(dma_calls(&log).is_empty());
}

#[test]
fn unmap_all_removes_the_p2p_mappings() {
    let (m, log) = p2p_mapper(true, vec![]);
    apply(&m, decode(Some(true), None));
    log.take();
    m.unmap_all();
    assert_eq!(
        dma_calls(&log),
        [DmaUnmap {
            iova: BAR0,
            size: 0x4000
        }]
    );
}
