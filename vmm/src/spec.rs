//! The VM spec: the JSON document `strait run SPEC.json` boots (README.md, "The VM spec").
//!
//! Parsing rejects unknown fields everywhere, so a typo never silently changes a VM.
//! [`VmSpec::validate`] then checks what can be decided from the document alone (counts,
//! sizes, PCI address syntax, duplicates). Whether the files and host resources it names
//! exist is `host.rs`'s job, so that this module stays pure and unit-testable.

use std::fmt;
use std::path::{Path, PathBuf};

use devices::pci::{Bdf, BdfError};
use devices::virtio::net::MacAddr;
use serde::{Deserialize, Serialize};

/// Largest vCPU count: xAPIC IDs are 8 bits and 0xff is the broadcast ID.
pub const MAX_VCPUS: u32 = 255;
/// Kernel command line used when the spec gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Size of the command line area in the guest layout, including the NUL.
pub const CMDLINE_AREA: usize = 64 * 1024;

/// A spec the document or its values make unusable. Each variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the spec file")]
    ReadSpec(#[source] std::io::Error),
    #[error("line {line}, column {column}: malformed JSON: {msg}")]
    Syntax {
        line: usize,
        column: usize,
        msg: String,
    },
    #[error(
        "{}unknown field `{field}`; {expected} (line {line}, column {column})",
        prefix(at)
    )]
    UnknownField {
        /// Path of the object holding the field, e.g. `memory` (empty at the top).
        at: String,
        field: String,
        expected: String,
        line: usize,
        column: usize,
    },
    #[error("{}{msg} (line {line}, column {column})", prefix(at))]
    InvalidValue {
        /// Path of the offending value, e.g. `memory.hugepages` (empty at the top).
        at: String,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{field}: cannot read {}", path.display())]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "serial.max_bytes: 0 would keep nothing; give a positive size, or \"serial\": \"off\""
    )]
    ConsoleCapZero,
    #[error("lifecycle.shutdown_timeout_s: {value} is outside 1..={max}")]
    ShutdownTimeout { value: u32, max: u32 },
    #[error("api_socket: must not be empty")]
    ApiSocketEmpty,
    #[error("vcpus: {count} is outside 1..={max}")]
    VcpuCount { count: u32, max: u32 },
    #[error("memory.size_mib: must be at least {min} MiB")]
    MemoryTooSmall { min: u64 },
    #[error(
        "memory.size_mib: {size_mib} MiB is more than the {max} MiB (64 TiB) an x86-64 guest \
         can address; use a smaller size"
    )]
    MemoryTooLarge { size_mib: u64, max: u64 },
    #[error(
        "memory.size_mib: {size_mib} MiB is not a multiple of the {page} hugepage size; \
         use a multiple of {multiple_mib}"
    )]
    MemoryNotPageMultiple {
        size_mib: u64,
        page: HugePages,
        multiple_mib: u64,
    },
    #[error("kernel.cmdline: {len} bytes with the NUL, the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "kernel.cmdline: byte {at} is {byte:#04x}, not printable ASCII; \
         use characters from space to `~` only (no newline, tab or escape)"
    )]
    CmdlineInvalid { at: usize, byte: u8 },
    #[error("passthrough[{index}].host")]
    PciAddress {
        index: usize,
        #[source]
        source: BdfError,
    },
    #[error(
        "disks[{index}].serial: {reason}; use at most 20 printable ASCII characters \
         (letters, digits, `-`, `_`, `.`)"
    )]
    DiskSerial { index: usize, reason: &'static str },
    #[error("disks[{index}].path: the same image is also disks[{first}]; give each disk its own")]
    DuplicateDisk { index: usize, first: usize },
    #[error(
        "net[{index}]: give exactly one of \"tap\" (an existing tap's name) and \"tap_fd\" \
         (an open tap fd Strait inherits)"
    )]
    NetBackend { index: usize },
    #[error("net[{index}].tap: {name:?} is not an interface name (1-15 bytes, no `/`, no space)")]
    TapName { index: usize, name: String },
    #[error(
        "net[{index}].{field}: the same tap is also net[{first}]; give each interface its own"
    )]
    DuplicateTap {
        index: usize,
        first: usize,
        field: &'static str,
    },
    #[error(
        "passthrough[{index}].clique: {clique} is above 15; the GPUDirect clique ID has four bits"
    )]
    CliqueRange { index: usize, clique: u8 },
    #[error("numa: the nodes' memory_mib add up to {sum} MiB, but memory.size_mib is {size}")]
    NumaMemorySum { sum: u64, size: u64 },
    #[error("numa[{node}].memory_mib: {mib} MiB is not a multiple of the {page} hugepage size")]
    NumaMemoryPage {
        node: usize,
        mib: u64,
        page: HugePages,
    },
    #[error("numa[{node}].vcpus: vCPU {cpu} does not exist (vcpus is {vcpus}: 0..={})", .vcpus - 1)]
    NumaCpuMissing { node: usize, cpu: u32, vcpus: u32 },
    #[error("numa[{node}].vcpus: vCPU {cpu} is already on numa[{first}]")]
    NumaCpuTwice { node: usize, first: usize, cpu: u32 },
    #[error("numa: vCPU {cpu} is on no node; list every vCPU once")]
    NumaCpuUnplaced { cpu: u32 },
    #[error("numa[{node}].devices: {device} is not a passthrough index (0..{count})")]
    NumaDevice {
        node: usize,
        device: usize,
        count: usize,
    },
    #[error("numa[{node}].devices: passthrough {device} is already on numa[{first}]; list each device on one node")]
    NumaDeviceTwice {
        node: usize,
        first: usize,
        device: usize,
    },
    #[error("numa: no node; give at least one, or \"auto\"")]
    NumaEmpty,
    #[error("passthrough[{index}].host: {addr} is already passed through by passthrough[{first}]")]
    DuplicatePassthrough {
        index: usize,
        first: usize,
        /// The entry's text, a function or a slot.
        addr: String,
    },
}

/// The whole VM spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Number of vCPUs, 1..=255.
    pub vcpus: u32,
    pub memory: MemorySpec,
    /// What the guest's CPUs show of the hypervisor.
    #[serde(default, skip_serializing_if = "CpuSpec::is_default")]
    pub cpu: CpuSpec,
    pub kernel: KernelSpec,
    /// Host PCI functions given to the guest.
    #[serde(default)]
    pub passthrough: Vec<PassthroughSpec>,
    /// Where the guest's COM1 goes.
    #[serde(default)]
    pub serial: SerialSpec,
    /// How the VM ends and restarts.
    #[serde(default)]
    pub lifecycle: LifecycleSpec,
    /// Unix socket of the control API (HTTP/1.1 + JSON), created mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// virtio-blk disks, in the order the guest names them (/dev/vda, /dev/vdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// virtio-net interfaces over host taps, in the order the guest finds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetSpec>,
    /// Peer-to-peer DMA between passed-through devices.
    #[serde(default, skip_serializing_if = "P2pMode::is_auto")]
    pub p2p: P2pMode,
    /// Guest NUMA nodes and the host nodes behind them (`numa.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<NumaSpec>,
}

/// `numa`: `"auto"` (one guest node per host node with CPUs, as `numa.rs` says) or the
/// guest nodes, each `{"vcpus": [..], "memory_mib": N, "host_node": H,
/// "devices": [passthrough indices]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumaSpec {
    Auto(NumaAuto),
    Nodes(Vec<NumaNodeSpec>),
}

/// The word `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumaAuto {
    Auto,
}

/// One guest NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNodeSpec {
    /// Its vCPUs (indices 0..vcpus); may be empty (a memory-only node).
    #[serde(default)]
    pub vcpus: Vec<u32>,
    /// Its share of `memory.size_mib`.
    pub memory_mib: u64,
    /// The host node its RAM comes from and its vCPUs run on.
    pub host_node: u32,
    /// Indices into `passthrough` of the devices that sit on it.
    #[serde(default)]
    pub devices: Vec<usize>,
}

/// `p2p`: whether each passed-through BAR is DMA-mapped at its guest address, so that one
/// device can DMA into another's BAR. `true`/`false` or a mode name (serde impls below).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum P2pMode {
    /// On when more than one device (guest slot) is passed through, best effort.
    #[default]
    Auto,
    /// On; a BAR outside the IOMMU's IOVA ranges is an error.
    On,
    /// On; a BAR outside the IOMMU's IOVA ranges turns P2P off for its device, with a
    /// warning.
    BestEffort,
    /// Off.
    Off,
}

const P2P_NAMES: [(&str, P2pMode); 4] = [
    ("auto", P2pMode::Auto),
    ("on", P2pMode::On),
    ("best-effort", P2pMode::BestEffort),
    ("off", P2pMode::Off),
];

impl Serialize for P2pMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = P2P_NAMES.iter().find(|(_, m)| m == self).map(|(n, _)| *n);
        s.serialize_str(name.unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for P2pMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(P2pVisitor)
    }
}

struct P2pVisitor;

impl serde::de::Visitor<'_> for P2pVisitor {
    type Value = P2pMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"true, false, "auto", "on", "best-effort" or "off""#)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<P2pMode, E> {
        Ok(if v { P2pMode::On } else { P2pMode::Off })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<P2pMode, E> {
        P2P_NAMES
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, mode)| *mode)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
}

impl P2pMode {
    fn is_auto(&self) -> bool {
        *self == P2pMode::Auto
    }

    /// Whether P2P is on for `slots` guest slots, and whether a BAR outside the IOVA
    /// ranges is an error (rather than P2P off for that device).
    pub fn resolve(self, slots: usize) -> Option<bool> {
        match self {
            P2pMode::Auto => (slots > 1).then_some(false),
            P2pMode::On => Some(true),
            P2pMode::BestEffort => Some(false),
            P2pMode::Off => None,
        }
    }
}

/// One virtio-net interface over a host tap: by name, or an fd Strait inherits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// An existing tap (`ip tuntap add dev NAME mode tap user USER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An open tap fd Strait inherits and owns from then on, attached with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (for a launcher that keeps CAP_NET_ADMIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_fd: Option<i32>,
    /// The guest's MAC; default derived from the tap name (stable, locally administered).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "mac_text")]
    pub mac: Option<MacAddr>,
    /// Use vhost-net when /dev/vhost-net opens; false keeps the frames in Strait's
    /// I/O thread.
    #[serde(default = "default_true")]
    pub vhost: bool,
}

impl NetSpec {
    /// What names the tap in logs and seeds the default MAC.
    pub fn tap_label(&self) -> String {
        match (&self.tap, self.tap_fd) {
            (Some(name), _) => name.clone(),
            (None, Some(fd)) => format!("fd {fd}"),
            (None, None) => String::new(),
        }
    }

    /// The MAC the guest sees.
    pub fn mac_or_default(&self) -> MacAddr {
        self.mac
            .unwrap_or_else(|| MacAddr::derived(&self.tap_label()))
    }
}

/// `net[].mac` as "52:54:00:12:34:56", parsed once here.
mod mac_text {
    use devices::virtio::net::MacAddr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Option<MacAddr>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(m) => s.serialize_str(&m.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MacAddr>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Shutdown and reboot policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSpec {
    /// Seconds the guest gets to power off after the power button (SIGTERM, SIGINT,
    /// SIGHUP, `PUT /vm/shutdown` without a timeout) before Strait stops it.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_s: u32,
    /// What a guest reboot does.
    #[serde(default)]
    pub on_reboot: OnReboot,
}

impl Default for LifecycleSpec {
    fn default() -> Self {
        LifecycleSpec {
            shutdown_timeout_s: DEFAULT_SHUTDOWN_TIMEOUT_S,
            on_reboot: OnReboot::default(),
        }
    }
}

impl LifecycleSpec {
    /// The graceful shutdown timeout.
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.shutdown_timeout_s))
    }
}

/// `lifecycle.on_reboot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReboot {
    /// Reset vCPUs and devices and boot the kernel again, in the same process.
    #[default]
    Restart,
    /// Exit with the "guest rebooted" code.
    Exit,
}

/// Default of `lifecycle.shutdown_timeout_s`: what systemd gives a unit to stop.
pub const DEFAULT_SHUTDOWN_TIMEOUT_S: u32 = 30;
/// Largest `lifecycle.shutdown_timeout_s`: one hour.
pub const MAX_SHUTDOWN_TIMEOUT_S: u32 = 3600;

fn default_shutdown_timeout() -> u32 {
    DEFAULT_SHUTDOWN_TIMEOUT_S
}

/// One virtio-blk disk: a raw image file or a host block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// The guest may not write (VIRTIO_BLK_F_RO); the file is opened read-only.
    #[serde(default)]
    pub readonly: bool,
    /// O_DIRECT: no host page cache (needs a filesystem that supports it).
    #[serde(default)]
    pub direct: bool,
    /// What GET_ID answers (/dev/disk/by-id/virtio-SERIAL); default `strait-diskN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl DiskSpec {
    /// The serial the guest sees for disk `index`.
    pub fn serial_or_default(&self, index: usize) -> String {
        self.serial
            .clone()
            .unwrap_or_else(|| format!("strait-disk{index}"))
    }
}

/// Longest disk serial (VIRTIO_BLK_ID_BYTES).
pub const MAX_DISK_SERIAL: usize = 20;

/// Guest RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    pub size_mib: u64,
    #[serde(default)]
    pub hugepages: HugePages,
    /// Fault all of RAM in before the guest starts (predictable latency, early failure).
    #[serde(default = "default_true")]
    pub prefault: bool,
}

/// The guest's view of its CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Clear the CPUID hypervisor bit and drop KVM's signature leaves (QEMU's `kvm=off`
    /// with `-hypervisor`): the guest then loses kvmclock and KVM's other paravirt features.
    #[serde(default)]
    pub hide_hypervisor: bool,
}

impl CpuSpec {
    fn is_default(&self) -> bool {
        *self == CpuSpec::default()
    }
}

/// Backing page size of guest RAM. Deserialized by hand so that a wrong value (`true`,
/// `"4M"`) is named with the values allowed instead of serde's "expected value".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HugePages {
    /// Anonymous memory, transparent huge pages requested with madvise.
    #[default]
    None,
    /// hugetlb pages of 2 MiB from the host pool.
    Size2M,
    /// hugetlb pages of 1 GiB from the host pool.
    Size1G,
}

impl HugePages {
    /// Page size in bytes that guest RAM sizes must be a multiple of.
    pub fn page_size(self) -> u64 {
        match self {
            HugePages::None => 4 << 10,
            HugePages::Size2M => 2 << 20,
            HugePages::Size1G => 1 << 30,
        }
    }
}

const HUGEPAGE_NAMES: [(&str, HugePages); 3] = [
    ("none", HugePages::None),
    ("2M", HugePages::Size2M),
    ("1G", HugePages::Size1G),
];

impl Serialize for HugePages {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = HUGEPAGE_NAMES
            .iter()
            .find(|(_, p)| p == self)
            .map(|(n, _)| *n);
        s.serialize_str(name.unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for HugePages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HugePagesVisitor)
    }
}

struct HugePagesVisitor;

impl serde::de::Visitor<'_> for HugePagesVisitor {
    type Value = HugePages;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"one of "none", "2M", "1G""#)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HugePages, E> {
        HUGEPAGE_NAMES
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, page)| *page)
            .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
    }
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePages::None => "4 KiB",
            HugePages::Size2M => "2 MiB",
            HugePages::Size1G => "1 GiB",
        })
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// A bzImage or an uncompressed ELF vmlinux.
    pub path: PathBuf,
    /// Optional initramfs (cpio, optionally compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

/// One host PCI function, or every function of one host device, to pass through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughSpec {
    /// Host address, `DDDD:BB:DD.F` as in sysfs, or `DDDD:BB:DD` for the whole slot.
    pub host: HostAddress,
    /// NVIDIA GPUDirect P2P clique ID (0-15) for the GPU function(s) of this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clique: Option<u8>,
}

/// What `passthrough[].host` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSelector {
    /// One function, `DDDD:BB:DD.F`.
    Function(Bdf),
    /// Every function of a device, `DDDD:BB:DD` (held as its function 0): expanded from
    /// sysfs by the host checks, passed through as one multi-function guest slot.
    Slot(Bdf),
}

impl HostSelector {
    /// The address given, function 0 for a slot.
    pub fn addr(self) -> Bdf {
        match self {
            HostSelector::Function(a) | HostSelector::Slot(a) => a,
        }
    }

    /// True when `self` and `other` name a function in common.
    fn overlaps(self, other: HostSelector) -> bool {
        let (a, b) = (self.addr(), other.addr());
        let same_slot =
            a.segment() == b.segment() && a.bus() == b.bus() && a.device() == b.device();
        match (self, other) {
            (HostSelector::Function(_), HostSelector::Function(_)) => a == b,
            _ => same_slot,
        }
    }

    /// Parses `DDDD:BB:DD.F` / `BB:DD.F` (a function) or `DDDD:BB:DD` / `BB:DD` (a slot).
    fn parse(text: &str) -> Result<HostSelector, BdfError> {
        let text = text.trim();
        if text.contains('.') {
            return text.parse().map(HostSelector::Function);
        }
        format!("{text}.0").parse().map(HostSelector::Slot)
    }
}

/// `passthrough[].host`: parsed once, when the spec loads, into the typed address the
/// rest of Strait passes along; the text stays for messages and for writing the spec
/// back. A malformed address is kept as its error, which [`VmSpec::validate`] reports
/// with the entry's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct HostAddress {
    text: String,
    parsed: Result<HostSelector, BdfError>,
}

impl From<String> for HostAddress {
    fn from(text: String) -> Self {
        let parsed = HostSelector::parse(&text);
        HostAddress { text, parsed }
    }
}

impl From<&str> for HostAddress {
    fn from(text: &str) -> Self {
        HostAddress::from(text.to_string())
    }
}

impl From<HostAddress> for String {
    fn from(h: HostAddress) -> String {
        h.text
    }
}

impl HostAddress {
    /// The function or slot, or why the text is neither.
    pub fn parsed(&self) -> Result<HostSelector, BdfError> {
        self.parsed.clone()
    }
}

/// Destination of the guest's serial console: `"stdio"`, `"off"` or
/// `{"file": path, "max_bytes": N}` (see the serde impls below).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SerialSpec {
    /// Output to Strait's stdout, input from its stdin.
    #[default]
    Stdio,
    /// No console (the port still exists, output is dropped).
    Off,
    /// Output appended to a file.
    File(ConsoleFileSpec),
}

/// A console file: `{"file": path}`, optionally `"max_bytes": N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFileSpec {
    /// Appended to; created mode 0600; never a symbolic link.
    pub file: PathBuf,
    /// The file never grows past this many bytes: later output is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

const SERIAL_NAMES: [&str; 2] = ["stdio", "off"];

impl Serialize for SerialSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SerialSpec::Stdio => s.serialize_str(SERIAL_NAMES[0]),
            SerialSpec::Off => s.serialize_str(SERIAL_NAMES[1]),
            SerialSpec::File(file) => file.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SerialSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SerialVisitor)
    }
}

/// A string names a destination, a map is a console file.
struct SerialVisitor;

impl<'de> serde::de::Visitor<'de> for SerialVisitor {
    type Value = SerialSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#""stdio", "off" or {"file": path}"#)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SerialSpec, E> {
        match v {
            "stdio" => Ok(SerialSpec::Stdio),
            "off" => Ok(SerialSpec::Off),
            _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SerialSpec, A::Error> {
        let de = serde::de::value::MapAccessDeserializer::new(map);
        ConsoleFileSpec::deserialize(de).map(SerialSpec::File)
    }
}

fn default_true() -> bool {
    true
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// Smallest RAM the boot layout works with (kernel, initramfs and page tables need room).
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest RAM: 64 TiB, what x86-64 Linux with 4-level paging addresses
/// (MAX_PHYSMEM_BITS 46); it also keeps every size in bytes far from overflowing.
pub const MAX_MEMORY_MIB: u64 = 64 << 20;

impl VmSpec {
    /// Read, parse and validate a spec file. Relative paths in it are resolved against
    /// the file's directory, so a spec and its kernel can move together.
    pub fn load(path: &Path) -> Result<VmSpec, SpecError> {
        let text = crate::files::open_regular(path)
            .and_then(std::io::read_to_string)
            .map_err(SpecError::ReadSpec)?;
        let mut spec = VmSpec::parse(&text)?;
        spec.validate()?;
        spec.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(spec)
    }

    /// Make the kernel, initramfs and console file paths absolute relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.kernel.path);
        if let Some(p) = self.kernel.initramfs.as_mut() {
            resolve(p);
        }
        if let SerialSpec::File(c) = &mut self.serial {
            resolve(&mut c.file);
        }
        if let Some(p) = self.api_socket.as_mut() {
            resolve(p);
        }
        for d in &mut self.disks {
            resolve(&mut d.path);
        }
    }

    /// Parse JSON text into a spec, without validating values. Errors name the path of
    /// the offending field (`memory.hugepages`) as well as its line and column.
    pub fn parse(text: &str) -> Result<VmSpec, SpecError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| json_error(&e.path().to_string(), e.into_inner()))?;
        de.end().map_err(|e| json_error("", e))?;
        Ok(spec)
    }

    /// Check everything that can be decided from the document alone.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::VcpuCount {
                count: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        self.validate_memory()?;
        self.validate_cmdline()?;
        if let SerialSpec::File(ConsoleFileSpec {
            max_bytes: Some(0), ..
        }) = self.serial
        {
            return Err(SpecError::ConsoleCapZero);
        }
        self.passthrough_addresses()?;
        let timeout = self.lifecycle.shutdown_timeout_s;
        if !(1..=MAX_SHUTDOWN_TIMEOUT_S).contains(&timeout) {
            return Err(SpecError::ShutdownTimeout {
                value: timeout,
                max: MAX_SHUTDOWN_TIMEOUT_S,
            });
        }
        if self
            .api_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(SpecError::ApiSocketEmpty);
        }
        self.validate_disks()?;
        self.validate_net()?;
        if let Some(NumaSpec::Nodes(nodes)) = &self.numa {
            self.validate_numa(nodes)?;
        }
        Ok(())
    }

    fn validate_net(&self) -> Result<(), SpecError> {
        for (index, n) in self.net.iter().enumerate() {
            match (&n.tap, n.tap_fd) {
                (Some(name), None) => {
                    let ok = !name.is_empty()
                        && name.len() < 16
                        && !name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace());
                    if !ok {
                        return Err(SpecError::TapName {
                            index,
                            name: name.clone(),
                        });
                    }
                }
                (None, Some(fd)) if fd >= 0 => {}
                _ => return Err(SpecError::NetBackend { index }),
            }
            let same = |o: &NetSpec| {
                (o.tap.is_some() && o.tap == n.tap) || (o.tap_fd.is_some() && o.tap_fd == n.tap_fd)
            };
            if let Some(first) = self.net[..index].iter().position(same) {
                let field = if n.tap.is_some() { "tap" } else { "tap_fd" };
                return Err(SpecError::DuplicateTap {
                    index,
                    first,
                    field,
                });
            }
        }
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), SpecError> {
        for (index, d) in self.disks.iter().enumerate() {
            if let Some(first) = self.disks[..index].iter().position(|o| o.path == d.path) {
                return Err(SpecError::DuplicateDisk { index, first });
            }
            let Some(serial) = &d.serial else {
                continue;
            };
            let reason = if serial.is_empty() {
                Some("empty")
            } else if serial.len() > MAX_DISK_SERIAL {
                Some("longer than 20 bytes")
            } else if !serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                Some("has a character other than letters, digits, `-`, `_`, `.`")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(SpecError::DiskSerial { index, reason });
            }
        }
        Ok(())
    }

    /// Guest nodes cover every vCPU once, add up to the RAM size in whole hugepages and
    /// name existing passthrough entries. The host nodes are checked on the host.
    fn validate_numa(&self, nodes: &[NumaNodeSpec]) -> Result<(), SpecError> {
        if nodes.is_empty() {
            return Err(SpecError::NumaEmpty);
        }
        let mut owner: Vec<Option<usize>> = vec![None; self.vcpus as usize];
        let mut device_owner: Vec<Option<usize>> = vec![None; self.passthrough.len()];
        let page_mib = (self.memory.hugepages.page_size() >> 20).max(1);
        for (node, n) in nodes.iter().enumerate() {
            if n.memory_mib % page_mib != 0 {
                return Err(SpecError::NumaMemoryPage {
                    node,
                    mib: n.memory_mib,
                    page: self.memory.hugepages,
                });
            }
            for &cpu in &n.vcpus {
                let slot = owner
                    .get_mut(cpu as usize)
                    .ok_or(SpecError::NumaCpuMissing {
                        node,
                        cpu,
                        vcpus: self.vcpus,
                    })?;
                if let Some(first) = *slot {
                    return Err(SpecError::NumaCpuTwice { node, first, cpu });
                }
                *slot = Some(node);
            }
            if let Some(&device) = n.devices.iter().find(|d| **d >= self.passthrough.len()) {
                return Err(SpecError::NumaDevice {
                    node,
                    device,
                    count: self.passthrough.len(),
                });
            }
            for &device in &n.devices {
                if let Some(first) = device_owner[device].replace(node) {
                    return Err(SpecError::NumaDeviceTwice {
                        node,
                        first,
                        device,
                    });
                }
            }
        }
        if let Some(cpu) = owner.iter().position(Option::is_none) {
            return Err(SpecError::NumaCpuUnplaced { cpu: cpu as u32 });
        }
        let sum: u64 = nodes.iter().map(|n| n.memory_mib).sum();
        if sum != self.memory.size_mib {
            return Err(SpecError::NumaMemorySum {
                sum,
                size: self.memory.size_mib,
            });
        }
        Ok(())
    }

    fn validate_memory(&self) -> Result<(), SpecError> {
        let m = &self.memory;
        if m.size_mib < MIN_MEMORY_MIB {
            return Err(SpecError::MemoryTooSmall {
                min: MIN_MEMORY_MIB,
            });
        }
        if m.size_mib > MAX_MEMORY_MIB {
            return Err(SpecError::MemoryTooLarge {
                size_mib: m.size_mib,
                max: MAX_MEMORY_MIB,
            });
        }
        let page = m.hugepages.page_size();
        let bytes = m.size_mib.checked_mul(1 << 20);
        if bytes.is_none_or(|b| b % page != 0) {
            return Err(SpecError::MemoryNotPageMultiple {
                size_mib: m.size_mib,
                page: m.hugepages,
                multiple_mib: (page >> 20).max(1),
            });
        }
        Ok(())
    }

    fn validate_cmdline(&self) -> Result<(), SpecError> {
        let cmdline = &self.kernel.cmdline;
        let printable = |b: &u8| (b' '..=b'~').contains(b);
        if let Some((at, &byte)) = cmdline
            .as_bytes()
            .iter()
            .enumerate()
            .find(|(_, b)| !printable(b))
        {
            return Err(SpecError::CmdlineInvalid { at, byte });
        }
        if cmdline.len() + 1 > CMDLINE_AREA {
            return Err(SpecError::CmdlineTooLong {
                len: cmdline.len() + 1,
                max: CMDLINE_AREA,
            });
        }
        Ok(())
    }

    /// The passthrough functions and slots; errors on bad syntax or on two entries
    /// naming one function (the one place either is checked).
    pub fn passthrough_addresses(&self) -> Result<Vec<HostSelector>, SpecError> {
        let mut seen: Vec<HostSelector> = Vec::new();
        for (index, p) in self.passthrough.iter().enumerate() {
            let sel = p
                .host
                .parsed()
                .map_err(|source| SpecError::PciAddress { index, source })?;
            if let Some(clique) = p.clique.filter(|c| *c > vfio_glue::pci::MAX_CLIQUE) {
                return Err(SpecError::CliqueRange { index, clique });
            }
            if let Some(first) = seen.iter().position(|a| a.overlaps(sel)) {
                return Err(SpecError::DuplicatePassthrough {
                    index,
                    first,
                    addr: String::from(p.host.clone()),
                });
            }
            seen.push(sel);
        }
        Ok(seen)
    }

    /// The passthrough functions and slots of a validated spec, in spec order (slots
    /// are expanded from sysfs by `passthrough::expand_hosts`).
    pub fn passthrough_hosts(&self) -> Vec<HostSelector> {
        self.passthrough
            .iter()
            .filter_map(|p| p.host.parsed().ok())
            .collect()
    }

    /// Guest RAM size in bytes (validated specs only: cannot overflow).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.size_mib.saturating_mul(1 << 20)
    }
}

/// Turn a serde_json error at field path `path` (serde_path_to_error's form, `.` for
/// the top) into a variant a caller can match on, keeping line/column.
fn json_error(path: &str, e: serde_json::Error) -> SpecError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    // serde_json appends " at line L column C"; we report those as fields.
    let msg = full.split(" at line ").next().unwrap_or(&full).to_string();
    let at = path.trim_start_matches('.').to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => SpecError::Syntax { line, column, msg },
        Category::Data => match parse_unknown_field(&msg) {
            Some((field, expected)) => SpecError::UnknownField {
                at: parent_path(&at, &field),
                field,
                expected,
                line,
                column,
            },
            None => SpecError::InvalidValue {
                at,
                line,
                column,
                msg,
            },
        },
    }
}

/// The path of the object holding `field`, given a path that may end with it.
fn parent_path(at: &str, field: &str) -> String {
    match at.strip_suffix(field) {
        Some(rest) => rest.trim_end_matches('.').to_string(),
        None => at.to_string(),
    }
}

/// `"path: "` before a message, or nothing for the top level.
fn prefix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    }
}

/// serde's message is "unknown field `x`, expected one of `a`, `b`" (or "expected `a`").
fn parse_unknown_field(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let expected = expected.trim_start_matches(',').trim().to_string();
    Some((field.to_string(), expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `spec` fuzz target's invariant, over seeded mutations of a valid spec: any
    /// text parses to a spec or an error, and validating it never panics.
    #[test]
    fn mutated_specs_parse_or_fail_without_panicking() {
        let base = br#"{"vcpus": 2, "memory": {"size_mib": 512, "hugepages": "2M"},
            "kernel": {"path": "/k", "cmdline": "console=ttyS0"},
            "passthrough": [{"host": "0000:01:00.0"}], "serial": {"file": "/tmp/c"}}"#;
        let mut x: u64 = 0x5eed_5bec_0000_0001;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"{}[]\":,0123456789-e.truefalsnul \\x";
        for _ in 0..20_000 {
            let mut text = base.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % text.len();
                text[at] = alphabet[(next() as usize) % alphabet.len()];
            }
            if let Ok(spec) = VmSpec::parse(&String::from_utf8_lossy(&text)) {
                let _ = spec.validate();
                let _ = spec.memory_bytes();
            }
        }
    }

    const GOOD: &str = r#"{ "vcpus": 2,
        "memory": { "size_mib": 512, "hugepages": "2M" },
        "kernel": { "path": "/boot/vmlinuz", "initramfs": "/srv/initrd.cpio.gz" } }"#;

    fn spec() -> VmSpec {
        VmSpec::parse(GOOD).unwrap()
    }

    #[test]
    fn parses_brief_example_with_defaults() {
        let s = spec();
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.memory.hugepages, HugePages::Size2M);
        assert!(s.memory.prefault);
        assert_eq!(s.kernel.cmdline, DEFAULT_CMDLINE);
        assert_eq!(s.serial, SerialSpec::Stdio);
        assert!(s.passthrough.is_empty());
        s.validate().unwrap();
    }

    #[test]
    fn lifecycle_defaults_to_30_s_and_restart() {
        let s = spec();
        assert_eq!(s.lifecycle.shutdown_timeout_s, 30);
        assert_eq!(s.lifecycle.on_reboot, OnReboot::Restart);
        assert_eq!(s.api_socket, None);
    }

    #[test]
    fn lifecycle_and_api_socket_parse() {
        let text = GOOD.replace(
            "\"vcpus\": 2,",
            r#""vcpus": 2, "api_socket": "vm.sock",
               "lifecycle": {"shutdown_timeout_s": 5, "on_reboot": "exit"},"#,
        );
        let mut s = VmSpec::parse(&text).unwrap();
        s.validate().unwrap();
        s.resolve_paths(Path::new("/srv"));
        assert_eq!(s.lifecycle.on_reboot, OnReboot::Exit);
        assert_eq!(
            s.lifecycle.shutdown_timeout(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(s.api_socket.as_deref(), Some(Path::new("/srv/vm.sock")));
    }

    #[test]
    fn zero_shutdown_timeout_and_unknown_on_reboot_are_rejected() {
        let mut s = spec();
        s.lifecycle.shutdown_timeout_s = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::ShutdownTimeout { value: 0, .. })
        ));
        let text = GOOD.replace(
            "\"vcpus\": 2,",
            r#""vcpus": 2, "lifecycle": {"on_reboot": "halt"},"#,
        );
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(
            matches!(err, SpecError::InvalidValue { ref at, .. } if at == "lifecycle.on_reboot"),
            "{err:?}"
        );
    }

    #[test]
    fn hypervisor_is_shown_unless_hidden() {
        assert!(!spec().cpu.hide_hypervisor);
        let text = GOOD.replacen(
            "\"kernel\"",
            "\"cpu\": {\"hide_hypervisor\": true}, \"kernel\"",
            1,
        );
        assert!(VmSpec::parse(&text).unwrap().cpu.hide_hypervisor);
    }

    #[test]
    fn unknown_cpu_field_is_named() {
        let text = GOOD.replacen("\"kernel\"", "\"cpu\": {\"kvm\": false}, \"kernel\"", 1);
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(
            matches!(&err, SpecError::UnknownField { at, field, .. } if at == "cpu" && field == "kvm"),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = VmSpec::parse("{\n  \"vcpus\": 2,\n  oops\n}").unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_json_is_a_syntax_error() {
        let err = VmSpec::parse(&GOOD[..40]).unwrap_err();
        assert!(matches!(err, SpecError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let text = GOOD.replacen("\"vcpus\"", "\"vcpu_count\": 1, \"vcpus\"", 1);
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(matches!(&err, SpecError::UnknownField { field, .. } if field == "vcpu_count"));
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let text = GOOD.replacen("\"size_mib\"", "\"sise\": 1, \"size_mib\"", 1);
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(matches!(&err, SpecError::UnknownField { field, .. } if field == "sise"));
    }

    #[test]
    fn wrong_type_is_an_invalid_value() {
        let err = VmSpec::parse(&GOOD.replacen("2,", "\"two\",", 1)).unwrap_err();
        assert!(
            matches!(err, SpecError::InvalidValue { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_hugepage_size_is_an_invalid_value() {
        let err = VmSpec::parse(&GOOD.replacen("\"2M\"", "\"4M\"", 1)).unwrap_err();
        assert!(
            matches!(&err, SpecError::InvalidValue { at, msg, .. }
                if at == "memory.hugepages" && msg.contains(r#""none", "2M", "1G""#)),
            "{err:?}"
        );
    }

    #[test]
    fn boolean_hugepages_names_the_field_and_the_values() {
        let err = VmSpec::parse(&GOOD.replacen("\"2M\"", "true", 1)).unwrap_err();
        assert!(
            matches!(&err, SpecError::InvalidValue { at, msg, line: 2, .. }
                if at == "memory.hugepages" && msg.contains(r#""none", "2M", "1G""#)),
            "{err:?}"
        );
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let cases = [
            (GOOD.replacen("512", "\"512\"", 1), "memory.size_mib"),
            (GOOD.replacen("512", "-1", 1), "memory.size_mib"),
            (GOOD.replacen("512", "1.5", 1), "memory.size_mib"),
            (GOOD.replacen("\"/boot/vmlinuz\"", "7", 1), "kernel.path"),
            (
                GOOD.replacen("} }", "}, \"passthrough\": [{\"host\": 1}] }", 1),
                "passthrough[0].host",
            ),
            (GOOD.replacen("} }", "}, \"serial\": true }", 1), "serial"),
            (GOOD.replacen("2,", "\"two\",", 1), "vcpus"),
        ];
        for (text, want) in cases {
            let err = VmSpec::parse(&text).unwrap_err();
            assert!(
                matches!(&err, SpecError::InvalidValue { at, .. } if at == want),
                "{want}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_nested_field_names_its_object() {
        let text = GOOD.replacen("\"size_mib\"", "\"sise\": 1, \"size_mib\"", 1);
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(
            matches!(&err, SpecError::UnknownField { at, field, .. } if at == "memory" && field == "sise"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_field_names_its_object() {
        let err =
            VmSpec::parse(r#"{"vcpus": 1, "memory": {}, "kernel": {"path": "k"}}"#).unwrap_err();
        assert!(
            matches!(&err, SpecError::InvalidValue { at, msg, .. } if at == "memory" && msg.contains("size_mib")),
            "{err:?}"
        );
    }

    #[test]
    fn trailing_characters_are_a_syntax_error() {
        let err = VmSpec::parse(&format!("{GOOD} x")).unwrap_err();
        assert!(matches!(err, SpecError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn zero_vcpus_rejected() {
        let mut s = spec();
        s.vcpus = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::VcpuCount { count: 0, max: 255 })
        ));
    }

    #[test]
    fn too_many_vcpus_rejected() {
        let mut s = spec();
        s.vcpus = 256;
        assert!(matches!(
            s.validate(),
            Err(SpecError::VcpuCount { count: 256, .. })
        ));
    }

    #[test]
    fn memory_not_multiple_of_hugepage_rejected() {
        let mut s = spec();
        s.memory.size_mib = 511;
        let err = s.validate().unwrap_err();
        assert!(matches!(
            err,
            SpecError::MemoryNotPageMultiple {
                size_mib: 511,
                multiple_mib: 2,
                ..
            }
        ));
    }

    #[test]
    fn memory_not_multiple_of_gigabyte_page_rejected() {
        let mut s = spec();
        s.memory.hugepages = HugePages::Size1G;
        let err = s.validate().unwrap_err();
        assert!(matches!(
            err,
            SpecError::MemoryNotPageMultiple {
                multiple_mib: 1024,
                ..
            }
        ));
    }

    #[test]
    fn tiny_memory_rejected() {
        let mut s = spec();
        s.memory.size_mib = 2;
        assert!(matches!(
            s.validate(),
            Err(SpecError::MemoryTooSmall { .. })
        ));
    }

    #[test]
    fn huge_memory_rejected_with_the_upper_bound() {
        for size_mib in [u64::MAX, MAX_MEMORY_MIB + 2] {
            let mut s = spec();
            s.memory.size_mib = size_mib;
            assert!(
                matches!(
                    s.validate(),
                    Err(SpecError::MemoryTooLarge {
                        max: MAX_MEMORY_MIB,
                        ..
                    })
                ),
                "{size_mib}"
            );
        }
        let mut s = spec();
        s.memory.size_mib = MAX_MEMORY_MIB;
        s.validate().unwrap();
    }

    #[test]
    fn odd_memory_fine_without_hugepages() {
        let mut s = spec();
        s.memory.hugepages = HugePages::None;
        s.memory.size_mib = 511;
        s.validate().unwrap();
    }

    #[test]
    fn cmdline_too_long_rejected() {
        let mut s = spec();
        s.kernel.cmdline = "a".repeat(CMDLINE_AREA);
        assert!(matches!(
            s.validate(),
            Err(SpecError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn cmdline_with_nul_rejected() {
        let mut s = spec();
        s.kernel.cmdline = "console=ttyS0\0quiet".into();
        assert!(matches!(
            s.validate(),
            Err(SpecError::CmdlineInvalid { at: 13, byte: 0 })
        ));
    }

    #[test]
    fn cmdline_control_characters_rejected_at_their_offset() {
        for (cmdline, at, byte) in [
            ("console=ttyS0\nquiet", 13, b'\n'),
            ("a\x1b[2J", 1, 0x1b),
            ("a\tb", 1, b'\t'),
            ("x\u{7f}", 1, 0x7f),
            ("caf\u{e9}", 3, 0xc3),
        ] {
            let mut s = spec();
            s.kernel.cmdline = cmdline.into();
            let err = s.validate().unwrap_err();
            assert!(
                matches!(err, SpecError::CmdlineInvalid { at: a, byte: b } if a == at && b == byte),
                "{cmdline:?}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_pci_address_rejected() {
        for bad in [
            "0000:01",
            "01",
            "0000:01:20",
            "0000:01:20.0",
            "0000:01:00.8",
            "000g:01:00.0",
        ] {
            let mut s = spec();
            s.passthrough = vec![PassthroughSpec {
                host: bad.into(),
                clique: None,
            }];
            let err = s.validate().unwrap_err();
            assert!(
                matches!(err, SpecError::PciAddress { index: 0, .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn duplicate_passthrough_rejected() {
        let mut s = spec();
        s.passthrough = ["0000:01:00.0", "0000:02:00.0", "0000:01:00.0"]
            .iter()
            .map(|h| PassthroughSpec {
                host: h.to_string().into(),
                clique: None,
            })
            .collect();
        let err = s.validate().unwrap_err();
        assert!(matches!(
            err,
            SpecError::DuplicatePassthrough {
                index: 2,
                first: 0,
                ..
            }
        ));
    }

    #[test]
    fn a_slot_without_function_names_the_whole_device() {
        let mut s = spec();
        s.passthrough = vec![PassthroughSpec {
            host: "0000:01:00".into(),
            clique: None,
        }];
        let addrs = s.passthrough_addresses().unwrap();
        assert_eq!(addrs, [HostSelector::Slot("0000:01:00.0".parse().unwrap())]);
        let short: HostAddress = "0a:1f".into();
        assert_eq!(
            short.parsed().unwrap(),
            HostSelector::Slot("0000:0a:1f.0".parse().unwrap())
        );
    }

    #[test]
    fn a_function_of_a_listed_slot_is_a_duplicate() {
        for pair in [
            ["0000:01:00", "0000:01:00.1"],
            ["01:00.1", "0000:01:00"],
            ["01:00", "0000:01:00"],
        ] {
            let mut s = spec();
            s.passthrough = pair
                .iter()
                .map(|h| PassthroughSpec {
                    host: (*h).into(),
                    clique: None,
                })
                .collect();
            let err = s.validate().unwrap_err();
            assert!(
                matches!(
                    &err,
                    SpecError::DuplicatePassthrough {
                        index: 1,
                        first: 0,
                        ..
                    }
                ),
                "{pair:?}: {err:?}"
            );
        }
    }

    #[test]
    fn clique_above_15_is_refused_with_its_entry() {
        let text = GOOD.replacen(
            "} }",
            "}, \"passthrough\": [{\"host\": \"01:00\", \"clique\": 7}, {\"host\": \"02:00\", \"clique\": 16}] }",
            1,
        );
        let s = VmSpec::parse(&text).unwrap();
        assert_eq!(s.passthrough[0].clique, Some(7));
        let err = s.validate().unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::CliqueRange {
                    index: 1,
                    clique: 16
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("passthrough[1].clique: "),
            "{err}"
        );
    }

    #[test]
    fn p2p_is_on_by_default_only_for_several_devices() {
        assert_eq!(spec().p2p, P2pMode::Auto);
        assert_eq!(P2pMode::Auto.resolve(1), None);
        assert_eq!(P2pMode::Auto.resolve(2), Some(false));
        assert_eq!(P2pMode::On.resolve(1), Some(true));
        assert_eq!(P2pMode::BestEffort.resolve(8), Some(false));
        assert_eq!(P2pMode::Off.resolve(8), None);
        let text = GOOD.replacen("} }", "}, \"p2p\": \"best-effort\" }", 1);
        assert_eq!(VmSpec::parse(&text).unwrap().p2p, P2pMode::BestEffort);
        let on = GOOD.replacen("} }", "}, \"p2p\": true }", 1);
        assert_eq!(VmSpec::parse(&on).unwrap().p2p, P2pMode::On);
        let bad = GOOD.replacen("} }", "}, \"p2p\": \"yes\" }", 1);
        assert!(
            matches!(VmSpec::parse(&bad), Err(SpecError::InvalidValue { at, .. }) if at == "p2p"),
            "{:?}",
            VmSpec::parse(&bad)
        );
    }

    fn with_numa(numa: &str) -> Result<VmSpec, SpecError> {
        let text = GOOD.replacen("} }", &format!("}}, \"numa\": {numa} }}"), 1);
        let s = VmSpec::parse(&text)?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn numa_takes_auto_or_a_list_of_nodes() {
        assert_eq!(
            with_numa("\"auto\"").unwrap().numa,
            Some(NumaSpec::Auto(NumaAuto::Auto))
        );
        let s = with_numa(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 0},
                {"vcpus": [1], "memory_mib": 256, "host_node": 1}]"#,
        )
        .unwrap();
        let Some(NumaSpec::Nodes(nodes)) = s.numa else {
            panic!("nodes expected");
        };
        assert_eq!((nodes[1].vcpus.clone(), nodes[1].host_node), (vec![1], 1));
    }

    #[test]
    fn numa_memory_must_add_up() {
        let err = with_numa(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 0},
                {"vcpus": [1], "memory_mib": 128, "host_node": 1}]"#,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaMemorySum {
                    sum: 384,
                    size: 512
                }
            ),
            "{err:?}"
        );
        let err =
            with_numa(r#"[{"vcpus": [0, 1], "memory_mib": 511, "host_node": 0}]"#).unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaMemoryPage {
                    node: 0,
                    mib: 511,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn numa_vcpus_must_exist_and_be_placed_once() {
        let err =
            with_numa(r#"[{"vcpus": [0, 1, 2], "memory_mib": 512, "host_node": 0}]"#).unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaCpuMissing {
                    node: 0,
                    cpu: 2,
                    vcpus: 2
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("numa[0].vcpus: vCPU 2 does not exist"),
            "{err}"
        );
        let err = with_numa(
            r#"[{"vcpus": [0], "memory_mib": 256, "host_node": 0},
                {"vcpus": [0], "memory_mib": 256, "host_node": 1}]"#,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaCpuTwice {
                    node: 1,
                    first: 0,
                    cpu: 0
                }
            ),
            "{err:?}"
        );
        let err = with_numa(r#"[{"vcpus": [0], "memory_mib": 512, "host_node": 0}]"#).unwrap_err();
        assert!(
            matches!(err, SpecError::NumaCpuUnplaced { cpu: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn numa_devices_must_be_passthrough_entries() {
        let err =
            with_numa(r#"[{"vcpus": [0, 1], "memory_mib": 512, "host_node": 0, "devices": [0]}]"#)
                .unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaDevice {
                    node: 0,
                    device: 0,
                    count: 0
                }
            ),
            "{err:?}"
        );
        assert!(matches!(with_numa("[]"), Err(SpecError::NumaEmpty)));
    }

    #[test]
    fn a_numa_device_sits_on_one_node() {
        let text = GOOD.replacen(
            "} }",
            r#"}, "passthrough": [{"host": "0000:01:00.0"}, {"host": "0000:02:00.0"}],
               "numa": [{"vcpus": [0], "memory_mib": 256, "host_node": 0, "devices": [1]},
                        {"vcpus": [1], "memory_mib": 256, "host_node": 1, "devices": [0, 1]}] }"#,
            1,
        );
        let err = VmSpec::parse(&text).unwrap().validate().unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::NumaDeviceTwice {
                    node: 1,
                    first: 0,
                    device: 1
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("numa[1].devices: passthrough 1"),
            "{err}"
        );
    }

    #[test]
    fn another_slot_on_the_same_bus_is_no_duplicate() {
        let mut s = spec();
        s.passthrough = ["0000:01:00", "0000:01:01.0"]
            .iter()
            .map(|h| PassthroughSpec {
                host: (*h).into(),
                clique: None,
            })
            .collect();
        s.validate().unwrap();
    }

    #[test]
    fn short_pci_address_means_segment_zero() {
        let mut s = spec();
        s.passthrough = vec![PassthroughSpec {
            host: "0a:1f.7".into(),
            clique: None,
        }];
        let addrs = s.passthrough_addresses().unwrap();
        assert_eq!(addrs[0].addr().to_string(), "0000:0a:1f.7");
        assert!(matches!(addrs[0], HostSelector::Function(_)));
    }

    #[test]
    fn serial_forms_parse() {
        let with =
            |v: &str| VmSpec::parse(&GOOD.replacen("} }", &format!("}}, \"serial\": {v} }}"), 1));
        assert_eq!(with("\"off\"").unwrap().serial, SerialSpec::Off);
        let file = with("{\"file\": \"/tmp/console.log\"}").unwrap().serial;
        assert_eq!(file, console("/tmp/console.log", None));
        let capped = with("{\"file\": \"c.log\", \"max_bytes\": 4096}").unwrap();
        assert_eq!(capped.serial, console("c.log", Some(4096)));
        assert!(matches!(
            with("\"tty\""),
            Err(SpecError::InvalidValue { .. })
        ));
        assert!(matches!(
            with("{\"file\": \"c.log\", \"max\": 1}"),
            Err(SpecError::UnknownField { .. })
        ));
    }

    fn console(path: &str, max_bytes: Option<u64>) -> SerialSpec {
        SerialSpec::File(ConsoleFileSpec {
            file: path.into(),
            max_bytes,
        })
    }

    #[test]
    fn serial_forms_serialize_back_to_the_spec_forms() {
        for s in [
            SerialSpec::Stdio,
            SerialSpec::Off,
            console("c.log", None),
            console("c.log", Some(1)),
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(
                serde_json::from_str::<SerialSpec>(&json).unwrap(),
                s,
                "{json}"
            );
        }
        assert_eq!(serde_json::to_string(&SerialSpec::Off).unwrap(), "\"off\"");
    }

    #[test]
    fn zero_console_cap_rejected() {
        let mut s = spec();
        s.serial = console("c.log", Some(0));
        assert!(matches!(s.validate(), Err(SpecError::ConsoleCapZero)));
    }

    #[test]
    fn relative_paths_resolve_against_the_spec_directory() {
        let mut s = spec();
        s.kernel.path = "vmlinux".into();
        s.serial = console("console.log", None);
        s.resolve_paths(Path::new("/srv/vm"));
        assert_eq!(s.kernel.path, Path::new("/srv/vm/vmlinux"));
        assert_eq!(
            s.kernel.initramfs.as_deref(),
            Some(Path::new("/srv/initrd.cpio.gz"))
        );
        assert_eq!(s.serial, console("/srv/vm/console.log", None));
    }

    #[test]
    fn fifo_spec_is_refused_not_read_forever() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let path = dir.as_path().join("vm.json");
        crate::files::tests::mkfifo(&path);
        let err = VmSpec::load(&path).unwrap_err();
        assert!(
            matches!(&err, SpecError::ReadSpec(e) if crate::files::is_not_regular(e)),
            "{err:?}"
        );
    }

    #[test]
    fn missing_spec_file_is_a_read_error() {
        let err = VmSpec::load(Path::new("/nonexistent/strait/spec.json")).unwrap_err();
        assert!(matches!(err, SpecError::ReadSpec(_)));
    }

    fn with_disks(disks: &str) -> VmSpec {
        let text = GOOD.replacen('{', &format!("{{\"disks\": {disks},"), 1);
        VmSpec::parse(&text).unwrap()
    }

    #[test]
    fn disks_parse_with_defaults_and_resolve_against_the_spec_dir() {
        let mut s = with_disks(
            r#"[{"path": "root.img"}, {"path": "/d.img", "readonly": true, "direct": true, "serial": "data-1"}]"#,
        );
        s.validate().unwrap();
        assert!(!s.disks[0].readonly && !s.disks[0].direct);
        assert_eq!(s.disks[0].serial_or_default(0), "strait-disk0");
        assert_eq!(s.disks[1].serial_or_default(1), "data-1");
        s.resolve_paths(Path::new("/srv/vm"));
        assert_eq!(s.disks[0].path, Path::new("/srv/vm/root.img"));
        assert_eq!(s.disks[1].path, Path::new("/d.img"));
    }

    #[test]
    fn a_disk_with_an_unknown_field_names_it() {
        let text = GOOD.replacen('{', r#"{"disks": [{"path": "a", "cache": "none"}],"#, 1);
        let err = VmSpec::parse(&text).unwrap_err();
        assert!(
            matches!(&err, SpecError::UnknownField { at, field, .. } if at == "disks[0]" && field == "cache"),
            "{err:?}"
        );
    }

    #[test]
    fn a_bad_disk_serial_names_the_disk() {
        for serial in ["", "a-serial-longer-than-20", "with space"] {
            let s = with_disks(&format!(
                r#"[{{"path": "a"}}, {{"path": "b", "serial": "{serial}"}}]"#
            ));
            assert!(
                matches!(s.validate(), Err(SpecError::DiskSerial { index: 1, .. })),
                "{serial:?}"
            );
        }
    }

    #[test]
    fn the_same_image_twice_is_refused() {
        let s = with_disks(r#"[{"path": "a.img"}, {"path": "a.img"}]"#);
        assert!(matches!(
            s.validate(),
            Err(SpecError::DuplicateDisk { index: 1, first: 0 })
        ));
    }

    fn with_net(net: &str) -> Result<VmSpec, SpecError> {
        VmSpec::parse(&GOOD.replacen('{', &format!("{{\"net\": {net},"), 1))
    }

    #[test]
    fn net_parses_with_a_given_or_derived_mac() {
        let s =
            with_net(r#"[{"tap": "tap0", "mac": "52:54:00:12:34:56"}, {"tap_fd": 5}]"#).unwrap();
        s.validate().unwrap();
        assert_eq!(s.net[0].mac_or_default().to_string(), "52:54:00:12:34:56");
        assert!(s.net[0].vhost);
        let derived = s.net[1].mac_or_default();
        assert_eq!(derived, MacAddr::derived("fd 5"));
        assert!(derived.is_unicast());
    }

    #[test]
    fn a_multicast_or_malformed_mac_names_the_field() {
        for mac in ["01:00:5e:00:00:01", "52:54:00:12:34"] {
            let err = with_net(&format!(r#"[{{"tap": "tap0", "mac": "{mac}"}}]"#)).unwrap_err();
            assert!(err.to_string().contains("net[0].mac"), "{err}");
        }
    }

    #[test]
    fn net_needs_exactly_one_backend() {
        for net in [
            r#"[{}]"#,
            r#"[{"tap": "tap0", "tap_fd": 3}]"#,
            r#"[{"tap_fd": -1}]"#,
        ] {
            let s = with_net(net).unwrap();
            assert!(
                matches!(s.validate(), Err(SpecError::NetBackend { index: 0 })),
                "{net}"
            );
        }
    }

    #[test]
    fn bad_or_repeated_tap_names_are_refused() {
        for name in ["", "a-name-of-16-byt", "a/b", "a b"] {
            let s = with_net(&format!(r#"[{{"tap": "{name}"}}]"#)).unwrap();
            assert!(
                matches!(s.validate(), Err(SpecError::TapName { index: 0, .. })),
                "{name:?}"
            );
        }
        let s = with_net(r#"[{"tap": "tap0"}, {"tap": "tap0"}]"#).unwrap();
        assert!(matches!(
            s.validate(),
            Err(SpecError::DuplicateTap {
                index: 1,
                first: 0,
                field: "tap"
            })
        ));
    }
}
