//! How a VM ends: the VM-wide stop request (the first reason wins: a guest power-off, a
//! fatal exit, a signal), and the graceful shutdown in front of it: press the guest's
//! ACPI power button, then give the guest a deadline to power off by itself.
//!
//! vCPU loops poll [`StopSignal::is_stopping`]; the main thread waits in
//! [`StopSignal::wait`], which also turns a missed deadline into
//! [`StopReason::ShutdownTimeout`]. A reboot in place re-arms the signal
//! ([`StopSignal::rearm`]) and keeps a shutdown under way.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::legacy::{PowerAction, PowerControl};
use resources::lock;

use crate::exits::StopReason;

/// Something that presses the guest's power button (the device manager's GED line).
pub trait PowerButton: Send + Sync {
    fn press(&self) -> io::Result<()>;
}

/// What a request to shut the guest down did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownStep {
    /// The button was pressed; the guest has until the deadline.
    ButtonPressed,
    /// No button yet (setup), or a shutdown was already under way: stopped at once.
    StoppedNow,
}

#[derive(Debug, Default)]
struct State {
    reason: Option<StopReason>,
    /// A graceful shutdown under way: when it gives up, and the timeout it was given.
    deadline: Option<(Instant, Duration)>,
}

/// The VM-wide stop flag, the reason of the first stop request and the graceful
/// shutdown's deadline.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    /// The button, and the default time the guest gets after it.
    button: OnceLock<(Arc<dyn PowerButton>, Duration)>,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopping", &self.is_stopping())
            .finish_non_exhaustive()
    }
}

impl StopSignal {
    /// Request a stop; only the first reason is kept.
    pub fn stop(&self, reason: StopReason) {
        let mut s = lock(&self.state);
        if s.reason.is_none() {
            s.reason = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// True once any stop was requested; vCPU loops check it before each KVM_RUN.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Block until a stop is requested, or a graceful shutdown's deadline passes;
    /// returns the first reason.
    pub fn wait(&self) -> StopReason {
        let mut s = lock(&self.state);
        loop {
            if let Some(reason) = s.reason.as_ref() {
                return reason.clone();
            }
            s = match s.deadline {
                Some((at, timeout)) => {
                    let now = Instant::now();
                    if now >= at {
                        s.reason = Some(StopReason::ShutdownTimeout {
                            secs: timeout.as_secs(),
                        });
                        self.stopping.store(true, Ordering::SeqCst);
                        continue;
                    }
                    let (g, _) = self
                        .changed
                        .wait_timeout(s, at - now)
                        .unwrap_or_else(|p| p.into_inner());
                    g
                }
                None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// True from a reboot request until [`StopSignal::rearm`] (or for good, when the VM
    /// exits on a reboot instead).
    pub fn reboot_requested(&self) -> bool {
        matches!(lock(&self.state).reason, Some(StopReason::Reboot(_)))
    }

    /// The guest's power button, once its device exists (before the vCPUs start), and
    /// the time a guest gets to power off after it (`lifecycle.shutdown_timeout_s`).
    pub fn arm_power_button(&self, button: Arc<dyn PowerButton>, timeout: Duration) {
        // Set once per process; a reboot in place keeps the same device.
        let _ = self.button.set((button, timeout));
    }

    /// Press the power button without a deadline (the API's `power-button`). False when
    /// there is no button yet.
    pub fn press_power_button(&self) -> io::Result<bool> {
        match self.button.get() {
            Some((b, _)) => b.press().map(|()| true),
            None => Ok(false),
        }
    }

    /// True while a graceful shutdown waits for the guest.
    pub fn shutdown_under_way(&self) -> bool {
        lock(&self.state).deadline.is_some()
    }

    /// Ask the guest to shut down: press the button and give it `timeout` (by default
    /// the armed one). Without a button (setup), when a shutdown is already under way
    /// and `again` is a stop reason, or when the press fails, stop at once with `again`.
    pub fn shut_down(&self, timeout: Option<Duration>, again: Option<StopReason>) -> ShutdownStep {
        let under_way = self.shutdown_under_way();
        let button = self.button.get();
        match (button, under_way, again) {
            (Some((b, default)), false, again) => match b.press() {
                Ok(()) => {
                    let mut s = lock(&self.state);
                    let timeout = timeout.unwrap_or(*default);
                    s.deadline = Some((Instant::now() + timeout, timeout));
                    self.changed.notify_all();
                    ShutdownStep::ButtonPressed
                }
                Err(e) => {
                    log::error!("cannot press the power button: {e}; stopping now");
                    self.stop(again.unwrap_or(StopReason::ShutdownTimeout { secs: 0 }));
                    ShutdownStep::StoppedNow
                }
            },
            (Some(_), true, None) => ShutdownStep::ButtonPressed,
            (_, _, Some(reason)) => {
                self.stop(reason);
                ShutdownStep::StoppedNow
            }
            (None, _, None) => {
                self.stop(StopReason::ShutdownTimeout { secs: 0 });
                ShutdownStep::StoppedNow
            }
        }
    }

    /// After a reboot in place: clear the stop request so the vCPUs run again. A
    /// graceful shutdown under way keeps its deadline.
    pub fn rearm(&self) {
        let mut s = lock(&self.state);
        s.reason = None;
        self.stopping.store(false, Ordering::SeqCst);
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
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[derive(Default)]
    struct CountingButton(AtomicU32);

    impl PowerButton for CountingButton {
        fn press(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn armed() -> (StopSignal, Arc<CountingButton>) {
        let s = StopSignal::default();
        let b = Arc::new(CountingButton::default());
        s.arm_power_button(b.clone(), Duration::from_secs(30));
        (s, b)
    }

    #[test]
    fn first_stop_reason_wins() {
        let s = StopSignal::default();
        assert!(!s.is_stopping());
        s.request(PowerAction::PowerOff);
        s.stop(StopReason::TripleFault { vcpu: 0 });
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

    #[test]
    fn without_a_button_a_shutdown_stops_at_once() {
        let s = StopSignal::default();
        let step = s.shut_down(None, Some(StopReason::Signal(15)));
        assert_eq!(step, ShutdownStep::StoppedNow);
        assert_eq!(s.wait(), StopReason::Signal(15));
    }

    #[test]
    fn a_shutdown_presses_the_button_and_a_power_off_ends_it() {
        let (s, b) = armed();
        let step = s.shut_down(None, Some(StopReason::Signal(15)));
        assert_eq!(step, ShutdownStep::ButtonPressed);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(!s.is_stopping() && s.shutdown_under_way());
        s.request(PowerAction::PowerOff);
        assert_eq!(s.wait(), StopReason::PowerOff);
    }

    #[test]
    fn a_second_signal_stops_at_once() {
        let (s, b) = armed();
        s.shut_down(None, Some(StopReason::Signal(15)));
        let step = s.shut_down(None, Some(StopReason::Signal(2)));
        assert_eq!(step, ShutdownStep::StoppedNow);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert_eq!(s.wait(), StopReason::Signal(2));
    }

    #[test]
    fn a_second_api_shutdown_keeps_the_first_deadline() {
        let (s, b) = armed();
        s.shut_down(None, None);
        assert_eq!(
            s.shut_down(Some(Duration::from_secs(1)), None),
            ShutdownStep::ButtonPressed
        );
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(!s.is_stopping());
    }

    #[test]
    fn a_missed_deadline_is_a_shutdown_timeout() {
        let (s, _) = armed();
        s.shut_down(
            Some(Duration::from_millis(20)),
            Some(StopReason::Signal(15)),
        );
        assert_eq!(s.wait(), StopReason::ShutdownTimeout { secs: 0 });
        assert!(s.is_stopping());
    }

    #[test]
    fn rearm_clears_the_stop_and_keeps_the_deadline() {
        let (s, _) = armed();
        s.shut_down(None, None);
        s.request(PowerAction::Reboot);
        assert!(matches!(s.wait(), StopReason::Reboot(_)));
        s.rearm();
        assert!(!s.is_stopping() && s.shutdown_under_way());
    }

    #[test]
    fn a_reboot_request_shows_until_rearmed_and_only_a_reboot() {
        let s = StopSignal::default();
        assert!(!s.reboot_requested());
        s.request(PowerAction::Reboot);
        s.stop(StopReason::PowerOff);
        assert!(s.reboot_requested(), "the first reason wins");
        s.rearm();
        assert!(!s.reboot_requested());
        s.request(PowerAction::PowerOff);
        assert!(!s.reboot_requested());
    }
}
