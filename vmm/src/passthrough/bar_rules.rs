//! What the guest may do with the BARs of passed-through functions, and when Strait
//! acts on it (PCI Local Bus 3.0, 6.2.5; PCI Firmware 3.2 on host bridge windows).
//!
//! - [`BarWindows::check`]: a BAR may decode only inside the host bridge windows the
//!   ACPI `_CRS` announces (I/O BARs in the I/O window, memory BARs in the 32- or 64-bit
//!   window) and never over guest RAM. Linux keeps BARs where Strait placed them; the
//!   rule is for guests that move them.
//! - [`ConfigEffects`]: the effects of guest config writes (BAR moves, decode switches,
//!   a root port's Secondary Bus Reset, PCI-to-PCI Bridge 1.2, 3.2.5.18) queue here. The ECAM and CF8 handlers run under a bus read lock and must not take a
//!   bus write lock, so they only record; the vCPU applies the queue after the dispatch
//!   ([`super::BarMapper::apply_pending`]).

use resources::lock;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{BarKind, Bdf, ConfigWriteHandler, ConfigWriteResult, PciRoot, SharedPciDevice};

/// The guest physical map a BAR must respect: RAM it may not cover and the host bridge
/// windows (ACPI `_CRS`) it must stay inside. Ranges are half-open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarWindows {
    pub ram: Vec<Range<u64>>,
    pub io: Range<u64>,
    pub mmio32: Range<u64>,
    pub mmio64: Range<u64>,
}

/// Why a BAR address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OverlapsRam,
    OutsideWindow,
}

fn inside(w: &Range<u64>, r: &Range<u64>) -> bool {
    w.start <= r.start && r.end <= w.end
}

impl BarWindows {
    /// May a BAR of `kind` and `size` decode at `addr`?
    pub fn check(&self, kind: BarKind, addr: u64, size: u64) -> Result<(), Refusal> {
        let Some(end) = addr.checked_add(size).filter(|_| size > 0) else {
            return Err(Refusal::OutsideWindow);
        };
        let r = addr..end;
        if kind == BarKind::Io {
            return if inside(&self.io, &r) {
                Ok(())
            } else {
                Err(Refusal::OutsideWindow)
            };
        }
        if self.ram.iter().any(|m| m.start < r.end && r.start < m.end) {
            return Err(Refusal::OverlapsRam);
        }
        if inside(&self.mmio32, &r) || inside(&self.mmio64, &r) {
            Ok(())
        } else {
            Err(Refusal::OutsideWindow)
        }
    }
}

/// A queued config-write effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A write to passthrough function `i` (BAR moves, decode switches).
    Function(usize, ConfigWriteResult),
    /// The guest set Secondary Bus Reset on passthrough root port `i`: the functions
    /// behind it are reset.
    BusReset(usize),
}

/// Config-write effects waiting for the vCPU to apply them.
#[derive(Debug, Default)]
pub struct ConfigEffects {
    queued: Mutex<Vec<Effect>>,
    pending: AtomicBool,
}

impl ConfigEffects {
    pub(crate) fn push(&self, function: usize, result: ConfigWriteResult) {
        self.push_effect(Effect::Function(function, result));
    }

    fn push_effect(&self, effect: Effect) {
        lock(&self.queued).push(effect);
        self.pending.store(true, Ordering::Release);
    }

    pub(crate) fn take(&self) -> Vec<Effect> {
        // Every vCPU asks after every exit: a plain load keeps the common case from
        // writing the shared cache line.
        if !self.pending.load(Ordering::Acquire) || !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.queued))
    }

    /// The handler for an ECAM or CF8 front-end over `root`. It finds the function by
    /// identity, not by address, so a guest that renumbers buses still reaches it.
    /// `functions[i]` is passthrough function `i` and `ports[i]` passthrough root port
    /// `i` as attached to `root`.
    pub fn handler(
        self: &Arc<Self>,
        root: Arc<PciRoot>,
        functions: Vec<SharedPciDevice>,
        ports: Vec<SharedPciDevice>,
    ) -> ConfigWriteHandler {
        let effects = self.clone();
        let ids: Vec<usize> = functions.iter().map(identity).collect();
        let port_ids: Vec<usize> = ports.iter().map(identity).collect();
        Box::new(move |bdf: Bdf, result| {
            let Some(dev) = root.device(bdf) else {
                return;
            };
            let id = identity(&dev);
            if let Some(i) = ids.iter().position(|&x| x == id) {
                effects.push(i, result);
            } else if let Some(i) = port_ids.iter().position(|&x| x == id) {
                if result.secondary_bus_reset {
                    effects.push_effect(Effect::BusReset(i));
                }
            }
        })
    }
}

fn identity(dev: &SharedPciDevice) -> usize {
    Arc::as_ptr(dev).cast::<()>() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn windows() -> BarWindows {
        BarWindows {
            ram: vec![0..3 * GIB, 4 * GIB..5 * GIB],
            io: 0x1000..0x1_0000,
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: 8 * GIB..16 * GIB,
        }
    }

    const MEM: BarKind = BarKind::Mem32 {
        prefetchable: false,
    };

    #[test]
    fn bar_inside_a_window_is_accepted() {
        let w = windows();
        assert_eq!(w.check(MEM, 0xc000_0000, 0x4000), Ok(()));
        let pref = BarKind::Mem64 { prefetchable: true };
        assert_eq!(w.check(pref, 8 * GIB, 8 * GIB), Ok(()));
        assert_eq!(w.check(BarKind::Io, 0xff00, 0x100), Ok(()));
    }

    #[test]
    fn bar_onto_ram_is_refused() {
        let w = windows();
        assert_eq!(w.check(MEM, 0x1000, 0x1000), Err(Refusal::OverlapsRam));
        let mem64 = BarKind::Mem64 {
            prefetchable: false,
        };
        assert_eq!(
            w.check(mem64, 5 * GIB - 0x1000, 0x2000),
            Err(Refusal::OverlapsRam)
        );
    }

    #[test]
    fn bar_outside_or_across_windows_is_refused() {
        let w = windows();
        // Ends past the 32-bit window into the ECAM.
        assert_eq!(
            w.check(MEM, 0xdfff_f000, 0x2000),
            Err(Refusal::OutsideWindow)
        );
        assert_eq!(
            w.check(MEM, 0xfec0_0000, 0x1000),
            Err(Refusal::OutsideWindow)
        );
        assert_eq!(w.check(BarKind::Io, 0x3f8, 8), Err(Refusal::OutsideWindow));
        assert_eq!(
            w.check(MEM, u64::MAX - 0xfff, 0x1000),
            Err(Refusal::OutsideWindow)
        );
        assert_eq!(w.check(MEM, 0xc000_0000, 0), Err(Refusal::OutsideWindow));
    }

    #[test]
    fn queued_effects_are_taken_once() {
        let e = ConfigEffects::default();
        assert!(e.take().is_empty());
        let r = ConfigWriteResult {
            mem_decode: Some(true),
            ..Default::default()
        };
        e.push(1, r.clone());
        assert_eq!(e.take(), vec![Effect::Function(1, r)]);
        assert!(e.take().is_empty());
    }
}
