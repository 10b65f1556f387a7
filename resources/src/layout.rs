//! How the BARs behind each root port form one block per window, and where the
//! blocks of a window go.
//!
//! A root port forwards one contiguous range per window (PCI-to-PCI Bridge 1.2,
//! 3.2.5: memory windows 1 MiB granular, I/O 4 KiB), so a port's BARs of one
//! window stay together, and every BAR is naturally aligned (PCI Local Bus 3.0,
//! 6.2.5.1). A block anchors its biggest BAR on that BAR's own boundary and
//! packs the others, biggest first, on one side of it, which needs no padding
//! inside the block either way:
//! - trailing: the smaller BARs follow the big one;
//! - leading: they sit right below it, so the block starts their total size
//!   (rounded up to the granule) before the boundary.
//!
//! The side matters for the padding between blocks. Two ports with a 128 GiB
//! and a 32 MiB BAR each, from 5 GiB up, take [128G-32M, 256G) (leading) and
//! [256G, 384G+32M) (trailing); trailing both, the second 128 GiB BAR would wait
//! for 384 GiB and end past 512 GiB.
//!
//! Blocks are placed largest alignment first (then in port order), each at the
//! lowest address that fits. For each block both sides are tried, each scored
//! by finishing the layout greedily (every later block taking the side that
//! ends lowest), and the side whose finished layout ends lower is kept, the
//! trailing side on a tie. That result is then compared with every block
//! trailing, and the lower wins, so a window is never bigger than with the
//! trailing-only layout. A VM has a few dozen ports at most, so trying O(n^2)
//! block placements costs nothing next to booting it.
//!
//! The choice never looks at the end of the window: it is made on an
//! unbounded copy of the window's allocator. [`crate::plan_mmio64`] sizes the
//! window from the arrangement [`crate::place_bars`] then makes again in the
//! window it sized, so the placement fits by construction.

use crate::address::{align_up, AddressAllocator};
use crate::placement::{
    PortRequest, Window, BRIDGE_IO_GRANULE, BRIDGE_MEM_GRANULE, MIN_IO_BAR_SLOT, MIN_MEM_BAR_SLOT,
};
use crate::plan::PlanError;

/// Which side of the biggest BAR the smaller ones of a block go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Trailing,
    Leading,
}

/// A block laid out on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub side: Side,
    /// Block length, a multiple of the window granule.
    pub span: u64,
    /// Offset of the biggest BAR, which must land on a multiple of the block's
    /// alignment; a multiple of the granule.
    pub anchor: u64,
}

/// One port's BARs of one window.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub port: usize,
    /// (index into the port's `bars`, slot size), biggest first.
    slots: Vec<(usize, u64)>,
    /// Alignment of the biggest BAR's slot, at least the granule.
    pub align: u64,
    /// Trailing first, then leading when there are smaller BARs to put below.
    shapes: Vec<Shape>,
}

fn slot_and_granule(window: Window) -> (u64, u64) {
    match window {
        Window::Io => (MIN_IO_BAR_SLOT, BRIDGE_IO_GRANULE),
        Window::Mmio32 | Window::Mmio64 => (MIN_MEM_BAR_SLOT, BRIDGE_MEM_GRANULE),
    }
}

impl Block {
    /// The block of `port`'s BARs that belong in `window`; `None` if it has none.
    fn for_port(
        index: usize,
        port: &PortRequest,
        window: Window,
    ) -> Result<Option<Self>, PlanError> {
        let (min_slot, granule) = slot_and_granule(window);
        let mut slots = Vec::new();
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
            slots.push((i, bar.size.max(min_slot)));
        }
        // Biggest first: every later slot is a power of two no larger than the
        // one before, so packing them in this order away from the anchor keeps
        // each naturally aligned.
        slots.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let Some((&(_, big), others)) = slots.split_first() else {
            return Ok(None);
        };
        let too_large = || PlanError::BarsTooLarge {
            tag: port.tag.clone(),
            window,
        };
        let rest = others
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(s.1))
            .ok_or_else(too_large)?;
        let total = big.checked_add(rest).ok_or_else(too_large)?;
        let mut shapes = vec![Shape {
            side: Side::Trailing,
            span: align_up(total, granule).ok_or_else(too_large)?,
            anchor: 0,
        }];
        if rest > 0 {
            // Rounding each side to the granule may pass 2^64 where the
            // trailing sum did not: then only trailing is offered.
            let lead = align_up(rest, granule);
            let leading = lead.zip(align_up(big, granule)).and_then(|(lead, top)| {
                Some(Shape {
                    side: Side::Leading,
                    span: lead.checked_add(top)?,
                    anchor: lead,
                })
            });
            shapes.extend(leading);
        }
        Ok(Some(Block {
            port: index,
            slots,
            align: big.max(granule),
            shapes,
        }))
    }

    /// The biggest-first layout, which every block has.
    pub fn trailing(&self) -> Shape {
        // `for_port` always makes the trailing shape, first.
        self.shapes[0]
    }

    /// Where each BAR goes inside the block laid out as `shape`:
    /// (index into the port's `bars`, offset from the block's start).
    pub fn offsets(&self, shape: &Shape) -> Vec<(usize, u64)> {
        // The anchor is a multiple of every slot, and the slots shrink by
        // powers of two away from it, so each offset is a multiple of its slot.
        // The sums stay inside the span checked when the shape was made.
        let (mut up, mut down) = (shape.anchor, shape.anchor);
        let mut out = Vec::with_capacity(self.slots.len());
        for (n, &(i, slot)) in self.slots.iter().enumerate() {
            if n > 0 && shape.side == Side::Leading {
                down -= slot;
                out.push((i, down));
            } else {
                out.push((i, up));
                up += slot;
            }
        }
        out
    }
}

/// All ports' blocks for `window`, largest alignment first (then port order),
/// the order in which they are placed.
pub(crate) fn blocks(ports: &[PortRequest], window: Window) -> Result<Vec<Block>, PlanError> {
    let mut out = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        if let Some(b) = Block::for_port(i, port, window)? {
            out.push(b);
        }
    }
    out.sort_by(|a, b| b.align.cmp(&a.align).then(a.port.cmp(&b.port)));
    Ok(out)
}

/// Where the blocks of a window go.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arrangement {
    /// (shape, start address) of each block, in the order of the blocks.
    pub placed: Vec<(Shape, u64)>,
    /// Last byte used (inclusive); `None` when there is no block.
    pub last: Option<u64>,
}

impl Arrangement {
    fn take(&mut self, room: &mut AddressAllocator, shape: Shape, base: u64) -> Option<()> {
        room.allocate_at(base, shape.span, "").ok()?;
        self.placed.push((shape, base));
        self.last = self.last.max(Some(last_byte(&shape, base)));
        Some(())
    }
}

/// Last byte of `shape` at `base`: `find_fit` proved it does not overflow.
fn last_byte(shape: &Shape, base: u64) -> u64 {
    base + (shape.span - 1)
}

/// The lowest start for `block` laid out as `shape` in `room`.
fn fit(room: &AddressAllocator, block: &Block, shape: &Shape) -> Option<(Shape, u64)> {
    let base = room.find_fit(shape.span, block.align, shape.anchor)?;
    Some((*shape, base))
}

/// Arrange `blocks` (in [`blocks`] order) around what `space` already holds,
/// whatever its end (see the module header). `Err(k)` when block `k` cannot be
/// placed below 2^64.
pub(crate) fn arrange(blocks: &[Block], space: &AddressAllocator) -> Result<Arrangement, usize> {
    let room = space.unbounded();
    let rolled = rollout(blocks, room.clone());
    let trailing = greedy(blocks, room, |b| &b.shapes[..1]);
    match (rolled, trailing) {
        (Ok(r), Ok(t)) if t.last < r.last => Ok(t),
        (Ok(r), _) => Ok(r),
        (Err(_), t) => t,
    }
}

/// Place `blocks` in order, each in whichever of `shapes(block)` ends lowest
/// (the first on a tie).
fn greedy(
    blocks: &[Block],
    mut room: AddressAllocator,
    shapes: fn(&Block) -> &[Shape],
) -> Result<Arrangement, usize> {
    let mut out = Arrangement::default();
    for (k, block) in blocks.iter().enumerate() {
        let best = shapes(block)
            .iter()
            .filter_map(|s| fit(&room, block, s))
            .min_by_key(|(s, base)| last_byte(s, *base));
        let (shape, base) = best.ok_or(k)?;
        out.take(&mut room, shape, base).ok_or(k)?;
    }
    Ok(out)
}

/// Place `blocks` in order, each on the side whose greedy completion ends lowest.
fn rollout(blocks: &[Block], mut room: AddressAllocator) -> Result<Arrangement, usize> {
    let mut out = Arrangement::default();
    for (k, block) in blocks.iter().enumerate() {
        let mut best: Option<(u64, Shape, u64)> = None;
        for (shape, base) in block.shapes.iter().filter_map(|s| fit(&room, block, s)) {
            let mut trial = room.clone();
            if trial.allocate_at(base, shape.span, "").is_err() {
                continue;
            }
            // A completion that runs past 2^64 scores worst; a later step then
            // names the block that does not fit.
            let rest = greedy(&blocks[k + 1..], trial, |b| &b.shapes);
            let rest_last = rest.map_or(Some(u64::MAX), |a| a.last);
            // Scored by where the whole window would end, so a side that only
            // ends lower locally does not win over trailing.
            let score = rest_last
                .max(out.last)
                .unwrap_or(0)
                .max(last_byte(&shape, base));
            if best.is_none_or(|(b, ..)| score < b) {
                best = Some((score, shape, base));
            }
        }
        let (_, shape, base) = best.ok_or(k)?;
        out.take(&mut room, shape, base).ok_or(k)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn port(sizes: &[u64]) -> PortRequest {
        crate::fixtures::prefetchable_port("p", sizes)
    }

    /// A GPU's 64-bit window: a `vram` BAR and a 32 MiB one.
    fn gpu(vram: u64) -> PortRequest {
        port(&[vram, 32 * MIB])
    }

    fn arranged(ports: &[PortRequest], start: u64) -> (Vec<Block>, Arrangement) {
        let b = blocks(ports, Window::Mmio64).unwrap();
        let a = arrange(&b, &AddressAllocator::empty(start)).unwrap();
        (b, a)
    }

    /// Start of the biggest BAR of each block, by port.
    fn anchors(ports: &[PortRequest], start: u64) -> Vec<u64> {
        let (b, a) = arranged(ports, start);
        let mut v: Vec<(usize, u64)> = b
            .iter()
            .zip(&a.placed)
            .map(|(b, (s, base))| (b.port, base + s.anchor))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, x)| x).collect()
    }

    /// The previous layout, every block trailing, first-fit: the bound the
    /// arrangement must never exceed.
    fn trailing_only_last(ports: &[PortRequest], start: u64) -> Option<u64> {
        let b = blocks(ports, Window::Mmio64).unwrap();
        greedy(&b, AddressAllocator::empty(start).unbounded(), |b| {
            &b.shapes[..1]
        })
        .unwrap()
        .last
    }

    #[test]
    fn trailing_shape_puts_small_bars_after_the_big_one() {
        let b = blocks(&[gpu(64 * GIB)], Window::Mmio64).unwrap();
        let trailing = b[0].shapes[0];
        assert_eq!(trailing.side, Side::Trailing);
        assert_eq!((trailing.span, trailing.anchor), (64 * GIB + 32 * MIB, 0));
        assert_eq!(b[0].offsets(&trailing), [(0, 0), (1, 64 * GIB)]);
        assert_eq!(b[0].align, 64 * GIB);
    }

    #[test]
    fn leading_shape_puts_small_bars_below_the_big_one() {
        let b = blocks(&[port(&[16 * MIB, 64 * GIB, 32 * MIB])], Window::Mmio64).unwrap();
        let leading = b[0].shapes[1];
        assert_eq!(leading.side, Side::Leading);
        assert_eq!(
            (leading.span, leading.anchor),
            (64 * GIB + 48 * MIB, 48 * MIB)
        );
        // Biggest nearest the anchor: 32 MiB right below it, then 16 MiB.
        assert_eq!(
            b[0].offsets(&leading),
            [(1, 48 * MIB), (2, 16 * MIB), (0, 0)]
        );
    }

    #[test]
    fn leading_shape_rounds_the_small_bars_to_the_granule() {
        // 4 KiB + 8 KiB below a 1 GiB BAR: the block starts 1 MiB below it.
        let b = blocks(&[port(&[GIB, 0x1000, 0x2000])], Window::Mmio64).unwrap();
        let leading = b[0].shapes[1];
        assert_eq!((leading.span, leading.anchor), (GIB + MIB, MIB));
        assert_eq!(
            b[0].offsets(&leading),
            [(0, MIB), (2, MIB - 0x2000), (1, MIB - 0x3000)]
        );
    }

    #[test]
    fn single_bar_block_has_one_shape() {
        let b = blocks(&[port(&[GIB])], Window::Mmio64).unwrap();
        assert_eq!(b[0].shapes.len(), 1);
    }

    #[test]
    fn lone_gpu_leads_so_its_window_ends_at_the_big_bars_end() {
        let (_, a) = arranged(&[gpu(128 * GIB)], 65 * GIB);
        assert_eq!(a.placed[0].1, 128 * GIB - 32 * MIB);
        assert_eq!(a.last, Some(256 * GIB - 1));
    }

    #[test]
    fn two_128g_gpus_fit_below_512g() {
        let ports = [gpu(128 * GIB), gpu(128 * GIB)];
        let (_, a) = arranged(&ports, 5 * GIB);
        assert_eq!(
            a.placed.iter().map(|(_, base)| *base).collect::<Vec<_>>(),
            [128 * GIB - 32 * MIB, 256 * GIB]
        );
        assert_eq!(a.last, Some(384 * GIB + 32 * MIB - 1));
        assert_eq!(anchors(&ports, 5 * GIB), [128 * GIB, 256 * GIB]);
    }

    #[test]
    fn side_is_chosen_for_the_whole_layout_not_the_block_alone() {
        // Port 1 leading alone ends lowest (256G), but its small BARs then take
        // the space below 128 GiB that port 0's 64 GiB BAR needs; trailing lets
        // port 0 use [64G, 128G).
        let ports = [port(&[64 * GIB]), port(&[GIB, 2 * MIB, 128 * GIB])];
        assert_eq!(anchors(&ports, 4 * GIB), [64 * GIB, 128 * GIB]);
        let (_, a) = arranged(&ports, 4 * GIB);
        assert_eq!(a.last, Some(257 * GIB + 2 * MIB - 1));
    }

    #[test]
    fn rollout_beats_both_greedy_and_trailing_only() {
        // Port 1 leading ends lowest alone but pushes port 0 to 256 GiB
        // (320 GiB in all); all trailing, port 2 cannot fit below 64 GiB
        // (336 GiB). Port 1 trails, port 2 leads into [16G, 48G).
        let ports = [
            port(&[64 * GIB]),
            port(&[128 * GIB, 32 * MIB]),
            port(&[32 * GIB, 16 * GIB]),
        ];
        assert_eq!(anchors(&ports, 4 * GIB), [64 * GIB, 128 * GIB, 32 * GIB]);
        let (_, a) = arranged(&ports, 4 * GIB);
        assert_eq!(a.last, Some(256 * GIB + 32 * MIB - 1));
        assert_eq!(trailing_only_last(&ports, 4 * GIB), Some(336 * GIB - 1));
    }

    #[test]
    fn tie_keeps_the_trailing_side() {
        // A 64 GiB block fixes the end at 128 GiB; the 8 GiB port can go either
        // way below it, and keeps its small BAR after the big one.
        let ports = [port(&[8 * GIB, 2 * MIB]), port(&[64 * GIB])];
        let (b, a) = arranged(&ports, 6 * GIB);
        let (shape, base) = a.placed[1];
        assert_eq!(b[1].port, 0);
        assert_eq!((shape.side, base), (Side::Trailing, 8 * GIB));
    }

    #[test]
    fn arrangement_ignores_the_end_of_the_window() {
        let ports = [gpu(64 * GIB), gpu(64 * GIB), port(&[GIB, 4 * MIB])];
        let b = blocks(&ports, Window::Mmio64).unwrap();
        let wide = arrange(&b, &AddressAllocator::new(5 * GIB, u64::MAX).unwrap()).unwrap();
        let last = wide.last.unwrap();
        let tight = arrange(&b, &AddressAllocator::new(5 * GIB, last).unwrap()).unwrap();
        assert_eq!(wide.placed, tight.placed);
    }

    #[test]
    fn arrangement_steps_around_existing_allocations() {
        let mut space = AddressAllocator::new(4 * GIB, u64::MAX).unwrap();
        space.allocate_at(64 * GIB - MIB, MIB, "taken").unwrap();
        let b = blocks(&[gpu(64 * GIB)], Window::Mmio64).unwrap();
        let a = arrange(&b, &space).unwrap();
        // Leading would need [64G-32M, 64G): trailing at 64 GiB instead.
        assert_eq!(a.placed[0], (b[0].shapes[0], 64 * GIB));
    }

    #[test]
    fn block_past_2_to_the_64_is_named() {
        let b = blocks(&[port(&[GIB]), port(&[1 << 63])], Window::Mmio64).unwrap();
        let space = AddressAllocator::empty(u64::MAX - GIB);
        assert_eq!(b[0].port, 1);
        assert_eq!(arrange(&b, &space).unwrap_err(), 0);
    }

    #[test]
    fn never_needs_more_room_than_every_block_trailing() {
        let shapes: [&[u64]; 6] = [
            &[64 * GIB],
            &[128 * GIB, 32 * MIB],
            &[GIB, 2 * MIB, 128 * GIB],
            &[8 * GIB, GIB],
            &[256 * MIB, GIB],
            &[16 * GIB, 4 * GIB, 64 << 10],
        ];
        for a in shapes {
            for b in shapes {
                for c in shapes {
                    let ports = [port(a), port(b), port(c)];
                    for start in [4 * GIB, 5 * GIB, 65 * GIB] {
                        let (_, got) = arranged(&ports, start);
                        assert!(
                            got.last <= trailing_only_last(&ports, start),
                            "{a:x?} {b:x?} {c:x?} from {start:#x}"
                        );
                    }
                }
            }
        }
    }
}
