//! Fuzz the queue parser with guest-written rings: the input fills the descriptor
//! table, the avail ring and a few pages of guest RAM; every chain the driver made
//! available is popped and parsed ([`devices::virtio::chain::parse_chain`]). Nothing
//! may panic, loop, or yield a buffer outside guest RAM.
//!
//! `cargo install cargo-fuzz`, then from this directory (no nightly toolchain needed):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run virtqueue -- -max_total_time=60`.
#![no_main]

use devices::virtio::chain::parse_chain;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const RAM: usize = 0x10000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

fuzz_target!(|data: &[u8]| {
    let Some((&size_bits, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (size_bits % 9);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]) else {
        return;
    };
    // The input lands at the descriptor table and runs on through the rings.
    let n = rest.len().min(RAM - DESC as usize);
    if mem.write_slice(&rest[..n], GuestAddress(DESC)).is_err() {
        return;
    }
    let mut q = match Queue::new(size) {
        Ok(q) => q,
        Err(_) => return,
    };
    if q.try_set_desc_table_address(GuestAddress(DESC)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(AVAIL)).is_err()
        || q.try_set_used_ring_address(GuestAddress(USED)).is_err()
    {
        return;
    }
    q.set_ready(true);
    let Ok(iter) = q.iter(&mem) else {
        return;
    };
    for chain in iter.take(usize::from(size)) {
        if let Ok(c) = parse_chain(&mem, chain) {
            for b in c.readable.iter().chain(&c.writable) {
                assert!(mem.address_in_range(b.addr));
                assert!(b.len > 0);
            }
        }
    }
});
