//! Guest-level behaviour of [`VfioPciDevice`] over the fake backend.

use devices::pci::{BarKind, BarMove, PciDevice};

use super::fixture::*;
use super::*;
use crate::device::Span;
use crate::fake::{Call, CallLog};
use crate::irq::MsiKind;

#[test]
fn bar_sizes_come_from_vfio_regions() {
    let mut f = fixture();
    let bars: Vec<(u8, BarKind, u64)> = f
        .dev
        .bars()
        .iter()
        .map(|b| (b.index, b.kind, b.size))
        .collect();
    assert_eq!(
        bars,
        vec![
            (
                0,
                BarKind::Mem64 {
                    prefetchable: false
                },
                4 * PAGE
            ),
            (2, BarKind::Io, 0x20),
            (
                3,
                BarKind::Mem32 {
                    prefetchable: false
                },
                256
            ),
            (4, BarKind::Mem64 { prefetchable: true }, 0x10_0000),
            (
                6,
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1_0000
            ),
        ]
    );
    f.write(0x10, &u32::MAX.to_le_bytes());
    f.write(0x14, &u32::MAX.to_le_bytes());
    assert_eq!(f.read(0x10), 0xffff_c004);
    assert_eq!(f.read(0x14), u32::MAX);
    f.write(0x1c, &u32::MAX.to_le_bytes());
    assert_eq!(f.read(0x1c), 0xffff_ff00);
}

#[test]
fn bar_writes_never_reach_the_device() {
    let mut f = fixture();
    f.log.take();
    f.write(0x10, &0xc000_0000u32.to_le_bytes());
    f.write(0x30, &0xc010_0001u32.to_le_bytes());
    assert!(f.log.calls().is_empty());
}

#[test]
fn command_register_is_virtualised_and_forwarded() {
    let mut f = fixture();
    f.log.take();
    let r = f.write(0x04, &0x0006u16.to_le_bytes());
    assert_eq!(r.mem_decode, Some(true));
    assert_eq!(r.io_decode, None);
    assert_eq!(
        f.log.calls(),
        vec![Call::RegionWrite {
            index: CONFIG_REGION,
            offset: 4,
            data: vec![6, 0]
        }]
    );
    // Status comes from the device, command from the guest's view.
    assert_eq!(f.read(0x04), 0x0010_0006);
}

#[test]
fn decode_off_reaches_the_device_only_when_released() {
    let mut f = fixture();
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.log.take();
    // The guest turns memory decode off and keeps bus mastering: the device still
    // decodes until the VMM removed the BAR's slots.
    let r = f.write(0x04, &0x0004u16.to_le_bytes());
    assert_eq!(r.mem_decode, Some(false));
    let forwarded = |calls: Vec<Call>| -> Vec<Vec<u8>> {
        calls
            .into_iter()
            .filter_map(|c| match c {
                Call::RegionWrite {
                    index: CONFIG_REGION,
                    offset: 4,
                    data,
                } => Some(data),
                _ => None,
            })
            .collect()
    };
    assert_eq!(forwarded(f.log.take()), vec![vec![6, 0]]);
    assert_eq!(f.read(0x04) & 0xffff, 0x0004, "the guest sees decode off");
    f.dev.release_decode();
    let released = forwarded(f.log.take());
    assert_eq!(released.len(), 1);
    assert_eq!(released[0][0] & 0x2, 0, "memory decode off at the device");
    assert_eq!(released[0][0] & 0x4, 0x4, "bus mastering kept");
    // Nothing held: a second release writes nothing.
    f.dev.release_decode();
    assert!(forwarded(f.log.take()).is_empty());
}

#[test]
fn decode_switched_back_on_before_release_is_not_turned_off() {
    let mut f = fixture();
    f.write(0x04, &0x0002u16.to_le_bytes());
    f.write(0x04, &0x0000u16.to_le_bytes());
    f.write(0x04, &0x0002u16.to_le_bytes());
    f.log.take();
    f.dev.release_decode();
    assert!(f.log.calls().is_empty());
}

#[test]
fn moved_bar_is_reported_once_decode_is_on() {
    let mut f = fixture();
    f.dev.place_bar(0, 0xc000_0000).unwrap();
    assert!(f
        .write(0x10, &0xc001_0000u32.to_le_bytes())
        .bar_moves
        .is_empty());
    let r = f.write(0x04, &0x0002u16.to_le_bytes());
    assert_eq!(
        r.bar_moves,
        vec![BarMove {
            index: 0,
            kind: BarKind::Mem64 {
                prefetchable: false
            },
            size: 4 * PAGE,
            old: 0xc000_0000,
            new: 0xc001_0000
        }]
    );
}

#[test]
fn misplaced_bar_is_rejected() {
    let mut f = fixture();
    assert!(matches!(
        f.dev.place_bar(0, 0xc000_1000),
        Err(Error::PlaceBar { index: 0, .. })
    ));
}

#[test]
fn sr_iov_and_ari_are_hidden_from_the_extended_list() {
    let mut f = fixture();
    assert_eq!(f.read(0x100) >> 20, 0x1c0);
    assert_eq!(f.read(0x140), 0);
    assert_eq!(f.read(0x148), 0);
    assert_eq!(f.read(0x180), 0);
    assert_eq!(f.read(0x1c0) & 0xffff, 0x18);
    f.log.take();
    f.write(0x148, &[1, 2, 3, 4]);
    f.write(0x100, &[0xff; 4]);
    assert!(f.log.calls().is_empty());
}

#[test]
fn looping_capability_list_is_walked_once() {
    let log = CallLog::default();
    let mut cfg = config();
    cfg[0x51] = 0x50; // MSI points at itself; MSI-X is no longer reachable
    let f = build(fake(&log, &cfg), log, false);
    assert!(f.dev.msi.is_some());
    assert!(f.dev.msix.is_none());
}

#[test]
fn msix_table_and_pba_pages_trap_the_rest_maps() {
    let f = fixture();
    let plan = &f.dev.bar_plans()[0];
    assert_eq!(
        plan.mapped,
        vec![Span {
            offset: 0,
            size: 2 * PAGE
        }]
    );
    assert_eq!(
        plan.trapped,
        vec![Span {
            offset: 2 * PAGE,
            size: 2 * PAGE
        }]
    );
    let direct = f.dev.direct_mappings();
    let bar0: Vec<_> = direct
        .iter()
        .filter(|d| d.bar == 0)
        .map(|d| (d.offset, d.size))
        .collect();
    assert_eq!(bar0, vec![(0, 2 * PAGE)]);
}

#[test]
fn sparse_areas_and_sub_page_bars_are_planned() {
    let f = fixture();
    let direct: Vec<_> = f
        .dev
        .direct_mappings()
        .iter()
        .map(|d| (d.bar, d.offset, d.size))
        .collect();
    assert_eq!(direct, vec![(0, 0, 2 * PAGE), (4, 0, 0x8_0000)]);
    let plans = f.dev.bar_plans();
    assert!(plans[1].mapped.is_empty(), "I/O BAR traps");
    assert!(plans[2].mapped.is_empty(), "256-byte BAR traps");
}

#[test]
fn msix_table_is_emulated_not_forwarded() {
    let mut f = fixture();
    f.log.take();
    f.msix_entry(1, true);
    let mut d = [0u8; 4];
    f.dev.bar_read(0, 0x2018, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x41);
    f.dev.bar_read(0, 0x3000, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0, "PBA is emulated");
    assert!(f.log.calls().is_empty());
}

#[test]
fn trapped_bar_accesses_outside_the_table_reach_the_device() {
    let mut f = fixture();
    f.log.take();
    f.dev.bar_write(0, 0x2800, &[1, 2, 3, 4]);
    f.dev.bar_write(3, 0x10, &[5]);
    f.dev.bar_write(2, 0x4, &[6, 7]);
    assert_eq!(
        f.log.calls(),
        vec![
            Call::RegionWrite {
                index: 0,
                offset: 0x2800,
                data: vec![1, 2, 3, 4]
            },
            Call::RegionWrite {
                index: 3,
                offset: 0x10,
                data: vec![5]
            },
            Call::RegionWrite {
                index: 2,
                offset: 0x4,
                data: vec![6, 7]
            },
        ]
    );
}

#[test]
fn intx_is_wired_at_creation_and_pin_passes_through() {
    let mut f = fixture();
    let (t, r) = f.vmm.intx_fds.unwrap();
    assert_eq!(
        f.log.irq_calls(),
        vec![
            Call::IrqTrigger {
                index: IrqIndex::Intx,
                start: 0,
                fds: vec![t]
            },
            Call::IrqResample {
                index: IrqIndex::Intx,
                fd: r
            },
        ]
    );
    assert_eq!((f.read(0x3c) >> 8) & 0xff, 1);
}

#[test]
fn msix_enable_mask_and_disable_make_these_set_irqs_calls() {
    let mut f = fixture();
    f.log.take();
    // Linux: enable with the function masked, program, unmask the function.
    f.msix_control(0xc000);
    for v in 0..3 {
        f.msix_entry(v, false);
    }
    f.msix_control(0x8000);
    let fds = f.vmm.msix_fds.clone();
    assert_eq!(
        f.log.irq_calls(),
        vec![
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 0,
                fds: vec![-1; 4]
            },
            // Attached when the function mask clears: one call for the three.
            Call::IrqTrigger {
                index: IrqIndex::Msix,
                start: 0,
                fds: fds[..3].to_vec()
            },
        ]
    );
    f.log.take();
    f.routed();
    // Masking a vector moves its trigger to a hold eventfd; the route stays.
    f.dev.bar_write(0, 0x2000 + 16 + 12, &1u32.to_le_bytes());
    let calls = f.log.irq_calls();
    assert!(
        matches!(&calls[..], [Call::IrqTrigger { index: IrqIndex::Msix, start: 1, fds: held }]
            if held.len() == 1 && held[0] >= 0 && held[0] != fds[1]),
        "{calls:?}"
    );
    assert_eq!(f.routed(), vec![Routed::Update(MsiKind::Msix, 1, true)]);
    f.log.take();
    // Disabling: MSI-X off with count 0, then INTx back.
    f.msix_control(0);
    let (t, r) = f.vmm.intx_fds.unwrap();
    assert_eq!(
        f.log.irq_calls(),
        vec![
            Call::IrqDisable {
                index: IrqIndex::Msix
            },
            Call::IrqTrigger {
                index: IrqIndex::Intx,
                start: 0,
                fds: vec![t]
            },
            Call::IrqResample {
                index: IrqIndex::Intx,
                fd: r
            },
        ]
    );
}

#[test]
fn msix_capability_writes_stay_in_the_emulation() {
    let mut f = fixture();
    f.log.take();
    f.msix_control(0x8000);
    assert!(!f
        .log
        .calls()
        .iter()
        .any(|c| matches!(c, Call::RegionWrite { .. })));
    // The guest reads its own control bits, the device's table size and links.
    assert_eq!(f.read(0x70), 0x8003_8011);
    assert_eq!(f.read(0x74), 0x2000);
}

#[test]
fn msi_enable_attaches_the_enabled_vectors() {
    let mut f = fixture();
    f.log.take();
    f.write(0x54, &0xfee0_0000u32.to_le_bytes());
    f.write(0x5c, &0x0041u16.to_le_bytes());
    f.write(0x52, &0x0095u16.to_le_bytes()); // enable, 2 vectors (MME = 1)
    let fds = f.vmm.msi_fds.clone();
    assert_eq!(
        f.log.irq_calls(),
        vec![
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            Call::IrqTrigger {
                index: IrqIndex::Msi,
                start: 0,
                fds: fds[..2].to_vec()
            },
        ]
    );
    assert_eq!(f.read(0x50) & 0xffff_00ff, 0x0095_0005);
}

#[test]
fn option_rom_is_read_through_the_rom_region() {
    let mut f = fixture();
    let mut d = [0xffu8; 4];
    f.dev.bar_read(6, 0x10, &mut d);
    assert_eq!(d, [0, 0, 0, 0]);
    f.log.take();
    f.dev.bar_write(6, 0, &[1]);
    assert!(f.log.calls().is_empty());
}

#[test]
fn multifunction_bit_follows_the_guest_topology() {
    let mut f = fixture();
    assert_eq!(f.read(0x0c) & MULTIFUNCTION, 0);
    let log = CallLog::default();
    let mut g = build(fake(&log, &config()), log, true);
    assert_eq!(g.read(0x0c) & MULTIFUNCTION, MULTIFUNCTION);
}

#[test]
fn bad_config_accesses_are_dropped() {
    let mut f = fixture();
    f.log.take();
    f.dev.config_write(1, 3, &[1, 2]);
    f.dev.config_write(1, 0, &[1, 2, 3]);
    f.dev.config_write(2000, 0, &[1]);
    assert!(f.log.calls().is_empty());
    assert_eq!(f.dev.config_read(2000), u32::MAX);
}

#[test]
fn device_is_reset_when_taken() {
    let f = fixture();
    assert_eq!(
        f.log.calls().first(),
        Some(&Call::DmaMap {
            iova: 0,
            size: 0x10000
        })
    );
    assert!(f.log.calls().contains(&Call::Reset));
}

/// Interrupts off, bus mastering off, then the device fd closes (VFIO resets a
/// function with FLR as its last user closes it: no reset of Strait's before that),
/// and only then guest RAM's DMA mapping goes.
#[test]
fn teardown_order_irqs_bus_master_close_then_dma() {
    let mut f = fixture();
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.msix_control(0x8000);
    f.log.take();
    drop(f.dev);
    assert_eq!(
        f.log.calls(),
        vec![
            Call::IrqDisable {
                index: IrqIndex::Msix
            },
            Call::RegionWrite {
                index: CONFIG_REGION,
                offset: 4,
                data: vec![2, 0]
            },
            Call::DeviceClosed,
            Call::DmaUnmap {
                iova: 0,
                size: 0x10000
            },
            Call::ContainerClosed,
        ]
    );
}

/// The VMM quiets every function before releasing any: the release itself then only
/// closes, and a late guest access after it reaches nothing.
#[test]
fn release_after_quiesce_only_closes_and_later_accesses_reach_nothing() {
    let mut f = fixture();
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.msix_control(0x8000);
    f.log.take();
    f.dev.quiesce_for_release();
    let quiet = f.log.take();
    assert!(quiet.contains(&Call::IrqDisable {
        index: IrqIndex::Msix
    }));
    f.dev.release();
    assert_eq!(f.log.take(), vec![Call::DeviceClosed]);
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.dev.release();
    f.dev.quiesce_for_release();
    assert_eq!(f.log.take(), vec![]);
}

#[test]
fn device_without_reset_is_not_reset_on_teardown() {
    let log = CallLog::default();
    let f = build(fake(&log, &config()).without_reset(), log.clone(), false);
    drop(f.dev);
    assert!(!log.calls().contains(&Call::Reset));
    assert!(log.calls().contains(&Call::IrqDisable {
        index: IrqIndex::Intx
    }));
}

fn hot_reset_targets() -> Vec<crate::hot_reset::HotResetTarget> {
    ["0000:01:00.0", "0000:01:00.1"]
        .iter()
        .map(|a| crate::hot_reset::HotResetTarget {
            addr: a.parse().unwrap(),
            group: 7,
        })
        .collect()
}

/// A function without a reset of its own whose hot reset reaches group 7; this
/// process holds `held`.
fn bus_reset_only(log: &CallLog, held: Vec<u32>) -> crate::fake::FakeDevice {
    fake(log, &config())
        .without_reset()
        .with_hot_reset(hot_reset_targets(), held)
}

#[test]
fn a_function_without_reset_gets_a_hot_reset_when_every_group_is_held() {
    let log = CallLog::default();
    let mut f = build(bus_reset_only(&log, vec![7]), log.clone(), false);
    let hot = Call::HotReset { groups: vec![7] };
    assert!(log.calls().contains(&hot), "taken with a hot reset");
    log.take();
    f.dev.reset().unwrap();
    assert!(
        log.calls().contains(&hot),
        "reset in place with a hot reset"
    );
    assert!(!log.calls().contains(&Call::Reset));
    log.take();
    drop(f.dev);
    assert!(log.calls().contains(&hot), "released with a hot reset");
}

#[test]
fn a_hot_reset_reaching_a_group_not_held_is_not_done() {
    let log = CallLog::default();
    let mut f = build(bus_reset_only(&log, vec![3]), log.clone(), false);
    f.dev.reset().unwrap();
    let hot = |c: &Call| matches!(c, Call::HotReset { .. } | Call::Reset);
    assert!(!log.calls().iter().any(hot));
}

#[test]
fn a_function_with_its_own_reset_never_gets_a_hot_reset() {
    let log = CallLog::default();
    let dev = fake(&log, &config()).with_hot_reset(hot_reset_targets(), vec![7]);
    let mut f = build(dev, log.clone(), false);
    f.dev.reset().unwrap();
    assert!(log.calls().contains(&Call::Reset));
    assert!(!log
        .calls()
        .iter()
        .any(|c| matches!(c, Call::HotReset { .. })));
}

#[test]
fn a_card_stuck_after_a_hot_reset_fails_that_reset() {
    let log = CallLog::default();
    let dev = bus_reset_only(&log, vec![7]);
    let stuck = dev.stuck_after_reset();
    let mut f = build(dev, log, false);
    stuck.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(f.dev.reset(), Err(Error::DeviceStuck { .. })));
}

#[test]
fn reset_brings_the_guest_view_back_to_power_on() {
    let mut f = fixture();
    f.dev.place_bar(0, 0xc000_0000).unwrap();
    f.write(0x10, &0xc004_0000u32.to_le_bytes());
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.msix_control(0x8000);
    f.msix_entry(0, false);
    f.log.take();
    f.dev.reset().unwrap();
    let calls = f.log.calls();
    assert!(calls.contains(&Call::Reset));
    assert!(calls.contains(&Call::IrqDisable {
        index: IrqIndex::Msix
    }));
    assert_eq!(f.read(0x04) & 0xffff, 0, "command back to 0");
    assert_eq!(f.read(0x10) & !0xf, 0xc000_0000, "BAR 0 back where placed");
    assert_eq!(
        f.read(0x70) >> 16 & 0xc000,
        0,
        "MSI-X and function mask off"
    );
    let (t, _) = f.vmm.intx_fds.unwrap();
    assert!(f.log.irq_calls().contains(&Call::IrqTrigger {
        index: IrqIndex::Intx,
        start: 0,
        fds: vec![t]
    }));
}

#[test]
fn reset_masks_every_msix_vector() {
    let mut f = fixture();
    f.msix_control(0x8000);
    f.msix_entry(1, false);
    f.dev.reset().unwrap();
    let mut ctrl = [0u8; 4];
    f.dev.bar_read(0, 0x2000 + 16 + 12, &mut ctrl);
    assert_eq!(u32::from_le_bytes(ctrl) & 1, 1);
    let mut addr = [0u8; 4];
    f.dev.bar_read(0, 0x2000 + 16, &mut addr);
    assert_eq!(addr, [0; 4]);
}

#[test]
fn a_card_stuck_after_reset_is_refused_at_take() {
    let log = CallLog::default();
    let dev = fake(&log, &config());
    dev.stuck_after_reset()
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mapper = Arc::new(crate::fake::FakeDmaMapper::new(log.clone(), Vec::new()));
    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[]).unwrap_or_default();
    let dma = GuestDma::map(mapper, &mem).unwrap();
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: None,
    };
    let r = VfioPciDevice::new(Box::new(dev), dma, &mut Vmm::default(), params);
    assert!(matches!(r, Err(Error::DeviceStuck { source: None, .. })));
}

#[test]
fn a_card_stuck_after_a_later_reset_fails_that_reset() {
    let log = CallLog::default();
    let dev = fake(&log, &config());
    let stuck = dev.stuck_after_reset();
    let mut f = build(dev, log, false);
    stuck.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = f.dev.reset().unwrap_err();
    assert!(matches!(e, Error::DeviceStuck { .. }));
    let line = e.to_string();
    assert!(
        line.contains("0000:01:00.0") && line.contains("reset_method"),
        "{line}"
    );
}

/// The fixture's device as an NVIDIA GPU (display class), taken with `clique`.
fn nvidia_with_clique(clique: u8) -> Result<VfioPciDevice> {
    let log = CallLog::default();
    let mut cfg = config();
    cfg[0..2].copy_from_slice(&NVIDIA_VENDOR_ID.to_le_bytes());
    cfg[0x09..0x0c].copy_from_slice(&[0x00, 0x00, 0x03]);
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: Some(clique),
    };
    build_with(fake(&log, &cfg), log, params)
}

#[test]
fn clique_capability_is_appended_to_the_device_list() {
    let mut dev = nvidia_with_clique(3).unwrap();
    // PCIe at 0x80 was last: its next pointer now leads to 0xc8.
    assert_eq!(dev.config_read(0x80 / 4) & 0xff00, 0xc800);
    assert_eq!(
        dev.config_read(0xc8 / 4),
        u32::from_le_bytes([0x09, 0, 8, b'P'])
    );
    assert_eq!(
        dev.config_read(0xcc / 4),
        u32::from_le_bytes([b'2', b'P', 3 << 3, 0])
    );
}

#[test]
fn failing_set_irqs_in_a_guest_loop_leaves_the_log_small() {
    let log = CallLog::default();
    let mut cfg = config();
    // No INTx: taking the device would set its IRQs, which fail here.
    cfg[0x3d] = 0;
    let mut dev = fake(&log, &cfg);
    dev.fail_set_irqs = Some(libc::EINVAL);
    let mut f = build(dev, log, false);
    let lines = resources::testing::lines_logged_by(|| {
        for _ in 0..5_000 {
            f.msix_control(0x8000);
            f.msix_control(0);
        }
    });
    assert!(lines <= 40, "{lines} lines for 10,000 failing SET_IRQS");
}

fn command_write(data: [u8; 2]) -> Call {
    Call::RegionWrite {
        index: CONFIG_REGION,
        offset: 4,
        data: data.to_vec(),
    }
}

#[test]
fn bus_master_is_held_from_the_device_until_guest_ram_is_mapped() {
    let (mut f, dma) = pending();
    f.log.take();
    f.write(0x04, &0x0006u16.to_le_bytes());
    // The device decodes memory but may not master the bus; the guest reads back its write.
    assert_eq!(f.log.take(), vec![command_write([2, 0])]);
    assert_eq!(f.read(0x04) & 0xffff, 0x0006);
    assert!(dma.bus_master_held());
    for r in dma.regions().to_vec() {
        dma.map_chunk(&r).unwrap();
    }
    dma.set_complete();
    f.dev.release_bus_master();
    dma.finish(true);
    let calls = f.log.take();
    assert!(
        matches!(calls.first(), Some(Call::DmaMap { .. })),
        "{calls:?}"
    );
    assert_eq!(calls.last(), Some(&command_write([6, 0])));
    assert!(!dma.bus_master_held());
    // Released once: a second release writes nothing.
    f.dev.release_bus_master();
    assert!(f.log.take().is_empty());
}

#[test]
fn bus_master_cleared_by_the_guest_meanwhile_is_not_released() {
    let (mut f, dma) = pending();
    f.write(0x04, &0x0006u16.to_le_bytes());
    f.write(0x04, &0x0002u16.to_le_bytes());
    f.log.take();
    dma.set_complete();
    f.dev.release_bus_master();
    assert!(f.log.take().is_empty());
}

#[test]
fn bus_master_goes_straight_to_the_device_once_mapped() {
    let (mut f, dma) = pending();
    dma.set_complete();
    dma.finish(true);
    f.log.take();
    f.write(0x04, &0x0004u16.to_le_bytes());
    assert_eq!(f.log.take(), vec![command_write([4, 0])]);
    assert!(!dma.bus_master_held());
}

#[test]
fn a_write_to_the_status_half_never_holds_bus_master() {
    let (mut f, dma) = pending();
    f.log.take();
    // Byte 2 of the dword is the status register's low byte, not the command's.
    f.write(0x06, &[0x04]);
    assert!(!dma.bus_master_held());
}

#[test]
fn clique_capability_is_read_only_and_never_reaches_the_device() {
    let log = CallLog::default();
    let mut cfg = config();
    cfg[0..2].copy_from_slice(&NVIDIA_VENDOR_ID.to_le_bytes());
    cfg[0x09..0x0c].copy_from_slice(&[0x00, 0x00, 0x03]);
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: Some(1),
    };
    let mut dev = build_with(fake(&log, &cfg), log.clone(), params).unwrap();
    log.take();
    dev.config_write(0xcc / 4, 2, &[0xff]);
    assert!(log.calls().is_empty());
    assert_eq!(dev.config_read(0xcc / 4) >> 16 & 0xff, 1 << 3);
}

#[test]
fn clique_on_a_device_that_is_not_nvidia_is_refused() {
    let log = CallLog::default();
    let params = VfioPciParams {
        addr: "0000:01:00.0".parse().unwrap(),
        multifunction: false,
        clique: Some(1),
    };
    let Err(err) = build_with(fake(&log, &config()), log, params) else {
        panic!("a clique on a non-NVIDIA device was accepted");
    };
    assert!(
        matches!(
            err,
            Error::Clique {
                source: CliqueError::NotNvidia(0x1b36),
                ..
            }
        ),
        "{err:?}"
    );
}
