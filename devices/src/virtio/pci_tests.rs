//! Tests of the virtio-pci transport: capabilities, feature negotiation, queue setup,
//! activation, reset, notify fallback.

use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::testutil::RecordingRouter;
use crate::pci::walk_capabilities;
use crate::virtio::testutil::{TestQueue, AVAIL, DESC, USED};
use crate::virtio::{ActivateError, VirtioDevice};

#[derive(Default)]
struct Fake {
    activations: Vec<(u64, usize, bool)>,
    resets: usize,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        2
    }
    fn pci_class(&self) -> u32 {
        0x01_8000
    }
    fn features(&self) -> u64 {
        1 << 9
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![16]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let irq = a.interrupts.queues[0].is_some();
        self.activations.push((a.features, a.queues.len(), irq));
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn process_queue(&mut self, _index: usize) {}
}

const VERSION_1: u64 = 1 << 32;

fn transport() -> (VirtioPciTransport, Arc<Mutex<Fake>>, TestQueue) {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let q = TestQueue::new(16);
    let fds = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let t = VirtioPciTransport::new(TransportParams {
        label: "test".into(),
        device: fake.clone(),
        mem: q.mem.clone(),
        msix: Box::new(RecordingRouter::default()),
        vector_fds: fds,
    })
    .unwrap();
    (t, fake, q)
}

fn w32(t: &mut VirtioPciTransport, off: u64, v: u32) {
    t.bar_write(BAR_INDEX, off, &v.to_le_bytes());
}
fn w16(t: &mut VirtioPciTransport, off: u64, v: u16) {
    t.bar_write(BAR_INDEX, off, &v.to_le_bytes());
}
fn r32(t: &mut VirtioPciTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.bar_read(BAR_INDEX, off, &mut b);
    u32::from_le_bytes(b)
}
fn status(t: &mut VirtioPciTransport) -> u8 {
    let mut b = [0u8; 1];
    t.bar_read(BAR_INDEX, common::DEVICE_STATUS, &mut b);
    b[0]
}
fn set_status(t: &mut VirtioPciTransport, s: u32) {
    t.bar_write(BAR_INDEX, common::DEVICE_STATUS, &[s as u8]);
}

fn negotiate(t: &mut VirtioPciTransport, features: u64) -> u8 {
    set_status(t, VIRTIO_CONFIG_S_DRIVER);
    w32(t, common::DRIVER_FEATURE_SELECT, 0);
    w32(t, common::DRIVER_FEATURE, features as u32);
    w32(t, common::DRIVER_FEATURE_SELECT, 1);
    w32(t, common::DRIVER_FEATURE, (features >> 32) as u32);
    set_status(t, VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
    status(t)
}

fn setup_queue(t: &mut VirtioPciTransport, desc: u64) {
    w16(t, common::QUEUE_SELECT, 0);
    w16(t, common::QUEUE_MSIX_VECTOR, 1);
    w32(t, common::QUEUE_DESC_LO, desc as u32);
    w32(t, common::QUEUE_DESC_HI, (desc >> 32) as u32);
    w32(t, common::QUEUE_AVAIL_LO, AVAIL as u32);
    w32(t, common::QUEUE_USED_LO, USED as u32);
    w16(t, common::QUEUE_ENABLE, 1);
}

#[test]
fn config_space_is_a_modern_virtio_function_with_its_capabilities() {
    let (mut t, _, _) = transport();
    assert_eq!(t.config_read(0), 0x1042_1af4);
    assert_eq!(t.config_read(2) & 0xff, 1, "revision 1: modern only");
    let cfg: Vec<u8> = (0..64)
        .flat_map(|r| t.config_read(r).to_le_bytes())
        .collect();
    let caps = walk_capabilities(&cfg);
    let vendor: Vec<u8> = caps
        .iter()
        .filter(|(id, _)| *id == CAP_ID_VENDOR)
        .map(|(_, off)| cfg[off + 3])
        .collect();
    assert_eq!(vendor, [CAP_COMMON, CAP_ISR, CAP_DEVICE, CAP_NOTIFY]);
    assert!(caps.iter().any(|(id, _)| *id == 0x11), "MSI-X");
    assert_eq!(t.bars()[0].size, BAR_SIZE);
}

#[test]
fn device_features_read_in_two_halves_with_version_1() {
    let (mut t, _, _) = transport();
    w32(&mut t, common::DEVICE_FEATURE_SELECT, 0);
    assert_eq!(r32(&mut t, common::DEVICE_FEATURE), 1 << 9);
    w32(&mut t, common::DEVICE_FEATURE_SELECT, 1);
    assert_eq!(r32(&mut t, common::DEVICE_FEATURE), 1);
    w32(&mut t, common::DEVICE_FEATURE_SELECT, 7);
    assert_eq!(r32(&mut t, common::DEVICE_FEATURE), 0);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    for (features, accepted) in [
        (VERSION_1 | 1 << 9, true),
        (1 << 9, false),
        (VERSION_1 | 1 << 3, false),
    ] {
        let (mut t, _, _) = transport();
        let ok = negotiate(&mut t, features) & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0;
        assert_eq!(ok, accepted, "{features:#x}");
    }
}

#[test]
fn driver_ok_activates_the_device_with_the_queue_and_its_vector() {
    let (mut t, fake, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, DESC);
    set_status(
        &mut t,
        VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_eq!(lock(&fake).activations, [(VERSION_1, 1, true)]);
    assert_eq!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
}

#[test]
fn a_queue_outside_guest_ram_fails_activation_with_needs_reset() {
    let (mut t, fake, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0x7_0000_0000);
    set_status(
        &mut t,
        VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(lock(&fake).activations.is_empty());
    assert_ne!(status(&mut t) & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
}

#[test]
fn a_vector_beyond_the_table_reads_back_as_no_vector() {
    let (mut t, _, _) = transport();
    w16(&mut t, common::CONFIG_MSIX_VECTOR, 9);
    let mut b = [0u8; 2];
    t.bar_read(BAR_INDEX, common::CONFIG_MSIX_VECTOR, &mut b);
    assert_eq!(u16::from_le_bytes(b), VIRTIO_MSI_NO_VECTOR);
}

#[test]
fn status_0_resets_device_and_transport() {
    let (mut t, fake, _) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, DESC);
    set_status(&mut t, 0);
    assert_eq!(lock(&fake).resets, 1);
    assert_eq!(status(&mut t), 0);
    w16(&mut t, common::QUEUE_SELECT, 0);
    assert_eq!(r32(&mut t, common::QUEUE_DESC_LO), 0);
    let mut en = [0u8; 2];
    t.bar_read(BAR_INDEX, common::QUEUE_ENABLE, &mut en);
    assert_eq!(en, [0, 0]);
}

#[test]
fn an_absent_queue_reads_size_0_and_ignores_writes() {
    let (mut t, _, _) = transport();
    w16(&mut t, common::QUEUE_SELECT, 5);
    let mut b = [0u8; 2];
    t.bar_read(BAR_INDEX, common::QUEUE_SIZE, &mut b);
    assert_eq!(b, [0, 0]);
    w16(&mut t, common::QUEUE_ENABLE, 1);
    w32(&mut t, common::QUEUE_DESC_LO, 0x1000);
}

#[test]
fn a_trapped_notify_signals_the_queue_eventfd() {
    let (mut t, _, _) = transport();
    let (offset, fd) = t.notify_events()[0];
    let fd = fd.try_clone().unwrap();
    t.bar_write(BAR_INDEX, offset, &0u16.to_le_bytes());
    assert_eq!(fd.read().unwrap(), 1);
}

#[test]
fn device_config_reads_go_to_the_device_and_odd_accesses_are_harmless() {
    let (mut t, _, _) = transport();
    let mut b = [0u8; 4];
    t.bar_read(BAR_INDEX, DEVICE_OFFSET + 4, &mut b);
    assert_eq!(b, [4; 4]);
    t.bar_read(1, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    t.bar_read(BAR_INDEX, BAR_SIZE + 8, &mut b);
    assert_eq!(b, [0xff; 4]);
    t.bar_write(BAR_INDEX, 0x7ff0, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
}
