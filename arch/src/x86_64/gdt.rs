//! The boot GDT for entering a 64-bit Linux kernel (Intel SDM Vol. 3A 3.4.5 "Segment
//! Descriptors", 7.2.3 "TSS Descriptor in 64-bit mode"; Linux x86 boot protocol "64-bit boot
//! protocol": `__BOOT_CS` execute/read and `__BOOT_DS` read/write, both flat 4 GiB) and the
//! decoding of descriptors into the `kvm_segment` form `KVM_SET_SREGS` takes.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{GDT_START, IDT_START};
use crate::{Error, Result};

/// Flags of the 64-bit code segment: G=1, L=1, P=1, DPL=0, S=1, type 0xb (execute/read,
/// accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of the data segment: G=1, D/B=1, P=1, DPL=0, S=1, type 0x3 (read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of the TSS: G=1, P=1, S=0, type 0xb (busy 64-bit TSS), which VM entry requires
/// of TR even though the kernel never uses this one.
pub const TSS_FLAGS: u16 = 0x808b;

/// Builds a descriptor from `flags` (access byte in bits 0..8, flags nibble in bits 12..16,
/// as in the high word of a descriptor), `base` and 20-bit `limit`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// GDT index of the 64-bit code segment (selector 0x08).
pub const BOOT_CODE_INDEX: u8 = 1;
/// GDT index of the data segment (selector 0x10).
pub const BOOT_DATA_INDEX: u8 = 2;
/// GDT index of the TSS (selector 0x18).
pub const BOOT_TSS_INDEX: u8 = 3;

/// The boot GDT: null, 64-bit code, data, 64-bit TSS (busy).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(CODE64_FLAGS, 0, 0xfffff),
    gdt_entry(DATA_FLAGS, 0, 0xfffff),
    gdt_entry(TSS_FLAGS, 0, 0xfffff),
];

/// Size of the boot GDT in bytes (GDTR limit + 1).
pub const BOOT_GDT_SIZE: u16 = (BOOT_GDT.len() * 8) as u16;
/// Size of the boot IDT in bytes (IDTR limit + 1): one null gate.
pub const BOOT_IDT_SIZE: u16 = 8;

/// Extracts `len` bits of `entry` starting at bit `shift`.
const fn bits(entry: u64, shift: u32, len: u32) -> u64 {
    (entry >> shift) & ((1 << len) - 1)
}

/// Decodes descriptor `entry` at GDT `index` into the `kvm_segment` KVM expects. The limit
/// is expanded to bytes when G is set, as KVM writes it to the VMCS/VMCB unscaled.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = bits(entry, 16, 24) | (bits(entry, 56, 8) << 24);
    let raw_limit = bits(entry, 0, 16) | (bits(entry, 48, 4) << 16);
    let g = bits(entry, 55, 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bits(entry, 47, 1) as u8;
    kvm_segment {
        base,
        // The expanded limit is at most 0xffff_ffff, so the cast is lossless.
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: bits(entry, 40, 4) as u8,
        s: bits(entry, 44, 1) as u8,
        dpl: bits(entry, 45, 2) as u8,
        present,
        avl: bits(entry, 52, 1) as u8,
        l: bits(entry, 53, 1) as u8,
        db: bits(entry, 54, 1) as u8,
        g,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes [`BOOT_GDT`] at [`GDT_START`] and an empty IDT (one null gate) at [`IDT_START`].
pub fn write_gdt_idt<M: GuestMemoryBackend>(mem: &M) -> Result<()> {
    let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write_bytes(mem, "GDT", GDT_START, &gdt)?;
    write_bytes(mem, "IDT", IDT_START, &0u64.to_le_bytes())
}

/// Writes `bytes` at `addr`, naming the structure in the error.
pub(crate) fn write_bytes<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: GuestAddress,
    bytes: &[u8],
) -> Result<()> {
    mem.write_slice(bytes, addr)
        .map_err(|source| Error::WriteGuest {
            what,
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, GuestMemoryMmap};

    #[test]
    fn code64_descriptor_matches_the_sdm_encoding() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn data_descriptor_matches_the_sdm_encoding() {
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn tss_descriptor_matches_the_sdm_encoding() {
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn gdt_entry_places_base_bytes() {
        let e = gdt_entry(0, 0x1234_5678, 0);
        assert_eq!(kvm_segment_from_gdt(e, 0).base, 0x1234_5678);
    }

    #[test]
    fn code_segment_decodes_to_long_mode() {
        let s = kvm_segment_from_gdt(BOOT_GDT[1], BOOT_CODE_INDEX);
        assert_eq!(
            (s.selector, s.type_, s.s, s.present, s.l, s.db, s.g),
            (0x8, 0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!((s.base, s.limit, s.unusable), (0, 0xffff_ffff, 0));
    }

    #[test]
    fn data_segment_decodes_to_flat_rw() {
        let s = kvm_segment_from_gdt(BOOT_GDT[2], BOOT_DATA_INDEX);
        assert_eq!(
            (s.selector, s.type_, s.s, s.l, s.db, s.g),
            (0x10, 0x3, 1, 0, 1, 1)
        );
    }

    #[test]
    fn tss_segment_is_a_busy_system_segment() {
        let s = kvm_segment_from_gdt(BOOT_GDT[3], BOOT_TSS_INDEX);
        assert_eq!((s.selector, s.type_, s.s, s.present), (0x18, 0xb, 0, 1));
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn byte_granular_limit_is_not_scaled() {
        let s = kvm_segment_from_gdt(gdt_entry(0x0093, 0, 0x1234), 2);
        assert_eq!(s.limit, 0x1234);
    }

    #[test]
    fn gdt_and_idt_are_written_to_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(0xffu64, IDT_START).unwrap();
        write_gdt_idt(&mem).unwrap();
        for (i, want) in BOOT_GDT.iter().enumerate() {
            let got: u64 = mem.read_obj(GDT_START.unchecked_add(i as u64 * 8)).unwrap();
            assert_eq!(got, *want);
        }
        assert_eq!(mem.read_obj::<u64>(IDT_START).unwrap(), 0);
    }

    #[test]
    fn writing_outside_memory_names_the_structure() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        let err = write_gdt_idt(&mem).unwrap_err();
        assert!(matches!(
            err,
            Error::WriteGuest {
                what: "GDT",
                addr: 0x500,
                ..
            }
        ));
    }
}
