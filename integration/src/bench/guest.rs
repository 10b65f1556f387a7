//! What the benchmark runs inside L2: a /init that prints its marker, says
//! whether the passed-through nvme controller is on its PCI bus and, in `nvme`
//! mode, binds the stock driver and runs `iobench` (sequential 64 KiB, then
//! random 4 KiB reads, O_DIRECT, several in flight) before powering off; in
//! `blk` mode it does the same on the virtio-blk disk /dev/vda. In `net` mode it
//! brings up the virtio-net interface, prints its negotiated feature bits, waits
//! until L1's address answers and runs `netbench` against the peer the agent runs
//! in L1 (sending, then receiving, `testbed.iosecs` seconds each). In
//! `reboot` mode it binds nvme and looks for its launch's token in a block of the
//! namespace: absent (first boot), it writes it and reboots; present (second boot,
//! in the same VMM process), it clears it and powers off. In `initcall` mode it
//! prints its kernel log (`dmesg`) between two markers first; in `hold` mode it never
//! powers off (the agent stops the VMM); in `bar` mode it runs `bartouch` over the
//! first GiB of ivshmem's BAR2 (`src/bin/bartouch.rs`). The mode, load and launch
//! id come from L2's command line (`testbed.bench=boot|initcall|nvme|blk|reboot|hold|bar`,
//! `testbed.iosecs=`, `testbed.qd=`, `testbed.launch=`), so one image serves every
//! launch.
//! `iobench` (src/bin/iobench.rs) and `netbench` (src/bin/netbench.rs) are
//! compiled here, statically, with rustc.

use std::path::{Path, PathBuf};

use crate::bench::initcalls;
use crate::bench::plan::{READY_MARKER, REBOOTING_MARKER, SECOND_BOOT_MARKER};
use crate::device::Device;
use crate::error::Result;
use crate::images::Cache;
use crate::net::{BENCH_PORT, L1_ADDR, L2_ADDR};

/// The 4 KiB block of the nvme namespace that carries a reboot launch's token, 8 MiB
/// in (iobench only reads the namespace).
const TOKEN_BLOCK: u32 = 2048;

/// How much of ivshmem's BAR the `bar` launch touches, from its start: on Linux 6.1
/// every 4 KiB page is a nested page fault to L1's KVM, and the whole 8 GiB did not
/// finish in 350 s on the testbed.
pub const BAR_TOUCH_MIB: u32 = 1024;

/// iobench's source, compiled into a static executable for L2.
const IOBENCH_SOURCE: &str = include_str!("../bin/iobench.rs");
/// netbench's source: the net launch's client in L2 and its peer in L1.
const NETBENCH_SOURCE: &str = include_str!("../bin/netbench.rs");

/// L2's /init for the benchmark.
pub fn l2_init() -> String {
    let (vendor, device) = Device::Nvme.pci_id();
    let (shm_vendor, shm_device) = Device::Ivshmem.pci_id();
    let dump = initcalls::dump_script();
    format!(
        r#"#!/bin/sh
echo TESTBED-INIT
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode=boot; secs=4; qd=4; launch=none
for w in $(cat /proc/cmdline); do
	case $w in
	testbed.bench=*) mode=${{w#*=}};;
	testbed.iosecs=*) secs=${{w#*=}};;
	testbed.qd=*) qd=${{w#*=}};;
	testbed.launch=*) launch=${{w#*=}};;
	esac
done
[ "$mode" = initcall ] && {{
{dump}}}
wait_dev() {{ # DEV: load the modules, wait up to 30 s for the block device DEV
	while read m; do insmod /lib/modules/$m || echo "TESTBED-BENCH insmod $m failed"; done < /etc/testbed/modules
	n=0
	while [ ! -b $1 ] && [ $n -lt 300 ]; do usleep 100000; n=$((n + 1)); done
	[ -b $1 ] && return 0
	echo "TESTBED-BENCH error: no $1 after 30 s"
	return 1
}}
net_up() {{ # load the modules, configure the first interface, wait for L1's address
	while read m; do insmod /lib/modules/$m || echo "TESTBED-BENCH insmod $m failed"; done < /etc/testbed/modules
	n=0; i=none
	while [ $i = none ] && [ $n -lt 300 ]; do
		for d in /sys/class/net/*; do [ "${{d##*/}}" != lo ] && [ -e "$d" ] && i=${{d##*/}}; done
		[ $i = none ] && usleep 100000; n=$((n + 1))
	done
	[ $i = none ] && {{ echo "TESTBED-BENCH error: no network interface after 30 s"; return 1; }}
	ip link set $i up && ip addr add {L2_ADDR}/24 dev $i || {{ echo "TESTBED-BENCH error: cannot configure $i"; return 1; }}
	echo "TESTBED-BENCH net $i features=$(cat /sys/class/net/$i/device/features)"
	n=0
	until ping -c 1 -W 1 {L1_ADDR} >/dev/null 2>&1; do
		n=$((n + 1)); [ $n -ge 30 ] && {{ echo "TESTBED-BENCH error: $i cannot reach {L1_ADDR}"; return 1; }}
	done
	return 0
}}
nvme=none
for d in /sys/bus/pci/devices/*; do
	[ -e "$d/vendor" ] || continue
	read v < "$d/vendor"; read i < "$d/device"
	[ "$v:$i" = "0x{vendor:04x}:0x{device:04x}" ] && nvme=${{d##*/}}
done
echo "TESTBED-BENCH mode=$mode nvme=$nvme"
dev=none
[ "$mode" = nvme ] && [ "$nvme" != none ] && dev=/dev/nvme0n1
[ "$mode" = blk ] && dev=/dev/vda
if [ "$dev" != none ] && wait_dev $dev; then
	echo "TESTBED-BENCH ready"
	iobench --mode seq --bs 65536 --qd $qd --secs $secs $dev
	iobench --mode rand --bs 4096 --qd $qd --secs $secs $dev
fi
if [ "$mode" = net ] && net_up; then
	echo "{READY_MARKER}"
	netbench client --server {L1_ADDR}:{BENCH_PORT} --secs $secs
	# Where the interrupts went (per queue vector), for the report's data-path table.
	grep virtio /proc/interrupts | while read l; do echo "TESTBED-BENCH irq $l"; done
	# TCP's own view: segments sent and retransmitted (losses on the path show here).
	grep '^Tcp:' /proc/net/snmp | tail -n 1 | while read _ _ _ _ _ _ _ _ _ _ _ o r _; do echo "TESTBED-BENCH tcp out=$o retrans=$r"; done
fi
if [ "$mode" = reboot ] && [ "$nvme" != none ] && wait_dev /dev/nvme0n1; then
	t="TESTBED-REBOOT-$launch"
	m=$(dd if=/dev/nvme0n1 bs=4k skip={TOKEN_BLOCK} count=1 iflag=direct 2>/dev/null | head -c ${{#t}})
	if [ "$m" = "$t" ]; then
		dd if=/dev/zero of=/dev/nvme0n1 bs=4k seek={TOKEN_BLOCK} count=1 oflag=direct 2>/dev/null
		echo "{SECOND_BOOT_MARKER}"
	else
		printf %s "$t" | dd of=/dev/nvme0n1 bs=4k seek={TOKEN_BLOCK} count=1 conv=sync oflag=direct 2>/dev/null
		echo "{REBOOTING_MARKER}"
		reboot -f
	fi
fi
if [ "$mode" = bar ]; then
	echo "TESTBED-BENCH ready"
	bartouch --device {shm_vendor:04x}:{shm_device:04x} --bar 2 --mib {BAR_TOUCH_MIB} || echo "TESTBED-BENCH error: bartouch failed"
fi
# hold: stay up until the agent stops the VMM (Strait's RAM setup in the launch series)
[ "$mode" = hold ] && while :; do sleep 60; done
echo TESTBED-DONE
poweroff -f
"#
    )
}

pub use crate::images::rustc_version;

/// The arguments that build `source` into a static, stripped `output`.
pub fn iobench_rustc_args(source: &Path, output: &Path) -> Vec<String> {
    crate::images::static_rustc_args("iobench", source, output)
}

/// The static iobench executable, built once per source text and compiler.
pub fn iobench(cache: &Cache) -> Result<PathBuf> {
    crate::images::static_tool(cache, "iobench", IOBENCH_SOURCE)
}

/// The static netbench executable (L2's /bin/netbench, and the peer in L1).
pub fn netbench(cache: &Cache) -> Result<PathBuf> {
    crate::images::static_tool(cache, "netbench", NETBENCH_SOURCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_prints_its_marker_first_and_finds_nvme_by_id() {
        let init = l2_init();
        assert!(init.starts_with("#!/bin/sh\necho TESTBED-INIT\n"));
        assert!(init.contains("\"0x1b36:0x0010\""));
        assert!(init.contains("echo \"TESTBED-BENCH mode=$mode nvme=$nvme\""));
    }

    #[test]
    fn init_runs_both_loads_with_the_command_line_settings() {
        let init = l2_init();
        assert!(init.contains("iobench --mode seq --bs 65536 --qd $qd --secs $secs $dev"));
        assert!(init.contains("iobench --mode rand --bs 4096 --qd $qd --secs $secs $dev"));
        assert!(init.contains("[ \"$mode\" = nvme ] && [ \"$nvme\" != none ] && dev=/dev/nvme0n1"));
        assert!(init.contains("[ \"$mode\" = blk ] && dev=/dev/vda"));
        assert!(init.contains("testbed.iosecs=*) secs=${w#*=};;"));
    }

    #[test]
    fn init_runs_netbench_against_the_l1_peer_once_the_link_answers() {
        let init = l2_init();
        let up = init.find("if [ \"$mode\" = net ] && net_up; then");
        let client = init.find("netbench client --server 10.0.2.1:5201 --secs $secs");
        assert!(up.is_some() && client > up, "{init}");
        assert!(init.contains("ip addr add 10.0.2.15/24 dev $i"));
        assert!(init.contains("until ping -c 1 -W 1 10.0.2.1"));
        assert!(init.contains("features=$(cat /sys/class/net/$i/device/features)"));
    }

    #[test]
    fn init_reboots_once_per_launch_token_and_powers_off_on_the_second_boot() {
        let init = l2_init();
        assert!(init.contains("testbed.launch=*) launch=${w#*=};;"));
        assert!(init.contains("t=\"TESTBED-REBOOT-$launch\""));
        let rebooting = init.find("echo \"TESTBED-BENCH rebooting\"\n\t\treboot -f");
        let second = init.find("echo \"TESTBED-BENCH second-boot\"");
        assert!(rebooting.is_some() && second.is_some(), "{init}");
        assert!(init.contains("skip=2048") && init.contains("seek=2048"));
    }

    #[test]
    fn init_holds_in_hold_mode_before_powering_off() {
        let init = l2_init();
        let hold = init.find("[ \"$mode\" = hold ] && while :; do sleep 60; done");
        assert!(hold.is_some_and(|h| init.find("poweroff -f").is_some_and(|p| h < p)));
    }

    #[test]
    fn iobench_is_linked_statically() {
        let args = iobench_rustc_args(Path::new("/c/i.rs"), Path::new("/c/i.out"));
        assert!(args
            .windows(2)
            .any(|w| w == ["-C", "target-feature=+crt-static"]));
        assert_eq!(args[args.len() - 2..], ["/c/i.out", "/c/i.rs"]);
    }
}
