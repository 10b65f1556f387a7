//! Emulated PCI configuration space of one function.
//!
//! Follows PCI Local Bus 3.0 6.1-6.2 (type-0 header, command/status, BARs),
//! PCI-to-PCI Bridge 1.2 3.2 (type-1 header) and PCIe Base 7.5-7.6 (4 KiB space,
//! extended capabilities, PCIe hardwired fields). Every byte has a write mask
//! (bits the guest may change) and a write-one-to-clear mask; bits in neither
//! are read-only. BAR sizing falls out of the masks: the guest writes all ones
//! and reads back only the bits that are writable. BAR registration and move
//! detection live in `bar.rs`.

use std::fmt;

use resources::limited_debug;
use resources::LogLimiter;

use super::bar::BarSlot;
use super::error::PciError;
use super::regs::*;
use super::ConfigWriteResult;

/// Config space of a conventional PCI function.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;
/// Config space of a PCIe function (PCIe Base 7.2.2).
pub const PCIE_CONFIG_SPACE_SIZE: usize = 4096;

static BAD_WRITE: LogLimiter = LogLimiter::new();

/// How much config space the function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSize {
    /// 256 bytes (conventional PCI).
    Pci,
    /// 4 KiB, with extended capabilities from 0x100.
    Pcie,
}

/// Which header layout the function has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderType {
    /// Type 0: an endpoint (or host bridge), six BARs.
    Normal,
    /// Type 1: a PCI-to-PCI bridge (or PCIe root/switch port), two BARs.
    Bridge,
}

/// Identification registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    /// Base class << 16 | sub-class << 8 | programming interface.
    pub class: u32,
    pub revision: u8,
    /// Type-0 only.
    pub subsystem_vendor: u16,
    /// Type-0 only.
    pub subsystem: u16,
}

/// Config space with per-bit access semantics.
pub struct PciConfigSpace {
    pub(super) data: Vec<u8>,
    pub(super) wmask: Vec<u8>,
    w1c: Vec<u8>,
    header: HeaderType,
    pub(super) bars: [BarSlot; 7],
    cap_next: usize,
    last_cap: Option<usize>,
    ext_next: usize,
    last_ext_cap: Option<usize>,
}

impl fmt::Debug for PciConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("header", &self.header)
            .field("size", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl PciConfigSpace {
    fn new(size: ConfigSize, header: HeaderType, ids: &PciIds) -> Self {
        let len = match size {
            ConfigSize::Pci => PCI_CONFIG_SPACE_SIZE,
            ConfigSize::Pcie => PCIE_CONFIG_SPACE_SIZE,
        };
        let mut c = Self {
            data: vec![0; len],
            wmask: vec![0; len],
            w1c: vec![0; len],
            header,
            bars: [BarSlot::Empty; 7],
            cap_next: CAPABILITY_START,
            last_cap: None,
            ext_next: EXT_CAPABILITY_START,
            last_ext_cap: None,
        };
        c.set_u16(VENDOR_ID, ids.vendor);
        c.set_u16(DEVICE_ID, ids.device);
        c.set_u8(REVISION_ID, ids.revision);
        c.set_u8(CLASS_PROG, ids.class as u8);
        c.set_u16(CLASS_PROG + 1, (ids.class >> 8) as u16);
        c.set_wmask(COMMAND, 2, COMMAND_WRITABLE.into());
        c.set_w1c(STATUS, 2, STATUS_RW1C.into());
        // Cache line size is read-write for compatibility; the latency timer is
        // hardwired to 0 on PCIe and unused by us otherwise.
        c.set_wmask(CACHE_LINE_SIZE, 1, 0xff);
        c.set_wmask(INTERRUPT_LINE, 1, 0xff);
        c
    }

    /// A type-0 (endpoint) header.
    pub fn new_type0(ids: PciIds, size: ConfigSize) -> Self {
        let mut c = Self::new(size, HeaderType::Normal, &ids);
        c.set_u8(HEADER_TYPE, HEADER_TYPE_NORMAL);
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem);
        c
    }

    /// A type-1 (bridge) header with the bus-number, window and bridge-control
    /// registers writable. The I/O window decodes 16 bits (x86 port space) and
    /// the prefetchable window 64 bits.
    pub fn new_type1(ids: PciIds, size: ConfigSize) -> Self {
        let mut c = Self::new(size, HeaderType::Bridge, &ids);
        c.set_u8(HEADER_TYPE, HEADER_TYPE_BRIDGE);
        c.set_wmask(PRIMARY_BUS, 3, 0xff_ffff);
        // Base/limit bits 15:12 of I/O, 31:20 of memory are writable; the low
        // nibble says the decode width (0 = 16-bit I/O, 1 = 64-bit prefetchable).
        c.set_wmask(IO_BASE, 2, 0xf0f0);
        c.set_w1c(SECONDARY_STATUS, 2, STATUS_RW1C.into());
        c.set_wmask(MEMORY_BASE, 4, 0xfff0_fff0);
        c.set_wmask(PREF_MEMORY_BASE, 4, 0xfff0_fff0);
        c.set_u32(PREF_MEMORY_BASE, 0x0001_0001);
        c.set_wmask(PREF_BASE_UPPER32, 4, 0xffff_ffff);
        c.set_wmask(PREF_LIMIT_UPPER32, 4, 0xffff_ffff);
        c.set_wmask(BRIDGE_CONTROL, 2, BRIDGE_CONTROL_WRITABLE.into());
        c
    }

    pub fn header_type(&self) -> HeaderType {
        self.header
    }

    /// Config space length in bytes (256 or 4096).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Always false: config space holds at least the header.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The raw bytes, as the guest would read them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    fn slice(&self, offset: usize, len: usize) -> Option<&[u8]> {
        self.data.get(offset..offset.checked_add(len)?)
    }

    /// VMM-side read; out-of-range offsets read as all ones.
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.data.get(offset).copied().unwrap_or(0xff)
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        self.slice(offset, 2)
            .map_or(0xffff, |b| u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        self.slice(offset, 4)
            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// VMM-side write ignoring the guest masks; out-of-range bytes are dropped.
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        debug_assert!(
            offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.data.len()),
            "config write past end"
        );
        for (i, b) in bytes.iter().enumerate() {
            if let Some(d) = offset.checked_add(i).and_then(|at| self.data.get_mut(at)) {
                *d = *b;
            }
        }
    }

    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_mask(mask: &mut [u8], offset: usize, len: usize, bits: u32) {
        debug_assert!(
            len <= 4 && offset.checked_add(len).is_some_and(|end| end <= mask.len()),
            "mask past end"
        );
        for (i, b) in bits.to_le_bytes().iter().take(len).enumerate() {
            if let Some(m) = offset.checked_add(i).and_then(|at| mask.get_mut(at)) {
                *m = *b;
            }
        }
    }

    /// Make the `len` (1..=4) bytes at `offset` guest-writable where `bits` is set.
    pub fn set_wmask(&mut self, offset: usize, len: usize, bits: u32) {
        Self::set_mask(&mut self.wmask, offset, len, bits);
    }

    /// Make bits write-one-to-clear (status bits the guest acknowledges).
    pub fn set_w1c(&mut self, offset: usize, len: usize, bits: u32) {
        Self::set_mask(&mut self.w1c, offset, len, bits);
    }

    pub(super) fn wmask_u32(&self, offset: usize) -> u32 {
        self.wmask
            .get(offset..offset.saturating_add(4))
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Set or clear the multi-function bit (function 0 of a multi-function device).
    pub fn set_multifunction(&mut self, on: bool) {
        let h = self.read_u8(HEADER_TYPE) & !HEADER_TYPE_MULTIFUNCTION;
        self.set_u8(
            HEADER_TYPE,
            h | if on { HEADER_TYPE_MULTIFUNCTION } else { 0 },
        );
    }

    /// INTx pin: 0 none, 1..=4 INTA..INTD.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_u8(INTERRUPT_PIN, pin);
    }

    /// Guest read of dword register `reg`; outside the space reads all ones.
    pub fn read_reg(&self, reg: usize) -> u32 {
        reg.checked_mul(4).map_or(u32::MAX, |o| self.read_u32(o))
    }

    /// Byte range of a guest access, if it is 1, 2 or 4 bytes inside one register.
    fn guest_range(&self, reg: usize, offset: u64, len: usize) -> Option<usize> {
        let offset = usize::try_from(offset).ok().filter(|o| *o < 4)?;
        if !matches!(len, 1 | 2 | 4) || offset + len > 4 {
            return None;
        }
        // `reg` comes from callers that may not have bounded it: never wrap.
        let start = reg.checked_mul(4)?.checked_add(offset)?;
        (start.checked_add(len)? <= self.data.len()).then_some(start)
    }

    /// Guest write of `data` at byte `offset` of register `reg`, honouring the
    /// masks. Reports decode switches and moves of enabled BARs.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWriteResult {
        let Some(start) = self.guest_range(reg, offset, data.len()) else {
            limited_debug!(
                BAD_WRITE,
                "dropped config write reg {reg:#x}+{offset} len {}",
                data.len()
            );
            return ConfigWriteResult::default();
        };
        let old_cmd = self.command();
        let old_rom = self.rom_enable_bit();
        for (i, &v) in data.iter().enumerate() {
            let at = start + i;
            let (w, c) = (self.wmask[at], self.w1c[at]);
            self.data[at] = ((self.data[at] & !w) | (v & w)) & !(v & c);
        }
        let new_cmd = self.command();
        let changed = old_cmd ^ new_cmd;
        let decode = |bit: u16| (changed & bit != 0).then_some(new_cmd & bit != 0);
        let new_rom = self.rom_enable_bit();
        ConfigWriteResult {
            bar_moves: self.take_bar_moves(),
            mem_decode: decode(COMMAND_MEMORY),
            io_decode: decode(COMMAND_IO),
            rom_decode: new_rom.filter(|_| new_rom != old_rom),
            ..ConfigWriteResult::default()
        }
    }

    /// Append a capability with `body` (the bytes after the ID and next
    /// pointer), dword-aligned, to the list; returns its offset. The body is
    /// read-only until the caller widens masks with [`Self::set_wmask`].
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciError> {
        let len = body.len() + 2;
        let offset = self.cap_next;
        let end = offset + len;
        if end > PCI_CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpaceFull { id: id.into(), len });
        }
        self.set_bytes(offset, &[id, 0]);
        self.set_bytes(offset + 2, body);
        match self.last_cap {
            Some(prev) => self.set_u8(prev + 1, offset as u8),
            None => self.set_u8(CAPABILITIES_POINTER, offset as u8),
        }
        let status = self.read_u16(STATUS);
        self.set_u16(STATUS, status | STATUS_CAPABILITIES_LIST);
        self.last_cap = Some(offset);
        self.cap_next = (end + 3) & !3;
        Ok(offset)
    }

    /// Append a PCIe extended capability (header: ID, `version`, next) with
    /// `body` after the 4-byte header; returns its offset (the first is at 0x100).
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
    ) -> Result<usize, PciError> {
        if self.data.len() < PCIE_CONFIG_SPACE_SIZE {
            return Err(PciError::NoExtendedConfigSpace { id });
        }
        let len = body.len() + 4;
        let offset = self.ext_next;
        let end = offset + len;
        if end > PCIE_CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpaceFull { id, len });
        }
        self.set_u32(offset, u32::from(id) | u32::from(version & 0xf) << 16);
        self.set_bytes(offset + 4, body);
        if let Some(prev) = self.last_ext_cap {
            let h = self.read_u32(prev) & 0x000f_ffff;
            self.set_u32(prev, h | (offset as u32) << 20);
        }
        self.last_ext_cap = Some(offset);
        self.ext_next = (end + 3) & !3;
        Ok(offset)
    }

    /// Offset of the first capability `id`.
    pub fn find_capability(&self, id: u8) -> Option<usize> {
        walk_capabilities(&self.data)
            .into_iter()
            .find(|c| c.0 == id)
            .map(|c| c.1)
    }

    /// Offset of the first extended capability `id`.
    pub fn find_ext_capability(&self, id: u16) -> Option<usize> {
        walk_ext_capabilities(&self.data)
            .into_iter()
            .find(|c| c.0 == id)
            .map(|c| c.1)
    }
}

/// The capability list of a config space image as (ID, offset), in list order.
/// The walk stops at a null pointer, a pointer into the header or past 0xff, or
/// a pointer it has already followed, so a corrupt (e.g. device-provided) list
/// cannot loop.
pub fn walk_capabilities(cfg: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let status = cfg.get(STATUS).copied().unwrap_or(0);
    if u16::from(status) & STATUS_CAPABILITIES_LIST == 0 {
        return out;
    }
    let mut seen = [false; PCI_CONFIG_SPACE_SIZE / 4];
    let mut ptr = cfg.get(CAPABILITIES_POINTER).copied().unwrap_or(0) as usize & !3;
    while ptr >= CAPABILITY_START && ptr + 1 < cfg.len().min(PCI_CONFIG_SPACE_SIZE) {
        if std::mem::replace(&mut seen[ptr / 4], true) {
            log::debug!("capability list loops at {ptr:#x}");
            break;
        }
        out.push((cfg[ptr], ptr));
        ptr = cfg[ptr + 1] as usize & !3;
    }
    out
}

/// The extended capability list (PCIe Base 7.6) as (ID, offset), bounded like
/// [`walk_capabilities`]. An all-zero or all-ones header ends the list.
pub fn walk_ext_capabilities(cfg: &[u8]) -> Vec<(u16, usize)> {
    let mut out = Vec::new();
    let mut seen = [false; PCIE_CONFIG_SPACE_SIZE / 4];
    let mut ptr = EXT_CAPABILITY_START;
    while ptr >= EXT_CAPABILITY_START && ptr + 4 <= cfg.len().min(PCIE_CONFIG_SPACE_SIZE) {
        let h = u32::from_le_bytes([cfg[ptr], cfg[ptr + 1], cfg[ptr + 2], cfg[ptr + 3]]);
        if h == 0 || h == u32::MAX {
            break;
        }
        if std::mem::replace(&mut seen[ptr / 4], true) {
            log::debug!("extended capability list loops at {ptr:#x}");
            break;
        }
        out.push(((h & 0xffff) as u16, ptr));
        ptr = (h >> 20) as usize & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1234,
            device: 0x5678,
            class: 0x0c_0330,
            revision: 2,
            subsystem_vendor: 0xaaaa,
            subsystem: 0xbbbb,
        }
    }

    fn type0() -> PciConfigSpace {
        PciConfigSpace::new_type0(ids(), ConfigSize::Pcie)
    }

    #[test]
    fn identification_registers() {
        let c = type0();
        assert_eq!(c.read_reg(0), 0x5678_1234);
        assert_eq!(c.read_reg(2), 0x0c03_3002);
        assert_eq!(c.read_reg(0x2c / 4), 0xbbbb_aaaa);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
    }

    #[test]
    fn id_registers_are_read_only() {
        let mut c = type0();
        c.write(0, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read_reg(0), 0x5678_1234);
    }

    #[test]
    fn command_writes_only_implemented_bits() {
        let mut c = type0();
        c.write(1, 0, &[0xff, 0xff]);
        assert_eq!(c.command(), COMMAND_WRITABLE);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = type0();
        c.set_u16(STATUS, 0xf900 | STATUS_CAPABILITIES_LIST);
        // Writing ones to bits 15 and 13 clears only those; 0x10 stays (read-only).
        c.write(1, 2, &[0x10, 0xa0]);
        assert_eq!(c.read_u16(STATUS), 0x5900 | STATUS_CAPABILITIES_LIST);
        // Writing zeros changes nothing.
        c.write(1, 2, &[0, 0]);
        assert_eq!(c.read_u16(STATUS), 0x5900 | STATUS_CAPABILITIES_LIST);
    }

    #[test]
    fn command_write_does_not_touch_status() {
        let mut c = type0();
        c.set_u16(STATUS, 0x8000);
        c.write(1, 0, &[0x02, 0x00, 0xff, 0xff]);
        assert_eq!(c.read_u16(STATUS), 0);
        assert_eq!(c.command(), COMMAND_MEMORY);
    }

    #[test]
    fn decode_changes_are_reported() {
        let mut c = type0();
        let r = c.write(1, 0, &[0x03]);
        assert_eq!((r.mem_decode, r.io_decode), (Some(true), Some(true)));
        let r = c.write(1, 0, &[0x03]);
        assert_eq!((r.mem_decode, r.io_decode), (None, None));
        let r = c.write(1, 0, &[0x01]);
        assert_eq!((r.mem_decode, r.io_decode), (Some(false), None));
    }

    #[test]
    fn bad_guest_accesses_are_dropped() {
        let mut c = type0();
        c.write(1, 3, &[0xff, 0xff]);
        c.write(1, 0, &[0xff; 3]);
        c.write(1, 4, &[0xff]);
        c.write(usize::MAX, 0, &[0xff]);
        c.write(1024, 0, &[0xff]);
        assert_eq!(c.command(), 0);
        assert_eq!(c.read_reg(1024), u32::MAX);
        assert_eq!(c.read_reg(usize::MAX), u32::MAX);
    }

    #[test]
    fn huge_register_indices_are_dropped_not_wrapped() {
        let mut c = type0();
        let before = c.as_bytes().to_vec();
        // reg * 4 fits in usize, but adding the offset or the length would wrap.
        for reg in [usize::MAX / 4, usize::MAX / 4 - 1, usize::MAX >> 1] {
            for offset in 0..4 {
                let r = c.write(reg, offset, &[0xff]);
                assert_eq!(r, ConfigWriteResult::default(), "reg {reg:#x}+{offset}");
                c.write(reg, offset, &[0xff; 4]);
            }
            assert_eq!(c.read_reg(reg), u32::MAX);
        }
        c.write(1, u64::MAX, &[0xff]);
        assert_eq!(c.as_bytes(), &before[..]);
        assert_eq!(c.read_u32(usize::MAX - 1), u32::MAX);
        assert_eq!(c.wmask_u32(usize::MAX - 2), 0);
    }

    #[test]
    fn conventional_space_ends_at_256() {
        let c = PciConfigSpace::new_type0(ids(), ConfigSize::Pci);
        assert_eq!(c.len(), 256);
        assert_eq!(c.read_reg(64), u32::MAX);
    }

    #[test]
    fn type1_bridge_registers_have_masks() {
        let mut c = PciConfigSpace::new_type1(ids(), ConfigSize::Pcie);
        assert_eq!(c.read_u8(HEADER_TYPE), HEADER_TYPE_BRIDGE);
        c.write(6, 0, &[0xff; 4]);
        // Bus numbers writable, secondary latency timer hardwired 0.
        assert_eq!(c.read_reg(6), 0x00ff_ffff);
        c.write(7, 0, &[0xff, 0xff]);
        assert_eq!(c.read_u16(IO_BASE), 0xf0f0);
        c.write(8, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(8), 0xfff0_fff0);
        c.write(9, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(9), 0xfff1_fff1);
        c.write(15, 2, &[0xff, 0xff]);
        assert_eq!(c.read_u16(BRIDGE_CONTROL), BRIDGE_CONTROL_WRITABLE);
    }

    #[test]
    fn multifunction_bit_sets_and_clears() {
        let mut c = type0();
        c.set_multifunction(true);
        assert_eq!(c.read_u8(HEADER_TYPE), 0x80);
        c.set_multifunction(false);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
    }

    #[test]
    fn capabilities_link_in_order() {
        let mut c = type0();
        let a = c.add_capability(0x01, &[0; 6]).unwrap();
        let b = c.add_capability(0x05, &[0; 11]).unwrap();
        let d = c.add_capability(0x10, &[0; 2]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x58));
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(
            walk_capabilities(c.as_bytes()),
            vec![(1, 0x40), (5, 0x48), (0x10, 0x58)]
        );
        assert_eq!(c.find_capability(0x05), Some(0x48));
        assert_eq!(c.find_capability(0x11), None);
    }

    #[test]
    fn capability_that_does_not_fit_is_rejected() {
        let mut c = type0();
        c.add_capability(0x09, &[0; 150]).unwrap();
        assert_eq!(
            c.add_capability(0x09, &[0; 60]),
            Err(PciError::CapabilitySpaceFull { id: 9, len: 62 })
        );
    }

    #[test]
    fn capability_body_is_read_only_by_default() {
        let mut c = type0();
        let off = c.add_capability(0x09, &[0x11, 0x22]).unwrap();
        c.write(off / 4, 0, &[0xff; 4]);
        assert_eq!(c.read_u32(off), 0x2211_0009);
    }

    #[test]
    fn capability_walk_stops_on_loop() {
        let mut cfg = vec![0u8; 256];
        cfg[STATUS] = STATUS_CAPABILITIES_LIST as u8;
        cfg[CAPABILITIES_POINTER] = 0x40;
        cfg[0x40] = 0x01;
        cfg[0x41] = 0x50;
        cfg[0x50] = 0x05;
        cfg[0x51] = 0x40;
        assert_eq!(walk_capabilities(&cfg), vec![(1, 0x40), (5, 0x50)]);
    }

    #[test]
    fn capability_walk_ignores_pointer_into_header_or_past_end() {
        let mut cfg = vec![0u8; 256];
        cfg[STATUS] = STATUS_CAPABILITIES_LIST as u8;
        cfg[CAPABILITIES_POINTER] = 0x3c;
        assert!(walk_capabilities(&cfg).is_empty());
        cfg[CAPABILITIES_POINTER] = 0xff;
        cfg[0xfc] = 0x07;
        // 0xff & !3 = 0xfc; its next pointer at 0xfd is 0, ending the walk.
        assert_eq!(walk_capabilities(&cfg), vec![(7, 0xfc)]);
        assert!(walk_capabilities(&cfg[..0x30]).is_empty());
    }

    #[test]
    fn capability_walk_needs_status_bit() {
        let mut cfg = vec![0u8; 256];
        cfg[CAPABILITIES_POINTER] = 0x40;
        cfg[0x40] = 0x01;
        assert!(walk_capabilities(&cfg).is_empty());
    }

    #[test]
    fn ext_capabilities_chain_from_0x100() {
        let mut c = type0();
        let a = c.add_ext_capability(0x0001, 2, &[0; 0x3c]).unwrap();
        let b = c.add_ext_capability(0x000b, 1, &[0; 4]).unwrap();
        assert_eq!((a, b), (0x100, 0x140));
        assert_eq!(c.read_u32(0x100), 0x1402_0001);
        assert_eq!(
            walk_ext_capabilities(c.as_bytes()),
            vec![(1, 0x100), (0xb, 0x140)]
        );
        assert_eq!(c.find_ext_capability(0xb), Some(0x140));
    }

    #[test]
    fn ext_capability_needs_pcie_space() {
        let mut c = PciConfigSpace::new_type0(ids(), ConfigSize::Pci);
        assert_eq!(
            c.add_ext_capability(1, 1, &[]),
            Err(PciError::NoExtendedConfigSpace { id: 1 })
        );
    }

    #[test]
    fn ext_capability_walk_stops_on_loop_and_all_ones() {
        let mut cfg = vec![0u8; 4096];
        cfg[0x100..0x104].copy_from_slice(&(0x2000_0001u32).to_le_bytes());
        cfg[0x200..0x204].copy_from_slice(&(0x1000_0002u32).to_le_bytes());
        assert_eq!(walk_ext_capabilities(&cfg), vec![(1, 0x100), (2, 0x200)]);
        cfg[0x100..0x104].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(walk_ext_capabilities(&cfg).is_empty());
    }

    #[test]
    fn interrupt_line_writable_pin_read_only() {
        let mut c = type0();
        c.set_interrupt_pin(1);
        c.write(15, 0, &[0x0b, 0x04]);
        assert_eq!(c.read_u8(INTERRUPT_LINE), 0x0b);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
    }
}
