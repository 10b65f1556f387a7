//! A passed-through PCI function as the guest sees it ([`PciDevice`]), over a
//! [`VfioDeviceOps`] backend (Documentation/driver-api/vfio.rst, "VFIO PCI").
//!
//! Config space: BARs, the ROM BAR and the command register are virtual (a
//! `devices` config space holds the guest's view: sizes from the VFIO regions,
//! addresses the guest programs, BAR moves reported); MSI and MSI-X are
//! emulated ([`emulated`]); the header type's multi-function bit follows the
//! guest topology; SR-IOV, ARI and Resizable BAR are hidden from the extended
//! list ([`crate::caps`]); everything else is read from and written to the
//! device's config region, which the kernel's vfio-pci filters further.
//! Command writes also reach the device, so its decode and bus mastering
//! follow the guest; but while guest RAM is not yet fully DMA-mapped
//! ([`GuestDma::hold_bus_master`]) Bus Master Enable is held back from the
//! device (the guest still reads back what it wrote) until the VMM calls
//! [`VfioPciDevice::release_bus_master`].
//!
//! BARs: [`crate::bars`] decides what is mapped (see [`VfioPciDevice::direct_mappings`])
//! and what traps to `bar_read`/`bar_write`: the MSI-X table and PBA are
//! emulated, the rest is forwarded to the VFIO region. The ROM (index 6) is
//! read through the ROM region.
//!
//! Lifetime: the device is reset when taken, when the guest reboots or resets
//! its bus ([`VfioPciDevice::reset`]) and when let go (VFIO_DEVICE_RESET, or a hot
//! reset of its bus for a function without one: [`crate::hot_reset`]); after each reset its
//! config space must read back (a vendor ID of 0xffff means the card did not
//! come back: [`Error::DeviceStuck`]). Dropping it (on every exit path) turns
//! interrupts off, clears bus mastering, resets, then drops its hold on the
//! guest DMA mapping and closes the device.

mod clique;
mod emulated;
#[cfg(test)]
mod fixture;
mod setup;

pub use clique::{CliqueError, MAX_CLIQUE, NVIDIA_VENDOR_ID};
pub use setup::{guest_bars, msix_holes, msix_of, GuestBar};
#[cfg(test)]
mod tests;

use std::sync::Arc;

use devices::pci::regs::{
    self, CAP_ID_MSI, CAP_ID_MSIX, COMMAND, COMMAND_BUS_MASTER, COMMAND_IO, COMMAND_MEMORY,
    INTERRUPT_PIN, ROM_ADDRESS,
};
use devices::pci::{
    walk_capabilities, BarInfo, ConfigSize, ConfigWriteResult, PciConfigSpace, PciDevice,
    ROM_BAR_INDEX,
};
use log::{error, info};
use resources::LogLimiter;
use resources::{limited_debug, limited_log};

use crate::addr::HostPciAddress;
use crate::caps::ExtCapView;
use crate::device::{IrqIndex, VfioDeviceOps, CONFIG_REGION, ROM_REGION};
use crate::dma::GuestDma;
use crate::error::{Error, Result};
use crate::irq::{IntxLine, IrqProvider, MsiKind};
use clique::CliqueCap;
use devices::interrupt::MsiChange;
use emulated::{msix_layout, CapError, EmulatedMsi, EmulatedMsix};
use setup::MappedBar;

static GUEST_ODDITY: LogLimiter = LogLimiter::new();
/// VFIO_DEVICE_SET_IRQS failures: host problems, but a guest toggling MSI/MSI-X in a
/// loop repeats them.
static IRQ_FAILED: LogLimiter = LogLimiter::new();
/// Resets that failed or could not be done: a guest may reboot or reset its bus in a loop.
static RESET_FAILED: LogLimiter = LogLimiter::new();

/// The dword holding the header type (cache line size, latency, header, BIST).
const HEADER_DWORD: usize = regs::CACHE_LINE_SIZE;
/// The multi-function bit of the header type, in that dword.
const MULTIFUNCTION: u32 = (regs::HEADER_TYPE_MULTIFUNCTION as u32) << 16;
/// The six BAR registers of a type 0 header.
const BAR_REGS: std::ops::Range<usize> = regs::BAR0..regs::BAR0 + 6 * 4;

/// How the VMM places this function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfioPciParams {
    /// Host address, for logs and errors.
    pub addr: HostPciAddress,
    /// Set the multi-function bit (function 0 of a slot holding several functions).
    pub multifunction: bool,
    /// Add the NVIDIA GPUDirect P2P clique capability with this ID ([`clique`]).
    pub clique: Option<u8>,
}

/// A BAR span the guest reaches without exits: the VMM registers a KVM memory
/// slot at `bar address + offset` of `size` bytes backed by `host_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectMapping {
    pub bar: u8,
    pub offset: u64,
    pub size: u64,
    pub host_addr: u64,
}

/// A host PCI function passed through to the guest.
pub struct VfioPciDevice {
    addr: HostPciAddress,
    shadow: PciConfigSpace,
    config_len: usize,
    multifunction: bool,
    ext: ExtCapView,
    bars: Vec<MappedBar>,
    msix: Option<EmulatedMsix>,
    msi: Option<EmulatedMsi>,
    clique: Option<CliqueCap>,
    intx: Option<IntxLine>,
    /// Where Strait placed each BAR (index, guest address): a reset puts them back.
    placed: Vec<(u8, u64)>,
    /// The guest set Bus Master Enable before guest RAM was fully DMA-mapped: the
    /// device has it off until [`VfioPciDevice::release_bus_master`].
    bus_master_held: bool,
    /// Decode bits (COMMAND_MEMORY, COMMAND_IO) the guest turned off that the device
    /// still has on, until the VMM removed the BAR mappings ([`Self::release_decode`]).
    held_decode: u16,
    /// [`Self::quiesce_for_release`] ran: interrupts and bus mastering stay off.
    quiet: bool,
    torn_down: bool,
    // Dropped last, in this order: DMA stays mapped until the device is reset,
    // the device fd closes after.
    dma: Arc<GuestDma>,
    ops: Box<dyn VfioDeviceOps>,
}

fn cap_error(addr: HostPciAddress, what: &'static str, e: CapError) -> Error {
    match e {
        CapError::Wire(source) => Error::WireIrqs { addr, what, source },
        CapError::Model(source) => Error::EmulateCap { addr, what, source },
    }
}

/// Reset the device, or say loudly that it cannot be; then check it still answers.
/// A function without a reset of its own gets a bus reset through VFIO's hot reset,
/// when this process holds every group that reset reaches ([`crate::hot_reset`]).
/// The warnings are limited: a guest that reboots or resets its bus in a loop comes
/// here each time.
fn reset_or_warn(ops: &dyn VfioDeviceOps, addr: HostPciAddress) -> Result<()> {
    let done = if ops.reset_supported() {
        ops.reset().map_err(|source| Error::Reset { addr, source })
    } else {
        hot_reset(ops, addr)
    };
    if let Err(e) = done {
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}"));
        limited_log!(RESET_FAILED, warn, "{e}{}", cause.unwrap_or_default());
    }
    check_alive(ops, addr)
}

/// The bus reset of a function that has no reset of its own: VFIO lists what it would
/// reset, every group must be ours, then VFIO_DEVICE_PCI_HOT_RESET.
fn hot_reset(ops: &dyn VfioDeviceOps, addr: HostPciAddress) -> Result<()> {
    let targets = ops.hot_reset_info().map_err(|source| {
        if source.raw_os_error() == Some(libc::ENODEV) {
            Error::NoResetMethod { addr }
        } else {
            Error::HotResetInfo { addr, source }
        }
    })?;
    let groups = crate::hot_reset::plan(addr, &targets, &ops.held_groups())?;
    ops.hot_reset(&groups).map_err(|source| Error::HotReset {
        addr,
        groups: groups.clone(),
        source,
    })?;
    let names: Vec<String> = targets.iter().map(|t| t.addr.to_string()).collect();
    info!(
        "{addr}: bus reset through VFIO hot reset (functions {}; IOMMU groups {groups:?})",
        names.join(", ")
    );
    Ok(())
}

/// A function that answers config reads with all ones after a reset is gone from the
/// bus (PCIe Base 6.0, 2.3.2: a read to an absent function completes with all ones).
pub fn check_alive(ops: &dyn VfioDeviceOps, addr: HostPciAddress) -> Result<()> {
    let mut id = [0u8; 2];
    match ops.region_read(CONFIG_REGION, 0, &mut id) {
        Ok(()) if u16::from_le_bytes(id) != 0xffff => Ok(()),
        Ok(()) => Err(Error::DeviceStuck { addr, source: None }),
        Err(e) => Err(Error::DeviceStuck {
            addr,
            source: Some(e),
        }),
    }
}

impl VfioPciDevice {
    /// Take the device: reset it, read its config space, set up the guest's
    /// view, mmap the directly mapped BAR spans and wire its interrupts
    /// through `irqs` (INTx is enabled right away, as after a reset).
    pub fn new(
        ops: Box<dyn VfioDeviceOps>,
        dma: Arc<GuestDma>,
        irqs: &mut dyn IrqProvider,
        params: VfioPciParams,
    ) -> Result<Self> {
        let addr = params.addr;
        reset_or_warn(&*ops, addr)?;
        let cfg = setup::read_config(&*ops, addr)?;
        let clique = params
            .clique
            .map(|c| CliqueCap::new(&cfg, c))
            .transpose()
            .map_err(|source| Error::Clique { addr, source })?;
        let size = if cfg.len() > 256 {
            ConfigSize::Pcie
        } else {
            ConfigSize::Pci
        };
        let mut shadow = PciConfigSpace::new_type0(setup::ids(&cfg), size);
        let dev_bars = setup::add_bars(&mut shadow, &*ops, &cfg, addr)?;
        let (msix, msi) = Self::emulate_msi(&*ops, &cfg, irqs, addr)?;
        let mut bars = Vec::new();
        for b in &dev_bars {
            let holes = msix.as_ref().map(|m| m.holes(b.index)).unwrap_or_default();
            bars.push(setup::map_bar(&*ops, b, &holes, addr)?);
        }
        let intx = Self::wire_intx(&*ops, &cfg, irqs, addr)?;
        info!(
            "{addr}: {} BARs, MSI-X {}, MSI {}, INTx {}",
            bars.len(),
            msix.is_some(),
            msi.is_some(),
            intx.is_some()
        );
        Ok(VfioPciDevice {
            addr,
            shadow,
            config_len: cfg.len(),
            multifunction: params.multifunction,
            ext: ExtCapView::from_config(&cfg),
            bars,
            msix,
            msi,
            clique,
            intx,
            placed: Vec::new(),
            bus_master_held: false,
            held_decode: 0,
            quiet: false,
            torn_down: false,
            dma,
            ops,
        })
    }

    /// Emulate the device's MSI-X and MSI capabilities, when VFIO can deliver them.
    fn emulate_msi(
        ops: &dyn VfioDeviceOps,
        cfg: &[u8],
        irqs: &mut dyn IrqProvider,
        addr: HostPciAddress,
    ) -> Result<(Option<EmulatedMsix>, Option<EmulatedMsi>)> {
        let caps = walk_capabilities(cfg);
        let find = |id| caps.iter().find(|c| c.0 == id).map(|c| c.1);
        let vfio_has = |i| ops.irq_info(i).is_some_and(|x| x.count > 0);
        let msix = find(CAP_ID_MSIX)
            .filter(|_| vfio_has(IrqIndex::Msix))
            .map(|at| EmulatedMsix::new(msix_layout(cfg, at), at, irqs))
            .transpose()
            .map_err(|e| cap_error(addr, "MSI-X", e))?;
        let msi = find(CAP_ID_MSI)
            .filter(|_| vfio_has(IrqIndex::Msi))
            .map(|at| EmulatedMsi::new(cfg, at, irqs))
            .transpose()
            .map_err(|e| cap_error(addr, "MSI", e))?;
        Ok((msix, msi))
    }

    fn wire_intx(
        ops: &dyn VfioDeviceOps,
        cfg: &[u8],
        irqs: &mut dyn IrqProvider,
        addr: HostPciAddress,
    ) -> Result<Option<IntxLine>> {
        let pin = cfg.get(INTERRUPT_PIN).copied().unwrap_or(0);
        let has_intx = ops.irq_info(IrqIndex::Intx).is_some_and(|i| i.count > 0);
        if !(1..=4).contains(&pin) || !has_intx {
            return Ok(None);
        }
        let fds = irqs.intx(pin).map_err(|source| Error::WireIrqs {
            addr,
            what: "INTx",
            source,
        })?;
        let mut line = IntxLine::new(fds);
        line.enable(ops).map_err(|source| Error::SetIrqs {
            addr,
            index: IrqIndex::Intx as u32,
            source,
        })?;
        Ok(Some(line))
    }

    /// Host address of the device.
    pub fn host_address(&self) -> HostPciAddress {
        self.addr
    }

    /// Place BAR `index` (6: ROM) at guest address `gpa`, as firmware would.
    pub fn place_bar(&mut self, index: u8, gpa: u64) -> Result<()> {
        let addr = self.addr;
        self.shadow
            .set_bar_addr(index, gpa)
            .map_err(|source| Error::PlaceBar {
                addr,
                index,
                gpa,
                source,
            })?;
        self.placed.retain(|(i, _)| *i != index);
        self.placed.push((index, gpa));
        Ok(())
    }

    /// The BAR spans to register as KVM memory slots (at the BAR's current
    /// address plus `offset`). The mappings live as long as the device: the
    /// VMM removes the slots before dropping it.
    pub fn direct_mappings(&self) -> Vec<DirectMapping> {
        let spans = self.bars.iter().flat_map(|b| {
            b.maps.iter().map(|(s, m)| DirectMapping {
                bar: b.plan.index,
                offset: s.offset,
                size: s.size,
                host_addr: m.addr(),
            })
        });
        spans.collect()
    }

    /// What each BAR maps and traps.
    pub fn bar_plans(&self) -> Vec<crate::bars::BarPlan> {
        self.bars.iter().map(|b| b.plan.clone()).collect()
    }

    fn device_dword(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        match self.ops.region_read(CONFIG_REGION, off as u64, &mut b) {
            Ok(()) => u32::from_le_bytes(b),
            Err(e) => {
                limited_debug!(GUEST_ODDITY, "{}: config read at {off:#x}: {e}", self.addr);
                u32::MAX
            }
        }
    }

    fn device_write(&self, at: usize, data: &[u8]) {
        if let Err(e) = self.ops.region_write(CONFIG_REGION, at as u64, data) {
            limited_debug!(GUEST_ODDITY, "{}: config write at {at:#x}: {e}", self.addr);
        }
    }

    /// Apply what a guest access changed in the MSI or MSI-X capability (or table):
    /// the routes and irqfds, then VFIO_DEVICE_SET_IRQS, and INTx back on when
    /// neither is left. Failing is a host problem the guest cannot see; it is logged.
    fn apply_irqs(&mut self, kind: MsiKind, changes: &[MsiChange]) {
        let ops = &*self.ops;
        let (msix, msi, intx) = (&mut self.msix, &mut self.msi, &mut self.intx);
        let (line, other) = match kind {
            MsiKind::Msix => (
                msix.as_mut().map(|m| &mut m.line),
                msi.as_mut().map(|m| &mut m.line),
            ),
            MsiKind::Msi => (
                msi.as_mut().map(|m| &mut m.line),
                msix.as_mut().map(|m| &mut m.line),
            ),
        };
        let (Some(line), mut other) = (line, other) else {
            return;
        };
        let mut before = || {
            intx.as_mut().map_or(Ok(()), |i| i.disable(ops))?;
            other.as_mut().map_or(Ok(()), |m| m.disable(ops))
        };
        let mut turned_off = false;
        log_irq_result(
            self.addr,
            line.apply(ops, changes, &mut before),
            &mut turned_off,
        );
        let any_on = self.msix.as_ref().is_some_and(|m| m.line.enabled())
            || self.msi.as_ref().is_some_and(|m| m.line.enabled());
        if turned_off && !any_on {
            if let Some(Err(e)) = self.intx.as_mut().map(|i| i.enable(ops)) {
                limited_log!(IRQ_FAILED, error, "{}: re-enabling INTx: {e}", self.addr);
            }
        }
    }
}

fn log_irq_result(addr: HostPciAddress, res: std::io::Result<Option<bool>>, turned_off: &mut bool) {
    match res {
        Ok(Some(false)) => *turned_off = true,
        Ok(_) => {}
        Err(e) => limited_log!(IRQ_FAILED, error, "{addr}: VFIO_DEVICE_SET_IRQS: {e}"),
    }
}

/// A guest config access that is 1, 2 or 4 bytes inside one register.
fn access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset < 4 && offset as usize + len <= 4
}

impl VfioPciDevice {
    /// Teardown, step one: interrupts off and bus mastering off, for good. The VMM
    /// quiets every function before it releases any, so no function DMAs into a peer's
    /// BAR while that one is being reset.
    pub fn quiesce_for_release(&mut self) {
        if !self.torn_down && !self.quiet {
            self.quiesce();
            self.quiet = true;
        }
    }

    /// Teardown, step two: give the function back to the host, reset. Runs once, from
    /// `Drop` or earlier, on whichever thread the VMM picks (they overlap: a reset takes
    /// 100 ms and more, a GPU's up to seconds).
    ///
    /// A function with a reset of its own (FLR, PM) is reset by VFIO as its device file
    /// goes: vfio-pci resets every such function when its last user closes it. A reset
    /// here first would be a second one, so Strait only drops its BAR mmaps (which hold
    /// the file too) and closes the fd, and the reset happens right there, on this
    /// thread. A function without one gets Strait's bus reset through VFIO's hot reset
    /// first (or the warning that it has no reset at all).
    pub fn release(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        let started = std::time::Instant::now();
        if !std::mem::replace(&mut self.quiet, true) {
            self.quiesce();
        }
        let by_close = self.ops.reset_supported();
        if !by_close {
            if let Err(e) = reset_or_warn(&*self.ops, self.addr) {
                error!("{e}");
            }
        }
        self.bars.clear();
        drop(std::mem::replace(
            &mut self.ops,
            Box::new(crate::device::Closed),
        ));
        info!(
            "{}: released in {} ms{}",
            self.addr,
            started.elapsed().as_millis(),
            if by_close {
                " (reset by VFIO as its fd closed)"
            } else {
                ""
            }
        );
    }

    /// Reset the function in place, as a machine reset or the guest's secondary bus
    /// reset does: interrupts off, bus mastering off, VFIO reset, then the guest's view
    /// back to power-on (command 0, BARs where Strait placed them, MSI and MSI-X off
    /// and masked) and INTx wired again. The caller unmaps the BARs first (decode is
    /// off afterwards). Fails when the function does not answer after the reset.
    pub fn reset(&mut self) -> Result<()> {
        self.quiesce();
        reset_or_warn(&*self.ops, self.addr)?;
        self.held_decode = 0;
        let command = regs::COMMAND / 4;
        self.shadow.write(command, 0, &[0, 0]);
        for (index, gpa) in self.placed.clone() {
            self.place_bar(index, gpa)?;
        }
        if let Some(changes) = self.msix.as_mut().map(EmulatedMsix::power_on) {
            self.apply_irqs(MsiKind::Msix, &changes);
        }
        if let Some(changes) = self.msi.as_mut().map(EmulatedMsi::power_on) {
            self.apply_irqs(MsiKind::Msi, &changes);
        }
        if let Some(i) = self.intx.as_mut() {
            i.enable(&*self.ops).map_err(|source| Error::SetIrqs {
                addr: self.addr,
                index: IrqIndex::Intx as u32,
                source,
            })?;
        }
        info!("{}: reset", self.addr);
        Ok(())
    }

    /// Interrupts off and bus mastering off: the device stops raising and DMA-ing.
    fn quiesce(&mut self) {
        self.bus_master_held = false;
        let ops = &*self.ops;
        let addr = self.addr;
        let off = |what: &str, r: std::io::Result<()>| {
            if let Err(e) = r {
                error!("{addr}: turning {what} off: {e}");
            }
        };
        if let Some(m) = self.msix.as_mut() {
            off("MSI-X", m.line.disable(ops));
        }
        if let Some(m) = self.msi.as_mut() {
            off("MSI", m.line.disable(ops));
        }
        if let Some(i) = self.intx.as_mut() {
            off("INTx", i.disable(ops));
        }
        // Stop DMA before the reset, in case the device has no reset at all.
        let cmd = self.device_command();
        if cmd != 0xffff && cmd & COMMAND_BUS_MASTER != 0 {
            self.device_write(COMMAND, &(cmd & !COMMAND_BUS_MASTER).to_le_bytes());
        }
    }

    /// The guest's command write. Decode switched off reaches the device only once the
    /// VMM removed the BAR's KVM slots ([`Self::release_decode`]): vfio-pci zaps its
    /// mmaps when memory decode goes off, and a vCPU touching a slot over a zapped mmap
    /// would fault (KVM_RUN fails with EFAULT). Decode switched on goes through at once.
    fn write_command(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let res = self.shadow.write(reg, offset, data);
        let bits = |to: bool| {
            let bit = |switched: Option<bool>, b: u16| if switched == Some(to) { b } else { 0 };
            bit(res.mem_decode, COMMAND_MEMORY) | bit(res.io_decode, COMMAND_IO)
        };
        let (going_off, going_on) = (bits(false), bits(true));
        self.held_decode = (self.held_decode | going_off) & !going_on;
        let mut to_device = data.to_vec();
        // The decode bits and Bus Master Enable sit in the command register's low byte
        // (offset 0 of dword 1).
        if let (0, Some(low)) = (offset, to_device.first_mut()) {
            *low |= self.held_decode as u8;
            let bme = COMMAND_BUS_MASTER as u8;
            if *low & bme != 0 && self.dma.hold_bus_master() {
                *low &= !bme;
                self.bus_master_held = true;
            } else if *low & bme == 0 {
                self.bus_master_held = false;
            }
        }
        self.device_write(reg * 4 + offset as usize, &to_device);
        res
    }

    /// Let the device turn off the decode the guest switched off: the VMM calls this
    /// after it removed the BARs' KVM slots and traps.
    pub fn release_decode(&mut self) {
        let held = std::mem::take(&mut self.held_decode);
        if held == 0 {
            return;
        }
        let cmd = self.device_command();
        if cmd != 0xffff {
            self.device_write(COMMAND, &(cmd & !held).to_le_bytes());
        }
    }

    /// The command register as the device has it (the guest sees its own view).
    pub fn device_command(&self) -> u16 {
        (self.device_dword(COMMAND) & 0xffff) as u16
    }

    /// Guest RAM is fully DMA-mapped now: give the device the Bus Master Enable its
    /// guest wrote meanwhile (if it still wants it).
    pub fn release_bus_master(&mut self) {
        if !std::mem::take(&mut self.bus_master_held) || self.torn_down {
            return;
        }
        if self.shadow.read_u32(COMMAND) as u16 & COMMAND_BUS_MASTER == 0 {
            return;
        }
        let cmd = self.device_command();
        if cmd != 0xffff {
            self.device_write(COMMAND, &(cmd | COMMAND_BUS_MASTER).to_le_bytes());
            info!(
                "{}: bus mastering on (held until guest RAM was DMA-mapped)",
                self.addr
            );
        }
    }
}

impl VfioPciDevice {
    /// The guest's config dword at `off` (inside config space), before the clique
    /// capability's patch.
    fn config_dword(&self, off: usize) -> u32 {
        match off {
            COMMAND => {
                (self.device_dword(off) & 0xffff_0000) | (self.shadow.read_u32(off) & 0xffff)
            }
            HEADER_DWORD => {
                let v = self.device_dword(off) & !MULTIFUNCTION;
                if self.multifunction {
                    v | MULTIFUNCTION
                } else {
                    v
                }
            }
            o if BAR_REGS.contains(&o) || o == ROM_ADDRESS => self.shadow.read_u32(off),
            o if self.msix.as_ref().is_some_and(|m| m.cap.covers(o)) => {
                let dev = self.device_dword(off);
                self.msix
                    .as_ref()
                    .map_or(u32::MAX, |m| m.cap.read(off, dev))
            }
            o if self.msi.as_ref().is_some_and(|m| m.cap.covers(o)) => {
                let dev = self.device_dword(off);
                self.msi.as_ref().map_or(u32::MAX, |m| m.cap.read(off, dev))
            }
            o if o >= 0x100 => self.ext.read(off, self.device_dword(off)),
            _ => self.device_dword(off),
        }
    }

    fn config_write_dword(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let off = reg.saturating_mul(4);
        if !access_ok(offset, data.len()) || off >= self.config_len {
            limited_debug!(
                GUEST_ODDITY,
                "{}: dropped config write reg {reg:#x}+{offset}",
                self.addr
            );
            return ConfigWriteResult::default();
        }
        match off {
            COMMAND => return self.write_command(reg, offset, data),
            o if BAR_REGS.contains(&o) || o == ROM_ADDRESS => {
                return self.shadow.write(reg, offset, data)
            }
            // Header type (read-only) shares this dword with cache line size,
            // latency timer and BIST, which the device handles.
            o if self.msix.as_ref().is_some_and(|m| m.cap.covers(o)) => {
                if let Some(changes) = self
                    .msix
                    .as_mut()
                    .map(|m| m.config_write(off, offset, data))
                {
                    self.apply_irqs(MsiKind::Msix, &changes);
                }
            }
            o if self.msi.as_ref().is_some_and(|m| m.cap.covers(o)) => {
                if let Some(changes) = self.msi.as_mut().map(|m| m.config_write(off, offset, data))
                {
                    self.apply_irqs(MsiKind::Msi, &changes);
                }
            }
            o if o >= 0x100 && (self.ext.hidden_at(o) || self.ext.is_header(o)) => {
                limited_debug!(
                    GUEST_ODDITY,
                    "{}: dropped write to ext cap at {o:#x}",
                    self.addr
                );
            }
            _ => self.device_write(off + offset as usize, data),
        }
        ConfigWriteResult::default()
    }
}

impl PciDevice for VfioPciDevice {
    fn config_read(&mut self, reg: usize) -> u32 {
        let Some(off) = reg.checked_mul(4).filter(|o| *o < self.config_len) else {
            return u32::MAX;
        };
        let value = self.config_dword(off);
        match &self.clique {
            Some(c) => c.patch(off, value),
            None => value,
        }
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let off = reg.saturating_mul(4);
        if self.clique.as_ref().is_some_and(|c| c.covers(off)) {
            limited_debug!(
                GUEST_ODDITY,
                "{}: dropped write to the clique capability",
                self.addr
            );
            return ConfigWriteResult::default();
        }
        self.config_write_dword(reg, offset, data)
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.shadow.bars()
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        if index == ROM_BAR_INDEX {
            if let Err(e) = self.ops.region_read(ROM_REGION, offset, data) {
                limited_debug!(GUEST_ODDITY, "{}: ROM read at {offset:#x}: {e}", self.addr);
                data.fill(0xff);
            }
            return;
        }
        if let Some(EmulatedMsix { emu, line, .. }) = self.msix.as_mut() {
            if emu.read(index, offset, data, &mut |v| line.held(v)) {
                return;
            }
        }
        if let Err(e) = self.ops.region_read(index.into(), offset, data) {
            limited_debug!(
                GUEST_ODDITY,
                "{}: BAR {index} read at {offset:#x}: {e}",
                self.addr
            );
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        if index == ROM_BAR_INDEX {
            limited_debug!(
                GUEST_ODDITY,
                "{}: dropped ROM write at {offset:#x}",
                self.addr
            );
            return;
        }
        // A guest write to the MSI-X table: the model returns what changed and
        // `apply_irqs` -> `MsiLine::apply` makes the route, irqfd and SET_IRQS calls
        // (the whole way, counted in files and crate crossings: `crate::irq`'s header).
        if let Some(changes) = self
            .msix
            .as_mut()
            .and_then(|m| m.emu.write(index, offset, data))
        {
            self.apply_irqs(MsiKind::Msix, &changes);
            return;
        }
        if let Err(e) = self.ops.region_write(index.into(), offset, data) {
            limited_debug!(
                GUEST_ODDITY,
                "{}: BAR {index} write at {offset:#x}: {e}",
                self.addr
            );
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.release();
    }
}
