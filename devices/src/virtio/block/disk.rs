//! The virtio-blk backend: a raw image file or a host block device, read and written
//! with positioned vectored I/O straight into guest memory (preadv/pwritev), flushed
//! with fdatasync, discarded and zeroed with fallocate (files) or the BLKDISCARD /
//! BLKZEROOUT ioctls (block devices).
//!
//! `direct` opens with O_DIRECT (no host page cache): the guest's buffers and offsets
//! must then be aligned to the host's logical block size, which Linux guests do for
//! 512-byte sectors on 512-byte disks. O_DIRECT is refused on tmpfs before Linux 6.6.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes per virtio-blk sector (5.2.6: always 512, whatever the host's block size).
pub const SECTOR_SIZE: u64 = 512;

// linux/fs.h: _IO(0x12, 119) and _IO(0x12, 127).
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// How to open a disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskOptions {
    pub readonly: bool,
    /// O_DIRECT: bypass the host page cache.
    pub direct: bool,
}

/// Why a disk could not be opened. Each names the path; the spec layer adds the field.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {} {}", path.display(), open_hint(source, *direct, *readonly))]
    Open {
        path: PathBuf,
        direct: bool,
        readonly: bool,
        #[source]
        source: io::Error,
    },
    #[error("{} is neither a regular file nor a block device", path.display())]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("cannot read the size of {}", path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is {size} bytes, not a multiple of the 512-byte sector; \
         pad it (`truncate -s %512 FILE` rounds down, `truncate -s SIZE` to a multiple) or \
         use another image", path.display()
    )]
    NotSectorMultiple { path: PathBuf, size: u64 },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

fn open_hint(e: &io::Error, direct: bool, readonly: bool) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EINVAL) if direct => {
            "with O_DIRECT (\"direct\": true): its filesystem refuses it (tmpfs before \
             Linux 6.6); use \"direct\": false or put the image on another filesystem"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) if !readonly => {
            "for writing: this user may not write it; fix its permissions or set \
             \"readonly\": true"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => "for reading: fix its permissions",
        Some(libc::ENOENT) => "(no such file)",
        _ => "",
    }
}

/// An open disk image or block device.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    size: u64,
    block_device: bool,
    options: DiskOptions,
}

impl DiskFile {
    /// Open `path` as `run` will; the size must be a non-zero multiple of 512 bytes.
    pub fn open(path: &Path, options: DiskOptions) -> Result<DiskFile, DiskError> {
        let mut flags = libc::O_CLOEXEC;
        if options.direct {
            flags |= libc::O_DIRECT;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!options.readonly)
            .custom_flags(flags)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                direct: options.direct,
                readonly: options.readonly,
                source,
            })?;
        let size_err = |source| DiskError::Size {
            path: path.to_path_buf(),
            source,
        };
        let kind = file.metadata().map_err(size_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotFileOrBlockDevice {
                path: path.to_path_buf(),
            });
        }
        // SEEK_END gives the size of block devices too, where metadata says 0.
        // SAFETY: lseek on an fd we own; no memory is involved.
        let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        let size = u64::try_from(end).map_err(|_| size_err(io::Error::last_os_error()))?;
        if size == 0 {
            return Err(DiskError::Empty {
                path: path.to_path_buf(),
            });
        }
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::NotSectorMultiple {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(DiskFile {
            file,
            size,
            block_device: kind.is_block_device(),
            options,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn readonly(&self) -> bool {
        self.options.readonly
    }

    /// Fill the buffers `iov` from `offset` on. The caller checked the range is inside the
    /// disk; a short read (the file shrank under us) is an error.
    ///
    /// # Safety
    /// Every iovec must describe writable memory that stays mapped during the call.
    pub unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller's contract covers the buffers.
        unsafe { self.vectored(iov, offset, false) }
    }

    /// Write the buffers `iov` at `offset`.
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped during the call.
    pub unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller's contract covers the buffers.
        unsafe { self.vectored(iov, offset, true) }
    }

    /// preadv/pwritev until every byte moved, advancing over partial transfers.
    unsafe fn vectored(&self, iov: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let (mut start, mut offset) = (0usize, offset);
        while start < iov.len() {
            let rest = &iov[start..];
            let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: `rest` holds valid iovecs (the caller's contract); the kernel
            // reads or writes only inside them.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, rest.as_ptr(), count, off)
                } else {
                    libc::preadv(fd, rest.as_ptr(), count, off)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut done = n as usize;
            offset += done as u64;
            while done > 0 && start < iov.len() {
                let v = &mut iov[start];
                if done >= v.iov_len {
                    done -= v.iov_len;
                    start += 1;
                } else {
                    // SAFETY: advancing inside the same buffer.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(done) }.cast();
                    v.iov_len -= done;
                    done = 0;
                }
            }
            while start < iov.len() && iov[start].iov_len == 0 {
                start += 1;
            }
        }
        Ok(())
    }

    /// Make written data durable (VIRTIO_BLK_T_FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Give `len` bytes at `offset` back to the host (VIRTIO_BLK_T_DISCARD): a hole in a
    /// file, a discard on a block device. Reads of the range return zeros or old data.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device {
            return self.range_ioctl(BLKDISCARD, offset, len);
        }
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Make `len` bytes at `offset` read as zeros (VIRTIO_BLK_T_WRITE_ZEROES); `unmap`
    /// lets the host free them.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.block_device {
            return self.range_ioctl(BLKZEROOUT, offset, len);
        }
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            // Filesystems without ZERO_RANGE still punch holes, which read as zeros.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && !unmap => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            r => r,
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn range_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read two u64s from the pointer, which is `range`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, range.as_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::TempDir;

    #[test]
    fn size_not_a_sector_multiple_is_refused() {
        let d = TempDir::new();
        assert!(matches!(
            DiskFile::open(&d.image(1000, 0), DiskOptions::default()),
            Err(DiskError::NotSectorMultiple { size: 1000, .. })
        ));
    }

    #[test]
    fn empty_image_is_refused() {
        let d = TempDir::new();
        assert!(matches!(
            DiskFile::open(&d.image(0, 0), DiskOptions::default()),
            Err(DiskError::Empty { .. })
        ));
    }

    #[test]
    fn a_directory_is_not_a_disk() {
        let d = TempDir::new();
        let readonly = DiskOptions {
            readonly: true,
            direct: false,
        };
        let e = DiskFile::open(d.path(), readonly);
        assert!(
            matches!(e, Err(DiskError::NotFileOrBlockDevice { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let d = TempDir::new();
        let e = DiskFile::open(&d.path().join("nope.img"), DiskOptions::default()).unwrap_err();
        assert!(matches!(e, DiskError::Open { .. }));
        assert!(e.to_string().contains("nope.img"), "{e}");
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn vectored_io_round_trips_across_buffers() {
        let d = TempDir::new();
        let disk = DiskFile::open(&d.image(4096, 0xa5), DiskOptions::default()).unwrap();
        assert_eq!(disk.size(), 4096);
        let (mut a, mut b) = ([1u8; 100], [2u8; 412]);
        let mut v = [iov(&mut a), iov(&mut b)];
        // SAFETY: the iovecs point at the arrays above, alive for the call.
        unsafe { disk.write_vectored_at(&mut v, 512) }.unwrap();
        let mut back = [0u8; 512];
        let mut v = [iov(&mut back)];
        // SAFETY: as above.
        unsafe { disk.read_vectored_at(&mut v, 512) }.unwrap();
        assert_eq!(&back[..100], &[1u8; 100][..]);
        assert_eq!(&back[100..], &[2u8; 412][..]);
        disk.flush().unwrap();
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_hang() {
        let d = TempDir::new();
        let disk = DiskFile::open(&d.image(512, 0), DiskOptions::default()).unwrap();
        let mut buf = [0u8; 512];
        let mut v = [iov(&mut buf)];
        // SAFETY: the iovec points at `buf`.
        let e = unsafe { disk.read_vectored_at(&mut v, 512) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn write_zeroes_and_discard_read_back_as_zeros() {
        let d = TempDir::new();
        let path = d.image(8192, 0xa5);
        let disk = DiskFile::open(&path, DiskOptions::default()).unwrap();
        disk.write_zeroes(0, 4096, false).unwrap();
        disk.discard(4096, 4096).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data.iter().all(|&b| b == 0));
    }
}
