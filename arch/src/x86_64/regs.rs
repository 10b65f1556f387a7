//! Initial vCPU state for the Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst,
//! "64-bit boot protocol": long mode, paging on with an identity map of the loaded image,
//! zero page in `rsi`, `__BOOT_CS`/`__BOOT_DS` loaded, interrupts off), plus the FPU reset
//! values, boot MSRs and LAPIC LINT pins (Intel SDM Vol. 3A 9.1.1 reset state, 10.5.1 LVT,
//! 11.11.2.1 IA32_MTRR_DEF_TYPE; Vol. 4 MSR list).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;

use super::gdt::{
    kvm_segment_from_gdt, BOOT_CODE_INDEX, BOOT_DATA_INDEX, BOOT_GDT, BOOT_GDT_SIZE, BOOT_IDT_SIZE,
    BOOT_TSS_INDEX,
};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, ZERO_PAGE_START};

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: 387 present (hardwired to 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NW: not write-through.
pub const X86_CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const X86_CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension, required for long mode.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (KVM checks it matches CR0.PG && LME).
pub const EFER_LMA: u64 = 1 << 10;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast-strings (REP MOVS/STOS) enabled, as firmware leaves it.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_MTRR_DEF_TYPE.E: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back.
pub const MTRR_MEM_TYPE_WB: u64 = 0x6;
/// IA32_STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// IA32_FMASK (SYSCALL flag mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Offset of LVT LINT0 in the LAPIC register page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of LVT LINT1 in the LAPIC register page.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT (bits 10:8 = 111b).
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI (bits 10:8 = 100b).
pub const APIC_MODE_NMI: u32 = 0x4;
const APIC_LVT_MODE_MASK: u32 = 0x7 << 8;
const APIC_LVT_MASKED: u32 = 1 << 16;

/// `kvm_regs` for the boot vCPU: `rip` = 64-bit kernel entry, `rsi` = zero page,
/// `rsp`/`rbp` = boot stack, `rflags` = 0x2 (reserved bit 1 set, interrupts off).
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.0,
        rsi: ZERO_PAGE_START.0,
        rsp: BOOT_STACK_POINTER.0,
        rbp: BOOT_STACK_POINTER.0,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Turns `sregs` (as read with `KVM_GET_SREGS`) into long-mode state: segments from the boot
/// GDT, GDTR/IDTR, CR0 = PE|ET|PG with CD/NW cleared, CR4 |= PAE, EFER |= LME|LMA,
/// CR3 = `cr3`. Everything else (APIC base, CR8, interrupt bitmap) is kept as KVM reported.
///
/// CD/NW are cleared because with a passed-through device without snoop control KVM honours
/// the guest's cache-disable bit, and the reset value would run the decompressor uncached.
pub fn set_boot_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    let code = kvm_segment_from_gdt(BOOT_GDT[usize::from(BOOT_CODE_INDEX)], BOOT_CODE_INDEX);
    let data = kvm_segment_from_gdt(BOOT_GDT[usize::from(BOOT_DATA_INDEX)], BOOT_DATA_INDEX);
    let tss = kvm_segment_from_gdt(BOOT_GDT[usize::from(BOOT_TSS_INDEX)], BOOT_TSS_INDEX);

    sregs.gdt.base = GDT_START.0;
    sregs.gdt.limit = BOOT_GDT_SIZE - 1;
    sregs.idt.base = IDT_START.0;
    sregs.idt.limit = BOOT_IDT_SIZE - 1;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// FPU state after `FNINIT` plus the default MXCSR: fcw 0x37f, mxcsr 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// MSR values for every vCPU (`KVM_SET_MSRS`): SYSENTER_*, STAR/LSTAR/CSTAR/SFMASK,
/// KERNEL_GS_BASE and TSC = 0, MISC_ENABLE with fast strings, and MTRR default type =
/// write-back with MTRRs enabled (0x806).
///
/// Without the MTRR default, all guest RAM is uncacheable once KVM honours guest memory
/// types (it does when a non-coherent passed-through device is attached), and the guest
/// boots many times slower.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst): the guest writes guest
/// physical addresses into them (kvmclock, wall clock, async page faults, steal time,
/// PV EOI) and KVM keeps writing there until they are cleared. A reboot in place must
/// put them back to their power-on values, or KVM writes into the next kernel's memory.
pub const KVM_PARAVIRT_MSRS: [u32; 9] = [
    0x11,        // MSR_KVM_WALL_CLOCK
    0x12,        // MSR_KVM_SYSTEM_TIME
    0x4b56_4d00, // MSR_KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // MSR_KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // MSR_KVM_ASYNC_PF_EN
    0x4b56_4d03, // MSR_KVM_STEAL_TIME
    0x4b56_4d04, // MSR_KVM_PV_EOI_EN
    0x4b56_4d05, // MSR_KVM_POLL_CONTROL (power-on value 1)
    0x4b56_4d06, // MSR_KVM_ASYNC_PF_INT
];

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        // c_char is i8 on x86_64: reinterpret the bits.
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *r = b as std::os::raw::c_char;
    }
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = lapic_reg(lapic, offset);
    let reg = (reg & !(APIC_LVT_MODE_MASK | APIC_LVT_MASKED)) | (mode << 8);
    set_lapic_reg(lapic, offset, reg);
}

/// Programs LINT0 as ExtINT (the PIC's output, "virtual wire" mode) and LINT1 as NMI, both
/// unmasked, in `lapic` (as read with `KVM_GET_LAPIC`), as a BIOS leaves them for the OS.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    set_delivery_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset_sregs() -> kvm_sregs {
        // The architectural reset values KVM_GET_SREGS reports for a fresh vCPU.
        kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        }
    }

    #[test]
    fn boot_regs_enter_at_the_kernel_with_the_zero_page() {
        let r = boot_regs(GuestAddress(0x100_0200));
        assert_eq!((r.rip, r.rsi), (0x100_0200, 0x7000));
    }

    #[test]
    fn boot_regs_use_the_boot_stack_with_interrupts_off() {
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!((r.rsp, r.rbp, r.rflags), (0x8ff0, 0x8ff0, 0x2));
    }

    #[test]
    fn sregs_enable_long_mode_paging() {
        let mut s = reset_sregs();
        set_boot_sregs(&mut s, 0x9000);
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG);
        assert_eq!(
            (s.cr3, s.cr4, s.efer),
            (0x9000, X86_CR4_PAE, EFER_LME | EFER_LMA)
        );
    }

    #[test]
    fn sregs_clear_cache_disable() {
        let mut s = reset_sregs();
        set_boot_sregs(&mut s, 0x9000);
        assert_eq!(s.cr0 & (X86_CR0_CD | X86_CR0_NW), 0);
    }

    #[test]
    fn sregs_keep_the_apic_base() {
        let mut s = reset_sregs();
        set_boot_sregs(&mut s, 0x9000);
        assert_eq!(s.apic_base, 0xfee0_0900);
    }

    #[test]
    fn sregs_load_boot_segments() {
        let mut s = reset_sregs();
        set_boot_sregs(&mut s, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l), (0x08, 1));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x10);
        }
        assert_eq!((s.tr.selector, s.tr.type_), (0x18, 0xb));
    }

    #[test]
    fn sregs_point_at_the_gdt_and_idt() {
        let mut s = reset_sregs();
        set_boot_sregs(&mut s, 0x9000);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
    }

    #[test]
    fn fpu_has_reset_control_words() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn msrs_set_mtrr_default_type_write_back() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == 0x2ff).map(|e| e.data);
        assert_eq!(def, Some(0x806));
    }

    #[test]
    fn msrs_enable_fast_strings() {
        let m = boot_msrs();
        let misc = m
            .iter()
            .find(|e| e.index == MSR_IA32_MISC_ENABLE)
            .map(|e| e.data);
        assert_eq!(misc, Some(1));
    }

    #[test]
    fn msrs_zero_syscall_and_tsc() {
        let m = boot_msrs();
        for index in [
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
        ] {
            assert_eq!(m.iter().find(|e| e.index == index).map(|e| e.data), Some(0));
        }
        assert_eq!(
            m.iter().find(|e| e.index == MSR_IA32_TSC).map(|e| e.data),
            Some(0)
        );
    }

    #[test]
    fn lint0_becomes_unmasked_extint() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, APIC_LVT_MASKED);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x700);
    }

    #[test]
    fn lint1_becomes_nmi_keeping_other_bits() {
        let mut l = kvm_lapic_state::default();
        // Level-triggered bit 15 is kept; the old delivery mode (fixed, vector 0x30) isn't.
        set_lapic_reg(&mut l, APIC_LVT1, APIC_LVT_MASKED | (1 << 15) | 0x30);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT1), (1 << 15) | 0x400 | 0x30);
    }
}
