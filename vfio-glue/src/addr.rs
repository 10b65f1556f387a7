//! Host PCI addresses (`DDDD:BB:DD.F`, as sysfs and `lspci -D` write them).
//!
//! The type is `resources`' [`Bdf`] (parsed once, with the VM spec); this module adds
//! what host checks need: multi-function siblings.

use devices::pci::Bdf;

/// A host PCI function address.
pub type HostPciAddress = Bdf;

/// True when `a` and `b` are functions of one physical device (same segment,
/// bus and device number), e.g. a GPU and its HDMI audio function.
pub fn same_slot(a: &HostPciAddress, b: &HostPciAddress) -> bool {
    a.segment() == b.segment() && a.bus() == b.bus() && a.device() == b.device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_slot_ignores_function() {
        let a = "0000:01:00.0".parse::<Bdf>().unwrap();
        assert!(same_slot(&a, &"0000:01:00.3".parse::<Bdf>().unwrap()));
        assert!(!same_slot(&a, &"0000:01:01.0".parse::<Bdf>().unwrap()));
    }
}
