//! Taking opened passthrough devices over, after guest RAM exists (vfio-glue's recipe,
//! steps 2-3; PCI-to-PCI Bridge 1.2, 3.2.5 for the root ports' windows).
//!
//! [`Passthrough::attach`] prepares the DMA mapping of all guest RAM at IOVA = guest
//! physical address (the chunks are mapped later, in the background: `ram_setup`), takes
//! each function (reset, config space, BAR mmaps, interrupts through KVM irqfds), then
//! asks the [`resources::Topology`] where every BAR and root port window goes, inside
//! min(guest physical address bits, the container's IOVA ranges), and programs that.

use std::sync::{Arc, Mutex};

use arch::x86_64::layout;
use devices::pci::PciDevice;
use resources::{lock, BarClass, BarRequest, FunctionBar, PciMap};
use vfio_glue::{DmaMapper, GuestDma, VfioPciDevice, VfioPciParams};

use super::{BarWindows, Function, Passthrough, PassthroughError};
use crate::interrupts::{GsiRouting, KvmIrqProvider};
use crate::memory::GuestRam;

/// What [`Passthrough::attach`] needs besides the opened devices.
pub struct AttachParams<'a> {
    pub ram: &'a GuestRam,
    pub ram_size: u64,
    pub routing: &'a Arc<GsiRouting>,
    /// Guest physical address width (CPUID 0x8000_0008).
    pub phys_bits: u8,
    /// The BARs of the extra (virtio) slots, in their topology order.
    pub extra_bars: Vec<Vec<FunctionBar>>,
}

impl Passthrough {
    /// Prepare the DMA mapping of guest RAM (checked against the IOVA ranges, mapped
    /// later: [`Passthrough::dma`]), take every function, place its BARs, build the
    /// root ports.
    pub fn attach(&mut self, p: AttachParams<'_>) -> Result<(), PassthroughError> {
        let mapper: Arc<dyn DmaMapper> = self.container.clone();
        let dma = GuestDma::pending(mapper, p.ram.memory())?;
        self.take_functions(&dma, p.routing)?;
        // The devices hold the mapping too; the last one to go unmaps it.
        self.dma = Some(dma);
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
                };
                let dev = VfioPciDevice::new(Box::new(backend), dma.clone(), &mut irqs, params)?;
                let dev = Arc::new(Mutex::new(dev));
                self.functions.push((guest, Function { label, dev }));
            }
        }
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
        for port in &map.ports {
            for bar in &port.bars {
                let Some((_, f)) = self.functions.iter().find(|(g, _)| *g == bar.function) else {
                    continue;
                };
                lock(&f.dev).place_bar(bar.index, bar.addr)?;
                log::info!("{}: BAR {} at {:#x}", f.label, bar.index, bar.addr);
            }
        }
        self.ports = crate::pci_layout::RootPorts::build(map)?;
        Ok(())
    }
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

    #[test]
    fn bar_windows_follow_the_platform_layout() {
        let w = bar_windows(4 << 30, 8 << 30..16 << 30);
        assert_eq!(w.ram, vec![0..3 << 30, 4 << 30..5 << 30]);
        assert_eq!(w.io, 0x1000..0x1_0000);
        assert_eq!(w.mmio32, 0xc000_0000..0xe000_0000);
        assert_eq!(w.mmio64, 8 << 30..16 << 30);
    }
}
