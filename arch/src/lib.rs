//! x86_64 boot pieces for Strait: the guest physical layout, the e820 map, the Linux zero
//! page, boot GDT/IDT and identity page tables, initial vCPU register/MSR/CPUID values and
//! the ACPI tables.
//!
//! Everything here is a pure function over `vm-memory` guest memory and `kvm-bindings`
//! structs: this crate never opens or touches a KVM file descriptor. The `vmm` crate reads
//! state from KVM, passes it through these functions and applies what they return.

// Tests unwrap freely: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use error::{Error, Result};
