//! The initcall launch: where L2's own boot spends its time under each VMM.
//!
//! L2 boots with no device and `initcall_debug` ([`debug_cmdline`]); its /init prints,
//! between [`DMESG_BEGIN`] and [`DMESG_END`], the lines of its kernel log that matter
//! ([`dump_script`]): every initcall of [`DUMP_MIN_MS`] or more (`initcall NAME+0x0/0xN
//! returned R after N usecs`, the kernel's `initcall_debug` line) and the [`PHASES`]'
//! lines, among them the uptime at which the kernel ran /init (`Run /init as init
//! process`). The agent samples KVM's exit counters every [`SAMPLE_PERIOD_MS`] until
//! /init's marker arrives; the guest's clock is placed on L1's by that marker (it follows
//! `Run /init` within milliseconds), so each phase gets the exits it cost. [`compare`]
//! takes the medians per VMM over the launches and [`markdown`] writes the section of
//! `results.md`: every initcall of 50 ms or more under either VMM with both durations,
//! the uptime at /init, the phases' uptimes and their exits. Everything here is pure and
//! unit-tested.
//!
//! Why `quiet` stays: on the nested testbed every console byte is two exits to the L1
//! VMM (LSR poll, THR write) at about 0.5 ms each, some 100 ms of the guest's time per
//! line under both VMMs. Without `quiet` the first runs reached /init after 15.7 s
//! (Strait) with most of it spent printing, and QEMU's guest prints more lines (SeaBIOS's
//! e820 map, its extra ACPI tables), so the comparison measured line counts. The log is
//! read after /init instead, and only the lines above are printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bench::analysis::{median, select};
use crate::bench::plan::{LaunchKind, LaunchRecord, VmmKind, TICK_TRIGGER};

/// /init prints this before the lines of its kernel log...
pub const DMESG_BEGIN: &str = "TESTBED-DMESG begin";
/// ... and this after them.
pub const DMESG_END: &str = "TESTBED-DMESG end";
/// /init prints its CPU's flags (/proc/cpuinfo) after this.
pub const CPU_FLAGS: &str = "TESTBED-CPUFLAGS";
/// /init prints its current clock source after this.
pub const CLOCKSOURCE: &str = "TESTBED-CLOCKSOURCE";
/// Initcalls at least this long (ms, median) under either VMM are listed.
pub const SLOW_INITCALL_MS: f64 = 50.0;
/// /init prints initcalls of at least this long (ms; a power of ten, see [`dump_script`]).
pub const DUMP_MIN_MS: f64 = 10.0;
/// The kernel's line when it starts /init.
pub const RUN_INIT: &str = "Run /init as init process";
/// How often the agent samples KVM's counters during an initcall launch.
pub const SAMPLE_PERIOD_MS: u64 = 100;
/// KVM counters shown per phase.
const PHASE_COUNTERS: [&str; 5] = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits"];

/// A point of L2's boot, found by a substring of its kernel log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// What has happened once the line is printed.
    pub label: &'static str,
    /// A substring of the line.
    pub needle: &'static str,
}

/// The boot's milestones in the order Linux 6.1 prints them; each phase runs from the
/// previous milestone (the kernel's start, uptime 0, for the first) to its own.
pub const PHASES: &[Phase] = &[
    Phase {
        label: "TSC frequency known",
        needle: "tsc: Detected",
    },
    Phase {
        label: "direct map started",
        needle: "Using GB pages",
    },
    Phase {
        label: "ACPI tables found",
        needle: "ACPI: RSDP",
    },
    Phase {
        label: "TSC deadline timer checked",
        needle: "smpboot: Allowing",
    },
    Phase {
        label: "console registered",
        needle: "printk: console [ttyS0] enabled",
    },
    Phase {
        label: "BSP timer set up, CPU0 identified",
        needle: "smpboot: CPU0:",
    },
    Phase {
        label: "ACPI interpreter on",
        needle: "ACPI: Interpreter enabled",
    },
    Phase {
        label: "PCI root bridge found",
        needle: "PCI host bridge to bus",
    },
    Phase {
        label: "clocksource switched",
        needle: "clocksource: Switched to clocksource",
    },
    Phase {
        label: "initramfs unpacked",
        needle: "Freeing initrd memory",
    },
    Phase {
        label: "/init started",
        needle: RUN_INIT,
    },
];

/// L2's command line for the initcall launch: `base` with `quiet` (see the module
/// header), `initcall_debug`, and a log buffer large enough for every
/// `calling`/`initcall` line (the default 128 KiB would lose the early ones before
/// /init reads them).
pub fn debug_cmdline(base: &str) -> String {
    let mut words: Vec<&str> = base.split_whitespace().collect();
    if !words.contains(&"quiet") {
        words.push("quiet");
    }
    words.extend(["initcall_debug", "log_buf_len=4M"]);
    words.join(" ")
}

/// The shell lines of L2's /init that print the kernel log's initcalls of
/// [`DUMP_MIN_MS`] or more (a duration of at least 5 digits in µs) and the
/// [`PHASES`]' lines, between the dump markers; the begin marker carries the guest's
/// uptime when it was printed, which places L2's clock on L1's (off by the time the
/// line takes to print, some 30 ms here, alike for both VMMs).
pub fn dump_script() -> String {
    let digits = (DUMP_MIN_MS * 1000.0).log10().round() as usize + 1;
    let needles: Vec<String> = PHASES
        .iter()
        .map(|p| format!("-e '{}'", p.needle))
        .collect();
    format!(
        "echo \"{DMESG_BEGIN} uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         dmesg -s 4194304 | grep -E 'initcall .* after [0-9]{{{digits},}} usecs'\n\
         dmesg -s 4194304 | grep -F {}\n\
         echo \"{DMESG_END}\"\n\
         echo \"{CPU_FLAGS} $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)\"\n\
         echo \"{CLOCKSOURCE} $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\"\n",
        needles.join(" ")
    )
}

/// What one boot's kernel log says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootLog {
    /// Initcall (symbol with its size, `acpi_init+0x0/0x4c0`) -> ms; an initcall run
    /// twice counts twice.
    pub initcalls: BTreeMap<String, f64>,
    /// Phase label -> guest uptime (s) of its first line.
    pub phases: BTreeMap<&'static str, f64>,
}

impl BootLog {
    /// Uptime (s) at which the kernel started /init.
    pub fn uptime_at_init(&self) -> Option<f64> {
        let label = PHASES.iter().find(|p| p.needle == RUN_INIT)?.label;
        self.phases.get(label).copied()
    }
}

/// `[    1.234567] text` -> (1.234567, "text").
pub fn split_timestamp(line: &str) -> Option<(f64, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, text) = rest.split_once(']')?;
    Some((
        stamp.trim().parse().ok()?,
        text.strip_prefix(' ').unwrap_or(text),
    ))
}

/// `initcall acpi_init+0x0/0x4c0 returned 0 after 12345 usecs` -> ("acpi_init+0x0/0x4c0", 12.345).
pub fn initcall_duration(text: &str) -> Option<(&str, f64)> {
    let rest = text.strip_prefix("initcall ")?;
    let (symbol, rest) = rest.split_once(" returned ")?;
    let usecs = rest.split_once(" after ")?.1.strip_suffix(" usecs")?;
    Some((symbol, usecs.trim().parse::<f64>().ok()? / 1000.0))
}

/// The symbol's name without its offset and size (`acpi_init`).
pub fn short_name(symbol: &str) -> &str {
    symbol.split('+').next().unwrap_or(symbol)
}

/// Parses kernel log lines (`[uptime] text`, as `dmesg` prints them).
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> BootLog {
    let mut log = BootLog::default();
    for (uptime, text) in lines.into_iter().filter_map(split_timestamp) {
        if let Some((symbol, ms)) = initcall_duration(text) {
            *log.initcalls.entry(symbol.to_string()).or_default() += ms;
        }
        for p in PHASES.iter().filter(|p| text.contains(p.needle)) {
            log.phases.entry(p.label).or_insert(uptime);
        }
    }
    log
}

/// What /init printed of its kernel log: the lines between the dump markers, and the
/// begin marker's L1 arrival (ms) with the guest uptime (s) it carries
/// (`TESTBED-DMESG begin uptime=12.34`).
type Dump<'a> = (Vec<&'a str>, Option<(f64, f64)>);

/// The launch's [`Dump`], if /init got to the end of it.
fn dump(record: &LaunchRecord) -> Option<Dump<'_>> {
    let lines = &record.lines;
    let begin = lines.iter().position(|l| l.text.contains(DMESG_BEGIN))?;
    let end = begin
        + lines[begin..]
            .iter()
            .position(|l| l.text.contains(DMESG_END))?;
    let clock = lines[begin]
        .text
        .split("uptime=")
        .nth(1)
        .and_then(|u| u.trim().parse::<f64>().ok())
        .map(|uptime| (lines[begin].ms, uptime));
    let texts = lines[begin + 1..end]
        .iter()
        .map(|l| l.text.as_str())
        .collect();
    Some((texts, clock))
}

/// The kernel log /init printed in a launch's output, if it got to the end of it.
pub fn boot_log(record: &LaunchRecord) -> Option<BootLog> {
    dump(record).map(|(lines, _)| parse(lines))
}

/// The uptime (s) at which L2's kernel started /init, from the launch's dumped log.
pub fn uptime_at_init(record: &LaunchRecord) -> Result<f64, String> {
    if let Some(why) = &record.not_run {
        return Err(why.clone());
    }
    boot_log(record)
        .ok_or_else(|| "L2's /init did not print its kernel log".to_string())?
        .uptime_at_init()
        .ok_or_else(|| format!("no `{RUN_INIT}` line in L2's kernel log"))
}

/// One initcall under both VMMs (medians over the launches, ms; a launch that did not
/// print it ran it in under [`DUMP_MIN_MS`] and counts as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct InitcallRow {
    /// The symbol with its size.
    pub symbol: String,
    /// QEMU's median.
    pub qemu_ms: Option<f64>,
    /// Strait's median.
    pub strait_ms: Option<f64>,
}

impl InitcallRow {
    /// The larger median (0 when neither has one).
    pub fn slowest_ms(&self) -> f64 {
        self.qemu_ms
            .unwrap_or(0.0)
            .max(self.strait_ms.unwrap_or(0.0))
    }

    /// Strait minus QEMU, when both have launches.
    pub fn difference_ms(&self) -> Option<f64> {
        Some(self.strait_ms? - self.qemu_ms?)
    }
}

/// One phase under both VMMs (QEMU, Strait).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseRow {
    /// The phase's label.
    pub label: &'static str,
    /// Median guest uptime (s) at its line.
    pub uptime: [Option<f64>; 2],
    /// Median KVM counter deltas from the previous phase's line (the kernel's start for
    /// the first) to its own.
    pub exits: [BTreeMap<String, f64>; 2],
}

/// The comparison of both VMMs' boots.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Launches with a complete kernel log, QEMU then Strait.
    pub launches: [usize; 2],
    /// Every initcall of at least [`SLOW_INITCALL_MS`] under either, slowest first.
    pub slow: Vec<InitcallRow>,
    /// Every phase.
    pub phases: Vec<PhaseRow>,
    /// CPU flags only one VMM's guest has: (only under QEMU, only under Strait), from
    /// each one's first launch that printed them.
    pub flag_differences: Option<(Vec<String>, Vec<String>)>,
    /// The clock sources the guests used (first launch of each), QEMU then Strait.
    pub clocksources: [Option<String>; 2],
}

/// The rest of the first line of `record`'s output that starts with `marker`.
fn marker_value<'a>(record: &'a LaunchRecord, marker: &str) -> Option<&'a str> {
    record
        .lines
        .iter()
        .find_map(|l| l.text.trim_start().strip_prefix(marker))
        .map(str::trim)
}

/// The flags one VMM's guests printed (first launch that did).
fn cpu_flags(records: &[&LaunchRecord]) -> Option<std::collections::BTreeSet<String>> {
    let flags = records.iter().find_map(|r| marker_value(r, CPU_FLAGS))?;
    Some(flags.split_whitespace().map(str::to_string).collect())
}

impl Comparison {
    /// Median uptime at /init, QEMU then Strait.
    pub fn uptime_at_init(&self) -> [Option<f64>; 2] {
        self.phases
            .iter()
            .find(|p| {
                PHASES
                    .iter()
                    .any(|q| q.label == p.label && q.needle == RUN_INIT)
            })
            .map_or([None, None], |p| p.uptime)
    }
}

fn medians_by_key<K: Ord + Clone>(maps: &[BTreeMap<K, f64>]) -> BTreeMap<K, f64> {
    let mut all: BTreeMap<K, Vec<f64>> = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            all.entry(k.clone()).or_default().push(*v);
        }
    }
    all.into_iter()
        .filter_map(|(k, v)| Some((k, median(&v)?)))
        .collect()
}

/// `counter` at L1 time `ms`, interpolated between the two ticks around it.
fn counter_at(ticks: &[(f64, &BTreeMap<String, u64>)], counter: &str, ms: f64) -> Option<f64> {
    let after = ticks.iter().position(|(t, _)| *t >= ms)?;
    let (t1, c1) = ticks[after];
    let v1 = *c1.get(counter)? as f64;
    if after == 0 {
        return (t1 == ms).then_some(v1);
    }
    let (t0, c0) = ticks[after - 1];
    let v0 = *c0.get(counter)? as f64;
    Some(v0 + (v1 - v0) * (ms - t0) / (t1 - t0))
}

/// KVM's exits in each phase of one launch: the guest's clock is placed on L1's by the
/// dump's begin marker, and the periodic samples are read at each phase's ends.
fn phase_exits(record: &LaunchRecord) -> BTreeMap<&'static str, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let Some((lines, Some((arrival_ms, uptime)))) = dump(record) else {
        return out;
    };
    let log = parse(lines);
    let zero_ms = arrival_ms - uptime * 1000.0;
    let ticks: Vec<(f64, &BTreeMap<String, u64>)> = record
        .samples
        .iter()
        .filter(|s| s.trigger == TICK_TRIGGER)
        .map(|s| (s.ms, &s.kvm))
        .collect();
    let mut from = 0.0;
    for p in PHASES {
        let Some(&to) = log.phases.get(p.label) else {
            continue;
        };
        let (a, b) = (zero_ms + from * 1000.0, zero_ms + to * 1000.0);
        let deltas = PHASE_COUNTERS
            .iter()
            .filter_map(|c| {
                Some((
                    c.to_string(),
                    counter_at(&ticks, c, b)? - counter_at(&ticks, c, a)?,
                ))
            })
            .collect();
        out.insert(p.label, deltas);
        from = to;
    }
    out
}

/// One VMM's launches: their kernel logs and exits per phase.
struct SideData {
    logs: Vec<BootLog>,
    exits: Vec<BTreeMap<&'static str, BTreeMap<String, f64>>>,
}

impl SideData {
    fn of(records: &[LaunchRecord], vmm: VmmKind) -> Self {
        let launches = select(records, LaunchKind::Initcall, None, vmm);
        SideData {
            logs: launches.iter().filter_map(|r| boot_log(r)).collect(),
            exits: launches.iter().map(|r| phase_exits(r)).collect(),
        }
    }

    /// Median per initcall, 0 for a launch that did not print it.
    fn initcalls(&self, symbols: &std::collections::BTreeSet<String>) -> BTreeMap<String, f64> {
        symbols
            .iter()
            .filter_map(|sym| {
                let v: Vec<f64> = self
                    .logs
                    .iter()
                    .map(|l| l.initcalls.get(sym).copied().unwrap_or(0.0))
                    .collect();
                Some((sym.clone(), median(&v)?))
            })
            .collect()
    }

    fn phase(&self, label: &'static str) -> (Option<f64>, BTreeMap<String, f64>) {
        let v: Vec<f64> = self
            .logs
            .iter()
            .filter_map(|l| l.phases.get(label).copied())
            .collect();
        let maps: Vec<BTreeMap<String, f64>> = self
            .exits
            .iter()
            .filter_map(|e| e.get(label).cloned())
            .collect();
        (median(&v), medians_by_key(&maps))
    }
}

/// Medians per VMM over the initcall launches.
pub fn compare(records: &[LaunchRecord]) -> Comparison {
    let sides = [
        SideData::of(records, VmmKind::Qemu),
        SideData::of(records, VmmKind::Strait),
    ];
    let symbols: std::collections::BTreeSet<String> = sides
        .iter()
        .flat_map(|s| s.logs.iter().flat_map(|l| l.initcalls.keys().cloned()))
        .collect();
    let [q, st] = [sides[0].initcalls(&symbols), sides[1].initcalls(&symbols)];
    let mut slow: Vec<InitcallRow> = symbols
        .into_iter()
        .map(|symbol| InitcallRow {
            qemu_ms: q.get(&symbol).copied(),
            strait_ms: st.get(&symbol).copied(),
            symbol,
        })
        .filter(|r| r.slowest_ms() >= SLOW_INITCALL_MS)
        .collect();
    let slowest = InitcallRow::slowest_ms;
    slow.sort_by(|a, b| slowest(b).total_cmp(&slowest(a)));
    let phases = PHASES
        .iter()
        .map(|p| {
            let [(uq, eq), (us, es)] = [sides[0].phase(p.label), sides[1].phase(p.label)];
            PhaseRow {
                label: p.label,
                uptime: [uq, us],
                exits: [eq, es],
            }
        })
        .collect();
    let select_vmm = |vmm| select(records, LaunchKind::Initcall, None, vmm);
    let (q, st) = (select_vmm(VmmKind::Qemu), select_vmm(VmmKind::Strait));
    let flag_differences = cpu_flags(&q).zip(cpu_flags(&st)).map(|(fq, fs)| {
        (
            fq.difference(&fs).cloned().collect(),
            fs.difference(&fq).cloned().collect(),
        )
    });
    let clocksource = |rs: &[&LaunchRecord]| {
        rs.iter()
            .find_map(|r| marker_value(r, CLOCKSOURCE))
            .map(str::to_string)
    };
    Comparison {
        launches: [sides[0].logs.len(), sides[1].logs.len()],
        slow,
        phases,
        flag_differences,
        clocksources: [clocksource(&q), clocksource(&st)],
    }
}

fn cell(v: Option<f64>, precision: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.precision$}"))
}

/// An initcall's median, `< 10` when under the dump's threshold.
fn ms_cell(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms < DUMP_MIN_MS => format!("< {DUMP_MIN_MS:.0}"),
        v => cell(v, 1),
    }
}

fn exits_cell(counters: &BTreeMap<String, f64>) -> String {
    if counters.is_empty() {
        return "n/a".into();
    }
    let parts: Vec<String> = PHASE_COUNTERS
        .iter()
        .filter_map(|c| {
            let name = c.strip_suffix("_exits").unwrap_or("all");
            Some(format!("{name} {:.0}", counters.get(*c)?))
        })
        .collect();
    parts.join(", ")
}

/// The `results.md` section.
pub fn markdown(c: &Comparison) -> String {
    let mut s = String::from("\n## L2's own boot, initcall by initcall (medians)\n\n");
    let _ = writeln!(
        s,
        "The `initcall` launches: L2 with no device, 1 vCPU, `quiet initcall_debug`; its /init \
         prints the initcalls of {DUMP_MIN_MS:.0} ms or more and the phase lines from its kernel \
         log. {} QEMU and {} Strait launches with a complete log. Uptimes are L2's own clock \
         (firmware and kernel decompression come before 0).\n",
        c.launches[0], c.launches[1]
    );
    let [q, st] = c.uptime_at_init();
    let diff = match (q, st) {
        (Some(q), Some(st)) => format!("{:+.3}", st - q),
        _ => "n/a".into(),
    };
    let _ = writeln!(
        s,
        "| L2 uptime at /init (s) | QEMU | Strait | Strait − QEMU |\n|---|---|---|---|\n| {RUN_INIT} | {} | {} | {diff} |\n",
        cell(q, 3),
        cell(st, 3)
    );
    let none = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(" ")
        }
    };
    let _ = writeln!(
        s,
        "Clock source: QEMU {}, Strait {}. CPU flags (/proc/cpuinfo) only under QEMU: {}; only under Strait: {}.\n",
        c.clocksources[0].as_deref().unwrap_or("n/a"),
        c.clocksources[1].as_deref().unwrap_or("n/a"),
        c.flag_differences.as_ref().map_or("n/a".into(), |(q, _)| none(q)),
        c.flag_differences.as_ref().map_or("n/a".into(), |(_, st)| none(st)),
    );
    let _ = writeln!(
        s,
        "Initcalls of {SLOW_INITCALL_MS:.0} ms or more under either VMM:\n\n\
         | Initcall | QEMU (ms) | Strait (ms) | Strait − QEMU (ms) |\n|---|---|---|---|"
    );
    for r in &c.slow {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            short_name(&r.symbol),
            ms_cell(r.qemu_ms),
            ms_cell(r.strait_ms),
            r.difference_ms()
                .map_or("n/a".into(), |d| format!("{d:+.1}"))
        );
    }
    if c.slow.is_empty() {
        s.push_str("| (none) | | | |\n");
    }
    let _ = writeln!(
        s,
        "\nBoot phases: L2's uptime at each phase's line, and KVM's exit counters (L1's \
         debugfs, sampled every {SAMPLE_PERIOD_MS} ms, one VM at a time) from the previous \
         phase's line (the kernel's start for the first) to it; L2's clock is placed on L1's \
         by the uptime /init prints with its dump.\n\n\
         | Phase | QEMU uptime (s) | Strait uptime (s) | QEMU exits | Strait exits |\n\
         |---|---|---|---|---|"
    );
    for p in &c.phases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            p.label,
            cell(p.uptime[0], 3),
            cell(p.uptime[1], 3),
            exits_cell(&p.exits[0]),
            exits_cell(&p.exits[1])
        );
    }
    s
}

/// Reads the initcall table back from [`markdown`]'s output: (name, QEMU ms, Strait
/// ms; `None` for n/a or under the dump's threshold), for scripts comparing result sets.
pub fn parse_table(markdown: &str) -> Vec<(String, Option<f64>, Option<f64>)> {
    let Some(start) = markdown.find("| Initcall | QEMU (ms) |") else {
        return Vec::new();
    };
    markdown[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let (name, q, s) = (cells.first()?, cells.get(1)?, cells.get(2)?);
            (*name != "(none)").then(|| (name.to_string(), q.parse().ok(), s.parse().ok()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::analysis::tests::record;
    use crate::bench::plan::Sample;

    const DMESG: &[&str] = &[
        "[    0.002000] ACPI: RSDP 0x00000000000F5A10 000014 (v00 BOCHS )",
        "[    0.090000] printk: console [ttyS0] enabled",
        "[    0.350000] ACPI: Interpreter enabled",
        "[    0.400000] PCI host bridge to bus 0000:00",
        "[    0.500000] initcall acpi_init+0x0/0x4c0 returned 0 after 200000 usecs",
        "[    0.600000] initcall chr_dev_init+0x0/0xb0 returned 0 after 51000 usecs",
        "[    0.610000] initcall init+0x0/0x10 returned 0 after 10000 usecs",
        "[    0.620000] initcall init+0x0/0x10 returned 0 after 30000 usecs",
        "[    1.234567] Run /init as init process",
    ];

    #[test]
    fn timestamps_and_initcall_lines_are_split() {
        assert_eq!(
            split_timestamp("[    1.234567] Run /init as init process"),
            Some((1.234567, "Run /init as init process"))
        );
        assert_eq!(split_timestamp("TESTBED-INIT"), None);
        assert_eq!(
            initcall_duration("initcall acpi_init+0x0/0x4c0 returned 0 after 200000 usecs"),
            Some(("acpi_init+0x0/0x4c0", 200.0))
        );
        assert_eq!(initcall_duration("calling  acpi_init+0x0/0x4c0 @ 1"), None);
        assert_eq!(short_name("acpi_init+0x0/0x4c0"), "acpi_init");
    }

    #[test]
    fn a_kernel_log_gives_initcalls_phases_and_the_uptime_at_init() {
        let log = parse(DMESG.iter().copied());
        assert_eq!(log.initcalls["acpi_init+0x0/0x4c0"], 200.0);
        assert_eq!(log.initcalls["init+0x0/0x10"], 40.0);
        assert_eq!(log.phases["ACPI tables found"], 0.002);
        assert_eq!(log.phases["PCI root bridge found"], 0.4);
        assert_eq!(log.uptime_at_init(), Some(1.234567));
    }

    #[test]
    fn the_debug_command_line_keeps_quiet() {
        assert_eq!(
            debug_cmdline("console=ttyS0 quiet panic=-1"),
            "console=ttyS0 quiet panic=-1 initcall_debug log_buf_len=4M"
        );
        assert_eq!(
            debug_cmdline("console=ttyS0"),
            "console=ttyS0 quiet initcall_debug log_buf_len=4M"
        );
    }

    #[test]
    fn the_dump_prints_initcalls_of_10_ms_and_every_phase_line() {
        let script = dump_script();
        assert!(
            script.contains("grep -E 'initcall .* after [0-9]{5,} usecs'"),
            "{script}"
        );
        assert!(script.contains("-e 'printk: console [ttyS0] enabled'"));
        assert!(script.contains("-e 'Run /init as init process'"));
        assert!(script.starts_with("echo \"TESTBED-DMESG begin"));
        assert!(script.contains("echo \"TESTBED-DMESG end\"\n"));
        assert!(script.contains("echo \"TESTBED-CPUFLAGS $(grep -m1 '^flags' /proc/cpuinfo"));
    }

    /// A launch whose dump (uptimes x `scale`) begins at L1 ms 3000 = uptime 2.0 s, so
    /// the kernel started at L1 ms 1000; `exits` rise by `rate` per ms from 1000 at L1 0.
    fn launch(vmm: VmmKind, scale: f64, rate: u64) -> LaunchRecord {
        let mut lines: Vec<(f64, String)> = vec![(2900.0, "TESTBED-INIT".into())];
        lines.push((3000.0, format!("{DMESG_BEGIN} uptime=2.00")));
        for l in DMESG {
            let (t, text) = split_timestamp(l).unwrap_or_default();
            lines.push((3100.0, format!("[{:12.6}] {text}", t * scale)));
        }
        lines.push((3200.0, DMESG_END.into()));
        let borrowed: Vec<(f64, &str)> = lines.iter().map(|(ms, t)| (*ms, t.as_str())).collect();
        let mut r = record(LaunchKind::Initcall, vmm, &borrowed);
        r.samples = (0..30)
            .map(|i| {
                let ms = 100.0 * f64::from(i);
                let exits = 1000 + rate * 100 * u64::from(i as u32);
                Sample {
                    trigger: TICK_TRIGGER.into(),
                    ms,
                    process: None,
                    process_error: None,
                    kvm: [
                        ("exits".to_string(), exits),
                        ("io_exits".to_string(), exits / 2),
                    ]
                    .into(),
                }
            })
            .collect();
        r
    }

    #[test]
    fn comparison_lists_slow_initcalls_of_either_vmm_and_the_uptime_at_init() {
        let mut records = vec![
            launch(VmmKind::Qemu, 1.0, 1),
            launch(VmmKind::Strait, 1.0, 1),
        ];
        // Strait's chr_dev_init at 60 ms instead of 51: still listed, difference +9; QEMU
        // did not print init at all (under 10 ms).
        records[1].lines[7].text =
            "[    0.600000] initcall chr_dev_init+0x0/0xb0 returned 0 after 60000 usecs".into();
        records[0]
            .lines
            .retain(|l| !l.text.contains("init+0x0/0x10"));
        records[1].lines[8].text =
            "[    0.610000] initcall init+0x0/0x10 returned 0 after 70000 usecs".into();
        let c = compare(&records);
        assert_eq!(c.launches, [1, 1]);
        let names: Vec<&str> = c.slow.iter().map(|r| short_name(&r.symbol)).collect();
        assert_eq!(names, ["acpi_init", "init", "chr_dev_init"]);
        assert_eq!(c.slow[1].qemu_ms, Some(0.0));
        assert_eq!(c.slow[1].strait_ms, Some(100.0));
        assert_eq!(c.slow[2].difference_ms(), Some(9.0));
        assert_eq!(c.uptime_at_init(), [Some(1.234567), Some(1.234567)]);
    }

    #[test]
    fn exits_are_read_at_each_phase_s_ends_on_l1_s_clock() {
        let c = compare(&[launch(VmmKind::Strait, 1.0, 2)]);
        let row = |label: &str| c.phases.iter().find(|p| p.label == label).cloned();
        // The kernel started at L1 1000 ms: ACPI tables at 1002 ms, 2 ms at 2 exits/ms
        // (no TSC or direct-map line in this log: the phase runs from the start).
        let acpi = row("ACPI tables found").unwrap_or_else(|| panic!("no row"));
        assert!((acpi.exits[1]["exits"] - 4.0).abs() < 1e-6, "{acpi:?}");
        // /init at 1234.567 ms, the previous phase (PCI) at 1400 ms... in guest order:
        // PCI root bridge 0.4 s -> /init 1.234567 s = 834.567 ms.
        let init = row("/init started").unwrap_or_else(|| panic!("no row"));
        assert!((init.exits[1]["exits"] - 1669.134).abs() < 1e-3, "{init:?}");
        assert!((init.exits[1]["io_exits"] - 834.567).abs() < 1.0);
        assert_eq!(init.exits[0], BTreeMap::new());
        assert_eq!(
            row("TSC deadline timer checked").map(|r| r.uptime),
            Some([None, None])
        );
    }

    #[test]
    fn cpu_flags_and_clock_sources_are_compared() {
        let mut q = launch(VmmKind::Qemu, 1.0, 1);
        let mut st = launch(VmmKind::Strait, 1.0, 1);
        for (r, flags, cs) in [
            (&mut q, "fpu tsc x2apic arat", "kvm-clock"),
            (&mut st, "fpu tsc x2apic hypervisor", "tsc"),
        ] {
            r.lines.push(crate::bench::plan::TimedLine {
                ms: 4000.0,
                text: format!("{CPU_FLAGS}  {flags}"),
            });
            r.lines.push(crate::bench::plan::TimedLine {
                ms: 4000.0,
                text: format!("{CLOCKSOURCE} {cs}"),
            });
        }
        let c = compare(&[q, st]);
        assert_eq!(
            c.flag_differences,
            Some((vec!["arat".to_string()], vec!["hypervisor".to_string()]))
        );
        assert_eq!(
            c.clocksources,
            [Some("kvm-clock".into()), Some("tsc".into())]
        );
        assert!(markdown(&c).contains("Clock source: QEMU kvm-clock, Strait tsc. CPU flags (/proc/cpuinfo) only under QEMU: arat; only under Strait: hypervisor."));
    }

    #[test]
    fn a_log_cut_short_counts_as_no_launch() {
        let mut r = launch(VmmKind::Qemu, 1.0, 1);
        r.lines.retain(|l| !l.text.contains(DMESG_END));
        assert_eq!(boot_log(&r), None);
        assert!(uptime_at_init(&r).is_err());
        assert_eq!(compare(&[r]).launches, [0, 0]);
    }

    #[test]
    fn the_markdown_table_reads_back() {
        let records = vec![
            launch(VmmKind::Qemu, 1.0, 1),
            launch(VmmKind::Strait, 2.0, 1),
        ];
        let md = markdown(&compare(&records));
        assert!(
            md.contains("| Run /init as init process | 1.235 | 2.469 | +1.235 |"),
            "{md}"
        );
        let rows = parse_table(&md);
        assert_eq!(
            rows,
            [
                ("acpi_init".to_string(), Some(200.0), Some(200.0)),
                ("chr_dev_init".to_string(), Some(51.0), Some(51.0)),
            ]
        );
    }
}
