//! virtio-blk (virtio 1.2, 5.2): one request queue, requests read from hostile chains
//! ([`crate::virtio::chain`]) and carried out on a [`DiskFile`].
//!
//! A request is a 16-byte header (type, reserved, sector) the device reads, the data
//! buffers, and a status byte the device writes last (5.2.6). Every failure the guest
//! can cause is a status, never an error of Strait: a request outside the disk or
//! misformed is `IOERR`, an unknown type `UNSUPP`, a write to a read-only disk `IOERR`.
//! A chain too broken to carry a status (no writable byte) is completed with length 0.
//!
//! Offered: FLUSH, SEG_MAX, BLK_SIZE, RO (readonly disks), DISCARD and WRITE_ZEROES
//! (one segment each), INDIRECT_DESC and EVENT_IDX; GET_ID answers the serial, which
//! Linux shows as /dev/disk/by-id/virtio-SERIAL.
//!
//! Requests run one at a time on the I/O thread, synchronously: with the host page cache
//! (`direct` false) a request mostly costs a copy.

pub mod disk;

use std::io;

use resources::{limited_log, LogLimiter};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{iovecs, parse_chain, Buffer, Chain};
use super::{ActivateError, Activation, Interrupts, VirtioDevice};
pub use disk::{DiskError, DiskFile, DiskOptions, SECTOR_SIZE};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request the driver may use (config `seg_max`).
pub const SEG_MAX: u32 = 126;
/// Longest serial GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
const HEADER_LEN: u64 = 16;
const DISCARD_SEGMENT_LEN: u64 = 16;
/// Mass storage, "other" (what QEMU's virtio-blk reports).
const PCI_CLASS_STORAGE_OTHER: u32 = 0x01_8000;

static BAD_REQUEST: LogLimiter = LogLimiter::new();
static IO_FAILED: LogLimiter = LogLimiter::new();

/// A request's status byte (5.2.6).
type Status = u8;
const OK: Status = VIRTIO_BLK_S_OK as u8;
const IOERR: Status = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: Status = VIRTIO_BLK_S_UNSUPP as u8;

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irqs: Interrupts,
}

/// A virtio-blk device over one disk.
pub struct Block {
    label: String,
    disk: DiskFile,
    serial: [u8; SERIAL_LEN],
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("label", &self.label)
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// `serial` longer than 20 bytes is cut (the spec layer refuses that earlier).
    pub fn new(label: String, disk: DiskFile, serial: &str) -> Block {
        let mut s = [0u8; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Block {
            label,
            disk,
            serial: s,
            active: None,
        }
    }

    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.disk.size() / SECTOR_SIZE).to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(34, &1u16.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &1u32.to_le_bytes());
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[1]);
        c
    }

    /// Carry out one request; returns the bytes written into the chain.
    fn execute(&self, mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
        let Some(status_at) = status_byte(&chain.writable) else {
            limited_log!(
                BAD_REQUEST,
                debug,
                "{}: request without a status byte",
                self.label
            );
            return 0;
        };
        let mut header = [0u8; HEADER_LEN as usize];
        let (status, written) = if gather(mem, &chain.readable, 0, &mut header) {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            self.request(mem, chain, kind, sector)
        } else {
            (IOERR, 0)
        };
        if mem.write_obj(status, status_at).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }

    /// (status, data bytes written into the guest).
    fn request(
        &self,
        mem: &GuestMemoryMmap,
        chain: &Chain,
        kind: u32,
        sector: u64,
    ) -> (Status, u32) {
        let data_in = chain.writable_len().saturating_sub(1);
        let data_out = chain.readable_len().saturating_sub(HEADER_LEN);
        let result = match kind {
            VIRTIO_BLK_T_IN => {
                let bufs = range(&chain.writable, 0, data_in);
                self.transfer(mem, &bufs, sector, data_in, false)
                    .map(|()| data_in as u32)
            }
            VIRTIO_BLK_T_OUT if self.disk.readonly() => return (IOERR, 0),
            VIRTIO_BLK_T_OUT => {
                let bufs = range(&chain.readable, HEADER_LEN, data_out);
                self.transfer(mem, &bufs, sector, data_out, true)
                    .map(|()| 0)
            }
            VIRTIO_BLK_T_FLUSH => self.disk.flush().map(|()| 0),
            VIRTIO_BLK_T_GET_ID => {
                let n = data_in.min(SERIAL_LEN as u64);
                let bufs = range(&chain.writable, 0, n);
                scatter(mem, &bufs, &self.serial[..n as usize]);
                Ok(n as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if self.disk.readonly() => {
                return (IOERR, 0)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.zero_or_discard(mem, chain, kind == VIRTIO_BLK_T_DISCARD)
            }
            _ => return (UNSUPP, 0),
        };
        match result {
            Ok(n) => (OK, n),
            Err(e) => {
                limited_log!(
                    IO_FAILED,
                    warn,
                    "{}: request type {kind} at sector {sector}: {e}",
                    self.label
                );
                (IOERR, 0)
            }
        }
    }

    /// Move `len` bytes between the disk at `sector` and the guest buffers `bufs`.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[Buffer],
        sector: u64,
        len: u64,
        write: bool,
    ) -> io::Result<()> {
        let offset = self.disk_range(sector, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut iov = iovecs(mem, bufs)?;
        // SAFETY: every iovec covers guest RAM checked by `iovecs`; guest memory stays
        // mapped while devices run (the VMM joins the I/O thread before unmapping it).
        unsafe {
            if write {
                self.disk.write_vectored_at(&mut iov, offset)
            } else {
                self.disk.read_vectored_at(&mut iov, offset)
            }
        }
    }

    /// Byte offset of `sector`, if `len` bytes from there lie inside the disk.
    fn disk_range(&self, sector: u64, len: u64) -> io::Result<u64> {
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| {
                o.checked_add(len)
                    .is_some_and(|end| end <= self.disk.size())
            })
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{len} bytes at sector {sector} are outside the disk"
                ))
            })
    }

    fn zero_or_discard(
        &self,
        mem: &GuestMemoryMmap,
        chain: &Chain,
        discard: bool,
    ) -> io::Result<u32> {
        let mut seg = [0u8; DISCARD_SEGMENT_LEN as usize];
        // One segment (max_discard_seg = 1); a request with more is refused whole.
        if chain.readable_len() != HEADER_LEN + DISCARD_SEGMENT_LEN
            || !gather(mem, &chain.readable, HEADER_LEN, &mut seg)
        {
            return Err(io::Error::other(
                "discard/write-zeroes needs exactly one segment",
            ));
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        if sectors > MAX_DISCARD_SECTORS {
            return Err(io::Error::other("segment longer than max_discard_sectors"));
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let offset = self.disk_range(sector, len)?;
        if len == 0 {
            return Ok(0);
        }
        if discard {
            self.disk.discard(offset, len)?;
        } else {
            // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP is bit 0.
            self.disk.write_zeroes(offset, len, flags & 1 != 0)?;
        }
        Ok(0)
    }
}

/// The status byte: the last byte of the last writable buffer.
fn status_byte(writable: &[Buffer]) -> Option<GuestAddress> {
    let last = writable.last()?;
    last.addr.checked_add(u64::from(last.len) - 1)
}

/// The part `[skip, skip + len)` of the bytes the buffers hold, as buffers.
fn range(bufs: &[Buffer], mut skip: u64, mut len: u64) -> Vec<Buffer> {
    let mut out = Vec::new();
    for b in bufs {
        if len == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let take = (blen - skip).min(len);
        out.push(Buffer {
            addr: GuestAddress(b.addr.0 + skip),
            len: take as u32,
        });
        len -= take;
        skip = 0;
    }
    out
}

/// Copy `out.len()` bytes from the buffers, from byte `skip`; false if they hold fewer.
fn gather(mem: &GuestMemoryMmap, bufs: &[Buffer], skip: u64, out: &mut [u8]) -> bool {
    let mut at = 0usize;
    for b in range(bufs, skip, out.len() as u64) {
        let n = b.len as usize;
        if mem.read_slice(&mut out[at..at + n], b.addr).is_err() {
            return false;
        }
        at += n;
    }
    at == out.len()
}

fn scatter(mem: &GuestMemoryMmap, bufs: &[Buffer], mut data: &[u8]) {
    for b in bufs {
        let n = (b.len as usize).min(data.len());
        if mem.write_slice(&data[..n], b.addr).is_err() {
            return;
        }
        data = &data[n..];
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_STORAGE_OTHER
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if self.disk.readonly() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *d = at.and_then(|a| c.get(a)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let queue = a.queues.into_iter().next().ok_or(ActivateError::NoQueue)?;
        if !queue.ready() {
            return Err(ActivateError::NoQueue);
        }
        self.active = Some(Active {
            mem: a.mem,
            queue,
            irqs: a.interrupts,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            return;
        }
        let Some(mut a) = self.active.take() else {
            return;
        };
        let used = self.drain(&mut a);
        if used && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.irqs.signal_queue(0);
        }
        self.active = Some(a);
    }
}

impl Block {
    /// Complete every request available; true if any was. Stops when a pass finds none,
    /// so an avail index the ring cannot hold (refused by the queue) cannot spin it.
    fn drain(&self, a: &mut Active) -> bool {
        let mut used = false;
        loop {
            let _ = a.queue.disable_notification(&a.mem);
            let mut progressed = false;
            while let Some(desc) = a.queue.pop_descriptor_chain(&a.mem) {
                let head = desc.head_index();
                let len = match parse_chain(&a.mem, desc) {
                    Ok(chain) => self.execute(&a.mem, &chain),
                    Err(e) => {
                        limited_log!(
                            BAD_REQUEST,
                            debug,
                            "{}: chain {head} refused: {e}",
                            self.label
                        );
                        0
                    }
                };
                if a.queue.add_used(&a.mem, head, len).is_err() {
                    limited_log!(
                        BAD_REQUEST,
                        debug,
                        "{}: used ring write for {head} failed",
                        self.label
                    );
                }
                progressed = true;
                used = true;
            }
            if !progressed || !a.queue.enable_notification(&a.mem).unwrap_or(false) {
                break;
            }
        }
        used
    }
}

#[cfg(test)]
mod tests;
