//! First-fit allocator of guest physical (or I/O port) ranges.
//!
//! An [`AddressAllocator`] owns one inclusive range `[start, end]` (inclusive so a
//! window may end at `u64::MAX` without overflow) and hands out non-overlapping,
//! tagged pieces of it. Tags name the owner ("0000:01:00.0 BAR1", "root port 1
//! prefetchable window") so that `allocations()` explains the guest memory map
//! when something does not fit. A window of size 0 (a VM without 64-bit BARs) is
//! an empty allocator that refuses every request, so callers need no special case.

use std::collections::BTreeMap;
use std::fmt;

/// Round `value` up to `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// One allocated range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub addr: u64,
    pub size: u64,
    pub tag: String,
}

impl Allocation {
    /// Last byte of the range (inclusive).
    pub fn last(&self) -> u64 {
        // An allocation is never empty and never wraps (checked when made).
        self.addr + (self.size - 1)
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x} {}", self.addr, self.last(), self.tag)
    }
}

/// Why an allocation request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("address range {start:#x}..={end:#x} is empty")]
    InvalidRange { start: u64, end: u64 },
    #[error("a range of {size:#x} bytes from {start:#x} passes the end of the address space")]
    RangeTooLarge { start: u64, size: u64 },
    #[error("no room for {size:#x} bytes for {tag}: the range at {start:#x} is empty")]
    EmptyRange { start: u64, size: u64, tag: String },
    #[error("cannot allocate zero bytes for {tag}")]
    ZeroSize { tag: String },
    #[error("alignment {align:#x} requested for {tag} is not a power of two")]
    BadAlignment { align: u64, tag: String },
    #[error(
        "no free {size:#x}-byte range aligned to {align:#x} in {start:#x}..={end:#x} for {tag}"
    )]
    Exhausted {
        size: u64,
        align: u64,
        start: u64,
        end: u64,
        tag: String,
    },
    #[error("{addr:#x}+{size:#x} for {tag} overlaps {existing}")]
    Overlap {
        addr: u64,
        size: u64,
        tag: String,
        existing: Allocation,
    },
    #[error("{addr:#x}+{size:#x} for {tag} is outside {start:#x}..={end:#x}")]
    OutOfRange {
        addr: u64,
        size: u64,
        tag: String,
        start: u64,
        end: u64,
    },
    #[error("nothing is allocated at {addr:#x}")]
    NotAllocated { addr: u64 },
}

/// Tagged first-fit allocator over the inclusive range `[start, end]`, or over
/// nothing (an empty window that still has a start address).
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    start: u64,
    /// Last address of the range (inclusive); `None` when the range is empty.
    end: Option<u64>,
    /// Keyed by start address; ranges never overlap.
    allocs: BTreeMap<u64, Allocation>,
}

impl AddressAllocator {
    /// An allocator over `[start, end]` (both inclusive).
    pub fn new(start: u64, end: u64) -> Result<Self, AllocError> {
        if start > end {
            return Err(AllocError::InvalidRange { start, end });
        }
        Ok(Self {
            start,
            end: Some(end),
            allocs: BTreeMap::new(),
        })
    }

    /// An allocator over the `size` bytes from `start`, the `(start, size)` form
    /// [`crate::plan_mmio64`] returns; empty when `size` is 0.
    pub fn with_size(start: u64, size: u64) -> Result<Self, AllocError> {
        match size.checked_sub(1) {
            None => Ok(Self::empty(start)),
            Some(n) => match start.checked_add(n) {
                Some(end) => Self::new(start, end),
                None => Err(AllocError::RangeTooLarge { start, size }),
            },
        }
    }

    /// An allocator with nothing to hand out.
    pub(crate) fn empty(start: u64) -> Self {
        Self {
            start,
            end: None,
            allocs: BTreeMap::new(),
        }
    }

    /// The same allocations, in a range that runs from `start` to the top of
    /// the address space: for deciding a layout without looking at the end.
    pub(crate) fn unbounded(&self) -> Self {
        Self {
            end: Some(u64::MAX),
            ..self.clone()
        }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address of the managed range (inclusive); `None` when it is empty.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// True when the range holds no address at all.
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }

    /// Allocate `size` bytes aligned to `align` (a power of two; 1 for none) at the
    /// lowest address that fits.
    pub fn allocate(
        &mut self,
        size: u64,
        align: u64,
        tag: impl Into<String>,
    ) -> Result<u64, AllocError> {
        let tag = tag.into();
        if size == 0 {
            return Err(AllocError::ZeroSize { tag });
        }
        if !align.is_power_of_two() {
            return Err(AllocError::BadAlignment { align, tag });
        }
        match self.find_fit(size, align, 0) {
            Some(addr) => {
                self.allocs.insert(addr, Allocation { addr, size, tag });
                Ok(addr)
            }
            None => Err(self.no_room(size, align, tag)),
        }
    }

    /// The error for a `size`-byte request aligned to `align` that found no room.
    pub(crate) fn no_room(&self, size: u64, align: u64, tag: String) -> AllocError {
        match self.end {
            Some(end) => AllocError::Exhausted {
                size,
                align,
                start: self.start,
                end,
                tag,
            },
            None => AllocError::EmptyRange {
                start: self.start,
                size,
                tag,
            },
        }
    }

    /// Allocate `size` bytes aligned to `size` rounded up to a power of two, the
    /// alignment a PCI BAR needs.
    pub fn allocate_natural(
        &mut self,
        size: u64,
        tag: impl Into<String>,
    ) -> Result<u64, AllocError> {
        let tag = tag.into();
        let Some(align) = size.checked_next_power_of_two() else {
            return Err(AllocError::BadAlignment { align: size, tag });
        };
        self.allocate(size, align, tag)
    }

    /// The lowest free `[addr, addr + size)` with `addr + anchor` a multiple of
    /// `align` (a power of two): `anchor` is the offset, inside the range
    /// requested, of the part that must be aligned (0 for the start). `size`
    /// must not be 0. Nothing is allocated.
    pub(crate) fn find_fit(&self, size: u64, align: u64, anchor: u64) -> Option<u64> {
        debug_assert!(size > 0 && align.is_power_of_two());
        let end = self.end?;
        // The lowest address at or above `from` whose anchor is aligned.
        let fit_from = |from: u64| align_up(from.checked_add(anchor)?, align)?.checked_sub(anchor);
        let mut candidate = fit_from(self.start)?;
        for a in self.allocs.values() {
            if a.last() < candidate {
                continue;
            }
            if candidate
                .checked_add(size - 1)
                .is_some_and(|last| last < a.addr)
            {
                break;
            }
            candidate = fit_from(a.last().checked_add(1)?)?;
        }
        let last = candidate.checked_add(size - 1)?;
        (last <= end).then_some(candidate)
    }

    /// Claim exactly `[addr, addr + size)`.
    pub fn allocate_at(
        &mut self,
        addr: u64,
        size: u64,
        tag: impl Into<String>,
    ) -> Result<(), AllocError> {
        let tag = tag.into();
        if size == 0 {
            return Err(AllocError::ZeroSize { tag });
        }
        let Some(end) = self.end else {
            return Err(AllocError::EmptyRange {
                start: self.start,
                size,
                tag,
            });
        };
        let last = addr.checked_add(size - 1);
        let Some(last) = last.filter(|l| addr >= self.start && *l <= end) else {
            return Err(AllocError::OutOfRange {
                addr,
                size,
                tag,
                start: self.start,
                end,
            });
        };
        // Ranges are disjoint, so only the one starting last at or before `last` can overlap.
        if let Some((_, a)) = self.allocs.range(..=last).next_back() {
            if a.last() >= addr {
                return Err(AllocError::Overlap {
                    addr,
                    size,
                    tag,
                    existing: a.clone(),
                });
            }
        }
        self.allocs.insert(addr, Allocation { addr, size, tag });
        Ok(())
    }

    /// Release the allocation starting at `addr`.
    pub fn free(&mut self, addr: u64) -> Result<Allocation, AllocError> {
        self.allocs
            .remove(&addr)
            .ok_or(AllocError::NotAllocated { addr })
    }

    /// The allocation covering `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&Allocation> {
        let (_, a) = self.allocs.range(..=addr).next_back()?;
        (a.last() >= addr).then_some(a)
    }

    /// All allocations in address order, for diagnostics.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.values()
    }

    /// Bytes still free (ignoring alignment).
    pub fn free_bytes(&self) -> u128 {
        let total = self.end.map_or(0, |end| u128::from(end - self.start) + 1);
        total
            - self
                .allocs
                .values()
                .map(|a| u128::from(a.size))
                .sum::<u128>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(start: u64, end: u64) -> AddressAllocator {
        AddressAllocator::new(start, end).unwrap()
    }

    #[test]
    fn new_rejects_inverted_range() {
        assert_eq!(
            AddressAllocator::new(0x2000, 0x1fff).unwrap_err(),
            AllocError::InvalidRange {
                start: 0x2000,
                end: 0x1fff
            }
        );
    }

    #[test]
    fn first_fit_takes_lowest_aligned_address() {
        let mut a = alloc(0x1000, 0xffff);
        assert_eq!(a.allocate(0x100, 0x100, "a").unwrap(), 0x1000);
        assert_eq!(a.allocate(0x1000, 0x1000, "b").unwrap(), 0x2000);
        // The hole 0x1100..0x2000 is reused by a request that fits it.
        assert_eq!(a.allocate(0x200, 0x200, "c").unwrap(), 0x1200);
    }

    #[test]
    fn aligns_start_of_range() {
        let mut a = alloc(0x1001, 0xffff);
        assert_eq!(a.allocate(0x10, 0x1000, "a").unwrap(), 0x2000);
    }

    #[test]
    fn natural_alignment_rounds_size_up() {
        let mut a = alloc(0x1000, 0xffff);
        a.allocate(0x10, 1, "pad").unwrap();
        assert_eq!(a.allocate_natural(0x3000, "bar").unwrap(), 0x4000);
    }

    #[test]
    fn exhausted_reports_size_and_align() {
        let mut a = alloc(0, 0xfff);
        a.allocate(0x800, 0x800, "a").unwrap();
        let err = a.allocate(0x1000, 0x1000, "b").unwrap_err();
        assert!(matches!(
            err,
            AllocError::Exhausted {
                size: 0x1000,
                align: 0x1000,
                ..
            }
        ));
    }

    #[test]
    fn rejects_zero_size_and_bad_alignment() {
        let mut a = alloc(0, 0xfff);
        assert!(matches!(
            a.allocate(0, 1, "z"),
            Err(AllocError::ZeroSize { .. })
        ));
        assert!(matches!(
            a.allocate(0x10, 3, "x"),
            Err(AllocError::BadAlignment { align: 3, .. })
        ));
        assert!(matches!(
            a.allocate(0x10, 0, "x"),
            Err(AllocError::BadAlignment { align: 0, .. })
        ));
    }

    #[test]
    fn range_ending_at_u64_max_does_not_overflow() {
        let mut a = alloc(u64::MAX - 0xfff, u64::MAX);
        assert_eq!(a.allocate(0x1000, 0x1000, "top").unwrap(), u64::MAX - 0xfff);
        assert!(matches!(
            a.allocate(1, 1, "more"),
            Err(AllocError::Exhausted { .. })
        ));
        assert_eq!(a.allocations().next().unwrap().last(), u64::MAX);
    }

    #[test]
    fn allocate_at_detects_overlap_with_neighbour() {
        let mut a = alloc(0, 0xffff);
        a.allocate_at(0x2000, 0x1000, "a").unwrap();
        let err = a.allocate_at(0x1800, 0x1000, "b").unwrap_err();
        match err {
            AllocError::Overlap { existing, .. } => assert_eq!(existing.tag, "a"),
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(
            a.allocate_at(0x2fff, 1, "c"),
            Err(AllocError::Overlap { .. })
        ));
        a.allocate_at(0x3000, 0x10, "d").unwrap();
        a.allocate_at(0x1000, 0x1000, "e").unwrap();
    }

    #[test]
    fn allocate_at_rejects_outside_range() {
        let mut a = alloc(0x1000, 0x1fff);
        assert!(matches!(
            a.allocate_at(0xfff, 2, "x"),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.allocate_at(0x1fff, 2, "x"),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.allocate_at(u64::MAX, 2, "x"),
            Err(AllocError::OutOfRange { .. })
        ));
    }

    #[test]
    fn free_returns_allocation_and_reopens_hole() {
        let mut a = alloc(0, 0x1fff);
        a.allocate(0x1000, 1, "a").unwrap();
        a.allocate(0x1000, 1, "b").unwrap();
        assert_eq!(a.free(0).unwrap().tag, "a");
        assert_eq!(a.free(0), Err(AllocError::NotAllocated { addr: 0 }));
        assert_eq!(a.allocate(0x1000, 1, "c").unwrap(), 0);
    }

    #[test]
    fn find_and_listing_show_tags() {
        let mut a = alloc(0, 0xffff);
        a.allocate_at(0x3000, 0x100, "0000:01:00.0 BAR0").unwrap();
        a.allocate_at(0x1000, 0x100, "0000:02:00.0 BAR2").unwrap();
        assert_eq!(a.find(0x30ff).unwrap().tag, "0000:01:00.0 BAR0");
        assert!(a.find(0x3100).is_none());
        let tags: Vec<_> = a.allocations().map(|x| x.tag.as_str()).collect();
        assert_eq!(tags, ["0000:02:00.0 BAR2", "0000:01:00.0 BAR0"]);
        assert_eq!(a.free_bytes(), 0x10000 - 0x200);
    }

    #[test]
    fn display_of_allocation_names_range_and_tag() {
        let a = Allocation {
            addr: 0x1000,
            size: 0x10,
            tag: "x".into(),
        };
        assert_eq!(a.to_string(), "0x1000..=0x100f x");
    }
    #[test]
    fn with_size_covers_exactly_size_bytes() {
        let a = AddressAllocator::with_size(0x1000, 0x2000).unwrap();
        assert_eq!((a.start(), a.end()), (0x1000, Some(0x2fff)));
        let top = AddressAllocator::with_size(u64::MAX - 0xfff, 0x1000).unwrap();
        assert_eq!(top.end(), Some(u64::MAX));
    }

    #[test]
    fn with_size_zero_is_an_empty_allocator() {
        let a = AddressAllocator::with_size(0x8000_0000_0000, 0).unwrap();
        assert!(a.is_empty());
        assert_eq!((a.start(), a.end()), (0x8000_0000_0000, None));
        assert_eq!(a.free_bytes(), 0);
    }

    #[test]
    fn empty_allocator_refuses_every_request() {
        let mut a = AddressAllocator::with_size(0x1000, 0).unwrap();
        assert_eq!(
            a.allocate(0x10, 0x10, "x"),
            Err(AllocError::EmptyRange {
                start: 0x1000,
                size: 0x10,
                tag: "x".into()
            })
        );
        assert!(matches!(
            a.allocate_at(0x1000, 0x10, "y"),
            Err(AllocError::EmptyRange { size: 0x10, .. })
        ));
        assert_eq!(a.allocations().count(), 0);
    }

    #[test]
    fn with_size_rejects_a_range_past_2_to_the_64() {
        assert_eq!(
            AddressAllocator::with_size(u64::MAX - 0xfff, 0x1001).unwrap_err(),
            AllocError::RangeTooLarge {
                start: u64::MAX - 0xfff,
                size: 0x1001
            }
        );
    }

    #[test]
    fn find_fit_aligns_the_anchor_not_the_start() {
        let mut a = alloc(0x10_0000, 0xff_ffff);
        a.allocate_at(0x10_0000, 0x1000, "low").unwrap();
        // 0x3000 bytes whose byte at +0x1000 must sit on a 64 KiB boundary.
        assert_eq!(a.find_fit(0x3000, 0x1_0000, 0x1000), Some(0x10_f000));
        assert_eq!(a.find_fit(0x3000, 0x1_0000, 0), Some(0x11_0000));
        // Nothing was allocated.
        assert_eq!(a.allocations().count(), 1);
    }

    #[test]
    fn find_fit_anchor_skips_past_allocations() {
        let mut a = alloc(0, 0xf_ffff);
        a.allocate_at(0x1_0000, 0x1_0000, "busy").unwrap();
        // Right below "busy" with the anchor on its start...
        assert_eq!(a.find_fit(0x1000, 0x1_0000, 0x1000), Some(0xf000));
        // ...but a longer range would run into it: the next boundary past it.
        assert_eq!(a.find_fit(0x2000, 0x1_0000, 0x1000), Some(0x2_f000));
    }

    #[test]
    fn unbounded_keeps_allocations_and_lifts_the_end() {
        let mut a = alloc(0x1000, 0x1fff);
        a.allocate(0x1000, 1, "a").unwrap();
        let u = a.unbounded();
        assert_eq!(u.end(), Some(u64::MAX));
        assert_eq!(u.find_fit(0x1000, 0x1000, 0), Some(0x2000));
        assert_eq!(
            AddressAllocator::empty(0x5000).unbounded().end(),
            Some(u64::MAX)
        );
    }
}
