//! ACPI hardware-reduced power registers (ACPI 6.4, 4.8.3.7 "Sleep Control and Status
//! Registers" and 4.8.3.6 "Reset Register"): three byte-wide ports,
//! sleep control at offset 0, sleep status at 1, reset at 2.
//!
//! The FADT (arch crate) points SLEEP_CONTROL_REG, SLEEP_STATUS_REG and RESET_REG at these
//! ports and the DSDT's `_S5` package gives the sleep type the guest writes to power off.
//! Writing SLP_EN with that type powers off; writing the FADT reset value reboots.

use std::sync::Arc;

use super::{fill_ones, PowerAction, PowerControl};
use crate::bus::BusDevice;
use resources::limited_debug;
use resources::LogLimiter;

/// Ports decoded, starting at the sleep control register.
pub const ACPI_PM_PORT_LEN: u64 = 3;
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET: u64 = 2;
/// SLP_EN, bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP, bits 4:2 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

static IGNORED: LogLimiter = LogLimiter::new();

/// What a write to the sleep control register asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN clear: nothing happens.
    None,
    /// SLP_EN set with this SLP_TYP.
    Sleep(u8),
}

/// Decode a sleep control register value.
pub fn decode_sleep_control(value: u8) -> SleepRequest {
    if value & SLP_EN == 0 {
        return SleepRequest::None;
    }
    SleepRequest::Sleep((value >> SLP_TYP_SHIFT) & SLP_TYP_MASK)
}

/// The sleep control/status and reset registers.
pub struct AcpiPm {
    power: Arc<dyn PowerControl>,
    /// SLP_TYP of the DSDT's `\_S5` package.
    s5_sleep_type: u8,
    /// FADT RESET_VALUE.
    reset_value: u8,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("s5_sleep_type", &self.s5_sleep_type)
            .field("reset_value", &self.reset_value)
            .finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// `s5_sleep_type` and `reset_value` must match what the ACPI tables advertise.
    pub fn new(power: Arc<dyn PowerControl>, s5_sleep_type: u8, reset_value: u8) -> Self {
        AcpiPm {
            power,
            s5_sleep_type,
            reset_value,
        }
    }

    fn sleep_control(&self, value: u8) {
        match decode_sleep_control(value) {
            SleepRequest::None => {}
            SleepRequest::Sleep(t) if t == self.s5_sleep_type => {
                self.power.request(PowerAction::PowerOff)
            }
            // We advertise no S1-S4; a guest asking anyway stays running.
            SleepRequest::Sleep(t) => {
                limited_debug!(IGNORED, "acpi: sleep type {t} not supported, ignored")
            }
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // Nothing is ever pending: WAK_STS clear, control reads back as 0.
            (SLEEP_CONTROL | SLEEP_STATUS | RESET, 1) => data[0] = 0,
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (SLEEP_CONTROL, [v]) => self.sleep_control(*v),
            // Status bits are write-one-to-clear; none is ever set.
            (SLEEP_STATUS, [_]) => {}
            (RESET, [v]) if *v == self.reset_value => self.power.request(PowerAction::Reboot),
            _ => limited_debug!(IGNORED, "acpi: ignored write {data:x?} at offset {offset}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::legacy::test_util::RecordingPower;

    const S5: u8 = 5;

    fn dev() -> (AcpiPm, Arc<RecordingPower>) {
        let power = Arc::new(RecordingPower::default());
        (AcpiPm::new(power.clone(), S5, 1), power)
    }

    #[test]
    fn decodes_slp_typ_and_slp_en() {
        assert_eq!(
            decode_sleep_control((5 << 2) | (1 << 5)),
            SleepRequest::Sleep(5)
        );
        assert_eq!(decode_sleep_control(5 << 2), SleepRequest::None);
        assert_eq!(decode_sleep_control(1 << 5), SleepRequest::Sleep(0));
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, power) = dev();
        d.write(0x3c0, SLEEP_CONTROL, &[(S5 << 2) | SLP_EN]);
        assert_eq!(power.taken(), vec![PowerAction::PowerOff]);
    }

    #[test]
    fn s5_without_slp_en_does_nothing() {
        let (mut d, power) = dev();
        d.write(0x3c0, SLEEP_CONTROL, &[S5 << 2]);
        assert!(power.taken().is_empty());
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (mut d, power) = dev();
        d.write(0x3c0, SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        assert!(power.taken().is_empty());
    }

    #[test]
    fn reset_value_reboots() {
        let (mut d, power) = dev();
        d.write(0x3c0, RESET, &[1]);
        assert_eq!(power.taken(), vec![PowerAction::Reboot]);
    }

    #[test]
    fn other_reset_values_do_nothing() {
        let (mut d, power) = dev();
        d.write(0x3c0, RESET, &[6]);
        d.write(0x3c0, RESET, &[1, 0]);
        assert!(power.taken().is_empty());
    }

    #[test]
    fn status_reads_zero_and_wide_reads_ones() {
        let (mut d, _) = dev();
        let mut b = [0xffu8];
        d.read(0x3c0, SLEEP_STATUS, &mut b);
        assert_eq!(b, [0]);
        let mut w = [0u8; 2];
        d.read(0x3c0, SLEEP_CONTROL, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }
}
