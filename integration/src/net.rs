//! The `net` scenario's network: a tap in L1 (`tap0`, 10.0.2.1/24, made with the host's
//! iproute2, /usr/sbin/ip, through the chroot) that L2's virtio-net (10.0.2.15/24) sits on, and
//! busybox httpd on both sides to move 64 MiB each way. The addresses exist only
//! inside L1's kernel: L0 gives L1 no network device, so no frame leaves the nested
//! machine.
//!
//! - L1 -> L2: L1 serves a random 64 MiB file and its md5; L2 fetches both (wget).
//! - L2 -> L1: L2 serves its own random 64 MiB file and prints [`UPLOAD_READY`] on its
//!   console; L1's action ([`upload_action`]) fetches it and publishes the md5 (and the
//!   time it took) for L2 to compare.
//!
//! The benchmark's net launch uses the same tap and addresses (the agent makes the tap
//! with [`tap_commands`]) with `netbench` instead of httpd: its peer listens in L1 on
//! [`BENCH_PORT`].
//!
//! Both VMMs use the same tap: QEMU with `-netdev tap,vhost=on`, Strait with
//! `"net": [{"tap": ...}]` (vhost-net when /dev/vhost-net opens, which the L1 modules
//! `tun` and `vhost_net` provide).

use std::fmt::Write as _;

/// The tap L1 creates.
pub const TAP: &str = "tap0";
/// L1's address on the tap.
pub const L1_ADDR: &str = "10.0.2.1";
/// L2's address.
pub const L2_ADDR: &str = "10.0.2.15";
/// L2's MAC (both VMMs).
pub const L2_MAC: &str = "52:54:00:12:34:56";
/// MiB moved each way.
pub const TRANSFER_MIB: u32 = 64;
/// L2's console marker after which L1 fetches L2's file.
pub const UPLOAD_READY: &str = "TESTBED-NET-UPLOAD-READY";
/// What Strait logs when vhost-net carries the frames.
pub const STRAIT_VHOST_LOG: &str = "data path vhost-net";
/// What Strait logs when its I/O thread carries them.
pub const STRAIT_USERSPACE_LOG: &str = "data path userspace";
/// iproute2 in the host's tree (run inside L1's chroot of it).
pub const IP: &str = "/usr/sbin/ip";
/// The benchmark's `netbench` peer listens here in L1 ([`L1_ADDR`]).
pub const BENCH_PORT: u16 = 5201;

/// The commands that make L1's tap and give it [`L1_ADDR`], in order.
pub fn tap_commands() -> [Vec<String>; 3] {
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let addr = format!("{L1_ADDR}/24");
    [
        words(&[IP, "tuntap", "add", "dev", TAP, "mode", "tap"]),
        words(&[IP, "addr", "add", &addr, "dev", TAP]),
        words(&[IP, "link", "set", TAP, "up"]),
    ]
}

/// Shell for L1's run script, before the VMM starts: the tap, its address, the file
/// L2 downloads and httpd serving it.
pub fn l1_setup() -> String {
    let mut s = String::new();
    for command in tap_commands() {
        let _ = writeln!(
            s,
            "chroot $R {} || fail \"cannot set up {TAP}\"",
            command.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/down.bin bs=1M count={TRANSFER_MIB} 2>/dev/null || fail \"cannot write the download file\"\n\
         md5sum /tmp/www/down.bin | cut -d' ' -f1 > /tmp/www/down.md5\n\
         httpd -p 80 -h /tmp/www || fail \"cannot start httpd in L1\"\n\
         [ -c $R/dev/vhost-net ] && echo \"TESTBED-L1 /dev/vhost-net present\" || echo \"TESTBED-L1 no /dev/vhost-net\""
    );
    s
}

/// L1's action after [`UPLOAD_READY`]: fetch L2's file, publish its md5 and timing.
pub fn upload_action() -> String {
    format!(
        r#"read t0 _ < /proc/uptime
wget -q -O /tmp/up.bin http://{L2_ADDR}:8080/up.bin; rc=$?
read t1 _ < /proc/uptime
size=$(wc -c < /tmp/up.bin)
echo "$size $t0 $t1 rc=$rc" > /tmp/www/up.stat
md5sum /tmp/up.bin | cut -d' ' -f1 > /tmp/www/up.tmp && mv /tmp/www/up.tmp /tmp/www/up.md5
rm -f /tmp/up.bin
echo "upload fetched: $(cat /tmp/www/up.stat) md5 $(cat /tmp/www/up.md5)""#
    )
}

/// `-netdev`/`-device` arguments for QEMU: the tap with vhost-net, virtio-net behind
/// its own root port (chassis and slot `n`), modern only like Strait's.
pub fn qemu_args(n: usize) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id=net0,ifname={TAP},script=no,downscript=no,vhost=on"),
        "-device".into(),
        format!("pcie-root-port,id=rpn0,bus=pcie.0,chassis={n},slot={n}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={L2_MAC},bus=rpn0,disable-legacy=on"),
    ]
}

/// Strait's `net` spec entry; `vhost` false keeps the frames on Strait's I/O thread.
pub fn strait_spec(vhost: bool) -> serde_json::Value {
    serde_json::json!([{ "tap": TAP, "mac": L2_MAC, "vhost": vhost }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_uses_vhost_and_a_modern_device_behind_a_root_port() {
        let args = qemu_args(3);
        assert!(args[1].contains("vhost=on") && args[1].contains("ifname=tap0"));
        assert_eq!(
            args[3],
            "pcie-root-port,id=rpn0,bus=pcie.0,chassis=3,slot=3"
        );
        assert!(args[5].contains("disable-legacy=on") && args[5].contains(L2_MAC));
    }

    #[test]
    fn l1_setup_makes_the_tap_before_serving() {
        let s = l1_setup();
        let tap = s
            .find("ip tuntap add dev tap0 mode tap")
            .unwrap_or(usize::MAX);
        let httpd = s.find("httpd -p 80").unwrap_or(0);
        assert!(tap < httpd, "{s}");
    }
}
