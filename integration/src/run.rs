//! One testbed run, as a linear recipe: work directory, VMM command or spec,
//! L1's run script, backing files, L0 until exit or time-out, then the
//! results L1 left in the work directory become an `Outcome`.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::HostEnv;
use crate::images::{Artefacts, Cache};
use crate::l0::{self, L0Config, L0Run, Stall};
use crate::options::TestbedOptions;
use crate::outcome::{parse_checks, CheckResult, Outcome, Timings};
use crate::preflight;
use crate::rootdisk;
use crate::scenario::{HostCheck, Scenario};
use crate::scripts::{self, RunPlan};
use crate::vmm::{GuestConfig, Vmm};

/// L2's base command line; `quiet` because every console byte is an exit to
/// the L1 VMM, which TCG makes slow. Failing checks print the kernel log.
pub const L2_CMDLINE: &str = "console=ttyS0 panic=-1 quiet mitigations=off";

const SPEC_TEMPLATE: &str = "spec.template.json";
/// Run directories older than this are removed by later runs.
const RUN_DIR_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The VMM's per-user cache (`$XDG_CACHE_HOME` in L1, see `scripts.rs`): kept in the
/// testbed's cache between runs, lent to each run's work dir, since L1 forgets all.
pub(crate) const VMM_CACHE: &str = "vmm-cache";

/// Two L0s on a 2-core machine would both crawl: one run at a time per
/// process (this mutex) and per cache directory (an flock on `run.lock`).
static RUN_LOCK: Mutex<()> = Mutex::new(());

pub(crate) struct RunContext<'a> {
    pub opts: &'a TestbedOptions,
    pub host: &'a HostEnv,
    pub cache: &'a Cache,
    pub scenario: &'a Scenario,
    pub artefacts: &'a Artefacts,
}

pub(crate) fn run(ctx: &RunContext<'_>) -> Result<Outcome> {
    let (work_dir, l0_run) = boot_l1(
        ctx,
        ctx.opts.vmm.label(),
        |dir| write_l1_script(ctx, dir),
        &l0::l1_stall,
    )?;
    let outcome = collect(ctx, &work_dir, l0_run);
    record(ctx, &outcome)?;
    Ok(outcome)
}

/// Boots L0 -> L1 for `ctx` with the run script (and any other files) that
/// `write_files` puts into the fresh work directory, and waits for L0 to end
/// (or for `watch`, given the work directory, to see L1 stall). Holds the run
/// locks throughout. `label` names the work directory.
pub(crate) fn boot_l1(
    ctx: &RunContext<'_>,
    label: &str,
    write_files: impl FnOnce(&Path) -> Result<()>,
    watch: &dyn Fn(&Path, Duration) -> Option<Stall>,
) -> Result<(PathBuf, L0Run)> {
    let _serialised = RUN_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let _exclusive = lock_cache(ctx.cache.dir())?;
    let runs = ctx.cache.dir().join("runs");
    prune_old_runs(&runs);
    let work_dir = create_work_dir(&runs, &ctx.scenario.name, label)?;
    write_files(&work_dir)?;
    let kept = ctx.cache.dir().join(VMM_CACHE);
    link_files(&kept, &work_dir.join(VMM_CACHE));
    let l0 = l0_config(ctx, &work_dir);
    l0::create_backing_files(&l0)?;
    log::info!(
        "running scenario {} with {label} in {}",
        ctx.scenario.name,
        work_dir.display()
    );
    let l0_run = l0::run_watched(
        &l0,
        ctx.scenario.timeout,
        (
            &work_dir.join("l1-console.log"),
            &work_dir.join("l0-stderr.log"),
        ),
        &|silence| watch(&work_dir, silence),
    )?;
    link_files(&work_dir.join(VMM_CACHE), &kept);
    Ok((work_dir, l0_run))
}

/// Writes `run.sh` and, for a VMM that takes one, the spec template.
fn write_l1_script(ctx: &RunContext<'_>, work_dir: &Path) -> Result<()> {
    let mut guest = guest_config(ctx);
    if let Some(disk) = &ctx.scenario.root_disk {
        let (h, w) = (ctx.host, work_dir);
        let image = rootdisk::build(&h.mke2fs, &h.busybox, w, disk)?;
        if ctx.scenario.l1_disk == Some(rootdisk::ROOT_IMAGE) {
            guest.disks.push(PathBuf::from(l0::L1_DISK_DEVICE));
            guest.direct_disks = true;
        } else {
            guest.disks.push(image);
        }
    }
    let spec_template = ctx.opts.vmm.spec_template(&guest);
    if let Some(text) = &spec_template {
        write(&work_dir.join(SPEC_TEMPLATE), text)?;
    }
    let plan = RunPlan {
        work_dir: work_dir.to_path_buf(),
        devices: ctx.scenario.devices.clone(),
        hugepages: ctx.scenario.hugepages,
        hugepage_count: l0::hugepage_count(ctx.scenario),
        vmm_command: ctx.opts.vmm.command(&guest, &work_dir.join("spec.json")),
        spec_template: spec_template.map(|_| SPEC_TEMPLATE.to_string()),
        l0_timeout_secs: ctx.scenario.timeout.as_secs(),
        pre_commands: pre_commands(ctx, work_dir),
        actions: ctx.scenario.l1_actions.clone(),
        net: ctx.scenario.net,
        kernel_cache: !ctx.scenario.strait.no_kernel_cache,
    };
    write(&work_dir.join("run.sh"), &scripts::l1_run_script(&plan))
}

/// `strait check` and `strait plan` before a Strait run whose scenario checks them.
fn pre_commands(ctx: &RunContext<'_>, work_dir: &Path) -> Vec<(String, Vec<String>)> {
    let Vmm::Strait { binary } = &ctx.opts.vmm else {
        return Vec::new();
    };
    let preflight = |c: &HostCheck| matches!(c, HostCheck::StraitCheck | HostCheck::StraitPlan);
    if !ctx.scenario.host_checks.iter().any(preflight) {
        return Vec::new();
    }
    let spec = work_dir.join("spec.json").display().to_string();
    preflight::commands(
        &binary.display().to_string(),
        ctx.scenario.devices.len(),
        &spec,
    )
}

pub(crate) fn l0_config(ctx: &RunContext<'_>, work_dir: &Path) -> L0Config {
    L0Config {
        qemu: ctx.host.qemu.clone(),
        kernel: ctx.artefacts.l1_kernel.clone(),
        initrd: ctx.artefacts.l1_initrd.clone(),
        cmdline: l0::l1_cmdline(ctx.scenario, ctx.opts.l1_1g_pages),
        memory_mib: ctx
            .opts
            .l0_memory_mib
            .unwrap_or_else(|| l0::l1_memory_mib(ctx.scenario)),
        smp: ctx.opts.l0_smp,
        work_dir: work_dir.to_path_buf(),
        devices: ctx.scenario.devices.clone(),
        l1_disk: ctx.scenario.l1_disk.map(|name| work_dir.join(name)),
        numa: ctx.scenario.l0_numa,
        nvme_known_block: ctx.scenario.nvme_known_block,
    }
}

/// Writes `outcome.txt`; drops the backing files of a passing run (the
/// ivshmem file is sparse but 8 GiB long).
fn record(ctx: &RunContext<'_>, outcome: &Outcome) -> Result<()> {
    let problems = outcome.problems();
    if problems.is_empty() && !ctx.opts.keep_backing_files {
        for name in [l0::NVME_IMAGE, l0::IVSHMEM_FILE, rootdisk::ROOT_IMAGE] {
            let _ = fs::remove_file(outcome.work_dir.join(name));
        }
    }
    let verdict = if problems.is_empty() {
        "PASSED".to_string()
    } else {
        outcome.failure_report(&problems)
    };
    let text = format!("{}\n{verdict}\n", outcome.summary());
    write(&outcome.work_dir.join("outcome.txt"), &text)
}

pub(crate) fn guest_config(ctx: &RunContext<'_>) -> GuestConfig {
    let mut cmdline = L2_CMDLINE.to_string();
    if !ctx.scenario.cmdline_extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&ctx.scenario.cmdline_extra);
    }
    GuestConfig {
        qemu: ctx.host.qemu.clone(),
        vcpus: ctx.scenario.vcpus,
        memory_mib: ctx.scenario.memory_mib,
        hugepages: ctx.scenario.hugepages,
        prefault: true,
        kernel: ctx.artefacts.kernel.clone(),
        initramfs: ctx.artefacts.l2_initrd.clone(),
        cmdline,
        devices: ctx.scenario.devices.len(),
        strait: ctx.scenario.strait.clone(),
        disks: Vec::new(),
        direct_disks: false,
        net: ctx.scenario.net,
        whole_slots: (0..)
            .zip(&ctx.scenario.devices)
            .filter_map(|(i, d)| d.slot_functions().map(|f| (i, f)))
            .collect(),
        hide_hypervisor: ctx.scenario.hide_hypervisor,
        numa_nodes: ctx.scenario.numa_nodes,
        numa_auto: ctx.scenario.l0_numa,
    }
}

/// Reads what L1 left in the work dir and runs the host-side checks.
fn collect(ctx: &RunContext<'_>, work_dir: &Path, l0_run: L0Run) -> Outcome {
    let read = |name: &str| {
        fs::read(work_dir.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let l2_console = read("l2-console.log").unwrap_or_default();
    let actions_log = read("l1-actions.log").unwrap_or_default();
    let mut checks = parse_checks(&l2_console);
    let strait = matches!(ctx.opts.vmm, Vmm::Strait { .. });
    let logs = HostLogs {
        work_dir,
        l2_console: &l2_console,
        actions_log: &actions_log,
        devices: &ctx.scenario.devices,
    };
    checks.extend(
        ctx.scenario
            .host_checks_for(strait)
            .map(|c| host_check(ctx, c, &logs)),
    );
    let timings = Timings::from_markers(
        &l0_run.markers,
        l0_run.elapsed,
        &read("l1-timings").unwrap_or_default(),
    );
    Outcome {
        scenario: ctx.scenario.name.clone(),
        vmm: ctx.opts.vmm.label().to_string(),
        expected_checks: ctx.scenario.expected_checks_for(strait),
        checks,
        l1_console: l0_run.console,
        l2_console,
        vmm_exit: read("vmm.rc").and_then(|s| s.trim().parse().ok()),
        expected_exit: ctx.scenario.expected_exit,
        actions_log,
        vmm_timed_out: work_dir.join("vmm.timeout").exists(),
        reruns: Vec::new(),
        l1_error: read("l1-error").map(|s| s.trim().to_string()),
        l0_exit: l0_run.exit,
        l0_stderr: read("l0-stderr.log").unwrap_or_default(),
        timings,
        work_dir: work_dir.to_path_buf(),
    }
}

/// What host checks read besides the work dir's files.
struct HostLogs<'a> {
    work_dir: &'a Path,
    l2_console: &'a str,
    actions_log: &'a str,
    /// The scenario's devices, in `$DEVn` order.
    devices: &'a [Device],
}

fn host_check(ctx: &RunContext<'_>, check: HostCheck, logs: &HostLogs<'_>) -> CheckResult {
    let name = check.name().to_string();
    let result = |passed: bool, detail: String| CheckResult {
        name: name.clone(),
        passed,
        detail,
    };
    let read = |file: &str| fs::read_to_string(logs.work_dir.join(file)).unwrap_or_default();
    match check {
        HostCheck::StraitCheck => {
            preflight::result(&name, preflight::check_report(logs.work_dir, logs.devices))
        }
        HostCheck::StraitPlan => preflight::result(&name, preflight::plan_matches(logs.work_dir)),
        HostCheck::L2Printed { marker, .. } => {
            let found = logs.l2_console.contains(marker);
            result(
                found,
                format!(
                    "L2 console {} `{marker}`",
                    if found { "has" } else { "lacks" }
                ),
            )
        }
        HostCheck::ActionPrinted { text, .. } => {
            let found = logs.actions_log.contains(text);
            result(
                found,
                format!(
                    "l1-actions.log {} `{text}`",
                    if found { "has" } else { "lacks" }
                ),
            )
        }
        HostCheck::StraitLogged { text, .. } => {
            let line = logs.l2_console.lines().find(|l| l.contains(text));
            let detail = match line {
                Some(l) => l.trim().to_string(),
                None => {
                    let error = logs.l2_console.lines().find(|l| l.contains("error"));
                    format!(
                        "no `{text}` in Strait's log; first error line: {}",
                        error.unwrap_or("none")
                    )
                }
            };
            result(line.is_some(), detail)
        }
        HostCheck::TimelineOrder { first, then } => {
            let (passed, detail) = crate::checks::timeline_order(logs.l2_console, first, then);
            result(passed, detail)
        }
        HostCheck::L2PrintedTimes { marker, count, .. } => {
            let n = logs.l2_console.matches(marker).count();
            result(n >= count, format!("`{marker}` {n} times, want {count}"))
        }
        HostCheck::ApiDevicesMatchL2 => {
            let (passed, detail) =
                crate::checks::api_devices_match(logs.actions_log, logs.l2_console);
            result(passed, detail)
        }
        HostCheck::TickGap { secs } => {
            let gap = crate::checks::largest_tick_gap(logs.l2_console);
            result(
                gap >= f64::from(secs),
                format!("largest gap between L2 clock ticks {gap:.2} s, want >= {secs} s"),
            )
        }
        HostCheck::RootDiskFile(disk) => {
            let image = logs.work_dir.join(rootdisk::ROOT_IMAGE);
            let (passed, detail) = match rootdisk::read_file(&ctx.host.debugfs, &image, disk.file) {
                Ok(got) => (
                    got.trim_end() == disk.content,
                    format!(
                        "{}:{} holds {:?}",
                        image.display(),
                        disk.file,
                        got.trim_end()
                    ),
                ),
                Err(e) => (false, format!("debugfs on {}: {e}", image.display())),
            };
            CheckResult {
                name: name.clone(),
                passed,
                detail,
            }
        }
        HostCheck::VmmSandboxed => {
            let (passed, detail) = sandbox_verdict(&read("vmm-sandbox.txt"));
            CheckResult {
                name,
                passed,
                detail,
            }
        }
        HostCheck::ApiSocketRemoved => {
            let listing = read("run-after-vmm.txt");
            let socket = crate::vmm::API_SOCKET.trim_start_matches("/run/");
            let left = listing.lines().any(|l| l.trim() == socket);
            let passed = !listing.trim().is_empty() && !left;
            let detail = match (listing.trim().is_empty(), left) {
                (true, _) => "L1 listed nothing in /run after the VMM".to_string(),
                (false, true) => format!("{socket} still in /run after the VMM exited"),
                (false, false) => format!("{socket} removed at exit"),
            };
            CheckResult {
                name,
                passed,
                detail,
            }
        }
        HostCheck::VmmRanAs { uid } => {
            let (passed, detail) = uid_verdict(&read("vmm-sandbox.txt"), uid);
            CheckResult {
                name,
                passed,
                detail,
            }
        }
        HostCheck::BarMapsAligned { min_bytes } => {
            let (passed, detail) = bar_maps_verdict(&read("vmm-maps.txt"), min_bytes);
            CheckResult {
                name,
                passed,
                detail,
            }
        }
        HostCheck::NumaPlacement { nodes } => {
            let (passed, detail) =
                numa_verdict(&read("vmm-numa-maps.txt"), &read("vmm-sandbox.txt"), nodes);
            CheckResult {
                name,
                passed,
                detail,
            }
        }
        HostCheck::VmmLogLines { max } => {
            let lines = read("l2-console.log")
                .lines()
                .filter(|l| l.starts_with("strait:"))
                .count();
            CheckResult {
                name,
                passed: lines <= max,
                detail: format!("{lines} log lines (at most {max})"),
            }
        }
        HostCheck::P2pBacking { mapped } => {
            let (passed, detail) =
                crate::p2p::backing_verdict(&logs.work_dir.join(l0::IVSHMEM_FILE), mapped);
            result(passed, detail)
        }
        HostCheck::DmarFault { expected } => {
            let (passed, detail) =
                crate::p2p::fault_verdict(&read("l1-console.log"), logs.l2_console, expected);
            result(passed, detail)
        }
        HostCheck::IvshmemWord { value } => {
            let work_dir = logs.work_dir;
            let path = work_dir.join(l0::IVSHMEM_FILE);
            let mut word = [0u8; 4];
            let read = fs::File::open(&path).and_then(|mut f| f.read_exact(&mut word));
            match read {
                Ok(()) => {
                    let got = u32::from_le_bytes(word);
                    let detail = format!(
                        "{} starts with {got:#010x}, want {value:#010x}",
                        path.display()
                    );
                    CheckResult {
                        name,
                        passed: got == value,
                        detail,
                    }
                }
                Err(e) => CheckResult {
                    name,
                    passed: false,
                    detail: format!("reading {}: {e}", path.display()),
                },
            }
        }
    }
}

/// Judge L1's sample of the VMM's /proc/PID/maps: every VFIO device mapping of 2 MiB or
/// more starts aligned to its size (capped at 1 GiB), and the largest is `min_bytes`
/// or more.
pub(crate) fn bar_maps_verdict(maps: &str, min_bytes: u64) -> (bool, String) {
    let bars: Vec<(u64, u64)> = maps
        .lines()
        .filter(|l| l.contains("vfio-device"))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            Some((start, end.checked_sub(start)?))
        })
        .filter(|&(_, len)| len >= 2 << 20)
        .collect();
    let largest = bars.iter().map(|b| b.1).max().unwrap_or(0);
    if largest < min_bytes {
        let detail = format!(
            "no VFIO BAR mapping of {min_bytes:#x} bytes in L1's sample of the VMM's maps \
             (largest {largest:#x}; {} lines sampled)",
            maps.lines().count()
        );
        return (false, detail);
    }
    let want = |len: u64| len.next_power_of_two().min(1 << 30);
    let shown: Vec<String> = bars
        .iter()
        .map(|&(start, len)| format!("{start:#x}+{len:#x}"))
        .collect();
    let bad: Vec<&String> = bars
        .iter()
        .zip(&shown)
        .filter(|((start, len), _)| start % want(*len) != 0)
        .map(|(_, s)| s)
        .collect();
    if bad.is_empty() {
        (
            true,
            format!("aligned to their size (max 1 GiB): {}", shown.join(", ")),
        )
    } else {
        (
            false,
            format!("not aligned to their size: {bad:?} (all: {shown:?})"),
        )
    }
}

/// Judge L1's samples of the VMM's /proc/PID/numa_maps and threads (with their
/// `Cpus_allowed_list`) on an L1 whose node `i` has CPU `i`: for each node `i` below
/// `nodes`, the mappings bound to it (`bind:i`) hold pages on `Ni` and on no other node,
/// and thread `strait-vcpu{i}` may run on CPU `i` only.
pub(crate) fn numa_verdict(numa_maps: &str, threads: &str, nodes: u32) -> (bool, String) {
    let pages_on = |l: &str, n: u32| {
        let key = format!("N{n}=");
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for i in 0..nodes {
        let bind = format!("bind:{i}");
        let bound: Vec<&str> = numa_maps
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == bind))
            .collect();
        let here: u64 = bound.iter().map(|l| pages_on(l, i)).sum();
        let elsewhere: u64 = bound
            .iter()
            .map(|l| {
                (0..nodes)
                    .filter(|&n| n != i)
                    .map(|n| pages_on(l, n))
                    .sum::<u64>()
            })
            .sum();
        if here == 0 || elsewhere != 0 {
            bad.push(format!(
                "RAM bound to node {i}: {here} pages there, {elsewhere} elsewhere"
            ));
        } else {
            found.push(format!("node {i}: {here} pages"));
        }
        let vcpu = format!("strait-vcpu{i} ");
        let cpus = threads
            .lines()
            .find(|l| l.starts_with(&vcpu))
            .and_then(|l| l.split("Cpus_allowed_list:").nth(1))
            .map(|c| c.trim().to_string());
        match cpus {
            Some(c) if c == i.to_string() => found.push(format!("vcpu{i} on CPU {c}")),
            other => bad.push(format!("vcpu{i} may run on {other:?}, want CPU {i}")),
        }
    }
    if bad.is_empty() {
        (true, found.join(", "))
    } else {
        (
            false,
            format!("{} (seen: {})", bad.join("; "), found.join(", ")),
        )
    }
}

/// Judge L1's sample of the VMM's threads (`NAME CapEff: X NoNewPrivs: Y Seccomp: Z`
/// per line): every thread filtered, no_new_privs, no effective capability.
pub(crate) fn sandbox_verdict(sample: &str) -> (bool, String) {
    let lines: Vec<&str> = sample.lines().filter(|l| !l.trim().is_empty()).collect();
    if !lines.iter().any(|l| l.contains("vcpu")) {
        let detail = format!("L1 took no sample with vCPU threads while L2 ran: {sample:?}");
        return (false, detail);
    }
    let bad: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            !(l.contains("Seccomp: 2")
                && l.contains("NoNewPrivs: 1")
                && l.contains("CapEff: 0000000000000000"))
        })
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if bad.is_empty() {
        let detail = format!(
            "{} threads filtered, no capabilities: {}",
            lines.len(),
            names.join(" ")
        );
        (true, detail)
    } else {
        (false, format!("not sandboxed: {}", bad.join("; ")))
    }
}

/// Every thread in L1's sample shows `Uid: U U U U` for `uid`.
pub(crate) fn uid_verdict(sample: &str, uid: u32) -> (bool, String) {
    let want = format!("Uid: {uid} {uid} {uid} {uid} ");
    let lines: Vec<&str> = sample.lines().filter(|l| !l.trim().is_empty()).collect();
    let bad: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.contains(&want))
        .collect();
    match (lines.is_empty(), bad.is_empty()) {
        (true, _) => (false, "no sample of the VMM's threads".into()),
        (false, true) => (true, format!("{} threads as uid {uid}", lines.len())),
        (false, false) => (false, format!("not uid {uid}: {}", bad.join("; "))),
    }
}

fn create_work_dir(runs: &Path, scenario: &str, label: &str) -> Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name: String = format!("{scenario}-{label}-{stamp}-{}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = runs.join(name);
    fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Hard-links the files under `from` (one level of subdirectories: the VMM's own) that
/// `to` lacks into `to`; best effort, as a cold cache only costs time. Temporary files
/// (a leading dot) are skipped.
fn link_files(from: &Path, to: &Path) {
    let Ok(dirs) = fs::read_dir(from) else {
        return;
    };
    for dir in dirs.filter_map(|e| e.ok()) {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        let target = to.join(dir.file_name());
        for file in files.filter_map(|e| e.ok()) {
            let name = file.file_name();
            if name.to_string_lossy().starts_with('.') || target.join(&name).exists() {
                continue;
            }
            let _ = fs::create_dir_all(&target);
            if let Err(e) = fs::hard_link(file.path(), target.join(&name)) {
                log::debug!("cannot keep {}: {e}", file.path().display());
            }
        }
    }
}

/// Removes run directories older than [`RUN_DIR_MAX_AGE`]; best effort.
fn prune_old_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > RUN_DIR_MAX_AGE);
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Takes an exclusive flock on `<cache>/run.lock`, held until the file is dropped.
fn lock_cache(cache_dir: &Path) -> Result<fs::File> {
    let path = cache_dir.join("run.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::WriteFile {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own; it has no memory effects.
    let busy = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
    if busy {
        log::warn!(
            "another testbed run holds {}; waiting for it",
            path.display()
        );
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let source = std::io::Error::last_os_error();
            return Err(Error::WriteFile { path, source });
        }
    }
    Ok(file)
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_cache_is_lent_and_kept_by_hard_links() {
        let root = std::env::temp_dir().join(format!("testbed-vmm-cache-{}", std::process::id()));
        let (kept, lent) = (root.join("kept"), root.join("lent"));
        fs::create_dir_all(kept.join("strait")).unwrap();
        fs::write(kept.join("strait/old.elf"), b"old").unwrap();
        link_files(&kept, &lent);
        fs::write(lent.join("strait/new.elf"), b"new").unwrap();
        fs::write(lent.join("strait/.new.elf.1.tmp"), b"half").unwrap();
        link_files(&lent, &kept);
        let mut names: Vec<_> = fs::read_dir(kept.join("strait"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let old = fs::read(lent.join("strait/old.elf")).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(names, ["new.elf", "old.elf"]);
        assert_eq!(old, b"old");
    }

    #[test]
    fn uid_verdict_wants_every_thread_as_the_user() {
        let good =
            "strait Uid: 1000 1000 1000 1000 CapEff: 0 \nstrait-vcpu0 Uid: 1000 1000 1000 1000 \n";
        assert!(uid_verdict(good, 1000).0);
        assert!(!uid_verdict(good, 1001).0);
        assert!(!uid_verdict("strait Uid: 0 0 0 0 \n", 1000).0);
        assert!(!uid_verdict("", 1000).0);
    }

    #[test]
    fn sandbox_verdict_wants_every_thread_filtered_without_capabilities() {
        let numa = "7f0000000000 bind:0 file=/h/strait-ram huge dirty=128 N0=128 kernelpagesize_kB=2048\n\
                    7f0010000000 bind:1 file=/h/strait-ram huge dirty=128 N1=128 kernelpagesize_kB=2048\n";
        let threads = "strait Seccomp: 2 Cpus_allowed_list: 0-1 \n\
                       strait-vcpu0 Seccomp: 2 Cpus_allowed_list: 0 \n\
                       strait-vcpu1 Seccomp: 2 Cpus_allowed_list: 1 \n";
        assert!(numa_verdict(numa, threads, 2).0);
        let spread = numa.replace("N1=128", "N0=64 N1=64");
        assert!(
            !numa_verdict(&spread, threads, 2).0,
            "node 1's RAM partly on node 0"
        );
        let unpinned = threads.replace("Cpus_allowed_list: 1 ", "Cpus_allowed_list: 0-1 ");
        assert!(!numa_verdict(numa, &unpinned, 2).0, "vcpu1 not pinned");
        assert!(!numa_verdict("", threads, 2).0, "no sample");
        let maps = "7f0000000000-7f0200000000 rw-s 00000000 00:0e 12 anon_inode:[vfio-device]\n\
                    7f0240000000-7f0241000000 rw-s 00000000 00:0e 12 anon_inode:[vfio-device]\n\
                    7f0241000000-7f0241001000 rw-s 00000000 00:0e 12 anon_inode:[vfio-device]\n";
        assert!(bar_maps_verdict(maps, 8 << 30).0);
        assert!(!bar_maps_verdict(maps, 16 << 30).0, "the BAR was not seen");
        let off = "7f0010000000-7f0210000000 rw-s 00000000 00:0e 12 anon_inode:[vfio-device]\n";
        assert!(!bar_maps_verdict(off, 8 << 30).0, "256 MiB aligned only");
        let good = "strait CapEff: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 \n\
                    strait-vcpu0 CapEff: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 \n";
        assert!(sandbox_verdict(good).0);
        let root = "strait CapEff: 000001ffffffffff NoNewPrivs: 0 Seccomp: 0 \n";
        assert!(!sandbox_verdict(&format!("{good}{root}")).0);
        assert!(!sandbox_verdict("").0);
        let main_only = "strait CapEff: 0000000000000000 NoNewPrivs: 1 Seccomp: 2 \n";
        assert!(!sandbox_verdict(main_only).0, "taken after the vCPUs left");
    }
}
