//! Legacy PC devices on the port I/O bus: COM1 serial, the i8042 reset line, the ACPI
//! hardware-reduced sleep/reset registers and a CMOS/RTC stub.
//!
//! These devices never touch KVM. Interrupts leave through an `EventFd` (the VMM registers
//! it as an irqfd), power requests through the [`PowerControl`] trait (the VMM stops the
//! VM). Everything the guest writes is accepted: unknown registers read as all ones or
//! zero as real hardware would, and odd accesses are logged at debug level, rate-limited.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::{EventFdTrigger, SerialPort};

/// What the guest asked the platform to do with its power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// ACPI S5 (soft off).
    PowerOff,
    /// Platform reset (ACPI reset register, i8042 pulse of the reset line).
    Reboot,
}

/// Receiver of guest power requests. Implemented by the VMM, which stops the VM.
pub trait PowerControl: Send + Sync {
    /// Called from a vCPU thread in the middle of an exit; must not block for long.
    fn request(&self, action: PowerAction);
}

/// Fill a read the device does not decode: all ones, as an undriven ISA bus reads.
pub(crate) fn fill_ones(data: &mut [u8]) {
    data.fill(0xff);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_util {
    use super::*;
    use std::sync::Mutex;

    /// Records power requests for assertions.
    #[derive(Default)]
    pub struct RecordingPower(pub Mutex<Vec<PowerAction>>);

    impl PowerControl for RecordingPower {
        fn request(&self, action: PowerAction) {
            self.0.lock().unwrap().push(action);
        }
    }

    impl RecordingPower {
        pub fn taken(&self) -> Vec<PowerAction> {
            self.0.lock().unwrap().clone()
        }
    }
}
