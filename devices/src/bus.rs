//! Address-decoded buses for guest MMIO and port I/O.
//!
//! A [`Bus`] maps inclusive-exclusive guest address ranges to devices. The vCPU loop
//! looks the exit address up here and hands the access to the device with the
//! offset inside its range. Devices are shared (`Arc<Mutex<_>>`) because the same
//! device may sit on more than one bus (a VFIO device's I/O BAR and its config
//! space), and because vCPU threads race on it.

use resources::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes on a bus.
///
/// `offset` is relative to the start of the range the device was inserted at;
/// `base` is that start, for devices inserted at several ranges.
pub trait BusDevice: Send {
    /// Fill `data` with what the guest reads. Unclaimed bytes should read as all ones.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Accept a guest write. A write the device does not understand is dropped.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors when placing a device on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty")]
    EmptyRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("no device at {base:#x} to remove")]
    NotFound { base: u64 },
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_list();
        for (b, e) in &self.ranges {
            l.entry(&format_args!("{:#x}..{:#x}", b, b + e.len));
        }
        l.finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::EmptyRange { base, len });
        };
        if let Some((b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Remove the device whose range starts at `base`.
    pub fn remove(&mut self, base: u64) -> Result<SharedDevice, BusError> {
        self.ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound { base })
    }

    /// Find the device covering `addr`: (range start, device).
    pub fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (b, e) = self.ranges.range(..=addr).next_back()?;
        (addr - b < e.len).then_some((*b, &e.device))
    }

    /// Dispatch a read; returns false when nothing decodes `addr` (the caller fills ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                lock(dev).read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when nothing decodes `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((base, dev)) => {
                lock(dev).write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _b: u64, off: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(off as u8));
        }
        fn write(&mut self, _b: u64, _o: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn dev(v: u8) -> SharedDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn resolves_inside_and_misses_outside() {
        let mut bus = Bus::new();
        bus.insert(dev(1), 0x1000, 0x10).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x1004, &mut d));
        assert_eq!(d[0], 5);
        assert!(!bus.read(0x1010, &mut d));
        assert!(!bus.read(0xfff, &mut d));
    }

    #[test]
    fn rejects_overlap_and_empty() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x1000, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(0), 0x100f, 1),
            Err(BusError::Overlap {
                base: 0x100f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev(0), 0xff8, 0x10),
            Err(BusError::Overlap {
                base: 0xff8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(dev(0), 0x2000, 0),
            Err(BusError::EmptyRange {
                base: 0x2000,
                len: 0
            })
        );
        bus.insert(dev(0), 0x1010, 0x10).unwrap();
    }

    #[test]
    fn remove_frees_range() {
        let mut bus = Bus::new();
        bus.insert(dev(0), 0x1000, 0x10).unwrap();
        bus.remove(0x1000).unwrap();
        assert!(bus.remove(0x1000).is_err());
        bus.insert(dev(0), 0x1008, 0x10).unwrap();
    }
}
