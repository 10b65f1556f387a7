//! Seeded random-access tests: the invariants of the cargo-fuzz targets `pci_config`
//! and `msix_table` (fuzz/), run inside `cargo test` with a fixed xorshift sequence.

use super::config::{ConfigSize, PciIds};
use super::ratelimit::apply_changes;
use super::testutil::{Call, RecordingRouter};
use super::{HostBridge, Msix, MsixLayout, PciConfigSpace, PciDevice, RootPort, RootPortConfig};
use crate::interrupt::MsiRouter;

/// xorshift64: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_config_accesses_keep_the_bridges_ids() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut devices: Vec<Box<dyn PciDevice>> = vec![
        Box::new(HostBridge::new()),
        Box::new(RootPort::new(RootPortConfig::new(0, 1)).unwrap()),
    ];
    let ids: Vec<u32> = devices.iter_mut().map(|d| d.config_read(0)).collect();
    for _ in 0..200_000 {
        let r = rng.next();
        let d = &mut devices[(r & 1) as usize];
        let reg = ((r >> 8) % 1100) as usize;
        let offset = (r >> 20) % 4;
        let len = ((r >> 24) % 5) as usize;
        let value = (r >> 32).to_le_bytes();
        if r & 2 != 0 {
            d.config_read(reg);
        } else {
            d.config_write(reg, offset, &value[..len]);
        }
    }
    for (d, id) in devices.iter_mut().zip(ids) {
        assert_eq!(d.config_read(0), id);
    }
}

#[test]
fn random_msix_accesses_keep_the_table_size_and_cost_a_few_router_calls() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let layout = MsixLayout {
        vectors: 64,
        table_bir: 0,
        table_offset: 0,
        pba_bir: 1,
        pba_offset: 0,
    };
    let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie);
    let mut router = RecordingRouter::default();
    let mut msix = Msix::new(layout).unwrap();
    let cap = msix.add_to(&mut cfg).unwrap();
    for _ in 0..100_000 {
        let r = rng.next();
        let len = [1usize, 2, 4, 8][(r >> 4) as usize % 4];
        let offset = (r >> 8) % 0x500;
        let value = rng.next().to_le_bytes();
        let was_enabled = msix.is_enabled();
        let changes = match r % 4 {
            0 => {
                cfg.write((cap + 2) / 4, ((cap + 2) % 4) as u64, &value[..2]);
                msix.config_write(&cfg, cap + 2, 2)
            }
            1 => msix.write(0, offset, &value[..len]).unwrap_or_default(),
            2 => {
                let mut d = vec![0u8; len];
                msix.read((r >> 3 & 1) as u8, offset, &mut d, &mut |v| {
                    router.is_pending(v)
                });
                Vec::new()
            }
            _ => {
                let v = (r >> 16) as u16 % 80;
                if msix.signal(v) {
                    router.trigger(v).unwrap();
                }
                Vec::new()
            }
        };
        apply_changes(&mut router, &changes);
        assert_eq!(cfg.read_u16(cap + 2) & 0x7ff, 63);
        // Only turning MSI-X on replays the table (one change per unmasked vector);
        // any other access makes a few changes at most, whatever the table size.
        // Triggers replay pending bits (an eventfd write each), not counted here.
        let calls = router
            .take()
            .into_iter()
            .filter(|c| !matches!(c, Call::Trigger(_)))
            .count();
        let limit = if !was_enabled && msix.is_enabled() {
            3 + 2 * 64
        } else {
            3
        };
        assert!(calls <= limit, "{calls} changes for one access");
    }
}
