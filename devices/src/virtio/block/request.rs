//! What one virtio-blk request means (virtio 1.2, 5.2.6), carried out on a [`DiskFile`].
//!
//! A request is a 16-byte header (type, reserved, sector) the device reads, the data
//! buffers, and a status byte the device writes last. Every failure the guest can cause
//! is a status, never an error of Strait: a request outside the disk or misformed is
//! `IOERR`, an unknown type `UNSUPP`, a write to a read-only disk `IOERR`. A chain too
//! broken to carry a status (no writable byte) is completed with length 0.
//!
//! [`Requests::execute`] runs on the block worker threads ([`super::workers`]): it
//! touches only the buffers of a chain already checked against guest RAM
//! ([`crate::virtio::chain`]), never the rings.

use std::io;

use resources::{limited_log, LogLimiter};
use virtio_bindings::virtio_blk::*;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::{DiskFile, SECTOR_SIZE};
use super::{MAX_DISCARD_SECTORS, SERIAL_LEN};
use crate::virtio::chain::{iovecs, Buffer, Chain};

const HEADER_LEN: u64 = 16;
const DISCARD_SEGMENT_LEN: u64 = 16;

pub(super) static BAD_REQUEST: LogLimiter = LogLimiter::new();
static IO_FAILED: LogLimiter = LogLimiter::new();

/// A request's status byte (5.2.6).
pub(super) type Status = u8;
pub(super) const OK: Status = VIRTIO_BLK_S_OK as u8;
pub(super) const IOERR: Status = VIRTIO_BLK_S_IOERR as u8;
pub(super) const UNSUPP: Status = VIRTIO_BLK_S_UNSUPP as u8;

/// What a request needs besides its chain: the disk and what GET_ID answers.
#[derive(Debug)]
pub struct Requests {
    pub(super) label: String,
    pub(super) disk: DiskFile,
    pub(super) serial: [u8; SERIAL_LEN],
}

impl Requests {
    /// Carry out one request; returns the bytes written into the chain.
    pub fn execute(&self, mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
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
