//! Choice of the 64-bit PCI MMIO window above guest RAM.
//!
//! The window is sized from the BARs that will live in it (the 64-bit
//! prefetchable BARs, grouped per root port exactly as [`crate::place_bars`]
//! lays them out), not from a fixed guess: data-centre GPUs carry 64-512 GiB
//! BARs, and a window that is too small or that crosses what the host can
//! address is the commonest passthrough failure. Constraints (platform contract):
//! - it starts at max(4 GiB, end of RAM) rounded up to 1 GiB;
//! - it ends below 2^phys_bits, the guest's physical address width;
//! - it lies inside one of the IOVA ranges VFIO reports, so BARs can also be
//!   mapped for peer-to-peer DMA (the testbed's IOMMU stops at 2^39).

use std::fmt;

use crate::address::{align_up, AddressAllocator, AllocError};
use crate::layout::{arrange, blocks, Block};
use crate::placement::{PortRequest, Window};

/// Where the platform lets the 64-bit window begin: its lowest start (above RAM and
/// 4 GiB, as `arch`'s layout decides) and the alignment of any start chosen higher,
/// when an IOVA range pushes the window up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmio64Floor {
    pub start: u64,
    pub align: u64,
}

/// A byte count printed the way a user sizes things ("64 GiB", "0x1800 bytes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 5] = [
            (60, "EiB"),
            (40, "TiB"),
            (30, "GiB"),
            (20, "MiB"),
            (10, "KiB"),
        ];
        // Whole numbers in the largest exact unit ("1536 MiB"); otherwise two
        // decimals in the largest unit that fits ("1008.03 GiB").
        if let Some((shift, unit)) = UNITS.iter().find(|(s, _)| self.0 % (1u64 << s) == 0) {
            if self.0 != 0 && (self.0 >> shift) < 10_000 {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
        }
        match UNITS.iter().find(|(s, _)| self.0 >= 1u64 << s) {
            Some((shift, unit)) => {
                write!(f, "{:.2} {unit}", self.0 as f64 / (1u64 << shift) as f64)
            }
            None => write!(f, "{:#x} bytes", self.0),
        }
    }
}

fn sizes(list: &[u64]) -> String {
    list.iter()
        .map(|s| Size(*s).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ranges(list: &[(u64, u64)]) -> String {
    if list.is_empty() {
        return "unrestricted".into();
    }
    let v: Vec<String> = list
        .iter()
        .map(|(a, b)| format!("{a:#x}..={b:#x}"))
        .collect();
    v.join(", ")
}

/// Why BARs or the 64-bit window could not be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("guest physical address width {phys_bits} is outside 32..=64 bits")]
    BadPhysBits { phys_bits: u8 },
    #[error("{tag}: BAR size {size:#x} is not a power of two")]
    BadBarSize { tag: String, size: u64 },
    #[error("{tag}: the {window} BARs add up to more than 2^64 bytes")]
    BarsTooLarge { tag: String, window: Window },
    #[error(
        "the 64-bit PCI MMIO window does not fit: the passed-through devices' 64-bit \
         prefetchable BARs ({}) need {} of address space, each aligned to its size, from \
         {start:#x} (end of guest RAM rounded up to 1 GiB), but at most {} is free below \
         2^{phys_bits} (the guest \
         physical address width) inside the IOMMU's IOVA ranges ({}); give the guest less \
         memory, pass through fewer devices, or use a host whose CPU and IOMMU address \
         more bits",
        sizes(.bar_sizes), Size(*.needed), Size(*.available), ranges(.iova_ranges)
    )]
    Mmio64DoesNotFit {
        bar_sizes: Vec<u64>,
        needed: u64,
        start: u64,
        available: u64,
        phys_bits: u8,
        iova_ranges: Vec<(u64, u64)>,
    },
    #[error(
        "{tag}: the {window} window has no free {} aligned to {} for its BARs",
        Size(*.needed), Size(*.align)
    )]
    WindowFull {
        window: Window,
        tag: String,
        needed: u64,
        align: u64,
        #[source]
        source: AllocError,
    },
    #[error("allocating in the {window} window")]
    Allocate {
        window: Window,
        #[source]
        source: AllocError,
    },
}

/// Last guest physical address for `phys_bits`, after validating it.
fn phys_limit(phys_bits: u8) -> Result<u64, PlanError> {
    match phys_bits {
        64 => Ok(u64::MAX),
        32..=63 => Ok((1u64 << phys_bits) - 1),
        _ => Err(PlanError::BadPhysBits { phys_bits }),
    }
}

/// Bytes from `base` that `blocks` take when the window starts there: the
/// arrangement `place_bars` makes, which does not depend on where the window
/// ends, so the placement later fits by construction. `None` past 2^64.
fn needed(blocks: &[Block], base: u64) -> Option<u64> {
    let arrangement = arrange(blocks, &AddressAllocator::empty(base)).ok()?;
    // A window reaching 2^64 exactly cannot be sized in a u64; saturate.
    Some(arrangement.last.map_or(0, |l| (l - base).saturating_add(1)))
}

/// Choose the 64-bit MMIO window: `(start, size)`.
///
/// `floor` is where the platform lets the window start; `iova_ranges` are VFIO's
/// inclusive `(start, end)` IOVA ranges (empty when nothing is passed through,
/// meaning unrestricted). With no 64-bit BARs the size is 0, wherever RAM
/// ends: leave the window out of ACPI `_CRS`; [`AddressAllocator::with_size`]
/// turns either result into the allocator [`crate::place_bars`] takes.
pub fn plan_mmio64(
    floor: Mmio64Floor,
    ports: &[PortRequest],
    phys_bits: u8,
    iova_ranges: &[(u64, u64)],
) -> Result<(u64, u64), PlanError> {
    let limit = phys_limit(phys_bits)?;
    let start = floor.start;
    let blocks = blocks(ports, Window::Mmio64)?;
    if blocks.is_empty() {
        return Ok((start, 0));
    }
    let mut candidates: Vec<(u64, u64)> = match iova_ranges {
        [] => vec![(0, u64::MAX)],
        r => r.to_vec(),
    };
    candidates.sort_unstable();
    let mut available = 0u64;
    for (lo, hi) in candidates {
        let hi = hi.min(limit);
        let Some(base) = align_up(lo.max(start), floor.align).filter(|b| *b <= hi) else {
            continue;
        };
        // Blocks are never empty, so the size is at least 1.
        if let Some(size) = needed(&blocks, base).filter(|s| s - 1 <= hi - base) {
            return Ok((base, size));
        }
        available = available.max((hi - base).saturating_add(1));
    }
    Err(PlanError::Mmio64DoesNotFit {
        bar_sizes: mmio64_bar_sizes(ports),
        needed: needed(&blocks, start).unwrap_or(u64::MAX),
        start,
        available,
        phys_bits,
        iova_ranges: iova_ranges.to_vec(),
    })
}

/// The BAR sizes that go into the 64-bit window, biggest first.
fn mmio64_bar_sizes(ports: &[PortRequest]) -> Vec<u64> {
    let mut v: Vec<u64> = ports
        .iter()
        .flat_map(|p| p.bars.iter())
        .filter(|b| b.class.window() == Window::Mmio64)
        .map(|b| b.size)
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{place_bars, BarClass, BarRequest, Windows};

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// The x86 platform's floor for RAM ending at `ram_end` (arch's layout, written
    /// out here so these tests need no `arch`): 4 GiB or above RAM, on 1 GiB.
    fn above_ram(ram_end: u64) -> Mmio64Floor {
        Mmio64Floor {
            start: align_up(ram_end.max(4 * GIB), GIB).unwrap_or(u64::MAX),
            align: GIB,
        }
    }
    use crate::fixtures::prefetchable_port as port;

    #[test]
    fn starts_at_4g_for_small_ram() {
        let ports = [port("a", &[256 * MIB])];
        assert_eq!(
            plan_mmio64(above_ram(512 * MIB), &ports, 39, &[]).unwrap(),
            (4 * GIB, 256 * MIB)
        );
    }

    #[test]
    fn starts_above_ram_rounded_to_1g() {
        let ports = [port("a", &[MIB])];
        let (start, size) = plan_mmio64(above_ram(9 * GIB + 1), &ports, 46, &[]).unwrap();
        assert_eq!(start, 10 * GIB);
        assert_eq!(size, MIB);
    }

    #[test]
    fn no_bars_gives_empty_window() {
        assert_eq!(
            plan_mmio64(above_ram(2 * GIB), &[], 39, &[]).unwrap(),
            (4 * GIB, 0)
        );
    }

    #[test]
    fn no_64bit_bars_gives_empty_window_even_with_ram_up_to_the_limit() {
        // RAM ends half a GiB below 2^39: no 1 GiB-aligned start is left below
        // the limit, and none is needed.
        let nic = PortRequest {
            tag: "nic".into(),
            bars: vec![BarRequest {
                size: 0x2_0000,
                class: BarClass::Mem32 {
                    prefetchable: false,
                },
            }],
        };
        let iova = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let ram_end = (1 << 39) - GIB / 2;
        assert_eq!(
            plan_mmio64(above_ram(ram_end), &[nic], 39, &iova).unwrap(),
            (1 << 39, 0)
        );
        assert_eq!(
            plan_mmio64(above_ram(1 << 39), &[], 39, &[]).unwrap(),
            (1 << 39, 0)
        );
    }

    #[test]
    fn empty_plan_becomes_an_empty_allocator() {
        let (start, size) = plan_mmio64(above_ram(GIB), &[], 39, &[]).unwrap();
        let mut io = AddressAllocator::new(0x1000, 0xffff).unwrap();
        let mut m32 = AddressAllocator::new(0xc000_0000, 0xdfff_ffff).unwrap();
        let mut m64 = AddressAllocator::with_size(start, size).unwrap();
        assert!(m64.is_empty());
        let w = Windows {
            io: &mut io,
            mmio32: &mut m32,
            mmio64: &mut m64,
        };
        assert_eq!(place_bars(&[], w).unwrap(), []);
    }

    #[test]
    fn bad_bar_size_is_reported_before_an_empty_window() {
        let ports = [port("odd", &[0x3000])];
        assert!(matches!(
            plan_mmio64(above_ram(GIB), &ports, 39, &[]),
            Err(PlanError::BadBarSize { size: 0x3000, .. })
        ));
    }

    #[test]
    fn two_128g_gpus_fit_the_39_bit_testbed() {
        // 4 GiB of RAM end at 5 GiB; [128G-32M, 256G) + [256G, 384G+32M).
        let ports = [
            port("gpu0", &[128 * GIB, 32 * MIB]),
            port("gpu1", &[128 * GIB, 32 * MIB]),
        ];
        let iova = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let (start, size) = plan_mmio64(above_ram(5 * GIB), &ports, 39, &iova).unwrap();
        assert_eq!(start, 5 * GIB);
        assert_eq!(start + size, 384 * GIB + 32 * MIB);
    }

    #[test]
    fn needed_counts_the_arranged_layout_not_trailing_blocks() {
        // Two 256 GiB GPUs: [256G-32M, 512G) + [512G, 768G+32M) from 5 GiB.
        let ports = [
            port("gpu0", &[256 * GIB, 32 * MIB]),
            port("gpu1", &[256 * GIB, 32 * MIB]),
        ];
        match plan_mmio64(above_ram(5 * GIB), &ports, 39, &[]) {
            Err(PlanError::Mmio64DoesNotFit { needed, .. }) => {
                assert_eq!(needed, 768 * GIB + 32 * MIB - 5 * GIB);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn size_includes_natural_alignment_padding() {
        // A 64 GiB BAR cannot start at 4 GiB: it goes to 64 GiB, and the 32 MiB
        // BAR of the same port sits right below it, in the padding.
        let ports = [port("gpu", &[64 * GIB, 32 * MIB])];
        let (start, size) = plan_mmio64(above_ram(GIB), &ports, 46, &[]).unwrap();
        assert_eq!(start, 4 * GIB);
        assert_eq!(start + size, 128 * GIB);
    }

    #[test]
    fn gpu_in_39_bit_testbed_fits_exactly() {
        let ports = [port("gpu", &[256 * GIB])];
        let iova = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let (start, size) = plan_mmio64(above_ram(8 * GIB), &ports, 39, &iova).unwrap();
        assert_eq!(start, 8 * GIB);
        assert_eq!(start + size, 512 * GIB);
    }

    #[test]
    fn does_not_fit_below_phys_bits() {
        let ports = [port("gpu", &[512 * GIB, 32 * MIB])];
        let err = plan_mmio64(above_ram(16 * GIB), &ports, 39, &[]).unwrap_err();
        match &err {
            PlanError::Mmio64DoesNotFit {
                bar_sizes,
                needed,
                start,
                available,
                ..
            } => {
                assert_eq!(bar_sizes, &[512 * GIB, 32 * MIB]);
                assert_eq!(*start, 16 * GIB);
                // [512G-32M, 1024G), counted from the start.
                assert_eq!(*needed, 1024 * GIB - 16 * GIB);
                assert_eq!(*available, 512 * GIB - 16 * GIB);
            }
            e => panic!("unexpected {e:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("512 GiB, 32 MiB"), "{msg}");
        assert!(msg.contains("2^39"), "{msg}");
    }

    #[test]
    fn skips_iova_hole_to_next_range() {
        // A reserved IOVA hole at 1012..1024 GiB (as on AMD hosts) forces the
        // window above it.
        let iova = [(0, 1012 * GIB - 1), (1024 * GIB, (1 << 48) - 1)];
        let ports = [port("gpu", &[512 * GIB])];
        let (start, size) = plan_mmio64(above_ram(600 * GIB), &ports, 48, &iova).unwrap();
        assert_eq!(start, 1024 * GIB);
        assert_eq!(size, 512 * GIB);
    }

    #[test]
    fn iova_range_below_start_is_ignored() {
        let iova = [(0, 2 * GIB - 1)];
        let ports = [port("a", &[MIB])];
        assert!(matches!(
            plan_mmio64(above_ram(GIB), &ports, 39, &iova),
            Err(PlanError::Mmio64DoesNotFit { available: 0, .. })
        ));
    }

    #[test]
    fn bad_phys_bits_rejected() {
        assert_eq!(
            plan_mmio64(above_ram(0), &[], 31, &[]),
            Err(PlanError::BadPhysBits { phys_bits: 31 })
        );
        assert_eq!(
            plan_mmio64(above_ram(0), &[], 65, &[]),
            Err(PlanError::BadPhysBits { phys_bits: 65 })
        );
        assert!(plan_mmio64(above_ram(0), &[], 64, &[]).is_ok());
    }

    #[test]
    fn planned_window_holds_placement() {
        let ports = [
            port("a", &[8 * GIB, 2 * MIB]),
            port("b", &[64 * GIB]),
            port("c", &[4 * KIB]),
        ];
        let (start, size) = plan_mmio64(above_ram(6 * GIB), &ports, 46, &[]).unwrap();
        let mut io = AddressAllocator::new(0x1000, 0xffff).unwrap();
        let mut m32 = AddressAllocator::new(0xc000_0000, 0xdfff_ffff).unwrap();
        let mut m64 = AddressAllocator::new(start, start + size - 1).unwrap();
        let w = Windows {
            io: &mut io,
            mmio32: &mut m32,
            mmio64: &mut m64,
        };
        let placed = place_bars(&ports, w).unwrap();
        assert_eq!(placed[1].bar_addrs, [64 * GIB]);
        // Port a fills the space below the 64 GiB BAR.
        assert_eq!(placed[0].bar_addrs, [8 * GIB, 16 * GIB]);
    }

    const KIB: u64 = 1 << 10;

    #[test]
    fn size_display_uses_largest_exact_unit() {
        assert_eq!(Size(64 * GIB).to_string(), "64 GiB");
        assert_eq!(Size(1536 * MIB).to_string(), "1536 MiB");
        assert_eq!(Size(0x1800).to_string(), "6 KiB");
        assert_eq!(Size(0x1801).to_string(), "6.00 KiB");
        assert_eq!(Size(0x3ff).to_string(), "0x3ff bytes");
        assert_eq!(Size(0).to_string(), "0x0 bytes");
        assert_eq!(Size(1008 * GIB + 32 * MIB).to_string(), "1008.03 GiB");
        assert_eq!(Size(u64::MAX).to_string(), "16.00 EiB");
    }
}
