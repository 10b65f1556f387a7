//! From the agent's launch records to the benchmark's metrics: what each
//! launch measured (or why it measured nothing), per-VMM medians, the ratio
//! Strait / QEMU and the verdict against the project's goals. Everything here
//! is pure, so the parsing of timelines, exit counts, iobench lines and
//! samples is unit-tested without a testbed.

use std::collections::BTreeMap;

use crate::bench::plan::{
    LaunchKind, LaunchRecord, TimedLine, VmmKind, INIT_MARKER, IO_BEGIN, IO_RESULT, NET_BEGIN,
    NET_PEER, NET_RESULT, READY_MARKER, REBOOTING_MARKER, SECOND_BOOT_MARKER, STRAIT_READY_MARK,
};
use crate::net::STRAIT_USERSPACE_LOG;
use crate::scenario::HugePages;

/// Pinned memory below this share of guest RAM means the VMM did not map RAM for DMA.
const PINNED_SHARE: f64 = 0.9;

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Strait / QEMU, when both exist and QEMU's is not zero.
pub fn ratio(strait: Option<f64>, qemu: Option<f64>) -> Option<f64> {
    match (strait, qemu) {
        (Some(s), Some(q)) if q != 0.0 => Some(s / q),
        _ => None,
    }
}

/// `key=value` words of a line (`IOBENCH-RESULT mode=seq bytes=1 ...`).
pub fn key_values(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Strait's timeline: phase -> (ms Strait logged since its start, ms the agent
/// read the line since spawn). Lines look like `strait: timeline: memory_ready=123.4ms`.
pub fn strait_timeline(record: &LaunchRecord) -> BTreeMap<String, (f64, f64)> {
    record
        .lines
        .iter()
        .filter_map(|l| {
            let rest = &l.text[l.text.find("strait: timeline: ")? + "strait: timeline: ".len()..];
            let (phase, value) = rest.trim().split_once('=')?;
            let ms = value.strip_suffix("ms")?.parse().ok()?;
            Some((phase.to_string(), (ms, l.ms)))
        })
        .collect()
}

/// Strait's exit counters from `strait: exits: total=N io_in=N ...`.
pub fn strait_exits(record: &LaunchRecord) -> Option<BTreeMap<String, u64>> {
    let line = record
        .lines
        .iter()
        .find(|l| l.text.contains("strait: exits: "))?;
    let counts: BTreeMap<String, u64> = key_values(&line.text)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    counts.contains_key("total").then_some(counts)
}

/// When the agent read the first line containing `needle`.
pub fn first_ms(record: &LaunchRecord, needle: &str) -> Option<f64> {
    record
        .lines
        .iter()
        .find(|l| l.text.contains(needle))
        .map(|l| l.ms)
}

/// Why a launch measured nothing at all, if so.
pub(crate) fn launch_problem(r: &LaunchRecord) -> Option<String> {
    if let Some(why) = &r.not_run {
        return Some(why.clone());
    }
    if r.timed_out {
        return Some("killed at its time limit".into());
    }
    if !r.stopped && r.exit_code != Some(0) {
        let last = r.tail.last().map(String::as_str).unwrap_or("");
        let status = match (r.exit_code, r.exit_signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("died of signal {sig}"),
            _ => "ended without a status".into(),
        };
        return Some(format!("{status}: {last}"));
    }
    None
}

/// The device check the bench /init prints (`TESTBED-BENCH mode=boot nvme=...`),
/// for launches that pass the controller through; the VMM's first warning
/// about passthrough, if any, says why.
fn device_problem(r: &LaunchRecord) -> Option<String> {
    if r.key.kind.devices() == 0 {
        return None;
    }
    let line = r
        .lines
        .iter()
        .find(|l| l.text.contains("TESTBED-BENCH mode="))?;
    if key_values(&line.text).get("nvme").map(String::as_str) != Some("none") {
        return None;
    }
    let mut why = String::from("the passed-through nvme controller was not on L2's PCI bus");
    let warning = r.lines.iter().find(|l| {
        (l.text.contains("strait: warn:") || l.text.contains("strait: error:"))
            && l.text.contains("passthrough")
    });
    if let Some(w) = warning {
        why.push_str(&format!(" ({})", w.text.trim()));
    }
    Some(why)
}

/// Launch to the guest's /init marker, in seconds.
pub fn launch_to_init(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(p) = launch_problem(r).or_else(|| device_problem(r)) {
        return Err(p);
    }
    first_ms(r, INIT_MARKER)
        .map(|ms| ms / 1000.0)
        .ok_or_else(|| "L2 never printed its /init marker".into())
}

/// Launch to the VMM's exit after the guest powered off, in seconds.
pub fn launch_to_exit(r: &LaunchRecord) -> Result<f64, String> {
    launch_to_init(r)?;
    r.exit_ms
        .map(|ms| ms / 1000.0)
        .ok_or_else(|| "no exit time".into())
}

/// What L2's kernel prints as it powers off (`pr_emerg`, so even under `quiet`).
pub const POWER_DOWN_LINE: &str = "reboot: Power down";

/// The guest's power-off (its kernel's last line) to the VMM's exit, in ms: the
/// teardown (devices reset and released, DMA and RAM unmapped) as the host sees it.
pub fn power_off_to_exit(r: &LaunchRecord) -> Result<f64, String> {
    launch_to_init(r)?;
    let off = first_ms(r, POWER_DOWN_LINE).ok_or("L2 never printed its power-off line")?;
    let exit = r.exit_ms.ok_or("no exit time")?;
    Ok((exit - off).max(0.0))
}

/// Launch to "RAM allocated, pinned and DMA-mapped, VM ready to run", in ms:
/// QEMU's QMP answer under -S, Strait's `dma_mapped` line as read by the
/// agent. The VMM must have pinned (nearly) all guest RAM by then: VFIO's type1
/// driver accounts pinned pages in VmLck.
pub fn memory_ready(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(p) = launch_problem(r) {
        return Err(p);
    }
    let (at, trigger) = match r.key.vmm {
        VmmKind::Populate => return Err("not a VMM launch".into()),
        VmmKind::Qemu => (
            r.qmp_ready_ms.ok_or_else(|| {
                r.qmp_error
                    .clone()
                    .unwrap_or_else(|| "QMP never answered".into())
            })?,
            "qmp-ready",
        ),
        VmmKind::Strait => (
            first_ms(r, &format!("strait: timeline: {STRAIT_READY_MARK}=")).ok_or_else(|| {
                let last = r.tail.last().map(String::as_str).unwrap_or("");
                format!("no `{STRAIT_READY_MARK}` timeline mark: {last}")
            })?,
            "stop-line",
        ),
    };
    let sample = r.samples.iter().find(|s| s.trigger == trigger);
    let process = sample.and_then(|s| s.process.as_ref()).ok_or_else(|| {
        let why = sample.and_then(|s| s.process_error.clone());
        format!(
            "VMM not sampled at the ready point ({})",
            why.unwrap_or_default()
        )
    })?;
    let ram_kib = u64::from(r.key.memory_mib) * 1024;
    if (process.vm_lck_kib as f64) < PINNED_SHARE * ram_kib as f64 {
        return Err(format!(
            "guest RAM not DMA-mapped when ready ({} of {} MiB pinned, {} /dev/vfio fds): passthrough not wired?",
            process.vm_lck_kib / 1024,
            r.key.memory_mib,
            process.vfio_fds
        ));
    }
    Ok(at)
}

/// One iobench pattern's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoRun {
    /// Bytes read.
    pub bytes: u64,
    /// Reads completed.
    pub ios: u64,
    /// Seconds between the BEGIN and RESULT lines, on L1's clock.
    pub secs: f64,
    /// Seconds iobench measured on L2's clock.
    pub guest_secs: f64,
}

impl IoRun {
    /// MB/s (10^6 bytes) on L1's clock.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    /// Reads per second on L1's clock.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.secs
    }
}

/// The iobench run of `mode` (`seq`, `rand`) in an nvme launch. The rate is
/// taken on L1's clock (the agent's arrival times of the BEGIN and RESULT
/// lines), not L2's: a nested guest's clock is the less trustworthy one.
pub fn io_run(r: &LaunchRecord, mode: &str) -> Result<IoRun, String> {
    if let Some(p) = launch_problem(r).or_else(|| device_problem(r)) {
        return Err(p);
    }
    if let Some(l) = r.lines.iter().find(|l| l.text.contains("IOBENCH-ERROR")) {
        return Err(l.text.clone());
    }
    guest_error(r)?;
    let find = |tag: &str| tagged_line(r, tag, "mode", mode);
    let (Some(begin), Some(result)) = (find(IO_BEGIN), find(IO_RESULT)) else {
        return Err(format!("no complete iobench {mode} run in L2's output"));
    };
    let kv = key_values(&result.text);
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
    let (Some(bytes), Some(ios), Some(guest_secs)) = (num("bytes"), num("ios"), num("secs")) else {
        return Err(format!("unreadable iobench line: {}", result.text));
    };
    if num("errors").unwrap_or(1.0) > 0.0 {
        return Err(format!("iobench reported read errors: {}", result.text));
    }
    let secs = (result.ms - begin.ms) / 1000.0;
    if secs <= 0.0 || ios == 0.0 {
        return Err(format!("iobench {mode} completed no reads"));
    }
    Ok(IoRun {
        bytes: bytes as u64,
        ios: ios as u64,
        secs,
        guest_secs,
    })
}

/// KVM counter deltas over the iobench run of `mode` (all VM exits, port I/O
/// exits, MMIO exits to userspace, ...), from the agent's debugfs samples.
pub fn kvm_window(r: &LaunchRecord, mode: &str) -> Result<BTreeMap<String, u64>, String> {
    kvm_between(r, (IO_BEGIN, IO_RESULT), &format!("mode={mode}"))
}

/// KVM counter deltas between the samples the agent took at the `tags` lines
/// (BEGIN, RESULT) of one load (`which`: `mode=seq`, `dir=up`).
fn kvm_between(
    r: &LaunchRecord,
    tags: (&str, &str),
    which: &str,
) -> Result<BTreeMap<String, u64>, String> {
    let sample = |tag: &str| {
        let trigger = format!("{tag} {which}");
        r.samples.iter().find(|s| s.trigger == trigger)
    };
    let (Some(begin), Some(end)) = (sample(tags.0), sample(tags.1)) else {
        return Err(format!("no KVM samples around the {which} load"));
    };
    if end.kvm.is_empty() {
        return Err("KVM's debugfs counters were not readable in L1".into());
    }
    Ok(end
        .kvm
        .iter()
        .filter_map(|(k, after)| Some((k.clone(), after.checked_sub(*begin.kvm.get(k)?)?)))
        .collect())
}

/// `counter` per 1000 reads over both iobench patterns, from KVM's counters.
pub fn kvm_per_kilo_io(r: &LaunchRecord, counter: &str) -> Result<f64, String> {
    let mut events = 0u64;
    let mut ios = 0u64;
    for mode in ["seq", "rand"] {
        ios += io_run(r, mode)?.ios;
        let window = kvm_window(r, mode)?;
        events += window
            .get(counter)
            .ok_or_else(|| format!("KVM has no `{counter}` counter"))?;
    }
    Ok(events as f64 * 1000.0 / ios as f64)
}

/// One netbench direction (`up`: L2 -> L1, `down`: L1 -> L2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetRun {
    /// Bytes that arrived intact (the receiver checked each against the stream).
    pub bytes: u64,
    /// Seconds between the BEGIN and RESULT lines, on L1's clock.
    pub secs: f64,
    /// Seconds netbench measured on L2's clock.
    pub guest_secs: f64,
}

impl NetRun {
    /// MB/s (10^6 bytes) on L1's clock.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// Why a net launch did not measure vhost-net: the VMM's process had no vhost
/// worker in L1 when L2 was ready, or Strait said its frames took the userspace path.
fn net_path_problem(r: &LaunchRecord) -> Option<String> {
    if let Some(l) = r
        .lines
        .iter()
        .find(|l| l.text.contains(STRAIT_USERSPACE_LOG))
    {
        return Some(format!("not on vhost-net: {}", l.text.trim()));
    }
    let sample = r.samples.iter().find(|s| s.trigger == "ready")?;
    match &sample.process {
        Some(p) if p.vhost_workers == 0 => Some(
            "not on vhost-net: the VMM had no vhost worker thread in L1 when L2 was ready".into(),
        ),
        Some(_) => None,
        None => Some(format!(
            "the VMM was not sampled when L2 was ready ({})",
            sample.process_error.clone().unwrap_or_default()
        )),
    }
}

/// The netbench line tagged `tag` for direction `dir`.
fn net_line<'a>(
    r: &'a LaunchRecord,
    tag: &str,
    dir: &str,
) -> Option<&'a crate::bench::plan::TimedLine> {
    r.lines.iter().find(|l| {
        l.text.contains(tag) && key_values(&l.text).get("dir").map(String::as_str) == Some(dir)
    })
}

/// The netbench run of `dir` in a net launch: valid only on vhost-net, with every
/// byte intact, and with the peer in L1 counting the same bytes as L2. The rate is
/// taken on L1's clock, as for iobench.
pub fn net_run(r: &LaunchRecord, dir: &str) -> Result<NetRun, String> {
    if let Some(p) = launch_problem(r) {
        return Err(p);
    }
    for error in ["NETBENCH-ERROR", "TESTBED-BENCH error"] {
        if let Some(l) = r.lines.iter().find(|l| l.text.contains(error)) {
            return Err(l.text.clone());
        }
    }
    if first_ms(r, READY_MARKER).is_none() {
        return Err("L2's network never came up (no ready marker)".into());
    }
    if let Some(p) = net_path_problem(r) {
        return Err(p);
    }
    let (Some(begin), Some(result)) = (net_line(r, NET_BEGIN, dir), net_line(r, NET_RESULT, dir))
    else {
        return Err(format!("no complete netbench {dir} run in L2's output"));
    };
    let kv = key_values(&result.text);
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(bytes), Some(0), Some(guest_secs)) = (
        num("bytes"),
        num("bad"),
        kv.get("secs").and_then(|v| v.parse::<f64>().ok()),
    ) else {
        return Err(format!(
            "unreadable or failed netbench line: {}",
            result.text
        ));
    };
    let peer = net_line(r, NET_PEER, dir)
        .ok_or_else(|| format!("the peer in L1 reported no {dir} transfer"))?;
    let pk = key_values(&peer.text);
    let pnum = |k: &str| pk.get(k).and_then(|v| v.parse::<u64>().ok());
    // Up: the peer received and checked; down: it sent, and took L2's report.
    let agreed = pnum("bytes") == Some(bytes)
        && pnum("bad") == Some(0)
        && (dir == "up" || pnum("sent") == Some(bytes));
    if !agreed {
        return Err(format!(
            "L2 and the peer in L1 disagree: `{}` vs `{}`",
            result.text.trim(),
            peer.text.trim()
        ));
    }
    let secs = (result.ms - begin.ms) / 1000.0;
    if secs <= 0.0 || bytes == 0 {
        return Err(format!("netbench {dir} moved no data"));
    }
    Ok(NetRun {
        bytes,
        secs,
        guest_secs,
    })
}

/// `counter` per MB moved over both netbench directions, from KVM's counters.
pub fn kvm_per_mb_net(r: &LaunchRecord, counter: &str) -> Result<f64, String> {
    let mut events = 0u64;
    let mut bytes = 0u64;
    for dir in ["up", "down"] {
        bytes += net_run(r, dir)?.bytes;
        let window = kvm_between(r, (NET_BEGIN, NET_RESULT), &format!("dir={dir}"))?;
        events += window
            .get(counter)
            .ok_or_else(|| format!("KVM has no `{counter}` counter"))?;
    }
    Ok(events as f64 * 1e6 / bytes as f64)
}

/// The VMM's resident memory without guest RAM, in MiB, sampled when L2
/// printed its ready marker (nvme bound, before the I/O load).
pub fn resident_mib(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(p) = launch_problem(r).or_else(|| device_problem(r)) {
        return Err(p);
    }
    let sample = r
        .samples
        .iter()
        .find(|s| s.trigger == "ready")
        .ok_or("L2 never printed its ready marker (nvme not bound)")?;
    let p = sample
        .process
        .as_ref()
        .ok_or_else(|| sample.process_error.clone().unwrap_or_default())?;
    Ok(p.rss_excl_guest_kib() as f64 / 1024.0)
}

/// The guest's reboot request to its /init running again, in seconds: from the first
/// boot's last line before `reboot -f` to the next `TESTBED-INIT`. The second boot must
/// have found the first boot's token on the nvme (same VMM process, device re-attached).
pub fn reboot_to_init(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(p) = launch_problem(r).or_else(|| device_problem(r)) {
        return Err(p);
    }
    let asked = first_ms(r, REBOOTING_MARKER).ok_or("L2 never asked for a reboot")?;
    let again = r
        .lines
        .iter()
        .find(|l| l.ms >= asked && l.text.contains(INIT_MARKER))
        .ok_or("L2 did not reach /init again after its reboot")?;
    if first_ms(r, SECOND_BOOT_MARKER).is_none() {
        return Err("the second boot did not find the first boot's token on the nvme".into());
    }
    Ok((again.ms - asked) / 1000.0)
}

/// Strait's own measure of a reboot in place, in ms: from the guest's request to the
/// vCPUs started again (`strait: reboot: boot 2 started N ms after the guest's request`).
pub fn strait_reset_ms(r: &LaunchRecord) -> Result<f64, String> {
    reboot_to_init(r)?;
    r.lines
        .iter()
        .find_map(|l| {
            let rest = l.text.split("strait: reboot: boot ").nth(1)?;
            let ms = rest.split(" started ").nth(1)?.split(" ms").next()?;
            ms.trim().parse().ok()
        })
        .ok_or_else(|| "Strait printed no `reboot: boot N started` line".into())
}

/// Exits to Strait's userspace over a whole launch, from Strait's own counters.
pub fn strait_exit_total(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(p) = launch_problem(r).or_else(|| device_problem(r)) {
        return Err(p);
    }
    strait_exits(r)
        .and_then(|c| c.get("total").copied())
        .map(|t| t as f64)
        .ok_or_else(|| "Strait printed no `exits:` line".into())
}

/// Records of one measurement: launches of `kind` on that RAM, per VMM.
/// The bench /init's own error line, if it printed one.
fn guest_error(r: &LaunchRecord) -> Result<(), String> {
    match r
        .lines
        .iter()
        .find(|l| l.text.contains("TESTBED-BENCH error"))
    {
        Some(l) => Err(l.text.clone()),
        None => Ok(()),
    }
}

/// The first line holding `tag` and `key=value`.
fn tagged_line<'a>(
    r: &'a LaunchRecord,
    tag: &str,
    key: &str,
    value: &str,
) -> Option<&'a TimedLine> {
    r.lines.iter().find(|l| {
        l.text.contains(tag) && key_values(&l.text).get(key).map(String::as_str) == Some(value)
    })
}

/// One `bartouch` pass in a `bar` launch, as `bartouch` timed it on L2's clock: its
/// BEGIN and END lines can reach L1 together (a VMM may hand the guest's console on in
/// batches), which would make a pass shorter than a batch look instant on L1's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarPass {
    /// Bytes of the BAR read, one word per 4 KiB page.
    pub bytes: u64,
    /// Seconds the pass took (L2's monotonic clock).
    pub secs: f64,
}

impl BarPass {
    /// GiB of BAR covered per second.
    pub fn gib_per_sec(&self) -> f64 {
        self.bytes as f64 / f64::from(1u32 << 30) / self.secs
    }
}

/// `bartouch`'s pass `pass` (`first`: the faults that map the BAR; `mapped`: the
/// accesses alone) in a `bar` launch, from its `BARTOUCH-RESULT` line.
pub fn bar_pass(r: &LaunchRecord, pass: &str) -> Result<BarPass, String> {
    if let Some(p) = launch_problem(r) {
        return Err(p);
    }
    guest_error(r)?;
    let Some(result) = r.lines.iter().find(|l| l.text.contains("BARTOUCH-RESULT")) else {
        return Err("no BARTOUCH-RESULT line in L2's output".into());
    };
    let kv = key_values(&result.text);
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
    let ms = num(if pass == "first" {
        "first_ms"
    } else {
        "second_ms"
    });
    let (Some(mib), Some(ms)) = (num("mib"), ms) else {
        return Err(format!("unreadable bartouch line: {}", result.text));
    };
    if ms <= 0.0 {
        return Err(format!("bartouch {pass} pass took no time"));
    }
    Ok(BarPass {
        bytes: (mib as u64) << 20,
        secs: ms / 1000.0,
    })
}

pub fn select(
    records: &[LaunchRecord],
    kind: LaunchKind,
    memory: Option<(u32, HugePages)>,
    vmm: VmmKind,
) -> Vec<&LaunchRecord> {
    records
        .iter()
        .filter(|r| r.key.kind == kind && r.key.vmm == vmm)
        .filter(|r| {
            memory.is_none_or(|(mib, pages)| r.key.memory_mib == mib && r.key.hugepages == pages)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::plan::{LaunchKey, ProcessSample, Sample};

    /// A finished launch with marker `lines` given as (ms, text).
    pub(crate) fn record(kind: LaunchKind, vmm: VmmKind, lines: &[(f64, &str)]) -> LaunchRecord {
        let key = LaunchKey {
            id: format!("r1-x-{}", vmm.name()),
            kind,
            vmm,
            rep: 1,
            memory_mib: 512,
            hugepages: HugePages::Size2M,
            prefault: true,
            cold_kernel: false,
        };
        let mut r = LaunchRecord::not_run(key, String::new());
        r.not_run = None;
        r.exit_code = Some(0);
        r.exit_ms = Some(9000.0);
        r.lines = lines
            .iter()
            .map(|(ms, text)| TimedLine {
                ms: *ms,
                text: text.to_string(),
            })
            .collect();
        r
    }

    pub(crate) fn reboot_record(vmm: VmmKind) -> LaunchRecord {
        record(
            LaunchKind::Reboot,
            vmm,
            &[
                (3000.0, "TESTBED-INIT"),
                (3100.0, "TESTBED-BENCH mode=reboot nvme=0000:01:00.0"),
                (4000.0, "TESTBED-BENCH rebooting"),
                (
                    4040.0,
                    "strait: reboot: boot 2 started 35 ms after the guest's request",
                ),
                (6500.0, "TESTBED-INIT"),
                (6600.0, "TESTBED-BENCH mode=reboot nvme=0000:01:00.0"),
                (7000.0, "TESTBED-BENCH second-boot"),
            ],
        )
    }

    #[test]
    fn reboot_time_runs_from_the_request_to_the_second_init() {
        let r = reboot_record(VmmKind::Strait);
        assert_eq!(reboot_to_init(&r), Ok(2.5));
        assert_eq!(strait_reset_ms(&r), Ok(35.0));
        let qemu = reboot_record(VmmKind::Qemu);
        assert!(strait_reset_ms(&record(LaunchKind::Reboot, VmmKind::Qemu, &[])).is_err());
        assert_eq!(reboot_to_init(&qemu), Ok(2.5));
    }

    #[test]
    fn a_reboot_that_never_came_back_or_lost_its_token_is_no_sample() {
        let mut r = reboot_record(VmmKind::Strait);
        r.lines.retain(|l| !l.text.contains("second-boot"));
        assert!(reboot_to_init(&r).unwrap_err().contains("token"));
        let r = record(
            LaunchKind::Reboot,
            VmmKind::Qemu,
            &[
                (3000.0, "TESTBED-INIT"),
                (4000.0, "TESTBED-BENCH rebooting"),
            ],
        );
        assert!(reboot_to_init(&r).unwrap_err().contains("/init again"));
        let r = record(
            LaunchKind::Reboot,
            VmmKind::Qemu,
            &[(3000.0, "TESTBED-INIT")],
        );
        assert!(reboot_to_init(&r).unwrap_err().contains("never asked"));
    }

    pub(crate) fn sample(
        trigger: &str,
        kvm: &[(&str, u64)],
        process: Option<ProcessSample>,
    ) -> Sample {
        Sample {
            trigger: trigger.into(),
            ms: 0.0,
            process,
            process_error: None,
            kvm: kvm.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// An nvme launch with both iobench runs: 1000 seq reads over 2 s and 4000
    /// rand reads over 4 s of L1 time, and KVM samples around each.
    pub(crate) fn nvme_record(vmm: VmmKind) -> LaunchRecord {
        let mut r = record(
            LaunchKind::Nvme,
            vmm,
            &[
                (5000.0, "TESTBED-INIT"),
                (5100.0, "TESTBED-BENCH mode=nvme nvme=0000:01:00.0"),
                (6000.0, "TESTBED-BENCH ready"),
                (6100.0, "IOBENCH-BEGIN mode=seq bs=65536 qd=4 secs=2 size=67108864"),
                (8100.0, "IOBENCH-RESULT mode=seq bs=65536 qd=4 secs=2.000 bytes=65536000 ios=1000 errors=0 mbps=32.77 iops=500.0"),
                (8200.0, "IOBENCH-BEGIN mode=rand bs=4096 qd=4 secs=4 size=67108864"),
                (12200.0, "IOBENCH-RESULT mode=rand bs=4096 qd=4 secs=3.900 bytes=16384000 ios=4000 errors=0 mbps=4.20 iops=1025.6"),
                (13000.0, "strait: exits: total=900 io_in=300 io_out=590 mmio_read=10 mmio_write=0"),
            ],
        );
        let process = ProcessSample {
            smaps_rss_kib: 40 * 1024,
            guest_ram_rss_kib: 8 * 1024,
            ..Default::default()
        };
        r.samples = vec![
            sample("ready", &[], Some(process)),
            sample(
                "IOBENCH-BEGIN mode=seq",
                &[("exits", 100), ("mmio_exits", 7)],
                None,
            ),
            sample(
                "IOBENCH-RESULT mode=seq",
                &[("exits", 1100), ("mmio_exits", 7)],
                None,
            ),
            sample(
                "IOBENCH-BEGIN mode=rand",
                &[("exits", 1200), ("mmio_exits", 7)],
                None,
            ),
            sample(
                "IOBENCH-RESULT mode=rand",
                &[("exits", 5200), ("mmio_exits", 12)],
                None,
            ),
        ];
        r
    }

    /// A net launch on vhost-net: 40 MB up over 2 s and 20 MB down over 4 s of L1
    /// time, the peer agreeing, and KVM samples around each direction.
    pub(crate) fn net_record(vmm: VmmKind) -> LaunchRecord {
        let mut r = record(
            LaunchKind::Net,
            vmm,
            &[
                (5000.0, "TESTBED-INIT"),
                (5900.0, "TESTBED-BENCH net eth0 features=1100010110011001"),
                (6000.0, "TESTBED-BENCH ready"),
                (6100.0, "NETBENCH-BEGIN dir=up secs=2"),
                (8050.0, "NETBENCH-PEER dir=up bytes=40000000 bad=0"),
                (
                    8100.0,
                    "NETBENCH-RESULT dir=up bytes=40000000 bad=0 secs=2.010 mbps=19.90",
                ),
                (8200.0, "NETBENCH-BEGIN dir=down secs=2"),
                (
                    12200.0,
                    "NETBENCH-RESULT dir=down bytes=20000000 bad=0 secs=3.990 mbps=5.01",
                ),
                (
                    12210.0,
                    "NETBENCH-PEER dir=down sent=20000000 bytes=20000000 bad=0",
                ),
            ],
        );
        let process = ProcessSample {
            vhost_workers: 1,
            ..Default::default()
        };
        r.samples = vec![
            sample("ready", &[], Some(process)),
            sample(
                "NETBENCH-BEGIN dir=up",
                &[("exits", 0), ("mmio_exits", 3)],
                None,
            ),
            sample(
                "NETBENCH-RESULT dir=up",
                &[("exits", 30000), ("mmio_exits", 3)],
                None,
            ),
            sample(
                "NETBENCH-BEGIN dir=down",
                &[("exits", 31000), ("mmio_exits", 3)],
                None,
            ),
            sample(
                "NETBENCH-RESULT dir=down",
                &[("exits", 61000), ("mmio_exits", 9)],
                None,
            ),
        ];
        r
    }

    #[test]
    fn net_rates_use_l1_time_and_need_the_peer_to_agree() {
        let r = net_record(VmmKind::Strait);
        assert_eq!(
            net_run(&r, "up").map(|x| (x.bytes, x.secs)),
            Ok((40_000_000, 2.0))
        );
        assert_eq!(net_run(&r, "up").map(|x| x.mbps()), Ok(20.0));
        assert_eq!(net_run(&r, "down").map(|x| x.mbps()), Ok(5.0));
        let mut short = net_record(VmmKind::Qemu);
        short.lines[8].text = "NETBENCH-PEER dir=down sent=20065536 bytes=20000000 bad=0".into();
        assert!(net_run(&short, "down").unwrap_err().contains("disagree"));
        let mut lost = net_record(VmmKind::Qemu);
        lost.lines
            .retain(|l| !l.text.starts_with("NETBENCH-PEER dir=up"));
        assert!(net_run(&lost, "up").unwrap_err().contains("peer in L1"));
    }

    #[test]
    fn a_corrupted_stream_or_a_netbench_error_is_no_sample() {
        let mut r = net_record(VmmKind::Qemu);
        r.lines[5].text = "NETBENCH-RESULT dir=up bytes=40000000 bad=12 secs=2 mbps=19".into();
        assert!(net_run(&r, "up")
            .unwrap_err()
            .contains("failed netbench line"));
        let mut r = net_record(VmmKind::Qemu);
        r.lines.push(TimedLine {
            ms: 9000.0,
            text: "NETBENCH-ERROR down: connecting 10.0.2.1:5201: refused".into(),
        });
        assert!(net_run(&r, "up").unwrap_err().contains("refused"));
    }

    #[test]
    fn net_samples_count_only_on_vhost_net() {
        let mut r = net_record(VmmKind::Strait);
        r.lines.push(TimedLine {
            ms: 100.0,
            text: "strait: virtio-net net[0] (tap0): MAC 52:54:00:12:34:56, data path userspace on strait-io (vhost-net unavailable)".into(),
        });
        assert!(net_run(&r, "up")
            .unwrap_err()
            .starts_with("not on vhost-net: strait:"));
        let mut r = net_record(VmmKind::Qemu);
        r.samples[0].process = Some(ProcessSample::default());
        assert!(net_run(&r, "down").unwrap_err().contains("no vhost worker"));
    }

    #[test]
    fn net_exits_are_counted_per_mb_over_both_directions() {
        let r = net_record(VmmKind::Strait);
        // (30000 + 30000) exits over 60 MB; 6 MMIO exits to userspace.
        assert_eq!(kvm_per_mb_net(&r, "exits"), Ok(1000.0));
        assert_eq!(kvm_per_mb_net(&r, "mmio_exits"), Ok(0.1));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratio_needs_both_and_a_nonzero_reference() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(4.0)), None);
    }

    #[test]
    fn strait_timeline_keeps_logged_and_arrival_times() {
        let r = record(
            LaunchKind::Memory,
            VmmKind::Strait,
            &[
                (70.1, "strait: timeline: spec_parsed=26.2ms"),
                (1210.0, "strait: timeline: memory_ready=1166.1ms"),
                (1300.0, "strait: timeline: broken=ms"),
            ],
        );
        let t = strait_timeline(&r);
        assert_eq!(t.get("spec_parsed"), Some(&(26.2, 70.1)));
        assert_eq!(t.get("memory_ready"), Some(&(1166.1, 1210.0)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn strait_exit_counts_are_parsed_by_kind() {
        let counts = strait_exits(&nvme_record(VmmKind::Strait));
        let counts = counts.unwrap_or_default();
        assert_eq!(counts.get("total"), Some(&900));
        assert_eq!(counts.get("mmio_read"), Some(&10));
        assert_eq!(
            strait_exits(&record(LaunchKind::Boot, VmmKind::Strait, &[])),
            None
        );
    }

    #[test]
    fn launch_to_init_is_the_marker_arrival() {
        let r = record(
            LaunchKind::Boot,
            VmmKind::Qemu,
            &[(11_100.0, "TESTBED-INIT")],
        );
        assert_eq!(launch_to_init(&r), Ok(11.1));
        assert_eq!(launch_to_exit(&r), Ok(9.0));
    }

    #[test]
    fn teardown_runs_from_the_power_off_line_to_the_exit() {
        let lines = [
            (5_000.0, "TESTBED-INIT"),
            (8_200.0, "[  3.1] reboot: Power down"),
        ];
        let r = record(LaunchKind::Boot, VmmKind::Strait, &lines);
        assert_eq!(r.exit_ms, Some(9_000.0));
        assert_eq!(power_off_to_exit(&r), Ok(800.0));
        let r = record(LaunchKind::Boot, VmmKind::Strait, &lines[..1]);
        assert!(power_off_to_exit(&r).is_err());
    }

    #[test]
    fn missing_device_makes_a_boot_launch_invalid_with_the_vmm_warning() {
        let r = record(
            LaunchKind::Boot,
            VmmKind::Strait,
            &[
                (
                    1239.2,
                    "strait: warn: passthrough not wired into the VM yet",
                ),
                (7178.6, "TESTBED-INIT"),
                (7299.4, "TESTBED-BENCH mode=boot nvme=none"),
            ],
        );
        let err = launch_to_init(&r).err().unwrap_or_default();
        assert!(err.starts_with("the passed-through nvme controller was not on L2's PCI bus"));
        assert!(err.contains("not wired"), "{err}");
    }

    #[test]
    fn bare_launch_does_not_need_the_device() {
        let r = record(
            LaunchKind::Bare,
            VmmKind::Strait,
            &[
                (700.0, "TESTBED-INIT"),
                (710.0, "TESTBED-BENCH mode=boot nvme=none"),
            ],
        );
        assert_eq!(launch_to_init(&r), Ok(0.7));
    }

    #[test]
    fn failed_launch_reports_its_status_and_last_line() {
        let mut r = record(LaunchKind::Boot, VmmKind::Strait, &[(5.0, "TESTBED-INIT")]);
        r.exit_code = Some(3);
        r.tail = vec!["strait: cannot open /dev/vfio/5".into()];
        assert_eq!(
            launch_to_init(&r),
            Err("exited with status 3: strait: cannot open /dev/vfio/5".into())
        );
    }

    fn memory_record(vmm: VmmKind, pinned_mib: u64) -> LaunchRecord {
        let mut r = record(
            LaunchKind::Memory,
            vmm,
            &[(1251.7, "strait: timeline: dma_mapped=1208.8ms")],
        );
        r.stopped = true;
        r.exit_code = None;
        r.exit_signal = Some(9);
        r.qmp_ready_ms = Some(1956.0);
        let process = ProcessSample {
            vm_lck_kib: pinned_mib * 1024,
            ..Default::default()
        };
        let trigger = if vmm == VmmKind::Qemu {
            "qmp-ready"
        } else {
            "stop-line"
        };
        r.samples = vec![sample(trigger, &[], Some(process))];
        r
    }

    #[test]
    fn memory_ready_uses_qmp_for_qemu_and_the_timeline_for_strait() {
        assert_eq!(memory_ready(&memory_record(VmmKind::Qemu, 512)), Ok(1956.0));
        assert_eq!(
            memory_ready(&memory_record(VmmKind::Strait, 512)),
            Ok(1251.7)
        );
    }

    #[test]
    fn memory_ready_requires_guest_ram_pinned_for_dma() {
        let err = memory_ready(&memory_record(VmmKind::Strait, 0))
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("guest RAM not DMA-mapped when ready (0 of 512 MiB pinned"),
            "{err}"
        );
    }

    #[test]
    fn qemu_without_qmp_answer_reports_the_qmp_error() {
        let mut r = memory_record(VmmKind::Qemu, 512);
        r.qmp_ready_ms = None;
        r.qmp_error = Some("QMP closed while waiting for greeting".into());
        assert_eq!(
            memory_ready(&r),
            Err("QMP closed while waiting for greeting".into())
        );
    }

    #[test]
    fn io_rates_use_l1_time_between_begin_and_result() {
        let r = nvme_record(VmmKind::Qemu);
        let seq = io_run(&r, "seq");
        assert_eq!(
            seq.map(|x| (x.ios, x.secs, x.guest_secs)),
            Ok((1000, 2.0, 2.0))
        );
        let rand = io_run(&r, "rand");
        assert_eq!(rand.map(|x| x.iops()), Ok(1000.0));
        assert_eq!(io_run(&r, "seq").map(|x| x.mbps()), Ok(32.768));
    }

    #[test]
    fn iobench_error_makes_the_run_invalid() {
        let mut r = nvme_record(VmmKind::Qemu);
        r.lines.push(TimedLine {
            ms: 1.0,
            text: "IOBENCH-ERROR opening /dev/nvme0n1 with O_DIRECT: EINVAL".into(),
        });
        assert!(matches!(io_run(&r, "seq"), Err(e) if e.contains("EINVAL")));
    }

    #[test]
    fn kvm_deltas_are_taken_over_the_iobench_window() {
        let r = nvme_record(VmmKind::Strait);
        let w = kvm_window(&r, "rand").unwrap_or_default();
        assert_eq!(w.get("exits"), Some(&4000));
        assert_eq!(w.get("mmio_exits"), Some(&5));
        // (1000 + 4000) exits over 5000 reads.
        assert_eq!(kvm_per_kilo_io(&r, "exits"), Ok(1000.0));
        assert_eq!(kvm_per_kilo_io(&r, "mmio_exits"), Ok(1.0));
        assert!(kvm_per_kilo_io(&r, "hypercalls").is_err());
    }

    #[test]
    fn resident_memory_excludes_guest_ram() {
        assert_eq!(resident_mib(&nvme_record(VmmKind::Qemu)), Ok(32.0));
    }

    #[test]
    fn select_filters_kind_vmm_and_memory() {
        let records = vec![
            memory_record(VmmKind::Qemu, 512),
            memory_record(VmmKind::Strait, 512),
            nvme_record(VmmKind::Qemu),
        ];
        let mem = select(
            &records,
            LaunchKind::Memory,
            Some((512, HugePages::Size2M)),
            VmmKind::Qemu,
        );
        assert_eq!(mem.len(), 1);
        assert!(select(
            &records,
            LaunchKind::Memory,
            Some((1024, HugePages::Size2M)),
            VmmKind::Qemu
        )
        .is_empty());
        assert_eq!(
            select(&records, LaunchKind::Nvme, None, VmmKind::Qemu).len(),
            1
        );
    }

    #[test]
    fn bar_passes_come_from_bartouchs_result_line() {
        let r = record(
            LaunchKind::Bar,
            VmmKind::Strait,
            &[
                (3000.0, "TESTBED-INIT"),
                (4000.0, "BARTOUCH-BEGIN pass=first"),
                (4000.0, "BARTOUCH-END pass=first"),
                (
                    4000.0,
                    "BARTOUCH-RESULT mib=1024 pages=262144 map_ms=5 first_ms=500 second_ms=125",
                ),
            ],
        );
        let first = bar_pass(&r, "first").unwrap();
        assert_eq!(first.bytes, 1 << 30);
        assert_eq!(first.secs, 0.5);
        assert_eq!(first.gib_per_sec(), 2.0);
        assert_eq!(bar_pass(&r, "mapped").map(|p| p.secs), Ok(0.125));
    }

    #[test]
    fn bar_pass_without_its_result_is_an_error() {
        let r = record(
            LaunchKind::Bar,
            VmmKind::Qemu,
            &[(4000.0, "BARTOUCH-BEGIN pass=first")],
        );
        assert!(bar_pass(&r, "first").is_err());
        let failed = record(
            LaunchKind::Bar,
            VmmKind::Qemu,
            &[(4000.0, "TESTBED-BENCH error: bartouch failed")],
        );
        assert_eq!(
            bar_pass(&failed, "first"),
            Err("TESTBED-BENCH error: bartouch failed".into())
        );
    }
}
