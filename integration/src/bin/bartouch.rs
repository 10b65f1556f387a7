//! `bartouch`: times the first touch of every 4 KiB page of a passed-through device's
//! BAR, for the testbed's `bar-touch` check and the benchmark's `bar` launch (run in L2
//! as root; std only, built statically like `hostile`).
//!
//! It maps the BAR through sysfs `resourceN` (memory decode switched on through the
//! device's `enable` file) and reads one 64-bit word from each page, twice. The first
//! pass takes the faults that map the BAR, all the way down: L2's page table is filled
//! by the mmap itself, so each first access is a nested page fault that the L1 KVM
//! resolves from the VMM's mapping of the BAR, which vfio-pci's fault handler fills
//! (with 4 KiB pfns on Linux 6.1, with PMD/PUD-sized ones where vfio-pci has huge
//! pfnmap, Linux 6.12, which lets KVM map the BAR with huge pages too). The second pass
//! reads the same words with everything mapped: the cost of the accesses alone. Reads,
//! not writes, so the emulated device's backing file is not filled with dirty pages.
//!
//! Output: `BARTOUCH-BEGIN pass=P` and `BARTOUCH-END pass=P` around each pass (`first`,
//! `mapped`), printed as they happen (progress on the console); then a human line and `BARTOUCH-RESULT mib=M pages=N map_ms=A
//! first_ms=B second_ms=C` (milliseconds on L2's monotonic clock). Exit status 0, or 1
//! with the reason on stderr.

// Its report is its stdout, read by the testbed's check and the benchmark's agent.
#![allow(clippy::print_stdout)]

use std::ffi::c_void;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::exit;
use std::ptr;
use std::time::Instant;

extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64)
        -> *mut c_void;
}

const PROT_READ: i32 = 1;
const MAP_SHARED: i32 = 1;
const PAGE: usize = 4096;
const PCI_DEVICES: &str = "/sys/bus/pci/devices";

struct Args {
    /// `vendor:device`, hex.
    id: (u16, u16),
    bar: u32,
    /// Pages of the BAR to touch, from its start; the whole BAR when `None`.
    mib: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut id = None;
    let mut bar = None;
    let mut mib = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => {
                let (v, d) = value.split_once(':').ok_or("--device VENDOR:DEVICE")?;
                let hex = |s: &str| u16::from_str_radix(s, 16).map_err(|e| format!("{s}: {e}"));
                id = Some((hex(v)?, hex(d)?));
            }
            "--bar" => bar = Some(value.parse().map_err(|e| format!("--bar: {e}"))?),
            "--mib" => mib = Some(value.parse().map_err(|e| format!("--mib: {e}"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args {
        id: id.ok_or("--device is required")?,
        bar: bar.ok_or("--bar is required")?,
        mib,
    })
}

/// The sysfs directory of the first function with `id`.
fn find_device(id: (u16, u16)) -> Result<PathBuf, String> {
    let read_id = |p: PathBuf| -> Option<u16> {
        let text = fs::read_to_string(p).ok()?;
        u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    fs::read_dir(PCI_DEVICES)
        .map_err(|e| format!("{PCI_DEVICES}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            read_id(d.join("vendor")) == Some(id.0) && read_id(d.join("device")) == Some(id.1)
        })
        .ok_or(format!("no {:04x}:{:04x} on the PCI bus", id.0, id.1))
}

/// Reads one word from each page of `base..base+len`; returns their sum (kept, so the
/// reads cannot be dropped).
fn touch(base: *const u8, len: usize) -> u64 {
    let mut sum = 0u64;
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: `offset` < `len`, the length of the live shared mapping at `base`;
        // the word is page aligned.
        sum = sum.wrapping_add(unsafe { ptr::read_volatile(base.add(offset).cast::<u64>()) });
    }
    sum
}

/// One pass between its console markers: the sum and the time on L2's clock.
fn timed_pass(name: &str, base: *const u8, len: usize) -> (u64, std::time::Duration) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "BARTOUCH-BEGIN pass={name}");
    let _ = out.flush();
    let start = Instant::now();
    let sum = touch(base, len);
    let took = start.elapsed();
    let _ = writeln!(out, "BARTOUCH-END pass={name}");
    let _ = out.flush();
    (sum, took)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dev = find_device(args.id)?;
    let bar_len = fs::metadata(dev.join(format!("resource{}", args.bar)))
        .map_err(|e| format!("resource{}: {e}", args.bar))?
        .len() as usize;
    let len = args.mib.map_or(bar_len, |m| (m << 20).min(bar_len));
    if len < PAGE {
        return Err(format!(
            "BAR{} is {bar_len} bytes: nothing to touch",
            args.bar
        ));
    }
    fs::write(dev.join("enable"), "1").map_err(|e| format!("enable: {e}"))?;
    let path = dev.join(format!("resource{}", args.bar));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let start = Instant::now();
    // SAFETY: a fresh shared read-only mapping of a sysfs resource file at an address
    // the kernel picks; never unmapped (the process exits after the passes); the
    // passes stay within `len`, which is at most the file's length.
    let base = unsafe {
        mmap(
            ptr::null_mut(),
            len,
            PROT_READ,
            MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base as isize == -1 {
        return Err(format!(
            "mmap {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let map = start.elapsed();
    let (first_sum, first) = timed_pass("first", base.cast(), len);
    let (second_sum, second) = timed_pass("mapped", base.cast(), len);
    let pages = len / PAGE;
    let gib = len as f64 / f64::from(1u32 << 30);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "{}: BAR{} {} MiB, {pages} pages: first touch {:.3} s ({:.2} GiB/s, {:.2} us/page), \
         mapped {:.3} s ({:.2} GiB/s); mmap {:.1} ms (sums {first_sum:#x} {second_sum:#x})",
        dev.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        args.bar,
        len >> 20,
        first.as_secs_f64(),
        gib / first.as_secs_f64(),
        ms(first) * 1e3 / pages as f64,
        second.as_secs_f64(),
        gib / second.as_secs_f64(),
        ms(map),
    );
    println!(
        "BARTOUCH-RESULT mib={} pages={pages} map_ms={:.3} first_ms={:.3} second_ms={:.3}",
        len >> 20,
        ms(map),
        ms(first),
        ms(second)
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bartouch: {e}");
        exit(1);
    }
}
