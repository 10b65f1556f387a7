//! The virtio-blk backend's worker pool: several requests in flight at once.
//!
//! The I/O thread pops chains, checks them ([`crate::virtio::chain`]) and hands each to
//! this pool; a worker thread carries it out with blocking preadv/pwritev/fdatasync
//! ([`super::request`]), records `(head, length)` and writes the completion eventfd,
//! which the I/O thread watches: it moves the completions into the used ring and signals
//! the queue's irqfd. No vCPU is involved at either end.
//!
//! Why a pool of threads and not io_uring (the `io-uring` crate): both keep several
//! requests in flight, and on O_DIRECT to a block device io_uring would do it with fewer
//! context switches. But the operations an io_uring executes are not seen by seccomp:
//! a sandboxed thread allowed `io_uring_enter` can have the kernel open, connect or read
//! anything its ring is asked to, which defeats the per-thread filters this VMM relies
//! on (the reason Docker's and Android's default seccomp profiles refuse io_uring).
//! With threads, every syscall a disk request makes is still one the `blk` filter
//! allows (preadv, pwritev, fdatasync, fallocate, two block ioctls). The cost is one
//! wake-up of a worker per request; the benchmark (`testbed bench`) measures it
//! against QEMU's `aio=io_uring`.
//!
//! Ordering: requests in flight complete in any order (virtio 1.2, 5.2.6.1: the driver
//! must not rely on it). A FLUSH is an fdatasync of the whole file, so it covers every
//! write that completed before it was submitted, which is all the spec promises.
//!
//! Reset: [`Workers::cancel`] makes queued requests be dropped unexecuted and waits
//! until no worker is inside one, so after a device reset nothing writes into guest
//! memory the driver may reuse, and no completion of the old queue reaches the new one.
//! The wait is bounded by one request per worker (QEMU drains the same way).

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use resources::lock;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request::Requests;
use crate::virtio::chain::Chain;

/// Run by each worker thread before its first request (the VMM installs the thread's
/// sandbox there); an error stops the pool from starting.
pub type ThreadStart = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How many worker threads, their names and their start hook.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Threads; requests beyond this wait in order for a free worker.
    pub threads: usize,
    /// Thread name prefix; the worker's number is appended (Linux keeps 15 bytes).
    pub name: String,
    pub on_start: ThreadStart,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("threads", &self.threads)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A completed request: its head index and the bytes written into its chain.
pub type Completion = (u16, u32);

struct Job {
    generation: u64,
    head: u16,
    chain: Chain,
    mem: Arc<GuestMemoryMmap>,
}

#[derive(Default)]
struct State {
    /// Bumped by each reset: jobs of an older generation are dropped.
    generation: u64,
    in_flight: usize,
    done: Vec<Completion>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when `in_flight` drops to 0.
    idle: Condvar,
    /// Written after each completion; the I/O thread watches it.
    completed: EventFd,
}

/// The running pool of one disk.
pub struct Workers {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Start `config.threads` workers over `requests`; fails if a thread cannot be
    /// spawned or its start hook fails (the threads already started are joined).
    pub fn start(requests: Arc<Requests>, config: &WorkerConfig) -> io::Result<Workers> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            completed: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut pool = Workers {
            jobs: Some(tx),
            threads: Vec::new(),
            shared,
        };
        for i in 0..config.threads.max(1) {
            let (rx, requests, shared) = (rx.clone(), requests.clone(), pool.shared.clone());
            let (ready, on_start) = (ready_tx.clone(), config.on_start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{}{i}", config.name))
                .spawn(move || {
                    let started = on_start();
                    let ok = started.is_ok();
                    let _ = ready.send(started);
                    if ok {
                        work(&rx, &requests, &shared);
                    }
                })?;
            pool.threads.push(handle);
        }
        drop(ready_tx);
        for _ in 0..pool.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(io::Error::other(why)),
                Err(_) => return Err(io::Error::other("a block worker died starting")),
            }
        }
        Ok(pool)
    }

    /// A pool whose requests never run (no thread takes them), for tests of what the
    /// device does while requests are in flight.
    #[cfg(test)]
    pub(super) fn stalled() -> io::Result<Workers> {
        let (jobs, taken_by_none) = mpsc::channel();
        // Kept open so that submitting succeeds; a test's leak.
        std::mem::forget(taken_by_none);
        Ok(Workers {
            jobs: Some(jobs),
            threads: Vec::new(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                idle: Condvar::new(),
                completed: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    /// Requests handed out and not yet completed.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).in_flight
    }

    /// Hand a checked chain to a worker.
    pub fn submit(&self, head: u16, chain: Chain, mem: Arc<GuestMemoryMmap>) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let mut s = lock(&self.shared.state);
        let job = Job {
            generation: s.generation,
            head,
            chain,
            mem,
        };
        // The receivers live as long as `jobs` does: sending cannot fail.
        if jobs.send(job).is_ok() {
            s.in_flight += 1;
        }
    }

    /// The completions since the last call (the completion eventfd is reset first, so
    /// one that lands meanwhile wakes the I/O thread again).
    pub fn take_done(&self) -> Vec<Completion> {
        let _ = self.shared.completed.read();
        std::mem::take(&mut lock(&self.shared.state).done)
    }

    /// Drop the queued requests and wait until none is being carried out; forget the
    /// completions not yet taken (device reset).
    pub fn cancel(&self) {
        let mut s = lock(&self.shared.state);
        s.generation = s.generation.wrapping_add(1);
        s = self.wait_idle_locked(s);
        s.done.clear();
    }

    /// Wait until every request handed out has completed.
    pub fn wait_idle(&self) {
        drop(self.wait_idle_locked(lock(&self.shared.state)));
    }

    fn wait_idle_locked<'a>(&self, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while s.in_flight > 0 {
            s = self.shared.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s
    }

    /// A descriptor of the completion eventfd, for the I/O thread to watch.
    pub fn completion_fd(&self) -> io::Result<OwnedFd> {
        let fd = self.shared.completed.try_clone()?.into_raw_fd();
        // SAFETY: `fd` was just duplicated for us and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the channel ends every worker after its current request.
        self.jobs = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a block worker panicked");
            }
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, requests: &Requests, shared: &Shared) {
    loop {
        let Ok(job) = lock(rx).recv() else {
            return;
        };
        let current = lock(&shared.state).generation == job.generation;
        // A request queued before a reset is dropped: its buffers may be reused.
        let len = if current {
            requests.execute(&job.mem, &job.chain)
        } else {
            0
        };
        let mut s = lock(&shared.state);
        if s.generation == job.generation {
            s.done.push((job.head, len));
        }
        s.in_flight -= 1;
        if s.in_flight == 0 {
            shared.idle.notify_all();
        }
        drop(s);
        let _ = shared.completed.write(1);
    }
}
