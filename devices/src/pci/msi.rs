//! MSI capability emulation (PCI Local Bus 3.0, 6.8.1; PCIe Base 7.7.1).
//!
//! The capability lives entirely in config space: message control (enable and
//! Multiple Message Enable writable; Multiple Message Capable, 64-bit and
//! per-vector-masking flags read-only), address, 16-bit data and, with
//! per-vector masking, the mask (read-write) and pending (read-only) bits.
//! After each guest config write the device calls [`Msi::config_write`], which
//! compares the registers with what it last reported and returns the changes
//! ([`MsiChange`]) for the device's router:
//! - enable (or a new vector count while enabled): `Enable(Some(n))`, then
//!   `Vector { masked: false }` for each unmasked vector; disable: `Enable(None)`;
//! - while enabled: a mask bit set -> `Vector { masked: true }`; cleared ->
//!   `Vector { masked: false }`, then `Deliver(v)` if its pending bit was set;
//!   a new address/data -> `Vector` of every unmasked vector.
//!
//! Vector `v` of `n` sends the programmed data with its low log2(n) bits
//! replaced by `v` (6.8.1.6).

use crate::interrupt::{MsiChange, MsiMessage};

use super::config::PciConfigSpace;
use super::error::PciError;
use super::regs::CAP_ID_MSI;

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Enable and Multiple Message Enable.
const CONTROL_WRITABLE: u16 = 0x0071;

/// Register offsets inside the capability for one variant.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    addr_hi: Option<usize>,
    data: usize,
    mask: Option<usize>,
    pending: Option<usize>,
    len: usize,
}

/// MSI state of one function.
pub struct Msi {
    vectors: u16,
    bits64: bool,
    per_vector_mask: bool,
    cap_offset: Option<usize>,
    /// Vector count while enabled.
    enabled: Option<u16>,
    msg: MsiMessage,
    mask: u32,
}

impl std::fmt::Debug for Msi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msi")
            .field("vectors", &self.vectors)
            .field("enabled", &self.enabled)
            .field("msg", &self.msg)
            .field("mask", &format_args!("{:#x}", self.mask))
            .finish_non_exhaustive()
    }
}

impl Msi {
    /// `vectors` capable (1, 2, 4, 8, 16 or 32), 64-bit addresses and
    /// per-vector masking as the device offers them.
    pub fn new(vectors: u16, bits64: bool, per_vector_mask: bool) -> Result<Self, PciError> {
        if !vectors.is_power_of_two() || vectors > 32 {
            return Err(PciError::BadMsiVectors { vectors });
        }
        Ok(Self {
            vectors,
            bits64,
            per_vector_mask,
            cap_offset: None,
            enabled: None,
            msg: MsiMessage::default(),
            mask: 0,
        })
    }

    fn offsets(&self) -> Offsets {
        let (addr_hi, data) = if self.bits64 {
            (Some(0x8), 0xc)
        } else {
            (None, 0x8)
        };
        let (mask, pending, len) = if self.per_vector_mask {
            (Some(data + 4), Some(data + 8), data + 12)
        } else {
            (None, None, data + 2)
        };
        Offsets {
            addr_hi,
            data,
            mask,
            pending,
            len,
        }
    }

    fn vector_bits(&self) -> u32 {
        match self.vectors {
            32 => u32::MAX,
            n => (1 << n) - 1,
        }
    }

    /// Add the MSI capability to `cfg`; returns its offset.
    pub fn add_to(&mut self, cfg: &mut PciConfigSpace) -> Result<usize, PciError> {
        let o = self.offsets();
        let mut body = vec![0u8; o.len - 2];
        let mut control = (self.vectors.trailing_zeros() as u16) << 1;
        if self.bits64 {
            control |= CONTROL_64BIT;
        }
        if self.per_vector_mask {
            control |= CONTROL_PER_VECTOR_MASK;
        }
        body[..2].copy_from_slice(&control.to_le_bytes());
        let cap = cfg.add_capability(CAP_ID_MSI, &body)?;
        cfg.set_wmask(cap + 2, 2, CONTROL_WRITABLE.into());
        // The address is dword aligned (bits 1:0 read-only zero).
        cfg.set_wmask(cap + 4, 4, !0x3);
        if let Some(hi) = o.addr_hi {
            cfg.set_wmask(cap + hi, 4, u32::MAX);
        }
        cfg.set_wmask(cap + o.data, 2, 0xffff);
        if let Some(mask) = o.mask {
            cfg.set_wmask(cap + mask, 4, self.vector_bits());
        }
        self.cap_offset = Some(cap);
        Ok(cap)
    }

    pub fn cap_offset(&self) -> Option<usize> {
        self.cap_offset
    }

    /// Vectors enabled by the guest, if MSI is enabled.
    pub fn enabled_vectors(&self) -> Option<u16> {
        self.enabled
    }

    /// The message vector `v` sends, while enabled.
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        let n = self.enabled.filter(|n| v < *n)?;
        let data = (self.msg.data & !u32::from(n - 1)) | u32::from(v);
        Some(MsiMessage {
            address: self.msg.address,
            data,
        })
    }

    /// Whether `v` may not be delivered: masked, or not enabled.
    pub fn is_masked(&self, v: u16) -> bool {
        self.enabled.is_none_or(|n| v >= n) || self.mask & (1 << (v % 32)) != 0
    }

    pub fn is_pending(&self, cfg: &PciConfigSpace, v: u16) -> bool {
        match (self.cap_offset, self.offsets().pending) {
            (Some(cap), Some(p)) if v < self.vectors => cfg.read_u32(cap + p) & (1 << v) != 0,
            _ => false,
        }
    }

    /// Set or clear `v`'s pending bit (only with per-vector masking).
    pub fn set_pending(&self, cfg: &mut PciConfigSpace, v: u16, pending: bool) {
        if let (Some(cap), Some(p)) = (self.cap_offset, self.offsets().pending) {
            if v < self.vectors {
                let bits = cfg.read_u32(cap + p) & !(1 << v);
                cfg.set_u32(cap + p, bits | u32::from(pending) << v);
            }
        }
    }

    /// Raise `v` from the VMM side. Returns whether to deliver it now; a masked
    /// vector's interrupt is left pending instead, and one while disabled is dropped.
    pub fn signal(&mut self, cfg: &mut PciConfigSpace, v: u16) -> bool {
        if self.enabled.is_none_or(|n| v >= n) {
            return false;
        }
        if self.is_masked(v) {
            self.set_pending(cfg, v, true);
            return false;
        }
        true
    }

    /// Call after every guest config write of `len` bytes at `offset`; returns what
    /// changed.
    pub fn config_write(
        &mut self,
        cfg: &mut PciConfigSpace,
        offset: usize,
        len: usize,
    ) -> Vec<MsiChange> {
        match self.cap_offset {
            Some(cap) if offset < cap + self.offsets().len && cap < offset + len => {
                self.sync(cfg, cap)
            }
            _ => Vec::new(),
        }
    }

    fn read_state(&self, cfg: &PciConfigSpace, cap: usize) -> (Option<u16>, MsiMessage, u32) {
        let o = self.offsets();
        let control = cfg.read_u16(cap + 2);
        let enabled = (control & CONTROL_ENABLE != 0).then(|| {
            // Multiple Message Enable beyond what is capable is clamped.
            let mme = (control >> CONTROL_MME_SHIFT) & 0x7;
            (1u16 << mme.min(5)).min(self.vectors)
        });
        let hi = o.addr_hi.map_or(0, |h| u64::from(cfg.read_u32(cap + h)));
        let msg = MsiMessage {
            address: hi << 32 | u64::from(cfg.read_u32(cap + 4)),
            data: u32::from(cfg.read_u16(cap + o.data)),
        };
        let mask = o.mask.map_or(0, |m| cfg.read_u32(cap + m));
        (enabled, msg, mask)
    }

    fn sync(&mut self, cfg: &mut PciConfigSpace, cap: usize) -> Vec<MsiChange> {
        let (enabled, msg, mask) = self.read_state(cfg, cap);
        let (old_enabled, old_msg, old_mask) = (self.enabled, self.msg, self.mask);
        self.enabled = enabled;
        self.msg = msg;
        self.mask = mask;
        let mut changes = Vec::new();
        let Some(n) = enabled else {
            if old_enabled.is_some() {
                changes.push(MsiChange::Enable(None));
            }
            return changes;
        };
        let fresh = old_enabled != Some(n);
        if fresh {
            changes.push(MsiChange::Enable(Some(n)));
        }
        for v in 0..n {
            let bit = 1u32 << v;
            let (was, now) = (old_mask & bit != 0 || fresh, mask & bit != 0);
            let Some(m) = self.message(v) else { continue };
            let vector = |masked| MsiChange::Vector {
                vector: v,
                msg: m,
                masked,
            };
            if now {
                if !was {
                    changes.push(vector(true));
                }
            } else if was || msg != old_msg {
                changes.push(vector(false));
                if self.is_pending(cfg, v) {
                    self.set_pending(cfg, v, false);
                    changes.push(MsiChange::Deliver(v));
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::MsiRouter;
    use crate::pci::config::{ConfigSize, PciIds};
    use crate::pci::ratelimit::apply_changes;
    use crate::pci::testutil::{msg, Call, RecordingRouter};

    struct Fixture {
        cfg: PciConfigSpace,
        msi: Msi,
        calls: RecordingRouter,
        cap: usize,
    }

    fn fixture(vectors: u16, bits64: bool, pvm: bool) -> Fixture {
        let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie);
        let calls = RecordingRouter::default();
        let mut msi = Msi::new(vectors, bits64, pvm).unwrap();
        let cap = msi.add_to(&mut cfg).unwrap();
        Fixture {
            cfg,
            msi,
            calls,
            cap,
        }
    }

    impl Fixture {
        fn write(&mut self, rel: usize, bytes: &[u8]) {
            let off = self.cap + rel;
            self.cfg.write(off / 4, (off % 4) as u64, bytes);
            let changes = self.msi.config_write(&mut self.cfg, off, bytes.len());
            apply_changes(&mut self.calls, &changes);
        }

        /// The VMM raises `v`: triggered now or left pending.
        fn signal(&mut self, v: u16) {
            if self.msi.signal(&mut self.cfg, v) {
                self.calls.trigger(v).unwrap();
            }
        }

        fn write32(&mut self, rel: usize, v: u32) {
            self.write(rel, &v.to_le_bytes());
        }

        fn control(&mut self, v: u16) {
            self.write(2, &v.to_le_bytes());
        }
    }

    #[test]
    fn vector_counts_are_validated() {
        for bad in [0, 3, 64] {
            assert_eq!(
                Msi::new(bad, false, false).unwrap_err(),
                PciError::BadMsiVectors { vectors: bad }
            );
        }
    }

    #[test]
    fn capability_layouts() {
        let f = fixture(1, false, false);
        assert_eq!(f.cfg.read_u16(f.cap + 2), 0);
        let f = fixture(8, true, true);
        assert_eq!(
            f.cfg.read_u16(f.cap + 2),
            3 << 1 | CONTROL_64BIT | CONTROL_PER_VECTOR_MASK
        );
        // Four capabilities of the largest form fit back to back.
        let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pci);
        let mut m = Msi::new(32, true, true).unwrap();
        assert_eq!(m.add_to(&mut cfg).unwrap(), 0x40);
        assert_eq!(m.add_to(&mut cfg).unwrap(), 0x58);
    }

    #[test]
    fn register_masks() {
        let mut f = fixture(4, true, true);
        f.control(0xffff);
        assert_eq!(
            f.cfg.read_u16(f.cap + 2),
            0x0071 | 2 << 1 | CONTROL_64BIT | CONTROL_PER_VECTOR_MASK
        );
        f.write32(4, u32::MAX);
        assert_eq!(f.cfg.read_u32(f.cap + 4), 0xffff_fffc);
        f.write32(0xc, u32::MAX);
        assert_eq!(f.cfg.read_u32(f.cap + 0xc), 0xffff);
        f.write32(0x10, u32::MAX);
        assert_eq!(f.cfg.read_u32(f.cap + 0x10), 0xf);
        f.write32(0x14, u32::MAX);
        assert_eq!(
            f.cfg.read_u32(f.cap + 0x14),
            0,
            "pending bits are read-only"
        );
    }

    #[test]
    fn address_high_is_read_only_zero_without_64bit() {
        let mut f = fixture(1, false, false);
        f.write32(8, 0xffff_ffff);
        assert_eq!(f.cfg.read_u32(f.cap + 8), 0xffff);
    }

    #[test]
    fn enable_routes_vector_zero() {
        let mut f = fixture(1, true, false);
        f.write32(4, 0xfee0_0000);
        f.write32(8, 0x1);
        f.write(0xc, &0x4021u16.to_le_bytes());
        assert!(
            f.calls.take().is_empty(),
            "nothing is routed while disabled"
        );
        f.control(1);
        assert_eq!(
            f.calls.take(),
            vec![
                Call::Enable(Some(1)),
                Call::Update(0, msg(0x1_fee0_0000, 0x4021), false)
            ]
        );
        f.control(0);
        assert_eq!(f.calls.take(), vec![Call::Enable(None)]);
    }

    #[test]
    fn multiple_message_enable_sets_vectors_and_data_low_bits() {
        let mut f = fixture(4, false, false);
        f.write32(4, 0xfee0_0000);
        f.write(8, &0x40u16.to_le_bytes());
        f.control(1 | 2 << 4);
        let calls = f.calls.take();
        assert_eq!(calls[0], Call::Enable(Some(4)));
        assert_eq!(calls[3], Call::Update(2, msg(0xfee0_0000, 0x42), false));
        assert_eq!(calls.len(), 5);
    }

    #[test]
    fn multiple_message_enable_is_clamped_to_capable() {
        let mut f = fixture(2, false, false);
        f.control(1 | 5 << 4);
        assert_eq!(f.msi.enabled_vectors(), Some(2));
    }

    #[test]
    fn mask_and_unmask_with_pending() {
        let mut f = fixture(2, false, true);
        f.write32(4, 0xfee0_0000);
        f.write32(0xc, 0b10);
        f.control(1 | 1 << 4);
        assert_eq!(
            f.calls.take(),
            vec![
                Call::Enable(Some(2)),
                Call::Update(0, msg(0xfee0_0000, 0), false)
            ]
        );
        f.signal(1);
        assert!(f.msi.is_pending(&f.cfg, 1));
        assert!(f.calls.take().is_empty());
        f.write32(0xc, 0b01);
        assert_eq!(
            f.calls.take(),
            vec![
                Call::Update(0, msg(0xfee0_0000, 0), true),
                Call::Update(1, msg(0xfee0_0000, 1), false),
                Call::Trigger(1)
            ]
        );
        assert!(!f.msi.is_pending(&f.cfg, 1));
    }

    #[test]
    fn address_change_while_enabled_updates_unmasked_vectors() {
        let mut f = fixture(2, false, true);
        f.write32(0xc, 0b10);
        f.control(1 | 1 << 4);
        f.calls.take();
        f.write32(4, 0xfee0_1000);
        assert_eq!(
            f.calls.take(),
            vec![Call::Update(0, msg(0xfee0_1000, 0), false)]
        );
    }

    #[test]
    fn signal_unmasked_triggers_and_disabled_drops() {
        let mut f = fixture(1, false, false);
        f.signal(0);
        assert!(f.calls.take().is_empty());
        f.control(1);
        f.calls.take();
        f.signal(0);
        assert_eq!(f.calls.take(), vec![Call::Trigger(0)]);
        assert!(f.msi.is_masked(1));
    }

    #[test]
    fn writes_outside_capability_are_ignored() {
        let mut f = fixture(1, false, false);
        f.cfg.set_u16(f.cap + 2, 1);
        f.msi.config_write(&mut f.cfg, f.cap + 0x10, 4);
        assert_eq!(f.msi.enabled_vectors(), None);
        f.msi.config_write(&mut f.cfg, f.cap, 1);
        assert_eq!(f.msi.enabled_vectors(), Some(1));
    }
}
