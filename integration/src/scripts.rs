//! The shell that runs inside the nested guests. L1's /init is generic and
//! lives in the cached L1 image; it mounts the 9p shares and hands over to the
//! per-run `run.sh` that the host writes into the work directory. L2's /init
//! is generic too and sources the scenario's `checks.sh` from the L2 image.
//! Markers: L1 prints `TESTBED-L1-INIT`, `TESTBED-L1 <event> uptime=<s>` and
//! `TESTBED-L1-ERROR <why>` on its console; L2 prints `TESTBED-INIT`,
//! `TESTBED-CHECK <name> PASS|FAIL <detail>` and `TESTBED-DONE`.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::device::Device;
use crate::scenario::{HugePages, L1Action, Scenario};
use crate::vmm::{device_placeholder, hugetlbfs_mount, slot_placeholder};

/// L1's /init: modules, pseudo file systems, the two 9p shares, then run.sh.
pub const L1_INIT: &str = r#"#!/bin/sh
# testbed L1 init: load modules, mount the 9p shares, run the run's script.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read up _ < /proc/uptime
echo "TESTBED-L1-INIT uptime=$up"
while read m; do
	insmod /lib/modules/$m || echo "TESTBED-L1 insmod $m failed"
done < /etc/testbed/modules
halt_l1() { echo "TESTBED-L1-ERROR $*"; sync; poweroff -f; }
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $opts,ro,cache=loose host /host || halt_l1 "cannot mount the host share"
mount -t 9p -o $opts work /work || halt_l1 "cannot mount the work share"
[ -f /work/run.sh ] || halt_l1 "no run.sh in the work share"
sh /work/run.sh
halt_l1 "run.sh returned $?"
"#;

/// L2's /init: marker first, then modules, the checks, and power off.
pub const L2_INIT: &str = r#"#!/bin/sh
echo TESTBED-INIT
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read m; do
	insmod /lib/modules/$m || echo "testbed: insmod $m failed"
done < /etc/testbed/modules
FAILED=0
. /etc/testbed/lib.sh
. /etc/testbed/checks.sh
# The guest's PCI picture (addresses, BARs, bridge windows), for comparing VMMs and
# Strait versions; not a check.
pci_map
# A root disk mounted by a check: boot on from it (its /init reports and powers off).
if [ $FAILED = 0 ] && [ -x /newroot/init ]; then
	echo "testbed: switch_root to /newroot"
	exec switch_root /newroot /init
fi
if [ $FAILED -gt 0 ]; then
	echo "testbed: $FAILED check(s) failed; kernel log tail:"
	dmesg | tail -n 30
fi
echo "TESTBED-DONE failed=$FAILED"
. /etc/testbed/finish.sh
poweroff -f
"#;

/// Helpers for run.sh: markers, failure exit, device lookup and vfio binding.
const L1_RUN_LIB: &str = r#"W=/work
R=/host
fail() { echo "TESTBED-L1-ERROR $*"; echo "$*" > $W/l1-error; sync; poweroff -f; }
mark() { read up _ < /proc/uptime; echo "TESTBED-L1 $1 uptime=$up"; echo "$1=$up" >> $W/l1-timings; }
sandbox_status() { # PID: each thread's name, seccomp mode, no_new_privs and CapEff, while L2 runs
	for t in /proc/$1/task/*; do
		read c < $t/comm || continue
		echo "$c $(grep -E '^(Uid|Seccomp|NoNewPrivs|CapEff|Cpus_allowed_list):' $t/status | tr '\t\n' '  ')"
	done > $W/vmm-sandbox.tmp 2>/dev/null && mv $W/vmm-sandbox.tmp $W/vmm-sandbox.txt
	cp /proc/$1/maps $W/vmm-maps.tmp 2>/dev/null && mv $W/vmm-maps.tmp $W/vmm-maps.txt
	cp /proc/$1/numa_maps $W/vmm-numa-maps.tmp 2>/dev/null && mv $W/vmm-numa-maps.tmp $W/vmm-numa-maps.txt
}
find_pci() { # VENDOR DEVICE -> BDF of the first match
	for d in /sys/bus/pci/devices/*; do
		read v < "$d/vendor"; read i < "$d/device"
		if [ "$v" = "$1" ] && [ "$i" = "$2" ]; then echo "${d##*/}"; return 0; fi
	done
	return 1
}
bind_vfio() { # BDF [shared]: hand the device to vfio-pci; it must be alone in its IOMMU
	# group, or with "shared" share it only with functions on vfio-pci (or none) and
	# bridges on pcieport
	d=/sys/bus/pci/devices/$1
	[ -e $d/driver ] && echo $1 > $d/driver/unbind
	echo vfio-pci > $d/driver_override
	echo $1 > /sys/bus/pci/drivers_probe
	g=$(basename "$(readlink $d/iommu_group)")
	n=$(ls $d/iommu_group/devices | wc -l)
	if [ "$2" = shared ]; then
		for m in $d/iommu_group/devices/*; do
			drv=; [ -e $m/driver ] && drv=$(basename "$(readlink $m/driver)")
			case $drv in vfio-pci|pcieport|'') ;; *) fail "$1: IOMMU group $g member ${m##*/} on '$drv'";; esac
		done
	else
		[ "$n" = 1 ] || fail "$1 shares IOMMU group $g with other devices"
	fi
	[ -c /dev/vfio/$g ] || fail "$1 handed to vfio-pci but no /dev/vfio/$g"
	echo "TESTBED-L1 $1 bound to vfio-pci, IOMMU group $g"
}
bind_slot() { # BDF of function 0: hand every function of its slot to vfio-pci; the
	# IOMMU group must hold those functions only
	s=${1%.*}
	for f in /sys/bus/pci/devices/$s.*; do
		b=${f##*/}
		[ -e $f/driver ] && echo $b > $f/driver/unbind
		echo vfio-pci > $f/driver_override
		echo $b > /sys/bus/pci/drivers_probe
	done
	d=/sys/bus/pci/devices/$1
	g=$(basename "$(readlink $d/iommu_group)")
	for m in $d/iommu_group/devices/*; do
		case ${m##*/} in $s.*) ;; *) fail "$s shares IOMMU group $g with ${m##*/}" ;; esac
	done
	[ -c /dev/vfio/$g ] || fail "$s handed to vfio-pci but no /dev/vfio/$g"
	echo "TESTBED-L1 slot $s: $(ls -d /sys/bus/pci/devices/$s.* | wc -l) functions bound to vfio-pci, IOMMU group $g"
}
: > $W/l1-timings
# A checkout under /tmp or /run would vanish under the chroot's tmpfs mounts:
# keep the top of its tree (e.g. /tmp/clone) visible at its own path.
keep=; case $WORK in /tmp/?*|/run/?*) t=${WORK#/}; r=${t#*/}; keep=/${t%%/*}/${r%%/*} ;; esac
[ -z "$keep" ] || { mkdir -p /keep && mount -o bind "$R$keep" /keep; } || fail "cannot keep $keep"
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev &&
	mount -t tmpfs tmpfs $R/run && mount -t tmpfs tmpfs $R/tmp || fail "cannot prepare the chroot"
[ -z "$keep" ] || { mkdir -p "$R$keep" && mount -o bind /keep "$R$keep"; } || fail "cannot show $keep in the chroot"
mount -o bind $W "$R$WORK" || fail "cannot bind the work share to $WORK in the chroot"
"#;

/// Runs the VMM in the background, notes when L2's first marker shows up,
/// kills the VMM at its deadline, and saves console, status and timings.
const L1_RUN_VMM: &str = r#"vmm=$!
mark launch
( sleep $limit; echo "VMM killed after $limit s" > $W/vmm.timeout; kill -9 $vmm ) &
wd=$!
( while sleep 20; do read up _ < /proc/uptime; echo "TESTBED-L1 heartbeat uptime=$up"; done ) &
hb=$!
seen=0; out=0; n=0; held=0
while kill -0 $vmm 2>/dev/null; do
	[ $out = 0 ] && [ -s /tmp/l2-console.log ] && { out=1; mark l2-output; }
	if [ $seen = 0 ] && grep -q TESTBED-INIT /tmp/l2-console.log; then seen=1; mark l2-init; fi
	l1_actions
	n=$((n + 1)); [ $((n % 10)) = 0 ] && cp /tmp/l2-console.log $W/l2-console.log
	# Sampled while L2 runs: once it is done, threads and mappings start going away.
	# The last sample is taken as L2 starts its hold (TESTBED-HOLD, then it sleeps),
	# so it falls in the hold even when L1 lags behind the console.
	if [ $seen = 1 ] && [ $held = 0 ]; then
		if grep -q TESTBED-HOLD /tmp/l2-console.log; then held=1; sandbox_status $vmm
		elif [ $((n % 2)) = 0 ] && ! grep -q TESTBED-DONE /tmp/l2-console.log; then sandbox_status $vmm; fi
	fi
	usleep 500000
done
wait $vmm; rc=$?
mark vmm-exit
ls -a $R/run > $W/run-after-vmm.txt 2>&1
dmesg | grep 'type=1326' > $W/seccomp-audit.log
[ $seen = 0 ] && grep -q TESTBED-INIT /tmp/l2-console.log && mark l2-init
kill $wd $hb 2>/dev/null
cp /tmp/l2-console.log $W/l2-console.log
echo $rc > $W/vmm.rc
echo "TESTBED-L1 vmm-status rc=$rc"
sync
echo TESTBED-L1-DONE
poweroff -f
"#;

/// What L1's run script needs to know.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The work directory's host path (the same path inside L1's chroot).
    pub work_dir: PathBuf,
    /// Devices to bind to vfio-pci, in `@DEVn@` order.
    pub devices: Vec<Device>,
    /// Hugepage size for L2's RAM.
    pub hugepages: HugePages,
    /// Pages to reserve.
    pub hugepage_count: u32,
    /// The VMM command, with `@DEVn@` placeholders.
    pub vmm_command: Vec<String>,
    /// Spec template file name in the work dir, filled in to `spec.json`.
    pub spec_template: Option<String>,
    /// L0's time limit in seconds; the VMM is killed early enough for L1 to report.
    pub l0_timeout_secs: u64,
    /// Commands run in the chroot before the VMM, each as (output file in the work
    /// dir, words with `@DEVn@` placeholders); the exit status goes to `<file>.rc`.
    pub pre_commands: Vec<(String, Vec<String>)>,
    /// What L1 does while the VMM runs, each once, when L2 prints its marker.
    pub actions: Vec<L1Action>,
    /// Make L1's tap and servers for L2's virtio-net ([`crate::net`]).
    pub net: bool,
    /// Lend the VMM its per-user cache (`XDG_CACHE_HOME`); without, it has none.
    pub kernel_cache: bool,
}

/// Seconds of L0's time limit kept for L1 to save results and power off.
pub const L1_TEARDOWN_SECS: u64 = 20;

/// Quotes `arg` for sh, except `@DEVn@` and `@SLOTn@` placeholders, which become
/// `"$DEVn"` and `"$SLOTn"`.
pub fn shell_word(arg: &str, devices: usize) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let placeholders: Vec<(String, String)> = (0..devices)
        .flat_map(|i| {
            [
                (device_placeholder(i), format!("\"$DEV{i}\"")),
                (slot_placeholder(i), format!("\"$SLOT{i}\"")),
            ]
        })
        .collect();
    let mut out = String::new();
    let mut rest = arg;
    loop {
        let next = placeholders
            .iter()
            .filter_map(|(p, v)| rest.find(p.as_str()).map(|pos| (pos, p, v)))
            .min_by_key(|(pos, _, _)| *pos);
        let Some((pos, placeholder, value)) = next else {
            if !rest.is_empty() || out.is_empty() {
                out.push_str(&quote(rest));
            }
            return out;
        };
        if pos > 0 {
            out.push_str(&quote(&rest[..pos]));
        }
        out.push_str(value);
        rest = &rest[pos + placeholder.len()..];
    }
}

/// Runs the benchmark's agent (started just before) to its end or deadline,
/// then saves its status and powers off. No polling loop: the agent measures,
/// and L1 should stay quiet meanwhile; a heartbeat line every 20 s lets the
/// host tell a frozen L1 from a slow launch.
const L1_RUN_AGENT: &str = r#"agent=$!
mark launch
( sleep $limit; echo "agent killed after $limit s" > $W/vmm.timeout; kill -9 $agent ) &
wd=$!
( while sleep 20; do read up _ < /proc/uptime; echo "TESTBED-L1 heartbeat uptime=$up"; done ) &
hb=$!
wait $agent; rc=$?
mark vmm-exit
kill $wd $hb 2>/dev/null
echo $rc > $W/vmm.rc
echo "TESTBED-L1 agent-status rc=$rc"
sync
echo TESTBED-L1-DONE
poweroff -f
"#;

/// Seconds before its watchdog fires that the agent stops starting launches.
pub const AGENT_MARGIN_SECS: u64 = 15;

/// `plan.vmm_command` as one sh command line, device placeholders expanded in L1.
fn command_line(plan: &RunPlan) -> String {
    let words: Vec<String> = plan
        .vmm_command
        .iter()
        .map(|a| shell_word(a, plan.devices.len()))
        .collect();
    words.join(" ")
}

/// `l1_actions`, called from the VMM watch loop: each action once, in the background,
/// when L2's console shows its marker; output in `$W/l1-actions.log`.
fn l1_actions_function(plan: &RunPlan) -> String {
    let mut s = String::from("l1_actions() {\n\t:\n");
    for (i, action) in plan.actions.iter().enumerate() {
        let _ = write!(
            s,
            "\tif [ -z \"$act{i}\" ] && grep -qF {} /tmp/l2-console.log; then act{i}=1; mark action-{i}; ( {}\n) >> $W/l1-actions.log 2>&1 & fi\n",
            shell_word(&action.after, 0),
            action.run
        );
    }
    s.push_str("}\n");
    s
}

/// L1's per-run script.
pub fn l1_run_script(plan: &RunPlan) -> String {
    let mut s = l1_setup_script(plan);
    let _ = writeln!(
        s,
        "VMM_BIN={}",
        plan.vmm_command
            .first()
            .map_or_else(|| "''".into(), |b| shell_word(b, 0))
    );
    s.push_str(&l1_actions_function(plan));
    let _ = writeln!(
        s,
        "chroot $R {} < /dev/null > /tmp/l2-console.log 2>&1 &",
        command_line(plan)
    );
    s.push_str(L1_RUN_VMM);
    s
}

/// L1's script for the benchmark: the same setup, then `plan.vmm_command` (the
/// agent) with `--deadline-secs` appended, its output in `agent.log`.
pub fn l1_bench_script(plan: &RunPlan) -> String {
    let mut s = l1_setup_script(plan);
    let _ = writeln!(
        s,
        "chroot $R {} --deadline-secs $((limit - {AGENT_MARGIN_SECS})) < /dev/null > $W/agent.log 2>&1 &",
        command_line(plan)
    );
    s.push_str(L1_RUN_AGENT);
    s
}

/// Everything before the VMM starts: mounts, hugepages, devices bound to
/// vfio-pci as `$DEVn`, the spec, and `$limit`, the seconds the VMM may run.
fn l1_setup_script(plan: &RunPlan) -> String {
    let mut s =
        String::from("#!/bin/sh\n# testbed run script (generated on the host, runs in L1)\n");
    let _ = writeln!(
        s,
        "WORK={}",
        shell_word(&plan.work_dir.display().to_string(), 0)
    );
    // The VMM's per-user cache (Strait's decompressed kernels), kept between runs; or
    // one it cannot create (L1's root is read-only).
    let _ = if plan.kernel_cache {
        writeln!(
            s,
            "export XDG_CACHE_HOME=\"$WORK/{}\"",
            crate::run::VMM_CACHE
        )
    } else {
        writeln!(s, "export XDG_CACHE_HOME=/nonexistent-cache")
    };
    s.push_str(L1_RUN_LIB);
    push_hugepages(&mut s, plan);
    for (i, device) in plan.devices.iter().enumerate() {
        let siblings = device.group_siblings();
        for (vendor, id) in siblings {
            let _ = writeln!(
                s,
                "sib=$(find_pci 0x{vendor:04x} 0x{id:04x}) || fail \"{} sibling {vendor:04x}:{id:04x} not found in L1\"\nbind_vfio $sib shared",
                device.name()
            );
        }
        let (vendor, id) = device.pci_id();
        let bind = match (device.slot_functions(), siblings.is_empty()) {
            (Some(_), _) => "bind_slot $DEV{i}",
            (None, true) => "bind_vfio $DEV{i}",
            (None, false) => "bind_vfio $DEV{i} shared",
        }
        .replace("{i}", &i.to_string());
        let _ = writeln!(
            s,
            "DEV{i}=$(find_pci 0x{vendor:04x} 0x{id:04x}) || fail \"{} ({vendor:04x}:{id:04x}) not found in L1\"\nSLOT{i}=${{DEV{i}%.*}}\n{bind}",
            device.name()
        );
    }
    if let Some(template) = &plan.spec_template {
        let subst: String = (0..plan.devices.len())
            .map(|i| format!(" -e \"s/@DEV{i}@/$DEV{i}/g\" -e \"s/@SLOT{i}@/$SLOT{i}/g\""))
            .collect();
        let _ = writeln!(
            s,
            "sed -e ''{subst} $W/{template} > $W/spec.json || fail \"cannot write spec.json\""
        );
    }
    if plan.net {
        s.push_str(&crate::net::l1_setup());
    }
    let devs: Vec<String> = (0..plan.devices.len())
        .map(|i| format!("$DEV{i}"))
        .collect();
    let _ = writeln!(s, "echo {} > $W/devices", devs.join(" "));
    for (out, words) in &plan.pre_commands {
        let words: Vec<String> = words
            .iter()
            .map(|a| shell_word(a, plan.devices.len()))
            .collect();
        let _ = writeln!(
            s,
            "chroot $R {} > $W/{out} 2> $W/{out}.err < /dev/null; echo $? > $W/{out}.rc",
            words.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "mark ready\nread up _ < /proc/uptime\nlimit=$(({} - ${{up%.*}} - {L1_TEARDOWN_SECS}))\n[ $limit -lt 10 ] && limit=10",
        plan.l0_timeout_secs
    );
    s
}

fn push_hugepages(s: &mut String, plan: &RunPlan) {
    let (Some(mount), Some(page_mib)) =
        (hugetlbfs_mount(plan.hugepages), plan.hugepages.page_mib())
    else {
        return;
    };
    let size = if page_mib == 2 { "2M" } else { "1G" };
    let kb = u64::from(page_mib) * 1024;
    let count = plan.hugepage_count;
    let nr = format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages");
    let _ = writeln!(
        s,
        "mkdir -p $R{mount} && mount -t hugetlbfs -o pagesize={size} none $R{mount} || fail \"cannot mount hugetlbfs\""
    );
    if page_mib == 2 {
        // 1 GiB pages were reserved on the kernel command line; 2 MiB ones are
        // taken now, while L1's memory is not yet fragmented.
        let _ = writeln!(s, "echo {count} > {nr}");
    }
    let _ = writeln!(
        s,
        "read got < {nr}\n[ \"$got\" -ge {count} ] || fail \"reserved $got of {count} {size} hugepages\""
    );
}

/// L2's `finish.sh`: what /init does after `TESTBED-DONE`.
pub fn l2_finish_script(scenario: &Scenario) -> String {
    format!(
        "# after the checks of scenario {} (generated)\n{}\n",
        scenario.name, scenario.l2_finish
    )
}

/// L2's `checks.sh` for `scenario`: one function per check, then `run_check`s.
pub fn l2_checks_script(scenario: &Scenario) -> String {
    let mut s = format!("# checks of scenario {} (generated)\n", scenario.name);
    for (i, check) in scenario.checks.iter().enumerate() {
        if check.broken {
            let _ = writeln!(s, "check_{i}_real() {{\n{}\n}}", check.body);
            let _ = writeln!(
                s,
                "check_{i}() {{ check_{i}_real; echo \"(deliberately failed: TESTBED_BREAK)\"; return 1; }}"
            );
        } else {
            let _ = writeln!(s, "check_{i}() {{\n{}\n}}", check.body);
        }
        let _ = writeln!(s, "run_check {} check_{i}", check.name);
    }
    if scenario.samples_vmm() {
        // L1 samples the VMM's threads and maps every second while L2 runs (before
        // TESTBED-DONE): a guest done in under a second would leave it nothing to judge.
        let _ = writeln!(s, "echo TESTBED-HOLD; sleep {L1_SAMPLE_HOLD_SECS}");
    }
    s
}

/// How long L2 stays up after its checks when L1 judges samples of the VMM taken while
/// L2 runs ([`Scenario::samples_vmm`]): several of L1's sampling periods.
pub const L1_SAMPLE_HOLD_SECS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    fn plan(devices: Vec<Device>, hugepages: HugePages) -> RunPlan {
        RunPlan {
            kernel_cache: true,
            work_dir: PathBuf::from("/repo/integration/cache/runs/x"),
            devices,
            hugepages,
            hugepage_count: 264,
            vmm_command: vec![
                "/usr/bin/qemu".into(),
                "vfio-pci,host=@DEV0@,bus=rp0".into(),
            ],
            spec_template: None,
            l0_timeout_secs: 240,
            pre_commands: Vec::new(),
            actions: Vec::new(),
            net: false,
        }
    }

    #[test]
    fn a_device_with_group_siblings_binds_them_first_and_shares_its_group() {
        let script = l1_run_script(&plan(
            vec![Device::Nvme, Device::DisplayPair],
            HugePages::Size2M,
        ));
        let sib = script.find("sib=$(find_pci 0x1234 0x11e8)");
        let dev = script.find("DEV1=$(find_pci 0x1234 0x1111)");
        assert!(sib.is_some() && sib < dev, "{script}");
        assert!(script.contains("bind_vfio $sib shared\n"));
        assert!(script.contains("bind_vfio $DEV1 shared\n"));
        assert!(script.contains("bind_vfio $DEV0\n"));
    }

    #[test]
    fn shell_word_quotes_and_expands_placeholders() {
        assert_eq!(shell_word("a b", 0), "'a b'");
        assert_eq!(shell_word("it's", 0), r"'it'\''s'");
        assert_eq!(
            shell_word("host=@DEV0@,bus=rp0", 1),
            "'host='\"$DEV0\"',bus=rp0'"
        );
        assert_eq!(shell_word("@DEV1@", 2), "\"$DEV1\"");
        assert_eq!(shell_word("", 0), "''");
    }

    #[test]
    fn run_script_finds_devices_by_id_and_binds_them() {
        let script = l1_run_script(&plan(vec![Device::Nvme], HugePages::Size2M));
        assert!(
            script.contains("DEV0=$(find_pci 0x1b36 0x0010)"),
            "{script}"
        );
        assert!(script.contains("bind_vfio $DEV0"));
        assert!(script.contains("chroot $R '/usr/bin/qemu' 'vfio-pci,host='\"$DEV0\"',bus=rp0'"));
    }

    #[test]
    fn run_script_reserves_2m_pages_at_run_time() {
        let script = l1_run_script(&plan(vec![], HugePages::Size2M));
        assert!(
            script.contains("echo 264 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
        );
        assert!(script.contains("mount -t hugetlbfs -o pagesize=2M none $R/dev/hugepages"));
    }

    #[test]
    fn run_script_only_checks_1g_pages() {
        let script = l1_run_script(&plan(vec![], HugePages::Size1G));
        assert!(!script.contains("echo 264 >"));
        assert!(script.contains("hugepages-1048576kB/nr_hugepages"));
    }

    #[test]
    fn run_script_fills_in_the_spec_template() {
        let mut p = plan(vec![Device::Nvme, Device::Bochs], HugePages::None);
        p.spec_template = Some("spec.template.json".into());
        let script = l1_run_script(&p);
        assert!(script.contains(
            "sed -e '' -e \"s/@DEV0@/$DEV0/g\" -e \"s/@SLOT0@/$SLOT0/g\" -e \"s/@DEV1@/$DEV1/g\" -e \"s/@SLOT1@/$SLOT1/g\" $W/spec.template.json > $W/spec.json"
        ));
    }

    #[test]
    fn a_whole_slot_device_binds_every_function_and_names_its_slot() {
        let script = l1_run_script(&plan(vec![Device::GpuSlot], HugePages::None));
        assert!(
            script.contains("SLOT0=${DEV0%.*}\nbind_slot $DEV0"),
            "{script}"
        );
        assert_eq!(shell_word("host=@SLOT0@.1", 1), "'host='\"$SLOT0\"'.1'");
    }

    #[test]
    fn run_script_leaves_teardown_time_before_l0_deadline() {
        let script = l1_run_script(&plan(vec![], HugePages::None));
        assert!(script.contains("limit=$((240 - ${up%.*} - 20))"));
    }

    #[test]
    fn bench_script_runs_the_agent_with_a_deadline_and_no_polling() {
        let mut p = plan(vec![Device::Nvme], HugePages::Size2M);
        p.vmm_command = vec![
            "/repo/target/release/testbed".into(),
            "l1-agent".into(),
            "--device".into(),
            "@DEV0@".into(),
        ];
        let script = l1_bench_script(&p);
        assert!(script.contains(
            "chroot $R '/repo/target/release/testbed' 'l1-agent' '--device' \"$DEV0\" --deadline-secs $((limit - 15)) < /dev/null > $W/agent.log 2>&1 &"
        ), "{script}");
        assert!(script.contains("bind_vfio $DEV0"));
        assert!(!script.contains("usleep"));
        assert!(script.ends_with("poweroff -f\n"));
    }

    #[test]
    fn run_script_runs_each_action_once_after_its_marker() {
        let mut p = plan(vec![], HugePages::None);
        p.actions = vec![L1Action {
            after: "TESTBED-BUTTON-READY".into(),
            run: "kill -TERM $vmm".into(),
        }];
        let script = l1_run_script(&p);
        assert!(script.contains("VMM_BIN='/usr/bin/qemu'"), "{script}");
        assert!(script.contains(
            "if [ -z \"$act0\" ] && grep -qF 'TESTBED-BUTTON-READY' /tmp/l2-console.log; then act0=1; mark action-0; ( kill -TERM $vmm\n) >> $W/l1-actions.log 2>&1 & fi"
        ), "{script}");
        let (def, call) = (
            script.find("l1_actions() {").unwrap(),
            script.find("\tl1_actions\n").unwrap(),
        );
        assert!(def < call);
    }

    #[test]
    fn l2_init_runs_the_finish_script_after_done() {
        let done = L2_INIT.find("TESTBED-DONE").unwrap();
        assert!(L2_INIT[done..].contains(". /etc/testbed/finish.sh"));
        let s = l2_finish_script(&scenario::graceful_shutdown());
        assert!(s.contains("acpid -c /etc/acpi"));
    }

    #[test]
    fn checks_script_runs_each_check_by_name() {
        let script = l2_checks_script(&scenario::nvme());
        assert!(script.contains("run_check nvme-bound check_0"));
        assert!(script.contains("run_check nvme-msix check_2"));
    }

    #[test]
    fn a_guest_whose_vmm_l1_samples_stays_up_for_the_samples() {
        let hold = format!("sleep {L1_SAMPLE_HOLD_SECS}");
        assert!(l2_checks_script(&scenario::hostile()).ends_with(&format!("{hold}\n")));
        assert!(l2_checks_script(&scenario::numa_auto()).contains(&hold));
        assert!(!l2_checks_script(&scenario::nvme()).contains(&hold));
    }

    #[test]
    fn broken_check_still_runs_then_fails() {
        let script = l2_checks_script(&scenario::nvme().with_broken_check());
        assert!(script.contains("check_0() { check_0_real; echo"));
        assert!(script.contains("return 1; }"));
    }
}
