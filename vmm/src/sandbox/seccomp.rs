//! The seccomp filters, one per thread kind (kernel Documentation/userspace-api/seccomp_filter.rst),
//! built with rust-vmm's `seccompiler`, and the SIGSYS handler that reports a violation.
//!
//! Each list is what that thread does once the guest runs, found by running the testbed
//! scenarios under `--seccomp log` (SECCOMP_RET_LOG: the kernel logs a `type=1326`
//! audit line with `syscall=N` for each call outside the list and lets it through):
//! - every thread: what libstd and glibc do on their own (futex for locks and joins,
//!   mmap/munmap/mremap/madvise/brk and mprotect without PROT_EXEC for the allocator,
//!   sigaltstack and rt_sigprocmask at thread exit, clock_gettime when the vDSO falls
//!   back, write for the log, exit);
//! - vCPU: KVM_RUN and what its exits trigger: config and BAR accesses of
//!   passed-through functions (pread64/pwrite64 on VFIO device fds, VFIO_DEVICE_SET_IRQS),
//!   BAR moves (KVM_SET_USER_MEMORY_REGION, and VFIO_IOMMU_MAP_DMA/UNMAP_DMA for the
//!   BARs' peer-to-peer DMA mappings), MSI/MSI-X programming (KVM_IRQFD,
//!   KVM_SET_GSI_ROUTING), eventfd reads and writes, register dumps of a dead guest;
//! - main, after setup: waiting, kicking vCPUs (tgkill), a reboot in place and teardown
//!   (the devices' KVM/VFIO ioctls plus VFIO_DEVICE_RESET and the hot reset pair,
//!   VFIO_IOMMU_UNMAP_DMA, group release, the in-kernel irqchip and PIT, close); no
//!   KVM_RUN and no thread creation: vCPU threads park across a reboot and reset
//!   themselves, and the teardown resets the functions one after the other;
//! - signals: sigwait; stdin: read; prefault (RAM setup behind the running guest):
//!   madvise, VFIO_IOMMU_MAP_DMA, getrlimit, config reads and writes (pread64/pwrite64
//!   on VFIO device fds) releasing held bus mastering;
//! - I/O thread: epoll, eventfd reads, tap reads and writes; block workers: the disk's
//!   preadv, pwritev, fdatasync, fallocate and discard/zero-out ioctls, and eventfd
//!   writes (the queue's irqfd after a completion; write is in every thread's list).
//!
//! No thread may open, exec, fork or use sockets. A call outside the list traps
//! (SECCOMP_RET_TRAP): the handler writes one line naming the syscall number and thread
//! kind with write(2) and exits with [`VIOLATION_EXIT_CODE`].

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_debugregs, kvm_device_attr, kvm_fpu, kvm_irq_routing, kvm_irqchip, kvm_irqfd,
    kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, KVMIO,
};
use libc::c_int;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::{SandboxError, SeccompMode, ThreadKind};

/// Exit code after a seccomp violation: 128 + SIGSYS, like a process killed by it.
pub const VIOLATION_EXIT_CODE: c_int = 128 + libc::SIGSYS;

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
// A vCPU's power-on state, restored by a reboot in place.
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
// The in-kernel irqchip and PIT, reset by a reboot in place (KVM_SET_IRQCHIP is _IOR).
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);

/// vhost (include/uapi/linux/vhost.h): what activating, resetting and stopping a
/// vhost-net queue pair does. The argument structs are sized here by plain integers:
/// the request number carries only their size.
const VHOST: u32 = 0xaf;
ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, u64);
ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, u64);
ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, [u64; 5]);
ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, u64);
ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, u64);
ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, u64);
ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, u64);
ioctl_iow_nr!(VHOST_NET_SET_BACKEND, VHOST, 0x30, u64);
// The tap's offloads follow what the guest driver accepted (if_tun.h).
ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, u32);
// Block discard and write-zeroes on a host block device (linux/fs.h).
ioctl_io_nr!(BLKDISCARD, 0x12, 119);
ioctl_io_nr!(BLKZEROOUT, 0x12, 127);
/// Terminal settings: the console's raw mode is undone on every exit path.
const TCGETS: libc::c_ulong = 0x5401;
const TCSETS: libc::c_ulong = 0x5402;
/// Non-blocking sockets (std's `set_nonblocking`).
const FIONBIO: libc::c_ulong = 0x5421;

/// VFIO's ioctl type and base (include/uapi/linux/vfio.h).
const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
ioctl_io_nr!(
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
    VFIO_TYPE,
    VFIO_BASE + 12
);
// A device fd's PCI_HOT_RESET and a container fd's MAP_DMA share one number (vfio.h
// numbers device and container ioctls apart only by the fd they are made on).
ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, syscalls: &[libc::c_long]) {
    for &s in syscalls {
        rules.insert(s, Vec::new());
    }
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(SandboxError::Seccomp)
}

/// Allow `syscall` only when argument `arg` has none of the bits in `mask`.
fn allow_without_bits(
    rules: &mut Rules,
    syscall: libc::c_long,
    arg: u8,
    mask: u64,
) -> Result<(), SandboxError> {
    let rule = SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), 0)?])
        .map_err(SandboxError::Seccomp)?;
    rules.insert(syscall, vec![rule]);
    Ok(())
}

/// Allow ioctl with these request numbers only.
fn allow_ioctls(rules: &mut Rules, requests: &[libc::c_ulong]) -> Result<(), SandboxError> {
    let rules_for = requests
        .iter()
        .map(|&r| {
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, u64::from(r as u32))?])
                .map_err(SandboxError::Seccomp)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, rules_for);
    Ok(())
}

/// What every Strait thread does through libstd and glibc.
fn common() -> Result<Rules, SandboxError> {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_futex,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_sigaltstack,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rseq,
            libc::SYS_set_robust_list,
        ],
    );
    let exec = libc::PROT_EXEC as u64;
    allow_without_bits(&mut r, libc::SYS_mmap, 2, exec)?;
    allow_without_bits(&mut r, libc::SYS_mprotect, 2, exec)?;
    Ok(r)
}

/// KVM, VFIO, vhost and tap calls a running guest's exits lead to: BAR moves and
/// memory-decode switches (KVM slots, and the BARs' peer-to-peer DMA mappings), MSI and
/// MSI-X programming, a secondary bus reset on a root port, a virtio device's
/// DRIVER_OK (vhost-net activation, tap offloads) or reset.
fn guest_exit_ioctls() -> Vec<libc::c_ulong> {
    let mut v = function_reset_ioctls();
    v.extend([
        KVM_SET_USER_MEMORY_REGION(),
        VFIO_IOMMU_MAP_DMA(),
        VFIO_IOMMU_UNMAP_DMA(),
        VHOST_SET_FEATURES(),
        VHOST_SET_MEM_TABLE(),
        VHOST_SET_VRING_NUM(),
        VHOST_SET_VRING_ADDR(),
        VHOST_SET_VRING_BASE(),
        VHOST_GET_VRING_BASE(),
        VHOST_SET_VRING_KICK(),
        VHOST_SET_VRING_CALL(),
        VHOST_NET_SET_BACKEND(),
        TUNSETOFFLOAD(),
        TCGETS,
        TCSETS,
    ]);
    v
}

/// Quieting and resetting a passed-through function: its interrupts off (VFIO and KVM
/// routes), VFIO's reset or a hot reset of its bus.
fn function_reset_ioctls() -> Vec<libc::c_ulong> {
    vec![
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
        VFIO_DEVICE_PCI_HOT_RESET(),
    ]
}

/// What a vCPU thread does: KVM_RUN, register dumps, restoring its power-on state on a
/// reboot in place, and what its exits lead to.
fn vcpu_ioctls() -> Vec<libc::c_ulong> {
    let mut v = vec![
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_REGS(),
        KVM_SET_SREGS(),
        KVM_GET_MSRS(),
        KVM_SET_MSRS(),
        KVM_SET_FPU(),
        KVM_GET_LAPIC(),
        KVM_SET_LAPIC(),
        KVM_SET_MP_STATE(),
        KVM_SET_VCPU_EVENTS(),
        KVM_SET_DEBUGREGS(),
        KVM_SET_XCRS(),
    ];
    v.extend(guest_exit_ioctls());
    v
}

/// Syscalls besides ioctl of a thread driving devices (vCPU exits, a reset, teardown):
/// VFIO region accesses, eventfds.
const DEVICE_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
];

/// The syscall rules of `kind`.
pub(super) fn rules(kind: ThreadKind) -> Result<Rules, SandboxError> {
    let mut r = common()?;
    match kind {
        ThreadKind::Vcpu => {
            allow(&mut r, DEVICE_SYSCALLS);
            allow(&mut r, &[libc::SYS_sched_setaffinity]);
            allow_ioctls(&mut r, &vcpu_ioctls())?;
        }
        ThreadKind::Main => {
            // Waiting, kicking vCPUs, a reboot in place (the vCPU threads park and reset
            // themselves) and teardown: no thread creation, no KVM_RUN.
            allow(&mut r, DEVICE_SYSCALLS);
            allow(
                &mut r,
                &[
                    libc::SYS_tgkill,
                    libc::SYS_sched_getaffinity,
                    libc::SYS_epoll_ctl,
                    // The API socket's removal at exit (the one file right the main
                    // thread's Landlock domain keeps).
                    libc::SYS_unlink,
                    libc::SYS_unlinkat,
                ],
            );
            let mut ioctls = guest_exit_ioctls();
            ioctls.extend([
                VFIO_GROUP_UNSET_CONTAINER(),
                KVM_SET_DEVICE_ATTR(),
                KVM_SET_IRQCHIP(),
                KVM_SET_PIT2(),
            ]);
            allow_ioctls(&mut r, &ioctls)?;
        }
        ThreadKind::Signals => {
            allow(&mut r, &[libc::SYS_rt_sigtimedwait]);
            allow_ioctls(&mut r, &[TCGETS, TCSETS])?;
        }
        ThreadKind::Stdin => {
            allow(&mut r, &[libc::SYS_read]);
            allow_ioctls(&mut r, &[TCGETS, TCSETS])?;
        }
        ThreadKind::Prefault => {
            // Pinning guest RAM, the memlock limit named when that fails, and the
            // config accesses that release a function's held bus mastering.
            allow(
                &mut r,
                &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_prlimit64],
            );
            allow_ioctls(&mut r, &[VFIO_IOMMU_MAP_DMA()])?;
        }
        ThreadKind::Io => {
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_close,
                ],
            );
            allow_ioctls(&mut r, &[TCGETS, TCSETS])?;
        }
        ThreadKind::Blk => {
            allow(
                &mut r,
                &[
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_fallocate,
                    // The last worker to exit may hold the last reference to the disk.
                    libc::SYS_close,
                ],
            );
            allow_ioctls(&mut r, &[BLKDISCARD(), BLKZEROOUT(), TCGETS, TCSETS])?;
        }
        ThreadKind::Release => {
            // A function's last interrupt and bus-master changes (if teardown came
            // before the main thread quieted it), its hot reset, the close of its fd
            // (VFIO's reset runs inside) and the munmap of its BARs.
            allow(&mut r, DEVICE_SYSCALLS);
            let mut ioctls = function_reset_ioctls();
            ioctls.extend([TCGETS, TCSETS]);
            allow_ioctls(&mut r, &ioctls)?;
        }
        ThreadKind::Api => {
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_recvfrom,
                    libc::SYS_recvmsg,
                    libc::SYS_sendto,
                    libc::SYS_sendmsg,
                    libc::SYS_accept,
                    libc::SYS_accept4,
                    libc::SYS_shutdown,
                    libc::SYS_close,
                    libc::SYS_fcntl,
                    libc::SYS_getsockopt,
                    libc::SYS_setsockopt,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_tgkill,
                ],
            );
            allow_ioctls(&mut r, &[FIONBIO, TCGETS, TCSETS])?;
        }
    }
    Ok(r)
}

/// Compile the filter of `kind` for `mode` (not [`SeccompMode::Off`]).
pub(super) fn compile(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(
        rules(kind)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SandboxError::Seccomp)?;
    BpfProgram::try_from(filter).map_err(SandboxError::Seccomp)
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t on x86-64: signo, errno, code and
/// padding (16 bytes), then `_sigsys { void *_call_addr; int _syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Render `n` in decimal into `buf` from `at`; returns the new end.
fn put_decimal(buf: &mut [u8], mut at: usize, n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut v = n;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while len > 0 && at < buf.len() {
        len -= 1;
        buf[at] = digits[len];
        at += 1;
    }
    at
}

fn put(buf: &mut [u8], at: usize, s: &[u8]) -> usize {
    let n = s.len().min(buf.len() - at);
    buf[at..at + n].copy_from_slice(&s[..n]);
    at + n
}

/// The violation line for syscall `nr` in a thread of kind `kind`.
pub(super) fn violation_line(buf: &mut [u8; 192], nr: u64, kind: &str) -> usize {
    let mut at = put(buf, 0, b"strait: error: seccomp: the ");
    at = put(buf, at, kind.as_bytes());
    at = put(buf, at, b" thread made syscall ");
    at = put_decimal(buf, at, nr);
    at = put(
        buf,
        at,
        b", which its filter does not allow; stopping (rerun with --seccomp log to list such calls)\n",
    );
    at
}

extern "C" fn sigsys_handler(_: c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        u64::MAX
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; for
        // SIGSYS from seccomp, `si_syscall` is the int at this offset.
        let v = unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<c_int>()
                .read()
        };
        u64::try_from(v).unwrap_or(u64::MAX)
    };
    let mut buf = [0u8; 192];
    let len = violation_line(&mut buf, nr, super::current_kind_name());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is ours.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

/// Install the SIGSYS handler (process-wide, before any filter).
pub(super) fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid start.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = sigsys_handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act` is initialised, the handler only makes async-signal-safe calls.
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(), 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET(), 0x3b71);
    }

    #[test]
    fn no_thread_may_open_exec_or_use_sockets() {
        for kind in ThreadKind::ALL {
            let r = rules(kind).unwrap();
            for s in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_fork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_ptrace,
            ] {
                assert!(!r.contains_key(&s), "{kind:?} allows syscall {s}");
            }
        }
    }

    #[test]
    fn only_vcpus_may_run_the_guest() {
        let has_kvm_run = |kind| {
            let r = rules(kind).unwrap();
            r.get(&libc::SYS_ioctl).is_some_and(|rules| {
                let want = rules_with_request(KVM_RUN());
                rules.contains(&want)
            })
        };
        assert!(has_kvm_run(ThreadKind::Vcpu));
        for kind in [
            ThreadKind::Main,
            ThreadKind::Signals,
            ThreadKind::Stdin,
            ThreadKind::Io,
            ThreadKind::Api,
            ThreadKind::Blk,
            ThreadKind::Release,
        ] {
            assert!(!has_kvm_run(kind), "{kind:?}");
        }
    }

    fn rules_with_request(r: libc::c_ulong) -> SeccompRule {
        SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, u64::from(r as u32)).unwrap()]).unwrap()
    }

    #[test]
    fn disk_io_happens_on_the_block_workers_only() {
        for s in [libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_fdatasync] {
            assert!(rules(ThreadKind::Blk).unwrap().contains_key(&s));
            assert!(!rules(ThreadKind::Io).unwrap().contains_key(&s), "{s}");
        }
    }

    #[test]
    fn every_filter_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::On, SeccompMode::Log] {
                assert!(!compile(kind, mode).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn violation_line_names_the_syscall_and_thread() {
        let mut buf = [0u8; 192];
        let n = violation_line(&mut buf, 257, "vcpu");
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.starts_with("strait: error: seccomp: the vcpu thread made syscall 257,"));
        assert!(
            line.ends_with("--seccomp log to list such calls)\n"),
            "{line}"
        );
    }
}
