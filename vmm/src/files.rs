//! Opening the files a spec names (the spec itself, the kernel, the initramfs) so that
//! a wrong path can never hang Strait: the open does not wait (`O_NONBLOCK`, so a FIFO
//! without a writer opens at once) and anything but a regular file is refused before a
//! byte is read (a FIFO, a terminal or /dev/zero would otherwise block or never end).

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The path names something that is not a regular file.
#[derive(Debug, thiserror::Error)]
#[error("it is a {kind}, not a regular file; name a regular file")]
pub struct NotRegularFile {
    pub kind: &'static str,
}

/// Open `path` for reading without blocking and check it is a regular file. A FIFO,
/// device, socket or directory is an `InvalidInput` error carrying [`NotRegularFile`].
/// `O_NONBLOCK` stays set: it has no effect on regular files.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    Ok(file)
}

/// The error [`open_regular`] returns for a file of type `kind`.
pub fn not_regular(kind: FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        NotRegularFile {
            kind: kind_name(kind),
        },
    )
}

/// True when `e` is [`open_regular`]'s refusal of a non-regular file.
pub fn is_not_regular(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<NotRegularFile>())
}

fn kind_name(kind: FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    /// Make a FIFO at `path` (no writer ever opens it: reading it would block forever).
    pub(crate) fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    fn tempdir() -> vmm_sys_util::tempdir::TempDir {
        vmm_sys_util::tempdir::TempDir::new().unwrap()
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = tempdir();
        let fifo: PathBuf = dir.as_path().join("fifo");
        mkfifo(&fifo);
        let err = open_regular(&fifo).unwrap_err();
        assert!(is_not_regular(&err), "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn directory_and_device_are_refused() {
        for path in ["/", "/dev/zero"] {
            let err = open_regular(Path::new(path)).unwrap_err();
            assert!(is_not_regular(&err), "{path}: {err}");
        }
    }

    #[test]
    fn regular_file_opens() {
        let dir = tempdir();
        let path = dir.as_path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let text = std::io::read_to_string(open_regular(&path).unwrap()).unwrap();
        assert_eq!(text, "x");
    }
}
