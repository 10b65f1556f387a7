//! A PCIe root port: one type-1 function on bus 0 leading to one device.
//!
//! Registers follow PCI-to-PCI Bridge 1.2, 3.2 (bus numbers, I/O, memory and
//! prefetchable windows, bridge control) and PCIe Base 7.5.3 (PCI Express
//! capability, version 2, Root Port type). The link reports itself trained and
//! active (Data Link Layer Link Active, negotiated speed/width = the maximum)
//! so `lspci` shows a link and drivers that inspect their upstream port see a
//! PCIe link. A PCI Power Management capability (PCI PM 1.2) offers D0/D3hot;
//! MSI is optional, since `pcieport` also works with INTx (pin A).
//!
//! IDs are 1b36:000c, QEMU's generic `pcie-root-port`, so that stock guests bind
//! `pcieport` with no quirks; no hot-plug, AER, PME or bandwidth notification
//! is advertised, so the guest arms no port service we do not emulate.

use std::ops::RangeInclusive;

use crate::interrupt::MsiRouter;

use super::config::{ConfigSize, PciConfigSpace, PciIds};
use super::error::PciError;
use super::msi::Msi;
use super::ratelimit::apply_changes;
use super::regs::*;
use super::{ConfigWriteResult, PciDevice};

pub const ROOT_PORT_VENDOR_ID: u16 = 0x1b36;
pub const ROOT_PORT_DEVICE_ID: u16 = 0x000c;
/// Bridge device, PCI-to-PCI bridge, normal decode.
pub const ROOT_PORT_CLASS: u32 = 0x06_0400;

/// Link speed, as the Link Capabilities 2 speed vector numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSpeed {
    Gen1 = 1,
    Gen2 = 2,
    Gen3 = 3,
    Gen4 = 4,
    Gen5 = 5,
    Gen6 = 6,
}

impl LinkSpeed {
    /// The transfer rate as sysfs and `lspci` write it, e.g. "8 GT/s".
    pub fn rate(self) -> &'static str {
        match self {
            LinkSpeed::Gen1 => "2.5 GT/s",
            LinkSpeed::Gen2 => "5 GT/s",
            LinkSpeed::Gen3 => "8 GT/s",
            LinkSpeed::Gen4 => "16 GT/s",
            LinkSpeed::Gen5 => "32 GT/s",
            LinkSpeed::Gen6 => "64 GT/s",
        }
    }

    /// The speed Linux writes in sysfs `current_link_speed`/`max_link_speed`
    /// ("8.0 GT/s PCIe", older kernels "8 GT/s"); `None` for "Unknown" or anything else.
    pub fn from_sysfs(text: &str) -> Option<LinkSpeed> {
        let rate: f64 = text.split_whitespace().next()?.parse().ok()?;
        let speeds = [
            (2.5, LinkSpeed::Gen1),
            (5.0, LinkSpeed::Gen2),
            (8.0, LinkSpeed::Gen3),
            (16.0, LinkSpeed::Gen4),
            (32.0, LinkSpeed::Gen5),
            (64.0, LinkSpeed::Gen6),
        ];
        speeds
            .iter()
            .find(|(gt, _)| (rate - gt).abs() < 0.01)
            .map(|(_, s)| *s)
    }
}

/// A root port's link as a host port reports it: speed and negotiated width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortLink {
    pub speed: LinkSpeed,
    /// Lanes: 1, 2, 4, 8, 12, 16 or 32.
    pub width: u8,
}

impl PortLink {
    /// What a root port without a host link to mirror reports: Gen3 x16.
    pub const DEFAULT: PortLink = PortLink {
        speed: LinkSpeed::Gen3,
        width: 16,
    };

    /// The link from sysfs `current_link_speed` and `current_link_width` texts; `None`
    /// when either is unknown (a root-complex integrated endpoint has no link).
    pub fn from_sysfs(speed: &str, width: &str) -> Option<PortLink> {
        let speed = LinkSpeed::from_sysfs(speed)?;
        let width: u8 = width.trim().parse().ok()?;
        [1, 2, 4, 8, 12, 16, 32]
            .contains(&width)
            .then_some(PortLink { speed, width })
    }
}

/// How to build a root port.
pub struct RootPortConfig {
    /// Port number in Link Capabilities (the `i` of root port `i`).
    pub port_number: u8,
    /// Secondary (and subordinate) bus; the primary bus is 0 (`for_port` sets a
    /// planned port's own).
    pub secondary_bus: u8,
    /// Physical slot number, if the port should report a slot.
    pub slot: Option<u16>,
    pub link_speed: LinkSpeed,
    /// Lanes: 1, 2, 4, 8, 16 or 32.
    pub link_width: u8,
    /// Offer an MSI capability delivering through this router.
    pub msi: Option<Box<dyn MsiRouter>>,
}

impl RootPortConfig {
    /// Gen3 x16, no slot, no MSI.
    pub fn new(port_number: u8, secondary_bus: u8) -> Self {
        Self {
            port_number,
            secondary_bus,
            slot: None,
            link_speed: LinkSpeed::Gen3,
            link_width: 16,
            msi: None,
        }
    }
}

// Offsets inside the PCI Express capability (PCIe Base 7.5.3).
const EXP_FLAGS: usize = 0x02;
const EXP_DEVCTL: usize = 0x08;
const EXP_DEVSTA: usize = 0x0a;
const EXP_LNKCAP: usize = 0x0c;
const EXP_LNKCTL: usize = 0x10;
const EXP_LNKSTA: usize = 0x12;
const EXP_SLTCAP: usize = 0x14;
const EXP_SLTSTA: usize = 0x1a;
const EXP_RTCTL: usize = 0x1c;
const EXP_RTSTA: usize = 0x20;
const EXP_LNKCAP2: usize = 0x2c;
const EXP_LNKCTL2: usize = 0x30;
/// Capability length through Slot Status 2.
const EXP_LEN: usize = 0x3c;

const EXP_VERSION_2: u16 = 2;
const EXP_TYPE_ROOT_PORT: u16 = 4 << 4;
const EXP_SLOT_IMPLEMENTED: u16 = 1 << 8;
const LNKCAP_DLL_ACTIVE_REPORTING: u32 = 1 << 20;
const LNKSTA_SLOT_CLOCK: u16 = 1 << 12;
const LNKSTA_DLL_ACTIVE: u16 = 1 << 13;
const SLTCAP_NO_COMMAND_COMPLETED: u32 = 1 << 18;
const SLTSTA_PRESENCE_DETECT: u16 = 1 << 6;

// PCI Power Management capability.
const PM_PMC_VERSION_1_2: u16 = 3;
const PM_CTRL: usize = 0x04;
const PM_NO_SOFT_RESET: u16 = 1 << 3;
const PM_STATE_MASK: u16 = 0x3;

/// A PCIe root port function.
pub struct RootPort {
    cfg: PciConfigSpace,
    msi: Option<Msi>,
    /// Where the MSI capability's changes go (set with `msi`).
    msi_router: Option<Box<dyn MsiRouter>>,
    pm: usize,
    exp: usize,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("secondary", &self.secondary_bus())
            .field("subordinate", &self.subordinate_bus())
            .finish_non_exhaustive()
    }
}

impl RootPort {
    /// The root port the topology plan describes: its number, secondary bus and the
    /// windows it forwards, programmed as firmware leaves them; its link `link` (the
    /// host's link above the device it leads to), Gen3 x16 when that is unknown.
    pub fn for_port(plan: &resources::PortMap, link: Option<PortLink>) -> Result<Self, PciError> {
        let number = plan.slot.slot().saturating_sub(1);
        let mut config = RootPortConfig::new(number, plan.slot.secondary_bus);
        if let Some(link) = link {
            config.link_speed = link.speed;
            config.link_width = link.width;
        }
        let mut port = RootPort::new(config)?;
        // On an extra host bridge's root bus the primary bus is that bus: Linux
        // renumbers a bridge whose primary bus is not the bus it sits on.
        let bus = plan.slot.secondary_bus;
        port.set_bus_numbers(plan.slot.bdf.bus(), bus, bus);
        port.set_io_window(plan.io.clone())?;
        port.set_mem_window(plan.mem.clone())?;
        port.set_prefetchable_window(plan.prefetchable.clone())?;
        Ok(port)
    }

    pub fn new(config: RootPortConfig) -> Result<Self, PciError> {
        let ids = PciIds {
            vendor: ROOT_PORT_VENDOR_ID,
            device: ROOT_PORT_DEVICE_ID,
            class: ROOT_PORT_CLASS,
            ..PciIds::default()
        };
        let mut cfg = PciConfigSpace::new_type1(ids, ConfigSize::Pcie);
        cfg.set_interrupt_pin(1);
        let exp = add_express_capability(&mut cfg, &config)?;
        let pm = add_pm_capability(&mut cfg)?;
        let msi = match config.msi {
            Some(_) => {
                let mut m = Msi::new(1, true, false)?;
                m.add_to(&mut cfg)?;
                Some(m)
            }
            None => None,
        };
        let mut port = Self {
            cfg,
            msi,
            msi_router: config.msi,
            pm,
            exp,
        };
        let bus = config.secondary_bus;
        port.set_bus_numbers(0, bus, bus);
        port.set_io_window(None)?;
        port.set_mem_window(None)?;
        port.set_prefetchable_window(None)?;
        Ok(port)
    }

    pub fn config_space(&self) -> &PciConfigSpace {
        &self.cfg
    }

    /// Offset of the PCI Express capability.
    pub fn express_cap_offset(&self) -> usize {
        self.exp
    }

    pub fn set_bus_numbers(&mut self, primary: u8, secondary: u8, subordinate: u8) {
        self.cfg
            .set_bytes(PRIMARY_BUS, &[primary, secondary, subordinate]);
    }

    pub fn secondary_bus(&self) -> u8 {
        self.cfg.read_u8(SECONDARY_BUS)
    }

    pub fn subordinate_bus(&self) -> u8 {
        self.cfg.read_u8(SUBORDINATE_BUS)
    }

    /// Program the I/O window (4 KiB granular, below 64 KiB); `None` closes it.
    pub fn set_io_window(&mut self, w: Option<RangeInclusive<u64>>) -> Result<(), PciError> {
        let (base, limit) = match w {
            None => (0xf0, 0x00),
            Some(r) => {
                check_window("I/O", &r, 0xfff, 0xffff)?;
                ((*r.start() >> 8) as u8 & 0xf0, (*r.end() >> 8) as u8 & 0xf0)
            }
        };
        self.cfg.set_bytes(IO_BASE, &[base, limit]);
        Ok(())
    }

    /// Program the non-prefetchable memory window (1 MiB granular, below 4 GiB).
    pub fn set_mem_window(&mut self, w: Option<RangeInclusive<u64>>) -> Result<(), PciError> {
        let (base, limit) = match w {
            None => (0xfff0, 0),
            Some(r) => {
                check_window("memory", &r, 0xf_ffff, u64::from(u32::MAX))?;
                (
                    (*r.start() >> 16) as u16 & 0xfff0,
                    (*r.end() >> 16) as u16 & 0xfff0,
                )
            }
        };
        self.cfg.set_u16(MEMORY_BASE, base);
        self.cfg.set_u16(MEMORY_LIMIT, limit);
        Ok(())
    }

    /// Program the 64-bit prefetchable window (1 MiB granular).
    pub fn set_prefetchable_window(
        &mut self,
        w: Option<RangeInclusive<u64>>,
    ) -> Result<(), PciError> {
        let (base, limit) = match w {
            None => (0x0000_0000_fff0_0000, 0),
            Some(r) => {
                check_window("prefetchable", &r, 0xf_ffff, u64::MAX)?;
                (*r.start(), *r.end())
            }
        };
        // Bit 0 of base and limit says the window decodes 64 bits (read-only).
        self.cfg
            .set_u16(PREF_MEMORY_BASE, (base >> 16) as u16 & 0xfff0 | 1);
        self.cfg
            .set_u16(PREF_MEMORY_LIMIT, (limit >> 16) as u16 & 0xfff0 | 1);
        self.cfg.set_u32(PREF_BASE_UPPER32, (base >> 32) as u32);
        self.cfg.set_u32(PREF_LIMIT_UPPER32, (limit >> 32) as u32);
        Ok(())
    }

    /// The I/O window as programmed (by us or the guest), if open.
    pub fn io_window(&self) -> Option<RangeInclusive<u64>> {
        let base = u64::from(self.cfg.read_u8(IO_BASE) & 0xf0) << 8;
        let limit = u64::from(self.cfg.read_u8(IO_LIMIT) & 0xf0) << 8 | 0xfff;
        (base <= limit).then_some(base..=limit)
    }

    pub fn mem_window(&self) -> Option<RangeInclusive<u64>> {
        let base = u64::from(self.cfg.read_u16(MEMORY_BASE) & 0xfff0) << 16;
        let limit = u64::from(self.cfg.read_u16(MEMORY_LIMIT) & 0xfff0) << 16 | 0xf_ffff;
        (base <= limit).then_some(base..=limit)
    }

    pub fn prefetchable_window(&self) -> Option<RangeInclusive<u64>> {
        let lo = |off| u64::from(self.cfg.read_u16(off) & 0xfff0) << 16;
        let base = lo(PREF_MEMORY_BASE) | u64::from(self.cfg.read_u32(PREF_BASE_UPPER32)) << 32;
        let limit = lo(PREF_MEMORY_LIMIT)
            | u64::from(self.cfg.read_u32(PREF_LIMIT_UPPER32)) << 32
            | 0xf_ffff;
        (base <= limit).then_some(base..=limit)
    }

    /// Whether the guest holds the secondary bus in reset (bridge control bit 6).
    pub fn secondary_bus_reset(&self) -> bool {
        self.cfg.read_u16(BRIDGE_CONTROL) & BRIDGE_CONTROL_SECONDARY_RESET != 0
    }

    pub fn msi(&self) -> Option<&Msi> {
        self.msi.as_ref()
    }
}

/// The dwords holding the I/O, memory and prefetchable windows (0x1c..=0x33).
const WINDOW_REGS: std::ops::RangeInclusive<usize> = 7..=12;

fn check_window(
    window: &'static str,
    r: &RangeInclusive<u64>,
    gran: u64,
    max: u64,
) -> Result<(), PciError> {
    let (start, end) = (*r.start(), *r.end());
    if start > end || start & gran != 0 || end & gran != gran || end > max {
        return Err(PciError::BadBridgeWindow { window, start, end });
    }
    Ok(())
}

fn add_express_capability(cfg: &mut PciConfigSpace, c: &RootPortConfig) -> Result<usize, PciError> {
    let mut b = [0u8; EXP_LEN];
    let put16 =
        |b: &mut [u8], off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let slot_flag = if c.slot.is_some() {
        EXP_SLOT_IMPLEMENTED
    } else {
        0
    };
    put16(
        &mut b,
        EXP_FLAGS,
        EXP_VERSION_2 | EXP_TYPE_ROOT_PORT | slot_flag,
    );
    // Device Capabilities: 128-byte max payload, role-based error reporting.
    put32(&mut b, 0x04, 1 << 15);
    // Device Control reset value: relaxed ordering, no snoop, 512-byte reads.
    put16(&mut b, EXP_DEVCTL, 0x2810);
    let (speed, width) = (c.link_speed as u16, u16::from(c.link_width & 0x3f));
    let lnkcap = u32::from(speed | width << 4) | LNKCAP_DLL_ACTIVE_REPORTING;
    put32(&mut b, EXP_LNKCAP, lnkcap | u32::from(c.port_number) << 24);
    put16(
        &mut b,
        EXP_LNKSTA,
        speed | width << 4 | LNKSTA_SLOT_CLOCK | LNKSTA_DLL_ACTIVE,
    );
    if let Some(slot) = c.slot {
        put32(
            &mut b,
            EXP_SLTCAP,
            u32::from(slot & 0x1fff) << 19 | SLTCAP_NO_COMMAND_COMPLETED,
        );
        put16(&mut b, EXP_SLTSTA, SLTSTA_PRESENCE_DETECT);
    }
    // Supported speeds vector: every speed up to the maximum.
    put32(&mut b, EXP_LNKCAP2, ((1u32 << speed) - 1) << 1);
    put16(&mut b, EXP_LNKCTL2, speed);
    let cap = cfg.add_capability(CAP_ID_PCIE, &b[2..])?;
    // Error reporting enables, relaxed ordering, payload, extended tag,
    // no snoop, read request size.
    cfg.set_wmask(cap + EXP_DEVCTL, 2, 0x79ff);
    cfg.set_w1c(cap + EXP_DEVSTA, 2, 0x000f);
    // ASPM, RCB, link disable, common clock, extended synch, autonomous width
    // disable, bandwidth interrupt enables. Retrain Link always reads 0.
    cfg.set_wmask(cap + EXP_LNKCTL, 2, 0x0edb);
    cfg.set_w1c(cap + EXP_LNKSTA, 2, 0xc000);
    cfg.set_w1c(cap + EXP_SLTSTA, 2, 0x011f);
    cfg.set_wmask(cap + EXP_RTCTL, 2, 0x000f);
    cfg.set_w1c(cap + EXP_RTSTA, 4, 0x0001_0000);
    cfg.set_wmask(cap + EXP_LNKCTL2, 2, 0x003f);
    Ok(cap)
}

fn add_pm_capability(cfg: &mut PciConfigSpace) -> Result<usize, PciError> {
    let mut body = [0u8; 6];
    body[..2].copy_from_slice(&PM_PMC_VERSION_1_2.to_le_bytes());
    body[2..4].copy_from_slice(&PM_NO_SOFT_RESET.to_le_bytes());
    let cap = cfg.add_capability(CAP_ID_PM, &body)?;
    cfg.set_wmask(cap + PM_CTRL, 2, PM_STATE_MASK.into());
    Ok(cap)
}

impl PciDevice for RootPort {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.cfg.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let pmcsr = self.pm + PM_CTRL;
        let old_pm = self.cfg.read_u16(pmcsr);
        let was_in_reset = self.secondary_bus_reset();
        let mut result = self.cfg.write(reg, offset, data);
        // Only the rising edge asks for a reset: the guest holds the bit for
        // a while and then clears it, and one reset per assertion is enough.
        result.secondary_bus_reset = !was_in_reset && self.secondary_bus_reset();
        result.bridge_windows = WINDOW_REGS.contains(&reg);
        // D1 and D2 are not supported: such a write leaves the state alone
        // (PCI PM 1.2, 5.4.1).
        if matches!(self.cfg.read_u16(pmcsr) & PM_STATE_MASK, 1 | 2) {
            self.cfg.set_u16(pmcsr, old_pm);
        }
        if let (Some(msi), Some(router)) = (&mut self.msi, &mut self.msi_router) {
            let at = reg.saturating_mul(4).saturating_add(offset as usize);
            let changes = msi.config_write(&mut self.cfg, at, data.len());
            apply_changes(router.as_mut(), &changes);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::walk_capabilities;
    use crate::pci::testutil::{Call, RecordingRouter};

    fn port() -> RootPort {
        RootPort::new(RootPortConfig::new(1, 1)).unwrap()
    }

    fn write16(p: &mut RootPort, off: usize, v: u16) -> ConfigWriteResult {
        p.config_write(off / 4, (off % 4) as u64, &v.to_le_bytes())
    }

    #[test]
    fn identifies_as_generic_root_port() {
        let mut p = port();
        assert_eq!(p.config_read(0), 0x000c_1b36);
        assert_eq!(p.config_read(2) >> 8, ROOT_PORT_CLASS);
        assert_eq!(p.config_read(3) >> 16 & 0x7f, 1);
        assert_eq!(p.config_read(15) >> 8 & 0xff, 1, "INTA");
    }

    #[test]
    fn bus_numbers_are_set_and_guest_writable() {
        let mut p = port();
        assert_eq!(p.config_read(6), 0x0001_0100);
        p.config_write(6, 0, &[0, 5, 9, 0xff]);
        assert_eq!((p.secondary_bus(), p.subordinate_bus()), (5, 9));
        assert_eq!(p.config_read(6) >> 24, 0, "secondary latency timer is 0");
    }

    #[test]
    fn window_writes_are_reported_and_other_writes_not() {
        let mut p = port();
        assert!(
            p.config_write(8, 0, &[0x00, 0xc0, 0x00, 0xc0])
                .bridge_windows
        );
        assert_eq!(p.mem_window(), Some(0xc000_0000..=0xc00f_ffff));
        assert!(p.config_write(12, 0, &[0, 0]).bridge_windows);
        assert!(!p.config_write(1, 0, &[0x06, 0x00]).bridge_windows);
        assert!(!p.config_write(15, 2, &[0x00, 0x00]).bridge_windows);
    }

    #[test]
    fn windows_start_closed() {
        let p = port();
        assert_eq!(p.io_window(), None);
        assert_eq!(p.mem_window(), None);
        assert_eq!(p.prefetchable_window(), None);
    }

    #[test]
    fn windows_round_trip_through_registers() {
        let mut p = port();
        p.set_io_window(Some(0x1000..=0x1fff)).unwrap();
        p.set_mem_window(Some(0xc000_0000..=0xc0ff_ffff)).unwrap();
        p.set_prefetchable_window(Some(0x10_0000_0000..=0x20_01ff_ffff))
            .unwrap();
        assert_eq!(p.io_window(), Some(0x1000..=0x1fff));
        assert_eq!(p.mem_window(), Some(0xc000_0000..=0xc0ff_ffff));
        assert_eq!(
            p.prefetchable_window(),
            Some(0x10_0000_0000..=0x20_01ff_ffff)
        );
        let c = p.config_space();
        assert_eq!(c.read_u32(MEMORY_BASE), 0xc0f0_c000);
        assert_eq!(c.read_u32(PREF_MEMORY_BASE), 0x01f1_0001);
        assert_eq!(c.read_u32(PREF_BASE_UPPER32), 0x10);
        assert_eq!(c.read_u32(PREF_LIMIT_UPPER32), 0x20);
    }

    #[test]
    fn guest_programmed_windows_decode() {
        let mut p = port();
        p.config_write(7, 0, &[0x20, 0x30]);
        assert_eq!(p.io_window(), Some(0x2000..=0x3fff));
        p.config_write(8, 0, &0xd010_d000u32.to_le_bytes());
        assert_eq!(p.mem_window(), Some(0xd000_0000..=0xd01f_ffff));
        // Width bits in the low nibble stay read-only.
        p.config_write(9, 0, &0u32.to_le_bytes());
        assert_eq!(p.config_space().read_u32(PREF_MEMORY_BASE), 0x0001_0001);
    }

    #[test]
    fn bad_windows_are_rejected() {
        let mut p = port();
        assert_eq!(
            p.set_io_window(Some(0x1800..=0x1fff)),
            Err(PciError::BadBridgeWindow {
                window: "I/O",
                start: 0x1800,
                end: 0x1fff
            })
        );
        assert!(p.set_io_window(Some(0xf000..=0x1_0fff)).is_err());
        assert!(p.set_mem_window(Some(0xc000_0000..=0xc00f_fffe)).is_err());
        assert!(p.set_mem_window(Some(0xfff0_0000..=0x1_000f_ffff)).is_err());
        // Base above limit (the reversed range is the point of the test).
        let (start, end) = (0x20_0000_0000, 0x10_000f_ffff);
        assert!(p.set_prefetchable_window(Some(start..=end)).is_err());
    }

    #[test]
    fn express_capability_reports_active_link() {
        let p = port();
        let c = p.config_space();
        let cap = c.find_capability(CAP_ID_PCIE).unwrap();
        assert_eq!(cap, p.express_cap_offset());
        assert_eq!(c.read_u16(cap + EXP_FLAGS), 0x0042);
        let lnkcap = c.read_u32(cap + EXP_LNKCAP);
        assert_eq!(lnkcap & 0x3ff, 3 | 16 << 4);
        assert_eq!(lnkcap >> 24, 1, "port number");
        assert_ne!(lnkcap & LNKCAP_DLL_ACTIVE_REPORTING, 0);
        let lnksta = c.read_u16(cap + EXP_LNKSTA);
        assert_eq!(lnksta & 0x3ff, 3 | 16 << 4);
        assert_ne!(lnksta & LNKSTA_DLL_ACTIVE, 0);
        assert_eq!(c.read_u32(cap + EXP_LNKCAP2), 0b1110);
    }

    #[test]
    fn sysfs_link_speeds_parse_old_and_new_forms() {
        assert_eq!(
            LinkSpeed::from_sysfs("2.5 GT/s PCIe"),
            Some(LinkSpeed::Gen1)
        );
        assert_eq!(LinkSpeed::from_sysfs("8 GT/s"), Some(LinkSpeed::Gen3));
        assert_eq!(
            LinkSpeed::from_sysfs("16.0 GT/s PCIe"),
            Some(LinkSpeed::Gen4)
        );
        assert_eq!(
            LinkSpeed::from_sysfs("64.0 GT/s PCIe"),
            Some(LinkSpeed::Gen6)
        );
        assert_eq!(LinkSpeed::from_sysfs("Unknown"), None);
        assert_eq!(LinkSpeed::from_sysfs("3.0 GT/s"), None);
    }

    #[test]
    fn sysfs_link_needs_a_known_speed_and_a_lane_count() {
        let link = PortLink::from_sysfs("16.0 GT/s PCIe", "8\n");
        assert_eq!(
            link,
            Some(PortLink {
                speed: LinkSpeed::Gen4,
                width: 8
            })
        );
        assert_eq!(PortLink::from_sysfs("16.0 GT/s PCIe", "0"), None);
        assert_eq!(PortLink::from_sysfs("16.0 GT/s PCIe", "3"), None);
        assert_eq!(PortLink::from_sysfs("Unknown", "16"), None);
    }

    fn planned_port() -> resources::PortMap {
        let topo = resources::Topology::new(&[resources::SlotRequest {
            tag: "gpu".into(),
            functions: 1,
            node: None,
        }])
        .unwrap();
        resources::PortMap {
            slot: topo.ports[0].clone(),
            io: None,
            mem: None,
            prefetchable: None,
            bars: Vec::new(),
        }
    }

    #[test]
    fn planned_port_mirrors_the_host_link() {
        let link = PortLink {
            speed: LinkSpeed::Gen5,
            width: 8,
        };
        let p = RootPort::for_port(&planned_port(), Some(link)).unwrap();
        let c = p.config_space();
        let cap = p.express_cap_offset();
        assert_eq!(c.read_u32(cap + EXP_LNKCAP) & 0x3ff, 5 | 8 << 4);
        assert_eq!(c.read_u16(cap + EXP_LNKSTA) & 0x3ff, 5 | 8 << 4);
        assert_eq!(c.read_u32(cap + EXP_LNKCAP2), 0b11_1110);
    }

    #[test]
    fn planned_port_without_a_host_link_is_gen3_x16() {
        let p = RootPort::for_port(&planned_port(), None).unwrap();
        let cap = p.express_cap_offset();
        assert_eq!(
            p.config_space().read_u16(cap + EXP_LNKSTA) & 0x3ff,
            3 | 16 << 4
        );
    }

    #[test]
    fn a_planned_port_on_an_extra_root_bus_names_it_as_primary() {
        let topo = resources::Topology::new(&[
            resources::SlotRequest {
                tag: "edu".into(),
                functions: 1,
                node: Some(0),
            },
            resources::SlotRequest {
                tag: "nvme".into(),
                functions: 1,
                node: Some(1),
            },
        ])
        .unwrap();
        let plan = resources::PortMap {
            slot: topo.ports[1].clone(),
            ..planned_port()
        };
        let mut p = RootPort::for_port(&plan, None).unwrap();
        // Root bus 2 (bus 0 decodes 0..=1), secondary and subordinate bus 3.
        assert_eq!(p.config_read(PRIMARY_BUS / 4) & 0xff_ffff, 0x03_0302);
    }

    #[test]
    fn retrain_link_reads_zero_and_control_bits_stick() {
        let mut p = port();
        let cap = p.express_cap_offset();
        write16(&mut p, cap + EXP_LNKCTL, 0x0060);
        assert_eq!(p.config_space().read_u16(cap + EXP_LNKCTL), 0x0040);
    }

    #[test]
    fn device_status_errors_clear_on_write_one() {
        let mut p = port();
        let cap = p.express_cap_offset();
        p.cfg.set_u16(cap + EXP_DEVSTA, 0x000f);
        write16(&mut p, cap + EXP_DEVSTA, 0x0005);
        assert_eq!(p.config_space().read_u16(cap + EXP_DEVSTA), 0x000a);
    }

    #[test]
    fn slot_is_reported_when_configured() {
        let mut cfg = RootPortConfig::new(2, 2);
        cfg.slot = Some(7);
        cfg.link_speed = LinkSpeed::Gen4;
        cfg.link_width = 8;
        let p = RootPort::new(cfg).unwrap();
        let c = p.config_space();
        let cap = p.express_cap_offset();
        assert_ne!(c.read_u16(cap + EXP_FLAGS) & EXP_SLOT_IMPLEMENTED, 0);
        assert_eq!(c.read_u32(cap + EXP_SLTCAP) >> 19, 7);
        assert_ne!(c.read_u16(cap + EXP_SLTSTA) & SLTSTA_PRESENCE_DETECT, 0);
        assert_eq!(c.read_u16(cap + EXP_LNKSTA) & 0x3ff, 4 | 8 << 4);
    }

    #[test]
    fn power_state_accepts_d3hot_rejects_d1() {
        let mut p = port();
        let pmcsr = p.config_space().find_capability(CAP_ID_PM).unwrap() + PM_CTRL;
        write16(&mut p, pmcsr, 3);
        assert_eq!(p.config_space().read_u16(pmcsr) & PM_STATE_MASK, 3);
        write16(&mut p, pmcsr, 1);
        assert_eq!(p.config_space().read_u16(pmcsr) & PM_STATE_MASK, 3);
        write16(&mut p, pmcsr, 0);
        assert_eq!(p.config_space().read_u16(pmcsr), PM_NO_SOFT_RESET);
    }

    #[test]
    fn capability_list_without_and_with_msi() {
        let p = port();
        let ids: Vec<u8> = walk_capabilities(p.config_space().as_bytes())
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(ids, [CAP_ID_PCIE, CAP_ID_PM]);
        let mut cfg = RootPortConfig::new(1, 1);
        cfg.msi = Some(Box::new(RecordingRouter::default()));
        let p = RootPort::new(cfg).unwrap();
        let ids: Vec<u8> = walk_capabilities(p.config_space().as_bytes())
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(ids, [CAP_ID_PCIE, CAP_ID_PM, CAP_ID_MSI]);
    }

    #[test]
    fn msi_enable_reaches_router() {
        let router = RecordingRouter::default();
        let mut cfg = RootPortConfig::new(1, 1);
        cfg.msi = Some(Box::new(router.clone()));
        let mut p = RootPort::new(cfg).unwrap();
        let cap = p.config_space().find_capability(CAP_ID_MSI).unwrap();
        write16(&mut p, cap + 2, 1);
        assert_eq!(router.take()[0], Call::Enable(Some(1)));
        assert_eq!(p.msi().and_then(Msi::enabled_vectors), Some(1));
    }

    #[test]
    fn secondary_bus_reset_bit_is_visible() {
        let mut p = port();
        write16(&mut p, BRIDGE_CONTROL, BRIDGE_CONTROL_SECONDARY_RESET);
        assert!(p.secondary_bus_reset());
    }

    #[test]
    fn setting_secondary_bus_reset_is_reported() {
        let mut p = port();
        let r = write16(&mut p, BRIDGE_CONTROL, BRIDGE_CONTROL_SECONDARY_RESET);
        assert!(r.secondary_bus_reset);
    }

    #[test]
    fn holding_secondary_bus_reset_is_not_reported_again() {
        let mut p = port();
        write16(&mut p, BRIDGE_CONTROL, BRIDGE_CONTROL_SECONDARY_RESET);
        // Rewriting bridge control with the bit still set (e.g. toggling
        // another bit) is not a new reset.
        let r = write16(&mut p, BRIDGE_CONTROL, BRIDGE_CONTROL_SECONDARY_RESET | 1);
        assert!(!r.secondary_bus_reset);
    }

    #[test]
    fn clearing_secondary_bus_reset_is_not_reported() {
        let mut p = port();
        write16(&mut p, BRIDGE_CONTROL, BRIDGE_CONTROL_SECONDARY_RESET);
        let r = write16(&mut p, BRIDGE_CONTROL, 0);
        assert!(!r.secondary_bus_reset);
        assert!(!p.secondary_bus_reset());
    }

    #[test]
    fn other_bridge_control_bits_do_not_report_a_reset() {
        let mut p = port();
        // Parity error response and SERR# enable (bits 0 and 1).
        let r = write16(&mut p, BRIDGE_CONTROL, 3);
        assert!(!r.secondary_bus_reset);
    }

    #[test]
    fn huge_register_index_is_dropped() {
        let mut p = port();
        let r = p.config_write(usize::MAX, 3, &[1]);
        assert_eq!(r, ConfigWriteResult::default());
    }
}
