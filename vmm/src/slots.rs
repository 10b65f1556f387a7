//! KVM memory slots (KVM API, KVM_SET_USER_MEMORY_REGION): who owns which slot number,
//! and the seam the BAR mapper adds and removes slots through (a VM fd; a recording fake
//! in tests).

use std::io;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// KVM memory slot numbers: the one allocator for guest RAM's slots (taken first, at
/// boot) and the BAR mappings' (taken and given back as the guest moves BARs).
#[derive(Debug)]
pub struct SlotPool {
    next: u32,
    free: Vec<u32>,
}

impl SlotPool {
    pub fn new(first: u32) -> Self {
        SlotPool {
            next: first,
            free: Vec::new(),
        }
    }

    pub fn get(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn put(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// KVM memory slots for BAR mappings (a VM fd; a recording fake in tests).
pub trait MemorySlots: Send + Sync {
    /// Map `size` bytes at guest `gpa` to this process's `host` address in `slot`.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped until [`MemorySlots::remove`] for `slot`.
    unsafe fn add(&self, slot: u32, gpa: u64, size: u64, host: u64) -> io::Result<()>;
    fn remove(&self, slot: u32, gpa: u64) -> io::Result<()>;
}

fn set_region(vm: &VmFd, slot: u32, gpa: u64, size: u64, host: u64) -> io::Result<()> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: the callers' contract: `host..host + size` (size 0 deletes the slot) is a
    // live mapping owned by a VfioPciDevice that outlives the slot.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

impl MemorySlots for VmFd {
    unsafe fn add(&self, slot: u32, gpa: u64, size: u64, host: u64) -> io::Result<()> {
        set_region(self, slot, gpa, size, host)
    }

    fn remove(&self, slot: u32, gpa: u64) -> io::Result<()> {
        set_region(self, slot, gpa, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_pool_hands_out_in_order_and_reuses_freed_slots() {
        let mut p = SlotPool::new(2);
        assert_eq!((p.get(), p.get()), (2, 3));
        p.put(2);
        assert_eq!((p.get(), p.get()), (2, 4));
    }
}
