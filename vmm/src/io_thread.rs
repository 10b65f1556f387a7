//! The I/O thread, `strait-io`: one rust-vmm `event-manager` loop (epoll) that waits on
//! every virtio queue's notify eventfd (registered with KVM_IOEVENTFD, so a guest notify
//! wakes it without a vCPU exit to userspace) and runs the device's queue processing.
//! Completions leave through irqfds the device writes directly. The vCPU threads never
//! process a request; this thread never touches a vCPU.
//!
//! Kept apart from the control API's event loop on purpose: a slow disk must not hold up
//! an API request, nor an API client the guest's I/O. Disk requests themselves run on
//! each disk's worker threads (`devices::virtio::block::workers`); this thread hands
//! them out, the workers complete them (used ring, irqfd), and a full pool's wake
//! eventfd brings this thread back to hand out the rest.
//!
//! Syscalls this thread makes (for its seccomp filter): epoll_wait/epoll_pwait (the
//! loop), read (notify eventfds, a disk pool's wake eventfd), write (irqfd eventfds; log lines to
//! stderr); for virtio-net on the userspace path read and
//! writev on the tap fd (epoll_ctl happens before the thread starts; vhost-net
//! interfaces put nothing on this thread); futex (the device mutex), mmap/munmap/madvise/brk
//! (the allocator), clock_gettime (log timestamps, usually vDSO), and at exit
//! rt_sigprocmask, sigaltstack, munmap, exit. The epoll fd is created (epoll_create1,
//! epoll_ctl) before the thread starts; opening disks happens on the main thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::virtio::SharedVirtioDevice;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use resources::lock;
use vmm_sys_util::eventfd::EventFd;

/// Name of the thread, for logs, `ps -T` and the seccomp filter.
pub const IO_THREAD_NAME: &str = "strait-io";

/// Event data of backend fds start here; below are queue indexes (notify eventfds).
const BACKEND_DATA: u32 = 0x1_0000;

/// One device's events: the notify eventfds by queue index (none when an in-kernel
/// backend takes them), and backend fds (a tap) that make a queue ready.
pub struct QueueEvents {
    pub label: String,
    pub device: SharedVirtioDevice,
    pub kicks: Vec<EventFd>,
    /// Watched edge-triggered: the device reads until EAGAIN or until the guest has no
    /// buffer, and a full receive ring must not spin the loop.
    pub backend: Vec<(OwnedFd, usize)>,
}

impl MutEventSubscriber for QueueEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, k) in (0u32..).zip(&self.kicks) {
            if let Err(e) = ops.add(Events::with_data(k, i, EventSet::IN)) {
                log::error!("{}: cannot watch queue {i}: {e:?}", self.label);
            }
        }
        for (j, (fd, queue)) in (BACKEND_DATA..).zip(&self.backend) {
            let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), j, set)) {
                log::error!(
                    "{}: cannot watch the backend of queue {queue}: {e:?}",
                    self.label
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        let queue = if data >= BACKEND_DATA {
            match self.backend.get((data - BACKEND_DATA) as usize) {
                Some((_, q)) => *q,
                None => return,
            }
        } else {
            let i = data as usize;
            if let Some(k) = self.kicks.get(i) {
                // Non-blocking: a spurious wake-up reads EAGAIN and processes an empty queue.
                let _ = k.read();
            }
            i
        };
        lock(&self.device).process_queue(queue);
    }
}

/// Ends the loop when its eventfd is written.
struct StopEvent {
    fd: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopEvent {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("I/O thread: cannot watch its stop event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
        self.stopped.store(true, Ordering::Release);
    }
}

type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// The running I/O thread.
pub struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread").finish_non_exhaustive()
    }
}

impl IoThread {
    /// Start the thread watching `devices`' queues.
    pub fn start(devices: Vec<QueueEvents>) -> io::Result<IoThread> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| io::Error::other(format!("{e:?}")))?;
        em.add_subscriber(Box::new(StopEvent {
            fd: stop.try_clone()?,
            stopped: stopped.clone(),
        }));
        for d in devices {
            em.add_subscriber(Box::new(d));
        }
        let handle = std::thread::Builder::new()
            .name(IO_THREAD_NAME.into())
            .spawn(move || run(em, &stopped))?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stop the loop and join the thread (before guest memory goes away).
    pub fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop the I/O thread: {e}");
            return;
        }
        if handle.join().is_err() {
            log::error!("{IO_THREAD_NAME} panicked");
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut em: EventManager<Subscriber>, stopped: &AtomicBool) {
    if let Err(e) = crate::sandbox::enter(crate::sandbox::ThreadKind::Io) {
        log::error!(
            "{IO_THREAD_NAME}: {}",
            crate::error::Error::from(e).one_line()
        );
        return;
    }
    while !stopped.load(Ordering::Acquire) {
        if let Err(e) = em.run() {
            // EINTR is the only expected failure; anything else would spin.
            log::error!("{IO_THREAD_NAME}: event loop: {e:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::virtio::{ActivateError, Activation, VirtioDevice};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Counting(Vec<usize>);

    impl VirtioDevice for Counting {
        fn device_type(&self) -> u32 {
            0
        }
        fn pci_class(&self) -> u32 {
            0
        }
        fn features(&self) -> u64 {
            0
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn activate(&mut self, _: Activation) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, index: usize) {
            self.0.push(index);
        }
    }

    #[test]
    fn a_notify_runs_that_queue_on_the_io_thread_and_stop_joins() {
        let dev = Arc::new(Mutex::new(Counting::default()));
        let kicks = vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ];
        let k1 = kicks[1].try_clone().unwrap();
        let mut t = IoThread::start(vec![QueueEvents {
            label: "test".into(),
            device: dev.clone(),
            kicks,
            backend: Vec::new(),
        }])
        .unwrap();
        k1.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&dev).0.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        t.stop();
        assert_eq!(lock(&dev).0, [1]);
    }
}
