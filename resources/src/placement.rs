//! Placement of PCI BARs and the bridge windows of the root ports above them.
//!
//! Strait has no firmware: the VMM programs every BAR and every root port window
//! before the guest starts, and Linux keeps assignments that are consistent. The
//! rules followed (PCI-to-PCI Bridge Architecture 1.2, 3.2.5; PCIe Base 7.5.1.3):
//! - a root port's memory window (32-bit, 1 MiB granular) holds its device's
//!   non-prefetchable BARs; 64-bit non-prefetchable BARs go there too, as Linux
//!   does, since a bridge's non-prefetchable window cannot reach above 4 GiB;
//!   32-bit prefetchable BARs also go there (they are allowed in either window);
//! - its prefetchable window (64-bit, 1 MiB granular) holds the 64-bit
//!   prefetchable BARs, and lives in the 64-bit MMIO window above RAM;
//! - its I/O window (4 KiB granular) holds the I/O BARs.
//!
//! Each port's BARs form one block per window: BARs biggest first, naturally
//! aligned (so no padding inside a block), memory BARs given at least a 4 KiB
//! slot so a passed-through BAR can be mapped into the guest page by page. Blocks
//! of different ports never interleave, since bridge windows must not overlap.

use std::ops::RangeInclusive;

use crate::address::{align_up, AddressAllocator, AllocError};
use crate::plan::PlanError;

/// Memory-window granularity of a PCI-to-PCI bridge (base/limit bits 31:20).
pub const BRIDGE_MEM_GRANULE: u64 = 1 << 20;
/// I/O-window granularity of a PCI-to-PCI bridge (base/limit bits 15:12).
pub const BRIDGE_IO_GRANULE: u64 = 1 << 12;
/// Smallest slot given to a memory BAR: one page, so it can be mapped on its own.
pub const MIN_MEM_BAR_SLOT: u64 = 1 << 12;
/// Smallest I/O BAR (PCI Local Bus 3.0, 6.2.5.1).
pub const MIN_IO_BAR_SLOT: u64 = 4;

/// The kind of a BAR as far as placement is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarClass {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

/// Which of the VM's address windows a BAR is placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Io,
    Mmio32,
    Mmio64,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Window::Io => "I/O",
            Window::Mmio32 => "32-bit MMIO",
            Window::Mmio64 => "64-bit MMIO",
        })
    }
}

impl BarClass {
    /// The window this BAR is placed in (see the module header for why).
    pub fn window(self) -> Window {
        match self {
            BarClass::Io => Window::Io,
            BarClass::Mem64 { prefetchable: true } => Window::Mmio64,
            BarClass::Mem32 { .. }
            | BarClass::Mem64 {
                prefetchable: false,
            } => Window::Mmio32,
        }
    }
}

/// One BAR to place; `size` must be a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRequest {
    pub size: u64,
    pub class: BarClass,
}

/// The BARs of everything behind one root port (all functions of one device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRequest {
    /// Names the port in errors and allocation tags, e.g. "0000:00:01.0 (0000:01:00.0)".
    pub tag: String,
    pub bars: Vec<BarRequest>,
}

/// Where a port's BARs went and the windows its root port must forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlacement {
    /// Guest address of each BAR, in the order of [`PortRequest::bars`].
    pub bar_addrs: Vec<u64>,
    pub io: Option<RangeInclusive<u64>>,
    pub mem: Option<RangeInclusive<u64>>,
    pub prefetchable: Option<RangeInclusive<u64>>,
}

/// The allocators of the VM's three windows.
#[derive(Debug)]
pub struct Windows<'a> {
    pub io: &'a mut AddressAllocator,
    pub mmio32: &'a mut AddressAllocator,
    pub mmio64: &'a mut AddressAllocator,
}

/// One port's BARs of one window, laid out relative to the block's start.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub port: usize,
    /// (index into the port's `bars`, offset inside the block).
    pub offsets: Vec<(usize, u64)>,
    /// Block length, a multiple of the window granule.
    pub span: u64,
    /// Alignment of the block: its largest BAR slot, at least the granule.
    pub align: u64,
}

fn slot_and_granule(window: Window) -> (u64, u64) {
    match window {
        Window::Io => (MIN_IO_BAR_SLOT, BRIDGE_IO_GRANULE),
        Window::Mmio32 | Window::Mmio64 => (MIN_MEM_BAR_SLOT, BRIDGE_MEM_GRANULE),
    }
}

/// Lay out `port`'s BARs that belong in `window`; `None` if it has none.
fn port_block(
    index: usize,
    port: &PortRequest,
    window: Window,
) -> Result<Option<Block>, PlanError> {
    let (min_slot, granule) = slot_and_granule(window);
    let mut bars = Vec::new();
    for (i, bar) in port.bars.iter().enumerate() {
        if bar.class.window() != window {
            continue;
        }
        if !bar.size.is_power_of_two() {
            return Err(PlanError::BadBarSize {
                tag: port.tag.clone(),
                size: bar.size,
            });
        }
        bars.push((i, bar.size.max(min_slot)));
    }
    if bars.is_empty() {
        return Ok(None);
    }
    // Biggest first: every later slot is a power of two no larger than the one
    // before, so each offset is already naturally aligned.
    bars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let too_large = || PlanError::BarsTooLarge {
        tag: port.tag.clone(),
        window,
    };
    let mut cursor = 0u64;
    let mut offsets = Vec::with_capacity(bars.len());
    for &(i, slot) in &bars {
        offsets.push((i, cursor));
        cursor = cursor.checked_add(slot).ok_or_else(too_large)?;
    }
    Ok(Some(Block {
        port: index,
        offsets,
        span: align_up(cursor, granule).ok_or_else(too_large)?,
        align: bars[0].1.max(granule),
    }))
}

/// All ports' blocks for `window`, largest alignment first (then port order),
/// the order in which they are allocated.
pub(crate) fn blocks(ports: &[PortRequest], window: Window) -> Result<Vec<Block>, PlanError> {
    let mut out = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        if let Some(b) = port_block(i, port, window)? {
            out.push(b);
        }
    }
    out.sort_by(|a, b| b.align.cmp(&a.align).then(a.port.cmp(&b.port)));
    Ok(out)
}

fn allocate_blocks(
    ports: &[PortRequest],
    window: Window,
    alloc: &mut AddressAllocator,
) -> Result<Vec<(Block, u64)>, PlanError> {
    let mut placed = Vec::new();
    for block in blocks(ports, window)? {
        let tag = format!("{} {} window", ports[block.port].tag, window);
        match alloc.allocate(block.span, block.align, tag) {
            Ok(base) => placed.push((block, base)),
            Err(source @ AllocError::Exhausted { .. }) => {
                return Err(PlanError::WindowFull {
                    window,
                    tag: ports[block.port].tag.clone(),
                    needed: block.span,
                    align: block.align,
                    source,
                })
            }
            Err(source) => return Err(PlanError::Allocate { window, source }),
        }
    }
    Ok(placed)
}

/// Place every port's BARs into the VM's windows and compute each root port's
/// bridge windows. Allocations are recorded (tagged with the port) in `windows`.
pub fn place_bars(
    ports: &[PortRequest],
    windows: Windows<'_>,
) -> Result<Vec<PortPlacement>, PlanError> {
    let mut out: Vec<PortPlacement> = ports
        .iter()
        .map(|p| PortPlacement {
            bar_addrs: vec![0; p.bars.len()],
            io: None,
            mem: None,
            prefetchable: None,
        })
        .collect();
    let Windows { io, mmio32, mmio64 } = windows;
    for (window, alloc) in [
        (Window::Io, io),
        (Window::Mmio32, mmio32),
        (Window::Mmio64, mmio64),
    ] {
        for (block, base) in allocate_blocks(ports, window, alloc)? {
            let p = &mut out[block.port];
            for &(i, off) in &block.offsets {
                p.bar_addrs[i] = base + off;
            }
            // The allocator proved base + span - 1 does not overflow.
            let range = Some(base..=base + (block.span - 1));
            match window {
                Window::Io => p.io = range,
                Window::Mmio32 => p.mem = range,
                Window::Mmio64 => p.prefetchable = range,
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn bar(size: u64, class: BarClass) -> BarRequest {
        BarRequest { size, class }
    }

    const PREF64: BarClass = BarClass::Mem64 { prefetchable: true };
    const MEM32: BarClass = BarClass::Mem32 {
        prefetchable: false,
    };

    fn gpu() -> PortRequest {
        // Shaped like a data-centre GPU: 16 MiB registers, 64 GiB + 32 MiB prefetchable.
        PortRequest {
            tag: "gpu".into(),
            bars: vec![
                bar(16 * MIB, MEM32),
                bar(64 * GIB, PREF64),
                bar(32 * MIB, PREF64),
            ],
        }
    }

    struct Allocs {
        io: AddressAllocator,
        m32: AddressAllocator,
        m64: AddressAllocator,
    }

    fn allocs() -> Allocs {
        Allocs {
            io: AddressAllocator::new(0x1000, 0xffff).unwrap(),
            m32: AddressAllocator::new(0xc000_0000, 0xdfff_ffff).unwrap(),
            m64: AddressAllocator::new(64 * GIB, 256 * GIB - 1).unwrap(),
        }
    }

    fn place(ports: &[PortRequest], a: &mut Allocs) -> Result<Vec<PortPlacement>, PlanError> {
        let w = Windows {
            io: &mut a.io,
            mmio32: &mut a.m32,
            mmio64: &mut a.m64,
        };
        place_bars(ports, w)
    }

    #[test]
    fn classes_map_to_windows() {
        assert_eq!(BarClass::Io.window(), Window::Io);
        assert_eq!(PREF64.window(), Window::Mmio64);
        assert_eq!(
            BarClass::Mem64 {
                prefetchable: false
            }
            .window(),
            Window::Mmio32
        );
        assert_eq!(
            BarClass::Mem32 { prefetchable: true }.window(),
            Window::Mmio32
        );
    }

    #[test]
    fn gpu_bars_biggest_first_naturally_aligned() {
        let mut a = allocs();
        let p = &place(&[gpu()], &mut a).unwrap()[0];
        assert_eq!(p.bar_addrs, vec![0xc000_0000, 64 * GIB, 128 * GIB]);
        assert_eq!(p.mem, Some(0xc000_0000..=0xc0ff_ffff));
        assert_eq!(p.prefetchable, Some(64 * GIB..=128 * GIB + 32 * MIB - 1));
        assert_eq!(p.io, None);
    }

    #[test]
    fn small_bars_get_page_slots_and_windows_round_to_granule() {
        let mut a = allocs();
        let port = PortRequest {
            tag: "nvme".into(),
            bars: vec![
                bar(
                    0x4000,
                    BarClass::Mem64 {
                        prefetchable: false,
                    },
                ),
                bar(0x100, MEM32),
                bar(0x20, BarClass::Io),
            ],
        };
        let p = &place(&[port], &mut a).unwrap()[0];
        assert_eq!(p.bar_addrs, vec![0xc000_0000, 0xc000_4000, 0x1000]);
        assert_eq!(p.mem, Some(0xc000_0000..=0xc00f_ffff));
        assert_eq!(p.io, Some(0x1000..=0x1fff));
        assert_eq!(p.prefetchable, None);
    }

    #[test]
    fn ports_get_disjoint_windows() {
        let mut a = allocs();
        let small = PortRequest {
            tag: "small".into(),
            bars: vec![bar(0x1000, PREF64), bar(0x1000, MEM32)],
        };
        let out = place(&[small, gpu()], &mut a).unwrap();
        let (s, g) = (&out[0], &out[1]);
        let (sp, gp) = (
            s.prefetchable.clone().unwrap(),
            g.prefetchable.clone().unwrap(),
        );
        assert!(sp.end() < gp.start() || gp.end() < sp.start());
        let (sm, gm) = (s.mem.clone().unwrap(), g.mem.clone().unwrap());
        assert!(sm.end() < gm.start() || gm.end() < sm.start());
        // The GPU's bigger blocks are placed first; the small port fills in after.
        assert_eq!(*gm.start(), 0xc000_0000);
        assert_eq!(*sm.start(), 0xc100_0000);
    }

    #[test]
    fn allocations_are_tagged_with_port() {
        let mut a = allocs();
        place(&[gpu()], &mut a).unwrap();
        let tags: Vec<String> = a.m64.allocations().map(|x| x.tag.clone()).collect();
        assert_eq!(tags, ["gpu 64-bit MMIO window"]);
    }

    #[test]
    fn non_power_of_two_bar_is_rejected() {
        let mut a = allocs();
        let port = PortRequest {
            tag: "odd".into(),
            bars: vec![bar(0x3000, MEM32)],
        };
        assert!(matches!(
            place(&[port], &mut a),
            Err(PlanError::BadBarSize { size: 0x3000, .. })
        ));
    }

    #[test]
    fn full_mmio32_window_names_port() {
        let mut a = allocs();
        let port = PortRequest {
            tag: "huge32".into(),
            bars: vec![bar(GIB, MEM32)],
        };
        match place(&[port], &mut a) {
            Err(PlanError::WindowFull {
                window: Window::Mmio32,
                tag,
                needed,
                ..
            }) => {
                assert_eq!(tag, "huge32");
                assert_eq!(needed, GIB);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn io_windows_are_4k_each() {
        let mut a = allocs();
        let ports: Vec<_> = (0..3)
            .map(|i| PortRequest {
                tag: format!("p{i}"),
                bars: vec![bar(0x10, BarClass::Io)],
            })
            .collect();
        let out = place(&ports, &mut a).unwrap();
        let starts: Vec<u64> = out.iter().map(|p| *p.io.clone().unwrap().start()).collect();
        assert_eq!(starts, [0x1000, 0x2000, 0x3000]);
    }

    #[test]
    fn block_span_sums_sorted_bars() {
        let ports = [gpu()];
        let b = blocks(&ports, Window::Mmio64).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].span, 64 * GIB + 32 * MIB);
        assert_eq!(b[0].align, 64 * GIB);
        assert_eq!(b[0].offsets, vec![(1, 0), (2, 64 * GIB)]);
    }
}
