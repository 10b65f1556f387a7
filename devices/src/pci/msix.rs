//! MSI-X emulation: capability, vector table and pending-bit array
//! (PCI Local Bus 3.0, 6.8.2; PCIe Base 7.7.2).
//!
//! The capability's message control lives in the function's config space (only
//! MSI-X Enable and Function Mask are writable; table size and the BIR/offset
//! registers are read-only). The table and PBA live in BARs and are reached
//! through [`Msix::read`] / [`Msix::write`] from the device's BAR handlers.
//!
//! The model touches no interrupt hardware: each guest access returns the
//! [`MsiChange`]s it made, for the device to hand to its router (emulated devices) or
//! to apply with VFIO (a passed-through function, `vfio-glue`):
//! - guest sets MSI-X Enable: `FunctionMask(fm)` if it changed, `Enable(Some(table
//!   size))`, then `Vector { masked: false, .. }` for every vector whose own mask bit
//!   is clear (masked vectors are reported on unmask); clearing it: `Enable(None)`;
//! - while enabled: an entry's mask bit set -> `Vector { masked: true }`; cleared ->
//!   `Vector { masked: false }` and, if its pending bit is set and the function is not
//!   masked, `Deliver(v)` and the bit clears (6.8.2.9); a new address/data on an
//!   unmasked vector -> `Vector { masked: false }`;
//! - Function Mask set/cleared: `FunctionMask(..)` only, whatever the table size (on
//!   clear, plus `Deliver` for vectors pending here): the applier decides how little
//!   it has to touch.
//!
//! The PBA shows this model's pending bits and the ones the caller says are held
//! elsewhere (the `held` argument of [`Msix::read`]: a passed-through device's
//! interrupt that arrived while its vector was masked).
//!
//! Wiring in a device: after `cfg.write(reg, offset, data)`, apply
//! `msix.config_write(&cfg, reg * 4 + offset, data.len())`; in `bar_read` /
//! `bar_write`, try `msix.read(index, offset, data, held)` / `msix.write(..)` first
//! (they return false / `None` for offsets outside the table and PBA).

use crate::interrupt::{MsiChange, MsiMessage};
use resources::limited_debug;
use resources::LogLimiter;

use super::config::PciConfigSpace;
use super::error::PciError;
use super::regs::CAP_ID_MSIX;

/// Most vectors an MSI-X table may have (11-bit table size field).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

static BAD_ACCESS: LogLimiter = LogLimiter::new();

/// Where the table and PBA live and how many vectors there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    pub vectors: u16,
    pub table_bir: u8,
    /// Byte offset in the BAR, 8-byte aligned.
    pub table_offset: u32,
    pub pba_bir: u8,
    pub pba_offset: u32,
}

impl MsixLayout {
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// One bit per vector, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    fn validate(&self) -> Result<(), PciError> {
        let bad = |reason| Err(PciError::BadMsixLayout { reason });
        if self.vectors == 0 || self.vectors > MSIX_MAX_VECTORS {
            return bad("vector count must be 1..=2048");
        }
        if self.table_bir > 5 || self.pba_bir > 5 {
            return bad("BAR indicator must be 0..=5");
        }
        if self.table_offset % 8 != 0 || self.pba_offset % 8 != 0 {
            return bad("table and PBA offsets must be 8-byte aligned");
        }
        let table = u64::from(self.table_offset)..u64::from(self.table_offset) + self.table_len();
        let pba = u64::from(self.pba_offset)..u64::from(self.pba_offset) + self.pba_len();
        if self.table_bir == self.pba_bir && table.start < pba.end && pba.start < table.end {
            return bad("table and PBA overlap");
        }
        Ok(())
    }
}

/// One table entry as the guest wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// Entries come out of reset masked (6.8.2.9).
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }

    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.control,
        }
    }

    fn set_dword(&mut self, i: u64, v: u32) {
        match i {
            0 => self.addr_lo = v,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Only the mask bit is defined; the rest is reserved, read-only zero.
            _ => self.control = v & VECTOR_MASKED,
        }
    }
}

/// MSI-X state of one function.
pub struct Msix {
    layout: MsixLayout,
    cap_offset: Option<usize>,
    table: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("layout", &self.layout)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl Msix {
    pub fn new(layout: MsixLayout) -> Result<Self, PciError> {
        layout.validate()?;
        Ok(Self {
            layout,
            cap_offset: None,
            table: vec![Entry::default(); usize::from(layout.vectors)],
            pba: vec![0; usize::from(layout.vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
        })
    }

    /// Add the MSI-X capability to `cfg`; returns its offset.
    pub fn add_to(&mut self, cfg: &mut PciConfigSpace) -> Result<usize, PciError> {
        let l = &self.layout;
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(l.vectors - 1).to_le_bytes());
        body.extend_from_slice(&(l.table_offset | u32::from(l.table_bir)).to_le_bytes());
        body.extend_from_slice(&(l.pba_offset | u32::from(l.pba_bir)).to_le_bytes());
        let off = cfg.add_capability(CAP_ID_MSIX, &body)?;
        cfg.set_wmask(off + 2, 2, (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).into());
        self.cap_offset = Some(off);
        Ok(off)
    }

    pub fn layout(&self) -> &MsixLayout {
        &self.layout
    }

    /// Offset of the capability in config space, once added.
    pub fn cap_offset(&self) -> Option<usize> {
        self.cap_offset
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` may not be delivered now: its mask bit or the function
    /// mask is set. Vectors outside the table count as masked.
    pub fn is_masked(&self, vector: u16) -> bool {
        self.function_masked
            || self
                .table
                .get(usize::from(vector))
                .is_none_or(Entry::masked)
    }

    /// The message programmed for `vector`.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.table.get(usize::from(vector)).map(Entry::message)
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// Set or clear `vector`'s pending bit (the VMM saw the interrupt while it was
    /// masked, e.g. from a passed-through device's masked vector).
    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(q) = self.pba.get_mut(v / 64) {
            let bit = 1u64 << (v % 64);
            *q = if pending { *q | bit } else { *q & !bit };
        }
    }

    /// Raise `vector` from the VMM side. Returns whether to deliver it now; a masked
    /// vector's interrupt is left pending instead. Dropped (false) while MSI-X is
    /// disabled (the function would use INTx).
    pub fn signal(&mut self, vector: u16) -> bool {
        if !self.enabled || usize::from(vector) >= self.table.len() {
            return false;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
            return false;
        }
        true
    }

    /// Call after every guest config write of `len` bytes at byte `offset`; acts when
    /// it touched the message control register. Returns what changed.
    pub fn config_write(
        &mut self,
        cfg: &PciConfigSpace,
        offset: usize,
        len: usize,
    ) -> Vec<MsiChange> {
        let Some(cap) = self.cap_offset else {
            return Vec::new();
        };
        let control = cap + 2;
        if offset < control + 2 && control < offset + len {
            self.set_control(cfg.read_u16(control))
        } else {
            Vec::new()
        }
    }

    fn set_control(&mut self, control: u16) -> Vec<MsiChange> {
        let enable = control & CONTROL_ENABLE != 0;
        let fmask = control & CONTROL_FUNCTION_MASK != 0;
        let (was_enabled, was_masked) = (self.enabled, self.function_masked);
        self.enabled = enable;
        self.function_masked = fmask;
        let mut changes = Vec::new();
        if fmask != was_masked {
            changes.push(MsiChange::FunctionMask(fmask));
        }
        if enable != was_enabled {
            changes.push(MsiChange::Enable(enable.then_some(self.layout.vectors)));
            if enable {
                self.report_unmasked(&mut changes);
            }
        }
        if enable && !fmask && !changes.is_empty() {
            for v in 0..self.layout.vectors {
                if !self.table[usize::from(v)].masked() {
                    self.deliver_pending(v, &mut changes);
                }
            }
        }
        changes
    }

    /// A `Vector` change for every vector whose own mask bit is clear (at enable).
    fn report_unmasked(&self, changes: &mut Vec<MsiChange>) {
        for (v, e) in (0..self.layout.vectors).zip(&self.table) {
            if !e.masked() {
                changes.push(MsiChange::Vector {
                    vector: v,
                    msg: e.message(),
                    masked: false,
                });
            }
        }
    }

    fn deliver_pending(&mut self, v: u16, changes: &mut Vec<MsiChange>) {
        if self.is_pending(v) {
            self.set_pending(v, false);
            changes.push(MsiChange::Deliver(v));
        }
    }

    fn table_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.layout.table_offset);
        start..start + self.layout.table_len()
    }

    fn pba_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.layout.pba_offset);
        start..start + self.layout.pba_len()
    }

    /// Guest read of BAR `bir` at `offset`. Returns false if the offset is neither
    /// table nor PBA (the device handles it). `held(v)` says whether an interrupt of
    /// masked vector `v` is held outside this model (shown in the PBA).
    pub fn read(
        &mut self,
        bir: u8,
        offset: u64,
        data: &mut [u8],
        held: &mut dyn FnMut(u16) -> bool,
    ) -> bool {
        if bir == self.layout.table_bir && self.table_range().contains(&offset) {
            self.table_read(offset - self.table_range().start, data);
        } else if bir == self.layout.pba_bir && self.pba_range().contains(&offset) {
            let at = offset - self.pba_range().start;
            self.pba_read(at, data, held);
        } else {
            return false;
        }
        true
    }

    /// Guest write of BAR `bir` at `offset`: what changed, or `None` if the offset is
    /// neither table nor PBA.
    pub fn write(&mut self, bir: u8, offset: u64, data: &[u8]) -> Option<Vec<MsiChange>> {
        if bir == self.layout.table_bir && self.table_range().contains(&offset) {
            Some(self.table_write(offset - self.table_range().start, data))
        } else if bir == self.layout.pba_bir && self.pba_range().contains(&offset) {
            // The PBA is read-only (6.8.2.10).
            limited_debug!(BAD_ACCESS, "dropped MSI-X PBA write at {offset:#x}");
            Some(Vec::new())
        } else {
            None
        }
    }

    /// Table and PBA take aligned 4- or 8-byte accesses (6.8.2); an 8-byte
    /// access must stay inside one entry.
    fn access_ok(offset: u64, len: usize) -> bool {
        match len {
            4 => offset % 4 == 0,
            8 => offset % 8 == 0,
            _ => false,
        }
    }

    fn table_read(&self, offset: u64, data: &mut [u8]) {
        if !Self::access_ok(offset, data.len()) {
            limited_debug!(
                BAD_ACCESS,
                "MSI-X table read of {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + 4 * i as u64;
            let e = &self.table[(at / MSIX_ENTRY_SIZE) as usize];
            chunk.copy_from_slice(&e.dword(at % MSIX_ENTRY_SIZE / 4).to_le_bytes());
        }
    }

    fn table_write(&mut self, offset: u64, data: &[u8]) -> Vec<MsiChange> {
        if !Self::access_ok(offset, data.len()) {
            limited_debug!(
                BAD_ACCESS,
                "MSI-X table write of {} bytes at {offset:#x}",
                data.len()
            );
            return Vec::new();
        }
        let v = (offset / MSIX_ENTRY_SIZE) as usize;
        let old = self.table[v];
        for (i, chunk) in data.chunks(4).enumerate() {
            let field = offset % MSIX_ENTRY_SIZE / 4 + i as u64;
            let word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.table[v].set_dword(field, word);
        }
        // v < vectors <= 2048, so it fits a u16.
        self.entry_changed(v as u16, old)
    }

    fn entry_changed(&mut self, v: u16, old: Entry) -> Vec<MsiChange> {
        let new = self.table[usize::from(v)];
        let mut changes = Vec::new();
        if !self.enabled || new == old || (old.masked() && new.masked()) {
            return changes;
        }
        changes.push(MsiChange::Vector {
            vector: v,
            msg: new.message(),
            masked: new.masked(),
        });
        if !new.masked() && !self.function_masked {
            self.deliver_pending(v, &mut changes);
        }
        changes
    }

    fn pba_read(&mut self, offset: u64, data: &mut [u8], held: &mut dyn FnMut(u16) -> bool) {
        if !Self::access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let qword = (offset / 8) as usize;
        let mut bits = self.pba[qword];
        // Bits held elsewhere: only masked vectors can have any.
        let first = qword * 64;
        let last = (first + 64).min(usize::from(self.layout.vectors));
        for v in first..last {
            // v < vectors <= 2048.
            let v16 = v as u16;
            if self.enabled && self.is_masked(v16) && held(v16) {
                bits |= 1 << (v - first);
            }
        }
        let q = bits.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&q[start..start + data.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::MsiRouter;
    use crate::pci::config::{ConfigSize, PciIds};
    use crate::pci::ratelimit::apply_changes;
    use crate::pci::testutil::{msg, Call, RecordingRouter};

    const LAYOUT: MsixLayout = MsixLayout {
        vectors: 4,
        table_bir: 0,
        table_offset: 0x2000,
        pba_bir: 0,
        pba_offset: 0x3000,
    };

    struct Fixture {
        cfg: PciConfigSpace,
        msix: Msix,
        calls: RecordingRouter,
        cap: usize,
    }

    fn fixture() -> Fixture {
        let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie);
        let calls = RecordingRouter::default();
        let mut msix = Msix::new(LAYOUT).unwrap();
        let cap = msix.add_to(&mut cfg).unwrap();
        Fixture {
            cfg,
            msix,
            calls,
            cap,
        }
    }

    impl Fixture {
        fn control(&mut self, v: u16) {
            let off = self.cap + 2;
            self.cfg.write(off / 4, (off % 4) as u64, &v.to_le_bytes());
            let changes = self.msix.config_write(&self.cfg, off, 2);
            apply_changes(&mut self.calls, &changes);
        }

        /// A guest BAR 0 write, its changes applied.
        fn bar_write(&mut self, off: u64, data: &[u8]) -> bool {
            let changes = self.msix.write(0, off, data);
            apply_changes(&mut self.calls, changes.as_deref().unwrap_or_default());
            changes.is_some()
        }

        fn bar_read(&mut self, off: u64, data: &mut [u8]) -> bool {
            let calls = &mut self.calls;
            self.msix.read(0, off, data, &mut |v| calls.is_pending(v))
        }

        fn entry_write(&mut self, vector: u64, field: u64, v: u32) {
            let off = 0x2000 + vector * 16 + field * 4;
            assert!(self.bar_write(off, &v.to_le_bytes()));
        }

        fn program(&mut self, vector: u64, addr: u64, data: u32) {
            let off = 0x2000 + vector * 16;
            assert!(self.bar_write(off, &addr.to_le_bytes()));
            self.entry_write(vector, 2, data);
        }

        fn read32(&mut self, off: u64) -> u32 {
            let mut d = [0u8; 4];
            assert!(self.bar_read(off, &mut d));
            u32::from_le_bytes(d)
        }

        /// The VMM raises `v`: triggered now or left pending.
        fn signal(&mut self, v: u16) {
            if self.msix.signal(v) {
                self.calls.trigger(v).unwrap();
            }
        }
    }

    #[test]
    fn capability_registers() {
        let f = fixture();
        assert_eq!(f.cfg.read_u8(f.cap), CAP_ID_MSIX);
        assert_eq!(f.cfg.read_u16(f.cap + 2), 3);
        assert_eq!(f.cfg.read_u32(f.cap + 4), 0x2000);
        assert_eq!(f.cfg.read_u32(f.cap + 8), 0x3000);
    }

    #[test]
    fn only_enable_and_function_mask_are_writable() {
        let mut f = fixture();
        f.control(0xffff);
        assert_eq!(f.cfg.read_u16(f.cap + 2), 0xc003);
        let off = f.cap + 4;
        f.cfg.write(off / 4, 0, &[0xff; 4]);
        assert_eq!(f.cfg.read_u32(off), 0x2000);
    }

    #[test]
    fn layout_validation() {
        let bad = |l: MsixLayout| Msix::new(l).unwrap_err();
        assert!(matches!(
            bad(MsixLayout {
                vectors: 0,
                ..LAYOUT
            }),
            PciError::BadMsixLayout { .. }
        ));
        assert!(matches!(
            bad(MsixLayout {
                vectors: 2049,
                ..LAYOUT
            }),
            PciError::BadMsixLayout { .. }
        ));
        assert!(matches!(
            bad(MsixLayout {
                table_bir: 6,
                ..LAYOUT
            }),
            PciError::BadMsixLayout { .. }
        ));
        assert!(matches!(
            bad(MsixLayout {
                pba_offset: 0x2004,
                ..LAYOUT
            }),
            PciError::BadMsixLayout { .. }
        ));
        assert!(matches!(
            bad(MsixLayout {
                pba_offset: 0x2038,
                ..LAYOUT
            }),
            PciError::BadMsixLayout { .. }
        ));
        assert!(Msix::new(MsixLayout {
            pba_offset: 0x2040,
            ..LAYOUT
        })
        .is_ok());
        assert!(Msix::new(MsixLayout {
            pba_bir: 1,
            pba_offset: 0x2000,
            ..LAYOUT
        })
        .is_ok());
    }

    #[test]
    fn entries_start_masked_and_zero() {
        let mut f = fixture();
        assert_eq!(f.read32(0x2000), 0);
        assert_eq!(f.read32(0x200c), 1);
        assert!(f.msix.is_masked(0));
        assert!(f.msix.is_masked(99));
    }

    #[test]
    fn table_round_trips_4_and_8_byte_accesses() {
        let mut f = fixture();
        f.program(1, 0x1_fee0_1000, 0x4041);
        assert_eq!(f.read32(0x2010), 0xfee0_1000);
        assert_eq!(f.read32(0x2014), 1);
        let mut q = [0u8; 8];
        assert!(f.bar_read(0x2010, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
        assert!(f.bar_read(0x2018, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0x1_0000_4041);
        assert_eq!(f.msix.message(1), Some(msg(0x1_fee0_1000, 0x4041)));
        // Reserved vector-control bits read as zero.
        f.entry_write(1, 3, 0xffff_fffe);
        assert_eq!(f.read32(0x201c), 0);
    }

    #[test]
    fn misaligned_and_odd_sized_table_accesses() {
        let mut f = fixture();
        let mut d = [0u8; 2];
        assert!(f.bar_read(0x2000, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(f.bar_write(0x2002, &[1, 2, 3, 4]));
        let mut q = [0u8; 8];
        assert!(f.bar_read(0x2004, &mut q));
        assert_eq!(q, [0xff; 8]);
        assert_eq!(f.msix.message(0), Some(msg(0, 0)));
    }

    #[test]
    fn accesses_outside_table_and_pba_are_not_claimed() {
        let mut f = fixture();
        let mut d = [0u8; 4];
        assert!(!f.bar_read(0x1ffc, &mut d));
        assert!(!f.bar_read(0x2040, &mut d));
        assert!(!f.msix.read(1, 0x2000, &mut d, &mut |_| false));
        assert!(!f.bar_write(0x3008, &d));
    }

    #[test]
    fn enable_routes_unmasked_vectors() {
        let mut f = fixture();
        f.program(0, 0xfee0_0000, 0x30);
        f.entry_write(0, 3, 0);
        f.program(2, 0xfee0_1000, 0x31);
        f.control(0x8000);
        assert_eq!(
            f.calls.take(),
            vec![
                Call::Enable(Some(4)),
                Call::Update(0, msg(0xfee0_0000, 0x30), false)
            ]
        );
        f.control(0);
        assert_eq!(f.calls.take(), vec![Call::Enable(None)]);
    }

    #[test]
    fn disabled_capability_makes_no_router_calls() {
        let mut f = fixture();
        f.program(0, 0xfee0_0000, 0x30);
        f.entry_write(0, 3, 0);
        assert!(f.calls.take().is_empty());
    }

    #[test]
    fn unmask_routes_and_mask_reroutes_masked() {
        let mut f = fixture();
        f.control(0x8000);
        f.calls.take();
        f.program(3, 0xfee0_0000, 0x41);
        assert!(f.calls.take().is_empty(), "masked entry changes are silent");
        f.entry_write(3, 3, 0);
        assert_eq!(
            f.calls.take(),
            vec![Call::Update(3, msg(0xfee0_0000, 0x41), false)]
        );
        f.entry_write(3, 3, 1);
        assert_eq!(
            f.calls.take(),
            vec![Call::Update(3, msg(0xfee0_0000, 0x41), true)]
        );
    }

    #[test]
    fn changing_unmasked_entry_updates_once_per_access() {
        let mut f = fixture();
        f.entry_write(0, 3, 0);
        f.control(0x8000);
        f.calls.take();
        assert!(f.bar_write(0x2000, &0x1_fee0_2000u64.to_le_bytes()));
        assert_eq!(
            f.calls.take(),
            vec![Call::Update(0, msg(0x1_fee0_2000, 0), false)]
        );
        f.entry_write(0, 2, 0);
        assert!(f.calls.take().is_empty(), "same data is no change");
    }

    #[test]
    fn unmask_with_pending_bit_triggers_and_clears() {
        let mut f = fixture();
        f.control(0x8000);
        f.signal(2);
        assert!(f.msix.is_pending(2));
        assert_eq!(f.read32(0x3000), 0b100);
        f.calls.take();
        f.entry_write(2, 3, 0);
        assert_eq!(
            f.calls.take(),
            vec![Call::Update(2, msg(0, 0), false), Call::Trigger(2)]
        );
        assert!(!f.msix.is_pending(2));
    }

    #[test]
    fn signal_on_unmasked_vector_triggers() {
        let mut f = fixture();
        f.entry_write(1, 3, 0);
        f.control(0x8000);
        f.calls.take();
        f.signal(1);
        assert_eq!(f.calls.take(), vec![Call::Trigger(1)]);
        assert!(!f.msix.is_pending(1));
    }

    #[test]
    fn signal_while_disabled_is_dropped() {
        let mut f = fixture();
        f.signal(1);
        assert!(!f.msix.is_pending(1));
        assert!(f.calls.take().is_empty());
    }

    #[test]
    fn function_mask_is_one_call_then_replays_pending() {
        let mut f = fixture();
        f.entry_write(0, 3, 0);
        f.entry_write(1, 3, 0);
        f.control(0x8000);
        f.calls.take();
        f.control(0xc000);
        assert!(f.msix.is_function_masked() && f.msix.is_masked(0));
        assert_eq!(f.calls.take(), vec![Call::FunctionMask(true)]);
        f.signal(1);
        assert!(f.msix.is_pending(1));
        f.control(0x8000);
        assert_eq!(
            f.calls.take(),
            vec![Call::FunctionMask(false), Call::Trigger(1)]
        );
    }

    #[test]
    fn function_mask_toggles_report_one_change_at_2048_vectors() {
        let layout = MsixLayout {
            vectors: MSIX_MAX_VECTORS,
            table_bir: 0,
            table_offset: 0,
            pba_bir: 1,
            pba_offset: 0,
        };
        let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie);
        let mut msix = Msix::new(layout).unwrap();
        let cap = msix.add_to(&mut cfg).unwrap();
        for v in 0..u64::from(MSIX_MAX_VECTORS) {
            assert_eq!(
                msix.write(0, v * 16 + 12, &0u32.to_le_bytes()),
                Some(vec![])
            );
        }
        let mut control = |c: u16| {
            cfg.write((cap + 2) / 4, ((cap + 2) % 4) as u64, &c.to_le_bytes());
            msix.config_write(&cfg, cap + 2, 2)
        };
        assert_eq!(control(0x8000).len(), 1 + usize::from(MSIX_MAX_VECTORS));
        for _ in 0..1000 {
            assert_eq!(control(0xc000), [MsiChange::FunctionMask(true)]);
            assert_eq!(control(0x8000), [MsiChange::FunctionMask(false)]);
        }
    }

    #[test]
    fn enable_with_function_mask_routes_unmasked_vectors_held() {
        let mut f = fixture();
        f.entry_write(0, 3, 0);
        f.control(0xc000);
        assert_eq!(
            f.calls.take(),
            vec![
                Call::FunctionMask(true),
                Call::Enable(Some(4)),
                Call::Update(0, msg(0, 0), false)
            ]
        );
        // The router holds delivery; entry changes still reach it.
        f.entry_write(0, 2, 7);
        assert_eq!(f.calls.take(), vec![Call::Update(0, msg(0, 7), false)]);
    }

    #[test]
    fn pba_shows_interrupts_the_router_holds_for_masked_vectors() {
        let mut f = fixture();
        f.entry_write(1, 3, 0);
        f.control(0x8000);
        f.calls.held.lock().unwrap().extend([1, 2]);
        // Vector 1 is unmasked: whatever the router has is being delivered.
        assert_eq!(f.read32(0x3000), 0b100);
        f.control(0xc000);
        assert_eq!(f.read32(0x3000), 0b110);
        f.control(0);
        assert_eq!(f.read32(0x3000), 0, "disabled: nothing pending");
    }

    #[test]
    fn pba_is_read_only_and_qword_readable() {
        let mut f = fixture();
        f.control(0x8000);
        f.msix.set_pending(0, true);
        f.msix.set_pending(3, true);
        assert!(f.bar_write(0x3000, &[0, 0, 0, 0]));
        let mut q = [0u8; 8];
        assert!(f.bar_read(0x3000, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0b1001);
        f.msix.set_pending(3, false);
        assert_eq!(f.read32(0x3000), 1);
        assert_eq!(f.read32(0x3004), 0);
    }

    #[test]
    fn unrelated_config_writes_do_not_touch_state() {
        let mut f = fixture();
        f.cfg.set_u16(f.cap + 2, 0x8000);
        f.msix.config_write(&f.cfg, f.cap + 4, 4);
        assert!(!f.msix.is_enabled());
        f.msix.config_write(&f.cfg, f.cap, 4);
        assert!(f.msix.is_enabled());
    }
}
