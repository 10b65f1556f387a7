//! x86_64 boot recipe pieces for a Linux guest entered directly in 64-bit mode
//! (Linux x86 boot protocol, Documentation/arch/x86/boot.rst, "64-bit boot protocol").
//!
//! How the `vmm` crate uses this module, in order:
//! 1. Per VM, before creating vCPUs: `KVM_SET_TSS_ADDR` = [`layout::KVM_TSS_ADDRESS`],
//!    `KVM_SET_IDENTITY_MAP_ADDR` = [`layout::KVM_IDENTITY_MAP_ADDRESS`], create the
//!    in-kernel irqchip and PIT; memory slots from [`layout::ram_regions`].
//! 2. Load the kernel at [`layout::HIMEM_START`] (linux-loader), the command line at
//!    [`layout::CMDLINE_START`], the initramfs at [`initramfs_addr`].
//! 3. [`write_boot_tables`] (GDT/IDT + identity page tables, returns CR3),
//!    [`acpi::create_acpi_tables`] (returns the RSDP address), [`mptable::write_mptable`],
//!    [`e820::e820_table`],
//!    [`boot_params::build_boot_params`] + [`boot_params::write_boot_params`].
//! 4. Once: `KVM_GET_SUPPORTED_CPUID` -> [`cpuid::add_emulated_features`] (from KVM's
//!    capabilities). Per vCPU `i` of `n`: that table -> [`cpuid::patch_cpuid`] ->
//!    (only when the hypervisor is hidden) [`cpuid::hide_hypervisor`] -> `KVM_SET_CPUID2`; `KVM_SET_MSRS` with [`regs::boot_msrs`]; `KVM_SET_FPU` with
//!    [`regs::boot_fpu`]; `KVM_GET_LAPIC` -> [`regs::set_lint`] -> `KVM_SET_LAPIC`.
//!    On the boot vCPU (i == 0) also `KVM_SET_REGS` with
//!    [`regs::boot_regs`]`(`[`kernel_entry`]`(..))` and
//!    `KVM_GET_SREGS` -> [`regs::set_boot_sregs`] -> `KVM_SET_SREGS`. Application
//!    processors wait for INIT/SIPI in the in-kernel LAPIC, which resets their registers.
//!
//! The I/O ports the VMM must emulate for what these tables promise are constants in
//! [`layout`]: COM1, the i8042 reset, PCI config 0xcf8/0xcfc, and the ACPI sleep control,
//! sleep status and reset registers.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;

pub use acpi::{
    create_acpi_tables, split_ram, AcpiConfig, AddrRange, NumaNode, PciHostBridge, PciWindows,
    LOCAL_DISTANCE,
};
pub use boot_params::{
    build_boot_params, initramfs_addr, kernel_entry, write_boot_params, BootParamsConfig,
};
pub use cpuid::{
    add_emulated_features, hide_hypervisor, patch_cpuid, phys_address_bits, EmulatedFeatures,
};
pub use e820::{e820_table, E820Entry, E820Kind};
pub use mptable::write_mptable;
pub use regs::{boot_fpu, boot_msrs, boot_regs, set_boot_sregs, set_lint, KVM_PARAVIRT_MSRS};

use vm_memory::GuestMemoryBackend;

use crate::Result;

/// Writes the boot GDT and IDT ([`gdt::write_gdt_idt`]) and the identity page tables
/// ([`paging::write_identity_page_tables`]) into guest memory; returns the CR3 value to pass
/// to [`regs::set_boot_sregs`]. Call once per VM, after loading the kernel.
pub fn write_boot_tables<M: GuestMemoryBackend>(mem: &M) -> Result<u64> {
    gdt::write_gdt_idt(mem)?;
    paging::write_identity_page_tables(mem)
}
