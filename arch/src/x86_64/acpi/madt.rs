//! The MADT (ACPI 6.5 5.2.12: one Processor Local APIC per vCPU, the IOAPIC, the ISA IRQ0 ->
//! GSI 2 interrupt source override of the PC/AT wiring, and LINT1 as NMI) and the MCFG
//! (PCI Firmware spec 3.3 4.1.2: one ECAM allocation for segment 0).
//!
//! The MADT is assembled from raw structures because `acpi_tables::madt` has no interrupt
//! source override or local APIC NMI structure.

use acpi_tables::mcfg::MCFG;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{AcpiConfig, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::x86_64::layout::{IOAPIC_START, LAPIC_START};

const MADT_REVISION: u8 = 5;
/// MADT flags: PCAT_COMPAT, a dual 8259 is present (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the first interrupt controller structure.
pub(super) const MADT_STRUCTURES_OFFSET: usize = 44;

const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IOAPIC: u8 = 1;
const TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_ENABLED: u32 = 1;
/// IOAPIC ID: KVM's in-kernel IOAPIC resets its ID register to 0 (the MP table says the
/// same).
pub(crate) const IOAPIC_ID: u8 = 0;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// ISA IRQ0 (PIT) is wired to IOAPIC pin 2 on a PC; flags 0 = bus-conforming polarity and
/// trigger (edge, active high for ISA).
const IRQ0_OVERRIDE: (u8, u32) = (0, 2);

fn local_apic(uid_and_id: u8) -> Vec<u8> {
    let mut s = vec![TYPE_LOCAL_APIC, 8, uid_and_id, uid_and_id];
    s.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    s
}

fn ioapic() -> Vec<u8> {
    let mut s = vec![TYPE_IOAPIC, 12, IOAPIC_ID, 0];
    // The IOAPIC base is a 32-bit MMIO address by definition.
    s.extend_from_slice(&(IOAPIC_START.0 as u32).to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    s
}

fn interrupt_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut s = vec![TYPE_INTERRUPT_OVERRIDE, 10, 0 /* ISA bus */, source];
    s.extend_from_slice(&gsi.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn local_apic_nmi() -> Vec<u8> {
    let mut s = vec![TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS];
    s.extend_from_slice(&0u16.to_le_bytes()); // conforming polarity/trigger
    s.push(1); // LINT1
    s
}

/// The MADT for `cfg.vcpus` vCPUs with APIC IDs and processor UIDs 0..vcpus (validated to
/// be at most 255).
pub(super) fn build_madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_STRUCTURES_OFFSET as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // The LAPIC base is a 32-bit MMIO address by definition.
    madt.write_u32(36, LAPIC_START.0 as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cfg.vcpus {
        // Validated: vcpus <= 255, so ids fit in a byte.
        madt.append_slice(&local_apic(id as u8));
    }
    madt.append_slice(&ioapic());
    madt.append_slice(&interrupt_override(IRQ0_OVERRIDE.0, IRQ0_OVERRIDE.1, 0));
    madt.append_slice(&local_apic_nmi());
    madt.as_slice().to_vec()
}

/// The MCFG with one ECAM allocation: segment 0, buses 0..=`bus_end` at `ecam_base`.
pub(super) fn build_mcfg(cfg: &AcpiConfig) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(cfg.pci.ecam_base, 0, 0, cfg.pci.bus_end);
    let mut bytes = Vec::new();
    mcfg.to_aml_bytes(&mut bytes);
    bytes
}

/// Iterates over the (type, bytes) of the MADT's interrupt controller structures.
#[cfg(test)]
pub(super) fn madt_structures(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut off = MADT_STRUCTURES_OFFSET;
    while off + 2 <= madt.len() {
        let len = usize::from(madt[off + 1]);
        out.push((madt[off], &madt[off..off + len]));
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::acpi::tests::{checksum, config};

    #[test]
    fn madt_checksum_is_zero() {
        assert_eq!(checksum(&build_madt(&config(4))), 0);
    }

    #[test]
    fn madt_has_vcpus_plus_ioapic_override_and_nmi() {
        let m = build_madt(&config(4));
        assert_eq!(madt_structures(&m).len(), 4 + 1 + 1 + 1);
    }

    #[test]
    fn madt_header_points_at_the_lapic() {
        let m = build_madt(&config(1));
        assert_eq!(&m[0..4], b"APIC");
        assert_eq!(m[36..40], 0xfee0_0000u32.to_le_bytes());
        assert_eq!(m[40..44], 1u32.to_le_bytes());
    }

    #[test]
    fn local_apics_are_enabled_with_ids_in_order() {
        let m = build_madt(&config(3));
        let lapics: Vec<&[u8]> = madt_structures(&m)
            .into_iter()
            .filter(|(t, _)| *t == TYPE_LOCAL_APIC)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(lapics.len(), 3);
        for (i, s) in lapics.iter().enumerate() {
            assert_eq!(s, &[0, 8, i as u8, i as u8, 1, 0, 0, 0]);
        }
    }

    #[test]
    fn ioapic_sits_at_fec00000_with_gsi_base_0() {
        let m = build_madt(&config(1));
        let s = madt_structures(&m)
            .into_iter()
            .find(|(t, _)| *t == TYPE_IOAPIC)
            .map(|(_, s)| s.to_vec());
        assert_eq!(s, Some(vec![1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]));
    }

    #[test]
    fn irq0_is_overridden_to_gsi2() {
        let m = build_madt(&config(1));
        let s = madt_structures(&m)
            .into_iter()
            .find(|(t, _)| *t == TYPE_INTERRUPT_OVERRIDE)
            .map(|(_, s)| s.to_vec());
        assert_eq!(s, Some(vec![2, 10, 0, 0, 2, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn mcfg_describes_segment_0_ecam() {
        let m = build_mcfg(&config(1));
        assert_eq!((&m[0..4], m.len()), (&b"MCFG"[..], 60));
        assert_eq!(m[44..52], 0xe000_0000u64.to_le_bytes());
        assert_eq!((m[52], m[53], m[54], m[55]), (0, 0, 0, 0xff));
        assert_eq!(checksum(&m), 0);
    }
}
