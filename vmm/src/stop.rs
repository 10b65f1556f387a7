//! The VM-wide stop request: the first reason wins (a guest power-off, a fatal exit, a
//! signal); vCPU loops poll it, the main thread waits on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use devices::legacy::{PowerAction, PowerControl};
use resources::lock;

use crate::exits::StopReason;

/// The VM-wide stop flag and the reason of the first stop request.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    changed: Condvar,
}

impl StopSignal {
    /// Request a stop; only the first reason is kept.
    pub fn stop(&self, reason: StopReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// True once any stop was requested; vCPU loops check it before each KVM_RUN.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Block until a stop is requested; returns the first reason.
    pub fn wait(&self) -> StopReason {
        let mut r = lock(&self.reason);
        loop {
            if let Some(reason) = r.as_ref() {
                return reason.clone();
            }
            r = self.changed.wait(r).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl PowerControl for StopSignal {
    fn request(&self, action: PowerAction) {
        self.stop(match action {
            PowerAction::PowerOff => StopReason::PowerOff,
            PowerAction::Reboot => StopReason::Reboot("ACPI reset register or i8042"),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_stop_reason_wins() {
        let s = StopSignal::default();
        assert!(!s.is_stopping());
        s.request(PowerAction::PowerOff);
        s.stop(StopReason::Reboot("triple fault"));
        assert!(s.is_stopping());
        assert_eq!(s.wait(), StopReason::PowerOff);
    }

    #[test]
    fn wait_wakes_on_a_stop_from_another_thread() {
        let s = Arc::new(StopSignal::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.request(PowerAction::Reboot));
        assert!(matches!(s.wait(), StopReason::Reboot(_)));
        t.join().unwrap();
    }
}
