//! Giving up privileges, per thread (Linux credentials, capabilities and Landlock
//! domains belong to threads; capabilities(7), landlock(7)): the bounding set, the
//! user and group ([`RunAs`]), every capability, then a Landlock domain that handles
//! every filesystem right and grants only the [`PathRule`]s a thread still needs.
//!
//! What the spec names needs no rule once the guest runs: the kernel and initramfs are
//! read (and kept for a reboot in place), the disks, the console file and the device
//! nodes are open fds. Only the main thread keeps one right: removing the API socket
//! at exit ([`main_thread_paths`]).
//!
//! Raw syscalls on purpose: glibc's setuid family would signal every other thread to
//! change too, and threads already under seccomp may not make those calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// The user and group to run as after setup (`--user UID[:GID]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for RunAs {
    type Err = String;

    /// `UID` (the group is the same number) or `UID:GID`, both numeric.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |v: &str, what: &str| {
            v.parse::<u32>().map_err(|_| {
                format!("{what} `{v}` is not a number (use UID[:GID], e.g. 1000:1000)")
            })
        };
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (num(u, "user id")?, num(g, "group id")?),
            None => {
                let u = num(s, "user id")?;
                (u, u)
            }
        };
        if uid == 0 {
            return Err("--user 0 would keep root; name an unprivileged user".into());
        }
        Ok(RunAs { uid, gid })
    }
}

fn check(ret: libc::c_long, what: &'static str) -> Result<(), SandboxError> {
    if ret < 0 {
        return Err(SandboxError::Privileges {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Drop every capability from this thread's bounding set (needs CAP_SETPCAP, which an
/// unprivileged Strait does not have and does not need to drop).
fn drop_bounding_set() {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 {
            // EINVAL: past the last capability; EPERM: no CAP_SETPCAP.
            break;
        }
    }
}

/// Switch this thread to `run_as`, with no supplementary groups.
fn switch_user(run_as: RunAs) -> Result<(), SandboxError> {
    let (uid, gid) = (run_as.uid, run_as.gid);
    // SAFETY: raw credential syscalls with integer arguments and a null group list.
    unsafe {
        check(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            "setgroups",
        )?;
        check(
            libc::syscall(libc::SYS_setresgid, gid, gid, gid),
            "setresgid",
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, uid, uid, uid),
            "setresuid",
        )?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

use libc::c_int;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clear this thread's effective, permitted and inheritable sets.
fn drop_capabilities() -> Result<(), SandboxError> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, both ours.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(ret, "capset")?;
    // Ambient capabilities go with permitted ones; clear them anyway for old kernels.
    // SAFETY: prctl with integer arguments; EINVAL on kernels without ambient sets.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

/// Landlock ABI 1 and 2 filesystem rights (include/uapi/linux/landlock.h).
const LANDLOCK_ACCESS_FS_ABI1: u64 = (1 << 13) - 1;
const LANDLOCK_ACCESS_FS_REFER: u64 = 1 << 13;
/// Unlink a file (not a directory) beneath the rule's directory.
pub const LANDLOCK_ACCESS_FS_REMOVE_FILE: u64 = 1 << 5;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: u32 = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// struct landlock_path_beneath_attr (packed in the uAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// A right a thread keeps under Landlock: `access` beneath the directory `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub access: u64,
}

/// What the main thread may still do to files once the guest runs: remove the API
/// socket (`api_socket`) when it exits, i.e. remove files in the socket's directory.
pub fn main_thread_paths(api_socket: Option<&Path>) -> Vec<PathRule> {
    api_socket
        .map(|s| {
            let dir = match s.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            PathRule {
                path: dir,
                access: LANDLOCK_ACCESS_FS_REMOVE_FILE,
            }
        })
        .into_iter()
        .collect()
}

/// Grant `rule` in the ruleset `ruleset`.
fn add_rule(ruleset: c_int, rule: &PathRule) -> Result<(), SandboxError> {
    let path =
        CString::new(rule.path.as_os_str().as_bytes()).map_err(|e| SandboxError::Privileges {
            what: "Landlock rule path",
            source: io::Error::other(e),
        })?;
    // SAFETY: a NUL-terminated path; O_PATH opens no file contents.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY,
        )
    };
    check(fd.into(), "open a Landlock rule's directory")?;
    let attr = PathBeneathAttr {
        allowed_access: rule.access,
        parent_fd: fd,
    };
    // SAFETY: `attr` is a landlock_path_beneath_attr for the open `fd`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &attr,
            0u32,
        )
    };
    // SAFETY: our fd, closed once.
    unsafe { libc::close(fd) };
    check(ret, "landlock_add_rule")
}

/// Check the domain is in force: opening `/` must be refused.
fn check_in_force() -> Result<(), SandboxError> {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: the fd just opened, closed once.
        unsafe { libc::close(fd) };
        return Err(SandboxError::Privileges {
            what: "Landlock in force",
            source: io::Error::other("opening / is still allowed"),
        });
    }
    Ok(())
}

/// What Landlock did for this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlock {
    /// Restricted with this ABI version.
    Restricted(i64),
    /// The kernel has no Landlock (or it is disabled).
    Unsupported,
}

/// Forbid this thread (and threads it starts) every filesystem access Landlock
/// governs (opening, creating, removing, linking, executing) but `keep`; then check
/// that opening `/` is refused.
fn landlock_restrict(keep: &[PathRule]) -> Result<Landlock, SandboxError> {
    // SAFETY: version query: null attr, size 0.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if abi < 1 {
        return Ok(Landlock::Unsupported);
    }
    let mut handled = LANDLOCK_ACCESS_FS_ABI1;
    if abi >= 2 {
        handled |= LANDLOCK_ACCESS_FS_REFER;
    }
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: `attr` is a valid ruleset attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    check(fd, "landlock_create_ruleset")?;
    let fd = fd as c_int;
    let added = keep.iter().try_for_each(|r| add_rule(fd, r));
    // SAFETY: `fd` is the ruleset fd just created; flags 0.
    let ret = added.map(|()| unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) });
    // SAFETY: our fd, closed once.
    unsafe { libc::close(fd) };
    check(ret?, "landlock_restrict_self")?;
    check_in_force()?;
    Ok(Landlock::Restricted(abi))
}

/// Give up everything this thread could still do beyond its job: the bounding set,
/// root (to `run_as`), every capability, no_new_privs, and file access (Landlock) but
/// `keep`.
pub(super) fn give_up(run_as: Option<RunAs>, keep: &[PathRule]) -> Result<Landlock, SandboxError> {
    drop_bounding_set();
    // A thread started by one that already switched is that user already, and may no
    // longer call setgroups.
    // SAFETY: geteuid has no preconditions.
    if let Some(r) = run_as.filter(|r| unsafe { libc::geteuid() } != r.uid) {
        switch_user(r)?;
    }
    drop_capabilities()?;
    // SAFETY: prctl with integer arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret.into(), "PR_SET_NO_NEW_PRIVS")?;
    landlock_restrict(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parses_uid_and_optional_gid() {
        assert_eq!(
            "1000".parse::<RunAs>(),
            Ok(RunAs {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!("1000:36".parse::<RunAs>(), Ok(RunAs { uid: 1000, gid: 36 }));
        assert!("kvm".parse::<RunAs>().is_err());
        assert!("0:0".parse::<RunAs>().is_err());
        assert!("1000:".parse::<RunAs>().is_err());
    }

    #[test]
    fn a_thread_that_gave_up_has_no_capabilities_and_cannot_open_files() {
        let t = std::thread::spawn(|| {
            let landlock = give_up(None, &[]).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status");
            (
                landlock,
                status.map(|s| s.contains("CapEff:\t0000000000000000")),
            )
        });
        let (landlock, status) = t.join().unwrap();
        match landlock {
            Landlock::Restricted(_) => assert!(status.is_err(), "open was allowed"),
            Landlock::Unsupported => assert_eq!(status.ok(), Some(true)),
        }
    }

    #[test]
    fn the_main_thread_keeps_only_removing_the_api_socket() {
        assert_eq!(main_thread_paths(None), Vec::new());
        assert_eq!(
            main_thread_paths(Some(Path::new("/run/strait/vm.sock"))),
            vec![PathRule {
                path: PathBuf::from("/run/strait"),
                access: LANDLOCK_ACCESS_FS_REMOVE_FILE,
            }]
        );
        assert_eq!(
            main_thread_paths(Some(Path::new("vm.sock")))[0].path,
            PathBuf::from(".")
        );
    }

    #[test]
    fn a_kept_path_allows_only_its_right() {
        let dir = std::env::temp_dir().join(format!("strait-landlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (sock, other) = (dir.join("vm.sock"), dir.join("other"));
        std::fs::write(&sock, b"").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let keep = main_thread_paths(Some(&sock));
        let t = std::thread::spawn(move || {
            let landlock = give_up(None, &keep).unwrap();
            let read = std::fs::read(&other).is_ok();
            let removed = std::fs::remove_file(&sock).is_ok();
            (landlock, read, removed)
        });
        let (landlock, read, removed) = t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        if let Landlock::Restricted(_) = landlock {
            assert!(!read, "reading beside the socket was allowed");
            assert!(removed, "removing the socket was refused");
        }
    }
}
