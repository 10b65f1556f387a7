//! BAR planning: which parts of each BAR the guest reaches directly through a
//! KVM memory slot over an mmap of the VFIO region, and which parts trap to
//! the VMM (`bar_read`/`bar_write`).
//!
//! Rules (Documentation/driver-api/vfio.rst, KVM API `KVM_SET_USER_MEMORY_REGION`):
//! - Only regions with VFIO_REGION_INFO_FLAG_MMAP are mapped; with the sparse
//!   mmap capability only the areas listed there.
//! - The MSI-X table and PBA are emulated (PCI Local Bus 3.0, 6.8.2), so their
//!   pages always trap. VFIO_REGION_INFO_CAP_MSIX_MAPPABLE only says the kernel
//!   would allow mapping them; mapping them would let the guest program host
//!   MSI-X entries directly, so it does not change the plan. It does mean the
//!   kernel's sparse areas cover the table, so the cut has to be made here.
//! - KVM slots are page granular: BARs smaller than a page, and partial pages,
//!   trap. I/O BARs always trap (port I/O cannot be mapped).

use crate::device::{RegionInfo, Span};

/// Host and KVM page size for memory slots.
pub const PAGE_SIZE: u64 = 4096;

/// What to do with one BAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarPlan {
    /// BAR index 0..=5.
    pub index: u8,
    pub size: u64,
    /// Offsets inside the BAR to mmap and register as KVM memory slots; page
    /// aligned, sorted, disjoint.
    pub mapped: Vec<Span>,
    /// The rest of the BAR, sorted: accesses exit to the VMM.
    pub trapped: Vec<Span>,
}

fn align_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

fn align_up(v: u64) -> u64 {
    v.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// The whole pages inside `s` (shrinks a span that is not page aligned).
fn pages_within(s: Span, limit: u64) -> Option<Span> {
    let start = align_up(s.offset);
    let end = align_down(s.end().min(limit));
    (end > start).then(|| Span {
        offset: start,
        size: end - start,
    })
}

/// `s` minus the pages touched by `hole`.
fn cut(s: Span, hole: Span) -> Vec<Span> {
    if hole.size == 0 {
        return vec![s];
    }
    let (h0, h1) = (align_down(hole.offset), align_up(hole.end()));
    if h1 <= s.offset || h0 >= s.end() {
        return vec![s];
    }
    let mut out = Vec::new();
    if h0 > s.offset {
        out.push(Span {
            offset: s.offset,
            size: h0 - s.offset,
        });
    }
    if h1 < s.end() {
        out.push(Span {
            offset: h1,
            size: s.end() - h1,
        });
    }
    out
}

/// `[0, size)` minus the sorted, disjoint `mapped` spans.
fn complement(mapped: &[Span], size: u64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut at = 0;
    for m in mapped {
        if m.offset > at {
            out.push(Span {
                offset: at,
                size: m.offset - at,
            });
        }
        at = at.max(m.end());
    }
    if at < size {
        out.push(Span {
            offset: at,
            size: size - at,
        });
    }
    out
}

/// Plan BAR `index` of `info.size` bytes. `holes` are the spans inside this
/// BAR that must trap (MSI-X table and PBA); `io` marks an I/O BAR.
pub fn plan_bar(index: u8, io: bool, info: &RegionInfo, holes: &[Span]) -> BarPlan {
    let size = info.size;
    let mut mapped = Vec::new();
    if !io && info.mmap && size >= PAGE_SIZE {
        let whole = [Span { offset: 0, size }];
        let areas = info.sparse_areas.as_deref().unwrap_or(&whole);
        mapped = areas
            .iter()
            .filter_map(|a| pages_within(*a, size))
            .collect();
        for hole in holes {
            mapped = mapped.into_iter().flat_map(|s| cut(s, *hole)).collect();
        }
        mapped.sort_by_key(|s| s.offset);
        mapped.dedup();
    }
    let trapped = complement(&mapped, size);
    BarPlan {
        index,
        size,
        mapped,
        trapped,
    }
}

impl BarPlan {
    /// True when `offset` falls in a mapped span (the guest should never trap there).
    pub fn is_mapped(&self, offset: u64) -> bool {
        self.mapped
            .iter()
            .any(|s| offset >= s.offset && offset < s.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn sp(offset: u64, size: u64) -> Span {
        Span { offset, size }
    }

    fn mem(size: u64) -> RegionInfo {
        RegionInfo {
            size,
            readable: true,
            writable: true,
            mmap: true,
            ..Default::default()
        }
    }

    #[test]
    fn plain_bar_is_mapped_whole() {
        let p = plan_bar(0, false, &mem(16 * P), &[]);
        assert_eq!(p.mapped, vec![sp(0, 16 * P)]);
        assert!(p.trapped.is_empty());
    }

    #[test]
    fn msix_table_at_start_traps_its_pages() {
        let p = plan_bar(0, false, &mem(16 * P), &[sp(0, 0x800)]);
        assert_eq!(p.mapped, vec![sp(P, 15 * P)]);
        assert_eq!(p.trapped, vec![sp(0, P)]);
    }

    #[test]
    fn msix_table_in_the_middle_splits_the_bar() {
        let p = plan_bar(2, false, &mem(16 * P), &[sp(4 * P + 0x100, P)]);
        assert_eq!(p.mapped, vec![sp(0, 4 * P), sp(6 * P, 10 * P)]);
        assert_eq!(p.trapped, vec![sp(4 * P, 2 * P)]);
    }

    #[test]
    fn msix_table_at_end_traps_the_last_page() {
        let p = plan_bar(0, false, &mem(16 * P), &[sp(15 * P + 0x800, 0x800)]);
        assert_eq!(p.mapped, vec![sp(0, 15 * P)]);
        assert_eq!(p.trapped, vec![sp(15 * P, P)]);
    }

    #[test]
    fn table_and_pba_in_one_page_trap_one_page() {
        let holes = [sp(8 * P, 0x100), sp(8 * P + 0x800, 8)];
        let p = plan_bar(0, false, &mem(16 * P), &holes);
        assert_eq!(p.mapped, vec![sp(0, 8 * P), sp(9 * P, 7 * P)]);
        assert_eq!(p.trapped, vec![sp(8 * P, P)]);
    }

    #[test]
    fn kernel_sparse_areas_are_honoured() {
        let mut info = mem(16 * P);
        info.sparse_areas = Some(vec![sp(0, 2 * P), sp(3 * P, 13 * P)]);
        let p = plan_bar(0, false, &info, &[]);
        assert_eq!(p.mapped, vec![sp(0, 2 * P), sp(3 * P, 13 * P)]);
        assert_eq!(p.trapped, vec![sp(2 * P, P)]);
    }

    #[test]
    fn msix_mappable_still_traps_table_pages() {
        let mut info = mem(4 * P);
        info.msix_mappable = true;
        let p = plan_bar(0, false, &info, &[sp(2 * P, 0x40)]);
        assert!(!p.is_mapped(2 * P));
        assert_eq!(p.trapped, vec![sp(2 * P, P)]);
    }

    #[test]
    fn unaligned_sparse_area_shrinks_to_whole_pages() {
        let mut info = mem(8 * P);
        info.sparse_areas = Some(vec![sp(0x800, 3 * P)]);
        let p = plan_bar(0, false, &info, &[]);
        assert_eq!(p.mapped, vec![sp(P, 2 * P)]);
    }

    #[test]
    fn sub_page_bar_traps_entirely() {
        let p = plan_bar(0, false, &mem(256), &[]);
        assert!(p.mapped.is_empty());
        assert_eq!(p.trapped, vec![sp(0, 256)]);
    }

    #[test]
    fn io_bar_and_non_mmap_region_trap_entirely() {
        assert!(plan_bar(4, true, &mem(4 * P), &[]).mapped.is_empty());
        let mut info = mem(4 * P);
        info.mmap = false;
        assert_eq!(plan_bar(4, false, &info, &[]).trapped, vec![sp(0, 4 * P)]);
    }

    #[test]
    fn empty_sparse_list_maps_nothing() {
        let mut info = mem(4 * P);
        info.sparse_areas = Some(vec![]);
        assert!(plan_bar(0, false, &info, &[]).mapped.is_empty());
    }
}
