//! MSI-X (and MSI) of a passed-through GPU driven the way a Linux guest drives them
//! (PCI Local Bus 3.0 6.8.2; Linux `msix_capability_init` and `__pci_write_msi_msg`):
//! the capability through ECAM, the vector table through its trapped page on the guest's
//! MMIO bus. Checked on both sides of vfio-glue: the VFIO_DEVICE_SET_IRQS calls the fake
//! backend records, and the routes the VMM is asked to program (guest address/data,
//! masked or not), which is what KVM GSI routing needs.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use devices::interrupt::MsiMessage;
use devices::pci::regs::COMMAND;
use devices::pci::Bdf;
use strait_tests::function::GPU_MSIX;
use strait_tests::guest::{bar_address, mmio_read, mmio_write, ConfigIo, Ecam};
use strait_tests::irqs::{IrqRecorder, Routed};
use vfio_glue::device::IrqIndex;
use vfio_glue::fake::{Call, CallLog};
use vfio_glue::MsiKind;

/// The GPU's MSI-X capability (after PM, MSI and PCI Express).
const MSIX_CAP: usize = 0xb4;
/// The audio function's MSI capability.
const MSI_CAP: usize = 0x68;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_MASKALL: u16 = 1 << 14;
const ENTRY_MASKED: u64 = 1;

fn gpu_bdf() -> Bdf {
    "02:00.0".parse().unwrap()
}

fn audio_bdf() -> Bdf {
    "02:00.1".parse().unwrap()
}

/// The message the guest programs into GPU vector `v`: fixed delivery to APIC `v % 2`,
/// IDT vector 0x20 + v.
fn msg(v: u16) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000 | u64::from(v % 2) << 12,
        data: 0x20 + u32::from(v),
    }
}

impl Vm {
    fn ecam(&self) -> Ecam<'_> {
        Ecam(&self.machine.mmio)
    }

    fn gpu_log(&self) -> &CallLog {
        &self.logs[&gpu_bdf()]
    }

    fn gpu_irqs(&self) -> &IrqRecorder {
        &self.irqs[&gpu_bdf()]
    }

    /// SET_IRQS calls the GPU's backend received since the last call.
    fn gpu_set_irqs(&self) -> Vec<Call> {
        let calls = self.gpu_log().irq_calls();
        self.gpu_log().take();
        calls
    }

    /// Guest address of GPU vector `v`'s table entry.
    fn entry(&self, v: u16) -> u64 {
        let bar0 = bar_address(&self.ecam(), gpu_bdf(), GPU_MSIX.bir);
        bar0 + u64::from(GPU_MSIX.table_offset) + 16 * u64::from(v)
    }

    fn msix_control(&self, control: u16) {
        self.ecam().write16(gpu_bdf(), MSIX_CAP + 2, control);
    }

    /// Program vector `v`'s address and data with `m` (dword writes, as Linux does).
    fn program(&self, v: u16, m: MsiMessage) {
        let bus = &self.machine.mmio;
        let e = self.entry(v);
        mmio_write(bus, e, 4, m.address & 0xffff_ffff);
        mmio_write(bus, e + 4, 4, m.address >> 32);
        mmio_write(bus, e + 8, 4, m.data.into());
    }

    fn set_masked(&self, v: u16, masked: bool) {
        let ctrl = if masked { ENTRY_MASKED } else { 0 };
        mmio_write(&self.machine.mmio, self.entry(v) + 12, 4, ctrl);
    }

    /// Linux's `msix_capability_init`: enable under the function mask, mask every entry,
    /// program the vectors, drop the function mask. Vectors stay masked until requested.
    fn linux_enable(&self) {
        self.msix_control(MSIX_ENABLE | MSIX_MASKALL);
        for v in 0..GPU_MSIX.vectors {
            self.set_masked(v, true);
            self.program(v, msg(v));
        }
        self.msix_control(MSIX_ENABLE);
    }

    /// Forget what happened so far, on both sides.
    fn settle(&self) {
        self.gpu_log().take();
        self.gpu_irqs().take_routed();
    }
}

fn msix_trigger(start: u32, fds: Vec<i32>) -> Call {
    Call::IrqTrigger {
        index: IrqIndex::Msix,
        start,
        fds,
    }
}

#[test]
fn vmm_wires_every_interrupt_kind_the_gpu_offers() {
    let vm = vm();
    assert_eq!(
        vm.gpu_irqs().wired(),
        [(MsiKind::Msix, GPU_MSIX.vectors), (MsiKind::Msi, 1)]
    );
    assert_eq!(vm.gpu_irqs().intx().map(|i| i.0), Some(1), "INTA");
}

#[test]
fn intx_is_live_before_the_guest_enables_msix() {
    let vm = vm();
    let (_, trigger, resample) = vm.gpu_irqs().intx().unwrap();
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            Call::IrqTrigger {
                index: IrqIndex::Intx,
                start: 0,
                fds: vec![trigger]
            },
            Call::IrqResample {
                index: IrqIndex::Intx,
                fd: resample
            }
        ]
    );
}

#[test]
fn enabling_msix_under_function_mask_switches_vfio_from_intx() {
    let vm = vm();
    vm.settle();
    vm.msix_control(MSIX_ENABLE | MSIX_MASKALL);
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            msix_trigger(0, vec![-1; 8]),
        ]
    );
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [
            Routed::FunctionMask(MsiKind::Msix, true),
            Routed::Enable(MsiKind::Msix, Some(8))
        ]
    );
}

#[test]
fn msix_control_reads_back_enable_mask_and_table_size() {
    let vm = vm();
    vm.msix_control(MSIX_ENABLE | MSIX_MASKALL);
    assert_eq!(vm.ecam().read16(gpu_bdf(), MSIX_CAP + 2), 0xc007);
}

#[test]
fn vectors_programmed_while_masked_are_not_routed() {
    let vm = vm();
    vm.msix_control(MSIX_ENABLE | MSIX_MASKALL);
    vm.settle();
    for v in 0..GPU_MSIX.vectors {
        vm.set_masked(v, true);
        vm.program(v, msg(v));
    }
    vm.msix_control(MSIX_ENABLE);
    assert_eq!(vm.gpu_set_irqs(), []);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::FunctionMask(MsiKind::Msix, false)]
    );
}

#[test]
fn programmed_table_reads_back_through_the_trapped_page() {
    let vm = vm();
    vm.linux_enable();
    let bus = &vm.machine.mmio;
    let e = vm.entry(5);
    assert_eq!(
        mmio_read(bus, e, 8),
        msg(5).address,
        "8-byte read of the address"
    );
    assert_eq!(mmio_read(bus, e + 8, 4), u64::from(msg(5).data));
    assert_eq!(mmio_read(bus, e + 12, 4), ENTRY_MASKED);
}

#[test]
fn table_accesses_never_reach_the_device() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(0, false);
    let bar0_writes: Vec<Call> = vm
        .gpu_log()
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::RegionWrite { index: 0, .. }))
        .collect();
    assert_eq!(bar0_writes, []);
}

#[test]
fn unmasked_vectors_are_routed_with_the_guests_message() {
    let vm = vm();
    vm.linux_enable();
    vm.settle();
    for v in [0, 1, 2] {
        vm.set_masked(v, false);
    }
    let route = |v| Routed::Update(MsiKind::Msix, v, msg(v), false);
    assert_eq!(vm.gpu_irqs().take_routed(), [route(0), route(1), route(2)]);
}

#[test]
fn unmasked_vectors_get_their_eventfd_attached_one_by_one() {
    let vm = vm();
    vm.linux_enable();
    vm.settle();
    for v in [0, 1, 2] {
        vm.set_masked(v, false);
    }
    let fds = vm.gpu_irqs().msix_fds();
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            msix_trigger(0, vec![fds[0]]),
            msix_trigger(1, vec![fds[1]]),
            msix_trigger(2, vec![fds[2]]),
        ]
    );
}

/// The eventfd of the one MSI-X trigger in `calls`, which must not be `irqfd`: the
/// vector's hold eventfd.
fn hold_fd(calls: &[Call], vector: u32, irqfd: i32) -> i32 {
    match calls {
        [Call::IrqTrigger {
            index: IrqIndex::Msix,
            start,
            fds,
        }] if *start == vector && fds.len() == 1 && fds[0] >= 0 && fds[0] != irqfd => fds[0],
        _ => panic!("expected vector {vector} on a hold eventfd: {calls:?}"),
    }
}

#[test]
fn masked_vector_is_reported_masked_and_its_trigger_moves_to_a_hold_eventfd() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(1, false);
    vm.settle();
    vm.set_masked(1, true);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::Update(MsiKind::Msix, 1, msg(1), true)]
    );
    let fds = vm.gpu_irqs().msix_fds();
    hold_fd(&vm.gpu_set_irqs(), 1, fds[1]);
}

#[test]
fn unmasking_again_points_the_trigger_back_at_the_irqfd() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(1, false);
    vm.set_masked(1, true);
    vm.settle();
    vm.set_masked(1, false);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::Update(MsiKind::Msix, 1, msg(1), false)]
    );
    let fds = vm.gpu_irqs().msix_fds();
    assert_eq!(vm.gpu_set_irqs(), [msix_trigger(1, vec![fds[1]])]);
}

#[test]
fn reprogramming_a_live_vector_routes_the_new_message() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(0, false);
    vm.settle();
    // __pci_write_msi_msg: mask, write the message, unmask (PCI 3.0 6.8.2.9).
    let moved = MsiMessage {
        address: 0xfee0_3000,
        data: 0x41,
    };
    vm.set_masked(0, true);
    vm.program(0, moved);
    vm.set_masked(0, false);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [
            Routed::Update(MsiKind::Msix, 0, msg(0), true),
            Routed::Update(MsiKind::Msix, 0, moved, false),
        ]
    );
}

#[test]
fn vectors_unmasked_under_the_function_mask_are_routed_and_attached_when_it_clears() {
    let vm = vm();
    vm.msix_control(MSIX_ENABLE | MSIX_MASKALL);
    vm.program(3, msg(3));
    vm.settle();
    vm.set_masked(3, false);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::Update(MsiKind::Msix, 3, msg(3), false)]
    );
    // Not attached yet: the host vector stays masked and the device holds it.
    assert_eq!(vm.gpu_set_irqs(), []);
    vm.msix_control(MSIX_ENABLE);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::FunctionMask(MsiKind::Msix, false)]
    );
    let fds = vm.gpu_irqs().msix_fds();
    assert_eq!(vm.gpu_set_irqs(), [msix_trigger(3, vec![fds[3]])]);
}

#[test]
fn function_mask_toggles_cost_one_set_irqs_each_and_move_no_route() {
    let vm = vm();
    vm.linux_enable();
    for v in 0..8 {
        vm.set_masked(v, false);
    }
    vm.settle();
    for _ in 0..100 {
        vm.msix_control(MSIX_ENABLE | MSIX_MASKALL);
        vm.msix_control(MSIX_ENABLE);
    }
    assert_eq!(vm.gpu_set_irqs().len(), 200);
    let routed = vm.gpu_irqs().take_routed();
    assert_eq!(routed.len(), 200);
    assert!(routed
        .iter()
        .all(|r| matches!(r, Routed::FunctionMask(MsiKind::Msix, _))));
}

#[test]
fn vectors_unmasked_before_enable_are_attached_in_one_call() {
    let vm = vm();
    for v in [0, 2] {
        vm.program(v, msg(v));
        vm.set_masked(v, false);
    }
    vm.settle();
    vm.msix_control(MSIX_ENABLE);
    let fds = vm.gpu_irqs().msix_fds();
    let mut expected = vec![-1; 8];
    expected[0] = fds[0];
    expected[2] = fds[2];
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            msix_trigger(0, expected),
        ]
    );
}

#[test]
fn disabling_msix_turns_it_off_and_restores_intx() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(0, false);
    vm.settle();
    vm.msix_control(0);
    let (_, trigger, resample) = vm.gpu_irqs().intx().unwrap();
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            Call::IrqDisable {
                index: IrqIndex::Msix
            },
            Call::IrqTrigger {
                index: IrqIndex::Intx,
                start: 0,
                fds: vec![trigger]
            },
            Call::IrqResample {
                index: IrqIndex::Intx,
                fd: resample
            },
        ]
    );
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::Enable(MsiKind::Msix, None)]
    );
}

#[test]
fn pba_reads_zero_and_drops_writes() {
    let vm = vm();
    vm.linux_enable();
    let bar0 = bar_address(&vm.ecam(), gpu_bdf(), 0);
    let pba = bar0 + u64::from(GPU_MSIX.pba_offset);
    mmio_write(&vm.machine.mmio, pba, 8, u64::MAX);
    assert_eq!(mmio_read(&vm.machine.mmio, pba, 8), 0);
}

#[test]
fn msi_enable_on_the_audio_function_routes_its_vector_instead_of_intx() {
    let vm = vm();
    let (cfg, audio) = (vm.ecam(), audio_bdf());
    let log = &vm.logs[&audio];
    let rec = &vm.irqs[&audio];
    log.take();
    // 64-bit MSI: address low/high, data, then the enable bit (PCI 3.0 6.8.1).
    cfg.write32(audio, MSI_CAP + 4, 0xfee0_1000);
    cfg.write32(audio, MSI_CAP + 8, 0);
    cfg.write16(audio, MSI_CAP + 12, 0x0031);
    cfg.write16(audio, MSI_CAP + 2, 0x0081);
    let fds = rec.msi_fds();
    assert_eq!(
        log.irq_calls(),
        [
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            Call::IrqTrigger {
                index: IrqIndex::Msi,
                start: 0,
                fds: vec![fds[0]]
            },
        ]
    );
    let m = MsiMessage {
        address: 0xfee0_1000,
        data: 0x31,
    };
    assert_eq!(
        rec.take_routed(),
        [
            Routed::Enable(MsiKind::Msi, Some(1)),
            Routed::Update(MsiKind::Msi, 0, m, false)
        ]
    );
}

#[test]
fn msix_works_with_memory_decode_on_as_drivers_leave_it() {
    let vm = vm();
    let cmd = vm.ecam().read16(gpu_bdf(), COMMAND);
    vm.ecam().write16(gpu_bdf(), COMMAND, cmd | 0x6);
    vm.linux_enable();
    vm.settle();
    vm.set_masked(7, false);
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [Routed::Update(MsiKind::Msix, 7, msg(7), false)]
    );
}

#[test]
fn only_the_table_and_pba_pages_of_bar0_trap() {
    let vm = vm();
    let bar0 = bar_address(&vm.ecam(), gpu_bdf(), 0);
    let bus = &vm.machine.mmio;
    let table = bar0 + u64::from(GPU_MSIX.table_offset);
    let pba = bar0 + u64::from(GPU_MSIX.pba_offset);
    for (addr, traps) in [
        (bar0, false),
        (table - 4, false),
        (table, true),
        (table + 0xffc, true),
        (table + 0x1000, false),
        (pba, true),
        (pba + 0x1000, false),
    ] {
        let mut d = [0u8; 4];
        assert_eq!(bus.read(addr, &mut d), traps, "{addr:#x}");
    }
}

#[test]
fn reenabling_msix_under_the_function_mask_attaches_nothing_yet() {
    let vm = vm();
    vm.linux_enable();
    vm.set_masked(0, false);
    vm.msix_control(0);
    vm.settle();
    vm.linux_enable();
    // Vector 0 was left unmasked by the first driver, but the function mask holds it
    // and the driver masks it before clearing that: it is not attached.
    assert_eq!(
        vm.gpu_set_irqs(),
        [
            Call::IrqDisable {
                index: IrqIndex::Intx
            },
            msix_trigger(0, vec![-1; 8]),
        ]
    );
    // Routed at enable, held by the function mask until the driver masks it itself.
    assert_eq!(
        vm.gpu_irqs().take_routed(),
        [
            Routed::FunctionMask(MsiKind::Msix, true),
            Routed::Enable(MsiKind::Msix, Some(8)),
            Routed::Update(MsiKind::Msix, 0, msg(0), false),
            Routed::Update(MsiKind::Msix, 0, msg(0), true),
            Routed::FunctionMask(MsiKind::Msix, false),
        ]
    );
}

#[test]
fn msi_disable_on_the_audio_function_restores_intx() {
    let vm = vm();
    let (cfg, audio) = (vm.ecam(), audio_bdf());
    cfg.write32(audio, MSI_CAP + 4, 0xfee0_1000);
    cfg.write16(audio, MSI_CAP + 2, 0x0081);
    let log = &vm.logs[&audio];
    log.take();
    vm.irqs[&audio].take_routed();
    cfg.write16(audio, MSI_CAP + 2, 0x0080);
    let (pin, trigger, resample) = vm.irqs[&audio].intx().unwrap();
    assert_eq!(pin, 2, "INTB");
    assert_eq!(
        log.irq_calls(),
        [
            Call::IrqDisable {
                index: IrqIndex::Msi
            },
            Call::IrqTrigger {
                index: IrqIndex::Intx,
                start: 0,
                fds: vec![trigger]
            },
            Call::IrqResample {
                index: IrqIndex::Intx,
                fd: resample
            },
        ]
    );
    assert_eq!(
        vm.irqs[&audio].take_routed(),
        [Routed::Enable(MsiKind::Msi, None)]
    );
}
