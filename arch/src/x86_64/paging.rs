//! Identity page tables for the 64-bit boot protocol (Intel SDM Vol. 3A 4.5 "4-Level
//! Paging"): one PML4 entry -> one PDPT whose first four entries point at page directories
//! of 2 MiB pages, mapping guest physical 0..4 GiB 1:1. This covers the kernel, the zero
//! page and an initramfs anywhere below 4 GiB; Linux's startup_64 builds its own tables.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::gdt::write_bytes;
use super::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::Result;

/// Present bit of a paging-structure entry.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Read/write bit.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-size bit: a PDE with it maps a 2 MiB page.
pub const PTE_HUGE: u64 = 1 << 7;
/// Number of page directories (each maps 1 GiB).
pub const PDE_TABLES: u64 = 4;

const PAGE_SIZE: u64 = 0x1000;
const ENTRIES_PER_TABLE: u64 = 512;
const HUGE_PAGE_SIZE: u64 = 2 << 20;

fn table_bytes(entries: impl Iterator<Item = u64>) -> Vec<u8> {
    entries.flat_map(u64::to_le_bytes).collect()
}

/// Writes the PML4 at [`PML4_START`], the PDPT at [`PDPTE_START`] and four page directories
/// from [`PDE_START`]; returns the CR3 value (the PML4 address).
pub fn write_identity_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64> {
    let flags = PTE_PRESENT | PTE_WRITABLE;
    // Full 4 KiB tables, so stale bytes in guest memory can't leave stray entries.
    let pml4 =
        table_bytes(std::iter::once(PDPTE_START.0 | flags).chain(std::iter::repeat_n(0, 511)));
    let pdpt = table_bytes((0..ENTRIES_PER_TABLE).map(|i| {
        if i < PDE_TABLES {
            (PDE_START.0 + i * PAGE_SIZE) | flags
        } else {
            0
        }
    }));
    let pdes = table_bytes(
        (0..PDE_TABLES * ENTRIES_PER_TABLE).map(|i| (i * HUGE_PAGE_SIZE) | flags | PTE_HUGE),
    );
    write_bytes(mem, "PML4", PML4_START, &pml4)?;
    write_bytes(mem, "PDPT", PDPTE_START, &pdpt)?;
    write_bytes(mem, "page directories", PDE_START, &pdes)?;
    Ok(PML4_START.0)
}

/// Address of the page-directory entry that maps guest physical `addr` (below 4 GiB).
pub fn pde_address(addr: u64) -> GuestAddress {
    GuestAddress(PDE_START.0 + (addr / HUGE_PAGE_SIZE) * 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use vm_memory::{Address, Bytes, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn entry(mem: &GuestMemoryMmap, addr: GuestAddress) -> u64 {
        mem.read_obj(addr).unwrap()
    }

    #[test]
    fn cr3_is_the_pml4() {
        assert_eq!(write_identity_page_tables(&mem()).unwrap(), 0x9000);
    }

    #[test]
    fn pml4_points_at_the_pdpt() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        assert_eq!(entry(&m, PML4_START), 0xa003);
        assert_eq!(entry(&m, PML4_START.unchecked_add(8)), 0);
    }

    #[test]
    fn pdpt_points_at_four_page_directories() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        for i in 0..4 {
            assert_eq!(
                entry(&m, PDPTE_START.unchecked_add(i * 8)),
                0xb003 + i * 0x1000
            );
        }
        assert_eq!(entry(&m, PDPTE_START.unchecked_add(32)), 0);
    }

    #[test]
    fn page_directories_map_2m_pages_identically() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        assert_eq!(entry(&m, pde_address(0)), 0x83);
        assert_eq!(entry(&m, pde_address(0x20_0000)), 0x20_0083);
        assert_eq!(entry(&m, pde_address(0xffe0_0000)), 0xffe0_0083);
    }

    #[test]
    fn last_page_directory_entry_ends_at_4g() {
        assert_eq!(
            pde_address(0xffe0_0000),
            GuestAddress(0xb000 + 4 * 0x1000 - 8)
        );
    }

    #[test]
    fn missing_memory_is_a_write_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = write_identity_page_tables(&m).unwrap_err();
        assert!(matches!(err, Error::WriteGuest { what: "PML4", .. }));
    }
}
