//! virtio-blk (virtio 1.2, 5.2): one request queue, requests read from hostile chains
//! ([`crate::virtio::chain`]), carried out by a worker pool ([`workers`]) on a
//! [`DiskFile`] ([`request`] says what each request means).
//!
//! Offered: FLUSH, SEG_MAX, BLK_SIZE, RO (readonly disks), DISCARD and WRITE_ZEROES
//! (one segment each), INDIRECT_DESC and EVENT_IDX; GET_ID answers the serial, which
//! Linux shows as /dev/disk/by-id/virtio-SERIAL.
//!
//! On the I/O thread the device only moves chains: it pops and checks them and hands
//! them to the workers, which put each into the used ring when done. Several requests
//! are in flight at once, at most the queue's size (all a driver can have outstanding):
//! one that publishes the same descriptors again and again cannot queue unbounded work.

pub mod disk;
pub mod request;
pub mod workers;

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;

use super::{ActivateError, Activation, IoEvents, VirtioDevice};
pub use disk::{DiskError, DiskFile, DiskOptions, SECTOR_SIZE};
use request::Requests;
use workers::Ring;
pub use workers::{ThreadStart, WorkerConfig, Workers};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request the driver may use (config `seg_max`).
pub const SEG_MAX: u32 = 126;
/// Longest serial GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Worker threads per disk: Linux keeps up to the queue size in flight, but a host
/// disk rarely gains past a few concurrent requests per submitter, and each thread
/// costs a stack. 8 covers the depths the benchmark and common guests use.
pub const WORKER_THREADS: usize = 8;
/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Mass storage, "other" (what QEMU's virtio-blk reports).
const PCI_CLASS_STORAGE_OTHER: u32 = 0x01_8000;

/// A virtio-blk device over one disk.
pub struct Block {
    requests: Arc<Requests>,
    workers: Workers,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("requests", &self.requests)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Start the disk's workers. `serial` longer than 20 bytes is cut (the spec layer
    /// refuses that earlier).
    pub fn new(
        label: String,
        disk: DiskFile,
        serial: &str,
        workers: &WorkerConfig,
    ) -> io::Result<Block> {
        let mut s = [0u8; SERIAL_LEN];
        let n = serial.len().min(SERIAL_LEN);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let requests = Arc::new(Requests {
            label,
            disk,
            serial: s,
        });
        Ok(Block {
            workers: Workers::start(requests.clone(), workers)?,
            requests,
        })
    }

    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.requests.disk.size() / SECTOR_SIZE).to_le_bytes());
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
        if self.requests.disk.readonly() {
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
        self.workers.attach(Ring {
            mem: Arc::new(a.mem),
            queue,
            irqs: a.interrupts,
        });
        Ok(())
    }

    /// Waits until no worker is inside a request of the old queue (see [`workers`]).
    fn reset(&mut self) {
        self.workers.cancel();
    }

    /// Runs on a queue notify, and when a completion makes room in a full pool.
    fn process_queue(&mut self, index: usize) {
        if index == 0 {
            self.workers.process();
        }
    }

    fn io_events(&self) -> io::Result<IoEvents> {
        Ok(IoEvents {
            kicks: true,
            backend: vec![(self.workers.wake_fd()?, 0)],
        })
    }
}

#[cfg(test)]
mod tests;
