//! One PCI segment: its root buses and the buses behind their bridges.
//!
//! Bus 0 is the main host bridge's root bus; a guest with one host bridge per NUMA
//! node has further root buses (`add_root_bus`), each decoding the bus numbers from
//! its own up to the next root bus's, as a host bridge decodes the range in its
//! `_CRS`. A config request for bus N goes to the root bus that decodes N: answered
//! there if N is its number; otherwise it follows the type-1 bridge whose
//! secondary..=subordinate range holds N, as programmed *now* (the guest may renumber
//! buses), until a bus numbered N is reached (PCI-to-PCI Bridge 1.2, 3.1.2; PCIe Base
//! 7.3.3). A function that is
//! absent, or a bus no bridge forwards to, reads as all ones and drops writes,
//! as a master abort / Unsupported Request does on hardware.
//!
//! Config writes return the [`ConfigWriteResult`] of the function, so the
//! VMM's device manager can re-map moved BARs; the ECAM and CF8 front-ends in
//! `config_access.rs` hand it to a callback.

use resources::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::error::PciError;
use super::regs::{HEADER_TYPE, HEADER_TYPE_BRIDGE, PRIMARY_BUS};
use super::Bdf;
use super::{ConfigWriteResult, PciDevice};

/// A PCI function shared between the tree and whoever else drives it.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

struct Function {
    device: SharedPciDevice,
    /// The bus behind it, for type-1 functions.
    child: Option<Box<PciBus>>,
}

#[derive(Default)]
struct PciBus {
    /// Keyed by device << 3 | function.
    functions: BTreeMap<u8, Function>,
}

/// (secondary, subordinate) bus numbers currently in a bridge's registers.
fn bus_range(dev: &SharedPciDevice) -> (u8, u8) {
    let reg = lock(dev).config_read(PRIMARY_BUS / 4);
    ((reg >> 8) as u8, (reg >> 16) as u8)
}

fn is_bridge(dev: &SharedPciDevice) -> bool {
    let reg = lock(dev).config_read(HEADER_TYPE / 4);
    (reg >> 16) as u8 & 0x7f == HEADER_TYPE_BRIDGE
}

impl PciBus {
    /// The bridge on this bus that claims `bus`: (its secondary bus, its child).
    fn forward(&self, bus: u8) -> Option<(u8, &PciBus)> {
        self.functions.values().find_map(|f| {
            let child = f.child.as_deref()?;
            let (sec, sub) = bus_range(&f.device);
            (sec <= bus && bus <= sub).then_some((sec, child))
        })
    }

    fn forward_mut(&mut self, bus: u8) -> Option<(u8, &mut PciBus)> {
        self.functions.values_mut().find_map(|f| {
            let (sec, sub) = bus_range(&f.device);
            let child = f.child.as_deref_mut()?;
            (sec <= bus && bus <= sub).then_some((sec, child))
        })
    }
}

/// The config-space view of one segment.
pub struct PciRoot {
    segment: u16,
    /// Root buses by number; bus 0 always.
    roots: BTreeMap<u8, PciBus>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bdfs: Vec<String> = self.devices().iter().map(|(b, _)| b.to_string()).collect();
        f.debug_struct("PciRoot").field("functions", &bdfs).finish()
    }
}

impl PciRoot {
    pub fn new(segment: u16) -> Self {
        Self {
            segment,
            roots: BTreeMap::from([(0, PciBus::default())]),
        }
    }

    /// Add a root bus numbered `bus` (an extra host bridge's); it decodes the buses
    /// from `bus` up to the next root bus.
    pub fn add_root_bus(&mut self, bus: u8) -> Result<(), PciError> {
        if self.roots.contains_key(&bus) {
            return Err(PciError::RootBusTaken { bus });
        }
        self.roots.insert(bus, PciBus::default());
        Ok(())
    }

    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The bus currently numbered `bus`, from the root bus that decodes it. Each step
    /// descends one bridge, so the walk ends within the depth of the tree.
    fn find_bus(&self, bus: u8) -> Option<&PciBus> {
        let (&root, mut cur) = self.roots.range(..=bus).next_back()?;
        let mut number = root;
        while number != bus {
            (number, cur) = cur.forward(bus)?;
        }
        Some(cur)
    }

    fn find_bus_mut(&mut self, bus: u8) -> Option<&mut PciBus> {
        let (&root, mut cur) = self.roots.range_mut(..=bus).next_back()?;
        let mut number = root;
        while number != bus {
            (number, cur) = cur.forward_mut(bus)?;
        }
        Some(cur)
    }

    /// Attach `device` at `bdf`. Its bus must be 0 or reachable through the
    /// bridges' current bus numbers. A type-1 function gets a bus of its own.
    pub fn add_device(&mut self, bdf: Bdf, device: SharedPciDevice) -> Result<(), PciError> {
        if bdf.segment() != self.segment {
            return Err(PciError::WrongSegment {
                bdf,
                segment: self.segment,
            });
        }
        let child = is_bridge(&device).then(Box::default);
        let bus = self.find_bus_mut(bdf.bus()).ok_or(PciError::NoRouteToBus {
            bus: bdf.bus(),
            bdf,
        })?;
        if bus.functions.contains_key(&bdf.devfn()) {
            return Err(PciError::SlotOccupied { bdf });
        }
        bus.functions
            .insert(bdf.devfn(), Function { device, child });
        Ok(())
    }

    /// The function at `bdf` as currently numbered.
    pub fn device(&self, bdf: Bdf) -> Option<SharedPciDevice> {
        if bdf.segment() != self.segment {
            return None;
        }
        let f = self.find_bus(bdf.bus())?.functions.get(&bdf.devfn())?;
        Some(f.device.clone())
    }

    /// Every function with its current address, depth first in bus order.
    pub fn devices(&self) -> Vec<(Bdf, SharedPciDevice)> {
        let mut out = Vec::new();
        let mut stack: Vec<(u8, &PciBus)> = self.roots.iter().map(|(n, b)| (*n, b)).collect();
        while let Some((number, bus)) = stack.pop() {
            for (devfn, f) in bus.functions.iter().rev() {
                if let Some(child) = f.child.as_deref() {
                    stack.push((bus_range(&f.device).0, child));
                }
                out.push((
                    Bdf::from_devfn(self.segment, number, *devfn),
                    f.device.clone(),
                ));
            }
        }
        out.sort_by_key(|(b, _)| *b);
        out
    }

    /// Read dword register `reg` of `bdf`; all ones if nothing answers.
    pub fn config_read(&self, bdf: Bdf, reg: usize) -> u32 {
        match self.device(bdf) {
            Some(d) => lock(&d).config_read(reg),
            None => u32::MAX,
        }
    }

    /// Write `data` at byte `offset` of register `reg` of `bdf`; returns what
    /// the write changed (nothing if no function answers).
    pub fn config_write(
        &self,
        bdf: Bdf,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) -> ConfigWriteResult {
        match self.device(bdf) {
            Some(d) => lock(&d).config_write(reg, offset, data),
            None => ConfigWriteResult::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::root_port::{RootPort, RootPortConfig};
    use crate::pci::testutil::TestEndpoint;
    use crate::pci::HostBridge;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn root_port(n: u8) -> SharedPciDevice {
        Arc::new(Mutex::new(
            RootPort::new(RootPortConfig::new(n, n)).unwrap(),
        ))
    }

    /// 00:00.0 host bridge, root ports 00:01.0 -> bus 1 and 00:02.0 -> bus 2,
    /// endpoints 01:00.0 (0x1111) and 02:00.0 (0x2222).
    fn topology() -> PciRoot {
        let mut r = PciRoot::new(0);
        r.add_device(bdf("00:00.0"), Arc::new(Mutex::new(HostBridge::new())))
            .unwrap();
        r.add_device(bdf("00:01.0"), root_port(1)).unwrap();
        r.add_device(bdf("00:02.0"), root_port(2)).unwrap();
        r.add_device(bdf("01:00.0"), TestEndpoint::shared(0x1111))
            .unwrap();
        r.add_device(bdf("02:00.0"), TestEndpoint::shared(0x2222))
            .unwrap();
        r
    }

    fn device_id(r: &PciRoot, s: &str) -> u32 {
        r.config_read(bdf(s), 0) >> 16
    }

    #[test]
    fn config_cycles_reach_functions_behind_bridges() {
        let r = topology();
        assert_eq!(device_id(&r, "00:00.0"), 0x29c0);
        assert_eq!(device_id(&r, "01:00.0"), 0x1111);
        assert_eq!(device_id(&r, "02:00.0"), 0x2222);
    }

    #[test]
    fn absent_functions_and_buses_read_ones() {
        let r = topology();
        assert_eq!(r.config_read(bdf("00:03.0"), 0), u32::MAX);
        assert_eq!(r.config_read(bdf("01:00.1"), 0), u32::MAX);
        assert_eq!(r.config_read(bdf("03:00.0"), 0), u32::MAX);
        assert_eq!(r.config_read(bdf("0001:00:00.0"), 0), u32::MAX);
        assert_eq!(
            r.config_write(bdf("03:00.0"), 1, 0, &[2]),
            ConfigWriteResult::default()
        );
    }

    #[test]
    fn renumbered_bridge_forwards_new_range() {
        let r = topology();
        // The guest moves root port 1's secondary bus to 5 (subordinate 6).
        r.config_write(bdf("00:01.0"), 6, 0, &[0, 5, 6, 0]);
        assert_eq!(r.config_read(bdf("01:00.0"), 0), u32::MAX);
        assert_eq!(device_id(&r, "05:00.0"), 0x1111);
        // Bus 6 is inside the range but nothing sits behind a further bridge.
        assert_eq!(r.config_read(bdf("06:00.0"), 0), u32::MAX);
    }

    #[test]
    fn nested_bridges_forward_type1_cycles() {
        let mut r = PciRoot::new(0);
        let top = root_port(1);
        // The top port spans buses 1..=2; a second bridge on bus 1 owns bus 2.
        lock(&top).config_write(6, 0, &[0, 1, 2, 0]);
        r.add_device(bdf("00:01.0"), top).unwrap();
        r.add_device(bdf("01:00.0"), root_port(2)).unwrap();
        r.add_device(bdf("02:00.0"), TestEndpoint::shared(0x3333))
            .unwrap();
        assert_eq!(device_id(&r, "02:00.0"), 0x3333);
        let all: Vec<String> = r.devices().iter().map(|(b, _)| b.to_string()).collect();
        assert_eq!(all, ["0000:00:01.0", "0000:01:00.0", "0000:02:00.0"]);
    }

    #[test]
    fn closed_bridge_forwards_nothing() {
        let r = topology();
        r.config_write(bdf("00:02.0"), 6, 0, &[0, 0, 0, 0]);
        assert_eq!(r.config_read(bdf("02:00.0"), 0), u32::MAX);
        // Bus 0 is never forwarded, even by a bridge whose range now covers it.
        assert_eq!(device_id(&r, "00:00.0"), 0x29c0);
    }

    #[test]
    fn add_device_errors() {
        let mut r = topology();
        assert_eq!(
            r.add_device(bdf("01:00.0"), TestEndpoint::shared(1)),
            Err(PciError::SlotOccupied {
                bdf: bdf("01:00.0")
            })
        );
        assert_eq!(
            r.add_device(bdf("07:00.0"), TestEndpoint::shared(1)),
            Err(PciError::NoRouteToBus {
                bus: 7,
                bdf: bdf("07:00.0")
            })
        );
        assert_eq!(
            r.add_device(bdf("0001:00:05.0"), TestEndpoint::shared(1)),
            Err(PciError::WrongSegment {
                bdf: bdf("0001:00:05.0"),
                segment: 0
            })
        );
    }

    #[test]
    fn endpoint_gets_no_child_bus() {
        let mut r = topology();
        // 01:00.0 is an endpoint; nothing can be attached "behind" it.
        assert!(matches!(
            r.add_device(bdf("03:00.0"), TestEndpoint::shared(1)),
            Err(PciError::NoRouteToBus { .. })
        ));
    }

    #[test]
    fn devices_lists_current_addresses_in_order() {
        let r = topology();
        r.config_write(bdf("00:02.0"), 6, 0, &[0, 9, 9, 0]);
        let all: Vec<String> = r.devices().iter().map(|(b, _)| b.to_string()).collect();
        assert_eq!(
            all,
            [
                "0000:00:00.0",
                "0000:00:01.0",
                "0000:00:02.0",
                "0000:01:00.0",
                "0000:09:00.0"
            ]
        );
        assert!(r.device(bdf("09:00.0")).is_some());
        assert!(r.device(bdf("02:00.0")).is_none());
    }

    #[test]
    fn an_extra_root_bus_reaches_its_root_ports_and_what_sits_behind() {
        let mut r = topology();
        // An extra host bridge's root bus 3, its root port 03:03.0 -> bus 4.
        r.add_root_bus(3).unwrap();
        r.add_device(bdf("03:03.0"), root_port(4)).unwrap();
        r.add_device(bdf("04:00.0"), TestEndpoint::shared(0x4444))
            .unwrap();
        assert_eq!(device_id(&r, "04:00.0"), 0x4444);
        assert_eq!(r.config_read(bdf("03:03.0"), 0) & 0xffff, 0x1b36);
        // Bus 0's tree is as before, and bus 3 has no slot 0.
        assert_eq!(device_id(&r, "02:00.0"), 0x2222);
        assert_eq!(r.config_read(bdf("03:00.0"), 0), u32::MAX);
        let all: Vec<String> = r.devices().iter().map(|(b, _)| b.to_string()).collect();
        assert_eq!(all.len(), 7);
        assert!(all.contains(&"0000:04:00.0".to_string()));
        assert_eq!(r.add_root_bus(3), Err(PciError::RootBusTaken { bus: 3 }));
    }

    #[test]
    fn a_root_bus_decodes_only_up_to_the_next() {
        let mut r = topology();
        r.add_root_bus(2).unwrap();
        // Bus 2 now belongs to the new root bus, which is empty: root port 00:02.0's
        // secondary bus is no longer reachable from bus 0.
        assert_eq!(r.config_read(bdf("02:00.0"), 0), u32::MAX);
        assert_eq!(device_id(&r, "01:00.0"), 0x1111);
    }

    #[test]
    fn config_write_returns_function_result() {
        let r = topology();
        let res = r.config_write(bdf("02:00.0"), 1, 0, &[0x02]);
        assert_eq!(res.mem_decode, Some(true));
    }
}
