//! A guest enumerating the PCI topology the VMM assembles (host bridge, root ports, an
//! NVMe controller and a GPU with its HDMI audio passed through with vfio-glue's fakes),
//! touching config space only through the ECAM and CF8/CFC bus devices, as Linux does:
//! scan bus 0, follow bridges, walk capability lists, size BARs, move a BAR, read the ROM
//! (PCI Local Bus 3.0 6.1-6.2 and 6.7; PCI-to-PCI Bridge 1.2 3.2; PCIe Base 7.2.2, 7.6).

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use devices::pci::regs::*;
use devices::pci::{BarKind, BarMove, Bdf, PciDevice, ROM_BAR_INDEX};
use strait_tests::function::{self, *};
use strait_tests::guest::*;
use strait_tests::machine::*;
use vfio_glue::fake::Call;

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn gpu_bdf() -> Bdf {
    bdf("02:00.0")
}

fn audio_bdf() -> Bdf {
    bdf("02:00.1")
}

fn nvme_bdf() -> Bdf {
    bdf("01:00.0")
}

impl Vm {
    fn ecam(&self) -> Ecam<'_> {
        Ecam(&self.machine.mmio)
    }

    fn cf8(&self) -> Cf8<'_> {
        Cf8(&self.machine.pio)
    }

    /// The guest turns on memory and I/O decode of `bdf`, as a driver's enable does.
    fn enable_decode(&self, cfg: &dyn ConfigIo, bdf: Bdf) {
        let cmd = cfg.read16(bdf, COMMAND);
        cfg.write16(bdf, COMMAND, cmd | COMMAND_MEMORY | COMMAND_IO);
    }

    fn disable_decode(&self, cfg: &dyn ConfigIo, bdf: Bdf) {
        let cmd = cfg.read16(bdf, COMMAND);
        cfg.write16(bdf, COMMAND, cmd & !(COMMAND_MEMORY | COMMAND_IO));
    }

    /// BAR moves the handler saw since the last call, per function.
    fn moves(&self) -> Vec<(Bdf, BarMove)> {
        let writes = self.machine.take_config_writes();
        let per_write = writes
            .into_iter()
            .map(|(b, r)| r.bar_moves.into_iter().map(move |m| (b, m)));
        per_write.flatten().collect()
    }
}

fn ids(found: &[Found]) -> Vec<(String, u16, u16)> {
    found
        .iter()
        .map(|f| (f.bdf.to_string(), f.vendor, f.device))
        .collect()
}

#[test]
fn bus_zero_holds_the_host_bridge_and_a_root_port_per_device() {
    let vm = vm();
    let bus0: Vec<Found> = enumerate(&vm.ecam())
        .into_iter()
        .filter(|f| f.bdf.bus() == 0)
        .collect();
    let got: Vec<(String, u16, u16, u8)> = bus0
        .iter()
        .map(|f| (f.bdf.to_string(), f.vendor, f.device, f.header_type))
        .collect();
    assert_eq!(
        got,
        [
            ("0000:00:00.0".to_string(), 0x8086, 0x29c0, 0x00),
            ("0000:00:01.0".to_string(), 0x1b36, 0x000c, 0x01),
            ("0000:00:02.0".to_string(), 0x1b36, 0x000c, 0x01),
        ]
    );
}

#[test]
fn enumeration_follows_bridges_to_the_passed_through_functions() {
    let vm = vm();
    let (nvme, gpu, audio) = (function::nvme().ids, gpu().ids, hdmi_audio().ids);
    assert_eq!(
        ids(&enumerate(&vm.ecam())),
        [
            ("0000:00:00.0".to_string(), 0x8086, 0x29c0),
            ("0000:00:01.0".to_string(), 0x1b36, 0x000c),
            ("0000:01:00.0".to_string(), nvme.vendor, nvme.device),
            ("0000:00:02.0".to_string(), 0x1b36, 0x000c),
            ("0000:02:00.0".to_string(), gpu.vendor, gpu.device),
            ("0000:02:00.1".to_string(), audio.vendor, audio.device),
        ]
    );
}

#[test]
fn cf8_enumerates_the_same_functions_as_ecam() {
    let vm = vm();
    assert_eq!(enumerate(&vm.cf8()), enumerate(&vm.ecam()));
}

#[test]
fn root_ports_forward_one_secondary_bus_each() {
    let vm = vm();
    let buses: Vec<u32> = vm
        .machine
        .port_bdfs()
        .iter()
        .map(|p| vm.ecam().read32(*p, PRIMARY_BUS) & 0xff_ffff)
        .collect();
    // Primary 0, secondary = subordinate = port + 1.
    assert_eq!(buses, [0x01_0100, 0x02_0200]);
}

#[test]
fn absent_functions_and_buses_read_all_ones() {
    let vm = vm();
    for cfg in [&vm.ecam() as &dyn ConfigIo, &vm.cf8()] {
        assert_eq!(cfg.read32(bdf("00:03.0"), 0), u32::MAX);
        assert_eq!(cfg.read32(bdf("02:00.2"), 0), u32::MAX);
        assert_eq!(cfg.read32(bdf("03:00.0"), 0), u32::MAX);
    }
}

#[test]
fn gpu_function_zero_carries_the_multifunction_bit() {
    let vm = vm();
    assert_eq!(vm.ecam().read8(gpu_bdf(), HEADER_TYPE), 0x80);
}

#[test]
fn other_functions_do_not_carry_the_hosts_multifunction_bit() {
    let vm = vm();
    assert!(hdmi_audio().host_multifunction);
    assert_eq!(vm.ecam().read8(audio_bdf(), HEADER_TYPE), 0x00);
    assert_eq!(vm.ecam().read8(nvme_bdf(), HEADER_TYPE), 0x00);
}

#[test]
fn gpu_capability_list_is_walked_to_its_end() {
    let vm = vm();
    assert_eq!(
        capabilities(&vm.ecam(), gpu_bdf()),
        [
            (CAP_ID_PM, 0x60),
            (CAP_ID_MSI, 0x68),
            (CAP_ID_PCIE, 0x78),
            (CAP_ID_MSIX, 0xb4)
        ]
    );
}

#[test]
fn root_port_capability_list_is_express_then_power_management() {
    let vm = vm();
    let ids: Vec<u8> = capabilities(&vm.cf8(), bdf("00:02.0"))
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(ids, [CAP_ID_PCIE, CAP_ID_PM]);
}

#[test]
fn msix_capability_points_at_eight_vectors_in_bar0() {
    let vm = vm();
    let cfg = vm.ecam();
    let at = 0xb4;
    assert_eq!(cfg.read16(gpu_bdf(), at + 2) & 0x7ff, 7);
    assert_eq!(cfg.read32(gpu_bdf(), at + 4), GPU_MSIX.table_offset);
    assert_eq!(cfg.read32(gpu_bdf(), at + 8), GPU_MSIX.pba_offset);
}

#[test]
fn sriov_and_resizable_bar_are_not_in_the_extended_walk() {
    let vm = vm();
    assert_eq!(
        ext_capabilities(&vm.ecam(), gpu_bdf()),
        [
            (EXT_CAP_AER, 0x100),
            (EXT_CAP_LTR, 0x1d0),
            (EXT_CAP_DSN, 0x1e0)
        ]
    );
}

#[test]
fn hidden_extended_capabilities_read_as_zero() {
    let vm = vm();
    let cfg = vm.ecam();
    // SR-IOV at 0x150 (header, TotalVFs at +0x0e), Resizable BAR at 0x190.
    for off in [0x150, 0x15c, 0x18c, 0x190, 0x198, 0x1a8] {
        assert_eq!(cfg.read32(gpu_bdf(), off), 0, "offset {off:#x}");
    }
}

#[test]
fn visible_extended_capability_bodies_read_through() {
    let vm = vm();
    let fill = u32::from_le_bytes([EXT_CAP_FILL; 4]);
    assert_eq!(vm.ecam().read32(gpu_bdf(), 0x104), fill);
    assert_eq!(vm.ecam().read32(gpu_bdf(), 0x1d4), fill);
}

#[test]
fn extended_space_is_out_of_cf8_reach() {
    let vm = vm();
    // Mechanism #1 has 8 register bits: 0x100 is not addressable, so a guest without
    // ECAM sees no extended capabilities at all.
    assert!(ext_capabilities(&vm.cf8(), gpu_bdf()).is_empty());
}

/// What sizing should find for `spec`: its BARs and ROM as the device reports them.
fn expected_bars(spec: &FunctionSpec) -> Vec<SizedBar> {
    let mut v: Vec<SizedBar> = spec
        .bars
        .iter()
        .map(|b| SizedBar {
            index: b.index,
            kind: b.kind,
            size: b.size,
        })
        .collect();
    v.extend(spec.rom_size.map(|size| SizedBar {
        index: ROM_BAR_INDEX,
        kind: BarKind::Mem32 {
            prefetchable: false,
        },
        size,
    }));
    v
}

#[test]
fn gpu_bars_size_as_the_device_reports() {
    let vm = vm();
    assert_eq!(size_bars(&vm.ecam(), gpu_bdf()), expected_bars(&gpu()));
}

#[test]
fn audio_bar_sizes_as_the_device_reports() {
    let vm = vm();
    assert_eq!(
        size_bars(&vm.ecam(), audio_bdf()),
        expected_bars(&hdmi_audio())
    );
}

#[test]
fn nvme_bar_sizes_through_cf8() {
    let vm = vm();
    assert_eq!(
        size_bars(&vm.cf8(), nvme_bdf()),
        expected_bars(&function::nvme())
    );
}

/// The addresses the VMM programmed, as the guest reads them.
fn programmed(cfg: &dyn ConfigIo, bdf: Bdf, spec: &FunctionSpec) -> Vec<u64> {
    expected_bars(spec)
        .iter()
        .map(|b| bar_address(cfg, bdf, b.index))
        .collect()
}

#[test]
fn sizing_restores_the_planned_addresses() {
    let vm = vm();
    let before = programmed(&vm.ecam(), gpu_bdf(), &gpu());
    size_bars(&vm.ecam(), gpu_bdf());
    assert_eq!(programmed(&vm.ecam(), gpu_bdf(), &gpu()), before);
    let planned: Vec<u64> = vm
        .machine
        .function(gpu_bdf())
        .unwrap()
        .bars()
        .iter()
        .map(|b| b.addr)
        .collect();
    assert_eq!(before, planned);
}

#[test]
fn sizing_with_decode_on_reports_no_bar_move() {
    let vm = vm();
    let cfg = vm.ecam();
    vm.enable_decode(&cfg, gpu_bdf());
    // Without turning decode off first: each register is probed and restored in turn.
    for index in [0, 1, 3, 5, ROM_BAR_INDEX] {
        size_bar(&cfg, gpu_bdf(), index).unwrap();
    }
    assert_eq!(vm.moves(), []);
}

#[test]
fn enabling_decode_at_the_planned_addresses_reports_no_move() {
    let vm = vm();
    for f in [nvme_bdf(), gpu_bdf(), audio_bdf()] {
        vm.enable_decode(&vm.ecam(), f);
    }
    assert_eq!(vm.moves(), []);
}

#[test]
fn bar_moved_with_decode_off_is_reported_when_decode_returns() {
    let vm = vm();
    let cfg = vm.ecam();
    vm.enable_decode(&cfg, audio_bdf());
    vm.disable_decode(&cfg, audio_bdf());
    let old = bar_address(&cfg, audio_bdf(), 0);
    let new = old + 0x2_0000;
    cfg.write32(audio_bdf(), BAR0, new as u32);
    assert_eq!(vm.moves(), [], "nothing decodes while memory decode is off");
    vm.enable_decode(&cfg, audio_bdf());
    let expected = BarMove {
        index: 0,
        kind: BarKind::Mem32 {
            prefetchable: false,
        },
        size: 16 << 10,
        old,
        new,
    };
    assert_eq!(vm.moves(), [(audio_bdf(), expected)]);
}

#[test]
fn moved_64bit_bar_is_reported_once_with_both_halves() {
    let vm = vm();
    let cfg = vm.ecam();
    let old = bar_address(&cfg, gpu_bdf(), 3);
    let new = 96 * GIB;
    cfg.write32(gpu_bdf(), BAR0 + 12, new as u32);
    cfg.write32(gpu_bdf(), BAR0 + 16, (new >> 32) as u32);
    vm.enable_decode(&cfg, gpu_bdf());
    let expected = BarMove {
        index: 3,
        kind: BarKind::Mem64 { prefetchable: true },
        size: 32 << 20,
        old,
        new,
    };
    assert_eq!(vm.moves(), [(gpu_bdf(), expected)]);
}

#[test]
fn bar_move_through_cf8_reaches_the_handler() {
    let vm = vm();
    let cfg = vm.cf8();
    let old = bar_address(&cfg, nvme_bdf(), 0);
    let new = old + 0x4000;
    cfg.write32(nvme_bdf(), BAR0, new as u32);
    vm.enable_decode(&cfg, nvme_bdf());
    let moves = vm.moves();
    assert_eq!(moves.len(), 1);
    assert_eq!(
        (moves[0].0, moves[0].1.old, moves[0].1.new),
        (nvme_bdf(), old, new)
    );
}

#[test]
fn root_port_windows_are_the_planned_ones() {
    let vm = vm();
    for (i, port) in vm.machine.port_bdfs().iter().enumerate() {
        let p = &vm.machine.plan.ports[i];
        let expected = BridgeWindows {
            io: p.io.clone(),
            mem: p.mem.clone(),
            prefetchable: p.prefetchable.clone(),
        };
        assert_eq!(bridge_windows(&vm.ecam(), *port), expected, "port {i}");
    }
}

fn inside(w: &Option<std::ops::RangeInclusive<u64>>, addr: u64, size: u64) -> bool {
    w.as_ref()
        .is_some_and(|w| *w.start() <= addr && addr + (size - 1) <= *w.end())
}

#[test]
fn bridge_windows_cover_the_bars_behind_them() {
    let vm = vm();
    let cfg = vm.ecam();
    let behind = [
        (bdf("00:01.0"), nvme_bdf(), function::nvme()),
        (bdf("00:02.0"), gpu_bdf(), gpu()),
        (bdf("00:02.0"), audio_bdf(), hdmi_audio()),
    ];
    for (port, f, spec) in behind {
        let w = bridge_windows(&cfg, port);
        for bar in expected_bars(&spec) {
            let addr = bar_address(&cfg, f, bar.index);
            let window = match bar.kind {
                BarKind::Io => &w.io,
                BarKind::Mem64 { prefetchable: true } => &w.prefetchable,
                _ => &w.mem,
            };
            assert!(
                inside(window, addr, bar.size),
                "{f} BAR {} at {addr:#x} outside {window:x?}",
                bar.index
            );
        }
    }
}

fn overlap(
    a: &Option<std::ops::RangeInclusive<u64>>,
    b: &Option<std::ops::RangeInclusive<u64>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.start() <= b.end() && b.start() <= a.end(),
        _ => false,
    }
}

#[test]
fn windows_of_different_root_ports_do_not_overlap() {
    let vm = vm();
    let a = bridge_windows(&vm.ecam(), bdf("00:01.0"));
    let b = bridge_windows(&vm.ecam(), bdf("00:02.0"));
    assert!(!overlap(&a.mem, &b.mem), "{a:x?} {b:x?}");
    assert!(!overlap(&a.io, &b.io), "{a:x?} {b:x?}");
    assert!(!overlap(&a.prefetchable, &b.prefetchable), "{a:x?} {b:x?}");
}

#[test]
fn prefetchable_window_lies_in_the_planned_64bit_window_below_the_iommu_limit() {
    let vm = vm();
    let (start, size) = vm.machine.plan.mmio64;
    let w = bridge_windows(&vm.ecam(), bdf("00:02.0"))
        .prefetchable
        .unwrap();
    assert!(
        *w.start() >= start && *w.end() <= start + (size - 1),
        "{w:x?}"
    );
    assert!(*w.end() < 1 << TESTBED_PHYS_BITS);
}

#[test]
fn rom_reads_through_the_rom_bar_once_enabled() {
    let vm = vm();
    let cfg = vm.ecam();
    let rom = bar_address(&cfg, gpu_bdf(), ROM_BAR_INDEX);
    cfg.write32(gpu_bdf(), ROM_ADDRESS, rom as u32 | ROM_ENABLE);
    vm.enable_decode(&cfg, gpu_bdf());
    let bus = &vm.machine.mmio;
    assert_eq!(mmio_read(bus, rom, 2), 0xaa55);
    let pcir = rom + mmio_read(bus, rom + 0x18, 2);
    assert_eq!(
        mmio_read(bus, pcir, 4),
        u64::from(u32::from_le_bytes(*b"PCIR"))
    );
    let ids = gpu().ids;
    assert_eq!(mmio_read(bus, pcir + 4, 2), u64::from(ids.vendor));
    assert_eq!(mmio_read(bus, pcir + 6, 2), u64::from(ids.device));
    assert_eq!(
        vm.moves(),
        [],
        "the ROM was enabled where the VMM placed it"
    );
}

#[test]
fn capability_right_after_a_short_resizable_bar_stays_visible() {
    // Resizable BAR with one BAR is 12 bytes (PCIe Base 7.8.6); LTR follows at +0xc.
    let mut list = standard_passthrough();
    list[1].spec.ext_caps = vec![
        ExtCapSpec {
            id: EXT_CAP_REBAR,
            len: 0x0c,
            gap: 0,
        },
        ExtCapSpec {
            id: EXT_CAP_LTR,
            len: 0x08,
            gap: 0,
        },
    ];
    let vm = vm_with(&list);
    assert_eq!(
        ext_capabilities(&vm.ecam(), gpu_bdf()),
        [(EXT_CAP_LTR, 0x10c)]
    );
    let fill = u32::from_le_bytes([EXT_CAP_FILL; 4]);
    assert_eq!(vm.ecam().read32(gpu_bdf(), 0x110), fill, "LTR body");
}

#[test]
fn large_bars_are_mapped_directly_whole() {
    let vm = vm();
    let direct: Vec<(u8, u64, u64)> = vm
        .machine
        .function(gpu_bdf())
        .unwrap()
        .direct_mappings()
        .iter()
        .filter(|d| d.bar != 0)
        .map(|d| (d.bar, d.offset, d.size))
        .collect();
    assert_eq!(direct, [(1, 0, 32 * GIB), (3, 0, 32 << 20)]);
}

#[test]
fn io_bar_accesses_reach_the_devices_region() {
    let vm = vm();
    let cfg = vm.ecam();
    vm.enable_decode(&cfg, gpu_bdf());
    let port = bar_address(&cfg, gpu_bdf(), 5);
    let log = &vm.logs[&gpu_bdf()];
    log.take();
    vm.machine.pio.write(port + 0x10, &[0x12, 0x34]);
    assert_eq!(
        log.calls(),
        [Call::RegionWrite {
            index: 5,
            offset: 0x10,
            data: vec![0x12, 0x34]
        }]
    );
    let mut back = [0u8; 2];
    assert!(vm.machine.pio.read(port + 0x10, &mut back));
    assert_eq!(back, [0x12, 0x34]);
}

#[test]
fn command_writes_reach_the_device_so_bus_mastering_follows_the_guest() {
    let vm = vm();
    let log = &vm.logs[&gpu_bdf()];
    log.take();
    vm.ecam()
        .write16(gpu_bdf(), COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    assert_eq!(
        log.calls(),
        [Call::RegionWrite {
            index: vfio_glue::device::CONFIG_REGION,
            offset: COMMAND as u64,
            data: vec![0x06, 0x00]
        }]
    );
}

/// Bus mastering goes off first; then the device fd closes, and VFIO resets a function
/// with its own reset (FLR) right there, so Strait does not reset it a second time.
#[test]
fn teardown_stops_bus_mastering_before_the_reset() {
    let vm = vm();
    vm.ecam()
        .write16(gpu_bdf(), COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    let log = vm.logs[&gpu_bdf()].clone();
    log.take();
    drop(vm);
    let calls: Vec<Call> = log
        .calls()
        .into_iter()
        .filter(|c| !matches!(c, Call::IrqDisable { .. }))
        .collect();
    assert_eq!(
        calls,
        [
            Call::RegionWrite {
                index: vfio_glue::device::CONFIG_REGION,
                offset: COMMAND as u64,
                data: vec![0x02, 0x00]
            },
            Call::DeviceClosed
        ]
    );
}

#[test]
fn intx_pin_the_guest_reads_is_the_pin_the_vmm_wired() {
    let vm = vm();
    for f in [nvme_bdf(), gpu_bdf(), audio_bdf()] {
        let pin = vm.ecam().read8(f, INTERRUPT_PIN);
        let wired = vm.irqs[&f].intx().map(|i| i.0);
        assert_eq!(wired, Some(pin), "{f}");
    }
    assert_eq!(vm.ecam().read8(audio_bdf(), INTERRUPT_PIN), 2, "INTB");
}
