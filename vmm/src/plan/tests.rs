//! Tests of `strait plan` over fake sysfs trees.
use super::*;
use crate::check::root::fake::{FakeHost, Pci};

const GPU: &str = "0000:01:00.0";

/// A type-0 header with `bars` raw BAR registers and, with `full`, an MSI-X capability
/// (4 vectors, table at BAR0 + 0x2000, PBA at BAR0 + 0x3000); 64 bytes otherwise, as a
/// non-root reader sees it.
fn config(bars: &[u32], full: bool) -> Vec<u8> {
    let mut c = vec![0u8; if full { 256 } else { 64 }];
    c[0..4].copy_from_slice(&0x1234_10deu32.to_le_bytes());
    for (i, b) in bars.iter().enumerate() {
        c[0x10 + 4 * i..0x14 + 4 * i].copy_from_slice(&b.to_le_bytes());
    }
    if full {
        c[0x06] = 0x10; // capabilities list
        c[0x34] = 0x40;
        c[0x40] = 0x11; // MSI-X
        c[0x42..0x44].copy_from_slice(&3u16.to_le_bytes());
        c[0x44..0x48].copy_from_slice(&0x2000u32.to_le_bytes());
        c[0x48..0x4c].copy_from_slice(&0x3000u32.to_le_bytes());
    }
    c
}

/// The ready Intel host with its GPU's header (BAR0 16 MiB 32-bit, BAR1 32 GiB 64-bit
/// prefetchable) and a 39-bit IOMMU with the MSI window reserved.
fn host(full_config: bool) -> FakeHost {
    let h = FakeHost::ready();
    let cfg = config(&[0x0, 0xc, 0x0], full_config);
    std::fs::write(
        h.root().path(&format!("sys/bus/pci/devices/{GPU}/config")),
        cfg,
    )
    .unwrap();
    // MGAW field 38: 39 bits.
    h.write("sys/class/iommu/dmar0/intel-iommu/cap", "d2008c40660462\n");
    h.write(
        "sys/kernel/iommu_groups/1/reserved_regions",
        "0x00000000fee00000 0x00000000feefffff msi\n0x00000000000a0000 0x00000000000bffff direct-relaxable\n",
    );
    h
}

fn spec(hosts: &[&str]) -> VmSpec {
    let mut s =
        VmSpec::parse(r#"{"vcpus": 4, "memory": {"size_mib": 8192}, "kernel": {"path": "/k"}}"#)
            .unwrap();
    for h in hosts {
        s.passthrough.push(crate::spec::PassthroughSpec {
            host: (*h).into(),
            clique: None,
        });
    }
    s.validate().unwrap();
    s
}

fn bar(doc: &Value, port: usize, index: u64) -> &Value {
    doc["root_ports"][port]["bars"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["index"] == index)
        .unwrap()
}

#[test]
fn a_gpu_gets_a_root_port_and_its_bars_their_windows() {
    let h = host(true);
    let doc = plan(&spec(&[GPU]), &h.root()).unwrap().to_json();
    assert_eq!(doc["root_ports"][0]["bdf"], "0000:00:01.0");
    assert_eq!(
        doc["root_ports"][0]["functions"][0]["guest"],
        "0000:01:00.0"
    );
    assert_eq!(doc["root_ports"][0]["functions"][0]["host"], GPU);
    assert_eq!(doc["host_bridge"]["buses"], json!([0, 1]));
    // 8 GiB of RAM ends at 9 GiB: the 64-bit window starts at 16 GiB for a 32 GiB BAR
    // aligned to its size, inside 2^39.
    let vram = bar(&doc, 0, 1);
    assert_eq!(vram["kind"], "mem64");
    assert_eq!(vram["prefetchable"], true);
    assert_eq!(vram["size"], "0x800000000");
    assert_eq!(vram["address"], "0x800000000");
    assert_eq!(vram["trapped"], json!([]));
    let regs = bar(&doc, 0, 0);
    assert_eq!(regs["kind"], "mem32");
    assert_eq!(regs["address"], "0xc0000000");
    // The MSI-X table and PBA pages trap, the rest of BAR0 is mapped.
    assert_eq!(regs["trapped"], json!([["0x2000", "0x2000"]]));
    assert_eq!(
        doc["root_ports"][0]["prefetchable"],
        json!(["0x800000000", "0xfffffffff"])
    );
}

#[test]
fn iova_ranges_are_the_iommu_width_minus_reserved_regions() {
    let h = host(true);
    let p = plan(&spec(&[GPU]), &h.root()).unwrap();
    assert_eq!(p.iova, [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]);
    assert!(p.iova_source.contains("39 bits"), "{}", p.iova_source);
}

#[test]
fn without_root_the_trapped_spans_are_unknown_not_wrong() {
    let h = host(false);
    let p = plan(&spec(&[GPU]), &h.root()).unwrap();
    let doc = p.to_json();
    assert_eq!(bar(&doc, 0, 0)["trapped"], Value::Null);
    assert_eq!(bar(&doc, 0, 0)["address"], "0xc0000000");
    assert!(p
        .to_string()
        .contains("trapped spans unknown (run as root)"));
}

#[test]
fn a_missing_device_names_it() {
    let h = host(true);
    let err = plan(&spec(&["0000:09:00.0"]), &h.root()).unwrap_err();
    assert!(
        matches!(err, PlanError::DeviceMissing { addr, .. } if addr.to_string() == "0000:09:00.0")
    );
}

#[test]
fn no_devices_is_ram_and_bus_0() {
    let h = host(true);
    let p = plan(&spec(&[]), &h.root()).unwrap();
    let doc = p.to_json();
    assert_eq!(doc["root_ports"], json!([]));
    assert_eq!(
        doc["ram"],
        json!([["0x0", "0xc0000000"], ["0x100000000", "0x140000000"]])
    );
    assert_eq!(doc["mmio64"][1], "0x0");
    assert!(p.to_string().contains("64-bit PCI   none"));
}

/// A function `name` of `class` on vfio-pci in IOMMU group `group`, with one 16 KiB
/// 32-bit BAR and MSI-X.
fn small_function(h: &FakeHost, name: &'static str, class: &'static str, group: u32) {
    h.pci(Pci {
        name,
        class,
        driver: Some("vfio-pci"),
        group: Some(group),
    });
    h.pci_attr(
        name,
        "resource",
        "0x00000000fb000000 0x00000000fb003fff 0x0000000000040200\n",
    );
    std::fs::write(
        h.root().path(&format!("sys/bus/pci/devices/{name}/config")),
        config(&[0x0], true),
    )
    .unwrap();
}

#[test]
fn functions_of_one_device_share_a_slot_like_run() {
    let h = host(true);
    let audio = "0000:01:00.1";
    small_function(&h, audio, "0x040300", 1);
    let doc = plan(&spec(&[audio, GPU]), &h.root()).unwrap().to_json();
    let f = &doc["root_ports"][0]["functions"];
    assert_eq!(f[0]["host"], GPU);
    assert_eq!(f[1]["guest"], "0000:01:00.1");
    assert_eq!(doc["root_ports"].as_array().unwrap().len(), 1);
}

#[test]
fn text_names_every_window_and_bar() {
    let h = host(true);
    let text = plan(&spec(&[GPU]), &h.root()).unwrap().to_string();
    for want in [
        "root port 0000:00:01.0 -> bus 1",
        "0000:01:00.0 (host 0000:01:00.0)",
        "BAR1 32 GiB mem64 prefetchable at 0x800000000, mapped directly",
        "BAR0 16 MiB mem32 at 0xc0000000, traps 0x2000+0x2000",
        "guest physical address bits 46",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
}

/// The spec the README shows under "The VM spec".
fn readme_spec() -> VmSpec {
    let readme = include_str!("../../../README.md");
    let section = readme.split("## The VM spec").nth(1).unwrap();
    let json = section
        .split("```json")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let s = VmSpec::parse(json).unwrap();
    s.validate().unwrap();
    s
}

#[test]
fn the_readme_gpu_example_plans_on_a_ready_host() {
    let h = host(true);
    let spec = readme_spec();
    assert_eq!(spec.passthrough_hosts()[0].addr().to_string(), GPU);
    let text = plan(&spec, &h.root()).unwrap().to_string();
    assert!(text.contains("0000:01:00.0 (host 0000:01:00.0)"), "{text}");
    assert!(text.contains("BAR1 32 GiB mem64 prefetchable"), "{text}");
}

#[test]
fn devices_on_two_guest_nodes_get_a_host_bridge_each() {
    let h = host(true);
    let nic = "0000:02:00.0";
    small_function(&h, nic, "0x020000", 2);
    h.write("sys/devices/system/node/online", "0\n");
    h.write("sys/devices/system/node/node0/cpulist", "0-3\n");
    let mut s = spec(&[GPU, nic]);
    s.numa = Some(crate::spec::NumaSpec::Nodes(
        [(vec![0, 1], vec![1]), (vec![2, 3], vec![0])]
            .into_iter()
            .map(|(vcpus, devices)| crate::spec::NumaNodeSpec {
                vcpus,
                memory_mib: 4096,
                host_node: 0,
                devices,
            })
            .collect(),
    ));
    s.validate().unwrap();
    let p = plan(&s, &h.root()).unwrap();
    let doc = p.to_json();
    // The GPU (entry 0) is on guest node 1: root bus 2, above bus 0's 0..=1.
    assert_eq!(doc["host_bridge"]["buses"], json!([0, 1]));
    assert_eq!(doc["host_bridge"]["node"], 0);
    let extra = &doc["extra_host_bridges"][0];
    assert_eq!(
        (&extra["buses"], &extra["node"]),
        (&json!([2, 3]), &json!(1))
    );
    assert_eq!(doc["root_ports"][0]["bdf"], "0000:02:01.0");
    assert_eq!(doc["root_ports"][0]["host_bridge"], 1);
    assert_eq!(doc["root_ports"][1]["bdf"], "0000:00:02.0");
    let gpu_pref = &doc["root_ports"][0]["prefetchable"];
    assert_eq!(extra["prefetchable"][0], *gpu_pref);
    let text = p.to_string();
    for want in [
        "host bridge  0000:00:00.0  buses 0-1  NUMA node 0",
        "host bridge  root bus 02  buses 2-3  NUMA node 1",
        "  root port 0000:02:01.0 -> bus 3",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
}
