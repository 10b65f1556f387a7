//! CMOS RAM and a read-only MC146818 real-time clock at ports 0x70 (index) / 0x71 (data).
//!
//! Linux reads the wall clock here when no paravirtual clock is offered and waits for
//! the "update in progress" bit of status register A to clear, so that bit must read 0.
//! The time registers report the host's UTC time in BCD, 24-hour mode (status B = 0x02),
//! computed at each read. Guest writes to time registers are dropped (the clock cannot
//! be set); other registers are plain RAM.

use std::time::{SystemTime, UNIX_EPOCH};

use super::fill_ones;
use crate::bus::BusDevice;

/// Index and data ports.
pub const CMOS_PORT_LEN: u64 = 2;
const INDEX: u64 = 0;
const DATA: u64 = 1;
/// Bit 7 of the index port masks NMIs on a PC; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate, update-in-progress clear.
const STATUS_A: u8 = 0x26;
/// Status B: 24-hour mode, BCD, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Status D: valid RAM and time (battery good).
const STATUS_D: u8 = 0x80;

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    pub weekday: u8,
}

impl DateTime {
    /// Convert seconds since the Unix epoch (proleptic Gregorian calendar).
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86400;
        let rem = secs % 86400;
        // Days since 0000-03-01, so leap days fall at the end of each 400-year era.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (RTC weekday 5).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// The CMOS/RTC stub. `clock` returns seconds since the Unix epoch (injectable for tests).
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> u64,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::new(host_clock)
    }
}

fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cmos {
    pub fn new(clock: fn() -> u64) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            clock,
        }
    }

    /// A machine reset: the index register goes back to 0; the battery-backed RAM
    /// keeps its bytes, as on a PC.
    pub fn reset(&mut self) {
        self.index = 0;
    }

    fn register(&self, index: u8) -> u8 {
        let t = || DateTime::from_unix((self.clock)());
        match index {
            REG_SECONDS => bcd(t().second.into()),
            REG_MINUTES => bcd(t().minute.into()),
            REG_HOURS => bcd(t().hour.into()),
            REG_WEEKDAY => bcd(t().weekday.into()),
            REG_DAY => bcd(t().day.into()),
            REG_MONTH => bcd(t().month.into()),
            REG_YEAR => bcd(t().year % 100),
            REG_CENTURY => bcd(t().year / 100),
            REG_STATUS_A => STATUS_A,
            REG_STATUS_B => STATUS_B,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D,
            i => self.ram[usize::from(i & INDEX_MASK)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (INDEX, 1) => data[0] = self.index,
            (DATA, 1) => data[0] = self.register(self.index),
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (INDEX, [v]) => self.index = v & INDEX_MASK,
            (DATA, [v]) if self.index > REG_STATUS_D && self.index != REG_CENTURY => {
                self.ram[usize::from(self.index)] = *v;
            }
            // Clock and status registers are read-only in this model.
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_307;

    fn read_reg(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0x70, INDEX, &[reg]);
        let mut d = [0u8];
        c.read(0x70, DATA, &mut d);
        d[0]
    }

    #[test]
    fn reset_keeps_cmos_ram_and_clears_the_index() {
        let mut c = Cmos::new(|| LEAP_DAY);
        c.write(0x70, INDEX, &[0x30]);
        c.write(0x70, DATA, &[0x5a]);
        c.reset();
        assert_eq!(c.index, 0);
        assert_eq!(read_reg(&mut c, 0x30), 0x5a);
    }

    #[test]
    fn converts_epoch_and_leap_day() {
        let e = DateTime::from_unix(0);
        assert_eq!((e.year, e.month, e.day, e.weekday), (1970, 1, 1, 5));
        let t = DateTime::from_unix(LEAP_DAY);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.minute, t.second, t.weekday), (13, 45, 7, 5));
    }

    #[test]
    fn time_registers_are_bcd() {
        let mut c = Cmos::new(|| LEAP_DAY);
        assert_eq!(read_reg(&mut c, REG_SECONDS), 0x07);
        assert_eq!(read_reg(&mut c, REG_MINUTES), 0x45);
        assert_eq!(read_reg(&mut c, REG_HOURS), 0x13);
        assert_eq!(read_reg(&mut c, REG_MONTH), 0x02);
        assert_eq!(read_reg(&mut c, REG_YEAR), 0x24);
        assert_eq!(read_reg(&mut c, REG_CENTURY), 0x20);
    }

    #[test]
    fn update_in_progress_never_set() {
        let mut c = Cmos::new(|| LEAP_DAY);
        assert_eq!(read_reg(&mut c, REG_STATUS_A) & 0x80, 0);
    }

    #[test]
    fn nmi_mask_bit_is_not_part_of_the_index() {
        let mut c = Cmos::new(|| LEAP_DAY);
        assert_eq!(read_reg(&mut c, 0x80 | REG_STATUS_D), STATUS_D);
    }

    #[test]
    fn ram_registers_store_and_clock_ignores_writes() {
        let mut c = Cmos::new(|| LEAP_DAY);
        c.write(0x70, INDEX, &[0x40]);
        c.write(0x70, DATA, &[0x5a]);
        assert_eq!(read_reg(&mut c, 0x40), 0x5a);
        c.write(0x70, INDEX, &[REG_SECONDS]);
        c.write(0x70, DATA, &[0x59]);
        assert_eq!(read_reg(&mut c, REG_SECONDS), 0x07);
    }
}
