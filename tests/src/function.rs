//! Descriptions of passed-through PCI functions, turned into what a VFIO backend serves:
//! the device's config space image (PCI Local Bus 3.0 6.1-6.2 header, 6.7-6.8 capabilities;
//! PCIe Base 7.5.3 PCI Express capability, 7.6 extended capabilities), its regions (BARs,
//! ROM) and its interrupt indexes (include/uapi/linux/vfio.h).
//!
//! The catalogue at the end holds the functions the integration tests pass through: a
//! data-centre GPU with its HDMI audio function, and a small NVMe-like controller.
//!
//! [`LargeRegions`] wraps a backend so BARs of tens of GiB can be faked: the fakes back a
//! region with a byte vector and mmap anonymous memory, which a build machine's overcommit
//! heuristic refuses at 32 GiB. Such a region is backed by a small prefix and mmapped from
//! a sparse, already unlinked file.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::pci::regs::{CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PCIE, CAP_ID_PM};
use devices::pci::{BarKind, PciIds};
use vfio_glue::device::{IrqIndex, IrqInfo, IrqRequest, RegionInfo, ROM_REGION};
use vfio_glue::hot_reset::HotResetTarget;
use vfio_glue::mapping::HostMapping;
use vfio_glue::VfioDeviceOps;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Extended capability IDs (PCI Code and ID Assignment, 3).
pub const EXT_CAP_AER: u16 = 0x0001;
pub const EXT_CAP_DSN: u16 = 0x0003;
pub const EXT_CAP_SRIOV: u16 = 0x0010;
pub const EXT_CAP_REBAR: u16 = 0x0015;
pub const EXT_CAP_LTR: u16 = 0x0018;

/// Where the device's capability list starts (NVIDIA GPUs start theirs at 0x60).
pub const CAP_START: usize = 0x60;
/// Body byte of every extended capability, so a hidden one reading 0 is visible.
pub const EXT_CAP_FILL: u8 = 0xa5;
/// Largest region a [`LargeRegions`]-wrapped fake backs with real bytes.
pub const BACKED_REGION_MAX: u64 = 64 * MIB;

/// One BAR as the device implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
}

/// The device's MSI-X capability: table and PBA in BAR `bir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixSpec {
    pub vectors: u16,
    pub bir: u8,
    pub table_offset: u32,
    pub pba_offset: u32,
}

/// The device's MSI capability (no per-vector masking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiSpec {
    pub vectors: u16,
    pub bits64: bool,
}

/// An extended capability: ID and length in bytes including its 4-byte header.
/// `gap` bytes of nothing follow it before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCapSpec {
    pub id: u16,
    pub len: usize,
    pub gap: usize,
}

/// A PCIe function as the host's vfio-pci presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub ids: PciIds,
    /// The multi-function bit as the host device reports it.
    pub host_multifunction: bool,
    /// INTx pin, 1..=4 for INTA..INTD, 0 for none.
    pub interrupt_pin: u8,
    pub bars: Vec<BarSpec>,
    pub rom_size: Option<u64>,
    pub msi: Option<MsiSpec>,
    pub msix: Option<MsixSpec>,
    pub ext_caps: Vec<ExtCapSpec>,
}

fn put(c: &mut [u8], off: usize, bytes: &[u8]) {
    c[off..off + bytes.len()].copy_from_slice(bytes);
}

fn bar_flags(kind: BarKind) -> u32 {
    match kind {
        BarKind::Io => 0x1,
        BarKind::Mem32 => 0x0,
        BarKind::Mem64 { prefetchable } => 0x4 | if prefetchable { 0x8 } else { 0 },
    }
}

impl FunctionSpec {
    /// The capabilities in list order as (ID, bytes after ID and next pointer):
    /// PM, MSI, PCI Express (endpoint, Gen4 x16), MSI-X.
    fn capabilities(&self) -> Vec<(u8, Vec<u8>)> {
        let mut caps = vec![(CAP_ID_PM, vec![0x03, 0x00, 0x08, 0x00, 0x00, 0x00])];
        if let Some(m) = self.msi {
            let control = (m.vectors.trailing_zeros() as u16) << 1 | u16::from(m.bits64) << 7;
            let mut body = vec![0u8; if m.bits64 { 12 } else { 8 }];
            put(&mut body, 0, &control.to_le_bytes());
            caps.push((CAP_ID_MSI, body));
        }
        let mut exp = vec![0u8; 0x3a];
        put(&mut exp, 0, &0x0002u16.to_le_bytes());
        put(&mut exp, 0x0a, &(0x4u32 | 16 << 4).to_le_bytes());
        caps.push((CAP_ID_PCIE, exp));
        if let Some(x) = self.msix {
            let mut body = Vec::with_capacity(10);
            body.extend_from_slice(&(x.vectors - 1).to_le_bytes());
            body.extend_from_slice(&(x.table_offset | u32::from(x.bir)).to_le_bytes());
            body.extend_from_slice(&(x.pba_offset | u32::from(x.bir)).to_le_bytes());
            caps.push((CAP_ID_MSIX, body));
        }
        caps
    }

    fn write_capabilities(&self, c: &mut [u8]) {
        c[0x06] |= 0x10;
        c[0x34] = CAP_START as u8;
        let caps = self.capabilities();
        let mut at = CAP_START;
        for (i, (id, body)) in caps.iter().enumerate() {
            let next = (at + 2 + body.len()).next_multiple_of(4);
            let link = if i + 1 < caps.len() { next as u8 } else { 0 };
            put(c, at, &[*id, link]);
            put(c, at + 2, body);
            at = next;
        }
    }

    fn write_ext_capabilities(&self, c: &mut [u8]) {
        let mut at = 0x100;
        for (i, cap) in self.ext_caps.iter().enumerate() {
            let next = (at + cap.len + cap.gap).next_multiple_of(4);
            let link = if i + 1 < self.ext_caps.len() { next } else { 0 };
            let header = u32::from(cap.id) | 1 << 16 | (link as u32) << 20;
            put(c, at, &header.to_le_bytes());
            c[at + 4..at + cap.len].fill(EXT_CAP_FILL);
            at = next;
        }
    }

    /// The 4 KiB config space image the device reports.
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        let ids = &self.ids;
        put(&mut c, 0x00, &ids.vendor.to_le_bytes());
        put(&mut c, 0x02, &ids.device.to_le_bytes());
        put(
            &mut c,
            0x08,
            &(ids.class << 8 | u32::from(ids.revision)).to_le_bytes(),
        );
        c[0x0e] = if self.host_multifunction { 0x80 } else { 0 };
        for bar in &self.bars {
            let off = 0x10 + 4 * usize::from(bar.index);
            put(&mut c, off, &bar_flags(bar.kind).to_le_bytes());
        }
        put(&mut c, 0x2c, &ids.subsystem_vendor.to_le_bytes());
        put(&mut c, 0x2e, &ids.subsystem.to_le_bytes());
        c[0x3d] = self.interrupt_pin;
        self.write_capabilities(&mut c);
        self.write_ext_capabilities(&mut c);
        c
    }

    /// The VFIO regions at their real sizes: BARs (memory ones mmap-able) and the ROM.
    pub fn regions(&self) -> BTreeMap<u32, RegionInfo> {
        let mut out = BTreeMap::new();
        for bar in &self.bars {
            let info = RegionInfo {
                size: bar.size,
                readable: true,
                writable: true,
                mmap: bar.kind != BarKind::Io,
                ..Default::default()
            };
            out.insert(u32::from(bar.index), info);
        }
        if let Some(size) = self.rom_size {
            let rom = RegionInfo {
                size,
                readable: true,
                ..Default::default()
            };
            out.insert(ROM_REGION, rom);
        }
        out
    }

    /// The regions with sizes capped at [`BACKED_REGION_MAX`], for a fake to back.
    pub fn backed_regions(&self) -> BTreeMap<u32, RegionInfo> {
        let mut out = self.regions();
        for info in out.values_mut() {
            info.size = info.size.min(BACKED_REGION_MAX);
        }
        out
    }

    /// The interrupt indexes VFIO reports: INTx if a pin is wired, MSI, MSI-X.
    pub fn irqs(&self) -> Vec<(IrqIndex, IrqInfo)> {
        let info = |count: u16| IrqInfo {
            count: count.into(),
            eventfd: true,
            maskable: count == 1,
            automasked: count == 1,
            noresize: true,
        };
        let mut out = Vec::new();
        if self.interrupt_pin != 0 {
            out.push((IrqIndex::Intx, info(1)));
        }
        if let Some(m) = self.msi {
            out.push((IrqIndex::Msi, info(m.vectors)));
        }
        if let Some(x) = self.msix {
            out.push((IrqIndex::Msix, info(x.vectors)));
        }
        out
    }

    /// An option ROM image (PCI Firmware 3.3, 5.1): 0x55 0xAA, the image length in
    /// 512-byte units, and a PCI data structure naming this function.
    pub fn rom_image(&self) -> Option<Vec<u8>> {
        let size = usize::try_from(self.rom_size?).ok()?;
        let mut rom = vec![0u8; size.min(0x1000)];
        put(&mut rom, 0, &[0x55, 0xaa, (size / 512).min(0xff) as u8]);
        put(&mut rom, 0x18, &0x40u16.to_le_bytes());
        put(&mut rom, 0x40, b"PCIR");
        put(&mut rom, 0x44, &self.ids.vendor.to_le_bytes());
        put(&mut rom, 0x46, &self.ids.device.to_le_bytes());
        Some(rom)
    }
}

/// A backend whose regions larger than [`BACKED_REGION_MAX`] are reported at full size,
/// read and written through the inner backend's capped copy, and mmapped from a sparse
/// file (shared file mappings are not charged against the commit limit).
pub struct LargeRegions {
    inner: Box<dyn VfioDeviceOps>,
    large: BTreeMap<u32, RegionInfo>,
}

impl LargeRegions {
    /// Wrap `inner`, which backs `full`'s regions capped at [`BACKED_REGION_MAX`].
    pub fn new(inner: Box<dyn VfioDeviceOps>, full: BTreeMap<u32, RegionInfo>) -> Self {
        let large = full
            .into_iter()
            .filter(|(_, info)| info.size > BACKED_REGION_MAX)
            .collect();
        LargeRegions { inner, large }
    }
}

fn sparse_mapping(offset: u64, size: u64, file_len: u64) -> io::Result<HostMapping> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "strait-tests-bar-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = std::env::temp_dir().join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    file.set_len(file_len)?;
    let len = usize::try_from(size).map_err(io::Error::other)?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    HostMapping::map_file(file.as_raw_fd(), offset, len, prot)
}

impl VfioDeviceOps for LargeRegions {
    fn reset_supported(&self) -> bool {
        self.inner.reset_supported()
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match self.large.get(&index) {
            Some(info) => Some(info.clone()),
            None => self.inner.region_info(index),
        }
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.inner.region_read(index, offset, data)
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.region_write(index, offset, data)
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<HostMapping> {
        match self.large.get(&index) {
            Some(info) => sparse_mapping(offset, size, info.size),
            None => self.inner.mmap(index, offset, size),
        }
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.inner.irq_info(index)
    }

    fn set_irqs(&self, req: IrqRequest<'_>) -> io::Result<()> {
        self.inner.set_irqs(req)
    }

    fn reset(&self) -> io::Result<()> {
        self.inner.reset()
    }

    fn hot_reset_info(&self) -> io::Result<Vec<HotResetTarget>> {
        self.inner.hot_reset_info()
    }

    fn held_groups(&self) -> Vec<u32> {
        self.inner.held_groups()
    }

    fn hot_reset(&self, groups: &[u32]) -> io::Result<()> {
        self.inner.hot_reset(groups)
    }
}

// --- The catalogue -------------------------------------------------------------------------

/// MSI-X of [`gpu`]: 8 vectors, table and PBA in BAR0 where NVIDIA GPUs keep them.
pub const GPU_MSIX: MsixSpec = MsixSpec {
    vectors: 8,
    bir: 0,
    table_offset: 0x00b9_0000,
    pba_offset: 0x00ba_0000,
};

/// A data-centre GPU, function 0: BAR0 16 MiB registers (32-bit, holding the MSI-X table
/// and PBA), BAR1 32 GiB and BAR3 32 MiB 64-bit prefetchable, a 128-byte I/O BAR5, a
/// 128 KiB ROM, MSI and 8-vector MSI-X, and AER -> SR-IOV -> Resizable BAR -> LTR -> DSN,
/// of which SR-IOV and Resizable BAR must be hidden.
pub fn gpu() -> FunctionSpec {
    let pref64 = BarKind::Mem64 { prefetchable: true };
    FunctionSpec {
        ids: PciIds {
            vendor: 0x10de,
            device: 0x2330,
            class: 0x03_0200,
            revision: 0xa1,
            subsystem_vendor: 0x10de,
            subsystem: 0x16c1,
        },
        host_multifunction: true,
        interrupt_pin: 1,
        bars: vec![
            BarSpec {
                index: 0,
                kind: BarKind::Mem32,
                size: 16 * MIB,
            },
            BarSpec {
                index: 1,
                kind: pref64,
                size: 32 * GIB,
            },
            BarSpec {
                index: 3,
                kind: pref64,
                size: 32 * MIB,
            },
            BarSpec {
                index: 5,
                kind: BarKind::Io,
                size: 128,
            },
        ],
        rom_size: Some(128 << 10),
        msi: Some(MsiSpec {
            vectors: 1,
            bits64: true,
        }),
        msix: Some(GPU_MSIX),
        ext_caps: gpu_ext_caps(),
    }
}

/// AER at 0x100, SR-IOV at 0x150, Resizable BAR (3 BARs) at 0x190, LTR at 0x1d0,
/// DSN at 0x1e0.
fn gpu_ext_caps() -> Vec<ExtCapSpec> {
    let cap = |id, len, gap| ExtCapSpec { id, len, gap };
    vec![
        cap(EXT_CAP_AER, 0x48, 0x08),
        cap(EXT_CAP_SRIOV, 0x40, 0),
        cap(EXT_CAP_REBAR, 0x1c, 0x24),
        cap(EXT_CAP_LTR, 0x08, 0x08),
        cap(EXT_CAP_DSN, 0x0c, 0),
    ]
}

/// The GPU's HDMI audio controller, function 1: a 16 KiB BAR0 and MSI, INTB.
pub fn hdmi_audio() -> FunctionSpec {
    FunctionSpec {
        ids: PciIds {
            vendor: 0x10de,
            device: 0x22ba,
            class: 0x04_0300,
            revision: 0xa1,
            subsystem_vendor: 0x10de,
            subsystem: 0x16c1,
        },
        host_multifunction: true,
        interrupt_pin: 2,
        bars: vec![BarSpec {
            index: 0,
            kind: BarKind::Mem32,
            size: 16 << 10,
        }],
        rom_size: None,
        msi: Some(MsiSpec {
            vectors: 1,
            bits64: true,
        }),
        msix: None,
        ext_caps: Vec::new(),
    }
}

/// An NVMe-like controller: BAR0 64-bit non-prefetchable 16 KiB with a 4-vector MSI-X
/// table at 0x2000 and PBA at 0x3000; AER only.
pub fn nvme() -> FunctionSpec {
    FunctionSpec {
        ids: PciIds {
            vendor: 0x1b36,
            device: 0x0010,
            class: 0x01_0802,
            revision: 0x02,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        },
        host_multifunction: false,
        interrupt_pin: 1,
        bars: vec![BarSpec {
            index: 0,
            kind: BarKind::Mem64 {
                prefetchable: false,
            },
            size: 16 << 10,
        }],
        rom_size: None,
        msi: None,
        msix: Some(MsixSpec {
            vectors: 4,
            bir: 0,
            table_offset: 0x2000,
            pba_offset: 0x3000,
        }),
        ext_caps: vec![ExtCapSpec {
            id: EXT_CAP_AER,
            len: 0x48,
            gap: 0,
        }],
    }
}
