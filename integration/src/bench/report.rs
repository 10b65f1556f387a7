//! The benchmark's report: a markdown page (goals, every metric, Strait's own
//! timeline and exit counts, the machine, how each number is measured) and a
//! bar chart of the ratios as SVG, drawn here without dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::bench::analysis::{
    key_values, median, memory_ready, select, strait_exits, strait_timeline,
};
use crate::bench::initcalls;
use crate::bench::metrics::{pages_label, Better, Layout, Metric, Target, Verdict};
use crate::bench::plan::{LaunchKind, LaunchRecord, VmmKind};
use crate::bench::sweep;

/// The machine and software a result set was taken on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// UTC date, YYYY-MM-DD.
    pub date: String,
    /// The command that produced the set.
    pub command: String,
    /// The host's CPU model (/proc/cpuinfo).
    pub host_cpu: String,
    /// The host's online CPUs.
    pub host_cores: usize,
    /// L0: QEMU's version line and machine.
    pub l0: String,
    /// L1: vCPUs, RAM, kernel, transparent hugepages.
    pub l1: String,
    /// L2: vCPUs, RAM, device.
    pub l2: String,
    /// The kernel release of L1 and L2.
    pub kernel: String,
    /// QEMU in L1 (the reference VMM).
    pub qemu: String,
    /// Strait's git commit (`+dirty` with uncommitted changes).
    pub strait_commit: String,
    /// The compiler that built iobench.
    pub rustc: String,
    /// Repetitions per VMM and measurement.
    pub reps: u32,
    /// iobench's load.
    pub io: String,
    /// L0 wall time of the whole run, seconds.
    pub wall_secs: f64,
    /// One line per L1 boot (more than one if L1 stalled and was booted again).
    #[serde(default)]
    pub l1_boots: Vec<String>,
    /// Launches during which L1 stalled (each stall once).
    #[serde(default)]
    pub stalled_launches: Vec<String>,
}

/// A number with a precision that suits its size.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_side(m: &Metric, vmm: VmmKind) -> String {
    let side = match vmm {
        VmmKind::Qemu | VmmKind::Populate => &m.qemu,
        VmmKind::Strait => &m.strait,
    };
    match (side.median(), side.na_reason()) {
        (Some(v), _) => {
            let failed = match side.failures {
                0 => String::new(),
                n => format!("; {n} failed"),
            };
            let min = side.values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = side
                .values
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let range = if side.values.len() > 1 {
                format!(", {}–{}", fmt_value(min), fmt_value(max))
            } else {
                String::new()
            };
            format!(
                "{} {} (n={}{range}{failed})",
                fmt_value(v),
                m.unit,
                side.values.len()
            )
        }
        (None, why) => format!("n/a ({})", short(&why.unwrap_or_default())),
    }
}

fn fmt_target(m: &Metric) -> String {
    match (m.target, m.better) {
        (None, _) => String::new(),
        (Some(Target::Ratio(g)), Better::Lower) => format!("≤ {g}"),
        (Some(Target::Ratio(g)), Better::Higher) => format!("≥ {g}"),
        (Some(Target::StraitAtMost(g)), _) => format!("Strait ≤ {g} {}", m.unit),
    }
}

fn fmt_verdict(m: &Metric) -> String {
    match m.verdict() {
        Verdict::Pass => "**pass**".into(),
        Verdict::Miss => "**miss**".into(),
        Verdict::NotAvailable(why) => format!("n/a ({})", short(&why)),
        Verdict::NoTarget => String::new(),
    }
}

fn fmt_ratio(m: &Metric) -> String {
    m.ratio().map_or("n/a".into(), |r| format!("{r:.2}"))
}

/// Table cells must not break the table.
fn escape_md(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A reason, cut to a length a table cell can carry.
fn short(text: &str) -> String {
    let mut t: String = text.chars().take(200).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    escape_md(&t)
}

/// The whole markdown page.
pub fn markdown(
    machine: &Machine,
    metrics: &[Metric],
    records: &[LaunchRecord],
    layout: &Layout,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Strait vs QEMU on the nested testbed, {}\n",
        machine.date
    );
    let _ = writeln!(
        s,
        "`{}`: {} repetition(s) per VMM and measurement, QEMU and Strait launched alternately \
         (Q S Q S ...) in one L1 boot, on the same L2 kernel, initramfs, vCPUs, RAM and passed-through \
         NVMe controller. Values are medians; **ratio = Strait / QEMU** (below 1 is better for times, \
         exits and memory, above 1 for throughput). L0 is pure TCG emulation: absolute times say \
         little about real hardware, the ratios are the result.\n",
        machine.command, machine.reps
    );
    s.push_str("![Strait / QEMU per metric](chart.svg)\n\n## Goals\n\n");
    s.push_str("| Goal | Strait / QEMU | Target | Result |\n|---|---|---|---|\n");
    for m in metrics.iter().filter(|m| m.target.is_some()) {
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {} | {} |",
            m.name,
            m.unit,
            fmt_ratio(m),
            fmt_target(m),
            fmt_verdict(m)
        );
    }
    s.push_str("\n## All metrics\n\nEach cell: median unit (launches, min–max).\n\n");
    s.push_str(
        "| Metric | QEMU | Strait | Strait / QEMU | Goal | Result |\n|---|---|---|---|---|---|\n",
    );
    let mut section = "";
    for m in metrics {
        if m.section != section {
            section = m.section;
            let _ = writeln!(s, "| **{section}** | | | | | |");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            m.name,
            fmt_side(m, VmmKind::Qemu),
            fmt_side(m, VmmKind::Strait),
            fmt_ratio(m),
            fmt_target(m),
            fmt_verdict(m)
        );
    }
    s.push_str(&sweep::tables(records, &layout.sweep));
    s.push_str(&detail_tables(records, layout));
    if records.iter().any(|r| r.key.kind == LaunchKind::Initcall) {
        s.push_str(&initcalls::markdown(&initcalls::compare(records)));
    }
    s.push_str(&machine_table(machine));
    s.push_str(METHOD);
    s.push_str(&not_run(records));
    s
}

/// Strait's own timeline and the memory pinned at the ready point, per memory measurement.
fn detail_tables(records: &[LaunchRecord], layout: &Layout) -> String {
    let mut s = String::from("\n## Memory launches in detail (medians)\n\n");
    s.push_str(
        "Strait's own timeline is in ms since its logger started (`strait: timeline:` lines); \
         pinned is VmLck at the ready point (VFIO type1 accounts pinned pages there).\n\n",
    );
    s.push_str("| RAM | Pages | Strait timeline (ms) | QEMU ready (ms) | Strait ready (ms) | QEMU pinned (MiB) | Strait pinned (MiB) |\n|---|---|---|---|---|---|---|\n");
    for &pages in &layout.page_kinds {
        for &mib in &layout.memory_sizes {
            let sel = |vmm| select(records, LaunchKind::Memory, Some((mib, pages)), vmm);
            let (q, st) = (sel(VmmKind::Qemu), sel(VmmKind::Strait));
            let _ = writeln!(
                s,
                "| {mib} MiB | {} | {} | {} | {} | {} | {} |",
                pages_label(pages),
                timeline_medians(&st),
                median_cell(&q, |r| memory_ready(r).ok()),
                median_cell(&st, |r| memory_ready(r).ok()),
                median_cell(&q, pinned_mib),
                median_cell(&st, pinned_mib)
            );
        }
    }
    s.push_str(&exit_table(records));
    s.push_str(&net_table(records));
    s
}

/// Each net launch's data path: Strait's own line, the VMM's vhost workers in L1,
/// the virtio-net feature bits L2's driver negotiated (bit 0 first) and L2's TCP
/// segments sent and retransmitted over the launch.
fn net_table(records: &[LaunchRecord]) -> String {
    let net: Vec<&LaunchRecord> = records
        .iter()
        .filter(|r| r.key.kind == LaunchKind::Net && r.not_run.is_none())
        .collect();
    if net.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## virtio-net launches: data path\n\n");
    s.push_str(
        "| Launch | VMM's data path line | vhost workers in L1 | Guest's feature bits (bit 0 first) \
         | L2 TCP segments out, retransmitted |\n|---|---|---|---|---|\n",
    );
    for r in net {
        let line = |needle: &str| r.lines.iter().find(|l| l.text.contains(needle));
        let path = line("data path").map_or("—".into(), |l| {
            let text = l.text.trim();
            text.split_once("data path ")
                .map_or(text, |(_, rest)| rest)
                .to_string()
        });
        let workers = r
            .samples
            .iter()
            .find(|x| x.trigger == "ready")
            .and_then(|x| x.process.as_ref())
            .map_or("n/a".into(), |p| p.vhost_workers.to_string());
        let features = line("TESTBED-BENCH net ")
            .and_then(|l| l.text.split("features=").nth(1))
            .map_or("n/a", str::trim);
        let tcp = line("TESTBED-BENCH tcp ").map_or("n/a".into(), |l| {
            let kv = key_values(&l.text);
            let get = |k: &str| kv.get(k).map_or("?", String::as_str).to_string();
            format!("{}, {}", get("out"), get("retrans"))
        });
        let _ = writeln!(
            s,
            "| {} | {} | {workers} | `{}` | {tcp} |",
            r.key.id,
            short(&path),
            escape_md(features)
        );
    }
    s
}

/// The median of `f` over `records`, rounded, or n/a.
fn median_cell(records: &[&LaunchRecord], f: impl Fn(&LaunchRecord) -> Option<f64>) -> String {
    let v: Vec<f64> = records.iter().filter_map(|r| f(r)).collect();
    median(&v).map_or("n/a".into(), |m| format!("{m:.0}"))
}

/// VmLck at a memory launch's ready point, in MiB.
fn pinned_mib(r: &LaunchRecord) -> Option<f64> {
    r.samples
        .iter()
        .find(|s| s.trigger == "qmp-ready" || s.trigger == "stop-line")?
        .process
        .as_ref()
        .map(|p| p.vm_lck_kib as f64 / 1024.0)
}

/// Strait's timeline phases (median ms as Strait logged them), in time order.
fn timeline_medians(records: &[&LaunchRecord]) -> String {
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        for (phase, (logged, _)) in strait_timeline(r) {
            phases.entry(phase).or_default().push(logged);
        }
    }
    let mut ordered: Vec<(String, f64)> = phases
        .into_iter()
        .filter_map(|(p, v)| Some((p, median(&v)?)))
        .collect();
    ordered.sort_by(|a, b| a.1.total_cmp(&b.1));
    if ordered.is_empty() {
        return "n/a".into();
    }
    let cells: Vec<String> = ordered.iter().map(|(p, v)| format!("{p} {v:.0}")).collect();
    cells.join(", ")
}

/// Strait's exit counters by kind, medians per launch kind.
fn exit_table(records: &[LaunchRecord]) -> String {
    let mut s = String::from("\n## Strait's exit counters by kind (medians over launches)\n\n");
    let mut any = false;
    for kind in [
        LaunchKind::Bare,
        LaunchKind::Boot,
        LaunchKind::Nvme,
        LaunchKind::Blk,
        LaunchKind::Net,
    ] {
        let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in select(records, kind, None, VmmKind::Strait) {
            for (k, v) in strait_exits(r).unwrap_or_default() {
                by_kind.entry(k).or_default().push(v as f64);
            }
        }
        if by_kind.is_empty() {
            continue;
        }
        if !any {
            let names: Vec<&String> = by_kind.keys().collect();
            let _ = writeln!(
                s,
                "| Launch | {} |",
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(s, "|---|{}", "---|".repeat(names.len()));
            any = true;
        }
        let cells: Vec<String> = by_kind
            .values()
            .map(|v| median(v).map_or("n/a".into(), |m| format!("{m:.0}")))
            .collect();
        let label = match kind {
            LaunchKind::Bare => "boot, no device",
            LaunchKind::Boot => "boot",
            LaunchKind::Blk => "virtio-blk",
            LaunchKind::Net => "virtio-net",
            _ => "nvme",
        };
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    if !any {
        s.push_str("n/a: no Strait launch printed its `strait: exits:` line.\n");
    }
    s
}

fn machine_table(m: &Machine) -> String {
    let mut s = String::from("\n## Machine and versions\n\n| | |\n|---|---|\n");
    let rows = [
        ("Date (UTC)", m.date.clone()),
        (
            "Host CPU",
            format!("{} ({} cores)", m.host_cpu, m.host_cores),
        ),
        ("L0", m.l0.clone()),
        ("L1", m.l1.clone()),
        ("L2", m.l2.clone()),
        ("L1/L2 kernel", m.kernel.clone()),
        ("QEMU in L1 (reference)", m.qemu.clone()),
        ("Strait commit", m.strait_commit.clone()),
        ("iobench", format!("{}; built with {}", m.io, m.rustc)),
        ("Repetitions", m.reps.to_string()),
        ("L0 wall time", format!("{:.0} s", m.wall_secs)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {} |", escape_md(&v));
    }
    for (i, boot) in m.l1_boots.iter().enumerate() {
        let _ = writeln!(s, "| L1 boot {} | {} |", i + 1, escape_md(boot));
    }
    if !m.stalled_launches.is_empty() {
        let _ = writeln!(
            s,
            "| L1 stalled during | {} (nested-emulation lockups; each such launch was retried in a new L1 boot) |",
            m.stalled_launches.join(", ")
        );
    }
    s
}

/// Launches that measured nothing, and why.
fn not_run(records: &[LaunchRecord]) -> String {
    let mut s = String::from("\n## Launches that did not complete\n\n");
    let mut any = false;
    for r in records {
        let why = r.not_run.clone().or_else(|| {
            if r.timed_out {
                Some("killed at its time limit".into())
            } else if !r.stopped && r.exit_code != Some(0) {
                Some(format!(
                    "exit {:?}: {}",
                    r.exit_code,
                    r.tail.last().cloned().unwrap_or_default()
                ))
            } else {
                None
            }
        });
        if let Some(why) = why {
            let _ = writeln!(s, "- `{}`: {}", r.key.id, short(&why));
            any = true;
        }
    }
    if !any {
        s.push_str("None.\n");
    }
    s
}

const METHOD: &str = r#"
## How each metric is measured

All times are taken in L1 by the benchmark's agent (`testbed l1-agent`, run inside L1 from the
host's tree), on L1's monotonic clock, from just before it spawns the VMM; every line the VMM
writes (guest console and its own log) is timestamped as it arrives.

- **Launch → guest /init**: until L2's /init prints `TESTBED-INIT` (its first command). Same
  kernel, initramfs and command line for both VMMs; the passed-through NVMe controller is attached
  (/init checks it is on the PCI bus, then powers off). QEMU boots through SeaBIOS and its
  linuxboot option ROM, Strait loads the kernel directly.
- **Launch → VMM exit**: the same launches, until the VMM process is reaped after L2's poweroff.
- **Launch → VMM exit, three devices**: as the boot launch, with the `passthrough` scenario's
  nvme, bochs-display and ivshmem (8 GiB BAR) passed through, each behind its own root port;
  L2's /init checks the nvme is on its bus and powers off. Goal: at most 0.2 of QEMU's (and at
  most 0.5 of QEMU's with no device).
- **Kernel cache**: Strait's decompressed kernels live in `$XDG_CACHE_HOME/strait`, here on L1's
  own tmpfs (as on a local disk). A cold launch starts with it emptied, so Strait decompresses
  the bzImage beside RAM setup (and fills it); a cached launch finds it. QEMU boots the same
  bzImage (SeaBIOS and its linuxboot ROM; the guest decompresses itself).
- **Launch series**: L2 with no device boots to /init and powers off, at each RAM size on 2 MiB
  and 1 GiB pages (1 GiB pages reserved on L1's command line; those launches run first, then the
  agent frees them and grows the 2 MiB pool per size), with prefault on and off (Strait
  `memory.prefault`, QEMU `prealloc`). **Launch → vCPUs started** is the arrival of Strait's
  `vcpus_started` timeline mark; "flat" means the largest size's median is at most 1.25 times
  the smallest's. QEMU logs no such point: its comparable numbers are launch → /init and → exit.
- **RAM setup bandwidth**: before the VMM launches of each size, the agent maps the same number
  of hugepages in L1 with `MAP_POPULATE` (one thread; the kernel zeroes each page), twice: the
  first pass also has L0 (TCG) allocate L1's pages, many times slower; the second, timed, sets
  the zeroing bandwidth of this machine, and the VMM launches run on the same warm pages. Strait's comes from a launch of its own (prefault on)
  whose guest waits at /init: RAM size over its timeline's `memory_ready` → `ram_prefaulted`,
  after which the agent kills it. Goal: at least half the populate's GiB/s ("within 2x").
- **L2 uptime at /init**: the `initcall` launches (no device, `quiet initcall_debug`): L2's own
  clock at its kernel's `Run /init as init process` line, which /init prints from the kernel
  log with every initcall of 10 ms or more and the boot's milestone lines (section "L2's own
  boot" below). Firmware, kernel loading and decompression come before L2's clock starts, so
  this is the platform's cost to the guest's own boot.
- **Launch → RAM + DMA maps ready**: QEMU runs with `-S` and a QMP socket; the agent connects,
  negotiates and asks `query-status`. In-band QMP commands are served by QEMU's main loop, which
  starts after machine init: RAM allocated (hugetlbfs with `prealloc=on` for 2 MiB pages),
  kernel loaded, vfio-pci realized with all guest RAM DMA-mapped. For Strait, until its
  `strait: timeline: dma_mapped` line arrives, which its RAM setup threads log once all guest
  RAM is faulted in and DMA-mapped (the vCPUs start before that). Both are then killed. A sample is valid only if
  the VMM had pinned at least 90% of guest RAM by then (VmLck, where VFIO's type1 driver accounts
  pinned pages); otherwise the VMM did not DMA-map RAM and the row says so. 4 KiB-page runs have
  L1's transparent hugepages set to `never` (both VMMs madvise THP). The per-GiB row takes the
  difference of the largest and smallest sizes' medians, cancelling fixed costs.
- **NVMe reads**: `iobench` (integration/src/bin/iobench.rs, static) in L2 reads /dev/nvme0n1 with
  O_DIRECT from N threads (queue depth N), sequential 64 KiB then random 4 KiB, each for a fixed
  time. Bytes and reads come from iobench; the duration is the time between its BEGIN and RESULT
  lines on L1's clock (a nested guest's clock is the less trustworthy one). MB/s = 10^6 bytes/s.
- **virtio-blk reads**: the same loads on /dev/vda, a virtio-blk disk over L1's own /dev/vda (a
  blank disk L0 gives L1), with no device passed through. Both VMMs open it with O_DIRECT:
  Strait `"direct": true` (requests on its worker threads), QEMU `cache=none,aio=io_uring`.
- **virtio-net**: L2 with no device passed through and one virtio-net interface on a tap in L1
  (`tap0`, 10.0.2.1/24; L2 takes 10.0.2.15/24), on vhost-net in both VMMs: QEMU
  `-netdev tap,vhost=on` with `virtio-net-pci` behind a PCIe root port, Strait `"net": [{"tap": ...}]`
  (vhost-net when /dev/vhost-net opens). The agent runs `netbench serve` (integration/src/bin/netbench.rs,
  static, std only) in L1 for the launch; L2 runs `netbench client`, which sends for the load's
  seconds on one TCP connection (L2 → L1), then receives on another while the peer sends for as
  long (L1 → L2). The stream is a fixed pseudo-random pattern keyed by offset: the receiver checks
  every byte, and the sender's and receiver's byte counts must agree (L2's RESULT line and the
  peer's line). MB/s = bytes over the time between netbench's BEGIN and RESULT lines on L1's clock.
  A sample counts only if vhost-net carried it: the VMM owns a vhost worker thread in L1 when L2 is
  ready, and Strait did not log `data path userspace`; L1 without /dev/vhost-net runs no net launch.
  KVM's counters are read at the same lines, per MB moved.
- **Reboot**: L2 boots with the NVMe controller, binds it, writes its launch's token into a
  block of the namespace, prints `TESTBED-BENCH rebooting` and runs `reboot -f` (the kernel
  resets through the ACPI reset register). QEMU runs without `-no-reboot`, so it resets the
  machine in the same process (`system_reset`: SeaBIOS and the linuxboot ROM again); Strait
  reboots in place (`lifecycle.on_reboot` `"restart"`). The time runs from that line to the next
  `TESTBED-INIT`; a sample counts only if the second boot found the token on the NVMe
  (`TESTBED-BENCH second-boot`, then it powers off). Strait's own row is its log line
  `reboot: boot 2 started N ms after the guest's request` (vCPUs stopped, devices reset, kernel
  reloaded, vCPUs running again).
- **BAR mapping**: L2 boots with the three devices (NVMe, bochs-display, ivshmem) passed through; `bartouch`
  (integration/src/bin/bartouch.rs, static) maps the first GiB of ivshmem's 8 GiB BAR2 through
  sysfs and reads one word per 4 KiB page, twice. Each pass is timed by `bartouch` on L2's
  clock (Strait hands the guest's console on in batches: a sub-second pass cannot be timed
  from the lines' arrival in L1). The first pass takes the faults that map the BAR
  (nested page faults to L1's KVM, which resolves them from the VMM's mapping of the BAR,
  filled by vfio-pci with 4 KiB pfns on Linux 6.1 and huge ones on 6.12); the second reads
  it mapped. L1 read the whole BAR once before the first launch (so L0's backing is in
  memory), and its transparent hugepages are `always` during these launches (6.12's huge
  pfnmap needs them). The L1 kernel row above says which kernel ran.
- **Exits**: Strait counts every KVM_RUN return it handles, per kind, and logs
  `strait: exits: total=...` when the VM stops (whole launch; the boot launch is the no-I/O
  baseline). For both VMMs the agent also reads KVM's debugfs counters (summed over live VMs,
  i.e. this one) when iobench prints its BEGIN and RESULT lines: `mmio_exits` counts MMIO exits
  to userspace, `io_exits` all port I/O exits (in-kernel ones included), `exits` all VM exits.
  BAR data accesses of a passed-through device should cost no exit (BARs mapped into the guest).
- **Resident memory**: when L2 prints `TESTBED-BENCH ready` (nvme bound, before the load), the sum
  of Rss over /proc/PID/smaps minus the guest-RAM mappings (those at least half the guest's RAM in
  size; hugetlb guest RAM is never in Rss anyway). Shared libraries count: they are the VMM's.
"#;

/// XML text must not contain markup characters.
fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where the chart's bars go.
struct Bars<'a> {
    label_w: f64,
    row_h: f64,
    /// The largest ratio drawn; longer bars are cut there and marked `+`.
    max: f64,
    /// Ratio to x coordinate.
    x: &'a dyn Fn(f64) -> f64,
}

/// One metric's label, bar (or n/a) and goal tick, at height `y`.
fn bar_row(m: &Metric, y: f64, g: &Bars<'_>) -> String {
    let (label_w, row_h, x) = (g.label_w, g.row_h, g.x);
    let mut s = String::new();
    let full = format!("{} ({})", m.name, m.unit);
    let mut label: String = full.chars().take(LABEL_CHARS).collect();
    if label.len() < full.len() {
        label.push('…');
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        label_w - 8.0,
        y + 16.0,
        escape_xml(&label)
    );
    let colour = match m.verdict() {
        Verdict::Pass => "#2e7d32",
        Verdict::Miss => "#c62828",
        _ => "#78909c",
    };
    match m.ratio() {
        Some(r) => {
            let _ = writeln!(
                s,
                "<rect x=\"{label_w:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                y + 4.0,
                x(r) - label_w,
                row_h - 8.0
            );
            let clipped = if r > g.max { "+" } else { "" };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\">{r:.2}{clipped}</text>",
                x(r) + 4.0,
                y + 16.0
            );
        }
        None => {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">n/a</text>",
                label_w + 4.0,
                y + 16.0
            );
        }
    }
    if let Some(Target::Ratio(goal)) = m.target {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
            x(goal),
            y + 1.0,
            y + row_h - 1.0
        );
    }
    s
}

/// Label characters that fit left of the bars at 12 px.
const LABEL_CHARS: usize = 68;

/// A horizontal bar chart of Strait / QEMU per metric that has a ratio or a
/// ratio goal, with the parity line at 1 and each goal marked.
pub fn svg(metrics: &[Metric], title: &str) -> String {
    let rows: Vec<&Metric> = metrics
        .iter()
        .filter(|m| m.ratio().is_some() || matches!(m.target, Some(Target::Ratio(_))))
        .collect();
    let (label_w, bar_w, row_h, top) = (480.0, 380.0, 24.0, 56.0);
    let width = label_w + bar_w + 80.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let max_ratio = rows
        .iter()
        .filter_map(|m| m.ratio())
        .fold(2.0f64, f64::max)
        .min(5.0);
    let x = |r: f64| label_w + bar_w * (r.min(max_ratio) / max_ratio);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n\
         <text x=\"10\" y=\"40\" fill=\"#555\">Strait / QEMU (medians). Bar colour: green pass, red miss, grey no goal; black tick: goal.</text>\n",
        escape_xml(title)
    );
    let geometry = Bars {
        label_w,
        row_h,
        max: max_ratio,
        x: &x,
    };
    for (i, m) in rows.iter().enumerate() {
        s.push_str(&bar_row(m, top + row_h * i as f64, &geometry));
    }
    let axis_y = top + row_h * rows.len() as f64;
    let _ = writeln!(s, "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>", x(1.0), top - 4.0, axis_y);
    let _ = writeln!(s, "<line x1=\"{label_w:.1}\" x2=\"{:.1}\" y1=\"{axis_y:.1}\" y2=\"{axis_y:.1}\" stroke=\"#333\"/>", label_w + bar_w);
    let mut tick = 0.0;
    while tick <= max_ratio + 1e-9 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{tick}</text>",
            x(tick),
            axis_y + 16.0
        );
        tick += if max_ratio > 2.5 { 1.0 } else { 0.5 };
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::analysis::tests::nvme_record;
    use crate::bench::metrics::{metrics, Side};
    use crate::scenario::HugePages;

    fn layout() -> Layout {
        Layout {
            memory_sizes: vec![512],
            page_kinds: vec![HugePages::Size2M],
            sweep: crate::bench::plan::Sweep::none(),
        }
    }

    fn rows() -> Vec<Metric> {
        metrics(
            &[nvme_record(VmmKind::Qemu), nvme_record(VmmKind::Strait)],
            &layout(),
        )
    }

    #[test]
    fn values_get_a_precision_that_suits_them() {
        assert_eq!(fmt_value(1234.5), "1234");
        assert_eq!(fmt_value(12.345), "12.3");
        assert_eq!(fmt_value(0.1234), "0.12");
    }

    #[test]
    fn markdown_has_goals_metrics_machine_and_method() {
        let machine = Machine {
            date: "2026-11-21".into(),
            command: "cargo run --release -p testbed -- bench --reps 3".into(),
            ..Default::default()
        };
        let records = [nvme_record(VmmKind::Qemu), nvme_record(VmmKind::Strait)];
        let md = markdown(&machine, &rows(), &records, &layout());
        assert!(md.starts_with("# Strait vs QEMU on the nested testbed, 2026-11-21\n"));
        assert!(
            md.contains("| NVMe random 4 KiB reads (IOPS) | 1.00 | ≥ 1 | **pass** |"),
            "{md}"
        );
        assert!(md.contains(
            "| VMM resident memory, guest RAM excluded (MiB) | 1.00 | ≤ 0.2 | **miss** |"
        ));
        assert!(md.contains("| NVMe sequential 64 KiB reads | 32.8 MB/s (n=1) | 32.8 MB/s (n=1) | 1.00 | ≥ 1 | **pass** |"));
        assert!(md.contains("Each cell: median unit (launches, min–max)."));
        assert!(md.contains("| nvme | 300 | 590 | 10 | 0 | 900 |"), "{md}");
        assert!(md.contains("## How each metric is measured"));
        assert!(md.contains("| Date (UTC) | 2026-11-21 |"));
    }

    #[test]
    fn unavailable_cells_carry_their_reason_without_breaking_the_table() {
        let mut m = rows().remove(0);
        m.strait = Side::unavailable("a | b\nc");
        assert_eq!(fmt_side(&m, VmmKind::Strait), "n/a (a \\| b c)");
    }

    #[test]
    fn cells_show_the_spread_and_failures() {
        let mut m = rows().remove(0);
        m.qemu = Side {
            values: vec![3.0, 1.0, 2.0],
            problems: vec!["x".into()],
            failures: 2,
        };
        assert_eq!(
            fmt_side(&m, VmmKind::Qemu),
            "2.00 s (n=3, 1.00–3.00; 2 failed)"
        );
    }

    #[test]
    fn net_launches_show_their_data_path_features_and_retransmits() {
        use crate::bench::analysis::tests::net_record;
        use crate::bench::plan::TimedLine;
        let mut r = net_record(VmmKind::Strait);
        let strait_line = "strait: virtio-net net[0] (tap0): MAC 52:54:00:12:34:56, data path vhost-net (in the host kernel)";
        for (ms, text) in [
            (900.0, strait_line),
            (13000.0, "TESTBED-BENCH tcp out=3271 retrans=1"),
        ] {
            r.lines.push(TimedLine {
                ms,
                text: text.into(),
            });
        }
        let t = net_table(&[r, nvme_record(VmmKind::Qemu)]);
        assert!(
            t.contains("| r1-x-strait | vhost-net (in the host kernel) | 1 | `1100010110011001` | 3271, 1 |"),
            "{t}"
        );
        assert_eq!(net_table(&[nvme_record(VmmKind::Qemu)]), "");
    }

    #[test]
    fn not_completed_launches_are_listed() {
        let mut r = nvme_record(VmmKind::Strait);
        r.timed_out = true;
        assert_eq!(
            not_run(&[r]),
            "\n## Launches that did not complete\n\n- `r1-x-strait`: killed at its time limit\n"
        );
    }

    #[test]
    fn chart_draws_bars_for_ratios_and_marks_goals() {
        let svg = svg(&rows(), "t & <co>");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("t &amp; &lt;co&gt;"));
        // Green bar for a passing goal, red for the resident-memory miss.
        assert!(svg.contains("fill=\"#2e7d32\""));
        assert!(svg.contains("fill=\"#c62828\""));
        // Launch has a goal but no samples: n/a, with its goal tick.
        assert!(svg.contains(">n/a</text>"));
        assert!(svg.matches("stroke=\"black\"").count() >= 6);
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn long_labels_are_cut_to_fit() {
        let mut m = rows().remove(0);
        m.name = "x".repeat(100);
        let svg = svg(&[m], "t");
        assert!(svg.contains(&format!("{}…</text>", "x".repeat(LABEL_CHARS))));
    }
}
