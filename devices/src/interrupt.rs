//! How devices raise interrupts without knowing about KVM.
//!
//! `devices` never touches KVM or VFIO. The MSI and MSI-X models describe *what* a
//! guest access changed as a list of [`MsiChange`]s, which their owner hands to an
//! [`MsiRouter`]; the VMM implements the router with KVM GSI routing and irqfds and
//! decides *how* it is delivered.

/// An MSI message as the guest programmed it (PCI Local Bus 3.0, 6.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// One thing a guest access changed in an MSI or MSI-X capability. Vectors are
/// indexed 0..n within the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiChange {
    /// The guest enabled (`Some(n)` with `n` vectors) or disabled (`None`) the
    /// capability. Enabling is followed by a [`MsiChange::Vector`] for every vector
    /// whose own mask bit is clear.
    Enable(Option<u16>),
    /// The guest set or cleared the MSI-X function mask: hold (or release) every
    /// vector without touching what the vectors are programmed with.
    FunctionMask(bool),
    /// An enabled vector's message or own mask bit changed (MSI-X vector control,
    /// MSI per-vector mask; the function mask comes separately).
    Vector {
        vector: u16,
        msg: MsiMessage,
        masked: bool,
    },
    /// The guest unmasked a vector whose pending bit the model held: deliver it now
    /// (the bit is cleared, PCI Local Bus 3.0 6.8.2.9).
    Deliver(u16),
}

/// Delivery of message-signalled interrupts for one capability of one device.
pub trait MsiRouter: Send {
    /// Apply, in order, what one guest access changed (a router batches: at most one
    /// routing-table write per call).
    fn apply(&mut self, changes: &[MsiChange]) -> std::io::Result<()>;
    /// Inject `vector` from the VMM side (an emulated device's interrupt).
    fn trigger(&mut self, vector: u16) -> std::io::Result<()>;
    /// Whether `vector` has an interrupt held back by a mask (for the MSI-X pending bit
    /// array); routers that hold nothing themselves say false.
    fn is_pending(&mut self, _vector: u16) -> bool {
        false
    }
}

/// A level or edge line into the IOAPIC, for legacy devices and INTx.
pub trait IrqLine: Send {
    /// Pulse (edge) or assert/deassert (level) the line.
    fn set_level(&mut self, high: bool) -> std::io::Result<()>;
}
