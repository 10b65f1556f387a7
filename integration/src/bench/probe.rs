//! What the L1 agent reads about a running VMM: QEMU's QMP socket (QMP
//! specification, docs/interop/qmp-spec.txt: a greeting, `qmp_capabilities`,
//! then commands, each answered by a `return` or `error` object, with
//! asynchronous `event` objects in between), the process's /proc files
//! (proc(5): `status`, `smaps`, `fd/`, `task/`; the `comm` of vhost's workers,
//! which drivers/vhost/vhost.c names `vhost-<owner tid>`), and KVM's debugfs counters
//! (Documentation/virt/kvm/api.rst, "KVM statistics": `exits`, `io_exits`,
//! `mmio_exits`, ... summed over the live VMs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench::plan::ProcessSample;

/// Where the KVM module's counters live once debugfs is mounted.
pub const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";

/// The counters sampled around the I/O load: all exits, port I/O exits (to the
/// kernel's devices or userspace), MMIO exits to userspace, and the causes of
/// other exits to userspace.
pub const KVM_COUNTERS: &[&str] = &[
    "exits",
    "io_exits",
    "mmio_exits",
    "signal_exits",
    "request_irq_exits",
    "halt_exits",
    "irq_exits",
    "hypercalls",
];

/// One parsed QMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpMessage {
    /// The server's greeting (`{"QMP": ...}`).
    Greeting,
    /// A command's answer.
    Return,
    /// A command's failure, with its description.
    Error(String),
    /// An asynchronous event.
    Event,
    /// Anything else (not JSON, or unknown).
    Other,
}

/// Classifies one line of QMP output.
pub fn parse_qmp(line: &str) -> QmpMessage {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
        return QmpMessage::Other;
    };
    if value.get("QMP").is_some() {
        QmpMessage::Greeting
    } else if value.get("return").is_some() {
        QmpMessage::Return
    } else if let Some(error) = value.get("error") {
        let desc = error.get("desc").and_then(|d| d.as_str()).unwrap_or("?");
        QmpMessage::Error(desc.to_string())
    } else if value.get("event").is_some() {
        QmpMessage::Event
    } else {
        QmpMessage::Other
    }
}

/// Connects to QEMU's QMP socket (retrying until it exists), negotiates, and
/// asks `query-status`. In-band commands are dispatched by QEMU's main loop,
/// which starts only after machine init — guest RAM allocated (and
/// preallocated), devices realized, vfio's DMA maps of all RAM made — so the
/// answer marks "ready to run". Returns the time since `start` at the answer.
pub fn qmp_ready(
    socket: &Path,
    start: Instant,
    limit: Duration,
    cancel: &AtomicBool,
) -> Result<Duration, String> {
    let stream = loop {
        if cancel.load(Ordering::Relaxed) {
            return Err("cancelled: the VMM exited before QMP answered".into());
        }
        match UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(e) if start.elapsed() > limit => {
                return Err(format!("no QMP socket at {}: {e}", socket.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let remaining = limit
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(remaining))
        .map_err(|e| format!("QMP socket: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
    let mut reader = BufReader::new(stream);
    expect(&mut reader, |m| *m == QmpMessage::Greeting, "greeting")?;
    for command in ["qmp_capabilities", "query-status"] {
        writeln!(writer, "{{\"execute\": \"{command}\"}}")
            .map_err(|e| format!("sending {command}: {e}"))?;
        expect(&mut reader, |m| *m == QmpMessage::Return, command)?;
    }
    Ok(start.elapsed())
}

/// Reads QMP lines until one satisfies `want`, skipping events; an error
/// object or end of stream fails.
fn expect(
    reader: &mut impl BufRead,
    want: impl Fn(&QmpMessage) -> bool,
    what: &str,
) -> Result<(), String> {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("QMP closed while waiting for {what}")),
            Ok(_) => {}
            Err(e) => return Err(format!("QMP read while waiting for {what}: {e}")),
        }
        match parse_qmp(&line) {
            m if want(&m) => return Ok(()),
            QmpMessage::Error(desc) => return Err(format!("QMP {what}: {desc}")),
            _ => {}
        }
    }
}

/// A `Name:   123 kB` field of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Totals over /proc/PID/smaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmapsTotals {
    /// Sum of Rss.
    pub rss_kib: u64,
    /// Rss of mappings at least half the guest's RAM in size.
    pub guest_rss_kib: u64,
    /// How many such mappings.
    pub guest_vmas: u32,
    /// Sum of Pss outside those mappings.
    pub pss_excl_guest_kib: u64,
    /// Hugetlb pages mapped.
    pub hugetlb_kib: u64,
}

/// The size of a smaps mapping header (`start-end perms ...`), or None for a
/// field line.
fn vma_size(line: &str) -> Option<u64> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    end.checked_sub(start)
}

/// Sums smaps, setting apart guest RAM: no other mapping of either VMM comes
/// near half the guest's RAM (the largest are malloc arenas of 64 MiB), and
/// both map guest RAM as one or two large regions (below and above the 32-bit hole).
pub fn smaps_totals(smaps: &str, guest_ram_bytes: u64) -> SmapsTotals {
    let mut t = SmapsTotals::default();
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(size) = vma_size(line) {
            in_guest = size >= guest_ram_bytes / 2;
            t.guest_vmas += u32::from(in_guest);
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(field), Some(kib)) = (words.next(), words.next().and_then(|v| v.parse().ok()))
        else {
            continue;
        };
        let kib: u64 = kib;
        match field {
            "Rss:" => {
                t.rss_kib += kib;
                if in_guest {
                    t.guest_rss_kib += kib;
                }
            }
            "Pss:" if !in_guest => t.pss_excl_guest_kib += kib,
            "Private_Hugetlb:" | "Shared_Hugetlb:" => t.hugetlb_kib += kib,
            _ => {}
        }
    }
    t
}

/// Samples the VMM process `pid` with `guest_ram_bytes` of guest RAM.
pub fn sample_process(pid: u32, guest_ram_bytes: u64) -> Result<ProcessSample, String> {
    let proc_dir = format!("/proc/{pid}");
    let read = |name: &str| {
        std::fs::read_to_string(format!("{proc_dir}/{name}"))
            .map_err(|e| format!("reading {proc_dir}/{name}: {e}"))
    };
    let status = read("status")?;
    let smaps = smaps_totals(&read("smaps")?, guest_ram_bytes);
    let vfio_fds = std::fs::read_dir(format!("{proc_dir}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.starts_with("/dev/vfio"))
                .count() as u32
        })
        .unwrap_or(0);
    Ok(ProcessSample {
        vm_rss_kib: status_kib(&status, "VmRSS").unwrap_or(0),
        vm_lck_kib: status_kib(&status, "VmLck").unwrap_or(0),
        smaps_rss_kib: smaps.rss_kib,
        guest_ram_rss_kib: smaps.guest_rss_kib,
        guest_ram_vmas: smaps.guest_vmas,
        pss_excl_guest_kib: smaps.pss_excl_guest_kib,
        hugetlb_kib: smaps.hugetlb_kib,
        vfio_fds,
        vhost_workers: vhost_workers(pid),
    })
}

/// The names L1's kernel gives the vhost workers of process `pid`'s threads.
fn vhost_worker_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| Some(format!("vhost-{}", t.ok()?.file_name().to_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// How many of `comms` (process names) are in `names`.
pub fn count_named(comms: impl Iterator<Item = String>, names: &[String]) -> u32 {
    comms
        .filter(|c| names.iter().any(|n| n == c.trim()))
        .count() as u32
}

/// vhost worker threads serving process `pid`, named after the thread that became
/// the device's owner: a kernel thread per vhost device up to Linux 6.3 (L1 runs
/// 6.1), a thread of the owner's process itself from 6.4 on.
fn vhost_workers(pid: u32) -> u32 {
    let names = vhost_worker_names(pid);
    let comms_in = |dir: String| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_name().to_str()?.parse::<u32>().ok()?;
                std::fs::read_to_string(e.path().join("comm")).ok()
            })
            .collect::<Vec<_>>()
    };
    let mut comms = comms_in("/proc".into());
    comms.extend(comms_in(format!("/proc/{pid}/task")));
    count_named(comms.into_iter(), &names)
}

/// Reads [`KVM_COUNTERS`] from `dir` (normally [`KVM_DEBUGFS`]); counters that
/// are missing or unreadable are left out.
pub fn kvm_counters(dir: &Path) -> BTreeMap<String, u64> {
    KVM_COUNTERS
        .iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(dir.join(name)).ok()?;
            Some((name.to_string(), text.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_messages_are_classified() {
        assert_eq!(
            parse_qmp(r#"{"QMP": {"version": {}, "capabilities": ["oob"]}}"#),
            QmpMessage::Greeting
        );
        assert_eq!(parse_qmp("{\"return\": {}}\r\n"), QmpMessage::Return);
        assert_eq!(
            parse_qmp(r#"{"error": {"class": "GenericError", "desc": "no"}}"#),
            QmpMessage::Error("no".into())
        );
        assert_eq!(
            parse_qmp(r#"{"timestamp": {}, "event": "STOP"}"#),
            QmpMessage::Event
        );
        assert_eq!(parse_qmp("qemu: warning"), QmpMessage::Other);
    }

    #[test]
    fn qmp_expect_skips_events_and_fails_on_errors() {
        let mut ok =
            "{\"event\": \"RESUME\"}\n{\"return\": {\"status\": \"prelaunch\"}}\n".as_bytes();
        assert_eq!(expect(&mut ok, |m| *m == QmpMessage::Return, "x"), Ok(()));
        let mut bad = "{\"error\": {\"desc\": \"denied\"}}\n".as_bytes();
        assert_eq!(
            expect(&mut bad, |m| *m == QmpMessage::Return, "query-status"),
            Err("QMP query-status: denied".into())
        );
        let mut closed = "".as_bytes();
        assert!(expect(&mut closed, |_| true, "greeting").is_err());
    }

    #[test]
    fn qmp_ready_gives_up_when_cancelled() {
        let cancel = AtomicBool::new(true);
        let r = qmp_ready(
            Path::new("/nonexistent/qmp.sock"),
            Instant::now(),
            Duration::from_secs(5),
            &cancel,
        );
        assert!(matches!(r, Err(e) if e.starts_with("cancelled")));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tqemu\nVmLck:\t  524288 kB\nVmRSS:\t   81234 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(81234));
        assert_eq!(status_kib(status, "VmLck"), Some(524288));
        assert_eq!(status_kib(status, "VmPin"), None);
    }

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
Private_Hugetlb:       0 kB
7f0000000000-7f0020000000 rw-p 00000000 00:00 0
Size:             524288 kB
Rss:              524288 kB
Pss:              524288 kB
Private_Hugetlb:       0 kB
7f1000000000-7f1004000000 rw-p 00000000 00:0f 9 /anon_hugepage (deleted)
Size:              65536 kB
Rss:                   0 kB
Pss:                   0 kB
Private_Hugetlb:   65536 kB
VmFlags: rd wr mr mw me ac ht
";

    #[test]
    fn smaps_sets_guest_ram_apart() {
        let t = smaps_totals(SMAPS, 512 << 20);
        assert_eq!(t.rss_kib, 800 + 524288);
        assert_eq!(t.guest_rss_kib, 524288);
        assert_eq!(t.guest_vmas, 1);
        assert_eq!(t.pss_excl_guest_kib, 400);
        assert_eq!(t.hugetlb_kib, 65536);
    }

    #[test]
    fn small_guest_makes_every_large_mapping_guest_ram() {
        // With 64 MiB of guest RAM, the 64 MiB hugetlb mapping counts too.
        let t = smaps_totals(SMAPS, 64 << 20);
        assert_eq!(t.guest_vmas, 2);
    }

    #[test]
    fn vhost_workers_are_matched_by_their_owner_thread() {
        let names = ["vhost-100".to_string(), "vhost-101".to_string()];
        let comms = [
            "vhost-100\n",
            "vhost-1000\n",
            "kworker/0:1\n",
            "vhost-101\n",
        ];
        assert_eq!(count_named(comms.iter().map(|c| c.to_string()), &names), 2);
        // This test process owns no vhost device.
        assert_eq!(vhost_workers(std::process::id()), 0);
    }

    #[test]
    fn kvm_counters_read_numbers_and_skip_missing() {
        let dir = std::env::temp_dir().join(format!("testbed-kvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        std::fs::write(dir.join("exits"), "1234\n").ok();
        std::fs::write(dir.join("mmio_exits"), "junk\n").ok();
        let counters = kvm_counters(&dir);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(counters.get("exits"), Some(&1234));
        assert_eq!(counters.len(), 1);
    }
}
