//! The boot recipe: one linear [`build_vm`] from a validated spec to running vCPUs,
//! following the order in `arch/src/x86_64/mod.rs` (VM and irqchip, RAM, kernel and
//! boot tables, devices, vCPUs). Each line is one step; each step fails with `?`.
//! Faulting RAM in and DMA-mapping it run in the background from the step after the
//! devices are taken ([`RamSetup`]), so the vCPUs start before they end.

use std::sync::Arc;

use arch::x86_64::layout;
use arch::x86_64::{AcpiConfig, AddrRange, BootParamsConfig, PciWindows};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use resources::{FunctionBar, GsiAllocator, PciMap};
use vfio_glue::sysfs::Sysfs;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot::{self, KernelFiles};
use crate::device_manager::{DeviceManager, PciFunctions};
use crate::error::Error;
use crate::interrupts::GsiRouting;
use crate::logger::{self, phase};
use crate::memory::{self, GuestRam};
use crate::numa;
use crate::passthrough::{self, AttachParams, ConfigEffects, Passthrough, PassthroughError};
use crate::pci_layout::{self, RootPorts};
use crate::ram_setup::{RamSetup, RamSetupParams};
use crate::slots::SlotPool;
use crate::spec::VmSpec;
use crate::stop::StopSignal;
use crate::vcpu::{self, BootCpuState};
use crate::virtio::{self, VirtioDevices};
use crate::vm::{PlatformState, Restart, Vm, VmParts};

/// Highest MSI GSI: KVM's routing table holds 4096 entries.
const MAX_MSI_GSI: u32 = 4095;

/// Failures of VM-level setup steps.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm{}", crate::host::kvm_hint(.0, "; is KVM enabled and may this user open it (group kvm)?"))]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create a VM{}", crate::host::kvm_hint(.0, " (another hypervisor running? out of memory?)"))]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("{action} failed")]
    Kvm {
        action: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register guest RAM slot {slot} ({guest:#x}+{len:#x}) with KVM")]
    RegisterMemory {
        slot: u32,
        guest: u64,
        len: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot write the {what}")]
    Arch {
        what: &'static str,
        #[source]
        source: arch::Error,
    },
    #[error("cannot start the console input thread")]
    ConsoleInput(#[source] std::io::Error),
    #[error("cannot set up SIGINT/SIGTERM handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the RAM setup thread")]
    RamSetupThread(#[source] std::io::Error),
}

impl VmError {
    /// True when the user fixes this on the host rather than it being Strait's fault.
    pub fn is_host_problem(&self) -> bool {
        matches!(self, VmError::OpenKvm(_) | VmError::CreateVm(_))
    }
}

/// What the guest's ACPI tables say about NUMA: the nodes, the main host bridge's node
/// and the extra host bridges (one per further node holding devices).
#[derive(Debug, Clone)]
pub(crate) struct GuestNuma {
    nodes: Vec<arch::x86_64::NumaNode>,
    pci_node: Option<u32>,
    pci_bridges: Vec<arch::x86_64::PciHostBridge>,
}

impl GuestNuma {
    /// The tables for `plan`, RAM laid out as `ram` and the placed PCI topology `map`.
    fn new(plan: &numa::NumaPlan, ram: &[(u64, u64)], map: Option<&PciMap>) -> GuestNuma {
        let (main, pci_bridges) = map.map(pci_layout::acpi_bridges).unwrap_or_default();
        let devices = map.map(pci_layout::node_functions).unwrap_or_default();
        for b in &pci_bridges {
            log::info!(
                "numa: host bridge on bus {:#04x} (buses up to {:#04x}) for guest node {:?}",
                b.bus,
                b.bus_end,
                b.pxm
            );
        }
        GuestNuma {
            nodes: plan.acpi_nodes(ram, &devices),
            pci_node: main.or((plan.nodes.len() == 1).then_some(0)),
            pci_bridges,
        }
    }
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub entry: GuestAddress,
    pub cr3: u64,
}

/// Build and start the VM described by `spec` (already validated). `stop` ends it; a
/// stop requested while building (SIGTERM) tears down before any vCPU runs.
pub fn build_vm(spec: &VmSpec, stop: Arc<StopSignal>) -> Result<Vm, Error> {
    // Read while RAM is prefaulted: both take long, and neither needs the other.
    let files = KernelFiles::spawn_read(&spec.kernel);
    let kvm = crate::preopened::open_kvm().map_err(VmError::OpenKvm)?;
    let vm_fd = Arc::new(kvm.create_vm().map_err(VmError::CreateVm)?);
    setup_platform(&vm_fd)?;
    let platform = PlatformState::capture(&vm_fd)?;
    let cpuid = vcpu::guest_cpuid(&kvm)?;
    let entries = passthrough::expand_entries(&Sysfs::default(), &spec.passthrough_hosts())
        .map_err(PassthroughError::Vfio)?;
    let cliques = passthrough::cliques(&Sysfs::default(), spec).map_err(PassthroughError::Vfio)?;
    let virtio_slots = virtio::slot_requests(spec);
    let host_nodes = numa::HostNodes::default();
    let numa = numa::plan(spec, &host_nodes, &numa::device_nodes(spec, &host_nodes))
        .map_err(crate::host::HostError::Numa)?;
    let nodes = passthrough::function_nodes(&entries, |i| numa.as_ref()?.entry_node(i));
    let ram_bytes = spec.memory_bytes();
    let mut passthrough =
        Passthrough::open(&vm_fd, &entries.concat(), &nodes, ram_bytes, &virtio_slots)?;
    let regions = memory::plan_regions(spec.memory_bytes());
    let ram_layout: Vec<(u64, u64)> = regions.iter().map(|r| (r.guest, r.len)).collect();
    let binds = numa
        .as_ref()
        .map(|n| n.ram_binds(&ram_layout))
        .unwrap_or_default();
    let ram = GuestRam::new_bound(&spec.memory, &regions, &binds)?;
    let mut slots = SlotPool::new(0);
    register_ram(&vm_fd, &ram, &mut slots)?;
    logger::mark(phase::MEMORY_READY);
    let routing = gsi_routing(&vm_fd)?;
    let mut virtio = VirtioDevices::create(spec, ram.memory(), &routing)?;
    if let Some(p) = passthrough.as_mut() {
        attach_passthrough(p, &ram, spec, &cpuid, &routing, virtio.bars(), &cliques)?;
    }
    let ram_setup = start_ram_setup(spec, &ram, passthrough.as_ref(), &stop, &binds)?;
    let virtio_map = place_virtio(&vm_fd, spec, &cpuid, passthrough.as_ref(), &mut virtio)?;
    let files = files
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
    let windows = pci_windows(spec, passthrough.as_ref(), virtio_map.as_ref());
    let cmdline = vcpu::guest_cmdline(&kvm, &spec.kernel.cmdline, spec.cpu.hide_hypervisor);
    let pci_map = passthrough
        .as_ref()
        .and_then(Passthrough::pci_map)
        .or(virtio_map.as_ref());
    let numa_acpi = numa
        .as_ref()
        .map(|n| GuestNuma::new(n, &ram_layout, pci_map));
    let boot = load_guest(
        spec,
        ram.memory(),
        &files,
        windows,
        &cmdline,
        numa_acpi.clone(),
    )?;
    // Kept for a reboot in place: a sandboxed Strait may no longer open files.
    let files =
        (spec.lifecycle.on_reboot == crate::spec::OnReboot::Restart).then(|| files.for_reboot());
    logger::mark(phase::KERNEL_LOADED);
    let effects = Arc::new(ConfigEffects::default());
    let (pci, extra_ports) =
        pci_functions(passthrough.as_ref(), &virtio, virtio_map.as_ref(), &effects)?;
    let devices = DeviceManager::new(&vm_fd, &spec.serial, stop.clone(), pci)?;
    stop.arm_power_button(devices.power_button(), spec.lifecycle.shutdown_timeout());
    if let Some(p) = passthrough.as_mut() {
        p.start(vm_fd.clone(), slots, devices.buses(), effects)?;
    }
    virtio.map_bars(devices.buses())?;
    virtio.start()?;
    stopped_early(&stop)?;
    let cpu = BootCpuState {
        entry: boot.entry,
        cr3: boot.cr3,
        supported_cpuid: cpuid,
        reset_msrs: vcpu::reset_msr_indices(&kvm)?,
        hide_hypervisor: spec.cpu.hide_hypervisor,
    };
    let (vcpus, power_on) = (0..spec.vcpus)
        .map(|i| vcpu::create_vcpu(&vm_fd, i, spec.vcpus, &cpu))
        .collect::<Result<(Vec<_>, Vec<_>), _>>()?;
    let restart = Restart {
        spec: spec.clone(),
        windows,
        platform,
        extra_ports,
        boot: cpu,
        power_on,
        files,
        cmdline,
        numa: numa_acpi,
    };
    let parts = VmParts {
        kvm,
        vm_fd,
        ram,
        ram_setup,
        devices,
        stop,
        passthrough,
        virtio,
        restart,
    };
    let mut vm = Vm::new(parts);
    vm.start_vcpus(vcpus)?;
    if let Some(n) = &numa {
        vm.pin_vcpus(
            (0..spec.vcpus)
                .map(|i| n.vcpu_cpus(i).unwrap_or_default().to_vec())
                .collect(),
        );
    }
    vm.devices()
        .start_console_input()
        .map_err(VmError::ConsoleInput)?;
    logger::mark(phase::VCPUS_STARTED);
    // The main thread enters the sandbox in `cli`, after the API thread starts: threads
    // started later would inherit the main thread's filter.
    Ok(vm)
}

/// The VM's GSI routing table and MSI GSI pool, shared by every device with MSI(-X).
fn gsi_routing(vm_fd: &Arc<VmFd>) -> Result<Arc<GsiRouting>, Error> {
    let gsis =
        GsiAllocator::new(layout::MSI_GSI_BASE, MAX_MSI_GSI).map_err(PassthroughError::GsiPool)?;
    Ok(GsiRouting::new(vm_fd.clone(), gsis))
}

/// Fault RAM in (`memory.prefault`) and DMA-map it for the passed-through functions,
/// in the background; their held bus mastering is released when it is done.
fn start_ram_setup(
    spec: &VmSpec,
    ram: &GuestRam,
    passthrough: Option<&Passthrough>,
    stop: &Arc<StopSignal>,
    binds: &[memory::RamBind],
) -> Result<RamSetup, Error> {
    let dma = passthrough.and_then(|p| Some((p.dma()?.clone(), p.function_devices())));
    if let Some((d, _)) = &dma {
        let bytes = d.regions().iter().map(|r| r.size).sum();
        // Mapped by threads without capabilities: CAP_IPC_LOCK no longer counts then.
        vfio_glue::host::cover_memlock(bytes);
    }
    let params = RamSetupParams {
        populate: spec.memory.prefault,
        chunk: crate::ram_setup::CHUNK,
        dma,
        stop: stop.clone(),
        nodes: binds
            .iter()
            .filter(|b| !b.cpus.is_empty())
            .map(|b| crate::ram_setup::NodeRam {
                guest: b.guest..b.guest + b.len,
                cpus: b.cpus.clone(),
            })
            .collect(),
    };
    RamSetup::start(ram, params).map_err(|e| VmError::RamSetupThread(e).into())
}

/// Take the opened devices over (after RAM exists: DMA maps it), placing the virtio
/// slots' BARs (`extra_bars`) in the same plan.
fn attach_passthrough(
    p: &mut Passthrough,
    ram: &GuestRam,
    spec: &VmSpec,
    cpuid: &CpuId,
    routing: &Arc<GsiRouting>,
    extra_bars: Vec<Vec<FunctionBar>>,
    cliques: &[(vfio_glue::HostPciAddress, u8)],
) -> Result<(), Error> {
    let params = AttachParams {
        ram,
        ram_size: spec.memory_bytes(),
        routing,
        phys_bits: arch::x86_64::phys_address_bits(cpuid),
        extra_bars,
        cliques,
        p2p: spec.p2p,
    };
    Ok(p.attach(params)?)
}

/// Give the virtio devices their place: in the topology the passthrough layer placed,
/// or, without passed-through devices, in one placed here (returned).
fn place_virtio(
    vm_fd: &VmFd,
    spec: &VmSpec,
    cpuid: &CpuId,
    passthrough: Option<&Passthrough>,
    virtio: &mut VirtioDevices,
) -> Result<Option<PciMap>, Error> {
    if virtio.is_empty() {
        return Ok(None);
    }
    if let Some((p, map)) = passthrough.and_then(|p| Some((p, p.pci_map()?))) {
        virtio.place(map, p.first_extra_port(), vm_fd)?;
        return Ok(None);
    }
    let map = pci_layout::place_without_iommu(
        &virtio::slot_requests(spec),
        &virtio.bars(),
        spec.memory_bytes(),
        arch::x86_64::phys_address_bits(cpuid),
    )?;
    virtio.place(&map, 0, vm_fd)?;
    Ok(Some(map))
}

/// The PCI functions below the host bridge: root ports first, then the endpoints; and
/// the root ports built here for virtio devices alone (kept for a machine reset).
fn pci_functions(
    passthrough: Option<&Passthrough>,
    virtio: &VirtioDevices,
    virtio_map: Option<&PciMap>,
    effects: &Arc<ConfigEffects>,
) -> Result<(PciFunctions, Option<RootPorts>), Error> {
    let mut pci = passthrough
        .map(|p| p.pci_functions(effects))
        .unwrap_or_default();
    let map = passthrough.and_then(Passthrough::pci_map).or(virtio_map);
    pci.root_buses = map.map(pci_layout::root_buses).unwrap_or_default();
    let ports = virtio_map.map(|m| RootPorts::build(m, &[])).transpose()?;
    if let Some(p) = &ports {
        pci.functions.extend(p.functions());
    }
    pci.functions.extend(virtio.pci_functions());
    Ok((pci, ports))
}

/// A stop requested while building (SIGINT/SIGTERM) ends the build here.
fn stopped_early(stop: &StopSignal) -> Result<(), Error> {
    if stop.is_stopping() {
        crate::vm::outcome(stop.wait())?;
    }
    Ok(())
}

/// The host bridge windows in ACPI: the placed plan's (by the passthrough layer, or for
/// virtio devices alone), or the platform's with bus 0 only and no 64-bit window.
fn pci_windows(
    spec: &VmSpec,
    passthrough: Option<&Passthrough>,
    virtio_map: Option<&PciMap>,
) -> PciWindows {
    if let Some(w) = passthrough.and_then(Passthrough::acpi_windows) {
        return w;
    }
    if let Some(map) = virtio_map {
        return pci_layout::acpi_windows(map);
    }
    let mmio64 = AddrRange {
        base: layout::mmio64_start(spec.memory_bytes()).0,
        size: 0,
    };
    // Announcing all 256 buses makes Linux probe every slot of every bus for peer host
    // bridges (about 8000 config reads, 16000 port exits, more than a second of boot).
    PciWindows {
        bus_end: 0,
        ..PciWindows::platform(mmio64)
    }
}

/// VM-wide KVM state that must exist before memory and vCPUs: the VMX real-mode TSS and
/// identity map pages (inside the 32-bit hole, never RAM), the in-kernel IOAPIC/PIC/LAPIC
/// and the PIT (with a dummy speaker port so port 0x61 stays in the kernel).
fn setup_platform(vm: &VmFd) -> Result<(), VmError> {
    let kvm = |action| move |source| VmError::Kvm { action, source };
    vm.set_tss_address(layout::KVM_TSS_ADDRESS.0 as usize)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS.0)
        .map_err(kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// One KVM memory slot per RAM region, from `slots` (device BARs take theirs later).
fn register_ram(vm: &VmFd, ram: &GuestRam, slots: &mut SlotPool) -> Result<(), VmError> {
    for (guest, host, len) in ram.slots() {
        let slot = slots.get();
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host..host+len` is a live read-write mapping owned by `ram`, which the
        // `Vm` keeps until its vCPU threads are joined and the VM fd is closed.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| VmError::RegisterMemory {
            slot,
            guest,
            len,
            source,
        })?;
    }
    Ok(())
}

/// Kernel, initramfs, command line, ACPI and MP tables, zero page and boot page tables.
pub(crate) fn load_guest(
    spec: &VmSpec,
    mem: &GuestMemoryMmap,
    files: &KernelFiles,
    pci: PciWindows,
    cmdline: &str,
    numa: Option<GuestNuma>,
) -> Result<BootInfo, Error> {
    let ram_size = spec.memory_bytes();
    let kernel = boot::load_kernel(mem, files)?;
    let initramfs = boot::load_initramfs(mem, files, &kernel, ram_size)?;
    let cmdline_size = boot::load_cmdline(mem, &files.image, cmdline)?;
    let rsdp = write_acpi(mem, spec, pci, numa)?;
    let arch_err = |what| move |source| VmError::Arch { what, source };
    arch::x86_64::write_mptable(mem, spec.vcpus).map_err(arch_err("MP table"))?;
    let e820 = arch::x86_64::e820_table(ram_size).map_err(arch_err("e820 map"))?;
    let params = arch::x86_64::build_boot_params(&BootParamsConfig {
        setup_header: kernel.header,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_size,
        initramfs,
        e820,
        rsdp_addr: Some(rsdp),
    })
    .map_err(arch_err("zero page"))?;
    arch::x86_64::write_boot_params(mem, &params).map_err(arch_err("zero page"))?;
    let cr3 = arch::x86_64::write_boot_tables(mem).map_err(arch_err("boot GDT and page tables"))?;
    boot::write_reset_vector(mem)?;
    log::debug!(
        "kernel entry {:#x}, image end {:#x}, initramfs {initramfs:x?}",
        kernel.entry.0,
        kernel.end
    );
    Ok(BootInfo {
        entry: kernel.entry,
        cr3,
    })
}

/// ACPI tables for the platform and the PCI host bridge windows `pci`.
fn write_acpi(
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    pci: PciWindows,
    numa: Option<GuestNuma>,
) -> Result<GuestAddress, VmError> {
    let (numa, pci_pxm, pci_bridges) = numa.map_or((Vec::new(), None, Vec::new()), |n| {
        (n.nodes, n.pci_node, n.pci_bridges)
    });
    let cfg = AcpiConfig {
        vcpus: spec.vcpus,
        pci,
        com1: true,
        numa,
        pci_pxm,
        pci_bridges,
    };
    arch::x86_64::create_acpi_tables(mem, &cfg).map_err(|source| VmError::Arch {
        what: "ACPI tables",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_passthrough_acpi_announces_bus_0_and_no_64_bit_window() {
        let spec = crate::spec::VmSpec::parse(
            r#"{"vcpus": 1, "memory": {"size_mib": 512}, "kernel": {"path": "/k"}}"#,
        )
        .unwrap();
        let w = pci_windows(&spec, None, None);
        assert_eq!(w.bus_end, 0);
        assert_eq!(w.mmio64.size, 0);
        assert_eq!(w.mmio64.base, 1 << 32);
    }

    #[test]
    fn kvm_setup_failures_are_not_host_problems_but_open_is() {
        let e = kvm_ioctls::Error::new(libc::ENOENT);
        assert!(VmError::OpenKvm(e).is_host_problem());
        assert!(VmError::CreateVm(e).is_host_problem());
        assert!(!VmError::Kvm {
            action: "KVM_CREATE_IRQCHIP",
            source: e
        }
        .is_host_problem());
    }
}
