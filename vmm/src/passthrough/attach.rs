//! Taking opened passthrough devices over, after guest RAM exists (vfio-glue's recipe,
//! steps 2-3; PCI-to-PCI Bridge 1.2, 3.2.5 for the root ports' windows).
//!
//! [`Passthrough::attach`] DMA-maps all guest RAM at IOVA = guest physical address, takes
//! each function (reset, config space, BAR mmaps, interrupts through KVM irqfds), then
//! asks the [`resources::Topology`] where every BAR and root port window goes, inside
//! min(guest physical address bits, the container's IOVA ranges), and programs that.

use std::sync::{Arc, Mutex};

use arch::x86_64::layout;
use devices::pci::PciDevice;
use resources::{lock, BarClass, BarRequest, Bdf, FunctionBar, PciMap, PlacedBar};
use vfio_glue::{DmaMapper, GuestDma, HostPciAddress, VfioPciDevice, VfioPciParams};

use super::{BarWindows, Function, Passthrough, PassthroughError};
use crate::interrupts::{GsiRouting, KvmIrqProvider};
use crate::memory::GuestRam;
use crate::spec::P2pMode;

/// What [`Passthrough::attach`] needs besides the opened devices.
pub struct AttachParams<'a> {
    pub ram: &'a GuestRam,
    pub ram_size: u64,
    pub routing: &'a Arc<GsiRouting>,
    /// Guest physical address width (CPUID 0x8000_0008).
    pub phys_bits: u8,
    /// The BARs of the extra (virtio) slots, in their topology order.
    pub extra_bars: Vec<Vec<FunctionBar>>,
    /// The functions that get the GPUDirect P2P clique capability, with their ID.
    pub cliques: &'a [(HostPciAddress, u8)],
    /// The spec's `p2p`.
    pub p2p: P2pMode,
}

impl Passthrough {
    /// DMA-map guest RAM, take every function, place its BARs, build the root ports.
    pub fn attach(&mut self, p: AttachParams<'_>) -> Result<(), PassthroughError> {
        let mapper: Arc<dyn DmaMapper> = self.container.clone();
        let dma = GuestDma::map(mapper, p.ram.memory())?;
        log::info!(
            "guest RAM DMA-mapped for passthrough ({} MiB)",
            p.ram_size >> 20
        );
        self.take_functions(&dma, p.routing, p.cliques)?;
        // The devices hold the mapping now; the last one to go unmaps it.
        drop(dma);
        let iova = self
            .container
            .iova_ranges()
            .map_err(PassthroughError::IovaRanges)?;
        let iova: Vec<(u64, u64)> = iova.iter().map(|r| (r.start, r.end)).collect();
        let platform = layout::pci_platform(p.ram_size, p.phys_bits, iova.clone());
        let mut bars = self.function_bars();
        let first = self.hosts.len();
        for (i, b) in p.extra_bars.into_iter().enumerate() {
            if let Some(slot) = bars.get_mut(first + i) {
                *slot = b;
            }
        }
        let map = self.topology.place(&platform, &bars)?;
        log::info!(
            "64-bit PCI window {:#x}+{:#x} (guest physical bits {}, IOVA ranges {iova:x?})",
            map.mmio64.0,
            map.mmio64.1,
            p.phys_bits,
        );
        self.program(&map)?;
        self.plan_p2p(p.p2p, &map, iova)?;
        let mmio64 = map.mmio64.0..map.mmio64.0 + map.mmio64.1;
        self.acpi = Some(crate::pci_layout::acpi_windows(&map));
        self.bar_windows = Some(bar_windows(p.ram_size, mmio64));
        self.map = Some(map);
        Ok(())
    }

    /// Reset and take each opened function, at its guest address.
    fn take_functions(
        &mut self,
        dma: &Arc<GuestDma>,
        routing: &Arc<GsiRouting>,
        cliques: &[(HostPciAddress, u8)],
    ) -> Result<(), PassthroughError> {
        for (port, hosts) in self.topology.ports.iter().zip(&self.hosts) {
            for (&guest, &host) in port.functions.iter().zip(hosts) {
                let Some(i) = self.backends.iter().position(|(a, _)| *a == host) else {
                    continue;
                };
                let (_, backend) = self.backends.swap_remove(i);
                let label = format!("{host} as {guest}");
                let mut irqs = KvmIrqProvider {
                    routing: routing.clone(),
                    port_slot: port.slot(),
                    label: label.clone(),
                };
                let params = VfioPciParams {
                    addr: host,
                    multifunction: port.multifunction() && guest.function() == 0,
                    clique: cliques.iter().find(|(a, _)| *a == host).map(|(_, c)| *c),
                };
                let dev = VfioPciDevice::new(Box::new(backend), dma.clone(), &mut irqs, params)?;
                let dev = Arc::new(Mutex::new(dev));
                self.functions.push((guest, Function { label, dev }));
            }
        }
        Ok(())
    }

    /// Which functions get peer-to-peer DMA mappings (`mode` resolved for the guest's
    /// slots): each whose directly mapped BARs lie in the IOVA ranges `iova`; one that
    /// does not is an error with `p2p: "on"`, else P2P is off for it with a warning.
    fn plan_p2p(
        &mut self,
        mode: P2pMode,
        map: &PciMap,
        iova: Vec<(u64, u64)>,
    ) -> Result<(), PassthroughError> {
        let Some(strict) = mode.resolve(self.topology.ports.len()) else {
            self.p2p = None;
            return Ok(());
        };
        let bars: Vec<PlacedBar> = map.ports.iter().flat_map(|p| p.bars.clone()).collect();
        let functions: Vec<(Bdf, &str)> = self
            .functions
            .iter()
            .map(|(g, f)| (*g, f.label.as_str()))
            .collect();
        let on = p2p_functions(&functions, &bars, &iova, strict)?;
        log::info!(
            "peer-to-peer DMA mappings for {} of {} functions",
            on.iter().filter(|o| **o).count(),
            on.len()
        );
        self.p2p = Some(super::P2pPlan { on, iova });
        Ok(())
    }

    /// Each port's BARs, in the order the devices report them.
    fn function_bars(&self) -> Vec<Vec<FunctionBar>> {
        self.topology
            .ports
            .iter()
            .map(|port| {
                let mut bars = Vec::new();
                for (f, guest) in (0u8..).zip(&port.functions) {
                    let Some((_, func)) = self.functions.iter().find(|(g, _)| g == guest) else {
                        continue;
                    };
                    bars.extend(lock(&func.dev).bars().into_iter().map(|b| FunctionBar {
                        function: f,
                        index: b.index,
                        request: BarRequest {
                            size: b.size,
                            class: BarClass::from(b.kind),
                        },
                    }));
                }
                bars
            })
            .collect()
    }

    /// Program the BAR addresses and build each root port with its windows.
    fn program(&mut self, map: &PciMap) -> Result<(), PassthroughError> {
        let sysfs = vfio_glue::sysfs::Sysfs::default();
        let mut links = Vec::new();
        for (port, hosts) in map.ports.iter().zip(&self.hosts) {
            for bar in &port.bars {
                let Some((_, f)) = self.functions.iter().find(|(g, _)| *g == bar.function) else {
                    continue;
                };
                lock(&f.dev).place_bar(bar.index, bar.addr)?;
                log::info!("{}: BAR {} at {:#x}", f.label, bar.index, bar.addr);
            }
            let bdf = port.slot.bdf;
            let link = hosts.first().and_then(|h| sysfs.upstream_link(h));
            if let Some(l) = link {
                log::info!(
                    "root port {bdf}: link {} x{} as the host's",
                    l.speed.rate(),
                    l.width
                );
            }
            links.push(link);
        }
        self.ports = crate::pci_layout::RootPorts::build(map, &links)?;
        Ok(())
    }
}

/// Per function (`functions`: guest address, label), whether its memory BARs (`bars`)
/// all lie in the IOVA ranges `iova` (empty: any), so that peer-to-peer DMA can be on
/// for it. One outside is an error when `strict`, else P2P off for it with a warning.
fn p2p_functions(
    functions: &[(Bdf, &str)],
    bars: &[PlacedBar],
    iova: &[(u64, u64)],
    strict: bool,
) -> Result<Vec<bool>, PassthroughError> {
    let inside = |a: u64, size: u64| {
        let last = a.saturating_add(size.saturating_sub(1));
        iova.is_empty() || iova.iter().any(|&(s, e)| s <= a && last <= e)
    };
    let mut on = Vec::new();
    for (guest, label) in functions {
        let outside = bars
            .iter()
            .filter(|b| b.function == *guest && b.request.class != BarClass::Io)
            .find(|b| !inside(b.addr, b.request.size));
        match outside {
            Some(b) if strict => {
                return Err(PassthroughError::P2pOutsideIova {
                    label: label.to_string(),
                    bar: b.index,
                    addr: b.addr,
                    size: b.request.size,
                    iova: iova.to_vec(),
                })
            }
            Some(b) => {
                log::warn!(
                    "{label}: BAR {} at {:#x}+{:#x} is outside the IOVA ranges {iova:x?}: \
                     peer-to-peer DMA is off for this device",
                    b.index,
                    b.addr,
                    b.request.size
                );
                on.push(false);
            }
            None => on.push(true),
        }
    }
    Ok(on)
}

/// The windows BARs may live in and the RAM they may not cover.
pub fn bar_windows(ram_size: u64, mmio64: std::ops::Range<u64>) -> BarWindows {
    let mmio32 = layout::MMIO32_START.0;
    BarWindows {
        ram: layout::ram_regions(ram_size)
            .into_iter()
            .map(|(start, len)| start.0..start.0 + len)
            .collect(),
        io: u64::from(layout::PCI_IO_START)..u64::from(layout::PCI_IO_START) + layout::PCI_IO_SIZE,
        mmio32: mmio32..mmio32 + layout::MMIO32_SIZE,
        mmio64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(function: &str, addr: u64, size: u64) -> PlacedBar {
        PlacedBar {
            function: function.parse().unwrap(),
            index: 0,
            addr,
            request: BarRequest {
                size,
                class: BarClass::Mem64 { prefetchable: true },
            },
        }
    }

    const IOVA_39_BITS: [(u64, u64); 1] = [(0, (1 << 39) - 1)];

    #[test]
    fn p2p_is_on_for_functions_whose_bars_the_iommu_reaches() {
        let functions = [
            ("01:00.0".parse().unwrap(), "a"),
            ("02:00.0".parse().unwrap(), "b"),
        ];
        let bars = [
            bar("01:00.0", 1 << 38, 1 << 30),
            bar("02:00.0", 1 << 39, 1 << 30),
        ];
        let on = p2p_functions(&functions, &bars, &IOVA_39_BITS, false).unwrap();
        assert_eq!(on, [true, false]);
    }

    #[test]
    fn p2p_on_refuses_a_bar_outside_the_iova_ranges() {
        let functions = [("02:00.0".parse().unwrap(), "b")];
        let bars = [bar("02:00.0", (1 << 39) - (1 << 29), 1 << 30)];
        let err = p2p_functions(&functions, &bars, &IOVA_39_BITS, true).unwrap_err();
        assert!(
            matches!(err, PassthroughError::P2pOutsideIova { bar: 0, .. }),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("p2p: b: BAR 0 at "), "{err}");
    }

    #[test]
    fn bar_windows_follow_the_platform_layout() {
        let w = bar_windows(4 << 30, 8 << 30..16 << 30);
        assert_eq!(w.ram, vec![0..3 << 30, 4 << 30..5 << 30]);
        assert_eq!(w.io, 0x1000..0x1_0000);
        assert_eq!(w.mmio32, 0xc000_0000..0xe000_0000);
        assert_eq!(w.mmio64, 8 << 30..16 << 30);
    }
}
