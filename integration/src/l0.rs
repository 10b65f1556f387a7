//! L0: the outermost QEMU, pure TCG, emulating a q35 machine with an Intel
//! IOMMU and the devices under test, booting Debian's kernel with the L1
//! image. Its serial console (stdout) is L1's console; it is captured to a
//! file while lines carrying `TESTBED-L1` markers are timestamped, and the
//! process is killed when the scenario's time limit passes, or as soon as
//! the watch sees L1 stall: a lockup report from L1's kernel or a silent
//! console, the known flaws of the outer emulation of nested SVM.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::scenario::{HugePages, Scenario};

/// The NVMe backing image in the work dir (sparse).
pub const NVME_IMAGE: &str = "nvme.img";
/// The ivshmem backing file in the work dir (sparse).
pub const IVSHMEM_FILE: &str = "ivshmem.shm";
/// Size of the NVMe namespace.
pub const NVME_IMAGE_BYTES: u64 = 64 << 20;
/// Where L1 sees the disk L0 gives it ([`L0Config::l1_disk`]): L1's only virtio-blk
/// device. A real block device in L1, so a VMM there can open it with O_DIRECT (L1's
/// tmpfs refuses O_DIRECT before Linux 6.6).
pub const L1_DISK_DEVICE: &str = "/dev/vda";
/// Size of the blank disk L1 gets when the run did not put an image there.
pub const L1_DISK_BYTES: u64 = 256 << 20;
/// Size of ivshmem's shared memory (its BAR2), large enough to need a 64-bit BAR.
pub const IVSHMEM_BYTES: u64 = 8 << 30;

/// How L0 is started.
#[derive(Debug, Clone)]
pub struct L0Config {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// Kernel image for L1.
    pub kernel: PathBuf,
    /// L1 initramfs.
    pub initrd: PathBuf,
    /// L1 kernel command line.
    pub cmdline: String,
    /// L1 RAM in MiB.
    pub memory_mib: u32,
    /// L1 vCPUs.
    pub smp: u32,
    /// The run's work dir: backing files, and the read-write 9p share.
    pub work_dir: PathBuf,
    /// Emulated devices to add.
    pub devices: Vec<Device>,
    /// A raw image L0 gives L1 as a virtio-blk disk ([`L1_DISK_DEVICE`]); L1 keeps it.
    pub l1_disk: Option<PathBuf>,
    /// Two NUMA nodes (CPU `i` and half the RAM on node `i`) and the devices behind a
    /// root port on a pxb-pcie expander bus (bus 0x80) on node 1; the edu device
    /// behind one on node 0 (bus 0x40).
    pub numa: bool,
    /// The nvme image holds [`crate::p2p::known_block`].
    pub nvme_known_block: bool,
}

/// The expander bus's root port that devices plug into when [`L0Config::numa`] is set.
const NUMA_PORT: &str = "rpx";
/// The root port on node 0's expander bus, for the edu device.
const NUMA_PORT_NODE0: &str = "rpx0";

/// L1's kernel command line. 1 GiB pages can only be had at boot.
///
/// `no_timer_check`: under TCG on a loaded host, the kernel's check that the timer
/// interrupt arrives through the (interrupt-remapped) IO-APIC can time out, and L1 then
/// panics with "timer doesn't work through Interrupt-remapped IO-APIC" before any test
/// runs (seen with the machine's two cores shared by several testbeds). The timer works;
/// only the check's window is too short for an emulated CPU that is not scheduled.
/// `pages_1g` overrides the 1 GiB pages the scenario's RAM needs.
pub fn l1_cmdline(scenario: &Scenario, pages_1g: Option<u32>) -> String {
    let mut cmdline = String::from(
        "console=ttyS0 panic=-1 intel_iommu=on iommu=pt quiet mitigations=off no_timer_check",
    );
    let needed =
        (scenario.hugepages == HugePages::Size1G).then(|| scenario.memory_mib.div_ceil(1024));
    if let Some(pages) = pages_1g.or(needed).filter(|&n| n > 0) {
        cmdline.push_str(&format!(" hugepagesz=1G hugepages={pages}"));
    }
    cmdline
}

/// L1's RAM: L2's RAM (as hugepages) plus room for L1's kernel, the VMM and
/// the page cache of the host share. TCG allocates it lazily, so being
/// generous costs the host little.
pub fn l1_memory_mib(scenario: &Scenario) -> u32 {
    let l2 = match scenario.hugepages.page_mib() {
        Some(page) => scenario.memory_mib.div_ceil(page) * page,
        None => scenario.memory_mib,
    };
    // Contiguous 1 GiB pages need headroom: with 4 GiB only one of two was found.
    let headroom = if scenario.hugepages == HugePages::Size1G {
        3072
    } else {
        2048
    };
    (l2 + headroom).max(3072)
}

/// 2 MiB pages to reserve in L1 for L2's RAM, with a little slack for the VMM.
pub fn hugepage_count(scenario: &Scenario) -> u32 {
    match scenario.hugepages.page_mib() {
        Some(2) => scenario.memory_mib.div_ceil(2) + 8,
        Some(page) => scenario.memory_mib.div_ceil(page),
        None => 0,
    }
}

fn device_args(device: Device, work_dir: &Path) -> Vec<String> {
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match device {
        Device::Nvme => {
            let drive = format!(
                "file={},if=none,id=nvme0,format=raw",
                work_dir.join(NVME_IMAGE).display()
            );
            strings(&[
                "-drive",
                &drive,
                "-device",
                "nvme,drive=nvme0,serial=testbed0",
            ])
        }
        Device::Bochs => strings(&["-device", "bochs-display"]),
        Device::Ivshmem => {
            let backend = format!(
                "memory-backend-file,id=shm0,mem-path={},size={}G,share=on",
                work_dir.join(IVSHMEM_FILE).display(),
                IVSHMEM_BYTES >> 30
            );
            strings(&["-object", &backend, "-device", "ivshmem-plain,memdev=shm0"])
        }
        Device::Edu => strings(&["-device", "edu"]),
        // Slot 0x10 of the root bus: L1's own devices take the low slots.
        Device::GpuSlot => strings(&[
            "-device",
            "bochs-display,bus=pcie.0,addr=0x10.0,multifunction=on",
            "-device",
            "ich9-intel-hda,bus=pcie.0,addr=0x10.1",
        ]),
        Device::DisplayPair => strings(&[
            "-device",
            "pcie-root-port,id=rph0,bus=pcie.0,chassis=20,slot=20",
            "-device",
            "bochs-display,bus=rph0,addr=0.0,multifunction=on",
            "-device",
            "edu,bus=rph0,addr=0.1",
        ]),
    }
}

/// L0's arguments (without the program).
pub fn l0_args(cfg: &L0Config) -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "EPYC,+svm,+npt",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "intel-iommu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-smp".into(),
        cfg.smp.to_string(),
        "-m".into(),
        format!("{}M", cfg.memory_mib),
    ]);
    if cfg.numa {
        args.extend(numa_args(cfg.memory_mib));
    }
    for device in &cfg.devices {
        let mut a = device_args(*device, &cfg.work_dir);
        if cfg.numa {
            // Every `-device` goes behind an expander's root port: edu on node 0's,
            // the others on node 1's.
            let port = match device {
                Device::Edu => NUMA_PORT_NODE0,
                _ => NUMA_PORT,
            };
            for i in 1..a.len() {
                if a[i - 1] == "-device" {
                    a[i].push_str(&format!(",bus={port}"));
                }
            }
        }
        args.extend(a);
    }
    let host_share =
        "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap".to_string();
    let work_share = format!(
        "local,path={},mount_tag=work,security_model=none",
        cfg.work_dir.display()
    );
    for (id, share) in [("host", host_share), ("work", work_share)] {
        if cfg.numa {
            // With an expander bus, a device without `bus=` may land on it: name pcie.0.
            let fs = share.replace(&format!(",mount_tag={id}"), "");
            args.extend([
                "-fsdev".into(),
                format!("{fs},id=fs{id}"),
                "-device".into(),
                format!("virtio-9p-pci,fsdev=fs{id},mount_tag={id},bus=pcie.0"),
            ]);
        } else {
            args.extend(["-virtfs".into(), share]);
        }
    }
    if let Some(disk) = &cfg.l1_disk {
        // Last, so the devices under test and the shares keep their addresses in L1;
        // on pcie.0 by name, as an expander bus would otherwise take it.
        let drive = format!(
            "file={},if=none,id=l1disk,format=raw,cache=writeback",
            disk.display()
        );
        args.extend([
            "-drive".into(),
            drive,
            "-device".into(),
            "virtio-blk-pci,drive=l1disk,serial=testbed-l1disk,bus=pcie.0".into(),
        ]);
    }
    args.extend(["-kernel".into(), cfg.kernel.display().to_string()]);
    args.extend(["-initrd".into(), cfg.initrd.display().to_string()]);
    args.extend(["-append".into(), cfg.cmdline.clone()]);
    args
}

/// Two NUMA nodes of half the RAM each, CPU `i` on node `i`, and a pxb-pcie expander
/// bus on node 1 with one root port (testbed notes: L1 then sees the port and what is
/// behind it with `numa_node` 1).
fn numa_args(memory_mib: u32) -> Vec<String> {
    let half = memory_mib / 2;
    [
        "-object".to_string(),
        format!("memory-backend-ram,id=m0,size={half}M"),
        "-object".into(),
        format!("memory-backend-ram,id=m1,size={}M", memory_mib - half),
        "-numa".into(),
        "node,nodeid=0,cpus=0,memdev=m0".into(),
        "-numa".into(),
        "node,nodeid=1,cpus=1,memdev=m1".into(),
        "-device".into(),
        "pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0".into(),
        "-device".into(),
        format!("pcie-root-port,id={NUMA_PORT},bus=pxb1,chassis=10"),
        "-device".into(),
        "pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0".into(),
        "-device".into(),
        format!("pcie-root-port,id={NUMA_PORT_NODE0},bus=pxb0,chassis=11"),
    ]
    .into()
}

/// Creates the devices' sparse backing files in the work dir, and L1's disk if the
/// run did not write one.
pub fn create_backing_files(cfg: &L0Config) -> Result<()> {
    let sparse = |name: &str, len: u64| -> Result<()> {
        let path = cfg.work_dir.join(name);
        File::create(&path)
            .and_then(|f| f.set_len(len))
            .map_err(|source| Error::WriteFile { path, source })
    };
    if cfg.devices.contains(&Device::Nvme) {
        sparse(NVME_IMAGE, NVME_IMAGE_BYTES)?;
        if cfg.nvme_known_block {
            let path = cfg.work_dir.join(NVME_IMAGE);
            crate::p2p::write_known_block(&path)
                .map_err(|source| Error::WriteFile { path, source })?;
        }
    }
    if cfg.devices.contains(&Device::Ivshmem) {
        sparse(IVSHMEM_FILE, IVSHMEM_BYTES)?;
    }
    // L1's disk: the image the run wrote there, else a blank one.
    if let Some(disk) = cfg.l1_disk.as_ref().filter(|d| !d.exists()) {
        File::create(disk)
            .and_then(|f| f.set_len(L1_DISK_BYTES))
            .map_err(|source| Error::WriteFile {
                path: disk.clone(),
                source,
            })?;
    }
    Ok(())
}

/// How L0 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L0Exit {
    /// QEMU exited by itself with this code (None: killed by a signal).
    Exited(Option<i32>),
    /// The time limit passed and QEMU was killed.
    TimedOut(Duration),
    /// The run's watch saw L1 stall and QEMU was killed after this long.
    Stalled {
        /// Time since L0 started.
        after: Duration,
        /// What the watch saw.
        stall: Stall,
    },
}

/// Why a watch gave up on L1 before the time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// L1's console printed nothing (not even its heartbeat) for this long.
    ConsoleSilent(Duration),
    /// The work dir's progress files did not change for this long.
    NoProgress(Duration),
    /// L1's kernel reported this (a soft lockup, an RCU stall): a CPU of L1 is
    /// stuck, typically in VMRUN when the outer emulation of nested SVM stops
    /// delivering L1's interrupts while L2 runs.
    KernelReport(&'static str),
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::ConsoleSilent(d) => write!(f, "L1's console silent for {} s", d.as_secs()),
            Stall::NoProgress(d) => write!(f, "no progress in L1 for {} s", d.as_secs()),
            Stall::KernelReport(what) => write!(f, "L1's kernel reported \"{what}\""),
        }
    }
}

/// A live L1 prints a heartbeat every 20 s; this much silence means it froze.
pub const CONSOLE_SILENCE: Duration = Duration::from_secs(90);

/// L1 kernel reports that mean one of its CPUs is stuck for good.
const LOCKUP_REPORTS: &[&str] = &[
    "BUG: soft lockup",
    "rcu_sched self-detected stall",
    "rcu: INFO: rcu_sched detected stalls",
    "blocked for more than",
];

/// The first lockup report in L1's console, if any.
pub fn lockup_report(console: &str) -> Option<&'static str> {
    LOCKUP_REPORTS.iter().copied().find(|r| console.contains(r))
}

/// The watch every L1 gets: its kernel must not report a stuck CPU (in
/// `l1-console.log` of its work dir `dir`), and its console must not fall
/// silent for longer than [`CONSOLE_SILENCE`]. L2 is frozen with such an L1,
/// so L0 is stopped instead of waiting out the time limit.
pub fn l1_stall(dir: &Path, silence: Duration) -> Option<Stall> {
    let console = std::fs::read_to_string(dir.join("l1-console.log")).unwrap_or_default();
    if let Some(report) = lockup_report(&console) {
        return Some(Stall::KernelReport(report));
    }
    (silence > CONSOLE_SILENCE).then_some(Stall::ConsoleSilent(silence))
}

/// Looks at a running L0 once a second, given the time since L1's console
/// last printed a line; `Some` stops L0.
pub type Watch<'a> = &'a dyn Fn(Duration) -> Option<Stall>;

/// A `TESTBED-L1` marker and when L0's console printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// `init`, `ready`, `launch`, `l2-init`, `vmm-exit`, `done`, `error`, ...
    pub name: String,
    /// Time since L0 was started.
    pub at: Duration,
}

/// What L0 left behind.
#[derive(Debug, Clone)]
pub struct L0Run {
    /// Exit or time-out.
    pub exit: L0Exit,
    /// L1's console.
    pub console: String,
    /// First occurrence of each marker, in order.
    pub markers: Vec<Marker>,
    /// Wall time from start to exit.
    pub elapsed: Duration,
}

/// The marker a console line carries: `TESTBED-L1-INIT ...` gives `init`,
/// `TESTBED-L1 ready uptime=3.2` gives `ready`.
pub fn marker_name(line: &str) -> Option<String> {
    let rest = &line[line.find("TESTBED-L1")? + "TESTBED-L1".len()..];
    let word = match rest.strip_prefix('-') {
        Some(tail) => tail.split_whitespace().next()?.to_ascii_lowercase(),
        None => rest.split_whitespace().next()?.to_string(),
    };
    Some(word)
}

/// Runs L0 to completion or `timeout`, teeing its console to `console_log`.
pub fn run(
    cfg: &L0Config,
    timeout: Duration,
    console_log: &Path,
    stderr_log: &Path,
) -> Result<L0Run> {
    run_watched(cfg, timeout, (console_log, stderr_log), &|_| None)
}

/// As [`run`], also stopping L0 when `watch` says L1 stalled. `logs` are the
/// console and stderr log files.
pub fn run_watched(
    cfg: &L0Config,
    timeout: Duration,
    logs: (&Path, &Path),
    watch: Watch<'_>,
) -> Result<L0Run> {
    let (console_log, stderr_log) = logs;
    let program = cfg.qemu.display().to_string();
    let stderr = File::create(stderr_log).map_err(|source| Error::WriteFile {
        path: stderr_log.into(),
        source,
    })?;
    let log = File::create(console_log).map_err(|source| Error::WriteFile {
        path: console_log.into(),
        source,
    })?;
    let start = Instant::now();
    let mut command = Command::new(&cfg.qemu);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it makes L0 die with the testbed (Ctrl-C) instead
    // of running on, holding two cores, for up to its whole time limit.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .args(l0_args(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    let last_line = Arc::new(Mutex::new(Instant::now()));
    let reader = spawn_console_reader(child.stdout.take(), log, start, last_line.clone());
    let silence = || {
        last_line
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    };
    let exit = wait_with_timeout(&mut child, start, timeout, &|| watch(silence()))
        .map_err(|source| Error::Spawn { program, source })?;
    let elapsed = start.elapsed();
    let (console, markers) = reader.join().unwrap_or_default();
    Ok(L0Run {
        exit,
        console,
        markers,
        elapsed,
    })
}

/// Tees L0's console to `log`, noting the first time of each marker and the
/// time of the last line in `seen`; returns the console and the markers.
fn spawn_console_reader(
    stdout: Option<std::process::ChildStdout>,
    mut log: File,
    start: Instant,
    seen: Arc<Mutex<Instant>>,
) -> std::thread::JoinHandle<(String, Vec<Marker>)> {
    std::thread::spawn(move || {
        let mut console = String::new();
        let mut markers: Vec<Marker> = Vec::new();
        let Some(stdout) = stdout else {
            return (console, markers);
        };
        for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            let _ = writeln!(log, "{line}");
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            if let Some(name) = marker_name(&line) {
                if !markers.iter().any(|m| m.name == name) {
                    markers.push(Marker {
                        name,
                        at: start.elapsed(),
                    });
                }
            }
            console.push_str(&line);
            console.push('\n');
        }
        (console, markers)
    })
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    start: Instant,
    timeout: Duration,
    watch: &dyn Fn() -> Option<Stall>,
) -> std::io::Result<L0Exit> {
    let mut watched = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(L0Exit::Exited(status.code()));
        }
        if start.elapsed() >= timeout {
            log::warn!("L0 still running after {timeout:?}: killing it");
            child.kill()?;
            child.wait()?;
            return Ok(L0Exit::TimedOut(timeout));
        }
        if watched.elapsed() >= Duration::from_secs(1) {
            watched = Instant::now();
            if let Some(stall) = watch() {
                log::warn!("{stall}: killing L0");
                child.kill()?;
                child.wait()?;
                let after = start.elapsed();
                return Ok(L0Exit::Stalled { after, stall });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    fn config(devices: Vec<Device>) -> L0Config {
        L0Config {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: PathBuf::from("/boot/vmlinuz-v"),
            initrd: PathBuf::from("/c/l1.cpio"),
            cmdline: "console=ttyS0".into(),
            memory_mib: 3072,
            smp: 2,
            work_dir: PathBuf::from("/w"),
            devices,
            l1_disk: None,
            numa: false,
            nvme_known_block: false,
        }
    }

    fn joined(cfg: &L0Config) -> String {
        l0_args(cfg).join(" ")
    }

    #[test]
    fn l0_is_tcg_q35_with_nested_svm_and_an_iommu() {
        let args = joined(&config(vec![]));
        assert!(
            args.starts_with("-machine q35 -accel tcg -cpu EPYC,+svm,+npt"),
            "{args}"
        );
        assert!(args.contains("-device intel-iommu"));
        assert!(args.contains("-smp 2 -m 3072M"));
    }

    #[test]
    fn numa_l0_puts_the_devices_behind_an_expander_on_node_1() {
        let mut cfg = config(vec![Device::Nvme]);
        cfg.numa = true;
        let args = joined(&cfg);
        assert!(
            args.contains("-numa node,nodeid=1,cpus=1,memdev=m1"),
            "{args}"
        );
        assert!(args.contains("pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0"));
        assert!(
            args.contains("nvme,drive=nvme0,serial=testbed0,bus=rpx"),
            "{args}"
        );
        assert!(args.contains("virtio-9p-pci,fsdev=fshost,mount_tag=host,bus=pcie.0"));
        assert!(!args.contains("-virtfs"));
        let mut cfg = config(vec![Device::Nvme, Device::Edu]);
        cfg.numa = true;
        let args = joined(&cfg);
        assert!(args.contains("pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0"));
        assert!(args.contains("edu,bus=rpx0"), "{args}");
    }

    #[test]
    fn host_share_is_read_only_and_work_share_writable() {
        let args = joined(&config(vec![]));
        assert!(
            args.contains("-virtfs local,path=/,mount_tag=host,security_model=none,readonly=on")
        );
        assert!(args.contains("-virtfs local,path=/w,mount_tag=work,security_model=none -kernel"));
    }

    #[test]
    fn l1_gets_its_disk_after_the_devices_under_test() {
        let mut cfg = config(vec![Device::Nvme]);
        assert!(!joined(&cfg).contains("l1disk"));
        cfg.l1_disk = Some(PathBuf::from("/w/root.img"));
        let args = joined(&cfg);
        let disk = args
            .find("-drive file=/w/root.img,if=none,id=l1disk,format=raw")
            .unwrap();
        assert!(args.find("nvme,drive=nvme0").unwrap() < disk, "{args}");
        assert!(args.contains("-device virtio-blk-pci,drive=l1disk"));
    }

    #[test]
    fn devices_are_backed_by_files_in_the_work_dir() {
        let args = joined(&config(vec![Device::Nvme, Device::Ivshmem]));
        assert!(args.contains("-drive file=/w/nvme.img,if=none,id=nvme0,format=raw"));
        assert!(args.contains("mem-path=/w/ivshmem.shm,size=8G,share=on"));
        assert!(args.contains("-device ivshmem-plain,memdev=shm0"));
    }

    #[test]
    fn display_pair_shares_one_slot_behind_a_root_port() {
        let args = joined(&config(vec![Device::DisplayPair]));
        assert!(args.contains(
            "-device pcie-root-port,id=rph0,bus=pcie.0,chassis=20,slot=20 \
             -device bochs-display,bus=rph0,addr=0.0,multifunction=on \
             -device edu,bus=rph0,addr=0.1"
        ));
    }

    #[test]
    fn markers_are_named_by_their_first_word() {
        assert_eq!(
            marker_name("TESTBED-L1-INIT uptime=1.5").as_deref(),
            Some("init")
        );
        assert_eq!(
            marker_name("[ 3.1] x TESTBED-L1 ready uptime=3.2").as_deref(),
            Some("ready")
        );
        assert_eq!(marker_name("TESTBED-L1-DONE").as_deref(), Some("done"));
        assert_eq!(marker_name("TESTBED-INIT"), None);
    }

    #[test]
    fn lockup_reports_are_recognised() {
        let console =
            "[  129.385309] watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [strait-vcpu0:163]";
        assert_eq!(lockup_report(console), Some("BUG: soft lockup"));
        assert_eq!(lockup_report("TESTBED-L1 heartbeat uptime=52.92"), None);
    }

    #[test]
    fn l1_gets_room_for_l2_hugepages() {
        let mut s = scenario::nvme();
        assert_eq!(l1_memory_mib(&s), 3072);
        assert_eq!(hugepage_count(&s), 264);
        s.memory_mib = 2048;
        assert_eq!(l1_memory_mib(&s), 4096);
    }

    #[test]
    fn gigantic_pages_are_reserved_on_the_l1_command_line() {
        let mut s = scenario::nvme();
        s.hugepages = HugePages::Size1G;
        s.memory_mib = 1536;
        assert!(l1_cmdline(&s, None).ends_with(" hugepagesz=1G hugepages=2"));
        assert!(l1_cmdline(&s, Some(12)).ends_with(" hugepagesz=1G hugepages=12"));
        assert!(!l1_cmdline(&scenario::nvme(), Some(0)).contains("hugepages"));
        assert_eq!(hugepage_count(&s), 2);
        assert_eq!(l1_memory_mib(&s), 5120);
    }
}
