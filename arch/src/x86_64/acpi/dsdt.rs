//! The DSDT (ACPI 6.5 5.2.11.1) of a hardware-reduced PC: the `\_S5` sleep package Linux
//! needs to power off through the FADT sleep control register, the PCIe host bridge
//! `\_SB.PCI0` (ACPI 6.5 6.1/6.2/6.4 for _HID/_CRS, PCI Firmware spec 3.3 4.5 for _OSC,
//! ACPI 6.5 6.2.13 for _PRT), a PNP0C02 device claiming the ECAM window (PCI Firmware spec
//! 3.3 4.1.2: MCFG ranges must be reserved by a motherboard resource), the power button:
//! a Generic Event Device (ACPI 6.5 5.6.9, `ACPI0013`) whose `_EVT` notifies a control
//! method power button (ACPI 6.5 4.8.2.2.1.2, `PNP0C0C`) with 0x80, and optionally COM1.
//!
//! The AML is assembled with `acpi_tables::aml`; its constructors take `&dyn Aml` children,
//! so values are bound to locals before the objects that reference them.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Arg, CreateDWordField, Device, EISAName, Interrupt,
    Memory32Fixed, Method, Name, NotEqual, Notify, Or, Package, Path, ResourceTemplate, Return,
    Uuid, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{AcpiConfig, AddrRange, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::x86_64::layout::{
    pci_intx_gsi, ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, GED_IRQ, PCI_CONFIG_ADDRESS_PORT,
    PCI_ECAM_BUS_SIZE,
};

/// DSDT revision; 2 or above makes AML integers 64-bit.
const DSDT_REVISION: u8 = 6;
/// `_OSC` UUID of PCI host bridges (PCI Firmware spec 3.3 4.5.1).
const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` status bit "unrecognized UUID" in capabilities DWORD 1.
const OSC_UNRECOGNIZED_UUID: u32 = 1 << 2;
/// Notify value of a power button press (ACPI 6.5 4.8.2.2.1.2: "Device Specific"
/// 0x80 on a PNP0C0C device means the button was pressed).
const POWER_BUTTON_PRESSED: u8 = 0x80;
/// Devices per PCI bus (each gets a `_PRT` entry per pin). Root ports keep their device
/// number on every root bus, so each host bridge's `_PRT` is the same.
const PCI_SLOTS: u8 = 32;
/// INTA..INTD.
const PCI_PINS: u8 = 4;

/// `\_S5_`: SLP_TYPa (and b) for soft-off, written by OSPM into SLEEP_CONTROL_REG.
fn s5_package() -> Vec<u8> {
    let slp_typ = ACPI_S5_SLEEP_TYPE;
    let mut bytes = Vec::new();
    Name::new("_S5_".into(), &Package::new(vec![&slp_typ, &slp_typ])).to_aml_bytes(&mut bytes);
    bytes
}

/// Last address of a non-empty window (callers validated `size > 0` and no overflow).
fn last(w: AddrRange) -> u64 {
    w.base + w.size - 1
}

/// `w` less every range of `holes`: the pieces left, in address order.
fn subtract(w: AddrRange, holes: &[AddrRange]) -> Vec<AddrRange> {
    let mut pieces = vec![w];
    for h in holes.iter().filter(|h| h.size > 0) {
        let (h0, h1) = (h.base, last(*h));
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                let (p0, p1) = (p.base, last(p));
                if h1 < p0 || h0 > p1 {
                    return vec![p];
                }
                let mut out = Vec::new();
                if h0 > p0 {
                    out.push(AddrRange {
                        base: p0,
                        size: h0 - p0,
                    });
                }
                if h1 < p1 {
                    out.push(AddrRange {
                        base: h1 + 1,
                        size: p1 - h1,
                    });
                }
                out
            })
            .collect();
    }
    pieces
}

/// What one host bridge's `_CRS` lists.
struct BridgeResources {
    buses: (u8, u8),
    /// The 0xcf8 config ports (the main bridge only).
    cf8: bool,
    io: Vec<AddrRange>,
    mmio: Vec<AddrRange>,
}

/// The main bridge's resources: buses from 0 up to the first extra bridge's, the 0xcf8
/// ports, and the platform's I/O, 32-bit and (if sized) 64-bit windows less the extra
/// bridges' (PCI Firmware 3.3 4.1: host bridges' `_CRS` must not overlap).
fn main_resources(cfg: &AcpiConfig) -> BridgeResources {
    let pci = &cfg.pci;
    let first_extra = cfg.pci_bridges.iter().map(|b| b.bus).min();
    let bus_end = first_extra.map_or(pci.bus_end, |b| b.saturating_sub(1));
    let io_holes: Vec<AddrRange> = cfg.pci_bridges.iter().flat_map(|b| b.io.clone()).collect();
    let mmio_holes: Vec<AddrRange> = cfg
        .pci_bridges
        .iter()
        .flat_map(|b| b.mmio.clone())
        .collect();
    let mut mmio = subtract(pci.mmio32, &mmio_holes);
    if pci.mmio64.size > 0 {
        mmio.extend(subtract(pci.mmio64, &mmio_holes));
    }
    BridgeResources {
        buses: (0, bus_end),
        cf8: true,
        io: subtract(pci.io, &io_holes),
        mmio,
    }
}

/// A host bridge `_CRS`: bus range, the 0xcf8 config ports if it has them, its I/O
/// windows and its memory windows (32-bit descriptors below 4 GiB, 64-bit above). The
/// memory windows are non-prefetchable so Linux may place any BAR kind in either.
fn host_bridge_crs(r: &BridgeResources) -> Vec<u8> {
    let buses = AddressSpace::<u16>::new_bus_number(u16::from(r.buses.0), u16::from(r.buses.1));
    let cf8 = IO::new(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, 8);
    // Validated to lie below 0x10000.
    let io: Vec<AddressSpace<u16>> =
        r.io.iter()
            .map(|w| AddressSpace::<u16>::new_io(w.base as u16, last(*w) as u16, None))
            .collect();
    let below_4g = |w: &&AddrRange| last(**w) <= u64::from(u32::MAX);
    let mmio32: Vec<AddressSpace<u32>> = r
        .mmio
        .iter()
        .filter(below_4g)
        .map(|w| {
            let (base, end) = (w.base as u32, last(*w) as u32);
            AddressSpace::<u32>::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                base,
                end,
                None,
            )
        })
        .collect();
    let mmio64: Vec<AddressSpace<u64>> = r
        .mmio
        .iter()
        .filter(|w| !below_4g(w))
        .map(|w| {
            let cache = AddressSpaceCacheable::NotCacheable;
            AddressSpace::<u64>::new_memory(cache, true, w.base, last(*w), None)
        })
        .collect();
    let mut resources: Vec<&dyn Aml> = vec![&buses];
    if r.cf8 {
        resources.push(&cf8);
    }
    resources.extend(io.iter().map(|a| a as &dyn Aml));
    resources.extend(mmio32.iter().map(|a| a as &dyn Aml));
    resources.extend(mmio64.iter().map(|a| a as &dyn Aml));
    let mut bytes = Vec::new();
    Name::new("_CRS".into(), &ResourceTemplate::new(resources)).to_aml_bytes(&mut bytes);
    bytes
}

/// `_OSC`: for the PCI host bridge UUID, grant every control the OS asks for (returning
/// Arg3 unchanged) so native PCIe hotplug, PME and AER services bind to the root ports;
/// for any other UUID set "unrecognized UUID" in DWORD 1.
fn host_bridge_osc() -> Vec<u8> {
    let cdw1 = Path::new("CDW1");
    let create_cdw1 = CreateDWordField::new(&cdw1, &Arg(3), &aml::ZERO);
    let uuid = Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
    let other_uuid = NotEqual::new(&Arg(0), &uuid);
    let flag = OSC_UNRECOGNIZED_UUID;
    let set_unrecognized = Or::new(&cdw1, &cdw1, &flag);
    let reject = aml::If::new(&other_uuid, vec![&set_unrecognized]);
    let ret = Return::new(&Arg(3));
    let mut bytes = Vec::new();
    Method::new("_OSC".into(), 4, false, vec![&create_cdw1, &reject, &ret])
        .to_aml_bytes(&mut bytes);
    bytes
}

/// `_PRT` for a root bus: INTx `pin` of device `slot` -> GSI [`pci_intx_gsi`]`(slot, pin)`, as
/// GSI entries (source 0), which Linux configures level-triggered, active-low.
fn host_bridge_prt() -> Vec<u8> {
    let entries: Vec<(u32, u8, u32)> = (0..PCI_SLOTS)
        .flat_map(|slot| {
            (0..PCI_PINS).map(move |pin| {
                (
                    (u32::from(slot) << 16) | 0xffff,
                    pin,
                    pci_intx_gsi(slot, pin),
                )
            })
        })
        .collect();
    let packages: Vec<Package> = entries
        .iter()
        .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &aml::ZERO, gsi]))
        .collect();
    let children: Vec<&dyn Aml> = packages.iter().map(|p| p as &dyn Aml).collect();
    let mut bytes = Vec::new();
    Name::new("_PRT".into(), &Package::new(children)).to_aml_bytes(&mut bytes);
    bytes
}

/// A PCIe host bridge of segment 0 named `path`, with `_UID` and `_BBN` its root bus.
fn host_bridge(path: &str, pxm: Option<u32>, r: &BridgeResources) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let bus = r.buses.0;
    let uid = Name::new("_UID".into(), &bus);
    let seg = Name::new("_SEG".into(), &0u8);
    let bbn = Name::new("_BBN".into(), &bus);
    let crs = host_bridge_crs(r);
    let osc = host_bridge_osc();
    let prt = host_bridge_prt();
    let mut pxm_aml = Vec::new();
    if let Some(node) = pxm {
        Name::new("_PXM".into(), &node).to_aml_bytes(&mut pxm_aml);
    }
    let raw = [crs, osc, prt, pxm_aml].concat();
    let raw = RawAml(&raw);
    let mut bytes = Vec::new();
    Device::new(path.into(), vec![&hid, &cid, &uid, &seg, &bbn, &raw]).to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB.PCI0`, the main host bridge on bus 0, then `\_SB.PCxx` for each extra bridge
/// (xx its root bus in hex, as QEMU names its expander bridges).
fn host_bridges(cfg: &AcpiConfig) -> Vec<u8> {
    let mut bytes = host_bridge("_SB_.PCI0", cfg.pci_pxm, &main_resources(cfg));
    for b in &cfg.pci_bridges {
        let r = BridgeResources {
            buses: (b.bus, b.bus_end),
            cf8: false,
            io: b.io.clone(),
            mmio: b.mmio.clone(),
        };
        bytes.extend(host_bridge(&format!("_SB_.PC{:02X}", b.bus), b.pxm, &r));
    }
    bytes
}

/// `\_SB.MRES`: motherboard resources (PNP0C02) claiming the ECAM window, which Linux checks
/// before trusting the MCFG (arch/x86/pci/mmconfig-shared.c, `is_acpi_reserved`).
fn ecam_reservation(cfg: &AcpiConfig) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let uid = Name::new("_UID".into(), &0u8);
    let ecam_size = (u64::from(cfg.pci.bus_end) + 1) * PCI_ECAM_BUS_SIZE;
    // Validated to end below 4 GiB.
    let ecam = Memory32Fixed::new(false, cfg.pci.ecam_base as u32, ecam_size as u32);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam]));
    let mut bytes = Vec::new();
    Device::new("_SB_.MRES".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB.COM1`: the 16550 at 0x3f8, IRQ 4. Describing it lets Linux map ISA IRQ 4 to GSI 4
/// on a hardware-reduced platform, where there are no implicit legacy IRQ mappings.
fn com1() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &0u8);
    let io = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq]));
    let mut bytes = Vec::new();
    Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB.PWRB`: a control method power button. Linux's `button` driver binds to it and
/// turns notify 0x80 into a KEY_POWER input event (acpid, systemd-logind act on that).
fn power_button() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
    let uid = Name::new("_UID".into(), &0u8);
    let mut bytes = Vec::new();
    Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB.GED_`: the hardware-reduced platform's event source. Its one interrupt, GSI
/// [`GED_IRQ`] (edge, active high), only ever means "power button pressed", so `_EVT`
/// notifies `\_SB.PWRB` whatever GSI it is called with (Linux calls `_EVT` when no
/// `_Exx` method matches, drivers/acpi/evged.c).
fn generic_event_device() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"ACPI0013");
    let uid = Name::new("_UID".into(), &0u8);
    let irq = Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&irq]));
    let button = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&button, &POWER_BUTTON_PRESSED);
    let evt = Method::new("_EVT".into(), 1, true, vec![&notify]);
    let mut bytes = Vec::new();
    Device::new("_SB_.GED_".into(), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(&mut bytes);
    bytes
}

/// Pre-assembled AML spliced into a parent object.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

/// The complete DSDT (header, checksum and AML body) for `cfg`, which the caller has
/// validated.
pub(super) fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&s5_package());
    dsdt.append_slice(&host_bridges(cfg));
    dsdt.append_slice(&ecam_reservation(cfg));
    dsdt.append_slice(&power_button());
    dsdt.append_slice(&generic_event_device());
    if cfg.com1 {
        dsdt.append_slice(&com1());
    }
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::acpi::tests::{checksum, config, with_extra_bridge};

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_checksum_is_zero() {
        assert_eq!(checksum(&build_dsdt(&config(2))), 0);
    }

    #[test]
    fn dsdt_length_matches_header() {
        let d = build_dsdt(&config(2));
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
        assert_eq!((len, &d[0..4]), (d.len(), &b"DSDT"[..]));
    }

    #[test]
    fn s5_package_holds_sleep_type_5() {
        // NameOp "_S5_" PackageOp len=4 count=2 BytePrefix 5 BytePrefix 5
        assert_eq!(
            s5_package(),
            b"\x08_S5_\x12\x06\x02\x0a\x05\x0a\x05".to_vec()
        );
    }

    #[test]
    fn dsdt_declares_the_host_bridge_methods() {
        let d = build_dsdt(&config(2));
        for name in [
            &b"PCI0"[..],
            b"_CRS",
            b"_OSC",
            b"_PRT",
            b"_SEG",
            b"_BBN",
            b"MRES",
        ] {
            assert!(contains(&d, name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn host_bridge_has_a_proximity_domain_only_when_given_one() {
        assert!(!contains(&build_dsdt(&config(1)), b"_PXM"));
        let mut cfg = config(1);
        cfg.pci_pxm = Some(1);
        // Name(_PXM, One): NameOp, the name, OneOp.
        assert!(contains(&build_dsdt(&cfg), b"\x08_PXM\x01"));
    }

    #[test]
    fn host_bridge_is_pnp0a08() {
        // EISAID("PNP0A08") encodes to 0x080ad041, stored as a DWordConst.
        let d = build_dsdt(&config(1));
        assert!(contains(&d, b"_HID\x0c\x41\xd0\x0a\x08"));
    }

    #[test]
    fn prt_has_an_entry_per_slot_and_pin() {
        let prt = host_bridge_prt();
        // Each entry starts with PackageOp followed by a 1-byte length and count 4.
        let count = prt.windows(3).filter(|w| w[0] == 0x12 && w[2] == 4).count();
        assert_eq!(count, 128);
    }

    #[test]
    fn prt_routes_slot_1_inta_to_gsi_17() {
        // Package { 0x0001ffff, Zero, Zero, 17 }
        let entry = b"\x12\x0b\x04\x0c\xff\xff\x01\x00\x00\x00\x0a\x11";
        assert!(contains(&host_bridge_prt(), entry));
    }

    #[test]
    fn crs_describes_the_64bit_window_when_sized() {
        let mut c = config(1);
        let with = host_bridge_crs(&main_resources(&c));
        // QWord address space descriptor tag.
        assert!(with.contains(&0x8a));
        c.pci.mmio64.size = 0;
        assert!(!host_bridge_crs(&main_resources(&c)).contains(&0x8a));
    }

    #[test]
    fn crs_carries_the_bus_range() {
        let mut c = config(1);
        c.pci.bus_end = 0x3f;
        // WordBusNumber: tag 0x88, len 13, type 2, flags 0x0c, 0, gran 0, min 0, max 0x3f.
        let crs = host_bridge_crs(&main_resources(&c));
        assert!(contains(
            &crs,
            b"\x88\x0d\x00\x02\x0c\x00\x00\x00\x00\x00\x3f\x00"
        ));
    }

    /// WordBusNumber descriptor for `min..=max`.
    fn bus_range(min: u8, max: u8) -> Vec<u8> {
        vec![0x88, 0x0d, 0, 2, 0x0c, 0, 0, 0, min, 0, max, 0]
    }

    #[test]
    fn an_extra_bridge_is_a_pnp0a08_on_its_root_bus_with_its_node() {
        let c = with_extra_bridge();
        let d = build_dsdt(&c);
        // \_SB.PC04: _UID 4, _BBN 4, _PXM 1; \_SB.PCI0 keeps _PXM 0.
        assert!(contains(&d, b"PC04"));
        assert!(contains(&d, b"_UID\x0a\x04"));
        assert!(contains(&d, b"_BBN\x0a\x04"));
        assert!(contains(&d, b"\x08_PXM\x01"));
        assert!(contains(&d, b"\x08_PXM\x00"));
        let extra = host_bridge(
            "_SB_.PC04",
            Some(1),
            &BridgeResources {
                buses: (4, 5),
                cf8: false,
                io: c.pci_bridges[0].io.clone(),
                mmio: c.pci_bridges[0].mmio.clone(),
            },
        );
        assert!(contains(&d, &extra));
        assert!(contains(&extra, &bus_range(4, 5)));
        // No config ports: the IO port descriptor tag (0x47) with 0xcf8.
        assert!(!contains(&extra, b"\x47\x01\xf8\x0c"));
    }

    #[test]
    fn the_main_bridge_leaves_out_what_the_extra_bridges_claim() {
        let c = with_extra_bridge();
        let main = main_resources(&c);
        assert_eq!(main.buses, (0, 3));
        let r = |base, size| AddrRange { base, size };
        assert_eq!(main.io, [r(0x1000, 0x1000), r(0x3000, 0xd000)]);
        assert_eq!(
            main.mmio,
            [
                r(0xc000_0000, 0x10_0000),
                r(0xc020_0000, 0x1fe0_0000),
                r(1 << 32, (1 << 33) - (1 << 32)),
                r(
                    (1 << 33) + (1 << 30),
                    (1 << 34) + (1 << 32) - (1 << 33) - (1 << 30)
                ),
            ]
        );
        assert!(contains(&host_bridge_crs(&main), &bus_range(0, 3)));
    }

    #[test]
    fn without_extra_bridges_the_main_bridge_has_the_whole_windows() {
        let c = config(1);
        let main = main_resources(&c);
        assert_eq!(main.buses, (0, c.pci.bus_end));
        assert_eq!(main.io, [c.pci.io]);
        assert_eq!(main.mmio, [c.pci.mmio32, c.pci.mmio64]);
    }

    #[test]
    fn ged_notifies_the_power_button_from_evt() {
        let ged = generic_event_device();
        assert!(contains(&ged, b"\x0dACPI0013\x00"), "string _HID");
        // NotifyOp, the absolute path \_SB_.PWRB (RootChar DualNamePrefix), 0x80.
        assert!(contains(&ged, b"\x86\x5c\x2e_SB_PWRB\x0a\x80"));
        // Extended interrupt descriptor: consumer, edge, active high, one GSI.
        let gsi = GED_IRQ.to_le_bytes();
        assert!(contains(&ged, &[&[0x89, 6, 0, 0x03, 1][..], &gsi].concat()));
        let d = build_dsdt(&config(1));
        assert!(contains(&d, &ged));
        assert!(contains(&d, &power_button()));
    }

    #[test]
    fn com1_is_optional() {
        let mut c = config(1);
        assert!(contains(&build_dsdt(&c), b"COM1"));
        c.com1 = false;
        assert!(!contains(&build_dsdt(&c), b"COM1"));
    }
}
