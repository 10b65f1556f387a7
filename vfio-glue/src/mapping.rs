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

    #[test]
    fn anonymous_mapping_has_the_asked_length() {
        let m = HostMapping::anonymous(8192).unwrap();
        assert_eq!(m.len(), 8192);
        assert_ne!(m.addr(), 0);
        assert_eq!(m.addr() % 4096, 0);
    }
}
