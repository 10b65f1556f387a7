//! The e820 memory map handed to Linux in the zero page (ACPI 6.5 ch. 15 "System Address
//! Map Interfaces"; Linux boot protocol `boot_params.e820_table`): RAM from
//! [`layout::ram_regions`](super::layout::ram_regions) minus the EBDA/BIOS area, plus the
//! ECAM window marked reserved, which Linux requires before it uses MMCONFIG
//! (arch/x86/pci/mmconfig-shared.c, `is_mmconf_reserved`).

use linux_loader::loader::bootparam::boot_e820_entry;

use super::layout::{
    ram_below_4g, ram_regions, EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, MIN_RAM_SIZE,
    PCI_ECAM_SIZE, PCI_ECAM_START,
};
use crate::{Error, Result};

/// Type of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM (E820_TYPE_RAM).
    Ram = 1,
    /// Reserved, not for OS use (E820_TYPE_RESERVED).
    Reserved = 2,
}

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Range type.
    pub kind: E820Kind,
}

impl E820Entry {
    fn new(addr: u64, end: u64, kind: E820Kind) -> Self {
        E820Entry {
            addr,
            size: end - addr,
            kind,
        }
    }

    /// Exclusive end of the range.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

impl From<E820Entry> for boot_e820_entry {
    fn from(e: E820Entry) -> Self {
        boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        }
    }
}

/// e820 map for `ram_size` bytes of guest RAM, sorted by address: RAM 0..0x9fc00,
/// reserved 0x9fc00..0x100000 (EBDA, VGA hole, BIOS/ACPI area), RAM 1 MiB..low end,
/// reserved ECAM, RAM above 4 GiB. Errors with `RamTooSmall` below [`MIN_RAM_SIZE`].
pub fn e820_table(ram_size: u64) -> Result<Vec<E820Entry>> {
    if ram_size < MIN_RAM_SIZE {
        return Err(Error::RamTooSmall {
            size: ram_size,
            min: MIN_RAM_SIZE,
        });
    }
    let low_end = ram_below_4g(ram_size);
    let mut table = vec![
        E820Entry::new(0, EBDA_START.0, E820Kind::Ram),
        E820Entry::new(EBDA_START.0, HIMEM_START.0, E820Kind::Reserved),
        E820Entry::new(HIMEM_START.0, low_end, E820Kind::Ram),
        E820Entry::new(
            PCI_ECAM_START.0,
            PCI_ECAM_START.0 + PCI_ECAM_SIZE,
            E820Kind::Reserved,
        ),
    ];
    table.extend(
        ram_regions(ram_size)
            .into_iter()
            .filter(|(start, _)| *start >= FIRST_ADDR_PAST_32BITS)
            .map(|(start, len)| E820Entry::new(start.0, start.0 + len, E820Kind::Ram)),
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(table: &[E820Entry]) -> Vec<(u64, u64)> {
        table
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| (e.addr, e.end()))
            .collect()
    }

    #[test]
    fn small_ram_skips_the_bios_area() {
        let t = e820_table(512 * MIB).unwrap();
        assert_eq!(ram(&t), vec![(0, 0x9fc00), (0x10_0000, 512 * MIB)]);
    }

    #[test]
    fn bios_area_is_reserved() {
        let t = e820_table(512 * MIB).unwrap();
        assert_eq!(t[1], E820Entry::new(0x9fc00, 0x10_0000, E820Kind::Reserved));
    }

    #[test]
    fn ecam_is_reserved() {
        let t = e820_table(512 * MIB).unwrap();
        let ecam = E820Entry::new(0xe000_0000, 0xf000_0000, E820Kind::Reserved);
        assert!(t.contains(&ecam));
    }

    #[test]
    fn large_ram_continues_above_4g() {
        let t = e820_table(6 * GIB).unwrap();
        assert_eq!(
            ram(&t),
            vec![(0, 0x9fc00), (0x10_0000, 3 * GIB), (4 * GIB, 7 * GIB)]
        );
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        let t = e820_table(6 * GIB).unwrap();
        assert!(t.windows(2).all(|w| w[0].end() <= w[1].addr));
    }

    #[test]
    fn tiny_ram_is_rejected() {
        let err = e820_table(MIB).unwrap_err();
        assert!(matches!(err, Error::RamTooSmall { size: MIB, .. }));
    }

    #[test]
    fn converts_to_boot_params_format() {
        let e: boot_e820_entry = E820Entry::new(0x1000, 0x3000, E820Kind::Reserved).into();
        let (addr, size, kind) = (e.addr, e.size, e.r#type);
        assert_eq!((addr, size, kind), (0x1000, 0x2000, 2));
    }
}
