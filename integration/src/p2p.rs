//! The `p2p` and `p2p-off` scenarios: peer-to-peer DMA from the passed-through nvme
//! into the passed-through ivshmem BAR, driven from L2's userspace by `p2pread`
//! (`src/bin/p2pread.rs`).
//!
//! - L0's nvme image holds [`known_block`] at [`DISK_OFFSET`] before L1 boots.
//! - In L2, the check reads that block through the stock nvme driver (O_DIRECT), then
//!   `p2pread` unbinds the driver and drives the controller itself, with its queues at
//!   [`QUEUES_OFFSET`] and its data buffer (filled with [`FILL`]) at [`DATA_OFFSET`] of
//!   ivshmem's BAR2: every DMA of the controller targets the peer's BAR at its guest
//!   physical address, so it reaches ivshmem only if the VMM DMA-mapped that BAR into
//!   the IOMMU (IOVA = guest physical address).
//! - The host then reads L0's ivshmem backing file at [`DATA_OFFSET`]: the known block
//!   when the mapping is there; the fill, untouched by DMA, when it is not. L1's
//!   IOMMU reports the blocked DMA as a DMAR fault at an address inside the BAR.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::checks::Check;
use crate::device::Device;

/// Byte offset of the known block in the nvme namespace (past what other checks write).
pub const DISK_OFFSET: u64 = 32 << 20;
/// The known block's size.
pub const BLOCK_BYTES: usize = 4096;
/// The BAR of ivshmem that holds the queues and the data buffer.
pub const SHM_BAR: usize = 2;
/// Offset in that BAR of `p2pread`'s queue pages.
pub const QUEUES_OFFSET: u64 = 1 << 20;
/// Offset in that BAR of the data buffer the READ lands in.
pub const DATA_OFFSET: u64 = 2 << 20;
// The check reads the block with `dd bs=BLOCK_BYTES skip=DISK_OFFSET/BLOCK_BYTES`.
const _: () = assert!(DISK_OFFSET % BLOCK_BYTES as u64 == 0);
/// What `p2pread` fills the data buffer with before the READ.
pub const FILL: u8 = 0xa5;
/// The known block's first bytes (the rest is pseudo-random).
const HEADER: &[u8] = b"STRAIT-P2P known block\n";

/// The block L0's nvme image holds at [`DISK_OFFSET`]: a header, then xorshift64 bytes.
pub fn known_block() -> Vec<u8> {
    let mut block = HEADER.to_vec();
    let mut x: u64 = 0x5712_a17e_0000_0014;
    while block.len() < BLOCK_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        block.extend_from_slice(&x.to_le_bytes());
    }
    block.truncate(BLOCK_BYTES);
    block
}

/// Writes [`known_block`] into the nvme image at [`DISK_OFFSET`].
pub fn write_known_block(image: &Path) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(image)?;
    f.seek(SeekFrom::Start(DISK_OFFSET))?;
    f.write_all(&known_block())
}

/// L2: the known block read through the stock driver, then `p2pread`'s peer-to-peer
/// READ of it. With `mapped`, the READ must bring the block into ivshmem's BAR (check
/// `p2p-read`); without, the controller's DMA must be blocked (`p2p-read-blocked`).
pub fn read_check(mapped: bool) -> Check {
    let (nv, nd) = Device::Nvme.pci_id();
    let (sv, sd) = Device::Ivshmem.pci_id();
    let skip = DISK_OFFSET / BLOCK_BYTES as u64;
    let want = if mapped { 0 } else { 2 };
    let header = String::from_utf8_lossy(&HEADER[..10]);
    let body = format!(
        r#"wait_for /dev/nvme0n1 30 || {{ echo "no /dev/nvme0n1 to read the known block through the stock driver"; return 1; }}
dd if=/dev/nvme0n1 of=/tmp/p2p-expect bs={BLOCK_BYTES} skip={skip} count=1 iflag=direct 2>/tmp/dd.err || {{ echo "stock driver read failed: $(cat /tmp/dd.err)"; return 1; }}
head -c 10 /tmp/p2p-expect | grep -q '{header}' || {{ echo "no known block at byte {DISK_OFFSET} of /dev/nvme0n1"; return 1; }}
out=$(/bin/p2pread --nvme {nv:04x}:{nd:04x} --shm {sv:04x}:{sd:04x} --shm-bar {SHM_BAR} --queues-offset {QUEUES_OFFSET:#x} --data-offset {DATA_OFFSET:#x} --disk-offset {DISK_OFFSET:#x} --fill {FILL:#04x} --expect /tmp/p2p-expect 2>&1); rc=$?
echo "$out" | tail -n 6
echo "(exit $rc, want {want})"
[ $rc = {want} ]"#
    );
    Check {
        name: if mapped {
            "p2p-read"
        } else {
            "p2p-read-blocked"
        }
        .into(),
        body,
        broken: false,
    }
}

/// Host: whether L0's ivshmem backing file holds, at [`DATA_OFFSET`], the known block
/// (`mapped`) or `p2pread`'s fill with no trace of the block (not `mapped`); and the
/// detail line.
pub fn backing_verdict(backing: &Path, mapped: bool) -> (bool, String) {
    let mut got = vec![0u8; BLOCK_BYTES];
    let read = File::open(backing).and_then(|mut f| {
        f.seek(SeekFrom::Start(DATA_OFFSET))?;
        f.read_exact(&mut got)
    });
    if let Err(e) = read {
        return (false, format!("reading {}: {e}", backing.display()));
    }
    let block = known_block();
    let differ = got.iter().zip(&block).filter(|(a, b)| a != b).count();
    let filled = got.iter().all(|b| *b == FILL);
    let at = format!("{} at {DATA_OFFSET:#x}", backing.display());
    match (mapped, differ, filled) {
        (true, 0, _) => (true, format!("{at} holds the known block")),
        (true, _, _) => (
            false,
            format!(
                "{at}: {differ} of {BLOCK_BYTES} bytes differ from the known block{}",
                if filled { " (still the fill)" } else { "" }
            ),
        ),
        (false, _, true) => (
            true,
            format!("{at} still holds the fill {FILL:#04x}: no DMA reached it"),
        ),
        (false, _, false) => (
            false,
            format!("{at} lost its fill ({differ} bytes differ from the known block)"),
        ),
    }
}

/// The guest physical range of ivshmem's BAR2 from L2's `TESTBED-PCI` lines.
fn shm_bar_range(l2_console: &str) -> Option<(u64, u64)> {
    let (vendor, device) = Device::Ivshmem.pci_id();
    let id = format!("0x{vendor:04x}:0x{device:04x}");
    let line = l2_console
        .lines()
        .find(|l| l.contains("TESTBED-PCI ") && l.contains(&id))?;
    let range = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{SHM_BAR}:")))?;
    let (start, end) = range.split_once('-')?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((hex(start)?, hex(end)?))
}

/// The fault addresses of L1's DMAR fault reports (`DMAR: [DMA Read NO_PASID] Request
/// device [00:03.0] fault addr 0x200100000 ...`).
fn dmar_faults(l1_console: &str) -> Vec<u64> {
    l1_console
        .lines()
        .filter(|l| l.contains("DMAR: [DMA"))
        .filter_map(|l| l.split("fault addr 0x").nth(1))
        .filter_map(|rest| {
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect()
}

/// Host: whether L1's IOMMU reported a DMA fault inside ivshmem's BAR2 (as L2 placed
/// it) exactly when `expected`; and the detail line.
pub fn fault_verdict(l1_console: &str, l2_console: &str, expected: bool) -> (bool, String) {
    let Some((start, end)) = shm_bar_range(l2_console) else {
        return (
            false,
            format!("no BAR{SHM_BAR} of ivshmem in L2's TESTBED-PCI lines"),
        );
    };
    let faults = dmar_faults(l1_console);
    let inside: Vec<String> = faults
        .iter()
        .filter(|a| (start..=end).contains(*a))
        .map(|a| format!("{a:#x}"))
        .collect();
    let bar = format!("ivshmem BAR{SHM_BAR} {start:#x}-{end:#x}");
    match (expected, inside.is_empty()) {
        (true, false) => (
            true,
            format!("L1's IOMMU faulted DMA at {} in {bar}", inside.join(", ")),
        ),
        (true, true) => (
            false,
            format!(
                "no DMAR fault inside {bar} on L1's console ({} elsewhere)",
                faults.len()
            ),
        ),
        (false, true) => (true, format!("no DMAR fault inside {bar} on L1's console")),
        (false, false) => (
            false,
            format!("L1's IOMMU faulted DMA at {} in {bar}", inside.join(", ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block_is_one_block_with_its_header() {
        let b = known_block();
        assert_eq!(b.len(), BLOCK_BYTES);
        assert!(b.starts_with(HEADER));
        assert_eq!(b, known_block());
        assert!(b[HEADER.len()..].iter().any(|x| *x != b[HEADER.len()]));
    }

    #[test]
    fn backing_file_verdicts() {
        let dir = std::env::temp_dir().join(format!("testbed-p2p-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("shm");
        let write = |data: &[u8]| {
            let mut f = File::create(&file).unwrap();
            f.seek(SeekFrom::Start(DATA_OFFSET)).unwrap();
            f.write_all(data).unwrap();
        };
        write(&known_block());
        let (block_on, block_off) = (backing_verdict(&file, true), backing_verdict(&file, false));
        write(&[FILL; BLOCK_BYTES]);
        let (fill_on, fill_off) = (backing_verdict(&file, true), backing_verdict(&file, false));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(block_on.0 && !block_off.0);
        assert!(!fill_on.0 && fill_off.0, "{fill_on:?} {fill_off:?}");
    }

    #[test]
    fn faults_count_only_inside_the_bar() {
        let l2 = "TESTBED-PCI 0000:02:00.0 0x1af4:0x1110 0:0xc0001000-0xc00010ff 2:0x200000000-0x3ffffffff \n";
        let inside = "[ 9.1] DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x200100000 [fault reason 0x06] PTE Read access is not set\n";
        let outside = inside.replace("0x200100000", "0x1000");
        assert!(fault_verdict(inside, l2, true).0);
        assert!(!fault_verdict(&outside, l2, true).0);
        assert!(fault_verdict(&outside, l2, false).0);
        assert!(!fault_verdict(inside, l2, false).0);
        assert!(!fault_verdict(inside, "", true).0);
    }

    #[test]
    fn the_check_wants_the_tools_verdict() {
        assert!(read_check(true).body.contains("[ $rc = 0 ]"));
        assert!(read_check(false).body.contains("[ $rc = 2 ]"));
        assert!(read_check(true).body.contains("--data-offset 0x200000"));
    }
}
