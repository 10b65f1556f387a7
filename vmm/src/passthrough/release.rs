//! Giving the passed-through functions back at teardown, all at once.
//!
//! Releasing a function ends in a reset (VFIO's as its fd closes, or Strait's hot
//! reset): an FLR alone waits 100 ms, a GPU's reset can take a second. One after the
//! other, eight GPUs would cost the sum; here each runs on a thread of its own and the
//! teardown costs the slowest. The sandboxed main thread may not create threads, so
//! the pool starts at setup, enters its own sandbox ([`ThreadKind::Release`]) and
//! sleeps until teardown hands it the functions.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use resources::lock;
use vfio_glue::VfioPciDevice;

use crate::sandbox::{self, ThreadKind};

/// At most this many functions are released at the same time.
pub const MAX_THREADS: usize = 8;

type Device = Arc<Mutex<VfioPciDevice>>;

struct Worker {
    jobs: Sender<Device>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

/// Threads that release functions in parallel at teardown.
pub struct ReleasePool {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for ReleasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReleasePool({} threads)", self.workers.len())
    }
}

impl ReleasePool {
    /// `threads` threads (at most [`MAX_THREADS`]), each in its sandbox before this
    /// returns; fails if one cannot be started or sandboxed.
    pub fn start(threads: usize) -> std::io::Result<ReleasePool> {
        let mut workers = Vec::new();
        for i in 0..threads.min(MAX_THREADS) {
            let (jobs, job_rx) = channel::<Device>();
            let (done_tx, done) = channel();
            let (ready_tx, ready) = channel();
            let thread = std::thread::Builder::new()
                .name(format!("strait-release{i}"))
                .spawn(move || work(job_rx, done_tx, ready_tx))?;
            let entered = ready.recv().unwrap_or_else(|_| {
                Err("the thread ended before entering its sandbox".to_string())
            });
            let worker = Worker { jobs, done, thread };
            if let Err(what) = entered {
                drop(worker.jobs);
                let _ = worker.thread.join();
                return Err(std::io::Error::other(format!(
                    "a device release thread: {what}"
                )));
            }
            workers.push(worker);
        }
        Ok(ReleasePool { workers })
    }

    /// Release `devices` (each already quiet), spread over the threads, and wait until
    /// every one is done. A function whose thread is gone is released here instead.
    pub fn release(&self, devices: &[Device]) {
        if self.workers.is_empty() {
            for d in devices {
                lock(d).release();
            }
            return;
        }
        let n = self.workers.len();
        let mut sent = vec![0usize; n];
        for (k, d) in devices.iter().enumerate() {
            let w = k % n;
            match self.workers[w].jobs.send(d.clone()) {
                Ok(()) => sent[w] += 1,
                Err(_) => lock(d).release(),
            }
        }
        for (w, count) in self.workers.iter().zip(sent) {
            for _ in 0..count {
                if w.done.recv().is_err() {
                    // The thread died (a panic, already reported); what it held is
                    // released by Drop as its last reference goes.
                    log::error!("a device release thread ended early");
                    break;
                }
            }
        }
    }
}

impl Drop for ReleasePool {
    fn drop(&mut self) {
        for w in self.workers.drain(..) {
            drop(w.jobs);
            let _ = w.thread.join();
        }
    }
}

fn work(jobs: Receiver<Device>, done: Sender<()>, ready: Sender<Result<(), String>>) {
    let entered =
        sandbox::enter(ThreadKind::Release).map_err(|e| crate::error::Error::from(e).one_line());
    let ok = entered.is_ok();
    let _ = ready.send(entered);
    if !ok {
        return;
    }
    while let Ok(device) = jobs.recv() {
        lock(&device).release();
        drop(device);
        if done.send(()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use vfio_glue::fake::{Call, CallLog, FakeDevice, FakeDmaMapper, Meeting, NoIrqs};
    use vfio_glue::{GuestDma, VfioPciParams};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// A quiet function whose close waits at `meeting`; its calls go to `log`.
    fn function(log: &CallLog, meeting: &Arc<Meeting>, i: usize) -> Device {
        let mut cfg = vec![0u8; 64];
        cfg[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        let dev = FakeDevice::new(log.clone(), &cfg).closing_at(meeting.clone());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let dma = GuestDma::map(Arc::new(FakeDmaMapper::new(log.clone(), vec![])), &mem).unwrap();
        let params = VfioPciParams {
            addr: format!("0000:0{}:00.0", i + 1).parse().unwrap(),
            multifunction: false,
            clique: None,
        };
        let mut d = VfioPciDevice::new(Box::new(dev), dma, &mut NoIrqs, params).unwrap();
        d.quiesce_for_release();
        Arc::new(Mutex::new(d))
    }

    /// Four functions whose closes wait for each other: released by four threads they
    /// all meet, so the releases overlapped; each was closed (VFIO's reset) exactly once.
    #[test]
    fn releases_overlap_and_close_each_function_once() {
        let meeting = Meeting::new(4);
        let logs: Vec<CallLog> = (0..4).map(|_| CallLog::default()).collect();
        let devices: Vec<Device> = (0..4).map(|i| function(&logs[i], &meeting, i)).collect();
        for l in &logs {
            l.take();
        }
        let pool = ReleasePool::start(4).unwrap();
        pool.release(&devices);
        assert_eq!(meeting.met.load(Ordering::SeqCst), 4);
        for l in &logs {
            let calls = l.take();
            assert_eq!(
                calls.iter().filter(|c| **c == Call::DeviceClosed).count(),
                1,
                "{calls:?}"
            );
            assert!(
                !calls.contains(&Call::Reset),
                "VFIO resets as the fd closes"
            );
        }
        // Released ones stay released: a second teardown closes nothing.
        pool.release(&devices);
        assert!(logs.iter().all(|l| l.take().is_empty()));
    }

    /// With fewer threads than functions, the releases still all happen, some in turn.
    #[test]
    fn more_functions_than_threads_are_all_released() {
        let meeting = Meeting::new(1);
        let log = CallLog::default();
        let devices: Vec<Device> = (0..5).map(|i| function(&log, &meeting, i)).collect();
        log.take();
        ReleasePool::start(2).unwrap().release(&devices);
        let closed = log
            .take()
            .iter()
            .filter(|c| **c == Call::DeviceClosed)
            .count();
        assert_eq!(closed, 5);
    }

    #[test]
    fn without_threads_the_caller_releases() {
        let meeting = Meeting::new(1);
        let log = CallLog::default();
        let devices = vec![function(&log, &meeting, 0)];
        log.take();
        let pool = ReleasePool::start(0).unwrap();
        pool.release(&devices);
        assert_eq!(log.take(), vec![Call::DeviceClosed]);
        assert_eq!(ReleasePool::start(20).unwrap().workers.len(), MAX_THREADS);
    }
}
