//! Taking opened passthrough devices over, after guest RAM exists (vfio-glue's recipe,
//! steps 2-3; PCI-to-PCI Bridge 1.2, 3.2.5 for the root ports' windows).
//!
//! [`Opened::attach`] DMA-maps all guest RAM at IOVA = guest physical address, takes each
//! function (reset, config space, BAR mmaps, interrupts through KVM irqfds), then lays the
//! BARs out: the 64-bit window is planned from the 64-bit prefetchable BARs inside
//! min(guest physical address bits, the container's IOVA ranges), every BAR is placed in
//! the I/O, 32-bit or 64-bit window as `resources` decides, and each root port forwards
//! exactly its device's share of each window.

use resources::lock;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arch::x86_64::layout;
use arch::x86_64::{AddrRange, PciWindows};
use devices::pci::{Bdf, PciDevice, RootPort, RootPortConfig, SharedPciDevice};
use kvm_ioctls::VmFd;
use resources::{
    place_bars, plan_mmio64, AddressAllocator, BarClass, BarRequest, PlanError, PortRequest,
    Windows,
};
use vfio_glue::{DmaMapper, GuestDma, VfioPciDevice, VfioPciParams};

use crate::bars::{BarMapper, BarMapperParams, BarWindows, ConfigEffects};
use crate::device_manager::{DeviceManager, PciFunctions};
use crate::interrupts::{GsiRouting, KvmIrqProvider};
use crate::memory::GuestRam;
use crate::passthrough::{Opened, PassthroughError, SlotPlan};
use crate::vm::PassthroughRuntime;

/// A function taken over and placed.
pub struct AttachedFunction {
    /// Root port number (`SlotPlan::port`).
    pub port: u8,
    pub guest: Bdf,
    /// `host as guest`, the prefix of this function's log lines.
    pub label: String,
    pub dev: Arc<Mutex<VfioPciDevice>>,
}

/// Everything the guest's PCI hierarchy needs from passthrough.
pub struct Attached {
    /// Root ports with their bus numbers and windows programmed.
    pub ports: Vec<(Bdf, SharedPciDevice)>,
    pub functions: Vec<AttachedFunction>,
    /// The host bridge windows and bus range for the ACPI tables.
    pub acpi: PciWindows,
    /// The same windows and RAM, for checking where the guest moves BARs.
    pub bar_windows: BarWindows,
}

impl Attached {
    /// The functions for the PCI root, each root port before what sits behind it, and
    /// the endpoints whose config writes `effects` hears about (in `functions` order).
    pub fn pci_functions(&self, effects: &Arc<ConfigEffects>) -> PciFunctions {
        let endpoints = self
            .functions
            .iter()
            .map(|f| (f.guest, f.dev.clone() as SharedPciDevice));
        let functions: Vec<(Bdf, SharedPciDevice)> =
            self.ports.iter().cloned().chain(endpoints).collect();
        let watched = self
            .functions
            .iter()
            .map(|f| f.dev.clone() as SharedPciDevice)
            .collect();
        PciFunctions {
            functions,
            effects: Some(effects.clone()),
            watched,
        }
    }

    /// What the running VM keeps: BAR mappings (in KVM slots after guest RAM's) and the
    /// functions to quiet at teardown.
    pub fn runtime(
        self,
        vm: Arc<VmFd>,
        ram: &GuestRam,
        devices: &DeviceManager,
        effects: Arc<ConfigEffects>,
    ) -> PassthroughRuntime {
        let params = BarMapperParams {
            slots: vm,
            first_slot: u32::try_from(ram.slots().count()).unwrap_or(u32::MAX),
            buses: devices.buses().clone(),
            windows: self.bar_windows,
            effects,
        };
        let watched = self
            .functions
            .iter()
            .map(|f| (f.label.clone(), f.dev.clone()))
            .collect();
        PassthroughRuntime {
            bars: Arc::new(BarMapper::new(params, watched)),
            functions: self.functions.into_iter().map(|f| f.dev).collect(),
        }
    }
}

/// What [`Opened::attach`] needs besides the opened devices.
pub struct AttachParams<'a> {
    pub ram: &'a GuestRam,
    pub ram_size: u64,
    pub routing: &'a Arc<GsiRouting>,
    /// Guest physical address width (CPUID 0x8000_0008).
    pub phys_bits: u8,
}

impl Opened {
    /// DMA-map guest RAM, take every function and place its BARs.
    pub fn attach(mut self, p: AttachParams<'_>) -> Result<Attached, PassthroughError> {
        let mapper: Arc<dyn DmaMapper> = self.container.clone();
        let dma = GuestDma::map(mapper, p.ram.memory())?;
        log::info!(
            "guest RAM DMA-mapped for passthrough ({} MiB)",
            p.ram_size >> 20
        );
        let mut functions = Vec::new();
        for slot in &self.slots {
            for f in &slot.functions {
                let Some(backend) = self.backends.get_mut(f.spec_index).and_then(Option::take)
                else {
                    continue;
                };
                let label = format!("{} as {}", f.host, f.guest);
                let mut irqs = KvmIrqProvider {
                    routing: p.routing.clone(),
                    port_slot: slot.port_slot(),
                    label: label.clone(),
                };
                let params = VfioPciParams {
                    addr: f.host,
                    multifunction: f.multifunction,
                };
                let dev = VfioPciDevice::new(Box::new(backend), dma.clone(), &mut irqs, params)?;
                functions.push(AttachedFunction {
                    port: slot.port,
                    guest: f.guest,
                    label,
                    dev: Arc::new(Mutex::new(dev)),
                });
            }
        }
        // The devices hold the mapping now; the last one to go unmaps it.
        drop(dma);
        let iova = self
            .container
            .iova_ranges()
            .map_err(PassthroughError::IovaRanges)?;
        let iova: Vec<(u64, u64)> = iova.iter().map(|r| (r.start, r.end)).collect();
        let layout = Placement {
            ram_size: p.ram_size,
            phys_bits: p.phys_bits,
            iova: &iova,
        };
        let (ports, mmio64) = layout.place(&self.slots, &functions)?;
        Ok(Attached {
            ports,
            functions,
            acpi: PciWindows {
                bus_end: u8::try_from(self.slots.len()).unwrap_or(u8::MAX),
                ..PciWindows::platform(AddrRange {
                    base: mmio64.start,
                    size: mmio64.end - mmio64.start,
                })
            },
            bar_windows: bar_windows(p.ram_size, mmio64),
        })
    }
}

/// The windows BARs may live in and the RAM they may not cover.
pub fn bar_windows(ram_size: u64, mmio64: Range<u64>) -> BarWindows {
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

/// Inputs of BAR placement.
struct Placement<'a> {
    ram_size: u64,
    phys_bits: u8,
    /// Inclusive IOVA ranges of the container.
    iova: &'a [(u64, u64)],
}

/// Root ports by address.
type PciPorts = Vec<(Bdf, SharedPciDevice)>;

/// (function index, BAR index) of each BAR of a port request, in request order.
type BarKeys = Vec<(usize, u8)>;

fn port_requests(
    slots: &[SlotPlan],
    functions: &[AttachedFunction],
) -> Vec<(PortRequest, BarKeys)> {
    slots
        .iter()
        .map(|slot| {
            let mut bars = Vec::new();
            let mut keys = Vec::new();
            let behind = functions
                .iter()
                .enumerate()
                .filter(|(_, f)| f.port == slot.port);
            for (fi, f) in behind {
                for b in lock(&f.dev).bars() {
                    bars.push(BarRequest {
                        size: b.size,
                        class: BarClass::from(b.kind),
                    });
                    keys.push((fi, b.index));
                }
            }
            let host = slot
                .functions
                .first()
                .map(|f| f.host.to_string())
                .unwrap_or_default();
            let tag = format!("root port {} ({host})", slot.port_bdf());
            (PortRequest { tag, bars }, keys)
        })
        .collect()
}

impl Placement<'_> {
    /// Plan the 64-bit window, place every BAR, build the root ports with their windows.
    fn place(
        &self,
        slots: &[SlotPlan],
        functions: &[AttachedFunction],
    ) -> Result<(PciPorts, Range<u64>), PassthroughError> {
        let reqs = port_requests(slots, functions);
        let ports: Vec<PortRequest> = reqs.iter().map(|(r, _)| r.clone()).collect();
        let ram_end = layout::ram_end(self.ram_size).0;
        let (start, size) = plan_mmio64(ram_end, &ports, self.phys_bits, self.iova)?;
        log::info!(
            "64-bit PCI window {start:#x}+{size:#x} (guest physical bits {}, IOVA ranges {:x?})",
            self.phys_bits,
            self.iova
        );
        let alloc = |w, start: u64, size: u64| {
            AddressAllocator::with_size(start, size)
                .map_err(|source| PassthroughError::from(PlanError::Allocate { window: w, source }))
        };
        let io_start = u64::from(layout::PCI_IO_START);
        let mut io = alloc(resources::Window::Io, io_start, layout::PCI_IO_SIZE)?;
        let m32 = (layout::MMIO32_START.0, layout::MMIO32_SIZE);
        let mut mmio32 = alloc(resources::Window::Mmio32, m32.0, m32.1)?;
        let mut mmio64 = alloc(resources::Window::Mmio64, start, size)?;
        let windows = Windows {
            io: &mut io,
            mmio32: &mut mmio32,
            mmio64: &mut mmio64,
        };
        let placed = place_bars(&ports, windows)?;
        let mut root_ports = Vec::new();
        for ((slot, (_, keys)), placement) in slots.iter().zip(&reqs).zip(&placed) {
            for (&(fi, index), &addr) in keys.iter().zip(&placement.bar_addrs) {
                let Some(f) = functions.get(fi) else { continue };
                lock(&f.dev).place_bar(index, addr)?;
                log::info!("{}: BAR {index} at {addr:#x}", f.label);
            }
            let bdf = slot.port_bdf();
            let err = |source| PassthroughError::RootPort { bdf, source };
            let mut port =
                RootPort::new(RootPortConfig::new(slot.port, slot.port + 1)).map_err(err)?;
            port.set_io_window(placement.io.clone()).map_err(err)?;
            port.set_mem_window(placement.mem.clone()).map_err(err)?;
            port.set_prefetchable_window(placement.prefetchable.clone())
                .map_err(err)?;
            root_ports.push((bdf, Arc::new(Mutex::new(port)) as SharedPciDevice));
        }
        Ok((root_ports, start..start + size))
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
