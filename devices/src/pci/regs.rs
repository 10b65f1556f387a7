//! Config-space register offsets and bits (PCI Local Bus 3.0, 6.1-6.2 for the
//! type-0 header; PCI-to-PCI Bridge Architecture 1.2, 3.2 for the type-1 header;
//! PCIe Base 7.5.1 for the PCIe rules on both).

// Common header (both types).
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
/// Programming interface, then sub-class at 0x0a and base class at 0x0b.
pub const CLASS_PROG: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

// Type-0 only.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const ROM_ADDRESS: usize = 0x30;

// Type-1 only.
pub const PRIMARY_BUS: usize = 0x18;
pub const SECONDARY_BUS: usize = 0x19;
pub const SUBORDINATE_BUS: usize = 0x1a;
pub const SECONDARY_LATENCY: usize = 0x1b;
pub const IO_BASE: usize = 0x1c;
pub const IO_LIMIT: usize = 0x1d;
pub const SECONDARY_STATUS: usize = 0x1e;
pub const MEMORY_BASE: usize = 0x20;
pub const MEMORY_LIMIT: usize = 0x22;
pub const PREF_MEMORY_BASE: usize = 0x24;
pub const PREF_MEMORY_LIMIT: usize = 0x26;
pub const PREF_BASE_UPPER32: usize = 0x28;
pub const PREF_LIMIT_UPPER32: usize = 0x2c;
pub const IO_BASE_UPPER16: usize = 0x30;
pub const IO_LIMIT_UPPER16: usize = 0x32;
pub const ROM_ADDRESS_TYPE1: usize = 0x38;
pub const BRIDGE_CONTROL: usize = 0x3e;

/// Header type field (bits 6:0 of `HEADER_TYPE`).
pub const HEADER_TYPE_NORMAL: u8 = 0x00;
pub const HEADER_TYPE_BRIDGE: u8 = 0x01;
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

// Command register bits.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a PCIe function implements as read-write (7.5.1.1.3).
pub const COMMAND_WRITABLE: u16 = COMMAND_IO
    | COMMAND_MEMORY
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;

// Status register bits.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Error bits, write-one-to-clear: master data parity error (8), signalled
/// target abort (11), received target/master abort (12, 13), signalled system
/// error (14), detected parity error (15).
pub const STATUS_RW1C: u16 = 0xf900;

// BAR register low bits.
pub const BAR_IO_SPACE: u32 = 1 << 0;
pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
pub const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
pub const BAR_IO_ADDR_MASK: u32 = !0x3;
pub const BAR_MEM_ADDR_MASK: u32 = !0xf;
pub const ROM_ENABLE: u32 = 1 << 0;
pub const ROM_ADDR_MASK: u32 = 0xffff_f800;

/// Bridge control bits a PCIe bridge implements as read-write (7.5.1.3.13):
/// parity error response, SERR#, ISA, VGA, VGA 16-bit decode, secondary bus
/// reset. Master abort mode, fast back-to-back and the discard timers are
/// hardwired to zero on PCIe.
pub const BRIDGE_CONTROL_WRITABLE: u16 = 0x005f;
pub const BRIDGE_CONTROL_SECONDARY_RESET: u16 = 1 << 6;

/// First byte after the header, where capabilities may start.
pub const CAPABILITY_START: usize = 0x40;
/// Start of PCIe extended capabilities (PCIe Base 7.6).
pub const EXT_CAPABILITY_START: usize = 0x100;

// Capability IDs (PCI Code and ID Assignment, 2).
pub const CAP_ID_PM: u8 = 0x01;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;
