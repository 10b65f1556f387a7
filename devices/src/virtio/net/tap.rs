//! The virtio-net backend: a Linux tap device (Documentation/networking/tuntap.rst),
//! opened by name through /dev/net/tun or taken as an already-open fd.
//!
//! The tap carries the 12-byte virtio-net header of virtio 1.x (5.1.6) in front of each
//! frame (IFF_VNET_HDR with TUNSETVNETHDRSZ 12), so checksum and segmentation offload
//! metadata pass between guest and host kernel untouched, in both directions, whether
//! Strait moves the frames or vhost-net does. TUNSETOFFLOAD says which offloaded frames
//! the tap may hand the guest: those the driver accepted (GUEST_CSUM, GUEST_TSO4/6).
//!
//! Frames written to the tap with offload metadata (the HOST_* features) need nothing
//! from the tap's side: with IFF_VNET_HDR it accepts them always.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bytes of the virtio-net header every frame carries (virtio 1.x: always with
/// `num_buffers`, 5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// The tun/tap control device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

// linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// TUNSETOFFLOAD bits.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// `struct ifreq` as far as tun uses it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new() -> IfReq {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }
}

/// Why a tap could not be used. Each names the interface or fd; the spec layer adds the
/// field.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open {TUN_DEVICE}{}", tun_hint(.0))]
    OpenTun(#[source] io::Error),
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot attach to tap {name}{}", attach_hint(source))]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "fd {fd} is not an open tap with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; \
         open /dev/net/tun and TUNSETIFF it with those flags before handing it over"
    )]
    NotTap { fd: RawFd },
    #[error("cannot configure tap {name} ({what})")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn tun_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            ": load the tun module (`modprobe tun`) or create the device node"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            ": this user may not open it; fix its permissions or hand Strait an open \
             tap fd (\"tap_fd\")"
        }
        _ => "",
    }
}

fn attach_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            ": it belongs to another user (`ip tuntap add dev NAME mode tap user USER`) \
             or needs CAP_NET_ADMIN"
        }
        Some(libc::EBUSY) => ": another process has it open (a tap has one user)",
        Some(libc::EINVAL) => ": it exists but is not a tap (tun mode, or other flags)",
        _ => "",
    }
}

/// An open tap, non-blocking, with 12-byte virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// False for a plain packet fd (tests): no tun ioctl applies.
    is_tap: bool,
}

impl Tap {
    /// Attach to the existing tap `name` (made with `ip tuntap add dev NAME mode tap`).
    /// An interface that does not exist yet would be created: the spec layer checks
    /// /sys/class/net/NAME first, so a typo is not a new, unconnected tap.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::BadName(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is (name, flags and
        // padding to its 40 bytes); the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Tap::configure(file, name.into())
    }

    /// Take an fd the caller opened (e.g. inherited from a privileged launcher): it must
    /// be a tap attached with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let name = tap_fd_name(raw)?;
        let file = File::from(fd);
        // SAFETY: F_GETFL/F_SETFL on an fd we own.
        unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Tap::configure(file, name)
    }

    /// A "tap" over any packet fd (a datagram socket in tests); no ioctl is made.
    pub fn from_packet_fd(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.into(),
            is_tap: false,
        }
    }

    fn configure(file: File, name: String) -> Result<Tap, TapError> {
        let tap = Tap {
            file,
            name,
            is_tap: true,
        };
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        if rc < 0 {
            return Err(tap.configure_error("TUNSETVNETHDRSZ"));
        }
        // No send-buffer limit, as QEMU does: the tap's default (wmem_default, about
        // 208 KiB) holds only three 64 KiB TSO frames on their way into the host's
        // stack, and a writer that finds it full (vhost-net's TX worker, sending with
        // MSG_DONTWAIT) stops until the host frees them.
        let unlimited: libc::c_int = libc::c_int::MAX;
        // SAFETY: TUNSETSNDBUF reads one int.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETSNDBUF, &unlimited) };
        if rc < 0 {
            return Err(tap.configure_error("TUNSETSNDBUF"));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn configure_error(&self, what: &'static str) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Which offloaded frames the tap may deliver (TUN_F_* bits).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(self.configure_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap as a file (for VHOST_NET_SET_BACKEND).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Another fd of the same tap (for the I/O thread's epoll).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    /// Read one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read into `buf`, at most its length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Write one frame gathered from `iov`.
    ///
    /// # Safety
    /// Every iovec must point at memory readable for its length.
    pub unsafe fn write_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let cnt = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the caller vouches for the iovecs; writev only reads them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), cnt) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// Check that `name` is an existing network interface (for `validate`).
pub fn interface_exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
}

/// Check this user may open /dev/net/tun for reading and writing (for `validate`).
pub fn check_tun_access() -> Result<(), TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map(drop)
        .map_err(TapError::OpenTun)
}

/// The interface name of the tap open at `fd`, if it is one with IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR (for `validate` too: the fd stays open).
pub fn tap_fd_name(fd: RawFd) -> Result<String, TapError> {
    let mut req = IfReq::new();
    // SAFETY: TUNGETIFF writes one ifreq into `req`; on a non-tun fd it fails.
    let rc = unsafe { libc::ioctl(fd, TUNGETIFF, &mut req) };
    let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if rc < 0 || req.flags & want != want {
        return Err(TapError::NotTap { fd });
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(0);
    Ok(String::from_utf8_lossy(&req.name[..len]).into_owned())
}

/// Take ownership of an inherited fd number, if it is open.
pub fn inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only asks whether the number is open.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the number is open and the spec hands it to Strait alone (documented:
    // `tap_fd` is Strait's from then on), so nothing else closes it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
