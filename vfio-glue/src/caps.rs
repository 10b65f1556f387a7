//! The guest's view of a passed-through function's PCIe extended capability
//! list (PCIe Base 7.6) with SR-IOV, ARI and Resizable BAR removed.
//!
//! Those three are hidden because the guest cannot use them safely through
//! VFIO: SR-IOV would let it spawn VFs the host owns, ARI changes how the
//! guest numbers functions behind our root port, and Resizable BAR would let
//! it change a BAR size we planned mappings for. The list is read with the
//! bounded walk of `devices::pci`, so a device with a looping list cannot
//! hang the VMM.

use devices::pci::walk_ext_capabilities;

/// Extended capability IDs hidden from the guest, with the number of bytes
/// each occupies (read as zero): SR-IOV (0x10, 64 bytes, PCIe 9.3.3), ARI
/// (0x0e, 8 bytes, 7.8.7), Resizable BAR (0x15, up to 4 + 6 * 8 bytes, 7.8.6).
const HIDDEN_EXT_CAPS: [(u16, usize); 3] = [(0x10, 0x40), (0x0e, 0x08), (0x15, 0x34)];

/// An extended capability as found on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCap {
    pub id: u16,
    pub offset: usize,
    /// Bytes hidden from the guest (0 when visible).
    pub hidden_len: usize,
}

const EXT_START: usize = 0x100;

/// The guest's view of the extended capability list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtCapView {
    caps: Vec<ExtCap>,
}

impl ExtCapView {
    /// The view of a device whose extended list is `list` ((ID, offset) in
    /// list order, from the bounded [`walk_ext_capabilities`]).
    pub fn new(list: &[(u16, usize)]) -> Self {
        let caps = list
            .iter()
            .map(|&(id, offset)| {
                let hidden_len = HIDDEN_EXT_CAPS
                    .iter()
                    .find(|(h, _)| *h == id)
                    .map_or(0, |&(_, len)| len);
                ExtCap {
                    id,
                    offset,
                    hidden_len,
                }
            })
            .collect();
        ExtCapView { caps }
    }

    /// The view of a config space image.
    pub fn from_config(cfg: &[u8]) -> Self {
        Self::new(&walk_ext_capabilities(cfg))
    }

    fn visible(&self) -> impl Iterator<Item = &ExtCap> {
        self.caps.iter().filter(|c| c.hidden_len == 0)
    }

    /// Offset of the first visible capability after `offset`, in list order.
    fn next_visible(&self, after: usize) -> usize {
        let pos = self.caps.iter().position(|c| c.offset == after);
        let rest = pos.map_or(&self.caps[..0], |p| &self.caps[p + 1..]);
        rest.iter()
            .find(|c| c.hidden_len == 0)
            .map_or(0, |c| c.offset)
    }

    /// The dword the guest reads at `off` (4-aligned), given the device's
    /// dword `raw`: headers re-linked around hidden capabilities, hidden
    /// bodies read as zero. The list must start at 0x100, so when the first
    /// capability is hidden its header becomes a null capability (ID 0)
    /// pointing at the first visible one.
    pub fn read(&self, off: usize, raw: u32) -> u32 {
        if let Some(cap) = self.caps.iter().find(|c| c.offset == off) {
            let next = self.next_visible(off) as u32;
            if cap.hidden_len == 0 {
                return (raw & 0x000f_ffff) | (next << 20);
            }
            if off == EXT_START {
                let first = self.visible().next().map_or(0, |c| c.offset as u32);
                return first << 20;
            }
            return 0;
        }
        if self.hidden_at(off) {
            return 0;
        }
        raw
    }

    /// True when `off` is the header dword of a capability (its links are ours).
    pub fn is_header(&self, off: usize) -> bool {
        self.caps.iter().any(|c| c.offset == off)
    }

    /// True when `off` falls inside a hidden capability (writes are dropped).
    pub fn hidden_at(&self, off: usize) -> bool {
        self.caps
            .iter()
            .any(|c| c.hidden_len > 0 && off >= c.offset && off < c.offset + c.hidden_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(bytes: &[(usize, &[u8])]) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        for (off, b) in bytes {
            c[*off..*off + b.len()].copy_from_slice(b);
        }
        c
    }

    fn ext(id: u16, next: usize) -> [u8; 4] {
        (u32::from(id) | 1 << 16 | (next as u32) << 20).to_le_bytes()
    }

    fn dw(c: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(c[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn looping_extended_list_is_bounded() {
        let c = cfg_with(&[(0x100, &ext(0x01, 0x140)), (0x140, &ext(0x10, 0x100))]);
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.caps.len(), 2);
        assert_eq!(view.read(0x100, dw(&c, 0x100)) >> 20, 0);
    }

    #[test]
    fn hidden_capability_in_the_middle_is_skipped() {
        // AER -> SR-IOV -> LTR becomes AER -> LTR.
        let c = cfg_with(&[
            (0x100, &ext(0x01, 0x140)),
            (0x140, &ext(0x10, 0x180)),
            (0x180, &ext(0x18, 0)),
        ]);
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.read(0x100, dw(&c, 0x100)) >> 20, 0x180);
        assert_eq!(view.read(0x140, dw(&c, 0x140)), 0);
        assert_eq!(view.read(0x150, 0xdead_beef), 0);
        assert!(view.hidden_at(0x144));
        assert_eq!(view.read(0x180, dw(&c, 0x180)) & 0xffff, 0x18);
    }

    #[test]
    fn hidden_first_capability_becomes_a_null_header() {
        // ARI at 0x100, then resizable BAR, then AER.
        let c = cfg_with(&[
            (0x100, &ext(0x0e, 0x110)),
            (0x110, &ext(0x15, 0x200)),
            (0x200, &ext(0x01, 0)),
        ]);
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.read(0x100, dw(&c, 0x100)), 0x200 << 20);
        assert_eq!(view.read(0x110, dw(&c, 0x110)), 0);
        assert_eq!(view.read(0x200, dw(&c, 0x200)), dw(&c, 0x200));
    }

    #[test]
    fn all_hidden_leaves_an_empty_list() {
        let c = cfg_with(&[(0x100, &ext(0x10, 0))]);
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.read(0x100, dw(&c, 0x100)), 0);
    }

    #[test]
    fn no_extended_space_reads_through() {
        let c = vec![0xffu8; 4096];
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.read(0x100, u32::MAX), u32::MAX);
    }
}
