//! The guest's NUMA topology in ACPI (ACPI 6.5: 5.2.16 SRAT, 5.2.17 SLIT): which
//! proximity domain each vCPU (by APIC ID) and each RAM range belongs to, and the
//! relative distances between domains. A guest node with memory and no vCPU is a
//! memory-only node. The PCI functions of a node without vCPUs are its initiators:
//! each gets a Generic Initiator Affinity structure (ACPI 6.3+, 5.2.16.6), so the OS
//! knows the node exists and that something there issues memory requests (Linux
//! brings such a node online for its devices).

use acpi_tables::slit::SLIT;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// One guest NUMA node (proximity domain = its index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaNode {
    /// APIC IDs (= vCPU indices) of its vCPUs.
    pub vcpus: Vec<u32>,
    /// Its guest RAM, (base, length) ranges.
    pub memory: Vec<(u64, u64)>,
    /// Distance to every node (its own included, 10 by convention), in node order.
    pub distances: Vec<u8>,
    /// PCI functions (segment 0) on the node, as `bus << 8 | device << 3 | function`;
    /// listed as Generic Initiators when the node has no vCPU.
    pub devices: Vec<u16>,
}

/// SRAT structure type: processor local APIC affinity.
const SRAT_LAPIC: u8 = 0;
/// SRAT structure type: memory affinity.
const SRAT_MEMORY: u8 = 1;
/// SRAT structure type: Generic Initiator affinity (ACPI 6.3, Table 5-79).
const SRAT_GENERIC_INITIATOR: u8 = 5;
/// Length of a Generic Initiator Affinity structure.
const SRAT_GENERIC_INITIATOR_LEN: u8 = 32;
/// Device Handle Type of a PCI function (ACPI 6.3, Table 5-79; 0 is an ACPI device).
const SRAT_HANDLE_PCI: u8 = 1;
/// Enabled flag of every structure.
const SRAT_ENABLED: u32 = 1;
/// Local distance (ACPI: the distance of a node to itself).
pub const LOCAL_DISTANCE: u8 = 10;

/// Standard table header with the checksum filled in last.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(b"STRT");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

/// A Generic Initiator Affinity structure for PCI function `bdf` of segment 0 in
/// `domain`: type, length, reserved, handle type, domain, the 16-byte PCI device handle
/// (segment, BDF, 12 reserved bytes; ACPI 6.3 Table 5-80), flags, 4 reserved bytes.
fn generic_initiator(domain: u32, bdf: u16) -> Vec<u8> {
    let mut s = vec![
        SRAT_GENERIC_INITIATOR,
        SRAT_GENERIC_INITIATOR_LEN,
        0,
        SRAT_HANDLE_PCI,
    ];
    s.extend_from_slice(&domain.to_le_bytes());
    s.extend_from_slice(&0u16.to_le_bytes());
    s.extend_from_slice(&bdf.to_le_bytes());
    s.extend_from_slice(&[0; 12]);
    s.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
    s.extend_from_slice(&[0; 4]);
    s
}

/// The SRAT (revision 3): a local APIC affinity structure per vCPU, a memory affinity
/// structure per RAM range of each node, and a Generic Initiator Affinity structure per
/// PCI function of each node without vCPUs.
pub fn build_srat(nodes: &[NumaNode]) -> Vec<u8> {
    // Reserved: 4 bytes that must read 1 (for compatibility), then 8 bytes.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    for (domain, node) in (0u32..).zip(nodes) {
        for apic in &node.vcpus {
            let d = domain.to_le_bytes();
            body.extend_from_slice(&[SRAT_LAPIC, 16, d[0], *apic as u8]);
            body.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
            body.extend_from_slice(&[0, d[1], d[2], d[3]]); // SAPIC EID, domain[31:8]
            body.extend_from_slice(&0u32.to_le_bytes()); // clock domain
        }
        for &(base, len) in &node.memory {
            body.extend_from_slice(&[SRAT_MEMORY, 40]);
            body.extend_from_slice(&domain.to_le_bytes());
            body.extend_from_slice(&[0; 2]);
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
            body.extend_from_slice(&[0; 8]);
        }
        if node.vcpus.is_empty() {
            for &bdf in &node.devices {
                body.extend(generic_initiator(domain, bdf));
            }
        }
    }
    table(b"SRAT", 3, &body)
}

/// The SLIT: the nodes' distance matrix.
pub fn build_slit(nodes: &[NumaNode]) -> Vec<u8> {
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, nodes.len() as u32);
    for (a, node) in nodes.iter().enumerate() {
        for b in 0..nodes.len() {
            let d = node.distances.get(b).copied().unwrap_or(if a == b {
                LOCAL_DISTANCE
            } else {
                2 * LOCAL_DISTANCE
            });
            slit.set_distance(a, b, d);
        }
    }
    let mut bytes = Vec::new();
    slit.to_aml_bytes(&mut bytes);
    bytes
}

/// Splits the guest RAM ranges `ram` (in address order) between nodes of `sizes` bytes,
/// in node order: each node gets the next `size` bytes of RAM, across the PCI hole if
/// need be.
pub fn split_ram(ram: &[(u64, u64)], sizes: &[u64]) -> Vec<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut ranges = ram.iter().copied();
    let mut current = ranges.next();
    for &size in sizes {
        let mut left = size;
        let mut mine = Vec::new();
        while left > 0 {
            let Some((base, len)) = current else { break };
            let take = left.min(len);
            mine.push((base, take));
            left -= take;
            current = if take == len {
                ranges.next()
            } else {
                Some((base + take, len - take))
            };
        }
        out.push(mine);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::acpi::tests::checksum;

    const GIB: u64 = 1 << 30;

    fn two_nodes() -> Vec<NumaNode> {
        vec![
            NumaNode {
                vcpus: vec![0, 1],
                memory: vec![(0, 2 * GIB)],
                distances: vec![10, 21],
                devices: vec![0x0100],
            },
            NumaNode {
                vcpus: vec![2],
                memory: vec![(2 * GIB, GIB), (4 * GIB, GIB)],
                distances: vec![21, 10],
                devices: Vec::new(),
            },
        ]
    }

    #[test]
    fn srat_has_a_cpu_entry_per_vcpu_and_a_memory_entry_per_range() {
        let t = build_srat(&two_nodes());
        assert_eq!(&t[0..4], b"SRAT");
        assert_eq!(checksum(&t), 0);
        assert_eq!(t.len(), 48 + 3 * 16 + 3 * 40);
        assert_eq!(u32::from_le_bytes(t[36..40].try_into().unwrap()), 1);
        // Node 0's two CPUs and its range, then node 1's CPU: APIC ID 2 in domain 1.
        let cpu2 = &t[48 + 32 + 40..48 + 48 + 40];
        assert_eq!((cpu2[0], cpu2[1], cpu2[2], cpu2[3]), (0, 16, 1, 2));
        // Last memory entry: domain 1, 4 GiB + 1 GiB, enabled.
        let mem = &t[t.len() - 40..];
        assert_eq!((mem[0], mem[1]), (1, 40));
        assert_eq!(u32::from_le_bytes(mem[2..6].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(mem[8..16].try_into().unwrap()), 4 * GIB);
        assert_eq!(u64::from_le_bytes(mem[16..24].try_into().unwrap()), GIB);
        assert_eq!(u32::from_le_bytes(mem[28..32].try_into().unwrap()), 1);
    }

    #[test]
    fn a_device_node_without_cpus_lists_its_functions_as_generic_initiators() {
        let mut nodes = two_nodes();
        // Node 2: no vCPU, no RAM, the GPU 04:00.0 and its audio function 04:00.1.
        nodes.push(NumaNode {
            vcpus: Vec::new(),
            memory: Vec::new(),
            distances: vec![21, 21, 10],
            devices: vec![0x0400, 0x0401],
        });
        let t = build_srat(&nodes);
        assert_eq!(checksum(&t), 0);
        // Node 0's device has CPUs beside it: no entry for it.
        assert_eq!(t.len(), 48 + 3 * 16 + 3 * 40 + 2 * 32);
        let gi = &t[t.len() - 64..t.len() - 32];
        let want: [u8; 32] = [
            5, 32, 0, 1, // type, length, reserved, PCI handle
            2, 0, 0, 0, // proximity domain 2
            0, 0, 0x00, 0x04, // segment 0, BDF 04:00.0 (bus in bits 15:8)
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // handle: reserved
            1, 0, 0, 0, // flags: enabled
            0, 0, 0, 0, // reserved
        ];
        assert_eq!(gi, want);
        assert_eq!(&t[t.len() - 32 + 10..t.len() - 32 + 12], &[0x01, 0x04]);
    }

    #[test]
    fn slit_holds_the_distance_matrix() {
        let t = build_slit(&two_nodes());
        assert_eq!(&t[0..4], b"SLIT");
        assert_eq!(checksum(&t), 0);
        assert_eq!(u64::from_le_bytes(t[36..44].try_into().unwrap()), 2);
        assert_eq!(&t[44..48], &[10, 21, 21, 10]);
    }

    #[test]
    fn ram_splits_in_node_order_across_the_hole() {
        let ram = [(0, 3 * GIB), (4 * GIB, GIB)];
        let split = split_ram(&ram, &[2 * GIB, 2 * GIB]);
        assert_eq!(split[0], [(0, 2 * GIB)]);
        assert_eq!(split[1], [(2 * GIB, GIB), (4 * GIB, GIB)]);
    }
}
