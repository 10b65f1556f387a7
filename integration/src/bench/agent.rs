//! The benchmark's L1 side: `testbed l1-agent`, run by L1's run script inside
//! the chroot of the host's tree. It prepares L1 once (transparent hugepages
//! off so "none" means 4 KiB pages, debugfs for KVM's counters), then runs the
//! plan's VMM launches one after another. For each it timestamps every output
//! line as it arrives (monotonic clock, from just before spawn), times QMP's
//! first answer, samples /proc and KVM's counters when the guest prints a
//! marker, stops the VMM when the launch's stop rule is met, and appends a
//! [`LaunchRecord`] to the results file. Before each launch it sizes L1's
//! hugepage pools for it ([`l1mem`]); a populate launch is run in its own
//! process. For net launches it makes L1's tap once and runs the launch's peer
//! (netbench's server) beside the VMM, its lines timestamped with the VMM's;
//! without a /dev/vhost-net that opens, a net launch is not run (both VMMs are
//! meant to measure vhost-net).

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::l1mem;
use crate::bench::plan::{
    is_marker_line, Launch, LaunchKind, LaunchRecord, Plan, Sample, TimedLine, VmmKind,
    INIT_MARKER, IO_BEGIN, IO_RESULT, LOGS_DIR, NET_BEGIN, NET_RESULT, POPULATE_MARK, READY_MARKER,
    TICK_TRIGGER,
};
use crate::bench::probe::{self, KVM_DEBUGFS};
use crate::error::{Error, Result};
use crate::vmm::device_placeholder;

/// Output lines kept for a failure's explanation.
const TAIL_LINES: usize = 40;
/// After a stop or time-out kill, how long to wait for the process to go.
const REAP_GRACE: Duration = Duration::from_secs(30);

/// What the agent is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The results file (appended to).
    pub results: PathBuf,
    /// BDFs of the devices, in `@DEVn@` order.
    pub devices: Vec<String>,
    /// Seconds from now after which no launch is started.
    pub deadline_secs: u64,
}

/// Runs the plan; each launch's record is appended as soon as it ends.
pub fn run(args: &AgentArgs) -> Result<()> {
    let started = Instant::now();
    let text = fs::read_to_string(&args.plan).map_err(|source| Error::ReadFile {
        path: args.plan.clone(),
        source,
    })?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| Error::BenchResults {
        path: args.plan.clone(),
        detail: e.to_string(),
    })?;
    prepare_l1(&plan);
    let logs = plan.work_dir.join(LOGS_DIR);
    let _ = fs::create_dir_all(&logs);
    let deadline = started + Duration::from_secs(args.deadline_secs);
    // A measurement that hung once (a VMM that cannot boot this guest yet)
    // would eat its whole time limit every repetition: it is run once.
    let mut hung: Vec<String> = Vec::new();
    for (i, launch) in plan.launches.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let measurement = launch.key.measurement();
        let record = if left < Duration::from_secs(launch.timeout_secs.min(60)) {
            LaunchRecord::not_run(
                launch.key.clone(),
                format!("skipped: {}s left of L1's time limit", left.as_secs()),
            )
        } else if hung.contains(&measurement) {
            LaunchRecord::not_run(
                launch.key.clone(),
                "skipped: an earlier repetition hit its time limit".into(),
            )
        } else if let Err(why) = l1mem::size_pools(&launch.key, &plan.launches[i..]) {
            LaunchRecord::not_run(launch.key.clone(), why)
        } else {
            log::info!("{}: starting; L1 {}", launch.key.id, meminfo_summary());
            let thp = launch.transparent_hugepages.as_deref();
            thp.inspect(|mode| set_thp(mode));
            let record = match launch.key.vmm {
                VmmKind::Populate => run_populate(launch),
                VmmKind::Qemu | VmmKind::Strait => {
                    let cache = plan.vmm_cache.as_deref();
                    if let Some(dir) = cache.filter(|_| launch.key.cold_kernel) {
                        l1mem::empty_cache(dir);
                    }
                    run_launch(launch, &args.devices, &logs, (left, cache))
                }
            };
            thp.inspect(|_| set_thp(&plan.transparent_hugepages));
            record
        };
        if record.timed_out {
            hung.push(measurement);
        }
        if launch.key.kind == LaunchKind::Net {
            log::info!("{}: L1 TCP drops so far: {}", launch.key.id, tcp_drops());
        }
        log::info!("{}: {}", launch.key.id, summary(&record));
        append(&args.results, &record)?;
    }
    Ok(())
}

/// Sets L1's transparent hugepages mode (best effort, logged).
fn set_thp(mode: &str) {
    let thp = "/sys/kernel/mm/transparent_hugepage/enabled";
    if let Err(e) = fs::write(thp, mode) {
        log::warn!("cannot set {thp}: {e}");
    }
    log::info!(
        "{thp}: {}",
        fs::read_to_string(thp).unwrap_or_default().trim()
    );
}

/// The plain populate of a launch's pages, timed by the agent itself.
fn run_populate(launch: &Launch) -> LaunchRecord {
    let (key, start) = (&launch.key, Instant::now());
    match l1mem::populate_twice(key.hugepages, key.memory_mib) {
        Ok((first, ms)) => {
            let mut r = LaunchRecord::not_run(key.clone(), String::new());
            let text = format!(
                "{POPULATE_MARK} pages={} mib={} ms={ms:.1} first_ms={first:.1}",
                key.hugepages.spec_value(),
                key.memory_mib
            );
            r.not_run = None;
            r.exit_code = Some(0);
            r.exit_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
            r.lines.push(TimedLine {
                ms: r.exit_ms.unwrap_or(first + ms),
                text,
            });
            r
        }
        Err(e) => LaunchRecord::not_run(key.clone(), format!("populate: {e}")),
    }
}

/// L1's free memory and hugepages, for the agent's log.
fn meminfo_summary() -> String {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    ["MemFree", "MemAvailable", "HugePages_Free"]
        .iter()
        .map(|f| {
            let v = probe::status_kib(&text, f).map_or("?".into(), |v| v.to_string());
            format!("{f} {v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line about how a launch ended.
fn summary(r: &LaunchRecord) -> String {
    if let Some(why) = &r.not_run {
        return format!("not run ({why})");
    }
    format!(
        "exit {:?} signal {:?}{}{} after {:.0} ms, {} marker lines",
        r.exit_code,
        r.exit_signal,
        if r.stopped { " (stopped)" } else { "" },
        if r.timed_out { " (timed out)" } else { "" },
        r.exit_ms.unwrap_or(0.0),
        r.lines.len()
    )
}

/// Transparent hugepages off (the 4 KiB runs must get 4 KiB pages in both VMMs,
/// which both madvise THP), and debugfs for KVM's counters. Best effort:
/// failures show as n/a in the report.
fn prepare_l1(plan: &Plan) {
    set_thp(&plan.transparent_hugepages);
    if !Path::new(KVM_DEBUGFS).exists() && !mount_debugfs() {
        log::warn!("no {KVM_DEBUGFS}: KVM exit counts will be n/a");
    }
    let gigantic = crate::scenario::HugePages::Size1G;
    if plan.launches.iter().any(|l| l.key.hugepages == gigantic) {
        l1mem::mount_gigantic();
    }
    if let Some(dir) = &plan.vmm_cache {
        l1mem::fill_cache(dir);
    }
    if plan.launches.iter().any(|l| l.key.kind == LaunchKind::Net) {
        make_tap();
    }
}

/// L1's tap for the net launches ([`crate::net`]); a failure shows in the
/// launches' records (the VMMs cannot open the tap).
fn make_tap() {
    for command in crate::net::tap_commands() {
        match Command::new(&command[0]).args(&command[1..]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => log::warn!(
                "{}: {}",
                command.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => log::warn!("{}: {e}", command.join(" ")),
        }
    }
    log::info!("tap {} up with {}", crate::net::TAP, crate::net::L1_ADDR);
}

/// Why vhost-net cannot carry a net launch's frames in L1, if it cannot.
fn vhost_net_problem() -> Option<String> {
    match OpenOptions::new().read(true).write(true).open(VHOST_NET) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "{VHOST_NET} does not open in L1 ({e}); both VMMs are to be measured on vhost-net"
        )),
    }
}

/// L1's nonzero TCP drop counters (/proc/net/netstat, TcpExt `*Drop*`): where the
/// peer's receive path lost segments, for the agent's log.
fn tcp_drops() -> String {
    let text = fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return "n/a".into();
    };
    let drops: Vec<String> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, v)| n.contains("Drop") && *v != "0")
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if drops.is_empty() {
        "none".into()
    } else {
        drops.join(" ")
    }
}

/// The device both VMMs open for the in-kernel virtio-net data path.
const VHOST_NET: &str = "/dev/vhost-net";

fn mount_debugfs() -> bool {
    l1mem::mount(c"debugfs", c"/sys/kernel/debug", c"debugfs", None).is_ok()
}

fn append(path: &Path, record: &LaunchRecord) -> Result<()> {
    let line = serde_json::to_string(record).map_err(|e| Error::BenchResults {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let write = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_all()
        });
    write.map_err(|source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `@DEVn@` with the BDFs L1 found.
fn substitute(text: &str, devices: &[String]) -> String {
    devices
        .iter()
        .enumerate()
        .fold(text.to_string(), |t, (i, bdf)| {
            t.replace(&device_placeholder(i), bdf)
        })
}

/// What the reader threads and the QMP thread report.
enum Event {
    Line(Duration, String),
    Eof,
    Qmp(std::result::Result<Duration, String>),
}

/// The state of one running launch.
struct Running<'a> {
    launch: &'a Launch,
    child: Child,
    start: Instant,
    record: LaunchRecord,
    log: Vec<String>,
    tail: VecDeque<String>,
    kill_at: Option<Instant>,
    /// When KVM's counters are sampled next ([`Launch::sample_period_ms`]).
    next_tick: Option<Instant>,
}

/// Runs one VMM launch with at most `left` of L1's time, Strait's cache in `cache`
/// (`XDG_CACHE_HOME`; the run script's if `None`).
fn run_launch(
    launch: &Launch,
    devices: &[String],
    logs: &Path,
    (left, cache): (Duration, Option<&Path>),
) -> LaunchRecord {
    if let (Some(spec), Some(path)) = (&launch.spec, &launch.spec_path) {
        let text = serde_json::to_string_pretty(spec).unwrap_or_default();
        if let Err(e) = fs::write(path, substitute(&text, devices)) {
            return LaunchRecord::not_run(launch.key.clone(), format!("writing the spec: {e}"));
        }
    }
    if let Some(socket) = &launch.qmp_socket {
        let _ = fs::remove_file(socket);
    }
    if launch.key.kind == LaunchKind::Net {
        if let Some(why) = vhost_net_problem() {
            return LaunchRecord::not_run(launch.key.clone(), why);
        }
    }
    let args: Vec<String> = launch
        .command
        .iter()
        .map(|a| substitute(a, devices))
        .collect();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let mut peer = match launch.peer.as_deref().map(|p| spawn_peer(p, start, &tx)) {
        Some(Err(why)) => return LaunchRecord::not_run(launch.key.clone(), why),
        Some(Ok(child)) => Some(child),
        None => None,
    };
    let mut command = Command::new(&args[0]);
    if let Some(dir) = cache {
        command.env("XDG_CACHE_HOME", dir);
    }
    let spawned = command
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            stop_peer(peer.as_mut());
            return LaunchRecord::not_run(launch.key.clone(), format!("spawning {}: {e}", args[0]));
        }
    };
    spawn_reader(child.stdout.take(), start, tx.clone(), true);
    spawn_reader(child.stderr.take(), start, tx.clone(), true);
    let limit = Duration::from_secs(launch.timeout_secs).min(left);
    let cancel = Arc::new(AtomicBool::new(false));
    if let Some(socket) = launch.qmp_socket.clone() {
        let (tx, cancel) = (tx.clone(), cancel.clone());
        std::thread::spawn(move || {
            let _ = tx.send(Event::Qmp(probe::qmp_ready(&socket, start, limit, &cancel)));
        });
    }
    drop(tx);
    let mut running = Running {
        launch,
        child,
        start,
        record: LaunchRecord::not_run(launch.key.clone(), String::new()),
        log: Vec::new(),
        tail: VecDeque::new(),
        kill_at: None,
        next_tick: launch.sample_period_ms.map(|_| start),
    };
    running.record.not_run = None;
    running.watch(&rx, limit);
    cancel.store(true, Ordering::Relaxed);
    stop_peer(peer.as_mut());
    // The peer's last lines (after the VMM closed its output) are kept too.
    while let Ok(Event::Line(at, text)) = rx.try_recv() {
        running.on_line(at, text);
    }
    running.finish(logs)
}

/// Starts a launch's peer in L1 with its output joining the VMM's (no end of
/// stream is reported: the launch ends with the VMM).
fn spawn_peer(
    command: &[String],
    start: Instant,
    tx: &Sender<Event>,
) -> std::result::Result<Child, String> {
    let program = command.first().ok_or("the peer command is empty")?;
    let mut child = Command::new(program)
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning the peer {program}: {e}"))?;
    spawn_reader(child.stdout.take(), start, tx.clone(), false);
    Ok(child)
}

/// Kills and reaps the launch's peer (a server that never ends by itself).
fn stop_peer(peer: Option<&mut Child>) {
    if let Some(peer) = peer {
        let _ = peer.kill();
        let _ = peer.wait();
    }
}

/// Forwards `stream`'s lines, timestamped from `start`; at its end sends
/// [`Event::Eof`] if `eof` (the VMM's streams, which the watch loop counts).
fn spawn_reader(
    stream: Option<impl Read + Send + 'static>,
    start: Instant,
    tx: Sender<Event>,
    eof: bool,
) {
    let Some(stream) = stream else {
        if eof {
            let _ = tx.send(Event::Eof);
        }
        return;
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
            let at = start.elapsed();
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(Event::Line(at, text)).is_err() {
                return;
            }
        }
        if eof {
            let _ = tx.send(Event::Eof);
        }
    });
}

impl Running<'_> {
    fn ms(at: Duration) -> f64 {
        at.as_secs_f64() * 1000.0
    }

    /// Handles events until both output streams are closed, killing the VMM when
    /// its stop rule is met or its time is up.
    fn watch(&mut self, rx: &Receiver<Event>, limit: Duration) {
        let mut open_streams = 2;
        while open_streams > 0 {
            let now = Instant::now();
            if self.kill_at.is_none() && now.duration_since(self.start) > limit {
                self.record.timed_out = true;
                self.kill();
            }
            if self
                .kill_at
                .is_some_and(|at| now.duration_since(at) > REAP_GRACE)
            {
                log::warn!(
                    "{}: output still open {REAP_GRACE:?} after kill",
                    self.launch.key.id
                );
                return;
            }
            let wait = match self.next_tick {
                Some(tick) if tick <= now => {
                    self.tick();
                    continue;
                }
                Some(tick) => (tick - now).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            match rx.recv_timeout(wait) {
                Ok(Event::Line(at, text)) => self.on_line(at, text),
                Ok(Event::Eof) => open_streams -= 1,
                Ok(Event::Qmp(result)) => self.on_qmp(result),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn on_line(&mut self, at: Duration, text: String) {
        let ms = Self::ms(at);
        self.log.push(format!("[{ms:10.1} ms] {text}"));
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.clone());
        if text.contains(INIT_MARKER) {
            self.next_tick = None;
        }
        let keep = self.launch.keep_all_lines || is_marker_line(&text);
        if !keep && self.launch.stop_at_line.is_none() {
            return;
        }
        let stop = self
            .launch
            .stop_at_line
            .as_deref()
            .is_some_and(|needle| text.contains(needle));
        if text.contains(READY_MARKER) {
            self.sample("ready", true);
        } else if [IO_BEGIN, IO_RESULT, NET_BEGIN, NET_RESULT]
            .iter()
            .any(|m| text.contains(m))
        {
            let trigger: Vec<&str> = text.split_whitespace().take(2).collect();
            self.sample(&trigger.join(" "), false);
        }
        if keep {
            self.record.lines.push(TimedLine { ms, text });
        }
        if stop && self.kill_at.is_none() {
            self.sample("stop-line", true);
            self.record.stopped = true;
            self.kill();
        }
    }

    /// KVM's counters now, and the next tick one period on (launches that sample
    /// periodically, until L2's /init marker).
    fn tick(&mut self) {
        self.sample(TICK_TRIGGER, false);
        let period = Duration::from_millis(self.launch.sample_period_ms.unwrap_or(100));
        self.next_tick = self.next_tick.map(|t| t + period);
    }

    fn on_qmp(&mut self, result: std::result::Result<Duration, String>) {
        match result {
            Ok(at) => {
                self.record.qmp_ready_ms = Some(Self::ms(at));
                self.sample("qmp-ready", true);
                if self.launch.stop_at_qmp && self.kill_at.is_none() {
                    self.record.stopped = true;
                    self.kill();
                }
            }
            Err(e) => self.record.qmp_error = Some(e),
        }
    }

    /// Records a sample: KVM's counters always, the process when asked.
    fn sample(&mut self, trigger: &str, process: bool) {
        let ms = Self::ms(self.start.elapsed());
        let kvm = probe::kvm_counters(Path::new(KVM_DEBUGFS));
        let (process, process_error) = if process {
            let ram = u64::from(self.launch.key.memory_mib) << 20;
            match probe::sample_process(self.child.id(), ram) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        self.record.samples.push(Sample {
            trigger: trigger.to_string(),
            ms,
            process,
            process_error,
            kvm,
        });
    }

    fn kill(&mut self) {
        // SIGKILL: teardown is not measured, and the kernel releases the VFIO
        // device and unpins guest RAM before the process can be reaped.
        let _ = self.child.kill();
        self.kill_at = Some(Instant::now());
    }

    /// Reaps the VMM (giving up after [`REAP_GRACE`]: a process stuck in the
    /// kernel, say in a device reset, must not stop the whole plan), writes its
    /// log and returns the record.
    fn finish(mut self, logs: &Path) -> LaunchRecord {
        let since = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if self.kill_at.is_none() {
                // Output closed but still running: never leave it behind.
                self.kill();
            }
            if since.elapsed() > REAP_GRACE {
                let note = format!("agent: the VMM was not reaped {REAP_GRACE:?} after SIGKILL");
                log::warn!("{}: {note}", self.launch.key.id);
                self.tail.push_back(note);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.record.exit_ms = Some(Self::ms(self.start.elapsed()));
        if let Some(status) = status {
            self.record.exit_code = status.code();
            self.record.exit_signal = status.signal();
        }
        self.record.tail = self.tail.into_iter().collect();
        let path = logs.join(format!("{}.log", self.launch.key.id));
        let header = format!("$ {}\n", self.launch.command.join(" "));
        let _ = fs::write(&path, header + &self.log.join("\n") + "\n");
        self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_bdfs() {
        let devices = vec!["0000:00:03.0".to_string()];
        assert_eq!(
            substitute("vfio-pci,host=@DEV0@,bus=rp0", &devices),
            "vfio-pci,host=0000:00:03.0,bus=rp0"
        );
        assert_eq!(
            substitute(r#"{"host": "@DEV0@"}"#, &devices),
            r#"{"host": "0000:00:03.0"}"#
        );
    }

    #[test]
    fn summary_says_why_a_launch_did_not_run() {
        let plan_key = crate::bench::plan::LaunchKey {
            id: "r1-boot-qemu".into(),
            kind: crate::bench::plan::LaunchKind::Boot,
            vmm: crate::bench::plan::VmmKind::Qemu,
            rep: 1,
            memory_mib: 512,
            hugepages: crate::scenario::HugePages::Size2M,
            prefault: true,
            cold_kernel: false,
        };
        let r = LaunchRecord::not_run(plan_key, "skipped: 3s left".into());
        assert_eq!(summary(&r), "not run (skipped: 3s left)");
    }
}
