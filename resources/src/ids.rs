//! Allocators for small numeric identifiers: PCI bus numbers and interrupt GSIs.
//!
//! Bus numbers follow PCI Local Bus 3.0 / PCI-to-PCI Bridge 1.2: 0..=255 per
//! segment, bus 0 being the root complex's own bus. GSIs: the platform (`arch`'s
//! layout) says where MSI routes start, above the IOAPIC pins that are never handed
//! out, and the VMM how far they go (KVM accepts up to `KVM_MAX_IRQ_ROUTES` routes).

use std::collections::BTreeSet;

/// Why an identifier could not be allocated or freed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} range {first}..={last} is empty")]
    InvalidRange {
        what: &'static str,
        first: u32,
        last: u32,
    },
    #[error("all {what}s {first}..={last} are in use")]
    Exhausted {
        what: &'static str,
        first: u32,
        last: u32,
    },
    #[error("{what} {id} is reserved")]
    Reserved { what: &'static str, id: u32 },
    #[error("{what} {id} is outside {first}..={last}")]
    OutOfRange {
        what: &'static str,
        id: u32,
        first: u32,
        last: u32,
    },
    #[error("{what} {id} is already in use")]
    InUse { what: &'static str, id: u32 },
    #[error("{what} {id} is not allocated")]
    NotAllocated { what: &'static str, id: u32 },
}

/// Lowest-free allocator over `first..=last`.
#[derive(Debug, Clone)]
struct IdPool {
    what: &'static str,
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
}

impl IdPool {
    fn new(what: &'static str, first: u32, last: u32) -> Result<Self, IdError> {
        if first > last {
            return Err(IdError::InvalidRange { what, first, last });
        }
        Ok(Self {
            what,
            first,
            last,
            used: BTreeSet::new(),
        })
    }

    fn check(&self, id: u32) -> Result<(), IdError> {
        if (self.first..=self.last).contains(&id) {
            return Ok(());
        }
        Err(IdError::OutOfRange {
            what: self.what,
            id,
            first: self.first,
            last: self.last,
        })
    }

    fn allocate(&mut self) -> Result<u32, IdError> {
        // `used` is sorted: the first gap in it is the lowest free id.
        let mut id = self.first;
        for &u in self.used.range(self.first..) {
            if u != id {
                break;
            }
            id = id.checked_add(1).ok_or_else(|| self.exhausted())?;
        }
        if id > self.last {
            return Err(self.exhausted());
        }
        self.used.insert(id);
        Ok(id)
    }

    fn exhausted(&self) -> IdError {
        IdError::Exhausted {
            what: self.what,
            first: self.first,
            last: self.last,
        }
    }

    fn allocate_at(&mut self, id: u32) -> Result<(), IdError> {
        self.check(id)?;
        if !self.used.insert(id) {
            return Err(IdError::InUse {
                what: self.what,
                id,
            });
        }
        Ok(())
    }

    fn free(&mut self, id: u32) -> Result<(), IdError> {
        self.check(id)?;
        if !self.used.remove(&id) {
            return Err(IdError::NotAllocated {
                what: self.what,
                id,
            });
        }
        Ok(())
    }
}

/// PCI bus numbers of one segment; bus 0 belongs to the root complex.
#[derive(Debug, Clone)]
pub struct BusNumberAllocator {
    pool: IdPool,
}

impl Default for BusNumberAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl BusNumberAllocator {
    const WHAT: &'static str = "PCI bus number";

    pub fn new() -> Self {
        // 1..=255 is non-empty, so this cannot fail.
        let pool = IdPool {
            what: Self::WHAT,
            first: 1,
            last: 255,
            used: BTreeSet::new(),
        };
        Self { pool }
    }

    /// The lowest free bus number (1 for the first root port).
    pub fn allocate(&mut self) -> Result<u8, IdError> {
        // The pool never goes past 255.
        self.pool.allocate().map(|b| b as u8)
    }

    /// Claim bus `bus`; bus 0 is the root complex's and cannot be claimed.
    pub fn allocate_at(&mut self, bus: u8) -> Result<(), IdError> {
        self.reserved(bus)?;
        self.pool.allocate_at(bus.into())
    }

    pub fn free(&mut self, bus: u8) -> Result<(), IdError> {
        self.reserved(bus)?;
        self.pool.free(bus.into())
    }

    fn reserved(&self, bus: u8) -> Result<(), IdError> {
        match bus {
            0 => Err(IdError::Reserved {
                what: Self::WHAT,
                id: 0,
            }),
            _ => Ok(()),
        }
    }
}

/// GSIs for MSI routes, from the platform's first MSI GSI up to a maximum.
#[derive(Debug, Clone)]
pub struct GsiAllocator {
    pool: IdPool,
}

impl GsiAllocator {
    const WHAT: &'static str = "MSI GSI";

    /// MSI GSIs `first..=max_gsi`; the GSIs below `first` are the platform's fixed pins.
    pub fn new(first: u32, max_gsi: u32) -> Result<Self, IdError> {
        Ok(Self {
            pool: IdPool::new(Self::WHAT, first, max_gsi)?,
        })
    }

    /// Whether `gsi` is one of the fixed pins below the MSI range.
    pub fn is_legacy(&self, gsi: u32) -> bool {
        gsi < self.pool.first
    }

    /// The lowest free MSI GSI.
    pub fn allocate(&mut self) -> Result<u32, IdError> {
        self.pool.allocate()
    }

    /// Return an MSI GSI; legacy GSIs were never allocated and cannot be freed.
    pub fn free(&mut self, gsi: u32) -> Result<(), IdError> {
        if self.is_legacy(gsi) {
            return Err(IdError::Reserved {
                what: Self::WHAT,
                id: gsi,
            });
        }
        self.pool.free(gsi)
    }

    /// Highest GSI this allocator hands out.
    pub fn max_gsi(&self) -> u32 {
        self.pool.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_numbers_start_at_one() {
        let mut b = BusNumberAllocator::new();
        assert_eq!(b.allocate().unwrap(), 1);
        assert_eq!(b.allocate().unwrap(), 2);
    }

    #[test]
    fn bus_zero_is_reserved() {
        let mut b = BusNumberAllocator::new();
        assert!(matches!(
            b.allocate_at(0),
            Err(IdError::Reserved { id: 0, .. })
        ));
        assert!(matches!(b.free(0), Err(IdError::Reserved { id: 0, .. })));
    }

    #[test]
    fn bus_numbers_exhaust_after_255() {
        let mut b = BusNumberAllocator::new();
        for i in 1..=255u8 {
            assert_eq!(b.allocate().unwrap(), i);
        }
        assert!(matches!(
            b.allocate(),
            Err(IdError::Exhausted {
                first: 1,
                last: 255,
                ..
            })
        ));
    }

    #[test]
    fn bus_allocate_at_then_allocate_skips_it() {
        let mut b = BusNumberAllocator::new();
        b.allocate_at(1).unwrap();
        assert!(matches!(
            b.allocate_at(1),
            Err(IdError::InUse { id: 1, .. })
        ));
        assert_eq!(b.allocate().unwrap(), 2);
    }

    #[test]
    fn freed_bus_is_reused_lowest_first() {
        let mut b = BusNumberAllocator::new();
        for _ in 0..4 {
            b.allocate().unwrap();
        }
        b.free(2).unwrap();
        assert!(matches!(
            b.free(2),
            Err(IdError::NotAllocated { id: 2, .. })
        ));
        assert_eq!(b.allocate().unwrap(), 2);
        assert_eq!(b.allocate().unwrap(), 5);
    }

    #[test]
    fn gsis_start_after_ioapic_pins() {
        let mut g = GsiAllocator::new(24, 4095).unwrap();
        assert_eq!(g.allocate().unwrap(), 24);
        assert_eq!(g.allocate().unwrap(), 25);
        assert!(g.is_legacy(23));
        assert!(!g.is_legacy(24));
    }

    #[test]
    fn gsi_exhaustion_names_range() {
        let mut g = GsiAllocator::new(24, 25).unwrap();
        g.allocate().unwrap();
        g.allocate().unwrap();
        assert_eq!(
            g.allocate(),
            Err(IdError::Exhausted {
                what: "MSI GSI",
                first: 24,
                last: 25
            })
        );
    }

    #[test]
    fn legacy_gsi_cannot_be_freed() {
        let mut g = GsiAllocator::new(24, 100).unwrap();
        assert!(matches!(g.free(4), Err(IdError::Reserved { id: 4, .. })));
    }

    #[test]
    fn gsi_free_checks_range_and_state() {
        let mut g = GsiAllocator::new(24, 30).unwrap();
        assert!(matches!(
            g.free(31),
            Err(IdError::OutOfRange { id: 31, .. })
        ));
        assert!(matches!(
            g.free(24),
            Err(IdError::NotAllocated { id: 24, .. })
        ));
        let x = g.allocate().unwrap();
        g.free(x).unwrap();
        assert_eq!(g.allocate().unwrap(), x);
    }

    #[test]
    fn gsi_max_below_first_is_rejected() {
        assert!(matches!(
            GsiAllocator::new(24, 23),
            Err(IdError::InvalidRange { .. })
        ));
        assert_eq!(GsiAllocator::new(24, 24).unwrap().max_gsi(), 24);
    }
}
