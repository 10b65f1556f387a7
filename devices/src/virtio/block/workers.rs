//! The virtio-blk backend's worker pool: several requests in flight at once, each taken
//! from the ring and completed by the thread that carries it out.
//!
//! The workers wait on the queue's notify eventfd themselves (the one KVM signals on a
//! guest notify), each in an epoll of its own with `EPOLLEXCLUSIVE`, so a notify wakes
//! one idle worker and not all of them. That worker pops one chain, checks it
//! ([`crate::virtio::chain`]), and if more are available writes the notify eventfd
//! again to bring the next idle worker; then it carries the request out with blocking
//! preadv/pwritev/fdatasync ([`super::request`]), puts it into the used ring, signals
//! the queue's irqfd, and looks for the next request before it sleeps. A request thus
//! costs the wake-up of the worker and the wake-up when its I/O completes, as many as an
//! asynchronous backend on one thread (QEMU's io_uring): no hand-off through the I/O
//! thread in either direction. On a small nested host each wake-up of another thread is
//! a large part of a 4 KiB read.
//!
//! The ring ([`Ring`]: guest memory, queue, interrupts) lives under the pool's one
//! mutex, held to pop and to complete, never across a request's I/O. A completion
//! follows the virtio order (virtio 1.2, 2.7.8, 2.7.10): the request's data and status
//! are in guest memory before the worker takes the lock; the used element is written,
//! then the used index with release ordering, then, after a full fence, `used_event`
//! (EVENT_IDX) is read to decide whether to interrupt. Workers finishing together thus
//! raise one interrupt when the driver asked for one. Notifications stay enabled
//! whenever no worker is popping (as QEMU keeps them): after each pop the worker enables
//! them and reads the avail index again, so a chain made available meanwhile is seen
//! either by the driver's next notify or by this check.
//!
//! In flight are at most the queue's size (all a driver can have outstanding): one that
//! publishes the same descriptors again and again cannot queue unbounded work. The
//! in-flight count drops in the same critical section as the used index moves, so a
//! driver that reuses a head the moment it is used never finds the pool full; at the
//! cap the rest waits in the ring for the next completion.
//!
//! Why a pool of threads and not io_uring (the `io-uring` crate): both keep several
//! requests in flight, and on O_DIRECT to a block device io_uring would do it with fewer
//! threads. But the operations an io_uring executes are not seen by seccomp: a
//! sandboxed thread allowed `io_uring_enter` can have the kernel open, connect or read
//! anything its ring is asked to, which defeats the per-thread filters this VMM relies
//! on (the reason Docker's and Android's default seccomp profiles refuse io_uring).
//! With threads, every syscall a disk request makes is still one the `blk` filter
//! allows (preadv, pwritev, fdatasync, fallocate, two block ioctls; epoll_wait, read
//! and write on the eventfds). The benchmark (`testbed bench`) measures the cost
//! against QEMU's `aio=io_uring`.
//!
//! Ordering: requests in flight complete in any order (virtio 1.2, 5.2.6.1: the driver
//! must not rely on it). A FLUSH is an fdatasync of the whole file, so it covers every
//! write that completed before it was submitted, which is all the spec promises.
//!
//! Reset: [`Workers::cancel`] takes the ring away (what the driver made available and
//! no worker took is never touched) and waits until no worker is inside a request, so
//! after a device reset nothing writes into guest memory the driver may reuse, and no
//! completion of the old queue reaches the new one. The wait is bounded by one request
//! per worker (QEMU drains the same way).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use resources::{limited_log, lock};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
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
    /// Threads: the most requests carried out at once.
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

    /// Pop the next request, completing refused chains on the spot (length 0). Stops
    /// when a pass finds none, so an avail index the ring cannot hold (refused by the
    /// queue) cannot spin it. Leaves notifications enabled; `more` is set if chains
    /// remain available.
    fn pop(&mut self, label: &str, more: &mut bool) -> Option<Chain> {
        let mut refused = false;
        let mut chain = None;
        loop {
            let _ = self.queue.disable_notification(&*self.mem);
            let mut progressed = false;
            while let Some(desc) = self.queue.pop_descriptor_chain(&*self.mem) {
                progressed = true;
                let head = desc.head_index();
                match parse_chain(&*self.mem, desc) {
                    Ok(c) => {
                        chain = Some(c);
                        break;
                    }
                    Err(e) => {
                        limited_log!(BAD_REQUEST, debug, "{label}: chain {head} refused: {e}");
                        self.add_used(label, head, 0);
                        refused = true;
                    }
                }
            }
            *more = self.queue.enable_notification(&*self.mem).unwrap_or(false);
            if chain.is_some() || !progressed || !*more {
                break;
            }
        }
        if refused {
            self.notify();
        }
        chain
    }
}

/// A request a worker took from the ring.
pub(super) struct Job {
    generation: u64,
    chain: Chain,
    mem: Arc<GuestMemoryMmap>,
}

#[derive(Default)]
struct State {
    /// Bumped by each reset: a request carried out across one is not completed.
    generation: u64,
    /// Requests taken from the ring and not completed yet.
    in_flight: usize,
    /// The queue while the device is active.
    ring: Option<Ring>,
    /// The pool is being dropped: workers take nothing more.
    closing: bool,
}

struct Shared {
    label: String,
    state: Mutex<State>,
    /// Signalled when `in_flight` drops to 0.
    idle: Condvar,
    /// The queue's notify eventfd, once the VMM hands it over ([`Workers::watch`]).
    kick: OnceLock<EventFd>,
}

impl Shared {
    /// Take the next available request, unless the pool is full or closing; bring
    /// another worker if more are available.
    fn take(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        let (generation, in_flight, closing) = (s.generation, s.in_flight, s.closing);
        let ring = s.ring.as_mut().filter(|_| !closing)?;
        if in_flight >= usize::from(ring.queue.size()) {
            // Full: the next completion looks again.
            return None;
        }
        let mut more = false;
        let chain = ring.pop(&self.label, &mut more)?;
        let job = Job {
            generation,
            chain,
            mem: ring.mem.clone(),
        };
        s.in_flight += 1;
        if more {
            self.kick_one();
        }
        Some(job)
    }

    /// Complete `job`, `len` bytes written into its chain, if its queue is still the
    /// current one.
    fn finish(&self, job: &Job, len: u32) {
        let mut s = lock(&self.state);
        if let (true, Some(ring)) = (s.generation == job.generation, &mut s.ring) {
            ring.add_used(&self.label, job.chain.head, len);
            ring.notify();
        }
        s.in_flight -= 1;
        if s.in_flight == 0 {
            self.idle.notify_all();
        }
    }

    /// Wake one idle worker to look at the ring (as a guest notify does).
    fn kick_one(&self) {
        if let Some(k) = self.kick.get() {
            let _ = k.write(1);
        }
    }
}

/// Epoll data of the stop eventfd and of the notify eventfd.
const STOP: u64 = 0;
const KICK: u64 = 1;

/// The running pool of one disk.
pub struct Workers {
    requests: Arc<Requests>,
    threads: Vec<JoinHandle<()>>,
    /// Each worker's epoll (the notify eventfd is added once the VMM hands it over).
    epolls: Vec<Arc<Epoll>>,
    /// Written once when the pool is dropped; every worker watches it.
    stop: EventFd,
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
        let mut pool = Workers::idle(requests)?;
        for i in 0..config.threads.max(1) {
            let epoll = Arc::new(Epoll::new()?);
            let stop = EpollEvent::new(EventSet::IN, STOP);
            epoll.ctl(ControlOperation::Add, pool.stop.as_raw_fd(), stop)?;
            pool.epolls.push(epoll.clone());
            let (requests, shared) = (pool.requests.clone(), pool.shared.clone());
            let (ready, on_start) = (ready_tx.clone(), config.on_start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{}{i}", config.name))
                .spawn(move || {
                    let started = on_start();
                    let ok = started.is_ok();
                    let _ = ready.send(started);
                    if ok {
                        work(&epoll, &requests, &shared);
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

    /// A pool without threads.
    fn idle(requests: Arc<Requests>) -> io::Result<Workers> {
        Ok(Workers {
            shared: Arc::new(Shared {
                label: requests.label.clone(),
                state: Mutex::new(State::default()),
                idle: Condvar::new(),
                kick: OnceLock::new(),
            }),
            requests,
            threads: Vec::new(),
            epolls: Vec::new(),
            stop: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// A pool without threads: the test carries requests out (or not) with
    /// [`Workers::take`], [`Workers::finish`] and [`Workers::run_next`].
    #[cfg(test)]
    pub(super) fn stalled(requests: Arc<Requests>) -> io::Result<Workers> {
        Workers::idle(requests)
    }

    /// Take the next available request, as a woken worker does.
    #[cfg(test)]
    pub(super) fn take(&self) -> Option<Job> {
        self.shared.take()
    }

    /// Complete a taken request as if its I/O had just written `len` bytes.
    #[cfg(test)]
    pub(super) fn finish(&self, job: Job, len: u32) {
        self.shared.finish(&job, len);
    }

    /// Take the next available request and carry it out as a worker does; false if none.
    #[cfg(test)]
    pub(super) fn run_next(&self) -> bool {
        let Some(job) = self.take() else {
            return false;
        };
        let len = self.requests.execute(&job.mem, &job.chain);
        self.finish(job, len);
        true
    }

    /// Wait on the queue's notify eventfd (KVM's ioeventfd of the queue): called once,
    /// before the guest runs.
    pub fn watch(&self, kick: &EventFd) -> io::Result<()> {
        for epoll in &self.epolls {
            let event = EpollEvent::new(EventSet::IN | EventSet::EXCLUSIVE, KICK);
            epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), event)?;
        }
        let _ = self.shared.kick.set(kick.try_clone()?);
        Ok(())
    }

    /// Take the queue of a freshly activated device; a worker looks at it at once.
    pub(super) fn attach(&self, ring: Ring) {
        lock(&self.shared.state).ring = Some(ring);
        self.shared.kick_one();
    }

    /// Requests taken from the ring and not yet completed.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).in_flight
    }

    /// Take the queue away and wait until no request is being carried out (device
    /// reset).
    pub fn cancel(&self) {
        let mut s = lock(&self.shared.state);
        s.generation = s.generation.wrapping_add(1);
        s.ring = None;
        drop(self.wait_idle_locked(s));
    }

    /// Wait until every request taken has completed.
    pub fn wait_idle(&self) {
        drop(self.wait_idle_locked(lock(&self.shared.state)));
    }

    fn wait_idle_locked<'a>(&self, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while s.in_flight > 0 {
            s = self.shared.idle.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Every worker returns after its current request.
        lock(&self.shared.state).closing = true;
        let _ = self.stop.write(1);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a block worker panicked");
            }
        }
    }
}

/// A worker thread: carry out requests while the ring has some, then sleep until a
/// notify (or another worker) says more are available, or the pool stops.
fn work(epoll: &Epoll, requests: &Requests, shared: &Shared) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        while let Some(job) = shared.take() {
            let len = requests.execute(&job.mem, &job.chain);
            shared.finish(&job, len);
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: a block worker cannot wait: {e}", shared.label);
                return;
            }
        };
        if events[..n].iter().any(|e| e.data() == STOP) {
            return;
        }
        // Reset the count: a notify that lands after this wakes a worker again.
        if let Some(k) = shared.kick.get() {
            let _ = k.read();
        }
    }
}
