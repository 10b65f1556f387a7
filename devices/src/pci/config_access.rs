//! The guest's two ways into config space, as [`BusDevice`]s over a [`PciRoot`]:
//! - ECAM / MMCONFIG (PCIe Base 7.2.2): a memory window where offset bits 27:20
//!   select the bus, 19:15 the device, 14:12 the function, 11:0 the byte;
//! - configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): a dword address
//!   latch at port 0xCF8 (bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
//!   7:2 register) and data at 0xCFC..=0xCFF.
//!
//! Accesses of 1, 2 or 4 bytes inside one dword are forwarded; anything else
//! (other sizes, crossing a dword, a disabled CF8 latch) reads as all ones and
//! drops writes. Writes that changed something (BAR moves, decode switches) are
//! passed to the handler with the function's address, for the device manager.

use std::sync::Arc;

use crate::bus::BusDevice;
use resources::limited_debug;
use resources::LogLimiter;

use super::root::PciRoot;
use super::Bdf;
use super::ConfigWriteResult;

/// Receives the effects of guest config writes.
pub type ConfigWriteHandler = Box<dyn FnMut(Bdf, ConfigWriteResult) + Send>;

/// What the ECAM format addresses: buses 0..=255 (PCIe Base 7.2.2); the platform
/// decides where its window sits and how much of it exists.
pub const ECAM_SIZE: u64 = 256 << 20;
/// Configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2): the address register at
/// offset 0 and the data register at offset 4 of the 8 ports the platform places it at
/// (0xcf8 on a PC).
pub const CF8_PORTS_LEN: u64 = 8;
const CF8_ADDRESS: u64 = 0;
const CF8_DATA: u64 = 4;

const CF8_ENABLE: u32 = 1 << 31;
/// Enable, bus, device, function, register; reserved bits 30:24 and 1:0 read 0.
const CF8_WRITABLE: u32 = 0x80ff_fffc;

static BAD_ACCESS: LogLimiter = LogLimiter::new();
static NO_HANDLER: LogLimiter = LogLimiter::new();

/// A config access decoded to (function, dword register, byte in register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bdf: Bdf,
    pub reg: usize,
    pub byte: u64,
}

/// Decode an ECAM offset; `None` past the 256-bus window.
pub fn decode_ecam(segment: u16, offset: u64) -> Option<ConfigAddress> {
    if offset >= ECAM_SIZE {
        return None;
    }
    Some(ConfigAddress {
        bdf: Bdf::from_devfn(segment, (offset >> 20) as u8, (offset >> 12) as u8),
        reg: (offset as usize & 0xfff) >> 2,
        byte: offset & 3,
    })
}

/// Decode a CF8 address latch and a data port offset (0..=3); `None` if the
/// enable bit is clear.
pub fn decode_cf8(segment: u16, latch: u32, data_offset: u64) -> Option<ConfigAddress> {
    if latch & CF8_ENABLE == 0 {
        return None;
    }
    Some(ConfigAddress {
        bdf: Bdf::from_devfn(segment, (latch >> 16) as u8, (latch >> 8) as u8),
        reg: (latch as usize & 0xfc) >> 2,
        byte: data_offset & 3,
    })
}

fn access_ok(byte: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && byte + len as u64 <= 4
}

fn log_bad(what: &str, at: u64, len: usize) {
    limited_debug!(
        BAD_ACCESS,
        "dropped {what} config access of {len} bytes at {at:#x}"
    );
}

/// Shared read/write path of both front-ends.
struct Forwarder {
    root: Arc<PciRoot>,
    handler: Option<ConfigWriteHandler>,
}

impl Forwarder {
    fn read(&self, a: ConfigAddress, data: &mut [u8]) {
        let v = self.root.config_read(a.bdf, a.reg).to_le_bytes();
        let start = a.byte as usize;
        data.copy_from_slice(&v[start..start + data.len()]);
    }

    fn write(&mut self, a: ConfigAddress, data: &[u8]) {
        let result = self.root.config_write(a.bdf, a.reg, a.byte, data);
        if result == ConfigWriteResult::default() {
            return;
        }
        match &mut self.handler {
            Some(h) => h(a.bdf, result),
            // No handler: no passed-through function, so decode switches, window
            // writes and bus resets have nothing to act on (emulated functions keep
            // their BARs where Strait placed them). Only a moved BAR is worth a word.
            None if !result.bar_moves.is_empty() => {
                static BAR_MOVED: LogLimiter = LogLimiter::new();
                if BAR_MOVED.allow() {
                    log::warn!(
                        "{}: the guest moved a BAR ({:?}); Strait keeps emulated \
                         functions' BARs where it placed them",
                        a.bdf,
                        result.bar_moves
                    );
                }
            }
            None => limited_debug!(NO_HANDLER, "{}: config write effect: {result:?}", a.bdf),
        }
    }
}

/// ECAM window over a segment; insert it on the MMIO bus at the ECAM base.
pub struct PciEcam {
    fwd: Forwarder,
}

impl PciEcam {
    pub fn new(root: Arc<PciRoot>, handler: Option<ConfigWriteHandler>) -> Self {
        Self {
            fwd: Forwarder { root, handler },
        }
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match decode_ecam(self.fwd.root.segment(), offset) {
            Some(a) if access_ok(a.byte, data.len()) => self.fwd.read(a, data),
            _ => {
                log_bad("ECAM", offset, data.len());
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match decode_ecam(self.fwd.root.segment(), offset) {
            Some(a) if access_ok(a.byte, data.len()) => self.fwd.write(a, data),
            _ => log_bad("ECAM", offset, data.len()),
        }
    }
}

/// Ports 0xCF8..=0xCFF over a segment. Insert it on the I/O bus at 0xCF8 with
/// length 8 (or at 0xCF8 and 0xCFC with length 4 each: it decodes the port).
pub struct PciCf8 {
    fwd: Forwarder,
    latch: u32,
}

impl PciCf8 {
    pub fn new(root: Arc<PciRoot>, handler: Option<ConfigWriteHandler>) -> Self {
        Self {
            fwd: Forwarder { root, handler },
            latch: 0,
        }
    }

    /// The data-register access at `offset`, if it may be forwarded.
    fn data_access(&self, offset: u64, len: usize) -> Option<ConfigAddress> {
        let off = offset.checked_sub(CF8_DATA).filter(|o| *o < 4)?;
        let a = decode_cf8(self.fwd.root.segment(), self.latch, off)?;
        access_ok(off, len).then_some(a)
    }
}

impl BusDevice for PciCf8 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if offset == CF8_ADDRESS && data.len() == 4 {
            data.copy_from_slice(&self.latch.to_le_bytes());
        } else if let Some(a) = self.data_access(offset, data.len()) {
            self.fwd.read(a, data);
        } else {
            // Includes a disabled latch, which reads as a master abort.
            data.fill(0xff);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if offset == CF8_ADDRESS && data.len() == 4 {
            // Only dword accesses reach the address latch (3.2.2.3.2).
            self.latch = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & CF8_WRITABLE;
        } else if let Some(a) = self.data_access(offset, data.len()) {
            self.fwd.write(a, data);
        } else {
            log_bad("CF8", base + offset, data.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::root_port::{RootPort, RootPortConfig};
    use crate::pci::testutil::TestEndpoint;
    use crate::pci::{BarMove, HostBridge, SharedPciDevice};
    use std::sync::Mutex;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// Host bridge, root port 00:01.0 -> bus 1, endpoint 01:00.0 (device 0x1234).
    fn root() -> Arc<PciRoot> {
        let mut r = PciRoot::new(0);
        let hb: SharedPciDevice = Arc::new(Mutex::new(HostBridge::new()));
        let rp: SharedPciDevice = Arc::new(Mutex::new(
            RootPort::new(RootPortConfig::new(1, 1)).unwrap(),
        ));
        r.add_device(bdf("00:00.0"), hb).unwrap();
        r.add_device(bdf("00:01.0"), rp).unwrap();
        r.add_device(bdf("01:00.0"), TestEndpoint::shared(0x1234))
            .unwrap();
        Arc::new(r)
    }

    fn ecam_offset(bus: u64, dev: u64, func: u64, reg: u64) -> u64 {
        bus << 20 | dev << 15 | func << 12 | reg
    }

    fn read(d: &mut dyn BusDevice, base: u64, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        d.read(base, off, &mut v);
        v
    }

    fn read32(d: &mut dyn BusDevice, base: u64, off: u64) -> u32 {
        let v = read(d, base, off, 4);
        u32::from_le_bytes([v[0], v[1], v[2], v[3]])
    }

    type Seen = Arc<Mutex<Vec<(Bdf, ConfigWriteResult)>>>;

    fn recorder() -> (Seen, ConfigWriteHandler) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        (seen, Box::new(move |b, r| s.lock().unwrap().push((b, r))))
    }

    #[test]
    fn ecam_decoding_follows_spec_bit_layout() {
        let a = decode_ecam(0, 0x0123_4567).unwrap();
        assert_eq!(a.bdf, Bdf::new(0, 0x12, 0x06, 4).unwrap());
        assert_eq!((a.reg, a.byte), (0x567 >> 2, 3));
        assert!(decode_ecam(0, ECAM_SIZE).is_none());
    }

    #[test]
    fn cf8_decoding_follows_spec_bit_layout() {
        let a = decode_cf8(0, 0x8001_0a44, 2).unwrap();
        assert_eq!(a.bdf, Bdf::new(0, 1, 1, 2).unwrap());
        assert_eq!((a.reg, a.byte), (0x11, 2));
        assert!(decode_cf8(0, 0x0001_0a44, 0).is_none());
    }

    #[test]
    fn ecam_reads_present_and_absent_functions() {
        let mut e = PciEcam::new(root(), None);
        assert_eq!(read32(&mut e, 0, ecam_offset(0, 0, 0, 0)), 0x29c0_8086);
        assert_eq!(read32(&mut e, 0, ecam_offset(0, 1, 0, 0)), 0x000c_1b36);
        assert_eq!(read32(&mut e, 0, ecam_offset(1, 0, 0, 0)), 0x1234_1af4);
        assert_eq!(read32(&mut e, 0, ecam_offset(0, 2, 0, 0)), u32::MAX);
        assert_eq!(read32(&mut e, 0, ecam_offset(1, 0, 1, 0)), u32::MAX);
        assert_eq!(read32(&mut e, 0, ecam_offset(2, 0, 0, 0)), u32::MAX);
    }

    #[test]
    fn ecam_sub_dword_reads() {
        let mut e = PciEcam::new(root(), None);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 2), 2), [0x34, 0x12]);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 1), 1), [0x1a]);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 0xb), 1), [0x01]);
    }

    #[test]
    fn ecam_misaligned_and_odd_accesses_read_ones() {
        let mut e = PciEcam::new(root(), None);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 3), 2), [0xff, 0xff]);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 2), 4), [0xff; 4]);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 0), 8), [0xff; 8]);
        assert_eq!(read(&mut e, 0, ecam_offset(1, 0, 0, 0), 3), [0xff; 3]);
        assert_eq!(read(&mut e, 0, ECAM_SIZE, 4), [0xff; 4]);
    }

    #[test]
    fn ecam_extended_register_reaches_function() {
        let mut e = PciEcam::new(root(), None);
        // The root port has no extended capabilities: 0x100 reads 0, not ones.
        assert_eq!(read32(&mut e, 0, ecam_offset(0, 1, 0, 0x100)), 0);
    }

    #[test]
    fn ecam_write_reports_bar_move_to_handler() {
        let (seen, handler) = recorder();
        let r = root();
        let mut e = PciEcam::new(r.clone(), Some(handler));
        let ep = bdf("01:00.0");
        e.write(0, ecam_offset(1, 0, 0, 0x10), &0xc000_0000u32.to_le_bytes());
        assert!(
            seen.lock().unwrap().is_empty(),
            "decode off: nothing to report"
        );
        e.write(0, ecam_offset(1, 0, 0, 4), &[0x02, 0x00]);
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, ep);
        assert_eq!(got[0].1.mem_decode, Some(true));
        assert_eq!(
            got[0].1.bar_moves,
            vec![BarMove {
                index: 0,
                kind: crate::pci::BarKind::Mem32 {
                    prefetchable: false
                },
                size: 0x1000,
                old: 0,
                new: 0xc000_0000
            }]
        );
    }

    #[test]
    fn ecam_write_to_absent_function_is_dropped() {
        let (seen, handler) = recorder();
        let mut e = PciEcam::new(root(), Some(handler));
        e.write(0, ecam_offset(5, 0, 0, 4), &[0x02, 0x00]);
        e.write(0, ecam_offset(1, 0, 0, 3), &[0x02, 0x00]);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn cf8_latch_reads_back_masked_and_needs_dwords() {
        let mut c = PciCf8::new(root(), None);
        c.write(0xcf8, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&mut c, 0xcf8, 0), 0x80ff_fffc);
        c.write(0xcf8, 0, &[0]);
        assert_eq!(
            read32(&mut c, 0xcf8, 0),
            0x80ff_fffc,
            "byte write to 0xcf8 ignored"
        );
        assert_eq!(read(&mut c, 0xcf8, 1, 1), [0xff]);
    }

    #[test]
    fn cf8_data_port_reads_selected_register() {
        let mut c = PciCf8::new(root(), None);
        c.write(0xcf8, 0, &0x8001_0000u32.to_le_bytes());
        assert_eq!(read32(&mut c, 0xcf8, 4), 0x1234_1af4);
        assert_eq!(read(&mut c, 0xcf8, 6, 2), [0x34, 0x12]);
        assert_eq!(read(&mut c, 0xcf8, 7, 1), [0x12]);
        assert_eq!(read(&mut c, 0xcf8, 6, 4), [0xff; 4], "crosses the dword");
        // Inserted as two 4-byte ranges, the data half decodes the same.
        assert_eq!(
            read32(&mut c, 0xcfc, 0),
            0x8001_0000,
            "offset 0 is the address"
        );
    }

    #[test]
    fn cf8_disabled_latch_and_absent_device_read_ones() {
        let mut c = PciCf8::new(root(), None);
        c.write(0xcf8, 0, &0x0001_0000u32.to_le_bytes());
        assert_eq!(read32(&mut c, 0xcf8, 4), u32::MAX);
        c.write(0xcf8, 0, &0x8000_1000u32.to_le_bytes());
        assert_eq!(read32(&mut c, 0xcf8, 4), u32::MAX);
    }

    #[test]
    fn cf8_write_reaches_function_and_handler() {
        let (seen, handler) = recorder();
        let r = root();
        let mut c = PciCf8::new(r.clone(), Some(handler));
        c.write(0xcf8, 0, &0x8001_0004u32.to_le_bytes());
        c.write(0xcf8, 4, &[0x02]);
        assert_eq!(r.config_read(bdf("01:00.0"), 1) & 0xffff, 2);
        assert_eq!(seen.lock().unwrap()[0].1.mem_decode, Some(true));
    }
}
