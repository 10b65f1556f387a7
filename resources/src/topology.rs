//! The guest's PCI topology, planned once for every device: the one home of the rules
//! that say where each guest function sits and where its BARs and bridge windows go.
//! The VMM builds the guest from it, `strait`'s tests and tools read the same plan.
//!
//! Shape (PCIe Base 6.0, 1.3 root complex; q35-like): one host bridge at 00:00.0 on
//! bus 0, and one PCIe root port per guest slot, because a root port is what gives a
//! passed-through device a link (speed, width, AER, hot reset) the way a real server's
//! slot does; a device on the root bus would be a root-complex integrated endpoint,
//! which GPU drivers do not expect. Root port `i` sits at 00:(i+1).0 (slot 0 is the
//! host bridge's), its secondary bus is the next free bus number, and the functions of
//! its slot are (bus):00.f, numbered from 0 in the order the request lists them
//! (function 0 must exist for the guest to scan the slot).
//!
//! Two steps, because the BARs are known only once the devices are open:
//! 1. [`Topology::new`] numbers slots, ports, buses and functions from the requests;
//! 2. [`Topology::place`] lays every BAR out: the 64-bit window sized from the BARs
//!    ([`plan_mmio64`]), then each BAR in the I/O, 32-bit or 64-bit window and each
//!    root port's windows around its share ([`place_bars`]).
//!
//! Later inputs (virtio functions, a NUMA node per device with a host bridge per
//! node) extend [`SlotRequest`] and the numbering; the placement does not change.

use std::ops::RangeInclusive;

use crate::address::{AddressAllocator, AllocError};
use crate::bdf::Bdf;
use crate::ids::{BusNumberAllocator, IdError};
use crate::placement::{place_bars, BarRequest, PortRequest, Window, Windows};
use crate::plan::{plan_mmio64, Mmio64Floor, PlanError};

/// Root ports a guest can have: slots 1..=31 of bus 0.
pub const MAX_ROOT_PORTS: usize = 31;

/// The host bridge's address.
pub const HOST_BRIDGE: Bdf = Bdf::from_devfn(0, 0, 0);

/// One guest slot to create: a device with `functions` functions behind a root port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// Names the slot in logs and errors, e.g. the host device "0000:01:00".
    pub tag: String,
    /// Functions of the device, 1..=8.
    pub functions: u8,
}

/// Why the topology could not be numbered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("{count} devices need more root ports than bus 0 has slots ({MAX_ROOT_PORTS})")]
    TooManySlots { count: usize },
    #[error("{tag}: a slot holds 1 to 8 functions, not {functions}")]
    BadFunctionCount { tag: String, functions: u8 },
    #[error("no bus number left for another root port")]
    BusNumbers(#[source] IdError),
}

/// One root port and the slot behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSlot {
    pub tag: String,
    /// The root port's own address on bus 0.
    pub bdf: Bdf,
    pub secondary_bus: u8,
    /// The guest addresses of the slot's functions, function 0 first.
    pub functions: Vec<Bdf>,
}

impl PortSlot {
    /// The port's device number on bus 0: its INTx `_PRT` rotation and its number in
    /// Link Capabilities.
    pub fn slot(&self) -> u8 {
        self.bdf.device()
    }

    /// Whether function 0's header must carry the multi-function bit.
    pub fn multifunction(&self) -> bool {
        self.functions.len() > 1
    }
}

/// The numbered topology: host bridge and root ports, with their functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub ports: Vec<PortSlot>,
}

/// The platform's windows for BARs, handed over by `arch` (which owns the layout),
/// and what the host allows: the guest's physical address width and the IOMMU's
/// inclusive IOVA ranges (empty: unrestricted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPlatform {
    /// I/O port window, (start, size).
    pub io: (u64, u64),
    /// 32-bit MMIO window below 4 GiB, (start, size).
    pub mmio32: (u64, u64),
    /// Where the 64-bit window may start.
    pub mmio64: Mmio64Floor,
    pub phys_bits: u8,
    pub iova: Vec<(u64, u64)>,
}

/// One BAR of a function behind a port, as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionBar {
    /// Index of the function in [`PortSlot::functions`].
    pub function: u8,
    /// BAR number (0-5, or the ROM's).
    pub index: u8,
    pub request: BarRequest,
}

/// A BAR's guest address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedBar {
    pub function: Bdf,
    pub index: u8,
    pub addr: u64,
    pub request: BarRequest,
}

/// One root port, placed: its windows and the BARs behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub slot: PortSlot,
    pub io: Option<RangeInclusive<u64>>,
    pub mem: Option<RangeInclusive<u64>>,
    pub prefetchable: Option<RangeInclusive<u64>>,
    pub bars: Vec<PlacedBar>,
}

/// The whole guest PCI picture: what ACPI announces and what each port forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciMap {
    /// The 64-bit window, (start, size); size 0 when no BAR lives there.
    pub mmio64: (u64, u64),
    /// Highest bus number in use (the host bridge's bus range is 0..=bus_end).
    pub bus_end: u8,
    pub ports: Vec<PortMap>,
}

impl Topology {
    /// Number ports, buses and functions for `slots`, in request order.
    pub fn new(slots: &[SlotRequest]) -> Result<Topology, TopologyError> {
        if slots.len() > MAX_ROOT_PORTS {
            return Err(TopologyError::TooManySlots { count: slots.len() });
        }
        let mut buses = BusNumberAllocator::new();
        let mut ports = Vec::with_capacity(slots.len());
        for (device, req) in (1u8..).zip(slots) {
            if !(1..=8).contains(&req.functions) {
                return Err(TopologyError::BadFunctionCount {
                    tag: req.tag.clone(),
                    functions: req.functions,
                });
            }
            let bus = buses.allocate().map_err(TopologyError::BusNumbers)?;
            ports.push(PortSlot {
                tag: req.tag.clone(),
                bdf: Bdf::from_devfn(0, 0, device << 3),
                secondary_bus: bus,
                functions: (0..req.functions)
                    .map(|f| Bdf::from_devfn(0, bus, f))
                    .collect(),
            });
        }
        Ok(Topology { ports })
    }

    /// Highest bus number the topology uses.
    pub fn bus_end(&self) -> u8 {
        self.ports
            .iter()
            .map(|p| p.secondary_bus)
            .max()
            .unwrap_or(0)
    }

    /// Place every BAR: `bars[i]` lists port `i`'s BARs in the order the devices report
    /// them. BARs of a function beyond the slot's are ignored.
    pub fn place(
        &self,
        platform: &PciPlatform,
        bars: &[Vec<FunctionBar>],
    ) -> Result<PciMap, PlanError> {
        let requests: Vec<PortRequest> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| PortRequest {
                tag: format!("root port {} ({})", port.bdf, port.tag),
                bars: bars
                    .get(i)
                    .map(|b| b.iter().map(|b| b.request).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let mmio64 = plan_mmio64(
            platform.mmio64,
            &requests,
            platform.phys_bits,
            &platform.iova,
        )?;
        let alloc = |window, (start, size): (u64, u64)| {
            AddressAllocator::with_size(start, size)
                .map_err(|source: AllocError| PlanError::Allocate { window, source })
        };
        let mut io = alloc(Window::Io, platform.io)?;
        let mut mmio32 = alloc(Window::Mmio32, platform.mmio32)?;
        let mut m64 = alloc(Window::Mmio64, mmio64)?;
        let windows = Windows {
            io: &mut io,
            mmio32: &mut mmio32,
            mmio64: &mut m64,
        };
        let placed = place_bars(&requests, windows)?;
        let ports = self
            .ports
            .iter()
            .zip(placed)
            .enumerate()
            .map(|(i, (slot, p))| {
                let port_bars = bars.get(i).map(Vec::as_slice).unwrap_or_default();
                let bars = port_bars
                    .iter()
                    .zip(&p.bar_addrs)
                    .filter_map(|(b, &addr)| {
                        Some(PlacedBar {
                            function: *slot.functions.get(usize::from(b.function))?,
                            index: b.index,
                            addr,
                            request: b.request,
                        })
                    })
                    .collect();
                PortMap {
                    slot: slot.clone(),
                    io: p.io,
                    mem: p.mem,
                    prefetchable: p.prefetchable,
                    bars,
                }
            })
            .collect();
        Ok(PciMap {
            mmio64,
            bus_end: self.bus_end(),
            ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::BarClass;

    const GIB: u64 = 1 << 30;

    fn slots(functions: &[u8]) -> Vec<SlotRequest> {
        functions
            .iter()
            .enumerate()
            .map(|(i, &functions)| SlotRequest {
                tag: format!("dev{i}"),
                functions,
            })
            .collect()
    }

    fn platform() -> PciPlatform {
        PciPlatform {
            io: (0x1000, 0xf000),
            mmio32: (0xc000_0000, 0x2000_0000),
            mmio64: Mmio64Floor {
                start: 4 * GIB,
                align: GIB,
            },
            phys_bits: 39,
            iova: vec![],
        }
    }

    fn bar(function: u8, index: u8, size: u64, class: BarClass) -> FunctionBar {
        FunctionBar {
            function,
            index,
            request: BarRequest { size, class },
        }
    }

    #[test]
    fn each_slot_gets_a_root_port_and_a_bus_of_its_own() {
        let t = Topology::new(&slots(&[1, 2, 1])).unwrap();
        let ports: Vec<String> = t.ports.iter().map(|p| p.bdf.to_string()).collect();
        assert_eq!(ports, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
        let buses: Vec<u8> = t.ports.iter().map(|p| p.secondary_bus).collect();
        assert_eq!(buses, [1, 2, 3]);
        assert_eq!(t.bus_end(), 3);
        let f: Vec<String> = t.ports[1].functions.iter().map(Bdf::to_string).collect();
        assert_eq!(f, ["0000:02:00.0", "0000:02:00.1"]);
        assert!(t.ports[1].multifunction());
        assert!(!t.ports[0].multifunction());
        assert_eq!(t.ports[2].slot(), 3);
    }

    #[test]
    fn more_slots_than_bus_0_has_is_refused() {
        assert!(Topology::new(&slots(&[1; MAX_ROOT_PORTS])).is_ok());
        assert_eq!(
            Topology::new(&slots(&[1; MAX_ROOT_PORTS + 1])),
            Err(TopologyError::TooManySlots { count: 32 })
        );
    }

    #[test]
    fn a_slot_holds_one_to_eight_functions() {
        for n in [0, 9] {
            assert!(matches!(
                Topology::new(&slots(&[n])),
                Err(TopologyError::BadFunctionCount { functions, .. }) if functions == n
            ));
        }
    }

    #[test]
    fn no_devices_is_bus_0_only() {
        let t = Topology::new(&[]).unwrap();
        let map = t.place(&platform(), &[]).unwrap();
        assert_eq!(map.bus_end, 0);
        assert_eq!(map.mmio64, (4 * GIB, 0));
        assert!(map.ports.is_empty());
    }

    #[test]
    fn bars_land_in_their_windows_behind_their_port() {
        let t = Topology::new(&slots(&[1, 2])).unwrap();
        let pref64 = BarClass::Mem64 { prefetchable: true };
        let mem32 = BarClass::Mem32 {
            prefetchable: false,
        };
        let bars = vec![
            vec![bar(0, 0, 0x4000, mem32)],
            vec![bar(0, 1, 8 * GIB, pref64), bar(1, 0, 0x1000, mem32)],
        ];
        let map = t.place(&platform(), &bars).unwrap();
        // From the floor, with the 8 GiB BAR aligned to its size inside.
        assert_eq!(map.mmio64, (4 * GIB, 12 * GIB));
        assert_eq!(map.bus_end, 2);
        let gpu = &map.ports[1];
        assert_eq!(gpu.bars[0].function.to_string(), "0000:02:00.0");
        assert_eq!(gpu.bars[0].addr, 8 * GIB);
        assert_eq!(gpu.bars[1].function.to_string(), "0000:02:00.1");
        assert_eq!(gpu.prefetchable, Some(8 * GIB..=16 * GIB - 1));
        let mem = gpu.mem.clone().unwrap();
        assert!(mem.contains(&gpu.bars[1].addr));
        let nvme = &map.ports[0];
        assert!(nvme.mem.clone().unwrap().contains(&nvme.bars[0].addr));
        assert!(nvme.prefetchable.is_none());
    }

    #[test]
    fn a_bar_of_a_function_the_slot_lacks_is_dropped() {
        let t = Topology::new(&slots(&[1])).unwrap();
        let mem32 = BarClass::Mem32 {
            prefetchable: false,
        };
        let map = t
            .place(&platform(), &[vec![bar(3, 0, 0x1000, mem32)]])
            .unwrap();
        assert!(map.ports[0].bars.is_empty());
    }
}
