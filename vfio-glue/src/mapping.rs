//! Host mappings of device memory (mmap of a VFIO region) that the VMM turns
//! into KVM memory slots. The mapping is unmapped when dropped, so it must
//! outlive the memory slot that points at it (the VMM removes slots first).

use std::io;
use std::os::unix::io::RawFd;

/// An mmap'ed range of this process's address space, unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: usize,
    len: usize,
}

impl HostMapping {
    /// Map `len` bytes of `fd` at `offset`, shared, with protection `prot`.
    pub fn map_file(fd: RawFd, offset: u64, len: usize, prot: i32) -> io::Result<Self> {
        let off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh mapping at a kernel-chosen address; it aliases no Rust
        // object and is only handed out as an address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(HostMapping {
            addr: p as usize,
            len,
        })
    }

    /// Map `len` bytes of `fd` at `offset` as [`HostMapping::map_file`] does, at a host
    /// address `a` with `(a - phase) % align == 0` (`align` a power of two).
    ///
    /// A BAR sits in guest physical space aligned to its size; mapping its host side
    /// with the same alignment lets the kernel back it with PMD/PUD entries (vfio-pci's
    /// huge pfnmap, Linux 6.12+: the BAR's pfns are aligned the same way on the host) and
    /// KVM with 2 MiB/1 GiB second-level pages, where both sides are aligned alike. The
    /// mapping is marked MADV_HUGEPAGE: vfio-pci's huge faults need transparent
    /// hugepages to apply to it, which on a host set to `madvise` they do only then (the
    /// testbed's `passthrough-612` runs so). The span's offset in its BAR is the
    /// `phase`. An `align` of a page or less is plain [`HostMapping::map_file`].
    pub fn map_file_aligned(
        fd: RawFd,
        offset: u64,
        len: usize,
        prot: i32,
        align: usize,
        phase: usize,
    ) -> io::Result<Self> {
        if align <= page_size() || !align.is_power_of_two() {
            return Self::map_file(fd, offset, len, prot);
        }
        let off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        let reserve = len
            .checked_add(align)
            .ok_or_else(|| io::Error::other("mapping size overflows"))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh inaccessible reservation at a kernel-chosen address; only used
        // to find room for the aligned mapping, then trimmed below.
        let base =
            unsafe { libc::mmap(std::ptr::null_mut(), reserve, libc::PROT_NONE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        let phase = phase & (align - 1);
        // The first address in the reservation congruent to `phase` modulo `align`.
        let at = base + (phase.wrapping_sub(base) & (align - 1));
        // SAFETY: [at, at + len) lies inside the reservation made above, which this
        // function owns; MAP_FIXED replaces that part of it and nothing else.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        let err = (p == libc::MAP_FAILED).then(io::Error::last_os_error);
        // Give back the reservation around the mapping (all of it on failure).
        let (head, tail_start) = match err {
            None => (at - base, at + len),
            Some(_) => (reserve, base + reserve),
        };
        // SAFETY: these ranges are parts of the reservation that hold no mapping of ours.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail_start < base + reserve {
                libc::munmap(tail_start as *mut libc::c_void, base + reserve - tail_start);
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        // Where vfio-pci maps BARs with huge pfns (Linux 6.12+), its PMD/PUD fault path
        // runs only where transparent hugepages apply to the mapping: always, or, on a
        // host set to `madvise`, on ranges marked so. Best effort: an older kernel maps
        // 4 KiB pfns either way, and a host set to `never` keeps them.
        // SAFETY: advice on the mapping just made, which this function owns.
        if unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) on the mapping at {at:#x}+{len:#x}: {}",
                io::Error::last_os_error()
            );
        }
        Ok(HostMapping { addr: at, len })
    }

    /// Anonymous read-write memory, standing in for device memory in tests.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(HostMapping {
            addr: p as usize,
            len,
        })
    }

    /// Start of the mapping, for KVM_SET_USER_MEMORY_REGION's userspace_addr.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned and nothing else unmaps it.
        let ret = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        if ret != 0 {
            log::error!(
                "munmap {:#x}+{:#x}: {}",
                self.addr,
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn aligned_file_mapping_lands_on_the_asked_phase() {
        let f = tempfile_of(3 * 4096);
        for (align, phase) in [(1 << 21, 0), (1 << 21, 0x3000), (1 << 30, 0x1000)] {
            let m = HostMapping::map_file_aligned(
                f.as_raw_fd(),
                4096,
                8192,
                libc::PROT_READ,
                align,
                phase,
            )
            .unwrap();
            assert_eq!(m.len(), 8192);
            assert_eq!(m.addr() as usize % align, phase, "align {align:#x}");
            // SAFETY: the mapping is 8 KiB long and readable.
            let byte = unsafe { *((m.addr() + 1) as *const u8) };
            assert_eq!(byte, 2, "the file's second page, second byte");
        }
    }

    #[test]
    fn small_alignment_is_a_plain_mapping() {
        let f = tempfile_of(4096);
        let m = HostMapping::map_file_aligned(f.as_raw_fd(), 0, 4096, libc::PROT_READ, 4096, 0)
            .unwrap();
        assert_eq!(m.addr() % 4096, 0);
    }

    #[test]
    fn failed_aligned_mapping_is_an_error() {
        let e = HostMapping::map_file_aligned(-1, 0, 4096, libc::PROT_READ, 1 << 21, 0);
        assert!(e.is_err());
    }

    /// An unlinked file of `len` bytes whose byte `i` is `(i / 4096 + i % 4096) as u8`:
    /// page `p` starts with `p`.
    fn tempfile_of(len: usize) -> std::fs::File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("strait-map-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i / 4096 + i % 4096) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn anonymous_mapping_has_the_asked_length() {
        let m = HostMapping::anonymous(8192).unwrap();
        assert_eq!(m.len(), 8192);
        assert_ne!(m.addr(), 0);
        assert_eq!(m.addr() % 4096, 0);
    }
}
