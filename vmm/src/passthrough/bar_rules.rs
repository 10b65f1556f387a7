//! What the guest may do with the BARs of passed-through functions, and when Strait
//! acts on it (PCI Local Bus 3.0, 6.2.5; PCI Firmware 3.2 on host bridge windows).
//!
//! - [`BarWindows::check`]: a BAR may decode only inside the host bridge windows the
//!   ACPI `_CRS` announces (I/O BARs in the I/O window, memory BARs in the 32- or 64-bit
//!   window) and never over guest RAM. Linux keeps BARs where Strait placed them; the
//!   rule is for guests that move them.
//! - [`PortWindows::forwards`]: the root port above a function forwards an access only
//!   inside the windows the guest programmed in it now (PCI-to-PCI Bridge 1.2, 3.2.5.6-
//!   3.2.5.10: I/O, memory, prefetchable memory; a prefetchable BAR may sit in either
//!   memory window); a BAR outside them is not reachable and is not mapped.
//! - [`ConfigEffects`]: the effects of guest config writes (BAR moves, decode switches,
//!   a root port's Secondary Bus Reset, PCI-to-PCI Bridge 1.2, 3.2.5.18) queue here. The ECAM and CF8 handlers run under a bus read lock and must not take a
//!   bus write lock, so they only record; the vCPU applies the queue after the dispatch
//!   ([`super::BarMapper::apply_pending`]).

use resources::lock;
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{
    BarKind, Bdf, ConfigWriteHandler, ConfigWriteResult, PciRoot, RootPort, SharedPciDevice,
};

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

/// A root port's forwarding windows as the guest last programmed them (`None`: closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortWindows {
    pub io: Option<RangeInclusive<u64>>,
    pub mem: Option<RangeInclusive<u64>>,
    pub prefetchable: Option<RangeInclusive<u64>>,
}

impl PortWindows {
    /// The windows `port` forwards now.
    pub fn of(port: &RootPort) -> Self {
        PortWindows {
            io: port.io_window(),
            mem: port.mem_window(),
            prefetchable: port.prefetchable_window(),
        }
    }

    /// Does the port forward accesses to a BAR of `kind` at `addr` with `size` bytes?
    pub fn forwards(&self, kind: BarKind, addr: u64, size: u64) -> bool {
        let Some(last) = size.checked_sub(1).and_then(|s| addr.checked_add(s)) else {
            return false;
        };
        let holds = |w: &Option<RangeInclusive<u64>>| {
            w.as_ref()
                .is_some_and(|w| w.contains(&addr) && w.contains(&last))
        };
        match kind {
            BarKind::Io => holds(&self.io),
            BarKind::Mem32 { prefetchable: true } | BarKind::Mem64 { prefetchable: true } => {
                holds(&self.mem) || holds(&self.prefetchable)
            }
            BarKind::Mem32 { .. } | BarKind::Mem64 { .. } => holds(&self.mem),
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
    /// The guest wrote a forwarding window of passthrough root port `i`: the BARs
    /// behind it are checked against the new windows.
    PortWindows(usize),
}

/// Config-write effects waiting for the vCPU to apply them. `pending` stays set until
/// every queued effect has been applied, not just taken: a vCPU that wrote a config
/// register re-enters the guest only once its effects are in force, even when another
/// vCPU took them off the queue.
#[derive(Debug, Default)]
pub struct ConfigEffects {
    queued: Mutex<Vec<Effect>>,
    pending: AtomicBool,
}

impl ConfigEffects {
    pub(crate) fn push(&self, function: usize, result: ConfigWriteResult) {
        self.push_effect(Effect::Function(function, result));
    }

    #[cfg(test)]
    pub(crate) fn push_port_windows(&self, port: usize) {
        self.push_effect(Effect::PortWindows(port));
    }

    fn push_effect(&self, effect: Effect) {
        let mut q = lock(&self.queued);
        q.push(effect);
        self.pending.store(true, Ordering::Release);
    }

    /// Whether effects are queued or being applied. Every vCPU asks after every exit: a
    /// plain load keeps the common case from writing the shared cache line.
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The queued effects; the caller applies them, then calls [`Self::settle`].
    pub(crate) fn take(&self) -> Vec<Effect> {
        std::mem::take(&mut *lock(&self.queued))
    }

    /// Everything taken is applied: clear `pending` unless more arrived meanwhile.
    pub(crate) fn settle(&self) {
        let q = lock(&self.queued);
        if q.is_empty() {
            self.pending.store(false, Ordering::Release);
        }
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
                if result.bridge_windows {
                    effects.push_effect(Effect::PortWindows(i));
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

    #[test]
    fn a_port_forwards_each_kind_only_inside_its_window() {
        let w = PortWindows {
            io: Some(0x1000..=0x1fff),
            mem: Some(0xc000_0000..=0xc0ff_ffff),
            prefetchable: Some(0x2_0000_0000..=0x2_ffff_ffff),
        };
        let pref32 = BarKind::Mem32 { prefetchable: true };
        let pref64 = BarKind::Mem64 { prefetchable: true };
        assert!(w.forwards(BarKind::Io, 0x1ff0, 0x10));
        assert!(!w.forwards(BarKind::Io, 0x1ff0, 0x20), "crosses the limit");
        assert!(w.forwards(MEM, 0xc0ff_f000, 0x1000));
        assert!(
            !w.forwards(MEM, 0x2_0000_0000, 0x1000),
            "not in the prefetchable one"
        );
        assert!(w.forwards(pref64, 0x2_0000_0000, 1 << 30));
        assert!(
            w.forwards(pref64, 0xc000_0000, 0x1000),
            "either memory window"
        );
        assert!(w.forwards(pref32, 0xc000_0000, 0x1000));
        assert!(!w.forwards(MEM, u64::MAX, 0x1000), "wraps");
        assert!(!w.forwards(MEM, 0xc000_0000, 0), "empty");
        assert!(
            !PortWindows::default().forwards(MEM, 0xc000_0000, 0x1000),
            "closed"
        );
    }
}
