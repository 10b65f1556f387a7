//! Tests of virtio-blk requests, well-formed and hostile: each hostile chain is
//! completed (length 0) or failed with a status, the I/O returns, nothing outside the
//! chain's buffers in guest RAM or on the disk changes.

use super::request::{IOERR, OK, UNSUPP};
use super::*;
use crate::virtio::testutil::*;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::virtio::Interrupts;

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x8000;
const FAR: u64 = RAM_SIZE + 0x1000;

struct Rig {
    q: TestQueue,
    dev: Block,
    /// The queue's interrupt: its count is the number of interrupts raised.
    irq: EventFd,
    _dir: TempDir,
    path: std::path::PathBuf,
}

fn rig_with(readonly: bool, disk_bytes: usize) -> Rig {
    rig_sized(readonly, disk_bytes, 16)
}

/// A device over a disk of `disk_bytes` with a queue of `queue_size`, activated.
fn rig_sized(readonly: bool, disk_bytes: usize, queue_size: u16) -> Rig {
    let dir = TempDir::new();
    let path = dir.image(disk_bytes, 0x5a);
    let disk = DiskFile::open(
        &path,
        DiskOptions {
            readonly,
            direct: false,
        },
    )
    .unwrap();
    let q = TestQueue::new(queue_size);
    let dev = Block::new("test".into(), disk, "serial-7", &test_workers()).unwrap();
    let mut r = Rig {
        q,
        dev,
        irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        _dir: dir,
        path,
    };
    r.activate(false);
    r
}

fn test_workers() -> WorkerConfig {
    WorkerConfig {
        threads: 4,
        name: "test-blk".into(),
        on_start: Arc::new(|| Ok(())),
    }
}

fn rig() -> Rig {
    rig_with(false, 64 * 1024)
}

impl Rig {
    /// Activate the device on the test queue, with EVENT_IDX if `event_idx`.
    fn activate(&mut self, event_idx: bool) {
        let mut queue = self.q.queue();
        queue.set_event_idx(event_idx);
        self.dev
            .activate(Activation {
                mem: self.q.mem.clone(),
                features: 0,
                queues: vec![queue],
                interrupts: Interrupts {
                    queues: vec![Some(self.irq.try_clone().unwrap())],
                    config: None,
                },
                kicks: Vec::new(),
            })
            .unwrap();
    }

    /// Interrupts raised since the last call.
    fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// Swap the worker threads for a pool the test runs by hand, and activate again.
    fn stall(&mut self) {
        self.dev.workers = Workers::stalled(self.dev.requests.clone()).unwrap();
        self.activate(false);
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.q.write(HDR, &h);
        self.q.write(STATUS, &[0xee]);
    }

    /// Header, one data buffer (`write`: device-writable) of `len`, status; published.
    fn request(&mut self, kind: u32, sector: u64, len: u32, write: bool) {
        self.header(kind, sector);
        self.q.desc(0, HDR, 16, F_NEXT, 1);
        let data_flags = if write { F_WRITE } else { 0 } | F_NEXT;
        self.q.desc(1, BUF, len, data_flags, 2);
        self.q.desc(2, STATUS, 1, F_WRITE, 0);
        self.q.publish(0);
    }

    /// Process the queue and wait for the workers to complete what it handed out.
    fn run(&mut self) {
        self.dev.process_queue(0);
        self.dev.workers.wait_idle();
    }

    fn status(&self) -> u8 {
        self.q.read(STATUS, 1)[0]
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[test]
fn a_write_then_a_read_round_trip_through_the_disk() {
    let mut r = rig();
    r.q.write(BUF, &[7u8; 1024]);
    r.request(VIRTIO_BLK_T_OUT, 2, 1024, false);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(r.q.used(0), (0, 1));
    assert_eq!(&r.disk()[1024..2048], &[7u8; 1024][..]);
    r.q.write(BUF, &[0u8; 1024]);
    r.request(VIRTIO_BLK_T_IN, 2, 1024, true);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(r.q.used(1), (0, 1025));
    assert_eq!(r.q.read(BUF, 1024), vec![7u8; 1024]);
}

#[test]
fn flush_and_get_id_answer() {
    let mut r = rig();
    r.request(VIRTIO_BLK_T_FLUSH, 0, 0, true);
    r.run();
    assert_eq!(r.status(), OK);
    r.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(&r.q.read(BUF, 9), b"serial-7\0");
}

#[test]
fn a_request_past_the_end_of_the_disk_is_an_io_error() {
    let mut r = rig();
    let before = r.disk();
    r.request(VIRTIO_BLK_T_OUT, 127, 1024, false);
    r.run();
    assert_eq!(r.status(), IOERR);
    r.request(VIRTIO_BLK_T_IN, u64::MAX / 256, 512, true);
    r.run();
    assert_eq!(r.status(), IOERR);
    assert_eq!(r.disk(), before);
}

#[test]
fn a_read_only_disk_refuses_writes_and_discards() {
    let mut r = rig_with(true, 4096);
    assert_ne!(r.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
    r.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    r.run();
    assert_eq!(r.status(), IOERR);
    assert!(r.disk().iter().all(|&b| b == 0x5a));
}

#[test]
fn an_unknown_request_type_is_unsupported() {
    let mut r = rig();
    r.request(0x77, 0, 512, true);
    r.run();
    assert_eq!(r.status(), UNSUPP);
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    let mut r = rig();
    for (kind, sector) in [(VIRTIO_BLK_T_WRITE_ZEROES, 0u64), (VIRTIO_BLK_T_DISCARD, 8)] {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        r.q.write(BUF, &seg);
        r.request(kind, 0, 16, false);
        r.run();
        assert_eq!(r.status(), OK, "type {kind}");
    }
    let disk = r.disk();
    assert!(disk[..8192].iter().all(|&b| b == 0));
    assert!(disk[8192..].iter().all(|&b| b == 0x5a));
}

#[test]
fn a_descriptor_loop_is_refused_and_returns() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, BUF, 512, F_WRITE | F_NEXT, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used_idx(), 1);
    // The chain is cut at the queue size; its status byte was never found, so nothing
    // is written and the completion carries no bytes.
    assert_eq!(r.q.used(0), (0, 0));
}

#[test]
fn a_buffer_outside_guest_ram_is_refused_without_touching_the_disk() {
    let mut r = rig();
    let before = r.disk();
    r.header(VIRTIO_BLK_T_OUT, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, FAR, 512, F_NEXT, 2);
    r.q.desc(2, STATUS, 1, F_WRITE, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used(0), (0, 0));
    assert_eq!(r.status(), 0xee);
    assert_eq!(r.disk(), before);
}

#[test]
fn a_buffer_that_wraps_the_address_space_is_refused() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, u64::MAX - 10, 512, F_WRITE | F_NEXT, 2);
    r.q.desc(2, STATUS, 1, F_WRITE, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used(0), (0, 0));
    assert_eq!(r.status(), 0xee);
}

#[test]
fn a_giant_buffer_is_refused() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, BUF, u32::MAX, F_WRITE | F_NEXT, 2);
    r.q.desc(2, STATUS, 1, F_WRITE, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used(0), (0, 0));
}

#[test]
fn zero_length_buffers_are_skipped() {
    let mut r = rig();
    r.q.write(BUF, &[3u8; 512]);
    r.header(VIRTIO_BLK_T_OUT, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, FAR, 0, F_NEXT, 2);
    r.q.desc(2, BUF, 512, F_NEXT, 3);
    r.q.desc(3, BUF, 0, F_WRITE | F_NEXT, 4);
    r.q.desc(4, STATUS, 1, F_WRITE, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(&r.disk()[..512], &[3u8; 512][..]);
}

#[test]
fn a_request_without_a_status_byte_completes_empty() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_OUT, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, BUF, 512, 0, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used(0), (0, 0));
}

#[test]
fn a_short_header_is_an_io_error() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.desc(0, HDR, 8, F_NEXT, 1);
    r.q.desc(1, STATUS, 1, F_WRITE, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.status(), IOERR);
}

#[test]
fn nested_indirect_tables_are_refused() {
    let mut r = rig();
    let (outer, inner) = (DATA + 0x4000, DATA + 0x5000);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.desc_at(outer, 0, inner, 32, F_INDIRECT, 0);
    r.q.desc_at(inner, 0, HDR, 16, F_NEXT, 1);
    r.q.desc_at(inner, 1, STATUS, 1, F_WRITE, 0);
    r.q.desc(0, outer, 16, F_INDIRECT, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used(0), (0, 0));
    assert_eq!(r.status(), 0xee);
}

#[test]
fn an_indirect_table_works_but_a_huge_one_is_cut() {
    let mut r = rig();
    let table = DATA + 0x4000;
    r.q.write(BUF, &[9u8; 512]);
    r.header(VIRTIO_BLK_T_OUT, 1);
    r.q.desc_at(table, 0, HDR, 16, F_NEXT, 1);
    r.q.desc_at(table, 1, BUF, 512, F_NEXT, 2);
    r.q.desc_at(table, 2, STATUS, 1, F_WRITE, 0);
    r.q.desc(0, table, 48, F_INDIRECT, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(&r.disk()[512..1024], &[9u8; 512][..]);
    // 2000 chained zero-length descriptors: more than one request may use.
    let big = DATA + 0x1_0000;
    for i in 0..2000u16 {
        r.q.desc_at(big, i, BUF, 0, F_NEXT, i + 1);
    }
    r.q.desc(0, big, 2000 * 16, F_INDIRECT, 0);
    r.q.publish(0);
    r.run();
    assert_eq!(r.q.used_idx(), 2);
    assert_eq!(r.q.used(1), (0, 0));
}

#[test]
fn an_avail_index_far_ahead_processes_nothing_and_returns() {
    let mut r = rig();
    r.request(VIRTIO_BLK_T_FLUSH, 0, 0, true);
    r.q.set_avail_idx(1000);
    r.run();
    assert_eq!(r.q.used_idx(), 0);
    assert_eq!(r.status(), 0xee);
}

/// A pass that finds nothing new (its kick was served by the pass before) leaves
/// notifications on: without EVENT_IDX the used ring's NO_NOTIFY flag must be clear,
/// or the driver never kicks again.
#[test]
fn a_pass_with_nothing_new_leaves_notifications_on() {
    let mut r = rig();
    r.request(VIRTIO_BLK_T_FLUSH, 0, 0, true);
    r.run();
    assert_eq!(r.q.used_idx(), 1);
    r.run();
    let flags = u16::from_le_bytes(r.q.read(USED, 2).try_into().unwrap());
    assert_eq!(flags & 1, 0, "VRING_USED_F_NO_NOTIFY left set");
}

#[test]
fn a_head_index_beyond_the_queue_is_refused() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    r.q.publish(40);
    r.run();
    // The used ring rejects the bogus head: nothing is completed, nothing crashes.
    assert_eq!(r.q.used_idx(), 0);
}

#[test]
fn after_a_reset_queued_requests_are_not_touched() {
    let mut r = rig();
    r.q.write(BUF, &[1u8; 512]);
    r.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    r.dev.reset();
    r.run();
    assert_eq!(r.q.used_idx(), 0);
    assert_eq!(r.status(), 0xee);
    assert!(r.disk().iter().all(|&b| b == 0x5a));
}

#[test]
fn config_space_reports_capacity_and_segments() {
    let r = rig();
    let mut cap = [0u8; 8];
    r.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);
    let mut seg = [0u8; 4];
    r.dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut past = [0xffu8; 4];
    r.dev.read_config(4096, &mut past);
    assert_eq!(past, [0; 4]);
}

/// Publish `n` single-sector requests (`kind`), request `i` on sector `i` with its
/// header, data and status at their own addresses; returns the status addresses.
fn publish_many(r: &mut Rig, kind: u32, n: u16) -> Vec<u64> {
    publish_many_from(r, kind, 0, n)
}

/// [`publish_many`] for requests `first..first + n`.
fn publish_many_from(r: &mut Rig, kind: u32, first: u16, n: u16) -> Vec<u64> {
    let mut statuses = Vec::new();
    for i in first..first + n {
        let base = DATA + 0x2_0000 + u64::from(i) * 0x1000;
        let (hdr, buf, status) = (base, base + 0x200, base + 0x400);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&u64::from(i).to_le_bytes());
        r.q.write(hdr, &h);
        r.q.write(buf, &[i as u8; 512]);
        r.q.write(status, &[0xee]);
        let d = 3 * i;
        let data_flags = if kind == VIRTIO_BLK_T_IN { F_WRITE } else { 0 } | F_NEXT;
        r.q.desc(d, hdr, 16, F_NEXT, d + 1);
        r.q.desc(d + 1, buf, 512, data_flags, d + 2);
        r.q.desc(d + 2, status, 1, F_WRITE, 0);
        r.q.publish(d);
        statuses.push(status);
    }
    statuses
}

#[test]
fn several_requests_in_flight_all_complete_once() {
    let mut r = rig();
    let statuses = publish_many(&mut r, VIRTIO_BLK_T_OUT, 5);
    r.run();
    assert_eq!(r.q.used_idx(), 5);
    let mut heads: Vec<u32> = (0..5).map(|i| r.q.used(i).0).collect();
    heads.sort_unstable();
    assert_eq!(heads, [0, 3, 6, 9, 12]);
    for s in statuses {
        assert_eq!(r.q.read(s, 1), [OK]);
    }
    let disk = r.disk();
    for i in 0..5usize {
        assert!(disk[i * 512..(i + 1) * 512].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn a_flush_after_completed_writes_succeeds_and_the_data_is_on_disk() {
    let mut r = rig();
    publish_many(&mut r, VIRTIO_BLK_T_OUT, 3);
    r.run();
    r.request(VIRTIO_BLK_T_FLUSH, 0, 0, true);
    r.run();
    assert_eq!(r.status(), OK);
    assert_eq!(r.q.used_idx(), 4);
    assert!(r.disk()[1024..1536].iter().all(|&b| b == 2));
}

#[test]
fn a_reset_drops_queued_requests_unexecuted() {
    let mut r = rig();
    r.stall();
    let statuses = publish_many(&mut r, VIRTIO_BLK_T_OUT, 3);
    r.dev.process_queue(0);
    assert_eq!(r.dev.workers.in_flight(), 3);
    let before = r.disk();
    r.dev.reset();
    assert_eq!(r.dev.workers.in_flight(), 0);
    assert!(
        !r.dev.workers.run_next(),
        "nothing is left for a worker to take"
    );
    assert_eq!(r.q.used_idx(), 0);
    assert_eq!(r.interrupts(), 0);
    for s in statuses {
        assert_eq!(r.q.read(s, 1), [0xee]);
    }
    assert_eq!(r.disk(), before);
}

#[test]
fn a_reset_waits_for_a_request_being_carried_out_and_drops_its_completion() {
    let mut r = rig();
    r.stall();
    r.request(VIRTIO_BLK_T_IN, 0, 512, true);
    r.dev.process_queue(0);
    let job = r.dev.workers.take().unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let pool = &r.dev.workers;
        let reset = scope.spawn(|| {
            pool.cancel();
            done.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        // The request is still being carried out: the reset has not returned.
        assert!(!done.load(Ordering::SeqCst));
        pool.finish(job, 513);
        reset.join().unwrap();
    });
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(r.q.used_idx(), 0);
    assert_eq!(r.interrupts(), 0);
}

#[test]
fn a_completion_after_reset_and_reactivation_does_not_reach_the_new_queue() {
    let mut r = rig();
    r.stall();
    r.request(VIRTIO_BLK_T_FLUSH, 0, 0, true);
    r.dev.process_queue(0);
    let old = r.dev.workers.take().unwrap();
    std::thread::scope(|scope| {
        let pool = &r.dev.workers;
        scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            pool.finish(old, 1);
        });
        pool.cancel();
    });
    r.activate(false);
    assert_eq!(r.q.used_idx(), 0);
    // The new queue starts over: the request is popped again, completed once.
    r.dev.process_queue(0);
    assert!(r.dev.workers.run_next());
    assert_eq!(r.q.used_idx(), 1);
    assert_eq!(r.q.used(0), (0, 1));
    assert_eq!(r.interrupts(), 1);
}

#[test]
fn in_flight_requests_are_capped_at_the_queue_size() {
    // A driver that republishes the same chain again and again cannot queue more work
    // than the queue holds: with workers that have not finished, the rest stays in the
    // ring until a completion makes room and wakes the I/O thread.
    let mut r = rig_with(false, 4096);
    r.stall();
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    r.q.desc(0, HDR, 16, F_NEXT, 1);
    r.q.desc(1, STATUS, 1, F_WRITE, 0);
    for _ in 0..2 {
        for _ in 0..16 {
            r.q.publish(0);
        }
        r.dev.process_queue(0);
        assert_eq!(r.dev.workers.in_flight(), 16);
    }
    assert_eq!(r.q.used_idx(), 0);
    // The eventfd the I/O thread watches (non-blocking: a read finds its count or fails).
    let mut wake = std::fs::File::from(r.dev.workers.wake_fd().unwrap());
    let mut count = [0u8; 8];
    assert!(
        wake.read(&mut count).is_err(),
        "no wake-up while nothing completed"
    );
    assert!(r.dev.workers.run_next());
    assert_eq!(r.q.used_idx(), 1);
    assert_eq!(
        wake.read(&mut count).unwrap(),
        8,
        "a completion in a full pool wakes the I/O thread"
    );
    r.dev.process_queue(0);
    assert_eq!(r.dev.workers.in_flight(), 16);
}

#[test]
fn concurrent_completions_each_reach_the_used_ring_once_with_an_interrupt() {
    let mut r = rig_sized(false, 64 * 1024, 256);
    let n = 80;
    for i in 0..n {
        let at = usize::from(i) * 512;
        let mut disk = r.disk();
        disk[at..at + 512].fill(i as u8 ^ 0xa5);
        std::fs::write(&r.path, disk).unwrap();
    }
    let statuses = publish_many(&mut r, VIRTIO_BLK_T_IN, n);
    r.run();
    assert_eq!(r.q.used_idx(), n);
    let mut heads: Vec<u32> = (0..n).map(|i| r.q.used(i).0).collect();
    heads.sort_unstable();
    assert_eq!(heads, (0..u32::from(n)).map(|i| 3 * i).collect::<Vec<_>>());
    for i in 0..n {
        assert_eq!(r.q.used(i).1, 513);
        let base = DATA + 0x2_0000 + u64::from(i) * 0x1000;
        assert_eq!(r.q.read(base + 0x200, 512), vec![i as u8 ^ 0xa5; 512]);
        assert_eq!(r.q.read(statuses[usize::from(i)], 1), [OK]);
    }
    // Without EVENT_IDX every completion interrupts.
    assert_eq!(r.interrupts(), u64::from(n));
}

#[test]
fn with_event_idx_concurrent_completions_interrupt_only_as_the_driver_asked() {
    let mut r = rig_sized(false, 64 * 1024, 256);
    r.activate(true);
    // used_event (after the avail ring) = 0: interrupt once the used index passes 0.
    r.q.write(AVAIL + 4 + 2 * 256, &0u16.to_le_bytes());
    publish_many(&mut r, VIRTIO_BLK_T_IN, 40);
    r.run();
    assert_eq!(r.q.used_idx(), 40);
    assert_eq!(r.interrupts(), 1);
    // The driver now asks for the 50th entry: the next 9 stay quiet, the 10th interrupts.
    r.q.write(AVAIL + 4 + 2 * 256, &49u16.to_le_bytes());
    publish_many_from(&mut r, VIRTIO_BLK_T_IN, 40, 9);
    r.run();
    assert_eq!(r.q.used_idx(), 49);
    assert_eq!(r.interrupts(), 0);
    publish_many_from(&mut r, VIRTIO_BLK_T_IN, 49, 1);
    r.run();
    assert_eq!(r.interrupts(), 1);
}

#[test]
fn a_failing_thread_start_stops_the_pool_from_starting() {
    let dir = TempDir::new();
    let disk = DiskFile::open(&dir.image(4096, 0), DiskOptions::default()).unwrap();
    let config = WorkerConfig {
        threads: 2,
        name: "test-blk".into(),
        on_start: Arc::new(|| Err("no sandbox".into())),
    };
    let e = Block::new("test".into(), disk, "s", &config).unwrap_err();
    assert!(e.to_string().contains("no sandbox"), "{e}");
}
