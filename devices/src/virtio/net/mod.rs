//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a tap
//! ([`tap`]), the frames moved either by vhost-net in the host kernel ([`vhost`]) or,
//! when /dev/vhost-net cannot be had, by Strait's I/O thread (the userspace path here).
//!
//! Offered: MAC (from the spec), STATUS (link always up), CSUM / GUEST_CSUM,
//! HOST_TSO4/6 / GUEST_TSO4/6, MRG_RXBUF, INDIRECT_DESC and EVENT_IDX. No control
//! queue, no multiqueue. Every frame carries the 12-byte virtio 1.x header (5.1.6),
//! which the tap carries too (IFF_VNET_HDR): the device passes it through both ways,
//! only filling `num_buffers` on receive. What the tap may hand the guest follows what
//! the driver accepted (TUNSETOFFLOAD at DRIVER_OK).
//!
//! Userspace path, on the I/O thread:
//! - transmit: each chain's readable buffers are written to the tap as one frame
//!   (writev straight from guest RAM); a chain that is refused, too short for a header
//!   or longer than a frame is dropped and completed with length 0;
//! - receive: a frame is read from the tap into a bounce buffer, then copied into one
//!   chain (several with MRG_RXBUF, their used entries published with one index
//!   update so the driver never sees part of a frame). When the guest has no buffer the
//!   frame waits in the bounce buffer and the tap is left alone until the driver
//!   notifies the receive queue (the I/O thread watches the tap edge-triggered, so a
//!   full ring does not spin it). A refused chain drops the frame it was meant for.
//!
//! Guest chains are hostile input and go through [`crate::virtio::chain`] like every
//! other device's.

pub mod tap;
pub mod vhost;

use std::fmt;
use std::io;
use std::str::FromStr;

use resources::{limited_log, LogLimiter};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{iovecs, parse_chain, Buffer, Chain};
use super::{ActivateError, Activation, Interrupts, IoEvents, VirtioDevice};
use tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use vhost::{VhostNet, VhostQueue};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame with its header: a 64 KiB TSO frame, an Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_535 + 14 + 4;
/// Network controller, Ethernet.
const PCI_CLASS_NETWORK_ETHERNET: u32 = 0x02_0000;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;

static BAD_CHAIN: LogLimiter = LogLimiter::new();
static TAP_FAILED: LogLimiter = LogLimiter::new();

/// A MAC address, parsed from "52:54:00:12:34:56".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("{0:?} is not six hex bytes separated by `:` (e.g. 52:54:00:12:34:56)")]
    Syntax(String),
    #[error("{0} is a multicast address (lowest bit of the first byte set); use a unicast one")]
    Multicast(MacAddr),
}

impl MacAddr {
    /// Unicast: bit 0 of the first byte clear.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    /// A stable, locally administered unicast address derived from `seed` (the tap's
    /// name): the same tap gets the same MAC on every run, so the guest's interface
    /// configuration and the host's neighbour tables stay valid.
    pub fn derived(seed: &str) -> MacAddr {
        // FNV-1a, 64 bits: stable across Rust versions, unlike DefaultHasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        // Locally administered (bit 1 set), unicast (bit 0 clear).
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let syntax = || MacError::Syntax(s.into());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let p = parts.next().ok_or_else(syntax)?;
            if p.len() != 2 {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        let mac = MacAddr(mac);
        if !mac.is_unicast() {
            return Err(MacError::Multicast(mac));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The queues while Strait moves the frames.
struct UserPath {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    irqs: Interrupts,
    mrg_rxbuf: bool,
    /// A frame read from the tap that no guest buffer took yet: its length in `frame`.
    pending: Option<usize>,
}

enum Active {
    User(UserPath),
    Vhost,
}

/// What became of one received frame.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Written into the guest in this many chains.
    Delivered(usize),
    /// Dropped (a refused or too small chain); the chains popped were completed.
    Dropped,
    /// No (or not enough) buffers: nothing was consumed.
    NoBuffers,
}

/// A virtio-net device over one tap.
pub struct Net {
    label: String,
    mac: MacAddr,
    tap: Tap,
    vhost: Option<VhostNet>,
    active: Option<Active>,
    /// Bounce buffer of the receive path.
    frame: Box<[u8]>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("label", &self.label)
            .field("mac", &self.mac)
            .field("tap", &self.tap.name())
            .field("vhost", &self.vhost.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device over `tap`; with `vhost`, the data path is vhost-net's.
    pub fn new(label: String, mac: MacAddr, tap: Tap, vhost: Option<VhostNet>) -> Net {
        Net {
            label,
            mac,
            tap,
            vhost,
            active: None,
            frame: vec![0u8; MAX_FRAME].into_boxed_slice(),
        }
    }

    /// Whether vhost-net carries the frames.
    pub fn uses_vhost(&self) -> bool {
        self.vhost.is_some()
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }

    fn start_vhost(&mut self, a: &Activation) -> Result<(), ActivateError> {
        let Some(vhost) = self.vhost.as_mut() else {
            return Err(ActivateError::Backend("no vhost-net".into()));
        };
        let mut queues = Vec::new();
        for (i, q) in a.queues.iter().enumerate() {
            let kick = a.kicks.get(i).ok_or(ActivateError::BadQueue(i))?;
            if !q.ready() {
                return Err(ActivateError::BadQueue(i));
            }
            let call = a.interrupts.queues.get(i).and_then(Option::as_ref);
            queues.push(VhostQueue {
                queue: q,
                kick,
                call,
            });
        }
        vhost
            .start(a.features, &a.mem, &queues, &self.tap)
            .map_err(|e| ActivateError::Backend(format!("{e}: {}", source_chain(&e))))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push(c.to_string());
        cur = c.source();
    }
    s.join(": ")
}

/// TUNSETOFFLOAD bits for the receive offloads the driver accepted.
pub fn tap_offloads(features: u64) -> u32 {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        f |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        f |= TUN_F_TSO6;
    }
    f
}

impl UserPath {
    /// Move frames from the tap into the receive queue; true if the driver should be
    /// interrupted.
    fn receive(&mut self, tap: &Tap, frame: &mut [u8], label: &str) -> bool {
        let mut used = 0usize;
        let mut forced = false;
        let mut retried = false;
        loop {
            let len = match self.pending.take() {
                Some(n) => n,
                None => match tap.read_frame(frame) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        limited_log!(TAP_FAILED, warn, "{label}: reading the tap: {e}");
                        break;
                    }
                },
            };
            match self.deliver(&mut frame[..len], label) {
                Delivery::Delivered(n) => {
                    used += n;
                    forced |= n > 1;
                    retried = false;
                }
                Delivery::Dropped => {
                    used += 1;
                    retried = false;
                }
                Delivery::NoBuffers => {
                    self.pending = Some(len);
                    // Buffers may have come since the ring looked empty (2.7.10); look
                    // once more, not again: an avail index the ring cannot hold (refused
                    // by the queue) also reads as "more available".
                    if !retried && self.rx.enable_notification(&self.mem).unwrap_or(false) {
                        retried = true;
                        continue;
                    }
                    break;
                }
            }
        }
        used > 0 && (self.rx.needs_notification(&self.mem).unwrap_or(true) || forced)
    }

    /// Put one frame (header first) into the guest's receive buffers.
    fn deliver(&mut self, frame: &mut [u8], label: &str) -> Delivery {
        let start = self.rx.next_avail();
        let mut chains: Vec<Chain> = Vec::new();
        let mut room = 0u64;
        let mut refused = None;
        while room < frame.len() as u64 && (self.mrg_rxbuf || chains.is_empty()) {
            let Some(desc) = self.rx.pop_descriptor_chain(&self.mem) else {
                // Take nothing until the whole frame fits.
                self.rx.set_next_avail(start);
                return Delivery::NoBuffers;
            };
            let head = desc.head_index();
            match parse_chain(&self.mem, desc) {
                Ok(c) if c.readable.is_empty() => {
                    room += c.writable_len();
                    chains.push(c);
                }
                other => {
                    refused = Some(head);
                    let why = other
                        .err()
                        .map_or("device-readable buffers".into(), |e| e.to_string());
                    limited_log!(
                        BAD_CHAIN,
                        debug,
                        "{label}: receive chain {head} refused: {why}"
                    );
                    break;
                }
            }
        }
        if refused.is_some() || room < frame.len() as u64 {
            if refused.is_none() {
                limited_log!(
                    BAD_CHAIN,
                    debug,
                    "{label}: {}-byte frame dropped: the receive buffer holds {room}",
                    frame.len()
                );
            }
            let heads: Vec<(u16, u32)> = chains
                .iter()
                .map(|c| (c.head, 0))
                .chain(refused.map(|h| (h, 0)))
                .collect();
            self.publish_used(&heads);
            return Delivery::Dropped;
        }
        if frame.len() >= VNET_HDR_LEN {
            let n = chains.len() as u16;
            frame[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&n.to_le_bytes());
        }
        let mut rest: &[u8] = frame;
        let mut used = Vec::with_capacity(chains.len());
        for c in &chains {
            let n = scatter(&self.mem, &c.writable, rest);
            rest = &rest[n..];
            used.push((c.head, n as u32));
        }
        self.publish_used(&used);
        Delivery::Delivered(chains.len())
    }

    /// Complete several chains with one used-index update: a driver reading a frame of
    /// several buffers must never see only some of them (5.1.6.4.2).
    fn publish_used(&mut self, entries: &[(u16, u32)]) {
        if let [(head, len)] = entries {
            let _ = self.rx.add_used(&self.mem, *head, *len);
            return;
        }
        let size = self.rx.size();
        let ring = self.rx.used_ring();
        let first = self.rx.next_used();
        for (i, (head, len)) in (0u16..).zip(entries) {
            let slot = u64::from(first.wrapping_add(i) % size);
            let at = GuestAddress(ring + 4 + 8 * slot);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let _ = self.mem.write_slice(&elem, at);
        }
        let next = first.wrapping_add(entries.len() as u16);
        self.rx.set_next_used(next);
        let _ = self.mem.store(
            next.to_le(),
            GuestAddress(ring + 2),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Write every frame the driver queued to the tap; true if the driver should be
    /// interrupted.
    fn transmit(&mut self, tap: &Tap, label: &str) -> bool {
        let mut used = false;
        loop {
            let _ = self.tx.disable_notification(&self.mem);
            let mut progressed = false;
            while let Some(desc) = self.tx.pop_descriptor_chain(&self.mem) {
                progressed = true;
                let head = desc.head_index();
                match parse_chain(&self.mem, desc) {
                    Ok(c) => send(&self.mem, tap, &c, label),
                    Err(e) => {
                        limited_log!(
                            BAD_CHAIN,
                            debug,
                            "{label}: transmit chain {head} refused: {e}"
                        )
                    }
                }
                let _ = self.tx.add_used(&self.mem, head, 0);
                used = true;
            }
            // Stop when a pass finds none, so an avail index the ring cannot hold
            // (refused by the queue) cannot spin the loop; notifications go back on
            // first (without EVENT_IDX the driver would never kick again).
            if !progressed {
                let _ = self.tx.enable_notification(&self.mem);
                break;
            }
            if !self.tx.enable_notification(&self.mem).unwrap_or(false) {
                break;
            }
        }
        used && self.tx.needs_notification(&self.mem).unwrap_or(true)
    }
}

/// Write the frame of one transmit chain to the tap, if it is a well-formed one.
fn send(mem: &GuestMemoryMmap, tap: &Tap, c: &Chain, label: &str) {
    let len = c.readable_len();
    if !c.writable.is_empty() || len < VNET_HDR_LEN as u64 || len > MAX_FRAME as u64 {
        limited_log!(
            BAD_CHAIN,
            debug,
            "{label}: transmit chain {} dropped ({len} bytes, {} writable buffers)",
            c.head,
            c.writable.len()
        );
        return;
    }
    let result = iovecs(mem, &c.readable).and_then(|iov| {
        // SAFETY: `iovecs` checked each buffer lies in guest RAM, which stays mapped
        // while devices run (the VMM joins the I/O thread before unmapping it).
        unsafe { tap.write_frame(&iov) }
    });
    if let Err(e) = result {
        limited_log!(TAP_FAILED, debug, "{label}: writing to the tap: {e}");
    }
}

/// Copy `data` into the buffers as far as they hold; the bytes written.
fn scatter(mem: &GuestMemoryMmap, bufs: &[Buffer], data: &[u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        let n = (b.len as usize).min(data.len() - done);
        if n == 0 || mem.write_slice(&data[done..done + n], b.addr).is_err() {
            break;
        }
        done += n;
    }
    done
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_NETWORK_ETHERNET
    }

    fn features(&self) -> u64 {
        let offloads = [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
        ];
        let ring = 1u64 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        let ring = match &self.vhost {
            Some(v) => ring & v.features(),
            None => ring,
        };
        offloads.iter().fold(ring, |f, b| f | 1 << b)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *d = at.and_then(|a| c.get(a)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != 2 || !a.queues.iter().all(|q| q.ready()) {
            return Err(ActivateError::NoQueue);
        }
        self.tap
            .set_offload(tap_offloads(a.features))
            .map_err(|e| ActivateError::Backend(format!("{e}: {}", source_chain(&e))))?;
        if self.vhost.is_some() {
            self.start_vhost(&a)?;
            self.active = Some(Active::Vhost);
            return Ok(());
        }
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::NoQueue);
        };
        self.active = Some(Active::User(UserPath {
            mem: a.mem,
            rx,
            tx,
            irqs: a.interrupts,
            mrg_rxbuf: a.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            pending: None,
        }));
        // Frames may have queued on the tap before the driver was ready.
        self.process_queue(RX_QUEUE);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(v) = self.vhost.as_mut() {
            v.stop();
        }
        self.active = None;
        if let Err(e) = self.tap.set_offload(0) {
            log::debug!("{}: {e}", self.label);
        }
    }

    fn process_queue(&mut self, index: usize) {
        let Some(Active::User(p)) = self.active.as_mut() else {
            return;
        };
        let signal = match index {
            RX_QUEUE => p.receive(&self.tap, &mut self.frame, &self.label),
            TX_QUEUE => p.transmit(&self.tap, &self.label),
            _ => false,
        };
        if signal {
            p.irqs.signal_queue(index);
        }
    }

    fn io_events(&self) -> io::Result<IoEvents> {
        if self.vhost.is_some() {
            // vhost-net waits on the kicks and the tap itself.
            return Ok(IoEvents {
                kicks: false,
                backend: Vec::new(),
            });
        }
        Ok(IoEvents {
            kicks: true,
            backend: vec![(self.tap.try_clone_fd()?, RX_QUEUE)],
        })
    }
}

#[cfg(test)]
mod tests;
