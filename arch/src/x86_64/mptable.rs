//! The MP table (Intel MultiProcessor Specification 1.4, chapter 4): a floating pointer
//! structure at [`layout::MPTABLE_START`] (the start of the EBDA) and right after it a
//! configuration table with one processor entry per vCPU, the ISA bus, the IOAPIC, the ISA
//! interrupts as the MADT wires them (IRQ0 on pin 2) and LINT0/LINT1.
//!
//! Linux uses the ACPI MADT whenever it is there (it is, always) and ignores this table
//! then, so the table exists for its *position*: before Linux reads the MADT it looks for
//! a floating pointer in the first KiB of RAM, the last KiB below 640 KiB, then the
//! 64 KiB BIOS area at 0xf0000 (`default_find_smp_config`), mapping and unmapping the rest
//! of the area once per 16-byte step (`smp_scan_config`). Without a table it walks all of
//! them; on the nested testbed that walk, each step flushing TLB entries, cost the guest
//! about 0.2 s before its ACPI tables were found (0.25 s to "Using GB pages", against
//! 0.03 s under QEMU, whose SeaBIOS table sits at 0xf5ba0). At 0x9fc00 it is found on the
//! first step of the second area. With `acpi=off` the table is used as it stands: the
//! vCPUs and the IOAPIC are described as the MADT describes them.

use vm_memory::GuestMemoryBackend;

use super::acpi::IOAPIC_ID;
use super::gdt::write_bytes;
use super::layout::{IOAPIC_START, LAPIC_START, MPTABLE_START};
use crate::{Error, Result};

/// Largest vCPU count the table describes (xAPIC IDs 0..=254, as the MADT).
pub const MAX_VCPUS: u32 = 255;
/// Bytes of the floating pointer structure.
const FLOATING_LEN: usize = 16;
/// Bytes of the configuration table header.
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SHORT_ENTRY_LEN: usize = 8;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Processor flags: enabled; bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Local APIC version of an integrated (xAPIC) local APIC, as KVM reports it.
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature and feature flags (FPU, APIC) of a family 6 part: only informative,
/// Linux reads the real ones from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// ISA IRQs 0..16; IRQ 2 is the PIC cascade and has no IOAPIC pin of its own.
const ISA_IRQS: u8 = 16;
const ISA_CASCADE: u8 = 2;
/// Bus ID of the only bus described, ISA.
const ISA_BUS: u8 = 0;
/// Destination "all local APICs" of a local interrupt entry.
const ALL_LAPICS: u8 = 0xff;

/// The IOAPIC pin ISA `irq` arrives on: IRQ0 (PIT) on pin 2, as the MADT's interrupt
/// source override says; the others on their own number.
fn isa_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

fn processor(apic_id: u8) -> Vec<u8> {
    let flags = CPU_ENABLED | if apic_id == 0 { CPU_BOOTSTRAP } else { 0 };
    let mut e = vec![ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, flags];
    e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
    e.extend_from_slice(&[0; 8]);
    e
}

fn interrupt(entry: u8, kind: u8, source_irq: u8, dest: u8, dest_pin: u8) -> Vec<u8> {
    // Flags 0: polarity and trigger conform to the bus (ISA: edge, active high).
    vec![entry, kind, 0, 0, ISA_BUS, source_irq, dest, dest_pin]
}

/// The configuration table's entries, in the order the spec asks for (processors, buses,
/// I/O APICs, I/O interrupts, local interrupts).
fn entries(vcpus: u32) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..vcpus).map(|id| processor(id as u8)).collect();
    v.push([vec![ENTRY_BUS, ISA_BUS], b"ISA   ".to_vec()].concat());
    let mut ioapic = vec![ENTRY_IOAPIC, IOAPIC_ID, IOAPIC_VERSION, 1];
    // The IOAPIC base is a 32-bit MMIO address by definition.
    ioapic.extend_from_slice(&(IOAPIC_START.0 as u32).to_le_bytes());
    v.push(ioapic);
    v.push(interrupt(
        ENTRY_IO_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        IOAPIC_ID,
        0,
    ));
    for irq in (0..ISA_IRQS).filter(|i| *i != ISA_CASCADE) {
        v.push(interrupt(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            IOAPIC_ID,
            isa_pin(irq),
        ));
    }
    v.push(interrupt(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LAPICS,
        0,
    ));
    v.push(interrupt(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LAPICS,
        1,
    ));
    v
}

/// Bytes of the floating pointer and configuration table for `vcpus` vCPUs.
pub fn mptable_len(vcpus: u32) -> usize {
    let shorts = 1 + 1 + 1 + usize::from(ISA_IRQS - 1) + 2;
    FLOATING_LEN + HEADER_LEN + vcpus as usize * PROCESSOR_LEN + shorts * SHORT_ENTRY_LEN
}

/// The floating pointer (at `base`) followed by the configuration table.
/// Errors with `VcpuCount` outside 1..=[`MAX_VCPUS`].
pub fn mptable_bytes(base: u64, vcpus: u32) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount {
            count: vcpus,
            max: MAX_VCPUS,
        });
    }
    let entries = entries(vcpus);
    let body: Vec<u8> = entries.concat();
    let mut table = b"PCMP".to_vec();
    table.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum below
    table.extend_from_slice(b"STRAIT  ");
    table.extend_from_slice(b"STRAITVM    ");
    table.extend_from_slice(&[0; 6]); // OEM table pointer and size
    table.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    table.extend_from_slice(&(LAPIC_START.0 as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    // The configuration table follows the floating pointer; both sit below 1 MiB.
    let table_addr = (base + FLOATING_LEN as u64) as u32;
    let mut floating = b"_MP_".to_vec();
    floating.extend_from_slice(&table_addr.to_le_bytes());
    // Length in 16-byte units, revision, checksum (below), feature bytes 1-5 all 0:
    // a configuration table is present, no IMCR.
    floating.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);
    Ok([floating, table].concat())
}

/// Writes the MP table for `vcpus` vCPUs at [`MPTABLE_START`].
pub fn write_mptable<M: GuestMemoryBackend>(mem: &M, vcpus: u32) -> Result<()> {
    let bytes = mptable_bytes(MPTABLE_START.0, vcpus)?;
    write_bytes(mem, "MP table", MPTABLE_START, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::acpi::tests::checksum as sum;

    fn table(vcpus: u32) -> Vec<u8> {
        mptable_bytes(MPTABLE_START.0, vcpus).unwrap()
    }

    #[test]
    fn floating_pointer_is_valid_and_points_right_behind_itself() {
        let t = table(2);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        assert_eq!((t[8], t[9], t[11]), (1, 4, 0));
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), MPTABLE_START.0 + 16);
    }

    #[test]
    fn configuration_table_checksums_to_zero_and_states_its_length() {
        let t = table(3);
        let len = usize::from(u16::from_le_bytes([t[20], t[21]]));
        assert_eq!(&t[16..20], b"PCMP");
        assert_eq!(16 + len, t.len());
        assert_eq!(t.len(), mptable_len(3));
        assert_eq!(sum(&t[16..]), 0);
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_the_first_as_bootstrap() {
        let t = table(3);
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 3 + 1 + 1 + 16 + 2);
        let cpus: Vec<(u8, u8)> = (0..3)
            .map(|i| (t[60 + i * 20 + 1], t[60 + i * 20 + 3]))
            .collect();
        assert_eq!(cpus, [(0, 3), (1, 1), (2, 1)]);
    }

    #[test]
    fn isa_irq0_arrives_on_pin_2_as_in_the_madt_and_irq2_is_not_routed() {
        let t = table(1);
        let io: Vec<(u8, u8, u8)> = t[60 + 20..]
            .chunks(8)
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .map(|e| (e[1], e[5], e[7]))
            .collect();
        assert!(io.contains(&(INT_TYPE_INT, 0, 2)));
        assert!(io.contains(&(INT_TYPE_INT, 4, 4)));
        assert!(!io
            .iter()
            .any(|(kind, irq, _)| *kind == INT_TYPE_INT && *irq == 2));
        let ioapic = t[60 + 20..]
            .chunks(8)
            .find(|e| e[0] == ENTRY_IOAPIC)
            .unwrap();
        assert_eq!(&ioapic[4..8], &0xfec0_0000u32.to_le_bytes());
        assert_eq!(ioapic[1], IOAPIC_ID);
    }

    #[test]
    fn the_largest_table_ends_before_the_acpi_area() {
        let end = MPTABLE_START.0 + mptable_len(MAX_VCPUS) as u64;
        assert!(end <= crate::x86_64::layout::ACPI_START.0);
    }

    #[test]
    fn vcpu_counts_outside_the_xapic_range_are_refused() {
        assert!(matches!(
            mptable_bytes(0, 0),
            Err(Error::VcpuCount { count: 0, .. })
        ));
        assert!(mptable_bytes(0, 256).is_err());
    }
}
