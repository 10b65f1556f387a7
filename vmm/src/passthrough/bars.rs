//! Where the BARs of passed-through functions live in the guest, and keeping that true
//! when the guest moves them or switches decode (PCI Local Bus 3.0, 6.2.2 command
//! register, 6.2.5 BARs; KVM API KVM_SET_USER_MEMORY_REGION; vfio-glue's recipe, steps 3-4).
//!
//! A BAR is live while its function decodes it (memory or I/O space enable). Live, its
//! directly mapped spans are KVM memory slots over the VFIO region mmaps, so guest
//! accesses cost no exit, and its trapped spans (MSI-X table and PBA pages, sub-page BARs,
//! I/O BARs, the ROM) sit on the BAR MMIO bus or the port I/O bus and reach `bar_read` /
//! `bar_write`. Decode off removes both: vfio-pci zaps the mmaps then, and a slot left
//! over them would fault the vCPU.
//!
//! Config writes report their effects ([`ConfigWriteResult`]) to a handler that only
//! queues them ([`ConfigEffects`]); the vCPU applies the queue after the dispatch
//! ([`BarMapper::apply_pending`]), before it re-enters the guest.
//!
//! A Secondary Bus Reset the guest sets on a root port resets the functions behind it
//! here too ([`BarMapper::apply_pending`]): their BARs go dead, each is reset through
//! VFIO (outside every bus lock) and comes back with decode off, as real functions do
//! after a bus reset; the guest's driver then restores their config space.
//!
//! Peer-to-peer DMA: for the functions it is on for, each directly mapped span is also
//! DMA-mapped in the VFIO container at its guest physical address (IOVA = GPA, as guest
//! RAM is), so that another passed-through device can DMA into the BAR (kernel VFIO
//! docs, "VFIO_IOMMU_MAP_DMA"; the PCIe switch or root complex routes the peer write).
//! The mapping follows the KVM slot: made with it when decode turns on or the BAR
//! moves, removed before it. A span outside the IOMMU's IOVA ranges, or one the IOMMU
//! refuses, keeps its KVM slot and only loses P2P (logged, rate-limited).
//!
//! A move the rules of [`BarWindows::check`] refuse (onto RAM, outside the host bridge
//! windows), or that KVM or the bus refuses (an overlap), keeps the old mapping; the
//! refusal is logged (rate-limited) and the VM goes on.

use resources::lock;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use devices::bus::{BusDevice, SharedDevice};
use devices::pci::{BarInfo, BarKind, ConfigWriteResult, PciDevice, ROM_BAR_INDEX};
use resources::{limited_debug, limited_log, LogLimiter};
use vfio_glue::{DmaMapper, IovaRange, VfioPciDevice};

use super::bar_rules::{BarWindows, ConfigEffects, Effect};
use crate::io_buses::IoBuses;
use crate::slots::{MemorySlots, SlotPool};

/// Every log line on the paths a guest drives (moves, decode switches) goes through
/// one of these: a guest moving BARs in a loop must not flood the log.
static REFUSED_MOVE: LogLimiter = LogLimiter::new();
static MAP_FAILED: LogLimiter = LogLimiter::new();
static UNMAP_FAILED: LogLimiter = LogLimiter::new();
static MAPPED: LogLimiter = LogLimiter::new();
static P2P_REFUSED: LogLimiter = LogLimiter::new();

/// A trapped span of one BAR on a bus: accesses go to the function's BAR handlers.
struct BarTrap {
    dev: Arc<Mutex<VfioPciDevice>>,
    bar: u8,
    /// Offset of the span inside the BAR.
    offset: u64,
}

impl BusDevice for BarTrap {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.dev).bar_read(self.bar, self.offset + offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.dev).bar_write(self.bar, self.offset + offset, data);
    }
}

/// One BAR and where it is live.
#[derive(Debug)]
struct BarState {
    info: BarInfo,
    /// Where the guest wants it (placed by Strait, then as the guest moves it).
    target: u64,
    /// Where its slots and traps are, while live.
    live_at: Option<u64>,
    slots: Vec<(u32, u64)>,
    traps: Vec<u64>,
    /// Spans DMA-mapped for peer-to-peer, (IOVA = GPA, size).
    dma: Vec<(u64, u64)>,
}

/// One passed-through function's BARs.
struct FunctionBars {
    label: String,
    dev: Arc<Mutex<VfioPciDevice>>,
    mem_on: bool,
    io_on: bool,
    /// The ROM BAR's enable bit: the ROM decodes only with it and `mem_on`.
    rom_on: bool,
    /// Its directly mapped BAR spans are DMA-mapped for peer-to-peer.
    p2p: bool,
    bars: Vec<BarState>,
}

struct MapperState {
    slots: Arc<dyn MemorySlots>,
    pool: SlotPool,
    buses: IoBuses,
    windows: BarWindows,
    p2p: Option<P2pDma>,
    functions: Vec<FunctionBars>,
    /// The functions behind each passthrough root port, by index.
    behind_ports: Vec<Vec<usize>>,
}

/// Where peer-to-peer mappings go: the VFIO container and the IOVA ranges it accepts
/// (empty: any).
#[derive(Clone)]
pub struct P2pDma {
    pub mapper: Arc<dyn DmaMapper>,
    pub iova: Vec<IovaRange>,
}

impl P2pDma {
    fn accepts(&self, iova: u64, size: u64) -> bool {
        let last = iova.saturating_add(size.saturating_sub(1));
        self.iova.is_empty() || self.iova.iter().any(|r| r.start <= iova && last <= r.end)
    }
}

/// The BAR mappings of every passed-through function.
pub struct BarMapper {
    state: Mutex<MapperState>,
    effects: Arc<ConfigEffects>,
}

impl std::fmt::Debug for BarMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarMapper").finish_non_exhaustive()
    }
}

/// What [`BarMapper::new`] needs.
pub struct BarMapperParams {
    pub slots: Arc<dyn MemorySlots>,
    /// KVM memory slot numbers left after guest RAM's.
    pub pool: SlotPool,
    pub buses: IoBuses,
    pub windows: BarWindows,
    /// Where the config-write handlers queue their effects.
    pub effects: Arc<ConfigEffects>,
    /// The functions (indices in the mapper's list) behind each root port.
    pub behind_ports: Vec<Vec<usize>>,
    /// Peer-to-peer DMA mappings, for the functions given with `p2p` set; `None`: off.
    pub p2p: Option<P2pDma>,
}

impl BarMapper {
    /// Track `functions` (label, device, peer-to-peer on), whose BARs are placed and
    /// not yet decoded.
    pub fn new(
        p: BarMapperParams,
        functions: Vec<(String, Arc<Mutex<VfioPciDevice>>, bool)>,
    ) -> Self {
        let functions = functions
            .into_iter()
            .map(|(label, dev, p2p)| {
                let bars = lock(&dev)
                    .bars()
                    .into_iter()
                    .map(|info| BarState {
                        info,
                        target: info.addr,
                        live_at: None,
                        slots: Vec::new(),
                        traps: Vec::new(),
                        dma: Vec::new(),
                    })
                    .collect();
                FunctionBars {
                    label,
                    dev,
                    mem_on: false,
                    io_on: false,
                    rom_on: false,
                    p2p,
                    bars,
                }
            })
            .collect();
        let state = MapperState {
            slots: p.slots,
            pool: p.pool,
            buses: p.buses,
            windows: p.windows,
            p2p: p.p2p,
            functions,
            behind_ports: p.behind_ports,
        };
        BarMapper {
            state: Mutex::new(state),
            effects: p.effects,
        }
    }

    /// Apply queued config-write effects. Called by vCPU threads after each port or MMIO
    /// exit, outside any bus lock; cheap when nothing is queued.
    pub fn apply_pending(&self) {
        let queued = self.effects.take();
        if queued.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        for effect in queued {
            match effect {
                Effect::Function(function, result) => st.apply(function, &result),
                Effect::BusReset(port) => st.bus_reset(port),
            }
        }
    }

    /// A machine reset: forget queued effects, then reset every function (BARs dead,
    /// VFIO reset, guest view at power-on). Every function is tried; the first failure
    /// is returned.
    pub fn reset_all(&self) -> Result<(), vfio_glue::Error> {
        drop(self.effects.take());
        let mut st = lock(&self.state);
        let mut first = Ok(());
        for f in 0..st.functions.len() {
            if let Err(e) = st.reset_function(f) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Remove every slot and trap (before the devices and their mmaps go away).
    pub fn unmap_all(&self) {
        let mut st = lock(&self.state);
        for f in 0..st.functions.len() {
            for b in 0..st.functions[f].bars.len() {
                st.unmap(f, b);
            }
        }
    }

    /// Guest addresses where each function's BARs are live, for tests and logs.
    pub fn live(&self) -> Vec<Vec<(u8, Option<u64>)>> {
        let st = lock(&self.state);
        st.functions
            .iter()
            .map(|f| f.bars.iter().map(|b| (b.info.index, b.live_at)).collect())
            .collect()
    }
}

impl MapperState {
    /// The guest's Secondary Bus Reset on root port `port`. A card that does not come
    /// back is a host problem the guest cannot report: said loudly, once per reset.
    fn bus_reset(&mut self, port: usize) {
        let behind = self.behind_ports.get(port).cloned().unwrap_or_default();
        for f in behind {
            log::info!(
                "{}: secondary bus reset by the guest",
                self.functions[f].label
            );
            if let Err(e) = self.reset_function(f) {
                log::error!(
                    "{}: after the guest's bus reset: {e}",
                    self.functions[f].label
                );
            }
        }
    }

    /// Unmap function `f`'s BARs, reset it, and track it at power-on: decode off, BARs
    /// where Strait placed them.
    fn reset_function(&mut self, f: usize) -> Result<(), vfio_glue::Error> {
        for b in 0..self.functions[f].bars.len() {
            self.unmap(f, b);
        }
        let func = &mut self.functions[f];
        let res = lock(&func.dev).reset();
        func.mem_on = false;
        func.io_on = false;
        let placed = lock(&func.dev).bars();
        for bar in &mut func.bars {
            if let Some(p) = placed.iter().find(|p| p.index == bar.info.index) {
                bar.info = *p;
                bar.target = p.addr;
            }
        }
        res
    }

    fn apply(&mut self, f: usize, result: &ConfigWriteResult) {
        let Some(func) = self.functions.get_mut(f) else {
            return;
        };
        if let Some(on) = result.mem_decode {
            func.mem_on = on;
        }
        if let Some(on) = result.io_decode {
            func.io_on = on;
        }
        if let Some(on) = result.rom_decode {
            func.rom_on = on;
        }
        for mv in &result.bar_moves {
            if let Some(b) = func.bars.iter_mut().find(|b| b.info.index == mv.index) {
                b.target = mv.new;
            }
        }
        for b in 0..self.functions[f].bars.len() {
            self.sync_bar(f, b);
        }
    }

    /// Make BAR `b` of function `f` live where the guest wants it, if allowed.
    fn sync_bar(&mut self, f: usize, b: usize) {
        let func = &self.functions[f];
        let bar = &func.bars[b];
        let decodes = match (bar.info.index, bar.info.kind) {
            (ROM_BAR_INDEX, _) => func.mem_on && func.rom_on,
            (_, BarKind::Io) => func.io_on,
            _ => func.mem_on,
        };
        let want = decodes.then_some(bar.target);
        if want == bar.live_at {
            return;
        }
        let Some(addr) = want else {
            self.unmap(f, b);
            return;
        };
        let (kind, size) = (bar.info.kind, bar.info.size);
        if let Err(why) = self.windows.check(kind, addr, size) {
            limited_log!(
                REFUSED_MOVE,
                warn,
                "{}: BAR {} at {addr:#x} ({size:#x} bytes) refused: {why:?}; it stays at {:x?}",
                func.label,
                bar.info.index,
                bar.live_at
            );
            return;
        }
        let old = bar.live_at;
        self.unmap(f, b);
        if let Err(e) = self.map(f, b, addr) {
            let (label, index) = (
                &self.functions[f].label,
                self.functions[f].bars[b].info.index,
            );
            limited_log!(
                MAP_FAILED,
                warn,
                "{label}: cannot map BAR {index} at {addr:#x}: {e}; keeping {old:x?}"
            );
            if let Some(old) = old {
                if let Err(e) = self.map(f, b, old) {
                    let label = &self.functions[f].label;
                    limited_log!(MAP_FAILED, error, "{label}: cannot restore the BAR: {e}");
                }
            }
        }
    }

    /// Add BAR `b`'s slots and traps at `addr`; all or nothing.
    fn map(&mut self, f: usize, b: usize, addr: u64) -> io::Result<()> {
        let res = self.try_map(f, b, addr);
        match res {
            Ok(()) => self.functions[f].bars[b].live_at = Some(addr),
            // Take back the part that was added.
            Err(_) => self.unmap(f, b),
        }
        res
    }

    fn try_map(&mut self, f: usize, b: usize, addr: u64) -> io::Result<()> {
        let (dev, info) = {
            let func = &self.functions[f];
            (func.dev.clone(), func.bars[b].info)
        };
        let (direct, trapped) = bar_layout(&lock(&dev), info);
        for (offset, size, host) in direct {
            let slot = self.pool.get();
            let gpa = addr + offset;
            // SAFETY: `host` is a mapping of the device, which this mapper keeps alive
            // (through `dev`) until `unmap` removed the slot.
            if let Err(e) = unsafe { self.slots.add(slot, gpa, size, host) } {
                self.pool.put(slot);
                return Err(e);
            }
            self.functions[f].bars[b].slots.push((slot, gpa));
            self.map_p2p(f, b, gpa, size, host);
        }
        for span in trapped {
            let trap: SharedDevice = Arc::new(Mutex::new(BarTrap {
                dev: dev.clone(),
                bar: info.index,
                offset: span.start,
            }));
            let base = addr + span.start;
            let len = span.end - span.start;
            let res = match info.kind {
                BarKind::Io => self.buses.pio_mut().insert(trap, base, len),
                _ => self.buses.bar_mmio_mut().insert(trap, base, len),
            };
            res.map_err(io::Error::other)?;
            self.functions[f].bars[b].traps.push(base);
        }
        limited_debug!(
            MAPPED,
            "{}: BAR {} live at {addr:#x}",
            self.functions[f].label,
            info.index
        );
        Ok(())
    }

    /// DMA-map a directly mapped span for peer-to-peer, if on for function `f`; a
    /// refusal only costs P2P for the span.
    fn map_p2p(&mut self, f: usize, b: usize, gpa: u64, size: u64, host: u64) {
        let Some(p2p) = self.p2p.as_ref().filter(|_| self.functions[f].p2p) else {
            return;
        };
        let res = if p2p.accepts(gpa, size) {
            // SAFETY: `host` is the device's BAR mmap, kept alive through `dev` until
            // `unmap` has removed this DMA mapping (before the KVM slot and the device).
            unsafe { p2p.mapper.map(gpa, size, host) }
        } else {
            Err(io::Error::other("outside the IOMMU's IOVA ranges"))
        };
        match res {
            Ok(()) => self.functions[f].bars[b].dma.push((gpa, size)),
            Err(e) => limited_log!(
                P2P_REFUSED,
                warn,
                "{}: BAR {} span {gpa:#x}+{size:#x}: no peer-to-peer DMA mapping: {e}",
                self.functions[f].label,
                self.functions[f].bars[b].info.index
            ),
        }
    }

    fn unmap(&mut self, f: usize, b: usize) {
        let bar = &mut self.functions[f].bars[b];
        // Peers stop reaching the BAR before the guest does.
        for (iova, size) in std::mem::take(&mut bar.dma) {
            if let Some(p2p) = &self.p2p {
                if let Err(e) = p2p.mapper.unmap(iova, size) {
                    limited_log!(
                        UNMAP_FAILED,
                        error,
                        "BAR {}: peer-to-peer DMA unmap {iova:#x}+{size:#x}: {e}",
                        bar.info.index
                    );
                }
            }
        }
        let (slots, traps) = (
            std::mem::take(&mut bar.slots),
            std::mem::take(&mut bar.traps),
        );
        let (kind, index) = (bar.info.kind, bar.info.index);
        bar.live_at = None;
        for (slot, gpa) in slots {
            match self.slots.remove(slot, gpa) {
                Ok(()) => self.pool.put(slot),
                // A slot KVM still holds must not be reused.
                Err(e) => {
                    limited_log!(
                        UNMAP_FAILED,
                        error,
                        "BAR {index}: removing KVM slot {slot}: {e}"
                    )
                }
            }
        }
        for base in traps {
            let res = match kind {
                BarKind::Io => self.buses.pio_mut().remove(base),
                _ => self.buses.bar_mmio_mut().remove(base),
            };
            if let Err(e) = res {
                limited_log!(
                    UNMAP_FAILED,
                    error,
                    "BAR {index}: removing trap at {base:#x}: {e}"
                );
            }
        }
    }
}

/// A directly mapped span of a BAR: (offset in the BAR, size, host address).
type DirectSpan = (u64, u64, u64);

/// A BAR's directly mapped spans and its trapped spans (offset ranges in the BAR).
/// The ROM is trapped whole; a BAR beyond its VFIO region has no span there (reads of
/// the tail are unclaimed: all ones).
fn bar_layout(dev: &VfioPciDevice, info: BarInfo) -> (Vec<DirectSpan>, Vec<Range<u64>>) {
    if info.index == ROM_BAR_INDEX {
        let whole = Range {
            start: 0,
            end: info.size,
        };
        return (Vec::new(), vec![whole]);
    }
    let direct = dev
        .direct_mappings()
        .into_iter()
        .filter(|m| m.bar == info.index)
        .map(|m| (m.offset, m.size, m.host_addr))
        .collect();
    let trapped = dev
        .bar_plans()
        .into_iter()
        .filter(|p| p.index == info.index)
        .flat_map(|p| p.trapped)
        .map(|s| s.offset..s.end())
        .collect();
    (direct, trapped)
}

#[cfg(test)]
mod tests;
