//! The guest's side of PCI, as a Linux guest drives it: config accesses through the ECAM
//! window (PCIe Base 7.2.2) or configuration mechanism #1 (PCI Local Bus 3.0 3.2.2.3.2),
//! bus enumeration following bridges (PCI-to-PCI Bridge 1.2 3.2.5), bounded capability
//! walks (6.7; PCIe Base 7.6), BAR sizing (6.2.5.1) and bridge window decoding.
//!
//! Every access goes through a [`Bus`] by guest address, as a vCPU exit would.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use arch::x86_64::layout;
use devices::bus::Bus;
use devices::pci::regs::*;
use devices::pci::{BarKind, Bdf, ROM_BAR_INDEX};

/// A way into config space. Offsets are bytes in the function's config space; values
/// are little-endian in the low `len` bytes. A master abort reads as all ones.
pub trait ConfigIo {
    fn read(&self, bdf: Bdf, offset: usize, len: usize) -> u32;
    fn write(&self, bdf: Bdf, offset: usize, len: usize, value: u32);

    fn read8(&self, bdf: Bdf, offset: usize) -> u8 {
        self.read(bdf, offset, 1) as u8
    }
    fn read16(&self, bdf: Bdf, offset: usize) -> u16 {
        self.read(bdf, offset, 2) as u16
    }
    fn read32(&self, bdf: Bdf, offset: usize) -> u32 {
        self.read(bdf, offset, 4)
    }
    fn write16(&self, bdf: Bdf, offset: usize, value: u16) {
        self.write(bdf, offset, 2, value.into());
    }
    fn write32(&self, bdf: Bdf, offset: usize, value: u32) {
        self.write(bdf, offset, 4, value);
    }
}

fn from_le(data: &[u8]) -> u32 {
    data.iter().rev().fold(0, |v, b| v << 8 | u32::from(*b))
}

fn bus_read(bus: &Bus, addr: u64, len: usize) -> u32 {
    let mut data = vec![0xff; len];
    if !bus.read(addr, &mut data) {
        data.fill(0xff);
    }
    from_le(&data)
}

/// ECAM accesses on the guest's MMIO bus at `layout::PCI_ECAM_START`.
pub struct Ecam<'a>(pub &'a Bus);

fn ecam_addr(bdf: Bdf, offset: usize) -> u64 {
    let off = u64::from(bdf.bus()) << 20 | u64::from(bdf.devfn()) << 12 | offset as u64;
    layout::PCI_ECAM_START.0 + off
}

impl ConfigIo for Ecam<'_> {
    fn read(&self, bdf: Bdf, offset: usize, len: usize) -> u32 {
        bus_read(self.0, ecam_addr(bdf, offset), len)
    }

    fn write(&self, bdf: Bdf, offset: usize, len: usize, value: u32) {
        self.0
            .write(ecam_addr(bdf, offset), &value.to_le_bytes()[..len]);
    }
}

/// Mechanism #1 accesses on the guest's port bus: address latch at 0xcf8, data at
/// 0xcfc + (offset & 3). It reaches only the first 256 bytes.
pub struct Cf8<'a>(pub &'a Bus);

impl Cf8<'_> {
    fn select(&self, bdf: Bdf, offset: usize) -> Option<u64> {
        if offset > 0xff {
            return None;
        }
        let latch = 1 << 31
            | u32::from(bdf.bus()) << 16
            | u32::from(bdf.devfn()) << 8
            | (offset as u32 & 0xfc);
        let port = u64::from(layout::PCI_CONFIG_ADDRESS_PORT);
        self.0.write(port, &latch.to_le_bytes());
        Some(u64::from(layout::PCI_CONFIG_DATA_PORT) + (offset as u64 & 3))
    }
}

impl ConfigIo for Cf8<'_> {
    fn read(&self, bdf: Bdf, offset: usize, len: usize) -> u32 {
        match self.select(bdf, offset) {
            Some(port) => bus_read(self.0, port, len),
            None => u32::MAX >> (32 - 8 * len),
        }
    }

    fn write(&self, bdf: Bdf, offset: usize, len: usize, value: u32) {
        if let Some(port) = self.select(bdf, offset) {
            self.0.write(port, &value.to_le_bytes()[..len]);
        }
    }
}

/// A function found by enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// The header type register, multi-function bit included.
    pub header_type: u8,
}

/// Depth of bridges followed at most; deeper trees are not built by the VMM.
const MAX_BRIDGE_DEPTH: usize = 8;

fn scan_bus(cfg: &dyn ConfigIo, bus: u8, depth: usize, seen: &mut BTreeSet<u8>) -> Vec<Found> {
    let mut out = Vec::new();
    if depth > MAX_BRIDGE_DEPTH || !seen.insert(bus) {
        return out;
    }
    for device in 0..32u8 {
        for function in 0..8u8 {
            let bdf = Bdf::from_devfn(0, bus, device << 3 | function);
            let vendor = cfg.read16(bdf, VENDOR_ID);
            if vendor == 0xffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            let header_type = cfg.read8(bdf, HEADER_TYPE);
            out.push(Found {
                bdf,
                vendor,
                device: cfg.read16(bdf, DEVICE_ID),
                header_type,
            });
            if header_type & 0x7f == HEADER_TYPE_BRIDGE {
                let secondary = cfg.read8(bdf, SECONDARY_BUS);
                out.extend(scan_bus(cfg, secondary, depth + 1, seen));
            }
            if function == 0 && header_type & HEADER_TYPE_MULTIFUNCTION == 0 {
                break;
            }
        }
    }
    out
}

/// Every function reachable from bus 0, depth first (a bridge's subtree right after it).
pub fn enumerate(cfg: &dyn ConfigIo) -> Vec<Found> {
    scan_bus(cfg, 0, 0, &mut BTreeSet::new())
}

/// The capability list as (ID, offset), at most 48 entries (a loop cannot hang us).
pub fn capabilities(cfg: &dyn ConfigIo, bdf: Bdf) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    if cfg.read16(bdf, STATUS) & STATUS_CAPABILITIES_LIST == 0 {
        return out;
    }
    let mut at = usize::from(cfg.read8(bdf, CAPABILITIES_POINTER) & !3);
    while at >= CAPABILITY_START && out.len() < 48 {
        let header = cfg.read16(bdf, at);
        out.push((header as u8, at));
        at = usize::from((header >> 8) as u8 & !3);
    }
    out
}

/// The extended capability list as (ID, offset), bounded like [`capabilities`]. ID 0
/// with a next pointer is a null capability (a placeholder at 0x100) and is skipped.
pub fn ext_capabilities(cfg: &dyn ConfigIo, bdf: Bdf) -> Vec<(u16, usize)> {
    let mut out = Vec::new();
    let mut at = EXT_CAPABILITY_START;
    for _ in 0..(4096 - EXT_CAPABILITY_START) / 4 {
        let header = cfg.read32(bdf, at);
        if header == 0 || header == u32::MAX {
            break;
        }
        if header & 0xffff != 0 {
            out.push((header as u16, at));
        }
        at = (header >> 20) as usize & !3;
        if at < EXT_CAPABILITY_START {
            break;
        }
    }
    out
}

/// A BAR as sized by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizedBar {
    /// 0..=5, or [`ROM_BAR_INDEX`] for the ROM.
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
}

fn bar_offset(index: u8) -> usize {
    if index == ROM_BAR_INDEX {
        ROM_ADDRESS
    } else {
        BAR0 + 4 * usize::from(index)
    }
}

/// Write all ones to the register at `off`, read back, restore.
fn probe(cfg: &dyn ConfigIo, bdf: Bdf, off: usize) -> u32 {
    let orig = cfg.read32(bdf, off);
    cfg.write32(bdf, off, u32::MAX);
    let v = cfg.read32(bdf, off);
    cfg.write32(bdf, off, orig);
    v
}

/// Size BAR `index` the way Linux's `__pci_read_base` does (the caller turns decode
/// off); `None` for an unimplemented BAR.
pub fn size_bar(cfg: &dyn ConfigIo, bdf: Bdf, index: u8) -> Option<SizedBar> {
    let off = bar_offset(index);
    let raw = cfg.read32(bdf, off);
    let lo = probe(cfg, bdf, off);
    let (kind, mask) = if index == ROM_BAR_INDEX {
        (
            BarKind::Mem32 {
                prefetchable: false,
            },
            lo & ROM_ADDR_MASK,
        )
    } else if raw & BAR_IO_SPACE != 0 {
        (BarKind::Io, lo & BAR_IO_ADDR_MASK)
    } else if raw & BAR_MEM_TYPE_64 != 0 {
        let prefetchable = raw & BAR_MEM_PREFETCHABLE != 0;
        let hi = u64::from(probe(cfg, bdf, off + 4));
        let size = !(hi << 32 | u64::from(lo & BAR_MEM_ADDR_MASK)) + 1;
        let kind = BarKind::Mem64 { prefetchable };
        return (hi << 32 != 0 || lo & BAR_MEM_ADDR_MASK != 0).then_some(SizedBar {
            index,
            kind,
            size,
        });
    } else {
        (
            BarKind::Mem32 {
                prefetchable: false,
            },
            lo & BAR_MEM_ADDR_MASK,
        )
    };
    (mask != 0).then(|| SizedBar {
        index,
        kind,
        size: u64::from(!mask) + 1,
    })
}

/// Size every BAR and the ROM of a type-0 function with decode off, as Linux does,
/// then restore the command register.
pub fn size_bars(cfg: &dyn ConfigIo, bdf: Bdf) -> Vec<SizedBar> {
    let command = cfg.read16(bdf, COMMAND);
    cfg.write16(bdf, COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
    let mut out = Vec::new();
    let mut index = 0;
    while index < 6 {
        let bar = size_bar(cfg, bdf, index);
        let is64 = matches!(
            bar,
            Some(SizedBar {
                kind: BarKind::Mem64 { .. },
                ..
            })
        );
        out.extend(bar);
        index += if is64 { 2 } else { 1 };
    }
    out.extend(size_bar(cfg, bdf, ROM_BAR_INDEX));
    cfg.write16(bdf, COMMAND, command);
    out
}

/// The address BAR `index` is programmed with (both registers of a 64-bit BAR).
pub fn bar_address(cfg: &dyn ConfigIo, bdf: Bdf, index: u8) -> u64 {
    let off = bar_offset(index);
    let lo = cfg.read32(bdf, off);
    if index == ROM_BAR_INDEX {
        return u64::from(lo & ROM_ADDR_MASK);
    }
    if lo & BAR_IO_SPACE != 0 {
        return u64::from(lo & BAR_IO_ADDR_MASK);
    }
    let hi = if lo & BAR_MEM_TYPE_64 != 0 {
        u64::from(cfg.read32(bdf, off + 4))
    } else {
        0
    };
    hi << 32 | u64::from(lo & BAR_MEM_ADDR_MASK)
}

/// A bridge's windows as the guest decodes them; `None` when closed (base > limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeWindows {
    pub io: Option<RangeInclusive<u64>>,
    pub mem: Option<RangeInclusive<u64>>,
    pub prefetchable: Option<RangeInclusive<u64>>,
}

fn window(base: u64, limit: u64) -> Option<RangeInclusive<u64>> {
    (base <= limit).then_some(base..=limit)
}

/// Read the I/O, memory and prefetchable windows of the bridge at `bdf`.
pub fn bridge_windows(cfg: &dyn ConfigIo, bdf: Bdf) -> BridgeWindows {
    let io_base = u64::from(cfg.read8(bdf, IO_BASE) & 0xf0) << 8
        | u64::from(cfg.read16(bdf, IO_BASE_UPPER16)) << 16;
    let io_limit = u64::from(cfg.read8(bdf, IO_LIMIT) & 0xf0) << 8
        | u64::from(cfg.read16(bdf, IO_LIMIT_UPPER16)) << 16
        | 0xfff;
    let mem_base = u64::from(cfg.read16(bdf, MEMORY_BASE) & 0xfff0) << 16;
    let mem_limit = u64::from(cfg.read16(bdf, MEMORY_LIMIT) & 0xfff0) << 16 | 0xf_ffff;
    let pref_base = u64::from(cfg.read16(bdf, PREF_MEMORY_BASE) & 0xfff0) << 16
        | u64::from(cfg.read32(bdf, PREF_BASE_UPPER32)) << 32;
    let pref_limit = u64::from(cfg.read16(bdf, PREF_MEMORY_LIMIT) & 0xfff0) << 16
        | u64::from(cfg.read32(bdf, PREF_LIMIT_UPPER32)) << 32
        | 0xf_ffff;
    BridgeWindows {
        io: window(io_base, io_limit),
        mem: window(mem_base, mem_limit),
        prefetchable: window(pref_base, pref_limit),
    }
}

/// Read `len` bytes (1, 2, 4 or 8) at guest physical `addr` on `bus`; all ones if
/// nothing decodes it.
pub fn mmio_read(bus: &Bus, addr: u64, len: usize) -> u64 {
    let mut data = vec![0xff; len];
    if !bus.read(addr, &mut data) {
        data.fill(0xff);
    }
    data.iter().rev().fold(0, |v, b| v << 8 | u64::from(*b))
}

/// Write the low `len` bytes of `value` at guest physical `addr` on `bus`.
pub fn mmio_write(bus: &Bus, addr: u64, len: usize, value: u64) {
    bus.write(addr, &value.to_le_bytes()[..len]);
}
