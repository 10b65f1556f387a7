//! How a PCI function fits the host and the guest: its BARs against the physical
//! address width, its PCIe link against what it is capable of, its NUMA node.
//!
//! - BARs come from sysfs `resource` (one `start end flags` line per resource; lines
//!   0-5 are the BARs, flags are the kernel's IORESOURCE_* bits, include/linux/ioport.h).
//!   Whether the 64-bit prefetchable BARs fit in the guest is decided by the rule
//!   `strait run` uses, [`resources::plan_mmio64`], with the host's physical address
//!   bits (/proc/cpuinfo "address sizes") as the guest's. The IOMMU's IOVA ranges,
//!   which `run` also honours, are only known once a VFIO container is open, so they
//!   are not part of this read-only check.
//! - The link: `current_link_speed`/`width` against `max_link_speed`/`width`
//!   (Documentation/ABI/testing/sysfs-bus-pci).
//! - `numa_node`: -1 when the platform reports no affinity.

use arch::x86_64::layout;
use resources::{plan_mmio64, BarClass, BarRequest, PortRequest, Size};
use vfio_glue::sysfs::Sysfs;

use super::pci::Target;
use super::{Finding, HostRoot};

/// IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_PREFETCH, IORESOURCE_MEM_64.
const RES_IO: u64 = 0x100;
const RES_MEM: u64 = 0x200;
const RES_PREFETCH: u64 = 0x2000;
const RES_MEM_64: u64 = 0x0010_0000;
/// Lines of `resource` that are BARs (PCI_STD_NUM_BARS).
const BAR_LINES: usize = 6;

/// What the BAR rule compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Physical address bits of the host CPU, `None` when /proc/cpuinfo does not say.
    pub phys_bits: Option<u8>,
    /// Guest RAM in bytes (0 when not given: the window then starts at 4 GiB).
    pub ram: u64,
}

impl HostLimits {
    pub fn read(root: &HostRoot, memory: Option<u64>) -> Self {
        let cpuinfo = root.read("proc/cpuinfo").unwrap_or_default();
        HostLimits {
            phys_bits: phys_bits(&cpuinfo),
            ram: memory.unwrap_or(0),
        }
    }
}

/// "address sizes : 46 bits physical, 48 bits virtual" -> 46.
pub fn phys_bits(cpuinfo: &str) -> Option<u8> {
    let line = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("address sizes"))?;
    let value = line.trim_start_matches([' ', '\t', ':']);
    value.split_whitespace().next()?.parse().ok()
}

/// One BAR from `resource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    index: usize,
    size: u64,
    class: BarClass,
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The implemented BARs listed in a `resource` file.
fn parse_bars(text: &str) -> Vec<Bar> {
    let mut bars = Vec::new();
    for (index, line) in text.lines().take(BAR_LINES).enumerate() {
        let mut fields = line.split_whitespace().map(parse_hex);
        let (Some(Some(start)), Some(Some(end)), Some(Some(flags))) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if end <= start {
            continue;
        }
        let prefetchable = flags & RES_PREFETCH != 0;
        let class = if flags & RES_IO != 0 {
            BarClass::Io
        } else if flags & RES_MEM == 0 {
            continue;
        } else if flags & RES_MEM_64 != 0 {
            BarClass::Mem64 { prefetchable }
        } else {
            BarClass::Mem32 { prefetchable }
        };
        let size = end - start + 1;
        bars.push(Bar { index, size, class });
    }
    bars
}

fn describe(bar: &Bar) -> String {
    let kind = match bar.class {
        BarClass::Io => "I/O",
        BarClass::Mem32 { prefetchable: true } => "32-bit prefetchable",
        BarClass::Mem32 { .. } => "32-bit",
        BarClass::Mem64 { prefetchable: true } => "64-bit prefetchable",
        BarClass::Mem64 { .. } => "64-bit",
    };
    format!("BAR{} {} {kind}", bar.index, Size(bar.size))
}

pub fn bars(sysfs: &Sysfs, host: &HostLimits, t: Target) -> Finding {
    const CHECK: &str = "bars";
    let Some(text) = sysfs.attr(&t.addr, "resource") else {
        return Finding::warn(
            CHECK,
            "no resource file: BAR sizes unknown",
            "run as root; check `lspci -vv -s` for the BARs",
        )
        .on(t.addr);
    };
    let bars = parse_bars(&text);
    let list: Vec<String> = bars.iter().map(describe).collect();
    let list = if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    };
    let Some(phys_bits) = host.phys_bits else {
        return Finding::warn(
            CHECK,
            format!("{list}; the host's physical address bits are unknown"),
            "check that /proc/cpuinfo has an \"address sizes\" line",
        )
        .on(t.addr);
    };
    let port = PortRequest {
        tag: t.addr.to_string(),
        bars: bars
            .iter()
            .map(|b| BarRequest {
                size: b.size,
                class: b.class,
            })
            .collect(),
    };
    let floor = layout::pci_platform(host.ram, phys_bits, Vec::new()).mmio64;
    match plan_mmio64(floor, &[port], phys_bits, &[]) {
        Ok(_) => Finding::ok(
            CHECK,
            match host.ram {
                0 => format!("{list}; fit below 2^{phys_bits} (above 4 GiB; --memory SIZE counts guest RAM in)"),
                ram => format!("{list}; fit below 2^{phys_bits} with {} of guest RAM", Size(ram)),
            },
        )
        .on(t.addr),
        Err(e) => t.problem(
            CHECK,
            format!("{list}: {e}"),
            format!(
                "give the guest less memory, shrink a resizable BAR (the firmware's \
                 Resizable BAR setting, or `echo N > /sys/bus/pci/devices/{}/resourceK_resize`), \
                 or use a host whose CPU addresses more bits",
                t.addr
            ),
        ),
    }
}

/// A link speed in GT/s from "16.0 GT/s PCIe" or "8 GT/s"; `None` for "Unknown".
fn speed(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A link width from "16" or "x16"; `None` for 0 (link down) or garbage.
fn width(text: &str) -> Option<u32> {
    text.trim_start_matches('x').parse().ok().filter(|w| *w > 0)
}

pub fn link(sysfs: &Sysfs, t: Target) -> Finding {
    const CHECK: &str = "pcie link";
    let attr = |name| sysfs.attr(&t.addr, name);
    let (Some(max_s), Some(max_w)) = (attr("max_link_speed"), attr("max_link_width")) else {
        return Finding::ok(CHECK, "not reported (not a PCIe function)").on(t.addr);
    };
    let (cur_s, cur_w) = (
        attr("current_link_speed").unwrap_or_default(),
        attr("current_link_width").unwrap_or_default(),
    );
    let now = format!("{cur_s} x{}", cur_w.trim_start_matches('x'));
    let cap = format!("{max_s} x{}", max_w.trim_start_matches('x'));
    let (Some(cs), Some(cw), Some(ms), Some(mw)) =
        (speed(&cur_s), width(&cur_w), speed(&max_s), width(&max_w))
    else {
        return Finding::ok(CHECK, format!("{now}, capable of {cap} (state unknown)")).on(t.addr);
    };
    if cs < ms || cw < mw {
        return Finding::warn(
            CHECK,
            format!("running at {now}, below its capability {cap}"),
            "GPUs lower the link speed when idle, so check again under load; if it stays \
             low, move the card to a slot wired for its full width and check the slot's \
             PCIe generation in the firmware setup",
        )
        .on(t.addr);
    }
    Finding::ok(CHECK, format!("{now} (its maximum)")).on(t.addr)
}

pub fn numa(sysfs: &Sysfs, t: Target) -> Finding {
    const CHECK: &str = "numa node";
    let node = sysfs
        .attr(&t.addr, "numa_node")
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| *n >= 0);
    let detail = match node {
        Some(n) => format!(
            "{n}: keep the VM's vCPUs and hugepages there \
             (`numactl --cpunodebind={n} --membind={n} strait run vm.json`)"
        ),
        None => "none reported (one node, or no affinity)".into(),
    };
    Finding::ok(CHECK, detail).on(t.addr)
}

#[cfg(test)]
mod tests {
    use super::super::root::fake::{FakeHost, Pci};
    use super::super::Status;
    use super::*;

    const GPU: &str = "0000:01:00.0";
    const GIB: u64 = 1 << 30;

    /// A GPU with a 16 MiB BAR0, a 64-bit prefetchable BAR1 of `bar1` bytes and an
    /// I/O BAR5, as the kernel writes `resource`.
    fn resource(bar1: u64) -> String {
        let bar1_start: u64 = 0x38_0000_0000;
        let lines = [
            "0x00000000fa000000 0x00000000faffffff 0x0000000000040200".to_string(),
            format!(
                "0x{bar1_start:016x} 0x{:016x} 0x000000000014220c",
                bar1_start + bar1 - 1
            ),
            "0x0000000000000000 0x0000000000000000 0x0000000000000000".into(),
            "0x0000000000000000 0x0000000000000000 0x0000000000000000".into(),
            "0x0000000000000000 0x0000000000000000 0x0000000000000000".into(),
            "0x000000000000e000 0x000000000000e07f 0x0000000000040101".into(),
            "0x00000000fb000000 0x00000000fb07ffff 0x0000000000046200".into(),
        ];
        lines.join("\n") + "\n"
    }

    fn gpu() -> (FakeHost, Target) {
        let host = FakeHost::empty();
        host.pci(Pci {
            name: GPU,
            class: "0x030000",
            driver: Some("vfio-pci"),
            group: Some(1),
        });
        let t = Target {
            addr: GPU.parse().unwrap(),
            named: true,
        };
        (host, t)
    }

    fn limits(phys_bits: u8, ram: u64) -> HostLimits {
        HostLimits {
            phys_bits: Some(phys_bits),
            ram,
        }
    }

    fn assert_fix(f: &Finding, status: Status, needle: &str) {
        assert_eq!(f.status, status, "{f:?}");
        let fix = f.fix.as_deref().unwrap_or_default();
        assert!(fix.contains(needle), "{needle:?} not in {fix:?}");
    }

    #[test]
    fn reads_phys_bits_from_cpuinfo() {
        let info =
            "vendor_id\t: GenuineIntel\naddress sizes\t: 46 bits physical, 48 bits virtual\n";
        assert_eq!(phys_bits(info), Some(46));
        assert_eq!(phys_bits("flags : fpu"), None);
    }

    #[test]
    fn parses_the_bars_of_a_resource_file() {
        let bars = parse_bars(&resource(32 * GIB));
        assert_eq!(bars.len(), 3);
        assert_eq!(describe(&bars[0]), "BAR0 16 MiB 32-bit");
        assert_eq!(describe(&bars[1]), "BAR1 32 GiB 64-bit prefetchable");
        assert_eq!(describe(&bars[2]), "BAR5 0x80 bytes I/O");
    }

    #[test]
    fn bars_that_fit_are_ok() {
        let (host, t) = gpu();
        host.pci_attr(GPU, "resource", &resource(32 * GIB));
        let f = bars(&host.root().sysfs(), &limits(39, 16 * GIB), t);
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.detail.contains("BAR1 32 GiB 64-bit prefetchable"));
    }

    #[test]
    fn bar_beyond_the_address_width_fails_with_resize() {
        let (host, t) = gpu();
        // 512 GiB aligned to its size starts at 2^39: past a 39-bit host.
        host.pci_attr(GPU, "resource", &resource(512 * GIB));
        let f = bars(&host.root().sysfs(), &limits(39, 16 * GIB), t);
        assert_fix(&f, Status::Fail, "resourceK_resize");
        assert!(f.detail.contains("does not fit"), "{f:?}");
        let ok = bars(&host.root().sysfs(), &limits(46, 16 * GIB), t);
        assert_eq!(ok.status, Status::Ok);
    }

    #[test]
    fn unknown_phys_bits_or_resource_warns() {
        let (host, t) = gpu();
        let sysfs = host.root().sysfs();
        assert_fix(&bars(&sysfs, &limits(39, 0), t), Status::Warn, "lspci");
        host.pci_attr(GPU, "resource", &resource(GIB));
        let unknown = HostLimits {
            phys_bits: None,
            ram: 0,
        };
        assert_fix(&bars(&sysfs, &unknown, t), Status::Warn, "address sizes");
    }

    #[test]
    fn link_below_capability_warns() {
        let (host, t) = gpu();
        host.pci_attr(GPU, "max_link_speed", "16.0 GT/s PCIe\n");
        host.pci_attr(GPU, "max_link_width", "16\n");
        host.pci_attr(GPU, "current_link_speed", "2.5 GT/s PCIe\n");
        host.pci_attr(GPU, "current_link_width", "8\n");
        let f = link(&host.root().sysfs(), t);
        assert_fix(&f, Status::Warn, "under load");
        assert!(f.detail.contains("2.5 GT/s PCIe x8"), "{f:?}");
    }

    #[test]
    fn link_at_capability_or_unreported_is_ok() {
        let (host, t) = gpu();
        let sysfs = host.root().sysfs();
        assert_eq!(link(&sysfs, t).status, Status::Ok);
        for (attr, v) in [
            ("max_link_speed", "8.0 GT/s PCIe"),
            ("max_link_width", "16"),
        ] {
            host.pci_attr(GPU, attr, v);
            host.pci_attr(GPU, &attr.replace("max", "current"), v);
        }
        let f = link(&sysfs, t);
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.contains("its maximum"));
    }

    #[test]
    fn numa_node_is_reported() {
        let (host, t) = gpu();
        let sysfs = host.root().sysfs();
        host.pci_attr(GPU, "numa_node", "-1\n");
        assert!(numa(&sysfs, t).detail.starts_with("none"));
        host.pci_attr(GPU, "numa_node", "1\n");
        let f = numa(&sysfs, t);
        assert_eq!(f.status, Status::Ok);
        assert!(f.detail.contains("--membind=1"));
    }
}
