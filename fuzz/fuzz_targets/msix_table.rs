//! The MSI-X model: any sequence of control writes, table and PBA accesses and VMM
//! signals keeps the capability's read-only registers and never panics.
#![no_main]
use devices::pci::config::{ConfigSize, PciIds};
use devices::pci::{Msix, MsixLayout, PciConfigSpace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, ops)) = data.split_first_chunk::<2>() else {
        return;
    };
    let vectors = u16::from_le_bytes(*head) % 2048 + 1;
    let layout = MsixLayout {
        vectors,
        table_bir: 0,
        table_offset: 0,
        pba_bir: 1,
        pba_offset: 0,
    };
    let mut cfg = PciConfigSpace::new_type0(PciIds::default(), ConfigSize::Pcie);
    let mut msix = Msix::new(layout).expect("valid layout");
    let cap = msix.add_to(&mut cfg).expect("room for the capability");
    for op in ops.chunks_exact(12) {
        let offset = u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]])) % 0x9000;
        let value = u64::from_le_bytes(op[4..12].try_into().expect("8 bytes"));
        let len = [1usize, 2, 4, 8][usize::from(op[0] >> 4) % 4];
        match op[0] % 5 {
            0 => {
                let c = (value as u16).to_le_bytes();
                cfg.write((cap + 2) / 4, ((cap + 2) % 4) as u64, &c);
                let _ = msix.config_write(&cfg, cap + 2, 2);
            }
            1 => {
                let _ = msix.write(0, offset, &value.to_le_bytes()[..len]);
            }
            2 => {
                let mut d = vec![0u8; len];
                let _ = msix.read((op[0] >> 6) & 1, offset, &mut d, &mut |v| v % 2 == 0);
            }
            3 => {
                let _ = msix.signal(value as u16);
            }
            _ => msix.set_pending(value as u16, value & 1 << 20 != 0),
        }
        assert_eq!(
            cfg.read_u16(cap + 2) & 0x7ff,
            vectors - 1,
            "table size is read-only"
        );
    }
});
