//! Loading what the guest boots: the kernel (bzImage or ELF vmlinux, detected from its
//! header), the initramfs and the command line, following the Linux x86 boot protocol
//! (Documentation/arch/x86/boot.rst, "64-bit boot protocol"). Placement comes from the
//! `arch` layout; the zero page itself is built by `arch::x86_64::boot_params`.
//!
//! A bzImage whose payload Strait can decompress ([`crate::unpack`]) is booted as the ELF
//! vmlinux inside it, entered at its 64-bit entry (`startup_64`) at its link address, as
//! an ELF vmlinux is, with the bzImage's own setup header in the zero page (its
//! `cmdline_size`, `initrd_addr_max`, `init_size`, `loadflags` hold for the kernel proper
//! too). The guest's decompressor, and with it its physical KASLR, is skipped.
//! Decompressing runs beside RAM setup; when it has not finished by the time the kernel
//! is loaded, the bzImage is booted as it is (never later than before) and the result
//! only fills the cache for the next launch.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use arch::x86_64::layout;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::spec::{KernelSpec, MemorySpec};
use crate::unpack::{self, KernelCache, Lookup};

mod elf;
pub use elf::{ElfLayout, ElfProblem};

/// Offset of the setup header in a bzImage (boot.rst, "The real-mode kernel header").
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS", the setup header magic at 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The 64-bit entry point is 0x200 past the start of the protected-mode kernel.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// Boot protocol 2.06 added `cmdline_size`; older kernels take 255 bytes.
const PROTO_CMDLINE_SIZE: u16 = 0x206;
/// Bytes read to identify a kernel: the whole setup header, or an ELF header and its
/// program headers (a vmlinux has them right after the 64-byte ELF header).
const PROBE_LEN: usize = 0x1000;
/// Guest page size, the alignment of the initramfs.
const PAGE_SIZE: u64 = 4096;

/// Failures while loading the guest's kernel, initramfs or command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel.path: cannot read {}", path.display())]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel.path: {} is neither a bzImage nor an ELF vmlinux", path.display())]
    NotAKernel { path: PathBuf },
    #[error(
        "kernel.path: {} is an ELF file but not an x86-64 kernel: {problem}; \
         give a bzImage or an x86-64 vmlinux", path.display()
    )]
    NotX86Kernel { path: PathBuf, problem: ElfProblem },
    #[error(
        "kernel.path: {} needs RAM up to {end:#x} to decompress itself, \
         more than the 3 GiB below the PCI hole", path.display()
    )]
    KernelTooBig { path: PathBuf, end: u64 },
    #[error(
        "memory.size_mib: {size_mib} MiB is too small: {what} {need_mib} MiB \
         (the kernel decompresses itself up to {kernel_end:#x}); \
         set memory.size_mib to at least {need_mib}"
    )]
    RamTooSmall {
        size_mib: u64,
        need_mib: u64,
        kernel_end: u64,
        what: &'static str,
    },
    #[error("kernel.path: {} is truncated: {size} bytes, the header says {expected}", path.display())]
    TruncatedKernel {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("kernel.path: {} is a bzImage with boot protocol {version:#x}, 2.06+ needed", path.display())]
    OldBootProtocol { path: PathBuf, version: u16 },
    #[error("kernel.path: cannot load {}: {source}", path.display())]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel.initramfs: cannot read {}", path.display())]
    OpenInitramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel.initramfs: {} ({size} bytes) does not fit in guest RAM; raise memory.size_mib", path.display())]
    InitramfsTooBig {
        path: PathBuf,
        size: u64,
        #[source]
        source: arch::Error,
    },
    #[error("kernel.initramfs: cannot copy {} into guest RAM", path.display())]
    LoadInitramfs {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel.cmdline: {len} bytes with the NUL, this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel.cmdline: rejected: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the command line into guest RAM: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    #[error("cannot write the {step}")]
    Arch {
        step: &'static str,
        #[source]
        source: arch::Error,
    },
}

/// Kernel image formats Strait boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// What the header of a kernel file says, before loading it.
#[derive(Debug, Clone, Copy)]
pub struct KernelProbe {
    pub format: KernelFormat,
    /// bzImage setup header (None for ELF).
    pub header: Option<setup_header>,
    /// Where an ELF vmlinux loads (None for bzImage).
    pub elf: Option<ElfLayout>,
}

/// Why a header is not a bootable kernel (pure; [`open_kernel`] adds the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    NotAKernel,
    NotX86Kernel(ElfProblem),
    Truncated { expected: u64 },
    OldProtocol { version: u16 },
}

/// Identify a kernel from its first bytes and the file length.
pub fn probe_kernel(head: &[u8], file_len: u64) -> Result<KernelProbe, ProbeError> {
    if head.starts_with(b"\x7fELF") {
        let layout = elf::check_elf(head).map_err(ProbeError::NotX86Kernel)?;
        return Ok(KernelProbe {
            format: KernelFormat::Elf,
            header: None,
            elf: Some(layout),
        });
    }
    let mut hdr = setup_header::default();
    let end = SETUP_HEADER_OFFSET + hdr.as_slice().len();
    let Some(bytes) = head.get(SETUP_HEADER_OFFSET..end) else {
        return Err(ProbeError::NotAKernel);
    };
    hdr.as_mut_slice().copy_from_slice(bytes);
    if { hdr.header } != HDRS_MAGIC {
        return Err(ProbeError::NotAKernel);
    }
    if { hdr.version } < PROTO_CMDLINE_SIZE {
        return Err(ProbeError::OldProtocol {
            version: hdr.version,
        });
    }
    let sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    // syssize counts 16-byte paragraphs of the protected-mode part.
    let expected = (sects + 1) * 512 + u64::from(hdr.syssize) * 16;
    if file_len < expected {
        return Err(ProbeError::Truncated { expected });
    }
    Ok(KernelProbe {
        format: KernelFormat::BzImage,
        header: Some(hdr),
        elf: None,
    })
}

/// An opened, identified kernel file.
#[derive(Debug)]
pub struct KernelImage {
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
    pub probe: KernelProbe,
}

/// Open and identify the kernel at `path`.
pub fn open_kernel(path: &Path) -> Result<KernelImage, BootError> {
    let open_err = |source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    };
    let mut file = crate::files::open_regular(path).map_err(open_err)?;
    let len = file.metadata().map_err(open_err)?.len();
    let mut head = Vec::with_capacity(PROBE_LEN);
    file.by_ref()
        .take(PROBE_LEN as u64)
        .read_to_end(&mut head)
        .map_err(open_err)?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let probe = probe_kernel(&head, len).map_err(|e| match e {
        ProbeError::NotAKernel => BootError::NotAKernel {
            path: path.to_path_buf(),
        },
        ProbeError::NotX86Kernel(problem) => BootError::NotX86Kernel {
            path: path.to_path_buf(),
            problem,
        },
        ProbeError::Truncated { expected } => BootError::TruncatedKernel {
            path: path.to_path_buf(),
            size: len,
            expected,
        },
        ProbeError::OldProtocol { version } => BootError::OldBootProtocol {
            path: path.to_path_buf(),
            version,
        },
    })?;
    Ok(KernelImage {
        path: path.to_path_buf(),
        file,
        len,
        probe,
    })
}

impl KernelImage {
    /// Largest command line (with NUL) this kernel accepts, capped by the layout's area.
    pub fn cmdline_max(&self) -> usize {
        let kernel_max = match self.probe.header {
            Some(h) => h.cmdline_size as usize + 1,
            // ELF vmlinux carries no header; x86 COMMAND_LINE_SIZE is 2048.
            None => 2048,
        };
        kernel_max.min(layout::CMDLINE_MAX_SIZE)
    }

    /// The kernel's `initrd_addr_max`, if it says.
    pub fn initrd_addr_max(&self) -> Option<u32> {
        self.probe.header.map(|h| h.initrd_addr_max)
    }

    /// Lowest address an initramfs may start at without being overwritten while the
    /// kernel decompresses itself: past the image and past [`Self::decompression_end`].
    pub fn initramfs_floor(&self, loaded_end: u64) -> u64 {
        loaded_end.max(self.decompression_end())
    }

    /// End of the RAM a bzImage needs before it reads the memory map: `init_size` bytes
    /// from where it decompresses itself, which is `pref_address`, or its load address
    /// aligned up to `kernel_alignment` when that is higher and the kernel is relocatable
    /// (boot.rst, "init_size"; arch/x86/boot/compressed/head_64.S). 0 for an ELF.
    pub fn decompression_end(&self) -> u64 {
        let Some(h) = self.probe.header else {
            return 0;
        };
        let load = u64::from(h.code32_start);
        let aligned = load
            .checked_next_multiple_of(u64::from(h.kernel_alignment).max(1))
            .unwrap_or(u64::MAX);
        let start = match h.relocatable_kernel {
            0 => h.pref_address,
            _ => aligned.max(h.pref_address),
        };
        start.saturating_add(u64::from(h.init_size))
    }

    /// Where the loaded image would end (for checks before loading): a bzImage's
    /// protected-mode part is copied to `code32_start`, an ELF's segments to their
    /// physical addresses (linux-loader's `kernel_end` either way).
    pub fn estimated_end(&self) -> u64 {
        match (self.probe.header, self.probe.elf) {
            (Some(h), _) => {
                let setup = (u64::from(h.setup_sects.max(4)) + 1) * 512;
                u64::from(h.code32_start).saturating_add(self.len.saturating_sub(setup))
            }
            (None, Some(elf)) => elf.end,
            (None, None) => layout::HIMEM_START.0.saturating_add(self.len),
        }
    }

    /// Check guest RAM of `memory` holds what the kernel needs before it can read the
    /// memory map (its image and decompression area) plus an initramfs of
    /// `initramfs_len` bytes above that; below that the guest faults without a word.
    /// The error names the least `memory.size_mib` that works, a hugepage multiple.
    pub fn check_ram(
        &self,
        memory: &MemorySpec,
        initramfs_len: Option<u64>,
    ) -> Result<(), BootError> {
        let gap = layout::MEM_32BIT_GAP_START.0;
        let kernel_end = self.initramfs_floor(self.estimated_end());
        if kernel_end > gap {
            return Err(BootError::KernelTooBig {
                path: self.path.clone(),
                end: kernel_end,
            });
        }
        let initramfs =
            initramfs_len.map_or(0, |n| n.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1));
        let need = kernel_end.saturating_add(initramfs);
        let have = memory.size_mib.saturating_mul(1 << 20);
        // Past the gap the initramfs cannot fit whatever the size: place_initramfs says so.
        if have.min(gap) >= need || need > gap {
            return Ok(());
        }
        // The least valid size: whole MiB, a multiple of the hugepage size.
        let unit = memory.hugepages.page_size().max(1 << 20);
        Err(BootError::RamTooSmall {
            size_mib: memory.size_mib,
            need_mib: need.div_ceil(unit).saturating_mul(unit) >> 20,
            kernel_end,
            what: match initramfs_len {
                Some(_) => "the kernel and initramfs need",
                None => "the kernel needs",
            },
        })
    }
}

/// The kernel and initramfs, identified and read into this process, ready to copy into
/// guest RAM. Reading them (and decompressing a bzImage's kernel) needs no guest RAM, so
/// [`KernelFiles::spawn_read`] does it on a thread while RAM is prefaulted.
#[derive(Debug)]
pub struct KernelFiles {
    pub image: KernelImage,
    kernel: Vec<u8>,
    /// The ELF vmlinux decompressed from a bzImage `kernel`.
    unpacked: Unpacked,
    initramfs: Option<(PathBuf, Vec<u8>)>,
}

impl KernelFiles {
    /// The files as a reboot in place keeps them: without the vmlinux decompressed on
    /// the host (tens of MiB), so a restarted guest decompresses its bzImage itself.
    pub fn for_reboot(mut self) -> KernelFiles {
        self.unpacked = Unpacked::None;
        self
    }

    /// Identify the kernel and read it and the initramfs whole; decompress a bzImage's
    /// kernel (from the user's cache when it holds it) unless its format is unknown here.
    pub fn read(spec: &KernelSpec) -> Result<KernelFiles, BootError> {
        KernelFiles::read_with_cache(spec, KernelCache::for_user().as_ref())
    }

    /// [`KernelFiles::read`] with decompressed kernels cached in `cache`, if any.
    fn read_with_cache(
        spec: &KernelSpec,
        cache: Option<&KernelCache>,
    ) -> Result<KernelFiles, BootError> {
        let mut image = open_kernel(&spec.path)?;
        let mut kernel = Vec::new();
        image
            .file
            .read_to_end(&mut kernel)
            .map_err(|source| BootError::OpenKernel {
                path: spec.path.clone(),
                source,
            })?;
        let unpacked = match image.probe.header {
            Some(hdr) => match unpack::lookup(&spec.path, &kernel, &hdr, cache) {
                Lookup::Hit(vmlinux) => Unpacked::Ready(vmlinux),
                Lookup::Miss(job) => Unpacked::Pending(job.spawn()),
                Lookup::Guest => Unpacked::None,
            },
            None => Unpacked::None,
        };
        let initramfs = match &spec.initramfs {
            Some(path) => {
                let bytes = read_initramfs(path)?;
                Some((path.clone(), bytes))
            }
            None => None,
        };
        Ok(KernelFiles {
            image,
            kernel,
            unpacked,
            initramfs,
        })
    }

    /// [`KernelFiles::read`] on a thread of its own; join it where the bytes are needed.
    pub fn spawn_read(spec: &KernelSpec) -> JoinHandle<Result<KernelFiles, BootError>> {
        let spec = spec.clone();
        std::thread::spawn(move || KernelFiles::read(&spec))
    }

    /// The bytes to load and their format: the decompressed vmlinux if it is there by now,
    /// else the file as it is.
    fn to_load(&self) -> (KernelFormat, Cow<'_, [u8]>) {
        let file = (
            self.image.probe.format,
            Cow::Borrowed(self.kernel.as_slice()),
        );
        match &self.unpacked {
            Unpacked::Ready(vmlinux) => (KernelFormat::Elf, Cow::Borrowed(vmlinux.as_slice())),
            Unpacked::Pending(rx) => match rx.try_recv() {
                Ok(vmlinux) => (KernelFormat::Elf, Cow::Owned(vmlinux)),
                Err(_) => {
                    log::info!(
                        "kernel: {}: still decompressing when RAM was ready; the guest \
                         decompresses it this time",
                        self.image.path.display()
                    );
                    file
                }
            },
            Unpacked::None => file,
        }
    }
}

/// A bzImage's kernel decompressed on the host, if it is.
#[derive(Debug)]
enum Unpacked {
    /// From the cache.
    Ready(Vec<u8>),
    /// Being decompressed on a thread of its own.
    Pending(Receiver<Vec<u8>>),
    /// Left to the guest (not a bzImage, or a format Strait does not decompress).
    None,
}

/// The whole initramfs file (a regular file only: see [`crate::files`]).
fn read_initramfs(path: &Path) -> Result<Vec<u8>, BootError> {
    let mut bytes = Vec::new();
    crate::files::open_regular(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| BootError::OpenInitramfs {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// 64-bit entry point (`rip` of the boot vCPU).
    pub entry: GuestAddress,
    /// End of the loaded image.
    pub end: u64,
    /// Setup header for the zero page (a bzImage's, also when booted decompressed).
    pub header: Option<setup_header>,
}

/// Copy the kernel into guest RAM at `layout::HIMEM_START`.
pub fn load_kernel(mem: &GuestMemoryMmap, files: &KernelFiles) -> Result<LoadedKernel, BootError> {
    let himem = Some(layout::HIMEM_START);
    let image = &files.image;
    let (format, kernel) = files.to_load();
    let mut bytes = Cursor::new(kernel.as_ref());
    let result = match format {
        KernelFormat::BzImage => BzImage::load(mem, None, &mut bytes, himem),
        KernelFormat::Elf => Elf::load(mem, None, &mut bytes, himem),
    }
    .map_err(|source| BootError::LoadKernel {
        path: image.path.clone(),
        source,
    })?;
    let entry = match format {
        KernelFormat::BzImage => GuestAddress(result.kernel_load.0 + BZIMAGE_ENTRY_64),
        KernelFormat::Elf => result.kernel_load,
    };
    Ok(LoadedKernel {
        entry,
        end: result.kernel_end,
        // linux-loader's for a bzImage; the file's for the ELF decompressed from one.
        header: result.setup_header.or(image.probe.header),
    })
}

/// Choose where an initramfs of `size` bytes goes, per the arch placement rule.
pub fn place_initramfs(
    image: &KernelImage,
    ram_size: u64,
    kernel_end: u64,
    path: &Path,
    size: u64,
) -> Result<GuestAddress, BootError> {
    let floor = GuestAddress(image.initramfs_floor(kernel_end));
    arch::x86_64::initramfs_addr(ram_size, size, image.initrd_addr_max(), floor).map_err(|source| {
        BootError::InitramfsTooBig {
            path: path.to_path_buf(),
            size,
            source,
        }
    })
}

/// Copy the initramfs, if any, to the top of low RAM; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    files: &KernelFiles,
    kernel: &LoadedKernel,
    ram_size: u64,
) -> Result<Option<(GuestAddress, u64)>, BootError> {
    let Some((path, bytes)) = &files.initramfs else {
        return Ok(None);
    };
    let size = bytes.len() as u64;
    let addr = place_initramfs(&files.image, ram_size, kernel.end, path, size)?;
    mem.write_slice(bytes, addr)
        .map_err(|source| BootError::LoadInitramfs {
            path: path.clone(),
            source,
        })?;
    Ok(Some((addr, size)))
}

/// Check and write the command line at `layout::CMDLINE_START`; returns its size with NUL.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    image: &KernelImage,
    cmdline: &str,
) -> Result<usize, BootError> {
    let max = image.cmdline_max();
    let len = cmdline.len() + 1;
    if len > max {
        return Err(BootError::CmdlineTooLong { len, max });
    }
    let cmdline = Cmdline::try_from(cmdline, max).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, layout::CMDLINE_START, &cmdline)
        .map_err(BootError::WriteCmdline)?;
    Ok(len)
}

/// The x86 reset vector (CS:IP = F000:FFF0 after a reset), where a PC's BIOS starts.
// TODO(arch): this belongs in `layout.rs` next to the ACPI area it sits in.
pub const RESET_VECTOR: GuestAddress = GuestAddress(0xffff0);

/// Real-mode code at the reset vector: write the ACPI reset value to the reset register
/// and halt. Strait has no BIOS, but Linux jumps here to reboot when other methods are
/// unavailable: on a hardware-reduced ACPI platform its default reboot method becomes
/// EFI, and without EFI it falls back to `machine_real_restart` (jump to F000:FFF0)
/// before ever trying the ACPI reset register. Executing zeroed RAM there would spin
/// forever with no exit; this stub turns it into a reset request.
pub fn reset_vector_code() -> [u8; 11] {
    let [port_lo, port_hi] = layout::ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        port_lo,
        port_hi, // mov dx, ACPI_RESET_PORT
        0xb0,
        layout::ACPI_RESET_VALUE, // mov al, ACPI_RESET_VALUE
        0xee,                     // out dx, al
        0xfa,                     // cli
        0xf4,                     // hlt
        0xeb,
        0xfd, // jmp back to hlt
        0x90, // nop (padding)
    ]
}

/// Install [`reset_vector_code`] at [`RESET_VECTOR`].
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&reset_vector_code(), RESET_VECTOR)
        .map_err(|e| BootError::Arch {
            step: "reset vector",
            source: arch::Error::WriteGuest {
                what: "reset vector",
                addr: RESET_VECTOR.0,
                source: e,
            },
        })
}

#[cfg(test)]
fn read_back(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, addr).unwrap();
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::HugePages;

    /// The `kernel_header` fuzz target's invariant, over seeded mutations of a real
    /// header: probing any bytes gives a probe or an error, never a panic.
    #[test]
    fn mutated_headers_probe_without_panicking() {
        let mut x: u64 = 0x5eed_0b00_7000_0001;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = debian_like_head();
        for _ in 0..20_000 {
            let mut head = base.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % head.len();
                head[at] = next() as u8;
            }
            let keep = (next() as usize) % (head.len() + 1);
            let _ = probe_kernel(&head[..keep], next() % (64 << 20));
        }
    }

    /// A minimal bzImage header: `setup_sects` sectors of setup, `syssize` paragraphs.
    pub(crate) fn bzimage_head(version: u16, setup_sects: u8, syssize: u32) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_LEN];
        head[0x1f1] = setup_sects;
        head[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        head[0x202..0x206].copy_from_slice(b"HdrS");
        head[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        head
    }

    #[test]
    fn elf_magic_is_an_elf_kernel() {
        let head = elf::tests::elf_head(2, 62, 0x100_0000, 0x100_0000);
        let p = probe_kernel(&head, 4096).unwrap();
        assert_eq!(p.format, KernelFormat::Elf);
        assert_eq!(p.elf.map(|e| e.end), Some(0x140_0000));
    }

    #[test]
    fn elf_program_is_not_an_x86_kernel() {
        let head = elf::tests::elf_head(3, 62, 0x6ab0, 0);
        let err = probe_kernel(&head, 4096).unwrap_err();
        assert_eq!(
            err,
            ProbeError::NotX86Kernel(ElfProblem::NotExecutable { e_type: 3 })
        );
    }

    #[test]
    fn host_executable_is_not_a_kernel() {
        // This test binary, and /bin/ls where there is one: 64-bit ELF, not a vmlinux.
        for path in ["/proc/self/exe", "/bin/ls"] {
            let err = match open_kernel(Path::new(path)) {
                Err(BootError::OpenKernel { .. }) => continue,
                other => other.unwrap_err(),
            };
            assert!(
                matches!(err, BootError::NotX86Kernel { .. }),
                "{path}: {err:?}"
            );
        }
    }

    /// A bzImage header as Debian 12's kernel has it: loaded at 1 MiB, relocatable with
    /// 2 MiB alignment, decompressing at 16 MiB into 0x3f98000 bytes.
    pub(crate) fn debian_like_head() -> Vec<u8> {
        let mut head = bzimage_head(0x20f, 4, 0);
        head[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        head[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        head[0x234] = 1; // relocatable_kernel
        head[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        head[0x260..0x264].copy_from_slice(&0x3f9_8000u32.to_le_bytes()); // init_size
        head[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        head
    }

    fn image(head: &[u8]) -> KernelImage {
        KernelImage {
            path: "/k".into(),
            file: File::open("/proc/self/exe").unwrap(),
            len: 1 << 20,
            probe: probe_kernel(head, 1 << 20).unwrap(),
        }
    }

    fn memory(size_mib: u64, hugepages: HugePages) -> MemorySpec {
        MemorySpec {
            size_mib,
            hugepages,
            prefault: true,
        }
    }

    #[test]
    fn decompression_starts_at_pref_address_or_the_aligned_load_address() {
        let mut head = debian_like_head();
        assert_eq!(image(&head).decompression_end(), 0x4f9_8000);
        head[0x214..0x218].copy_from_slice(&0x210_0000u32.to_le_bytes());
        assert_eq!(image(&head).decompression_end(), 0x220_0000 + 0x3f9_8000);
        head[0x234] = 0; // not relocatable: always pref_address
        assert_eq!(image(&head).decompression_end(), 0x4f9_8000);
    }

    #[test]
    fn ram_below_the_decompression_area_is_refused_naming_the_minimum() {
        let err = image(&debian_like_head())
            .check_ram(&memory(64, HugePages::None), None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                BootError::RamTooSmall {
                    size_mib: 64,
                    need_mib: 80,
                    what: "the kernel needs",
                    ..
                }
            ),
            "{err:?}"
        );
        image(&debian_like_head())
            .check_ram(&memory(80, HugePages::None), None)
            .unwrap();
    }

    #[test]
    fn ram_minimum_counts_the_initramfs_and_the_hugepage_size() {
        let image = image(&debian_like_head());
        let need = |m: &MemorySpec, initrd| match image.check_ram(m, initrd) {
            Err(BootError::RamTooSmall { need_mib, .. }) => need_mib,
            other => panic!("{other:?}"),
        };
        assert_eq!(need(&memory(64, HugePages::None), Some(10 << 20)), 90);
        assert_eq!(need(&memory(64, HugePages::Size2M), None), 80);
        assert_eq!(need(&memory(64, HugePages::Size2M), Some(1 << 20)), 82);
        assert_eq!(need(&memory(16, HugePages::Size1G), None), 1024);
    }

    #[test]
    fn elf_kernel_needs_ram_up_to_its_segments() {
        let head = elf::tests::elf_head(2, 62, 0x100_0000, 0x100_0000);
        let err = image(&head)
            .check_ram(&memory(16, HugePages::None), None)
            .unwrap_err();
        assert!(
            matches!(err, BootError::RamTooSmall { need_mib: 20, .. }),
            "{err:?}"
        );
        image(&head)
            .check_ram(&memory(20, HugePages::None), None)
            .unwrap();
    }

    #[test]
    fn kernel_decompressing_past_3_gib_is_refused() {
        let mut head = debian_like_head();
        head[0x260..0x264].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = image(&head)
            .check_ram(&memory(4096, HugePages::None), None)
            .unwrap_err();
        assert!(matches!(err, BootError::KernelTooBig { .. }), "{err:?}");
    }

    #[test]
    fn hdrs_magic_is_a_bzimage() {
        let p = probe_kernel(&bzimage_head(0x20f, 27, 0x100), 28 * 512 + 0x1000).unwrap();
        assert_eq!(p.format, KernelFormat::BzImage);
        assert_eq!(p.header.map(|h| h.setup_sects), Some(27));
    }

    #[test]
    fn random_bytes_are_not_a_kernel() {
        assert_eq!(
            probe_kernel(&[0x42; PROBE_LEN], 1 << 20).unwrap_err(),
            ProbeError::NotAKernel
        );
    }

    #[test]
    fn short_file_is_not_a_kernel() {
        assert_eq!(
            probe_kernel(b"#!/bin/sh\n", 10).unwrap_err(),
            ProbeError::NotAKernel
        );
    }

    #[test]
    fn truncated_bzimage_is_detected() {
        let err = probe_kernel(&bzimage_head(0x20f, 27, 0x100), 28 * 512 + 0xfff).unwrap_err();
        assert_eq!(
            err,
            ProbeError::Truncated {
                expected: 28 * 512 + 0x1000
            }
        );
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let err = probe_kernel(&bzimage_head(0x20f, 0, 1), 5 * 512).unwrap_err();
        assert_eq!(
            err,
            ProbeError::Truncated {
                expected: 5 * 512 + 16
            }
        );
    }

    #[test]
    fn ancient_boot_protocol_rejected() {
        let err = probe_kernel(&bzimage_head(0x204, 4, 0), 1 << 20).unwrap_err();
        assert_eq!(err, ProbeError::OldProtocol { version: 0x204 });
    }

    #[test]
    fn missing_kernel_is_an_open_error() {
        let err = open_kernel(Path::new("/nonexistent/vmlinuz")).unwrap_err();
        assert!(matches!(err, BootError::OpenKernel { .. }));
    }

    #[test]
    fn non_kernel_file_is_rejected() {
        let path = std::env::temp_dir().join(format!("strait-notkernel-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let err = open_kernel(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, BootError::NotAKernel { .. }));
    }

    fn image_with_cmdline_size(cmdline_size: u32) -> KernelImage {
        let mut head = bzimage_head(0x20f, 4, 0);
        head[0x238..0x23c].copy_from_slice(&cmdline_size.to_le_bytes());
        let probe = probe_kernel(&head, 1 << 20).unwrap();
        let file = File::open("/proc/self/exe").unwrap();
        KernelImage {
            path: "/k".into(),
            file,
            len: 1 << 20,
            probe,
        }
    }

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    #[test]
    fn cmdline_longer_than_kernel_limit_rejected() {
        let image = image_with_cmdline_size(2047);
        let err = load_cmdline(&guest(), &image, &"x".repeat(2048)).unwrap_err();
        assert!(matches!(
            err,
            BootError::CmdlineTooLong {
                len: 2049,
                max: 2048
            }
        ));
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let image = image_with_cmdline_size(2047);
        let mem = guest();
        assert_eq!(load_cmdline(&mem, &image, "console=ttyS0").unwrap(), 14);
        assert_eq!(
            read_back(&mem, layout::CMDLINE_START, 14),
            b"console=ttyS0\0"
        );
    }

    #[test]
    fn reset_vector_fits_below_1mib_and_targets_the_reset_register() {
        let code = reset_vector_code();
        assert!(RESET_VECTOR.0 + code.len() as u64 <= layout::HIMEM_START.0);
        assert_eq!(
            u16::from_le_bytes([code[1], code[2]]),
            layout::ACPI_RESET_PORT
        );
        assert_eq!((code[3], code[4]), (0xb0, layout::ACPI_RESET_VALUE));
        let mem = guest();
        write_reset_vector(&mem).unwrap();
        assert_eq!(read_back(&mem, RESET_VECTOR, code.len()), code);
    }

    /// A fake bzImage file (valid header, zero body) and a spec booting it.
    fn fake_kernel_spec(tag: &str, initramfs: Option<PathBuf>) -> KernelSpec {
        let path = std::env::temp_dir().join(format!("strait-{tag}-{}", std::process::id()));
        let mut bytes = bzimage_head(0x20f, 4, 0x10);
        bytes.resize(5 * 512 + 0x100, 0);
        std::fs::write(&path, bytes).unwrap();
        KernelSpec {
            path,
            initramfs,
            cmdline: String::new(),
        }
    }

    #[test]
    fn kernel_files_read_kernel_and_initramfs_whole() {
        let initrd = std::env::temp_dir().join(format!("strait-initrd-{}", std::process::id()));
        std::fs::write(&initrd, b"070701 cpio").unwrap();
        let spec = fake_kernel_spec("kfiles", Some(initrd.clone()));
        let files = KernelFiles::spawn_read(&spec).join().unwrap();
        std::fs::remove_file(&spec.path).unwrap();
        std::fs::remove_file(&initrd).unwrap();
        let files = files.unwrap();
        assert_eq!(files.kernel.len(), 5 * 512 + 0x100);
        assert_eq!(files.image.probe.format, KernelFormat::BzImage);
        assert_eq!(files.initramfs, Some((initrd, b"070701 cpio".to_vec())));
    }

    #[test]
    fn kernel_files_report_a_missing_initramfs() {
        let spec = fake_kernel_spec("kfiles-noinitrd", Some("/nonexistent/initrd".into()));
        let err = KernelFiles::read(&spec).unwrap_err();
        std::fs::remove_file(&spec.path).unwrap();
        assert!(matches!(err, BootError::OpenInitramfs { .. }), "{err:?}");
    }

    /// A minimal ELF64 vmlinux: one PT_LOAD segment of `code` at physical `paddr`, entered
    /// there, with `bss` more bytes in memory than in the file.
    fn tiny_elf(paddr: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let mut e = b"\x7fELF\x02\x01\x01".to_vec();
        e.resize(16, 0);
        e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
        e.extend_from_slice(&1u32.to_le_bytes());
        for v in [paddr, 64, 0] {
            e.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
        }
        e.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 1, 0, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, sh*
        }
        e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e.extend_from_slice(&5u32.to_le_bytes()); // R+X
        let len = code.len() as u64;
        for v in [120, paddr, paddr, len, len + bss, 0x1000] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(code);
        e
    }

    /// A bzImage file whose gzip payload is `vmlinux`, with the header fields the zero
    /// page must carry over set to recognisable values.
    fn bzimage_of(vmlinux: &[u8], tag: &str) -> PathBuf {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(vmlinux).unwrap();
        let mut payload = gz.finish().unwrap();
        payload.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
        let mut bytes = bzimage_head(0x20f, 4, 0);
        let le32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        le32(&mut bytes, 0x230, 0x20_0000); // kernel_alignment
        le32(&mut bytes, 0x238, 2047); // cmdline_size
        le32(&mut bytes, 0x248, 0x40); // payload_offset
        le32(&mut bytes, 0x24c, payload.len() as u32); // payload_length
        le32(&mut bytes, 0x260, 0x0123_4000); // init_size
        bytes[0x211] = 0x01; // loadflags: LOADED_HIGH
        bytes[0x234] = 1; // relocatable_kernel
        bytes.resize(5 * 512 + 0x40, 0);
        bytes.extend_from_slice(&payload);
        let syssize = (bytes.len() - 5 * 512).div_ceil(16) as u32;
        le32(&mut bytes, 0x1f4, syssize);
        bytes.resize(5 * 512 + syssize as usize * 16, 0);
        let path = std::env::temp_dir().join(format!("strait-bz-{tag}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn decompressed_bzimage_boots_as_elf_with_its_own_setup_header() {
        let code = [0xf4u8; 32]; // hlt
        let path = bzimage_of(&tiny_elf(0x20_0000, &code, 0x1000), "elfhdr");
        let spec = KernelSpec {
            path: path.clone(),
            initramfs: None,
            cmdline: String::new(),
        };
        let files = KernelFiles::read_with_cache(&spec, None);
        std::fs::remove_file(&path).unwrap();
        let mut files = files.unwrap();
        if let Unpacked::Pending(rx) = &files.unpacked {
            files.unpacked = Unpacked::Ready(rx.recv().unwrap());
        }
        assert_eq!(files.to_load().0, KernelFormat::Elf);
        let mem = guest();
        let loaded = load_kernel(&mem, &files).unwrap();
        assert_eq!(loaded.entry, GuestAddress(0x20_0000));
        assert_eq!(loaded.end, 0x20_0000 + 32 + 0x1000);
        assert_eq!(read_back(&mem, GuestAddress(0x20_0000), 32), code);
        let h = loaded.header.unwrap();
        let carried = (
            h.header,
            h.version,
            h.init_size,
            h.kernel_alignment,
            h.relocatable_kernel,
            h.cmdline_size,
            h.loadflags,
        );
        assert_eq!(
            carried,
            (HDRS_MAGIC, 0x20f, 0x0123_4000, 0x20_0000, 1, 2047, 0x01)
        );
    }

    #[test]
    fn files_kept_for_a_reboot_boot_the_bzimage_itself() {
        let path = bzimage_of(&tiny_elf(0x20_0000, &[0xf4u8; 32], 0x1000), "reboot");
        let spec = KernelSpec {
            path: path.clone(),
            initramfs: None,
            cmdline: String::new(),
        };
        let files = KernelFiles::read_with_cache(&spec, None);
        std::fs::remove_file(&path).unwrap();
        let kept = files.unwrap().for_reboot();
        assert!(matches!(kept.unpacked, Unpacked::None));
        assert_eq!(kept.to_load().0, KernelFormat::BzImage);
    }

    #[test]
    fn bzimage_with_unknown_payload_boots_as_bzimage() {
        let spec = fake_kernel_spec("unknown-payload", None);
        let files = KernelFiles::read_with_cache(&spec, None);
        std::fs::remove_file(&spec.path).unwrap();
        assert_eq!(files.unwrap().to_load().0, KernelFormat::BzImage);
    }

    #[test]
    fn fifo_kernel_or_initramfs_is_refused_not_read_forever() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let fifo = dir.as_path().join("fifo");
        crate::files::tests::mkfifo(&fifo);
        let err = open_kernel(&fifo).unwrap_err();
        assert!(
            matches!(&err, BootError::OpenKernel { source, .. } if crate::files::is_not_regular(source)),
            "{err:?}"
        );
        let spec = fake_kernel_spec("kfiles-fifo", Some(fifo));
        let err = KernelFiles::read(&spec).unwrap_err();
        std::fs::remove_file(&spec.path).unwrap();
        assert!(
            matches!(&err, BootError::OpenInitramfs { source, .. } if crate::files::is_not_regular(source)),
            "{err:?}"
        );
    }

    #[test]
    fn initramfs_floor_respects_decompression_area() {
        let mut head = bzimage_head(0x20f, 4, 0);
        head[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        head[0x260..0x264].copy_from_slice(&0x200_0000u32.to_le_bytes()); // init_size
        let probe = probe_kernel(&head, 1 << 20).unwrap();
        let file = File::open("/proc/self/exe").unwrap();
        let image = KernelImage {
            path: "/k".into(),
            file,
            len: 1 << 20,
            probe,
        };
        assert_eq!(image.initramfs_floor(0x80_0000), 0x300_0000);
        assert_eq!(image.initramfs_floor(0x400_0000), 0x400_0000);
    }
}
