//! Reading one descriptor chain the driver made available, as hostile input (virtio 1.2,
//! 2.7.5 split virtqueue descriptors, 2.7.5.3 indirect descriptors).
//!
//! `virtio-queue` walks the chain: it stops after as many descriptors as the queue (or
//! the indirect table) holds, so a loop ends; it refuses an indirect table inside an
//! indirect table and a chain longer than 2^32 bytes. On top of that [`parse_chain`]:
//! - caps the descriptors of one request at [`MAX_DESCRIPTORS`] (an indirect table may
//!   hold 65535);
//! - checks each buffer lies wholly in guest RAM (no wrap, no gap between regions);
//! - drops zero-length buffers, which carry nothing;
//! - requires the device-readable buffers to come before the device-writable ones
//!   (2.7.4.2), as a device that splits request and response at the switch must.
//!
//! A chain that breaks a rule is refused whole: the device completes it with no bytes
//! written, it never reads or writes a byte of it.

use std::io;
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, Permissions,
};

/// Most descriptors one request may use. Linux uses at most `seg_max` + 2 for a block
/// request and 19 for a network packet; this leaves room and bounds the work a guest
/// can ask for per request.
pub const MAX_DESCRIPTORS: usize = 1024;

/// One guest buffer of a chain, checked to lie in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A descriptor chain split into what the device reads and what it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Index of the head descriptor, for the used ring.
    pub head: u16,
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("more than {MAX_DESCRIPTORS} descriptors")]
    TooLong,
    #[error("buffer {addr:#x}+{len:#x} is not inside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the chain has no buffer")]
    Empty,
}

/// Read the chain `desc` into buffers, checking each against `mem` (the memory the
/// chain was popped from).
pub fn parse_chain<M>(mem: &M::Target, desc: DescriptorChain<M>) -> Result<Chain, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut chain = Chain {
        head: desc.head_index(),
        ..Chain::default()
    };
    let mut count = 0usize;
    for d in desc {
        count += 1;
        if count > MAX_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        let (addr, len) = (d.addr(), d.len());
        if len == 0 {
            continue;
        }
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !in_ram(mem, addr, len, access) {
            return Err(ChainError::OutsideRam {
                addr: addr.raw_value(),
                len,
            });
        }
        let buf = Buffer { addr, len };
        if d.is_write_only() {
            chain.writable.push(buf);
        } else if !chain.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            chain.readable.push(buf);
        }
    }
    if chain.readable.is_empty() && chain.writable.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(chain)
}

/// Whether `[addr, addr + len)` is backed by guest RAM, without wrapping.
pub fn in_ram<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    access: Permissions,
) -> bool {
    addr.checked_add(u64::from(len)).is_some() && mem.check_range(addr, len as usize, access)
}

/// Host iovecs for guest buffers, split where guest RAM regions end.
pub fn iovecs(mem: &GuestMemoryMmap, bufs: &[Buffer]) -> io::Result<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(bufs.len());
    for b in bufs {
        for slice in GuestMemoryBackend::get_slices(mem, b.addr, b.len as usize) {
            let slice = slice.map_err(io::Error::other)?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(iov)
}
