//! Giving up privileges, per thread (Linux credentials, capabilities and Landlock
//! domains belong to threads; capabilities(7), landlock(7)): the bounding set, the
//! user and group ([`RunAs`]), every capability, then a Landlock domain that allows
//! no file access at all (every file Strait needs is open by then).
//!
//! Raw syscalls on purpose: glibc's setuid family would signal every other thread to
//! change too, and threads already under seccomp may not make those calls.

use std::io;

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
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
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
/// governs: opening, creating, removing, linking, executing.
fn landlock_deny_all() -> Result<Landlock, SandboxError> {
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
    // SAFETY: `fd` is the ruleset fd just created; flags 0.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    // SAFETY: our fd, closed once.
    unsafe { libc::close(fd as c_int) };
    check(ret, "landlock_restrict_self")?;
    Ok(Landlock::Restricted(abi))
}

/// Give up everything this thread could still do beyond its job: the bounding set,
/// root (to `run_as`), every capability, no_new_privs, and file access (Landlock).
pub(super) fn give_up(run_as: Option<RunAs>) -> Result<Landlock, SandboxError> {
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
    landlock_deny_all()
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
            let landlock = give_up(None).unwrap();
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
}
