//! PCI function addresses: segment (domain), bus, device, function.
//!
//! Written as the kernel and `lspci -D` write them, `0000:01:00.0`
//! (PCI Firmware 3.2 segment groups; PCI Local Bus 3.0 limits of 32 devices per
//! bus and 8 functions per device). The domain may be left out when parsing
//! (`01:00.0`, as `lspci` prints), meaning segment 0.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a PCI address.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BdfError {
    #[error("{input:?} is not a PCI address of the form 0000:01:00.0")]
    Format { input: String },
    #[error("{field} {value:?} in {input:?} is not a hexadecimal number that fits")]
    BadNumber {
        field: &'static str,
        value: String,
        input: String,
    },
    #[error("device {device:#x} is above 0x1f")]
    BadDevice { device: u8 },
    #[error("function {function} is above 7")]
    BadFunction { function: u8 },
}

/// A PCI function address. Device and function are always in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// `segment:bus:device.function`; fails when device > 31 or function > 7.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfError> {
        if device > 0x1f {
            return Err(BdfError::BadDevice { device });
        }
        if function > 7 {
            return Err(BdfError::BadFunction { function });
        }
        Ok(Self {
            segment,
            bus,
            device,
            function,
        })
    }

    /// From a bus number and a device/function byte (`device << 3 | function`),
    /// as in ECAM and CF8 addresses; cannot fail.
    pub const fn from_devfn(segment: u16, bus: u8, devfn: u8) -> Self {
        Self {
            segment,
            bus,
            device: devfn >> 3,
            function: devfn & 7,
        }
    }

    pub fn segment(&self) -> u16 {
        self.segment
    }

    pub fn bus(&self) -> u8 {
        self.bus
    }

    pub fn device(&self) -> u8 {
        self.device
    }

    pub fn function(&self) -> u8 {
        self.function
    }

    /// `device << 3 | function`.
    pub fn devfn(&self) -> u8 {
        self.device << 3 | self.function
    }

    /// The same device and function on another bus.
    pub fn with_bus(self, bus: u8) -> Self {
        Self { bus, ..self }
    }

    /// Function `function` of the same device.
    pub fn with_function(self, function: u8) -> Result<Self, BdfError> {
        Self::new(self.segment, self.bus, self.device, function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

fn hex<T>(field: &'static str, value: &str, input: &str, max_digits: usize) -> Result<T, BdfError>
where
    T: TryFrom<u32>,
{
    let bad = || BdfError::BadNumber {
        field,
        value: value.to_string(),
        input: input.to_string(),
    };
    // from_str_radix would accept a leading '+'; only plain hex digits are valid.
    if value.is_empty() || value.len() > max_digits || !value.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let n = u32::from_str_radix(value, 16).map_err(|_| bad())?;
    T::try_from(n).map_err(|_| bad())
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(input: &str) -> Result<Self, BdfError> {
        let format = || BdfError::Format {
            input: input.to_string(),
        };
        let (rest, function) = input.rsplit_once('.').ok_or_else(format)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (segment, bus, device) = match parts.as_slice() {
            [s, b, d] => (hex::<u16>("segment", s, input, 4)?, *b, *d),
            [b, d] => (0, *b, *d),
            _ => return Err(format()),
        };
        let bus = hex::<u8>("bus", bus, input, 2)?;
        let device = hex::<u8>("device", device, input, 2)?;
        let function = hex::<u8>("function", function, input, 1)?;
        Self::new(segment, bus, device, function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_address() {
        let b: Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            (b.segment(), b.bus(), b.device(), b.function()),
            (0, 1, 0, 0)
        );
    }

    #[test]
    fn parses_hex_fields_and_short_form() {
        let b: Bdf = "00ab:ff:1f.7".parse().unwrap();
        assert_eq!(
            (b.segment(), b.bus(), b.device(), b.function()),
            (0xab, 0xff, 0x1f, 7)
        );
        let s: Bdf = "3b:00.1".parse().unwrap();
        assert_eq!(s, Bdf::new(0, 0x3b, 0, 1).unwrap());
    }

    #[test]
    fn displays_like_sysfs() {
        let b = Bdf::new(0, 0x3b, 0x1f, 3).unwrap();
        assert_eq!(b.to_string(), "0000:3b:1f.3");
        assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
    }

    #[test]
    fn rejects_missing_parts() {
        for s in ["", "0000:01:00", "01.0", "0000:00:01:00.0", "0000:01:00."] {
            let err = s.parse::<Bdf>().unwrap_err();
            assert!(
                matches!(err, BdfError::Format { .. } | BdfError::BadNumber { .. }),
                "{s}: {err:?}"
            );
        }
    }

    #[test]
    fn rejects_non_hex_and_oversized_fields() {
        assert!(matches!(
            "0000:0g:00.0".parse::<Bdf>(),
            Err(BdfError::BadNumber { field: "bus", .. })
        ));
        assert!(matches!(
            "0000:100:00.0".parse::<Bdf>(),
            Err(BdfError::BadNumber { field: "bus", .. })
        ));
        assert!(matches!(
            "10000:00:00.0".parse::<Bdf>(),
            Err(BdfError::BadNumber {
                field: "segment",
                ..
            })
        ));
        assert!(matches!(
            "0000:00:+1.0".parse::<Bdf>(),
            Err(BdfError::BadNumber {
                field: "device",
                ..
            })
        ));
    }

    #[test]
    fn rejects_device_and_function_out_of_range() {
        assert_eq!(
            "0000:00:20.0".parse::<Bdf>(),
            Err(BdfError::BadDevice { device: 0x20 })
        );
        assert_eq!(
            "0000:00:00.8".parse::<Bdf>(),
            Err(BdfError::BadFunction { function: 8 })
        );
    }

    #[test]
    fn devfn_round_trips() {
        let b = Bdf::new(0, 2, 0x1a, 5).unwrap();
        assert_eq!(b.devfn(), 0xd5);
        assert_eq!(Bdf::from_devfn(0, 2, 0xd5), b);
        assert_eq!(b.with_bus(7).bus(), 7);
        assert_eq!(
            b.with_function(8),
            Err(BdfError::BadFunction { function: 8 })
        );
    }
}
