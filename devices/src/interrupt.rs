//! How devices raise interrupts without knowing about KVM.
//!
//! `devices` never touches KVM or VFIO: the VMM implements these traits with
//! KVM GSI routing and irqfds. Devices describe *what* the guest programmed
//! (an MSI address/data pair, a mask bit); the VMM decides *how* it is delivered.

/// An MSI message as the guest programmed it (PCI Local Bus 3.0, 6.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Delivery of message-signalled interrupts for one device.
///
/// Vectors are indexed 0..n within the device's MSI or MSI-X capability. A guest
/// access may cause several calls; the model ends each access that made any with
/// [`MsiRouter::commit`], so a router can batch (one routing-table write per access).
pub trait MsiRouter: Send {
    /// The guest (re)programmed `vector`; route it to `msg` and (un)mask it. `masked`
    /// is the vector's own mask bit (MSI-X vector control, MSI per-vector mask); the
    /// MSI-X function mask comes separately ([`MsiRouter::set_function_mask`]).
    /// Called whenever the address, data or mask of an enabled vector changes.
    fn update(&mut self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()>;
    /// The guest set or cleared the MSI-X function mask: hold (or release) delivery of
    /// every vector without touching routes or what the vectors are programmed with.
    fn set_function_mask(&mut self, masked: bool) -> std::io::Result<()>;
    /// End of one guest access: apply what the calls before it queued.
    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Whether `vector` has an interrupt held back by a mask (for the MSI-X pending bit
    /// array); routers that hold nothing themselves say false.
    fn is_pending(&mut self, _vector: u16) -> bool {
        false
    }
    /// The guest enabled (`Some(n)` with `n` vectors) or disabled (`None`) the capability.
    fn enable(&mut self, vectors: Option<u16>) -> std::io::Result<()>;
    /// Inject `vector` from the VMM side (used for emulated devices and to replay
    /// a pending bit when the guest unmasks a vector).
    fn trigger(&mut self, vector: u16) -> std::io::Result<()>;
}

/// A level or edge line into the IOAPIC, for legacy devices and INTx.
pub trait IrqLine: Send {
    /// Pulse (edge) or assert/deassert (level) the line.
    fn set_level(&mut self, high: bool) -> std::io::Result<()>;
}
