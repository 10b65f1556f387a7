//! Test helpers for virtio: guest memory with a split virtqueue the test writes by hand
//! (descriptors, avail ring) and reads back (used ring), and temporary disk images.

use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const RAM_SIZE: u64 = 0x10_0000;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x2000;
pub const USED: u64 = 0x3000;
/// Where tests put data buffers.
pub const DATA: u64 = 0x1_0000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// 1 MiB of guest RAM at 0 with one queue of `size` at DESC/AVAIL/USED.
pub struct TestQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    avail_idx: u16,
    /// Where this queue's rings are (DESC/AVAIL/USED for the first queue).
    base: [u64; 3],
}

impl TestQueue {
    pub fn new(size: u16) -> TestQueue {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap();
        TestQueue {
            mem,
            size,
            avail_idx: 0,
            base: [DESC, AVAIL, USED],
        }
    }

    /// Another queue in the same guest RAM, its rings 0x4000 above this one's.
    pub fn next_queue(&self, size: u16) -> TestQueue {
        TestQueue {
            mem: self.mem.clone(),
            size,
            avail_idx: 0,
            base: self.base.map(|a| a + 0x4000),
        }
    }

    /// Write descriptor `i` of the table at `table`.
    pub fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + u64::from(i) * 16);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, at).unwrap();
    }

    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.base[0], i, addr, len, flags, next);
    }

    /// Make the chain starting at `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.base[1] + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Write the avail index directly (a hostile driver may put anything there).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.base[1] + 2))
            .unwrap();
    }

    /// A ready queue over the rings.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.base[0]))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.base[1]))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.base[2]))
            .unwrap();
        q.set_ready(true);
        q
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.base[2] + 2)).unwrap()
    }

    /// Used ring entry `i`: (head, length written).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.base[2] + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("strait-virtio-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file of `bytes` bytes of `fill` in the directory.
    pub fn image(&self, bytes: usize, fill: u8) -> PathBuf {
        let path = self.0.join("disk.img");
        std::fs::write(&path, vec![fill; bytes]).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
