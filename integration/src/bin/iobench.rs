//! `iobench`: the benchmark's block-read load inside L2. busybox `dd` keeps one
//! request in flight; this tool keeps `--qd` in flight by running that many
//! threads, each issuing `pread` on an `O_DIRECT` descriptor (Linux open(2):
//! the buffer, offset and length must be aligned to the logical block size, so
//! the buffer is 4 KiB aligned) until `--secs` have passed.
//!
//! `--mode seq` reads the device front to back, the threads sharing one cursor
//! so the stream stays sequential with `qd` requests outstanding; `--mode rand`
//! reads block-aligned offsets drawn from a per-thread xorshift generator.
//!
//! Output, one line each, parsed by the testbed's benchmark:
//! `IOBENCH-BEGIN mode=seq bs=65536 qd=4 secs=4 size=67108864`, then
//! `IOBENCH-RESULT mode=seq bs=65536 qd=4 secs=4.001 bytes=N ios=N errors=0 mbps=X iops=Y`
//! or `IOBENCH-ERROR <why>`. std only, so it links statically with no other crates.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// open(2)'s O_DIRECT on x86_64 (asm-generic/fcntl.h); std exposes no constant.
const O_DIRECT: i32 = 0o40000;
/// Buffer alignment that satisfies O_DIRECT on every logical block size up to 4 KiB.
const ALIGN: usize = 4096;

/// How offsets are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Seq,
    Rand,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Seq => "seq",
            Mode::Rand => "rand",
        }
    }
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    mode: Mode,
    block_size: u64,
    queue_depth: u32,
    secs: u64,
    device: String,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut mode = Mode::Seq;
    let (mut block_size, mut queue_depth, mut secs) = (65536u64, 4u32, 4u64);
    let mut device = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--mode" => {
                mode = match value()?.as_str() {
                    "seq" => Mode::Seq,
                    "rand" => Mode::Rand,
                    other => return Err(format!("unknown mode {other} (seq, rand)")),
                }
            }
            "--bs" => block_size = number(value()?)?,
            "--qd" => queue_depth = u32::try_from(number(value()?)?).map_err(|e| e.to_string())?,
            "--secs" => secs = number(value()?)?,
            path if !path.starts_with("--") && device.is_none() => device = Some(path.to_string()),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if block_size == 0 || block_size % ALIGN as u64 != 0 {
        return Err(format!("--bs {block_size} is not a multiple of {ALIGN}"));
    }
    if queue_depth == 0 || secs == 0 {
        return Err("--qd and --secs must be at least 1".into());
    }
    let device = device.ok_or("no device given")?;
    Ok(Args {
        mode,
        block_size,
        queue_depth,
        secs,
        device,
    })
}

fn number(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a number"))
}

/// The byte offset of block number `index` (taken modulo the device's `blocks`).
fn seq_offset(index: u64, block_size: u64, blocks: u64) -> u64 {
    (index % blocks) * block_size
}

/// xorshift64*: cheap, good enough to spread offsets, seedable per thread.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Totals over all threads.
#[derive(Debug, Default)]
struct Totals {
    bytes: AtomicU64,
    ios: AtomicU64,
    errors: AtomicU64,
}

/// What every worker shares.
#[derive(Debug)]
struct Job {
    file: File,
    args: Args,
    blocks: u64,
    cursor: AtomicU64,
    totals: Totals,
}

/// One worker: reads until the deadline, counting what completed; stops at the
/// first failed or short read.
fn worker(job: &Job, seed: u64, deadline: Instant) {
    // An over-allocated Vec sliced at an aligned offset: aligned memory without unsafe.
    let bs = job.args.block_size as usize;
    let mut backing = vec![0u8; bs + ALIGN];
    let start = backing.as_ptr().align_offset(ALIGN);
    let buf = &mut backing[start..start + bs];
    let mut rng = seed | 1;
    while Instant::now() < deadline {
        let block = match job.args.mode {
            Mode::Seq => job.cursor.fetch_add(1, Ordering::Relaxed),
            Mode::Rand => next_random(&mut rng),
        };
        let offset = seq_offset(block, job.args.block_size, job.blocks);
        match job.file.read_at(buf, offset) {
            Ok(n) if n == bs => {
                job.totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
                job.totals.ios.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                job.totals.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Opens the device for direct I/O and sizes it in whole blocks.
fn open_job(args: &Args) -> Result<(Job, u64), String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(&args.device)
        .map_err(|e| format!("opening {} with O_DIRECT: {e}", args.device))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("sizing {}: {e}", args.device))?;
    let blocks = size / args.block_size;
    if blocks == 0 {
        return Err(format!(
            "{} ({size} bytes) is smaller than one block",
            args.device
        ));
    }
    let job = Job {
        file,
        args: args.clone(),
        blocks,
        cursor: AtomicU64::new(0),
        totals: Totals::default(),
    };
    Ok((job, size))
}

/// Runs `qd` workers released together; returns the seconds they took.
fn run_workers(job: &Arc<Job>) -> Result<f64, String> {
    let qd = job.args.queue_depth;
    let barrier = Arc::new(Barrier::new(qd as usize + 1));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
    let deadline = Arc::new(OnceLock::<Instant>::new());
    let run_for = Duration::from_secs(job.args.secs);
    let workers: Vec<_> = (0..qd)
        .map(|i| {
            let (job, barrier, deadline) = (job.clone(), barrier.clone(), deadline.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let until = *deadline.get_or_init(|| Instant::now() + run_for);
                let seed = seed ^ u64::from(i + 1).wrapping_mul(0x1000_0000_01b3);
                worker(&job, seed, until);
            })
        })
        .collect();
    let start = Instant::now();
    barrier.wait();
    for w in workers {
        w.join()
            .map_err(|_| "a worker thread panicked".to_string())?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn run(args: &Args, out: &mut impl Write) -> Result<(), String> {
    let (job, size) = open_job(args)?;
    let mode = args.mode.name();
    let (bs, qd) = (args.block_size, args.queue_depth);
    let _ = writeln!(
        out,
        "IOBENCH-BEGIN mode={mode} bs={bs} qd={qd} secs={} size={size}",
        args.secs
    );
    let _ = out.flush();
    let job = Arc::new(job);
    let secs = run_workers(&job)?;
    let bytes = job.totals.bytes.load(Ordering::Relaxed);
    let ios = job.totals.ios.load(Ordering::Relaxed);
    let errors = job.totals.errors.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "IOBENCH-RESULT mode={mode} bs={bs} qd={qd} secs={secs:.3} bytes={bytes} ios={ios} errors={errors} mbps={:.2} iops={:.1}",
        bytes as f64 / secs / 1e6,
        ios as f64 / secs
    );
    let _ = out.flush();
    if errors > 0 {
        return Err(format!("{errors} read(s) failed or came back short"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    let result = parse_args(&argv).and_then(|args| run(&args, &mut out));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(out, "IOBENCH-ERROR {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_are_parsed() {
        let args = parse_args(&strings(&[
            "--mode",
            "rand",
            "--bs",
            "4096",
            "--qd",
            "8",
            "--secs",
            "2",
            "/dev/nvme0n1",
        ]));
        assert_eq!(
            args,
            Ok(Args {
                mode: Mode::Rand,
                block_size: 4096,
                queue_depth: 8,
                secs: 2,
                device: "/dev/nvme0n1".into()
            })
        );
    }

    #[test]
    fn unaligned_block_size_is_rejected() {
        let args = parse_args(&strings(&["--bs", "1000", "/dev/x"]));
        assert!(matches!(args, Err(e) if e.contains("multiple of 4096")));
    }

    #[test]
    fn missing_device_is_rejected() {
        assert_eq!(
            parse_args(&strings(&["--qd", "2"])),
            Err("no device given".into())
        );
    }

    #[test]
    fn sequential_offsets_wrap_at_the_end() {
        assert_eq!(seq_offset(0, 65536, 4), 0);
        assert_eq!(seq_offset(3, 65536, 4), 3 * 65536);
        assert_eq!(seq_offset(4, 65536, 4), 0);
    }

    #[test]
    fn random_generator_moves_and_is_seeded() {
        let (mut a, mut b) = (1u64, 2u64);
        let first = next_random(&mut a);
        assert_ne!(first, next_random(&mut a));
        assert_ne!(first, next_random(&mut b));
    }

    #[test]
    fn reads_a_file_and_reports_totals() {
        // O_DIRECT may be refused by the test's file system (tmpfs): then the
        // error line is the expected outcome, never a silent pass.
        let path = std::env::temp_dir().join(format!("iobench-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 20]).ok();
        let args = Args {
            mode: Mode::Rand,
            block_size: 4096,
            queue_depth: 2,
            secs: 1,
            device: path.display().to_string(),
        };
        let mut out = Vec::new();
        let result = run(&args, &mut out);
        std::fs::remove_file(&path).ok();
        let text = String::from_utf8_lossy(&out);
        match result {
            Ok(()) => assert!(
                text.contains("IOBENCH-RESULT mode=rand bs=4096 qd=2"),
                "{text}"
            ),
            Err(e) => assert!(e.contains("O_DIRECT"), "{e}"),
        }
    }
}
