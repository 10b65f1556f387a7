//! The virtio-blk backend's worker pool: several requests in flight at once, each
//! completed by the thread that carried it out.
//!
//! The I/O thread pops chains, checks them ([`crate::virtio::chain`]) and hands each to
//! this pool ([`Workers::process`]); a worker thread carries it out with blocking
//! preadv/pwritev/fdatasync ([`super::request`]), then puts it into the used ring and
//! signals the queue's irqfd itself. No vCPU is involved at either end, and a request
//! costs one hand-off (I/O thread to worker), not two: on a small nested host each
//! wake-up of another thread is a large part of a 4 KiB read.
//!
//! The ring ([`Ring`]: guest memory, queue, interrupts) lives under the pool's one
//! mutex, taken by the I/O thread to pop and by a worker to complete, never across a
//! request's I/O. A completion follows the virtio order (virtio 1.2, 2.7.8, 2.7.10): the
//! request's data and status are in guest memory before the worker takes the lock; the
//! used element is written, then the used index with release ordering, then, after a
//! full fence, `used_event` (EVENT_IDX) is read to decide whether to interrupt. Several
//! workers finishing together thus raise one interrupt when the driver asked for one.
//! The in-flight count drops in the same critical section as the used index moves, so a
//! driver that reuses a head the moment it is used never finds the pool full.
//!
//! Why a pool of threads and not io_uring (the `io-uring` crate): both keep several
//! requests in flight, and on O_DIRECT to a block device io_uring would do it with fewer
//! context switches. But the operations an io_uring executes are not seen by seccomp:
//! a sandboxed thread allowed `io_uring_enter` can have the kernel open, connect or read
//! anything its ring is asked to, which defeats the per-thread filters this VMM relies
//! on (the reason Docker's and Android's default seccomp profiles refuse io_uring).
//! With threads, every syscall a disk request makes is still one the `blk` filter
//! allows (preadv, pwritev, fdatasync, fallocate, two block ioctls; write for the
//! irqfd). The cost is one wake-up of a worker per request; the benchmark
//! (`testbed bench`) measures it against QEMU's `aio=io_uring`.
//!
//! Ordering: requests in flight complete in any order (virtio 1.2, 5.2.6.1: the driver
//! must not rely on it). A FLUSH is an fdatasync of the whole file, so it covers every
//! write that completed before it was submitted, which is all the spec promises.
//!
//! Reset: [`Workers::cancel`] takes the ring away, makes queued requests be dropped
//! unexecuted and waits until no worker is inside one, so after a device reset nothing
//! writes into guest memory the driver may reuse, and no completion of the old queue
//! reaches the new one. The wait is bounded by one request per worker (QEMU drains the
//! same way).

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use resources::{limited_log, lock};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request::{Requests, BAD_REQUEST};
use crate::virtio::chain::{parse_chain, Chain};
use crate::virtio::Interrupts;

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

/// The request queue of an activated device: what popping and completing need.
pub struct Ring {
    pub mem: Arc<GuestMemoryMmap>,
    pub queue: Queue,
    pub irqs: Interrupts,
}

impl Ring {
    /// Put `head` into the used ring (a bogus head is refused by the queue and logged).
    fn add_used(&mut self, label: &str, head: u16, len: u32) {
        if self.queue.add_used(&*self.mem, head, len).is_err() {
            limited_log!(
                BAD_REQUEST,
                debug,
                "{label}: used ring write for {head} failed"
            );
        }
    }

    /// Interrupt the driver if it asked to hear of what was added since the last call.
    fn notify(&mut self) {
        if self.queue.needs_notification(&*self.mem).unwrap_or(true) {
            self.irqs.signal_queue(0);
        }
    }
}

/// A checked request on its way to a worker.
pub(super) struct Job {
    generation: u64,
    chain: Chain,
    mem: Arc<GuestMemoryMmap>,
}

#[derive(Default)]
struct State {
    /// Bumped by each reset: jobs of an older generation are dropped.
    generation: u64,
    in_flight: usize,
    /// The queue while the device is active.
    ring: Option<Ring>,
    /// [`Workers::process`] stopped at the in-flight cap: the next completion wakes the
    /// I/O thread to pop the rest.
    capped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when `in_flight` drops to 0.
    idle: Condvar,
    /// Written when a completion frees room after the pool was full; the I/O thread
    /// watches it.
    wake: EventFd,
}

impl Shared {
    fn new() -> io::Result<Shared> {
        Ok(Shared {
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// A request of `generation` is done, `len` bytes written into its chain (`None`:
    /// dropped unexecuted): complete it if its queue is still the current one.
    fn finish(&self, label: &str, generation: u64, head: u16, len: Option<u32>) {
        let mut s = lock(&self.state);
        if let (true, Some(len), Some(ring)) = (s.generation == generation, len, &mut s.ring) {
            ring.add_used(label, head, len);
            ring.notify();
        }
        s.in_flight -= 1;
        if s.in_flight == 0 {
            self.idle.notify_all();
        }
        let wake = std::mem::take(&mut s.capped);
        drop(s);
        if wake {
            let _ = self.wake.write(1);
        }
    }
}

/// The running pool of one disk.
pub struct Workers {
    requests: Arc<Requests>,
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
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut pool = Workers {
            requests,
            jobs: Some(tx),
            threads: Vec::new(),
            shared: Arc::new(Shared::new()?),
        };
        for i in 0..config.threads.max(1) {
            let (rx, requests, shared) = (rx.clone(), pool.requests.clone(), pool.shared.clone());
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

    /// A pool without threads: the test takes the handed-out requests from the returned
    /// receiver and runs them (or not) with [`Workers::run`] and [`Workers::finish`].
    #[cfg(test)]
    pub(super) fn stalled(requests: Arc<Requests>) -> io::Result<(Workers, Receiver<Job>)> {
        let (jobs, rx) = mpsc::channel();
        let pool = Workers {
            requests,
            jobs: Some(jobs),
            threads: Vec::new(),
            shared: Arc::new(Shared::new()?),
        };
        Ok((pool, rx))
    }

    /// Carry out `job` as a worker thread does.
    #[cfg(test)]
    pub(super) fn run(&self, job: Job) {
        run(job, &self.requests, &self.shared);
    }

    /// Complete `job` as if its I/O had just written `len` bytes (a request whose
    /// execution a reset overtook).
    #[cfg(test)]
    pub(super) fn finish(&self, job: Job, len: u32) {
        let label = &self.requests.label;
        self.shared.finish(label, job.generation, job.chain.head, Some(len));
    }

    /// Take the queue of a freshly activated device.
    pub fn attach(&self, ring: Ring) {
        lock(&self.shared.state).ring = Some(ring);
    }

    /// Requests handed out and not yet completed.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).in_flight
    }

    /// Hand every available request to the workers (up to the queue's size in flight);
    /// a refused chain is completed on the spot. Stops when a pass finds none, so an
    /// avail index the ring cannot hold (refused by the queue) cannot spin it.
    pub fn process(&self) {
        let mut s = lock(&self.shared.state);
        let _ = self.shared.wake.read();
        let generation = s.generation;
        let State {
            ring: Some(ring),
            in_flight,
            capped,
            ..
        } = &mut *s
        else {
            return;
        };
        let cap = usize::from(ring.queue.size());
        let mut refused = false;
        loop {
            let _ = ring.queue.disable_notification(&*ring.mem);
            let mut progressed = false;
            while *in_flight < cap {
                let Some(desc) = ring.queue.pop_descriptor_chain(&*ring.mem) else {
                    break;
                };
                progressed = true;
                let head = desc.head_index();
                match parse_chain(&*ring.mem, desc) {
                    Ok(chain) => {
                        let job = Job {
                            generation,
                            chain,
                            mem: ring.mem.clone(),
                        };
                        // The receivers live as long as `jobs` does: sending cannot fail.
                        if self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok()) {
                            *in_flight += 1;
                        }
                    }
                    Err(e) => {
                        limited_log!(
                            BAD_REQUEST,
                            debug,
                            "{}: chain {head} refused: {e}",
                            self.requests.label
                        );
                        ring.add_used(&self.requests.label, head, 0);
                        refused = true;
                    }
                }
            }
            // Full: the next completion wakes the I/O thread to run this again.
            if *in_flight >= cap {
                *capped = true;
                break;
            }
            if !progressed || !ring.queue.enable_notification(&*ring.mem).unwrap_or(false) {
                break;
            }
        }
        if refused {
            ring.notify();
        }
    }

    /// Take the queue away, drop the queued requests and wait until none is being
    /// carried out (device reset).
    pub fn cancel(&self) {
        let mut s = lock(&self.shared.state);
        s.generation = s.generation.wrapping_add(1);
        s.ring = None;
        s.capped = false;
        drop(self.wait_idle_locked(s));
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

    /// A descriptor of the eventfd that asks the I/O thread to pop again, to watch.
    pub fn wake_fd(&self) -> io::Result<OwnedFd> {
        let fd = self.shared.wake.try_clone()?.into_raw_fd();
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
        run(job, requests, shared);
    }
}

fn run(job: Job, requests: &Requests, shared: &Shared) {
    let current = lock(&shared.state).generation == job.generation;
    // A request queued before a reset is dropped: its buffers may be reused.
    let len = current.then(|| requests.execute(&job.mem, &job.chain));
    shared.finish(&requests.label, job.generation, job.chain.head, len);
}
