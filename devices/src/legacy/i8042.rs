//! The 8042 keyboard controller, reduced to what a guest without a keyboard needs: the
//! "pulse reset line" command (0xFE to the command port), which Linux uses as its
//! `reboot=k` method and as fallback after ACPI reset.
//!
//! Placed at the data port (0x60) with a 5-port range so the command/status port (0x64)
//! is offset 4; offsets 1..=3 (0x61 is the PIT speaker port, which KVM's in-kernel PIT
//! answers before the access reaches us) read as all ones.

use std::sync::Arc;

use super::{fill_ones, PowerAction, PowerControl};
use crate::bus::BusDevice;
use resources::limited_debug;
use resources::LogLimiter;

/// Data port (0x60) to command/status port (0x64) span.
pub const I8042_PORT_LEN: u64 = 5;
/// Offset of the data port.
const DATA: u64 = 0;
/// Offset of the status (read) / command (write) port.
const COMMAND: u64 = 4;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

static IGNORED: LogLimiter = LogLimiter::new();

/// The reset-only 8042.
pub struct I8042 {
    power: Arc<dyn PowerControl>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    pub fn new(power: Arc<dyn PowerControl>) -> Self {
        I8042 { power }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // Status 0: output buffer empty, input buffer empty (ready for commands),
            // so the guest's "wait until ready" loops end at once. Data reads as 0.
            (COMMAND | DATA, 1) => data[0] = 0,
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND, [CMD_RESET_CPU]) => self.power.request(PowerAction::Reboot),
            _ => limited_debug!(IGNORED, "i8042: ignored write {data:x?} at offset {offset}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::legacy::test_util::RecordingPower;

    fn dev() -> (I8042, Arc<RecordingPower>) {
        let power = Arc::new(RecordingPower::default());
        (I8042::new(power.clone()), power)
    }

    #[test]
    fn reset_command_requests_reboot() {
        let (mut d, power) = dev();
        d.write(0x60, COMMAND, &[0xfe]);
        assert_eq!(power.taken(), vec![PowerAction::Reboot]);
    }

    #[test]
    fn other_commands_do_nothing() {
        let (mut d, power) = dev();
        d.write(0x60, COMMAND, &[0xad]);
        d.write(0x60, DATA, &[0xfe]);
        assert!(power.taken().is_empty());
    }

    #[test]
    fn status_reads_ready() {
        let (mut d, _) = dev();
        let mut s = [0xffu8];
        d.read(0x60, COMMAND, &mut s);
        assert_eq!(s[0] & 0x03, 0, "output and input buffers empty");
    }

    #[test]
    fn ports_between_read_ones() {
        let (mut d, _) = dev();
        let mut s = [0u8];
        d.read(0x60, 2, &mut s);
        assert_eq!(s[0], 0xff);
    }
}
