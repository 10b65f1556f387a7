//! Tests of the slot grouping and the host checks of the passthrough layer.
use super::*;
use crate::spec::{PassthroughSpec, VmSpec};

fn a(s: &str) -> HostPciAddress {
    s.parse().unwrap()
}

/// (host, guest, multifunction bit of the guest function) per slot.
fn guests(addrs: &[HostPciAddress]) -> Vec<Vec<(String, String, bool)>> {
    let (topology, hosts) = plan_slots(addrs).unwrap();
    topology
        .ports
        .iter()
        .zip(hosts)
        .map(|(port, hosts)| {
            port.functions
                .iter()
                .zip(hosts)
                .map(|(g, h)| {
                    let multi = port.multifunction() && g.function() == 0;
                    (h.to_string(), g.to_string(), multi)
                })
                .collect()
        })
        .collect()
}

#[test]
fn separate_devices_get_one_root_port_each() {
    let addrs = [a("00:03.0"), a("00:04.0"), a("00:05.0")];
    let (topology, _) = plan_slots(&addrs).unwrap();
    let ports: Vec<String> = topology.ports.iter().map(|p| p.bdf.to_string()).collect();
    assert_eq!(ports, ["0000:00:01.0", "0000:00:02.0", "0000:00:03.0"]);
    assert_eq!(
        guests(&addrs)[2],
        [("0000:00:05.0".into(), "0000:03:00.0".into(), false)]
    );
    assert_eq!(topology.ports[1].slot(), 2);
}

#[test]
fn functions_of_one_device_share_a_port_in_function_order() {
    // A GPU's audio function listed first, another device in between.
    let g = guests(&[a("01:00.1"), a("02:00.0"), a("01:00.0")]);
    assert_eq!(
        g[0],
        [
            ("0000:01:00.0".into(), "0000:01:00.0".into(), true),
            ("0000:01:00.1".into(), "0000:01:00.1".into(), false),
        ]
    );
    assert_eq!(
        g[1],
        [("0000:02:00.0".into(), "0000:02:00.0".into(), false)]
    );
}

#[test]
fn a_lone_function_becomes_function_0() {
    let g = guests(&[a("01:00.3")]);
    assert_eq!(g[0][0].1, "0000:01:00.0");
    assert!(!g[0][0].2);
}

#[test]
fn same_bus_and_slot_on_another_domain_is_another_device() {
    let (topology, _) = plan_slots(&[a("0000:01:00.0"), a("0001:01:00.1")]).unwrap();
    assert_eq!(topology.ports.len(), 2);
}

#[test]
fn more_devices_than_bus_0_slots_is_rejected() {
    let many: Vec<HostPciAddress> = (0..32u8)
        .map(|d| Bdf::new(0, d + 1, 0, 0).unwrap())
        .collect();
    assert!(plan_slots(&many[..31]).is_ok());
    assert!(matches!(
        plan_slots(&many),
        Err(TopologyError::TooManySlots { count: 32 })
    ));
}

#[test]
fn duplicates_are_the_spec_s_to_refuse_once() {
    let mut spec =
        VmSpec::parse(r#"{"vcpus": 1, "memory": {"size_mib": 64}, "kernel": {"path": "/k"}}"#)
            .unwrap();
    for h in ["0000:01:00.0", "01:00.0"] {
        spec.passthrough.push(PassthroughSpec {
            host: h.into(),
            clique: None,
        });
    }
    assert!(matches!(
        spec.validate(),
        Err(crate::spec::SpecError::DuplicatePassthrough {
            index: 1,
            first: 0,
            ..
        })
    ));
}

#[test]
fn slots_take_the_node_of_their_entry_and_group_by_node() {
    // A GPU slot (two functions) on node 1, an nvme on node 0.
    let entries = vec![vec![a("00:10.0"), a("00:10.1")], vec![a("00:03.0")]];
    let nodes = function_nodes(&entries, |i| Some(1 - i as u32));
    assert_eq!(nodes, [Some(1), Some(1), Some(0)]);
    let (topology, _) = plan_slots_with(&entries.concat(), &nodes, &[]).unwrap();
    let ports: Vec<String> = topology.ports.iter().map(|p| p.bdf.to_string()).collect();
    // Bus 0 holds node 0's nvme (bus 1); node 1's bridge is root bus 2.
    assert_eq!(ports, ["0000:02:01.0", "0000:00:02.0"]);
    assert_eq!(topology.bridges[1].node, Some(1));
    assert_eq!(topology.ports[0].functions.len(), 2);
}
