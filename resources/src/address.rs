//! First-fit allocator of guest physical (or I/O port) ranges.
//!
//! An [`AddressAllocator`] owns one inclusive range `[start, end]` (inclusive so a
//! window may end at `u64::MAX` without overflow) and hands out non-overlapping,
//! tagged pieces of it. Tags name the owner ("0000:01:00.0 BAR1", "root port 1
//! prefetchable window") so that `allocations()` explains the guest memory map
//! when something does not fit.

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

/// Tagged first-fit allocator over the inclusive range `[start, end]`.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    start: u64,
    end: u64,
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
            end,
            allocs: BTreeMap::new(),
        })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address of the managed range (inclusive).
    pub fn end(&self) -> u64 {
        self.end
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
        match self.first_fit(size, align) {
            Some(addr) => {
                self.allocs.insert(addr, Allocation { addr, size, tag });
                Ok(addr)
            }
            None => Err(AllocError::Exhausted {
                size,
                align,
                start: self.start,
                end: self.end,
                tag,
            }),
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

    fn first_fit(&self, size: u64, align: u64) -> Option<u64> {
        let mut candidate = align_up(self.start, align)?;
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
            candidate = align_up(a.last().checked_add(1)?, align)?;
        }
        let last = candidate.checked_add(size - 1)?;
        (last <= self.end).then_some(candidate)
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
        let last = addr.checked_add(size - 1);
        let Some(last) = last.filter(|l| addr >= self.start && *l <= self.end) else {
            return Err(AllocError::OutOfRange {
                addr,
                size,
                tag,
                start: self.start,
                end: self.end,
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
        let total = u128::from(self.end - self.start) + 1;
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
}
