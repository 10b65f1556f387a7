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
/// Devices per PCI bus (each gets a `_PRT` entry per pin).
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

/// The host bridge `_CRS`: bus range, the 0xcf8 config ports, the I/O window and the
/// 32-bit and (if sized) 64-bit MMIO windows. Both MMIO windows are non-prefetchable so
/// Linux may place any BAR kind in either.
fn host_bridge_crs(cfg: &AcpiConfig) -> Vec<u8> {
    let pci = &cfg.pci;
    let buses = AddressSpace::<u16>::new_bus_number(0, u16::from(pci.bus_end));
    let cf8 = IO::new(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, 8);
    // Validated to lie below 0x10000 and 4 GiB.
    let io = AddressSpace::<u16>::new_io(pci.io.base as u16, last(pci.io) as u16, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32.base as u32,
        last(pci.mmio32) as u32,
        None,
    );
    let mmio64 = (pci.mmio64.size > 0).then(|| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            pci.mmio64.base,
            last(pci.mmio64),
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&buses, &cf8, &io, &mmio32];
    if let Some(mmio64) = &mmio64 {
        resources.push(mmio64);
    }
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

/// `_PRT` for bus 0: INTx `pin` of device `slot` -> GSI [`pci_intx_gsi`]`(slot, pin)`, as
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

/// `\_SB.PCI0`: the PCIe host bridge of segment 0, bus 0.
fn host_bridge(cfg: &AcpiConfig) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let zero = 0u8;
    let uid = Name::new("_UID".into(), &zero);
    let seg = Name::new("_SEG".into(), &zero);
    let bbn = Name::new("_BBN".into(), &zero);
    let crs = host_bridge_crs(cfg);
    let osc = host_bridge_osc();
    let prt = host_bridge_prt();
    let mut pxm = Vec::new();
    if let Some(node) = cfg.pci_pxm {
        Name::new("_PXM".into(), &node).to_aml_bytes(&mut pxm);
    }
    let raw = [crs, osc, prt, pxm].concat();
    let raw = RawAml(&raw);
    let mut bytes = Vec::new();
    Device::new("_SB_.PCI0".into(), vec![&hid, &cid, &uid, &seg, &bbn, &raw])
        .to_aml_bytes(&mut bytes);
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
    dsdt.append_slice(&host_bridge(cfg));
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
    use crate::x86_64::acpi::tests::{checksum, config};

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
        let with = host_bridge_crs(&c);
        // QWord address space descriptor tag.
        assert!(with.contains(&0x8a));
        c.pci.mmio64.size = 0;
        assert!(!host_bridge_crs(&c).contains(&0x8a));
    }

    #[test]
    fn crs_carries_the_bus_range() {
        let mut c = config(1);
        c.pci.bus_end = 0x3f;
        // WordBusNumber: tag 0x88, len 13, type 2, flags 0x0c, 0, gran 0, min 0, max 0x3f.
        let crs = host_bridge_crs(&c);
        assert!(contains(
            &crs,
            b"\x88\x0d\x00\x02\x0c\x00\x00\x00\x00\x00\x3f\x00"
        ));
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
