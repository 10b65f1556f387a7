//! BAR registers of an emulated config space: registration, sizing and moves.
//!
//! PCI Local Bus 3.0 6.2.5: a BAR's low bits say what it decodes (I/O, 32- or
//! 64-bit memory, prefetchable) and are read-only; the address bits below the
//! BAR's size are read-only zero, so writing all ones and reading back yields
//! the size. A 64-bit BAR spans two registers. The expansion ROM BAR (6.2.5.2)
//! has an enable bit and 2 KiB granularity.
//!
//! The VMM maps each BAR at the address it last saw; a guest write that leaves
//! an enabled BAR (decode on in the command register, and the ROM enable bit
//! for the ROM) at a different address yields a [`BarMove`]. A BAR holding the
//! sizing pattern is not reported: that is a probe, not a placement.

use super::config::{HeaderType, PciConfigSpace};
use super::error::PciError;
use super::regs::*;
use super::{BarInfo, BarKind, BarMove};

/// BAR index used for the expansion ROM in [`BarInfo`] and [`BarMove`].
pub const ROM_BAR_INDEX: u8 = 6;

/// State of one BAR slot (0..=5 for BARs, 6 for the ROM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BarSlot {
    Empty,
    /// The second register of the 64-bit BAR below.
    Upper,
    Used {
        kind: BarKind,
        size: u64,
        /// Address the VMM has mapped: the last one reported or set.
        mapped: u64,
    },
}

impl From<BarKind> for resources::BarClass {
    /// The placement class of a BAR, for [`resources::place_bars`].
    fn from(kind: BarKind) -> Self {
        match kind {
            BarKind::Io => Self::Io,
            BarKind::Mem32 { prefetchable } => Self::Mem32 { prefetchable },
            BarKind::Mem64 { prefetchable } => Self::Mem64 { prefetchable },
        }
    }
}

/// The BAR's Prefetchable bit (PCI Local Bus 3.0, 6.2.5.1).
fn prefetch_bit(prefetchable: bool) -> u32 {
    if prefetchable {
        BAR_MEM_PREFETCHABLE
    } else {
        0
    }
}

fn size_ok(kind: BarKind, size: u64) -> bool {
    let (min, max) = match kind {
        BarKind::Io => (4, 1 << 16),
        BarKind::Mem32 { .. } => (16, 1 << 31),
        BarKind::Mem64 { .. } => (16, 1 << 63),
    };
    size.is_power_of_two() && (min..=max).contains(&size)
}

impl PciConfigSpace {
    fn bar_count(&self) -> u8 {
        match self.header_type() {
            HeaderType::Normal => 6,
            HeaderType::Bridge => 2,
        }
    }

    fn header_number(&self) -> u8 {
        match self.header_type() {
            HeaderType::Normal => 0,
            HeaderType::Bridge => 1,
        }
    }

    fn bar_offset(&self, index: u8) -> usize {
        match (index, self.header_type()) {
            (ROM_BAR_INDEX, HeaderType::Normal) => ROM_ADDRESS,
            (ROM_BAR_INDEX, HeaderType::Bridge) => ROM_ADDRESS_TYPE1,
            (i, _) => BAR0 + 4 * usize::from(i),
        }
    }

    /// Register BAR `index` (0..=5, or 0..=1 for a bridge) of `kind` and `size`
    /// at address 0. Memory BARs are non-prefetchable except `Mem64` with
    /// `prefetchable: true`.
    pub fn add_bar(&mut self, index: u8, kind: BarKind, size: u64) -> Result<(), PciError> {
        let regs: u8 = if matches!(kind, BarKind::Mem64 { .. }) {
            2
        } else {
            1
        };
        if index
            .checked_add(regs)
            .is_none_or(|end| end > self.bar_count())
        {
            return Err(PciError::BadBarIndex {
                index,
                header: self.header_number(),
            });
        }
        let i = usize::from(index);
        if self.bars[i] != BarSlot::Empty || (regs == 2 && self.bars[i + 1] != BarSlot::Empty) {
            return Err(PciError::BarInUse { index });
        }
        if !size_ok(kind, size) {
            return Err(PciError::BadBarSize { index, size });
        }
        let off = self.bar_offset(index);
        let addr_bits = !(size - 1);
        let (flags, mask) = match kind {
            BarKind::Io => (BAR_IO_SPACE, BAR_IO_ADDR_MASK),
            BarKind::Mem32 { prefetchable } => (prefetch_bit(prefetchable), BAR_MEM_ADDR_MASK),
            BarKind::Mem64 { prefetchable } => (
                BAR_MEM_TYPE_64 | prefetch_bit(prefetchable),
                BAR_MEM_ADDR_MASK,
            ),
        };
        self.set_u32(off, flags);
        self.set_wmask(off, 4, addr_bits as u32 & mask);
        if regs == 2 {
            self.set_u32(off + 4, 0);
            self.set_wmask(off + 4, 4, (addr_bits >> 32) as u32);
            self.bars[i + 1] = BarSlot::Upper;
        }
        self.bars[i] = BarSlot::Used {
            kind,
            size,
            mapped: 0,
        };
        Ok(())
    }

    /// Register the expansion ROM BAR (2 KiB..=2 GiB, a power of two), disabled.
    pub fn add_rom_bar(&mut self, size: u64) -> Result<(), PciError> {
        let index = ROM_BAR_INDEX;
        if self.bars[usize::from(index)] != BarSlot::Empty {
            return Err(PciError::BarInUse { index });
        }
        if !size.is_power_of_two() || !(0x800..=1 << 31).contains(&size) {
            return Err(PciError::BadBarSize { index, size });
        }
        let off = self.bar_offset(index);
        self.set_u32(off, 0);
        self.set_wmask(off, 4, (!(size - 1) as u32 & ROM_ADDR_MASK) | ROM_ENABLE);
        self.bars[usize::from(index)] = BarSlot::Used {
            kind: BarKind::Mem32 {
                prefetchable: false,
            },
            size,
            mapped: 0,
        };
        Ok(())
    }

    fn used(&self, index: u8) -> Option<(BarKind, u64, u64)> {
        match self.bars.get(usize::from(index)) {
            Some(BarSlot::Used { kind, size, mapped }) => Some((*kind, *size, *mapped)),
            _ => None,
        }
    }

    /// Address currently in the registers of a used BAR.
    fn current_addr(&self, index: u8, kind: BarKind) -> u64 {
        let off = self.bar_offset(index);
        let lo = self.read_u32(off);
        match (index, kind) {
            (ROM_BAR_INDEX, _) => u64::from(lo & ROM_ADDR_MASK),
            (_, BarKind::Io) => u64::from(lo & BAR_IO_ADDR_MASK),
            (_, BarKind::Mem32 { .. }) => u64::from(lo & BAR_MEM_ADDR_MASK),
            (_, BarKind::Mem64 { .. }) => {
                u64::from(lo & BAR_MEM_ADDR_MASK) | u64::from(self.read_u32(off + 4)) << 32
            }
        }
    }

    /// The address programmed in BAR `index`, if registered.
    pub fn bar_addr(&self, index: u8) -> Option<u64> {
        self.used(index)
            .map(|(kind, _, _)| self.current_addr(index, kind))
    }

    /// VMM-side placement of BAR `index` at `addr` (aligned to its size, within
    /// reach of its registers). Recorded as mapped: no move is reported for it.
    pub fn set_bar_addr(&mut self, index: u8, addr: u64) -> Result<(), PciError> {
        let (kind, size, _) = self.used(index).ok_or(PciError::NoBar { index })?;
        let reach = match kind {
            BarKind::Mem64 { .. } => u64::MAX,
            BarKind::Io | BarKind::Mem32 { .. } => u64::from(u32::MAX),
        };
        if addr & (size - 1) != 0 || addr > reach - (size - 1) {
            return Err(PciError::BadBarAddress { index, addr });
        }
        let off = self.bar_offset(index);
        let keep = match (index, kind) {
            (ROM_BAR_INDEX, _) => ROM_ENABLE,
            (_, BarKind::Io) => !BAR_IO_ADDR_MASK,
            _ => !BAR_MEM_ADDR_MASK,
        };
        let lo = (self.read_u32(off) & keep) | addr as u32;
        self.set_u32(off, lo);
        if matches!(kind, BarKind::Mem64 { .. }) {
            self.set_u32(off + 4, (addr >> 32) as u32);
        }
        self.bars[usize::from(index)] = BarSlot::Used {
            kind,
            size,
            mapped: addr,
        };
        Ok(())
    }

    /// Enable the ROM BAR's decode from the VMM side (as firmware would).
    pub fn set_rom_enabled(&mut self, on: bool) {
        let off = self.bar_offset(ROM_BAR_INDEX);
        let v = self.read_u32(off) & !ROM_ENABLE;
        self.set_u32(off, v | if on { ROM_ENABLE } else { 0 });
    }

    /// Registered BARs as currently programmed; the ROM has index 6, kind `Mem32`.
    pub fn bars(&self) -> Vec<BarInfo> {
        (0..=ROM_BAR_INDEX)
            .filter_map(|index| {
                let (kind, size, _) = self.used(index)?;
                let addr = self.current_addr(index, kind);
                Some(BarInfo {
                    index,
                    kind,
                    size,
                    addr,
                })
            })
            .collect()
    }

    /// The ROM BAR's enable bit, if there is a ROM BAR.
    pub(super) fn rom_enable_bit(&self) -> Option<bool> {
        self.used(ROM_BAR_INDEX)?;
        Some(self.read_u32(self.bar_offset(ROM_BAR_INDEX)) & ROM_ENABLE != 0)
    }

    fn decode_enabled(&self, index: u8, kind: BarKind) -> bool {
        let cmd = self.command();
        match (index, kind) {
            (ROM_BAR_INDEX, _) => {
                cmd & COMMAND_MEMORY != 0 && self.read_u32(self.bar_offset(index)) & ROM_ENABLE != 0
            }
            (_, BarKind::Io) => cmd & COMMAND_IO != 0,
            _ => cmd & COMMAND_MEMORY != 0,
        }
    }

    /// Whether a register of the BAR holds the all-ones sizing pattern.
    fn sizing(&self, index: u8, kind: BarKind) -> bool {
        let off = self.bar_offset(index);
        let regs = if matches!(kind, BarKind::Mem64 { .. }) {
            2
        } else {
            1
        };
        (0..regs).any(|r| {
            let mut mask = self.wmask_u32(off + 4 * r);
            if index == ROM_BAR_INDEX {
                mask &= !ROM_ENABLE;
            }
            mask != 0 && self.read_u32(off + 4 * r) & mask == mask
        })
    }

    /// Moves of enabled BARs since they were last mapped; marks them mapped.
    pub(super) fn take_bar_moves(&mut self) -> Vec<BarMove> {
        let mut moves = Vec::new();
        for index in 0..=ROM_BAR_INDEX {
            let Some((kind, size, mapped)) = self.used(index) else {
                continue;
            };
            if !self.decode_enabled(index, kind) || self.sizing(index, kind) {
                continue;
            }
            let new = self.current_addr(index, kind);
            if new != mapped {
                moves.push(BarMove {
                    index,
                    kind,
                    size,
                    old: mapped,
                    new,
                });
                self.bars[usize::from(index)] = BarSlot::Used {
                    kind,
                    size,
                    mapped: new,
                };
            }
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{ConfigSize, PciIds};

    fn cfg() -> PciConfigSpace {
        PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie)
    }

    fn write32(c: &mut PciConfigSpace, off: usize, v: u32) -> crate::pci::ConfigWriteResult {
        c.write(off / 4, 0, &v.to_le_bytes())
    }

    fn size_probe(c: &mut PciConfigSpace, off: usize) -> u32 {
        write32(c, off, u32::MAX);
        c.read_u32(off)
    }

    const PREF64: BarKind = BarKind::Mem64 { prefetchable: true };

    #[test]
    fn io_bar_sizes_and_keeps_io_bit() {
        let mut c = cfg();
        c.add_bar(0, BarKind::Io, 0x20).unwrap();
        assert_eq!(c.read_u32(BAR0), 1);
        assert_eq!(size_probe(&mut c, BAR0), 0xffff_ffe1);
    }

    #[test]
    fn mem32_bar_sizes() {
        let mut c = cfg();
        c.add_bar(
            1,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x100_0000,
        )
        .unwrap();
        assert_eq!(size_probe(&mut c, BAR0 + 4), 0xff00_0000);
    }

    #[test]
    fn mem32_prefetchable_bar_shows_bit_3_and_places_as_prefetchable() {
        let mut c = cfg();
        let kind = BarKind::Mem32 { prefetchable: true };
        c.add_bar(1, kind, 0x10_0000).unwrap();
        assert_eq!(c.read_u32(BAR0 + 4), 0x8);
        assert_eq!(size_probe(&mut c, BAR0 + 4), 0xfff0_0008);
        assert_eq!(
            resources::BarClass::from(kind),
            resources::BarClass::Mem32 { prefetchable: true }
        );
    }

    #[test]
    fn mem64_prefetchable_bar_spans_two_registers() {
        let mut c = cfg();
        c.add_bar(2, PREF64, 1 << 36).unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0xc);
        // 64 GiB: no writable bits in the low register beyond the flags.
        assert_eq!(size_probe(&mut c, BAR0 + 8), 0xc);
        assert_eq!(size_probe(&mut c, BAR0 + 12), 0xffff_fff0);
    }

    #[test]
    fn small_mem64_bar_high_register_fully_writable() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem64 {
                prefetchable: false,
            },
            0x4000,
        )
        .unwrap();
        assert_eq!(size_probe(&mut c, BAR0), 0xffff_c004);
        assert_eq!(size_probe(&mut c, BAR0 + 4), u32::MAX);
    }

    #[test]
    fn unimplemented_bar_reads_zero_when_sized() {
        let mut c = cfg();
        assert_eq!(size_probe(&mut c, BAR0 + 20), 0);
    }

    #[test]
    fn rom_bar_sizes_with_enable_bit() {
        let mut c = cfg();
        c.add_rom_bar(0x2_0000).unwrap();
        assert_eq!(size_probe(&mut c, ROM_ADDRESS), 0xfffe_0001);
        // Sizing with the enable bit clear.
        assert_eq!(
            {
                write32(&mut c, ROM_ADDRESS, !ROM_ENABLE);
                c.read_u32(ROM_ADDRESS)
            },
            0xfffe_0000
        );
    }

    #[test]
    fn bridge_rom_is_at_0x38() {
        let mut c = PciConfigSpace::new_type1(PciIds::default(), ConfigSize::Pcie);
        c.add_rom_bar(0x800).unwrap();
        assert_eq!(size_probe(&mut c, ROM_ADDRESS_TYPE1), 0xffff_f801);
    }

    #[test]
    fn registration_errors() {
        let mut c = cfg();
        assert_eq!(
            c.add_bar(
                6,
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1000
            ),
            Err(PciError::BadBarIndex {
                index: 6,
                header: 0
            })
        );
        assert_eq!(
            c.add_bar(5, PREF64, 0x1000),
            Err(PciError::BadBarIndex {
                index: 5,
                header: 0
            })
        );
        c.add_bar(0, PREF64, 0x1000).unwrap();
        assert_eq!(
            c.add_bar(
                1,
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1000
            ),
            Err(PciError::BarInUse { index: 1 })
        );
        assert_eq!(
            c.add_bar(
                2,
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1800
            ),
            Err(PciError::BadBarSize {
                index: 2,
                size: 0x1800
            })
        );
        assert_eq!(
            c.add_bar(2, BarKind::Io, 2),
            Err(PciError::BadBarSize { index: 2, size: 2 })
        );
        assert_eq!(
            c.add_rom_bar(0x400),
            Err(PciError::BadBarSize {
                index: 6,
                size: 0x400
            })
        );
    }

    #[test]
    fn bridge_has_two_bars() {
        let mut c = PciConfigSpace::new_type1(PciIds::default(), ConfigSize::Pcie);
        assert_eq!(
            c.add_bar(
                2,
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1000
            ),
            Err(PciError::BadBarIndex {
                index: 2,
                header: 1
            })
        );
        c.add_bar(0, PREF64, 0x1000).unwrap();
    }

    #[test]
    fn set_bar_addr_programs_registers_and_bars_lists_them() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.add_bar(2, PREF64, 1 << 33).unwrap();
        c.add_rom_bar(0x1_0000).unwrap();
        c.set_bar_addr(0, 0xc000_0000).unwrap();
        c.set_bar_addr(2, 0x40_0000_0000).unwrap();
        c.set_bar_addr(6, 0xc001_0000).unwrap();
        assert_eq!(c.read_u32(BAR0 + 8), 0xc);
        assert_eq!(c.read_u32(BAR0 + 12), 0x40);
        let bars = c.bars();
        assert_eq!(bars.len(), 3);
        assert_eq!(
            bars[1],
            BarInfo {
                index: 2,
                kind: PREF64,
                size: 1 << 33,
                addr: 0x40_0000_0000
            }
        );
        assert_eq!(bars[2].index, ROM_BAR_INDEX);
        assert_eq!(c.bar_addr(6), Some(0xc001_0000));
    }

    #[test]
    fn set_bar_addr_rejects_misaligned_and_unreachable() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        assert_eq!(
            c.set_bar_addr(0, 0x800),
            Err(PciError::BadBarAddress {
                index: 0,
                addr: 0x800
            })
        );
        assert_eq!(
            c.set_bar_addr(0, 1 << 32),
            Err(PciError::BadBarAddress {
                index: 0,
                addr: 1 << 32
            })
        );
        assert_eq!(c.set_bar_addr(1, 0), Err(PciError::NoBar { index: 1 }));
    }

    #[test]
    fn move_of_enabled_bar_is_reported() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.set_bar_addr(0, 0xc000_0000).unwrap();
        write32(&mut c, COMMAND, u32::from(COMMAND_MEMORY));
        let r = write32(&mut c, BAR0, 0xc010_0000);
        assert_eq!(
            r.bar_moves,
            vec![BarMove {
                index: 0,
                kind: BarKind::Mem32 {
                    prefetchable: false
                },
                size: 0x1000,
                old: 0xc000_0000,
                new: 0xc010_0000
            }]
        );
        // Writing the same address again is not a move.
        assert!(write32(&mut c, BAR0, 0xc010_0000).bar_moves.is_empty());
    }

    #[test]
    fn move_while_disabled_is_reported_on_enable() {
        let mut c = cfg();
        c.add_bar(0, BarKind::Io, 0x100).unwrap();
        c.set_bar_addr(0, 0x1000).unwrap();
        assert!(write32(&mut c, BAR0, 0x2000).bar_moves.is_empty());
        let r = write32(&mut c, COMMAND, u32::from(COMMAND_IO));
        assert_eq!(r.io_decode, Some(true));
        assert_eq!(r.bar_moves.len(), 1);
        assert_eq!((r.bar_moves[0].old, r.bar_moves[0].new), (0x1000, 0x2000));
    }

    #[test]
    fn sizing_while_enabled_is_not_a_move() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.set_bar_addr(0, 0xc000_0000).unwrap();
        write32(&mut c, COMMAND, u32::from(COMMAND_MEMORY));
        assert!(write32(&mut c, BAR0, u32::MAX).bar_moves.is_empty());
        assert!(write32(&mut c, BAR0, 0xc000_0000).bar_moves.is_empty());
    }

    #[test]
    fn mem64_move_reports_each_half() {
        let mut c = cfg();
        c.add_bar(0, PREF64, 0x1000).unwrap();
        c.set_bar_addr(0, 0x1_0000_0000).unwrap();
        write32(&mut c, COMMAND, u32::from(COMMAND_MEMORY));
        let lo = write32(&mut c, BAR0, 0x2000_0000);
        assert_eq!(lo.bar_moves[0].new, 0x1_2000_0000);
        let hi = write32(&mut c, BAR0 + 4, 2);
        assert_eq!(
            (hi.bar_moves[0].old, hi.bar_moves[0].new),
            (0x1_2000_0000, 0x2_2000_0000)
        );
    }

    #[test]
    fn io_bar_ignores_memory_decode() {
        let mut c = cfg();
        c.add_bar(0, BarKind::Io, 0x10).unwrap();
        write32(&mut c, COMMAND, u32::from(COMMAND_MEMORY));
        assert!(write32(&mut c, BAR0, 0x3000).bar_moves.is_empty());
    }

    #[test]
    fn rom_move_needs_rom_enable() {
        let mut c = cfg();
        c.add_rom_bar(0x1_0000).unwrap();
        c.set_bar_addr(ROM_BAR_INDEX, 0xc000_0000).unwrap();
        write32(&mut c, COMMAND, u32::from(COMMAND_MEMORY));
        assert!(write32(&mut c, ROM_ADDRESS, 0xc100_0000)
            .bar_moves
            .is_empty());
        let r = write32(&mut c, ROM_ADDRESS, 0xc100_0001);
        assert_eq!(r.bar_moves.len(), 1);
        assert_eq!(r.bar_moves[0].index, ROM_BAR_INDEX);
        assert_eq!(r.bar_moves[0].new, 0xc100_0000);
    }

    #[test]
    fn rom_enable_bit_switches_are_reported() {
        let mut c = cfg();
        c.add_rom_bar(0x8000).unwrap();
        c.set_bar_addr(ROM_BAR_INDEX, 0xc000_0000).unwrap();
        let r = write32(&mut c, ROM_ADDRESS, 0xc000_0001);
        assert_eq!(r.rom_decode, Some(true));
        assert_eq!(write32(&mut c, ROM_ADDRESS, 0xc000_0001).rom_decode, None);
        assert_eq!(
            write32(&mut c, ROM_ADDRESS, 0xc000_0000).rom_decode,
            Some(false)
        );
    }

    #[test]
    fn set_rom_enabled_keeps_address() {
        let mut c = cfg();
        c.add_rom_bar(0x800).unwrap();
        c.set_bar_addr(ROM_BAR_INDEX, 0xc000_0800).unwrap();
        c.set_rom_enabled(true);
        assert_eq!(c.read_u32(ROM_ADDRESS), 0xc000_0801);
        assert_eq!(c.bar_addr(ROM_BAR_INDEX), Some(0xc000_0800));
    }

    #[test]
    fn flag_bits_are_read_only() {
        let mut c = cfg();
        c.add_bar(
            0,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        write32(&mut c, BAR0, 0xc000_000f);
        assert_eq!(c.read_u32(BAR0), 0xc000_0000);
    }
}
