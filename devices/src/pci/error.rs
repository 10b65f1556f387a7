//! Errors of the PCI model. They are all VMM-side mistakes found while building
//! devices (a BAR the header cannot hold, a capability that does not fit, two
//! functions at one address); nothing the guest does produces one.

use super::Bdf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {index} does not exist in a type-{header} header")]
    BadBarIndex { index: u8, header: u8 },
    #[error("BAR {index} is already registered")]
    BarInUse { index: u8 },
    #[error("BAR {index} size {size:#x} is not a power of two in the range this BAR type allows")]
    BadBarSize { index: u8, size: u64 },
    #[error("BAR {index} address {addr:#x} is not aligned to its size or out of its reach")]
    BadBarAddress { index: u8, addr: u64 },
    #[error("BAR {index} is not registered")]
    NoBar { index: u8 },
    #[error("no room for a {len}-byte capability {id:#x} in config space")]
    CapabilitySpaceFull { id: u16, len: usize },
    #[error("extended capability {id:#x} needs a 4 KiB PCIe config space")]
    NoExtendedConfigSpace { id: u16 },
    #[error("{window} window {start:#x}..={end:#x} is misaligned, empty or out of reach")]
    BadBridgeWindow {
        window: &'static str,
        start: u64,
        end: u64,
    },
    #[error("MSI-X layout invalid: {reason}")]
    BadMsixLayout { reason: &'static str },
    #[error("MSI cannot have {vectors} vectors (1, 2, 4, 8, 16 or 32)")]
    BadMsiVectors { vectors: u16 },
    #[error("{bdf} is already occupied")]
    SlotOccupied { bdf: Bdf },
    #[error("no bridge forwards to bus {bus:#04x}, cannot attach {bdf}")]
    NoRouteToBus { bus: u8, bdf: Bdf },
    #[error("bus {bus:#04x} is already a root bus")]
    RootBusTaken { bus: u8 },
    #[error("device at {bdf} is not on segment {segment:#06x}")]
    WrongSegment { bdf: Bdf, segment: u16 },
}
