//! Reboot in place (`lifecycle.on_reboot: "restart"`): the guest asked for a reset (ACPI
//! reset register, i8042, triple fault is not one) and boots again in the same process,
//! as a PC does on a warm reset.
//!
//! Kept: guest RAM, mapped and DMA-pinned (not zeroed, as on real hardware), the KVM VM
//! and vCPU fds, the memory slots, the GSIs and irqfds, the device fds. Reset, in this
//! order once every vCPU thread has stopped ([`Vm::reboot`]): the virtio devices, every
//! passed-through function (BARs dead, VFIO reset, checked, its guest view at
//! power-on) and the root ports, the platform devices, the in-kernel PIC, IOAPIC and
//! PIT ([`PlatformState`]); then the kernel, initramfs, command line, zero page and
//! ACPI tables are loaded again (the first MiB, where the boot tables live, zeroed
//! first), and the vCPU threads start again, each restoring its power-on state first
//! ([`crate::vcpu::reset_vcpu`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use arch::x86_64::{layout, PciWindows};
use kvm_bindings::{
    kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Vm;
use crate::boot::{BootError, KernelFiles};
use crate::builder::{self, VmError};
use crate::error::Error;
use crate::pci_layout::RootPorts;
use crate::spec::VmSpec;
use crate::vcpu::{BootCpuState, PowerOnState, ResetOrder};

/// The in-kernel interrupt controllers and timer as KVM created them.
pub struct PlatformState {
    chips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

impl std::fmt::Debug for PlatformState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformState").finish_non_exhaustive()
    }
}

fn kvm(action: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { action, source }
}

impl PlatformState {
    /// Read the PIC pair, the IOAPIC and the PIT (right after creating them).
    pub fn capture(vm: &VmFd) -> Result<PlatformState, VmError> {
        let mut chips = Vec::new();
        for id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
            chips.push(chip);
        }
        let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
        Ok(PlatformState { chips, pit })
    }

    /// Put them back: every IOAPIC pin masked, PIC and PIT uninitialised.
    fn restore(&self, vm: &VmFd) -> Result<(), VmError> {
        for chip in &self.chips {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))
    }
}

/// What a reboot in place needs that the running VM does not otherwise keep.
pub(crate) struct Restart {
    pub spec: VmSpec,
    /// The host bridge windows the ACPI tables announce (as at the first boot).
    pub windows: PciWindows,
    pub platform: PlatformState,
    /// Root ports of a guest with virtio devices only (the passthrough layer keeps its
    /// own).
    pub extra_ports: Option<RootPorts>,
    pub boot: BootCpuState,
    /// Per vCPU, by index.
    pub power_on: Vec<PowerOnState>,
    /// The kernel and initramfs as the first boot read them, without the vmlinux
    /// decompressed on the host (with `on_reboot` "restart"): a sandboxed Strait may no
    /// longer open files, and the guest decompresses its kernel itself on a reboot.
    pub files: Option<KernelFiles>,
    /// The command line the guest boots with (the spec's, plus `tsc_early_khz=` with the
    /// hypervisor hidden).
    pub cmdline: String,
    /// The guest's NUMA nodes for its ACPI tables.
    pub numa: Option<builder::GuestNuma>,
}

impl Vm {
    /// Reset the machine and boot the guest again; `how` says what asked for it.
    pub(super) fn reboot(&mut self, how: &str) -> Result<(), Error> {
        let started = Instant::now();
        log::info!("guest reboot ({how}): resetting the VM in place");
        let fds = self.join_vcpus()?;
        self.virtio.reset();
        if let Some(p) = &self.passthrough {
            p.reset()?;
        }
        let restart = &mut self.restart;
        if let Some(ports) = &restart.extra_ports {
            ports.reset()?;
        }
        self.devices.reset();
        restart.platform.restore(&self.vm_fd)?;
        let boot = reload(self.ram.memory(), restart)?;
        restart.boot.entry = boot.entry;
        restart.boot.cr3 = boot.cr3;
        let cpu = Arc::new(restart.boot.clone());
        let barrier = Arc::new(Barrier::new(fds.len()));
        let orders = restart
            .power_on
            .iter()
            .map(|p| ResetOrder {
                power_on: p.clone(),
                boot: cpu.clone(),
                barrier: barrier.clone(),
            })
            .collect();
        self.stop.rearm();
        let boots = self.boots.fetch_add(1, Ordering::SeqCst) + 1;
        self.spawn_vcpus(fds, Some(orders))?;
        log::info!(
            "reboot: boot {boots} started {} ms after the guest's request",
            started.elapsed().as_millis()
        );
        Ok(())
    }
}

/// Load the guest again into RAM that still holds the last boot's bytes: the first MiB
/// (zero page, command line, boot page tables, GDT, ACPI tables) is zeroed first, the
/// kernel and initramfs are the first boot's (`kept`), or read from their paths again.
fn reload(mem: &GuestMemoryMmap, restart: &Restart) -> Result<builder::BootInfo, Error> {
    let Restart {
        spec,
        windows,
        files: kept,
        cmdline,
        numa,
        ..
    } = restart;
    let kept = kept.as_ref();
    let read;
    let files = match kept {
        Some(f) => f,
        None => {
            read = KernelFiles::read(&spec.kernel)?;
            &read
        }
    };
    let low = vec![0u8; layout::HIMEM_START.0 as usize];
    mem.write_slice(&low, GuestAddress(0))
        .map_err(|e| BootError::Arch {
            step: "zeroing the boot area",
            source: arch::Error::WriteGuest {
                what: "boot area",
                addr: 0,
                source: e,
            },
        })?;
    builder::load_guest(spec, mem, files, *windows, cmdline, numa.clone())
}
