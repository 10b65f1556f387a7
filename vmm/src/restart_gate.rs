//! Where vCPU threads wait out a reboot in place. A vCPU thread lives as long as the VM:
//! when the VM stops, its loop ends and it parks here ([`RestartGate::park`]); the main
//! thread waits until every vCPU is parked ([`RestartGate::wait_parked`]), resets the
//! machine, and hands each vCPU its [`crate::vcpu::ResetOrder`] ([`RestartGate::release`]) or lets
//! them all end ([`RestartGate::end`]).
//!
//! Keeping the threads, rather than starting new ones from the main thread, keeps the
//! main thread's seccomp filter small: it never creates a thread or runs a vCPU once the
//! guest runs, and each vCPU thread enters its sandbox once.

use std::sync::{Condvar, Mutex};

use resources::lock;

/// What a parked vCPU is handed: `O` is [`crate::vcpu::ResetOrder`] (generic for tests).
struct GateState<O> {
    /// vCPU threads parked since the last release.
    parked: usize,
    /// vCPU threads that left for good (their loop failed, or they unwound).
    gone: usize,
    /// The next order for each vCPU, by index.
    orders: Vec<Option<O>>,
    ending: bool,
}

/// The vCPU threads' meeting point across reboots.
pub struct RestartGate<O> {
    state: Mutex<GateState<O>>,
    changed: Condvar,
}

impl<O> std::fmt::Debug for RestartGate<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartGate").finish_non_exhaustive()
    }
}

/// vCPU threads that ended while the VM was to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpusGone(pub usize);

impl<O> RestartGate<O> {
    /// A gate for `vcpus` threads.
    pub fn new(vcpus: usize) -> Self {
        let state = GateState {
            parked: 0,
            gone: 0,
            orders: (0..vcpus).map(|_| None).collect(),
            ending: false,
        };
        RestartGate {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    /// vCPU `index`'s loop ended: wait for its reset order (`None`: the VM ends).
    pub fn park(&self, index: u32) -> Option<O> {
        let mut s = lock(&self.state);
        s.parked += 1;
        self.changed.notify_all();
        let order = loop {
            if s.ending {
                break None;
            }
            if let Some(o) = s.orders.get_mut(index as usize).and_then(Option::take) {
                break Some(o);
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        };
        order
    }

    /// A vCPU thread is leaving for good.
    pub fn gone(&self) {
        lock(&self.state).gone += 1;
        self.changed.notify_all();
    }

    /// Wait until every vCPU thread is parked; fails when some are gone instead.
    pub fn wait_parked(&self) -> Result<(), VcpusGone> {
        let mut s = lock(&self.state);
        while s.parked + s.gone < s.orders.len() {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match s.gone {
            0 => Ok(()),
            n => Err(VcpusGone(n)),
        }
    }

    /// Hand every parked vCPU its order (by index) and let them go.
    pub fn release(&self, orders: Vec<O>) {
        let mut s = lock(&self.state);
        for (slot, order) in s.orders.iter_mut().zip(orders) {
            *slot = Some(order);
        }
        s.parked = 0;
        self.changed.notify_all();
    }

    /// Let every vCPU thread end.
    pub fn end(&self) {
        lock(&self.state).ending = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn parked_vcpus_get_their_orders_then_end() {
        let gate = Arc::new(RestartGate::<Arc<Barrier>>::new(2));
        let threads: Vec<_> = (0..2u32)
            .map(|i| {
                let g = gate.clone();
                std::thread::spawn(move || {
                    let mut boots = 0;
                    while let Some(barrier) = g.park(i) {
                        barrier.wait();
                        boots += 1;
                    }
                    boots
                })
            })
            .collect();
        for _ in 0..3 {
            gate.wait_parked().unwrap();
            let barrier = Arc::new(Barrier::new(2));
            gate.release(vec![barrier.clone(), barrier]);
        }
        gate.wait_parked().unwrap();
        gate.end();
        let boots: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(boots, vec![3, 3]);
    }

    #[test]
    fn a_vcpu_that_is_gone_fails_the_wait_instead_of_hanging_it() {
        let gate = RestartGate::<()>::new(2);
        gate.gone();
        std::thread::scope(|s| {
            s.spawn(|| assert!(gate.park(1).is_none()));
            assert_eq!(gate.wait_parked(), Err(VcpusGone(1)));
            gate.end();
        });
    }
}
