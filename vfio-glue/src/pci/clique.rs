//! The NVIDIA GPUDirect peer-to-peer clique capability: a vendor-specific capability
//! (PCI Local Bus 3.0, 6.7: ID 0x09) the VMM adds to an NVIDIA GPU's config space so
//! that the guest driver knows which GPUs may exchange peer-to-peer DMA (the ones
//! with the same clique ID). Layout as NVIDIA's virtualisation note describes it and
//! QEMU's `x-nv-gpudirect-clique` writes it: 8 bytes,
//!
//! | byte | value |
//! |------|-------|
//! | 0    | 0x09 (vendor specific) |
//! | 1    | next capability (0: last) |
//! | 2    | 8 (length) |
//! | 3-5  | "P2P" |
//! | 6    | bits 2:0 version (0), bits 6:3 clique ID (0-15), bit 7 reserved |
//! | 7    | 0 |
//!
//! It sits at 0xC8, or at 0xD4 when a device capability occupies 0xC8 (newer GPUs keep
//! MSI-X there), and is appended to the end of the device's capability list. The
//! guest sees it read-only; nothing of it reaches the device.

use devices::pci::regs::{
    CAPABILITIES_POINTER as CAPABILITY_LIST, STATUS, STATUS_CAPABILITIES_LIST,
};

use super::setup::u16_at;

/// PCI vendor ID of NVIDIA: only its functions get the capability.
pub const NVIDIA_VENDOR_ID: u16 = 0x10de;
/// Vendor-specific capability ID.
const CAP_ID_VENDOR: u8 = 0x09;
/// Capability length.
const LEN: usize = 8;
/// Where the capability may go, in order of preference.
const OFFSETS: [usize; 2] = [0xc8, 0xd4];
/// Largest clique ID: four bits.
pub const MAX_CLIQUE: u8 = 15;
/// Status register: capability list present.
const STATUS_CAP_LIST: u32 = STATUS_CAPABILITIES_LIST as u32;

/// Why a function cannot carry the capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliqueError {
    #[error("clique {0} is above {MAX_CLIQUE}: the ID has four bits")]
    Range(u8),
    #[error(
        "vendor {0:#06x} is not NVIDIA (0x10de): only NVIDIA GPUs read the P2P clique capability"
    )]
    NotNvidia(u16),
    #[error("class {0:#08x} is not a display controller (0x03xxxx): only NVIDIA GPUs read the P2P clique capability")]
    NotDisplay(u32),
    #[error(
        "no room at 0xc8 or 0xd4 in the standard config space: device capabilities occupy both"
    )]
    NoRoom,
}

/// The capability as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CliqueCap {
    at: usize,
    /// The config byte whose value becomes `at`: the last capability's next pointer,
    /// or the capability pointer (0x34) of a device without capabilities.
    link: usize,
    bytes: [u8; LEN],
}

/// Length of the capability at `at` in `cfg`, as far as the VMM needs it to find room.
fn cap_len(cfg: &[u8], at: usize) -> usize {
    let byte = |o: usize| cfg.get(o).copied().unwrap_or(0);
    match byte(at) {
        0x01 => 8,
        0x05 => {
            let control = u16_at(cfg, at + 2);
            let bits64 = control & (1 << 7) != 0;
            let pvm = control & (1 << 8) != 0;
            10 + if bits64 { 4 } else { 0 } + if pvm { 10 } else { 0 }
        }
        0x10 => 0x3c,
        0x11 => 12,
        CAP_ID_VENDOR => usize::from(byte(at + 2)).max(3),
        _ => 4,
    }
}

/// The device's capabilities as (offset, length), in list order, each visited once.
fn capabilities(cfg: &[u8]) -> Vec<(usize, usize)> {
    let mut caps: Vec<(usize, usize)> = Vec::new();
    if u32::from(u16_at(cfg, STATUS)) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut next = usize::from(cfg.get(CAPABILITY_LIST).copied().unwrap_or(0) & 0xfc);
    while (0x40..0x100).contains(&next) && !caps.iter().any(|(o, _)| *o == next) {
        caps.push((next, cap_len(cfg, next)));
        next = usize::from(cfg.get(next + 1).copied().unwrap_or(0) & 0xfc);
    }
    caps
}

impl CliqueCap {
    /// The capability with clique `clique` for the device whose config space is `cfg`.
    pub(crate) fn new(cfg: &[u8], clique: u8) -> Result<CliqueCap, CliqueError> {
        if clique > MAX_CLIQUE {
            return Err(CliqueError::Range(clique));
        }
        let vendor = u16_at(cfg, 0);
        if vendor != NVIDIA_VENDOR_ID {
            return Err(CliqueError::NotNvidia(vendor));
        }
        let class = u32::from_le_bytes([cfg[0x09], cfg[0x0a], cfg[0x0b], 0]);
        if class >> 16 != 0x03 {
            return Err(CliqueError::NotDisplay(class));
        }
        let caps = capabilities(cfg);
        let free = |at: usize| caps.iter().all(|(o, l)| o + l <= at || *o >= at + LEN);
        let at = OFFSETS
            .into_iter()
            .find(|a| free(*a))
            .ok_or(CliqueError::NoRoom)?;
        let link = caps.last().map_or(CAPABILITY_LIST, |(o, _)| o + 1);
        let bytes = [
            CAP_ID_VENDOR,
            0,
            LEN as u8,
            b'P',
            b'2',
            b'P',
            clique << 3,
            0,
        ];
        Ok(CliqueCap { at, link, bytes })
    }

    /// Whether the dword at `off` is the capability's own (writes there are dropped).
    pub(crate) fn covers(&self, off: usize) -> bool {
        off >= self.at && off < self.at + LEN
    }

    /// The guest's dword at `off`, given what it would read without the capability.
    pub(crate) fn patch(&self, off: usize, value: u32) -> u32 {
        if self.covers(off) {
            let i = off - self.at;
            return u32::from_le_bytes([
                self.bytes[i],
                self.bytes[i + 1],
                self.bytes[i + 2],
                self.bytes[i + 3],
            ]);
        }
        let mut v = value;
        if off == self.link & !3 {
            let shift = (self.link % 4) * 8;
            v = (v & !(0xff << shift)) | (self.at as u32) << shift;
        }
        if self.link == CAPABILITY_LIST && off == STATUS & !3 {
            v |= STATUS_CAP_LIST << 16;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NVIDIA display function with PM at 0x60 -> MSI at 0x68 -> PCIe at 0x78.
    fn gpu() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&0x1db6_10deu32.to_le_bytes());
        c[0x06] = 0x10;
        c[0x09..0x0c].copy_from_slice(&[0x00, 0x02, 0x03]);
        c[0x34] = 0x60;
        c[0x60..0x62].copy_from_slice(&[0x01, 0x68]);
        c[0x68..0x6c].copy_from_slice(&[0x05, 0x78, 0x80, 0x00]);
        c[0x78..0x7a].copy_from_slice(&[0x10, 0x00]);
        c
    }

    #[test]
    fn the_capability_reads_p2p_with_the_clique_in_bits_6_3() {
        let cap = CliqueCap::new(&gpu(), 5).unwrap();
        assert_eq!(cap.at, 0xc8);
        assert_eq!(cap.patch(0xc8, 0), u32::from_le_bytes([0x09, 0, 8, b'P']));
        assert_eq!(
            cap.patch(0xcc, 0xffff_ffff),
            u32::from_le_bytes([b'2', b'P', 5 << 3, 0])
        );
    }

    #[test]
    fn the_last_device_capability_points_at_it() {
        let cap = CliqueCap::new(&gpu(), 1).unwrap();
        assert_eq!(cap.link, 0x79);
        assert_eq!(cap.patch(0x78, 0x0002_0010), 0x0002_c810);
        assert_eq!(cap.patch(0x68, 0x0080_7805), 0x0080_7805);
    }

    #[test]
    fn a_capability_at_c8_moves_it_to_d4() {
        let mut c = gpu();
        c[0x79] = 0xc8;
        c[0xc8..0xcc].copy_from_slice(&[0x11, 0x00, 0x03, 0x00]);
        let cap = CliqueCap::new(&c, 2).unwrap();
        assert_eq!((cap.at, cap.link), (0xd4, 0xc9));
    }

    #[test]
    fn both_places_taken_is_no_room() {
        let mut c = gpu();
        c[0x79] = 0xc4;
        c[0xc4..0xc6].copy_from_slice(&[0x10, 0x00]); // PCIe: 0xc4..0x100
        assert_eq!(CliqueCap::new(&c, 2), Err(CliqueError::NoRoom));
    }

    #[test]
    fn a_device_without_capabilities_gets_the_list_started() {
        let mut c = gpu();
        c[0x06] = 0;
        c[0x34] = 0;
        let cap = CliqueCap::new(&c, 0).unwrap();
        assert_eq!(cap.link, 0x34);
        assert_eq!(cap.patch(0x34, 0), 0xc8);
        assert_eq!(cap.patch(0x04, 0x0000_0006), 0x0010_0006);
    }

    #[test]
    fn only_nvidia_display_functions_take_it() {
        let mut c = gpu();
        c[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
        assert_eq!(CliqueCap::new(&c, 1), Err(CliqueError::NotNvidia(0x8086)));
        let mut audio = gpu();
        audio[0x09..0x0c].copy_from_slice(&[0x00, 0x03, 0x04]);
        assert_eq!(
            CliqueCap::new(&audio, 1),
            Err(CliqueError::NotDisplay(0x040300))
        );
        assert_eq!(CliqueCap::new(&gpu(), 16), Err(CliqueError::Range(16)));
    }
}
