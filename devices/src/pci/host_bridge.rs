//! The host bridge at 00:00.0 (PCI Local Bus 3.0 class 06/00/00).
//!
//! It only identifies the root complex: no BARs, no capabilities, no registers
//! with side effects. IDs are those of the Intel 82G33/Q35 DRAM controller
//! (8086:29c0), which QEMU's q35 machine also presents: stock guest kernels and
//! GPU drivers have been exercised on that topology for years, and Linux binds
//! no driver that would poke chipset registers (intel-agp probes it, finds no
//! integrated graphics nor AGP capability, and leaves). Its config space is
//! conventional (256 bytes), like the real part's.

use super::config::{ConfigSize, PciConfigSpace, PciIds};
use super::{ConfigWriteResult, PciDevice};

pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
/// Bridge device, host bridge.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_0000;

/// The root complex's own function, 00:00.0.
#[derive(Debug)]
pub struct HostBridge {
    cfg: PciConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        let ids = PciIds {
            vendor: HOST_BRIDGE_VENDOR_ID,
            device: HOST_BRIDGE_DEVICE_ID,
            class: HOST_BRIDGE_CLASS,
            ..PciIds::default()
        };
        Self {
            cfg: PciConfigSpace::new_type0(ids, ConfigSize::Pci),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.cfg.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        self.cfg.write(reg, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_q35_host_bridge() {
        let mut h = HostBridge::new();
        assert_eq!(h.config_read(0), 0x29c0_8086);
        assert_eq!(h.config_read(2) >> 8, HOST_BRIDGE_CLASS);
        assert_eq!(h.config_read(3) >> 16 & 0xff, 0, "type-0, single function");
        assert!(h.bars().is_empty());
    }

    #[test]
    fn has_no_capabilities_or_extended_space() {
        let mut h = HostBridge::new();
        assert_eq!(h.config_read(1) >> 16 & 0x10, 0);
        assert_eq!(h.config_read(0x100 / 4), u32::MAX);
    }

    #[test]
    fn bar_accesses_read_ones() {
        let mut h = HostBridge::new();
        let mut d = [0u8; 4];
        h.bar_read(0, 0, &mut d);
        assert_eq!(d, [0xff; 4]);
    }
}
