//! The guest's view of a passed-through function's PCIe extended capability
//! list (PCIe Base 7.6) with SR-IOV, ARI and Resizable BAR removed.
//!
//! Those three are hidden because the guest cannot use them safely through
//! VFIO: SR-IOV would let it spawn VFs the host owns, ARI changes how the
//! guest numbers functions behind our root port, and Resizable BAR would let
//! it change a BAR size we planned mappings for. The list is read with the
//! bounded walk of `devices::pci`, so a device with a looping list cannot
//! hang the VMM. A hidden capability's body reads as zero for the length its
//! own registers give (Resizable BAR: 4 + 8 bytes per BAR, the count in its
//! first control register), cut at the next capability and at 0x1000, so a
//! capability packed right after a short one stays visible.

use devices::pci::walk_ext_capabilities;

/// Alternative Routing-ID Interpretation (PCIe Base 7.8.7): 8 bytes.
const EXT_CAP_ARI: u16 = 0x0e;
const ARI_LEN: usize = 0x08;
/// Single Root I/O Virtualization (PCIe Base 9.3.3): registers up to the VF
/// Migration State Array Offset at +0x3c, 64 bytes.
const EXT_CAP_SRIOV: u16 = 0x10;
const SRIOV_LEN: usize = 0x40;
/// Resizable BAR (PCIe Base 7.8.6): a 4-byte header, then a capability and a
/// control register (8 bytes) per resizable BAR.
const EXT_CAP_REBAR: u16 = 0x15;
/// The first control register, whose bits 7:5 count the resizable BARs.
const REBAR_CTRL0: usize = 0x08;
/// At most 6 resizable BARs (one per BAR index).
const REBAR_MAX_BARS: usize = 6;

/// The extended configuration space ends here (PCIe Base 7.2.2).
const EXT_END: usize = 0x1000;

/// An extended capability as found on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCap {
    pub id: u16,
    pub offset: usize,
    /// Bytes hidden from the guest (0 when visible).
    pub hidden_len: usize,
}

const EXT_START: usize = devices::pci::regs::EXT_CAPABILITY_START;

/// Number of resizable BARs the capability at `offset` declares. A reserved
/// count (0 or 7) or a control register past the image is taken as the most
/// the spec allows: the caller bounds the length by the next capability anyway.
fn rebar_count(cfg: &[u8], offset: usize) -> usize {
    let ctrl = offset + REBAR_CTRL0;
    match cfg.get(ctrl).map(|b| usize::from(b >> 5)) {
        Some(n @ 1..=REBAR_MAX_BARS) => n,
        _ => REBAR_MAX_BARS,
    }
}

/// Length the hidden capability `id` at `offset` has by its own layout; `None`
/// for a capability the guest sees.
fn spec_len(cfg: &[u8], id: u16, offset: usize) -> Option<usize> {
    match id {
        EXT_CAP_ARI => Some(ARI_LEN),
        EXT_CAP_SRIOV => Some(SRIOV_LEN),
        EXT_CAP_REBAR => Some(4 + 8 * rebar_count(cfg, offset)),
        _ => None,
    }
}

/// Bytes hidden for the capability `id` at `offset`: its spec length, but
/// never into the next capability (lowest offset above it, whatever the list
/// order) nor past the end of extended space. A device whose capability is
/// shorter than the spec says keeps its neighbour visible.
fn hidden_len(cfg: &[u8], list: &[(u16, usize)], id: u16, offset: usize) -> usize {
    let Some(len) = spec_len(cfg, id, offset) else {
        return 0;
    };
    let next = list
        .iter()
        .map(|&(_, o)| o)
        .filter(|&o| o > offset)
        .min()
        .unwrap_or(EXT_END);
    len.min(next.min(EXT_END).saturating_sub(offset))
}

/// The guest's view of the extended capability list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtCapView {
    caps: Vec<ExtCap>,
}

impl ExtCapView {
    /// The view of a config space image: its extended list from the bounded
    /// [`walk_ext_capabilities`], hidden lengths read from the capabilities.
    pub fn from_config(cfg: &[u8]) -> Self {
        let list = walk_ext_capabilities(cfg);
        let caps = list
            .iter()
            .map(|&(id, offset)| ExtCap {
                id,
                offset,
                hidden_len: hidden_len(cfg, &list, id, offset),
            })
            .collect();
        ExtCapView { caps }
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
    fn rebar(next: usize, bars: u8) -> Vec<u8> {
        let mut b = ext(0x15, next).to_vec();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&u32::from(bars << 5).to_le_bytes());
        b
    }

    #[test]
    fn resizable_bar_with_one_bar_hides_12_bytes() {
        // ReBAR (1 BAR) at 0x100, LTR packed right after it at 0x10c.
        let c = cfg_with(&[(0x100, &rebar(0x10c, 1)), (0x10c, &ext(0x18, 0))]);
        let view = ExtCapView::from_config(&c);
        assert!(view.hidden_at(0x108));
        assert!(!view.hidden_at(0x10c));
        assert!(!view.hidden_at(0x110));
        assert_eq!(view.read(0x100, dw(&c, 0x100)), 0x10c << 20);
        assert_eq!(view.read(0x110, 0x1234_5678), 0x1234_5678);
    }

    #[test]
    fn resizable_bar_length_follows_its_bar_count() {
        // Three BARs: 4 + 3 * 8 = 0x1c bytes, however far the next capability is.
        let c = cfg_with(&[(0x100, &ext(0x01, 0x140)), (0x140, &rebar(0x200, 3))]);
        let view = ExtCapView::from_config(&c);
        assert!(view.hidden_at(0x158));
        assert!(!view.hidden_at(0x15c));
        assert_eq!(view.read(0x160, 0xdead_beef), 0xdead_beef);
    }

    #[test]
    fn reserved_resizable_bar_count_hides_the_most_the_spec_allows() {
        // A count of 0 is reserved: hide 4 + 6 * 8 bytes, up to the next capability.
        let c = cfg_with(&[
            (0x100, &ext(0x01, 0x140)),
            (0x140, &rebar(0x200, 0)),
            (0x200, &ext(0x18, 0)),
        ]);
        let view = ExtCapView::from_config(&c);
        assert!(view.hidden_at(0x170));
        assert!(!view.hidden_at(0x174));
    }

    #[test]
    fn hidden_length_stops_at_the_next_capability_in_address_order() {
        // List order SR-IOV 0x100 -> AER 0x200 -> LTR 0x120: SR-IOV's 64 bytes
        // would cover LTR, which sits above it though it comes last in the list.
        let c = cfg_with(&[
            (0x100, &ext(0x10, 0x200)),
            (0x200, &ext(0x01, 0x120)),
            (0x120, &ext(0x18, 0)),
        ]);
        let view = ExtCapView::from_config(&c);
        assert!(view.hidden_at(0x11c));
        assert!(!view.hidden_at(0x120));
        assert_eq!(view.read(0x124, 0x55aa_55aa), 0x55aa_55aa);
    }

    #[test]
    fn hidden_length_stops_at_the_end_of_extended_space() {
        let c = cfg_with(&[(0x100, &ext(0x01, 0xfe0)), (0xfe0, &ext(0x10, 0))]);
        let view = ExtCapView::from_config(&c);
        assert_eq!(view.caps[1].hidden_len, 0x20);
        assert!(view.hidden_at(0xffc));
    }

    #[test]
    fn ari_hides_8_bytes() {
        let c = cfg_with(&[
            (0x100, &ext(0x01, 0x140)),
            (0x140, &ext(0x0e, 0x148)),
            (0x148, &ext(0x18, 0)),
        ]);
        let view = ExtCapView::from_config(&c);
        assert!(view.hidden_at(0x144));
        assert!(!view.hidden_at(0x148));
        assert_eq!(view.read(0x100, dw(&c, 0x100)) >> 20, 0x148);
    }
}
