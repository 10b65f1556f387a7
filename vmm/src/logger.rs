//! The process logger (stderr, `strait: ` prefix) and the boot timeline.
//!
//! Lines look like `strait: guest powered off` at info level and
//! `strait: warn: ...` / `strait: debug: vmm::exits: ...` otherwise, so info output reads
//! like a tool's messages and detail carries its module. The guest console owns stdout.
//! Timeline marks are info lines `strait: timeline: <phase>=<ms>ms`, milliseconds since
//! the logger was initialised (the first thing `main` does), for benchmarks to parse.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

static START: OnceLock<Instant> = OnceLock::new();
static LOGGER: StderrLogger = StderrLogger;

/// Phases marked on the timeline. `ram_prefaulted` (prefault, no passed-through
/// device) or `dma_mapped` (with them) come from the background RAM setup, so after
/// `vcpus_started` as a rule.
pub mod phase {
    pub const SPEC_PARSED: &str = "spec_parsed";
    /// Guest RAM mapped in Strait and registered with KVM (not yet faulted in).
    pub const MEMORY_READY: &str = "memory_ready";
    pub const KERNEL_LOADED: &str = "kernel_loaded";
    pub const VCPUS_STARTED: &str = "vcpus_started";
    /// Every page of guest RAM faulted in (`memory.prefault`, no passthrough).
    pub const RAM_PREFAULTED: &str = "ram_prefaulted";
    /// Guest RAM faulted in and DMA-mapped, held bus mastering released.
    pub const DMA_MAPPED: &str = "dma_mapped";
    /// The guest stopped (powered off, crashed, signal).
    pub const GUEST_EXIT: &str = "guest_exit";
    /// Every passed-through function quiet, reset and closed (side by side).
    pub const DEVICES_RELEASED: &str = "devices_released";
    /// vCPUs joined, devices reset, DMA unmapped, RAM unmapped: Strait exits next.
    pub const TORN_DOWN: &str = "torn_down";
}

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), &record.args().to_string());
        // One write per line so lines from vCPU threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Render one log line (with its newline).
pub fn format_line(level: Level, target: &str, msg: &str) -> String {
    match level {
        Level::Info => format!("strait: {msg}\n"),
        Level::Error | Level::Warn => format!("strait: {}: {msg}\n", level.as_str().to_lowercase()),
        Level::Debug | Level::Trace => {
            format!(
                "strait: {}: {target}: {msg}\n",
                level.as_str().to_lowercase()
            )
        }
    }
}

/// Log level for `-q` / `-v` counts: default info, `-q` warnings only, `-v` debug,
/// `-vv` trace.
pub fn level_for(verbose: u8, quiet: bool) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    }
}

/// Install the logger and start the timeline clock. Safe to call more than once.
pub fn init(level: LevelFilter) {
    START.get_or_init(Instant::now);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Milliseconds since [`init`].
pub fn elapsed_ms() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

/// The marks so far, for the control API.
static TIMELINE: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

/// Log a timeline mark for `phase` and keep it for [`timeline`].
pub fn mark(phase: &str) {
    let ms = elapsed_ms();
    resources::lock(&TIMELINE).push((phase.to_string(), ms));
    log::info!("{}", timeline_line(phase, ms));
}

/// Every mark so far, in order (a phase repeats after a reboot in place).
pub fn timeline() -> Vec<(String, f64)> {
    resources::lock(&TIMELINE).clone()
}

/// The message of a timeline mark (without the `strait: ` prefix).
pub fn timeline_line(phase: &str, ms: f64) -> String {
    format!("timeline: {phase}={ms:.1}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_have_only_the_prefix() {
        assert_eq!(
            format_line(Level::Info, "vmm::vm", "guest powered off"),
            "strait: guest powered off\n"
        );
    }

    #[test]
    fn debug_lines_carry_level_and_module() {
        let l = format_line(Level::Debug, "vmm::exits", "x");
        assert_eq!(l, "strait: debug: vmm::exits: x\n");
    }

    #[test]
    fn errors_carry_the_level() {
        assert_eq!(
            format_line(Level::Error, "t", "boom"),
            "strait: error: boom\n"
        );
    }

    #[test]
    fn timeline_line_is_parseable() {
        let l = timeline_line(phase::MEMORY_READY, 123.44);
        assert_eq!(l, "timeline: memory_ready=123.4ms");
    }

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level_for(0, false), LevelFilter::Info);
        assert_eq!(level_for(1, false), LevelFilter::Debug);
        assert_eq!(level_for(5, false), LevelFilter::Trace);
        assert_eq!(level_for(2, true), LevelFilter::Warn);
    }
}
