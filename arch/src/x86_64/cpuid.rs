//! CPUID adjustments (Intel SDM Vol. 2A "CPUID"; AMD APM Vol. 3 appendix E.4): VM-wide,
//! the features KVM emulates but leaves out of `KVM_GET_SUPPORTED_CPUID` (the TSC-deadline
//! timer, KVM API "KVM_CAP_TSC_DEADLINE_TIMER"); per vCPU, APIC IDs and a flat topology of
//! `count` single-thread cores in one socket, the hypervisor bit, and the physical address
//! width the 64-bit MMIO window must stay below.
//!
//! The input is what `KVM_GET_SUPPORTED_CPUID` returned, which carries the host's topology
//! in leaves 0x1, 0x4, 0xb, 0x1f, 0x8000_0008, 0x8000_001d and 0x8000_001e; every one of
//! those present is rewritten so the guest's view matches its own vCPUs. Feature bits are
//! left as KVM reports them (including the paravirt leaves 0x4000_0000.., leaf 0x6 ARAT and
//! leaf 0xa, whose PMU KVM emulates in the kernel, x2APIC, which KVM reports itself, and
//! invariant TSC in 0x8000_0007, reported when the host's TSC is constant). With the
//! TSC-deadline bit added, the guest's /proc/cpuinfo flags are those QEMU's `-cpu host`
//! gives it, flag for flag, and both guests run on kvm-clock (the benchmark's `initcall`
//! launch compares them on the nested testbed).
//!
//! On request ([`hide_hypervisor`], the spec's `cpu.hide_hypervisor`, QEMU's `kvm=off`
//! plus `-hypervisor`), the hypervisor bit and the whole hypervisor leaf range
//! 0x4000_0000..=0x4000_00ff (KVM's "KVMKVMKVM" signature and its paravirt feature leaf,
//! Linux's Documentation/virt/kvm/x86/cpuid.rst) are taken out, so a guest driver that
//! refuses to run under a hypervisor sees bare metal.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::{Error, Result};

/// Leaf 0x1 ECX bit 31: running under a hypervisor.
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x1 ECX bit 24: the LAPIC timer has TSC-deadline mode.
pub const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x1 EDX bit 28: HTT, `EBX[23:16]` is valid.
pub const CPUID1_EDX_HTT: u32 = 1 << 28;
/// Topology level type "SMT" in leaves 0xb/0x1f `ECX[15:8]`.
pub const LEVEL_TYPE_SMT: u32 = 1;
/// Topology level type "Core" in leaves 0xb/0x1f `ECX[15:8]`.
pub const LEVEL_TYPE_CORE: u32 = 2;
/// Physical address bits assumed when leaf 0x8000_0008 is missing (Intel SDM: 36).
pub const DEFAULT_PHYS_BITS: u8 = 36;

/// The leaves a hypervisor owns (Intel SDM Vol. 2A "CPUID": 0x4000_0000-0x4FFF_FFFF are
/// reserved for software; KVM, Hyper-V and Xen put their signature and features in the
/// first 256).
pub const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_00ff;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

/// What the VMM learnt from KVM's capabilities about features that
/// `KVM_GET_SUPPORTED_CPUID` does not report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulatedFeatures {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: the in-kernel LAPIC emulates TSC-deadline mode.
    /// Without it in CPUID, Linux calibrates the LAPIC timer against the PIT at boot and
    /// runs it in one-shot mode (a VM exit to reprogram each tick).
    pub tsc_deadline_timer: bool,
}

/// Adds the features of `emulated` to leaf 0x1 of `cpuid` (from `KVM_GET_SUPPORTED_CPUID`),
/// once per VM, before [`patch_cpuid`]. A feature not offered is cleared, so the guest is
/// never promised what KVM cannot do.
pub fn add_emulated_features(cpuid: &mut CpuId, emulated: EmulatedFeatures) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            if emulated.tsc_deadline_timer {
                e.ecx |= CPUID1_ECX_TSC_DEADLINE;
            } else {
                e.ecx &= !CPUID1_ECX_TSC_DEADLINE;
            }
        }
    }
}

/// The guest topology every patch derives from.
#[derive(Clone, Copy, Debug)]
struct Topology {
    /// This vCPU's APIC ID (= its index).
    apic_id: u32,
    /// vCPUs (= cores) in the one socket.
    count: u32,
}

impl Topology {
    /// Bits of the APIC ID that number cores within the package.
    fn core_bits(self) -> u32 {
        self.count.next_power_of_two().trailing_zeros()
    }

    /// Addressable logical IDs in the package (a power of two covering `count`).
    fn addressable_ids(self) -> u32 {
        1 << self.core_bits()
    }
}

/// Replaces `value[shift..shift+width]` with `field` (truncated to `width` bits).
fn set_bits(value: u32, shift: u32, width: u32, field: u32) -> u32 {
    let mask = ((1u64 << width) - 1) as u32;
    (value & !(mask << shift)) | ((field & mask) << shift)
}

fn patch_features(e: &mut kvm_cpuid_entry2, topo: Topology) {
    e.ebx = set_bits(e.ebx, 24, 8, topo.apic_id);
    e.ebx = set_bits(e.ebx, 16, 8, topo.addressable_ids().min(0xff));
    e.ecx |= CPUID1_ECX_HYPERVISOR;
    if topo.count > 1 {
        e.edx |= CPUID1_EDX_HTT;
    } else {
        e.edx &= !CPUID1_EDX_HTT;
    }
}

/// Threads sharing a cache of `level`, minus one: L1/L2 are per core (one thread), L3 and
/// beyond are shared by the whole package.
fn cache_sharing_minus_one(level: u32, topo: Topology) -> u32 {
    if level >= 3 {
        topo.addressable_ids() - 1
    } else {
        0
    }
}

fn patch_cache_params(e: &mut kvm_cpuid_entry2, topo: Topology) {
    // EAX[4:0] == 0: no more caches; the subleaf stays all zero.
    if e.eax & 0x1f == 0 {
        return;
    }
    let level = (e.eax >> 5) & 0x7;
    e.eax = set_bits(e.eax, 14, 12, cache_sharing_minus_one(level, topo));
    e.eax = set_bits(e.eax, 26, 6, topo.addressable_ids() - 1);
}

fn patch_amd_cache_topology(e: &mut kvm_cpuid_entry2, topo: Topology) {
    if e.eax & 0x1f == 0 {
        return;
    }
    let level = (e.eax >> 5) & 0x7;
    e.eax = set_bits(e.eax, 14, 12, cache_sharing_minus_one(level, topo));
}

fn patch_addr_sizes(e: &mut kvm_cpuid_entry2, topo: Topology) {
    // NC = cores - 1 and ApicIdCoreIdSize; EAX (address sizes) stays as KVM reports.
    e.ecx = set_bits(e.ecx, 0, 8, topo.count - 1);
    e.ecx = set_bits(e.ecx, 12, 4, topo.core_bits());
}

fn patch_amd_ext_apic_id(e: &mut kvm_cpuid_entry2, topo: Topology) {
    e.eax = topo.apic_id;
    // Core ID = APIC ID, one thread per core; node 0 of one node.
    e.ebx = topo.apic_id & 0xff;
    e.ecx = 0;
    e.edx = 0;
}

/// Subleaves 0 (SMT), 1 (core) and 2 (invalid, terminates the enumeration) of leaf 0xb or
/// 0x1f for one thread per core and `count` cores.
fn topology_subleaves(function: u32, topo: Topology) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: topo.apic_id,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        entry(1, topo.core_bits(), topo.count, LEVEL_TYPE_CORE),
        entry(2, 0, 0, 0),
    ]
}

/// Patches `cpuid` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `count`:
/// leaf 0x1 (initial APIC ID = index, addressable IDs, HTT, hypervisor bit), leaves 0xb and
/// 0x1f (x2APIC ID, 1 thread per core, `count` cores; rewritten only if present), leaf 0x4
/// (cores per package, threads sharing each cache), AMD 0x8000_0008 (NC, ApicIdCoreIdSize),
/// 0x8000_001d (cache sharing) and 0x8000_001e (extended APIC ID, core ID).
/// Errors with `VcpuCount` if `count` is 0 or above 255, `VcpuIndex` if `index >= count`,
/// `CpuidFull` if the rewritten table exceeds KVM's entry limit.
pub fn patch_cpuid(cpuid: &mut CpuId, index: u32, count: u32) -> Result<()> {
    if count == 0 || count > 255 {
        return Err(Error::VcpuCount { count, max: 255 });
    }
    if index >= count {
        return Err(Error::VcpuIndex { index, count });
    }
    let topo = Topology {
        apic_id: index,
        count,
    };
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => patch_features(e, topo),
            LEAF_CACHE_PARAMS => patch_cache_params(e, topo),
            LEAF_ADDR_SIZES => patch_addr_sizes(e, topo),
            LEAF_AMD_CACHE_TOPOLOGY => patch_amd_cache_topology(e, topo),
            LEAF_AMD_EXT_APIC_ID => patch_amd_ext_apic_id(e, topo),
            _ => {}
        }
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        replace_topology_leaf(cpuid, leaf, topo)?;
    }
    Ok(())
}

/// Replaces all subleaves of `leaf` with [`topology_subleaves`] if the leaf is present.
fn replace_topology_leaf(cpuid: &mut CpuId, leaf: u32, topo: Topology) -> Result<()> {
    if !cpuid.as_slice().iter().any(|e| e.function == leaf) {
        return Ok(());
    }
    cpuid.retain(|e| e.function != leaf);
    for entry in topology_subleaves(leaf, topo) {
        cpuid.push(entry).map_err(|_| Error::CpuidFull {
            leaf,
            subleaf: entry.index,
        })?;
    }
    Ok(())
}

/// Takes the hypervisor out of a guest's CPUID, after [`patch_cpuid`] (which sets the
/// hypervisor bit): clears leaf 0x1 `ECX[31]` and drops every leaf of
/// [`HYPERVISOR_LEAVES`]. The guest then finds no KVM signature, so it uses none of
/// KVM's paravirt features (kvmclock, PV EOI, steal time, async page faults, PV TLB
/// flush and spinlocks); the hardware leaves are unchanged.
pub fn hide_hypervisor(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            e.ecx &= !CPUID1_ECX_HYPERVISOR;
        }
    }
    cpuid.retain(|e| !HYPERVISOR_LEAVES.contains(&e.function));
}

/// Guest physical address bits: leaf 0x8000_0008 `EAX[7:0]`, lowered to the guest physical
/// address size in `EAX[23:16]` when KVM reports one (it does when its page tables cover fewer
/// bits than the host CPU); [`DEFAULT_PHYS_BITS`] when the leaf is absent.
pub fn phys_address_bits(cpuid: &CpuId) -> u8 {
    let Some(e) = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_ADDR_SIZES)
    else {
        return DEFAULT_PHYS_BITS;
    };
    let phys = (e.eax & 0xff) as u8;
    let guest_phys = ((e.eax >> 16) & 0xff) as u8;
    match (phys, guest_phys) {
        (0, _) => DEFAULT_PHYS_BITS,
        (p, 0) => p,
        (p, g) => p.min(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A host-like table: 0x1 with host APIC ID 7 and 16 logical CPUs and, as from KVM, no
    /// TSC-deadline bit (ECX bit 24), Intel 0x4 L1d and L3
    /// plus the null terminator, 0xb with a 2-thread SMT level, AMD 0x8000_0008/1d/1e.
    fn host_cpuid() -> CpuId {
        CpuId::from_entries(&[
            entry(0x0, 0, [0x1f, 0, 0, 0]),
            entry(0x1, 0, [0x906ea, 0x0710_0800, 0x7efa_fbff, 0xbfeb_fbff]),
            entry(0x4, 0, [0x1c00_4121, 0, 0, 0]),
            entry(0x4, 3, [0x1c03_c163, 0, 0, 0]),
            entry(0x4, 4, [0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x8000_0008, 0, [0x3027, 0, 0x0000_700f, 0]),
            entry(0x8000_001d, 0, [0x0000_4121, 0, 0, 0]),
            entry(0x8000_001d, 3, [0x0003_c163, 0, 0, 0]),
            entry(0x8000_001e, 0, [7, 0x0103, 0x0300, 0]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn patched(index: u32, count: u32) -> CpuId {
        let mut c = host_cpuid();
        patch_cpuid(&mut c, index, count).unwrap();
        c
    }

    fn with_emulated(tsc_deadline_timer: bool) -> CpuId {
        let mut c = host_cpuid();
        add_emulated_features(&mut c, EmulatedFeatures { tsc_deadline_timer });
        c
    }

    #[test]
    fn tsc_deadline_is_announced_when_kvm_emulates_it() {
        let ecx = find(&with_emulated(true), 0x1, 0).ecx;
        assert_ne!(ecx & CPUID1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn tsc_deadline_is_cleared_when_kvm_lacks_it() {
        let mut c = host_cpuid();
        c.as_mut_slice()[1].ecx |= CPUID1_ECX_TSC_DEADLINE;
        add_emulated_features(&mut c, EmulatedFeatures::default());
        assert_eq!(find(&c, 0x1, 0).ecx & CPUID1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn emulated_features_keep_the_other_leaf1_bits() {
        let before = find(&host_cpuid(), 0x1, 0);
        let after = find(&with_emulated(true), 0x1, 0);
        assert_eq!(
            after.ecx & !CPUID1_ECX_TSC_DEADLINE,
            before.ecx & !CPUID1_ECX_TSC_DEADLINE
        );
        assert_eq!(
            (after.eax, after.ebx, after.edx),
            (before.eax, before.ebx, before.edx)
        );
    }

    #[test]
    fn tsc_deadline_survives_the_per_vcpu_patch() {
        let mut c = with_emulated(true);
        patch_cpuid(&mut c, 1, 2).unwrap();
        assert_ne!(find(&c, 0x1, 0).ecx & CPUID1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn leaf1_carries_the_initial_apic_id() {
        assert_eq!(find(&patched(2, 4), 0x1, 0).ebx >> 24, 2);
    }

    #[test]
    fn leaf1_keeps_clflush_size_and_brand() {
        assert_eq!(find(&patched(2, 4), 0x1, 0).ebx & 0xffff, 0x0800);
    }

    #[test]
    fn leaf1_counts_addressable_ids_as_power_of_two() {
        assert_eq!((find(&patched(0, 3), 0x1, 0).ebx >> 16) & 0xff, 4);
    }

    #[test]
    fn leaf1_sets_the_hypervisor_bit() {
        assert_ne!(find(&patched(0, 1), 0x1, 0).ecx & CPUID1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn leaf1_htt_follows_vcpu_count() {
        assert_eq!(find(&patched(0, 1), 0x1, 0).edx & CPUID1_EDX_HTT, 0);
        assert_ne!(find(&patched(0, 2), 0x1, 0).edx & CPUID1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_describes_one_thread_per_core() {
        let smt = find(&patched(3, 6), 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
    }

    #[test]
    fn leaf_b_describes_count_cores() {
        let core = find(&patched(3, 6), 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 3));
    }

    #[test]
    fn leaf_b_ends_with_an_invalid_level() {
        let c = patched(3, 6);
        let end = find(&c, 0xb, 2);
        assert_eq!((end.ebx, end.ecx >> 8, end.edx), (0, 0, 3));
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn leaf_b_subleaves_are_index_significant() {
        assert_eq!(
            find(&patched(0, 2), 0xb, 1).flags,
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        );
    }

    #[test]
    fn absent_leaf_1f_is_not_added() {
        assert!(!patched(0, 2).as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn present_leaf_1f_is_rewritten_like_leaf_b() {
        let mut c = host_cpuid();
        c.push(entry(0x1f, 0, [1, 2, 0x100, 7])).unwrap();
        patch_cpuid(&mut c, 1, 2).unwrap();
        let core = find(&c, 0x1f, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (1, 2, 1));
    }

    #[test]
    fn leaf4_reports_cores_per_package() {
        assert_eq!(find(&patched(0, 8), 0x4, 0).eax >> 26, 7);
    }

    #[test]
    fn leaf4_l1_is_private_and_l3_is_shared() {
        let c = patched(0, 8);
        assert_eq!((find(&c, 0x4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 0x4, 3).eax >> 14) & 0xfff, 7);
    }

    #[test]
    fn leaf4_keeps_cache_type_and_level() {
        assert_eq!(find(&patched(0, 8), 0x4, 3).eax & 0x3fff, 0x163);
    }

    #[test]
    fn leaf4_null_subleaf_stays_null() {
        assert_eq!(find(&patched(0, 8), 0x4, 4).eax, 0);
    }

    #[test]
    fn amd_nc_is_count_minus_one() {
        let ecx = find(&patched(0, 6), 0x8000_0008, 0).ecx;
        assert_eq!((ecx & 0xff, (ecx >> 12) & 0xf), (5, 3));
    }

    #[test]
    fn amd_extended_apic_id_is_the_index() {
        let e = find(&patched(5, 6), 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (5, 5, 0));
    }

    #[test]
    fn amd_l3_is_shared_by_the_package() {
        let c = patched(0, 4);
        assert_eq!((find(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn paravirt_leaves_are_untouched() {
        let before = find(&host_cpuid(), 0x4000_0000, 0);
        assert_eq!(find(&patched(1, 2), 0x4000_0000, 0), before);
    }

    fn hidden(index: u32, count: u32) -> CpuId {
        let mut c = patched(index, count);
        c.push(entry(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]))
            .unwrap();
        c.push(entry(0x4000_0100, 0, [1, 2, 3, 4])).unwrap();
        hide_hypervisor(&mut c);
        c
    }

    #[test]
    fn hiding_clears_the_hypervisor_bit_after_the_per_vcpu_patch() {
        assert_eq!(find(&hidden(1, 2), 0x1, 0).ecx & CPUID1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn hiding_drops_the_kvm_signature_and_feature_leaves() {
        let c = hidden(0, 1);
        assert!(!c
            .as_slice()
            .iter()
            .any(|e| HYPERVISOR_LEAVES.contains(&e.function)));
    }

    #[test]
    fn hiding_keeps_leaves_outside_the_hypervisor_range() {
        let c = hidden(0, 2);
        assert_eq!(find(&c, 0x4000_0100, 0).eax, 1);
        assert_eq!(
            find(&c, 0x8000_0008, 0),
            find(&patched(0, 2), 0x8000_0008, 0)
        );
    }

    #[test]
    fn hiding_keeps_the_other_leaf1_bits() {
        let before = find(&patched(1, 2), 0x1, 0);
        let after = find(&hidden(1, 2), 0x1, 0);
        assert_eq!(after.ecx, before.ecx & !CPUID1_ECX_HYPERVISOR);
        assert_eq!(
            (after.eax, after.ebx, after.edx),
            (before.eax, before.ebx, before.edx)
        );
    }

    #[test]
    fn index_past_count_is_rejected() {
        let err = patch_cpuid(&mut host_cpuid(), 2, 2).unwrap_err();
        assert!(matches!(err, Error::VcpuIndex { index: 2, count: 2 }));
    }

    #[test]
    fn zero_vcpus_are_rejected() {
        let err = patch_cpuid(&mut host_cpuid(), 0, 0).unwrap_err();
        assert!(matches!(err, Error::VcpuCount { count: 0, .. }));
    }

    #[test]
    fn phys_bits_come_from_leaf_8000_0008() {
        assert_eq!(phys_address_bits(&host_cpuid()), 0x27);
    }

    #[test]
    fn phys_bits_are_capped_by_guest_phys_size() {
        let c = CpuId::from_entries(&[entry(0x8000_0008, 0, [0x0030_3034, 0, 0, 0])]).unwrap();
        assert_eq!(phys_address_bits(&c), 0x30);
    }

    #[test]
    fn phys_bits_default_to_36() {
        let c = CpuId::from_entries(&[entry(0x1, 0, [0, 0, 0, 0])]).unwrap();
        assert_eq!(phys_address_bits(&c), 36);
    }
}
