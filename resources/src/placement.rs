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
//! Each port's BARs form one block per window, naturally aligned with no padding
//! inside, memory BARs given at least a 4 KiB slot so a passed-through BAR can be
//! mapped into the guest page by page. Blocks of different ports never
//! interleave, since bridge windows must not overlap. How a block is laid out
//! and where it goes is decided in `layout` (see there).

use std::ops::RangeInclusive;

use crate::address::{AddressAllocator, AllocError};
use crate::layout::{arrange, blocks, Block, Shape};
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

/// Claim the blocks of `window` in `alloc`, where `layout` arranged them.
fn allocate_blocks(
    ports: &[PortRequest],
    window: Window,
    alloc: &mut AddressAllocator,
) -> Result<Vec<(Block, Shape, u64)>, PlanError> {
    let blocks = blocks(ports, window)?;
    let full = |block: &Block, span: u64, source: AllocError| PlanError::WindowFull {
        window,
        tag: ports[block.port].tag.clone(),
        needed: span,
        align: block.align,
        source,
    };
    let tag = |block: &Block| format!("{} {} window", ports[block.port].tag, window);
    // Only a block that would pass 2^64 cannot be arranged.
    let arrangement = arrange(&blocks, alloc).map_err(|k| {
        let (block, span) = (&blocks[k], blocks[k].trailing().span);
        full(block, span, alloc.no_room(span, block.align, tag(block)))
    })?;
    let mut placed = Vec::with_capacity(blocks.len());
    for (block, (shape, base)) in blocks.into_iter().zip(arrangement.placed) {
        match alloc.allocate_at(base, shape.span, tag(&block)) {
            Ok(()) => placed.push((block, shape, base)),
            Err(source @ (AllocError::OutOfRange { .. } | AllocError::EmptyRange { .. })) => {
                return Err(full(&block, shape.span, source))
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
        for (block, shape, base) in allocate_blocks(ports, window, alloc)? {
            let p = &mut out[block.port];
            for (i, off) in block.offsets(&shape) {
                p.bar_addrs[i] = base + off;
            }
            // The allocator proved base + span - 1 does not overflow.
            let range = Some(base..=base + (shape.span - 1));
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

    fn big_gpu(tag: &str) -> PortRequest {
        PortRequest {
            tag: tag.into(),
            bars: vec![bar(128 * GIB, PREF64), bar(32 * MIB, PREF64)],
        }
    }

    #[test]
    fn two_128g_gpus_share_a_39_bit_window() {
        // 5 GiB to 2^39: trailing both would need [128G, 256G+32M) and
        // [384G, 512G+32M); the first leads instead and the second follows it.
        let mut a = allocs();
        a.m64 = AddressAllocator::new(5 * GIB, (1 << 39) - 1).unwrap();
        let out = place(&[big_gpu("gpu0"), big_gpu("gpu1")], &mut a).unwrap();
        assert_eq!(out[0].bar_addrs, [128 * GIB, 128 * GIB - 32 * MIB]);
        assert_eq!(
            out[0].prefetchable,
            Some(128 * GIB - 32 * MIB..=256 * GIB - 1)
        );
        assert_eq!(out[1].bar_addrs, [256 * GIB, 384 * GIB]);
        assert_eq!(
            out[1].prefetchable,
            Some(256 * GIB..=384 * GIB + 32 * MIB - 1)
        );
    }

    #[test]
    fn empty_64bit_window_takes_ports_without_64bit_bars() {
        let mut a = allocs();
        a.m64 = AddressAllocator::with_size(4 * GIB, 0).unwrap();
        let nic = PortRequest {
            tag: "nic".into(),
            bars: vec![bar(0x2_0000, MEM32)],
        };
        let out = place(&[nic], &mut a).unwrap();
        assert_eq!(out[0].prefetchable, None);
        assert_eq!(out[0].bar_addrs, [0xc000_0000]);
    }

    #[test]
    fn empty_64bit_window_refuses_a_64bit_bar() {
        let mut a = allocs();
        a.m64 = AddressAllocator::with_size(4 * GIB, 0).unwrap();
        match place(&[gpu()], &mut a) {
            Err(PlanError::WindowFull {
                window: Window::Mmio64,
                tag,
                source: AllocError::EmptyRange { .. },
                ..
            }) => assert_eq!(tag, "gpu"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn window_too_small_for_the_arrangement_names_the_port() {
        let mut a = allocs();
        a.m64 = AddressAllocator::new(64 * GIB, 128 * GIB - 1).unwrap();
        match place(&[gpu()], &mut a) {
            Err(PlanError::WindowFull {
                window: Window::Mmio64,
                needed,
                source: AllocError::OutOfRange { .. },
                ..
            }) => assert_eq!(needed, 64 * GIB + 32 * MIB),
            other => panic!("unexpected {other:?}"),
        }
    }
}
