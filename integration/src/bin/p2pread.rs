//! `p2pread`: reads one block from the passed-through NVMe controller by peer-to-peer
//! DMA into another passed-through device's BAR, for the testbed's `p2p` and `p2p-off`
//! scenarios (run in L2 as root; std only, built statically like `hostile`).
//!
//! It drives the controller from userspace, as the NVMe Base Specification 2.0 lays it
//! out: the stock driver unbound, BAR0 mapped through sysfs `resource0`, memory decode
//! and bus mastering switched on in the command register (interrupts off), the
//! controller reset (CC.EN 0, CSTS.RDY 0), the admin queues placed in the shared-memory
//! BAR of the peer (ivshmem), the controller enabled, Identify Namespace, one I/O
//! completion queue (polled: IEN 0) and one I/O submission queue created there, and one
//! READ of the block at `--disk-offset` into a data buffer in that BAR. Every DMA the
//! controller makes (queue entries, identify data, the block) targets the peer's BAR
//! at its guest physical address, which the VMM must have mapped into the IOMMU.
//!
//! The buffer is filled with `--fill` first; after the READ it must equal the file
//! `--expect` (the block as the stock driver read it before the unbind).
//!
//! Exit status: 0 the block arrived intact; 2 the DMA was blocked (a command never
//! completed, completed with an error, or the controller reported a fatal status); 3 the
//! READ completed but the buffer does not hold the block; 1 anything else (setup). The
//! last line printed says which.

// Its report is its stdout, read by the testbed's check.
#![allow(clippy::print_stdout)]

use std::ffi::c_void;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::ptr;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

extern "C" {
    fn mmap(addr: *mut c_void, len: usize, prot: i32, flags: i32, fd: i32, off: i64)
        -> *mut c_void;
}

const PROT_READ: i32 = 1;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;
const PAGE: u64 = 4096;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
const PCI_COMMAND: u64 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;

// Controller registers (NVMe Base 2.0, 3.1.3).
const REG_CAP: usize = 0x00;
const REG_CC: usize = 0x14;
const REG_CSTS: usize = 0x1c;
const REG_AQA: usize = 0x24;
const REG_ASQ: usize = 0x28;
const REG_ACQ: usize = 0x30;
const DOORBELLS: usize = 0x1000;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
/// CC: enable, NVM command set, 4 KiB pages, round robin, 64-byte SQ and 16-byte CQ
/// entries.
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);

// Commands.
const ADMIN_CREATE_SQ: u8 = 0x01;
const ADMIN_CREATE_CQ: u8 = 0x05;
const ADMIN_IDENTIFY: u8 = 0x06;
const NVM_READ: u8 = 0x02;
const NSID: u32 = 1;

/// Entries per queue: each queue fits one page.
const QUEUE_ENTRIES: u16 = 16;
const SQE_BYTES: usize = 64;
const CQE_BYTES: usize = 16;
/// How long one command may take (TCG three levels deep is slow, not this slow).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Pages of the peer's BAR at `--queues-offset`, in this order.
const ADMIN_SQ_PAGE: u64 = 0;
const ADMIN_CQ_PAGE: u64 = 1;
const IO_SQ_PAGE: u64 = 2;
const IO_CQ_PAGE: u64 = 3;
const IDENTIFY_PAGE: u64 = 4;
const QUEUE_PAGES: u64 = 5;

struct Args {
    nvme: (u16, u16),
    shm: (u16, u16),
    shm_bar: usize,
    queues_offset: u64,
    data_offset: u64,
    disk_offset: u64,
    fill: u8,
    expect: PathBuf,
}

/// How the READ ended.
enum Verdict {
    Read,
    Blocked(String),
    Mismatch(String),
}

/// A device memory window mapped through sysfs; accessed with volatile 32-bit loads
/// and stores only.
struct Mmio {
    base: *mut u8,
    len: usize,
}

impl Mmio {
    fn map(path: &Path, offset: u64, len: u64) -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let len = len.div_ceil(PAGE) * PAGE;
        let off = i64::try_from(offset).map_err(|_| format!("offset {offset:#x} too large"))?;
        // SAFETY: a fresh shared mapping of a sysfs resource file chosen by the kernel;
        // it stays valid after the file is closed and is never unmapped (the process
        // exits soon); accesses stay within `len` (checked in `at`).
        let base = unsafe {
            mmap(
                ptr::null_mut(),
                len as usize,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if base as isize == -1 {
            let e = std::io::Error::last_os_error();
            return Err(format!(
                "mmap {} at {offset:#x}+{len:#x}: {e}",
                path.display()
            ));
        }
        Ok(Mmio {
            base: base.cast(),
            len: len as usize,
        })
    }

    fn at(&self, offset: usize) -> *mut u32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "offset {offset:#x}"
        );
        // SAFETY: in bounds of the mapping (asserted above).
        unsafe { self.base.add(offset).cast() }
    }

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: an aligned address inside the live mapping (`at`).
        unsafe { ptr::read_volatile(self.at(offset)) }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: an aligned address inside the live mapping (`at`).
        unsafe { ptr::write_volatile(self.at(offset), value) }
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write(offset, value as u32);
        self.write(offset + 4, (value >> 32) as u32);
    }

    fn fill(&self, offset: usize, len: usize, byte: u8) {
        let word = u32::from_ne_bytes([byte; 4]);
        for o in (offset..offset + len).step_by(4) {
            self.write(o, word);
        }
    }

    fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len)
            .step_by(4)
            .flat_map(|o| self.read(o).to_le_bytes())
            .collect()
    }
}

/// One submission/completion queue pair in the peer's BAR.
struct Queue {
    id: u16,
    sq: usize,
    cq: usize,
    tail: u16,
    head: u16,
    phase: u32,
    next_cid: u16,
}

impl Queue {
    fn new(id: u16, sq: usize, cq: usize) -> Self {
        Queue {
            id,
            sq,
            cq,
            tail: 0,
            head: 0,
            phase: 1,
            next_cid: 1,
        }
    }
}

/// The controller: its registers, and the peer's BAR holding queues and data.
struct Controller {
    regs: Mmio,
    shm: Mmio,
    /// The guest physical address of `shm`'s first byte: what the controller DMAs to.
    shm_gpa: u64,
    stride: usize,
    timeout: Duration,
}

impl Controller {
    fn csts(&self) -> u32 {
        self.regs.read(REG_CSTS)
    }

    fn wait_ready(&self, ready: bool) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let csts = self.csts();
            if csts == u32::MAX {
                return Err("BAR0 reads all ones (memory decode off?)".into());
            }
            if (csts & CSTS_RDY != 0) == ready {
                return Ok(());
            }
            if ready && csts & CSTS_CFS != 0 {
                return Err(format!("fatal status while enabling (CSTS {csts:#x})"));
            }
            if start.elapsed() > self.timeout {
                return Err(format!(
                    "CSTS.RDY not {} after {:?} (CSTS {csts:#x})",
                    u8::from(ready),
                    self.timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn doorbell(&self, index: usize, value: u16) {
        fence(Ordering::SeqCst);
        self.regs
            .write(DOORBELLS + index * self.stride, u32::from(value));
    }

    /// Submits `cmd` (16 dwords; the command id is filled in) on `q` and polls for its
    /// completion. `Err` carries why the DMA path failed.
    fn submit(&self, q: &mut Queue, what: &str, mut cmd: [u32; 16]) -> Result<u32, String> {
        let cid = q.next_cid;
        q.next_cid = q.next_cid.wrapping_add(1);
        cmd[0] |= u32::from(cid) << 16;
        let slot = q.sq + usize::from(q.tail) * SQE_BYTES;
        for (i, dw) in cmd.iter().enumerate() {
            self.shm.write(slot + i * 4, *dw);
        }
        q.tail = (q.tail + 1) % QUEUE_ENTRIES;
        self.doorbell(2 * usize::from(q.id), q.tail);
        let entry = q.cq + usize::from(q.head) * CQE_BYTES;
        let start = Instant::now();
        let dw3 = loop {
            let dw3 = self.shm.read(entry + 12);
            if (dw3 >> 16) & 1 == q.phase {
                break dw3;
            }
            let csts = self.csts();
            if csts & CSTS_CFS != 0 {
                return Err(format!(
                    "{what}: no completion, controller fatal status (CSTS {csts:#x}): it could not fetch the command or post its completion"
                ));
            }
            if start.elapsed() > COMMAND_TIMEOUT {
                return Err(format!(
                    "{what}: no completion after {COMMAND_TIMEOUT:?} (CSTS {csts:#x})"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        q.head = (q.head + 1) % QUEUE_ENTRIES;
        if q.head == 0 {
            q.phase ^= 1;
        }
        self.doorbell(2 * usize::from(q.id) + 1, q.head);
        let status = (dw3 >> 17) & 0x7fff;
        if status != 0 {
            return Err(format!(
                "{what}: completed with status type {:#x} code {:#04x}{}",
                (status >> 8) & 7,
                status & 0xff,
                if status & 0xff == 0x04 && (status >> 8) & 7 == 0 {
                    " (data transfer error)"
                } else {
                    ""
                }
            ));
        }
        Ok(self.shm.read(entry))
    }

    fn gpa(&self, offset: usize) -> u64 {
        self.shm_gpa + offset as u64
    }
}

/// A command's 16 dwords: opcode, namespace, PRP1 and CDW10..12.
fn command(opcode: u8, nsid: u32, prp1: u64, cdw: [u32; 3]) -> [u32; 16] {
    let mut c = [0u32; 16];
    c[0] = u32::from(opcode);
    c[1] = nsid;
    c[6] = prp1 as u32;
    c[7] = (prp1 >> 32) as u32;
    c[10..13].copy_from_slice(&cdw);
    c
}

fn find_pci((vendor, device): (u16, u16)) -> Result<PathBuf, String> {
    let read_id = |d: &Path, f: &str| {
        fs::read_to_string(d.join(f))
            .ok()
            .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
    };
    let entries = fs::read_dir(PCI_DEVICES).map_err(|e| format!("{PCI_DEVICES}: {e}"))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| read_id(d, "vendor") == Some(vendor) && read_id(d, "device") == Some(device))
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| format!("no PCI function {vendor:04x}:{device:04x}"))
}

/// BAR `bar`'s guest physical start and size, from sysfs `resource`.
fn bar_range(dev: &Path, bar: usize) -> Result<(u64, u64), String> {
    let text = fs::read_to_string(dev.join("resource"))
        .map_err(|e| format!("{}/resource: {e}", dev.display()))?;
    let line = text.lines().nth(bar).unwrap_or_default();
    let mut words = line
        .split_whitespace()
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16));
    match (words.next(), words.next()) {
        (Some(Ok(start)), Some(Ok(end))) if start != 0 && end > start => {
            Ok((start, end - start + 1))
        }
        _ => Err(format!(
            "{}: BAR {bar} is not assigned: {line:?}",
            dev.display()
        )),
    }
}

fn set_command(dev: &Path, bits: u16) -> Result<u16, String> {
    let path = dev.join("config");
    let cfg = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut b = [0u8; 2];
    cfg.read_at(&mut b, PCI_COMMAND)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let command = u16::from_le_bytes(b) | bits;
    cfg.write_at(&command.to_le_bytes(), PCI_COMMAND)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(command)
}

fn name(dev: &Path) -> String {
    dev.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn unbind(dev: &Path) -> Result<(), String> {
    let Ok(driver) = fs::read_link(dev.join("driver")) else {
        return Ok(());
    };
    fs::write(dev.join("driver/unbind"), name(dev))
        .map_err(|e| format!("unbinding {} from {}: {e}", name(dev), driver.display()))?;
    println!("p2pread: {} unbound from {}", name(dev), driver.display());
    Ok(())
}

/// Resets the controller and enables it with its admin queues in the peer's BAR.
fn enable(ctrl: &Controller, queues: usize) -> Result<(), String> {
    ctrl.regs.write(REG_CC, 0);
    ctrl.wait_ready(false)?;
    let sq = queues + (ADMIN_SQ_PAGE * PAGE) as usize;
    let cq = queues + (ADMIN_CQ_PAGE * PAGE) as usize;
    let depth = u32::from(QUEUE_ENTRIES - 1);
    ctrl.regs.write(REG_AQA, depth << 16 | depth);
    ctrl.regs.write64(REG_ASQ, ctrl.gpa(sq));
    ctrl.regs.write64(REG_ACQ, ctrl.gpa(cq));
    ctrl.regs.write(REG_CC, CC_ENABLE);
    ctrl.wait_ready(true)
}

/// The namespace's LBA size in bytes and its size in LBAs (Identify Namespace, CNS 0).
fn identify(ctrl: &Controller, admin: &mut Queue, page: usize) -> Result<(u64, u64), String> {
    let prp = ctrl.gpa(page);
    ctrl.submit(
        admin,
        "Identify Namespace",
        command(ADMIN_IDENTIFY, NSID, prp, [0, 0, 0]),
    )?;
    let id = ctrl.shm.bytes(page, 256);
    let nsze = u64::from_le_bytes(id[0..8].try_into().unwrap_or_default());
    let format = usize::from(id[26] & 0xf);
    let lbads = id[128 + 4 * format + 2];
    if !(9..=12).contains(&lbads) {
        return Err(format!("Identify Namespace: LBA data size 2^{lbads}"));
    }
    Ok((1 << lbads, nsze))
}

fn run(args: &Args) -> Result<Verdict, String> {
    let expect = fs::read(&args.expect).map_err(|e| format!("{}: {e}", args.expect.display()))?;
    let block = expect.len();
    if block == 0 || block as u64 > PAGE || block % 4 != 0 {
        return Err(format!("{} must hold 4..4096 bytes", args.expect.display()));
    }
    let nvme = find_pci(args.nvme)?;
    let shm_dev = find_pci(args.shm)?;
    let (shm_gpa, shm_size) = bar_range(&shm_dev, args.shm_bar)?;
    let (regs_gpa, regs_size) = bar_range(&nvme, 0)?;
    let (q, d) = (args.queues_offset, args.data_offset);
    if q % PAGE != 0 || d % PAGE != 0 || q + QUEUE_PAGES * PAGE > d || d + PAGE > shm_size {
        return Err(format!(
            "queues at {q:#x} and data at {d:#x} must be page aligned, in that order, inside the {shm_size:#x}-byte BAR"
        ));
    }
    // The peer's BAR decodes first: the VMM maps it (and its peer-to-peer DMA) then.
    set_command(&shm_dev, COMMAND_MEMORY)?;
    let window = format!("resource{}", args.shm_bar);
    let shm = Mmio::map(&shm_dev.join(&window), q, d + PAGE - q)?;
    let (queues, data) = (0usize, (d - q) as usize);
    shm.fill(queues, (QUEUE_PAGES * PAGE) as usize, 0);
    shm.fill(data, PAGE as usize, args.fill);
    println!(
        "p2pread: peer {} BAR{} at {shm_gpa:#x}: queues at {:#x}, data buffer at {:#x} filled with {:#04x}",
        name(&shm_dev),
        args.shm_bar,
        shm_gpa + q,
        shm_gpa + d,
        args.fill
    );
    unbind(&nvme)?;
    let command = set_command(
        &nvme,
        COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE,
    )?;
    let regs = Mmio::map(&nvme.join("resource0"), 0, regs_size)?;
    let cap = u64::from(regs.read(REG_CAP)) | u64::from(regs.read(REG_CAP + 4)) << 32;
    let ctrl = Controller {
        regs,
        shm,
        shm_gpa: shm_gpa + q,
        stride: 4 << ((cap >> 32) & 0xf),
        timeout: Duration::from_millis(500 * ((cap >> 24) & 0xff).clamp(4, 60)),
    };
    println!(
        "p2pread: nvme {} BAR0 at {regs_gpa:#x}, command {command:#06x}, CAP {cap:#018x}",
        name(&nvme)
    );
    if let Err(e) = enable(&ctrl, queues) {
        return Err(format!("enabling the controller: {e}"));
    }
    let mut admin = Queue::new(0, queues, queues + PAGE as usize);
    let mut io = Queue::new(
        1,
        queues + (IO_SQ_PAGE * PAGE) as usize,
        queues + (IO_CQ_PAGE * PAGE) as usize,
    );
    let verdict = read_block(&ctrl, &mut admin, &mut io, args, &expect);
    ctrl.regs.write(REG_CC, 0);
    verdict
}

/// Identify, create the I/O queue pair, READ, compare: the part that needs DMA.
fn read_block(
    ctrl: &Controller,
    admin: &mut Queue,
    io: &mut Queue,
    args: &Args,
    expect: &[u8],
) -> Result<Verdict, String> {
    let id_page = (IDENTIFY_PAGE * PAGE) as usize;
    let (lba, lbas) = match identify(ctrl, admin, id_page) {
        Ok(v) => v,
        Err(e) => return Ok(Verdict::Blocked(e)),
    };
    let block = expect.len() as u64;
    if args.disk_offset % lba != 0 || block % lba != 0 || (args.disk_offset + block) / lba > lbas {
        return Err(format!(
            "{block} bytes at {:#x} are not whole {lba}-byte LBAs of the {lbas}-LBA namespace",
            args.disk_offset
        ));
    }
    let qsize = u32::from(QUEUE_ENTRIES - 1) << 16;
    let steps = [
        (
            "Create I/O Completion Queue",
            command(ADMIN_CREATE_CQ, 0, ctrl.gpa(io.cq), [qsize | 1, 1, 0]),
        ),
        (
            "Create I/O Submission Queue",
            command(
                ADMIN_CREATE_SQ,
                0,
                ctrl.gpa(io.sq),
                [qsize | 1, 1 << 16 | 1, 0],
            ),
        ),
    ];
    for (what, cmd) in steps {
        if let Err(e) = ctrl.submit(admin, what, cmd) {
            return Ok(Verdict::Blocked(e));
        }
    }
    let data = (args.data_offset - args.queues_offset) as usize;
    let slba = args.disk_offset / lba;
    let read = command(
        NVM_READ,
        NSID,
        ctrl.gpa(data),
        [slba as u32, (slba >> 32) as u32, (block / lba - 1) as u32],
    );
    println!(
        "p2pread: READ of {block} bytes at LBA {slba} ({lba}-byte LBAs) into {:#x}",
        ctrl.gpa(data)
    );
    if let Err(e) = ctrl.submit(io, "READ", read) {
        return Ok(Verdict::Blocked(e));
    }
    let got = ctrl.shm.bytes(data, expect.len());
    let differ = got.iter().zip(expect).filter(|(a, b)| a != b).count();
    let head = String::from_utf8_lossy(&got[..got.len().min(24)]).into_owned();
    if differ == 0 {
        return Ok(Verdict::Read);
    }
    Ok(Verdict::Mismatch(format!(
        "{differ} of {} bytes differ from {}; the buffer starts {head:?}",
        expect.len(),
        args.expect.display()
    )))
}

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let mut get = |flag: &str| -> Result<String, String> {
        match (argv.next(), argv.next()) {
            (Some(f), Some(v)) if f == flag => Ok(v),
            (f, _) => Err(format!("expected {flag} VALUE, got {f:?}")),
        }
    };
    let num = |s: String| -> Result<u64, String> {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|_| format!("not a number: {s}"))
    };
    let id = |s: String| -> Result<(u16, u16), String> {
        let (v, d) = s.split_once(':').ok_or(format!("not VENDOR:DEVICE: {s}"))?;
        let hex = |x: &str| u16::from_str_radix(x, 16).map_err(|_| format!("bad id {s}"));
        Ok((hex(v)?, hex(d)?))
    };
    Ok(Args {
        nvme: id(get("--nvme")?)?,
        shm: id(get("--shm")?)?,
        shm_bar: num(get("--shm-bar")?)? as usize,
        queues_offset: num(get("--queues-offset")?)?,
        data_offset: num(get("--data-offset")?)?,
        disk_offset: num(get("--disk-offset")?)?,
        fill: num(get("--fill")?)? as u8,
        expect: PathBuf::from(get("--expect")?),
    })
}

const USAGE: &str = "usage: p2pread --nvme VVVV:DDDD --shm VVVV:DDDD --shm-bar N --queues-offset N --data-offset N --disk-offset N --fill BYTE --expect FILE";

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("p2pread: {e}\n{USAGE}");
            exit(1);
        }
    };
    let code = match run(&args) {
        Ok(Verdict::Read) => {
            println!(
                "p2pread: read: the block arrived intact in the peer's BAR by peer-to-peer DMA"
            );
            0
        }
        Ok(Verdict::Blocked(why)) => {
            println!("p2pread: blocked: {why}");
            2
        }
        Ok(Verdict::Mismatch(why)) => {
            println!("p2pread: mismatch: the READ completed but {why}");
            3
        }
        Err(e) => {
            println!("p2pread: error: {e}");
            1
        }
    };
    exit(code);
}
