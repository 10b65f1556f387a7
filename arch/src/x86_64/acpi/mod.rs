//! ACPI tables for a hardware-reduced x86_64 PC (ACPI 6.5: 5.2.5 RSDP, 5.2.8 XSDT,
//! 5.2.9 FADT, 5.2.12 MADT, 5.2.11.1 DSDT; PCI Firmware spec 3.3 4.1.2 MCFG), written
//! from `layout::ACPI_START` with the RSDP first, where the guest's scan of 0xe0000..0xfffff
//! finds it (the zero page also carries its address).
//!
//! Power management follows the hardware-reduced model (ACPI 6.5 4.1): no PM1 blocks or
//! SCI; power-off is a byte write to the FADT SLEEP_CONTROL_REG and reset a byte write to
//! RESET_REG, both I/O ports defined in `layout`.

mod dsdt;
mod madt;
mod numa;

pub(crate) use madt::IOAPIC_ID;
pub use numa::{split_ram, NumaNode, LOCAL_DISTANCE};

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::gdt::write_bytes;
use super::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
    FIRST_ADDR_PAST_32BITS, MMIO32_SIZE, MMIO32_START, PCI_ECAM_BUS_SIZE, PCI_ECAM_START,
    PCI_IO_SIZE, PCI_IO_START, RSDP_START,
};
use crate::{Error, Result};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"STRAIT";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"STRAITVM";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// IA-PC boot architecture flag: no VGA; probing 0x3b0..0x3df/0xa0000 is unsafe. Keeps
/// vgacon and friends away from a passed-through GPU's legacy ranges.
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// FADT SCI_INT. Ignored on hardware-reduced platforms, but Linux treats a MADT override
/// whose source equals SCI_INT as the SCI's, so it must not be 0 (the IRQ0 override).
const SCI_IRQ: u16 = 9;
/// Alignment of each table inside the ACPI area.
const TABLE_ALIGN: u64 = 16;

/// A guest address window `[base, base + size)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrRange {
    /// First address.
    pub base: u64,
    /// Length in bytes; 0 means "no window".
    pub size: u64,
}

impl AddrRange {
    /// Exclusive end, `None` on overflow.
    fn end(self) -> Option<u64> {
        self.base.checked_add(self.size)
    }
}

/// The PCI host bridge's resources as described by the DSDT `_CRS` and the MCFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// ECAM base for segment 0 (`layout::PCI_ECAM_START`).
    pub ecam_base: u64,
    /// Last bus number decoded (buses 0..=bus_end).
    pub bus_end: u8,
    /// I/O port window for BARs (`layout::PCI_IO_START`, `layout::PCI_IO_SIZE`).
    pub io: AddrRange,
    /// 32-bit MMIO window (`layout::MMIO32_START`, `layout::MMIO32_SIZE`).
    pub mmio32: AddrRange,
    /// 64-bit MMIO window (from `layout::mmio64_start`); size 0 omits it.
    pub mmio64: AddrRange,
}

impl PciWindows {
    /// The platform-contract windows with all 256 buses and the given 64-bit window.
    pub fn platform(mmio64: AddrRange) -> Self {
        PciWindows {
            ecam_base: PCI_ECAM_START.0,
            bus_end: 0xff,
            io: AddrRange {
                base: u64::from(PCI_IO_START),
                size: PCI_IO_SIZE,
            },
            mmio32: AddrRange {
                base: MMIO32_START.0,
                size: MMIO32_SIZE,
            },
            mmio64,
        }
    }

    /// Checks each window is non-empty (except mmio64), fits its address space, and that
    /// the ECAM for `bus_end` ends below 4 GiB.
    fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, w: AddrRange| Error::PciWindow {
            what,
            base: w.base,
            size: w.size,
        };
        let within = |w: AddrRange, limit: u64| w.size > 0 && w.end().is_some_and(|e| e <= limit);
        if !within(self.io, 0x1_0000) {
            return Err(bad("I/O", self.io));
        }
        if !within(self.mmio32, FIRST_ADDR_PAST_32BITS.0) {
            return Err(bad("32-bit MMIO", self.mmio32));
        }
        if self.mmio64.size > 0 && self.mmio64.end().is_none() {
            return Err(bad("64-bit MMIO", self.mmio64));
        }
        let ecam = AddrRange {
            base: self.ecam_base,
            size: (u64::from(self.bus_end) + 1) * PCI_ECAM_BUS_SIZE,
        };
        if !within(ecam, FIRST_ADDR_PAST_32BITS.0) {
            return Err(bad("ECAM", ecam));
        }
        Ok(())
    }
}

/// An extra PCIe host bridge: the root bus of one guest NUMA node's root ports (the main
/// bridge, `\_SB.PCI0` on bus 0, is described by [`PciWindows`] and
/// [`AcpiConfig::pci_pxm`], less what the extra bridges claim).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciHostBridge {
    /// Its root bus (`_BBN`), above the main bridge's range.
    pub bus: u8,
    /// Last bus of its range.
    pub bus_end: u8,
    /// Its proximity domain (`_PXM`).
    pub pxm: Option<u32>,
    /// I/O windows it forwards, inside [`PciWindows::io`].
    pub io: Vec<AddrRange>,
    /// Memory windows it forwards, each inside the 32-bit or the 64-bit window.
    pub mmio: Vec<AddrRange>,
}

impl PciHostBridge {
    /// Checks its buses lie in `1..=pci.bus_end` and each window inside the platform's.
    fn validate(&self, pci: &PciWindows) -> Result<()> {
        let inside = |w: AddrRange, outer: AddrRange| {
            w.size > 0
                && w.base >= outer.base
                && w.end().zip(outer.end()).is_some_and(|(e, o)| e <= o)
        };
        if self.bus == 0 || self.bus > self.bus_end || self.bus_end > pci.bus_end {
            return Err(Error::PciWindow {
                what: "extra host bridge bus",
                base: u64::from(self.bus),
                size: u64::from(self.bus_end) + 1 - u64::from(self.bus.min(self.bus_end)),
            });
        }
        for &w in &self.io {
            if !inside(w, pci.io) {
                return Err(Error::PciWindow {
                    what: "extra host bridge I/O",
                    base: w.base,
                    size: w.size,
                });
            }
        }
        for &w in &self.mmio {
            if !inside(w, pci.mmio32) && !inside(w, pci.mmio64) {
                return Err(Error::PciWindow {
                    what: "extra host bridge MMIO",
                    base: w.base,
                    size: w.size,
                });
            }
        }
        Ok(())
    }
}

/// Inputs of the ACPI tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC IDs 0..vcpus); 1..=[`MAX_VCPUS`].
    pub vcpus: u32,
    /// PCI host bridge windows.
    pub pci: PciWindows,
    /// Describe COM1 (PNP0501 at 0x3f8, IRQ 4) in the DSDT. Recommended whenever COM1 is
    /// emulated: on a hardware-reduced platform it is how Linux maps IRQ 4 to GSI 4.
    pub com1: bool,
    /// Guest NUMA nodes (SRAT and SLIT); empty: no NUMA tables.
    pub numa: Vec<NumaNode>,
    /// The main host bridge's proximity domain (`_PXM`): the guest node its devices are on.
    pub pci_pxm: Option<u32>,
    /// Extra host bridges, one per further guest node holding devices; empty: one bridge.
    pub pci_bridges: Vec<PciHostBridge>,
}

/// Largest vCPU count: xAPIC IDs 0..=254 (255 is the broadcast ID).
pub const MAX_VCPUS: u32 = 255;

/// Hands out 16-byte aligned addresses in the ACPI area.
struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, len: usize) -> Result<GuestAddress> {
        let addr = self.next.div_ceil(TABLE_ALIGN) * TABLE_ALIGN;
        let end = addr.saturating_add(len as u64);
        if end > ACPI_END.0 {
            return Err(Error::AcpiTablesTooLarge {
                end,
                limit: ACPI_END.0,
            });
        }
        self.next = end;
        Ok(GuestAddress(addr))
    }
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT: hardware-reduced, reset register supported, sleep control/status registers,
/// X_DSDT at `dsdt`, no FACS (optional on hardware-reduced platforms).
fn build_fadt(dsdt: GuestAddress) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.sci_int = SCI_IRQ.into();
    // No 8042 flag either: Linux then skips probing the i8042, which the VMM only emulates
    // for the reset line (reboot still falls back to port 0x64 after RESET_REG).
    // The CMOS RTC flag stays clear: the VMM emulates a CMOS RTC at 0x70.
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    fadt.reset_reg = io_register(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(ACPI_SLEEP_STATUS_PORT);
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn build_xsdt(entries: &[GuestAddress]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        xsdt.add_entry(e.0);
    }
    let mut bytes = Vec::new();
    xsdt.to_aml_bytes(&mut bytes);
    bytes
}

fn validate(cfg: &AcpiConfig) -> Result<()> {
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount {
            count: cfg.vcpus,
            max: MAX_VCPUS,
        });
    }
    cfg.pci.validate()?;
    cfg.pci_bridges
        .iter()
        .try_for_each(|b| b.validate(&cfg.pci))
}

/// Builds RSDP, XSDT, FADT, DSDT, MADT and MCFG and writes them from `layout::ACPI_START`
/// (RSDP at `layout::RSDP_START`); returns the RSDP address. Errors with
/// `AcpiTablesTooLarge` if they would pass `layout::ACPI_END`, `VcpuCount` or `PciWindow`
/// for bad inputs, `WriteGuest` if guest memory doesn't cover the area.
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress> {
    validate(cfg)?;
    let dsdt = dsdt::build_dsdt(cfg);
    let madt = madt::build_madt(cfg);
    let mcfg = madt::build_mcfg(cfg);
    let numa =
        (!cfg.numa.is_empty()).then(|| [numa::build_srat(&cfg.numa), numa::build_slit(&cfg.numa)]);

    let mut placer = Placer { next: RSDP_START.0 };
    let rsdp_addr = placer.place(Rsdp::len())?;
    let xsdt_addr = placer.place(build_xsdt(&[GuestAddress(0); 3]).len())?;
    let fadt_addr = placer.place(FADT::len())?;
    let dsdt_addr = placer.place(dsdt.len())?;
    let madt_addr = placer.place(madt.len())?;
    let mcfg_addr = placer.place(mcfg.len())?;
    let mut entries = vec![fadt_addr, madt_addr, mcfg_addr];
    let mut numa_at = Vec::new();
    for t in numa.iter().flatten() {
        let at = placer.place(t.len())?;
        numa_at.push((at, t));
        entries.push(at);
    }
    // The XSDT was sized for three entries above: place it again if it grew.
    let xsdt_addr = if entries.len() > 3 {
        placer.place(build_xsdt(&entries).len())?
    } else {
        xsdt_addr
    };

    let fadt = build_fadt(dsdt_addr);
    let xsdt = build_xsdt(&entries);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr.0).to_aml_bytes(&mut rsdp);

    write_bytes(mem, "RSDP", rsdp_addr, &rsdp)?;
    write_bytes(mem, "XSDT", xsdt_addr, &xsdt)?;
    write_bytes(mem, "FADT", fadt_addr, &fadt)?;
    write_bytes(mem, "DSDT", dsdt_addr, &dsdt)?;
    write_bytes(mem, "MADT", madt_addr, &madt)?;
    write_bytes(mem, "MCFG", mcfg_addr, &mcfg)?;
    for (at, t) in numa_at {
        write_bytes(mem, "SRAT/SLIT", at, t)?;
    }
    log::debug!(
        "ACPI tables at {:#x}..{:#x} for {} vCPUs",
        rsdp_addr.0,
        placer.next,
        cfg.vcpus
    );
    Ok(rsdp_addr)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    pub(crate) fn checksum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    pub(crate) fn config(vcpus: u32) -> AcpiConfig {
        AcpiConfig {
            vcpus,
            pci: PciWindows::platform(AddrRange {
                base: 1 << 32,
                size: 1 << 34,
            }),
            com1: true,
            numa: Vec::new(),
            pci_pxm: None,
            pci_bridges: Vec::new(),
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
    }

    /// Reads the table at `addr` using its header length.
    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len = u32_at(&read(mem, addr, 8), 4) as usize;
        read(mem, addr, len)
    }

    /// Writes the tables for `cfg` and returns (memory, XSDT entries).
    fn written(cfg: &AcpiConfig) -> (GuestMemoryMmap, Vec<u64>) {
        let m = mem();
        let rsdp = create_acpi_tables(&m, cfg).unwrap();
        let xsdt_addr = u64_at(&read(&m, rsdp.0, 36), 24);
        let xsdt = table(&m, xsdt_addr);
        let entries = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        (m, entries)
    }

    fn find(mem: &GuestMemoryMmap, entries: &[u64], sig: &[u8; 4]) -> Vec<u8> {
        entries
            .iter()
            .map(|&a| table(mem, a))
            .find(|t| &t[0..4] == sig)
            .unwrap()
    }

    #[test]
    fn rsdp_is_at_0xe0000_with_valid_checksums() {
        let m = mem();
        assert_eq!(
            create_acpi_tables(&m, &config(2)).unwrap(),
            GuestAddress(0xe0000)
        );
        let r = read(&m, 0xe0000, 36);
        assert_eq!((&r[0..8], r[15]), (&b"RSD PTR "[..], 2));
        assert_eq!((checksum(&r[0..20]), checksum(&r)), (0, 0));
    }

    #[test]
    fn xsdt_points_at_fadt_madt_and_mcfg() {
        let (m, entries) = written(&config(2));
        let sigs: Vec<Vec<u8>> = entries
            .iter()
            .map(|&a| table(&m, a)[0..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
    }

    #[test]
    fn every_table_checksums_to_zero() {
        let (m, entries) = written(&config(3));
        let fadt = find(&m, &entries, b"FACP");
        let dsdt = table(&m, u64_at(&fadt, 140));
        for t in entries.iter().map(|&a| table(&m, a)).chain([dsdt]) {
            assert_eq!(checksum(&t), 0, "{}", String::from_utf8_lossy(&t[0..4]));
        }
    }

    #[test]
    fn tables_stay_inside_the_acpi_area() {
        let (m, entries) = written(&config(MAX_VCPUS));
        for a in entries {
            let end = a + table(&m, a).len() as u64;
            assert!(a >= 0xe0000 && end <= 0x10_0000);
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_reset_register() {
        let (m, entries) = written(&config(1));
        let f = find(&m, &entries, b"FACP");
        let flags = u32_at(&f, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG: SystemIO, 8 bits, byte access, port 0x602; RESET_VALUE 1.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!((u64_at(&f, 120), f[128]), (u64::from(ACPI_RESET_PORT), 1));
    }

    #[test]
    fn fadt_carries_the_sleep_registers() {
        let (m, entries) = written(&config(1));
        let f = find(&m, &entries, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(u64_at(&f, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(&f, 260), u64::from(ACPI_SLEEP_STATUS_PORT));
        assert_eq!((f[244], f[256]), (1, 1));
    }

    #[test]
    fn fadt_boot_flags_disclaim_vga_only() {
        let (m, entries) = written(&config(1));
        let f = find(&m, &entries, b"FACP");
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), 0x4);
    }

    #[test]
    fn fadt_x_dsdt_points_at_the_dsdt() {
        let (m, entries) = written(&config(1));
        let f = find(&m, &entries, b"FACP");
        assert_eq!(&table(&m, u64_at(&f, 140))[0..4], b"DSDT");
    }

    #[test]
    fn madt_lists_every_vcpu() {
        let (m, entries) = written(&config(5));
        let madt = find(&m, &entries, b"APIC");
        assert_eq!(madt::madt_structures(&madt).len(), 5 + 3);
    }

    #[test]
    fn mcfg_uses_the_configured_bus_range() {
        let mut c = config(1);
        c.pci.bus_end = 7;
        let (m, entries) = written(&c);
        let mcfg = find(&m, &entries, b"MCFG");
        assert_eq!((u64_at(&mcfg, 44), mcfg[55]), (0xe000_0000, 7));
    }

    /// A config with an extra bridge on buses 4..=5 holding part of each MMIO window.
    pub(crate) fn with_extra_bridge() -> AcpiConfig {
        let mut c = config(2);
        c.pci.bus_end = 5;
        c.pci_pxm = Some(0);
        c.pci_bridges = vec![PciHostBridge {
            bus: 4,
            bus_end: 5,
            pxm: Some(1),
            io: vec![AddrRange {
                base: 0x2000,
                size: 0x1000,
            }],
            mmio: vec![
                AddrRange {
                    base: 0xc010_0000,
                    size: 0x10_0000,
                },
                AddrRange {
                    base: 1 << 33,
                    size: 1 << 30,
                },
            ],
        }];
        c
    }

    #[test]
    fn extra_bridges_are_checked_against_the_platform() {
        assert!(create_acpi_tables(&mem(), &with_extra_bridge()).is_ok());
        let mut c = with_extra_bridge();
        c.pci_bridges[0].bus_end = 6;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(
            err,
            Error::PciWindow {
                what: "extra host bridge bus",
                ..
            }
        ));
        let mut c = with_extra_bridge();
        c.pci_bridges[0].mmio[0].base = 0xe000_0000;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(
            err,
            Error::PciWindow {
                what: "extra host bridge MMIO",
                ..
            }
        ));
        let mut c = with_extra_bridge();
        c.pci_bridges[0].io[0].base = 0x800;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(
            err,
            Error::PciWindow {
                what: "extra host bridge I/O",
                ..
            }
        ));
    }

    #[test]
    fn zero_vcpus_are_rejected() {
        let err = create_acpi_tables(&mem(), &config(0)).unwrap_err();
        assert!(matches!(err, Error::VcpuCount { count: 0, max: 255 }));
    }

    #[test]
    fn too_many_vcpus_are_rejected() {
        let err = create_acpi_tables(&mem(), &config(256)).unwrap_err();
        assert!(matches!(err, Error::VcpuCount { count: 256, .. }));
    }

    #[test]
    fn empty_io_window_is_rejected() {
        let mut c = config(1);
        c.pci.io.size = 0;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(err, Error::PciWindow { what: "I/O", .. }));
    }

    #[test]
    fn mmio32_window_past_4g_is_rejected() {
        let mut c = config(1);
        c.pci.mmio32.base = 0xf000_0000;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(
            err,
            Error::PciWindow {
                what: "32-bit MMIO",
                ..
            }
        ));
    }

    #[test]
    fn ecam_past_4g_is_rejected() {
        let mut c = config(1);
        c.pci.ecam_base = 0xf800_0000;
        let err = create_acpi_tables(&mem(), &c).unwrap_err();
        assert!(matches!(err, Error::PciWindow { what: "ECAM", .. }));
    }

    #[test]
    fn missing_64bit_window_is_allowed() {
        let mut c = config(1);
        c.pci.mmio64 = AddrRange::default();
        assert!(create_acpi_tables(&mem(), &c).is_ok());
    }

    #[test]
    fn placement_past_1m_is_too_large() {
        let mut p = Placer { next: 0xf_fff0 };
        let err = p.place(0x20).unwrap_err();
        assert!(matches!(
            err,
            Error::AcpiTablesTooLarge { end: 0x10_0010, .. }
        ));
    }

    #[test]
    fn placement_aligns_to_16_bytes() {
        let mut p = Placer { next: 0xe0000 };
        p.place(36).unwrap();
        assert_eq!(p.place(8).unwrap(), GuestAddress(0xe0030));
    }

    #[test]
    fn memory_without_the_acpi_area_is_a_write_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_acpi_tables(&m, &config(1)).unwrap_err();
        assert!(matches!(err, Error::WriteGuest { what: "RSDP", .. }));
    }
}
