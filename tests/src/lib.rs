//! What Strait's cross-crate tests (`tests/tests/*.rs`) share. The tests exercise
//! `resources`, `devices`, `vfio-glue` and `arch` together the way the VMM and a guest
//! do, with vfio-glue's fake backend: no /dev/kvm, no /dev/vfio.
//!
//! - [`function`]: passed-through functions described by their BARs and capabilities,
//!   turned into the config space, regions and interrupts a fake backend serves.
//! - [`irqs`]: the VMM's side of vfio-glue's interrupt seam, recording every call.
//! - [`machine`]: the q35-like PCI topology the VMM assembles, with addresses planned by
//!   `resources` inside `arch`'s windows.
//! - [`guest`]: the guest's side: ECAM and CF8 accesses through the buses, enumeration,
//!   capability walks, BAR sizing, bridge windows.
//!
//! The fakes themselves are a dev-dependency (vfio-glue's `fakes` feature), so the tests
//! build backends and hand them to [`machine::Machine::build`].

pub mod function;
pub mod guest;
pub mod irqs;
pub mod machine;
