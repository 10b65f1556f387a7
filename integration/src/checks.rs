//! The guest-side (L2) checks, as busybox shell. Each check is the body of a
//! shell function that prints one line of detail and returns 0 for PASS; the
//! L2 /init runs them in order and prints `TESTBED-CHECK <name> PASS|FAIL
//! <detail>` for each (see `scripts.rs`). Devices are found by PCI
//! vendor:device id, never by address, because each VMM numbers buses its own way.

use crate::device::Device;

/// One guest-side check: a shell function body (the functions below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Name printed in the `TESTBED-CHECK` marker; no spaces.
    pub name: String,
    /// Shell function body: prints one line of detail, returns 0 on success.
    pub body: String,
    /// Forces the check to FAIL after running it (proves failure reporting).
    pub broken: bool,
}

/// The value the `ivshmem-bar` check writes at offset 0 of ivshmem's BAR2;
/// the host reads it back from the backing file after L0 exits.
pub const IVSHMEM_MAGIC: u32 = 0x5712_A17E;

/// Shell helpers sourced by L2's /init before the checks run.
pub const L2_LIB: &str = r#"# testbed helpers for the L2 checks (busybox sh)
find_pci() { # VENDOR DEVICE -> sysfs directory of the first match
	for d in /sys/bus/pci/devices/*; do
		[ -e "$d/vendor" ] || continue
		read v < "$d/vendor"; read i < "$d/device"
		if [ "$v" = "$1" ] && [ "$i" = "$2" ]; then echo "$d"; return 0; fi
	done
	return 1
}
wait_for() { # PATH SECONDS
	n=0
	while [ ! -e "$1" ]; do
		[ $n -ge $(($2 * 10)) ] && return 1
		n=$((n + 1)); usleep 100000
	done
}
driver_of() { [ -e "$1/driver" ] && basename "$(readlink "$1/driver")"; }
irq_total() { # sums the per-CPU counts of one /proc/interrupts line
	set -- $1; shift; t=0
	for c in "$@"; do case $c in *[!0-9]*) break;; esac; t=$((t + c)); done
	echo $t
}
bar_start() { sed -n "$(($2 + 1))p" "$1/resource" | cut -d' ' -f1; }
pci_map() { # one TESTBED-PCI line per function: address, id, non-empty resources
	for d in /sys/bus/pci/devices/*; do
		read v < "$d/vendor"; read i < "$d/device"
		r=$(awk '$1 != "0x0000000000000000" { printf "%d:%s-%s ", NR - 1, $1, $2 }' "$d/resource")
		echo "TESTBED-PCI ${d##*/} $v:$i $r"
	done
}
run_check() { # NAME FUNCTION
	if detail=$($2 2>&1); then status=PASS; else status=FAIL; FAILED=$((FAILED + 1)); fi
	echo "TESTBED-CHECK $1 $status $(echo "$detail" | tr '\n' ' ')"
}
"#;

fn pci_lookup(device: Device) -> String {
    let (vendor, id) = device.pci_id();
    format!(
        "d=$(find_pci 0x{vendor:04x} 0x{id:04x}) || {{ echo \"no {} ({vendor:04x}:{id:04x}) on the PCI bus\"; return 1; }}\n",
        device.name()
    )
}

fn check(name: &str, body: String) -> Check {
    Check {
        name: name.to_string(),
        body,
        broken: false,
    }
}

/// The ACPI power button is there: the Generic Event Device (ACPI0013) and the
/// control method power button (PNP0C0C) in the namespace, and an input device
/// "Power Button" from the `button` driver for acpid to read.
pub fn power_button_device() -> Check {
    let body = r#"[ -e /sys/bus/acpi/devices/ACPI0013:00 ] || { echo "no ACPI0013 (GED) in /sys/bus/acpi/devices"; return 1; }
[ -e /sys/bus/acpi/devices/PNP0C0C:00 ] || { echo "no PNP0C0C (power button) in /sys/bus/acpi/devices"; return 1; }
grep -q "Power Button" /proc/bus/input/devices || { echo "no Power Button input device: $(grep Name= /proc/bus/input/devices | tr '
' ' ')"; return 1; }
ls /dev/input/event* >/dev/null 2>&1 || { echo "no /dev/input/event*"; return 1; }
echo "GED and PNP0C0C present; input: $(grep -l . /sys/class/input/event*/device/name 2>/dev/null | wc -l) event devices""#;
    check("power-button", body.to_string())
}

/// Whether every device in the `GET /vm` answer that `strait ctl info` printed into
/// L1's action log (after `== info`) sits, in L2's PCI map (`TESTBED-PCI` lines), at its
/// guest address with its vendor:device id; and the detail line.
pub fn api_devices_match(actions_log: &str, l2_console: &str) -> (bool, String) {
    let Some(start) = actions_log.find("== info\n") else {
        return (
            false,
            "no `strait ctl info` output in l1-actions.log".into(),
        );
    };
    let text = &actions_log[start + "== info\n".len()..];
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    let info = match stream.next() {
        Some(Ok(v)) => v,
        other => {
            return (
                false,
                format!("`strait ctl info` printed no JSON: {other:?}"),
            )
        }
    };
    let Some(devices) = info["devices"].as_array().filter(|d| !d.is_empty()) else {
        return (false, format!("no devices in GET /vm: {info}"));
    };
    let mut seen = Vec::new();
    for d in devices {
        let (guest, host) = (
            d["guest"].as_str().unwrap_or("?"),
            d["host"].as_str().unwrap_or("?"),
        );
        let id = format!(
            "{}:{}",
            d["vendor_id"].as_str().unwrap_or("?"),
            d["device_id"].as_str().unwrap_or("?")
        );
        let line = format!("TESTBED-PCI {guest} {id}");
        if !l2_console.lines().any(|l| l.starts_with(&line)) {
            return (
                false,
                format!("API says host {host} is guest {guest} ({id}); L2 has no `{line}`"),
            );
        }
        seen.push(format!("{host} -> {guest} ({id})"));
    }
    (
        true,
        format!(
            "L2 sees every API device at its guest address: {}",
            seen.join(", ")
        ),
    )
}

/// The first `strait: timeline: <phase>=<ms>ms` mark of `phase` in Strait's log, in ms.
pub fn timeline_mark(log: &str, phase: &str) -> Option<f64> {
    let prefix = format!("strait: timeline: {phase}=");
    log.lines().find_map(|l| {
        let rest = &l[l.find(&prefix)? + prefix.len()..];
        rest.trim_end().strip_suffix("ms")?.parse().ok()
    })
}

/// Whether Strait's timeline marks `first` before `then`, and the detail line.
pub fn timeline_order(log: &str, first: &str, then: &str) -> (bool, String) {
    match (timeline_mark(log, first), timeline_mark(log, then)) {
        (Some(a), Some(b)) => (
            a < b,
            format!("{first}={a:.1}ms, {then}={b:.1}ms ({:+.1} ms)", b - a),
        ),
        (a, b) => (
            false,
            format!("timeline lacks a mark: {first}={a:?}, {then}={b:?}"),
        ),
    }
}

/// The largest step between consecutive `TESTBED-TICK <uptime>` lines of L2's console,
/// in seconds (0 with fewer than two ticks).
pub fn largest_tick_gap(l2_console: &str) -> f64 {
    let ticks: Vec<f64> = l2_console
        .lines()
        .filter_map(|l| l.split("TESTBED-TICK ").nth(1))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// L2's virtio-net (1af4:1041, modern) has an interface, which takes L2's address and
/// reaches L1 across the tap.
pub fn net_link() -> Check {
    use crate::net::{L1_ADDR, L2_ADDR};
    let body = format!(
        r#"d=$(find_pci 0x1af4 0x1041) || {{ echo "no virtio-net (1af4:1041) on the PCI bus"; return 1; }}
n=$(ls $d/virtio*/net 2>/dev/null | head -n 1)
[ -n "$n" ] || {{ echo "no network interface under $d (driver $(driver_of $d))"; return 1; }}
ip link set $n up && ip addr add {L2_ADDR}/24 dev $n || {{ echo "cannot configure $n"; return 1; }}
i=0
until ping -c 1 -W 1 {L1_ADDR} >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -ge 30 ] && {{ echo "$n cannot reach {L1_ADDR}"; return 1; }}
done
echo "$n $(cat /sys/class/net/$n/address) reaches {L1_ADDR}; features $(cat $d/virtio*/features)""#
    );
    check("net-link", body)
}

/// Shell printing "BYTES in SECS s (RATE MiB/s)" from `$size`, `$t0`, `$t1`.
const RATE: &str = r#"awk -v b=$size -v a=$t0 -v z=$t1 'BEGIN { d = z - a; if (d <= 0) d = 0.01; printf "%d bytes in %.1f s (%.1f MiB/s)", b, d, b / 1048576 / d }'"#;

/// L1 -> L2: the 64 MiB file L1 serves arrives with L1's md5.
pub fn net_download() -> Check {
    use crate::net::{L1_ADDR, TRANSFER_MIB};
    let bytes = u64::from(TRANSFER_MIB) << 20;
    let body = format!(
        r#"read t0 _ < /proc/uptime
wget -q -O /tmp/down.bin http://{L1_ADDR}/down.bin || {{ echo "wget from L1 failed"; return 1; }}
read t1 _ < /proc/uptime
want=$(wget -q -O - http://{L1_ADDR}/down.md5)
got=$(md5sum /tmp/down.bin | cut -d' ' -f1)
size=$(wc -c < /tmp/down.bin)
rm -f /tmp/down.bin
echo "L1 -> L2 $({RATE}), md5 $got, L1's $want"
[ "$got" = "$want" ] && [ "$size" = {bytes} ]"#
    );
    check("net-l1-to-l2", body)
}

/// L2 -> L1: L2 serves 64 MiB; L1 (an action) fetches it and publishes the md5.
pub fn net_upload() -> Check {
    use crate::net::{L1_ADDR, TRANSFER_MIB, UPLOAD_READY};
    let body = format!(
        r#"mkdir -p /tmp/up && dd if=/dev/urandom of=/tmp/up/up.bin bs=1M count={TRANSFER_MIB} 2>/dev/null || {{ echo "cannot write the file"; return 1; }}
want=$(md5sum /tmp/up/up.bin | cut -d' ' -f1)
httpd -p 8080 -h /tmp/up || {{ echo "cannot start httpd"; return 1; }}
echo {UPLOAD_READY} > /dev/console
i=0
until wget -q -O /tmp/up.md5 http://{L1_ADDR}/up.md5 2>/dev/null; do
	i=$((i + 1)); [ $i -ge 300 ] && {{ echo "L1 published no md5 in 300 s"; return 1; }}
	sleep 1
done
got=$(cat /tmp/up.md5)
set -- $(wget -q -O - http://{L1_ADDR}/up.stat); size=$1; t0=$2; t1=$3
echo "L2 -> L1 $({RATE}), L1 got md5 $got, L2's $want"
[ "$got" = "$want" ]"#
    );
    check("net-l2-to-l1", body)
}

/// virtio-blk's /dev/vda appeared and its ext4 filesystem mounts on /newroot, with an
/// /init to switch to (L2's /init then `switch_root`s there when every check passed).
pub fn root_disk_mount() -> Check {
    let body = r#"wait_for /dev/vda 30 || { echo "no /dev/vda after 30 s: $(ls /sys/bus/virtio/devices 2>&1)"; return 1; }
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || { echo "cannot mount /dev/vda as ext4"; return 1; }
[ -x /newroot/init ] || { echo "no /init on /dev/vda"; return 1; }
serial=$(cat /sys/block/vda/serial 2>/dev/null)
echo "/dev/vda ($(cat /sys/block/vda/size) sectors, serial '$serial') mounted on /newroot""#;
    check("root-disk-mount", body.to_string())
}

/// `hostile` (the guest tool) ran to the end: the VMM answered every abuse and the
/// guest is still alive. Its per-function summary is the detail.
pub fn hostile() -> Check {
    let body = r#"out=$(/bin/hostile --rounds 2000 2>&1); rc=$?
echo "$out" | tail -n 8
[ $rc = 0 ]"#;
    check("hostile", body.to_string())
}

/// The stock nvme driver bound the controller and created /dev/nvme0n1.
pub fn nvme_bound() -> Check {
    let mut body = pci_lookup(Device::Nvme);
    body.push_str(
        r#"wait_for /dev/nvme0n1 30 || { echo "${d##*/}: no /dev/nvme0n1 after 30 s, driver '$(driver_of $d)'"; return 1; }
drv=$(driver_of $d)
[ "$drv" = nvme ] || { echo "${d##*/} bound to '$drv', want nvme"; return 1; }
echo "${d##*/} bound to nvme, /dev/nvme0n1 present""#,
    );
    check("nvme-bound", body)
}

/// 1 MiB of random data written to the namespace, caches dropped, read back
/// with O_DIRECT and compared.
pub fn nvme_pattern() -> Check {
    let body = r#"[ -b /dev/nvme0n1 ] || { echo "/dev/nvme0n1 missing"; return 1; }
dd if=/dev/urandom of=/tmp/pattern bs=64k count=16 2>/dev/null || { echo "cannot make a pattern"; return 1; }
dd if=/tmp/pattern of=/dev/nvme0n1 bs=64k oflag=direct conv=fsync 2>/tmp/dd.err || { echo "write failed: $(cat /tmp/dd.err)"; return 1; }
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/nvme0n1 of=/tmp/readback bs=64k count=16 iflag=direct 2>/tmp/dd.err || { echo "read failed: $(cat /tmp/dd.err)"; return 1; }
want=$(md5sum < /tmp/pattern); got=$(md5sum < /tmp/readback)
[ "$want" = "$got" ] || { echo "read back ${got%% *}, wrote ${want%% *}"; return 1; }
echo "1 MiB random pattern round-tripped through /dev/nvme0n1 (md5 ${want%% *})""#;
    check("nvme-pattern", body.to_string())
}

/// The controller uses MSI-X: vectors of kind msix in sysfs, and the admin
/// queue's interrupt (nvme0q0) on an MSI chip in /proc/interrupts has fired.
pub fn nvme_msix() -> Check {
    let mut body = pci_lookup(Device::Nvme);
    body.push_str(
        r#"n=0
for f in $d/msi_irqs/*; do [ -f "$f" ] && [ "$(cat $f)" = msix ] && n=$((n + 1)); done
line=$(grep nvme0q0 /proc/interrupts) || { echo "no nvme0q0 in /proc/interrupts"; return 1; }
total=$(irq_total "$line")
case "$line" in *MSI*) ;; *) echo "nvme0q0 not on an MSI chip: $line"; return 1;; esac
[ $n -gt 0 ] || { echo "no MSI-X vectors in ${d##*/}/msi_irqs: $line"; return 1; }
[ $total -gt 0 ] || { echo "nvme0q0 never fired: $line"; return 1; }
echo "$n MSI-X vectors; nvme0q0 fired $total times:" $line"#,
    );
    check("nvme-msix", body)
}

/// With `pci=nomsi` the controller falls back to INTx, delivered through an
/// IO-APIC pin.
pub fn nvme_intx() -> Check {
    let mut body = pci_lookup(Device::Nvme);
    body.push_str(
        r#"ls $d/msi_irqs 2>/dev/null | grep -q . && { echo "MSI vectors allocated despite pci=nomsi"; return 1; }
line=$(grep nvme0q0 /proc/interrupts) || { echo "no nvme0q0 in /proc/interrupts"; return 1; }
total=$(irq_total "$line")
case "$line" in *IO-APIC*) ;; *) echo "nvme0q0 not on an IO-APIC pin: $line"; return 1;; esac
[ $total -gt 0 ] || { echo "nvme0q0 never fired: $line"; return 1; }
echo "INTx: nvme0q0 fired $total times:" $line"#,
    );
    check("nvme-intx", body)
}

/// The guest sees exactly `vcpus` processors.
pub fn cpus(vcpus: u32) -> Check {
    let body = format!(
        r#"n=$(grep -c '^processor' /proc/cpuinfo)
[ "$n" = {vcpus} ] || {{ echo "saw $n CPUs in /proc/cpuinfo, want {vcpus}"; return 1; }}
echo "$n CPUs in /proc/cpuinfo""#
    );
    check("cpus", body)
}

/// The guest's LAPIC timer runs in TSC-deadline mode: the VMM announced the feature
/// (CPUID.01H:ECX[24]) and the kernel took it, instead of calibrating the LAPIC timer.
pub fn tsc_deadline() -> Check {
    let body = r#"dmesg | grep -q 'TSC deadline timer available' || { echo "dmesg lacks 'TSC deadline timer available' (cpuinfo flag: '$(grep -o -m1 -w tsc_deadline_timer /proc/cpuinfo)')"; return 1; }
echo "TSC deadline timer available""#;
    check("tsc-deadline", body.to_string())
}

/// The kernel found an MP floating pointer in its early scan (Strait's at 0x9fc00, the
/// EBDA, where the scan's second step finds it; QEMU's SeaBIOS one in the BIOS area): the
/// scan ended early instead of walking all its areas. The detail gives the address.
pub fn mp_table() -> Check {
    let body = r#"line=$(dmesg | grep -m1 'found SMP MP-table at') || { echo "dmesg lacks 'found SMP MP-table at': the kernel scanned every area and found no MP table"; return 1; }
echo "${line#*] }""#;
    check("mp-table", body.to_string())
}

/// L2 believes it runs on bare metal: no `hypervisor` flag in /proc/cpuinfo and no
/// "Hypervisor detected" in dmesg. The detail names the clock source it chose instead
/// of kvm-clock.
pub fn no_hypervisor() -> Check {
    let body = r#"grep -q -w hypervisor /proc/cpuinfo && { echo "/proc/cpuinfo has the hypervisor flag"; return 1; }
hv=$(dmesg | grep 'Hypervisor detected') && { echo "dmesg: $hv"; return 1; }
cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
[ "$cs" != kvm-clock ] || { echo "clock source is kvm-clock"; return 1; }
echo "no hypervisor flag, no 'Hypervisor detected', clock source $cs; $(dmesg | grep -i -m4 'tsc' | sed 's/^\[[^]]*\] //' | tr '\n' ';')""#;
    check("no-hypervisor", body.to_string())
}

/// L2 has `nodes` NUMA nodes, node `i` with CPU `i` and about `memory_mib / nodes` of RAM
/// (at least half of it: the kernel's own reservations sit on node 0), and a SLIT
/// distance row per node.
pub fn numa_nodes(nodes: u32, memory_mib: u32) -> Check {
    let low = u64::from(memory_mib / nodes) * 1024 / 2;
    let body = format!(
        r#"n=$(ls -d /sys/devices/system/node/node[0-9]* | wc -l)
[ "$n" = {nodes} ] || {{ echo "$n NUMA nodes, want {nodes} ($(dmesg | grep -i -m2 'srat\|numa' | tr '
' ';'))"; return 1; }}
out=""
i=0
while [ $i -lt {nodes} ]; do
	d=/sys/devices/system/node/node$i
	c=$(cat $d/cpulist)
	[ "$c" = $i ] || {{ echo "node$i has CPUs '$c', want $i"; return 1; }}
	kb=$(awk '/MemTotal/ {{ print $4 }}' $d/meminfo)
	[ "$kb" -ge {low} ] || {{ echo "node$i has $kb kB, want at least {low}"; return 1; }}
	out="$out node$i: CPU $c, $kb kB, distances $(cat $d/distance);"
	i=$((i + 1))
done
echo "$out""#
    );
    check("numa-nodes", body)
}

/// `device`'s `numa_node` in L2 is `node`.
pub fn device_node(device: Device, node: u32) -> Check {
    let mut body = pci_lookup(device);
    body.push_str(&format!(
        r#"n=$(cat $d/numa_node)
[ "$n" = {node} ] || {{ echo "${{d##*/}} numa_node $n, want {node}"; return 1; }}
echo "${{d##*/}} numa_node $n""#
    ));
    check(&format!("{}-node", device.name()), body)
}

/// MemTotal lies between 80% and 100% of the configured RAM (the kernel
/// keeps its image and early reservations out of MemTotal).
pub fn memory(memory_mib: u32) -> Check {
    let high = u64::from(memory_mib) * 1024;
    let low = high * 80 / 100;
    let body = format!(
        r#"kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
[ "$kb" -ge {low} ] && [ "$kb" -le {high} ] || {{ echo "MemTotal $kb kB, want {low}..{high} kB for {memory_mib} MiB"; return 1; }}
echo "MemTotal $kb kB for {memory_mib} MiB""#
    );
    check("memory", body)
}

/// The stock bochs-drm driver bound the display and created /dev/dri/card0.
pub fn bochs_drm() -> Check {
    let mut body = pci_lookup(Device::Bochs);
    body.push_str(
        r#"wait_for /dev/dri/card0 30 || { echo "${d##*/}: no /dev/dri/card0 after 30 s, driver '$(driver_of $d)'"; return 1; }
drv=$(driver_of $d)
[ "$drv" = bochs-drm ] || { echo "${d##*/} bound to '$drv', want bochs-drm"; return 1; }
echo "${d##*/} bound to bochs-drm, /dev/dri/card0 present""#,
    );
    check("bochs-drm", body)
}

/// L2 resets the display itself through sysfs: the kernel finds no FLR or PM reset on
/// it and sets Secondary Bus Reset on its root port (Strait's), the reset Strait turns
/// into a VFIO (hot) reset of the host function. The function must answer afterwards
/// with its vendor ID and keep its driver.
pub fn guest_bus_reset() -> Check {
    let mut body = pci_lookup(Device::Bochs);
    body.push_str(
        r#"m=$(cat $d/reset_method 2>/dev/null)
echo 1 > $d/reset || { echo "${d##*/}: reset failed (reset_method '$m')"; return 1; }
read v < $d/vendor
[ "$v" = 0x1234 ] || { echo "${d##*/}: vendor $v after the reset"; return 1; }
drv=$(driver_of $d)
[ "$drv" = bochs-drm ] || { echo "${d##*/}: on '$drv' after the reset"; return 1; }
echo "${d##*/} reset by L2 (reset_method '$m'), vendor $v, still on $drv""#,
    );
    check("guest-bus-reset", body)
}

/// The GPU-like slot's HD-audio function sits in the display's slot as function 1
/// and the stock snd_hda_intel driver bound it.
pub fn hda_in_display_slot() -> Check {
    let (vendor, id) = Device::HDA_ID;
    let mut body = pci_lookup(Device::GpuSlot);
    body.push_str(&format!(
        r#"h=$(find_pci 0x{vendor:04x} 0x{id:04x}) || {{ echo "no HD-audio function ({vendor:04x}:{id:04x}) on the PCI bus"; return 1; }}
[ "${{h%.*}}" = "${{d%.*}}" ] && [ "${{d##*.}}" = 0 ] && [ "${{h##*.}}" = 1 ] || {{ echo "display ${{d##*/}} and audio ${{h##*/}} are not functions 0 and 1 of one slot"; return 1; }}
n=0; while [ "$(driver_of $h)" != snd_hda_intel ] && [ $n -lt 100 ]; do n=$((n + 1)); usleep 100000; done
drv=$(driver_of $h)
[ "$drv" = snd_hda_intel ] || {{ echo "${{h##*/}} bound to '$drv', want snd_hda_intel"; return 1; }}
echo "${{d##*/}} display and ${{h##*/}} audio in one slot, audio bound to snd_hda_intel""#
    ));
    check("hda-slot", body)
}

/// ivshmem's 8 GiB BAR2 sits above 4 GiB and a word written through it
/// reads back (the host later finds it in the backing file).
pub fn ivshmem_bar() -> Check {
    let mut body = pci_lookup(Device::Ivshmem);
    body.push_str(&format!(
        r#"bar=$(bar_start $d 2)
[ $((bar)) -ge $((0x100000000)) ] || {{ echo "BAR2 at $bar, want above 4 GiB"; return 1; }}
echo 1 > $d/enable
devmem $bar 32 0x{IVSHMEM_MAGIC:08X} || {{ echo "devmem write to $bar failed"; return 1; }}
got=$(devmem $bar 32)
[ $((got)) -eq $((0x{IVSHMEM_MAGIC:08X})) ] || {{ echo "read back '$got' from BAR2 at $bar"; return 1; }}
echo "BAR2 at $bar, wrote and read back 0x{IVSHMEM_MAGIC:08X}""#
    ));
    check("ivshmem-bar", body)
}

/// QEMU's edu device answers on BAR0: its identification register ends in
/// 0xed and its liveness register returns the inverse of what was written.
pub fn edu_mmio() -> Check {
    let mut body = pci_lookup(Device::Edu);
    body.push_str(
        r#"bar=$(bar_start $d 0)
echo 1 > $d/enable
id=$(devmem $bar 32)
[ $((id & 0xff)) -eq $((0xed)) ] || { echo "identification register '$id' at $bar, want 0x..0000ED"; return 1; }
devmem $((bar + 4)) 32 0x12345678
live=$(devmem $((bar + 4)) 32)
[ $((live)) -eq $((0xEDCBA987)) ] || { echo "liveness register read '$live', want 0xEDCBA987"; return 1; }
echo "BAR0 at $bar: id $id, liveness inverted 0x12345678 to $live""#,
    );
    check("edu-mmio", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lookup_uses_vendor_and_device_ids() {
        assert!(nvme_bound().body.contains("find_pci 0x1b36 0x0010"));
        assert!(bochs_drm().body.contains("find_pci 0x1234 0x1111"));
    }

    #[test]
    fn ivshmem_check_writes_the_magic() {
        assert!(ivshmem_bar().body.contains("devmem $bar 32 0x5712A17E"));
    }

    #[test]
    fn api_devices_are_found_in_l2s_pci_map() {
        let log = "== info\n{\"devices\": [{\"host\": \"0000:00:03.0\", \"guest\": \"0000:01:00.0\",\n \"vendor_id\": \"0x1b36\", \"device_id\": \"0x0010\"}]}\nctl-info-rc=0\n";
        let l2 = "TESTBED-PCI 0000:00:01.0 0x1b36:0x000c 0:...\nTESTBED-PCI 0000:01:00.0 0x1b36:0x0010 0:0xc0000000-0xc0003fff\n";
        assert!(api_devices_match(log, l2).0);
        let wrong = l2.replace("0000:01:00.0", "0000:02:00.0");
        assert!(!api_devices_match(log, &wrong).0);
        assert!(!api_devices_match("nothing", l2).0);
    }

    #[test]
    fn tick_gap_is_the_largest_step() {
        let c = "TESTBED-TICK 10.00\nTESTBED-TICK 10.20\nnoise\nTESTBED-TICK 14.90\nTESTBED-TICK 15.10\n";
        assert!((largest_tick_gap(c) - 4.7).abs() < 1e-9);
        assert_eq!(largest_tick_gap("TESTBED-TICK 1.0"), 0.0);
    }

    #[test]
    fn memory_bounds_are_in_kib() {
        let body = memory(512).body;
        assert!(body.contains("-ge 419430"), "{body}");
        assert!(body.contains("-le 524288"), "{body}");
    }

    #[test]
    fn check_lib_prints_the_marker_format() {
        assert!(L2_LIB.contains("echo \"TESTBED-CHECK $1 $status"));
    }

    #[test]
    fn timeline_order_reads_the_first_marks() {
        let log = "strait: timeline: memory_ready=10.0ms\nguest text\nstrait: timeline: vcpus_started=120.5ms\nstrait: timeline: dma_mapped=300.0ms\nstrait: timeline: vcpus_started=900.0ms\n";
        assert_eq!(timeline_mark(log, "vcpus_started"), Some(120.5));
        let (passed, detail) = timeline_order(log, "vcpus_started", "dma_mapped");
        assert!(passed, "{detail}");
        assert!(!timeline_order(log, "dma_mapped", "vcpus_started").0);
    }

    #[test]
    fn a_missing_mark_fails_the_order() {
        let (passed, detail) = timeline_order(
            "strait: timeline: vcpus_started=1.0ms",
            "vcpus_started",
            "dma_mapped",
        );
        assert!(!passed);
        assert!(detail.contains("dma_mapped=None"), "{detail}");
    }
}
