//! The Linux zero page (`struct boot_params`) for a 64-bit direct boot (Linux x86 boot
//! protocol, Documentation/arch/x86/boot.rst and zero-page.rst) and the initramfs placement
//! rule of the platform contract (top of low RAM, page aligned, below `initrd_addr_max`).

use linux_loader::loader::bootparam::{boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::e820::E820Entry;
use super::layout::{ram_below_4g, CMDLINE_MAX_SIZE, ZERO_PAGE_START};
use crate::{Error, Result};

/// `boot_flag` magic (boot.rst: "0xAA55").
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` default for an ELF vmlinux (16 MiB, x86_64 CONFIG_PHYSICAL_ALIGN
/// upper bound).
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// `initrd_addr_max` of kernels whose header predates the field (boot protocol < 2.03).
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

const PAGE_SIZE: u64 = 0x1000;

/// Offset of `startup_64` from the protected-mode kernel in a bzImage (boot.rst, "64-bit
/// boot protocol": the 64-bit entry is at the load address + 0x200).
pub const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// `xloadflags` XLF_KERNEL_64: the kernel has the 64-bit entry at offset 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;

/// Inputs of the zero page.
#[derive(Clone, Debug, Default)]
pub struct BootParamsConfig {
    /// Setup header linux-loader returned for a bzImage (`KernelLoaderResult::setup_header`);
    /// `None` for an ELF vmlinux, which gets protocol defaults.
    pub setup_header: Option<setup_header>,
    /// Where the command line was written (normally `layout::CMDLINE_START`).
    pub cmdline_addr: GuestAddress,
    /// Command line length in bytes including the terminating NUL.
    pub cmdline_size: usize,
    /// Initramfs address and size, if any.
    pub initramfs: Option<(GuestAddress, u64)>,
    /// The e820 map ([`e820_table`](super::e820::e820_table)).
    pub e820: Vec<E820Entry>,
    /// RSDP address for `boot_params.acpi_rsdp_addr` (the guest also finds it by scanning).
    pub rsdp_addr: Option<GuestAddress>,
}

/// The setup header for an ELF vmlinux, which has none: just the magics the kernel checks.
fn default_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        kernel_alignment: DEFAULT_KERNEL_ALIGNMENT,
        ..Default::default()
    }
}

/// Checks the command line against our area and, for a bzImage, the kernel's own limit
/// (`cmdline_size`, which excludes the NUL; protocol >= 2.06).
fn check_cmdline(cfg: &BootParamsConfig) -> Result<()> {
    let kernel_max = cfg
        .setup_header
        .map(|h| h.cmdline_size)
        .filter(|&m| m > 0)
        .map_or(CMDLINE_MAX_SIZE, |m| m as usize + 1);
    let max = kernel_max.min(CMDLINE_MAX_SIZE);
    if cfg.cmdline_size > max {
        return Err(Error::CmdlineTooLong {
            len: cfg.cmdline_size,
            max,
        });
    }
    Ok(())
}

fn fill_e820(params: &mut boot_params, e820: &[E820Entry]) -> Result<()> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820Entries {
            count: e820.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = (*entry).into();
    }
    // Bounded by E820_MAX_ENTRIES_ZEROPAGE (128) above.
    params.e820_entries = e820.len() as u8;
    Ok(())
}

/// Splits a 64-bit guest value into the low 32 bits and the `ext_*` high bits.
fn split(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// Builds the zero page from `cfg`: the bzImage setup header (or ELF defaults) with
/// `type_of_loader`, command line and initramfs pointers filled in, the e820 map and the
/// RSDP address. Errors with `CmdlineTooLong` or `TooManyE820Entries`.
pub fn build_boot_params(cfg: &BootParamsConfig) -> Result<boot_params> {
    check_cmdline(cfg)?;
    let mut params = boot_params {
        hdr: cfg.setup_header.unwrap_or_else(default_header),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;

    let (cmdline_lo, cmdline_hi) = split(cfg.cmdline_addr.0);
    params.hdr.cmd_line_ptr = cmdline_lo;
    params.ext_cmd_line_ptr = cmdline_hi;
    if cfg.setup_header.is_none() {
        // Bounded by CMDLINE_MAX_SIZE in check_cmdline.
        params.hdr.cmdline_size = cfg.cmdline_size as u32;
    }

    if let Some((addr, size)) = cfg.initramfs {
        let (image_lo, image_hi) = split(addr.0);
        let (size_lo, size_hi) = split(size);
        params.hdr.ramdisk_image = image_lo;
        params.ext_ramdisk_image = image_hi;
        params.hdr.ramdisk_size = size_lo;
        params.ext_ramdisk_size = size_hi;
    }

    fill_e820(&mut params, &cfg.e820)?;
    params.acpi_rsdp_addr = cfg.rsdp_addr.map_or(0, |a| a.0);
    Ok(params)
}

/// Writes `params` at [`ZERO_PAGE_START`] and returns that address (the `rsi` value).
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    params: &boot_params,
) -> Result<GuestAddress> {
    mem.write_obj(*params, ZERO_PAGE_START)
        .map_err(|source| Error::WriteGuest {
            what: "zero page",
            addr: ZERO_PAGE_START.0,
            source,
        })?;
    Ok(ZERO_PAGE_START)
}

/// The 64-bit entry point for `rip`, from linux-loader's `kernel_load` and setup header:
/// for a bzImage (`Some` header) `kernel_load + 0x200`, which needs XLF_KERNEL_64 (else
/// `KernelNot64Bit`); for an ELF vmlinux (`None`) `kernel_load` itself, which linux-loader
/// already set to the ELF entry.
pub fn kernel_entry(
    kernel_load: GuestAddress,
    setup_header: Option<&setup_header>,
) -> Result<GuestAddress> {
    let Some(hdr) = setup_header else {
        return Ok(kernel_load);
    };
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::KernelNot64Bit {
            xloadflags: hdr.xloadflags,
            version: hdr.version,
        });
    }
    Ok(GuestAddress(kernel_load.0 + BZIMAGE_ENTRY_64_OFFSET))
}

/// Chooses the initramfs address: the highest page-aligned address such that
/// `[addr, addr + size)` is below `min(ram_below_4g(ram_size), initrd_addr_max + 1)` and
/// at or above `kernel_end`. `initrd_addr_max` comes from the bzImage setup header
/// (`None` or 0 for ELF / old headers: the protocol default 0x37ff_ffff). Errors with
/// `PlaceInitramfs`.
pub fn initramfs_addr(
    ram_size: u64,
    size: u64,
    initrd_addr_max: Option<u32>,
    kernel_end: GuestAddress,
) -> Result<GuestAddress> {
    let max = initrd_addr_max
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let highest = ram_below_4g(ram_size).min(u64::from(max) + 1);
    let error = Error::PlaceInitramfs {
        size,
        lowest: kernel_end.0,
        highest,
    };
    let start = highest.checked_sub(size).ok_or(error)? & !(PAGE_SIZE - 1);
    if start < kernel_end.0 {
        return Err(Error::PlaceInitramfs {
            size,
            lowest: kernel_end.0,
            highest,
        });
    }
    Ok(GuestAddress(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::e820::e820_table;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn cfg() -> BootParamsConfig {
        BootParamsConfig {
            cmdline_addr: GuestAddress(0x20000),
            cmdline_size: 16,
            e820: e820_table(512 * MIB).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn elf_kernel_gets_header_magics() {
        let p = build_boot_params(&cfg()).unwrap();
        let (flag, magic, align) = (p.hdr.boot_flag, p.hdr.header, p.hdr.kernel_alignment);
        assert_eq!((flag, magic, align), (0xaa55, 0x5372_6448, 0x0100_0000));
    }

    #[test]
    fn loader_type_is_undefined() {
        let p = build_boot_params(&cfg()).unwrap();
        assert_eq!(p.hdr.type_of_loader, 0xff);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            version: 0x20f,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            ..default_header()
        };
        let p = build_boot_params(&BootParamsConfig {
            setup_header: Some(hdr),
            ..cfg()
        })
        .unwrap();
        let (version, cmdline_size, max) =
            (p.hdr.version, p.hdr.cmdline_size, p.hdr.initrd_addr_max);
        assert_eq!((version, cmdline_size, max), (0x20f, 2047, 0x7fff_ffff));
    }

    #[test]
    fn command_line_pointer_is_set() {
        let p = build_boot_params(&cfg()).unwrap();
        let (ptr, ext, size) = (p.hdr.cmd_line_ptr, p.ext_cmd_line_ptr, p.hdr.cmdline_size);
        assert_eq!((ptr, ext, size), (0x20000, 0, 16));
    }

    #[test]
    fn initramfs_is_described() {
        let p = build_boot_params(&BootParamsConfig {
            initramfs: Some((GuestAddress(0x1000_0000), 0x12345)),
            ..cfg()
        })
        .unwrap();
        let (image, size) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((image, size), (0x1000_0000, 0x12345));
    }

    #[test]
    fn e820_is_copied() {
        let c = cfg();
        let p = build_boot_params(&c).unwrap();
        assert_eq!(usize::from(p.e820_entries), c.e820.len());
        let e = p.e820_table[2];
        let (addr, size, kind) = (e.addr, e.size, e.r#type);
        assert_eq!((addr, size, kind), (0x10_0000, 511 * MIB, 1));
    }

    #[test]
    fn rsdp_address_is_passed() {
        let p = build_boot_params(&BootParamsConfig {
            rsdp_addr: Some(GuestAddress(0xe0000)),
            ..cfg()
        })
        .unwrap();
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
    }

    #[test]
    fn too_many_e820_entries_are_rejected() {
        let mut c = cfg();
        c.e820 = vec![c.e820[0]; 129];
        let err = build_boot_params(&c).unwrap_err();
        assert!(matches!(
            err,
            Error::TooManyE820Entries {
                count: 129,
                max: 128
            }
        ));
    }

    #[test]
    fn command_line_over_the_area_is_rejected() {
        let err = build_boot_params(&BootParamsConfig {
            cmdline_size: CMDLINE_MAX_SIZE + 1,
            ..cfg()
        })
        .unwrap_err();
        assert!(matches!(
            err,
            Error::CmdlineTooLong {
                max: CMDLINE_MAX_SIZE,
                ..
            }
        ));
    }

    #[test]
    fn command_line_over_the_kernel_limit_is_rejected() {
        let hdr = setup_header {
            cmdline_size: 255,
            ..default_header()
        };
        let err = build_boot_params(&BootParamsConfig {
            setup_header: Some(hdr),
            cmdline_size: 257,
            ..cfg()
        })
        .unwrap_err();
        assert!(matches!(err, Error::CmdlineTooLong { len: 257, max: 256 }));
    }

    #[test]
    fn zero_page_is_written_at_0x7000() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let p = build_boot_params(&cfg()).unwrap();
        assert_eq!(write_boot_params(&mem, &p).unwrap(), GuestAddress(0x7000));
        let back: boot_params = mem.read_obj(GuestAddress(0x7000)).unwrap();
        let magic = back.hdr.header;
        assert_eq!(magic, HDRS_MAGIC);
    }

    #[test]
    fn elf_entry_is_kernel_load() {
        let entry = kernel_entry(GuestAddress(0x100_0000), None).unwrap();
        assert_eq!(entry, GuestAddress(0x100_0000));
    }

    #[test]
    fn bzimage_entry_is_0x200_past_the_load_address() {
        let hdr = setup_header {
            xloadflags: XLF_KERNEL_64,
            ..default_header()
        };
        let entry = kernel_entry(GuestAddress(0x10_0000), Some(&hdr)).unwrap();
        assert_eq!(entry, GuestAddress(0x10_0200));
    }

    #[test]
    fn bzimage_without_64bit_entry_is_rejected() {
        let hdr = setup_header {
            version: 0x20a,
            ..default_header()
        };
        let err = kernel_entry(GuestAddress(0x10_0000), Some(&hdr)).unwrap_err();
        assert!(matches!(
            err,
            Error::KernelNot64Bit {
                xloadflags: 0,
                version: 0x20a
            }
        ));
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram() {
        let addr = initramfs_addr(512 * MIB, 0x1800, Some(0x7fff_ffff), GuestAddress(MIB));
        assert_eq!(addr.unwrap(), GuestAddress(512 * MIB - 0x2000));
    }

    #[test]
    fn initramfs_respects_initrd_addr_max() {
        let addr = initramfs_addr(2 * GIB, 0x1000, None, GuestAddress(MIB)).unwrap();
        assert_eq!(addr, GuestAddress(0x3800_0000 - 0x1000));
    }

    #[test]
    fn initramfs_stays_below_the_32bit_hole() {
        let addr = initramfs_addr(8 * GIB, 0x1000, Some(u32::MAX), GuestAddress(MIB));
        assert_eq!(addr.unwrap(), GuestAddress(3 * GIB - 0x1000));
    }

    #[test]
    fn initramfs_over_the_kernel_is_rejected() {
        let err = initramfs_addr(64 * MIB, 60 * MIB, None, GuestAddress(8 * MIB)).unwrap_err();
        assert!(matches!(err, Error::PlaceInitramfs { highest, .. } if highest == 64 * MIB));
    }

    #[test]
    fn initramfs_larger_than_ram_is_rejected() {
        let err = initramfs_addr(64 * MIB, GIB, None, GuestAddress(MIB)).unwrap_err();
        assert!(matches!(err, Error::PlaceInitramfs { size: GIB, .. }));
    }
}
