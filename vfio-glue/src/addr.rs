//! Host PCI addresses (`DDDD:BB:DD.F`, as sysfs and `lspci -D` write them).
//!
//! The type is the `devices` crate's [`Bdf`]; this module adds what host
//! checks need: parsing into this crate's error, and multi-function siblings.

use devices::pci::Bdf;

use crate::error::Error;

/// A host PCI function address.
pub type HostPciAddress = Bdf;

/// Parse a user-written host address (`0000:01:00.0`, or `01:00.0` for segment 0).
pub fn parse_host_address(input: &str) -> Result<HostPciAddress, Error> {
    input
        .trim()
        .parse()
        .map_err(|source| Error::ParsePciAddress {
            input: input.to_string(),
            source,
        })
}

/// True when `a` and `b` are functions of one physical device (same segment,
/// bus and device number), e.g. a GPU and its HDMI audio function.
pub fn same_slot(a: &HostPciAddress, b: &HostPciAddress) -> bool {
    a.segment() == b.segment() && a.bus() == b.bus() && a.device() == b.device()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a = parse_host_address("0000:01:00.1").unwrap();
        assert_eq!(a, Bdf::new(0, 1, 0, 1).unwrap());
        assert_eq!(
            parse_host_address(" 3:1f.7 ").unwrap().to_string(),
            "0000:03:1f.7"
        );
    }

    #[test]
    fn malformed_address_is_a_parse_error() {
        for s in ["0000:01:20.0", "0000:01:00.8", "zz:00.0", "0000:01:00", ""] {
            assert!(
                matches!(parse_host_address(s), Err(Error::ParsePciAddress { .. })),
                "{s} should not parse"
            );
        }
    }

    #[test]
    fn same_slot_ignores_function() {
        let a = parse_host_address("0000:01:00.0").unwrap();
        assert!(same_slot(&a, &parse_host_address("0000:01:00.3").unwrap()));
        assert!(!same_slot(&a, &parse_host_address("0000:01:01.0").unwrap()));
    }
}
