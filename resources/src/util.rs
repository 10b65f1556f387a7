//! Two helpers every Strait crate uses, kept here because `resources` is the crate all
//! the others depend on (and it depends on nothing of Strait's):
//! - [`LogLimiter`] and [`limited_debug!`](crate::limited_debug): the one rate limiter
//!   for log lines on guest-triggered paths, so a looping guest cannot flood the log;
//! - [`lock`]: a mutex guard that survives a poisoned lock (a panicked holder), which
//!   Strait treats as still usable: device state stays consistent per access.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Rate limiter for log lines on guest-triggered paths: lets the first `burst` events
/// through, then only every power of two.
#[derive(Debug, Default)]
pub struct LogLimiter {
    count: AtomicU64,
}

impl LogLimiter {
    /// Events always logged before thinning out.
    const BURST: u64 = 8;

    pub const fn new() -> Self {
        LogLimiter {
            count: AtomicU64::new(0),
        }
    }

    /// Count an event; true when this one should be logged.
    pub fn allow(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        n <= Self::BURST || n.is_power_of_two()
    }

    /// Events counted so far (logged or not).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Log through `limiter` at a level: `limited_log!(LIMITER, warn, "fmt", args...)`.
/// Every line carries the event count, so thinning is visible in the log.
#[macro_export]
macro_rules! limited_log {
    ($limiter:expr, $level:ident, $($arg:tt)+) => {
        if $limiter.allow() {
            log::$level!("{} (event #{})", format_args!($($arg)+), $limiter.count());
        }
    };
}

/// Log at debug level through `limiter`: `limited_debug!(LIMITER, "fmt", args...)`.
#[macro_export]
macro_rules! limited_debug {
    ($limiter:expr, $($arg:tt)+) => {
        $crate::limited_log!($limiter, debug, $($arg)+)
    };
}

/// Lock `m`, taking the guard over from a panicked holder instead of panicking too.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Test support for "a looping guest leaves the log small": count the log lines at
/// info level and above that the calling thread emits.
pub mod testing {
    use std::cell::Cell;
    use std::sync::Once;

    use log::{Level, LevelFilter, Log, Metadata, Record};

    thread_local! {
        static LINES: Cell<usize> = const { Cell::new(0) };
    }

    struct CountingLogger;

    impl Log for CountingLogger {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.level() <= Level::Info
        }

        fn log(&self, record: &Record<'_>) {
            if self.enabled(record.metadata()) {
                LINES.with(|n| n.set(n.get() + 1));
            }
        }

        fn flush(&self) {}
    }

    /// Run `f` and return how many lines it logged at info level or above, on this
    /// thread. Installs a counting logger as the process logger (for test binaries).
    ///
    /// # Panics
    /// If the process already has another logger.
    pub fn lines_logged_by(f: impl FnOnce()) -> usize {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            #[allow(clippy::expect_used)] // test support: a second logger is a test bug
            log::set_logger(&CountingLogger).expect("another logger is installed");
            log::set_max_level(LevelFilter::Info);
        });
        LINES.with(|n| n.set(0));
        f();
        LINES.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_passes_burst_then_powers_of_two() {
        let l = LogLimiter::new();
        let allowed: Vec<u64> = (1..=40).filter(|_| l.allow()).collect();
        assert_eq!(allowed, vec![1, 2, 3, 4, 5, 6, 7, 8, 16, 32]);
        assert_eq!(l.count(), 40);
    }

    #[test]
    fn a_looping_event_logs_a_handful_of_lines() {
        static L: LogLimiter = LogLimiter::new();
        let lines = testing::lines_logged_by(|| {
            for i in 0..10_000 {
                crate::limited_log!(L, warn, "event {i}");
            }
        });
        assert_eq!(lines, 8 + 10, "burst of 8, then 16, 32, ..., 8192");
    }

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
