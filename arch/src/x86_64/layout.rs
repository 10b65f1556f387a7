//! The x86_64 guest physical address map and legacy port map of the Strait platform
//! contract (project brief, "Platform contract"). Every address another crate relies on is a
//! documented constant here; the helpers derive the RAM regions and the 64-bit MMIO window
//! from the RAM size.
//!
//! Low-memory placement follows the Linux x86 boot protocol (Documentation/arch/x86/boot.rst):
//! the zero page, command line and page tables sit in conventional memory below the EBDA,
//! the protected-mode kernel at 1 MiB.

use vm_memory::GuestAddress;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// --- Boot structures in the first megabyte -------------------------------------------------

/// Boot GDT (4 entries: null, code64, data, TSS).
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT (an empty table; the kernel installs its own before enabling interrupts).
pub const IDT_START: GuestAddress = GuestAddress(0x520);
/// Linux zero page (`struct boot_params`); `rsi` points here at the 64-bit entry.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer (`rsp`/`rbp`), grows down below the page tables.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// PML4 of the boot identity map; this is the initial CR3.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// The single PDPT of the boot identity map.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// First of four page directories (2 MiB pages) covering 0..4 GiB, at 0xb000..0xf000.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line (NUL-terminated).
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Size of the command line area, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the Extended BIOS Data Area; 0x9fc00..0x100000 is reserved in the e820 map.
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// The MP table's floating pointer, its configuration table right behind it (see
/// `mptable`): the start of the EBDA, the second place Linux looks.
pub const MPTABLE_START: GuestAddress = EBDA_START;
/// Start of the ACPI table area (the RSDP is the first thing in it, so the guest's scan of
/// 0xe0000..0xfffff finds it on a 16-byte boundary).
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// Guest address of the RSDP.
pub const RSDP_START: GuestAddress = ACPI_START;
/// Exclusive end of the ACPI table area.
pub const ACPI_END: GuestAddress = GuestAddress(0x10_0000);
/// Where the kernel is loaded ("HIMEM"); also the end of the reserved legacy area.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Smallest guest RAM the layout supports: the kernel at 1 MiB needs room above it.
pub const MIN_RAM_SIZE: u64 = 16 * MIB;

// --- The 32-bit hole -------------------------------------------------------------------------

/// RAM below 4 GiB stops here; 3 GiB..4 GiB is the MMIO hole.
pub const MEM_32BIT_GAP_START: GuestAddress = GuestAddress(3 * GIB);
/// First address above the 32-bit space; RAM beyond 3 GiB continues here.
pub const FIRST_ADDR_PAST_32BITS: GuestAddress = GuestAddress(4 * GIB);
/// 32-bit PCI MMIO window for non-prefetchable and small BARs.
pub const MMIO32_START: GuestAddress = GuestAddress(0xc000_0000);
/// Size of the 32-bit PCI MMIO window (512 MiB).
pub const MMIO32_SIZE: u64 = 512 * MIB;
/// PCIe ECAM (MMCONFIG) base for segment 0.
pub const PCI_ECAM_START: GuestAddress = GuestAddress(0xe000_0000);
/// ECAM size: 256 buses * 32 devices * 8 functions * 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// ECAM bytes per bus.
pub const PCI_ECAM_BUS_SIZE: u64 = MIB;
/// IOAPIC MMIO base (KVM in-kernel IOAPIC).
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// Local APIC MMIO base (KVM in-kernel LAPIC).
pub const LAPIC_START: GuestAddress = GuestAddress(0xfee0_0000);
/// Value for `KVM_SET_TSS_ADDR` (three pages KVM uses for real-mode emulation on VMX).
pub const KVM_TSS_ADDRESS: GuestAddress = GuestAddress(0xfffb_d000);
/// Value for `KVM_SET_IDENTITY_MAP_ADDR` (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: GuestAddress = GuestAddress(0xfffb_c000);

/// Alignment of the start of the 64-bit PCI MMIO window.
pub const MMIO64_ALIGN: u64 = GIB;

// --- Interrupts ------------------------------------------------------------------------------

/// Pins of the in-kernel IOAPIC (GSIs 0..24).
pub const IOAPIC_NUM_PINS: u32 = 24;
/// First GSI used for PCI INTx (`_PRT`).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of GSIs INTx is spread over (16..24).
pub const PCI_INTX_GSI_COUNT: u32 = 8;
/// First GSI free for MSI routes.
pub const MSI_GSI_BASE: u32 = IOAPIC_NUM_PINS;

// --- I/O ports -------------------------------------------------------------------------------

/// COM1 16550 UART base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 ISA IRQ (= GSI, no override).
pub const COM1_IRQ: u32 = 4;
/// GSI of the ACPI Generic Event Device (`\_SB.GED_` in the DSDT): an edge on this
/// IOAPIC pin runs the GED's `_EVT`, which notifies the power button. A legacy ISA
/// number no emulated device uses (no override in the MADT, so IRQ 5 = GSI 5).
pub const GED_IRQ: u32 = 5;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port; writing [`I8042_RESET_CMD`] resets the machine.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// i8042 "pulse reset line" command.
pub const I8042_RESET_CMD: u8 = 0xfe;
/// PCI configuration mechanism #1 address port (32-bit).
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// PCI configuration mechanism #1 data port (0xcfc..0xcff).
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// ACPI hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG, 1 byte).
///
/// Moved from the brief's 0x3c0 to 0x600: 0x3c0..0x3df are VGA registers that a GPU driver
/// or vgaarb may touch in a passthrough guest (0x3c0 with 0x34 is a valid VGA attribute
/// write, 0x3c2 is VGA misc output). 0x600 is where QEMU's ICH9 puts its PM block.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI hardware-reduced sleep status register (FADT SLEEP_STATUS_REG, 1 byte).
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG, 1 byte): writing [`ACPI_RESET_VALUE`] resets.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP of the S5 (soft off) state in the DSDT `\_S5` package.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN bit of the sleep control register (ACPI 6.x, 4.8.3.7).
pub const ACPI_SLEEP_ENABLE: u8 = 1 << 5;
/// Byte the guest writes to [`ACPI_SLEEP_CONTROL_PORT`] to power off:
/// `(SLP_TYP=5) << 2 | SLP_EN`.
pub const ACPI_POWER_OFF_VALUE: u8 = (ACPI_S5_SLEEP_TYPE << 2) | ACPI_SLEEP_ENABLE;
/// Start of the PCI I/O BAR window (below are legacy ports).
pub const PCI_IO_START: u16 = 0x1000;
/// Size of the PCI I/O BAR window (0x1000..=0xffff).
pub const PCI_IO_SIZE: u64 = 0x1_0000 - PCI_IO_START as u64;

/// GSI the DSDT `_PRT` routes INTx `pin` (0 = INTA .. 3 = INTD) of device `slot` on bus 0 to:
/// the standard rotation `16 + (slot + pin) % 8`. Devices behind a root port reach bus 0
/// through the usual swizzle, which the PCI side applies before calling this.
pub const fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (slot as u32 + pin as u32) % PCI_INTX_GSI_COUNT
}

/// Guest RAM regions for `size` bytes: `[0, min(size, 3 GiB))` and, if larger,
/// `[4 GiB, 4 GiB + size - 3 GiB)`. Empty for size 0.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    let gap = MEM_32BIT_GAP_START.0;
    let mut regions = Vec::with_capacity(2);
    let low = size.min(gap);
    if low > 0 {
        regions.push((GuestAddress(0), low));
    }
    if size > gap {
        regions.push((FIRST_ADDR_PAST_32BITS, size - gap));
    }
    regions
}

/// Bytes of RAM below the 32-bit hole.
pub fn ram_below_4g(size: u64) -> u64 {
    size.min(MEM_32BIT_GAP_START.0)
}

/// Exclusive end of the highest RAM region (0 for size 0).
pub fn ram_end(size: u64) -> GuestAddress {
    ram_regions(size)
        .last()
        .map_or(GuestAddress(0), |(start, len)| GuestAddress(start.0 + len))
}

/// Start of the 64-bit PCI MMIO window: `max(4 GiB, end of RAM)` rounded up to 1 GiB.
pub fn mmio64_start(ram_size: u64) -> GuestAddress {
    let end = ram_end(ram_size).0.max(FIRST_ADDR_PAST_32BITS.0);
    GuestAddress(end.div_ceil(MMIO64_ALIGN) * MMIO64_ALIGN)
}

/// The PCI windows of this layout, handed to `resources`' topology plan, for a guest
/// of `ram_size` bytes with `phys_bits` physical address bits whose passed-through
/// devices' IOMMU accepts the inclusive `iova` ranges (empty: unrestricted).
pub fn pci_platform(ram_size: u64, phys_bits: u8, iova: Vec<(u64, u64)>) -> resources::PciPlatform {
    resources::PciPlatform {
        io: (u64::from(PCI_IO_START), PCI_IO_SIZE),
        mmio32: (MMIO32_START.0, MMIO32_SIZE),
        mmio64: resources::Mmio64Floor {
            start: mmio64_start(ram_size).0,
            align: MMIO64_ALIGN,
        },
        phys_bits,
        iova,
    }
}

/// Exclusive upper bound of guest physical addresses for `phys_bits` address bits.
pub fn phys_addr_limit(phys_bits: u8) -> u64 {
    1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX)
}

// The fixed layout's invariants, checked at compile time.
const _: () = {
    // Boot structures don't overlap each other or the EBDA.
    assert!(ZERO_PAGE_START.0 + 0x1000 <= BOOT_STACK_POINTER.0);
    assert!(BOOT_STACK_POINTER.0 < PML4_START.0);
    assert!(PDE_START.0 + 4 * 0x1000 <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
    assert!(ACPI_START.0 >= EBDA_START.0 && ACPI_END.0 == HIMEM_START.0);
    // The 32-bit hole holds the MMIO window, ECAM, APICs and KVM's pages in order.
    assert!(MMIO32_START.0 == MEM_32BIT_GAP_START.0);
    assert!(MMIO32_START.0 + MMIO32_SIZE == PCI_ECAM_START.0);
    assert!(PCI_ECAM_START.0 + PCI_ECAM_SIZE <= IOAPIC_START.0);
    assert!(KVM_IDENTITY_MAP_ADDRESS.0 + 0x1000 <= KVM_TSS_ADDRESS.0);
    assert!(KVM_TSS_ADDRESS.0 + 3 * 0x1000 <= FIRST_ADDR_PAST_32BITS.0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        assert_eq!(ram_regions(512 * MIB), vec![(GuestAddress(0), 512 * MIB)]);
    }

    #[test]
    fn ram_of_exactly_3g_has_no_high_region() {
        assert_eq!(ram_regions(3 * GIB), vec![(GuestAddress(0), 3 * GIB)]);
    }

    #[test]
    fn ram_of_4g_is_split_around_the_hole() {
        assert_eq!(
            ram_regions(4 * GIB),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), GIB)]
        );
    }

    #[test]
    fn ram_of_zero_has_no_region() {
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn ram_end_skips_the_hole() {
        assert_eq!(ram_end(2 * GIB), GuestAddress(2 * GIB));
        assert_eq!(ram_end(6 * GIB), GuestAddress(7 * GIB));
    }

    #[test]
    fn ram_below_4g_is_capped_at_3g() {
        assert_eq!(ram_below_4g(GIB), GIB);
        assert_eq!(ram_below_4g(8 * GIB), 3 * GIB);
    }

    #[test]
    fn mmio64_starts_at_4g_for_small_ram() {
        assert_eq!(mmio64_start(GIB), GuestAddress(4 * GIB));
    }

    #[test]
    fn mmio64_starts_after_ram_aligned_to_1g() {
        // 5.5 GiB of RAM ends at 6.5 GiB; the window starts at 7 GiB.
        assert_eq!(mmio64_start(5 * GIB + 512 * MIB), GuestAddress(7 * GIB));
        assert_eq!(mmio64_start(5 * GIB), GuestAddress(6 * GIB));
    }

    #[test]
    fn power_off_value_is_s5_with_slp_en() {
        assert_eq!(ACPI_POWER_OFF_VALUE, 0x34);
    }

    #[test]
    fn intx_rotates_over_gsis_16_to_23() {
        assert_eq!(pci_intx_gsi(0, 0), 16);
        assert_eq!(pci_intx_gsi(1, 3), 20);
        assert_eq!(pci_intx_gsi(7, 1), 16);
        assert_eq!(pci_intx_gsi(31, 3), 18);
    }

    #[test]
    fn phys_addr_limit_handles_wide_and_narrow() {
        assert_eq!(phys_addr_limit(39), 1 << 39);
        assert_eq!(phys_addr_limit(64), u64::MAX);
    }

    #[test]
    fn kib_constant_is_used_for_ebda() {
        assert_eq!(EBDA_START.0, 639 * 1024);
    }
}
