//! The in-kernel virtio-net data path: vhost-net (drivers/vhost/net.c) moves frames
//! between the guest's rings and the tap with no exit to Strait's userspace. Strait
//! gives it guest RAM (VHOST_SET_MEM_TABLE), each ring's addresses, the queue's notify
//! eventfd as the kick (the same fd KVM signals on the guest's notify write) and the
//! queue's MSI-X irqfd as the call, then the tap as the backend.
//!
//! vhost-net does not add the virtio-net header itself here (no
//! VHOST_NET_F_VIRTIO_NET_HDR): the tap carries it (IFF_VNET_HDR, 12 bytes), exactly as
//! in the userspace path, so the offloads behave the same on both.
//!
//! Ioctls, for the seccomp filter: at open (main thread) VHOST_SET_OWNER and
//! VHOST_GET_FEATURES; at DRIVER_OK (the vCPU thread that wrote the status)
//! VHOST_SET_FEATURES, VHOST_SET_MEM_TABLE, VHOST_SET_VRING_NUM/ADDR/BASE/CALL/KICK,
//! VHOST_NET_SET_BACKEND; at reset (a vCPU thread) or VM stop (main thread)
//! VHOST_NET_SET_BACKEND with -1 and VHOST_GET_VRING_BASE.

use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;

/// Why vhost-net could not be opened or started.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot open /dev/vhost-net (load the vhost_net module)")]
    Open(#[source] vhost::Error),
    #[error("vhost-net {what}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("cannot create an eventfd for vhost-net")]
    EventFd(#[source] std::io::Error),
}

fn ioctl(what: &'static str) -> impl FnOnce(vhost::Error) -> VhostError {
    move |source| VhostError::Ioctl { what, source }
}

/// One queue as vhost-net gets it.
pub struct VhostQueue<'a> {
    pub queue: &'a Queue,
    pub kick: &'a EventFd,
    /// The queue's irqfd; `None` when the driver gave it no MSI-X vector.
    pub call: Option<&'a EventFd>,
}

/// An open vhost-net instance, owned by this process.
pub struct VhostNet {
    net: KernNet<Arc<GuestMemoryMmap>>,
    features: u64,
    running: Vec<usize>,
    /// Calls of queues without a vector: vhost-net needs some eventfd.
    spare_calls: Vec<EventFd>,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("features", &format_args!("{:#x}", self.features))
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl VhostNet {
    /// Open /dev/vhost-net for guest RAM `mem` and become its owner.
    pub fn open(mem: &GuestMemoryMmap) -> Result<VhostNet, VhostError> {
        let net = KernNet::new(Arc::new(mem.clone())).map_err(VhostError::Open)?;
        net.set_owner().map_err(ioctl("VHOST_SET_OWNER"))?;
        let features = net.get_features().map_err(ioctl("VHOST_GET_FEATURES"))?;
        Ok(VhostNet {
            net,
            features,
            running: Vec::new(),
            spare_calls: Vec::new(),
        })
    }

    /// The virtio features vhost-net can carry (ring and header layout bits; the
    /// offloads are the tap's business and pass through).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Start the rings with the features the driver accepted, the tap as backend.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[VhostQueue],
        tap: &Tap,
    ) -> Result<(), VhostError> {
        self.stop();
        self.net
            .set_features(acked & self.features)
            .map_err(ioctl("VHOST_SET_FEATURES"))?;
        let regions: Vec<_> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        self.net
            .set_mem_table(&regions)
            .map_err(ioctl("VHOST_SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            self.start_queue(i, q)?;
        }
        for i in 0..queues.len() {
            self.net
                .set_backend(i, Some(tap.file()))
                .map_err(ioctl("VHOST_NET_SET_BACKEND"))?;
            self.running.push(i);
        }
        Ok(())
    }

    fn start_queue(&mut self, i: usize, q: &VhostQueue) -> Result<(), VhostError> {
        let queue = q.queue;
        let size = queue.size();
        self.net
            .set_vring_num(i, size)
            .map_err(ioctl("VHOST_SET_VRING_NUM"))?;
        let config = VringConfigData {
            queue_max_size: queue.max_size(),
            queue_size: size,
            flags: 0,
            desc_table_addr: queue.desc_table(),
            used_ring_addr: queue.used_ring(),
            avail_ring_addr: queue.avail_ring(),
            log_addr: None,
        };
        self.net
            .set_vring_addr(i, &config)
            .map_err(ioctl("VHOST_SET_VRING_ADDR"))?;
        self.net
            .set_vring_base(i, queue.next_avail())
            .map_err(ioctl("VHOST_SET_VRING_BASE"))?;
        let call = match q.call {
            Some(fd) => fd,
            None => {
                let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostError::EventFd)?;
                self.spare_calls.push(fd);
                &self.spare_calls[self.spare_calls.len() - 1]
            }
        };
        self.net
            .set_vring_call(i, call)
            .map_err(ioctl("VHOST_SET_VRING_CALL"))?;
        self.net
            .set_vring_kick(i, q.kick)
            .map_err(ioctl("VHOST_SET_VRING_KICK"))
    }

    /// Detach the tap and stop every ring: vhost-net touches guest memory no more once
    /// this returns (VHOST_GET_VRING_BASE waits for the ring's worker).
    pub fn stop(&mut self) {
        for i in self.running.drain(..) {
            if let Err(e) = self.net.set_backend(i, None) {
                log::warn!("vhost-net: detaching queue {i}: {e}");
            }
            if let Err(e) = self.net.get_vring_base(i) {
                log::warn!("vhost-net: stopping queue {i}: {e}");
            }
        }
        self.spare_calls.clear();
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.stop();
    }
}
