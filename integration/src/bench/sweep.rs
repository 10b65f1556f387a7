//! What the benchmark's launch series measured: launch -> Strait's vCPU start,
//! the RAM setup's bandwidth (Strait's and the plain populate's), and the
//! series' tables for results.md. The series' plan is in [`super::plan`]
//! ([`Sweep`], `order`); its goal rows are in [`super::metrics`].
//!
//! Next to each size, the agent faults the same pages in itself (one thread,
//! `MAP_POPULATE`, twice: the first pass also makes L0 back them, the second is
//! timed), which sets the zeroing bandwidth Strait's RAM setup is held to;
//! Strait's is taken from a launch of its own whose guest waits at /init until
//! the agent stops Strait at its `ram_prefaulted` mark (a guest that powers off
//! first would cut the setup short). Pure.

use std::fmt::Write as _;

use crate::bench::analysis::{
    first_ms, key_values, launch_problem, launch_to_exit, launch_to_init, median, ratio, select,
    strait_timeline,
};
use crate::bench::plan::{
    pages_label, LaunchKind, LaunchRecord, Sweep, VmmKind, PAGE_KINDS, POPULATE_MARK,
    STRAIT_RAM_MARK,
};
use crate::scenario::HugePages;

/// "Flat": launch -> vCPUs started at the largest size at most this times the smallest's.
pub const FLAT_LIMIT: f64 = 1.25;
/// Strait's RAM setup at least this share of the plain populate's bandwidth ("within 2x").
pub const SETUP_SHARE: f64 = 0.5;
/// Launch -> Strait's `vcpus_started` mark, in seconds (arrival on L1's clock). Only
/// launches that went on to /init count.
pub fn launch_to_vcpus(r: &LaunchRecord) -> Result<f64, String> {
    launch_to_init(r)?;
    let (_, arrived) = strait_timeline(r)
        .get("vcpus_started")
        .copied()
        .ok_or("no `vcpus_started` timeline mark")?;
    Ok(arrived / 1000.0)
}

/// GiB/s of faulting RAM in: Strait's from its own timeline in a RAM setup launch
/// (`memory_ready`, RAM mapped and registered, to `ram_prefaulted`: the background
/// threads start a little after the first, so this slightly understates them); the
/// populate's from its line.
pub fn setup_gibps(r: &LaunchRecord) -> Result<f64, String> {
    let gib = f64::from(r.key.memory_mib) / 1024.0;
    let ms = match r.key.vmm {
        VmmKind::Populate => populate_ms(r)?,
        VmmKind::Strait => {
            if let Some(p) = launch_problem(r) {
                return Err(p);
            }
            let t = strait_timeline(r);
            let start = t.get("memory_ready").ok_or("no `memory_ready` mark")?.0;
            let done = t
                .get(STRAIT_RAM_MARK)
                .ok_or_else(|| format!("no `{STRAIT_RAM_MARK}` mark"))?
                .0;
            done - start
        }
        VmmKind::Qemu => return Err("QEMU logs no RAM setup time".into()),
    };
    if ms <= 0.0 {
        return Err(format!("RAM setup took {ms} ms"));
    }
    Ok(gib / (ms / 1000.0))
}

/// The populate's own time, ms.
fn populate_ms(r: &LaunchRecord) -> Result<f64, String> {
    if let Some(why) = &r.not_run {
        return Err(why.clone());
    }
    first_ms(r, POPULATE_MARK).ok_or("no populate line")?;
    r.lines
        .iter()
        .find(|l| l.text.contains(POPULATE_MARK))
        .and_then(|l| key_values(&l.text).get("ms")?.parse().ok())
        .ok_or_else(|| "unreadable populate line".into())
}

/// Records of the RAM series at one point, per VMM.
pub(crate) fn at(
    records: &[LaunchRecord],
    mib: u32,
    pages: HugePages,
    prefault: bool,
    vmm: VmmKind,
) -> Vec<&LaunchRecord> {
    select(records, LaunchKind::Ram, Some((mib, pages)), vmm)
        .into_iter()
        .filter(|r| r.key.prefault == prefault)
        .collect()
}

/// The RAM setup launches at one size: Strait's own and the populate.
pub(crate) fn setup_at(
    records: &[LaunchRecord],
    mib: u32,
    pages: HugePages,
    vmm: VmmKind,
) -> Vec<&LaunchRecord> {
    match vmm {
        VmmKind::Strait => select(records, LaunchKind::RamSetup, Some((mib, pages)), vmm),
        _ => at(records, mib, pages, true, vmm),
    }
}

/// The median of `f` over the records it measured.
fn med(records: &[&LaunchRecord], f: fn(&LaunchRecord) -> Result<f64, String>) -> Option<f64> {
    let values: Vec<f64> = records.iter().filter_map(|r| f(r).ok()).collect();
    median(&values)
}

/// A median cell: seconds (or GiB/s) with two decimals, or `n/a`.
fn cell(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}"))
}

fn ratio_cell(a: Option<f64>, b: Option<f64>) -> String {
    ratio(a, b).map_or("n/a".into(), |r| format!("{r:.2}"))
}

/// The series tables for results.md (empty without RAM launches).
pub fn tables(records: &[LaunchRecord], sweep: &Sweep) -> String {
    if select(records, LaunchKind::Ram, None, VmmKind::Strait).is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Launch series: RAM size, page size, prefault (no device)\n\n\
         Medians in seconds from spawn on L1's clock; L2 powers off at /init. Prefault is \
         Strait's `memory.prefault` (its threads fault RAM in behind the running vCPUs) and \
         QEMU's `prealloc` (before the guest starts). QEMU logs no vCPU start.\n\n\
         | RAM | Pages | Prefault | Strait → vCPUs started | Strait → /init | QEMU → /init | ratio | Strait → exit | QEMU → exit | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for pages in PAGE_KINDS {
        for mib in sweep.sizes_on(pages) {
            for prefault in [true, false] {
                let sel = |vmm| at(records, mib, pages, prefault, vmm);
                let (q, st) = (sel(VmmKind::Qemu), sel(VmmKind::Strait));
                let (qi, si) = (med(&q, launch_to_init), med(&st, launch_to_init));
                let (qe, se) = (med(&q, launch_to_exit), med(&st, launch_to_exit));
                let _ = writeln!(
                    s,
                    "| {mib} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    pages_label(pages),
                    if prefault { "on" } else { "off" },
                    cell(med(&st, launch_to_vcpus)),
                    cell(si),
                    cell(qi),
                    ratio_cell(si, qi),
                    cell(se),
                    cell(qe),
                    ratio_cell(se, qe)
                );
            }
        }
    }
    s.push_str(&bandwidth_table(records, sweep));
    s
}

/// Strait's RAM setup against the plain populate, and QEMU's prealloc cost (its
/// /init with prealloc on minus off) as a bandwidth, per size.
fn bandwidth_table(records: &[LaunchRecord], sweep: &Sweep) -> String {
    let mut s = String::from(
        "\n## RAM setup against the zeroing bandwidth of this machine\n\n\
         GiB/s. Populate: the agent maps the same hugepages in L1 with `MAP_POPULATE`, one \
         thread, nothing else running. Strait: RAM size over its timeline's `memory_ready` → \
         `ram_prefaulted` (threads at nice 10 beside the booting guest). QEMU: RAM size over \
         the difference of its median launch → /init with prealloc on and off.\n\n\
         | RAM | Pages | Populate | Strait RAM setup | Strait / populate | QEMU prealloc |\n\
         |---|---|---|---|---|---|\n",
    );
    for pages in PAGE_KINDS {
        for mib in sweep.sizes_on(pages) {
            let pop = med(
                &setup_at(records, mib, pages, VmmKind::Populate),
                setup_gibps,
            );
            let strait = med(&setup_at(records, mib, pages, VmmKind::Strait), setup_gibps);
            let init = |prefault| {
                med(
                    &at(records, mib, pages, prefault, VmmKind::Qemu),
                    launch_to_init,
                )
            };
            let qemu = match (init(true), init(false)) {
                (Some(on), Some(off)) if on > off => {
                    format!("{:.2}", f64::from(mib) / 1024.0 / (on - off))
                }
                (Some(_), Some(_)) => "n/a (no slower with prealloc)".into(),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "| {mib} MiB | {} | {} | {} | {} | {qemu} |",
                pages_label(pages),
                cell(pop),
                cell(strait),
                ratio_cell(strait, pop)
            );
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::analysis::tests::record;
    use crate::bench::plan::TimedLine;

    pub(crate) fn sweep() -> Sweep {
        Sweep {
            sizes: vec![512, 2048],
            reps: 1,
        }
    }

    pub(crate) fn ram(vmm: VmmKind, mib: u32, lines: &[(f64, &str)]) -> LaunchRecord {
        let mut r = record(LaunchKind::Ram, vmm, lines);
        r.key.memory_mib = mib;
        r
    }

    pub(crate) fn strait_ram(mib: u32, vcpus_ms: f64, setup: (f64, f64)) -> LaunchRecord {
        ram(
            VmmKind::Strait,
            mib,
            &[
                (
                    40.0,
                    &format!("strait: timeline: memory_ready={:.1}ms", setup.0),
                ),
                (vcpus_ms, "strait: timeline: vcpus_started=300.0ms"),
                (
                    900.0,
                    &format!("strait: timeline: ram_prefaulted={:.1}ms", setup.1),
                ),
                (2000.0, "TESTBED-INIT"),
            ],
        )
    }

    /// A RAM setup launch stopped at `ram_prefaulted` (memory_ready, ram_prefaulted ms).
    pub(crate) fn setup_record(mib: u32, setup: (f64, f64)) -> LaunchRecord {
        let mut r = strait_ram(mib, 450.0, setup);
        r.key.kind = LaunchKind::RamSetup;
        r.lines.retain(|l| !l.text.contains("TESTBED-INIT"));
        r.stopped = true;
        r.exit_code = None;
        r.exit_signal = Some(9);
        r
    }

    #[test]
    fn vcpus_start_is_the_marks_arrival() {
        assert_eq!(
            launch_to_vcpus(&strait_ram(512, 450.0, (30.0, 530.0))),
            Ok(0.45)
        );
        let r = ram(VmmKind::Strait, 512, &[(2000.0, "TESTBED-INIT")]);
        assert!(launch_to_vcpus(&r).is_err());
    }

    #[test]
    fn setup_bandwidth_from_strait_timeline_and_the_populate_line() {
        // 2 GiB in 1000 ms, stopped before the guest reached /init.
        assert_eq!(setup_gibps(&setup_record(2048, (30.0, 1030.0))), Ok(2.0));
        let pop = ram(
            VmmKind::Populate,
            1024,
            &[(300.0, "TESTBED-POPULATE pages=2M mib=1024 ms=250.0")],
        );
        assert_eq!(setup_gibps(&pop), Ok(4.0));
        let mut cut = setup_record(512, (20.0, 40.0));
        cut.lines.retain(|l| !l.text.contains("ram_prefaulted"));
        assert!(setup_gibps(&cut).unwrap_err().contains("ram_prefaulted"));
        cut.timed_out = true;
        assert_eq!(setup_gibps(&cut), Err("killed at its time limit".into()));
        assert!(setup_gibps(&ram(VmmKind::Qemu, 512, &[])).is_err());
    }

    #[test]
    fn tables_list_every_point_and_qemu_prealloc_bandwidth() {
        let on = ram(VmmKind::Qemu, 2048, &[(6000.0, "TESTBED-INIT")]);
        let mut off = ram(VmmKind::Qemu, 2048, &[(4000.0, "TESTBED-INIT")]);
        off.key.prefault = false;
        let mut strait = strait_ram(2048, 450.0, (30.0, 1030.0));
        strait.lines.push(TimedLine {
            ms: 2500.0,
            text: "strait: timeline: torn_down=2400.0ms".into(),
        });
        let setup = setup_record(2048, (30.0, 1030.0));
        let t = tables(&[on, off, strait, setup], &sweep());
        assert!(
            t.contains(
                "| 2048 MiB | 2 MiB pages | on | 0.45 | 2.00 | 6.00 | 0.33 | 9.00 | 9.00 | 1.00 |"
            ),
            "{t}"
        );
        // 2 GiB over (6 - 4) s.
        assert!(
            t.contains("| 2048 MiB | 2 MiB pages | n/a | 2.00 | n/a | 1.00 |"),
            "{t}"
        );
        assert!(tables(&[], &sweep()).is_empty());
    }
}
