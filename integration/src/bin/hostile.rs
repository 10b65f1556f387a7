//! `hostile`: a guest that abuses its PCI functions, for the testbed's `hostile`
//! scenario (run in L2 as root; std only, built statically like `iobench`).
//!
//! Through /sys/bus/pci/devices/*/config, on every function (endpoints first, then
//! bridges, the host bridge last): unbind the endpoint drivers, save the config space,
//! write all ones then all zeros at every offset with every access size (1, 2, 4), and
//! write the saved space back; then move each endpoint's memory BAR 0 onto RAM and onto
//! the other endpoint's BAR 0 with memory decode on, `--rounds` times; toggle the MSI-X
//! function mask `--rounds` times; restore, and hand the endpoints back to their
//! drivers. It prints one `hostile:` line per function and exits 0 unless a config
//! file could not be read at all.

// Its report is its stdout, read by the testbed's check.
#![allow(clippy::print_stdout)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// A guest RAM address a moved BAR lands on (1 MiB: always RAM).
const RAM_ADDRESS: u32 = 0x0010_0000;
const COMMAND: u64 = 0x04;
const COMMAND_MEMORY: u16 = 0x2;
const BAR0: u64 = 0x10;
const CAP_POINTER: u64 = 0x34;
const CAP_ID_MSIX: u8 = 0x11;

struct Function {
    path: PathBuf,
    name: String,
    header_type: u8,
    class: u32,
}

impl Function {
    fn config(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join("config"))
    }

    fn is_bridge(&self) -> bool {
        self.header_type & 0x7f == 1
    }

    fn is_host_bridge(&self) -> bool {
        self.class >> 8 == 0x0600
    }
}

fn read_u8(f: &File, off: u64) -> u8 {
    let mut b = [0u8; 1];
    match f.read_at(&mut b, off) {
        Ok(1) => b[0],
        _ => 0xff,
    }
}

fn read_u32(f: &File, off: u64) -> u32 {
    let mut b = [0u8; 4];
    match f.read_at(&mut b, off) {
        Ok(4) => u32::from_le_bytes(b),
        _ => u32::MAX,
    }
}

/// Count the writes the kernel accepted; a refused write is part of the abuse.
fn write(f: &File, off: u64, data: &[u8], count: &mut u64) {
    if f.write_at(data, off).is_ok() {
        *count += 1;
    }
}

fn functions() -> io::Result<Vec<Function>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(PCI_DEVICES)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cfg = File::open(path.join("config"))?;
        let header_type = read_u8(&cfg, 0x0e);
        let class = read_u32(&cfg, 0x08) >> 8;
        out.push(Function {
            path,
            name,
            header_type,
            class,
        });
    }
    // Endpoints first: a bridge's bus numbers are garbage while it is hammered.
    out.sort_by_key(|f| (f.is_host_bridge(), f.is_bridge(), f.name.clone()));
    Ok(out)
}

fn driver_of(f: &Function) -> Option<String> {
    fs::read_link(f.path.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn unbind(f: &Function) -> Option<String> {
    let driver = driver_of(f)?;
    let _ = fs::write(f.path.join("driver/unbind"), &f.name);
    Some(driver)
}

/// Every offset, every size, all ones then all zeros; then the saved space back.
fn hammer(f: &Function) -> io::Result<u64> {
    let cfg = f.config()?;
    let mut saved = vec![0u8; 4096];
    let len = cfg.read_at(&mut saved, 0)?;
    saved.truncate(len);
    let mut n = 0;
    for value in [0xffu8, 0x00] {
        for size in [1usize, 2, 4] {
            let data = vec![value; size];
            let mut off = 0;
            while off + size <= len {
                write(&cfg, off as u64, &data, &mut n);
                off += size;
            }
        }
    }
    restore(&cfg, &saved, &mut n);
    Ok(n)
}

/// The saved header, dword by dword, BARs before the command register turns decode on.
fn restore(cfg: &File, saved: &[u8], n: &mut u64) {
    let dword = |off: usize| &saved[off..off + 4];
    for off in (0x08..saved.len()).step_by(4) {
        write(cfg, off as u64, dword(off), n);
    }
    write(cfg, COMMAND, &saved[4..6], n);
}

fn msix_cap(cfg: &File) -> Option<u64> {
    let mut at = u64::from(read_u8(cfg, CAP_POINTER) & !3);
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        if read_u8(cfg, at) == CAP_ID_MSIX {
            return Some(at);
        }
        at = u64::from(read_u8(cfg, at + 1) & !3);
    }
    None
}

/// Move BAR 0 onto RAM and onto `other`'s BAR 0 with decode on, `rounds` times.
fn move_bars(f: &Function, other: Option<u32>, rounds: u32) -> io::Result<u64> {
    let cfg = f.config()?;
    let bar0 = read_u32(&cfg, BAR0);
    if bar0 & 1 != 0 || bar0 == u32::MAX {
        return Ok(0);
    }
    let command = read_u32(&cfg, COMMAND) as u16;
    let mut n = 0;
    let on = command | COMMAND_MEMORY;
    write(&cfg, COMMAND, &on.to_le_bytes(), &mut n);
    for _ in 0..rounds {
        write(&cfg, BAR0, &RAM_ADDRESS.to_le_bytes(), &mut n);
        if let Some(o) = other {
            write(&cfg, BAR0, &(o & !0xf).to_le_bytes(), &mut n);
        }
    }
    write(&cfg, BAR0, &bar0.to_le_bytes(), &mut n);
    write(&cfg, COMMAND, &command.to_le_bytes(), &mut n);
    Ok(n)
}

/// Toggle MSI-X enable + function mask, `rounds` times, then put the control back.
fn toggle_msix(f: &Function, rounds: u32) -> io::Result<u64> {
    let cfg = f.config()?;
    let Some(cap) = msix_cap(&cfg) else {
        return Ok(0);
    };
    let control = (read_u32(&cfg, cap) >> 16) as u16;
    let mut n = 0;
    for _ in 0..rounds {
        write(&cfg, cap + 2, &0xc000u16.to_le_bytes(), &mut n);
        write(&cfg, cap + 2, &0x8000u16.to_le_bytes(), &mut n);
    }
    write(&cfg, cap + 2, &control.to_le_bytes(), &mut n);
    Ok(n)
}

fn rounds_arg() -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn run(rounds: u32) -> io::Result<()> {
    let all = functions()?;
    let endpoints: Vec<&Function> = all
        .iter()
        .filter(|f| !f.is_bridge() && !f.is_host_bridge())
        .collect();
    let drivers: Vec<(&Function, String)> = endpoints
        .iter()
        .filter_map(|f| unbind(f).map(|d| (*f, d)))
        .collect();
    for f in &all {
        let n = hammer(f)?;
        println!("hostile: {} config: {n} writes accepted", f.name);
    }
    let bars: Vec<u32> = endpoints
        .iter()
        .map(|f| f.config().map(|c| read_u32(&c, BAR0)).unwrap_or(u32::MAX))
        .collect();
    for (i, f) in endpoints.iter().enumerate() {
        let other = bars
            .iter()
            .enumerate()
            .find(|(j, b)| *j != i && **b & 1 == 0 && **b != u32::MAX);
        let moves = move_bars(f, other.map(|(_, b)| *b), rounds)?;
        let toggles = toggle_msix(f, rounds)?;
        println!(
            "hostile: {} BAR 0 moves: {moves} writes, MSI-X toggles: {toggles} writes",
            f.name
        );
    }
    for (f, driver) in drivers {
        let _ = fs::write(
            Path::new("/sys/bus/pci/drivers").join(&driver).join("bind"),
            &f.name,
        );
        println!("hostile: {} back to {driver}: {:?}", f.name, driver_of(f));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(rounds_arg()) {
        eprintln!("hostile: {e}");
        std::process::exit(1);
    }
}
