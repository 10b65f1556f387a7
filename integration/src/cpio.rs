//! A writer for the "newc" cpio format (SVR4 without CRC), the format the
//! Linux kernel unpacks as an initramfs (Documentation/driver-api/
//! early-userspace/buffer-format.rst). Written here rather than shelling out to
//! `cpio` so images can hold device nodes (`/dev/console`) without root, and so
//! archives are byte-for-byte reproducible (fixed inode numbers and mtimes).
//! Archives are left uncompressed: the kernel accepts that, and skipping
//! decompression saves time under TCG.

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds one newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

/// The fields of one newc header that vary between entries.
struct Entry<'a> {
    path: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory. Parents must be added first: the kernel does not create them.
    pub fn dir(&mut self, path: &str) {
        self.push(Entry {
            path,
            mode: S_IFDIR | 0o755,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        });
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.push(Entry {
            path,
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            rdev: (0, 0),
            data,
        });
    }

    /// Adds a symbolic link; the link target is stored as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let data = target.as_bytes();
        self.push(Entry {
            path,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            rdev: (0, 0),
            data,
        });
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let mode = S_IFCHR | (perm & 0o7777);
        self.push(Entry {
            path,
            mode,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        });
    }

    /// Appends the trailer and returns the archive bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.push(Entry {
            path: TRAILER,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
            data: &[],
        });
        self.buf
    }

    fn push(&mut self, entry: Entry<'_>) {
        let ino = if entry.path == TRAILER {
            0
        } else {
            self.next_ino += 1;
            self.next_ino
        };
        let name = entry.path.trim_start_matches('/');
        // namesize counts the terminating NUL.
        let namesize = name.len() + 1;
        let fields = [
            ino,
            entry.mode,
            0, // uid
            0, // gid
            entry.nlink,
            0, // mtime: fixed, for reproducible archives
            entry.data.len() as u32,
            0, // devmajor
            0, // devminor
            entry.rdev.0,
            entry.rdev.1,
            namesize as u32,
            0, // check (unused by newc)
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(entry.data);
        self.pad4();
    }

    /// Header+name and data are each padded to a multiple of four bytes.
    fn pad4(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(archive: &[u8], entry_offset: usize, index: usize) -> u32 {
        let start = entry_offset + 6 + index * 8;
        let text = std::str::from_utf8(&archive[start..start + 8]).unwrap_or("zzzzzzzz");
        u32::from_str_radix(text, 16).unwrap_or(u32::MAX)
    }

    #[test]
    fn header_is_newc_with_name_and_padding() {
        let mut w = CpioWriter::new();
        w.file("/init", 0o755, b"#!/bin/sh\n");
        let archive = w.finish();
        assert_eq!(&archive[..6], b"070701");
        assert_eq!(field(&archive, 0, 1), S_IFREG | 0o755);
        assert_eq!(field(&archive, 0, 6), 10); // filesize
        assert_eq!(field(&archive, 0, 11), 5); // "init" + NUL
                                               // 110-byte header + 5-byte name = 115, padded to 116.
        assert_eq!(&archive[110..115], b"init\0");
        assert_eq!(&archive[116..126], b"#!/bin/sh\n");
    }

    #[test]
    fn archive_ends_with_trailer_and_is_aligned() {
        let mut w = CpioWriter::new();
        w.dir("dev");
        w.symlink("bin/sh", "busybox");
        let archive = w.finish();
        assert_eq!(archive.len() % 4, 0);
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn char_device_carries_rdev() {
        let mut w = CpioWriter::new();
        w.char_dev("dev/console", 0o600, 5, 1);
        let archive = w.finish();
        assert_eq!(field(&archive, 0, 1), S_IFCHR | 0o600);
        assert_eq!(field(&archive, 0, 9), 5);
        assert_eq!(field(&archive, 0, 10), 1);
    }

    #[test]
    fn inode_numbers_are_distinct_and_deterministic() {
        let build = || {
            let mut w = CpioWriter::new();
            w.dir("a");
            w.dir("b");
            w.finish()
        };
        let archive = build();
        let second = 112; // 110 header + "a\0" = 112, already aligned
        assert_ne!(field(&archive, 0, 0), field(&archive, second, 0));
        assert_eq!(archive, build());
    }
}
