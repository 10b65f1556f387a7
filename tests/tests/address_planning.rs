//! Address planning for realistic passthrough sets, across the crates that must agree on
//! it: `resources` chooses the 64-bit MMIO window and places BARs and bridge windows,
//! `devices` classifies BARs, `arch` owns the platform windows and describes them to the
//! guest (ACPI MCFG and DSDT `_CRS`, PCI Firmware 3.3 4.1.2; ACPI 6.5 6.4.3.5).
//! Checked: natural alignment, disjoint port windows, everything below 2^phys_bits and
//! inside one IOVA range, a clear error when a set cannot fit, and ACPI tables built from
//! the plan.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used)]

use std::ops::RangeInclusive;

use arch::x86_64::acpi::{create_acpi_tables, AcpiConfig, AddrRange, PciWindows};
use arch::x86_64::layout;
use devices::pci::BarKind;
use resources::{
    place_bars, plan_mmio64, AddressAllocator, BarRequest, PlanError, PortPlacement, PortRequest,
    Windows,
};
use strait_tests::machine::{TESTBED_IOVA, TESTBED_PHYS_BITS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// An Intel host IOMMU with 46 address bits (MSI window reserved).
const IOVA_46: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 46) - 1)];

/// A data-centre GPU behind one root port: 16 MiB registers, a `vram` 64-bit
/// prefetchable BAR and 32 MiB more, a 128 KiB ROM; classified as the VMM does, from
/// `devices`' BAR kinds.
fn gpu(tag: &str, vram: u64) -> PortRequest {
    let pref64 = BarKind::Mem64 { prefetchable: true };
    let bars = [
        (
            BarKind::Mem32 {
                prefetchable: false,
            },
            16 * MIB,
        ),
        (pref64, vram),
        (pref64, 32 * MIB),
        (
            BarKind::Mem32 {
                prefetchable: false,
            },
            128 << 10,
        ),
    ];
    PortRequest {
        tag: tag.into(),
        bars: bars
            .iter()
            .map(|&(kind, size)| BarRequest {
                size,
                class: kind.into(),
            })
            .collect(),
    }
}

/// The outcome of planning a VM.
struct Planned {
    mmio64: (u64, u64),
    ports: Vec<PortPlacement>,
}

/// Plan the 64-bit window above `ram_size` bytes of RAM, then place the BARs in the
/// platform windows, as the VMM's boot recipe does.
fn plan(
    ram_size: u64,
    ports: &[PortRequest],
    phys_bits: u8,
    iova: &[(u64, u64)],
) -> Result<Planned, Box<PlanError>> {
    let floor = layout::pci_platform(ram_size, phys_bits, iova.to_vec()).mmio64;
    let mmio64 = plan_mmio64(floor, ports, phys_bits, iova)?;
    let io_last = u64::from(layout::PCI_IO_START) + layout::PCI_IO_SIZE - 1;
    let mut io = AddressAllocator::new(layout::PCI_IO_START.into(), io_last).unwrap();
    let m32_last = layout::MMIO32_START.0 + layout::MMIO32_SIZE - 1;
    let mut m32 = AddressAllocator::new(layout::MMIO32_START.0, m32_last).unwrap();
    let mut m64 = AddressAllocator::with_size(mmio64.0, mmio64.1).unwrap();
    let windows = Windows {
        io: &mut io,
        mmio32: &mut m32,
        mmio64: &mut m64,
    };
    let ports = place_bars(ports, windows)?;
    Ok(Planned { mmio64, ports })
}

/// One GPU with a 128 GiB BAR (an 80 GiB-class part) and 64 GiB of RAM, 46-bit host.
fn one_big_gpu() -> (Vec<PortRequest>, Planned) {
    let ports = vec![gpu("gpu0", 128 * GIB)];
    let p = plan(64 * GIB, &ports, 46, &IOVA_46).unwrap();
    (ports, p)
}

/// Two GPUs with 64 GiB BARs behind two ports, 4 GiB of RAM, on the 39-bit testbed.
fn two_gpus() -> (Vec<PortRequest>, Planned) {
    let ports = vec![gpu("gpu0", 64 * GIB), gpu("gpu1", 64 * GIB)];
    let p = plan(4 * GIB, &ports, TESTBED_PHYS_BITS, &TESTBED_IOVA).unwrap();
    (ports, p)
}

fn window_range(mmio64: (u64, u64)) -> RangeInclusive<u64> {
    mmio64.0..=mmio64.0 + (mmio64.1 - 1)
}

fn contains(outer: &RangeInclusive<u64>, inner: &RangeInclusive<u64>) -> bool {
    outer.start() <= inner.start() && inner.end() <= outer.end()
}

fn disjoint(a: &RangeInclusive<u64>, b: &RangeInclusive<u64>) -> bool {
    a.end() < b.start() || b.end() < a.start()
}

fn bar_range(addr: u64, size: u64) -> RangeInclusive<u64> {
    addr..=addr + (size - 1)
}

#[test]
fn big_gpu_window_starts_where_arch_puts_the_64bit_window() {
    let (_, p) = one_big_gpu();
    assert_eq!(p.mmio64.0, layout::mmio64_start(64 * GIB).0);
    assert_eq!(p.mmio64.0, 65 * GIB, "64 GiB of RAM ends at 65 GiB");
}

#[test]
fn big_gpu_bars_land_on_their_natural_boundaries() {
    let (_, p) = one_big_gpu();
    // The 128 GiB BAR at 128 GiB, the 32 MiB one in the padding right below it.
    assert_eq!(
        p.ports[0].bar_addrs,
        [0xc000_0000, 128 * GIB, 128 * GIB - 32 * MIB, 0xc100_0000]
    );
}

#[test]
fn every_bar_is_naturally_aligned() {
    for (ports, p) in [one_big_gpu(), two_gpus()] {
        for (req, placed) in ports.iter().zip(&p.ports) {
            for (bar, addr) in req.bars.iter().zip(&placed.bar_addrs) {
                assert_eq!(
                    addr % bar.size,
                    0,
                    "{} BAR of {:#x} at {addr:#x}",
                    req.tag,
                    bar.size
                );
            }
        }
    }
}

#[test]
fn big_gpu_window_ends_below_2_to_the_46() {
    let (_, p) = one_big_gpu();
    let w = window_range(p.mmio64);
    assert!(*w.end() < 1 << 46, "{w:x?}");
    assert_eq!(*w.end(), 256 * GIB - 1);
}

#[test]
fn windows_lie_inside_one_iova_range() {
    for (iova, (_, p)) in [
        (&IOVA_46[..], one_big_gpu()),
        (&TESTBED_IOVA[..], two_gpus()),
    ] {
        let w = window_range(p.mmio64);
        assert!(
            iova.iter().any(|&(lo, hi)| contains(&(lo..=hi), &w)),
            "{w:x?} in {iova:x?}"
        );
    }
}

#[test]
fn two_gpus_fit_the_39_bit_testbed() {
    let (_, p) = two_gpus();
    // gpu0's 32 MiB BAR sits below its big one, so gpu1's big BAR follows at once.
    assert_eq!(p.ports[0].bar_addrs[1], 64 * GIB);
    assert_eq!(p.ports[1].bar_addrs[1], 128 * GIB);
    assert!(*window_range(p.mmio64).end() < 1 << TESTBED_PHYS_BITS);
}

#[test]
fn two_gpus_with_128g_bars_fit_the_39_bit_testbed() {
    // [128G-32M, 256G) + [256G, 384G+32M), from 5 GiB.
    let ports = [gpu("gpu0", 128 * GIB), gpu("gpu1", 128 * GIB)];
    let p = plan(4 * GIB, &ports, TESTBED_PHYS_BITS, &TESTBED_IOVA);
    let p = p.unwrap_or_else(|e| panic!("{e}"));
    assert!(*window_range(p.mmio64).end() < 1 << TESTBED_PHYS_BITS);
    assert_eq!(
        p.ports[0].prefetchable,
        Some(128 * GIB - 32 * MIB..=256 * GIB - 1)
    );
    assert_eq!(
        p.ports[1].prefetchable,
        Some(256 * GIB..=384 * GIB + 32 * MIB - 1)
    );
}

#[test]
fn two_gpus_get_disjoint_bridge_windows() {
    let (_, p) = two_gpus();
    let (a, b) = (&p.ports[0], &p.ports[1]);
    assert!(disjoint(
        a.prefetchable.as_ref().unwrap(),
        b.prefetchable.as_ref().unwrap()
    ));
    assert!(disjoint(a.mem.as_ref().unwrap(), b.mem.as_ref().unwrap()));
}

#[test]
fn each_bar_lies_inside_its_ports_window() {
    let (ports, p) = two_gpus();
    for (req, placed) in ports.iter().zip(&p.ports) {
        for (bar, addr) in req.bars.iter().zip(&placed.bar_addrs) {
            let w = match bar.class.window() {
                resources::Window::Mmio64 => &placed.prefetchable,
                resources::Window::Mmio32 => &placed.mem,
                resources::Window::Io => &placed.io,
            };
            let w = w.as_ref().unwrap();
            assert!(
                contains(w, &bar_range(*addr, bar.size)),
                "{} {addr:#x}",
                req.tag
            );
        }
    }
}

#[test]
fn bridge_windows_lie_inside_the_platform_windows() {
    let (_, p) = two_gpus();
    let m64 = window_range(p.mmio64);
    let m32 = layout::MMIO32_START.0..=layout::MMIO32_START.0 + layout::MMIO32_SIZE - 1;
    for port in &p.ports {
        assert!(contains(&m64, port.prefetchable.as_ref().unwrap()));
        assert!(contains(&m32, port.mem.as_ref().unwrap()));
        assert_eq!(port.io, None, "no I/O BARs");
    }
}

/// Two GPUs with 256 GiB BARs: over 512 GiB of BARs, where 39 bits leave 507 GiB
/// above 5 GiB of RAM end.
fn too_big() -> PlanError {
    let ports = [gpu("gpu0", 256 * GIB), gpu("gpu1", 256 * GIB)];
    let iova = TESTBED_IOVA;
    *plan(4 * GIB, &ports, TESTBED_PHYS_BITS, &iova)
        .err()
        .unwrap()
}

#[test]
fn set_too_large_for_39_bits_is_mmio64_does_not_fit() {
    match too_big() {
        PlanError::Mmio64DoesNotFit {
            bar_sizes,
            needed,
            start,
            available,
            phys_bits,
            ..
        } => {
            assert_eq!(bar_sizes, [256 * GIB, 256 * GIB, 32 * MIB, 32 * MIB]);
            assert_eq!(start, 5 * GIB);
            assert!(
                needed >= 512 * GIB + 64 * MIB,
                "at least the BARs: {needed:#x}"
            );
            assert_eq!(available, 512 * GIB - 5 * GIB);
            assert_eq!(phys_bits, 39);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn too_large_error_names_the_sizes_the_limit_and_the_remedies() {
    let msg = too_big().to_string();
    for needle in [
        "256 GiB, 256 GiB, 32 MiB, 32 MiB",
        "2^39",
        "give the guest less memory",
        "pass through fewer devices",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}

fn acpi(mmio64: (u64, u64)) -> (GuestMemoryMmap, arch::Result<GuestAddress>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 * MIB as usize)]).unwrap();
    let cfg = AcpiConfig {
        vcpus: 2,
        pci: PciWindows::platform(AddrRange {
            base: mmio64.0,
            size: mmio64.1,
        }),
        com1: true,
        numa: Vec::new(),
        pci_pxm: None,
        pci_bridges: Vec::new(),
    };
    let rsdp = create_acpi_tables(&mem, &cfg);
    (mem, rsdp)
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The ACPI table with `signature`, found through RSDP -> XSDT (or FADT -> X_DSDT).
fn find_table(mem: &GuestMemoryMmap, signature: &[u8; 4]) -> Option<Vec<u8>> {
    let table = |addr: u64| {
        let len = u32::from_le_bytes(read(mem, addr + 4, 4).try_into().unwrap());
        read(mem, addr, len as usize)
    };
    let xsdt = table(u64_at(&read(mem, layout::RSDP_START.0, 36), 24));
    let tables: Vec<Vec<u8>> = (36..xsdt.len())
        .step_by(8)
        .map(|o| table(u64_at(&xsdt, o)))
        .collect();
    let fadt = tables.iter().find(|t| &t[..4] == b"FACP")?;
    let dsdt = table(u64_at(fadt, 140));
    tables
        .into_iter()
        .chain([dsdt])
        .find(|t| &t[..4] == signature)
}

#[test]
fn acpi_tables_accept_the_planned_windows() {
    let (_, p) = two_gpus();
    let (mem, rsdp) = acpi(p.mmio64);
    assert_eq!(rsdp.unwrap(), layout::RSDP_START);
    assert_eq!(read(&mem, layout::RSDP_START.0, 8), b"RSD PTR ");
}

#[test]
fn mcfg_points_at_the_ecam_the_config_bus_decodes() {
    let (_, p) = two_gpus();
    let (mem, _) = acpi(p.mmio64);
    let mcfg = find_table(&mem, b"MCFG").unwrap();
    assert_eq!(u64_at(&mcfg, 44), layout::PCI_ECAM_START.0);
    assert_eq!((mcfg[54], mcfg[55]), (0, 255), "buses 0..=255");
    assert_eq!(
        devices::pci::config_access::ECAM_SIZE,
        256 * layout::PCI_ECAM_BUS_SIZE
    );
}

#[test]
fn dsdt_crs_describes_the_planned_64bit_window() {
    let (_, p) = one_big_gpu();
    let (mem, _) = acpi(p.mmio64);
    let dsdt = find_table(&mem, b"DSDT").unwrap();
    // QWord memory descriptor: minimum and maximum are adjacent (ACPI 6.5 6.4.3.5.1).
    let w = window_range(p.mmio64);
    let min_max = [w.start().to_le_bytes(), w.end().to_le_bytes()].concat();
    assert!(
        dsdt.windows(16).any(|x| x == min_max),
        "window {w:x?} not in _CRS"
    );
}

#[test]
fn plan_start_follows_arch_for_any_ram_size() {
    let ports = [gpu("gpu0", GIB)];
    for ram in [512 * MIB, 3 * GIB, 4 * GIB, 6 * GIB + 512 * MIB, 100 * GIB] {
        let p = plan(ram, &ports, 46, &IOVA_46).unwrap();
        assert_eq!(p.mmio64.0, layout::mmio64_start(ram).0, "RAM {ram:#x}");
    }
}

#[test]
fn set_without_64bit_bars_plans_an_empty_window_that_acpi_omits() {
    let nic = PortRequest {
        tag: "nic".into(),
        bars: vec![BarRequest {
            size: 128 << 10,
            class: BarKind::Mem32 {
                prefetchable: false,
            }
            .into(),
        }],
    };
    let floor = layout::pci_platform(GIB, 39, TESTBED_IOVA.to_vec()).mmio64;
    let (start, size) = plan_mmio64(floor, &[nic], 39, &TESTBED_IOVA).unwrap();
    assert_eq!((start, size), (4 * GIB, 0));
    assert!(acpi((start, size)).1.is_ok());
}
