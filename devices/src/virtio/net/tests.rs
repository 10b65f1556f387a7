//! Tests of the virtio-net userspace path, well-formed and hostile, over a datagram
//! socket pair standing in for the tap (one datagram, one frame): every hostile chain
//! is completed, nothing reaches the "tap" from a refused transmit chain, and nothing
//! outside the chains' buffers changes.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;
use crate::virtio::testutil::*;

const FAR: u64 = RAM_SIZE + 0x1000;
const F_MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

struct Rig {
    rx: TestQueue,
    tx: TestQueue,
    dev: Net,
    /// The host end of the "tap".
    host: File,
    irq: [EventFd; 2],
}

use vmm_sys_util::eventfd::EventFd;

fn socketpair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both fds are new and ours.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

fn rig(features: u64) -> Rig {
    let rx = TestQueue::new(16);
    let tx = rx.next_queue(16);
    let (ours, host) = socketpair();
    let tap = Tap::from_packet_fd(ours, "test0");
    let mut dev = Net::new("test".into(), MacAddr::derived("test0"), tap, None);
    let irq = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    dev.activate(Activation {
        mem: rx.mem.clone(),
        features,
        queues: vec![rx.queue(), tx.queue()],
        interrupts: Interrupts {
            queues: irq.iter().map(|e| Some(e.try_clone().unwrap())).collect(),
            config: None,
        },
        kicks: Vec::new(),
    })
    .unwrap();
    Rig {
        rx,
        tx,
        dev,
        host,
        irq,
    }
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

impl Rig {
    fn host_send(&self, data: &[u8]) {
        use std::io::Write;
        (&self.host).write_all(data).unwrap();
    }

    fn host_recv(&self) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut buf = vec![0u8; MAX_FRAME + 16];
        match (&self.host).read(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn interrupted(&self, q: usize) -> bool {
        self.irq[q].read().is_ok()
    }
}

#[test]
fn a_transmit_chain_reaches_the_tap_intact_in_two_buffers() {
    let mut r = rig(0);
    let f = frame(1514 + VNET_HDR_LEN);
    r.tx.write(DATA, &f[..VNET_HDR_LEN]);
    r.tx.write(DATA + 0x1000, &f[VNET_HDR_LEN..]);
    r.tx.desc(0, DATA, VNET_HDR_LEN as u32, F_NEXT, 1);
    r.tx.desc(1, DATA + 0x1000, (f.len() - VNET_HDR_LEN) as u32, 0, 0);
    r.tx.publish(0);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.host_recv().unwrap(), f);
    assert_eq!(r.tx.used_idx(), 1);
    assert_eq!(r.tx.used(0), (0, 0));
    assert!(r.interrupted(TX_QUEUE));
}

#[test]
fn hostile_transmit_chains_are_completed_and_never_sent() {
    let mut r = rig(0);
    // Outside guest RAM.
    r.tx.desc(0, FAR, 100, 0, 0);
    r.tx.publish(0);
    // Shorter than the header.
    r.tx.desc(1, DATA, 4, 0, 0);
    r.tx.publish(1);
    // A device-writable buffer in a transmit chain.
    r.tx.desc(2, DATA, 64, F_NEXT, 3);
    r.tx.desc(3, DATA + 0x100, 64, F_WRITE, 0);
    r.tx.publish(2);
    // A loop: 4 -> 5 -> 4 -> ...
    r.tx.desc(4, DATA, 64, F_NEXT, 5);
    r.tx.desc(5, DATA, 64, F_NEXT, 4);
    r.tx.publish(4);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.tx.used_idx(), 4);
    let heads: Vec<u32> = (0..4).map(|i| r.tx.used(i).0).collect();
    assert_eq!(heads, [0, 1, 2, 4]);
    // The loop's buffers are readable and in RAM: the chain walk stops at the queue
    // size (16 descriptors of 64 bytes), which is a frame; nothing else is sent.
    let sent: Vec<usize> = std::iter::from_fn(|| r.host_recv())
        .map(|f| f.len())
        .collect();
    assert!(sent.iter().all(|&n| n == 16 * 64), "{sent:?}");
}

#[test]
fn a_received_frame_fills_one_chain_with_num_buffers_one() {
    let mut r = rig(0);
    let f = frame(600);
    r.rx.desc(0, DATA, 2048, F_WRITE, 0);
    r.rx.publish(0);
    r.host_send(&f);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used(0), (0, 600));
    let got = r.rx.read(DATA, 600);
    assert_eq!(&got[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2], &[1, 0]);
    assert_eq!(got[..NUM_BUFFERS_AT], f[..NUM_BUFFERS_AT]);
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    assert!(r.interrupted(RX_QUEUE));
}

#[test]
fn a_large_frame_spans_mergeable_buffers_published_at_once() {
    let mut r = rig(F_MRG);
    for i in 0..3u16 {
        r.rx.desc(i, DATA + 0x1000 * u64::from(i), 1500, F_WRITE, 0);
        r.rx.publish(i);
    }
    let f = frame(4000);
    r.host_send(&f);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 3);
    assert_eq!(r.rx.used(0), (0, 1500));
    assert_eq!(r.rx.used(1), (1, 1500));
    assert_eq!(r.rx.used(2), (2, 1000));
    let mut got = r.rx.read(DATA, 1500);
    got.extend(r.rx.read(DATA + 0x1000, 1500));
    got.extend(r.rx.read(DATA + 0x2000, 1000));
    assert_eq!(&got[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2], &[3, 0]);
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
}

#[test]
fn a_frame_waits_for_buffers_and_is_not_lost() {
    let mut r = rig(F_MRG);
    // One buffer, too small for the frame: nothing is consumed.
    r.rx.desc(0, DATA, 1000, F_WRITE, 0);
    r.rx.publish(0);
    let f = frame(1800);
    r.host_send(&f);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 0);
    // The driver adds a buffer and notifies: the frame goes in, in both.
    r.rx.desc(1, DATA + 0x1000, 1000, F_WRITE, 0);
    r.rx.publish(1);
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 2);
    assert_eq!(r.rx.used(1), (1, 800));
}

#[test]
fn without_mergeable_buffers_a_too_small_chain_drops_the_frame() {
    let mut r = rig(0);
    r.rx.desc(0, DATA, 100, F_WRITE, 0);
    r.rx.publish(0);
    r.rx.write(DATA, &[0xee; 100]);
    r.host_send(&frame(600));
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used(0), (0, 0));
    assert_eq!(r.rx.read(DATA, 100), vec![0xee; 100]);
}

#[test]
fn hostile_receive_chains_are_completed_empty_and_ram_is_untouched() {
    let mut r = rig(F_MRG);
    // Device-readable buffer in a receive chain.
    r.rx.desc(0, DATA, 2048, 0, 0);
    r.rx.publish(0);
    // Outside guest RAM.
    r.rx.desc(1, FAR, 2048, F_WRITE, 0);
    r.rx.publish(1);
    // Wrapping the address space.
    r.rx.desc(2, u64::MAX - 10, 2048, F_WRITE, 0);
    r.rx.publish(2);
    r.rx.write(DATA, &[0xee; 64]);
    for _ in 0..3 {
        r.host_send(&frame(100));
    }
    r.dev.process_queue(RX_QUEUE);
    assert_eq!(r.rx.used_idx(), 3);
    for i in 0..3 {
        assert_eq!(r.rx.used(i), (u32::from(i), 0));
    }
    assert_eq!(r.rx.read(DATA, 64), vec![0xee; 64]);
}

#[test]
fn an_avail_index_beyond_the_ring_does_not_spin() {
    let mut r = rig(0);
    r.rx.set_avail_idx(1000);
    r.host_send(&frame(100));
    r.dev.process_queue(RX_QUEUE);
    r.tx.set_avail_idx(1000);
    r.dev.process_queue(TX_QUEUE);
}

#[test]
fn reset_forgets_the_queues() {
    let mut r = rig(0);
    r.dev.reset();
    r.tx.desc(0, DATA, 64, 0, 0);
    r.tx.publish(0);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.tx.used_idx(), 0);
    assert!(r.host_recv().is_none());
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let r = rig(0);
    let mut c = [0u8; 8];
    r.dev.read_config(0, &mut c);
    assert_eq!(c[..6], MacAddr::derived("test0").0);
    assert_eq!(c[6..], [1, 0]);
}

#[test]
fn the_userspace_path_watches_kicks_and_the_tap() {
    let r = rig(0);
    let ev = r.dev.io_events().unwrap();
    assert!(ev.kicks);
    assert_eq!(ev.backend.len(), 1);
    assert_eq!(ev.backend[0].1, RX_QUEUE);
}

#[test]
fn offered_features_include_the_offloads() {
    let r = rig(0);
    let f = r.dev.features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
    ] {
        assert!(f & (1 << bit) != 0, "bit {bit}");
    }
}

#[test]
fn tap_offloads_follow_the_guest_receive_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
    assert_eq!(
        tap_offloads(f(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6
        ])),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
}

#[test]
fn mac_addresses_parse_print_and_refuse_multicast() {
    let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    assert_eq!(m.0, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(m.to_string(), "52:54:00:12:34:56");
    assert!(matches!(
        "01:00:5e:00:00:01".parse::<MacAddr>(),
        Err(MacError::Multicast(_))
    ));
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5254:00:12:34:56",
        "zz:54:00:12:34:56",
    ] {
        assert!(
            matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
            "{bad}"
        );
    }
}

#[test]
fn derived_macs_are_stable_local_and_unicast() {
    let a = MacAddr::derived("tap0");
    assert_eq!(a, MacAddr::derived("tap0"));
    assert_ne!(a, MacAddr::derived("tap1"));
    assert!(a.is_unicast());
    assert_eq!(a.0[0] & 2, 2);
}
