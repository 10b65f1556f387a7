//! The buses vCPU exits are dispatched to: port I/O, MMIO, and the MMIO bus of trapped
//! BAR spans. The device manager fills them at boot; the passthrough layer maps and
//! unmaps BAR traps on them while the guest runs.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use devices::bus::Bus;

/// The buses vCPU exits are dispatched to. Cloning shares them.
///
/// MMIO has two buses: the trapped parts of passed-through BARs live on their own, so
/// exits into BAR handlers are counted apart from the rest (the benchmark shows that BAR
/// data accesses cost no exit).
///
/// Lock order: a device handler runs under a bus *read* lock, so a handler must never take
/// a bus write lock (e.g. to move a BAR) itself; it returns the change to the caller,
/// which applies it after dispatch.
#[derive(Debug, Clone, Default)]
pub struct IoBuses {
    pio: Arc<RwLock<Bus>>,
    mmio: Arc<RwLock<Bus>>,
    bar_mmio: Arc<RwLock<Bus>>,
}

impl IoBuses {
    pub fn new(pio: Bus, mmio: Bus) -> Self {
        IoBuses {
            pio: Arc::new(RwLock::new(pio)),
            mmio: Arc::new(RwLock::new(mmio)),
            bar_mmio: Arc::default(),
        }
    }

    /// The MMIO bus of trapped BAR spans, for dispatch.
    pub fn bar_mmio(&self) -> RwLockReadGuard<'_, Bus> {
        self.bar_mmio.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The MMIO bus of trapped BAR spans, to map or unmap BARs.
    pub fn bar_mmio_mut(&self) -> RwLockWriteGuard<'_, Bus> {
        self.bar_mmio.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The port I/O bus, for dispatch. A poisoned lock is recovered: buses hold no
    /// invariant a panicking reader could break.
    pub fn pio(&self) -> RwLockReadGuard<'_, Bus> {
        self.pio.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The MMIO bus, for dispatch.
    pub fn mmio(&self) -> RwLockReadGuard<'_, Bus> {
        self.mmio.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The port I/O bus, to add, move or remove devices.
    pub fn pio_mut(&self) -> RwLockWriteGuard<'_, Bus> {
        self.pio.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The MMIO bus, to add, move or remove devices.
    pub fn mmio_mut(&self) -> RwLockWriteGuard<'_, Bus> {
        self.mmio.write().unwrap_or_else(|p| p.into_inner())
    }
}
