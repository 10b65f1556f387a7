//! Building a [`super::VfioPciDevice`] from what the device reports: its
//! config space image, BAR kinds (PCI Local Bus 3.0, 6.2.5) with sizes from
//! the VFIO regions, the option ROM, and the host mappings of the BAR parts
//! the plan maps directly.

use devices::pci::regs::CAP_ID_MSIX;
use devices::pci::{walk_capabilities, BarKind, MsixLayout, PciConfigSpace, PciIds, ROM_BAR_INDEX};

use crate::addr::HostPciAddress;
use crate::bars::{plan_bar, BarPlan};
use crate::device::{RegionInfo, Span, VfioDeviceOps, CONFIG_REGION, ROM_REGION};
use crate::error::{Error, Result};
use crate::mapping::HostMapping;

/// Offsets in the type-0 header this module reads.
use devices::pci::regs::{BAR0, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID};

pub(super) fn u16_at(cfg: &[u8], off: usize) -> u16 {
    cfg.get(off..off + 2)
        .map_or(0xffff, |b| u16::from_le_bytes([b[0], b[1]]))
}

pub(super) fn u32_at(cfg: &[u8], off: usize) -> u32 {
    cfg.get(off..off + 4)
        .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The device's config space (256 bytes, or 4 KiB for PCIe).
pub(super) fn read_config(ops: &dyn VfioDeviceOps, addr: HostPciAddress) -> Result<Vec<u8>> {
    let bad = Error::ConfigRegion {
        addr,
        index: CONFIG_REGION,
    };
    let info = ops.region_info(CONFIG_REGION).ok_or(bad)?;
    let len = info.size.min(4096) as usize;
    let mut cfg = vec![0u8; len];
    ops.region_read(CONFIG_REGION, 0, &mut cfg)
        .map_err(|_| Error::ConfigRegion {
            addr,
            index: CONFIG_REGION,
        })?;
    Ok(cfg)
}

pub(super) fn ids(cfg: &[u8]) -> PciIds {
    PciIds {
        vendor: u16_at(cfg, 0),
        device: u16_at(cfg, 2),
        class: u32_at(cfg, 8) >> 8,
        revision: cfg.get(8).copied().unwrap_or(0),
        subsystem_vendor: u16_at(cfg, SUBSYSTEM_VENDOR_ID),
        subsystem: u16_at(cfg, SUBSYSTEM_ID),
    }
}

/// A BAR the device implements.
pub(super) struct DeviceBar {
    pub index: u8,
    pub kind: BarKind,
    pub region: RegionInfo,
}

fn kind_of(raw: u32) -> BarKind {
    if raw & 1 != 0 {
        BarKind::Io
    } else if (raw >> 1) & 3 == 2 {
        BarKind::Mem64 {
            prefetchable: raw & 8 != 0,
        }
    } else {
        // A 32-bit prefetchable BAR is shown non-prefetchable: the model has
        // no such kind, and the guest then only loses write combining.
        BarKind::Mem32
    }
}

/// Guest-visible size: a power of two no smaller than the BAR type allows.
fn bar_size(kind: BarKind, region: u64) -> u64 {
    let min = if kind == BarKind::Io { 4 } else { 16 };
    region.max(min).next_power_of_two()
}

/// A BAR as the guest sees it: its number ([`ROM_BAR_INDEX`] for the option ROM), kind
/// and power-of-two size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBar {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
}

/// The BARs a device with config header `cfg` shows the guest, when its VFIO region
/// `i` (BARs 0-5, the ROM at [`ROM_REGION`]) holds `region_size(i)` bytes. The one rule
/// for both `run` (sizes from VFIO) and `strait plan` (sizes from sysfs).
pub fn guest_bars(cfg: &[u8], region_size: &dyn Fn(u32) -> Option<u64>) -> Vec<GuestBar> {
    let mut bars = Vec::new();
    let mut index = 0u8;
    while index < 6 {
        let raw = u32_at(cfg, BAR0 + 4 * usize::from(index));
        let kind = kind_of(raw);
        let step = if matches!(kind, BarKind::Mem64 { .. }) {
            2
        } else {
            1
        };
        if let Some(region) = region_size(index.into()).filter(|s| *s > 0) {
            bars.push(GuestBar {
                index,
                kind,
                size: bar_size(kind, region),
            });
        }
        index += step;
    }
    if let Some(rom) = region_size(ROM_REGION).filter(|s| *s > 0) {
        bars.push(GuestBar {
            index: ROM_BAR_INDEX,
            kind: BarKind::Mem32,
            size: rom.max(0x800).next_power_of_two(),
        });
    }
    bars
}

/// Register the device's BARs and ROM in the guest's `shadow` header.
pub(super) fn add_bars(
    shadow: &mut PciConfigSpace,
    ops: &dyn VfioDeviceOps,
    cfg: &[u8],
    addr: HostPciAddress,
) -> Result<Vec<DeviceBar>> {
    let mut bars = Vec::new();
    for bar in guest_bars(cfg, &|i| ops.region_info(i).map(|r| r.size)) {
        let err = |source| Error::SetupBar {
            addr,
            index: bar.index,
            source,
        };
        if bar.index == ROM_BAR_INDEX {
            shadow.add_rom_bar(bar.size).map_err(err)?;
            continue;
        }
        shadow.add_bar(bar.index, bar.kind, bar.size).map_err(err)?;
        if let Some(region) = ops.region_info(bar.index.into()) {
            bars.push(DeviceBar {
                index: bar.index,
                kind: bar.kind,
                region,
            });
        }
    }
    Ok(bars)
}

/// Where the device's MSI-X table and PBA live, from its capability in `cfg` (which
/// must hold the capability list: more than the 64 bytes sysfs shows non-root users).
pub fn msix_of(cfg: &[u8]) -> Option<MsixLayout> {
    walk_capabilities(cfg)
        .iter()
        .find(|c| c.0 == CAP_ID_MSIX)
        .map(|c| super::emulated::msix_layout(cfg, c.1))
}

/// The spans of BAR `bar` that trap because they hold the MSI-X table or PBA.
pub fn msix_holes(layout: &MsixLayout, bar: u8) -> Vec<Span> {
    let mut holes = Vec::new();
    if layout.table_bir == bar {
        holes.push(Span {
            offset: layout.table_offset.into(),
            size: layout.table_len(),
        });
    }
    if layout.pba_bir == bar {
        holes.push(Span {
            offset: layout.pba_offset.into(),
            size: layout.pba_len(),
        });
    }
    holes
}

/// A BAR's plan and the host mappings of its directly mapped spans.
pub(super) struct MappedBar {
    pub plan: BarPlan,
    pub maps: Vec<(Span, HostMapping)>,
}

/// Plan `bar` around `holes` and mmap what the plan maps.
pub(super) fn map_bar(
    ops: &dyn VfioDeviceOps,
    bar: &DeviceBar,
    holes: &[Span],
    addr: HostPciAddress,
) -> Result<MappedBar> {
    let plan = plan_bar(bar.index, bar.kind == BarKind::Io, &bar.region, holes);
    let mut maps = Vec::new();
    for span in &plan.mapped {
        let index = u32::from(bar.index);
        let m = ops
            .mmap(index, span.offset, span.size)
            .map_err(|source| Error::MmapRegion {
                addr,
                index,
                offset: span.offset,
                size: span.size,
                source,
            })?;
        log::info!(
            "{addr}: BAR {index} +{:#x} ({:#x} bytes) mapped at host {:#x} (aligned to {})",
            span.offset,
            span.size,
            m.addr(),
            alignment_name(m.addr().wrapping_sub(span.offset))
        );
        maps.push((*span, m));
    }
    Ok(MappedBar { plan, maps })
}

/// The largest of 1 GiB, 2 MiB, 4 KiB that `addr` is a multiple of, as a word.
fn alignment_name(addr: u64) -> &'static str {
    match addr {
        a if a % (1 << 30) == 0 => "1 GiB",
        a if a % (1 << 21) == 0 => "2 MiB",
        a if a % (1 << 12) == 0 => "4 KiB",
        _ => "less than a page",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_kinds_follow_the_low_bits() {
        assert_eq!(kind_of(0x1), BarKind::Io);
        assert_eq!(kind_of(0x0), BarKind::Mem32);
        assert_eq!(kind_of(0x8), BarKind::Mem32);
        assert_eq!(
            kind_of(0x4),
            BarKind::Mem64 {
                prefetchable: false
            }
        );
        assert_eq!(kind_of(0xc), BarKind::Mem64 { prefetchable: true });
    }

    #[test]
    fn bar_sizes_are_powers_of_two_with_type_minimums() {
        assert_eq!(bar_size(BarKind::Mem32, 256), 256);
        assert_eq!(bar_size(BarKind::Mem32, 8), 16);
        assert_eq!(bar_size(BarKind::Io, 2), 4);
        assert_eq!(bar_size(BarKind::Mem32, 0x3000), 0x4000);
    }
}
