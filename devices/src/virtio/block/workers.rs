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
//! Hand-off: requests wait in one queue under the same mutex; queueing one wakes one
//! idle worker (a condition variable, not a channel behind a lock, which would wake a
//! second thread per request to take the lock), and a worker that finishes takes the
//! next queued request without sleeping.
//!
//! Reset: [`Workers::cancel`] takes the ring away, drops the queued requests unexecuted
//! and waits until no worker is inside one, so after a device reset nothing
//! writes into guest memory the driver may reuse, and no completion of the old queue
//! reaches the new one. The wait is bounded by one request per worker (QEMU drains the
//! same way).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::mpsc;
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
pub(super) struct Ring {
    pub(super) mem: Arc<GuestMemoryMmap>,
    pub(super) queue: Queue,
    pub(super) irqs: Interrupts,
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
    /// Bumped by each reset: a request carried out across one is not completed.
    generation: u64,
    /// Requests queued or being carried out.
    in_flight: usize,
    /// Requests no worker has taken yet, oldest first.
    queued: VecDeque<Job>,
    /// The queue while the device is active.
    ring: Option<Ring>,
    /// [`Workers::process`] stopped at the in-flight cap: the next completion wakes the
    /// I/O thread to pop the rest.
    capped: bool,
    /// The wake eventfd was written and not read yet (read only then: one syscall less
    /// per notify).
    woken: bool,
    /// The pool is being dropped: workers return once nothing is queued.
    closing: bool,
}

impl State {
    /// A request of `generation` is done, `len` bytes written into its chain: complete
    /// it if its queue is still the current one.
    fn finish(&mut self, label: &str, generation: u64, head: u16, len: u32) {
        if let (true, Some(ring)) = (self.generation == generation, &mut self.ring) {
            ring.add_used(label, head, len);
            ring.notify();
        }
        self.in_flight -= 1;
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a request is queued (one worker) or the pool closes (all).
    work: Condvar,
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
            work: Condvar::new(),
            idle: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Complete a request (see [`State::finish`]), wake whoever waits for room or idle.
    fn finish(&self, s: &mut State, label: &str, job: &Job, len: u32) {
        s.finish(label, job.generation, job.chain.head, len);
        if s.in_flight == 0 {
            self.idle.notify_all();
        }
        if std::mem::take(&mut s.capped) {
            s.woken = true;
            let _ = self.wake.write(1);
        }
    }
}

/// The running pool of one disk.
pub struct Workers {
    requests: Arc<Requests>,
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
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut pool = Workers {
            requests,
            threads: Vec::new(),
            shared: Arc::new(Shared::new()?),
        };
        for i in 0..config.threads.max(1) {
            let (requests, shared) = (pool.requests.clone(), pool.shared.clone());
            let (ready, on_start) = (ready_tx.clone(), config.on_start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{}{i}", config.name))
                .spawn(move || {
                    let started = on_start();
                    let ok = started.is_ok();
                    let _ = ready.send(started);
                    if ok {
                        work(&requests, &shared);
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

    /// A pool without threads: the test runs the queued requests (or not) with
    /// [`Workers::take`], [`Workers::finish`] and [`Workers::run_next`].
    #[cfg(test)]
    pub(super) fn stalled(requests: Arc<Requests>) -> io::Result<Workers> {
        Ok(Workers {
            requests,
            threads: Vec::new(),
            shared: Arc::new(Shared::new()?),
        })
    }

    /// Take the oldest queued request, as a worker starting it does.
    #[cfg(test)]
    pub(super) fn take(&self) -> Option<Job> {
        lock(&self.shared.state).queued.pop_front()
    }

    /// Complete a taken request as if its I/O had just written `len` bytes.
    #[cfg(test)]
    pub(super) fn finish(&self, job: Job, len: u32) {
        let mut s = lock(&self.shared.state);
        self.shared.finish(&mut s, &self.requests.label, &job, len);
    }

    /// Carry out the oldest queued request as a worker thread does; false if none.
    #[cfg(test)]
    pub(super) fn run_next(&self) -> bool {
        let Some(job) = self.take() else {
            return false;
        };
        let len = self.requests.execute(&job.mem, &job.chain);
        self.finish(job, len);
        true
    }

    /// Take the queue of a freshly activated device.
    pub(super) fn attach(&self, ring: Ring) {
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
        let mut guard = lock(&self.shared.state);
        let s = &mut *guard;
        if std::mem::take(&mut s.woken) {
            let _ = self.shared.wake.read();
        }
        let Some(ring) = &mut s.ring else {
            return;
        };
        let cap = usize::from(ring.queue.size());
        let mut refused = false;
        loop {
            let _ = ring.queue.disable_notification(&*ring.mem);
            let mut progressed = false;
            while s.in_flight < cap {
                let Some(desc) = ring.queue.pop_descriptor_chain(&*ring.mem) else {
                    break;
                };
                progressed = true;
                let head = desc.head_index();
                match parse_chain(&*ring.mem, desc) {
                    Ok(chain) => {
                        s.queued.push_back(Job {
                            generation: s.generation,
                            chain,
                            mem: ring.mem.clone(),
                        });
                        s.in_flight += 1;
                        self.shared.work.notify_one();
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
            if s.in_flight >= cap {
                s.capped = true;
                break;
            }
            if !progressed {
                // Nothing new: notifications go back on before leaving (turned off
                // above; without EVENT_IDX the driver would never kick again), and
                // an avail index the queue refuses cannot spin this loop.
                let _ = ring.queue.enable_notification(&*ring.mem);
                break;
            }
            if !ring.queue.enable_notification(&*ring.mem).unwrap_or(false) {
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
        let dropped = s.queued.len();
        s.queued.clear();
        s.in_flight -= dropped;
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
        // Every worker returns after the requests still queued.
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a block worker panicked");
            }
        }
    }
}

/// A worker thread: carry out queued requests, oldest first, and complete each; after
/// a completion take the next request without sleeping if one is queued.
fn work(requests: &Requests, shared: &Shared) {
    let mut s = lock(&shared.state);
    loop {
        let Some(job) = s.queued.pop_front() else {
            if s.closing {
                return;
            }
            s = shared.work.wait(s).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        drop(s);
        let len = requests.execute(&job.mem, &job.chain);
        s = lock(&shared.state);
        shared.finish(&mut s, &requests.label, &job, len);
    }
}
