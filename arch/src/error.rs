//! Errors of the `arch` crate: each variant names the boot step that failed and carries the
//! addresses or sizes a user needs to fix the VM spec.

use vm_memory::GuestMemoryError;

/// Result alias for the `arch` crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Failures while laying out or writing the x86_64 boot state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM spec asks for less RAM than the fixed boot layout needs.
    #[error("guest RAM size {size:#x} is below the minimum {min:#x}")]
    RamTooSmall {
        /// Requested RAM size in bytes.
        size: u64,
        /// Smallest RAM size the boot layout fits in.
        min: u64,
    },
    /// Writing a boot structure into guest memory failed (region missing or too short).
    #[error("failed to write {what} at guest address {addr:#x}")]
    WriteGuest {
        /// Which structure was being written ("GDT", "zero page", "MADT", ...).
        what: &'static str,
        /// Guest physical address of the write.
        addr: u64,
        /// Cause reported by vm-memory.
        #[source]
        source: GuestMemoryError,
    },
    /// The e820 map has more entries than the zero page can hold.
    #[error("e820 map has {count} entries, the zero page holds at most {max}")]
    TooManyE820Entries {
        /// Entries produced.
        count: usize,
        /// Capacity of `boot_params.e820_table`.
        max: usize,
    },
    /// The kernel command line does not fit its reserved area.
    #[error("kernel command line is {len} bytes (with NUL), the limit is {max}")]
    CmdlineTooLong {
        /// Length including the terminating NUL.
        len: usize,
        /// Size of the command line area.
        max: usize,
    },
    /// No page-aligned spot in low RAM fits the initramfs above the kernel and below the
    /// kernel's `initrd_addr_max`.
    #[error(
        "initramfs of {size:#x} bytes does not fit between kernel end {lowest:#x} and {highest:#x}"
    )]
    PlaceInitramfs {
        /// Initramfs size in bytes.
        size: u64,
        /// Lowest usable address (end of the loaded kernel).
        lowest: u64,
        /// Exclusive upper bound (min of low RAM end and `initrd_addr_max + 1`).
        highest: u64,
    },
    /// A bzImage whose header lacks XLF_KERNEL_64, so it has no 64-bit entry point.
    #[error(
        "bzImage has no 64-bit entry point (xloadflags {xloadflags:#x}, protocol {version:#x})"
    )]
    KernelNot64Bit {
        /// `xloadflags` from the setup header.
        xloadflags: u16,
        /// Boot protocol version from the setup header.
        version: u16,
    },
    /// The vCPU count is zero or above what xAPIC IDs in the MADT can express.
    #[error("vCPU count {count} is outside 1..={max}")]
    VcpuCount {
        /// Requested vCPU count.
        count: u32,
        /// Largest supported count.
        max: u32,
    },
    /// A vCPU index is not below the vCPU count.
    #[error("vCPU index {index} is not below the vCPU count {count}")]
    VcpuIndex {
        /// Index passed in.
        index: u32,
        /// vCPU count passed in.
        count: u32,
    },
    /// The CPUID table has no room for an entry the topology needs.
    #[error("CPUID table is full, cannot add leaf {leaf:#x} subleaf {subleaf}")]
    CpuidFull {
        /// Leaf that could not be added.
        leaf: u32,
        /// Subleaf that could not be added.
        subleaf: u32,
    },
    /// The ACPI tables do not fit their area below 1 MiB.
    #[error("ACPI tables end at {end:#x}, past the limit {limit:#x}")]
    AcpiTablesTooLarge {
        /// Exclusive end the tables would need.
        end: u64,
        /// Exclusive end of the ACPI area.
        limit: u64,
    },
    /// A PCI window given for the DSDT/MCFG is empty or inconsistent.
    #[error("invalid PCI {what} window {base:#x}+{size:#x}")]
    PciWindow {
        /// Which window ("I/O", "32-bit MMIO", "64-bit MMIO", "ECAM").
        what: &'static str,
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
}
