//! MSI and MSI-X capabilities of a passed-through function, emulated with the
//! `devices` crate's models (PCI Local Bus 3.0, 6.8.1 and 6.8.2). A guest access
//! returns what it changed; the device applies that with [`crate::irq::MsiLine`].
//!
//! The models add their capability to a config space they are given. The
//! device's capability sits at the device's own offset, so each model gets a
//! scratch config space where its capability is the first one (0x40), and
//! guest offsets are rebased onto it. The capability's ID and next pointer
//! stay the device's, so the guest walks the device's list unchanged.

use devices::interrupt::MsiChange;
use devices::pci::msix::MsixLayout;
use devices::pci::{ConfigSize, Msi, Msix, PciConfigSpace, PciIds};

use super::setup::{u16_at, u32_at};
use crate::device::Span;
use crate::irq::{IrqProvider, MsiKind, MsiLine};

/// Where the models put their capability in the scratch space.
const SCRATCH_CAP: usize = 0x40;

/// A capability at device offset `at` held in a scratch config space.
pub(crate) struct Rebased {
    scratch: PciConfigSpace,
    at: usize,
    len: usize,
}

impl Rebased {
    fn new(at: usize, len: usize) -> Self {
        let scratch = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pci);
        Rebased { scratch, at, len }
    }

    /// Whether dword-aligned config offset `off` belongs to the capability.
    pub(crate) fn covers(&self, off: usize) -> bool {
        off >= self.at && off < self.at + self.len.next_multiple_of(4)
    }

    fn map(&self, off: usize) -> usize {
        SCRATCH_CAP + off - self.at
    }

    /// The guest's dword at `off` (covered), `device` being the device's dword.
    pub(crate) fn read(&self, off: usize, device: u32) -> u32 {
        let v = self.scratch.read_u32(self.map(off));
        if off == self.at {
            (v & 0xffff_0000) | (device & 0xffff)
        } else {
            v
        }
    }

    /// Apply a guest write inside dword `off`; returns the scratch byte offset.
    fn write(&mut self, off: usize, offset: u64, data: &[u8]) -> usize {
        let m = self.map(off);
        self.scratch.write(m / 4, offset, data);
        m + offset as usize
    }
}

/// The emulated MSI-X capability, table and PBA.
pub(crate) struct EmulatedMsix {
    pub(crate) emu: Msix,
    pub(crate) cap: Rebased,
    pub(crate) line: MsiLine,
}

/// Read the device's MSI-X capability at `at`.
pub(crate) fn msix_layout(cfg: &[u8], at: usize) -> MsixLayout {
    let control = u16_at(cfg, at + 2);
    let table = u32_at(cfg, at + 4);
    let pba = u32_at(cfg, at + 8);
    MsixLayout {
        vectors: (control & 0x7ff) + 1,
        table_bir: (table & 7) as u8,
        table_offset: table & !7,
        pba_bir: (pba & 7) as u8,
        pba_offset: pba & !7,
    }
}

impl EmulatedMsix {
    pub(crate) fn new(
        layout: MsixLayout,
        at: usize,
        provider: &mut dyn IrqProvider,
    ) -> Result<Self, CapError> {
        let mut emu = Msix::new(layout).map_err(CapError::Model)?;
        let kind = MsiKind::Msix;
        let wiring = provider
            .msi(kind, layout.vectors, MsiLine::holder(kind))
            .map_err(CapError::Wire)?;
        let line = MsiLine::new(kind, wiring);
        let mut cap = Rebased::new(at, 12);
        emu.add_to(&mut cap.scratch).map_err(CapError::Model)?;
        Ok(EmulatedMsix { emu, cap, line })
    }

    /// A guest config write in the capability (offset `off`, covered): what changed.
    pub(crate) fn config_write(&mut self, off: usize, offset: u64, data: &[u8]) -> Vec<MsiChange> {
        let at = self.cap.write(off, offset, data);
        self.emu.config_write(&self.cap.scratch, at, data.len())
    }

    /// Back to the power-on state, as a reset leaves the function (PCI Local Bus 3.0,
    /// 6.8.2.3 and 6.8.2.9): MSI-X and the function mask off, every table entry zero and
    /// masked, nothing pending. Replayed through the model; returns what changed.
    pub(crate) fn power_on(&mut self) -> Vec<MsiChange> {
        let mut changes = self.config_write(self.cap.at, 2, &[0, 0]);
        let l = *self.emu.layout();
        for v in 0..l.vectors {
            let entry = u64::from(l.table_offset) + u64::from(v) * 16;
            for (at, value) in [(0, 0u32), (4, 0), (8, 0), (12, 1)] {
                let c = self
                    .emu
                    .write(l.table_bir, entry + at, &value.to_le_bytes());
                changes.extend(c.unwrap_or_default());
            }
            self.emu.set_pending(v, false);
        }
        changes
    }

    /// Spans of BAR `bar` that must trap: the table and the PBA.
    pub(crate) fn holes(&self, bar: u8) -> Vec<Span> {
        super::setup::msix_holes(self.emu.layout(), bar)
    }
}

/// The emulated MSI capability.
pub(crate) struct EmulatedMsi {
    pub(crate) emu: Msi,
    pub(crate) cap: Rebased,
    pub(crate) line: MsiLine,
}

impl EmulatedMsi {
    /// Mirror the device's MSI capability at `at`: its vector count, address
    /// width and per-vector masking.
    pub(crate) fn new(
        cfg: &[u8],
        at: usize,
        provider: &mut dyn IrqProvider,
    ) -> Result<Self, CapError> {
        let control = u16_at(cfg, at + 2);
        let vectors = 1u16 << ((control >> 1) & 7).min(5);
        let bits64 = control & (1 << 7) != 0;
        let pvm = control & (1 << 8) != 0;
        let len = match (bits64, pvm) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        };
        let mut emu = Msi::new(vectors, bits64, pvm).map_err(CapError::Model)?;
        let kind = MsiKind::Msi;
        let wiring = provider
            .msi(kind, vectors, MsiLine::holder(kind))
            .map_err(CapError::Wire)?;
        let line = MsiLine::new(kind, wiring);
        let mut cap = Rebased::new(at, len);
        emu.add_to(&mut cap.scratch).map_err(CapError::Model)?;
        Ok(EmulatedMsi { emu, cap, line })
    }

    pub(crate) fn config_write(&mut self, off: usize, offset: u64, data: &[u8]) -> Vec<MsiChange> {
        let at = self.cap.write(off, offset, data);
        self.emu.config_write(&mut self.cap.scratch, at, data.len())
    }

    /// Back to the power-on state (PCI Local Bus 3.0, 6.8.1): address, data and mask
    /// bits zero, then MSI off with one vector enabled. Returns what changed.
    pub(crate) fn power_on(&mut self) -> Vec<MsiChange> {
        let at = self.cap.at;
        let mut changes = Vec::new();
        for off in (at + 4..at + self.cap.len).step_by(4) {
            changes.extend(self.config_write(off, 0, &[0; 4]));
        }
        changes.extend(self.config_write(at, 2, &[0, 0]));
        changes
    }
}

/// Why an emulated capability could not be built.
#[derive(Debug)]
pub(crate) enum CapError {
    /// The VMM could not wire the vectors.
    Wire(std::io::Error),
    /// The device's capability does not fit the model.
    Model(devices::pci::PciError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_layout_is_read_from_the_capability() {
        let mut cfg = vec![0u8; 256];
        cfg[0x42..0x44].copy_from_slice(&0x0003u16.to_le_bytes());
        cfg[0x44..0x48].copy_from_slice(&0x2000u32.to_le_bytes());
        cfg[0x48..0x4c].copy_from_slice(&0x3004u32.to_le_bytes());
        let l = msix_layout(&cfg, 0x40);
        assert_eq!(
            l,
            MsixLayout {
                vectors: 4,
                table_bir: 0,
                table_offset: 0x2000,
                pba_bir: 4,
                pba_offset: 0x3000
            }
        );
    }

    #[test]
    fn rebased_capability_keeps_the_device_header() {
        let cap = Rebased::new(0x70, 10);
        assert!(cap.covers(0x70) && cap.covers(0x78) && !cap.covers(0x7c) && !cap.covers(0x6c));
        // Scratch header reads ID 0 next 0 (no capability added); the device's wins.
        assert_eq!(cap.read(0x70, 0x0000_8005) & 0xffff, 0x8005);
    }
}
