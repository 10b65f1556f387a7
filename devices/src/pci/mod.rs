//! The PCI model shared by emulated and passed-through functions.
//!
//! A [`PciDevice`] is one function: config space plus BARs. Config writes do not
//! reach into buses; they return the BAR moves they caused ([`BarMove`]) and the
//! caller (the VMM's device manager) re-maps. This keeps the model testable with
//! no KVM and no VFIO.
//!
//! - [`config`]: config space with write masks, headers, capabilities; BARs in `bar.rs`.
//! - [`root`]: the bus tree of a segment; [`config_access`]: its ECAM and CF8 front-ends.
//! - [`host_bridge`], [`root_port`]: the emulated functions of the root complex.
//! - [`msi`], [`msix`]: message-signalled interrupt capabilities.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bar;

pub mod config;
pub mod config_access;
mod error;
#[cfg(test)]
mod fuzzish;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub(crate) mod ratelimit;
pub mod regs;
pub mod root;
pub mod root_port;
#[cfg(test)]
pub(crate) mod testutil;

pub use bar::ROM_BAR_INDEX;
pub use config::{
    walk_capabilities, walk_ext_capabilities, ConfigSize, HeaderType, PciConfigSpace, PciIds,
};
pub use config_access::{ConfigWriteHandler, PciCf8, PciEcam};
pub use error::PciError;
pub use host_bridge::HostBridge;
pub use msi::Msi;
pub use msix::{Msix, MsixLayout};
pub use resources::{Bdf, BdfError};
pub use root::{PciRoot, SharedPciDevice};
pub use root_port::{LinkSpeed, PortLink, RootPort, RootPortConfig};

/// Which address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

/// One BAR as programmed in the guest's view of config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index 0..=5 (a 64-bit BAR occupies `index` and `index + 1`), 6 for the ROM.
    pub index: u8,
    pub kind: BarKind,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Guest address currently programmed.
    pub addr: u64,
}

/// A BAR the guest moved by writing config space (and then re-enabled decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
    pub old: u64,
    pub new: u64,
}

/// What a config write changed, for the caller to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigWriteResult {
    pub bar_moves: Vec<BarMove>,
    /// Memory or I/O decode was switched (command register); `Some(enabled)`.
    pub mem_decode: Option<bool>,
    pub io_decode: Option<bool>,
    /// The expansion ROM's enable bit was switched (6.2.5.2); `Some(enabled)`. The ROM
    /// decodes only with this bit and memory decode both on.
    pub rom_decode: Option<bool>,
    /// A bridge's Secondary Bus Reset bit went from 0 to 1 (PCI-to-PCI Bridge
    /// 1.2, 3.2.5.18): the caller resets the devices below it, e.g. through
    /// VFIO. Holding or clearing the bit reports nothing.
    pub secondary_bus_reset: bool,
    /// A bridge's I/O, memory or prefetchable window registers were written (PCI-to-PCI
    /// Bridge 1.2, 3.2.5.6-3.2.5.10): what it forwards may have changed.
    pub bridge_windows: bool,
}

/// One PCI function as the guest sees it.
pub trait PciDevice: Send {
    /// Read the 32-bit config register `reg` (byte offset `reg * 4`, 0..1024 for PCIe).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Write `data` (1, 2 or 4 bytes) at byte `offset` inside register `reg`.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult;
    /// The BARs as currently programmed (only implemented, non-empty ones).
    /// Functions without BARs (bridges) keep the default.
    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }
    /// A trapped access to BAR `index` at `offset`. Without BARs, reads float high.
    fn bar_read(&mut self, _index: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    /// A trapped write to BAR `index` at `offset`; dropped without BARs.
    fn bar_write(&mut self, _index: u8, _offset: u64, _data: &[u8]) {}
}
