//! The benchmark's rows: each metric with both VMMs' samples, the ratio
//! Strait / QEMU of their medians, and the verdict against the project's goals
//! (launch to /init <= 0.5 of QEMU's; RAM + DMA setup <= 0.5 at 2 GiB on 2 MiB
//! pages; NVMe, virtio-blk and virtio-net (both ways) throughput and IOPS >=
//! QEMU's; resident memory <= 0.2 of QEMU's; and the expectation that BAR data
//! accesses and virtio queue notifies cost no exit to userspace; launch -> exit
//! <= 0.5 of QEMU's with no device and <= 0.2 with three; launch -> vCPUs started
//! flat across RAM sizes, and Strait's RAM setup within 2x of a plain populate's
//! bandwidth). Goals are reported, never asserted.

use crate::bench::analysis::{self, median, ratio, select};
use crate::bench::analysis::{launch_to_exit, launch_to_init};
use crate::bench::initcalls;
use crate::bench::plan::{LaunchKind, LaunchRecord, VmmKind};
use crate::bench::plan::{Sweep, PAGE_KINDS};
use crate::bench::sweep::{self, launch_to_vcpus, setup_gibps, FLAT_LIMIT, SETUP_SHARE};
use crate::scenario::HugePages;

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, exits, memory.
    Lower,
    /// Throughput.
    Higher,
}

/// What a metric is held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Strait / QEMU at most (`Better::Lower`) or at least (`Better::Higher`) this.
    Ratio(f64),
    /// Strait's own median at most this (QEMU shown for reference).
    StraitAtMost(f64),
}

/// One VMM's samples of a metric, and why the other launches gave none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// Valid samples.
    pub values: Vec<f64>,
    /// Distinct reasons launches gave no sample.
    pub problems: Vec<String>,
    /// Launches that gave no sample.
    pub failures: usize,
}

impl Side {
    /// Applies `measure` to each record.
    pub fn collect(
        records: &[&LaunchRecord],
        measure: impl Fn(&LaunchRecord) -> Result<f64, String>,
    ) -> Self {
        let mut side = Side::default();
        for r in records {
            match measure(r) {
                Ok(v) => side.values.push(v),
                Err(p) => {
                    side.failures += 1;
                    side.note(p);
                }
            }
        }
        if records.is_empty() {
            side.note("no launch recorded".into());
        }
        side
    }

    /// A side with no samples, for `why`.
    pub fn unavailable(why: &str) -> Self {
        Side {
            values: Vec::new(),
            problems: vec![why.to_string()],
            failures: 0,
        }
    }

    fn note(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// Median of the valid samples.
    pub fn median(&self) -> Option<f64> {
        median(&self.values)
    }

    /// Why there is no median.
    pub fn na_reason(&self) -> Option<String> {
        if !self.values.is_empty() {
            return None;
        }
        Some(
            self.problems
                .first()
                .cloned()
                .unwrap_or_else(|| "no samples".into()),
        )
    }
}

/// Pass, miss, or why it cannot be said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The goal is met.
    Pass,
    /// The goal is missed.
    Miss,
    /// A median is missing.
    NotAvailable(String),
    /// The metric has no goal.
    NoTarget,
}

/// One row of the results.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Table section.
    pub section: &'static str,
    /// What is measured.
    pub name: String,
    /// Unit of the medians.
    pub unit: &'static str,
    /// Which way is better.
    pub better: Better,
    /// QEMU's samples.
    pub qemu: Side,
    /// Strait's samples.
    pub strait: Side,
    /// The goal, if the project set one.
    pub target: Option<Target>,
}

impl Metric {
    /// Strait / QEMU of the medians.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.strait.median(), self.qemu.median())
    }

    /// The verdict against the target.
    pub fn verdict(&self) -> Verdict {
        let missing = || {
            let side = |name: &str, s: &Side| s.na_reason().map(|r| format!("{name}: {r}"));
            let why = side("Strait", &self.strait).or_else(|| side("QEMU", &self.qemu));
            Verdict::NotAvailable(why.unwrap_or_else(|| "QEMU's median is zero".into()))
        };
        let pass = |ok: bool| if ok { Verdict::Pass } else { Verdict::Miss };
        match self.target {
            None => Verdict::NoTarget,
            Some(Target::Ratio(goal)) => match (self.ratio(), self.better) {
                (None, _) => missing(),
                (Some(r), Better::Lower) => pass(r <= goal),
                (Some(r), Better::Higher) => pass(r >= goal),
            },
            Some(Target::StraitAtMost(limit)) => match self.strait.median() {
                None => missing(),
                Some(v) => pass(v <= limit),
            },
        }
    }
}

/// What the metrics are computed over.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Guest RAM sizes of the memory launches.
    pub memory_sizes: Vec<u32>,
    /// Page kinds of the memory launches.
    pub page_kinds: Vec<HugePages>,
    /// The launch series.
    pub sweep: Sweep,
}

pub use crate::bench::plan::pages_label;

fn row(
    section: &'static str,
    name: String,
    unit: &'static str,
    better: Better,
    target: Option<Target>,
    sides: (Side, Side),
) -> Metric {
    Metric {
        section,
        name,
        unit,
        better,
        qemu: sides.0,
        strait: sides.1,
        target,
    }
}

/// Both VMMs' samples of `measure` over launches of `kind` (and RAM).
fn sides(
    records: &[LaunchRecord],
    kind: LaunchKind,
    memory: Option<(u32, HugePages)>,
    measure: impl Fn(&LaunchRecord) -> Result<f64, String> + Copy,
) -> (Side, Side) {
    let side = |vmm| Side::collect(&select(records, kind, memory, vmm), measure);
    (side(VmmKind::Qemu), side(VmmKind::Strait))
}

/// Every metric, in report order.
pub fn metrics(records: &[LaunchRecord], layout: &Layout) -> Vec<Metric> {
    let mut rows = launch_rows(records);
    rows.extend(series_rows(records, &layout.sweep));
    rows.extend(memory_rows(records, layout));
    rows.extend(io_rows(records, LaunchKind::Nvme));
    rows.extend(io_rows(records, LaunchKind::Blk));
    rows.extend(net_rows(records));
    rows.extend(teardown_rows(records));
    rows.extend(reboot_rows(records));
    rows.extend(bar_rows(records));
    rows.extend(exit_rows(records));
    rows.extend(blk_exit_rows(records));
    rows.extend(net_exit_rows(records));
    rows.push(row(
        "Resident memory",
        "VMM resident memory, guest RAM excluded".into(),
        "MiB",
        Better::Lower,
        Some(Target::Ratio(0.2)),
        sides(records, LaunchKind::Nvme, None, analysis::resident_mib),
    ));
    rows
}

fn launch_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let launch = |name: &str, kind, target, f: fn(&LaunchRecord) -> Result<f64, String>| {
        row(
            "Launch",
            name.into(),
            "s",
            Better::Lower,
            target,
            sides(records, kind, None, f),
        )
    };
    vec![
        launch(
            "Launch → guest /init",
            LaunchKind::Boot,
            Some(Target::Ratio(0.5)),
            analysis::launch_to_init,
        ),
        launch(
            "Launch → VMM exit (guest powers off at /init)",
            LaunchKind::Boot,
            None,
            analysis::launch_to_exit,
        ),
        launch(
            "Launch → guest /init, no device passed through",
            LaunchKind::Bare,
            None,
            analysis::launch_to_init,
        ),
        launch(
            "Launch → VMM exit, no device passed through",
            LaunchKind::Bare,
            Some(Target::Ratio(0.5)),
            analysis::launch_to_exit,
        ),
        // The guest's own boot (its clock, firmware and kernel loading excluded): the
        // platform the VMM gives it must cost no more than q35 with -cpu host.
        launch(
            "L2 uptime at /init (no device, initcall_debug)",
            LaunchKind::Initcall,
            Some(Target::Ratio(1.0)),
            initcalls::uptime_at_init,
        ),
    ]
}

/// Teardown: the guest's power-off to the VMM's exit, with and without the device.
fn teardown_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    [
        ("Guest power-off → VMM exit", LaunchKind::Boot),
        (
            "Guest power-off → VMM exit, no device passed through",
            LaunchKind::Bare,
        ),
        (
            "Guest power-off → VMM exit, three devices",
            LaunchKind::Passthrough,
        ),
    ]
    .into_iter()
    .map(|(name, kind)| {
        row(
            "Teardown",
            name.into(),
            "ms",
            Better::Lower,
            None,
            sides(records, kind, None, analysis::power_off_to_exit),
        )
    })
    .collect()
}

fn memory_rows(records: &[LaunchRecord], layout: &Layout) -> Vec<Metric> {
    let mut rows = Vec::new();
    let largest = layout.memory_sizes.iter().copied().max();
    for &pages in &layout.page_kinds {
        let mut medians = Vec::new();
        for &mib in &layout.memory_sizes {
            let goal = (Some(mib) == largest && mib >= 2048 && pages == HugePages::Size2M)
                .then_some(Target::Ratio(0.5));
            let both = sides(
                records,
                LaunchKind::Memory,
                Some((mib, pages)),
                analysis::memory_ready,
            );
            medians.push((mib, both.0.median(), both.1.median()));
            rows.push(row(
                "Memory setup + DMA mapping",
                format!(
                    "Launch → RAM + DMA ready, {mib} MiB, {}",
                    pages_label(pages)
                ),
                "ms",
                Better::Lower,
                goal,
                both,
            ));
        }
        if let Some(slope) = per_gib_row(&medians, pages) {
            rows.push(slope);
        }
    }
    rows
}

/// The memory-dependent part: the difference between the largest and smallest
/// guest's medians, per GiB; fixed costs (process start, kernel load) cancel.
fn per_gib_row(medians: &[(u32, Option<f64>, Option<f64>)], pages: HugePages) -> Option<Metric> {
    let lo = medians.iter().min_by_key(|m| m.0)?;
    let hi = medians.iter().max_by_key(|m| m.0)?;
    if hi.0 == lo.0 {
        return None;
    }
    let gib = f64::from(hi.0 - lo.0) / 1024.0;
    let side = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Side {
            values: vec![(b - a) / gib],
            ..Side::default()
        },
        _ => Side::unavailable("a size's median is missing"),
    };
    Some(row(
        "Memory setup + DMA mapping",
        format!(
            "RAM + DMA setup per GiB, {} ({}→{} MiB)",
            pages_label(pages),
            lo.0,
            hi.0
        ),
        "ms/GiB",
        Better::Lower,
        None,
        (side(lo.1, hi.1), side(lo.2, hi.2)),
    ))
}

/// The launch series' rows: the three-device launch, the kernel cache's, and per page
/// kind measured the goals launch -> vCPUs started flat across sizes and Strait's RAM
/// setup within 2x of the plain populate.
fn series_rows(records: &[LaunchRecord], sweep: &Sweep) -> Vec<Metric> {
    let mut rows = vec![passthrough_row(records)];
    rows.extend(kernel_rows(records));
    for pages in PAGE_KINDS {
        let sizes = sweep.sizes_on(pages);
        let (Some(&lo), Some(&hi)) = (sizes.first(), sizes.last()) else {
            continue;
        };
        if select(records, LaunchKind::Ram, None, VmmKind::Strait).is_empty() {
            continue;
        }
        let vcpus = |mib| {
            Side::collect(
                &sweep::at(records, mib, pages, true, VmmKind::Strait),
                launch_to_vcpus,
            )
        };
        let (small, large) = (vcpus(lo), vcpus(hi));
        let flat = match (small.median(), large.median()) {
            (Some(a), Some(b)) if hi > lo && a > 0.0 => Side {
                values: vec![b / a],
                ..Side::default()
            },
            _ if hi == lo => Side::unavailable("one size only"),
            _ => Side::unavailable(&small.na_reason().or(large.na_reason()).unwrap_or_default()),
        };
        rows.push(Metric {
            section: "Launch series (no device)",
            name: format!(
                "Strait launch → vCPUs started, {hi} MiB over {lo} MiB, {}, prefault on (flat)",
                pages_label(pages)
            ),
            unit: "×",
            better: Better::Lower,
            qemu: Side::unavailable("QEMU logs no vCPU start; see the series table"),
            strait: flat,
            target: Some(Target::StraitAtMost(FLAT_LIMIT)),
        });
        rows.push(Metric {
            section: "Launch series (no device)",
            name: format!(
                "RAM setup bandwidth, {hi} MiB, {}: Strait's prefault (QEMU column: a plain populate in L1)",
                pages_label(pages)
            ),
            unit: "GiB/s",
            better: Better::Higher,
            qemu: Side::collect(&sweep::setup_at(records, hi, pages, VmmKind::Populate), setup_gibps),
            strait: Side::collect(&sweep::setup_at(records, hi, pages, VmmKind::Strait), setup_gibps),
            target: Some(Target::Ratio(SETUP_SHARE)),
        });
    }
    rows
}

fn kernel_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let kernel = select(records, LaunchKind::Kernel, None, VmmKind::Strait);
    if kernel.is_empty() {
        return Vec::new();
    }
    let qemu = select(records, LaunchKind::Kernel, None, VmmKind::Qemu);
    let cold: Vec<_> = kernel
        .iter()
        .copied()
        .filter(|r| r.key.cold_kernel)
        .collect();
    let cached: Vec<_> = kernel
        .iter()
        .copied()
        .filter(|r| !r.key.cold_kernel)
        .collect();
    let row = |name: &str,
               strait: &[&LaunchRecord],
               f: fn(&LaunchRecord) -> Result<f64, String>| Metric {
        section:
            "Kernel: Strait's decompressed-kernel cache (no device; QEMU boots the same bzImage)",
        name: name.into(),
        unit: "s",
        better: Better::Lower,
        qemu: Side::collect(&qemu, f),
        strait: Side::collect(strait, f),
        target: None,
    };
    vec![
        row(
            "Launch → guest /init, cache empty (cold)",
            &cold,
            launch_to_init,
        ),
        row(
            "Launch → guest /init, cache filled",
            &cached,
            launch_to_init,
        ),
        row(
            "Launch → VMM exit, cache empty (cold)",
            &cold,
            launch_to_exit,
        ),
        row("Launch → VMM exit, cache filled", &cached, launch_to_exit),
    ]
}

fn passthrough_row(records: &[LaunchRecord]) -> Metric {
    let side = |vmm| {
        Side::collect(
            &select(records, LaunchKind::Passthrough, None, vmm),
            launch_to_exit,
        )
    };
    Metric {
        section: "Launch",
        name: "Launch → VMM exit, nvme + bochs-display + 8 GiB ivshmem passed through".into(),
        unit: "s",
        better: Better::Lower,
        qemu: side(VmmKind::Qemu),
        strait: side(VmmKind::Strait),
        target: Some(Target::Ratio(0.2)),
    }
}

/// iobench's rates in the nvme launch (passthrough) or the blk launch (virtio-blk).
fn io_rows(records: &[LaunchRecord], kind: LaunchKind) -> Vec<Metric> {
    let (section, what) = if kind == LaunchKind::Blk {
        (
            "virtio-blk (iobench in L2, O_DIRECT on L1's disk; QEMU cache=none,aio=io_uring)",
            "virtio-blk",
        )
    } else {
        ("NVMe passthrough (iobench in L2, O_DIRECT)", "NVMe")
    };
    let io = |name: &str, unit: &'static str, f: fn(&LaunchRecord) -> Result<f64, String>| {
        row(
            section,
            format!("{what} {name}"),
            unit,
            Better::Higher,
            Some(Target::Ratio(1.0)),
            sides(records, kind, None, f),
        )
    };
    vec![
        io("sequential 64 KiB reads", "MB/s", |r| {
            analysis::io_run(r, "seq").map(|x| x.mbps())
        }),
        io("sequential 64 KiB reads", "IOPS", |r| {
            analysis::io_run(r, "seq").map(|x| x.iops())
        }),
        io("random 4 KiB reads", "MB/s", |r| {
            analysis::io_run(r, "rand").map(|x| x.mbps())
        }),
        io("random 4 KiB reads", "IOPS", |r| {
            analysis::io_run(r, "rand").map(|x| x.iops())
        }),
    ]
}

/// netbench's rates in the net launch, each way.
fn net_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section =
        "virtio-net (netbench in L2 and its peer in L1, one TCP stream over L1's tap; vhost-net in both VMMs)";
    let net = |name: &str, dir: &'static str| {
        row(
            section,
            name.into(),
            "MB/s",
            Better::Higher,
            Some(Target::Ratio(1.0)),
            sides(records, LaunchKind::Net, None, move |r| {
                analysis::net_run(r, dir).map(|x| x.mbps())
            }),
        )
    };
    vec![
        net("virtio-net L2 → L1 (guest sends)", "up"),
        net("virtio-net L1 → L2 (guest receives)", "down"),
    ]
}

/// Exits during the virtio-net load, per MB moved: notifies should end in KVM's
/// ioeventfds (vhost-net's kicks) and interrupts arrive by irqfd (its calls).
fn net_exit_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section = "Exits during the virtio-net run";
    let kvm = |name: &str, counter: &'static str, target| {
        row(
            section,
            name.into(),
            "/MB",
            Better::Lower,
            target,
            sides(records, LaunchKind::Net, None, move |r| {
                analysis::kvm_per_mb_net(r, counter)
            }),
        )
    };
    vec![
        kvm(
            "virtio-net: MMIO exits to userspace per MB (KVM `mmio_exits`)",
            "mmio_exits",
            Some(Target::StraitAtMost(1.0)),
        ),
        kvm(
            "virtio-net: all VM exits per MB (KVM `exits`)",
            "exits",
            None,
        ),
    ]
}

/// KVM's `counter` per 1000 iobench reads in the launches of `kind`, both VMMs.
fn kvm_row(
    records: &[LaunchRecord],
    kind: LaunchKind,
    section: &'static str,
    name: &str,
    counter: &'static str,
    target: Option<Target>,
) -> Metric {
    row(
        section,
        name.to_string(),
        "/1000 IO",
        Better::Lower,
        target,
        sides(records, kind, None, move |r| {
            analysis::kvm_per_kilo_io(r, counter)
        }),
    )
}

/// Exits during the virtio-blk load: the goal is none to userspace (queue notifies
/// end in KVM's ioeventfds, completions leave by irqfd).
fn blk_exit_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section = "Exits during the virtio-blk run";
    let kvm =
        |name, counter, target| kvm_row(records, LaunchKind::Blk, section, name, counter, target);
    vec![
        kvm(
            "virtio-blk: MMIO exits to userspace per 1000 reads (KVM `mmio_exits`)",
            "mmio_exits",
            Some(Target::StraitAtMost(1.0)),
        ),
        kvm(
            "virtio-blk: all VM exits per 1000 reads (KVM `exits`)",
            "exits",
            None,
        ),
    ]
}

/// `bartouch` over the first GiB of ivshmem's 8 GiB BAR: the first touch of every page (the faults that
/// map it: nested page faults resolved by KVM from the VMM's mapping, which vfio-pci
/// fills with 4 KiB or huge pfns by L1's kernel) and the same reads once mapped.
fn bar_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section =
        "BAR mapping (bartouch in L2: one read per 4 KiB page of the first GiB of ivshmem's 8 GiB BAR)";
    let bar = |name: &str, unit, better, f: fn(&LaunchRecord) -> Result<f64, String>| {
        row(
            section,
            name.into(),
            unit,
            better,
            None,
            sides(records, LaunchKind::Bar, None, f),
        )
    };
    vec![
        bar(
            "First touch of every page (faults in)",
            "s",
            Better::Lower,
            |r| analysis::bar_pass(r, "first").map(|p| p.secs),
        ),
        bar("First touch rate", "GiB/s", Better::Higher, |r| {
            analysis::bar_pass(r, "first").map(|p| p.gib_per_sec())
        }),
        bar("Same reads again, BAR mapped", "s", Better::Lower, |r| {
            analysis::bar_pass(r, "mapped").map(|p| p.secs)
        }),
    ]
}

fn reboot_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section = "Reboot (guest reboots once, NVMe attached)";
    let strait = Side::collect(
        &select(records, LaunchKind::Reboot, None, VmmKind::Strait),
        analysis::strait_reset_ms,
    );
    vec![
        row(
            section,
            "Guest reboot request → guest /init again".into(),
            "s",
            Better::Lower,
            None,
            sides(records, LaunchKind::Reboot, None, analysis::reboot_to_init),
        ),
        row(
            section,
            "Reboot request → vCPUs running again (Strait's log)".into(),
            "ms",
            Better::Lower,
            None,
            (
                Side::unavailable("QEMU logs no reset time; see the row above"),
                strait,
            ),
        ),
    ]
}

fn exit_rows(records: &[LaunchRecord]) -> Vec<Metric> {
    let section = "Exits during the NVMe run";
    let strait_only = |kind: LaunchKind| {
        let strait = Side::collect(
            &select(records, kind, None, VmmKind::Strait),
            analysis::strait_exit_total,
        );
        (
            Side::unavailable("QEMU keeps no exit counters (see the KVM rows)"),
            strait,
        )
    };
    let kvm =
        |name, counter, target| kvm_row(records, LaunchKind::Nvme, section, name, counter, target);
    vec![
        row(
            section,
            "Exits to Strait's userspace, NVMe launch (Strait's counters)".into(),
            "exits",
            Better::Lower,
            None,
            strait_only(LaunchKind::Nvme),
        ),
        row(
            section,
            "Exits to Strait's userspace, boot launch (no I/O baseline)".into(),
            "exits",
            Better::Lower,
            None,
            strait_only(LaunchKind::Boot),
        ),
        kvm(
            "MMIO exits to userspace per 1000 reads (KVM `mmio_exits`)",
            "mmio_exits",
            Some(Target::StraitAtMost(1.0)),
        ),
        kvm(
            "Port I/O exits per 1000 reads (KVM `io_exits`, in-kernel too)",
            "io_exits",
            None,
        ),
        kvm("All VM exits per 1000 reads (KVM `exits`)", "exits", None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::analysis::tests::{nvme_record, record};
    use crate::bench::sweep::tests::{ram, setup_record, strait_ram, sweep};

    fn metric(better: Better, target: Option<Target>, qemu: &[f64], strait: &[f64]) -> Metric {
        let side = |v: &[f64]| Side {
            values: v.to_vec(),
            ..Side::default()
        };
        row(
            "S",
            "m".into(),
            "s",
            better,
            target,
            (side(qemu), side(strait)),
        )
    }

    #[test]
    fn lower_is_better_goal_passes_at_or_below_the_ratio() {
        let m = metric(
            Better::Lower,
            Some(Target::Ratio(0.5)),
            &[10.0, 12.0, 11.0],
            &[5.5],
        );
        assert_eq!(m.ratio(), Some(0.5));
        assert_eq!(m.verdict(), Verdict::Pass);
        let m = metric(Better::Lower, Some(Target::Ratio(0.5)), &[10.0], &[6.0]);
        assert_eq!(m.verdict(), Verdict::Miss);
    }

    #[test]
    fn higher_is_better_goal_passes_at_or_above_the_ratio() {
        let m = metric(Better::Higher, Some(Target::Ratio(1.0)), &[100.0], &[120.0]);
        assert_eq!(m.verdict(), Verdict::Pass);
        let m = metric(Better::Higher, Some(Target::Ratio(1.0)), &[100.0], &[99.0]);
        assert_eq!(m.verdict(), Verdict::Miss);
    }

    #[test]
    fn absolute_target_looks_at_strait_only() {
        let m = metric(Better::Lower, Some(Target::StraitAtMost(1.0)), &[], &[0.0]);
        assert_eq!(m.verdict(), Verdict::Pass);
        assert_eq!(m.ratio(), None);
    }

    #[test]
    fn missing_side_makes_the_verdict_unavailable_with_its_reason() {
        let mut m = metric(Better::Lower, Some(Target::Ratio(0.5)), &[10.0], &[]);
        m.strait = Side::unavailable("passthrough not wired");
        assert_eq!(
            m.verdict(),
            Verdict::NotAvailable("Strait: passthrough not wired".into())
        );
        assert_eq!(
            metric(Better::Lower, None, &[1.0], &[1.0]).verdict(),
            Verdict::NoTarget
        );
    }

    #[test]
    fn side_collects_values_and_distinct_problems() {
        let ok = record(LaunchKind::Boot, VmmKind::Qemu, &[(2000.0, "TESTBED-INIT")]);
        let bad = record(LaunchKind::Boot, VmmKind::Qemu, &[]);
        let side = Side::collect(&[&ok, &bad, &bad], analysis::launch_to_init);
        assert_eq!(side.values, [2.0]);
        assert_eq!(side.problems, ["L2 never printed its /init marker"]);
        assert_eq!(side.failures, 2);
        assert_eq!(side.na_reason(), None);
        assert_eq!(
            Side::collect(&[], analysis::launch_to_init).na_reason(),
            Some("no launch recorded".into())
        );
    }

    #[test]
    fn per_gib_cost_is_the_slope_between_sizes() {
        let medians = [(512, Some(1000.0), Some(400.0)), (2048, Some(4000.0), None)];
        let m = per_gib_row(&medians, HugePages::Size2M);
        let m = m.map(|m| (m.qemu.values.clone(), m.strait.na_reason()));
        assert_eq!(
            m,
            Some((vec![2000.0], Some("a size's median is missing".into())))
        );
        assert!(per_gib_row(&medians[..1], HugePages::Size2M).is_none());
    }

    #[test]
    fn memory_goal_applies_to_the_largest_2m_size_only() {
        let layout = Layout {
            memory_sizes: vec![512, 2048],
            page_kinds: vec![HugePages::None, HugePages::Size2M],
            sweep: Sweep::none(),
        };
        let rows = metrics(&[], &layout);
        let goals: Vec<&str> = rows
            .iter()
            .filter(|m| m.section == "Memory setup + DMA mapping" && m.target.is_some())
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(goals, ["Launch → RAM + DMA ready, 2048 MiB, 2 MiB pages"]);
    }

    #[test]
    fn reboot_rows_compare_both_vmms_and_add_strait_s_reset_time() {
        use crate::bench::analysis::tests::reboot_record;
        let mut qemu = reboot_record(VmmKind::Qemu);
        qemu.lines[4].ms = 9000.0;
        let records = [qemu, reboot_record(VmmKind::Strait)];
        let layout = Layout {
            memory_sizes: vec![],
            page_kinds: vec![],
            sweep: Sweep::none(),
        };
        let rows = metrics(&records, &layout);
        let reboot: Vec<&Metric> = rows
            .iter()
            .filter(|m| m.section.starts_with("Reboot"))
            .collect();
        assert_eq!(reboot.len(), 2);
        assert_eq!(reboot[0].ratio(), Some(0.5));
        assert_eq!(reboot[1].strait.median(), Some(35.0));
        assert!(reboot[1].qemu.na_reason().is_some());
    }

    #[test]
    fn net_rows_compare_both_directions_and_exits_per_mb() {
        use crate::bench::analysis::tests::net_record;
        let mut strait = net_record(VmmKind::Strait);
        // Strait's upload took 4 s instead of 2: half QEMU's rate.
        strait.lines[5].ms = 10100.0;
        let records = [net_record(VmmKind::Qemu), strait];
        let layout = Layout {
            memory_sizes: vec![],
            page_kinds: vec![],
            sweep: Sweep::none(),
        };
        let rows = metrics(&records, &layout);
        let find = |name: &str| rows.iter().find(|m| m.name == name);
        let up = find("virtio-net L2 → L1 (guest sends)");
        assert_eq!(
            up.map(|m| (m.ratio(), m.verdict())),
            Some((Some(0.5), Verdict::Miss))
        );
        let down = find("virtio-net L1 → L2 (guest receives)");
        assert_eq!(
            down.map(|m| (m.ratio(), m.verdict())),
            Some((Some(1.0), Verdict::Pass))
        );
        let mmio = find("virtio-net: MMIO exits to userspace per MB (KVM `mmio_exits`)");
        assert_eq!(mmio.map(|m| m.verdict()), Some(Verdict::Pass));
    }

    #[test]
    fn goal_rows_judge_flatness_and_bandwidth_at_the_largest_size() {
        let mut small = strait_ram(512, 400.0, (30.0, 280.0));
        small.key.hugepages = HugePages::Size2M;
        let large = strait_ram(2048, 800.0, (30.0, 2030.0));
        let setup = setup_record(2048, (30.0, 2030.0));
        let pop = ram(
            VmmKind::Populate,
            2048,
            &[(300.0, "TESTBED-POPULATE pages=2M mib=2048 ms=500.0")],
        );
        let rows = series_rows(&[small, large, setup, pop], &sweep());
        let flat = rows
            .iter()
            .find(|m| m.name.contains("2 MiB pages") && m.unit == "×");
        let flat = flat.map(|m| (m.strait.median(), m.verdict()));
        assert_eq!(
            flat,
            Some((Some(2.0), crate::bench::metrics::Verdict::Miss))
        );
        let bw = rows
            .iter()
            .find(|m| m.name.contains("2 MiB pages") && m.unit == "GiB/s");
        // Strait 1 GiB/s against the populate's 4: 0.25, below the 0.5 goal.
        assert_eq!(bw.and_then(|m| m.ratio()), Some(0.25));
        let pt = rows.iter().find(|m| m.name.contains("ivshmem"));
        assert_eq!(pt.map(|m| m.target), Some(Some(Target::Ratio(0.2))));
    }

    #[test]
    fn kernel_rows_split_cold_from_cached() {
        let mut cold = record(
            LaunchKind::Kernel,
            VmmKind::Strait,
            &[(3000.0, "TESTBED-INIT")],
        );
        cold.key.cold_kernel = true;
        let cached = record(
            LaunchKind::Kernel,
            VmmKind::Strait,
            &[(1000.0, "TESTBED-INIT")],
        );
        let qemu = record(
            LaunchKind::Kernel,
            VmmKind::Qemu,
            &[(4000.0, "TESTBED-INIT")],
        );
        let rows = kernel_rows(&[cold, cached, qemu]);
        let ratios: Vec<Option<f64>> = rows.iter().take(2).map(Metric::ratio).collect();
        assert_eq!(ratios, [Some(0.75), Some(0.25)]);
    }

    #[test]
    fn nvme_rows_compare_both_vmms() {
        let records = [nvme_record(VmmKind::Qemu), nvme_record(VmmKind::Strait)];
        let rows = metrics(
            &records,
            &Layout {
                memory_sizes: vec![],
                page_kinds: vec![],
                sweep: Sweep::none(),
            },
        );
        let rand_iops = rows
            .iter()
            .find(|m| m.name == "NVMe random 4 KiB reads" && m.unit == "IOPS");
        assert_eq!(
            rand_iops.map(|m| (m.ratio(), m.verdict())),
            Some((Some(1.0), Verdict::Pass))
        );
        let resident = rows.iter().find(|m| m.unit == "MiB");
        assert_eq!(resident.map(|m| m.verdict()), Some(Verdict::Miss));
    }
}
